#!/usr/bin/env bash
# dap-long.sh — held-out perplexity and decode speed of MODEL at 1k, 2k, 4k and 8k tokens of
# context, one markdown table row per length (docs/attention-pruning.md, "The long-context base").
#
#   MODEL=models/tiny-long bench/dap-long.sh                  # full attention
#   MODEL=models/tiny-long TAU=0.1 bench/dap-long.sh          # DAP: --dap-threshold 0.1
#   EVAL_FLAGS="--expert-threshold 0.9" GEN_FLAGS="..." bench/dap-long.sh
#
# Perplexity: `moetune eval` on the legal and medical eval splits (`moetune data legal|medical`),
# each joined into one long text (scripts/long-rows.py: eval cuts documents into rows and never
# packs, and those documents are short), so every row but the last is exactly the length.
# Decode: `moetune generate`, greedy, --no-eos, NEW (128) new tokens after a prompt of
# L - NEW - 8 tokens of the legal eval text (so prompt + output fits in L, and in 8192 at 8k).
# TAU goes to generate's --dap-threshold, and to eval's when `moetune eval --help` lists it.
# Environment: MODEL (default models/tiny-long), TAU (default unset: off), THREADS (1),
# LENGTHS ("1024 2048 4096 8192"), NEW (128), EVAL_FLAGS, GEN_FLAGS, MT (build/moetune).
set -euo pipefail
cd "$(dirname "$0")/.."
MT=${MT:-build/moetune}
MODEL=${MODEL:-models/tiny-long}
THREADS=${THREADS:-1}
LENGTHS=${LENGTHS:-"1024 2048 4096 8192"}
NEW=${NEW:-128}
EVAL_FLAGS=${EVAL_FLAGS:-}
GEN_FLAGS=${GEN_FLAGS:-}
TAU=${TAU:-}
[ -s "$MODEL/config.json" ] || { echo "dap-long: $MODEL has no config.json" >&2; exit 1; }
maxpos=$(jq -r .max_position_embeddings "$MODEL/config.json")

mkdir -p data
for dom in legal medical; do
  [ -s data/$dom.eval.jsonl ] || $MT data $dom data/$dom.jsonl >/dev/null
  [ -s data/$dom.eval.long.jsonl ] || scripts/long-rows.py data/$dom.eval.jsonl data/$dom.eval.long.jsonl
done

eval_tau=() gen_tau=()
if [ -n "$TAU" ]; then
  gen_tau=(--dap-threshold "$TAU")
  if $MT eval --help 2>&1 | grep -q -- --dap-threshold; then
    eval_tau=(--dap-threshold "$TAU")
  else
    echo "dap-long: this moetune eval has no --dap-threshold: perplexities are full attention" >&2
  fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
jq -r .text data/legal.eval.long.jsonl | $MT tokenizer encode --tokenizer "$MODEL" --no-special > "$tmp/ids"

ppl() { # DOMAIN LEN -> "perplexity seconds"
  local t0 t1 out
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  out=$($MT eval --model "$MODEL" --data data/$1.eval.long.jsonl --max-seq-len "$2" --batch 1 \
        --threads "$THREADS" "${eval_tau[@]}" $EVAL_FLAGS 2>&1) || { echo "dap-long: eval failed: $out" >&2; exit 1; }
  t1=$(date +%s.%N)
  grep '^DAP' <<<"$out" | sed "s/^/eval $1 $2: /" >&2 || true
  printf '%s %.0f\n' "$(awk '$1 == "base" { print $3 }' <<<"$out")" "$(echo "$t1 - $t0" | bc)"
}

echo "| model | context | τ | legal ppl | medical ppl | eval s (legal+medical) | prompt tokens | prefill tok/s | decode tok/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for L in $LENGTHS; do
  if [ "$L" -gt "$maxpos" ]; then
    echo "| $(basename "$MODEL") | $L | ${TAU:-off} | (max_position_embeddings $maxpos) | | | | | |"
    continue
  fi
  read -r pl sl <<<"$(ppl legal "$L")"
  read -r pm sm <<<"$(ppl medical "$L")"
  n=$((L - NEW - 8))
  awk -v n="$n" '{ for (i = 1; i <= n && i <= NF; i++) printf "%s ", $i }' "$tmp/ids" | $MT tokenizer decode --tokenizer "$MODEL" > "$tmp/prompt.txt"
  jq -Rs '{prompt: .}' "$tmp/prompt.txt" | jq -c . > "$tmp/prompt.jsonl"
  # shellcheck disable=SC2086
  $MT generate --model "$MODEL" --prompts "$tmp/prompt.jsonl" --max-tokens "$NEW" --temperature 0 --no-eos \
      --threads "$THREADS" "${gen_tau[@]}" $GEN_FLAGS > "$tmp/gen.out" 2> "$tmp/gen.err" \
      || { echo "dap-long: generate failed:" >&2; cat "$tmp/gen.err" >&2; exit 1; }
  speeds=$(sed -n 's/^prompt: \([0-9]*\) tokens, \([0-9.]*\) tokens\/s; decode: [0-9]* tokens in [0-9]* outputs, \([0-9.]*\) tokens\/s.*/\1 \2 \3/p' "$tmp/gen.err")
  read -r ptok pps dps <<<"${speeds:-? ? ?}"
  grep '^dap:' "$tmp/gen.err" >&2 || true
  echo "| $(basename "$MODEL") | $L | ${TAU:-off} | $pl | $pm | $((sl + sm)) | $ptok | $pps | $dps |"
done
