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
    return MT_OK;
}

static mt_status grpo_step(mt_run *run, const int64_t *idx, int n, mt_step_out *so, mt_error *err) {
    grpo *q = run->obj_state;
    mt_rl_env *g = &q->env;
    const mt_recipe *r = run->r;
    int mb = r->train.micro_batch, ga = r->train.grad_accum, G = g->G, T = g->T, B = mb * G;
    MT_ASSERT(n == mb * ga);
    mt_rollout_free(&q->ro);
    uint64_t seed = mt_hash_u64(mt_hash_u64((uint64_t)r->train.seed, 0x6772706fULL), (uint64_t)run->st.step);
    MT_TRY(mt_rl_sample(run, g, &g->train, idx, n, G, seed, &q->ro, err));
    mt_rollout *ro = &q->ro;
    int N = ro->n;
    MT_TRY(mt_rl_score(run, g, &g->train, ro, err));
    free(q->adv);
    q->adv = mt_xcalloc((size_t)N, sizeof(float));
    mt_grpo_adv_stats as;
    MT_TRY(mt_grpo_advantages((size_t)n, (size_t)G, ro->reward, q->scale, q->adv, &as, err));
    free(q->ref_logp);
    q->ref_logp = NULL;
    if (q->cfg.beta != 0) {
        q->ref_logp = mt_xcalloc((size_t)N * T, sizeof(float));
        MT_TRY(mt_rl_logps(run, g, ro, g->ref_lora ? mt_lora_adapter(g->ref_lora) : NULL, false, NULL, q->ref_logp, NULL, err));
    }
    free(q->old_logp);
    q->old_logp = r->grpo.num_iterations > 1 ? mt_xcalloc((size_t)N * T, sizeof(float)) : NULL;
    double active = 0;
    for (int i = 0; i < N; i++) active += ro->C[i];
    bool moe = mt_model_config(run->model)->n_experts > 0;

    double loss_last = 0, aux_sum = 0;
    int64_t mm_tokens = 0, mm_differ = 0;
    mt_grpo_metrics acc = {0};
    int n_acc = 0;
    for (int it = 0; it < r->grpo.num_iterations; it++) {
        mt_run_zero_grad(run);
        double loss_sum = 0;
        for (int k = 0; k < ga; k++) {
            int r0 = k * B;
            mt_rl_fill_rows(run, g, ro, r0, B, moe);
            mt_batch batch = mt_batch_buf_view(&g->buf);
            mt_forward_opts fo = mt_run_forward_opts(run, it * ga + k);
            fo.temperature = g->sample.temperature;
            if (moe) {
                fo.route_in = g->route_in;
                fo.route_out = g->route_out;
            }
            mt_forward_result fr;
            MT_TRY(mt_model_forward(run->model, run->ws, &batch, &fo, &fr, err));
            if (moe && it == 0) mt_rl_count_mismatch(run, g, B, &mm_tokens, &mm_differ);
            size_t o = (size_t)r0 * T;
            for (size_t i = 0; i < (size_t)B * T; i++) q->logp[i] = g->mask[i] ? -fr.token_loss[i] : 0.0f;
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
        mt_step_out u = {0};
        mt_run_update(run, loss_sum, &u);
        so->grad_norm = u.grad_norm;
        so->lr = u.lr;
        so->skipped |= u.skipped;
        loss_last = loss_sum;
    }
    acc.kl /= n_acc;
    acc.clip_low_mean /= n_acc;
    acc.clip_high_mean /= n_acc;
    acc.clip_region_mean /= n_acc;
    if (q->cfg.beta == 0) acc.kl = NAN;
    mt_rl_metric l[MT_GRPO_N_METRICS];
    mt_grpo_metrics_list(&as, &acc, l);
    for (int i = 0; i < MT_GRPO_N_METRICS; i++) mt_obj_metric(&so->metrics, l[i].name, l[i].value);
    mt_rl_rollout_metrics(g, ro, &so->metrics);
    if (moe) mt_obj_metric(&so->metrics, "routing/mismatch", mm_tokens ? (double)mm_differ / (double)mm_tokens : 0.0);
    so->loss = loss_last;
    so->aux = aux_sum / (ga * r->grpo.num_iterations);
    int64_t toks = 0;
    for (int i = 0; i < N; i++) toks += ro->P[i] + ro->C[i];
    so->n_tokens = toks;
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
    free(q);
    run->obj_state = NULL;
}

const mt_objective mt_objective_grpo = {
    .method = "grpo",
    .open_data = grpo_open_data,
    .open_model = grpo_open_model,
    .step = grpo_step,
    .eval = grpo_eval,
    .close = grpo_close,
};
