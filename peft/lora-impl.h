/* lora-impl.h — the peft room's private structures, shared by lora.c (the adapter, its deltas,
 * merge), target.c (which linears a pattern selects, PEFT's matching rules), peft_save.c and
 * peft_load.c (PEFT folders out and in). */
#ifndef MT_LORA_IMPL_H
#define MT_LORA_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lora.h"

/* One adapted linear: y += scale · dropout(x)·Aᵀ·Bᵀ. A and B live in the adapter's one block
 * of backend memory, their gradients in a second contiguous region of it. */
typedef struct mt_lora_mod {
    mt_lora *owner;
    mt_linear *lin;
    int index;          /* the linear's index in the model */
    int r;
    float alpha;
    float scale;        /* alpha/r, or alpha/√r under rsLoRA */
    float *A, *B;       /* [r, in], [out, r] */
    float *dA, *dB;     /* like A, B */
} mt_lora_mod;

/* What a module is to be given before its values exist (attach resolves it from the targets
 * and patterns, load from the safetensors keys). */
typedef struct mt_lora_spec {
    int linear;         /* index into the model's linears */
    int r;
    float alpha;
} mt_lora_spec;

struct mt_lora {
    mt_model *m;
    mt_backend *be;
    int r;              /* the config's r and lora_alpha (what rank_pattern/alpha_pattern override) */
    float alpha;
    float dropout;
    bool use_rslora;
    mt_lora_init init;
    bool merged;

    int n_mods;
    mt_lora_mod *mods;  /* [n_mods], in model linear order */
    mt_lowrank *deltas; /* [n_mods]: what passes apply */
    const mt_lowrank **by_linear; /* [model linears]: deltas by linear index, NULL elsewhere */
    mt_adapter view;    /* handed to passes (mt_lora_adapter) */
    int max_rank;
    int n_tensors;
    mt_lora_tensor *tensors; /* [2·n_mods]: A then B of each module */
    char *names;        /* the tensors' names, NUL-separated */
    float *block;       /* backend memory: every A and B */
    float *grads;       /* every dA and dB at the same offsets, or NULL (mt_lora_alloc_grads) */
    size_t n_values;    /* floats of A and B together (the gradients take as many again) */

    /* how the adapter was specified, for adapter_config.json */
    char *target_regex;      /* the one "re:" target, saved as PEFT's string form; else NULL */
    int n_rank, n_alpha;
    char **rank_keys;        /* rank_pattern as given */
    int *rank_values;
    char **alpha_keys;       /* alpha_pattern as given */
    float *alpha_values;
};

/* ---- lora.c ---- */

/* Builds an adapter (A, B and gradients zero) for the specs, which must name distinct
 * linears. Fails only when memory runs out. */
mt_status mt_lora_build(mt_lora **out, mt_model *m, const mt_lora_spec *specs, int n, float dropout, bool use_rslora,
                        mt_error *err);
float mt_lora_scale(float alpha, int r, bool use_rslora);

/* ---- target.c ---- */

/* A compiled list of patterns. */
typedef struct mt_lora_patterns mt_lora_patterns;

/* target_modules / exclude_modules entries as lora.h defines them ("all-linear", a '.'-bounded
 * suffix with '*' globs, "re:<regex>"). `what` names the list in messages. */
mt_status mt_lora_patterns_targets(mt_lora_patterns **out, const char *const *items, int n, const char *what,
                                   mt_error *err);
/* rank_pattern / alpha_pattern keys: PEFT's get_pattern_key, re.match(r"(.*\.)?(KEY)$", path). */
mt_status mt_lora_patterns_keys(mt_lora_patterns **out, const char *const *keys, int n, const char *what,
                                mt_error *err);
void mt_lora_patterns_free(mt_lora_patterns *p);
int mt_lora_patterns_count(const mt_lora_patterns *p);
/* Whether item i selects the linear (targets lists). */
bool mt_lora_patterns_select(const mt_lora_patterns *p, int i, const mt_linear *L);
/* Item i against any path (not only a linear's): what PEFT does for parameter names. */
bool mt_lora_patterns_match_path(const mt_lora_patterns *p, int i, const char *path);
/* PEFT's layer index of a module path for layers_to_transform, or −1. */
int mt_lora_peft_layer_index(const char *key);
/* The first key matching `path`, or −1 (pattern lists). */
int mt_lora_patterns_find(const mt_lora_patterns *p, const char *path);
/* PCRE2 full match of one regex against a string; a bad regex is an MT_ERR_INVALID naming `what`. */
mt_status mt_lora_regex_fullmatch(const char *regex, const char *subject, bool *match, const char *what,
                                  mt_error *err);
/* PEFT's suffix rule for a target_modules list entry: key == t or key ends with "." + t. */
bool mt_lora_suffix_match(const char *target, const char *key);
/* The model's linear names with layer and expert indices folded to '*', deduplicated and
 * comma-separated (for "matches nothing" messages); truncated to fit cap. */
void mt_lora_list_modules(mt_model *m, char *buf, size_t cap);
/* The shortest '.'-bounded suffixes that select exactly the adapted linears under PEFT's
 * list rule; sorted, malloc'ed array of malloc'ed strings. */
char **mt_lora_minimal_targets(const mt_lora *l, int *n);

#endif
