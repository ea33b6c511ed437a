/* grpo.c — GRPO as an objective: each loop step samples a group of completions for each of its
 * prompts from the policy itself (rollout.c), scores them, turns the scores into
 * group-relative advantages and makes grpo.num_iterations updates on that rollout batch with
 * rl/'s clipped token loss (optionally a k3 KL to the reference). The training pass measures
 * how often its routing differs from the rollout's (routing/mismatch) and replays the
 * rollout's experts where it does, so that rollout and training score the same network. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peft/lora.h"
#include "rollout-impl.h"

typedef struct grpo {
    mt_rl_env env;
    mt_grpo_config cfg;
    mt_grpo_scale scale;
    float *logp, *d_logp;     /* [rows·T] the micro-batch's */
    mt_rollout ro;            /* the step's */
    float *old_logp, *ref_logp; /* [n·T] the rollout's, for iterations > 0 / beta > 0 */
    float *adv;               /* [n] */
    int64_t *pidx;            /* [micro_batch · grad_accum] this rank's prompts of the step */
    int *slot;                /* [micro_batch · grad_accum] their places in the step */
} grpo;

static mt_status grpo_open_data(mt_run *run, mt_error *err) {
    grpo *q = mt_xcalloc(1, sizeof *q);
    run->obj_state = q;
    return mt_rl_open_data(run, &q->env, run->r->rollout.num_generations, err);
}

static mt_status grpo_open_model(mt_run *run, mt_error *err) {
    grpo *q = run->obj_state;
    const mt_recipe *r = run->r;
    MT_TRY(mt_rl_open_model(run, &q->env, r->grpo.beta != 0, err));
    mt_grpo_config_default(&q->cfg);
    static const mt_grpo_loss_type lt[] = {[MT_RECIPE_GRPO_LOSS_GRPO] = MT_GRPO_LOSS_GRPO,
                                           [MT_RECIPE_GRPO_LOSS_BNPO] = MT_GRPO_LOSS_BNPO,
                                           [MT_RECIPE_GRPO_LOSS_DR_GRPO] = MT_GRPO_LOSS_DR_GRPO,
                                           [MT_RECIPE_GRPO_LOSS_DAPO] = MT_GRPO_LOSS_DAPO};
    q->cfg.loss_type = lt[r->grpo.loss_type];
    q->cfg.epsilon_low = r->grpo.epsilon;
    q->cfg.epsilon_high = r->grpo.epsilon_high == MT_RECIPE_UNSET ? r->grpo.epsilon : r->grpo.epsilon_high;
    q->cfg.beta = r->grpo.beta;
    q->cfg.max_completion_length = (size_t)q->env.max_new;
    q->scale = r->grpo.scale_rewards == MT_RECIPE_SCALE_GROUP   ? MT_GRPO_SCALE_GROUP
               : r->grpo.scale_rewards == MT_RECIPE_SCALE_BATCH ? MT_GRPO_SCALE_BATCH
                                                                : MT_GRPO_SCALE_NONE;
    size_t n = (size_t)q->env.buf.B * q->env.T;
    q->logp = mt_xcalloc(n, sizeof(float));
    q->d_logp = mt_xcalloc(n, sizeof(float));
    size_t np = (size_t)r->train.micro_batch * (size_t)r->train.grad_accum;
    q->pidx = mt_xcalloc(np, sizeof *q->pidx);
    q->slot = mt_xcalloc(np, sizeof *q->slot);
    return MT_OK;
}

/* Group-relative advantages of this rank's rollout and the batch's statistics over every rank.
 * A rank holds whole groups (a prompt's completions are sampled where its micro-batch trains),
 * so group means and stds are its own; what spans ranks is the batch: the reward mean and std
 * (sums, then squared deviations, over ranks, as TRL's nanmean and nanstd), the share of
 * zero-std groups, and with scale_rewards: batch the std every advantage is divided by. */
static mt_status advantages(mt_run *run, grpo *q, mt_grpo_adv_stats *as, mt_error *err) {
    const mt_rollout *ro = &q->ro;
    size_t G = (size_t)q->env.G, N = (size_t)ro->n;
    bool batch = q->scale == MT_GRPO_SCALE_BATCH;
    /* with ranks, the batch std comes from every rank's rewards: centre here, divide below */
    bool later = batch && run->n_ranks > 1;
    MT_TRY(mt_grpo_advantages(N / G, G, ro->reward, later ? MT_GRPO_SCALE_NONE : q->scale, q->adv, as, err));
    double s[3] = {0, 0, llround(as->frac_reward_zero_std * (double)N)}; /* sum, count, zero-std completions */
    for (size_t i = 0; i < N; i++)
        if (!isnan(ro->reward[i])) s[0] += ro->reward[i], s[1]++;
    MT_TRY(mt_run_dist_sum(run, s, 3, err));
    double mean = s[1] > 0 ? s[0] / s[1] : NAN, v = 0, n_all = (double)N;
    for (size_t i = 0; i < N; i++)
        if (!isnan(ro->reward[i])) v += (ro->reward[i] - mean) * (ro->reward[i] - mean);
    double vv[2] = {v, n_all};
    MT_TRY(mt_run_dist_sum(run, vv, 2, err));
    as->reward_mean = mean;
    as->reward_std = s[1] > 1 ? sqrt(vv[0] / s[1] * (s[1] / (s[1] - 1))) : NAN;
    if (vv[1] == 1) as->reward_std = 0; /* TRL uses a zero std for a single completion */
    as->frac_reward_zero_std = s[2] / vv[1];
    if (later) {
        double std = as->reward_std;
        for (size_t i = 0; i < N; i++) q->adv[i] = isnan(std) ? 0.0f : (float)(q->adv[i] / (std + 1e-4));
        as->frac_reward_zero_std = fabs(std) <= 1e-8 ? 1.0 : 0.0;
    }
    return MT_OK;
}

/* One step on this rank's share: its micro-batches' prompts sampled and scored here, their
 * groups' advantages (with the batch statistics over ranks), and grpo.num_iterations passes
 * over its micro-batches, each ending in an update every rank makes together. Losses,
 * gradients and metrics are the rank's shares of the step's (docs/scale-out.md). */
static mt_status grpo_step(mt_run *run, const int64_t *idx, int n, mt_step_out *so, mt_error *err) {
    grpo *q = run->obj_state;
    mt_rl_env *g = &q->env;
    const mt_recipe *r = run->r;
    int mb = r->train.micro_batch, ga = r->train.grad_accum, G = g->G, T = g->T, B = mb * G;
    int n_it = r->grpo.num_iterations;
    MT_ASSERT(n == mb * ga);
    mt_rollout_free(&q->ro);
    uint64_t seed = mt_hash_u64(mt_hash_u64((uint64_t)r->train.seed, 0x6772706fULL), (uint64_t)run->st.step);
    int np = mt_rl_rank_prompts(run, idx, q->pidx, q->slot);
    MT_TRY(mt_rl_sample(run, g, &g->train, q->pidx, q->slot, np, G, seed, &q->ro, err));
    mt_rollout *ro = &q->ro;
    int N = ro->n;
    MT_TRY(mt_rl_score(run, g, &g->train, ro, err));
    free(q->adv);
    q->adv = mt_xcalloc((size_t)N, sizeof(float));
    mt_grpo_adv_stats as;
    MT_TRY(advantages(run, q, &as, err));
    mt_obj_metrics rollout_m = {0};
    MT_TRY(mt_rl_rollout_metrics(run, g, ro, &rollout_m, err));
    free(q->ref_logp);
    q->ref_logp = NULL;
    if (q->cfg.beta != 0) {
        q->ref_logp = mt_xcalloc((size_t)N * T, sizeof(float));
        MT_TRY(mt_rl_logps(run, g, ro, g->ref_lora ? mt_lora_adapter(g->ref_lora) : NULL, false, NULL, q->ref_logp, NULL, err));
    }
    free(q->old_logp);
    q->old_logp = n_it > 1 ? mt_xcalloc((size_t)N * T, sizeof(float)) : NULL;
    /* dapo's num_items: the completion tokens of the whole step's rollout, on every rank */
    double active = 0;
    for (int i = 0; i < N; i++) active += ro->C[i];
    MT_TRY(mt_run_dist_sum(run, &active, 1, err));

    double aux_sum = 0;
    int64_t mm_tokens = 0, mm_differ = 0;
    mt_grpo_metrics acc = {0};
    int n_acc = 0;
    bool skipped = false;
    for (int it = 0; it < n_it; it++) {
        mt_run_zero_grad(run);
        double loss_sum = 0;
        /* step micro-batch k is this rank's lb-th: rows lb·B .. of its rollout */
        for (int k = run->rank, lb = 0; k < ga; k += run->n_ranks, lb++) {
            int r0 = lb * B;
            mt_forward_result fr;
            MT_TRY(mt_rl_train_forward(run, g, ro, r0, it * ga + k, it == 0, q->logp, &fr, &mm_tokens, &mm_differ,
                                       err));
            size_t o = (size_t)r0 * T;
            if (q->old_logp && it == 0) memcpy(q->old_logp + o, q->logp, (size_t)B * T * sizeof(float));
            mt_grpo_batch gb = {.B = (size_t)B, .T = (size_t)T, .logp = q->logp,
                                .old_logp = q->old_logp && it > 0 ? q->old_logp + o : NULL,
                                .ref_logp = q->ref_logp ? q->ref_logp + o : NULL,
                                .advantages = q->adv + r0, .mask = g->mask, .num_items = active};
            double loss;
            mt_grpo_metrics gm;
            MT_TRY(mt_grpo_loss(&q->cfg, &gb, &loss, q->d_logp, &gm, err));
            /* dapo normalises by the tokens of the whole rollout already; the others are means
             * of the micro-batches */
            double w = q->cfg.loss_type == MT_GRPO_LOSS_DAPO ? 1.0 : 1.0 / ga;
            for (size_t i = 0; i < (size_t)B * T; i++) g->buf.dloss[i] = g->mask[i] ? (float)(-w * q->d_logp[i]) : 0.0f;
            MT_TRY(mt_model_backward(run->model, run->ws, g->buf.dloss, err));
            loss_sum += w * loss;
            aux_sum += fr.aux_loss;
            acc.kl += gm.kl;
            acc.clip_low_mean += gm.clip_low_mean;
            acc.clip_high_mean += gm.clip_high_mean;
            acc.clip_region_mean += gm.clip_region_mean;
            acc.clip_low_min = n_acc == 0 || gm.clip_low_min < acc.clip_low_min ? gm.clip_low_min : acc.clip_low_min;
            acc.clip_high_max = n_acc == 0 || gm.clip_high_max > acc.clip_high_max ? gm.clip_high_max : acc.clip_high_max;
            n_acc++;
        }
        if (it + 1 < n_it) {
            mt_step_out u = {0};
            mt_run_update(run, loss_sum, &u);
            skipped |= u.skipped;
            continue;
        }
        /* the last update carries the step's record: the shares of every iteration's means
         * (over ga · num_iterations micro-batches), the rollout's figures over ranks */
        double n_mb = (double)ga * n_it;
        acc.kl /= n_mb;
        acc.clip_low_mean /= n_mb;
        acc.clip_high_mean /= n_mb;
        acc.clip_region_mean /= n_mb;
        if (q->cfg.beta == 0) acc.kl = NAN;
        mt_rl_metric l[MT_GRPO_N_METRICS];
        mt_grpo_metrics_list(&as, &acc, l);
        for (int i = 0; i < MT_GRPO_N_METRICS; i++) {
            /* the first three (reward, reward_std, frac_reward_zero_std) are the batch's already */
            if (i < 3) mt_rl_metric_global(run, &so->metrics, l[i].name, l[i].value);
            else mt_obj_metric(&so->metrics, l[i].name, l[i].value);
        }
        MT_TRY(mt_rl_last_update(run, g, ro, &rollout_m, mm_tokens, mm_differ, loss_sum, aux_sum / n_mb, so, err));
        so->skipped |= skipped;
    }
    return MT_OK;
}

static mt_status grpo_eval(mt_run *run, mt_eval_out *eo, mt_error *err) {
    grpo *q = run->obj_state;
    return mt_rl_eval(run, &q->env, eo, err);
}

static void grpo_close(mt_run *run) {
    grpo *q = run->obj_state;
    if (!q) return;
    mt_rl_close(&q->env);
    free(q->logp);
    free(q->d_logp);
    mt_rollout_free(&q->ro);
    free(q->old_logp);
    free(q->ref_logp);
    free(q->adv);
    free(q->pidx);
    free(q->slot);
    free(q);
    run->obj_state = NULL;
}

const mt_objective mt_objective_grpo = {
    .method = "grpo",
    .data_parallel = true,
    .open_data = grpo_open_data,
    .open_model = grpo_open_model,
    .step = grpo_step,
    .eval = grpo_eval,
    .close = grpo_close,
};
