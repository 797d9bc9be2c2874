/* cuda_engine.cuh - what the engine's CUDA files share: the runtime, the
 * public header and the error helpers of libfsdp (fsdp_error writes the
 * message fsdp_last_error() returns; libfsdp_cuda links libfsdp). */
#ifndef FSDP_CUDA_ENGINE_CUH
#define FSDP_CUDA_ENGINE_CUH
#ifdef FSDP_EMULATE_CUDA
#include "cuda_emu.h" /* the emulated backend library (tests/cuda/emu) */
#else
#include <cuda_runtime.h>
#endif
#include "fsdp.h"
extern "C" {
#include "internal.h"
}

/* FSDP_OK, or FSDP_ERR_DEVICE (FSDP_ERR_OOM for allocation failures) with
 * "<fn>: <what> failed: <runtime message>"; clears the runtime's error */
static inline int fsdp_cuda_check(cudaError_t e, const char *fn, const char *what) {
    if (e == cudaSuccess) return FSDP_OK;
    cudaGetLastError();
    return fsdp_error(e == cudaErrorMemoryAllocation ? (int)FSDP_ERR_OOM : (int)FSDP_ERR_DEVICE,
                      "%s: %s failed: %s (%s)", fn, what, cudaGetErrorString(e), cudaGetErrorName(e));
}

/* this process's rank for messages (alloc_cuda.cu) */
int fsdp_cuda_rank(void);

/* Host waits on the device, for fsdp_cuda_sync_count and
 * fsdp_cuda_upload_sync_count (device_cuda.cu): every path of the backend
 * that blocks the host until queued device work is done calls one of these
 * once. */
void fsdp_cuda_count_sync(void);
void fsdp_cuda_count_upload_sync(void);
/* 1 for device (or managed) memory, 0 for host memory; *pageable (when not
 * NULL) = 1 for host memory that is not page-locked */
int fsdp_cuda_is_device_ptr(const void *p, int *pageable);
#endif
