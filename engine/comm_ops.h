/* comm_ops.h - collective backends living outside libfsdp; not public.
 *
 * engine/comm.c has two backends of its own (MPI, self). Others fill an ops
 * table and wrap their state in an fsdp_comm with fsdp_comm_ext_new: a
 * library that links libfsdp (libfsdp_cuda: NCCL), or a file of libfsdp
 * itself (comm_tcp.c: the tcp world of jobs started by torchrun alone). The public
 * fsdp_comm_* calls then dispatch to the table after comm.c's own argument
 * checks (NULL comm, count, dtype, reduce op, root, NULL buffers), and comm.c
 * keeps bytes_sent and the request objects: a collective's handle travels
 * inside the fsdp_comm_request that fsdp_comm_wait / fsdp_comm_test free.
 * C calls C through the table; nothing here calls into Lua.
 *
 * Kept out of internal.h so that backends and their tests include only what
 * they use. */
#ifndef FSDP_COMM_OPS_H
#define FSDP_COMM_OPS_H

#include "fsdp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every start function gets arguments comm.c has already checked, returns an
 * FSDP status (its message names the rank: fsdp_comm_who) and on success
 * stores in *handle the backend's handle of the started collective, or NULL
 * when it is complete already. comm.c adds bytes_sent only on success.
 * name and nbytes (the whole collective's size) are for messages. */
typedef struct fsdp_comm_ops {
    const char *name; /* what fsdp_comm_backend returns, e.g. "nccl" */
    int (*all_gather)(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                      void **handle);
    int (*reduce_scatter)(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                          int op, void **handle);
    int (*all_reduce)(fsdp_comm *c, void *buf, int64_t count, int dtype, int op, void **handle);
    int (*broadcast)(fsdp_comm *c, void *buf, int64_t count, int dtype, int root, void **handle);
    /* blocking */
    int (*barrier)(fsdp_comm *c);
    /* waits at most timeout_s (> 0, comm.c resolves the default). *pending = 1
     * when the collective is still running and the handle stays valid (the
     * caller may wait again); 0 when it is over, successfully or not, and
     * comm.c then calls request_free. */
    int (*wait)(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, double timeout_s,
                int *pending);
    /* never blocks: *done = 1 when over (an error status also means over) */
    int (*test)(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, int *done);
    /* frees a finished handle */
    void (*request_free)(fsdp_comm *c, void *handle);
    /* frees the backend's state when fsdp_comm_free frees the comm */
    void (*comm_free)(fsdp_comm *c);
    /* fsdp_comm_split of such a comm (the parent c is checked, color >= 0);
     * NULL: comm.c refuses, telling to split the host comm it was made from */
    fsdp_comm *(*split)(fsdp_comm *c, int color, int key);
    /* 1 when buffers are host memory: the comm is a host comm like mpi and
     * self (tcp), and may bootstrap a device backend's comm; 0 for device
     * backends (nccl) */
    int host;
} fsdp_comm_ops;

/* A comm of rank `rank` of `size` dispatching to ops with state ctx; ops must
 * outlive it. same_group_as (may be NULL) is a host comm over the same ranks,
 * whose job rank and sub-group status the messages then use; without it the
 * comm counts as the job's world and rank as the job rank. NULL + error
 * when ops lacks a required entry or on OOM (ctx stays the caller's). Any
 * start entry may be NULL: that collective is then FSDP_ERR_UNSUPPORTED. */
fsdp_comm *fsdp_comm_ext_new(const fsdp_comm_ops *ops, void *ctx, int rank, int size,
                             const fsdp_comm *same_group_as);
/* the ops and ctx of an ext comm; NULL for comm.c's own backends */
const fsdp_comm_ops *fsdp_comm_ext_ops(const fsdp_comm *c);
void *fsdp_comm_ext_ctx(const fsdp_comm *c);
/* the handle inside a request of a comm using ops (*handle NULL when the
 * collective was complete at start); -1 when r is NULL or of another backend */
int fsdp_comm_request_ext(const fsdp_comm_request *r, const fsdp_comm_ops *ops, void **handle);
/* "rank 3", or "rank 3 (1 of 2 in a sub-group)": this rank for messages; a
 * per-thread buffer valid until the next call */
const char *fsdp_comm_who(const fsdp_comm *c);
/* FSDP_COMM_TIMEOUT seconds, else 600 */
double fsdp_comm_default_timeout(void);

#ifdef __cplusplus
}
#endif
#endif
