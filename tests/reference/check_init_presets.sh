#!/usr/bin/env bash
# check_init_presets.sh — every model `moetune init` makes (each family × preset × on-disk
# dtype) loads in Hugging Face transformers with no missing, unexpected or mismatched tensor,
# and its forward is finite: make_model_fixtures.py --check-init on each. A developer check
# (needs the reference venv), not part of the C suite; docs/crash-safety.md records the run.
# Usage: tests/reference/check_init_presets.sh [MOETUNE_BIN] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
mt=${1:-build/moetune}
py=${2:-/work/venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for family in deepseek_v3 deepseek_v2 qwen3_moe qwen2_moe mixtral olmoe; do
  for preset in tiny small; do
    for dtype in f32 bf16; do
      dir=$tmp/$family-$preset-$dtype
      "$mt" init --preset "$preset" --family "$family" --dtype "$dtype" --seed 1 "$dir" >/dev/null
      "$py" tests/reference/make_model_fixtures.py --check-init "$dir" >/dev/null
      "$py" - "$dir" <<'PY'
import sys
from safetensors.torch import load_file
t = load_file(sys.argv[1] + "/reference.safetensors")["logits"]
assert t.isfinite().all(), "non-finite logits"
PY
      echo "ok  $family $preset $dtype"
      n=$((n + 1))
    done
  done
done
echo "$n models made by moetune init load in transformers"
