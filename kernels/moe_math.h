/* moe_math.h - per-element pieces of the mixture-of-experts routing ops,
 * shared by the CPU kernels (moe_cpu.c) and the CUDA kernels (moe_cuda.cu)
 * so both round alike: the softmax's running max and exponential, the
 * accumulating updates of the backward passes (multiply-adds written as
 * fsdp_fma, so where a rounding happens is fixed by the source, not by the
 * compiler's contraction), and the order top-k ranks values in. Row
 * reductions (the softmax sum, the dot products) are left to each backend. */
#ifndef FSDP_MOE_MATH_H
#define FSDP_MOE_MATH_H
#include <math.h>
#include "fsdp_hd.h"
#include "exp_math.h"

/* running max that skips NaN: a NaN element never becomes the max (a row of
 * NaN and -inf only keeps -inf, and its softmax is NaN) */
FSDP_HD float fsdp_moe_max(float m, float x) { return x > m ? x : m; }

/* one softmax numerator, e^(x - max) */
FSDP_HD float fsdp_softmax_exp(float x, float max) { return fsdp_expf(x - max); }

/* softmax backward for one element: dx + y * (dy - <dy, y>) */
FSDP_HD float fsdp_softmax_dinp(float dx, float y, float dy, float dot) {
    return fsdp_fma(y, dy - dot, dx);
}

/* row-scale backward for one element: dx + dy * s */
FSDP_HD float fsdp_row_scale_dinp(float dx, float dy, float s) { return fsdp_fma(dy, s, dx); }

/* top-k order: a ranks before b when it is larger, NaN above every number
 * (as torch.topk); equal values (NaN and NaN, -0 and +0 included) do not
 * rank before each other, and callers break those ties by the lower column */
FSDP_HD int fsdp_topk_ranks_before(float a, float b) {
    if (a != a) return b == b;
    return a > b;
}
#endif
