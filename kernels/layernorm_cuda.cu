/* layernorm_cuda.cu - LayerNorm over the last dimension of [N, C] rows:
 * out = (x - mean) * rstd * weight + bias, forward saving mean and rstd.
 * One block per row for the row statistics and the input gradient; the
 * parameter gradients sum over rows in 32 x 32 blocks, one column of
 * channels per block column. The per-element formulas are norm_math.h's. */
#include "cuda_common.cuh"
#include "norm_math.h"

/* ---- kernels ------------------------------------------------------------ */

static __global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd,
                                                const float *inp, const float *weight,
                                                const float *bias, int C, float eps) {
    const int64_t row = blockIdx.x;
    const float *x = inp + row * C;
    float *y = out + row * C;
    /* mean, then variance around it (two passes: no cancellation) */
    float s = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += x[c];
    const float m = fsdp_block_sum(s) / C;
    float v = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) v += (x[c] - m) * (x[c] - m);
    const float r = fsdp_norm_rstd(fsdp_block_sum(v) / C, eps);
    /* normalize, scale, shift */
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y[c] = (x[c] - m) * r * weight[c] + (bias ? bias[c] : 0.0f);
    if (threadIdx.x == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

/* dx += rstd * (dnorm - <dnorm> - norm * <dnorm * norm>), one block per row */
static __global__ void layernorm_backward_input_kernel(float *dinp, const float *dout,
                                                       const float *inp, const float *weight,
                                                       const float *mean, const float *rstd, int C) {
    const int64_t row = blockIdx.x;
    const float *x = inp + row * C, *dy = dout + row * C;
    float *dx = dinp + row * C;
    const float m = mean[row], s = rstd[row];
    float sum_dnorm = 0.0f, sum_dnorm_norm = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const float dnorm = dy[c] * weight[c];
        sum_dnorm += dnorm;
        sum_dnorm_norm += dnorm * (x[c] - m) * s;
    }
    const float mean_dnorm = fsdp_block_sum(sum_dnorm) / C;
    const float mean_dnorm_norm = fsdp_block_sum(sum_dnorm_norm) / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dx[c] += fsdp_norm_dinp(dy[c] * weight[c], (x[c] - m) * s, s, mean_dnorm, mean_dnorm_norm);
}

/* dweight += sum_n dout * norm, dbias += sum_n dout; block (32, 32) per 32
 * channels, thread row y taking rows y, y+32, ... */
static __global__ void layernorm_backward_params_kernel(float *dweight, float *dbias,
                                                        const float *dout, const float *inp,
                                                        const float *mean, const float *rstd,
                                                        int N, int C) {
    const int c = blockIdx.x * 32 + threadIdx.x;
    float dw = 0.0f, db = 0.0f;
    if (c < C)
        for (int n = threadIdx.y; n < N; n += 32) {
            const float dy = dout[(int64_t)n * C + c];
            dw += dy * (inp[(int64_t)n * C + c] - mean[n]) * rstd[n];
            db += dy;
        }
    dw = fsdp_tile_colsum(dw);
    db = fsdp_tile_colsum(db);
    if (threadIdx.y == 0 && c < C) {
        if (dweight) dweight[c] += dw;
        if (dbias) dbias[c] += db;
    }
}

/* ---- launchers ---------------------------------------------------------- */

/* threads per row: C rounded up to a warp, at most 512 */
static int row_threads(int C) { return C >= 512 ? 512 : (C + 31) / 32 * 32; }

static int check_dims(const char *fn, int N, int C) {
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    return FSDP_OK;
}

int fsdp_layernorm_forward_cuda(float *out, float *mean, float *rstd, const float *inp,
                                const float *weight, const float *bias, int N, int C, float eps,
                                fsdp_stream stream) {
    const char *fn = "fsdp_layernorm_forward_cuda";
    int rc = check_dims(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && mean && rstd, "%s: out, mean and rstd must not be NULL", fn);
    FSDP_CHECK_ARG(inp && weight, "%s: inp and weight must not be NULL (bias may be)", fn);
    FSDP_CHECK_ARG(eps >= 0.0f, "%s: eps must be >= 0, got %g", fn, eps);
    FSDP_LAUNCH(layernorm_forward_kernel, N, row_threads(C), 0, stream, out, mean, rstd, inp, weight,
                bias, C, eps);
    return fsdp_cuda_launched(fn);
}

int fsdp_layernorm_backward_cuda(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, const float *mean,
                                 const float *rstd, int N, int C, fsdp_stream stream) {
    const char *fn = "fsdp_layernorm_backward_cuda";
    int rc = check_dims(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout && inp && mean && rstd,
                   "%s: dout, inp, mean and rstd must not be NULL", fn);
    FSDP_CHECK_ARG(!dinp || weight, "%s: weight must not be NULL when dinp is wanted", fn);
    if (dinp) {
        FSDP_LAUNCH(layernorm_backward_input_kernel, N, row_threads(C), 0, stream, dinp, dout, inp,
                    weight, mean, rstd, C);
        if ((rc = fsdp_cuda_launched(fn))) return rc;
    }
    if (dweight || dbias) {
        FSDP_LAUNCH(layernorm_backward_params_kernel, (C + 31) / 32, dim3(32, 32), 0, stream,
                    dweight, dbias, dout, inp, mean, rstd, N, C);
        if ((rc = fsdp_cuda_launched(fn))) return rc;
    }
    return FSDP_OK;
}
