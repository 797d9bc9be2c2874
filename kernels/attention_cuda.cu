/* attention_cuda.cu - plain causal self-attention with grouped-query heads
 * and an optional sliding window, in f32 (fsdp_attention_*_f32_cuda): what
 * engine/cuda/policy_cuda.cu runs in f32, with a window, and for shapes
 * cuDNN's flash attention does not take. Layouts, masking and the saved lse are
 * those of attention_cpu.c (attention_math.h decides which keys a query sees).
 *
 * One warp per query row (b, h, t), rows ordered with t fastest so the warps
 * of a block read the same keys. Keys go by in chunks of 32: lane j scores
 * key j0 + j, the warp takes the chunk's max and sum (an online softmax, no
 * score row in memory), then every lane adds the chunk's values for its own
 * head dims d = lane, lane + 32, ... (HD <= 256).
 *
 * Exponentials are exp_math.h's fsdp_expf, as on the CPU; scores are
 * soft-capped (softcap > 0) by attention_math.h's fsdp_attention_score, and
 * backward multiplies each score's gradient by the cap's derivative.
 *
 * Packed rows (fsdp_attention_packed_*_cuda): pos [B, T] gives each token's
 * position in its own sample, and a query's first key is the later of its
 * sample's start and the window's (attention_math.h, as on the CPU); the
 * positions are checked on the host before they are uploaded (ops.attention
 * or the loader that made them), the kernels only keep every index in range.
 *
 * Backward needs no atomics: D = dout . out per row first, then one warp per
 * query row accumulates dq, and one warp per key row (b, kv head g, j) walks
 * the queries of all heads of g that see key j and accumulates dk and dv. */
#include "cuda_common.cuh"
#include "attention_math.h"
#include "exp_math.h"

enum {
    ATT_WARPS = 4,   /* warps (rows) per block */
    ATT_DIMS = 8,    /* head dims per lane: HD <= 32 * ATT_DIMS */
    ATT_MAX_HD = 32 * ATT_DIMS
};

/* ---- kernels ------------------------------------------------------------ */

/* query t's first key: the window's, or, packed, not before its sample's
 * start (a position out of range is clamped so no index leaves the row) */
static __device__ __forceinline__ int first_key(const int32_t *pos, int64_t bT, int t, int window) {
    if (!pos) return fsdp_attention_first_key(t, window);
    int p = pos[bT + t];
    p = p < 0 ? 0 : (p > t ? t : p);
    return fsdp_attention_first_key_packed(t, window, p);
}

static __device__ __forceinline__ float dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y[d] for this lane's dims += alpha * x[d] */
static __device__ __forceinline__ void lane_axpy(float (&y)[ATT_DIMS], float alpha, const float *x,
                                                 int lane, int HD) {
    for (int i = 0; i < ATT_DIMS; i++)
        if (lane + 32 * i < HD) y[i] += alpha * x[lane + 32 * i];
}

static __global__ void attention_forward_kernel(float *out, float *lse, const float *q,
                                                const float *k, const float *v, const int32_t *pos,
                                                int B, int T, int NH, int NKV, int HD, int ldq,
                                                int ldk, int ldv, int window, float scale, float softcap) {
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * ATT_WARPS + threadIdx.x / 32; /* (b, h, t) */
    if (row >= (int64_t)B * NH * T) return;                                 /* whole warp */
    const int t = (int)(row % T), h = (int)(row / T % NH), b = (int)(row / T / NH);
    const int g = h / (NH / NKV);
    const int64_t bT = (int64_t)b * T;
    const float *qt = q + (bT + t) * ldq + (int64_t)h * HD;
    const float *kg = k + bT * ldk + (int64_t)g * HD; /* key j at kg + j*ldk */
    const float *vg = v + bT * ldv + (int64_t)g * HD;

    float acc[ATT_DIMS] = {0.0f};
    float m = -INFINITY, l = 0.0f; /* running max and sum of exp(score - m) */
    for (int j0 = first_key(pos, bT, t, window); j0 <= t; j0 += 32) {
        /* 1. scores of this chunk's keys, one per lane */
        const int j = j0 + lane;
        const float s = j <= t ? fsdp_attention_score(scale * dot(qt, kg + (int64_t)j * ldk, HD), softcap)
                               : -INFINITY;
        /* 2. online softmax: rescale what we have to the new max */
        const float m_new = fmaxf(m, fsdp_warp_max(s));
        const float corr = fsdp_expf(m - m_new);
        const float p = j <= t ? fsdp_expf(s - m_new) : 0.0f;
        l = l * corr + fsdp_warp_sum(p);
        for (int i = 0; i < ATT_DIMS; i++) acc[i] *= corr;
        /* 3. acc += p_j v_j over the chunk, p_j broadcast from lane j */
        const int nk = t - j0 + 1 < 32 ? t - j0 + 1 : 32;
        for (int jj = 0; jj < nk; jj++)
            lane_axpy(acc, __shfl_sync(FSDP_FULL_MASK, p, jj), vg + (int64_t)(j0 + jj) * ldv, lane, HD);
        m = m_new;
    }
    float *ot = out + ((bT + t) * NH + h) * HD;
    const float inv = 1.0f / l;
    for (int i = 0; i < ATT_DIMS; i++)
        if (lane + 32 * i < HD) ot[lane + 32 * i] = acc[i] * inv;
    if (lane == 0) lse[((int64_t)b * NH + h) * T + t] = m + logf(l);
}

/* D[b, h, t] = dout . out, the softmax backward's row term */
static __global__ void attention_rowdot_kernel(float *D, const float *dout, const float *out, int B,
                                               int T, int NH, int HD) {
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * ATT_WARPS + threadIdx.x / 32; /* (b, h, t) */
    if (row >= (int64_t)B * NH * T) return;
    const int t = (int)(row % T), h = (int)(row / T % NH), b = (int)(row / T / NH);
    const int64_t at = (((int64_t)b * T + t) * NH + h) * HD;
    float s = 0.0f;
    for (int d = lane; d < HD; d += 32) s += dout[at + d] * out[at + d];
    s = fsdp_warp_sum(s);
    if (lane == 0) D[row] = s;
}

/* dq[t] += scale * sum_j dS_j k_j, dS_j = P_j (dout . v_j - D) (times the
 * cap's derivative with soft-capping); one warp per query row */
static __global__ void attention_dq_kernel(float *dq, const float *dout, const float *q,
                                           const float *k, const float *v, const float *lse,
                                           const float *D, const int32_t *pos, int B, int T, int NH,
                                           int NKV, int HD, int ldq, int ldk, int ldv, int window,
                                           float scale, float softcap) {
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * ATT_WARPS + threadIdx.x / 32;
    if (row >= (int64_t)B * NH * T) return;
    const int t = (int)(row % T), h = (int)(row / T % NH), b = (int)(row / T / NH);
    const int g = h / (NH / NKV);
    const int64_t bT = (int64_t)b * T;
    const float *qt = q + (bT + t) * ldq + (int64_t)h * HD;
    const float *dot_t = dout + ((bT + t) * NH + h) * HD;
    const float *kg = k + bT * ldk + (int64_t)g * HD;
    const float *vg = v + bT * ldv + (int64_t)g * HD;
    const float row_lse = lse[row], row_D = D[row];

    float acc[ATT_DIMS] = {0.0f};
    for (int j0 = first_key(pos, bT, t, window); j0 <= t; j0 += 32) {
        const int j = j0 + lane;
        float ds = 0.0f;
        if (j <= t) {
            const float sd = scale * dot(qt, kg + (int64_t)j * ldk, HD);
            const float p = fsdp_expf(fsdp_attention_score(sd, softcap) - row_lse);
            ds = p * (dot(dot_t, vg + (int64_t)j * ldv, HD) - row_D) * fsdp_softcap_grad(sd, softcap);
        }
        const int nk = t - j0 + 1 < 32 ? t - j0 + 1 : 32;
        for (int jj = 0; jj < nk; jj++)
            lane_axpy(acc, __shfl_sync(FSDP_FULL_MASK, ds, jj), kg + (int64_t)(j0 + jj) * ldk, lane, HD);
    }
    float *dqt = dq + (bT + t) * ldq + (int64_t)h * HD;
    for (int i = 0; i < ATT_DIMS; i++)
        if (lane + 32 * i < HD) dqt[lane + 32 * i] += scale * acc[i];
}

/* dv[j] += sum P dout_t, dk[j] += scale * sum dS q_t over the queries (of
 * every head of kv head g) that see key j; one warp per key row (b, g, j) */
static __global__ void attention_dkdv_kernel(float *dk, float *dv, const float *dout,
                                             const float *q, const float *k, const float *v,
                                             const float *lse, const float *D, const int32_t *pos,
                                             int B, int T, int NH, int NKV, int HD, int ldq, int ldk,
                                             int ldv, int window, float scale, float softcap) {
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * ATT_WARPS + threadIdx.x / 32; /* (b, g, j) */
    if (row >= (int64_t)B * NKV * T) return;
    const int j = (int)(row % T), g = (int)(row / T % NKV), b = (int)(row / T / NKV);
    const int group = NH / NKV;
    const int64_t bT = (int64_t)b * T;
    const float *kj = k + (bT + j) * ldk + (int64_t)g * HD;
    const float *vj = v + (bT + j) * ldv + (int64_t)g * HD;
    /* the last query that sees key j: the window's, and, packed, the last
     * token of key j's sample (the next position 0 starts another) */
    int last = window > 0 && j + window - 1 < T - 1 ? j + window - 1 : T - 1;
    if (pos) {
        int end = j;
        while (end < last && pos[bT + end + 1] != 0) end++;
        last = end;
    }

    float dk_acc[ATT_DIMS] = {0.0f}, dv_acc[ATT_DIMS] = {0.0f};
    for (int h = g * group; h < (g + 1) * group; h++) {
        const float *lse_h = lse + ((int64_t)b * NH + h) * T;
        const float *D_h = D + ((int64_t)b * NH + h) * T;
        for (int t0 = j; t0 <= last; t0 += 32) {
            /* lane i scores query t0 + i against key j */
            const int t = t0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t <= last && first_key(pos, bT, t, window) <= j) {
                const float *qt = q + (bT + t) * ldq + (int64_t)h * HD;
                const float *dot_t = dout + ((bT + t) * NH + h) * HD;
                const float sd = scale * dot(qt, kj, HD);
                p = fsdp_expf(fsdp_attention_score(sd, softcap) - lse_h[t]);
                ds = p * (dot(dot_t, vj, HD) - D_h[t]) * fsdp_softcap_grad(sd, softcap);
            }
            const int nq = last - t0 + 1 < 32 ? last - t0 + 1 : 32;
            for (int i = 0; i < nq; i++) {
                const float pi = __shfl_sync(FSDP_FULL_MASK, p, i);
                const float dsi = __shfl_sync(FSDP_FULL_MASK, ds, i);
                const int64_t ti = bT + t0 + i;
                lane_axpy(dv_acc, pi, dout + (ti * NH + h) * HD, lane, HD);
                lane_axpy(dk_acc, dsi, q + ti * ldq + (int64_t)h * HD, lane, HD);
            }
        }
    }
    float *dkj = dk ? dk + (bT + j) * ldk + (int64_t)g * HD : NULL;
    float *dvj = dv ? dv + (bT + j) * ldv + (int64_t)g * HD : NULL;
    for (int i = 0; i < ATT_DIMS; i++) {
        const int d = lane + 32 * i;
        if (d >= HD) continue;
        if (dkj) dkj[d] += scale * dk_acc[i];
        if (dvj) dvj[d] += dv_acc[i];
    }
}

/* decoding: the new keys and values into the caches, one thread per element */
static __global__ void attention_decode_store_kernel(float *kcache, float *vcache, const float *k,
                                                     const float *v, int B, int Tq, int pos,
                                                     int Tmax, int W, int ldk, int ldv) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)B * Tq * W) return;
    const int c = (int)(i % W);
    const int64_t row = i / W; /* b * Tq + t */
    const int t = (int)(row % Tq), b = (int)(row / Tq);
    const int64_t dst = ((int64_t)b * Tmax + pos + t) * W + c;
    kcache[dst] = k[row * ldk + c];
    vcache[dst] = v[row * ldv + c];
}

/* decoding: one thread per new query row (b, t, h), attention_math.h's row */
static __global__ void attention_decode_kernel(float *out, const float *kcache, const float *vcache,
                                               const float *q, int B, int Tq, int pos, int Tmax,
                                               int NH, int NKV, int HD, int ldq, int window,
                                               float scale, float softcap) {
    const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; /* (b, t, h) */
    if (row >= (int64_t)B * Tq * NH) return;
    const int h = (int)(row % NH), t = (int)(row / NH % Tq), b = (int)(row / NH / Tq);
    const int W = NKV * HD, at = pos + t;
    const int64_t cache0 = (int64_t)b * Tmax * W + (int64_t)(h / (NH / NKV)) * HD;
    fsdp_attention_decode_row(out + ((int64_t)b * Tq + t) * NH * HD + (int64_t)h * HD,
                              q + ((int64_t)b * Tq + t) * ldq + (int64_t)h * HD, kcache + cache0,
                              vcache + cache0, W, HD, fsdp_attention_first_key(at, window), at,
                              scale, softcap);
}

/* ---- launchers ---------------------------------------------------------- */

static int check_dims(const char *fn, int B, int T, int NH, int NKV, int HD, int ldq, int ldk,
                      int ldv) {
    FSDP_CHECK_ARG(B > 0 && T > 0, "%s: B (%d) and T (%d) must be positive", fn, B, T);
    FSDP_CHECK_ARG(NH > 0 && NKV > 0 && HD > 0, "%s: NH (%d), NKV (%d) and HD (%d) must be positive",
                   fn, NH, NKV, HD);
    FSDP_CHECK_ARG(NH % NKV == 0, "%s: NH (%d) must be a multiple of NKV (%d)", fn, NH, NKV);
    FSDP_CHECK_ARG(HD <= ATT_MAX_HD, "%s: HD (%d) is above this kernel's limit %d", fn, HD,
                   (int)ATT_MAX_HD);
    FSDP_CHECK_ARG(ldq >= NH * HD, "%s: ldq (%d) is less than NH*HD (%d)", fn, ldq, NH * HD);
    FSDP_CHECK_ARG(ldk >= NKV * HD, "%s: ldk (%d) is less than NKV*HD (%d)", fn, ldk, NKV * HD);
    FSDP_CHECK_ARG(ldv >= NKV * HD, "%s: ldv (%d) is less than NKV*HD (%d)", fn, ldv, NKV * HD);
    const int64_t blocks = ((int64_t)B * NH * T + ATT_WARPS - 1) / ATT_WARPS;
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    return FSDP_OK;
}

static unsigned row_blocks(int64_t rows) { return (unsigned)((rows + ATT_WARPS - 1) / ATT_WARPS); }

#define CHECK_PTR(fn, p) FSDP_CHECK_ARG((p) != NULL, "%s: %s is NULL", fn, #p)

/* softcap: 0 (none) or a positive finite cap */
static int check_softcap(const char *fn, float softcap) {
    FSDP_CHECK_ARG(softcap == 0.0f || (softcap > 0.0f && isfinite(softcap)),
                   "%s: softcap must be 0 (none) or a positive number, got %g", fn, (double)softcap);
    return FSDP_OK;
}

static int attention_forward(const char *fn, float *out, float *lse, const float *q, const float *k,
                             const float *v, const int32_t *pos, int B, int T, int NH, int NKV, int HD,
                             int ldq, int ldk, int ldv, int window, float scale, float softcap,
                             fsdp_stream stream) {
    CHECK_PTR(fn, out);
    CHECK_PTR(fn, lse);
    CHECK_PTR(fn, q);
    CHECK_PTR(fn, k);
    CHECK_PTR(fn, v);
    int rc = check_dims(fn, B, T, NH, NKV, HD, ldq, ldk, ldv);
    if (!rc) rc = check_softcap(fn, softcap);
    if (rc) return rc;
    FSDP_LAUNCH(attention_forward_kernel, row_blocks((int64_t)B * NH * T), 32 * ATT_WARPS, 0, stream,
                out, lse, q, k, v, pos, B, T, NH, NKV, HD, ldq, ldk, ldv, window, scale, softcap);
    return fsdp_cuda_launched(fn);
}

static int attention_backward(const char *fn, float *dq, float *dk, float *dv, const float *dout,
                              const float *q, const float *k, const float *v, const float *out,
                              const float *lse, const int32_t *pos, int B, int T, int NH, int NKV,
                              int HD, int ldq, int ldk, int ldv, int window, float scale,
                              float softcap, fsdp_stream stream) {
    CHECK_PTR(fn, dout);
    CHECK_PTR(fn, q);
    CHECK_PTR(fn, k);
    CHECK_PTR(fn, v);
    CHECK_PTR(fn, out);
    CHECK_PTR(fn, lse);
    int rc = check_dims(fn, B, T, NH, NKV, HD, ldq, ldk, ldv);
    if (!rc) rc = check_softcap(fn, softcap);
    if (rc) return rc;
    if (!dq && !dk && !dv) return FSDP_OK;

    const int64_t rows = (int64_t)B * NH * T;
    float *D = NULL;
    rc = fsdp_cuda_status(cudaMallocAsync((void **)&D, sizeof(float) * rows, stream), fn,
                          "cudaMallocAsync of the row terms");
    if (rc) return rc;
    FSDP_LAUNCH(attention_rowdot_kernel, row_blocks(rows), 32 * ATT_WARPS, 0, stream, D, dout, out, B,
                T, NH, HD);
    rc = fsdp_cuda_launched(fn);
    if (!rc && dq) {
        FSDP_LAUNCH(attention_dq_kernel, row_blocks(rows), 32 * ATT_WARPS, 0, stream, dq, dout, q, k,
                    v, lse, D, pos, B, T, NH, NKV, HD, ldq, ldk, ldv, window, scale, softcap);
        rc = fsdp_cuda_launched(fn);
    }
    if (!rc && (dk || dv)) {
        FSDP_LAUNCH(attention_dkdv_kernel, row_blocks((int64_t)B * NKV * T), 32 * ATT_WARPS, 0,
                    stream, dk, dv, dout, q, k, v, lse, D, pos, B, T, NH, NKV, HD, ldq, ldk, ldv,
                    window, scale, softcap);
        rc = fsdp_cuda_launched(fn);
    }
    cudaFreeAsync(D, stream);
    return rc;
}

int fsdp_attention_forward_f32_cuda(float *out, float *lse, const float *q, const float *k,
                                    const float *v, int B, int T, int NH, int NKV, int HD, int ldq,
                                    int ldk, int ldv, int window, float scale, float softcap,
                                    fsdp_stream stream) {
    return attention_forward("fsdp_attention_forward_f32_cuda", out, lse, q, k, v, NULL, B, T, NH, NKV,
                             HD, ldq, ldk, ldv, window, scale, softcap, stream);
}

int fsdp_attention_backward_f32_cuda(float *dq, float *dk, float *dv, const float *dout,
                                     const float *q, const float *k, const float *v, const float *out,
                                     const float *lse, int B, int T, int NH, int NKV, int HD, int ldq,
                                     int ldk, int ldv, int window, float scale, float softcap,
                                     fsdp_stream stream) {
    return attention_backward("fsdp_attention_backward_f32_cuda", dq, dk, dv, dout, q, k, v, out, lse,
                              NULL, B, T, NH, NKV, HD, ldq, ldk, ldv, window, scale, softcap, stream);
}

/* packed rows run in f32 whatever the compute dtype: cuDNN's SDPA here
 * takes no per-token sample boundaries */
int fsdp_attention_packed_forward_cuda(float *out, float *lse, const float *q, const float *k,
                                       const float *v, const int32_t *pos, int B, int T, int NH,
                                       int NKV, int HD, int ldq, int ldk, int ldv, int window,
                                       float scale, float softcap, fsdp_stream stream) {
    const char *fn = "fsdp_attention_packed_forward_cuda";
    CHECK_PTR(fn, pos);
    return attention_forward(fn, out, lse, q, k, v, pos, B, T, NH, NKV, HD, ldq, ldk, ldv, window,
                             scale, softcap, stream);
}

int fsdp_attention_packed_backward_cuda(float *dq, float *dk, float *dv, const float *dout,
                                        const float *q, const float *k, const float *v,
                                        const float *out, const float *lse, const int32_t *pos,
                                        int B, int T, int NH, int NKV, int HD, int ldq, int ldk,
                                        int ldv, int window, float scale, float softcap,
                                        fsdp_stream stream) {
    const char *fn = "fsdp_attention_packed_backward_cuda";
    CHECK_PTR(fn, pos);
    return attention_backward(fn, dq, dk, dv, dout, q, k, v, out, lse, pos, B, T, NH, NKV, HD, ldq,
                              ldk, ldv, window, scale, softcap, stream);
}

int fsdp_attention_decode_cuda(float *out, float *kcache, float *vcache, const float *q,
                               const float *k, const float *v, int B, int Tq, int pos, int Tmax,
                               int NH, int NKV, int HD, int ldq, int ldk, int ldv, int window,
                               float scale, float softcap, fsdp_stream stream) {
    const char *fn = "fsdp_attention_decode_cuda";
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
    const int threads = 128;
    const int64_t elems = (int64_t)B * Tq * NKV * HD, rows = (int64_t)B * Tq * NH;
    FSDP_CUDA_CHECK_GRID(fn, (elems + threads - 1) / threads);
    FSDP_LAUNCH(attention_decode_store_kernel, (unsigned)((elems + threads - 1) / threads), threads, 0,
                stream, kcache, vcache, k, v, B, Tq, pos, Tmax, NKV * HD, ldk, ldv);
    rc = fsdp_cuda_launched(fn);
    if (rc) return rc;
    FSDP_LAUNCH(attention_decode_kernel, (unsigned)((rows + threads - 1) / threads), threads, 0, stream,
                out, kcache, vcache, q, B, Tq, pos, Tmax, NH, NKV, HD, ldq, window, scale, softcap);
    return fsdp_cuda_launched(fn);
}
