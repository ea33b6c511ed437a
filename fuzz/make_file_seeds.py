"""Seeds for fuzz_recipe, fuzz_data and fuzz_adapter (fuzz/corpus/<target>/), from the
committed recipes and fixtures plus hand-made bad files of each kind the issue names (broken
UTF-8, huge lines, wrong types, empty files; adapters with wrong shapes, missing keys, rank 0,
NaN weights, another base's names). Plain Python, no packages: python3 fuzz/make_file_seeds.py
"""
import glob
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
FIX = os.path.join(ROOT, "tests", "fixtures")


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- recipes ----
for p in sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")) + glob.glob(os.path.join(FIX, "recipes", "*.yaml"))):
    put("fuzz_recipe", os.path.basename(os.path.dirname(p)) + "-" + os.path.basename(p), open(p, "rb").read())
minimal = open(os.path.join(FIX, "recipes", "minimal.yaml"), "rb").read()
for name, data in {
    "empty": b"",
    "not-a-mapping": b"- a\n- b\n",
    "bad-utf8": minimal + b"name: \xff\xfe\n",
    "wrong-types": b"name: [1, 2]\nmethod: 3\ntrain:\n  lr: fast\n  steps: -1\n  seed: 1.5\n",
    "tabs": b"name: x\n\tmethod: sft\n",
    "anchors": b"a: &x {b: *x}\n",
    "huge-line": b"name: " + b"x" * 100000 + b"\n",
    "deep": b"a: " + b"[" * 500 + b"]" * 500 + b"\n",
    "nul": b"name: a\x00b\n",
    "duplicate": b"name: a\nname: b\n",
}.items():
    put("fuzz_recipe", name, data)

# ---- data: first byte = format (0 auto, 1 text, 2 prompt_completion, 3 messages, 4 plain), +5 masks prompts ----
lines = {
    "text": b'{"text": "the licensee shall not distribute"}\n{"text": "copyright holder"}\n',
    "pc": b'{"prompt": "Q: what?", "completion": " A: that."}\n',
    "messages": b'{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},'
                b' {"role": "assistant", "content": "hello"}]}\n',
    "plain": b"A plain document.\n\nWith two paragraphs.\n",
}
for i, (name, body) in enumerate(lines.items()):
    for mode in range(10):
        put("fuzz_data", f"{name}-{mode}", bytes([mode]) + body)
for name, body in {
    "empty": b"",
    "blank-lines": b"\n\n   \n",
    "bad-utf8": b'{"text": "caf\xc3"}\n',
    "bad-utf8-escape": b'{"text": "\\ud800"}\n',
    "wrong-type": b'{"text": 42}\n',
    "wrong-type-pc": b'{"prompt": ["a"], "completion": null}\n',
    "not-object": b'[1,2,3]\n"text"\n',
    "truncated": b'{"text": "abc',
    "mixed": b'{"text": "a"}\n{"prompt": "b", "completion": "c"}\n',
    "messages-bad-role": b'{"messages": [{"role": "wizard", "content": "x"}]}\n',
    "messages-no-content": b'{"messages": [{"role": "user"}]}\n',
    "crlf": b'{"text": "a"}\r\n{"text": "b"}\r\n',
    "nul": b'{"text": "a\\u0000b"}\n',
}.items():
    for mode in (0, 1, 3):
        put("fuzz_data", f"{name}-{mode}", bytes([mode]) + body)

put("fuzz_data", "huge-line-1", b"\x01" + b'{"text": "' + b"word " * 20000 + b'"}\n')

# ---- adapters: first byte odd = adapter_config.json, even = adapter_model.safetensors ----
exp = os.path.join(FIX, "peft", "export")
cfg = json.load(open(os.path.join(exp, "deepseek_v3", "adapter_config.json")))
put("fuzz_adapter", "config", b"\x01" + json.dumps(cfg).encode())
for name, change in {
    "rank0": {"r": 0},
    "rank-negative": {"r": -4},
    "rank-string": {"r": "four"},
    "alpha-nan": {"lora_alpha": "NaN"},
    "no-targets": {"target_modules": []},
    "unknown-target": {"target_modules": ["nonexistent_proj"]},
    "targets-regex": {"target_modules": ".*proj"},
    "dora": {"use_dora": True},
    "not-lora": {"peft_type": "PREFIX_TUNING"},
    "rank-pattern-bad": {"rank_pattern": {"q_b_proj": "x"}},
    "bias-all": {"bias": "all"},
    "fan-in-fan-out": {"fan_in_fan_out": True},
}.items():
    c = dict(cfg)
    c.update(change)
    put("fuzz_adapter", "config-" + name, b"\x01" + json.dumps(c).encode())
for name in ("r", "target_modules", "peft_type", "lora_alpha"):
    c = dict(cfg)
    del c[name]
    put("fuzz_adapter", "config-missing-" + name, b"\x01" + json.dumps(c).encode())
put("fuzz_adapter", "config-empty", b"\x01")
put("fuzz_adapter", "config-not-object", b"\x01[1]")
st = open(os.path.join(exp, "deepseek_v3", "adapter_model.safetensors"), "rb").read()
put("fuzz_adapter", "weights", b"\x00" + st)
for fam in ("mixtral", "qwen2_moe", "qwen3_moe"):  # another base's adapter
    put("fuzz_adapter", "weights-" + fam, b"\x00" + open(os.path.join(exp, fam, "adapter_model.safetensors"), "rb").read())


def st_edit(edit):
    n = struct.unpack("<Q", st[:8])[0]
    header = json.loads(st[8:8 + n])
    data = bytearray(st[8 + n:])
    edit(header, data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return b"\x00" + struct.pack("<Q", len(h)) + h + bytes(data)


names = sorted(k for k in json.loads(st[8:8 + struct.unpack("<Q", st[:8])[0]]) if k != "__metadata__")


def drop_one(h, d):
    del h[names[0]]


def wrong_shape(h, d):
    s = h[names[0]]["shape"]
    h[names[0]]["shape"] = [s[1], s[0]] if s[0] != s[1] else [s[0] + 1, s[1]]


def nan(h, d):
    off = h[names[0]]["data_offsets"][0]
    d[off:off + 4] = struct.pack("<f", float("nan"))


def inf(h, d):
    off = h[names[-1]]["data_offsets"][0]
    d[off:off + 4] = struct.pack("<f", float("inf"))


def rename(h, d):
    h["base_model.model.model.layers.99.self_attn.o_proj.lora_A.weight"] = h.pop(names[0])


def f16(h, d):
    h[names[0]]["dtype"] = "F16"


def meta(h, d):
    h["__metadata__"] = {"format": "pt", "moetune.base_hash": "0" * 64, "moetune.thresholds": "{not json"}


for name, fn in {"missing-key": drop_one, "wrong-shape": wrong_shape, "nan": nan, "inf": inf,
                 "unknown-module": rename, "dtype": f16, "bad-metadata": meta}.items():
    put("fuzz_adapter", "weights-" + name, st_edit(fn))
put("fuzz_adapter", "weights-truncated", b"\x00" + st[: len(st) // 2])
put("fuzz_adapter", "weights-empty", b"\x00")
print("seeds written")
