/* matmul_cublas.cu - dense matmul through cuBLASLt, forward and backward,
 * with the CPU kernel's row-major conventions: out[M,N] = op(a)[M,K] @
 * op(b)[K,N] (+ bias[N]), a stored [K,M] when trans_a, b stored [N,K] when
 * trans_b. Data f32, bf16 or f16 (all operands one dtype), accumulation and
 * scaling in f32 (CUBLAS_COMPUTE_32F: no TF32 shortcut for f32 data,
 * unless fsdp_cuda_set_tf32(1) asked for it, as torch's allow_tf32 does:
 * f32 GEMMs then run on the tensor cores with 10-bit mantissa inputs).
 *
 * cuBLASLt is column-major. A row-major [M,N] matrix is the column-major
 * [N,M] matrix with the same bytes, so out^T = op(b)^T op(a)^T is computed:
 * cuBLASLt's A is our b and its B is our a, each with the transpose flag of
 * its stored layout. A bias of N elements is then a per-row bias of the
 * column-major result, which is what the BIAS epilogue adds. GELU (tanh
 * approximation) fuses as the GELU_BIAS epilogue; GELU_AUX_BIAS also stores
 * the pre-activation for backward.
 *
 * These are the raw entry points (fsdp_matmul_*_cublaslt); the ops call
 * engine/cuda/policy_cuda.cu's fsdp_matmul_*_cuda, which picks the compute
 * dtype and falls back to the SIMT kernel when this says UNSUPPORTED.
 *
 * One cuBLASLt handle per device; one 32 MiB workspace per (device, stream),
 * since two streams must not share one. The chosen algorithm is cached per
 * shape, dtype, epilogue and operand alignment. Not run by the emulation
 * tests (it needs cuBLASLt); tests/cuda checks it against the CPU on a GPU. */
#include <stdint.h>
#include <map>
#include <mutex>
#include <tuple>
#include <cublasLt.h>
#include "cuda_common.cuh"

namespace {

const size_t WORKSPACE = 32u << 20;

struct device_state {
    cublasLtHandle_t handle = nullptr;
    std::map<cudaStream_t, void *> workspace;
};

typedef std::tuple<int, int, int, int, int, int, int, int, int, int> algo_key;

std::mutex lock;
std::map<int, device_state> devices;
std::map<algo_key, cublasLtMatmulAlgo_t> algos;
int allow_tf32; /* fsdp_cuda_set_tf32 */

int lt_check(cublasStatus_t s, const char *fn, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return FSDP_OK;
    return fsdp_error(s == CUBLAS_STATUS_NOT_SUPPORTED ? (int)FSDP_ERR_UNSUPPORTED : (int)FSDP_ERR_DEVICE,
                      "%s: %s failed: %s", fn, what, cublasLtGetStatusString(s));
}

/* the current device's handle and stream's workspace, made on first use */
int device_handles(const char *fn, cudaStream_t stream, int *device, cublasLtHandle_t *handle,
                   void **workspace) {
    int rc = fsdp_cuda_status(cudaGetDevice(device), fn, "cudaGetDevice");
    if (rc) return rc;
    std::lock_guard<std::mutex> guard(lock);
    device_state &d = devices[*device];
    if (!d.handle && (rc = lt_check(cublasLtCreate(&d.handle), fn, "cublasLtCreate"))) return rc;
    auto it = d.workspace.find(stream);
    if (it == d.workspace.end()) {
        void *p = nullptr;
        if ((rc = fsdp_cuda_status(cudaMalloc(&p, WORKSPACE), fn, "cudaMalloc of the workspace")))
            return rc;
        it = d.workspace.emplace(stream, p).first;
    }
    *handle = d.handle;
    *workspace = it->second;
    return FSDP_OK;
}

cudaDataType_t cuda_type(int dtype) {
    return dtype == FSDP_BF16 ? CUDA_R_16BF : dtype == FSDP_F16 ? CUDA_R_16F : CUDA_R_32F;
}

/* largest power of two <= 256 dividing the address (cuBLASLt picks kernels by it) */
int alignment(const void *p) {
    int a = 256;
    while (a > 1 && (uintptr_t)p % a) a /= 2;
    return a;
}

/* descriptors, destroyed with the scope */
struct lt_call {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~lt_call() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (lc) cublasLtMatrixLayoutDestroy(lc);
        if (lb) cublasLtMatrixLayoutDestroy(lb);
        if (la) cublasLtMatrixLayoutDestroy(la);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

/* out (+)= epilogue(op(a) op(b) + bias), row-major; beta 0 or 1 */
int lt_matmul(const char *fn, void *out, void *aux, const void *a, const void *b, const void *bias,
              int M, int N, int K, int trans_a, int trans_b, float beta, int gelu, int dtype,
              cudaStream_t stream) {
    int device = 0, rc;
    cublasLtHandle_t handle;
    void *workspace;
    if ((rc = device_handles(fn, stream, &device, &handle, &workspace))) return rc;
    const cudaDataType_t type = cuda_type(dtype);
    lt_call c;

    /* 1. the operation: transposes and epilogue */
    const cublasComputeType_t compute =
        dtype == FSDP_F32 && allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    if ((rc = lt_check(cublasLtMatmulDescCreate(&c.op, compute, CUDA_R_32F), fn,
                       "cublasLtMatmulDescCreate")))
        return rc;
    const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLASLt's A is b */
    const cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLASLt's B is a */
    cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    if (gelu && aux) epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    else if (gelu) epilogue = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    else if (bias) epilogue = CUBLASLT_EPILOGUE_BIAS;
    const int32_t bias_type = (int32_t)type;
    const int64_t aux_ld = N;
    cublasStatus_t s = cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue);
    if (s == CUBLAS_STATUS_SUCCESS && bias)
        s = cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (s == CUBLAS_STATUS_SUCCESS && bias)
        s = cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                           sizeof bias_type);
    if (s == CUBLAS_STATUS_SUCCESS && aux)
        s = cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
    if (s == CUBLAS_STATUS_SUCCESS && aux)
        s = cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld);
    if ((rc = lt_check(s, fn, "cublasLtMatmulDescSetAttribute"))) return rc;

    /* 2. column-major layouts of the stored matrices: b, a, out */
    s = trans_b ? cublasLtMatrixLayoutCreate(&c.la, type, K, N, K) : cublasLtMatrixLayoutCreate(&c.la, type, N, K, N);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = trans_a ? cublasLtMatrixLayoutCreate(&c.lb, type, M, K, M)
                    : cublasLtMatrixLayoutCreate(&c.lb, type, K, M, K);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&c.lc, type, N, M, N);
    if ((rc = lt_check(s, fn, "cublasLtMatrixLayoutCreate"))) return rc;

    /* 3. an algorithm: cached, else cuBLASLt's first heuristic pick */
    const int al_a = alignment(b), al_b = alignment(a), al_c = alignment(out);
    const algo_key key(device, M, N, K, trans_a * 2 + trans_b, dtype * 2 + (compute != CUBLAS_COMPUTE_32F),
                       (int)epilogue, beta != 0.0f,
                       al_a * 1000 + al_b, al_c);
    cublasLtMatmulAlgo_t algo;
    bool cached;
    {
        std::lock_guard<std::mutex> guard(lock);
        auto it = algos.find(key);
        cached = it != algos.end();
        if (cached) algo = it->second;
    }
    if (!cached) {
        const uint64_t ws = WORKSPACE;
        const uint32_t aa = al_a, ab = al_b, ac = al_c;
        s = cublasLtMatmulPreferenceCreate(&c.pref);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                     sizeof ws);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa,
                                                     sizeof aa);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab,
                                                     sizeof ab);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac,
                                                     sizeof ac);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac,
                                                     sizeof ac);
        if ((rc = lt_check(s, fn, "cublasLtMatmulPreferenceSetAttribute"))) return rc;
        cublasLtMatmulHeuristicResult_t result = {};
        int found = 0;
        if ((rc = lt_check(cublasLtMatmulAlgoGetHeuristic(handle, c.op, c.la, c.lb, c.lc, c.lc, c.pref, 1,
                                                          &result, &found),
                           fn, "cublasLtMatmulAlgoGetHeuristic")))
            return rc;
        if (found == 0)
            return fsdp_error(FSDP_ERR_UNSUPPORTED,
                              "%s: cuBLASLt has no algorithm for M=%d N=%d K=%d (%s, epilogue %d)", fn, M,
                              N, K, fsdp_dtype_name(dtype), (int)epilogue);
        algo = result.algo;
        std::lock_guard<std::mutex> guard(lock);
        algos[key] = algo;
    }

    /* 4. run: out = alpha * op + beta * out, then the epilogue */
    const float alpha = 1.0f;
    return lt_check(cublasLtMatmul(handle, c.op, &alpha, b, c.la, a, c.lb, &beta, out, c.lc, out, c.lc, &algo,
                                   workspace, WORKSPACE, stream),
                    fn, "cublasLtMatmul");
}

int check_common(const char *fn, int M, int N, int K, int dtype) {
    FSDP_CHECK_ARG(M > 0 && N > 0 && K > 0, "%s: M (%d), N (%d) and K (%d) must be positive", fn, M, N, K);
    FSDP_CHECK_ARG(dtype == FSDP_F32 || dtype == FSDP_BF16 || dtype == FSDP_F16,
                   "%s: dtype %d is not f32, bf16 or f16", fn, dtype);
    return FSDP_OK;
}

}  // namespace

int fsdp_matmul_forward_cublaslt(void *out, void *pre_gelu, const void *a, const void *b,
                             const void *bias, int M, int N, int K, int trans_a, int trans_b,
                             int accumulate, int gelu, int dtype, fsdp_stream stream) {
    const char *fn = "fsdp_matmul_forward_cublaslt";
    int rc = check_common(fn, M, N, K, dtype);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && a && b, "%s: out, a and b must not be NULL", fn);
    FSDP_CHECK_ARG(!(gelu && accumulate), "%s: gelu cannot be fused with accumulate", fn);
    FSDP_CHECK_ARG(!pre_gelu || gelu, "%s: pre_gelu is only written with gelu", fn);
    if (pre_gelu && N % 8 != 0)
        return fsdp_error(FSDP_ERR_UNSUPPORTED,
                          "%s: saving the GELU input needs N %% 8 == 0 (cuBLASLt), N is %d", fn, N);
    return lt_matmul(fn, out, pre_gelu, a, b, bias, M, N, K, trans_a != 0, trans_b != 0,
                     accumulate ? 1.0f : 0.0f, gelu, dtype, stream);
}

int fsdp_matmul_backward_cublaslt(void *da, void *db, void *dbias, const void *dout, const void *a,
                              const void *b, int M, int N, int K, int trans_a, int trans_b,
                              int dtype, fsdp_stream stream) {
    const char *fn = "fsdp_matmul_backward_cublaslt";
    int rc = check_common(fn, M, N, K, dtype);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    FSDP_CHECK_ARG(!da || b, "%s: b must not be NULL when da is wanted", fn);
    FSDP_CHECK_ARG(!db || a, "%s: a must not be NULL when db is wanted", fn);
    trans_a = trans_a != 0;
    trans_b = trans_b != 0;
    /* d op(a) = dout @ op(b)^T [M,K]; stored transposed: da[K,M] += op(b) @ dout^T */
    if (da) {
        rc = !trans_a ? lt_matmul(fn, da, NULL, dout, b, NULL, M, K, N, 0, !trans_b, 1.0f, 0, dtype, stream)
                      : lt_matmul(fn, da, NULL, b, dout, NULL, K, M, N, trans_b, 1, 1.0f, 0, dtype, stream);
        if (rc) return rc;
    }
    /* d op(b) = op(a)^T @ dout [K,N]; stored transposed: db[N,K] += dout^T @ op(a) */
    if (db) {
        rc = !trans_b ? lt_matmul(fn, db, NULL, a, dout, NULL, K, N, M, !trans_a, 0, 1.0f, 0, dtype, stream)
                      : lt_matmul(fn, db, NULL, dout, a, NULL, N, K, M, 1, trans_a, 1.0f, 0, dtype, stream);
        if (rc) return rc;
    }
    /* dbias += column sums of dout (our deterministic kernel, bias_cuda.cu) */
    if (dbias) return fsdp_bias_backward_cuda(dbias, dout, M, N, dtype, stream);
    return FSDP_OK;
}

int fsdp_cuda_set_tf32(int allow) {
    allow_tf32 = allow != 0;
    return FSDP_OK;
}
