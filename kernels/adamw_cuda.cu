/* adamw_cuda.cu - fused AdamW over a flat f32 segment (a rank's shard), one
 * thread per element; the update is adamw_math.h's, the CPU kernel's. */
#include "cuda_common.cuh"
#include "adamw_host.h"
#include "adamw_math.h"

/* ---- kernels ------------------------------------------------------------ */

static __global__ void adamw_kernel(float *param, float *m, float *v, const float *grad, int64_t n,
                                    float beta1, float beta2, float eps, float decay,
                                    float grad_scale, float step_size, float inv_sqrt_bc2) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        fsdp_adamw_update(&param[i], &m[i], &v[i], grad[i] * grad_scale, beta1, beta2, eps, decay,
                          step_size, inv_sqrt_bc2);
}

/* ---- launchers ---------------------------------------------------------- */

/* elements [lo, hi) with one weight decay */
static int adamw_launch(const char *fn, float *param, float *m, float *v, const float *grad, int64_t lo,
                        int64_t hi, float lr, float beta1, float beta2, float eps, float weight_decay,
                        float grad_scale, const fsdp_adamw_consts &c, fsdp_stream stream) {
    if (hi <= lo) return FSDP_OK;
    const int64_t n = hi - lo;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(adamw_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, param + lo, m + lo, v + lo,
                grad + lo, n, beta1, beta2, eps, fsdp_adamw_decay(lr, weight_decay), grad_scale,
                c.step_size, c.inv_sqrt_bc2);
    return fsdp_cuda_launched(fn);
}

/* the CPU kernel's runs: one launch per run of equal weight decay (the runs
 * are few and host memory) */
int fsdp_adamw_runs_cuda(float *param, float *m, float *v, const float *grad, int64_t n,
                         const int64_t *decay, int ndecay, float lr, float beta1, float beta2,
                         float eps, float weight_decay, float grad_scale, int64_t t,
                         fsdp_stream stream) {
    const char *fn = "fsdp_adamw_runs_cuda";
    fsdp_adamw_consts c = {1.0f, 1.0f};
    int rc = fsdp_adamw_prepare(fn, param, m, v, grad, n, lr, beta1, beta2, t, &c);
    if (rc || n == 0) return rc;
    rc = fsdp_adamw_check_runs(fn, decay, ndecay, n);
    if (rc) return rc;
    int64_t at = 0;
    for (int r = 0; r < ndecay && !rc; r++) {
        rc = adamw_launch(fn, param, m, v, grad, at, decay[2 * r], lr, beta1, beta2, eps, 0.0f,
                          grad_scale, c, stream);
        if (!rc)
            rc = adamw_launch(fn, param, m, v, grad, decay[2 * r], decay[2 * r + 1], lr, beta1, beta2,
                              eps, weight_decay, grad_scale, c, stream);
        at = decay[2 * r + 1];
    }
    if (!rc)
        rc = adamw_launch(fn, param, m, v, grad, at, n, lr, beta1, beta2, eps, 0.0f, grad_scale, c,
                          stream);
    return rc;
}

int fsdp_adamw_cuda(float *param, float *m, float *v, const float *grad, int64_t n, float lr,
                    float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                    int64_t t, fsdp_stream stream) {
    const char *fn = "fsdp_adamw_cuda";
    fsdp_adamw_consts c = {1.0f, 1.0f};
    int rc = fsdp_adamw_prepare(fn, param, m, v, grad, n, lr, beta1, beta2, t, &c);
    if (rc || n == 0) return rc;
    return adamw_launch(fn, param, m, v, grad, 0, n, lr, beta1, beta2, eps, weight_decay, grad_scale, c,
                        stream);
}
