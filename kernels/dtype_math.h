/* dtype_math.h - f32 <-> bf16 / f16 conversion by bit manipulation, shared
 * by the CPU casts, tensor copies and the CUDA cast kernels. Rounding is to
 * nearest even; NaN stays NaN; f16 overflow gives inf, underflow subnormals. */
#ifndef FSDP_DTYPE_MATH_H
#define FSDP_DTYPE_MATH_H
#include <stdint.h>
#include <string.h>
#include "fsdp_hd.h"

FSDP_HD uint32_t fsdp_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
FSDP_HD float fsdp_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

FSDP_HD uint16_t fsdp_f32_to_bf16(float f) {
    uint32_t u = fsdp_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

FSDP_HD float fsdp_bf16_to_f32(uint16_t h) { return fsdp_bits_f32((uint32_t)h << 16); }

FSDP_HD uint16_t fsdp_f32_to_f16(float f) {
    uint32_t u = fsdp_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);              /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);             /* overflow -> inf */
    if (a < 0x38800000u) {                                               /* subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;                      /* < half of min subnormal */
        uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        int s = 126 - (int)(a >> 23);                                    /* value = q * 2^-24 */
        uint32_t q = mant >> s;
        uint32_t rem = mant & ((1u << s) - 1u);
        uint32_t halfway = 1u << (s - 1);
        if (rem > halfway || (rem == halfway && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t e = (a >> 23) - 112;                                        /* rebias 127 -> 15 */
    uint32_t m = a & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;              /* may carry into exponent: fine */
    return (uint16_t)(sign | h);
}

FSDP_HD float fsdp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return fsdp_bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        if (m == 0) return fsdp_bits_f32(sign);
        float f = (float)m * (1.0f / 16777216.0f);                       /* m * 2^-24 */
        return sign ? -f : f;
    }
    return fsdp_bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

/* load / store one element of a float-like dtype as f32 */
FSDP_HD float fsdp_load_as_f32(const void *p, int64_t i, int dtype) {
    switch (dtype) {
    case 1: return fsdp_bf16_to_f32(((const uint16_t *)p)[i]);
    case 2: return fsdp_f16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

FSDP_HD void fsdp_store_from_f32(void *p, int64_t i, int dtype, float x) {
    switch (dtype) {
    case 1: ((uint16_t *)p)[i] = fsdp_f32_to_bf16(x); break;
    case 2: ((uint16_t *)p)[i] = fsdp_f32_to_f16(x); break;
    default: ((float *)p)[i] = x; break;
    }
}
#endif
