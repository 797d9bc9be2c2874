/* alloc.c - host memory with a caching pool and current/peak statistics.
 *
 * Training allocates the same sizes every step (activations, gradients). The
 * pool keeps freed blocks in per-size free lists so the next step reuses them
 * without asking the system (and without re-faulting pages), the way PyTorch's
 * CUDA caching allocator does for device memory. Sizes are rounded to a class
 * (64-byte steps below 64 KiB, then 1/16 of the next power of two) so slightly
 * different requests share blocks. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

typedef struct free_block { struct free_block *next; } free_block;

typedef struct bucket {
    int64_t size;
    free_block *head;
    struct bucket *next;
} bucket;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bucket *buckets;
static fsdp_mem_stats host_stats; /* current/peak: bytes requested by live storages */
static int64_t host_blocks;        /* bytes of the size-class blocks behind them */
static int64_t host_cached;        /* bytes of free blocks kept in the pool */

static const fsdp_device_ops *device_ops; /* libfsdp_cuda's, once installed */

void fsdp_set_device_ops(const fsdp_device_ops *ops) { device_ops = ops; }

const fsdp_device_ops *fsdp_device_ops_for(int device) {
    if (!device_ops)
        return fsdp_error_null(FSDP_ERR_UNSUPPORTED,
                               "device cuda:%d: no CUDA backend is loaded in this process (--device cuda "
                               "loads build/libfsdp_cuda.so)", device);
    return device_ops;
}

static int64_t size_class(int64_t n) {
    if (n <= 0) n = 1;
    if (n <= 65536) return (n + 63) & ~(int64_t)63;
    int64_t p = 65536;
    while (p < n) p <<= 1;
    int64_t step = p / 16;
    return (n + step - 1) / step * step;
}

static bucket *find_bucket(int64_t size, int create) {
    for (bucket *b = buckets; b; b = b->next)
        if (b->size == size) return b;
    if (!create) return NULL;
    bucket *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->size = size;
    b->next = buckets;
    buckets = b;
    return b;
}

void *fsdp_mem_alloc(int device, int64_t nbytes) {
    if (device != FSDP_CPU) {
        const fsdp_device_ops *ops = fsdp_device_ops_for(device);
        return ops ? ops->alloc(device, nbytes) : NULL;
    }
    if (nbytes < 0) return fsdp_error_null(FSDP_ERR_INVALID, "negative allocation size %lld", (long long)nbytes);
    int64_t size = size_class(nbytes);
    void *p = NULL;
    pthread_mutex_lock(&lock);
    bucket *b = find_bucket(size, 0);
    if (b && b->head) {
        p = b->head;
        b->head = b->head->next;
        host_cached -= size;
    }
    pthread_mutex_unlock(&lock);
    int miss = 0;
    if (!p) {
        if (posix_memalign(&p, 64, (size_t)size) != 0) {
            pthread_mutex_lock(&lock);
            int64_t cur = host_stats.current, cached = host_cached;
            pthread_mutex_unlock(&lock);
            return fsdp_error_null(FSDP_ERR_OOM,
                                   "out of host memory: request of %lld bytes failed "
                                   "(in use %lld bytes, cached %lld bytes)",
                                   (long long)nbytes, (long long)cur, (long long)cached);
        }
        miss = 1;
    }
    pthread_mutex_lock(&lock);
    host_stats.current += nbytes;
    host_blocks += size;
    if (host_stats.current > host_stats.peak) host_stats.peak = host_stats.current;
    host_stats.n_allocs++;
    host_stats.n_misses += miss;
    pthread_mutex_unlock(&lock);
    return p;
}

void fsdp_mem_release(int device, void *ptr, int64_t nbytes) {
    if (!ptr) return;
    if (device != FSDP_CPU) {
        if (device_ops) device_ops->release(ptr);
        return;
    }
    int64_t size = size_class(nbytes);
    pthread_mutex_lock(&lock);
    host_stats.current -= nbytes;
    host_blocks -= size;
    bucket *b = find_bucket(size, 1);
    if (b) {
        free_block *fb = ptr;
        fb->next = b->head;
        b->head = fb;
        host_cached += size;
    } else {
        free(ptr);
    }
    pthread_mutex_unlock(&lock);
}

int fsdp_mem_get_stats(int device, fsdp_mem_stats *out) {
    if (device != FSDP_CPU) {
        const fsdp_device_ops *ops = fsdp_device_ops_for(device);
        return ops ? ops->get_stats(device, out) : FSDP_ERR_UNSUPPORTED;
    }
    pthread_mutex_lock(&lock);
    *out = host_stats;
    out->reserved = host_blocks + host_cached;
    pthread_mutex_unlock(&lock);
    return FSDP_OK;
}

void fsdp_mem_reset_peak(int device) {
    if (device != FSDP_CPU) {
        if (device_ops) device_ops->reset_peak(device);
        return;
    }
    pthread_mutex_lock(&lock);
    host_stats.peak = host_stats.current;
    pthread_mutex_unlock(&lock);
}

void fsdp_mem_empty_cache(int device) {
    if (device != FSDP_CPU) {
        if (device_ops) device_ops->empty_cache(device);
        return;
    }
    pthread_mutex_lock(&lock);
    for (bucket *b = buckets; b; b = b->next) {
        while (b->head) {
            free_block *fb = b->head;
            b->head = fb->next;
            free(fb);
        }
    }
    host_cached = 0;
    pthread_mutex_unlock(&lock);
}
