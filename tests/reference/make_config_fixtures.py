#!/usr/bin/env python3
"""make_config_fixtures.py — writes tests/fixtures/configs/: config.json files for the six
families and the values transformers derives from them, the reference test_config.c checks
mt_config_load, mt_config_param_count and mt_config_flops_per_token against.

  * published/*.json   config.json of real checkpoints as their authors published them
                       (transformers 4.x spelling: rope_theta + rope_scaling, torch_dtype)
  * resaved/*.json     the same configs loaded and saved again by transformers 5
                       (rope_parameters, dtype, only the keys that differ from the defaults)
  * minimal/*.json     hand-written configs holding only the keys moetune requires, so
                       that every other value comes from transformers' class defaults
  * tiny/*.json        small configs built with transformers' own config classes, saved by
                       save_pretrained (diff against the class defaults, so absent keys test
                       the defaults), each exercising one family's features
  * expected.txt       one line per fact: "<fixture> <key> <values...>", computed by
                       transformers from the instantiated model (parameter counts from the
                       model on the meta device, MoE layers from the modules it built, FLOPs
                       from torch's FlopCounterMode on a real forward pass)

Run with /work/venv/bin/python (transformers 5.23, torch 2.x, CPU). The test suite reads
only the files; it never runs this script.
"""
import json
import os
import shutil
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (AutoConfig, AutoModelForCausalLM, DeepseekV2Config, DeepseekV3Config, MixtralConfig,
                          OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "configs")

# config.json of published checkpoints, as on the Hugging Face Hub (auto_map and
# quantization details of DeepSeek-V3 left out: they do not describe the architecture).
PUBLISHED = {
    "deepseek-v3": {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
        "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
        "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "pretraining_tp": 1,
        "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "original_max_position_embeddings": 4096, "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
        "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
    },
    "deepseek-v2-lite": {
        "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2",
        "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
        "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16, "num_experts_per_tok": 6,
        "num_hidden_layers": 27, "num_key_value_heads": 16, "pretraining_tp": 1, "q_lora_rank": None,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                         "original_max_position_embeddings": 4096, "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": True,
        "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 102400,
    },
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
        "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
        "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128,
        "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    "qwen1.5-moe-a2.7b": {
        "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 5632, "max_position_embeddings": 8192, "max_window_layers": 21,
        "model_type": "qwen2_moe", "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.39.0.dev0", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 151936, "decoder_sparse_step": 1, "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632, "num_experts_per_tok": 4, "num_experts": 60,
        "norm_topk_prob": False, "output_router_logits": False, "router_aux_loss_coef": 0.001,
    },
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
        "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
        "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.36.0.dev0", "use_cache": True, "vocab_size": 32000,
    },
    "olmoe-1b-7b": {
        "architectures": ["OlmoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "clip_qkv": None, "eos_token_id": 50279, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 1024, "max_position_embeddings": 4096,
        "model_type": "olmoe", "norm_topk_prob": False, "num_attention_heads": 16, "num_experts": 64,
        "num_experts_per_tok": 8, "num_hidden_layers": 16, "num_key_value_heads": 16,
        "output_router_logits": False, "pad_token_id": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 10000.0, "router_aux_loss_coef": 0.01, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 50304,
    },
}

# Only the keys moetune requires; head counts chosen so the class defaults for
# num_key_value_heads (DeepSeek-V3 128, Qwen3 4, Qwen2 16, Mixtral 8) fit them.
MINIMAL = {
    "deepseek_v3": {"model_type": "deepseek_v3", "vocab_size": 64, "hidden_size": 256, "intermediate_size": 64,
                    "num_hidden_layers": 5, "num_attention_heads": 128, "n_routed_experts": 16,
                    "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "deepseek_v2": {"model_type": "deepseek_v2", "vocab_size": 64, "hidden_size": 64, "intermediate_size": 64,
                    "num_hidden_layers": 3, "num_attention_heads": 4, "n_routed_experts": 8,
                    "num_experts_per_tok": 3, "moe_intermediate_size": 16},
    "qwen3_moe": {"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 64, "intermediate_size": 64,
                  "num_hidden_layers": 3, "num_attention_heads": 8, "num_experts": 8, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 16},
    "qwen2_moe": {"model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 64, "intermediate_size": 64,
                  "num_hidden_layers": 3, "num_attention_heads": 16, "num_experts": 8, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 16},
    "mixtral": {"model_type": "mixtral", "vocab_size": 64, "hidden_size": 64, "intermediate_size": 32,
                "num_hidden_layers": 2, "num_attention_heads": 8, "num_local_experts": 4, "num_experts_per_tok": 2},
    "olmoe": {"model_type": "olmoe", "vocab_size": 64, "hidden_size": 64, "intermediate_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_experts": 8, "num_experts_per_tok": 2},
}

# Small configs from the config classes, each with its family's distinctive features.
TINY = {
    "deepseek_v3": DeepseekV3Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, routed_scaling_factor=1.5, max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0,
                         "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 0.5}),
    "deepseek_v3-halfrope": DeepseekV3Config(
        vocab_size=80, hidden_size=32, intermediate_size=40, moe_intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, num_experts_per_tok=1, n_group=2,
        topk_group=1, first_k_dense_replace=0, q_lora_rank=None, kv_lora_rank=8, qk_nope_head_dim=4,
        qk_rope_head_dim=4, v_head_dim=4, rope_interleave=False, norm_topk_prob=False, tie_word_embeddings=True,
        eos_token_id=[1, 7]),
    "deepseek_v2": DeepseekV2Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=4, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2,
        topk_method="group_limited_greedy", n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=None,
        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, routed_scaling_factor=2.0),
    "qwen3_moe": Qwen3MoeConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, mlp_only_layers=[2], max_position_embeddings=512),
    "qwen2_moe": Qwen2MoeConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        num_experts=8, num_experts_per_tok=2, decoder_sparse_step=2, mlp_only_layers=[3],
        max_position_embeddings=512),
    "mixtral": MixtralConfig(
        vocab_size=96, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=64,
        rope_parameters={"rope_type": "linear", "rope_theta": 20000.0, "factor": 2.0}),
    "olmoe": OlmoeConfig(
        vocab_size=96, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_experts=8, num_experts_per_tok=3, norm_topk_prob=True),
}

FLOP_T = 12


def model_facts(cfg, meta):
    """Parameter count, active parameters and MoE layers of the model transformers builds."""
    with torch.device("meta" if meta else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    # e_score_correction_bias is a buffer, but stored in checkpoints: moetune counts it
    total += sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    inactive = 0
    moe = []
    for layer in model.model.layers:
        experts = getattr(layer.mlp, "experts", None)
        moe.append(1 if experts is not None else 0)
        if experts is not None:
            n_exp = experts.gate_up_proj.shape[0]
            per_expert = sum(p.numel() for p in experts.parameters()) // n_exp
            inactive += (n_exp - cfg.num_experts_per_tok) * per_expert
    return model, total, total - inactive, moe


def flops_per_token(cfg):
    """Forward FLOPs per token at FLOP_T: matmuls counted by torch, attention scores and
    values taken at half the square (the causal average) as moetune defines it."""
    cfg = type(cfg).from_dict(cfg.to_dict())
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, FLOP_T))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(ids)
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    mm = sum(v for k, v in counts.items() if k in ("aten.mm", "aten.addmm"))
    bmm = counts.get("aten.bmm", 0)
    assert set(counts) <= {"aten.mm", "aten.addmm", "aten.bmm"}, counts
    return (mm + bmm / 2) / FLOP_T


def rope_facts(cfg):
    rp = cfg.rope_parameters
    facts = {"rope_theta": rp["rope_theta"], "rope_type": rp["rope_type"]}
    if rp["rope_type"] != "default":
        facts["rope_factor"] = rp["factor"]
    if rp["rope_type"] == "yarn":
        facts["yarn_orig"] = rp["original_max_position_embeddings"]
        facts["yarn_beta_fast"] = rp.get("beta_fast") or 32
        facts["yarn_beta_slow"] = rp.get("beta_slow") or 1
        facts["yarn_mscale"] = rp.get("mscale") or 0
        facts["yarn_mscale_all_dim"] = rp.get("mscale_all_dim") or 0
    return facts


def config_facts(cfg, model):
    attn = model.model.layers[0].self_attn
    mla = hasattr(attn, "kv_a_proj_with_mqa")
    eos = cfg.eos_token_id
    eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
    facts = {
        "n_layers": cfg.num_hidden_layers,
        "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads,
        "qk_head_dim": attn.qk_head_dim if mla else attn.head_dim,
        "v_head_dim": attn.v_head_dim if mla else attn.head_dim,
        "head_dim": cfg.qk_rope_head_dim if mla else attn.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_pos": cfg.max_position_embeddings,
        "tie": int(bool(cfg.tie_word_embeddings)),
        "bos": -1 if cfg.bos_token_id is None else cfg.bos_token_id,
        "eos": eos,
        "top_k": cfg.num_experts_per_tok,
        "sliding_window": getattr(cfg, "sliding_window", None) or 0,
    }
    if mla:
        facts["q_lora_rank"] = cfg.q_lora_rank or 0
        facts["kv_lora_rank"] = cfg.kv_lora_rank
        facts["interleaved"] = int(bool(getattr(cfg, "rope_interleave", True)))
    facts.update(rope_facts(cfg))
    return facts


def fmt(v):
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (list, tuple)):
        return " ".join(fmt(x) for x in v) if v else "-"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    for sub in ("published", "resaved", "minimal", "tiny"):
        os.makedirs(os.path.join(OUT, sub))
    lines = []

    def record(name, cfg, meta, flops):
        model, total, active, moe = model_facts(cfg, meta)
        facts = config_facts(cfg, model)
        facts.update({"params": total, "active": active, "moe_layers": moe})
        if flops:
            facts["flops_t"] = [FLOP_T, flops_per_token(cfg)]
        for k, v in facts.items():
            lines.append(f"{name} {k} {fmt(v)}")

    for name, raw in PUBLISHED.items():
        path = os.path.join(OUT, "published", name + ".json")
        with open(path, "w") as f:
            json.dump(raw, f, indent=2)
            f.write("\n")
        cfg = AutoConfig.from_pretrained(path)
        record("published/" + name + ".json", cfg, meta=True, flops=False)
        resaved = os.path.join(OUT, "resaved", name)
        cfg.save_pretrained(resaved)
        os.rename(os.path.join(resaved, "config.json"), resaved + ".json")
        os.rmdir(resaved)
        record("resaved/" + name + ".json", AutoConfig.from_pretrained(resaved + ".json"), meta=True, flops=False)

    for name, raw in MINIMAL.items():
        path = os.path.join(OUT, "minimal", name + ".json")
        with open(path, "w") as f:
            json.dump(raw, f, indent=2)
            f.write("\n")
        record("minimal/" + name + ".json", AutoConfig.from_pretrained(path), meta=True, flops=False)

    for name, cfg in TINY.items():
        d = os.path.join(OUT, "tiny", name)
        cfg.save_pretrained(d)
        os.rename(os.path.join(d, "config.json"), d + ".json")
        os.rmdir(d)
        record("tiny/" + name + ".json", AutoConfig.from_pretrained(d + ".json"), meta=False, flops=True)

    with open(os.path.join(OUT, "expected.txt"), "w") as f:
        f.write("# made by tests/reference/make_config_fixtures.py with transformers "
                + __import__("transformers").__version__ + "\n")
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} facts to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
