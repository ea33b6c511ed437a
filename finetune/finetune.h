/* finetune.h — the trainer room's one public header: recipes (YAML → validated config),
 * domain-adaptive thresholds, and the training loop. Uses model/, peft/, store/ (corpora/
 * builds the domain corpora it trains on); the CLI is a thin layer over it. */
#ifndef MT_FINETUNE_H
#define MT_FINETUNE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* ===================================== recipes ===================================== */

/* A recipe is one YAML file that says everything a run needs. One table of key descriptors
 * (finetune/recipe-schema.c) drives parsing, defaults, validation, --set overrides, the
 * canonical dump and docs/recipes.md, which lists every key with its default. */

/* What the run optimises (docs/preference.md for everything but sft). */
typedef enum mt_recipe_method {
    MT_RECIPE_METHOD_SFT,    /* next-token cross-entropy */
    MT_RECIPE_METHOD_DPO,    /* the DPO family on preference pairs, against a reference */
    MT_RECIPE_METHOD_SIMPO,  /* reference-free, length-normalised (TRL's CPOTrainer loss_type simpo) */
    MT_RECIPE_METHOD_ORPO,   /* reference-free odds ratio plus the chosen NLL */
    MT_RECIPE_METHOD_REWARD, /* Bradley–Terry reward model: LoRA plus a scalar head */
    MT_RECIPE_METHOD_GRPO,   /* group-relative policy optimisation from sampled completions */
    MT_RECIPE_METHOD_PPO     /* PPO with a value head, GAE and a KL penalty to the reference */
} mt_recipe_method;
/* Where DPO/GRPO/PPO's reference log-probs come from. */
typedef enum mt_recipe_ref { MT_RECIPE_REF_BASE, MT_RECIPE_REF_ADAPTER } mt_recipe_ref;
typedef enum mt_recipe_quant { MT_RECIPE_QUANT_NONE, MT_RECIPE_QUANT_INT8 } mt_recipe_quant;
typedef enum mt_recipe_fdiv {
    MT_RECIPE_FDIV_REVERSE_KL,
    MT_RECIPE_FDIV_FORWARD_KL,
    MT_RECIPE_FDIV_JS,
    MT_RECIPE_FDIV_ALPHA
} mt_recipe_fdiv;
typedef enum mt_recipe_grpo_loss {
    MT_RECIPE_GRPO_LOSS_GRPO,
    MT_RECIPE_GRPO_LOSS_BNPO,
    MT_RECIPE_GRPO_LOSS_DR_GRPO,
    MT_RECIPE_GRPO_LOSS_DAPO
} mt_recipe_grpo_loss;
typedef enum mt_recipe_scale { MT_RECIPE_SCALE_GROUP, MT_RECIPE_SCALE_BATCH, MT_RECIPE_SCALE_NONE } mt_recipe_scale;
typedef enum mt_recipe_kl { MT_RECIPE_KL_K1, MT_RECIPE_KL_K3 } mt_recipe_kl;
typedef enum mt_recipe_adapter { MT_RECIPE_ADAPTER_LORA, MT_RECIPE_ADAPTER_NONE } mt_recipe_adapter;
/* PEFT's init_lora_weights: true (A kaiming-uniform, B zero) or "gaussian" (A normal, std 1/r) */
typedef enum mt_recipe_lora_init { MT_RECIPE_LORA_INIT_DEFAULT, MT_RECIPE_LORA_INIT_GAUSSIAN } mt_recipe_lora_init;
typedef enum mt_recipe_format {
    MT_RECIPE_FORMAT_AUTO,
    MT_RECIPE_FORMAT_TEXT,              /* JSONL {"text"} */
    MT_RECIPE_FORMAT_PROMPT_COMPLETION, /* JSONL {"prompt","completion"} */
    MT_RECIPE_FORMAT_MESSAGES,          /* JSONL {"messages":[{"role","content"}...]} */
    MT_RECIPE_FORMAT_PLAIN              /* plain text files, one document each */
} mt_recipe_format;
typedef enum mt_recipe_schedule {
    MT_RECIPE_SCHEDULE_COSINE,
    MT_RECIPE_SCHEDULE_LINEAR,
    MT_RECIPE_SCHEDULE_CONSTANT
} mt_recipe_schedule;
typedef enum mt_recipe_device { MT_RECIPE_DEVICE_CPU, MT_RECIPE_DEVICE_CUDA } mt_recipe_device;
/* model.h's mt_checkpointing, in its order */
typedef enum mt_recipe_checkpointing {
    MT_RECIPE_CHECKPOINTING_NONE,
    MT_RECIPE_CHECKPOINTING_LAYERS,
    MT_RECIPE_CHECKPOINTING_SELECTIVE
} mt_recipe_checkpointing;

/* An optional number that was not given (train.steps when epochs are used, the unused one of
 * train.warmup_steps / train.warmup_ratio). Every optional number has a range that excludes it. */
#define MT_RECIPE_UNSET (-1)
/* "auto": decided at run time (thresholds.dap from the data, train.router_aux_coef from the
 * model's config.json). */
#define MT_RECIPE_AUTO (-1.0)

typedef struct mt_recipe_list {
    size_t n;
    char **items; /* [n] owned strings */
} mt_recipe_list;

/* PEFT rank_pattern / alpha_pattern: a module-name pattern → a value. Ranks are validated to be
 * whole numbers; both maps hold doubles so that one type serves both. */
typedef struct mt_recipe_map {
    size_t n;
    char **patterns; /* [n] owned strings, in file order */
    double *values;  /* [n] */
} mt_recipe_map;

/* A list of numbers (TRL's loss_weights). */
typedef struct mt_recipe_numbers {
    size_t n;
    double *values; /* [n] */
} mt_recipe_numbers;

/* The effective configuration: every field holds its value after defaults, the file and the
 * --set overrides. Paths are absolute (relative ones resolve against the recipe's folder,
 * --set ones against the current folder). Strings and lists are owned: mt_recipe_free. */
typedef struct mt_recipe {
    char *name; /* run name; default: the recipe file's name without .yaml */
    mt_recipe_method method;
    struct {
        char *path;      /* base model folder (config.json + safetensors) */
        char *tokenizer; /* folder with tokenizer.json; default model.path */
        mt_recipe_quant quantize; /* weight-only quantisation of the frozen base after loading */
    } model;
    struct {
        mt_recipe_adapter type; /* NONE = full fine-tuning */
        int r;
        double alpha;
        double dropout;
        bool use_rslora;          /* scale alpha/sqrt(r) instead of alpha/r */
        mt_recipe_lora_init init;
        mt_recipe_list targets;   /* module names, globs, "re:<regex>", or the one item "all-linear" */
        mt_recipe_list exclude;   /* same syntax; wins over targets */
        mt_recipe_map rank_pattern;
        mt_recipe_map alpha_pattern;
        char *from;               /* start from this PEFT adapter (its rank and targets) instead of a new one */
    } adapter;
    struct {
        mt_recipe_list train; /* files or folders */
        mt_recipe_list eval;  /* empty: none, or eval_split of train */
        mt_recipe_format format;
        int max_seq_len;
        bool packing;
        bool mask_prompt;     /* loss only on completions / assistant turns */
        bool shuffle;
        double eval_split;    /* [0, 1): fraction of train documents held out when eval is empty */
        char *cache_dir;      /* tokenized data cache; default <output.dir>/cache */
        char *pairs;          /* preference pairs: a pair dataset in output.store (instead of data.train) */
        int max_prompt_len;   /* prompt tokens kept (the last ones), or MT_RECIPE_UNSET for no limit */
    } data;
    struct {
        int seed;
        int steps;            /* optimizer steps, or MT_RECIPE_UNSET when epochs are given */
        double epochs;        /* or MT_RECIPE_UNSET when steps are given */
        int micro_batch;      /* sequences per forward/backward */
        int grad_accum;       /* micro-batches per optimizer step */
        double lr;            /* peak learning rate */
        mt_recipe_schedule schedule;
        int warmup_steps;     /* or MT_RECIPE_UNSET when warmup_ratio is given */
        double warmup_ratio;  /* or MT_RECIPE_UNSET when warmup_steps is given */
        double min_lr_ratio;  /* final lr = lr * min_lr_ratio (cosine, linear) */
        double weight_decay;  /* AdamW, decoupled */
        double beta1, beta2, eps;
        double clip_norm;     /* global gradient norm clip; 0 = off */
        double router_aux_coef; /* load-balancing loss weight, or MT_RECIPE_AUTO */
        double router_noise;  /* router jitter ε while training; 0 = off */
        int max_nan_skips;    /* non-finite steps skipped before the run fails */
        int eval_every, save_every, log_every; /* in optimizer steps; 0 = never (eval/save: at the end) */
        bool eval_on_start;   /* evaluate before the first step too (the figures "before") */
        int save_total_limit; /* checkpoints kept; 0 = all */
        bool resume;          /* continue from the newest checkpoint in output.dir */
        int threads;          /* 0 = all cores */
        mt_recipe_device device;
        mt_recipe_checkpointing checkpointing; /* activation recomputation in the backward */
        double head_lr;       /* learning rate of a scalar head (reward, value), or MT_RECIPE_UNSET: lr */
    } train;
    struct {                  /* dpo, simpo, orpo */
        double beta;
        mt_recipe_list loss_type;   /* TRL's names; several are summed with loss_weights */
        mt_recipe_numbers loss_weights; /* empty: 1 each */
        double label_smoothing;
        mt_recipe_fdiv f_divergence;
        double f_alpha;
        double ld_alpha;            /* LD-DPO, or MT_RECIPE_UNSET: off */
        double discopop_tau;
        double simpo_gamma;
        double cpo_alpha;
    } pref;
    struct {                  /* dpo, grpo, ppo */
        mt_recipe_ref model;
        char *adapter;        /* the frozen reference adapter (model: adapter) */
        bool cache;           /* dpo: reference log-probs cached per pair in output.store */
    } reference;
    struct {
        double center_coef;   /* reward: TRL's center_rewards_coefficient, or MT_RECIPE_UNSET */
        char *model;          /* grpo, ppo: a reward model exported by method: reward */
        mt_recipe_list rules; /* grpo, ppo: rule rewards (docs/preference.md) */
        mt_recipe_numbers weights; /* per reward function (model first, then rules); empty: 1 each */
    } reward;
    struct {                  /* grpo, ppo: sampling the completions trained on */
        int num_generations;  /* completions per prompt (grpo's group) */
        int max_new_tokens;
        double temperature;
        double top_p;
        int top_k;
    } rollout;
    struct {
        mt_recipe_grpo_loss loss_type;
        double epsilon, epsilon_high; /* epsilon_high MT_RECIPE_UNSET: = epsilon */
        double beta;                  /* k3 KL coefficient; 0 = no reference pass */
        mt_recipe_scale scale_rewards;
        int num_iterations;
    } grpo;
    struct {
        double kl_coef;
        mt_recipe_kl kl_estimator;
        double gamma, lam;
        double cliprange, cliprange_value, vf_coef;
        int num_ppo_epochs;
        bool whiten_rewards;
    } ppo;
    struct {
        double dap;           /* attention-pruning threshold, or MT_RECIPE_AUTO (from the data) */
        double base;          /* threshold = base * (1 - min(H, max_entropy) / max_entropy) */
        double max_entropy;   /* bits */
        double experts;       /* adaptive expert count P in (0, 1], 0 = off, or MT_RECIPE_AUTO (calibrated
                                 after training: the median top-k router share) */
    } thresholds;
    struct {
        char *dir;     /* run folder: checkpoints, logs; default <recipe folder>/runs/<name> */
        char *adapter; /* export folder (PEFT adapter, or the full model); default <dir>/adapter */
        char *store;   /* SQLite run store; default moetune.db beside output.dir */
    } output;
} mt_recipe;

typedef struct mt_recipe_load_opts {
    /* Also check the file system: model.path holds config.json, model.tokenizer holds
     * tokenizer.json, every data.train / data.eval path exists. Off for `recipe check` so a
     * recipe can be checked where the data is not (`--strict` turns it on). */
    bool check_paths;
} mt_recipe_load_opts;

/* Every problem found in one load, in the order found, each a line ready to print:
 * "recipes/legal.yaml:12:5: train.learnig_rate: unknown key (did you mean 'lr'?)". */
typedef struct mt_recipe_diags {
    size_t n;
    char **msgs; /* [n] owned */
} mt_recipe_diags;

/* Loads `path`, applies the overrides ("train.lr=3e-4", "adapter.targets=[q_proj,v_proj]";
 * the value is YAML) and validates. On failure *out is untouched and err holds the problems
 * (the first, then as many more as fit). */
mt_status mt_recipe_load(const char *path, const char *const *overrides, size_t n_overrides, mt_recipe *out,
                         mt_error *err);
/* The same, collecting every problem into *diags (may be NULL; overwritten, so free it first
 * when reusing it; free it with mt_recipe_diags_free, also on success, where it is empty).
 * opts may be NULL. */
mt_status mt_recipe_validate(const char *path, const char *const *overrides, size_t n_overrides,
                             const mt_recipe_load_opts *opts, mt_recipe *out, mt_recipe_diags *diags,
                             mt_error *err);
void mt_recipe_diags_free(mt_recipe_diags *d);
void mt_recipe_free(mt_recipe *r);

/* The canonical YAML: every key in table order with its effective value, so that it re-loads
 * to the same recipe; stored with each run. Returns a malloc'ed NUL-terminated string. */
char *mt_recipe_dump_yaml(const mt_recipe *r, size_t *len);
/* The effective recipe as a compact JSON object (the canonical dump's keys and typed values),
 * as the run store keeps it for comparisons. malloc'ed. */
char *mt_recipe_to_json(const mt_recipe *r);
/* Lowercase hex SHA-256 of the canonical dump. */
void mt_recipe_hash(const mt_recipe *r, char out[65]);
/* docs/recipes.md, generated from the key table (malloc'ed). */
char *mt_recipe_docs_markdown(size_t *len);

/* ============================ domain-adaptive thresholds ============================ */

/* Domain-adaptive thresholds (docs/data.md, "Thresholds"). The token entropy at a position is
 * the entropy in bits of the base model's predicted distribution for the next token,
 * H_t = −Σ_v p_v·log2 p_v with p = softmax(logits_t); a sequence's entropy is the mean of H_t
 * over its positions that have a target, and over the sampled domain sequences
 *     threshold = base · (1 − min(mean H, max_entropy) / max_entropy)   ∈ [0, base].
 * A domain the base already predicts confidently gets a higher (more aggressive) attention-
 * pruning threshold than one it finds surprising. */

#define MT_DAP_DEFAULT_BASE 0.5
#define MT_DAP_DEFAULT_MAX_ENTROPY 4.5

typedef struct mt_dap_stats {
    double sum_entropy; /* Σ of sequence entropies added, bits */
    uint64_t n_seqs;
} mt_dap_stats;

void mt_dap_stats_init(mt_dap_stats *s);
/* H of softmax(logits[0..V)) in bits, computed stably in double precision. */
double mt_dap_token_entropy(const float *logits, int V);
/* Adds one sequence from its logits [T, V] and targets [T]: positions whose target is negative
 * (ignored) do not count. Returns false, adding nothing, when no position counts. */
bool mt_dap_stats_add_sequence(mt_dap_stats *s, const float *logits, const int32_t *targets, int T, int V);
/* threshold and mean entropy over the sequences added (any out-pointer may be NULL). Fails with
 * MT_ERR_INVALID when no sequence was added, base is negative or max_entropy is not > 0, and
 * MT_ERR_NUMERIC when either is not finite. */
mt_status mt_dap_stats_result(const mt_dap_stats *s, double base, double max_entropy, double *threshold,
                              double *mean_entropy, uint64_t *n_seqs, mt_error *err);

/* The adaptive expert count threshold (docs/data.md, "Thresholds"; thresholds.experts: auto):
 * after training, the trained model (inference, no dropout) over a sample of the training rows;
 * for every token with a target and every MoE layer, s = the share of the router's scores its
 * top-k chosen experts hold (mt_route_topk_share), and P = the median of those s (the mean of
 * the two middle values for an even count). Under P, a token whose router is more confident
 * than the domain's median (s ≥ P) may stop with fewer experts; the rest keep top_k. */
struct mt_config;
typedef struct mt_expert_shares {
    float *v; /* the shares added */
    size_t n, cap;
} mt_expert_shares;

void mt_expert_shares_init(mt_expert_shares *s);
void mt_expert_shares_free(mt_expert_shares *s);
/* Adds one pass's shares [n_layers][N] (mt_forward_opts.topk_share_out) of the MoE layers at
 * the positions whose target is ≥ 0. */
void mt_expert_shares_add(mt_expert_shares *s, const struct mt_config *cfg, const float *share, const int32_t *targets,
                          int N);
/* The median of the shares added (sorts them); MT_ERR_INVALID naming thresholds.experts when
 * there are none. */
mt_status mt_expert_shares_median(mt_expert_shares *s, double *median, mt_error *err);

/* ===================================== training ===================================== */

/* One line of progress, after every optimizer step (and after each evaluation). */
typedef struct mt_train_progress {
    int64_t step, total_steps; /* steps done (1-based after the first), of total */
    double loss;               /* mean token loss of this step */
    double lr, grad_norm, aux_loss;
    double tokens_per_sec;     /* input tokens, averaged over the run's recent steps */
    int64_t tokens;            /* input tokens of this step (a DPO pair is two rows; a GRPO/PPO
                                  rollout its prompts and completions) */
    double eta_seconds;
    bool skipped;              /* non-finite gradients: the update was not applied */
    bool log_line;             /* a train.log_every step: worth a line in a plain log */
    bool eval;                 /* this call reports an evaluation (eval_loss, eval_ppl) */
    double eval_loss, eval_ppl; /* eval_ppl NaN for objectives other than sft */
    /* the objective's own metrics of this step or evaluation, with TRL's names
     * ("rewards/accuracies", "reward", "objective/kl", ...) */
    int n_metrics;
    const char *const *metric_names;
    const double *metric_values;
} mt_train_progress;

typedef struct mt_train_opts {
    bool resume;                          /* continue from the newest checkpoint (or train.resume) */
    const volatile int *stop_flag;        /* non-zero (e.g. set by SIGINT): checkpoint and stop */
    void (*on_progress)(void *user, const mt_train_progress *p);
    void (*on_note)(void *user, const char *line); /* what the run is doing, a line at a time */
    void *user;
    const char *recipe_path;              /* its text is stored with the run; NULL: the canonical dump */
    int64_t max_steps;                    /* stop after this many steps in this process (0 = no limit);
                                           * the schedule still spans the recipe's steps (benchmarks) */
    bool no_store, no_export, no_checkpoints; /* benchmarks: measure the loop alone */
    /* the job's ranks (dist/dist.h) for data-parallel training; NULL: this process alone. With
     * several, each rank takes its share of every step's micro-batches, gradients are summed
     * over ranks before the update, and only rank 0 writes (store, checkpoints, export) and
     * calls on_note/on_progress (docs/scale-out.md) */
    struct mt_dist *dist;
} mt_train_opts;

typedef struct mt_train_result {
    int64_t run_id;             /* 0 without a store */
    int64_t steps, total_steps; /* steps done when the run returned, of total */
    double last_loss;
    double eval_loss, eval_ppl; /* NaN without held-out data */
    int64_t eval_tokens;
    double tokens_per_sec;      /* over this process's steps */
    double dap_threshold, mean_entropy; /* mean_entropy NaN when the threshold was given */
    int64_t trainable_params;
    char adapter_dir[4096];     /* what was exported ("" when nothing) */
    double seconds;
    double peak_rss_mb;
    bool interrupted;           /* stopped by stop_flag after a checkpoint */
} mt_train_result;

/* Runs the recipe: data, thresholds, adapter (or every weight), the loop with evaluation and
 * checkpoints, export, and the run's record in the store. MT_ERR_INTERRUPTED when stop_flag
 * ended it (a checkpoint was written first, so --resume continues it). */
mt_status mt_train(const mt_recipe *r, const mt_train_opts *opts, mt_train_result *res, mt_error *err);

/* ================================== prompt files ================================== */

/* One prompt of a prompts file for batched generation. */
typedef struct mt_prompt_item {
    char *text;
    char *adapter;  /* adapter name from the file, or NULL */
    int n;          /* samples, 0 = the caller's default */
} mt_prompt_item;

/* Reads a prompts file: JSONL with {"prompt": "...", "adapter": "NAME", "n": K} per line
 * (adapter and n optional), or plain text with one prompt per line. Empty lines are skipped;
 * a malformed line is an error naming file and line. */
mt_status mt_prompts_load(const char *path, mt_prompt_item **out, int *n, mt_error *err);
void mt_prompts_free(mt_prompt_item *items, int n);

/* ==================================== evaluation ==================================== */

typedef struct mt_eval_opts {
    const char *model_dir;
    const char *tokenizer_dir;   /* NULL: model_dir */
    const char *adapter_dir;     /* NULL: the base alone */
    const mt_recipe_list *data;  /* files or folders, as data.train in a recipe */
    mt_recipe_format format;
    int max_seq_len;             /* rows are cut to this many tokens (no packing across documents) */
    int batch;
    int threads;                 /* 0 = all cores */
    int quantize;                /* an mt_quant (model.h): weight-only quantisation of the base after loading */
    float expert_threshold;      /* adaptive expert counts (model.h mt_adaptive_k; 0 = the config's top_k) */
    bool experts_from_adapter;   /* no expert_threshold given: the adapter's metadata "experts" (if
                                    any) on the adapted pass; the base pass keeps expert_threshold */
    int min_k, max_k;            /* its bounds (0 = 1 and top_k) */
    /* DAP (docs/attention-pruning.md): NULL = whole-sequence passes, no pruning. Given, every row
     * runs through the paged decoder as a prompt is prefilled (chunks of rows over the KV pool),
     * its attention pruned with dap->threshold (0: the paged path in full); with dap_adapter the
     * adapter pass takes the "dap" of the adapter's metadata instead, where it has one. */
    const struct mt_dap_opts *dap;
    bool dap_adapter;
} mt_eval_opts;

typedef struct mt_eval_result {
    double base_loss, base_ppl;       /* the base model alone */
    double adapter_loss, adapter_ppl; /* with the adapter (NaN without one) */
    int64_t n_docs, n_tokens;         /* documents read, tokens scored */
    double mean_experts;              /* routed experts per token and MoE layer with adaptive_k (NaN off);
                                         with experts_from_adapter, of the adapted pass */
    float adapter_experts;            /* experts_from_adapter: the adapter's "experts" used, 0 = none */
    float base_tau, adapter_tau;      /* the DAP threshold each pass ran with (with opts.dap) */
    struct mt_eval_dap {              /* model.h's mt_dap_counts of each pass: (row, layer, head) */
        uint64_t queries, blocks, skipped, fallbacks;
    } base_dap, adapter_dap;
} mt_eval_result;

/* Held-out loss and perplexity (exp of the mean token cross-entropy) of the base and, when
 * given, the adapted model over the same tokens. */
mt_status mt_evaluate(const mt_eval_opts *o, mt_eval_result *res, mt_error *err);

/* Writes base + adapter merged (W += scale·B·A) as a Hugging Face model in out_dir, with the
 * base's tokenizer files, its weights stored as dtype (MT_EXPORT_AUTO: the dtype the base's
 * linear weights are stored in, so a bf16 base gives a bf16 model). base_dir
 * NULL: the adapter's recorded base. A base whose content hash differs from the one recorded
 * with the adapter is refused. */
typedef enum mt_export_dtype { MT_EXPORT_AUTO = 0, MT_EXPORT_F32, MT_EXPORT_BF16, MT_EXPORT_F16 } mt_export_dtype;
mt_status mt_export_merged(const char *adapter_dir, const char *base_dir, const char *out_dir, int threads,
                           mt_export_dtype dtype, mt_error *err);

#endif
