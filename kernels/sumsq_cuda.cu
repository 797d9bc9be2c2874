/* sumsq_cuda.cu - whole-buffer sums in double: the sum of squares for
 * gradient norms and the plain sum (a loss over tokens, a test checksum).
 * Two fixed passes so the result does not depend on timing: pass 1 has a
 * grid that depends only on n, each block summing the elements i with
 * i / 256 == block (mod blocks) and writing one partial; pass 2, a single
 * block, adds the partials. NaN or inf elements make the result non-finite. */
#include "cuda_common.cuh"

enum { SUMSQ_THREADS = 256, SUMSQ_MAX_BLOCKS = 1024 };

/* ---- kernels ------------------------------------------------------------ */

/* SQUARE: sum of x[i]^2, else of x[i]; each term exact in double */
template <bool SQUARE>
static __global__ void sum_partial_kernel(double *partial, const float *x, int64_t n) {
    double s = 0.0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double v = x[i];
        s += SQUARE ? v * v : v;
    }
    s = fsdp_block_sum_d(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* one block of SUMSQ_MAX_BLOCKS threads: out[0] = sum of the partials
 * (rounded once when T is float) */
template <class T>
static __global__ void sum_final_kernel(T *out, const double *partial, int count) {
    const double s = fsdp_block_sum_d((int)threadIdx.x < count ? partial[threadIdx.x] : 0.0);
    if (threadIdx.x == 0) out[0] = (T)s;
}

/* ---- launchers ---------------------------------------------------------- */

template <bool SQUARE, class T>
static int sum_launch(const char *fn, T *out, const float *x, int64_t n, fsdp_stream stream) {
    FSDP_CHECK_ARG(n >= 0, "%s: n (%lld) must not be negative", fn, (long long)n);
    FSDP_CHECK_ARG(out, "%s: out is NULL", fn);
    if (n == 0) return fsdp_cuda_status(cudaMemsetAsync(out, 0, sizeof(T), stream), fn,
                                        "cudaMemsetAsync");
    FSDP_CHECK_ARG(x, "%s: x is NULL", fn);
    const int64_t want = fsdp_cuda_grid(n, SUMSQ_THREADS);
    const int blocks = want < SUMSQ_MAX_BLOCKS ? (int)want : SUMSQ_MAX_BLOCKS;
    double *partial = NULL;
    int rc = fsdp_cuda_status(cudaMallocAsync((void **)&partial, sizeof(double) * blocks, stream), fn,
                              "cudaMallocAsync of the partial sums");
    if (rc) return rc;
    void (*partial_kernel)(double *, const float *, int64_t) = sum_partial_kernel<SQUARE>;
    void (*final_kernel)(T *, const double *, int) = sum_final_kernel<T>;
    FSDP_LAUNCH(partial_kernel, blocks, SUMSQ_THREADS, 0, stream, partial, x, n);
    rc = fsdp_cuda_launched(fn);
    if (!rc) {
        FSDP_LAUNCH(final_kernel, 1, SUMSQ_MAX_BLOCKS, 0, stream, out, partial, blocks);
        rc = fsdp_cuda_launched(fn);
    }
    cudaFreeAsync(partial, stream);
    return rc;
}

int fsdp_sumsq_cuda(double *out, const float *x, int64_t n, fsdp_stream stream) {
    return sum_launch<true>("fsdp_sumsq_cuda", out, x, n, stream);
}

int fsdp_sum_cuda(float *out, const float *x, int64_t n, fsdp_stream stream) {
    return sum_launch<false>("fsdp_sum_cuda", out, x, n, stream);
}
