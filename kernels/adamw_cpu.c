/* adamw_cpu.c - fused AdamW over a flat f32 segment (a rank's shard), the
 * CPU reference; the per-element formula is in adamw_math.h. */
#include "adamw_host.h"
#include "adamw_math.h"

int fsdp_adamw_cpu(float *param, float *m, float *v, const float *grad, int64_t n,
                   float lr, float beta1, float beta2, float eps, float weight_decay,
                   float grad_scale, int64_t t) {
    float bc1 = 1, bc2 = 1;
    int rc = fsdp_adamw_prepare("fsdp_adamw_cpu", param, m, v, grad, n, beta1, beta2, t, &bc1, &bc2);
    if (rc || n == 0) return rc;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        fsdp_adamw_update(&param[i], &m[i], &v[i], grad[i] * grad_scale, lr, beta1, beta2, eps,
                          weight_decay, bc1, bc2);
    return FSDP_OK;
}
