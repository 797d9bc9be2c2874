/* activation_cpu.c - pointwise activations (GELU tanh, ReLU, SiLU, SwiGLU)
 * and soft-capping, forward and backward. The formulas live in activation_math.h, shared with
 * the CUDA kernels. Backward accumulates: dinp += dout * f'(inp), one fused
 * multiply-add (fsdp_fma). The loops have no calls and no branches, so they
 * vectorize. */
#include "internal.h"
#include "activation_math.h"

/* below this many elements a loop is not worth a parallel region */
#define PAR_MIN 32768

/* n may be 0 (nothing to do); every listed pointer must be set when n > 0 */
#define CHECK_N(fn, n) \
    FSDP_CHECK_ARG((n) >= 0, "%s: n must be >= 0, got %lld", fn, (long long)(n))
#define CHECK_PTRS(fn, n, ok, names) \
    FSDP_CHECK_ARG((n) == 0 || (ok), "%s: %s must not be NULL", fn, names)

int fsdp_gelu_forward_cpu(float *out, const float *inp, int64_t n) {
    CHECK_N("fsdp_gelu_forward_cpu", n);
    CHECK_PTRS("fsdp_gelu_forward_cpu", n, out && inp, "out and inp");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = fsdp_gelu(inp[i]);
    return FSDP_OK;
}

int fsdp_gelu_backward_cpu(float *dinp, const float *dout, const float *inp, int64_t n) {
    CHECK_N("fsdp_gelu_backward_cpu", n);
    CHECK_PTRS("fsdp_gelu_backward_cpu", n, dinp && dout && inp, "dinp, dout and inp");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) dinp[i] = fsdp_fma(dout[i], fsdp_gelu_grad(inp[i]), dinp[i]);
    return FSDP_OK;
}

int fsdp_relu_forward_cpu(float *out, const float *inp, int64_t n) {
    CHECK_N("fsdp_relu_forward_cpu", n);
    CHECK_PTRS("fsdp_relu_forward_cpu", n, out && inp, "out and inp");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = fsdp_relu(inp[i]);
    return FSDP_OK;
}

int fsdp_relu_backward_cpu(float *dinp, const float *dout, const float *inp, int64_t n) {
    CHECK_N("fsdp_relu_backward_cpu", n);
    CHECK_PTRS("fsdp_relu_backward_cpu", n, dinp && dout && inp, "dinp, dout and inp");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) dinp[i] = fsdp_fma(dout[i], fsdp_relu_grad(inp[i]), dinp[i]);
    return FSDP_OK;
}

int fsdp_silu_forward_cpu(float *out, const float *inp, int64_t n) {
    CHECK_N("fsdp_silu_forward_cpu", n);
    CHECK_PTRS("fsdp_silu_forward_cpu", n, out && inp, "out and inp");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = fsdp_silu(inp[i]);
    return FSDP_OK;
}

int fsdp_silu_backward_cpu(float *dinp, const float *dout, const float *inp, int64_t n) {
    CHECK_N("fsdp_silu_backward_cpu", n);
    CHECK_PTRS("fsdp_silu_backward_cpu", n, dinp && dout && inp, "dinp, dout and inp");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) dinp[i] = fsdp_fma(dout[i], fsdp_silu_grad(inp[i]), dinp[i]);
    return FSDP_OK;
}

/* SwiGLU (Llama MLP): out = silu(gate) * up */
int fsdp_swiglu_forward_cpu(float *out, const float *gate, const float *up, int64_t n) {
    CHECK_N("fsdp_swiglu_forward_cpu", n);
    CHECK_PTRS("fsdp_swiglu_forward_cpu", n, out && gate && up, "out, gate and up");
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = fsdp_silu(gate[i]) * up[i];
    return FSDP_OK;
}

/* dgate += dout * up * silu'(gate), dup += dout * silu(gate); either may be
 * NULL (one loop per case, so no loop carries a branch) */
int fsdp_swiglu_backward_cpu(float *dgate, float *dup, const float *dout, const float *gate,
                             const float *up, int64_t n) {
    CHECK_N("fsdp_swiglu_backward_cpu", n);
    CHECK_PTRS("fsdp_swiglu_backward_cpu", n, dout && gate && up, "dout, gate and up");
    if (dgate && dup) {
        #pragma omp parallel for if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            dgate[i] = fsdp_fma(dout[i] * up[i], fsdp_silu_grad(gate[i]), dgate[i]);
            dup[i] = fsdp_fma(dout[i], fsdp_silu(gate[i]), dup[i]);
        }
    } else if (dgate) {
        #pragma omp parallel for if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            dgate[i] = fsdp_fma(dout[i] * up[i], fsdp_silu_grad(gate[i]), dgate[i]);
    } else if (dup) {
        #pragma omp parallel for if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++) dup[i] = fsdp_fma(dout[i], fsdp_silu(gate[i]), dup[i]);
    }
    return FSDP_OK;
}

/* soft-capping (Gemma 2's final logits): out = cap * tanh(inp / cap), cap > 0;
 * dinp += dout * (1 - tanh^2) */
static int check_cap(const char *fn, float cap) {
    FSDP_CHECK_ARG(cap > 0.0f && isfinite(cap), "%s: cap must be a positive number, got %g", fn, (double)cap);
    return FSDP_OK;
}

int fsdp_softcap_forward_cpu(float *out, const float *inp, float cap, int64_t n) {
    CHECK_N("fsdp_softcap_forward_cpu", n);
    CHECK_PTRS("fsdp_softcap_forward_cpu", n, out && inp, "out and inp");
    int rc = check_cap("fsdp_softcap_forward_cpu", cap);
    if (rc) return rc;
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = fsdp_softcap(inp[i], cap);
    return FSDP_OK;
}

int fsdp_softcap_backward_cpu(float *dinp, const float *dout, const float *inp, float cap, int64_t n) {
    CHECK_N("fsdp_softcap_backward_cpu", n);
    CHECK_PTRS("fsdp_softcap_backward_cpu", n, dinp && dout && inp, "dinp, dout and inp");
    int rc = check_cap("fsdp_softcap_backward_cpu", cap);
    if (rc) return rc;
    #pragma omp parallel for if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) dinp[i] = fsdp_fma(dout[i], fsdp_softcap_grad(inp[i], cap), dinp[i]);
    return FSDP_OK;
}
