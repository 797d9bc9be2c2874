/* comm_nccl.cu - the NCCL backend of the collective interface (comm_ops.h).
 *
 * An NCCL comm is an fsdp_comm whose collectives engine/comm.c checks and
 * then hands to the table at the bottom of this file. Per comm:
 *   - a non-blocking NCCL communicator (config.blocking = 0), so that no
 *     NCCL call can block the host for good: init, enqueue and finalize are
 *     polled through ncclCommGetAsyncError with FSDP_COMM_TIMEOUT;
 *   - a collective stream of its own (cudaStreamNonBlocking);
 *   - the caller's compute stream (fsdp_comm_nccl_set_stream): before each
 *     collective an event recorded there makes the collective stream wait,
 *     so the collective sees everything queued on compute before it.
 * A started collective's handle is an event recorded on the collective
 * stream after it. fsdp_comm_wait polls that event and the communicator's
 * async error (comm.c's fsdp_comm_poll); on timeout or error it aborts the
 * communicator (a hung NCCL kernel cannot be cancelled otherwise) and the
 * comm fails from then on. An interrupt (fsdp_comm_interrupt) ends the wait
 * but not the collective; an NCCL comm cannot resync.
 * fsdp_cuda_stream_wait_request makes another stream wait for the event.
 *
 * Data movement (all_gather, broadcast) goes as bytes, so every dtype works;
 * reductions map to NCCL's types (no u16) and ops (SUM, AVG, MAX). Buffers
 * must be device memory of the comm's device (checked per call). NCCL's
 * in-place forms are used as such; any other overlap of send and recv goes
 * through a temporary from the caching allocator on the collective stream.
 *
 * Bootstrap: the ncclUniqueId made by rank 0 travels over a host comm
 * (fsdp_comm_broadcast of bytes) or over the TCP rendezvous of
 * engine/rendezvous.c as hex text. */
#include <nccl.h>
#include <stdio.h>
#include <string.h>
#include <new>
#include <vector>
#include "cuda_engine.cuh"
#include "comm_ops.h"

namespace {

struct nccl_ctx {
    int device;
    ncclComm_t comm = NULL;        /* NULL once aborted */
    cudaStream_t coll = NULL;      /* the collective stream */
    cudaStream_t compute = NULL;   /* collectives follow its queued work */
    cudaEvent_t ready = NULL;      /* recorded on compute before each collective */
    void *scratch = NULL;          /* one int32 of device memory for the barrier */
    std::vector<cudaEvent_t> spare; /* completion events for reuse */
    bool aborted = false;
    char why[1024] = "";            /* what aborted it */
};

/* a started collective: done fires on the collective stream after it */
struct nccl_op {
    cudaEvent_t done;
    double start_s;
};

extern const fsdp_comm_ops nccl_ops;

/* makes the comm's device current until the end of the scope */
struct device_guard {
    int prev = -1;
    cudaError_t status;
    explicit device_guard(int device) {
        if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
        status = cudaSetDevice(device);
    }
    ~device_guard() {
        if (prev >= 0) cudaSetDevice(prev);
    }
};

nccl_ctx *ctx_of(const fsdp_comm *c) { return (nccl_ctx *)fsdp_comm_ext_ctx(c); }

/* NCCL's name of r plus its last message for comm, as "what (detail)" */
void nccl_reason(char *buf, size_t cap, ncclComm_t comm, ncclResult_t r) {
    const char *detail = ncclGetLastError(comm);
    if (detail && *detail) snprintf(buf, cap, "%s (%s)", ncclGetErrorString(r), detail);
    else snprintf(buf, cap, "%s", ncclGetErrorString(r));
}

/* aborts the communicator once and remembers why (what later calls report) */
void abort_comm(nccl_ctx *x, const char *why) {
    if (x->aborted) return;
    if (x->comm) ncclCommAbort(x->comm);
    x->comm = NULL;
    x->aborted = true;
    snprintf(x->why, sizeof x->why, "%s", why);
}

/* After an NCCL call on a non-blocking communicator: while it reports
 * ncclInProgress (NCCL is still connecting or enqueueing) poll its async
 * error, at most timeout_s. Returns ncclInProgress on timeout. */
ncclResult_t settle(ncclComm_t comm, ncclResult_t r, double timeout_s) {
    if (r != ncclInProgress) return r;
    const double deadline = fsdp_now_s() + timeout_s;
    fsdp_backoff b;
    fsdp_backoff_init(&b, 0.02);
    for (;;) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t q = ncclCommGetAsyncError(comm, &state);
        if (q != ncclSuccess) return q;
        if (state != ncclInProgress) return state;
        if (fsdp_now_s() >= deadline) return ncclInProgress;
        fsdp_backoff_pause(&b);
    }
}

/* the status of an NCCL call that starts a collective, settled; any failure
 * but a bad argument leaves the communicator unusable, so it is aborted */
int nccl_call(const fsdp_comm *c, nccl_ctx *x, const char *fn_name, const char *name, int64_t nbytes,
              ncclResult_t r) {
    const double timeout_s = fsdp_comm_default_timeout();
    r = settle(x->comm, r, timeout_s);
    if (r == ncclSuccess) return FSDP_OK;
    char reason[400], msg[600];
    if (r == ncclInProgress) snprintf(reason, sizeof reason, "still enqueueing after %g s", timeout_s);
    else nccl_reason(reason, sizeof reason, x->comm, r);
    snprintf(msg, sizeof msg, "%s of %lld bytes: %s failed: %s", name, (long long)nbytes, fn_name, reason);
    if (r == ncclInvalidArgument || r == ncclInvalidUsage)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s", fsdp_comm_who(c), msg);
    abort_comm(x, msg);
    return fsdp_error(FSDP_ERR_COMM, "%s: %s; the NCCL communicator was aborted", fsdp_comm_who(c), msg);
}

int cuda_call(const fsdp_comm *c, const char *name, const char *what, cudaError_t e) {
    if (e == cudaSuccess) return FSDP_OK;
    cudaGetLastError();
    return fsdp_error(e == cudaErrorMemoryAllocation ? (int)FSDP_ERR_OOM : (int)FSDP_ERR_DEVICE,
                      "%s: %s: %s failed: %s (%s)", fsdp_comm_who(c), name, what, cudaGetErrorString(e),
                      cudaGetErrorName(e));
}

/* ptr must be device memory of the comm's device */
int check_device_ptr(const fsdp_comm *c, const nccl_ctx *x, const char *name, const char *arg, const void *ptr) {
    cudaPointerAttributes a;
    cudaError_t e = cudaPointerGetAttributes(&a, ptr);
    if (e != cudaSuccess) return cuda_call(c, name, "cudaPointerGetAttributes", e);
    if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
        return fsdp_error(FSDP_ERR_INVALID,
                          "%s: %s: %s %p is host memory; an NCCL comm takes device memory of cuda:%d"
                          " (host buffers go through the mpi or self comm)",
                          fsdp_comm_who(c), name, arg, ptr, x->device);
    if (a.type == cudaMemoryTypeDevice && a.device != x->device)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: %s %p is on cuda:%d, the NCCL comm on cuda:%d",
                          fsdp_comm_who(c), name, arg, ptr, a.device, x->device);
    return FSDP_OK;
}

int overlaps(const void *a, int64_t na, const void *b, int64_t nb) {
    const char *pa = (const char *)a, *pb = (const char *)b;
    return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

/* NCCL's type and op for a reduction; FSDP_ERR_UNSUPPORTED naming the rank
 * for what NCCL cannot reduce (comm.c has checked dtype and op already) */
int reduction(const fsdp_comm *c, const char *name, int dtype, int op, ncclDataType_t *t, ncclRedOp_t *o) {
    switch (dtype) {
    case FSDP_F32: *t = ncclFloat32; break;
    case FSDP_BF16: *t = ncclBfloat16; break;
    case FSDP_F16: *t = ncclFloat16; break;
    case FSDP_I32: *t = ncclInt32; break;
    case FSDP_I64: *t = ncclInt64; break;
    case FSDP_U8: *t = ncclUint8; break;
    default:
        return fsdp_error(FSDP_ERR_UNSUPPORTED,
                          "%s: %s: NCCL cannot reduce %s (reductions take f32, bf16, f16, i32, i64, u8;"
                          " %s can only be gathered or broadcast)",
                          fsdp_comm_who(c), name, fsdp_dtype_name(dtype), fsdp_dtype_name(dtype));
    }
    switch (op) {
    case FSDP_REDUCE_SUM: *o = ncclSum; break;
    case FSDP_REDUCE_AVG: *o = ncclAvg; break;
    case FSDP_REDUCE_MAX: *o = ncclMax; break;
    default:
        return fsdp_error(FSDP_ERR_UNSUPPORTED, "%s: %s: reduce op %d has no NCCL equivalent",
                          fsdp_comm_who(c), name, op);
    }
    return FSDP_OK;
}

int aborted_error(const fsdp_comm *c, const nccl_ctx *x, const char *name, int64_t nbytes) {
    return fsdp_error(FSDP_ERR_COMM,
                      "%s: %s of %lld bytes: the NCCL communicator was aborted earlier (%s); make a new one",
                      fsdp_comm_who(c), name, (long long)nbytes, x->why);
}

/* Starts a collective: the collective stream waits for the compute stream,
 * issue(x) queues the NCCL work there, and the completion event is recorded
 * after it into a new handle. */
template <class Issue>
int start(fsdp_comm *c, const char *name, int64_t nbytes, Issue issue, void **handle) {
    nccl_ctx *x = ctx_of(c);
    *handle = NULL;
    if (x->aborted) return aborted_error(c, x, name, nbytes);
    device_guard guard(x->device);
    int rc = cuda_call(c, name, "cudaSetDevice", guard.status);
    if (!rc) rc = cuda_call(c, name, "cudaEventRecord (compute stream)", cudaEventRecord(x->ready, x->compute));
    if (!rc) rc = cuda_call(c, name, "cudaStreamWaitEvent", cudaStreamWaitEvent(x->coll, x->ready, 0));
    if (rc) return rc;
    const double t0 = fsdp_now_s();
    rc = issue(x);
    if (rc) return rc;
    nccl_op *op = new (std::nothrow) nccl_op;
    if (!op) return fsdp_error(FSDP_ERR_OOM, "%s: %s: out of host memory for a request", fsdp_comm_who(c), name);
    op->start_s = t0;
    if (!x->spare.empty()) {
        op->done = x->spare.back();
        x->spare.pop_back();
    } else {
        rc = cuda_call(c, name, "cudaEventCreateWithFlags", cudaEventCreateWithFlags(&op->done, cudaEventDisableTiming));
        if (rc) {
            delete op;
            return rc;
        }
    }
    rc = cuda_call(c, name, "cudaEventRecord (collective stream)", cudaEventRecord(op->done, x->coll));
    if (rc) {
        cudaEventDestroy(op->done);
        delete op;
        return rc;
    }
    *handle = op;
    return FSDP_OK;
}

/* ---- the ops table ------------------------------------------------------ */

int op_all_gather(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, void **handle) {
    const char *name = "all_gather";
    const int64_t slice = count * fsdp_dtype_size(dtype), total = slice * fsdp_comm_size(c);
    return start(c, name, total, [&](nccl_ctx *x) -> int {
        if (slice == 0) return FSDP_OK;
        int rc = check_device_ptr(c, x, name, "recv", recv);
        if (!rc) rc = check_device_ptr(c, x, name, "send", send);
        if (rc) return rc;
        /* send at this rank's slot of recv is NCCL's in-place form */
        const void *src = send;
        void *tmp = NULL;
        if (send != (const char *)recv + (int64_t)fsdp_comm_rank(c) * slice && overlaps(send, slice, recv, total)) {
            tmp = fsdp_cuda_alloc(x->device, slice, x->coll);
            if (!tmp) return FSDP_ERR_OOM;
            rc = cuda_call(c, name, "cudaMemcpyAsync", cudaMemcpyAsync(tmp, send, (size_t)slice,
                                                                       cudaMemcpyDeviceToDevice, x->coll));
            src = tmp;
        }
        if (!rc)
            rc = nccl_call(c, x, "ncclAllGather", name, total,
                           ncclAllGather(src, recv, (size_t)slice, ncclUint8, x->comm, x->coll));
        fsdp_cuda_free(tmp); /* reused only by later work on the collective stream */
        return rc;
    }, handle);
}

int op_reduce_scatter(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, int op,
                      void **handle) {
    const char *name = "reduce_scatter";
    const int64_t slice = count * fsdp_dtype_size(dtype), total = slice * fsdp_comm_size(c);
    ncclDataType_t t = ncclFloat32;
    ncclRedOp_t o = ncclSum;
    int rc = reduction(c, name, dtype, op, &t, &o);
    if (rc) return rc;
    return start(c, name, total, [&](nccl_ctx *x) -> int {
        if (slice == 0) return FSDP_OK;
        int rc2 = check_device_ptr(c, x, name, "recv", recv);
        if (!rc2) rc2 = check_device_ptr(c, x, name, "send", send);
        if (rc2) return rc2;
        /* recv at this rank's slice of send is NCCL's in-place form; any
         * other overlap reduces into a temporary copied into place after */
        void *dst = recv;
        if (recv != (const char *)send + (int64_t)fsdp_comm_rank(c) * slice && overlaps(send, total, recv, slice)) {
            dst = fsdp_cuda_alloc(x->device, slice, x->coll);
            if (!dst) return FSDP_ERR_OOM;
        }
        rc2 = nccl_call(c, x, "ncclReduceScatter", name, total,
                        ncclReduceScatter(send, dst, (size_t)count, t, o, x->comm, x->coll));
        if (dst != recv) {
            if (!rc2)
                rc2 = cuda_call(c, name, "cudaMemcpyAsync", cudaMemcpyAsync(recv, dst, (size_t)slice,
                                                                            cudaMemcpyDeviceToDevice, x->coll));
            fsdp_cuda_free(dst);
        }
        return rc2;
    }, handle);
}

int op_all_reduce(fsdp_comm *c, void *buf, int64_t count, int dtype, int op, void **handle) {
    const char *name = "all_reduce";
    const int64_t nbytes = count * fsdp_dtype_size(dtype);
    ncclDataType_t t = ncclFloat32;
    ncclRedOp_t o = ncclSum;
    int rc = reduction(c, name, dtype, op, &t, &o);
    if (rc) return rc;
    return start(c, name, nbytes, [&](nccl_ctx *x) -> int {
        if (nbytes == 0) return FSDP_OK;
        int rc2 = check_device_ptr(c, x, name, "buf", buf);
        if (rc2) return rc2;
        return nccl_call(c, x, "ncclAllReduce", name, nbytes,
                         ncclAllReduce(buf, buf, (size_t)count, t, o, x->comm, x->coll));
    }, handle);
}

int op_broadcast(fsdp_comm *c, void *buf, int64_t count, int dtype, int root, void **handle) {
    const char *name = "broadcast";
    const int64_t nbytes = count * fsdp_dtype_size(dtype);
    return start(c, name, nbytes, [&](nccl_ctx *x) -> int {
        if (nbytes == 0) return FSDP_OK;
        int rc = check_device_ptr(c, x, name, "buf", buf);
        if (rc) return rc;
        return nccl_call(c, x, "ncclBroadcast", name, nbytes,
                         ncclBroadcast(buf, buf, (size_t)nbytes, ncclUint8, root, x->comm, x->coll));
    }, handle);
}

/* comm.c's poll over op_test (which aborts on device and NCCL errors); a
 * timeout aborts too, since a hung NCCL kernel cannot be cancelled, while an
 * interrupt leaves the collective running (pending) */
int op_wait(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, double timeout_s, int *pending) {
    nccl_ctx *x = ctx_of(c);
    nccl_op *op = (nccl_op *)handle;
    *pending = 0;
    if (x->aborted) return aborted_error(c, x, name, nbytes);
    int rc = fsdp_comm_poll(c, handle, name, nbytes, timeout_s, 0.02, pending);
    if (!*pending || rc == FSDP_ERR_INTERRUPTED) return rc;
    *pending = 0;
    char msg[600];
    snprintf(msg, sizeof msg, "%s of %lld bytes timed out: not done %.3f s after it started (waited %g s;"
             " a peer may have died or stopped calling collectives)", name, (long long)nbytes,
             fsdp_now_s() - op->start_s, timeout_s);
    abort_comm(x, msg);
    return fsdp_error(FSDP_ERR_COMM, "%s: collective %s; the NCCL communicator was aborted", fsdp_comm_who(c), msg);
}

int op_test(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, int *done) {
    nccl_ctx *x = ctx_of(c);
    nccl_op *op = (nccl_op *)handle;
    *done = 1;
    if (x->aborted) return aborted_error(c, x, name, nbytes);
    cudaError_t e = cudaEventQuery(op->done);
    if (e == cudaSuccess) return FSDP_OK;
    if (e != cudaErrorNotReady) {
        cudaGetLastError();
        char msg[400];
        snprintf(msg, sizeof msg, "%s of %lld bytes failed: the device reports %s (%s)", name, (long long)nbytes,
                 cudaGetErrorString(e), cudaGetErrorName(e));
        abort_comm(x, msg);
        return fsdp_error(FSDP_ERR_DEVICE, "%s: %s; the NCCL communicator was aborted", fsdp_comm_who(c), msg);
    }
    ncclResult_t state = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(x->comm, &state);
    if (q != ncclSuccess) state = q;
    if (state != ncclSuccess && state != ncclInProgress) {
        char reason[400], msg[600];
        nccl_reason(reason, sizeof reason, x->comm, state);
        snprintf(msg, sizeof msg, "%s of %lld bytes failed after %.3f s: NCCL reports %s", name, (long long)nbytes,
                 fsdp_now_s() - op->start_s, reason);
        abort_comm(x, msg);
        return fsdp_error(FSDP_ERR_COMM, "%s: %s; the NCCL communicator was aborted", fsdp_comm_who(c), msg);
    }
    *done = 0;
    return FSDP_OK;
}

void op_request_free(fsdp_comm *c, void *handle) {
    nccl_ctx *x = ctx_of(c);
    nccl_op *op = (nccl_op *)handle;
    if (x->spare.size() < 64) x->spare.push_back(op->done); /* a recorded event may be recorded again */
    else cudaEventDestroy(op->done);
    delete op;
}

/* an all_reduce of one int32; comm.c waits for it on the host */
int op_barrier(fsdp_comm *c, void **handle) {
    const char *name = "barrier";
    return start(c, name, 4, [&](nccl_ctx *x) -> int {
        return nccl_call(c, x, "ncclAllReduce", name, 4,
                         ncclAllReduce(x->scratch, x->scratch, 1, ncclInt32, ncclSum, x->comm, x->coll));
    }, handle);
}

/* releases what make_comm built; a live communicator is finalized (pending
 * collectives flushed) within the timeout, else aborted */
void destroy_ctx(nccl_ctx *x) {
    device_guard guard(x->device);
    if (x->comm) {
        ncclResult_t r = settle(x->comm, ncclCommFinalize(x->comm), fsdp_comm_default_timeout());
        if (r == ncclSuccess) ncclCommDestroy(x->comm);
        else ncclCommAbort(x->comm);
        x->comm = NULL;
    }
    for (cudaEvent_t e : x->spare) cudaEventDestroy(e);
    if (x->ready) cudaEventDestroy(x->ready);
    if (x->scratch) cudaFree(x->scratch);
    if (x->coll) cudaStreamDestroy(x->coll);
    cudaGetLastError();
    delete x;
}

void op_comm_free(fsdp_comm *c) { destroy_ctx(ctx_of(c)); }

const fsdp_comm_ops nccl_ops = {
    "nccl",
    op_all_gather,
    op_reduce_scatter,
    op_all_reduce,
    op_broadcast,
    op_barrier,
    op_wait,
    op_test,
    op_request_free,
    op_comm_free,
    nullptr, /* split: refused */
    0,       /* device memory */
    nullptr, /* resync_exchange: cannot resync */
    nullptr, /* notify: interrupts stay local */
};

/* the NCCL ctx of c, or NULL + FSDP_ERR_INVALID naming fn */
nccl_ctx *nccl_of(const fsdp_comm *c, const char *fn) {
    if (!c) return (nccl_ctx *)fsdp_error_null(FSDP_ERR_INVALID, "%s: comm is NULL", fn);
    if (fsdp_comm_ext_ops(c) != &nccl_ops)
        return (nccl_ctx *)fsdp_error_null(FSDP_ERR_INVALID, "%s: %s: the comm is %s, not nccl", fn,
                                           fsdp_comm_who(c), fsdp_comm_backend(c));
    return ctx_of(c);
}

/* ---- making a comm ------------------------------------------------------ */

/* device must be a GPU of this process; who names the rank */
int check_device(const char *fn, const char *who, int device) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return fsdp_error(FSDP_ERR_DEVICE, "%s: %s: no usable GPU: %s (%s)", fn, who, cudaGetErrorString(e),
                          cudaGetErrorName(e));
    }
    if (device < 0 || device >= n)
        return fsdp_error(FSDP_ERR_INVALID, "%s: %s: device %d outside 0..%d", fn, who, device, n - 1);
    return FSDP_OK;
}

/* Joins rank of size with id on device: the stream, events and scratch,
 * then the communicator, polled for at most FSDP_COMM_TIMEOUT. */
fsdp_comm *make_comm(const char *fn, const char *who, int rank, int size, const ncclUniqueId &id, int device,
                     const fsdp_comm *same_group_as) {
    nccl_ctx *x = new (std::nothrow) nccl_ctx;
    if (!x) return (fsdp_comm *)fsdp_error_null(FSDP_ERR_OOM, "%s: %s: out of host memory", fn, who);
    x->device = device;
    device_guard guard(device);
    cudaError_t e = guard.status;
    const char *what = "cudaSetDevice";
    if (e == cudaSuccess) { what = "cudaStreamCreateWithFlags"; e = cudaStreamCreateWithFlags(&x->coll, cudaStreamNonBlocking); }
    if (e == cudaSuccess) { what = "cudaEventCreateWithFlags"; e = cudaEventCreateWithFlags(&x->ready, cudaEventDisableTiming); }
    if (e == cudaSuccess) { what = "cudaMalloc"; e = cudaMalloc(&x->scratch, sizeof(int32_t)); }
    if (e != cudaSuccess) {
        cudaGetLastError();
        fsdp_error(e == cudaErrorMemoryAllocation ? (int)FSDP_ERR_OOM : (int)FSDP_ERR_DEVICE,
                   "%s: %s: cuda:%d: %s failed: %s (%s)", fn, who, device, what, cudaGetErrorString(e),
                   cudaGetErrorName(e));
        destroy_ctx(x);
        return NULL;
    }

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const double timeout_s = fsdp_comm_default_timeout();
    ncclResult_t r = ncclCommInitRankConfig(&x->comm, size, id, rank, &config);
    if (x->comm) r = settle(x->comm, r, timeout_s);
    if (r != ncclSuccess) {
        char reason[400];
        if (r == ncclInProgress) snprintf(reason, sizeof reason, "the other ranks did not join within %g s", timeout_s);
        else nccl_reason(reason, sizeof reason, x->comm, r);
        fsdp_error(FSDP_ERR_COMM, "%s: %s: ncclCommInitRankConfig (rank %d of %d on cuda:%d) failed: %s", fn, who,
                   rank, size, device, reason);
        if (x->comm) ncclCommAbort(x->comm);
        x->comm = NULL;
        destroy_ctx(x);
        return NULL;
    }
    fsdp_comm *c = fsdp_comm_ext_new(&nccl_ops, x, rank, size, same_group_as);
    if (!c) destroy_ctx(x); /* fsdp_comm_ext_new's message stays */
    return c;
}

/* 128-byte ids as hex text for the TCP rendezvous */
void id_to_hex(const ncclUniqueId &id, char *out) {
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)id.internal;
    for (size_t i = 0; i < sizeof id.internal; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * sizeof id.internal] = 0;
}

int hex_digit(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* 0, or -1 when text is not exactly an id's hex */
int id_from_hex(const char *text, ncclUniqueId *id) {
    if (strlen(text) != 2 * sizeof id->internal) return -1;
    unsigned char *p = (unsigned char *)id->internal;
    for (size_t i = 0; i < sizeof id->internal; i++) {
        int hi = hex_digit(text[2 * i]), lo = hex_digit(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        p[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

}  // namespace

/* ---- public ------------------------------------------------------------- */

fsdp_comm *fsdp_comm_nccl_new(fsdp_comm *bootstrap, int device) {
    const char *fn = "fsdp_comm_nccl_new";
    if (!bootstrap) return (fsdp_comm *)fsdp_error_null(FSDP_ERR_INVALID, "%s: bootstrap comm is NULL", fn);
    char who[128];
    snprintf(who, sizeof who, "%s", fsdp_comm_who(bootstrap));
    if (fsdp_comm_ext_ops(bootstrap) && !fsdp_comm_ext_ops(bootstrap)->host)
        return (fsdp_comm *)fsdp_error_null(FSDP_ERR_INVALID, "%s: %s: the bootstrap comm is %s; it must be a"
                                            " host comm (mpi, tcp or self)", fn, who, fsdp_comm_backend(bootstrap));
    const int rank = fsdp_comm_rank(bootstrap), size = fsdp_comm_size(bootstrap);

    /* Every rank takes part in the broadcast, even one that has failed
     * already, so that a local failure ends the call everywhere instead of
     * leaving the others to time out. ok == 0 from rank 0: no id. */
    struct {
        int32_t ok;
        ncclUniqueId id;
    } msg;
    memset(&msg, 0, sizeof msg);
    char local_error[1024] = "";
    int local = check_device(fn, who, device);
    if (!local && rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&msg.id);
        if (r != ncclSuccess) {
            char reason[400];
            nccl_reason(reason, sizeof reason, NULL, r);
            local = fsdp_error(FSDP_ERR_COMM, "%s: %s: ncclGetUniqueId failed: %s", fn, who, reason);
        }
    }
    if (local) snprintf(local_error, sizeof local_error, "%s", fsdp_last_error());
    if (rank == 0) msg.ok = local == FSDP_OK;
    int rc = fsdp_comm_broadcast(bootstrap, &msg, (int64_t)sizeof msg, FSDP_U8, 0, NULL);
    if (rc) {
        char reason[1024];
        snprintf(reason, sizeof reason, "%s", fsdp_last_error());
        return (fsdp_comm *)fsdp_error_null(rc, "%s: %s: handing out the NCCL id over the %s comm failed: %s", fn,
                                            who, fsdp_comm_backend(bootstrap), reason);
    }
    if (local) return (fsdp_comm *)fsdp_error_null(local, "%s", local_error);
    if (!msg.ok)
        return (fsdp_comm *)fsdp_error_null(FSDP_ERR_COMM, "%s: %s: rank 0 could not create the NCCL id (its own"
                                            " error says why)", fn, who);
    return make_comm(fn, who, rank, size, msg.id, device, bootstrap);
}

fsdp_comm *fsdp_comm_nccl_new_tcp(int rank, int world, const char *master_addr, int port, int device) {
    const char *fn = "fsdp_comm_nccl_new_tcp";
    char who[64];
    snprintf(who, sizeof who, "rank %d", rank);
    if (world < 1 || rank < 0 || rank >= world)
        return (fsdp_comm *)fsdp_error_null(FSDP_ERR_INVALID, "%s: rank %d of world %d", fn, rank, world);
    if (world > 1 && (port <= 0 || port > 65535))
        return (fsdp_comm *)fsdp_error_null(FSDP_ERR_INVALID, "%s: %s: port %d outside 1..65535", fn, who, port);
    if (world > 1 && rank > 0 && (!master_addr || !*master_addr))
        return (fsdp_comm *)fsdp_error_null(FSDP_ERR_INVALID, "%s: %s: master_addr is empty", fn, who);
    const double timeout_s = fsdp_comm_default_timeout();
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    int local = check_device(fn, who, device);

    if (rank == 0) {
        if (!local) {
            ncclResult_t r = ncclGetUniqueId(&id);
            if (r != ncclSuccess) {
                char reason[400];
                nccl_reason(reason, sizeof reason, NULL, r);
                local = fsdp_error(FSDP_ERR_COMM, "%s: %s: ncclGetUniqueId failed: %s", fn, who, reason);
            }
        }
        if (world == 1) return local ? NULL : make_comm(fn, who, 0, 1, id, device, NULL);
        /* the others get the id, or rank 0's error so that they stop now */
        char line[1024];
        if (local) snprintf(line, sizeof line, "ERROR from rank 0: %s", fsdp_last_error());
        else id_to_hex(id, line);
        char local_error[1024];
        snprintf(local_error, sizeof local_error, "%s", fsdp_last_error());
        std::vector<const char *> lines((size_t)world, line);
        int rc = fsdp_rendezvous_serve(port, lines.data(), world, timeout_s);
        if (local) return (fsdp_comm *)fsdp_error_null(local, "%s", local_error);
        if (rc) {
            char reason[1024];
            snprintf(reason, sizeof reason, "%s", fsdp_last_error());
            return (fsdp_comm *)fsdp_error_null(rc, "%s: %s of %d: handing out the NCCL id on port %d failed: %s",
                                                fn, who, world, port, reason);
        }
    } else {
        /* fetched even after a local failure, so that rank 0 is not left waiting */
        char local_error[1024], line[1024];
        snprintf(local_error, sizeof local_error, "%s", local ? fsdp_last_error() : "");
        int rc = fsdp_rendezvous_fetch(master_addr, port, rank, line, sizeof line, timeout_s);
        if (rc) {
            char reason[1024];
            snprintf(reason, sizeof reason, "%s", fsdp_last_error());
            return (fsdp_comm *)fsdp_error_null(rc, "%s: %s of %d: fetching the NCCL id from %s:%d failed: %s", fn,
                                                who, world, master_addr, port, reason);
        }
        if (local) return (fsdp_comm *)fsdp_error_null(local, "%s", local_error);
        if (id_from_hex(line, &id) != 0)
            return (fsdp_comm *)fsdp_error_null(FSDP_ERR_FORMAT, "%s: %s: %s:%d answered \"%.80s\", not an NCCL id"
                                                " (is another service on that port?)", fn, who, master_addr, port,
                                                line);
    }
    return make_comm(fn, who, rank, world, id, device, NULL);
}

int fsdp_comm_nccl_set_stream(fsdp_comm *c, fsdp_stream compute) {
    nccl_ctx *x = nccl_of(c, "fsdp_comm_nccl_set_stream");
    if (!x) return FSDP_ERR_INVALID;
    x->compute = compute;
    return FSDP_OK;
}

int fsdp_cuda_stream_wait_request(fsdp_stream stream, fsdp_comm_request *req) {
    const char *fn = "fsdp_cuda_stream_wait_request";
    void *handle = NULL;
    if (!req) return fsdp_error(FSDP_ERR_INVALID, "%s: request is NULL", fn);
    if (fsdp_comm_request_ext(req, &nccl_ops, &handle) != 0)
        return fsdp_error(FSDP_ERR_INVALID, "%s: not a request of an NCCL comm (host collectives complete on the"
                          " host: fsdp_comm_wait them)", fn);
    if (!handle) return FSDP_OK; /* complete from the start */
    return fsdp_cuda_check(cudaStreamWaitEvent(stream, ((nccl_op *)handle)->done, 0), fn, "cudaStreamWaitEvent");
}
