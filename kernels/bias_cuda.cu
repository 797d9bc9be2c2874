/* bias_cuda.cu - bias gradient of a matmul: dbias[N] += column sums of
 * dout[M, N], for f32, bf16 or f16 data with f32 sums. Block (32, 32) per 32
 * columns, thread row y summing rows y, y+32, ..., then the 32 partials of a
 * column added in order: deterministic, no atomics. */
#include "cuda_common.cuh"

/* ---- kernels ------------------------------------------------------------ */

static __global__ void bias_backward_kernel(void *dbias, const void *dout, int M, int N, int dtype) {
    const int c = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (c < N)
        for (int m = threadIdx.y; m < M; m += 32) s += fsdp_load_as_f32(dout, (int64_t)m * N + c, dtype);
    s = fsdp_tile_colsum(s);
    if (threadIdx.y == 0 && c < N) fsdp_store_from_f32(dbias, c, dtype, fsdp_load_as_f32(dbias, c, dtype) + s);
}

/* ---- launchers ---------------------------------------------------------- */

int fsdp_bias_backward_cuda(void *dbias, const void *dout, int M, int N, int dtype,
                            fsdp_stream stream) {
    const char *fn = "fsdp_bias_backward_cuda";
    FSDP_CHECK_ARG(dbias && dout, "%s: dbias and dout must not be NULL", fn);
    FSDP_CHECK_ARG(M > 0 && N > 0, "%s: M (%d) and N (%d) must be positive", fn, M, N);
    FSDP_CHECK_ARG(dtype == FSDP_F32 || dtype == FSDP_BF16 || dtype == FSDP_F16,
                   "%s: dtype %d is not f32, bf16 or f16", fn, dtype);
    FSDP_LAUNCH(bias_backward_kernel, (N + 31) / 32, dim3(32, 32), 0, stream, dbias, dout, M, N, dtype);
    return fsdp_cuda_launched(fn);
}
