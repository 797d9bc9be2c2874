/* test_cuda_emu_race.cc - the fiber emulation itself (tests/cuda/emu/cuda_emu.h):
 *   - the race detector reports a deliberately racy kernel (two threads
 *     writing one shared word between barriers) and fails its launch, and
 *     stays quiet on the correct variants (barrier, atomics, __syncwarp);
 *   - a thread that exits before a __syncthreads the others wait at is
 *     reported as a deadlock;
 *   - warp intrinsics give CUDA's results (shuffles with widths, ballot,
 *     any/all, reduce), block/thread indices cover 3-D shapes, shared memory
 *     starts as NaN garbage, the 16-bit conversions match dtype_math.h.
 * The expected reports are printed to stderr ("cuda_emu: race in ..."). */
#include <stdint.h>
#include <string.h>
#include "cuda_common.cuh"
#include "check.h"

/* ---- kernels: racy and correct variants ---------------------------------- */

/* every thread writes cell[tid % 4]: threads t and t+4 collide */
static __global__ void racy_kernel(float *out) {
    __shared__ float cell[4];
    cell[threadIdx.x % 4] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = cell[threadIdx.x % 4];
}

/* the fix: one writer per cell */
static __global__ void one_writer_kernel(float *out) {
    __shared__ float cell2[4];
    if (threadIdx.x < 4) cell2[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = cell2[threadIdx.x % 4];
}

/* different writers in different barrier epochs: no race */
static __global__ void epochs_kernel(float *out) {
    __shared__ float cell3;
    for (unsigned i = 0; i < blockDim.x; i++) {
        if (threadIdx.x == i) cell3 = (float)i;
        __syncthreads();
    }
    out[threadIdx.x] = cell3;
}

/* shared atomics from every thread: not a race; mode 1 adds a plain write */
static __global__ void atomics_kernel(int *out, int mode) {
    __shared__ int counter;
    if (threadIdx.x == 0) counter = 0;
    __syncthreads();
    if (mode == 1 && threadIdx.x == 5)
        counter = 100;
    else
        atomicAdd(&counter, 1);
    __syncthreads();
    if (threadIdx.x == 0) out[0] = counter;
}

/* lanes of one warp writing in turn, separated by __syncwarp (sync != 0) */
static __global__ void warp_turns_kernel(float *out, int sync) {
    __shared__ float slot;
    for (int i = 0; i < 32; i++) {
        if ((int)threadIdx.x == i) slot = (float)i + 1.0f;
        if (sync) __syncwarp();
    }
    __syncthreads();
    out[threadIdx.x] = slot;
}

/* one writer per cell, except in block 3 where thread 7 also writes cell 0 */
static __global__ void late_race_kernel(float *out) {
    __shared__ float cell4[4];
    if (threadIdx.x < 4 || (blockIdx.x == 3 && threadIdx.x == 7)) cell4[threadIdx.x % 4] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = cell4[threadIdx.x % 4];
}

/* one thread leaves before a barrier the others wait at */
static __global__ void early_exit_kernel(float *out) {
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

/* dynamic shared memory: racy when racy != 0 */
static __global__ void dyn_kernel(float *out, int racy) {
    FSDP_DYN_SHARED(float, buf);
    buf[racy ? 0 : threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = buf[racy ? 0 : threadIdx.x];
}

/* ---- kernels: semantics of the intrinsics -------------------------------- */

/* per thread: shfl from lane 3, xor 5, down 2 (width 8), up 1 (width 16),
 * ballot of odd lanes, any/all, reduce_add of lane ids */
static __global__ void warp_ops_kernel(int *out) {
    const int lane = threadIdx.x % 32;
    int *o = out + threadIdx.x * 8;
    o[0] = __shfl_sync(FSDP_FULL_MASK, lane * 10, 3);
    o[1] = __shfl_xor_sync(FSDP_FULL_MASK, lane, 5);
    o[2] = __shfl_down_sync(FSDP_FULL_MASK, lane, 2, 8);
    o[3] = __shfl_up_sync(FSDP_FULL_MASK, lane, 1, 16);
    o[4] = (int)__ballot_sync(FSDP_FULL_MASK, lane & 1);
    o[5] = __any_sync(FSDP_FULL_MASK, lane == 7);
    o[6] = __all_sync(FSDP_FULL_MASK, lane < 31);
    o[7] = (int)__reduce_add_sync(FSDP_FULL_MASK, (unsigned)lane);
}

/* a block of 48 threads: the second warp has 16 lanes and says so in its mask */
static __global__ void partial_warp_kernel(int *out) {
    const unsigned mask = threadIdx.x < 32 ? FSDP_FULL_MASK : 0xffffu;
    out[threadIdx.x] = (int)__reduce_add_sync(mask, 1u);
}

/* a full-warp ballot, then a collective of the low half only: lanes that
 * leave the ballot last must still see the ballot's mask, not the next one's */
static __global__ void mask_change_kernel(int *out) {
    const int lane = threadIdx.x % 32;
    const unsigned all = __ballot_sync(FSDP_FULL_MASK, 1);
    int from0 = -1;
    if (lane < 16) from0 = __shfl_sync(0xffffu, lane + 100, 0);
    out[threadIdx.x * 2] = (int)all;
    out[threadIdx.x * 2 + 1] = from0;
}

/* 3-D grid and block: each thread writes its linear global id at that id */
static __global__ void index_kernel(int *out) {
    const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int id = block * blockDim.x * blockDim.y * blockDim.z + thread;
    out[id] = id;
}

/* reads shared memory nobody wrote: must see garbage (NaN), not zeros */
static __global__ void uninit_kernel(float *out) {
    __shared__ float never_written[2];
    out[threadIdx.x] = never_written[threadIdx.x % 2];
}

static __global__ void block_sum_kernel(float *out, const float *x, int n) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[(int64_t)blockIdx.x * n + i];
    s = fsdp_block_sum(s);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

/* ---- tests -------------------------------------------------------------- */

/* runs a launch; returns how many failures the emulator reported */
#define EXPECT_REPORTS(what, want_failure, launch)                                         \
    do {                                                                                 \
        int before_ = fsdp_emu::failures;                                                \
        launch;                                                                          \
        cudaError_t e_ = cudaGetLastError();                                             \
        int got_ = fsdp_emu::failures - before_;                                         \
        if (want_failure) {                                                              \
            CHECK(got_ > 0 && e_ == cudaErrorLaunchFailure, "%s: expected a report", what); \
            fprintf(stderr, "(the report above is expected: %s)\n", what);               \
        } else {                                                                         \
            CHECK(got_ == 0 && e_ == cudaSuccess, "%s: unexpected report", what);        \
        }                                                                                \
    } while (0)

static void test_races() {
    float *out = (float *)calloc(64, sizeof(float));
    int *iout = (int *)calloc(4, sizeof(int));
    EXPECT_REPORTS("racy kernel", 1, FSDP_LAUNCH(racy_kernel, 1, 8, 0, nullptr, out));
    EXPECT_REPORTS("one writer per cell", 0, FSDP_LAUNCH(one_writer_kernel, 2, 8, 0, nullptr, out));
    EXPECT_REPORTS("writers in turn across barriers", 0, FSDP_LAUNCH(epochs_kernel, 1, 40, 0, nullptr, out));
    CHECK(out[0] == 39.0f, "epochs: %g", out[0]);
    EXPECT_REPORTS("shared atomics", 0, FSDP_LAUNCH(atomics_kernel, 1, 64, 0, nullptr, iout, 0));
    CHECK(iout[0] == 64, "atomics: %d", iout[0]);
    EXPECT_REPORTS("atomic and plain write", 1, FSDP_LAUNCH(atomics_kernel, 1, 64, 0, nullptr, iout, 1));
    EXPECT_REPORTS("lanes in turn with __syncwarp", 0,
                   FSDP_LAUNCH(warp_turns_kernel, 1, 32, 0, nullptr, out, 1));
    CHECK(out[0] == 32.0f, "warp turns: %g", out[0]);
    EXPECT_REPORTS("lanes in turn without __syncwarp", 1,
                   FSDP_LAUNCH(warp_turns_kernel, 1, 32, 0, nullptr, out, 0));
    EXPECT_REPORTS("early exit before __syncthreads", 1,
                   FSDP_LAUNCH(early_exit_kernel, 1, 8, 0, nullptr, out));
    EXPECT_REPORTS("dynamic shared, one writer each", 0,
                   FSDP_LAUNCH(dyn_kernel, 3, 16, 16 * sizeof(float), nullptr, out, 0));
    EXPECT_REPORTS("dynamic shared, racy", 1,
                   FSDP_LAUNCH(dyn_kernel, 1, 16, 16 * sizeof(float), nullptr, out, 1));
    /* a race in a later block (the detector watches less after the first) */
    EXPECT_REPORTS("race in block 3 only", 1, FSDP_LAUNCH(late_race_kernel, 5, 8, 0, nullptr, out));
    /* a bad configuration is a launch error, as on the GPU */
    FSDP_LAUNCH(racy_kernel, 1, 2048, 0, nullptr, out);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "1024+ threads accepted");
    free(out);
    free(iout);
}

static void test_semantics() {
    int *w = (int *)calloc(64 * 8, sizeof(int));
    FSDP_LAUNCH(warp_ops_kernel, 1, 64, 0, nullptr, w);
    CHECK(cudaGetLastError() == cudaSuccess, "warp ops launch");
    for (int t = 0; t < 64; t++) {
        const int lane = t % 32, *o = w + t * 8;
        CHECK(o[0] == 30, "shfl: %d", o[0]);
        CHECK(o[1] == (lane ^ 5), "shfl_xor lane %d: %d", lane, o[1]);
        CHECK(o[2] == (lane % 8 + 2 < 8 ? lane + 2 : lane), "shfl_down lane %d: %d", lane, o[2]);
        CHECK(o[3] == (lane % 16 >= 1 ? lane - 1 : lane), "shfl_up lane %d: %d", lane, o[3]);
        CHECK((unsigned)o[4] == 0xaaaaaaaau, "ballot: %x", o[4]);
        CHECK(o[5] == 1 && o[6] == 0, "any/all: %d %d", o[5], o[6]);
        CHECK(o[7] == 496, "reduce_add: %d", o[7]);
    }
    int *mc = (int *)calloc(64, sizeof(int));
    FSDP_LAUNCH(mask_change_kernel, 1, 32, 0, nullptr, mc);
    CHECK(cudaGetLastError() == cudaSuccess, "mask change launch");
    for (int t = 0; t < 32; t++) {
        CHECK((unsigned)mc[2 * t] == 0xffffffffu, "lane %d: ballot %x after a narrower collective", t, mc[2 * t]);
        CHECK(mc[2 * t + 1] == (t < 16 ? 100 : -1), "lane %d: half-warp shuffle %d", t, mc[2 * t + 1]);
    }
    free(mc);
    int *p = (int *)calloc(48, sizeof(int));
    FSDP_LAUNCH(partial_warp_kernel, 1, 48, 0, nullptr, p);
    CHECK(cudaGetLastError() == cudaSuccess, "partial warp launch");
    CHECK(p[0] == 32 && p[40] == 16, "partial warp sums: %d %d", p[0], p[40]);

    const int n = 3 * 2 * 2 * (4 * 3 * 2);
    int *ids = (int *)malloc(n * sizeof(int));
    memset(ids, 0xff, n * sizeof(int));
    FSDP_LAUNCH(index_kernel, dim3(3, 2, 2), dim3(4, 3, 2), 0, nullptr, ids);
    int ok = 1;
    for (int i = 0; i < n; i++) ok &= ids[i] == i;
    CHECK(ok, "3-D indices do not cover the grid");

    float *u = (float *)calloc(4, sizeof(float));
    FSDP_LAUNCH(uninit_kernel, 1, 4, 0, nullptr, u);
    CHECK(isnan(u[0]) && isnan(u[1]), "unwritten shared memory reads %g, not garbage", u[0]);

    float x[2 * 1000], sums[2];
    for (int i = 0; i < 2000; i++) x[i] = (float)(i % 1000);
    float *xp = x, *sp = sums;
    FSDP_LAUNCH(block_sum_kernel, 2, 96, 0, nullptr, sp, xp, 1000);
    CHECK(sums[0] == 499500.0f && sums[1] == 499500.0f, "block sum %g %g", sums[0], sums[1]);

    /* 16-bit conversions: the emulated intrinsics are dtype_math.h's */
    const float vals[] = {0.0f, -1.5f, 3.14159f, 65504.0f, 1e-6f, -7e30f};
    for (float v : vals) {
        CHECK(__float2bfloat16(v).__x == fsdp_f32_to_bf16(v), "bf16 of %g", v);
        CHECK(__float2half(v).__x == fsdp_f32_to_f16(v), "f16 of %g", v);
        CHECK(__bfloat162float(__float2bfloat16(v)) == fsdp_bf16_to_f32(fsdp_f32_to_bf16(v)), "bf16 back");
        CHECK(__half2float(__float2half(v)) == fsdp_f16_to_f32(fsdp_f32_to_f16(v)), "f16 back");
    }
    free(w); free(p); free(ids); free(u);
}

int main() {
    test_races();
    test_semantics();
    return check_exit("test_cuda_emu_race");
}
