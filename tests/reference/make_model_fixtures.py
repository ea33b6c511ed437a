#!/usr/bin/env python3
"""make_model_fixtures.py — the independent reference for moetune's model core.

Builds tiny random checkpoints of every supported MoE family with Hugging Face transformers,
writes each as `save_pretrained` does, and dumps what the C tests must reproduce (logits, loss,
hidden states, gradients, router aux loss, greedy generation) to reference.safetensors.
`--check-init DIR` instead loads a model folder written by moetune and dumps its logits.

Format and conventions: tests/reference/README.md. Run with the pinned versions of
tests/reference/requirements.txt; the output is byte-identical from run to run.
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from transformers import AutoConfig, AutoModelForCausalLM

sys.dont_write_bytecode = True  # keep the source tree free of __pycache__
import naive_reference  # noqa: E402  (after the line above on purpose)

B, T = 2, 12  # T > 8 so attention spans more than one tile of 8
PROMPT_LEN, NEW_TOKENS = 5, 10
# Masked label positions (b, t). Position 0's label never counts (nothing predicts it); the
# others remove real targets, so an off-by-one in the label shift changes the loss.
IGNORED_LABELS = ((0, 0), (0, 4), (1, 7), (1, 11))
MIN_REL_GAP = 5e-3  # routing / greedy choices closer than this could flip under fp32 rounding
MAX_ATTEMPTS = 64
BOS, EOS = 1, 2
CHECK_INIT_SEED = 20240901

# One entry per fixture folder. `config` holds the keys given to AutoConfig.for_model; every
# variant sets pad_token_id None because nn.Embedding(padding_idx) zeroes that row's gradient.
VARIANTS = {
    "deepseek_v3": dict(
        model_type="deepseek_v3",
        seed=3000,
        config=dict(
            vocab_size=112, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
            n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3, n_group=2, topk_group=1,
            routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1,
            max_position_embeddings=256, rope_interleave=True,
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                 original_max_position_embeddings=64, beta_fast=32.0, beta_slow=1.0,
                                 mscale=1.0, mscale_all_dim=0.8),
        ),
    ),
    "deepseek_v3_noq": dict(
        model_type="deepseek_v3",
        seed=3100,
        config=dict(
            vocab_size=104, hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
            n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3, n_group=4, topk_group=2,
            routed_scaling_factor=1.5, norm_topk_prob=False, first_k_dense_replace=1,
            max_position_embeddings=256, rope_interleave=True,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
    "deepseek_v2": dict(
        model_type="deepseek_v2",
        seed=2000,
        config=dict(
            vocab_size=100, hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
            n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=3, n_group=4, topk_group=2,
            topk_method="group_limited_greedy", routed_scaling_factor=1.75, norm_topk_prob=False,
            first_k_dense_replace=1, max_position_embeddings=256,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
    "qwen3_moe": dict(
        model_type="qwen3_moe",
        seed=1300,
        config=dict(
            vocab_size=128, hidden_size=32, intermediate_size=48, moe_intermediate_size=12,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
            router_aux_loss_coef=0.25, max_position_embeddings=256,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
    "qwen2_moe": dict(
        model_type="qwen2_moe",
        seed=1200,
        config=dict(
            vocab_size=104, hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
            shared_expert_intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, num_experts=6, num_experts_per_tok=2, norm_topk_prob=False,
            decoder_sparse_step=1, mlp_only_layers=[1], qkv_bias=True, router_aux_loss_coef=0.25,
            max_position_embeddings=256,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
    "mixtral": dict(
        model_type="mixtral",
        seed=1000,
        config=dict(
            vocab_size=96, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
            router_jitter_noise=0.0, router_aux_loss_coef=0.25, sliding_window=None,
            max_position_embeddings=256,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
    ),
    "olmoe": dict(
        model_type="olmoe",
        seed=1400,
        config=dict(
            vocab_size=120, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=3,
            norm_topk_prob=False, router_aux_loss_coef=0.25, clip_qkv=None,
            max_position_embeddings=256,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
}

AUX_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")  # transformers computes aux only here


class FixtureError(Exception):
    pass


def load_kwargs():
    # The plain per-expert loop and eager attention are the readable references.
    return dict(attn_implementation="eager", experts_implementation="eager", dtype=torch.float32)


# ------------------------------------------------------------------------------------------
# Initialisation: O(1) activations, well-spread routing scores, peaked attention and logits
# ------------------------------------------------------------------------------------------

def _linear_gain(name):
    if name.endswith(("q_proj.weight", "k_proj.weight", "q_b_proj.weight", "kv_b_proj.weight")):
        return 1.5  # sharper attention than uniform
    if name.endswith("down_proj.weight"):
        return 0.8
    return 1.0


def init_weights(model, gen):
    """Re-initialises every parameter (and DeepSeek-V3's correction bias) from `gen`."""
    hidden = model.config.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(0.8 + 0.4 * torch.rand(p.shape, generator=gen))
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=gen) * (2.5 / math.sqrt(hidden)))
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif name.endswith("mlp.gate.weight"):  # router: logits of std ≈ 2.5
                p.copy_(torch.randn(p.shape, generator=gen) * (2.5 / math.sqrt(hidden)))
            elif name.endswith("shared_expert_gate.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / math.sqrt(hidden)))
            elif name.endswith("experts.gate_up_proj"):  # [E, 2I, H]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[2]))
            elif name.endswith("experts.down_proj"):  # [E, H, I]
                p.copy_(torch.randn(p.shape, generator=gen) * (0.8 / math.sqrt(p.shape[2])))
            elif name.endswith(".weight") and p.dim() == 2:  # nn.Linear [out, in]
                p.copy_(torch.randn(p.shape, generator=gen) * (_linear_gain(name) / math.sqrt(p.shape[1])))
            else:
                raise FixtureError(f"init_weights: no rule for parameter {name} {tuple(p.shape)}")
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_((torch.rand(buf.shape, generator=gen) - 0.5) * 0.3)


# ------------------------------------------------------------------------------------------
# Routing margins: every selection must be decided by more than fp32 rounding
# ------------------------------------------------------------------------------------------

def _rel_gap(a, b):
    return (a - b) / max(abs(a), abs(b), 1e-30)


def _topk_gap(row, k):
    """Relative gap between the k-th and (k+1)-th largest of a 1-D float64 tensor."""
    s = torch.sort(row, descending=True).values
    if k >= s.numel() or s[k] == -math.inf:
        return math.inf
    return _rel_gap(s[k - 1].item(), s[k].item())


def routing_margin(model_type, cfg, logits, bias):
    """Smallest relative gap of every selection one MoE layer makes for logits [N, E]; also
    for DeepSeek-V3 the smallest selected biased score (must be > 0 so that filling dropped
    groups with 0, as DeepSeek's remote code does, selects the same experts as −inf)."""
    z = logits.double()
    k = cfg.num_experts_per_tok
    worst = math.inf
    min_selected = math.inf
    for row in z:
        if model_type == "deepseek_v3":
            s = torch.sigmoid(row) + bias.double()
            groups = s.view(cfg.n_group, -1)
            gscore = groups.topk(2, dim=-1).values.sum(-1)
            worst = min(worst, _topk_gap(gscore, cfg.topk_group))
            keep = gscore.topk(cfg.topk_group).indices
            mask = torch.full_like(gscore, -math.inf)
            mask[keep] = 0.0
            masked = (groups + mask[:, None]).reshape(-1)
            worst = min(worst, _topk_gap(masked, k))
            min_selected = min(min_selected, masked.topk(k).values[-1].item())
        elif model_type == "deepseek_v2" and cfg.topk_method == "group_limited_greedy":
            p = torch.softmax(row, -1)
            groups = p.view(cfg.n_group, -1)
            gscore = groups.max(-1).values
            worst = min(worst, _topk_gap(gscore, cfg.topk_group))
            keep = gscore.topk(cfg.topk_group).indices
            mask = torch.zeros_like(gscore)
            mask[keep] = 1.0
            worst = min(worst, _topk_gap((groups * mask[:, None]).reshape(-1), k))
        else:
            worst = min(worst, _topk_gap(torch.softmax(row, -1), k))
    return worst, min_selected


def router_modules(model):
    """{layer index: router module} for every MoE layer (in-memory names `model.layers.i.mlp.gate`)."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None and hasattr(gate, "top_k"):
            out[i] = gate
    return out


class RouterRecorder:
    """Records each router's outputs (logits, weights, indices) during a forward pass."""

    def __init__(self, model):
        self.routers = router_modules(model)
        self.records = {}
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in self.routers.items()]

    def _hook(self, layer):
        def hook(_module, _inputs, output):
            logits, weights, indices = output
            self.records[layer] = (logits.detach().clone(), weights.detach().clone(), indices.detach().clone())
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def check_margins(model_type, model, input_ids):
    """Worst routing gap over every token and MoE layer for one forward, plus the smallest
    selected biased score (DeepSeek-V3)."""
    rec = RouterRecorder(model)
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        rec.close()
    worst, min_sel = math.inf, math.inf
    for layer, (logits, _, _) in rec.records.items():
        gate = rec.routers[layer]
        bias = getattr(gate, "e_score_correction_bias", None)
        w, s = routing_margin(model_type, model.config, logits, bias)
        worst, min_sel = min(worst, w), min(min_sel, s)
    return worst, min_sel


def greedy_generate(model, prompt):
    """eos_token_id=None here disables stopping for this call only; generation_config.json keeps
    the model's eos."""
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)


def check_generation(model, prompt, generated):
    """The continuation must have full length and each token must be a clear argmax of the
    full-sequence forward (so the C KV-cache decode cannot pick another one)."""
    if generated.shape != (1, PROMPT_LEN + NEW_TOKENS):
        raise FixtureError(f"generate returned shape {tuple(generated.shape)}")
    if not torch.equal(generated[:, :PROMPT_LEN], prompt):
        raise FixtureError("generate changed the prompt")
    with torch.no_grad():
        logits = model(input_ids=generated).logits[0].double()
    worst = math.inf
    for t in range(PROMPT_LEN - 1, PROMPT_LEN + NEW_TOKENS - 1):
        top = logits[t].topk(2)
        if top.indices[0].item() != generated[0, t + 1].item():
            raise FixtureError(f"generated token {t + 1} is not the argmax of the full forward")
        worst = min(worst, (top.values[0] - top.values[1]).item() / max(1.0, abs(top.values[0].item())))
    return worst


# ------------------------------------------------------------------------------------------
# Names: in-memory (stacked experts) versus on disk (per-expert, as save_pretrained writes)
# ------------------------------------------------------------------------------------------

def disk_name(model_type, mem_name):
    if model_type == "mixtral":
        return mem_name.replace(".mlp.", ".block_sparse_moe.")
    return mem_name


def expert_disk_names(model_type, layer, e):
    """(gate, up, down) names of routed expert e of layer `layer` on disk."""
    if model_type == "mixtral":
        base = f"model.layers.{layer}.block_sparse_moe.experts.{e}"
        return f"{base}.w1.weight", f"{base}.w3.weight", f"{base}.w2.weight"
    base = f"model.layers.{layer}.mlp.experts.{e}"
    return f"{base}.gate_proj.weight", f"{base}.up_proj.weight", f"{base}.down_proj.weight"


def expert_parts(gate_up, down, e):
    """(gate, up, down) of expert e inside the stacked in-memory tensors gate_up [E, 2I, H]
    (gate rows first, then up) and down [E, H, I]; works on weights and on their gradients."""
    inter = down.shape[2]
    return gate_up[e, :inter], gate_up[e, inter:], down[e]


def save_safetensors(tensors, path, metadata):
    """safetensors.torch.save_file, except that __metadata__ is written with sorted keys (the
    library serialises it from a hash map, in an order that changes from run to run)."""
    raw = safetensors_bytes(tensors, metadata=metadata)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    header = {"__metadata__": dict(sorted(metadata.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + raw[8 + n:])


# ------------------------------------------------------------------------------------------
# The reference computation
# ------------------------------------------------------------------------------------------

def make_inputs(vocab, gen):
    input_ids = torch.randint(0, vocab, (B, T), generator=gen)
    labels = input_ids.clone()
    for b, t in IGNORED_LABELS:
        labels[b, t] = -100
    prompt = torch.randint(0, vocab, (1, PROMPT_LEN), generator=gen)
    return input_ids, labels, prompt


def grad_param_names(model_type, model):
    """In-memory names of the parameters whose gradients are dumped (experts apart)."""
    cfg = model.config
    last = cfg.num_hidden_layers - 1
    names = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
             "model.layers.0.input_layernorm.weight", f"model.layers.{last}.input_layernorm.weight",
             f"model.layers.{last}.post_attention_layernorm.weight"]
    params = dict(model.named_parameters())
    names += [n for n in params if n.startswith(f"model.layers.{last}.self_attn.")]
    routers = router_modules(model)
    names += [f"model.layers.{i}.mlp.gate.weight" for i in routers]
    names += [n for n in params if n.startswith(f"model.layers.{last}.mlp.shared_expert")]
    dense = [i for i in range(cfg.num_hidden_layers) if i not in routers]
    if dense:
        names += [n for n in params if n.startswith(f"model.layers.{dense[0]}.mlp.")]
    if model_type in AUX_FAMILIES and not routers:
        raise FixtureError("no MoE layer found")
    seen = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def compute_reference(model_type, model, input_ids, labels, prompt):
    model.eval()
    cfg = model.config
    last = cfg.num_hidden_layers - 1
    ref = {"input_ids": input_ids.clone(), "labels": labels.clone()}
    meta = {}

    prenorm = {}

    def keep_prenorm(_module, inputs, _output):  # returns None: a hook's return value replaces the output
        prenorm["x"] = inputs[0].detach().clone()

    h_norm = model.model.norm.register_forward_hook(keep_prenorm)
    rec = RouterRecorder(model)
    try:
        model.zero_grad(set_to_none=True)
        embeds = model.model.embed_tokens(input_ids)
        embeds.retain_grad()
        out = model(inputs_embeds=embeds, labels=labels, output_hidden_states=True, output_router_logits=False)
        out.loss.backward()
    finally:
        h_norm.remove()
        rec.close()

    with torch.no_grad():
        by_ids = model(input_ids=input_ids).logits
    if not torch.equal(by_ids, out.logits):
        raise FixtureError("forward on input_ids and on inputs_embeds disagree")

    ref["logits"] = out.logits.detach().clone()
    ref["loss"] = out.loss.detach().clone().reshape(())
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    manual = torch.nn.functional.cross_entropy(out.logits.reshape(-1, cfg.vocab_size).double(),
                                               shifted.reshape(-1), ignore_index=-100)
    if abs(manual.item() - out.loss.item()) > 1e-5 * max(1.0, abs(manual.item())):
        raise FixtureError(f"loss {out.loss.item()} differs from the shifted cross-entropy {manual.item()}")

    hs = out.hidden_states
    if len(hs) != cfg.num_hidden_layers + 1:
        raise FixtureError(f"{len(hs)} hidden states for {cfg.num_hidden_layers} layers")
    for i, h in enumerate(hs):
        ref[f"hidden.{i}"] = h.detach().clone()
    ref["hidden_prenorm"] = prenorm["x"]
    if not torch.equal(model.model.norm(prenorm["x"]), hs[-1]):
        raise FixtureError("last hidden state is not the final norm of the last layer's output")
    meta["hidden_last"] = "final norm applied (model.norm(hidden_prenorm))"

    params = dict(model.named_parameters())
    for name in grad_param_names(model_type, model):
        if params[name].grad is None:
            raise FixtureError(f"no gradient for {name}")
        ref[f"grad.{disk_name(model_type, name)}"] = params[name].grad.detach().clone()
    ref["grad.inputs_embeds"] = embeds.grad.detach().clone()

    # Routing decisions of the main pass, experts sorted by index within each token.
    for layer, (logits, weights, indices) in sorted(rec.records.items()):
        order = indices.argsort(dim=-1)
        ref[f"router.{layer}.logits"] = logits.float()
        ref[f"router.{layer}.topk_idx"] = indices.gather(1, order).long()
        ref[f"router.{layer}.topk_w"] = weights.gather(1, order).float()

    # Two routed experts of the last layer: the two most used (lower index on ties).
    _, _, last_idx = rec.records[last]
    experts = model.model.layers[last].mlp.experts
    counts = torch.bincount(last_idx.reshape(-1), minlength=experts.gate_up_proj.shape[0])
    chosen = sorted(sorted(range(counts.numel()), key=lambda e: (-counts[e].item(), e))[:2])
    if any(counts[e].item() == 0 for e in chosen):
        raise FixtureError("fewer than two experts used in the last layer")
    for e in chosen:
        parts = expert_parts(experts.gate_up_proj.grad, experts.down_proj.grad, e)
        for disk, t in zip(expert_disk_names(model_type, last, e), parts):
            ref[f"grad.{disk}"] = t.detach().clone()
    meta["grad_experts"] = f"layer {last}: experts {chosen[0]},{chosen[1]}"

    if model_type in AUX_FAMILIES:
        model.zero_grad(set_to_none=True)
        out2 = model(input_ids=input_ids, labels=labels, output_router_logits=True)
        out2.loss.backward()
        if not torch.equal(out2.logits, out.logits):
            raise FixtureError("logits changed with output_router_logits")
        ref["aux_loss"] = out2.aux_loss.detach().clone().reshape(()).float()
        ref["loss_with_aux"] = out2.loss.detach().clone().reshape(())
        expect = out.loss + cfg.router_aux_loss_coef * out2.aux_loss
        if abs(expect.item() - out2.loss.item()) > 1e-6 * max(1.0, abs(expect.item())):
            raise FixtureError("loss_with_aux is not loss + coef·aux_loss")
        for layer in router_modules(model):
            name = f"model.layers.{layer}.mlp.gate.weight"
            ref[f"grad_aux.{disk_name(model_type, name)}"] = params[name].grad.detach().clone()
        model.zero_grad(set_to_none=True)

    generated = greedy_generate(model, prompt)
    ref["generate_prompt"] = prompt.clone()
    ref["generate_greedy"] = generated.clone()
    return ref, meta, chosen


def build_variant(name, spec):
    """Finds the first seed whose model makes no near-tie choice; returns the model and inputs."""
    model_type = spec["model_type"]
    for attempt in range(MAX_ATTEMPTS):
        seed = spec["seed"] + attempt
        gen = torch.Generator().manual_seed(seed)
        cfg = AutoConfig.for_model(model_type, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=None,
                                   tie_word_embeddings=False, **spec["config"])
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, **load_kwargs())
        init_weights(model, gen)
        model.eval()
        input_ids, labels, prompt = make_inputs(cfg.vocab_size, gen)
        gap, min_sel = check_margins(model_type, model, input_ids)
        generated = greedy_generate(model, prompt)
        gen_gap, gen_min_sel = check_margins(model_type, model, generated)
        arg_gap = check_generation(model, prompt, generated)
        gap, min_sel = min(gap, gen_gap), min(min_sel, gen_min_sel)
        # A continuation stuck in a short cycle would hide decode-path bugs that keep the cycle.
        varied = len(set(generated[0, PROMPT_LEN:].tolist())) >= NEW_TOKENS // 2
        ok = (gap > MIN_REL_GAP and arg_gap > MIN_REL_GAP and varied
              and (model_type != "deepseek_v3" or min_sel > MIN_REL_GAP))
        if ok:
            margins = dict(route_gap=gap, argmax_gap=arg_gap, min_selected_biased=min_sel)
            return model, seed, input_ids, labels, prompt, margins
    raise FixtureError(f"{name}: no seed in {MAX_ATTEMPTS} attempts without a near-tie")


def verify_disk_names(folder, model_type, model, ref, chosen):
    """Every grad.* name exists in model.safetensors with the gradient's shape, and the weight
    stored under it equals the in-memory weight it was sliced from."""
    params = dict(model.named_parameters())
    last = model.config.num_hidden_layers - 1
    mem_of = {}
    for n in params:
        mem_of[disk_name(model_type, n)] = params[n]
    experts = model.model.layers[last].mlp.experts
    for e in chosen:
        for disk, t in zip(expert_disk_names(model_type, last, e),
                           expert_parts(experts.gate_up_proj, experts.down_proj, e)):
            mem_of[disk] = t
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        for key, grad in ref.items():
            if not key.startswith(("grad.", "grad_aux.")) or key == "grad.inputs_embeds":
                continue
            disk = key.split(".", 1)[1]
            if disk not in keys:
                raise FixtureError(f"{key}: {disk} is not in model.safetensors")
            stored = f.get_tensor(disk)
            if tuple(stored.shape) != tuple(grad.shape):
                raise FixtureError(f"{key}: shape {tuple(grad.shape)} but {tuple(stored.shape)} on disk")
            if not torch.equal(stored, mem_of[disk].detach()):
                raise FixtureError(f"{key}: the weight on disk is not the one the gradient belongs to")


def write_variant(root, name, spec):
    model_type = spec["model_type"]
    model, seed, input_ids, labels, prompt, margins = build_variant(name, spec)
    folder = os.path.join(root, name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    model.save_pretrained(folder, safe_serialization=True)

    # The reference is computed from the checkpoint as written, so HF's own loader of those
    # bytes and the C loader start from the same tensors.
    loaded, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, **load_kwargs())
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            raise FixtureError(f"{name}: reloading the saved model reports {kind}: {info[kind]}")
    loaded.eval()
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters()):
        if n1 != n2 or not torch.equal(p1, p2):
            raise FixtureError(f"{name}: {n1} changed through save/load")

    ref, meta, chosen = compute_reference(model_type, loaded, input_ids, labels, prompt)
    verify_disk_names(folder, model_type, loaded, ref, chosen)
    metadata = {
        "variant": name,
        "model_type": model_type,
        "seed": str(seed),
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "label_shift": "targets[t] = labels[t+1]; the last position has no target",
        "route_gap_min": f"{margins['route_gap']:.6g}",
        "argmax_gap_min": f"{margins['argmax_gap']:.6g}",
        **meta,
    }
    if model_type == "deepseek_v3":
        metadata["min_selected_biased_score"] = f"{margins['min_selected_biased']:.6g}"
    tensors = {k: v.detach().contiguous() for k, v in ref.items()}
    for k, v in tensors.items():
        if v.is_floating_point() and v.dtype != torch.float32:
            raise FixtureError(f"{name}: {k} is {v.dtype}, expected float32")
        if not v.is_floating_point() and v.dtype != torch.int64:
            raise FixtureError(f"{name}: {k} is {v.dtype}, expected int64")
    save_safetensors(tensors, os.path.join(folder, "reference.safetensors"), metadata)
    try:
        margins["naive_err"] = naive_reference.check_folder(folder)
    except AssertionError as e:
        raise FixtureError(f"{name}: the naive float64 recomputation disagrees: {e}") from e
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    return seed, margins, size


# ------------------------------------------------------------------------------------------
# --check-init: a model folder written by moetune must load in transformers unchanged
# ------------------------------------------------------------------------------------------

def check_init(folder):
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FixtureError(f"{folder}: no config.json (a model folder written by moetune is expected)")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, local_files_only=True,
                                                           **load_kwargs())
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise FixtureError(f"{folder}: transformers cannot load it: {e}") from e
    problems = [f"{kind}: {info[kind]}" for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
                if info.get(kind)]
    if problems:
        raise FixtureError(f"{folder}: transformers loads it only partly ({'; '.join(problems)})")
    model.eval()
    gen = torch.Generator().manual_seed(CHECK_INIT_SEED)
    input_ids = torch.randint(0, model.config.vocab_size, (B, T), generator=gen)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()
    metadata = {"model_type": model.config.model_type, "seed": str(CHECK_INIT_SEED),
                "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    save_safetensors({"input_ids": input_ids, "logits": logits.contiguous()},
                     os.path.join(folder, "reference.safetensors"), metadata)


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "fixtures", "models"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=default_out, help="folder that receives one folder per variant")
    ap.add_argument("--only", action="append", choices=sorted(VARIANTS), help="build only these variants")
    ap.add_argument("--check-init", metavar="DIR",
                    help="load DIR (config.json + model.safetensors) and write DIR/reference.safetensors")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # thread count can change fp32 summation order
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        if args.check_init:
            check_init(args.check_init)
            print(f"wrote {os.path.join(args.check_init, 'reference.safetensors')}")
            return 0
        os.makedirs(args.out, exist_ok=True)
        for name in args.only or list(VARIANTS):
            seed, margins, size = write_variant(args.out, name, VARIANTS[name])
            print(f"{name:16s} seed {seed}  route gap {margins['route_gap']:.3g}  "
                  f"argmax gap {margins['argmax_gap']:.3g}  naive rel err {margins['naive_err']:.2g}  "
                  f"{size / 1024:.0f} KiB")
    except FixtureError as e:
        print(f"make_model_fixtures: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
