/* rmsnorm_cuda.cu - RMSNorm over the last dimension of [N, C] rows (Llama):
 * out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps), forward saving
 * rstd. One block per row for the statistics and the input gradient; the
 * weight gradient sums over rows in 32 x 32 blocks. Formulas: norm_math.h. */
#include "cuda_common.cuh"
#include "norm_math.h"

/* ---- kernels ------------------------------------------------------------ */

static __global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp,
                                              const float *weight, int C, float eps) {
    const int64_t row = blockIdx.x;
    const float *x = inp + row * C;
    float *y = out + row * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += x[c] * x[c];
    const float s = fsdp_norm_rstd(fsdp_block_sum(ss) / C, eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x) y[c] = x[c] * s * weight[c];
    if (threadIdx.x == 0) rstd[row] = s;
}

/* dx += rstd * (dnorm - norm * <dnorm * norm>), one block per row */
static __global__ void rmsnorm_backward_input_kernel(float *dinp, const float *dout,
                                                     const float *inp, const float *weight,
                                                     const float *rstd, int C) {
    const int64_t row = blockIdx.x;
    const float *x = inp + row * C, *dy = dout + row * C;
    float *dx = dinp + row * C;
    const float s = rstd[row];
    float sum = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += dy[c] * weight[c] * x[c] * s;
    const float mean_dnorm_norm = fsdp_block_sum(sum) / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dx[c] += fsdp_norm_dinp(dy[c] * weight[c], x[c] * s, s, 0.0f, mean_dnorm_norm);
}

/* dweight += sum_n dout * x * rstd; block (32, 32) per 32 channels */
static __global__ void rmsnorm_backward_weight_kernel(float *dweight, const float *dout,
                                                      const float *inp, const float *rstd, int N,
                                                      int C) {
    const int c = blockIdx.x * 32 + threadIdx.x;
    float dw = 0.0f;
    if (c < C)
        for (int n = threadIdx.y; n < N; n += 32)
            dw += dout[(int64_t)n * C + c] * inp[(int64_t)n * C + c] * rstd[n];
    dw = fsdp_tile_colsum(dw);
    if (threadIdx.y == 0 && c < C) dweight[c] += dw;
}

/* ---- launchers ---------------------------------------------------------- */

static int row_threads(int C) { return C >= 512 ? 512 : (C + 31) / 32 * 32; }

static int check_dims(const char *fn, int N, int C) {
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    return FSDP_OK;
}

int fsdp_rmsnorm_forward_cuda(float *out, float *rstd, const float *inp, const float *weight,
                              int N, int C, float eps, fsdp_stream stream) {
    const char *fn = "fsdp_rmsnorm_forward_cuda";
    int rc = check_dims(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && rstd && inp && weight,
                   "%s: out, rstd, inp and weight must not be NULL", fn);
    FSDP_CHECK_ARG(eps >= 0.0f, "%s: eps must be >= 0, got %g", fn, eps);
    FSDP_LAUNCH(rmsnorm_forward_kernel, N, row_threads(C), 0, stream, out, rstd, inp, weight, C, eps);
    return fsdp_cuda_launched(fn);
}

int fsdp_rmsnorm_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                               const float *weight, const float *rstd, int N, int C,
                               fsdp_stream stream) {
    const char *fn = "fsdp_rmsnorm_backward_cuda";
    int rc = check_dims(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout && inp && rstd, "%s: dout, inp and rstd must not be NULL", fn);
    FSDP_CHECK_ARG(!dinp || weight, "%s: weight must not be NULL when dinp is wanted", fn);
    if (dinp) {
        FSDP_LAUNCH(rmsnorm_backward_input_kernel, N, row_threads(C), 0, stream, dinp, dout, inp,
                    weight, rstd, C);
        if ((rc = fsdp_cuda_launched(fn))) return rc;
    }
    if (dweight) {
        FSDP_LAUNCH(rmsnorm_backward_weight_kernel, (C + 31) / 32, dim3(32, 32), 0, stream, dweight,
                    dout, inp, rstd, N, C);
        if ((rc = fsdp_cuda_launched(fn))) return rc;
    }
    return FSDP_OK;
}
