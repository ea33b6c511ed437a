/* lora.h — the peft room's one public header: LoRA adapters on any linear layer of an
 * mt_model (attention incl. MLA's projections, dense MLPs, routed and shared experts, the
 * router), handed to passes as data (mt_adapter); Hugging Face PEFT save/load; merge and
 * unmerge; and the adapter registry a server loads, replaces and unloads adapters in while
 * other threads decode with them. The base stays frozen: LoRA owns only its A/B factors and
 * their gradients. */
#ifndef MT_LORA_H
#define MT_LORA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "model/model.h"

typedef enum mt_lora_init {
    MT_LORA_INIT_DEFAULT = 0, /* PEFT init_lora_weights=True: A kaiming-uniform(a=√5), B = 0 */
    MT_LORA_INIT_GAUSSIAN,    /* PEFT "gaussian": A ~ N(0, std 1/r), B = 0 */
} mt_lora_init;

/* What to adapt and how. Strings are borrowed for the duration of mt_lora_attach only. */
typedef struct mt_lora_config {
    int r;
    float alpha;
    float dropout;            /* on the LoRA branch's input, as PEFT's lora_dropout */
    bool use_rslora;          /* scale alpha/√r instead of alpha/r */
    mt_lora_init init;
    uint64_t seed;            /* initialisation of A */
    /* Module selection. Each target is one of: "all-linear" (every linear except lm_head and
     * the router, as PEFT), a module-name suffix matched on '.' boundaries as PEFT does
     * ("q_proj", "mlp.experts.*.gate_proj" with * a glob over one path segment), or
     * "re:<regex>" fully matching the module path (PCRE2). A target matching nothing is an
     * error listing the module names. */
    const char *const *targets;
    int n_targets;
    const char *const *exclude; /* same syntax; removes matches */
    int n_exclude;
    /* PEFT rank_pattern / alpha_pattern: key (regex, matched as PEFT does against the module
     * path's end) → rank or alpha for matching modules. */
    const char *const *rank_keys;
    const int *rank_values;
    int n_rank;
    const char *const *alpha_keys;
    const float *alpha_values;
    int n_alpha;
} mt_lora_config;

/* r = 8, alpha = 16, dropout 0, default init, targets none (caller sets them). */
void mt_lora_config_default(mt_lora_config *c);

typedef struct mt_lora mt_lora;

/* Creates A/B for every selected linear of m. Nothing in m changes: passes apply the adapter
 * when given mt_lora_adapter(l), and any number of adapters can exist for one model. Fails if
 * a target matches nothing or r < 1. */
mt_status mt_lora_attach(mt_lora **out, mt_model *m, const mt_lora_config *c, mt_error *err);
/* Frees everything (unmerging first if merged). NULL is fine. */
void mt_lora_free(mt_lora *l);
/* The adapter as passes take it (mt_forward_opts.adapter, a decode slot); NULL while merged,
 * since the weights then already hold it. */
const mt_adapter *mt_lora_adapter(const mt_lora *l);
int mt_lora_max_rank(const mt_lora *l);

/* One trainable tensor, named with its PEFT key
 * ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"). */
typedef struct mt_lora_tensor {
    const char *name;
    int64_t shape[2];  /* A: [r, in]; B: [out, r] */
    int64_t numel;
    float *data;
    float *grad;       /* accumulated by backward; zero with mt_lora_zero_grad; NULL before
                          mt_lora_alloc_grads */
} mt_lora_tensor;

int mt_lora_tensor_count(const mt_lora *l);
mt_lora_tensor *mt_lora_tensor_at(mt_lora *l, int i);
/* Gradient buffers (zeroed) for every tensor and for backward passes through the adapter.
 * mt_lora_attach makes them; an adapter read by mt_lora_load_peft has none (grad NULL, a
 * frozen adapter to passes) until this is called, so serving never pays for them. */
mt_status mt_lora_alloc_grads(mt_lora *l, mt_error *err);
void mt_lora_zero_grad(mt_lora *l);

/* What was adapted, by kind of linear. */
typedef struct mt_lora_summary {
    int modules[MT_LINEAR_KIND_COUNT];
    int64_t params[MT_LINEAR_KIND_COUNT];
    int n_modules;
    int64_t n_params;
    int64_t base_params;   /* the model's own parameter count, for the ratio */
} mt_lora_summary;

void mt_lora_get_summary(const mt_lora *l, mt_lora_summary *s);
const char *mt_linear_kind_name(mt_linear_kind k); /* "attention", "mlp", "expert", ... */

/* moetune's own metadata, carried in a way PEFT ignores (moetune.json beside the adapter and
 * the safetensors __metadata__). Strings may be NULL / empty. */
typedef struct mt_lora_meta {
    char base_model[4096];  /* path the adapter was trained on */
    char base_hash[65];     /* mt_model_content_hash of the base */
    int64_t run_id;         /* store run, 0 = none */
    char *thresholds_json;  /* e.g. {"dap":0.31,"base":0.5,...}; malloc'ed by load */
    /* A reward model's scalar head beside the adapter, [score_rows, score_cols] fp32, saved as
     * PEFT saves modules_to_save ["score"] of a SEQ_CLS adapter (tensor
     * base_model.model.score.weight), so that AutoPeftModelForSequenceClassification loads
     * it. NULL when none; load fills it (malloc'ed: free it) when the adapter has one. */
    float *score;
    int64_t score_rows, score_cols;
} mt_lora_meta;

/* Writes `dir`/adapter_config.json and adapter_model.safetensors exactly as PEFT's
 * save_pretrained does (keys without the adapter name, F32), plus moetune.json. The files are
 * replaced atomically. */
mt_status mt_lora_save_peft(const mt_lora *l, const char *dir, const mt_lora_meta *meta, mt_error *err);
/* Reads a PEFT LoRA folder (made by moetune or by PEFT) and attaches it to m. meta may be
 * NULL; when given it is filled from moetune.json if present (free thresholds_json). */
mt_status mt_lora_load_peft(mt_lora **out, mt_model *m, const char *dir, mt_lora_meta *meta, mt_error *err);
/* One number of a thresholds_json object ("dap", "experts", ...), clamped to [0, 1]: the
 * thresholds the engine, eval and generate apply. false when the JSON is NULL or empty or has
 * no such key with a finite number. */
bool mt_lora_meta_threshold(const char *thresholds_json, const char *key, float *out);

/* W += scale·B·A for every adapted linear (mt_lora_adapter is then NULL); unmerge subtracts
 * it back. */
mt_status mt_lora_merge(mt_lora *l, mt_error *err);
mt_status mt_lora_unmerge(mt_lora *l, mt_error *err);

/* =========================================================================================
 * The adapter registry: named adapters, versioned, reference-counted, thread-safe
 * =========================================================================================
 * Loading a name that exists makes a new version; sequences that acquired the old one keep
 * decoding with it, and it is freed when the last of them releases it. Every function may be
 * called from any thread while other threads decode with acquired adapters. */

typedef struct mt_registry mt_registry;

typedef struct mt_registry_opts {
    int max_rank;     /* adapters of higher rank are refused (decoders size scratch for it);
                         0 = MT_DEFAULT_MAX_RANK */
    int max_loaded;   /* names held at once; loading one more evicts the least recently used
                         (in-flight sequences keep theirs); 0 = unlimited */
} mt_registry_opts;

/* base_hash: mt_model_content_hash of m, computed by the caller once (it reads every weight). */
mt_status mt_registry_init(mt_registry **out, mt_model *m, const char base_hash[65], const mt_registry_opts *o,
                           mt_error *err);
/* Every acquired adapter must have been released. */
void mt_registry_free(mt_registry *r);

/* Reads the PEFT folder `dir` and makes it the current version of `name`. Refused, with the
 * registry unchanged: a folder that is not a valid adapter for this model, a rank above
 * max_rank, an adapter whose recorded base hash differs from the base's (the message names
 * both). *version (may be NULL) receives the new version number (1, 2, ... per name). */
mt_status mt_registry_load(mt_registry *r, const char *name, const char *dir, int64_t *version, mt_error *err);
/* Removes the name; sequences holding it keep their version. MT_ERR_NOT_FOUND if absent. */
mt_status mt_registry_unload(mt_registry *r, const char *name, mt_error *err);

/* A held version of one adapter. */
typedef struct mt_adapter_ref {
    const mt_adapter *adapter;
    int64_t version;
    void *handle;       /* the registry's; pass the ref back to release */
} mt_adapter_ref;

/* The current version of `name`, held until released (counts as a use for LRU eviction).
 * MT_ERR_NOT_FOUND when no adapter has that name. */
mt_status mt_registry_acquire(mt_registry *r, const char *name, mt_adapter_ref *out, mt_error *err);
void mt_registry_release(mt_registry *r, mt_adapter_ref *ref);

typedef struct mt_registry_info {
    char name[256];
    char path[4096];
    int64_t version;
    int max_rank;
    int n_modules;
    int refs;               /* sequences holding the current version */
    double load_seconds;    /* time the last load took */
    double loaded_at;       /* mt_now_seconds() when it was loaded */
    char base_hash[65];     /* recorded in the adapter ("" when it has none) */
    char thresholds_json[512]; /* moetune.json thresholds, "" when none */
} mt_registry_info;

/* Names currently loaded, in load order. */
int mt_registry_count(mt_registry *r);
bool mt_registry_get(mt_registry *r, int i, mt_registry_info *out);
bool mt_registry_find(mt_registry *r, const char *name, mt_registry_info *out);
/* Versions still alive (current ones plus replaced ones some sequence holds). */
int mt_registry_live_versions(mt_registry *r);

#endif
