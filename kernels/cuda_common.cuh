/* cuda_common.cuh - what every kernels/<op>_cuda.cu includes: the CUDA
 * runtime (or, under -DFSDP_EMULATE_CUDA, the test fiber emulation of
 * tests/cuda/emu/cuda_emu.h), the launch macro, warp/block reductions and
 * the launcher helpers.
 *
 * Rules that keep a kernel runnable under the emulation (the CI tests):
 *   - launch only with FSDP_LAUNCH(kernel, grid, block, shmem, stream, args...);
 *   - static __shared__ arrays only in non-template functions;
 *   - every thread of a block reaches every __syncthreads, every lane of a
 *     warp every full-mask warp op (no early return before them);
 *   - no mma/wgmma/cp.async/TMA or inline PTX.
 * Block sizes are picked from the shapes alone, never from the device, so a
 * reduction has the same order (and bits) on every run. */
#ifndef FSDP_CUDA_COMMON_CUH
#define FSDP_CUDA_COMMON_CUH

#ifdef FSDP_EMULATE_CUDA
#include "cuda_emu.h"
#else
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define FSDP_LAUNCH(kernel, grid, block, shmem, stream, ...) \
    kernel<<<(grid), (block), (shmem), (stream)>>>(__VA_ARGS__)
#define FSDP_DYN_SHARED(type, name)                                \
    extern __shared__ __align__(16) unsigned char fsdp_dyn_smem[]; \
    type *name = reinterpret_cast<type *>(fsdp_dyn_smem)
#endif

#include <math.h>
#include <stdint.h>
#include "fsdp.h"
extern "C" {
#include "internal.h" /* fsdp_error, FSDP_CHECK_ARG (fsdp.h is already in) */
}

#define FSDP_FULL_MASK 0xffffffffu

/* ---- device helpers ----------------------------------------------------- */

/* sum over the 32 lanes; every lane gets the same bits (the xor butterfly
 * adds the same pairs in the same order on both sides) */
static __device__ __forceinline__ float fsdp_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FSDP_FULL_MASK, v, o);
    return v;
}
static __device__ __forceinline__ double fsdp_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FSDP_FULL_MASK, v, o);
    return v;
}
static __device__ __forceinline__ float fsdp_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FSDP_FULL_MASK, v, o));
    return v;
}

/* Block-wide sums over a 1-D block whose size is a multiple of 32 (<= 1024);
 * every thread must call, every thread gets the sum. The trailing barrier
 * lets the same shared array serve the next call. */
static __device__ inline float fsdp_block_sum(float v) {
    __shared__ float part[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = fsdp_warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < (int)blockDim.x / 32 ? part[lane] : 0.0f;
    v = fsdp_warp_sum(v);
    __syncthreads();
    return v;
}
static __device__ inline double fsdp_block_sum_d(double v) {
    __shared__ double part_d[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = fsdp_warp_sum_d(v);
    if (lane == 0) part_d[warp] = v;
    __syncthreads();
    v = lane < (int)blockDim.x / 32 ? part_d[lane] : 0.0;
    v = fsdp_warp_sum_d(v);
    __syncthreads();
    return v;
}

/* Column sums for parameter gradients, with a 32 x 32 block: thread (x, y)
 * passes its partial sum of column x over rows y, y+32, ...; thread (x, 0)
 * gets the 32 partials of its column added in order of y (others get 0). */
static __device__ inline float fsdp_tile_colsum(float partial) {
    __shared__ float tile[32][32];
    tile[threadIdx.y][threadIdx.x] = partial;
    __syncthreads();
    float s = 0.0f;
    if (threadIdx.y == 0)
        for (int y = 0; y < 32; y++) s += tile[y][threadIdx.x];
    __syncthreads();
    return s;
}

/* one element as f32 from / to a float-like dtype (FSDP_F32, FSDP_BF16,
 * FSDP_F16), the bit-exact conversions of dtype_math.h */
#include "dtype_math.h"

/* ---- launcher helpers --------------------------------------------------- */

/* threads per block for a 1-D elementwise kernel and the grid covering n */
enum { FSDP_EW_THREADS = 256 };
static inline unsigned fsdp_cuda_grid(int64_t n, int threads) {
    return (unsigned)((n + threads - 1) / threads);
}
/* largest 1-D grid allowed (2^31 - 1 blocks) */
#define FSDP_CUDA_MAX_GRID 2147483647LL

/* after a launch: the launch error (bad configuration, no device, a fault
 * already raised by earlier work) becomes FSDP_ERR_DEVICE naming the kernel */
static inline int fsdp_cuda_launched(const char *fn) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return fsdp_error(FSDP_ERR_DEVICE, "%s: kernel launch failed: %s", fn, cudaGetErrorString(e));
    return FSDP_OK;
}
static inline int fsdp_cuda_status(cudaError_t e, const char *fn, const char *what) {
    if (e != cudaSuccess)
        return fsdp_error(e == cudaErrorMemoryAllocation ? (int)FSDP_ERR_OOM : (int)FSDP_ERR_DEVICE,
                          "%s: %s failed: %s", fn, what, cudaGetErrorString(e));
    return FSDP_OK;
}
#define FSDP_CUDA_CHECK_N(fn, n) \
    FSDP_CHECK_ARG((n) >= 0, "%s: n must be >= 0, got %lld", fn, (long long)(n))
#define FSDP_CUDA_CHECK_GRID(fn, blocks)                                                    \
    FSDP_CHECK_ARG((long long)(blocks) <= FSDP_CUDA_MAX_GRID, "%s: %lld blocks exceed the " \
                   "grid limit", fn, (long long)(blocks))
#endif
