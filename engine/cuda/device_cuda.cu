/* device_cuda.cu - devices, streams and copies of the CUDA backend. Every
 * call returns an FSDP status; the runtime's reason is in the message. */
#include <stdio.h>
#include <string.h>
#include <atomic>
#include "cuda_engine.cuh"

/* ---- host synchronisations, counted ------------------------------------ */

namespace {
std::atomic<long long> host_syncs{0}, upload_syncs{0};
}

void fsdp_cuda_count_sync(void) { host_syncs++; }
void fsdp_cuda_count_upload_sync(void) { upload_syncs++; }
int64_t fsdp_cuda_sync_count(void) { return host_syncs.load(); }
int64_t fsdp_cuda_upload_sync_count(void) { return upload_syncs.load(); }

int fsdp_cuda_is_device_ptr(const void *p, int *pageable) {
    cudaPointerAttributes a;
    memset(&a, 0, sizeof a);
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError(); /* an unknown pointer: plain host memory */
        a.type = cudaMemoryTypeUnregistered;
    }
    if (pageable) *pageable = a.type == cudaMemoryTypeUnregistered;
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

int fsdp_cuda_device_count(int *count) {
    FSDP_CHECK_ARG(count, "fsdp_cuda_device_count: count is NULL");
    *count = 0;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return fsdp_error(FSDP_ERR_DEVICE, "no usable GPU: %s (%s)", cudaGetErrorString(e),
                          cudaGetErrorName(e));
    }
    *count = n;
    return FSDP_OK;
}

int fsdp_cuda_set_device(int device) {
    return fsdp_cuda_check(cudaSetDevice(device), "fsdp_cuda_set_device", "cudaSetDevice");
}

/* dense bf16 tensor-core FLOPs per SM per clock, by compute capability
 * (A100: 108 SMs * 1.41 GHz * 2048 = 312 TFLOP/s; H100 SXM: 132 * 1.83 GHz
 * * 4096 = 989); 0 when we do not know the architecture */
static double bf16_flops_per_sm_clock(int major, int minor) {
    switch (major * 10 + minor) {
    case 80: return 2048;
    case 86: return 512;
    case 87: return 1024;
    case 89: return 1024;
    case 90: return 4096;
    case 100: return 8192;
    default: return 0;
    }
}

int fsdp_cuda_get_device_info(int device, fsdp_cuda_device_info *out) {
    const char *fn = "fsdp_cuda_get_device_info";
    FSDP_CHECK_ARG(out, "%s: out is NULL", fn);
    memset(out, 0, sizeof *out);
    cudaDeviceProp prop;
    int rc = fsdp_cuda_check(cudaGetDeviceProperties(&prop, device), fn, "cudaGetDeviceProperties");
    if (rc) return rc;
    int clock = 0;
    rc = fsdp_cuda_check(cudaDeviceGetAttribute(&clock, cudaDevAttrClockRate, device), fn,
                         "cudaDeviceGetAttribute(clock rate)");
    if (rc) return rc;
    snprintf(out->name, sizeof out->name, "%.255s", prop.name);
    out->major = prop.major;
    out->minor = prop.minor;
    out->sm_count = prop.multiProcessorCount;
    out->clock_khz = clock;
    out->total_mem = (int64_t)prop.totalGlobalMem;
    out->peak_bf16_tflops =
        bf16_flops_per_sm_clock(prop.major, prop.minor) * prop.multiProcessorCount * clock * 1e3 / 1e12;
    return FSDP_OK;
}

int64_t fsdp_cuda_struct_size(const char *name) {
    if (name && strcmp(name, "fsdp_cuda_device_info") == 0) return sizeof(fsdp_cuda_device_info);
    return -1;
}

int fsdp_cuda_synchronize(void) {
    fsdp_cuda_count_sync();
    return fsdp_cuda_check(cudaDeviceSynchronize(), "fsdp_cuda_synchronize", "cudaDeviceSynchronize");
}

int fsdp_cuda_stream_create(fsdp_stream *out) {
    FSDP_CHECK_ARG(out, "fsdp_cuda_stream_create: out is NULL");
    return fsdp_cuda_check(cudaStreamCreateWithFlags(out, cudaStreamNonBlocking),
                           "fsdp_cuda_stream_create", "cudaStreamCreateWithFlags");
}

int fsdp_cuda_stream_destroy(fsdp_stream s) {
    if (!s) return FSDP_OK;
    return fsdp_cuda_check(cudaStreamDestroy(s), "fsdp_cuda_stream_destroy", "cudaStreamDestroy");
}

int fsdp_cuda_stream_synchronize(fsdp_stream s) {
    fsdp_cuda_count_sync();
    return fsdp_cuda_check(cudaStreamSynchronize(s), "fsdp_cuda_stream_synchronize",
                           "cudaStreamSynchronize");
}

int fsdp_cuda_memcpy(void *dst, const void *src, int64_t nbytes, fsdp_stream stream) {
    const char *fn = "fsdp_cuda_memcpy";
    FSDP_CHECK_ARG(nbytes >= 0, "%s: nbytes (%lld) is negative", fn, (long long)nbytes);
    if (nbytes == 0) return FSDP_OK;
    FSDP_CHECK_ARG(dst && src, "%s: dst or src is NULL", fn);
    /* from the device into pageable memory the copy returns when it is done:
     * the host waited */
    int pageable = 0;
    if (!fsdp_cuda_is_device_ptr(dst, &pageable) && pageable && fsdp_cuda_is_device_ptr(src, NULL))
        fsdp_cuda_count_sync();
    return fsdp_cuda_check(cudaMemcpyAsync(dst, src, (size_t)nbytes, cudaMemcpyDefault, stream), fn,
                           "cudaMemcpyAsync");
}

int fsdp_cuda_read(void *host, const void *src, int64_t nbytes, fsdp_stream stream) {
    const char *fn = "fsdp_cuda_read";
    FSDP_CHECK_ARG(nbytes >= 0, "%s: nbytes (%lld) is negative", fn, (long long)nbytes);
    FSDP_CHECK_ARG(host && src, "%s: host or src is NULL", fn);
    fsdp_cuda_count_sync();
    int rc = fsdp_cuda_check(cudaMemcpyAsync(host, src, (size_t)nbytes, cudaMemcpyDefault, stream), fn,
                             "cudaMemcpyAsync");
    if (rc) return rc;
    return fsdp_cuda_check(cudaStreamSynchronize(stream), fn, "cudaStreamSynchronize");
}

int fsdp_cuda_memset(void *dst, int byte, int64_t nbytes, fsdp_stream stream) {
    const char *fn = "fsdp_cuda_memset";
    FSDP_CHECK_ARG(nbytes >= 0, "%s: nbytes (%lld) is negative", fn, (long long)nbytes);
    if (nbytes == 0) return FSDP_OK;
    FSDP_CHECK_ARG(dst, "%s: dst is NULL", fn);
    return fsdp_cuda_check(cudaMemsetAsync(dst, byte, (size_t)nbytes, stream), fn, "cudaMemsetAsync");
}
