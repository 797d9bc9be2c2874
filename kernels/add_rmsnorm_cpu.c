/* add_rmsnorm_cpu.c - a residual add followed by RMSNorm, the pattern
 * between a Llama block's sublayers: sum = a + b (the new residual stream),
 * out = rmsnorm(sum) * weight, saving rstd. The CPU reference is the
 * composition of the two kernels (the same bits as calling them one after
 * the other); add_rmsnorm_cuda.cu fuses them into one pass over the rows.
 * Backward needs no kernel of its own: the norm's input gradient is
 * fsdp_rmsnorm_backward_* into the gradient of sum, which then flows to a
 * and b unchanged. */
#include "internal.h"

int fsdp_add_rmsnorm_forward_cpu(float *sum, float *out, float *rstd, const float *a, const float *b,
                                 const float *weight, int N, int C, float eps) {
    const char *fn = "fsdp_add_rmsnorm_forward_cpu";
    FSDP_CHECK_ARG(N > 0 && C > 0, "%s: N (%d) and C (%d) must be positive", fn, N, C);
    FSDP_CHECK_ARG(sum && out && rstd && a && b && weight, "%s: a pointer argument is NULL", fn);
    int rc = fsdp_add_cpu(sum, a, b, (int64_t)N * C);
    return rc ? rc : fsdp_rmsnorm_forward_cpu(out, rstd, sum, weight, N, C, eps);
}
