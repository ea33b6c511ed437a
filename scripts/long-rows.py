#!/usr/bin/env python3
"""long-rows.py — joins consecutive documents of a {"text"} JSONL file into long documents.

Usage: scripts/long-rows.py IN.jsonl OUT.jsonl [--min-bytes N]

`moetune eval` never packs: it cuts each document into rows of --max-seq-len tokens, positions
from 0, so a corpus of short documents (GCIDE entries, license files) never gives a row of 4k or
8k tokens. The trainer's packing does not help either: a packed row is masked per document and
its positions restart at each document (finetune/data.c, mt_rows_build). This script makes the
long documents both need: the texts of consecutive documents, in file order, joined with a blank
line into one text of at least N bytes of UTF-8 (the last group may be shorter: it is appended
to the one before). Without --min-bytes every document goes into one text. Output: one
{"text", "source": "joined", "id": "<first id>..<last id>"} per line, deterministic (no shuffle).
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--min-bytes", type=int, default=0, help="bytes per joined text (0 = everything in one)")
    a = ap.parse_args()
    groups, cur, size = [], [], 0
    with open(a.inp, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            cur.append(d)
            size += len(d["text"].encode("utf-8")) + 2
            if a.min_bytes > 0 and size >= a.min_bytes:
                groups.append(cur)
                cur, size = [], 0
    if cur:
        if groups and a.min_bytes > 0:
            groups[-1].extend(cur)
        else:
            groups.append(cur)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for g in groups:
            ids = [str(d.get("id", i)) for i, d in enumerate(g)]
            row = {"text": "\n\n".join(d["text"] for d in g), "source": "joined", "id": f"{ids[0]}..{ids[-1]}"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    import os
    os.replace(tmp, a.out)
    n = sum(len(g) for g in groups)
    print(f"{a.out}: {len(groups)} texts from {n} documents", file=sys.stderr)


if __name__ == "__main__":
    main()
