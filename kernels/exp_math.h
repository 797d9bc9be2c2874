/* exp_math.h - e^x in plain float arithmetic, shared by the kernels that
 * exponentiate every element of a large buffer (GELU, SiLU, softmax cross-
 * entropy, attention). Unlike a call to libm's expf it has no branches and
 * no calls, so a loop over it vectorizes (16 lanes with AVX-512), and it
 * gives the same bits in every lane and in scalar code.
 *
 * Method: x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2 (ln2 in
 * two parts, so r is exact to float precision); e^r by a degree-7 polynomial
 * (the Taylor terms 1 + r + r^2/2 + ... + r^7/5040, whose truncation error
 * at |r| = ln2/2 is below 4e-9 relative, a small part of an ulp); then
 * e^x = e^r 2^n, the 2^n built from exponent bits in two halves so that n up
 * to 128 overflows to inf and n down to -150 underflows gradually, as expf
 * does.
 * Accuracy: within 1 ulp of the correctly rounded result over the whole
 * range (checked on every float); NaN in gives NaN out; e^x is inf above
 * ~88.72 and 0 below ~-103.9.
 *
 * Every multiply-add is written as fsdp_fma, so where a rounding happens is
 * fixed by the source: the vectorized CPU loops, scalar code and the CUDA
 * kernels that share these headers give the same bits. (Left to the
 * compiler, whether a*b+c is fused can differ between a scalar and a vector
 * loop of the same expression, with the same flags.) */
#ifndef FSDP_EXP_MATH_H
#define FSDP_EXP_MATH_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "fsdp_hd.h"

/* a * b + c with one rounding where the target has FMA (x86-64 since
 * Haswell, every CUDA GPU, AArch64), else two; without FMA the compiler
 * cannot fuse anything either, so scalar and vector code still agree */
FSDP_HD float fsdp_fma(float a, float b, float c) {
#if defined(__CUDACC__) || defined(__FMA__) || defined(__aarch64__)
    return fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

#define FSDP_EXP_LOG2E 1.44269504088896341f
#define FSDP_EXP_LN2_HI 0.693145751953125f       /* ln 2, top 16 bits: n * this is exact */
#define FSDP_EXP_LN2_LO 1.42860682030941723e-6f  /* ln 2 - FSDP_EXP_LN2_HI */
#define FSDP_EXP_ROUND 12582912.0f               /* 1.5 * 2^23: adding it rounds to an integer */

/* 2^k for integer k in [-126, 127], from the exponent bits */
FSDP_HD float fsdp_exp2i(int32_t k) {
    uint32_t bits = (uint32_t)(k + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

FSDP_HD float fsdp_expf(float x) {
    /* past these the result is inf / 0 anyway; the clamp keeps n small, and
     * a NaN is computed as 0 here and passed through at the end */
    float xc = x > 89.0f ? 89.0f : x;
    xc = xc < -104.0f ? -104.0f : xc;
    xc = xc == xc ? xc : 0.0f;
    /* n = round(x / ln2), by the add-and-subtract trick (|x / ln2| < 2^22) */
    float n = fsdp_fma(xc, FSDP_EXP_LOG2E, FSDP_EXP_ROUND) - FSDP_EXP_ROUND;
    /* r = x - n ln2 in two steps (Cody-Waite) */
    float r = fsdp_fma(-n, FSDP_EXP_LN2_HI, xc);
    r = fsdp_fma(-n, FSDP_EXP_LN2_LO, r);
    /* e^r, Horner form of the Taylor polynomial */
    float p = 1.0f / 5040.0f;
    p = fsdp_fma(p, r, 1.0f / 720.0f);
    p = fsdp_fma(p, r, 1.0f / 120.0f);
    p = fsdp_fma(p, r, 1.0f / 24.0f);
    p = fsdp_fma(p, r, 1.0f / 6.0f);
    p = fsdp_fma(p, r, 0.5f);
    p = fsdp_fma(p, r, 1.0f);
    p = fsdp_fma(p, r, 1.0f);
    /* times 2^n as 2^(n/2) 2^(n - n/2): each half stays a normal float */
    int32_t k = (int32_t)n;
    int32_t k1 = k / 2;
    float e = p * fsdp_exp2i(k1) * fsdp_exp2i(k - k1);
    return x == x ? e : x; /* (the select also keeps callers from fusing e into a sum) */
}

#endif
