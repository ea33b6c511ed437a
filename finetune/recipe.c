/* recipe.c — loads a recipe: YAML (libyaml's document API keeps line:column marks) and --set
 * overrides → an mt_recipe, checked per key against recipe-schema.c's table, then across keys.
 * Every problem is collected with its location, so a recipe is fixed in one pass. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "recipe-impl.h"
#include "rewards-impl.h"
#include "rl/rl.h"

/* Past this many the rest are noise from one root cause; the count of dropped ones is kept. */
#define MAX_DIAGS 64
/* A recipe is a few kilobytes; the cap bounds what a mistaken path (a dataset) costs. */
#define MAX_RECIPE_BYTES (1u << 20)

/* ---- scalars: one reading of YAML text per type, shared with the dump's quoting ---- */

bool mt_rscalar_is_null(const char *s) {
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

bool mt_rscalar_bool(const char *s, bool *out) {
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
        *out = true;
        return true;
    }
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
        *out = false;
        return true;
    }
    return false;
}

/* Decimal only: strtod would also take "inf", "nan" and hex floats, none of which a recipe
 * means. Overflow to infinity is refused as well. */
bool mt_rscalar_float(const char *s, double *out) {
    bool digit = false;
    for (const char *p = s; *p; p++) {
        if (*p >= '0' && *p <= '9')
            digit = true;
        else if (!strchr("+-.eE", *p))
            return false;
    }
    if (!digit) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || !isfinite(v)) return false;
    *out = v;
    return true;
}

static bool rscalar_int(const char *s, long long *out) {
    if (!((*s >= '0' && *s <= '9') || ((*s == '-' || *s == '+') && s[1] >= '0' && s[1] <= '9'))) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*end && errno == 0) {
        *out = v;
        return true;
    }
    /* "1e4" steps: a float that is a whole number is an integer too */
    double d;
    if (!mt_rscalar_float(s, &d) || d != floor(d) || fabs(d) > 9e15) return false;
    *out = (long long)d;
    return true;
}

/* ---- the load context ---- */

typedef enum src_kind { SRC_DEFAULT, SRC_FILE, SRC_SET } src_kind;

/* Where a value came from, for messages: a file position (line 0: the file, no position), or
 * a --set. */
typedef struct loc {
    src_kind src;
    size_t line, col; /* 1-based */
} loc;

typedef struct key_state {
    bool seen; /* given by the file or a --set, valid or not */
    bool set;  /* given a valid non-null value */
    loc at;    /* of the key */
} key_state;

typedef struct rctx {
    mt_recipe *r;
    const char *file;   /* as the user gave it */
    char *file_dir;     /* absolute folder of the recipe */
    char *cwd;          /* absolute; --set paths resolve against it */
    src_kind src;       /* what is being applied now */
    const char *base;   /* folder relative paths of the current source resolve against */
    yaml_document_t *doc;
    key_state *ks;      /* [mt_recipe_n_keys] */
    mt_recipe_diags *diags;
    size_t n_dropped;
    bool format_error;  /* YAML syntax: cross-key rules would only add noise */
} rctx;

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    MT_ASSERT(n >= 0);
    char *s = mt_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static void diag(rctx *c, loc at, const char *key, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void diag(rctx *c, loc at, const char *key, const char *fmt, ...) {
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    char *msg;
    const char *k = key ? key : "";
    const char *sep = key ? ": " : "";
    if (at.src == SRC_DEFAULT) {
        /* defaults are part of the table, so a bad one is a bug, caught by every test */
        msg = xasprintf("recipe key table: default of %s: %s", k, what);
        mt_assert_fail(msg, __FILE__, __LINE__);
    } else if (at.src == SRC_SET) {
        msg = xasprintf("--set %s%s%s", k, sep, what);
    } else if (at.line) {
        msg = xasprintf("%s:%zu:%zu: %s%s%s", c->file, at.line, at.col, k, sep, what);
    } else {
        msg = xasprintf("%s: %s%s%s", c->file, k, sep, what);
    }
    if (c->diags->n >= MAX_DIAGS) {
        c->n_dropped++;
        free(msg);
        return;
    }
    c->diags->msgs = mt_xrealloc(c->diags->msgs, (c->diags->n + 1) * sizeof *c->diags->msgs);
    c->diags->msgs[c->diags->n++] = msg;
}

static loc node_loc(const rctx *c, const yaml_node_t *n) {
    loc l = {c->src, 0, 0};
    if (c->src == SRC_FILE) {
        l.line = n->start_mark.line + 1;
        l.col = n->start_mark.column + 1;
    }
    return l;
}

static yaml_node_t *node_at(const rctx *c, int index) { return yaml_document_get_node(c->doc, index); }

static const char *scalar_text(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

/* Only a plain scalar can be null: a quoted "null" is the string. */
static bool node_is_null(const yaml_node_t *n) {
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           mt_rscalar_is_null(scalar_text(n));
}

/* A YAML "\0" escape would silently cut a C string short. */
static bool node_has_nul(const yaml_node_t *n) { return strlen(scalar_text(n)) != n->data.scalar.length; }

/* "'text'", "a list", "a mapping", "nothing": what a type error says it got. */
static void describe(const yaml_node_t *n, char *buf, size_t cap) {
    if (n->type == YAML_SEQUENCE_NODE)
        snprintf(buf, cap, "a list");
    else if (n->type == YAML_MAPPING_NODE)
        snprintf(buf, cap, "a mapping");
    else if (node_is_null(n))
        snprintf(buf, cap, "%s", n->data.scalar.length ? "null" : "nothing");
    else if (n->data.scalar.length > 60)
        snprintf(buf, cap, "'%.57s...'", scalar_text(n));
    else
        snprintf(buf, cap, "'%s'", scalar_text(n));
}

static void *field(mt_recipe *r, const mt_rkey *k) { return (char *)r + k->offset; }

static size_t key_index(const mt_rkey *k) { return (size_t)(k - mt_recipe_keys); }

/* ---- paths ---- */

/* Collapses "//", "/./" and "/x/../" in an absolute path, lexically: the path need not exist. */
static void normalize_path(char *s) {
    MT_ASSERT(s[0] == '/');
    size_t n = strlen(s), out = 0;
    size_t *starts = mt_xmalloc((n + 1) * sizeof *starts); /* where each kept component begins */
    size_t depth = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && s[i] == '/') i++;
        size_t j = i;
        while (j < n && s[j] != '/') j++;
        size_t len = j - i;
        if (len == 0 || (len == 1 && s[i] == '.')) {
            /* nothing to keep */
        } else if (len == 2 && s[i] == '.' && s[i + 1] == '.') {
            if (depth) out = starts[--depth];
        } else {
            starts[depth++] = out;
            s[out++] = '/';
            memmove(s + out, s + i, len);
            out += len;
        }
        i = j;
    }
    if (out == 0) s[out++] = '/';
    s[out] = '\0';
    free(starts);
}

static char *resolve_path(const char *base, const char *p) {
    char *joined;
    const char *home = getenv("HOME");
    if (p[0] == '~' && (p[1] == '/' || !p[1]) && home && home[0] == '/')
        joined = xasprintf("%s%s", home, p + 1);
    else if (p[0] == '/')
        joined = mt_xstrdup(p);
    else
        joined = xasprintf("%s/%s", base, p);
    normalize_path(joined);
    return joined;
}

/* ---- lists and maps ---- */

static void list_free(mt_recipe_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

static void list_push(mt_recipe_list *l, char *owned) {
    l->items = mt_xrealloc(l->items, (l->n + 1) * sizeof *l->items);
    l->items[l->n++] = owned;
}

static void map_free(mt_recipe_map *m) {
    for (size_t i = 0; i < m->n; i++) free(m->patterns[i]);
    free(m->patterns);
    free(m->values);
    m->patterns = NULL;
    m->values = NULL;
    m->n = 0;
}

/* ---- applying one value ---- */

static const char *type_phrase(mt_rkey_type t) {
    switch (t) {
    case MT_RKEY_STRING: return "a string";
    case MT_RKEY_PATH: return "a path";
    case MT_RKEY_PATHS: return "a path or a list of paths";
    case MT_RKEY_NAMES: return "a name or a list of names";
    case MT_RKEY_INT: return "an integer";
    case MT_RKEY_FLOAT: return "a number";
    case MT_RKEY_AUTO_FLOAT: return "auto or a number";
    case MT_RKEY_BOOL: return "true or false";
    case MT_RKEY_ENUM: return "one of the names";
    case MT_RKEY_INT_MAP: return "a mapping of pattern: integer";
    case MT_RKEY_FLOAT_MAP: return "a mapping of pattern: number";
    case MT_RKEY_FLOATS: return "a number or a list of numbers";
    }
    return "?";
}

static const char *number_phrase(const mt_rkey *k, bool integer) {
    if (integer) return "an integer";
    if (k->type != MT_RKEY_AUTO_FLOAT) return "a number";
    return (k->flags & MT_RKEY_OFF) ? "off, auto or a number" : "auto or a number";
}

/* "[0, 1)" with whole bounds printed without exponent. */
static void range_text(const mt_rkey *k, char *buf, size_t cap) {
    char lo[32], hi[32];
    snprintf(lo, sizeof lo, k->min == floor(k->min) && fabs(k->min) < 1e15 ? "%.0f" : "%g", k->min);
    snprintf(hi, sizeof hi, k->max == floor(k->max) && fabs(k->max) < 1e15 ? "%.0f" : "%g", k->max);
    snprintf(buf, cap, "%c%s, %s%c", (k->flags & MT_RKEY_MIN_OPEN) ? '(' : '[', lo, hi,
             (k->flags & MT_RKEY_MAX_OPEN) ? ')' : ']');
}

static bool in_range(const mt_rkey *k, double v) {
    bool lo = (k->flags & MT_RKEY_MIN_OPEN) ? v > k->min : v >= k->min;
    bool hi = (k->flags & MT_RKEY_MAX_OPEN) ? v < k->max : v <= k->max;
    return lo && hi;
}

static void type_error(rctx *c, const mt_rkey *k, const char *key, const yaml_node_t *n) {
    char got[96];
    describe(n, got, sizeof got);
    diag(c, node_loc(c, n), key, "expected %s, got %s",
         k->type == MT_RKEY_AUTO_FLOAT ? number_phrase(k, false) : type_phrase(k->type), got);
}

/* A number of key k from scalar n; reports and returns false when it is not one or is out of
 * range. */
static bool number_value(rctx *c, const mt_rkey *k, const char *key, const yaml_node_t *n, bool integer,
                         double *out) {
    if (n->type != YAML_SCALAR_NODE || node_is_null(n)) {
        char got[96];
        describe(n, got, sizeof got);
        diag(c, node_loc(c, n), key, "expected %s, got %s", number_phrase(k, integer), got);
        return false;
    }
    const char *s = scalar_text(n);
    double v;
    long long iv;
    if (integer ? !rscalar_int(s, &iv) : !mt_rscalar_float(s, &v)) {
        char got[96];
        describe(n, got, sizeof got);
        diag(c, node_loc(c, n), key, "expected %s, got %s", number_phrase(k, integer), got);
        return false;
    }
    if (integer) v = (double)iv;
    if (!in_range(k, v)) {
        char range[80];
        range_text(k, range, sizeof range);
        diag(c, node_loc(c, n), key, "%s is outside %s", s, range);
        return false;
    }
    *out = v;
    return true;
}

static void enum_value(rctx *c, const mt_rkey *k, const char *key, const yaml_node_t *n) {
    char allowed[256] = "";
    for (size_t i = 0; k->names[i]; i++) {
        size_t used = strlen(allowed);
        snprintf(allowed + used, sizeof allowed - used, "%s%s", i ? ", " : "", k->names[i]);
    }
    if (n->type != YAML_SCALAR_NODE || node_is_null(n)) {
        char got[96];
        describe(n, got, sizeof got);
        diag(c, node_loc(c, n), key, "expected one of %s, got %s", allowed, got);
        return;
    }
    const char *s = scalar_text(n);
    const char *best = NULL;
    int best_d = 3;
    for (size_t i = 0; k->names[i]; i++) {
        if (!strcmp(s, k->names[i])) {
            *(int *)field(c->r, k) = (int)i;
            return;
        }
        int d = strcasecmp(s, k->names[i]) ? mt_edit_distance(s, k->names[i]) : 0;
        if (d < best_d) best_d = d, best = k->names[i];
    }
    char got[96];
    describe(n, got, sizeof got);
    if (best)
        diag(c, node_loc(c, n), key, "expected one of %s, got %s (did you mean '%s'?)", allowed, got, best);
    else
        diag(c, node_loc(c, n), key, "expected one of %s, got %s", allowed, got);
}

static void bool_value(rctx *c, const mt_rkey *k, const char *key, const yaml_node_t *n) {
    bool v;
    if (n->type == YAML_SCALAR_NODE && mt_rscalar_bool(scalar_text(n), &v)) {
        *(bool *)field(c->r, k) = v;
        return;
    }
    char got[96];
    describe(n, got, sizeof got);
    static const char *const yaml11_true[] = {"yes", "on", "y"};
    static const char *const yaml11_false[] = {"no", "off", "n"};
    if (n->type == YAML_SCALAR_NODE) {
        for (size_t i = 0; i < 3; i++) {
            const char *s = scalar_text(n);
            if (!strcasecmp(s, yaml11_true[i]) || !strcasecmp(s, yaml11_false[i])) {
                diag(c, node_loc(c, n), key, "expected true or false, got %s (write %s)", got,
                     strcasecmp(s, yaml11_true[i]) ? "false" : "true");
                return;
            }
        }
    }
    diag(c, node_loc(c, n), key, "expected true or false, got %s", got);
}

/* One string of a string, path or list key: scalar, non-null, no NUL, passes the key's check.
 * Returns an owned string (resolved for paths) or NULL after reporting. */
static char *string_item(rctx *c, const mt_rkey *k, const char *key, const yaml_node_t *n, bool path) {
    if (n->type != YAML_SCALAR_NODE || node_is_null(n)) {
        char got[96];
        describe(n, got, sizeof got);
        diag(c, node_loc(c, n), key, "expected %s, got %s", path ? "a path" : "a string", got);
        return NULL;
    }
    const char *s = scalar_text(n);
    if (node_has_nul(n)) {
        diag(c, node_loc(c, n), key, "contains a NUL character");
        return NULL;
    }
    if (path && !*s) {
        diag(c, node_loc(c, n), key, "expected a path, got an empty string");
        return NULL;
    }
    char why[256];
    if (k->check && !k->check(s, why, sizeof why)) {
        diag(c, node_loc(c, n), key, "%s", why);
        return NULL;
    }
    return path ? resolve_path(c->base, s) : mt_xstrdup(s);
}

static void list_value(rctx *c, const mt_rkey *k, const char *key, const yaml_node_t *n) {
    bool path = k->type == MT_RKEY_PATHS;
    mt_recipe_list l = {0};
    bool ok = true;
    if (n->type == YAML_MAPPING_NODE) {
        type_error(c, k, key, n);
        return;
    }
    if (n->type == YAML_SCALAR_NODE) {
        if (!node_is_null(n)) {
            char *s = string_item(c, k, key, n, path);
            if (!s) return;
            list_push(&l, s);
        }
    } else {
        yaml_node_item_t *it = n->data.sequence.items.start;
        for (size_t i = 0; it + i < n->data.sequence.items.top; i++) {
            const yaml_node_t *e = node_at(c, it[i]);
            char ekey[160];
            snprintf(ekey, sizeof ekey, "%s[%zu]", key, i);
            char *s = string_item(c, k, ekey, e, path);
            if (!s) {
                ok = false;
                continue;
            }
            for (size_t j = 0; j < l.n; j++) {
                if (!strcmp(l.items[j], s)) {
                    diag(c, node_loc(c, e), ekey, "'%s' is listed twice", scalar_text(e));
                    ok = false;
                    break;
                }
            }
            if (k->type == MT_RKEY_NAMES && !strcmp(s, "all-linear") && n->data.sequence.items.top - it > 1) {
                diag(c, node_loc(c, e), ekey, "'all-linear' stands alone; drop the other entries or list modules");
                ok = false;
            }
            list_push(&l, s);
        }
    }
    if (!ok) {
        list_free(&l);
        return;
    }
    mt_recipe_list *dst = field(c->r, k);
    list_free(dst);
    *dst = l;
}

static void map_value(rctx *c, const mt_rkey *k, const char *key, const yaml_node_t *n) {
    mt_recipe_map m = {0};
    bool ok = true;
    if (n->type != YAML_MAPPING_NODE && !node_is_null(n)) {
        type_error(c, k, key, n);
        return;
    }
    if (n->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            const yaml_node_t *kn = node_at(c, p->key), *vn = node_at(c, p->value);
            if (kn->type != YAML_SCALAR_NODE || node_is_null(kn) || node_has_nul(kn)) {
                char got[96];
                describe(kn, got, sizeof got);
                diag(c, node_loc(c, kn), key, "patterns must be strings, got %s", got);
                ok = false;
                continue;
            }
            const char *pat = scalar_text(kn);
            char ekey[200];
            snprintf(ekey, sizeof ekey, "%s[%s]", key, pat);
            char why[256];
            if (k->check && !k->check(pat, why, sizeof why)) {
                diag(c, node_loc(c, kn), ekey, "%s", why);
                ok = false;
                continue;
            }
            bool dup = false;
            for (size_t j = 0; j < m.n; j++) dup |= !strcmp(m.patterns[j], pat);
            if (dup) {
                diag(c, node_loc(c, kn), ekey, "pattern given twice");
                ok = false;
                continue;
            }
            double v;
            if (!number_value(c, k, ekey, vn, k->type == MT_RKEY_INT_MAP, &v)) {
                ok = false;
                continue;
            }
            m.patterns = mt_xrealloc(m.patterns, (m.n + 1) * sizeof *m.patterns);
            m.values = mt_xrealloc(m.values, (m.n + 1) * sizeof *m.values);
            m.patterns[m.n] = mt_xstrdup(pat);
            m.values[m.n++] = v;
        }
    }
    if (!ok) {
        map_free(&m);
        return;
    }
    mt_recipe_map *dst = field(c->r, k);
    map_free(dst);
    *dst = m;
}

static void numbers_value(rctx *c, const mt_rkey *k, const char *key, const yaml_node_t *n) {
    mt_recipe_numbers l = {0};
    bool ok = true;
    if (n->type == YAML_MAPPING_NODE) {
        type_error(c, k, key, n);
        return;
    }
    if (n->type == YAML_SCALAR_NODE) {
        if (!node_is_null(n)) {
            double v;
            if (!number_value(c, k, key, n, false, &v)) return;
            l.values = mt_xmalloc(sizeof *l.values);
            l.values[l.n++] = v;
        }
    } else {
        yaml_node_item_t *it = n->data.sequence.items.start;
        for (size_t i = 0; it + i < n->data.sequence.items.top; i++) {
            char ekey[160];
            snprintf(ekey, sizeof ekey, "%s[%zu]", key, i);
            double v;
            if (!number_value(c, k, ekey, node_at(c, it[i]), false, &v)) {
                ok = false;
                continue;
            }
            l.values = mt_xrealloc(l.values, (l.n + 1) * sizeof *l.values);
            l.values[l.n++] = v;
        }
    }
    if (!ok) {
        free(l.values);
        return;
    }
    mt_recipe_numbers *dst = field(c->r, k);
    free(dst->values);
    *dst = l;
}

/* Pairs of keys of which a recipe gives one. A --set of one replaces the other when the file
 * gave it: `--set train.epochs=2` on a recipe with steps means epochs, not a conflict. */
static const char *const exclusive_pairs[][2] = {
    {"train.steps", "train.epochs"},
    {"train.warmup_steps", "train.warmup_ratio"},
};

static void unset_number(rctx *c, const mt_rkey *k) {
    if (k->type == MT_RKEY_INT)
        *(int *)field(c->r, k) = MT_RECIPE_UNSET;
    else
        *(double *)field(c->r, k) = MT_RECIPE_UNSET;
    c->ks[key_index(k)].set = false;
}

static void override_partner(rctx *c, const mt_rkey *k) {
    for (size_t i = 0; i < sizeof exclusive_pairs / sizeof exclusive_pairs[0]; i++)
        for (int side = 0; side < 2; side++) {
            if (strcmp(exclusive_pairs[i][side], k->path)) continue;
            const mt_rkey *other = mt_rkey_find(exclusive_pairs[i][!side]);
            key_state *os = &c->ks[key_index(other)];
            if (os->set && os->at.src == SRC_FILE) unset_number(c, other);
        }
}

/* Applies value node n to key k (whose own key sat at `at`); `key` names it in messages. */
static void apply_value(rctx *c, const mt_rkey *k, loc at, const char *key, const yaml_node_t *n) {
    bool null = node_is_null(n);
    size_t before = c->diags->n + c->n_dropped;
    switch (k->type) {
    case MT_RKEY_STRING:
    case MT_RKEY_PATH: {
        /* null asks for the derived default (output.adapter: null → <output.dir>/adapter) */
        if (null && !(k->flags & MT_RKEY_REQUIRED)) {
            char **dst = field(c->r, k);
            free(*dst);
            *dst = NULL;
            break;
        }
        char *s = string_item(c, k, key, n, k->type == MT_RKEY_PATH);
        if (s) {
            char **dst = field(c->r, k);
            free(*dst);
            *dst = s;
        }
        break;
    }
    case MT_RKEY_PATHS:
    case MT_RKEY_NAMES: list_value(c, k, key, n); break;
    case MT_RKEY_INT:
    case MT_RKEY_FLOAT:
    case MT_RKEY_AUTO_FLOAT: {
        double v;
        if (null && (k->flags & MT_RKEY_NULLABLE)) {
            v = MT_RECIPE_UNSET;
        } else if (k->type == MT_RKEY_AUTO_FLOAT && n->type == YAML_SCALAR_NODE && !strcmp(scalar_text(n), "auto")) {
            v = MT_RECIPE_AUTO;
        } else if ((k->flags & MT_RKEY_OFF) && n->type == YAML_SCALAR_NODE && !strcmp(scalar_text(n), "off")) {
            v = 0;
        } else if (!number_value(c, k, key, n, k->type == MT_RKEY_INT, &v)) {
            break;
        }
        if (k->type == MT_RKEY_INT)
            *(int *)field(c->r, k) = (int)v;
        else
            *(double *)field(c->r, k) = v;
        break;
    }
    case MT_RKEY_BOOL: bool_value(c, k, key, n); break;
    case MT_RKEY_ENUM: enum_value(c, k, key, n); break;
    case MT_RKEY_INT_MAP:
    case MT_RKEY_FLOAT_MAP: map_value(c, k, key, n); break;
    case MT_RKEY_FLOATS: numbers_value(c, k, key, n); break;
    }
    if (c->src != SRC_DEFAULT) {
        key_state *ks = &c->ks[key_index(k)];
        ks->seen = true;
        if (c->diags->n + c->n_dropped == before) {
            ks->set = !null;
            ks->at = at;
            if (ks->set && c->src == SRC_SET) override_partner(c, k);
        }
    }
}

/* ---- unknown keys: the nearest valid one ---- */

/* How far a misspelling may be from the key it meant: one edit for short keys, then a third of
 * the length ("learnig_rate" is one edit from "learning_rate"). */
static int suggest_limit(const char *name) {
    int n = (int)strlen(name);
    if (n < 4) return 1;
    return n / 3 > 2 ? n / 3 : 2;
}

typedef struct suggestion {
    int d;
    const char *path; /* the key's full path, or a section name */
    bool sibling;     /* in the section the unknown key was in */
    bool leaf_exact;  /* the key's own name (not an alias) matched exactly */
} suggestion;

static void consider(suggestion *best, const char *name, const char *cand, const char *path, bool sibling,
                     bool is_name) {
    int d = mt_edit_distance(name, cand);
    if (d > suggest_limit(name)) return;
    if (d < best->d || (d == best->d && sibling && !best->sibling)) {
        best->d = d;
        best->path = path;
        best->sibling = sibling;
        best->leaf_exact = is_name && d == 0;
    }
}

static bool is_section(const char *name) {
    if (!*name) return false;
    for (size_t i = 0; i < mt_recipe_n_sections; i++)
        if (!strcmp(mt_recipe_sections[i].name, name)) return true;
    return false;
}

static void unknown_key(rctx *c, loc at, const char *section, const char *name, const char *key) {
    suggestion best = {INT_MAX, NULL, false, false};
    for (size_t i = 0; i < mt_recipe_n_keys; i++) {
        const mt_rkey *k = &mt_recipe_keys[i];
        char sec[32];
        mt_rkey_section(k, sec, sizeof sec);
        bool sib = !strcmp(sec, section);
        consider(&best, name, mt_rkey_leaf(k), k->path, sib, true);
        if (k->aliases) {
            char alias[64];
            for (const char *p = k->aliases; *p;) {
                size_t n = strcspn(p, " ");
                if (n < sizeof alias) {
                    memcpy(alias, p, n);
                    alias[n] = '\0';
                    consider(&best, name, alias, k->path, sib, false);
                }
                p += n;
                while (*p == ' ') p++;
            }
        }
    }
    if (!*section)
        for (size_t i = 0; i < mt_recipe_n_sections; i++)
            if (mt_recipe_sections[i].name[0])
                consider(&best, name, mt_recipe_sections[i].name, mt_recipe_sections[i].name, true, true);
    if (best.path) {
        const char *dot = strchr(best.path, '.');
        if (c->src == SRC_SET) {
            diag(c, at, key, "unknown key (did you mean '%s'?)", best.path);
        } else if (best.sibling) {
            diag(c, at, key, "unknown key (did you mean '%s'?)", dot ? dot + 1 : best.path);
        } else if (best.leaf_exact && dot) {
            diag(c, at, key, "unknown key (%s belongs under %.*s:)", name, (int)(dot - best.path), best.path);
        } else {
            diag(c, at, key, "unknown key (did you mean '%s'?)", best.path);
        }
        return;
    }
    char valid[1024] = "";
    for (size_t i = 0; i < mt_recipe_n_keys; i++) {
        char sec[32];
        mt_rkey_section(&mt_recipe_keys[i], sec, sizeof sec);
        if (strcmp(sec, section)) continue;
        size_t used = strlen(valid);
        snprintf(valid + used, sizeof valid - used, "%s%s", used ? ", " : "", mt_rkey_leaf(&mt_recipe_keys[i]));
    }
    if (!*section)
        for (size_t i = 0; i < mt_recipe_n_sections; i++) {
            if (!mt_recipe_sections[i].name[0]) continue;
            size_t used = strlen(valid);
            snprintf(valid + used, sizeof valid - used, ", %s", mt_recipe_sections[i].name);
        }
    if (*section)
        diag(c, at, key, "unknown key (keys under %s: %s)", section, valid);
    else
        diag(c, at, key, "unknown key (top-level keys: %s)", valid);
}

/* ---- mappings (the root and the sections) ---- */

static void apply_mapping(rctx *c, const yaml_node_t *map, const char *section) {
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const yaml_node_t *kn = node_at(c, p->key), *vn = node_at(c, p->value);
        loc at = node_loc(c, kn);
        if (kn->type != YAML_SCALAR_NODE || node_has_nul(kn)) {
            char got[96];
            describe(kn, got, sizeof got);
            diag(c, at, *section ? section : NULL, "keys must be names, got %s", got);
            continue;
        }
        const char *name = scalar_text(kn);
        char key[256];
        snprintf(key, sizeof key, "%s%s%s", section, *section ? "." : "", name);
        const yaml_node_pair_t *first = NULL;
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p && !first; q++) {
            const yaml_node_t *qk = node_at(c, q->key);
            if (qk->type == YAML_SCALAR_NODE && !strcmp(scalar_text(qk), name)) first = q;
        }
        if (first) {
            const yaml_node_t *fk = node_at(c, first->key);
            if (c->src == SRC_FILE)
                diag(c, at, key, "duplicate key (first at %zu:%zu)", fk->start_mark.line + 1,
                     fk->start_mark.column + 1);
            else
                diag(c, at, key, "duplicate key");
            continue;
        }
        if (!*section && is_section(name)) {
            if (vn->type == YAML_MAPPING_NODE)
                apply_mapping(c, vn, name);
            else if (!node_is_null(vn)) {
                char got[96];
                describe(vn, got, sizeof got);
                diag(c, node_loc(c, vn), key, "expected a mapping of %s keys, got %s", name, got);
            }
            continue;
        }
        const mt_rkey *k = mt_rkey_find(key);
        if (!k) {
            unknown_key(c, at, section, name, key);
            continue;
        }
        apply_value(c, k, at, key, vn);
    }
}

/* ---- YAML documents ---- */

/* libyaml reports reader errors (bad UTF-8) as a byte offset, the others with a mark. */
static void syntax_error(rctx *c, const yaml_parser_t *p, const char *text, size_t len, const char *set_key) {
    size_t line = p->problem_mark.line + 1, col = p->problem_mark.column + 1;
    if (p->error == YAML_READER_ERROR) {
        line = 1;
        col = 1;
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (text[i] == '\n')
                line++, col = 1;
            else
                col++;
        }
    }
    const char *problem = p->problem ? p->problem : "malformed YAML";
    char context[160] = "";
    if (p->error == YAML_SCANNER_ERROR && p->problem_mark.index < len && text[p->problem_mark.index] == '\t')
        snprintf(context, sizeof context, " (a tab: YAML indents with spaces only)");
    else if (p->context)
        snprintf(context, sizeof context, " (%s at %zu:%zu)", p->context, p->context_mark.line + 1,
                 p->context_mark.column + 1);
    if (set_key) {
        /* one bad override leaves the file and the other overrides worth checking */
        loc at = {SRC_SET, 0, 0};
        diag(c, at, set_key, "YAML syntax error in the value: %s", problem);
        return;
    }
    loc at = {SRC_FILE, line, col};
    diag(c, at, NULL, "YAML syntax error: %s%s", problem, context);
    c->format_error = true;
}

/* Parses text as exactly one YAML document into *doc. Returns false after reporting. An empty
 * text is a document whose root is NULL. */
static bool parse_document(rctx *c, const char *text, size_t len, const char *set_key, yaml_document_t *doc) {
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) mt_assert_fail("yaml_parser_initialize: out of memory", __FILE__, __LINE__);
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, doc)) {
        syntax_error(c, &p, text, len, set_key);
        yaml_parser_delete(&p);
        return false;
    }
    yaml_document_t extra;
    if (!yaml_parser_load(&p, &extra)) {
        syntax_error(c, &p, text, len, set_key);
        yaml_document_delete(doc);
        yaml_parser_delete(&p);
        return false;
    }
    yaml_node_t *second = yaml_document_get_root_node(&extra);
    if (second) {
        loc at = {set_key ? SRC_SET : SRC_FILE, second->start_mark.line + 1, second->start_mark.column + 1};
        diag(c, at, set_key, "a recipe is one YAML document; remove the second one (or the '---' before it)");
        if (!set_key) c->format_error = true;
    }
    yaml_document_delete(&extra);
    yaml_parser_delete(&p);
    if (second) {
        yaml_document_delete(doc);
        return false;
    }
    return true;
}

static void apply_defaults(rctx *c) {
    c->src = SRC_DEFAULT;
    c->base = c->file_dir;
    for (size_t i = 0; i < mt_recipe_n_keys; i++) {
        const mt_rkey *k = &mt_recipe_keys[i];
        if (!k->def) continue;
        yaml_document_t doc;
        bool ok = parse_document(c, k->def, strlen(k->def), k->path, &doc);
        MT_ASSERT(ok && yaml_document_get_root_node(&doc));
        c->doc = &doc;
        loc none = {SRC_DEFAULT, 0, 0};
        apply_value(c, k, none, k->path, yaml_document_get_root_node(&doc));
        yaml_document_delete(&doc);
    }
}

static void apply_file(rctx *c, const char *text, size_t len) {
    c->src = SRC_FILE;
    c->base = c->file_dir;
    yaml_document_t doc;
    if (!parse_document(c, text, len, NULL, &doc)) return;
    c->doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || node_is_null(root)) {
        loc at = {SRC_FILE, 0, 0};
        diag(c, at, NULL, "empty recipe (it needs at least model.path and data.train)");
        c->format_error = true;
    } else if (root->type != YAML_MAPPING_NODE) {
        char got[96];
        describe(root, got, sizeof got);
        diag(c, node_loc(c, root), NULL, "expected a mapping of keys (model:, data:, train:, ...), got %s", got);
        c->format_error = true;
    } else {
        apply_mapping(c, root, "");
    }
    yaml_document_delete(&doc);
}

static void apply_override(rctx *c, const char *ov) {
    c->src = SRC_SET;
    c->base = c->cwd;
    loc at = {SRC_SET, 0, 0};
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov) {
        diag(c, at, ov, "expected key=value (e.g. train.lr=3e-4)");
        return;
    }
    char *key = mt_xmalloc((size_t)(eq - ov) + 1);
    memcpy(key, ov, (size_t)(eq - ov));
    key[eq - ov] = '\0';
    /* an empty value means null (clears a list), as an empty YAML value does */
    const char *value = eq[1] ? eq + 1 : "~";
    yaml_document_t doc;
    if (!parse_document(c, value, strlen(value), key, &doc)) {
        free(key);
        return;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        /* only blanks or a comment after '=': the same as nothing */
        yaml_document_delete(&doc);
        bool ok = parse_document(c, "~", 1, key, &doc);
        MT_ASSERT(ok);
        root = yaml_document_get_root_node(&doc);
    }
    c->doc = &doc;
    const mt_rkey *k = mt_rkey_find(key);
    if (k) {
        apply_value(c, k, at, key, root);
    } else if (is_section(key)) {
        if (root->type == YAML_MAPPING_NODE)
            apply_mapping(c, root, key);
        else if (!node_is_null(root)) {
            char got[96];
            describe(root, got, sizeof got);
            diag(c, at, key, "expected a mapping of %s keys, got %s", key, got);
        }
    } else {
        /* blame the first wrong component: the key inside a known section, or the section */
        const char *dot = strchr(key, '.');
        char *head = mt_xstrdup(key);
        if (dot) head[dot - key] = '\0';
        if (dot && is_section(head))
            unknown_key(c, at, head, dot + 1, key);
        else
            unknown_key(c, at, "", head, key);
        free(head);
    }
    yaml_document_delete(&doc);
    free(key);
}

/* ---- after all sources: derived defaults and rules across keys ---- */

static key_state *state_of(rctx *c, const char *path) {
    const mt_rkey *k = mt_rkey_find(path);
    MT_ASSERT(k);
    return &c->ks[key_index(k)];
}

/* "legal-lora.yaml" → "legal-lora", with anything a run name may not hold made '-'. */
static char *name_from_file(const char *file) {
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    size_t n = strlen(base);
    if (n > 5 && !strcmp(base + n - 5, ".yaml"))
        n -= 5;
    else if (n > 4 && !strcmp(base + n - 4, ".yml"))
        n -= 4;
    if (n > 64) n = 64;
    if (n == 0) return mt_xstrdup("recipe");
    char *s = mt_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        char ch = base[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                  ch == '_' || ch == '-';
        s[i] = ok ? ch : '-';
    }
    if (s[0] == '.' || s[0] == '-') s[0] = '_';
    s[n] = '\0';
    return s;
}

static void derive_defaults(rctx *c) {
    mt_recipe *r = c->r;
    if (!state_of(c, "name")->set) {
        free(r->name);
        r->name = name_from_file(c->file);
    }
    if (!state_of(c, "model.tokenizer")->set && r->model.path) r->model.tokenizer = mt_xstrdup(r->model.path);
    if (!state_of(c, "output.dir")->set) {
        char *rel = xasprintf("runs/%s", r->name);
        r->output.dir = resolve_path(c->file_dir, rel);
        free(rel);
    }
    if (!state_of(c, "output.adapter")->set) r->output.adapter = xasprintf("%s/adapter", r->output.dir);
    if (!state_of(c, "output.store")->set) {
        char *rel = xasprintf("%s/../moetune.db", r->output.dir);
        r->output.store = resolve_path("/", rel);
        free(rel);
    }
    if (!state_of(c, "data.cache_dir")->set) r->data.cache_dir = xasprintf("%s/cache", r->output.dir);
    if (r->train.steps == MT_RECIPE_UNSET && r->train.epochs == MT_RECIPE_UNSET) r->train.epochs = 1;
    if (state_of(c, "train.warmup_ratio")->set && !state_of(c, "train.warmup_steps")->set)
        r->train.warmup_steps = MT_RECIPE_UNSET;
    if (r->train.warmup_steps == MT_RECIPE_UNSET && r->train.warmup_ratio == MT_RECIPE_UNSET)
        r->train.warmup_steps = 0;
}

/* Where each method's data comes from, and what its keys need of each other. */
static void method_rules(rctx *c) {
    mt_recipe *r = c->r;
    loc none = {SRC_FILE, 0, 0};
    bool pairs = r->method == MT_RECIPE_METHOD_DPO || r->method == MT_RECIPE_METHOD_SIMPO ||
                 r->method == MT_RECIPE_METHOD_ORPO || r->method == MT_RECIPE_METHOD_REWARD;
    bool rl = r->method == MT_RECIPE_METHOD_GRPO || r->method == MT_RECIPE_METHOD_PPO;
    key_state *train = state_of(c, "data.train"), *dp = state_of(c, "data.pairs");
    if (pairs && r->data.pairs && r->data.train.n)
        diag(c, dp->at, "data.pairs", "give data.pairs (a dataset in the store) or data.train (files), not both");
    else if (r->data.train.n == 0 && !r->data.pairs && !train->seen && !dp->seen)
        diag(c, none, "data.train", pairs ? "required, but not given (or name a pair dataset with data.pairs)"
                                          : "required, but not given");
    if (r->data.pairs && r->data.eval.n)
        diag(c, state_of(c, "data.eval")->at, "data.eval",
             "a pair dataset brings its own eval split; data.eval applies to data.train files");
    if (r->data.pairs && r->data.eval_split > 0)
        diag(c, state_of(c, "data.eval_split")->at, "data.eval_split",
             "a pair dataset's split was fixed when it was imported (moetune pairs import --eval-fraction)");
    if (r->model.quantize != MT_RECIPE_QUANT_NONE && r->adapter.type == MT_RECIPE_ADAPTER_NONE)
        diag(c, state_of(c, "model.quantize")->at, "model.quantize",
             "full fine-tuning trains every weight in fp32; quantise the frozen base of a LoRA run only");
    if (r->method == MT_RECIPE_METHOD_REWARD && r->adapter.type == MT_RECIPE_ADAPTER_NONE)
        diag(c, state_of(c, "adapter.type")->at, "adapter.type",
             "a reward model is a LoRA adapter plus its score head (exported as a PEFT SEQ_CLS adapter): use lora");
    if (r->method == MT_RECIPE_METHOD_DPO) {
        if (r->pref.loss_weights.n && r->pref.loss_weights.n != r->pref.loss_type.n)
            diag(c, state_of(c, "pref.loss_weights")->at, "pref.loss_weights", "%zu weights for %zu loss types",
                 r->pref.loss_weights.n, r->pref.loss_type.n);
        else if (r->pref.loss_type.n > 0) {
            mt_dpo_config d;
            mt_dpo_config_default(&d);
            d.n_terms = (int)(r->pref.loss_type.n < MT_DPO_MAX_TERMS ? r->pref.loss_type.n : MT_DPO_MAX_TERMS + 1);
            bool parsed = d.n_terms <= MT_DPO_MAX_TERMS;
            for (int i = 0; parsed && i < d.n_terms; i++) {
                mt_error e = {0};
                parsed = mt_dpo_loss_parse(r->pref.loss_type.items[i], &d.types[i], &e) == MT_OK;
                d.weights[i] = r->pref.loss_weights.n ? r->pref.loss_weights.values[i] : 1.0;
            }
            d.beta = r->pref.beta;
            d.label_smoothing = r->pref.label_smoothing;
            d.discopop_tau = r->pref.discopop_tau;
            d.f_divergence = (mt_dpo_fdiv)r->pref.f_divergence;
            d.f_alpha = r->pref.f_alpha;
            mt_error e = {0};
            if (!parsed)
                diag(c, state_of(c, "pref.loss_type")->at, "pref.loss_type", "at most %d losses", MT_DPO_MAX_TERMS);
            else if (mt_dpo_config_check(&d, &e) != MT_OK)
                diag(c, state_of(c, "pref.loss_type")->at, "pref", "%s", e.msg);
        } else {
            diag(c, state_of(c, "pref.loss_type")->at, "pref.loss_type", "give at least one loss type");
        }
    }
    bool ref = r->method == MT_RECIPE_METHOD_DPO || rl;
    if (ref && r->reference.model == MT_RECIPE_REF_ADAPTER && !r->reference.adapter)
        diag(c, state_of(c, "reference.model")->at, "reference.adapter",
             "reference.model is adapter: name the frozen reference adapter's folder");
    if (ref && r->reference.model == MT_RECIPE_REF_BASE && r->reference.adapter)
        diag(c, state_of(c, "reference.adapter")->at, "reference.adapter",
             "given, but reference.model is base (set reference.model: adapter to use it)");
    if (rl) {
        if (!r->reward.model && r->reward.rules.n == 0)
            diag(c, none, "reward", "%s needs rewards: reward.model (a reward model's folder) or reward.rules",
                 r->method == MT_RECIPE_METHOD_GRPO ? "grpo" : "ppo");
        for (size_t i = 0; i < r->reward.rules.n; i++) {
            mt_reward_rule rule;
            char why[256];
            mt_reward_rules *compiled = NULL;
            mt_error e = {0};
            if (!mt_reward_rule_spec_parse(r->reward.rules.items[i], &rule, why, sizeof why))
                diag(c, state_of(c, "reward.rules")->at, "reward.rules", "[%zu] \"%s\": %s", i,
                     r->reward.rules.items[i], why);
            else if (mt_reward_rules_compile(&rule, 1, &compiled, &e) != MT_OK)
                diag(c, state_of(c, "reward.rules")->at, "reward.rules", "[%zu]: %s", i, e.msg);
            mt_reward_rules_free(compiled);
        }
        /* full fine-tuning leaves no unchanged copy of the base for a reference pass */
        if (r->adapter.type == MT_RECIPE_ADAPTER_NONE) {
            if (r->method == MT_RECIPE_METHOD_PPO && r->ppo.kl_coef > 0)
                diag(c, state_of(c, "adapter.type")->at, "adapter.type",
                     "ppo's KL penalty compares with the base, and full fine-tuning changes the base weights "
                     "themselves (a reference adapter sits on them too): train LoRA, or set ppo.kl_coef: 0");
            if (r->method == MT_RECIPE_METHOD_GRPO && r->grpo.beta > 0)
                diag(c, state_of(c, "adapter.type")->at, "adapter.type",
                     "grpo.beta's KL compares with the base, and full fine-tuning changes the base weights "
                     "themselves (a reference adapter sits on them too): train LoRA, or set grpo.beta: 0");
        }
        size_t fns = (r->reward.model ? 1 : 0) + r->reward.rules.n;
        if (r->reward.weights.n && r->reward.weights.n != fns)
            diag(c, state_of(c, "reward.weights")->at, "reward.weights",
                 "%zu weights for %zu reward functions (the reward model first, then each rule)", r->reward.weights.n,
                 fns);
        if (r->method == MT_RECIPE_METHOD_GRPO && r->rollout.num_generations < 2)
            diag(c, state_of(c, "rollout.num_generations")->at, "rollout.num_generations",
                 "grpo compares completions within a group: at least 2");
        if (r->rollout.temperature <= 0)
            diag(c, state_of(c, "rollout.temperature")->at, "rollout.temperature",
                 "the policy's log-probs are those of the sampling distribution at this temperature: it must be "
                 "above 0 (top_k: 1 samples greedily)");
    }
}

static void check_rules(rctx *c) {
    mt_recipe *r = c->r;
    for (size_t i = 0; i < mt_recipe_n_keys; i++) {
        const mt_rkey *k = &mt_recipe_keys[i];
        if (k->flags & MT_RKEY_REQUIRED) {
            bool missing = k->type == MT_RKEY_PATHS ? ((mt_recipe_list *)field(r, k))->n == 0
                                                     : *(char **)field(r, k) == NULL;
            /* a given but invalid value has been reported already */
            if (missing && !c->ks[i].seen) {
                loc at = {SRC_FILE, 0, 0};
                diag(c, at, k->path, "required, but not given");
            }
        }
        if (c->ks[i].set && !mt_rkey_applies(k, r)) {
            const char *eq = strchr(k->only_if, '=');
            char cond[64];
            snprintf(cond, sizeof cond, "%.*s", (int)(eq - k->only_if), k->only_if);
            const mt_rkey *ck = mt_rkey_find(cond);
            /* `--set adapter.type=none` on a LoRA recipe: the override wins, the file's LoRA keys
             * are moot rather than wrong */
            if (c->ks[i].at.src == SRC_FILE && c->ks[key_index(ck)].at.src == SRC_SET) continue;
            diag(c, c->ks[i].at, k->path, "applies only when %s is %s (here it is %s)", cond, eq + 1,
                 ck->names[*(int *)field(r, ck)]);
        }
    }
    method_rules(c);
    key_state *steps = state_of(c, "train.steps"), *epochs = state_of(c, "train.epochs");
    if (steps->set && epochs->set) diag(c, epochs->at, "train.epochs", "give train.steps or train.epochs, not both");
    key_state *wsteps = state_of(c, "train.warmup_steps"), *wratio = state_of(c, "train.warmup_ratio");
    if (wsteps->set && wratio->set)
        diag(c, wratio->at, "train.warmup_ratio", "give train.warmup_steps or train.warmup_ratio, not both");
    if (r->train.steps > 0 && r->train.warmup_steps > 0 && r->train.warmup_steps >= r->train.steps)
        diag(c, wsteps->set ? wsteps->at : steps->at, "train.warmup_steps", "%d must be less than train.steps (%d)",
             r->train.warmup_steps, r->train.steps);
    if (r->data.eval_split > 0 && r->data.eval.n > 0)
        diag(c, state_of(c, "data.eval_split")->at, "data.eval_split",
             "%g holds out part of train, but data.eval already gives eval files; drop one", r->data.eval_split);
    for (size_t i = 0; i < r->data.eval.n; i++)
        for (size_t j = 0; j < r->data.train.n; j++)
            if (!strcmp(r->data.eval.items[i], r->data.train.items[j]))
                diag(c, state_of(c, "data.eval")->at, "data.eval", "%s is also in data.train",
                     r->data.eval.items[i]);
}

/* --strict: what the run will open must be there. */
static void check_paths(rctx *c) {
    mt_recipe *r = c->r;
    if (r->model.path) {
        char p[4096];
        if (!mt_is_dir(r->model.path))
            diag(c, state_of(c, "model.path")->at, "model.path", "%s is not a folder", r->model.path);
        else if (!mt_path_join(p, sizeof p, r->model.path, "config.json") || !mt_path_exists(p))
            diag(c, state_of(c, "model.path")->at, "model.path", "%s has no config.json", r->model.path);
        key_state *tk = state_of(c, "model.tokenizer");
        if (r->model.tokenizer &&
            (!mt_path_join(p, sizeof p, r->model.tokenizer, "tokenizer.json") || !mt_path_exists(p)))
            diag(c, tk->set ? tk->at : state_of(c, "model.path")->at, "model.tokenizer", "%s has no tokenizer.json",
                 r->model.tokenizer);
    }
    const char *lists[] = {"data.train", "data.eval"};
    for (size_t l = 0; l < 2; l++) {
        const mt_recipe_list *lst = field(r, mt_rkey_find(lists[l]));
        for (size_t i = 0; i < lst->n; i++)
            if (!mt_path_exists(lst->items[i]))
                diag(c, state_of(c, lists[l])->at, lists[l], "%s does not exist", lst->items[i]);
    }
}

/* ---- public ---- */

void mt_recipe_free(mt_recipe *r) {
    if (!r) return;
    for (size_t i = 0; i < mt_recipe_n_keys; i++) {
        const mt_rkey *k = &mt_recipe_keys[i];
        switch (k->type) {
        case MT_RKEY_STRING:
        case MT_RKEY_PATH: free(*(char **)field(r, k)); break;
        case MT_RKEY_PATHS:
        case MT_RKEY_NAMES: list_free(field(r, k)); break;
        case MT_RKEY_INT_MAP:
        case MT_RKEY_FLOAT_MAP: map_free(field(r, k)); break;
        case MT_RKEY_FLOATS: free(((mt_recipe_numbers *)field(r, k))->values); break;
        default: break;
        }
    }
    memset(r, 0, sizeof *r);
}

void mt_recipe_diags_free(mt_recipe_diags *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) free(d->msgs[i]);
    free(d->msgs);
    d->msgs = NULL;
    d->n = 0;
}

static char *folder_of(const char *file, const char *cwd) {
    const char *slash = strrchr(file, '/');
    char *dir;
    if (!slash)
        dir = mt_xstrdup(".");
    else if (slash == file)
        dir = mt_xstrdup("/");
    else {
        dir = mt_xmalloc((size_t)(slash - file) + 1);
        memcpy(dir, file, (size_t)(slash - file));
        dir[slash - file] = '\0';
    }
    /* realpath, so that a recipe reached through a symlinked folder still names real paths */
    char *real = realpath(dir, NULL);
    if (!real) real = resolve_path(cwd, dir);
    free(dir);
    return real;
}

mt_status mt_recipe_validate(const char *path, const char *const *overrides, size_t n_overrides,
                             const mt_recipe_load_opts *opts, mt_recipe *out, mt_recipe_diags *diags,
                             mt_error *err) {
    MT_ASSERT(path && out);
    mt_recipe_diags local = {0};
    if (!diags) diags = &local;
    *diags = (mt_recipe_diags){0};

    mt_recipe r;
    memset(&r, 0, sizeof r);
    rctx c;
    memset(&c, 0, sizeof c);
    c.r = &r;
    c.file = path;
    c.diags = diags;
    c.ks = mt_xcalloc(mt_recipe_n_keys, sizeof *c.ks);
    c.cwd = getcwd(NULL, 0);
    if (!c.cwd) c.cwd = mt_xstrdup("/");
    c.file_dir = folder_of(path, c.cwd);

    apply_defaults(&c);

    mt_status st = MT_OK;
    char *text = NULL;
    size_t len = 0;
    mt_error rerr = {0};
    if (!mt_path_exists(path)) {
        loc at = {SRC_FILE, 0, 0};
        diag(&c, at, NULL, "no such recipe file");
        st = MT_ERR_NOT_FOUND;
    } else if (mt_read_file(path, &text, &len, &rerr) != MT_OK) {
        loc at = {SRC_FILE, 0, 0};
        const char *colon = strstr(rerr.msg, ": ");
        diag(&c, at, NULL, "cannot read the recipe: %s", colon ? colon + 2 : rerr.msg);
        st = MT_ERR_IO;
    } else if (len > MAX_RECIPE_BYTES) {
        loc at = {SRC_FILE, 0, 0};
        diag(&c, at, NULL, "%zu bytes is too large for a recipe (at most %u)", len, MAX_RECIPE_BYTES);
        st = MT_ERR_FORMAT;
    } else {
        apply_file(&c, text, len);
    }
    free(text);
    for (size_t i = 0; i < n_overrides; i++) apply_override(&c, overrides[i]);

    /* Rules across keys and derived defaults only make sense over a whole, readable recipe. */
    if (st == MT_OK && !c.format_error) {
        derive_defaults(&c);
        check_rules(&c);
        if (opts && opts->check_paths && diags->n == 0) check_paths(&c);
    }
    if (c.n_dropped) {
        diags->msgs = mt_xrealloc(diags->msgs, (diags->n + 1) * sizeof *diags->msgs);
        diags->msgs[diags->n++] = xasprintf("%s: %zu more problems not shown", c.file, c.n_dropped);
    }
    if (diags->n > 0 && st == MT_OK) st = c.format_error ? MT_ERR_FORMAT : MT_ERR_INVALID;

    if (st != MT_OK) {
        char joined[sizeof err->msg];
        size_t used = 0, shown = 0;
        joined[0] = '\0';
        for (size_t i = 0; i < diags->n; i++) {
            size_t need = strlen(diags->msgs[i]) + (i ? 1 : 0);
            if (used + need + 48 >= sizeof joined && i > 0) break;
            used += (size_t)snprintf(joined + used, sizeof joined - used, "%s%s", i ? "\n" : "", diags->msgs[i]);
            if (used >= sizeof joined) used = sizeof joined - 1;
            shown++;
        }
        if (shown < diags->n)
            snprintf(joined + used, sizeof joined - used, "\n(%zu more problems)", diags->n - shown);
        mt_error_set(err, st, "%s", joined);
        mt_recipe_free(&r);
    } else {
        *out = r;
    }
    mt_recipe_diags_free(&local);
    free(c.ks);
    free(c.cwd);
    free(c.file_dir);
    return st;
}

mt_status mt_recipe_load(const char *path, const char *const *overrides, size_t n_overrides, mt_recipe *out,
                         mt_error *err) {
    return mt_recipe_validate(path, overrides, n_overrides, NULL, out, NULL, err);
}
