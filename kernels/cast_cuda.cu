/* cast_cuda.cu - contiguous casts among f32, bf16 and f16, one thread per
 * element, through the bit-exact conversions of dtype_math.h (the CPU cast
 * uses them too, so both give the same bits, NaN payloads included). */
#include "cuda_common.cuh"

/* ---- kernels ------------------------------------------------------------ */

/* SRC and DST are fsdp dtypes; the switches in dtype_math.h fold away */
template <int SRC, int DST>
static __global__ void cast_kernel(void *dst, const void *src, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) fsdp_store_from_f32(dst, i, DST, fsdp_load_as_f32(src, i, SRC));
}

/* dst (f32) += src widened from SRC: a 16-bit gradient added into its f32 one */
template <int SRC>
static __global__ void cast_add_kernel(float *dst, const void *src, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += fsdp_load_as_f32(src, i, SRC);
}

/* ---- launchers ---------------------------------------------------------- */

static int is_float_dtype(int dtype) {
    return dtype == FSDP_F32 || dtype == FSDP_BF16 || dtype == FSDP_F16;
}

int fsdp_cast_cuda(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n,
                   fsdp_stream stream) {
    const char *fn = "fsdp_cast_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(is_float_dtype(dst_dtype), "%s: dst dtype %d is not f32, bf16 or f16", fn,
                   dst_dtype);
    FSDP_CHECK_ARG(is_float_dtype(src_dtype), "%s: src dtype %d is not f32, bf16 or f16", fn,
                   src_dtype);
    if (n == 0) return FSDP_OK;
    FSDP_CHECK_ARG(dst && src, "%s: dst and src must not be NULL", fn);

    /* same dtype: a device copy (nothing to do in place) */
    if (dst_dtype == src_dtype) {
        if (dst == src) return FSDP_OK;
        return fsdp_cuda_status(cudaMemcpyAsync(dst, src, (size_t)n * (dst_dtype == FSDP_F32 ? 4 : 2),
                                                cudaMemcpyDeviceToDevice, stream),
                                fn, "cudaMemcpyAsync");
    }
    void (*kernel)(void *, const void *, int64_t) = NULL;
    switch (src_dtype * 3 + dst_dtype) {
    case FSDP_F32 * 3 + FSDP_BF16: kernel = cast_kernel<FSDP_F32, FSDP_BF16>; break;
    case FSDP_F32 * 3 + FSDP_F16: kernel = cast_kernel<FSDP_F32, FSDP_F16>; break;
    case FSDP_BF16 * 3 + FSDP_F32: kernel = cast_kernel<FSDP_BF16, FSDP_F32>; break;
    case FSDP_BF16 * 3 + FSDP_F16: kernel = cast_kernel<FSDP_BF16, FSDP_F16>; break;
    case FSDP_F16 * 3 + FSDP_F32: kernel = cast_kernel<FSDP_F16, FSDP_F32>; break;
    default: kernel = cast_kernel<FSDP_F16, FSDP_BF16>; break;
    }
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, dst, src, n);
    return fsdp_cuda_launched(fn);
}

int fsdp_cast_add_cuda(float *dst, const void *src, int src_dtype, int64_t n, fsdp_stream stream) {
    const char *fn = "fsdp_cast_add_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(is_float_dtype(src_dtype), "%s: src dtype %d is not f32, bf16 or f16", fn, src_dtype);
    if (n == 0) return FSDP_OK;
    FSDP_CHECK_ARG(dst && src, "%s: dst and src must not be NULL", fn);
    void (*kernel)(float *, const void *, int64_t) =
        src_dtype == FSDP_BF16 ? cast_add_kernel<FSDP_BF16> : src_dtype == FSDP_F16 ? cast_add_kernel<FSDP_F16>
                                                                                    : cast_add_kernel<FSDP_F32>;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, dst, src, n);
    return fsdp_cuda_launched(fn);
}
