#!/bin/bash
# fsdp-lua on several machines without a scheduler, by hand.
#
# MPICH's mpiexec (hydra) starts every rank from this machine: it logs in to
# each host over ssh (password-less keys needed), so the same checkout (or
# the same install path) must exist on every host, e.g. on shared storage.
#
#   launch/multinode.sh "node1,node2" 8 recipes/train_mingpt.lua --strategy hybrid_full
#
#   $1  comma-separated host names (this machine may be one of them)
#   $2  ranks per host (GPUs per host)
#   $@  the recipe and its options
#
# The same thing through fsdp-lua's own launcher flags:
#   build/fsdp-lua --nnodes 2 --hosts node1,node2 --nproc-per-node 8 RECIPE ...
# Without ssh, run one command per node the torchrun way instead:
#   build/fsdp-lua --nnodes 2 --node-rank K --master-addr NODE0 --master-port 29500 \
#       --nproc-per-node 8 RECIPE ...
#
# Hybrid strategies shard inside a node and replicate across nodes; the
# shard group size defaults to the ranks per node (LOCAL_WORLD_SIZE).
set -euo pipefail
hosts=$1; per_host=$2; shift 2
n_hosts=$(echo "$hosts" | tr ',' '\n' | wc -l)
FSDP_LUA=${FSDP_LUA:-$(dirname "$(readlink -f "$0")")/../build/fsdp-lua}

exec mpiexec -hosts "$hosts" -ppn "$per_host" -n $((n_hosts * per_host)) \
     -prepend-pattern '[rank %r] ' \
     -genv OMP_NUM_THREADS "${OMP_NUM_THREADS:-1}" -genv LOCAL_WORLD_SIZE "$per_host" \
     "$FSDP_LUA" "$@"
