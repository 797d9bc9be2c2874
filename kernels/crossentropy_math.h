/* crossentropy_math.h - the per-element gradient of softmax cross-entropy,
 * shared by the CPU and CUDA kernels that turn a row of logits into its
 * gradient in place (the chunked LM head + loss of ops.linear_cross_entropy).
 * For a row with log-sum-exp lse and target t:
 *   d loss / d logit_j = softmax_j - [j == t] = e^(x_j - lse) - [j == t]
 * (unscaled: the caller multiplies by d(mean loss) / d(row loss) later). */
#ifndef FSDP_CROSSENTROPY_MATH_H
#define FSDP_CROSSENTROPY_MATH_H
#include "fsdp_hd.h"
#include "exp_math.h"

/* softmax_j of a row: e^(x_j - lse) */
FSDP_HD float fsdp_crossentropy_prob(float x, float lse) { return fsdp_expf(x - lse); }

/* the target's gradient from its probability */
FSDP_HD float fsdp_crossentropy_target_grad(float p) { return p - 1.0f; }

#endif
