/* cast_cpu.c - contiguous casts among f32, bf16 and f16 by way of f32, using
 * the bit-level conversions of dtype_math.h (round to nearest even).
 * dst and src must not overlap unless the dtypes are equal. */
#include <string.h>
#include "internal.h"
#include "dtype_math.h"

#define PAR_MIN 65536

static int is_float_dtype(int dtype) {
    return dtype == FSDP_F32 || dtype == FSDP_BF16 || dtype == FSDP_F16;
}

int fsdp_cast_cpu(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n) {
    const char *fn = "fsdp_cast_cpu";
    FSDP_CHECK_ARG(n >= 0, "%s: n must be >= 0, got %lld", fn, (long long)n);
    FSDP_CHECK_ARG(is_float_dtype(dst_dtype), "%s: dst dtype %d is not f32, bf16 or f16", fn,
                   dst_dtype);
    FSDP_CHECK_ARG(is_float_dtype(src_dtype), "%s: src dtype %d is not f32, bf16 or f16", fn,
                   src_dtype);
    if (n == 0) return FSDP_OK;
    FSDP_CHECK_ARG(dst && src, "%s: dst and src must not be NULL", fn);

    /* same dtype: a plain copy (memmove, so dst == src is harmless) */
    if (dst_dtype == src_dtype) {
        memmove(dst, src, (size_t)n * fsdp_dtype_size(dst_dtype));
        return FSDP_OK;
    }
    /* otherwise widen each element to f32 and round it to the destination */
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        fsdp_store_from_f32(dst, i, dst_dtype, fsdp_load_as_f32(src, i, src_dtype));
    return FSDP_OK;
}
