/* jinja_value.c — the values chat templates compute with, behaving as their Python originals do
 * under jinja2: the render arena, UTF-8 strings, truthiness, ==, ordering, str()/repr(), and
 * json.dumps/json.loads (tojson output and the variables callers pass in). */
#include "jinja-impl.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- errors and arena ---- */

_Noreturn void jj_fail(jj_ctx *c, mt_status code, int line, const char *fmt, ...) {
    char what[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    c->code = code;
    if (line > 0)
        snprintf(c->msg, sizeof c->msg, "chat template line %d: %s", line, what);
    else
        snprintf(c->msg, sizeof c->msg, "chat template: %s", what);
    longjmp(c->jmp, 1);
}

struct jj_chunk {
    jj_chunk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
};

void *jj_alloc(jj_ctx *c, size_t n) {
    n = (n + 15) & ~(size_t)15;
    jj_chunk *h = c->arena.head;
    if (!h || h->cap - h->used < n) {
        size_t cap = n > ((size_t)1 << 20) ? n : ((size_t)1 << 20);
        size_t limit = c->max_arena ? c->max_arena : JJ_MAX_ARENA;
        if (cap > limit || c->arena.total > limit - cap)
            jj_fail(c, MT_ERR_NOMEM, 0, "rendering needs more than %zu MiB", limit >> 20);
        h = malloc(sizeof *h + cap);
        if (!h) jj_fail(c, MT_ERR_NOMEM, 0, "out of memory");
        h->cap = cap;
        h->used = 0;
        h->next = c->arena.head;
        c->arena.head = h;
        c->arena.total += cap;
    }
    void *p = h->data + h->used;
    h->used += n;
    memset(p, 0, n);
    return p;
}

void jj_arena_free(jj_arena *a) {
    for (jj_chunk *h = a->head, *next; h; h = next) {
        next = h->next;
        free(h);
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- strings and UTF-8 ---- */

jstr jj_str(jj_ctx *c, const char *p, size_t n) {
    char *d = jj_alloc(c, n + 1);
    if (n) memcpy(d, p, n);
    return (jstr){d, n};
}

jstr jj_cstr(const char *s) { return (jstr){s, strlen(s)}; }

bool jj_str_eq(jstr a, const char *s) {
    /* one pass, stopping at the first difference: the parser and evaluator call this a lot */
    for (size_t i = 0; i < a.n; i++)
        if (!s[i] || s[i] != a.p[i]) return false;
    return !s[a.n];
}

uint32_t jj_utf8_next(const char *p, size_t n, size_t *i) {
    const unsigned char *s = (const unsigned char *)p + *i;
    size_t left = n - *i;
    uint32_t c = s[0];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 1 || len == 0 || len > left) {
        *i += 1;
        return c;
    }
    uint32_t cp = c & (0x7f >> len);
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80) {
            *i += 1;
            return c;
        }
        cp = (cp << 6) | (s[k] & 0x3f);
    }
    *i += len;
    return cp;
}

size_t jj_utf8_put(char *dst, uint32_t cp) {
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (char)(0xc0 | (cp >> 6));
        dst[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (char)(0xe0 | (cp >> 12));
        dst[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        dst[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    dst[0] = (char)(0xf0 | (cp >> 18));
    dst[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    dst[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

size_t jj_utf8_len(jstr s) {
    size_t n = 0;
    for (size_t i = 0; i < s.n; n++) jj_utf8_next(s.p, s.n, &i);
    return n;
}

bool jj_isspace(uint32_t cp) {
    if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20);
    return cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

void jj_buf_put(jj_ctx *c, jbuf *b, const char *p, size_t n) {
    if (b->cap - b->n < n + 1) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->n < n + 1) cap *= 2;
        char *q = jj_alloc(c, cap);
        if (b->n) memcpy(q, b->p, b->n);
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
}

void jj_buf_puts(jj_ctx *c, jbuf *b, const char *s) { jj_buf_put(c, b, s, strlen(s)); }

void jj_buf_printf(jj_ctx *c, jbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    jj_buf_put(c, b, tmp, n < 0 ? 0 : (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

jstr jj_buf_str(const jbuf *b) { return (jstr){b->p ? b->p : "", b->n}; }

/* ---- containers ---- */

jlist *jj_list_new(jj_ctx *c, size_t cap) {
    jlist *l = jj_alloc(c, sizeof *l);
    if (cap) {
        l->v = jj_alloc(c, cap * sizeof(jv));
        l->cap = cap;
    }
    return l;
}

/* A namespace counts as a leaf: == compares it by identity, and it never nests in JSON. */
static int value_depth(jv v) { return v.t == JV_LIST ? v.l->depth : v.t == JV_DICT ? v.d->depth : 0; }

/* Twice the parser's limit: scopes and namespaces holding the deepest JSON value must fit. */
#define JJ_MAX_VALUE_DEPTH (2 * JJ_MAX_DEPTH)

static int deepen(jj_ctx *c, int depth, jv v) {
    int d = value_depth(v) + 1;
    if (d <= depth) return depth;
    if (d > JJ_MAX_VALUE_DEPTH)
        jj_fail(c, MT_ERR_INVALID, 0, "a value is nested more than %d levels deep", JJ_MAX_VALUE_DEPTH);
    return d;
}

void jj_list_push(jj_ctx *c, jlist *l, jv v) {
    l->depth = deepen(c, l->depth, v);
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 4;
        jv *nv = jj_alloc(c, cap * sizeof(jv));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

jdict *jj_dict_new(jj_ctx *c) { return jj_alloc(c, sizeof(jdict)); }

jv *jj_dict_find(const jdict *d, jv key) {
    for (size_t i = 0; i < d->n; i++)
        if (jj_equal(d->k[i], key)) return &d->v[i];
    return NULL;
}

void jj_dict_set(jj_ctx *c, jdict *d, jv key, jv val) {
    d->depth = deepen(c, deepen(c, d->depth, key), val);
    jv *slot = jj_dict_find(d, key);
    if (slot) {
        *slot = val;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 4;
        jv *nk = jj_alloc(c, cap * sizeof(jv)), *nv = jj_alloc(c, cap * sizeof(jv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jv));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n++] = val;
}

/* ---- Python semantics ---- */

const char *const jj_func_names[JF_COUNT] = {"range", "namespace", "dict", "raise_exception", "strftime_now"};

const char *jj_type_name(jv v) {
    switch (v.t) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return v.l->tuple ? "tuple" : "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_LOOP: return "LoopContext";
    case JV_FUNC: return "function";
    case JV_METHOD: return "builtin_function_or_method";
    }
    return "object";
}

bool jj_truthy(jv v) {
    switch (v.t) {
    case JV_UNDEF:
    case JV_NONE: return false;
    case JV_BOOL: return v.b;
    case JV_INT: return v.i != 0;
    case JV_FLOAT: return v.f != 0.0;
    case JV_STR: return v.s.n != 0;
    case JV_LIST: return v.l->n != 0;
    case JV_DICT: return v.d->n != 0;
    default: return true;
    }
}

static bool is_num(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static double num_f(jv v) { return v.t == JV_FLOAT ? v.f : v.t == JV_INT ? (double)v.i : (double)v.b; }

bool jj_equal(jv a, jv b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) {
            int64_t x = a.t == JV_INT ? a.i : a.b, y = b.t == JV_INT ? b.i : b.b;
            return x == y;
        }
        return num_f(a) == num_f(b);
    }
    if (a.t != b.t) return false;
    switch (a.t) {
    case JV_UNDEF:
    case JV_NONE: return true;
    case JV_STR: return a.s.n == b.s.n && !memcmp(a.s.p, b.s.p, a.s.n);
    case JV_LIST:
        if (a.l->tuple != b.l->tuple || a.l->n != b.l->n) return false;
        for (size_t i = 0; i < a.l->n; i++)
            if (!jj_equal(a.l->v[i], b.l->v[i])) return false;
        return true;
    case JV_DICT:
        if (a.d->n != b.d->n) return false;
        for (size_t i = 0; i < a.d->n; i++) {
            const jv *o = jj_dict_find(b.d, a.d->k[i]);
            if (!o || !jj_equal(a.d->v[i], *o)) return false;
        }
        return true;
    case JV_NS: return a.d == b.d;
    case JV_LOOP: return a.loop == b.loop;
    case JV_FUNC: return a.fn == b.fn;
    case JV_METHOD: return a.m == b.m;
    default: return false;
    }
}

int jj_compare(jj_ctx *c, int line, jv a, jv b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) {
            int64_t x = a.t == JV_INT ? a.i : a.b, y = b.t == JV_INT ? b.i : b.b;
            return (x > y) - (x < y);
        }
        double x = num_f(a), y = num_f(b);
        return (x > y) - (x < y);
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        /* UTF-8 byte order is code point order, which is how Python orders str */
        size_t n = a.s.n < b.s.n ? a.s.n : b.s.n;
        int r = n ? memcmp(a.s.p, b.s.p, n) : 0;
        if (r) return r < 0 ? -1 : 1;
        return (a.s.n > b.s.n) - (a.s.n < b.s.n);
    }
    if (a.t == JV_LIST && b.t == JV_LIST && a.l->tuple == b.l->tuple) {
        for (size_t i = 0; i < a.l->n && i < b.l->n; i++)
            if (!jj_equal(a.l->v[i], b.l->v[i])) return jj_compare(c, line, a.l->v[i], b.l->v[i]);
        return (a.l->n > b.l->n) - (a.l->n < b.l->n);
    }
    if (a.t == JV_UNDEF || b.t == JV_UNDEF)
        jj_fail(c, MT_ERR_INVALID, line, "%s", a.t == JV_UNDEF ? a.undef : b.undef);
    jj_fail(c, MT_ERR_INVALID, line, "'<' not supported between instances of '%s' and '%s'", jj_type_name(a),
            jj_type_name(b));
}

/* Python's float repr: the shortest digits that round-trip, fixed notation for decimal exponents
 * in [-4, 16), scientific otherwise. */
void jj_float_repr(char out[32], double f) {
    if (isnan(f)) {
        strcpy(out, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(out, f < 0 ? "-inf" : "inf");
        return;
    }
    char sci[40];
    for (int prec = 0; prec < 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec, f);
        if (strtod(sci, NULL) == f) break;
    }
    /* sci is [-]d[.ddd]e[+-]xx */
    const char *p = sci;
    bool neg = *p == '-';
    if (neg) p++;
    char digits[24];
    size_t nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int exp = atoi(p + 1);
    char *o = out;
    if (neg) *o++ = '-';
    if (exp >= -4 && exp < 16) {
        if (exp < 0) {
            *o++ = '0';
            *o++ = '.';
            for (int k = -1; k > exp; k--) *o++ = '0';
            memcpy(o, digits, nd);
            o += nd;
        } else {
            for (int k = 0; k <= exp; k++) *o++ = (size_t)k < nd ? digits[k] : '0';
            *o++ = '.';
            if ((size_t)exp + 1 < nd) {
                memcpy(o, digits + exp + 1, nd - (size_t)exp - 1);
                o += nd - (size_t)exp - 1;
            } else
                *o++ = '0';
        }
        *o = 0;
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, nd - 1);
            o += nd - 1;
        }
        sprintf(o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    }
}

/* repr(str): single quotes unless the text has ' and no ", printable characters kept. */
static void write_str_repr(jj_ctx *c, jbuf *b, jstr s) {
    bool has_sq = memchr(s.p, '\'', s.n) != NULL, has_dq = memchr(s.p, '"', s.n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    jj_buf_put(c, b, &q, 1);
    for (size_t i = 0; i < s.n;) {
        size_t start = i;
        uint32_t cp = jj_utf8_next(s.p, s.n, &i);
        char esc[16];
        if (cp == (uint32_t)q || cp == '\\') {
            esc[0] = '\\';
            esc[1] = (char)cp;
            jj_buf_put(c, b, esc, 2);
        } else if (cp == '\n')
            jj_buf_puts(c, b, "\\n");
        else if (cp == '\r')
            jj_buf_puts(c, b, "\\r");
        else if (cp == '\t')
            jj_buf_puts(c, b, "\\t");
        else if (cp < 0x20 || cp == 0x7f)
            jj_buf_printf(c, b, "\\x%02x", cp);
        else if (cp < 0x80)
            jj_buf_put(c, b, s.p + start, 1);
        else {
            utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
            bool printable = !(cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF ||
                               cat == UTF8PROC_CATEGORY_CS || cat == UTF8PROC_CATEGORY_CO ||
                               cat == UTF8PROC_CATEGORY_CN || cat == UTF8PROC_CATEGORY_ZL ||
                               cat == UTF8PROC_CATEGORY_ZP || cat == UTF8PROC_CATEGORY_ZS);
            if (printable)
                jj_buf_put(c, b, s.p + start, i - start);
            else if (cp < 0x100)
                jj_buf_printf(c, b, "\\x%02x", cp);
            else if (cp < 0x10000)
                jj_buf_printf(c, b, "\\u%04x", cp);
            else
                jj_buf_printf(c, b, "\\U%08x", cp);
        }
    }
    jj_buf_put(c, b, &q, 1);
}

static void write_any(jj_ctx *c, jbuf *b, int line, jv v, bool repr, int depth) {
    if (depth > JJ_MAX_DEPTH) jj_fail(c, MT_ERR_INVALID, line, "value nested too deeply to print");
    char num[32];
    switch (v.t) {
    case JV_UNDEF:
        if (repr) jj_buf_puts(c, b, "Undefined");
        return;
    case JV_NONE: jj_buf_puts(c, b, "None"); return;
    case JV_BOOL: jj_buf_puts(c, b, v.b ? "True" : "False"); return;
    case JV_INT: jj_buf_printf(c, b, "%lld", (long long)v.i); return;
    case JV_FLOAT:
        jj_float_repr(num, v.f);
        jj_buf_puts(c, b, num);
        return;
    case JV_STR:
        if (repr)
            write_str_repr(c, b, v.s);
        else
            jj_buf_put(c, b, v.s.p, v.s.n);
        return;
    case JV_LIST:
        jj_buf_puts(c, b, v.l->tuple ? "(" : "[");
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) jj_buf_puts(c, b, ", ");
            write_any(c, b, line, v.l->v[i], true, depth + 1);
        }
        jj_buf_puts(c, b, v.l->tuple ? (v.l->n == 1 ? ",)" : ")") : "]");
        return;
    case JV_DICT:
    case JV_NS:
        if (v.t == JV_NS) jj_buf_puts(c, b, "<Namespace ");
        jj_buf_puts(c, b, "{");
        for (size_t i = 0; i < v.d->n; i++) {
            if (i) jj_buf_puts(c, b, ", ");
            write_any(c, b, line, v.d->k[i], true, depth + 1);
            jj_buf_puts(c, b, ": ");
            write_any(c, b, line, v.d->v[i], true, depth + 1);
        }
        jj_buf_puts(c, b, v.t == JV_NS ? "}>" : "}");
        return;
    case JV_LOOP:
        jj_buf_printf(c, b, "<LoopContext %zu/%zu>", v.loop->index0 + 1, v.loop->items->n);
        return;
    case JV_FUNC:
    case JV_METHOD:
        /* Python prints a memory address here, which no template can mean to output */
        jj_fail(c, MT_ERR_INVALID, line, "cannot print the function '%s'",
                v.t == JV_FUNC ? jj_func_names[v.fn] : v.m->name);
    }
}

void jj_write_str(jj_ctx *c, jbuf *b, int line, jv v) { write_any(c, b, line, v, false, 0); }
void jj_write_repr(jj_ctx *c, jbuf *b, int line, jv v) { write_any(c, b, line, v, true, 0); }

jstr jj_to_str(jj_ctx *c, int line, jv v) {
    if (v.t == JV_STR) return v.s;
    jbuf b = {0};
    jj_write_str(c, &b, line, v);
    return jj_buf_str(&b);
}

/* ---- json.dumps ---- */

static void json_string(jj_ctx *c, jbuf *b, jstr s, bool ensure_ascii) {
    jj_buf_puts(c, b, "\"");
    for (size_t i = 0; i < s.n;) {
        size_t start = i;
        uint32_t cp = jj_utf8_next(s.p, s.n, &i);
        switch (cp) {
        case '"': jj_buf_puts(c, b, "\\\""); continue;
        case '\\': jj_buf_puts(c, b, "\\\\"); continue;
        case '\n': jj_buf_puts(c, b, "\\n"); continue;
        case '\r': jj_buf_puts(c, b, "\\r"); continue;
        case '\t': jj_buf_puts(c, b, "\\t"); continue;
        case '\b': jj_buf_puts(c, b, "\\b"); continue;
        case '\f': jj_buf_puts(c, b, "\\f"); continue;
        default: break;
        }
        if (cp < 0x20 || (ensure_ascii && cp >= 0x7f)) {
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                jj_buf_printf(c, b, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
            } else
                jj_buf_printf(c, b, "\\u%04x", cp);
        } else
            jj_buf_put(c, b, s.p + start, i - start);
    }
    jj_buf_puts(c, b, "\"");
}

static void json_newline(jj_ctx *c, jbuf *b, const jj_json_opts *o, int level) {
    jj_buf_puts(c, b, "\n");
    for (int k = 0; k < level; k++) jj_buf_put(c, b, o->indent, o->indent_len);
}

static void json_float(jj_ctx *c, jbuf *b, double f) {
    char num[32];
    if (isnan(f))
        strcpy(num, "NaN");
    else if (isinf(f))
        strcpy(num, f < 0 ? "-Infinity" : "Infinity");
    else
        jj_float_repr(num, f);
    jj_buf_puts(c, b, num);
}

/* A dict key as json.dumps turns it into a string. */
static jstr json_key(jj_ctx *c, int line, jv k) {
    char num[32];
    switch (k.t) {
    case JV_STR: return k.s;
    case JV_INT: snprintf(num, sizeof num, "%lld", (long long)k.i); return jj_str(c, num, strlen(num));
    case JV_FLOAT: jj_float_repr(num, k.f); return jj_str(c, num, strlen(num));
    case JV_BOOL: return jj_cstr(k.b ? "true" : "false");
    case JV_NONE: return jj_cstr("null");
    default:
        jj_fail(c, MT_ERR_INVALID, line, "keys must be str, int, float, bool or None, not %s", jj_type_name(k));
    }
}

static void json_any(jj_ctx *c, jbuf *b, int line, jv v, const jj_json_opts *o, int level) {
    if (level > JJ_MAX_DEPTH) jj_fail(c, MT_ERR_INVALID, line, "value nested too deeply for tojson");
    switch (v.t) {
    case JV_NONE: jj_buf_puts(c, b, "null"); return;
    case JV_BOOL: jj_buf_puts(c, b, v.b ? "true" : "false"); return;
    case JV_INT: jj_buf_printf(c, b, "%lld", (long long)v.i); return;
    case JV_FLOAT: json_float(c, b, v.f); return;
    case JV_STR: json_string(c, b, v.s, o->ensure_ascii); return;
    case JV_LIST:
        if (!v.l->n) {
            jj_buf_puts(c, b, "[]");
            return;
        }
        jj_buf_puts(c, b, "[");
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) jj_buf_put(c, b, o->item_sep.p, o->item_sep.n);
            if (o->indent) json_newline(c, b, o, level + 1);
            json_any(c, b, line, v.l->v[i], o, level + 1);
        }
        if (o->indent) json_newline(c, b, o, level);
        jj_buf_puts(c, b, "]");
        return;
    case JV_DICT: {
        if (!v.d->n) {
            jj_buf_puts(c, b, "{}");
            return;
        }
        size_t n = v.d->n;
        size_t *order = jj_alloc(c, n * sizeof *order);
        jstr *keys = jj_alloc(c, n * sizeof *keys);
        for (size_t i = 0; i < n; i++) {
            order[i] = i;
            keys[i] = json_key(c, line, v.d->k[i]);
        }
        if (o->sort_keys) {
            for (size_t i = 0; i < n; i++)
                if (v.d->k[i].t != v.d->k[0].t || (v.d->k[i].t != JV_STR && v.d->k[i].t != JV_INT &&
                                                   v.d->k[i].t != JV_FLOAT))
                    jj_fail(c, MT_ERR_INVALID, line, "tojson(sort_keys=true) needs keys of one orderable type");
            for (size_t i = 1; i < n; i++) /* insertion sort: stable, and dicts are small */
                for (size_t j = i; j > 0 && jj_compare(c, line, v.d->k[order[j - 1]], v.d->k[order[j]]) > 0; j--) {
                    size_t t = order[j];
                    order[j] = order[j - 1];
                    order[j - 1] = t;
                }
        }
        jj_buf_puts(c, b, "{");
        for (size_t i = 0; i < n; i++) {
            if (i) jj_buf_put(c, b, o->item_sep.p, o->item_sep.n);
            if (o->indent) json_newline(c, b, o, level + 1);
            json_string(c, b, keys[order[i]], o->ensure_ascii);
            jj_buf_put(c, b, o->key_sep.p, o->key_sep.n);
            json_any(c, b, line, v.d->v[order[i]], o, level + 1);
        }
        if (o->indent) json_newline(c, b, o, level);
        jj_buf_puts(c, b, "}");
        return;
    }
    case JV_UNDEF:
        jj_fail(c, MT_ERR_INVALID, line, "Object of type Undefined is not JSON serializable (%s)", v.undef);
    default:
        jj_fail(c, MT_ERR_INVALID, line, "Object of type %s is not JSON serializable", jj_type_name(v));
    }
}

void jj_json_dump(jj_ctx *c, jbuf *b, int line, jv v, const jj_json_opts *o) { json_any(c, b, line, v, o, 0); }

/* ---- json.loads ---- */

typedef struct jparse {
    jj_ctx *c;
    const char *p;
    size_t n, i;
    int depth;
} jparse;

_Noreturn static void jp_fail(jparse *jp, const char *what) {
    int line = 1;
    for (size_t k = 0; k < jp->i && k < jp->n; k++) line += jp->p[k] == '\n';
    jj_fail(jp->c, MT_ERR_FORMAT, 0, "template variables (JSON) line %d: %s", line, what);
}

static void jp_ws(jparse *jp) {
    while (jp->i < jp->n && jp->p[jp->i] && strchr(" \t\r\n", jp->p[jp->i])) jp->i++;
}

static bool jp_lit(jparse *jp, const char *lit) {
    size_t n = strlen(lit);
    if (jp->n - jp->i >= n && !memcmp(jp->p + jp->i, lit, n)) {
        jp->i += n;
        return true;
    }
    return false;
}

static unsigned jp_hex4(jparse *jp) {
    if (jp->n - jp->i < 4) jp_fail(jp, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char ch = jp->p[jp->i++];
        v <<= 4;
        if (ch >= '0' && ch <= '9')
            v |= (unsigned)(ch - '0');
        else if ((ch | 32) >= 'a' && (ch | 32) <= 'f')
            v |= (unsigned)((ch | 32) - 'a' + 10);
        else
            jp_fail(jp, "bad \\u escape");
    }
    return v;
}

static jstr jp_string(jparse *jp) {
    jp->i++; /* opening quote */
    jbuf b = {0};
    for (;;) {
        if (jp->i >= jp->n) jp_fail(jp, "unterminated string");
        unsigned char ch = (unsigned char)jp->p[jp->i];
        if (ch == '"') {
            jp->i++;
            break;
        }
        if (ch < 0x20) jp_fail(jp, "control character in string");
        if (ch != '\\') {
            size_t start = jp->i;
            while (jp->i < jp->n && jp->p[jp->i] != '"' && jp->p[jp->i] != '\\' &&
                   (unsigned char)jp->p[jp->i] >= 0x20)
                jp->i++;
            jj_buf_put(jp->c, &b, jp->p + start, jp->i - start);
            continue;
        }
        if (++jp->i >= jp->n) jp_fail(jp, "unterminated string");
        char e = jp->p[jp->i++], u[4];
        switch (e) {
        case '"': jj_buf_put(jp->c, &b, "\"", 1); break;
        case '\\': jj_buf_put(jp->c, &b, "\\", 1); break;
        case '/': jj_buf_put(jp->c, &b, "/", 1); break;
        case 'b': jj_buf_put(jp->c, &b, "\b", 1); break;
        case 'f': jj_buf_put(jp->c, &b, "\f", 1); break;
        case 'n': jj_buf_put(jp->c, &b, "\n", 1); break;
        case 'r': jj_buf_put(jp->c, &b, "\r", 1); break;
        case 't': jj_buf_put(jp->c, &b, "\t", 1); break;
        case 'u': {
            uint32_t cp = jp_hex4(jp);
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (!jp_lit(jp, "\\u")) jp_fail(jp, "lone surrogate in string");
                uint32_t lo = jp_hex4(jp);
                if (lo < 0xdc00 || lo >= 0xe000) jp_fail(jp, "lone surrogate in string");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000)
                jp_fail(jp, "lone surrogate in string");
            jj_buf_put(jp->c, &b, u, jj_utf8_put(u, cp));
            break;
        }
        default: jp_fail(jp, "bad escape in string");
        }
    }
    return jj_buf_str(&b);
}

static jv jp_value(jparse *jp) {
    if (++jp->depth > JJ_MAX_DEPTH) jp_fail(jp, "nested too deeply");
    jp_ws(jp);
    if (jp->i >= jp->n) jp_fail(jp, "unexpected end of input");
    char ch = jp->p[jp->i];
    jv v;
    if (ch == '{') {
        jp->i++;
        jdict *d = jj_dict_new(jp->c);
        jp_ws(jp);
        if (jp->i < jp->n && jp->p[jp->i] == '}')
            jp->i++;
        else
            for (;;) {
                jp_ws(jp);
                if (jp->i >= jp->n || jp->p[jp->i] != '"') jp_fail(jp, "expected a string key");
                jv key = jv_str(jp_string(jp));
                jp_ws(jp);
                if (jp->i >= jp->n || jp->p[jp->i] != ':') jp_fail(jp, "expected ':'");
                jp->i++;
                jj_dict_set(jp->c, d, key, jp_value(jp));
                jp_ws(jp);
                if (jp->i < jp->n && jp->p[jp->i] == ',') {
                    jp->i++;
                    continue;
                }
                if (jp->i < jp->n && jp->p[jp->i] == '}') {
                    jp->i++;
                    break;
                }
                jp_fail(jp, "expected ',' or '}'");
            }
        v = jv_dict(d);
    } else if (ch == '[') {
        jp->i++;
        jlist *l = jj_list_new(jp->c, 0);
        jp_ws(jp);
        if (jp->i < jp->n && jp->p[jp->i] == ']')
            jp->i++;
        else
            for (;;) {
                jj_list_push(jp->c, l, jp_value(jp));
                jp_ws(jp);
                if (jp->i < jp->n && jp->p[jp->i] == ',') {
                    jp->i++;
                    continue;
                }
                if (jp->i < jp->n && jp->p[jp->i] == ']') {
                    jp->i++;
                    break;
                }
                jp_fail(jp, "expected ',' or ']'");
            }
        v = jv_list(l);
    } else if (ch == '"')
        v = jv_str(jp_string(jp));
    else if (jp_lit(jp, "true"))
        v = jv_bool(true);
    else if (jp_lit(jp, "false"))
        v = jv_bool(false);
    else if (jp_lit(jp, "null"))
        v = jv_none();
    else if (ch == '-' || (ch >= '0' && ch <= '9')) {
        size_t start = jp->i;
        bool is_float = false;
        if (jp->p[jp->i] == '-') jp->i++;
        while (jp->i < jp->n && jp->p[jp->i] && strchr("0123456789.eE+-", jp->p[jp->i])) {
            if (strchr(".eE", jp->p[jp->i])) is_float = true;
            jp->i++;
        }
        char num[64];
        size_t len = jp->i - start;
        if (len >= sizeof num) jp_fail(jp, "number too long");
        memcpy(num, jp->p + start, len);
        num[len] = 0;
        char *end;
        if (is_float) {
            v = jv_float(strtod(num, &end));
        } else {
            errno = 0;
            long long x = strtoll(num, &end, 10);
            if (errno == ERANGE) jp_fail(jp, "integer out of range");
            v = jv_int(x);
        }
        if (*end) jp_fail(jp, "malformed number");
    } else
        jp_fail(jp, "unexpected character");
    jp->depth--;
    return v;
}

jv jj_json_parse(jj_ctx *c, const char *text, size_t len) {
    jparse jp = {c, text, len, 0, 0};
    jv v = jp_value(&jp);
    jp_ws(&jp);
    if (jp.i != jp.n) jp_fail(&jp, "extra data after the value");
    return v;
}
