/* test_kernels_attention.c - the CPU attention and RoPE kernels.
 *
 * Forward passes are compared with naive double-precision references (the
 * attention one builds the full masked score matrix). Backward passes are
 * compared with central finite differences of the f32 kernels themselves,
 * through the scalar L = sum(out .* R) for a fixed random R, so dout = R.
 * Also: accumulation, determinism (across runs and thread counts), layouts
 * (one fused qkv buffer, separate padded buffers), and argument errors. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "fsdp.h"

static fsdp_rng rng;

static float *randn(int64_t n, float std) {
    float *x = malloc((size_t)n * sizeof(float));
    fsdp_rng_fill_normal(&rng, x, n, 0.0f, std);
    return x;
}
static float *zeros(int64_t n) { return calloc((size_t)n, sizeof(float)); }
static float *copy_of(const float *x, int64_t n) {
    float *y = malloc((size_t)n * sizeof(float));
    memcpy(y, x, (size_t)n * sizeof(float));
    return y;
}

/* sum(a .* b) in double */
static double dot_d(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* analytic gradient vs finite differences: max error within rel * max|fd| */
static void check_grad(const char *what, const float *got, const double *fd, int64_t n,
                       double rel) {
    double maxfd = 0, maxerr = 0;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; i++) {
        if (fabs(fd[i]) > maxfd) maxfd = fabs(fd[i]);
        double e = fabs((double)got[i] - fd[i]);
        if (e > maxerr) { maxerr = e; worst = i; }
    }
    CHECK(maxfd > 1e-3, "%s: finite-difference gradient is all ~0 (max %g)", what, maxfd);
    CHECK(maxerr <= rel * maxfd, "%s: element %lld got %.6g want %.6g (max |grad| %.4g)", what,
          (long long)worst, got[worst], fd[worst], maxfd);
}

/* ---- attention ----------------------------------------------------------- */

/* one problem: q, k, v live in buffers with token strides ldq, ldk, ldv */
typedef struct {
    int B, T, NH, NKV, HD, ldq, ldk, ldv, window;
    float scale;
    const float *q, *k, *v;
    float softcap; /* 0: none */
} attn_case;

static int visible(int t, int j, int window) {
    return j <= t && (window <= 0 || j > t - window);
}

/* naive reference: full [T, T] score matrix per (b, h), masked with -inf */
static void attention_reference(const attn_case *c, double *out, double *lse) {
    int T = c->T, HD = c->HD, group = c->NH / c->NKV;
    double *S = malloc((size_t)T * T * sizeof(double));
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->NH; h++) {
            int g = h / group;
            for (int t = 0; t < T; t++)
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int d = 0; d < HD; d++)
                        s += (double)c->q[((int64_t)b * T + t) * c->ldq + h * HD + d] *
                             c->k[((int64_t)b * T + j) * c->ldk + g * HD + d];
                    s *= c->scale;
                    if (c->softcap > 0) s = c->softcap * tanh(s / c->softcap);
                    S[t * T + j] = visible(t, j, c->window) ? s : -INFINITY;
                }
            for (int t = 0; t < T; t++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) mx = fmax(mx, S[t * T + j]);
                for (int j = 0; j < T; j++) sum += exp(S[t * T + j] - mx);
                lse[((int64_t)b * c->NH + h) * T + t] = mx + log(sum);
                for (int d = 0; d < HD; d++) {
                    double o = 0;
                    for (int j = 0; j < T; j++)
                        o += exp(S[t * T + j] - mx) / sum *
                             c->v[((int64_t)b * T + j) * c->ldv + g * HD + d];
                    out[(((int64_t)b * T + t) * c->NH + h) * HD + d] = o;
                }
            }
        }
    free(S);
}

static int attn_forward(const attn_case *c, float *out, float *lse) {
    return fsdp_attention_forward_cpu(out, lse, c->q, c->k, c->v, c->B, c->T, c->NH, c->NKV, c->HD,
                                      c->ldq, c->ldk, c->ldv, c->window, c->scale, c->softcap);
}

static int attn_backward(const attn_case *c, float *dq, float *dk, float *dv, const float *dout,
                         const float *out, const float *lse) {
    return fsdp_attention_backward_cpu(dq, dk, dv, dout, c->q, c->k, c->v, out, lse, c->B, c->T,
                                       c->NH, c->NKV, c->HD, c->ldq, c->ldk, c->ldv, c->window,
                                       c->scale, c->softcap);
}

/* L = sum(out .* R) from the f32 forward */
static double attn_loss(const attn_case *c, const float *R) {
    int64_t n_out = (int64_t)c->B * c->T * c->NH * c->HD;
    float *out = malloc(n_out * sizeof(float));
    float *lse = malloc((int64_t)c->B * c->NH * c->T * sizeof(float));
    attn_forward(c, out, lse);
    double L = dot_d(out, R, n_out);
    free(out);
    free(lse);
    return L;
}

/* finite differences of L w.r.t. every element of the head columns of x
 * (width cols of each token row of stride ld), in the packed order
 * [B*T, cols] */
static double *attn_fd(attn_case *c, float *x, int cols, int ld, const float *R) {
    const float eps = 1e-2f;
    int64_t rows = (int64_t)c->B * c->T;
    double *g = malloc(rows * cols * sizeof(double));
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < cols; i++) {
            float *e = &x[r * ld + i], saved = *e;
            *e = saved + eps;
            double lp = attn_loss(c, R);
            *e = saved - eps;
            double lm = attn_loss(c, R);
            *e = saved;
            g[r * cols + i] = (lp - lm) / (2.0 * (double)eps);
        }
    return g;
}

/* copies the head columns of a strided gradient into packed [B*T, cols] */
static float *packed(const float *x, int64_t rows, int cols, int ld) {
    float *y = malloc(rows * cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) memcpy(y + r * cols, x + r * ld, cols * sizeof(float));
    return y;
}

/* the whole battery for one shape; fused = q, k, v are column slices of one
 * [B, T, (NH + 2 NKV) HD] buffer, else three separate buffers whose rows
 * carry 3 padding floats that no kernel may touch */
static void test_attention_case(int NKV, int window, int fused, float softcap) {
    const int B = 2, T = 7, NH = 4, HD = 8;
    char name[96];
    snprintf(name, sizeof name, "attention NKV=%d window=%d %s softcap=%g", NKV, window,
             fused ? "fused qkv" : "separate", (double)softcap);
    attn_case c = {B, T, NH, NKV, HD, 0, 0, 0, window, 1.0f / sqrtf((float)HD), NULL, NULL, NULL, softcap};
    int64_t rows = (int64_t)B * T;
    float *buf[3];
    int64_t buf_n[3];
    float *q, *k, *v;
    if (fused) {
        int ld = (NH + 2 * NKV) * HD;
        buf_n[0] = rows * ld;
        buf[0] = randn(buf_n[0], 1.0f);
        buf[1] = buf[2] = NULL;
        buf_n[1] = buf_n[2] = 0;
        q = buf[0];
        k = q + NH * HD;
        v = k + NKV * HD;
        c.ldq = c.ldk = c.ldv = ld;
    } else {
        c.ldq = NH * HD + 3;
        c.ldk = NKV * HD + 3;
        c.ldv = NKV * HD + 3;
        buf_n[0] = rows * c.ldq;
        buf_n[1] = rows * c.ldk;
        buf_n[2] = rows * c.ldv;
        for (int i = 0; i < 3; i++) buf[i] = randn(buf_n[i], 1.0f);
        q = buf[0];
        k = buf[1];
        v = buf[2];
    }
    c.q = q;
    c.k = k;
    c.v = v;
    int64_t n_out = rows * NH * HD, n_lse = (int64_t)B * NH * T;

    /* forward vs the double reference */
    float *out = malloc(n_out * sizeof(float)), *lse = malloc(n_lse * sizeof(float));
    double *ref_out = malloc(n_out * sizeof(double)), *ref_lse = malloc(n_lse * sizeof(double));
    CHECK(attn_forward(&c, out, lse) == FSDP_OK, "%s: forward failed: %s", name, fsdp_last_error());
    attention_reference(&c, ref_out, ref_lse);
    float *ref_out_f = malloc(n_out * sizeof(float)), *ref_lse_f = malloc(n_lse * sizeof(float));
    for (int64_t i = 0; i < n_out; i++) ref_out_f[i] = (float)ref_out[i];
    for (int64_t i = 0; i < n_lse; i++) ref_lse_f[i] = (float)ref_lse[i];
    if (!CHECK_CLOSE(name, out, ref_out_f, n_out, 1e-5, 1e-5)) fprintf(stderr, "  (out)\n");
    if (!CHECK_CLOSE(name, lse, ref_lse_f, n_lse, 1e-5, 1e-5)) fprintf(stderr, "  (lse)\n");

    /* backward with dout = R, grads in buffers shaped like q, k, v */
    float *R = randn(n_out, 1.0f);
    float *gbuf[3];
    for (int i = 0; i < 3; i++) gbuf[i] = buf[i] ? zeros(buf_n[i]) : NULL;
    float *dq = gbuf[0] + (q - buf[0]);
    float *dk = fused ? gbuf[0] + (k - buf[0]) : gbuf[1];
    float *dv = fused ? gbuf[0] + (v - buf[0]) : gbuf[2];
    CHECK(attn_backward(&c, dq, dk, dv, R, out, lse) == FSDP_OK, "%s: backward failed: %s", name,
          fsdp_last_error());

    /* vs finite differences of the f32 forward: thousands of tiny forwards,
     * run on one thread since waking threads would dominate them */
    int max_threads = omp_get_max_threads();
    omp_set_num_threads(1);
    double *fdq = attn_fd(&c, q, NH * HD, c.ldq, R);
    double *fdk = attn_fd(&c, (float *)k, NKV * HD, c.ldk, R);
    double *fdv = attn_fd(&c, (float *)v, NKV * HD, c.ldv, R);
    omp_set_num_threads(max_threads);
    float *pq = packed(dq, rows, NH * HD, c.ldq);
    float *pk = packed(dk, rows, NKV * HD, c.ldk);
    float *pv = packed(dv, rows, NKV * HD, c.ldv);
    char what[128];
    snprintf(what, sizeof what, "%s dq", name);
    check_grad(what, pq, fdq, rows * NH * HD, 1e-2);
    snprintf(what, sizeof what, "%s dk", name);
    check_grad(what, pk, fdk, rows * NKV * HD, 1e-2);
    snprintf(what, sizeof what, "%s dv", name);
    check_grad(what, pv, fdv, rows * NKV * HD, 1e-2);

    /* the padding columns of separate buffers stay untouched */
    if (!fused)
        for (int i = 0; i < 3; i++) {
            int ld = i == 0 ? c.ldq : i == 1 ? c.ldk : c.ldv;
            int w = i == 0 ? NH * HD : NKV * HD;
            int dirty = 0;
            for (int64_t r = 0; r < rows; r++)
                for (int j = w; j < ld; j++) dirty |= gbuf[i][r * ld + j] != 0.0f;
            CHECK(!dirty, "%s: backward wrote into the padding of buffer %d", name, i);
        }

    /* accumulation: a second backward adds the same gradient again */
    float *once[3], *twice[3];
    for (int i = 0; i < 3; i++) once[i] = gbuf[i] ? copy_of(gbuf[i], buf_n[i]) : NULL;
    attn_backward(&c, dq, dk, dv, R, out, lse);
    for (int i = 0; i < 3; i++) {
        if (!gbuf[i]) continue;
        twice[i] = malloc(buf_n[i] * sizeof(float));
        for (int64_t j = 0; j < buf_n[i]; j++) twice[i][j] = 2.0f * once[i][j];
        snprintf(what, sizeof what, "%s accumulate buffer %d", name, i);
        CHECK_CLOSE(what, gbuf[i], twice[i], buf_n[i], 1e-5, 1e-6);
        free(twice[i]);
    }

    /* NULL grads are skipped: dk alone gives the same dk */
    float *dk_only = zeros(fused ? buf_n[0] : buf_n[1]);
    float *dk_only_k = dk_only + (fused ? (k - buf[0]) : 0);
    CHECK(attn_backward(&c, NULL, dk_only_k, NULL, R, out, lse) == FSDP_OK,
          "%s: backward with only dk failed", name);
    float *pk_only = packed(dk_only_k, rows, NKV * HD, c.ldk);
    snprintf(what, sizeof what, "%s dk alone", name);
    CHECK(memcmp(pk_only, pk, rows * NKV * HD * sizeof(float)) == 0, "%s differs", what);

    /* determinism: bitwise equal across runs and across thread counts */
    float *out2 = malloc(n_out * sizeof(float)), *lse2 = malloc(n_lse * sizeof(float));
    float *g2 = zeros(buf_n[0]);
    for (int threads = 1; threads <= 2; threads++) {
        omp_set_num_threads(threads);
        attn_forward(&c, out2, lse2);
        CHECK(memcmp(out, out2, n_out * sizeof(float)) == 0, "%s: forward not deterministic (%d threads)",
              name, threads);
        CHECK(memcmp(lse, lse2, n_lse * sizeof(float)) == 0, "%s: lse not deterministic (%d threads)",
              name, threads);
        memset(g2, 0, buf_n[0] * sizeof(float));
        attn_backward(&c, g2 + (q - buf[0]), NULL, NULL, R, out, lse);
        float *a = packed(g2, rows, NH * HD, c.ldq);
        CHECK(memcmp(a, pq, rows * NH * HD * sizeof(float)) == 0,
              "%s: dq not deterministic (%d threads)", name, threads);
        free(a);
    }
    omp_set_num_threads(max_threads);

    free(out2); free(lse2); free(g2); free(dk_only); free(pk_only);
    for (int i = 0; i < 3; i++) { free(buf[i]); free(gbuf[i]); free(once[i]); }
    free(out); free(lse); free(ref_out); free(ref_lse); free(ref_out_f); free(ref_lse_f); free(R);
    free(fdq); free(fdk); free(fdv); free(pq); free(pk); free(pv);
}

/* window = 1: every token sees only itself, so out = v (of its kv head) */
static void test_attention_window_one(void) {
    const int B = 1, T = 5, NH = 2, NKV = 1, HD = 4;
    float *q = randn(B * T * NH * HD, 1), *k = randn(B * T * NKV * HD, 1);
    float *v = randn(B * T * NKV * HD, 1);
    float out[B * T * NH * HD], lse[B * NH * T];
    CHECK(fsdp_attention_forward_cpu(out, lse, q, k, v, B, T, NH, NKV, HD, NH * HD, NKV * HD,
                                     NKV * HD, 1, 0.5f, 0.0f) == FSDP_OK, "window 1 failed");
    int bad = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < HD; d++) bad |= out[(t * NH + h) * HD + d] != v[t * HD + d];
    CHECK(!bad, "window 1: out is not v");
    /* a window as long as the sequence is no window */
    float out_w[B * T * NH * HD], out_0[B * T * NH * HD];
    fsdp_attention_forward_cpu(out_w, lse, q, k, v, B, T, NH, NKV, HD, NH * HD, NKV * HD, NKV * HD,
                               T, 0.5f, 0.0f);
    fsdp_attention_forward_cpu(out_0, lse, q, k, v, B, T, NH, NKV, HD, NH * HD, NKV * HD, NKV * HD,
                               0, 0.5f, 0.0f);
    CHECK(memcmp(out_w, out_0, sizeof out_w) == 0, "window T differs from no window");
    free(q); free(k); free(v);
}

static void expect_error(int rc, const char *needle, const char *what) {
    CHECK(rc == FSDP_ERR_INVALID, "%s: expected FSDP_ERR_INVALID, got %d", what, rc);
    CHECK(strstr(fsdp_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", what,
          fsdp_last_error(), needle);
}

static void test_attention_errors(void) {
    float x[64] = {0}, y[64], z[64];
    expect_error(fsdp_attention_forward_cpu(y, z, x, x, x, 1, 2, 3, 2, 4, 12, 8, 8, 0, 1, 0.0f), "NKV",
                 "NH % NKV");
    expect_error(fsdp_attention_forward_cpu(y, z, x, x, x, 1, 2, 2, 2, 4, 7, 8, 8, 0, 1, 0.0f), "ldq",
                 "small ldq");
    expect_error(fsdp_attention_forward_cpu(y, z, x, x, x, 1, 2, 2, 2, 4, 8, 8, 7, 0, 1, 0.0f), "ldv",
                 "small ldv");
    expect_error(fsdp_attention_forward_cpu(y, z, NULL, x, x, 1, 2, 2, 2, 4, 8, 8, 8, 0, 1, 0.0f), "q is NULL",
                 "NULL q");
    expect_error(fsdp_attention_forward_cpu(y, z, x, x, x, 1, 0, 2, 2, 4, 8, 8, 8, 0, 1, 0.0f), "T (0)",
                 "T = 0");
    expect_error(fsdp_attention_backward_cpu(y, NULL, NULL, x, x, x, x, x, NULL, 1, 2, 2, 2, 4, 8,
                                             8, 8, 0, 1, 0.0f), "lse is NULL", "NULL lse");
    expect_error(fsdp_attention_backward_cpu(y, NULL, NULL, x, x, x, x, x, x, 1, 2, 2, 2, 0, 8,
                                             8, 8, 0, 1, 0.0f), "fsdp_attention_backward_cpu", "HD = 0");
    expect_error(fsdp_attention_forward_cpu(y, z, x, x, x, 1, 2, 2, 2, 4, 8, 8, 8, 0, 1, -2.0f), "softcap",
                 "negative softcap");
    expect_error(fsdp_attention_backward_cpu(y, NULL, NULL, x, x, x, x, x, x, 1, 2, 2, 2, 4, 8, 8, 8, 0, 1,
                                             NAN), "softcap", "NaN softcap");
    float o[8], kc[16], vc[16];
    expect_error(fsdp_attention_decode_cpu(o, kc, vc, x, x, x, 1, 1, 0, 2, 2, 2, 4, 8, 8, 8, 0, 1, INFINITY),
                 "softcap", "infinite softcap");
}

/* ---- rope ----------------------------------------------------------------- */

static void test_rope(void) {
    const int B = 2, T = 5, NH = 3, HD = 8, half = HD / 2, pos0 = 11;
    const int ld = NH * HD + 2; /* two padding floats per token */
    const int64_t n = (int64_t)B * T * ld;
    float inv_freq[4], cosv[5 * 4], sinv[5 * 4];
    for (int i = 0; i < half; i++) inv_freq[i] = (float)pow(10000.0, -2.0 * i / HD);

    /* the table: angle (pos0 + t) * inv_freq[i] */
    CHECK(fsdp_rope_table_cpu(cosv, sinv, inv_freq, pos0, T, HD) == FSDP_OK, "rope table failed");
    float ref_c[5 * 4], ref_s[5 * 4];
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double a = (double)(pos0 + t) * inv_freq[i];
            ref_c[t * half + i] = (float)cos(a);
            ref_s[t * half + i] = (float)sin(a);
        }
    CHECK_CLOSE("rope table cos", cosv, ref_c, T * half, 0, 1e-7);
    CHECK_CLOSE("rope table sin", sinv, ref_s, T * half, 0, 1e-7);

    /* forward vs a double reference of the rotate-half formula */
    float *x = randn(n, 1), *out = zeros(n);
    CHECK(fsdp_rope_forward_cpu(out, x, cosv, sinv, B, T, NH, HD, ld) == FSDP_OK, "rope forward failed");
    float *ref = zeros(n);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                int64_t o = ((int64_t)b * T + t) * ld + h * HD;
                for (int i = 0; i < half; i++) {
                    double a = (double)(pos0 + t) * inv_freq[i];
                    double x1 = x[o + i], x2 = x[o + i + half];
                    ref[o + i] = (float)(x1 * cos(a) - x2 * sin(a));
                    ref[o + i + half] = (float)(x2 * cos(a) + x1 * sin(a));
                }
            }
    CHECK_CLOSE("rope forward", out, ref, n, 1e-5, 1e-6); /* padding: 0 in both */

    /* in place gives the same */
    float *y = copy_of(x, n);
    fsdp_rope_forward_cpu(y, y, cosv, sinv, B, T, NH, HD, ld);
    int pad_ok = 1;
    for (int64_t r = 0; r < B * T; r++)
        for (int j = NH * HD; j < ld; j++) pad_ok &= y[r * ld + j] == x[r * ld + j];
    CHECK(pad_ok, "rope in place changed the padding");
    for (int64_t r = 0; r < B * T; r++)
        for (int j = NH * HD; j < ld; j++) y[r * ld + j] = 0;
    CHECK(memcmp(y, out, n * sizeof(float)) == 0, "rope in place differs from out of place");

    /* backward vs finite differences of L = sum(rope(x) .* R) */
    float *R = randn(n, 1), *dx = zeros(n), *tmp = zeros(n);
    CHECK(fsdp_rope_backward_cpu(dx, R, cosv, sinv, B, T, NH, HD, ld) == FSDP_OK,
          "rope backward failed");
    double *fd = calloc(n, sizeof(double));
    const float eps = 1e-2f;
    int max_threads = omp_get_max_threads();
    omp_set_num_threads(1); /* many tiny calls, see test_attention_case */
    for (int64_t r = 0; r < B * T; r++)
        for (int j = 0; j < NH * HD; j++) {
            float *e = &x[r * ld + j], saved = *e;
            *e = saved + eps;
            fsdp_rope_forward_cpu(tmp, x, cosv, sinv, B, T, NH, HD, ld);
            double lp = dot_d(tmp, R, n);
            *e = saved - eps;
            fsdp_rope_forward_cpu(tmp, x, cosv, sinv, B, T, NH, HD, ld);
            double lm = dot_d(tmp, R, n);
            *e = saved;
            fd[r * ld + j] = (lp - lm) / (2.0 * (double)eps);
        }
    omp_set_num_threads(max_threads);
    check_grad("rope backward", dx, fd, n, 1e-3);

    /* accumulation */
    float *twice = malloc(n * sizeof(float));
    for (int64_t i = 0; i < n; i++) twice[i] = 2 * dx[i];
    fsdp_rope_backward_cpu(dx, R, cosv, sinv, B, T, NH, HD, ld);
    CHECK(memcmp(dx, twice, n * sizeof(float)) == 0, "rope backward does not accumulate");

    /* errors */
    expect_error(fsdp_rope_forward_cpu(out, x, cosv, sinv, B, T, NH, 7, ld), "HD (7)", "odd HD");
    expect_error(fsdp_rope_forward_cpu(out, x, cosv, sinv, B, T, NH, HD, NH * HD - 1), "ld",
                 "small ld");
    expect_error(fsdp_rope_backward_cpu(dx, dx, cosv, sinv, B, T, NH, HD, ld), "dinp must not be dout",
                 "dinp == dout");
    expect_error(fsdp_rope_table_cpu(cosv, NULL, inv_freq, 0, T, HD), "fsdp_rope_table_cpu",
                 "NULL sin");

    free(x); free(out); free(ref); free(y); free(R); free(dx); free(tmp); free(fd); free(twice);
}

/* decoding over a KV cache: a prompt of 5 positions, then single tokens,
 * then a chunk of 3, gives for every new position what full causal
 * attention over the whole sequence gives (the same keys, another summation
 * order: within 2e-6), on 2 sequences, GQA, with and without a window, q/k/v
 * packed or not; the caches hold exactly the keys and values given; bad
 * positions are refused */
static void test_attention_decode(int NKV, int window, int fused, float softcap) {
    const int B = 2, T = 11, NH = 4, HD = 8, Tmax = 16;
    const int W = NKV * HD;
    const int ldq = fused ? NH * HD + 2 * W : NH * HD, ldk = fused ? ldq : W, ldv = ldk;
    float *qkv = randn((int64_t)B * T * ldq, 1.0f), *kx = NULL, *vx = NULL;
    const float *q = qkv, *k, *v;
    if (fused) {
        k = qkv + NH * HD;
        v = qkv + NH * HD + W;
    } else {
        kx = randn((int64_t)B * T * W, 1.0f);
        vx = randn((int64_t)B * T * W, 1.0f);
        k = kx;
        v = vx;
    }
    float *full = zeros((int64_t)B * T * NH * HD), *lse = zeros((int64_t)B * NH * T);
    CHECK(fsdp_attention_forward_cpu(full, lse, q, k, v, B, T, NH, NKV, HD, ldq, ldk, ldv, window,
                                     0.35f, softcap) == FSDP_OK, "decode reference: %s", fsdp_last_error());
    float *kc = zeros((int64_t)B * Tmax * W), *vc = zeros((int64_t)B * Tmax * W);
    const int steps[] = {5, 1, 1, 1, 3};
    int pos = 0;
    char what[96];
    for (unsigned i = 0; i < sizeof steps / sizeof *steps; i++) {
        const int Tq = steps[i];
        /* this step's rows of q, k, v: [B, Tq] slices, copied so the kernel
         * sees only them */
        float *qs = zeros((int64_t)B * Tq * ldq), *ks = zeros((int64_t)B * Tq * ldk);
        float *vs = zeros((int64_t)B * Tq * ldv), *out = zeros((int64_t)B * Tq * NH * HD);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Tq; t++) {
                const int64_t src = (int64_t)b * T + pos + t, dst = (int64_t)b * Tq + t;
                memcpy(qs + dst * ldq, q + src * ldq, NH * HD * sizeof(float));
                memcpy(ks + dst * ldk, k + src * ldk, W * sizeof(float));
                memcpy(vs + dst * ldv, v + src * ldv, W * sizeof(float));
            }
        CHECK(fsdp_attention_decode_cpu(out, kc, vc, qs, ks, vs, B, Tq, pos, Tmax, NH, NKV, HD, ldq,
                                        ldk, ldv, window, 0.35f, softcap) == FSDP_OK,
              "decode step %u: %s", i, fsdp_last_error());
        for (int b = 0; b < B; b++) {
            snprintf(what, sizeof what, "decode NKV %d window %d fused %d softcap %g step %u seq %d", NKV,
                     window, fused, (double)softcap, i, b);
            CHECK_CLOSE(what, out + (int64_t)b * Tq * NH * HD,
                        full + ((int64_t)b * T + pos) * NH * HD, (long)Tq * NH * HD, 2e-6, 2e-6);
            int same = 1;
            for (int t = 0; t < Tq; t++)
                same = same &&
                       memcmp(kc + ((int64_t)b * Tmax + pos + t) * W, k + ((int64_t)b * T + pos + t) * ldk,
                              W * sizeof(float)) == 0 &&
                       memcmp(vc + ((int64_t)b * Tmax + pos + t) * W, v + ((int64_t)b * T + pos + t) * ldv,
                              W * sizeof(float)) == 0;
            CHECK(same, "%s: the caches do not hold the new keys and values", what);
        }
        pos += Tq;
        free(qs); free(ks); free(vs); free(out);
    }
    float o1[4 * 8];
    int rc = fsdp_attention_decode_cpu(o1, kc, vc, q, k, v, 1, 1, Tmax, Tmax, NH, NKV, HD, ldq, ldk,
                                       ldv, window, 0.35f, 0.0f);
    CHECK(rc == FSDP_ERR_INVALID && strstr(fsdp_last_error(), "do not fit the cache of 16"),
          "a position past the cache: %d %s", rc, fsdp_last_error());
    rc = fsdp_attention_decode_cpu(o1, NULL, vc, q, k, v, 1, 1, 0, Tmax, NH, NKV, HD, ldq, ldk, ldv,
                                   window, 0.35f, 0.0f);
    CHECK(rc == FSDP_ERR_INVALID && strstr(fsdp_last_error(), "kcache is NULL"), "no cache: %s",
          fsdp_last_error());
    free(qkv); free(kx); free(vx); free(full); free(lse); free(kc); free(vc);
}

/* packed sequences: a row holding several samples (positions restarting at
 * 0) gives, forward and backward, what each sample gives run alone; rows
 * cross the 64-query block boundary with a sample starting inside a block */
static void test_attention_packed(int NKV, int window, float softcap) {
    const int B = 2, T = 70, NH = 4, HD = 8;
    const int lens[2][3] = {{20, 30, 20}, {5, 65, 0}};
    const int W = NKV * HD, ldq = NH * HD, ldo = NH * HD;
    float *q = randn((int64_t)B * T * ldq, 1.0f), *k = randn((int64_t)B * T * W, 1.0f);
    float *v = randn((int64_t)B * T * W, 1.0f), *dout = randn((int64_t)B * T * ldo, 1.0f);
    int32_t pos[2 * 70];
    for (int b = 0; b < B; b++) {
        int t = 0;
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < lens[b][s]; i++) pos[b * T + t++] = i;
    }
    float *out = zeros((int64_t)B * T * ldo), *lse = zeros((int64_t)B * NH * T);
    float *dq = zeros((int64_t)B * T * ldq), *dk = zeros((int64_t)B * T * W), *dv = zeros((int64_t)B * T * W);
    CHECK(fsdp_attention_packed_forward_cpu(out, lse, q, k, v, pos, B, T, NH, NKV, HD, ldq, W, W, window,
                                            0.3f, softcap) == FSDP_OK, "packed forward: %s", fsdp_last_error());
    CHECK(fsdp_attention_packed_backward_cpu(dq, dk, dv, dout, q, k, v, out, lse, pos, B, T, NH, NKV, HD,
                                             ldq, W, W, window, 0.3f, softcap) == FSDP_OK,
          "packed backward: %s", fsdp_last_error());
    char what[96];
    for (int b = 0; b < B; b++) {
        int t0 = 0;
        for (int s = 0; s < 3 && lens[b][s] > 0; s++) {
            const int n = lens[b][s];
            const int64_t r0 = (int64_t)b * T + t0;
            float *o1 = zeros((int64_t)n * ldo), *l1 = zeros((int64_t)NH * n);
            float *dq1 = zeros((int64_t)n * ldq), *dk1 = zeros((int64_t)n * W), *dv1 = zeros((int64_t)n * W);
            CHECK(fsdp_attention_forward_cpu(o1, l1, q + r0 * ldq, k + r0 * W, v + r0 * W, 1, n, NH, NKV, HD,
                                             ldq, W, W, window, 0.3f, softcap) == FSDP_OK, "alone: %s", fsdp_last_error());
            CHECK(fsdp_attention_backward_cpu(dq1, dk1, dv1, dout + r0 * ldo, q + r0 * ldq, k + r0 * W,
                                              v + r0 * W, o1, l1, 1, n, NH, NKV, HD, ldq, W, W, window,
                                              0.3f, softcap) == FSDP_OK, "alone backward: %s", fsdp_last_error());
            snprintf(what, sizeof what, "packed NKV %d window %d softcap %g row %d sample %d", NKV, window,
                     (double)softcap, b, s);
            CHECK_CLOSE(what, out + r0 * ldo, o1, (long)n * ldo, 1e-5, 1e-6);
            for (int h = 0; h < NH; h++)
                CHECK_CLOSE(what, lse + ((int64_t)b * NH + h) * T + t0, l1 + (int64_t)h * n, n, 1e-5, 1e-6);
            CHECK_CLOSE(what, dq + r0 * ldq, dq1, (long)n * ldq, 1e-4, 1e-6);
            CHECK_CLOSE(what, dk + r0 * W, dk1, (long)n * W, 1e-4, 1e-6);
            CHECK_CLOSE(what, dv + r0 * W, dv1, (long)n * W, 1e-4, 1e-6);
            free(o1); free(l1); free(dq1); free(dk1); free(dv1);
            t0 += n;
        }
    }
    /* positions that do not count up within samples are refused */
    pos[5] = 7;
    int rc = fsdp_attention_packed_forward_cpu(out, lse, q, k, v, pos, B, T, NH, NKV, HD, ldq, W, W, window, 0.3f, 0.0f);
    CHECK(rc == FSDP_ERR_INVALID && strstr(fsdp_last_error(), "positions[0, 5] = 7"), "bad positions: %s",
          fsdp_last_error());
    rc = fsdp_attention_packed_forward_cpu(out, lse, q, k, v, NULL, B, T, NH, NKV, HD, ldq, W, W, window, 0.3f, 0.0f);
    CHECK(rc == FSDP_ERR_INVALID && strstr(fsdp_last_error(), "pos is NULL"), "no positions: %s", fsdp_last_error());
    free(q); free(k); free(v); free(dout); free(out); free(lse); free(dq); free(dk); free(dv);
}

int main(void) {
    fsdp_rng_seed(&rng, 1234);
    for (int fused = 0; fused <= 1; fused++)
        for (int NKV = 4; NKV >= 1; NKV /= 2)
            for (int window = 0; window <= 3; window += 3) test_attention_case(NKV, window, fused, 0.0f);
    /* soft-capped scores (Gemma 2): a cap of 1.5 bends scores of size ~1 */
    for (int window = 0; window <= 3; window += 3) {
        test_attention_case(2, window, 0, 1.5f);
        test_attention_case(1, window, 1, 1.5f);
    }
    test_attention_window_one();
    for (int fused = 0; fused <= 1; fused++)
        for (int NKV = 4; NKV >= 1; NKV /= 2)
            for (int window = 0; window <= 3; window += 3) test_attention_decode(NKV, window, fused, 0.0f);
    test_attention_decode(2, 3, 0, 1.5f);
    test_attention_decode(1, 0, 1, 1.5f);
    for (int NKV = 4; NKV >= 1; NKV /= 2)
        for (int window = 0; window <= 9; window += 9) test_attention_packed(NKV, window, 0.0f);
    test_attention_packed(2, 9, 1.5f);
    test_attention_errors();
    test_rope();
    return check_exit("test_kernels_attention");
}
