/* comm_mpi.c - the `mpi` backend of the collective interface: host memory,
 * for processes started by an MPI launcher (mpiexec, srun with PMI,
 * fsdp-lua --nproc-per-node). comm_world.c makes the world with it; splits
 * make the hybrid strategies' groups.
 *
 * Every collective is one of MPI's non-blocking ones (MPI_Iallgather,
 * MPI_Ireduce_scatter_block, MPI_Iallreduce, MPI_Ibcast, MPI_Ibarrier) on a
 * duplicate of the caller's communicator, so our traffic never mixes with
 * other MPI users'. Work that must follow completion (AVG division, copying
 * out of a temporary) runs when a test sees the request complete. bf16 and
 * f16 travel as 16-bit words; their SUM and MAX are user-defined MPI ops
 * that widen to f32, combine and round back (comm_reduce.c, the tcp
 * backend's code too). Integer dtypes support SUM and MAX.
 *
 * Waiting polls MPI_Test: MPICH moves data only inside MPI calls, so while
 * the collective may still be busy moving bytes it tests back to back,
 * yielding the core in between (on an oversubscribed node other ranks need
 * it). That spin lasts 1 s, or longer for big collectives (nbytes at
 * 100 MB/s); past it a peer is late, and it sleeps between tests (comm.c's
 * fsdp_comm_poll). After FSDP_COMM_TIMEOUT seconds the wait fails naming the
 * rank, leaving the request valid.
 *
 * Each comm also has a second duplicate, the control channel: resync's
 * exchange runs there (it works while the comm's own collectives are out of
 * step), and on the world it carries interrupt notices (a message to every
 * rank, tag NOTICE, holding the interrupt's epoch; one receive is always
 * posted).
 *
 * Thread safety: one thread drives communication (MPI_THREAD_FUNNELED). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mpi.h>
#include "internal.h"
#include "comm_ops.h"
#include "comm_shm.h"

enum { NOTICE_TAG = 7 };

typedef struct mpi_ctx {
    MPI_Comm comm;       /* the collectives */
    fsdp_shm *shm;       /* all ranks on this node: shared memory moves them */
    MPI_Comm ctl;        /* resync exchanges and (world) interrupt notices */
    /* world only: the posted notice receive and our sends */
    int64_t notice_in;
    MPI_Request notice_req;
    int64_t *notice_out;
    MPI_Request *notice_sends;
    int notices_posted;
} mpi_ctx;

/* a started collective and what follows its completion */
typedef struct coll_op {
    void *shm;           /* a collective of the shared-memory path, or NULL */
    MPI_Request req;
    void *avg_buf;       /* AVG: divide these avg_count elements by the group size */
    int64_t avg_count;
    int dtype;
    void *tmp;           /* temporary buffer, freed with the op */
    void *copy_dst;      /* when set: copy copy_bytes from tmp to here */
    int64_t copy_bytes;
} coll_op;

static int mpi_started;             /* we (or someone) initialized MPI and use it */
static int mpi_done;                /* fsdp_comm_mpi_finalize ran MPI_Finalize */
static int world_rank;              /* for messages before a comm exists */
static MPI_Op half_ops[2][2];       /* [bf16, f16][sum, max] user ops */
static int half_ops_made;
static fsdp_comm *mpi_world_comm;

static mpi_ctx *ctx_of(const fsdp_comm *c) { return fsdp_comm_ext_ctx(c); }

/* an MPI error code as an FSDP_ERR_COMM message naming this rank */
static int mpi_fail(const fsdp_comm *c, const char *what, int code) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", code);
    if (c) return fsdp_error(FSDP_ERR_COMM, "%s: %s failed: %s", fsdp_comm_who(c), what, text);
    return fsdp_error(FSDP_ERR_COMM, "rank %d: %s failed: %s", world_rank, what, text);
}

/* ---- bf16 / f16 reduction ops ------------------------------------------ */

static void op_bf16_sum(void *in, void *inout, int *len, MPI_Datatype *t) {
    fsdp_reduce_combine(inout, in, *len, FSDP_BF16, FSDP_REDUCE_SUM);
}
static void op_bf16_max(void *in, void *inout, int *len, MPI_Datatype *t) {
    fsdp_reduce_combine(inout, in, *len, FSDP_BF16, FSDP_REDUCE_MAX);
}
static void op_f16_sum(void *in, void *inout, int *len, MPI_Datatype *t) {
    fsdp_reduce_combine(inout, in, *len, FSDP_F16, FSDP_REDUCE_SUM);
}
static void op_f16_max(void *in, void *inout, int *len, MPI_Datatype *t) {
    fsdp_reduce_combine(inout, in, *len, FSDP_F16, FSDP_REDUCE_MAX);
}

static int create_half_ops(void) {
    MPI_User_function *fns[2][2] = {{op_bf16_sum, op_bf16_max}, {op_f16_sum, op_f16_max}};
    for (int d = 0; d < 2; d++)
        for (int o = 0; o < 2; o++) {
            int rc = MPI_Op_create(fns[d][o], 1 /* commutative */, &half_ops[d][o]);
            if (rc != MPI_SUCCESS) return mpi_fail(NULL, "MPI_Op_create", rc);
        }
    half_ops_made = 1;
    return FSDP_OK;
}

/* ---- dtype and op mapping ---------------------------------------------- */

static MPI_Datatype mpi_type(int dtype) {
    switch (dtype) {
    case FSDP_F32: return MPI_FLOAT;
    case FSDP_BF16: case FSDP_F16: case FSDP_U16: return MPI_UINT16_T;
    case FSDP_I32: return MPI_INT32_T;
    case FSDP_I64: return MPI_INT64_T;
    default: return MPI_UINT8_T;
    }
}

/* AVG reduces with SUM; the division happens at completion */
static MPI_Op mpi_op(int dtype, int op) {
    int is_max = op == FSDP_REDUCE_MAX;
    if (dtype == FSDP_BF16) return half_ops[0][is_max];
    if (dtype == FSDP_F16) return half_ops[1][is_max];
    return is_max ? MPI_MAX : MPI_SUM;
}

/* do byte ranges [a, a+na) and [b, b+nb) overlap? */
static int overlaps(const void *a, int64_t na, const void *b, int64_t nb) {
    const char *pa = a, *pb = b;
    return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

/* ---- starting ------------------------------------------------------------ */

/* what MPI cannot take: calls after finalize, counts beyond int */
static int check_mpi(const fsdp_comm *c, const char *name, int64_t count) {
    if (mpi_done) return fsdp_error(FSDP_ERR_COMM, "fsdp_comm_%s: %s: MPI was already finalized", name, fsdp_comm_who(c));
    if (count > INT_MAX)
        return fsdp_error(FSDP_ERR_UNSUPPORTED, "fsdp_comm_%s: %s: count %lld exceeds MPI's int count limit;"
                          " split the buffer", name, fsdp_comm_who(c), (long long)count);
    return FSDP_OK;
}

static coll_op *op_new(const fsdp_comm *c, const char *name, int dtype) {
    coll_op *op = calloc(1, sizeof *op);
    if (!op) return fsdp_error_null(FSDP_ERR_OOM, "fsdp_comm_%s: %s: out of host memory for a request", name,
                                    fsdp_comm_who(c));
    op->req = MPI_REQUEST_NULL;
    op->dtype = dtype;
    return op;
}

static void op_free(coll_op *op) {
    if (!op) return;
    free(op->tmp);
    free(op);
}

/* hands a started op out as the handle, or drops it on an MPI error */
static int submit(const fsdp_comm *c, const char *name, coll_op *op, int rc, void **handle) {
    if (rc != MPI_SUCCESS) {
        op_free(op);
        *handle = NULL;
        char what[64];
        snprintf(what, sizeof what, "%s", name);
        return mpi_fail(c, what, rc);
    }
    *handle = op;
    return FSDP_OK;
}

/* the collective on the shared-memory path, when the comm has one */
static int shm_start(fsdp_comm *c, const char *name, int kind, void *recv, const void *send, int64_t count,
                     int dtype, int op_code, int root, void **handle) {
    coll_op *op = op_new(c, name, dtype);
    if (!op) return FSDP_ERR_OOM;
    int status = fsdp_shm_start(ctx_of(c)->shm, c, kind, recv, send, count, dtype, op_code, root, &op->shm);
    if (status) {
        op_free(op);
        return status;
    }
    *handle = op;
    return FSDP_OK;
}

static int mpi_all_gather(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, void **handle) {
    static const char name[] = "all_gather";
    *handle = NULL;
    if (ctx_of(c)->shm && !mpi_done)
        return shm_start(c, name, FSDP_SHM_ALL_GATHER, recv, send, count, dtype, 0, 0, handle);
    int status = check_mpi(c, name, count);
    if (status) return status;
    int64_t slice = count * fsdp_dtype_size(dtype), total = slice * fsdp_comm_size(c);
    coll_op *op = op_new(c, name, dtype);
    if (!op) return FSDP_ERR_OOM;
    /* send sitting at this rank's slot of recv is MPI's in-place form; any
     * other overlap goes through a private copy of send */
    char *own_slot = (char *)recv + (int64_t)fsdp_comm_rank(c) * slice;
    const void *src = send;
    if (slice > 0 && send == own_slot) {
        src = MPI_IN_PLACE;
    } else if (overlaps(send, slice, recv, total)) {
        op->tmp = malloc((size_t)slice);
        if (!op->tmp) {
            op_free(op);
            return fsdp_error(FSDP_ERR_OOM, "fsdp_comm_all_gather: %s: out of memory", fsdp_comm_who(c));
        }
        memcpy(op->tmp, send, (size_t)slice);
        src = op->tmp;
    }
    int n = (int)count;
    int rc = MPI_Iallgather(src, n, mpi_type(dtype), recv, n, mpi_type(dtype), ctx_of(c)->comm, &op->req);
    return submit(c, name, op, rc, handle);
}

static int mpi_reduce_scatter(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, int op_code,
                              void **handle) {
    static const char name[] = "reduce_scatter";
    *handle = NULL;
    if (ctx_of(c)->shm && !mpi_done)
        return shm_start(c, name, FSDP_SHM_REDUCE_SCATTER, recv, send, count, dtype, op_code, 0, handle);
    int status = check_mpi(c, name, count);
    if (status) return status;
    int64_t slice = count * fsdp_dtype_size(dtype), total = slice * fsdp_comm_size(c);
    coll_op *op = op_new(c, name, dtype);
    if (!op) return FSDP_ERR_OOM;
    if (op_code == FSDP_REDUCE_AVG) { op->avg_buf = recv; op->avg_count = count; }
    /* MPI forbids aliasing: when recv lies inside send, receive into a
     * temporary and copy it into place at completion */
    void *dst = recv;
    if (overlaps(send, total, recv, slice)) {
        op->tmp = malloc((size_t)slice);
        if (!op->tmp) {
            op_free(op);
            return fsdp_error(FSDP_ERR_OOM, "fsdp_comm_reduce_scatter: %s: out of memory", fsdp_comm_who(c));
        }
        op->copy_dst = recv;
        op->copy_bytes = slice;
        dst = op->tmp;
    }
    int rc = MPI_Ireduce_scatter_block(send, dst, (int)count, mpi_type(dtype), mpi_op(dtype, op_code),
                                       ctx_of(c)->comm, &op->req);
    return submit(c, name, op, rc, handle);
}

static int mpi_all_reduce(fsdp_comm *c, void *buf, int64_t count, int dtype, int op_code, void **handle) {
    static const char name[] = "all_reduce";
    *handle = NULL;
    if (ctx_of(c)->shm && !mpi_done)
        return shm_start(c, name, FSDP_SHM_ALL_REDUCE, buf, NULL, count, dtype, op_code, 0, handle);
    int status = check_mpi(c, name, count);
    if (status) return status;
    coll_op *op = op_new(c, name, dtype);
    if (!op) return FSDP_ERR_OOM;
    if (op_code == FSDP_REDUCE_AVG) { op->avg_buf = buf; op->avg_count = count; }
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, mpi_type(dtype), mpi_op(dtype, op_code),
                            ctx_of(c)->comm, &op->req);
    return submit(c, name, op, rc, handle);
}

static int mpi_broadcast(fsdp_comm *c, void *buf, int64_t count, int dtype, int root, void **handle) {
    static const char name[] = "broadcast";
    *handle = NULL;
    if (ctx_of(c)->shm && !mpi_done)
        return shm_start(c, name, FSDP_SHM_BROADCAST, buf, NULL, count, dtype, 0, root, handle);
    int status = check_mpi(c, name, count);
    if (status) return status;
    coll_op *op = op_new(c, name, dtype);
    if (!op) return FSDP_ERR_OOM;
    int rc = MPI_Ibcast(buf, (int)count, mpi_type(dtype), root, ctx_of(c)->comm, &op->req);
    return submit(c, name, op, rc, handle);
}

static int mpi_barrier(fsdp_comm *c, void **handle) {
    static const char name[] = "barrier";
    *handle = NULL;
    if (ctx_of(c)->shm && !mpi_done) return shm_start(c, name, FSDP_SHM_BARRIER, NULL, NULL, 0, FSDP_U8, 0, 0, handle);
    int status = check_mpi(c, name, 0);
    if (status) return status;
    coll_op *op = op_new(c, name, FSDP_U8);
    if (!op) return FSDP_ERR_OOM;
    int rc = MPI_Ibarrier(ctx_of(c)->comm, &op->req);
    return submit(c, name, op, rc, handle);
}

/* ---- completion ----------------------------------------------------------- */

/* work after completion: copy out of the temporary, divide for AVG */
static void op_finish(const fsdp_comm *c, coll_op *op) {
    if (op->copy_dst && op->copy_bytes > 0) memcpy(op->copy_dst, op->tmp, (size_t)op->copy_bytes);
    if (op->avg_buf) fsdp_reduce_divide(op->avg_buf, op->avg_count, op->dtype, fsdp_comm_size(c));
    op->copy_dst = NULL;
    op->avg_buf = NULL;
}

static int mpi_test(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, int *done) {
    coll_op *op = handle;
    if (op->shm) return fsdp_shm_test(ctx_of(c)->shm, op->shm, done);
    *done = 1;
    if (op->req == MPI_REQUEST_NULL) return FSDP_OK;
    int flag = 0;
    int rc = MPI_Test(&op->req, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return mpi_fail(c, name, rc);
    *done = flag;
    if (flag) op_finish(c, op);
    return FSDP_OK;
}

static int mpi_wait(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, double timeout_s, int *pending) {
    coll_op *op = handle;
    if (op->shm) return fsdp_shm_wait(ctx_of(c)->shm, c, op->shm, name, nbytes, timeout_s, pending);
    double spin_s = (double)nbytes / 1e8 > 1.0 ? (double)nbytes / 1e8 : 1.0;
    return fsdp_comm_poll(c, handle, name, nbytes, timeout_s, spin_s, pending);
}

static void mpi_request_free(fsdp_comm *c, void *handle) {
    coll_op *op = handle;
    if (op->shm) fsdp_shm_release(ctx_of(c)->shm, op->shm);
    op_free(op);
}

/* ---- the control channel ------------------------------------------------------ */

/* polls req until done or timeout_s, never interrupted (resync) */
static int ctl_wait(const fsdp_comm *c, MPI_Request *req, const char *what, double timeout_s) {
    double deadline = fsdp_now_s() + timeout_s;
    fsdp_backoff b;
    fsdp_backoff_init(&b, 0.01);
    for (;;) {
        int flag = 0;
        int rc = MPI_Test(req, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail(c, what, rc);
        if (flag) return FSDP_OK;
        if (fsdp_now_s() >= deadline)
            return fsdp_error(FSDP_ERR_COMM, "%s: %s timed out after %g s (a peer may have died)", fsdp_comm_who(c),
                              what, timeout_s);
        fsdp_backoff_pause(&b);
    }
}

static int mpi_resync_exchange(fsdp_comm *c, const void *mine, void *all, int64_t nbytes, double timeout_s) {
    if (mpi_done) return fsdp_error(FSDP_ERR_COMM, "fsdp_comm_resync: %s: MPI was already finalized", fsdp_comm_who(c));
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Iallgather(mine, (int)nbytes, MPI_BYTE, all, (int)nbytes, MPI_BYTE, ctx_of(c)->ctl, &req);
    if (rc != MPI_SUCCESS) return mpi_fail(c, "fsdp_comm_resync's exchange", rc);
    return ctl_wait(c, &req, "fsdp_comm_resync's exchange", timeout_s);
}

/* the world's interrupt notices (see the top of the file) */
static int mpi_notify(fsdp_comm *c, int64_t epoch, int tell, int *heard) {
    mpi_ctx *x = ctx_of(c);
    int size = fsdp_comm_size(c), rank = fsdp_comm_rank(c);
    *heard = 0;
    if (mpi_done || size == 1) return FSDP_OK;
    if (!x->notices_posted) {
        x->notice_out = calloc((size_t)size, sizeof *x->notice_out);
        x->notice_sends = malloc((size_t)size * sizeof *x->notice_sends);
        if (!x->notice_out || !x->notice_sends) {
            free(x->notice_out);
            free(x->notice_sends);
            x->notice_out = NULL;
            x->notice_sends = NULL;
            return fsdp_error(FSDP_ERR_OOM, "%s: out of host memory for interrupt notices", fsdp_comm_who(c));
        }
        for (int r = 0; r < size; r++) x->notice_sends[r] = MPI_REQUEST_NULL;
        int rc = MPI_Irecv(&x->notice_in, 1, MPI_INT64_T, MPI_ANY_SOURCE, NOTICE_TAG, x->ctl, &x->notice_req);
        if (rc != MPI_SUCCESS) return mpi_fail(c, "posting the interrupt notice receive", rc);
        x->notices_posted = 1;
    }
    if (tell) {
        for (int r = 0; r < size; r++) {
            if (r == rank) continue;
            /* the previous notice to r has long gone: a notice is 8 bytes */
            if (x->notice_sends[r] != MPI_REQUEST_NULL) MPI_Test(&x->notice_sends[r], &(int){0}, MPI_STATUS_IGNORE);
            if (x->notice_sends[r] != MPI_REQUEST_NULL) continue;
            x->notice_out[r] = epoch;
            int rc = MPI_Isend(&x->notice_out[r], 1, MPI_INT64_T, r, NOTICE_TAG, x->ctl, &x->notice_sends[r]);
            if (rc != MPI_SUCCESS) return mpi_fail(c, "sending an interrupt notice", rc);
        }
    }
    /* every notice that has arrived: one of this epoch means interrupted */
    for (;;) {
        int flag = 0;
        int rc = MPI_Test(&x->notice_req, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail(c, "receiving interrupt notices", rc);
        if (!flag) break;
        if (x->notice_in >= epoch) *heard = 1;
        rc = MPI_Irecv(&x->notice_in, 1, MPI_INT64_T, MPI_ANY_SOURCE, NOTICE_TAG, x->ctl, &x->notice_req);
        if (rc != MPI_SUCCESS) return mpi_fail(c, "posting the interrupt notice receive", rc);
    }
    return FSDP_OK;
}

/* ---- comms ------------------------------------------------------------------ */

static fsdp_comm *mpi_split(fsdp_comm *parent, int color, int key);

static void ctx_free(mpi_ctx *x) {
    if (!x) return;
    fsdp_shm_free(x->shm);
    if (!mpi_done) {
        if (x->comm != MPI_COMM_NULL) MPI_Comm_free(&x->comm);
        if (x->ctl != MPI_COMM_NULL) MPI_Comm_free(&x->ctl);
    }
    free(x->notice_out);
    free(x->notice_sends);
    free(x);
}

static void mpi_comm_free(fsdp_comm *c) { ctx_free(ctx_of(c)); }

static const fsdp_comm_ops mpi_ops = {
    .name = "mpi",
    .all_gather = mpi_all_gather,
    .reduce_scatter = mpi_reduce_scatter,
    .all_reduce = mpi_all_reduce,
    .broadcast = mpi_broadcast,
    .barrier = mpi_barrier,
    .wait = mpi_wait,
    .test = mpi_test,
    .request_free = mpi_request_free,
    .comm_free = mpi_comm_free,
    .split = mpi_split,
    .host = 1,
    .resync_exchange = mpi_resync_exchange,
    .notify = mpi_notify,
};

/* a ctx over comm (taken over) and a control duplicate of it */
static mpi_ctx *ctx_new(const fsdp_comm *for_messages, MPI_Comm comm) {
    mpi_ctx *x = calloc(1, sizeof *x);
    if (!x) {
        MPI_Comm_free(&comm);
        return fsdp_error_null(FSDP_ERR_OOM, "fsdp_comm: out of host memory for a communicator");
    }
    x->comm = comm;
    x->ctl = MPI_COMM_NULL;
    x->notice_req = MPI_REQUEST_NULL;
    MPI_Comm_set_errhandler(x->comm, MPI_ERRORS_RETURN);
    int rc = MPI_Comm_dup(comm, &x->ctl);
    if (rc != MPI_SUCCESS) {
        mpi_fail(for_messages, "MPI_Comm_dup", rc);
        x->ctl = MPI_COMM_NULL;
        ctx_free(x);
        return NULL;
    }
    MPI_Comm_set_errhandler(x->ctl, MPI_ERRORS_RETURN);
    x->shm = fsdp_shm_new(x->comm);
    return x;
}

static fsdp_comm *mpi_split(fsdp_comm *parent, int color, int key) {
    if (mpi_done)
        return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_split: %s: MPI was already finalized", fsdp_comm_who(parent));
    /* collective over the parent: ranks with the same color form a group */
    MPI_Comm sub;
    int rc = MPI_Comm_split(ctx_of(parent)->comm, color, key, &sub);
    if (rc != MPI_SUCCESS) {
        mpi_fail(parent, "fsdp_comm_split", rc);
        return NULL;
    }
    int rank, size;
    MPI_Comm_rank(sub, &rank);
    MPI_Comm_size(sub, &size);
    mpi_ctx *x = ctx_new(parent, sub);
    if (!x) return NULL;
    fsdp_comm *c = fsdp_comm_ext_new_sub(&mpi_ops, x, rank, size, parent);
    if (!c) ctx_free(x);
    return c;
}

/* initializes MPI (once) and builds the world over a duplicate of
 * MPI_COMM_WORLD, so our traffic never mixes with other MPI users' */
fsdp_comm *fsdp_comm_mpi_world(void) {
    int initialized = 0, finalized = 0, rc;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized || mpi_done) return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: MPI was already finalized");
    if (mpi_world_comm) return mpi_world_comm;
    if (!initialized) {
        int provided = 0;
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: MPI_Init_thread failed (%d)", rc);
    }
    mpi_started = 1;
    /* errors come back as codes, never abort the job by themselves */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    world_rank = rank;

    /* a torchrun-style env beside the MPI one must agree with it */
    const char *ws = getenv("WORLD_SIZE"), *rk = getenv("RANK");
    char *end;
    if (ws && *ws) {
        long v = strtol(ws, &end, 10);
        if (!*end && v != size)
            return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: rank %d: WORLD_SIZE=%ld but MPI reports %d ranks",
                                   rank, v, size);
    }
    if (rk && *rk) {
        long v = strtol(rk, &end, 10);
        if (!*end && v != rank)
            return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: rank %d: RANK=%ld but MPI reports rank %d", rank,
                                   v, rank);
    }

    if (!half_ops_made && create_half_ops()) return NULL;
    MPI_Comm dup;
    rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    if (rc != MPI_SUCCESS) {
        mpi_fail(NULL, "MPI_Comm_dup", rc);
        return NULL;
    }
    mpi_ctx *x = ctx_new(NULL, dup);
    if (!x) return NULL;
    fsdp_comm *c = fsdp_comm_ext_new(&mpi_ops, x, rank, size, NULL);
    if (!c) {
        ctx_free(x);
        return NULL;
    }
    mpi_world_comm = c;
    return c;
}

int fsdp_comm_mpi_finalized(void) { return mpi_done; }

void fsdp_comm_mpi_abort(int code) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

int fsdp_comm_mpi_finalize(void) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized || !mpi_started) return FSDP_OK;
    /* the world's duplicates and our ops go first; sub-groups still alive
     * are released by MPI_Finalize itself. The world struct stays allocated
     * (a caller may still hold it): its collectives now report the finalize. */
    if (mpi_world_comm) {
        mpi_ctx *x = ctx_of(mpi_world_comm);
        if (x->notices_posted && x->notice_req != MPI_REQUEST_NULL) {
            MPI_Cancel(&x->notice_req);
            MPI_Wait(&x->notice_req, MPI_STATUS_IGNORE);
        }
        if (x->comm != MPI_COMM_NULL) MPI_Comm_free(&x->comm);
        if (x->ctl != MPI_COMM_NULL) MPI_Comm_free(&x->ctl);
    }
    if (half_ops_made)
        for (int d = 0; d < 2; d++)
            for (int o = 0; o < 2; o++) MPI_Op_free(&half_ops[d][o]);
    half_ops_made = 0;
    int rc = MPI_Finalize();
    mpi_done = 1;
    if (rc != MPI_SUCCESS)
        return fsdp_error(FSDP_ERR_COMM, "fsdp_comm_finalize: rank %d: MPI_Finalize failed (%d)", world_rank, rc);
    return FSDP_OK;
}
