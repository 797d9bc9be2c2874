/* internal.h - helpers shared by the engine's C files; not public. */
#ifndef FSDP_INTERNAL_H
#define FSDP_INTERNAL_H

#include <sched.h>
#include <time.h>
#include "fsdp.h"

/* libfsdp is built with -fvisibility=hidden: it exports what fsdp.h declares
 * and, for backend libraries that link it (libfsdp_cuda), the functions in
 * the `visibility push(default)` regions here and in comm_ops.h. */

#pragma GCC visibility push(default)
/* Records a printf-style message for fsdp_last_error() and returns code, so
 * callers write: return fsdp_error(FSDP_ERR_INVALID, "...", ...); */
int fsdp_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* same, returning NULL, for constructors */
void *fsdp_error_null(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#pragma GCC visibility pop

/* seconds on the monotonic clock (deadlines and timeouts) */
static inline double fsdp_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The pause between two polls of something a peer or a device finishes:
 * yield the core for the first spin_s seconds (it is usually over soon),
 * then sleep 50 us doubling to 1 ms, so a late peer does not burn a core. */
typedef struct fsdp_backoff {
    double start, spin_s;
    long sleep_ns;
} fsdp_backoff;

static inline void fsdp_backoff_init(fsdp_backoff *b, double spin_s) {
    b->start = fsdp_now_s();
    b->spin_s = spin_s;
    b->sleep_ns = 50 * 1000;
}

static inline void fsdp_backoff_pause(fsdp_backoff *b) {
    if (fsdp_now_s() - b->start < b->spin_s) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, b->sleep_ns};
    nanosleep(&ts, NULL);
    b->sleep_ns = b->sleep_ns * 2 < 1000 * 1000 ? b->sleep_ns * 2 : 1000 * 1000;
}

/* raw allocator with stats and a caching pool (engine/alloc.c) */
void *fsdp_mem_alloc(int device, int64_t nbytes);
void fsdp_mem_release(int device, void *ptr, int64_t nbytes);

/* What a device backend (libfsdp_cuda) plugs into the tensor layer so that
 * tensors with device >= 0 can be made, freed, copied and filled by libfsdp's
 * own functions. Installed by fsdp_cuda_install() through C, never by Lua.
 * copy moves nbytes between any host/device pair; when dst or src is on the
 * host it returns only once the host side may be used. */
typedef struct fsdp_device_ops {
    void *(*alloc)(int device, int64_t nbytes); /* NULL + fsdp_error on failure */
    void (*release)(void *ptr);
    int (*copy)(void *dst, int dst_device, const void *src, int src_device, int64_t nbytes);
    int (*fill)(void *dst, int device, int dtype, double value, int64_t n);
    int (*cast)(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n, int device);
    int (*get_stats)(int device, fsdp_mem_stats *out);
    void (*reset_peak)(int device);
    int (*empty_cache)(int device);
    void *(*host_alloc)(int64_t nbytes); /* page-locked host memory */
    void (*host_free)(void *ptr);
} fsdp_device_ops;
/* installs ops (NULL uninstalls); the struct must outlive its use */
#pragma GCC visibility push(default)
void fsdp_set_device_ops(const fsdp_device_ops *ops);
#pragma GCC visibility pop
/* the installed ops, or NULL with an error naming the device */
const fsdp_device_ops *fsdp_device_ops_for(int device);

/* a TCP socket listening on port on every interface (SO_REUSEADDR), or -1
 * with errno set (rendezvous.c; the rendezvous and the tcp comm share it) */
int fsdp_tcp_listen(int port, int backlog);

/* writes the parts one after another as one file, atomically (fileio.c) */
int fsdp_file_write_parts(const char *path, int nparts, const void *const *parts,
                          const int64_t *sizes);

/* a tokenizer from tokenizer.json's bytes, errors naming `name`
 * (tokenizer.c; fsdp_tokenizer_load reads the file and calls it; the fuzz
 * targets call it directly) */
fsdp_tokenizer *fsdp_tokenizer_load_buffer(const char *data, size_t len, const char *name);

#define FSDP_CHECK_ARG(cond, ...) \
    do { if (!(cond)) return fsdp_error(FSDP_ERR_INVALID, __VA_ARGS__); } while (0)

#endif
