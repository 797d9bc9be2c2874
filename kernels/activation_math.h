/* activation_math.h - per-element activation formulas and their derivatives,
 * shared by the CPU kernels (activation_cpu.c) and the CUDA kernels, so the
 * CPU tests check the same math the GPU runs. */
#ifndef FSDP_ACTIVATION_MATH_H
#define FSDP_ACTIVATION_MATH_H
#include <math.h>
#include "fsdp_hd.h"
#include "exp_math.h"

/* GELU, tanh approximation (GPT-2, torch gelu(approximate='tanh')):
 * 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
 * Computed as x * sigmoid(2u) = x / (1 + e^(-2u)), the same function since
 * 0.5 (1 + tanh(u)) = sigmoid(2u): one exponential, no cancellation in
 * 1 + tanh(u) for negative x, and with fsdp_expf the loops vectorize.
 * Multiply-adds are fsdp_fma (exp_math.h), so CPU and CUDA round alike. */
#define FSDP_GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define FSDP_GELU_CUBE 0.044715f

FSDP_HD float fsdp_gelu_u(float x) {
    return FSDP_GELU_SCALE * fsdp_fma(FSDP_GELU_CUBE * x * x, x, x);
}

FSDP_HD float fsdp_gelu(float x) {
    return x / (1.0f + fsdp_expf(-2.0f * fsdp_gelu_u(x)));
}

/* d gelu / dx = s + x s (1 - s) 2 du/dx, s = sigmoid(2u),
 * du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
FSDP_HD float fsdp_gelu_grad(float x) {
    float s = 1.0f / (1.0f + fsdp_expf(-2.0f * fsdp_gelu_u(x)));
    float du = FSDP_GELU_SCALE * fsdp_fma(3.0f * FSDP_GELU_CUBE * x, x, 1.0f);
    return fsdp_fma(2.0f * x * s * (1.0f - s), du, s);
}

FSDP_HD float fsdp_relu(float x) { return x > 0.0f ? x : 0.0f; }
FSDP_HD float fsdp_relu_grad(float x) { return x > 0.0f ? 1.0f : 0.0f; }

/* 1 / (1 + e^-x): for very negative x, e^-x overflows to inf and this is 0 */
FSDP_HD float fsdp_sigmoid(float x) { return 1.0f / (1.0f + fsdp_expf(-x)); }

/* SiLU (swish): x * sigmoid(x) */
FSDP_HD float fsdp_silu(float x) { return x * fsdp_sigmoid(x); }

/* d silu / dx = s (1 + x (1 - s)), s = sigmoid(x) */
FSDP_HD float fsdp_silu_grad(float x) {
    float s = fsdp_sigmoid(x);
    return s * fsdp_fma(x, 1.0f - s, 1.0f);
}
/* Soft-capping (Gemma 2's attention and final logits): cap * tanh(x / cap),
 * computed as transformers does (divide, tanh, multiply), which keeps |x|
 * below cap; cap <= 0 means none (x itself). Its derivative 1 - tanh^2,
 * from x. */
FSDP_HD float fsdp_softcap(float x, float cap) {
    return cap > 0.0f ? tanhf(x / cap) * cap : x;
}
FSDP_HD float fsdp_softcap_grad(float x, float cap) {
    if (cap <= 0.0f) return 1.0f;
    const float t = tanhf(x / cap);
    return 1.0f - t * t;
}
#endif
