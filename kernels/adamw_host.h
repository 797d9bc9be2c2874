/* adamw_host.h - the host side both AdamW launchers share (adamw_cpu.c,
 * adamw_cuda.cu): argument checks, and the constants of step t (the bias
 * corrections folded in) computed once in double, as torch does.
 * fsdp_adamw_prepare returns a status; with n == 0 it returns FSDP_OK and
 * the caller has nothing to do. */
#ifndef FSDP_ADAMW_HOST_H
#define FSDP_ADAMW_HOST_H
#include <math.h>
#include "internal.h"

/* the per-step constants of fsdp_adamw_update */
typedef struct {
    float step_size;    /* lr / bc1 */
    float inv_sqrt_bc2; /* 1 / sqrt(bc2) */
} fsdp_adamw_consts;

static inline int fsdp_adamw_prepare(const char *fn, const float *param, const float *m, const float *v,
                                     const float *grad, int64_t n, float lr, float beta1, float beta2,
                                     int64_t t, fsdp_adamw_consts *c) {
    FSDP_CHECK_ARG(n >= 0, "%s: n (%lld) must not be negative", fn, (long long)n);
    if (n == 0) return FSDP_OK;
    FSDP_CHECK_ARG(param && m && v && grad, "%s: param, m, v or grad is NULL", fn);
    FSDP_CHECK_ARG(t >= 1, "%s: step t (%lld) must be >= 1", fn, (long long)t);
    FSDP_CHECK_ARG(beta1 >= 0.0f && beta1 < 1.0f, "%s: beta1 (%g) must be in [0, 1)", fn, (double)beta1);
    FSDP_CHECK_ARG(beta2 >= 0.0f && beta2 < 1.0f, "%s: beta2 (%g) must be in [0, 1)", fn, (double)beta2);
    const double bc1 = 1.0 - pow((double)beta1, (double)t);
    const double bc2 = 1.0 - pow((double)beta2, (double)t);
    c->step_size = (float)((double)lr / bc1);
    c->inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    return FSDP_OK;
}

/* 1 - lr * wd, the decoupled decay's factor (rounded once) */
static inline float fsdp_adamw_decay(float lr, float weight_decay) {
    return (float)(1.0 - (double)lr * (double)weight_decay);
}

/* the weight-decay runs of a slice of n elements: ndecay pairs [start, end)
 * in decay[], in order, not overlapping, inside [0, n] */
static inline int fsdp_adamw_check_runs(const char *fn, const int64_t *decay, int ndecay, int64_t n) {
    FSDP_CHECK_ARG(ndecay >= 0, "%s: ndecay (%d) must not be negative", fn, ndecay);
    FSDP_CHECK_ARG(ndecay == 0 || decay, "%s: decay is NULL but ndecay is %d", fn, ndecay);
    int64_t prev = 0;
    for (int r = 0; r < ndecay; r++) {
        const int64_t a = decay[2 * r], b = decay[2 * r + 1];
        FSDP_CHECK_ARG(a >= prev && a <= b && b <= n,
                       "%s: decay run %d [%lld, %lld) is out of order or outside [0, %lld)", fn, r,
                       (long long)a, (long long)b, (long long)n);
        prev = b;
    }
    return FSDP_OK;
}
#endif
