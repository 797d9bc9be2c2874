/* test_cuda_ops.c - every op of the CUDA backend against the CPU backend,
 * on a real GPU: same random inputs, results copied back and compared with
 * per-dtype tolerances (f32 ops differ from the CPU only in the order of
 * sums and in the last bits of expf/tanhf; bf16 and f16 in their rounding).
 * Also the caching allocator (reuse, stats, a clear OOM message naming the
 * rank) and launch errors naming the kernel.
 *
 * Exit status: 0 all passed, 1 a check failed, 77 no usable GPU (the runner,
 * tests/cuda/run.sh, reports "skipped: no GPU" and does not count a pass). */
#include <stdint.h>
#include <string.h>
#include "fsdp.h"
#include "check.h"

static fsdp_rng rng;

/* ---- host and device buffers ------------------------------------------- */

static float *uniform(long n, float lo, float hi) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    fsdp_rng_fill_uniform(&rng, p, n, lo, hi);
    return p;
}

static float *copy_of(const float *x, long n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    memcpy(p, x, sizeof(float) * n);
    return p;
}

/* device copy of n bytes of host memory */
static void *up(const void *host, long bytes) {
    void *d = fsdp_cuda_alloc(0, bytes, NULL);
    CHECK(d != NULL, "alloc %ld bytes: %s", bytes, fsdp_last_error());
    if (d && host) fsdp_cuda_memcpy(d, host, bytes, NULL);
    return d;
}
#define UPF(x, n) ((float *)up(x, (long)sizeof(float) * (n)))

/* host copy of a device buffer (waits for the stream) */
static void down(void *host, const void *dev, long bytes) {
    CHECK(fsdp_cuda_memcpy(host, dev, bytes, NULL) == FSDP_OK, "copy back: %s", fsdp_last_error());
    CHECK(fsdp_cuda_stream_synchronize(NULL) == FSDP_OK, "sync: %s", fsdp_last_error());
}

static float *downf(const float *dev, long n) {
    float *h = malloc(sizeof(float) * (n ? n : 1));
    down(h, dev, (long)sizeof(float) * n);
    return h;
}

#define OK(call) CHECK((call) == FSDP_OK, "%s: %s", #call, fsdp_last_error())

/* CHECK_CLOSE with the tolerance pairs below expanded first */
#define CLOSE(...) CHECK_CLOSE(__VA_ARGS__)

/* tolerances: f32 pointwise, f32 reductions, 16-bit data */
#define TOL_PW 2e-6, 1e-6
#define TOL_RED 1e-4, 1e-5
#define TOL_16 2e-2, 2e-2

/* ---- pointwise ---------------------------------------------------------- */

typedef int (*fwd_cpu)(float *, const float *, int64_t);
typedef int (*fwd_gpu)(float *, const float *, int64_t, fsdp_stream);
typedef int (*bwd_cpu)(float *, const float *, const float *, int64_t);
typedef int (*bwd_gpu)(float *, const float *, const float *, int64_t, fsdp_stream);

static void test_activation(const char *name, fwd_cpu fc, fwd_gpu fg, bwd_cpu bc, bwd_gpu bg) {
    const long n = 100003;
    float *x = uniform(n, -6, 6), *dout = uniform(n, -1, 1), *init = uniform(n, -1, 1);
    float *out = malloc(sizeof(float) * n), *dinp = copy_of(init, n);
    float *dx = UPF(x, n), *dy = UPF(NULL, n), *ddout = UPF(dout, n), *ddinp = UPF(init, n);
    fc(out, x, n);
    bc(dinp, dout, x, n);
    OK(fg(dy, dx, n, NULL));
    OK(bg(ddinp, ddout, dx, n, NULL));
    float *gy = downf(dy, n), *gd = downf(ddinp, n);
    CLOSE(name, gy, out, n, TOL_PW);
    CLOSE(name, gd, dinp, n, TOL_PW);
    free(x); free(dout); free(init); free(out); free(dinp); free(gy); free(gd);
    fsdp_cuda_free(dx); fsdp_cuda_free(dy); fsdp_cuda_free(ddout); fsdp_cuda_free(ddinp);
}

static void test_pointwise(void) {
    test_activation("gelu", fsdp_gelu_forward_cpu, fsdp_gelu_forward_cuda, fsdp_gelu_backward_cpu,
                    fsdp_gelu_backward_cuda);
    test_activation("relu", fsdp_relu_forward_cpu, fsdp_relu_forward_cuda, fsdp_relu_backward_cpu,
                    fsdp_relu_backward_cuda);
    test_activation("silu", fsdp_silu_forward_cpu, fsdp_silu_forward_cuda, fsdp_silu_backward_cpu,
                    fsdp_silu_backward_cuda);
    const long n = 70001;
    float *g = uniform(n, -5, 5), *u = uniform(n, -1, 1), *dout = uniform(n, -1, 1);
    float *out = malloc(sizeof(float) * n), *dg = uniform(n, -1, 1), *du = uniform(n, -1, 1);
    float *d_g = UPF(g, n), *d_u = UPF(u, n), *d_out = UPF(NULL, n), *d_dout = UPF(dout, n);
    float *d_dg = UPF(dg, n), *d_du = UPF(du, n);
    fsdp_swiglu_forward_cpu(out, g, u, n);
    fsdp_swiglu_backward_cpu(dg, du, dout, g, u, n);
    OK(fsdp_swiglu_forward_cuda(d_out, d_g, d_u, n, NULL));
    OK(fsdp_swiglu_backward_cuda(d_dg, d_du, d_dout, d_g, d_u, n, NULL));
    float *h_out = downf(d_out, n), *h_dg = downf(d_dg, n), *h_du = downf(d_du, n);
    CLOSE("swiglu", h_out, out, n, TOL_PW);
    CLOSE("swiglu dgate", h_dg, dg, n, TOL_PW);
    CLOSE("swiglu dup", h_du, du, n, TOL_PW);
    /* elementwise helpers are exact */
    fsdp_add_cpu(out, g, u, n);
    OK(fsdp_add_cuda(d_out, d_g, d_u, n, NULL));
    free(h_out); h_out = downf(d_out, n);
    CHECK(memcmp(h_out, out, sizeof(float) * n) == 0, "add differs");
    fsdp_axpy_cpu(g, 0.3f, u, n);
    OK(fsdp_axpy_cuda(d_g, 0.3f, d_u, n, NULL));
    free(h_out); h_out = downf(d_g, n);
    CLOSE("axpy", h_out, g, n, TOL_PW);
    fsdp_scale_cpu(out, -2.5f, u, n);
    OK(fsdp_scale_cuda(d_out, -2.5f, d_u, n, NULL));
    free(h_out); h_out = downf(d_out, n);
    CHECK(memcmp(h_out, out, sizeof(float) * n) == 0, "scale differs");
    fsdp_mul_cpu(out, g, u, n);
    OK(fsdp_mul_cuda(d_out, d_g, d_u, n, NULL));
    free(h_out); h_out = downf(d_out, n);
    CHECK(memcmp(h_out, out, sizeof(float) * n) == 0, "mul differs");
    free(g); free(u); free(dout); free(out); free(dg); free(du); free(h_out); free(h_dg); free(h_du);
    fsdp_cuda_free(d_g); fsdp_cuda_free(d_u); fsdp_cuda_free(d_out); fsdp_cuda_free(d_dout);
    fsdp_cuda_free(d_dg); fsdp_cuda_free(d_du);
}

/* the same bits as the CPU: both use dtype_math.h */
static void test_cast(void) {
    const long n = 50000;
    float *x = uniform(n, -70000, 70000);
    for (long i = 0; i < 2000; i++) x[i] *= 1e-9f;
    uint16_t *c = malloc(2 * n), *g = malloc(2 * n);
    float *back_c = malloc(4 * n), *back_g = malloc(4 * n);
    float *dx = UPF(x, n), *dback = UPF(NULL, n);
    void *d16 = up(NULL, 2 * n);
    int dts[2] = {FSDP_BF16, FSDP_F16};
    for (int i = 0; i < 2; i++) {
        fsdp_cast_cpu(c, dts[i], x, FSDP_F32, n);
        OK(fsdp_cast_cuda(d16, dts[i], dx, FSDP_F32, n, NULL));
        down(g, d16, 2 * n);
        CHECK(memcmp(c, g, 2 * n) == 0, "cast f32 -> %s differs", fsdp_dtype_name(dts[i]));
        fsdp_cast_cpu(back_c, FSDP_F32, c, dts[i], n);
        OK(fsdp_cast_cuda(dback, FSDP_F32, d16, dts[i], n, NULL));
        down(back_g, dback, 4 * n);
        CHECK(memcmp(back_c, back_g, 4 * n) == 0, "cast %s -> f32 differs", fsdp_dtype_name(dts[i]));
    }
    free(x); free(c); free(g); free(back_c); free(back_g);
    fsdp_cuda_free(dx); fsdp_cuda_free(dback); fsdp_cuda_free(d16);
}

/* ---- rows: embedding, norms, rope, cross-entropy ---------------------------- */

static void test_embedding(void) {
    const int N = 517, V = 1001, C = 771;
    float *table = uniform((long)V * C, -1, 1), *out = malloc(sizeof(float) * N * C);
    int32_t *idx = malloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) idx[i] = (int32_t)(fsdp_rng_next(&rng) % V);
    float *dout = uniform((long)N * C, -1, 1), *dt = uniform((long)V * C, -1, 1);
    float *d_table = UPF(table, (long)V * C), *d_out = UPF(NULL, (long)N * C);
    float *d_dout = UPF(dout, (long)N * C), *d_dt = UPF(dt, (long)V * C);
    int32_t *d_idx = up(idx, sizeof(int32_t) * N);
    fsdp_embedding_forward_cpu(out, idx, table, N, V, C);
    fsdp_embedding_backward_cpu(dt, dout, idx, N, V, C);
    OK(fsdp_embedding_forward_cuda(d_out, d_idx, d_table, N, V, C, NULL));
    OK(fsdp_embedding_backward_cuda(d_dt, d_dout, d_idx, N, V, C, NULL));
    float *h_out = downf(d_out, (long)N * C), *h_dt = downf(d_dt, (long)V * C);
    CHECK(memcmp(h_out, out, sizeof(float) * N * C) == 0, "embedding forward differs");
    CHECK(memcmp(h_dt, dt, sizeof(float) * V * C) == 0, "embedding backward differs");
    free(table); free(out); free(idx); free(dout); free(dt); free(h_out); free(h_dt);
    fsdp_cuda_free(d_table); fsdp_cuda_free(d_out); fsdp_cuda_free(d_dout); fsdp_cuda_free(d_dt);
    fsdp_cuda_free(d_idx);
}

static void test_norms(void) {
    const int N = 300, C = 4099;
    const long nc = (long)N * C;
    float *x = uniform(nc, -3, 5), *w = uniform(C, 0.5f, 1.5f), *b = uniform(C, -1, 1);
    float *out = malloc(4 * nc), *mean = malloc(4 * N), *rstd = malloc(4 * N);
    float *dout = uniform(nc, -1, 1), *dx = uniform(nc, -1, 1), *dw = uniform(C, -1, 1), *db = uniform(C, -1, 1);
    float *d_x = UPF(x, nc), *d_w = UPF(w, C), *d_b = UPF(b, C), *d_out = UPF(NULL, nc);
    float *d_mean = UPF(NULL, N), *d_rstd = UPF(NULL, N), *d_dout = UPF(dout, nc);
    float *d_dx = UPF(dx, nc), *d_dw = UPF(dw, C), *d_db = UPF(db, C);

    fsdp_layernorm_forward_cpu(out, mean, rstd, x, w, b, N, C, 1e-5f);
    fsdp_layernorm_backward_cpu(dx, dw, db, dout, x, w, mean, rstd, N, C);
    OK(fsdp_layernorm_forward_cuda(d_out, d_mean, d_rstd, d_x, d_w, d_b, N, C, 1e-5f, NULL));
    OK(fsdp_layernorm_backward_cuda(d_dx, d_dw, d_db, d_dout, d_x, d_w, d_mean, d_rstd, N, C, NULL));
    float *h = downf(d_out, nc);
    CLOSE("layernorm out", h, out, nc, TOL_RED);
    free(h); h = downf(d_dx, nc);
    CLOSE("layernorm dinp", h, dx, nc, TOL_RED);
    free(h); h = downf(d_dw, C);
    CLOSE("layernorm dweight", h, dw, C, 1e-4, 1e-4);
    free(h); h = downf(d_db, C);
    CLOSE("layernorm dbias", h, db, C, 1e-4, 1e-4);
    free(h);

    float *rx = copy_of(dx, nc);
    fsdp_rmsnorm_forward_cpu(out, rstd, x, w, N, C, 1e-6f);
    fsdp_rmsnorm_backward_cpu(rx, dw, dout, x, w, rstd, N, C);
    OK(fsdp_cuda_memcpy(d_dx, dx, 4 * nc, NULL));
    OK(fsdp_rmsnorm_forward_cuda(d_out, d_rstd, d_x, d_w, N, C, 1e-6f, NULL));
    OK(fsdp_rmsnorm_backward_cuda(d_dx, d_dw, d_dout, d_x, d_w, d_rstd, N, C, NULL));
    h = downf(d_out, nc);
    CLOSE("rmsnorm out", h, out, nc, TOL_RED);
    free(h); h = downf(d_dx, nc);
    CLOSE("rmsnorm dinp", h, rx, nc, TOL_RED);
    free(h); h = downf(d_dw, C);
    CLOSE("rmsnorm dweight", h, dw, C, 1e-4, 1e-4);
    free(h);
    free(x); free(w); free(b); free(out); free(mean); free(rstd); free(dout); free(dx); free(dw);
    free(db); free(rx);
    void *all[] = {d_x, d_w, d_b, d_out, d_mean, d_rstd, d_dout, d_dx, d_dw, d_db};
    for (int i = 0; i < 10; i++) fsdp_cuda_free(all[i]);
}

static void test_rope(void) {
    const int B = 2, T = 129, NH = 8, HD = 128, ld = NH * HD + 64, half = HD / 2;
    const long n = (long)B * T * ld;
    float *inv = malloc(4 * half), *cs = malloc(4 * T * half), *sn = malloc(4 * T * half);
    for (int i = 0; i < half; i++) inv[i] = powf(500000.0f, -2.0f * i / HD);
    fsdp_rope_table_cpu(cs, sn, inv, 0, T, HD);
    float *x = uniform(n, -1, 1), *out = uniform(n, -1, 1), *dx = uniform(n, -1, 1);
    float *d_x = UPF(x, n), *d_out = UPF(out, n), *d_dx = UPF(dx, n);
    float *d_cs = UPF(cs, T * half), *d_sn = UPF(sn, T * half);
    fsdp_rope_forward_cpu(out, x, cs, sn, B, T, NH, HD, ld);
    fsdp_rope_backward_cpu(dx, x, cs, sn, B, T, NH, HD, ld);
    OK(fsdp_rope_forward_cuda(d_out, d_x, d_cs, d_sn, B, T, NH, HD, ld, NULL));
    OK(fsdp_rope_backward_cuda(d_dx, d_x, d_cs, d_sn, B, T, NH, HD, ld, NULL));
    float *h = downf(d_out, n);
    CLOSE("rope forward", h, out, n, TOL_PW);
    free(h); h = downf(d_dx, n);
    CLOSE("rope backward", h, dx, n, TOL_PW);
    free(h); free(inv); free(cs); free(sn); free(x); free(out); free(dx);
    fsdp_cuda_free(d_x); fsdp_cuda_free(d_out); fsdp_cuda_free(d_dx); fsdp_cuda_free(d_cs);
    fsdp_cuda_free(d_sn);
}

static void test_crossentropy(void) {
    const int N = 67, V = 128257;
    const long nv = (long)N * V;
    float *logits = uniform(nv, -10, 10), *loss = malloc(4 * N), *lse = malloc(4 * N);
    float *dloss = uniform(N, 0, 1), *dl = uniform(nv, -1, 1);
    int32_t *t = malloc(4 * N);
    for (int i = 0; i < N; i++) t[i] = (int32_t)(fsdp_rng_next(&rng) % V);
    t[5] = -100;
    float *d_logits = UPF(logits, nv), *d_loss = UPF(NULL, N), *d_lse = UPF(NULL, N);
    float *d_dloss = UPF(dloss, N), *d_dl = UPF(dl, nv);
    int32_t *d_t = up(t, 4 * N);
    fsdp_crossentropy_forward_cpu(loss, lse, logits, t, N, V, -100);
    fsdp_crossentropy_backward_cpu(dl, dloss, logits, lse, t, N, V, -100);
    OK(fsdp_crossentropy_forward_cuda(d_loss, d_lse, d_logits, d_t, N, V, -100, NULL));
    OK(fsdp_crossentropy_backward_cuda(d_dl, d_dloss, d_logits, d_lse, d_t, N, V, -100, NULL));
    float *h = downf(d_loss, N);
    CLOSE("crossentropy loss", h, loss, N, 1e-5, 1e-5);
    free(h); h = downf(d_lse, N);
    CLOSE("crossentropy lse", h, lse, N, 1e-6, 1e-6);
    free(h); h = downf(d_dl, nv);
    CLOSE("crossentropy dlogits", h, dl, nv, 1e-5, 1e-7);
    free(h); free(logits); free(loss); free(lse); free(dloss); free(dl); free(t);
    fsdp_cuda_free(d_logits); fsdp_cuda_free(d_loss); fsdp_cuda_free(d_lse); fsdp_cuda_free(d_dloss);
    fsdp_cuda_free(d_dl); fsdp_cuda_free(d_t);
}

/* ---- optimizer, norms of gradients ----------------------------------------- */

static void test_adamw_sumsq(void) {
    const long n = 1000003;
    float *p = uniform(n, -1, 1), *m = uniform(n, -0.1f, 0.1f), *v = uniform(n, 0, 0.01f);
    float *g = uniform(n, -1, 1);
    float *d_p = UPF(p, n), *d_m = UPF(m, n), *d_v = UPF(v, n), *d_g = UPF(g, n);
    for (int t = 1; t <= 3; t++) {
        fsdp_adamw_cpu(p, m, v, g, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, t);
        OK(fsdp_adamw_cuda(d_p, d_m, d_v, d_g, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, t, NULL));
    }
    float *h = downf(d_p, n);
    CLOSE("adamw param", h, p, n, 1e-6, 1e-7);
    free(h); h = downf(d_v, n);
    CLOSE("adamw v", h, v, n, 1e-6, 1e-9);
    free(h);
    double *d_sum = up(NULL, sizeof(double)), sum = 0;
    OK(fsdp_sumsq_cuda(d_sum, d_g, n, NULL));
    down(&sum, d_sum, sizeof sum);
    const double want = fsdp_sumsq_cpu(g, n);
    CHECK(fabs(sum - want) <= 1e-12 * want, "sumsq %.17g vs %.17g", sum, want);
    free(p); free(m); free(v); free(g);
    fsdp_cuda_free(d_p); fsdp_cuda_free(d_m); fsdp_cuda_free(d_v); fsdp_cuda_free(d_g);
    fsdp_cuda_free(d_sum);
}

/* ---- matmul through cuBLASLt ------------------------------------------------- */

/* one case: out = op(a) op(b) + bias (maybe gelu), then all three grads, in
 * dtype, against the CPU on the same (rounded) values */
static void matmul_case(int M, int N, int K, int ta, int tb, int dtype, int gelu) {
    const int es = fsdp_dtype_size(dtype);
    const long na = (long)M * K, nb = (long)K * N, no = (long)M * N;
    float *a = uniform(na, -1, 1), *b = uniform(nb, -1, 1), *bias = uniform(N, -1, 1);
    float *dout = uniform(no, -1, 1);
    float *all[] = {a, b, bias, dout};
    long sizes[] = {na, nb, N, no};
    void *dev[4];
    for (int i = 0; i < 4; i++) { /* round to dtype so both sides see the same values */
        dev[i] = up(NULL, es * sizes[i]);
        void *tmp = malloc(es * sizes[i]);
        fsdp_cast_cpu(tmp, dtype, all[i], FSDP_F32, sizes[i]);
        fsdp_cast_cpu(all[i], FSDP_F32, tmp, dtype, sizes[i]);
        fsdp_cuda_memcpy(dev[i], tmp, es * sizes[i], NULL);
        fsdp_cuda_stream_synchronize(NULL);
        free(tmp);
    }
    float *out = malloc(4 * no), *pre = malloc(4 * no);
    fsdp_matmul_forward_cpu(pre, a, b, bias, M, N, K, ta, tb, 0);
    for (long i = 0; i < no; i++) out[i] = gelu ? 0.5f * pre[i] * (1.0f + tanhf(0.7978845608f * (pre[i] + 0.044715f * pre[i] * pre[i] * pre[i]))) : pre[i];
    void *d_out = up(NULL, es * no), *d_pre = gelu ? up(NULL, es * no) : NULL;
    char what[96];
    snprintf(what, sizeof what, "matmul %s M%d N%d K%d ta%d tb%d gelu%d", fsdp_dtype_name(dtype), M, N, K,
             ta, tb, gelu);
    int rc = fsdp_matmul_forward_cublaslt(d_out, d_pre, dev[0], dev[1], dev[2], M, N, K, ta, tb, 0, gelu, dtype,
                                          NULL);
    CHECK(rc == FSDP_OK, "%s: %s", what, fsdp_last_error());
    void *h16 = malloc(es * no);
    float *h = malloc(4 * no);
    down(h16, d_out, es * no);
    fsdp_cast_cpu(h, FSDP_F32, h16, dtype, no);
    if (dtype == FSDP_F32) CLOSE(what, h, out, no, 1e-4, 1e-4);
    else CLOSE(what, h, out, no, TOL_16);
    if (!gelu) { /* backward (accumulating into zeros) */
        void *d_da = up(NULL, es * na), *d_db = up(NULL, es * nb), *d_dbias = up(NULL, es * N);
        fsdp_cuda_memset(d_da, 0, es * na, NULL);
        fsdp_cuda_memset(d_db, 0, es * nb, NULL);
        fsdp_cuda_memset(d_dbias, 0, es * N, NULL);
        float *da = calloc(na, 4), *db = calloc(nb, 4), *dbias = calloc(N, 4);
        fsdp_matmul_backward_cpu(da, db, dbias, dout, a, b, M, N, K, ta, tb);
        rc = fsdp_matmul_backward_cublaslt(d_da, d_db, d_dbias, dev[3], dev[0], dev[1], M, N, K, ta, tb, dtype,
                                           NULL);
        CHECK(rc == FSDP_OK, "%s backward: %s", what, fsdp_last_error());
        float *want[] = {da, db, dbias};
        void *got[] = {d_da, d_db, d_dbias};
        long n3[] = {na, nb, N};
        for (int i = 0; i < 3; i++) {
            void *g16 = malloc(es * n3[i]);
            float *g = malloc(4 * n3[i]);
            down(g16, got[i], es * n3[i]);
            fsdp_cast_cpu(g, FSDP_F32, g16, dtype, n3[i]);
            if (dtype == FSDP_F32) CLOSE(what, g, want[i], n3[i], 1e-4, 1e-3);
            else CLOSE(what, g, want[i], n3[i], 3e-2, 1e-1);
            free(g16); free(g);
            fsdp_cuda_free(got[i]);
        }
        free(da); free(db); free(dbias);
    }
    for (int i = 0; i < 4; i++) { free(all[i]); fsdp_cuda_free(dev[i]); }
    free(out); free(pre); free(h16); free(h);
    fsdp_cuda_free(d_out); fsdp_cuda_free(d_pre);
}

static void test_matmul(void) {
    int dts[3] = {FSDP_F32, FSDP_BF16, FSDP_F16};
    for (int d = 0; d < 3; d++)
        for (int t = 0; t < 4; t++) matmul_case(67, 96, 130, t & 1, t >> 1, dts[d], 0);
    matmul_case(128, 256, 64, 0, 1, FSDP_BF16, 1);
    matmul_case(64, 128, 256, 0, 1, FSDP_F32, 1);
}

/* ---- mixture-of-experts routing ------------------------------------------------ */

/* random ids in [0, n) (with repeats when count > n) */
static int32_t *random_ids(long count, int n) {
    int32_t *p = malloc(sizeof(int32_t) * (count ? count : 1));
    for (long i = 0; i < count; i++) p[i] = (int32_t)(fsdp_rng_next(&rng) % (uint64_t)n);
    return p;
}

/* the row gathers and scatters and top-k are the CPU's bits; softmax and
 * dscale sum in double in another order */
static void test_moe(void) {
    const int M = 4099, N = 1500, C = 515; /* routed rows, tokens, channels */
    const long mc = (long)M * C, nc = (long)N * C;
    float *inp = uniform(nc, -1, 1), *src = uniform(mc, -1, 1), *base = uniform(nc, -1, 1);
    float *dsrc = uniform(mc, -1, 1), *out = malloc(4 * mc);
    int32_t *idx = random_ids(M, N);
    float *d_inp = UPF(inp, nc), *d_src = UPF(src, mc), *d_base = UPF(base, nc), *d_dsrc = UPF(dsrc, mc);
    float *d_out = UPF(NULL, mc);
    int32_t *d_idx = up(idx, 4 * M);
    fsdp_gather_rows_forward_cpu(out, inp, idx, M, N, C);
    OK(fsdp_gather_rows_forward_cuda(d_out, d_inp, d_idx, M, N, C, NULL));
    float *h = downf(d_out, mc);
    CHECK(memcmp(h, out, 4 * mc) == 0, "gather_rows forward differs");
    free(h);
    fsdp_scatter_add_rows_forward_cpu(base, src, idx, M, N, C); /* = gather backward */
    OK(fsdp_scatter_add_rows_forward_cuda(d_base, d_src, d_idx, M, N, C, NULL));
    h = downf(d_base, nc);
    CHECK(memcmp(h, base, 4 * nc) == 0, "scatter_add_rows forward differs");
    free(h);
    OK(fsdp_cuda_memcpy(d_base, inp, 4 * nc, NULL));
    memcpy(base, inp, 4 * nc);
    fsdp_gather_rows_backward_cpu(base, src, idx, M, N, C);
    OK(fsdp_gather_rows_backward_cuda(d_base, d_src, d_idx, M, N, C, NULL));
    h = downf(d_base, nc);
    CHECK(memcmp(h, base, 4 * nc) == 0, "gather_rows backward differs");
    free(h);
    fsdp_scatter_add_rows_backward_cpu(dsrc, inp, idx, M, N, C);
    OK(fsdp_scatter_add_rows_backward_cuda(d_dsrc, d_inp, d_idx, M, N, C, NULL));
    h = downf(d_dsrc, mc);
    CHECK(memcmp(h, dsrc, 4 * mc) == 0, "scatter_add_rows backward differs");
    free(h);
    free(inp); free(src); free(base); free(dsrc); free(out); free(idx);
    fsdp_cuda_free(d_inp); fsdp_cuda_free(d_src); fsdp_cuda_free(d_base); fsdp_cuda_free(d_dsrc);
    fsdp_cuda_free(d_out); fsdp_cuda_free(d_idx);

    /* router: softmax over experts, top-k, row scale */
    const int T = 3001, E[2] = {64, 1000}, K = 8;
    for (int e = 0; e < 2; e++) {
        const long te = (long)T * E[e], tk = (long)T * K;
        float *x = uniform(te, -4, 4), *y = malloc(4 * te), *dy = uniform(te, -1, 1), *dx = uniform(te, -1, 1);
        for (long i = 0; i < te; i++) x[i] = floorf(x[i] * 8.0f) / 8.0f; /* ties for top-k */
        for (long i = 0; i < te; i += 97) x[i] = NAN;
        float *d_x = UPF(x, te), *d_y = UPF(NULL, te), *d_dy = UPF(dy, te), *d_dx = UPF(dx, te);
        float *v = malloc(4 * tk), *d_v = UPF(NULL, tk);
        int32_t *ix = malloc(4 * tk), *d_ix = up(NULL, 4 * tk);
        fsdp_topk_forward_cpu(v, ix, x, T, E[e], K);
        OK(fsdp_topk_forward_cuda(d_v, d_ix, d_x, T, E[e], K, NULL));
        float *hv = downf(d_v, tk);
        int32_t *hix = malloc(4 * tk);
        down(hix, d_ix, 4 * tk);
        CHECK(memcmp(hv, v, 4 * tk) == 0 && memcmp(hix, ix, 4 * tk) == 0, "topk forward E=%d differs", E[e]);
        float *dv = uniform(tk, -1, 1), *d_dv = UPF(dv, tk);
        fsdp_topk_backward_cpu(dx, dv, ix, T, E[e], K);
        OK(fsdp_topk_backward_cuda(d_dx, d_dv, d_ix, T, E[e], K, NULL));
        h = downf(d_dx, te);
        CHECK(memcmp(h, dx, 4 * te) == 0, "topk backward E=%d differs", E[e]);
        free(h);
        for (long i = 0; i < te; i += 97) x[i] = 0.5f; /* softmax of finite rows */
        OK(fsdp_cuda_memcpy(d_x, x, 4 * te, NULL));
        fsdp_softmax_forward_cpu(y, x, T, E[e]);
        fsdp_softmax_backward_cpu(dx, dy, y, T, E[e]);
        OK(fsdp_softmax_forward_cuda(d_y, d_x, T, E[e], NULL));
        OK(fsdp_softmax_backward_cuda(d_dx, d_dy, d_y, T, E[e], NULL));
        h = downf(d_y, te);
        CLOSE("softmax forward", h, y, te, 1e-6, 1e-9);
        free(h); h = downf(d_dx, te);
        CLOSE("softmax backward", h, dx, te, 1e-5, 1e-7);
        free(h);
        /* row scale by the first top-k weight of each row */
        float *s = uniform(T, 0, 1), *ds = uniform(T, -1, 1), *d_s = UPF(s, T), *d_ds = UPF(ds, T);
        fsdp_row_scale_forward_cpu(y, x, s, T, E[e]);
        fsdp_row_scale_backward_cpu(dx, ds, dy, x, s, T, E[e]);
        OK(fsdp_row_scale_forward_cuda(d_y, d_x, d_s, T, E[e], NULL));
        OK(fsdp_row_scale_backward_cuda(d_dx, d_ds, d_dy, d_x, d_s, T, E[e], NULL));
        h = downf(d_y, te);
        CHECK(memcmp(h, y, 4 * te) == 0, "row_scale forward differs");
        free(h); h = downf(d_dx, te);
        CHECK(memcmp(h, dx, 4 * te) == 0, "row_scale backward dinp differs");
        free(h); h = downf(d_ds, T);
        CLOSE("row_scale backward dscale", h, ds, T, 1e-6, 1e-6);
        free(h);
        free(x); free(y); free(dy); free(dx); free(v); free(ix); free(hv); free(hix); free(dv); free(s); free(ds);
        void *all[] = {d_x, d_y, d_dy, d_dx, d_v, d_ix, d_dv, d_s, d_ds};
        for (int i = 0; i < 9; i++) fsdp_cuda_free(all[i]);
    }
}

/* ---- SIMT GEMM, fill, sum --------------------------------------------------------- */

static void gemm_simt_case(int M, int N, int K, int ta, int tb) {
    const long na = (long)M * K, nb = (long)K * N, no = (long)M * N;
    float *a = uniform(na, -1, 1), *b = uniform(nb, -1, 1), *bias = uniform(N, -1, 1);
    float *dout = uniform(no, -1, 1), *out = uniform(no, -1, 1);
    float *da = uniform(na, -1, 1), *db = uniform(nb, -1, 1), *dbias = uniform(N, -1, 1);
    float *d_a = UPF(a, na), *d_b = UPF(b, nb), *d_bias = UPF(bias, N), *d_dout = UPF(dout, no);
    float *d_out = UPF(out, no), *d_da = UPF(da, na), *d_db = UPF(db, nb), *d_dbias = UPF(dbias, N);
    char what[80];
    snprintf(what, sizeof what, "simt gemm M%d N%d K%d ta%d tb%d", M, N, K, ta, tb);
    fsdp_matmul_forward_cpu(out, a, b, bias, M, N, K, ta, tb, 1);
    OK(fsdp_matmul_forward_simt_cuda(d_out, d_a, d_b, d_bias, M, N, K, ta, tb, 1, NULL));
    float *h = downf(d_out, no);
    CLOSE(what, h, out, no, 1e-4, 1e-4);
    /* twice: the same bits */
    float *again = UPF(NULL, no);
    OK(fsdp_matmul_forward_simt_cuda(d_out, d_a, d_b, NULL, M, N, K, ta, tb, 0, NULL));
    OK(fsdp_matmul_forward_simt_cuda(again, d_a, d_b, NULL, M, N, K, ta, tb, 0, NULL));
    float *h1 = downf(d_out, no), *h2 = downf(again, no);
    CHECK(memcmp(h1, h2, 4 * no) == 0, "%s: not deterministic", what);
    fsdp_matmul_backward_cpu(da, db, dbias, dout, a, b, M, N, K, ta, tb);
    OK(fsdp_matmul_backward_simt_cuda(d_da, d_db, d_dbias, d_dout, d_a, d_b, M, N, K, ta, tb, NULL));
    float *hda = downf(d_da, na), *hdb = downf(d_db, nb), *hdbias = downf(d_dbias, N);
    CLOSE(what, hda, da, na, 1e-4, 1e-3);
    CLOSE(what, hdb, db, nb, 1e-4, 1e-3);
    CLOSE(what, hdbias, dbias, N, 1e-4, 1e-3);
    free(a); free(b); free(bias); free(dout); free(out); free(da); free(db); free(dbias);
    free(h); free(h1); free(h2); free(hda); free(hdb); free(hdbias);
    void *all[] = {d_a, d_b, d_bias, d_dout, d_out, d_da, d_db, d_dbias, again};
    for (int i = 0; i < 9; i++) fsdp_cuda_free(all[i]);
}

static void test_gemm_simt(void) {
    for (int t = 0; t < 4; t++) gemm_simt_case(67, 96, 130, t & 1, t >> 1);
    gemm_simt_case(513, 257, 1000, 0, 1);
    gemm_simt_case(1, 3000, 7, 1, 0);
}

static void test_fill_sum(void) {
    const long n = 100003;
    const double values[] = {1.5, -3.0, 0.0, -0.0, 65504.0, 7.0, 3.3e38};
    const int dts[] = {FSDP_F32, FSDP_BF16, FSDP_F16, FSDP_I32, FSDP_I64, FSDP_U16, FSDP_U8};
    const int64_t shape[1] = {n};
    void *d = up(NULL, 8 * n);
    void *h = malloc(8 * n);
    for (int i = 0; i < 7; i++) {
        fsdp_tensor *t = fsdp_tensor_new(dts[i], FSDP_CPU, 1, shape);
        const int es = fsdp_dtype_size(dts[i]);
        for (int j = 0; j < 7; j++) {
            double v = values[j];
            if (dts[i] >= FSDP_I32 && (v < 0 || v > 255)) continue; /* outside u8: refused */
            OK(fsdp_tensor_fill(t, v));
            OK(fsdp_fill_cuda(d, dts[i], v, n, NULL));
            down(h, d, es * n);
            CHECK(memcmp(h, t->data, es * n) == 0, "fill %s with %g differs", fsdp_dtype_name(dts[i]), v);
        }
        fsdp_tensor_free(t);
    }
    free(h);
    fsdp_cuda_free(d);
    const long m = 3000017;
    float *x = uniform(m, -1, 2), *d_x = UPF(x, m), *d_s = UPF(NULL, 1);
    float got = 0, got2 = 0;
    double want = 0;
    for (long i = 0; i < m; i++) want += x[i];
    OK(fsdp_sum_cuda(d_s, d_x, m, NULL));
    down(&got, d_s, 4);
    OK(fsdp_sum_cuda(d_s, d_x, m, NULL));
    down(&got2, d_s, 4);
    CHECK(fabs(got - want) <= 1e-7 * fabs(want), "sum %.9g vs %.17g", got, want);
    CHECK(got == got2, "sum not deterministic");
    free(x);
    fsdp_cuda_free(d_x); fsdp_cuda_free(d_s);
}

/* ---- attention: the fallback kernel and cuDNN --------------------------------- */

static void test_attention(void) {
    const int B = 2, T = 257, NH = 8, NKV = 2, HD = 64, C = NH * HD, CKV = NKV * HD;
    const long rows = (long)B * T;
    const float scale = 1.0f / 8.0f;
    float *q = uniform(rows * C, -1, 1), *k = uniform(rows * CKV, -1, 1), *v = uniform(rows * CKV, -1, 1);
    float *out = malloc(4 * rows * C), *lse = malloc(4 * (long)B * NH * T), *dout = uniform(rows * C, -1, 1);
    float *dq = calloc(rows * C, 4), *dk = calloc(rows * CKV, 4), *dv = calloc(rows * CKV, 4);
    /* no window; a window of 100; a window and Gemma 2's score soft-capping */
    for (int variant = 0; variant < 3; variant++) {
        const int window = variant == 0 ? 0 : 100;
        const float softcap = variant == 2 ? 0.5f : 0.0f;
        fsdp_attention_forward_cpu(out, lse, q, k, v, B, T, NH, NKV, HD, C, CKV, CKV, window, scale, softcap);
        memset(dq, 0, 4 * rows * C); memset(dk, 0, 4 * rows * CKV); memset(dv, 0, 4 * rows * CKV);
        fsdp_attention_backward_cpu(dq, dk, dv, dout, q, k, v, out, lse, B, T, NH, NKV, HD, C, CKV, CKV,
                                    window, scale, softcap);
        float *d_q = UPF(q, rows * C), *d_k = UPF(k, rows * CKV), *d_v = UPF(v, rows * CKV);
        float *d_out = UPF(NULL, rows * C), *d_lse = UPF(NULL, (long)B * NH * T), *d_dout = UPF(dout, rows * C);
        float *d_dq = UPF(NULL, rows * C), *d_dk = UPF(NULL, rows * CKV), *d_dv = UPF(NULL, rows * CKV);
        fsdp_cuda_memset(d_dq, 0, 4 * rows * C, NULL);
        fsdp_cuda_memset(d_dk, 0, 4 * rows * CKV, NULL);
        fsdp_cuda_memset(d_dv, 0, 4 * rows * CKV, NULL);
        OK(fsdp_attention_forward_f32_cuda(d_out, d_lse, d_q, d_k, d_v, B, T, NH, NKV, HD, C, CKV, CKV, window,
                                           scale, softcap, NULL));
        OK(fsdp_attention_backward_f32_cuda(d_dq, d_dk, d_dv, d_dout, d_q, d_k, d_v, d_out, d_lse, B, T, NH, NKV,
                                            HD, C, CKV, CKV, window, scale, softcap, NULL));
        float *h = downf(d_out, rows * C);
        CLOSE("attention out", h, out, rows * C, TOL_RED);
        free(h); h = downf(d_lse, (long)B * NH * T);
        CLOSE("attention lse", h, lse, (long)B * NH * T, TOL_RED);
        free(h); h = downf(d_dq, rows * C);
        CLOSE("attention dq", h, dq, rows * C, 1e-3, 1e-4);
        free(h); h = downf(d_dk, rows * CKV);
        CLOSE("attention dk", h, dk, rows * CKV, 1e-3, 1e-4);
        free(h); h = downf(d_dv, rows * CKV);
        CLOSE("attention dv", h, dv, rows * CKV, 1e-3, 1e-4);
        free(h);

        /* cuDNN: bf16, causal without window only */
        if (window == 0) {
            uint16_t *q16 = malloc(2 * rows * C), *k16 = malloc(2 * rows * CKV), *v16 = malloc(2 * rows * CKV);
            uint16_t *do16 = malloc(2 * rows * C);
            fsdp_cast_cpu(q16, FSDP_BF16, q, FSDP_F32, rows * C);
            fsdp_cast_cpu(k16, FSDP_BF16, k, FSDP_F32, rows * CKV);
            fsdp_cast_cpu(v16, FSDP_BF16, v, FSDP_F32, rows * CKV);
            fsdp_cast_cpu(do16, FSDP_BF16, dout, FSDP_F32, rows * C);
            void *e_q = up(q16, 2 * rows * C), *e_k = up(k16, 2 * rows * CKV), *e_v = up(v16, 2 * rows * CKV);
            void *e_do = up(do16, 2 * rows * C), *e_out = up(NULL, 2 * rows * C);
            void *e_dq = up(NULL, 2 * rows * C), *e_dk = up(NULL, 2 * rows * CKV), *e_dv = up(NULL, 2 * rows * CKV);
            fsdp_cuda_memset(e_dq, 0, 2 * rows * C, NULL);
            fsdp_cuda_memset(e_dk, 0, 2 * rows * CKV, NULL);
            fsdp_cuda_memset(e_dv, 0, 2 * rows * CKV, NULL);
            int rc = fsdp_attention_forward_cudnn(e_out, d_lse, e_q, e_k, e_v, B, T, NH, NKV, HD, C, CKV, CKV,
                                                  scale, FSDP_BF16, NULL);
            if (rc == FSDP_ERR_UNSUPPORTED) {
                printf("cudnn attention: unsupported here: %s\n", fsdp_last_error());
            } else {
                CHECK(rc == FSDP_OK, "cudnn attention forward: %s", fsdp_last_error());
                float *got = malloc(4 * rows * C);
                uint16_t *g16 = malloc(2 * rows * C);
                down(g16, e_out, 2 * rows * C);
                fsdp_cast_cpu(got, FSDP_F32, g16, FSDP_BF16, rows * C);
                CLOSE("cudnn attention out", got, out, rows * C, TOL_16);
                rc = fsdp_attention_backward_cudnn(e_dq, e_dk, e_dv, e_do, e_q, e_k, e_v, e_out, d_lse, B, T, NH,
                                                   NKV, HD, C, CKV, CKV, scale, FSDP_BF16, NULL);
                CHECK(rc == FSDP_OK, "cudnn attention backward: %s", fsdp_last_error());
                down(g16, e_dq, 2 * rows * C);
                fsdp_cast_cpu(got, FSDP_F32, g16, FSDP_BF16, rows * C);
                CLOSE("cudnn attention dq", got, dq, rows * C, 5e-2, 5e-2);
                free(got); free(g16);
            }
            free(q16); free(k16); free(v16); free(do16);
            void *e_all[] = {e_q, e_k, e_v, e_do, e_out, e_dq, e_dk, e_dv};
            for (int i = 0; i < 8; i++) fsdp_cuda_free(e_all[i]);
        }
        void *d_all[] = {d_q, d_k, d_v, d_out, d_lse, d_dout, d_dq, d_dk, d_dv};
        for (int i = 0; i < 9; i++) fsdp_cuda_free(d_all[i]);
    }
    free(q); free(k); free(v); free(out); free(lse); free(dout); free(dq); free(dk); free(dv);
}

/* ---- the compute-dtype policy (engine/cuda/policy_cuda.cu) ---------------------- */

/* GEMM and attention through the ops' entry points: f32 tensors, math in the
 * compute dtype on cuBLASLt and cuDNN, against the CPU in f32 */
static void test_policy(void) {
    const int M = 200, N = 136, K = 72;
    float *a = uniform((long)M * K, -1, 1), *b = uniform((long)K * N, -1, 1), *bias = uniform(N, -1, 1);
    float *dout = uniform((long)M * N, -1, 1), *out = malloc(4L * M * N);
    float *da = calloc((size_t)M * K, 4), *db = calloc((size_t)K * N, 4), *dbias = calloc(N, 4);
    fsdp_matmul_forward_cpu(out, a, b, bias, M, N, K, 0, 1 /* b stored [N, K]: a Linear */, 0);
    fsdp_matmul_backward_cpu(da, db, dbias, dout, a, b, M, N, K, 0, 1);
    float *d_a = UPF(a, (long)M * K), *d_b = UPF(b, (long)K * N), *d_bias = UPF(bias, N);
    float *d_dout = UPF(dout, (long)M * N);
    float *d_out = UPF(NULL, (long)M * N), *d_da = UPF(NULL, (long)M * K), *d_db = UPF(NULL, (long)K * N);
    float *d_dbias = UPF(NULL, N);
    const int dts[] = {FSDP_F32, FSDP_BF16, FSDP_F16};
    for (int i = 0; i < 3; i++) {
        OK(fsdp_cuda_set_compute_dtype(dts[i]));
        fsdp_cuda_memset(d_da, 0, 4L * M * K, NULL);
        fsdp_cuda_memset(d_db, 0, 4L * K * N, NULL);
        fsdp_cuda_memset(d_dbias, 0, 4L * N, NULL);
        OK(fsdp_matmul_forward_cuda(d_out, d_a, d_b, d_bias, M, N, K, 0, 1, 0, NULL));
        OK(fsdp_matmul_backward_cuda(d_da, d_db, d_dbias, d_dout, d_a, d_b, M, N, K, 0, 1, NULL));
        const double rel = dts[i] == FSDP_F32 ? 1e-4 : 2e-2, abs_tol = dts[i] == FSDP_F32 ? 1e-4 : 5e-2;
        float *h = downf(d_out, (long)M * N);
        CLOSE("policy matmul out", h, out, (long)M * N, rel, abs_tol);
        free(h); h = downf(d_da, (long)M * K);
        CLOSE("policy matmul da", h, da, (long)M * K, rel, abs_tol);
        free(h); h = downf(d_db, (long)K * N);
        CLOSE("policy matmul db", h, db, (long)K * N, rel, abs_tol);
        free(h); h = downf(d_dbias, N);
        CLOSE("policy matmul dbias", h, dbias, N, 1e-4, 1e-4); /* column sums stay f32 */
        free(h);
    }
    float *all[] = {d_a, d_b, d_bias, d_dout, d_out, d_da, d_db, d_dbias};
    for (int i = 0; i < 8; i++) fsdp_cuda_free(all[i]);
    free(a); free(b); free(bias); free(dout); free(out); free(da); free(db); free(dbias);

    /* attention in bf16: cuDNN where it takes the shape, else the f32 kernel */
    const int B = 2, T = 128, NH = 4, NKV = 2, HD = 64, C = NH * HD, CKV = NKV * HD;
    const long rows = (long)B * T;
    float *q = uniform(rows * C, -1, 1), *k = uniform(rows * CKV, -1, 1), *v = uniform(rows * CKV, -1, 1);
    float *o = malloc(4 * rows * C), *lse = malloc(4L * B * NH * T);
    fsdp_attention_forward_cpu(o, lse, q, k, v, B, T, NH, NKV, HD, C, CKV, CKV, 0, 0.125f, 0.0f);
    float *d_q = UPF(q, rows * C), *d_k = UPF(k, rows * CKV), *d_v = UPF(v, rows * CKV);
    float *d_o = UPF(NULL, rows * C), *d_lse = UPF(NULL, (long)B * NH * T);
    OK(fsdp_cuda_set_compute_dtype(FSDP_BF16));
    const int64_t declined0 = fsdp_cuda_declined_shapes();
    OK(fsdp_attention_forward_cuda(d_o, d_lse, d_q, d_k, d_v, B, T, NH, NKV, HD, C, CKV, CKV, 0, 0.125f, 0.0f, NULL));
    printf("policy attention bf16: %s\n", fsdp_cuda_declined_shapes() > declined0 ? "cuDNN declined, f32 kernel"
                                                                               : "cuDNN");
    float *h = downf(d_o, rows * C);
    CLOSE("policy attention bf16 out", h, o, rows * C, TOL_16);
    free(h);
    OK(fsdp_cuda_set_compute_dtype(FSDP_F32));
    float *all2[] = {d_q, d_k, d_v, d_o, d_lse};
    for (int i = 0; i < 5; i++) fsdp_cuda_free(all2[i]);
    free(q); free(k); free(v); free(o); free(lse);
    CHECK(fsdp_cuda_set_compute_dtype(FSDP_I32) == FSDP_ERR_INVALID, "compute dtype i32 accepted");
}

/* ---- the allocator and errors -------------------------------------------------- */

static void test_allocator(void) {
    fsdp_mem_stats s0, s1, s2;
    OK(fsdp_cuda_mem_get_stats(0, &s0));
    void *p = fsdp_cuda_alloc(0, 1000, NULL);
    OK(fsdp_cuda_mem_get_stats(0, &s1));
    CHECK(s1.current == s0.current + 1000, "current %lld -> %lld", (long long)s0.current,
          (long long)s1.current);
    fsdp_cuda_free(p);
    void *q = fsdp_cuda_alloc(0, 900, NULL); /* same size class: a cache hit */
    OK(fsdp_cuda_mem_get_stats(0, &s2));
    CHECK(q == p, "the cached block was not reused");
    CHECK(s2.n_misses == s1.n_misses, "a reuse counted as a miss");
    fsdp_cuda_free(q);
    fsdp_cuda_set_rank(3);
    void *huge = fsdp_cuda_alloc(0, (int64_t)1 << 50, NULL);
    CHECK(huge == NULL, "a petabyte allocation succeeded");
    CHECK(strstr(fsdp_last_error(), "rank 3") && strstr(fsdp_last_error(), "cuda:0"),
          "OOM message lacks rank/device: %s", fsdp_last_error());
    printf("OOM message: %s\n", fsdp_last_error());
    fsdp_cuda_set_rank(-1);
    OK(fsdp_cuda_mem_empty_cache(0));
    CHECK(fsdp_layernorm_forward_cuda(NULL, NULL, NULL, NULL, NULL, NULL, 0, 5, 1e-5f, NULL) ==
              FSDP_ERR_INVALID && strstr(fsdp_last_error(), "fsdp_layernorm_forward_cuda"),
          "bad arguments: %s", fsdp_last_error());
}

int main(void) {
    int count = 0;
    if (fsdp_cuda_device_count(&count) != FSDP_OK || count == 0) {
        printf("skipped: no GPU (%s)\n", count == 0 && !*fsdp_last_error() ? "0 devices" : fsdp_last_error());
        return 77;
    }
    fsdp_cuda_device_info info;
    OK(fsdp_cuda_get_device_info(0, &info));
    printf("device 0: %s, sm_%d%d, %d SMs, %.1f GiB\n", info.name, info.major, info.minor, info.sm_count,
           info.total_mem / 1073741824.0);
    OK(fsdp_cuda_set_device(0));
    fsdp_rng_seed(&rng, 7);
    test_pointwise();
    test_cast();
    test_embedding();
    test_norms();
    test_rope();
    test_crossentropy();
    test_adamw_sumsq();
    test_matmul();
    test_gemm_simt();
    test_moe();
    test_fill_sum();
    test_attention();
    test_policy();
    test_allocator();
    OK(fsdp_cuda_synchronize());
    return check_exit("test_cuda_ops");
}
