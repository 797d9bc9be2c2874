/* threads.c - one threading runtime. OpenBLAS is Debian's OpenMP build, so
 * its GEMMs and our OpenMP kernels share one pool; setting both counts
 * together keeps the cores from being oversubscribed. */
#include <omp.h>
#include "internal.h"

void openblas_set_num_threads(int n);
char *openblas_get_corename(void);

void fsdp_set_num_threads(int n) {
    if (n < 1) n = 1;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int fsdp_get_num_threads(void) { return omp_get_max_threads(); }

/* the cores this process may run on (its affinity mask), whatever the
 * thread count is set to */
int fsdp_get_num_cores(void) { return omp_get_num_procs(); }

const char *fsdp_blas_core(void) { return openblas_get_corename(); }
