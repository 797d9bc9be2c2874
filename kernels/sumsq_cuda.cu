/* sumsq_cuda.cu - sum of squares in double for gradient norms, in two fixed
 * passes so the result does not depend on timing: pass 1 has a grid that
 * depends only on n, each block summing the elements i with i / 256 ==
 * block (mod blocks) and writing one partial; pass 2, a single block, adds
 * the partials. NaN or inf elements make the result non-finite. */
#include "cuda_common.cuh"

enum { SUMSQ_THREADS = 256, SUMSQ_MAX_BLOCKS = 1024 };

/* ---- kernels ------------------------------------------------------------ */

static __global__ void sumsq_partial_kernel(double *partial, const float *x, int64_t n) {
    double s = 0.0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        s += (double)x[i] * (double)x[i];
    s = fsdp_block_sum_d(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* one block of SUMSQ_MAX_BLOCKS threads: out[0] = sum of the partials */
static __global__ void sumsq_final_kernel(double *out, const double *partial, int count) {
    const double s = fsdp_block_sum_d((int)threadIdx.x < count ? partial[threadIdx.x] : 0.0);
    if (threadIdx.x == 0) out[0] = s;
}

/* ---- launchers ---------------------------------------------------------- */

int fsdp_sumsq_cuda(double *out, const float *x, int64_t n, fsdp_stream stream) {
    const char *fn = "fsdp_sumsq_cuda";
    FSDP_CHECK_ARG(n >= 0, "%s: n (%lld) must not be negative", fn, (long long)n);
    FSDP_CHECK_ARG(out, "%s: out is NULL", fn);
    if (n == 0) return fsdp_cuda_status(cudaMemsetAsync(out, 0, sizeof(double), stream), fn,
                                        "cudaMemsetAsync");
    FSDP_CHECK_ARG(x, "%s: x is NULL", fn);
    const int64_t want = fsdp_cuda_grid(n, SUMSQ_THREADS);
    const int blocks = want < SUMSQ_MAX_BLOCKS ? (int)want : SUMSQ_MAX_BLOCKS;
    double *partial = NULL;
    int rc = fsdp_cuda_status(cudaMallocAsync((void **)&partial, sizeof(double) * blocks, stream), fn,
                              "cudaMallocAsync of the partial sums");
    if (rc) return rc;
    FSDP_LAUNCH(sumsq_partial_kernel, blocks, SUMSQ_THREADS, 0, stream, partial, x, n);
    rc = fsdp_cuda_launched(fn);
    if (!rc) {
        FSDP_LAUNCH(sumsq_final_kernel, 1, SUMSQ_MAX_BLOCKS, 0, stream, out, partial, blocks);
        rc = fsdp_cuda_launched(fn);
    }
    cudaFreeAsync(partial, stream);
    return rc;
}
