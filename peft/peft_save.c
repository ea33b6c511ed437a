/* peft_save.c — writes an adapter as Hugging Face PEFT writes one: adapter_config.json
 * (json.dumps(indent=2, sort_keys=True) byte for byte) and adapter_model.safetensors (F32,
 * keys without the adapter name), plus moetune.json, moetune's own metadata, which PEFT never
 * reads. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lora-impl.h"

/* ---- Python's json.dumps(obj, indent=2, sort_keys=True) ---- */

typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = mt_xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_indent(sbuf *b, int n) {
    for (int i = 0; i < n; i++) sb_put(b, " ", 1);
}

/* One code point from UTF-8, or U+FFFD for a bad byte (Python would not have such strings). */
static uint32_t utf8_next(const unsigned char **p) {
    const unsigned char *s = *p;
    uint32_t c = s[0];
    int extra = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
    if (extra < 0) {
        *p = s + 1;
        return 0xFFFD;
    }
    c &= extra ? (0x3Fu >> extra) : 0x7Fu;
    for (int i = 1; i <= extra; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *p = s + 1;
            return 0xFFFD;
        }
        c = (c << 6) | (s[i] & 0x3F);
    }
    *p = s + 1 + extra;
    return c;
}

/* ensure_ascii=True: everything outside printable ASCII as \uXXXX (surrogate pairs above
 * U+FFFF), and the short escapes json uses. */
static void sb_json_str(sbuf *b, const char *str) {
    sb_put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)str;
    while (*p) {
        uint32_t c = utf8_next(&p);
        char tmp[16];
        switch (c) {
        case '"': sb_str(b, "\\\""); continue;
        case '\\': sb_str(b, "\\\\"); continue;
        case '\n': sb_str(b, "\\n"); continue;
        case '\r': sb_str(b, "\\r"); continue;
        case '\t': sb_str(b, "\\t"); continue;
        case '\b': sb_str(b, "\\b"); continue;
        case '\f': sb_str(b, "\\f"); continue;
        default: break;
        }
        if (c >= 0x20 && c < 0x7F) {
            tmp[0] = (char)c;
            sb_put(b, tmp, 1);
        } else if (c < 0x10000) {
            snprintf(tmp, sizeof tmp, "\\u%04x", (unsigned)c);
            sb_str(b, tmp);
        } else {
            c -= 0x10000;
            snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800u + (unsigned)(c >> 10), 0xDC00u + (unsigned)(c & 0x3FF));
            sb_str(b, tmp);
        }
    }
    sb_put(b, "\"", 1);
}

static int cmp_item(const void *a, const void *b) {
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string);
}

/* Numbers are cJSON raw items holding their Python spelling already. */
static void emit(sbuf *b, const cJSON *it, int ind) {
    if (cJSON_IsObject(it) || cJSON_IsArray(it)) {
        bool obj = cJSON_IsObject(it);
        int n = cJSON_GetArraySize(it);
        if (n == 0) {
            sb_str(b, obj ? "{}" : "[]");
            return;
        }
        const cJSON **kids = mt_xmalloc((size_t)n * sizeof *kids);
        int k = 0;
        for (const cJSON *c = it->child; c; c = c->next) kids[k++] = c;
        if (obj) qsort(kids, (size_t)n, sizeof *kids, cmp_item);
        sb_str(b, obj ? "{\n" : "[\n");
        for (int i = 0; i < n; i++) {
            sb_indent(b, ind + 2);
            if (obj) {
                sb_json_str(b, kids[i]->string);
                sb_str(b, ": ");
            }
            emit(b, kids[i], ind + 2);
            sb_str(b, i + 1 < n ? ",\n" : "\n");
        }
        sb_indent(b, ind);
        sb_str(b, obj ? "}" : "]");
        free(kids);
    } else if (cJSON_IsString(it)) {
        sb_json_str(b, it->valuestring);
    } else if (cJSON_IsRaw(it)) {
        sb_str(b, it->valuestring);
    } else if (cJSON_IsBool(it)) {
        sb_str(b, cJSON_IsTrue(it) ? "true" : "false");
    } else if (cJSON_IsNumber(it)) {
        char tmp[32];
        snprintf(tmp, sizeof tmp, "%.17g", it->valuedouble);
        sb_str(b, tmp);
    } else {
        sb_str(b, "null");
    }
}

/* repr() of a Python float holding v: the shortest digits that read back as v (as a float32
 * when `single`, since moetune keeps alpha and dropout as floats and PEFT's users write
 * 0.05, not 0.05000000074505806), laid out as Python does (fixed for 1e-4 ≤ |v| < 1e16). */
static void py_float(double v, bool single, char *out, size_t cap) {
    if (!isfinite(v)) {
        snprintf(out, cap, "%s", isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    char sci[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(sci, sizeof sci, "%.*e", p - 1, v);
        double back = strtod(sci, NULL);
        if (single ? (float)back == (float)v : back == v) break;
    }
    /* sci = [-]d[.ddd]e±XX → digits and decimal exponent */
    char digits[24];
    int nd = 0, exp10;
    const char *s = sci;
    bool neg = *s == '-';
    if (neg) s++;
    for (; *s && *s != 'e'; s++)
        if (*s != '.') digits[nd++] = *s;
    exp10 = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    char body[64];
    if (v == 0) {
        snprintf(body, sizeof body, "0.0");
    } else if (exp10 >= 16 || exp10 < -4) {
        snprintf(body, sizeof body, "%c%s%se%c%02d", digits[0], nd > 1 ? "." : "", nd > 1 ? digits + 1 : "",
                 exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 < 0) {
        snprintf(body, sizeof body, "0.%.*s%s", -exp10 - 1, "0000", digits);
    } else if (nd <= exp10 + 1) {
        snprintf(body, sizeof body, "%s%.*s.0", digits, exp10 + 1 - nd, "0000000000000000");
    } else {
        snprintf(body, sizeof body, "%.*s.%s", exp10 + 1, digits, digits + exp10 + 1);
    }
    snprintf(out, cap, "%s%s", neg ? "-" : "", body);
}

static cJSON *raw_float(double v, bool single) {
    char tmp[64];
    py_float(v, single, tmp, sizeof tmp);
    return cJSON_CreateRaw(tmp);
}

static cJSON *raw_int(long long v) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%lld", v);
    return cJSON_CreateRaw(tmp);
}

/* lora_alpha is an int in PEFT's configs unless someone chose a fraction */
static cJSON *raw_alpha(float a) {
    if (a == floorf(a) && fabsf(a) < 1e9f) return raw_int((long long)a);
    return raw_float(a, true);
}

/* ---- adapter_config.json ---- */

/* re.escape for a module path: only '.' and the occasional '-' need it in PEFT's names. */
static char *regex_escape(const char *s) {
    char *o = mt_xmalloc(2 * strlen(s) + 1), *w = o;
    for (; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_'))
            *w++ = '\\';
        *w++ = *s;
    }
    *w = '\0';
    return o;
}

/* rank_pattern or alpha_pattern: the patterns as given when, read back by PEFT's
 * get_pattern_key, they give every module its rank (alpha); otherwise (an adapter loaded
 * from a folder whose patterns PEFT itself rewrote, e.g. fused experts) one exact entry per
 * module that differs from the default. */
static mt_status pattern_object(const mt_lora *l, bool rank, cJSON **out, mt_error *err) {
    int n = rank ? l->n_rank : l->n_alpha;
    char **keys = rank ? l->rank_keys : l->alpha_keys;
    mt_lora_patterns *p = NULL;
    const char *what = rank ? "lora: rank_pattern" : "lora: alpha_pattern";
    mt_status st = mt_lora_patterns_keys(&p, (const char *const *)keys, n, what, err);
    if (st) return st;
    bool as_given = true;
    for (int i = 0; i < l->n_mods && as_given; i++) {
        const mt_lora_mod *md = &l->mods[i];
        int k = mt_lora_patterns_find(p, md->lin->module);
        if (rank)
            as_given = (k >= 0 ? l->rank_values[k] : l->r) == md->r;
        else
            as_given = (k >= 0 ? l->alpha_values[k] : l->alpha) == md->alpha;
    }
    mt_lora_patterns_free(p);
    cJSON *o = cJSON_CreateObject();
    if (as_given) {
        for (int i = 0; i < n; i++)
            cJSON_AddItemToObject(o, keys[i], rank ? raw_int(l->rank_values[i]) : raw_alpha(l->alpha_values[i]));
    } else {
        for (int i = 0; i < l->n_mods; i++) {
            const mt_lora_mod *md = &l->mods[i];
            if (rank ? md->r == l->r : md->alpha == l->alpha) continue;
            char *key = regex_escape(md->lin->module);
            cJSON_AddItemToObject(o, key, rank ? raw_int(md->r) : raw_alpha(md->alpha));
            free(key);
        }
    }
    *out = o;
    return MT_OK;
}

static mt_status config_json(const mt_lora *l, const mt_lora_meta *meta, char **out, mt_error *err) {
    cJSON *c = cJSON_CreateObject(), *rp = NULL, *ap = NULL;
    mt_status st = pattern_object(l, true, &rp, err);
    if (!st) st = pattern_object(l, false, &ap, err);
    if (st) {
        cJSON_Delete(rp);
        cJSON_Delete(c);
        return st;
    }
    /* the keys PEFT has written for years (vLLM and older PEFT read these); PEFT fills the
     * newer ones with their defaults */
    cJSON_AddItemToObject(c, "alpha_pattern", ap);
    cJSON_AddNullToObject(c, "auto_mapping");
    if (meta && meta->base_model[0])
        cJSON_AddStringToObject(c, "base_model_name_or_path", meta->base_model);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddStringToObject(c, "bias", "none");
    cJSON_AddFalseToObject(c, "fan_in_fan_out");
    cJSON_AddTrueToObject(c, "inference_mode");
    if (l->init == MT_LORA_INIT_GAUSSIAN)
        cJSON_AddStringToObject(c, "init_lora_weights", "gaussian");
    else
        cJSON_AddTrueToObject(c, "init_lora_weights");
    cJSON_AddNullToObject(c, "layers_pattern");
    cJSON_AddNullToObject(c, "layers_to_transform");
    cJSON_AddItemToObject(c, "lora_alpha", raw_alpha(l->alpha));
    cJSON_AddItemToObject(c, "lora_dropout", raw_float(l->dropout, true));
    if (meta && meta->score) {
        cJSON *mts = cJSON_AddArrayToObject(c, "modules_to_save");
        cJSON_AddItemToArray(mts, cJSON_CreateString("score"));
    } else {
        cJSON_AddNullToObject(c, "modules_to_save");
    }
    cJSON_AddStringToObject(c, "peft_type", "LORA");
    cJSON_AddItemToObject(c, "r", raw_int(l->r));
    cJSON_AddItemToObject(c, "rank_pattern", rp);
    cJSON_AddNullToObject(c, "revision");
    if (l->target_regex) {
        cJSON_AddStringToObject(c, "target_modules", l->target_regex);
    } else {
        int n;
        char **t = mt_lora_minimal_targets(l, &n);
        cJSON *a = cJSON_AddArrayToObject(c, "target_modules");
        for (int i = 0; i < n; i++) {
            cJSON_AddItemToArray(a, cJSON_CreateString(t[i]));
            free(t[i]);
        }
        free(t);
    }
    cJSON_AddStringToObject(c, "task_type", meta && meta->score ? "SEQ_CLS" : "CAUSAL_LM");
    cJSON_AddFalseToObject(c, "use_dora");
    cJSON_AddBoolToObject(c, "use_rslora", l->use_rslora);
    sbuf b = {0};
    emit(&b, c, 0);
    cJSON_Delete(c);
    *out = b.s;
    return MT_OK;
}

/* ---- moetune.json ---- */

static mt_status meta_json(const mt_lora_meta *meta, char **out, mt_error *err) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "base_hash", meta ? meta->base_hash : "");
    cJSON_AddStringToObject(c, "base_model", meta ? meta->base_model : "");
    cJSON_AddStringToObject(c, "moetune_version", MT_VERSION);
    cJSON_AddItemToObject(c, "run_id", raw_int(meta ? (long long)meta->run_id : 0));
    if (meta && meta->thresholds_json && meta->thresholds_json[0]) {
        cJSON *t = cJSON_Parse(meta->thresholds_json);
        if (!cJSON_IsObject(t)) {
            cJSON_Delete(t);
            cJSON_Delete(c);
            return mt_error_set(err, MT_ERR_INVALID, "lora: the thresholds metadata is not a JSON object: %.200s",
                                meta->thresholds_json);
        }
        cJSON_AddItemToObject(c, "thresholds", t);
    } else {
        cJSON_AddNullToObject(c, "thresholds");
    }
    sbuf b = {0};
    emit(&b, c, 0);
    sb_str(&b, "\n");
    cJSON_Delete(c);
    *out = b.s;
    return MT_OK;
}

mt_status mt_lora_save_peft(const mt_lora *l, const char *dir, const mt_lora_meta *meta, mt_error *err) {
    char *cfg = NULL, *mj = NULL;
    mt_status st = config_json(l, meta, &cfg, err);
    if (!st) st = meta_json(meta, &mj, err);
    if (!st) st = mt_mkdirs(dir, err);
    size_t cap = strlen(dir) + 64;
    char *path = mt_xmalloc(cap);
    float *host = NULL;
    if (!st) {
        /* the values as they are now, copied off the backend */
        host = mt_xmalloc((l->n_values ? l->n_values : 1) * sizeof(float));
        mt_backend_download(l->be, host, l->block, l->n_values * sizeof(float));
        mt_st_writer *w = mt_st_writer_init();
        for (int i = 0; i < l->n_tensors; i++) {
            const mt_lora_tensor *t = &l->tensors[i];
            mt_st_writer_add(w, t->name, MT_DTYPE_F32, 2, t->shape, host + (t->data - l->block));
        }
        if (meta && meta->score) {
            int64_t shape[2] = {meta->score_rows, meta->score_cols};
            mt_st_writer_add(w, "base_model.model.score.weight", MT_DTYPE_F32, 2, shape, meta->score);
        }
        /* PEFT writes {"format": "pt"}; the moetune.* entries are ignored by every reader */
        char run[32];
        snprintf(run, sizeof run, "%lld", meta ? (long long)meta->run_id : 0LL);
        mt_st_writer_set_metadata(w, "format", "pt");
        mt_st_writer_set_metadata(w, "moetune.version", MT_VERSION);
        mt_st_writer_set_metadata(w, "moetune.base_hash", meta ? meta->base_hash : "");
        mt_st_writer_set_metadata(w, "moetune.run_id", run);
        if (meta && meta->thresholds_json && meta->thresholds_json[0])
            mt_st_writer_set_metadata(w, "moetune.thresholds", meta->thresholds_json);
        mt_path_join(path, cap, dir, "adapter_model.safetensors");
        st = mt_st_writer_save(w, path, err);
        mt_st_writer_free(w);
    }
    /* adapter_config.json goes last: a folder that has it has the weights that belong to it */
    if (!st) {
        mt_path_join(path, cap, dir, "moetune.json");
        st = mt_write_file_atomic(path, mj, strlen(mj), err);
    }
    if (!st) {
        mt_path_join(path, cap, dir, "adapter_config.json");
        st = mt_write_file_atomic(path, cfg, strlen(cfg), err);
    }
    free(host);
    free(path);
    free(cfg);
    free(mj);
    return st;
}
