/* activation_cuda.cu - pointwise activations (GELU tanh, ReLU, SiLU,
 * SwiGLU) and soft-capping, forward and backward, one thread per element. The formulas are
 * activation_math.h's and the accumulations the CPU kernels' fsdp_fma forms,
 * so both backends round alike. Backward accumulates: dinp += dout * f'(inp). */
#include "cuda_common.cuh"
#include "activation_math.h"

enum { ACT_GELU, ACT_RELU, ACT_SILU };

/* ---- kernels ------------------------------------------------------------ */

template <int ACT> static __device__ __forceinline__ float act(float x) {
    return ACT == ACT_GELU ? fsdp_gelu(x) : ACT == ACT_RELU ? fsdp_relu(x) : fsdp_silu(x);
}
template <int ACT> static __device__ __forceinline__ float act_grad(float x) {
    return ACT == ACT_GELU ? fsdp_gelu_grad(x) : ACT == ACT_RELU ? fsdp_relu_grad(x)
                                                                 : fsdp_silu_grad(x);
}

template <int ACT>
static __global__ void act_forward_kernel(float *out, const float *inp, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = act<ACT>(inp[i]);
}

template <int ACT>
static __global__ void act_backward_kernel(float *dinp, const float *dout, const float *inp,
                                           int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dinp[i] = fsdp_fma(dout[i], act_grad<ACT>(inp[i]), dinp[i]);
}

static __global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up,
                                             int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = fsdp_silu(gate[i]) * up[i];
}

/* dgate += dout * up * silu'(gate), dup += dout * silu(gate); either may be NULL */
static __global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout,
                                              const float *gate, const float *up, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (dgate) dgate[i] = fsdp_fma(dout[i] * up[i], fsdp_silu_grad(gate[i]), dgate[i]);
    if (dup) dup[i] = fsdp_fma(dout[i], fsdp_silu(gate[i]), dup[i]);
}

static __global__ void softcap_forward_kernel(float *out, const float *inp, float cap, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = fsdp_softcap(inp[i], cap);
}

static __global__ void softcap_backward_kernel(float *dinp, const float *dout, const float *inp, float cap,
                                               int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dinp[i] = fsdp_fma(dout[i], fsdp_softcap_grad(inp[i], cap), dinp[i]);
}

/* ---- launchers ---------------------------------------------------------- */

template <int ACT>
static int act_forward(const char *fn, float *out, const float *inp, int64_t n, fsdp_stream stream) {
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (out && inp), "%s: out and inp must not be NULL", fn);
    if (n == 0) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    void (*kernel)(float *, const float *, int64_t) = act_forward_kernel<ACT>;
    FSDP_LAUNCH(kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, out, inp, n);
    return fsdp_cuda_launched(fn);
}

template <int ACT>
static int act_backward(const char *fn, float *dinp, const float *dout, const float *inp, int64_t n,
                        fsdp_stream stream) {
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (dinp && dout && inp), "%s: dinp, dout and inp must not be NULL", fn);
    if (n == 0) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    void (*kernel)(float *, const float *, const float *, int64_t) = act_backward_kernel<ACT>;
    FSDP_LAUNCH(kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, dinp, dout, inp, n);
    return fsdp_cuda_launched(fn);
}

int fsdp_gelu_forward_cuda(float *out, const float *inp, int64_t n, fsdp_stream stream) {
    return act_forward<ACT_GELU>("fsdp_gelu_forward_cuda", out, inp, n, stream);
}
int fsdp_gelu_backward_cuda(float *dinp, const float *dout, const float *inp, int64_t n,
                            fsdp_stream stream) {
    return act_backward<ACT_GELU>("fsdp_gelu_backward_cuda", dinp, dout, inp, n, stream);
}
int fsdp_relu_forward_cuda(float *out, const float *inp, int64_t n, fsdp_stream stream) {
    return act_forward<ACT_RELU>("fsdp_relu_forward_cuda", out, inp, n, stream);
}
int fsdp_relu_backward_cuda(float *dinp, const float *dout, const float *inp, int64_t n,
                            fsdp_stream stream) {
    return act_backward<ACT_RELU>("fsdp_relu_backward_cuda", dinp, dout, inp, n, stream);
}
int fsdp_silu_forward_cuda(float *out, const float *inp, int64_t n, fsdp_stream stream) {
    return act_forward<ACT_SILU>("fsdp_silu_forward_cuda", out, inp, n, stream);
}
int fsdp_silu_backward_cuda(float *dinp, const float *dout, const float *inp, int64_t n,
                            fsdp_stream stream) {
    return act_backward<ACT_SILU>("fsdp_silu_backward_cuda", dinp, dout, inp, n, stream);
}

int fsdp_swiglu_forward_cuda(float *out, const float *gate, const float *up, int64_t n,
                             fsdp_stream stream) {
    const char *fn = "fsdp_swiglu_forward_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (out && gate && up), "%s: out, gate and up must not be NULL", fn);
    if (n == 0) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(swiglu_forward_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, out, gate, up,
                n);
    return fsdp_cuda_launched(fn);
}

int fsdp_swiglu_backward_cuda(float *dgate, float *dup, const float *dout, const float *gate,
                              const float *up, int64_t n, fsdp_stream stream) {
    const char *fn = "fsdp_swiglu_backward_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (dout && gate && up), "%s: dout, gate and up must not be NULL", fn);
    if (n == 0 || (!dgate && !dup)) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(swiglu_backward_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, dgate, dup,
                dout, gate, up, n);
    return fsdp_cuda_launched(fn);
}

/* soft-capping, as fsdp_softcap_forward_cpu / _backward_cpu */
int fsdp_softcap_forward_cuda(float *out, const float *inp, float cap, int64_t n, fsdp_stream stream) {
    const char *fn = "fsdp_softcap_forward_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (out && inp), "%s: out and inp must not be NULL", fn);
    FSDP_CHECK_ARG(cap > 0.0f && isfinite(cap), "%s: cap must be a positive number, got %g", fn, (double)cap);
    if (n == 0) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(softcap_forward_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, out, inp, cap, n);
    return fsdp_cuda_launched(fn);
}

int fsdp_softcap_backward_cuda(float *dinp, const float *dout, const float *inp, float cap, int64_t n,
                               fsdp_stream stream) {
    const char *fn = "fsdp_softcap_backward_cuda";
    FSDP_CUDA_CHECK_N(fn, n);
    FSDP_CHECK_ARG(n == 0 || (dinp && dout && inp), "%s: dinp, dout and inp must not be NULL", fn);
    FSDP_CHECK_ARG(cap > 0.0f && isfinite(cap), "%s: cap must be a positive number, got %g", fn, (double)cap);
    if (n == 0) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(n, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(softcap_backward_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, dinp, dout, inp, cap, n);
    return fsdp_cuda_launched(fn);
}
