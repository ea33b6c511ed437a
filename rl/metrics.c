/* metrics.c — the glue between the model and the losses: completion log-prob sums and their
 * backward, TRL's rollout-level PPO metrics, and every objective's metrics as (name, value)
 * lists under TRL's names, so the trainer logs them to the store without renaming anything. */
#include <string.h>

#include "rl-impl.h"

void mt_rl_seq_logps(size_t B, size_t T, const float *token_logp, const uint8_t *mask, float *sums, float *counts) {
    for (size_t b = 0; b < B; b++) {
        double s = 0, n = 0;
        for (size_t t = 0; t < T; t++)
            if (mask[b * T + t]) s += token_logp[b * T + t], n++;
        sums[b] = (float)s;
        if (counts) counts[b] = (float)n;
    }
}

void mt_rl_seq_logps_backward(size_t B, size_t T, const uint8_t *mask, const float *d_sum, const float *d_avg,
                              float *d_token) {
    for (size_t b = 0; b < B; b++) {
        double n = 0;
        for (size_t t = 0; t < T; t++) n += mask[b * T + t] != 0;
        double g = (d_sum ? d_sum[b] : 0) + (d_avg ? d_avg[b] / fmax(n, 1.0) : 0);
        for (size_t t = 0; t < T; t++) d_token[b * T + t] = mask[b * T + t] ? (float)g : 0.0f;
    }
}

/* the shared length of pair `row % n`: min of its two rows' completion-token counts */
static double ld_shared(size_t n, size_t T, const uint8_t *mask, size_t row) {
    size_t pair = row % n;
    double lc = 0, lr = 0;
    for (size_t t = 0; t < T; t++) {
        lc += mask[pair * T + t] != 0;
        lr += mask[(n + pair) * T + t] != 0;
    }
    return fmin(lc, lr);
}

void mt_rl_pair_logps_ld(size_t n, size_t T, const float *token_logp, const uint8_t *mask, double ld_alpha,
                         float *sums) {
    for (size_t row = 0; row < 2 * n; row++) {
        double shared = ld_shared(n, T, mask, row), pos = 0, s = 0;
        for (size_t t = 0; t < T; t++) {
            if (!mask[row * T + t]) continue;
            pos++; /* 1-based position among the completion tokens, as TRL's cumsum */
            s += (pos <= shared ? 1.0 : ld_alpha) * token_logp[row * T + t];
        }
        sums[row] = (float)s;
    }
}

void mt_rl_pair_logps_ld_backward(size_t n, size_t T, const uint8_t *mask, double ld_alpha, const float *d_sum,
                                  float *d_token) {
    for (size_t row = 0; row < 2 * n; row++) {
        double shared = ld_shared(n, T, mask, row), pos = 0;
        for (size_t t = 0; t < T; t++) {
            if (!mask[row * T + t]) {
                d_token[row * T + t] = 0;
                continue;
            }
            pos++;
            d_token[row * T + t] = (float)((pos <= shared ? 1.0 : ld_alpha) * d_sum[row]);
        }
    }
}

void mt_ppo_objective_metrics(size_t B, size_t T, const float *kl, const float *logp, const uint8_t *mask,
                              const float *scores, double kl_coef, mt_ppo_objective *out) {
    double k = 0, h = 0, sc = 0;
    for (size_t b = 0; b < B; b++) {
        for (size_t t = 0; t < T; t++) {
            k += kl[b * T + t];
            if (mask[b * T + t]) h -= logp[b * T + t];
        }
        sc += scores[b];
    }
    double n = B ? (double)B : 1.0;
    out->kl = k / n;
    out->entropy = h / n;
    out->non_score_reward = -kl_coef * out->kl;
    out->scores = sc / n;
    out->rlhf_reward = out->non_score_reward + out->scores;
}

void mt_ppo_metrics_list(const mt_ppo_objective *o, const mt_ppo_stats *policy, double policy_loss,
                         const mt_ppo_stats *value, double value_loss, mt_rl_metric out[MT_PPO_N_METRICS]) {
    const mt_rl_metric list[MT_PPO_N_METRICS] = {
        {"objective/kl", o->kl},
        {"objective/entropy", o->entropy},
        {"objective/non_score_reward", o->non_score_reward},
        {"objective/rlhf_reward", o->rlhf_reward},
        {"objective/scores", o->scores},
        {"policy/approxkl_avg", policy->approxkl},
        {"policy/clipfrac_avg", policy->clipfrac},
        {"loss/policy_avg", policy_loss},
        {"loss/value_avg", value_loss},
        {"val/clipfrac_avg", value->clipfrac},
    };
    memcpy(out, list, sizeof list);
}

void mt_grpo_metrics_list(const mt_grpo_adv_stats *a, const mt_grpo_metrics *m, mt_rl_metric out[MT_GRPO_N_METRICS]) {
    const mt_rl_metric list[MT_GRPO_N_METRICS] = {
        {"reward", a->reward_mean},
        {"reward_std", a->reward_std},
        {"frac_reward_zero_std", a->frac_reward_zero_std},
        {"kl", m->kl},
        {"clip_ratio/low_mean", m->clip_low_mean},
        {"clip_ratio/high_mean", m->clip_high_mean},
        {"clip_ratio/region_mean", m->clip_region_mean},
        {"clip_ratio/low_min", m->clip_low_min},
        {"clip_ratio/high_max", m->clip_high_max},
    };
    memcpy(out, list, sizeof list);
}

void mt_reward_metrics_list(const mt_reward_metrics *m, mt_rl_metric out[MT_REWARD_N_METRICS]) {
    const mt_rl_metric list[MT_REWARD_N_METRICS] = {
        {"accuracy", m->accuracy},       {"margin", m->margin},         {"mean_reward", m->mean_reward},
        {"min_reward", m->min_reward},   {"max_reward", m->max_reward},
    };
    memcpy(out, list, sizeof list);
}

void mt_pref_free_metrics_list(const mt_pref_free_metrics *m, mt_rl_metric out[MT_PREF_FREE_N_METRICS]) {
    mt_dpo_metrics_list(&m->base, out);
    out[MT_DPO_N_METRICS] = (mt_rl_metric){"nll_loss", m->nll_loss};
    out[MT_DPO_N_METRICS + 1] = (mt_rl_metric){"log_odds_ratio", m->log_odds_ratio};
    out[MT_DPO_N_METRICS + 2] = (mt_rl_metric){"log_odds_chosen", m->log_odds_chosen};
}
