/* comm_self.c - the `self` backend: a world (or sub-group) of one rank, with
 * no MPI underneath, so a single process needs no launcher. Every
 * collective completes inside its start: a gather or a reduction over one
 * rank is that rank's own data (AVG over one is the identity). */
#include <string.h>
#include "internal.h"
#include "comm_ops.h"

static int self_all_gather(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, void **handle) {
    int64_t n = count * fsdp_dtype_size(dtype);
    if (n > 0) memmove(recv, send, (size_t)n);
    *handle = NULL;
    return FSDP_OK;
}

static int self_reduce_scatter(fsdp_comm *c, void *recv, const void *send, int64_t count, int dtype, int op,
                               void **handle) {
    return self_all_gather(c, recv, send, count, dtype, handle);
}

static int self_all_reduce(fsdp_comm *c, void *buf, int64_t count, int dtype, int op, void **handle) {
    *handle = NULL;
    return FSDP_OK;
}

static int self_broadcast(fsdp_comm *c, void *buf, int64_t count, int dtype, int root, void **handle) {
    *handle = NULL;
    return FSDP_OK;
}

static int self_barrier(fsdp_comm *c, void **handle) {
    *handle = NULL;
    return FSDP_OK;
}

/* no collective is ever left running */
static int self_test(fsdp_comm *c, void *handle, const char *name, int64_t nbytes, int *done) {
    *done = 1;
    return FSDP_OK;
}

static void self_request_free(fsdp_comm *c, void *handle) {}

static void self_comm_free(fsdp_comm *c) {}

static fsdp_comm *self_split(fsdp_comm *c, int color, int key) { return fsdp_comm_self_new(c); }

static int self_resync_exchange(fsdp_comm *c, const void *mine, void *all, int64_t nbytes, double timeout_s) {
    memcpy(all, mine, (size_t)nbytes);
    return FSDP_OK;
}

static const fsdp_comm_ops self_ops = {
    .name = "self",
    .all_gather = self_all_gather,
    .reduce_scatter = self_reduce_scatter,
    .all_reduce = self_all_reduce,
    .broadcast = self_broadcast,
    .barrier = self_barrier,
    .test = self_test,
    .request_free = self_request_free,
    .comm_free = self_comm_free,
    .split = self_split,
    .host = 1,
    .resync_exchange = self_resync_exchange,
};

fsdp_comm *fsdp_comm_self_new(const fsdp_comm *parent) {
    return parent ? fsdp_comm_ext_new_sub(&self_ops, NULL, 0, 1, parent) : fsdp_comm_ext_new(&self_ops, NULL, 0, 1, NULL);
}
