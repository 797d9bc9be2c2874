#!/usr/bin/env bash
# Ranks vs threads on this machine's cores: tokens/s of 2 ranks x 1 thread
# (strategies full, grad_op, none) against 1 rank x 2 threads, for the
# GPT-2 124M shape at 4 x 64 and 4 x 256 tokens per step, and the ratio
# (target >= 0.9). Runs are interleaved (1 rank, full, grad_op, none, then
# again), REPS times (default 2); the table gives the median tok/s of each
# configuration, the ratio of medians, where a 2-rank step goes (ms:
# forward, backward, comm_wait inside them, optimizer), bytes sent per step
# against the strategy's theory, and peak memory per rank. First it times
# the collectives of one GPT-2 block with the shared-memory path and with
# MPI alone (bench/collectives.lua). The load (uptime) is printed before,
# between and after the runs: compare ratios from quiet runs.
#   bash bench/dist.sh            (make all first)   REPS=3 SHAPES="64 256" bash bench/dist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/fsdp-lua
REPS=${REPS:-2}
SHAPES=${SHAPES:-"64 256"}
STRATEGIES=${STRATEGIES:-"full grad_op none"}
row() { grep -o 'BENCH {.*}' | sed 's/^BENCH //' | tail -1; }
field() { echo "$1" | grep -o "\"$2\":[-0-9.e+]*" | head -1 | cut -d: -f2; }
load() { uptime | sed 's/.*load average: //'; }

echo "== $(date '+%F %T'), load $(load), $(nproc) cores"
echo "== collectives of one GPT-2 block (28 MB f32), 2 ranks, ms each"
for shm in 1 0; do
  r=$(FSDP_COMM_SHM=$shm OMP_NUM_THREADS=1 $B --nproc-per-node 2 bench/collectives.lua | row)
  printf '  %-22s all_gather %7.2f   reduce_scatter %7.2f   all_reduce %7.2f   barrier %6.3f\n' \
    "$([ $shm = 1 ] && echo 'shared memory' || echo 'MPI (FSDP_COMM_SHM=0)')" \
    "$(field "$r" all_gather_ms)" "$(field "$r" reduce_scatter_ms)" "$(field "$r" all_reduce_ms)" "$(field "$r" barrier_ms)"
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
for T in $SHAPES; do
  echo "== gpt2 124M, 4 x $T tokens per step, $REPS interleaved reps; load $(load)"
  declare -A rows=()
  for rep in $(seq "$REPS"); do
    rows[one]+="$(OMP_NUM_THREADS=2 $B bench/dist.lua --preset gpt2 --vocab 50257 --seq-len "$T" --strategy none | row)"$'\n'
    for s in $STRATEGIES; do
      rows[$s]+="$(OMP_NUM_THREADS=1 $B --nproc-per-node 2 bench/dist.lua --preset gpt2 --vocab 50257 --seq-len "$T" \
                   --strategy "$s" | row)"$'\n'
    done
    echo "   rep $rep done, load $(load)"
  done
  one=$(echo -n "${rows[one]}" | while read -r l; do field "$l" tokens_per_s; done | median)
  printf '  %-24s %8s %6s %8s %8s %8s %8s %14s %14s %10s\n' config tok/s ratio fwd_ms bwd_ms wait_ms opt_ms \
    bytes/step theory peak/rank
  printf '  %-24s %8.1f %6s\n' "1 rank x 2 threads" "$one" "1.00"
  for s in $STRATEGIES; do
    tps=$(echo -n "${rows[$s]}" | while read -r l; do field "$l" tokens_per_s; done | median)
    last=$(echo -n "${rows[$s]}" | tail -1)
    printf '  %-24s %8.1f %6.2f %8.0f %8.0f %8.0f %8.0f %14.0f %14.0f %8.0f MiB\n' "2 ranks x 1 thread $s" "$tps" \
      "$(awk "BEGIN{print $tps/$one}")" "$(field "$last" forward_ms)" "$(field "$last" backward_ms)" \
      "$(field "$last" comm_wait_ms)" "$(field "$last" optimizer_ms)" "$(field "$last" bytes_per_step)" \
      "$(field "$last" theory_bytes_per_step)" "$(awk "BEGIN{print $(field "$last" peak_bytes)/1048576}")"
  done
  unset rows
done
echo "== done $(date '+%F %T'), load $(load)"
