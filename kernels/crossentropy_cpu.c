/* crossentropy_cpu.c - fused softmax cross-entropy over V classes, the CPU
 * reference. logits are [N, V] row-major, one row per token; rows whose target
 * is ignore_index contribute no loss and no gradient. Forward saves each
 * row's log-sum-exp so backward rebuilds the softmax in one pass. The
 * exponentials are exp_math.h's, so the loops over a row vectorize; a row
 * (V floats) stays in cache between the max pass and the sum pass.
 *
 * fsdp_crossentropy_inplace_cpu is forward and backward of a block of rows
 * at once, for the chunked LM head (ops.linear_cross_entropy): it writes the
 * row losses and replaces each row of logits by its gradient. */
#include <math.h>
#include "internal.h"
#include "exp_math.h"
#include "crossentropy_math.h"

/* every target is ignore_index or a class in [0, V); the error names the
 * first offending row, so it is checked before any work starts */
static int check_targets(const char *fn, const int32_t *targets, int N, int V, int ignore_index) {
    for (int n = 0; n < N; n++) {
        int32_t t = targets[n];
        FSDP_CHECK_ARG(t == ignore_index || (t >= 0 && t < V),
                       "%s: targets[%d] = %d is outside [0, %d) and is not ignore_index (%d)", fn, n,
                       (int)t, V, ignore_index);
    }
    return FSDP_OK;
}

/* log-sum-exp of one row x[0..V) */
static double row_lse(const float *x, int V) {
    /* 1. the row max, so exp never overflows */
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (int j = 0; j < V; j++) maxv = x[j] > maxv ? x[j] : maxv;
    /* 2. log-sum-exp, the sum accumulated in double (in vector lanes
     * whose order the build fixes, the same on every call) */
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++) sum += (double)fsdp_expf(x[j] - maxv);
    return (double)maxv + log(sum);
}

int fsdp_crossentropy_forward_cpu(float *loss, float *lse, const float *logits,
                                  const int32_t *targets, int N, int V, int ignore_index) {
    const char *fn = "fsdp_crossentropy_forward_cpu";
    FSDP_CHECK_ARG(loss && lse, "%s: loss or lse is NULL", fn);
    FSDP_CHECK_ARG(logits && targets, "%s: logits or targets is NULL", fn);
    FSDP_CHECK_ARG(N > 0 && V > 0, "%s: N (%d) and V (%d) must be positive", fn, N, V);
    int rc = check_targets(fn, targets, N, V, ignore_index);
    if (rc) return rc;

#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (int64_t)n * V;
        const double l = row_lse(x, V);
        lse[n] = (float)l;
        /* loss = lse - logit of the target (-log softmax) */
        const int32_t t = targets[n];
        loss[n] = t == ignore_index ? 0.0f : (float)(l - (double)x[t]);
    }
    return FSDP_OK;
}

int fsdp_crossentropy_inplace_cpu(float *loss, float *lse, float *logits, const int32_t *targets,
                                  int N, int V, int ignore_index) {
    const char *fn = "fsdp_crossentropy_inplace_cpu";
    FSDP_CHECK_ARG(loss && logits && targets, "%s: loss, logits or targets is NULL", fn);
    FSDP_CHECK_ARG(N > 0 && V > 0, "%s: N (%d) and V (%d) must be positive", fn, N, V);
    int rc = check_targets(fn, targets, N, V, ignore_index);
    if (rc) return rc;

    /* rows handed out a few at a time: a row is V exponentials, and a
     * thread that loses its core holds up only its rows */
#pragma omp parallel for schedule(dynamic, 4)
    for (int n = 0; n < N; n++) {
        float *x = logits + (int64_t)n * V;
        const int32_t t = targets[n];
        if (t == ignore_index) { /* no loss, no gradient */
            loss[n] = 0.0f;
            if (lse) lse[n] = 0.0f;
            for (int j = 0; j < V; j++) x[j] = 0.0f;
            continue;
        }
        /* 1. the row's log-sum-exp (the row, V floats, stays in cache) */
        const double l = row_lse(x, V);
        const float lf = (float)l;
        if (lse) lse[n] = lf;
        loss[n] = (float)(l - (double)x[t]);
        /* 2. the row becomes its gradient: softmax - onehot(target) */
#pragma omp simd
        for (int j = 0; j < V; j++) x[j] = fsdp_crossentropy_prob(x[j], lf);
        x[t] = fsdp_crossentropy_target_grad(x[t]);
    }
    return FSDP_OK;
}

int fsdp_crossentropy_backward_cpu(float *dlogits, const float *dloss, const float *logits,
                                   const float *lse, const int32_t *targets, int N, int V,
                                   int ignore_index) {
    const char *fn = "fsdp_crossentropy_backward_cpu";
    FSDP_CHECK_ARG(dlogits && dloss, "%s: dlogits or dloss is NULL", fn);
    FSDP_CHECK_ARG(logits && lse && targets, "%s: logits, lse or targets is NULL", fn);
    FSDP_CHECK_ARG(N > 0 && V > 0, "%s: N (%d) and V (%d) must be positive", fn, N, V);
    int rc = check_targets(fn, targets, N, V, ignore_index);
    if (rc) return rc;

#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const int32_t t = targets[n];
        if (t == ignore_index) continue;
        const float *x = logits + (int64_t)n * V;
        float *dx = dlogits + (int64_t)n * V;
        const float d = dloss[n];
        const float row_lse = lse[n];
        /* dlogits += dloss * softmax, then the one-hot target term */
#pragma omp simd
        for (int j = 0; j < V; j++) dx[j] = fsdp_fma(d, fsdp_expf(x[j] - row_lse), dx[j]);
        dx[t] -= d;
    }
    return FSDP_OK;
}
