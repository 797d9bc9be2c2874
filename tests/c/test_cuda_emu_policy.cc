/* test_cuda_emu_policy.cc - the CUDA backend's compute-dtype policy
 * (engine/cuda/policy_cuda.cu) on the emulated backend: linked against
 * build/libfsdp_cuda_emu.so, so the calls are the ones Lua makes, on device
 * memory the host can only reach through copies. The emulated cuBLASLt is
 * our SIMT GEMM (bf16/f16 widened exactly, the result rounded once) and the
 * emulated cuDNN declines every shape; two test hooks of the emulation make
 * cuBLASLt decline a chosen shape and count the library calls.
 *
 * What must hold:
 *   - compute dtype bf16 (f16): a GEMM's result is the f32 GEMM of the
 *     operands rounded to bf16 (f16), rounded once and widened; its
 *     gradients likewise, added into the f32 ones; the bias gradient stays
 *     f32; and the result is visibly not the f32 GEMM of the f32 operands;
 *   - a shape cuBLASLt declines falls back (f32: the SIMT kernel; bf16: the
 *     f32 path), every gradient added exactly once, no error left behind;
 *   - attention with a window runs the f32 kernel without asking cuDNN;
 *   - a shape cuDNN declines runs the f32 kernel (same bits) and is cached:
 *     its backward and later forwards do not ask cuDNN again, per shape and
 *     dtype; clearing the cache asks again;
 *   - bad arguments and a bad compute dtype are errors naming the call;
 * and the counter of host synchronisations (fsdp_cuda_sync_count): reads
 * and synchronize calls count one each, uploads, device-to-device copies,
 * copies into pinned memory and kernel launches none. */
#include <stdint.h>
#include <string.h>
#include <string>
#include <vector>
#include "fsdp.h"
#include "check.h"

/* test hooks of the emulated backend (tests/cuda/emu/emu_backend.cc) */
extern "C" void fsdp_emu_refuse_gemm(int M, int N, int K);
extern "C" void fsdp_emu_library_calls(int64_t *gemm, int64_t *attention);

namespace {

fsdp_rng rng;
typedef std::vector<float> vec;

vec uniform(size_t n, float lo = -1, float hi = 1) {
    vec v(n);
    fsdp_rng_fill_uniform(&rng, v.data(), (int64_t)n, lo, hi);
    return v;
}

/* x rounded to dtype and back (bf16/f16 values as f32) */
vec rounded(const vec &x, int dtype) {
    std::vector<uint16_t> h(x.size());
    vec r(x.size());
    fsdp_cast_cpu(h.data(), dtype, x.data(), FSDP_F32, (int64_t)x.size());
    fsdp_cast_cpu(r.data(), FSDP_F32, h.data(), dtype, (int64_t)x.size());
    return r;
}

/* device memory holding a copy of x (freed with the object) */
struct dev {
    float *p = nullptr;
    size_t n;
    explicit dev(const vec &x) : n(x.size()) {
        p = (float *)fsdp_cuda_alloc(0, (int64_t)(n ? n : 1) * 4, nullptr);
        CHECK(p, "device alloc: %s", fsdp_last_error());
        if (p && n) CHECK(fsdp_cuda_memcpy(p, x.data(), (int64_t)n * 4, nullptr) == FSDP_OK, "upload");
    }
    ~dev() { fsdp_cuda_free(p); }
    dev(const dev &) = delete;
    vec get() const {
        vec h(n);
        CHECK(fsdp_cuda_memcpy(h.data(), p, (int64_t)n * 4, nullptr) == FSDP_OK, "download: %s", fsdp_last_error());
        CHECK(fsdp_cuda_stream_synchronize(nullptr) == FSDP_OK, "sync");
        return h;
    }
};

int64_t gemm_calls() {
    int64_t g = 0;
    fsdp_emu_library_calls(&g, nullptr);
    return g;
}
int64_t cudnn_calls() {
    int64_t a = 0;
    fsdp_emu_library_calls(nullptr, &a);
    return a;
}

double max_rel(const vec &a, const vec &b) {
    double d = 0, s = 1e-12;
    for (size_t i = 0; i < a.size(); i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return d / s;
}

bool same_bits(const vec &a, const vec &b) { return a.size() == b.size() && !memcmp(a.data(), b.data(), 4 * a.size()); }

vec sub(const vec &a, const vec &b) {
    vec r(a.size());
    for (size_t i = 0; i < a.size(); i++) r[i] = a[i] - b[i];
    return r;
}

/* ---- GEMM ------------------------------------------------------------------- */

/* forward (accumulating into init) and backward of a Linear-shaped GEMM
 * (b stored [N, K]) in compute dtype dt, against the CPU */
void gemm_case(int dt, int M, int N, int K, bool refused) {
    const char *dn = fsdp_dtype_name(dt);
    vec a = uniform((size_t)M * K), b = uniform((size_t)N * K), bias = uniform(N), dout = uniform((size_t)M * N);
    vec init = uniform((size_t)M * N), ga0 = uniform((size_t)M * K), gb0 = uniform((size_t)N * K), gbias0 = uniform(N);
    /* what the math sees: the operands in the compute dtype (f32 when cuBLASLt declines the shape) */
    const int seen = refused ? FSDP_F32 : dt;
    vec ar = seen == FSDP_F32 ? a : rounded(a, dt), br = seen == FSDP_F32 ? b : rounded(b, dt);
    vec biasr = seen == FSDP_F32 ? bias : rounded(bias, dt), doutr = seen == FSDP_F32 ? dout : rounded(dout, dt);
    vec ref((size_t)M * N), exact((size_t)M * N);
    fsdp_matmul_forward_cpu(ref.data(), ar.data(), br.data(), biasr.data(), M, N, K, 0, 1, 0);
    fsdp_matmul_forward_cpu(exact.data(), a.data(), b.data(), bias.data(), M, N, K, 0, 1, 0);
    vec ga((size_t)M * K), gb((size_t)N * K), gbias(N);
    fsdp_matmul_backward_cpu(ga.data(), gb.data(), nullptr, doutr.data(), ar.data(), br.data(), M, N, K, 0, 1);
    fsdp_matmul_backward_cpu(nullptr, nullptr, gbias.data(), dout.data(), nullptr, nullptr, M, N, K, 0, 1);
    if (seen != FSDP_F32) { /* cuBLASLt writes its result in the dtype: one more rounding */
        ref = rounded(ref, dt);
        ga = rounded(ga, dt);
        gb = rounded(gb, dt);
    }

    CHECK(fsdp_cuda_set_compute_dtype(dt) == FSDP_OK, "set %s: %s", dn, fsdp_last_error());
    fsdp_emu_refuse_gemm(refused ? M : -1, refused ? N : -1, refused ? K : -1);
    dev da(a), db(b), dbias(bias), ddout(dout), dout_acc(init), dga(ga0), dgb(gb0), dgbias(gbias0);
    const int64_t calls0 = gemm_calls();
    fsdp_clear_error();
    CHECK(fsdp_matmul_forward_cuda(dout_acc.p, da.p, db.p, dbias.p, M, N, K, 0, 1, 1, nullptr) == FSDP_OK,
          "%s forward: %s", dn, fsdp_last_error());
    CHECK(fsdp_matmul_backward_cuda(dga.p, dgb.p, dgbias.p, ddout.p, da.p, db.p, M, N, K, 0, 1, nullptr) == FSDP_OK,
          "%s backward: %s", dn, fsdp_last_error());
    /* cuBLASLt was asked (forward, da, db), and a fallback leaves no error behind */
    CHECK(gemm_calls() - calls0 == (refused && dt != FSDP_F32 ? 6 : 3), "%s: %lld cuBLASLt calls", dn,
          (long long)(gemm_calls() - calls0));
    CHECK(!*fsdp_last_error(), "%s: an error was left behind: %s", dn, fsdp_last_error());
    fsdp_emu_refuse_gemm(-1, -1, -1);

    /* what was added, against the reference: one rounding of the output
     * apart at most (the sums run in another order, so a rounding can flip) */
    const double tol = seen == FSDP_F32 ? 1e-5 : dt == FSDP_BF16 ? 1.0 / 64 : 1.0 / 512;
    vec got = sub(dout_acc.get(), init), got_a = sub(dga.get(), ga0), got_b = sub(dgb.get(), gb0);
    vec got_bias = sub(dgbias.get(), gbias0);
    char what[96];
    snprintf(what, sizeof what, "%s M%d N%d K%d%s: out", dn, M, N, K, refused ? " declined" : "");
    CHECK_CLOSE(what, got.data(), ref.data(), (long)ref.size(), tol, 1e-5);
    snprintf(what, sizeof what, "%s M%d N%d K%d%s: da", dn, M, N, K, refused ? " declined" : "");
    CHECK_CLOSE(what, got_a.data(), ga.data(), (long)ga.size(), tol, 1e-5);
    snprintf(what, sizeof what, "%s M%d N%d K%d%s: db", dn, M, N, K, refused ? " declined" : "");
    CHECK_CLOSE(what, got_b.data(), gb.data(), (long)gb.size(), tol, 1e-5);
    snprintf(what, sizeof what, "%s M%d N%d K%d: dbias in f32", dn, M, N, K);
    CHECK_CLOSE(what, got_bias.data(), gbias.data(), N, 1e-5, 1e-5);
    /* in bf16/f16 the result is not the f32 GEMM of the f32 operands (the
     * rounding happened); in f32 it is */
    const double off = max_rel(got, exact);
    if (seen == FSDP_F32) CHECK(off < 1e-5, "%s%s: f32 GEMM off by %.3g", dn, refused ? " declined" : "", off);
    else CHECK(off > (dt == FSDP_BF16 ? 5e-4 : 5e-5), "%s: the result equals the f32 GEMM (off by %.3g): "
               "no rounding to the compute dtype", dn, off);
    printf("gemm %s M%d N%d K%d%s: %lld cuBLASLt calls, %.3g from the f32 GEMM of the f32 operands\n", dn, M, N, K,
           refused ? " (declined: fallback)" : "", (long long)(gemm_calls() - calls0), off);
}

void test_gemm() {
    for (int dt : {FSDP_F32, FSDP_BF16, FSDP_F16}) gemm_case(dt, 37, 24, 19, false);
    gemm_case(FSDP_F32, 33, 21, 16, true);   /* declined: the SIMT kernel */
    gemm_case(FSDP_BF16, 33, 21, 16, true);  /* declined in bf16: the f32 path */
    fsdp_cuda_set_compute_dtype(FSDP_F32);
}

/* ---- attention ------------------------------------------------------------------ */

struct att_shape { int B, T, NH, NKV, HD, ldq, ldk, ldv; };

/* forward + backward through the policy and through the f32 kernel on the
 * same inputs; the results must be the same bits (the f32 kernel ran) */
void attention_f32_equal(const char *what, const att_shape &s, int window, float softcap = 0.0f) {
    const size_t nq = (size_t)s.B * s.T * s.ldq, nk = (size_t)s.B * s.T * s.ldk, nv = (size_t)s.B * s.T * s.ldv;
    const size_t no = (size_t)s.B * s.T * s.NH * s.HD, nl = (size_t)s.B * s.NH * s.T;
    vec q = uniform(nq), k = uniform(nk), v = uniform(nv), dout = uniform(no);
    const float scale = 1.0f / sqrtf((float)s.HD);
    vec outs[2], grads[2][3];
    for (int pass = 0; pass < 2; pass++) { /* 0: the policy, 1: the f32 kernel */
        dev dq_(q), dk_(k), dv_(v), ddout(dout), dres{vec(no)}, dlse{vec(nl)};
        dev gq{vec(nq, 0.0f)}, gk{vec(nk, 0.0f)}, gv{vec(nv, 0.0f)};
        int rc = pass == 0 ? fsdp_attention_forward_cuda(dres.p, dlse.p, dq_.p, dk_.p, dv_.p, s.B, s.T, s.NH, s.NKV,
                                                         s.HD, s.ldq, s.ldk, s.ldv, window, scale, softcap, nullptr)
                           : fsdp_attention_forward_f32_cuda(dres.p, dlse.p, dq_.p, dk_.p, dv_.p, s.B, s.T, s.NH,
                                                             s.NKV, s.HD, s.ldq, s.ldk, s.ldv, window, scale, softcap,
                                                             nullptr);
        CHECK(rc == FSDP_OK, "%s forward (%s): %s", what, pass ? "f32 kernel" : "policy", fsdp_last_error());
        rc = pass == 0 ? fsdp_attention_backward_cuda(gq.p, gk.p, gv.p, ddout.p, dq_.p, dk_.p, dv_.p, dres.p, dlse.p,
                                                      s.B, s.T, s.NH, s.NKV, s.HD, s.ldq, s.ldk, s.ldv, window, scale,
                                                      softcap, nullptr)
                       : fsdp_attention_backward_f32_cuda(gq.p, gk.p, gv.p, ddout.p, dq_.p, dk_.p, dv_.p, dres.p,
                                                          dlse.p, s.B, s.T, s.NH, s.NKV, s.HD, s.ldq, s.ldk, s.ldv,
                                                          window, scale, softcap, nullptr);
        CHECK(rc == FSDP_OK, "%s backward (%s): %s", what, pass ? "f32 kernel" : "policy", fsdp_last_error());
        outs[pass] = dres.get();
        grads[pass][0] = gq.get();
        grads[pass][1] = gk.get();
        grads[pass][2] = gv.get();
    }
    CHECK(same_bits(outs[0], outs[1]), "%s: forward is not the f32 kernel's", what);
    for (int i = 0; i < 3; i++)
        CHECK(same_bits(grads[0][i], grads[1][i]), "%s: gradient %d is not the f32 kernel's", what, i);
    /* and the f32 kernel is the CPU's attention */
    vec cpu(no), lse(nl);
    fsdp_attention_forward_cpu(cpu.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.NH, s.NKV, s.HD,
                               s.ldq, s.ldk, s.ldv, window, scale, softcap);
    CHECK(max_rel(outs[0], cpu) < 1e-5, "%s: differs from the CPU by %.3g", what, max_rel(outs[0], cpu));
}

void test_attention() {
    const att_shape gqa = {2, 9, 4, 2, 8, 32, 16, 16}, packed = {1, 7, 2, 2, 16, 96, 96, 96};
    fsdp_cuda_clear_declined_shapes();
    CHECK(fsdp_cuda_declined_shapes() == 0, "declined cache not empty after clearing");

    /* f32 compute: cuDNN is never asked */
    fsdp_cuda_set_compute_dtype(FSDP_F32);
    int64_t c0 = cudnn_calls();
    attention_f32_equal("f32 compute", gqa, 0);
    CHECK(cudnn_calls() == c0, "f32 compute asked cuDNN %lld times", (long long)(cudnn_calls() - c0));

    /* bf16 with a window: the f32 kernel, cuDNN not asked, nothing cached */
    fsdp_cuda_set_compute_dtype(FSDP_BF16);
    c0 = cudnn_calls();
    attention_f32_equal("bf16, window 3", gqa, 3);
    attention_f32_equal("bf16, soft-capped scores (cuDNN skipped)", gqa, 0, 2.0f);
    CHECK(cudnn_calls() == c0, "a window asked cuDNN %lld times", (long long)(cudnn_calls() - c0));
    CHECK(fsdp_cuda_declined_shapes() == 0, "a window put %lld shapes in the declined cache",
          (long long)fsdp_cuda_declined_shapes());

    /* bf16, no window: cuDNN asked once (forward), declines, the shape is
     * cached: the backward and the second forward go straight to the f32 kernel */
    c0 = cudnn_calls();
    attention_f32_equal("bf16, cuDNN declines", gqa, 0);
    CHECK(cudnn_calls() - c0 == 1, "cuDNN asked %lld times for one declined shape (want 1)",
          (long long)(cudnn_calls() - c0));
    CHECK(fsdp_cuda_declined_shapes() == 1, "declined cache holds %lld shapes, want 1",
          (long long)fsdp_cuda_declined_shapes());
    CHECK(!*fsdp_last_error(), "the declined call left an error behind: %s", fsdp_last_error());
    c0 = cudnn_calls();
    attention_f32_equal("bf16, declined before", gqa, 0);
    CHECK(cudnn_calls() == c0, "a cached shape asked cuDNN again");

    /* another shape (a packed qkv's strides), or another dtype: asked once more each */
    c0 = cudnn_calls();
    attention_f32_equal("bf16, packed qkv", packed, 0);
    fsdp_cuda_set_compute_dtype(FSDP_F16);
    attention_f32_equal("f16", gqa, 0);
    CHECK(cudnn_calls() - c0 == 2, "two new keys asked cuDNN %lld times (want 2)", (long long)(cudnn_calls() - c0));
    CHECK(fsdp_cuda_declined_shapes() == 3, "declined cache holds %lld shapes, want 3",
          (long long)fsdp_cuda_declined_shapes());

    /* forgetting asks again */
    fsdp_cuda_clear_declined_shapes();
    c0 = cudnn_calls();
    attention_f32_equal("f16 after clearing", gqa, 0);
    CHECK(cudnn_calls() - c0 == 1, "after clearing, cuDNN asked %lld times (want 1)", (long long)(cudnn_calls() - c0));
    fsdp_cuda_clear_declined_shapes();
    fsdp_cuda_set_compute_dtype(FSDP_F32);
    printf("attention: window and f32 compute never ask cuDNN; a declined shape is asked once per dtype\n");
}

/* the policy adds 16-bit gradients into f32 ones with fsdp_cast_add_cuda:
 * the bits of a cast to f32 then an axpy with alpha 1 */
void test_cast_add() {
    for (int dt : {FSDP_BF16, FSDP_F16}) {
        const int n = 1031;
        vec y = uniform(n), src = uniform(n, -3, 3);
        std::vector<uint16_t> h16(n);
        fsdp_cast_cpu(h16.data(), dt, src.data(), FSDP_F32, n);
        dev a(y), b(y), wide{vec(n)}, half{vec(n / 2 + 1)};
        CHECK(fsdp_cuda_memcpy(half.p, h16.data(), 2 * n, nullptr) == FSDP_OK, "upload");
        CHECK(fsdp_cast_cuda(wide.p, FSDP_F32, half.p, dt, n, nullptr) == FSDP_OK, "cast: %s", fsdp_last_error());
        CHECK(fsdp_axpy_cuda(a.p, 1.0f, wide.p, n, nullptr) == FSDP_OK, "axpy: %s", fsdp_last_error());
        CHECK(fsdp_cast_add_cuda(b.p, half.p, dt, n, nullptr) == FSDP_OK, "cast_add: %s", fsdp_last_error());
        CHECK(same_bits(a.get(), b.get()), "%s: cast_add differs from cast + axpy", fsdp_dtype_name(dt));
        CHECK(!same_bits(b.get(), y), "%s: cast_add added nothing", fsdp_dtype_name(dt));
    }
    dev z{vec(4)};
    CHECK(fsdp_cast_add_cuda(z.p, z.p, FSDP_I32, 4, nullptr) == FSDP_ERR_INVALID, "cast_add from i32 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_cast_add_cuda"), "message: %s", fsdp_last_error());
}

/* ---- host synchronisations, counted ---------------------------------------------- */

void test_sync_counts() {
    vec x = uniform(64);
    dev d(x), e{vec(64, 0.0f)};
    vec h(64);
    float *pinned = (float *)fsdp_cuda_host_alloc(64 * 4);
    fsdp_event ev = nullptr;
    CHECK(fsdp_cuda_event_create(&ev, 0) == FSDP_OK, "event: %s", fsdp_last_error());
    struct step { const char *what; int64_t want; } steps[] = {
        {"upload (host -> device)", 0}, {"device -> device", 0}, {"device -> pinned host", 0},
        {"device -> pageable host", 1}, {"fsdp_cuda_read", 1}, {"stream synchronize", 1},
        {"device synchronize", 1}, {"event synchronize", 1}, {"event query", 0}, {"kernel launch", 0}};
    for (const step &st : steps) {
        const int64_t c0 = fsdp_cuda_sync_count(), u0 = fsdp_cuda_upload_sync_count();
        int rc = FSDP_OK, done = 0;
        const std::string w = st.what;
        if (w == "upload (host -> device)") rc = fsdp_cuda_memcpy(e.p, x.data(), 256, nullptr);
        else if (w == "device -> device") rc = fsdp_cuda_memcpy(e.p, d.p, 256, nullptr);
        else if (w == "device -> pinned host") rc = fsdp_cuda_memcpy(pinned, d.p, 256, nullptr);
        else if (w == "device -> pageable host") rc = fsdp_cuda_memcpy(h.data(), d.p, 256, nullptr);
        else if (w == "fsdp_cuda_read") rc = fsdp_cuda_read(h.data(), d.p, 256, nullptr);
        else if (w == "stream synchronize") rc = fsdp_cuda_stream_synchronize(nullptr);
        else if (w == "device synchronize") rc = fsdp_cuda_synchronize();
        else if (w == "event synchronize") rc = fsdp_cuda_event_record(ev, nullptr) || fsdp_cuda_event_synchronize(ev);
        else if (w == "event query") rc = fsdp_cuda_event_record(ev, nullptr) || fsdp_cuda_event_query(ev, &done);
        else rc = fsdp_scale_cuda(e.p, 2.0f, d.p, 64, nullptr);
        CHECK(rc == FSDP_OK, "%s: %s", st.what, fsdp_last_error());
        CHECK(fsdp_cuda_sync_count() - c0 == st.want, "%s counted %lld host synchronisations, want %lld", st.what,
              (long long)(fsdp_cuda_sync_count() - c0), (long long)st.want);
        CHECK(fsdp_cuda_upload_sync_count() == u0, "%s counted an upload", st.what);
    }
    CHECK(!memcmp(h.data(), x.data(), 256), "fsdp_cuda_read read other bytes");
    CHECK(fsdp_cuda_read(h.data(), nullptr, 4, nullptr) == FSDP_ERR_INVALID, "a NULL source read");
    fsdp_cuda_event_destroy(ev);
    fsdp_cuda_host_free(pinned);
    printf("sync counts: reads and synchronize calls count one each; uploads, device copies, copies into pinned "
           "memory and launches none\n");
}

/* ---- errors ------------------------------------------------------------------------ */

void test_errors() {
    CHECK(fsdp_cuda_get_compute_dtype() == FSDP_F32, "compute dtype is not f32 by default");
    CHECK(fsdp_cuda_set_compute_dtype(FSDP_I32) == FSDP_ERR_INVALID, "compute dtype i32 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_cuda_set_compute_dtype") && strstr(fsdp_last_error(), "i32"),
          "message: %s", fsdp_last_error());
    CHECK(fsdp_cuda_get_compute_dtype() == FSDP_F32, "a refused compute dtype changed it");
    dev z{vec(16, 0.0f)};
    for (int dt : {FSDP_F32, FSDP_BF16}) {
        fsdp_cuda_set_compute_dtype(dt);
        CHECK(fsdp_matmul_forward_cuda(z.p, z.p, z.p, nullptr, 2, 0, 2, 0, 0, 0, nullptr) == FSDP_ERR_INVALID,
              "N = 0 accepted");
        CHECK(strstr(fsdp_last_error(), "fsdp_matmul_forward_cuda"), "message: %s", fsdp_last_error());
        CHECK(fsdp_matmul_backward_cuda(z.p, nullptr, nullptr, z.p, z.p, nullptr, 2, 2, 1, 0, 0, nullptr) ==
                  FSDP_ERR_INVALID, "da without b accepted");
        CHECK(strstr(fsdp_last_error(), "fsdp_matmul_backward_cuda"), "message: %s", fsdp_last_error());
        CHECK(fsdp_attention_forward_cuda(z.p, z.p, z.p, z.p, z.p, 1, 1, 1, 1, 300, 300, 300, 300, 0, 1.0f,
                                          0.0f, nullptr) == FSDP_ERR_INVALID, "HD 300 accepted");
        CHECK(strstr(fsdp_last_error(), "HD"), "message: %s", fsdp_last_error());
    }
    fsdp_cuda_set_compute_dtype(FSDP_F32);
}

}  // namespace

int main() {
    fsdp_rng_seed(&rng, 11);
    CHECK(fsdp_cuda_is_emulated() == 1, "not the emulated backend");
    CHECK(fsdp_cuda_set_device(0) == FSDP_OK, "set device: %s", fsdp_last_error());
    test_errors();
    test_gemm();
    test_attention();
    test_cast_add();
    test_sync_counts();
    return check_exit("test_cuda_emu_policy");
}
