#!/usr/bin/env bash
# raise-context.sh SRC DST N — a copy of the model folder SRC in DST whose config.json says
# max_position_embeddings N (the weights, tokenizer and every other field unchanged).
# moetune bounds every sequence (training rows, eval rows, the KV cache) by max_position_embeddings,
# the length of its RoPE tables; with rope_type "default" (or "linear") nothing else depends on
# it, so the copy is the same model allowed longer rows: what it does past the length it was
# trained at is then a question for `moetune eval`. YaRN derives its factor from this number and
# is refused. Used by scripts/tiny-long.sh (tiny-base -> tiny-base-8k) and bench/dap-long.sh.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 SRC DST N" >&2; exit 2; }
src=$1 dst=$2 n=$3
[ -s "$src/config.json" ] || { echo "$0: $src has no config.json" >&2; exit 1; }
case $n in '' | *[!0-9]*) echo "$0: N must be a positive integer, not '$n'" >&2; exit 2 ;; esac
rope=$(jq -r '(.rope_parameters // .rope_scaling // {}) | (.rope_type // .type // "default")' "$src/config.json")
case $rope in default | linear) ;; *) echo "$0: rope_type $rope: not raised (its scaling depends on the length)" >&2; exit 1 ;; esac
rm -rf "$dst.tmp"
mkdir -p "$dst.tmp"
# the weights are linked, not copied (11 MB for the tiny base, but GBs for a real one)
for f in "$src"/*; do
  case $(basename "$f") in
    config.json) jq --argjson n "$n" '.max_position_embeddings = $n' "$f" > "$dst.tmp/config.json" ;;
    *.safetensors) ln "$f" "$dst.tmp/" 2>/dev/null || cp "$f" "$dst.tmp/" ;;
    *) cp -r "$f" "$dst.tmp/" ;;
  esac
done
rm -rf "$dst"
mv "$dst.tmp" "$dst"
echo "$dst: $(basename "$src") with max_position_embeddings $n"
