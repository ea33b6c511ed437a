#!/usr/bin/env bash
# tiny-base.sh — the tiny deepseek_v3-family base the demos adapt (models/tiny-base), made once
# and kept: a BPE tokenizer learnt from the general corpus of this machine, a random model, and
# every weight pretrained on that corpus (recipes/pretrain-tiny.yaml). Called by quickstart.sh
# and preference.sh after the build; `rm -rf models/tiny-base` to make it again.
set -euo pipefail
cd "$(dirname "$0")/.."
mt=build/moetune
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
mkdir -p data models runs
[ -s data/general.jsonl ] || $mt data general data/general.jsonl --max-bytes 3M
if [ -s models/tiny-base/model.safetensors ]; then
  step "tiny base: models/tiny-base exists (delete it to pretrain again)"
  exit 0
fi
step "BPE tokenizer (4096 tokens) learnt from the general corpus"
$mt tokenizer train --out models/tokenizer --vocab-size 4096 --pretok deepseek_v3 \
    --bos '<|bos|>' --eos '<|eos|>' data/general.jsonl
step "random tiny deepseek_v3 model (MLA, 8 routed experts + 1 shared, noaux_tc routing)"
rm -rf models/tiny-init runs/pretrain-tiny
$mt init --preset tiny --family deepseek_v3 --tokenizer models/tokenizer models/tiny-init
step "pretraining every weight on the general corpus (recipes/pretrain-tiny.yaml)"
$mt train recipes/pretrain-tiny.yaml
