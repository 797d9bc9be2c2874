/* test_comm_ext.c - the backend hook of engine/comm.c (comm_ops.h), with a
 * fake host-memory backend standing in for NCCL: every public collective
 * reaches the table with its arguments, argument errors still come from
 * comm.c without reaching it, bytes_sent is counted as for MPI, and requests
 * wait / test / free through the table (pending, complete at start, a
 * timeout that leaves the request valid, an error that ends it).
 *
 * The fake is rank 1 of a world of 4 in which every rank holds the same
 * data, so results are predictable: all_gather repeats send in every slot,
 * SUM multiplies by 4, AVG and MAX leave values as they are. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fsdp.h"
#include "internal.h" /* fsdp_error, as a backend reports errors */
#include "comm_ops.h"
#include "check.h"

enum { RANK = 1, SIZE = 4 };

/* ---- the fake backend --------------------------------------------------- */

typedef struct fake_op {
    int complete;      /* the test flips it to finish the collective */
    int fail;          /* wait / test report an error that ends it */
    int id;
} fake_op;

typedef struct fake {
    /* the last start: which and with what */
    const char *last;
    void *recv, *buf;
    const void *send;
    int64_t count;
    int dtype, op, root;
    int starts, barriers, waits, tests, frees, comm_frees;
    /* the last wait / test */
    const char *wait_name;
    int64_t wait_nbytes;
    double wait_timeout;
    void *last_freed;
    /* behaviour */
    int async;         /* hand out pending handles (else NULL: complete at start) */
    int fail_start;    /* the next start fails with FSDP_ERR_COMM */
    int time_out;      /* wait times out, leaving the op running */
    fake_op ops[16];
    int n_ops;
} fake;

static fake *ctx(fsdp_comm *c) { return fsdp_comm_ext_ctx(c); }

/* what every start does: record, fail on request, hand out a handle */
static int begin(fsdp_comm *c, const char *name, void **handle) {
    fake *f = ctx(c);
    f->last = name;
    f->starts++;
    if (f->fail_start) {
        f->fail_start = 0;
        return fsdp_error(FSDP_ERR_COMM, "%s: fake %s refused", fsdp_comm_who(c), name);
    }
    if (f->async) {
        fake_op *op = &f->ops[f->n_ops % 16];
        memset(op, 0, sizeof *op);
        op->id = f->n_ops++;
        *handle = op;
    }
    return FSDP_OK;
}

static int fake_all_gather(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, void **handle) {
    fake *f = ctx(c);
    f->recv = recv; f->send = send; f->count = count; f->dtype = dtype;
    int rc = begin(c, "all_gather", handle);
    if (!rc) {
        int64_t slice = count * fsdp_dtype_size(dtype);
        for (int r = 0; slice > 0 && r < SIZE; r++) memmove((char *)recv + r * slice, send, (size_t)slice);
    }
    return rc;
}

static int fake_reduce_scatter(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, int op,
                               void **handle) {
    fake *f = ctx(c);
    f->recv = recv; f->send = send; f->count = count; f->dtype = dtype; f->op = op;
    int rc = begin(c, "reduce_scatter", handle);
    if (!rc && dtype == FSDP_F32)
        for (int64_t i = 0; i < count; i++) {
            float v = ((const float *)send)[RANK * count + i];
            ((float *)recv)[i] = op == FSDP_REDUCE_SUM ? SIZE * v : v;
        }
    return rc;
}

static int fake_all_reduce(fsdp_comm *c, void *buf, int64_t count, int dtype, int op, void **handle) {
    fake *f = ctx(c);
    f->buf = buf; f->count = count; f->dtype = dtype; f->op = op;
    int rc = begin(c, "all_reduce", handle);
    if (!rc && dtype == FSDP_F32 && op == FSDP_REDUCE_SUM)
        for (int64_t i = 0; i < count; i++) ((float *)buf)[i] *= SIZE;
    return rc;
}

static int fake_broadcast(fsdp_comm *c, void *buf, int64_t count, int dtype, int root, void **handle) {
    fake *f = ctx(c);
    f->buf = buf; f->count = count; f->dtype = dtype; f->root = root;
    return begin(c, "broadcast", handle);
}

static int fake_barrier(fsdp_comm *c, void **handle) {
    ctx(c)->barriers++;
    *handle = NULL;
    return FSDP_OK;
}

static int fake_wait(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, double timeout_s, int *pending) {
    fake *f = ctx(c);
    fake_op *op = handle;
    f->waits++;
    f->wait_name = name;
    f->wait_nbytes = nbytes;
    f->wait_timeout = timeout_s;
    if (op->fail) return fsdp_error(FSDP_ERR_COMM, "%s: fake %s failed", fsdp_comm_who(c), name);
    if (!op->complete && f->time_out) {
        *pending = 1;
        return fsdp_error(FSDP_ERR_COMM, "%s: fake %s timed out after %g s", fsdp_comm_who(c), name, timeout_s);
    }
    op->complete = 1;
    return FSDP_OK;
}

static int fake_test(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, int *done) {
    fake *f = ctx(c);
    fake_op *op = handle;
    f->tests++;
    f->wait_name = name;
    f->wait_nbytes = nbytes;
    if (op->fail) return fsdp_error(FSDP_ERR_COMM, "%s: fake %s failed", fsdp_comm_who(c), name);
    *done = op->complete;
    return FSDP_OK;
}

static void fake_request_free(fsdp_comm *c, void *handle) {
    ctx(c)->frees++;
    ctx(c)->last_freed = handle;
}

static void fake_comm_free(fsdp_comm *c) { ctx(c)->comm_frees++; }

static const fsdp_comm_ops fake_ops = {
    "fake", fake_all_gather, fake_reduce_scatter, fake_all_reduce, fake_broadcast, fake_barrier,
    fake_wait, fake_test, fake_request_free, fake_comm_free, NULL, 0, NULL, NULL,
};

/* the same without broadcast and barrier */
static const fsdp_comm_ops partial_ops = {
    "partial", fake_all_gather, fake_reduce_scatter, fake_all_reduce, NULL, NULL,
    fake_wait, fake_test, fake_request_free, fake_comm_free, NULL, 0, NULL, NULL,
};

static int error_has(const char *a, const char *b) {
    const char *err = fsdp_last_error();
    return strstr(err, a) && (!b || strstr(err, b));
}

#define OK(call) CHECK((call) == FSDP_OK, "%s: %s", #call, fsdp_last_error())

/* ---- tests -------------------------------------------------------------- */

static void test_new(void) {
    fake f = {0};
    fsdp_comm_ops no_test = fake_ops;
    no_test.test = NULL;
    CHECK(fsdp_comm_ext_new(NULL, &f, 0, 1, NULL) == NULL && error_has("ops table", NULL), "NULL ops: %s",
          fsdp_last_error());
    CHECK(fsdp_comm_ext_new(&no_test, &f, 0, 1, NULL) == NULL && error_has("test", NULL), "no test: %s",
          fsdp_last_error());
    CHECK(fsdp_comm_ext_new(&fake_ops, &f, 4, 4, NULL) == NULL && error_has("rank 4 of 4", NULL),
          "rank out of range: %s", fsdp_last_error());
    CHECK(fsdp_comm_ext_new(&fake_ops, &f, 0, 0, NULL) == NULL, "size 0 accepted");

    fsdp_comm *c = fsdp_comm_ext_new(&fake_ops, &f, RANK, SIZE, NULL);
    CHECK(c != NULL, "ext_new: %s", fsdp_last_error());
    if (!c) return;
    CHECK(strcmp(fsdp_comm_backend(c), "fake") == 0, "backend %s", fsdp_comm_backend(c));
    CHECK(fsdp_comm_rank(c) == RANK && fsdp_comm_size(c) == SIZE, "rank %d size %d", fsdp_comm_rank(c),
          fsdp_comm_size(c));
    CHECK(fsdp_comm_ext_ops(c) == &fake_ops && fsdp_comm_ext_ctx(c) == &f, "ops/ctx accessors");
    CHECK(strcmp(fsdp_comm_who(c), "rank 1") == 0, "who: %s", fsdp_comm_who(c));
    CHECK(fsdp_comm_bytes_sent(c) == 0, "bytes_sent starts at %lld", (long long)fsdp_comm_bytes_sent(c));
    CHECK(fsdp_comm_split(c, 0, 0) == NULL && error_has("cannot split a fake comm", NULL), "split: %s",
          fsdp_last_error());
    fsdp_comm_free(c);
    CHECK(f.comm_frees == 1, "comm_free called %d times", f.comm_frees);

    /* the messages of a comm over a sub-group's ranks name it as such */
    fsdp_comm *world = fsdp_comm_world();
    CHECK(world != NULL, "world: %s", fsdp_last_error());
    if (world && strcmp(fsdp_comm_backend(world), "self") == 0) {
        fsdp_comm *sub = fsdp_comm_split(world, 0, 0);
        CHECK(fsdp_comm_ext_new(&fake_ops, &f, RANK, SIZE, sub) == NULL && error_has("host comm", NULL),
              "same_group_as of another size accepted: %s", fsdp_last_error());
        fsdp_comm *c2 = fsdp_comm_ext_new(&fake_ops, &f, 0, 1, sub);
        CHECK(c2 && strstr(fsdp_comm_who(c2), "in a sub-group"), "who over a sub-group: %s",
              c2 ? fsdp_comm_who(c2) : fsdp_last_error());
        fsdp_comm_free(c2);
        fsdp_comm_free(sub);
    }
}

/* blocking calls: the table sees the arguments, wait gets the default
 * timeout (FSDP_COMM_TIMEOUT=7 in main), the results are the fake's */
static void test_blocking(void) {
    fake f = {0};
    fsdp_comm *c = fsdp_comm_ext_new(&fake_ops, &f, RANK, SIZE, NULL);
    if (!c) return;
    f.async = 1; /* pending handles, so the blocking calls really wait */
    float send[3] = {1, 2, 3}, recv[12] = {0};
    OK(fsdp_comm_all_gather(c, recv, send, 3, FSDP_F32, NULL));
    CHECK(f.last && strcmp(f.last, "all_gather") == 0 && f.recv == recv && f.send == send && f.count == 3 &&
          f.dtype == FSDP_F32, "all_gather arguments");
    CHECK(f.waits == 1 && strcmp(f.wait_name, "all_gather") == 0 && f.wait_nbytes == 4 * 3 * SIZE &&
          f.wait_timeout == 7, "all_gather wait: %d waits, %s, %lld bytes, %g s", f.waits, f.wait_name,
          (long long)f.wait_nbytes, f.wait_timeout);
    CHECK(f.frees == 1 && f.last_freed == &f.ops[0], "the handle was freed (%d)", f.frees);
    CHECK(recv[0] == 1 && recv[5] == 3 && recv[9] == 1, "all_gather result");
    CHECK(fsdp_comm_bytes_sent(c) == 3 * 12, "all_gather bytes_sent %lld", (long long)fsdp_comm_bytes_sent(c));

    float rs_send[8] = {1, 2, 3, 4, 5, 6, 7, 8}, rs_recv[2] = {0};
    OK(fsdp_comm_reduce_scatter(c, rs_recv, rs_send, 2, FSDP_F32, FSDP_REDUCE_SUM, NULL));
    CHECK(strcmp(f.last, "reduce_scatter") == 0 && f.recv == rs_recv && f.send == rs_send && f.count == 2 &&
          f.op == FSDP_REDUCE_SUM && f.wait_nbytes == 32, "reduce_scatter arguments");
    CHECK(rs_recv[0] == 12 && rs_recv[1] == 16, "reduce_scatter SUM: %g %g", rs_recv[0], rs_recv[1]);
    /* AVG goes to the backend as AVG: comm.c does not divide for it */
    OK(fsdp_comm_reduce_scatter(c, rs_recv, rs_send, 2, FSDP_F32, FSDP_REDUCE_AVG, NULL));
    CHECK(f.op == FSDP_REDUCE_AVG && rs_recv[0] == 3 && rs_recv[1] == 4, "reduce_scatter AVG: %g %g",
          rs_recv[0], rs_recv[1]);
    CHECK(fsdp_comm_bytes_sent(c) == 36 + 2 * 24, "reduce_scatter bytes_sent %lld",
          (long long)fsdp_comm_bytes_sent(c));

    float buf[8] = {1, 1, 1, 1, 1, 1, 1, 2};
    OK(fsdp_comm_all_reduce(c, buf, 8, FSDP_F32, FSDP_REDUCE_SUM, NULL));
    CHECK(strcmp(f.last, "all_reduce") == 0 && f.buf == buf && f.count == 8 && buf[7] == 8,
          "all_reduce arguments / result");
    int64_t before = fsdp_comm_bytes_sent(c);
    OK(fsdp_comm_all_reduce(c, buf, 8, FSDP_BF16, FSDP_REDUCE_MAX, NULL));
    CHECK(f.dtype == FSDP_BF16 && f.op == FSDP_REDUCE_MAX, "all_reduce bf16 max");
    CHECK(fsdp_comm_bytes_sent(c) - before == 2 * 3 * 16 / 4, "all_reduce bytes_sent +%lld",
          (long long)(fsdp_comm_bytes_sent(c) - before));

    before = fsdp_comm_bytes_sent(c);
    OK(fsdp_comm_broadcast(c, buf, 8, FSDP_F32, 0, NULL));
    CHECK(strcmp(f.last, "broadcast") == 0 && f.buf == buf && f.root == 0 && f.count == 8, "broadcast arguments");
    CHECK(fsdp_comm_bytes_sent(c) == before, "broadcast from another root counted");
    OK(fsdp_comm_broadcast(c, buf, 8, FSDP_I32, RANK, NULL));
    CHECK(f.root == RANK && f.dtype == FSDP_I32 && fsdp_comm_bytes_sent(c) == before + 32,
          "broadcast from this rank: +%lld", (long long)(fsdp_comm_bytes_sent(c) - before));

    OK(fsdp_comm_barrier(c));
    CHECK(f.barriers == 1, "barrier reached the backend %d times", f.barriers);

    /* a failed start: the backend's error, no bytes, no request left */
    before = fsdp_comm_bytes_sent(c);
    int frees = f.frees;
    f.fail_start = 1;
    fsdp_comm_request *req = (fsdp_comm_request *)&f; /* must be left alone */
    CHECK(fsdp_comm_all_gather(c, recv, send, 3, FSDP_F32, &req) == FSDP_ERR_COMM &&
              error_has("rank 1", "fake all_gather refused"),
          "failed start: %s", fsdp_last_error());
    CHECK(fsdp_comm_bytes_sent(c) == before && f.frees == frees, "failed start counted or freed a handle");
    CHECK(req == (fsdp_comm_request *)&f, "failed start wrote *req");

    /* count 0: still reaches the backend (it may need to order streams) */
    OK(fsdp_comm_all_gather(c, NULL, NULL, 0, FSDP_F32, NULL));
    CHECK(f.count == 0 && strcmp(f.last, "all_gather") == 0, "count 0 all_gather");
    fsdp_comm_free(c);
}

/* argument errors come from comm.c and never reach the table */
static void test_argument_errors(void) {
    fake f = {0};
    fsdp_comm *c = fsdp_comm_ext_new(&fake_ops, &f, RANK, SIZE, NULL);
    if (!c) return;
    float a[16];
    fsdp_comm_request *req = NULL;
    CHECK(fsdp_comm_all_gather(c, a, a, -1, FSDP_F32, &req) == FSDP_ERR_INVALID &&
              error_has("fsdp_comm_all_gather: rank 1", "negative"),
          "negative count: %s", fsdp_last_error());
    CHECK(fsdp_comm_all_gather(c, a, a, 2, 99, &req) == FSDP_ERR_INVALID && error_has("invalid dtype 99", NULL),
          "bad dtype: %s", fsdp_last_error());
    CHECK(fsdp_comm_all_gather(c, NULL, a, 2, FSDP_F32, &req) == FSDP_ERR_INVALID && error_has("NULL buffer", NULL),
          "NULL recv: %s", fsdp_last_error());
    CHECK(fsdp_comm_reduce_scatter(c, a, a, 2, FSDP_F32, 7, &req) == FSDP_ERR_INVALID &&
              error_has("fsdp_comm_reduce_scatter", "invalid reduce op 7"),
          "bad op: %s", fsdp_last_error());
    CHECK(fsdp_comm_reduce_scatter(c, a, NULL, 2, FSDP_F32, FSDP_REDUCE_SUM, &req) == FSDP_ERR_INVALID,
          "NULL send accepted");
    CHECK(fsdp_comm_all_reduce(c, a, 2, FSDP_I32, FSDP_REDUCE_AVG, &req) == FSDP_ERR_INVALID &&
              error_has("AVG needs a float dtype", NULL),
          "AVG of i32: %s", fsdp_last_error());
    CHECK(fsdp_comm_broadcast(c, a, 2, FSDP_F32, SIZE, &req) == FSDP_ERR_INVALID &&
              error_has("fsdp_comm_broadcast: rank 1", "root 4 outside 0..3"),
          "bad root: %s", fsdp_last_error());
    CHECK(fsdp_comm_broadcast(c, a, 2, FSDP_F32, -1, &req) == FSDP_ERR_INVALID, "root -1 accepted");
    CHECK(fsdp_comm_all_gather(NULL, a, a, 2, FSDP_F32, &req) == FSDP_ERR_INVALID && error_has("comm is NULL", NULL),
          "NULL comm: %s", fsdp_last_error());
    CHECK(f.starts == 0 && f.waits == 0, "a bad call reached the backend (%d starts)", f.starts);
    CHECK(req == NULL, "a bad call wrote *req");
    CHECK(fsdp_comm_bytes_sent(c) == 0, "a bad call counted bytes");

    /* entries the table lacks */
    fake g = {0};
    fsdp_comm *p = fsdp_comm_ext_new(&partial_ops, &g, 0, 2, NULL);
    CHECK(p != NULL, "partial: %s", fsdp_last_error());
    if (p) {
        CHECK(fsdp_comm_broadcast(p, a, 2, FSDP_F32, 0, &req) == FSDP_ERR_UNSUPPORTED &&
                  error_has("the partial backend has no broadcast", NULL),
              "missing broadcast: %s", fsdp_last_error());
        CHECK(req == NULL && fsdp_comm_bytes_sent(p) == 0, "missing broadcast left a request or bytes");
        CHECK(fsdp_comm_barrier(p) == FSDP_ERR_UNSUPPORTED && error_has("has no barrier", NULL),
              "missing barrier: %s", fsdp_last_error());
        fsdp_comm_free(p);
    }
    fsdp_comm_free(c);
}

/* requests: pending, tested, waited, timed out, failed, complete at start */
static void test_requests(void) {
    fake f = {0};
    fsdp_comm *c = fsdp_comm_ext_new(&fake_ops, &f, RANK, SIZE, NULL);
    if (!c) return;
    float buf[4] = {1, 2, 3, 4};
    fsdp_comm_request *req = NULL;
    void *handle = NULL;
    int done = -1;

    /* complete at start (NULL handle): nothing to ask the backend */
    OK(fsdp_comm_all_reduce(c, buf, 4, FSDP_F32, FSDP_REDUCE_MAX, &req));
    CHECK(req != NULL, "no request handed out");
    CHECK(fsdp_comm_request_ext(req, &fake_ops, &handle) == 0 && handle == NULL, "handle of a complete request");
    CHECK(fsdp_comm_request_ext(req, &partial_ops, &handle) == -1, "request matched another backend");
    OK(fsdp_comm_wait(req, 0));
    CHECK(f.waits == 0 && f.frees == 0, "a complete request reached wait/free");

    /* pending: test says not done until the backend completes it */
    f.async = 1;
    OK(fsdp_comm_broadcast(c, buf, 4, FSDP_F32, 0, &req));
    CHECK(fsdp_comm_request_ext(req, &fake_ops, &handle) == 0 && handle == &f.ops[0], "handle inside the request");
    OK(fsdp_comm_test(req, &done));
    CHECK(done == 0 && f.tests == 1 && strcmp(f.wait_name, "broadcast") == 0 && f.wait_nbytes == 16,
          "test of a pending request: done %d, %s, %lld", done, f.wait_name, (long long)f.wait_nbytes);
    f.ops[0].complete = 1;
    OK(fsdp_comm_test(req, &done));
    CHECK(done == 1 && f.frees == 1 && f.last_freed == &f.ops[0], "test of a complete request: done %d, %d frees",
          done, f.frees);

    /* a timed-out wait leaves the request valid; a later wait finishes it */
    f.time_out = 1;
    OK(fsdp_comm_reduce_scatter(c, buf, buf, 1, FSDP_F32, FSDP_REDUCE_SUM, &req));
    CHECK(fsdp_comm_wait(req, 0.25) == FSDP_ERR_COMM && error_has("rank 1", "reduce_scatter timed out after 0.25"),
          "timeout: %s", fsdp_last_error());
    CHECK(f.wait_timeout == 0.25 && f.frees == 1, "timeout: %g s, %d frees", f.wait_timeout, f.frees);
    f.ops[1].complete = 1;
    OK(fsdp_comm_wait(req, 1));
    CHECK(f.frees == 2 && f.last_freed == &f.ops[1], "wait after the timeout freed %d", f.frees);
    f.time_out = 0;

    /* an error ends the collective: wait frees the request */
    OK(fsdp_comm_all_gather(c, buf, buf, 1, FSDP_F32, &req));
    f.ops[2].fail = 1;
    CHECK(fsdp_comm_wait(req, 0) == FSDP_ERR_COMM && error_has("fake all_gather failed", NULL), "failed wait: %s",
          fsdp_last_error());
    CHECK(f.frees == 3 && f.last_freed == &f.ops[2], "failed wait freed %d", f.frees);
    /* and test too, reporting done */
    OK(fsdp_comm_all_reduce(c, buf, 4, FSDP_F32, FSDP_REDUCE_SUM, &req));
    f.ops[3].fail = 1;
    done = 0;
    CHECK(fsdp_comm_test(req, &done) == FSDP_ERR_COMM && done == 1 && f.frees == 4, "failed test: done %d, %d frees",
          done, f.frees);

    CHECK(fsdp_comm_wait(NULL, 0) == FSDP_ERR_INVALID, "wait of NULL");
    CHECK(fsdp_comm_test(NULL, &done) == FSDP_ERR_INVALID, "test of NULL");

    /* a request of a built-in backend is not the table's */
    fsdp_comm *world = fsdp_comm_world();
    if (world) {
        OK(fsdp_comm_all_reduce(world, buf, 4, FSDP_F32, FSDP_REDUCE_SUM, &req));
        CHECK(fsdp_comm_request_ext(req, &fake_ops, &handle) == -1, "a %s request matched the fake",
              fsdp_comm_backend(world));
        OK(fsdp_comm_wait(req, 0));
    }
    CHECK(fsdp_comm_request_ext(NULL, &fake_ops, &handle) == -1, "NULL request matched");
    fsdp_comm_free(c);
    CHECK(f.comm_frees == 1, "comm_free %d", f.comm_frees);
}

int main(void) {
    setenv("FSDP_COMM_TIMEOUT", "7", 1);
    test_new();
    test_blocking();
    test_argument_errors();
    test_requests();
    return check_exit("test_comm_ext");
}
