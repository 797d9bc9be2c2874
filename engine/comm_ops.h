/* comm_ops.h - the backend interface of the collectives; not public.
 *
 * engine/comm.c is the interface only: argument checks, bytes_sent, request
 * objects, waits with timeouts and interrupts, and dispatch. Every engine is
 * a backend behind the table below: in libfsdp the mpi (comm_mpi.c), self
 * (comm_self.c) and tcp (comm_tcp.c) backends, which engine/comm_world.c
 * chooses from the launcher's env; outside it, NCCL (libfsdp_cuda,
 * engine/cuda/comm_nccl.cu) and the tests' fakes. A backend fills an
 * fsdp_comm_ops table and wraps its state in an fsdp_comm with
 * fsdp_comm_ext_new. The public fsdp_comm_* calls then dispatch to the table
 * after comm.c's own argument checks (NULL comm, count, dtype, reduce op,
 * root, NULL buffers), and comm.c keeps bytes_sent and the request objects:
 * a collective's handle travels inside the fsdp_comm_request that
 * fsdp_comm_wait / fsdp_comm_test free. C calls C through the table;
 * nothing here calls into Lua.
 *
 * The functions declared here are libfsdp's interface to backend libraries
 * (libfsdp_cuda links libfsdp and calls them), so they are exported beside
 * fsdp.h's (engine/internal.h: the same for errors and device ops). */
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
 * AVG division and buffer aliasing are the backend's business. */
typedef struct fsdp_comm_ops {
    const char *name; /* what fsdp_comm_backend returns, e.g. "nccl" */
    int (*all_gather)(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                      void **handle);
    int (*reduce_scatter)(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                          int op, void **handle);
    int (*all_reduce)(fsdp_comm *c, void *buf, int64_t count, int dtype, int op, void **handle);
    int (*broadcast)(fsdp_comm *c, void *buf, int64_t count, int dtype, int root, void **handle);
    int (*barrier)(fsdp_comm *c, void **handle);
    /* Waits at most timeout_s (> 0, comm.c resolves the default); name and
     * nbytes (the whole collective's size) are for messages. *pending = 1
     * when the collective is still running and the handle stays valid (a
     * timeout, or FSDP_ERR_INTERRUPTED); 0 when it is over, successfully or
     * not, and comm.c then calls request_free. NULL: comm.c polls test with
     * fsdp_comm_poll. */
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
    /* 1 when buffers are host memory: the comm is a host comm (mpi, self,
     * tcp) and may bootstrap a device backend's comm; 0 for device backends */
    int host;
    /* Optional, for fsdp_comm_resync (NULL: the comm cannot resync): every
     * rank's nbytes of mine, in rank order, into all, over a channel that
     * the comm's own collectives never use (so it works while they are out
     * of step), within timeout_s, never interrupted. */
    int (*resync_exchange)(fsdp_comm *c, const void *mine, void *all, int64_t nbytes, double timeout_s);
    /* Optional, the world's only (NULL: interrupts stay local): tell = 1
     * sends "interrupted in epoch" to every other rank; *heard = 1 when a
     * notice of epoch from another rank has arrived (older ones are
     * dropped). Never blocks. */
    int (*notify)(fsdp_comm *c, int64_t epoch, int tell, int *heard);
} fsdp_comm_ops;

#pragma GCC visibility push(default)

/* A comm of rank `rank` of `size` dispatching to ops with state ctx; ops must
 * outlive it. same_group_as (may be NULL) is a host comm over the same ranks,
 * whose job rank and sub-group status the messages then use; without it the
 * comm counts as the job's world and rank as the job rank. NULL + error
 * when ops lacks a required entry (name, test, request_free, comm_free) or
 * on OOM (ctx stays the caller's). Any start entry may be NULL: that
 * collective is then FSDP_ERR_UNSUPPORTED. */
fsdp_comm *fsdp_comm_ext_new(const fsdp_comm_ops *ops, void *ctx, int rank, int size,
                             const fsdp_comm *same_group_as);
/* the same for a sub-group of parent: messages name the job rank of parent
 * and say "(r of n in a sub-group)" */
fsdp_comm *fsdp_comm_ext_new_sub(const fsdp_comm_ops *ops, void *ctx, int rank, int size,
                                 const fsdp_comm *parent);
/* the ops and ctx of a comm (every comm has both) */
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

/* The wait every backend shares: polls ops->test on handle until it is over
 * (*pending = 0, test's status), an interrupt (FSDP_ERR_INTERRUPTED naming
 * the rank, the collective and its bytes; *pending = 1) or timeout_s
 * (FSDP_ERR_COMM "collective <name> of <n> bytes timed out after <t> s";
 * *pending = 1). Between polls it yields the core for spin_s seconds, then
 * sleeps 50 us doubling to 1 ms, so a late peer does not burn a core. */
int fsdp_comm_poll(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, double timeout_s,
                   double spin_s, int *pending);
/* 1 when this process has an interrupt to act on (fsdp_comm_interrupt here,
 * or a peer's notice); cheap enough for every poll of a wait loop. Returns
 * 0 inside fsdp_comm_resync, whose waits are never interrupted. */
int fsdp_comm_interrupt_check(void);
/* the FSDP_ERR_INTERRUPTED of a wait in collective name (nbytes: its size,
 * < 0 to leave it out) */
int fsdp_comm_interrupted_error(const fsdp_comm *c, const char *name, int64_t nbytes);

#pragma GCC visibility pop

/* ---- libfsdp's own backends, chosen by comm_world.c ---------------------- */

/* marks c as the job's world: fsdp_comm_free ignores it, and interrupt
 * notices travel over it (its ops->notify) */
void fsdp_comm_set_world(fsdp_comm *c);
/* a world of one, or a sub-group of one of parent (NULL: the world) */
fsdp_comm *fsdp_comm_self_new(const fsdp_comm *parent);
/* MPI's world (MPI_Init_thread once), over a duplicate of MPI_COMM_WORLD */
fsdp_comm *fsdp_comm_mpi_world(void);
/* MPI_Finalize when this process initialized MPI through us; finalized:
 * whether that happened (no mpi comm works after it) */
int fsdp_comm_mpi_finalize(void);
int fsdp_comm_mpi_finalized(void);
/* MPI_Abort of the job when MPI is up (returns otherwise) */
void fsdp_comm_mpi_abort(int code);

/* host reductions shared by the mpi and tcp backends (comm_reduce.c), in
 * f32 for bf16 and f16 (widened, combined, rounded back: dtype_math.h):
 * acc[i] = acc[i] (+ or max) in[i] for n elements (AVG adds), and the
 * AVG division of n elements by size */
void fsdp_reduce_combine(void *acc, const void *in, int64_t n, int dtype, int op);
void fsdp_reduce_divide(void *buf, int64_t n, int dtype, int size);

#ifdef __cplusplus
}
#endif
#endif
