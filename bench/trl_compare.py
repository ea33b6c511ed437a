#!/usr/bin/env python3
"""trl_compare.py — moetune's DPO and GRPO against TRL's DPOTrainer and GRPOTrainer, side by side.

Same CPU, same model folder, same pairs (or prompts), same micro-batch, sequence length, LoRA
rank, alpha and target modules (dropout 0), same learning rate, optimizer (AdamW, no weight
decay) and CPU thread count (torch.set_num_threads and OMP_NUM_THREADS for TRL, train.threads
for moetune). Each side runs in its own process (so its peak RSS is its own), takes --steps
timed optimizer steps after one warm-up step, and reports its median step; rounds alternate
the sides, and the figures printed are medians over rounds.

DPO (pairs/s = pairs per step / step seconds): TRL's DPOTrainer with its defaults — the
reference (the base with the adapter switched off, as both sides use it) recomputed at every
step — against moetune's dpo with reference.cache false (the same: reference passes every
step) and with reference.cache true (the reference log-probs computed once per pair before the
first step; that precompute is setup, outside the timed steps, on both sides). With
--trl-precompute, TRL with precompute_ref_log_probs=True is timed too, its precompute likewise
outside the timed steps. Truncation is the same: prompt + completion cut to --seq tokens,
the completion's end cut (TRL's max_length, keep_start; moetune's data.max_seq_len with no
max_prompt_len). One difference in moetune's disfavour: moetune's rows are --seq tokens long,
TRL pads a batch to its longest row (the mean is printed).

GRPO: --grpo-prompts prompts per step, --generations completions each, at most --max-new
tokens sampled at temperature 1 (no top-k/top-p), one rule reward on both sides (1 when the
completion has at most 40 characters, else 0: moetune's reward.rules ["length:0-40"], a Python
function for TRL), beta 0 (no reference pass), loss dapo, one optimizer step per rollout
(num_iterations 1, gradient accumulation 1). A step is the rollout plus the update. Counted:
ms/step, and completion tokens/s = sampled completion tokens of the step / step seconds
(prompt tokens not counted). moetune's `bench train` does not report completion lengths, so
its side also runs `moetune train` on the same recipe (same seed: the same rollouts) into a
scratch store, untimed, and reads completions/mean_length per step from it; TRL's come from
its own completions/mean_length metric.

LoRA targets: the attention projections, MLA's included (see bench/peft_compare.py: PEFT
reaches transformers 5's fused routed experts only through target_parameters). The trainable
parameter counts printed must agree.

Needs torch, transformers, peft, trl and datasets (not needed by moetune or its tests):
    /path/to/venv/bin/python bench/trl_compare.py --moetune build/moetune
Without --model it writes a model with `moetune init --preset P --seed 3 --tokenizer
tests/fixtures/tokenizers/deepseek_v3`; without --pairs it writes `moetune data medical-pairs`.
"""

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = r".*\.self_attn\.(q_a_proj|q_b_proj|q_proj|k_proj|v_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
LENGTH_MAX = 40  # the GRPO rule reward: completions of at most this many characters score 1


def read_jsonl(path, n):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
                if len(out) == n:
                    break
    return out


# ---- the TRL side: one child process per run ----

def trl_common(args):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
                      task_type="CAUSAL_LM")

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    common = dict(output_dir=os.path.join(args.workdir, "trl"), max_steps=args.steps + 1,
                  gradient_accumulation_steps=1, learning_rate=args.lr, weight_decay=0.0,
                  lr_scheduler_type="constant", report_to="none", logging_steps=10 ** 6, save_strategy="no",
                  use_cpu=True, dataloader_num_workers=0, seed=0, bf16=False, fp16=False)
    return tok, model, lora, StepTimer(), common


def trl_dpo_side(args):
    """Runs in a child process: prints one JSON line with the figures."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok, model, lora, timer, common = trl_common(args)
    pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in read_jsonl(args.data, 0)]
    cfg = DPOConfig(per_device_train_batch_size=args.batch, max_length=args.seq, truncation_mode="keep_start",
                    beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=args.trl_precompute,
                    **common)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(pairs), processing_class=tok,
                         peft_config=lora, callbacks=[timer])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    med = statistics.median(timer.times[1:])
    rows = []
    for p in pairs:
        n = len(tok(p["prompt"])["input_ids"])
        rows.append(min(args.seq, max(n + len(tok(p["chosen"])["input_ids"]),
                                      n + len(tok(p["rejected"])["input_ids"]))))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"pairs_per_sec": args.batch / med, "step_ms": med * 1e3, "peak_rss_mb": rss,
                      "trainable": trainable, "mean_row": statistics.mean(rows)}))


def trl_grpo_side(args):
    """Runs in a child process: prints one JSON line with the figures."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok, model, lora, timer, common = trl_common(args)
    prompts = [{"prompt": p["prompt"]} for p in read_jsonl(args.data, 0)]

    def length_rule(completions, **kw):
        return [1.0 if len(c) <= LENGTH_MAX else 0.0 for c in completions]

    G = args.generations
    cfg = GRPOConfig(per_device_train_batch_size=args.grpo_prompts * G, num_generations=G,
                     generation_batch_size=args.grpo_prompts * G, max_completion_length=args.max_new,
                     temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", num_iterations=1,
                     **common)
    trainer = GRPOTrainer(model=model, reward_funcs=length_rule, args=cfg, train_dataset=Dataset.from_list(prompts),
                          processing_class=tok, peft_config=lora, callbacks=[timer])
    lengths = []

    def on_end(a, state, control, **kw):
        timer.times.append(time.perf_counter() - timer.t0)
        lengths.append(trainer._metrics["train"]["completions/mean_length"][-1])

    timer.on_step_end = on_end
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    med = statistics.median(timer.times[1:])
    comp = statistics.median(lengths[1:]) * args.grpo_prompts * G
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"step_ms": med * 1e3, "completion_tokens_per_sec": comp / med,
                      "completion_tokens": comp, "peak_rss_mb": rss, "trainable": trainable}))


def trl_side(args, kind, workdir, data, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    cmd = [sys.executable, __file__, "--child", kind, "--workdir", workdir, "--data", data, "--model", args.model,
           "--threads", str(args.threads), "--batch", str(args.batch), "--seq", str(args.seq),
           "--steps", str(args.grpo_steps if kind == "grpo" else args.steps), "--r", str(args.r),
           "--alpha", str(args.alpha), "--lr", str(args.lr), "--grpo-prompts", str(args.grpo_prompts),
           "--generations", str(args.generations), "--max-new", str(args.max_new)] + list(extra)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"TRL {kind} side failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---- the moetune side ----

def recipe_text(args, workdir, method, data, **kw):
    adapter = f"""adapter:
  type: lora
  r: {args.r}
  alpha: {args.alpha}
  dropout: 0
  targets: ["re:{TARGETS.replace(chr(92), chr(92) * 2)}"]
"""
    train = f"""train:
  seed: 0
  steps: 1000
  micro_batch: {kw['micro_batch']}
  grad_accum: 1
  lr: {args.lr}
  schedule: constant
  warmup_steps: 0
  weight_decay: 0
  eval_every: 0
  log_every: 1
  threads: {args.threads}
"""
    out = f"""output:
  dir: {workdir}/run
  store: {workdir}/moetune.db
"""
    if method == "dpo":
        body = f"""data:
  train: {data}
  max_seq_len: {args.seq}
pref:
  beta: 0.1
  loss_type: [sigmoid]
reference:
  model: base
  cache: {'true' if kw['cache'] else 'false'}
"""
    else:
        body = f"""data:
  train: {data}
  max_seq_len: {kw['max_seq_len']}
rollout:
  num_generations: {args.generations}
  max_new_tokens: {args.max_new}
  temperature: 1
reward:
  rules: ["length:0-{LENGTH_MAX}"]
grpo:
  loss_type: dapo
  beta: 0
  num_iterations: 1
"""
    return (f"name: trl-compare-{method}\nmethod: {method}\nmodel:\n  path: {os.path.abspath(args.model)}\n"
            + adapter + body + train + "thresholds:\n  dap: 0.5\n" + out)


def moetune_bench(args, recipe, steps):
    p = subprocess.run([args.moetune, "bench", "train", "--recipe", recipe, "--steps", str(steps)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"moetune bench train failed:\n{p.stderr[-4000:]}")
    figures = {}
    for line in p.stdout.splitlines():
        key, _, val = line.partition(":")
        val = val.split()
        if key == "peak RSS":
            figures["peak_rss_mb"] = float(val[0])
        elif key == "step":
            figures["step_ms"] = float(val[0])
        elif key == "trainable":
            figures["trainable"] = int(val[0])
    return figures


def moetune_dpo_side(args, workdir, data, cache):
    recipe = os.path.join(workdir, f"dpo-{int(cache)}.yaml")
    with open(recipe, "w") as f:
        f.write(recipe_text(args, workdir, "dpo", data, micro_batch=args.batch, cache=cache))
    figures = moetune_bench(args, recipe, args.steps)
    figures["pairs_per_sec"] = args.batch / (figures["step_ms"] / 1e3)
    return figures


def moetune_grpo_lengths(args, workdir, recipe):
    """Completion lengths of the steps bench train times: the same recipe through `moetune
    train` (untimed) into a scratch store, completions/mean_length of steps 2..N+1."""
    store = os.path.join(workdir, "moetune.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(store + suffix):
            os.remove(store + suffix)
    p = subprocess.run([args.moetune, "train", recipe, "--set", f"train.steps={args.grpo_steps + 1}"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"moetune train (GRPO completion lengths) failed:\n{p.stderr[-4000:]}")
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT step, value FROM metrics WHERE name = 'completions/mean_length' ORDER BY step").fetchall()
    vals = [v for s, v in rows if s >= 2]
    if not vals:
        sys.exit(f"no completions/mean_length in {store}: {rows}")
    return statistics.median(vals)


def moetune_grpo_side(args, workdir, data, max_seq_len, mean_len):
    recipe = os.path.join(workdir, "grpo.yaml")
    with open(recipe, "w") as f:
        f.write(recipe_text(args, workdir, "grpo", data, micro_batch=args.grpo_prompts, max_seq_len=max_seq_len))
    if mean_len is None:
        mean_len = moetune_grpo_lengths(args, workdir, recipe)
    figures = moetune_bench(args, recipe, args.grpo_steps)
    comp = mean_len * args.grpo_prompts * args.generations
    figures.update(completion_tokens=comp, completion_tokens_per_sec=comp / (figures["step_ms"] / 1e3),
                   mean_len=mean_len)
    return figures


# ---- the parent ----

def prepare(args, workdir):
    if not args.model:
        args.model = os.path.join(workdir, f"model-{args.preset}")
        subprocess.run([args.moetune, "init", "--preset", args.preset, "--seed", "3", "--tokenizer",
                        args.tokenizer, args.model], check=True, capture_output=True)
    if not args.pairs:
        args.pairs = os.path.join(workdir, "medical-pairs.jsonl")
        subprocess.run([args.moetune, "data", "medical-pairs", args.pairs], check=True, capture_output=True)
    # exactly the pairs (prompts) the steps take, so a precompute covers the same pairs on both sides
    pairs = read_jsonl(args.pairs, args.batch * (args.steps + 1))
    dpo = os.path.join(workdir, "dpo-pairs.jsonl")
    with open(dpo, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    prompts = read_jsonl(args.pairs, args.grpo_prompts * (args.grpo_steps + 1))
    grpo = os.path.join(workdir, "grpo-prompts.jsonl")
    with open(grpo, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p["prompt"]}) + "\n")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    longest = max(len(tok.encode(p["prompt"]).ids) for p in prompts)
    return dpo, grpo, longest + 1 + args.max_new  # + 1: room for a bos the template may add


def show(title, runs, cols, base, ratios):
    print(title)
    print(f"{'':26s}" + "".join(f"{h:>16s}" for h, _, _ in cols) + f"{'trainable':>11s}")
    med = {}
    for name, rs in runs.items():
        med[name] = {k: statistics.median(r[k] for r in rs) for _, k, _ in cols}
        print(f"{name:26s}" + "".join(f"{med[name][k]:16{fmt}}" for _, k, fmt in cols) + f"{rs[0]['trainable']:11d}")
    key0, fmt0 = cols[0][1], cols[0][2]
    print("per round (" + cols[0][0] + "): " + "; ".join(
        f"{name} " + " ".join(f"{r[key0]:{fmt0}}" for r in rs) for name, rs in runs.items()))
    for name, key, unit in ratios:
        for other in runs:
            if other != base and other.startswith("moetune"):
                print(f"{other} / {name}: {med[other][key] / med[name][key]:.2f}x {unit}, "
                      f"{med[other]['peak_rss_mb'] / med[name]['peak_rss_mb']:.2f}x peak memory")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a moetune model folder (default: `moetune init --preset P` in a temp dir)")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--tokenizer", default="tests/fixtures/tokenizers/deepseek_v3")
    ap.add_argument("--pairs", help="JSONL of TRL standard pairs (default: `moetune data medical-pairs`)")
    ap.add_argument("--moetune", default="build/moetune")
    ap.add_argument("--only", choices=["dpo", "grpo", "both"], default="both")
    ap.add_argument("--batch", type=int, default=4, help="DPO pairs per step")
    ap.add_argument("--seq", type=int, default=64, help="DPO tokens per row (prompt + completion)")
    ap.add_argument("--steps", type=int, default=5, help="DPO timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="DPO rounds")
    ap.add_argument("--trl-precompute", action="store_true",
                    help="also time TRL with precompute_ref_log_probs=True (in a child: its reference mode)")
    ap.add_argument("--grpo-prompts", type=int, default=2, help="GRPO prompts per step")
    ap.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt")
    ap.add_argument("--max-new", type=int, default=16, help="GRPO tokens per completion at most")
    ap.add_argument("--grpo-steps", type=int, default=3, help="GRPO timed steps per round")
    ap.add_argument("--grpo-rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--child", choices=["dpo", "grpo"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "dpo":
        trl_dpo_side(args)
        return
    if args.child == "grpo":
        trl_grpo_side(args)
        return
    with tempfile.TemporaryDirectory() as workdir:
        given = args.model
        dpo_data, grpo_data, grpo_T = prepare(args, workdir)
        print(f"model {given or f'moetune init --preset {args.preset} --seed 3'}, "
              f"LoRA r={args.r} alpha={args.alpha:g} on {TARGETS}, {args.threads} threads")
        print(f"load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        print()
        if args.only in ("dpo", "both"):
            runs = {"TRL (ref every step)": [], "moetune (ref every step)": [], "moetune (ref cached)": []}
            if args.trl_precompute:
                runs["TRL (ref precomputed)"] = []
            for _ in range(args.rounds):
                runs["TRL (ref every step)"].append(trl_side(args, "dpo", workdir, dpo_data))
                runs["moetune (ref every step)"].append(moetune_dpo_side(args, workdir, dpo_data, False))
                if args.trl_precompute:
                    runs["TRL (ref precomputed)"].append(trl_side(args, "dpo", workdir, dpo_data,
                                                                  ["--trl-precompute"]))
                runs["moetune (ref cached)"].append(moetune_dpo_side(args, workdir, dpo_data, True))
            mean_row = statistics.median(r["mean_row"] for r in runs["TRL (ref every step)"])
            show(f"DPO: {args.batch} pairs per step, rows of {args.seq} tokens (TRL: padded to the batch's longest, "
                 f"pairs' mean {mean_row:.1f}), median of {args.rounds} rounds x {args.steps} steps",
                 runs, [("pairs/s", "pairs_per_sec", ".2f"), ("ms/step", "step_ms", ".1f"),
                        ("peak RSS MB", "peak_rss_mb", ".0f")], "TRL (ref every step)",
                 [("TRL (ref every step)", "pairs_per_sec", "pairs/s")]
                 + ([("TRL (ref precomputed)", "pairs_per_sec", "pairs/s")] if args.trl_precompute else []))
        if args.only in ("grpo", "both"):
            runs = {"TRL GRPOTrainer": [], "moetune grpo": []}
            mean_len = None
            for _ in range(args.grpo_rounds):
                runs["TRL GRPOTrainer"].append(trl_side(args, "grpo", workdir, grpo_data))
                runs["moetune grpo"].append(moetune_grpo_side(args, workdir, grpo_data, grpo_T, mean_len))
                mean_len = runs["moetune grpo"][-1]["mean_len"]
            ct = {n: statistics.median(r["completion_tokens"] for r in rs) for n, rs in runs.items()}
            show(f"GRPO: {args.grpo_prompts} prompts x {args.generations} completions of at most {args.max_new} "
                 f"tokens per step (completion tokens per step, median: TRL {ct['TRL GRPOTrainer']:.0f}, "
                 f"moetune {ct['moetune grpo']:.0f}), median of {args.grpo_rounds} rounds x {args.grpo_steps} steps",
                 runs, [("compl. tok/s", "completion_tokens_per_sec", ".0f"), ("ms/step", "step_ms", ".1f"),
                        ("peak RSS MB", "peak_rss_mb", ".0f")], "TRL GRPOTrainer",
                 [("TRL GRPOTrainer", "completion_tokens_per_sec", "completion tokens/s")])
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
