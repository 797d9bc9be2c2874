#!/usr/bin/env bash
# Sharding cost on this machine's two cores: tokens/s of 1 rank with two
# threads vs 2 ranks with one thread each (same cores), the bytes each rank
# sends per step vs the strategy's theoretical volume, and peak memory per
# rank. For minGPT (gpt-micro) and the GPT-2 124M shape at 4 x 64 and 4 x 256
# tokens per step (the communication per step is the same for both, the
# compute four times larger).
#   bash bench/dist.sh            (make all first)
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/fsdp-lua
row() { grep -o 'BENCH {.*}' | sed 's/^BENCH //'; }
printf '%-10s %-8s %5s %7s %10s %14s %14s %8s %12s\n' model strategy ranks threads tok/s bytes/step theory ratio peak/rank
for shape in gpt-micro:64 gpt2:64 gpt2:256; do
  preset=${shape%:*}; T=${shape#*:}
  vocab=$([ $preset = gpt2 ] && echo 50257 || echo 256)
  echo "== $preset, 4 x $T tokens per step"
  one=$(OMP_NUM_THREADS=2 $B bench/dist.lua --preset $preset --vocab $vocab --seq-len $T --strategy none | row)
  for strategy in full grad_op none; do
    two=$(OMP_NUM_THREADS=1 $B --nproc-per-node 2 bench/dist.lua --preset $preset --vocab $vocab --seq-len $T --strategy $strategy | row)
    for r in "$one" "$two"; do
      echo "$r" | luajit -e '
        local s = io.read("*a")
        local function f(k) return s:match("\""..k.."\":([%d%.e+-]+)") end
        local function g(k) return s:match("\""..k.."\":\"([^\"]*)\"") end
        local bytes, theory = tonumber(f("bytes_per_step")), tonumber(f("theory_bytes_per_step"))
        print(string.format("%-10s %-8s %5d %7d %10.1f %14d %14d %8s %10.1f MiB", g("preset"), g("strategy"),
          tonumber(f("ranks")), tonumber(f("threads")), tonumber(f("tokens_per_s")), bytes, theory,
          theory > 0 and string.format("%.3f", bytes / theory) or "-", tonumber(f("peak_bytes")) / 2^20))'
    done
    tps1=$(echo "$one" | grep -o '"tokens_per_s":[0-9.e+-]*' | cut -d: -f2)
    tps2=$(echo "$two" | grep -o '"tokens_per_s":[0-9.e+-]*' | cut -d: -f2)
    echo "  -> 2 ranks x 1 thread / 1 rank x 2 threads ($strategy): $(awk "BEGIN{printf \"%.2f\", $tps2/$tps1}") (target >= 0.85)"
  done
done
