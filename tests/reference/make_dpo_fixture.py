#!/usr/bin/env python3
"""make_dpo_fixture.py — the DPO reference for moetune's preference trainer on a real model.

The PEFT-made adapter tests/fixtures/peft/made/deepseek_v3 (attention incl. MLA, the router, the
fused routed experts, shared experts and the dense MLP, all with non-zero A and B) on the model
fixture tests/fixtures/models/deepseek_v3, loaded by PEFT 0.21 on transformers 5 (fp32, eager).
Two pairs of one prompt and two completions each, as token ids; the policy is the adapted
model, the reference the same model with the adapter disabled (TRL's reference when a
peft_config is given). TRL's sigmoid DPO loss with beta 0.1 on the completion-summed log-probs
(TRL's DPOTrainer: logits shifted by one, the prompt masked) and every LoRA gradient of it by
autograd go to tests/fixtures/peft/made/deepseek_v3/dpo_reference.safetensors:

  dpo.input_ids  [4, 12] int64   rows: chosen of pair 0, chosen of pair 1, rejected of 0, of 1
  dpo.prompt_len []      int64   prompt tokens of every row (the completion follows)
  dpo.loss       []      f32     the mean over the pairs
  dpo.policy     [4]     f32     summed completion log-probs under the policy
  dpo.reference  [4]     f32     the same under the reference
  grad.* / gradsum.*             as make_peft_fixtures.py names them

tests/test_dpo_parity.c matches it (1e-4 relative on the loss and log-probs, 1e-3 on gradients).
TRL's own loss code is checked against the same formula on fixed log-probs by make_rl_fixtures.py.
Rerun: /work/venv/bin/python tests/reference/make_dpo_fixture.py
"""

import json
import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import PeftModel  # noqa: E402

import make_peft_fixtures as mp  # noqa: E402
from make_model_fixtures import save_safetensors  # noqa: E402

VARIANT = "deepseek_v3"
PROMPT = 5
BETA = 0.1


def summed_logps(model, ids):
    logits = model(input_ids=ids).logits.float()
    logp = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = torch.zeros_like(logp)
    mask[:, PROMPT - 1:] = 1.0  # positions whose next token is a completion token
    return (logp * mask).sum(-1)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    folder = os.path.join(mp.OUT, "made", VARIANT)
    cfg = json.load(open(os.path.join(mp.MODELS, VARIANT, "config.json")))
    model = PeftModel.from_pretrained(mp.load_model(os.path.join(mp.MODELS, VARIANT)), folder,
                                      is_trainable=True).eval()
    gen = torch.Generator().manual_seed(7)
    V, T = cfg["vocab_size"], 12
    prompts = torch.randint(3, V, (2, PROMPT), generator=gen)
    chosen = torch.randint(3, V, (2, T - PROMPT), generator=gen)
    rejected = torch.randint(3, V, (2, T - PROMPT), generator=gen)
    ids = torch.cat([torch.cat([prompts, chosen], 1), torch.cat([prompts, rejected], 1)], 0)
    model.zero_grad(set_to_none=True)
    policy = summed_logps(model, ids)
    with torch.no_grad(), model.disable_adapter():
        reference = summed_logps(model, ids)
    margin = (policy[:2] - reference[:2]) - (policy[2:] - reference[2:])
    loss = -F.logsigmoid(BETA * margin).mean()
    loss.backward()
    ref = {"dpo.input_ids": ids.contiguous(), "dpo.prompt_len": torch.tensor(PROMPT, dtype=torch.int64),
           "dpo.loss": loss.detach().float().reshape(()), "dpo.policy": policy.detach().float(),
           "dpo.reference": reference.float()}
    n = mp.lora_grads(cfg["model_type"], model, ref)
    meta = {"variant": VARIANT, "beta": str(BETA), "loss_type": "sigmoid", "pairs": "2",
            "torch": torch.__version__.split("+")[0]}
    save_safetensors({k: v.detach().contiguous() for k, v in ref.items()},
                     os.path.join(folder, "dpo_reference.safetensors"), meta)
    print(f"made/{VARIANT}/dpo_reference.safetensors: loss {loss.item():.6f}, margins "
          f"{margin.detach().tolist()}, {n} LoRA gradients")


if __name__ == "__main__":
    main()
