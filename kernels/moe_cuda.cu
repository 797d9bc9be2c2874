/* moe_cuda.cu - the routing pieces of a mixture-of-experts layer on the GPU,
 * the twins of moe_cpu.c: gather rows by index, scatter-add rows by index,
 * row softmax, per-row scale and top-k selection, each with its backward.
 * Per-element formulas: moe_math.h, shared with the CPU kernels.
 *
 * Indices are NOT range-checked up front, unlike on the CPU: they are in
 * device memory, and a check the host can see would need a copy back and a
 * stream sync on every call. The caller guarantees the range (the routing
 * indices come from top-k, which only produces columns in [0, C), or from
 * the host, where the Lua layer can check them before the upload). The
 * kernels still never touch memory outside the buffers, and what a bad
 * index does is fixed: in the gather forward its output row is NaN, every
 * add from or into it is skipped (no gradient), as embedding ids do.
 *
 * Determinism: no float atomics anywhere. Where several rows add into one
 * destination row (scatter-add forward, gather backward) every destination
 * element has exactly one owning thread that adds the source rows in index
 * order, the CPU's order, so those results are the CPU's bits. Top-k, the
 * row gathers, the row scale and every elementwise update are the CPU's bits
 * too. The row reductions of softmax and the row-scale dscale sum in double
 * over a warp in a fixed shuffle order (not the CPU's sequential order), so
 * they are the same on every run and agree with the CPU to rounding. */
#include "cuda_common.cuh"
#include "moe_math.h"

enum {
    MOE_THREADS = 256,                 /* threads per block */
    MOE_WARPS = MOE_THREADS / 32,      /* rows per block for warp-per-row kernels */
    ADD_CHANNELS = 32,                 /* add_rows: channels per block (one warp) */
    ADD_SLICES = MOE_THREADS / 32,     /* add_rows: destination slices per block */
    ADD_TARGET_THREADS = 65536         /* add_rows: about this many owners in all */
};

/* ---- kernels ------------------------------------------------------------ */

/* dst[m, :] (+)= src[idx[m], :], one thread per element of dst */
static __global__ void take_rows_kernel(float *dst, const float *src, const int32_t *idx, int M,
                                        int N, int C, int accumulate) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)M * C) return;
    const int m = (int)(i / C), c = (int)(i % C);
    const int32_t id = idx[m];
    const bool ok = id >= 0 && id < N;
    if (accumulate) {
        if (ok) dst[i] += src[(int64_t)id * C + c];
    } else {
        dst[i] = ok ? src[(int64_t)id * C + c] : NAN;
    }
}

/* dst[idx[m], :] += src[m, :] for m in index order. Thread (x, y) of block
 * (bx, by) owns channel bx*32 + x of the destination rows of slice
 * s = by*8 + y, rows [s*rows_per_slice, (s+1)*rows_per_slice), and walks
 * every m in order, adding the rows whose index falls in its slice. The
 * indices are staged through shared memory a block-full at a time. */
static __global__ void add_rows_kernel(float *dst, const float *src, const int32_t *idx, int M,
                                       int N, int C, int rows_per_slice) {
    __shared__ int32_t chunk[ADD_CHANNELS * ADD_SLICES];
    const int tid = threadIdx.y * ADD_CHANNELS + threadIdx.x;
    const int c = blockIdx.x * ADD_CHANNELS + threadIdx.x;
    const int64_t lo = ((int64_t)blockIdx.y * ADD_SLICES + threadIdx.y) * rows_per_slice;
    const int64_t hi = lo + rows_per_slice < N ? lo + rows_per_slice : N;
    const bool owner = c < C && lo < hi;
    for (int64_t m0 = 0; m0 < M; m0 += ADD_CHANNELS * ADD_SLICES) {
        const int count = M - m0 < ADD_CHANNELS * ADD_SLICES ? (int)(M - m0) : ADD_CHANNELS * ADD_SLICES;
        if (tid < count) chunk[tid] = idx[m0 + tid];
        __syncthreads();
        if (owner)
            for (int j = 0; j < count; j++) {
                const int32_t n = chunk[j]; /* out of [0, N): in no slice, skipped */
                if (n >= lo && n < hi) dst[(int64_t)n * C + c] += src[(m0 + j) * C + c];
            }
        __syncthreads();
    }
}

/* one warp per row (the warp exits as a whole past the last row): row max,
 * exponentials and their sum in double, then the normalization. In place
 * (out == inp) works: a lane writes only its own elements, after every lane
 * has read the row for the max. */
static __global__ void softmax_forward_kernel(float *out, const float *inp, int N, int C) {
    const int64_t row = (int64_t)blockIdx.x * MOE_WARPS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *x = inp + row * C;
    float *y = out + row * C;
    /* 1. the row max, so exp never overflows */
    float m = -INFINITY;
    for (int c = lane; c < C; c += 32) m = fsdp_moe_max(m, x[c]);
    for (int o = 16; o > 0; o >>= 1) m = fsdp_moe_max(m, __shfl_xor_sync(FSDP_FULL_MASK, m, o));
    /* 2. exponentials and their sum (in double) */
    double s = 0.0;
    for (int c = lane; c < C; c += 32) {
        const float e = fsdp_softmax_exp(x[c], m);
        y[c] = e;
        s += e;
    }
    s = fsdp_warp_sum_d(s);
    /* 3. normalize */
    const float inv = (float)(1.0 / s);
    for (int c = lane; c < C; c += 32) y[c] *= inv;
}

/* dinp += y * (dout - <dout, y>), one warp per row */
static __global__ void softmax_backward_kernel(float *dinp, const float *dout, const float *out,
                                               int N, int C) {
    const int64_t row = (int64_t)blockIdx.x * MOE_WARPS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *dy = dout + row * C, *y = out + row * C;
    float *dx = dinp + row * C;
    double dot = 0.0;
    for (int c = lane; c < C; c += 32) dot += (double)dy[c] * y[c];
    const float d = (float)fsdp_warp_sum_d(dot);
    for (int c = lane; c < C; c += 32) dx[c] = fsdp_softmax_dinp(dx[c], y[c], dy[c], d);
}

/* out[n, c] = inp[n, c] * scale[n], one thread per element */
static __global__ void row_scale_forward_kernel(float *out, const float *inp, const float *scale,
                                                int N, int C) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (int64_t)N * C) out[i] = inp[i] * scale[i / C];
}

/* dinp[n, c] += dout[n, c] * scale[n], one thread per element */
static __global__ void row_scale_backward_input_kernel(float *dinp, const float *dout,
                                                       const float *scale, int N, int C) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (int64_t)N * C) dinp[i] = fsdp_row_scale_dinp(dinp[i], dout[i], scale[i / C]);
}

/* dscale[n] += <dout[n, :], inp[n, :]> in double, one warp per row */
static __global__ void row_scale_backward_scale_kernel(float *dscale, const float *dout,
                                                       const float *inp, int N, int C) {
    const int64_t row = (int64_t)blockIdx.x * MOE_WARPS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *dy = dout + row * C, *x = inp + row * C;
    double dot = 0.0;
    for (int c = lane; c < C; c += 32) dot += (double)dy[c] * x[c];
    dot = fsdp_warp_sum_d(dot);
    if (lane == 0) dscale[row] += (float)dot;
}

/* (va, ca) comes before (vb, cb) in the top-k order: ranks before, or ranks
 * equal and the lower column. A strict total order over the columns of a
 * row; column -1 stands for "none" and comes after every column. */
static __device__ __forceinline__ bool topk_before(float va, int ca, float vb, int cb) {
    if (cb < 0) return ca >= 0;
    if (ca < 0) return false;
    if (fsdp_topk_ranks_before(va, vb)) return true;
    if (fsdp_topk_ranks_before(vb, va)) return false;
    return ca < cb;
}

/* One warp per row, K rounds: round j picks the first element of the order
 * that comes strictly after the pick of round j - 1 (each lane the best of
 * its columns, then a butterfly over the lanes; the order is total, so every
 * lane ends with the same pick). That is the CPU's selection: the first K
 * of the row sorted by value, NaN first, ties to the lower column, with the
 * chosen element's bits. */
static __global__ void topk_forward_kernel(float *values, int32_t *indices, const float *inp, int N,
                                           int C, int K) {
    const int64_t row = (int64_t)blockIdx.x * MOE_WARPS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *x = inp + row * C;
    float pv = 0.0f; /* the previous pick (pc = -1: none yet) */
    int pc = -1;
    for (int j = 0; j < K; j++) {
        float bv = 0.0f;
        int bc = -1;
        for (int c = lane; c < C; c += 32) {
            const float v = x[c];
            if (pc >= 0 && !topk_before(pv, pc, v, c)) continue; /* taken already */
            if (topk_before(v, c, bv, bc)) {
                bv = v;
                bc = c;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(FSDP_FULL_MASK, bv, o);
            const int oc = __shfl_xor_sync(FSDP_FULL_MASK, bc, o);
            if (topk_before(ov, oc, bv, bc)) {
                bv = ov;
                bc = oc;
            }
        }
        if (lane == 0) {
            values[row * K + j] = bv;
            indices[row * K + j] = bc;
        }
        pv = bv;
        pc = bc;
    }
}

/* dinp[n, indices[n, j]] += dvalues[n, j] for j in order, one thread per
 * row (a repeated column adds in the CPU's order) */
static __global__ void topk_backward_kernel(float *dinp, const float *dvalues,
                                            const int32_t *indices, int N, int C, int K) {
    const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    float *dx = dinp + row * C;
    for (int j = 0; j < K; j++) {
        const int32_t c = indices[row * K + j];
        if (c >= 0 && c < C) dx[c] += dvalues[row * K + j];
    }
}

/* ---- launchers ---------------------------------------------------------- */

/* the CPU's checks but the index scan (see the top of the file) */
static int check_rows(const char *fn, const int32_t *idx, int M, int N, int C) {
    FSDP_CHECK_ARG(M >= 0, "%s: M must be >= 0, got %d", fn, M);
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    FSDP_CHECK_ARG(idx || M == 0, "%s: idx must not be NULL", fn);
    return FSDP_OK;
}

static int check_nc(const char *fn, int N, int C) {
    FSDP_CHECK_ARG(N > 0, "%s: N must be > 0, got %d", fn, N);
    FSDP_CHECK_ARG(C > 0, "%s: C must be > 0, got %d", fn, C);
    return FSDP_OK;
}

static int take_rows(const char *fn, float *dst, const float *src, const int32_t *idx, int M, int N,
                     int C, int accumulate, fsdp_stream stream) {
    const int64_t blocks = fsdp_cuda_grid((int64_t)M * C, MOE_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(take_rows_kernel, (unsigned)blocks, MOE_THREADS, 0, stream, dst, src, idx, M, N, C,
                accumulate);
    return fsdp_cuda_launched(fn);
}

/* the slice count depends on the shapes only (and the result on neither) */
static int add_rows(const char *fn, float *dst, const float *src, const int32_t *idx, int M, int N,
                    int C, fsdp_stream stream) {
    const int64_t bx = (C + ADD_CHANNELS - 1) / ADD_CHANNELS;
    int64_t by = (ADD_TARGET_THREADS + bx * MOE_THREADS - 1) / (bx * MOE_THREADS);
    const int64_t by_max = (N + ADD_SLICES - 1) / ADD_SLICES; /* at least one row per slice */
    by = by < by_max ? by : by_max;
    by = by < 65535 ? by : 65535;
    const int64_t slices = by * ADD_SLICES;
    const int rows_per_slice = (int)((N + slices - 1) / slices);
    FSDP_CUDA_CHECK_GRID(fn, bx);
    FSDP_LAUNCH(add_rows_kernel, dim3((unsigned)bx, (unsigned)by), dim3(ADD_CHANNELS, ADD_SLICES), 0,
                stream, dst, src, idx, M, N, C, rows_per_slice);
    return fsdp_cuda_launched(fn);
}

static unsigned row_blocks(int N) { return (unsigned)((N + MOE_WARPS - 1) / MOE_WARPS); }

/* ---- gather rows ---------------------------------------------------------- */

int fsdp_gather_rows_forward_cuda(float *out, const float *inp, const int32_t *idx, int M, int N,
                                  int C, fsdp_stream stream) {
    const char *fn = "fsdp_gather_rows_forward_cuda";
    int rc = check_rows(fn, idx, M, N, C);
    if (rc) return rc;
    if (M == 0) return FSDP_OK;
    FSDP_CHECK_ARG(out && inp, "%s: out and inp must not be NULL", fn);
    /* one source row per output row */
    return take_rows(fn, out, inp, idx, M, N, C, 0, stream);
}

int fsdp_gather_rows_backward_cuda(float *dinp, const float *dout, const int32_t *idx, int M, int N,
                                   int C, fsdp_stream stream) {
    const char *fn = "fsdp_gather_rows_backward_cuda";
    int rc = check_rows(fn, idx, M, N, C);
    if (rc) return rc;
    if (M == 0 || !dinp) return FSDP_OK;
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    /* rows taken more than once sum their gradients, in index order */
    return add_rows(fn, dinp, dout, idx, M, N, C, stream);
}

/* ---- scatter-add rows ----------------------------------------------------- */

int fsdp_scatter_add_rows_forward_cuda(float *out, const float *src, const int32_t *idx, int M,
                                       int N, int C, fsdp_stream stream) {
    const char *fn = "fsdp_scatter_add_rows_forward_cuda";
    int rc = check_rows(fn, idx, M, N, C);
    if (rc) return rc;
    if (M == 0) return FSDP_OK;
    FSDP_CHECK_ARG(out && src, "%s: out and src must not be NULL", fn);
    FSDP_CHECK_ARG(out != src, "%s: out must not be src", fn);
    /* out already holds the base; add each source row to its destination */
    return add_rows(fn, out, src, idx, M, N, C, stream);
}

int fsdp_scatter_add_rows_backward_cuda(float *dsrc, const float *dout, const int32_t *idx, int M,
                                        int N, int C, fsdp_stream stream) {
    const char *fn = "fsdp_scatter_add_rows_backward_cuda";
    int rc = check_rows(fn, idx, M, N, C);
    if (rc) return rc;
    if (M == 0 || !dsrc) return FSDP_OK;
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    FSDP_CHECK_ARG(dsrc != dout, "%s: dsrc must not be dout (backward accumulates)", fn);
    /* each source row receives the gradient of the row it was added to */
    return take_rows(fn, dsrc, dout, idx, M, N, C, 1, stream);
}

/* ---- row softmax ---------------------------------------------------------- */

int fsdp_softmax_forward_cuda(float *out, const float *inp, int N, int C, fsdp_stream stream) {
    const char *fn = "fsdp_softmax_forward_cuda";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && inp, "%s: out and inp must not be NULL", fn);
    FSDP_LAUNCH(softmax_forward_kernel, row_blocks(N), MOE_THREADS, 0, stream, out, inp, N, C);
    return fsdp_cuda_launched(fn);
}

int fsdp_softmax_backward_cuda(float *dinp, const float *dout, const float *out, int N, int C,
                               fsdp_stream stream) {
    const char *fn = "fsdp_softmax_backward_cuda";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    if (!dinp) return FSDP_OK;
    FSDP_CHECK_ARG(dout && out, "%s: dout and out must not be NULL", fn);
    FSDP_CHECK_ARG(dinp != dout, "%s: dinp must not be dout (backward accumulates)", fn);
    FSDP_LAUNCH(softmax_backward_kernel, row_blocks(N), MOE_THREADS, 0, stream, dinp, dout, out, N, C);
    return fsdp_cuda_launched(fn);
}

/* ---- per-row scale -------------------------------------------------------- */

int fsdp_row_scale_forward_cuda(float *out, const float *inp, const float *scale, int N, int C,
                                fsdp_stream stream) {
    const char *fn = "fsdp_row_scale_forward_cuda";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(out && inp && scale, "%s: out, inp and scale must not be NULL", fn);
    const int64_t blocks = fsdp_cuda_grid((int64_t)N * C, MOE_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    FSDP_LAUNCH(row_scale_forward_kernel, (unsigned)blocks, MOE_THREADS, 0, stream, out, inp, scale, N,
                C);
    return fsdp_cuda_launched(fn);
}

int fsdp_row_scale_backward_cuda(float *dinp, float *dscale, const float *dout, const float *inp,
                                 const float *scale, int N, int C, fsdp_stream stream) {
    const char *fn = "fsdp_row_scale_backward_cuda";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(dout, "%s: dout must not be NULL", fn);
    FSDP_CHECK_ARG(!dinp || scale, "%s: scale must not be NULL when dinp is wanted", fn);
    FSDP_CHECK_ARG(!dscale || inp, "%s: inp must not be NULL when dscale is wanted", fn);
    FSDP_CHECK_ARG(!dinp || dinp != dout, "%s: dinp must not be dout (backward accumulates)", fn);
    if (dinp) {
        const int64_t blocks = fsdp_cuda_grid((int64_t)N * C, MOE_THREADS);
        FSDP_CUDA_CHECK_GRID(fn, blocks);
        FSDP_LAUNCH(row_scale_backward_input_kernel, (unsigned)blocks, MOE_THREADS, 0, stream, dinp,
                    dout, scale, N, C);
        if ((rc = fsdp_cuda_launched(fn))) return rc;
    }
    if (dscale) {
        FSDP_LAUNCH(row_scale_backward_scale_kernel, row_blocks(N), MOE_THREADS, 0, stream, dscale,
                    dout, inp, N, C);
        if ((rc = fsdp_cuda_launched(fn))) return rc;
    }
    return FSDP_OK;
}

/* ---- top-k ---------------------------------------------------------------- */

int fsdp_topk_forward_cuda(float *values, int32_t *indices, const float *inp, int N, int C, int K,
                           fsdp_stream stream) {
    const char *fn = "fsdp_topk_forward_cuda";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(K > 0 && K <= C, "%s: K (%d) must be in [1, C = %d]", fn, K, C);
    FSDP_CHECK_ARG(values && indices && inp, "%s: values, indices and inp must not be NULL", fn);
    FSDP_LAUNCH(topk_forward_kernel, row_blocks(N), MOE_THREADS, 0, stream, values, indices, inp, N, C,
                K);
    return fsdp_cuda_launched(fn);
}

int fsdp_topk_backward_cuda(float *dinp, const float *dvalues, const int32_t *indices, int N, int C,
                            int K, fsdp_stream stream) {
    const char *fn = "fsdp_topk_backward_cuda";
    int rc = check_nc(fn, N, C);
    if (rc) return rc;
    FSDP_CHECK_ARG(K > 0 && K <= C, "%s: K (%d) must be in [1, C = %d]", fn, K, C);
    if (!dinp) return FSDP_OK;
    FSDP_CHECK_ARG(dvalues && indices, "%s: dvalues and indices must not be NULL", fn);
    FSDP_LAUNCH(topk_backward_kernel, fsdp_cuda_grid(N, MOE_THREADS), MOE_THREADS, 0, stream, dinp,
                dvalues, indices, N, C, K);
    return fsdp_cuda_launched(fn);
}
