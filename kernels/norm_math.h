/* norm_math.h - per-element pieces of LayerNorm / RMSNorm shared by the CPU
 * kernels and the CUDA kernels. Row reductions (mean, variance, the two
 * backward sums) are left to each backend; these are the formulas applied to
 * every element once a row's statistics are known.
 *
 * LayerNorm: norm = (x - mean) * rstd, out = norm * w + b.
 * RMSNorm:   norm = x * rstd,          out = norm * w      (mean taken as 0).
 * Backward, with dnorm = dout * w and row means <dnorm>, <dnorm * norm>:
 *   dx = rstd * (dnorm - <dnorm> - norm * <dnorm * norm>)
 * and RMSNorm drops the <dnorm> term (its norm does not subtract the mean). */
#ifndef FSDP_NORM_MATH_H
#define FSDP_NORM_MATH_H
#include <math.h>
#include "fsdp_hd.h"

/* 1 / sqrt(variance + eps), from a row's mean square deviation */
FSDP_HD float fsdp_norm_rstd(float var, float eps) { return 1.0f / sqrtf(var + eps); }

/* one element of the input gradient; mean_dnorm = 0 for RMSNorm */
FSDP_HD float fsdp_norm_dinp(float dnorm, float norm, float rstd, float mean_dnorm,
                             float mean_dnorm_norm) {
    return rstd * (dnorm - mean_dnorm - norm * mean_dnorm_norm);
}
#endif
