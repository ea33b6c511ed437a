"""The DeepSeek load-balancing losses, from their sources rather than from moetune.

transformers computes no auxiliary loss for DeepSeek-V2/V3, so nothing upstream checks
moetune's. This script runs the committed fixture models (tests/fixtures/models/) in
transformers, captures each MoE layer's router input with a forward hook, and recomputes the
loss with formulas written from their originals:

- DeepSeek-V2 (paper §2.2.3 "expert-level balance loss"; MoEGate in DeepSeek's
  modeling_deepseek.py): scores = softmax(x·Wᵀ) (unmasked, before group limiting), the chosen
  experts are the group-limited top-k; with seq_aux every sequence b gets
  ce_{b,e} = count_{b,e}·E/(T·k) and aux = mean_b Σ_e ce_{b,e}·mean_t s_{b,t,e}; without it
  f_e = E·count_e/(N·k), P_e = mean_t s_{t,e}, aux = Σ_e f_e·P_e. Summed over MoE layers.
- DeepSeek-V3 (what moetune uses, as for Mixtral/Qwen/OLMoE): transformers'
  load_balancing_loss_func over the router logits of all MoE layers concatenated.

Counts are constants (one-hot of argmax choices), so the gradient flows through the scores,
and autograd carries it back through every earlier layer. The script dumps the loss and
∂aux/∂W of every parameter (aux alone, coefficient 1, no cross-entropy) to
tests/fixtures/aux/<variant>.safetensors; tests/test_aux_loss.c compares moetune's forward
value and backward gradients with them. It also checks that the top-k it recomputes equals
transformers' routing. Run: /work/venv/bin/python tests/reference/make_aux_fixtures.py
(versions as in requirements.txt; about 5 s).
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")

# variant -> (model folder under fixtures/, config overrides written beside a link to its weights)
VARIANTS = {
    "deepseek_v2": ("models/deepseek_v2", None),                       # seq_aux defaults to true
    "deepseek_v2_tokaux": ("models/deepseek_v2", {"seq_aux": False}),  # batch-wise variant
    "deepseek_v3": ("models/deepseek_v3", None),
}


def v2_topk(scores, cfg):
    """MoEGate's expert choice (greedy or group_limited_greedy), from the original code."""
    k, E = cfg["num_experts_per_tok"], cfg["n_routed_experts"]
    if cfg.get("topk_method", "greedy") == "greedy":
        return torch.topk(scores, k=k, dim=-1, sorted=False)[1]
    G = cfg["n_group"]
    group_scores = scores.view(-1, G, E // G).max(dim=-1).values
    group_idx = torch.topk(group_scores, k=cfg["topk_group"], dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
    tmp_scores = scores.masked_fill(~score_mask.bool(), 0.0)
    return torch.topk(tmp_scores, k=k, dim=-1, sorted=False)[1]


def v2_aux(scores, topk_idx, B, T, cfg):
    """One layer's sequence-wise (seq_aux) or batch-wise expert balance loss, alpha = 1."""
    E, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    if cfg.get("seq_aux", True):
        s = scores.view(B, T, E)
        ce = torch.zeros(B, E, dtype=torch.float64)
        ce.scatter_add_(1, topk_idx.view(B, -1), torch.ones(B, T * k, dtype=torch.float64))
        ce = ce / (T * k / E)
        return (ce * s.mean(dim=1)).sum(dim=1).mean()
    mask_ce = F.one_hot(topk_idx.reshape(-1), num_classes=E).double()
    fi = mask_ce.mean(0) * E
    Pi = scores.mean(0)
    return (Pi * fi).sum()


def run(variant, src, overrides, out_dir):
    model_dir = os.path.join(FIX, src)
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    if overrides:
        # the variant's folder: its own config.json, the weights by relative link
        vdir = os.path.join(out_dir, variant)
        os.makedirs(vdir, exist_ok=True)
        cfg.update(overrides)
        with open(os.path.join(vdir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        link = os.path.join(vdir, "model.safetensors")
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(os.path.join(model_dir, "model.safetensors"), vdir), link)
        model_dir = vdir
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager", local_files_only=True)
    model.eval()
    ref = load_file(os.path.join(FIX, src, "reference.safetensors"))
    ids = ref["input_ids"]
    B, T = ids.shape
    family = cfg["model_type"]

    captured = []  # (router input [N, H], router weight, transformers' topk [N, k])

    def hook(mod, args, out):
        captured.append((args[0].reshape(-1, mod.weight.shape[1]), mod.weight, out[2]))

    for name, mod in model.named_modules():
        if name.endswith("mlp.gate") and hasattr(mod, "weight"):
            mod.register_forward_hook(hook)
    model(input_ids=ids)
    assert captured, "no MoE layer"

    if family == "deepseek_v2":
        total = torch.zeros((), dtype=torch.float64)
        for x, w, tf_idx in captured:
            # double precision for the reference value; the gradient graph is the same
            scores = F.linear(x.double(), w.double()).softmax(dim=-1)
            idx = v2_topk(scores.detach().float(), cfg)
            if not torch.equal(idx.sort(-1).values, tf_idx.sort(-1).values):
                sys.exit(f"{variant}: recomputed top-k differs from transformers' routing")
            total = total + v2_aux(scores, idx, B, T, cfg)
    else:
        logits = tuple(F.linear(x.double(), w.double()) for x, w, _ in captured)
        total = load_balancing_loss_func(logits, cfg["n_routed_experts"], cfg["num_experts_per_tok"])

    model.zero_grad()
    total.backward()
    tensors = {"input_ids": ids.clone(), "aux_loss": total.detach().float().reshape(())}
    n = 0
    for name, p in model.named_parameters():
        if p.grad is not None and p.grad.abs().max() > 0:
            tensors["grad_aux." + name] = p.grad.detach().float().contiguous()
            n += 1
    path = os.path.join(out_dir, variant + ".safetensors")
    save_file(tensors, path, metadata={"variant": variant, "family": family, "layers": str(len(captured))})
    print(f"{variant}: aux {total.item():.9g} over {len(captured)} MoE layer(s), {n} gradients -> {path}")


def main():
    out_dir = os.path.join(FIX, "aux")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    for variant, (src, overrides) in VARIANTS.items():
        run(variant, src, overrides, out_dir)


if __name__ == "__main__":
    main()
