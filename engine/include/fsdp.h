/*
 * fsdp.h - the one public header of libfsdp.
 *
 * This file is also the source of the LuaJIT cdefs: the build runs it through
 * the C preprocessor with FSDP_CDEF defined and hands the result to ffi.cdef.
 * Rules that keep that working:
 *   - only types LuaJIT's FFI knows (stdint types, size_t, plain structs, enums);
 *   - no macros that the Lua side needs (constants are enums);
 *   - no inline functions, no system includes outside the FSDP_CDEF guard.
 *
 * Conventions (see shared/DESIGN.md):
 *   - every fallible call returns int status (FSDP_OK == 0) or NULL, and the
 *     message is read with fsdp_last_error(); the library never exits.
 *   - kernels: fsdp_<op>_forward_<backend> / fsdp_<op>_backward_<backend>, with
 *     outputs first, then saved state, inputs, params, dims. All math in f32.
 *     Every backward kernel ACCUMULATES (+=) into every gradient it writes, for
 *     inputs and parameters alike; a NULL gradient pointer is skipped.
 */
#ifndef FSDP_H
#define FSDP_H

#ifndef FSDP_CDEF
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
/* libfsdp (and libfsdp_cuda) are built with -fvisibility=hidden: what this
 * header declares is exported, nothing else of the library is (backend
 * libraries get the few entries of engine/comm_ops.h and internal.h too) */
#pragma GCC visibility push(default)
#endif

/* ---- version, status, errors ------------------------------------------- */

enum { FSDP_ABI_VERSION = 2 }; /* 2: attention kernels take softcap; signals, positions check */

enum {
    FSDP_OK = 0,
    FSDP_ERR_INVALID = 1,     /* bad argument: shape, dtype, range */
    FSDP_ERR_OOM = 2,         /* allocation failed */
    FSDP_ERR_IO = 3,          /* file system */
    FSDP_ERR_FORMAT = 4,      /* malformed file contents */
    FSDP_ERR_UNSUPPORTED = 5, /* valid but not implemented here */
    FSDP_ERR_COMM = 6         /* collective failed / peer died */
};

int fsdp_abi_version(void);
/* sizeof a public struct by name ("fsdp_tensor", ...); -1 when unknown.
 * The Lua binding compares this with ffi.sizeof at load time. */
int64_t fsdp_struct_size(const char *name);
/* message of the last failed call on this thread ("" when none) */
const char *fsdp_last_error(void);
void fsdp_clear_error(void);

/* ---- threads ------------------------------------------------------------ */

/* one threading runtime: sets OpenMP's and OpenBLAS's thread counts together */
void fsdp_set_num_threads(int n);
int fsdp_get_num_threads(void);
/* the cores this process may run on (its CPU affinity mask) */
int fsdp_get_num_cores(void);
/* the name of the kernels OpenBLAS chose at load (its DYNAMIC_ARCH core:
 * "SkylakeX", "Haswell", ...; OPENBLAS_CORETYPE sets it) */
const char *fsdp_blas_core(void);

/* ---- signals (engine/signals.c) ----------------------------------------- *
 * The library never calls back into Lua: a handler only records the signal,
 * and the training loop polls between steps (SLURM's SIGTERM/SIGUSR1 before
 * preemption, SIGINT in the REPL). */

/* start recording signum (SIGTERM, SIGUSR1, SIGINT, ...), unblocking it;
 * 0 or an error */
int fsdp_signal_watch(int signum);
/* the same, for one delivery: the next one takes the default action (a
 * second Ctrl-C during training ends the process at once) */
int fsdp_signal_watch_once(int signum);
/* a watched signum also sets the collectives' interrupt flag
 * (fsdp_comm_interrupt) when it arrives: Ctrl-C in the REPL; 0: none */
int fsdp_signal_interrupts(int signum);
/* blocks (block != 0) or unblocks signum for this thread, and so for the
 * programs it execs (the launcher keeps Ctrl-C from mpiexec this way) */
int fsdp_signal_block(int signum, int block);
/* the last recorded signal (0 if none); clear != 0 resets it */
int fsdp_signal_pending(int clear);

/* ---- rendezvous (engine/rendezvous.c) ------------------------------------ *
 * The torchrun-style launch (--nnodes N --node-rank K --master-addr A
 * --master-port P): node 0 hands node k the line that starts its share of
 * the job, over one TCP port. */

/* node 0: listens on port, answers each of nodes 1..n_lines-1 (which send
 * their node rank) with lines[k], until all have asked or timeout_s passes */
int fsdp_rendezvous_serve(int port, const char *const *lines, int n_lines, double timeout_s);
/* node k: connects to addr:port (retrying until timeout_s), sends k, and
 * receives its line into buf (NUL-terminated) */
int fsdp_rendezvous_fetch(const char *addr, int port, int node_rank, char *buf, int64_t cap, double timeout_s);

/* ---- dtypes and devices ------------------------------------------------- */

typedef enum {
    FSDP_F32 = 0,
    FSDP_BF16 = 1,
    FSDP_F16 = 2,
    FSDP_I32 = 3,
    FSDP_I64 = 4,
    FSDP_U16 = 5,
    FSDP_U8 = 6,
    FSDP_NUM_DTYPES = 7
} fsdp_dtype;

enum { FSDP_CPU = -1 }; /* device: -1 is the host, N >= 0 is cuda:N */

int fsdp_dtype_size(int dtype);          /* bytes per element, 0 if invalid */
const char *fsdp_dtype_name(int dtype);  /* "f32", ... or NULL */

/* ---- memory ------------------------------------------------------------- */

typedef struct fsdp_mem_stats {
    int64_t current;   /* bytes requested by live storages */
    int64_t peak;      /* max of current since start or last reset */
    int64_t reserved;  /* bytes taken from the system: live blocks (rounded to
                          size classes) + free blocks kept in the caching pool */
    int64_t n_allocs;  /* allocations served (pool hits included) */
    int64_t n_misses;  /* allocations that went to the system */
} fsdp_mem_stats;

int fsdp_mem_get_stats(int device, fsdp_mem_stats *out);
void fsdp_mem_reset_peak(int device);
/* return cached blocks to the system */
void fsdp_mem_empty_cache(int device);

/* ---- tensors ------------------------------------------------------------ */

enum { FSDP_MAX_DIMS = 8 };

typedef struct fsdp_storage fsdp_storage; /* refcounted buffer, opaque */

typedef struct fsdp_tensor {
    void *data;                      /* first element */
    fsdp_storage *storage;           /* owner of the bytes (refcounted) */
    int64_t shape[FSDP_MAX_DIMS];
    int64_t strides[FSDP_MAX_DIMS];  /* in elements */
    int64_t numel;
    int64_t offset;                  /* elements from the storage base */
    int32_t dtype;
    int32_t device;
    int32_t ndim;
    int32_t flags;
} fsdp_tensor;

/* contiguous tensor with uninitialized contents; NULL on error */
fsdp_tensor *fsdp_tensor_new(int dtype, int device, int ndim, const int64_t *shape);
/* same, zero-filled */
fsdp_tensor *fsdp_tensor_zeros(int dtype, int device, int ndim, const int64_t *shape);
/* a zero-filled host tensor in page-locked memory (flags bit 1), which GPU
 * copies read and write at full speed and asynchronously: CPU offload of
 * shards and optimizer state. Needs the CUDA backend (fsdp_cuda_install). */
fsdp_tensor *fsdp_tensor_new_pinned(int dtype, int ndim, const int64_t *shape);
/* a view of base's storage: strides may be NULL for contiguous; offset in
 * elements relative to base->data. Checks the view stays inside the storage. */
fsdp_tensor *fsdp_tensor_view(const fsdp_tensor *base, int ndim, const int64_t *shape,
                              const int64_t *strides, int64_t offset);
/* read-only tensor over a file range, memory-mapped (offset in bytes) */
fsdp_tensor *fsdp_tensor_mmap(const char *path, int64_t byte_offset, int dtype,
                              int ndim, const int64_t *shape);
/* drops this tensor's reference to its storage; the bytes go back to the pool
 * when the last view is gone. NULL is allowed. */
void fsdp_tensor_free(fsdp_tensor *t);
int fsdp_tensor_is_contiguous(const fsdp_tensor *t);
int64_t fsdp_tensor_nbytes(const fsdp_tensor *t);
int64_t fsdp_storage_nbytes(const fsdp_storage *s);
int fsdp_storage_refcount(const fsdp_storage *s);
/* dst = src elementwise, any strides, same shape; dtypes may differ among
 * f32/bf16/f16 (rounding to nearest even) or be equal */
int fsdp_tensor_copy(fsdp_tensor *dst, const fsdp_tensor *src);
int fsdp_tensor_fill(fsdp_tensor *t, double value);

/* ---- random numbers ----------------------------------------------------- */

/* xoshiro256** state; plain data so it checkpoints as bytes */
typedef struct fsdp_rng {
    uint64_t s[4];
} fsdp_rng;

void fsdp_rng_seed(fsdp_rng *rng, uint64_t seed);
uint64_t fsdp_rng_next(fsdp_rng *rng);
double fsdp_rng_uniform(fsdp_rng *rng);  /* [0, 1) */
void fsdp_rng_fill_normal(fsdp_rng *rng, float *out, int64_t n, float mean, float std);
void fsdp_rng_fill_uniform(fsdp_rng *rng, float *out, int64_t n, float lo, float hi);
/* Counter-based initialization: element i of the range gets a value that
 * depends only on (seed, first + i), so a rank can initialize its own slice of
 * a parameter and get exactly the values a one-rank run gives that slice. */
void fsdp_init_normal(float *out, int64_t n, uint64_t seed, int64_t first, float mean, float std);
void fsdp_init_uniform(float *out, int64_t n, uint64_t seed, int64_t first, float lo, float hi);
/* 64-bit hash of bytes (parameter names -> seeds) */
uint64_t fsdp_hash64(const void *data, int64_t n, uint64_t seed);
/* Fingerprint of float values, the same however they are sliced: the sum
 * (mod 2^64) over i of a hash of (seed, first + i, the bits of x[i]), so the
 * fingerprints of the pieces of a tensor (each with its first index) add up
 * to the whole's. Checkpoints use it to recognise a frozen base model. */
uint64_t fsdp_fingerprint_f32(const float *x, int64_t n, uint64_t seed, int64_t first);

/* ---- CPU kernels (kernels/<op>_cpu.c) ----------------------------------- *
 * Shapes are row-major. N = number of rows (tokens), C = channels.          */

/* out[M,N] = op(a)[M,K] @ op(b)[K,N] (+ bias[N]); op transposes when trans_*
 * is set (a stored [K,M], b stored [N,K]). accumulate != 0 adds into out. */
int fsdp_matmul_forward_cpu(float *out, const float *a, const float *b, const float *bias,
                            int M, int N, int K, int trans_a, int trans_b, int accumulate);
/* da += dout @ op(b)^T (in a's storage layout), db likewise, dbias += column sums */
int fsdp_matmul_backward_cpu(float *da, float *db, float *dbias, const float *dout,
                             const float *a, const float *b,
                             int M, int N, int K, int trans_a, int trans_b);

/* A linear layer with a low-rank adapter (LoRA), fused:
 * out = x W^T + bias + scale * (drop(x) A^T) B^T, x [M, K], W [N, K], bias [N]
 * or NULL, A [R, K], B [N, R]; xa [M, R] is saved for backward (drop(x) A^T).
 * drop is dropout of rate p in [0, 1), its mask a function of seed and the
 * element index (kernels/lora_math.h), so backward regenerates it. Backward
 * accumulates into dx, dw, dbias, da, db (NULL ones skipped; a frozen base
 * weight passes dw = NULL). */
int fsdp_lora_forward_cpu(float *out, float *xa, const float *x, const float *w, const float *bias,
                          const float *a, const float *b, int M, int N, int K, int R, float scale,
                          float p, uint64_t seed);
int fsdp_lora_backward_cpu(float *dx, float *dw, float *dbias, float *da, float *db, const float *dout,
                           const float *x, const float *w, const float *a, const float *b,
                           const float *xa, int M, int N, int K, int R, float scale, float p,
                           uint64_t seed);
/* out = x * mask (accumulate 0) or out += x * mask (1) over n elements, the
 * mask of LoRA's dropout: element i kept (scaled by 1 / (1 - p)) or zeroed
 * by fsdp_lora_dropout(seed, i, p) of kernels/lora_math.h; p == 0 keeps
 * all. out may alias x. The CUDA twin gives the same bits. */
int fsdp_lora_dropout_cpu(float *out, const float *x, int64_t n, float p, uint64_t seed, int accumulate);

/* out[n,:] = table[idx[n],:]; idx checked against V */
int fsdp_embedding_forward_cpu(float *out, const int32_t *idx, const float *table,
                               int N, int V, int C);
int fsdp_embedding_backward_cpu(float *dtable, const float *dout, const int32_t *idx,
                                int N, int V, int C);

int fsdp_layernorm_forward_cpu(float *out, float *mean, float *rstd, const float *inp,
                               const float *weight, const float *bias, int N, int C, float eps);
int fsdp_layernorm_backward_cpu(float *dinp, float *dweight, float *dbias, const float *dout,
                                const float *inp, const float *weight, const float *mean,
                                const float *rstd, int N, int C);

int fsdp_rmsnorm_forward_cpu(float *out, float *rstd, const float *inp, const float *weight,
                             int N, int C, float eps);
int fsdp_rmsnorm_backward_cpu(float *dinp, float *dweight, const float *dout, const float *inp,
                              const float *weight, const float *rstd, int N, int C);
/* sum = a + b, then out = rmsnorm(sum) * weight saving rstd (a residual add
 * and the next block's norm; kernels/add_rmsnorm_cpu.c). Backward is
 * fsdp_rmsnorm_backward_* with inp = sum; its input gradient is a's and b's. */
int fsdp_add_rmsnorm_forward_cpu(float *sum, float *out, float *rstd, const float *a, const float *b,
                                 const float *weight, int N, int C, float eps);

/* pointwise activations over n elements */
int fsdp_gelu_forward_cpu(float *out, const float *inp, int64_t n);   /* tanh approximation */
int fsdp_gelu_backward_cpu(float *dinp, const float *dout, const float *inp, int64_t n);
int fsdp_relu_forward_cpu(float *out, const float *inp, int64_t n);
int fsdp_relu_backward_cpu(float *dinp, const float *dout, const float *inp, int64_t n);
int fsdp_silu_forward_cpu(float *out, const float *inp, int64_t n);
int fsdp_silu_backward_cpu(float *dinp, const float *dout, const float *inp, int64_t n);
/* soft-capping (Gemma 2's final logits): out = cap * tanh(inp / cap), cap > 0;
 * dinp += dout * (1 - tanh(inp / cap)^2) */
int fsdp_softcap_forward_cpu(float *out, const float *inp, float cap, int64_t n);
int fsdp_softcap_backward_cpu(float *dinp, const float *dout, const float *inp, float cap, int64_t n);
/* out = silu(gate) * up */
int fsdp_swiglu_forward_cpu(float *out, const float *gate, const float *up, int64_t n);
int fsdp_swiglu_backward_cpu(float *dgate, float *dup, const float *dout, const float *gate,
                             const float *up, int64_t n);

/* elementwise helpers: out = a + b; y += alpha * x; out = alpha * x; out = a * b */
int fsdp_add_cpu(float *out, const float *a, const float *b, int64_t n);
int fsdp_axpy_cpu(float *y, float alpha, const float *x, int64_t n);
int fsdp_scale_cpu(float *out, float alpha, const float *x, int64_t n);
int fsdp_mul_cpu(float *out, const float *a, const float *b, int64_t n);

/* contiguous casts among f32, bf16, f16 (round to nearest even; same dtype copies) */
int fsdp_cast_cpu(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n);

/* Rotary embedding, rotate-half (GPT-NeoX / Hugging Face Llama) pairing:
 * x[i] and x[i + HD/2] rotate by angle pos * inv_freq[i]. inp/out are
 * [B, T, NH, HD] rows with ld elements between tokens (ld >= NH*HD); cos/sin
 * are [T, HD/2] for positions pos0 .. pos0+T-1 already offset by the caller.
 * out may equal inp. */
int fsdp_rope_forward_cpu(float *out, const float *inp, const float *cos, const float *sin,
                          int B, int T, int NH, int HD, int ld);
int fsdp_rope_backward_cpu(float *dinp, const float *dout, const float *cos, const float *sin,
                           int B, int T, int NH, int HD, int ld);
/* cos/sin tables [T, HD/2] for positions pos0.. ; inv_freq[HD/2] given by the
 * caller (so the Llama 3 / linear scalings stay in Lua) */
int fsdp_rope_table_cpu(float *cos, float *sin, const float *inv_freq, int pos0, int T, int HD);

/* Causal self-attention with grouped-query heads and an optional sliding
 * window (window <= 0: none; else query t attends keys t-window+1 .. t).
 * q: [B, T, NH, HD] with ldq elements between tokens, k and v: [B, T, NKV, HD]
 * with ldk / ldv; NH % NKV == 0, head h uses kv head h / (NH/NKV).
 * out: [B, T, NH, HD] contiguous; lse: [B, NH, T] saved log-sum-exp of the
 * scaled scores, which backward needs. scale is usually 1/sqrt(HD).
 * softcap > 0 soft-caps every score s = scale q.k to softcap * tanh(s /
 * softcap) before the softmax (Gemma 2); 0: none. */
int fsdp_attention_forward_cpu(float *out, float *lse, const float *q, const float *k,
                               const float *v, int B, int T, int NH, int NKV, int HD,
                               int ldq, int ldk, int ldv, int window, float scale, float softcap);
int fsdp_attention_backward_cpu(float *dq, float *dk, float *dv, const float *dout,
                                const float *q, const float *k, const float *v,
                                const float *out, const float *lse, int B, int T, int NH,
                                int NKV, int HD, int ldq, int ldk, int ldv, int window,
                                float scale, float softcap);

/* Attention over packed sequences (several samples in one row): pos [B, T]
 * holds each token's position within its own sample (0 where a sample
 * starts, then 1, 2, ...: Hugging Face's position_ids), and a query sees
 * only the keys of its sample (block-diagonal causal, the window too).
 * Otherwise as fsdp_attention_forward_cpu / _backward_cpu; positions that do
 * not count up from 0 within samples are FSDP_ERR_INVALID. */
int fsdp_attention_packed_forward_cpu(float *out, float *lse, const float *q, const float *k,
                                      const float *v, const int32_t *pos, int B, int T, int NH,
                                      int NKV, int HD, int ldq, int ldk, int ldv, int window,
                                      float scale, float softcap);
int fsdp_attention_packed_backward_cpu(float *dq, float *dk, float *dv, const float *dout,
                                       const float *q, const float *k, const float *v,
                                       const float *out, const float *lse, const int32_t *pos,
                                       int B, int T, int NH, int NKV, int HD, int ldq, int ldk,
                                       int ldv, int window, float scale, float softcap);
/* FSDP_OK when pos [B, T] counts 0, 1, ... within each sample (what the
 * packed kernels take), else FSDP_ERR_INVALID naming the first bad entry */
int fsdp_attention_positions_check_cpu(const int32_t *pos, int B, int T);

/* Decoding attention over a KV cache (generation; no backward): stores the
 * keys and values of the Tq new positions pos .. pos+Tq-1 of each of the B
 * sequences into kcache / vcache ([B, Tmax, NKV*HD], contiguous), then
 * attends every new query over the cached keys it sees (causal, the
 * sliding window as in training). q / k / v and out as in
 * fsdp_attention_forward_cpu with T = Tq; pos + Tq <= Tmax. */
int fsdp_attention_decode_cpu(float *out, float *kcache, float *vcache, const float *q,
                              const float *k, const float *v, int B, int Tq, int pos, int Tmax,
                              int NH, int NKV, int HD, int ldq, int ldk, int ldv, int window,
                              float scale, float softcap);

/* Fused softmax cross-entropy over V classes. loss[n] = lse[n] - logits[n,t];
 * rows whose target equals ignore_index get loss 0 (and no gradient).
 * Targets outside [0, V) that are not ignore_index are an error. */
int fsdp_crossentropy_forward_cpu(float *loss, float *lse, const float *logits,
                                  const int32_t *targets, int N, int V, int ignore_index);
/* dlogits[n,:] += dloss[n] * (softmax(logits[n,:]) - onehot(target[n])) */
int fsdp_crossentropy_backward_cpu(float *dlogits, const float *dloss, const float *logits,
                                   const float *lse, const int32_t *targets, int N, int V,
                                   int ignore_index);
/* Forward and backward of N rows in one call (a chunk of the LM head in
 * ops.linear_cross_entropy): loss[n] as the forward writes it, lse[n] too
 * when lse is not NULL, and each row of logits replaced by its unscaled
 * gradient softmax - onehot(target) (all zeros, loss 0, for ignore_index). */
int fsdp_crossentropy_inplace_cpu(float *loss, float *lse, float *logits, const int32_t *targets,
                                  int N, int V, int ignore_index);
/* The loss of a batch (kernels/crossentropy_mean_cpu.c): *out = the mean of
 * loss[n] over the rows whose target is not ignore_index (0 when none is),
 * summed in double; *count = how many rows that is. Backward: dloss[n] +=
 * *dout / *count for those rows. Outputs, not host numbers, so that on a
 * device the count never comes to the host. denominator > 0 divides by it
 * instead of the count (the sum of the losses over a given number). */
int fsdp_crossentropy_mean_forward_cpu(float *out, int32_t *count, const float *loss,
                                       const int32_t *targets, int N, int ignore_index, double denominator);
int fsdp_crossentropy_mean_backward_cpu(float *dloss, const float *dout, const int32_t *count,
                                        const int32_t *targets, int N, int ignore_index, double denominator);

/* Fused AdamW step over a flat f32 segment. g is multiplied by grad_scale
 * first (clipping and loss-scale unscaling fold in here). step t >= 1 is used
 * for bias correction. Decoupled weight decay: p -= lr * wd * p. */
int fsdp_adamw_cpu(float *param, float *m, float *v, const float *grad, int64_t n,
                   float lr, float beta1, float beta2, float eps, float weight_decay,
                   float grad_scale, int64_t t);
/* The same step over a whole slice of n elements in one pass: the elements
 * inside the ndecay runs decay[2r] .. decay[2r+1] (in order, disjoint, in
 * [0, n]) take weight_decay, the others none (norms and biases). */
int fsdp_adamw_runs_cpu(float *param, float *m, float *v, const float *grad, int64_t n,
                        const int64_t *decay, int ndecay, float lr, float beta1, float beta2,
                        float eps, float weight_decay, float grad_scale, int64_t t);
/* sum of squares in double (global norm = sqrt of the sum over segments and
 * ranks); a NaN or inf element makes the result non-finite */
double fsdp_sumsq_cpu(const float *x, int64_t n);
/* y += alpha * x (as fsdp_axpy_cpu) and *sumsq = the sum of squares of the
 * new y, in the same pass and with fsdp_sumsq_cpu's bits: a gradient slice
 * gets its share of the global norm where it is finalised */
int fsdp_axpy_sumsq_cpu(double *sumsq, float *y, float alpha, const float *x, int64_t n);

/* ---- collectives (engine/comm.c) ---------------------------------------- *
 * One interface over several backends: MPI for host tensors (and bootstrap),
 * `tcp` for host tensors in jobs started by torchrun alone (engine/comm_tcp.c:
 * a star through rank 0, no MPI), a `self` backend for a world of one, NCCL
 * for CUDA tensors (libfsdp_cuda:
 * fsdp_comm_nccl_new in the CUDA section; the calls below then take device
 * pointers and their requests complete when the device is done).
 * Counts are in elements of dtype. A NULL request pointer means blocking;
 * otherwise *req receives a handle to fsdp_comm_wait / fsdp_comm_test, which
 * frees it on completion. Errors name this rank and, when known, the peer.
 * A started collective's buffers must stay allocated until its request is
 * over (a wait that times out or is interrupted leaves it running). */

typedef struct fsdp_comm fsdp_comm;
typedef struct fsdp_comm_request fsdp_comm_request;

enum { FSDP_REDUCE_SUM = 0, FSDP_REDUCE_AVG = 1, FSDP_REDUCE_MAX = 2 };

/* The job's world: MPI when launched by mpiexec/srun/fsdp-lua's launcher
 * (PMI_RANK, PMI_SIZE, OMPI_*, PMIX_RANK, SLURM_PROCID with SLURM_NTASKS > 1);
 * else, with WORLD_SIZE > 1 (torchrun: RANK, WORLD_SIZE, MASTER_ADDR,
 * MASTER_PORT), the tcp world on port MASTER_PORT + 1 (FSDP_TCP_PORT
 * overrides); else a world of one that never initializes MPI. Idempotent. */
fsdp_comm *fsdp_comm_world(void);
/* The tcp backend without the env: rank `rank` of `size` joins rank 0, which
 * listens on port (all interfaces); the others connect to addr:port,
 * retrying until timeout_s (<= 0: FSDP_COMM_TIMEOUT or 600) since rank 0 may
 * start later. Collective over the ranks; checks that each rank joins once
 * and that sizes agree. Every later collective also completes (or fails,
 * naming the peer) within timeout_s; reductions add in rank order and give
 * every rank the same bytes. fsdp_comm_backend says "tcp"; split is refused.
 * Owned by the caller (fsdp_comm_free), unlike the world. */
fsdp_comm *fsdp_comm_tcp_world(int rank, int size, const char *addr, int port, double timeout_s);
/* sub-group of the ranks passing the same color, ordered by key (hybrid;
 * mpi and self only) */
fsdp_comm *fsdp_comm_split(fsdp_comm *parent, int color, int key);
/* sub-groups only (the world lives on); no request of c may be outstanding */
void fsdp_comm_free(fsdp_comm *c);
int fsdp_comm_rank(const fsdp_comm *c);
int fsdp_comm_size(const fsdp_comm *c);
const char *fsdp_comm_backend(const fsdp_comm *c); /* "mpi", "tcp", "self" or "nccl" */
/* recv[size * count] gathers every rank's send[count], in rank order */
int fsdp_comm_all_gather(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                         fsdp_comm_request **req);
/* recv[count] = reduction over ranks of send[rank * count .. +count] */
int fsdp_comm_reduce_scatter(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype,
                             int op, fsdp_comm_request **req);
/* in place */
int fsdp_comm_all_reduce(fsdp_comm *c, void *buf, int64_t count, int dtype, int op,
                         fsdp_comm_request **req);
int fsdp_comm_broadcast(fsdp_comm *c, void *buf, int64_t count, int dtype, int root,
                        fsdp_comm_request **req);
int fsdp_comm_barrier(fsdp_comm *c);
/* waits at most timeout_s seconds (<= 0: the default, FSDP_COMM_TIMEOUT or
 * 600); a timeout or an interrupt leaves the request valid */
int fsdp_comm_wait(fsdp_comm_request *req, double timeout_s);
int fsdp_comm_test(fsdp_comm_request *req, int *done);
/* bytes this rank has sent through collectives of c (volume accounting) */
int64_t fsdp_comm_bytes_sent(const fsdp_comm *c);
/* ends the whole job after a fatal error on this rank (MPI_Abort); used by
 * the Lua top level after it has printed the error, never by the library */
void fsdp_comm_abort(int code);
/* MPI_Finalize when MPI was initialized */
int fsdp_comm_finalize(void);

/* Interrupts: waits that a user (Ctrl-C in a REPL) can cancel.
 *
 * fsdp_comm_interrupt() only sets a flag, so a signal handler may call it
 * (Lua may too). Every wait of a collective polls the flag at least every
 * 50 ms: a blocking collective, fsdp_comm_barrier or fsdp_comm_wait then
 * returns FSDP_ERR_INTERRUPTED ("rank 0: interrupted while waiting in
 * barrier") instead of waiting for peers that may never come. The
 * collective is NOT cancelled by that: MPI cannot cancel a started
 * collective, so it stays running, its request valid, its buffers in use.
 *
 * Collective interrupt: on the mpi backend a rank whose flag is set tells
 * every other rank of the world (at its next wait or fsdp_comm_interrupted
 * call), and a rank that hears of it sets its own flag: its waits return
 * FSDP_ERR_INTERRUPTED too, and fsdp_comm_interrupted() says 1 at its next
 * safe point (a loop between ops polls it). The tcp and nccl backends only
 * see the local flag (a launcher that signals every rank covers them).
 *
 * Making the comms usable again (every rank agrees to cancel):
 *   1. every rank stops what it does once fsdp_comm_interrupted() or a
 *      wait says so, and keeps the buffers of its unfinished collectives;
 *   2. every rank calls fsdp_comm_resync(g) for each group g it uses: the
 *      sub-groups first, the world last. resync is collective over g: the
 *      ranks compare how many collectives each started on g and a rank that
 *      is behind joins the ones it missed with scratch buffers (the others
 *      described them: at most 64 apart), so every collective of g ends;
 *      the world's resync then clears the flag on every rank.
 *   3. a request that was outstanding then says FSDP_ERR_INTERRUPTED
 *      ("cancelled") to its fsdp_comm_wait / fsdp_comm_test, which frees
 *      it; the contents of its buffers are unspecified. Requests every rank
 *      had started before the interrupt complete normally. The next
 *      collective on g is in step on every rank.
 * resync's waits are bounded by the timeout and never interrupted. The mpi
 * and self backends resync; tcp and nccl refuse (FSDP_ERR_UNSUPPORTED:
 * their comms must be made anew, or the job restarted).
 * A REPL makes Ctrl-C on rank 0 a collective interrupt this way: its
 * SIGINT handler calls fsdp_comm_interrupt(); every rank's loop polls
 * fsdp_comm_interrupted() between statements and ops; all then run step 2
 * and return to the prompt. */
enum { FSDP_ERR_INTERRUPTED = 8 }; /* a wait gave up on an interrupt */
/* sets this process's interrupt flag; async-signal-safe */
void fsdp_comm_interrupt(void);
/* 1 when the flag is set here or a peer's notice came (and passes ours on) */
int fsdp_comm_interrupted(void);
/* collective over c after an interrupt: see above; timeout_s <= 0: the
 * default. FSDP_OK when every collective of c has ended and c is in step. */
int fsdp_comm_resync(fsdp_comm *c, double timeout_s);

/* ---- CPU kernels: mixture-of-experts routing (kernels/moe_cpu.c) -------- *
 * Row-major [rows, C] matrices; index vectors are int32 and are checked
 * against their range before anything is written. Where several rows add
 * into one (scatter-add forward, gather backward) they are added in index
 * order, so results do not depend on the thread count.                     */

/* out[m,:] = inp[idx[m],:] for m < M; idx in [0, N) */
int fsdp_gather_rows_forward_cpu(float *out, const float *inp, const int32_t *idx, int M, int N,
                                 int C);
/* dinp[idx[m],:] += dout[m,:] */
int fsdp_gather_rows_backward_cpu(float *dinp, const float *dout, const int32_t *idx, int M, int N,
                                  int C);
/* out[idx[m],:] += src[m,:]; out [N, C] holds the base on entry */
int fsdp_scatter_add_rows_forward_cpu(float *out, const float *src, const int32_t *idx, int M,
                                      int N, int C);
/* dsrc[m,:] += dout[idx[m],:] */
int fsdp_scatter_add_rows_backward_cpu(float *dsrc, const float *dout, const int32_t *idx, int M,
                                       int N, int C);
/* softmax of each of N rows of C */
int fsdp_softmax_forward_cpu(float *out, const float *inp, int N, int C);
/* dinp += out * (dout - <dout, out>) per row (out: the saved forward result) */
int fsdp_softmax_backward_cpu(float *dinp, const float *dout, const float *out, int N, int C);
/* out[n,:] = inp[n,:] * scale[n] */
int fsdp_row_scale_forward_cpu(float *out, const float *inp, const float *scale, int N, int C);
/* dinp[n,:] += dout[n,:] * scale[n]; dscale[n] += <dout[n,:], inp[n,:]> */
int fsdp_row_scale_backward_cpu(float *dinp, float *dscale, const float *dout, const float *inp,
                                const float *scale, int N, int C);
/* the K largest of each row, descending (NaN first, ties to the lower
 * column): values[N, K] and their columns indices[N, K] */
int fsdp_topk_forward_cpu(float *values, int32_t *indices, const float *inp, int N, int C, int K);
/* dinp[n, indices[n,j]] += dvalues[n,j] (no gradient through the selection) */
int fsdp_topk_backward_cpu(float *dinp, const float *dvalues, const int32_t *indices, int N, int C,
                           int K);

/* ---- tokenizer (engine/tokenizer.c) ------------------------------------- *
 * A Hugging Face tokenizer.json of the BPE family (byte-level as GPT-2, OPT,
 * Llama 3; SentencePiece-style with byte fallback as Llama 2, Mistral),
 * encoding and decoding id for id as the `tokenizers` library does. Parts of
 * the file it does not implement are refused at load with the JSON path and
 * the supported types. Text is UTF-8; invalid UTF-8 is an error.
 * After loading, encode and decode may run on several threads at once. */

typedef struct fsdp_tokenizer fsdp_tokenizer;

enum { FSDP_TOKEN_BOS = 0, FSDP_TOKEN_EOS = 1, FSDP_TOKEN_PAD = 2, FSDP_TOKEN_UNK = 3 };

/* NULL on error (missing file, malformed JSON with line and column,
 * unsupported parts) */
fsdp_tokenizer *fsdp_tokenizer_load(const char *path);
void fsdp_tokenizer_free(fsdp_tokenizer *tok);
/* max id + 1 over the model vocab and the added tokens */
int32_t fsdp_tokenizer_vocab_size(const fsdp_tokenizer *tok);
/* text[0, len) -> ids. add_special puts the post-processor's ids around
 * them (tokenizers' add_special_tokens=True: <s> first for Llama 2, nothing
 * for GPT-2). *n_out gets the number of ids; when it exceeds cap the call
 * fails with FSDP_ERR_INVALID, or succeeds without writing when out is NULL
 * and cap 0 (a size query). */
int fsdp_tokenizer_encode(fsdp_tokenizer *tok, const char *text, int64_t len, int add_special,
                          int32_t *out, int64_t cap, int64_t *n_out);
/* ids -> UTF-8 text, NUL-terminated (cap >= *len + 1), with the file's
 * decoder; skip_special drops special tokens. Ids outside the vocabulary
 * are an error. Same size protocol as encode. */
int fsdp_tokenizer_decode(fsdp_tokenizer *tok, const int32_t *ids, int64_t n, int skip_special,
                          char *out, int64_t cap, int64_t *len);
/* -1 / NULL when unknown; added tokens first, then the model's vocab */
int32_t fsdp_tokenizer_token_to_id(const fsdp_tokenizer *tok, const char *token);
const char *fsdp_tokenizer_id_to_token(const fsdp_tokenizer *tok, int32_t id);
/* FSDP_TOKEN_BOS / EOS / PAD / UNK id, -1 when the file has none. BOS and EOS
 * come from the post-processor when it adds them, else from well-known
 * names (<s>, </s>, <|begin_of_text|>, <|end_of_text|>, <|endoftext|>, ...) */
int32_t fsdp_tokenizer_special_id(const fsdp_tokenizer *tok, int which);
/* how many ids encode(add_special = 1) puts before (where 0) or after
 * (where 1) the text */
int fsdp_tokenizer_num_added(const fsdp_tokenizer *tok, int where);
int fsdp_tokenizer_is_special(const fsdp_tokenizer *tok, int32_t id);

/* ---- chat templates (engine/template.c, engine/template_lib.c) ----------- *
 * The part of Jinja2 that Hugging Face chat templates use, with the settings
 * transformers' apply_chat_template compiles them with (trim_blocks,
 * lstrip_blocks, {% break %} / {% continue %}, {% generation %}, the globals
 * raise_exception, namespace, dict, range, strftime_now, tojson as
 * json.dumps). A construct outside that set is an error naming it with its
 * line and column, at compile time where it can be seen there. */

typedef struct fsdp_template fsdp_template;

/* compiles source[0, len) (UTF-8); NULL with the error on bad input */
fsdp_template *fsdp_template_new(const char *source, int64_t len);
void fsdp_template_free(fsdp_template *t);
/* 1 when the template has {% generation %} blocks */
int fsdp_template_has_generation(const fsdp_template *t);
/* renders with the variables of the JSON object vars_json[0, vars_len)
 * (messages, add_generation_prompt, bos_token, ...; the object's key order
 * is kept, as tojson shows). *out gets the text (NUL-terminated, release
 * with fsdp_free) and *out_len its length; when spans is not NULL, *spans
 * gets 2 * *n_spans byte offsets [start, end) of the output of every
 * {% generation %} block (release with fsdp_free; NULL when none). A
 * template error (raise_exception, an undefined value used, a type error)
 * fails with the template line and column in the message. The template
 * may be rendered from several threads at once. */
int fsdp_template_render(const fsdp_template *t, const char *vars_json, int64_t vars_len, char **out,
                         int64_t *out_len, int64_t **spans, int64_t *n_spans);

/* ---- CUDA backend (build/libfsdp_cuda.so: kernels/<op>_cuda.cu, engine/cuda/)
 * A separate library, built by `make cuda`, that links libfsdp; libfsdp never
 * needs CUDA. Lua loads it through lua/fsdp/device.lua when a GPU is wanted.
 *
 * Kernels mirror their CPU twins: the same name ending in _cuda, the same
 * arguments (pointers are device memory) plus the stream as the LAST
 * argument (NULL: the legacy default stream). A call only queues work: FSDP_OK
 * means the launch was accepted; a fault on the device surfaces at the next
 * synchronizing call (fsdp_cuda_stream_synchronize). Backward kernels
 * accumulate into every gradient and skip NULL ones, as on the CPU.
 * Differences from the CPU kernels, all because the data is on the device:
 *   - embedding ids and cross-entropy targets are not checked up front (that
 *     would need a copy to the host and a sync): an out-of-range id gives a
 *     NaN output row and no gradient, an out-of-range target a NaN loss;
 *   - fsdp_sumsq_cuda writes its double result to device memory.
 * Reductions are deterministic: their order depends on the shapes only (no
 * float atomics), so a call gives the same bits on every run. */

typedef struct CUstream_st *fsdp_stream; /* the same type as cudaStream_t */

enum { FSDP_ERR_DEVICE = 7 }; /* CUDA runtime, driver or library error */

/* number of usable GPUs in *count; an FSDP_ERR_DEVICE naming the runtime's
 * reason ("no CUDA-capable device", "driver too old", ...) when there is none */
int fsdp_cuda_device_count(int *count);
/* makes device current on the calling thread */
int fsdp_cuda_set_device(int device);

typedef struct fsdp_cuda_device_info {
    char name[256];
    int32_t major, minor;     /* compute capability */
    int32_t sm_count;
    int32_t clock_khz;        /* max SM clock */
    int64_t total_mem;        /* bytes */
    double peak_bf16_tflops;  /* dense bf16 tensor-core peak; 0 when unknown */
} fsdp_cuda_device_info;
int fsdp_cuda_get_device_info(int device, fsdp_cuda_device_info *out);
/* sizeof a CUDA-section struct by name, -1 if unknown (ffi.sizeof check) */
int64_t fsdp_cuda_struct_size(const char *name);
int fsdp_cuda_synchronize(void);
int fsdp_cuda_stream_create(fsdp_stream *out);
int fsdp_cuda_stream_destroy(fsdp_stream s);
int fsdp_cuda_stream_synchronize(fsdp_stream s);
/* copies between any host/device pair (direction taken from the pointers),
 * queued on stream; a pageable host buffer makes it synchronous */
int fsdp_cuda_memcpy(void *dst, const void *src, int64_t nbytes, fsdp_stream stream);
int fsdp_cuda_memset(void *dst, int byte, int64_t nbytes, fsdp_stream stream);
/* nbytes of device memory into host memory, waiting for them (and for the
 * work queued on stream before): the one read a training step needs */
int fsdp_cuda_read(void *host, const void *src, int64_t nbytes, fsdp_stream stream);
/* Host synchronisations with the device since the library was loaded: the
 * times the host waited for queued device work and the data it made.
 * Counted once each: fsdp_cuda_synchronize, fsdp_cuda_stream_synchronize,
 * fsdp_cuda_event_synchronize, fsdp_cuda_read, fsdp_cuda_memcpy from device
 * into pageable host memory, and a tensor copy from a device to the host
 * (Tensor:cpu(), item(), get(), totable()). A step of training on the GPU
 * should need one: its read of the loss and gradient norm. */
int64_t fsdp_cuda_sync_count(void);
/* tensor copies from the host to a device, which wait for their stream so
 * the host buffer may be reused at once (a data loader's batches) */
int64_t fsdp_cuda_upload_sync_count(void);

/* Events and pinned host memory (engine/cuda/stream_cuda.cu). An event
 * orders streams without blocking the host: record it on one stream, make
 * another wait for it. timing != 0 lets it be used for elapsed times (an
 * event without timing is cheaper to record and wait on). */
typedef struct CUevent_st *fsdp_event; /* the same type as cudaEvent_t */
int fsdp_cuda_event_create(fsdp_event *out, int timing);
int fsdp_cuda_event_destroy(fsdp_event e); /* NULL is allowed */
/* captures the work queued on stream so far */
int fsdp_cuda_event_record(fsdp_event e, fsdp_stream stream);
/* work queued on stream after this call starts once e's work is done */
int fsdp_cuda_stream_wait_event(fsdp_stream stream, fsdp_event e);
int fsdp_cuda_event_synchronize(fsdp_event e); /* blocks the host */
/* *done = 1 when the captured work has finished, 0 while it is pending */
int fsdp_cuda_event_query(fsdp_event e, int *done);
/* milliseconds between two completed timing events */
int fsdp_cuda_event_elapsed_ms(fsdp_event start, fsdp_event end, double *ms);
/* Page-locked ("pinned") host memory, portable to every device: copies
 * between it and the device (fsdp_cuda_memcpy) are asynchronous on their
 * stream, so CPU-offloaded shards and optimizer state live here. NULL and
 * FSDP_ERR_OOM naming the rank and the request when the host cannot lock
 * that much; free with fsdp_cuda_host_free (NULL allowed). */
void *fsdp_cuda_host_alloc(int64_t nbytes);
void fsdp_cuda_host_free(void *ptr);

/* Caching device allocator (engine/cuda/alloc_cuda.cu). Blocks are rounded
 * to size classes and, once freed, kept per (device, stream) for the next
 * request of that class on that stream: using a block on another stream
 * needs the caller's synchronization. When cudaMalloc fails the cache of the
 * device is released and the request retried; a final failure is
 * FSDP_ERR_OOM with a message naming the rank, the request and the usage. */
void *fsdp_cuda_alloc(int device, int64_t nbytes, fsdp_stream stream);
void fsdp_cuda_free(void *ptr); /* NULL is allowed */
int fsdp_cuda_mem_get_stats(int device, fsdp_mem_stats *out);
void fsdp_cuda_mem_reset_peak(int device);
int fsdp_cuda_mem_empty_cache(int device);
/* the rank named in error messages (default: RANK, PMI_RANK, OMPI_COMM_WORLD_RANK
 * or SLURM_PROCID from the environment, else 0) */
void fsdp_cuda_set_rank(int rank);

/* Tensors on the GPU (engine/cuda/backend_cuda.cu): after fsdp_cuda_install,
 * libfsdp's fsdp_tensor_new/zeros/copy/fill/free and fsdp_mem_* accept
 * device >= 0 (caching allocator; copies and fills on the current stream;
 * a copy touching the host returns when the host side may be used; device
 * copies need contiguous tensors, a dtype change both on one device). */
int fsdp_cuda_install(void);
/* the stream those copies, fills and allocations use (NULL: default stream) */
int fsdp_cuda_set_stream(fsdp_stream stream);
fsdp_stream fsdp_cuda_get_stream(void);
/* 1 in build/libfsdp_cuda_emu.so, the test build that runs our kernels on the
 * CPU under tests/cuda/emu (no cuBLASLt, cuDNN or NCCL), 0 in the real one */
int fsdp_cuda_is_emulated(void);

/* kernels of our own (kernels/<op>_cuda.cu); f32 unless a dtype is given */
int fsdp_embedding_forward_cuda(float *out, const int32_t *idx, const float *table, int N, int V,
                                int C, fsdp_stream stream);
int fsdp_embedding_backward_cuda(float *dtable, const float *dout, const int32_t *idx, int N, int V,
                                 int C, fsdp_stream stream);
int fsdp_layernorm_forward_cuda(float *out, float *mean, float *rstd, const float *inp,
                                const float *weight, const float *bias, int N, int C, float eps,
                                fsdp_stream stream);
int fsdp_layernorm_backward_cuda(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, const float *mean,
                                 const float *rstd, int N, int C, fsdp_stream stream);
int fsdp_rmsnorm_forward_cuda(float *out, float *rstd, const float *inp, const float *weight,
                              int N, int C, float eps, fsdp_stream stream);
int fsdp_rmsnorm_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                               const float *weight, const float *rstd, int N, int C,
                               fsdp_stream stream);
int fsdp_add_rmsnorm_forward_cuda(float *sum, float *out, float *rstd, const float *a,
                                  const float *b, const float *weight, int N, int C, float eps,
                                  fsdp_stream stream);
int fsdp_gelu_forward_cuda(float *out, const float *inp, int64_t n, fsdp_stream stream);
int fsdp_gelu_backward_cuda(float *dinp, const float *dout, const float *inp, int64_t n,
                            fsdp_stream stream);
int fsdp_relu_forward_cuda(float *out, const float *inp, int64_t n, fsdp_stream stream);
int fsdp_relu_backward_cuda(float *dinp, const float *dout, const float *inp, int64_t n,
                            fsdp_stream stream);
int fsdp_silu_forward_cuda(float *out, const float *inp, int64_t n, fsdp_stream stream);
int fsdp_silu_backward_cuda(float *dinp, const float *dout, const float *inp, int64_t n,
                            fsdp_stream stream);
int fsdp_softcap_forward_cuda(float *out, const float *inp, float cap, int64_t n, fsdp_stream stream);
int fsdp_softcap_backward_cuda(float *dinp, const float *dout, const float *inp, float cap, int64_t n,
                               fsdp_stream stream);
int fsdp_swiglu_forward_cuda(float *out, const float *gate, const float *up, int64_t n,
                             fsdp_stream stream);
int fsdp_swiglu_backward_cuda(float *dgate, float *dup, const float *dout, const float *gate,
                              const float *up, int64_t n, fsdp_stream stream);
int fsdp_add_cuda(float *out, const float *a, const float *b, int64_t n, fsdp_stream stream);
int fsdp_axpy_cuda(float *y, float alpha, const float *x, int64_t n, fsdp_stream stream);
int fsdp_scale_cuda(float *out, float alpha, const float *x, int64_t n, fsdp_stream stream);
int fsdp_mul_cuda(float *out, const float *a, const float *b, int64_t n, fsdp_stream stream);
int fsdp_cast_cuda(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n,
                   fsdp_stream stream);
/* dst (f32) += src (f32, bf16 or f16) widened: the bits of a cast to f32
 * followed by fsdp_axpy_cuda with alpha 1, in one pass */
int fsdp_cast_add_cuda(float *dst, const void *src, int src_dtype, int64_t n, fsdp_stream stream);
int fsdp_rope_forward_cuda(float *out, const float *inp, const float *cos, const float *sin,
                           int B, int T, int NH, int HD, int ld, fsdp_stream stream);
int fsdp_rope_backward_cuda(float *dinp, const float *dout, const float *cos, const float *sin,
                            int B, int T, int NH, int HD, int ld, fsdp_stream stream);
int fsdp_crossentropy_forward_cuda(float *loss, float *lse, const float *logits,
                                   const int32_t *targets, int N, int V, int ignore_index,
                                   fsdp_stream stream);
int fsdp_crossentropy_backward_cuda(float *dlogits, const float *dloss, const float *logits,
                                    const float *lse, const int32_t *targets, int N, int V,
                                    int ignore_index, fsdp_stream stream);
int fsdp_crossentropy_inplace_cuda(float *loss, float *lse, float *logits, const int32_t *targets,
                                   int N, int V, int ignore_index, fsdp_stream stream);
int fsdp_crossentropy_mean_forward_cuda(float *out, int32_t *count, const float *loss,
                                        const int32_t *targets, int N, int ignore_index,
                                        double denominator, fsdp_stream stream);
int fsdp_crossentropy_mean_backward_cuda(float *dloss, const float *dout, const int32_t *count,
                                         const int32_t *targets, int N, int ignore_index,
                                         double denominator, fsdp_stream stream);
int fsdp_adamw_cuda(float *param, float *m, float *v, const float *grad, int64_t n, float lr,
                    float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                    int64_t t, fsdp_stream stream);
int fsdp_adamw_runs_cuda(float *param, float *m, float *v, const float *grad, int64_t n,
                         const int64_t *decay, int ndecay, float lr, float beta1, float beta2,
                         float eps, float weight_decay, float grad_scale, int64_t t,
                         fsdp_stream stream); /* decay: host memory */
/* *out (device memory) = sum of x[i]^2 in double */
int fsdp_sumsq_cuda(double *out, const float *x, int64_t n, fsdp_stream stream);
/* *out (device memory, f32) = sum of x[i], accumulated in double in a fixed
 * order (deterministic) and rounded once; 0 when n == 0 */
int fsdp_sum_cuda(float *out, const float *x, int64_t n, fsdp_stream stream);
/* n contiguous elements of dtype (any fsdp_dtype) at dst set to value,
 * converted as fsdp_tensor_fill converts it on the CPU (the same bits);
 * for the integer dtypes a value the type cannot hold after truncation
 * toward zero is FSDP_ERR_INVALID (the CPU's C cast is undefined there) */
int fsdp_fill_cuda(void *dst, int dtype, double value, int64_t n, fsdp_stream stream);
/* dbias[N] += column sums of dout[M, N] (dtype f32, bf16 or f16; sums in f32) */
int fsdp_bias_backward_cuda(void *dbias, const void *dout, int M, int N, int dtype,
                            fsdp_stream stream);
/* plain causal GQA attention with sliding window, in f32 (kernels/
 * attention_cuda.cu): what fsdp_attention_*_cuda runs in f32, with a window,
 * or when cuDNN declines a shape; HD <= 256 */
int fsdp_attention_forward_f32_cuda(float *out, float *lse, const float *q, const float *k,
                                    const float *v, int B, int T, int NH, int NKV, int HD, int ldq,
                                    int ldk, int ldv, int window, float scale, float softcap,
                                    fsdp_stream stream);
int fsdp_attention_backward_f32_cuda(float *dq, float *dk, float *dv, const float *dout,
                                     const float *q, const float *k, const float *v,
                                     const float *out, const float *lse, int B, int T, int NH,
                                     int NKV, int HD, int ldq, int ldk, int ldv, int window,
                                     float scale, float softcap, fsdp_stream stream);
/* packed rows (see fsdp_attention_packed_forward_cpu), in f32; pos on the
 * device, checked on the host before (fsdp_attention_positions_check_cpu) */
int fsdp_attention_packed_forward_cuda(float *out, float *lse, const float *q, const float *k,
                                       const float *v, const int32_t *pos, int B, int T, int NH,
                                       int NKV, int HD, int ldq, int ldk, int ldv, int window,
                                       float scale, float softcap, fsdp_stream stream);
int fsdp_attention_packed_backward_cuda(float *dq, float *dk, float *dv, const float *dout,
                                        const float *q, const float *k, const float *v,
                                        const float *out, const float *lse, const int32_t *pos,
                                        int B, int T, int NH, int NKV, int HD, int ldq, int ldk,
                                        int ldv, int window, float scale, float softcap,
                                        fsdp_stream stream);
/* decoding attention over a KV cache, as fsdp_attention_decode_cpu (the
 * same bits: both run attention_math.h's row) */
int fsdp_attention_decode_cuda(float *out, float *kcache, float *vcache, const float *q,
                               const float *k, const float *v, int B, int Tq, int pos, int Tmax,
                               int NH, int NKV, int HD, int ldq, int ldk, int ldv, int window,
                               float scale, float softcap, fsdp_stream stream);
/* mixture-of-experts routing (kernels/moe_cuda.cu), as fsdp_*_cpu of
 * kernels/moe_cpu.c. Index vectors are NOT range-checked before the launch
 * (they are on the device): the caller guarantees them. A bad index still
 * stays inside the buffers: its gathered row is NaN and every add from or
 * into it is skipped. Rows adding into one row add in index order (no
 * atomics): the CPU's bits, as are top-k (NaN first, ties to the lower
 * column) and the elementwise parts; softmax and dscale sum rows in double
 * in a fixed order, agreeing with the CPU to rounding. */
int fsdp_gather_rows_forward_cuda(float *out, const float *inp, const int32_t *idx, int M, int N,
                                  int C, fsdp_stream stream);
int fsdp_gather_rows_backward_cuda(float *dinp, const float *dout, const int32_t *idx, int M, int N,
                                   int C, fsdp_stream stream);
int fsdp_scatter_add_rows_forward_cuda(float *out, const float *src, const int32_t *idx, int M,
                                       int N, int C, fsdp_stream stream);
int fsdp_scatter_add_rows_backward_cuda(float *dsrc, const float *dout, const int32_t *idx, int M,
                                        int N, int C, fsdp_stream stream);
int fsdp_softmax_forward_cuda(float *out, const float *inp, int N, int C, fsdp_stream stream);
int fsdp_softmax_backward_cuda(float *dinp, const float *dout, const float *out, int N, int C,
                               fsdp_stream stream);
int fsdp_row_scale_forward_cuda(float *out, const float *inp, const float *scale, int N, int C,
                                fsdp_stream stream);
int fsdp_row_scale_backward_cuda(float *dinp, float *dscale, const float *dout, const float *inp,
                                 const float *scale, int N, int C, fsdp_stream stream);
int fsdp_topk_forward_cuda(float *values, int32_t *indices, const float *inp, int N, int C, int K,
                           fsdp_stream stream);
int fsdp_topk_backward_cuda(float *dinp, const float *dvalues, const int32_t *indices, int N, int C,
                            int K, fsdp_stream stream);

/* GEMM through cuBLASLt (kernels/matmul_cublas.cu), row-major like the CPU
 * kernel; a, b, out, bias and pre_gelu share dtype (f32, bf16 or f16),
 * accumulation is f32. gelu != 0 fuses out = gelu(op(a) op(b) + bias) and,
 * when pre_gelu is not NULL, saves the pre-activation [M, N] there.
 * FSDP_ERR_UNSUPPORTED when cuBLASLt has no algorithm for the call (nothing
 * was launched then). The raw entry points: fsdp_matmul_*_cuda below are
 * what the ops call. */
int fsdp_matmul_forward_cublaslt(void *out, void *pre_gelu, const void *a, const void *b,
                                 const void *bias, int M, int N, int K, int trans_a, int trans_b,
                                 int accumulate, int gelu, int dtype, fsdp_stream stream);
int fsdp_matmul_backward_cublaslt(void *da, void *db, void *dbias, const void *dout, const void *a,
                                  const void *b, int M, int N, int K, int trans_a, int trans_b,
                                  int dtype, fsdp_stream stream);
/* 1: f32 GEMMs may use TF32 tensor cores (inputs rounded to 10 mantissa
 * bits, f32 accumulation), like torch.backends.cuda.matmul.allow_tf32;
 * 0 (the default): full f32 */
int fsdp_cuda_set_tf32(int allow);
/* f32 GEMM on the CUDA cores, tiled through shared memory
 * (kernels/gemm_cuda.cu): the fallback when cuBLASLt cannot be used, and the
 * GEMM of the emulated backend. Exactly the semantics of fsdp_matmul_forward_cpu /
 * fsdp_matmul_backward_cpu (row-major, op(a) [M,K], op(b) [K,N], bias [N];
 * backward accumulates into da, db, dbias and skips NULL ones). Each output
 * is summed by one thread over k = 0..K-1 in order with fmaf: the same bits
 * on every run and every GPU, equal to OpenBLAS up to rounding. */
int fsdp_matmul_forward_simt_cuda(float *out, const float *a, const float *b, const float *bias,
                                  int M, int N, int K, int trans_a, int trans_b, int accumulate,
                                  fsdp_stream stream);
int fsdp_matmul_backward_simt_cuda(float *da, float *db, float *dbias, const float *dout,
                                   const float *a, const float *b, int M, int N, int K, int trans_a,
                                   int trans_b, fsdp_stream stream);

/* Flash attention through cuDNN's SDPA graph (kernels/attention_cudnn.cu):
 * causal, GQA, no window; bf16 or f16 q/k/v/out/grads, f32 lse [B, NH, T].
 * Layouts as fsdp_attention_*_cpu (ldq/ldk/ldv token strides, out contiguous).
 * FSDP_ERR_UNSUPPORTED (with cuDNN's reason) when no engine takes the shape
 * (HD and strides must be multiples of 8): use fsdp_attention_*_cuda then.
 * Backward accumulates like every other kernel (cuDNN writes scratch that is
 * added in); NULL gradients are skipped. */
int fsdp_attention_forward_cudnn(void *out, float *lse, const void *q, const void *k,
                                 const void *v, int B, int T, int NH, int NKV, int HD, int ldq,
                                 int ldk, int ldv, float scale, int dtype, fsdp_stream stream);
int fsdp_attention_backward_cudnn(void *dq, void *dk, void *dv, const void *dout, const void *q,
                                  const void *k, const void *v, const void *out, const float *lse,
                                  int B, int T, int NH, int NKV, int HD, int ldq, int ldk, int ldv,
                                  float scale, int dtype, fsdp_stream stream);

/* The compute-dtype policy (engine/cuda/policy_cuda.cu): GEMM and attention
 * with exactly the CPU kernels' arguments plus the stream, as the ops call
 * them. Tensors are f32; the compute dtype (f32 by default; bf16 or f16 is
 * what PyTorch FSDP's MixedPrecision(param_dtype=bf16) does to a module's
 * math) says what the tensor cores see:
 *   f32     GEMMs through cuBLASLt in f32 (fsdp_cuda_set_tf32 applies), our
 *           SIMT kernel when cuBLASLt declines a call; attention by our f32
 *           kernel;
 *   bf16/f16 operands are rounded to the compute dtype in stream-ordered
 *           scratch, the GEMM runs on cuBLASLt in that dtype with f32
 *           accumulation and its result (rounded once to the dtype) is
 *           widened back to f32 (gradients added in f32); a call cuBLASLt
 *           declines in that dtype runs in f32 as above. Attention goes to
 *           cuDNN's flash SDPA in that dtype (lse stays f32); with a window,
 *           or for a shape cuDNN declines, our f32 kernel runs. A declined
 *           shape is remembered (per device, shape, strides and dtype), so
 *           its backward and later calls go straight to the f32 kernel.
 * A change of the compute dtype applies to later calls; the forward and the
 * backward of one op should see the same one. */
int fsdp_cuda_set_compute_dtype(int dtype); /* FSDP_F32, FSDP_BF16 or FSDP_F16 */
int fsdp_cuda_get_compute_dtype(void);
int fsdp_matmul_forward_cuda(float *out, const float *a, const float *b, const float *bias, int M,
                             int N, int K, int trans_a, int trans_b, int accumulate,
                             fsdp_stream stream);
int fsdp_matmul_backward_cuda(float *da, float *db, float *dbias, const float *dout, const float *a,
                              const float *b, int M, int N, int K, int trans_a, int trans_b,
                              fsdp_stream stream);
/* attention: cuDNN in the compute dtype where it takes the shape (no
 * window, no soft-capping), else the f32 kernels */
int fsdp_attention_forward_cuda(float *out, float *lse, const float *q, const float *k,
                                const float *v, int B, int T, int NH, int NKV, int HD, int ldq,
                                int ldk, int ldv, int window, float scale, float softcap,
                                fsdp_stream stream);
int fsdp_attention_backward_cuda(float *dq, float *dk, float *dv, const float *dout,
                                 const float *q, const float *k, const float *v, const float *out,
                                 const float *lse, int B, int T, int NH, int NKV, int HD, int ldq,
                                 int ldk, int ldv, int window, float scale, float softcap,
                                 fsdp_stream stream);
/* LoRA on the GPU (engine/cuda/lora_cuda.cu): fsdp_lora_forward_cpu /
 * backward's arguments and semantics plus the stream; the GEMMs follow the
 * compute dtype above, the dropout mask is the CPU's (kernels/lora_cuda.cu:
 * fsdp_lora_dropout_cuda is fsdp_lora_dropout_cpu's twin, same bits). */
int fsdp_lora_dropout_cuda(float *out, const float *x, int64_t n, float p, uint64_t seed, int accumulate,
                           fsdp_stream stream);
int fsdp_lora_forward_cuda(float *out, float *xa, const float *x, const float *w, const float *bias,
                           const float *a, const float *b, int M, int N, int K, int R, float scale,
                           float p, uint64_t seed, fsdp_stream stream);
int fsdp_lora_backward_cuda(float *dx, float *dw, float *dbias, float *da, float *db, const float *dout,
                            const float *x, const float *w, const float *a, const float *b,
                            const float *xa, int M, int N, int K, int R, float scale, float p,
                            uint64_t seed, fsdp_stream stream);
/* shapes cuDNN declined so far (all devices), and forgetting them */
int64_t fsdp_cuda_declined_shapes(void);
void fsdp_cuda_clear_declined_shapes(void);

/* NCCL collectives (engine/cuda/comm_nccl.cu). An NCCL comm is an fsdp_comm:
 * fsdp_comm_all_gather / reduce_scatter / all_reduce / broadcast / barrier /
 * wait / test / free / bytes_sent work on it as documented in the
 * collectives section, with pointers to device memory of the comm's device;
 * fsdp_comm_backend says "nccl". All dtypes can be gathered and broadcast;
 * reductions (SUM, AVG, MAX) take f32, bf16, f16, i32, i64 and u8 (NCCL
 * reduces 16-bit floats in their own precision, not widened like MPI).
 * Streams: each comm owns a collective stream. A collective first makes it
 * wait for the work queued so far on the compute stream (set with
 * fsdp_comm_nccl_set_stream; NULL, the default, is the legacy default
 * stream), then runs there; its request completes when the device has
 * finished it. fsdp_comm_wait polls the device with the timeout: on timeout
 * or an asynchronous NCCL error it aborts the communicator (a hung
 * collective cannot be cancelled) and fails naming the rank, the
 * collective, its bytes and the time spent; the request is freed then, and
 * later calls on that comm fail: make a new one. A blocking call (NULL
 * request) waits the same way. Buffers must stay allocated and unchanged
 * until the request completes or a stream that uses them has waited for it.
 * Not supported: fsdp_comm_split of an NCCL comm. */

/* Collective over bootstrap (an mpi or self comm: every rank of it calls
 * this): rank 0 creates the NCCL id, a broadcast over bootstrap hands it to
 * the others, and every rank joins on device. NULL on error (the others'
 * waits time out rather than hang). */
fsdp_comm *fsdp_comm_nccl_new(fsdp_comm *bootstrap, int device);
/* The same without MPI (jobs started by torchrun: RANK, WORLD_SIZE,
 * MASTER_ADDR, MASTER_PORT): rank 0 listens on port and hands the id, as
 * hex text, to ranks 1..world-1, which fetch it from master_addr:port
 * (engine/rendezvous.c). Bounded by FSDP_COMM_TIMEOUT (default 600 s). */
fsdp_comm *fsdp_comm_nccl_new_tcp(int rank, int world, const char *master_addr, int port, int device);
/* the stream whose queued work every later collective of c follows */
int fsdp_comm_nccl_set_stream(fsdp_comm *c, fsdp_stream compute);
/* Work queued on stream after this call starts once the collective of req
 * is done, without blocking the host (prefetch: gather the next unit while
 * this one computes). req stays valid: fsdp_comm_wait or fsdp_comm_test it
 * later to free it (cheap once the stream has passed it). A request
 * complete at its start (count 0) needs no wait. */
int fsdp_cuda_stream_wait_request(fsdp_stream stream, fsdp_comm_request *req);

/* ---- files: safetensors (engine/safetensors.c) -------------------------- */

typedef struct fsdp_st_file fsdp_st_file;     /* opened (mmap) for reading */
typedef struct fsdp_st_writer fsdp_st_writer; /* collects tensors to write */

typedef struct fsdp_st_info {
    int32_t dtype;        /* fsdp_dtype, or -1 for a dtype we do not handle */
    int32_t ndim;
    int64_t shape[FSDP_MAX_DIMS];
    int64_t offset;       /* byte offset of the data from the file start */
    int64_t nbytes;
} fsdp_st_info;

/* validates the whole header (JSON, dtypes, shapes vs byte ranges, ranges
 * inside the file, no overlaps); errors name the file and the tensor */
fsdp_st_file *fsdp_st_open(const char *path);
void fsdp_st_close(fsdp_st_file *f);
int fsdp_st_count(const fsdp_st_file *f);
const char *fsdp_st_name(const fsdp_st_file *f, int i);     /* NULL if out of range */
int fsdp_st_find(const fsdp_st_file *f, const char *name);  /* index or -1 */
int fsdp_st_get_info(const fsdp_st_file *f, int i, fsdp_st_info *out);
const void *fsdp_st_data(const fsdp_st_file *f, int i);     /* mapped bytes */
const char *fsdp_st_dtype_string(const fsdp_st_file *f, int i); /* "F32", "BF16", ... */
/* __metadata__ value for key, NULL if absent */
const char *fsdp_st_metadata(const fsdp_st_file *f, const char *key);

fsdp_st_writer *fsdp_st_writer_new(void);
void fsdp_st_writer_free(fsdp_st_writer *w);
/* data is copied at save time, so it must stay valid until fsdp_st_writer_save */
int fsdp_st_writer_add(fsdp_st_writer *w, const char *name, int dtype, int ndim,
                       const int64_t *shape, const void *data);
int fsdp_st_writer_set_metadata(fsdp_st_writer *w, const char *key, const char *value);
/* writes path.tmp, fsyncs, renames to path */
int fsdp_st_writer_save(fsdp_st_writer *w, const char *path);

/* ---- files: misc -------------------------------------------------------- */

/* crc32 (zlib polynomial) of a whole file; -1 on error */
int64_t fsdp_file_crc32(const char *path);
uint32_t fsdp_crc32(uint32_t crc, const void *data, int64_t n);
/* write bytes to path atomically (tmp file, fsync, rename, fsync dir) */
int fsdp_file_write_atomic(const char *path, const void *data, int64_t n);
/* the whole content of a file, gunzipped when it is gzip (zlib; plain files
 * pass through); *out is malloc'd, release it with fsdp_free */
int fsdp_file_read_all(const char *path, char **out, int64_t *len);
void fsdp_free(void *p);
/* rename a directory into place atomically and fsync its parent; an
 * existing final_path is an error */
int fsdp_dir_commit(const char *tmp_path, const char *final_path);
/* the same, swapping with an existing final_path in one step; tmp_path then
 * holds the old directory (the caller removes it) */
int fsdp_dir_replace(const char *tmp_path, const char *final_path);
/* newest mtime of a path and of a directory's direct entries; -1 on error */
int64_t fsdp_path_newest_mtime(const char *path);
/* 1 when a process with this id runs on this host */
int fsdp_pid_alive(int64_t pid);

/* ---- token files (engine/tokens.c) -------------------------------------- *
 * Layout: 256 int32 header, then tokens. header[0] = 20240520 (magic, same as
 * llm.c's .bin files), header[1] = version (1: uint16 tokens, 2: uint32 tokens),
 * header[2] = number of tokens (low 31 bits), header[3] = high bits of it,
 * header[4] = vocab size (0 = unknown), header[5..255] = 0. Version 1 files of llm.c
 * read as is. Opening checks the header, the size, and every id (below the
 * header's vocab size when it has one, else below 2^31). */

typedef struct fsdp_token_file {
    const void *tokens;   /* mapped token array */
    int64_t n_tokens;
    int32_t token_bytes;  /* 2 or 4 */
    int32_t vocab_size;   /* from the header; 0 = unknown */
    int64_t max_token;    /* the largest id in the file (checked at open), -1 when empty */
    void *map_base;       /* private */
    int64_t map_len;      /* private */
} fsdp_token_file;

int fsdp_tokens_open(fsdp_token_file *tf, const char *path);
void fsdp_tokens_close(fsdp_token_file *tf);
/* writes a token file atomically; token_bytes 2 requires every token < 65536 */
int fsdp_tokens_write(const char *path, const int32_t *tokens, int64_t n, int token_bytes,
                      int vocab_size);
/* copy tokens [start, start+n) as int32 into out (ids were checked at open) */
int fsdp_tokens_read(const fsdp_token_file *tf, int32_t *out, int64_t start, int64_t n);

#ifndef FSDP_CDEF
#pragma GCC visibility pop
#ifdef __cplusplus
}
#endif
#endif
#endif /* FSDP_H */
