/* norm_cpu.c - sum of squares for gradient norms, the CPU reference.
 *
 * The result must not depend on the thread count (every rank and every run
 * clips by the same norm), so the sum has a fixed shape: x is cut into
 * chunks of CHUNK elements, each chunk is summed in double on its own, and
 * the chunk sums are added in index order. Threads only decide who sums
 * which chunk. A NaN or inf in x makes the result NaN or inf. */
#include <math.h>
#include "internal.h"

enum {
    CHUNK = 65536,  /* elements per partial sum */
    BATCH = 64      /* chunks summed per parallel pass (partials live on the stack) */
};

/* sum of x[i]^2 over one chunk, in double */
static double chunk_sumsq(const float *x, int64_t n) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

/* on bad arguments: NaN, with the message in fsdp_last_error() */
double fsdp_sumsq_cpu(const float *x, int64_t n) {
    if (n < 0) {
        fsdp_error(FSDP_ERR_INVALID, "fsdp_sumsq_cpu: n (%lld) must not be negative", (long long)n);
        return NAN;
    }
    if (n == 0) return 0.0;
    if (!x) {
        fsdp_error(FSDP_ERR_INVALID, "fsdp_sumsq_cpu: x is NULL");
        return NAN;
    }
    const int64_t nchunks = (n + CHUNK - 1) / CHUNK;
    double total = 0.0;
    for (int64_t c0 = 0; c0 < nchunks; c0 += BATCH) {
        const int count = (int)(nchunks - c0 < BATCH ? nchunks - c0 : BATCH);
        double partial[BATCH];
        /* 1. each chunk of this batch summed on its own */
#pragma omp parallel for schedule(static) if (count > 1)
        for (int c = 0; c < count; c++) {
            const int64_t start = (c0 + c) * CHUNK;
            const int64_t len = n - start < CHUNK ? n - start : CHUNK;
            partial[c] = chunk_sumsq(x + start, len);
        }
        /* 2. the chunk sums added in order */
        for (int c = 0; c < count; c++) total += partial[c];
    }
    return total;
}
