/* config.c — Hugging Face config.json for the six MoE families: parsing with transformers'
 * own defaults and derived values (configuration_*.py of transformers 5.23, plus the keys
 * DeepSeek's remote code reads), consistency checks, serialisation back to a config.json
 * transformers loads, presets for `moetune init`, and parameter / FLOP counts. */
#define _GNU_SOURCE
#include "config-impl.h"
#include "model/model.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* =========================================================================================
 * Families
 * ========================================================================================= */

static const struct {
    const char *model_type;
    const char *architecture;
} family_info[MT_FAMILY_COUNT] = {
    [MT_FAMILY_DEEPSEEK_V3] = {"deepseek_v3", "DeepseekV3ForCausalLM"},
    [MT_FAMILY_DEEPSEEK_V2] = {"deepseek_v2", "DeepseekV2ForCausalLM"},
    [MT_FAMILY_QWEN3_MOE] = {"qwen3_moe", "Qwen3MoeForCausalLM"},
    [MT_FAMILY_QWEN2_MOE] = {"qwen2_moe", "Qwen2MoeForCausalLM"},
    [MT_FAMILY_MIXTRAL] = {"mixtral", "MixtralForCausalLM"},
    [MT_FAMILY_OLMOE] = {"olmoe", "OlmoeForCausalLM"},
};

#define SUPPORTED_FAMILIES "deepseek_v3, deepseek_v2, qwen3_moe, qwen2_moe, mixtral, olmoe"

const char *mt_family_name(mt_family f) {
    if ((unsigned)f >= MT_FAMILY_COUNT) return "?";
    return family_info[f].model_type;
}

mt_status mt_family_from_name(const char *model_type, mt_family *out, mt_error *err) {
    for (int f = 0; f < MT_FAMILY_COUNT; f++) {
        if (strcmp(model_type, family_info[f].model_type) == 0) {
            *out = (mt_family)f;
            return MT_OK;
        }
    }
    return mt_error_set(err, MT_ERR_UNSUPPORTED, "model_type \"%s\" is not supported (supported: %s)", model_type,
                        SUPPORTED_FAMILIES);
}

static bool is_deepseek(mt_family f) { return f == MT_FAMILY_DEEPSEEK_V3 || f == MT_FAMILY_DEEPSEEK_V2; }
static bool is_qwen(mt_family f) { return f == MT_FAMILY_QWEN3_MOE || f == MT_FAMILY_QWEN2_MOE; }

/* =========================================================================================
 * Derived values shared by the loader, the presets and validation
 * ========================================================================================= */

/* The routing transformers (and DeepSeek's remote code, for V2) runs, from the raw keys.
 * DeepSeek-V2 either renormalises (k > 1 and norm_topk_prob) or scales by
 * routed_scaling_factor, never both, so the factor is folded to 1 when it renormalises. */
static void resolve_routing(mt_config *c) {
    switch (c->family) {
    case MT_FAMILY_DEEPSEEK_V3:
        c->scoring = MT_ROUTE_SCORING_SIGMOID;
        c->route_method = MT_ROUTE_METHOD_NOAUX_TC;
        c->route_norm = c->norm_topk_prob ? MT_ROUTE_NORM_SUM_EPS : MT_ROUTE_NORM_NONE;
        break;
    case MT_FAMILY_DEEPSEEK_V2:
        c->scoring = MT_ROUTE_SCORING_SOFTMAX;
        if (c->top_k > 1 && c->norm_topk_prob) {
            c->route_norm = MT_ROUTE_NORM_SUM_EPS;
            c->routed_scaling_factor = 1.0f;
        } else {
            c->route_norm = MT_ROUTE_NORM_NONE;
        }
        break;
    case MT_FAMILY_MIXTRAL:
        c->scoring = MT_ROUTE_SCORING_SOFTMAX;
        c->route_method = MT_ROUTE_METHOD_GREEDY;
        c->norm_topk_prob = true; /* Mixtral always renormalises over the chosen k */
        c->route_norm = MT_ROUTE_NORM_SUM;
        break;
    default: /* Qwen2/3-MoE and OLMoE */
        c->scoring = MT_ROUTE_SCORING_SOFTMAX;
        c->route_method = MT_ROUTE_METHOD_GREEDY;
        c->route_norm = c->norm_topk_prob ? MT_ROUTE_NORM_SUM : MT_ROUTE_NORM_NONE;
        break;
    }
}

/* Which layers are MoE, as each family's modeling file decides it. mlp_only[i] marks
 * Qwen's mlp_only_layers (NULL: none). */
static void resolve_moe_layers(mt_config *c, const bool *mlp_only) {
    for (int i = 0; i < MT_MAX_LAYERS; i++) {
        bool moe = false;
        if (i < c->n_layers && c->n_experts > 0) {
            if (is_deepseek(c->family))
                moe = i >= c->first_k_dense_replace && c->moe_layer_freq > 0 && i % c->moe_layer_freq == 0;
            else if (is_qwen(c->family))
                moe = !(mlp_only && mlp_only[i]) && c->decoder_sparse_step > 0 && (i + 1) % c->decoder_sparse_step == 0;
            else
                moe = true;
        }
        c->layer_is_moe[i] = moe;
    }
}

int mt_config_qk_head_dim(const mt_config *cfg) {
    return cfg->mla ? cfg->qk_nope_head_dim + cfg->qk_rope_head_dim : cfg->head_dim;
}

int mt_config_v_head_dim(const mt_config *cfg) { return cfg->mla ? cfg->v_head_dim : cfg->head_dim; }

/* =========================================================================================
 * Reading config.json
 * ========================================================================================= */

typedef struct cfg_reader {
    const char *file; /* for messages */
    const cJSON *root;
    mt_error *err;
} cfg_reader;

static const char *json_kind(const cJSON *v, char *buf, size_t cap) {
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "array";
    if (cJSON_IsObject(v)) return "object";
    if (cJSON_IsNumber(v)) {
        snprintf(buf, cap, "%.17g", v->valuedouble);
        return buf;
    }
    return "invalid value";
}

static mt_status type_error(const cfg_reader *r, const char *key, const char *want, const cJSON *v) {
    char num[64];
    return mt_error_set(r->err, MT_ERR_INVALID, "%s: \"%s\" must be %s, got %s", r->file, key, want,
                        json_kind(v, num, sizeof num));
}

/* The key's node in `obj`, trying `alias` (transformers' attribute_map) when the key is
 * absent; *name gets the spelling found, for messages. */
static const cJSON *find(const cJSON *obj, const char *key, const char *alias, const char **name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *name = key;
    if (!v && alias) {
        v = cJSON_GetObjectItemCaseSensitive(obj, alias);
        if (v) *name = alias;
    }
    return v;
}

static mt_status as_int(const cfg_reader *r, const char *key, const cJSON *v, int *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < INT_MIN ||
        v->valuedouble > INT_MAX)
        return type_error(r, key, "an integer", v);
    *out = (int)v->valuedouble;
    return MT_OK;
}

/* An integer key: absent → def; null → null_val when allow_null, else a type error. */
static mt_status get_int(const cfg_reader *r, const char *key, const char *alias, int def, bool allow_null,
                         int null_val, int *out) {
    const char *name;
    const cJSON *v = find(r->root, key, alias, &name);
    if (!v) {
        *out = def;
        return MT_OK;
    }
    if (cJSON_IsNull(v) && allow_null) {
        *out = null_val;
        return MT_OK;
    }
    return as_int(r, name, v, out);
}

static mt_status need_int(const cfg_reader *r, const char *key, const char *alias, int *out) {
    const char *name;
    const cJSON *v = find(r->root, key, alias, &name);
    if (!v) return mt_error_set(r->err, MT_ERR_INVALID, "%s: required key \"%s\" is missing", r->file, key);
    return as_int(r, name, v, out);
}

/* A number key of `obj`: absent (or null when allow_null) → def. */
static mt_status get_num(const cfg_reader *r, const cJSON *obj, const char *key, double def, bool allow_null,
                         double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || (allow_null && cJSON_IsNull(v))) {
        *out = def;
        return MT_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return type_error(r, key, "a number", v);
    *out = v->valuedouble;
    return MT_OK;
}

static mt_status get_float(const cfg_reader *r, const char *key, float def, float *out) {
    double d = def;
    MT_TRY(get_num(r, r->root, key, def, false, &d));
    if (fabs(d) > FLT_MAX)
        return type_error(r, key, "a number within float range", cJSON_GetObjectItemCaseSensitive(r->root, key));
    *out = (float)d;
    return MT_OK;
}

/* A boolean key: absent → def; null → null_val when allow_null. */
static mt_status get_bool(const cfg_reader *r, const char *key, bool def, bool allow_null, bool null_val, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, key);
    if (!v) {
        *out = def;
        return MT_OK;
    }
    if (cJSON_IsNull(v) && allow_null) {
        *out = null_val;
        return MT_OK;
    }
    if (!cJSON_IsBool(v)) return type_error(r, key, "true or false", v);
    *out = cJSON_IsTrue(v);
    return MT_OK;
}

/* A string key of `obj`: absent or null → def. */
static mt_status get_str(const cfg_reader *r, const cJSON *obj, const char *key, const char *def, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return MT_OK;
    }
    if (!cJSON_IsString(v)) return type_error(r, key, "a string", v);
    *out = v->valuestring;
    return MT_OK;
}

/* Keys moetune cannot honour are refused rather than silently ignored: a model that
 * loads but computes something else is worse than an error. */
static mt_status refuse_true(const cfg_reader *r, const char *key, const char *why) {
    bool on = false;
    mt_status s = get_bool(r, key, false, true, false, &on);
    if (s == MT_OK && on)
        s = mt_error_set(r->err, MT_ERR_UNSUPPORTED, "%s: \"%s\": true is not supported (%s)", r->file, key, why);
    return s;
}

/* An optional string key that, when present, must name what transformers implements. */
static mt_status expect_str(const cfg_reader *r, const char *key, const char *want, const char *why) {
    const char *v = NULL;
    mt_status s = get_str(r, r->root, key, want, &v);
    if (s == MT_OK && strcmp(v, want) != 0)
        s = mt_error_set(r->err, MT_ERR_UNSUPPORTED, "%s: \"%s\": \"%s\" is not supported (%s)", r->file, key, v, why);
    return s;
}

static mt_status read_token_ids(const cfg_reader *r, mt_config *c) {
    int bos_def = -1, eos_def = -1;
    switch (c->family) {
    case MT_FAMILY_DEEPSEEK_V3: bos_def = 0; eos_def = 1; break;
    case MT_FAMILY_DEEPSEEK_V2: bos_def = 1; eos_def = 2; break;
    case MT_FAMILY_MIXTRAL: bos_def = 1; eos_def = 2; break;
    case MT_FAMILY_OLMOE: eos_def = 50279; break;
    default: break;
    }
    MT_TRY(get_int(r, "bos_token_id", NULL, bos_def, true, -1, &c->bos_token_id));
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(r->root, "eos_token_id");
    c->n_eos = 0;
    if (!eos) {
        if (eos_def >= 0) c->eos_token_ids[c->n_eos++] = eos_def;
    } else if (cJSON_IsArray(eos)) {
        for (const cJSON *e = eos->child; e; e = e->next) {
            if (c->n_eos == MT_MAX_EOS)
                return mt_error_set(r->err, MT_ERR_UNSUPPORTED, "%s: \"eos_token_id\" lists more than %d ids", r->file,
                                    MT_MAX_EOS);
            MT_TRY(as_int(r, "eos_token_id", e, &c->eos_token_ids[c->n_eos]));
            c->n_eos++;
        }
    } else if (!cJSON_IsNull(eos)) {
        if (!cJSON_IsNumber(eos)) return type_error(r, "eos_token_id", "an integer or a list of integers", eos);
        MT_TRY(as_int(r, "eos_token_id", eos, &c->eos_token_ids[0]));
        c->n_eos = 1;
    }
    return MT_OK;
}

/* RoPE settings, in either spelling: transformers < 5 wrote `rope_theta` beside a
 * `rope_scaling` object ({"type": "yarn", ...}); transformers 5 writes `rope_parameters`
 * holding rope_theta and rope_type. As in transformers, a non-empty rope_scaling wins, and
 * a rope_theta inside the object wins over the top-level one. */
static mt_status read_rope(const cfg_reader *r, mt_config *c) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(r->root, "rope_scaling");
    const char *rs_key = "rope_scaling";
    if (rs && !cJSON_IsNull(rs) && !cJSON_IsObject(rs)) return type_error(r, "rope_scaling", "an object or null", rs);
    if (!rs || cJSON_IsNull(rs) || !rs->child) {
        rs = cJSON_GetObjectItemCaseSensitive(r->root, "rope_parameters");
        rs_key = "rope_parameters";
        if (rs && !cJSON_IsNull(rs) && !cJSON_IsObject(rs))
            return type_error(r, "rope_parameters", "an object or null", rs);
        if (rs && !cJSON_IsObject(rs)) rs = NULL;
    }
    double default_theta = c->family == MT_FAMILY_MIXTRAL ? 1e6 : 1e4;
    double top_theta = 0;
    MT_TRY(get_num(r, r->root, "rope_theta", default_theta, true, &top_theta));
    c->rope_theta = top_theta;
    c->rope_scaling = MT_ROPE_SCALING_NONE;
    c->rope_factor = 1.0;
    c->rope_original_max_pos = c->max_position_embeddings;
    c->yarn_beta_fast = 32;
    c->yarn_beta_slow = 1;
    c->yarn_mscale = 0;
    c->yarn_mscale_all_dim = 0;

    double partial = 0;
    MT_TRY(get_num(r, r->root, "partial_rotary_factor", 1.0, true, &partial));
    if (rs) MT_TRY(get_num(r, rs, "partial_rotary_factor", partial, true, &partial));
    if (partial != 1.0)
        return mt_error_set(r->err, MT_ERR_UNSUPPORTED, "%s: \"partial_rotary_factor\" %g is not supported (only 1)",
                            r->file, partial);
    if (!rs) return MT_OK;

    MT_TRY(get_num(r, rs, "rope_theta", c->rope_theta, true, &c->rope_theta));
    const char *type = NULL;
    MT_TRY(get_str(r, rs, "type", "default", &type));
    MT_TRY(get_str(r, rs, "rope_type", type, &type));
    if (strcmp(type, "default") == 0) return MT_OK;
    if (strcmp(type, "linear") == 0) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(rs, "factor");
        if (!cJSON_IsNumber(f)) return type_error(r, "factor", "a number (linear RoPE scaling)", f);
        c->rope_scaling = MT_ROPE_SCALING_LINEAR;
        c->rope_factor = f->valuedouble;
        return MT_OK;
    }
    if (strcmp(type, "yarn") != 0)
        return mt_error_set(r->err, MT_ERR_UNSUPPORTED,
                            "%s: \"%s\": rope type \"%s\" is not supported (default, linear, yarn)", r->file, rs_key,
                            type);
    c->rope_scaling = MT_ROPE_SCALING_YARN;
    /* transformers prefers a top-level original_max_position_embeddings (Phi-3 style),
     * then the one in the object, then max_position_embeddings. */
    int orig = c->max_position_embeddings;
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(rs, "original_max_position_embeddings");
    if (o && !cJSON_IsNull(o)) MT_TRY(as_int(r, "original_max_position_embeddings", o, &orig));
    MT_TRY(get_int(r, "original_max_position_embeddings", NULL, orig, true, orig, &orig));
    c->rope_original_max_pos = orig;
    double factor = 0;
    MT_TRY(get_num(r, rs, "factor", NAN, true, &factor));
    if (isnan(factor)) {
        if (orig <= 0) return mt_error_set(r->err, MT_ERR_INVALID, "%s: YaRN needs \"factor\"", r->file);
        factor = (double)c->max_position_embeddings / orig;
    }
    c->rope_factor = factor;
    /* beta_fast/beta_slow fall back when absent, null or 0 (transformers uses `or`);
     * mscale and mscale_all_dim stay 0 when absent, which is how transformers tells
     * "not given" apart (it tests their truthiness). */
    double v = 0;
    MT_TRY(get_num(r, rs, "beta_fast", 0, true, &v));
    c->yarn_beta_fast = v != 0 ? v : 32;
    MT_TRY(get_num(r, rs, "beta_slow", 0, true, &v));
    c->yarn_beta_slow = v != 0 ? v : 1;
    MT_TRY(get_num(r, rs, "mscale", 0, true, &c->yarn_mscale));
    MT_TRY(get_num(r, rs, "mscale_all_dim", 0, true, &c->yarn_mscale_all_dim));
    double af = 0;
    MT_TRY(get_num(r, rs, "attention_factor", NAN, true, &af));
    if (!isnan(af))
        return mt_error_set(r->err, MT_ERR_UNSUPPORTED,
                            "%s: \"%s\": an explicit YaRN \"attention_factor\" is not supported", r->file, rs_key);
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(rs, "truncate");
    if (tr && !cJSON_IsNull(tr) && !cJSON_IsTrue(tr))
        return mt_error_set(r->err, MT_ERR_UNSUPPORTED, "%s: \"%s\": YaRN \"truncate\": false is not supported",
                            r->file, rs_key);
    return MT_OK;
}

static mt_status read_deepseek(const cfg_reader *r, mt_config *c) {
    bool v3 = c->family == MT_FAMILY_DEEPSEEK_V3;
    MT_TRY(need_int(r, "n_routed_experts", v3 ? "num_local_experts" : "num_experts", &c->n_experts));
    MT_TRY(need_int(r, "num_experts_per_tok", NULL, &c->top_k));
    MT_TRY(need_int(r, "moe_intermediate_size", NULL, &c->moe_intermediate_size));
    MT_TRY(get_int(r, "n_shared_experts", NULL, v3 ? 1 : 2, false, 0, &c->n_shared_experts));
    MT_TRY(get_float(r, "routed_scaling_factor", v3 ? 2.5f : 1.0f, &c->routed_scaling_factor));
    /* n_group/topk_group null: no grouping (one group holding every expert). */
    MT_TRY(get_int(r, "n_group", NULL, v3 ? 8 : 1, true, 1, &c->n_group));
    MT_TRY(get_int(r, "topk_group", NULL, v3 ? 4 : 1, true, 1, &c->topk_group));
    MT_TRY(get_int(r, "first_k_dense_replace", NULL, v3 ? 3 : 0, false, 0, &c->first_k_dense_replace));
    /* moe_layer_freq is read by DeepSeek's remote code only; transformers' built-in
     * classes assume 1. */
    MT_TRY(get_int(r, "moe_layer_freq", NULL, 1, false, 0, &c->moe_layer_freq));
    MT_TRY(get_bool(r, "norm_topk_prob", !v3 ? false : true, true, false, &c->norm_topk_prob));
    double alpha = 0;
    MT_TRY(get_num(r, r->root, "aux_loss_alpha", 0.001, true, &alpha));
    c->router_aux_loss_coef = (float)alpha;
    MT_TRY(get_bool(r, "seq_aux", true, true, false, &c->seq_aux));

    c->mla = true;
    MT_TRY(get_int(r, "q_lora_rank", NULL, 1536, true, 0, &c->q_lora_rank));
    MT_TRY(get_int(r, "kv_lora_rank", NULL, 512, false, 0, &c->kv_lora_rank));
    MT_TRY(get_int(r, "qk_rope_head_dim", NULL, 64, false, 0, &c->qk_rope_head_dim));
    MT_TRY(get_int(r, "qk_nope_head_dim", NULL, 128, false, 0, &c->qk_nope_head_dim));
    MT_TRY(get_int(r, "v_head_dim", NULL, 128, false, 0, &c->v_head_dim));
    /* Both configuration classes overwrite head_dim with the rotary width. */
    c->head_dim = c->qk_rope_head_dim;

    if (v3) {
        MT_TRY(expect_str(r, "topk_method", "noaux_tc", "transformers' DeepseekV3 routes with noaux_tc only"));
        MT_TRY(expect_str(r, "scoring_func", "sigmoid", "transformers' DeepseekV3 scores with a sigmoid only"));
        bool interleave = false;
        MT_TRY(get_bool(r, "rope_interleave", true, true, false, &interleave));
        c->rope_style = interleave ? MT_ROPE_STYLE_INTERLEAVED : MT_ROPE_STYLE_HALF;
        c->route_method = MT_ROUTE_METHOD_NOAUX_TC;
    } else {
        const char *method;
        MT_TRY(get_str(r, r->root, "topk_method", "greedy", &method));
        if (strcmp(method, "greedy") == 0)
            c->route_method = MT_ROUTE_METHOD_GREEDY;
        else if (strcmp(method, "group_limited_greedy") == 0)
            c->route_method = MT_ROUTE_METHOD_GROUP_LIMITED;
        else
            return mt_error_set(r->err, MT_ERR_UNSUPPORTED,
                                "%s: \"topk_method\": \"%s\" is not supported for deepseek_v2 (greedy, "
                                "group_limited_greedy)",
                                r->file, method);
        if (c->route_method == MT_ROUTE_METHOD_GREEDY) c->n_group = c->topk_group = 1;
        MT_TRY(expect_str(r, "scoring_func", "softmax", "DeepSeek-V2 scores with a softmax"));
        MT_TRY(refuse_true(r, "mlp_bias", "DeepSeek MLPs without biases only"));
        /* DeepSeek-V2's rotary embedding multiplies complex pairs: always interleaved. */
        c->rope_style = MT_ROPE_STYLE_INTERLEAVED;
    }
    MT_TRY(refuse_true(r, "attention_bias", "DeepSeek attention without biases only"));
    return MT_OK;
}

static mt_status read_qwen(const cfg_reader *r, mt_config *c, bool *mlp_only) {
    bool q2 = c->family == MT_FAMILY_QWEN2_MOE;
    MT_TRY(need_int(r, "num_experts", "num_local_experts", &c->n_experts));
    MT_TRY(need_int(r, "num_experts_per_tok", NULL, &c->top_k));
    MT_TRY(need_int(r, "moe_intermediate_size", NULL, &c->moe_intermediate_size));
    MT_TRY(get_bool(r, "norm_topk_prob", false, true, false, &c->norm_topk_prob));
    MT_TRY(get_int(r, "decoder_sparse_step", NULL, 1, false, 0, &c->decoder_sparse_step));
    MT_TRY(get_float(r, "router_aux_loss_coef", 0.001f, &c->router_aux_loss_coef));
    const cJSON *mo = cJSON_GetObjectItemCaseSensitive(r->root, "mlp_only_layers");
    if (mo && !cJSON_IsNull(mo)) {
        if (!cJSON_IsArray(mo)) return type_error(r, "mlp_only_layers", "a list of layer indices", mo);
        for (const cJSON *e = mo->child; e; e = e->next) {
            int i;
            MT_TRY(as_int(r, "mlp_only_layers", e, &i));
            if (i >= 0 && i < MT_MAX_LAYERS) mlp_only[i] = true;
        }
    }
    bool sliding = false;
    MT_TRY(get_bool(r, "use_sliding_window", false, true, false, &sliding));
    if (q2) {
        MT_TRY(get_int(r, "shared_expert_intermediate_size", NULL, 5632, false, 0, &c->shared_intermediate_size));
        c->shared_expert_gate = c->shared_intermediate_size > 0;
        MT_TRY(get_bool(r, "qkv_bias", true, false, false, &c->attention_bias));
        /* Qwen2-MoE's sliding window applies to some layers only (layer_types). */
        if (sliding)
            return mt_error_set(r->err, MT_ERR_UNSUPPORTED,
                                "%s: \"use_sliding_window\": true is not supported for qwen2_moe (per-layer windows)",
                                r->file);
        const cJSON *lt = cJSON_GetObjectItemCaseSensitive(r->root, "layer_types");
        if (lt && !cJSON_IsNull(lt)) {
            if (!cJSON_IsArray(lt)) return type_error(r, "layer_types", "a list of strings", lt);
            for (const cJSON *e = lt->child; e; e = e->next)
                if (!cJSON_IsString(e) || strcmp(e->valuestring, "full_attention") != 0)
                    return mt_error_set(r->err, MT_ERR_UNSUPPORTED,
                                        "%s: \"layer_types\": only \"full_attention\" layers are supported", r->file);
        }
    } else {
        c->qk_norm = MT_QK_NORM_HEAD;
        MT_TRY(refuse_true(r, "attention_bias", "Qwen3-MoE attention without biases only"));
        if (sliding) MT_TRY(get_int(r, "sliding_window", NULL, 4096, true, 0, &c->sliding_window));
    }
    return MT_OK;
}

static mt_status read_config(const cfg_reader *r, mt_config *c) {
    const char *mt;
    const cJSON *mtv = cJSON_GetObjectItemCaseSensitive(r->root, "model_type");
    if (!mtv) return mt_error_set(r->err, MT_ERR_INVALID, "%s: required key \"model_type\" is missing", r->file);
    if (!cJSON_IsString(mtv)) return type_error(r, "model_type", "a string", mtv);
    mt = mtv->valuestring;
    if (mt_family_from_name(mt, &c->family, NULL) != MT_OK)
        return mt_error_set(r->err, MT_ERR_UNSUPPORTED, "%s: model_type \"%s\" is not supported (supported: %s)",
                            r->file, mt, SUPPORTED_FAMILIES);
    mt_family f = c->family;

    MT_TRY(need_int(r, "vocab_size", NULL, &c->vocab_size));
    MT_TRY(need_int(r, "hidden_size", NULL, &c->hidden_size));
    MT_TRY(need_int(r, "intermediate_size", NULL, &c->intermediate_size));
    MT_TRY(need_int(r, "num_hidden_layers", NULL, &c->n_layers));
    MT_TRY(need_int(r, "num_attention_heads", NULL, &c->n_heads));
    if (c->n_layers > MT_MAX_LAYERS)
        return mt_error_set(r->err, MT_ERR_UNSUPPORTED, "%s: \"num_hidden_layers\" %d exceeds the supported %d",
                            r->file, c->n_layers, MT_MAX_LAYERS);
    if (c->n_heads <= 0 || c->hidden_size <= 0)
        return mt_error_set(r->err, MT_ERR_INVALID, "%s: \"hidden_size\" and \"num_attention_heads\" must be positive",
                            r->file);

    /* transformers' defaults for keys a config.json may leave out */
    static const int kv_default[MT_FAMILY_COUNT] = {[MT_FAMILY_DEEPSEEK_V3] = 128, [MT_FAMILY_DEEPSEEK_V2] = -1,
                                                    [MT_FAMILY_QWEN3_MOE] = 4,     [MT_FAMILY_QWEN2_MOE] = 16,
                                                    [MT_FAMILY_MIXTRAL] = 8,       [MT_FAMILY_OLMOE] = -1};
    static const int max_pos_default[MT_FAMILY_COUNT] = {
        [MT_FAMILY_DEEPSEEK_V3] = 4096, [MT_FAMILY_DEEPSEEK_V2] = 2048, [MT_FAMILY_QWEN3_MOE] = 32768,
        [MT_FAMILY_QWEN2_MOE] = 32768,  [MT_FAMILY_MIXTRAL] = 131072,   [MT_FAMILY_OLMOE] = 4096};
    int kv_def = kv_default[f] < 0 ? c->n_heads : kv_default[f];
    MT_TRY(get_int(r, "num_key_value_heads", NULL, kv_def, true, c->n_heads, &c->n_kv_heads));
    MT_TRY(get_int(r, "head_dim", NULL, c->hidden_size / c->n_heads, true, c->hidden_size / c->n_heads, &c->head_dim));
    float eps_def = (f == MT_FAMILY_MIXTRAL || f == MT_FAMILY_OLMOE) ? 1e-5f : 1e-6f;
    MT_TRY(get_float(r, "rms_norm_eps", eps_def, &c->rms_norm_eps));
    MT_TRY(get_int(r, "max_position_embeddings", NULL, max_pos_default[f], false, 0, &c->max_position_embeddings));
    MT_TRY(get_bool(r, "tie_word_embeddings", false, false, false, &c->tie_word_embeddings));
    MT_TRY(get_float(r, "initializer_range", 0.02f, &c->initializer_range));
    MT_TRY(expect_str(r, "hidden_act", "silu", "SwiGLU with silu only"));
    MT_TRY(read_token_ids(r, c));

    const char *dtype;
    MT_TRY(get_str(r, r->root, "torch_dtype", "", &dtype));
    MT_TRY(get_str(r, r->root, "dtype", dtype, &dtype));
    if (strlen(dtype) >= sizeof c->torch_dtype)
        return mt_error_set(r->err, MT_ERR_INVALID, "%s: \"dtype\" \"%s\" is not a torch dtype", r->file, dtype);
    strcpy(c->torch_dtype, dtype);

    MT_TRY(read_rope(r, c));

    c->n_group = c->topk_group = 1;
    c->moe_layer_freq = 1;
    c->decoder_sparse_step = 1;
    c->routed_scaling_factor = 1.0f;
    c->rope_style = MT_ROPE_STYLE_HALF;
    bool mlp_only[MT_MAX_LAYERS] = {false};
    switch (f) {
    case MT_FAMILY_DEEPSEEK_V3:
    case MT_FAMILY_DEEPSEEK_V2:
        MT_TRY(read_deepseek(r, c));
        break;
    case MT_FAMILY_QWEN3_MOE:
    case MT_FAMILY_QWEN2_MOE:
        MT_TRY(read_qwen(r, c, mlp_only));
        break;
    case MT_FAMILY_MIXTRAL:
        MT_TRY(need_int(r, "num_local_experts", "num_experts", &c->n_experts));
        MT_TRY(need_int(r, "num_experts_per_tok", NULL, &c->top_k));
        c->moe_intermediate_size = c->intermediate_size; /* Mixtral's experts use intermediate_size */
        MT_TRY(get_float(r, "router_aux_loss_coef", 0.001f, &c->router_aux_loss_coef));
        MT_TRY(get_float(r, "router_jitter_noise", 0.0f, &c->router_jitter_noise));
        MT_TRY(get_int(r, "sliding_window", NULL, 0, true, 0, &c->sliding_window));
        break;
    case MT_FAMILY_OLMOE:
        MT_TRY(need_int(r, "num_experts", "num_local_experts", &c->n_experts));
        MT_TRY(need_int(r, "num_experts_per_tok", NULL, &c->top_k));
        c->moe_intermediate_size = c->intermediate_size; /* as Mixtral */
        MT_TRY(get_bool(r, "norm_topk_prob", false, true, false, &c->norm_topk_prob));
        MT_TRY(get_float(r, "router_aux_loss_coef", 0.01f, &c->router_aux_loss_coef));
        MT_TRY(refuse_true(r, "attention_bias", "OLMoE attention without biases only"));
        c->qk_norm = MT_QK_NORM_PROJ;
        {
            const cJSON *clip = cJSON_GetObjectItemCaseSensitive(r->root, "clip_qkv");
            if (clip && !cJSON_IsNull(clip))
                return mt_error_set(r->err, MT_ERR_UNSUPPORTED, "%s: \"clip_qkv\" is not supported (only null)",
                                    r->file);
        }
        break;
    default:
        break;
    }
    resolve_routing(c);
    resolve_moe_layers(c, mlp_only);
    return MT_OK;
}

/* 1-based line of byte `off` in text, for JSON syntax errors */
static int line_of(const char *text, size_t off) {
    int line = 1;
    for (size_t i = 0; i < off && text[i]; i++)
        if (text[i] == '\n') line++;
    return line;
}

mt_status mt_config_parse(mt_config *cfg, const char *text, size_t len, const char *origin, mt_error *err) {
    const char *end = NULL;
    mt_status s;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        size_t off = end && end >= text && (size_t)(end - text) <= len ? (size_t)(end - text) : 0;
        s = mt_error_set(err, MT_ERR_FORMAT, "%s:%d: not valid JSON", origin, line_of(text, off));
    } else if (!cJSON_IsObject(root)) {
        s = mt_error_set(err, MT_ERR_FORMAT, "%s: must hold a JSON object", origin);
    } else {
        /* Filled in a copy: on any error the caller's config stays as it was. */
        mt_config *c = mt_xcalloc(1, sizeof *c);
        cfg_reader r = {.file = origin, .root = root, .err = err};
        s = read_config(&r, c);
        if (s == MT_OK) s = mt_config_validate(c, origin, err);
        if (s == MT_OK) *cfg = *c;
        free(c);
    }
    cJSON_Delete(root);
    return s;
}

mt_status mt_config_load(mt_config *cfg, const char *path, mt_error *err) {
    char *file = NULL;
    if (mt_is_dir(path)) {
        size_t cap = strlen(path) + 16;
        file = mt_xmalloc(cap);
        mt_path_join(file, cap, path, "config.json");
        path = file;
    }
    char *text = NULL;
    size_t len = 0;
    mt_status s = mt_read_file(path, &text, &len, err);
    if (s == MT_OK) s = mt_config_parse(cfg, text, len, path, err);
    free(text);
    free(file);
    return s;
}

/* =========================================================================================
 * Validation
 * ========================================================================================= */

static double count_params(const mt_config *c, double *inactive_out);

mt_status mt_config_validate(const mt_config *c, const char *origin, mt_error *err) {
    const char *o = origin ? origin : "config";
#define BAD(...) return mt_error_set(err, MT_ERR_INVALID, __VA_ARGS__)
    if ((unsigned)c->family >= MT_FAMILY_COUNT) BAD("%s: unknown model family %d", o, (int)c->family);
    if (c->vocab_size <= 0) BAD("%s: vocab_size %d must be positive", o, c->vocab_size);
    if (c->hidden_size <= 0) BAD("%s: hidden_size %d must be positive", o, c->hidden_size);
    if (c->n_layers <= 0 || c->n_layers > MT_MAX_LAYERS)
        BAD("%s: num_hidden_layers %d must be in 1..%d", o, c->n_layers, MT_MAX_LAYERS);
    if (c->n_heads <= 0) BAD("%s: num_attention_heads %d must be positive", o, c->n_heads);
    if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads != 0)
        BAD("%s: num_key_value_heads %d must divide num_attention_heads %d", o, c->n_kv_heads, c->n_heads);
    if (!(c->rms_norm_eps > 0) || !isfinite(c->rms_norm_eps)) BAD("%s: rms_norm_eps must be positive", o);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta)) BAD("%s: rope_theta must be positive", o);
    if (c->max_position_embeddings <= 0) BAD("%s: max_position_embeddings must be positive", o);
    if (c->sliding_window < 0) BAD("%s: sliding_window must not be negative", o);
    if (!(c->initializer_range >= 0) || !isfinite(c->initializer_range)) BAD("%s: initializer_range must be >= 0", o);
    if (c->n_eos < 0 || c->n_eos > MT_MAX_EOS) BAD("%s: %d eos ids (at most %d)", o, c->n_eos, MT_MAX_EOS);
    if (memchr(c->torch_dtype, '\0', sizeof c->torch_dtype) == NULL) BAD("%s: torch_dtype is not terminated", o);
    /* a torch dtype's name ("bfloat16", "torch.float16"): it is written back unescaped */
    for (const char *p = c->torch_dtype; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '.'))
            BAD("%s: dtype \"%s\" is not a torch dtype name", o, c->torch_dtype);

    bool ds = is_deepseek(c->family);
    if (c->mla != ds) BAD("%s: Multi-head Latent Attention is DeepSeek's, not %s's", o, mt_family_name(c->family));
    if (c->mla) {
        if (c->q_lora_rank < 0 || c->kv_lora_rank <= 0) BAD("%s: q_lora_rank must be >= 0 and kv_lora_rank > 0", o);
        if (c->qk_rope_head_dim <= 0 || c->qk_rope_head_dim % 2) BAD("%s: qk_rope_head_dim must be positive and even", o);
        if (c->qk_nope_head_dim < 0 || c->v_head_dim <= 0) BAD("%s: qk_nope_head_dim >= 0 and v_head_dim > 0 needed", o);
        /* transformers expands the latent to every head and then repeats K/V by
         * heads / kv_heads, which only works when they are equal. */
        if (c->n_kv_heads != c->n_heads) BAD("%s: MLA needs num_key_value_heads == num_attention_heads", o);
        if (c->head_dim != c->qk_rope_head_dim) BAD("%s: for MLA head_dim is the rotary width qk_rope_head_dim", o);
    } else {
        if (c->head_dim <= 0 || c->head_dim % 2) BAD("%s: head_dim %d must be positive and even", o, c->head_dim);
    }
    mt_qk_norm want_norm = c->family == MT_FAMILY_QWEN3_MOE ? MT_QK_NORM_HEAD
                           : c->family == MT_FAMILY_OLMOE   ? MT_QK_NORM_PROJ
                                                            : MT_QK_NORM_NONE;
    if (c->qk_norm != want_norm) BAD("%s: QK-norm kind does not match %s", o, mt_family_name(c->family));
    /* OLMoE's norms are sized hidden_size and (hidden/heads)·kv_heads, i.e. head_dim is
     * hidden / heads whatever config.json says. */
    if (c->family == MT_FAMILY_OLMOE && c->head_dim * c->n_heads != c->hidden_size)
        BAD("%s: OLMoE needs head_dim · num_attention_heads == hidden_size", o);
    if (c->attention_bias && c->family != MT_FAMILY_QWEN2_MOE) BAD("%s: q/k/v biases are Qwen2-MoE's only", o);
    if (c->family == MT_FAMILY_DEEPSEEK_V2 && c->rope_style != MT_ROPE_STYLE_INTERLEAVED)
        BAD("%s: DeepSeek-V2 RoPE is interleaved", o);
    if (!ds && c->rope_style != MT_ROPE_STYLE_HALF) BAD("%s: %s RoPE is rotate-half", o, mt_family_name(c->family));
    if (c->sliding_window && c->family != MT_FAMILY_MIXTRAL && c->family != MT_FAMILY_QWEN3_MOE)
        BAD("%s: sliding_window is supported for mixtral and qwen3_moe only", o);

    switch (c->rope_scaling) {
    case MT_ROPE_SCALING_NONE: break;
    case MT_ROPE_SCALING_LINEAR:
        if (!(c->rope_factor > 0) || !isfinite(c->rope_factor)) BAD("%s: RoPE scaling factor must be positive", o);
        break;
    case MT_ROPE_SCALING_YARN:
        if (!(c->rope_factor >= 1) || !isfinite(c->rope_factor)) BAD("%s: YaRN factor must be >= 1", o);
        if (c->rope_original_max_pos <= 0) BAD("%s: YaRN original_max_position_embeddings must be positive", o);
        if (!(c->yarn_beta_fast > 0) || !(c->yarn_beta_slow > 0) || !isfinite(c->yarn_mscale) ||
            !isfinite(c->yarn_mscale_all_dim))
            BAD("%s: YaRN beta_fast, beta_slow must be positive and mscales finite", o);
        break;
    default: BAD("%s: unknown RoPE scaling kind", o);
    }

    bool any_dense = false, any_moe = false;
    for (int i = 0; i < c->n_layers; i++) {
        if (c->layer_is_moe[i])
            any_moe = true;
        else
            any_dense = true;
    }
    if (any_dense && c->intermediate_size <= 0) BAD("%s: intermediate_size must be positive for dense layers", o);
    if (c->n_experts < 0) BAD("%s: the number of experts must not be negative", o);
    if (c->n_experts == 0 && any_moe) BAD("%s: MoE layers but no experts", o);
    for (int i = c->n_layers; i < MT_MAX_LAYERS; i++)
        if (c->layer_is_moe[i]) BAD("%s: layer %d is marked MoE but the model has %d layers", o, i, c->n_layers);
    if (c->n_experts > 0) {
        if (c->top_k < 1 || c->top_k > c->n_experts)
            BAD("%s: num_experts_per_tok %d must be in 1..%d", o, c->top_k, c->n_experts);
        if (c->moe_intermediate_size <= 0) BAD("%s: moe_intermediate_size must be positive", o);
        if (c->n_group < 1 || c->n_experts % c->n_group != 0)
            BAD("%s: n_group %d must divide the %d experts", o, c->n_group, c->n_experts);
        if (c->topk_group < 1 || c->topk_group > c->n_group)
            BAD("%s: topk_group %d must be in 1..n_group (%d)", o, c->topk_group, c->n_group);
        int per_group = c->n_experts / c->n_group;
        if (c->route_method == MT_ROUTE_METHOD_NOAUX_TC && per_group < 2)
            BAD("%s: noaux_tc scores groups by their top two experts: each group needs at least 2", o);
        if (c->route_method != MT_ROUTE_METHOD_GREEDY && c->top_k > c->topk_group * per_group)
            BAD("%s: top-%d cannot be chosen from %d groups of %d experts", o, c->top_k, c->topk_group, per_group);
        if (!(c->routed_scaling_factor > 0) || !isfinite(c->routed_scaling_factor))
            BAD("%s: routed_scaling_factor must be positive", o);
    }
    if (c->n_shared_experts < 0 || c->shared_intermediate_size < 0) BAD("%s: shared expert sizes must be >= 0", o);
    if (c->n_shared_experts > 0 && !ds) BAD("%s: n_shared_experts is DeepSeek's", o);
    if (c->shared_intermediate_size > 0 && c->family != MT_FAMILY_QWEN2_MOE)
        BAD("%s: shared_expert_intermediate_size is Qwen2-MoE's", o);
    if (c->shared_expert_gate != (c->shared_intermediate_size > 0))
        BAD("%s: Qwen2-MoE's shared expert always has its sigmoid gate (and only it does)", o);
    /* Sizes multiply into element counts and byte sizes held in 64 bits; 2^50 parameters is
     * thousands of times any published model, and keeps every such product exact. */
    double inactive, params = count_params(c, &inactive);
    if (!(params <= 0x1p50)) BAD("%s: the sizes give %.3g parameters (at most 2^50)", o, params);

    /* Routing must be what the family's transformers class computes, or the exported
     * config.json would describe a different model. */
    mt_config want = *c;
    resolve_routing(&want);
    if (c->scoring != want.scoring) BAD("%s: scoring function does not match %s", o, mt_family_name(c->family));
    if (c->family != MT_FAMILY_DEEPSEEK_V2 && c->route_method != want.route_method)
        BAD("%s: routing method does not match %s", o, mt_family_name(c->family));
    if (c->family == MT_FAMILY_DEEPSEEK_V2 && c->route_method == MT_ROUTE_METHOD_NOAUX_TC)
        BAD("%s: noaux_tc routing is DeepSeek-V3's", o);
    if (c->route_norm != want.route_norm) BAD("%s: route_norm does not follow norm_topk_prob for %s", o, mt_family_name(c->family));
    if (c->family == MT_FAMILY_DEEPSEEK_V2 && c->route_norm == MT_ROUTE_NORM_SUM_EPS && c->routed_scaling_factor != 1.0f)
        BAD("%s: DeepSeek-V2 does not scale renormalised weights (routed_scaling_factor must be 1)", o);

    if (is_deepseek(c->family) && (c->first_k_dense_replace < 0 || c->moe_layer_freq < 1))
        BAD("%s: first_k_dense_replace must be >= 0 and moe_layer_freq >= 1", o);
    if (is_qwen(c->family)) {
        if (c->decoder_sparse_step < 1) BAD("%s: decoder_sparse_step must be >= 1", o);
        /* mlp_only_layers can turn layers dense, never MoE */
        for (int i = 0; i < c->n_layers; i++)
            if (c->layer_is_moe[i] && (i + 1) % c->decoder_sparse_step != 0)
                BAD("%s: layer %d is MoE but decoder_sparse_step %d makes it dense", o, i, c->decoder_sparse_step);
    }
    if (!is_qwen(c->family)) {
        /* Only Qwen's mlp_only_layers can mark arbitrary layers dense. */
        mt_config pattern = *c;
        resolve_moe_layers(&pattern, NULL);
        for (int i = 0; i < c->n_layers; i++)
            if (pattern.layer_is_moe[i] != c->layer_is_moe[i])
                BAD("%s: layer %d is %s, which %s's layer pattern cannot express", o, i,
                    c->layer_is_moe[i] ? "MoE" : "dense", mt_family_name(c->family));
    }
#undef BAD
    return MT_OK;
}

/* =========================================================================================
 * Writing config.json
 * ========================================================================================= */

/* An object under construction: keys with their values already rendered as JSON text.
 * Rendering sorts the keys and indents by two spaces, as transformers' to_json_string. */
typedef struct jobj {
    struct {
        char *key, *val;
    } *item;
    size_t n, cap;
} jobj;

static void jo_put(jobj *o, const char *key, char *val /* taken */) {
    if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 64;
        o->item = mt_xrealloc(o->item, o->cap * sizeof *o->item);
    }
    o->item[o->n].key = mt_xstrdup(key);
    o->item[o->n].val = val;
    o->n++;
}

static void jo_raw(jobj *o, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void jo_raw(jobj *o, const char *key, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *v = NULL;
    if (vasprintf(&v, fmt, ap) < 0) v = NULL;
    va_end(ap);
    MT_ASSERT(v != NULL);
    jo_put(o, key, v);
}

static void jo_int(jobj *o, const char *key, long long v) { jo_raw(o, key, "%lld", v); }
static void jo_bool(jobj *o, const char *key, bool v) { jo_raw(o, key, "%s", v ? "true" : "false"); }
static void jo_null(jobj *o, const char *key) { jo_raw(o, key, "null"); }

/* Python's float repr: the shortest digits that read back to the same value, and a ".0" on
 * integral values, so that float-typed keys stay floats for transformers' strict checks. */
static void fmt_real(char *buf, size_t cap, double x, bool single) {
    if (x == floor(x) && fabs(x) < 1e16) {
        snprintf(buf, cap, "%.1f", x);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, x);
        if (single ? strtof(buf, NULL) == (float)x : strtod(buf, NULL) == x) return;
    }
}

static void jo_double(jobj *o, const char *key, double v) {
    char b[64];
    fmt_real(b, sizeof b, v, false);
    jo_raw(o, key, "%s", b);
}

static void jo_float(jobj *o, const char *key, float v) {
    char b[64];
    fmt_real(b, sizeof b, v, true);
    jo_raw(o, key, "%s", b);
}

static void jo_str(jobj *o, const char *key, const char *v) {
    /* Values written here are model_type, architecture and dtype names: plain ASCII. */
    for (const char *p = v; *p; p++) MT_ASSERT(*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\');
    jo_raw(o, key, "\"%s\"", v);
}

static int item_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b); /* item begins with its key */
}

/* Renders and frees the object; `level` is its nesting depth. */
static char *jo_render(jobj *o, int level) {
    qsort(o->item, o->n, sizeof *o->item, item_cmp);
    size_t cap = 16;
    for (size_t i = 0; i < o->n; i++) cap += strlen(o->item[i].key) + strlen(o->item[i].val) + 2 * (size_t)level + 16;
    char *out = mt_xmalloc(cap);
    size_t k = (size_t)snprintf(out, cap, "{");
    for (size_t i = 0; i < o->n; i++) {
        k += (size_t)snprintf(out + k, cap - k, "%s\n%*s\"%s\": %s", i ? "," : "", 2 * (level + 1), "",
                              o->item[i].key, o->item[i].val);
        free(o->item[i].key);
        free(o->item[i].val);
    }
    if (o->n)
        snprintf(out + k, cap - k, "\n%*s}", 2 * level, "");
    else
        snprintf(out + k, cap - k, "}");
    free(o->item);
    memset(o, 0, sizeof *o);
    return out;
}

static void put_rope(jobj *o, const mt_config *c) {
    jobj rp = {0};
    jo_double(&rp, "rope_theta", c->rope_theta);
    switch (c->rope_scaling) {
    case MT_ROPE_SCALING_NONE: jo_str(&rp, "rope_type", "default"); break;
    case MT_ROPE_SCALING_LINEAR:
        jo_str(&rp, "rope_type", "linear");
        jo_double(&rp, "factor", c->rope_factor);
        break;
    case MT_ROPE_SCALING_YARN:
        jo_str(&rp, "rope_type", "yarn");
        jo_double(&rp, "factor", c->rope_factor);
        jo_int(&rp, "original_max_position_embeddings", c->rope_original_max_pos);
        jo_double(&rp, "beta_fast", c->yarn_beta_fast);
        jo_double(&rp, "beta_slow", c->yarn_beta_slow);
        /* 0 means "not given" (see read_rope): leave those out rather than write 0. */
        if (c->yarn_mscale != 0) jo_double(&rp, "mscale", c->yarn_mscale);
        if (c->yarn_mscale_all_dim != 0) jo_double(&rp, "mscale_all_dim", c->yarn_mscale_all_dim);
        break;
    }
    jo_put(o, "rope_parameters", jo_render(&rp, 1));
}

mt_status mt_config_to_json(const mt_config *c, char **json, mt_error *err) {
    *json = NULL;
    mt_status s = mt_config_validate(c, "mt_config_to_json", err);
    if (s != MT_OK) return s;
    mt_family f = c->family;
    jobj o = {0};
    jo_raw(&o, "architectures", "[\"%s\"]", family_info[f].architecture);
    jo_str(&o, "model_type", family_info[f].model_type);
    jo_int(&o, "vocab_size", c->vocab_size);
    jo_int(&o, "hidden_size", c->hidden_size);
    jo_int(&o, "intermediate_size", c->intermediate_size);
    jo_int(&o, "num_hidden_layers", c->n_layers);
    jo_int(&o, "num_attention_heads", c->n_heads);
    jo_int(&o, "num_key_value_heads", c->n_kv_heads);
    jo_int(&o, "max_position_embeddings", c->max_position_embeddings);
    jo_float(&o, "rms_norm_eps", c->rms_norm_eps);
    jo_float(&o, "initializer_range", c->initializer_range);
    jo_bool(&o, "tie_word_embeddings", c->tie_word_embeddings);
    jo_str(&o, "hidden_act", "silu");
    jo_bool(&o, "use_cache", true);
    jo_double(&o, "attention_dropout", 0.0);
    if (c->bos_token_id >= 0)
        jo_int(&o, "bos_token_id", c->bos_token_id);
    else
        jo_null(&o, "bos_token_id");
    if (c->n_eos == 0) {
        jo_null(&o, "eos_token_id");
    } else if (c->n_eos == 1) {
        jo_int(&o, "eos_token_id", c->eos_token_ids[0]);
    } else {
        char list[MT_MAX_EOS * 16 + 4];
        size_t k = (size_t)snprintf(list, sizeof list, "[");
        for (int i = 0; i < c->n_eos; i++)
            k += (size_t)snprintf(list + k, sizeof list - k, "%s%d", i ? ", " : "", c->eos_token_ids[i]);
        snprintf(list + k, sizeof list - k, "]");
        jo_raw(&o, "eos_token_id", "%s", list);
    }
    if (c->torch_dtype[0]) jo_str(&o, "dtype", c->torch_dtype);
    put_rope(&o, c);

    switch (f) {
    case MT_FAMILY_DEEPSEEK_V3:
    case MT_FAMILY_DEEPSEEK_V2: {
        bool v3 = f == MT_FAMILY_DEEPSEEK_V3;
        jo_int(&o, "n_routed_experts", c->n_experts);
        jo_int(&o, "n_shared_experts", c->n_shared_experts);
        jo_int(&o, "num_experts_per_tok", c->top_k);
        jo_int(&o, "moe_intermediate_size", c->moe_intermediate_size);
        jo_float(&o, "routed_scaling_factor", c->routed_scaling_factor);
        jo_bool(&o, "norm_topk_prob", c->norm_topk_prob);
        jo_int(&o, "n_group", c->n_group);
        jo_int(&o, "topk_group", c->topk_group);
        jo_int(&o, "first_k_dense_replace", c->first_k_dense_replace);
        jo_int(&o, "moe_layer_freq", c->moe_layer_freq);
        jo_str(&o, "topk_method",
               v3 ? "noaux_tc" : c->route_method == MT_ROUTE_METHOD_GREEDY ? "greedy" : "group_limited_greedy");
        jo_str(&o, "scoring_func", v3 ? "sigmoid" : "softmax");
        jo_float(&o, "aux_loss_alpha", c->router_aux_loss_coef);
        jo_bool(&o, "seq_aux", c->seq_aux);
        if (c->q_lora_rank > 0)
            jo_int(&o, "q_lora_rank", c->q_lora_rank);
        else
            jo_null(&o, "q_lora_rank");
        jo_int(&o, "kv_lora_rank", c->kv_lora_rank);
        jo_int(&o, "qk_nope_head_dim", c->qk_nope_head_dim);
        jo_int(&o, "qk_rope_head_dim", c->qk_rope_head_dim);
        jo_int(&o, "v_head_dim", c->v_head_dim);
        jo_bool(&o, "attention_bias", false);
        if (v3)
            jo_bool(&o, "rope_interleave", c->rope_style == MT_ROPE_STYLE_INTERLEAVED);
        else
            jo_bool(&o, "mlp_bias", false);
        break;
    }
    case MT_FAMILY_QWEN3_MOE:
    case MT_FAMILY_QWEN2_MOE: {
        jo_int(&o, "head_dim", c->head_dim);
        jo_int(&o, "num_experts", c->n_experts);
        jo_int(&o, "num_experts_per_tok", c->top_k);
        jo_int(&o, "moe_intermediate_size", c->moe_intermediate_size);
        jo_bool(&o, "norm_topk_prob", c->norm_topk_prob);
        jo_int(&o, "decoder_sparse_step", c->decoder_sparse_step);
        jo_float(&o, "router_aux_loss_coef", c->router_aux_loss_coef);
        /* the layers the step would make MoE but that are dense */
        char *list = mt_xmalloc((size_t)c->n_layers * 6 + 4);
        size_t k = 0;
        list[k++] = '[';
        for (int i = 0; i < c->n_layers; i++)
            if (!c->layer_is_moe[i] && (i + 1) % c->decoder_sparse_step == 0)
                k += (size_t)sprintf(list + k, "%s%d", k > 1 ? ", " : "", i);
        list[k++] = ']';
        list[k] = '\0';
        jo_put(&o, "mlp_only_layers", list);
        jo_bool(&o, "use_sliding_window", c->sliding_window > 0);
        if (c->sliding_window > 0)
            jo_int(&o, "sliding_window", c->sliding_window);
        else
            jo_null(&o, "sliding_window");
        if (f == MT_FAMILY_QWEN2_MOE) {
            jo_int(&o, "shared_expert_intermediate_size", c->shared_intermediate_size);
            jo_bool(&o, "qkv_bias", c->attention_bias);
        } else {
            jo_bool(&o, "attention_bias", false);
        }
        break;
    }
    case MT_FAMILY_MIXTRAL:
        jo_int(&o, "head_dim", c->head_dim);
        jo_int(&o, "num_local_experts", c->n_experts);
        jo_int(&o, "num_experts_per_tok", c->top_k);
        jo_float(&o, "router_aux_loss_coef", c->router_aux_loss_coef);
        jo_float(&o, "router_jitter_noise", c->router_jitter_noise);
        if (c->sliding_window > 0)
            jo_int(&o, "sliding_window", c->sliding_window);
        else
            jo_null(&o, "sliding_window");
        break;
    case MT_FAMILY_OLMOE:
        jo_int(&o, "num_experts", c->n_experts);
        jo_int(&o, "num_experts_per_tok", c->top_k);
        jo_bool(&o, "norm_topk_prob", c->norm_topk_prob);
        jo_float(&o, "router_aux_loss_coef", c->router_aux_loss_coef);
        jo_bool(&o, "attention_bias", false);
        jo_null(&o, "clip_qkv");
        break;
    default: break;
    }
    char *body = jo_render(&o, 0);
    size_t n = strlen(body);
    *json = mt_xrealloc(body, n + 2);
    (*json)[n] = '\n';
    (*json)[n + 1] = '\0';
    return MT_OK;
}

/* =========================================================================================
 * Presets for `moetune init`
 * ========================================================================================= */

/* Fields every preset shares; the family-specific ones follow in mt_config_preset. */
static void preset_common(mt_config *c, mt_family f, bool small, int vocab) {
    memset(c, 0, sizeof *c);
    c->family = f;
    c->vocab_size = vocab;
    c->hidden_size = small ? 512 : 128;
    c->n_layers = small ? 8 : 4;
    c->n_heads = small ? 8 : 4;
    c->n_kv_heads = c->n_heads;
    c->head_dim = c->hidden_size / c->n_heads;
    c->intermediate_size = small ? 1024 : 384;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 10000.0;
    c->max_position_embeddings = small ? 4096 : 2048;
    c->initializer_range = 0.02f;
    c->rope_factor = 1.0;
    c->rope_original_max_pos = c->max_position_embeddings;
    c->yarn_beta_fast = 32;
    c->yarn_beta_slow = 1;
    c->n_experts = small ? 16 : 8;
    c->top_k = small ? 4 : 2;
    c->moe_intermediate_size = small ? 192 : 128;
    c->n_group = c->topk_group = 1;
    c->routed_scaling_factor = 1.0f;
    c->moe_layer_freq = 1;
    c->decoder_sparse_step = 1;
    c->router_aux_loss_coef = 0.001f;
    c->bos_token_id = -1;
    strcpy(c->torch_dtype, "float32");
}

/* The published configurations, so that speed and memory can be measured at the real shapes
 * (no real weights can be downloaded where moetune is benchmarked). Every value is the
 * checkpoint's config.json; keys a family reads with a default equal to the published value
 * are set anyway, so the preset does not depend on those defaults. */

/* allenai/OLMoE-1B-7B-0924, config.json (huggingface.co/allenai/OLMoE-1B-7B-0924): OlmoeForCausalLM,
 * hidden_size 2048, intermediate_size 1024 (the expert width: OLMoE has no dense MLP),
 * num_hidden_layers 16, num_attention_heads 16, num_key_value_heads 16, num_experts 64,
 * num_experts_per_tok 8, norm_topk_prob false, rms_norm_eps 1e-05, rope_theta 10000.0,
 * rope_scaling null, max_position_embeddings 4096, vocab_size 50304, tie_word_embeddings false,
 * attention_bias false, clip_qkv null, router_aux_loss_coef 0.01, initializer_range 0.02,
 * eos_token_id 50279, pad_token_id 1, torch_dtype bfloat16. QK-norm over the whole q and k
 * projections is OLMoE's modeling code (OlmoeAttention.q_norm/k_norm), not a config key. */
static void preset_olmoe_1b_7b(mt_config *c) {
    c->family = MT_FAMILY_OLMOE;
    c->vocab_size = 50304;
    c->hidden_size = 2048;
    c->n_layers = 16;
    c->n_heads = c->n_kv_heads = 16;
    c->head_dim = 128;
    c->intermediate_size = c->moe_intermediate_size = 1024;
    c->n_experts = 64;
    c->top_k = 8;
    c->norm_topk_prob = false;
    c->rms_norm_eps = 1e-5f;
    c->rope_theta = 10000.0;
    c->max_position_embeddings = c->rope_original_max_pos = 4096;
    c->router_aux_loss_coef = 0.01f;
    c->qk_norm = MT_QK_NORM_PROJ;
}

/* deepseek-ai/DeepSeek-V2-Lite, config.json (huggingface.co/deepseek-ai/DeepSeek-V2-Lite):
 * DeepseekV2ForCausalLM, hidden_size 2048, intermediate_size 10944, num_hidden_layers 27,
 * num_attention_heads 16, num_key_value_heads 16, first_k_dense_replace 1, moe_layer_freq 1,
 * n_routed_experts 64, num_experts_per_tok 6, n_shared_experts 2, moe_intermediate_size 1408,
 * topk_method greedy, n_group 1, topk_group 1, scoring_func softmax, norm_topk_prob false,
 * routed_scaling_factor 1.0, aux_loss_alpha 0.001, seq_aux true, q_lora_rank null,
 * kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128,
 * rms_norm_eps 1e-06, rope_theta 10000, max_position_embeddings 163840, rope_scaling
 * {type yarn, factor 40, original_max_position_embeddings 4096, beta_fast 32, beta_slow 1,
 * mscale 0.707, mscale_all_dim 0.707}, vocab_size 102400, tie_word_embeddings false,
 * attention_bias false, initializer_range 0.02, bos_token_id 100000, eos_token_id 100001,
 * torch_dtype bfloat16. */
static void preset_deepseek_v2_lite(mt_config *c) {
    c->family = MT_FAMILY_DEEPSEEK_V2;
    c->vocab_size = 102400;
    c->hidden_size = 2048;
    c->intermediate_size = 10944;
    c->n_layers = 27;
    c->n_heads = c->n_kv_heads = 16;
    c->first_k_dense_replace = 1;
    c->moe_layer_freq = 1;
    c->n_experts = 64;
    c->top_k = 6;
    c->n_shared_experts = 2;
    c->moe_intermediate_size = 1408;
    c->route_method = MT_ROUTE_METHOD_GREEDY;
    c->n_group = c->topk_group = 1;
    c->norm_topk_prob = false;
    c->routed_scaling_factor = 1.0f;
    c->router_aux_loss_coef = 0.001f;
    c->seq_aux = true;
    c->mla = true;
    c->q_lora_rank = 0;
    c->kv_lora_rank = 512;
    c->qk_nope_head_dim = 128;
    c->qk_rope_head_dim = 64;
    c->v_head_dim = 128;
    c->head_dim = c->qk_rope_head_dim; /* as the loader sets it for MLA */
    c->rope_style = MT_ROPE_STYLE_INTERLEAVED;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 10000.0;
    c->max_position_embeddings = 163840;
    c->rope_scaling = MT_ROPE_SCALING_YARN;
    c->rope_factor = 40;
    c->rope_original_max_pos = 4096;
    c->yarn_beta_fast = 32;
    c->yarn_beta_slow = 1;
    c->yarn_mscale = 0.707;
    c->yarn_mscale_all_dim = 0.707;
}

static const struct {
    const char *name;
    mt_family family;
    void (*fill)(mt_config *c);
} published_presets[] = {
    {"olmoe-1b-7b", MT_FAMILY_OLMOE, preset_olmoe_1b_7b},
    {"deepseek-v2-lite", MT_FAMILY_DEEPSEEK_V2, preset_deepseek_v2_lite},
};

bool mt_config_preset_family(const char *preset, mt_family *family) {
    for (size_t i = 0; i < sizeof published_presets / sizeof published_presets[0]; i++)
        if (strcmp(preset, published_presets[i].name) == 0) {
            if (family) *family = published_presets[i].family;
            return true;
        }
    return false;
}

static mt_status config_published(mt_config *cfg, mt_family family, const char *preset, int vocab_size,
                                  mt_error *err) {
    size_t i = 0;
    while (strcmp(preset, published_presets[i].name) != 0) i++;
    if (family != published_presets[i].family)
        return mt_error_set(err, MT_ERR_INVALID, "preset \"%s\" has the family %s, not %s", preset,
                            mt_family_name(published_presets[i].family),
                            (unsigned)family < MT_FAMILY_COUNT ? mt_family_name(family) : "an unknown family");
    mt_config c;
    preset_common(&c, family, false, 1);
    c.initializer_range = 0.02f;
    c.router_jitter_noise = 0;
    published_presets[i].fill(&c);
    /* a tokenizer smaller than the table leaves padding rows, as OLMoE's own does (50280
     * tokens in 50304 rows); a larger one has ids the model cannot embed */
    if (vocab_size <= 0 || vocab_size > c.vocab_size)
        return mt_error_set(err, MT_ERR_INVALID, "preset \"%s\": the tokenizer's %d tokens must fit its vocab_size %d",
                            preset, vocab_size, c.vocab_size);
    strcpy(c.torch_dtype, "bfloat16");
    resolve_routing(&c);
    resolve_moe_layers(&c, NULL);
    mt_status s = mt_config_validate(&c, preset, err);
    if (s == MT_OK) *cfg = c;
    return s;
}

mt_status mt_config_preset(mt_config *cfg, mt_family family, const char *preset, int vocab_size, mt_error *err) {
    bool small;
    if (mt_config_preset_family(preset, NULL)) return config_published(cfg, family, preset, vocab_size, err);
    if (strcmp(preset, "tiny") == 0)
        small = false;
    else if (strcmp(preset, "small") == 0)
        small = true;
    else
        return mt_error_set(err, MT_ERR_INVALID, "unknown preset \"%s\" (tiny, small, olmoe-1b-7b, deepseek-v2-lite)",
                            preset);
    if ((unsigned)family >= MT_FAMILY_COUNT) return mt_error_set(err, MT_ERR_INVALID, "unknown family %d", (int)family);
    if (vocab_size <= 0) return mt_error_set(err, MT_ERR_INVALID, "vocab_size %d must be positive", vocab_size);
    mt_config c;
    preset_common(&c, family, small, vocab_size);
    switch (family) {
    case MT_FAMILY_DEEPSEEK_V3:
    case MT_FAMILY_DEEPSEEK_V2:
        /* MLA: a 64/128-wide latent, 16 rotary dims shared by all heads */
        c.mla = true;
        c.q_lora_rank = family == MT_FAMILY_DEEPSEEK_V3 ? (small ? 128 : 64) : 0;
        c.kv_lora_rank = small ? 128 : 64;
        c.qk_nope_head_dim = small ? 48 : 32;
        c.qk_rope_head_dim = 16;
        c.v_head_dim = small ? 48 : 32;
        c.head_dim = c.qk_rope_head_dim;
        c.first_k_dense_replace = 1;
        c.n_group = 4;
        c.topk_group = 2;
        c.router_aux_loss_coef = 0.001f; /* aux_loss_alpha */
        c.rope_style = MT_ROPE_STYLE_INTERLEAVED;
        c.seq_aux = true;
        if (family == MT_FAMILY_DEEPSEEK_V3) {
            c.n_shared_experts = 1;
            c.norm_topk_prob = true;
            c.route_method = MT_ROUTE_METHOD_NOAUX_TC;
        } else {
            c.n_shared_experts = 2;
            c.norm_topk_prob = false;
            c.route_method = MT_ROUTE_METHOD_GROUP_LIMITED;
        }
        break;
    case MT_FAMILY_QWEN3_MOE:
        /* explicit head_dim wider than hidden / heads, GQA, per-head QK-norm */
        c.n_kv_heads = c.n_heads / 2;
        c.head_dim = small ? 80 : 64;
        c.rope_theta = 1e6;
        c.norm_topk_prob = true;
        c.qk_norm = MT_QK_NORM_HEAD;
        break;
    case MT_FAMILY_QWEN2_MOE:
        /* q/k/v biases, a gated shared expert beside narrower routed experts */
        c.rope_theta = 1e6;
        c.moe_intermediate_size = small ? 96 : 64;
        c.shared_intermediate_size = small ? 384 : 256;
        c.shared_expert_gate = true;
        c.attention_bias = true;
        break;
    case MT_FAMILY_MIXTRAL:
        /* 8 experts, top-2, experts as wide as a dense MLP would be */
        c.n_kv_heads = c.n_heads / 2;
        c.n_experts = 8;
        c.top_k = 2;
        c.intermediate_size = c.moe_intermediate_size = small ? 448 : 256;
        c.rms_norm_eps = 1e-5f;
        c.rope_theta = 1e6;
        c.router_aux_loss_coef = 0.02f;
        break;
    case MT_FAMILY_OLMOE:
        /* many narrow experts, no renormalisation, QK-norm over whole projections */
        c.n_experts = small ? 32 : 16;
        c.top_k = small ? 6 : 4;
        c.intermediate_size = c.moe_intermediate_size = small ? 96 : 64;
        c.rms_norm_eps = 1e-5f;
        c.router_aux_loss_coef = 0.01f;
        c.qk_norm = MT_QK_NORM_PROJ;
        break;
    default: break;
    }
    resolve_routing(&c);
    resolve_moe_layers(&c, NULL);
    mt_status s = mt_config_validate(&c, "preset", err);
    if (s == MT_OK) *cfg = c;
    return s;
}

/* =========================================================================================
 * Sizes and costs
 * ========================================================================================= */

/* Counts are computed in doubles: exact while below 2^53, which mt_config_validate demands of
 * the total (every term here is a part of it), and free of overflow for any config at all. */

/* Weights of one attention block that take part in matmuls (no norms, no biases). */
static double attn_matmul_params(const mt_config *c) {
    double H = c->hidden_size, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    if (!c->mla) return H * nh * hd * 2 + H * nkv * hd * 2;
    double qk = (double)c->qk_nope_head_dim + c->qk_rope_head_dim, ql = c->q_lora_rank, kvl = c->kv_lora_rank;
    double q = ql > 0 ? H * ql + ql * nh * qk : H * nh * qk;
    double kv = H * (kvl + c->qk_rope_head_dim) + kvl * nh * ((double)c->qk_nope_head_dim + c->v_head_dim);
    return q + kv + nh * c->v_head_dim * H;
}

/* The rest of an attention block: biases and norm weights. */
static double attn_other_params(const mt_config *c) {
    double nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    double n = 0;
    if (c->mla) return (c->q_lora_rank > 0 ? c->q_lora_rank : 0) + (double)c->kv_lora_rank; /* q_a/kv_a layernorms */
    if (c->attention_bias) n += nh * hd + 2 * nkv * hd;
    if (c->qk_norm == MT_QK_NORM_HEAD) n += 2 * hd;
    if (c->qk_norm == MT_QK_NORM_PROJ) n += nh * hd + nkv * hd;
    return n;
}

static double expert_params(const mt_config *c) { return 3.0 * c->hidden_size * (double)c->moe_intermediate_size; }

/* Matmul weights of the always-active part of an MoE block: router and shared expert(s). */
static double moe_fixed_matmul_params(const mt_config *c) {
    double H = c->hidden_size;
    double n = (double)c->n_experts * H;
    n += 3 * H * (double)c->moe_intermediate_size * c->n_shared_experts;
    if (c->shared_intermediate_size > 0) n += 3 * H * c->shared_intermediate_size;
    if (c->shared_expert_gate) n += H;
    return n;
}

static double count_params(const mt_config *c, double *inactive_out) {
    double H = c->hidden_size, V = c->vocab_size;
    double total = V * H + (c->tie_word_embeddings ? 0 : V * H) + H; /* embeddings, lm_head, final norm */
    double inactive = 0;
    int layers = c->n_layers < MT_MAX_LAYERS ? c->n_layers : MT_MAX_LAYERS;
    for (int i = 0; i < layers; i++) {
        total += 2 * H + attn_matmul_params(c) + attn_other_params(c);
        if (c->layer_is_moe[i]) {
            total += moe_fixed_matmul_params(c) + (double)c->n_experts * expert_params(c);
            /* DeepSeek-V3's e_score_correction_bias: a buffer, but stored with the weights */
            if (c->route_method == MT_ROUTE_METHOD_NOAUX_TC) total += c->n_experts;
            inactive += ((double)c->n_experts - c->top_k) * expert_params(c);
        } else {
            total += 3 * H * (double)c->intermediate_size;
        }
    }
    *inactive_out = inactive;
    return total;
}

static int64_t count_to_int(double x) { return x < 0x1p63 ? (int64_t)x : INT64_MAX; }

int64_t mt_config_param_count(const mt_config *c, int64_t *active) {
    double inactive, total = count_params(c, &inactive);
    if (active) *active = count_to_int(total - inactive);
    return count_to_int(total);
}

double mt_config_flops_per_token(const mt_config *c, int T) {
    int64_t H = c->hidden_size, V = c->vocab_size;
    /* Keys a query sees, averaged over positions: T/2 for causal attention; a sliding
     * window W < T caps it, giving W − W²/(2T). */
    double keys = T / 2.0;
    if (c->sliding_window > 0 && c->sliding_window < T)
        keys = c->sliding_window - (double)c->sliding_window * c->sliding_window / (2.0 * T);
    double macs = (double)V * H; /* lm_head; the embedding is a lookup */
    double attn = keys * c->n_heads * (double)(mt_config_qk_head_dim(c) + mt_config_v_head_dim(c));
    for (int i = 0; i < c->n_layers; i++) {
        macs += attn_matmul_params(c) + attn;
        if (c->layer_is_moe[i])
            macs += moe_fixed_matmul_params(c) + (double)c->top_k * expert_params(c);
        else
            macs += 3.0 * (double)H * c->intermediate_size;
    }
    return 2.0 * macs;
}
