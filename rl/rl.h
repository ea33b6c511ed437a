/* rl.h — the rl room's one public header: preference and reinforcement-learning objectives as
 * pure math on host arrays (the DPO family, SimPO, ORPO, the Bradley–Terry reward loss, PPO's
 * GAE and clipped losses, GRPO's group advantages and token losses, rule rewards). Every loss
 * returns its value and its gradient with respect to the quantities the model produced
 * (summed or per-token log-probs, rewards, values), so a trainer backpropagates from there.
 * Formulas and names follow TRL 1.16's trainers (docs/preference.md). */
#ifndef MT_RL_H
#define MT_RL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* A named scalar for logging, with TRL's metric names; laid out like store's mt_metric so the
 * trainer hands a list straight to the store. */
typedef struct mt_rl_metric {
    const char *name;
    double value;
} mt_rl_metric;

/* ================================ sequence log-probs ================================ */

/* Per-row sums of per-token log-probs over the tokens that count (completion tokens; the
 * prompt and padding masked): sums[b] = Σ_t mask·logp, counts[b] = Σ_t mask (may be NULL).
 * The DPO family takes the sums, SimPO and ORPO the averages sums/counts. */
void mt_rl_seq_logps(size_t B, size_t T, const float *token_logp, const uint8_t *mask, float *sums, float *counts);
/* Its backward: d_token[b,t] = mask[b,t]·(d_sum[b] + d_avg[b]/max(count_b, 1)); either
 * gradient may be NULL (0). This is where the model's backward starts from. */
void mt_rl_seq_logps_backward(size_t B, size_t T, const uint8_t *mask, const float *d_sum, const float *d_avg,
                              float *d_token);

/* LD-DPO (TRL's ld_alpha): for pair i, rows i (chosen) and n + i (rejected) of the [2n, T]
 * per-token log-probs, the first min(|y⁺|, |y⁻|) completion tokens of each row count fully and
 * the tokens past them by ld_alpha (1 = plain sums, 0 = only the shared length). Run it on the
 * policy's and the reference's log-probs alike. */
void mt_rl_pair_logps_ld(size_t n, size_t T, const float *token_logp, const uint8_t *mask, double ld_alpha,
                         float *sums);
/* Its backward: d_token = d_sum of the row, times ld_alpha past the shared length, 0 where masked. */
void mt_rl_pair_logps_ld_backward(size_t n, size_t T, const uint8_t *mask, double ld_alpha, const float *d_sum,
                                  float *d_token);

/* ====================================== DPO family ====================================== */

/* The per-pair losses of TRL's DPOTrainer (loss_type), in TRL's spelling. */
typedef enum mt_dpo_loss {
    MT_DPO_LOSS_SIGMOID = 0,   /* −logσ(βΔ); TRL 1.16 applies no label smoothing here */
    MT_DPO_LOSS_HINGE,         /* relu(1 − βΔ) */
    MT_DPO_LOSS_IPO,           /* (Δ̄ − 1/(2β))², Δ̄ from length-normalised log-ratios */
    MT_DPO_LOSS_EXO_PAIR,      /* needs label_smoothing > 0 */
    MT_DPO_LOSS_NCA_PAIR,
    MT_DPO_LOSS_ROBUST,        /* needs 0 <= label_smoothing < 0.5 */
    MT_DPO_LOSS_BCO_PAIR,
    MT_DPO_LOSS_SPPO_HARD,
    MT_DPO_LOSS_AOT,           /* sorts over the batch: couples the pairs */
    MT_DPO_LOSS_AOT_UNPAIRED,  /* likewise */
    MT_DPO_LOSS_APO_ZERO,
    MT_DPO_LOSS_APO_DOWN,
    MT_DPO_LOSS_DISCOPOP,
    MT_DPO_LOSS_SFT,           /* mean NLL over every chosen completion token of the batch */
    MT_DPO_LOSS_SIGMOID_NORM,  /* −logσ(βΔ̄) */
    MT_DPO_LOSS_COUNT
} mt_dpo_loss;

const char *mt_dpo_loss_name(mt_dpo_loss t); /* "sigmoid", "ipo", ... */
/* TRL's name to the enum; MT_ERR_INVALID naming the closest known name when unknown. */
mt_status mt_dpo_loss_parse(const char *name, mt_dpo_loss *out, mt_error *err);

/* TRL's f_divergence_type: the log-ratios c, r pass through f'(e^x) before the loss. Only the
 * losses built on the score difference take it (sigmoid, sigmoid_norm, hinge, ipo, exo_pair,
 * robust, discopop, sft), as TRL checks. */
typedef enum mt_dpo_fdiv {
    MT_DPO_FDIV_REVERSE_KL = 0, /* x (standard DPO) */
    MT_DPO_FDIV_FORWARD_KL,     /* 1 − e^(−x) */
    MT_DPO_FDIV_JS,             /* "js_divergence": log 2 + logσ(x) */
    MT_DPO_FDIV_ALPHA,          /* "alpha_divergence": (e^((α−1)x) − 1)/(α−1), exponent clamped at 80 */
} mt_dpo_fdiv;
mt_status mt_dpo_fdiv_parse(const char *name, mt_dpo_fdiv *out, mt_error *err);

#define MT_DPO_MAX_TERMS 8

/* loss = Σ_k weights[k] · mean_i(loss_k(pair i)), as TRL combines a list of loss_type with
 * loss_weights. */
typedef struct mt_dpo_config {
    int n_terms;                         /* 1..MT_DPO_MAX_TERMS */
    mt_dpo_loss types[MT_DPO_MAX_TERMS];
    double weights[MT_DPO_MAX_TERMS];    /* TRL loss_weights (1 each when not given) */
    double beta;                         /* 0.1 */
    double label_smoothing;              /* 0.0 (robust, exo_pair, aot, aot_unpaired) */
    double discopop_tau;                 /* 0.05 */
    mt_dpo_fdiv f_divergence;            /* reverse_kl */
    double f_alpha;                      /* f_alpha_divergence_coef, 0.5 */
} mt_dpo_config;

/* One term "sigmoid" with weight 1 and TRL's defaults. */
void mt_dpo_config_default(mt_dpo_config *c);
/* TRL's checks: beta > 0 and finite, robust needs 0 <= ls < 0.5, exo_pair needs 0 < ls < 1,
 * discopop needs tau > 0, 1..MT_DPO_MAX_TERMS terms with finite weights, an f-divergence other
 * than reverse_kl only with the losses that take it. */
mt_status mt_dpo_config_check(const mt_dpo_config *c, mt_error *err);

/* n pairs. Log-probs are summed over the completion tokens only (the prompt masked). */
typedef struct mt_dpo_batch {
    size_t n;
    const float *policy_chosen;   /* [n] log π(y+|x) */
    const float *policy_rejected; /* [n] log π(y−|x) */
    const float *ref_chosen;      /* [n] log π_ref(y+|x) */
    const float *ref_rejected;    /* [n] log π_ref(y−|x) */
    const float *chosen_len;      /* [n] completion tokens of y+ (ipo, sigmoid_norm, sft); NULL: all 1 */
    const float *rejected_len;    /* [n] completion tokens of y− */
    /* logits/chosen and logits/rejected as TRL logs them (the mean logit over the vocabulary,
     * averaged over the completion tokens of the batch), computed by the caller who holds the
     * logits; copied into the metrics. NaN when unknown. */
    double logits_chosen, logits_rejected;
} mt_dpo_batch;

/* TRL's logged values for the batch (rewards = β · log-ratio). */
typedef struct mt_dpo_metrics {
    double rewards_chosen, rewards_rejected, rewards_accuracies, rewards_margins;
    double logps_chosen, logps_rejected;
    double logits_chosen, logits_rejected;
} mt_dpo_metrics;

#define MT_DPO_N_METRICS 8
/* The metrics under TRL's names ("rewards/chosen", ...); writes MT_DPO_N_METRICS entries. */
void mt_dpo_metrics_list(const mt_dpo_metrics *m, mt_rl_metric out[MT_DPO_N_METRICS]);

/* Gradient outputs: each [n], any may be NULL (not computed). */
typedef struct mt_dpo_grads {
    float *policy_chosen, *policy_rejected, *ref_chosen, *ref_rejected;
} mt_dpo_grads;

/* Bytes of scratch mt_dpo_loss_compute needs for n pairs (the aot sorts); 0 without aot. */
size_t mt_dpo_scratch_bytes(const mt_dpo_config *c, size_t n);

/* The combined loss of the batch, its gradients (d loss / d input) and the metrics (m may be
 * NULL); per_pair [n] (may be NULL) receives Σ_k w_k · loss_k(pair) (for aot at the pair's
 * rank in the sort). scratch: mt_dpo_scratch_bytes(c, n) bytes (NULL when 0), so that a
 * training step never allocates. MT_ERR_INVALID for a bad config or n == 0. */
mt_status mt_dpo_loss_compute(const mt_dpo_config *c, const mt_dpo_batch *b, double *loss, float *per_pair,
                              const mt_dpo_grads *g, mt_dpo_metrics *m, void *scratch, mt_error *err);

/* ============================ reference-free: SimPO and ORPO ============================ */

/* Average (length-normalised) log-probs of n pairs, and the NLL term of the trainer. */
typedef struct mt_pref_free_batch {
    size_t n;
    const float *chosen_avg;   /* [n] mean completion-token log-prob of y+ */
    const float *rejected_avg; /* [n] mean of y− (each < 0 for ORPO) */
    double nll;                /* CPO: mean CE of the chosen completion tokens; ORPO: of prompt + chosen */
    double logits_chosen, logits_rejected; /* as the caller computed them for logging; NaN when unknown */
} mt_pref_free_batch;

/* SimPO as TRL's CPOTrainer computes it (loss_type "simpo"): z = (a+ − a−) − γ/β,
 * loss = mean(−(1−ls)·logσ(βz) − ls·logσ(−βz)) + cpo_alpha·nll. */
typedef struct mt_simpo_config {
    double beta;            /* 0.1 */
    double gamma;           /* simpo_gamma, 0.5 */
    double label_smoothing; /* 0.0 */
    double cpo_alpha;       /* weight of the NLL term; TRL's default 1.0 */
} mt_simpo_config;
void mt_simpo_config_default(mt_simpo_config *c);

/* ORPO: log_odds = (a+ − a−) − (log(1 − e^a+) − log(1 − e^a−)),
 * loss = nll − β·mean(logσ(log_odds)). */
typedef struct mt_orpo_config {
    double beta; /* 0.1 */
} mt_orpo_config;

/* Metrics of both (rewards = β · average log-prob), plus ORPO's log_odds_ratio
 * (mean logσ(log_odds)) and log_odds_chosen (mean log_odds), and nll_loss. */
typedef struct mt_pref_free_metrics {
    mt_dpo_metrics base;
    double nll_loss;
    double log_odds_ratio, log_odds_chosen; /* ORPO only (NaN for SimPO) */
} mt_pref_free_metrics;

/* d_chosen, d_rejected [n] may be NULL; *d_nll (may be NULL) is d loss / d nll. */
mt_status mt_simpo_loss(const mt_simpo_config *c, const mt_pref_free_batch *b, double *loss, float *d_chosen,
                        float *d_rejected, double *d_nll, mt_pref_free_metrics *m, mt_error *err);
/* MT_ERR_INVALID when an average log-prob is >= 0 (the odds are undefined there). */
mt_status mt_orpo_loss(const mt_orpo_config *c, const mt_pref_free_batch *b, double *loss, float *d_chosen,
                       float *d_rejected, double *d_nll, mt_pref_free_metrics *m, mt_error *err);

/* ================================ reward model (Bradley–Terry) ================================ */

typedef struct mt_reward_metrics {
    double accuracy;  /* mean(r+ > r−) */
    double margin;    /* mean(r+ − r−) */
    double mean_reward, min_reward, max_reward; /* over the 2n rewards */
} mt_reward_metrics;

/* TRL's RewardTrainer: loss = −mean(logσ(r+ − r− − margin)) + c·mean((r+ + r−)²), the second
 * term only when center_coef is not NaN (TRL's None). margin [n] may be NULL (no margin).
 * d_chosen, d_rejected [n] may be NULL; m may be NULL. */
mt_status mt_reward_bt_loss(size_t n, const float *r_chosen, const float *r_rejected, const float *margin,
                            double center_coef, double *loss, float *d_chosen, float *d_rejected,
                            mt_reward_metrics *m, mt_error *err);

#define MT_REWARD_N_METRICS 5
/* accuracy, margin, mean_reward, min_reward, max_reward (TRL's RewardTrainer names). */
void mt_reward_metrics_list(const mt_reward_metrics *m, mt_rl_metric out[MT_REWARD_N_METRICS]);

#define MT_PREF_FREE_N_METRICS (MT_DPO_N_METRICS + 3)
/* The DPO names plus nll_loss, log_odds_ratio, log_odds_chosen (NaN for SimPO). */
void mt_pref_free_metrics_list(const mt_pref_free_metrics *m, mt_rl_metric out[MT_PREF_FREE_N_METRICS]);

/* ========================================== PPO ========================================== */

typedef enum mt_kl_estimator {
    MT_KL_K1 = 0, /* log π − log π_ref */
    MT_KL_K3,     /* e^(ref − logp) − (ref − logp) − 1, non-negative, unbiased */
} mt_kl_estimator;

/* Per-token KL estimate and its derivative with respect to log π (d may be NULL). */
float mt_rl_kl(mt_kl_estimator e, float logp, float ref_logp, float *d_logp);

/* Shannon entropy (nats) of softmax(logits) for each of `rows` rows of `vocab` logits. */
void mt_rl_entropy_from_logits(size_t rows, size_t vocab, const float *logits, float *out);

/* TRL PPO's per-token rewards for B responses of T tokens: −kl_coef·KL(t) over the response
 * tokens (t <= last[b]), 0 after, and scores[b] added at t = last[b] + 1 (the first pad
 * position, or last[b] itself when the response fills all T). last[b] is the index of the
 * response's last real token, −1 for an empty one. kl [B,T] may be NULL. */
void mt_ppo_rewards(size_t B, size_t T, const float *logp, const float *ref_logp, const int32_t *last,
                    const float *scores, double kl_coef, mt_kl_estimator est, float *rewards, float *kl);

/* Generalised advantage estimation over each row of T steps, as TRL runs it over the padded
 * length: δ_t = r_t + γ·V_{t+1} − V_t (V_T = 0), A_t = δ_t + γλ·A_{t+1}; returns = A + V.
 * Positions past a response must hold r = V = 0 (mt_ppo_rewards and a masked value head do). */
void mt_ppo_gae(size_t B, size_t T, const float *rewards, const float *values, double gamma, double lam,
                float *advantages, float *returns);

/* TRL's masked_whiten over the n entries where mask != 0: (x − mean)·(var + 1e−8)^(−1/2) with
 * the Bessel-corrected variance (mean added back unless shift_mean). Masked-out entries of out
 * are set to 0. MT_ERR_INVALID when fewer than two entries are unmasked. */
mt_status mt_rl_masked_whiten(size_t n, const float *x, const uint8_t *mask, bool shift_mean, float *out,
                              mt_error *err);

typedef struct mt_ppo_stats {
    double clipfrac;   /* policy: fraction of tokens where the clipped term is larger; value: likewise */
    double approxkl;   /* policy: 0.5·mean((new − old)²) over all n entries, as TRL */
    double ratio_mean; /* policy: mean ρ over all n entries, as TRL */
} mt_ppo_stats;

/* Clipped policy loss over n tokens: masked_mean(max(−A·ρ, −A·clip(ρ, 1−c, 1+c))),
 * ρ = exp(new − old). d_new [n] (may be NULL) is zero where masked. */
mt_status mt_ppo_policy_loss(size_t n, const float *new_logp, const float *old_logp, const float *adv,
                             const uint8_t *mask, double cliprange, double *loss, float *d_new, mt_ppo_stats *st,
                             mt_error *err);
/* Clipped value loss: 0.5·masked_mean(max((v − R)², (clip(v, v_old ± c) − R)²)). */
mt_status mt_ppo_value_loss(size_t n, const float *vpred, const float *old_values, const float *returns,
                            const uint8_t *mask, double cliprange_value, double *loss, float *d_vpred,
                            mt_ppo_stats *st, mt_error *err);

/* TRL's rollout-level PPO metrics for B responses: objective/kl = mean_b Σ_t KL,
 * objective/entropy = mean_b Σ_t −logπ over response tokens, objective/non_score_reward =
 * −kl_coef·objective/kl, objective/scores = mean score, objective/rlhf_reward = the sum of the
 * two. (TRL's own entropy figure also counts its filler log-prob of 1 at padded positions; this
 * one counts response tokens only.) */
typedef struct mt_ppo_objective {
    double kl, entropy, non_score_reward, rlhf_reward, scores;
} mt_ppo_objective;
void mt_ppo_objective_metrics(size_t B, size_t T, const float *kl, const float *logp, const uint8_t *mask,
                              const float *scores, double kl_coef, mt_ppo_objective *out);

#define MT_PPO_N_METRICS 10
/* The rollout metrics and one step's policy and value statistics under TRL's names
 * (objective/..., policy/approxkl_avg, policy/clipfrac_avg, loss/policy_avg, loss/value_avg,
 * val/clipfrac_avg); writes MT_PPO_N_METRICS entries. */
void mt_ppo_metrics_list(const mt_ppo_objective *o, const mt_ppo_stats *policy, double policy_loss,
                         const mt_ppo_stats *value, double value_loss, mt_rl_metric out[MT_PPO_N_METRICS]);

/* ========================================== GRPO ========================================== */

typedef enum mt_grpo_scale {
    MT_GRPO_SCALE_GROUP = 0, /* std over each group (TRL's default) */
    MT_GRPO_SCALE_BATCH,     /* std over the whole batch */
    MT_GRPO_SCALE_NONE,      /* no division */
} mt_grpo_scale;
mt_status mt_grpo_scale_parse(const char *name, mt_grpo_scale *out, mt_error *err);

/* rewards [N, F] of F reward functions (NaN = that function gave no score) → out [N]:
 * Σ_f w_f·r_f over the present values, NaN when none is present (TRL's nansum and its
 * unscorable rows). */
void mt_grpo_combine_rewards(size_t N, size_t F, const float *rewards, const double *weights, float *out);

typedef struct mt_grpo_adv_stats {
    double reward_mean, reward_std;  /* over the present rewards; std Bessel-corrected */
    double frac_reward_zero_std;     /* share of completions whose group has zero std */
} mt_grpo_adv_stats;

/* Group-relative advantages for n_groups groups of group_size consecutive completions:
 * A = r − mean(group), divided by (std + 1e−4) unless MT_GRPO_SCALE_NONE, mean and std
 * ignoring NaN rewards; NaN advantages (unscorable, or a std of one value) become 0.
 * stats may be NULL. */
mt_status mt_grpo_advantages(size_t n_groups, size_t group_size, const float *rewards, mt_grpo_scale scale,
                             float *adv, mt_grpo_adv_stats *stats, mt_error *err);

typedef enum mt_grpo_loss_type {
    MT_GRPO_LOSS_GRPO = 0, /* per-sequence token mean, then mean over sequences */
    MT_GRPO_LOSS_BNPO,     /* Σ / active tokens of this micro-batch */
    MT_GRPO_LOSS_DR_GRPO,  /* Σ / (B · max_completion_length) */
    MT_GRPO_LOSS_DAPO,     /* Σ / active tokens of the whole generation batch (TRL's default) */
} mt_grpo_loss_type;
mt_status mt_grpo_loss_type_parse(const char *name, mt_grpo_loss_type *out, mt_error *err);

typedef struct mt_grpo_config {
    mt_grpo_loss_type loss_type;   /* dapo */
    double epsilon_low;            /* epsilon, 0.2 */
    double epsilon_high;           /* epsilon_high, = epsilon_low by default */
    double beta;                   /* KL (k3) coefficient, 0.0 */
    size_t max_completion_length;  /* dr_grpo's denominator */
    bool sequence_level;           /* importance_sampling_level "sequence" (GSPO): one ratio per
                                      completion, exp of the mean token log-ratio; "token" when false */
} mt_grpo_config;
void mt_grpo_config_default(mt_grpo_config *c);

/* B completions of T tokens. */
typedef struct mt_grpo_batch {
    size_t B, T;
    const float *logp;       /* [B,T] per-token log-probs under the policy being trained */
    const float *old_logp;   /* [B,T] under the policy that sampled; NULL: = logp (ρ = 1) */
    const float *ref_logp;   /* [B,T] under the reference; needed when beta != 0 */
    const float *advantages; /* [B] */
    const uint8_t *mask;     /* [B,T] completion tokens that count */
    double num_items;        /* dapo: active tokens of the generation batch; <= 0: this batch's */
} mt_grpo_batch;

typedef struct mt_grpo_metrics {
    double kl;                 /* mean k3 over active tokens (NaN when beta == 0) */
    double clip_low_mean;      /* clip_ratio/low_mean: ρ < 1−ε_low with A < 0 (per token, or per
                                  completion at sequence level, as TRL counts) */
    double clip_high_mean;     /* clip_ratio/high_mean: ρ > 1+ε_high with A > 0 */
    double clip_region_mean;   /* clip_ratio/region_mean */
    double clip_low_min;       /* clip_ratio/low_min: min over sequences of their low share */
    double clip_high_max;      /* clip_ratio/high_max */
} mt_grpo_metrics;

#define MT_GRPO_N_METRICS 9
/* reward, reward_std, frac_reward_zero_std, kl (when beta != 0, else NaN), clip_ratio/... under
 * TRL's names; writes MT_GRPO_N_METRICS entries. */
void mt_grpo_metrics_list(const mt_grpo_adv_stats *a, const mt_grpo_metrics *m, mt_rl_metric out[MT_GRPO_N_METRICS]);

/* The loss of the micro-batch before any gradient-accumulation scaling, d loss / d logp
 * [B,T] (may be NULL; 0 where masked) and metrics (may be NULL). */
mt_status mt_grpo_loss(const mt_grpo_config *c, const mt_grpo_batch *b, double *loss, float *d_logp,
                       mt_grpo_metrics *m, mt_error *err);

/* ===================================== rule rewards ===================================== */

typedef enum mt_reward_rule_kind {
    MT_RULE_EXACT = 0, /* 1 when the completion, trimmed, equals the target, trimmed */
    MT_RULE_CONTAINS,  /* 1 when the completion contains the target */
    MT_RULE_REGEX,     /* 1 when the PCRE2 pattern (UTF) matches somewhere in the completion */
    MT_RULE_LENGTH,    /* 1 when min_chars <= code points of the completion <= max_chars */
} mt_reward_rule_kind;

/* One rule of a weighted sum. For exact and contains, target NULL means the example's own
 * reference answer (given at scoring time). */
typedef struct mt_reward_rule {
    mt_reward_rule_kind kind;
    const char *target;      /* exact/contains text, or the regex pattern */
    size_t min_chars, max_chars;
    double weight;
    const char *name;        /* for rewards/<name>/mean; NULL: the kind's name */
} mt_reward_rule;

typedef struct mt_reward_rules mt_reward_rules;

/* Compiles the rules (regexes once); MT_ERR_INVALID naming the rule and the PCRE2 error offset. */
mt_status mt_reward_rules_compile(const mt_reward_rule *rules, size_t n, mt_reward_rules **out, mt_error *err);
void mt_reward_rules_free(mt_reward_rules *r); /* NULL is fine */
size_t mt_reward_rules_count(const mt_reward_rules *r);
const char *mt_reward_rules_name(const mt_reward_rules *r, size_t i);
/* total = Σ weight_i · score_i; per_rule [n] (may be NULL) gets each unweighted score.
 * reference may be NULL unless a rule needs it (then MT_ERR_INVALID). */
mt_status mt_reward_rules_score(const mt_reward_rules *r, const char *completion, const char *reference,
                                double *total, double *per_rule, mt_error *err);

#endif
