/* policy_cuda.cu - the compute-dtype policy of the CUDA backend: GEMM and
 * attention with exactly the CPU kernels' arguments plus the stream, so
 * that every op X of fsdp.kernels maps to fsdp_X_cuda(<CPU args>, stream).
 *
 * Tensors stay f32 between ops. The compute dtype (fsdp_cuda_set_compute_
 * dtype; f32 by default) decides what the math runs in:
 *
 *   matmul     f32:  cuBLASLt in f32 -> our SIMT kernel if cuBLASLt declines
 *              bf16/f16: operands rounded into scratch, cuBLASLt in that
 *                    dtype (f32 accumulation, result rounded once), widened
 *                    back (= or += for forward, += for gradients); a call
 *                    cuBLASLt declines in that dtype runs the f32 path
 *   attention  f32, or a window:   our f32 kernel
 *              bf16/f16, no window: cuDNN's flash SDPA in that dtype; a
 *                    shape cuDNN declines goes to the f32 kernel and is
 *                    remembered, so its backward and later calls do not ask
 *                    again
 *
 * Backward computes each gradient on its own (da, then db, then dbias), so
 * a gradient cuBLASLt declines is recomputed by the fallback without adding
 * any other gradient twice. Scratch comes from the caching device allocator
 * on the caller's stream: freeing it right after queueing the kernels that
 * use it is safe (the next use of the block is queued after them). */
#include <mutex>
#include <set>
#include <tuple>
#include <vector>
#include "cuda_engine.cuh"

namespace {

int compute_dtype = FSDP_F32;

/* attention shapes cuDNN declined: device, B, T, NH, NKV, HD, ldq, ldk, ldv, dtype */
typedef std::tuple<int, int, int, int, int, int, int, int, int, int> shape_key;
std::mutex declined_lock;
std::set<shape_key> declined;

bool half(int dtype) { return dtype == FSDP_BF16 || dtype == FSDP_F16; }

/* stream-ordered scratch, all released when the scope ends (errors included) */
struct scratch {
    cudaStream_t stream;
    int device = 0;
    int rc = FSDP_OK;
    std::vector<void *> blocks;
    explicit scratch(cudaStream_t s) : stream(s) {
        rc = fsdp_cuda_check(cudaGetDevice(&device), "compute-dtype scratch", "cudaGetDevice");
    }
    ~scratch() {
        for (void *p : blocks) fsdp_cuda_free(p);
    }
    scratch(const scratch &) = delete;
    scratch &operator=(const scratch &) = delete;
    /* nbytes of device memory, NULL (and rc set) when there is none */
    void *get(int64_t nbytes) {
        if (rc) return nullptr;
        void *p = fsdp_cuda_alloc(device, nbytes, stream);
        if (!p) rc = FSDP_ERR_OOM;  /* fsdp_cuda_alloc wrote the message */
        else blocks.push_back(p);
        return p;
    }
    /* n elements of src (f32) rounded to dtype; NULL src gives NULL */
    void *down(const float *src, int64_t n, int dtype) {
        if (!src) return nullptr;
        void *p = get(n * 2);
        if (p && (rc = fsdp_cast_cuda(p, dtype, src, FSDP_F32, n, stream))) return nullptr;
        return p;
    }
    /* n zeros of dtype when want, else NULL */
    void *zeros(bool want, int64_t n, int dtype) {
        if (!want) return nullptr;
        void *p = get(n * fsdp_dtype_size(dtype));
        if (p && (rc = fsdp_cuda_memset(p, 0, n * fsdp_dtype_size(dtype), stream))) return nullptr;
        return p;
    }
    /* dst (f32) = src (dtype), or dst += src when add */
    int up(float *dst, const void *src, int64_t n, int dtype, bool add) {
        if (rc || !dst) return rc;
        if (!add) return rc = fsdp_cast_cuda(dst, FSDP_F32, src, dtype, n, stream);
        return rc = fsdp_cast_add_cuda(dst, src, dtype, n, stream);
    }
};

/* ---- matmul ------------------------------------------------------------------ */

int matmul_forward_f32(float *out, const float *a, const float *b, const float *bias, int M, int N, int K,
                       int trans_a, int trans_b, int accumulate, cudaStream_t stream) {
    int rc = fsdp_matmul_forward_cublaslt(out, nullptr, a, b, bias, M, N, K, trans_a, trans_b, accumulate, 0,
                                          FSDP_F32, stream);
    if (rc != FSDP_ERR_UNSUPPORTED) return rc;
    fsdp_clear_error();
    return fsdp_matmul_forward_simt_cuda(out, a, b, bias, M, N, K, trans_a, trans_b, accumulate, stream);
}

/* one gradient (exactly one of da, db non-NULL) in f32 */
int matmul_grad_f32(float *da, float *db, const float *dout, const float *a, const float *b, int M, int N, int K,
                    int trans_a, int trans_b, cudaStream_t stream) {
    int rc = fsdp_matmul_backward_cublaslt(da, db, nullptr, dout, a, b, M, N, K, trans_a, trans_b, FSDP_F32,
                                           stream);
    if (rc != FSDP_ERR_UNSUPPORTED) return rc;
    fsdp_clear_error();
    return fsdp_matmul_backward_simt_cuda(da, db, nullptr, dout, a, b, M, N, K, trans_a, trans_b, stream);
}

/* forward in dtype; FSDP_ERR_UNSUPPORTED when cuBLASLt declines (out untouched) */
int matmul_forward_half(int dt, float *out, const float *a, const float *b, const float *bias, int M, int N,
                        int K, int trans_a, int trans_b, int accumulate, cudaStream_t stream) {
    scratch s(stream);
    void *ah = s.down(a, (int64_t)M * K, dt), *bh = s.down(b, (int64_t)K * N, dt);
    void *biash = s.down(bias, N, dt), *oh = s.get((int64_t)M * N * 2);
    if (s.rc) return s.rc;
    int rc = fsdp_matmul_forward_cublaslt(oh, nullptr, ah, bh, biash, M, N, K, trans_a, trans_b, 0, 0, dt,
                                          stream);
    if (rc) return rc;
    return s.up(out, oh, (int64_t)M * N, dt, accumulate != 0);
}

/* one gradient in dtype, added into the f32 one; FSDP_ERR_UNSUPPORTED when
 * cuBLASLt declines (nothing added) */
int matmul_grad_half(int dt, float *da, float *db, const float *dout, const float *a, const float *b, int M,
                     int N, int K, int trans_a, int trans_b, cudaStream_t stream) {
    scratch s(stream);
    void *douth = s.down(dout, (int64_t)M * N, dt);
    void *ah = db ? s.down(a, (int64_t)M * K, dt) : nullptr, *bh = da ? s.down(b, (int64_t)K * N, dt) : nullptr;
    void *dah = s.zeros(da != nullptr, (int64_t)M * K, dt), *dbh = s.zeros(db != nullptr, (int64_t)K * N, dt);
    if (s.rc) return s.rc;
    int rc = fsdp_matmul_backward_cublaslt(dah, dbh, nullptr, douth, ah, bh, M, N, K, trans_a, trans_b, dt,
                                           stream);
    if (rc) return rc;
    return da ? s.up(da, dah, (int64_t)M * K, dt, true) : s.up(db, dbh, (int64_t)K * N, dt, true);
}

int matmul_grad(float *da, float *db, const float *dout, const float *a, const float *b, int M, int N, int K,
                int trans_a, int trans_b, cudaStream_t stream) {
    const int dt = compute_dtype;
    if (half(dt)) {
        int rc = matmul_grad_half(dt, da, db, dout, a, b, M, N, K, trans_a, trans_b, stream);
        if (rc != FSDP_ERR_UNSUPPORTED) return rc;
        fsdp_clear_error();
    }
    return matmul_grad_f32(da, db, dout, a, b, M, N, K, trans_a, trans_b, stream);
}

/* ---- attention ------------------------------------------------------------------ */

shape_key key_of(int dtype, int B, int T, int NH, int NKV, int HD, int ldq, int ldk, int ldv) {
    int device = 0;
    cudaGetDevice(&device);
    return shape_key(device, B, T, NH, NKV, HD, ldq, ldk, ldv, dtype);
}

bool was_declined(const shape_key &key) {
    std::lock_guard<std::mutex> guard(declined_lock);
    return declined.count(key) != 0;
}

void decline(const shape_key &key) {
    std::lock_guard<std::mutex> guard(declined_lock);
    declined.insert(key);
}

/* a shape the kernels take (else the f32 kernel says what is wrong) */
bool valid_shape(int B, int T, int NH, int NKV, int HD, int ldq, int ldk, int ldv) {
    return B > 0 && T > 0 && NH > 0 && NKV > 0 && HD > 0 && NH % NKV == 0 && ldq >= NH * HD &&
           ldk >= NKV * HD && ldv >= NKV * HD;
}

/* elements from a row-strided tensor's first element to its last: rows of
 * width elements ld apart (for a packed qkv the other columns ride along) */
int64_t span(int B, int T, int ld, int width) { return ((int64_t)B * T - 1) * ld + width; }

int attention_forward_half(int dt, float *out, float *lse, const float *q, const float *k, const float *v, int B,
                           int T, int NH, int NKV, int HD, int ldq, int ldk, int ldv, float scale,
                           cudaStream_t stream) {
    scratch s(stream);
    void *qh = s.down(q, span(B, T, ldq, NH * HD), dt), *kh = s.down(k, span(B, T, ldk, NKV * HD), dt);
    void *vh = s.down(v, span(B, T, ldv, NKV * HD), dt);
    const int64_t no = (int64_t)B * T * NH * HD;
    void *oh = s.get(no * 2);
    if (s.rc) return s.rc;
    int rc = fsdp_attention_forward_cudnn(oh, lse, qh, kh, vh, B, T, NH, NKV, HD, ldq, ldk, ldv, scale, dt,
                                          stream);
    if (rc) return rc;
    return s.up(out, oh, no, dt, false);
}

int attention_backward_half(int dt, float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, const float *out, const float *lse, int B, int T,
                            int NH, int NKV, int HD, int ldq, int ldk, int ldv, float scale, cudaStream_t stream) {
    scratch s(stream);
    const int64_t nq = span(B, T, ldq, NH * HD), nk = span(B, T, ldk, NKV * HD), nv = span(B, T, ldv, NKV * HD);
    const int64_t no = (int64_t)B * T * NH * HD;
    void *qh = s.down(q, nq, dt), *kh = s.down(k, nk, dt), *vh = s.down(v, nv, dt);
    void *oh = s.down(out, no, dt), *douth = s.down(dout, no, dt);
    void *dqh = s.zeros(dq != nullptr, nq, dt), *dkh = s.zeros(dk != nullptr, nk, dt);
    void *dvh = s.zeros(dv != nullptr, nv, dt);
    if (s.rc) return s.rc;
    int rc = fsdp_attention_backward_cudnn(dqh, dkh, dvh, douth, qh, kh, vh, oh, lse, B, T, NH, NKV, HD, ldq, ldk,
                                           ldv, scale, dt, stream);
    if (rc) return rc;
    s.up(dq, dqh, nq, dt, true);
    s.up(dk, dkh, nk, dt, true);
    return s.up(dv, dvh, nv, dt, true);
}

}  // namespace

/* ---- entry points ------------------------------------------------------------------ */

int fsdp_cuda_set_compute_dtype(int dtype) {
    FSDP_CHECK_ARG(dtype == FSDP_F32 || half(dtype),
                   "fsdp_cuda_set_compute_dtype: the compute dtype must be f32, bf16 or f16, got %s",
                   fsdp_dtype_name(dtype) ? fsdp_dtype_name(dtype) : "an unknown dtype");
    compute_dtype = dtype;
    return FSDP_OK;
}

int fsdp_cuda_get_compute_dtype(void) { return compute_dtype; }

int fsdp_matmul_forward_cuda(float *out, const float *a, const float *b, const float *bias, int M, int N, int K,
                             int trans_a, int trans_b, int accumulate, fsdp_stream stream) {
    const char *fn = "fsdp_matmul_forward_cuda";
    FSDP_CHECK_ARG(M > 0 && N > 0 && K > 0, "%s: M (%d), N (%d) and K (%d) must be positive", fn, M, N, K);
    FSDP_CHECK_ARG(out && a && b, "%s: out, a and b must not be NULL", fn);
    const int dt = compute_dtype;
    if (half(dt)) {
        int rc = matmul_forward_half(dt, out, a, b, bias, M, N, K, trans_a, trans_b, accumulate, stream);
        if (rc != FSDP_ERR_UNSUPPORTED) return rc;
        fsdp_clear_error();
    }
    return matmul_forward_f32(out, a, b, bias, M, N, K, trans_a, trans_b, accumulate, stream);
}

int fsdp_matmul_backward_cuda(float *da, float *db, float *dbias, const float *dout, const float *a,
                              const float *b, int M, int N, int K, int trans_a, int trans_b, fsdp_stream stream) {
    const char *fn = "fsdp_matmul_backward_cuda";
    FSDP_CHECK_ARG(M > 0 && N > 0 && K > 0, "%s: M (%d), N (%d) and K (%d) must be positive", fn, M, N, K);
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    FSDP_CHECK_ARG(!da || b, "%s: b must not be NULL when da is wanted", fn);
    FSDP_CHECK_ARG(!db || a, "%s: a must not be NULL when db is wanted", fn);
    int rc = FSDP_OK;
    if (da) rc = matmul_grad(da, nullptr, dout, a, b, M, N, K, trans_a, trans_b, stream);
    if (!rc && db) rc = matmul_grad(nullptr, db, dout, a, b, M, N, K, trans_a, trans_b, stream);
    /* dbias += column sums of dout, in f32 whatever the compute dtype (our kernel) */
    if (!rc && dbias) rc = fsdp_bias_backward_cuda(dbias, dout, M, N, FSDP_F32, stream);
    return rc;
}

int fsdp_attention_forward_cuda(float *out, float *lse, const float *q, const float *k, const float *v, int B,
                                int T, int NH, int NKV, int HD, int ldq, int ldk, int ldv, int window, float scale,
                                float softcap, fsdp_stream stream) {
    const int dt = compute_dtype;
    if (half(dt) && window <= 0 && softcap == 0.0f && valid_shape(B, T, NH, NKV, HD, ldq, ldk, ldv) && out && lse && q && k && v) {
        const shape_key key = key_of(dt, B, T, NH, NKV, HD, ldq, ldk, ldv);
        if (!was_declined(key)) {
            int rc = attention_forward_half(dt, out, lse, q, k, v, B, T, NH, NKV, HD, ldq, ldk, ldv, scale,
                                            stream);
            if (rc != FSDP_ERR_UNSUPPORTED) return rc;
            fsdp_clear_error();
            decline(key);
        }
    }
    return fsdp_attention_forward_f32_cuda(out, lse, q, k, v, B, T, NH, NKV, HD, ldq, ldk, ldv, window, scale,
                                           softcap, stream);
}

int fsdp_attention_backward_cuda(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                 const float *k, const float *v, const float *out, const float *lse, int B, int T,
                                 int NH, int NKV, int HD, int ldq, int ldk, int ldv, int window, float scale,
                                 float softcap, fsdp_stream stream) {
    const int dt = compute_dtype;
    if (half(dt) && window <= 0 && softcap == 0.0f && valid_shape(B, T, NH, NKV, HD, ldq, ldk, ldv) && (dq || dk || dv) && dout &&
        q && k && v && out && lse) {
        const shape_key key = key_of(dt, B, T, NH, NKV, HD, ldq, ldk, ldv);
        if (!was_declined(key)) {
            /* cuDNN's statistics are the f32 kernel's lse (max + log of the
             * sum, [B, NH, T]), so either backward follows either forward */
            int rc = attention_backward_half(dt, dq, dk, dv, dout, q, k, v, out, lse, B, T, NH, NKV, HD, ldq, ldk,
                                             ldv, scale, stream);
            if (rc != FSDP_ERR_UNSUPPORTED) return rc;
            fsdp_clear_error();
            decline(key);
        }
    }
    return fsdp_attention_backward_f32_cuda(dq, dk, dv, dout, q, k, v, out, lse, B, T, NH, NKV, HD, ldq, ldk, ldv,
                                            window, scale, softcap, stream);
}

int64_t fsdp_cuda_declined_shapes(void) {
    std::lock_guard<std::mutex> guard(declined_lock);
    return (int64_t)declined.size();
}

void fsdp_cuda_clear_declined_shapes(void) {
    std::lock_guard<std::mutex> guard(declined_lock);
    declined.clear();
}
