/* add_rmsnorm_cuda.cu - a residual add fused with the RMSNorm that follows
 * it (add_rmsnorm_cpu.c is the reference): one block per row reads a and b
 * once, writes sum = a + b, and normalizes from the values it holds, where
 * the unfused pair reads the row three times. The block size, the sum of
 * squares and the formulas (norm_math.h) are rmsnorm_cuda.cu's, so the
 * result has the bits of fsdp_add_cuda followed by fsdp_rmsnorm_forward_cuda. */
#include "cuda_common.cuh"
#include "norm_math.h"

enum { ADD_NORM_MAX_THREADS = 512, ADD_NORM_PER_THREAD = 16 }; /* rows up to 8192 channels kept in registers */

/* ---- kernels ------------------------------------------------------------ */

static __global__ void add_rmsnorm_forward_kernel(float *sum, float *out, float *rstd, const float *a,
                                                  const float *b, const float *weight, int C, float eps) {
    const int64_t row = blockIdx.x;
    const float *ra = a + row * C, *rb = b + row * C;
    float *rs = sum + row * C, *y = out + row * C;
    float held[ADD_NORM_PER_THREAD];
    float ss = 0.0f;
    int k = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x, k++) {
        const float x = ra[c] + rb[c];
        rs[c] = x;
        if (k < ADD_NORM_PER_THREAD) held[k] = x;
        ss += x * x;
    }
    const float s = fsdp_norm_rstd(fsdp_block_sum(ss) / C, eps);
    k = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x, k++) {
        const float x = k < ADD_NORM_PER_THREAD ? held[k] : rs[c];
        y[c] = x * s * weight[c];
    }
    if (threadIdx.x == 0) rstd[row] = s;
}

/* ---- launchers ---------------------------------------------------------- */

/* rmsnorm_cuda.cu's threads per row (the same reduction shape, the same bits) */
static int row_threads(int C) { return C >= ADD_NORM_MAX_THREADS ? ADD_NORM_MAX_THREADS : (C + 31) / 32 * 32; }

int fsdp_add_rmsnorm_forward_cuda(float *sum, float *out, float *rstd, const float *a, const float *b,
                                  const float *weight, int N, int C, float eps, fsdp_stream stream) {
    const char *fn = "fsdp_add_rmsnorm_forward_cuda";
    FSDP_CHECK_ARG(N > 0 && C > 0, "%s: N (%d) and C (%d) must be positive", fn, N, C);
    FSDP_CHECK_ARG(sum && out && rstd && a && b && weight, "%s: a pointer argument is NULL", fn);
    FSDP_CHECK_ARG(eps >= 0.0f, "%s: eps must be >= 0, got %g", fn, eps);
    FSDP_LAUNCH(add_rmsnorm_forward_kernel, N, row_threads(C), 0, stream, sum, out, rstd, a, b, weight, C, eps);
    return fsdp_cuda_launched(fn);
}
