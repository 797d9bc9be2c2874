/* lora_cpu.c - a linear layer with a low-rank adapter (LoRA, Hu et al.
 * 2021), fused: out = x W^T + bias + s * (drop(x) A^T) B^T.
 *
 *   x [M, K]   W [N, K] (usually frozen)   bias [N] or NULL
 *   A [R, K]   B [N, R]   s = alpha / r    drop: dropout of rate p (lora_math.h)
 *   xa [M, R]  saved by forward: drop(x) A^T, what backward needs of the adapter
 *
 * Backward accumulates into every gradient it is given (NULL ones are
 * skipped: a frozen W has no dw):
 *   g   = s dout B                         [M, R]
 *   dx += dout W + drop'(g A)              (drop' masks and scales like drop)
 *   dw += dout^T x,  dbias += column sums of dout
 *   dA += g^T drop(x),  dB += s dout^T xa
 * The GEMMs are OpenBLAS's; drop(x) is materialised in a scratch buffer from
 * the seed only when p > 0. */
#include <cblas.h>
#include <string.h>
#include "internal.h"
#include "lora_math.h"

static int check_args(const char *fn, int M, int N, int K, int R, float p) {
    FSDP_CHECK_ARG(M > 0 && N > 0 && K > 0, "%s: M (%d), N (%d) and K (%d) must be positive", fn, M, N, K);
    FSDP_CHECK_ARG(R > 0 && R <= K && R <= N, "%s: the rank R (%d) must be in [1, min(K %d, N %d)]", fn, R, K, N);
    FSDP_CHECK_ARG(p >= 0.0f && p < 1.0f, "%s: the dropout rate %g must be in [0, 1)", fn, (double)p);
    return FSDP_OK;
}

int fsdp_lora_dropout_cpu(float *out, const float *x, int64_t n, float p, uint64_t seed, int accumulate) {
    const char *fn = "fsdp_lora_dropout_cpu";
    FSDP_CHECK_ARG(n >= 0, "%s: n (%lld) must not be negative", fn, (long long)n);
    FSDP_CHECK_ARG(n == 0 || (out && x), "%s: out and x must not be NULL", fn);
    FSDP_CHECK_ARG(p >= 0.0f && p < 1.0f, "%s: the dropout rate %g must be in [0, 1)", fn, (double)p);
    if (accumulate) {
#pragma omp parallel for if (n > 32768)
        for (int64_t i = 0; i < n; i++) out[i] += x[i] * fsdp_lora_dropout(seed, i, p);
    } else {
#pragma omp parallel for if (n > 32768)
        for (int64_t i = 0; i < n; i++) out[i] = x[i] * fsdp_lora_dropout(seed, i, p);
    }
    return FSDP_OK;
}

/* drop(x) into a scratch buffer (NULL and no scratch when p == 0: x itself) */
static const float *dropped(const char *fn, const float *x, int64_t n, float p, uint64_t seed, float **buf,
                            int64_t *nbytes) {
    *buf = NULL;
    *nbytes = 0;
    if (p <= 0.0f) return x;
    *nbytes = n * (int64_t)sizeof(float);
    *buf = fsdp_mem_alloc(FSDP_CPU, *nbytes);
    if (!*buf) {
        fsdp_error(FSDP_ERR_OOM, "%s: no memory for %lld bytes of dropped inputs", fn, (long long)*nbytes);
        return NULL;
    }
    fsdp_lora_dropout_cpu(*buf, x, n, p, seed, 0);
    return *buf;
}

int fsdp_lora_forward_cpu(float *out, float *xa, const float *x, const float *w, const float *bias,
                          const float *a, const float *b, int M, int N, int K, int R, float scale,
                          float p, uint64_t seed) {
    const char *fn = "fsdp_lora_forward_cpu";
    int rc = check_args(fn, M, N, K, R, p);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && xa && x && w && a && b, "%s: out, xa, x, w, a and b must not be NULL", fn);
    /* 1. the base layer: out = x W^T + bias */
    rc = fsdp_matmul_forward_cpu(out, x, w, bias, M, N, K, 0, 1, 0);
    if (rc) return rc;
    /* 2. the adapter's down projection of the (dropped) input: xa = drop(x) A^T */
    float *buf;
    int64_t nbytes;
    const float *xd = dropped(fn, x, (int64_t)M * K, p, seed, &buf, &nbytes);
    if (!xd) return FSDP_ERR_OOM;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, R, K, 1.0f, xd, K, a, K, 0.0f, xa, R);
    if (buf) fsdp_mem_release(FSDP_CPU, buf, nbytes);
    /* 3. out += s xa B^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, R, scale, xa, R, b, R, 1.0f, out, N);
    return FSDP_OK;
}

int fsdp_lora_backward_cpu(float *dx, float *dw, float *dbias, float *da, float *db, const float *dout,
                           const float *x, const float *w, const float *a, const float *b,
                           const float *xa, int M, int N, int K, int R, float scale, float p,
                           uint64_t seed) {
    const char *fn = "fsdp_lora_backward_cpu";
    int rc = check_args(fn, M, N, K, R, p);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout && x && w && a && b && xa, "%s: dout, x, w, a, b and xa must not be NULL", fn);
    /* the base layer's gradients: dx += dout W, dw += dout^T x, dbias */
    if (dx || dw || dbias) {
        rc = fsdp_matmul_backward_cpu(dx, dw, dbias, dout, x, w, M, N, K, 0, 1);
        if (rc) return rc;
    }
    /* dB += s dout^T xa */
    if (db) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, R, M, scale, dout, N, xa, R, 1.0f, db, R);
    if (!dx && !da) return FSDP_OK;
    /* g = s dout B [M, R] */
    const int64_t gbytes = (int64_t)M * R * (int64_t)sizeof(float);
    float *g = fsdp_mem_alloc(FSDP_CPU, gbytes);
    if (!g) return fsdp_error(FSDP_ERR_OOM, "%s: no memory for %lld bytes", fn, (long long)gbytes);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, R, N, scale, dout, N, b, R, 0.0f, g, R);
    rc = FSDP_OK;
    if (da) { /* dA += g^T drop(x) */
        float *buf;
        int64_t nbytes;
        const float *xd = dropped(fn, x, (int64_t)M * K, p, seed, &buf, &nbytes);
        if (!xd) rc = FSDP_ERR_OOM;
        else cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, K, M, 1.0f, g, R, xd, K, 1.0f, da, K);
        if (buf) fsdp_mem_release(FSDP_CPU, buf, nbytes);
    }
    if (dx && !rc) { /* dx += drop'(g A) */
        if (p <= 0.0f) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, R, 1.0f, g, R, a, K, 1.0f, dx, K);
        } else {
            const int64_t n = (int64_t)M * K, tbytes = n * (int64_t)sizeof(float);
            float *t = fsdp_mem_alloc(FSDP_CPU, tbytes);
            if (!t) {
                rc = fsdp_error(FSDP_ERR_OOM, "%s: no memory for %lld bytes", fn, (long long)tbytes);
            } else {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, R, 1.0f, g, R, a, K, 0.0f, t, K);
                fsdp_lora_dropout_cpu(dx, t, n, p, seed, 1);
                fsdp_mem_release(FSDP_CPU, t, tbytes);
            }
        }
    }
    fsdp_mem_release(FSDP_CPU, g, gbytes);
    return rc;
}
