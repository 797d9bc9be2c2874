/* dist_comm.c - the collectives (engine/comm.c) checked against values each
 * rank computes locally. Run by tests/dist/test_comm.sh, directly (a world of
 * one, the self backend), under mpiexec -n 2, 3, 4, and as 2, 3, 4 processes
 * with torchrun's env and no MPI (the tcp backend: split is refused there, so
 * the sub-group tests check the refusal and bytes_sent is counted on the
 * world).
 *
 * Rank r fills element i with value(dtype, r, i): small multiples of 1/4 (or
 * small integers), so every partial sum is exact in bf16 and f16 and results
 * compare bit for bit whatever order MPI reduces in.
 *
 * Modes for the failure tests (normal mode when no argument is given):
 *   --die-rank R            rank R kills itself (SIGKILL) before a collective
 *   --hang-rank R           rank R never joins a collective; the others must
 *                           time out (FSDP_COMM_TIMEOUT), print the error and
 *                           end the job with fsdp_comm_abort(1)
 *   --expect-launcher-error run with WORLD_SIZE > 1 but no MPI env: the world
 *                           must refuse with a message naming the launchers */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fsdp.h"
#include "dtype_math.h"
#include "check.h"

static int g_rank;   /* world rank, prefixed to every failure */

#define RCHECK(cond, fmt, ...) CHECK(cond, "rank %d: " fmt, g_rank, ##__VA_ARGS__)

static const int float_dtypes[] = {FSDP_F32, FSDP_BF16, FSDP_F16};
static const int64_t counts[] = {0, 1, 7, 4099, 300000};
enum { NCOUNTS = sizeof counts / sizeof counts[0] };

/* ---- values ------------------------------------------------------------- */

static double value(int dtype, int r, int64_t i) {
    int k = (int)((r * 7 + i * 3) % 17);
    switch (dtype) {
    case FSDP_F32: case FSDP_BF16: case FSDP_F16: return (k - 8) * 0.25;
    case FSDP_I32: return k - 8;
    case FSDP_I64: return k - 8 + (double)(1LL << 40);   /* needs all 64 bits */
    default: return k;                                  /* u8, u16 */
    }
}

static void put(void *p, int64_t i, int dtype, double v) {
    switch (dtype) {
    case FSDP_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    case FSDP_I64: ((int64_t *)p)[i] = (int64_t)v; break;
    case FSDP_U16: ((uint16_t *)p)[i] = (uint16_t)v; break;
    case FSDP_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    default: fsdp_store_from_f32(p, i, dtype, (float)v); break;
    }
}

static double get(const void *p, int64_t i, int dtype) {
    switch (dtype) {
    case FSDP_I32: return ((const int32_t *)p)[i];
    case FSDP_I64: return (double)((const int64_t *)p)[i];
    case FSDP_U16: return ((const uint16_t *)p)[i];
    case FSDP_U8: return ((const uint8_t *)p)[i];
    default: return fsdp_load_as_f32(p, i, dtype);
    }
}

/* what element j of a reduction over n ranks must be; AVG divides in f32 */
static double reduced(int dtype, int op, int n, int64_t j) {
    double acc = value(dtype, 0, j);
    for (int r = 1; r < n; r++) {
        double v = value(dtype, r, j);
        acc = op == FSDP_REDUCE_MAX ? (v > acc ? v : acc) : acc + v;
    }
    if (op == FSDP_REDUCE_AVG) acc = (float)acc / (float)n;
    return acc;
}

/* a buffer of n elements with every byte set to junk */
static void *junk(int64_t n, int dtype) {
    size_t bytes = (size_t)(n * fsdp_dtype_size(dtype)) + 1;
    void *p = malloc(bytes);
    memset(p, 0x5a, bytes);
    return p;
}

/* got[i] must equal want(i) rounded to dtype; reports the first mismatch */
static void check_elems(const char *what, const void *got, int64_t n, int dtype, double (*want)(int64_t, const void *),
                        const void *ctx) {
    unsigned char cell[8];
    int64_t bad = -1;
    double g = 0, w = 0;
    for (int64_t i = 0; i < n && bad < 0; i++) {
        put(cell, 0, dtype, want(i, ctx));   /* round the expectation to dtype */
        w = get(cell, 0, dtype);
        g = get(got, i, dtype);
        if (g != w) bad = i;
    }
    RCHECK(bad < 0, "%s (%s, n=%lld): element %lld is %.9g, want %.9g", what, fsdp_dtype_name(dtype),
           (long long)n, (long long)bad, g, w);
}

/* run a collective's wait when it was started non-blocking */
static int finish(int rc, fsdp_comm_request *req, int nb, const char *what) {
    if (rc == FSDP_OK && nb) rc = fsdp_comm_wait(req, 0);
    RCHECK(rc == FSDP_OK, "%s failed: %s", what, fsdp_last_error());
    return rc;
}

/* ---- one collective at a time ------------------------------------------ */

struct gather_ctx { int dtype; int64_t count; };
static double want_gather(int64_t j, const void *p) {
    const struct gather_ctx *g = p;
    return value(g->dtype, (int)(j / g->count), j % g->count);
}

static void test_all_gather(fsdp_comm *c, int dtype, int64_t count, int nb, int in_place) {
    int rank = fsdp_comm_rank(c), size = fsdp_comm_size(c), es = fsdp_dtype_size(dtype);
    char *recv = junk(size * count, dtype);
    void *own = recv + rank * count * es;
    void *send = in_place ? own : junk(count, dtype);
    for (int64_t i = 0; i < count; i++) put(send, i, dtype, value(dtype, rank, i));
    fsdp_comm_request *req = NULL;
    int rc = fsdp_comm_all_gather(c, recv, send, count, dtype, nb ? &req : NULL);
    if (finish(rc, req, nb, in_place ? "all_gather (in place)" : "all_gather") == FSDP_OK) {
        struct gather_ctx g = {dtype, count};
        check_elems(in_place ? "all_gather in place" : "all_gather", recv, size * count, dtype, want_gather, &g);
    }
    if (!in_place) free(send);
    free(recv);
}

struct reduce_ctx { int dtype, op, n; int64_t first; };
static double want_reduce(int64_t i, const void *p) {
    const struct reduce_ctx *r = p;
    return reduced(r->dtype, r->op, r->n, r->first + i);
}

static void test_reduce_scatter(fsdp_comm *c, int dtype, int op, int64_t count, int nb, int in_place) {
    int rank = fsdp_comm_rank(c), size = fsdp_comm_size(c), es = fsdp_dtype_size(dtype);
    char *send = junk(size * count, dtype);
    for (int64_t j = 0; j < size * count; j++) put(send, j, dtype, value(dtype, rank, j));
    void *recv = in_place ? send + rank * count * es : junk(count, dtype);
    fsdp_comm_request *req = NULL;
    int rc = fsdp_comm_reduce_scatter(c, recv, send, count, dtype, op, nb ? &req : NULL);
    if (finish(rc, req, nb, "reduce_scatter") == FSDP_OK) {
        struct reduce_ctx r = {dtype, op, size, rank * count};
        char what[64];
        snprintf(what, sizeof what, "reduce_scatter op %d%s", op, in_place ? " in place" : "");
        check_elems(what, recv, count, dtype, want_reduce, &r);
    }
    if (!in_place) free(recv);
    free(send);
}

static void test_all_reduce(fsdp_comm *c, int dtype, int op, int64_t count, int nb) {
    int rank = fsdp_comm_rank(c), size = fsdp_comm_size(c);
    void *buf = junk(count, dtype);
    for (int64_t i = 0; i < count; i++) put(buf, i, dtype, value(dtype, rank, i));
    fsdp_comm_request *req = NULL;
    int rc = fsdp_comm_all_reduce(c, buf, count, dtype, op, nb ? &req : NULL);
    if (finish(rc, req, nb, "all_reduce") == FSDP_OK) {
        struct reduce_ctx r = {dtype, op, size, 0};
        char what[64];
        snprintf(what, sizeof what, "all_reduce op %d", op);
        check_elems(what, buf, count, dtype, want_reduce, &r);
    }
    free(buf);
}

struct bcast_ctx { int dtype, root; };
static double want_bcast(int64_t i, const void *p) {
    const struct bcast_ctx *b = p;
    return value(b->dtype, b->root, i);
}

static void test_broadcast(fsdp_comm *c, int dtype, int64_t count, int root, int nb) {
    int rank = fsdp_comm_rank(c);
    void *buf = junk(count, dtype);
    if (rank == root)
        for (int64_t i = 0; i < count; i++) put(buf, i, dtype, value(dtype, root, i));
    fsdp_comm_request *req = NULL;
    int rc = fsdp_comm_broadcast(c, buf, count, dtype, root, nb ? &req : NULL);
    if (finish(rc, req, nb, "broadcast") == FSDP_OK) {
        struct bcast_ctx b = {dtype, root};
        check_elems("broadcast", buf, count, dtype, want_bcast, &b);
    }
    free(buf);
}

/* every collective, dtype and op, blocking and started-then-waited */
static void test_suite(fsdp_comm *c) {
    int size = fsdp_comm_size(c);
    /* zero elements: NULL buffers are fine */
    RCHECK(fsdp_comm_all_gather(c, NULL, NULL, 0, FSDP_F32, NULL) == FSDP_OK, "empty all_gather: %s",
           fsdp_last_error());
    RCHECK(fsdp_comm_reduce_scatter(c, NULL, NULL, 0, FSDP_BF16, FSDP_REDUCE_AVG, NULL) == FSDP_OK,
           "empty reduce_scatter: %s", fsdp_last_error());
    RCHECK(fsdp_comm_all_reduce(c, NULL, 0, FSDP_F16, FSDP_REDUCE_SUM, NULL) == FSDP_OK, "empty all_reduce: %s",
           fsdp_last_error());
    RCHECK(fsdp_comm_broadcast(c, NULL, 0, FSDP_I64, 0, NULL) == FSDP_OK, "empty broadcast: %s",
           fsdp_last_error());
    for (int nb = 0; nb < 2; nb++) {
        for (int k = 0; k < NCOUNTS; k++) {
            int64_t n = counts[k];
            /* all_gather moves bytes: every dtype */
            for (int d = 0; d < FSDP_NUM_DTYPES; d++) test_all_gather(c, d, n, nb, 0);
            test_all_gather(c, FSDP_BF16, n, nb, 1);
            /* reductions: float dtypes with SUM, AVG, MAX; integers with SUM, MAX */
            for (int f = 0; f < 3; f++)
                for (int op = 0; op < 3; op++) {
                    test_reduce_scatter(c, float_dtypes[f], op, n, nb, 0);
                    test_all_reduce(c, float_dtypes[f], op, n, nb);
                }
            test_reduce_scatter(c, FSDP_F32, FSDP_REDUCE_AVG, n, nb, 1);
            test_reduce_scatter(c, FSDP_BF16, FSDP_REDUCE_SUM, n, nb, 1);
            test_reduce_scatter(c, FSDP_I32, FSDP_REDUCE_SUM, n, nb, 0);
            test_reduce_scatter(c, FSDP_I32, FSDP_REDUCE_MAX, n, nb, 0);
            test_all_reduce(c, FSDP_I32, FSDP_REDUCE_SUM, n, nb);
            test_all_reduce(c, FSDP_I32, FSDP_REDUCE_MAX, n, nb);
            test_all_reduce(c, FSDP_I64, FSDP_REDUCE_SUM, n, nb);
            /* broadcast from every root */
            for (int root = 0; root < size; root++) {
                test_broadcast(c, FSDP_F32, n, root, nb);
                test_broadcast(c, FSDP_BF16, n, root, nb);
                test_broadcast(c, FSDP_I32, n, root, nb);
                test_broadcast(c, FSDP_U8, n, root, nb);
            }
        }
    }
    RCHECK(fsdp_comm_barrier(c) == FSDP_OK, "barrier: %s", fsdp_last_error());
}

/* ---- several requests outstanding, waited out of order ------------------ */

static void test_outstanding(fsdp_comm *c) {
    int rank = fsdp_comm_rank(c), size = fsdp_comm_size(c);
    const int64_t n1 = 1000, n2 = 513, n3 = 777, n4 = 100, n5 = 200000;
    int root = size - 1;
    /* 1: all_gather f32, 2: reduce_scatter bf16 SUM, 3: all_reduce f16 AVG,
     * 4: broadcast i32 from the last rank, 5: all_reduce f32 MAX */
    float *g_send = junk(n1, FSDP_F32), *g_recv = junk(size * n1, FSDP_F32);
    uint16_t *rs_send = junk(size * n2, FSDP_BF16), *rs_recv = junk(n2, FSDP_BF16);
    uint16_t *ar = junk(n3, FSDP_F16);
    int32_t *bc = junk(n4, FSDP_I32);
    float *mx = junk(n5, FSDP_F32);
    for (int64_t i = 0; i < n1; i++) put(g_send, i, FSDP_F32, value(FSDP_F32, rank, i));
    for (int64_t i = 0; i < size * n2; i++) put(rs_send, i, FSDP_BF16, value(FSDP_BF16, rank, i));
    for (int64_t i = 0; i < n3; i++) put(ar, i, FSDP_F16, value(FSDP_F16, rank, i));
    if (rank == root)
        for (int64_t i = 0; i < n4; i++) put(bc, i, FSDP_I32, value(FSDP_I32, root, i));
    for (int64_t i = 0; i < n5; i++) put(mx, i, FSDP_F32, value(FSDP_F32, rank, i));

    fsdp_comm_request *req[5] = {0};
    int rc = 0;
    rc |= fsdp_comm_all_gather(c, g_recv, g_send, n1, FSDP_F32, &req[0]);
    rc |= fsdp_comm_reduce_scatter(c, rs_recv, rs_send, n2, FSDP_BF16, FSDP_REDUCE_SUM, &req[1]);
    rc |= fsdp_comm_all_reduce(c, ar, n3, FSDP_F16, FSDP_REDUCE_AVG, &req[2]);
    rc |= fsdp_comm_broadcast(c, bc, n4, FSDP_I32, root, &req[3]);
    rc |= fsdp_comm_all_reduce(c, mx, n5, FSDP_F32, FSDP_REDUCE_MAX, &req[4]);
    RCHECK(rc == FSDP_OK, "starting five requests: %s", fsdp_last_error());
    if (rc != FSDP_OK) return;   /* the job is broken; the others time out */

    /* wait 5, poll 3 with test, then 1, 4, 2 */
    RCHECK(fsdp_comm_wait(req[4], 0) == FSDP_OK, "wait 5: %s", fsdp_last_error());
    int done = 0, polls = 0;
    while (!done) {
        if (fsdp_comm_test(req[2], &done) != FSDP_OK) { RCHECK(0, "test 3: %s", fsdp_last_error()); break; }
        if (!done) { polls++; usleep(100); }
    }
    RCHECK(fsdp_comm_wait(req[0], 0) == FSDP_OK, "wait 1: %s", fsdp_last_error());
    RCHECK(fsdp_comm_wait(req[3], 0) == FSDP_OK, "wait 4: %s", fsdp_last_error());
    RCHECK(fsdp_comm_wait(req[1], 0) == FSDP_OK, "wait 2: %s", fsdp_last_error());

    struct gather_ctx g = {FSDP_F32, n1};
    check_elems("outstanding all_gather", g_recv, size * n1, FSDP_F32, want_gather, &g);
    struct reduce_ctx r2 = {FSDP_BF16, FSDP_REDUCE_SUM, size, rank * n2};
    check_elems("outstanding reduce_scatter", rs_recv, n2, FSDP_BF16, want_reduce, &r2);
    struct reduce_ctx r3 = {FSDP_F16, FSDP_REDUCE_AVG, size, 0};
    check_elems("outstanding all_reduce avg", ar, n3, FSDP_F16, want_reduce, &r3);
    struct bcast_ctx b = {FSDP_I32, root};
    check_elems("outstanding broadcast", bc, n4, FSDP_I32, want_bcast, &b);
    struct reduce_ctx r5 = {FSDP_F32, FSDP_REDUCE_MAX, size, 0};
    check_elems("outstanding all_reduce max", mx, n5, FSDP_F32, want_reduce, &r5);
    free(g_send); free(g_recv); free(rs_send); free(rs_recv); free(ar); free(bc); free(mx);
}

/* ---- many collectives in flight, random kinds and sizes ------------------ */

/* One of the random collectives: its buffers and what it must hold. */
struct rnd_op {
    int kind, dtype, op, root;
    int64_t count;
    void *send, *recv;
    fsdp_comm_request *req;
};

static uint64_t rnd_next(uint64_t *x) {
    *x ^= *x << 13; *x ^= *x >> 7; *x ^= *x << 17;
    return *x;
}

/* waits for o, checks its result, frees its buffers */
static void rnd_finish(fsdp_comm *c, struct rnd_op *o, int i) {
    int rank = fsdp_comm_rank(c), size = fsdp_comm_size(c);
    char what[64];
    snprintf(what, sizeof what, "random op %d (kind %d, %s x %lld)", i, o->kind, fsdp_dtype_name(o->dtype),
             (long long)o->count);
    int rc = o->req ? fsdp_comm_wait(o->req, 0) : FSDP_OK;
    RCHECK(rc == FSDP_OK, "%s: %s", what, fsdp_last_error());
    if (rc == FSDP_OK) {
        if (o->kind == 0) {
            struct gather_ctx g = {o->dtype, o->count};
            check_elems(what, o->recv, size * o->count, o->dtype, want_gather, &g);
        } else if (o->kind == 1) {
            struct reduce_ctx r = {o->dtype, o->op, size, rank * o->count};
            check_elems(what, o->recv, o->count, o->dtype, want_reduce, &r);
        } else if (o->kind == 2) {
            struct reduce_ctx r = {o->dtype, o->op, size, 0};
            check_elems(what, o->recv, o->count, o->dtype, want_reduce, &r);
        } else if (o->kind == 3) {
            struct bcast_ctx b = {o->dtype, o->root};
            check_elems(what, o->recv, o->count, o->dtype, want_bcast, &b);
        }
    }
    /* the buffers go right away: nothing may write into them any more */
    free(o->send);
    free(o->recv);
    memset(o, 0, sizeof *o);
}

/* Every rank draws the same sequence: 150 collectives of random kind,
 * dtype, op and size (up to 2.4 MB, beyond a small shared-memory ring), up
 * to 5 left outstanding and finished in random order. */
static void test_random(fsdp_comm *c) {
    int rank = fsdp_comm_rank(c), size = fsdp_comm_size(c);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    struct rnd_op live[5];
    memset(live, 0, sizeof live);
    static const int reduce_dtypes[] = {FSDP_F32, FSDP_BF16, FSDP_F16, FSDP_I32};
    for (int i = 0; i < 150; i++) {
        int slot = (int)(rnd_next(&x) % 5);
        if (live[slot].kind || live[slot].recv || live[slot].req) rnd_finish(c, &live[slot], i);
        struct rnd_op *o = &live[slot];
        o->kind = (int)(rnd_next(&x) % 5);
        o->count = (int64_t)(rnd_next(&x) % 5 == 0 ? rnd_next(&x) % 600000 : rnd_next(&x) % 3000);
        o->dtype = o->kind == 0 || o->kind == 3 ? (int)(rnd_next(&x) % FSDP_NUM_DTYPES)
                                                : reduce_dtypes[rnd_next(&x) % 4];
        o->op = (int)(rnd_next(&x) % 3);
        if (o->op == FSDP_REDUCE_AVG && o->dtype == FSDP_I32) o->op = FSDP_REDUCE_SUM;
        o->root = (int)(rnd_next(&x) % size);
        int async = rnd_next(&x) % 3 != 0;
        int es = fsdp_dtype_size(o->dtype);
        int rc = FSDP_OK;
        fsdp_comm_request **req = async ? &o->req : NULL;
        switch (o->kind) {
        case 0:
            o->send = junk(o->count, o->dtype);
            o->recv = junk(size * o->count, o->dtype);
            for (int64_t j = 0; j < o->count; j++) put(o->send, j, o->dtype, value(o->dtype, rank, j));
            rc = fsdp_comm_all_gather(c, o->recv, o->send, o->count, o->dtype, req);
            break;
        case 1:
            o->send = junk(size * o->count, o->dtype);
            o->recv = junk(o->count, o->dtype);
            for (int64_t j = 0; j < size * o->count; j++) put(o->send, j, o->dtype, value(o->dtype, rank, j));
            rc = fsdp_comm_reduce_scatter(c, o->recv, o->send, o->count, o->dtype, o->op, req);
            break;
        case 2:
            o->recv = junk(o->count, o->dtype);
            for (int64_t j = 0; j < o->count; j++) put(o->recv, j, o->dtype, value(o->dtype, rank, j));
            rc = fsdp_comm_all_reduce(c, o->recv, o->count, o->dtype, o->op, req);
            break;
        case 3:
            o->recv = junk(o->count, o->dtype);
            if (rank == o->root)
                for (int64_t j = 0; j < o->count; j++) put(o->recv, j, o->dtype, value(o->dtype, o->root, j));
            rc = fsdp_comm_broadcast(c, o->recv, o->count, o->dtype, o->root, req);
            break;
        default:
            rc = fsdp_comm_barrier(c);
            o->kind = 4;
            break;
        }
        (void)es;
        RCHECK(rc == FSDP_OK, "random op %d (kind %d): start: %s", i, o->kind, fsdp_last_error());
        if (rc != FSDP_OK) return;
        if (!async) rnd_finish(c, o, i);
    }
    for (int k = 0; k < 5; k++)
        if (live[k].kind || live[k].recv || live[k].req) rnd_finish(c, &live[k], 150 + k);
}

/* ---- sub-groups --------------------------------------------------------- */

static void test_split(fsdp_comm *world) {
    int rank = fsdp_comm_rank(world), size = fsdp_comm_size(world);
    if (strcmp(fsdp_comm_backend(world), "tcp") == 0) {
        /* no sub-groups without MPI: a clear refusal, and the world still works */
        RCHECK(fsdp_comm_split(world, rank % 2, rank) == NULL, "split of a tcp comm succeeded");
        const char *msg = fsdp_last_error();
        RCHECK(strstr(msg, "hybrid strategies need an MPI launcher") && strstr(msg, "tcp"),
               "split refusal reads '%s'", msg);
        RCHECK(fsdp_comm_barrier(world) == FSDP_OK, "barrier after a refused split: %s", fsdp_last_error());
        return;
    }
    /* color = parity; key = -rank, so a group is ordered by descending rank */
    int color = rank % 2;
    fsdp_comm *sub = fsdp_comm_split(world, color, -rank);
    RCHECK(sub != NULL, "split: %s", fsdp_last_error());
    if (!sub) return;
    int members[64], m = 0;
    for (int r = size - 1; r >= 0; r--)
        if (r % 2 == color) members[m++] = r;
    int want_rank = 0;
    while (members[want_rank] != rank) want_rank++;
    RCHECK(fsdp_comm_size(sub) == m, "split: size %d, want %d", fsdp_comm_size(sub), m);
    RCHECK(fsdp_comm_rank(sub) == want_rank, "split: rank %d, want %d", fsdp_comm_rank(sub), want_rank);
    RCHECK(strcmp(fsdp_comm_backend(sub), fsdp_comm_backend(world)) == 0, "split: backend %s",
           fsdp_comm_backend(sub));

    /* membership: gather world ranks; the group's sum of world ranks */
    int32_t mine = rank, got[64], sum = rank;
    RCHECK(fsdp_comm_all_gather(sub, got, &mine, 1, FSDP_I32, NULL) == FSDP_OK, "split all_gather: %s",
           fsdp_last_error());
    for (int j = 0; j < m; j++) RCHECK(got[j] == members[j], "split gather[%d] = %d, want %d", j, got[j], members[j]);
    RCHECK(fsdp_comm_all_reduce(sub, &sum, 1, FSDP_I32, FSDP_REDUCE_SUM, NULL) == FSDP_OK, "split all_reduce: %s",
           fsdp_last_error());
    int32_t want_sum = 0;
    for (int j = 0; j < m; j++) want_sum += members[j];
    RCHECK(sum == want_sum, "split sum of world ranks %d, want %d", sum, want_sum);

    /* a few collectives inside the group, values by group rank */
    test_all_gather(sub, FSDP_BF16, 4099, 1, 0);
    test_reduce_scatter(sub, FSDP_F32, FSDP_REDUCE_AVG, 4099, 0, 0);
    test_reduce_scatter(sub, FSDP_F16, FSDP_REDUCE_SUM, 777, 1, 1);
    test_all_reduce(sub, FSDP_BF16, FSDP_REDUCE_MAX, 300000, 0);
    test_broadcast(sub, FSDP_F32, 1000, fsdp_comm_size(sub) - 1, 1);
    fsdp_comm_free(sub);
}

/* ---- volume accounting ------------------------------------------------- */

static void test_bytes_sent(fsdp_comm *world) {
    /* a fresh group of everyone starts at zero (tcp has no sub-groups: the
     * world, counting from where it is) */
    int tcp = strcmp(fsdp_comm_backend(world), "tcp") == 0;
    fsdp_comm *c = tcp ? world : fsdp_comm_split(world, 0, fsdp_comm_rank(world));
    RCHECK(c != NULL, "split for bytes_sent: %s", fsdp_last_error());
    if (!c) return;
    int rank = fsdp_comm_rank(c), s = fsdp_comm_size(c);
    const int64_t n = 1000;
    float *a = junk(s * n, FSDP_F32), *b = junk(s * n, FSDP_F32);
    for (int64_t i = 0; i < s * n; i++) a[i] = (float)i;
    int64_t want = fsdp_comm_bytes_sent(c);
    if (!tcp) RCHECK(want == 0, "bytes_sent starts at %lld", (long long)want);

    RCHECK(fsdp_comm_all_gather(c, b, a, n, FSDP_F32, NULL) == FSDP_OK, "%s", fsdp_last_error());
    want += (int64_t)(s - 1) * n * 4;
    RCHECK(fsdp_comm_bytes_sent(c) == want, "after all_gather %lld, want %lld", (long long)fsdp_comm_bytes_sent(c),
           (long long)want);
    RCHECK(fsdp_comm_reduce_scatter(c, b, a, n, FSDP_BF16, FSDP_REDUCE_SUM, NULL) == FSDP_OK, "%s",
           fsdp_last_error());
    want += (int64_t)(s - 1) * n * 2;
    RCHECK(fsdp_comm_bytes_sent(c) == want, "after reduce_scatter %lld, want %lld",
           (long long)fsdp_comm_bytes_sent(c), (long long)want);
    RCHECK(fsdp_comm_all_reduce(c, a, n, FSDP_F32, FSDP_REDUCE_SUM, NULL) == FSDP_OK, "%s", fsdp_last_error());
    want += 2 * (int64_t)(s - 1) * n * 4 / s;
    RCHECK(fsdp_comm_bytes_sent(c) == want, "after all_reduce %lld, want %lld", (long long)fsdp_comm_bytes_sent(c),
           (long long)want);
    RCHECK(fsdp_comm_broadcast(c, a, n, FSDP_F32, 0, NULL) == FSDP_OK, "%s", fsdp_last_error());
    if (rank == 0 && s > 1) want += n * 4;
    RCHECK(fsdp_comm_bytes_sent(c) == want, "after broadcast %lld, want %lld", (long long)fsdp_comm_bytes_sent(c),
           (long long)want);
    free(a);
    free(b);
    if (!tcp) fsdp_comm_free(c);
}

/* ---- argument errors (local: no collective starts) ---------------------- */

static void expect_invalid(int rc, const char *fn, const char *what) {
    RCHECK(rc == FSDP_ERR_INVALID, "%s: %s: rc %d, want FSDP_ERR_INVALID", fn, what, rc);
    RCHECK(strstr(fsdp_last_error(), fn) != NULL, "%s: %s: message '%s' does not name the function", fn, what,
           fsdp_last_error());
}

static void test_errors(fsdp_comm *c) {
    float x[8] = {0}, y[64] = {0};
    int size = fsdp_comm_size(c);
    expect_invalid(fsdp_comm_all_gather(NULL, y, x, 1, FSDP_F32, NULL), "fsdp_comm_all_gather", "NULL comm");
    expect_invalid(fsdp_comm_all_gather(c, y, x, -1, FSDP_F32, NULL), "fsdp_comm_all_gather", "negative count");
    expect_invalid(fsdp_comm_all_gather(c, y, x, 1, 99, NULL), "fsdp_comm_all_gather", "bad dtype");
    expect_invalid(fsdp_comm_all_gather(c, NULL, x, 1, FSDP_F32, NULL), "fsdp_comm_all_gather", "NULL recv");
    expect_invalid(fsdp_comm_reduce_scatter(c, y, x, 1, FSDP_F32, 7, NULL), "fsdp_comm_reduce_scatter", "bad op");
    expect_invalid(fsdp_comm_reduce_scatter(c, y, x, 1, FSDP_I32, FSDP_REDUCE_AVG, NULL), "fsdp_comm_reduce_scatter",
                   "AVG of i32");
    expect_invalid(fsdp_comm_all_reduce(c, x, 1, FSDP_F32, -1, NULL), "fsdp_comm_all_reduce", "bad op");
    expect_invalid(fsdp_comm_all_reduce(c, x, 1, FSDP_NUM_DTYPES, FSDP_REDUCE_SUM, NULL), "fsdp_comm_all_reduce",
                   "bad dtype");
    expect_invalid(fsdp_comm_broadcast(c, x, 1, FSDP_F32, size, NULL), "fsdp_comm_broadcast", "root == size");
    expect_invalid(fsdp_comm_broadcast(c, x, 1, FSDP_F32, -1, NULL), "fsdp_comm_broadcast", "root -1");
    RCHECK(strstr(fsdp_last_error(), "rank") != NULL, "errors name the rank: '%s'", fsdp_last_error());
    expect_invalid(fsdp_comm_barrier(NULL), "fsdp_comm_barrier", "NULL comm");
    expect_invalid(fsdp_comm_wait(NULL, 0), "fsdp_comm_wait", "NULL request");
    RCHECK(fsdp_comm_split(NULL, 0, 0) == NULL, "split of NULL");
    RCHECK(fsdp_comm_rank(NULL) == -1 && fsdp_comm_size(NULL) == -1, "rank/size of NULL");
    RCHECK(fsdp_comm_bytes_sent(NULL) == -1, "bytes_sent of NULL");
    fsdp_comm_free(NULL);
    fsdp_comm_free(c);   /* the world: ignored */
    RCHECK(fsdp_comm_size(c) == size, "the world survives fsdp_comm_free");
}

/* ---- failure modes ------------------------------------------------------ */

/* one rank dies or sleeps; the others sit in a blocking all_reduce */
static int run_failure(fsdp_comm *c, int victim, int die) {
    int rank = fsdp_comm_rank(c);
    float buf[256] = {0};
    if (fsdp_comm_barrier(c) != FSDP_OK) {
        fprintf(stderr, "rank %d: barrier before the failure test: %s\n", rank, fsdp_last_error());
        fsdp_comm_abort(2);
    }
    if (rank == victim) {
        if (die) raise(SIGKILL);
        sleep(300);                 /* never joins; MPI_Abort from a peer ends us */
        return 1;
    }
    int rc = fsdp_comm_all_reduce(c, buf, 256, FSDP_F32, FSDP_REDUCE_SUM, NULL);
    if (rc == FSDP_OK) {
        fprintf(stderr, "rank %d: all_reduce completed without rank %d\n", rank, victim);
        fsdp_comm_abort(2);
    }
    fprintf(stderr, "rank %d: expected failure (rc %d): %s\n", rank, rc, fsdp_last_error());
    /* give the other waiting ranks a moment to report before the abort */
    sleep(1);
    fsdp_comm_abort(1);
    return 1;
}

int main(int argc, char **argv) {
    int victim = -1, die = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--expect-launcher-error") == 0) {
            /* WORLD_SIZE > 1 without an MPI launcher must be refused */
            fsdp_comm *c = fsdp_comm_world();
            const char *msg = fsdp_last_error();
            CHECK(c == NULL, "world created without an MPI launcher");
            CHECK(strstr(msg, "mpiexec") && strstr(msg, "srun") && strstr(msg, "--nproc-per-node"),
                  "message does not name the launchers: '%s'", msg);
            printf("refused as expected: %s\n", msg);
            return check_exit("dist_comm --expect-launcher-error");
        } else if ((strcmp(argv[i], "--die-rank") == 0 || strcmp(argv[i], "--hang-rank") == 0) && i + 1 < argc) {
            die = strcmp(argv[i], "--die-rank") == 0;
            victim = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: dist_comm [--die-rank R | --hang-rank R | --expect-launcher-error]\n");
            return 2;
        }
    }

    fsdp_comm *world = fsdp_comm_world();
    if (!world) {
        fprintf(stderr, "dist_comm: %s\n", fsdp_last_error());
        return 1;
    }
    RCHECK(fsdp_comm_world() == world, "fsdp_comm_world is not idempotent");
    g_rank = fsdp_comm_rank(world);
    int size = fsdp_comm_size(world);
    const char *backend = fsdp_comm_backend(world);
    if (victim >= 0) return run_failure(world, victim, die);

    /* no launcher env: the self backend, a world of one; torchrun's env
     * alone: tcp */
    int launched = getenv("PMI_RANK") || getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK");
    int torchrun = !launched && getenv("WORLD_SIZE") && atoi(getenv("WORLD_SIZE")) > 1;
    if (torchrun) RCHECK(strcmp(backend, "tcp") == 0 && size == atoi(getenv("WORLD_SIZE")) &&
                         g_rank == atoi(getenv("RANK")), "backend %s rank %d size %d with torchrun's env",
                         backend, g_rank, size);
    else if (!launched) RCHECK(strcmp(backend, "self") == 0 && size == 1, "backend %s size %d without mpiexec", backend, size);
    else RCHECK(strcmp(backend, "mpi") == 0, "backend %s under mpiexec", backend);

    test_errors(world);
    test_suite(world);
    test_outstanding(world);
    test_random(world);
    test_split(world);
    test_bytes_sent(world);
    RCHECK(fsdp_comm_barrier(world) == FSDP_OK, "final barrier: %s", fsdp_last_error());

    RCHECK(fsdp_comm_finalize() == FSDP_OK, "finalize: %s", fsdp_last_error());
    RCHECK(fsdp_comm_finalize() == FSDP_OK, "second finalize: %s", fsdp_last_error());
    if (strcmp(backend, "mpi") == 0)
        RCHECK(fsdp_comm_barrier(world) == FSDP_ERR_COMM, "collective after finalize must fail");

    char name[64];
    snprintf(name, sizeof name, "dist_comm rank %d of %d (%s)", g_rank, size, backend);
    return check_exit(name);
}
