#!/usr/bin/env bash
# Collectives (engine/comm.c) through build/tests/dist_comm:
#   1. run directly: a world of one, the self backend
#   2. WORLD_SIZE=2 without an MPI launcher nor MASTER_ADDR/MASTER_PORT:
#      refused with a clear message
#   3. under mpiexec -n 2, 3, 4: every collective checked on every rank, and
#      150 random ones with up to 5 in flight; with the shared-memory path
#      (default ring and a 1 MB ring) and with MPI alone
#   4. a rank killed (SIGKILL) before a collective: the job must end non-zero
#      within 60 s instead of hanging
#   5. a rank that never joins a collective: with FSDP_COMM_TIMEOUT=3 the
#      others report the timeout naming their rank, and the job ends within 60 s
#   6. torchrun's env alone (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; no
#      MPI): 2, 3, 4 processes on the tcp backend pass the same checks; a rank
#      killed before a collective (rank 0 or not) makes the others fail naming
#      it within seconds; a rank that never joins: FSDP_COMM_TIMEOUT=3 and the
#      others name it
#   7. interrupts (build/tests/dist_interrupt): a world of one; mpiexec -n 2
#      and 3 (a rank alone in a barrier returns FSDP_ERR_INTERRUPTED within
#      1 s of its flag, the others hear of it, and after fsdp_comm_resync the
#      next collectives are in step, on the world and a sub-group); tcp with
#      2 ranks (interrupted within 1 s, resync refused, the peer not hung)
# Exits non-zero if any part fails.
set -u
cd "$(dirname "$0")/../.."
bin=build/tests/dist_comm
[ -x "$bin" ] || { echo "missing $bin (run make all)"; exit 1; }
export OMP_NUM_THREADS=1
# the functional runs must never sit in the 600 s default
export FSDP_COMM_TIMEOUT=60
mkdir -p build/test-logs
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# launcher env that would turn a direct run into an MPI one
no_launcher=(env -u PMI_RANK -u PMI_SIZE -u PMI_FD -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK
             -u SLURM_PROCID -u SLURM_NTASKS -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT
             -u FSDP_TCP_PORT)

# ---- 1. world of one ----
echo "== direct run (self backend)"
"${no_launcher[@]}" timeout 120 "$bin" || fail "direct run"

# ---- 2. torchrun-style env without MPI ----
echo "== WORLD_SIZE=2 without an MPI launcher"
"${no_launcher[@]}" RANK=0 WORLD_SIZE=2 timeout 120 "$bin" --expect-launcher-error || fail "launcher error"

# ---- 3. mpiexec ----
# ranks on one machine go through shared memory (engine/comm_shm.c): with
# its default ring, with a 1 MB ring (big collectives stream through it and
# wrap), and MPI alone (FSDP_COMM_SHM=0)
for n in 2 3 4; do
    echo "== mpiexec -n $n"
    timeout 120 mpiexec -n "$n" "$bin" || fail "mpiexec -n $n"
    echo "== mpiexec -n $n, FSDP_COMM_SHM_MB=1"
    FSDP_COMM_SHM_MB=1 timeout 120 mpiexec -n "$n" "$bin" || fail "mpiexec -n $n, 1 MB ring"
done
echo "== mpiexec -n 3, FSDP_COMM_SHM=0 (MPI moves the data)"
FSDP_COMM_SHM=0 timeout 120 mpiexec -n 3 "$bin" || fail "mpiexec -n 3 without shared memory"

# ---- 4. a rank dies ----
echo "== mpiexec -n 3, rank 1 killed before a collective"
t0=$(date +%s.%N)
timeout 120 mpiexec -n 3 "$bin" --die-rank 1 >build/test-logs/comm_die.log 2>&1
rc=$?
dt=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")
echo "exit code $rc after $dt s"
sed 's/^/   | /' build/test-logs/comm_die.log | tail -n 8
[ "$rc" -ne 0 ] || fail "job with a dead rank exited 0"
[ "$rc" -ne 124 ] || fail "job with a dead rank hung (killed by timeout)"
awk "BEGIN{exit !($dt < 60)}" || fail "job with a dead rank took $dt s (limit 60)"

# ---- 5. a rank never joins ----
echo "== mpiexec -n 3, rank 1 never joins; FSDP_COMM_TIMEOUT=3"
t0=$(date +%s.%N)
FSDP_COMM_TIMEOUT=3 timeout 120 mpiexec -n 3 "$bin" --hang-rank 1 >build/test-logs/comm_hang.log 2>&1
rc=$?
dt=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")
echo "exit code $rc after $dt s"
sed 's/^/   | /' build/test-logs/comm_hang.log | tail -n 8
[ "$rc" -ne 0 ] || fail "job with a missing rank exited 0"
[ "$rc" -ne 124 ] || fail "job with a missing rank hung (killed by timeout)"
awk "BEGIN{exit !($dt < 60)}" || fail "job with a missing rank took $dt s (limit 60)"
for r in 0 2; do
    grep -q "rank $r: collective all_reduce of 1024 bytes timed out after 3 s (a peer may have died)" \
        build/test-logs/comm_hang.log || fail "rank $r did not report the timeout"
done

# ---- 6. torchrun's env, no MPI: the tcp backend ----
# starts n ranks the way torchrun does (log: build/test-logs/comm_tcp_rR.log),
# each killed after $limit s (120); sets rcs to their exit codes, in rank order
torchrun_like() {
    local n=$1; shift
    local port=$((20000 + RANDOM % 40000)) pids=() r
    for ((r = 0; r < n; r++)); do
        "${no_launcher[@]}" RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 \
            MASTER_PORT=$port timeout "${limit:-120}" "$@" >build/test-logs/comm_tcp_r$r.log 2>&1 &
        pids+=($!)
    done
    rcs=()
    for r in "${pids[@]}"; do wait "$r"; rcs+=($?); done
}
for n in 2 3 4; do
    echo "== torchrun env, $n ranks (tcp)"
    torchrun_like "$n" "$bin"
    for ((r = 0; r < n; r++)); do
        tail -n 1 build/test-logs/comm_tcp_r$r.log | sed 's/^/   | /'
        [ "${rcs[$r]}" -eq 0 ] || { fail "tcp $n ranks: rank $r exited ${rcs[$r]}"; tail -n 8 build/test-logs/comm_tcp_r$r.log; }
    done
done
for victim in 1 0; do
    echo "== torchrun env, 3 ranks, rank $victim killed before a collective"
    t0=$(date +%s.%N)
    FSDP_COMM_TIMEOUT=30 torchrun_like 3 "$bin" --die-rank $victim
    dt=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")
    echo "exit codes ${rcs[*]} after $dt s"
    awk "BEGIN{exit !($dt < 20)}" || fail "tcp: a dead rank $victim took $dt s (timeout 30)"
    for ((r = 0; r < 3; r++)); do
        [ "$r" -eq "$victim" ] && continue
        sed 's/^/   | /' build/test-logs/comm_tcp_r$r.log
        [ "${rcs[$r]}" -eq 1 ] || fail "tcp: rank $r exited ${rcs[$r]} with rank $victim dead"
        grep -q "rank $victim closed its connection (it may have died)" build/test-logs/comm_tcp_r$r.log \
            || fail "tcp: rank $r did not name the dead rank $victim"
    done
done
echo "== torchrun env, 3 ranks, rank 1 never joins; FSDP_COMM_TIMEOUT=3"
# the victim sleeps; nothing like MPI_Abort ends it, so `timeout` does
FSDP_COMM_TIMEOUT=3 limit=8 torchrun_like 3 "$bin" --hang-rank 1
echo "exit codes ${rcs[*]}"
for r in 0 2; do
    [ "${rcs[$r]}" -eq 1 ] || fail "tcp: rank $r exited ${rcs[$r]} with rank 1 missing"
    sed 's/^/   | /' build/test-logs/comm_tcp_r$r.log
    grep -q "rank 0: collective all_reduce timed out after 3 s waiting for rank 1 (a peer may have died)" \
        build/test-logs/comm_tcp_r$r.log || fail "tcp: rank $r did not report rank 1's timeout"
done

# ---- 7. interrupts ----
ibin=build/tests/dist_interrupt
[ -x "$ibin" ] || fail "missing $ibin (run make all)"
echo "== interrupts: world of one"
"${no_launcher[@]}" timeout 60 "$ibin" || fail "interrupts, world of one"
for n in 2 3; do
    echo "== interrupts: mpiexec -n $n"
    timeout 120 mpiexec -n "$n" "$ibin" || fail "interrupts, mpiexec -n $n"
done
echo "== interrupts: mpiexec -n 3, FSDP_COMM_SHM_MB=1 (the cancelled collective streams through the rings)"
FSDP_COMM_SHM_MB=1 timeout 120 mpiexec -n 3 "$ibin" || fail "interrupts, mpiexec -n 3, 1 MB ring"
echo "== interrupts: mpiexec -n 2, FSDP_COMM_SHM=0 (MPI)"
FSDP_COMM_SHM=0 timeout 120 mpiexec -n 2 "$ibin" || fail "interrupts, mpiexec -n 2, MPI"
echo "== interrupts: torchrun env, 2 ranks (tcp)"
torchrun_like 2 "$ibin"
for r in 0 1; do
    sed 's/^/   | /' build/test-logs/comm_tcp_r$r.log
    [ "${rcs[$r]}" -eq 0 ] || fail "interrupts, tcp: rank $r exited ${rcs[$r]}"
done

echo
if [ "$failures" -ne 0 ]; then echo "test_comm: $failures failed"; exit 1; fi
echo "test_comm: all passed"
