/* target.c — which linears a name selects, by PEFT's rules: "all-linear", suffixes on '.'
 * boundaries (with '*' globbing one path segment), full-match regexes (PCRE2), the
 * rank_pattern/alpha_pattern lookup, and, for saving, the shortest suffix list that selects
 * exactly the adapted linears. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora-impl.h"

typedef enum pat_kind { PAT_ALL_LINEAR, PAT_SUFFIX, PAT_REGEX, PAT_KEY } pat_kind;

typedef struct pat_item {
    pat_kind kind;
    char *suffix;     /* owned copy for PAT_SUFFIX */
    pcre2_code *re;   /* PAT_REGEX, PAT_KEY */
} pat_item;

struct mt_lora_patterns {
    int n;
    pat_item *items;
};

/* `shift`: characters the caller put in front of the user's text (offsets are reported in it) */
static mt_status compile(const char *pattern, uint32_t options, pcre2_code **out, const char *what, const char *shown,
                         size_t shift, mt_error *err) {
    int code;
    PCRE2_SIZE at;
    *out = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, options | PCRE2_UTF, &code, &at, NULL);
    if (*out) return MT_OK;
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(code, msg, sizeof msg);
    size_t off = (size_t)at > shift ? (size_t)at - shift : 0;
    if (off > strlen(shown)) off = strlen(shown);
    return mt_error_set(err, MT_ERR_INVALID, "%s: \"%s\" is not a valid regular expression: %s (at offset %zu)", what,
                        shown, (const char *)msg, off);
}

static bool re_match(const pcre2_code *re, const char *s) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = pcre2_match(re, (PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    return rc >= 0;
}

static mt_lora_patterns *patterns_new(int n) {
    mt_lora_patterns *p = mt_xcalloc(1, sizeof *p);
    p->n = n;
    p->items = mt_xcalloc((size_t)(n > 0 ? n : 1), sizeof *p->items);
    return p;
}

void mt_lora_patterns_free(mt_lora_patterns *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        pcre2_code_free(p->items[i].re);
        free(p->items[i].suffix);
    }
    free(p->items);
    free(p);
}

int mt_lora_patterns_count(const mt_lora_patterns *p) { return p ? p->n : 0; }

/* PEFT compares target_modules.lower() with "all-linear" */
static bool is_all_linear(const char *t) {
    const char *want = "all-linear";
    for (; *t && *want; t++, want++)
        if ((*t >= 'A' && *t <= 'Z' ? *t - 'A' + 'a' : *t) != *want) return false;
    return !*t && !*want;
}

mt_status mt_lora_patterns_targets(mt_lora_patterns **out, const char *const *items, int n, const char *what,
                                   mt_error *err) {
    mt_lora_patterns *p = patterns_new(n);
    for (int i = 0; i < n; i++) {
        const char *t = items[i];
        pat_item *it = &p->items[i];
        if (!t || !*t) {
            mt_lora_patterns_free(p);
            return mt_error_set(err, MT_ERR_INVALID, "%s: entry %d is empty", what, i + 1);
        }
        if (is_all_linear(t)) {
            it->kind = PAT_ALL_LINEAR;
        } else if (!strncmp(t, "re:", 3)) {
            it->kind = PAT_REGEX;
            mt_status st = compile(t + 3, PCRE2_ANCHORED | PCRE2_ENDANCHORED, &it->re, what, t + 3, 0, err);
            if (st) {
                mt_lora_patterns_free(p);
                return st;
            }
        } else {
            it->kind = PAT_SUFFIX;
            it->suffix = mt_xstrdup(t);
        }
    }
    *out = p;
    return MT_OK;
}

mt_status mt_lora_patterns_keys(mt_lora_patterns **out, const char *const *keys, int n, const char *what,
                                mt_error *err) {
    mt_lora_patterns *p = patterns_new(n);
    for (int i = 0; i < n; i++) {
        const char *k = keys[i] ? keys[i] : "";
        /* exactly PEFT's get_pattern_key: re.match(rf"(.*\.)?({key})$", module_path) */
        size_t len = strlen(k) + 16;
        char *full = mt_xmalloc(len);
        snprintf(full, len, "(.*\\.)?(%s)$", k);
        p->items[i].kind = PAT_KEY;
        mt_status st = compile(full, PCRE2_ANCHORED | PCRE2_DOLLAR_ENDONLY, &p->items[i].re, what, k, 8, err);
        free(full);
        if (st) {
            mt_lora_patterns_free(p);
            return st;
        }
    }
    *out = p;
    return MT_OK;
}

mt_status mt_lora_regex_fullmatch(const char *regex, const char *subject, bool *match, const char *what,
                                  mt_error *err) {
    pcre2_code *re;
    mt_status st = compile(regex, PCRE2_ANCHORED | PCRE2_ENDANCHORED, &re, what, regex, 0, err);
    if (st) return st;
    *match = re_match(re, subject);
    pcre2_code_free(re);
    return MT_OK;
}

bool mt_lora_suffix_match(const char *target, const char *key) {
    size_t lt = strlen(target), lk = strlen(key);
    if (lk == lt) return !strcmp(key, target);
    return lk > lt && key[lk - lt - 1] == '.' && !strcmp(key + lk - lt, target);
}

/* Whole-string glob: '*' matches any run of characters other than '.'. */
static bool glob_full(const char *p, const char *s) {
    for (; *p; p++, s++) {
        if (*p == '*') {
            for (const char *t = s;; t++) {
                if (glob_full(p + 1, t)) return true;
                if (!*t || *t == '.') return false;
            }
        }
        if (*s != *p) return false;
    }
    return *s == '\0';
}

/* PEFT's list rule, key == target or key ends with "." + target, with globs. */
static bool glob_suffix(const char *target, const char *key) {
    if (!strchr(target, '*')) return mt_lora_suffix_match(target, key);
    for (const char *s = key; s; s = strchr(s, '.') ? strchr(s, '.') + 1 : NULL)
        if (glob_full(target, s)) return true;
    return false;
}

bool mt_lora_patterns_select(const mt_lora_patterns *p, int i, const mt_linear *L) {
    const pat_item *it = &p->items[i];
    switch (it->kind) {
    case PAT_ALL_LINEAR: return L->kind != MT_LINEAR_ROUTER && L->kind != MT_LINEAR_LM_HEAD;
    case PAT_SUFFIX: return glob_suffix(it->suffix, L->module);
    case PAT_REGEX: return re_match(it->re, L->module);
    case PAT_KEY: break;
    }
    return false;
}

bool mt_lora_patterns_match_path(const mt_lora_patterns *p, int i, const char *path) {
    const pat_item *it = &p->items[i];
    switch (it->kind) {
    case PAT_ALL_LINEAR: return strcmp(path, "lm_head") != 0;
    case PAT_SUFFIX: return glob_suffix(it->suffix, path);
    case PAT_REGEX:
    case PAT_KEY: return re_match(it->re, path);
    }
    return false;
}

int mt_lora_peft_layer_index(const char *key) {
    /* PEFT's layers_to_transform rule: the first "<segment>.<digits>." after a '.' */
    static const char pattern[] = "(?:.*?)\\.[^.]*\\.(\\d+)\\.";
    int code;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, &code, &at, NULL);
    MT_ASSERT(re != NULL);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int idx = -1;
    if (pcre2_match(re, (PCRE2_SPTR)key, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) >= 2) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        long v = strtol(key + ov[2], NULL, 10);
        idx = v > 1000000 ? -1 : (int)v;
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return idx;
}

int mt_lora_patterns_find(const mt_lora_patterns *p, const char *path) {
    for (int i = 0; p && i < p->n; i++)
        if (re_match(p->items[i].re, path)) return i;
    return -1;
}

/* ---- a set of strings (borrowed pointers), for the whole-model scans below ---- */

typedef struct str_set {
    const char **slot;
    size_t cap, n;
} str_set;

static uint64_t str_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

static void set_init(str_set *s, size_t expect) {
    s->cap = 16;
    while (s->cap < 2 * expect + 2) s->cap *= 2;
    s->slot = mt_xcalloc(s->cap, sizeof *s->slot);
    s->n = 0;
}

static bool set_has(const str_set *s, const char *k) {
    for (size_t i = str_hash(k) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (!s->slot[i]) return false;
        if (!strcmp(s->slot[i], k)) return true;
    }
}

/* returns false when k was already present */
static bool set_add(str_set *s, const char *k) {
    size_t i = str_hash(k) & (s->cap - 1);
    for (; s->slot[i]; i = (i + 1) & (s->cap - 1))
        if (!strcmp(s->slot[i], k)) return false;
    MT_ASSERT(s->n + 1 < s->cap);
    s->slot[i] = k;
    s->n++;
    return true;
}

static size_t count_dots(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += *s == '.';
    return n;
}

/* "model.layers.12.mlp.experts.3.w1" → "model.layers.*.mlp.experts.*.w1" */
static char *fold_indices(const char *s) {
    char *o = mt_xmalloc(strlen(s) + 1), *w = o;
    while (*s) {
        const char *seg = s;
        while (*s && *s != '.') s++;
        bool digits = s > seg;
        for (const char *c = seg; c < s; c++) digits &= *c >= '0' && *c <= '9';
        if (digits) {
            *w++ = '*';
        } else {
            memcpy(w, seg, (size_t)(s - seg));
            w += s - seg;
        }
        if (*s) *w++ = *s++;
    }
    *w = '\0';
    return o;
}

void mt_lora_list_modules(mt_model *m, char *buf, size_t cap) {
    int nl = mt_model_linear_count(m);
    char **folded = mt_xcalloc((size_t)(nl > 0 ? nl : 1), sizeof *folded);
    str_set seen;
    set_init(&seen, (size_t)nl);
    size_t off = 0;
    buf[0] = '\0';
    bool full = false;
    for (int i = 0; i < nl; i++) {
        folded[i] = fold_indices(mt_model_linear(m, i)->module);
        if (full || !set_add(&seen, folded[i])) continue;
        size_t need = strlen(folded[i]) + 2;
        if (off + need + 5 >= cap) {
            snprintf(buf + off, cap - off, ", ...");
            full = true;
            continue;
        }
        off += (size_t)snprintf(buf + off, cap - off, "%s%s", off ? ", " : "", folded[i]);
    }
    for (int i = 0; i < nl; i++) free(folded[i]);
    free(folded);
    free(seen.slot);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

char **mt_lora_minimal_targets(const mt_lora *l, int *n_out) {
    mt_model *m = l->m;
    int nl = mt_model_linear_count(m);
    bool *adapted = mt_xcalloc((size_t)(nl > 0 ? nl : 1), sizeof *adapted);
    for (int i = 0; i < l->n_mods; i++) adapted[l->mods[i].index] = true;
    /* every '.'-suffix of a linear that keeps its base weights: a target must be none of them */
    size_t n_suffix = 0;
    for (int i = 0; i < nl; i++) n_suffix += adapted[i] ? 0 : count_dots(mt_model_linear(m, i)->module) + 1;
    str_set forbidden, chosen;
    set_init(&forbidden, n_suffix);
    set_init(&chosen, (size_t)l->n_mods);
    for (int i = 0; i < nl; i++) {
        if (adapted[i]) continue;
        for (const char *s = mt_model_linear(m, i)->module; s; s = strchr(s, '.') ? strchr(s, '.') + 1 : NULL)
            set_add(&forbidden, s);
    }
    for (int i = 0; i < l->n_mods; i++) {
        const char *path = l->mods[i].lin->module;
        /* candidates from the last segment outwards; the whole path always qualifies */
        const char *best = path;
        for (const char *s = path + strlen(path); s > path; s--) {
            if (s[-1] != '.') continue;
            if (!set_has(&forbidden, s)) {
                best = s;
                break;
            }
        }
        set_add(&chosen, best);
    }
    /* a chosen suffix that ends with another chosen one is implied by it */
    const char **list = mt_xcalloc(chosen.n + 1, sizeof *list);
    int n = 0;
    for (size_t i = 0; i < chosen.cap; i++) {
        const char *s = chosen.slot[i];
        if (!s) continue;
        bool implied = false;
        for (const char *t = strchr(s, '.'); t && !implied; t = strchr(t + 1, '.')) implied = set_has(&chosen, t + 1);
        if (!implied) list[n++] = s;
    }
    qsort(list, (size_t)n, sizeof *list, cmp_str);
    char **out = mt_xcalloc((size_t)n + 1, sizeof *out);
    for (int i = 0; i < n; i++) out[i] = mt_xstrdup(list[i]);
    free(list);
    free(forbidden.slot);
    free(chosen.slot);
    free(adapted);
    *n_out = n;
    return out;
}
