#!/usr/bin/env python3
"""make_seeds.py — writes the fuzzers' seed corpora under fuzz/corpus/<target>/ from the
committed test fixtures, so that fuzzing starts from inputs that reach deep into each parser:

  fuzz_safetensors  tests/fixtures/safetensors/**, and small files written here with
                    safetensors itself (every dtype, 0-d, empty, metadata)
  fuzz_config       every config.json under tests/fixtures/configs and tests/fixtures/models
  fuzz_tokenizer    each fixture tokenizer.json cut down to a 300-token vocabulary (mode byte
                    0x00 / 0x02 in front), and fixture texts behind odd mode bytes
  fuzz_chat         the chat templates of tests/fixtures/chat and its snippets

File names are the sha1 of the content, as libFuzzer names its own finds. The script is for
regenerating the corpus; the test suite only reads the committed files.

Usage: /work/venv/bin/python fuzz/make_seeds.py
"""
import glob
import hashlib
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def write(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def safetensors_seeds():
    import numpy as np
    from safetensors.numpy import save

    for p in sorted(glob.glob(os.path.join(FIX, "safetensors", "**", "*.safetensors"), recursive=True)):
        write("fuzz_safetensors", read(p))
    rng = np.random.default_rng(7)
    small = {
        "f32": rng.standard_normal((2, 3)).astype(np.float32),
        "f16": rng.standard_normal((3,)).astype(np.float16),
        "f64": rng.standard_normal((1, 2, 1)).astype(np.float64),
        "i64": np.arange(4, dtype=np.int64),
        "i32": np.arange(3, dtype=np.int32).reshape(3, 1),
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    write("fuzz_safetensors", save(small, metadata={"format": "pt", "note": "seed"}))
    for name, arr in small.items():
        write("fuzz_safetensors", save({name: arr}))
    write("fuzz_safetensors", save({}))
    try:  # bf16 needs torch
        import torch
        from safetensors.torch import save as tsave

        write("fuzz_safetensors", tsave({"bf16": torch.tensor([1.0, -2.5, 3e38], dtype=torch.bfloat16)}))
    except ImportError:
        pass


def config_seeds():
    paths = sorted(glob.glob(os.path.join(FIX, "configs", "**", "*.json"), recursive=True))
    paths += sorted(glob.glob(os.path.join(FIX, "models", "*", "config.json")))
    for p in paths:
        write("fuzz_config", read(p))


def shrink_tokenizer(tok, keep):
    """The tokenizer with only vocabulary ids < keep, the merges among them, and the added
    tokens above them renumbered to follow (the post-processor's ids moved with them)."""
    model = tok["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < keep}
    remap = {}
    for a in sorted(tok.get("added_tokens", []), key=lambda a: a["id"]):
        if a["id"] >= keep:
            remap[a["id"]] = keep + len(remap)
            a["id"] = remap[a["id"]]
    prefix = model.get("continuing_subword_prefix") or ""
    merges = []
    for m in model.get("merges", []):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        joined = a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
        if a in vocab and b in vocab and joined in vocab:
            merges.append(m)
    model["vocab"], model["merges"] = vocab, merges

    def move_ids(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "ids" and isinstance(v, list):
                    node[k] = [remap.get(i, i) for i in v]
                elif k in ("sep", "cls") and isinstance(v, list) and len(v) == 2:
                    node[k] = [v[0], remap.get(v[1], v[1])]
                else:
                    move_ids(v)
        elif isinstance(node, list):
            for v in node:
                move_ids(v)

    move_ids(tok.get("post_processor"))
    return tok


def tokenizer_seeds():
    from tokenizers import Tokenizer

    for p in sorted(glob.glob(os.path.join(FIX, "tokenizers", "*", "tokenizer.json"))):
        tok = shrink_tokenizer(json.loads(read(p)), 300)
        text = json.dumps(tok, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            Tokenizer.from_str(text.decode())
        except Exception as e:  # a seed the reference refuses still has value, but say so
            print(f"  {p}: cut-down tokenizer refused by tokenizers ({e})", file=sys.stderr)
        write("fuzz_tokenizer", b"\x00" + text)
        write("fuzz_tokenizer", b"\x02" + text)
    cases = json.loads(read(os.path.join(FIX, "tokenizers", "llama3", "cases.json")))
    texts = [c["text"] for c in cases["encode"]][:40]
    for k, t in enumerate(texts):
        mode = 1 + 2 * (k % 3) + 8 * (k % 2)  # odd: fixture (mode>>1)%3, special bit 3
        write("fuzz_tokenizer", bytes([mode]) + t.encode())


def chat_seeds():
    for p in sorted(glob.glob(os.path.join(FIX, "chat", "templates", "*.jinja"))):
        write("fuzz_chat", read(p))
    for c in json.loads(read(os.path.join(FIX, "chat", "snippets.json"))):
        write("fuzz_chat", c["template"].encode())


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    safetensors_seeds()
    config_seeds()
    tokenizer_seeds()
    chat_seeds()
    for t in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, t))
        size = sum(os.path.getsize(os.path.join(OUT, t, f)) for f in files)
        print(f"{t}: {len(files)} seeds, {size // 1024} KiB")


if __name__ == "__main__":
    main()
