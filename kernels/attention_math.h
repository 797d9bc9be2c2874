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
#include "exp_math.h"
#include "activation_math.h" /* fsdp_softcap: logit soft-capping */

FSDP_HD int fsdp_attention_first_key(int t, int window) {
    if (window <= 0 || t < window) return 0;
    return t - window + 1;
}

/* Packed sequences (several samples in one row, Hugging Face's position_ids
 * packing): token t of a row sits at position pos_t of its own sample, which
 * starts at t - pos_t; it sees only keys of its sample, so its first key is
 * the later of that start and the window's. Block-diagonal causal. */
FSDP_HD int fsdp_attention_first_key_packed(int t, int window, int pos_t) {
    const int w = fsdp_attention_first_key(t, window), start = t - pos_t;
    return start > w ? start : w;
}

/* A query's score against a key: scale q . k, soft-capped when softcap > 0
 * (Gemma 2: softcap * tanh(score / softcap), before the mask and softmax,
 * as transformers' eager attention). Every attention kernel scores through
 * this, so the CPU and CUDA ones cap alike; backward multiplies the score's
 * gradient by fsdp_softcap_grad(scale q . k, softcap). */
FSDP_HD float fsdp_attention_score(float scaled_dot, float softcap) { return fsdp_softcap(scaled_dot, softcap); }

/* One query row of decoding attention over a KV cache: out[0..HD) =
 * softmax_s(score(scale q . k_s)) v_s over the cached keys s = first .. last (key s
 * at kc + s*ld, value s at vc + s*ld). Two passes over the keys (the max,
 * then the exponentials and the weighted sum straight into out), so it
 * needs no score row in memory: the CPU loop and the CUDA thread that runs
 * it give the same bits (every product-sum is an fsdp_fma in key order). */
FSDP_HD float fsdp_attention_decode_dot(const float *q, const float *k, int HD) {
    float d = 0.0f;
    for (int i = 0; i < HD; i++) d = fsdp_fma(q[i], k[i], d);
    return d;
}

FSDP_HD void fsdp_attention_decode_row(float *out, const float *q, const float *kc, const float *vc,
                                       int ld, int HD, int first, int last, float scale, float softcap) {
    float m = -INFINITY;
    for (int s = first; s <= last; s++) {
        const float d = fsdp_attention_score(scale * fsdp_attention_decode_dot(q, kc + (int64_t)s * ld, HD), softcap);
        m = d > m ? d : m;
    }
    for (int i = 0; i < HD; i++) out[i] = 0.0f;
    float l = 0.0f;
    for (int s = first; s <= last; s++) {
        const float e = fsdp_expf(
            fsdp_attention_score(scale * fsdp_attention_decode_dot(q, kc + (int64_t)s * ld, HD), softcap) - m);
        l += e;
        const float *vs = vc + (int64_t)s * ld;
        for (int i = 0; i < HD; i++) out[i] = fsdp_fma(e, vs[i], out[i]);
    }
    const float inv = 1.0f / l;
    for (int i = 0; i < HD; i++) out[i] *= inv;
}

#endif
