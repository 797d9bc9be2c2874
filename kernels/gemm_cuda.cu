/* gemm_cuda.cu - f32 GEMM on the CUDA cores (SIMT), tiled through shared
 * memory: the fallback when cuBLASLt cannot be used, and the GEMM of the
 * emulated backend. Semantics of fsdp_matmul_forward_cpu /
 * fsdp_matmul_backward_cpu: row-major, op(a) [M, K], op(b) [K, N], bias [N],
 * backward accumulating into da, db, dbias and skipping NULL ones.
 *
 * One kernel computes every product: C(i, j) (+)= sum_p A(i, p) B(p, j)
 * (+ bias[j]) with A, B and C given by a base pointer and a stride per index,
 * so the transposes of the forward and both backward products are strides,
 * not copies. A block computes a 128 x 128 tile of C with 256 threads, each
 * an 8 x 8 grid of outputs (rows ty + 16r, columns tx + 16c); the K axis is
 * walked 16 at a time through shared memory tiles of A and B, loaded so that
 * consecutive threads read consecutive addresses of whichever index of A (B)
 * has stride 1. A C whose rows are strided (a transposed da or db) is
 * computed as C^T = B^T A^T instead, so the stores are row-contiguous too.
 *
 * Determinism and rounding: each output is accumulated by one thread as
 * acc = fmaf(A(i, p), B(p, j), acc) for p = 0, 1, ..., K-1 in order, then
 * out = acc + (old out if accumulating) + bias: the same bits on every run,
 * under the emulation and on any GPU (fmaf rounds once everywhere), for any
 * tiling. It differs from OpenBLAS (another summation order) by rounding.
 * dbias is fsdp_bias_backward_cuda's column sum (bias_cuda.cu). */
#include "cuda_common.cuh"

enum {
    GEMM_BM = 128,     /* rows of C per block */
    GEMM_BN = 128,     /* columns of C per block */
    GEMM_BK = 16,      /* K per shared-memory step */
    GEMM_TDIM = 16,    /* the block is 16 x 16 threads */
    GEMM_THREADS = GEMM_TDIM * GEMM_TDIM,
    GEMM_RM = GEMM_BM / GEMM_TDIM, /* outputs per thread: rows */
    GEMM_RN = GEMM_BN / GEMM_TDIM, /* and columns */
    GEMM_PAD = 4       /* shared row padding against bank conflicts on the loads */
};

/* C(i, j) = c[i * c_row + j * c_col] for i < rows, j < cols;
 * A(i, p) = a[i * a_row + p * a_k], B(p, j) = b[p * b_k + j * b_col], p < inner */
struct gemm_problem {
    float *c;
    const float *a, *b, *bias; /* bias: [cols] or NULL */
    int64_t c_row, c_col, a_row, a_k, b_k, b_col;
    int rows, cols, inner, accumulate;
};

/* ---- kernels ------------------------------------------------------------ */

static __global__ void __launch_bounds__(GEMM_THREADS) gemm_kernel(const gemm_problem p) {
    __shared__ float as[GEMM_BK][GEMM_BM + GEMM_PAD]; /* as[k][i] = A(i0 + i, k0 + k) */
    __shared__ float bs[GEMM_BK][GEMM_BN + GEMM_PAD]; /* bs[k][j] = B(k0 + k, j0 + j) */
    const int tid = threadIdx.x, tx = tid % GEMM_TDIM, ty = tid / GEMM_TDIM;
    const int64_t i0 = (int64_t)blockIdx.y * GEMM_BM, j0 = (int64_t)blockIdx.x * GEMM_BN;
    float acc[GEMM_RM][GEMM_RN];
    for (int r = 0; r < GEMM_RM; r++)
        for (int c = 0; c < GEMM_RN; c++) acc[r][c] = 0.0f;

    for (int k0 = 0; k0 < p.inner; k0 += GEMM_BK) {
        /* 1. the tiles; outside the matrices they hold zeros (never used) */
        for (int e = tid; e < GEMM_BM * GEMM_BK; e += GEMM_THREADS) {
            const int i = p.a_k == 1 ? e / GEMM_BK : e % GEMM_BM;
            const int k = p.a_k == 1 ? e % GEMM_BK : e / GEMM_BM;
            const int64_t gi = i0 + i;
            const int gk = k0 + k;
            as[k][i] = gi < p.rows && gk < p.inner ? p.a[gi * p.a_row + gk * p.a_k] : 0.0f;
        }
        for (int e = tid; e < GEMM_BK * GEMM_BN; e += GEMM_THREADS) {
            const int j = p.b_col == 1 ? e % GEMM_BN : e / GEMM_BK;
            const int k = p.b_col == 1 ? e / GEMM_BN : e % GEMM_BK;
            const int64_t gj = j0 + j;
            const int gk = k0 + k;
            bs[k][j] = gj < p.cols && gk < p.inner ? p.b[gk * p.b_k + gj * p.b_col] : 0.0f;
        }
        __syncthreads();
        /* 2. the 8 x 8 outputs of this thread take the next K terms, in order */
        const int kn = p.inner - k0 < GEMM_BK ? p.inner - k0 : GEMM_BK;
        for (int k = 0; k < kn; k++) {
            float ar[GEMM_RM], br[GEMM_RN];
            for (int r = 0; r < GEMM_RM; r++) ar[r] = as[k][ty + GEMM_TDIM * r];
            for (int c = 0; c < GEMM_RN; c++) br[c] = bs[k][tx + GEMM_TDIM * c];
            for (int r = 0; r < GEMM_RM; r++)
                for (int c = 0; c < GEMM_RN; c++) acc[r][c] = fmaf(ar[r], br[c], acc[r][c]);
        }
        __syncthreads();
    }

    /* 3. out = product + (old out) + bias */
    for (int r = 0; r < GEMM_RM; r++) {
        const int64_t i = i0 + ty + GEMM_TDIM * r;
        if (i >= p.rows) break;
        for (int c = 0; c < GEMM_RN; c++) {
            const int64_t j = j0 + tx + GEMM_TDIM * c;
            if (j >= p.cols) break;
            float *o = p.c + i * p.c_row + j * p.c_col;
            float base = p.accumulate ? *o : 0.0f;
            if (p.bias) base += p.bias[j];
            *o = acc[r][c] + base;
        }
    }
}

/* ---- launchers ---------------------------------------------------------- */

static int check_dims(const char *fn, int M, int N, int K) {
    FSDP_CHECK_ARG(M > 0, "%s: M must be > 0, got %d", fn, M);
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(K > 0, "%s: K must be > 0, got %d", fn, K);
    return FSDP_OK;
}

static int gemm(const char *fn, gemm_problem p, fsdp_stream stream) {
    if (p.c_col != 1 && !p.bias) { /* C^T = B^T A^T: rows of the stored C are contiguous */
        gemm_problem t = p;
        t.rows = p.cols;
        t.cols = p.rows;
        t.c_row = p.c_col;
        t.c_col = p.c_row;
        t.a = p.b;
        t.a_row = p.b_col;
        t.a_k = p.b_k;
        t.b = p.a;
        t.b_k = p.a_k;
        t.b_col = p.a_row;
        p = t;
    }
    const int64_t bx = (p.cols + GEMM_BN - 1) / GEMM_BN, by = (p.rows + GEMM_BM - 1) / GEMM_BM;
    FSDP_CUDA_CHECK_GRID(fn, bx);
    FSDP_CHECK_ARG(by <= 65535, "%s: %d rows exceed the grid limit of %d", fn, p.rows,
                   65535 * GEMM_BM);
    FSDP_LAUNCH(gemm_kernel, dim3((unsigned)bx, (unsigned)by), GEMM_THREADS, 0, stream, p);
    return fsdp_cuda_launched(fn);
}

int fsdp_matmul_forward_simt_cuda(float *out, const float *a, const float *b, const float *bias,
                                  int M, int N, int K, int trans_a, int trans_b, int accumulate,
                                  fsdp_stream stream) {
    const char *fn = "fsdp_matmul_forward_simt_cuda";
    int rc = check_dims(fn, M, N, K);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && a && b, "%s: out, a and b must not be NULL", fn);
    /* out[M, N] (+)= op(a) op(b) (+ bias): a stored [M, K] or [K, M], b [K, N] or [N, K] */
    gemm_problem p = {};
    p.c = out;
    p.c_row = N;
    p.c_col = 1;
    p.a = a;
    p.a_row = trans_a ? 1 : K;
    p.a_k = trans_a ? M : 1;
    p.b = b;
    p.b_k = trans_b ? 1 : N;
    p.b_col = trans_b ? K : 1;
    p.bias = bias;
    p.rows = M;
    p.cols = N;
    p.inner = K;
    p.accumulate = accumulate != 0;
    return gemm(fn, p, stream);
}

int fsdp_matmul_backward_simt_cuda(float *da, float *db, float *dbias, const float *dout,
                                   const float *a, const float *b, int M, int N, int K, int trans_a,
                                   int trans_b, fsdp_stream stream) {
    const char *fn = "fsdp_matmul_backward_simt_cuda";
    int rc = check_dims(fn, M, N, K);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    FSDP_CHECK_ARG(!da || b, "%s: b must not be NULL when da is wanted", fn);
    FSDP_CHECK_ARG(!db || a, "%s: a must not be NULL when db is wanted", fn);

    /* d op(a)[m, k] += sum_n dout[m, n] op(b)[k, n], into da's storage layout */
    if (da) {
        gemm_problem p = {};
        p.c = da;
        p.c_row = trans_a ? 1 : K;
        p.c_col = trans_a ? M : 1;
        p.a = dout;
        p.a_row = N;
        p.a_k = 1;
        p.b = b;
        p.b_k = trans_b ? K : 1;
        p.b_col = trans_b ? 1 : N;
        p.rows = M;
        p.cols = K;
        p.inner = N;
        p.accumulate = 1;
        if ((rc = gemm(fn, p, stream))) return rc;
    }

    /* d op(b)[k, n] += sum_m op(a)[m, k] dout[m, n], into db's storage layout */
    if (db) {
        gemm_problem p = {};
        p.c = db;
        p.c_row = trans_b ? 1 : N;
        p.c_col = trans_b ? K : 1;
        p.a = a;
        p.a_row = trans_a ? M : 1;
        p.a_k = trans_a ? 1 : K;
        p.b = dout;
        p.b_k = N;
        p.b_col = 1;
        p.rows = K;
        p.cols = N;
        p.inner = M;
        p.accumulate = 1;
        if ((rc = gemm(fn, p, stream))) return rc;
    }

    /* dbias += column sums of dout (its errors name fsdp_bias_backward_cuda) */
    if (dbias) return fsdp_bias_backward_cuda(dbias, dout, M, N, FSDP_F32, stream);
    return FSDP_OK;
}
