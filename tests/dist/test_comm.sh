#!/usr/bin/env bash
# Collectives (engine/comm.c) through build/tests/dist_comm:
#   1. run directly: a world of one, the self backend
#   2. WORLD_SIZE=2 without an MPI launcher: refused with a clear message
#   3. under mpiexec -n 2, 3, 4: every collective checked on every rank
#   4. a rank killed (SIGKILL) before a collective: the job must end non-zero
#      within 60 s instead of hanging
#   5. a rank that never joins a collective: with FSDP_COMM_TIMEOUT=3 the
#      others report the timeout naming their rank, and the job ends within 60 s
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
             -u SLURM_PROCID -u SLURM_NTASKS -u RANK -u WORLD_SIZE)

# ---- 1. world of one ----
echo "== direct run (self backend)"
"${no_launcher[@]}" timeout 120 "$bin" || fail "direct run"

# ---- 2. torchrun-style env without MPI ----
echo "== WORLD_SIZE=2 without an MPI launcher"
"${no_launcher[@]}" RANK=0 WORLD_SIZE=2 timeout 120 "$bin" --expect-launcher-error || fail "launcher error"

# ---- 3. mpiexec ----
for n in 2 3 4; do
    echo "== mpiexec -n $n"
    timeout 120 mpiexec -n "$n" "$bin" || fail "mpiexec -n $n"
done

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

echo
if [ "$failures" -ne 0 ]; then echo "test_comm: $failures failed"; exit 1; fi
echo "test_comm: all passed"
