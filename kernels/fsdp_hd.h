/* fsdp_hd.h - lets one inline function serve the CPU kernels and the CUDA
 * kernels: FSDP_HD expands to __host__ __device__ under nvcc (and under the
 * fiber emulation, which defines those away), to nothing in plain C. */
#ifndef FSDP_HD_H
#define FSDP_HD_H
#if defined(__CUDACC__) || defined(FSDP_EMULATE_CUDA)
#define FSDP_HD __host__ __device__ static inline
#else
#define FSDP_HD static inline
#endif
#endif
