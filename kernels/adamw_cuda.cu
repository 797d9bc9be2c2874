/* adamw_cuda.cu - fused AdamW over a flat f32 segment (a rank's shard), one
 * thread per element; the update is adamw_math.h's, the CPU kernel's. */
#include <math.h>
#include "cuda_common.cuh"
#include "adamw_math.h"

/* ---- kernels ------------------------------------------------------------ */

static __global__ void adamw_kernel(float *param, float *m, float *v, const float *grad, int64_t n,
                                    float lr, float beta1, float beta2, float eps,
                                    float weight_decay, float grad_scale, float bc1, float bc2) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        fsdp_adamw_update(&param[i], &m[i], &v[i], grad[i] * grad_scale, lr, beta1, beta2, eps,
                          weight_decay, bc1, bc2);
}

/* ---- launchers ---------------------------------------------------------- */

int fsdp_adamw_cuda(float *param, float *m, float *v, const float *grad, int64_t n, float lr,
                    float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                    int64_t t, fsdp_stream stream) {
    const char *fn = "fsdp_adamw_cuda";
    FSDP_CHECK_ARG(n >= 0, "%s: n (%lld) must not be negative", fn, (long long)n);
    if (n == 0) return FSDP_OK;
    FSDP_CHECK_ARG(param && m && v && grad, "%s: param, m, v or grad is NULL", fn);
    FSDP_CHECK_ARG(t >= 1, "%s: step t (%lld) must be >= 1", fn, (long long)t);
    FSDP_CHECK_ARG(beta1 >= 0.0f && beta1 < 1.0f, "%s: beta1 (%g) must be in [0, 1)", fn,
                   (double)beta1);
    FSDP_CHECK_ARG(beta2 >= 0.0f && beta2 < 1.0f, "%s: beta2 (%g) must be in [0, 1)", fn,
                   (double)beta2);
    /* bias corrections of step t, once, in double on the host (as the CPU) */
    const float bc1 = (float)(1.0 - pow((double)beta1, (double)t));
    const float bc2 = (float)(1.0 - pow((double)beta2, (double)t));
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(adamw_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, param, m, v, grad, n, lr,
                beta1, beta2, eps, weight_decay, grad_scale, bc1, bc2);
    return fsdp_cuda_launched(fn);
}
