#!/usr/bin/env bash
# scale-out.sh — data-parallel scaling on this machine: the same LoRA recipe (legal corpus,
# `small` preset, one thread a rank) trained on 1 rank and under `mpirun -np 2` with the same
# global batch, side by side: tokens/s in all, per rank, and the scaling efficiency
# (per-rank tokens/s at 2 ranks over 1 rank's). docs/scale-out.md has the figures.
# Usage: bench/scale-out.sh [BUILD_DIR] [STEPS]   (default build, 12)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
steps=${2:-12}
bin=$PWD/$build/moetune
[ -x "$bin" ] || { echo "scale-out: no $bin (build first: scripts/setup.sh $build)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "scale-out: no mpirun (apt install openmpi-bin)" >&2; exit 2; }
[ "$(id -u)" -ne 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bin" init --preset small --seed 1 "$work/base" >/dev/null
"$bin" data legal "$work/legal.jsonl" --max-bytes 2M >/dev/null
recipe() { # NAME
  cat > "$work/$1.yaml" <<YAML
name: scale-$1
method: sft
model:
  path: $work/base
adapter:
  type: lora
  r: 16
  alpha: 32
  targets: all-linear
data:
  train: $work/legal.jsonl
  format: text
  max_seq_len: 256
  packing: true
train:
  seed: 1
  steps: $steps
  micro_batch: 2
  grad_accum: 4
  lr: 1e-3
  threads: 1
  log_every: 0
  eval_every: 0
  save_every: 0
thresholds:
  dap: 0.5
output:
  dir: $work/$1/run
  adapter: $work/$1/adapter
  store: $work/$1/moetune.db
YAML
}
tps() { sed -n 's/^throughput: *\([0-9.]*\) tokens\/s.*/\1/p' "$1"; }
recipe one
recipe two
OMP_NUM_THREADS=1 "$bin" train "$work/one.yaml" > "$work/one.out" 2>"$work/one.err"
mpirun --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 \
  "$bin" train "$work/two.yaml" > "$work/two.out" 2>"$work/two.err"
t1=$(tps "$work/one.out")
t2=$(tps "$work/two.out")
loss1=$(sed -n 's/^last loss: *//p' "$work/one.out")
loss2=$(sed -n 's/^last loss: *//p' "$work/two.out")
echo "scale-out: LoRA r=16 all-linear on the small preset, $steps steps of 2 x 4 rows x 256 tokens, 1 thread a rank ($(nproc) cores)"
printf '%-6s %12s %16s %10s %11s\n' ranks "tokens/s" "tokens/s/rank" efficiency "last loss"
awk -v t1="$t1" -v t2="$t2" -v l1="$loss1" -v l2="$loss2" 'BEGIN {
  printf "%-6d %12.0f %16.0f %9.0f%% %11s\n", 1, t1, t1, 100, l1
  printf "%-6d %12.0f %16.0f %9.0f%% %11s\n", 2, t2, t2 / 2, 100 * (t2 / 2) / t1, l2 }'
