/* comm_world.c - which backend the job's world is, from the launcher's env,
 * and ending the job. The only file that names libfsdp's backends: comm.c
 * is the interface they plug into, and none of them depends on this file.
 *
 * The world is MPI when the process was started by an MPI launcher (mpiexec,
 * srun with PMI, fsdp-lua --nproc-per-node). Otherwise, with torchrun's env
 * (WORLD_SIZE > 1, RANK, MASTER_ADDR, MASTER_PORT) it is the tcp backend on
 * port MASTER_PORT + 1, since torchrun's agent holds MASTER_PORT
 * (FSDP_TCP_PORT overrides); MPI is never touched then. Otherwise it is a
 * world of one ("self") and MPI is never touched, so a single process needs
 * no mpiexec. */
#include <stdlib.h>
#include "internal.h"
#include "comm_ops.h"

static fsdp_comm *world;   /* NULL until fsdp_comm_world succeeds */

static int env_int(const char *name, long *out) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end) return 0;
    *out = v;
    return 1;
}

static int env_set(const char *name) {
    const char *s = getenv(name);
    return s && *s;
}

/* Was this process started by an MPI launcher? Hydra sets PMI_RANK/PMI_SIZE
 * (and PMI_FD), Open MPI OMPI_COMM_WORLD_SIZE, PMIx launchers PMIX_RANK, and
 * srun SLURM_PROCID with SLURM_NTASKS. */
static int launched_by_mpi(void) {
    long ntasks = 0;
    if (env_set("PMI_RANK") || env_set("PMI_SIZE") || env_set("PMI_FD")) return 1;
    if (env_set("OMPI_COMM_WORLD_SIZE") || env_set("PMIX_RANK")) return 1;
    if (env_set("SLURM_PROCID") && env_int("SLURM_NTASKS", &ntasks) && ntasks > 1) return 1;
    return 0;
}

/* torchrun's env alone (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): the tcp
 * backend, on MASTER_PORT + 1 (torchrun's agent holds MASTER_PORT) */
static fsdp_comm *tcp_world(long env_size) {
    long env_rank = -1, port = 0;
    const char *addr = getenv("MASTER_ADDR");
    if (!addr || !*addr || !env_int("MASTER_PORT", &port))
        return fsdp_error_null(FSDP_ERR_COMM,
                               "fsdp_comm_world: WORLD_SIZE=%ld (RANK=%s) is set but neither an MPI launcher"
                               " env (PMI_RANK, OMPI_COMM_WORLD_SIZE, PMIX_RANK, SLURM_PROCID) nor"
                               " MASTER_ADDR and MASTER_PORT (torchrun's) was found; start the ranks with"
                               " mpiexec, srun, `fsdp-lua --nproc-per-node` or `torchrun --no-python`",
                               env_size, getenv("RANK") ? getenv("RANK") : "unset");
    if (!env_int("RANK", &env_rank) || env_rank < 0 || env_rank >= env_size)
        return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: WORLD_SIZE=%ld but RANK=%s is not a rank in"
                               " 0..%ld", env_size, getenv("RANK") ? getenv("RANK") : "unset", env_size - 1);
    port += 1;
    if (env_set("FSDP_TCP_PORT") && !env_int("FSDP_TCP_PORT", &port))
        return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: rank %ld: FSDP_TCP_PORT=%s is not a number",
                               env_rank, getenv("FSDP_TCP_PORT"));
    if (port < 1 || port > 65535)
        return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: rank %ld: tcp port %ld outside 1..65535"
                               " (MASTER_PORT + 1, or FSDP_TCP_PORT)", env_rank, port);
    return fsdp_comm_tcp_world((int)env_rank, (int)env_size, addr, (int)port, fsdp_comm_default_timeout());
}

fsdp_comm *fsdp_comm_world(void) {
    if (fsdp_comm_mpi_finalized()) return fsdp_error_null(FSDP_ERR_COMM, "fsdp_comm_world: MPI was already finalized");
    if (world) return world;
    long env_size = 0;
    fsdp_comm *c;
    if (launched_by_mpi()) c = fsdp_comm_mpi_world();
    else if (env_int("WORLD_SIZE", &env_size) && env_size > 1) c = tcp_world(env_size);
    else c = fsdp_comm_self_new(NULL);
    if (c) {
        fsdp_comm_set_world(c);
        world = c;
    }
    return c;
}

void fsdp_comm_abort(int code) {
    fsdp_comm_mpi_abort(code);
    /* No MPI job to tear down. This is the explicit fatal path the Lua top
     * level asks for after printing its error; the library itself never
     * calls it. */
    exit(code);
}

int fsdp_comm_finalize(void) { return fsdp_comm_mpi_finalize(); }
