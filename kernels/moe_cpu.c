/* moe_cpu.c - the routing pieces of a mixture-of-experts layer (Mixtral),
 * the CPU reference: gather rows by index, scatter-add rows by index, row
 * softmax, per-row scale and top-k selection, each with its backward.
 *
 * Determinism: whenever several rows add into one destination row (the
 * scatter-add forward, the gather backward), each thread owns a block of
 * channels and adds the source rows in index order, so the sums are the same
 * for any thread count. Every index is checked before anything is written.
 * The per-element formulas are moe_math.h's, shared with moe_cuda.cu. */
#include <math.h>
#include <string.h>
#include "internal.h"
#include "moe_math.h"

/* channels per thread block where rows of one destination are summed */
enum { MOE_BLOCK = 64 };
/* below this many elements a loop runs on one thread */
#define MOE_PAR_MIN 16384

static int check_rows(const char *fn, const int32_t *idx, int M, int N, int C) {
    FSDP_CHECK_ARG(M >= 0, "%s: M must be >= 0, got %d", fn, M);
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    FSDP_CHECK_ARG(idx || M == 0, "%s: idx must not be NULL", fn);
    for (int m = 0; m < M; m++)
        FSDP_CHECK_ARG(idx[m] >= 0 && idx[m] < N, "%s: idx[%d] = %d is outside [0, %d)", fn, m,
                       (int)idx[m], N);
    return FSDP_OK;
}

/* dst[idx[m], :] += src[m, :] for m in order, channel blocks in parallel */
static void add_rows_by_index(float *dst, const float *src, const int32_t *idx, int M, int C) {
    #pragma omp parallel for if ((int64_t)M * C > MOE_PAR_MIN)
    for (int c0 = 0; c0 < C; c0 += MOE_BLOCK) {
        int width = C - c0 < MOE_BLOCK ? C - c0 : MOE_BLOCK;
        for (int m = 0; m < M; m++) {
            float *d = dst + (int64_t)idx[m] * C + c0;
            const float *s = src + (int64_t)m * C + c0;
            for (int j = 0; j < width; j++) d[j] += s[j];
        }
    }
}

/* dst[m, :] (+)= src[idx[m], :] */
static void take_rows_by_index(float *dst, const float *src, const int32_t *idx, int M, int C,
                               int accumulate) {
    #pragma omp parallel for if ((int64_t)M * C > MOE_PAR_MIN)
    for (int m = 0; m < M; m++) {
        float *d = dst + (int64_t)m * C;
        const float *s = src + (int64_t)idx[m] * C;
        if (accumulate) {
            for (int j = 0; j < C; j++) d[j] += s[j];
        } else {
            memcpy(d, s, sizeof(float) * C);
        }
    }
}

/* ---- gather rows ---------------------------------------------------------- */

int fsdp_gather_rows_forward_cpu(float *out, const float *inp, const int32_t *idx, int M, int N,
                                 int C) {
    const char *fn = "fsdp_gather_rows_forward_cpu";
    int rc = check_rows(fn, idx, M, N, C);
    if (rc) return rc;
    if (M == 0) return FSDP_OK;
    FSDP_CHECK_ARG(out && inp, "%s: out and inp must not be NULL", fn);
    /* one source row per output row */
    take_rows_by_index(out, inp, idx, M, C, 0);
    return FSDP_OK;
}

int fsdp_gather_rows_backward_cpu(float *dinp, const float *dout, const int32_t *idx, int M, int N,
                                  int C) {
    const char *fn = "fsdp_gather_rows_backward_cpu";
    int rc = check_rows(fn, idx, M, N, C);
    if (rc) return rc;
    if (M == 0 || !dinp) return FSDP_OK;
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    /* rows taken more than once sum their gradients, in index order */
    add_rows_by_index(dinp, dout, idx, M, C);
    return FSDP_OK;
}

/* ---- scatter-add rows ----------------------------------------------------- */

int fsdp_scatter_add_rows_forward_cpu(float *out, const float *src, const int32_t *idx, int M,
                                      int N, int C) {
    const char *fn = "fsdp_scatter_add_rows_forward_cpu";
    int rc = check_rows(fn, idx, M, N, C);
    if (rc) return rc;
    if (M == 0) return FSDP_OK;
    FSDP_CHECK_ARG(out && src, "%s: out and src must not be NULL", fn);
    FSDP_CHECK_ARG(out != src, "%s: out must not be src", fn);
    /* out already holds the base; add each source row to its destination */
    add_rows_by_index(out, src, idx, M, C);
    return FSDP_OK;
}

int fsdp_scatter_add_rows_backward_cpu(float *dsrc, const float *dout, const int32_t *idx, int M,
                                       int N, int C) {
    const char *fn = "fsdp_scatter_add_rows_backward_cpu";
    int rc = check_rows(fn, idx, M, N, C);
    if (rc) return rc;
    if (M == 0 || !dsrc) return FSDP_OK;
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    FSDP_CHECK_ARG(dsrc != dout, "%s: dsrc must not be dout (backward accumulates)", fn);
    /* each source row receives the gradient of the row it was added to */
    take_rows_by_index(dsrc, dout, idx, M, C, 1);
    return FSDP_OK;
}

/* ---- row softmax ---------------------------------------------------------- */

static int check_nc(const char *fn, int N, int C) {
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    return FSDP_OK;
}

int fsdp_softmax_forward_cpu(float *out, const float *inp, int N, int C) {
    const char *fn = "fsdp_softmax_forward_cpu";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && inp, "%s: out and inp must not be NULL", fn);
    #pragma omp parallel for if ((int64_t)N * C > MOE_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (int64_t)n * C;
        float *y = out + (int64_t)n * C;
        /* 1. the row max, so exp never overflows */
        float maxv = -INFINITY;
        for (int c = 0; c < C; c++) maxv = fsdp_moe_max(maxv, x[c]);
        /* 2. exponentials and their sum (in double) */
        double sum = 0.0;
        for (int c = 0; c < C; c++) {
            y[c] = fsdp_softmax_exp(x[c], maxv);
            sum += y[c];
        }
        /* 3. normalize */
        const float inv = (float)(1.0 / sum);
        for (int c = 0; c < C; c++) y[c] *= inv;
    }
    return FSDP_OK;
}

/* dinp += y * (dout - <dout, y>) per row, from the saved output y */
int fsdp_softmax_backward_cpu(float *dinp, const float *dout, const float *out, int N, int C) {
    const char *fn = "fsdp_softmax_backward_cpu";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    if (!dinp) return FSDP_OK;
    FSDP_CHECK_ARG(dout && out, "%s: dout and out must not be NULL", fn);
    FSDP_CHECK_ARG(dinp != dout, "%s: dinp must not be dout (backward accumulates)", fn);
    #pragma omp parallel for if ((int64_t)N * C > MOE_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *dy = dout + (int64_t)n * C;
        const float *y = out + (int64_t)n * C;
        float *dx = dinp + (int64_t)n * C;
        double dot = 0.0;
        for (int c = 0; c < C; c++) dot += (double)dy[c] * y[c];
        const float d = (float)dot;
        for (int c = 0; c < C; c++) dx[c] = fsdp_softmax_dinp(dx[c], y[c], dy[c], d);
    }
    return FSDP_OK;
}

/* ---- per-row scale -------------------------------------------------------- */

int fsdp_row_scale_forward_cpu(float *out, const float *inp, const float *scale, int N, int C) {
    const char *fn = "fsdp_row_scale_forward_cpu";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && inp && scale, "%s: out, inp and scale must not be NULL", fn);
    #pragma omp parallel for if ((int64_t)N * C > MOE_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float s = scale[n];
        const float *x = inp + (int64_t)n * C;
        float *y = out + (int64_t)n * C;
        for (int c = 0; c < C; c++) y[c] = x[c] * s;
    }
    return FSDP_OK;
}

/* dinp[n,:] += dout[n,:] * scale[n]; dscale[n] += <dout[n,:], inp[n,:]> */
int fsdp_row_scale_backward_cpu(float *dinp, float *dscale, const float *dout, const float *inp,
                                const float *scale, int N, int C) {
    const char *fn = "fsdp_row_scale_backward_cpu";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    FSDP_CHECK_ARG(!dinp || scale, "%s: scale must not be NULL when dinp is wanted", fn);
    FSDP_CHECK_ARG(!dscale || inp, "%s: inp must not be NULL when dscale is wanted", fn);
    FSDP_CHECK_ARG(!dinp || dinp != dout, "%s: dinp must not be dout (backward accumulates)", fn);
    #pragma omp parallel for if ((int64_t)N * C > MOE_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *dy = dout + (int64_t)n * C;
        if (dinp) {
            const float s = scale[n];
            float *dx = dinp + (int64_t)n * C;
            for (int c = 0; c < C; c++) dx[c] = fsdp_row_scale_dinp(dx[c], dy[c], s);
        }
        if (dscale) {
            const float *x = inp + (int64_t)n * C;
            double dot = 0.0;
            for (int c = 0; c < C; c++) dot += (double)dy[c] * x[c];
            dscale[n] += (float)dot;
        }
    }
    return FSDP_OK;
}

/* ---- top-k ---------------------------------------------------------------- */

int fsdp_topk_forward_cpu(float *values, int32_t *indices, const float *inp, int N, int C, int K) {
    const char *fn = "fsdp_topk_forward_cpu";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(K > 0 && K <= C, "%s: K (%d) must be in [1, C = %d]", fn, K, C);
    FSDP_CHECK_ARG(values && indices && inp, "%s: values, indices and inp must not be NULL", fn);
    #pragma omp parallel for if ((int64_t)N * C > MOE_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (int64_t)n * C;
        float *v = values + (int64_t)n * K;
        int32_t *ix = indices + (int64_t)n * K;
        /* keep the best K seen so far, sorted descending; a later column
         * enters only when it ranks strictly before the last kept one, so
         * equal values keep the lower column first */
        int kept = 0;
        for (int c = 0; c < C; c++) {
            if (kept == K && !fsdp_topk_ranks_before(x[c], v[K - 1])) continue;
            int j = kept < K ? kept++ : K - 1;
            while (j > 0 && fsdp_topk_ranks_before(x[c], v[j - 1])) {
                v[j] = v[j - 1];
                ix[j] = ix[j - 1];
                j--;
            }
            v[j] = x[c];
            ix[j] = c;
        }
    }
    return FSDP_OK;
}

/* dinp[n, indices[n,j]] += dvalues[n,j]; no gradient flows to the indices */
int fsdp_topk_backward_cpu(float *dinp, const float *dvalues, const int32_t *indices, int N, int C,
                           int K) {
    const char *fn = "fsdp_topk_backward_cpu";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(K > 0 && K <= C, "%s: K (%d) must be in [1, C = %d]", fn, K, C);
    if (!dinp) return FSDP_OK;
    FSDP_CHECK_ARG(dvalues && indices, "%s: dvalues and indices must not be NULL", fn);
    for (int64_t i = 0; i < (int64_t)N * K; i++)
        FSDP_CHECK_ARG(indices[i] >= 0 && indices[i] < C,
                       "%s: indices[%lld] = %d is outside [0, %d)", fn, (long long)i,
                       (int)indices[i], C);
    #pragma omp parallel for if ((int64_t)N * K > MOE_PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *dx = dinp + (int64_t)n * C;
        for (int j = 0; j < K; j++) dx[indices[(int64_t)n * K + j]] += dvalues[(int64_t)n * K + j];
    }
    return FSDP_OK;
}
