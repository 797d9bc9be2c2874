/* comm_shm.c - the intra-node path of the mpi backend: when every rank of a
 * comm runs on one machine, its collectives move through shared memory
 * instead of MPI (MPICH's intra-node path moves a 28 MB all_gather at
 * ~1.5 GB/s on the development machine; memcpy does several times that).
 *
 * Layout. One POSIX shared-memory segment per comm (rank 0 creates it, the
 * name travels over MPI, every rank maps it, rank 0 unlinks it), holding a
 * control block and one byte ring of `cap` bytes per rank. Each rank writes
 * only its own ring; the control block has, per rank w, `produced[w]` (bytes
 * ever written into w's ring), `started[w]` (collectives w has started), and
 * per reader r `consumed[w][r]` (bytes of w's stream r no longer needs). w
 * may overwrite ring space once every reader has consumed it.
 *
 * A collective. At its start a rank publishes `started` and deposits what the
 * others need from it into its ring (its stream of deposits is in collective
 * order, so every rank knows where each deposit starts):
 *   all_gather      its slice            reduce_scatter  every other rank's slice
 *   all_reduce      its buffer           broadcast       the root its buffer
 *   barrier         nothing (started alone is the arrival)
 * Completing it (in test or wait, collectives in order) reads the others'
 * deposits: copies for all_gather and broadcast; for the reductions, the sum
 * in rank order ((r0 + r1) + r2) ..., bf16 and f16 widened per step, then the
 * AVG division (comm_reduce.c, as the mpi and tcp backends): the same bytes on
 * every rank, and on 2 ranks MPI's. Work goes in chunks of 1 MB, so a
 * deposit larger than the ring streams through it while its readers read.
 *
 * A rank waits only for the others to have *started* a collective (and for
 * ring space), not for them to reach their wait: a prefetched gather started
 * one unit ahead completes without a rendezvous. Whoever produces or
 * consumes bumps an event word; waiters sleep on it (a futex shared between
 * the processes, 50 ms at most, so interrupts and timeouts are seen): no
 * busy polling. All progress is made by the calls of the rank itself
 * (start, test, wait), each driving every started collective of the comm as
 * far as it can without blocking.
 *
 * FSDP_COMM_SHM=0 turns the path off (MPI then moves everything);
 * FSDP_COMM_SHM_MB sets the ring size per rank (default 64). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "internal.h"
#include "comm_ops.h"
#include "comm_shm.h"

enum { LINE = 64, CHUNK = 1 << 20 };

/* a 64-byte line holding one counter, so writers do not share lines */
typedef struct counter {
    int64_t v;
    char pad[LINE - sizeof(int64_t)];
} counter;

typedef struct shm_head {
    int32_t event;          /* bumped on every publication (futex word) */
    int32_t waiters;        /* ranks sleeping on event */
    char pad[LINE - 8];
    /* then: produced[n], started[n], consumed[n * n] (counter each), rings */
} shm_head;

typedef struct shm_op {
    int kind, dtype, op, root;
    int64_t count, slice;   /* elements per rank; bytes per rank's part */
    void *recv;             /* all_reduce / broadcast: the buffer */
    const void *send;
    void *tmp;              /* a private copy of send when it aliases recv */
    int64_t seq;
    int64_t *base;          /* per writer: where its deposit starts in its stream */
    int64_t produced;       /* bytes of our deposit written */
    int64_t done_bytes;     /* bytes of our part completed */
    int done, released;
    struct shm_op *next;
} shm_op;

struct fsdp_shm {
    int rank, size;
    int64_t cap;            /* ring bytes per rank */
    char *map;
    size_t map_len;
    shm_head *head;
    counter *produced, *started, *consumed;
    char **ring;            /* ring[w] */
    int64_t *next_base;     /* per writer: where its next deposit starts */
    int64_t seq;            /* collectives started here */
    shm_op *first, *last;   /* started, not yet freed, in order */
    char *scratch;          /* CHUNK bytes for aliased reduction sources */
};

/* ---- shared counters ------------------------------------------------------- */

static int64_t load(const counter *c) { return __atomic_load_n(&c->v, __ATOMIC_ACQUIRE); }
static void store(counter *c, int64_t v) { __atomic_store_n(&c->v, v, __ATOMIC_RELEASE); }

static void bump(fsdp_shm *s) {
    __atomic_add_fetch(&s->head->event, 1, __ATOMIC_RELEASE);
    if (__atomic_load_n(&s->head->waiters, __ATOMIC_ACQUIRE) > 0)
        syscall(SYS_futex, &s->head->event, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* sleeps until the event word moves from seen, or at most max_s */
static void sleep_on(fsdp_shm *s, int32_t seen, double max_s) {
    struct timespec ts = {(time_t)max_s, (long)((max_s - (double)(time_t)max_s) * 1e9)};
    __atomic_add_fetch(&s->head->waiters, 1, __ATOMIC_ACQ_REL);
    if (__atomic_load_n(&s->head->event, __ATOMIC_ACQUIRE) == seen)
        syscall(SYS_futex, &s->head->event, FUTEX_WAIT, seen, &ts, NULL, 0);
    __atomic_sub_fetch(&s->head->waiters, 1, __ATOMIC_ACQ_REL);
}

static counter *consumed_of(fsdp_shm *s, int w, int r) { return &s->consumed[(int64_t)w * s->size + r]; }

/* ---- what each collective moves ------------------------------------------ */

/* bytes writer w deposits for op */
static int64_t deposit_of(const fsdp_shm *s, const shm_op *op, int w) {
    switch (op->kind) {
    case FSDP_SHM_ALL_GATHER: return op->slice;
    case FSDP_SHM_REDUCE_SCATTER: return (int64_t)(s->size - 1) * op->slice;
    case FSDP_SHM_ALL_REDUCE: return op->slice;
    case FSDP_SHM_BROADCAST: return w == op->root ? op->slice : 0;
    default: return 0;
    }
}

/* bytes of this rank's part: what completing op processes */
static int64_t part_of(const fsdp_shm *s, const shm_op *op) {
    if (op->kind == FSDP_SHM_BARRIER) return 0;
    if (op->kind == FSDP_SHM_BROADCAST && s->rank == op->root) return 0;
    return op->slice;
}

/* where, in w's deposit, this rank's part begins */
static int64_t part_offset(const fsdp_shm *s, const shm_op *op, int w) {
    if (op->kind != FSDP_SHM_REDUCE_SCATTER) return 0;
    return (int64_t)(s->rank < w ? s->rank : s->rank - 1) * op->slice;
}

/* the source bytes of our deposit at offset off (contiguous up to *avail) */
static const char *deposit_source(const fsdp_shm *s, const shm_op *op, int64_t off, int64_t *avail) {
    const char *send = op->tmp ? op->tmp : op->send;
    if (op->kind == FSDP_SHM_REDUCE_SCATTER) {
        /* the slices of ranks j != rank, in order */
        int64_t j = off / op->slice, within = off % op->slice;
        if (j >= s->rank) j++;
        *avail = op->slice - within;
        return send + j * op->slice + within;
    }
    if (op->kind == FSDP_SHM_ALL_GATHER) {
        *avail = op->slice - off;
        return send + off;
    }
    *avail = op->slice - off; /* all_reduce, broadcast: the buffer */
    return (const char *)op->recv + off;
}

/* ---- driving ---------------------------------------------------------------- */

/* Deposits start at multiples of ALIGN in a rank's stream, so that no
 * element straddles a ring's end (the ring size is a multiple of it). */
enum { ALIGN = 64 };
static int64_t padded(int64_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

/* writes as much of our deposits as the ring has room for, in order;
 * 1 when anything was written */
static int produce(fsdp_shm *s) {
    int moved = 0;
    for (shm_op *op = s->first; op; op = op->next) {
        int64_t want = deposit_of(s, op, s->rank), base = op->base[s->rank];
        while (op->produced < want) {
            int64_t pos = base + op->produced;
            /* room: the ring minus what some other rank still needs */
            int64_t oldest = INT64_MAX;
            for (int r = 0; r < s->size; r++) {
                if (r == s->rank) continue;
                int64_t c = load(consumed_of(s, s->rank, r));
                if (c < oldest) oldest = c;
            }
            int64_t room = s->cap - (pos - oldest);
            if (room <= 0) goto out;
            int64_t avail = 0;
            const char *src = deposit_source(s, op, op->produced, &avail);
            int64_t n = want - op->produced, at = pos % s->cap;
            if (n > avail) n = avail;
            if (n > room) n = room;
            if (n > s->cap - at) n = s->cap - at; /* up to the ring's end */
            if (n > 4 * CHUNK) n = 4 * CHUNK;     /* publish as it goes */
            memcpy(s->ring[s->rank] + at, src, (size_t)n);
            op->produced += n;
            store(&s->produced[s->rank], base + op->produced);
            moved = 1;
        }
        /* this deposit is out: the stream goes on at the next one's base */
        int64_t next = base + padded(want);
        if (load(&s->produced[s->rank]) < next) {
            store(&s->produced[s->rank], next);
            moved = 1;
        }
    }
out:
    if (moved) bump(s);
    return moved;
}

/* pointer to bytes [off, off + *n) of w's deposit for op, *n shrunk to what
 * w has written so far and to the ring's end; NULL when nothing is there */
static const char *peer_bytes(fsdp_shm *s, const shm_op *op, int w, int64_t off, int64_t *n) {
    int64_t at = op->base[w] + off;
    int64_t have = load(&s->produced[w]) - at;
    if (have <= 0) return NULL;
    int64_t r = at % s->cap;
    if (*n > have) *n = have;
    if (*n > s->cap - r) *n = s->cap - r;
    return s->ring[w] + r;
}

/* sum of the n-byte sources in rank order into out (reductions), then AVG */
static void reduce_into(fsdp_shm *s, const shm_op *op, char *out, const char **src, int64_t n) {
    int64_t es = fsdp_dtype_size(op->dtype), elems = n / es;
    /* out may alias one of the sources (in-place forms): keep it aside */
    for (int w = 1; w < s->size; w++)
        if (src[w] == out) {
            memcpy(s->scratch, out, (size_t)n);
            src[w] = s->scratch;
        }
    if (src[0] != out) memcpy(out, src[0], (size_t)n);
    for (int w = 1; w < s->size; w++) fsdp_reduce_combine(out, src[w], elems, op->dtype, op->op);
    if (op->op == FSDP_REDUCE_AVG) fsdp_reduce_divide(out, elems, op->dtype, s->size);
}

/* has every rank started op? (an empty deposit says nothing) */
static int all_started(fsdp_shm *s, const shm_op *op) {
    for (int w = 0; w < s->size; w++)
        if (load(&s->started[w]) <= op->seq) return 0;
    return 1;
}

/* Tells every writer which of its bytes we still need for op, the oldest
 * collective we have not completed: nothing before our part of its deposit
 * (the other ranks' parts, and what we have done), nothing of it at all once
 * op is complete. Writers reuse ring space no reader needs. */
static void release_upto(fsdp_shm *s, const shm_op *op) {
    int64_t part = part_of(s, op);
    for (int w = 0; w < s->size; w++) {
        int64_t dep = deposit_of(s, op, w);
        if (w == s->rank || dep == 0) continue;
        int64_t upto = op->base[w] + (op->done_bytes == part ? padded(dep) : part_offset(s, op, w) + op->done_bytes);
        if (upto > load(consumed_of(s, w, s->rank))) store(consumed_of(s, w, s->rank), upto);
    }
}

/* advances our part of op (the oldest collective not complete here) as far
 * as the others' deposits allow; 1 when anything moved. The chunk at hand
 * needs every writer's bytes. */
static int consume_op(fsdp_shm *s, shm_op *op) {
    int moved = 0;
    release_upto(s, op);
    if (!all_started(s, op)) return 0;
    int64_t part = part_of(s, op);
    const int rank = s->rank, size = s->size;
    const char *srcs[FSDP_SHM_MAX_RANKS];
    const char *send = op->tmp ? op->tmp : op->send;
    while (op->done_bytes < part) {
        int64_t off = op->done_bytes;
        int64_t n = part - off < CHUNK ? part - off : CHUNK;
        /* all_reduce overwrites the buffer it deposits from: our deposit of
         * these bytes must be out first */
        if (op->kind == FSDP_SHM_ALL_REDUCE) {
            if (op->produced <= off) break;
            if (op->produced < off + n) n = op->produced - off;
        }
        int ready = 1;
        for (int w = 0; w < size && ready; w++) {
            if (w == rank || deposit_of(s, op, w) == 0) continue;
            int64_t m = n;
            srcs[w] = peer_bytes(s, op, w, part_offset(s, op, w) + off, &m);
            if (!srcs[w]) ready = 0;
            else if (m < n) n = m; /* part written, or a ring's end: the start pointers stay */
        }
        n -= n % fsdp_dtype_size(op->dtype); /* whole elements */
        if (!ready || n <= 0) break;
        switch (op->kind) {
        case FSDP_SHM_ALL_GATHER:
            for (int w = 0; w < size; w++) {
                char *dst = (char *)op->recv + (int64_t)w * op->slice + off;
                const char *from = w == rank ? send + off : srcs[w];
                if (dst != from) memmove(dst, from, (size_t)n);
            }
            break;
        case FSDP_SHM_BROADCAST:
            memcpy((char *)op->recv + off, srcs[op->root], (size_t)n);
            break;
        case FSDP_SHM_REDUCE_SCATTER:
            srcs[rank] = send + (int64_t)rank * op->slice + off;
            reduce_into(s, op, (char *)op->recv + off, srcs, n);
            break;
        case FSDP_SHM_ALL_REDUCE:
            srcs[rank] = (const char *)op->recv + off;
            reduce_into(s, op, (char *)op->recv + off, srcs, n);
            break;
        default: break;
        }
        op->done_bytes += n;
        release_upto(s, op);
        moved = 1;
    }
    return moved;
}

/* drives every started collective: production, then completion in order;
 * frees the completed ones nobody holds any more */
static int drive(fsdp_shm *s) {
    int moved = produce(s);
    for (shm_op *op = s->first; op; op = op->next) {
        if (op->done) continue;
        if (consume_op(s, op)) moved = 1;
        if (op->done_bytes < part_of(s, op) || op->produced < deposit_of(s, op, s->rank) || !all_started(s, op))
            break;
        /* our part is complete: release the rest of the others' deposits */
        for (int w = 0; w < s->size; w++) {
            if (w == s->rank) continue;
            int64_t end = op->base[w] + padded(deposit_of(s, op, w));
            if (end > load(consumed_of(s, w, s->rank))) store(consumed_of(s, w, s->rank), end);
        }
        op->done = 1;
        moved = 1;
    }
    if (moved) bump(s);
    while (s->first && s->first->done && s->first->released) {
        shm_op *op = s->first;
        s->first = op->next;
        if (!s->first) s->last = NULL;
        free(op->tmp);
        free(op);
    }
    return moved;
}

/* ---- the collective calls ---------------------------------------------------- */

static int overlaps(const void *a, int64_t na, const void *b, int64_t nb) {
    const char *pa = a, *pb = b;
    return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

int fsdp_shm_start(fsdp_shm *s, const fsdp_comm *c, int kind, void *recv, const void *send, int64_t count,
                   int dtype, int op_code, int root, void **handle) {
    *handle = NULL;
    shm_op *op = calloc(1, sizeof *op + (size_t)s->size * sizeof(int64_t));
    if (!op) return fsdp_error(FSDP_ERR_OOM, "%s: out of host memory for a request", fsdp_comm_who(c));
    op->base = (int64_t *)(op + 1);
    op->kind = kind;
    op->dtype = dtype;
    op->op = op_code;
    op->root = root;
    op->count = count;
    op->slice = count * fsdp_dtype_size(dtype);
    op->recv = recv;
    op->send = send;
    /* a send buffer that overlaps the output anywhere but in the in-place
     * spot would be overwritten before it is all deposited or read */
    int64_t total = op->slice * s->size;
    int alias = 0;
    if (kind == FSDP_SHM_ALL_GATHER)
        alias = send != (char *)recv + (int64_t)s->rank * op->slice && overlaps(send, op->slice, recv, total);
    else if (kind == FSDP_SHM_REDUCE_SCATTER)
        alias = recv != (const char *)send + (int64_t)s->rank * op->slice && overlaps(send, total, recv, op->slice);
    if (alias) {
        int64_t n = kind == FSDP_SHM_ALL_GATHER ? op->slice : total;
        op->tmp = malloc((size_t)n);
        if (!op->tmp) {
            free(op);
            return fsdp_error(FSDP_ERR_OOM, "%s: out of host memory for %lld bytes", fsdp_comm_who(c), (long long)n);
        }
        memcpy(op->tmp, send, (size_t)n);
    }
    op->seq = s->seq++;
    for (int w = 0; w < s->size; w++) {
        op->base[w] = s->next_base[w];
        s->next_base[w] += padded(deposit_of(s, op, w));
    }
    if (s->last) s->last->next = op;
    else s->first = op;
    s->last = op;
    store(&s->started[s->rank], s->seq);
    bump(s);
    drive(s);
    *handle = op;
    return FSDP_OK;
}

int fsdp_shm_test(fsdp_shm *s, void *handle, int *done) {
    drive(s);
    *done = ((shm_op *)handle)->done;
    return FSDP_OK;
}

int fsdp_shm_wait(fsdp_shm *s, const fsdp_comm *c, void *handle, const char *name, int64_t nbytes,
                  double timeout_s, int *pending) {
    shm_op *op = handle;
    double deadline = fsdp_now_s() + timeout_s;
    *pending = 0;
    for (;;) {
        int32_t seen = __atomic_load_n(&s->head->event, __ATOMIC_ACQUIRE);
        drive(s);
        if (op->done) return FSDP_OK;
        if (fsdp_comm_interrupt_check()) {
            *pending = 1;
            return fsdp_comm_interrupted_error(c, name, nbytes);
        }
        double left = deadline - fsdp_now_s();
        if (left <= 0) {
            *pending = 1;
            return fsdp_error(FSDP_ERR_COMM, "%s: collective %s of %lld bytes timed out after %g s"
                              " (a peer may have died)", fsdp_comm_who(c), name, (long long)nbytes, timeout_s);
        }
        sleep_on(s, seen, left < 0.05 ? left : 0.05);
    }
}

void fsdp_shm_release(fsdp_shm *s, void *handle) {
    ((shm_op *)handle)->released = 1;
    drive(s);
}

/* ---- making and freeing ---------------------------------------------------- */

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

fsdp_shm *fsdp_shm_new(MPI_Comm comm) {
    const char *off = getenv("FSDP_COMM_SHM");
    int enabled = !(off && !strcmp(off, "0"));
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    /* every rank must agree: on one node, enabled, and then mapped */
    MPI_Comm node;
    int node_size = 0;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS) return NULL;
    MPI_Comm_size(node, &node_size);
    MPI_Comm_free(&node);
    int ok = enabled && size > 1 && size <= FSDP_SHM_MAX_RANKS && node_size == size;
    MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, comm);
    if (!ok) return NULL;

    int64_t mb = 64;
    const char *m = getenv("FSDP_COMM_SHM_MB");
    if (m && *m && atol(m) > 0) mb = atol(m);
    int64_t cap = mb << 20;
    size_t ctl = round_up(sizeof(shm_head) + (size_t)(2 * size + size * size) * sizeof(counter), 4096);
    size_t len = ctl + (size_t)size * (size_t)cap;

    /* rank 0 names and sizes the segment; the others open it */
    char name[64];
    memset(name, 0, sizeof name);
    static int made;
    int fd = -1;
    if (rank == 0) {
        snprintf(name, sizeof name, "/fsdp-%d-%d", (int)getpid(), made++);
        /* a /dev/shm too small for the rings (a container's default) must
         * mean "no shm", not a SIGBUS when a page is first touched; pages
         * are only taken as the rings fill */
        struct statvfs fs;
        int room = statvfs("/dev/shm", &fs) == 0 && (double)fs.f_bavail * (double)fs.f_bsize > 2.0 * (double)len;
        fd = room ? shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600) : -1;
        if (fd >= 0 && ftruncate(fd, (off_t)len) != 0) {
            close(fd);
            shm_unlink(name);
            fd = -1;
        }
        if (fd < 0) name[0] = 0;
    }
    MPI_Bcast(name, sizeof name, MPI_CHAR, 0, comm);
    if (!name[0]) return NULL;
    if (rank != 0) fd = shm_open(name, O_RDWR, 0600);
    char *map = fd >= 0 ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (fd >= 0) close(fd);
    ok = map != MAP_FAILED;
    MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, comm);
    if (rank == 0) shm_unlink(name); /* every rank has it mapped (or gives up) */
    fsdp_shm *s = ok ? calloc(1, sizeof *s) : NULL;
    if (s) {
        s->ring = calloc((size_t)size, sizeof *s->ring);
        s->next_base = calloc((size_t)size, sizeof *s->next_base);
        s->scratch = malloc(CHUNK);
    }
    int mine = s && s->ring && s->next_base && s->scratch;
    MPI_Allreduce(MPI_IN_PLACE, &mine, 1, MPI_INT, MPI_MIN, comm);
    if (!mine) {
        if (map != MAP_FAILED) munmap(map, len);
        if (s) {
            free(s->ring);
            free(s->next_base);
            free(s->scratch);
            free(s);
        }
        return NULL;
    }
    s->rank = rank;
    s->size = size;
    s->cap = cap;
    s->map = map;
    s->map_len = len;
    s->head = (shm_head *)map;
    s->produced = (counter *)(map + sizeof(shm_head));
    s->started = s->produced + size;
    s->consumed = s->started + size;
    for (int w = 0; w < size; w++) s->ring[w] = map + ctl + (size_t)w * (size_t)cap;
    return s;
}

void fsdp_shm_free(fsdp_shm *s) {
    if (!s) return;
    while (s->first) {
        shm_op *op = s->first;
        s->first = op->next;
        free(op->tmp);
        free(op);
    }
    munmap(s->map, s->map_len);
    free(s->ring);
    free(s->next_base);
    free(s->scratch);
    free(s);
}
