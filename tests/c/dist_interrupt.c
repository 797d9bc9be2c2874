/* dist_interrupt.c - interruptible waits and fsdp_comm_resync (fsdp.h, the
 * interrupt protocol). Run by tests/dist/test_comm.sh directly (a world of
 * one), under mpiexec -n 2 and 3, and with torchrun's env (tcp).
 *
 * mpi, each scene ending with every rank's resync and collectives that must
 * give the right values:
 *   1. rank 0 alone in a barrier; a timer's signal handler sets its flag
 *      (fsdp_comm_interrupt): the barrier returns FSDP_ERR_INTERRUPTED within
 *      1 s of the flag, and the other ranks, which never enter it, hear of
 *      the interrupt through fsdp_comm_interrupted() within 1 s (the same
 *      monotonic clock on one machine); then every rank's next barrier works.
 *   2. every rank but the last waits on a started all_reduce; the last rank,
 *      computing, is interrupted (its own flag): the others' waits return
 *      FSDP_ERR_INTERRUPTED naming the collective and its bytes; after the
 *      resync (the last rank joins the all_reduce it missed) those requests
 *      say "cancelled" and the next collectives are in step.
 *   3. the same as 1 in a sub-group, resynced before the world.
 * tcp: scene 1's first part (the barrier returns INTERRUPTED within 1 s),
 * then resync is refused and the peers see rank 0 leave instead of hanging.
 * self: the flag, fsdp_comm_interrupted and the world's resync clearing it. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "fsdp.h"
#include "check.h"

static int g_rank;
#define RCHECK(cond, fmt, ...) CHECK(cond, "rank %d: " fmt, g_rank, ##__VA_ARGS__)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* the timer: sets the flag like a Ctrl-C handler would, and notes when */
static volatile double flag_time;
static void on_alarm(int sig) {
    flag_time = now_s(); /* clock_gettime is async-signal-safe */
    fsdp_comm_interrupt();
}

static void arm(double seconds) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it;
    memset(&it, 0, sizeof it);
    it.it_value.tv_sec = (long)seconds;
    it.it_value.tv_usec = (long)((seconds - (long)seconds) * 1e6);
    flag_time = 0;
    setitimer(ITIMER_REAL, &it, NULL);
}

/* polls fsdp_comm_interrupted() like a loop between ops; the time it said
 * so, or 0 after limit_s */
static double heard_within(double limit_s) {
    double until = now_s() + limit_s;
    while (now_s() < until) {
        if (fsdp_comm_interrupted()) return now_s();
        usleep(2000);
    }
    return 0;
}

/* the largest of every rank's x (an all_gather of doubles) */
static double max_over(fsdp_comm *c, double x) {
    double all[64];
    int n = fsdp_comm_size(c);
    if (fsdp_comm_all_gather(c, all, &x, 1, FSDP_I64, NULL) != FSDP_OK) return -1;
    double m = all[0];
    for (int r = 1; r < n; r++) m = all[r] > m ? all[r] : m;
    return m;
}

/* an all_reduce whose result every rank checks: in step and correct */
static void check_in_step(fsdp_comm *c, const char *after) {
    int n = fsdp_comm_size(c), rank = fsdp_comm_rank(c);
    float buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (float)(rank + i);
    int rc = fsdp_comm_all_reduce(c, buf, 1000, FSDP_F32, FSDP_REDUCE_SUM, NULL);
    RCHECK(rc == FSDP_OK, "all_reduce after %s: %s", after, fsdp_last_error());
    int bad = 0;
    for (int i = 0; i < 1000 && rc == FSDP_OK; i++)
        if (buf[i] != (float)(n * (n - 1) / 2 + n * i)) bad++;
    RCHECK(bad == 0, "all_reduce after %s: %d wrong elements", after, bad);
    RCHECK(fsdp_comm_barrier(c) == FSDP_OK, "barrier after %s: %s", after, fsdp_last_error());
}

static void resync(fsdp_comm *c, const char *what) {
    RCHECK(fsdp_comm_resync(c, 30) == FSDP_OK, "resync (%s): %s", what, fsdp_last_error());
}

/* scene 1 (and 3 on a sub-group): rank 0 alone in a barrier */
static void alone_in_barrier(fsdp_comm *world, fsdp_comm *c, const char *what) {
    int rank = fsdp_comm_rank(c);
    double t_flag = 0, t_seen = 0;
    if (rank == 0) {
        arm(0.3);
        double t0 = now_s();
        int rc = fsdp_comm_barrier(c);
        t_seen = now_s();
        t_flag = flag_time;
        RCHECK(rc == FSDP_ERR_INTERRUPTED, "%s: barrier alone returned %d (%s), want FSDP_ERR_INTERRUPTED", what,
               rc, fsdp_last_error());
        RCHECK(strstr(fsdp_last_error(), "interrupted while waiting in barrier") != NULL, "%s: message '%s'", what,
               fsdp_last_error());
        RCHECK(t_flag > 0 && t_seen - t_flag < 1.0, "%s: the barrier returned %.3f s after the flag (limit 1 s)",
               what, t_seen - t_flag);
        printf("rank %d: %s: barrier interrupted %.3f s after the flag (%.3f s in it): %s\n", g_rank, what,
               t_seen - t_flag, t_seen - t0, fsdp_last_error());
    } else {
        t_seen = heard_within(10);
        RCHECK(t_seen > 0, "%s: never heard of rank 0's interrupt", what);
    }
    fflush(stdout);
    resync(c, what);
    if (c != world) resync(world, what);
    RCHECK(!fsdp_comm_interrupted(), "%s: still interrupted after the world's resync", what);
    /* when rank 0's flag went up, and the last rank to notice */
    double flagged = max_over(world, t_flag), seen = max_over(world, t_seen);
    if (fsdp_comm_rank(world) == 0)
        printf("%s: the last rank noticed %.3f s after the flag\n", what, seen - flagged);
    RCHECK(seen - flagged < 1.0, "%s: a rank noticed the interrupt %.3f s after the flag (limit 1 s)", what,
           seen - flagged);
    check_in_step(c, what);
    if (c != world) check_in_step(world, what);
}

/* scene 2: the last rank is interrupted while the others wait on it (an
 * all_reduce of 2.4 MB: more than a 1 MB shared-memory ring holds) */
static void waiting_on_the_last(fsdp_comm *c) {
    enum { N = 600000 };
    int rank = fsdp_comm_rank(c), n = fsdp_comm_size(c);
    float *buf = malloc(N * sizeof *buf);
    for (int i = 0; i < N; i++) buf[i] = 1;
    fsdp_comm_request *req = NULL;
    if (rank < n - 1) {
        RCHECK(fsdp_comm_all_reduce(c, buf, N, FSDP_F32, FSDP_REDUCE_SUM, &req) == FSDP_OK, "start: %s",
               fsdp_last_error());
        int rc = fsdp_comm_wait(req, 30);
        RCHECK(rc == FSDP_ERR_INTERRUPTED, "wait on the missing rank returned %d (%s)", rc, fsdp_last_error());
        RCHECK(strstr(fsdp_last_error(), "interrupted while waiting in all_reduce of 2400000 bytes") &&
                   strstr(fsdp_last_error(), "by another rank"),
               "message '%s'", fsdp_last_error());
    } else {
        usleep(200 * 1000); /* computing */
        fsdp_comm_interrupt();
        RCHECK(fsdp_comm_interrupted(), "own flag not seen");
    }
    resync(c, "scene 2");
    if (req) {
        int rc = fsdp_comm_wait(req, 0);
        RCHECK(rc == FSDP_ERR_INTERRUPTED && strstr(fsdp_last_error(), "cancelled by fsdp_comm_resync"),
               "wait after the resync returned %d (%s)", rc, fsdp_last_error());
    }
    free(buf); /* the cancelled collective is over: its buffer may go */
    check_in_step(c, "scene 2");
}

static int run_tcp(fsdp_comm *c) {
    int rank = fsdp_comm_rank(c);
    if (rank == 0) {
        arm(0.3);
        int rc = fsdp_comm_barrier(c);
        double dt = now_s() - flag_time;
        RCHECK(rc == FSDP_ERR_INTERRUPTED && strstr(fsdp_last_error(), "interrupted while waiting in"),
               "tcp barrier alone returned %d (%s)", rc, fsdp_last_error());
        RCHECK(flag_time > 0 && dt < 1.0, "tcp barrier returned %.3f s after the flag", dt);
        printf("rank 0: tcp barrier interrupted %.3f s after the flag: %s\n", dt, fsdp_last_error());
        rc = fsdp_comm_resync(c, 5);
        RCHECK(rc == FSDP_ERR_UNSUPPORTED && strstr(fsdp_last_error(), "cannot resync"), "tcp resync: %d (%s)", rc,
               fsdp_last_error());
    } else {
        usleep(1500 * 1000);
        /* rank 0 has left: the next collective fails at once, naming it */
        double t0 = now_s();
        int rc = fsdp_comm_barrier(c);
        RCHECK(rc != FSDP_OK && now_s() - t0 < 5, "barrier with rank 0 gone: rc %d after %.1f s (%s)", rc,
               now_s() - t0, fsdp_last_error());
        printf("rank %d: after rank 0's interrupt: %s\n", rank, fsdp_last_error());
    }
    return 0;
}

int main(void) {
    setenv("FSDP_COMM_TIMEOUT", "60", 0);
    fsdp_comm *world = fsdp_comm_world();
    if (!world) {
        fprintf(stderr, "dist_interrupt: %s\n", fsdp_last_error());
        return 1;
    }
    g_rank = fsdp_comm_rank(world);
    const char *backend = fsdp_comm_backend(world);
    char name[64];
    snprintf(name, sizeof name, "dist_interrupt rank %d of %d (%s)", g_rank, fsdp_comm_size(world), backend);

    if (strcmp(backend, "tcp") == 0) {
        run_tcp(world);
        return check_exit(name);
    }
    if (strcmp(backend, "self") == 0) {
        RCHECK(!fsdp_comm_interrupted(), "interrupted at the start");
        fsdp_comm_interrupt();
        RCHECK(fsdp_comm_interrupted(), "flag not seen");
        RCHECK(fsdp_comm_barrier(world) == FSDP_OK, "a world of one waits for nobody: %s", fsdp_last_error());
        resync(world, "self");
        RCHECK(!fsdp_comm_interrupted(), "resync of the world did not clear the flag");
        check_in_step(world, "self");
        return check_exit(name);
    }

    RCHECK(fsdp_comm_barrier(world) == FSDP_OK, "first barrier: %s", fsdp_last_error());
    alone_in_barrier(world, world, "scene 1");
    waiting_on_the_last(world);
    fsdp_comm *sub = fsdp_comm_split(world, 0, fsdp_comm_rank(world));
    RCHECK(sub != NULL, "split: %s", fsdp_last_error());
    if (sub) {
        alone_in_barrier(world, sub, "scene 3 (sub-group)");
        fsdp_comm_free(sub);
    }
    RCHECK(fsdp_comm_barrier(world) == FSDP_OK, "last barrier: %s", fsdp_last_error());
    RCHECK(fsdp_comm_finalize() == FSDP_OK, "finalize: %s", fsdp_last_error());
    return check_exit(name);
}
