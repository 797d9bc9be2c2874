/* elementwise_cuda.cu - vector helpers over n contiguous floats, one thread
 * per element: out = a + b, y += alpha x, out = alpha x, out = a * b.
 * Outputs may alias inputs (each thread reads its element before writing). */
#include "cuda_common.cuh"

enum { OP_ADD, OP_MUL };

/* ---- kernels ------------------------------------------------------------ */

template <int OP>
static __global__ void binary_kernel(float *out, const float *a, const float *b, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = OP == OP_ADD ? a[i] + b[i] : a[i] * b[i];
}

static __global__ void axpy_kernel(float *y, float alpha, const float *x, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += alpha * x[i];
}

static __global__ void scale_kernel(float *out, float alpha, const float *x, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = alpha * x[i];
}

/* ---- launchers ---------------------------------------------------------- */

template <int OP>
static int binary(const char *fn, float *out, const float *a, const float *b, int64_t n,
                  fsdp_stream stream) {
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (out && a && b), "%s: out, a and b must not be NULL", fn);
    if (n == 0) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    void (*kernel)(float *, const float *, const float *, int64_t) = binary_kernel<OP>;
    FSDP_LAUNCH(kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, out, a, b, n);
    return fsdp_cuda_launched(fn);
}

int fsdp_add_cuda(float *out, const float *a, const float *b, int64_t n, fsdp_stream stream) {
    return binary<OP_ADD>("fsdp_add_cuda", out, a, b, n, stream);
}

int fsdp_mul_cuda(float *out, const float *a, const float *b, int64_t n, fsdp_stream stream) {
    return binary<OP_MUL>("fsdp_mul_cuda", out, a, b, n, stream);
}

int fsdp_axpy_cuda(float *y, float alpha, const float *x, int64_t n, fsdp_stream stream) {
    const char *fn = "fsdp_axpy_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (y && x), "%s: y and x must not be NULL", fn);
    if (n == 0) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(axpy_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, y, alpha, x, n);
    return fsdp_cuda_launched(fn);
}

int fsdp_scale_cuda(float *out, float alpha, const float *x, int64_t n, fsdp_stream stream) {
    const char *fn = "fsdp_scale_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (out && x), "%s: out and x must not be NULL", fn);
    if (n == 0) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(scale_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, out, alpha, x, n);
    return fsdp_cuda_launched(fn);
}
