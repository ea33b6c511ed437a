#!/usr/bin/env python3
"""check_config_export.py — confirms that the config.json files moetune writes
(mt_config_to_json) describe, for transformers 5.23, the model moetune thinks they do.

test_config leaves the config.json it writes for each preset (test-tmp/config_export/)
and for each tiny fixture (test-tmp/config_export_fixtures/), with moetune's counts
(total parameters, active parameters, forward FLOPs per token at T=12) beside them.
This script loads every one with AutoConfig, builds it with
AutoModelForCausalLM.from_config, and compares the counts with the built model's
(the same measures make_config_fixtures.py uses). Exit status 1 on any mismatch.

With --write-fixtures it also saves each config again through transformers
(save_pretrained: rope_parameters, dtype, transformers' own key order) into
tests/fixtures/configs/roundtrip/, which test_config loads and compares with the presets:
the round trip moetune → transformers → moetune, checked without Python at test time.

    /work/venv/bin/python tests/reference/check_config_export.py build/test-tmp/config_export \
        build/test-tmp/config_export_fixtures [--write-fixtures]
"""
import glob
import os
import shutil
import sys
import tempfile

from transformers import AutoConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_config_fixtures import flops_per_token, model_facts  # noqa: E402


ROUNDTRIP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "configs", "roundtrip")


def main(folders, write_fixtures):
    files = sorted(f for folder in folders for f in glob.glob(os.path.join(folder, "*.json")))
    if not files:
        sys.exit(f"no config.json files in {folders}: run test_config first")
    bad = 0
    for path in files:
        total, active, flops = open(path[:-5] + ".facts").read().split()
        cfg = AutoConfig.from_pretrained(path)
        _, t, a, _ = model_facts(cfg, meta=False)
        f = flops_per_token(cfg)
        ok = (t, a) == (int(total), int(active)) and abs(f - float(flops)) <= 1e-9 * f
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {os.path.basename(path)}: {type(cfg).__name__} "
              f"params {t} (moetune {total}), active {a} (moetune {active}), FLOPs/token {f:.0f} (moetune {float(flops):.0f})")
        if write_fixtures and ok:
            os.makedirs(ROUNDTRIP, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                cfg.save_pretrained(tmp)
                shutil.copyfile(os.path.join(tmp, "config.json"), os.path.join(ROUNDTRIP, os.path.basename(path)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--write-fixtures"]
    main(args or ["build/test-tmp/config_export", "build/test-tmp/config_export_fixtures"],
         "--write-fixtures" in sys.argv[1:])
