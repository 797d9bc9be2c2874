/* crossentropy_mean_cuda.cu - the mean of cross-entropy's per-row losses
 * over the rows whose target is not ignore_index, on the device: the count
 * and the mean are written to device memory, so ops.cross_entropy copies
 * nothing to the host (crossentropy_mean_cpu.c is the reference). One block
 * sums the rows in a fixed order (thread i takes rows i, i + 1024, ...; a
 * block sum in double), so a call gives the same bits on every run; the
 * CPU's sum runs in row order, so the two can differ in the last bit of the
 * double before the one rounding to f32. */
#include "cuda_common.cuh"
#include "loss_mean_math.h"

enum { MEAN_THREADS = 1024 };

/* ---- kernels ------------------------------------------------------------ */

static __global__ void crossentropy_mean_forward_kernel(float *out, int32_t *count, const float *loss,
                                                        const int32_t *targets, int N, int ignore_index,
                                                        double denominator) {
    double total = 0.0, counted = 0.0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        if (targets[n] == ignore_index) continue;
        counted += 1.0;
        total += loss[n];
    }
    total = fsdp_block_sum_d(total);
    counted = fsdp_block_sum_d(counted); /* exact: whole numbers below 2^31 */
    if (threadIdx.x == 0) {
        *count = (int32_t)counted;
        *out = fsdp_mean_of(total, (int32_t)counted, denominator);
    }
}

static __global__ void crossentropy_mean_backward_kernel(float *dloss, const float *dout, const int32_t *count,
                                                         const int32_t *targets, int N, int ignore_index,
                                                         double denominator) {
    const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N || targets[n] == ignore_index) return;
    dloss[n] += fsdp_mean_row_grad(*dout, *count, denominator);
}

/* ---- launchers ---------------------------------------------------------- */

int fsdp_crossentropy_mean_forward_cuda(float *out, int32_t *count, const float *loss, const int32_t *targets,
                                        int N, int ignore_index, double denominator, fsdp_stream stream) {
    const char *fn = "fsdp_crossentropy_mean_forward_cuda";
    FSDP_CHECK_ARG(out && count && loss && targets, "%s: a pointer argument is NULL", fn);
    FSDP_CHECK_ARG(N > 0, "%s: N (%d) must be positive", fn, N);
    FSDP_LAUNCH(crossentropy_mean_forward_kernel, 1, MEAN_THREADS, 0, stream, out, count, loss, targets, N,
                ignore_index, denominator);
    return fsdp_cuda_launched(fn);
}

int fsdp_crossentropy_mean_backward_cuda(float *dloss, const float *dout, const int32_t *count,
                                         const int32_t *targets, int N, int ignore_index, double denominator,
                                         fsdp_stream stream) {
    const char *fn = "fsdp_crossentropy_mean_backward_cuda";
    FSDP_CHECK_ARG(dloss && dout && count && targets, "%s: a pointer argument is NULL", fn);
    FSDP_CHECK_ARG(N > 0, "%s: N (%d) must be positive", fn, N);
    FSDP_LAUNCH(crossentropy_mean_backward_kernel, fsdp_cuda_grid(N, FSDP_EW_THREADS), FSDP_EW_THREADS, 0, stream,
                dloss, dout, count, targets, N, ignore_index, denominator);
    return fsdp_cuda_launched(fn);
}
