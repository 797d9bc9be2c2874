/* rope_math.h - one rotary-embedding pair rotation, shared by the CPU and
 * CUDA RoPE kernels. Rotate-half pairing: x1 = x[i], x2 = x[i + HD/2]. */
#ifndef FSDP_ROPE_MATH_H
#define FSDP_ROPE_MATH_H
#include "fsdp_hd.h"

/* forward: (x1, x2) rotated by the angle with cosine c and sine s */
FSDP_HD void fsdp_rope_rotate(float x1, float x2, float c, float s, float *o1, float *o2) {
    *o1 = x1 * c - x2 * s;
    *o2 = x2 * c + x1 * s;
}

/* backward: the rotation is orthogonal, so its transpose (the inverse,
 * rotation by -angle) carries the gradient back */
FSDP_HD void fsdp_rope_rotate_back(float d1, float d2, float c, float s, float *g1, float *g2) {
    *g1 = d1 * c + d2 * s;
    *g2 = d2 * c - d1 * s;
}

#endif
