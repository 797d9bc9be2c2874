/* activation_math.h - per-element activation formulas and their derivatives,
 * shared by the CPU kernels (activation_cpu.c) and the CUDA kernels, so the
 * CPU tests check the same math the GPU runs. */
#ifndef FSDP_ACTIVATION_MATH_H
#define FSDP_ACTIVATION_MATH_H
#include <math.h>
#include "fsdp_hd.h"

/* GELU, tanh approximation (GPT-2, torch gelu(approximate='tanh')):
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
#define FSDP_GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define FSDP_GELU_CUBE 0.044715f

FSDP_HD float fsdp_gelu(float x) {
    float u = FSDP_GELU_SCALE * (x + FSDP_GELU_CUBE * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

/* d gelu / dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx, t = tanh(u) */
FSDP_HD float fsdp_gelu_grad(float x) {
    float u = FSDP_GELU_SCALE * (x + FSDP_GELU_CUBE * x * x * x);
    float t = tanhf(u);
    float du = FSDP_GELU_SCALE * (1.0f + 3.0f * FSDP_GELU_CUBE * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

FSDP_HD float fsdp_relu(float x) { return x > 0.0f ? x : 0.0f; }
FSDP_HD float fsdp_relu_grad(float x) { return x > 0.0f ? 1.0f : 0.0f; }

/* 1 / (1 + e^-x): for very negative x, expf overflows to inf and this is 0 */
FSDP_HD float fsdp_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* SiLU (swish): x * sigmoid(x) */
FSDP_HD float fsdp_silu(float x) { return x * fsdp_sigmoid(x); }

/* d silu / dx = s (1 + x (1 - s)), s = sigmoid(x) */
FSDP_HD float fsdp_silu_grad(float x) {
    float s = fsdp_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}
#endif
