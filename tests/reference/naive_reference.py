"""naive_reference.py — a second, independent reading of the fixtures' model folders.

Recomputes logits, loss, router aux loss, gradients and the greedy continuation of a fixture
folder in float64 straight from config.json and the per-expert tensor names on disk, with the
formulas written in tests/reference/README.md and none of transformers' modules. The fixture
generator runs it on every folder it writes, so the README's description is itself tested.
"""

import json
import math
import os

import torch
from safetensors import safe_open

DTYPE = torch.float64


class Weights:
    """The checkpoint's tensors as float64 leaves that collect gradients."""

    def __init__(self, folder):
        self.t = {}
        with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
            for k in f.keys():
                v = f.get_tensor(k).to(DTYPE)
                if v.is_floating_point() and not k.endswith("e_score_correction_bias"):
                    v.requires_grad_(True)
                self.t[k] = v

    def __getitem__(self, k):
        return self.t[k]

    def get(self, k):
        return self.t.get(k)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def swiglu(x, gate, up, down):
    return linear(torch.nn.functional.silu(linear(x, gate)) * linear(x, up), down)


def yarn_mscale(scale, m):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def rope_tables(cfg, dim, T):
    """cos, sin [T, dim/2] for positions 0..T−1, and the softmax-scale multiplier."""
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = rp.get("rope_type", rp.get("type", "default"))
    i = torch.arange(0, dim, 2, dtype=DTYPE)
    inv_freq = 1.0 / theta ** (i / dim)
    att, score_mult = 1.0, 1.0
    if kind == "yarn":
        factor, orig = rp["factor"], rp["original_max_position_embeddings"]
        beta_fast, beta_slow = rp.get("beta_fast", 32), rp.get("beta_slow", 1)

        def corr_dim(rot):
            return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(theta))
        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=DTYPE) - low) / (high - low)).clamp(0, 1)
        extra = 1.0 - ramp  # 1: keep the original frequency, 0: divide it by factor
        inv_freq = inv_freq / factor * (1 - extra) + inv_freq * extra
        m, m_all = rp.get("mscale"), rp.get("mscale_all_dim")
        att = yarn_mscale(factor, m) / yarn_mscale(factor, m_all) if m and m_all else yarn_mscale(factor, 1)
        if m_all:
            score_mult = yarn_mscale(factor, m_all) ** 2
    elif kind != "default":
        raise ValueError(f"rope type {kind} not covered")
    ang = torch.arange(T, dtype=DTYPE)[:, None] * inv_freq[None, :]
    return torch.cos(ang) * att, torch.sin(ang) * att, score_mult


def rope_half(x, cos, sin):
    """rotate_half convention: pairs (j, j + d/2). x [..., T, d]."""
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


def rope_interleaved(x, cos, sin):
    """DeepSeek convention: pairs (2i, 2i+1), kept in place."""
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)


def attend(q, k, v, scale):
    """q [B, nh, T, d], k/v [B, nh, T, *]; causal softmax attention."""
    T = q.shape[2]
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), -math.inf)
    return torch.softmax(s, -1) @ v


def attention(cfg, W, p, x):
    Bsz, T, _ = x.shape
    mt = cfg["model_type"]
    nh = cfg["num_attention_heads"]
    if mt in ("deepseek_v3", "deepseek_v2"):
        nope, rdim, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        if cfg.get("q_lora_rank"):
            q = linear(rms_norm(linear(x, W[p + "q_a_proj.weight"]), W[p + "q_a_layernorm.weight"], 1e-6),
                       W[p + "q_b_proj.weight"])
        else:
            q = linear(x, W[p + "q_proj.weight"])
        q = q.view(Bsz, T, nh, nope + rdim).transpose(1, 2)
        a = linear(x, W[p + "kv_a_proj_with_mqa.weight"])
        c, k_pe = a[..., :cfg["kv_lora_rank"]], a[..., cfg["kv_lora_rank"]:]
        kv = linear(rms_norm(c, W[p + "kv_a_layernorm.weight"], 1e-6), W[p + "kv_b_proj.weight"])
        kv = kv.view(Bsz, T, nh, nope + vd).transpose(1, 2)
        cos, sin, mult = rope_tables(cfg, rdim, T)
        q_pe = rope_interleaved(q[..., nope:], cos, sin)
        k_pe = rope_interleaved(k_pe[:, None], cos, sin).expand(Bsz, nh, T, rdim)
        qq = torch.cat([q[..., :nope], q_pe], -1)
        kk = torch.cat([kv[..., :nope], k_pe], -1)
        o = attend(qq, kk, kv[..., nope:], (nope + rdim) ** -0.5 * mult)
    else:
        nkv = cfg["num_key_value_heads"]
        hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
        eps = cfg["rms_norm_eps"]
        q = linear(x, W[p + "q_proj.weight"], W.get(p + "q_proj.bias"))
        k = linear(x, W[p + "k_proj.weight"], W.get(p + "k_proj.bias"))
        v = linear(x, W[p + "v_proj.weight"], W.get(p + "v_proj.bias"))
        if mt == "olmoe":  # norm over the whole projection, before splitting heads
            q, k = rms_norm(q, W[p + "q_norm.weight"], eps), rms_norm(k, W[p + "k_norm.weight"], eps)
        q = q.view(Bsz, T, nh, hd).transpose(1, 2)
        k = k.view(Bsz, T, nkv, hd).transpose(1, 2)
        v = v.view(Bsz, T, nkv, hd).transpose(1, 2)
        if mt == "qwen3_moe":  # norm over each head
            q, k = rms_norm(q, W[p + "q_norm.weight"], eps), rms_norm(k, W[p + "k_norm.weight"], eps)
        cos, sin, _ = rope_tables(cfg, hd, T)
        q, k = rope_half(q, cos, sin), rope_half(k, cos, sin)
        rep = nh // nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = attend(q, k, v, hd ** -0.5)
    o = o.transpose(1, 2).reshape(Bsz, T, -1)
    return linear(o, W[p + "o_proj.weight"], W.get(p + "o_proj.bias"))


def is_moe_layer(cfg, i):
    mt = cfg["model_type"]
    if mt in ("deepseek_v3", "deepseek_v2"):
        return i >= cfg["first_k_dense_replace"]
    if mt in ("qwen2_moe", "qwen3_moe"):
        return (i not in cfg.get("mlp_only_layers", []) and n_experts(cfg) > 0
                and (i + 1) % cfg["decoder_sparse_step"] == 0)
    return True


def n_experts(cfg):
    for key in ("n_routed_experts", "num_local_experts", "num_experts"):
        if key in cfg:
            return cfg[key]
    raise KeyError("number of experts")


def route(cfg, W, p, z, dev=frozenset()):
    """Router logits z [N, E] (fp64) → selected expert ids [N, k] and weights [N, k].
    `dev` names deliberate deviations, used to prove that the fixtures notice them:
    "zero_fill" (DeepSeek's remote code: dropped groups filled with 0, not −inf), "no_group"
    (plain top-k), "no_bias" (ignore e_score_correction_bias), "flip_norm" (negate norm_topk_prob)."""
    mt, k, E = cfg["model_type"], cfg["num_experts_per_tok"], n_experts(cfg)
    norm = bool(cfg.get("norm_topk_prob")) != ("flip_norm" in dev)
    if mt == "deepseek_v3":
        s = torch.sigmoid(z)
        sc = s if "no_bias" in dev else s + W[p + "gate.e_score_correction_bias"]
        g = cfg["n_group"]
        gscore = sc.view(-1, g, E // g).topk(2, -1).values.sum(-1)
        keep = torch.zeros_like(gscore).scatter(1, gscore.topk(cfg["topk_group"], -1).indices, 1.0)
        keep = keep.repeat_interleave(E // g, 1).bool() | ("no_group" in dev)
        idx = sc.masked_fill(~keep, 0.0 if "zero_fill" in dev else -math.inf).topk(k, -1).indices
        w = s.gather(1, idx)
        if norm:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return idx, w * cfg["routed_scaling_factor"]
    prob = torch.softmax(z, -1)
    if mt == "deepseek_v2":
        # transformers' built-in V2 never renormalises (DeepSeek's code does when k > 1 and
        # norm_topk_prob): the fixtures keep norm_topk_prob false, where both agree.
        masked = prob
        if cfg["topk_method"] == "group_limited_greedy" and "no_group" not in dev:
            g = cfg["n_group"]
            gscore = prob.view(-1, g, E // g).max(-1).values
            keep = torch.zeros_like(gscore).scatter(1, gscore.topk(cfg["topk_group"], -1).indices, 1.0)
            masked = prob * keep.repeat_interleave(E // g, 1)
        idx = masked.topk(k, -1).indices
        w = prob.gather(1, idx)
        if norm and k > 1:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return idx, w * cfg["routed_scaling_factor"]
    idx = prob.topk(k, -1).indices
    w = prob.gather(1, idx)
    if mt == "mixtral" or norm:
        w = w / w.sum(-1, keepdim=True)
    return idx, w


def moe(cfg, W, i, x, router_logits, dev):
    mt = cfg["model_type"]
    p = f"model.layers.{i}.block_sparse_moe." if mt == "mixtral" else f"model.layers.{i}.mlp."
    shp = x.shape
    x = x.reshape(-1, shp[-1])
    z = linear(x, W[p + "gate.weight"])
    router_logits.append(z)
    idx, w = route(cfg, W, p, z, dev)
    out = torch.zeros_like(x)
    for e in range(n_experts(cfg)):
        rows, slot = (idx == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        q = p + f"experts.{e}."
        if mt == "mixtral":
            y = swiglu(x[rows], W[q + "w1.weight"], W[q + "w3.weight"], W[q + "w2.weight"])
        else:
            y = swiglu(x[rows], W[q + "gate_proj.weight"], W[q + "up_proj.weight"], W[q + "down_proj.weight"])
        out = out.index_add(0, rows, y * w[rows, slot, None])
    if mt in ("deepseek_v3", "deepseek_v2"):
        s = p + "shared_experts."
        out = out + swiglu(x, W[s + "gate_proj.weight"], W[s + "up_proj.weight"], W[s + "down_proj.weight"])
    elif mt == "qwen2_moe":
        s = p + "shared_expert."
        shared = swiglu(x, W[s + "gate_proj.weight"], W[s + "up_proj.weight"], W[s + "down_proj.weight"])
        out = out + torch.sigmoid(linear(x, W[p + "shared_expert_gate.weight"])) * shared
    return out.reshape(shp)


def forward(cfg, W, ids=None, embeds=None, dev=frozenset()):
    """Logits [B, T, V], hidden states (HF's list), router logits per MoE layer."""
    x = W["model.embed_tokens.weight"][ids] if embeds is None else embeds
    eps = cfg["rms_norm_eps"]
    hidden, router_logits = [x], []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = x + attention(cfg, W, p + "self_attn.", rms_norm(x, W[p + "input_layernorm.weight"], eps))
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        if is_moe_layer(cfg, i):
            x = x + moe(cfg, W, i, h, router_logits, dev)
        else:
            x = x + swiglu(h, W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"], W[p + "mlp.down_proj.weight"])
        hidden.append(x)
    x = rms_norm(x, W["model.norm.weight"], eps)
    hidden[-1] = x
    return linear(x, W["lm_head.weight"]), hidden, router_logits


def causal_lm_loss(logits, labels):
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100)


def aux_loss(router_logits, E, k):
    z = torch.cat(router_logits, 0)
    prob = torch.softmax(z, -1)
    counts = torch.zeros(E, dtype=DTYPE).index_add(0, prob.topk(k, -1).indices.reshape(-1),
                                                   torch.ones(z.shape[0] * k, dtype=DTYPE))
    return E * ((counts / z.shape[0]) * prob.mean(0)).sum()


def _close(name, got, want, tol):
    want = want.to(DTYPE)
    err = (got.detach() - want).abs().max().item()
    scale = max(want.abs().max().item(), 1e-3)
    if err > tol * scale:
        raise AssertionError(f"{name}: max |naive − HF| = {err:.3g} (scale {scale:.3g})")
    return err / scale


def check_folder(folder, tol=2e-4):
    """Compares the naive recomputation with reference.safetensors; returns the worst relative
    error. Raises AssertionError on a mismatch."""
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    with safe_open(os.path.join(folder, "reference.safetensors"), "pt") as f:
        ref = {k: f.get_tensor(k) for k in f.keys()}
    W = Weights(folder)
    worst = 0.0

    embeds = W["model.embed_tokens.weight"][ref["input_ids"]].detach().requires_grad_(True)
    logits, hidden, rl = forward(cfg, W, embeds=embeds)
    worst = max(worst, _close("logits", logits, ref["logits"], tol))
    for i, h in enumerate(hidden):
        worst = max(worst, _close(f"hidden.{i}", h, ref[f"hidden.{i}"], tol))
    moe_layers = [i for i in range(cfg["num_hidden_layers"]) if is_moe_layer(cfg, i)]
    for i, z in zip(moe_layers, rl):
        p = f"model.layers.{i}.block_sparse_moe." if cfg["model_type"] == "mixtral" else f"model.layers.{i}.mlp."
        worst = max(worst, _close(f"router.{i}.logits", z, ref[f"router.{i}.logits"], tol))
        idx, w = route(cfg, W, p, z.detach())
        order = idx.argsort(-1)
        if not torch.equal(idx.gather(1, order), ref[f"router.{i}.topk_idx"]):
            raise AssertionError(f"router.{i}.topk_idx: another selection")
        worst = max(worst, _close(f"router.{i}.topk_w", w.gather(1, order), ref[f"router.{i}.topk_w"], tol))
    loss = causal_lm_loss(logits, ref["labels"])
    worst = max(worst, _close("loss", loss, ref["loss"], tol))
    grads = torch.autograd.grad(loss, [embeds] + [W[k] for k in W.t if W[k].requires_grad],
                                allow_unused=True, retain_graph=True)
    by_name = dict(zip(["inputs_embeds"] + [k for k in W.t if W[k].requires_grad], grads))
    # The embedding's gradient also collects the lookup: add ∂L/∂embeds rows back per token.
    emb_grad = torch.zeros_like(W["model.embed_tokens.weight"]).index_add(
        0, ref["input_ids"].reshape(-1), by_name["inputs_embeds"].reshape(-1, embeds.shape[-1]))
    by_name["model.embed_tokens.weight"] = emb_grad
    for key in ref:
        if key.startswith("grad."):
            worst = max(worst, _close(key, by_name[key[5:]], ref[key], tol))

    if "aux_loss" in ref:
        E, k = n_experts(cfg), cfg["num_experts_per_tok"]
        aux = aux_loss(rl, E, k)
        worst = max(worst, _close("aux_loss", aux, ref["aux_loss"], tol))
        total = loss + cfg["router_aux_loss_coef"] * aux
        routers = [k for k in ref if k.startswith("grad_aux.")]
        g = torch.autograd.grad(total, [W[k[9:]] for k in routers])
        for key, gk in zip(routers, g):
            worst = max(worst, _close(key, gk, ref[key], tol))

    with torch.no_grad():
        mt = cfg["model_type"]
        if mt == "deepseek_v3":  # the fixtures must not depend on how dropped groups are masked
            alt, _, _ = forward(cfg, W, ids=ref["input_ids"], dev=frozenset({"zero_fill"}))
            worst = max(worst, _close("logits (dropped groups filled with 0)", alt, ref["logits"], tol))
        must_notice = {"deepseek_v3": ("no_group", "no_bias", "flip_norm"), "deepseek_v2": ("no_group",),
                       "qwen3_moe": ("flip_norm",), "qwen2_moe": ("flip_norm",), "olmoe": ("flip_norm",)}
        for dev in must_notice.get(mt, ()):
            alt, _, _ = forward(cfg, W, ids=ref["input_ids"], dev=frozenset({dev}))
            err = (alt - ref["logits"].to(DTYPE)).abs().max().item()
            if err < 100 * tol * ref["logits"].abs().max().item():
                raise AssertionError(f"the fixture cannot tell the deviation {dev!r} apart (logits move {err:.3g})")
        seq = ref["generate_prompt"].clone()
        while seq.shape[1] < ref["generate_greedy"].shape[1]:
            nxt = forward(cfg, W, ids=seq)[0][:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        if not torch.equal(seq, ref["generate_greedy"]):
            raise AssertionError(f"greedy continuation {seq.tolist()} != {ref['generate_greedy'].tolist()}")
    return worst
