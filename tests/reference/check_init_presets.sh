#!/usr/bin/env bash
# check_init_presets.sh — every model `moetune init` makes (each family × preset × on-disk
# dtype) loads in Hugging Face transformers with no missing, unexpected or mismatched tensor,
# and its forward is finite: make_model_fixtures.py --check-init on each; the published
# presets, config only (below). A developer check
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

# The published presets (olmoe-1b-7b, deepseek-v2-lite) are 14-31 GB: config only. The
# config.json `moetune init` writes for them (left in the build tree by tests/test_presets)
# must build in transformers on the meta device (no memory for weights) with the parameter
# counts moetune prints, and carry the published config.json's values
# (tests/fixtures/configs/published).
tmpdir=$(dirname "$mt")/test-tmp/presets_json
"$(dirname "$mt")/tests/test_presets" >/dev/null
for preset in olmoe-1b-7b deepseek-v2-lite; do
  "$py" - "$tmpdir/$preset" "tests/fixtures/configs/published/$preset.json" <<'PY'
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
d, published = sys.argv[1], json.load(open(sys.argv[2]))
cfg = AutoConfig.from_pretrained(d)
ref = AutoConfig.for_model(**published)
skip = {"bos_token_id", "eos_token_id", "pad_token_id", "transformers_version", "torch_dtype", "dtype",
        "architectures", "_name_or_path", "use_cache", "output_router_logits", "pretraining_tp", "rope_scaling"}
def norm(c):  # rope parameters: the legacy "type" spelling and ints for floats are one value
    d = c.to_dict()
    rp = d.get("rope_parameters")
    if isinstance(rp, dict):
        d["rope_parameters"] = {k: float(v) if isinstance(v, (int, float)) else v for k, v in rp.items() if k != "type"}
    return d
mine, theirs = norm(cfg), norm(ref)
diff = {k: (mine.get(k), v) for k, v in theirs.items() if k not in skip and mine.get(k) != v}
assert not diff, f"{d}: differs from the published config.json: {diff}"
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(cfg)
total = sum(p.numel() for p in model.parameters())
mt_total, mt_active = map(int, open(d + "/moetune_counts.txt").read().split())
E = getattr(cfg, "n_routed_experts", None) or cfg.num_experts
K, H = cfg.num_experts_per_tok, cfg.hidden_size
I = cfg.moe_intermediate_size if hasattr(cfg, "n_routed_experts") else cfg.intermediate_size
moe_layers = cfg.num_hidden_layers - getattr(cfg, "first_k_dense_replace", 0)
active = total - moe_layers * (E - K) * 3 * H * I
assert (total, active) == (mt_total, mt_active), f"{d}: transformers {total} / {active}, moetune {mt_total} / {mt_active}"
print(f"ok  {cfg.model_type}: {total / 1e9:.2f} B parameters, {active / 1e9:.2f} B active (meta device)")
PY
done
