#!/usr/bin/env python3
"""make_detok_fixtures.py — decodes that stress invalid UTF-8, for tests/test_detok.c and the
decode it is compared with: random id sequences drawn mostly from tokens that stand for single
bytes (byte-level tokens of bytes >= 0x80, SentencePiece <0xNN> byte-fallback tokens), mixed with
ordinary, added and special tokens, decoded by the Hugging Face tokenizers library from the
committed tokenizer.json files in tests/fixtures/tokenizers/. Writes <name>/decode_bytes.json.

Usage: /work/venv/bin/python tests/reference/make_detok_fixtures.py
"""
import json
import os
import random

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "fixtures", "tokenizers")
NAMES = ["gpt2", "llama3", "qwen2", "deepseek_v3", "mixtral", "sp_metaspace", "custom_meta", "custom_affix",
         "custom_ws"]

# GPT-2's byte-level alphabet: the characters that stand for bytes 0x80-0xff
def byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main():
    to_byte = byte_chars()
    for seed, name in enumerate(NAMES):
        tok = Tokenizer.from_file(os.path.join(DIR, name, "tokenizer.json"))
        rng = random.Random(1000 + seed)
        vocab = tok.get_vocab(with_added_tokens=True)
        v = tok.get_vocab_size(with_added_tokens=True)
        # tokens that are one byte >= 0x80 (byte-level) or a byte-fallback token
        single = sorted(i for t, i in vocab.items()
                        if (len(t) == 1 and to_byte.get(t, 0) >= 0x80) or (len(t) == 6 and t.startswith("<0x")))
        # multi-byte pieces too: tokens of 2-3 byte-level characters above 0x7f
        multi = sorted(i for t, i in vocab.items()
                       if 2 <= len(t) <= 3 and all(to_byte.get(c, 0) >= 0x80 for c in t))
        added = sorted(t.id if hasattr(t, "id") else i for i, t in tok.get_added_tokens_decoder().items())
        cases = []
        for _ in range(80):
            ids = []
            for _ in range(rng.randint(1, 16)):
                r = rng.random()
                if single and r < 0.5:
                    ids.append(rng.choice(single))
                elif multi and r < 0.65:
                    ids.append(rng.choice(multi))
                elif added and r < 0.75:
                    ids.append(rng.choice(added))
                else:
                    ids.append(rng.randrange(v))
            cases.append({"ids": ids, "hex": tok.decode(ids, skip_special_tokens=False).encode().hex(),
                          "hex_skip": tok.decode(ids, skip_special_tokens=True).encode().hex()})
        with open(os.path.join(DIR, name, "decode_bytes.json"), "w") as f:
            json.dump({"tokenizer": name, "decode": cases}, f, indent=0)
            f.write("\n")
        print(name, len(single), "single-byte tokens,", len(multi), "multi-byte,", len(added), "added")


if __name__ == "__main__":
    main()
