/* adamw_cpu.c - fused AdamW over a flat f32 slice (a rank's shard), the CPU
 * reference; the per-element formula is in adamw_math.h.
 *
 * One pass: every element's gradient, parameter and both moments are read
 * once and the last three written once, with the gradient scale (clipping,
 * loss-scale unscaling) applied on the way in. A slice holds runs of
 * matrices (weight decay) and of norms and biases (none); the whole slice is
 * one parallel region over blocks of elements, each block walking the runs
 * that cross it, so a unit costs one fork however many runs it has.
 *
 * Vectorisation: the per-step constants are plain locals (an OpenMP region
 * shares a variable whose address was taken by reference, and GCC then
 * leaves the loop scalar); `make vec-report` prints GCC's verdict on every
 * loop here. */
#include "adamw_host.h"
#include "adamw_math.h"

/* elements per work item: 128 KiB of each array, and a multiple of the
 * 64-byte line */
enum { ADAMW_BLOCK = 32768 };

/* one run [lo, hi) with one weight decay; the loop the compiler vectorises */
static void adamw_run(float *restrict param, float *restrict m, float *restrict v,
                      const float *restrict grad, int64_t lo, int64_t hi, float beta1, float beta2,
                      float eps, float decay, float grad_scale, float step_size, float inv_sqrt_bc2) {
    for (int64_t i = lo; i < hi; i++)
        fsdp_adamw_update(&param[i], &m[i], &v[i], grad[i] * grad_scale, beta1, beta2, eps, decay,
                          step_size, inv_sqrt_bc2);
}

int fsdp_adamw_runs_cpu(float *param, float *m, float *v, const float *grad, int64_t n,
                        const int64_t *decay, int ndecay, float lr, float beta1, float beta2,
                        float eps, float weight_decay, float grad_scale, int64_t t) {
    const char *fn = "fsdp_adamw_runs_cpu";
    fsdp_adamw_consts c = {1.0f, 1.0f};
    int rc = fsdp_adamw_prepare(fn, param, m, v, grad, n, lr, beta1, beta2, t, &c);
    if (rc || n == 0) return rc;
    rc = fsdp_adamw_check_runs(fn, decay, ndecay, n);
    if (rc) return rc;
    /* plain locals the parallel region can keep in registers (see the header) */
    const float step_size = c.step_size, inv_sqrt_bc2 = c.inv_sqrt_bc2;
    const float keep = fsdp_adamw_decay(lr, 0.0f), shrink = fsdp_adamw_decay(lr, weight_decay);
    const int64_t nblocks = (n + ADAMW_BLOCK - 1) / ADAMW_BLOCK;

    /* blocks handed out one at a time: a thread that loses its core to
     * another process holds up one block, not half the slice (each element's
     * result does not depend on who computes it) */
#pragma omp parallel for schedule(dynamic, 1) if (nblocks > 1)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t lo = blk * ADAMW_BLOCK, hi = lo + ADAMW_BLOCK < n ? lo + ADAMW_BLOCK : n;
        /* the pieces of [lo, hi): no decay outside the runs, weight_decay inside */
        int64_t at = lo;
        for (int r = 0; r < ndecay && at < hi; r++) {
            const int64_t a = decay[2 * r], b = decay[2 * r + 1];
            if (b <= at) continue;
            const int64_t a2 = a < hi ? a : hi, b2 = b < hi ? b : hi;
            if (at < a2) {
                adamw_run(param, m, v, grad, at, a2, beta1, beta2, eps, keep, grad_scale, step_size,
                          inv_sqrt_bc2);
                at = a2;
            }
            if (at < b2) {
                adamw_run(param, m, v, grad, at, b2, beta1, beta2, eps, shrink, grad_scale, step_size,
                          inv_sqrt_bc2);
                at = b2;
            }
        }
        if (at < hi)
            adamw_run(param, m, v, grad, at, hi, beta1, beta2, eps, keep, grad_scale, step_size,
                      inv_sqrt_bc2);
    }
    return FSDP_OK;
}

int fsdp_adamw_cpu(float *param, float *m, float *v, const float *grad, int64_t n,
                   float lr, float beta1, float beta2, float eps, float weight_decay,
                   float grad_scale, int64_t t) {
    const int64_t all[2] = {0, n};
    fsdp_adamw_consts c = {1.0f, 1.0f}; /* the checks, with this function's name */
    int rc = fsdp_adamw_prepare("fsdp_adamw_cpu", param, m, v, grad, n, lr, beta1, beta2, t, &c);
    if (rc || n == 0) return rc;
    return fsdp_adamw_runs_cpu(param, m, v, grad, n, all, 1, lr, beta1, beta2, eps, weight_decay,
                               grad_scale, t);
}
