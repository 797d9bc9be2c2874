#!/usr/bin/env bash
# The GPU training path end to end: the shipped recipe with --device cuda on
# a Llama-style model (default 8 layers of the Llama-3-8B block shape, bf16
# GEMMs and attention), tokens/s and MFU against the GPU's dense bf16 peak as
# the recipe's console reports them, next to bench/gpu_block (one block in C,
# no Lua, no sharding) in the same run: their ratio is what the Lua layer,
# the f32 elementwise ops and the collectives cost.
#
#   make cuda && bash bench/gpu_train.sh
#   NPROC=8 LAYERS=32 BATCH=8 SEQ=2048 bash bench/gpu_train.sh
#
# Exits 77 (and says so) without a usable GPU.
set -u
cd "$(dirname "$0")/.."

NPROC=${NPROC:-1}
LAYERS=${LAYERS:-8}
BATCH=${BATCH:-$NPROC}   # sequences per step over all ranks
SEQ=${SEQ:-2048}
STEPS=${STEPS:-12}
DTYPE=${DTYPE:-bf16}
LOG=${LOG:-build/bench-logs}
mkdir -p "$LOG"

if [ ! -x build/gpu_block ] || [ ! -f build/libfsdp_cuda.so ]; then
    echo "gpu_train: build/libfsdp_cuda.so or build/gpu_block is missing: run make cuda" >&2
    exit 1
fi
build/gpu_block --batch 1 --seq "$SEQ" --iters 5 >"$LOG/gpu_block.txt" 2>&1
rc=$?
if [ $rc -eq 77 ]; then tail -n 1 "$LOG/gpu_block.txt"; exit 77; fi
[ $rc -eq 0 ] || { cat "$LOG/gpu_block.txt"; exit 1; }

corpus=data/tinyshakespeare.txt
[ -f "$corpus" ] || corpus=/usr/share/games/fortunes/cookie

# --size 7B is the Llama-3-8B block (C 4096, 32 heads, 8 KV heads, FFN 14336); byte vocabulary
build/fsdp-lua --nproc-per-node "$NPROC" recipes/pretrain.lua --data "$corpus" --size 7B \
    --n-layer "$LAYERS" --device cuda --param-dtype "$DTYPE" --batch-size "$BATCH" --seq-len "$SEQ" \
    --max-steps "$STEPS" --warmup-steps 2 --log-every 1 --eval-every 0 --eval-batches 1 \
    --sample-tokens 0 --run-dir "$LOG/gpu_train_run" >"$LOG/gpu_train.txt" 2>&1 ||
    { tail -n 30 "$LOG/gpu_train.txt"; exit 1; }

echo "gpu_block (one block, C):"
grep -E "device:|tokens/s" "$LOG/gpu_block.txt"
echo "recipe (--device cuda, $NPROC rank(s), $LAYERS layers, $BATCH x $SEQ, $DTYPE):"
# the last logged steps (the first ones include NCCL setup and cuBLASLt heuristics)
grep -E "^\[.*step +[0-9]+/" "$LOG/gpu_train.txt" | tail -n 3
