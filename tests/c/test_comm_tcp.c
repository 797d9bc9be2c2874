/* test_comm_tcp.c - the tcp backend (engine/comm_tcp.c) with real processes:
 * each case forks its ranks, which join over 127.0.0.1 with
 * fsdp_comm_tcp_world and check what they see; the parent checks that every
 * rank exited 0. (tests/dist/test_comm.sh runs the full collective suite,
 * dist_comm, over torchrun's env on 2..4 ranks, and the dead-rank cases.)
 *
 *   - a world of 1..4: backend "tcp", rank and size, split refused with the
 *     hybrid-strategies message, fsdp_comm_free of the owned comm
 *   - reductions of values that do not add exactly (random f32, bf16, f16):
 *     every rank gets the bits of ((r0 + r1) + r2) + r3 computed in rank
 *     order, SUM, AVG and MAX, all_reduce and reduce_scatter
 *   - joining: a rank with another world size, two ranks claiming the same
 *     rank, a rank 0 that never comes (timeout naming the address), a rank
 *     that never comes (rank 0 names it)
 *   - a rank that exits right after joining: the others fail naming it,
 *     within the short timeout
 *   - fsdp_comm_world with WORLD_SIZE > 1: RANK missing, no MASTER_ADDR */
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "fsdp.h"
#include "dtype_math.h"
#include "check.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* a port nobody listens on right now (the kernel's pick for port 0) */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        perror("free_port");
        exit(2);
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static int error_has(const char *a, const char *b) {
    const char *e = fsdp_last_error();
    return strstr(e, a) && (!b || strstr(e, b));
}

/* Forks n children running body(rank, n, port, arg) and returns how many
 * exited non-zero; a child killed by a signal counts too. */
typedef int (*rank_fn)(int rank, int n, int port, int arg);
static int run_ranks(int n, rank_fn body, int arg, const char *what) {
    int port = free_port();
    pid_t pids[8];
    fflush(NULL);
    for (int r = 0; r < n; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            alarm(60); /* a hang fails the test instead of blocking it */
            int rc = body(r, n, port, arg);
            fflush(NULL);
            _exit(rc);
        }
    }
    int bad = 0;
    for (int r = 0; r < n; r++) {
        int st = 0;
        waitpid(pids[r], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            bad++;
            fprintf(stderr, "%s: rank %d of %d ended with status 0x%x\n", what, r, n, st);
        }
    }
    return bad;
}

/* ---- a world of n ------------------------------------------------------- */

static int world_basics(int rank, int n, int port, int arg) {
    fsdp_comm *c = fsdp_comm_tcp_world(rank, n, "127.0.0.1", port, 20);
    CHECK(c != NULL, "rank %d of %d: %s", rank, n, fsdp_last_error());
    if (!c) return 1;
    CHECK(strcmp(fsdp_comm_backend(c), "tcp") == 0, "backend %s", fsdp_comm_backend(c));
    CHECK(fsdp_comm_rank(c) == rank && fsdp_comm_size(c) == n, "rank %d size %d", fsdp_comm_rank(c),
          fsdp_comm_size(c));
    CHECK(fsdp_comm_split(c, 0, rank) == NULL && error_has("hybrid strategies need an MPI launcher", "tcp"),
          "split: %s", fsdp_last_error());
    /* every rank's rank, gathered; a sum of ranks */
    int32_t mine = rank * 10, all[8], sum = rank;
    CHECK(fsdp_comm_all_gather(c, all, &mine, 1, FSDP_I32, NULL) == FSDP_OK, "%s", fsdp_last_error());
    for (int r = 0; r < n; r++) CHECK(all[r] == r * 10, "gather[%d] = %d", r, all[r]);
    CHECK(fsdp_comm_all_reduce(c, &sum, 1, FSDP_I32, FSDP_REDUCE_SUM, NULL) == FSDP_OK, "%s", fsdp_last_error());
    CHECK(sum == n * (n - 1) / 2, "sum of ranks %d", sum);
    /* a request is complete at its start; wait and test free it */
    fsdp_comm_request *req = NULL;
    int done = 0;
    CHECK(fsdp_comm_barrier(c) == FSDP_OK, "%s", fsdp_last_error());
    CHECK(fsdp_comm_broadcast(c, &sum, 1, FSDP_I32, n - 1, &req) == FSDP_OK && req, "%s", fsdp_last_error());
    CHECK(fsdp_comm_test(req, &done) == FSDP_OK && done, "test: %s", fsdp_last_error());
    fsdp_comm_free(c);
    return check_exit("world_basics") != 0;
}

/* ---- reductions in rank order ------------------------------------------ */

/* rank r's element i: random-looking, not exactly representable sums */
static float rand_value(int r, int64_t i) {
    uint32_t x = (uint32_t)(r * 2654435761u) ^ (uint32_t)(i * 40503u + 12345u);
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    return ((float)(x % 2000001u) - 1000000.0f) * 1.37e-5f;
}

static int rank_order(int rank, int n, int port, int arg) {
    fsdp_comm *c = fsdp_comm_tcp_world(rank, n, "127.0.0.1", port, 20);
    CHECK(c != NULL, "rank %d: %s", rank, fsdp_last_error());
    if (!c) return 1;
    const int dtypes[3] = {FSDP_F32, FSDP_BF16, FSDP_F16};
    const int64_t count = 1001;
    for (int d = 0; d < 3; d++)
        for (int op = 0; op < 3; op++) {
            int dt = dtypes[d], es = fsdp_dtype_size(dt);
            char *mine = malloc((size_t)(n * count * es)), *want = malloc((size_t)(n * count * es));
            char *ar = malloc((size_t)(n * count * es)), *rs = malloc((size_t)(count * es));
            /* the expectation: start from rank 0, add (or max) ranks 1.. in
             * order, rounding to dt after every step; AVG divides in f32 */
            for (int64_t i = 0; i < n * count; i++) {
                fsdp_store_from_f32(mine, i, dt, rand_value(rank, i));
                fsdp_store_from_f32(want, i, dt, rand_value(0, i));
                for (int r = 1; r < n; r++) {
                    unsigned char cell[4];
                    fsdp_store_from_f32(cell, 0, dt, rand_value(r, i));
                    float a = fsdp_load_as_f32(want, i, dt), b = fsdp_load_as_f32(cell, 0, dt);
                    fsdp_store_from_f32(want, i, dt, op == FSDP_REDUCE_MAX ? (b > a ? b : a) : a + b);
                }
                if (op == FSDP_REDUCE_AVG)
                    fsdp_store_from_f32(want, i, dt, fsdp_load_as_f32(want, i, dt) / (float)n);
            }
            memcpy(ar, mine, (size_t)(n * count * es));
            CHECK(fsdp_comm_all_reduce(c, ar, n * count, dt, op, NULL) == FSDP_OK, "%s", fsdp_last_error());
            CHECK(memcmp(ar, want, (size_t)(n * count * es)) == 0, "rank %d: all_reduce %s op %d not in rank order",
                  rank, fsdp_dtype_name(dt), op);
            CHECK(fsdp_comm_reduce_scatter(c, rs, mine, count, dt, op, NULL) == FSDP_OK, "%s", fsdp_last_error());
            CHECK(memcmp(rs, want + rank * count * es, (size_t)(count * es)) == 0,
                  "rank %d: reduce_scatter %s op %d not in rank order", rank, fsdp_dtype_name(dt), op);
            free(mine); free(want); free(ar); free(rs);
        }
    fsdp_comm_free(c);
    return check_exit("rank_order") != 0;
}

/* ---- joining errors ----------------------------------------------------- */

/* arg 1: the last rank says the world has n + 1 ranks */
static int wrong_size(int rank, int n, int port, int arg) {
    int size = rank == n - 1 ? n + 1 : n;
    fsdp_comm *c = fsdp_comm_tcp_world(rank, size, "127.0.0.1", port, 10);
    CHECK(c == NULL, "rank %d joined a world with mismatched sizes", rank);
    /* rank 0 and the odd rank name both sizes; the others time out or are told */
    if (rank == 0 || rank == n - 1)
        CHECK(error_has("WORLD_SIZE=3", "WORLD_SIZE=2"), "rank %d: %s", rank, fsdp_last_error());
    else
        CHECK(error_has("rank", NULL), "rank %d: %s", rank, fsdp_last_error());
    return check_exit("wrong_size") != 0;
}

/* ranks 1 and 2 both say they are rank 1 (world of 3) */
static int twice(int rank, int n, int port, int arg) {
    int claimed = rank == 2 ? 1 : rank;
    fsdp_comm *c = fsdp_comm_tcp_world(claimed, n, "127.0.0.1", port, 5);
    CHECK(c == NULL, "process %d joined with a duplicate rank", rank);
    if (rank == 0) CHECK(error_has("rank 1 joined twice", NULL), "%s", fsdp_last_error());
    return check_exit("twice") != 0;
}

/* rank arg never starts: with a 2 s timeout the others fail naming it */
static int absent(int rank, int n, int port, int arg) {
    if (rank == arg) return 0;
    double t0 = now_s();
    fsdp_comm *c = fsdp_comm_tcp_world(rank, n, "127.0.0.1", port, 2);
    double dt = now_s() - t0;
    CHECK(c == NULL, "rank %d: a world without rank %d", rank, arg);
    CHECK(dt < 10, "rank %d: took %.1f s with a 2 s timeout", rank, dt);
    if (arg == 0)
        CHECK(error_has("could not reach rank 0 at 127.0.0.1", "within 2 s"), "%s", fsdp_last_error());
    else if (rank == 0)
        CHECK(error_has("missing: rank 2", "within 2 s"), "%s", fsdp_last_error());
    return check_exit("absent") != 0;
}

/* rank arg exits right after joining; the others' all_reduce fails naming it */
static int dies(int rank, int n, int port, int arg) {
    fsdp_comm *c = fsdp_comm_tcp_world(rank, n, "127.0.0.1", port, 5);
    CHECK(c != NULL, "rank %d: %s", rank, fsdp_last_error());
    if (!c) return 1;
    if (rank == arg) _exit(0);
    float x[16] = {0};
    double t0 = now_s();
    int rc = fsdp_comm_all_reduce(c, x, 16, FSDP_F32, FSDP_REDUCE_SUM, NULL);
    double dt = now_s() - t0;
    char named[64];
    snprintf(named, sizeof named, "rank %d closed its connection", arg);
    CHECK(rc == FSDP_ERR_COMM && error_has(named, NULL), "rank %d: rc %d: %s", rank, rc, fsdp_last_error());
    CHECK(dt < 4, "rank %d: the failure took %.1f s", rank, dt);
    /* the comm stays refused afterwards, saying why */
    CHECK(fsdp_comm_barrier(c) == FSDP_ERR_COMM && error_has("failed earlier", named), "rank %d: %s", rank,
          fsdp_last_error());
    return check_exit("dies") != 0;
}

/* ---- the world from the env --------------------------------------------- */

static int env_errors(int rank, int n, int port, int arg) {
    unsetenv("PMI_RANK"); unsetenv("PMI_SIZE"); unsetenv("PMI_FD"); unsetenv("OMPI_COMM_WORLD_SIZE");
    unsetenv("PMIX_RANK"); unsetenv("SLURM_PROCID"); unsetenv("FSDP_TCP_PORT");
    setenv("WORLD_SIZE", "2", 1);
    if (arg == 0) { /* no MASTER_ADDR: the launchers are named */
        unsetenv("MASTER_ADDR");
        setenv("RANK", "0", 1);
        CHECK(fsdp_comm_world() == NULL && error_has("MASTER_ADDR", "--nproc-per-node"), "%s", fsdp_last_error());
    } else { /* no RANK */
        setenv("MASTER_ADDR", "127.0.0.1", 1);
        setenv("MASTER_PORT", "29500", 1);
        unsetenv("RANK");
        CHECK(fsdp_comm_world() == NULL && error_has("RANK=unset", "0..1"), "%s", fsdp_last_error());
    }
    return check_exit("env_errors") != 0;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    for (int n = 1; n <= 4; n++) CHECK(run_ranks(n, world_basics, 0, "world_basics") == 0, "world of %d", n);
    for (int n = 2; n <= 4; n++) CHECK(run_ranks(n, rank_order, 0, "rank_order") == 0, "rank order, %d ranks", n);
    CHECK(run_ranks(2, wrong_size, 0, "wrong_size") == 0, "mismatched world sizes");
    CHECK(run_ranks(3, twice, 0, "twice") == 0, "a rank joining twice");
    CHECK(run_ranks(3, absent, 0, "absent rank 0") == 0, "rank 0 never starts");
    CHECK(run_ranks(3, absent, 2, "absent rank 2") == 0, "rank 2 never starts");
    CHECK(run_ranks(3, dies, 1, "dies rank 1") == 0, "rank 1 exits after joining");
    CHECK(run_ranks(3, dies, 0, "dies rank 0") == 0, "rank 0 exits after joining");
    CHECK(run_ranks(1, env_errors, 0, "env without MASTER_ADDR") == 0, "env without MASTER_ADDR");
    CHECK(run_ranks(1, env_errors, 1, "env without RANK") == 0, "env without RANK");
    CHECK(fsdp_comm_tcp_world(2, 2, "127.0.0.1", 1, 1) == NULL && error_has("rank 2 outside 0..1", NULL), "%s",
          fsdp_last_error());
    CHECK(fsdp_comm_tcp_world(1, 2, NULL, 1234, 1) == NULL && error_has("no address", NULL), "%s",
          fsdp_last_error());
    return check_exit("test_comm_tcp");
}
