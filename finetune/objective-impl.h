/* objective-impl.h — what a training method is to the loop: SFT, the preference losses, the
 * reward model, GRPO and PPO each fill this table, and train.c/run.c share everything else
 * (model and adapter, optimiser with parameter groups, schedule, checkpoints and resume,
 * evaluation cadence, store records, export). */
#ifndef MT_FINETUNE_OBJECTIVE_IMPL_H
#define MT_FINETUNE_OBJECTIVE_IMPL_H

#include "run-impl.h"
#include "store/store.h"

#define MT_OBJ_MAX_METRICS 40

/* A metric list an objective fills with TRL's names; names must outlive the step (literals or
 * strings the objective owns). */
typedef struct mt_obj_metrics {
    mt_metric m[MT_OBJ_MAX_METRICS];
    int n;
} mt_obj_metrics;

void mt_obj_metric(mt_obj_metrics *ms, const char *name, double value);

typedef struct mt_step_out {
    double loss, aux, grad_norm, lr;
    int64_t n_tokens;  /* input tokens the step processed (for tokens/s) */
    bool skipped;      /* non-finite: the update was not applied */
    mt_obj_metrics metrics;
} mt_step_out;

typedef struct mt_eval_out {
    double loss;       /* the objective's held-out loss (eval_loss) */
    int64_t n_tokens;
    bool has_ppl;      /* SFT: eval_ppl = exp(loss) */
    mt_obj_metrics metrics; /* logged with an eval_ prefix */
} mt_eval_out;

typedef struct mt_objective {
    const char *method; /* the store's run method */
    /* its step does this rank's share of the micro-batches (see mt_run_update), so it may run
     * on several data-parallel ranks; false: refused under mpirun with more than one rank */
    bool data_parallel;
    /* Reads the data: fills run->train_rows (rows with targets: the thresholds read them),
     * run->n_examples (what an epoch visits), and what the objective evaluates on. */
    mt_status (*open_data)(mt_run *run, mt_error *err);
    /* After the policy's trainables are listed and before the optimiser exists: heads (appended
     * with mt_run_add_trainable), references, workspaces. */
    mt_status (*open_model)(mt_run *run, mt_error *err);
    /* One loop step over examples idx[0..n) (n = micro_batch · grad_accum): gradients and the
     * update(s) through mt_run_update. */
    mt_status (*step)(mt_run *run, const int64_t *idx, int n, mt_step_out *so, mt_error *err);
    /* NULL when the objective has nothing held out. */
    mt_status (*eval)(mt_run *run, mt_eval_out *eo, mt_error *err);
    /* A scalar head exported with the adapter (the reward model's score); NULL: none. */
    mt_status (*head)(mt_run *run, float **w, int64_t *rows, int64_t *cols);
    void (*close)(mt_run *run);
} mt_objective;

const mt_objective *mt_objective_for(mt_recipe_method m);

extern const mt_objective mt_objective_sft, mt_objective_pref, mt_objective_reward, mt_objective_grpo,
    mt_objective_ppo;

/* ---- services of the loop to objectives (train.c, run.c) ---- */

/* Zeroes every trainable gradient (adapter and heads). */
void mt_run_zero_grad(mt_run *run);
/* The update of the gradients now held: global norm, NaN guard, clipping, AdamW at the
 * schedule's learning rate for this step (each group scaled by its own ratio). Sets
 * so->grad_norm, so->lr, so->skipped (skipped: nothing applied).
 * With several ranks (run->n_ranks > 1) a step does micro-batches g = run->rank, run->rank +
 * run->n_ranks, … < grad_accum, and holds its share of the step: gradients, loss, aux,
 * n_tokens and metrics computed with the whole step's denominators (1/grad_accum, the step's
 * target count), so that summing over ranks gives what one rank doing every micro-batch holds.
 * mt_run_update first sums them over ranks (gradients in buckets; `loss`, so->aux,
 * so->n_tokens and so->metrics as they are when it is called; metrics named min…/max… take the
 * extreme), writes the sums back (the loss into so->loss), then updates identically on every
 * rank. Every rank must call it equally often. */
void mt_run_update(mt_run *run, double loss, mt_step_out *so);
/* Sums v[0..n) over the ranks in place (an objective's statistics that span ranks, e.g. GRPO's
 * batch reward mean and std, PPO's whitening); alone a no-op. Every rank must call it at the
 * same point. */
mt_status mt_run_dist_sum(mt_run *run, double *v, size_t n, mt_error *err);
/* Appends a trainable tensor (a head) with its learning rate as a ratio of train.lr. */
void mt_run_add_trainable(mt_run *run, const char *name, float *data, float *grad, int64_t numel, bool decay,
                          double lr_scale);
/* The forward options of micro-batch g of this step (dropout seed, router noise, aux weight,
 * the policy's adapter). */
mt_forward_opts mt_run_forward_opts(const mt_run *run, int g);
/* run->ws: the training workspace for B×T rows, with train.checkpointing. */
mt_status mt_run_train_workspace(mt_run *run, int B, int T, int max_rank, mt_error *err);

/* SFT's data: documents from data.train/eval into rows (run.c). */
mt_status mt_run_load_docs(mt_run *run, mt_error *err);

#endif
