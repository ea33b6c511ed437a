/* run-impl.h — one training run's state inside finetune/: what mt_run_open sets up (model,
 * adapter, data rows, optimiser, store record, thresholds) and the loop in train.c consumes. */
#ifndef MT_FINETUNE_RUN_IMPL_H
#define MT_FINETUNE_RUN_IMPL_H

#include "checkpoint-impl.h"
#include "train-impl.h"

struct mt_store;
struct mt_lora;
struct mt_objective;
struct mt_dist;

typedef struct mt_run {
    const mt_recipe *r;
    const mt_train_opts *opts;
    mt_backend *be;
    mt_tokenizer *tok;
    mt_model *model;
    struct mt_lora *lora;      /* NULL for full fine-tuning */
    struct mt_store *store;    /* NULL with no_store */
    int64_t run_id;
    char base_hash[65];
    mt_docs train_docs, eval_docs;
    mt_rows train_rows, eval_rows;
    int T;
    const struct mt_objective *obj;
    void *obj_state;           /* the objective's own */
    int64_t n_examples;        /* what an epoch visits: rows (sft), pairs, prompts */
    int64_t *order;            /* [n_examples] this epoch's order */
    int64_t *step_idx;         /* [micro_batch · grad_accum] */
    int64_t total_steps, warmup;
    double aux_coef;
    mt_optim optim;
    mt_trainable *trainables;
    int n_trainables;
    mt_ckpt_state st;
    mt_workspace *ws, *eval_ws;
    mt_batch_buf buf, eval_buf;
    char thresholds_json[512];
    double experts_threshold;  /* adaptive expert count P for the metadata; 0 = none (off, or auto
                                  before the calibration after training) */
    char trained_json[1024];   /* what trains, by kind of linear (the "adapter" event) */
    /* adapter.from's score head when it is a reward model ([rows, cols], malloc'ed), NULL else */
    float *from_score;
    int64_t from_score_rows, from_score_cols;
    /* data parallelism (docs/scale-out.md): rank `rank` of `n_ranks` does micro-batches
     * g = rank, rank + n_ranks, … of every step; mt_run_update sums gradients and the step's
     * scalars over ranks. Alone: rank 0 of 1, dist NULL, nothing reduced. */
    struct mt_dist *dist;
    int rank, n_ranks;
    float *dist_bucket;        /* [dist_bucket_cap] gradients packed for one all-reduce */
    size_t dist_bucket_cap;
    bool dist_stop;            /* some rank was asked to stop: all stop after this step */
    mt_status dist_status;     /* a failed collective in mt_run_update (it returns nothing) */
    mt_error dist_err;
    mt_train_opts rank_opts;   /* ranks > 0: opts without store, checkpoints, export, notes */
} mt_run;

/* Sets everything up, resuming from the newest checkpoint when asked. Whatever it set up, on
 * success or failure, is released by mt_run_close (the caller records a failed run first). */
mt_status mt_run_open(mt_run *run, const mt_recipe *r, const mt_train_opts *opts, mt_train_result *res,
                      mt_error *err);
void mt_run_close(mt_run *run);
/* Writes output.adapter (PEFT adapter, or the full model) and records it. */
mt_status mt_run_export(mt_run *run, mt_train_result *res, mt_error *err);
/* thresholds.experts: auto: calibrates P on the trained model (mt_experts_from_model), puts it
 * into the thresholds the export writes and records it; nothing otherwise. */
mt_status mt_run_calibrate_experts(mt_run *run, mt_error *err);

/* DAP threshold of the base model (adapters, if any, disabled by the caller) over up to
 * `max_rows` rows spread evenly over `rows`. */
mt_status mt_dap_from_model(mt_model *m, const mt_rows *rows, int max_rows, double base, double max_entropy,
                            double *threshold, double *mean_entropy, int64_t *n_seqs, mt_error *err);

/* The adaptive expert count threshold of the model with adapter `ad` (NULL: the model alone)
 * over up to `max_rows` rows spread evenly over `rows`, as mt_dap_from_model samples them. */
mt_status mt_experts_from_model(mt_model *m, const mt_adapter *ad, const mt_rows *rows, int max_rows,
                                double *threshold, int64_t *n_shares, mt_error *err);

/* Copies tokenizer.json and, when present, tokenizer_config.json and special_tokens_map.json. */
mt_status mt_copy_tokenizer_files(const char *from_dir, const char *to_dir, mt_error *err);
/* sha256 of `dir`/tokenizer.json (the data cache's key). */
mt_status mt_tokenizer_file_hash(const char *dir, char out[65], mt_error *err);
double mt_peak_rss_mb(void);
/* A line of what the run is doing, to opts->on_note when set. */
void mt_run_note(const mt_train_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal for s (quotes and escapes), malloc'ed. */
char *mt_json_quote(const char *s);

#endif
