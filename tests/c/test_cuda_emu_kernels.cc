/* test_cuda_emu_kernels.cc - every kernel of kernels/<op>_cuda.cu, forward
 * and backward, against its CPU twin, run on the host through the fiber
 * emulation of tests/cuda/emu/cuda_emu.h (the .cu files are compiled by g++
 * with -DFSDP_EMULATE_CUDA and AddressSanitizer; "device" pointers are host
 * memory). Random inputs, several shapes, ragged ones included (C = 13,
 * N = 7, V = 1001, T = 37 > one warp of keys, HD = 40 > one lane per dim).
 *
 * Where the GPU kernel does the same float operations in the same order as
 * the CPU one (pointwise ops, casts, AdamW, embedding, RoPE, the
 * cross-entropy gradient) the results must be identical bits; reductions
 * that are ordered differently (norms, softmax sums, attention) must agree
 * within a relative tolerance. Backward kernels start from random gradients
 * to check that they accumulate. The emulator must report no race and no
 * deadlock anywhere. */
#include <stdint.h>
#include <string.h>
#include <vector>
#include "fsdp.h"
#include "check.h"
#include "cuda_emu.h"

typedef std::vector<float> vec;
static fsdp_rng rng;

static vec uniform(long n, float lo = -1.0f, float hi = 1.0f) {
    vec v(n > 0 ? n : 1);
    fsdp_rng_fill_uniform(&rng, v.data(), n, lo, hi);
    v.resize(n);
    return v;
}

static std::vector<int32_t> ids(long n, int V) {
    std::vector<int32_t> v(n);
    for (auto &x : v) x = (int32_t)(fsdp_rng_next(&rng) % (uint64_t)V);
    return v;
}

static int same_bits(const vec &a, const vec &b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

#define CHECK_BITS(what, a, b) CHECK(same_bits(a, b), "%s: GPU and CPU bits differ", what)
#define CHECK_OK(rc, what) CHECK((rc) == FSDP_OK, "%s failed: %s", what, fsdp_last_error())
#define CLOSE(what, a, b, rtol, atol) CHECK_CLOSE(what, (a).data(), (b).data(), (long)(a).size(), rtol, atol)

/* ---- pointwise ---------------------------------------------------------- */

typedef int (*unary_cpu)(float *, const float *, int64_t);
typedef int (*unary_gpu)(float *, const float *, int64_t, fsdp_stream);
typedef int (*unary_bwd_cpu)(float *, const float *, const float *, int64_t);
typedef int (*unary_bwd_gpu)(float *, const float *, const float *, int64_t, fsdp_stream);

static void test_activation(const char *name, unary_cpu fc, unary_gpu fg, unary_bwd_cpu bc,
                            unary_bwd_gpu bg) {
    for (long n : {1L, 7L, 1000L, 4099L}) {
        vec x = uniform(n, -6, 6), dout = uniform(n), init = uniform(n);
        vec oc(n), og(n);
        CHECK_OK(fc(oc.data(), x.data(), n), name);
        CHECK_OK(fg(og.data(), x.data(), n, nullptr), name);
        CHECK_BITS(name, og, oc);
        vec dc = init, dg = init;
        CHECK_OK(bc(dc.data(), dout.data(), x.data(), n), name);
        CHECK_OK(bg(dg.data(), dout.data(), x.data(), n, nullptr), name);
        CHECK_BITS(name, dg, dc);
    }
    CHECK(fg(nullptr, nullptr, 0, nullptr) == FSDP_OK, "%s: n = 0 must be a no-op", name);
    CHECK(fg(nullptr, nullptr, -1, nullptr) == FSDP_ERR_INVALID, "%s: n < 0 accepted", name);
}

static void test_swiglu() {
    for (long n : {5L, 1031L}) {
        vec g = uniform(n, -5, 5), u = uniform(n), dout = uniform(n);
        vec oc(n), og(n);
        CHECK_OK(fsdp_swiglu_forward_cpu(oc.data(), g.data(), u.data(), n), "swiglu fwd cpu");
        CHECK_OK(fsdp_swiglu_forward_cuda(og.data(), g.data(), u.data(), n, nullptr), "swiglu fwd");
        CHECK_BITS("swiglu forward", og, oc);
        vec dgc = uniform(n), duc = uniform(n), dgg = dgc, dug = duc;
        CHECK_OK(fsdp_swiglu_backward_cpu(dgc.data(), duc.data(), dout.data(), g.data(), u.data(), n),
                 "swiglu bwd cpu");
        CHECK_OK(fsdp_swiglu_backward_cuda(dgg.data(), dug.data(), dout.data(), g.data(), u.data(), n,
                                           nullptr), "swiglu bwd");
        CHECK_BITS("swiglu dgate", dgg, dgc);
        CHECK_BITS("swiglu dup", dug, duc);
        /* one gradient only */
        vec d1 = dgc;
        CHECK_OK(fsdp_swiglu_backward_cpu(dgc.data(), nullptr, dout.data(), g.data(), u.data(), n),
                 "swiglu bwd cpu");
        CHECK_OK(fsdp_swiglu_backward_cuda(d1.data(), nullptr, dout.data(), g.data(), u.data(), n,
                                           nullptr), "swiglu bwd NULL dup");
        CHECK_BITS("swiglu dgate (dup NULL)", d1, dgc);
    }
}

static void test_elementwise() {
    for (long n : {1L, 13L, 5000L}) {
        vec a = uniform(n), b = uniform(n), c(n), g(n);
        fsdp_add_cpu(c.data(), a.data(), b.data(), n);
        CHECK_OK(fsdp_add_cuda(g.data(), a.data(), b.data(), n, nullptr), "add");
        CHECK_BITS("add", g, c);
        fsdp_mul_cpu(c.data(), a.data(), b.data(), n);
        CHECK_OK(fsdp_mul_cuda(g.data(), a.data(), b.data(), n, nullptr), "mul");
        CHECK_BITS("mul", g, c);
        fsdp_scale_cpu(c.data(), 0.37f, a.data(), n);
        CHECK_OK(fsdp_scale_cuda(g.data(), 0.37f, a.data(), n, nullptr), "scale");
        CHECK_BITS("scale", g, c);
        vec yc = b, yg = b;
        fsdp_axpy_cpu(yc.data(), -1.7f, a.data(), n);
        CHECK_OK(fsdp_axpy_cuda(yg.data(), -1.7f, a.data(), n, nullptr), "axpy");
        CHECK_BITS("axpy", yg, yc);
        /* in place: out aliases an input */
        vec ic = a, ig = a;
        fsdp_add_cpu(ic.data(), ic.data(), b.data(), n);
        CHECK_OK(fsdp_add_cuda(ig.data(), ig.data(), b.data(), n, nullptr), "add in place");
        CHECK_BITS("add in place", ig, ic);
    }
}

/* LoRA's dropout mask: the same elements kept, the same bits, = and += */
static void test_lora_dropout() {
    for (long n : {1L, 13L, 5000L}) {
        for (float p : {0.0f, 0.3f, 0.9f}) {
            for (int acc : {0, 1}) {
                vec x = uniform(n), init = uniform(n);
                vec c = init, g = init;
                CHECK_OK(fsdp_lora_dropout_cpu(c.data(), x.data(), n, p, 77 + n, acc), "lora_dropout cpu");
                CHECK_OK(fsdp_lora_dropout_cuda(g.data(), x.data(), n, p, 77 + n, acc, nullptr), "lora_dropout");
                CHECK_BITS("lora_dropout", g, c);
                if (n == 5000 && !acc) {
                    long zeros = 0;
                    for (float v : c) zeros += v == 0.0f;
                    CHECK(zeros > (p - 0.05f) * n && zeros < (p + 0.05f) * n + 1, "p %g dropped %ld of %ld", p,
                          zeros, n);
                }
            }
        }
    }
    vec x = uniform(4), o(4);
    CHECK(fsdp_lora_dropout_cuda(o.data(), x.data(), 4, 1.0f, 1, 0, nullptr) == FSDP_ERR_INVALID, "p = 1 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_lora_dropout_cuda"), "message: %s", fsdp_last_error());
}

/* every pair of f32/bf16/f16, with specials: +-0, inf, NaN, subnormals,
 * f16 overflow and underflow, ties */
static void test_cast() {
    vec x = uniform(3000, -70000, 70000);
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -3e-39f, 65504.0f,
                              65520.0f, 1e-8f, 5.96e-8f, 2.98e-8f, 1.0f + 1.0f / 256, 3.14159f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) x[i] = specials[i];
    for (int i = 14; i < 1000; i++) x[i] = x[i] * 1e-9f; /* many subnormal f16 */
    const long n = (long)x.size();
    const int dts[] = {FSDP_F32, FSDP_BF16, FSDP_F16};
    for (int s : dts) {
        std::vector<uint8_t> src(n * 4);
        CHECK_OK(fsdp_cast_cpu(src.data(), s, x.data(), FSDP_F32, n), "cast setup");
        for (int d : dts) {
            std::vector<uint8_t> c(n * 4, 0), g(n * 4, 0);
            CHECK_OK(fsdp_cast_cpu(c.data(), d, src.data(), s, n), "cast cpu");
            CHECK_OK(fsdp_cast_cuda(g.data(), d, src.data(), s, n, nullptr), "cast");
            CHECK(memcmp(c.data(), g.data(), n * 4) == 0, "cast %s -> %s: bits differ",
                  fsdp_dtype_name(s), fsdp_dtype_name(d));
        }
    }
    CHECK(fsdp_cast_cuda(x.data(), FSDP_I32, x.data(), FSDP_F32, 4, nullptr) == FSDP_ERR_INVALID,
          "cast to i32 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_cast_cuda"), "message lacks the kernel name: %s",
          fsdp_last_error());
}

/* ---- embedding ------------------------------------------------------------ */

static void test_embedding() {
    struct { int N, V, C; } shapes[] = {{7, 1001, 13}, {64, 50, 300}, {1, 3, 1}};
    for (auto s : shapes) {
        vec table = uniform((long)s.V * s.C), oc((long)s.N * s.C), og(oc.size());
        std::vector<int32_t> idx = ids(s.N, s.V);
        if (s.N > 3) idx[3] = idx[1]; /* a repeated token */
        CHECK_OK(fsdp_embedding_forward_cpu(oc.data(), idx.data(), table.data(), s.N, s.V, s.C), "emb cpu");
        CHECK_OK(fsdp_embedding_forward_cuda(og.data(), idx.data(), table.data(), s.N, s.V, s.C, nullptr),
                 "embedding forward");
        CHECK_BITS("embedding forward", og, oc);
        vec dout = uniform(oc.size()), dc = uniform(table.size()), dg = dc;
        CHECK_OK(fsdp_embedding_backward_cpu(dc.data(), dout.data(), idx.data(), s.N, s.V, s.C), "emb cpu");
        CHECK_OK(fsdp_embedding_backward_cuda(dg.data(), dout.data(), idx.data(), s.N, s.V, s.C, nullptr),
                 "embedding backward");
        CHECK_BITS("embedding backward", dg, dc);
    }
    /* an id out of range: NaN row, no gradient, the other rows intact */
    const int N = 3, V = 5, C = 4;
    vec table = uniform(V * C), out(N * C), dt(V * C, 0.0f), dout = uniform(N * C);
    std::vector<int32_t> idx = {1, 7, 2};
    CHECK_OK(fsdp_embedding_forward_cuda(out.data(), idx.data(), table.data(), N, V, C, nullptr), "emb");
    CHECK(isnan(out[C]) && out[0] == table[C] && out[2 * C] == table[2 * C], "bad id: row not NaN");
    CHECK_OK(fsdp_embedding_backward_cuda(dt.data(), dout.data(), idx.data(), N, V, C, nullptr), "emb");
    float total = 0;
    for (float g : dt) total += g != 0.0f;
    CHECK(total == 2 * C, "bad id: %g gradient entries touched, want %d", total, 2 * C);
}

/* ---- norms ---------------------------------------------------------------- */

static void test_layernorm() {
    struct { int N, C; } shapes[] = {{7, 13}, {5, 64}, {3, 1000}, {2, 2049}, {33, 200}, {1, 1}};
    for (auto s : shapes) {
        const long nc = (long)s.N * s.C;
        vec x = uniform(nc, -3, 5), w = uniform(s.C), b = uniform(s.C);
        vec oc(nc), og(nc), mc(s.N), mg(s.N), rc(s.N), rg(s.N);
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            const float *bias = with_bias ? b.data() : nullptr;
            fsdp_layernorm_forward_cpu(oc.data(), mc.data(), rc.data(), x.data(), w.data(), bias, s.N, s.C, 1e-5f);
            CHECK_OK(fsdp_layernorm_forward_cuda(og.data(), mg.data(), rg.data(), x.data(), w.data(), bias,
                                                 s.N, s.C, 1e-5f, nullptr), "layernorm forward");
            CLOSE("layernorm out", og, oc, 1e-5, 1e-5);
            CLOSE("layernorm mean", mg, mc, 1e-5, 1e-6);
            CLOSE("layernorm rstd", rg, rc, 1e-5, 1e-6);
        }
        vec dout = uniform(nc), dxc = uniform(nc), dwc = uniform(s.C), dbc = uniform(s.C);
        vec dxg = dxc, dwg = dwc, dbg = dbc;
        fsdp_layernorm_backward_cpu(dxc.data(), dwc.data(), dbc.data(), dout.data(), x.data(), w.data(),
                                    mc.data(), rc.data(), s.N, s.C);
        CHECK_OK(fsdp_layernorm_backward_cuda(dxg.data(), dwg.data(), dbg.data(), dout.data(), x.data(),
                                              w.data(), mc.data(), rc.data(), s.N, s.C, nullptr),
                 "layernorm backward");
        CLOSE("layernorm dinp", dxg, dxc, 1e-4, 1e-5);
        CLOSE("layernorm dweight", dwg, dwc, 1e-4, 1e-5);
        CLOSE("layernorm dbias", dbg, dbc, 1e-4, 1e-5);
        /* parameter grads only; then deterministic: a second run, same bits */
        vec dw1(s.C, 0.0f), dw2(s.C, 0.0f);
        CHECK_OK(fsdp_layernorm_backward_cuda(nullptr, dw1.data(), nullptr, dout.data(), x.data(), w.data(),
                                              mc.data(), rc.data(), s.N, s.C, nullptr), "ln bwd dw");
        CHECK_OK(fsdp_layernorm_backward_cuda(nullptr, dw2.data(), nullptr, dout.data(), x.data(), w.data(),
                                              mc.data(), rc.data(), s.N, s.C, nullptr), "ln bwd dw");
        CHECK_BITS("layernorm dweight twice", dw1, dw2);
    }
    vec z(4);
    CHECK(fsdp_layernorm_forward_cuda(z.data(), z.data(), z.data(), z.data(), z.data(), nullptr, 0, 4,
                                      1e-5f, nullptr) == FSDP_ERR_INVALID, "N = 0 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_layernorm_forward_cuda"), "message: %s", fsdp_last_error());
}

static void test_rmsnorm() {
    struct { int N, C; } shapes[] = {{7, 13}, {4, 128}, {3, 1000}, {2, 4100}, {35, 300}};
    for (auto s : shapes) {
        const long nc = (long)s.N * s.C;
        vec x = uniform(nc, -2, 3), w = uniform(s.C, 0.5f, 1.5f);
        vec oc(nc), og(nc), rc(s.N), rg(s.N);
        fsdp_rmsnorm_forward_cpu(oc.data(), rc.data(), x.data(), w.data(), s.N, s.C, 1e-6f);
        CHECK_OK(fsdp_rmsnorm_forward_cuda(og.data(), rg.data(), x.data(), w.data(), s.N, s.C, 1e-6f,
                                           nullptr), "rmsnorm forward");
        CLOSE("rmsnorm out", og, oc, 1e-5, 1e-6);
        CLOSE("rmsnorm rstd", rg, rc, 1e-5, 1e-6);
        vec dout = uniform(nc), dxc = uniform(nc), dwc = uniform(s.C), dxg = dxc, dwg = dwc;
        fsdp_rmsnorm_backward_cpu(dxc.data(), dwc.data(), dout.data(), x.data(), w.data(), rc.data(),
                                  s.N, s.C);
        CHECK_OK(fsdp_rmsnorm_backward_cuda(dxg.data(), dwg.data(), dout.data(), x.data(), w.data(),
                                            rc.data(), s.N, s.C, nullptr), "rmsnorm backward");
        CLOSE("rmsnorm dinp", dxg, dxc, 1e-4, 1e-5);
        CLOSE("rmsnorm dweight", dwg, dwc, 1e-4, 1e-5);
    }
}

/* ---- rope ----------------------------------------------------------------- */

static void test_rope() {
    struct { int B, T, NH, HD, pad; } shapes[] = {{2, 5, 3, 8, 4}, {1, 7, 1, 2, 0}, {3, 13, 4, 64, 0}};
    for (auto s : shapes) {
        const int ld = s.NH * s.HD + s.pad, half = s.HD / 2;
        vec inv(half), cs((long)s.T * half), sn(cs.size());
        for (int i = 0; i < half; i++) inv[i] = powf(10000.0f, -2.0f * i / s.HD);
        fsdp_rope_table_cpu(cs.data(), sn.data(), inv.data(), 3, s.T, s.HD);
        const long n = (long)s.B * s.T * ld;
        vec x = uniform(n), oc = uniform(n), og = oc;
        fsdp_rope_forward_cpu(oc.data(), x.data(), cs.data(), sn.data(), s.B, s.T, s.NH, s.HD, ld);
        CHECK_OK(fsdp_rope_forward_cuda(og.data(), x.data(), cs.data(), sn.data(), s.B, s.T, s.NH, s.HD,
                                        ld, nullptr), "rope forward");
        CHECK_BITS("rope forward", og, oc);
        vec ip = x; /* in place */
        CHECK_OK(fsdp_rope_forward_cuda(ip.data(), ip.data(), cs.data(), sn.data(), s.B, s.T, s.NH, s.HD,
                                        ld, nullptr), "rope forward in place");
        vec ipc = x;
        fsdp_rope_forward_cpu(ipc.data(), ipc.data(), cs.data(), sn.data(), s.B, s.T, s.NH, s.HD, ld);
        CHECK_BITS("rope forward in place", ip, ipc);
        vec dc = uniform(n), dg = dc;
        fsdp_rope_backward_cpu(dc.data(), x.data(), cs.data(), sn.data(), s.B, s.T, s.NH, s.HD, ld);
        CHECK_OK(fsdp_rope_backward_cuda(dg.data(), x.data(), cs.data(), sn.data(), s.B, s.T, s.NH, s.HD,
                                         ld, nullptr), "rope backward");
        CHECK_BITS("rope backward", dg, dc);
    }
    vec z(64);
    CHECK(fsdp_rope_forward_cuda(z.data(), z.data(), z.data(), z.data(), 1, 1, 1, 3, 3, nullptr) ==
          FSDP_ERR_INVALID, "odd HD accepted");
}

/* ---- cross-entropy -------------------------------------------------------- */

static void test_crossentropy() {
    struct { int N, V; } shapes[] = {{7, 1001}, {3, 13}, {4, 5000}, {2, 1}};
    for (auto s : shapes) {
        const long nv = (long)s.N * s.V;
        vec logits = uniform(nv, -8, 8);
        std::vector<int32_t> t = ids(s.N, s.V);
        if (s.N > 2) t[1] = -100; /* ignored row */
        if (s.V > 20) logits[5] = -INFINITY; /* a masked class */
        vec lc(s.N), lg(s.N), sc(s.N), sg(s.N);
        CHECK_OK(fsdp_crossentropy_forward_cpu(lc.data(), sc.data(), logits.data(), t.data(), s.N, s.V, -100),
                 "ce cpu");
        CHECK_OK(fsdp_crossentropy_forward_cuda(lg.data(), sg.data(), logits.data(), t.data(), s.N, s.V,
                                                -100, nullptr), "crossentropy forward");
        CLOSE("crossentropy loss", lg, lc, 1e-5, 1e-5);
        CLOSE("crossentropy lse", sg, sc, 1e-6, 1e-6);
        /* the gradient from the same lse: identical operations */
        vec dloss = uniform(s.N), dc = uniform(nv), dg = dc;
        CHECK_OK(fsdp_crossentropy_backward_cpu(dc.data(), dloss.data(), logits.data(), sc.data(), t.data(),
                                                s.N, s.V, -100), "ce cpu");
        CHECK_OK(fsdp_crossentropy_backward_cuda(dg.data(), dloss.data(), logits.data(), sc.data(), t.data(),
                                                 s.N, s.V, -100, nullptr), "crossentropy backward");
        CHECK_BITS("crossentropy backward", dg, dc);
        /* forward and backward in place (the chunked LM head) */
        vec ic = logits, ig = logits, il(s.N), ilg(s.N), is(s.N), isg(s.N);
        CHECK_OK(fsdp_crossentropy_inplace_cpu(il.data(), is.data(), ic.data(), t.data(), s.N, s.V, -100),
                 "ce inplace cpu");
        CHECK_OK(fsdp_crossentropy_inplace_cuda(ilg.data(), isg.data(), ig.data(), t.data(), s.N, s.V, -100,
                                                nullptr), "crossentropy inplace");
        CLOSE("crossentropy inplace loss", ilg, il, 1e-5, 1e-5);
        CLOSE("crossentropy inplace lse", isg, is, 1e-6, 1e-6);
        CLOSE("crossentropy inplace grad", ig, ic, 1e-5, 1e-6);
    }
    /* a target out of range: NaN loss on the device, no gradient */
    vec logits = uniform(2 * 10), loss(2), lse(2), d(20, 0.0f), dl(2, 1.0f);
    std::vector<int32_t> t = {3, 10};
    CHECK_OK(fsdp_crossentropy_forward_cuda(loss.data(), lse.data(), logits.data(), t.data(), 2, 10, -100,
                                            nullptr), "ce bad target");
    CHECK(!isnan(loss[0]) && isnan(loss[1]), "bad target: loss %g %g", loss[0], loss[1]);
    CHECK_OK(fsdp_crossentropy_backward_cuda(d.data(), dl.data(), logits.data(), lse.data(), t.data(), 2,
                                             10, -100, nullptr), "ce bad target bwd");
    int touched = 0;
    for (int j = 10; j < 20; j++) touched += d[j] != 0.0f;
    CHECK(touched == 0, "bad target row got a gradient");
}

/* ---- optimizer and norms -------------------------------------------------- */

static void test_adamw() {
    for (long n : {1L, 1001L}) {
        vec p = uniform(n), m = uniform(n, -0.1f, 0.1f), v = uniform(n, 0, 0.01f), g = uniform(n);
        vec pc = p, mc = m, vc = v, pg = p, mg = m, vg = v;
        for (int64_t t = 1; t <= 3; t++) {
            fsdp_adamw_cpu(pc.data(), mc.data(), vc.data(), g.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f,
                           0.5f, t);
            CHECK_OK(fsdp_adamw_cuda(pg.data(), mg.data(), vg.data(), g.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f,
                                     0.1f, 0.5f, t, nullptr), "adamw");
        }
        CHECK_BITS("adamw param", pg, pc);
        CHECK_BITS("adamw m", mg, mc);
        CHECK_BITS("adamw v", vg, vc);
    }
    /* a slice of decayed and undecayed runs in one call */
    {
        const long n = 3001;
        const int64_t decay[] = {0, 7, 100, 2000, 2500, 3001};
        vec p = uniform(n), m = uniform(n, -0.1f, 0.1f), v = uniform(n, 0, 0.01f), g = uniform(n);
        vec pc = p, mc = m, vc = v, pg = p, mg = m, vg = v;
        for (int64_t t = 1; t <= 2; t++) {
            CHECK_OK(fsdp_adamw_runs_cpu(pc.data(), mc.data(), vc.data(), g.data(), n, decay, 3, 1e-3f, 0.9f,
                                         0.95f, 1e-8f, 0.1f, 0.5f, t), "adamw_runs cpu");
            CHECK_OK(fsdp_adamw_runs_cuda(pg.data(), mg.data(), vg.data(), g.data(), n, decay, 3, 1e-3f, 0.9f,
                                          0.95f, 1e-8f, 0.1f, 0.5f, t, nullptr), "adamw_runs");
        }
        CHECK_BITS("adamw_runs param", pg, pc);
        CHECK_BITS("adamw_runs m", mg, mc);
        CHECK_BITS("adamw_runs v", vg, vc);
        const int64_t bad[] = {5, 4};
        CHECK(fsdp_adamw_runs_cuda(pg.data(), mg.data(), vg.data(), g.data(), n, bad, 1, 1e-3f, 0.9f, 0.95f,
                                   1e-8f, 0.1f, 0.5f, 1, nullptr) == FSDP_ERR_INVALID, "a reversed run accepted");
    }
    vec z(4);
    CHECK(fsdp_adamw_cuda(z.data(), z.data(), z.data(), z.data(), 4, 1e-3f, 0.9f, 0.95f, 1e-8f, 0, 1, 0,
                          nullptr) == FSDP_ERR_INVALID, "t = 0 accepted");
}

static void test_sumsq() {
    for (long n : {0L, 1L, 1001L, 300001L}) {
        vec x = uniform(n, -2, 2);
        double out = -1;
        CHECK_OK(fsdp_sumsq_cuda(&out, x.data(), n, nullptr), "sumsq");
        const double want = fsdp_sumsq_cpu(x.data(), n);
        CHECK(fabs(out - want) <= 1e-12 * fabs(want), "sumsq n=%ld: %.17g vs %.17g", n, out, want);
        double again = -1;
        fsdp_sumsq_cuda(&again, x.data(), n, nullptr);
        CHECK(again == out, "sumsq not deterministic");
    }
    vec x = uniform(5000);
    x[4321] = NAN;
    double out = 0;
    CHECK_OK(fsdp_sumsq_cuda(&out, x.data(), 5000, nullptr), "sumsq NaN");
    CHECK(isnan(out), "sumsq lost a NaN: %g", out);
}

/* dbias of a matmul: the CPU matmul backward's column sums, in f32; the 16-bit
 * forms against the same sums rounded once */
static void test_bias_backward() {
    struct { int M, N; } shapes[] = {{7, 13}, {100, 70}, {1, 1}};
    for (auto s : shapes) {
        vec dout = uniform((long)s.M * s.N), a = uniform(s.M), b = uniform(s.N);
        vec dc = uniform(s.N), dg = dc;
        CHECK_OK(fsdp_matmul_backward_cpu(nullptr, nullptr, dc.data(), dout.data(), a.data(), b.data(), s.M,
                                          s.N, 1, 0, 0), "matmul bwd cpu");
        CHECK_OK(fsdp_bias_backward_cuda(dg.data(), dout.data(), s.M, s.N, FSDP_F32, nullptr), "bias bwd");
        CLOSE("bias backward f32", dg, dc, 1e-5, 1e-5);
        std::vector<uint16_t> d16(s.M * (long)s.N), b16(s.N, 0);
        fsdp_cast_cpu(d16.data(), FSDP_BF16, dout.data(), FSDP_F32, d16.size());
        CHECK_OK(fsdp_bias_backward_cuda(b16.data(), d16.data(), s.M, s.N, FSDP_BF16, nullptr), "bias bf16");
        vec back(s.N), want(s.N, 0.0f), wide(d16.size());
        fsdp_cast_cpu(wide.data(), FSDP_F32, d16.data(), FSDP_BF16, d16.size());
        for (int m = 0; m < s.M; m++)
            for (int c = 0; c < s.N; c++) want[c] += wide[(long)m * s.N + c];
        fsdp_cast_cpu(back.data(), FSDP_F32, b16.data(), FSDP_BF16, s.N);
        CLOSE("bias backward bf16", back, want, 8e-3, 1e-4);
    }
}

/* ---- attention ------------------------------------------------------------ */

/* decoding over a KV cache: the CUDA twin stores the same keys and values
 * and computes the same bits as the CPU (both run attention_math.h's row),
 * step after step (a prompt chunk, then single tokens) */
static void test_attention_decode() {
    struct { int B, NH, NKV, HD, window, fused; float softcap; } shapes[] = {
        {2, 4, 2, 16, 0, 0, 0.0f}, {1, 3, 1, 40, 0, 1, 0.0f}, {2, 2, 2, 8, 3, 0, 0.0f},
        {2, 4, 2, 16, 3, 0, 1.5f}, /* soft-capped scores (Gemma 2) */
    };
    for (auto s : shapes) {
        const int T = 9, Tmax = 12, C = s.NH * s.HD, W = s.NKV * s.HD;
        const int ld_all = s.fused ? C + 2 * W : 0;
        const int ldq = s.fused ? ld_all : C, ldk = s.fused ? ld_all : W, ldv = ldk;
        vec kc(s.B * Tmax * W, 0.0f), vc = kc, kg = kc, vg = kc;
        const int steps[] = {4, 1, 1, 3};
        int pos = 0;
        for (int Tq : steps) {
            const long rows = (long)s.B * Tq;
            vec q = uniform(rows * ldq, -2, 2), k = uniform(rows * ldk, -2, 2), v = uniform(rows * ldv, -2, 2);
            vec oc(rows * C), og(rows * C);
            CHECK_OK(fsdp_attention_decode_cpu(oc.data(), kc.data(), vc.data(), q.data(), k.data(), v.data(),
                                               s.B, Tq, pos, Tmax, s.NH, s.NKV, s.HD, ldq, ldk, ldv, s.window,
                                               0.3f, s.softcap), "decode cpu");
            CHECK_OK(fsdp_attention_decode_cuda(og.data(), kg.data(), vg.data(), q.data(), k.data(), v.data(),
                                                s.B, Tq, pos, Tmax, s.NH, s.NKV, s.HD, ldq, ldk, ldv, s.window,
                                                0.3f, s.softcap, nullptr), "decode cuda");
            CHECK(same_bits(og, oc),
                  "attention decode (B %d NH %d NKV %d HD %d window %d softcap %g, pos %d): bits differ", s.B, s.NH,
                  s.NKV, s.HD, s.window, (double)s.softcap, pos);
            CHECK(same_bits(kg, kc) && same_bits(vg, vc), "attention decode: the caches differ at pos %d", pos);
            pos += Tq;
        }
        (void)T;
    }
    vec o(8), kcache(8), vcache(8), x(8);
    int rc = fsdp_attention_decode_cuda(o.data(), kcache.data(), vcache.data(), x.data(), x.data(), x.data(), 1, 1,
                                        1, 1, 1, 1, 8, 8, 8, 8, 0, 1.0f, 0.0f, nullptr);
    CHECK(rc == FSDP_ERR_INVALID && strstr(fsdp_last_error(), "do not fit the cache"), "decode past the cache: %s",
          fsdp_last_error());
}


static void test_attention() {
    struct { int B, T, NH, NKV, HD, window, fused; float softcap; } shapes[] = {
        {2, 13, 4, 2, 16, 0, 0, 0.0f},  /* GQA */
        {1, 37, 3, 1, 40, 0, 1, 0.0f},  /* MQA, T > 32 keys, HD > 32, q/k/v slices of one qkv buffer */
        {2, 40, 2, 2, 8, 5, 0, 0.0f},   /* sliding window */
        {1, 1, 1, 1, 3, 0, 0, 0.0f},
        {2, 37, 4, 2, 16, 5, 0, 1.5f},  /* soft-capped scores (Gemma 2), with a window */
        {1, 13, 3, 1, 40, 0, 1, 2.0f},  /* soft-capped, packed qkv */
    };
    for (auto s : shapes) {
        const int C = s.NH * s.HD, CKV = s.NKV * s.HD;
        const long rows = (long)s.B * s.T;
        int ldq = C, ldk = CKV, ldv = CKV;
        vec qkv, qs, ks, vs;
        const float *q, *k, *v;
        if (s.fused) {  /* one [B, T, C + 2 CKV] buffer */
            ldq = ldk = ldv = C + 2 * CKV;
            qkv = uniform(rows * ldq, -2, 2);
            q = qkv.data(); k = qkv.data() + C; v = qkv.data() + C + CKV;
        } else {
            qs = uniform(rows * C, -2, 2); ks = uniform(rows * CKV, -2, 2); vs = uniform(rows * CKV, -2, 2);
            q = qs.data(); k = ks.data(); v = vs.data();
        }
        const float scale = 1.0f / sqrtf((float)s.HD);
        vec oc(rows * C), og(rows * C), lc((long)s.B * s.NH * s.T), lg(lc.size());
        CHECK_OK(fsdp_attention_forward_cpu(oc.data(), lc.data(), q, k, v, s.B, s.T, s.NH, s.NKV, s.HD, ldq,
                                            ldk, ldv, s.window, scale, s.softcap), "attention cpu");
        CHECK_OK(fsdp_attention_forward_f32_cuda(og.data(), lg.data(), q, k, v, s.B, s.T, s.NH, s.NKV, s.HD, ldq,
                                             ldk, ldv, s.window, scale, s.softcap, nullptr), "attention forward");
        CLOSE("attention out", og, oc, 1e-5, 1e-5);
        CLOSE("attention lse", lg, lc, 1e-5, 1e-5);

        /* gradients into their own buffers with the q/k/v strides, from random starts */
        vec dout = uniform(rows * C);
        const long nq = rows * ldq, nk = rows * ldk, nv = rows * ldv;
        vec dqc = uniform(nq), dkc = uniform(nk), dvc = uniform(nv), dqg = dqc, dkg = dkc, dvg = dvc;
        CHECK_OK(fsdp_attention_backward_cpu(dqc.data(), dkc.data(), dvc.data(), dout.data(), q, k, v,
                                             oc.data(), lc.data(), s.B, s.T, s.NH, s.NKV, s.HD, ldq, ldk,
                                             ldv, s.window, scale, s.softcap), "attention bwd cpu");
        CHECK_OK(fsdp_attention_backward_f32_cuda(dqg.data(), dkg.data(), dvg.data(), dout.data(), q, k, v,
                                              oc.data(), lc.data(), s.B, s.T, s.NH, s.NKV, s.HD, ldq, ldk,
                                              ldv, s.window, scale, s.softcap, nullptr), "attention backward");
        CLOSE("attention dq", dqg, dqc, 1e-4, 1e-5);
        CLOSE("attention dk", dkg, dkc, 1e-4, 1e-5);
        CLOSE("attention dv", dvg, dvc, 1e-4, 1e-5);
        /* dk alone (dq, dv NULL) gives the same dk increment */
        vec dk2 = uniform(nk), dk3 = dk2;
        CHECK_OK(fsdp_attention_backward_f32_cuda(nullptr, dk2.data(), nullptr, dout.data(), q, k, v, oc.data(),
                                              lc.data(), s.B, s.T, s.NH, s.NKV, s.HD, ldq, ldk, ldv,
                                              s.window, scale, s.softcap, nullptr), "attention dk only");
        CHECK_OK(fsdp_attention_backward_cpu(nullptr, dk3.data(), nullptr, dout.data(), q, k, v, oc.data(),
                                             lc.data(), s.B, s.T, s.NH, s.NKV, s.HD, ldq, ldk, ldv, s.window,
                                             scale, s.softcap), "attention dk only cpu");
        CLOSE("attention dk only", dk2, dk3, 1e-4, 1e-5);
    }
    vec z(1024);
    CHECK(fsdp_attention_forward_f32_cuda(z.data(), z.data(), z.data(), z.data(), z.data(), 1, 1, 1, 1, 300, 300,
                                      300, 300, 0, 1.0f, 0.0f, nullptr) == FSDP_ERR_INVALID, "HD 300 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_attention_forward_f32_cuda"), "message: %s", fsdp_last_error());
    CHECK(fsdp_attention_backward_f32_cuda(z.data(), nullptr, nullptr, z.data(), z.data(), z.data(), z.data(), z.data(),
                                           z.data(), 1, 1, 1, 1, 4, 4, 4, 4, 0, 1.0f, -1.0f, nullptr) == FSDP_ERR_INVALID &&
          strstr(fsdp_last_error(), "softcap"), "a negative softcap: %s", fsdp_last_error());
}

/* packed rows (several samples per row, positions restarting at 0): the
 * CUDA twin against the CPU kernel, forward and backward, with GQA, a
 * window, a sample longer than 32 keys and a one-token sample */
static void test_attention_packed() {
    struct { int B, T, NH, NKV, HD, window; float softcap; std::vector<int> lens; } cases[] = {
        {2, 13, 4, 2, 16, 0, 0.0f, {5, 1, 7, 13}},  /* row 0: 5+1+7, row 1: one sample */
        {1, 45, 3, 1, 40, 0, 0.0f, {37, 8}},        /* a sample past 32 keys */
        {2, 20, 2, 2, 8, 4, 0.0f, {6, 6, 8, 3, 17}}, /* a window inside samples */
        {2, 13, 4, 2, 16, 0, 1.5f, {5, 1, 7, 13}},  /* soft-capped scores */
    };
    for (auto &s : cases) {
        const int C = s.NH * s.HD, CKV = s.NKV * s.HD;
        const long rows = (long)s.B * s.T;
        std::vector<int32_t> pos(rows);
        size_t li = 0;
        for (int b = 0; b < s.B; b++) {
            int t = 0;
            while (t < s.T) {
                const int len = li < s.lens.size() ? s.lens[li++] : s.T - t;
                for (int i = 0; i < len && t < s.T; i++, t++) pos[(long)b * s.T + t] = i;
            }
        }
        CHECK_OK(fsdp_attention_positions_check_cpu(pos.data(), s.B, s.T), "positions of the case");
        vec qs = uniform(rows * C, -2, 2), ks = uniform(rows * CKV, -2, 2), vs = uniform(rows * CKV, -2, 2);
        const float scale = 1.0f / sqrtf((float)s.HD);
        vec oc(rows * C), og(rows * C), lc((long)s.B * s.NH * s.T), lg(lc.size());
        CHECK_OK(fsdp_attention_packed_forward_cpu(oc.data(), lc.data(), qs.data(), ks.data(), vs.data(), pos.data(),
                                                   s.B, s.T, s.NH, s.NKV, s.HD, C, CKV, CKV, s.window, scale,
                                                   s.softcap),
                 "packed cpu");
        CHECK_OK(fsdp_attention_packed_forward_cuda(og.data(), lg.data(), qs.data(), ks.data(), vs.data(),
                                                    pos.data(), s.B, s.T, s.NH, s.NKV, s.HD, C, CKV, CKV, s.window,
                                                    scale, s.softcap, nullptr), "packed forward");
        CLOSE("packed attention out", og, oc, 1e-5, 1e-5);
        CLOSE("packed attention lse", lg, lc, 1e-5, 1e-5);
        vec dout = uniform(rows * C);
        vec dqc = uniform(rows * C), dkc = uniform(rows * CKV), dvc = uniform(rows * CKV);
        vec dqg = dqc, dkg = dkc, dvg = dvc;
        CHECK_OK(fsdp_attention_packed_backward_cpu(dqc.data(), dkc.data(), dvc.data(), dout.data(), qs.data(),
                                                    ks.data(), vs.data(), oc.data(), lc.data(), pos.data(), s.B,
                                                    s.T, s.NH, s.NKV, s.HD, C, CKV, CKV, s.window, scale, s.softcap),
                 "packed bwd cpu");
        CHECK_OK(fsdp_attention_packed_backward_cuda(dqg.data(), dkg.data(), dvg.data(), dout.data(), qs.data(),
                                                     ks.data(), vs.data(), oc.data(), lc.data(), pos.data(), s.B,
                                                     s.T, s.NH, s.NKV, s.HD, C, CKV, CKV, s.window, scale, s.softcap,
                                                     nullptr),
                 "packed backward");
        CLOSE("packed attention dq", dqg, dqc, 1e-4, 1e-5);
        CLOSE("packed attention dk", dkg, dkc, 1e-4, 1e-5);
        CLOSE("packed attention dv", dvg, dvc, 1e-4, 1e-5);
    }
    std::vector<int32_t> bad = {0, 1, 3};
    CHECK(fsdp_attention_positions_check_cpu(bad.data(), 1, 3) == FSDP_ERR_INVALID, "positions 0 1 3 accepted");
    CHECK(strstr(fsdp_last_error(), "positions[0, 2] = 3"), "message: %s", fsdp_last_error());
    vec z(64);
    CHECK(fsdp_attention_packed_forward_cuda(z.data(), z.data(), z.data(), z.data(), z.data(), nullptr, 1, 1, 1, 1, 4,
                                             4, 4, 4, 0, 1.0f, 0.0f, nullptr) == FSDP_ERR_INVALID, "no positions accepted");
}

/* ---- mixture-of-experts routing (moe_cuda.cu) ------------------------------ */

/* the largest |a - b| seen per op (NaN in both at one place counts as equal),
 * printed at the end so the log shows how close each op came */
static struct { const char *op; double err; long n; } worst[32];
static double note(const char *op, const vec &a, const vec &b) {
    double e = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); i++)
        if (!(isnan(a[i]) && isnan(b[i])) && a[i] != b[i]) { /* equal infinities: 0 */
            double d = fabs((double)a[i] - (double)b[i]);
            e = d > e || isnan(d) ? d : e;
        }
    int k = 0;
    while (worst[k].op && strcmp(worst[k].op, op) != 0) k++;
    worst[k].op = op;
    worst[k].err = e > worst[k].err || isnan(e) ? e : worst[k].err;
    worst[k].n += (long)a.size();
    return e;
}
/* same NaN places, the rest within atol + rtol |b| */
#define CLOSE_NAN(what, a, b, rtol, atol)                                                  \
    do {                                                                                   \
        vec a_ = (a), b_ = (b);                                                            \
        note(what, a_, b_);                                                                \
        int nan_ok = a_.size() == b_.size();                                               \
        for (size_t i_ = 0; nan_ok && i_ < a_.size(); i_++) {                               \
            nan_ok = isnan(a_[i_]) == isnan(b_[i_]);                                       \
            if (isnan(a_[i_])) a_[i_] = b_[i_] = 0.0f;                                     \
        }                                                                                  \
        CHECK(nan_ok, "%s: NaN in different places", what);                                \
        CLOSE(what, a_, b_, rtol, atol);                                                   \
    } while (0)
#define BITS(what, a, b) do { note(what, a, b); CHECK_BITS(what, a, b); } while (0)

static void test_moe_rows() {
    /* ragged C; M > 256 (two chunks of staged indices); several rows per
     * owner slice (N = 5000) */
    struct { int M, N, C; } shapes[] = {{7, 5, 13}, {300, 40, 70}, {64, 1001, 13}, {1, 1, 1}, {33, 3, 40},
                                        {50, 5000, 3}};
    for (auto s : shapes) {
        const long mc = (long)s.M * s.C, nc = (long)s.N * s.C;
        vec inp = uniform(nc), src = uniform(mc);
        std::vector<int32_t> idx = ids(s.M, s.N); /* with repeats: M > N in most shapes */
        if (s.M > 5) idx[5] = idx[2];
        vec oc(mc), og(mc);
        CHECK_OK(fsdp_gather_rows_forward_cpu(oc.data(), inp.data(), idx.data(), s.M, s.N, s.C), "gather cpu");
        CHECK_OK(fsdp_gather_rows_forward_cuda(og.data(), inp.data(), idx.data(), s.M, s.N, s.C, nullptr),
                 "gather forward");
        BITS("gather_rows forward", og, oc);
        vec dc = uniform(nc), dg = dc;
        CHECK_OK(fsdp_gather_rows_backward_cpu(dc.data(), src.data(), idx.data(), s.M, s.N, s.C), "gather cpu");
        CHECK_OK(fsdp_gather_rows_backward_cuda(dg.data(), src.data(), idx.data(), s.M, s.N, s.C, nullptr),
                 "gather backward");
        BITS("gather_rows backward", dg, dc);
        vec sc = uniform(nc), sg = sc;
        CHECK_OK(fsdp_scatter_add_rows_forward_cpu(sc.data(), src.data(), idx.data(), s.M, s.N, s.C),
                 "scatter cpu");
        CHECK_OK(fsdp_scatter_add_rows_forward_cuda(sg.data(), src.data(), idx.data(), s.M, s.N, s.C, nullptr),
                 "scatter forward");
        BITS("scatter_add_rows forward", sg, sc);
        vec bc = uniform(mc), bg = bc;
        CHECK_OK(fsdp_scatter_add_rows_backward_cpu(bc.data(), inp.data(), idx.data(), s.M, s.N, s.C),
                 "scatter cpu");
        CHECK_OK(fsdp_scatter_add_rows_backward_cuda(bg.data(), inp.data(), idx.data(), s.M, s.N, s.C,
                                                     nullptr), "scatter backward");
        BITS("scatter_add_rows backward", bg, bc);
    }
    /* M = 0 and NULL gradients are no-ops */
    CHECK_OK(fsdp_gather_rows_forward_cuda(nullptr, nullptr, nullptr, 0, 3, 4, nullptr), "gather M = 0");
    vec x = uniform(12);
    std::vector<int32_t> one = {1};
    CHECK_OK(fsdp_gather_rows_backward_cuda(nullptr, x.data(), one.data(), 1, 3, 4, nullptr), "NULL dinp");
    CHECK_OK(fsdp_scatter_add_rows_backward_cuda(nullptr, x.data(), one.data(), 1, 3, 4, nullptr), "NULL dsrc");

    /* indices out of range (the caller's to prevent): nothing outside the
     * buffers is touched (ASan), the gathered row is NaN, adds are skipped */
    const int M = 4, N = 3, C = 5;
    std::vector<int32_t> bad = {2, -1, 3, 0};
    vec table = uniform(N * C), rows(M * C), grad = uniform(M * C), acc(N * C, 0.0f);
    CHECK_OK(fsdp_gather_rows_forward_cuda(rows.data(), table.data(), bad.data(), M, N, C, nullptr), "bad");
    int nan_rows = 0;
    for (int m = 0; m < M; m++) nan_rows += isnan(rows[m * C]) && isnan(rows[m * C + C - 1]);
    CHECK(nan_rows == 2 && rows[0] == table[2 * C] && rows[3 * C] == table[0], "bad ids: %d NaN rows", nan_rows);
    CHECK_OK(fsdp_gather_rows_backward_cuda(acc.data(), grad.data(), bad.data(), M, N, C, nullptr), "bad");
    CHECK(acc[2 * C] == grad[0] && acc[0] == grad[3 * C] && acc[C] == 0.0f, "bad ids: gather backward");
    vec base(N * C, 0.0f);
    CHECK_OK(fsdp_scatter_add_rows_forward_cuda(base.data(), grad.data(), bad.data(), M, N, C, nullptr), "bad");
    CHECK(base == acc, "bad ids: scatter forward differs from gather backward");
    vec ds(M * C, 1.0f);
    CHECK_OK(fsdp_scatter_add_rows_backward_cuda(ds.data(), table.data(), bad.data(), M, N, C, nullptr), "bad");
    CHECK(ds[C] == 1.0f && ds[2 * C] == 1.0f && ds[0] == 1.0f + table[2 * C], "bad ids: scatter backward");

    /* the CPU's argument errors, naming the kernel */
    CHECK(fsdp_gather_rows_forward_cuda(rows.data(), table.data(), bad.data(), M, 0, C, nullptr) ==
          FSDP_ERR_INVALID, "N = 0 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_gather_rows_forward_cuda"), "message: %s", fsdp_last_error());
    CHECK(fsdp_scatter_add_rows_forward_cuda(rows.data(), rows.data(), one.data(), 1, 1, C, nullptr) ==
          FSDP_ERR_INVALID, "out == src accepted");
    CHECK(fsdp_gather_rows_forward_cuda(rows.data(), table.data(), nullptr, 2, N, C, nullptr) ==
          FSDP_ERR_INVALID, "NULL idx accepted");
}

static void test_moe_softmax() {
    struct { int N, C; } shapes[] = {{7, 13}, {33, 8}, {3, 1000}, {2, 1}, {9, 64}};
    for (auto s : shapes) {
        const long nc = (long)s.N * s.C;
        vec x = uniform(nc, -8, 8);
        x[0] = -INFINITY;                     /* a masked column */
        if (s.C > 3) x[(long)s.C + 2] = NAN;  /* a NaN row (row 1): NaN everywhere, as on the CPU */
        vec oc(nc), og(nc);
        CHECK_OK(fsdp_softmax_forward_cpu(oc.data(), x.data(), s.N, s.C), "softmax cpu");
        CHECK_OK(fsdp_softmax_forward_cuda(og.data(), x.data(), s.N, s.C, nullptr), "softmax forward");
        CLOSE_NAN("softmax forward", og, oc, 1e-6, 1e-9);
        vec ip = x, ipc = x; /* in place */
        CHECK_OK(fsdp_softmax_forward_cuda(ip.data(), ip.data(), s.N, s.C, nullptr), "softmax in place");
        fsdp_softmax_forward_cpu(ipc.data(), ipc.data(), s.N, s.C);
        CLOSE_NAN("softmax forward", ip, ipc, 1e-6, 1e-9);
        vec dout = uniform(nc), dc = uniform(nc), dg = dc;
        CHECK_OK(fsdp_softmax_backward_cpu(dc.data(), dout.data(), oc.data(), s.N, s.C), "softmax cpu");
        CHECK_OK(fsdp_softmax_backward_cuda(dg.data(), dout.data(), oc.data(), s.N, s.C, nullptr),
                 "softmax backward");
        CLOSE_NAN("softmax backward", dg, dc, 1e-6, 1e-7);
        vec again = uniform(nc), again2 = again; /* deterministic */
        fsdp_softmax_backward_cuda(again.data(), dout.data(), oc.data(), s.N, s.C, nullptr);
        fsdp_softmax_backward_cuda(again2.data(), dout.data(), oc.data(), s.N, s.C, nullptr);
        CHECK_BITS("softmax backward twice", again, again2);
    }
    vec z(8);
    CHECK_OK(fsdp_softmax_backward_cuda(nullptr, z.data(), z.data(), 2, 4, nullptr), "NULL dinp");
    CHECK(fsdp_softmax_backward_cuda(z.data(), z.data(), z.data(), 2, 4, nullptr) == FSDP_ERR_INVALID,
          "dinp == dout accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_softmax_backward_cuda"), "message: %s", fsdp_last_error());
}

static void test_moe_row_scale() {
    struct { int N, C; } shapes[] = {{7, 13}, {33, 70}, {1, 1}, {4, 1000}};
    for (auto s : shapes) {
        const long nc = (long)s.N * s.C;
        vec x = uniform(nc), sc = uniform(s.N), oc(nc), og(nc);
        CHECK_OK(fsdp_row_scale_forward_cpu(oc.data(), x.data(), sc.data(), s.N, s.C), "row_scale cpu");
        CHECK_OK(fsdp_row_scale_forward_cuda(og.data(), x.data(), sc.data(), s.N, s.C, nullptr), "row_scale");
        BITS("row_scale forward", og, oc);
        vec dout = uniform(nc), dxc = uniform(nc), dsc = uniform(s.N), dxg = dxc, dsg = dsc;
        CHECK_OK(fsdp_row_scale_backward_cpu(dxc.data(), dsc.data(), dout.data(), x.data(), sc.data(), s.N,
                                             s.C), "row_scale cpu");
        CHECK_OK(fsdp_row_scale_backward_cuda(dxg.data(), dsg.data(), dout.data(), x.data(), sc.data(), s.N,
                                              s.C, nullptr), "row_scale backward");
        BITS("row_scale backward dinp", dxg, dxc);
        CLOSE_NAN("row_scale backward dscale", dsg, dsc, 1e-6, 1e-7);
        /* one gradient at a time */
        vec dx1 = dxc, ds1 = dsc, dx2 = dxc, ds2 = dsc;
        CHECK_OK(fsdp_row_scale_backward_cuda(dx1.data(), nullptr, dout.data(), nullptr, sc.data(), s.N, s.C,
                                              nullptr), "row_scale dinp only");
        CHECK_OK(fsdp_row_scale_backward_cpu(dx2.data(), nullptr, dout.data(), nullptr, sc.data(), s.N, s.C),
                 "row_scale cpu");
        BITS("row_scale backward dinp", dx1, dx2);
        CHECK_OK(fsdp_row_scale_backward_cuda(nullptr, ds1.data(), dout.data(), x.data(), nullptr, s.N, s.C,
                                              nullptr), "row_scale dscale only");
        CHECK_OK(fsdp_row_scale_backward_cpu(nullptr, ds2.data(), dout.data(), x.data(), nullptr, s.N, s.C),
                 "row_scale cpu");
        CLOSE_NAN("row_scale backward dscale", ds1, ds2, 1e-6, 1e-7);
    }
    vec z(8);
    CHECK(fsdp_row_scale_backward_cuda(z.data(), nullptr, z.data(), nullptr, nullptr, 2, 4, nullptr) ==
          FSDP_ERR_INVALID, "NULL scale accepted");
}

static void test_moe_topk() {
    struct { int N, C, K; } shapes[] = {{7, 13, 3}, {40, 8, 2}, {5, 100, 100}, {3, 70, 5}, {2, 1, 1}, {9, 33, 32}};
    for (auto s : shapes) {
        const long nc = (long)s.N * s.C, nk = (long)s.N * s.K;
        vec x = uniform(nc, -3, 3);
        for (auto &v : x) v = floorf(v * 2.0f) / 2.0f; /* many ties */
        for (long i = 0; i < nc; i += 7) x[i] = NAN;
        for (long i = 3; i < nc; i += 11) x[i] = (i / 11) % 2 ? -0.0f : 0.0f;
        for (long i = 5; i < nc; i += 13) x[i] = (i / 13) % 2 ? INFINITY : -INFINITY;
        vec vc(nk), vg(nk);
        std::vector<int32_t> ic(nk), ig(nk, -7);
        CHECK_OK(fsdp_topk_forward_cpu(vc.data(), ic.data(), x.data(), s.N, s.C, s.K), "topk cpu");
        CHECK_OK(fsdp_topk_forward_cuda(vg.data(), ig.data(), x.data(), s.N, s.C, s.K, nullptr), "topk forward");
        BITS("topk forward values", vg, vc);
        CHECK(ig == ic, "topk N%d C%d K%d: indices differ", s.N, s.C, s.K);
        /* gradient through the chosen columns, and through repeated ones */
        vec dv = uniform(nk), dc = uniform(nc), dg = dc;
        std::vector<int32_t> rep = ic;
        if (s.K > 1) rep[1] = rep[0];
        CHECK_OK(fsdp_topk_backward_cpu(dc.data(), dv.data(), rep.data(), s.N, s.C, s.K), "topk cpu");
        CHECK_OK(fsdp_topk_backward_cuda(dg.data(), dv.data(), rep.data(), s.N, s.C, s.K, nullptr),
                 "topk backward");
        BITS("topk backward", dg, dc);
    }
    /* the CPU's ordering rules, spelled out: NaN first, ties to the lower column */
    vec row = {1.0f, 5.0f, NAN, 5.0f, -0.0f, 0.0f};
    vec v(6);
    std::vector<int32_t> ix(6);
    CHECK_OK(fsdp_topk_forward_cuda(v.data(), ix.data(), row.data(), 1, 6, 6, nullptr), "topk rules");
    CHECK(ix == std::vector<int32_t>({2, 1, 3, 0, 4, 5}), "topk order %d %d %d %d %d %d", ix[0], ix[1], ix[2],
          ix[3], ix[4], ix[5]);
    vec z(8);
    std::vector<int32_t> zi(8);
    CHECK(fsdp_topk_forward_cuda(z.data(), zi.data(), z.data(), 2, 4, 5, nullptr) == FSDP_ERR_INVALID,
          "K > C accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_topk_forward_cuda"), "message: %s", fsdp_last_error());
    /* an index out of range is skipped (caller's to prevent) */
    vec d(8, 0.0f), g = {1, 2, 3, 4};
    std::vector<int32_t> badi = {0, 9, -1, 3};
    CHECK_OK(fsdp_topk_backward_cuda(d.data(), g.data(), badi.data(), 2, 4, 2, nullptr), "topk bad index");
    CHECK(d[0] == 1 && d[7] == 4 && d[1] + d[2] + d[3] + d[4] + d[5] + d[6] == 0, "topk bad index added");
}

/* ---- SIMT GEMM (gemm_cuda.cu) ---------------------------------------------- */

/* stored [rows, cols] -> [cols, rows] */
static vec transposed(const vec &x, int rows, int cols) {
    vec t(x.size());
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) t[(long)c * rows + r] = x[(long)r * cols + c];
    return t;
}

static void test_gemm_simt() {
    struct { int M, N, K; } shapes[] = {{70, 50, 40}, {1, 1, 1}, {17, 130, 3}, {130, 7, 33}, {5, 9, 200}};
    for (auto s : shapes) {
        const long na = (long)s.M * s.K, nb = (long)s.K * s.N, no = (long)s.M * s.N;
        const double tol = 2e-6 * sqrt((double)s.K); /* vs OpenBLAS: another summation order */
        vec a = uniform(na), b = uniform(nb), bias = uniform(s.N), dout = uniform(no);
        for (int t = 0; t < 4; t++) {
            const int ta = t & 1, tb = t >> 1;
            char what[80];
            snprintf(what, sizeof what, "simt gemm M%d N%d K%d ta%d tb%d", s.M, s.N, s.K, ta, tb);
            for (int mode = 0; mode < 3; mode++) { /* plain, + bias, accumulate + bias */
                const float *bp = mode ? bias.data() : nullptr;
                vec oc = uniform(no), og = oc;
                CHECK_OK(fsdp_matmul_forward_cpu(oc.data(), a.data(), b.data(), bp, s.M, s.N, s.K, ta, tb,
                                                 mode == 2), "matmul cpu");
                CHECK_OK(fsdp_matmul_forward_simt_cuda(og.data(), a.data(), b.data(), bp, s.M, s.N, s.K, ta, tb,
                                                       mode == 2, nullptr), what);
                note("matmul_forward_simt", og, oc);
                CLOSE(what, og, oc, tol, tol);
            }
            /* backward, accumulating into random gradients */
            vec dac = uniform(na), dbc = uniform(nb), dbiasc = uniform(s.N);
            vec dag = dac, dbg = dbc, dbiasg = dbiasc;
            CHECK_OK(fsdp_matmul_backward_cpu(dac.data(), dbc.data(), dbiasc.data(), dout.data(), a.data(),
                                              b.data(), s.M, s.N, s.K, ta, tb), "matmul bwd cpu");
            CHECK_OK(fsdp_matmul_backward_simt_cuda(dag.data(), dbg.data(), dbiasg.data(), dout.data(), a.data(),
                                                    b.data(), s.M, s.N, s.K, ta, tb, nullptr), what);
            const double tol_m = 2e-6 * sqrt((double)s.M), tol_n = 2e-6 * sqrt((double)s.N);
            note("matmul_backward_simt", dag, dac);
            note("matmul_backward_simt", dbg, dbc);
            note("matmul_backward_simt", dbiasg, dbiasc);
            CLOSE("simt gemm da", dag, dac, tol_n, tol_n);
            CLOSE("simt gemm db", dbg, dbc, tol_m, tol_m);
            CLOSE("simt gemm dbias", dbiasg, dbiasc, tol_m, tol_m);
            /* NULL gradients skipped: db alone gives the same db */
            vec db1 = uniform(nb), db2 = db1;
            CHECK_OK(fsdp_matmul_backward_simt_cuda(nullptr, db1.data(), nullptr, dout.data(), a.data(), nullptr,
                                                    s.M, s.N, s.K, ta, tb, nullptr), "db only");
            CHECK_OK(fsdp_matmul_backward_cpu(nullptr, db2.data(), nullptr, dout.data(), a.data(), nullptr, s.M,
                                              s.N, s.K, ta, tb), "db only cpu");
            CLOSE("simt gemm db only", db1, db2, tol_m, tol_m);
        }
        /* fixed order: a transposed operand or output changes no bit */
        vec o0(no), o1(no), o2(no);
        const vec at = transposed(a, s.M, s.K), bt = transposed(b, s.K, s.N);
        CHECK_OK(fsdp_matmul_forward_simt_cuda(o0.data(), a.data(), b.data(), bias.data(), s.M, s.N, s.K, 0, 0, 0,
                                               nullptr), "simt");
        CHECK_OK(fsdp_matmul_forward_simt_cuda(o1.data(), at.data(), bt.data(), bias.data(), s.M, s.N, s.K, 1, 1,
                                               0, nullptr), "simt");
        CHECK_OK(fsdp_matmul_forward_simt_cuda(o2.data(), a.data(), b.data(), bias.data(), s.M, s.N, s.K, 0, 0, 0,
                                               nullptr), "simt");
        CHECK_BITS("simt gemm, transposed operands", o1, o0);
        CHECK_BITS("simt gemm, run twice", o2, o0);
        vec da0(na, 0.0f), da1(na, 0.0f);
        CHECK_OK(fsdp_matmul_backward_simt_cuda(da0.data(), nullptr, nullptr, dout.data(), nullptr, b.data(), s.M,
                                                s.N, s.K, 0, 0, nullptr), "simt");
        CHECK_OK(fsdp_matmul_backward_simt_cuda(da1.data(), nullptr, nullptr, dout.data(), nullptr, b.data(), s.M,
                                                s.N, s.K, 1, 0, nullptr), "simt");
        CHECK_BITS("simt gemm, da stored transposed", transposed(da1, s.K, s.M), da0);
    }
    vec z(4);
    CHECK(fsdp_matmul_forward_simt_cuda(z.data(), z.data(), z.data(), nullptr, 2, 0, 2, 0, 0, 0, nullptr) ==
          FSDP_ERR_INVALID, "N = 0 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_matmul_forward_simt_cuda"), "message: %s", fsdp_last_error());
    CHECK(fsdp_matmul_backward_simt_cuda(z.data(), nullptr, nullptr, z.data(), z.data(), nullptr, 2, 2, 1, 0, 0,
                                         nullptr) == FSDP_ERR_INVALID, "da without b accepted");
}

/* ---- fill and sum ------------------------------------------------------------ */

static void test_fill() {
    const double values[] = {1.5, -3.0, 0.0, -0.0, 1e-9, 65504.0, 7.0, 3.3e38, 1e300, -200.7};
    const int dts[] = {FSDP_F32, FSDP_BF16, FSDP_F16, FSDP_I32, FSDP_I64, FSDP_U16, FSDP_U8};
    for (long n : {1L, 1000L, 4099L}) {
        const int64_t shape[1] = {n};
        for (int dt : dts) {
            const int es = fsdp_dtype_size(dt);
            fsdp_tensor *t = fsdp_tensor_new(dt, FSDP_CPU, 1, shape);
            CHECK(t != nullptr, "tensor: %s", fsdp_last_error());
            if (!t) continue;
            std::vector<uint8_t> g(n * es);
            for (double v : values) {
                const double lo = dt == FSDP_U16 || dt == FSDP_U8 ? -1.0 : -2147483649.0;
                const double hi = dt == FSDP_U8 ? 256.0 : dt == FSDP_U16 ? 65536.0 : 2147483648.0;
                if (dt >= FSDP_I32 && !(v > lo && v < hi)) continue; /* refused: see below */
                memset(g.data(), 0xa5, g.size());
                CHECK_OK(fsdp_tensor_fill(t, v), "cpu fill");
                CHECK_OK(fsdp_fill_cuda(g.data(), dt, v, n, nullptr), "fill");
                CHECK(memcmp(g.data(), t->data, n * es) == 0, "fill %s n=%ld with %g: bytes differ",
                      fsdp_dtype_name(dt), n, v);
            }
            fsdp_tensor_free(t);
        }
    }
    /* past the 1024-block grid: the block-stride loop */
    const long big = 1024L * 256 + 1000;
    vec f(big, 0.0f);
    CHECK_OK(fsdp_fill_cuda(f.data(), FSDP_F32, 0.25, big, nullptr), "fill big");
    long wrong = 0;
    for (float v : f) wrong += v != 0.25f;
    CHECK(wrong == 0, "fill big: %ld elements not set", wrong);
    int32_t i4[2] = {5, 5};
    CHECK_OK(fsdp_fill_cuda(i4, FSDP_I32, 1, 0, nullptr), "fill n = 0");
    CHECK(i4[0] == 5, "n = 0 wrote");
    CHECK(fsdp_fill_cuda(i4, FSDP_I32, 3e9, 2, nullptr) == FSDP_ERR_INVALID, "i32 3e9 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_fill_cuda"), "message: %s", fsdp_last_error());
    CHECK(fsdp_fill_cuda(i4, FSDP_U8, -1.0, 2, nullptr) == FSDP_ERR_INVALID, "u8 -1 accepted");
    CHECK(fsdp_fill_cuda(i4, FSDP_I32, NAN, 2, nullptr) == FSDP_ERR_INVALID, "i32 NaN accepted");
    CHECK(fsdp_fill_cuda(i4, 42, 1.0, 2, nullptr) == FSDP_ERR_INVALID, "dtype 42 accepted");
    CHECK(fsdp_fill_cuda(i4, FSDP_I32, 1.0, -1, nullptr) == FSDP_ERR_INVALID, "n < 0 accepted");
    CHECK(i4[0] == 5 && i4[1] == 5, "a refused fill wrote");
}

static void test_sum() {
    for (long n : {0L, 1L, 1001L, 300001L}) {
        vec x = uniform(n, -2, 3);
        double want = 0, mag = 0;
        for (float v : x) { want += v; mag += fabs(v); }
        float out = -1, again = -2;
        CHECK_OK(fsdp_sum_cuda(&out, x.data(), n, nullptr), "sum");
        if (n < 300000) { /* (the large case takes seconds under the emulation) */
            CHECK_OK(fsdp_sum_cuda(&again, x.data(), n, nullptr), "sum");
            CHECK(again == out, "sum not deterministic");
        }
        /* both sums in double: they round to the same float but for ties */
        CHECK(fabs(out - want) <= 0.5 * fabs(want) * 1.2e-7 + 1e-13 * mag, "sum n=%ld: %.9g vs %.17g", n,
              out, want);
        vec a = {out}, b = {(float)want};
        note("sum", a, b);
    }
    vec x = uniform(5000);
    x[4321] = INFINITY;
    float out = 0;
    CHECK_OK(fsdp_sum_cuda(&out, x.data(), 5000, nullptr), "sum inf");
    CHECK(isinf(out), "sum lost an inf: %g", out);
    x[17] = NAN;
    CHECK_OK(fsdp_sum_cuda(&out, x.data(), 5000, nullptr), "sum NaN");
    CHECK(isnan(out), "sum lost a NaN: %g", out);
    CHECK(fsdp_sum_cuda(nullptr, x.data(), 5, nullptr) == FSDP_ERR_INVALID, "NULL out accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_sum_cuda"), "message: %s", fsdp_last_error());
}

int main() {
    fsdp_rng_seed(&rng, 20240611);
    test_activation("gelu", fsdp_gelu_forward_cpu, fsdp_gelu_forward_cuda, fsdp_gelu_backward_cpu,
                    fsdp_gelu_backward_cuda);
    test_activation("relu", fsdp_relu_forward_cpu, fsdp_relu_forward_cuda, fsdp_relu_backward_cpu,
                    fsdp_relu_backward_cuda);
    test_activation("silu", fsdp_silu_forward_cpu, fsdp_silu_forward_cuda, fsdp_silu_backward_cpu,
                    fsdp_silu_backward_cuda);
    test_swiglu();
    test_elementwise();
    test_lora_dropout();
    test_cast();
    test_embedding();
    test_layernorm();
    test_rmsnorm();
    test_rope();
    test_crossentropy();
    test_adamw();
    test_sumsq();
    test_bias_backward();
    test_attention();
    test_attention_packed();
    test_attention_decode();
    test_moe_rows();
    test_moe_softmax();
    test_moe_row_scale();
    test_moe_topk();
    test_gemm_simt();
    test_fill();
    test_sum();
    for (int k = 0; worst[k].op; k++)
        printf("%-28s max |gpu - cpu| = %.3g over %ld values\n", worst[k].op, worst[k].err, worst[k].n);
    CHECK(fsdp_emu::failures == 0, "the emulator reported %d races or deadlocks", fsdp_emu::failures);
    return check_exit("test_cuda_emu_kernels");
}
