/* comm_tcp.c - the `tcp` backend of the collective interface: host memory,
 * no MPI, for jobs started by torchrun alone (RANK, WORLD_SIZE, MASTER_ADDR,
 * MASTER_PORT). engine/comm.c builds the world with it and dispatches to it
 * through the ops table of comm_ops.h, like any other backend.
 *
 * Star topology. Rank 0 listens on `port` (all interfaces); every other rank
 * connects to addr:port, retrying until the timeout since rank 0 may start
 * later, and says hello with its rank and world size. Rank 0 checks that
 * each of ranks 1..size-1 arrives once with the same size, then answers
 * every rank; only then does any rank return a comm.
 *
 * A collective goes through rank 0: every other rank sends a header (which
 * collective, its sequence number, dtype, count, op or root) and its data;
 * rank 0 reads the ranks in rank order, checks that each header matches its
 * own, combines, and sends each rank its result. Reductions add in rank
 * order, ((r0 + r1) + r2) + ..., bf16 and f16 widened to f32 and rounded
 * back at each step as the MPI backend's reduction ops do (dtype_math.h);
 * AVG then divides by the group size in f32. Every rank receives the bytes
 * rank 0 computed, so results are identical on every rank, and on 2 ranks
 * bitwise equal to the MPI backend's (a + b is commutative); with more ranks
 * MPI may add in another order.
 *
 * Every collective completes inside its start call (requests are complete
 * from the start). Sockets are non-blocking; every wait is a poll() bounded
 * by the comm's timeout (FSDP_COMM_TIMEOUT, default 600 s) counted from the
 * collective's start. A peer that closes or dies is an FSDP_ERR_COMM naming
 * this rank and the peer; rank 0 then sends the error to every other rank,
 * so they fail with it instead of waiting out the timeout. After a failure
 * the comm refuses further collectives (the streams are out of step).
 *
 * Wire format: a fixed header (struct wire_head, host byte order: every rank
 * runs the same build) followed by `nbytes` of payload. Error replies carry
 * their message text as payload.
 *
 * Not supported: fsdp_comm_split (the hybrid strategies need an MPI
 * launcher). Thread safety: one thread drives communication. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "internal.h"
#include "comm_ops.h"

enum { WIRE_MAGIC = 0x54445346u }; /* "FSDT" */
enum { K_HELLO = 1, K_WELCOME, K_ERROR, K_ALL_GATHER, K_REDUCE_SCATTER, K_ALL_REDUCE, K_BROADCAST,
       K_BARRIER, K_REPLY };

typedef struct wire_head {
    uint32_t magic;
    uint32_t kind;
    uint32_t seq;    /* collective number on this comm */
    int32_t rank;    /* sender */
    int32_t dtype;
    int32_t arg;     /* reduce op, broadcast root, or (hello) world size */
    int64_t count;
    int64_t nbytes;  /* payload bytes that follow */
} wire_head;

typedef struct tcp_ctx {
    int rank, size;
    int *fd;            /* rank 0: fd[r] to rank r (fd[0] unused); others: fd[0] to rank 0 */
    double timeout_s;
    uint32_t seq;
    int broken;         /* an earlier collective failed */
    char why[512];      /* its message */
} tcp_ctx;

static const char *kind_name(uint32_t kind) {
    switch (kind) {
    case K_ALL_GATHER: return "all_gather";
    case K_REDUCE_SCATTER: return "reduce_scatter";
    case K_ALL_REDUCE: return "all_reduce";
    case K_BROADCAST: return "broadcast";
    case K_BARRIER: return "barrier";
    case K_HELLO: return "hello";
    default: return "message";
    }
}

/* "collective all_gather": what the I/O errors of a collective name */
static const char *what_of(uint32_t kind) {
    switch (kind) {
    case K_ALL_GATHER: return "collective all_gather";
    case K_REDUCE_SCATTER: return "collective reduce_scatter";
    case K_ALL_REDUCE: return "collective all_reduce";
    case K_BROADCAST: return "collective broadcast";
    default: return "collective barrier";
    }
}

/* ---- socket I/O with deadlines ------------------------------------------ */

enum { WAIT_INTERRUPTED = -2 };

/* Waits for events on fd until deadline: 1 ready, 0 timed out, -1 poll error,
 * WAIT_INTERRUPTED when interruptible and fsdp_comm_interrupt was called
 * (checked every 50 ms). Hang-ups and errors count as ready: the read or
 * write then reports them. */
static int wait_fd(int fd, short events, double deadline, int interruptible) {
    for (;;) {
        double left = deadline - fsdp_now_s();
        if (left <= 0) return 0;
        if (interruptible && fsdp_comm_interrupt_check()) return WAIT_INTERRUPTED;
        struct pollfd p = {fd, events, 0};
        int ms = left > 3600.0 ? 3600 * 1000 : (int)(left * 1000.0) + 1;
        if (interruptible && ms > 50) ms = 50;
        int n = poll(&p, 1, ms);
        if (n > 0) return 1;
        if (n < 0 && errno != EINTR) return -1;
    }
}

/* What went wrong on the link to peer, as an FSDP_ERR_COMM naming both ranks.
 * err: 0 = closed by the peer, ETIMEDOUT = our deadline, else errno. */
static int link_fail(const tcp_ctx *t, int peer, const char *what, int err) {
    if (err == WAIT_INTERRUPTED)
        return fsdp_error(FSDP_ERR_INTERRUPTED, "rank %d: interrupted while waiting in %s for rank %d (a tcp comm"
                          " cannot resync: it refuses further collectives)", t->rank, what, peer);
    if (err == 0 || err == ECONNRESET || err == EPIPE)
        return fsdp_error(FSDP_ERR_COMM, "rank %d: %s: rank %d closed its connection (it may have died)", t->rank,
                          what, peer);
    if (err == ETIMEDOUT)
        return fsdp_error(FSDP_ERR_COMM, "rank %d: %s timed out after %g s waiting for rank %d"
                          " (a peer may have died)", t->rank, what, t->timeout_s, peer);
    return fsdp_error(FSDP_ERR_COMM, "rank %d: %s: connection to rank %d failed: %s", t->rank, what, peer,
                      strerror(err));
}

/* the waits of collectives may be interrupted; joining and error replies not */
static int is_collective(const char *what) { return strncmp(what, "collective ", 11) == 0; }

/* writes n bytes to peer's socket by deadline; partial writes and EINTR go on */
static int send_all(const tcp_ctx *t, int fd, int peer, const void *p, int64_t n, double deadline,
                    const char *what) {
    const char *s = p;
    while (n > 0) {
        size_t chunk = n > (1 << 30) ? (size_t)1 << 30 : (size_t)n;
        ssize_t w = send(fd, s, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) { s += w; n -= w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return link_fail(t, peer, what, errno);
        int ready = wait_fd(fd, POLLOUT, deadline, is_collective(what));
        if (ready == 0) return link_fail(t, peer, what, ETIMEDOUT);
        if (ready == WAIT_INTERRUPTED) return link_fail(t, peer, what, WAIT_INTERRUPTED);
        if (ready < 0) return link_fail(t, peer, what, errno);
    }
    return FSDP_OK;
}

/* reads n bytes from peer's socket by deadline */
static int recv_all(const tcp_ctx *t, int fd, int peer, void *p, int64_t n, double deadline,
                    const char *what) {
    char *d = p;
    while (n > 0) {
        size_t chunk = n > (1 << 30) ? (size_t)1 << 30 : (size_t)n;
        ssize_t got = recv(fd, d, chunk, MSG_DONTWAIT);
        if (got > 0) { d += got; n -= got; continue; }
        if (got == 0) return link_fail(t, peer, what, 0);
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return link_fail(t, peer, what, errno);
        int ready = wait_fd(fd, POLLIN, deadline, is_collective(what));
        if (ready == 0) return link_fail(t, peer, what, ETIMEDOUT);
        if (ready == WAIT_INTERRUPTED) return link_fail(t, peer, what, WAIT_INTERRUPTED);
        if (ready < 0) return link_fail(t, peer, what, errno);
    }
    return FSDP_OK;
}

static wire_head head_of(const tcp_ctx *t, uint32_t kind, int dtype, int arg, int64_t count, int64_t nbytes) {
    wire_head h;
    memset(&h, 0, sizeof h);
    h.magic = WIRE_MAGIC;
    h.kind = kind;
    h.seq = t->seq;
    h.rank = t->rank;
    h.dtype = dtype;
    h.arg = arg;
    h.count = count;
    h.nbytes = nbytes;
    return h;
}

static int send_msg(const tcp_ctx *t, int fd, int peer, const wire_head *h, const void *payload, double deadline,
                    const char *what) {
    int rc = send_all(t, fd, peer, h, sizeof *h, deadline, what);
    if (!rc && h->nbytes > 0) rc = send_all(t, fd, peer, payload, h->nbytes, deadline, what);
    return rc;
}

/* best effort, never blocks long: tells peer why this collective failed */
static void send_error(const tcp_ctx *t, int fd, int peer, const char *msg) {
    if (fd < 0) return;
    wire_head h = head_of(t, K_ERROR, 0, 0, 0, (int64_t)strlen(msg));
    char keep[1024];
    snprintf(keep, sizeof keep, "%s", fsdp_last_error()); /* a failed send must not replace the message */
    if (send_msg(t, fd, peer, &h, msg, fsdp_now_s() + 1.0, "sending an error")) fsdp_error(FSDP_ERR_COMM, "%s", keep);
}

/* reads an error reply's text (h->nbytes of it) into buf */
static void recv_error_text(const tcp_ctx *t, int fd, int peer, const wire_head *h, char *buf, size_t cap,
                            double deadline) {
    int64_t n = h->nbytes < (int64_t)cap - 1 ? h->nbytes : (int64_t)cap - 1;
    if (n < 0 || recv_all(t, fd, peer, buf, n, deadline, "reading an error") != FSDP_OK) n = 0;
    buf[n] = 0;
}

static void close_all(tcp_ctx *t) {
    if (!t->fd) return;
    for (int r = 0; r < t->size; r++)
        if (t->fd[r] >= 0) close(t->fd[r]);
    free(t->fd);
    t->fd = NULL;
}

static void set_socket_options(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* ---- one collective ------------------------------------------------------ */

/* What a collective moves. Rank 0 reads `up` bytes from every other rank (for
 * broadcast only from the root) and sends each rank `down` bytes. */
typedef struct coll {
    uint32_t kind;
    int dtype, arg;      /* op or root */
    int64_t count;
    int64_t up, down;
} coll;

static const char *op_name(int op) {
    return op == FSDP_REDUCE_SUM ? "sum" : op == FSDP_REDUCE_AVG ? "avg" : "max";
}

/* "all_reduce (f32 x 1024, sum)" */
static void describe(char *buf, size_t cap, uint32_t kind, int dtype, int arg, int64_t count) {
    const char *dn = fsdp_dtype_name(dtype) ? fsdp_dtype_name(dtype) : "?";
    if (kind == K_BARRIER) snprintf(buf, cap, "barrier");
    else if (kind == K_BROADCAST) snprintf(buf, cap, "broadcast (%s x %lld from rank %d)", dn, (long long)count, arg);
    else if (kind == K_ALL_GATHER) snprintf(buf, cap, "all_gather (%s x %lld)", dn, (long long)count);
    else if (kind == K_REDUCE_SCATTER || kind == K_ALL_REDUCE)
        snprintf(buf, cap, "%s (%s x %lld, %s)", kind_name(kind), dn, (long long)count, op_name(arg));
    else snprintf(buf, cap, "message kind %u", kind);
}

static int check_usable(fsdp_comm *c, const char *name) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    if (t->broken)
        return fsdp_error(FSDP_ERR_COMM, "%s: collective %s refused: the tcp comm failed earlier (%s)",
                          fsdp_comm_who(c), name, t->why);
    return FSDP_OK;
}

/* marks the comm broken with the current error; on rank 0 also tells every
 * other rank. Returns status. */
static int fail_comm(fsdp_comm *c, int status) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    snprintf(t->why, sizeof t->why, "%s", fsdp_last_error());
    t->broken = 1;
    if (t->rank == 0) {
        for (int r = 1; r < t->size; r++) send_error(t, t->fd[r], r, t->why);
        /* End our side after the error, and read what the others sent for
         * this collective: closing a socket with unread input resets the
         * connection, and a reset can drop the error before its reader gets
         * it (it would then blame rank 0 instead of the rank at fault). */
        double until = fsdp_now_s() + 0.2;
        for (int r = 1; r < t->size; r++) {
            if (t->fd[r] < 0) continue;
            shutdown(t->fd[r], SHUT_WR);
            char sink[4096];
            while (wait_fd(t->fd[r], POLLIN, until, 0) == 1 && recv(t->fd[r], sink, sizeof sink, MSG_DONTWAIT) > 0) {}
        }
    }
    /* an interrupted rank leaves for good: closing tells the peers now
     * instead of after their timeout */
    if (status == FSDP_ERR_INTERRUPTED) close_all(t);
    return status;
}

/* A non-root rank's side: send header + up bytes of `mine`, receive down
 * bytes into `result`. */
static int leaf_run(fsdp_comm *c, const coll *k, const void *mine, void *result) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    const char *name = kind_name(k->kind), *what = what_of(k->kind);
    double deadline = fsdp_now_s() + t->timeout_s;
    int fd = t->fd[0];
    wire_head h = head_of(t, k->kind, k->dtype, k->arg, k->count, k->up);
    int rc = send_msg(t, fd, 0, &h, mine, deadline, what);
    if (rc) return fail_comm(c, rc);
    /* Rank 0 waits for the others with the same timeout: when one of them
     * is missing, its error naming that rank arrives here a little after
     * the timeout, so wait that much longer for the reply */
    wire_head r;
    rc = recv_all(t, fd, 0, &r, sizeof r, deadline + 1.0 + 0.1 * t->timeout_s, what);
    if (rc) return fail_comm(c, rc);
    if (r.magic != WIRE_MAGIC)
        return fail_comm(c, fsdp_error(FSDP_ERR_COMM, "rank %d: %s: rank 0 sent a malformed reply", t->rank, name));
    if (r.kind == K_ERROR) {
        char msg[600];
        recv_error_text(t, fd, 0, &r, msg, sizeof msg, fsdp_now_s() + 1.0);
        return fail_comm(c, fsdp_error(FSDP_ERR_COMM, "rank %d: collective %s failed on rank 0: %s", t->rank, name,
                                       msg));
    }
    if (r.kind != K_REPLY || r.seq != t->seq || r.nbytes != k->down)
        return fail_comm(c, fsdp_error(FSDP_ERR_COMM, "rank %d: %s: rank 0 replied out of step (kind %u, collective"
                                       " #%u, %lld bytes; want #%u, %lld bytes)", t->rank, name, r.kind, r.seq,
                                       (long long)r.nbytes, t->seq, (long long)k->down));
    rc = recv_all(t, fd, 0, result, k->down, deadline + 1.0 + 0.1 * t->timeout_s, what);
    if (rc) return fail_comm(c, rc);
    return FSDP_OK;
}

/* Rank 0 reads rank r's header and checks it against its own collective. */
static int root_read_head(fsdp_comm *c, const coll *k, int r, int64_t want_up, double deadline) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    const char *name = kind_name(k->kind);
    wire_head h;
    int rc = recv_all(t, t->fd[r], r, &h, sizeof h, deadline, what_of(k->kind));
    if (rc) return rc;
    if (h.magic != WIRE_MAGIC || h.rank != r)
        return fsdp_error(FSDP_ERR_COMM, "rank 0: %s: malformed message from rank %d", name, r);
    if (h.kind != k->kind || h.seq != t->seq || h.dtype != k->dtype || h.arg != k->arg || h.count != k->count) {
        char mine[128], theirs[128];
        describe(mine, sizeof mine, k->kind, k->dtype, k->arg, k->count);
        describe(theirs, sizeof theirs, h.kind, h.dtype, h.arg, h.count);
        return fsdp_error(FSDP_ERR_COMM, "rank 0: collectives out of step: rank 0 calls %s as collective #%u, rank %d"
                          " calls %s as collective #%u", mine, t->seq, r, theirs, h.seq);
    }
    if (h.nbytes != want_up)
        return fsdp_error(FSDP_ERR_COMM, "rank 0: %s: rank %d sends %lld bytes, want %lld", name, r,
                          (long long)h.nbytes, (long long)want_up);
    return FSDP_OK;
}

static int root_reply(fsdp_comm *c, const coll *k, int r, const void *data, double deadline) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    wire_head h = head_of(t, K_REPLY, k->dtype, k->arg, k->count, k->down);
    return send_msg(t, t->fd[r], r, &h, data, deadline, what_of(k->kind));
}

static void *tmp_alloc(fsdp_comm *c, int64_t nbytes, const char *name) {
    void *p = malloc(nbytes > 0 ? (size_t)nbytes : 1);
    if (!p) fsdp_error(FSDP_ERR_OOM, "%s: %s: out of host memory for %lld bytes", fsdp_comm_who(c), name,
                       (long long)nbytes);
    return p;
}

/* ---- the ops ------------------------------------------------------------- */

static int tcp_all_gather(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, void **handle) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    *handle = NULL;
    int rc = check_usable(c, "all_gather");
    if (rc) return rc;
    int64_t slice = count * fsdp_dtype_size(dtype), total = slice * t->size;
    coll k = {K_ALL_GATHER, dtype, 0, count, slice, total};
    if (t->rank != 0) {
        /* send goes out in full before anything is received: aliasing is safe */
        rc = leaf_run(c, &k, send, recv);
        t->seq++;
        return rc;
    }
    double deadline = fsdp_now_s() + t->timeout_s;
    char *out = recv;
    if (slice > 0 && (const char *)send != out) memmove(out, send, (size_t)slice);
    for (int r = 1; r < t->size && !rc; r++) {
        rc = root_read_head(c, &k, r, slice, deadline);
        if (!rc) rc = recv_all(t, t->fd[r], r, out + r * slice, slice, deadline, what_of(k.kind));
    }
    for (int r = 1; r < t->size && !rc; r++) rc = root_reply(c, &k, r, out, deadline);
    t->seq++;
    return rc ? fail_comm(c, rc) : FSDP_OK;
}

/* rank 0's reduction of every rank's n elements: acc holds its own on entry;
 * ranks are added in order; `up` bytes each */
static int root_reduce(fsdp_comm *c, const coll *k, void *acc, int64_t n, double deadline) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    const char *name = kind_name(k->kind);
    void *in = tmp_alloc(c, k->up, name);
    if (!in) return FSDP_ERR_OOM;
    int rc = FSDP_OK;
    for (int r = 1; r < t->size && !rc; r++) {
        rc = root_read_head(c, k, r, k->up, deadline);
        if (!rc) rc = recv_all(t, t->fd[r], r, in, k->up, deadline, what_of(k->kind));
        if (!rc) fsdp_reduce_combine(acc, in, n, k->dtype, k->arg);
    }
    free(in);
    if (!rc && k->arg == FSDP_REDUCE_AVG) fsdp_reduce_divide(acc, n, k->dtype, t->size);
    return rc;
}

static int tcp_reduce_scatter(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, int op,
                              void **handle) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    *handle = NULL;
    int rc = check_usable(c, "reduce_scatter");
    if (rc) return rc;
    int64_t slice = count * fsdp_dtype_size(dtype), total = slice * t->size;
    coll k = {K_REDUCE_SCATTER, dtype, op, count, total, slice};
    if (t->rank != 0) {
        rc = leaf_run(c, &k, send, recv);
        t->seq++;
        return rc;
    }
    double deadline = fsdp_now_s() + t->timeout_s;
    char *acc = tmp_alloc(c, total, "reduce_scatter");
    if (!acc) return fail_comm(c, FSDP_ERR_OOM);
    if (total > 0) memcpy(acc, send, (size_t)total);
    rc = root_reduce(c, &k, acc, count * t->size, deadline);
    for (int r = 1; r < t->size && !rc; r++) rc = root_reply(c, &k, r, acc + r * slice, deadline);
    if (!rc && slice > 0) memmove(recv, acc, (size_t)slice);
    free(acc);
    t->seq++;
    return rc ? fail_comm(c, rc) : FSDP_OK;
}

static int tcp_all_reduce(fsdp_comm *c, void *buf, int64_t count, int dtype, int op, void **handle) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    *handle = NULL;
    int rc = check_usable(c, "all_reduce");
    if (rc) return rc;
    int64_t nbytes = count * fsdp_dtype_size(dtype);
    coll k = {K_ALL_REDUCE, dtype, op, count, nbytes, nbytes};
    if (t->rank != 0) {
        rc = leaf_run(c, &k, buf, buf);
        t->seq++;
        return rc;
    }
    double deadline = fsdp_now_s() + t->timeout_s;
    rc = root_reduce(c, &k, buf, count, deadline);
    for (int r = 1; r < t->size && !rc; r++) rc = root_reply(c, &k, r, buf, deadline);
    t->seq++;
    return rc ? fail_comm(c, rc) : FSDP_OK;
}

static int tcp_broadcast(fsdp_comm *c, void *buf, int64_t count, int dtype, int root, void **handle) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    *handle = NULL;
    int rc = check_usable(c, "broadcast");
    if (rc) return rc;
    int64_t nbytes = count * fsdp_dtype_size(dtype);
    coll k = {K_BROADCAST, dtype, root, count, 0, nbytes};
    if (t->rank != 0) {
        /* the root sends its data up and gets nothing back */
        if (t->rank == root) { k.up = nbytes; k.down = 0; }
        rc = leaf_run(c, &k, buf, buf);
        t->seq++;
        return rc;
    }
    double deadline = fsdp_now_s() + t->timeout_s;
    for (int r = 1; r < t->size && !rc; r++) {
        int64_t up = r == root ? nbytes : 0;
        rc = root_read_head(c, &k, r, up, deadline);
        if (!rc && up) rc = recv_all(t, t->fd[r], r, buf, up, deadline, what_of(k.kind));
    }
    for (int r = 1; r < t->size && !rc; r++) {
        coll back = k;
        if (r == root) back.down = 0;
        rc = root_reply(c, &back, r, buf, deadline);
    }
    t->seq++;
    return rc ? fail_comm(c, rc) : FSDP_OK;
}

static int tcp_barrier(fsdp_comm *c, void **handle) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    *handle = NULL;
    int rc = check_usable(c, "barrier");
    if (rc) return rc;
    coll k = {K_BARRIER, FSDP_U8, 0, 0, 0, 0};
    if (t->rank != 0) {
        rc = leaf_run(c, &k, NULL, NULL);
        t->seq++;
        return rc;
    }
    double deadline = fsdp_now_s() + t->timeout_s;
    for (int r = 1; r < t->size && !rc; r++) rc = root_read_head(c, &k, r, 0, deadline);
    for (int r = 1; r < t->size && !rc; r++) rc = root_reply(c, &k, r, NULL, deadline);
    t->seq++;
    return rc ? fail_comm(c, rc) : FSDP_OK;
}

/* every collective completes at its start: there is never a handle to wait on */
static int tcp_test(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, int *done) {
    *done = 1;
    return FSDP_OK;
}

static void tcp_request_free(fsdp_comm *c, void *handle) {}

static void tcp_comm_free(fsdp_comm *c) {
    tcp_ctx *t = fsdp_comm_ext_ctx(c);
    if (!t) return;
    close_all(t);
    free(t);
}

static fsdp_comm *tcp_split(fsdp_comm *c, int color, int key) {
    return fsdp_error_null(FSDP_ERR_UNSUPPORTED, "fsdp_comm_split: %s: the tcp backend (torchrun's env without MPI)"
                           " has no sub-groups; hybrid strategies need an MPI launcher: mpiexec, srun, or"
                           " `fsdp-lua --nproc-per-node`", fsdp_comm_who(c));
}

static const fsdp_comm_ops tcp_ops = {
    .name = "tcp",
    .all_gather = tcp_all_gather,
    .reduce_scatter = tcp_reduce_scatter,
    .all_reduce = tcp_all_reduce,
    .broadcast = tcp_broadcast,
    .barrier = tcp_barrier,
    .test = tcp_test,
    .request_free = tcp_request_free,
    .comm_free = tcp_comm_free,
    .split = tcp_split,
    .host = 1,
};

/* ---- joining ------------------------------------------------------------- */

/* rank 0: accept ranks 1..size-1 on port and check their hello */
static int root_accept(tcp_ctx *t, int port, double deadline) {
    int ls = fsdp_tcp_listen(port, t->size + 16);
    if (ls < 0)
        return fsdp_error(FSDP_ERR_COMM, "rank 0: tcp comm: cannot listen on port %d: %s (another job on it?"
                          " set FSDP_TCP_PORT or MASTER_PORT)", port, strerror(errno));
    fcntl(ls, F_SETFL, fcntl(ls, F_GETFL) | O_NONBLOCK);
    int joined = 0, rc = FSDP_OK;
    while (joined < t->size - 1 && !rc) {
        int ready = wait_fd(ls, POLLIN, deadline, 0);
        if (ready <= 0) {
            char missing[256] = "";
            size_t len = 0;
            for (int r = 1; r < t->size && len + 16 < sizeof missing; r++)
                if (t->fd[r] < 0) len += (size_t)snprintf(missing + len, sizeof missing - len, "%s%d", len ? ", " : "", r);
            rc = fsdp_error(FSDP_ERR_COMM, "rank 0: tcp comm: only %d of %d ranks joined on port %d within %g s;"
                            " missing: rank %s", joined + 1, t->size, port, t->timeout_s, missing);
            break;
        }
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue; /* EINTR, EAGAIN, a connection already gone */
        set_socket_options(fd);
        wire_head h;
        /* a stray connection that says nothing or something else is dropped */
        double hello_by = fsdp_now_s() + 10.0 < deadline ? fsdp_now_s() + 10.0 : deadline;
        if (recv_all(t, fd, -1, &h, sizeof h, hello_by, "hello") != FSDP_OK || h.magic != WIRE_MAGIC ||
            h.kind != K_HELLO) {
            close(fd);
            continue;
        }
        char msg[400] = "";
        if (h.arg != t->size)
            snprintf(msg, sizeof msg, "rank 0: tcp comm: rank %d joined with WORLD_SIZE=%d, but rank 0 has"
                     " WORLD_SIZE=%d", h.rank, h.arg, t->size);
        else if (h.rank < 1 || h.rank >= t->size)
            snprintf(msg, sizeof msg, "rank 0: tcp comm: a process joined as rank %d, outside 1..%d"
                     " (WORLD_SIZE=%d)", h.rank, t->size - 1, t->size);
        else if (t->fd[h.rank] >= 0)
            snprintf(msg, sizeof msg, "rank 0: tcp comm: rank %d joined twice (two processes with RANK=%d,"
                     " or another job on port %d?)", h.rank, h.rank, port);
        if (msg[0]) {
            rc = fsdp_error(FSDP_ERR_COMM, "%s", msg);
            send_error(t, fd, h.rank, msg);
            close(fd);
            break;
        }
        t->fd[h.rank] = fd;
        joined++;
    }
    close(ls);
    double answer_by = fsdp_now_s() + 10.0;
    if (rc) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", fsdp_last_error());
        for (int r = 1; r < t->size; r++) send_error(t, t->fd[r], r, msg);
        return rc;
    }
    for (int r = 1; r < t->size && !rc; r++) {
        wire_head w = head_of(t, K_WELCOME, 0, t->size, 0, 0);
        rc = send_msg(t, t->fd[r], r, &w, NULL, answer_by, "answering hello");
    }
    return rc;
}

/* a non-root rank: connect to addr:port (retrying until deadline), hello,
 * and wait for rank 0's answer */
static int leaf_connect(tcp_ctx *t, const char *addr, int port, double deadline) {
    char service[16], last[200] = "no attempt";
    snprintf(service, sizeof service, "%d", port);
    int fd = -1;
    while (fd < 0) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        int g = getaddrinfo(addr, service, &hints, &res);
        if (g != 0) {
            if (g != EAI_AGAIN)
                return fsdp_error(FSDP_ERR_COMM, "rank %d: tcp comm: cannot resolve MASTER_ADDR %s: %s", t->rank,
                                  addr, gai_strerror(g));
            snprintf(last, sizeof last, "resolving %s: %s", addr, gai_strerror(g));
        }
        for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
            int s = socket(a->ai_family, SOCK_STREAM, 0);
            if (s < 0) { snprintf(last, sizeof last, "socket: %s", strerror(errno)); continue; }
            set_socket_options(s);
            int err = 0;
            if (connect(s, a->ai_addr, a->ai_addrlen) != 0) {
                err = errno;
                if (err == EINPROGRESS || err == EINTR) {
                    double by = fsdp_now_s() + 5.0 < deadline ? fsdp_now_s() + 5.0 : deadline;
                    if (wait_fd(s, POLLOUT, by, 0) == 1) {
                        socklen_t len = sizeof err;
                        if (getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
                    } else {
                        err = ETIMEDOUT;
                    }
                }
            }
            if (err == 0) fd = s;
            else { snprintf(last, sizeof last, "connect: %s", strerror(err)); close(s); }
        }
        if (res) freeaddrinfo(res);
        if (fd >= 0) break;
        if (fsdp_now_s() >= deadline)
            return fsdp_error(FSDP_ERR_COMM, "rank %d: tcp comm: could not reach rank 0 at %s:%d within %g s (%s);"
                              " is rank 0 running, and are MASTER_ADDR and the port right?", t->rank, addr, port,
                              t->timeout_s, last);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    t->fd[0] = fd;
    wire_head h = head_of(t, K_HELLO, 0, t->size, 0, 0);
    int rc = send_msg(t, fd, 0, &h, NULL, deadline, "hello");
    wire_head w;
    /* rank 0 answers once every rank has joined */
    if (!rc) rc = recv_all(t, fd, 0, &w, sizeof w, deadline, "waiting for every rank to join");
    if (rc) return rc;
    if (w.magic == WIRE_MAGIC && w.kind == K_ERROR) {
        char msg[600];
        recv_error_text(t, fd, 0, &w, msg, sizeof msg, fsdp_now_s() + 1.0);
        return fsdp_error(FSDP_ERR_COMM, "rank %d: tcp comm: rank 0 refused the job: %s", t->rank, msg);
    }
    if (w.magic != WIRE_MAGIC || w.kind != K_WELCOME || w.arg != t->size)
        return fsdp_error(FSDP_ERR_COMM, "rank %d: tcp comm: %s:%d answered with something else than an fsdp-lua"
                          " rank 0 (another service on that port? set FSDP_TCP_PORT)", t->rank, addr, port);
    return FSDP_OK;
}

fsdp_comm *fsdp_comm_tcp_world(int rank, int size, const char *addr, int port, double timeout_s) {
    static const char fn[] = "fsdp_comm_tcp_world";
    if (size < 1 || rank < 0 || rank >= size)
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: rank %d outside 0..%d (world size %d)", fn, rank, size - 1,
                               size);
    if (size > 1 && (port < 1 || port > 65535))
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: rank %d: port %d outside 1..65535", fn, rank, port);
    if (size > 1 && rank > 0 && (!addr || !*addr))
        return fsdp_error_null(FSDP_ERR_INVALID, "%s: rank %d: no address of rank 0", fn, rank);
    tcp_ctx *t = calloc(1, sizeof *t);
    if (t) t->fd = malloc((size_t)size * sizeof *t->fd);
    if (!t || !t->fd) {
        if (t) free(t);
        return fsdp_error_null(FSDP_ERR_OOM, "%s: rank %d: out of host memory", fn, rank);
    }
    for (int r = 0; r < size; r++) t->fd[r] = -1;
    t->rank = rank;
    t->size = size;
    t->timeout_s = timeout_s > 0 ? timeout_s : fsdp_comm_default_timeout();
    double deadline = fsdp_now_s() + t->timeout_s;
    int rc = FSDP_OK;
    if (size > 1) rc = rank == 0 ? root_accept(t, port, deadline) : leaf_connect(t, addr, port, deadline);
    fsdp_comm *c = rc ? NULL : fsdp_comm_ext_new(&tcp_ops, t, rank, size, NULL);
    if (!c) {
        close_all(t);
        free(t);
    }
    return c;
}
