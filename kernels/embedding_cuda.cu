/* embedding_cuda.cu - token embedding lookup, out[n,:] = table[idx[n],:].
 * Ids live on the device, so they are checked in the kernel, not up front:
 * an id outside [0, V) gives a NaN row and adds no gradient. */
#include "cuda_common.cuh"

/* ---- kernels ------------------------------------------------------------ */

/* one thread per output element */
static __global__ void embedding_forward_kernel(float *out, const int32_t *idx, const float *table,
                                                int N, int V, int C) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)N * C) return;
    const int n = (int)(i / C), c = (int)(i % C);
    const int32_t id = idx[n];
    out[i] = id >= 0 && id < V ? table[(int64_t)id * C + c] : NAN;
}

/* Tokens repeat, so rows of dtable are shared between tokens. One thread
 * owns one channel and adds the tokens in order: no atomics, and the same
 * additions in the same order as the CPU kernel (identical bits). */
static __global__ void embedding_backward_kernel(float *dtable, const float *dout,
                                                 const int32_t *idx, int N, int V, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int n = 0; n < N; n++) {
        const int32_t id = idx[n];
        if (id >= 0 && id < V) dtable[(int64_t)id * C + c] += dout[(int64_t)n * C + c];
    }
}

/* ---- launchers ---------------------------------------------------------- */

static int check_dims(const char *fn, const int32_t *idx, int N, int V, int C) {
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(V > 0, "%s: V must be > 0, got %d", fn, V);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    FSDP_CHECK_ARG(idx, "%s: idx must not be NULL", fn);
    return FSDP_OK;
}

int fsdp_embedding_forward_cuda(float *out, const int32_t *idx, const float *table, int N, int V,
                                int C, fsdp_stream stream) {
    const char *fn = "fsdp_embedding_forward_cuda";
    FSDP_CHECK_ARG(out && table, "%s: out and table must not be NULL", fn);
    int rc = check_dims(fn, idx, N, V, C);
    if (rc) return rc;
    const int64_t blocks = fsdp_cuda_grid((int64_t)N * C, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(embedding_forward_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, out, idx,
                table, N, V, C);
    return fsdp_cuda_launched(fn);
}

int fsdp_embedding_backward_cuda(float *dtable, const float *dout, const int32_t *idx, int N, int V,
                                 int C, fsdp_stream stream) {
    const char *fn = "fsdp_embedding_backward_cuda";
    FSDP_CHECK_ARG(dtable && dout, "%s: dtable and dout must not be NULL", fn);
    int rc = check_dims(fn, idx, N, V, C);
    if (rc) return rc;
    FSDP_LAUNCH(embedding_backward_kernel, fsdp_cuda_grid(C, FSDP_EW_THREADS), FSDP_EW_THREADS, 0,
                stream, dtable, dout, idx, N, V, C);
    return fsdp_cuda_launched(fn);
}
