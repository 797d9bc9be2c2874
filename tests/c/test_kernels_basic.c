/* test_kernels_basic.c - CPU kernels: matmul, embedding, layernorm, rmsnorm,
 * activations, elementwise helpers.
 *
 * For each op: forward against a naive double-precision reference written
 * here; backward against central finite differences of the f32 forward
 * kernel itself, with L = sum(out .* R) for a fixed random R; backward called
 * twice must double the grads (they accumulate); bad arguments must return
 * FSDP_ERR_INVALID with a message naming the kernel. Set FSDP_TEST_VERBOSE=1
 * to see how close each finite-difference check came to its tolerance. */
#include <stdint.h>
#include <string.h>
#include "fsdp.h"
#include "check.h"

static fsdp_rng rng;
static int verbose;

/* ---- buffers ----------------------------------------------------------- */

static float *uniform(long n, float lo, float hi) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    fsdp_rng_fill_uniform(&rng, p, n, lo, hi);
    return p;
}

static float *zeros(long n) { return calloc(n ? n : 1, sizeof(float)); }

static float *filled(long n, float v) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (long i = 0; i < n; i++) p[i] = v;
    return p;
}

static float *copy_of(const float *x, long n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    memcpy(p, x, sizeof(float) * n);
    return p;
}

static float *scaled(const float *x, long n, float s) {
    float *p = copy_of(x, n);
    for (long i = 0; i < n; i++) p[i] *= s;
    return p;
}

static int same_bits(const float *a, const float *b, long n) {
    return memcmp(a, b, sizeof(float) * n) == 0;
}

/* rc must be FSDP_ERR_INVALID and the message must contain needle */
static void check_invalid(const char *what, int rc, const char *needle) {
    CHECK(rc == FSDP_ERR_INVALID, "%s: expected FSDP_ERR_INVALID, got %d", what, rc);
    CHECK(strstr(fsdp_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", what,
          fsdp_last_error(), needle);
    fsdp_clear_error();
}

/* ---- finite differences -------------------------------------------------
 * forward(ctx) runs the kernel into out; L = sum(out .* r) in double. Each
 * element of x is moved by +-eps in place and the slope of L compared with
 * grad[i]: |grad - num| <= atol + rtol |num|. The same tolerance must reject
 * 2 * grad somewhere, so a check cannot pass vacuously (all-zero grads). */

typedef void (*forward_fn)(void *ctx);

typedef struct {
    forward_fn forward;
    void *ctx;
    const float *out;
    long n_out;
    const float *r;
} fd_loss;

static double fd_eval(const fd_loss *f) {
    f->forward(f->ctx);
    double s = 0;
    for (long i = 0; i < f->n_out; i++) s += (double)f->out[i] * f->r[i];
    return s;
}

static void fd_check(const char *what, const fd_loss *f, float *x, long nx, const float *grad,
                     float eps, double rtol, double atol) {
    double worst = 0, worst_doubled = 0;
    long worst_i = 0;
    double worst_num = 0;
    for (long i = 0; i < nx; i++) {
        float x0 = x[i];
        x[i] = x0 + eps;
        double up = (double)x[i] - x0, lp = fd_eval(f);
        x[i] = x0 - eps;
        double down = x0 - (double)x[i], lm = fd_eval(f);
        x[i] = x0;
        double num = (lp - lm) / (up + down);
        double tol = atol + rtol * fabs(num);
        double e = fabs(grad[i] - num) / tol;
        double e2 = fabs(2.0 * grad[i] - num) / tol;
        if (e > worst) { worst = e; worst_i = i; worst_num = num; }
        if (e2 > worst_doubled) worst_doubled = e2;
    }
    f->forward(f->ctx); /* leave out as the unperturbed forward made it */
    if (verbose) printf("  fd %-34s worst %.3f of tol, 2x grad %.1f\n", what, worst, worst_doubled);
    CHECK(worst <= 1.0, "%s: element %ld: analytic %.8g, finite difference %.8g", what, worst_i,
          grad[worst_i], worst_num);
    CHECK(worst_doubled > 1.0, "%s: check too loose to see a factor of 2", what);
}

/* ---- matmul ------------------------------------------------------------ */

typedef struct {
    float *out;
    const float *a, *b, *bias;
    int M, N, K, ta, tb;
} mm_ctx;

static void mm_forward(void *p) {
    mm_ctx *c = p;
    fsdp_matmul_forward_cpu(c->out, c->a, c->b, c->bias, c->M, c->N, c->K, c->ta, c->tb, 0);
}

/* op(a)[m,k] and op(b)[k,n] read from the stored layouts */
static double mm_a(const float *a, int M, int K, int ta, int m, int k) {
    return ta ? a[(long)k * M + m] : a[(long)m * K + k];
}
static double mm_b(const float *b, int K, int N, int tb, int k, int n) {
    return tb ? b[(long)n * K + k] : b[(long)k * N + n];
}

static void mm_reference(float *out, const float *a, const float *b, const float *bias, int M,
                         int N, int K, int ta, int tb) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = bias ? bias[n] : 0.0;
            for (int k = 0; k < K; k++) s += mm_a(a, M, K, ta, m, k) * mm_b(b, K, N, tb, k, n);
            out[(long)m * N + n] = (float)s;
        }
}

static void test_matmul_case(int M, int N, int K, int ta, int tb, int has_bias) {
    char name[96];
    long na = (long)M * K, nb = (long)K * N, no = (long)M * N;
    float *a = uniform(na, -1, 1), *b = uniform(nb, -1, 1);
    float *bias = has_bias ? uniform(N, -1, 1) : NULL;
    float *ref = zeros(no), *out = filled(no, NAN);
    mm_reference(ref, a, b, bias, M, N, K, ta, tb);

    /* forward overwrites (the NaN fill must not leak through) */
    snprintf(name, sizeof name, "matmul M%d N%d K%d ta%d tb%d bias%d", M, N, K, ta, tb, has_bias);
    CHECK(fsdp_matmul_forward_cpu(out, a, b, bias, M, N, K, ta, tb, 0) == FSDP_OK, "%s", name);
    CHECK_CLOSE(name, out, ref, no, 1e-5, 1e-5);

    /* accumulate = 1 adds onto what is there */
    float *base = uniform(no, -1, 1), *acc = copy_of(base, no), *want = zeros(no);
    for (long i = 0; i < no; i++) want[i] = base[i] + ref[i];
    CHECK(fsdp_matmul_forward_cpu(acc, a, b, bias, M, N, K, ta, tb, 1) == FSDP_OK, "%s", name);
    CHECK_CLOSE(name, acc, want, no, 1e-5, 1e-5);

    /* backward vs finite differences, dout = R */
    float *r = uniform(no, -1, 1);
    float *da = zeros(na), *db = zeros(nb), *dbias = zeros(N);
    CHECK(fsdp_matmul_backward_cpu(da, db, has_bias ? dbias : NULL, r, a, b, M, N, K, ta, tb) ==
              FSDP_OK, "%s backward", name);
    mm_ctx ctx = {out, a, b, bias, M, N, K, ta, tb};
    fd_loss f = {mm_forward, &ctx, out, no, r};
    char what[128];
    snprintf(what, sizeof what, "%s da", name);
    fd_check(what, &f, a, na, da, 1e-2f, 1e-3, 1e-4);
    snprintf(what, sizeof what, "%s db", name);
    fd_check(what, &f, b, nb, db, 1e-2f, 1e-3, 1e-4);
    if (has_bias) {
        snprintf(what, sizeof what, "%s dbias", name);
        fd_check(what, &f, bias, N, dbias, 1e-2f, 1e-3, 1e-4);
    }

    /* a second call accumulates: the grads double */
    float *da2 = scaled(da, na, 2), *db2 = scaled(db, nb, 2), *dbias2 = scaled(dbias, N, 2);
    fsdp_matmul_backward_cpu(da, db, has_bias ? dbias : NULL, r, a, b, M, N, K, ta, tb);
    CHECK_CLOSE("matmul da accumulates", da, da2, na, 1e-6, 1e-7);
    CHECK_CLOSE("matmul db accumulates", db, db2, nb, 1e-6, 1e-7);
    CHECK_CLOSE("matmul dbias accumulates", dbias, dbias2, N, 1e-6, 1e-7);

    /* NULL grads are skipped: only da, from zero */
    memset(da, 0, sizeof(float) * na);
    CHECK(fsdp_matmul_backward_cpu(da, NULL, NULL, r, a, NULL, M, N, K, ta, tb) != FSDP_OK,
          "matmul backward: da without b must fail");
    fsdp_clear_error();
    CHECK(fsdp_matmul_backward_cpu(da, NULL, NULL, r, a, b, M, N, K, ta, tb) == FSDP_OK,
          "matmul backward da only");
    float *da1 = scaled(da2, na, 0.5f);
    CHECK_CLOSE("matmul da alone", da, da1, na, 1e-6, 1e-7);

    free(a); free(b); free(bias); free(ref); free(out); free(base); free(acc); free(want);
    free(r); free(da); free(db); free(dbias); free(da2); free(db2); free(dbias2); free(da1);
}

static void test_matmul(void) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bias = 0; bias < 2; bias++) test_matmul_case(5, 6, 7, ta, tb, bias);

    /* big enough for the parallel bias paths; dbias the same for 1 and 2 threads */
    int M = 300, N = 257, K = 33;
    float *a = uniform((long)M * K, -1, 1), *b = uniform((long)N * K, -1, 1);
    float *bias = uniform(N, -1, 1), *ref = zeros((long)M * N), *out = zeros((long)M * N);
    mm_reference(ref, a, b, bias, M, N, K, 0, 1);
    fsdp_matmul_forward_cpu(out, a, b, bias, M, N, K, 0, 1, 0);
    CHECK_CLOSE("matmul 300x257x33 with bias", out, ref, (long)M * N, 1e-5, 1e-5);
    float *dout = uniform((long)M * N, -1, 1), *db1 = zeros(N), *db2 = zeros(N);
    double *sum = calloc(N, sizeof(double));
    for (long i = 0; i < (long)M * N; i++) sum[i % N] += dout[i];
    float *want = zeros(N);
    for (int n = 0; n < N; n++) want[n] = (float)sum[n];
    int threads = fsdp_get_num_threads();
    fsdp_set_num_threads(1);
    fsdp_matmul_backward_cpu(NULL, NULL, db1, dout, a, b, M, N, K, 0, 1);
    fsdp_set_num_threads(2);
    fsdp_matmul_backward_cpu(NULL, NULL, db2, dout, a, b, M, N, K, 0, 1);
    fsdp_set_num_threads(threads);
    CHECK_CLOSE("matmul dbias column sums", db1, want, N, 1e-5, 1e-5);
    CHECK(same_bits(db1, db2, N), "matmul dbias differs between 1 and 2 threads");

    /* bad arguments */
    check_invalid("matmul M=0", fsdp_matmul_forward_cpu(out, a, b, NULL, 0, N, K, 0, 0, 0),
                  "fsdp_matmul_forward_cpu: M");
    check_invalid("matmul K<0", fsdp_matmul_forward_cpu(out, a, b, NULL, M, N, -1, 0, 0, 0),
                  "K must be > 0");
    check_invalid("matmul a NULL", fsdp_matmul_forward_cpu(out, NULL, b, NULL, M, N, K, 0, 0, 0),
                  "fsdp_matmul_forward_cpu");
    check_invalid("matmul backward N=0",
                  fsdp_matmul_backward_cpu(NULL, NULL, db1, dout, a, b, M, 0, K, 0, 0),
                  "fsdp_matmul_backward_cpu: N");
    check_invalid("matmul backward dout NULL",
                  fsdp_matmul_backward_cpu(NULL, NULL, db1, NULL, a, b, M, N, K, 0, 0), "dout");
    free(a); free(b); free(bias); free(ref); free(out); free(dout); free(db1); free(db2);
    free(sum); free(want);
}

/* ---- embedding --------------------------------------------------------- */

typedef struct {
    float *out;
    const int32_t *idx;
    const float *table;
    int N, V, C;
} emb_ctx;

static void emb_forward(void *p) {
    emb_ctx *c = p;
    fsdp_embedding_forward_cpu(c->out, c->idx, c->table, c->N, c->V, c->C);
}

static void test_embedding(void) {
    enum { N = 7, V = 5, C = 13 };
    int32_t idx[N] = {3, 0, 4, 3, 1, 3, 0}; /* repeats; row 2 unused */
    float *table = uniform(V * C, -1, 1), *out = filled(N * C, NAN);
    CHECK(fsdp_embedding_forward_cpu(out, idx, table, N, V, C) == FSDP_OK, "embedding forward");
    for (int n = 0; n < N; n++)
        CHECK(same_bits(out + n * C, table + idx[n] * C, C), "embedding row %d", n);

    /* backward vs a double reference and finite differences */
    float *r = uniform(N * C, -1, 1), *dtable = zeros(V * C), *want = zeros(V * C);
    double ref[V * C];
    memset(ref, 0, sizeof ref);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) ref[idx[n] * C + c] += r[n * C + c];
    for (int i = 0; i < V * C; i++) want[i] = (float)ref[i];
    CHECK(fsdp_embedding_backward_cpu(dtable, r, idx, N, V, C) == FSDP_OK, "embedding backward");
    CHECK_CLOSE("embedding dtable", dtable, want, V * C, 1e-6, 1e-7);
    emb_ctx ctx = {out, idx, table, N, V, C};
    fd_loss f = {emb_forward, &ctx, out, N * C, r};
    fd_check("embedding dtable", &f, table, V * C, dtable, 1e-2f, 1e-3, 1e-4);
    float *twice = scaled(dtable, V * C, 2);
    fsdp_embedding_backward_cpu(dtable, r, idx, N, V, C);
    CHECK_CLOSE("embedding dtable accumulates", dtable, twice, V * C, 1e-6, 1e-7);

    /* bad indices: error names position and value, nothing written */
    float *before = copy_of(dtable, V * C);
    idx[3] = V;
    check_invalid("embedding idx == V", fsdp_embedding_forward_cpu(out, idx, table, N, V, C),
                  "idx[3] = 5");
    idx[3] = 3;
    idx[6] = -1;
    check_invalid("embedding idx < 0", fsdp_embedding_backward_cpu(dtable, r, idx, N, V, C),
                  "fsdp_embedding_backward_cpu: idx[6] = -1");
    idx[6] = 0;
    CHECK(same_bits(dtable, before, V * C), "embedding backward wrote before failing");
    check_invalid("embedding C=0", fsdp_embedding_forward_cpu(out, idx, table, N, V, 0), "C");
    check_invalid("embedding table NULL", fsdp_embedding_forward_cpu(out, idx, NULL, N, V, C),
                  "table");

    /* many repeated tokens: same bits for 1 and 2 threads */
    int bn = 3000, bv = 11, bc = 200;
    int32_t *bidx = malloc(sizeof(int32_t) * bn);
    for (int n = 0; n < bn; n++) bidx[n] = (int32_t)(fsdp_rng_next(&rng) % bv);
    float *bdout = uniform((long)bn * bc, -1, 1), *g1 = zeros(bv * bc), *g2 = zeros(bv * bc);
    int threads = fsdp_get_num_threads();
    fsdp_set_num_threads(1);
    fsdp_embedding_backward_cpu(g1, bdout, bidx, bn, bv, bc);
    fsdp_set_num_threads(2);
    fsdp_embedding_backward_cpu(g2, bdout, bidx, bn, bv, bc);
    fsdp_set_num_threads(threads);
    CHECK(same_bits(g1, g2, bv * bc), "embedding dtable differs between 1 and 2 threads");

    free(table); free(out); free(r); free(dtable); free(want); free(twice); free(before);
    free(bidx); free(bdout); free(g1); free(g2);
}

/* ---- layernorm and rmsnorm --------------------------------------------- */

typedef struct {
    float *out, *mean, *rstd;
    const float *inp, *weight, *bias;
    int N, C;
    float eps;
    int rms;
} norm_ctx;

static void norm_forward(void *p) {
    norm_ctx *c = p;
    if (c->rms)
        fsdp_rmsnorm_forward_cpu(c->out, c->rstd, c->inp, c->weight, c->N, c->C, c->eps);
    else
        fsdp_layernorm_forward_cpu(c->out, c->mean, c->rstd, c->inp, c->weight, c->bias, c->N,
                                   c->C, c->eps);
}

/* double reference; rms drops the mean and the bias */
static void norm_reference(float *out, float *mean, float *rstd, const float *inp,
                           const float *weight, const float *bias, int N, int C, double eps,
                           int rms) {
    for (int n = 0; n < N; n++) {
        const float *x = inp + (long)n * C;
        double m = 0, v = 0;
        if (!rms) {
            for (int c = 0; c < C; c++) m += x[c];
            m /= C;
        }
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        double s = 1.0 / sqrt(v / C + eps);
        for (int c = 0; c < C; c++)
            out[(long)n * C + c] = (float)((x[c] - m) * s * weight[c] + (bias ? bias[c] : 0.0));
        if (mean) mean[n] = (float)m;
        rstd[n] = (float)s;
    }
}

/* inputs with a per-row offset and spread, so the mean and scale matter */
static float *norm_input(int N, int C) {
    float *x = uniform((long)N * C, -1, 1);
    for (int n = 0; n < N; n++) {
        float shift = (float)(fsdp_rng_uniform(&rng) * 4 - 2);
        float spread = (float)(0.5 + fsdp_rng_uniform(&rng) * 2);
        for (int c = 0; c < C; c++) x[(long)n * C + c] = x[(long)n * C + c] * spread + shift;
    }
    return x;
}

static void test_norm_case(int rms, int has_bias) {
    enum { N = 7, C = 13 };
    const char *name = rms ? "rmsnorm" : has_bias ? "layernorm" : "layernorm (no bias)";
    char what[96];
    float eps = 1e-5f;
    float *inp = norm_input(N, C), *weight = uniform(C, 0.5f, 1.5f);
    float *bias = has_bias ? uniform(C, -1, 1) : NULL;
    float *out = zeros(N * C), *mean = zeros(N), *rstd = zeros(N);
    float *ref = zeros(N * C), *ref_mean = zeros(N), *ref_rstd = zeros(N);

    /* forward and saved statistics vs double */
    norm_ctx ctx = {out, mean, rstd, inp, weight, bias, N, C, eps, rms};
    norm_forward(&ctx);
    norm_reference(ref, rms ? NULL : ref_mean, ref_rstd, inp, weight, bias, N, C, eps, rms);
    CHECK_CLOSE(name, out, ref, N * C, 1e-5, 1e-5);
    CHECK_CLOSE(name, rstd, ref_rstd, N, 1e-5, 0);
    if (!rms) CHECK_CLOSE(name, mean, ref_mean, N, 1e-5, 1e-6);

    /* analytic grads first (from the saved statistics), then finite differences
     * on scratch statistics so the saved ones stay as they were */
    float *r = uniform(N * C, -1, 1);
    float *dinp = zeros(N * C), *dweight = zeros(C), *dbias = zeros(C);
    int rc = rms ? fsdp_rmsnorm_backward_cpu(dinp, dweight, r, inp, weight, rstd, N, C)
                 : fsdp_layernorm_backward_cpu(dinp, dweight, has_bias ? dbias : NULL, r, inp,
                                               weight, mean, rstd, N, C);
    CHECK(rc == FSDP_OK, "%s backward", name);
    float *scratch_mean = zeros(N), *scratch_rstd = zeros(N);
    norm_ctx fctx = {out, scratch_mean, scratch_rstd, inp, weight, bias, N, C, eps, rms};
    fd_loss f = {norm_forward, &fctx, out, N * C, r};
    snprintf(what, sizeof what, "%s dinp", name);
    fd_check(what, &f, inp, N * C, dinp, 1e-2f, 2e-3, 2e-4);
    snprintf(what, sizeof what, "%s dweight", name);
    fd_check(what, &f, weight, C, dweight, 1e-2f, 2e-3, 2e-4);
    if (has_bias) {
        snprintf(what, sizeof what, "%s dbias", name);
        fd_check(what, &f, bias, C, dbias, 1e-2f, 2e-3, 2e-4);
    }

    /* a second call accumulates */
    float *dinp2 = scaled(dinp, N * C, 2), *dweight2 = scaled(dweight, C, 2);
    float *dbias2 = scaled(dbias, C, 2);
    if (rms)
        fsdp_rmsnorm_backward_cpu(dinp, dweight, r, inp, weight, rstd, N, C);
    else
        fsdp_layernorm_backward_cpu(dinp, dweight, has_bias ? dbias : NULL, r, inp, weight, mean,
                                    rstd, N, C);
    snprintf(what, sizeof what, "%s accumulates", name);
    CHECK_CLOSE(what, dinp, dinp2, N * C, 1e-6, 1e-7);
    CHECK_CLOSE(what, dweight, dweight2, C, 1e-6, 1e-7);
    CHECK_CLOSE(what, dbias, dbias2, C, 1e-6, 1e-7);

    free(inp); free(weight); free(bias); free(out); free(mean); free(rstd); free(ref);
    free(ref_mean); free(ref_rstd); free(r); free(dinp); free(dweight); free(dbias);
    free(scratch_mean); free(scratch_rstd); free(dinp2); free(dweight2); free(dbias2);
}

static void test_norms(void) {
    test_norm_case(0, 1);
    test_norm_case(0, 0);
    test_norm_case(1, 0);

    /* a big case through the parallel paths: forward vs double, and the same
     * parameter-grad bits for 1 and 2 threads */
    int N = 300, C = 257;
    long nc = (long)N * C;
    float *inp = norm_input(N, C), *w = uniform(C, 0.5f, 1.5f), *b = uniform(C, -1, 1);
    float *out = zeros(nc), *mean = zeros(N), *rstd = zeros(N), *ref = zeros(nc);
    float *ref_mean = zeros(N), *ref_rstd = zeros(N), *dout = uniform(nc, -1, 1);
    float *dw1 = zeros(C), *dw2 = zeros(C), *db1 = zeros(C), *db2 = zeros(C);
    float *dx1 = zeros(nc), *dx2 = zeros(nc);
    fsdp_layernorm_forward_cpu(out, mean, rstd, inp, w, b, N, C, 1e-5f);
    norm_reference(ref, ref_mean, ref_rstd, inp, w, b, N, C, 1e-5, 0);
    CHECK_CLOSE("layernorm 300x257", out, ref, nc, 1e-5, 1e-5);
    int threads = fsdp_get_num_threads();
    fsdp_set_num_threads(1);
    fsdp_layernorm_backward_cpu(dx1, dw1, db1, dout, inp, w, mean, rstd, N, C);
    fsdp_set_num_threads(2);
    fsdp_layernorm_backward_cpu(dx2, dw2, db2, dout, inp, w, mean, rstd, N, C);
    CHECK(same_bits(dw1, dw2, C) && same_bits(db1, db2, C) && same_bits(dx1, dx2, nc),
          "layernorm grads differ between 1 and 2 threads");
    fsdp_rmsnorm_forward_cpu(out, rstd, inp, w, N, C, 1e-6f);
    norm_reference(ref, NULL, ref_rstd, inp, w, NULL, N, C, 1e-6, 1);
    CHECK_CLOSE("rmsnorm 300x257", out, ref, nc, 1e-5, 1e-5);
    memset(dw1, 0, sizeof(float) * C);
    memset(dw2, 0, sizeof(float) * C);
    fsdp_set_num_threads(1);
    fsdp_rmsnorm_backward_cpu(NULL, dw1, dout, inp, w, rstd, N, C);
    fsdp_set_num_threads(2);
    fsdp_rmsnorm_backward_cpu(NULL, dw2, dout, inp, w, rstd, N, C);
    fsdp_set_num_threads(threads);
    CHECK(same_bits(dw1, dw2, C), "rmsnorm dweight differs between 1 and 2 threads");

    /* bad arguments */
    check_invalid("layernorm N=0",
                  fsdp_layernorm_forward_cpu(out, mean, rstd, inp, w, b, 0, C, 1e-5f),
                  "fsdp_layernorm_forward_cpu: N");
    check_invalid("layernorm weight NULL",
                  fsdp_layernorm_forward_cpu(out, mean, rstd, inp, NULL, b, N, C, 1e-5f), "weight");
    check_invalid("layernorm backward C=0",
                  fsdp_layernorm_backward_cpu(dx1, dw1, db1, dout, inp, w, mean, rstd, N, 0),
                  "fsdp_layernorm_backward_cpu: C");
    check_invalid("rmsnorm rstd NULL",
                  fsdp_rmsnorm_forward_cpu(out, NULL, inp, w, N, C, 1e-5f),
                  "fsdp_rmsnorm_forward_cpu");
    check_invalid("rmsnorm backward N<0",
                  fsdp_rmsnorm_backward_cpu(dx1, dw1, dout, inp, w, rstd, -3, C),
                  "fsdp_rmsnorm_backward_cpu: N");
    free(inp); free(w); free(b); free(out); free(mean); free(rstd); free(ref); free(ref_mean);
    free(ref_rstd); free(dout); free(dw1); free(dw2); free(db1); free(db2); free(dx1); free(dx2);
}

/* ---- activations ------------------------------------------------------- */

enum { ACT_GELU, ACT_RELU, ACT_SILU };
static const char *act_names[] = {"gelu", "relu", "silu"};

typedef struct {
    float *out;
    const float *inp;
    long n;
    int act;
} act_ctx;

static void act_forward(void *p) {
    act_ctx *c = p;
    if (c->act == ACT_GELU) fsdp_gelu_forward_cpu(c->out, c->inp, c->n);
    if (c->act == ACT_RELU) fsdp_relu_forward_cpu(c->out, c->inp, c->n);
    if (c->act == ACT_SILU) fsdp_silu_forward_cpu(c->out, c->inp, c->n);
}

static int act_backward(int act, float *dinp, const float *dout, const float *inp, long n) {
    if (act == ACT_GELU) return fsdp_gelu_backward_cpu(dinp, dout, inp, n);
    if (act == ACT_RELU) return fsdp_relu_backward_cpu(dinp, dout, inp, n);
    return fsdp_silu_backward_cpu(dinp, dout, inp, n);
}

static double act_reference(int act, double x) {
    if (act == ACT_GELU)
        return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    if (act == ACT_RELU) return x > 0 ? x : 0;
    return x / (1 + exp(-x));
}

static void test_activation(int act) {
    enum { n = 37 };
    const char *name = act_names[act];
    char what[64];
    /* inputs over [-4, 4], kept away from relu's kink at 0 */
    float *inp = uniform(n, -4, 4), *out = zeros(n), *ref = zeros(n);
    for (int i = 0; i < n; i++)
        if (fabsf(inp[i]) < 0.05f) inp[i] = inp[i] < 0 ? -0.05f : 0.05f;
    act_ctx ctx = {out, inp, n, act};
    act_forward(&ctx);
    for (int i = 0; i < n; i++) ref[i] = (float)act_reference(act, inp[i]);
    CHECK_CLOSE(name, out, ref, n, 1e-6, 1e-7);

    float *r = uniform(n, -1, 1), *dinp = zeros(n);
    CHECK(act_backward(act, dinp, r, inp, n) == FSDP_OK, "%s backward", name);
    fd_loss f = {act_forward, &ctx, out, n, r};
    snprintf(what, sizeof what, "%s dinp", name);
    fd_check(what, &f, inp, n, dinp, 1e-2f, 2e-3, 1e-4);
    float *twice = scaled(dinp, n, 2);
    act_backward(act, dinp, r, inp, n);
    snprintf(what, sizeof what, "%s accumulates", name);
    CHECK_CLOSE(what, dinp, twice, n, 1e-6, 1e-7);

    /* bad arguments; n = 0 is an empty tensor, not an error */
    snprintf(what, sizeof what, "fsdp_%s_backward_cpu", name);
    check_invalid(name, act_backward(act, dinp, r, inp, -1), what);
    check_invalid(name, act_backward(act, NULL, r, inp, n), what);
    CHECK(act_backward(act, NULL, NULL, NULL, 0) == FSDP_OK, "%s n = 0", name);
    free(inp); free(out); free(ref); free(r); free(dinp); free(twice);
}

typedef struct {
    float *out;
    const float *gate, *up;
    long n;
} swiglu_ctx;

static void swiglu_forward(void *p) {
    swiglu_ctx *c = p;
    fsdp_swiglu_forward_cpu(c->out, c->gate, c->up, c->n);
}

static void test_activations(void) {
    test_activation(ACT_GELU);
    test_activation(ACT_RELU);
    test_activation(ACT_SILU);

    /* known values: torch gelu(approximate='tanh') and silu */
    float x[4] = {1.0f, -1.0f, 3.0f, -10.0f}, y[4];
    float gelu_want[4] = {0.8411920f, -0.1588080f, 2.9963626f, -0.0f};
    float silu_want[4] = {0.7310586f, -0.2689414f, 2.8577223f, -4.5397868e-04f};
    fsdp_gelu_forward_cpu(y, x, 4);
    CHECK_CLOSE("gelu known values", y, gelu_want, 4, 1e-6, 1e-7);
    fsdp_silu_forward_cpu(y, x, 4);
    CHECK_CLOSE("silu known values", y, silu_want, 4, 1e-6, 1e-7);

    /* swiglu = silu(gate) * up */
    enum { n = 29 };
    float *gate = uniform(n, -4, 4), *up = uniform(n, -2, 2), *out = zeros(n), *ref = zeros(n);
    swiglu_ctx ctx = {out, gate, up, n};
    swiglu_forward(&ctx);
    for (int i = 0; i < n; i++) ref[i] = (float)(act_reference(ACT_SILU, gate[i]) * up[i]);
    CHECK_CLOSE("swiglu", out, ref, n, 1e-6, 1e-7);
    float *r = uniform(n, -1, 1), *dgate = zeros(n), *dup = zeros(n);
    CHECK(fsdp_swiglu_backward_cpu(dgate, dup, r, gate, up, n) == FSDP_OK, "swiglu backward");
    fd_loss f = {swiglu_forward, &ctx, out, n, r};
    fd_check("swiglu dgate", &f, gate, n, dgate, 1e-2f, 2e-3, 1e-4);
    fd_check("swiglu dup", &f, up, n, dup, 1e-2f, 2e-3, 1e-4);
    float *dgate2 = scaled(dgate, n, 2), *dup2 = scaled(dup, n, 2);
    fsdp_swiglu_backward_cpu(dgate, NULL, r, gate, up, n);
    fsdp_swiglu_backward_cpu(NULL, dup, r, gate, up, n);
    CHECK_CLOSE("swiglu dgate accumulates", dgate, dgate2, n, 1e-6, 1e-7);
    CHECK_CLOSE("swiglu dup accumulates", dup, dup2, n, 1e-6, 1e-7);
    check_invalid("swiglu gate NULL", fsdp_swiglu_forward_cpu(out, NULL, up, n),
                  "fsdp_swiglu_forward_cpu");
    check_invalid("swiglu backward up NULL", fsdp_swiglu_backward_cpu(dgate, dup, r, gate, NULL, n),
                  "fsdp_swiglu_backward_cpu");
    free(gate); free(up); free(out); free(ref); free(r); free(dgate); free(dup); free(dgate2);
    free(dup2);
}

/* soft-capping: cap tanh(x / cap) against double, backward against the
 * double derivative, accumulation, bad arguments */
static void test_softcap(void) {
    enum { n = 37 };
    const float cap = 1.7f;
    float *x = uniform(n, -6, 6), *out = zeros(n), *ref = zeros(n), *r = uniform(n, -1, 1);
    float *dx = zeros(n), *dref = zeros(n);
    CHECK(fsdp_softcap_forward_cpu(out, x, cap, n) == FSDP_OK, "softcap forward");
    for (int i = 0; i < n; i++) {
        const double t = tanh((double)x[i] / cap);
        ref[i] = (float)(cap * t);
        dref[i] = (float)(r[i] * (1 - t * t));
    }
    CHECK_CLOSE("softcap", out, ref, n, 1e-6, 1e-7);
    CHECK(fsdp_softcap_backward_cpu(dx, r, x, cap, n) == FSDP_OK, "softcap backward");
    CHECK_CLOSE("softcap backward", dx, dref, n, 1e-5, 1e-7);
    float *dx2 = scaled(dx, n, 2);
    fsdp_softcap_backward_cpu(dx, r, x, cap, n);
    CHECK_CLOSE("softcap backward accumulates", dx, dx2, n, 1e-6, 1e-7);
    check_invalid("softcap cap 0", fsdp_softcap_forward_cpu(out, x, 0.0f, n), "cap must be a positive number");
    check_invalid("softcap cap inf", fsdp_softcap_backward_cpu(dx, r, x, INFINITY, n), "fsdp_softcap_backward_cpu");
    check_invalid("softcap x NULL", fsdp_softcap_forward_cpu(out, NULL, cap, n), "fsdp_softcap_forward_cpu");
    free(x); free(out); free(ref); free(r); free(dx); free(dref); free(dx2);
}

/* ---- elementwise ------------------------------------------------------- */

static void test_elementwise(void) {
    long n = 100003; /* past the parallel threshold, odd */
    float *a = uniform(n, -2, 2), *b = uniform(n, -2, 2), *out = zeros(n), *want = zeros(n);
    fsdp_add_cpu(out, a, b, n);
    for (long i = 0; i < n; i++) want[i] = a[i] + b[i];
    CHECK(same_bits(out, want, n), "add");
    fsdp_mul_cpu(out, a, b, n);
    for (long i = 0; i < n; i++) want[i] = a[i] * b[i];
    CHECK(same_bits(out, want, n), "mul");
    fsdp_scale_cpu(out, -0.75f, a, n);
    for (long i = 0; i < n; i++) want[i] = -0.75f * a[i];
    CHECK(same_bits(out, want, n), "scale");
    memcpy(out, b, sizeof(float) * n);
    fsdp_axpy_cpu(out, 0.5f, a, n);
    for (long i = 0; i < n; i++) want[i] = b[i] + 0.5f * a[i];
    CHECK(same_bits(out, want, n), "axpy");

    /* in place: a = a + b */
    memcpy(out, a, sizeof(float) * n);
    fsdp_add_cpu(out, out, b, n);
    for (long i = 0; i < n; i++) want[i] = a[i] + b[i];
    CHECK(same_bits(out, want, n), "add in place");

    /* empty is fine, negative or NULL is not */
    CHECK(fsdp_add_cpu(NULL, NULL, NULL, 0) == FSDP_OK, "add n = 0");
    check_invalid("add n<0", fsdp_add_cpu(out, a, b, -1), "fsdp_add_cpu: n");
    check_invalid("axpy NULL", fsdp_axpy_cpu(NULL, 1, a, n), "fsdp_axpy_cpu");
    check_invalid("scale NULL", fsdp_scale_cpu(out, 1, NULL, n), "fsdp_scale_cpu");
    check_invalid("mul NULL", fsdp_mul_cpu(out, a, NULL, n), "fsdp_mul_cpu");
    free(a); free(b); free(out); free(want);
}

int main(void) {
    verbose = getenv("FSDP_TEST_VERBOSE") != NULL;
    fsdp_rng_seed(&rng, 1234);
    test_matmul();
    test_embedding();
    test_norms();
    test_activations();
    test_softcap();
    test_elementwise();
    return check_exit("test_kernels_basic");
}
