/* backend_cuda.cu - plugs the CUDA backend into libfsdp's tensor layer.
 *
 * fsdp_cuda_install() hands libfsdp a table (fsdp_device_ops, engine/
 * internal.h) so that fsdp_tensor_new/zeros/copy/fill/free and the memory
 * statistics work for tensors on device >= 0: storage comes from the caching
 * device allocator, copies and fills are queued on the backend's current
 * stream. A copy with the host on either side returns once the host side may
 * be used (the stream is synchronized), so Lua can read a loss it copied
 * back, or free the host buffer it uploaded from, right away. */
#include "cuda_engine.cuh"

namespace {

cudaStream_t current; /* NULL: the legacy default stream */

void *op_alloc(int device, int64_t nbytes) { return fsdp_cuda_alloc(device, nbytes, current); }

void op_release(void *ptr) { fsdp_cuda_free(ptr); }

/* a copy touching the host waits for the stream, and is counted once: a
 * read of device data (to the host), or an upload (the host buffer may be
 * reused when it returns) */
int op_copy(void *dst, int dst_device, const void *src, int src_device, int64_t nbytes) {
    const char *fn = "tensor copy";
    if (nbytes == 0) return FSDP_OK;
    int rc = fsdp_cuda_check(cudaMemcpyAsync(dst, src, (size_t)nbytes, cudaMemcpyDefault, current), fn,
                             "cudaMemcpyAsync");
    if (rc == FSDP_OK && (dst_device == FSDP_CPU || src_device == FSDP_CPU)) {
        if (dst_device == FSDP_CPU) fsdp_cuda_count_sync();
        else fsdp_cuda_count_upload_sync();
        rc = fsdp_cuda_check(cudaStreamSynchronize(current), fn, "cudaStreamSynchronize");
    }
    return rc;
}

int op_fill(void *dst, int device, int dtype, double value, int64_t n) {
    if (value == 0.0) return fsdp_cuda_memset(dst, 0, n * fsdp_dtype_size(dtype), current);
    return fsdp_fill_cuda(dst, dtype, value, n, current);
}

int op_cast(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n, int device) {
    return fsdp_cast_cuda(dst, dst_dtype, src, src_dtype, n, current);
}

int op_empty_cache(int device) { return fsdp_cuda_mem_empty_cache(device); }

const fsdp_device_ops ops = {op_alloc, op_release, op_copy, op_fill, op_cast, fsdp_cuda_mem_get_stats,
                             fsdp_cuda_mem_reset_peak, op_empty_cache, fsdp_cuda_host_alloc,
                             fsdp_cuda_host_free};

}  // namespace

int fsdp_cuda_install(void) {
    fsdp_set_device_ops(&ops);
    return FSDP_OK;
}

int fsdp_cuda_set_stream(fsdp_stream stream) {
    current = stream;
    return FSDP_OK;
}

fsdp_stream fsdp_cuda_get_stream(void) { return current; }

int fsdp_cuda_is_emulated(void) {
#ifdef FSDP_EMULATE_CUDA
    return 1;
#else
    return 0;
#endif
}
