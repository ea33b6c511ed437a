/* tokenizer.c — loading a Hugging Face tokenizer.json (BPE model, added tokens, normalizers,
 * pre-tokenizers, post-processor, decoder) and the tokenizer_config.json beside it, plus the
 * public lookups. Every component the file names is either understood exactly as the
 * tokenizers library understands it or refused with the file and JSON path in the message. */
#define _GNU_SOURCE
#include "tokenizer-impl.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Ids beyond this are refused: real vocabularies stop near 2^18, and the id tables are
 * dense arrays, so a hostile file must not make us allocate gigabytes. */
#define TK_MAX_ID (1 << 24)

typedef struct jctx {
    const char *origin;
    mt_error *err;
} jctx;

/* ---- JSON accessors: each failure names the file and the JSON path ---- */

static mt_status jfail(jctx *c, mt_status code, const char *path, const char *what) {
    return mt_error_set(c->err, code, "%s: %s %s", c->origin, path, what);
}

static void jpath(char *dst, size_t cap, const char *parent, const char *key) {
    if (parent[0])
        snprintf(dst, cap, "%s.%s", parent, key);
    else
        snprintf(dst, cap, "%s", key);
}

static void jpath_index(char *dst, size_t cap, const char *parent, const char *key, int i) {
    if (parent[0])
        snprintf(dst, cap, "%s.%s[%d]", parent, key, i);
    else
        snprintf(dst, cap, "%s[%d]", key, i);
}

static bool jabsent(const cJSON *v) { return !v || cJSON_IsNull(v); }

static mt_status jbool(jctx *c, const cJSON *obj, const char *key, const char *path, bool def, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (jabsent(v)) {
        *out = def;
        return MT_OK;
    }
    if (!cJSON_IsBool(v)) {
        char p[512];
        jpath(p, sizeof p, path, key);
        return jfail(c, MT_ERR_FORMAT, p, "must be true or false");
    }
    *out = cJSON_IsTrue(v);
    return MT_OK;
}

/* A string member; *out is NULL when absent or null and `required` is false. */
static mt_status jstr(jctx *c, const cJSON *obj, const char *key, const char *path, bool required, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    char p[512];
    jpath(p, sizeof p, path, key);
    *out = NULL;
    if (jabsent(v)) return required ? jfail(c, MT_ERR_FORMAT, p, "is missing") : MT_OK;
    if (!cJSON_IsString(v)) return jfail(c, MT_ERR_FORMAT, p, "must be a string");
    *out = v->valuestring;
    return MT_OK;
}

static mt_status jint_value(jctx *c, const cJSON *v, const char *p, long lo, long hi, long *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi) {
        char what[128];
        snprintf(what, sizeof what, "must be an integer in [%ld, %ld]", lo, hi);
        return jfail(c, MT_ERR_FORMAT, p, what);
    }
    *out = (long)v->valuedouble;
    return MT_OK;
}

static mt_status jint(jctx *c, const cJSON *obj, const char *key, const char *path, long def, long lo, long hi,
                      long *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (jabsent(v)) {
        *out = def;
        return MT_OK;
    }
    char p[512];
    jpath(p, sizeof p, path, key);
    return jint_value(c, v, p, lo, hi, out);
}

/* An array member; *out is NULL when absent and not required. */
static mt_status jarr(jctx *c, const cJSON *obj, const char *key, const char *path, bool required, const cJSON **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    char p[512];
    jpath(p, sizeof p, path, key);
    *out = NULL;
    if (jabsent(v)) return required ? jfail(c, MT_ERR_FORMAT, p, "is missing") : MT_OK;
    if (!cJSON_IsArray(v)) return jfail(c, MT_ERR_FORMAT, p, "must be an array");
    *out = v;
    return MT_OK;
}

/* The component's "type"; `path` is the component's own path. */
static mt_status jtype(jctx *c, const cJSON *obj, const char *path, const char **type) {
    if (!cJSON_IsObject(obj)) return jfail(c, MT_ERR_FORMAT, path, "must be an object or null");
    return jstr(c, obj, "type", path, true, type);
}

static mt_status unsupported(jctx *c, const char *path, const char *type) {
    return mt_error_set(c->err, MT_ERR_UNSUPPORTED, "%s: %s.type '%s' is not supported", c->origin, path, type);
}

/* {"String": s} or {"Regex": r}: both compile to one regex (a string is quoted). */
static mt_status jpattern(jctx *c, const cJSON *obj, const char *key, const char *path, tk_regex **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    char p[512];
    jpath(p, sizeof p, path, key);
    *out = NULL;
    if (jabsent(v)) return jfail(c, MT_ERR_FORMAT, p, "is missing");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(v, "String");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(v, "Regex");
    if (!cJSON_IsObject(v) || (!s) == (!r))
        return jfail(c, MT_ERR_FORMAT, p, "must be {\"String\": ...} or {\"Regex\": ...}");
    const cJSON *pat = s ? s : r;
    char pp[600];
    snprintf(pp, sizeof pp, "%s.%s", p, s ? "String" : "Regex");
    if (!cJSON_IsString(pat)) return jfail(c, MT_ERR_FORMAT, pp, "must be a string");
    size_t len = strlen(pat->valuestring);
    if (!len) return jfail(c, MT_ERR_FORMAT, pp, "must not be empty");
    return tk_regex_compile(out, pat->valuestring, len, s != NULL, c->origin, pp, c->err);
}

/* A one-character string (Metaspace's replacement, Strip's content). */
static mt_status jchar(jctx *c, const cJSON *obj, const char *key, const char *path, uint32_t def, uint32_t *out) {
    const char *s;
    mt_status st = jstr(c, obj, key, path, false, &s);
    if (st) return st;
    if (!s) {
        *out = def;
        return MT_OK;
    }
    size_t n = strlen(s);
    uint32_t cp;
    if (!n || tk_utf8_decode((const unsigned char *)s, n, &cp) != n) {
        char p[512];
        jpath(p, sizeof p, path, key);
        return jfail(c, MT_ERR_FORMAT, p, "must be exactly one character");
    }
    *out = cp;
    return MT_OK;
}

/* ---- normalizers ---- */

static tk_norm *push_norm(mt_tokenizer *t, tk_norm_type type) {
    t->norms = mt_xrealloc(t->norms, (size_t)(t->n_norms + 1) * sizeof *t->norms);
    tk_norm *n = &t->norms[t->n_norms++];
    memset(n, 0, sizeof *n);
    n->type = type;
    return n;
}

static mt_status parse_normalizer(jctx *c, mt_tokenizer *t, const cJSON *j, const char *path, int depth) {
    if (jabsent(j)) return MT_OK;
    if (depth > 16) return jfail(c, MT_ERR_FORMAT, path, "nests Sequences too deeply");
    const char *type;
    mt_status st = jtype(c, j, path, &type);
    if (st) return st;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr;
        if ((st = jarr(c, j, "normalizers", path, true, &arr))) return st;
        int i = 0;
        for (const cJSON *e = arr->child; e; e = e->next, i++) {
            char p[512];
            jpath_index(p, sizeof p, path, "normalizers", i);
            if (jabsent(e)) return jfail(c, MT_ERR_FORMAT, p, "must be an object");
            if ((st = parse_normalizer(c, t, e, p, depth + 1))) return st;
        }
        return MT_OK;
    }
    static const struct {
        const char *name;
        tk_norm_type type;
    } unicode_forms[] = {{"NFC", TK_NORM_NFC}, {"NFD", TK_NORM_NFD}, {"NFKC", TK_NORM_NFKC}, {"NFKD", TK_NORM_NFKD}};
    for (size_t k = 0; k < sizeof unicode_forms / sizeof unicode_forms[0]; k++)
        if (!strcmp(type, unicode_forms[k].name)) {
            push_norm(t, unicode_forms[k].type);
            return MT_OK;
        }
    if (!strcmp(type, "Prepend")) {
        const char *s;
        if ((st = jstr(c, j, "prepend", path, true, &s))) return st;
        tk_norm *n = push_norm(t, TK_NORM_PREPEND);
        n->str = mt_xstrdup(s);
        n->str_len = strlen(s);
        return MT_OK;
    }
    if (!strcmp(type, "Replace")) {
        const char *content;
        if ((st = jstr(c, j, "content", path, true, &content))) return st;
        tk_regex *re;
        if ((st = jpattern(c, j, "pattern", path, &re))) return st;
        tk_norm *n = push_norm(t, TK_NORM_REPLACE);
        n->re = re;
        n->str = mt_xstrdup(content);
        n->str_len = strlen(content);
        return MT_OK;
    }
    if (!strcmp(type, "Strip")) {
        bool l = false, r = false;
        if ((st = jbool(c, j, "strip_left", path, true, &l)) || (st = jbool(c, j, "strip_right", path, true, &r)))
            return st;
        tk_norm *n = push_norm(t, TK_NORM_STRIP);
        n->left = l;
        n->right = r;
        return MT_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        push_norm(t, TK_NORM_BYTELEVEL);
        return MT_OK;
    }
    return unsupported(c, path, type);
}

/* ---- pre-tokenizers ---- */

/* The GPT-2 pattern the ByteLevel pre-tokenizer uses when use_regex is true. */
static const char gpt2_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* The Whitespace pre-tokenizer's pattern (Rust regex crate, Unicode \w). */
static const char whitespace_pattern[] = "\\w+|[^\\w\\s]+";

static tk_pretok *push_pretok(mt_tokenizer *t, tk_pre_type type) {
    t->pretoks = mt_xrealloc(t->pretoks, (size_t)(t->n_pretoks + 1) * sizeof *t->pretoks);
    tk_pretok *p = &t->pretoks[t->n_pretoks++];
    memset(p, 0, sizeof *p);
    p->type = type;
    return p;
}

static mt_status parse_scheme(jctx *c, const cJSON *j, const char *path, tk_prepend_scheme *out) {
    const char *s;
    mt_status st = jstr(c, j, "prepend_scheme", path, false, &s);
    if (st) return st;
    if (!s) {
        /* files written before prepend_scheme existed say add_prefix_space */
        bool aps = false;
        if ((st = jbool(c, j, "add_prefix_space", path, true, &aps))) return st;
        *out = aps ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
        return MT_OK;
    }
    if (!strcmp(s, "always"))
        *out = TK_PREPEND_ALWAYS;
    else if (!strcmp(s, "first"))
        *out = TK_PREPEND_FIRST;
    else if (!strcmp(s, "never"))
        *out = TK_PREPEND_NEVER;
    else {
        char p[512];
        jpath(p, sizeof p, path, "prepend_scheme");
        return mt_error_set(c->err, MT_ERR_FORMAT, "%s: %s '%s' must be always, first or never", c->origin, p, s);
    }
    return MT_OK;
}

static mt_status parse_pretok(jctx *c, mt_tokenizer *t, const cJSON *j, const char *path, int depth) {
    if (jabsent(j)) return MT_OK;
    if (depth > 16) return jfail(c, MT_ERR_FORMAT, path, "nests Sequences too deeply");
    const char *type;
    mt_status st = jtype(c, j, path, &type);
    if (st) return st;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr;
        if ((st = jarr(c, j, "pretokenizers", path, true, &arr))) return st;
        int i = 0;
        for (const cJSON *e = arr->child; e; e = e->next, i++) {
            char p[512];
            jpath_index(p, sizeof p, path, "pretokenizers", i);
            if (jabsent(e)) return jfail(c, MT_ERR_FORMAT, p, "must be an object");
            if ((st = parse_pretok(c, t, e, p, depth + 1))) return st;
        }
        return MT_OK;
    }
    if (!strcmp(type, "Split")) {
        const char *beh;
        bool invert = false;
        if ((st = jstr(c, j, "behavior", path, true, &beh)) || (st = jbool(c, j, "invert", path, false, &invert)))
            return st;
        static const struct {
            const char *name;
            tk_behavior b;
        } behaviors[] = {{"Removed", TK_SPLIT_REMOVED},
                         {"Isolated", TK_SPLIT_ISOLATED},
                         {"MergedWithPrevious", TK_SPLIT_MERGED_PREV},
                         {"MergedWithNext", TK_SPLIT_MERGED_NEXT},
                         {"Contiguous", TK_SPLIT_CONTIGUOUS}};
        int found = -1;
        for (int k = 0; k < 5; k++)
            if (!strcmp(beh, behaviors[k].name)) found = k;
        if (found < 0) {
            char p[512];
            jpath(p, sizeof p, path, "behavior");
            return mt_error_set(c->err, MT_ERR_FORMAT,
                                "%s: %s '%s' must be Removed, Isolated, MergedWithPrevious, MergedWithNext or "
                                "Contiguous",
                                c->origin, p, beh);
        }
        tk_regex *re;
        if ((st = jpattern(c, j, "pattern", path, &re))) return st;
        tk_pretok *p = push_pretok(t, TK_PRE_SPLIT);
        p->re = re;
        p->behavior = behaviors[found].b;
        p->invert = invert;
        return MT_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        bool aps = false, use_regex = false;
        if ((st = jbool(c, j, "add_prefix_space", path, true, &aps)) ||
            (st = jbool(c, j, "use_regex", path, true, &use_regex)))
            return st;
        tk_regex *re = NULL;
        if (use_regex &&
            (st = tk_regex_compile(&re, gpt2_pattern, strlen(gpt2_pattern), false, c->origin, path, c->err)))
            return st;
        tk_pretok *p = push_pretok(t, TK_PRE_BYTELEVEL);
        p->add_prefix_space = aps;
        p->use_regex = use_regex;
        p->re = re;
        return MT_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        uint32_t rep = 0;
        tk_prepend_scheme scheme;
        bool split = false;
        if ((st = jchar(c, j, "replacement", path, 0x2581, &rep)) || (st = parse_scheme(c, j, path, &scheme)) ||
            (st = jbool(c, j, "split", path, true, &split)))
            return st;
        tk_pretok *p = push_pretok(t, TK_PRE_METASPACE);
        p->replacement = rep;
        p->scheme = scheme;
        p->split = split;
        return MT_OK;
    }
    if (!strcmp(type, "Digits")) {
        bool ind = false;
        if ((st = jbool(c, j, "individual_digits", path, false, &ind))) return st;
        push_pretok(t, TK_PRE_DIGITS)->individual = ind;
        return MT_OK;
    }
    if (!strcmp(type, "Whitespace")) {
        tk_regex *re;
        if ((st =
                 tk_regex_compile(&re, whitespace_pattern, strlen(whitespace_pattern), false, c->origin, path, c->err)))
            return st;
        push_pretok(t, TK_PRE_WHITESPACE)->re = re;
        return MT_OK;
    }
    if (!strcmp(type, "WhitespaceSplit")) {
        push_pretok(t, TK_PRE_WHITESPACE_SPLIT);
        return MT_OK;
    }
    return unsupported(c, path, type);
}

/* ---- decoders ---- */

static tk_decoder *push_dec(mt_tokenizer *t, tk_dec_type type) {
    t->decs = mt_xrealloc(t->decs, (size_t)(t->n_decs + 1) * sizeof *t->decs);
    tk_decoder *d = &t->decs[t->n_decs++];
    memset(d, 0, sizeof *d);
    d->type = type;
    return d;
}

static mt_status parse_decoder(jctx *c, mt_tokenizer *t, const cJSON *j, const char *path, int depth) {
    if (jabsent(j)) return MT_OK;
    if (depth > 16) return jfail(c, MT_ERR_FORMAT, path, "nests Sequences too deeply");
    const char *type;
    mt_status st = jtype(c, j, path, &type);
    if (st) return st;
    t->has_decoder = true;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr;
        if ((st = jarr(c, j, "decoders", path, true, &arr))) return st;
        int i = 0;
        for (const cJSON *e = arr->child; e; e = e->next, i++) {
            char p[512];
            jpath_index(p, sizeof p, path, "decoders", i);
            if (jabsent(e)) return jfail(c, MT_ERR_FORMAT, p, "must be an object");
            if ((st = parse_decoder(c, t, e, p, depth + 1))) return st;
        }
        return MT_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        push_dec(t, TK_DEC_BYTELEVEL);
        return MT_OK;
    }
    if (!strcmp(type, "ByteFallback")) {
        push_dec(t, TK_DEC_BYTEFALLBACK);
        return MT_OK;
    }
    if (!strcmp(type, "Fuse")) {
        push_dec(t, TK_DEC_FUSE);
        return MT_OK;
    }
    if (!strcmp(type, "Replace")) {
        const char *content;
        if ((st = jstr(c, j, "content", path, true, &content))) return st;
        tk_regex *re;
        if ((st = jpattern(c, j, "pattern", path, &re))) return st;
        tk_decoder *d = push_dec(t, TK_DEC_REPLACE);
        d->re = re;
        d->str = mt_xstrdup(content);
        d->str_len = strlen(content);
        return MT_OK;
    }
    if (!strcmp(type, "Strip")) {
        uint32_t ch = 0;
        long start, stop;
        if ((st = jchar(c, j, "content", path, ' ', &ch)) || (st = jint(c, j, "start", path, 0, 0, 1 << 20, &start)) ||
            (st = jint(c, j, "stop", path, 0, 0, 1 << 20, &stop)))
            return st;
        tk_decoder *d = push_dec(t, TK_DEC_STRIP);
        d->ch = ch;
        d->start = (int)start;
        d->stop = (int)stop;
        return MT_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        uint32_t rep = 0;
        tk_prepend_scheme scheme;
        if ((st = jchar(c, j, "replacement", path, 0x2581, &rep)) || (st = parse_scheme(c, j, path, &scheme)))
            return st;
        tk_decoder *d = push_dec(t, TK_DEC_METASPACE);
        d->ch = rep;
        d->scheme = scheme;
        return MT_OK;
    }
    if (!strcmp(type, "BPEDecoder")) {
        const char *suffix;
        if ((st = jstr(c, j, "suffix", path, false, &suffix))) return st;
        tk_decoder *d = push_dec(t, TK_DEC_BPE);
        d->str = mt_xstrdup(suffix ? suffix : "</w>");
        d->str_len = strlen(d->str);
        return MT_OK;
    }
    return unsupported(c, path, type);
}

/* ---- post-processor: only what it puts around a single sequence matters ---- */

static void wrap_ids(mt_tokenizer *t, const int32_t *pre, int npre, const int32_t *suf, int nsuf) {
    int32_t *np = mt_xmalloc((size_t)(npre + t->n_prefix + 1) * sizeof *np);
    memcpy(np, pre, (size_t)npre * sizeof *np);
    if (t->n_prefix) memcpy(np + npre, t->prefix_ids, (size_t)t->n_prefix * sizeof *np);
    int32_t *ns = mt_xmalloc((size_t)(t->n_suffix + nsuf + 1) * sizeof *ns);
    if (t->n_suffix) memcpy(ns, t->suffix_ids, (size_t)t->n_suffix * sizeof *ns);
    memcpy(ns + t->n_suffix, suf, (size_t)nsuf * sizeof *ns);
    free(t->prefix_ids);
    free(t->suffix_ids);
    t->prefix_ids = np;
    t->suffix_ids = ns;
    t->n_prefix += npre;
    t->n_suffix += nsuf;
}

/* ["<s>", 1] as RobertaProcessing/BertProcessing write cls and sep. */
static mt_status token_pair(jctx *c, const cJSON *j, const char *key, const char *path, int32_t *id) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    char p[512];
    jpath(p, sizeof p, path, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 || !cJSON_IsString(cJSON_GetArrayItem(v, 0)))
        return jfail(c, MT_ERR_FORMAT, p, "must be [token, id]");
    long l = 0;
    mt_status st = jint_value(c, cJSON_GetArrayItem(v, 1), p, 0, TK_MAX_ID - 1, &l);
    *id = (int32_t)l;
    return st;
}

static mt_status parse_template(jctx *c, mt_tokenizer *t, const cJSON *j, const char *path) {
    const cJSON *single, *specials = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
    mt_status st = jarr(c, j, "single", path, true, &single);
    if (st) return st;
    if (!jabsent(specials) && !cJSON_IsObject(specials)) {
        char p[512];
        jpath(p, sizeof p, path, "special_tokens");
        return jfail(c, MT_ERR_FORMAT, p, "must be an object");
    }
    int32_t pre[64], suf[64];
    int npre = 0, nsuf = 0;
    bool seen_seq = false;
    int i = 0;
    for (const cJSON *e = single->child; e; e = e->next, i++) {
        char p[512];
        jpath_index(p, sizeof p, path, "single", i);
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
        if (!cJSON_IsObject(e) || (!sp) == (!sq))
            return jfail(c, MT_ERR_FORMAT, p, "must be {\"SpecialToken\": ...} or {\"Sequence\": ...}");
        if (sq) {
            if (seen_seq) return jfail(c, MT_ERR_UNSUPPORTED, p, "repeats the sequence, which is not supported");
            seen_seq = true;
            continue;
        }
        const char *name;
        char pp[600];
        snprintf(pp, sizeof pp, "%s.SpecialToken", p);
        if ((st = jstr(c, sp, "id", pp, true, &name))) return st;
        const cJSON *def = specials ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
        const cJSON *ids = def ? cJSON_GetObjectItemCaseSensitive(def, "ids") : NULL;
        if (!cJSON_IsArray(ids))
            return mt_error_set(c->err, MT_ERR_FORMAT, "%s: %s names '%s', which special_tokens does not define",
                                c->origin, pp, name);
        int k = 0;
        for (const cJSON *x = ids->child; x; x = x->next, k++) {
            long id = 0;
            char px[700];
            snprintf(px, sizeof px, "%s.special_tokens.%s.ids[%d]", path, name, k);
            if ((st = jint_value(c, x, px, 0, TK_MAX_ID - 1, &id))) return st;
            int32_t *dst = seen_seq ? suf : pre;
            int *cnt = seen_seq ? &nsuf : &npre;
            if (*cnt >= 64) return jfail(c, MT_ERR_UNSUPPORTED, p, "adds more than 64 special tokens");
            dst[(*cnt)++] = (int32_t)id;
        }
    }
    if (!seen_seq) return jfail(c, MT_ERR_FORMAT, path, "single template has no $A sequence");
    wrap_ids(t, pre, npre, suf, nsuf);
    return MT_OK;
}

static mt_status parse_post(jctx *c, mt_tokenizer *t, const cJSON *j, const char *path, int depth) {
    if (jabsent(j)) return MT_OK;
    if (depth > 16) return jfail(c, MT_ERR_FORMAT, path, "nests Sequences too deeply");
    const char *type;
    mt_status st = jtype(c, j, path, &type);
    if (st) return st;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr;
        if ((st = jarr(c, j, "processors", path, true, &arr))) return st;
        int i = 0;
        for (const cJSON *e = arr->child; e; e = e->next, i++) {
            char p[512];
            jpath_index(p, sizeof p, path, "processors", i);
            if (jabsent(e)) return jfail(c, MT_ERR_FORMAT, p, "must be an object");
            if ((st = parse_post(c, t, e, p, depth + 1))) return st;
        }
        return MT_OK;
    }
    if (!strcmp(type, "ByteLevel")) return MT_OK; /* only adjusts offsets */
    if (!strcmp(type, "TemplateProcessing")) return parse_template(c, t, j, path);
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        int32_t cls, sep;
        if ((st = token_pair(c, j, "cls", path, &cls)) || (st = token_pair(c, j, "sep", path, &sep))) return st;
        wrap_ids(t, &cls, 1, &sep, 1);
        return MT_OK;
    }
    return unsupported(c, path, type);
}

/* ---- the BPE model ---- */

static mt_status add_merge(jctx *c, mt_tokenizer *t, const char *a, size_t na, const char *b, size_t nb, uint32_t rank,
                           const char *p) {
    int32_t ia = tk_strmap_get(&t->vocab, a, na), ib = tk_strmap_get(&t->vocab, b, nb);
    if (ia < 0 || ib < 0)
        return mt_error_set(c->err, MT_ERR_FORMAT, "%s: %s: merge part '%.*s' is not in model.vocab", c->origin, p,
                            ia < 0 ? (int)na : (int)nb, ia < 0 ? a : b);
    /* As the library does: the right part loses continuing_subword_prefix's length. */
    size_t cut = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    if (cut > nb) cut = nb;
    tk_buf joined = {0};
    tk_buf_put(&joined, a, na);
    tk_buf_put(&joined, b + cut, nb - cut);
    int32_t inew = tk_strmap_get(&t->vocab, joined.p, joined.len);
    if (inew < 0) {
        mt_status st = mt_error_set(c->err, MT_ERR_FORMAT, "%s: %s: merge result '%s' is not in model.vocab", c->origin,
                                    p, joined.p);
        tk_buf_free(&joined);
        return st;
    }
    tk_buf_free(&joined);
    /* a repeated pair keeps its last rank, as the library's HashMap collect does */
    tk_u64map_put(&t->merges, (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib, (uint64_t)rank << 32 | (uint32_t)inew);
    return MT_OK;
}

static mt_status parse_model(jctx *c, mt_tokenizer *t, const cJSON *m) {
    const char *path = "model";
    if (!cJSON_IsObject(m))
        return jfail(c, MT_ERR_FORMAT, path, cJSON_IsNull(m) || !m ? "is missing" : "must be an object");
    const char *type;
    mt_status st = jstr(c, m, "type", path, false, &type);
    if (st) return st;
    if (!type && !cJSON_GetObjectItemCaseSensitive(m, "merges"))
        return jfail(c, MT_ERR_FORMAT, "model.type", "is missing");
    if (type && strcmp(type, "BPE")) return unsupported(c, path, type);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (!jabsent(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return jfail(c, MT_ERR_UNSUPPORTED, "model.dropout",
                     "is set: BPE dropout makes encoding random and is not supported");
    const char *unk, *prefix, *suffix;
    if ((st = jstr(c, m, "unk_token", path, false, &unk)) ||
        (st = jstr(c, m, "continuing_subword_prefix", path, false, &prefix)) ||
        (st = jstr(c, m, "end_of_word_suffix", path, false, &suffix)) ||
        (st = jbool(c, m, "fuse_unk", path, false, &t->fuse_unk)) ||
        (st = jbool(c, m, "byte_fallback", path, false, &t->byte_fallback)) ||
        (st = jbool(c, m, "ignore_merges", path, false, &t->ignore_merges)))
        return st;
    if (unk) t->unk_token = mt_xstrdup(unk);
    if (prefix && prefix[0]) t->cont_prefix = mt_xstrdup(prefix);
    if (suffix && suffix[0]) t->eow_suffix = mt_xstrdup(suffix);

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    if (!cJSON_IsObject(vocab))
        return jfail(c, MT_ERR_FORMAT, "model.vocab", jabsent(vocab) ? "is missing" : "must be an object");
    for (const cJSON *e = vocab->child; e; e = e->next) {
        long id = 0;
        char p[600];
        snprintf(p, sizeof p, "model.vocab['%.400s']", e->string);
        if ((st = jint_value(c, e, p, 0, TK_MAX_ID - 1, &id))) return st;
        tk_strmap_put(&t->vocab, e->string, strlen(e->string), (int32_t)id);
    }

    const cJSON *merges;
    if ((st = jarr(c, m, "merges", path, false, &merges))) return st;
    uint32_t rank = 0;
    int i = 0;
    for (const cJSON *e = merges ? merges->child : NULL; e; e = e->next, i++) {
        char p[512];
        snprintf(p, sizeof p, "model.merges[%d]", i);
        if (cJSON_IsString(e)) {
            const char *s = e->valuestring;
            if (!strncmp(s, "#version", 8)) continue;
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return mt_error_set(c->err, MT_ERR_FORMAT, "%s: %s '%s' must be two tokens separated by one space",
                                    c->origin, p, s);
            if ((st = add_merge(c, t, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), rank++, p))) return st;
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            const char *a = e->child->valuestring, *b = e->child->next->valuestring;
            if ((st = add_merge(c, t, a, strlen(a), b, strlen(b), rank++, p))) return st;
        } else
            return jfail(c, MT_ERR_FORMAT, p, "must be \"a b\" or [\"a\", \"b\"]");
    }
    return MT_OK;
}

/* ---- added tokens and the id tables ---- */

static mt_status parse_added(jctx *c, mt_tokenizer *t, const cJSON *root) {
    const cJSON *arr;
    mt_status st = jarr(c, root, "added_tokens", "", false, &arr);
    if (st || !arr) return st;
    int n = cJSON_GetArraySize(arr), i = 0;
    t->added = mt_xcalloc((size_t)n + 1, sizeof *t->added);
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        char p[512];
        jpath_index(p, sizeof p, "", "added_tokens", i);
        if (!cJSON_IsObject(e)) return jfail(c, MT_ERR_FORMAT, p, "must be an object");
        const char *content;
        long id = 0;
        tk_added a = {0};
        if ((st = jstr(c, e, "content", p, true, &content)) || (st = jint(c, e, "id", p, -1, 0, TK_MAX_ID - 1, &id)) ||
            (st = jbool(c, e, "special", p, false, &a.special)) || (st = jbool(c, e, "lstrip", p, false, &a.lstrip)) ||
            (st = jbool(c, e, "rstrip", p, false, &a.rstrip)) ||
            (st = jbool(c, e, "normalized", p, true, &a.normalized)) ||
            (st = jbool(c, e, "single_word", p, false, &a.single_word)))
            return st;
        if (id < 0) {
            char pp[600];
            jpath(pp, sizeof pp, p, "id");
            return jfail(c, MT_ERR_FORMAT, pp, "is missing");
        }
        if (!content[0]) continue; /* the library ignores empty added tokens */
        /* A token the model already knows keeps the model's id, as the library assigns it. */
        int32_t model_id = tk_strmap_get(&t->vocab, content, strlen(content));
        a.id = model_id >= 0 ? model_id : (int32_t)id;
        bool dup = false;
        for (int k = 0; k < t->n_added; k++)
            if (!strcmp(t->added[k].content, content)) dup = true;
        if (dup) continue;
        a.content = mt_xstrdup(content);
        a.len = strlen(content);
        t->added[t->n_added++] = a;
    }
    return MT_OK;
}

static void trie_init(tk_trie *tr) {
    tr->cap_nodes = 16;
    tr->term = mt_xmalloc(tr->cap_nodes * sizeof *tr->term);
    tr->term[0] = -1;
    tr->n_nodes = 1;
}

static void trie_add(tk_trie *tr, const char *s, size_t n, int32_t value) {
    uint64_t node = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = node << 8 | (unsigned char)s[i], child;
        if (!tk_u64map_get(&tr->edges, key, &child)) {
            if (tr->n_nodes == tr->cap_nodes) {
                tr->cap_nodes *= 2;
                tr->term = mt_xrealloc(tr->term, tr->cap_nodes * sizeof *tr->term);
            }
            child = tr->n_nodes++;
            tr->term[child] = -1;
            tk_u64map_put(&tr->edges, key, child);
        }
        node = child;
    }
    if (tr->term[node] < 0) tr->term[node] = value;
}

static void trie_free(tk_trie *tr) {
    tk_u64map_free(&tr->edges);
    free(tr->term);
    memset(tr, 0, sizeof *tr);
}

static mt_status build_tables(jctx *c, mt_tokenizer *t) {
    int max_id = -1;
    for (size_t i = 0; i < t->vocab.cap; i++)
        if (t->vocab.slots[i].used && t->vocab.slots[i].val > max_id) max_id = t->vocab.slots[i].val;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id > max_id) max_id = t->added[i].id;
    t->vocab_size = max_id + 1;
    size_t n = (size_t)t->vocab_size + 1;
    t->id_tok = mt_xcalloc(n, sizeof *t->id_tok);
    t->id_len = mt_xcalloc(n, sizeof *t->id_len);
    t->id_added = mt_xmalloc(n * sizeof *t->id_added);
    for (size_t i = 0; i < n; i++) t->id_added[i] = -1;
    for (size_t i = 0; i < t->vocab.cap; i++) {
        if (!t->vocab.slots[i].used) continue;
        int32_t id = t->vocab.slots[i].val;
        const char *key = tk_strmap_key(&t->vocab, i);
        if (t->id_tok[id])
            return mt_error_set(c->err, MT_ERR_FORMAT, "%s: model.vocab gives id %d to both '%s' and '%s'", c->origin,
                                id, t->id_tok[id], key);
        t->id_tok[id] = (char *)key; /* the vocab's pool no longer grows, so this stays valid */
        t->id_len[id] = t->vocab.slots[i].len;
    }
    for (int i = 0; i < t->n_added; i++) {
        int32_t id = t->added[i].id;
        if (t->added[i].special) tk_strmap_put(&t->special_set, t->added[i].content, t->added[i].len, id);
        if (t->id_added[id] >= 0) continue;
        t->id_added[id] = i;
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = tk_strmap_get(&t->vocab, name, 6);
    }
    trie_init(&t->trie_raw);
    trie_init(&t->trie_norm);
    tk_match *m = tk_match_new();
    mt_status st = MT_OK;
    for (int pass = 0; pass < 2 && !st; pass++) /* special tokens first, as the library orders them */
        for (int i = 0; i < t->n_added; i++) {
            const tk_added *a = &t->added[i];
            if (a->special != (pass == 0)) continue;
            if (!a->normalized) {
                trie_add(&t->trie_raw, a->content, a->len, i);
                continue;
            }
            /* normalized tokens are matched in normalized text, and the library also gives
             * their normalized form back as the token's text (id_to_token, decode) */
            tk_buf nb = {0};
            st = tk_normalize(t, m, a->content, a->len, &nb, c->err);
            if (!st && nb.len) trie_add(&t->trie_norm, nb.p, nb.len, i);
            if (!st) {
                t->added[i].text = nb.p ? nb.p : mt_xstrdup("");
                t->added[i].text_len = nb.len;
            } else
                tk_buf_free(&nb);
            if (st) break;
        }
    tk_match_free(m);
    for (int i = 0; i < t->n_added && !st; i++) {
        tk_added *a = &t->added[i];
        if (!a->text) {
            a->text = a->content;
            a->text_len = a->len;
        }
        if (t->id_added[a->id] == i) {
            t->id_tok[a->id] = a->text;
            t->id_len[a->id] = (uint32_t)a->text_len;
        }
    }
    return st;
}

void mt_tokenizer_free(mt_tokenizer *t) {
    if (!t) return;
    free(t->origin);
    tk_strmap_free(&t->vocab);
    tk_u64map_free(&t->merges);
    free(t->id_tok);
    free(t->id_len);
    free(t->id_added);
    free(t->unk_token);
    free(t->cont_prefix);
    free(t->eow_suffix);
    for (int i = 0; i < t->n_added; i++) {
        if (t->added[i].text != t->added[i].content) free(t->added[i].text);
        free(t->added[i].content);
    }
    tk_strmap_free(&t->special_set);
    free(t->added);
    trie_free(&t->trie_raw);
    trie_free(&t->trie_norm);
    for (int i = 0; i < t->n_norms; i++) {
        free(t->norms[i].str);
        tk_regex_free(t->norms[i].re);
    }
    free(t->norms);
    for (int i = 0; i < t->n_pretoks; i++) tk_regex_free(t->pretoks[i].re);
    free(t->pretoks);
    for (int i = 0; i < t->n_decs; i++) {
        free(t->decs[i].str);
        tk_regex_free(t->decs[i].re);
    }
    free(t->decs);
    free(t->prefix_ids);
    free(t->suffix_ids);
    free(t->chat_template);
    for (int i = 0; i < t->n_chat_tokens; i++) {
        free(t->chat_token_keys[i]);
        free(t->chat_token_vals[i]);
    }
    free(t->chat_token_keys);
    free(t->chat_token_vals);
    free(t);
}

static mt_status check_ids(jctx *c, const mt_tokenizer *t, const int32_t *ids, int n, const char *what) {
    for (int i = 0; i < n; i++)
        if (ids[i] >= t->vocab_size || !t->id_tok[ids[i]])
            return mt_error_set(c->err, MT_ERR_FORMAT,
                                "%s: post_processor adds id %d %s, which is not in the vocabulary", c->origin, ids[i],
                                what);
    return MT_OK;
}

mt_status mt_tokenizer_load_json(mt_tokenizer **out, const char *json, size_t len, const char *origin, mt_error *err) {
    *out = NULL;
    jctx c = {origin, err};
    /* The library reads the file as a Rust string: invalid UTF-8 is refused up front, which
     * also lets every later stage hand strings to PCRE2 without re-checking them. */
    size_t bad;
    if (!mt_utf8_valid(json, len, &bad))
        return mt_error_set(err, MT_ERR_FORMAT, "%s: not valid UTF-8 (byte %zu)", origin, bad);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return mt_error_set(err, MT_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", origin, at);
    }
    mt_tokenizer *t = mt_xcalloc(1, sizeof *t);
    t->origin = mt_xstrdup(origin);
    t->bos_id = t->eos_id = -1;
    mt_status st = MT_OK;
    if (!cJSON_IsObject(root)) st = mt_error_set(err, MT_ERR_FORMAT, "%s: the top level must be a JSON object", origin);
    if (!st) st = parse_model(&c, t, cJSON_GetObjectItemCaseSensitive(root, "model"));
    if (!st) st = parse_added(&c, t, root);
    if (!st) st = parse_normalizer(&c, t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "normalizer", 0);
    if (!st) st = parse_pretok(&c, t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), "pre_tokenizer", 0);
    if (!st) st = parse_post(&c, t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), "post_processor", 0);
    if (!st) st = parse_decoder(&c, t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), "decoder", 0);
    if (!st) st = build_tables(&c, t);
    if (!st) st = check_ids(&c, t, t->prefix_ids, t->n_prefix, "before the text");
    if (!st) st = check_ids(&c, t, t->suffix_ids, t->n_suffix, "after the text");
    cJSON_Delete(root);
    if (st) {
        mt_tokenizer_free(t);
        return st;
    }
    /* Without tokenizer_config.json the template's first special token is the BOS. */
    if (t->n_prefix) t->bos_id = t->prefix_ids[0];
    *out = t;
    return MT_OK;
}

/* ---- tokenizer_config.json ---- */

/* bos_token / eos_token: a string, {"content": ...}, or null. */
static mt_status config_token(jctx *c, const mt_tokenizer *t, const cJSON *root, const char *key, int32_t *id,
                              bool *present) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    *present = false;
    if (jabsent(v)) return MT_OK;
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v)) return jfail(c, MT_ERR_FORMAT, key, "must be a string or {\"content\": string}");
    int32_t found = mt_tokenizer_token_to_id(t, v->valuestring);
    if (found < 0)
        return mt_error_set(c->err, MT_ERR_FORMAT, "%s: %s '%s' is not in the tokenizer's vocabulary", c->origin, key,
                            v->valuestring);
    *id = found;
    *present = true;
    return MT_OK;
}

/* A special token's text: a string, or an object's "content" (only a serialised AddedToken,
 * {"__type": "AddedToken", ...}, when added_token_only). */
static const char *special_text(const cJSON *v, bool added_token_only) {
    if (cJSON_IsString(v)) return v->valuestring;
    if (!cJSON_IsObject(v)) return NULL;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(v, "__type");
    if (added_token_only && !(cJSON_IsString(type) && !strcmp(type->valuestring, "AddedToken"))) return NULL;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(content) ? content->valuestring : NULL;
}

static void add_chat_token(mt_tokenizer *t, const char *key, const char *val) {
    for (int i = 0; i < t->n_chat_tokens; i++)
        if (!strcmp(t->chat_token_keys[i], key)) {
            free(t->chat_token_vals[i]);
            t->chat_token_vals[i] = mt_xstrdup(val);
            return;
        }
    t->chat_token_keys = mt_xrealloc(t->chat_token_keys, (size_t)(t->n_chat_tokens + 1) * sizeof(char *));
    t->chat_token_vals = mt_xrealloc(t->chat_token_vals, (size_t)(t->n_chat_tokens + 1) * sizeof(char *));
    t->chat_token_keys[t->n_chat_tokens] = mt_xstrdup(key);
    t->chat_token_vals[t->n_chat_tokens++] = mt_xstrdup(val);
}

/* The variables transformers (5.x, tokenization_utils_base.py) derives from the config for
 * chat templates: the seven named special tokens (strings or AddedToken objects), any other
 * top-level "*_token" key holding a string or a serialised AddedToken, and the entries of a
 * dict-valued extra_special_tokens (additional_special_tokens when that is empty). */
static void collect_chat_tokens(mt_tokenizer *t, const cJSON *root) {
    static const char *const named[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                        "pad_token", "cls_token", "mask_token"};
    for (size_t i = 0; i < sizeof named / sizeof *named; i++) {
        const char *v = special_text(cJSON_GetObjectItemCaseSensitive(root, named[i]), false);
        if (v) add_chat_token(t, named[i], v);
    }
    for (const cJSON *e = root->child; e; e = e->next) {
        size_t n = strlen(e->string);
        bool is_named = false;
        for (size_t i = 0; i < sizeof named / sizeof *named; i++) is_named |= !strcmp(e->string, named[i]);
        const char *v = is_named || n < 6 || strcmp(e->string + n - 6, "_token") ? NULL : special_text(e, true);
        if (v) add_chat_token(t, e->string, v);
    }
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(root, "extra_special_tokens");
    const cJSON *legacy = cJSON_GetObjectItemCaseSensitive(root, "additional_special_tokens");
    bool extra_empty = !extra || cJSON_IsNull(extra) || (cJSON_IsArray(extra) && !extra->child) ||
                       (cJSON_IsObject(extra) && !extra->child);
    if (extra_empty && legacy) extra = legacy;
    if (cJSON_IsObject(extra))
        for (const cJSON *e = extra->child; e; e = e->next) {
            const char *v = special_text(e, true);
            if (v) add_chat_token(t, e->string, v);
        }
}

static mt_status load_config(mt_tokenizer *t, const char *path, mt_error *err) {
    char *text;
    size_t len;
    mt_status st = mt_read_file(path, &text, &len, err);
    if (st) return st;
    jctx c = {path, err};
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mt_error_set(err, MT_ERR_FORMAT, "%s: not a JSON object", path);
    }
    /* add_bos_token / add_eos_token are not read: transformers drops them whenever a
     * tokenizer.json exists (tokenization_utils_base.py, _from_pretrained), so the file's
     * post-processor alone decides what encode(add_special_tokens=True) adds. */
    bool has_bos, has_eos;
    int32_t bos = -1, eos = -1;
    st = config_token(&c, t, root, "bos_token", &bos, &has_bos);
    if (!st) st = config_token(&c, t, root, "eos_token", &eos, &has_eos);
    const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (!st && !jabsent(tmpl)) {
        const char *chosen = NULL;
        if (cJSON_IsString(tmpl))
            chosen = tmpl->valuestring;
        else if (cJSON_IsArray(tmpl)) {
            for (const cJSON *e = tmpl->child; e; e = e->next) {
                const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *body = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (cJSON_IsString(name) && cJSON_IsString(body) && !strcmp(name->valuestring, "default"))
                    chosen = body->valuestring;
            }
        } else
            st = jfail(&c, MT_ERR_FORMAT, "chat_template", "must be a string or a list of {name, template}");
        if (chosen) t->chat_template = mt_xstrdup(chosen);
    }
    if (!st) {
        if (has_bos) t->bos_id = bos;
        if (has_eos) t->eos_id = eos;
        collect_chat_tokens(t, root);
    }
    cJSON_Delete(root);
    return st;
}

mt_status mt_tokenizer_load(mt_tokenizer **out, const char *path, mt_error *err) {
    *out = NULL;
    char file[4096], dir[4096];
    bool folder = mt_is_dir(path);
    if (folder) {
        if (!mt_path_join(file, sizeof file, path, "tokenizer.json"))
            return mt_error_set(err, MT_ERR_INVALID, "%s: path too long", path);
        snprintf(dir, sizeof dir, "%s", path);
    } else
        snprintf(file, sizeof file, "%s", path);
    if (!mt_path_exists(file))
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no such file%s", file,
                            folder ? " (the folder holds no tokenizer.json)" : "");
    char *text;
    size_t len;
    mt_status st = mt_read_file(file, &text, &len, err);
    if (st) return st;
    mt_tokenizer *t;
    st = mt_tokenizer_load_json(&t, text, len, file, err);
    free(text);
    if (st) return st;
    if (folder) {
        char cfg[4200];
        if (mt_path_join(cfg, sizeof cfg, dir, "tokenizer_config.json") && mt_path_exists(cfg))
            st = load_config(t, cfg, err);
        char jinja[4200];
        if (!st && mt_path_join(jinja, sizeof jinja, dir, "chat_template.jinja") && mt_path_exists(jinja)) {
            char *tmpl;
            size_t tl;
            st = mt_read_file(jinja, &tmpl, &tl, err);
            if (!st) {
                free(t->chat_template);
                t->chat_template = tmpl;
            }
        }
        if (st) {
            mt_tokenizer_free(t);
            return st;
        }
    }
    *out = t;
    return MT_OK;
}

/* ---- lookups ---- */

int mt_tokenizer_vocab_size(const mt_tokenizer *tok) { return tok->vocab_size; }

const char *mt_tokenizer_id_to_token(const mt_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->vocab_size) return NULL;
    return tok->id_tok[id];
}

int32_t mt_tokenizer_token_to_id(const mt_tokenizer *tok, const char *token) {
    size_t n = strlen(token);
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && !memcmp(tok->added[i].content, token, n)) return tok->added[i].id;
    return tk_strmap_get(&tok->vocab, token, n);
}

bool mt_tokenizer_is_special(const mt_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->vocab_size || tok->id_added[id] < 0) return false;
    return tok->added[tok->id_added[id]].special;
}

int32_t mt_tokenizer_bos_id(const mt_tokenizer *tok) { return tok->bos_id; }
int32_t mt_tokenizer_eos_id(const mt_tokenizer *tok) { return tok->eos_id; }
const char *mt_tokenizer_chat_template(const mt_tokenizer *tok) { return tok->chat_template; }
int mt_tokenizer_config_tokens(const mt_tokenizer *tok, const char *const **keys, const char *const **vals) {
    *keys = (const char *const *)tok->chat_token_keys;
    *vals = (const char *const *)tok->chat_token_vals;
    return tok->n_chat_tokens;
}
const char *mt_tokenizer_origin(const mt_tokenizer *tok) { return tok->origin; }
