/* ppo.c — PPO as an objective, as TRL's PPOTrainer runs it: each loop step samples completions
 * of its prompts from the policy (rollout.c), scores them (a reward model, rules), computes the
 * rollout's log-probs and values without gradient, the per-token rewards (−kl_coef · KL to
 * the reference, plus the score after the last token), GAE advantages (whitened) and returns,
 * then makes ppo.num_ppo_epochs updates with the clipped policy loss plus vf_coef · the clipped
 * value loss. The value head is a linear head on the policy's final hidden states (sharing its
 * adapter), so its gradient enters the same backward pass as the policy's. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peft/lora.h"
#include "rollout-impl.h"

typedef struct ppo {
    mt_rl_env env;
    int H;
    float *w, *dw;           /* [H] value head, its gradient */
    mt_rollout ro;
    uint8_t *mask_all;       /* [n·T] completion positions of the rollout */
    float *old_logp, *ref_logp, *old_values, *rewards, *kl, *adv, *returns; /* [n·T] */
    float *logp, *d_logp, *values, *d_values, *dhidden; /* the micro-batch's */
    int64_t *pidx;           /* [micro_batch · grad_accum] this rank's prompts of the step */
    int *slot;               /* [micro_batch · grad_accum] their places in the step */
} ppo;

static void buffers_free(ppo *q) {
    mt_rollout_free(&q->ro);
    free(q->mask_all);
    free(q->old_logp);
    free(q->ref_logp);
    free(q->old_values);
    free(q->rewards);
    free(q->kl);
    free(q->adv);
    free(q->returns);
    q->mask_all = NULL;
    q->old_logp = q->ref_logp = q->old_values = q->rewards = q->kl = q->adv = q->returns = NULL;
}

static mt_status ppo_open_data(mt_run *run, mt_error *err) {
    ppo *q = mt_xcalloc(1, sizeof *q);
    run->obj_state = q;
    return mt_rl_open_data(run, &q->env, run->r->rollout.num_generations, err);
}

static mt_status ppo_open_model(mt_run *run, mt_error *err) {
    ppo *q = run->obj_state;
    const mt_recipe *r = run->r;
    MT_TRY(mt_rl_open_model(run, &q->env, true, err));
    q->H = mt_model_config(run->model)->hidden_size;
    q->w = mt_xcalloc((size_t)q->H, sizeof(float));
    q->dw = mt_xcalloc((size_t)q->H, sizeof(float));
    /* TRL starts the value model from the reward model; without one the values start at 0 */
    if (q->env.rm_head) memcpy(q->w, q->env.rm_head, (size_t)q->H * sizeof(float));
    double scale = r->train.head_lr == MT_RECIPE_UNSET ? 1.0 : r->train.head_lr / r->train.lr;
    mt_run_add_trainable(run, "value_head.weight", q->w, q->dw, q->H, true, scale);
    size_t n = (size_t)q->env.buf.B * q->env.T;
    q->logp = mt_xcalloc(n, sizeof(float));
    q->d_logp = mt_xcalloc(n, sizeof(float));
    q->values = mt_xcalloc(n, sizeof(float));
    q->d_values = mt_xcalloc(n, sizeof(float));
    q->dhidden = mt_xcalloc(n * (size_t)q->H, sizeof(float));
    size_t np = (size_t)r->train.micro_batch * (size_t)r->train.grad_accum;
    q->pidx = mt_xcalloc(np, sizeof *q->pidx);
    q->slot = mt_xcalloc(np, sizeof *q->slot);
    mt_run_note(run->opts, "value head: [1, %d] on the policy's final hidden states%s", q->H,
                q->env.rm_head ? ", from the reward model's score head" : ", from zero");
    return MT_OK;
}

/* mt_rl_masked_whiten over the whole step's rollout, of which each rank holds its share: the
 * sum and count, then the squared deviations, summed over ranks (the same arithmetic, so one
 * rank gets the same bits). */
static mt_status whiten(mt_run *run, size_t n, float *x, const uint8_t *mask, bool shift_mean, mt_error *err) {
    double s[2] = {0, 0};
    for (size_t i = 0; i < n; i++)
        if (mask[i]) s[0] += x[i], s[1]++;
    MT_TRY(mt_run_dist_sum(run, s, 2, err));
    double cnt = s[1];
    if (cnt < 2)
        return mt_error_set(err, MT_ERR_INVALID,
                            "whitening over %g entries; the unbiased variance needs at least 2 (a larger batch)", cnt);
    double mean = s[0] / cnt, v = 0;
    for (size_t i = 0; i < n; i++)
        if (mask[i]) v += (x[i] - mean) * (x[i] - mean);
    MT_TRY(mt_run_dist_sum(run, &v, 1, err));
    double var = v / cnt * (cnt / (cnt - 1)); /* Bessel's correction, as TRL's masked_var */
    double inv = 1.0 / sqrt(var + 1e-8);
    for (size_t i = 0; i < n; i++)
        x[i] = mask[i] ? (float)((x[i] - mean) * inv + (shift_mean ? 0 : mean)) : 0.0f;
    return MT_OK;
}

/* One step on this rank's share: its micro-batches' prompts sampled and scored here, their
 * per-token rewards and GAE (per completion: local), whitening over every rank's tokens, and
 * ppo.num_ppo_epochs passes over its micro-batches, each ending in an update every rank makes
 * together. Losses, gradients and metrics are the rank's shares of the step's. */
static mt_status ppo_step(mt_run *run, const int64_t *idx, int n, mt_step_out *so, mt_error *err) {
    ppo *q = run->obj_state;
    mt_rl_env *e = &q->env;
    const mt_recipe *r = run->r;
    int mb = r->train.micro_batch, ga = r->train.grad_accum, T = e->T, B = mb * e->G, H = q->H;
    MT_ASSERT(n == mb * ga);
    buffers_free(q);
    uint64_t seed = mt_hash_u64(mt_hash_u64((uint64_t)r->train.seed, 0x70706fULL), (uint64_t)run->st.step);
    int np = mt_rl_rank_prompts(run, idx, q->pidx, q->slot);
    MT_TRY(mt_rl_sample(run, e, &e->train, q->pidx, q->slot, np, e->G, seed, &q->ro, err));
    mt_rollout *ro = &q->ro;
    MT_TRY(mt_rl_score(run, e, &e->train, ro, err));
    mt_obj_metrics rollout_m = {0};
    MT_TRY(mt_rl_rollout_metrics(run, e, ro, &rollout_m, err));
    int N = ro->n;
    size_t NT = (size_t)N * T;
    q->mask_all = mt_xcalloc(NT, 1);
    int32_t *last = mt_xcalloc((size_t)N, sizeof(int32_t));
    float *scores = mt_xcalloc((size_t)N, sizeof(float));
    for (int i = 0; i < N; i++) {
        for (int t = ro->P[i] - 1; t < ro->P[i] + ro->C[i] - 1; t++) q->mask_all[(size_t)i * T + t] = 1;
        last[i] = ro->P[i] + ro->C[i] - 2;
        /* an unscorable completion (no function gave a score) gets 0, as TRL's nansum */
        scores[i] = isfinite(ro->reward[i]) ? ro->reward[i] : 0.0f;
    }
    q->old_logp = mt_xcalloc(NT, sizeof(float));
    q->ref_logp = mt_xcalloc(NT, sizeof(float));
    q->old_values = mt_xcalloc(NT, sizeof(float));
    q->rewards = mt_xcalloc(NT, sizeof(float));
    q->kl = mt_xcalloc(NT, sizeof(float));
    q->adv = mt_xcalloc(NT, sizeof(float));
    q->returns = mt_xcalloc(NT, sizeof(float));
    mt_status st = mt_rl_logps(run, e, ro, mt_lora_adapter(run->lora), true, q->w, q->old_logp, q->old_values, err);
    if (st == MT_OK)
        st = mt_rl_logps(run, e, ro, e->ref_lora ? mt_lora_adapter(e->ref_lora) : NULL, false, NULL, q->ref_logp,
                         NULL, err);
    if (st == MT_OK) {
        mt_kl_estimator est = r->ppo.kl_estimator == MT_RECIPE_KL_K3 ? MT_KL_K3 : MT_KL_K1;
        mt_ppo_rewards((size_t)N, (size_t)T, q->old_logp, q->ref_logp, last, scores, r->ppo.kl_coef, est, q->rewards,
                       q->kl);
        /* the score lands one past the last token (TRL's padding_mask_p1): whitening and GAE see it */
        uint8_t *mask_p1 = mt_xcalloc(NT, 1);
        memcpy(mask_p1, q->mask_all, NT);
        for (int i = 0; i < N; i++)
            if (last[i] + 1 < T) mask_p1[(size_t)i * T + last[i] + 1] = 1;
        if (r->ppo.whiten_rewards) st = whiten(run, NT, q->rewards, mask_p1, false, err);
        free(mask_p1);
    }
    if (st == MT_OK) {
        mt_ppo_gae((size_t)N, (size_t)T, q->rewards, q->old_values, r->ppo.gamma, r->ppo.lam, q->adv, q->returns);
        st = whiten(run, NT, q->adv, q->mask_all, true, err);
    }
    /* the rollout's means over completions, as this rank's share (its N of the step's) */
    mt_ppo_objective obj;
    double n_all = N;
    if (st == MT_OK) st = mt_run_dist_sum(run, &n_all, 1, err);
    if (st == MT_OK) {
        mt_ppo_objective_metrics((size_t)N, (size_t)T, q->kl, q->old_logp, q->mask_all, scores, r->ppo.kl_coef, &obj);
        double share = N / n_all;
        obj.kl *= share;
        obj.entropy *= share;
        obj.non_score_reward *= share;
        obj.rlhf_reward *= share;
        obj.scores *= share;
    }
    free(last);
    free(scores);
    MT_TRY(st);

    double pl_sum = 0, vl_sum = 0, aux_sum = 0;
    mt_ppo_stats pacc = {0}, vacc = {0};
    int64_t mm_tokens = 0, mm_differ = 0;
    int n_ep = r->ppo.num_ppo_epochs;
    bool skipped = false;
    for (int ep = 0; ep < n_ep; ep++) {
        mt_run_zero_grad(run);
        double loss_sum = 0;
        /* step micro-batch k is this rank's lb-th: rows lb·B .. of its rollout */
        for (int k = run->rank, lb = 0; k < ga; k += run->n_ranks, lb++) {
            int r0 = lb * B;
            size_t o = (size_t)r0 * T, BT = (size_t)B * T;
            mt_forward_result fr;
            MT_TRY(mt_rl_train_forward(run, e, ro, r0, ep * ga + k, ep == 0, q->logp, &fr, &mm_tokens, &mm_differ,
                                       err));
            const float *xf = mt_workspace_hidden(run->ws, mt_model_config(run->model)->n_layers);
            for (size_t i = 0; i < BT; i++) {
                double v = 0;
                for (int j = 0; e->mask[i] && j < H; j++) v += (double)q->w[j] * xf[i * H + j];
                q->values[i] = (float)v;
            }
            double pl, vl;
            mt_ppo_stats ps, vs;
            MT_TRY(mt_ppo_policy_loss(BT, q->logp, q->old_logp + o, q->adv + o, e->mask, r->ppo.cliprange, &pl,
                                      q->d_logp, &ps, err));
            MT_TRY(mt_ppo_value_loss(BT, q->values, q->old_values + o, q->returns + o, e->mask, r->ppo.cliprange_value,
                                     &vl, q->d_values, &vs, err));
            double vf = r->ppo.vf_coef;
            memset(q->dhidden, 0, BT * (size_t)H * sizeof(float));
            for (size_t i = 0; i < BT; i++) {
                /* token_loss = −log π */
                e->buf.dloss[i] = e->mask[i] ? -q->d_logp[i] / (float)ga : 0.0f;
                if (!e->mask[i]) continue;
                float dv = (float)(vf * q->d_values[i] / ga);
                for (int j = 0; j < H; j++) {
                    q->dhidden[i * H + j] = dv * q->w[j];
                    q->dw[j] += dv * xf[i * H + j];
                }
            }
            MT_TRY(mt_model_backward_hidden(run->model, run->ws, e->buf.dloss, q->dhidden, err));
            loss_sum += (pl + vf * vl) / ga;
            pl_sum += pl;
            vl_sum += vl;
            aux_sum += fr.aux_loss;
            pacc.clipfrac += ps.clipfrac;
            pacc.approxkl += ps.approxkl;
            pacc.ratio_mean += ps.ratio_mean;
            vacc.clipfrac += vs.clipfrac;
        }
        if (ep + 1 < n_ep) {
            mt_step_out u = {0};
            mt_run_update(run, loss_sum, &u);
            skipped |= u.skipped;
            continue;
        }
        /* the last update carries the step's record: the shares of every epoch's means (over
         * ga · num_ppo_epochs micro-batches), the rollout's figures over ranks */
        double n_mb = (double)ga * n_ep;
        pacc.clipfrac /= n_mb;
        pacc.approxkl /= n_mb;
        pacc.ratio_mean /= n_mb;
        vacc.clipfrac /= n_mb;
        mt_rl_metric l[MT_PPO_N_METRICS];
        mt_ppo_metrics_list(&obj, &pacc, pl_sum / n_mb, &vacc, vl_sum / n_mb, l);
        for (int i = 0; i < MT_PPO_N_METRICS; i++) mt_obj_metric(&so->metrics, l[i].name, l[i].value);
        mt_obj_metric(&so->metrics, "policy/ratio_mean", pacc.ratio_mean);
        MT_TRY(mt_rl_last_update(run, e, ro, &rollout_m, mm_tokens, mm_differ, loss_sum, aux_sum / n_mb, so, err));
        so->skipped |= skipped;
    }
    return MT_OK;
}

static mt_status ppo_eval(mt_run *run, mt_eval_out *eo, mt_error *err) {
    ppo *q = run->obj_state;
    return mt_rl_eval(run, &q->env, eo, err);
}

static void ppo_close(mt_run *run) {
    ppo *q = run->obj_state;
    if (!q) return;
    mt_rl_close(&q->env);
    buffers_free(q);
    free(q->w);
    free(q->dw);
    free(q->logp);
    free(q->d_logp);
    free(q->values);
    free(q->d_values);
    free(q->dhidden);
    free(q->pidx);
    free(q->slot);
    free(q);
    run->obj_state = NULL;
}

const mt_objective mt_objective_ppo = {
    .method = "ppo",
    .data_parallel = true,
    .open_data = ppo_open_data,
    .open_model = ppo_open_model,
    .step = ppo_step,
    .eval = ppo_eval,
    .close = ppo_close,
};
