/* layernorm_cpu.c - LayerNorm over the last dimension of [N, C] rows:
 * out = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps).
 * Forward saves mean[N] and rstd[N] for backward. Row sums run in vector
 * lanes (omp simd): their order is fixed by the build, not the thread count. */
#include "internal.h"
#include "norm_math.h"

/* channels per block when reducing parameter grads over rows */
enum { LN_BLOCK = 64 };

static int check_dims(const char *fn, int N, int C) {
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    return FSDP_OK;
}

int fsdp_layernorm_forward_cpu(float *out, float *mean, float *rstd, const float *inp,
                               const float *weight, const float *bias, int N, int C, float eps) {
    const char *fn = "fsdp_layernorm_forward_cpu";
    int rc = check_dims(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && mean && rstd, "%s: out, mean and rstd must not be NULL", fn);
    FSDP_CHECK_ARG(inp && weight, "%s: inp and weight must not be NULL (bias may be)", fn);
    FSDP_CHECK_ARG(eps >= 0.0f, "%s: eps must be >= 0, got %g", fn, eps);

    #pragma omp parallel for if ((int64_t)N * C > 16384)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (int64_t)n * C;
        float *y = out + (int64_t)n * C;
        /* mean, then variance around it (two passes: no cancellation) */
        float m = 0.0f;
#pragma omp simd reduction(+ : m)
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        v /= C;
        float s = fsdp_norm_rstd(v, eps);
        /* normalize, scale, shift */
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - m) * s;
            y[c] = norm * weight[c] + (bias ? bias[c] : 0.0f);
        }
        mean[n] = m;
        rstd[n] = s;
    }
    return FSDP_OK;
}

int fsdp_layernorm_backward_cpu(float *dinp, float *dweight, float *dbias, const float *dout,
                                const float *inp, const float *weight, const float *mean,
                                const float *rstd, int N, int C) {
    const char *fn = "fsdp_layernorm_backward_cpu";
    int rc = check_dims(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout && inp && mean && rstd,
                   "%s: dout, inp, mean and rstd must not be NULL", fn);
    FSDP_CHECK_ARG(!dinp || weight, "%s: weight must not be NULL when dinp is wanted", fn);

    /* input grad, row by row */
    if (dinp) {
        #pragma omp parallel for if ((int64_t)N * C > 16384)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (int64_t)n * C;
            const float *dy = dout + (int64_t)n * C;
            float *dx = dinp + (int64_t)n * C;
            float m = mean[n], s = rstd[n];
            /* row means of dnorm and dnorm * norm */
            float sum_dnorm = 0.0f, sum_dnorm_norm = 0.0f;
#pragma omp simd reduction(+ : sum_dnorm, sum_dnorm_norm)
            for (int c = 0; c < C; c++) {
                float dnorm = dy[c] * weight[c];
                sum_dnorm += dnorm;
                sum_dnorm_norm += dnorm * (x[c] - m) * s;
            }
            float mean_dnorm = sum_dnorm / C, mean_dnorm_norm = sum_dnorm_norm / C;
            /* dx += rstd * (dnorm - <dnorm> - norm * <dnorm * norm>) */
            for (int c = 0; c < C; c++)
                dx[c] += fsdp_norm_dinp(dy[c] * weight[c], (x[c] - m) * s, s, mean_dnorm,
                                        mean_dnorm_norm);
        }
    }

    /* parameter grads sum over rows; each thread owns a block of channels and
     * adds the rows in order, so the result does not depend on thread count */
    if (dweight || dbias) {
        #pragma omp parallel for if ((int64_t)N * C > 16384)
        for (int c0 = 0; c0 < C; c0 += LN_BLOCK) {
            int width = C - c0 < LN_BLOCK ? C - c0 : LN_BLOCK;
            float dw[LN_BLOCK] = {0}, db[LN_BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (int64_t)n * C + c0;
                const float *dy = dout + (int64_t)n * C + c0;
                for (int j = 0; j < width; j++) {
                    dw[j] += dy[j] * (x[j] - mean[n]) * rstd[n];
                    db[j] += dy[j];
                }
            }
            for (int j = 0; j < width; j++) {
                if (dweight) dweight[c0 + j] += dw[j];
                if (dbias) dbias[c0 + j] += db[j];
            }
        }
    }
    return FSDP_OK;
}
