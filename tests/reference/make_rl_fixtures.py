#!/usr/bin/env python3
"""make_rl_fixtures.py — reference values for tests/test_rl.c, computed by TRL's own loss code.

DPO (every loss type, and a weighted list), SimPO (CPOTrainer.cpo_loss), ORPO
(ORPOTrainer.odds_ratio_loss), the reward model (RewardTrainer.compute_loss) and GRPO
(GRPOTrainer._compute_loss) are run as TRL 1.16 ships them, on fixed log-probs, through small
stand-ins for the model and the accelerator; torch autograd gives the gradients. PPO is no
longer part of TRL 1.16, so its pieces (masked_whiten, the reward layout, GAE, the clipped
losses) are transcribed line for line from trl/experimental/ppo/ppo_trainer.py as it was last
published; the entropy uses trl.trainer.utils.entropy_from_logits.

Writes tests/fixtures/rl/rl_reference.json. The test suite reads the JSON and never needs
Python. Run: /work/venv/bin/python tests/reference/make_rl_fixtures.py
"""
import json
import math
import os
import sys
from collections import defaultdict
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import trl
from trl import DPOTrainer, GRPOTrainer, RewardTrainer
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl.trainer.utils import entropy_from_logits, nanstd

torch.manual_seed(1234)
DT = torch.float64
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "rl", "rl_reference.json")


def f32(t):
    """Round to float32 and back: the C side reads float inputs, so both see the same values."""
    return t.to(torch.float32).to(DT)


def lst(t):
    return [None if (isinstance(v, float) and math.isnan(v)) else v for v in t.detach().reshape(-1).tolist()]


class Acc:
    """The accelerator calls the trainers make, for one process."""

    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def stub(**kw):
    s = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=Acc(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        aux_loss_enabled=False,
    )
    for k, v in kw.items():
        setattr(s, k, v)
    return s


# ------------------------------------------------------------------ DPO family
N, T = 8, 9
prompt_len = [2, 3, 1, 2, 4, 2, 3, 1, 2, 2, 1, 3, 1, 2, 3, 2]  # chosen rows then rejected rows
comp_len = [4, 5, 3, 6, 2, 5, 3, 6, 4, 2, 5, 4, 7, 1, 5, 3]
policy_sum = f32(torch.empty(2 * N, dtype=DT).uniform_(-24, -4))
ref_sum = f32(policy_sum + torch.empty(2 * N, dtype=DT).uniform_(-6, 6))
completion_mask = torch.zeros(2 * N, T, dtype=torch.long)
for j in range(2 * N):
    completion_mask[j, prompt_len[j] : prompt_len[j] + comp_len[j]] = 1
shift_mask = completion_mask[:, 1:]
# per-token log-probs whose completion-token sum is exactly policy_sum
per_tok = torch.zeros(2 * N, T - 1, dtype=DT)
for j in range(2 * N):
    idx = shift_mask[j].nonzero().flatten()
    parts = torch.rand(len(idx), dtype=DT) + 0.1
    per_tok[j, idx] = policy_sum[j] * parts / parts.sum()


def run_dpo(loss_types, loss_weights, beta, ls, tau=0.05, fdiv="reverse_kl", f_alpha=0.5, ld_alpha=None):
    # TRL's alpha_divergence picks its clamp bound from a table without float64: run it in float32
    dt = torch.float32 if fdiv == "alpha_divergence" else DT
    P = per_tok.to(dt).clone().requires_grad_(True)
    ref_c = ref_sum[:N].to(dt).clone().requires_grad_(True)
    ref_r = ref_sum[N:].to(dt).clone().requires_grad_(True)

    def model(**kw):
        lp = P * shift_mask  # TRL's fused head returns 0 at ignored labels
        return SimpleNamespace(
            log_probs=lp,
            entropy=torch.zeros_like(lp),
            mean_logits=torch.zeros_like(lp),
            is_top1=torch.zeros_like(lp, dtype=torch.bool),
        )

    s = stub(
        precompute_ref_logps=True,
        ld_alpha=ld_alpha,
        f_divergence_type=fdiv,
        f_alpha_divergence_coef=f_alpha,
        loss_types=loss_types,
        loss_weights=loss_weights,
        beta=beta,
        label_smoothing=ls,
        use_weighting=False,
        args=SimpleNamespace(discopop_tau=tau),
    )
    inputs = {
        "input_ids": torch.zeros(2 * N, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * N, T, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }
    loss = DPOTrainer._compute_loss(s, model, inputs, False)
    loss.backward()
    # d loss / d summed log-prob = the gradient of any one of its completion tokens
    g = (P.grad.to(DT) * shift_mask).sum(1) / shift_mask.sum(1)
    m = {k: v[-1] for k, v in s._metrics["train"].items() if k.startswith(("rewards/", "logps/"))}
    return {
        "token_grad": lst(P.grad),
        "types": loss_types,
        "weights": loss_weights,
        "beta": beta,
        "label_smoothing": ls,
        "discopop_tau": tau,
        "f_divergence": fdiv,
        "f_alpha": f_alpha,
        "ld_alpha": ld_alpha,
        "loss": loss.item(),
        "grad_policy_chosen": lst(g[:N]),
        "grad_policy_rejected": lst(g[N:]),
        "grad_ref_chosen": lst(ref_c.grad if ref_c.grad is not None else torch.zeros(N, dtype=DT)),
        "grad_ref_rejected": lst(ref_r.grad if ref_r.grad is not None else torch.zeros(N, dtype=DT)),
        "metrics": m,
    }


ALL = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
       "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]
dpo_cases = []
for beta in (0.1, 0.5):
    for t in ALL:
        ls = {"exo_pair": 1e-3, "robust": 0.2, "aot": 0.1, "aot_unpaired": 0.1}.get(t, 0.0)
        dpo_cases.append(run_dpo([t], [1.0], beta, ls))
# label smoothing given to sigmoid: TRL 1.16 ignores it
dpo_cases.append(run_dpo(["sigmoid"], [1.0], 0.1, 0.3))
# a weighted list, as TRL combines it (MPO-style)
dpo_cases.append(run_dpo(["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], 0.1, 0.0))
dpo_cases.append(run_dpo(["ipo", "aot", "robust"], [1.0, 0.5, 2.0], 0.25, 0.1))
# f-divergences, on the losses TRL allows them with
for fdiv, alpha in (("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.3),
                    ("alpha_divergence", 1.0)):
    for t in ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"):
        ls = {"exo_pair": 1e-3, "robust": 0.2}.get(t, 0.0)
        dpo_cases.append(run_dpo([t], [1.0], 0.5, ls, fdiv=fdiv, f_alpha=alpha))
dpo_cases.append(run_dpo(["sigmoid", "sft"], [1.0, 0.5], 0.1, 0.0, fdiv="js_divergence"))
# LD-DPO: the tokens past the shared length weighted by ld_alpha (the reference is given)
ld_cases = [run_dpo(["sigmoid"], [1.0], 0.1, 0.0, ld_alpha=a) for a in (0.0, 0.5, 1.0)]
ld_cases.append(run_dpo(["ipo", "hinge"], [1.0, 1.0], 0.5, 0.0, ld_alpha=0.3))

dpo = {
    "policy_chosen": lst(policy_sum[:N]),
    "policy_rejected": lst(policy_sum[N:]),
    "ref_chosen": lst(ref_sum[:N]),
    "ref_rejected": lst(ref_sum[N:]),
    "token_logp": lst(per_tok),
    "token_mask": lst(shift_mask.to(DT)),
    "T": T - 1,
    "chosen_len": comp_len[:N],
    "rejected_len": comp_len[N:],
    "cases": dpo_cases,
    "ld_cases": ld_cases,
}

# ------------------------------------------------------------------ SimPO (CPO) and ORPO
avg_c = f32(torch.empty(N, dtype=DT).uniform_(-3.0, -0.2))
avg_r = f32(torch.empty(N, dtype=DT).uniform_(-3.0, -0.2))
nll0 = 1.7


def run_simpo(beta, gamma, ls, cpo_alpha):
    c = avg_c.clone().requires_grad_(True)
    r = avg_r.clone().requires_grad_(True)
    nll = torch.tensor(nll0, dtype=DT, requires_grad=True)
    s = stub(alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta, label_smoothing=ls)
    losses, cr, rr = CPOTrainer.cpo_loss(s, c, r)
    nll_term = nll if cpo_alpha != 0 else torch.tensor(0.0, dtype=DT)  # CPOTrainer.concatenated_forward
    loss = losses.mean() + cpo_alpha * nll_term
    loss.backward()
    return {"beta": beta, "gamma": gamma, "label_smoothing": ls, "cpo_alpha": cpo_alpha, "loss": loss.item(),
            "grad_chosen": lst(c.grad), "grad_rejected": lst(r.grad),
            "grad_nll": nll.grad.item() if nll.grad is not None else 0.0,
            "rewards_chosen": cr.mean().item(), "rewards_rejected": rr.mean().item(),
            "rewards_accuracies": (cr > rr).float().mean().item()}


def run_orpo(beta):
    c = avg_c.clone().requires_grad_(True)
    r = avg_r.clone().requires_grad_(True)
    nll = torch.tensor(nll0, dtype=DT, requires_grad=True)
    s = stub(beta=beta)
    losses, cr, rr, log_odds_ratio, log_odds_chosen = ORPOTrainer.odds_ratio_loss(s, c, r)
    loss = nll - losses.mean()  # ORPOTrainer.get_batch_loss_metrics
    loss.backward()
    return {"beta": beta, "loss": loss.item(), "grad_chosen": lst(c.grad), "grad_rejected": lst(r.grad),
            "grad_nll": nll.grad.item(), "log_odds_ratio": log_odds_ratio.item(),
            "log_odds_chosen": log_odds_chosen.item(), "rewards_chosen": cr.mean().item(),
            "rewards_rejected": rr.mean().item()}


pref_free = {
    "chosen_avg": lst(avg_c), "rejected_avg": lst(avg_r), "nll": nll0,
    "simpo": [run_simpo(0.1, 0.5, 0.0, 1.0), run_simpo(2.0, 1.0, 0.1, 0.0), run_simpo(0.5, 0.3, 0.0, 0.5)],
    "orpo": [run_orpo(0.1), run_orpo(0.5)],
}

# ------------------------------------------------------------------ reward model
rw_c = f32(torch.randn(N, dtype=DT))
rw_r = f32(torch.randn(N, dtype=DT))
margins = f32(torch.rand(N, dtype=DT))


def run_reward(use_margin, center):
    logits = torch.cat([rw_c, rw_r]).unsqueeze(-1).clone().requires_grad_(True)

    def model(**kw):
        return SimpleNamespace(logits=logits)

    s = stub(args=SimpleNamespace(center_rewards_coefficient=center))
    inputs = {"attention_mask": torch.ones(2 * N, 4, dtype=torch.long)}
    if use_margin:
        inputs["margin"] = margins
    loss = RewardTrainer.compute_loss(s, model, inputs)
    loss.backward()
    m = {k: v[-1] for k, v in s._metrics["train"].items() if k != "num_tokens"}
    return {"margin": use_margin, "center": center, "loss": loss.item(), "grad_chosen": lst(logits.grad[:N]),
            "grad_rejected": lst(logits.grad[N:]), "metrics": m}


reward = {"chosen": lst(rw_c), "rejected": lst(rw_r), "margin": lst(margins),
          "cases": [run_reward(False, None), run_reward(True, None), run_reward(True, 0.01)]}

# ------------------------------------------------------------------ GRPO
G, K, TG = 3, 4, 7
rewards_per_func = torch.tensor(
    [[1.0, 0.5], [0.0, 0.2], [1.0, float("nan")], [0.0, 0.9],
     [0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5],
     [float("nan"), float("nan")], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=DT)
reward_weights = torch.tensor([1.0, 0.5], dtype=DT)


def grpo_advantages(scale):
    """GRPOTrainer._generate_and_score_completions, multi_objective_aggregation sum_then_normalize."""
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    mean_g = torch.nanmean(rewards.view(-1, K), dim=1).repeat_interleave(K, dim=0)
    if scale in ("group", "none"):
        std = nanstd(rewards.view(-1, K), dim=1).repeat_interleave(K, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean_g
    if scale != "none":
        adv = adv / (std + 1e-4)
    is_std_zero = torch.isclose(std, torch.zeros_like(std))
    adv = torch.nan_to_num(adv, nan=0.0)
    return rewards, adv, {"reward": torch.nanmean(rewards).item(), "reward_std": nanstd(rewards).item(),
                          "frac_reward_zero_std": is_std_zero.float().mean().item()}


adv_cases = []
for scale in ("group", "batch", "none"):
    rw, adv, st = grpo_advantages(scale)
    adv_cases.append({"scale": scale, "advantages": lst(adv), **st})
combined_rewards = lst(grpo_advantages("group")[0])

B = G * K
glogp = f32(torch.empty(B, TG, dtype=DT).uniform_(-4, -0.05))
gold = f32(glogp + 0.35 * torch.randn(B, TG, dtype=DT))
gref = f32(glogp + 0.5 * torch.randn(B, TG, dtype=DT))
glens = [7, 5, 3, 6, 7, 2, 4, 7, 1, 6, 5, 3]
gmask = torch.zeros(B, TG, dtype=torch.long)
for i, L in enumerate(glens):
    gmask[i, :L] = 1
gadv = f32(torch.tensor(adv_cases[0]["advantages"], dtype=DT))


def run_grpo(loss_type, beta, eps_low, eps_high, use_old, num_items, max_len=8, level="token", adv=None):
    adv = gadv if adv is None else adv
    P = glogp.clone().requires_grad_(True)
    s = stub(
        _get_per_token_logps_and_entropies=lambda *a, **k: (P, torch.zeros_like(P), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level,
        beta=beta, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=1,
        max_completion_length=max_len, _entropy_bonus_enabled=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, TG, dtype=torch.long), "completion_mask": gmask,
        "advantages": adv, "num_items_in_batch": torch.tensor(float(num_items), dtype=DT),
    }
    if use_old:
        inputs["old_per_token_logps"] = gold
    if beta != 0.0:
        inputs["ref_per_token_logps"] = gref
    loss = GRPOTrainer._compute_loss(s, None, inputs)
    loss.backward()
    m = {k: v[-1] for k, v in s._metrics["train"].items() if k.startswith(("kl", "clip_ratio"))}
    return {"loss_type": loss_type, "beta": beta, "epsilon_low": eps_low, "epsilon_high": eps_high,
            "use_old": use_old, "num_items": num_items, "max_completion_length": max_len, "level": level,
            "advantages": lst(adv), "loss": loss.item(), "grad": lst(P.grad), "metrics": m}


n_active = int(gmask.sum())
grpo_cases = [
    run_grpo("grpo", 0.0, 0.2, 0.2, True, n_active),
    run_grpo("bnpo", 0.04, 0.2, 0.28, True, n_active),
    run_grpo("dr_grpo", 0.1, 0.2, 0.2, True, n_active, max_len=9),
    run_grpo("dapo", 0.0, 0.2, 0.28, True, 2 * n_active),  # the generation batch spans two micro-batches
    run_grpo("dapo", 0.04, 0.1, 0.3, True, n_active),
    run_grpo("grpo", 0.04, 0.2, 0.2, False, n_active),  # num_iterations = 1: π_old = π detached
    # GSPO: one importance ratio per completion
    run_grpo("grpo", 0.0, 0.03, 0.04, True, n_active, level="sequence"),
    run_grpo("grpo", 0.04, 0.05, 0.05, True, n_active, level="sequence"),
    run_grpo("dapo", 0.0, 0.03, 0.04, True, n_active, level="sequence"),
    run_grpo("grpo", 0.04, 0.03, 0.04, True, n_active, level="sequence", adv=-gadv),  # some ratios clipped
    run_grpo("bnpo", 0.0, 0.2, 0.28, True, n_active, adv=f32(torch.randn(B, dtype=DT))),
    run_grpo("grpo", 0.0, 0.2, 0.2, False, n_active, level="sequence"),
]
grpo = {"G": G, "K": K, "T": TG, "rewards_per_func": lst(rewards_per_func), "reward_weights": lst(reward_weights),
        "combined_rewards": combined_rewards, "advantage_cases": adv_cases,
        "logp": lst(glogp), "old_logp": lst(gold), "ref_logp": lst(gref), "mask": lst(gmask.to(DT)),
        "advantages": lst(gadv), "cases": grpo_cases}

# ------------------------------------------------------------------ PPO (transcribed from trl/experimental/ppo)
INVALID_LOGPROB = 1.0


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def masked_var(values, mask, unbiased=True):
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        ms = mask.sum()
        variance = variance * (ms / (ms - 1))
    return variance


def masked_whiten(values, mask, shift_mean=True):
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


PB, PT = 3, 6
p_logp = f32(torch.empty(PB, PT, dtype=DT).uniform_(-3, -0.1))
p_ref = f32(p_logp + 0.3 * torch.randn(PB, PT, dtype=DT))
p_values = f32(torch.randn(PB, PT, dtype=DT))
p_scores = f32(torch.tensor([1.5, -0.7, 0.4], dtype=DT))
sequence_lengths = torch.tensor([5, 3, 1])  # index of each response's last token
gamma, lam, kl_coef, cliprange, cliprange_value = 0.95, 0.9, 0.05, 0.2, 0.2


def ppo_case(kl_estimator):
    response_idxs = torch.arange(PT).repeat(PB, 1)
    padding_mask = response_idxs > sequence_lengths.unsqueeze(1)
    logprobs = torch.masked_fill(p_logp, padding_mask, INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(p_ref, padding_mask, INVALID_LOGPROB)
    sequence_lengths_p1 = sequence_lengths + 1
    padding_mask_p1 = response_idxs > (sequence_lengths_p1.unsqueeze(1))
    values = torch.masked_fill(p_values, padding_mask_p1, 0)
    logr = ref_logprobs - logprobs
    kl = -logr if kl_estimator == "k1" else (logr.exp() - 1) - logr
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.clone()
    actual_start = torch.arange(rewards.size(0))
    actual_end = torch.where(sequence_lengths_p1 < rewards.size(1), sequence_lengths_p1, sequence_lengths)
    rewards[actual_start, actual_end] += p_scores
    lastgaelam = 0
    advantages_reversed = []
    for t in reversed(range(PT)):
        nextvalues = values[:, t + 1] if t < PT - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    raw_adv = torch.stack(advantages_reversed[::-1], axis=1)
    returns = raw_adv + values
    advantages = masked_whiten(raw_adv, ~padding_mask)
    advantages = torch.masked_fill(advantages, padding_mask, 0)

    # one PPO micro-batch step on new log-probs and value predictions
    new_leaf = f32(p_logp + 0.25 * torch.randn(PB, PT, dtype=DT)).requires_grad_(True)
    vpred_leaf = f32(values + 0.4 * torch.randn(PB, PT, dtype=DT)).requires_grad_(True)
    new_logprobs = torch.masked_fill(new_leaf, padding_mask, INVALID_LOGPROB)
    vpred = torch.masked_fill(vpred_leaf, padding_mask_p1, 0)
    vpredclipped = torch.clamp(vpred, values - cliprange_value, values + cliprange_value)
    vf_losses1 = torch.square(vpred - returns)
    vf_losses2 = torch.square(vpredclipped - returns)
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), ~padding_mask_p1)
    vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), ~padding_mask_p1)
    logprobs_diff = new_logprobs - logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), ~padding_mask)
    pg_clipfrac = masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask)
    pg_loss.backward()
    vf_loss.backward()
    whitened_rewards = torch.masked_fill(masked_whiten(rewards, ~padding_mask_p1, shift_mean=False), padding_mask_p1, 0)
    return {"kl_estimator": kl_estimator, "kl": lst(kl), "rewards": lst(rewards), "raw_advantages": lst(raw_adv),
            "returns": lst(returns), "advantages": lst(advantages), "new_logp": lst(new_leaf),
            "vpred": lst(vpred_leaf), "masked_values": lst(values), "pg_loss": pg_loss.item(),
            "pg_grad": lst(new_leaf.grad), "pg_clipfrac": pg_clipfrac.item(),
            "approxkl": (0.5 * (logprobs_diff**2).mean()).item(), "ratio_mean": ratio.mean().item(),
            "vf_loss": vf_loss.item(), "vf_grad": lst(vpred_leaf.grad), "vf_clipfrac": vf_clipfrac.item(),
            "whitened_rewards": lst(whitened_rewards),
            # PPOTrainer's rollout metrics; the entropy over response tokens only (TRL's own
            # figure also sums its filler log-prob of 1 at padded positions)
            "objective_kl": kl.sum(1).mean().item(),
            "objective_entropy": (-(p_logp * (~padding_mask))).sum(1).mean().item(),
            "objective_non_score_reward": non_score_reward.sum(1).mean().item(),
            "objective_rlhf_reward": (non_score_reward.sum(1).mean() + p_scores.mean()).item(),
            "objective_scores": p_scores.mean().item()}


ent_logits = f32(3 * torch.randn(4, 11, dtype=DT))
kl_lp = f32(torch.empty(8, dtype=DT).uniform_(-4, -0.1))
kl_ref = f32(kl_lp + torch.randn(8, dtype=DT))
kl_out = {}
for est in ("k1", "k3"):
    lp = kl_lp.clone().requires_grad_(True)
    logr = kl_ref - lp
    k = -logr if est == "k1" else (logr.exp() - 1) - logr
    k.sum().backward()
    kl_out[est] = {"value": lst(k), "grad": lst(lp.grad)}

ppo = {"B": PB, "T": PT, "logp": lst(p_logp), "ref_logp": lst(p_ref), "values": lst(p_values),
       "scores": lst(p_scores), "last": sequence_lengths.tolist(), "gamma": gamma, "lam": lam, "kl_coef": kl_coef,
       "cliprange": cliprange, "cliprange_value": cliprange_value, "cases": [ppo_case("k1"), ppo_case("k3")],
       "entropy_logits": lst(ent_logits), "entropy_rows": 4, "entropy_vocab": 11,
       "entropy": lst(entropy_from_logits(ent_logits)),
       "kl_logp": lst(kl_lp), "kl_ref": lst(kl_ref), "kl": kl_out}

doc = {
    "about": "made by tests/reference/make_rl_fixtures.py with TRL's own loss code; do not edit",
    "trl_version": trl.__version__, "torch_version": torch.__version__,
    "dpo": dpo, "pref_free": pref_free, "reward": reward, "grpo": grpo, "ppo": ppo,
}
os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(doc, f, indent=1, allow_nan=False)
print(f"wrote {OUT}: {len(dpo_cases)} DPO cases, {len(grpo_cases)} GRPO cases", file=sys.stderr)
