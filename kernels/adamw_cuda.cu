/* adamw_cuda.cu - fused AdamW over a flat f32 segment (a rank's shard), one
 * thread per element; the update is adamw_math.h's, the CPU kernel's. */
#include "cuda_common.cuh"
#include "adamw_host.h"
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
    float bc1 = 1, bc2 = 1;
    int rc = fsdp_adamw_prepare(fn, param, m, v, grad, n, beta1, beta2, t, &bc1, &bc2);
    if (rc || n == 0) return rc;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(adamw_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, param, m, v, grad, n, lr,
                beta1, beta2, eps, weight_decay, grad_scale, bc1, bc2);
    return fsdp_cuda_launched(fn);
}
