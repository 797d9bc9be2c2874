/* comm_reduce.c - the host reductions of the mpi and tcp backends, one copy
 * for both so that their results agree bit for bit: f32 and the integers
 * combine natively, bf16 and f16 widen to f32, combine and round back per
 * step (the same per-element math the CPU kernels use, dtype_math.h), and
 * AVG divides the sum by the group size in f32. */
#include "internal.h"
#include "comm_ops.h"
#include "dtype_math.h"

/* acc[i] = acc[i] (+ or max) in[i] for n elements; AVG adds (divided later) */
void fsdp_reduce_combine(void *acc, const void *in, int64_t n, int dtype, int op) {
    int is_max = op == FSDP_REDUCE_MAX;
    switch (dtype) {
    case FSDP_F32: {
        float *a = acc;
        const float *b = in;
        if (is_max) for (int64_t i = 0; i < n; i++) a[i] = b[i] > a[i] ? b[i] : a[i];
        else for (int64_t i = 0; i < n; i++) a[i] = a[i] + b[i];
        break;
    }
    case FSDP_BF16: case FSDP_F16:
        for (int64_t i = 0; i < n; i++) {
            float x = fsdp_load_as_f32(acc, i, dtype), y = fsdp_load_as_f32(in, i, dtype);
            fsdp_store_from_f32(acc, i, dtype, is_max ? (y > x ? y : x) : x + y);
        }
        break;
    case FSDP_I32: {
        int32_t *a = acc;
        const int32_t *b = in;
        if (is_max) for (int64_t i = 0; i < n; i++) a[i] = b[i] > a[i] ? b[i] : a[i];
        else for (int64_t i = 0; i < n; i++) a[i] = (int32_t)((uint32_t)a[i] + (uint32_t)b[i]);
        break;
    }
    case FSDP_I64: {
        int64_t *a = acc;
        const int64_t *b = in;
        if (is_max) for (int64_t i = 0; i < n; i++) a[i] = b[i] > a[i] ? b[i] : a[i];
        else for (int64_t i = 0; i < n; i++) a[i] = (int64_t)((uint64_t)a[i] + (uint64_t)b[i]);
        break;
    }
    case FSDP_U16: {
        uint16_t *a = acc;
        const uint16_t *b = in;
        if (is_max) for (int64_t i = 0; i < n; i++) a[i] = b[i] > a[i] ? b[i] : a[i];
        else for (int64_t i = 0; i < n; i++) a[i] = (uint16_t)(a[i] + b[i]);
        break;
    }
    default: {
        uint8_t *a = acc;
        const uint8_t *b = in;
        if (is_max) for (int64_t i = 0; i < n; i++) a[i] = b[i] > a[i] ? b[i] : a[i];
        else for (int64_t i = 0; i < n; i++) a[i] = (uint8_t)(a[i] + b[i]);
        break;
    }
    }
}

void fsdp_reduce_divide(void *buf, int64_t n, int dtype, int size) {
    if (size <= 1) return;
    float d = (float)size;
    if (dtype == FSDP_F32) { /* the common case, in a loop the compiler vectorizes: the same bits */
        float *b = buf;
        for (int64_t i = 0; i < n; i++) b[i] = b[i] / d;
        return;
    }
    for (int64_t i = 0; i < n; i++) fsdp_store_from_f32(buf, i, dtype, fsdp_load_as_f32(buf, i, dtype) / d);
}
