/* sumsq_cpu.c - sum of squares for gradient norms, the CPU reference.
 *
 * The result must not depend on the thread count (every rank and every run
 * clips by the same norm), so the sum has a fixed shape: x is cut into
 * chunks of CHUNK elements, each chunk is summed in double on its own, and
 * the chunk sums are added in index order. Threads only decide who sums
 * which chunk. A NaN or inf in x makes the result NaN or inf.
 *
 * fsdp_axpy_sumsq_cpu first adds alpha * x into each chunk of y (the chunk
 * is then in the core's cache) and sums the chunk's squares from there: the
 * gradient reduction's last write and the norm's read in one pass over
 * memory, with the same bits as the two calls one after the other. */
#include <math.h>
#include "internal.h"

enum {
    CHUNK = 65536,  /* elements per partial sum (256 KiB: stays in L2) */
    BATCH = 2048    /* chunks summed per parallel pass (partials live on the stack:
                     * 16 KiB; 134M elements per pass) */
};

/* sum of x[i]^2 over one chunk, in double; one copy of the loop (not
 * inlined), so both entry points sum in the same vector lanes */
__attribute__((noinline)) static double chunk_sumsq(const float *x, int64_t n) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

/* y += alpha * x over one chunk (fsdp_axpy_cpu's expression) */
static void chunk_axpy(float *restrict y, float alpha, const float *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

/* the sum of squares of y after y += alpha * x (x NULL: y as it is) */
static double sumsq_chunked(float *y, float alpha, const float *x, int64_t n) {
    const int64_t nchunks = (n + CHUNK - 1) / CHUNK;
    double total = 0.0;
    for (int64_t c0 = 0; c0 < nchunks; c0 += BATCH) {
        const int count = (int)(nchunks - c0 < BATCH ? nchunks - c0 : BATCH);
        double partial[BATCH];
        /* 1. each chunk of this batch updated and summed on its own; chunks
         * handed out one at a time (a thread that loses its core to another
         * process holds up one chunk, not half of them) */
#pragma omp parallel for schedule(dynamic, 1) if (count > 1)
        for (int c = 0; c < count; c++) {
            const int64_t start = (c0 + c) * CHUNK;
            const int64_t len = n - start < CHUNK ? n - start : CHUNK;
            if (x) chunk_axpy(y + start, alpha, x + start, len);
            partial[c] = chunk_sumsq(y + start, len);
        }
        /* 2. the chunk sums added in order */
        for (int c = 0; c < count; c++) total += partial[c];
    }
    return total;
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
    return sumsq_chunked((float *)x, 0.0f, NULL, n); /* x is only read */
}

int fsdp_axpy_sumsq_cpu(double *sumsq, float *y, float alpha, const float *x, int64_t n) {
    const char *fn = "fsdp_axpy_sumsq_cpu";
    FSDP_CHECK_ARG(sumsq, "%s: sumsq is NULL", fn);
    FSDP_CHECK_ARG(n >= 0, "%s: n (%lld) must not be negative", fn, (long long)n);
    *sumsq = 0.0;
    if (n == 0) return FSDP_OK;
    FSDP_CHECK_ARG(y && x, "%s: y and x must not be NULL", fn);
    *sumsq = sumsq_chunked(y, alpha, x, n);
    return FSDP_OK;
}
