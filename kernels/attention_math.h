/* attention_math.h - the masking rule of causal attention, shared by the CPU
 * and CUDA attention kernels so both see exactly the same keys.
 *
 * Query t sees keys first_key(t) .. t. With a sliding window W > 0 that is
 * max(0, t-W+1) .. t: the token itself and the W-1 tokens before it. This is
 * Hugging Face's rule for Mistral (masking_utils: causal kv_idx <= q_idx AND
 * sliding overlay kv_idx > q_idx - sliding_window). W <= 0 means no window. */
#ifndef FSDP_ATTENTION_MATH_H
#define FSDP_ATTENTION_MATH_H
#include "fsdp_hd.h"

FSDP_HD int fsdp_attention_first_key(int t, int window) {
    if (window <= 0 || t < window) return 0;
    return t - window + 1;
}

#endif
