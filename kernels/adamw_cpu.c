/* adamw_cpu.c - fused AdamW over a flat f32 segment (a rank's shard), the
 * CPU reference; the per-element formula is in adamw_math.h. */
#include <math.h>
#include "internal.h"
#include "adamw_math.h"

int fsdp_adamw_cpu(float *param, float *m, float *v, const float *grad, int64_t n,
                   float lr, float beta1, float beta2, float eps, float weight_decay,
                   float grad_scale, int64_t t) {
    const char *fn = "fsdp_adamw_cpu";
    FSDP_CHECK_ARG(n >= 0, "%s: n (%lld) must not be negative", fn, (long long)n);
    if (n == 0) return FSDP_OK;
    FSDP_CHECK_ARG(param && m && v && grad, "%s: param, m, v or grad is NULL", fn);
    FSDP_CHECK_ARG(t >= 1, "%s: step t (%lld) must be >= 1", fn, (long long)t);
    FSDP_CHECK_ARG(beta1 >= 0.0f && beta1 < 1.0f, "%s: beta1 (%g) must be in [0, 1)", fn,
                   (double)beta1);
    FSDP_CHECK_ARG(beta2 >= 0.0f && beta2 < 1.0f, "%s: beta2 (%g) must be in [0, 1)", fn,
                   (double)beta2);

    /* bias corrections of step t, in double as torch computes them */
    const float bc1 = (float)(1.0 - pow((double)beta1, (double)t));
    const float bc2 = (float)(1.0 - pow((double)beta2, (double)t));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        fsdp_adamw_update(&param[i], &m[i], &v[i], grad[i] * grad_scale, lr, beta1, beta2, eps,
                          weight_decay, bc1, bc2);
    return FSDP_OK;
}
