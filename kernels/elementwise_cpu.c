/* elementwise_cpu.c - small vector helpers over n contiguous floats. Outputs
 * may alias inputs (in-place use is fine). n may be 0. */
#include "internal.h"

#define PAR_MIN 65536

#define CHECK_N(fn, n) \
    FSDP_CHECK_ARG((n) >= 0, "%s: n must be >= 0, got %lld", fn, (long long)(n))
#define CHECK_PTRS(fn, n, ok, names) \
    FSDP_CHECK_ARG((n) == 0 || (ok), "%s: %s must not be NULL", fn, names)

/* out = a + b */
int fsdp_add_cpu(float *out, const float *a, const float *b, int64_t n) {
    CHECK_N("fsdp_add_cpu", n);
    CHECK_PTRS("fsdp_add_cpu", n, out && a && b, "out, a and b");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
    return FSDP_OK;
}

/* y += alpha * x */
int fsdp_axpy_cpu(float *y, float alpha, const float *x, int64_t n) {
    CHECK_N("fsdp_axpy_cpu", n);
    CHECK_PTRS("fsdp_axpy_cpu", n, y && x, "y and x");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
    return FSDP_OK;
}

/* out = alpha * x */
int fsdp_scale_cpu(float *out, float alpha, const float *x, int64_t n) {
    CHECK_N("fsdp_scale_cpu", n);
    CHECK_PTRS("fsdp_scale_cpu", n, out && x, "out and x");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = alpha * x[i];
    return FSDP_OK;
}

/* out = a * b */
int fsdp_mul_cpu(float *out, const float *a, const float *b, int64_t n) {
    CHECK_N("fsdp_mul_cpu", n);
    CHECK_PTRS("fsdp_mul_cpu", n, out && a && b, "out, a and b");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * b[i];
    return FSDP_OK;
}
