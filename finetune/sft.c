/* sft.c — supervised fine-tuning as an objective: next-token cross-entropy over the rows of the
 * data, the mean over every target token of the step's micro-batches. */
#include <math.h>
#include <string.h>

#include "objective-impl.h"
#include "peft/lora.h"

static mt_status sft_open_model(mt_run *run, mt_error *err) {
    const mt_recipe *r = run->r;
    int max_rank = run->lora ? mt_lora_max_rank(run->lora) : 0;
    MT_TRY(mt_run_train_workspace(run, r->train.micro_batch, run->T, max_rank, err));
    mt_batch_buf_init(&run->buf, r->train.micro_batch, run->T);
    if (run->eval_rows.n_rows) {
        MT_TRY(mt_workspace_init(&run->eval_ws, run->model, r->train.micro_batch, run->T, false, max_rank, err));
        mt_batch_buf_init(&run->eval_buf, r->train.micro_batch, run->T);
    }
    return MT_OK;
}

static mt_status sft_step(mt_run *run, const int64_t *idx, int n, mt_step_out *so, mt_error *err) {
    const mt_recipe *r = run->r;
    int B = r->train.micro_batch, ga = r->train.grad_accum, T = run->T;
    MT_ASSERT(n == B * ga);
    /* The step's loss is the mean over every target token of all its micro-batches (as
     * transformers does with num_items_in_batch), so accumulation does not reweight rows. */
    int64_t n_step = 0;
    for (int i = 0; i < n; i++) n_step += run->train_rows.n_targets[idx[i]];
    mt_run_zero_grad(run);
    double loss_sum = 0, aux_sum = 0;
    so->n_tokens = 0;
    /* this rank's micro-batches (all of them alone); n_step counts the whole step's targets, so
     * the ranks' losses and gradients add up to the step's (docs/scale-out.md) */
    for (int g = run->rank; g < ga; g += run->n_ranks) {
        mt_batch_buf_fill(&run->buf, &run->train_rows, idx + (size_t)g * B, B);
        size_t nt = (size_t)B * T;
        float w = n_step > 0 ? 1.0f / (float)n_step : 0.0f;
        for (size_t t = 0; t < nt; t++) run->buf.dloss[t] = run->buf.targets[t] != MT_IGNORE_INDEX ? w : 0.0f;
        mt_batch batch = mt_batch_buf_view(&run->buf);
        mt_forward_opts fo = mt_run_forward_opts(run, g);
        mt_forward_result fr;
        MT_TRY(mt_model_forward(run->model, run->ws, &batch, &fo, &fr, err));
        MT_TRY(mt_model_backward(run->model, run->ws, run->buf.dloss, err));
        loss_sum += fr.loss_sum;
        aux_sum += fr.aux_loss;
        so->n_tokens += (int64_t)B * T;
    }
    so->loss = n_step ? loss_sum / (double)n_step : NAN;
    so->aux = aux_sum / ga;
    mt_run_update(run, so->loss, so);
    return MT_OK;
}

static mt_status sft_eval(mt_run *run, mt_eval_out *eo, mt_error *err) {
    if (!run->eval_rows.n_rows) return MT_OK;
    MT_TRY(mt_eval_rows(run->model, run->eval_ws, &run->eval_buf, &run->eval_rows, mt_lora_adapter(run->lora),
                        &eo->loss, &eo->n_tokens, err));
    eo->has_ppl = true;
    return MT_OK;
}

const mt_objective mt_objective_sft = {
    .method = "sft",
    .data_parallel = true,
    .open_data = mt_run_load_docs,
    .open_model = sft_open_model,
    .step = sft_step,
    .eval = sft_eval,
};

const mt_objective *mt_objective_for(mt_recipe_method m) {
    switch (m) {
    case MT_RECIPE_METHOD_SFT: return &mt_objective_sft;
    case MT_RECIPE_METHOD_DPO:
    case MT_RECIPE_METHOD_SIMPO:
    case MT_RECIPE_METHOD_ORPO: return &mt_objective_pref;
    case MT_RECIPE_METHOD_REWARD: return &mt_objective_reward;
    case MT_RECIPE_METHOD_GRPO: return &mt_objective_grpo;
    case MT_RECIPE_METHOD_PPO: return &mt_objective_ppo;
    }
    return &mt_objective_sft;
}
