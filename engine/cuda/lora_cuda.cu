/* lora_cuda.cu - a linear layer with a low-rank adapter (LoRA) on the GPU,
 * with exactly the arguments of fsdp_lora_forward_cpu / backward
 * (kernels/lora_cpu.c) plus the stream, and the same steps:
 *
 *   forward   out = x W^T + bias; xa = drop(x) A^T (saved); out += (s xa) B^T
 *   backward  dx += dout W, dw += dout^T x, dbias += column sums of dout;
 *             dB += dout^T (s xa); g = s dout B; dA += g^T drop(x);
 *             dx += drop'(g A)
 *
 * The GEMMs are the compute-dtype policy's (fsdp_matmul_*_cuda: cuBLASLt in
 * f32 or in the bf16/f16 compute dtype, the SIMT kernel as fallback), so a
 * LoRA layer computes in the dtype a plain linear layer does. drop(x) is
 * kernels/lora_cuda.cu's kernel, the mask from kernels/lora_math.h as on
 * the CPU. Scratch (s xa, g, drop(x) and g A when p > 0) comes from the
 * caching device allocator on the caller's stream and is released when the
 * call returns (the next use of a block is queued after these kernels). */
#include <vector>
#include "cuda_engine.cuh"

namespace {

/* stream-ordered scratch, released when the scope ends (errors included) */
struct lora_scratch {
    cudaStream_t stream;
    int device = 0;
    int rc = FSDP_OK;
    std::vector<void *> blocks;
    explicit lora_scratch(cudaStream_t s) : stream(s) {
        rc = fsdp_cuda_check(cudaGetDevice(&device), "lora scratch", "cudaGetDevice");
    }
    ~lora_scratch() {
        for (void *p : blocks) fsdp_cuda_free(p);
    }
    lora_scratch(const lora_scratch &) = delete;
    lora_scratch &operator=(const lora_scratch &) = delete;
    float *get(int64_t n) {
        if (rc) return nullptr;
        void *p = fsdp_cuda_alloc(device, n * (int64_t)sizeof(float), stream);
        if (!p) rc = FSDP_ERR_OOM; /* fsdp_cuda_alloc wrote the message */
        else blocks.push_back(p);
        return (float *)p;
    }
};

int check_args(const char *fn, int M, int N, int K, int R, float p) {
    FSDP_CHECK_ARG(M > 0 && N > 0 && K > 0, "%s: M (%d), N (%d) and K (%d) must be positive", fn, M, N, K);
    FSDP_CHECK_ARG(R > 0 && R <= K && R <= N, "%s: the rank R (%d) must be in [1, min(K %d, N %d)]", fn, R, K, N);
    FSDP_CHECK_ARG(p >= 0.0f && p < 1.0f, "%s: the dropout rate %g must be in [0, 1)", fn, (double)p);
    return FSDP_OK;
}

/* drop(x) in scratch, or x itself when p == 0 */
const float *dropped(lora_scratch &s, const float *x, int64_t n, float p, uint64_t seed) {
    if (p <= 0.0f) return x;
    float *d = s.get(n);
    if (!d) return nullptr;
    s.rc = fsdp_lora_dropout_cuda(d, x, n, p, seed, 0, s.stream);
    return s.rc ? nullptr : d;
}

}  // namespace

int fsdp_lora_forward_cuda(float *out, float *xa, const float *x, const float *w, const float *bias, const float *a,
                           const float *b, int M, int N, int K, int R, float scale, float p, uint64_t seed,
                           fsdp_stream stream) {
    const char *fn = "fsdp_lora_forward_cuda";
    int rc = check_args(fn, M, N, K, R, p);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && xa && x && w && a && b, "%s: out, xa, x, w, a and b must not be NULL", fn);
    lora_scratch s((cudaStream_t)stream);
    if (s.rc) return s.rc;
    /* 1. the base layer: out = x W^T + bias */
    rc = fsdp_matmul_forward_cuda(out, x, w, bias, M, N, K, 0, 1, 0, stream);
    if (rc) return rc;
    /* 2. the adapter's down projection of the (dropped) input: xa = drop(x) A^T */
    const float *xd = dropped(s, x, (int64_t)M * K, p, seed);
    if (!xd) return s.rc;
    rc = fsdp_matmul_forward_cuda(xa, xd, a, nullptr, M, R, K, 0, 1, 0, stream);
    if (rc) return rc;
    /* 3. out += (s xa) B^T */
    float *xs = s.get((int64_t)M * R);
    if (!xs) return s.rc;
    rc = fsdp_scale_cuda(xs, scale, xa, (int64_t)M * R, stream);
    if (rc) return rc;
    return fsdp_matmul_forward_cuda(out, xs, b, nullptr, M, N, R, 0, 1, 1, stream);
}

int fsdp_lora_backward_cuda(float *dx, float *dw, float *dbias, float *da, float *db, const float *dout,
                            const float *x, const float *w, const float *a, const float *b, const float *xa, int M,
                            int N, int K, int R, float scale, float p, uint64_t seed, fsdp_stream stream) {
    const char *fn = "fsdp_lora_backward_cuda";
    int rc = check_args(fn, M, N, K, R, p);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout && x && w && a && b && xa, "%s: dout, x, w, a, b and xa must not be NULL", fn);
    lora_scratch s((cudaStream_t)stream);
    if (s.rc) return s.rc;
    /* the base layer's gradients: dx += dout W, dw += dout^T x, dbias */
    if (dx || dw || dbias) {
        rc = fsdp_matmul_backward_cuda(dx, dw, dbias, dout, x, w, M, N, K, 0, 1, stream);
        if (rc) return rc;
    }
    /* dB += dout^T (s xa) */
    if (db) {
        float *xs = s.get((int64_t)M * R);
        if (!xs) return s.rc;
        rc = fsdp_scale_cuda(xs, scale, xa, (int64_t)M * R, stream);
        if (!rc) rc = fsdp_matmul_backward_cuda(nullptr, db, nullptr, dout, xs, b, M, N, R, 0, 1, stream);
        if (rc) return rc;
    }
    if (!dx && !da) return FSDP_OK;
    /* g = s dout B [M, R] */
    float *g = s.get((int64_t)M * R);
    if (!g) return s.rc;
    rc = fsdp_matmul_forward_cuda(g, dout, b, nullptr, M, R, N, 0, 0, 0, stream);
    if (!rc) rc = fsdp_scale_cuda(g, scale, g, (int64_t)M * R, stream);
    if (rc) return rc;
    if (da) { /* dA += g^T drop(x) */
        const float *xd = dropped(s, x, (int64_t)M * K, p, seed);
        if (!xd) return s.rc;
        rc = fsdp_matmul_backward_cuda(nullptr, da, nullptr, g, xd, a, M, R, K, 0, 1, stream);
        if (rc) return rc;
    }
    if (dx) { /* dx += drop'(g A) */
        if (p <= 0.0f) return fsdp_matmul_backward_cuda(dx, nullptr, nullptr, g, x, a, M, R, K, 0, 1, stream);
        float *t = s.get((int64_t)M * K);
        if (!t) return s.rc;
        rc = fsdp_matmul_forward_cuda(t, g, a, nullptr, M, K, R, 0, 0, 0, stream);
        if (!rc) rc = fsdp_lora_dropout_cuda(dx, t, (int64_t)M * K, p, seed, 1, stream);
    }
    return rc;
}
