/* internal.h - helpers shared by the engine's C files; not public. */
#ifndef FSDP_INTERNAL_H
#define FSDP_INTERNAL_H

#include "fsdp.h"

/* Records a printf-style message for fsdp_last_error() and returns code, so
 * callers write: return fsdp_error(FSDP_ERR_INVALID, "...", ...); */
int fsdp_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* same, returning NULL, for constructors */
void *fsdp_error_null(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* raw allocator with stats and a caching pool (engine/alloc.c) */
void *fsdp_mem_alloc(int device, int64_t nbytes);
void fsdp_mem_release(int device, void *ptr, int64_t nbytes);

/* writes the parts one after another as one file, atomically (fileio.c) */
int fsdp_file_write_parts(const char *path, int nparts, const void *const *parts,
                          const int64_t *sizes);

#define FSDP_CHECK_ARG(cond, ...) \
    do { if (!(cond)) return fsdp_error(FSDP_ERR_INVALID, __VA_ARGS__); } while (0)

#endif
