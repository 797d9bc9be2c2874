/* test_kernels_loss_optim.c - the CPU cross-entropy, AdamW and sum-of-squares
 * kernels: forwards vs double references, cross-entropy backward vs finite
 * differences, three AdamW steps vs the torch formula in double, sumsq's
 * independence of the thread count and its NaN/inf propagation. */
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

static void expect_error(int rc, const char *needle, const char *what) {
    CHECK(rc == FSDP_ERR_INVALID, "%s: expected FSDP_ERR_INVALID, got %d", what, rc);
    CHECK(strstr(fsdp_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", what,
          fsdp_last_error(), needle);
}

/* a buffer for argument checks that fail before any element is touched */
static float *p_dummy(void) {
    static float buf[64];
    return buf;
}

/* ---- cross-entropy -------------------------------------------------------- */

enum { IGNORE = -100 };

/* double reference: lse[n] and loss[n] (0 for ignored rows) */
static void ce_reference(const float *logits, const int32_t *targets, int N, int V, float *loss,
                         float *lse) {
    for (int n = 0; n < N; n++) {
        const float *x = logits + (int64_t)n * V;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, x[j]);
        for (int j = 0; j < V; j++) sum += exp((double)x[j] - mx);
        double l = mx + log(sum);
        lse[n] = (float)l;
        loss[n] = targets[n] == IGNORE ? 0.0f : (float)(l - x[targets[n]]);
    }
}

static double ce_objective(const float *logits, const int32_t *targets, int N, int V,
                           const float *R) {
    float *loss = malloc(N * sizeof(float)), *lse = malloc(N * sizeof(float));
    fsdp_crossentropy_forward_cpu(loss, lse, logits, targets, N, V, IGNORE);
    double L = 0;
    for (int n = 0; n < N; n++) L += (double)loss[n] * R[n];
    free(loss);
    free(lse);
    return L;
}

static void test_crossentropy_small(void) {
    const int N = 6, V = 11;
    float *logits = randn(N * V, 3.0f);
    int32_t targets[6] = {3, IGNORE, 0, 10, IGNORE, 7};
    /* row 2 sits far from zero: a naive exp would overflow in f32 */
    for (int j = 0; j < V; j++) logits[2 * V + j] += 200.0f;
    float loss[6], lse[6], ref_loss[6], ref_lse[6];
    CHECK(fsdp_crossentropy_forward_cpu(loss, lse, logits, targets, N, V, IGNORE) == FSDP_OK,
          "crossentropy forward failed: %s", fsdp_last_error());
    ce_reference(logits, targets, N, V, ref_loss, ref_lse);
    CHECK_CLOSE("crossentropy loss", loss, ref_loss, N, 1e-5, 1e-6);
    CHECK_CLOSE("crossentropy lse", lse, ref_lse, N, 1e-6, 1e-6);
    CHECK(loss[1] == 0.0f && loss[4] == 0.0f, "ignored rows have loss %g, %g", loss[1], loss[4]);

    /* backward (dloss = R, dlogits starting at 1 to see accumulation) vs
     * finite differences of sum(loss .* R) */
    float *R = randn(N, 1.0f);
    float *dlogits = malloc(N * V * sizeof(float));
    for (int i = 0; i < N * V; i++) dlogits[i] = 1.0f;
    CHECK(fsdp_crossentropy_backward_cpu(dlogits, R, logits, lse, targets, N, V, IGNORE) == FSDP_OK,
          "crossentropy backward failed: %s", fsdp_last_error());
    for (int i = 0; i < N * V; i++) dlogits[i] -= 1.0f;
    double fd[6 * 11], maxfd = 0, maxerr = 0;
    const float eps = 1e-2f;
    for (int i = 0; i < N * V; i++) {
        float saved = logits[i];
        logits[i] = saved + eps;
        double lp = ce_objective(logits, targets, N, V, R);
        logits[i] = saved - eps;
        double lm = ce_objective(logits, targets, N, V, R);
        logits[i] = saved;
        fd[i] = (lp - lm) / (2.0 * (double)eps);
        maxfd = fmax(maxfd, fabs(fd[i]));
    }
    for (int i = 0; i < N * V; i++) maxerr = fmax(maxerr, fabs(dlogits[i] - fd[i]));
    /* row 2's logits are ~200, so an f32 step of 1e-2 is coarse there */
    CHECK(maxerr <= 1e-2 * maxfd, "crossentropy backward vs finite differences: max err %g, max %g",
          maxerr, maxfd);
    int untouched = 1;
    for (int j = 0; j < V; j++) untouched &= dlogits[1 * V + j] == 0.0f && dlogits[4 * V + j] == 0.0f;
    CHECK(untouched, "ignored rows received gradient");

    /* errors: a target outside [0, V) that is not ignore_index */
    int32_t bad[6] = {3, IGNORE, 0, 11, IGNORE, 7};
    expect_error(fsdp_crossentropy_forward_cpu(loss, lse, logits, bad, N, V, IGNORE),
                 "targets[3] = 11", "target == V");
    bad[3] = -1;
    expect_error(fsdp_crossentropy_backward_cpu(dlogits, R, logits, lse, bad, N, V, IGNORE),
                 "targets[3] = -1", "target -1");
    expect_error(fsdp_crossentropy_forward_cpu(loss, NULL, logits, targets, N, V, IGNORE),
                 "fsdp_crossentropy_forward_cpu", "NULL lse");
    expect_error(fsdp_crossentropy_forward_cpu(loss, lse, logits, targets, N, 0, IGNORE), "V (0)",
                 "V = 0");
    free(logits);
    free(R);
    free(dlogits);
}

/* forward and backward in place (the chunked LM head's kernel): the loss
 * and lse of the forward kernel and the gradient of the backward kernel with
 * dloss = 1, to the bit; ignored rows all zeros */
static void test_crossentropy_inplace(void) {
    const int N = 9, V = 3001;
    float *logits = randn((int64_t)N * V, 4.0f);
    int32_t targets[9] = {0, IGNORE, 3000, 17, 17, IGNORE, 5, 2999, 1};
    float loss[9], lse[9], ref_loss[9], ref_lse[9], ones[9];
    for (int n = 0; n < N; n++) ones[n] = 1.0f;
    float *dref = calloc((size_t)N * V, sizeof(float));
    CHECK(fsdp_crossentropy_forward_cpu(ref_loss, ref_lse, logits, targets, N, V, IGNORE) == FSDP_OK, "fwd");
    CHECK(fsdp_crossentropy_backward_cpu(dref, ones, logits, ref_lse, targets, N, V, IGNORE) == FSDP_OK, "bwd");
    CHECK(fsdp_crossentropy_inplace_cpu(loss, lse, logits, targets, N, V, IGNORE) == FSDP_OK,
          "crossentropy inplace: %s", fsdp_last_error());
    CHECK(memcmp(loss, ref_loss, sizeof loss) == 0, "inplace loss differs from the forward kernel's");
    int lse_same = 1;
    for (int n = 0; n < N; n++) lse_same &= targets[n] == IGNORE || lse[n] == ref_lse[n];
    CHECK(lse_same, "inplace lse differs from the forward kernel's");
    CHECK(memcmp(logits, dref, (size_t)N * V * sizeof(float)) == 0,
          "inplace gradient differs from the backward kernel's with dloss = 1");
    /* lse is optional */
    float *again = randn((int64_t)N * V, 4.0f);
    CHECK(fsdp_crossentropy_inplace_cpu(loss, NULL, again, targets, N, V, IGNORE) == FSDP_OK, "NULL lse");
    int32_t bad[9] = {0, IGNORE, 3001, 17, 17, IGNORE, 5, 2999, 1};
    expect_error(fsdp_crossentropy_inplace_cpu(loss, lse, again, bad, N, V, IGNORE), "targets[2] = 3001",
                 "target == V");
    free(logits); free(dref); free(again);
}

/* GPT-2's vocabulary: forward vs reference, backward vs the closed form */
static void test_crossentropy_gpt2_vocab(void) {
    const int N = 3, V = 50257;
    float *logits = randn((int64_t)N * V, 2.0f);
    int32_t targets[3] = {50256, 17, IGNORE};
    float loss[3], lse[3], ref_loss[3], ref_lse[3];
    CHECK(fsdp_crossentropy_forward_cpu(loss, lse, logits, targets, N, V, IGNORE) == FSDP_OK,
          "crossentropy V=50257 failed: %s", fsdp_last_error());
    ce_reference(logits, targets, N, V, ref_loss, ref_lse);
    CHECK_CLOSE("crossentropy V=50257 loss", loss, ref_loss, N, 1e-5, 1e-5);
    CHECK_CLOSE("crossentropy V=50257 lse", lse, ref_lse, N, 1e-6, 1e-6);

    float dloss[3] = {0.5f, -2.0f, 1.0f};
    float *dlogits = calloc((size_t)N * V, sizeof(float));
    float *want = calloc((size_t)N * V, sizeof(float));
    fsdp_crossentropy_backward_cpu(dlogits, dloss, logits, lse, targets, N, V, IGNORE);
    for (int n = 0; n < 2; n++)
        for (int j = 0; j < V; j++) {
            double p = exp((double)logits[(int64_t)n * V + j] - ref_lse[n]);
            want[(int64_t)n * V + j] = (float)(dloss[n] * (p - (j == targets[n])));
        }
    CHECK_CLOSE("crossentropy V=50257 dlogits", dlogits, want, (int64_t)N * V, 1e-4, 1e-9);
    free(logits);
    free(dlogits);
    free(want);
}

/* ---- AdamW ---------------------------------------------------------------- */

static void test_adamw(void) {
    const int64_t n = 5000;
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    float *p = randn(n, 1.0f), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    double *rp = malloc(n * sizeof(double)), *rm = calloc(n, sizeof(double));
    double *rv = calloc(n, sizeof(double));
    for (int64_t i = 0; i < n; i++) rp[i] = p[i];
    for (int step = 1; step <= 3; step++) {
        float *g = randn(n, 1.0f);
        if (step == 2) g[0] = 0.0f; /* a zero gradient still decays */
        CHECK(fsdp_adamw_cpu(p, m, v, g, n, lr, b1, b2, eps, wd, gs, step) == FSDP_OK,
              "adamw step %d failed: %s", step, fsdp_last_error());
        /* torch.optim.AdamW in double */
        double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        for (int64_t i = 0; i < n; i++) {
            double gi = (double)g[i] * gs;
            rp[i] *= 1 - (double)lr * wd;
            rm[i] = b1 * rm[i] + (1 - (double)b1) * gi;
            rv[i] = b2 * rv[i] + (1 - (double)b2) * gi * gi;
            rp[i] -= lr * (rm[i] / bc1) / (sqrt(rv[i] / bc2) + eps);
        }
        free(g);
    }
    float *fp = malloc(n * sizeof(float)), *fm = malloc(n * sizeof(float));
    float *fv = malloc(n * sizeof(float));
    for (int64_t i = 0; i < n; i++) { fp[i] = (float)rp[i]; fm[i] = (float)rm[i]; fv[i] = (float)rv[i]; }
    CHECK_CLOSE("adamw param", p, fp, n, 1e-5, 1e-6);
    CHECK_CLOSE("adamw m", m, fm, n, 1e-5, 1e-7);
    CHECK_CLOSE("adamw v", v, fv, n, 1e-5, 1e-9);

    expect_error(fsdp_adamw_cpu(p, m, v, p, n, lr, b1, b2, eps, wd, gs, 0), "step t (0)", "t = 0");
    expect_error(fsdp_adamw_cpu(p, NULL, v, p, n, lr, b1, b2, eps, wd, gs, 1), "fsdp_adamw_cpu",
                 "NULL m");
    expect_error(fsdp_adamw_cpu(p, m, v, p, n, lr, 1.0f, b2, eps, wd, gs, 1), "beta1", "beta1 = 1");
    CHECK(fsdp_adamw_cpu(NULL, NULL, NULL, NULL, 0, lr, b1, b2, eps, wd, gs, 1) == FSDP_OK,
          "adamw over n = 0 must be a no-op");
    free(p); free(m); free(v); free(rp); free(rm); free(rv); free(fp); free(fm); free(fv);
}

/* fsdp_adamw_runs_cpu over a slice of decayed and undecayed runs gives the
 * bits of one fsdp_adamw_cpu call per run, at 1 and 2 threads, with runs that
 * start and end anywhere (thread blocks split them) */
static void test_adamw_runs(void) {
    const int64_t n = 100003;
    const float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.7f;
    const int64_t decay[] = {0, 5, 17, 40000, 40001, 40002, 50000, 99999};
    const int ndecay = 4;
    float *g = randn(n, 1.0f);
    for (int threads = 1; threads <= 2; threads++) {
        float *p = randn(n, 1.0f), *m = randn(n, 0.1f), *v = randn(n, 0.1f);
        for (int64_t i = 0; i < n; i++) v[i] = v[i] * v[i];
        float *p2 = malloc(n * sizeof(float)), *m2 = malloc(n * sizeof(float)), *v2 = malloc(n * sizeof(float));
        memcpy(p2, p, n * sizeof(float)); memcpy(m2, m, n * sizeof(float)); memcpy(v2, v, n * sizeof(float));
        int max_threads = omp_get_max_threads();
        omp_set_num_threads(threads);
        for (int step = 1; step <= 2; step++) {
            CHECK(fsdp_adamw_runs_cpu(p, m, v, g, n, decay, ndecay, lr, b1, b2, eps, wd, gs, step) == FSDP_OK,
                  "adamw_runs: %s", fsdp_last_error());
            int64_t at = 0;
            for (int r = 0; r <= ndecay; r++) {
                int64_t a = r < ndecay ? decay[2 * r] : n, b = r < ndecay ? decay[2 * r + 1] : n;
                if (a > at) fsdp_adamw_cpu(p2 + at, m2 + at, v2 + at, g + at, a - at, lr, b1, b2, eps, 0.0f, gs, step);
                if (b > a) fsdp_adamw_cpu(p2 + a, m2 + a, v2 + a, g + a, b - a, lr, b1, b2, eps, wd, gs, step);
                at = b;
            }
        }
        omp_set_num_threads(max_threads);
        CHECK(memcmp(p, p2, n * sizeof(float)) == 0, "adamw_runs param differs from per-run calls (%d threads)", threads);
        CHECK(memcmp(m, m2, n * sizeof(float)) == 0, "adamw_runs m differs (%d threads)", threads);
        CHECK(memcmp(v, v2, n * sizeof(float)) == 0, "adamw_runs v differs (%d threads)", threads);
        free(p); free(m); free(v); free(p2); free(m2); free(v2);
    }
    /* a decayed element really decays: with g = 0 and fresh moments only the decay acts */
    float one[2] = {1.0f, 1.0f}, zm[2] = {0}, zv[2] = {0}, zg[2] = {0};
    const int64_t first[] = {0, 1};
    CHECK(fsdp_adamw_runs_cpu(one, zm, zv, zg, 2, first, 1, 0.5f, b1, b2, eps, 0.1f, 1.0f, 1) == FSDP_OK, "runs");
    CHECK(one[0] == 1.0f - 0.5f * 0.1f && one[1] == 1.0f, "decay applied to %g %g", one[0], one[1]);
    const int64_t bad[] = {10, 20, 15, 30};
    expect_error(fsdp_adamw_runs_cpu(p_dummy(), p_dummy(), p_dummy(), p_dummy(), 40, bad, 2, lr, b1, b2, eps,
                                     wd, gs, 1), "decay run 1", "overlapping runs");
    const int64_t past[] = {10, 41};
    expect_error(fsdp_adamw_runs_cpu(p_dummy(), p_dummy(), p_dummy(), p_dummy(), 40, past, 1, lr, b1, b2, eps,
                                     wd, gs, 1), "outside [0, 40)", "a run past the end");
    expect_error(fsdp_adamw_runs_cpu(p_dummy(), p_dummy(), p_dummy(), p_dummy(), 40, NULL, 1, lr, b1, b2, eps,
                                     wd, gs, 1), "decay is NULL", "NULL runs");
    free(g);
}

/* ---- sum of squares ------------------------------------------------------- */

static void test_sumsq(void) {
    /* more than one batch of 64 chunks of 64K, and a ragged tail */
    const int64_t n = 65 * 65536 + 123;
    float *x = randn(n, 1.0f);
    double ref = 0;
    for (int64_t i = 0; i < n; i++) ref += (double)x[i] * x[i];

    int max_threads = omp_get_max_threads();
    omp_set_num_threads(1);
    double one = fsdp_sumsq_cpu(x, n);
    omp_set_num_threads(2);
    double two = fsdp_sumsq_cpu(x, n);
    omp_set_num_threads(max_threads);
    CHECK(memcmp(&one, &two, sizeof one) == 0, "sumsq: 1 thread %.17g, 2 threads %.17g", one, two);
    CHECK(fabs(one - ref) <= 1e-12 * ref, "sumsq %.17g, reference %.17g", one, ref);
    CHECK(fsdp_sumsq_cpu(x, 0) == 0.0, "sumsq of nothing is 0");
    CHECK(fsdp_sumsq_cpu(x, 3) == (double)x[0] * x[0] + (double)x[1] * x[1] + (double)x[2] * x[2],
          "sumsq of 3 elements");

    /* non-finite values propagate */
    float saved = x[n - 7];
    x[n - 7] = NAN;
    CHECK(isnan(fsdp_sumsq_cpu(x, n)), "sumsq: a NaN must give NaN");
    x[n - 7] = INFINITY;
    CHECK(isinf(fsdp_sumsq_cpu(x, n)), "sumsq: an inf must give inf");
    x[n - 7] = saved;

    /* y += a x with the norm's share in one pass: the bits of fsdp_axpy_cpu
     * followed by fsdp_sumsq_cpu */
    float *y = randn(n, 1.0f), *y2 = malloc(n * sizeof(float));
    memcpy(y2, y, n * sizeof(float));
    double fused = -1;
    CHECK(fsdp_axpy_sumsq_cpu(&fused, y, 0.5f, x, n) == FSDP_OK, "axpy_sumsq: %s", fsdp_last_error());
    fsdp_axpy_cpu(y2, 0.5f, x, n);
    double apart = fsdp_sumsq_cpu(y2, n);
    CHECK(memcmp(y, y2, n * sizeof(float)) == 0, "axpy_sumsq: y differs from fsdp_axpy_cpu's");
    CHECK(memcmp(&fused, &apart, sizeof fused) == 0, "axpy_sumsq %.17g, apart %.17g", fused, apart);
    CHECK(fsdp_axpy_sumsq_cpu(&fused, y, 1.0f, x, 0) == FSDP_OK && fused == 0.0, "axpy_sumsq of nothing");
    expect_error(fsdp_axpy_sumsq_cpu(NULL, y, 1.0f, x, n), "sumsq is NULL", "NULL result");
    expect_error(fsdp_axpy_sumsq_cpu(&fused, y, 1.0f, NULL, n), "fsdp_axpy_sumsq_cpu", "NULL x");
    free(y); free(y2);

    /* bad arguments: NaN and a message */
    CHECK(isnan(fsdp_sumsq_cpu(x, -1)), "sumsq of n = -1 must be NaN");
    CHECK(strstr(fsdp_last_error(), "fsdp_sumsq_cpu") != NULL, "sumsq error message: '%s'",
          fsdp_last_error());
    free(x);
}

int main(void) {
    fsdp_rng_seed(&rng, 42);
    test_crossentropy_small();
    test_crossentropy_gpt2_vocab();
    test_crossentropy_inplace();
    test_adamw();
    test_adamw_runs();
    test_sumsq();
    return check_exit("test_kernels_loss_optim");
}
