/* test_nccl.c - the NCCL backend (engine/cuda/comm_nccl.cu), events and
 * pinned host memory (engine/cuda/stream_cuda.cu) on a real GPU.
 *
 * Run directly it is a world of one over the self comm; under mpiexec -n N
 * every rank uses GPU LOCAL_RANK % count and the same expectations hold
 * (rank r fills element i with value(r, i), small multiples of 1/4, exact
 * in bf16, so sums compare exactly; AVG within bf16 rounding).
 * Checked: all_gather, reduce_scatter (SUM, AVG), all_reduce (SUM, MAX),
 * broadcast of f32 and bf16 device buffers against host expectations, the
 * in-place and overlapping forms; ordering with the compute stream (inputs
 * written there just before the collective, results read there after
 * fsdp_cuda_stream_wait_request without a host wait); requests through
 * test and wait; argument and backend errors; the TCP bootstrap for a world
 * of one; a wait timing out (comm aborted, later calls refused); events and
 * a pinned-memory round trip.
 *
 * Exit status: 0 all passed, 1 a check failed, 77 no usable GPU (the runner,
 * tests/cuda/run.sh, reports "skipped: no GPU"). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fsdp.h"
#include "check.h"

static int g_rank, g_size, g_device;
static fsdp_stream compute;

#define OK(call) CHECK((call) == FSDP_OK, "rank %d: %s: %s", g_rank, #call, fsdp_last_error())

static int error_has(const char *a, const char *b) {
    const char *err = fsdp_last_error();
    return strstr(err, a) && (!b || strstr(err, b));
}

static float value(int r, int64_t i) { return (float)((int)((r * 7 + i * 3) % 17) - 8) * 0.25f; }

/* ---- buffers ------------------------------------------------------------ */

/* n values of dtype (f32 or bf16) on the device, written on the compute stream */
static void *upload(const float *host, int64_t n, int dtype) {
    int64_t bytes = n * fsdp_dtype_size(dtype);
    void *d = fsdp_cuda_alloc(g_device, bytes, compute);
    CHECK(d != NULL, "alloc %lld bytes: %s", (long long)bytes, fsdp_last_error());
    void *tmp = malloc((size_t)bytes + 1);
    fsdp_cast_cpu(tmp, dtype, host, FSDP_F32, n);
    if (d) OK(fsdp_cuda_memcpy(d, tmp, bytes, compute));
    OK(fsdp_cuda_stream_synchronize(compute)); /* tmp is pageable and freed next */
    free(tmp);
    return d;
}

/* n values of dtype from the device as f32, read on the compute stream */
static float *download(const void *d, int64_t n, int dtype) {
    int64_t bytes = n * fsdp_dtype_size(dtype);
    void *tmp = malloc((size_t)bytes + 1);
    float *out = malloc(sizeof(float) * (size_t)(n + 1));
    OK(fsdp_cuda_memcpy(tmp, d, bytes, compute));
    OK(fsdp_cuda_stream_synchronize(compute));
    fsdp_cast_cpu(out, FSDP_F32, tmp, dtype, n);
    free(tmp);
    return out;
}

/* ---- collectives -------------------------------------------------------- */

static void test_collectives(fsdp_comm *c, int dtype) {
    const char *dn = fsdp_dtype_name(dtype);
    const double tol = dtype == FSDP_F32 ? 0 : 1e-2;
    const int64_t counts[] = {1, 7, 4099, 300000};
    for (int k = 0; k < 4; k++) {
        const int64_t n = counts[k], total = n * g_size;
        float *mine = malloc(sizeof(float) * total), *want = malloc(sizeof(float) * total);
        for (int64_t i = 0; i < total; i++) mine[i] = value(g_rank, i);

        /* all_gather: slot r holds rank r's first n values */
        void *send = upload(mine, n, dtype), *recv = upload(mine, total, dtype);
        OK(fsdp_comm_all_gather(c, recv, send, n, dtype, NULL));
        for (int r = 0; r < g_size; r++)
            for (int64_t i = 0; i < n; i++) want[r * n + i] = value(r, i);
        float *got = download(recv, total, dtype);
        char what[96];
        snprintf(what, sizeof what, "all_gather %s n=%lld", dn, (long long)n);
        CHECK_CLOSE(what, got, want, total, 0, 0);
        free(got);

        /* in place: send is this rank's slot of recv */
        void *inplace = upload(mine, total, dtype);
        OK(fsdp_cuda_memcpy((char *)inplace + g_rank * n * fsdp_dtype_size(dtype), send,
                            n * fsdp_dtype_size(dtype), compute));
        OK(fsdp_comm_all_gather(c, inplace, (char *)inplace + g_rank * n * fsdp_dtype_size(dtype), n, dtype, NULL));
        got = download(inplace, total, dtype);
        snprintf(what, sizeof what, "all_gather in place %s n=%lld", dn, (long long)n);
        CHECK_CLOSE(what, got, want, total, 0, 0);
        free(got);

        /* reduce_scatter SUM and AVG over every rank's full buffer */
        void *rs_send = upload(mine, total, dtype), *rs_recv = upload(mine, n, dtype);
        for (int op = FSDP_REDUCE_SUM; op <= FSDP_REDUCE_AVG; op++) {
            OK(fsdp_comm_reduce_scatter(c, rs_recv, rs_send, n, dtype, op, NULL));
            for (int64_t i = 0; i < n; i++) {
                double s = 0;
                for (int r = 0; r < g_size; r++) s += value(r, g_rank * n + i);
                want[i] = (float)(op == FSDP_REDUCE_AVG ? s / g_size : s);
            }
            got = download(rs_recv, n, dtype);
            snprintf(what, sizeof what, "reduce_scatter %s %s n=%lld", op ? "avg" : "sum", dn, (long long)n);
            CHECK_CLOSE(what, got, want, n, tol, tol);
            free(got);
        }
        /* in place: recv is this rank's slice of send (SUM, as above) */
        char *own = (char *)rs_send + g_rank * n * fsdp_dtype_size(dtype);
        OK(fsdp_comm_reduce_scatter(c, own, rs_send, n, dtype, FSDP_REDUCE_SUM, NULL));
        for (int64_t i = 0; i < n; i++) {
            double s = 0;
            for (int r = 0; r < g_size; r++) s += value(r, g_rank * n + i);
            want[i] = (float)s;
        }
        got = download(own, n, dtype);
        snprintf(what, sizeof what, "reduce_scatter in place %s n=%lld", dn, (long long)n);
        CHECK_CLOSE(what, got, want, n, 0, 0);
        free(got);

        /* all_reduce SUM and MAX, in place */
        for (int op = FSDP_REDUCE_SUM; op <= FSDP_REDUCE_MAX; op += 2) {
            void *buf = upload(mine, n, dtype);
            OK(fsdp_comm_all_reduce(c, buf, n, dtype, op, NULL));
            for (int64_t i = 0; i < n; i++) {
                double s = 0, m = -1e30;
                for (int r = 0; r < g_size; r++) { s += value(r, i); m = value(r, i) > m ? value(r, i) : m; }
                want[i] = (float)(op == FSDP_REDUCE_MAX ? m : s);
            }
            got = download(buf, n, dtype);
            snprintf(what, sizeof what, "all_reduce %s %s n=%lld", op ? "max" : "sum", dn, (long long)n);
            CHECK_CLOSE(what, got, want, n, 0, 0);
            free(got);
            fsdp_cuda_free(buf);
        }

        /* broadcast from the last rank */
        void *bc = upload(mine, n, dtype);
        OK(fsdp_comm_broadcast(c, bc, n, dtype, g_size - 1, NULL));
        for (int64_t i = 0; i < n; i++) want[i] = value(g_size - 1, i);
        got = download(bc, n, dtype);
        snprintf(what, sizeof what, "broadcast %s n=%lld", dn, (long long)n);
        CHECK_CLOSE(what, got, want, n, 0, 0);
        free(got);

        void *all[] = {send, recv, inplace, rs_send, rs_recv, bc};
        for (int i = 0; i < 6; i++) fsdp_cuda_free(all[i]);
        free(mine);
        free(want);
    }
}

/* send overlapping recv without being its slot: goes through a temporary */
static void test_overlap(fsdp_comm *c) {
    const int64_t n = 1000, total = n * g_size;
    float *host = malloc(sizeof(float) * (total + 1)), *want = malloc(sizeof(float) * total);
    for (int64_t i = 0; i <= total; i++) host[i] = value(g_rank, i);
    float *base = upload(host, total + 1, FSDP_F32);
    /* send = base + 1 .. + n: overlaps recv = base[0, total) */
    OK(fsdp_comm_all_gather(c, base, base + 1, n, FSDP_F32, NULL));
    for (int r = 0; r < g_size; r++)
        for (int64_t i = 0; i < n; i++) want[r * n + i] = value(r, i + 1);
    float *got = download(base, total, FSDP_F32);
    CHECK_CLOSE("all_gather overlapping", got, want, total, 0, 0);
    free(got);
    fsdp_cuda_free(base);
    free(host);
    free(want);
}

/* Inputs written on the compute stream right before the collective, with
 * a long memset in front so that they land late; the result read on the
 * compute stream after fsdp_cuda_stream_wait_request, with no host wait in
 * between; then a memset queued after the wait must win over the result. */
static void test_ordering(fsdp_comm *c) {
    const int64_t n = 1 << 20, total = n * g_size, big = (int64_t)1 << 30;
    float *pin_in = fsdp_cuda_host_alloc(sizeof(float) * n), *pin_out = fsdp_cuda_host_alloc(sizeof(float) * total);
    CHECK(pin_in && pin_out, "pinned: %s", fsdp_last_error());
    if (!pin_in || !pin_out) return;
    float *want = malloc(sizeof(float) * total);
    for (int64_t i = 0; i < n; i++) pin_in[i] = value(g_rank, i) + 1;
    for (int r = 0; r < g_size; r++)
        for (int64_t i = 0; i < n; i++) want[r * n + i] = value(r, i) + 1;
    void *slow = fsdp_cuda_alloc(g_device, big, compute);
    float *send = fsdp_cuda_alloc(g_device, sizeof(float) * n, compute);
    float *recv = fsdp_cuda_alloc(g_device, sizeof(float) * total, compute);
    float *out = fsdp_cuda_alloc(g_device, sizeof(float) * total, compute);
    CHECK(slow && send && recv && out, "alloc: %s", fsdp_last_error());
    if (!slow || !send || !recv || !out) return;
    OK(fsdp_cuda_memset(send, 0, sizeof(float) * n, compute));
    OK(fsdp_cuda_stream_synchronize(compute));

    for (int rep = 0; rep < 4; rep++) OK(fsdp_cuda_memset(slow, rep, big, compute));
    OK(fsdp_cuda_memcpy(send, pin_in, sizeof(float) * n, compute)); /* async: pinned */
    fsdp_comm_request *req = NULL;
    OK(fsdp_comm_all_gather(c, recv, send, n, FSDP_F32, &req));
    CHECK(req != NULL, "no request");
    if (!req) return;
    OK(fsdp_cuda_stream_wait_request(compute, req));
    OK(fsdp_cuda_memcpy(out, recv, sizeof(float) * total, compute));
    OK(fsdp_cuda_memcpy(pin_out, out, sizeof(float) * total, compute));
    OK(fsdp_cuda_memset(recv, 0, sizeof(float) * total, compute)); /* after the collective wrote recv */
    OK(fsdp_cuda_stream_synchronize(compute));
    CHECK_CLOSE("all_gather read after stream_wait_request", pin_out, want, total, 0, 0);
    int done = 0;
    OK(fsdp_comm_test(req, &done)); /* the stream passed it: complete, and freed */
    CHECK(done == 1, "request not complete after the stream passed it");
    if (!done) OK(fsdp_comm_wait(req, 0));
    float *zero = download(recv, total, FSDP_F32);
    int zeros = 1;
    for (int64_t i = 0; i < total; i++) zeros &= zero[i] == 0;
    CHECK(zeros, "a memset queued after stream_wait_request lost to the collective");
    free(zero);

    /* wait on an async request (host side) */
    OK(fsdp_comm_all_reduce(c, recv, total, FSDP_F32, FSDP_REDUCE_SUM, &req));
    OK(fsdp_comm_wait(req, 60));

    /* count 0: complete at start, a stream wait on it is a no-op */
    OK(fsdp_comm_all_reduce(c, NULL, 0, FSDP_F32, FSDP_REDUCE_SUM, &req));
    OK(fsdp_cuda_stream_wait_request(compute, req));
    OK(fsdp_comm_wait(req, 0));

    void *all[] = {slow, send, recv, out};
    for (int i = 0; i < 4; i++) fsdp_cuda_free(all[i]);
    fsdp_cuda_host_free(pin_in);
    fsdp_cuda_host_free(pin_out);
    free(want);
}

static void test_errors(fsdp_comm *c, fsdp_comm *world) {
    float host[4] = {0};
    void *dev = fsdp_cuda_alloc(g_device, 64, compute);
    CHECK(fsdp_comm_all_reduce(c, host, 4, FSDP_F32, FSDP_REDUCE_SUM, NULL) == FSDP_ERR_INVALID &&
              error_has("host memory", "rank"),
          "host buffer: %s", fsdp_last_error());
    CHECK(fsdp_comm_all_reduce(c, dev, 4, FSDP_U16, FSDP_REDUCE_SUM, NULL) == FSDP_ERR_UNSUPPORTED &&
              error_has("rank", "u16"),
          "u16 reduction: %s", fsdp_last_error());
    OK(fsdp_comm_all_gather(c, dev, dev, 1, FSDP_U16, NULL)); /* moving u16 is fine */
    CHECK(fsdp_comm_all_reduce(c, dev, 4, FSDP_I32, FSDP_REDUCE_AVG, NULL) == FSDP_ERR_INVALID &&
              error_has("fsdp_comm_all_reduce", "AVG needs a float dtype"),
          "AVG of i32 (comm.c's check): %s", fsdp_last_error());
    CHECK(fsdp_comm_split(c, 0, 0) == NULL && error_has("cannot split a nccl comm", NULL), "split: %s",
          fsdp_last_error());
    CHECK(fsdp_comm_nccl_set_stream(world, compute) == FSDP_ERR_INVALID && error_has("not nccl", NULL),
          "set_stream on a host comm: %s", fsdp_last_error());
    CHECK(fsdp_comm_nccl_new(NULL, 0) == NULL, "NULL bootstrap accepted");
    CHECK(fsdp_comm_nccl_new(c, g_device) == NULL && error_has("must be a host comm", NULL),
          "nccl bootstrap: %s", fsdp_last_error());
    CHECK(fsdp_comm_nccl_new_tcp(0, 0, NULL, 0, 0) == NULL && error_has("world 0", NULL), "world 0: %s",
          fsdp_last_error());
    fsdp_comm_request *req = NULL;
    OK(fsdp_comm_all_reduce(world, host, 4, FSDP_F32, FSDP_REDUCE_SUM, &req));
    CHECK(fsdp_cuda_stream_wait_request(compute, req) == FSDP_ERR_INVALID && error_has("not a request of an NCCL", NULL),
          "host request: %s", fsdp_last_error());
    OK(fsdp_comm_wait(req, 0));
    if (g_size == 1) {
        /* a device that does not exist: every rank fails alike, no hang */
        CHECK(fsdp_comm_nccl_new(world, 999) == NULL && error_has("device 999", NULL), "device 999: %s",
              fsdp_last_error());
    }
    OK(fsdp_comm_barrier(c));
    CHECK(fsdp_comm_bytes_sent(c) >= 0, "bytes_sent");
    fsdp_cuda_free(dev);
}

/* the TCP bootstrap in a world of one needs no port */
static void test_tcp(void) {
    fsdp_comm *c = fsdp_comm_nccl_new_tcp(0, 1, NULL, 0, g_device);
    CHECK(c != NULL, "nccl_new_tcp world of one: %s", fsdp_last_error());
    if (!c) return;
    float host[5] = {1, 2, 3, 4, 5};
    void *d = upload(host, 5, FSDP_F32);
    OK(fsdp_comm_nccl_set_stream(c, compute));
    OK(fsdp_comm_all_reduce(c, d, 5, FSDP_F32, FSDP_REDUCE_SUM, NULL));
    float *got = download(d, 5, FSDP_F32);
    CHECK_CLOSE("tcp comm all_reduce", got, host, 5, 0, 0);
    free(got);
    fsdp_cuda_free(d);
    fsdp_comm_free(c);
}

/* A collective queued behind seconds of memsets and waited for 1 us must
 * time out, abort its comm and say so; the comm then refuses work. */
static void test_timeout(fsdp_comm *world) {
    fsdp_comm *c = fsdp_comm_nccl_new(world, g_device);
    CHECK(c != NULL, "second comm: %s", fsdp_last_error());
    if (!c) return;
    OK(fsdp_comm_nccl_set_stream(c, compute));
    const int64_t big = (int64_t)1 << 30;
    void *slow = fsdp_cuda_alloc(g_device, big, compute), *buf = fsdp_cuda_alloc(g_device, 4096, compute);
    CHECK(slow && buf, "alloc: %s", fsdp_last_error());
    if (!slow || !buf) return;
    for (int rep = 0; rep < 64; rep++) OK(fsdp_cuda_memset(slow, rep, big, compute));
    fsdp_comm_request *req = NULL;
    OK(fsdp_comm_all_reduce(c, buf, 1024, FSDP_F32, FSDP_REDUCE_SUM, &req));
    int rc = fsdp_comm_wait(req, 1e-6);
    if (rc == FSDP_OK) {
        printf("timeout not provoked: the GPU finished 64 GiB of memsets at once\n");
    } else {
        printf("timeout message: %s\n", fsdp_last_error());
        CHECK(rc == FSDP_ERR_COMM && error_has("timed out", "all_reduce of 4096 bytes") &&
                  error_has("rank ", "aborted"),
              "timeout: %s", fsdp_last_error());
        CHECK(fsdp_comm_all_reduce(c, buf, 1024, FSDP_F32, FSDP_REDUCE_SUM, NULL) == FSDP_ERR_COMM &&
                  error_has("aborted earlier", NULL),
              "a call after the abort: %s", fsdp_last_error());
    }
    OK(fsdp_cuda_stream_synchronize(compute));
    fsdp_comm_free(c);
    fsdp_cuda_free(slow);
    fsdp_cuda_free(buf);
}

/* ---- events and pinned memory ------------------------------------------ */

static void test_events(void) {
    fsdp_event start = NULL, end = NULL, plain = NULL;
    OK(fsdp_cuda_event_create(&start, 1));
    OK(fsdp_cuda_event_create(&end, 1));
    OK(fsdp_cuda_event_create(&plain, 0));
    const int64_t bytes = (int64_t)256 << 20;
    void *d = fsdp_cuda_alloc(g_device, bytes, compute);
    OK(fsdp_cuda_event_record(start, compute));
    OK(fsdp_cuda_memset(d, 1, bytes, compute));
    OK(fsdp_cuda_event_record(end, compute));
    OK(fsdp_cuda_event_record(plain, compute));
    /* another stream waits for the memset, then clears; the host sees the clear */
    fsdp_stream other = NULL;
    OK(fsdp_cuda_stream_create(&other));
    OK(fsdp_cuda_stream_wait_event(other, plain));
    OK(fsdp_cuda_memset(d, 0, 4, other));
    OK(fsdp_cuda_event_synchronize(end));
    int done = 0;
    OK(fsdp_cuda_event_query(end, &done));
    CHECK(done == 1, "query after synchronize: %d", done);
    double ms = -1;
    OK(fsdp_cuda_event_elapsed_ms(start, end, &ms));
    CHECK(ms >= 0, "elapsed %g ms", ms);
    printf("memset of 256 MiB: %.3f ms\n", ms);
    CHECK(fsdp_cuda_event_elapsed_ms(start, plain, &ms) != FSDP_OK, "elapsed time of an event without timing");
    OK(fsdp_cuda_stream_synchronize(other));
    uint32_t word = 1;
    OK(fsdp_cuda_memcpy(&word, d, 4, other));
    OK(fsdp_cuda_stream_synchronize(other));
    CHECK(word == 0, "the waiting stream ran before the event: %08x", word);
    CHECK(fsdp_cuda_event_record(NULL, compute) == FSDP_ERR_INVALID, "NULL event recorded");
    OK(fsdp_cuda_event_destroy(start));
    OK(fsdp_cuda_event_destroy(end));
    OK(fsdp_cuda_event_destroy(plain));
    OK(fsdp_cuda_event_destroy(NULL));
    OK(fsdp_cuda_stream_destroy(other));
    fsdp_cuda_free(d);
}

static void test_pinned(void) {
    const int64_t n = (int64_t)3 << 20;
    uint8_t *a = fsdp_cuda_host_alloc(n), *b = fsdp_cuda_host_alloc(n);
    CHECK(a && b, "host_alloc: %s", fsdp_last_error());
    if (!a || !b) return;
    for (int64_t i = 0; i < n; i++) a[i] = (uint8_t)(i * 31 + 7);
    memset(b, 0, (size_t)n);
    void *d = fsdp_cuda_alloc(g_device, n, compute);
    OK(fsdp_cuda_memcpy(d, a, n, compute));
    OK(fsdp_cuda_memcpy(b, d, n, compute));
    OK(fsdp_cuda_stream_synchronize(compute));
    CHECK(memcmp(a, b, (size_t)n) == 0, "pinned round trip differs");
    fsdp_cuda_free(d);
    fsdp_cuda_host_free(a);
    fsdp_cuda_host_free(b);
    fsdp_cuda_host_free(NULL);
    void *z = fsdp_cuda_host_alloc(0);
    CHECK(z != NULL, "0 bytes: %s", fsdp_last_error());
    fsdp_cuda_host_free(z);
    CHECK(fsdp_cuda_host_alloc(-1) == NULL && error_has("negative", NULL), "negative: %s", fsdp_last_error());
    CHECK(fsdp_cuda_host_alloc((int64_t)1 << 50) == NULL && error_has("rank", "1125899906842624"),
          "a petabyte of pinned memory: %s", fsdp_last_error());
    printf("pinned OOM message: %s\n", fsdp_last_error());
}

int main(void) {
    int count = 0;
    if (fsdp_cuda_device_count(&count) != FSDP_OK || count == 0) {
        printf("skipped: no GPU (%s)\n", count == 0 && !*fsdp_last_error() ? "0 devices" : fsdp_last_error());
        return 77;
    }
    if (!getenv("FSDP_COMM_TIMEOUT")) setenv("FSDP_COMM_TIMEOUT", "120", 1); /* never the 600 s default */
    fsdp_comm *world = fsdp_comm_world();
    CHECK(world != NULL, "world: %s", fsdp_last_error());
    if (!world) return check_exit("test_nccl");
    g_rank = fsdp_comm_rank(world);
    g_size = fsdp_comm_size(world);
    const char *lr = getenv("LOCAL_RANK") ? getenv("LOCAL_RANK") : getenv("MPI_LOCALRANKID");
    g_device = (lr ? atoi(lr) : g_rank) % count;
    OK(fsdp_cuda_set_device(g_device));
    OK(fsdp_cuda_stream_create(&compute));

    fsdp_comm *c = fsdp_comm_nccl_new(world, g_device);
    CHECK(c != NULL, "fsdp_comm_nccl_new: %s", fsdp_last_error());
    if (c) {
        CHECK(strcmp(fsdp_comm_backend(c), "nccl") == 0, "backend %s", fsdp_comm_backend(c));
        CHECK(fsdp_comm_rank(c) == g_rank && fsdp_comm_size(c) == g_size, "rank %d of %d", fsdp_comm_rank(c),
              fsdp_comm_size(c));
        OK(fsdp_comm_nccl_set_stream(c, compute));
        test_collectives(c, FSDP_F32);
        test_collectives(c, FSDP_BF16);
        test_overlap(c);
        test_ordering(c);
        test_errors(c, world);
        CHECK(g_size > 1 || fsdp_comm_bytes_sent(c) == 0, "a world of one sent %lld bytes",
              (long long)fsdp_comm_bytes_sent(c));
        fsdp_comm_free(c);
    }
    if (g_size == 1) test_tcp();
    test_events();
    test_pinned();
    test_timeout(world);
    OK(fsdp_cuda_stream_destroy(compute));
    OK(fsdp_cuda_synchronize());
    int rc = check_exit("test_nccl");
    fsdp_comm_finalize();
    return rc;
}
