/* comm_shm.h - the intra-node shared-memory path of the mpi backend
 * (comm_shm.c); not public. */
#ifndef FSDP_COMM_SHM_H
#define FSDP_COMM_SHM_H

#include <mpi.h>
#include "fsdp.h"

enum { FSDP_SHM_ALL_GATHER = 1, FSDP_SHM_REDUCE_SCATTER, FSDP_SHM_ALL_REDUCE, FSDP_SHM_BROADCAST,
       FSDP_SHM_BARRIER };
enum { FSDP_SHM_MAX_RANKS = 64 };

typedef struct fsdp_shm fsdp_shm;

/* Collective over comm: a shared segment when every rank of comm is on this
 * node (at most FSDP_SHM_MAX_RANKS) and FSDP_COMM_SHM is not 0; NULL
 * otherwise (on every rank alike: MPI moves the data then). */
fsdp_shm *fsdp_shm_new(MPI_Comm comm);
/* unmaps; no collective of it may be outstanding */
void fsdp_shm_free(fsdp_shm *s);
/* starts a collective (arguments checked by comm.c; recv is the buffer of
 * all_reduce and broadcast); *handle for test / wait / release */
int fsdp_shm_start(fsdp_shm *s, const fsdp_comm *c, int kind, void *recv, const void *send, int64_t count,
                   int dtype, int op, int root, void **handle);
int fsdp_shm_test(fsdp_shm *s, void *handle, int *done);
/* as the ops table's wait: *pending = 1 on a timeout or an interrupt */
int fsdp_shm_wait(fsdp_shm *s, const fsdp_comm *c, void *handle, const char *name, int64_t nbytes,
                  double timeout_s, int *pending);
/* the caller is done with handle (its collective is freed once complete) */
void fsdp_shm_release(fsdp_shm *s, void *handle);

#endif
