/* comm.c - the collective interface: argument checks, bytes_sent, requests,
 * waits (timeouts, interrupts, resync) and dispatch to a backend's ops table
 * (comm_ops.h). No backend lives here: mpi (comm_mpi.c), self (comm_self.c),
 * tcp (comm_tcp.c) and NCCL (libfsdp_cuda) all plug in through the table,
 * and comm_world.c picks the world's.
 *
 * Requests: every collective given a non-NULL req returns an allocated handle
 * in *req (complete from the start when the backend finished inside the
 * call). fsdp_comm_wait and fsdp_comm_test free the handle once the
 * collective has completed, successfully or with an error. A wait that times
 * out or is interrupted leaves the handle valid (the collective is still
 * running): the caller may wait again, resync, or end the job with
 * fsdp_comm_abort. A blocking call is a start followed by fsdp_comm_wait, so
 * a dead or missing peer turns into an FSDP_ERR_COMM timeout instead of a
 * hang; when that wait gives up the request is kept on the comm (its
 * buffers must stay allocated) until fsdp_comm_resync ends it.
 *
 * bytes_sent counts the "logical ring volume" of each collective, the
 * algorithm-independent accounting the NCCL performance notes use for bus
 * bandwidth, with n = group size and B = count * element size:
 *   all_gather, reduce_scatter: (n-1) * B     (B = one rank's slice)
 *   all_reduce:                 2 * (n-1) / n * B
 *   broadcast:                  B on the root, 0 elsewhere (0 when n == 1)
 * It is added when the collective starts successfully.
 *
 * Interrupts and resync (the protocol is in fsdp.h): each comm counts the
 * collectives started on it (seq) and keeps the descriptors of the last
 * RING of them, and a list of its live requests. fsdp_comm_resync swaps
 * (seq, descriptors) between the ranks over the backend's side channel
 * (resync_exchange); a rank behind the furthest one starts the collectives
 * it missed on scratch buffers, then every live request is waited for.
 *
 * Thread safety: one thread drives communication; fsdp_comm_interrupt may
 * be called from a signal handler. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "comm_ops.h"

enum { RING = 64 }; /* collectives resync can reconcile */
enum { K_ALL_GATHER = 1, K_REDUCE_SCATTER, K_ALL_REDUCE, K_BROADCAST, K_BARRIER };

/* what a started collective was, for a rank that must join it in resync */
typedef struct coll_desc {
    int32_t kind, dtype, arg; /* arg: reduce op or root */
    int32_t pad;
    int64_t count;
} coll_desc;

struct fsdp_comm {
    const fsdp_comm_ops *ops;
    void *ctx;                 /* the backend's state */
    int rank, size;
    int is_world;              /* the world lives until finalize; free ignores it */
    int job_rank;              /* this process's rank in the job, for messages */
    int sub_group;             /* messages add "(r of n in a sub-group)" */
    int64_t bytes_sent;
    int64_t seq;               /* collectives started */
    coll_desc ring[RING];      /* ring[s % RING]: collective number s */
    fsdp_comm_request *live;   /* requests not yet freed */
};

struct fsdp_comm_request {
    fsdp_comm *comm;
    void *handle;              /* the backend's; NULL once over (or complete at start) */
    const char *name;          /* collective name, for messages */
    int64_t nbytes;            /* size of the whole collective, for messages */
    int64_t seq;               /* its number on the comm */
    int orphan;                /* a blocking call gave up on it: resync frees it */
    int cancelled;             /* ended by resync: its result does not count */
    fsdp_comm_request *prev, *next;
};

/* ---- small helpers ------------------------------------------------------ */

/* "rank W" for the world, "rank W (r of n in a sub-group)" otherwise; a
 * per-thread buffer, valid until the next call */
static const char *who(const fsdp_comm *c) {
    static __thread char buf[96];
    if (!c) snprintf(buf, sizeof buf, "rank ?");
    else if (!c->sub_group) snprintf(buf, sizeof buf, "rank %d", c->job_rank);
    else snprintf(buf, sizeof buf, "rank %d (%d of %d in a sub-group)", c->job_rank, c->rank, c->size);
    return buf;
}

const char *fsdp_comm_who(const fsdp_comm *c) { return who(c); }

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

static int is_float(int dtype) { return dtype == FSDP_F32 || dtype == FSDP_BF16 || dtype == FSDP_F16; }

/* comm, count, dtype and, when check_op is set, the reduce op; fn names the
 * caller */
static int check_args(const char *fn, const fsdp_comm *c, int64_t count, int dtype, int check_op, int op) {
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
    return FSDP_OK;
}

/* "fn: rank R: the <name> backend has no <collective>" */
static int missing(const char *fn, const fsdp_comm *c, const char *what) {
    return fsdp_error(FSDP_ERR_UNSUPPORTED, "%s: %s: the %s backend has no %s", fn, who(c), c->ops->name, what);
}

/* ---- interrupts ------------------------------------------------------------ */

static volatile sig_atomic_t intr_local;  /* fsdp_comm_interrupt() on this rank */
static int intr_heard;                    /* a peer's notice of intr_epoch */
static int64_t intr_epoch;                /* interrupts ended by the world's resync */
static int64_t intr_told = -1;            /* the epoch we told the others about */
static double intr_polled;                /* last notify, for the rate limit */
static int in_resync;                     /* resync's waits are never interrupted */
static fsdp_comm *intr_world;             /* the comm notices travel on */

void fsdp_comm_interrupt(void) { intr_local = 1; }

/* Reads the flags; with force (or at most every ms) also exchanges notices
 * through the world's backend: tells the others of a local interrupt once
 * per epoch, and hears theirs. */
static int interrupt_poll(int force) {
    if (in_resync) return 0;
    int local = intr_local;
    if (intr_world && intr_world->ops->notify && (force || local || !intr_heard)) {
        double t = fsdp_now_s();
        if (force || t - intr_polled >= 1e-3 || (local && intr_told != intr_epoch)) {
            intr_polled = t;
            int tell = local && intr_told != intr_epoch, heard = 0;
            if (intr_world->ops->notify(intr_world, intr_epoch, tell, &heard) == FSDP_OK && tell)
                intr_told = intr_epoch;
            if (heard) intr_heard = 1;
        }
    }
    return local || intr_heard;
}

int fsdp_comm_interrupt_check(void) { return interrupt_poll(0); }

int fsdp_comm_interrupted(void) { return interrupt_poll(1); }

int fsdp_comm_interrupted_error(const fsdp_comm *c, const char *name, int64_t nbytes) {
    const char *from = intr_local ? "" : " (interrupted by another rank)";
    if (nbytes < 0 || !strcmp(name, "barrier"))
        return fsdp_error(FSDP_ERR_INTERRUPTED, "%s: interrupted while waiting in %s%s", who(c), name, from);
    return fsdp_error(FSDP_ERR_INTERRUPTED, "%s: interrupted while waiting in %s of %lld bytes%s", who(c), name,
                      (long long)nbytes, from);
}

/* ---- waiting ------------------------------------------------------------- */

int fsdp_comm_poll(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, double timeout_s,
                   double spin_s, int *pending) {
    double deadline = fsdp_now_s() + timeout_s;
    fsdp_backoff b;
    fsdp_backoff_init(&b, spin_s);
    *pending = 0;
    for (;;) {
        int done = 0;
        int status = c->ops->test(c, handle, name, nbytes, &done);
        if (status || done) return status;
        if (interrupt_poll(0)) {
            *pending = 1;
            return fsdp_comm_interrupted_error(c, name, nbytes);
        }
        if (fsdp_now_s() >= deadline) {
            *pending = 1;
            return fsdp_error(FSDP_ERR_COMM, "%s: collective %s of %lld bytes timed out after %g s"
                              " (a peer may have died)", who(c), name, (long long)nbytes, timeout_s);
        }
        fsdp_backoff_pause(&b);
    }
}

/* ---- requests ----------------------------------------------------------- */

static fsdp_comm_request *request_new(fsdp_comm *c, const char *name, int64_t nbytes) {
    fsdp_comm_request *r = calloc(1, sizeof *r);
    if (!r) return fsdp_error_null(FSDP_ERR_OOM, "%s: %s: out of host memory for a request", name, who(c));
    r->comm = c;
    r->name = name;
    r->nbytes = nbytes;
    return r;
}

static void request_link(fsdp_comm_request *r) {
    fsdp_comm *c = r->comm;
    r->prev = NULL;
    r->next = c->live;
    if (c->live) c->live->prev = r;
    c->live = r;
}

/* frees the request and the backend's handle, if any */
static void request_free(fsdp_comm_request *r) {
    fsdp_comm *c = r->comm;
    if (r->handle) c->ops->request_free(c, r->handle);
    if (r->prev) r->prev->next = r->next;
    else if (c->live == r) c->live = r->next;
    if (r->next) r->next->prev = r->prev;
    free(r);
}

/* the error a wait or test of a request that resync ended returns */
static int cancelled_error(const fsdp_comm_request *r) {
    return fsdp_error(FSDP_ERR_INTERRUPTED, "%s: %s of %lld bytes was cancelled by fsdp_comm_resync after an"
                      " interrupt; its buffers hold no result", who(r->comm), r->name, (long long)r->nbytes);
}

/* One wait on r: *pending = 1 when it is still running (timeout, interrupt).
 * Does not free r. */
static int request_wait(fsdp_comm_request *r, double timeout_s, int *pending) {
    fsdp_comm *c = r->comm;
    *pending = 0;
    if (!r->handle) return FSDP_OK;
    int status = c->ops->wait ? c->ops->wait(c, r->handle, r->name, r->nbytes, timeout_s, pending)
                              : fsdp_comm_poll(c, r->handle, r->name, r->nbytes, timeout_s, 0.02, pending);
    if (!*pending) {
        c->ops->request_free(c, r->handle);
        r->handle = NULL;
    }
    return status;
}

int fsdp_comm_wait(fsdp_comm_request *r, double timeout_s) {
    if (!r) return fsdp_error(FSDP_ERR_INVALID, "fsdp_comm_wait: request is NULL");
    if (timeout_s <= 0) timeout_s = fsdp_comm_default_timeout();
    int pending = 0;
    int status = request_wait(r, timeout_s, &pending);
    if (pending) return status; /* still running: the request stays valid */
    if (!status && r->cancelled) status = cancelled_error(r);
    request_free(r);
    return status;
}

int fsdp_comm_test(fsdp_comm_request *r, int *done) {
    if (!r || !done) return fsdp_error(FSDP_ERR_INVALID, "fsdp_comm_test: request or done is NULL");
    fsdp_comm *c = r->comm;
    int status = FSDP_OK, flag = 1;
    if (r->handle) {
        status = c->ops->test(c, r->handle, r->name, r->nbytes, &flag);
        if (status) flag = 1; /* an error ends the collective */
    }
    *done = flag;
    if (flag) {
        if (!status && r->cancelled) status = cancelled_error(r);
        request_free(r);
    }
    return status;
}

/* After a start through the table (status): records the collective, counts
 * its bytes and hands the request out, or waits for it when req is NULL
 * (a wait that gives up leaves it on the comm as an orphan); drops it on a
 * start error. */
static int submit(fsdp_comm_request *r, int status, const coll_desc *d, int64_t bytes, fsdp_comm_request **req) {
    fsdp_comm *c = r->comm;
    if (status) {
        r->handle = NULL; /* a failed start owns no handle */
        free(r);
        return status;
    }
    c->bytes_sent += bytes;
    r->seq = c->seq;
    c->ring[c->seq % RING] = *d;
    c->seq++;
    request_link(r);
    if (req) {
        *req = r;
        return FSDP_OK;
    }
    int pending = 0;
    status = request_wait(r, fsdp_comm_default_timeout(), &pending);
    if (pending) {
        r->orphan = 1;
        return status;
    }
    request_free(r);
    return status;
}

/* ---- collectives -------------------------------------------------------- */

/* starts d on c through the table (comm.c's checks done); *req as in
 * submit. fn names the public call for messages. */
static int start(const char *fn, fsdp_comm *c, const coll_desc *d, void *recv, const void *send,
                 fsdp_comm_request **req) {
    int64_t esize = fsdp_dtype_size(d->dtype), slice = d->count * esize, n = c->size;
    const fsdp_comm_ops *ops = c->ops;
    fsdp_comm_request *r;
    int status;
    switch (d->kind) {
    case K_ALL_GATHER:
        if (!ops->all_gather) return missing(fn, c, "all_gather");
        if (!(r = request_new(c, "all_gather", slice * n))) return FSDP_ERR_OOM;
        status = ops->all_gather(c, recv, send, d->count, d->dtype, &r->handle);
        return submit(r, status, d, (n - 1) * slice, req);
    case K_REDUCE_SCATTER:
        if (!ops->reduce_scatter) return missing(fn, c, "reduce_scatter");
        if (!(r = request_new(c, "reduce_scatter", slice * n))) return FSDP_ERR_OOM;
        status = ops->reduce_scatter(c, recv, send, d->count, d->dtype, d->arg, &r->handle);
        return submit(r, status, d, (n - 1) * slice, req);
    case K_ALL_REDUCE:
        if (!ops->all_reduce) return missing(fn, c, "all_reduce");
        if (!(r = request_new(c, "all_reduce", slice))) return FSDP_ERR_OOM;
        status = ops->all_reduce(c, recv, d->count, d->dtype, d->arg, &r->handle);
        return submit(r, status, d, 2 * (n - 1) * slice / n, req);
    case K_BROADCAST:
        if (!ops->broadcast) return missing(fn, c, "broadcast");
        if (!(r = request_new(c, "broadcast", slice))) return FSDP_ERR_OOM;
        status = ops->broadcast(c, recv, d->count, d->dtype, d->arg, &r->handle);
        return submit(r, status, d, c->rank == d->arg && n > 1 ? slice : 0, req);
    default:
        if (!ops->barrier) return missing(fn, c, "barrier");
        if (!(r = request_new(c, "barrier", 0))) return FSDP_ERR_OOM;
        status = ops->barrier(c, &r->handle);
        return submit(r, status, d, 0, req);
    }
}

int fsdp_comm_all_gather(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                         fsdp_comm_request **req) {
    static const char fn[] = "fsdp_comm_all_gather";
    int status = check_args(fn, c, count, dtype, 0, 0);
    if (status) return status;
    if (count > 0 && (!recv || !send))
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: NULL buffer with count %lld", fn, who(c), (long long)count);
    coll_desc d = {K_ALL_GATHER, dtype, 0, 0, count};
    return start(fn, c, &d, recv, send, req);
}

int fsdp_comm_reduce_scatter(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                             int op, fsdp_comm_request **req) {
    static const char fn[] = "fsdp_comm_reduce_scatter";
    int status = check_args(fn, c, count, dtype, 1, op);
    if (status) return status;
    if (count > 0 && (!recv || !send))
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: NULL buffer with count %lld", fn, who(c), (long long)count);
    coll_desc d = {K_REDUCE_SCATTER, dtype, op, 0, count};
    return start(fn, c, &d, recv, send, req);
}

int fsdp_comm_all_reduce(fsdp_comm *c, void *buf, int64_t count, int dtype, int op,
                         fsdp_comm_request **req) {
    static const char fn[] = "fsdp_comm_all_reduce";
    int status = check_args(fn, c, count, dtype, 1, op);
    if (status) return status;
    if (count > 0 && !buf)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: NULL buffer with count %lld", fn, who(c), (long long)count);
    coll_desc d = {K_ALL_REDUCE, dtype, op, 0, count};
    return start(fn, c, &d, buf, NULL, req);
}

int fsdp_comm_broadcast(fsdp_comm *c, void *buf, int64_t count, int dtype, int root,
                        fsdp_comm_request **req) {
    static const char fn[] = "fsdp_comm_broadcast";
    int status = check_args(fn, c, count, dtype, 0, 0);
    if (status) return status;
    if (root < 0 || root >= c->size)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: root %d outside 0..%d", fn, who(c), root, c->size - 1);
    if (count > 0 && !buf)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: NULL buffer with count %lld", fn, who(c), (long long)count);
    coll_desc d = {K_BROADCAST, dtype, root, 0, count};
    return start(fn, c, &d, buf, NULL, req);
}

int fsdp_comm_barrier(fsdp_comm *c) {
    static const char fn[] = "fsdp_comm_barrier";
    int status = check_args(fn, c, 0, FSDP_U8, 0, 0);
    if (status) return status;
    coll_desc d = {K_BARRIER, FSDP_U8, 0, 0, 0};
    return start(fn, c, &d, NULL, NULL, NULL);
}

/* ---- resync ------------------------------------------------------------- */

/* what each rank tells the others */
typedef struct resync_msg {
    int64_t seq;
    coll_desc ring[RING];
} resync_msg;

/* Starts collective d (one this rank missed) on scratch memory, as an
 * orphan request that the wait below ends. */
static int join_missed(fsdp_comm *c, const coll_desc *d, double timeout_s) {
    int64_t esize = fsdp_dtype_size(d->dtype);
    if (!esize || d->count < 0 || d->kind < K_ALL_GATHER || d->kind > K_BARRIER)
        return fsdp_error(FSDP_ERR_COMM, "fsdp_comm_resync: %s: a peer described a malformed collective", who(c));
    int64_t nbytes = d->count * esize * (d->kind == K_ALL_GATHER || d->kind == K_REDUCE_SCATTER ? c->size + 1 : 1);
    char *scratch = calloc(1, nbytes > 0 ? (size_t)nbytes : 1);
    if (!scratch)
        return fsdp_error(FSDP_ERR_OOM, "fsdp_comm_resync: %s: out of host memory for %lld scratch bytes", who(c),
                          (long long)nbytes);
    int64_t slice = d->count * esize;
    fsdp_comm_request *r = NULL;
    int status;
    if (d->kind == K_ALL_GATHER) status = start("fsdp_comm_resync", c, d, scratch + slice, scratch, &r);
    else if (d->kind == K_REDUCE_SCATTER) status = start("fsdp_comm_resync", c, d, scratch, scratch + slice, &r);
    else status = start("fsdp_comm_resync", c, d, scratch, NULL, &r);
    if (status) {
        free(scratch);
        return status;
    }
    /* the scratch must outlive the collective: wait for it right away
     * (every peer has started it: we were the one missing) */
    int pending = 0;
    status = request_wait(r, timeout_s, &pending);
    if (pending) {
        r->orphan = 1; /* leaks the scratch with it: the job is broken anyway */
        return status;
    }
    request_free(r);
    free(scratch);
    return status;
}

int fsdp_comm_resync(fsdp_comm *c, double timeout_s) {
    static const char fn[] = "fsdp_comm_resync";
    if (!c) return fsdp_error(FSDP_ERR_INVALID, "%s: comm is NULL", fn);
    if (timeout_s <= 0) timeout_s = fsdp_comm_default_timeout();
    if (c->size > 1 && !c->ops->resync_exchange)
        return fsdp_error(FSDP_ERR_UNSUPPORTED, "%s: %s: a %s comm cannot resync after an interrupt (its"
                          " collectives cannot be rejoined); make a new comm or restart the job", fn, who(c),
                          c->ops->name);
    resync_msg *all = calloc((size_t)c->size, sizeof *all);
    if (!all) return fsdp_error(FSDP_ERR_OOM, "%s: %s: out of host memory", fn, who(c));
    in_resync = 1;
    resync_msg mine;
    mine.seq = c->seq;
    memcpy(mine.ring, c->ring, sizeof mine.ring);
    int status = c->size > 1 ? c->ops->resync_exchange(c, &mine, all, (int64_t)sizeof mine, timeout_s) : FSDP_OK;
    if (c->size == 1) all[0] = mine;
    int64_t lo = mine.seq, hi = mine.seq;
    int src = c->rank;
    for (int r = 0; r < c->size && !status; r++) {
        if (all[r].seq < lo) lo = all[r].seq;
        if (all[r].seq > hi) { hi = all[r].seq; src = r; }
    }
    if (!status && hi - lo > RING)
        status = fsdp_error(FSDP_ERR_COMM, "%s: %s: the ranks are %lld collectives apart on this comm (resync"
                            " reconciles at most %d); restart the job", fn, who(c), (long long)(hi - lo), RING);
    /* every live request from the first collective some rank missed on is
     * a cancelled one; then the ones this rank missed are joined */
    if (!status)
        for (fsdp_comm_request *r = c->live; r; r = r->next)
            if (r->seq >= lo) r->cancelled = 1;
    for (int64_t s = mine.seq; s < hi && !status; s++) status = join_missed(c, &all[src].ring[s % RING], timeout_s);
    /* every collective of c is now started on every rank: wait for all */
    fsdp_comm_request *r = c->live;
    while (r && !status) {
        fsdp_comm_request *next = r->next;
        int pending = 0;
        status = request_wait(r, timeout_s, &pending);
        if (!pending && r->orphan) request_free(r);
        r = next;
    }
    if (!status && c == intr_world) {
        /* every rank of the world agreed: the interrupt is over */
        intr_local = 0;
        intr_heard = 0;
        intr_epoch++;
    }
    in_resync = 0;
    free(all);
    return status;
}

/* ---- comms ---------------------------------------------------------------- */

static fsdp_comm *comm_new(const fsdp_comm_ops *ops, void *ctx, int rank, int size) {
    static const char fn[] = "fsdp_comm_ext_new";
    if (!ops || !ops->name || !ops->test || !ops->request_free || !ops->comm_free)
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: ops table lacks its name, test, request_free or comm_free",
                               fn);
    if (size < 1 || rank < 0 || rank >= size)
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: %s backend: rank %d of %d", fn, ops->name, rank, size);
    fsdp_comm *c = calloc(1, sizeof *c);
    if (!c) return fsdp_error_null(FSDP_ERR_OOM, "fsdp_comm: out of host memory for a communicator");
    c->ops = ops;
    c->ctx = ctx;
    c->rank = rank;
    c->size = size;
    c->job_rank = rank;
    return c;
}

fsdp_comm *fsdp_comm_ext_new(const fsdp_comm_ops *ops, void *ctx, int rank, int size,
                             const fsdp_comm *same_group_as) {
    if (ops && same_group_as && (same_group_as->rank != rank || same_group_as->size != size))
        return fsdp_error_null(FSDP_ERR_INVALID, "fsdp_comm_ext_new: %s backend: rank %d of %d, but the host comm"
                               " is %s of %d", ops->name ? ops->name : "?", rank, size, who(same_group_as),
                               same_group_as->size);
    fsdp_comm *c = comm_new(ops, ctx, rank, size);
    if (c && same_group_as) {
        c->job_rank = same_group_as->job_rank;
        c->sub_group = same_group_as->sub_group;
    }
    return c;
}

fsdp_comm *fsdp_comm_ext_new_sub(const fsdp_comm_ops *ops, void *ctx, int rank, int size,
                                 const fsdp_comm *parent) {
    fsdp_comm *c = comm_new(ops, ctx, rank, size);
    if (c && parent) {
        c->job_rank = parent->job_rank;
        c->sub_group = 1;
    }
    return c;
}

void fsdp_comm_set_world(fsdp_comm *c) {
    if (!c) return;
    c->is_world = 1;
    intr_world = c;
}

const fsdp_comm_ops *fsdp_comm_ext_ops(const fsdp_comm *c) { return c ? c->ops : NULL; }

void *fsdp_comm_ext_ctx(const fsdp_comm *c) { return c ? c->ctx : NULL; }

int fsdp_comm_request_ext(const fsdp_comm_request *r, const fsdp_comm_ops *ops, void **handle) {
    if (!r || !ops || r->comm->ops != ops) return -1;
    if (handle) *handle = r->handle;
    return 0;
}

fsdp_comm *fsdp_comm_split(fsdp_comm *parent, int color, int key) {
    if (!parent) return fsdp_error_null(FSDP_ERR_INVALID, "fsdp_comm_split: parent comm is NULL");
    if (color < 0)
        return fsdp_error_null(FSDP_ERR_INVALID, "fsdp_comm_split: %s: color %d is negative", who(parent), color);
    if (parent->ops->split) return parent->ops->split(parent, color, key);
    return fsdp_error_null(FSDP_ERR_UNSUPPORTED, "fsdp_comm_split: %s: cannot split a %s comm; split the"
                           " host comm it was made from and make a %s comm of the sub-group",
                           who(parent), parent->ops->name, parent->ops->name);
}

void fsdp_comm_free(fsdp_comm *c) {
    if (!c || c->is_world) return;
    /* the collectives of requests a blocking call gave up on stay with the
     * backend (MPI cannot free a running collective); their shells go */
    for (fsdp_comm_request *r = c->live, *next; r; r = next) {
        next = r->next;
        if (r->orphan) free(r);
    }
    c->ops->comm_free(c);
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
    return c->ops->name;
}

/* -1 for a NULL comm */
int64_t fsdp_comm_bytes_sent(const fsdp_comm *c) {
    if (!c) {
        fsdp_error(FSDP_ERR_INVALID, "fsdp_comm_bytes_sent: comm is NULL");
        return -1;
    }
    return c->bytes_sent;
}
