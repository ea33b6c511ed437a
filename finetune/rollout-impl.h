/* rollout-impl.h — what GRPO and PPO share inside finetune/: prompts read as TRL's RL trainers
 * read them, completions sampled from the policy on the paged KV cache with the experts of
 * every token recorded, their rewards (rules, a reward model), the rows a training pass takes
 * from them (with the routes to replay), and the held-out evaluation. */
#ifndef MT_FINETUNE_ROLLOUT_IMPL_H
#define MT_FINETUNE_ROLLOUT_IMPL_H

#include "objective-impl.h"
#include "rl/rl.h"

struct mt_lora;

typedef struct mt_rl_prompt {
    int32_t *ids;
    int n;
    char *answer; /* the reference answer rules compare with, NULL when the line has none */
} mt_rl_prompt;

typedef struct mt_rl_prompts {
    mt_rl_prompt *p;
    int64_t n;
    int64_t n_truncated;
} mt_rl_prompts;

/* n completions; rows of T positions holding prompt + completion. */
typedef struct mt_rollout {
    int n;
    int T, L, K;
    int32_t *seq;     /* [n·T] */
    int *P, *C;       /* [n] prompt and completion tokens (C counts a final EOS) */
    int *prompt_of;   /* [n] */
    bool *eos;        /* [n] ended with EOS (else it ran out of tokens) */
    double *entropy;  /* [n] Σ over completion tokens of the sampling distribution's entropy */
    int32_t *routes;  /* [n][T][L][K] experts of each fed position (−1: not fed, or a dense layer) */
    float *reward;    /* [n] combined */
    float *per_fn;    /* [n·F] per reward function, unweighted (NaN: no score) */
} mt_rollout;

void mt_rollout_free(mt_rollout *r);

/* The shared state of an RL objective. */
typedef struct mt_rl_env {
    mt_rl_prompts train, eval;
    int G;                     /* completions per prompt */
    int T, max_new;
    int F, n_rules;            /* reward functions: the reward model first, then each rule */
    mt_sample_opts sample;
    struct mt_reward_rules *rules;
    double *weights;           /* [F] */
    char (*fn_names)[96];      /* [F] rewards/<name>/mean */
    struct mt_lora *rm_lora, *ref_lora;
    float *rm_head;            /* [hidden] */
    mt_workspace *ews;         /* passes without gradient: reward model, reference, old policy */
    mt_batch_buf buf;          /* micro_batch · G rows */
    uint8_t *mask;             /* [rows·T] positions whose target is a completion token */
    int32_t *route_in, *route_out; /* [L][rows·T][K] */
    bool moe;
} mt_rl_env;

/* Prompts of data.train / data.eval (or data.eval_split), run->train_rows (the thresholds read
 * them) and run->n_examples. */
mt_status mt_rl_open_data(mt_run *run, mt_rl_env *e, int G, mt_error *err);
/* Rewards, the reward model, the reference adapter when need_ref, sampling settings, run->ws
 * and the env's buffers for micro_batch · G rows. */
mt_status mt_rl_open_model(mt_run *run, mt_rl_env *e, bool need_ref, mt_error *err);
void mt_rl_close(mt_rl_env *e);

/* This rank's share of a step's prompts idx[0..micro_batch · grad_accum): those of its
 * micro-batches k = rank, rank + n_ranks, … (the split mt_run_update expects), in order, into
 * pidx, and each one's position in the step into slot; returns how many. Local micro-batch j
 * is step micro-batch rank + j · n_ranks. */
int mt_rl_rank_prompts(const mt_run *run, const int64_t *idx, int64_t *pidx, int *slot);
/* G completions for each of prompts pidx[0..np) (rows prompt-major); completion k of prompt i
 * draws from the stream mt_hash_u64(seed, slot[i] · G + k) (slot NULL: slot[i] = i), so that a
 * rank sampling its share of the step draws what one rank sampling all of it does. */
mt_status mt_rl_sample(mt_run *run, mt_rl_env *e, const mt_rl_prompts *ps, const int64_t *pidx, const int *slot,
                       int np, int G, uint64_t seed, mt_rollout *ro, mt_error *err);
/* Rewards of every completion (ps: the prompts it came from, for their answers). */
mt_status mt_rl_score(mt_run *run, mt_rl_env *e, const mt_rl_prompts *ps, mt_rollout *ro, mt_error *err);
/* The env's batch from rollout rows r0 .. r0+k: prompt + completion minus its last token,
 * targets and mask on the completion, the routes to replay when routes. */
void mt_rl_fill_rows(const mt_run *run, mt_rl_env *e, const mt_rollout *ro, int r0, int k, bool routes);
/* Per-token log-probs [ro->n·T] of the completions (0 off the mask) under `adapter` at the
 * sampling temperature, without gradient, through the rollout's routes when replay (the
 * policy; a reference routes by itself); values [ro->n·T] (may be NULL) = head · final hidden
 * state at the same positions (0 off the mask). */
mt_status mt_rl_logps(mt_run *run, mt_rl_env *e, const mt_rollout *ro, const mt_adapter *adapter, bool replay,
                      const float *head, float *logp, float *values, mt_error *err);
/* The training pass over this rank's rollout rows r0 .. r0 + B (B = the env's rows): the policy
 * with gradient at the sampling temperature, through the rollout's routes; `pass` numbers it in
 * the step (its dropout and noise seed). logp [B·T] gets the completion tokens' log-probs (0
 * off the mask). With count, its completion tokens and those routed otherwise than in the
 * rollout are added to *tokens and *differ (routing/mismatch). */
mt_status mt_rl_train_forward(mt_run *run, mt_rl_env *e, const mt_rollout *ro, int r0, int pass, bool count,
                              float *logp, mt_forward_result *fr, int64_t *tokens, int64_t *differ, mt_error *err);
/* The last update of a step, which carries its record: the rollout's metrics, routing/mismatch
 * over ranks, the rollout's tokens, loss and aux, then mt_run_update (so holds the objective's
 * own metrics already). */
mt_status mt_rl_last_update(mt_run *run, const mt_rl_env *e, const mt_rollout *ro, const mt_obj_metrics *rollout_m,
                            int64_t mm_tokens, int64_t mm_differ, double loss, double aux, mt_step_out *so,
                            mt_error *err);
/* Completion tokens (of the env's last filled batch, `rows` rows) and how many of them the
 * last pass routed to other experts than the rollout did, in any MoE layer. */
void mt_rl_count_mismatch(const mt_run *run, const mt_rl_env *e, int rows, int64_t *tokens, int64_t *differ);
/* completions/..., entropy, rewards/<name>/mean of the step's rollout over every rank (each
 * rank holds its share in ro; the sums travel in one mt_run_dist_sum, so every rank calls it). */
mt_status mt_rl_rollout_metrics(mt_run *run, const mt_rl_env *e, const mt_rollout *ro, mt_obj_metrics *ms,
                                mt_error *err);
/* A metric computed from sums over every rank, into a list that mt_run_update sums over ranks:
 * rank 0 carries the value, the others 0 (NaN where it is NaN, so that every list leaves it out
 * alike). */
void mt_rl_metric_global(const mt_run *run, mt_obj_metrics *ms, const char *name, double v);
/* Held-out prompts, one completion each from a fixed stream: eval_reward and the rest. */
mt_status mt_rl_eval(mt_run *run, mt_rl_env *e, mt_eval_out *eo, mt_error *err);

#endif
