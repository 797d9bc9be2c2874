/* test_kernels_lora.c - the fused LoRA linear kernels: forward against a
 * double reference (with and without dropout, the mask made by the same
 * rule, kernels/lora_math.h), every gradient against central finite
 * differences of the forward (dropout on: the mask is a function of the
 * seed, so the forward is deterministic), accumulation, a NULL base-weight
 * gradient (frozen), the dropout rate and the argument checks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "fsdp.h"
#include "lora_math.h"

static fsdp_rng rng;

static float *randn(int64_t n, float std) {
    float *x = malloc((size_t)n * sizeof(float));
    fsdp_rng_fill_normal(&rng, x, n, 0.0f, std);
    return x;
}
static float *zeros(int64_t n) { return calloc((size_t)n, sizeof(float)); }

enum { M = 5, N = 7, K = 6, R = 3 };
static const float SCALE = 2.5f;
static const uint64_t SEED = 12345;

/* out = x W^T + b + s (drop(x) A^T) B^T in double */
static void reference(double *out, const float *x, const float *w, const float *b, const float *a,
                      const float *bb, float p) {
    for (int m = 0; m < M; m++) {
        double xa[R];
        for (int r = 0; r < R; r++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)x[m * K + k] * fsdp_lora_dropout(SEED, (int64_t)m * K + k, p) * a[r * K + k];
            xa[r] = s;
        }
        for (int n = 0; n < N; n++) {
            double s = b ? b[n] : 0;
            for (int k = 0; k < K; k++) s += (double)x[m * K + k] * w[n * K + k];
            for (int r = 0; r < R; r++) s += SCALE * xa[r] * bb[n * R + r];
            out[m * N + n] = s;
        }
    }
}

/* sum(out * G): the scalar whose gradients the backward computes */
static double objective(const float *x, const float *w, const float *b, const float *a, const float *bb,
                        const float *G, float p) {
    float out[M * N], xa[M * R];
    CHECK(fsdp_lora_forward_cpu(out, xa, x, w, b, a, bb, M, N, K, R, SCALE, p, SEED) == FSDP_OK, "forward: %s",
          fsdp_last_error());
    double s = 0;
    for (int i = 0; i < M * N; i++) s += (double)out[i] * G[i];
    return s;
}

static void check_fd(const char *what, float *param, int n, const float *grad, const float *x, const float *w,
                     const float *b, const float *a, const float *bb, const float *G, float p) {
    double worst = 0, scale = 0;
    for (int i = 0; i < n; i++) {
        const float keep = param[i], h = 1e-2f;
        param[i] = keep + h;
        double up = objective(x, w, b, a, bb, G, p);
        param[i] = keep - h;
        double down = objective(x, w, b, a, bb, G, p);
        param[i] = keep;
        double fd = (up - down) / (2 * h);
        worst = fmax(worst, fabs(fd - grad[i]));
        scale = fmax(scale, fabs(fd));
    }
    CHECK(scale > 1e-3 && worst <= 2e-3 * scale, "%s (p %g): gradient off by %g (largest %g)", what, (double)p,
          worst, scale);
}

static void test_lora(float p) {
    float *x = randn(M * K, 1), *w = randn(N * K, 0.5f), *b = randn(N, 0.5f), *a = randn(R * K, 0.5f);
    float *bb = randn(N * R, 0.5f), *G = randn(M * N, 1);
    float out[M * N], xa[M * R];
    double ref[M * N];
    CHECK(fsdp_lora_forward_cpu(out, xa, x, w, b, a, bb, M, N, K, R, SCALE, p, SEED) == FSDP_OK, "forward: %s",
          fsdp_last_error());
    reference(ref, x, w, b, a, bb, p);
    double worst = 0;
    for (int i = 0; i < M * N; i++) worst = fmax(worst, fabs(out[i] - ref[i]) / (1 + fabs(ref[i])));
    CHECK(worst < 1e-5, "forward (p %g) off by %g", (double)p, worst);
    /* gradients of sum(out * G) */
    float *dx = zeros(M * K), *dw = zeros(N * K), *db = zeros(N), *da = zeros(R * K), *dbb = zeros(N * R);
    CHECK(fsdp_lora_backward_cpu(dx, dw, db, da, dbb, G, x, w, a, bb, xa, M, N, K, R, SCALE, p, SEED) == FSDP_OK,
          "backward: %s", fsdp_last_error());
    check_fd("dx", x, M * K, dx, x, w, b, a, bb, G, p);
    check_fd("dw", w, N * K, dw, x, w, b, a, bb, G, p);
    check_fd("dbias", b, N, db, x, w, b, a, bb, G, p);
    check_fd("dA", a, R * K, da, x, w, b, a, bb, G, p);
    check_fd("dB", bb, N * R, dbb, x, w, b, a, bb, G, p);
    /* accumulation: a second backward doubles every gradient; a frozen base
     * weight (dw NULL) changes nothing else */
    float *dx2 = malloc(sizeof(float) * M * K), *da2 = malloc(sizeof(float) * R * K);
    memcpy(dx2, dx, sizeof(float) * M * K);
    memcpy(da2, da, sizeof(float) * R * K);
    CHECK(fsdp_lora_backward_cpu(dx2, NULL, NULL, da2, NULL, G, x, w, a, bb, xa, M, N, K, R, SCALE, p, SEED) ==
          FSDP_OK, "backward without dw: %s", fsdp_last_error());
    int doubled = 1;
    for (int i = 0; i < M * K; i++) doubled = doubled && fabsf(dx2[i] - 2 * dx[i]) <= 1e-5f * (1 + fabsf(dx[i]));
    for (int i = 0; i < R * K; i++) doubled = doubled && fabsf(da2[i] - 2 * da[i]) <= 1e-5f * (1 + fabsf(da[i]));
    CHECK(doubled, "backward (p %g) does not accumulate", (double)p);
    free(x); free(w); free(b); free(a); free(bb); free(G); free(dx); free(dw); free(db); free(da); free(dbb);
    free(dx2); free(da2);
}

/* the mask keeps a share 1 - p of the elements, scaled by 1 / (1 - p) */
static void test_dropout_rate(void) {
    const int64_t n = 200000;
    int64_t kept = 0, odd = 0;
    for (int64_t i = 0; i < n; i++) {
        float f = fsdp_lora_dropout(99, i, 0.25f);
        odd += !(f == 0.0f || fabsf(f - 1.0f / 0.75f) < 1e-7f);
        kept += f != 0.0f;
    }
    CHECK(odd == 0, "%lld factors are neither 0 nor 1 / (1 - p)", (long long)odd);
    CHECK(fabs((double)kept / n - 0.75) < 0.005, "kept %.4f of the elements at p = 0.25", (double)kept / n);
    int differ = 0;
    for (int64_t i = 0; i < 64; i++) differ += fsdp_lora_dropout(1, i, 0.5f) != fsdp_lora_dropout(2, i, 0.5f);
    CHECK(differ > 8, "another seed should give another mask (%d of 64 differ)", differ);
}

static void test_errors(void) {
    float buf[64] = {0};
    int rc = fsdp_lora_forward_cpu(buf, buf, buf, buf, NULL, buf, buf, 2, 3, 4, 5, 1, 0, 0);
    CHECK(rc == FSDP_ERR_INVALID && strstr(fsdp_last_error(), "the rank R (5)"), "rank too large: %s",
          fsdp_last_error());
    rc = fsdp_lora_forward_cpu(buf, buf, buf, buf, NULL, buf, buf, 2, 3, 4, 1, 1, 1.0f, 0);
    CHECK(rc == FSDP_ERR_INVALID && strstr(fsdp_last_error(), "dropout rate 1"), "p = 1: %s", fsdp_last_error());
    rc = fsdp_lora_forward_cpu(buf, NULL, buf, buf, NULL, buf, buf, 2, 3, 4, 1, 1, 0, 0);
    CHECK(rc == FSDP_ERR_INVALID && strstr(fsdp_last_error(), "must not be NULL"), "NULL xa: %s", fsdp_last_error());
}

int main(void) {
    fsdp_rng_seed(&rng, 7);
    test_lora(0.0f);
    test_lora(0.3f);
    test_dropout_rate();
    test_errors();
    return check_exit("test_kernels_lora");
}
