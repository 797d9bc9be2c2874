/* comm.c - the collective interface: an MPI backend and a `self` backend
 * over host memory, and the dispatch to backends behind an ops table.
 *
 * The world is MPI when the process was started by an MPI launcher (mpiexec,
 * srun with PMI, fsdp-lua --nproc-per-node). Otherwise, with torchrun's env
 * (WORLD_SIZE > 1, RANK, MASTER_ADDR, MASTER_PORT) it is the tcp backend
 * (comm_tcp.c, an ops-table backend inside libfsdp) on port MASTER_PORT + 1,
 * since torchrun's agent holds MASTER_PORT (FSDP_TCP_PORT overrides); MPI is
 * never touched then. Otherwise it is a world of one ("self") and MPI is
 * never touched, so a single process needs no mpiexec.
 *
 * Every MPI collective is started non-blocking. A blocking call is a start
 * followed by fsdp_comm_wait, so a dead or missing peer turns into an
 * FSDP_ERR_COMM timeout instead of a hang. Work that must follow completion
 * (AVG division, copying out of a temporary buffer) runs in wait / test.
 *
 * Requests: every collective given a non-NULL req returns an allocated handle
 * in *req, for both backends (a self request is complete from the start).
 * fsdp_comm_wait and fsdp_comm_test free the handle once the collective has
 * completed, successfully or with an error. A wait that times out leaves the
 * handle valid (the collective is still running): the caller may wait again,
 * or end the job with fsdp_comm_abort. The same holds for a blocking call
 * that times out: MPI may still write into its buffers, so they must stay
 * allocated; the expected next step is fsdp_comm_abort.
 *
 * bf16 and f16 travel as 16-bit words; their SUM and MAX are user-defined MPI
 * ops that widen to f32, combine and round back (dtype_math.h), the same
 * per-element math the CPU kernels use. Integer dtypes support SUM and MAX.
 *
 * bytes_sent counts the "logical ring volume" of each collective, the
 * algorithm-independent accounting the NCCL performance notes use for bus
 * bandwidth, with n = group size and B = count * element size:
 *   all_gather, reduce_scatter: (n-1) * B     (B = one rank's slice)
 *   all_reduce:                 2 * (n-1) / n * B
 *   broadcast:                  B on the root, 0 elsewhere (0 when n == 1)
 * It is added when the collective starts successfully.
 *
 * Backends behind an ops table (comm_ops.h): a library linking libfsdp, or
 * a file of libfsdp, fills an fsdp_comm_ops table and wraps its state with
 * fsdp_comm_ext_new; we ship the NCCL backend of libfsdp_cuda
 * (engine/cuda/comm_nccl.cu, device memory, "nccl") and the tcp world
 * (comm_tcp.c, host memory, "tcp"). For such a comm
 * the public calls run the same argument checks (MPI's int count limit
 * aside), then start the collective through the table and keep the same
 * bytes_sent accounting and request objects: the backend's handle of a
 * started collective lives inside the fsdp_comm_request, and wait / test ask
 * the table. The backend may end a collective when a wait times out (NCCL
 * aborts its communicator then, since a hung collective cannot be cancelled):
 * that request is freed like a completed one and the error says so. AVG
 * division and buffer aliasing are the backend's business. A blocking call is
 * still start + wait. Split goes to the table's split entry; without one it
 * is refused (split the host comm and make the backend's comm from the
 * sub-group). The tcp world is an ext comm marked as the world, so
 * fsdp_comm_free ignores it.
 *
 * Thread safety: one thread drives communication (MPI_THREAD_FUNNELED). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sched.h>
#include <mpi.h>
#include "internal.h"
#include "comm_ops.h"
#include "dtype_math.h"

enum { BACKEND_SELF = 0, BACKEND_MPI = 1, BACKEND_EXT = 2 };

struct fsdp_comm {
    int backend;
    int rank, size;
    int is_world;          /* the world lives until finalize; free ignores it */
    int job_rank;          /* this process's rank in the job, for messages */
    int sub_group;         /* messages add "(r of n in a sub-group)" */
    MPI_Comm mpi;          /* BACKEND_MPI only */
    const fsdp_comm_ops *ops; /* BACKEND_EXT only: the other library's table */
    void *ext_ctx;         /* BACKEND_EXT only: its state */
    int64_t bytes_sent;
};

struct fsdp_comm_request {
    fsdp_comm *comm;
    MPI_Request mpi;       /* MPI_REQUEST_NULL for self requests */
    const char *name;      /* collective name, for messages */
    int64_t nbytes;        /* size of the whole collective, for messages */
    /* post-processing once complete */
    void *avg_buf;         /* AVG: divide these avg_count elements by the group size */
    int64_t avg_count;
    int dtype;
    void *tmp;             /* temporary buffer, freed at completion */
    void *copy_dst;        /* when set: copy copy_bytes from tmp to here */
    int64_t copy_bytes;
    void *ext;             /* BACKEND_EXT: the backend's handle, NULL once complete */
};

/* process-wide state: one world per process */
static fsdp_comm *world;            /* NULL until fsdp_comm_world succeeds */
static int world_rank;              /* this process's rank, for messages */
static int mpi_started;             /* we (or someone) initialized MPI and use it */
static int mpi_done;                /* fsdp_comm_finalize ran MPI_Finalize */
static MPI_Op half_ops[2][2];       /* [bf16, f16][sum, max] user ops */
static int half_ops_made;           /* half_ops hold live ops */

/* ---- small helpers ------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "rank W" for the world, "rank W (r of n in a sub-group)" otherwise; a
 * per-thread buffer, valid until the next call */
static const char *who(const fsdp_comm *c) {
    static __thread char buf[96];
    if (!c) snprintf(buf, sizeof buf, "rank %d", world_rank);
    else if (!c->sub_group) snprintf(buf, sizeof buf, "rank %d", c->job_rank);
    else snprintf(buf, sizeof buf, "rank %d (%d of %d in a sub-group)", c->job_rank, c->rank, c->size);
    return buf;
}

const char *fsdp_comm_who(const fsdp_comm *c) { return who(c); }

/* an MPI error code as an FSDP_ERR_COMM message naming this rank */
static int mpi_fail(const fsdp_comm *c, const char *what, int code) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", code);
    return fsdp_error(FSDP_ERR_COMM, "%s: %s failed: %s", who(c), what, text);
}

static int env_int(const char *name, long *out) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end) return 0;
    *out = v;
    return 1;
}

static int env_set(const char *name) {
    const char *s = getenv(name);
    return s && *s;
}

/* default timeout: FSDP_COMM_TIMEOUT seconds, else 600 */
double fsdp_comm_default_timeout(void) {
    const char *s = getenv("FSDP_COMM_TIMEOUT");
    if (s && *s) {
        char *end;
        double v = strtod(s, &end);
        if (!*end && v > 0) return v;
    }
    return 600.0;
}

/* ---- bf16 / f16 reduction ops ------------------------------------------ */

/* inout[i] = inout[i] (+ or max) in[i], in f32, rounded back to the dtype */
static inline void reduce_half(uint16_t *inout, const uint16_t *in, int n, int dtype, int is_max) {
    for (int i = 0; i < n; i++) {
        float a = fsdp_load_as_f32(inout, i, dtype), b = fsdp_load_as_f32(in, i, dtype);
        float r = is_max ? (b > a ? b : a) : a + b;
        fsdp_store_from_f32(inout, i, dtype, r);
    }
}

static void op_bf16_sum(void *in, void *inout, int *len, MPI_Datatype *t) { reduce_half(inout, in, *len, FSDP_BF16, 0); }
static void op_bf16_max(void *in, void *inout, int *len, MPI_Datatype *t) { reduce_half(inout, in, *len, FSDP_BF16, 1); }
static void op_f16_sum(void *in, void *inout, int *len, MPI_Datatype *t) { reduce_half(inout, in, *len, FSDP_F16, 0); }
static void op_f16_max(void *in, void *inout, int *len, MPI_Datatype *t) { reduce_half(inout, in, *len, FSDP_F16, 1); }

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

static int is_float(int dtype) { return dtype == FSDP_F32 || dtype == FSDP_BF16 || dtype == FSDP_F16; }

/* AVG reduces with SUM; the division happens at completion */
static MPI_Op mpi_op(int dtype, int op) {
    int is_max = op == FSDP_REDUCE_MAX;
    if (dtype == FSDP_BF16) return half_ops[0][is_max];
    if (dtype == FSDP_F16) return half_ops[1][is_max];
    return is_max ? MPI_MAX : MPI_SUM;
}

/* ---- argument checks ---------------------------------------------------- */

/* comm, count, dtype and, when check_op is set, the reduce op; fn names the
 * caller. Also refuses MPI calls after finalize and counts MPI cannot carry. */
static int check_args(const char *fn, const fsdp_comm *c, int64_t count, int dtype, int check_op,
                      int op) {
    if (!c) return fsdp_error(FSDP_ERR_INVALID, "%s: comm is NULL", fn);
    if (count < 0)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: count %lld is negative", fn, who(c), (long long)count);
    if (!fsdp_dtype_size(dtype))
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: invalid dtype %d", fn, who(c), dtype);
    if (check_op) {
        if (op != FSDP_REDUCE_SUM && op != FSDP_REDUCE_AVG && op != FSDP_REDUCE_MAX)
            return fsdp_error(FSDP_ERR_INVALID, "%s: %s: invalid reduce op %d (SUM 0, AVG 1, MAX 2)",
                              fn, who(c), op);
        if (op == FSDP_REDUCE_AVG && !is_float(dtype))
            return fsdp_error(FSDP_ERR_INVALID, "%s: %s: AVG needs a float dtype (f32, bf16, f16), got %s",
                              fn, who(c), fsdp_dtype_name(dtype));
    }
    if (c->backend == BACKEND_MPI) {
        if (mpi_done) return fsdp_error(FSDP_ERR_COMM, "%s: %s: MPI was already finalized", fn, who(c));
        if (count > INT_MAX)
            return fsdp_error(FSDP_ERR_UNSUPPORTED, "%s: %s: count %lld exceeds MPI's int count limit;"
                              " split the buffer", fn, who(c), (long long)count);
    }
    return FSDP_OK;
}

/* do byte ranges [a, a+na) and [b, b+nb) overlap? */
static int overlaps(const void *a, int64_t na, const void *b, int64_t nb) {
    const char *pa = a, *pb = b;
    return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

/* ---- requests ----------------------------------------------------------- */

static fsdp_comm_request *request_new(fsdp_comm *c, const char *name, int64_t nbytes, int dtype) {
    fsdp_comm_request *r = calloc(1, sizeof *r);
    if (!r) return fsdp_error_null(FSDP_ERR_OOM, "%s: %s: out of host memory for a request", name, who(c));
    r->comm = c;
    r->mpi = MPI_REQUEST_NULL;
    r->name = name;
    r->nbytes = nbytes;
    r->dtype = dtype;
    return r;
}

static void request_free(fsdp_comm_request *r) {
    if (!r) return;
    free(r->tmp);
    free(r);
}

/* work after completion: copy out of the temporary, divide for AVG */
static void request_finish(fsdp_comm_request *r) {
    if (r->copy_dst && r->copy_bytes > 0) memcpy(r->copy_dst, r->tmp, (size_t)r->copy_bytes);
    if (r->avg_buf && r->comm->size > 1) {
        float n = (float)r->comm->size;
        for (int64_t i = 0; i < r->avg_count; i++)
            fsdp_store_from_f32(r->avg_buf, i, r->dtype, fsdp_load_as_f32(r->avg_buf, i, r->dtype) / n);
    }
}

/* Hands a started request to the caller, or waits for it when req is NULL.
 * On an MPI start error (rc != MPI_SUCCESS) the request is dropped. */
static int request_submit(fsdp_comm_request *r, int rc, fsdp_comm_request **req) {
    if (rc != MPI_SUCCESS) {
        int status = mpi_fail(r->comm, r->name, rc);
        request_free(r);
        return status;
    }
    if (req) {
        *req = r;
        return FSDP_OK;
    }
    return fsdp_comm_wait(r, 0);
}

/* Polls an MPI request until it completes or timeout_s passes. MPICH moves
 * data only inside MPI calls, so while the collective may still be busy
 * moving bytes we call MPI_Test back to back, yielding the core in between
 * (on an oversubscribed node other ranks need it). That spin lasts 1 s, or
 * longer for big collectives (nbytes at 100 MB/s). Past it a peer is late,
 * and we sleep between tests, 50 us doubling to 1 ms, so a long wait does
 * not burn a core. Returns 1 done, 0 timed out, -1 MPI error (*mpi_rc). */
static int poll_mpi(MPI_Request *mr, int64_t nbytes, double timeout_s, int *mpi_rc) {
    double start = now_s(), deadline = start + timeout_s;
    double spin_s = (double)nbytes / 1e8 > 1.0 ? (double)nbytes / 1e8 : 1.0;
    long sleep_ns = 50 * 1000;
    for (;;) {
        int flag = 0;
        int rc = MPI_Test(mr, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) { *mpi_rc = rc; return -1; }
        if (flag) return 1;
        double t = now_s();
        if (t >= deadline) return 0;
        if (t - start < spin_s) {
            sched_yield();
        } else {
            struct timespec ts = {0, sleep_ns};
            nanosleep(&ts, NULL);
            sleep_ns = sleep_ns * 2 < 1000 * 1000 ? sleep_ns * 2 : 1000 * 1000;
        }
    }
}

/* frees a request of an ext backend, its handle first */
static void ext_request_free(fsdp_comm_request *r) {
    if (r->ext) r->comm->ops->request_free(r->comm, r->ext);
    r->ext = NULL;
    request_free(r);
}

int fsdp_comm_wait(fsdp_comm_request *r, double timeout_s) {
    if (!r) return fsdp_error(FSDP_ERR_INVALID, "fsdp_comm_wait: request is NULL");
    if (timeout_s <= 0) timeout_s = fsdp_comm_default_timeout();
    if (r->comm->backend == BACKEND_EXT) {
        int status = FSDP_OK, pending = 0;
        if (r->ext) status = r->comm->ops->wait(r->comm, r->ext, r->name, r->nbytes, timeout_s, &pending);
        if (pending && status) return status; /* still running: the handle stays valid */
        ext_request_free(r);
        return status;
    }
    /* self requests are complete from the start */
    if (r->mpi != MPI_REQUEST_NULL) {
        int mpi_rc = MPI_SUCCESS;
        int done = poll_mpi(&r->mpi, r->nbytes, timeout_s, &mpi_rc);
        if (done == 0)
            return fsdp_error(FSDP_ERR_COMM,
                              "%s: collective %s of %lld bytes timed out after %g s (a peer may have died)",
                              who(r->comm), r->name, (long long)r->nbytes, timeout_s);
        if (done < 0) {
            int status = mpi_fail(r->comm, r->name, mpi_rc);
            request_free(r);
            return status;
        }
    }
    request_finish(r);
    request_free(r);
    return FSDP_OK;
}

int fsdp_comm_test(fsdp_comm_request *r, int *done) {
    if (!r || !done) return fsdp_error(FSDP_ERR_INVALID, "fsdp_comm_test: request or done is NULL");
    int flag = 1;
    if (r->comm->backend == BACKEND_EXT) {
        int status = FSDP_OK;
        if (r->ext) status = r->comm->ops->test(r->comm, r->ext, r->name, r->nbytes, &flag);
        if (status) flag = 1; /* an error ends the collective */
        *done = flag;
        if (flag) ext_request_free(r);
        return status;
    }
    if (r->mpi != MPI_REQUEST_NULL) {
        int rc = MPI_Test(&r->mpi, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            int status = mpi_fail(r->comm, r->name, rc);
            request_free(r);
            *done = 1;
            return status;
        }
    }
    *done = flag;
    if (flag) {
        request_finish(r);
        request_free(r);
    }
    return FSDP_OK;
}

/* ---- the world ---------------------------------------------------------- */

/* Was this process started by an MPI launcher? Hydra sets PMI_RANK/PMI_SIZE
 * (and PMI_FD), Open MPI OMPI_COMM_WORLD_SIZE, PMIx launchers PMIX_RANK, and
 * srun SLURM_PROCID with SLURM_NTASKS. */
static int launched_by_mpi(void) {
    long ntasks = 0;
    if (env_set("PMI_RANK") || env_set("PMI_SIZE") || env_set("PMI_FD")) return 1;
    if (env_set("OMPI_COMM_WORLD_SIZE") || env_set("PMIX_RANK")) return 1;
    if (env_set("SLURM_PROCID") && env_int("SLURM_NTASKS", &ntasks) && ntasks > 1) return 1;
    return 0;
}

static fsdp_comm *comm_alloc(int backend, int rank, int size, int is_world) {
    fsdp_comm *c = calloc(1, sizeof *c);
    if (!c) return fsdp_error_null(FSDP_ERR_OOM, "fsdp_comm: out of host memory for a communicator");
    c->backend = backend;
    c->rank = rank;
    c->size = size;
    c->is_world = is_world;
    c->job_rank = world_rank;
    c->sub_group = !is_world;
    c->mpi = MPI_COMM_NULL;
    return c;
}

/* initializes MPI (once) and builds the world over a duplicate of
 * MPI_COMM_WORLD, so our traffic never mixes with other MPI users' */
static fsdp_comm *mpi_world(void) {
    int initialized = 0, finalized = 0, rc;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: MPI was already finalized");
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
    long env_rank, env_size;
    if (env_int("WORLD_SIZE", &env_size) && env_size != size)
        return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: rank %d: WORLD_SIZE=%ld but MPI reports %d ranks",
                               rank, env_size, size);
    if (env_int("RANK", &env_rank) && env_rank != rank)
        return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: rank %d: RANK=%ld but MPI reports rank %d",
                               rank, env_rank, rank);

    if (!half_ops_made && create_half_ops()) return NULL;
    fsdp_comm *c = comm_alloc(BACKEND_MPI, rank, size, 1);
    if (!c) return NULL;
    rc = MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi);
    if (rc != MPI_SUCCESS) {
        free(c);
        mpi_fail(NULL, "MPI_Comm_dup", rc);
        return NULL;
    }
    MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
    return c;
}

fsdp_comm *fsdp_comm_world(void) {
    if (mpi_done) return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: MPI was already finalized");
    if (world) return world;
    if (launched_by_mpi()) {
        world = mpi_world();
        return world;
    }
    /* torchrun's env alone (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): the
     * tcp backend, on MASTER_PORT + 1 (torchrun's agent holds MASTER_PORT) */
    long env_size = 0, env_rank = -1, port = 0;
    if (env_int("WORLD_SIZE", &env_size) && env_size > 1) {
        const char *addr = getenv("MASTER_ADDR");
        if (!addr || !*addr || !env_int("MASTER_PORT", &port))
            return fsdp_error_null(FSDP_ERR_COMM,
                                   "fsdp_comm_world: WORLD_SIZE=%ld (RANK=%s) is set but neither an MPI launcher"
                                   " env (PMI_RANK, OMPI_COMM_WORLD_SIZE, PMIX_RANK, SLURM_PROCID) nor"
                                   " MASTER_ADDR and MASTER_PORT (torchrun's) was found; start the ranks with"
                                   " mpiexec, srun, `fsdp-lua --nproc-per-node` or `torchrun --no-python`",
                                   env_size, getenv("RANK") ? getenv("RANK") : "unset");
        if (!env_int("RANK", &env_rank) || env_rank < 0 || env_rank >= env_size)
            return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: WORLD_SIZE=%ld but RANK=%s is not a rank in"
                                   " 0..%ld", env_size, getenv("RANK") ? getenv("RANK") : "unset", env_size - 1);
        port += 1;
        if (env_set("FSDP_TCP_PORT") && !env_int("FSDP_TCP_PORT", &port))
            return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: rank %ld: FSDP_TCP_PORT=%s is not a number",
                                   env_rank, getenv("FSDP_TCP_PORT"));
        if (port < 1 || port > 65535)
            return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: rank %ld: tcp port %ld outside 1..65535"
                                   " (MASTER_PORT + 1, or FSDP_TCP_PORT)", env_rank, port);
        world_rank = (int)env_rank;
        world = fsdp_comm_tcp_world((int)env_rank, (int)env_size, addr, (int)port, fsdp_comm_default_timeout());
        if (world) world->is_world = 1;
        return world;
    }
    world = comm_alloc(BACKEND_SELF, 0, 1, 1);
    return world;
}

fsdp_comm *fsdp_comm_split(fsdp_comm *parent, int color, int key) {
    if (!parent) return fsdp_error_null(FSDP_ERR_INVALID, "fsdp_comm_split: parent comm is NULL");
    if (color < 0)
        return fsdp_error_null(FSDP_ERR_INVALID, "fsdp_comm_split: %s: color %d is negative", who(parent), color);
    if (parent->backend == BACKEND_EXT && parent->ops->split) return parent->ops->split(parent, color, key);
    if (parent->backend == BACKEND_EXT)
        return fsdp_error_null(FSDP_ERR_UNSUPPORTED, "fsdp_comm_split: %s: cannot split a %s comm; split the"
                               " host comm it was made from and make a %s comm of the sub-group",
                               who(parent), parent->ops->name, parent->ops->name);
    if (parent->backend == BACKEND_SELF) return comm_alloc(BACKEND_SELF, 0, 1, 0);
    if (mpi_done) return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_split: %s: MPI was already finalized", who(parent));
    /* collective over the parent: ranks with the same color form a group */
    MPI_Comm sub;
    int rc = MPI_Comm_split(parent->mpi, color, key, &sub);
    if (rc != MPI_SUCCESS) { mpi_fail(parent, "fsdp_comm_split", rc); return NULL; }
    MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
    int rank, size;
    MPI_Comm_rank(sub, &rank);
    MPI_Comm_size(sub, &size);
    fsdp_comm *c = comm_alloc(BACKEND_MPI, rank, size, 0);
    if (!c) { MPI_Comm_free(&sub); return NULL; }
    c->mpi = sub;
    return c;
}

void fsdp_comm_free(fsdp_comm *c) {
    if (!c || c->is_world) return;
    if (c->backend == BACKEND_EXT) c->ops->comm_free(c);
    if (c->backend == BACKEND_MPI && !mpi_done) MPI_Comm_free(&c->mpi);
    free(c);
}

/* rank and size: -1 for a NULL comm */
int fsdp_comm_rank(const fsdp_comm *c) {
    if (!c) {
        fsdp_error(FSDP_ERR_INVALID, "fsdp_comm_rank: comm is NULL");
        return -1;
    }
    return c->rank;
}

int fsdp_comm_size(const fsdp_comm *c) {
    if (!c) {
        fsdp_error(FSDP_ERR_INVALID, "fsdp_comm_size: comm is NULL");
        return -1;
    }
    return c->size;
}

const char *fsdp_comm_backend(const fsdp_comm *c) {
    if (!c) return fsdp_error_null(FSDP_ERR_INVALID, "fsdp_comm_backend: comm is NULL");
    if (c->backend == BACKEND_EXT) return c->ops->name;
    return c->backend == BACKEND_MPI ? "mpi" : "self";
}

/* -1 for a NULL comm */
int64_t fsdp_comm_bytes_sent(const fsdp_comm *c) {
    if (!c) {
        fsdp_error(FSDP_ERR_INVALID, "fsdp_comm_bytes_sent: comm is NULL");
        return -1;
    }
    return c->bytes_sent;
}

/* ---- backends of other libraries (comm_ops.h) --------------------------- */

fsdp_comm *fsdp_comm_ext_new(const fsdp_comm_ops *ops, void *ctx, int rank, int size,
                             const fsdp_comm *same_group_as) {
    static const char fn[] = "fsdp_comm_ext_new";
    if (!ops || !ops->name || !ops->wait || !ops->test || !ops->request_free || !ops->comm_free)
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: ops table lacks its name, wait, test, request_free"
                               " or comm_free", fn);
    if (size < 1 || rank < 0 || rank >= size)
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: %s backend: rank %d of %d", fn, ops->name, rank, size);
    if (same_group_as && (same_group_as->rank != rank || same_group_as->size != size))
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: %s backend: rank %d of %d, but the host comm is %s of %d",
                               fn, ops->name, rank, size, who(same_group_as), same_group_as->size);
    fsdp_comm *c = comm_alloc(BACKEND_EXT, rank, size, 0);
    if (!c) return NULL;
    c->ops = ops;
    c->ext_ctx = ctx;
    c->job_rank = same_group_as ? same_group_as->job_rank : rank;
    c->sub_group = same_group_as ? same_group_as->sub_group : 0;
    return c;
}

const fsdp_comm_ops *fsdp_comm_ext_ops(const fsdp_comm *c) {
    return c && c->backend == BACKEND_EXT ? c->ops : NULL;
}

void *fsdp_comm_ext_ctx(const fsdp_comm *c) {
    return c && c->backend == BACKEND_EXT ? c->ext_ctx : NULL;
}

int fsdp_comm_request_ext(const fsdp_comm_request *r, const fsdp_comm_ops *ops, void **handle) {
    if (!r || !ops || r->comm->backend != BACKEND_EXT || r->comm->ops != ops) return -1;
    if (handle) *handle = r->ext;
    return 0;
}

/* "fn: rank R: the <name> backend has no <collective>" */
static int ext_missing(const char *fn, const fsdp_comm *c, const char *what) {
    return fsdp_error(FSDP_ERR_UNSUPPORTED, "%s: %s: the %s backend has no %s", fn, who(c), c->ops->name, what);
}

/* After a start through the ops table (status): counts bytes and hands the
 * request out, or waits for it when req is NULL; drops it on error. */
static int ext_submit(fsdp_comm_request *r, int status, int64_t bytes, fsdp_comm_request **req) {
    if (status) {
        r->ext = NULL; /* a failed start owns no handle */
        request_free(r);
        return status;
    }
    r->comm->bytes_sent += bytes;
    if (req) {
        *req = r;
        return FSDP_OK;
    }
    return fsdp_comm_wait(r, 0);
}

/* ---- collectives -------------------------------------------------------- */

int fsdp_comm_all_gather(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                         fsdp_comm_request **req) {
    static const char fn[] = "fsdp_comm_all_gather";
    int status = check_args(fn, c, count, dtype, 0, 0);
    if (status) return status;
    int64_t slice = count * fsdp_dtype_size(dtype), total = slice * c->size;
    if (count > 0 && (!recv || !send))
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: NULL buffer with count %lld", fn, who(c), (long long)count);
    fsdp_comm_request *r = request_new(c, "all_gather", total, dtype);
    if (!r) return FSDP_ERR_OOM;
    if (c->backend == BACKEND_EXT)
        return ext_submit(r, c->ops->all_gather ? c->ops->all_gather(c, recv, send, count, dtype, &r->ext)
                                                : ext_missing(fn, c, "all_gather"),
                          (int64_t)(c->size - 1) * slice, req);

    /* self: the one slice is the whole result */
    if (c->backend == BACKEND_SELF) {
        if (slice > 0) memmove(recv, send, (size_t)slice);
        return request_submit(r, MPI_SUCCESS, req);
    }

    /* send sitting at this rank's slot of recv is MPI's in-place form; any
     * other overlap goes through a private copy of send */
    char *own_slot = (char *)recv + (int64_t)c->rank * slice;
    const void *src = send;
    if (slice > 0 && send == own_slot) {
        src = MPI_IN_PLACE;
    } else if (overlaps(send, slice, recv, total)) {
        r->tmp = malloc((size_t)slice);
        if (!r->tmp) { request_free(r); return fsdp_error(FSDP_ERR_OOM, "%s: %s: out of memory", fn, who(c)); }
        memcpy(r->tmp, send, (size_t)slice);
        src = r->tmp;
    }
    int n = (int)count;
    int rc = MPI_Iallgather(src, n, mpi_type(dtype), recv, n, mpi_type(dtype), c->mpi, &r->mpi);
    if (rc == MPI_SUCCESS) c->bytes_sent += (int64_t)(c->size - 1) * slice;
    return request_submit(r, rc, req);
}

int fsdp_comm_reduce_scatter(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                             int op, fsdp_comm_request **req) {
    static const char fn[] = "fsdp_comm_reduce_scatter";
    int status = check_args(fn, c, count, dtype, 1, op);
    if (status) return status;
    int64_t slice = count * fsdp_dtype_size(dtype), total = slice * c->size;
    if (count > 0 && (!recv || !send))
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: NULL buffer with count %lld", fn, who(c), (long long)count);
    fsdp_comm_request *r = request_new(c, "reduce_scatter", total, dtype);
    if (!r) return FSDP_ERR_OOM;
    if (c->backend == BACKEND_EXT)
        return ext_submit(r, c->ops->reduce_scatter ? c->ops->reduce_scatter(c, recv, send, count, dtype, op, &r->ext)
                                                    : ext_missing(fn, c, "reduce_scatter"),
                          (int64_t)(c->size - 1) * slice, req);
    if (op == FSDP_REDUCE_AVG) { r->avg_buf = recv; r->avg_count = count; }

    /* self: the reduction over one rank is its own slice (AVG is identity) */
    if (c->backend == BACKEND_SELF) {
        if (slice > 0) memmove(recv, send, (size_t)slice);
        return request_submit(r, MPI_SUCCESS, req);
    }

    /* MPI forbids aliasing: when recv lies inside send, receive into a
     * temporary and copy it into place at completion */
    void *dst = recv;
    if (overlaps(send, total, recv, slice)) {
        r->tmp = malloc((size_t)slice);
        if (!r->tmp) { request_free(r); return fsdp_error(FSDP_ERR_OOM, "%s: %s: out of memory", fn, who(c)); }
        r->copy_dst = recv;
        r->copy_bytes = slice;
        dst = r->tmp;
    }
    int rc = MPI_Ireduce_scatter_block(send, dst, (int)count, mpi_type(dtype), mpi_op(dtype, op),
                                       c->mpi, &r->mpi);
    if (rc == MPI_SUCCESS) c->bytes_sent += (int64_t)(c->size - 1) * slice;
    return request_submit(r, rc, req);
}

int fsdp_comm_all_reduce(fsdp_comm *c, void *buf, int64_t count, int dtype, int op,
                         fsdp_comm_request **req) {
    static const char fn[] = "fsdp_comm_all_reduce";
    int status = check_args(fn, c, count, dtype, 1, op);
    if (status) return status;
    int64_t nbytes = count * fsdp_dtype_size(dtype);
    if (count > 0 && !buf)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: NULL buffer with count %lld", fn, who(c), (long long)count);
    fsdp_comm_request *r = request_new(c, "all_reduce", nbytes, dtype);
    if (!r) return FSDP_ERR_OOM;
    if (c->backend == BACKEND_EXT)
        return ext_submit(r, c->ops->all_reduce ? c->ops->all_reduce(c, buf, count, dtype, op, &r->ext)
                                                : ext_missing(fn, c, "all_reduce"),
                          2 * (int64_t)(c->size - 1) * nbytes / c->size, req);
    if (op == FSDP_REDUCE_AVG) { r->avg_buf = buf; r->avg_count = count; }

    /* self: nothing to combine */
    if (c->backend == BACKEND_SELF) return request_submit(r, MPI_SUCCESS, req);

    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, mpi_type(dtype), mpi_op(dtype, op), c->mpi, &r->mpi);
    if (rc == MPI_SUCCESS) c->bytes_sent += 2 * (int64_t)(c->size - 1) * nbytes / c->size;
    return request_submit(r, rc, req);
}

int fsdp_comm_broadcast(fsdp_comm *c, void *buf, int64_t count, int dtype, int root,
                        fsdp_comm_request **req) {
    static const char fn[] = "fsdp_comm_broadcast";
    int status = check_args(fn, c, count, dtype, 0, 0);
    if (status) return status;
    if (root < 0 || root >= c->size)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: root %d outside 0..%d", fn, who(c), root, c->size - 1);
    int64_t nbytes = count * fsdp_dtype_size(dtype);
    if (count > 0 && !buf)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: NULL buffer with count %lld", fn, who(c), (long long)count);
    fsdp_comm_request *r = request_new(c, "broadcast", nbytes, dtype);
    if (!r) return FSDP_ERR_OOM;
    if (c->backend == BACKEND_EXT)
        return ext_submit(r, c->ops->broadcast ? c->ops->broadcast(c, buf, count, dtype, root, &r->ext)
                                               : ext_missing(fn, c, "broadcast"),
                          c->rank == root && c->size > 1 ? nbytes : 0, req);

    /* self: the root already holds the data */
    if (c->backend == BACKEND_SELF) return request_submit(r, MPI_SUCCESS, req);

    int rc = MPI_Ibcast(buf, (int)count, mpi_type(dtype), root, c->mpi, &r->mpi);
    if (rc == MPI_SUCCESS && c->rank == root && c->size > 1) c->bytes_sent += nbytes;
    return request_submit(r, rc, req);
}

int fsdp_comm_barrier(fsdp_comm *c) {
    static const char fn[] = "fsdp_comm_barrier";
    int status = check_args(fn, c, 0, FSDP_U8, 0, 0);
    if (status) return status;
    if (c->backend == BACKEND_SELF) return FSDP_OK;
    if (c->backend == BACKEND_EXT) return c->ops->barrier ? c->ops->barrier(c) : ext_missing(fn, c, "barrier");
    fsdp_comm_request *r = request_new(c, "barrier", 0, FSDP_U8);
    if (!r) return FSDP_ERR_OOM;
    int rc = MPI_Ibarrier(c->mpi, &r->mpi);
    return request_submit(r, rc, NULL);
}

/* ---- ending the job ----------------------------------------------------- */

void fsdp_comm_abort(int code) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
    /* No MPI job to tear down. This is the explicit fatal path the Lua top
     * level asks for after printing its error; the library itself never
     * calls it. */
    exit(code);
}

int fsdp_comm_finalize(void) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized || !mpi_started) return FSDP_OK;
    /* the world's duplicate and our ops go first; sub-groups still alive are
     * released by MPI_Finalize itself. The world struct stays allocated (a
     * caller may still hold it): its collectives now report the finalize. */
    if (world && world->mpi != MPI_COMM_NULL) MPI_Comm_free(&world->mpi);
    if (half_ops_made)
        for (int d = 0; d < 2; d++)
            for (int o = 0; o < 2; o++) MPI_Op_free(&half_ops[d][o]);
    half_ops_made = 0;
    int rc = MPI_Finalize();
    mpi_done = 1;
    if (rc != MPI_SUCCESS) return fsdp_error(FSDP_ERR_COMM, "fsdp_comm_finalize: rank %d: MPI_Finalize failed (%d)",
                                             world_rank, rc);
    return FSDP_OK;
}
