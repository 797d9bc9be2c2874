/* lora_cuda.cu - the dropout of a LoRA layer's adapter input on the GPU,
 * the twin of fsdp_lora_dropout_cpu (kernels/lora_cpu.c): element i of x is
 * multiplied by fsdp_lora_dropout(seed, i, p) (kernels/lora_math.h, shared
 * with the CPU), so both backends keep and drop exactly the same elements
 * and give the same bits. One thread per element. out may alias x.
 * The fused layer itself (fsdp_lora_forward_cuda / backward) composes these
 * with the GEMMs of the compute-dtype policy: engine/cuda/lora_cuda.cu. */
#include "cuda_common.cuh"
#include "lora_math.h"

/* ---- kernels ------------------------------------------------------------ */

template <bool ACC>
static __global__ void lora_dropout_kernel(float *out, const float *x, int64_t n, float p, uint64_t seed) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i] * fsdp_lora_dropout(seed, i, p);
    if (ACC) out[i] += v;
    else out[i] = v;
}

/* ---- launchers ---------------------------------------------------------- */

int fsdp_lora_dropout_cuda(float *out, const float *x, int64_t n, float p, uint64_t seed, int accumulate,
                           fsdp_stream stream) {
    const char *fn = "fsdp_lora_dropout_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (out && x), "%s: out and x must not be NULL", fn);
    FSDP_CHECK_ARG(p >= 0.0f && p < 1.0f, "%s: the dropout rate %g must be in [0, 1)", fn, (double)p);
    if (n == 0) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    void (*kernel)(float *, const float *, int64_t, float, uint64_t) =
        accumulate ? lora_dropout_kernel<true> : lora_dropout_kernel<false>;
    FSDP_LAUNCH(kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, out, x, n, p, seed);
    return fsdp_cuda_launched(fn);
}
