/* gpu_block.c - one Llama-3-8B transformer block, forward and backward, on
 * the CUDA backend: tokens/s and MFU against the device's dense bf16 peak.
 *
 *   make cuda && build/gpu_block [--batch 4] [--seq 2048] [--iters 10]
 *
 * Shapes: C 4096, 32 query heads and 8 KV heads of 128, SwiGLU FFN 14336,
 * batch x seq tokens. GEMMs run in bf16 (cuBLASLt, f32 accumulation) and
 * attention in bf16 through cuDNN (our f32 kernel when cuDNN declines). The
 * other ops of this backend are f32 for now, so activations are kept in f32
 * with casts around each GEMM: their extra traffic is part of what this
 * measures. FLOPs counted: 6 x tokens x block parameters for the GEMMs plus
 * 3 x 2 x batch x seq^2 x C for causal attention (QK^T and PV, half the
 * square, forward + 2 x backward). Exits 77 without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fsdp.h"

enum { C = 4096, NH = 32, NKV = 8, HD = 128, CKV = NKV * HD, FFN = 14336 };

static int B = 4, T = 2048, iters = 10;
static fsdp_rng rng;
static int cudnn_ok = 1; /* cleared the first time cuDNN declines */

#define CALL(x)                                                                          \
    do {                                                                                 \
        if ((x) != FSDP_OK) {                                                            \
            fprintf(stderr, "gpu_block: %s failed: %s\n", #x, fsdp_last_error());        \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static void *dev(long bytes) {
    void *p = fsdp_cuda_alloc(0, bytes, NULL);
    if (!p) {
        fprintf(stderr, "gpu_block: %s\n", fsdp_last_error());
        exit(1);
    }
    return p;
}

/* device f32 [n] with uniform values in [-a, a] */
static float *dev_uniform(long n, float a) {
    float *h = malloc(sizeof(float) * n), *d = dev(4 * n);
    fsdp_rng_fill_uniform(&rng, h, n, -a, a);
    CALL(fsdp_cuda_memcpy(d, h, 4 * n, NULL));
    CALL(fsdp_cuda_stream_synchronize(NULL));
    free(h);
    return d;
}

/* device bf16 [n] weights, uniform in [-a, a] */
static void *dev_weight(long n, float a) {
    float *f = dev_uniform(n, a);
    void *w = dev(2 * n);
    CALL(fsdp_cast_cuda(w, FSDP_BF16, f, FSDP_F32, n, NULL));
    CALL(fsdp_cuda_stream_synchronize(NULL));
    fsdp_cuda_free(f);
    return w;
}

/* y[M, N] (bf16) = x[M, K] (bf16) @ W^T, W stored [N, K] */
static void linear(void *y, const void *x, const void *w, int M, int N, int K) {
    CALL(fsdp_matmul_forward_cublaslt(y, NULL, x, w, NULL, M, N, K, 0, 1, 0, 0, FSDP_BF16, NULL));
}

static void to16(void *dst, const float *src, long n) { CALL(fsdp_cast_cuda(dst, FSDP_BF16, src, FSDP_F32, n, NULL)); }
static void to32(float *dst, const void *src, long n) { CALL(fsdp_cast_cuda(dst, FSDP_F32, src, FSDP_BF16, n, NULL)); }

/* the block's tensors: weights, their grads, saved activations, scratch */
typedef struct {
    void *wq, *wk, *wv, *wo, *wg, *wu, *wd;         /* bf16 [out, in] */
    void *dwq, *dwk, *dwv, *dwo, *dwg, *dwu, *dwd;  /* bf16 grads */
    float *n1w, *n2w, *dn1w, *dn2w;                 /* rmsnorm weights, f32 */
    float *x, *h1, *rstd1, *x2, *h2, *rstd2, *gate, *up, *act, *y, *tmp, *tmp2;
    float *q32, *k32, *v32, *att32, *lse, *cos, *sin;
    void *h1b, *q, *k, *v, *att, *h2b, *actb, *o16, *g16, *u16;
    float *dy, *dx, *dx2, *dgate, *dup, *dq32, *dk32;  /* dq32, dk32: after un-rotating */
    float *dq_raw, *dk_raw, *dv_raw;                   /* f32 attention grads (fallback) */
    void *dq, *dk, *dv, *datt, *dh, *dact, *d16;
} block;

static void forward(block *b) {
    const long N = (long)B * T;
    /* attention half: x2 = x + Wo attn(rope(q), rope(k), v) */
    CALL(fsdp_rmsnorm_forward_cuda(b->h1, b->rstd1, b->x, b->n1w, N, C, 1e-5f, NULL));
    to16(b->h1b, b->h1, N * C);
    linear(b->q, b->h1b, b->wq, N, C, C);
    linear(b->k, b->h1b, b->wk, N, CKV, C);
    linear(b->v, b->h1b, b->wv, N, CKV, C);
    to32(b->q32, b->q, N * C);
    to32(b->k32, b->k, N * CKV);
    CALL(fsdp_rope_forward_cuda(b->q32, b->q32, b->cos, b->sin, B, T, NH, HD, C, NULL));
    CALL(fsdp_rope_forward_cuda(b->k32, b->k32, b->cos, b->sin, B, T, NKV, HD, CKV, NULL));
    to16(b->q, b->q32, N * C);
    to16(b->k, b->k32, N * CKV);
    const float scale = 1.0f / sqrtf((float)HD);
    int rc = cudnn_ok ? fsdp_attention_forward_cudnn(b->att, b->lse, b->q, b->k, b->v, B, T, NH, NKV, HD, C, CKV,
                                                     CKV, scale, FSDP_BF16, NULL)
                      : FSDP_ERR_UNSUPPORTED;
    if (rc == FSDP_ERR_UNSUPPORTED) {
        if (cudnn_ok) printf("cuDNN attention declined, using the f32 kernel: %s\n", fsdp_last_error());
        cudnn_ok = 0;
        to32(b->v32, b->v, N * CKV);
        CALL(fsdp_attention_forward_f32_cuda(b->att32, b->lse, b->q32, b->k32, b->v32, B, T, NH, NKV, HD, C, CKV,
                                             CKV, 0, scale, 0.0f, NULL));
        to16(b->att, b->att32, N * C);
    } else {
        CALL(rc);
    }
    linear(b->o16, b->att, b->wo, N, C, C);
    to32(b->tmp, b->o16, N * C);
    CALL(fsdp_add_cuda(b->x2, b->x, b->tmp, N * C, NULL));
    /* MLP half: y = x2 + Wd swiglu(Wg h2, Wu h2) */
    CALL(fsdp_rmsnorm_forward_cuda(b->h2, b->rstd2, b->x2, b->n2w, N, C, 1e-5f, NULL));
    to16(b->h2b, b->h2, N * C);
    linear(b->g16, b->h2b, b->wg, N, FFN, C);
    linear(b->u16, b->h2b, b->wu, N, FFN, C);
    to32(b->gate, b->g16, N * FFN);
    to32(b->up, b->u16, N * FFN);
    CALL(fsdp_swiglu_forward_cuda(b->act, b->gate, b->up, N * FFN, NULL));
    to16(b->actb, b->act, N * FFN);
    linear(b->o16, b->actb, b->wd, N, C, FFN);
    to32(b->tmp, b->o16, N * C);
    CALL(fsdp_add_cuda(b->y, b->x2, b->tmp, N * C, NULL));
}

static void backward(block *b) {
    const long N = (long)B * T;
    const float scale = 1.0f / sqrtf((float)HD);
    /* grads accumulate: start every step from zero */
    CALL(fsdp_cuda_memset(b->dx, 0, 4 * N * C, NULL));
    CALL(fsdp_cuda_memset(b->dgate, 0, 4 * N * FFN, NULL));
    CALL(fsdp_cuda_memset(b->dup, 0, 4 * N * FFN, NULL));
    CALL(fsdp_cuda_memset(b->dq32, 0, 4 * N * C, NULL));
    CALL(fsdp_cuda_memset(b->dk32, 0, 4 * N * CKV, NULL));
    CALL(fsdp_cuda_memset(b->dh, 0, 2 * N * C, NULL));
    CALL(fsdp_cuda_memset(b->dact, 0, 2 * N * FFN, NULL));
    CALL(fsdp_cuda_memset(b->datt, 0, 2 * N * C, NULL));
    CALL(fsdp_cuda_memset(b->dq, 0, 2 * N * C, NULL));
    CALL(fsdp_cuda_memset(b->dk, 0, 2 * N * CKV, NULL));
    CALL(fsdp_cuda_memset(b->dv, 0, 2 * N * CKV, NULL));
    /* MLP: y = x2 + Wd act */
    CALL(fsdp_cuda_memcpy(b->dx2, b->dy, 4 * N * C, NULL));
    to16(b->d16, b->dy, N * C);
    CALL(fsdp_matmul_backward_cublaslt(b->dact, b->dwd, NULL, b->d16, b->actb, b->wd, N, C, FFN, 0, 1, FSDP_BF16,
                                       NULL));
    to32(b->tmp2, b->dact, N * FFN);
    CALL(fsdp_swiglu_backward_cuda(b->dgate, b->dup, b->tmp2, b->gate, b->up, N * FFN, NULL));
    to16(b->g16, b->dgate, N * FFN);
    to16(b->u16, b->dup, N * FFN);
    CALL(fsdp_matmul_backward_cublaslt(b->dh, b->dwg, NULL, b->g16, b->h2b, b->wg, N, FFN, C, 0, 1, FSDP_BF16, NULL));
    CALL(fsdp_matmul_backward_cublaslt(b->dh, b->dwu, NULL, b->u16, b->h2b, b->wu, N, FFN, C, 0, 1, FSDP_BF16, NULL));
    to32(b->tmp, b->dh, N * C);
    CALL(fsdp_rmsnorm_backward_cuda(b->dx2, b->dn2w, b->tmp, b->x2, b->n2w, b->rstd2, N, C, NULL));
    /* attention: x2 = x + Wo att */
    CALL(fsdp_axpy_cuda(b->dx, 1.0f, b->dx2, N * C, NULL));
    to16(b->d16, b->dx2, N * C);
    CALL(fsdp_matmul_backward_cublaslt(b->datt, b->dwo, NULL, b->d16, b->att, b->wo, N, C, C, 0, 1, FSDP_BF16, NULL));
    if (cudnn_ok) {
        CALL(fsdp_attention_backward_cudnn(b->dq, b->dk, b->dv, b->datt, b->q, b->k, b->v, b->att, b->lse, B, T, NH,
                                           NKV, HD, C, CKV, CKV, scale, FSDP_BF16, NULL));
        to32(b->dq_raw, b->dq, N * C);
        to32(b->dk_raw, b->dk, N * CKV);
    } else {
        to32(b->att32, b->att, N * C);
        to32(b->tmp2, b->datt, N * C);
        CALL(fsdp_cuda_memset(b->dq_raw, 0, 4 * N * C, NULL));
        CALL(fsdp_cuda_memset(b->dk_raw, 0, 4 * N * CKV, NULL));
        CALL(fsdp_cuda_memset(b->dv_raw, 0, 4 * N * CKV, NULL));
        CALL(fsdp_attention_backward_f32_cuda(b->dq_raw, b->dk_raw, b->dv_raw, b->tmp2, b->q32, b->k32, b->v32,
                                              b->att32, b->lse, B, T, NH, NKV, HD, C, CKV, CKV, 0, scale, 0.0f, NULL));
        to16(b->dv, b->dv_raw, N * CKV);
    }
    /* un-rotate dq and dk, then the three projections */
    CALL(fsdp_rope_backward_cuda(b->dq32, b->dq_raw, b->cos, b->sin, B, T, NH, HD, C, NULL));
    CALL(fsdp_rope_backward_cuda(b->dk32, b->dk_raw, b->cos, b->sin, B, T, NKV, HD, CKV, NULL));
    to16(b->dq, b->dq32, N * C);
    to16(b->dk, b->dk32, N * CKV);
    CALL(fsdp_cuda_memset(b->dh, 0, 2 * N * C, NULL));
    CALL(fsdp_matmul_backward_cublaslt(b->dh, b->dwq, NULL, b->dq, b->h1b, b->wq, N, C, C, 0, 1, FSDP_BF16, NULL));
    CALL(fsdp_matmul_backward_cublaslt(b->dh, b->dwk, NULL, b->dk, b->h1b, b->wk, N, CKV, C, 0, 1, FSDP_BF16, NULL));
    CALL(fsdp_matmul_backward_cublaslt(b->dh, b->dwv, NULL, b->dv, b->h1b, b->wv, N, CKV, C, 0, 1, FSDP_BF16, NULL));
    to32(b->tmp, b->dh, N * C);
    CALL(fsdp_rmsnorm_backward_cuda(b->dx, b->dn1w, b->tmp, b->x, b->n1w, b->rstd1, N, C, NULL));
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
        else { fprintf(stderr, "usage: gpu_block [--batch 4] [--seq 2048] [--iters 10]\n"); return 2; }
    }
    int count = 0;
    if (fsdp_cuda_device_count(&count) != FSDP_OK || count == 0) {
        printf("skipped: no GPU (%s)\n", count == 0 && *fsdp_last_error() ? fsdp_last_error() : "0 devices");
        return 77;
    }
    CALL(fsdp_cuda_set_device(0));
    fsdp_cuda_device_info info;
    CALL(fsdp_cuda_get_device_info(0, &info));
    fsdp_rng_seed(&rng, 1);
    const long N = (long)B * T;

    block b;
    const float ws = 0.02f;
    b.wq = dev_weight((long)C * C, ws); b.wk = dev_weight((long)CKV * C, ws); b.wv = dev_weight((long)CKV * C, ws);
    b.wo = dev_weight((long)C * C, ws); b.wg = dev_weight((long)FFN * C, ws); b.wu = dev_weight((long)FFN * C, ws);
    b.wd = dev_weight((long)C * FFN, ws);
    b.dwq = dev(2L * C * C); b.dwk = dev(2L * CKV * C); b.dwv = dev(2L * CKV * C); b.dwo = dev(2L * C * C);
    b.dwg = dev(2L * FFN * C); b.dwu = dev(2L * FFN * C); b.dwd = dev(2L * C * FFN);
    b.n1w = dev_uniform(C, 1); b.n2w = dev_uniform(C, 1); b.dn1w = dev(4 * C); b.dn2w = dev(4 * C);
    b.x = dev_uniform(N * C, 1); b.dy = dev_uniform(N * C, 1);
    b.h1 = dev(4 * N * C); b.rstd1 = dev(4 * N); b.x2 = dev(4 * N * C); b.h2 = dev(4 * N * C); b.rstd2 = dev(4 * N);
    b.gate = dev(4 * N * FFN); b.up = dev(4 * N * FFN); b.act = dev(4 * N * FFN); b.y = dev(4 * N * C);
    b.tmp = dev(4 * N * C); b.tmp2 = dev(4 * N * FFN);
    b.q32 = dev(4 * N * C); b.k32 = dev(4 * N * CKV); b.v32 = dev(4 * N * CKV); b.att32 = dev(4 * N * C);
    b.lse = dev(4L * B * NH * T);
    b.h1b = dev(2 * N * C); b.q = dev(2 * N * C); b.k = dev(2 * N * CKV); b.v = dev(2 * N * CKV); b.att = dev(2 * N * C);
    b.h2b = dev(2 * N * C); b.actb = dev(2 * N * FFN); b.o16 = dev(2 * N * C); b.g16 = dev(2 * N * FFN);
    b.u16 = dev(2 * N * FFN);
    b.dx = dev(4 * N * C); b.dx2 = dev(4 * N * C); b.dgate = dev(4 * N * FFN); b.dup = dev(4 * N * FFN);
    b.dq32 = dev(4 * N * C); b.dk32 = dev(4 * N * CKV);
    b.dq_raw = dev(4 * N * C); b.dk_raw = dev(4 * N * CKV); b.dv_raw = dev(4 * N * CKV);
    b.dq = dev(2 * N * C); b.dk = dev(2 * N * CKV); b.dv = dev(2 * N * CKV); b.datt = dev(2 * N * C);
    b.dh = dev(2 * N * C); b.dact = dev(2 * N * FFN); b.d16 = dev(2 * N * FFN);
    /* RoPE tables, Llama 3 base 500000 */
    float inv[HD / 2], *cs = malloc(4L * T * HD / 2), *sn = malloc(4L * T * HD / 2);
    for (int i = 0; i < HD / 2; i++) inv[i] = powf(500000.0f, -2.0f * i / HD);
    fsdp_rope_table_cpu(cs, sn, inv, 0, T, HD);
    b.cos = dev(4L * T * HD / 2); b.sin = dev(4L * T * HD / 2);
    CALL(fsdp_cuda_memcpy(b.cos, cs, 4L * T * HD / 2, NULL));
    CALL(fsdp_cuda_memcpy(b.sin, sn, 4L * T * HD / 2, NULL));
    free(cs); free(sn);

    void *dws[] = {b.dwq, b.dwk, b.dwv, b.dwo, b.dwg, b.dwu, b.dwd};
    const long dwn[] = {(long)C * C, (long)CKV * C, (long)CKV * C, (long)C * C, (long)FFN * C, (long)FFN * C,
                        (long)C * FFN};
    for (int i = 0; i < 7; i++) CALL(fsdp_cuda_memset(dws[i], 0, 2 * dwn[i], NULL)); /* they accumulate */

    /* warm up (plans, algorithm caches), then time */
    for (int i = 0; i < 2; i++) { forward(&b); backward(&b); }
    CALL(fsdp_cuda_synchronize());
    double t0 = now();
    for (int i = 0; i < iters; i++) forward(&b);
    CALL(fsdp_cuda_synchronize());
    const double t_fwd = (now() - t0) / iters;
    t0 = now();
    for (int i = 0; i < iters; i++) { forward(&b); backward(&b); }
    CALL(fsdp_cuda_synchronize());
    const double t_step = (now() - t0) / iters;

    const double params = (double)C * C * 2 + 2.0 * C * CKV + 3.0 * C * FFN;
    const double flops = 6.0 * N * params + 3.0 * 2.0 * B * (double)T * T * C;
    fsdp_mem_stats mem;
    fsdp_cuda_mem_get_stats(0, &mem);
    printf("device: %s (sm_%d%d, %d SMs, dense bf16 peak %.0f TFLOP/s%s)\n", info.name, info.major, info.minor,
           info.sm_count, info.peak_bf16_tflops, info.peak_bf16_tflops > 0 ? "" : ": unknown architecture");
    printf("Llama-3-8B block, %d x %d tokens, bf16 GEMMs, attention: %s\n", B, T,
           cudnn_ok ? "cuDNN flash (bf16)" : "f32 fallback kernel");
    printf("forward      %8.2f ms   %9.0f tokens/s\n", t_fwd * 1e3, N / t_fwd);
    printf("fwd+bwd step %8.2f ms   %9.0f tokens/s   %.1f TFLOP/s", t_step * 1e3, N / t_step, flops / t_step / 1e12);
    if (info.peak_bf16_tflops > 0) printf("   MFU %.1f%%", 100.0 * flops / t_step / 1e12 / info.peak_bf16_tflops);
    printf("\nmemory: peak %.2f GiB in live blocks, %.2f GiB reserved\n", mem.peak / 1073741824.0,
           mem.reserved / 1073741824.0);
    return 0;
}
