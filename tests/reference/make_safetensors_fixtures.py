#!/usr/bin/env python3
"""make_safetensors_fixtures.py — safetensors files written by the official Python library,
for test_safetensors.c to read back (tests/fixtures/safetensors/), and a checker for the
files moetune writes.

  python_mixed.safetensors   one file: F32 random values with their F16 and BF16 roundings
                             by torch (the reference for moetune's round-to-nearest-even),
                             F64, I64, U8, BOOL, an empty and a scalar tensor, __metadata__
  python_sharded/            huggingface_hub.save_torch_state_dict with a small shard limit:
                             model-0000k-of-0000n.safetensors + model.safetensors.index.json,
                             BF16/F16/F32 tensors whose values are k/8 for k = 0, 1, 2, ...
                             (exact in every dtype) minus a per-tensor offset

Usage:
  make_safetensors_fixtures.py            (re)write the fixtures
  make_safetensors_fixtures.py --check D  load every *.safetensors and every
                                          model.safetensors.index.json under D with the
                                          safetensors library (test_safetensors leaves the
                                          files moetune wrote in <build>/test-tmp/st_export)

Run with /work/venv/bin/python. The test suite reads only the files.
"""
import json
import os
import shutil
import sys

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "safetensors")


def ramp(shape, offset, dtype):
    n = 1
    for d in shape:
        n *= d
    return ((torch.arange(n, dtype=torch.float64) - offset) / 8).reshape(shape).to(dtype)


def make():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(3, 5, generator=g, dtype=torch.float32) * 3
    # values that stress rounding: ties, subnormals, overflow to inf in f16
    x.view(-1)[0] = 1 + 2 ** -8            # bf16 tie, rounds to even (1.0)
    x.view(-1)[1] = 1 + 3 * 2 ** -8        # bf16 tie, rounds up to even
    x.view(-1)[2] = 2 ** -20               # f16 subnormal
    x.view(-1)[3] = 70000.0                # f16 overflow → inf
    x.view(-1)[4] = -(1 + 2 ** -11)        # f16 tie
    tensors = {
        "f32.random": x,
        "f16.of_random": x.to(torch.float16),
        "bf16.of_random": x.to(torch.bfloat16),
        "f64.values": torch.tensor([1 / 3, -2.5, 1e-300, 6.5e4], dtype=torch.float64),
        "i64.ids": torch.tensor([0, -1, 2 ** 40], dtype=torch.int64),
        "u8.bytes": torch.tensor([0, 1, 254, 255], dtype=torch.uint8),
        "bool.flags": torch.tensor([True, False], dtype=torch.bool),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
        "scalar": torch.tensor(7.25, dtype=torch.float32),
    }
    save_file(tensors, os.path.join(OUT, "python_mixed.safetensors"),
              metadata={"format": "pt", "source": "make_safetensors_fixtures.py"})

    sharded = {
        "model.embed_tokens.weight": ramp((16, 8), 3, torch.bfloat16),
        "model.layers.0.mlp.gate.weight": ramp((4, 8), 5, torch.float32),
        "model.layers.0.self_attn.q_proj.weight": ramp((8, 8), 7, torch.float16),
        "model.norm.weight": ramp((8,), 1, torch.bfloat16),
        "lm_head.weight": ramp((16, 8), 11, torch.bfloat16),
    }
    os.makedirs(os.path.join(OUT, "python_sharded"))
    save_torch_state_dict(sharded, os.path.join(OUT, "python_sharded"), max_shard_size=300,
                          metadata={"format": "pt"})
    print("wrote", sorted(os.listdir(OUT)), sorted(os.listdir(os.path.join(OUT, "python_sharded"))),
          file=sys.stderr)


def check(folder):
    n = 0
    for root, _, files in os.walk(folder):
        for f in sorted(files):
            path = os.path.join(root, f)
            if f.endswith(".safetensors"):
                with safe_open(path, framework="pt") as st:
                    names = list(st.keys())
                    meta = st.metadata()
                t = load_file(path)
                print(f"ok {path}: {len(names)} tensors {[(k, str(v.dtype), tuple(v.shape)) for k, v in t.items()][:4]}"
                      f" metadata {meta}")
                n += 1
            elif f == "model.safetensors.index.json":
                index = json.load(open(path))
                assert sorted(index["weight_map"]) == list(index["weight_map"]), "weight_map not sorted"
                total = 0
                for name, shard in index["weight_map"].items():
                    with safe_open(os.path.join(root, shard), framework="pt") as st:
                        t = st.get_tensor(name)
                        total += t.numel() * t.element_size()
                assert total == index["metadata"]["total_size"], (total, index["metadata"])
                print(f"ok {path}: {len(index['weight_map'])} tensors, total_size {total}")
                n += 1
    if n == 0:
        sys.exit(f"nothing to check in {folder}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        make()
