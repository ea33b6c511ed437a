#!/usr/bin/env bash
# tiny-long.sh — the long-context tiny base (models/tiny-long), made once and kept: the tiny
# base (scripts/tiny-base.sh) with max_position_embeddings 8192, every weight trained further on
# long rows of the general corpus (recipes/long-context-tiny.yaml), a two-stage curriculum:
#   stage 1: 120 steps of 4 x 2048 tokens (~1 epoch of the corpus)  -> models/tiny-long-2k
#   stage 2:  50 steps of 1 x 8192 tokens (~0.4 epoch)              -> models/tiny-long
# About 30 min on 2 shared cores (docs/attention-pruning.md, "The long-context base").
# `rm -rf models/tiny-long` to make it again (and runs/long-context-tiny-* to retrain a stage).
set -euo pipefail
cd "$(dirname "$0")/.."
mt=build/moetune
[ -x "$mt" ] || { echo "tiny-long: $mt is missing: build first (scripts/setup.sh build)" >&2; exit 1; }
for tool in jq python3; do
  command -v "$tool" >/dev/null || { echo "tiny-long: needs $tool (apt-get install $tool)" >&2; exit 1; }
done
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
if [ -s models/tiny-long/model.safetensors ]; then
  step "long-context base: models/tiny-long exists (delete it to train again)"
  exit 0
fi
scripts/tiny-base.sh
step "the tiny base allowed 8192 positions (models/tiny-base-8k)"
scripts/raise-context.sh models/tiny-base models/tiny-base-8k 8192
step "general corpus joined into ~128 KB texts (data/general.long.jsonl)"
scripts/long-rows.py data/general.jsonl data/general.long.jsonl --min-bytes 131072
scripts/long-rows.py data/general.eval.jsonl data/general.eval.long.jsonl
if [ ! -s models/tiny-long-2k/model.safetensors ]; then
  step "stage 1: 2048-token rows (recipes/long-context-tiny.yaml)"
  rm -rf runs/long-context-tiny-2k
  $mt train recipes/long-context-tiny.yaml
fi
step "stage 2: 8192-token rows, from stage 1's model"
rm -rf runs/long-context-tiny-8k
$mt train recipes/long-context-tiny.yaml \
    --set model.path=models/tiny-long-2k --set data.max_seq_len=8192 --set train.micro_batch=1 \
    --set train.steps=50 --set train.warmup_steps=5 --set train.lr=5e-4 --set train.save_every=25 \
    --set output.dir=runs/long-context-tiny-8k --set output.adapter=models/tiny-long
