#!/usr/bin/env python3
"""peft_compare.py — the same LoRA training in transformers+PEFT and in moetune, side by side.

Same model folder, same data (tokenized with the model's tokenizer.json, packed into rows of
--seq tokens), same micro-batch, sequence length, rank, alpha, target modules, optimizer
(AdamW) and CPU thread count. Each side runs in its own process (so its peak RSS is its own),
takes --steps timed optimizer steps after one warm-up step, and reports the median step's
tokens/s and the process's peak resident memory. Rounds alternate the two sides, and the
figures printed are medians over rounds.

Needs torch, transformers, peft and tokenizers (not needed by moetune or its tests):
    /path/to/venv/bin/python bench/peft_compare.py --model models/tiny-base \
        --data data/legal.jsonl --moetune build/moetune

Routed experts: transformers 5 stores a MoE layer's experts as fused 3-D parameters that PEFT
reaches only through `target_parameters`, and PEFT 0.21 maps MLP projection names of MoE models
onto those fused parameters (dropping shared-expert and dense-MLP LoRA, refusing dropout), so
the side by side adapts what both hold as the same linear layers: the attention projections
(MLA's included). The trainable parameter counts printed must agree (docs/adapters.md).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = r".*\.self_attn\.(q_a_proj|q_b_proj|q_proj|k_proj|v_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"


def peft_side(args):
    """Runs in a child process: prints one JSON line with the figures."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    ids = []
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                ids.extend(tok.encode(json.loads(line)["text"]).ids)
    B, T = args.batch, args.seq
    need = (args.steps + 1) * B * (T + 1)
    while len(ids) < need:
        ids = ids + ids
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    cfg = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=TARGETS,
                     task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    times = []
    off = 0
    for step in range(args.steps + 1):
        x = torch.tensor([ids[off + b * (T + 1): off + b * (T + 1) + T + 1] for b in range(B)])
        off += B * (T + 1)
        t0 = time.perf_counter()
        out = model(input_ids=x[:, :-1], labels=x[:, :-1])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step > 0:
            times.append(dt)
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"tokens_per_sec": B * T / med, "step_ms": med * 1e3, "peak_rss_mb": rss,
                      "trainable": trainable}))


def moetune_side(args, workdir):
    recipe = os.path.join(workdir, "bench.yaml")
    with open(recipe, "w") as f:
        f.write(f"""name: peft-compare
model:
  path: {os.path.abspath(args.model)}
adapter:
  type: lora
  r: {args.r}
  alpha: {args.alpha}
  dropout: {args.dropout}
  targets: ["re:{TARGETS.replace(chr(92), chr(92) * 2)}"]
data:
  train: {os.path.abspath(args.data)}
  format: text
  max_seq_len: {args.seq}
  packing: true
train:
  steps: 1000
  micro_batch: {args.batch}
  grad_accum: 1
  lr: 1e-4
  weight_decay: 0
  threads: {args.threads}
output:
  dir: {workdir}/run
""")
    out = subprocess.run([args.moetune, "bench", "train", "--recipe", recipe, "--steps", str(args.steps)],
                         check=True, capture_output=True, text=True).stdout
    figures = {}
    for line in out.splitlines():
        key, _, val = line.partition(":")
        val = val.split()
        if key == "tokens/s":
            figures["tokens_per_sec"] = float(val[0])
        elif key == "peak RSS":
            figures["peak_rss_mb"] = float(val[0])
        elif key == "step":
            figures["step_ms"] = float(val[0])
        elif key == "trainable":
            figures["trainable"] = int(val[0])
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="JSONL with a \"text\" field per line")
    ap.add_argument("--moetune", default="build/moetune")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peft-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peft_child:
        peft_side(args)
        return
    runs = {"transformers+peft": [], "moetune": []}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            child = subprocess.run([sys.executable, __file__, "--peft-child"] + sys.argv[1:], check=True,
                                   capture_output=True, text=True).stdout
            runs["transformers+peft"].append(json.loads(child.strip().splitlines()[-1]))
            runs["moetune"].append(moetune_side(args, workdir))
    print(f"model {args.model}, micro-batch {args.batch} x {args.seq} tokens, LoRA r={args.r} on {TARGETS}, "
          f"{args.threads} threads, median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'':20s} {'tokens/s':>10s} {'ms/step':>10s} {'peak RSS MB':>12s} {'trainable':>10s}")
    med = {}
    for name, rs in runs.items():
        med[name] = {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_sec", "step_ms", "peak_rss_mb")}
        print(f"{name:20s} {med[name]['tokens_per_sec']:10.0f} {med[name]['step_ms']:10.1f} "
              f"{med[name]['peak_rss_mb']:12.0f} {rs[0]['trainable']:10d}")
    a, b = med["moetune"], med["transformers+peft"]
    print(f"moetune / transformers+peft: {a['tokens_per_sec'] / b['tokens_per_sec']:.2f}x tokens/s, "
          f"{a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x peak memory")


if __name__ == "__main__":
    main()
