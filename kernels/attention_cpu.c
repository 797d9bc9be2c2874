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
 * defined once in attention_math.h (causal, optional sliding window), and
 * so is a score's soft-capping (softcap > 0: Gemma 2's softcap *
 * tanh(score / softcap); backward then keeps the cap's derivative per score
 * in a third block).
 *
 * Blocked: a head's queries go in blocks of QBLOCK rows; a block sees the
 * keys from the first key of its first row to its last row, so the score
 * block S = scale Q K^T, its probabilities P and the products P V (forward)
 * or P^T dO, dS K, dS^T Q (backward) are small GEMMs, each computed only for
 * the keys the block can see (the causal triangle costs about half of the
 * square plus the diagonal blocks). Entries a row must not see are set to 0
 * in P and dS, so they add nothing.
 *
 * Threads never share an output row, so results do not depend on the thread
 * count: forward splits the (b, h) pairs, backward the (b, kv head) pairs,
 * each walking the query heads of its group and their blocks in order. The
 * GEMMs run inside the parallel region, where OpenBLAS's OpenMP build stays
 * on the calling thread. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "attention_math.h"
#include "exp_math.h"

/* query rows per block */
enum { QBLOCK = 64 };

/* dot product of two contiguous vectors (the reduction order is fixed by the
 * build, so it is the same on every call) */
static inline float dot(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* the first key query t of row bT sees: the window's, and with packed
 * sequences (pos, positions [B, T]) not before the start of its sample */
static inline int first_key(const int32_t *pos, int64_t bT, int t, int window) {
    return pos ? fsdp_attention_first_key_packed(t, window, pos[bT + t]) : fsdp_attention_first_key(t, window);
}

/* the columns of score row t (keys kfirst + c) that the query sees, its own
 * first key being `first` */
static inline void visible_cols(int first, int t, int kfirst, int *lo, int *hi) {
    *lo = first - kfirst;
    *hi = t - kfirst; /* inclusive */
}

/* positions of packed sequences: each row a run of samples, positions 0, 1,
 * ... restarting at 0 where a sample starts (so 0 <= pos[t] <= t and pos[t]
 * is 0 or pos[t-1] + 1) */
static int check_positions(const char *fn, const int32_t *pos, int B, int T) {
    if (!pos) return FSDP_OK;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const int32_t p = pos[(int64_t)b * T + t];
            const int ok = t == 0 ? p == 0 : (p == 0 || p == pos[(int64_t)b * T + t - 1] + 1);
            FSDP_CHECK_ARG(ok, "%s: positions[%d, %d] = %d: positions must count 0, 1, ... within each "
                           "packed sample (0 at a sample's start, else the previous one plus 1)",
                           fn, b, t, (int)p);
        }
    return FSDP_OK;
}

/* per-thread scratch from the caching pool: `per` floats for each thread */
static float *scratch_alloc(const char *fn, int nthreads, int64_t per, int64_t *nbytes) {
    *nbytes = (int64_t)nthreads * per * (int64_t)sizeof(float);
    float *p = fsdp_mem_alloc(FSDP_CPU, *nbytes);
    if (!p) fsdp_error(FSDP_ERR_OOM, "%s: no memory for %lld bytes of score blocks", fn,
                       (long long)*nbytes);
    return p;
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

/* softcap: 0 (none) or a positive finite cap */
static int check_softcap(const char *fn, float softcap) {
    FSDP_CHECK_ARG(softcap == 0.0f || (softcap > 0.0f && isfinite(softcap)),
                   "%s: softcap must be 0 (none) or a positive number, got %g", fn, (double)softcap);
    return FSDP_OK;
}

static int attention_forward(const char *fn, float *out, float *lse, const float *q, const float *k,
                             const float *v, const int32_t *pos, int B, int T, int NH, int NKV,
                             int HD, int ldq, int ldk, int ldv, int window, float scale,
                             float softcap) {
    CHECK_PTR(fn, out);
    CHECK_PTR(fn, lse);
    CHECK_PTR(fn, q);
    CHECK_PTR(fn, k);
    CHECK_PTR(fn, v);
    int rc = check_dims(fn, B, T, NH, NKV, HD, ldq, ldk, ldv);
    if (!rc) rc = check_softcap(fn, softcap);
    if (!rc) rc = check_positions(fn, pos, B, T);
    if (rc) return rc;

    /* one [QBLOCK, T] score block per thread */
    const int nthreads = omp_get_max_threads();
    const int64_t per = (int64_t)QBLOCK * T;
    int64_t nbytes;
    float *scratch = scratch_alloc(fn, nthreads, per, &nbytes);
    if (!scratch) return FSDP_ERR_OOM;
    const int group = NH / NKV;
    const int ldo = NH * HD;

#pragma omp parallel num_threads(nthreads)
    {
        float *S = scratch + omp_get_thread_num() * per;
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                const int64_t bT = (int64_t)b * T;
                const float *qh = q + bT * ldq + (int64_t)h * HD;   /* query t at qh + t*ldq */
                const float *kh = k + bT * ldk + (int64_t)(h / group) * HD;
                const float *vh = v + bT * ldv + (int64_t)(h / group) * HD;
                float *oh = out + bT * ldo + (int64_t)h * HD;
                float *lse_h = lse + ((int64_t)b * NH + h) * T;
                for (int t0 = 0; t0 < T; t0 += QBLOCK) {
                    const int rows = T - t0 < QBLOCK ? T - t0 : QBLOCK;
                    const int kfirst = first_key(pos, bT, t0, window); /* rows' first keys never decrease */
                    const int kn = t0 + rows - kfirst; /* keys kfirst .. t0+rows-1 */
                    /* 1. scaled scores of the block's queries against its keys */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kn, HD, scale,
                                qh + (int64_t)t0 * ldq, ldq, kh + (int64_t)kfirst * ldk, ldk,
                                0.0f, S, kn);
                    /* 2. each row: softmax over its visible keys (soft-capped
                     * first; relative to the max, so exp never overflows), 0
                     * elsewhere; keep the lse */
                    for (int i = 0; i < rows; i++) {
                        float *p = S + (int64_t)i * kn;
                        int lo, hi;
                        visible_cols(first_key(pos, bT, t0 + i, window), t0 + i, kfirst, &lo, &hi);
                        if (softcap > 0.0f)
                            for (int c = lo; c <= hi; c++) p[c] = fsdp_attention_score(p[c], softcap);
                        float maxs = -INFINITY;
                        for (int c = lo; c <= hi; c++) maxs = p[c] > maxs ? p[c] : maxs;
                        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                        for (int c = lo; c <= hi; c++) {
                            p[c] = fsdp_expf(p[c] - maxs);
                            sum += p[c];
                        }
                        lse_h[t0 + i] = maxs + logf(sum);
                        const float inv = 1.0f / sum;
                        for (int c = 0; c < lo; c++) p[c] = 0.0f;
                        for (int c = lo; c <= hi; c++) p[c] *= inv;
                        for (int c = hi + 1; c < kn; c++) p[c] = 0.0f;
                    }
                    /* 3. out = P @ V */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HD, kn, 1.0f, S,
                                kn, vh + (int64_t)kfirst * ldv, ldv, 0.0f,
                                oh + (int64_t)t0 * ldo, ldo);
                }
            }
        }
    }
    fsdp_mem_release(FSDP_CPU, scratch, nbytes);
    return FSDP_OK;
}

static int attention_backward(const char *fn, float *dq, float *dk, float *dv, const float *dout,
                              const float *q, const float *k, const float *v, const float *out,
                              const float *lse, const int32_t *pos, int B, int T, int NH, int NKV,
                              int HD, int ldq, int ldk, int ldv, int window, float scale,
                              float softcap) {
    CHECK_PTR(fn, dout);
    CHECK_PTR(fn, q);
    CHECK_PTR(fn, k);
    CHECK_PTR(fn, v);
    CHECK_PTR(fn, out);
    CHECK_PTR(fn, lse);
    int rc = check_dims(fn, B, T, NH, NKV, HD, ldq, ldk, ldv);
    if (!rc) rc = check_softcap(fn, softcap);
    if (!rc) rc = check_positions(fn, pos, B, T);
    if (rc) return rc;
    if (!dq && !dk && !dv) return FSDP_OK;

    /* per thread: a probability block P and a score-gradient block dS, and
     * with soft-capping the cap's derivative per score, G */
    const int nthreads = omp_get_max_threads();
    const int capped = softcap > 0.0f;
    const int64_t per = (capped ? 3 : 2) * (int64_t)QBLOCK * T;
    int64_t nbytes;
    float *scratch = scratch_alloc(fn, nthreads, per, &nbytes);
    if (!scratch) return FSDP_ERR_OOM;
    const int group = NH / NKV;
    const int ldo = NH * HD;

#pragma omp parallel num_threads(nthreads)
    {
        float *P = scratch + omp_get_thread_num() * per;
        float *dS = P + (int64_t)QBLOCK * T;
        float *G = capped ? dS + (int64_t)QBLOCK * T : NULL;
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
                    const float *qh = q + bT * ldq + (int64_t)h * HD;
                    const float *oh = out + bT * ldo + (int64_t)h * HD;
                    const float *doh = dout + bT * ldo + (int64_t)h * HD;
                    float *dqh = dq ? dq + bT * ldq + (int64_t)h * HD : NULL;
                    const float *lse_h = lse + ((int64_t)b * NH + h) * T;
                    for (int t0 = 0; t0 < T; t0 += QBLOCK) {
                        const int rows = T - t0 < QBLOCK ? T - t0 : QBLOCK;
                        const int kfirst = first_key(pos, bT, t0, window);
                        const int kn = t0 + rows - kfirst;
                        const float *kb = kg + (int64_t)kfirst * ldk;
                        const float *vb = vg + (int64_t)kfirst * ldv;
                        const float *qb = qh + (int64_t)t0 * ldq;
                        const float *dob = doh + (int64_t)t0 * ldo;
                        /* 1. the probabilities again, from the scores and the saved
                         * lse (with soft-capping: the cap's derivative into G) */
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kn, HD, scale,
                                    qb, ldq, kb, ldk, 0.0f, P, kn);
                        for (int i = 0; i < rows; i++) {
                            float *p = P + (int64_t)i * kn;
                            const float l = lse_h[t0 + i];
                            int lo, hi;
                            visible_cols(first_key(pos, bT, t0 + i, window), t0 + i, kfirst, &lo, &hi);
                            if (capped) {
                                float *gi = G + (int64_t)i * kn;
                                for (int c = 0; c < kn; c++) gi[c] = 1.0f;
                                for (int c = lo; c <= hi; c++) {
                                    gi[c] = fsdp_softcap_grad(p[c], softcap);
                                    p[c] = fsdp_attention_score(p[c], softcap);
                                }
                            }
                            for (int c = 0; c < lo; c++) p[c] = 0.0f;
#pragma omp simd
                            for (int c = lo; c <= hi; c++) p[c] = fsdp_expf(p[c] - l);
                            for (int c = hi + 1; c < kn; c++) p[c] = 0.0f;
                        }
                        /* 2. dv += P^T dout */
                        if (dvg)
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kn, HD, rows, 1.0f,
                                        P, kn, dob, ldo, 1.0f, dvg + (int64_t)kfirst * ldv, ldv);
                        if (!dqh && !dkg) continue;
                        /* 3. dP = dout V^T; dS = P (dP - D), D = dout . out per row
                         * (the softmax backward's row term sum_j P_j dP_j), times
                         * the cap's derivative G with soft-capping */
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kn, HD, 1.0f,
                                    dob, ldo, vb, ldv, 0.0f, dS, kn);
                        for (int i = 0; i < rows; i++) {
                            const float D = dot(dob + (int64_t)i * ldo, oh + (int64_t)(t0 + i) * ldo, HD);
                            const float *p = P + (int64_t)i * kn;
                            float *ds = dS + (int64_t)i * kn;
#pragma omp simd
                            for (int c = 0; c < kn; c++) ds[c] = p[c] * (ds[c] - D);
                            if (capped) {
                                const float *gi = G + (int64_t)i * kn;
                                for (int c = 0; c < kn; c++) ds[c] *= gi[c];
                            }
                        }
                        /* 4. dq += scale dS K;  dk += scale dS^T Q */
                        if (dqh)
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HD, kn, scale,
                                        dS, kn, kb, ldk, 1.0f, dqh + (int64_t)t0 * ldq, ldq);
                        if (dkg)
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kn, HD, rows, scale,
                                        dS, kn, qb, ldq, 1.0f, dkg + (int64_t)kfirst * ldk, ldk);
                    }
                }
            }
        }
    }
    fsdp_mem_release(FSDP_CPU, scratch, nbytes);
    return FSDP_OK;
}

int fsdp_attention_forward_cpu(float *out, float *lse, const float *q, const float *k,
                               const float *v, int B, int T, int NH, int NKV, int HD,
                               int ldq, int ldk, int ldv, int window, float scale, float softcap) {
    return attention_forward("fsdp_attention_forward_cpu", out, lse, q, k, v, NULL, B, T, NH, NKV,
                             HD, ldq, ldk, ldv, window, scale, softcap);
}

int fsdp_attention_backward_cpu(float *dq, float *dk, float *dv, const float *dout,
                                const float *q, const float *k, const float *v,
                                const float *out, const float *lse, int B, int T, int NH,
                                int NKV, int HD, int ldq, int ldk, int ldv, int window,
                                float scale, float softcap) {
    return attention_backward("fsdp_attention_backward_cpu", dq, dk, dv, dout, q, k, v, out, lse,
                              NULL, B, T, NH, NKV, HD, ldq, ldk, ldv, window, scale, softcap);
}

int fsdp_attention_packed_forward_cpu(float *out, float *lse, const float *q, const float *k,
                                      const float *v, const int32_t *pos, int B, int T, int NH,
                                      int NKV, int HD, int ldq, int ldk, int ldv, int window,
                                      float scale, float softcap) {
    const char *fn = "fsdp_attention_packed_forward_cpu";
    CHECK_PTR(fn, pos);
    return attention_forward(fn, out, lse, q, k, v, pos, B, T, NH, NKV, HD, ldq, ldk, ldv, window,
                             scale, softcap);
}

int fsdp_attention_packed_backward_cpu(float *dq, float *dk, float *dv, const float *dout,
                                       const float *q, const float *k, const float *v,
                                       const float *out, const float *lse, const int32_t *pos,
                                       int B, int T, int NH, int NKV, int HD, int ldq, int ldk,
                                       int ldv, int window, float scale, float softcap) {
    const char *fn = "fsdp_attention_packed_backward_cpu";
    CHECK_PTR(fn, pos);
    return attention_backward(fn, dq, dk, dv, dout, q, k, v, out, lse, pos, B, T, NH, NKV, HD, ldq,
                              ldk, ldv, window, scale, softcap);
}

int fsdp_attention_positions_check_cpu(const int32_t *pos, int B, int T) {
    const char *fn = "fsdp_attention_positions_check_cpu";
    CHECK_PTR(fn, pos);
    FSDP_CHECK_ARG(B > 0 && T > 0, "%s: B (%d) and T (%d) must be positive", fn, B, T);
    return check_positions(fn, pos, B, T);
}

/* Decoding with a KV cache: the keys and values of the Tq new positions
 * pos .. pos+Tq-1 of each sequence are stored into the caches, then every
 * new query attends over the cached keys it sees (causal from position 0,
 * the sliding window as in training). Caches are [B, Tmax, NKV*HD]. The
 * row math is attention_math.h's fsdp_attention_decode_row, shared with the
 * CUDA kernel; rows are independent, so any thread count gives the same
 * bits. No backward: this is generation. */
int fsdp_attention_decode_cpu(float *out, float *kcache, float *vcache, const float *q,
                              const float *k, const float *v, int B, int Tq, int pos, int Tmax,
                              int NH, int NKV, int HD, int ldq, int ldk, int ldv, int window,
                              float scale, float softcap) {
    const char *fn = "fsdp_attention_decode_cpu";
    CHECK_PTR(fn, out);
    CHECK_PTR(fn, kcache);
    CHECK_PTR(fn, vcache);
    CHECK_PTR(fn, q);
    CHECK_PTR(fn, k);
    CHECK_PTR(fn, v);
    int rc = check_dims(fn, B, Tq, NH, NKV, HD, ldq, ldk, ldv);
    if (!rc) rc = check_softcap(fn, softcap);
    if (rc) return rc;
    FSDP_CHECK_ARG(pos >= 0 && pos + Tq <= Tmax,
                   "%s: positions %d .. %d do not fit the cache of %d positions", fn, pos,
                   pos + Tq - 1, Tmax);
    const int W = NKV * HD, group = NH / NKV, ldo = NH * HD;
    /* 1. the new keys and values into the caches */
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tq; t++) {
            const int64_t src = (int64_t)b * Tq + t, dst = (int64_t)b * Tmax + pos + t;
            memcpy(kcache + dst * W, k + src * ldk, (size_t)W * sizeof(float));
            memcpy(vcache + dst * W, v + src * ldv, (size_t)W * sizeof(float));
        }
    /* 2. every new query row over the keys it sees */
#pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tq; t++)
            for (int h = 0; h < NH; h++) {
                const int at = pos + t;
                const int64_t cache0 = (int64_t)b * Tmax * W + (int64_t)(h / group) * HD;
                fsdp_attention_decode_row(out + ((int64_t)b * Tq + t) * ldo + (int64_t)h * HD,
                                          q + ((int64_t)b * Tq + t) * ldq + (int64_t)h * HD,
                                          kcache + cache0, vcache + cache0, W, HD,
                                          fsdp_attention_first_key(at, window), at, scale, softcap);
            }
    return FSDP_OK;
}
