/* lora_math.h - the dropout rule of a LoRA layer's adapter input, shared by
 * the CPU and CUDA kernels so forward, the backward that regenerates the
 * mask, and both backends keep exactly the same elements.
 *
 * Element i of x (row-major [M, K]) is kept when u(seed, i) >= p, u a
 * uniform [0, 1) number made from i and the seed by a stateless 64-bit mix
 * (splitmix64's finaliser), so no mask is stored: backward and an
 * activation-checkpointed recompute make the same one from the seed. A kept
 * element is scaled by 1 / (1 - p), as torch.nn.Dropout does. */
#ifndef FSDP_LORA_MATH_H
#define FSDP_LORA_MATH_H
#include <stdint.h>
#include "fsdp_hd.h"

FSDP_HD uint64_t fsdp_lora_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* the factor element i of the adapter's input is multiplied by: 0 or
 * 1 / (1 - p) (p == 0: always 1) */
FSDP_HD float fsdp_lora_dropout(uint64_t seed, int64_t i, float p) {
    if (p <= 0.0f) return 1.0f;
    const uint64_t h = fsdp_lora_mix(seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1));
    const float u = (float)(h >> 40) * (1.0f / 16777216.0f); /* 24 bits: [0, 1) */
    return u >= p ? 1.0f / (1.0f - p) : 0.0f;
}

#endif
