#!/usr/bin/env bash
# quickstart.sh — README command 1: installs what is missing, builds, and runs moetune's main
# job on this machine's own text: pretrain a tiny deepseek_v3-family base with its own BPE
# tokenizer (cached in models/ for later runs), LoRA-adapt it to legal text, compare held-out
# perplexity of the base and the adapted model, and generate with and without the adapter.
set -euo pipefail
cd "$(dirname "$0")"
start=$SECONDS
MOETUNE_TARGET=moetune scripts/setup.sh build
mt=build/moetune
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p data models runs adapters
step "1. corpora from this machine (docs/data.md)"
[ -s data/general.jsonl ] || $mt data general data/general.jsonl --max-bytes 3M
[ -s data/legal.jsonl ] || $mt data legal data/legal.jsonl
wc -l data/general.jsonl data/legal.jsonl data/legal.eval.jsonl

step "2. the tiny base: BPE tokenizer, random model, pretraining (scripts/tiny-base.sh)"
scripts/tiny-base.sh

step "3. LoRA on the legal corpus (recipes/legal-lora.yaml)"
rm -rf runs/legal-lora adapters/legal-lora
$mt train recipes/legal-lora.yaml

step "4. held-out legal perplexity, base vs adapted (same tokens)"
$mt eval --model models/tiny-base --adapter adapters/legal-lora --data data/legal.eval.jsonl

prompt="Permission is hereby granted"
sampling=(--temperature 0.7 --top-k 40 --seed 1 --max-tokens 60)
step "5. generation (temperature 0.7, top-k 40, seed 1): \"$prompt\""
echo "-- base:"
$mt generate --model models/tiny-base --prompt "$prompt" "${sampling[@]}" 2>/dev/null
echo "-- base + adapters/legal-lora:"
$mt generate --model models/tiny-base --adapter adapters/legal-lora --prompt "$prompt" "${sampling[@]}" 2>/dev/null

step "done in $((SECONDS - start)) s"
echo "runs are recorded in runs/moetune.db:  $mt runs --store runs/moetune.db list"
echo "the adapter (Hugging Face PEFT format): adapters/legal-lora/"
