/* attention_cpu.c - causal self-attention with grouped-query heads and an
 * optional sliding window, the CPU reference.
 *
 * Layouts (row-major, elements):
 *   q         [B, T, NH,  HD], token t of batch b at q + (b*T + t) * ldq
 *   k, v      [B, T, NKV, HD], token strides ldk, ldv
 *   out       [B, T, NH,  HD], contiguous
 *   lse       [B, NH, T], log-sum-exp of the scaled scores of each query row
 * The strides let q, k and v be column slices of one fused [B, T, 3C] qkv
 * buffer. dq, dk and dv have the layouts of q, k and v (same strides), so the
 * gradients can land in one fused dqkv buffer the same way.
 *
 * Query head h reads kv head h / (NH / NKV). Which keys a query sees is
 * defined once in attention_math.h (causal, optional sliding window).
 *
 * Threads never share an output row, so results do not depend on the thread
 * count: forward splits the (b, h) pairs, backward the (b, kv head) pairs,
 * each walking the query heads of its group in order. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "attention_math.h"

/* dot product of two contiguous vectors (the reduction order is fixed by the
 * build, so it is the same on every call) */
static inline float dot(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y += alpha * x over n contiguous floats; y and x never overlap here */
static inline void axpy(float *y, float alpha, const float *x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

/* argument checks common to forward and backward */
static int check_dims(const char *fn, int B, int T, int NH, int NKV, int HD, int ldq, int ldk,
                      int ldv) {
    FSDP_CHECK_ARG(B > 0 && T > 0, "%s: B (%d) and T (%d) must be positive", fn, B, T);
    FSDP_CHECK_ARG(NH > 0 && NKV > 0 && HD > 0, "%s: NH (%d), NKV (%d) and HD (%d) must be positive",
                   fn, NH, NKV, HD);
    FSDP_CHECK_ARG(NH % NKV == 0, "%s: NH (%d) must be a multiple of NKV (%d)", fn, NH, NKV);
    FSDP_CHECK_ARG(ldq >= NH * HD, "%s: ldq (%d) is less than NH*HD (%d)", fn, ldq, NH * HD);
    FSDP_CHECK_ARG(ldk >= NKV * HD, "%s: ldk (%d) is less than NKV*HD (%d)", fn, ldk, NKV * HD);
    FSDP_CHECK_ARG(ldv >= NKV * HD, "%s: ldv (%d) is less than NKV*HD (%d)", fn, ldv, NKV * HD);
    return FSDP_OK;
}

#define CHECK_PTR(fn, p) FSDP_CHECK_ARG((p) != NULL, "%s: %s is NULL", fn, #p)

int fsdp_attention_forward_cpu(float *out, float *lse, const float *q, const float *k,
                               const float *v, int B, int T, int NH, int NKV, int HD,
                               int ldq, int ldk, int ldv, int window, float scale) {
    const char *fn = "fsdp_attention_forward_cpu";
    CHECK_PTR(fn, out);
    CHECK_PTR(fn, lse);
    CHECK_PTR(fn, q);
    CHECK_PTR(fn, k);
    CHECK_PTR(fn, v);
    int rc = check_dims(fn, B, T, NH, NKV, HD, ldq, ldk, ldv);
    if (rc) return rc;

    /* one score row of T floats per thread */
    int nthreads = omp_get_max_threads();
    float *rows = malloc((size_t)nthreads * T * sizeof(float));
    if (!rows) return fsdp_error(FSDP_ERR_OOM, "%s: no memory for %d score rows of %d", fn, nthreads, T);
    const int group = NH / NKV;

#pragma omp parallel num_threads(nthreads)
    {
        float *p = rows + (size_t)omp_get_thread_num() * T;
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                const int64_t bT = (int64_t)b * T;
                const float *kh = k + bT * ldk + (int64_t)(h / group) * HD; /* key j at kh + j*ldk */
                const float *vh = v + bT * ldv + (int64_t)(h / group) * HD;
                float *lse_h = lse + ((int64_t)b * NH + h) * T;
                for (int t = 0; t < T; t++) {
                    const float *qt = q + (bT + t) * ldq + (int64_t)h * HD;
                    float *ot = out + ((bT + t) * NH + h) * HD;
                    const int first = fsdp_attention_first_key(t, window);

                    /* 1. scaled scores against the visible keys, and their max */
                    float maxs = -INFINITY;
                    for (int j = first; j <= t; j++) {
                        p[j] = scale * dot(qt, kh + (int64_t)j * ldk, HD);
                        if (p[j] > maxs) maxs = p[j];
                    }
                    /* 2. exponentiate relative to the max (no overflow) and sum */
                    float sum = 0.0f;
                    for (int j = first; j <= t; j++) {
                        p[j] = expf(p[j] - maxs);
                        sum += p[j];
                    }
                    lse_h[t] = maxs + logf(sum);
                    /* 3. out = normalized probabilities @ V */
                    const float inv = 1.0f / sum;
                    memset(ot, 0, (size_t)HD * sizeof(float));
                    for (int j = first; j <= t; j++) axpy(ot, p[j] * inv, vh + (int64_t)j * ldv, HD);
                }
            }
        }
    }
    free(rows);
    return FSDP_OK;
}

int fsdp_attention_backward_cpu(float *dq, float *dk, float *dv, const float *dout,
                                const float *q, const float *k, const float *v,
                                const float *out, const float *lse, int B, int T, int NH,
                                int NKV, int HD, int ldq, int ldk, int ldv, int window,
                                float scale) {
    const char *fn = "fsdp_attention_backward_cpu";
    CHECK_PTR(fn, dout);
    CHECK_PTR(fn, q);
    CHECK_PTR(fn, k);
    CHECK_PTR(fn, v);
    CHECK_PTR(fn, out);
    CHECK_PTR(fn, lse);
    int rc = check_dims(fn, B, T, NH, NKV, HD, ldq, ldk, ldv);
    if (rc) return rc;
    if (!dq && !dk && !dv) return FSDP_OK;

    /* one dq accumulator of HD floats per thread */
    int nthreads = omp_get_max_threads();
    float *accs = malloc((size_t)nthreads * HD * sizeof(float));
    if (!accs) return fsdp_error(FSDP_ERR_OOM, "%s: no memory for %d rows of %d", fn, nthreads, HD);
    const int group = NH / NKV;

#pragma omp parallel num_threads(nthreads)
    {
        float *dq_acc = accs + (size_t)omp_get_thread_num() * HD;
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int g = 0; g < NKV; g++) {
                /* this task owns dk, dv of kv head g and dq of its query heads */
                const int64_t bT = (int64_t)b * T;
                const float *kg = k + bT * ldk + (int64_t)g * HD;
                const float *vg = v + bT * ldv + (int64_t)g * HD;
                float *dkg = dk ? dk + bT * ldk + (int64_t)g * HD : NULL;
                float *dvg = dv ? dv + bT * ldv + (int64_t)g * HD : NULL;
                for (int h = g * group; h < (g + 1) * group; h++) {
                    const float *lse_h = lse + ((int64_t)b * NH + h) * T;
                    for (int t = 0; t < T; t++) {
                        const float *qt = q + (bT + t) * ldq + (int64_t)h * HD;
                        const float *ot = out + ((bT + t) * NH + h) * HD;
                        const float *dot_t = dout + ((bT + t) * NH + h) * HD;
                        const int first = fsdp_attention_first_key(t, window);

                        /* D = dout . out = sum_j P_j dP_j, the softmax backward's row term */
                        const float D = dot(dot_t, ot, HD);
                        memset(dq_acc, 0, (size_t)HD * sizeof(float));
                        for (int j = first; j <= t; j++) {
                            const float *kj = kg + (int64_t)j * ldk;
                            const float *vj = vg + (int64_t)j * ldv;
                            /* recompute the probability from the saved lse */
                            const float p = expf(scale * dot(qt, kj, HD) - lse_h[t]);
                            /* dP = dout . v_j; dS = P (dP - D) */
                            const float ds = p * (dot(dot_t, vj, HD) - D);
                            /* dv_j += P dout;  dk_j += scale dS q;  dq += scale dS k_j */
                            if (dvg) axpy(dvg + (int64_t)j * ldv, p, dot_t, HD);
                            if (dkg) axpy(dkg + (int64_t)j * ldk, scale * ds, qt, HD);
                            if (dq) axpy(dq_acc, ds, kj, HD);
                        }
                        if (dq) axpy(dq + (bT + t) * ldq + (int64_t)h * HD, scale, dq_acc, HD);
                    }
                }
            }
        }
    }
    free(accs);
    return FSDP_OK;
}
