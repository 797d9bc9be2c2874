/* cuda_emu.h - runs our own CUDA kernels on the host, for the tests (g++,
 * -DFSDP_EMULATE_CUDA, ideally -fsanitize=address). Test-only: never part of
 * a library.
 *
 * How a launch runs. FSDP_LAUNCH(kernel, grid, block, shmem, stream, args...)
 * runs the blocks one after another on the calling OS thread. The threads of
 * a block are cooperative fibers (ucontext), started in thread order; a fiber
 * runs until it reaches a sync point and then yields to the block's
 * scheduler, which resumes the next ready fiber:
 *   __syncthreads()    waits until every thread of the block has arrived;
 *   warp collectives   (__shfl*_sync, __ballot_sync, __any/__all_sync,
 *                      __reduce_*_sync, __syncwarp) wait until every lane named
 *                      in the mask has arrived; then all lanes read the values
 *                      the warp deposited, snapshotted at the release.
 * One collective at a time per warp: lanes of a warp that run different
 * collectives concurrently (disjoint masks in divergent branches) are
 * reported as a mask mismatch.
 * Strictness beyond the hardware: a thread that exits while others wait at
 * __syncthreads, or a warp op whose mask names an exited lane, is reported
 * as a deadlock; so is any state where no fiber can run.
 *
 * Shared memory. `__shared__` becomes `static` placed in the linker section
 * fsdp_emu_shared: since blocks run one after another on one OS thread, the
 * static is the block's shared memory. Before each block the section and the
 * dynamic shared buffer (FSDP_DYN_SHARED) are filled with 0xff bytes (NaN
 * floats), so a kernel that reads shared memory it never wrote fails loudly.
 * GCC ignores the section for static locals of templates: declare static
 * __shared__ arrays only in non-template functions (or use dynamic shared
 * memory); the race detector cannot see the others.
 *
 * Race detector. After every fiber time slice the shared bytes are compared
 * with a snapshot taken before it; each changed byte records (writer thread,
 * barrier epoch, warp epoch). A byte written by two different threads in one
 * barrier epoch is a race, unless both threads are in one warp and a warp
 * collective separates the writes, or both writes were atomics. Writes of
 * an unchanged value are invisible (benign). Races and deadlocks are printed,
 * counted in fsdp_emu::failures, and make the launch fail (cudaGetLastError
 * returns cudaErrorLaunchFailure), so the launcher's status fails too.
 *
 * AddressSanitizer: fiber switches are announced with the sanitizer fiber
 * API so ASan tracks each fiber's stack. Global memory races are not tracked. */
#ifndef FSDP_CUDA_EMU_H
#define FSDP_CUDA_EMU_H
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <vector>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FSDP_EMU_SWITCH_START(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define FSDP_EMU_SWITCH_END(save, bottom, size) __sanitizer_finish_switch_fiber(save, bottom, size)
#else
#define FSDP_EMU_SWITCH_START(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#define FSDP_EMU_SWITCH_END(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static __attribute__((section("fsdp_emu_shared"), aligned(16)))
#include "dtype_math.h" /* after the qualifiers: FSDP_HD uses them */
extern "C" char __start_fsdp_emu_shared[], __stop_fsdp_emu_shared[]; /* made by the linker */

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

/* ---- runtime API subset (memory is host memory, streams are ignored) --- */
typedef struct CUstream_st *cudaStream_t;
typedef enum cudaError {
    cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719
} cudaError_t;
enum cudaMemcpyKind { cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };

namespace fsdp_emu {
enum { READY, AT_BARRIER, AT_WARP, DONE };
enum { STACK = 128 << 10, MAX_REPORTS = 8 };
struct fiber { ucontext_t ctx; char *stack; int state; unsigned tid; void *fake; };
/* A warp's collective in progress (mask, arrived, in) and the last RING
 * released ones: a lane reads its release's values after lanes of another
 * mask may have completed newer collectives (epoch counts releases; each
 * lane remembers the one it took part in, checked when it reads). */
enum { RING = 4 };
struct released { uint32_t mask, epoch; uint64_t vals[32]; };
struct warp { uint32_t mask, arrived, epoch; uint64_t in[32]; released ring[RING]; uint32_t lane_epoch[32]; };
struct rec { uint32_t tid1, epoch, wepoch; };  /* tid1 = writer + 1, 0 = none */
struct launch {
    const char *name; int nthreads; std::vector<fiber> fibers; warp warps[32];
    ucontext_t sched; const void *sched_bottom; size_t sched_size;
    int bar_arrived; uint32_t epoch; std::vector<uint8_t> dyn, snap; std::vector<rec> recs;
    std::vector<uint8_t> written;                    /* per granule: written in this launch */
    std::vector<std::pair<size_t, size_t>> watch;    /* (first byte, bytes) checked per slice */
    std::vector<std::pair<size_t, size_t>> atomics;  /* (offset, bytes) atomic writes this slice */
    void (*body)(void *); void *arg; int reports;
};
inline thread_local launch *L;
inline thread_local fiber *running;
inline int failures;                      /* races + deadlocks + misuse seen so far */
inline thread_local cudaError_t last_error = cudaSuccess;

__attribute__((format(printf, 1, 2))) inline void fail(const char *fmt, ...) {
    failures++;
    if (L && L->reports++ >= MAX_REPORTS) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda_emu: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
inline size_t static_bytes() { return (size_t)(__stop_fsdp_emu_shared - __start_fsdp_emu_shared); }
inline long shared_offset(const void *p) {  /* -1 when p is not shared memory */
    const uint8_t *b = (const uint8_t *)p;
    if (b >= (uint8_t *)__start_fsdp_emu_shared && b < (uint8_t *)__stop_fsdp_emu_shared)
        return b - (uint8_t *)__start_fsdp_emu_shared;
    if (L && !L->dyn.empty() && b >= L->dyn.data() && b < L->dyn.data() + L->dyn.size())
        return (long)static_bytes() + (b - L->dyn.data());
    return -1;
}
/* Shared bytes are numbered: the static section first, then the dynamic
 * buffer. The first block of a launch has all of them watched; after each
 * block only the 64-byte granules the launch has written so far are (a
 * granule first written by a later block is missed for that block only). */
constexpr size_t GRANULE = 64;
inline uint8_t *shared_ptr(size_t i) {
    size_t s = static_bytes();
    return i < s ? (uint8_t *)__start_fsdp_emu_shared + i : L->dyn.data() + (i - s);
}
inline void watch_granules(bool all) {
    const size_t s = static_bytes(), n = L->snap.size();
    const size_t first[2] = {0, s}, last[2] = {s, n}; /* granules never straddle the two */
    size_t g = 0;
    L->watch.clear();
    for (int region = 0; region < 2; region++)
        for (size_t b = first[region]; b < last[region]; b += GRANULE, g++) {
            const size_t len = last[region] - b < GRANULE ? last[region] - b : GRANULE;
            for (size_t i = b; i < b + len && !all && !L->written[g]; i++)
                L->written[g] = *shared_ptr(i) != 0xff; /* each block starts all 0xff */
            if (!all && !L->written[g]) continue;
            if (!L->watch.empty() && L->watch.back().first + L->watch.back().second == b && b != s)
                L->watch.back().second += len;
            else
                L->watch.push_back({b, len});
        }
}
inline void snapshot() {
    for (auto &w : L->watch) memcpy(&L->snap[w.first], shared_ptr(w.first), w.second);
}
/* the bytes fiber f changed in its last slice, checked against their last writers */
inline void record_writes(const fiber &f, uint32_t epoch, uint32_t wepoch) {
    int reported = 0;  /* one report per slice: the first racy byte */
    for (auto &w : L->watch) {
        const uint8_t *now = shared_ptr(w.first);
        if (!memcmp(&L->snap[w.first], now, w.second)) continue;
        for (size_t i = w.first; i < w.first + w.second; i++) {
            if (now[i - w.first] == L->snap[i]) continue;
            uint32_t atomic = 0;
            for (auto &a : L->atomics)
                if (i >= a.first && i < a.first + a.second) atomic = 0x80000000u;
            rec &r = L->recs[i];
            uint32_t other = (r.tid1 & 0x7fffffffu) - 1;
            if (r.tid1 && r.epoch == epoch && other != f.tid && !(r.tid1 & atomic) &&
                !(other / 32 == f.tid / 32 && r.wepoch != wepoch) && !reported++)
                fail("race in %s: threads %u and %u of block (%u,%u,%u) both wrote %s shared byte %zu "
                     "between two barriers", L->name, other, f.tid, blockIdx.x, blockIdx.y, blockIdx.z,
                     i < static_bytes() ? "static" : "dynamic",
                     i < static_bytes() ? i : i - static_bytes());
            r = rec{(f.tid + 1) | atomic, epoch, wepoch};
        }
    }
}

inline void yield() {  /* fiber -> scheduler, back when made ready */
    fiber *f = running;
    FSDP_EMU_SWITCH_START(&f->fake, L->sched_bottom, L->sched_size);
    swapcontext(&f->ctx, &L->sched);
    FSDP_EMU_SWITCH_END(f->fake, &L->sched_bottom, &L->sched_size);
}
inline void fiber_main() {
    FSDP_EMU_SWITCH_END(nullptr, &L->sched_bottom, &L->sched_size);
    L->body(L->arg);
    running->state = DONE;
    FSDP_EMU_SWITCH_START(nullptr, L->sched_bottom, L->sched_size);  /* this stack is done */
    setcontext(&L->sched);
}
inline void set_thread_index(unsigned tid) {
    threadIdx = dim3(tid % blockDim.x, tid / blockDim.x % blockDim.y, tid / (blockDim.x * blockDim.y));
}
inline void run_block(std::vector<char *> &stacks) {
    int n = L->nthreads;
    for (int i = 0; i < n; i++) {
        fiber &f = L->fibers[i];
        f.stack = stacks[i]; f.state = READY; f.tid = (unsigned)i; f.fake = nullptr;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack; f.ctx.uc_stack.ss_size = STACK; f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    memset(__start_fsdp_emu_shared, 0xff, static_bytes());  /* shared memory starts as garbage */
    if (!L->dyn.empty()) memset(L->dyn.data(), 0xff, L->dyn.size());
    memset(L->recs.data(), 0, L->recs.size() * sizeof(rec));
    for (auto &w : L->warps) w = warp{};
    L->bar_arrived = 0; L->epoch = 1;
    for (int done = 0; done < n;) {
        int ran = 0;
        for (int i = 0; i < n; i++) {
            fiber &f = L->fibers[i];
            if (f.state != READY) continue;
            uint32_t epoch = L->epoch, wepoch = L->warps[i / 32].epoch;
            snapshot();
            L->atomics.clear();
            running = &f; set_thread_index(f.tid);
            void *fake = nullptr;
            FSDP_EMU_SWITCH_START(&fake, f.stack, STACK);
            swapcontext(&L->sched, &f.ctx);
            FSDP_EMU_SWITCH_END(fake, nullptr, nullptr);
            running = nullptr;
            record_writes(f, epoch, wepoch);
            done += f.state == DONE;
            ran = 1;
        }
        if (!ran) {
            int bar = 0, wp = 0;
            for (auto &f : L->fibers) { bar += f.state == AT_BARRIER; wp += f.state == AT_WARP; }
            fail("deadlock in %s block (%u,%u,%u): %d threads wait at __syncthreads, %d at a "
                 "warp op, %d exited", L->name, blockIdx.x, blockIdx.y, blockIdx.z, bar, wp, done);
#if defined(__SANITIZE_ADDRESS__)
            for (auto &f : L->fibers) __asan_unpoison_memory_region(f.stack, STACK);  /* reused */
#endif
            return;
        }
    }
    watch_granules(false);
}

template <class F> void launch_kernel(const char *name, dim3 grid, dim3 block, size_t shmem, F body) {
    long nthreads = (long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || nthreads < 1 || nthreads > 1024 || block.z > 64 ||
        grid.y > 65535 || grid.z > 65535 || shmem > (227u << 10)) {
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    static thread_local std::vector<char *> stacks;  /* with a PROT_NONE guard page below */
    while ((long)stacks.size() < nthreads) {
        char *p = (char *)mmap(nullptr, STACK + 4096, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { last_error = cudaErrorMemoryAllocation; return; }
        mprotect(p, 4096, PROT_NONE);
        stacks.push_back(p + 4096);
    }
    launch l{};
    l.name = name; l.nthreads = (int)nthreads; l.fibers.resize(nthreads);
    l.dyn.resize(shmem); l.snap.resize(static_bytes() + shmem); l.recs.resize(l.snap.size());
    l.written.assign(l.snap.size() / GRANULE + 2, 0); /* granules per region, rounded up */
    l.body = [](void *p) { (*(F *)p)(); }; l.arg = &body;
    int failures_before = failures;
    L = &l; blockDim = block; gridDim = grid;
    watch_granules(true);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x && failures == failures_before; x++) {
                blockIdx = dim3(x, y, z);
                run_block(stacks);
            }
    L = nullptr;
    if (failures != failures_before) last_error = cudaErrorLaunchFailure;
}

/* one warp collective: deposit v, wait for the lanes of mask, get all values */
inline const released &collective(uint32_t mask, uint64_t v, const char *op) {
    fiber *f = running;
    if (!f) { fail("%s outside a kernel", op); abort(); }
    warp &w = L->warps[f->tid / 32];
    unsigned lane = f->tid % 32, first = f->tid - lane;
    uint32_t exist = L->nthreads - first >= 32 ? 0xffffffffu : (1u << (L->nthreads - first)) - 1;
    if (!(mask >> lane & 1) || (w.arrived && w.mask != (mask & exist)))
        fail("%s in %s: lane %u called with mask %x, another lane with %x", op, L->name, lane, mask,
             w.mask);
    if (!w.arrived) w.mask = mask & exist;
    w.in[lane] = v;
    w.arrived |= 1u << lane;
    f->state = AT_WARP;
    if ((w.arrived & w.mask) == w.mask) {  /* last lane: release the warp */
        w.epoch++;
        released &r = w.ring[w.epoch % RING];
        r.mask = w.mask;
        r.epoch = w.epoch;
        memcpy(r.vals, w.in, sizeof r.vals);
        for (unsigned i = 0; i < 32; i++)
            if (w.mask >> i & 1) {
                L->fibers[first + i].state = READY;
                w.lane_epoch[i] = w.epoch;
            }
        w.arrived = 0;
    }
    yield();
    const released &r = w.ring[w.lane_epoch[lane] % RING];
    if (r.epoch != w.lane_epoch[lane]) fail("%s in %s: emulator ring overrun", op, L->name);
    return r;
}
inline unsigned lane_id() { return running->tid % 32; }
template <class T> uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp values are at most 8 bytes");
    uint64_t b = 0; memcpy(&b, &v, sizeof v); return b;
}
template <class T> T shuffle(uint32_t mask, T v, int src, const char *op) {
    const released &rel = collective(mask, to_bits(v), op);
    if (src < 0 || src > 31 || !(rel.mask >> src & 1)) src = (int)lane_id();
    T r; memcpy(&r, &rel.vals[src], sizeof r); return r;
}
}  // namespace fsdp_emu

inline void __syncthreads() {
    using namespace fsdp_emu;
    if (!running) { fail("__syncthreads outside a kernel"); abort(); }
    running->state = AT_BARRIER;
    if (++L->bar_arrived == L->nthreads) {
        for (auto &f : L->fibers) if (f.state == AT_BARRIER) f.state = READY;
        L->bar_arrived = 0;
        L->epoch++;
    }
    yield();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { fsdp_emu::collective(mask, 0, "__syncwarp"); }
template <class T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    int lane = (int)fsdp_emu::lane_id();
    return fsdp_emu::shuffle(mask, v, (lane & ~(width - 1)) + (src & (width - 1)), "__shfl_sync");
}
template <class T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    int lane = (int)fsdp_emu::lane_id(), src = lane ^ lane_mask;
    return fsdp_emu::shuffle(mask, v, (src ^ lane) >= width ? lane : src, "__shfl_xor_sync");
}
template <class T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = (int)fsdp_emu::lane_id();
    int src = (lane & (width - 1)) + (int)delta < width ? lane + (int)delta : lane;
    return fsdp_emu::shuffle(mask, v, src, "__shfl_down_sync");
}
template <class T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = (int)fsdp_emu::lane_id();
    return fsdp_emu::shuffle(mask, v, (lane & (width - 1)) >= (int)delta ? lane - (int)delta : lane,
                             "__shfl_up_sync");
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    const fsdp_emu::released &rel = fsdp_emu::collective(mask, pred != 0, "__ballot_sync");
    unsigned r = 0;
    for (unsigned i = 0; i < 32; i++) r |= (unsigned)((rel.mask >> i & 1) && rel.vals[i]) << i;
    return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
    const fsdp_emu::released &rel = fsdp_emu::collective(mask, pred != 0, "__all_sync");
    for (unsigned i = 0; i < 32; i++)
        if ((rel.mask >> i & 1) && !rel.vals[i]) return 0;
    return 1;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
    const fsdp_emu::released &rel = fsdp_emu::collective(mask, v, "__reduce_add_sync");
    unsigned r = 0;
    for (unsigned i = 0; i < 32; i++) r += (rel.mask >> i & 1) ? (unsigned)rel.vals[i] : 0u;
    return r;
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
    const fsdp_emu::released &rel = fsdp_emu::collective(mask, v, "__reduce_max_sync");
    unsigned r = 0;
    for (unsigned i = 0; i < 32; i++) r = (rel.mask >> i & 1) && rel.vals[i] > r ? (unsigned)rel.vals[i] : r;
    return r;
}

/* atomics: one OS thread runs every fiber, so a plain read-modify-write is
 * atomic; shared-memory targets are marked so the race detector allows them */
namespace fsdp_emu {
template <class T, class F> T atomic_rmw(T *p, F op) {
    long off = shared_offset(p);
    if (off >= 0 && L) L->atomics.push_back({(size_t)off, sizeof(T)});
    T old = *p; *p = op(old); return old;
}
}  // namespace fsdp_emu
template <class T> T atomicAdd(T *p, T v) { return fsdp_emu::atomic_rmw(p, [v](T o) { return o + v; }); }
template <class T> T atomicMax(T *p, T v) { return fsdp_emu::atomic_rmw(p, [v](T o) { return o < v ? v : o; }); }
template <class T> T atomicMin(T *p, T v) { return fsdp_emu::atomic_rmw(p, [v](T o) { return v < o ? v : o; }); }
template <class T> T atomicExch(T *p, T v) { return fsdp_emu::atomic_rmw(p, [v](T) { return v; }); }
template <class T> T atomicCAS(T *p, T cmp, T v) {
    return fsdp_emu::atomic_rmw(p, [cmp, v](T o) { return o == cmp ? v : o; });
}

/* ---- 16-bit float types: storage plus the conversions our kernels use --- */
struct __nv_bfloat16 { unsigned short __x; };
struct __half { unsigned short __x; };
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16{fsdp_f32_to_bf16(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return fsdp_bf16_to_f32(h.__x); }
inline __half __float2half(float f) { return __half{fsdp_f32_to_f16(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __half2float(__half h) { return fsdp_f16_to_f32(h.__x); }

/* device math that glibc lacks */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class T> T __ldg(const T *p) { return *p; }

inline cudaError_t cudaGetLastError() {
    cudaError_t e = fsdp_emu::last_error;
    fsdp_emu::last_error = cudaSuccess;
    return e;
}
inline cudaError_t cudaPeekAtLastError() { return fsdp_emu::last_error; }
inline const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    case cudaErrorLaunchFailure: return "kernel failed under emulation (race or deadlock, see stderr)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    default: return "invalid argument (emulated)";
    }
}
/* ---- device memory -------------------------------------------------------
 * In the kernel tests device memory is plain malloc. In the emulated backend
 * library (build/libfsdp_cuda_emu.so, -DFSDP_EMU_DEVICE_ARENA) it comes from
 * one reserved arena that is PROT_NONE except while a kernel, a copy or a
 * memset runs: host code that touches device memory directly (a Lua
 * ptr()[i] on a cuda tensor, a memcpy that should have been a cudaMemcpy)
 * faults at once, as it would on a GPU, instead of passing silently. */
namespace fsdp_emu {
#ifdef FSDP_EMU_DEVICE_ARENA
struct arena_state {
    uint8_t *base = nullptr;
    size_t top = 0, cap = 0, in_use = 0;
    int open_depth = 0;
    std::vector<std::pair<size_t, std::vector<size_t>>> free_lists; /* (bytes, offsets) */
    std::vector<std::pair<size_t, size_t>> live;                    /* (offset, bytes) */
};
inline arena_state arena;
inline size_t arena_capacity() {
    const char *e = getenv("FSDP_EMU_DEVICE_MEMORY"); /* bytes, default 8 GiB */
    return e && *e ? (size_t)strtoull(e, nullptr, 10) : ((size_t)8 << 30);
}
inline bool arena_reserve() {
    if (arena.base) return true;
    arena.cap = arena_capacity();
    void *p = mmap(nullptr, arena.cap, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    arena.base = (uint8_t *)p;
    return true;
}
/* device memory becomes accessible to the host thread for a kernel or copy */
inline void device_open() {
    if (arena.open_depth++ == 0 && arena.top) mprotect(arena.base, arena.top, PROT_READ | PROT_WRITE);
}
inline void device_close() {
    if (--arena.open_depth == 0 && arena.top) mprotect(arena.base, arena.top, PROT_NONE);
}
inline void *dev_alloc(size_t n) {
    if (!arena_reserve()) return nullptr;
    n = n ? (n + 4095) & ~(size_t)4095 : 4096;
    size_t off = (size_t)-1;
    for (auto &fl : arena.free_lists)
        if (fl.first == n && !fl.second.empty()) { off = fl.second.back(); fl.second.pop_back(); break; }
    if (off == (size_t)-1) {
        if (arena.top + n > arena.cap) return nullptr;
        off = arena.top;
        arena.top += n;
        if (arena.open_depth) mprotect(arena.base + off, n, PROT_READ | PROT_WRITE);
    }
    arena.live.push_back({off, n});
    arena.in_use += n;
    return arena.base + off;
}
inline bool dev_free(void *p) {
    size_t off = (size_t)((uint8_t *)p - arena.base);
    for (size_t i = 0; i < arena.live.size(); i++)
        if (arena.live[i].first == off) {
            size_t n = arena.live[i].second;
            arena.live[i] = arena.live.back();
            arena.live.pop_back();
            arena.in_use -= n;
            for (auto &fl : arena.free_lists)
                if (fl.first == n) { fl.second.push_back(off); return true; }
            arena.free_lists.push_back({n, std::vector<size_t>{off}});
            return true;
        }
    return false;
}
#else
inline void device_open() {}
inline void device_close() {}
inline void *dev_alloc(size_t n) { return malloc(n ? n : 1); }
inline bool dev_free(void *p) { free(p); return true; }
#endif
struct device_scope {
    device_scope() { device_open(); }
    ~device_scope() { device_close(); }
};
}  // namespace fsdp_emu

inline cudaError_t cudaMallocAsync(void **p, size_t n, cudaStream_t) {
    *p = fsdp_emu::dev_alloc(n);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFreeAsync(void *p, cudaStream_t) {
    if (p && !fsdp_emu::dev_free(p)) return cudaErrorInvalidValue;
    return cudaSuccess;
}
inline cudaError_t cudaMalloc(void **p, size_t n) { return cudaMallocAsync(p, n, nullptr); }
inline cudaError_t cudaFree(void *p) { return cudaFreeAsync(p, nullptr); }
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t = nullptr) {
    fsdp_emu::device_scope open;
    memset(p, v, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind,
                                   cudaStream_t = nullptr) {
    fsdp_emu::device_scope open;
    memmove(d, s, n);
    return cudaSuccess;
}

/* ---- the rest of the runtime the engine's CUDA files use (devices, streams,
 * events, pinned memory). One emulated device; streams and events exist but
 * everything runs synchronously, so an event is complete once recorded. */
struct CUevent_st { double t_ms; };
typedef struct CUevent_st *cudaEvent_t;
enum { cudaStreamNonBlocking = 1, cudaEventDefault = 0, cudaEventDisableTiming = 2,
       cudaHostAllocPortable = 1, cudaHostAllocDefault = 0 };
enum cudaDeviceAttr { cudaDevAttrClockRate = 13 };
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem;
};
namespace fsdp_emu {
inline int current_device = 0;
inline double now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
}  // namespace fsdp_emu
inline const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorInvalidValue";
    }
}
inline cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) {
    if (d != 0) return cudaErrorInvalidValue;
    fsdp_emu::current_device = d;
    return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int *d) { *d = fsdp_emu::current_device; return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    if (d != 0) return cudaErrorInvalidValue;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "emulated CUDA device (tests/cuda/emu, runs on the CPU)");
    p->major = 8; p->minor = 0; p->multiProcessorCount = 1;
#ifdef FSDP_EMU_DEVICE_ARENA
    p->totalGlobalMem = fsdp_emu::arena_capacity();
#else
    p->totalGlobalMem = (size_t)1 << 30;
#endif
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr, int d) {
    *v = 1000; /* kHz: a nominal clock, the emulation has no peak to speak of */
    return d == 0 ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
#ifdef FSDP_EMU_DEVICE_ARENA
    *total_b = fsdp_emu::arena_capacity();
    *free_b = *total_b - fsdp_emu::arena.in_use;
#else
    *total_b = *free_b = (size_t)1 << 30;
#endif
    return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    static char streams[64];  /* distinct non-NULL handles; nothing behind them */
    static unsigned next;
    *s = (cudaStream_t)(streams + (next++ % 64));
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) {
    *e = new CUevent_st{0};
    return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = nullptr) {
    e->t_ms = fsdp_emu::now_ms();
    return cudaSuccess;
}
inline cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned = 0) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)(b->t_ms - a->t_ms);
    return cudaSuccess;
}
namespace fsdp_emu {
inline std::vector<std::pair<uintptr_t, size_t>> pinned; /* (start, bytes) of cudaHostAlloc blocks */
}
inline cudaError_t cudaHostAlloc(void **p, size_t n, unsigned) {
    *p = malloc(n ? n : 1);  /* host memory: never protected */
    if (*p) fsdp_emu::pinned.push_back({(uintptr_t)*p, n ? n : 1});
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaMallocHost(void **p, size_t n) { return cudaHostAlloc(p, n, 0); }
inline cudaError_t cudaFreeHost(void *p) {
    for (size_t i = 0; i < fsdp_emu::pinned.size(); i++)
        if (fsdp_emu::pinned[i].first == (uintptr_t)p) {
            fsdp_emu::pinned[i] = fsdp_emu::pinned.back();
            fsdp_emu::pinned.pop_back();
            break;
        }
    free(p);
    return cudaSuccess;
}
/* what a pointer is: the arena's device memory, a cudaHostAlloc block
 * ("pinned"), or other host memory (kernel tests: device memory is malloc,
 * and is reported as host memory) */
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2,
                      cudaMemoryTypeManaged = 3 };
struct cudaPointerAttributes { cudaMemoryType type; int device; void *devicePointer, *hostPointer; };
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p) {
    const uintptr_t u = (uintptr_t)p;
    a->type = cudaMemoryTypeUnregistered;
    a->device = 0;
    a->devicePointer = a->hostPointer = nullptr;
#ifdef FSDP_EMU_DEVICE_ARENA
    if (fsdp_emu::arena.base && u >= (uintptr_t)fsdp_emu::arena.base &&
        u < (uintptr_t)fsdp_emu::arena.base + fsdp_emu::arena.cap) {
        a->type = cudaMemoryTypeDevice;
        a->devicePointer = (void *)p;
        return cudaSuccess;
    }
#endif
    for (const auto &b : fsdp_emu::pinned)
        if (u >= b.first && u < b.first + b.second) {
            a->type = cudaMemoryTypeHost;
            a->hostPointer = a->devicePointer = (void *)p;
        }
    return cudaSuccess;
}

/* the scope object lives to the end of the full expression: device memory
 * is open for the whole launch */
#define FSDP_LAUNCH(kernel, grid, block, shmem, stream, ...)                                 \
    ((void)(stream), fsdp_emu::device_scope(),                                                \
     fsdp_emu::launch_kernel(#kernel, dim3(grid), dim3(block), (size_t)(shmem),               \
                             [=] { kernel(__VA_ARGS__); }))
#define FSDP_DYN_SHARED(type, name) type *name = (type *)fsdp_emu::L->dyn.data()
#endif
