/* attention_cudnn.cu - causal GQA flash attention through cuDNN's backend
 * graph API (C; the toolkit has no cudnn-frontend headers), forward with the
 * softmax statistics and backward, in bf16 or f16 with f32 statistics.
 *
 * The graphs are the ones cuDNN's runtime fusion engine fuses into its flash
 * attention kernels (the patterns the cudnn-frontend SDPA nodes emit):
 *   forward:  S = Q K^T; S *= scale; causal: S = row >= col ? S : lowest;
 *             M = rowmax S; E = exp(S - M); Z = rowsum E;
 *             stats = M + log Z; P = E / Z; O = P V
 *   backward: D = rowsum(dO * O); S = scale Q K^T (masked); E = exp(S - stats);
 *             dV = E^T dO; dP = (dO V^T - D) * E * scale;
 *             dK = dP^T Q; dQ = dP K
 * Tensors are 4-D [batch, heads, rows, dims] with explicit strides, so q, k
 * and v are read in place from [B, T, heads, HD] rows with token strides ldq,
 * ldk, ldv (slices of one fused qkv buffer work); K^T and V^T are the same
 * bytes with the last two strides swapped. stats is [B, NH, T, 1] f32: the
 * lse layout of the CPU kernel. GQA: K and V carry NKV heads.
 *
 * A built plan is cached per shape and device. Anything cuDNN declines (no
 * engine for the shape or the GPU, a graph this cuDNN version does not fuse)
 * is FSDP_ERR_UNSUPPORTED with cuDNN's reason, so the caller can fall back
 * to fsdp_attention_*_f32_cuda (engine/cuda/policy_cuda.cu does). Backward
 * keeps the library's contract: cuDNN writes its gradients to scratch
 * buffers that are then added into dq, dk and dv (NULL ones skipped).
 *
 * Not run by the emulation tests (it needs cuDNN and a GPU); tests/cuda
 * checks it against the CPU kernel. Debug a refused graph with
 * CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr. */
#include <string.h>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>
#include <cudnn.h>
#include "cuda_common.cuh"

namespace {

/* unique ids of the tensors the caller binds */
enum : int64_t {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_LOWEST, UID_DO, UID_DQ, UID_DK, UID_DV,
    UID_ONE, UID_DQ_ACCUM, UID_VIRTUAL = 100
};

/* ---- graph building --------------------------------------------------------- */

/* Owns every descriptor it makes. Calls after the first failure do nothing;
 * the failure (and cuDNN's message) is kept for the error. */
struct graph {
    cudnnHandle_t handle = nullptr;
    std::vector<cudnnBackendDescriptor_t> owned, ops;
    cudnnBackendDescriptor_t plan = nullptr;
    int64_t workspace = 0, next_uid = UID_VIRTUAL;
    bool dq_accum = false;  /* backward: dQ goes through an f32 accumulator */
    cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
    std::string where;

    ~graph() {
        for (auto it = owned.rbegin(); it != owned.rend(); ++it) cudnnBackendDestroyDescriptor(*it);
    }
    bool ok() const { return status == CUDNN_STATUS_SUCCESS; }
    void check(cudnnStatus_t s, const char *what) {
        if (s == CUDNN_STATUS_SUCCESS || !ok()) return;
        status = s;
        char detail[512] = "";
        cudnnGetLastErrorString(detail, sizeof detail);
        where = std::string(what) + ": " + cudnnGetErrorString(s) + (detail[0] ? std::string(" (") + detail + ")" : "");
    }
    cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type, const char *what) {
        cudnnBackendDescriptor_t d = nullptr;
        if (!ok()) return nullptr;
        check(cudnnBackendCreateDescriptor(type, &d), what);
        if (d) owned.push_back(d);
        return d;
    }
    void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
             int64_t count, const void *value, const char *what) {
        if (ok()) check(cudnnBackendSetAttribute(d, name, type, count, value), what);
    }
    void finalize(cudnnBackendDescriptor_t d, const char *what) {
        if (ok()) check(cudnnBackendFinalize(d), what);
    }

    /* a 4-D tensor; uid < 0 makes a virtual one with a fresh id */
    cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, const int64_t dims[4],
                                    const int64_t strides[4], bool by_value = false,
                                    bool reorder_f16x16 = false) {
        cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
        const bool is_virtual = uid < 0;
        const int64_t id = is_virtual ? next_uid++ : uid, alignment = 16;
        set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &id, "tensor id");
        set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "tensor type");
        set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims, "tensor dims");
        set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides, "tensor strides");
        set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment, "tensor alignment");
        set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual, "tensor virtual");
        if (by_value) set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, "tensor by value");
        if (reorder_f16x16) {
            const cudnnBackendTensorReordering_t r = CUDNN_TENSOR_REORDERING_F16x16;
            set(t, CUDNN_ATTR_TENSOR_REORDERING_MODE, CUDNN_TYPE_TENSOR_REORDERING_MODE, 1, &r, "tensor reorder");
        }
        finalize(t, "tensor");
        return t;
    }
    /* a virtual tensor, packed row-major unless strides are given */
    cudnnBackendDescriptor_t temp(cudnnDataType_t type, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                                  const int64_t *strides = nullptr) {
        const int64_t dims[4] = {d0, d1, d2, d3}, packed[4] = {d1 * d2 * d3, d2 * d3, d3, 1};
        return tensor(-1, type, dims, strides ? strides : packed);
    }
    cudnnBackendDescriptor_t scalar(int64_t uid) { /* by-value f32 [1,1,1,1] */
        const int64_t one[4] = {1, 1, 1, 1};
        return tensor(uid, CUDNN_DATA_FLOAT, one, one, true);
    }

    /* y = mode(x, b, t); b and t may be null; axis for GEN_INDEX */
    void pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                   cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, cudnnDataType_t math = CUDNN_DATA_FLOAT,
                   int64_t axis = -1) {
        cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise");
        set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
        set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math, "pointwise precision");
        if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
        finalize(pw, "pointwise");
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw, "pw desc");
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "pw x");
        if (b) set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "pw b");
        if (t) set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, "pw t");
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "pw y");
        finalize(op, "pointwise op");
        if (ok()) ops.push_back(op);
    }
    void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
        const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
        cudnnBackendDescriptor_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul");
        set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "matmul precision");
        finalize(mm, "matmul");
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul op");
        set(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a, "matmul a");
        set(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "matmul b");
        set(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c, "matmul c");
        set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm, "matmul desc");
        finalize(op, "matmul op");
        if (ok()) ops.push_back(op);
    }
    /* y = reduce over the dims where y has extent 1 */
    void reduction(cudnnReduceTensorOp_t how, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
        const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
        cudnnBackendDescriptor_t r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction");
        set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &how, "reduction op");
        set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "reduction precision");
        finalize(r, "reduction");
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction op");
        set(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reduction x");
        set(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reduction y");
        set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &r, "reduction desc");
        finalize(op, "reduction op");
        if (ok()) ops.push_back(op);
    }
    void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape op");
        set(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reshape x");
        set(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reshape y");
        finalize(op, "reshape op");
        if (ok()) ops.push_back(op);
    }

    /* causal mask: s = row >= col ? s : lowest */
    cudnnBackendDescriptor_t causal(cudnnBackendDescriptor_t s, cudnnBackendDescriptor_t lowest, int64_t b,
                                    int64_t h, int64_t sq, int64_t skv) {
        cudnnBackendDescriptor_t row = temp(CUDNN_DATA_INT32, b, h, sq, skv);
        cudnnBackendDescriptor_t col = temp(CUDNN_DATA_INT32, b, h, sq, skv);
        cudnnBackendDescriptor_t keep = temp(CUDNN_DATA_BOOLEAN, b, h, sq, skv);
        cudnnBackendDescriptor_t out = temp(CUDNN_DATA_FLOAT, b, h, sq, skv);
        pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, row, CUDNN_DATA_INT32, 2);
        pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, col, CUDNN_DATA_INT32, 3);
        pointwise(CUDNN_POINTWISE_CMP_GE, row, col, nullptr, keep, CUDNN_DATA_BOOLEAN);
        pointwise(CUDNN_POINTWISE_BINARY_SELECT, s, lowest, keep, out);
        return out;
    }

    /* the op graph, then the first engine config (heuristics mode A) that
     * makes a plan; the workspace size of that plan */
    void plan_it() {
        cudnnBackendDescriptor_t g = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
        set(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "graph handle");
        set(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, (int64_t)ops.size(), ops.data(),
            "graph ops");
        finalize(g, "operation graph");
        cudnnBackendDescriptor_t heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
        const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
        set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g, "heur graph");
        set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heur mode");
        finalize(heur, "heuristics");
        if (!ok()) return;
        int64_t n = 0;
        check(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n,
                                       nullptr), "heuristic results");
        if (ok() && n == 0) {
            status = CUDNN_STATUS_NOT_SUPPORTED;
            where = "no engine fuses this attention graph";
        }
        if (!ok()) return;
        std::vector<cudnnBackendDescriptor_t> configs(n);
        for (auto &c : configs) c = make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
        if (!ok()) return;
        check(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &n,
                                       configs.data()), "heuristic results");
        std::string last;
        for (int64_t i = 0; ok() && i < n && !plan; i++) {
            cudnnBackendDescriptor_t p = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "plan");
            set(p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "plan handle");
            set(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &configs[i],
                "plan config");
            if (!ok()) return;
            cudnnStatus_t s = cudnnBackendFinalize(p);
            if (s == CUDNN_STATUS_SUCCESS) plan = p;
            else last = cudnnGetErrorString(s);
        }
        if (ok() && !plan) {
            status = CUDNN_STATUS_NOT_SUPPORTED;
            where = "none of " + std::to_string(n) + " engine configs builds a plan (last: " + last + ")";
            return;
        }
        int64_t got = 0;
        if (ok())
            check(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &got,
                                           &workspace), "workspace size");
    }
};

/* one shape's layout: 4-D dims and strides of every bound tensor */
struct shape {
    int64_t B, T, NH, NKV, HD, ldq, ldk, ldv;
    cudnnDataType_t io;
    void q(int64_t d[4], int64_t s[4]) const { set(d, s, NH, ldq); }
    void k(int64_t d[4], int64_t s[4]) const { set(d, s, NKV, ldk); }
    void v(int64_t d[4], int64_t s[4]) const { set(d, s, NKV, ldv); }
    void o(int64_t d[4], int64_t s[4]) const { set(d, s, NH, NH * HD); }  /* also dO, dQ */
    void packed_kv(int64_t d[4], int64_t s[4]) const { set(d, s, NKV, NKV * HD); } /* dK, dV */
    /* [B, heads, T, HD] over [B, T, heads, HD] rows with token stride ld */
    void set(int64_t d[4], int64_t s[4], int64_t heads, int64_t ld) const {
        d[0] = B; d[1] = heads; d[2] = T; d[3] = HD;
        s[0] = T * ld; s[1] = HD; s[2] = ld; s[3] = 1;
    }
    /* the last two dims swapped: the transpose, same bytes */
    static void swap23(int64_t d[4], int64_t s[4]) {
        int64_t t = d[2]; d[2] = d[3]; d[3] = t;
        t = s[2]; s[2] = s[3]; s[3] = t;
    }
};

void build_forward(graph &g, const shape &sh) {
    const int64_t b = sh.B, h = sh.NH, t = sh.T;
    int64_t d[4], s[4];
    sh.q(d, s);
    cudnnBackendDescriptor_t Q = g.tensor(UID_Q, sh.io, d, s);
    sh.k(d, s);
    shape::swap23(d, s);
    cudnnBackendDescriptor_t KT = g.tensor(UID_K, sh.io, d, s);
    sh.v(d, s);
    cudnnBackendDescriptor_t V = g.tensor(UID_V, sh.io, d, s);
    sh.o(d, s);
    cudnnBackendDescriptor_t O = g.tensor(UID_O, sh.io, d, s);
    const int64_t sd[4] = {b, h, t, 1}, ss[4] = {h * t, t, 1, 1};
    cudnnBackendDescriptor_t stats = g.tensor(UID_STATS, CUDNN_DATA_FLOAT, sd, ss);
    cudnnBackendDescriptor_t scale = g.scalar(UID_SCALE), lowest = g.scalar(UID_LOWEST);

    /* S = scale * Q K^T, causal */
    cudnnBackendDescriptor_t S = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.matmul(Q, KT, S);
    cudnnBackendDescriptor_t scaled = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_MUL, S, scale, nullptr, scaled);
    cudnnBackendDescriptor_t masked = g.causal(scaled, lowest, b, h, t, t);
    /* softmax with statistics */
    cudnnBackendDescriptor_t M = g.temp(CUDNN_DATA_FLOAT, b, h, t, 1);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, M);
    cudnnBackendDescriptor_t shifted = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_SUB, masked, M, nullptr, shifted);
    cudnnBackendDescriptor_t E = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_EXP, shifted, nullptr, nullptr, E);
    cudnnBackendDescriptor_t Z = g.temp(CUDNN_DATA_FLOAT, b, h, t, 1);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, E, Z);
    cudnnBackendDescriptor_t logZ = g.temp(CUDNN_DATA_FLOAT, b, h, t, 1);
    g.pointwise(CUDNN_POINTWISE_LOG, Z, nullptr, nullptr, logZ);
    g.pointwise(CUDNN_POINTWISE_ADD, M, logZ, nullptr, stats);
    cudnnBackendDescriptor_t P = g.temp(sh.io, b, h, t, t); /* the second matmul reads P in the io type */
    g.pointwise(CUDNN_POINTWISE_DIV, E, Z, nullptr, P);
    /* O = P V */
    g.matmul(P, V, O);
    g.plan_it();
}

void build_backward(graph &g, const shape &sh, int sm_major) {
    const int64_t b = sh.B, h = sh.NH, t = sh.T, hd = sh.HD;
    int64_t d[4], s[4];
    sh.q(d, s);
    cudnnBackendDescriptor_t Q = g.tensor(UID_Q, sh.io, d, s);
    sh.k(d, s);
    shape::swap23(d, s);
    cudnnBackendDescriptor_t KT = g.tensor(UID_K, sh.io, d, s);
    const int64_t kd[4] = {d[0], d[1], d[3], d[2]}, ks[4] = {s[0], s[1], s[3], s[2]};
    sh.v(d, s);
    shape::swap23(d, s);
    cudnnBackendDescriptor_t VT = g.tensor(UID_V, sh.io, d, s);
    sh.o(d, s);
    cudnnBackendDescriptor_t O = g.tensor(UID_O, sh.io, d, s);
    cudnnBackendDescriptor_t dO = g.tensor(UID_DO, sh.io, d, s);
    cudnnBackendDescriptor_t dQ = g.tensor(UID_DQ, sh.io, d, s); /* gradients: packed scratch */
    sh.packed_kv(d, s);
    cudnnBackendDescriptor_t dK = g.tensor(UID_DK, sh.io, d, s);
    cudnnBackendDescriptor_t dV = g.tensor(UID_DV, sh.io, d, s);
    const int64_t sd[4] = {b, h, t, 1}, ss[4] = {h * t, t, 1, 1};
    cudnnBackendDescriptor_t stats = g.tensor(UID_STATS, CUDNN_DATA_FLOAT, sd, ss);
    cudnnBackendDescriptor_t scale = g.scalar(UID_SCALE), lowest = g.scalar(UID_LOWEST);
    cudnnBackendDescriptor_t one = g.scalar(UID_ONE);
    const int64_t transposed[4] = {h * t * t, t * t, 1, t};

    /* D = rowsum(dO * O) (times 1: the dropout-free form the engine expects) */
    cudnnBackendDescriptor_t dOO = g.temp(CUDNN_DATA_FLOAT, b, h, t, hd);
    g.pointwise(CUDNN_POINTWISE_MUL, dO, O, nullptr, dOO);
    cudnnBackendDescriptor_t Dsum = g.temp(CUDNN_DATA_FLOAT, b, h, t, 1);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dOO, Dsum);
    cudnnBackendDescriptor_t D = g.temp(CUDNN_DATA_FLOAT, b, h, t, 1);
    g.pointwise(CUDNN_POINTWISE_MUL, Dsum, one, nullptr, D);

    /* E = exp(scale Q K^T (masked) - stats), in the io type */
    cudnnBackendDescriptor_t S = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.matmul(Q, KT, S);
    cudnnBackendDescriptor_t scaled = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_MUL, S, scale, nullptr, scaled);
    cudnnBackendDescriptor_t masked = g.causal(scaled, lowest, b, h, t, t);
    cudnnBackendDescriptor_t shifted = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_SUB, masked, stats, nullptr, shifted);
    cudnnBackendDescriptor_t E = g.temp(sh.io, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_EXP, shifted, nullptr, nullptr, E);

    /* dV = E^T dO */
    cudnnBackendDescriptor_t ET = g.temp(sh.io, b, h, t, t, transposed);
    g.reshape(E, ET);
    g.matmul(ET, dO, dV);

    /* dP = (dO V^T * 1 - D) * E * scale */
    cudnnBackendDescriptor_t dOV = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.matmul(dO, VT, dOV);
    cudnnBackendDescriptor_t dOV1 = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_MUL, dOV, one, nullptr, dOV1);
    cudnnBackendDescriptor_t centered = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_SUB, dOV1, D, nullptr, centered);
    cudnnBackendDescriptor_t dS = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_MUL, centered, E, nullptr, dS);
    cudnnBackendDescriptor_t dP = g.temp(CUDNN_DATA_FLOAT, b, h, t, t);
    g.pointwise(CUDNN_POINTWISE_MUL, dS, scale, nullptr, dP);

    /* dK = dP^T Q */
    cudnnBackendDescriptor_t dPT = g.temp(CUDNN_DATA_FLOAT, b, h, t, t, transposed);
    g.reshape(dP, dPT);
    g.matmul(dPT, Q, dK);

    /* dQ = dP K; some engines want an f32 accumulator then a copy (as the
     * cudnn-frontend does: before Hopper, or when dP would not fit in 256 MiB) */
    cudnnBackendDescriptor_t K = g.temp(sh.io, kd[0], kd[1], kd[2], kd[3], ks);
    g.reshape(KT, K);
    const int64_t t64 = (t + 63) / 64 * 64;
    g.dq_accum = !(sm_major >= 9 && b * h * t64 * t64 * 2 <= (int64_t)256 << 20);
    if (g.dq_accum) {
        const int64_t ad[4] = {b, h, t, hd}, as[4] = {h * t * hd, t * hd, hd, 1};
        cudnnBackendDescriptor_t acc = g.tensor(UID_DQ_ACCUM, CUDNN_DATA_FLOAT, ad, as, false, true);
        g.matmul(dP, K, acc);
        g.pointwise(CUDNN_POINTWISE_IDENTITY, acc, nullptr, nullptr, dQ);
    } else {
        g.matmul(dP, K, dQ);
    }
    g.plan_it();
}

/* ---- plans, handles, scratch --------------------------------------------------- */

typedef std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int>
    plan_key; /* device, backward, B, T, NH, NKV, HD, ldq, ldk, ldv, dtype */

std::mutex lock;
std::map<int, cudnnHandle_t> handles;
std::map<plan_key, std::shared_ptr<graph>> plans;

/* the cached plan for a shape, built on first use; the handle is bound to stream */
int get_plan(const char *fn, bool backward, const shape &sh, int dtype, cudaStream_t stream,
             std::shared_ptr<graph> *out, cudnnHandle_t *handle_out) {
    int device = 0;
    int rc = fsdp_cuda_status(cudaGetDevice(&device), fn, "cudaGetDevice");
    if (rc) return rc;
    std::lock_guard<std::mutex> guard(lock);
    cudnnHandle_t &handle = handles[device];
    if (!handle) {
        cudnnStatus_t s = cudnnCreate(&handle);
        if (s != CUDNN_STATUS_SUCCESS) {
            handle = nullptr;
            return fsdp_error(FSDP_ERR_DEVICE, "%s: cudnnCreate failed: %s (cuDNN %zu)", fn, cudnnGetErrorString(s),
                              cudnnGetVersion());
        }
    }
    cudnnStatus_t s = cudnnSetStream(handle, stream);
    if (s != CUDNN_STATUS_SUCCESS)
        return fsdp_error(FSDP_ERR_DEVICE, "%s: cudnnSetStream failed: %s", fn, cudnnGetErrorString(s));
    const plan_key key(device, backward, sh.B, sh.T, sh.NH, sh.NKV, sh.HD, sh.ldq, sh.ldk, sh.ldv, dtype);
    auto it = plans.find(key);
    if (it == plans.end()) {
        auto g = std::make_shared<graph>();
        g->handle = handle;
        if (backward) {
            int major = 0;
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
            build_backward(*g, sh, major);
        } else {
            build_forward(*g, sh);
        }
        if (!g->ok())
            return fsdp_error(g->status == CUDNN_STATUS_NOT_SUPPORTED ||
                                      g->status == CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH
                                  ? (int)FSDP_ERR_UNSUPPORTED
                                  : (int)FSDP_ERR_DEVICE,
                              "%s: cuDNN %zu cannot run causal attention B=%lld T=%lld NH=%lld NKV=%lld HD=%lld: %s",
                              fn, cudnnGetVersion(), (long long)sh.B, (long long)sh.T, (long long)sh.NH,
                              (long long)sh.NKV, (long long)sh.HD, g->where.c_str());
        it = plans.emplace(key, g).first;
    }
    *out = it->second;
    *handle_out = handle;
    return FSDP_OK;
}

/* runs plan with the (uid, pointer) pairs and a workspace from the caching allocator */
int execute(const char *fn, graph &g, cudnnHandle_t handle, std::vector<int64_t> uids, std::vector<void *> ptrs,
            cudaStream_t stream) {
    int device = 0;
    cudaGetDevice(&device);
    void *workspace = g.workspace > 0 ? fsdp_cuda_alloc(device, g.workspace, stream) : nullptr;
    if (g.workspace > 0 && !workspace) return FSDP_ERR_OOM;
    cudnnBackendDescriptor_t pack = nullptr;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, (int64_t)uids.size(),
                                     uids.data());
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                     (int64_t)ptrs.size(), ptrs.data());
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendFinalize(pack);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendExecute(handle, g.plan, pack);
    if (pack) cudnnBackendDestroyDescriptor(pack);
    fsdp_cuda_free(workspace); /* stream-ordered reuse: safe to hand back now */
    if (s != CUDNN_STATUS_SUCCESS) {
        char detail[512] = "";
        cudnnGetLastErrorString(detail, sizeof detail);
        return fsdp_error(FSDP_ERR_DEVICE, "%s: cudnnBackendExecute failed: %s %s", fn, cudnnGetErrorString(s), detail);
    }
    return FSDP_OK;
}

int check_args(const char *fn, int B, int T, int NH, int NKV, int HD, int ldq, int ldk, int ldv, int dtype,
               const void *const *ptrs, int nptrs) {
    FSDP_CHECK_ARG(B > 0 && T > 0 && NH > 0 && NKV > 0 && HD > 0,
                   "%s: B (%d), T (%d), NH (%d), NKV (%d) and HD (%d) must be positive", fn, B, T, NH, NKV, HD);
    FSDP_CHECK_ARG(NH % NKV == 0, "%s: NH (%d) must be a multiple of NKV (%d)", fn, NH, NKV);
    FSDP_CHECK_ARG(ldq >= NH * HD && ldk >= NKV * HD && ldv >= NKV * HD,
                   "%s: token strides ldq %d, ldk %d, ldv %d are below the row widths", fn, ldq, ldk, ldv);
    FSDP_CHECK_ARG(dtype == FSDP_BF16 || dtype == FSDP_F16, "%s: dtype must be bf16 or f16, got %d", fn, dtype);
    for (int i = 0; i < nptrs; i++) FSDP_CHECK_ARG(ptrs[i], "%s: a tensor argument is NULL", fn);
    /* cuDNN's flash kernels read 16-byte vectors */
    bool aligned = HD % 8 == 0 && ldq % 8 == 0 && ldk % 8 == 0 && ldv % 8 == 0;
    for (int i = 0; i < nptrs; i++) aligned = aligned && (uintptr_t)ptrs[i] % 16 == 0;
    if (!aligned)
        return fsdp_error(FSDP_ERR_UNSUPPORTED,
                          "%s: cuDNN flash attention needs HD and token strides that are multiples of 8 and "
                          "16-byte aligned pointers (HD %d, ldq %d, ldk %d, ldv %d)", fn, HD, ldq, ldk, ldv);
    return FSDP_OK;
}

/* ---- kernels: add a contiguous gradient into a strided one ---------------------- */

/* dst[row * ld + c] += src[row * width + c] for c < width, 16-bit data */
static __global__ void accumulate_rows_kernel(void *dst, const void *src, int64_t rows, int width, int ld,
                                              int dtype) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * width) return;
    const int64_t row = i / width, c = i % width, at = row * ld + c;
    fsdp_store_from_f32(dst, at, dtype, fsdp_load_as_f32(dst, at, dtype) + fsdp_load_as_f32(src, i, dtype));
}

int accumulate(const char *fn, void *dst, const void *src, int64_t rows, int width, int ld, int dtype,
               cudaStream_t stream) {
    if (!dst) return FSDP_OK;
    const int64_t blocks = fsdp_cuda_grid(rows * width, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(accumulate_rows_kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, dst, src, rows, width, ld,
                dtype);
    return fsdp_cuda_launched(fn);
}

}  // namespace

/* ---- launchers -------------------------------------------------------------------- */

int fsdp_attention_forward_cudnn(void *out, float *lse, const void *q, const void *k, const void *v, int B,
                                 int T, int NH, int NKV, int HD, int ldq, int ldk, int ldv, float scale,
                                 int dtype, fsdp_stream stream) {
    const char *fn = "fsdp_attention_forward_cudnn";
    const void *ptrs[] = {out, lse, q, k, v};
    int rc = check_args(fn, B, T, NH, NKV, HD, ldq, ldk, ldv, dtype, ptrs, 5);
    if (rc) return rc;
    const shape sh{B, T, NH, NKV, HD, ldq, ldk, ldv, dtype == FSDP_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF};
    std::shared_ptr<graph> g;
    cudnnHandle_t handle;
    if ((rc = get_plan(fn, false, sh, dtype, stream, &g, &handle))) return rc;
    float scale_value = scale, lowest = std::numeric_limits<float>::lowest();
    return execute(fn, *g, handle, {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_LOWEST},
                   {(void *)q, (void *)k, (void *)v, out, lse, &scale_value, &lowest}, stream);
}

int fsdp_attention_backward_cudnn(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                                  const void *v, const void *out, const float *lse, int B, int T, int NH, int NKV,
                                  int HD, int ldq, int ldk, int ldv, float scale, int dtype, fsdp_stream stream) {
    const char *fn = "fsdp_attention_backward_cudnn";
    const void *ptrs[] = {dout, q, k, v, out, lse};
    int rc = check_args(fn, B, T, NH, NKV, HD, ldq, ldk, ldv, dtype, ptrs, 6);
    if (rc) return rc;
    if (!dq && !dk && !dv) return FSDP_OK;
    /* cuDNN writes gradients; ours accumulate, so cuDNN writes contiguous
     * scratch ([B, T, heads, HD]) that is then added in with the caller's strides */
    const shape sh{B, T, NH, NKV, HD, ldq, ldk, ldv, dtype == FSDP_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF};
    std::shared_ptr<graph> g;
    cudnnHandle_t handle;
    if ((rc = get_plan(fn, true, sh, dtype, stream, &g, &handle))) return rc;
    int device = 0;
    cudaGetDevice(&device);
    const int64_t rows = (int64_t)B * T, nq = rows * NH * HD, nkv = rows * NKV * HD;
    void *sq = fsdp_cuda_alloc(device, 2 * nq, stream), *sk = fsdp_cuda_alloc(device, 2 * nkv, stream);
    void *sv = fsdp_cuda_alloc(device, 2 * nkv, stream);
    void *acc = g->dq_accum ? fsdp_cuda_alloc(device, 4 * nq, stream) : nullptr;
    rc = sq && sk && sv && (acc || !g->dq_accum) ? FSDP_OK : FSDP_ERR_OOM;
    if (!rc && acc) rc = fsdp_cuda_status(cudaMemsetAsync(acc, 0, 4 * nq, stream), fn, "cudaMemsetAsync");
    if (!rc) {
        float scale_value = scale, lowest = std::numeric_limits<float>::lowest(), one = 1.0f;
        std::vector<int64_t> uids = {UID_Q, UID_K, UID_V, UID_O, UID_DO, UID_STATS, UID_DQ, UID_DK, UID_DV,
                                     UID_SCALE, UID_LOWEST, UID_ONE};
        std::vector<void *> bound = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)dout, (void *)lse,
                                     sq, sk, sv, &scale_value, &lowest, &one};
        if (acc) {
            uids.push_back(UID_DQ_ACCUM);
            bound.push_back(acc);
        }
        rc = execute(fn, *g, handle, uids, bound, stream);
    }
    if (!rc) rc = accumulate(fn, dq, sq, rows, NH * HD, ldq, dtype, stream);
    if (!rc) rc = accumulate(fn, dk, sk, rows, NKV * HD, ldk, dtype, stream);
    if (!rc) rc = accumulate(fn, dv, sv, rows, NKV * HD, ldv, dtype, stream);
    fsdp_cuda_free(sq);
    fsdp_cuda_free(sk);
    fsdp_cuda_free(sv);
    fsdp_cuda_free(acc);
    return rc;
}
