/* crossentropy_mean_cpu.c - the mean of cross-entropy's per-row losses over
 * the rows whose target is not ignore_index, the CPU reference. The count
 * is an output, so the backward (and a device) never needs it on the host:
 * on a GPU, ops.cross_entropy runs the twin in crossentropy_mean_cuda.cu and
 * no number goes to the host inside a step. The sum is in double, in row
 * order. */
#include "internal.h"
#include "loss_mean_math.h"

int fsdp_crossentropy_mean_forward_cpu(float *out, int32_t *count, const float *loss, const int32_t *targets,
                                       int N, int ignore_index, double denominator) {
    const char *fn = "fsdp_crossentropy_mean_forward_cpu";
    FSDP_CHECK_ARG(out && count && loss && targets, "%s: a pointer argument is NULL", fn);
    FSDP_CHECK_ARG(N > 0, "%s: N (%d) must be positive", fn, N);
    double total = 0.0;
    int32_t counted = 0;
    for (int n = 0; n < N; n++) {
        if (targets[n] == ignore_index) continue;
        counted++;
        total += loss[n];
    }
    *count = counted;
    *out = fsdp_mean_of(total, counted, denominator);
    return FSDP_OK;
}

int fsdp_crossentropy_mean_backward_cpu(float *dloss, const float *dout, const int32_t *count,
                                        const int32_t *targets, int N, int ignore_index, double denominator) {
    const char *fn = "fsdp_crossentropy_mean_backward_cpu";
    FSDP_CHECK_ARG(dloss && dout && count && targets, "%s: a pointer argument is NULL", fn);
    FSDP_CHECK_ARG(N > 0, "%s: N (%d) must be positive", fn, N);
    const float d = fsdp_mean_row_grad(*dout, *count, denominator);
    for (int n = 0; n < N; n++)
        if (targets[n] != ignore_index) dloss[n] += d;
    return FSDP_OK;
}
