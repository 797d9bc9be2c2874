/* adamw_math.h - one AdamW element update, shared by the CPU and CUDA
 * optimizer kernels. The formula is torch.optim.AdamW's (decoupled weight
 * decay, bias-corrected moments):
 *   p *= 1 - lr * wd
 *   m  = b1 m + (1 - b1) g
 *   v  = b2 v + (1 - b2) g^2
 *   p -= lr * (m / bc1) / (sqrt(v / bc2) + eps),  bc1 = 1 - b1^t, bc2 = 1 - b2^t
 * The caller computes bc1 and bc2 once per step. */
#ifndef FSDP_ADAMW_MATH_H
#define FSDP_ADAMW_MATH_H
#include <math.h>
#include "fsdp_hd.h"

FSDP_HD void fsdp_adamw_update(float *p, float *m, float *v, float g, float lr, float beta1,
                               float beta2, float eps, float weight_decay, float bc1, float bc2) {
    float param = *p * (1.0f - lr * weight_decay);       /* decoupled decay first */
    float mom = beta1 * *m + (1.0f - beta1) * g;         /* first moment */
    float var = beta2 * *v + (1.0f - beta2) * g * g;     /* second moment */
    float mhat = mom / bc1;                              /* bias corrections */
    float vhat = var / bc2;
    *p = param - lr * mhat / (sqrtf(vhat) + eps);
    *m = mom;
    *v = var;
}

#endif
