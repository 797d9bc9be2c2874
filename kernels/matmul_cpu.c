/* matmul_cpu.c - dense matmul with optional bias, forward and backward, via
 * OpenBLAS sgemm (row-major). op(a) is [M,K]: a is stored [M,K], or [K,M]
 * when trans_a. op(b) is [K,N]: b is stored [K,N], or [N,K] when trans_b. */
#include <cblas.h>
#include <omp.h>
#include <string.h>
#include "internal.h"

/* columns per block when summing dout over rows for dbias */
enum { DBIAS_BLOCK = 64 };

/* Threads per product. A product of fewer than GEMM_PAR_MIN_FLOPS runs on
 * one thread: it takes well under a millisecond there, and a second thread
 * costs a wake-up and a join that, on a machine whose other core is busy,
 * waits for the scheduler to give that thread a time slice (milliseconds).
 * OpenBLAS's own cut-off (M N K <= 262144, half a MFLOP) is for idle
 * machines. Debian's OpenBLAS is the OpenMP build: it takes OpenMP's thread
 * count at each call, so the count is lowered around the call and restored. */
#define GEMM_PAR_MIN_FLOPS 3.2e7

static CBLAS_TRANSPOSE blas_op(int trans) { return trans ? CblasTrans : CblasNoTrans; }

/* cblas_sgemm (row-major) on the threads its size deserves */
static void sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, const float *a, int lda,
                  const float *b, int ldb, float beta, float *c, int ldc) {
    const int nt = omp_get_max_threads();
    const int one = nt > 1 && 2.0 * M * N * K < GEMM_PAR_MIN_FLOPS;
    if (one) omp_set_num_threads(1);
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, 1.0f, a, lda, b, ldb, beta, c, ldc);
    if (one) omp_set_num_threads(nt);
}

static int check_dims(const char *fn, int M, int N, int K) {
    FSDP_CHECK_ARG(M > 0, "%s: M must be > 0, got %d", fn, M);
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(K > 0, "%s: K must be > 0, got %d", fn, K);
    return FSDP_OK;
}

int fsdp_matmul_forward_cpu(float *out, const float *a, const float *b, const float *bias,
                            int M, int N, int K, int trans_a, int trans_b, int accumulate) {
    const char *fn = "fsdp_matmul_forward_cpu";
    int rc = check_dims(fn, M, N, K);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && a && b, "%s: out, a and b must not be NULL", fn);

    /* the bias goes in first, so sgemm can add the product with beta = 1 */
    float beta = accumulate ? 1.0f : 0.0f;
    if (bias) {
        #pragma omp parallel for if ((int64_t)M * N > 65536)
        for (int m = 0; m < M; m++) {
            float *row = out + (int64_t)m * N;
            if (accumulate)
                for (int n = 0; n < N; n++) row[n] += bias[n];
            else
                memcpy(row, bias, sizeof(float) * N);
        }
        beta = 1.0f;
    }

    /* out = op(a) @ op(b) + beta * out; leading dims are the stored row lengths */
    sgemm(blas_op(trans_a), blas_op(trans_b), M, N, K, a, trans_a ? M : K, b, trans_b ? K : N, beta,
          out, N);
    return FSDP_OK;
}

int fsdp_matmul_backward_cpu(float *da, float *db, float *dbias, const float *dout,
                             const float *a, const float *b,
                             int M, int N, int K, int trans_a, int trans_b) {
    const char *fn = "fsdp_matmul_backward_cpu";
    int rc = check_dims(fn, M, N, K);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    FSDP_CHECK_ARG(!da || b, "%s: b must not be NULL when da is wanted", fn);
    FSDP_CHECK_ARG(!db || a, "%s: a must not be NULL when db is wanted", fn);
    int lda = trans_a ? M : K, ldb = trans_b ? K : N;

    /* d op(a) = dout @ op(b)^T, [M,K]; when a is stored transposed, write its
     * transpose instead: da[K,M] += op(b) @ dout^T */
    if (da) {
        if (!trans_a)
            sgemm(CblasNoTrans, blas_op(!trans_b), M, K, N, dout, N, b, ldb, 1.0f, da, K);
        else
            sgemm(blas_op(trans_b), CblasTrans, K, M, N, b, ldb, dout, N, 1.0f, da, M);
    }

    /* d op(b) = op(a)^T @ dout, [K,N]; when b is stored transposed, write
     * db[N,K] += dout^T @ op(a) */
    if (db) {
        if (!trans_b)
            sgemm(blas_op(!trans_a), CblasNoTrans, K, N, M, a, lda, dout, N, 1.0f, db, N);
        else
            sgemm(CblasTrans, blas_op(trans_a), N, K, M, dout, N, a, lda, 1.0f, db, K);
    }

    /* dbias += column sums of dout; each thread owns a block of columns and
     * walks the rows in order, so the sums do not depend on the thread count */
    if (dbias) {
        #pragma omp parallel for if ((int64_t)M * N > 65536)
        for (int n0 = 0; n0 < N; n0 += DBIAS_BLOCK) {
            int width = N - n0 < DBIAS_BLOCK ? N - n0 : DBIAS_BLOCK;
            float sum[DBIAS_BLOCK] = {0};
            for (int m = 0; m < M; m++) {
                const float *row = dout + (int64_t)m * N + n0;
                for (int j = 0; j < width; j++) sum[j] += row[j];
            }
            for (int j = 0; j < width; j++) dbias[n0 + j] += sum[j];
        }
    }
    return FSDP_OK;
}
