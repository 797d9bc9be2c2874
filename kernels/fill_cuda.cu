/* fill_cuda.cu - n contiguous elements of device memory set to one value,
 * the device side of fsdp_tensor_fill. The value is converted on the host
 * exactly as the CPU fill converts it ((float)value rounded to bf16 / f16 by
 * dtype_math.h, a C cast for the integer dtypes), so both give the same
 * bits; a kernel then stores that bit pattern. 0 (and -0.0, as on the CPU)
 * is a memset to zero bytes. */
#include "cuda_common.cuh"

enum { FILL_THREADS = 256, FILL_MAX_BLOCKS = 1024 };

/* ---- kernels ------------------------------------------------------------ */

/* dst[i] = v for i < n, a block-stride loop over at most FILL_MAX_BLOCKS blocks */
template <class T>
static __global__ void fill_kernel(T *dst, T v, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = v;
}

/* ---- launchers ---------------------------------------------------------- */

template <class T>
static int fill(const char *fn, void *dst, T v, int64_t n, fsdp_stream stream) {
    const int64_t want = fsdp_cuda_grid(n, FILL_THREADS);
    const unsigned blocks = want < FILL_MAX_BLOCKS ? (unsigned)want : (unsigned)FILL_MAX_BLOCKS;
    void (*kernel)(T *, T, int64_t) = fill_kernel<T>;
    FSDP_LAUNCH(kernel, blocks, FILL_THREADS, 0, stream, (T *)dst, v, n);
    return fsdp_cuda_launched(fn);
}

/* value as an integer dtype: a C cast, like the CPU fill, of a value the
 * type can hold after truncation toward zero (the cast of anything else is
 * undefined in C, so it is refused here) */
#define FILL_CHECK_RANGE(fn, value, lo, hi, name)                                              \
    FSDP_CHECK_ARG((value) > (lo) && (value) < (hi), "%s: %g is outside the range of %s", fn, \
                   value, name)

int fsdp_fill_cuda(void *dst, int dtype, double value, int64_t n, fsdp_stream stream) {
    const char *fn = "fsdp_fill_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(dtype >= 0 && dtype < FSDP_NUM_DTYPES, "%s: unknown dtype %d", fn, dtype);
    FSDP_CHECK_ARG(n == 0 || dst, "%s: dst must not be NULL", fn);
    if (n == 0) return FSDP_OK;
    if (value == 0.0) /* zero bits in every dtype, as the CPU's memset */
        return fsdp_cuda_status(cudaMemsetAsync(dst, 0, (size_t)(n * fsdp_dtype_size(dtype)), stream),
                                fn, "cudaMemsetAsync");
    switch (dtype) {
    case FSDP_F32: return fill<float>(fn, dst, (float)value, n, stream);
    case FSDP_BF16:
    case FSDP_F16: {
        uint16_t h;
        fsdp_store_from_f32(&h, 0, dtype, (float)value);
        return fill<uint16_t>(fn, dst, h, n, stream);
    }
    case FSDP_I32:
        FILL_CHECK_RANGE(fn, value, -2147483649.0, 2147483648.0, "i32");
        return fill<int32_t>(fn, dst, (int32_t)value, n, stream);
    case FSDP_I64:
        FILL_CHECK_RANGE(fn, value, -9223372036854777856.0, 9223372036854775808.0, "i64");
        return fill<int64_t>(fn, dst, (int64_t)value, n, stream);
    case FSDP_U16:
        FILL_CHECK_RANGE(fn, value, -1.0, 65536.0, "u16");
        return fill<uint16_t>(fn, dst, (uint16_t)value, n, stream);
    default: /* FSDP_U8 */
        FILL_CHECK_RANGE(fn, value, -1.0, 256.0, "u8");
        return fill<uint8_t>(fn, dst, (uint8_t)value, n, stream);
    }
}
