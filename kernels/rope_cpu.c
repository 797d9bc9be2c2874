/* rope_cpu.c - rotary position embedding (rotate-half pairing, as GPT-NeoX
 * and Hugging Face Llama), the CPU reference.
 *
 * inp/out are [B, T, NH, HD] with ld elements between tokens; the NH heads of
 * a token are contiguous. cos/sin are [T, HD/2]: row t holds the angles of the
 * token at sequence index t. Each pair (x[i], x[i + HD/2]) of every head
 * rotates by the angle of (t, i). */
#include <math.h>
#include "internal.h"
#include "rope_math.h"

static int check_args(const char *fn, const float *a, const float *b, const float *cos,
                      const float *sin, int B, int T, int NH, int HD, int ld) {
    FSDP_CHECK_ARG(a && b, "%s: input or output is NULL", fn);
    FSDP_CHECK_ARG(cos && sin, "%s: cos or sin table is NULL", fn);
    FSDP_CHECK_ARG(B > 0 && T > 0 && NH > 0, "%s: B (%d), T (%d) and NH (%d) must be positive", fn,
                   B, T, NH);
    FSDP_CHECK_ARG(HD > 0 && HD % 2 == 0, "%s: HD (%d) must be positive and even", fn, HD);
    FSDP_CHECK_ARG(ld >= NH * HD, "%s: ld (%d) is less than NH*HD (%d)", fn, ld, NH * HD);
    return FSDP_OK;
}

/* out may equal inp: each pair is read into locals before it is written */
int fsdp_rope_forward_cpu(float *out, const float *inp, const float *cos, const float *sin,
                          int B, int T, int NH, int HD, int ld) {
    int rc = check_args("fsdp_rope_forward_cpu", out, inp, cos, sin, B, T, NH, HD, ld);
    if (rc) return rc;
    const int half = HD / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const int64_t row = ((int64_t)b * T + t) * ld;
            const float *c = cos + (int64_t)t * half;
            const float *s = sin + (int64_t)t * half;
            for (int h = 0; h < NH; h++) {
                const float *x = inp + row + (int64_t)h * HD;
                float *y = out + row + (int64_t)h * HD;
                for (int i = 0; i < half; i++) {
                    float y1, y2;
                    fsdp_rope_rotate(x[i], x[i + half], c[i], s[i], &y1, &y2);
                    y[i] = y1;
                    y[i + half] = y2;
                }
            }
        }
    }
    return FSDP_OK;
}

/* dinp += R^T dout; dinp must not be dout (accumulating into the gradient
 * being read would mix the two) */
int fsdp_rope_backward_cpu(float *dinp, const float *dout, const float *cos, const float *sin,
                           int B, int T, int NH, int HD, int ld) {
    const char *fn = "fsdp_rope_backward_cpu";
    int rc = check_args(fn, dinp, dout, cos, sin, B, T, NH, HD, ld);
    if (rc) return rc;
    FSDP_CHECK_ARG(dinp != dout, "%s: dinp must not be dout (backward accumulates)", fn);
    const int half = HD / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const int64_t row = ((int64_t)b * T + t) * ld;
            const float *c = cos + (int64_t)t * half;
            const float *s = sin + (int64_t)t * half;
            for (int h = 0; h < NH; h++) {
                const float *d = dout + row + (int64_t)h * HD;
                float *g = dinp + row + (int64_t)h * HD;
                for (int i = 0; i < half; i++) {
                    float g1, g2;
                    fsdp_rope_rotate_back(d[i], d[i + half], c[i], s[i], &g1, &g2);
                    g[i] += g1;
                    g[i + half] += g2;
                }
            }
        }
    }
    return FSDP_OK;
}

/* cos/sin[t, i] of the angle (pos0 + t) * inv_freq[i]; the product and the
 * trigonometry run in double, only the result is rounded to f32 */
int fsdp_rope_table_cpu(float *cos_out, float *sin_out, const float *inv_freq, int pos0, int T,
                        int HD) {
    const char *fn = "fsdp_rope_table_cpu";
    FSDP_CHECK_ARG(cos_out && sin_out && inv_freq, "%s: cos, sin or inv_freq is NULL", fn);
    FSDP_CHECK_ARG(T > 0, "%s: T (%d) must be positive", fn, T);
    FSDP_CHECK_ARG(HD > 0 && HD % 2 == 0, "%s: HD (%d) must be positive and even", fn, HD);
    FSDP_CHECK_ARG(pos0 >= 0, "%s: pos0 (%d) must not be negative", fn, pos0);
    const int half = HD / 2;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const double pos = (double)pos0 + t;
        for (int i = 0; i < half; i++) {
            const double angle = pos * (double)inv_freq[i];
            cos_out[(int64_t)t * half + i] = (float)cos(angle);
            sin_out[(int64_t)t * half + i] = (float)sin(angle);
        }
    }
    return FSDP_OK;
}
