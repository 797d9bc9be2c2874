/* embedding_cpu.c - token embedding lookup: out[n,:] = table[idx[n],:]. */
#include <string.h>
#include "internal.h"

/* channels per block in the backward pass */
enum { EMB_BLOCK = 64 };

static int check_args(const char *fn, const int32_t *idx, int N, int V, int C) {
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(V > 0, "%s: V must be > 0, got %d", fn, V);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    FSDP_CHECK_ARG(idx, "%s: idx must not be NULL", fn);
    /* every index is checked before anything is written */
    for (int n = 0; n < N; n++)
        FSDP_CHECK_ARG(idx[n] >= 0 && idx[n] < V, "%s: idx[%d] = %d is outside [0, %d)", fn, n,
                       (int)idx[n], V);
    return FSDP_OK;
}

int fsdp_embedding_forward_cpu(float *out, const int32_t *idx, const float *table,
                               int N, int V, int C) {
    const char *fn = "fsdp_embedding_forward_cpu";
    FSDP_CHECK_ARG(out && table, "%s: out and table must not be NULL", fn);
    int rc = check_args(fn, idx, N, V, C);
    if (rc) return rc;

    /* copy one table row per token */
    #pragma omp parallel for if ((int64_t)N * C > 65536)
    for (int n = 0; n < N; n++)
        memcpy(out + (int64_t)n * C, table + (int64_t)idx[n] * C, sizeof(float) * C);
    return FSDP_OK;
}

int fsdp_embedding_backward_cpu(float *dtable, const float *dout, const int32_t *idx,
                                int N, int V, int C) {
    const char *fn = "fsdp_embedding_backward_cpu";
    FSDP_CHECK_ARG(dtable && dout, "%s: dtable and dout must not be NULL", fn);
    int rc = check_args(fn, idx, N, V, C);
    if (rc) return rc;

    /* tokens may repeat, so rows of dtable are shared between tokens; instead
     * each thread owns a block of channels and adds the tokens in order,
     * which is race-free and gives the same sums for any thread count */
    #pragma omp parallel for if ((int64_t)N * C > 65536)
    for (int c0 = 0; c0 < C; c0 += EMB_BLOCK) {
        int width = C - c0 < EMB_BLOCK ? C - c0 : EMB_BLOCK;
        for (int n = 0; n < N; n++) {
            float *drow = dtable + (int64_t)idx[n] * C + c0;
            const float *grow = dout + (int64_t)n * C + c0;
            for (int j = 0; j < width; j++) drow[j] += grow[j];
        }
    }
    return FSDP_OK;
}
