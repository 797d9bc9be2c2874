/* alloc_cuda.cu - caching device allocator with current/peak statistics.
 *
 * cudaMalloc and cudaFree are slow and cudaFree synchronizes the device, so
 * freed blocks are kept and handed to the next request of the same size
 * class on the same stream, PyTorch-style. Size classes: multiples of 512
 * bytes up to 1 MiB, above that 1/16 of the next power of two (at most 6%
 * slack). A block is reused only on the stream it was allocated for: work
 * queued on that stream before the free finishes before work queued after
 * the reuse, so no event is needed; using a block on another stream is the
 * caller's job to synchronize.
 *
 * When cudaMalloc fails, the device's cached blocks are released and the
 * request retried once; a second failure is FSDP_ERR_OOM with a message that
 * names the rank, the device, the request and the usage. */
#include <stdlib.h>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>
#include "cuda_engine.cuh"

namespace {

struct live_block {
    int device;
    cudaStream_t stream;
    int64_t size;       /* size class actually allocated */
    int64_t requested;
};

struct pool_key {
    cudaStream_t stream;
    int64_t size;
    bool operator<(const pool_key &o) const {
        return stream != o.stream ? stream < o.stream : size < o.size;
    }
};

struct device_pool {
    fsdp_mem_stats stats = {};  /* current/peak: bytes requested by live blocks */
    int64_t live_bytes = 0;     /* size classes of the live blocks */
    int64_t cached_bytes = 0;   /* free blocks kept for reuse */
    std::map<pool_key, std::vector<void *>> free_blocks;
};

std::mutex lock;
std::map<int, device_pool> pools;
std::unordered_map<void *, live_block> live;
int rank_override = -1;

int64_t size_class(int64_t n) {
    if (n <= 0) n = 1;
    if (n <= (1 << 20)) return (n + 511) / 512 * 512;
    int64_t p = 1 << 20;
    while (p < n) p <<= 1;
    const int64_t step = p / 16;
    return (n + step - 1) / step * step;
}

/* frees the cached blocks of one device; the caller holds the lock */
int release_cache(int device, device_pool &pool) {
    int prev = 0, rc = FSDP_OK;
    cudaGetDevice(&prev);
    cudaSetDevice(device);
    for (auto &entry : pool.free_blocks)
        for (void *p : entry.second) {
            cudaError_t e = cudaFree(p);
            if (e != cudaSuccess && rc == FSDP_OK)
                rc = fsdp_cuda_check(e, "fsdp_cuda_mem_empty_cache", "cudaFree");
        }
    pool.free_blocks.clear();
    pool.cached_bytes = 0;
    cudaSetDevice(prev);
    return rc;
}

}  // namespace

int fsdp_cuda_rank(void) {
    if (rank_override >= 0) return rank_override;
    const char *names[] = {"RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"};
    for (const char *n : names) {
        const char *v = getenv(n);
        if (v && *v) return atoi(v);
    }
    return 0;
}

void fsdp_cuda_set_rank(int rank) { rank_override = rank; }

void *fsdp_cuda_alloc(int device, int64_t nbytes, fsdp_stream stream) {
    const char *fn = "fsdp_cuda_alloc";
    if (nbytes < 0)
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: negative size %lld", fn, (long long)nbytes);
    if (device < 0)
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: device %d is not a GPU", fn, device);
    const int64_t size = size_class(nbytes);
    std::lock_guard<std::mutex> guard(lock);
    device_pool &pool = pools[device];
    void *p = NULL;
    int miss = 0;
    auto it = pool.free_blocks.find(pool_key{stream, size});
    if (it != pool.free_blocks.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        pool.cached_bytes -= size;
    } else {
        int prev = 0;
        cudaGetDevice(&prev);
        cudaError_t e = cudaSetDevice(device);
        if (e == cudaSuccess) e = cudaMalloc(&p, (size_t)size);
        if (e == cudaErrorMemoryAllocation) { /* give the cache back and try once more */
            cudaGetLastError();
            release_cache(device, pool);
            e = cudaMalloc(&p, (size_t)size);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            cudaSetDevice(prev);
            return fsdp_error_null(
                e == cudaErrorMemoryAllocation ? (int)FSDP_ERR_OOM : (int)FSDP_ERR_DEVICE,
                "rank %d, cuda:%d: cannot allocate %lld bytes (%s): %lld bytes in use by live "
                "blocks (peak %lld), %lld cached; the device has %lld of %lld bytes free",
                fsdp_cuda_rank(), device, (long long)nbytes, cudaGetErrorString(e),
                (long long)pool.stats.current, (long long)pool.stats.peak,
                (long long)pool.cached_bytes, (long long)free_b, (long long)total_b);
        }
        cudaSetDevice(prev);
        miss = 1;
    }
    live[p] = live_block{device, stream, size, nbytes};
    pool.stats.current += nbytes;
    pool.live_bytes += size;
    if (pool.stats.current > pool.stats.peak) pool.stats.peak = pool.stats.current;
    pool.stats.n_allocs++;
    pool.stats.n_misses += miss;
    return p;
}

void fsdp_cuda_free(void *ptr) {
    if (!ptr) return;
    std::lock_guard<std::mutex> guard(lock);
    auto it = live.find(ptr);
    if (it == live.end()) return; /* not ours (or freed twice): leave it alone */
    const live_block b = it->second;
    live.erase(it);
    device_pool &pool = pools[b.device];
    pool.stats.current -= b.requested;
    pool.live_bytes -= b.size;
    pool.free_blocks[pool_key{b.stream, b.size}].push_back(ptr);
    pool.cached_bytes += b.size;
}

int fsdp_cuda_mem_get_stats(int device, fsdp_mem_stats *out) {
    FSDP_CHECK_ARG(out, "fsdp_cuda_mem_get_stats: out is NULL");
    FSDP_CHECK_ARG(device >= 0, "fsdp_cuda_mem_get_stats: device %d is not a GPU", device);
    std::lock_guard<std::mutex> guard(lock);
    const device_pool &pool = pools[device];
    *out = pool.stats;
    out->reserved = pool.live_bytes + pool.cached_bytes;
    return FSDP_OK;
}

void fsdp_cuda_mem_reset_peak(int device) {
    std::lock_guard<std::mutex> guard(lock);
    device_pool &pool = pools[device];
    pool.stats.peak = pool.stats.current;
}

int fsdp_cuda_mem_empty_cache(int device) {
    std::lock_guard<std::mutex> guard(lock);
    auto it = pools.find(device);
    return it == pools.end() ? FSDP_OK : release_cache(device, it->second);
}
