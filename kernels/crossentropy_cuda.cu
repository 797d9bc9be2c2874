/* crossentropy_cuda.cu - fused softmax cross-entropy over V classes, one
 * block per row of logits [N, V]. Forward makes one pass over the row with
 * an online max and sum (each thread keeps the running max m and the sum s
 * of exp(x - m) of its elements; pairs combine exactly like partial
 * softmaxes), saves lse and writes loss = lse - logit[target]. Rows whose
 * target is ignore_index get loss 0 and no gradient; a target outside
 * [0, V) gives a NaN loss and no gradient (checked here, on the device).
 * Exponentials are exp_math.h's fsdp_expf, as in the CPU kernel. The
 * in-place kernel (forward and backward of a chunk of the LM head at once)
 * takes its per-element gradient from crossentropy_math.h. */
#include "cuda_common.cuh"
#include "exp_math.h"
#include "crossentropy_math.h"

/* ---- kernels ------------------------------------------------------------ */

/* (m, s) += (m2, s2): both describe sum exp(x - m) over disjoint sets */
static __device__ __forceinline__ void lse_combine(float &m, float &s, float m2, float s2) {
    const float mx = fmaxf(m, m2);
    if (mx == -INFINITY) return; /* both sets empty */
    s = s * fsdp_expf(m - mx) + s2 * fsdp_expf(m2 - mx);
    m = mx;
}

/* log-sum-exp of the block's (m, s) pairs; the result of thread 0 is handed
 * to every thread (fused multiply-adds can make the two sides of a shuffle
 * round differently, so lanes are not relied on to agree) */
static __device__ inline float block_lse(float m, float s) {
    __shared__ float part_m[32], part_s[32], result;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(FSDP_FULL_MASK, m, o);
        const float s2 = __shfl_xor_sync(FSDP_FULL_MASK, s, o);
        lse_combine(m, s, m2, s2);
    }
    if (lane == 0) {
        part_m[warp] = m;
        part_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        const bool have = lane < (int)blockDim.x / 32;
        m = have ? part_m[lane] : -INFINITY;
        s = have ? part_s[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            const float m2 = __shfl_xor_sync(FSDP_FULL_MASK, m, o);
            const float s2 = __shfl_xor_sync(FSDP_FULL_MASK, s, o);
            lse_combine(m, s, m2, s2);
        }
        if (lane == 0) result = m + logf(s);
    }
    __syncthreads();
    return result;
}

static __global__ void crossentropy_forward_kernel(float *loss, float *lse, const float *logits,
                                                   const int32_t *targets, int V,
                                                   int ignore_index) {
    const int64_t row = blockIdx.x;
    const float *x = logits + row * V;
    /* 1. this thread's running max and sum of exp(x - max) */
    float m = -INFINITY, s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float xj = x[j];
        if (xj > m) {
            s = fsdp_fma(s, fsdp_expf(m - xj), 1.0f);
            m = xj;
        } else if (!(xj == -INFINITY && m == -INFINITY)) { /* -inf logits add 0, not NaN */
            s += fsdp_expf(xj - m);
        }
    }
    /* 2. combined over the block */
    const float row_lse = block_lse(m, s);
    /* 3. loss = lse - logit of the target */
    if (threadIdx.x == 0) {
        const int32_t t = targets[row];
        lse[row] = row_lse;
        loss[row] = t == ignore_index ? 0.0f : t >= 0 && t < V ? row_lse - x[t] : NAN;
    }
}

/* dlogits[n,:] += dloss[n] * (softmax - onehot(target)), one block per row */
static __global__ void crossentropy_backward_kernel(float *dlogits, const float *dloss,
                                                    const float *logits, const float *lse,
                                                    const int32_t *targets, int V,
                                                    int ignore_index) {
    const int64_t row = blockIdx.x;
    const int32_t t = targets[row];
    if (t == ignore_index || t < 0 || t >= V) return; /* the whole block */
    const float *x = logits + row * V;
    float *dx = dlogits + row * V;
    const float d = dloss[row], row_lse = lse[row];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = fsdp_fma(d, fsdp_expf(x[j] - row_lse), dx[j]);
        if (j == t) g -= d;
        dx[j] = g;
    }
}

/* forward and backward of a row at once (ops.linear_cross_entropy's chunks):
 * loss and lse as the forward kernel writes them, then the row of logits
 * replaced by softmax - onehot(target); ignored rows become zeros. Every
 * thread reads the target's logit before the block's reduction, whose
 * barrier orders those reads before any write. */
static __global__ void crossentropy_inplace_kernel(float *loss, float *lse, float *logits,
                                                   const int32_t *targets, int V,
                                                   int ignore_index) {
    const int64_t row = blockIdx.x;
    float *x = logits + row * V;
    const int32_t t = targets[row];
    if (t == ignore_index || t < 0 || t >= V) { /* the whole block */
        for (int j = threadIdx.x; j < V; j += blockDim.x) x[j] = 0.0f;
        if (threadIdx.x == 0) {
            loss[row] = t == ignore_index ? 0.0f : NAN;
            if (lse) lse[row] = 0.0f;
        }
        return;
    }
    const float xt = x[t];
    /* 1. this thread's running max and sum of exp(x - max) */
    float m = -INFINITY, s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float xj = x[j];
        if (xj > m) {
            s = fsdp_fma(s, fsdp_expf(m - xj), 1.0f);
            m = xj;
        } else if (!(xj == -INFINITY && m == -INFINITY)) {
            s += fsdp_expf(xj - m);
        }
    }
    /* 2. combined over the block (its barriers order the reads above
     * before the writes below) */
    const float row_lse = block_lse(m, s);
    if (threadIdx.x == 0) {
        loss[row] = row_lse - xt;
        if (lse) lse[row] = row_lse;
    }
    /* 3. the row becomes its gradient */
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float p = fsdp_crossentropy_prob(x[j], row_lse);
        x[j] = j == t ? fsdp_crossentropy_target_grad(p) : p;
    }
}

/* ---- launchers ---------------------------------------------------------- */

/* threads per row: V rounded up to a warp, at most 1024 */
static int row_threads(int V) { return V >= 1024 ? 1024 : (V + 31) / 32 * 32; }

int fsdp_crossentropy_forward_cuda(float *loss, float *lse, const float *logits,
                                   const int32_t *targets, int N, int V, int ignore_index,
                                   fsdp_stream stream) {
    const char *fn = "fsdp_crossentropy_forward_cuda";
    FSDP_CHECK_ARG(loss && lse, "%s: loss or lse is NULL", fn);
    FSDP_CHECK_ARG(logits && targets, "%s: logits or targets is NULL", fn);
    FSDP_CHECK_ARG(N > 0 && V > 0, "%s: N (%d) and V (%d) must be positive", fn, N, V);
    FSDP_LAUNCH(crossentropy_forward_kernel, N, row_threads(V), 0, stream, loss, lse, logits, targets,
                V, ignore_index);
    return fsdp_cuda_launched(fn);
}

int fsdp_crossentropy_backward_cuda(float *dlogits, const float *dloss, const float *logits,
                                    const float *lse, const int32_t *targets, int N, int V,
                                    int ignore_index, fsdp_stream stream) {
    const char *fn = "fsdp_crossentropy_backward_cuda";
    FSDP_CHECK_ARG(dlogits && dloss, "%s: dlogits or dloss is NULL", fn);
    FSDP_CHECK_ARG(logits && lse && targets, "%s: logits, lse or targets is NULL", fn);
    FSDP_CHECK_ARG(N > 0 && V > 0, "%s: N (%d) and V (%d) must be positive", fn, N, V);
    FSDP_LAUNCH(crossentropy_backward_kernel, N, row_threads(V), 0, stream, dlogits, dloss, logits,
                lse, targets, V, ignore_index);
    return fsdp_cuda_launched(fn);
}

int fsdp_crossentropy_inplace_cuda(float *loss, float *lse, float *logits, const int32_t *targets,
                                   int N, int V, int ignore_index, fsdp_stream stream) {
    const char *fn = "fsdp_crossentropy_inplace_cuda";
    FSDP_CHECK_ARG(loss && logits && targets, "%s: loss, logits or targets is NULL", fn);
    FSDP_CHECK_ARG(N > 0 && V > 0, "%s: N (%d) and V (%d) must be positive", fn, N, V);
    FSDP_LAUNCH(crossentropy_inplace_kernel, N, row_threads(V), 0, stream, loss, lse, logits, targets, V,
                ignore_index);
    return fsdp_cuda_launched(fn);
}
