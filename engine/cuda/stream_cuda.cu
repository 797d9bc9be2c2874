/* stream_cuda.cu - events and pinned host memory of the CUDA backend.
 *
 * Events order work between streams without blocking the host (record on
 * one stream, make another wait) and time it (elapsed ms between two
 * events). Pinned (page-locked) host memory is what makes a host<->device
 * copy truly asynchronous on its stream: CPU offload of shards and optimizer
 * state lives there. It is allocated portable, so every device's context
 * sees it as pinned. Every call returns an FSDP status with the runtime's
 * reason in the message. */
#include "cuda_engine.cuh"

/* cudaEventQuery's "still pending". The emulated runtime (tests/cuda/emu)
 * runs everything at once and never reports it, nor defines the name. */
#ifdef FSDP_EMULATE_CUDA
static const cudaError_t event_not_ready = (cudaError_t)600;
#else
static const cudaError_t event_not_ready = cudaErrorNotReady;
#endif

int fsdp_cuda_event_create(fsdp_event *out, int timing) {
    FSDP_CHECK_ARG(out, "fsdp_cuda_event_create: out is NULL");
    *out = NULL;
    /* without timing an event is cheaper to record and wait on */
    return fsdp_cuda_check(cudaEventCreateWithFlags(out, timing ? cudaEventDefault : cudaEventDisableTiming),
                           "fsdp_cuda_event_create", "cudaEventCreateWithFlags");
}

int fsdp_cuda_event_destroy(fsdp_event e) {
    if (!e) return FSDP_OK;
    return fsdp_cuda_check(cudaEventDestroy(e), "fsdp_cuda_event_destroy", "cudaEventDestroy");
}

int fsdp_cuda_event_record(fsdp_event e, fsdp_stream stream) {
    FSDP_CHECK_ARG(e, "fsdp_cuda_event_record: event is NULL");
    return fsdp_cuda_check(cudaEventRecord(e, stream), "fsdp_cuda_event_record", "cudaEventRecord");
}

int fsdp_cuda_stream_wait_event(fsdp_stream stream, fsdp_event e) {
    FSDP_CHECK_ARG(e, "fsdp_cuda_stream_wait_event: event is NULL");
    return fsdp_cuda_check(cudaStreamWaitEvent(stream, e, 0), "fsdp_cuda_stream_wait_event",
                           "cudaStreamWaitEvent");
}

int fsdp_cuda_event_synchronize(fsdp_event e) {
    FSDP_CHECK_ARG(e, "fsdp_cuda_event_synchronize: event is NULL");
    fsdp_cuda_count_sync();
    return fsdp_cuda_check(cudaEventSynchronize(e), "fsdp_cuda_event_synchronize", "cudaEventSynchronize");
}

int fsdp_cuda_event_query(fsdp_event e, int *done) {
    FSDP_CHECK_ARG(e && done, "fsdp_cuda_event_query: event or done is NULL");
    cudaError_t rc = cudaEventQuery(e);
    *done = rc == cudaSuccess;
    if (rc == event_not_ready) {
        cudaGetLastError(); /* not an error: clear it */
        return FSDP_OK;
    }
    return fsdp_cuda_check(rc, "fsdp_cuda_event_query", "cudaEventQuery");
}

int fsdp_cuda_event_elapsed_ms(fsdp_event start, fsdp_event end, double *ms) {
    FSDP_CHECK_ARG(start && end && ms, "fsdp_cuda_event_elapsed_ms: start, end or ms is NULL");
    *ms = 0;
    float f = 0;
    int rc = fsdp_cuda_check(cudaEventElapsedTime(&f, start, end), "fsdp_cuda_event_elapsed_ms",
                             "cudaEventElapsedTime (both events recorded, complete, and created with"
                             " timing?)");
    if (rc == FSDP_OK) *ms = f;
    return rc;
}

void *fsdp_cuda_host_alloc(int64_t nbytes) {
    if (nbytes < 0)
        return fsdp_error_null(FSDP_ERR_INVALID, "fsdp_cuda_host_alloc: rank %d: negative size %lld",
                               fsdp_cuda_rank(), (long long)nbytes);
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, nbytes ? (size_t)nbytes : 1, cudaHostAllocPortable);
    if (e != cudaSuccess) {
        cudaGetLastError();
        const int oom = e == cudaErrorMemoryAllocation;
        return fsdp_error_null(oom ? (int)FSDP_ERR_OOM : (int)FSDP_ERR_DEVICE,
                               "rank %d: cannot allocate %lld bytes of pinned host memory: cudaHostAlloc"
                               " failed: %s (%s)%s",
                               fsdp_cuda_rank(), (long long)nbytes, cudaGetErrorString(e), cudaGetErrorName(e),
                               oom ? "; the host's RAM or its locked-memory limit (ulimit -l) is exhausted" : "");
    }
    return p;
}

void fsdp_cuda_host_free(void *ptr) {
    if (!ptr) return;
    if (cudaFreeHost(ptr) != cudaSuccess) cudaGetLastError(); /* not ours, or a dead context: nothing to do */
}
