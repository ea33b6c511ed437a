/* peft_load.c — reads a PEFT LoRA folder (made by moetune, by PEFT on transformers 4 with
 * per-expert modules, or by PEFT on transformers 5 with fused 3-D expert parameters) and
 * attaches it to a model, refusing with the file and field named whatever moetune cannot
 * honour exactly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lora-impl.h"

/* ---- adapter_config.json ---- */

typedef struct peft_cfg {
    const char *path;
    bool score_head;              /* SEQ_CLS with modules_to_save ["score"]: a reward model's head */
    int r;
    float alpha, dropout;
    bool use_rslora;
    mt_lora_init init;
    mt_lora_patterns *targets;    /* target_modules: one "all-linear"/"re:" item, or the list */
    bool targets_list;            /* a list (layers_to_transform applies), not a string */
    mt_lora_patterns *exclude;
    const char **params;          /* target_parameters */
    int n_params;
    bool has_layers;
    int *layers;                  /* layers_to_transform */
    int n_layers;
    mt_lora_patterns *rank_p, *alpha_p;
    const char **rank_keys, **alpha_keys;
    int *rank_values;
    float *alpha_values;
    int n_rank, n_alpha;
    const char *base_model;
} peft_cfg;

static void cfg_free(peft_cfg *c) {
    mt_lora_patterns_free(c->targets);
    mt_lora_patterns_free(c->exclude);
    mt_lora_patterns_free(c->rank_p);
    mt_lora_patterns_free(c->alpha_p);
    free(c->params);
    free(c->layers);
    free(c->rank_keys);
    free(c->alpha_keys);
    free(c->rank_values);
    free(c->alpha_values);
}

static bool unset(const cJSON *v) {
    return !v || cJSON_IsNull(v) || cJSON_IsFalse(v) ||
           ((cJSON_IsArray(v) || cJSON_IsObject(v)) && cJSON_GetArraySize(v) == 0);
}

/* Fields whose presence changes what the adapter computes, or adds weights beside A and B. */
static const struct {
    const char *key;
    const char *why;
} k_must_be_unset[] = {
    {"fan_in_fan_out", "moetune's linears store [out, in] weights (Conv1D-style adapters are not supported)"},
    {"use_dora", "DoRA adds a magnitude vector moetune does not implement"},
    {"lora_bias", "moetune's adapters have no bias on lora_B"},
    {"modules_to_save", "moetune saves and loads LoRA factors only, not whole trained modules"},
    {"trainable_token_indices", "trainable token embeddings are not supported"},
    {"layer_replication", "layer replication changes the model's depth"},
    {"alora_invocation_tokens", "activated LoRA applies the adapter only after given tokens"},
    {"use_qalora", "QA-LoRA pools the input before lora_A"},
    {"use_bdlora", "block-diagonal LoRA shards its factors"},
    {"arrow_config", "Arrow routing mixes several adapters"},
    {"kasa_config", "KaSA changes the adapter's forward"},
    {"velora_config", "VeLoRA changes the adapter's backward"},
    {"monteclora_config", "MonteCLoRA samples the adapter's weights"},
};

/* init_lora_weights values whose adapter is relative to a changed base model */
static const char *const k_base_changing_inits[] = {"pissa", "olora", "corda", "loftq", "lora_ga"};

static mt_status bad(const peft_cfg *c, mt_status code, const char *field, const char *what, mt_error *err) {
    return mt_error_set(err, code, "%s: \"%s\" %s", c->path, field, what);
}

static mt_status string_list(const peft_cfg *c, const cJSON *v, const char *field, const char ***out, int *n,
                             mt_error *err) {
    int k = cJSON_GetArraySize(v);
    const char **s = mt_xcalloc((size_t)(k > 0 ? k : 1), sizeof *s);
    int i = 0;
    for (const cJSON *e = v->child; e; e = e->next) {
        if (!cJSON_IsString(e)) {
            free(s);
            return bad(c, MT_ERR_FORMAT, field, "must be a list of strings", err);
        }
        s[i++] = e->valuestring;
    }
    *out = s;
    *n = i;
    return MT_OK;
}

/* PEFT compares target_modules.lower() with "all-linear" */
static bool is_all_linear(const char *t) {
    const char *want = "all-linear";
    for (; *t && *want; t++, want++)
        if ((*t >= 'A' && *t <= 'Z' ? *t - 'A' + 'a' : *t) != *want) return false;
    return !*t && !*want;
}

/* target_modules or exclude_modules: a string is one regex (or "all-linear"), a list holds suffixes */
static mt_status module_patterns(peft_cfg *c, const cJSON *v, const char *field, mt_lora_patterns **out, bool *is_list,
                                 mt_error *err) {
    *out = NULL;
    if (is_list) *is_list = false;
    if (!v || cJSON_IsNull(v)) return MT_OK;
    mt_status st;
    if (cJSON_IsString(v)) {
        size_t len = strlen(v->valuestring) + 4;
        char *item = mt_xmalloc(len);
        bool all = !strcmp(field, "target_modules") && is_all_linear(v->valuestring);
        snprintf(item, len, "%s%s", all ? "" : "re:", v->valuestring);
        const char *items[1] = {item};
        char what[4200];
        snprintf(what, sizeof what, "%s: \"%s\"", c->path, field);
        st = mt_lora_patterns_targets(out, items, 1, what, err);
        free(item);
        return st;
    }
    if (!cJSON_IsArray(v)) return bad(c, MT_ERR_FORMAT, field, "must be null, a string or a list of strings", err);
    const char **items = NULL;
    int n = 0;
    if ((st = string_list(c, v, field, &items, &n, err))) return st;
    /* PEFT's list entries are plain suffixes: a literal '*' stays literal, never a glob */
    for (int i = 0; i < n; i++)
        if (strchr(items[i], '*') || !strncmp(items[i], "re:", 3)) {
            free(items);
            return bad(c, MT_ERR_UNSUPPORTED, field, "has an entry with '*' or \"re:\", which PEFT reads literally", err);
        }
    char what[4200];
    snprintf(what, sizeof what, "%s: \"%s\"", c->path, field);
    st = mt_lora_patterns_targets(out, items, n, what, err);
    free(items);
    if (is_list) *is_list = true;
    return st;
}

static mt_status pattern_dict(peft_cfg *c, const cJSON *v, bool rank, mt_error *err) {
    const char *field = rank ? "rank_pattern" : "alpha_pattern";
    if (!v || cJSON_IsNull(v)) return MT_OK;
    if (!cJSON_IsObject(v)) return bad(c, MT_ERR_FORMAT, field, "must be an object {pattern: number}", err);
    int n = cJSON_GetArraySize(v), i = 0;
    const char **keys = mt_xcalloc((size_t)(n > 0 ? n : 1), sizeof *keys);
    int *rv = mt_xcalloc((size_t)(n > 0 ? n : 1), sizeof *rv);
    float *av = mt_xcalloc((size_t)(n > 0 ? n : 1), sizeof *av);
    for (const cJSON *e = v->child; e; e = e->next, i++) {
        keys[i] = e->string;
        bool ok = cJSON_IsNumber(e) && isfinite(e->valuedouble);
        if (rank) ok = ok && e->valuedouble >= 1 && e->valuedouble <= 1e6 && e->valuedouble == floor(e->valuedouble);
        if (!ok) {
            free(keys);
            free(rv);
            free(av);
            char what[200];
            snprintf(what, sizeof what, "has \"%.80s\" with a value that is not %s", e->string,
                     rank ? "a positive integer" : "a finite number");
            return bad(c, MT_ERR_FORMAT, field, what, err);
        }
        rv[i] = (int)e->valuedouble;
        av[i] = (float)e->valuedouble;
    }
    char what[4200];
    snprintf(what, sizeof what, "%s: \"%s\"", c->path, field);
    mt_status st = mt_lora_patterns_keys(rank ? &c->rank_p : &c->alpha_p, keys, n, what, err);
    if (rank) {
        c->rank_keys = keys;
        c->rank_values = rv;
        c->n_rank = n;
        free(av);
    } else {
        c->alpha_keys = keys;
        c->alpha_values = av;
        c->n_alpha = n;
        free(rv);
    }
    return st;
}

static mt_status parse_config(const cJSON *j, peft_cfg *c, mt_error *err) {
    if (!cJSON_IsObject(j)) return mt_error_set(err, MT_ERR_FORMAT, "%s: not a JSON object", c->path);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "peft_type");
    if (!cJSON_IsString(v) || strcmp(v->valuestring, "LORA"))
        return bad(c, MT_ERR_UNSUPPORTED, "peft_type", "must be \"LORA\" (moetune reads LoRA adapters only)", err);
    /* the one saved module moetune knows: a sequence classifier's score head (reward models) */
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(j, "modules_to_save");
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(j, "task_type");
    c->score_head = cJSON_IsArray(mts) && cJSON_GetArraySize(mts) == 1 && cJSON_IsString(mts->child) &&
                    !strcmp(mts->child->valuestring, "score") && cJSON_IsString(task) &&
                    !strcmp(task->valuestring, "SEQ_CLS");
    for (size_t i = 0; i < sizeof k_must_be_unset / sizeof k_must_be_unset[0]; i++) {
        if (unset(cJSON_GetObjectItemCaseSensitive(j, k_must_be_unset[i].key))) continue;
        if (c->score_head && !strcmp(k_must_be_unset[i].key, "modules_to_save")) continue;
        char what[300];
        snprintf(what, sizeof what, "is set, which moetune cannot honour: %s", k_must_be_unset[i].why);
        return bad(c, MT_ERR_UNSUPPORTED, k_must_be_unset[i].key, what, err);
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "bias");
    if (v && !(cJSON_IsString(v) && !strcmp(v->valuestring, "none")))
        return bad(c, MT_ERR_UNSUPPORTED, "bias", "must be \"none\": moetune's adapters train no biases", err);

    /* PEFT's defaults for what is absent */
    c->r = 8;
    c->alpha = 8.0f;
    v = cJSON_GetObjectItemCaseSensitive(j, "r");
    if (v) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 1e6 || v->valuedouble != floor(v->valuedouble))
            return bad(c, MT_ERR_FORMAT, "r", "must be a positive integer", err);
        c->r = (int)v->valuedouble;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    if (v) {
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
            return bad(c, MT_ERR_FORMAT, "lora_alpha", "must be a number", err);
        c->alpha = (float)v->valuedouble;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "lora_dropout");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 1))
            return bad(c, MT_ERR_FORMAT, "lora_dropout", "must be a number in [0, 1)", err);
        c->dropout = (float)v->valuedouble;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "use_rslora");
    if (v && !cJSON_IsBool(v)) return bad(c, MT_ERR_FORMAT, "use_rslora", "must be true or false", err);
    c->use_rslora = cJSON_IsTrue(v);
    v = cJSON_GetObjectItemCaseSensitive(j, "init_lora_weights");
    if (cJSON_IsString(v)) {
        for (size_t i = 0; i < sizeof k_base_changing_inits / sizeof k_base_changing_inits[0]; i++)
            if (!strncmp(v->valuestring, k_base_changing_inits[i], strlen(k_base_changing_inits[i])))
                return bad(c, MT_ERR_UNSUPPORTED, "init_lora_weights",
                           "names an initialisation that also changes the base weights; save it from PEFT with "
                           "path_initial_model_for_weight_conversion to get a plain LoRA adapter",
                           err);
        if (!strcmp(v->valuestring, "gaussian")) c->init = MT_LORA_INIT_GAUSSIAN;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "base_model_name_or_path");
    if (cJSON_IsString(v)) c->base_model = v->valuestring;

    mt_status st = module_patterns(c, cJSON_GetObjectItemCaseSensitive(j, "target_modules"), "target_modules",
                                   &c->targets, &c->targets_list, err);
    if (!st)
        st = module_patterns(c, cJSON_GetObjectItemCaseSensitive(j, "exclude_modules"), "exclude_modules", &c->exclude,
                             NULL, err);
    if (st) return st;
    v = cJSON_GetObjectItemCaseSensitive(j, "target_parameters");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsArray(v)) return bad(c, MT_ERR_FORMAT, "target_parameters", "must be null or a list", err);
        if ((st = string_list(c, v, "target_parameters", &c->params, &c->n_params, err))) return st;
    }
    if (!c->targets && !c->n_params)
        return bad(c, MT_ERR_FORMAT, "target_modules", "is missing (and there are no target_parameters)", err);
    v = cJSON_GetObjectItemCaseSensitive(j, "layers_to_transform");
    if (v && !cJSON_IsNull(v)) {
        c->has_layers = true;
        c->layers = mt_xcalloc((size_t)(cJSON_IsArray(v) ? cJSON_GetArraySize(v) + 1 : 1), sizeof *c->layers);
        const cJSON *e = cJSON_IsArray(v) ? v->child : v;
        for (; e; e = cJSON_IsArray(v) ? e->next : NULL) {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble != floor(e->valuedouble))
                return bad(c, MT_ERR_FORMAT, "layers_to_transform", "must be a layer index or a list of them", err);
            c->layers[c->n_layers++] = (int)e->valuedouble;
        }
    }
    if ((st = pattern_dict(c, cJSON_GetObjectItemCaseSensitive(j, "rank_pattern"), true, err))) return st;
    return pattern_dict(c, cJSON_GetObjectItemCaseSensitive(j, "alpha_pattern"), false, err);
}

/* PEFT's check_target_module_exists for a module path. */
static bool cfg_selects_module(const peft_cfg *c, const char *key) {
    for (int i = 0; i < mt_lora_patterns_count(c->exclude); i++)
        if (mt_lora_patterns_match_path(c->exclude, i, key)) return false;
    bool found = false;
    for (int i = 0; i < mt_lora_patterns_count(c->targets) && !found; i++)
        found = mt_lora_patterns_match_path(c->targets, i, key);
    if (found && c->targets_list && c->has_layers) {
        int layer = mt_lora_peft_layer_index(key);
        found = false;
        for (int i = 0; i < c->n_layers && !found; i++) found = c->layers[i] == layer;
    }
    return found;
}

/* PEFT's target_parameters rule for "<module>.<parameter>". */
static bool cfg_selects_param(const peft_cfg *c, const char *key) {
    for (int i = 0; i < c->n_params; i++)
        if (mt_lora_suffix_match(c->params[i], key)) return true;
    return false;
}

static void cfg_rank_alpha(const peft_cfg *c, const char *key, int *r, float *alpha) {
    int k = mt_lora_patterns_find(c->rank_p, key);
    *r = k >= 0 ? c->rank_values[k] : c->r;
    k = mt_lora_patterns_find(c->alpha_p, key);
    *alpha = k >= 0 ? c->alpha_values[k] : c->alpha;
}

/* ---- adapter_model.safetensors ---- */

typedef struct key_ent {
    char *module;        /* key without "base_model.model." and the lora_X part */
    int which;           /* 0: lora_A, 1: lora_B */
    const mt_st_tensor *t;
} key_ent;

static int cmp_key(const void *a, const void *b) {
    const key_ent *x = a, *y = b;
    int c = strcmp(x->module, y->module);
    return c ? c : x->which - y->which;
}

/* "base_model.model.<module>.lora_A[.<adapter>].weight" → module, which */
static bool parse_key(const char *name, char **module, int *which) {
    static const char prefix[] = "base_model.model.";
    if (strncmp(name, prefix, sizeof prefix - 1)) return false;
    const char *rest = name + sizeof prefix - 1, *at = NULL;
    for (const char *p = strstr(rest, ".lora_"); p; p = strstr(p + 1, ".lora_"))
        if ((p[6] == 'A' || p[6] == 'B') && p[7] == '.') at = p;
    if (!at) return false;
    const char *tail = at + 8;
    const char *dot = strchr(tail, '.');
    bool ok = !strcmp(tail, "weight") || (dot && dot > tail && !strcmp(dot, ".weight"));
    if (!ok || at == rest) return false;
    *which = at[6] == 'B';
    *module = mt_xmalloc((size_t)(at - rest) + 1);
    memcpy(*module, rest, (size_t)(at - rest));
    (*module)[at - rest] = '\0';
    return true;
}

/* Routed experts under two spellings: HF's gate/up/down_proj and Mixtral's w1/w3/w2. */
static const char *const k_expert_names[][3] = {{"gate_proj", "up_proj", "down_proj"}, {"w1", "w3", "w2"}};
/* transformers 5 calls Mixtral's block "mlp"; its checkpoints and moetune say block_sparse_moe */
static const char *const k_renames[][2] = {{".mlp.", ".block_sparse_moe."}};

static char *replace_once(const char *s, const char *from, const char *to) {
    const char *p = strstr(s, from);
    if (!p) return NULL;
    size_t len = strlen(s) - strlen(from) + strlen(to) + 1;
    char *o = mt_xmalloc(len);
    snprintf(o, len, "%.*s%s%s", (int)(p - s), s, to, p + strlen(from));
    return o;
}

static mt_linear *find_linear(mt_model *m, const char *module) {
    mt_linear *L = mt_model_find_linear(m, module);
    for (size_t i = 0; !L && i < sizeof k_renames / sizeof k_renames[0]; i++) {
        char *alt = replace_once(module, k_renames[i][0], k_renames[i][1]);
        if (alt) L = mt_model_find_linear(m, alt);
        free(alt);
    }
    return L;
}

typedef enum item_kind { ITEM_PLAIN, ITEM_GATE_UP, ITEM_DOWN } item_kind;

/* One pair of factors and the linear(s) it becomes. */
typedef struct item {
    item_kind kind;
    const char *module;      /* as in the file */
    const mt_st_tensor *A, *B;
    mt_linear *lin;          /* ITEM_PLAIN */
    int E;                   /* fused: experts */
    mt_linear **exp[3];      /* fused: [E] gate, up, down */
    int r;
    float alpha;
} item;

static void item_free(item *it) {
    for (int k = 0; k < 3; k++) free(it->exp[k]);
}

/* A fused expert parameter of transformers 5 ("...mlp.experts[.base_layer]"): its experts. */
static bool find_experts(mt_model *m, const char *module, item *it) {
    size_t len = strlen(module);
    char *c = mt_xstrdup(module);
    while (len > 11 && !strcmp(c + len - 11, ".base_layer")) c[len -= 11] = '\0';
    bool ok = len > 8 && !strcmp(c + len - 8, ".experts");
    for (size_t s = 0; ok && s < sizeof k_expert_names / sizeof k_expert_names[0] && !it->E; s++) {
        int E = 0;
        char name[600];
        for (;; E++) {
            snprintf(name, sizeof name, "%s.%d.%s", c, E, k_expert_names[s][0]);
            if (!find_linear(m, name)) break;
        }
        if (!E) continue;
        for (int k = 0; k < 3; k++) {
            it->exp[k] = mt_xcalloc((size_t)E, sizeof(mt_linear *));
            for (int e = 0; e < E; e++) {
                snprintf(name, sizeof name, "%s.%d.%s", c, e, k_expert_names[s][k]);
                it->exp[k][e] = find_linear(m, name);
                ok = ok && it->exp[k][e];
            }
        }
        it->E = E;
    }
    free(c);
    return ok && it->E > 0;
}

static const char *shape_str(const mt_st_tensor *t, char *buf, size_t cap) {
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->ndim && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
    return buf;
}

/* Resolves what a module's factors belong to and checks the config selects it with a rank
 * that matches the shapes. */
static mt_status resolve(mt_model *m, const peft_cfg *c, const char *st_path, item *it, mt_error *err) {
    char sa[64], sb[64];
    const mt_st_tensor *A = it->A, *B = it->B;
    for (int k = 0; k < 2; k++) {
        const mt_st_tensor *t = k ? B : A;
        if (t->ndim != 2)
            return mt_error_set(err, MT_ERR_FORMAT, "%s: %s has shape %s; LoRA factors are matrices", st_path, t->name,
                                shape_str(t, sa, sizeof sa));
        if (t->dtype != MT_DTYPE_F32 && t->dtype != MT_DTYPE_F16 && t->dtype != MT_DTYPE_BF16 &&
            t->dtype != MT_DTYPE_F64)
            return mt_error_set(err, MT_ERR_FORMAT, "%s: %s is %s; LoRA factors must be floating point", st_path,
                                t->name, mt_dtype_name(t->dtype));
    }
    char key[700];
    it->lin = find_linear(m, it->module);
    if (it->lin) {
        it->kind = ITEM_PLAIN;
        if (cfg_selects_module(c, it->module)) {
            snprintf(key, sizeof key, "%s", it->module);
        } else {
            snprintf(key, sizeof key, "%s.weight", it->module);
            if (!cfg_selects_param(c, key))
                return mt_error_set(err, MT_ERR_FORMAT,
                                    "%s: %s adapts %s, which target_modules/target_parameters in %s do not select",
                                    st_path, A->name, it->module, c->path);
        }
        cfg_rank_alpha(c, key, &it->r, &it->alpha);
        const mt_linear *L = it->lin;
        if (A->shape[0] != it->r || A->shape[1] != L->in || B->shape[0] != L->out || B->shape[1] != it->r)
            return mt_error_set(err, MT_ERR_FORMAT,
                                "%s: %s is %s and lora_B %s, but %s [%d, %d] with r = %d (from %s) needs [%d, %d] and "
                                "[%d, %d]",
                                st_path, A->name, shape_str(A, sa, sizeof sa), shape_str(B, sb, sizeof sb),
                                L->module, L->out, L->in, it->r, c->path, it->r, L->in, L->out, it->r);
        return MT_OK;
    }
    if (!find_experts(m, it->module, it))
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: %s adapts %s, which the model does not have", st_path, A->name,
                            it->module);
    /* transformers 5's fused experts: lora_A [r·E, in], lora_B [out, r·E]; gate_up_proj is
     * [E, 2I, H] (gate rows first), down_proj [E, H, I]. Which one is told by the shapes. */
    const mt_linear *g = it->exp[0][0], *d = it->exp[2][0];
    const char *param;
    if (A->shape[1] == g->in && B->shape[0] == 2 * (int64_t)g->out) {
        it->kind = ITEM_GATE_UP;
        param = "gate_up_proj";
    } else if (A->shape[1] == d->in && B->shape[0] == d->out) {
        it->kind = ITEM_DOWN;
        param = "down_proj";
    } else {
        return mt_error_set(err, MT_ERR_FORMAT,
                            "%s: %s is %s and lora_B %s: neither the experts' gate_up_proj [%d, %d] nor down_proj [%d, %d]",
                            st_path, A->name, shape_str(A, sa, sizeof sa), shape_str(B, sb, sizeof sb), 2 * g->out,
                            g->in, d->out, d->in);
    }
    size_t len = strlen(it->module);
    char *container = mt_xstrdup(it->module);
    while (len > 11 && !strcmp(container + len - 11, ".base_layer")) container[len -= 11] = '\0';
    snprintf(key, sizeof key, "%s.%s", container, param);
    free(container);
    if (!cfg_selects_param(c, key))
        return mt_error_set(err, MT_ERR_FORMAT, "%s: %s adapts %s, which target_parameters in %s does not select",
                            st_path, A->name, key, c->path);
    cfg_rank_alpha(c, key, &it->r, &it->alpha);
    int64_t re = (int64_t)it->r * it->E;
    if (A->shape[0] != re || B->shape[1] != re)
        return mt_error_set(err, MT_ERR_FORMAT, "%s: %s is %s and lora_B %s, but r = %d (from %s) over %d experts needs %lld",
                            st_path, A->name, shape_str(A, sa, sizeof sa), shape_str(B, sb, sizeof sb), it->r, c->path,
                            it->E, (long long)re);
    return MT_OK;
}

/* ---- moetune.json ---- */

static mt_status read_meta(const char *dir, const mt_safetensors *st, const peft_cfg *c, mt_lora_meta *meta,
                           mt_error *err) {
    memset(meta, 0, sizeof *meta);
    size_t cap = strlen(dir) + 32;
    char *path = mt_xmalloc(cap);
    mt_path_join(path, cap, dir, "moetune.json");
    mt_status s = MT_OK;
    const char *hash = NULL, *base = NULL, *thr = NULL;
    double run = 0;
    cJSON *j = NULL;
    char *thr_owned = NULL;
    if (mt_path_exists(path)) {
        char *text;
        if ((s = mt_read_file(path, &text, NULL, err))) goto done;
        j = cJSON_Parse(text);
        free(text);
        if (!cJSON_IsObject(j)) {
            s = mt_error_set(err, MT_ERR_FORMAT, "%s: not a JSON object", path);
            goto done;
        }
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "base_hash");
        if (v && !cJSON_IsString(v)) s = mt_error_set(err, MT_ERR_FORMAT, "%s: \"base_hash\" must be a string", path);
        hash = cJSON_IsString(v) ? v->valuestring : NULL;
        v = cJSON_GetObjectItemCaseSensitive(j, "base_model");
        base = cJSON_IsString(v) ? v->valuestring : NULL;
        v = cJSON_GetObjectItemCaseSensitive(j, "run_id");
        if (v && !cJSON_IsNumber(v) && !cJSON_IsNull(v))
            s = mt_error_set(err, MT_ERR_FORMAT, "%s: \"run_id\" must be a number", path);
        run = cJSON_IsNumber(v) ? v->valuedouble : 0;
        v = cJSON_GetObjectItemCaseSensitive(j, "thresholds");
        if (v && !cJSON_IsNull(v)) {
            if (!cJSON_IsObject(v)) s = mt_error_set(err, MT_ERR_FORMAT, "%s: \"thresholds\" must be an object", path);
            thr = thr_owned = cJSON_PrintUnformatted(v);
        }
    } else {
        /* no moetune.json (copied without it): the safetensors metadata holds the same */
        hash = mt_safetensors_metadata(st, "moetune.base_hash");
        thr = mt_safetensors_metadata(st, "moetune.thresholds");
        const char *r = mt_safetensors_metadata(st, "moetune.run_id");
        run = r ? strtod(r, NULL) : 0;
    }
    if (s) goto done;
    if (hash && strlen(hash) >= sizeof meta->base_hash) {
        s = mt_error_set(err, MT_ERR_FORMAT, "%s: \"base_hash\" is longer than a SHA-256 in hex", path);
        goto done;
    }
    if (hash) snprintf(meta->base_hash, sizeof meta->base_hash, "%s", hash);
    if (!base || !*base) base = c->base_model;
    if (base) snprintf(meta->base_model, sizeof meta->base_model, "%s", base);
    meta->run_id = (int64_t)run;
    if (thr && *thr) meta->thresholds_json = mt_xstrdup(thr);
done:
    free(thr_owned);
    cJSON_Delete(j);
    free(path);
    return s;
}

/* ---- loading ---- */

/* index of a linear from its pointer, through a sorted table of (pointer, index) pairs */
typedef struct lin_ref {
    mt_linear *L;
    int index;
} lin_ref;

static int cmp_ptr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const lin_ref *)a)->L, y = (uintptr_t)((const lin_ref *)b)->L;
    return (x > y) - (x < y);
}

static int lin_index(const lin_ref *refs, int n, const mt_linear *L) {
    lin_ref k = {(mt_linear *)L, 0};
    const lin_ref *f = bsearch(&k, refs, (size_t)n, sizeof *refs, cmp_ptr);
    return f ? f->index : -1;
}

mt_status mt_lora_load_peft(mt_lora **out, mt_model *m, const char *dir, mt_lora_meta *meta_out, mt_error *err) {
    *out = NULL;
    if (meta_out) memset(meta_out, 0, sizeof *meta_out);
    size_t cap = strlen(dir) + 64;
    char *cfg_path = mt_xmalloc(cap), *st_path = mt_xmalloc(cap);
    mt_path_join(cfg_path, cap, dir, "adapter_config.json");
    mt_path_join(st_path, cap, dir, "adapter_model.safetensors");
    peft_cfg c = {.path = cfg_path};
    cJSON *j = NULL;
    mt_safetensors *st = NULL;
    key_ent *keys = NULL;
    item *items = NULL;
    mt_lora_spec *specs = NULL;
    lin_ref *refs = NULL;
    mt_lora_mod **mod_of = NULL;
    size_t n_keys = 0;
    int n_items = 0, n_specs = 0, nl = mt_model_linear_count(m);
    mt_lora *l = NULL;
    mt_lora_meta meta = {0};
    mt_status s;
    char *text = NULL;
    const mt_st_tensor *score_t = NULL;

    if (!mt_is_dir(dir)) {
        s = mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no such adapter folder", dir);
        goto done;
    }
    if ((s = mt_read_file(cfg_path, &text, NULL, err))) goto done;
    j = cJSON_Parse(text);
    if (!j) {
        s = mt_error_set(err, MT_ERR_FORMAT, "%s: not valid JSON", cfg_path);
        goto done;
    }
    if ((s = parse_config(j, &c, err))) goto done;
    if (!mt_path_exists(st_path)) {
        mt_path_join(st_path, cap, dir, "adapter_model.bin");
        s = mt_path_exists(st_path)
                ? mt_error_set(err, MT_ERR_UNSUPPORTED,
                               "%s: pickled adapters are not read; save it again with safe_serialization=True", st_path)
                : mt_error_set(err, MT_ERR_NOT_FOUND, "%s/adapter_model.safetensors: no such file", dir);
        goto done;
    }
    if ((s = mt_safetensors_open(&st, st_path, err))) goto done;

    n_keys = mt_safetensors_count(st);
    if (!n_keys) {
        s = mt_error_set(err, MT_ERR_FORMAT, "%s: holds no tensors", st_path);
        goto done;
    }
    keys = mt_xcalloc(n_keys, sizeof *keys);
    size_t n_all = n_keys;
    n_keys = 0;
    for (size_t q = 0; q < n_all; q++) {
        const mt_st_tensor *t = mt_safetensors_at(st, q);
        if (c.score_head && !strcmp(t->name, "base_model.model.score.weight")) {
            score_t = t;
            continue;
        }
        size_t i = n_keys++;
        keys[i].t = t;
        if (!parse_key(t->name, &keys[i].module, &keys[i].which)) {
            s = mt_error_set(err, MT_ERR_FORMAT,
                             "%s: tensor \"%s\" is not a LoRA factor "
                             "(\"base_model.model.<module>.lora_A.weight\" or \".lora_B.weight\")",
                             st_path, t->name);
            goto done;
        }
    }
    qsort(keys, n_keys, sizeof *keys, cmp_key);
    items = mt_xcalloc(n_keys, sizeof *items);
    for (size_t i = 0; i < n_keys;) {
        size_t k = i + 1;
        while (k < n_keys && !strcmp(keys[k].module, keys[i].module)) k++;
        /* a pair is exactly one lora_A and one lora_B (with or without the adapter name) */
        if (k - i != 2 || keys[i].which != 0 || keys[i + 1].which != 1) {
            s = mt_error_set(err, MT_ERR_FORMAT, "%s: module %s needs exactly one lora_A and one lora_B tensor, has %zu",
                             st_path, keys[i].module, k - i);
            goto done;
        }
        item *it = &items[n_items++];
        it->module = keys[i].module;
        it->A = keys[i].t;
        it->B = keys[i + 1].t;
        if ((s = resolve(m, &c, st_path, it, err))) goto done;
        i = k;
    }

    /* the linears each pair becomes, each at most once */
    refs = mt_xcalloc((size_t)(nl > 0 ? nl : 1), sizeof *refs);
    for (int i = 0; i < nl; i++) refs[i] = (lin_ref){mt_model_linear(m, i), i};
    qsort(refs, (size_t)nl, sizeof *refs, cmp_ptr);
    specs = mt_xcalloc((size_t)(nl > 0 ? nl : 1), sizeof *specs);
    const char **owner = mt_xcalloc((size_t)(nl > 0 ? nl : 1), sizeof *owner);
    for (int i = 0; i < n_items && !s; i++) {
        item *it = &items[i];
        int n_lin = it->kind == ITEM_PLAIN ? 1 : it->kind == ITEM_GATE_UP ? 2 * it->E : it->E;
        for (int q = 0; q < n_lin && !s; q++) {
            mt_linear *L = it->kind == ITEM_PLAIN  ? it->lin
                           : it->kind == ITEM_DOWN ? it->exp[2][q]
                                                   : it->exp[q % 2][q / 2];
            int li = lin_index(refs, nl, L);
            MT_ASSERT(li >= 0);
            if (owner[li]) {
                s = mt_error_set(err, MT_ERR_FORMAT, "%s: %s is adapted twice (by %s and by %s)", st_path, L->module,
                                 owner[li], it->module);
            } else {
                owner[li] = it->module;
                specs[n_specs++] = (mt_lora_spec){.linear = li, .r = it->r, .alpha = it->alpha};
            }
        }
    }
    free(owner);
    if (s) goto done;
    if ((s = read_meta(dir, st, &c, &meta, err))) goto done;
    if ((s = mt_lora_build(&l, m, specs, n_specs, c.dropout, c.use_rslora, err))) goto done;
    l->r = c.r;
    l->alpha = c.alpha;
    l->init = c.init;
    l->n_rank = c.n_rank;
    l->rank_keys = mt_xcalloc((size_t)(c.n_rank > 0 ? c.n_rank : 1), sizeof(char *));
    l->rank_values = mt_xcalloc((size_t)(c.n_rank > 0 ? c.n_rank : 1), sizeof(int));
    for (int i = 0; i < c.n_rank; i++) {
        l->rank_keys[i] = mt_xstrdup(c.rank_keys[i]);
        l->rank_values[i] = c.rank_values[i];
    }
    l->n_alpha = c.n_alpha;
    l->alpha_keys = mt_xcalloc((size_t)(c.n_alpha > 0 ? c.n_alpha : 1), sizeof(char *));
    l->alpha_values = mt_xcalloc((size_t)(c.n_alpha > 0 ? c.n_alpha : 1), sizeof(float));
    for (int i = 0; i < c.n_alpha; i++) {
        l->alpha_keys[i] = mt_xstrdup(c.alpha_keys[i]);
        l->alpha_values[i] = c.alpha_values[i];
    }

    /* the values: plain pairs as they are; fused experts split, expert e taking rows
     * e·r .. e·r+r−1 of lora_A and columns k·E + e of lora_B (PEFT's layout) */
    mod_of = mt_xcalloc((size_t)(nl > 0 ? nl : 1), sizeof *mod_of);
    for (int i = 0; i < l->n_mods; i++) mod_of[l->mods[i].index] = &l->mods[i];
    /* one staging pair, grown to the largest factors: converting, checking and uploading go
     * through memory that stays in cache instead of fresh buffers per tensor (hot loads in a
     * server are timed in milliseconds) */
    size_t cap_a = 0, cap_b = 0;
    float *a = NULL, *b = NULL, *ae = NULL, *bm = NULL;
    for (int i = 0; i < n_items; i++) {
        if ((size_t)items[i].A->numel > cap_a) cap_a = (size_t)items[i].A->numel;
        if ((size_t)items[i].B->numel > cap_b) cap_b = (size_t)items[i].B->numel;
    }
    a = mt_xmalloc((cap_a ? cap_a : 1) * sizeof(float));
    b = mt_xmalloc((cap_b ? cap_b : 1) * sizeof(float));
    ae = mt_xmalloc((cap_a ? cap_a : 1) * sizeof(float));
    bm = mt_xmalloc((cap_b ? cap_b : 1) * sizeof(float));
    for (int i = 0; i < n_items && !s; i++) {
        item *it = &items[i];
        s = mt_st_tensor_to_f32(it->A, a, err);
        if (!s) s = mt_st_tensor_to_f32(it->B, b, err);
        /* a NaN in a factor would silently poison every forward */
        for (int k = 0; !s && k < 2; k++) {
            const mt_st_tensor *t = k ? it->B : it->A;
            const float *v = k ? b : a;
            for (int64_t q = 0; q < t->numel; q++)
                if (!isfinite(v[q])) {
                    s = mt_error_set(err, MT_ERR_NUMERIC, "%s: %s holds a non-finite value", st_path, t->name);
                    break;
                }
        }
        if (!s && it->kind == ITEM_PLAIN) {
            mt_lora_mod *md = mod_of[lin_index(refs, nl, it->lin)];
            mt_backend_upload(l->be, md->A, a, (size_t)it->A->numel * sizeof(float));
            mt_backend_upload(l->be, md->B, b, (size_t)it->B->numel * sizeof(float));
        }
        for (int e = 0; !s && it->kind != ITEM_PLAIN && e < it->E; e++) {
            int parts = it->kind == ITEM_GATE_UP ? 2 : 1;
            for (int q = 0; q < parts; q++) {
                mt_linear *L = it->kind == ITEM_DOWN ? it->exp[2][e] : it->exp[q][e];
                mt_lora_mod *md = mod_of[lin_index(refs, nl, L)];
                int r = it->r, in = L->in, rows = L->out, RE = r * it->E;
                memcpy(ae, a + (size_t)e * r * in, (size_t)r * in * sizeof(float));
                for (int o = 0; o < rows; o++)
                    for (int k = 0; k < r; k++)
                        bm[(size_t)o * r + k] = b[(size_t)(q * rows + o) * RE + (size_t)k * it->E + e];
                mt_backend_upload(l->be, md->A, ae, (size_t)r * in * sizeof(float));
                mt_backend_upload(l->be, md->B, bm, (size_t)rows * r * sizeof(float));
            }
        }
    }
    free(a);
    free(b);
    free(ae);
    free(bm);
    if (s) goto done;
    if (c.score_head && !score_t) {
        s = mt_error_set(err, MT_ERR_FORMAT, "%s: modules_to_save names \"score\" but there is no "
                         "base_model.model.score.weight", st_path);
        goto done;
    }
    if (score_t && meta_out) {
        if (score_t->ndim != 2 || score_t->shape[1] != mt_model_config(m)->hidden_size) {
            s = mt_error_set(err, MT_ERR_FORMAT, "%s: the score head must be [labels, %d]", st_path,
                             mt_model_config(m)->hidden_size);
            goto done;
        }
        meta.score = mt_xmalloc((size_t)score_t->numel * sizeof(float));
        meta.score_rows = score_t->shape[0];
        meta.score_cols = score_t->shape[1];
        if ((s = mt_st_tensor_to_f32(score_t, meta.score, err))) goto done;
    }
    *out = l;
    l = NULL;
    if (meta_out) {
        *meta_out = meta;
        meta.thresholds_json = NULL;
        meta.score = NULL;
    }
done:
    if (l) mt_lora_free(l);
    free(meta.thresholds_json);
    free(meta.score);
    free(mod_of);
    free(refs);
    free(specs);
    for (int i = 0; i < n_items; i++) item_free(&items[i]);
    free(items);
    for (size_t i = 0; keys && i < n_keys; i++) free(keys[i].module);
    free(keys);
    mt_safetensors_close(st);
    cfg_free(&c);
    cJSON_Delete(j);
    free(text);
    free(cfg_path);
    free(st_path);
    return s;
}

bool mt_lora_meta_threshold(const char *thresholds_json, const char *key, float *out) {
    if (!thresholds_json || !thresholds_json[0]) return false;
    cJSON *o = cJSON_Parse(thresholds_json);
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    bool ok = cJSON_IsNumber(v) && isfinite(v->valuedouble);
    if (ok) *out = v->valuedouble < 0 ? 0.0f : v->valuedouble > 1 ? 1.0f : (float)v->valuedouble;
    cJSON_Delete(o);
    return ok;
}
