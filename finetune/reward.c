/* reward.c — the reward model as an objective: LoRA plus a scalar head ("score", as
 * transformers' *ForSequenceClassification names it) read at the last token of each sequence,
 * trained with TRL's Bradley–Terry loss on pairs; exported as a PEFT SEQ_CLS adapter whose
 * modules_to_save holds the head. The head's gradient enters the model's backward at the
 * final hidden states. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "objective-impl.h"
#include "pairs-impl.h"
#include "peft/lora.h"
#include "rl/rl.h"

typedef struct rwd {
    mt_pair_set train, eval;
    int H;
    float *w, *dw;     /* [H] the head (one label), its gradient */
    mt_batch_buf buf;  /* 2B rows: chosen, then rejected */
    int64_t *rowidx;   /* [2B] */
    int32_t *last;     /* [2B] position whose hidden state is read; -1 for padding rows */
    float *dhidden;    /* [2B·T·H] */
} rwd;

/* The position whose input is the sequence's last token before the EOS TRL appends: the last
 * position predicting a completion token (transformers pools at the last non-pad token, and
 * with EOS as pad that is the same place). */
static int32_t pool_position(const mt_pair_set *s, int64_t row, int T) {
    for (int t = T - 1; t >= 0; t--)
        if (s->cmask[row * T + t]) return t;
    return 0;
}

static mt_status rwd_open_data(mt_run *run, mt_error *err) {
    rwd *p = mt_xcalloc(1, sizeof *p);
    run->obj_state = p;
    run->T = run->r->data.max_seq_len;
    MT_TRY(mt_pairs_load_run(run, false, false, &p->train, err));
    MT_TRY(mt_pairs_load_run(run, true, false, &p->eval, err));
    if (p->train.n == 0)
        return mt_error_set(err, MT_ERR_INVALID, "%s: no training pairs", run->r->data.pairs ? "data.pairs" : "data.train");
    mt_run_note(run->opts, "pairs: %lld train, %lld held out; %lld truncated to %d tokens", (long long)p->train.n,
                (long long)p->eval.n, (long long)(p->train.n_truncated + p->eval.n_truncated), run->T);
    run->train_rows = p->train.rows;
    run->n_examples = p->train.n;
    return MT_OK;
}

static mt_status rwd_open_model(mt_run *run, mt_error *err) {
    rwd *p = run->obj_state;
    const mt_recipe *r = run->r;
    const mt_config *cfg = mt_model_config(run->model);
    int B = r->train.micro_batch, T = run->T;
    p->H = cfg->hidden_size;
    p->w = mt_xcalloc((size_t)p->H, sizeof(float));
    p->dw = mt_xcalloc((size_t)p->H, sizeof(float));
    if (run->from_score) {
        /* adapter.from is a reward model: continue its head */
        if (run->from_score_rows != 1 || run->from_score_cols != p->H)
            return mt_error_set(err, MT_ERR_INVALID, "adapter.from: %s has a score head of [%lld, %lld], not [1, %d]",
                                r->adapter.from, (long long)run->from_score_rows, (long long)run->from_score_cols, p->H);
        memcpy(p->w, run->from_score, (size_t)p->H * sizeof(float));
    } else {
        /* transformers initialises the score layer normal(0, initializer_range) */
        mt_rng rng;
        mt_rng_seed(&rng, mt_hash_u64((uint64_t)r->train.seed, 0x73636f7265ULL));
        float std = cfg->initializer_range > 0 ? cfg->initializer_range : 0.02f;
        for (int h = 0; h < p->H; h++) p->w[h] = std * mt_rng_normal(&rng);
    }
    double scale = r->train.head_lr == MT_RECIPE_UNSET ? 1.0 : r->train.head_lr / r->train.lr;
    mt_run_add_trainable(run, "score.weight", p->w, p->dw, p->H, true, scale);
    int max_rank = run->lora ? mt_lora_max_rank(run->lora) : 0;
    MT_TRY(mt_run_train_workspace(run, 2 * B, T, max_rank, err));
    mt_batch_buf_init(&p->buf, 2 * B, T);
    p->rowidx = mt_xcalloc((size_t)2 * B, sizeof *p->rowidx);
    p->last = mt_xcalloc((size_t)2 * B, sizeof *p->last);
    p->dhidden = mt_xcalloc((size_t)2 * B * T * p->H, sizeof(float));
    mt_run_note(run->opts, "reward head: score [1, %d]%s%s", p->H, run->from_score ? " from adapter.from" : "",
                scale != 1.0 ? " with its own learning rate (train.head_lr)" : "");
    return MT_OK;
}

/* Rows 0..B-1 the chosen sequences of pairs pidx[0..n), B..2B-1 the rejected ones. */
static void fill(rwd *p, const mt_pair_set *s, const int64_t *pidx, int n, int B, int T) {
    mt_pairs_fill_batch(&p->buf, s, pidx, n, B, p->rowidx);
    for (int b = 0; b < 2 * B; b++) p->last[b] = b % B < n ? pool_position(s, p->rowidx[b], T) : -1;
}

/* Rewards of the batch's rows from the final hidden states: r = w · h[last]. */
static void rewards(const rwd *p, const float *xf, int B, int T, float *rc, float *rr, int n) {
    for (int b = 0; b < n; b++)
        for (int side = 0; side < 2; side++) {
            int row = side * B + b;
            const float *h = xf + ((size_t)row * T + (size_t)p->last[row]) * p->H;
            double s = 0;
            for (int k = 0; k < p->H; k++) s += (double)p->w[k] * h[k];
            (side ? rr : rc)[b] = (float)s;
        }
}

static mt_status forward_rows(mt_run *run, rwd *p, const mt_forward_opts *fo, mt_forward_result *fr, mt_error *err) {
    mt_batch batch = mt_batch_buf_view(&p->buf);
    batch.targets = NULL; /* no language-model loss: the head reads the hidden states */
    return mt_model_forward(run->model, run->ws, &batch, fo, fr, err);
}

static void add_metrics(mt_obj_metrics *ms, const mt_reward_metrics *m) {
    mt_rl_metric l[MT_REWARD_N_METRICS];
    mt_reward_metrics_list(m, l);
    for (int i = 0; i < MT_REWARD_N_METRICS; i++) mt_obj_metric(ms, l[i].name, l[i].value);
}

static double center(const mt_recipe *r) { return r->reward.center_coef == MT_RECIPE_UNSET ? NAN : r->reward.center_coef; }

static mt_status rwd_step(mt_run *run, const int64_t *idx, int n, mt_step_out *so, mt_error *err) {
    rwd *p = run->obj_state;
    const mt_recipe *r = run->r;
    int B = r->train.micro_batch, ga = r->train.grad_accum, T = run->T, L = mt_model_config(run->model)->n_layers;
    MT_ASSERT(n == B * ga);
    float *rc = mt_xcalloc((size_t)B, sizeof(float)), *rr = mt_xcalloc((size_t)B, sizeof(float));
    float *dc = mt_xcalloc((size_t)B, sizeof(float)), *dr = mt_xcalloc((size_t)B, sizeof(float));
    mt_run_zero_grad(run);
    double loss_sum = 0, aux_sum = 0;
    mt_reward_metrics acc = {0};
    mt_status st = MT_OK;
    so->n_tokens = 0;
    /* this rank's micro-batches (all of them alone), each weighted 1/ga of the whole step */
    for (int g = run->rank; g < ga && st == MT_OK; g += run->n_ranks) {
        fill(p, &p->train, idx + (size_t)g * B, B, B, T);
        mt_forward_opts fo = mt_run_forward_opts(run, g);
        mt_forward_result fr;
        st = forward_rows(run, p, &fo, &fr, err);
        if (st != MT_OK) break;
        const float *xf = mt_workspace_hidden(run->ws, L);
        rewards(p, xf, B, T, rc, rr, B);
        double loss;
        mt_reward_metrics m;
        st = mt_reward_bt_loss((size_t)B, rc, rr, NULL, center(r), &loss, dc, dr, &m, err);
        if (st != MT_OK) break;
        /* ∂L/∂h[last] = ∂L/∂r · w and ∂L/∂w = Σ ∂L/∂r · h[last], each micro-batch weighted 1/ga */
        memset(p->dhidden, 0, (size_t)2 * B * T * p->H * sizeof(float));
        for (int row = 0; row < 2 * B; row++) {
            float d = (row < B ? dc[row] : dr[row - B]) / (float)ga;
            size_t o = ((size_t)row * T + (size_t)p->last[row]) * p->H;
            for (int k = 0; k < p->H; k++) {
                p->dhidden[o + k] = d * p->w[k];
                p->dw[k] += d * xf[o + k];
            }
        }
        st = mt_model_backward_hidden(run->model, run->ws, NULL, p->dhidden, err);
        loss_sum += loss;
        aux_sum += fr.aux_loss;
        acc.accuracy += m.accuracy / ga;
        acc.margin += m.margin / ga;
        acc.mean_reward += m.mean_reward / ga;
        acc.min_reward = g == run->rank || m.min_reward < acc.min_reward ? m.min_reward : acc.min_reward;
        acc.max_reward = g == run->rank || m.max_reward > acc.max_reward ? m.max_reward : acc.max_reward;
        so->n_tokens += (int64_t)2 * B * T;
    }
    free(rc);
    free(rr);
    free(dc);
    free(dr);
    MT_TRY(st);
    add_metrics(&so->metrics, &acc);
    so->loss = loss_sum / ga;
    so->aux = aux_sum / ga;
    mt_run_update(run, so->loss, so);
    return MT_OK;
}

static mt_status rwd_eval(mt_run *run, mt_eval_out *eo, mt_error *err) {
    rwd *p = run->obj_state;
    if (p->eval.n == 0) return MT_OK;
    const mt_recipe *r = run->r;
    int B = r->train.micro_batch, T = run->T, L = mt_model_config(run->model)->n_layers;
    size_t n = (size_t)p->eval.n;
    float *rc = mt_xcalloc(n, sizeof(float)), *rr = mt_xcalloc(n, sizeof(float));
    int64_t *pidx = mt_xcalloc((size_t)B, sizeof *pidx);
    mt_status st = MT_OK;
    for (size_t i = 0; i < n && st == MT_OK; i += (size_t)B) {
        int k = (int)(n - i < (size_t)B ? n - i : (size_t)B);
        for (int b = 0; b < k; b++) pidx[b] = (int64_t)(i + (size_t)b);
        fill(p, &p->eval, pidx, k, B, T);
        mt_forward_opts fo = {.adapter = mt_lora_adapter(run->lora)};
        mt_forward_result fr;
        st = forward_rows(run, p, &fo, &fr, err);
        if (st == MT_OK) rewards(p, mt_workspace_hidden(run->ws, L), B, T, rc + i, rr + i, k);
    }
    if (st == MT_OK) {
        mt_reward_metrics m;
        st = mt_reward_bt_loss(n, rc, rr, NULL, center(r), &eo->loss, NULL, NULL, &m, err);
        if (st == MT_OK) add_metrics(&eo->metrics, &m);
    }
    free(rc);
    free(rr);
    free(pidx);
    return st;
}

static mt_status rwd_head(mt_run *run, float **w, int64_t *rows, int64_t *cols) {
    rwd *p = run->obj_state;
    *w = p->w;
    *rows = 1;
    *cols = p->H;
    return MT_OK;
}

static void rwd_close(mt_run *run) {
    rwd *p = run->obj_state;
    if (!p) return;
    if (run->train_rows.tokens == p->train.rows.tokens) memset(&run->train_rows, 0, sizeof run->train_rows);
    mt_pair_set_free(&p->train);
    mt_pair_set_free(&p->eval);
    mt_batch_buf_free(&p->buf);
    free(p->w);
    free(p->dw);
    free(p->rowidx);
    free(p->last);
    free(p->dhidden);
    free(p);
    run->obj_state = NULL;
}

const mt_objective mt_objective_reward = {
    .method = "reward",
    .data_parallel = true,
    .open_data = rwd_open_data,
    .open_model = rwd_open_model,
    .step = rwd_step,
    .eval = rwd_eval,
    .head = rwd_head,
    .close = rwd_close,
};
