#!/usr/bin/env python3
"""make_peft_fixtures.py — the PEFT reference for moetune's LoRA (peft/).

Two directions, both against the model fixtures of tests/fixtures/models/ (fp32, eager):

made/<variant>/    an adapter made by PEFT 0.21 on transformers 5 (random non-zero A and B,
                   rank_pattern / alpha_pattern, rsLoRA, routers, fused routed experts through
                   target_parameters, shared experts and dense MLPs as 2-D target_parameters),
                   saved with save_pretrained, plus reference.safetensors: the adapted model's
                   logits, its loss on the fixture labels and every LoRA gradient of that loss.
export/<variant>/  an adapter written by moetune (tests/test_peft_parity.c writes it; this
                   script is run with --export-check on that folder), plus reference.safetensors:
                   the logits of an independent computation (W + scale·B·A merged into the
                   on-disk weights and loaded by plain transformers) and, where PEFT can load
                   the adapter, PEFT's logits; the script asserts which of these agree.

Rerun (see tests/fixtures/peft/README.md for the layout and every tensor's meaning):
  /work/venv/bin/python tests/reference/make_peft_fixtures.py                 # made/
  build/tests/test_peft_parity                                                # writes exports
  /work/venv/bin/python tests/reference/make_peft_fixtures.py \\
        --export-check build/test-tmp/test_peft_parity_export                   # export/
Seeds are fixed, torch runs on one thread, and the script re-executes itself with
PYTHONHASHSEED=0 because PEFT writes target_modules from a Python set.
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

sys.dont_write_bytecode = True

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer, ParamWrapper  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from make_model_fixtures import MIN_REL_GAP, routing_margin, save_safetensors  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
MODELS = os.path.join(FIXTURES, "models")
OUT = os.path.join(FIXTURES, "peft")
MAX_ATTEMPTS = 32

# PEFT-made adapters. Everything PEFT 0.21 can attach on transformers 5 is covered: attention
# (MLA's four projections too) through target_modules; the router, the fused routed experts,
# shared experts and dense MLPs through target_parameters (on transformers 5 the names
# gate_proj/up_proj/down_proj in target_modules are rewritten to the fused routed experts,
# so a shared expert or a dense MLP can only be reached as a 2-D parameter). Mixtral goes
# through that rewriting on purpose: "w1"/"w3"/"w2"/"gate" become fused target_parameters with
# r and alpha doubled for gate_up_proj.
MADE = {
    "deepseek_v3": dict(
        seed=7000, r=4, lora_alpha=8, use_rslora=False,
        target_modules=["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"],
        target_parameters=["gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj",
                           "shared_experts.gate_proj.weight", "shared_experts.up_proj.weight",
                           "shared_experts.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                           "mlp.down_proj.weight"],
        rank_pattern={"q_b_proj": 2, r".*\.gate_up_proj": 3},
        alpha_pattern={"kv_b_proj": 3, "o_proj": 12, r".*\.experts\.down_proj": 5}),
    "qwen3_moe": dict(
        seed=7100, r=4, lora_alpha=6, use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
        rank_pattern={"k_proj": 2}, alpha_pattern={"v_proj": 3.5}),
    "mixtral": dict(
        seed=7200, r=4, lora_alpha=8, use_rslora=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w3", "w2", "gate"],
        target_parameters=None, rank_pattern={"q_proj": 2}, alpha_pattern={}),
    "qwen2_moe": dict(
        seed=7300, r=3, lora_alpha=5, use_rslora=False,
        target_modules=["q_proj", "v_proj", "shared_expert_gate"],
        target_parameters=["shared_expert.gate_proj.weight", "shared_expert.up_proj.weight",
                           "shared_expert.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                           "mlp.down_proj.weight"],
        rank_pattern={}, alpha_pattern={"shared_expert_gate": 2}),
}

# moetune-exported adapters (made by tests/test_peft_parity.c) and whether PEFT 0.21 on
# transformers 5 reproduces them; where it does not, the reason (the independent merged-weights
# computation is the reference then).
EXPORTS = {
    "deepseek_v3": None,
    "mixtral": None,
    "qwen3_moe": "rsLoRA on routed experts: PEFT fuses gate+up into rank 2r with alpha doubled, "
                 "which keeps alpha/r but not alpha/sqrt(r), so the experts get sqrt(2) times the delta",
    "qwen2_moe": "shared expert and dense MLP: PEFT rewrites gate_proj/up_proj/down_proj in target_modules "
                 "to the fused routed experts, so those modules' LoRA weights are dropped",
}


class FixtureError(Exception):
    pass


def load_model(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager", local_files_only=True)
    return model.eval()


def model_inputs(variant):
    ref = load_file(os.path.join(MODELS, variant, "reference.safetensors"))
    return ref["input_ids"], ref["labels"]


# ------------------------------------------------------------------------------------------
# names: transformers 5 in memory versus moetune (= the per-expert names on disk)
# ------------------------------------------------------------------------------------------

def moetune_module(model_type, module):
    return module.replace(".mlp.", ".block_sparse_moe.") if model_type == "mixtral" else module


def expert_leaves(model_type):
    return ("w1", "w3", "w2") if model_type == "mixtral" else ("gate_proj", "up_proj", "down_proj")


def tensor_name(module, which):
    return f"base_model.model.{module}.lora_{which}.weight"


def lora_layers(pm):
    """(module path without the PEFT prefix, layer) for every LoRA layer of the adapter."""
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            yield name.removeprefix("base_model.model."), mod


def fused(mod):
    return isinstance(mod, ParamWrapper) and mod.num_experts > 1


def container(path):
    while path.endswith(".base_layer"):
        path = path[: -len(".base_layer")]
    return path


# ------------------------------------------------------------------------------------------
# PEFT-made adapters
# ------------------------------------------------------------------------------------------

def randomize(pm, gen):
    """Non-zero A and B of O(1) effect: A ~ N(0, 1/in), B ~ N(0, 0.3²/r) (r per expert)."""
    with torch.no_grad():
        for _, mod in lora_layers(pm):
            A, Bm = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            r = mod.r["default"]
            A.copy_(torch.randn(A.shape, generator=gen) / math.sqrt(A.shape[1]))
            Bm.copy_(torch.randn(Bm.shape, generator=gen) * (0.3 / math.sqrt(r)))


def route_margin(model_type, pm, input_ids):
    """Worst routing gap with the adapter on, read from the routers' own outputs (PEFT wraps a
    targeted router, so the hook goes on the wrapped module)."""
    records, handles = [], []
    for layer in pm.get_base_model().model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is None:
            continue
        base = gate.get_base_layer() if isinstance(gate, LoraLayer) else gate
        if not hasattr(base, "top_k"):
            continue
        bias = getattr(base, "e_score_correction_bias", None)
        handles.append(base.register_forward_hook(
            lambda _m, _i, out, bias=bias: records.append((out[0].detach().clone(), bias))))
    try:
        with torch.no_grad():
            pm(input_ids=input_ids)
    finally:
        for h in handles:
            h.remove()
    worst = math.inf
    for logits, bias in records:
        gap, min_sel = routing_margin(model_type, pm.config, logits, bias)
        worst = min(worst, gap, min_sel if model_type == "deepseek_v3" else math.inf)
    return worst


def made_reference(model_type, pm, input_ids, labels):
    pm.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits = pm(input_ids=input_ids).logits.float()
    out = pm(input_ids=input_ids, labels=labels)
    out.loss.backward()
    ref = {"input_ids": input_ids, "labels": labels, "logits": logits.contiguous(),
           "loss": out.loss.detach().float().reshape(())}
    n_grads = lora_grads(model_type, pm, ref)
    return ref, n_grads


def lora_grads(model_type, pm, ref):
    """Every LoRA gradient after a backward, into ref under moetune's tensor names ("grad.<name>",
    "gradsum.<gate>+<up>" where PEFT's fused experts share one A); returns how many."""
    n_grads = 0
    for path, mod in lora_layers(pm):
        dA, dB = mod.lora_A["default"].weight.grad, mod.lora_B["default"].weight.grad
        if dA is None or dB is None:
            raise FixtureError(f"{path}: no gradient reached the adapter")
        if not fused(mod):
            module = moetune_module(model_type, path)
            ref["grad." + tensor_name(module, "A")] = dA.clone()
            ref["grad." + tensor_name(module, "B")] = dB.clone()
            n_grads += 2
            continue
        # PEFT's layout: lora_A [r·E, in] expert-major, lora_B [out, r·E] expert-minor
        E, r = mod.num_experts, mod.r["default"]
        dA_e = dA.reshape(E, r, dA.shape[1])
        dB_e = dB.reshape(dB.shape[0], r, E).permute(2, 0, 1)
        base = moetune_module(model_type, container(path))
        gate, up, down = expert_leaves(model_type)
        for e in range(E):
            if mod.parameter_name == "gate_up_proj":
                inter = dB.shape[0] // 2
                ga, ua = tensor_name(f"{base}.{e}.{gate}", "A"), tensor_name(f"{base}.{e}.{up}", "A")
                # gate and up share this A in PEFT; moetune gives each a copy: their sum is this
                ref[f"gradsum.{ga}+{ua}"] = dA_e[e].clone()
                ref["grad." + tensor_name(f"{base}.{e}.{gate}", "B")] = dB_e[e][:inter].clone()
                ref["grad." + tensor_name(f"{base}.{e}.{up}", "B")] = dB_e[e][inter:].clone()
            elif mod.parameter_name == "down_proj":
                ref["grad." + tensor_name(f"{base}.{e}.{down}", "A")] = dA_e[e].clone()
                ref["grad." + tensor_name(f"{base}.{e}.{down}", "B")] = dB_e[e].clone()
            else:
                raise FixtureError(f"{path}: unexpected fused parameter {mod.parameter_name}")
            n_grads += 3
    return n_grads


def write_made(variant, spec):
    folder = os.path.join(OUT, "made", variant)
    input_ids, labels = model_inputs(variant)
    model_type = json.load(open(os.path.join(MODELS, variant, "config.json")))["model_type"]
    for attempt in range(MAX_ATTEMPTS):
        seed = spec["seed"] + attempt
        gen = torch.Generator().manual_seed(seed)
        cfg = LoraConfig(r=spec["r"], lora_alpha=spec["lora_alpha"], use_rslora=spec["use_rslora"],
                         target_modules=spec["target_modules"], target_parameters=spec["target_parameters"],
                         rank_pattern=dict(spec["rank_pattern"]), alpha_pattern=dict(spec["alpha_pattern"]),
                         lora_dropout=0.0, task_type="CAUSAL_LM")
        pm = get_peft_model(load_model(os.path.join(MODELS, variant)), cfg)
        randomize(pm, gen)
        pm.eval()
        gap = route_margin(model_type, pm, input_ids)
        if gap > MIN_REL_GAP:
            break
    else:
        raise FixtureError(f"made/{variant}: no seed without a near-tie routing choice")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    # a path that means the same on every checkout; the model card PEFT adds is boilerplate
    pm.peft_config["default"].base_model_name_or_path = f"tests/fixtures/models/{variant}"
    pm.save_pretrained(folder)
    os.remove(os.path.join(folder, "README.md"))
    # The reference comes from the folder as written, loaded the way a user would load it.
    pm2 = PeftModel.from_pretrained(load_model(os.path.join(MODELS, variant)), folder, is_trainable=True).eval()
    for (n1, p1), (n2, p2) in zip(sorted(pm.state_dict().items()), sorted(pm2.state_dict().items())):
        if n1 != n2 or not torch.equal(p1, p2):
            raise FixtureError(f"made/{variant}: {n1} changed through save_pretrained/from_pretrained")
    with torch.no_grad():
        base_logits = load_model(os.path.join(MODELS, variant))(input_ids=input_ids).logits
    ref, n_grads = made_reference(model_type, pm2, input_ids, labels)
    moved = (ref["logits"] - base_logits).abs().max().item()
    meta = {"variant": variant, "model_type": model_type, "seed": str(seed), "peft": peft.__version__,
            "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "route_gap_min": f"{gap:.6g}", "adapter_moves_logits_by": f"{moved:.6g}",
            "label_shift": "targets[t] = labels[t+1]; the last position has no target"}
    save_safetensors({k: v.detach().contiguous() for k, v in ref.items()},
                     os.path.join(folder, "reference.safetensors"), meta)
    return seed, gap, moved, n_grads


# ------------------------------------------------------------------------------------------
# moetune-exported adapters
# ------------------------------------------------------------------------------------------

def pattern_value(patterns, key, default):
    """PEFT's get_pattern_key, written again from its documented rule."""
    for pat, value in patterns.items():
        if re.match(rf"(.*\.)?({pat})$", key):
            return value
    return default


def independent_logits(variant, adapter, input_ids):
    """The adapter merged by hand into the per-expert weights on disk: W += s·B·A with
    s = alpha/r (alpha/√r with rsLoRA), r and alpha per module from the patterns; the merged
    checkpoint is then loaded by plain transformers, no PEFT involved."""
    cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
    lora = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    weights = load_file(os.path.join(MODELS, variant, "model.safetensors"))
    modules = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in lora})
    for module in modules:
        A = lora[tensor_name(module, "A")].double()
        Bm = lora[tensor_name(module, "B")].double()
        r = pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
        alpha = pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
        if A.shape[0] != r:
            raise FixtureError(f"{adapter}: {module} has rank {A.shape[0]}, the config says {r}")
        s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        w = module + ".weight"
        weights[w] = (weights[w].double() + s * (Bm @ A)).float()
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("config.json", "generation_config.json"):
            shutil.copy(os.path.join(MODELS, variant, f), tmp)
        save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with torch.no_grad():
            return load_model(tmp)(input_ids=input_ids).logits.float(), len(modules)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def export_check(src_root):
    results = []
    for variant, known_problem in EXPORTS.items():
        src = os.path.join(src_root, f"export_{variant}")
        if not os.path.isfile(os.path.join(src, "adapter_config.json")):
            raise FixtureError(f"{src}: no adapter_config.json (run build/tests/test_peft_parity first)")
        folder = os.path.join(OUT, "export", variant)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        for f in ("adapter_config.json", "adapter_model.safetensors", "moetune.json"):
            shutil.copy(os.path.join(src, f), folder)
        input_ids, _ = model_inputs(variant)
        want, n_modules = independent_logits(variant, folder, input_ids)
        with torch.no_grad():
            base = load_model(os.path.join(MODELS, variant))(input_ids=input_ids).logits.float()
        tensors = {"input_ids": input_ids, "logits": want.contiguous()}
        meta = {"variant": variant, "peft": peft.__version__, "torch": torch.__version__.split("+")[0],
                "transformers": transformers.__version__, "modules": str(n_modules),
                "adapter_moves_logits_by": f"{(want - base).abs().max().item():.6g}"}
        try:
            pm = PeftModel.from_pretrained(load_model(os.path.join(MODELS, variant)), folder).eval()
            with torch.no_grad():
                got = pm(input_ids=input_ids).logits.float()
            err = rel_err(got, want)
            meta["peft_vs_independent"] = f"{err:.3g}"
            if known_problem is None:
                tensors["peft_logits"] = got.contiguous()
        except (ValueError, RuntimeError, KeyError) as e:
            err = math.inf
            meta["peft_error"] = str(e)[:500]
        if known_problem is None and not err < 1e-5:
            raise FixtureError(f"export/{variant}: PEFT's logits differ from the independent merge by {err:.3g}")
        if known_problem is not None:
            if err < 1e-3:
                raise FixtureError(f"export/{variant}: PEFT now reproduces it ({err:.3g}); update EXPORTS and the docs")
            meta["peft_known_problem"] = known_problem
        save_safetensors(tensors, os.path.join(folder, "reference.safetensors"), meta)
        results.append((variant, err, known_problem))
    return results


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(MADE), help="make only these PEFT adapters")
    ap.add_argument("--export-check", metavar="DIR",
                    help="folder holding export_<variant>/ adapters written by tests/test_peft_parity")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        if args.export_check:
            for variant, err, problem in export_check(args.export_check):
                verdict = "PEFT agrees" if problem is None else f"PEFT differs as documented ({problem[:40]}...)"
                print(f"export/{variant:12s} PEFT vs independent rel err {err:.3g}: {verdict}")
            return 0
        for variant in args.only or list(MADE):
            seed, gap, moved, n_grads = write_made(variant, MADE[variant])
            print(f"made/{variant:12s} seed {seed}  route gap {gap:.3g}  adapter moves logits by {moved:.3g}  "
                  f"{n_grads} gradient tensors")
    except FixtureError as e:
        print(f"make_peft_fixtures: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
