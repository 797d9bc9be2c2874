/* rmsnorm_cpu.c - RMSNorm over the last dimension of [N, C] rows (Llama):
 * out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
 * Forward saves rstd[N] for backward. */
#include "internal.h"
#include "norm_math.h"

/* channels per block when reducing the weight grad over rows */
enum { RMS_BLOCK = 64 };

static int check_dims(const char *fn, int N, int C) {
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    return FSDP_OK;
}

int fsdp_rmsnorm_forward_cpu(float *out, float *rstd, const float *inp, const float *weight,
                             int N, int C, float eps) {
    const char *fn = "fsdp_rmsnorm_forward_cpu";
    int rc = check_dims(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && rstd && inp && weight,
                   "%s: out, rstd, inp and weight must not be NULL", fn);
    FSDP_CHECK_ARG(eps >= 0.0f, "%s: eps must be >= 0, got %g", fn, eps);

    #pragma omp parallel for if ((int64_t)N * C > 16384)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (int64_t)n * C;
        float *y = out + (int64_t)n * C;
        /* mean square of the row */
        float ms = 0.0f;
        for (int c = 0; c < C; c++) ms += x[c] * x[c];
        float s = fsdp_norm_rstd(ms / C, eps);
        /* scale the row and apply the weight */
        for (int c = 0; c < C; c++) y[c] = x[c] * s * weight[c];
        rstd[n] = s;
    }
    return FSDP_OK;
}

int fsdp_rmsnorm_backward_cpu(float *dinp, float *dweight, const float *dout, const float *inp,
                              const float *weight, const float *rstd, int N, int C) {
    const char *fn = "fsdp_rmsnorm_backward_cpu";
    int rc = check_dims(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout && inp && rstd, "%s: dout, inp and rstd must not be NULL", fn);
    FSDP_CHECK_ARG(!dinp || weight, "%s: weight must not be NULL when dinp is wanted", fn);

    /* input grad, row by row */
    if (dinp) {
        #pragma omp parallel for if ((int64_t)N * C > 16384)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (int64_t)n * C;
            const float *dy = dout + (int64_t)n * C;
            float *dx = dinp + (int64_t)n * C;
            float s = rstd[n];
            /* row mean of dnorm * norm */
            float sum = 0.0f;
            for (int c = 0; c < C; c++) sum += dy[c] * weight[c] * x[c] * s;
            float mean_dnorm_norm = sum / C;
            /* dx += rstd * (dnorm - norm * <dnorm * norm>) */
            for (int c = 0; c < C; c++)
                dx[c] += fsdp_norm_dinp(dy[c] * weight[c], x[c] * s, s, 0.0f, mean_dnorm_norm);
        }
    }

    /* weight grad sums over rows; each thread owns a block of channels and
     * adds the rows in order, so the result does not depend on thread count */
    if (dweight) {
        #pragma omp parallel for if ((int64_t)N * C > 16384)
        for (int c0 = 0; c0 < C; c0 += RMS_BLOCK) {
            int width = C - c0 < RMS_BLOCK ? C - c0 : RMS_BLOCK;
            float dw[RMS_BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (int64_t)n * C + c0;
                const float *dy = dout + (int64_t)n * C + c0;
                for (int j = 0; j < width; j++) dw[j] += dy[j] * x[j] * rstd[n];
            }
            for (int j = 0; j < width; j++) dweight[c0 + j] += dw[j];
        }
    }
    return FSDP_OK;
}
