/* emu_backend.cc - what build/libfsdp_cuda_emu.so has in place of the three
 * NVIDIA libraries our kernels do not replace. Test-only.
 *
 * The emulated backend is the real CUDA backend (engine/cuda/<file>.cu and our
 * kernels/<op>_cuda.cu, unchanged) compiled against tests/cuda/emu/cuda_emu.h,
 * so that the Lua side of `--device cuda` (tensors on the device, kernel
 * dispatch, copies, the allocator, collectives over device buffers) runs in
 * CI on the CPU. Here:
 *   - GEMM (cuBLASLt on a GPU) is our SIMT fallback kernel; bf16/f16 GEMMs
 *     widen their operands to f32 scratch and round the result once, as
 *     cuBLASLt's f32 accumulation does (no GELU epilogue);
 *   - cuDNN attention says FSDP_ERR_UNSUPPORTED, as cuDNN does for a shape
 *     it has no engine for, so callers take the fallback attention kernel;
 *   - two test hooks (extern "C", not in fsdp.h) let the policy tests see
 *     the fallbacks: fsdp_emu_refuse_gemm(M, N, K) makes the emulated
 *     cuBLASLt decline GEMMs of that forward shape, as cuBLASLt does when
 *     it has no algorithm, and fsdp_emu_library_calls counts the calls
 *     made to the emulated cuBLASLt and cuDNN;
 *   - NCCL is an ext backend of the comm interface (engine/comm_ops.h) that
 *     runs each collective, blocking, over the bootstrap comm (MPI or self)
 *     with device memory opened for the call: the emulated device is host
 *     memory, so the MPI ranks of a test exchange it directly. Requests are
 *     complete at their start, which is one legal schedule of the real one.
 * Nothing here is linked into libfsdp_cuda.so. */
#include "cuda_common.cuh"
#include "comm_ops.h"

namespace {
const char *const WHY = "not in the emulated CUDA backend (tests/cuda/emu); on a GPU cuBLASLt runs it";
const char *const NO_CUDNN = "cuDNN is not in the emulated CUDA backend (tests/cuda/emu): use the "
                             "fallback kernel";
}

/* ---- test hooks ---------------------------------------------------------------- */
namespace {
int refuse_m = -1, refuse_n = -1, refuse_k = -1;
int64_t cublaslt_calls, cudnn_calls;

/* FSDP_ERR_UNSUPPORTED (nothing launched) when the test asked to refuse this shape */
int refused(const char *fn, int M, int N, int K) {
    if (M != refuse_m || N != refuse_n || K != refuse_k) return FSDP_OK;
    return fsdp_error(FSDP_ERR_UNSUPPORTED, "%s: cuBLASLt has no algorithm for M=%d N=%d K=%d (refused by "
                      "fsdp_emu_refuse_gemm)", fn, M, N, K);
}
}  // namespace

/* the emulated cuBLASLt declines GEMMs of forward shape (M, N, K) from now
 * on (its backward too); M = -1: declines nothing */
extern "C" void fsdp_emu_refuse_gemm(int M, int N, int K) {
    refuse_m = M;
    refuse_n = N;
    refuse_k = K;
}

/* calls made so far to the emulated cuBLASLt (*gemm) and cuDNN (*attention) entry points */
extern "C" void fsdp_emu_library_calls(int64_t *gemm, int64_t *attention) {
    if (gemm) *gemm = cublaslt_calls;
    if (attention) *attention = cudnn_calls;
}

/* bf16/f16 GEMMs as cuBLASLt computes them: operands widened to f32 (exact),
 * f32 accumulation (the SIMT kernel), the result rounded once to the dtype */
namespace {
struct f32_copy { /* an f32 scratch copy of a 16-bit operand (or zeros) */
    float *p = nullptr;
    int rc = FSDP_OK;
    f32_copy(const void *src, int64_t n, int dtype, bool load) {
        if (!src) return;
        if (cudaMalloc((void **)&p, (size_t)(n > 0 ? n : 1) * 4) != cudaSuccess) {
            rc = fsdp_error(FSDP_ERR_OOM, "emulated GEMM: no scratch for %lld elements", (long long)n);
            return;
        }
        rc = load ? fsdp_cast_cuda(p, FSDP_F32, src, dtype, n, nullptr) : cudaMemsetAsync(p, 0, (size_t)n * 4);
    }
    ~f32_copy() { if (p) cudaFree(p); }
};
}  // namespace

int fsdp_matmul_forward_cublaslt(void *out, void *pre_gelu, const void *a, const void *b, const void *bias,
                             int M, int N, int K, int trans_a, int trans_b, int accumulate, int gelu,
                             int dtype, fsdp_stream stream) {
    cublaslt_calls++;
    if (int rc = refused("fsdp_matmul_forward_cublaslt", M, N, K)) return rc;
    if (gelu || (dtype != FSDP_F32 && dtype != FSDP_BF16 && dtype != FSDP_F16))
        return fsdp_error(FSDP_ERR_UNSUPPORTED, "fsdp_matmul_forward_cublaslt: %s %s: %s",
                          fsdp_dtype_name(dtype) ? fsdp_dtype_name(dtype) : "?",
                          gelu ? "with the GELU epilogue" : "GEMM", WHY);
    if (dtype == FSDP_F32)
        return fsdp_matmul_forward_simt_cuda((float *)out, (const float *)a, (const float *)b,
                                             (const float *)bias, M, N, K, trans_a, trans_b, accumulate,
                                             stream);
    f32_copy a32(a, (int64_t)M * K, dtype, true), b32(b, (int64_t)K * N, dtype, true),
        bias32(bias, N, dtype, true), out32(out, (int64_t)M * N, dtype, accumulate != 0);
    for (int rc : {a32.rc, b32.rc, bias32.rc, out32.rc})
        if (rc) return rc;
    int rc = fsdp_matmul_forward_simt_cuda(out32.p, a32.p, b32.p, bias32.p, M, N, K, trans_a, trans_b,
                                           accumulate, stream);
    return rc ? rc : fsdp_cast_cuda(out, dtype, out32.p, FSDP_F32, (int64_t)M * N, stream);
}

int fsdp_matmul_backward_cublaslt(void *da, void *db, void *dbias, const void *dout, const void *a,
                              const void *b, int M, int N, int K, int trans_a, int trans_b, int dtype,
                              fsdp_stream stream) {
    cublaslt_calls++;
    if (int rc = refused("fsdp_matmul_backward_cublaslt", M, N, K)) return rc;
    if (dtype != FSDP_F32 && dtype != FSDP_BF16 && dtype != FSDP_F16)
        return fsdp_error(FSDP_ERR_UNSUPPORTED, "fsdp_matmul_backward_cublaslt: %s GEMM: %s",
                          fsdp_dtype_name(dtype) ? fsdp_dtype_name(dtype) : "?", WHY);
    if (dtype == FSDP_F32)
        return fsdp_matmul_backward_simt_cuda((float *)da, (float *)db, (float *)dbias, (const float *)dout,
                                              (const float *)a, (const float *)b, M, N, K, trans_a, trans_b,
                                              stream);
    f32_copy d32(dout, (int64_t)M * N, dtype, true), a32(a, (int64_t)M * K, dtype, true),
        b32(b, (int64_t)K * N, dtype, true), da32(da, (int64_t)M * K, dtype, true),
        db32(db, (int64_t)K * N, dtype, true), dbias32(dbias, N, dtype, true);
    for (int rc : {d32.rc, a32.rc, b32.rc, da32.rc, db32.rc, dbias32.rc})
        if (rc) return rc;
    int rc = fsdp_matmul_backward_simt_cuda(da32.p, db32.p, dbias32.p, d32.p, a32.p, b32.p, M, N, K, trans_a,
                                            trans_b, stream);
    if (!rc && da) rc = fsdp_cast_cuda(da, dtype, da32.p, FSDP_F32, (int64_t)M * K, stream);
    if (!rc && db) rc = fsdp_cast_cuda(db, dtype, db32.p, FSDP_F32, (int64_t)K * N, stream);
    if (!rc && dbias) rc = fsdp_cast_cuda(dbias, dtype, dbias32.p, FSDP_F32, N, stream);
    return rc;
}

int fsdp_cuda_set_tf32(int allow) { return FSDP_OK; } /* the SIMT GEMM is f32 only */

int fsdp_attention_forward_cudnn(void *out, float *lse, const void *q, const void *k, const void *v,
                                 int B, int T, int NH, int NKV, int HD, int ldq, int ldk, int ldv,
                                 float scale, int dtype, fsdp_stream stream) {
    cudnn_calls++;
    return fsdp_error(FSDP_ERR_UNSUPPORTED, "fsdp_attention_forward_cudnn: %s", NO_CUDNN);
}

int fsdp_attention_backward_cudnn(void *dq, void *dk, void *dv, const void *dout, const void *q,
                                  const void *k, const void *v, const void *out, const float *lse, int B,
                                  int T, int NH, int NKV, int HD, int ldq, int ldk, int ldv, float scale,
                                  int dtype, fsdp_stream stream) {
    cudnn_calls++;
    return fsdp_error(FSDP_ERR_UNSUPPORTED, "fsdp_attention_backward_cudnn: %s", NO_CUDNN);
}

/* ---- NCCL, emulated over the bootstrap comm -------------------------------- */
namespace {

struct emu_nccl {
    fsdp_comm *boot;
    int device;
};

fsdp_comm *boot_of(fsdp_comm *c) { return ((emu_nccl *)fsdp_comm_ext_ctx(c))->boot; }

int emu_all_gather(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, void **handle) {
    fsdp_emu::device_scope open;
    *handle = nullptr;
    return fsdp_comm_all_gather(boot_of(c), recv, send, count, dtype, nullptr);
}
int emu_reduce_scatter(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, int op,
                       void **handle) {
    fsdp_emu::device_scope open;
    *handle = nullptr;
    return fsdp_comm_reduce_scatter(boot_of(c), recv, send, count, dtype, op, nullptr);
}
int emu_all_reduce(fsdp_comm *c, void *buf, int64_t count, int dtype, int op, void **handle) {
    fsdp_emu::device_scope open;
    *handle = nullptr;
    return fsdp_comm_all_reduce(boot_of(c), buf, count, dtype, op, nullptr);
}
int emu_broadcast(fsdp_comm *c, void *buf, int64_t count, int dtype, int root, void **handle) {
    fsdp_emu::device_scope open;
    *handle = nullptr;
    return fsdp_comm_broadcast(boot_of(c), buf, count, dtype, root, nullptr);
}
int emu_barrier(fsdp_comm *c, void **handle) {
    *handle = nullptr;
    return fsdp_comm_barrier(boot_of(c));
}
int emu_wait(fsdp_comm *, void *, const char *, int64_t, double, int *pending) {
    *pending = 0; /* every collective finished at its start */
    return FSDP_OK;
}
int emu_test(fsdp_comm *, void *, const char *, int64_t, int *done) {
    *done = 1;
    return FSDP_OK;
}
void emu_request_free(fsdp_comm *, void *) {}
void emu_comm_free(fsdp_comm *c) { delete (emu_nccl *)fsdp_comm_ext_ctx(c); }

const fsdp_comm_ops emu_ops = {"nccl",   emu_all_gather, emu_reduce_scatter, emu_all_reduce,
                               emu_broadcast, emu_barrier, emu_wait, emu_test, emu_request_free,
                               emu_comm_free, nullptr, 0, nullptr, nullptr};

}  // namespace

fsdp_comm *fsdp_comm_nccl_new(fsdp_comm *bootstrap, int device) {
    if (!bootstrap)
        return (fsdp_comm *)fsdp_error_null(FSDP_ERR_INVALID, "fsdp_comm_nccl_new: bootstrap comm is NULL");
    if (device != 0)
        return (fsdp_comm *)fsdp_error_null(FSDP_ERR_INVALID,
                                            "fsdp_comm_nccl_new: the emulated backend has only cuda:0, not cuda:%d",
                                            device);
    emu_nccl *st = new emu_nccl{bootstrap, device};
    fsdp_comm *c = fsdp_comm_ext_new(&emu_ops, st, fsdp_comm_rank(bootstrap), fsdp_comm_size(bootstrap),
                                     bootstrap);
    if (!c) delete st;
    return c;
}

fsdp_comm *fsdp_comm_nccl_new_tcp(int rank, int world, const char *master_addr, int port, int device) {
    return (fsdp_comm *)fsdp_error_null(FSDP_ERR_UNSUPPORTED,
                                        "fsdp_comm_nccl_new_tcp: the emulated backend bootstraps over "
                                        "MPI only (fsdp_comm_nccl_new)");
}

int fsdp_comm_nccl_set_stream(fsdp_comm *c, fsdp_stream compute) {
    FSDP_CHECK_ARG(c && fsdp_comm_ext_ops(c) == &emu_ops, "fsdp_comm_nccl_set_stream: not an NCCL comm");
    return FSDP_OK;
}

int fsdp_cuda_stream_wait_request(fsdp_stream stream, fsdp_comm_request *req) {
    return FSDP_OK; /* emulated collectives are complete when they return */
}
