/* jinja_builtins.c — the filters, tests, global functions and str/dict/list methods chat templates
 * call, each giving what its Python original gives (jinja2 3.1's filters.py and tests.py under
 * ImmutableSandboxedEnvironment, CPython's str methods, transformers' tojson and globals). */
#define _POSIX_C_SOURCE 200809L /* localtime_r */
#include "jinja-impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

/* ---- call arguments ---- */

typedef struct jargs {
    const jv *pos;
    size_t n_pos;
    const jstr *kw_names;
    const jv *kw_vals;
    size_t n_kw;
} jargs;

/* Binds arguments to parameters as Python does. given[k] says whether out[k] was passed. */
static void bind(jj_eval *e, int line, const char *fname, const char *const *params, size_t n_params,
                 size_t n_required, const jargs *a, jv *out, bool *given) {
    for (size_t k = 0; k < n_params; k++) {
        given[k] = false;
        out[k] = jv_none();
    }
    if (a->n_pos > n_params)
        jj_fail(e->c, MT_ERR_INVALID, line, "%s() takes at most %zu argument%s (%zu given)", fname, n_params,
                n_params == 1 ? "" : "s", a->n_pos);
    for (size_t k = 0; k < a->n_pos; k++) {
        out[k] = a->pos[k];
        given[k] = true;
    }
    for (size_t k = 0; k < a->n_kw; k++) {
        size_t p = 0;
        while (p < n_params && !jj_str_eq(a->kw_names[k], params[p])) p++;
        if (p == n_params)
            jj_fail(e->c, MT_ERR_INVALID, line, "%s() got an unexpected keyword argument '%.*s'", fname,
                    (int)(a->kw_names[k].n < 80 ? a->kw_names[k].n : 80), a->kw_names[k].p);
        if (given[p]) jj_fail(e->c, MT_ERR_INVALID, line, "%s() got multiple values for argument '%s'", fname, params[p]);
        out[p] = a->kw_vals[k];
        given[p] = true;
    }
    for (size_t k = 0; k < n_required; k++)
        if (!given[k]) jj_fail(e->c, MT_ERR_INVALID, line, "%s() missing required argument '%s'", fname, params[k]);
}

_Noreturn static void fail_undef(jj_eval *e, int line, jv v) { jj_fail(e->c, MT_ERR_INVALID, line, "%s", v.undef); }

static bool is_intlike(jv v) { return v.t == JV_INT || v.t == JV_BOOL; }
static int64_t as_int(jv v) { return v.t == JV_INT ? v.i : v.b; }

static int64_t want_int(jj_eval *e, int line, jv v, const char *what) {
    if (v.t == JV_UNDEF) fail_undef(e, line, v);
    if (!is_intlike(v))
        jj_fail(e->c, MT_ERR_INVALID, line, "%s must be an integer, not '%s'", what, jj_type_name(v));
    return as_int(v);
}

static jstr want_str(jj_eval *e, int line, jv v, const char *what) {
    if (v.t == JV_UNDEF) fail_undef(e, line, v);
    if (v.t != JV_STR) jj_fail(e->c, MT_ERR_INVALID, line, "%s must be str, not %s", what, jj_type_name(v));
    return v.s;
}

/* ---- code points ---- */

/* The code points of s, and the byte offset of each (offs has n+1 entries). */
typedef struct cps {
    uint32_t *cp;
    size_t *offs;
    size_t n;
} cps;

static cps decode(jj_ctx *c, jstr s) {
    cps r = {0};
    r.cp = jj_alloc(c, (s.n + 1) * sizeof *r.cp);
    r.offs = jj_alloc(c, (s.n + 1) * sizeof *r.offs);
    size_t i = 0;
    while (i < s.n) {
        r.offs[r.n] = i;
        r.cp[r.n++] = jj_utf8_next(s.p, s.n, &i);
    }
    r.offs[r.n] = s.n;
    return r;
}

static jstr sub(jstr s, const cps *d, size_t a, size_t b) { return (jstr){s.p + d->offs[a], d->offs[b] - d->offs[a]}; }

static void put_cp(jj_ctx *c, jbuf *b, uint32_t cp) {
    char u[4];
    jj_buf_put(c, b, u, jj_utf8_put(u, cp));
}

static bool valid_cp(uint32_t cp) { return cp <= 0x10ffff; }
static uint32_t to_upper(uint32_t cp) { return valid_cp(cp) ? (uint32_t)utf8proc_toupper((utf8proc_int32_t)cp) : cp; }
static uint32_t to_lower(uint32_t cp) { return valid_cp(cp) ? (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp) : cp; }
static uint32_t to_title(uint32_t cp) { return valid_cp(cp) ? (uint32_t)utf8proc_totitle((utf8proc_int32_t)cp) : cp; }
static utf8proc_category_t category(uint32_t cp) {
    return valid_cp(cp) ? utf8proc_category((utf8proc_int32_t)cp) : UTF8PROC_CATEGORY_CN;
}
static bool is_cased(uint32_t cp) {
    utf8proc_category_t k = category(cp);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}
static bool is_alpha(uint32_t cp) {
    utf8proc_category_t k = category(cp);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT ||
           k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_LO;
}
static bool is_decimal(uint32_t cp) { return category(cp) == UTF8PROC_CATEGORY_ND; }
static bool is_digit(uint32_t cp) {
    /* Python's isdigit also takes superscripts and circled digits (Numeric_Type=Digit) */
    return is_decimal(cp) || (cp >= 0xb2 && cp <= 0xb3) || cp == 0xb9 || (cp >= 0x2070 && cp <= 0x2079 && cp != 0x2071 && cp != 0x2072 && cp != 0x2073) ||
           (cp >= 0x2080 && cp <= 0x2089) || (cp >= 0x2460 && cp <= 0x2468) || (cp >= 0x2474 && cp <= 0x247c) ||
           (cp >= 0x2488 && cp <= 0x2490) || cp == 0x24ea || (cp >= 0x2776 && cp <= 0x277e) ||
           (cp >= 0x2780 && cp <= 0x2788) || (cp >= 0x278a && cp <= 0x2792);
}
static bool is_numeric(uint32_t cp) {
    utf8proc_category_t k = category(cp);
    return is_digit(cp) || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

static jstr str_map(jj_ctx *c, jstr s, uint32_t (*f)(uint32_t)) {
    jbuf b = {0};
    jj_buf_put(c, &b, "", 0);
    for (size_t i = 0; i < s.n;) {
        uint32_t cp = jj_utf8_next(s.p, s.n, &i);
        if (f == to_upper && cp == 0xdf)
            jj_buf_puts(c, &b, "SS"); /* the one full case mapping templates meet: German sharp s */
        else
            put_cp(c, &b, f(cp));
    }
    return jj_buf_str(&b);
}

static jstr str_upper(jj_ctx *c, jstr s) { return str_map(c, s, to_upper); }
static jstr str_lower(jj_ctx *c, jstr s) { return str_map(c, s, to_lower); }

/* Python's str.capitalize: the first character in title case, the rest lower case. */
static jstr str_capitalize(jj_ctx *c, jstr s) {
    jbuf b = {0};
    jj_buf_put(c, &b, "", 0);
    bool first = true;
    for (size_t i = 0; i < s.n;) {
        uint32_t cp = jj_utf8_next(s.p, s.n, &i);
        put_cp(c, &b, first ? to_title(cp) : to_lower(cp));
        first = false;
    }
    return jj_buf_str(&b);
}

/* Python's str.title: a cased character after a cased one goes lower case, otherwise title case. */
static jstr str_title(jj_ctx *c, jstr s) {
    jbuf b = {0};
    jj_buf_put(c, &b, "", 0);
    bool prev_cased = false;
    for (size_t i = 0; i < s.n;) {
        uint32_t cp = jj_utf8_next(s.p, s.n, &i);
        put_cp(c, &b, prev_cased ? to_lower(cp) : to_title(cp));
        prev_cased = is_cased(cp);
    }
    return jj_buf_str(&b);
}

static bool in_chars(uint32_t cp, const cps *chars) {
    if (!chars) return jj_isspace(cp);
    for (size_t k = 0; k < chars->n; k++)
        if (chars->cp[k] == cp) return true;
    return false;
}

/* str.strip/lstrip/rstrip: which = 1 left, 2 right, 3 both; chars NULL strips whitespace. */
static jstr str_strip(jj_ctx *c, jstr s, const jstr *chars, int which) {
    cps d = decode(c, s), set = {0};
    if (chars) set = decode(c, *chars);
    size_t a = 0, b = d.n;
    if (which & 1)
        while (a < b && in_chars(d.cp[a], chars ? &set : NULL)) a++;
    if (which & 2)
        while (b > a && in_chars(d.cp[b - 1], chars ? &set : NULL)) b--;
    return sub(s, &d, a, b);
}

/* Byte offset of needle in hay at or after byte `from` (and ending by `to`), or -1. */
static int64_t find_bytes(jstr hay, jstr needle, size_t from, size_t to, bool last) {
    if (to > hay.n) to = hay.n;
    if (from > to || needle.n > to - from) return -1;
    if (!last) {
        for (size_t i = from; i + needle.n <= to; i++)
            if (!memcmp(hay.p + i, needle.p, needle.n)) return (int64_t)i;
    } else {
        for (size_t i = to - needle.n + 1; i-- > from;)
            if (!memcmp(hay.p + i, needle.p, needle.n)) return (int64_t)i;
    }
    return -1;
}

static jv str_split(jj_eval *e, int line, jstr s, const jv *sep_v, int64_t maxsplit, bool from_right) {
    jj_ctx *c = e->c;
    jlist *out = jj_list_new(c, 0);
    if (sep_v && sep_v->t != JV_NONE) {
        jstr sep = want_str(e, line, *sep_v, "separator");
        if (!sep.n) jj_fail(c, MT_ERR_INVALID, line, "empty separator");
        if (!from_right) {
            size_t start = 0;
            int64_t at;
            while ((maxsplit < 0 || (int64_t)out->n < maxsplit) && (at = find_bytes(s, sep, start, s.n, false)) >= 0) {
                jj_list_push(c, out, jv_str((jstr){s.p + start, (size_t)at - start}));
                start = (size_t)at + sep.n;
            }
            jj_list_push(c, out, jv_str((jstr){s.p + start, s.n - start}));
            return jv_list(out);
        }
        jlist *rev = jj_list_new(c, 0);
        size_t end = s.n;
        int64_t at;
        while ((maxsplit < 0 || (int64_t)rev->n < maxsplit) && (at = find_bytes(s, sep, 0, end, true)) >= 0) {
            jj_list_push(c, rev, jv_str((jstr){s.p + at + sep.n, end - (size_t)at - sep.n}));
            end = (size_t)at;
        }
        jj_list_push(c, rev, jv_str((jstr){s.p, end}));
        for (size_t k = rev->n; k-- > 0;) jj_list_push(c, out, rev->v[k]);
        return jv_list(out);
    }
    /* runs of whitespace; leading and trailing whitespace gives no empty strings */
    cps d = decode(c, s);
    if (!from_right) {
        size_t i = 0;
        for (;;) {
            while (i < d.n && jj_isspace(d.cp[i])) i++;
            if (i == d.n) break;
            if (maxsplit >= 0 && (int64_t)out->n == maxsplit) {
                /* the remainder keeps its trailing whitespace, as CPython's does */
                jj_list_push(c, out, jv_str(sub(s, &d, i, d.n)));
                break;
            }
            size_t j = i;
            while (j < d.n && !jj_isspace(d.cp[j])) j++;
            jj_list_push(c, out, jv_str(sub(s, &d, i, j)));
            i = j;
        }
        return jv_list(out);
    }
    jlist *rev = jj_list_new(c, 0);
    size_t i = d.n;
    for (;;) {
        while (i > 0 && jj_isspace(d.cp[i - 1])) i--;
        if (!i) break;
        if (maxsplit >= 0 && (int64_t)rev->n == maxsplit) {
            jj_list_push(c, rev, jv_str(sub(s, &d, 0, i)));
            break;
        }
        size_t j = i;
        while (j > 0 && !jj_isspace(d.cp[j - 1])) j--;
        jj_list_push(c, rev, jv_str(sub(s, &d, j, i)));
        i = j;
    }
    for (size_t k = rev->n; k-- > 0;) jj_list_push(c, out, rev->v[k]);
    return jv_list(out);
}

static bool is_line_break(uint32_t cp) {
    return cp == '\n' || cp == '\r' || cp == 0x0b || cp == 0x0c || cp == 0x1c || cp == 0x1d || cp == 0x1e ||
           cp == 0x85 || cp == 0x2028 || cp == 0x2029;
}

static jv str_splitlines(jj_ctx *c, jstr s, bool keepends) {
    cps d = decode(c, s);
    jlist *out = jj_list_new(c, 0);
    size_t i = 0;
    while (i < d.n) {
        size_t j = i;
        while (j < d.n && !is_line_break(d.cp[j])) j++;
        size_t end = j;
        if (j < d.n) j += d.cp[j] == '\r' && j + 1 < d.n && d.cp[j + 1] == '\n' ? 2 : 1;
        jj_list_push(c, out, jv_str(sub(s, &d, i, keepends ? j : end)));
        i = j;
    }
    return jv_list(out);
}

static jstr str_replace(jj_ctx *c, jstr s, jstr old, jstr new, int64_t count) {
    jbuf b = {0};
    jj_buf_put(c, &b, "", 0);
    if (!old.n) {
        /* an empty needle matches before every character and at the end */
        size_t i = 0;
        int64_t done = 0;
        while (count < 0 || done < count) {
            jj_buf_put(c, &b, new.p, new.n);
            done++;
            if (i >= s.n) return jj_buf_str(&b);
            size_t start = i;
            jj_utf8_next(s.p, s.n, &i);
            jj_buf_put(c, &b, s.p + start, i - start);
        }
        jj_buf_put(c, &b, s.p + i, s.n - i);
        return jj_buf_str(&b);
    }
    size_t start = 0;
    int64_t at, done = 0;
    while ((count < 0 || done < count) && (at = find_bytes(s, old, start, s.n, false)) >= 0) {
        jj_buf_put(c, &b, s.p + start, (size_t)at - start);
        jj_buf_put(c, &b, new.p, new.n);
        start = (size_t)at + old.n;
        done++;
    }
    jj_buf_put(c, &b, s.p + start, s.n - start);
    return jj_buf_str(&b);
}

/* CPython's ADJUST_INDICES for optional start/end code point indices: a start past the end
 * stays there (*a > *b then means an empty window that matches nothing). */
static void adjust_range(const jv *start, const jv *end, size_t n, size_t *a, size_t *b) {
    int64_t L = (int64_t)n, x = 0, y = L;
    if (start && start->t != JV_NONE) {
        x = as_int(*start);
        if (x < 0 && (x += L) < 0) x = 0;
        if (x > L) x = L + 1;
    }
    if (end && end->t != JV_NONE) {
        y = as_int(*end);
        if (y < 0 && (y += L) < 0) y = 0;
        if (y > L) y = L;
    }
    *a = (size_t)x;
    *b = (size_t)y;
}

/* ---- str.format (the sandbox's safe formatter): fields {} {0} {name} with !r/!s and simple specs ---- */

static void format_spec(jj_eval *e, int line, jbuf *b, jv v, jstr spec) {
    if (!spec.n) {
        jj_write_str(e->c, b, line, v);
        return;
    }
    /* [[fill]align][sign][0][width][,][.precision][type] */
    size_t i = 0;
    uint32_t fill = ' ';
    char align = 0, sign = 0, type = 0;
    size_t k = 0;
    uint32_t first = jj_utf8_next(spec.p, spec.n, &k);
    if (k < spec.n && spec.p[k] && strchr("<>^=", spec.p[k])) {
        fill = first;
        align = spec.p[k];
        i = k + 1;
    } else if (spec.p[0] && strchr("<>^=", spec.p[0])) {
        align = spec.p[0];
        i = 1;
    }
    if (i < spec.n && spec.p[i] && strchr("+- ", spec.p[i])) sign = spec.p[i++];
    bool zero = false;
    if (i < spec.n && spec.p[i] == '0') {
        zero = true;
        i++;
    }
    long width = 0, prec = -1;
    while (i < spec.n && spec.p[i] >= '0' && spec.p[i] <= '9' && width < 100000) width = width * 10 + (spec.p[i++] - '0');
    if (i < spec.n && spec.p[i] == '.') {
        i++;
        if (!(i < spec.n && spec.p[i] >= '0' && spec.p[i] <= '9'))
            jj_fail(e->c, MT_ERR_INVALID, line, "Format specifier missing precision");
        prec = 0;
        while (i < spec.n && spec.p[i] >= '0' && spec.p[i] <= '9' && prec < 1000) prec = prec * 10 + (spec.p[i++] - '0');
    }
    bool has_type = i < spec.n;
    if (has_type) type = spec.p[i++];
    /* CPython stores "no type" as a NUL, and its float formatter cannot tell the two apart */
    if (has_type && !type && v.t == JV_FLOAT) has_type = false;
    if (i != spec.n || (has_type && (!type || !strchr("sdfeg%", type))))
        jj_fail(e->c, MT_ERR_UNSUPPORTED, line, "format spec '%.*s' is not supported", (int)(spec.n < 40 ? spec.n : 40),
                spec.p);
    if (v.t == JV_STR && (align == '=' || sign))
        jj_fail(e->c, MT_ERR_INVALID, line, "%s not allowed in string format specifier",
                align == '=' ? "'=' alignment" : "Sign");
    /* a leading 0 pads numbers after their sign with zeros, and strings with zeros on the right */
    if (zero && !align) {
        fill = '0';
        align = v.t == JV_STR ? '<' : '=';
    }
    jbuf body = {0};
    jj_buf_put(e->c, &body, "", 0);
    bool numeric = v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
    if ((type == 's' && v.t != JV_STR) || (type && type != 's' && !numeric) || (type == 'd' && v.t == JV_FLOAT))
        jj_fail(e->c, MT_ERR_INVALID, line, "unknown format code '%c' for object of type '%s'", type, jj_type_name(v));
    if (v.t == JV_STR) {
        jstr s = v.s;
        if (prec >= 0) {
            cps d = decode(e->c, s);
            if ((size_t)prec < d.n) s = sub(s, &d, 0, (size_t)prec);
        }
        jj_buf_put(e->c, &body, s.p, s.n);
        if (!align) align = '<';
    } else if (numeric) {
        char num[400];
        double f = v.t == JV_FLOAT ? v.f : (double)as_int(v);
        if (type == 'f' || type == 'e' || type == 'g' || type == '%' || (v.t == JV_FLOAT && prec >= 0)) {
            char t = type && type != '%' ? type : (type == '%' ? 'f' : 'g');
            if (type == '%') f *= 100.0;
            snprintf(num, sizeof num, "%.*f", (int)(prec < 0 ? 6 : prec), f);
            if (t != 'f') snprintf(num, sizeof num, t == 'e' ? "%.*e" : "%.*g", (int)(prec < 0 ? 6 : prec), f);
            if (type == '%') strcat(num, "%");
        } else if (v.t == JV_FLOAT)
            jj_float_repr(num, f);
        else
            snprintf(num, sizeof num, "%lld", (long long)as_int(v));
        const char *digits = num;
        if (num[0] == '-')
            digits++, jj_buf_put(e->c, &body, "-", 1);
        else if (sign == '+' || sign == ' ')
            jj_buf_put(e->c, &body, &sign, 1);
        if (align == '=') {
            /* padding goes between the sign and the digits */
            size_t nd = strlen(digits), have = body.n + nd;
            for (size_t p = have; p < (size_t)width; p++) put_cp(e->c, &body, fill);
            jj_buf_puts(e->c, &body, digits);
            jj_buf_put(e->c, b, body.p, body.n);
            return;
        }
        jj_buf_puts(e->c, &body, digits);
        if (!align) align = '>';
    } else
        jj_fail(e->c, MT_ERR_INVALID, line, "unsupported format string passed to %s.__format__", jj_type_name(v));
    size_t len = jj_utf8_len(jj_buf_str(&body));
    size_t pad = (size_t)width > len ? (size_t)width - len : 0;
    size_t left = align == '>' ? pad : align == '^' ? pad / 2 : 0;
    for (size_t p = 0; p < left; p++) put_cp(e->c, b, fill);
    jj_buf_put(e->c, b, body.p, body.n);
    for (size_t p = left; p < pad; p++) put_cp(e->c, b, fill);
}

static jv str_format(jj_eval *e, int line, jstr fmt, const jargs *a) {
    jbuf b = {0};
    jj_buf_put(e->c, &b, "", 0);
    size_t auto_idx = 0;
    int numbering = 0; /* 1 automatic {}, 2 manual {0}: Python refuses a mix */
    for (size_t i = 0; i < fmt.n;) {
        char ch = fmt.p[i];
        if (ch == '}') {
            if (i + 1 < fmt.n && fmt.p[i + 1] == '}') {
                jj_buf_put(e->c, &b, "}", 1);
                i += 2;
                continue;
            }
            jj_fail(e->c, MT_ERR_INVALID, line, "Single '}' encountered in format string");
        }
        if (ch != '{') {
            jj_buf_put(e->c, &b, &ch, 1);
            i++;
            continue;
        }
        if (i + 1 < fmt.n && fmt.p[i + 1] == '{') {
            jj_buf_put(e->c, &b, "{", 1);
            i += 2;
            continue;
        }
        size_t j = i + 1;
        while (j < fmt.n && fmt.p[j] != '}' && fmt.p[j] != '{') j++;
        if (j >= fmt.n || fmt.p[j] != '}') jj_fail(e->c, MT_ERR_INVALID, line, "expected '}' before end of string");
        jstr field = {fmt.p + i + 1, j - i - 1}, spec = {"", 0};
        const char *colon = memchr(field.p, ':', field.n);
        if (colon) {
            spec = (jstr){colon + 1, field.n - (size_t)(colon + 1 - field.p)};
            field.n = (size_t)(colon - field.p);
        }
        char conv = 0;
        const char *bang = memchr(field.p, '!', field.n);
        if (bang) {
            if ((size_t)(bang - field.p) + 2 != field.n || (bang[1] != 'r' && bang[1] != 's'))
                jj_fail(e->c, MT_ERR_UNSUPPORTED, line, "format conversion not supported");
            conv = bang[1];
            field.n = (size_t)(bang - field.p);
        }
        jv v;
        bool is_index = !field.n || (field.p[0] >= '0' && field.p[0] <= '9');
        if (is_index && numbering && numbering != (field.n ? 2 : 1))
            jj_fail(e->c, MT_ERR_INVALID, line, "cannot switch from %s field specification to %s field numbering",
                    numbering == 1 ? "automatic" : "manual", numbering == 1 ? "manual" : "automatic");
        if (is_index) numbering = field.n ? 2 : 1;
        if (!field.n) {
            if (auto_idx >= a->n_pos)
                jj_fail(e->c, MT_ERR_INVALID, line, "Replacement index %zu out of range for positional args tuple", auto_idx);
            v = a->pos[auto_idx++];
        } else if (field.p[0] >= '0' && field.p[0] <= '9') {
            size_t idx = 0;
            for (size_t k = 0; k < field.n; k++) {
                if (field.p[k] < '0' || field.p[k] > '9' || idx > 1000000)
                    jj_fail(e->c, MT_ERR_UNSUPPORTED, line, "format field '%.*s' not supported", (int)field.n, field.p);
                idx = idx * 10 + (size_t)(field.p[k] - '0');
            }
            if (idx >= a->n_pos)
                jj_fail(e->c, MT_ERR_INVALID, line, "Replacement index %zu out of range for positional args tuple", idx);
            v = a->pos[idx];
        } else {
            size_t k = 0;
            while (k < a->n_kw && !(a->kw_names[k].n == field.n && !memcmp(a->kw_names[k].p, field.p, field.n))) k++;
            if (k == a->n_kw) jj_fail(e->c, MT_ERR_INVALID, line, "KeyError: '%.*s'", (int)field.n, field.p);
            v = a->kw_vals[k];
        }
        if (conv == 'r') {
            jbuf r = {0};
            jj_write_repr(e->c, &r, line, v);
            v = jv_str(jj_buf_str(&r));
        } else if (conv == 's')
            v = jv_str(jj_to_str(e->c, line, v));
        format_spec(e, line, &b, v, spec);
        i = j + 1;
    }
    return jv_str(jj_buf_str(&b));
}

/* ---- methods ---- */

static const char *const str_methods[] = {
    "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith", "upper",
    "lower", "title", "capitalize", "replace", "find", "rfind", "index", "rindex", "count", "join",
    "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "isnumeric", "isdecimal", "format",
    NULL,
};
static const char *const dict_methods[] = {"get", "items", "keys", "values", NULL};
static const char *const list_methods[] = {"index", "count", NULL};
/* ImmutableSandboxedEnvironment refuses the methods that change a list or dict in place. */
static const char *const list_mutators[] = {"append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear", NULL};
static const char *const dict_mutators[] = {"clear", "pop", "popitem", "setdefault", "update", NULL};

static bool in_names(const char *const *names, jstr name) {
    for (int k = 0; names[k]; k++)
        if (jj_str_eq(name, names[k])) return true;
    return false;
}

bool jj_has_method(jv self, jstr name) {
    switch (self.t) {
    case JV_STR: return in_names(str_methods, name);
    case JV_DICT: return in_names(dict_methods, name);
    case JV_LIST: return in_names(list_methods, name);
    default: return false;
    }
}

bool jj_is_unsafe_attr(jv self, jstr name) {
    /* dunders exist on every Python object; other underscore names fall through to item lookup */
    if (name.n > 4 && !memcmp(name.p, "__", 2) && !memcmp(name.p + name.n - 2, "__", 2))
        return self.t == JV_STR || self.t == JV_LIST || self.t == JV_DICT;
    if (self.t == JV_LIST) return in_names(list_mutators, name);
    if (self.t == JV_DICT) return in_names(dict_mutators, name);
    return false;
}

static bool str_pred(jstr s, int which) {
    /* 0 isdigit 1 isalpha 2 isalnum 3 isspace 4 isnumeric 5 isdecimal */
    if (!s.n) return false;
    for (size_t i = 0; i < s.n;) {
        uint32_t cp = jj_utf8_next(s.p, s.n, &i);
        bool ok;
        switch (which) {
        case 0: ok = is_digit(cp); break;
        case 1: ok = is_alpha(cp); break;
        case 2: ok = is_alpha(cp) || is_numeric(cp); break;
        case 3: ok = jj_isspace(cp); break;
        case 4: ok = is_numeric(cp); break;
        default: ok = is_decimal(cp); break;
        }
        if (!ok) return false;
    }
    return true;
}

/* islower/isupper: at least one cased character, and none of the other case. */
static bool str_case_is(jstr s, bool upper) {
    bool cased = false;
    for (size_t i = 0; i < s.n;) {
        uint32_t cp = jj_utf8_next(s.p, s.n, &i);
        utf8proc_category_t k = category(cp);
        if (k == UTF8PROC_CATEGORY_LT) return false;
        if (k == UTF8PROC_CATEGORY_LU) {
            if (!upper) return false;
            cased = true;
        } else if (k == UTF8PROC_CATEGORY_LL) {
            if (upper) return false;
            cased = true;
        }
    }
    return cased;
}

static bool starts_or_ends(jj_eval *e, int line, jstr s, jv affix, const jv *start, const jv *end, bool ends,
                           const char *fname) {
    cps d = decode(e->c, s);
    size_t a, b;
    if (start && start->t != JV_NONE) want_int(e, line, *start, "start");
    if (end && end->t != JV_NONE) want_int(e, line, *end, "end");
    adjust_range(start, end, d.n, &a, &b);
    if (affix.t != JV_STR && !(affix.t == JV_LIST && affix.l->tuple))
        jj_fail(e->c, MT_ERR_INVALID, line, "%s first arg must be str or a tuple of str, not %s", fname,
                jj_type_name(affix));
    if (a > b) return false;
    jstr win = sub(s, &d, a, b);
    if (affix.t == JV_LIST) {
        for (size_t k = 0; k < affix.l->n; k++) {
            jstr x = want_str(e, line, affix.l->v[k], "tuple for startswith/endswith");
            if (x.n <= win.n && !memcmp(ends ? win.p + win.n - x.n : win.p, x.p, x.n)) return true;
        }
        return false;
    }
    return affix.s.n <= win.n && !memcmp(ends ? win.p + win.n - affix.s.n : win.p, affix.s.p, affix.s.n);
}

static jv str_method(jj_eval *e, int line, jstr s, const char *name, const jargs *a) {
    jj_ctx *c = e->c;
    jv v[4];
    bool g[4];
#define BIND(...)                                                                              \
    do {                                                                                       \
        static const char *const p_[] = {__VA_ARGS__};                                         \
        bind(e, line, name, p_, sizeof p_ / sizeof *p_, 0, a, v, g);                           \
    } while (0)
#define BIND_REQ(nreq, ...)                                                                    \
    do {                                                                                       \
        static const char *const p_[] = {__VA_ARGS__};                                         \
        bind(e, line, name, p_, sizeof p_ / sizeof *p_, nreq, a, v, g);                        \
    } while (0)
#define BIND_NONE() bind(e, line, name, NULL, 0, 0, a, v, g)

    if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
        BIND("chars");
        int which = name[0] == 'l' ? 1 : name[0] == 'r' ? 2 : 3;
        if (g[0] && v[0].t != JV_NONE) {
            jstr chars = want_str(e, line, v[0], "strip arg");
            return jv_str(str_strip(c, s, &chars, which));
        }
        return jv_str(str_strip(c, s, NULL, which));
    }
    if (!strcmp(name, "split") || !strcmp(name, "rsplit")) {
        BIND("sep", "maxsplit");
        int64_t maxsplit = g[1] ? want_int(e, line, v[1], "maxsplit") : -1;
        return str_split(e, line, s, g[0] ? &v[0] : NULL, maxsplit, name[0] == 'r');
    }
    if (!strcmp(name, "splitlines")) {
        BIND("keepends");
        return str_splitlines(c, s, g[0] && want_int(e, line, v[0], "keepends"));
    }
    if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
        BIND_REQ(1, "prefix", "start", "end");
        return jv_bool(starts_or_ends(e, line, s, v[0], g[1] ? &v[1] : NULL, g[2] ? &v[2] : NULL, name[0] == 'e', name));
    }
    if (!strcmp(name, "upper")) {
        BIND_NONE();
        return jv_str(str_upper(c, s));
    }
    if (!strcmp(name, "lower")) {
        BIND_NONE();
        return jv_str(str_lower(c, s));
    }
    if (!strcmp(name, "title")) {
        BIND_NONE();
        return jv_str(str_title(c, s));
    }
    if (!strcmp(name, "capitalize")) {
        BIND_NONE();
        return jv_str(str_capitalize(c, s));
    }
    if (!strcmp(name, "replace")) {
        BIND_REQ(2, "old", "new", "count");
        int64_t count = g[2] ? want_int(e, line, v[2], "count") : -1;
        return jv_str(str_replace(c, s, want_str(e, line, v[0], "replace() argument 1"),
                                  want_str(e, line, v[1], "replace() argument 2"), count));
    }
    if (!strcmp(name, "find") || !strcmp(name, "rfind") || !strcmp(name, "index") || !strcmp(name, "rindex") ||
        !strcmp(name, "count")) {
        BIND_REQ(1, "sub", "start", "end");
        jstr needle = want_str(e, line, v[0], "substring");
        if (g[1] && v[1].t != JV_NONE) want_int(e, line, v[1], "start");
        if (g[2] && v[2].t != JV_NONE) want_int(e, line, v[2], "end");
        cps d = decode(c, s);
        size_t ca, cb;
        adjust_range(g[1] ? &v[1] : NULL, g[2] ? &v[2] : NULL, d.n, &ca, &cb);
        bool from_right = name[0] == 'r';
        if (!strcmp(name, "count")) {
            if (ca > cb) return jv_int(0);
            if (!needle.n) return jv_int((int64_t)(cb - ca) + 1);
            int64_t n = 0, at;
            size_t from = d.offs[ca];
            while ((at = find_bytes(s, needle, from, d.offs[cb], false)) >= 0) {
                n++;
                from = (size_t)at + needle.n;
            }
            return jv_int(n);
        }
        int64_t at = ca <= cb ? find_bytes(s, needle, d.offs[ca], d.offs[cb], from_right) : -1;
        if (at < 0) {
            if (strstr(name, "index")) jj_fail(c, MT_ERR_INVALID, line, "substring not found");
            return jv_int(-1);
        }
        size_t cp_index = 0;
        while (d.offs[cp_index] < (size_t)at) cp_index++;
        return jv_int((int64_t)cp_index);
    }
    if (!strcmp(name, "join")) {
        BIND_REQ(1, "iterable");
        jlist *items = jj_iterate(e, line, v[0]);
        jbuf b = {0};
        jj_buf_put(c, &b, "", 0);
        for (size_t k = 0; k < items->n; k++) {
            if (items->v[k].t != JV_STR)
                jj_fail(c, MT_ERR_INVALID, line, "sequence item %zu: expected str instance, %s found", k,
                        jj_type_name(items->v[k]));
            if (k) jj_buf_put(c, &b, s.p, s.n);
            jj_buf_put(c, &b, items->v[k].s.p, items->v[k].s.n);
        }
        return jv_str(jj_buf_str(&b));
    }
    static const char *const preds[] = {"isdigit", "isalpha", "isalnum", "isspace", "isnumeric", "isdecimal"};
    for (int k = 0; k < 6; k++)
        if (!strcmp(name, preds[k])) {
            BIND_NONE();
            return jv_bool(str_pred(s, k));
        }
    if (!strcmp(name, "islower") || !strcmp(name, "isupper")) {
        BIND_NONE();
        return jv_bool(str_case_is(s, name[2] == 'u'));
    }
    if (!strcmp(name, "format")) return str_format(e, line, s, a);
    jj_fail(c, MT_ERR_INVALID, line, "'str' object has no attribute '%s'", name);
#undef BIND
#undef BIND_REQ
#undef BIND_NONE
}

static jlist *dict_pairs(jj_ctx *c, const jdict *d) {
    jlist *l = jj_list_new(c, d->n);
    for (size_t i = 0; i < d->n; i++) {
        jlist *pair = jj_list_new(c, 2);
        pair->tuple = true;
        jj_list_push(c, pair, d->k[i]);
        jj_list_push(c, pair, d->v[i]);
        jj_list_push(c, l, jv_list(pair));
    }
    return l;
}

static void check_hashable(jj_eval *e, int line, jv key) {
    if (key.t == JV_LIST && !key.l->tuple) jj_fail(e->c, MT_ERR_INVALID, line, "unhashable type: 'list'");
    if (key.t == JV_DICT || key.t == JV_NS) jj_fail(e->c, MT_ERR_INVALID, line, "unhashable type: '%s'", jj_type_name(key));
}

jv jj_call_method(jj_eval *e, int line, jv self, const char *name, const jv *args, size_t n_args,
                  const jstr *kw_names, const jv *kw_vals, size_t n_kw) {
    jargs a = {args, n_args, kw_names, kw_vals, n_kw};
    jj_ctx *c = e->c;
    jv v[2];
    bool g[2];
    if (self.t == JV_STR) return str_method(e, line, self.s, name, &a);
    if (self.t == JV_DICT) {
        if (!strcmp(name, "get")) {
            static const char *const p[] = {"key", "default"};
            bind(e, line, name, p, 2, 1, &a, v, g);
            check_hashable(e, line, v[0]);
            jv *found = jj_dict_find(self.d, v[0]);
            return found ? *found : v[1];
        }
        bind(e, line, name, NULL, 0, 0, &a, v, g);
        if (!strcmp(name, "items")) return jv_list(dict_pairs(c, self.d));
        jlist *l = jj_list_new(c, self.d->n);
        for (size_t i = 0; i < self.d->n; i++) jj_list_push(c, l, name[0] == 'k' ? self.d->k[i] : self.d->v[i]);
        return jv_list(l);
    }
    if (self.t == JV_LIST) {
        static const char *const p[] = {"value"};
        bind(e, line, name, p, 1, 1, &a, v, g);
        int64_t n = 0;
        for (size_t i = 0; i < self.l->n; i++)
            if (jj_equal(self.l->v[i], v[0])) {
                if (!strcmp(name, "index")) return jv_int((int64_t)i);
                n++;
            }
        if (!strcmp(name, "index")) jj_fail(c, MT_ERR_INVALID, line, "list.index(x): x not in list");
        return jv_int(n);
    }
    if (self.t == JV_LOOP && !strcmp(name, "cycle")) {
        if (n_kw) jj_fail(c, MT_ERR_INVALID, line, "loop.cycle() takes no keyword arguments");
        if (!n_args) jj_fail(c, MT_ERR_INVALID, line, "no items for cycling given");
        return args[self.loop->index0 % n_args];
    }
    jj_fail(c, MT_ERR_INVALID, line, "'%s' object has no attribute '%s'", jj_type_name(self), name);
}

/* ---- attribute getter of map/selectattr/join(attribute=) ---- */

static jv get_attr_path(jj_eval *e, int line, jv item, jv attr) {
    if (attr.t != JV_STR) return jj_getitem(e, line, item, attr);
    /* "a.b.0": dotted parts, all-digit parts as integers */
    jstr s = attr.s;
    size_t start = 0;
    for (size_t i = 0; i <= s.n; i++) {
        if (i < s.n && s.p[i] != '.') continue;
        jstr part = {s.p + start, i - start};
        bool digits = part.n > 0;
        int64_t num = 0;
        for (size_t k = 0; k < part.n && digits; k++) {
            if (part.p[k] < '0' || part.p[k] > '9' || num > INT64_MAX / 10 - 10)
                digits = false;
            else
                num = num * 10 + (part.p[k] - '0');
        }
        item = jj_getitem(e, line, item, digits ? jv_int(num) : jv_str(part));
        start = i + 1;
    }
    return item;
}

/* ---- filters and tests by id, on values ---- */

static jv run_filter(jj_eval *e, int line, int id, jv val, const jargs *a);
static bool run_test(jj_eval *e, int line, int id, jv val, const jargs *a);

static jstr soft_str(jj_eval *e, int line, jv v) { return jj_to_str(e->c, line, v); }

static int64_t py_len(jj_eval *e, int line, jv v) {
    switch (v.t) {
    case JV_STR: return (int64_t)jj_utf8_len(v.s);
    case JV_LIST: return (int64_t)v.l->n;
    case JV_DICT: return (int64_t)v.d->n;
    case JV_UNDEF: return 0;
    case JV_LOOP: return (int64_t)v.loop->items->n;
    default: jj_fail(e->c, MT_ERR_INVALID, line, "object of type '%s' has no len()", jj_type_name(v));
    }
}

static int lookup_name(const char *const *names, int count, jv name) {
    if (name.t != JV_STR) return -1;
    for (int k = 0; k < count; k++)
        if (jj_str_eq(name.s, names[k])) return k;
    return -1;
}

/* The whitespace float() and int() strip from text: str.isspace() but for U+001C..U+001F. */
static bool num_space(uint32_t cp) { return jj_isspace(cp) && !(cp >= 0x1c && cp <= 0x1f); }

static jstr num_strip(jstr s) {
    size_t a = 0, b = s.n;
    while (a < b) {
        size_t k = a;
        if (!num_space(jj_utf8_next(s.p, b, &k))) break;
        a = k;
    }
    while (b > a) {
        size_t k = b - 1;
        while (k > a && ((unsigned char)s.p[k] & 0xc0) == 0x80) k--;
        size_t j = k;
        if (!num_space(jj_utf8_next(s.p, b, &j)) || j != b) break;
        b = k;
    }
    return (jstr){s.p + a, b - a};
}

static bool is_ascii_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* Python's float(str): surrounding whitespace, sign, digits with single underscores between
 * digits, inf/infinity/nan in any case. */
static bool parse_py_float(jstr s, double *out) {
    jstr t = num_strip(s);
    if (!t.n || t.n > 300) return false;
    char buf[320];
    size_t k = 0;
    for (size_t i = 0; i < t.n; i++) {
        char ch = t.p[i];
        if (ch == '_') {
            if (!(i > 0 && i + 1 < t.n && is_ascii_digit(t.p[i - 1]) && is_ascii_digit(t.p[i + 1]))) return false;
            continue;
        }
        if (!ch || !strchr("0123456789+-.eEinfatyINFATY", ch)) return false;
        buf[k++] = ch;
    }
    buf[k] = 0;
    const char *p = buf;
    if (*p == '+' || *p == '-') p++;
    if ((*p | 32) == 'i' || (*p | 32) == 'n') {
        char low[16];
        size_t n = strlen(p);
        if (n >= sizeof low) return false;
        for (size_t i = 0; i <= n; i++) low[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] | 32 : p[i]);
        if (strcmp(low, "inf") && strcmp(low, "infinity") && strcmp(low, "nan")) return false;
    } else {
        /* digits and at most one '.', then an optional exponent with digits */
        const char *q = p;
        size_t digits = 0;
        while (is_ascii_digit(*q)) q++, digits++;
        if (*q == '.') {
            q++;
            while (is_ascii_digit(*q)) q++, digits++;
        }
        if (!digits) return false;
        if ((*q | 32) == 'e') {
            q++;
            if (*q == '+' || *q == '-') q++;
            if (!is_ascii_digit(*q)) return false;
            while (is_ascii_digit(*q)) q++;
        }
        if (*q) return false;
    }
    char *end;
    *out = strtod(buf, &end);
    return *end == 0;
}

/* Python's int(str, base): whitespace, sign, optional base prefix, digits with single
 * underscores. Returns 1 on success, 0 when the text is not such a number, -1 when it is
 * one outside int64 (Python would give a big integer). */
static int parse_py_int(jstr s, int64_t base, int64_t *out) {
    jstr t = num_strip(s);
    size_t i = 0;
    bool neg = false;
    if (i < t.n && (t.p[i] == '+' || t.p[i] == '-')) neg = t.p[i++] == '-';
    if (i + 1 < t.n && t.p[i] == '0') {
        char pch = (char)(t.p[i + 1] | 32);
        int pb = pch == 'x' ? 16 : pch == 'o' ? 8 : pch == 'b' ? 2 : 0;
        if (pb && (base == pb || base == 0)) {
            base = pb;
            i += 2;
            if (i < t.n && t.p[i] == '_') i++;
        }
    }
    if (base == 0) {
        /* base 0 reads a decimal literal: no leading zeros unless all zeros */
        base = 10;
        size_t j = i;
        while (j < t.n && (t.p[j] == '0' || t.p[j] == '_')) j++;
        if (j > i && j < t.n && t.p[i] == '0') return 0;
    }
    /* syntax first: a malformed number is "not a number" however long it is */
    if (i >= t.n || t.p[i] == '_' || t.p[t.n - 1] == '_') return 0;
    for (size_t j = i; j < t.n; j++) {
        char ch = t.p[j];
        if (ch == '_') {
            if (j + 1 < t.n && t.p[j + 1] == '_') return 0;
            continue;
        }
        int d = is_ascii_digit(ch) ? ch - '0' : (ch | 32) >= 'a' && (ch | 32) <= 'z' ? (ch | 32) - 'a' + 10 : 99;
        if (d >= base) return 0;
    }
    uint64_t v = 0;
    for (size_t j = i; j < t.n; j++) {
        char ch = t.p[j];
        if (ch == '_') continue;
        int d = is_ascii_digit(ch) ? ch - '0' : (ch | 32) - 'a' + 10;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) return -1;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX) return -1;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

static jv filter_tojson(jj_eval *e, int line, jv val, const jargs *a) {
    static const char *const p[] = {"ensure_ascii", "indent", "separators", "sort_keys"};
    jv v[4];
    bool g[4];
    bind(e, line, "tojson", p, 4, 0, a, v, g);
    jj_json_opts o = {0};
    o.ensure_ascii = g[0] && jj_truthy(v[0]);
    o.sort_keys = g[3] && jj_truthy(v[3]);
    if (g[1] && v[1].t != JV_NONE) {
        if (is_intlike(v[1])) {
            int64_t n = as_int(v[1]);
            if (n > 1000) jj_fail(e->c, MT_ERR_INVALID, line, "tojson indent %lld is too large", (long long)n);
            char *sp = jj_alloc(e->c, (size_t)(n > 0 ? n : 0) + 1);
            memset(sp, ' ', (size_t)(n > 0 ? n : 0));
            o.indent = sp;
            o.indent_len = (size_t)(n > 0 ? n : 0);
        } else if (v[1].t == JV_STR) {
            o.indent = v[1].s.p;
            o.indent_len = v[1].s.n;
        } else
            jj_fail(e->c, MT_ERR_INVALID, line, "tojson indent must be an int or a string, not %s", jj_type_name(v[1]));
    }
    o.item_sep = jj_cstr(o.indent ? "," : ", ");
    o.key_sep = jj_cstr(": ");
    if (g[2] && v[2].t != JV_NONE) {
        if (v[2].t != JV_LIST || v[2].l->n != 2 || v[2].l->v[0].t != JV_STR || v[2].l->v[1].t != JV_STR)
            jj_fail(e->c, MT_ERR_INVALID, line, "tojson separators must be a pair of strings");
        o.item_sep = v[2].l->v[0].s;
        o.key_sep = v[2].l->v[1].s;
    }
    jbuf b = {0};
    jj_buf_put(e->c, &b, "", 0);
    jj_json_dump(e->c, &b, line, val, &o);
    return jv_str(jj_buf_str(&b));
}

/* select/reject/selectattr/rejectattr */
static jv filter_select(jj_eval *e, int line, jv val, const jargs *a, bool attr, bool keep_true) {
    /* jinja checks the arguments only when there is an item to test */
    jlist *items = jj_iterate(e, line, val), *out = jj_list_new(e->c, 0);
    if (!items->n) return jv_list(out);
    if (a->n_pos < (attr ? 1u : 0u)) jj_fail(e->c, MT_ERR_INVALID, line, "Missing parameter for attribute name");
    size_t off = attr ? 1 : 0;
    int test = -1;
    if (a->n_pos > off) {
        test = lookup_name(jj_test_names, TS_N, a->pos[off]);
        if (test < 0) {
            jbuf b = {0};
            jj_write_repr(e->c, &b, line, a->pos[off]);
            jj_fail(e->c, MT_ERR_INVALID, line, "No test named %s.", b.p);
        }
    }
    jargs rest = {a->n_pos > off ? a->pos + off + 1 : NULL, a->n_pos > off ? a->n_pos - off - 1 : 0, a->kw_names,
                  a->kw_vals, a->n_kw};
    for (size_t i = 0; i < items->n; i++) {
        jv x = attr ? get_attr_path(e, line, items->v[i], a->pos[0]) : items->v[i];
        bool r = test >= 0 ? run_test(e, line, test, x, &rest) : jj_truthy(x);
        if (r == keep_true) jj_list_push(e->c, out, items->v[i]);
    }
    return jv_list(out);
}

static jv filter_map(jj_eval *e, int line, jv val, const jargs *a) {
    jlist *items = jj_iterate(e, line, val), *out = jj_list_new(e->c, items->n);
    if (!items->n) return jv_list(out); /* jinja checks the arguments only when there are items */
    if (!a->n_pos) {
        jv attr = jv_undef("map() needs a filter name or attribute=");
        jv dflt = jv_none();
        bool has_attr = false;
        for (size_t k = 0; k < a->n_kw; k++) {
            if (jj_str_eq(a->kw_names[k], "attribute"))
                attr = a->kw_vals[k], has_attr = true;
            else if (jj_str_eq(a->kw_names[k], "default"))
                dflt = a->kw_vals[k];
            else
                jj_fail(e->c, MT_ERR_INVALID, line, "Unexpected keyword argument '%.*s'", (int)a->kw_names[k].n,
                        a->kw_names[k].p);
        }
        if (!has_attr) jj_fail(e->c, MT_ERR_INVALID, line, "map requires a filter argument");
        for (size_t i = 0; i < items->n; i++) {
            jv x = get_attr_path(e, line, items->v[i], attr);
            if (dflt.t != JV_NONE && x.t == JV_UNDEF) x = dflt;
            jj_list_push(e->c, out, x);
        }
        return jv_list(out);
    }
    int id = lookup_name(jj_filter_names, FL_N, a->pos[0]);
    if (id < 0) {
        jbuf b = {0};
        jj_write_repr(e->c, &b, line, a->pos[0]);
        jj_fail(e->c, MT_ERR_INVALID, line, "No filter named %s.", b.p);
    }
    jargs rest = {a->pos + 1, a->n_pos - 1, a->kw_names, a->kw_vals, a->n_kw};
    for (size_t i = 0; i < items->n; i++) jj_list_push(e->c, out, run_filter(e, line, id, items->v[i], &rest));
    return jv_list(out);
}

static bool title_sep(uint32_t cp) { return jj_isspace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<'; }

/* jinja's title filter: words start after runs of [-\s({[<], each word Capitalised. */
static jstr filter_title(jj_ctx *c, jstr s) {
    cps d = decode(c, s);
    jbuf b = {0};
    jj_buf_put(c, &b, "", 0);
    size_t i = 0;
    while (i < d.n) {
        bool sep = title_sep(d.cp[i]);
        size_t j = i;
        while (j < d.n && title_sep(d.cp[j]) == sep) j++;
        if (sep)
            jj_buf_put(c, &b, s.p + d.offs[i], d.offs[j] - d.offs[i]);
        else {
            jstr first = str_upper(c, sub(s, &d, i, i + 1));
            jj_buf_put(c, &b, first.p, first.n);
            jstr rest = str_lower(c, sub(s, &d, i + 1, j));
            jj_buf_put(c, &b, rest.p, rest.n);
        }
        i = j;
    }
    return jj_buf_str(&b);
}

static jv run_filter(jj_eval *e, int line, int id, jv val, const jargs *a) {
    jj_ctx *c = e->c;
    jv v[3];
    bool g[3];
    const char *name = jj_filter_names[id];
#define FBIND(nreq, ...)                                                                       \
    do {                                                                                       \
        static const char *const p_[] = {__VA_ARGS__};                                         \
        bind(e, line, name, p_, sizeof p_ / sizeof *p_, nreq, a, v, g);                        \
    } while (0)
#define FBIND_NONE() bind(e, line, name, NULL, 0, 0, a, v, g)
    switch ((jfilter)id) {
    case FL_ABS:
        FBIND_NONE();
        if (val.t == JV_UNDEF) fail_undef(e, line, val);
        if (val.t == JV_FLOAT) return jv_float(fabs(val.f));
        if (!is_intlike(val)) jj_fail(c, MT_ERR_INVALID, line, "bad operand type for abs(): '%s'", jj_type_name(val));
        if (as_int(val) == INT64_MIN) jj_fail(c, MT_ERR_UNSUPPORTED, line, "integer outside the 64-bit range");
        return jv_int(as_int(val) < 0 ? -as_int(val) : as_int(val));
    case FL_CAPITALIZE: FBIND_NONE(); return jv_str(str_capitalize(c, soft_str(e, line, val)));
    case FL_COUNT:
    case FL_LENGTH: FBIND_NONE(); return jv_int(py_len(e, line, val));
    case FL_D:
    case FL_DEFAULT:
        FBIND(0, "default_value", "boolean");
        if (!g[0]) v[0] = jv_str(jj_cstr(""));
        if (val.t == JV_UNDEF || (g[1] && jj_truthy(v[1]) && !jj_truthy(val))) return v[0];
        return val;
    case FL_FIRST: {
        FBIND_NONE();
        jlist *l = jj_iterate(e, line, val);
        return l->n ? l->v[0] : jv_undef("No first item, sequence was empty.");
    }
    case FL_LAST: {
        FBIND_NONE();
        if (val.t != JV_LIST && val.t != JV_STR && val.t != JV_DICT && val.t != JV_UNDEF)
            jj_fail(c, MT_ERR_INVALID, line, "'%s' object is not reversible", jj_type_name(val));
        jlist *l = jj_iterate(e, line, val);
        return l->n ? l->v[l->n - 1] : jv_undef("No last item, sequence was empty.");
    }
    case FL_FLOAT: {
        FBIND(0, "default");
        jv dflt = g[0] ? v[0] : jv_float(0.0);
        double f;
        switch (val.t) {
        case JV_UNDEF: fail_undef(e, line, val);
        case JV_FLOAT: return val;
        case JV_INT:
        case JV_BOOL: return jv_float((double)as_int(val));
        case JV_STR: return parse_py_float(val.s, &f) ? jv_float(f) : dflt;
        default: return dflt;
        }
    }
    case FL_INT: {
        FBIND(0, "default", "base");
        jv dflt = g[0] ? v[0] : jv_int(0);
        /* a base that is not an integer is a TypeError, which jinja's int filter also catches */
        int64_t base = !g[1] ? 10 : is_intlike(v[1]) ? as_int(v[1]) : -1;
        int64_t r;
        double f;
        switch (val.t) {
        case JV_UNDEF: fail_undef(e, line, val);
        case JV_INT:
        case JV_BOOL: return jv_int(as_int(val));
        case JV_FLOAT:
            if (isnan(val.f) || isinf(val.f)) return dflt;
            if (val.f >= 9223372036854775808.0 || val.f < -9223372036854775808.0)
                jj_fail(c, MT_ERR_UNSUPPORTED, line, "integer outside the 64-bit range");
            return jv_int((int64_t)val.f);
        case JV_STR: {
            /* a bad base is a ValueError too, and then float() of the text decides */
            int ok = base == 0 || (base >= 2 && base <= 36) ? parse_py_int(val.s, base, &r) : 0;
            if (ok > 0) return jv_int(r);
            if (ok < 0) jj_fail(c, MT_ERR_UNSUPPORTED, line, "integer outside the 64-bit range");
            if (!parse_py_float(val.s, &f) || isnan(f) || isinf(f)) return dflt;
            if (f >= 9223372036854775808.0 || f < -9223372036854775808.0)
                jj_fail(c, MT_ERR_UNSUPPORTED, line, "integer outside the 64-bit range");
            return jv_int((int64_t)f);
        }
        default: return dflt;
        }
    }
    case FL_ITEMS:
        FBIND_NONE();
        if (val.t == JV_UNDEF) return jv_list(jj_list_new(c, 0));
        if (val.t != JV_DICT) jj_fail(c, MT_ERR_INVALID, line, "Can only get item pairs from a mapping.");
        return jv_list(dict_pairs(c, val.d));
    case FL_JOIN: {
        FBIND(0, "d", "attribute");
        jlist *items = jj_iterate(e, line, val);
        jstr sep = g[0] ? soft_str(e, line, v[0]) : jj_cstr("");
        jbuf b = {0};
        jj_buf_put(c, &b, "", 0);
        for (size_t i = 0; i < items->n; i++) {
            if (i) jj_buf_put(c, &b, sep.p, sep.n);
            jv x = g[1] && v[1].t != JV_NONE ? get_attr_path(e, line, items->v[i], v[1]) : items->v[i];
            jj_write_str(c, &b, line, x);
        }
        return jv_str(jj_buf_str(&b));
    }
    case FL_LIST: {
        FBIND_NONE();
        jlist *items = jj_iterate(e, line, val), *out = jj_list_new(c, items->n);
        for (size_t i = 0; i < items->n; i++) jj_list_push(c, out, items->v[i]);
        return jv_list(out);
    }
    case FL_LOWER: FBIND_NONE(); return jv_str(str_lower(c, soft_str(e, line, val)));
    case FL_UPPER: FBIND_NONE(); return jv_str(str_upper(c, soft_str(e, line, val)));
    case FL_MAP: return filter_map(e, line, val, a);
    case FL_SELECT: return filter_select(e, line, val, a, false, true);
    case FL_REJECT: return filter_select(e, line, val, a, false, false);
    case FL_SELECTATTR: return filter_select(e, line, val, a, true, true);
    case FL_REJECTATTR: return filter_select(e, line, val, a, true, false);
    case FL_REPLACE: {
        FBIND(2, "old", "new", "count");
        int64_t count = g[2] && v[2].t != JV_NONE ? want_int(e, line, v[2], "count") : -1;
        return jv_str(str_replace(c, soft_str(e, line, val), soft_str(e, line, v[0]), soft_str(e, line, v[1]), count));
    }
    case FL_REVERSE: {
        FBIND_NONE();
        if (val.t == JV_STR) {
            cps d = decode(c, val.s);
            jbuf b = {0};
            jj_buf_put(c, &b, "", 0);
            for (size_t i = d.n; i-- > 0;) jj_buf_put(c, &b, val.s.p + d.offs[i], d.offs[i + 1] - d.offs[i]);
            return jv_str(jj_buf_str(&b));
        }
        if (val.t != JV_LIST && val.t != JV_DICT && val.t != JV_UNDEF)
            jj_fail(c, MT_ERR_INVALID, line, "argument must be iterable");
        jlist *items = jj_iterate(e, line, val), *out = jj_list_new(c, items->n);
        for (size_t i = items->n; i-- > 0;) jj_list_push(c, out, items->v[i]);
        return jv_list(out);
    }
    case FL_SAFE:
    case FL_STRING: FBIND_NONE(); return jv_str(soft_str(e, line, val));
    case FL_TITLE: FBIND_NONE(); return jv_str(filter_title(c, soft_str(e, line, val)));
    case FL_TOJSON: return filter_tojson(e, line, val, a);
    case FL_TRIM:
        FBIND(0, "chars");
        if (g[0] && v[0].t != JV_NONE) {
            jstr chars = want_str(e, line, v[0], "strip arg");
            return jv_str(str_strip(c, soft_str(e, line, val), &chars, 3));
        }
        return jv_str(str_strip(c, soft_str(e, line, val), NULL, 3));
    case FL_N: break;
    }
#undef FBIND
#undef FBIND_NONE
    jj_fail(c, MT_ERR_INVALID, line, "no filter with id %d", id);
}

/* Python's `is` for the values a template can hold: singletons and small ints are shared. */
static bool same_object(jv a, jv b) {
    if (a.t != b.t) return false;
    switch (a.t) {
    case JV_NONE: return true;
    case JV_UNDEF: return false; /* each lookup makes a new Undefined */
    case JV_BOOL: return a.b == b.b;
    case JV_INT: return a.i == b.i && a.i >= -5 && a.i <= 256;
    case JV_FLOAT: return false;
    case JV_STR: return a.s.p == b.s.p && a.s.n == b.s.n;
    case JV_LIST: return a.l == b.l;
    case JV_DICT:
    case JV_NS: return a.d == b.d;
    default: return jj_equal(a, b);
    }
}

static bool run_test(jj_eval *e, int line, int id, jv val, const jargs *a) {
    jv v[1];
    bool g[1];
    const char *name = jj_test_names[id];
    static const char *const p_other[] = {"other"};
    switch ((jtest)id) {
    case TS_DIVISIBLEBY:
    case TS_EQ:
    case TS_EQUALTO:
    case TS_EQ_OP:
    case TS_GE:
    case TS_GE_OP:
    case TS_GREATERTHAN:
    case TS_GT:
    case TS_GT_OP:
    case TS_IN:
    case TS_LE:
    case TS_LE_OP:
    case TS_LESSTHAN:
    case TS_LT:
    case TS_LT_OP:
    case TS_NE:
    case TS_NE_OP:
    case TS_SAMEAS: bind(e, line, name, p_other, 1, 1, a, v, g); break;
    default: bind(e, line, name, NULL, 0, 0, a, v, g); break;
    }
    switch ((jtest)id) {
    case TS_BOOLEAN: return val.t == JV_BOOL;
    case TS_CALLABLE: return val.t == JV_FUNC || val.t == JV_METHOD || val.t == JV_LOOP || val.t == JV_UNDEF;
    case TS_DEFINED: return val.t != JV_UNDEF;
    case TS_UNDEFINED: return val.t == JV_UNDEF;
    case TS_DIVISIBLEBY: {
        if (val.t == JV_UNDEF) fail_undef(e, line, val);
        if (v[0].t == JV_UNDEF) fail_undef(e, line, v[0]);
        if (is_intlike(val) && is_intlike(v[0])) {
            if (!as_int(v[0])) jj_fail(e->c, MT_ERR_INVALID, line, "integer division or modulo by zero");
            if (as_int(v[0]) == -1) return true;
            return as_int(val) % as_int(v[0]) == 0;
        }
        if ((is_intlike(val) || val.t == JV_FLOAT) && (is_intlike(v[0]) || v[0].t == JV_FLOAT)) {
            double x = val.t == JV_FLOAT ? val.f : (double)as_int(val), y = v[0].t == JV_FLOAT ? v[0].f : (double)as_int(v[0]);
            if (y == 0.0) jj_fail(e->c, MT_ERR_INVALID, line, "float modulo");
            return fmod(x, y) == 0.0;
        }
        jj_fail(e->c, MT_ERR_INVALID, line, "unsupported operand type(s) for %%: '%s' and '%s'", jj_type_name(val),
                jj_type_name(v[0]));
    }
    case TS_EVEN:
    case TS_ODD: {
        if (val.t == JV_UNDEF) fail_undef(e, line, val);
        if (val.t == JV_FLOAT) {
            double m = fmod(val.f, 2.0);
            if (m < 0) m += 2.0;
            return id == TS_EVEN ? m == 0.0 : m == 1.0;
        }
        if (!is_intlike(val))
            jj_fail(e->c, MT_ERR_INVALID, line, "unsupported operand type(s) for %%: '%s' and 'int'", jj_type_name(val));
        return ((as_int(val) % 2 + 2) % 2 == 0) == (id == TS_EVEN);
    }
    case TS_EQ:
    case TS_EQUALTO:
    case TS_EQ_OP: return jj_equal(val, v[0]);
    case TS_NE:
    case TS_NE_OP: return !jj_equal(val, v[0]);
    case TS_GE:
    case TS_GE_OP: return jj_compare(e->c, line, val, v[0]) >= 0;
    case TS_GREATERTHAN:
    case TS_GT:
    case TS_GT_OP: return jj_compare(e->c, line, val, v[0]) > 0;
    case TS_LE:
    case TS_LE_OP: return jj_compare(e->c, line, val, v[0]) <= 0;
    case TS_LESSTHAN:
    case TS_LT:
    case TS_LT_OP: return jj_compare(e->c, line, val, v[0]) < 0;
    case TS_FALSE: return val.t == JV_BOOL && !val.b;
    case TS_TRUE: return val.t == JV_BOOL && val.b;
    case TS_FLOAT: return val.t == JV_FLOAT;
    case TS_INTEGER: return val.t == JV_INT;
    case TS_NUMBER: return val.t == JV_INT || val.t == JV_FLOAT || val.t == JV_BOOL;
    case TS_STRING: return val.t == JV_STR;
    case TS_NONE: return val.t == JV_NONE;
    case TS_MAPPING: return val.t == JV_DICT;
    case TS_ITERABLE:
        return val.t == JV_STR || val.t == JV_LIST || val.t == JV_DICT || val.t == JV_UNDEF || val.t == JV_LOOP;
    case TS_SEQUENCE: return val.t == JV_STR || val.t == JV_LIST || val.t == JV_DICT || val.t == JV_UNDEF;
    case TS_LOWER: return str_case_is(soft_str(e, line, val), false);
    case TS_UPPER: return str_case_is(soft_str(e, line, val), true);
    case TS_IN: {
        jv seq = v[0];
        switch (seq.t) {
        case JV_STR:
            if (val.t != JV_STR)
                jj_fail(e->c, MT_ERR_INVALID, line, "'in <string>' requires string as left operand, not %s",
                        jj_type_name(val));
            return find_bytes(seq.s, val.s, 0, seq.s.n, false) >= 0;
        case JV_LIST:
            for (size_t i = 0; i < seq.l->n; i++)
                if (jj_equal(seq.l->v[i], val)) return true;
            return false;
        case JV_DICT: check_hashable(e, line, val); return jj_dict_find(seq.d, val) != NULL;
        case JV_UNDEF: return false;
        default: jj_fail(e->c, MT_ERR_INVALID, line, "argument of type '%s' is not iterable", jj_type_name(seq));
        }
    }
    case TS_SAMEAS: return same_object(val, v[0]);
    case TS_N: break;
    }
    jj_fail(e->c, MT_ERR_INVALID, line, "no test with id %d", id);
}

/* ---- entry points the evaluator calls ---- */

static jargs eval_node_args(jj_eval *e, const jnode *n) {
    jargs a = {0};
    a.n_pos = n->args.n;
    a.n_kw = n->kw.n;
    jv *pos = a.n_pos ? jj_alloc(e->c, a.n_pos * sizeof(jv)) : NULL;
    jstr *names = a.n_kw ? jj_alloc(e->c, a.n_kw * sizeof(jstr)) : NULL;
    jv *vals = a.n_kw ? jj_alloc(e->c, a.n_kw * sizeof(jv)) : NULL;
    for (size_t k = 0; k < a.n_pos; k++) pos[k] = jj_eval_expr(e, n->args.v[k]);
    for (size_t k = 0; k < a.n_kw; k++) {
        names[k] = n->kw.v[k]->name;
        vals[k] = jj_eval_expr(e, n->kw.v[k]->a);
    }
    a.pos = pos;
    a.kw_names = names;
    a.kw_vals = vals;
    return a;
}

jv jj_apply_filter(jj_eval *e, const jnode *n, jv val) {
    jargs a = eval_node_args(e, n);
    return run_filter(e, n->line, n->op, val, &a);
}

bool jj_apply_test(jj_eval *e, const jnode *n, jv val) {
    jargs a = eval_node_args(e, n);
    return run_test(e, n->line, n->op, val, &a);
}

/* dict(...) and namespace(...): a mapping or an iterable of pairs, then keyword arguments. */
static jdict *dict_from_args(jj_eval *e, int line, const char *fname, const jargs *a) {
    if (a->n_pos > 1) jj_fail(e->c, MT_ERR_INVALID, line, "%s expected at most 1 argument, got %zu", fname, a->n_pos);
    jdict *d = jj_dict_new(e->c);
    if (a->n_pos) {
        jv src = a->pos[0];
        if (src.t == JV_UNDEF) fail_undef(e, line, src); /* dict() asks it for .keys */
        if (src.t == JV_DICT || src.t == JV_NS) {
            for (size_t i = 0; i < src.d->n; i++) jj_dict_set(e->c, d, src.d->k[i], src.d->v[i]);
        } else {
            jlist *items = jj_iterate(e, line, src);
            for (size_t i = 0; i < items->n; i++) {
                jv pair = items->v[i];
                jlist *kv = pair.t == JV_LIST || pair.t == JV_STR ? jj_iterate(e, line, pair) : NULL;
                if (!kv || kv->n != 2)
                    jj_fail(e->c, MT_ERR_INVALID, line,
                            "%s update sequence element #%zu has the wrong length or is not a sequence", fname, i);
                check_hashable(e, line, kv->v[0]);
                jj_dict_set(e->c, d, kv->v[0], kv->v[1]);
            }
        }
    }
    for (size_t k = 0; k < a->n_kw; k++) jj_dict_set(e->c, d, jv_str(a->kw_names[k]), a->kw_vals[k]);
    return d;
}

jv jj_call_func(jj_eval *e, int line, int fn, const jv *args, size_t n_args, const jstr *kw_names,
                const jv *kw_vals, size_t n_kw) {
    jargs a = {args, n_args, kw_names, kw_vals, n_kw};
    jj_ctx *c = e->c;
    switch (fn) {
    case JF_RANGE: {
        if (n_kw) jj_fail(c, MT_ERR_INVALID, line, "range() takes no keyword arguments");
        if (n_args < 1 || n_args > 3)
            jj_fail(c, MT_ERR_INVALID, line, "range expected 1 to 3 arguments, got %zu", n_args);
        int64_t r[3] = {0, 0, 1};
        for (size_t k = 0; k < n_args; k++) {
            if (args[k].t == JV_UNDEF) fail_undef(e, line, args[k]);
            if (!is_intlike(args[k]))
                jj_fail(c, MT_ERR_INVALID, line, "'%s' object cannot be interpreted as an integer", jj_type_name(args[k]));
        }
        if (n_args == 1)
            r[1] = as_int(args[0]);
        else {
            r[0] = as_int(args[0]);
            r[1] = as_int(args[1]);
            if (n_args == 3) r[2] = as_int(args[2]);
        }
        if (!r[2]) jj_fail(c, MT_ERR_INVALID, line, "range() arg 3 must not be zero");
        /* the count in 128 bits: start and stop may be anywhere in int64 */
        __int128 span = r[2] > 0 ? (__int128)r[1] - r[0] : (__int128)r[0] - r[1];
        __int128 stepm = r[2] > 0 ? r[2] : -(__int128)r[2];
        __int128 count = span <= 0 ? 0 : (span + stepm - 1) / stepm;
        if (count > JJ_MAX_RANGE)
            jj_fail(c, MT_ERR_INVALID, line,
                    "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).", JJ_MAX_RANGE);
        jlist *l = jj_list_new(c, (size_t)count);
        for (__int128 k = 0; k < count; k++) jj_list_push(c, l, jv_int((int64_t)(r[0] + k * r[2])));
        return jv_list(l);
    }
    case JF_NAMESPACE: {
        jdict *d = dict_from_args(e, line, "namespace", &a);
        for (size_t i = 0; i < d->n; i++)
            if (d->k[i].t == JV_STR && d->k[i].s.n && d->k[i].s.p[0] == '_')
                jj_fail(c, MT_ERR_INVALID, line,
                        "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '%.*s'. "
                        "Please rename the attribute.",
                        (int)(d->k[i].s.n < 80 ? d->k[i].s.n : 80), d->k[i].s.p);
        jv ns = {.t = JV_NS};
        ns.d = d;
        return ns;
    }
    case JF_DICT: return jv_dict(dict_from_args(e, line, "dict", &a));
    case JF_RAISE: {
        static const char *const p[] = {"message"};
        jv v[1];
        bool g[1];
        bind(e, line, "raise_exception", p, 1, 1, &a, v, g);
        jstr msg = jj_to_str(c, line, v[0]);
        jj_fail(c, MT_ERR_INVALID, line, "%.*s", (int)(msg.n < 600 ? msg.n : 600), msg.p);
    }
    case JF_STRFTIME: {
        static const char *const p[] = {"format"};
        jv v[1];
        bool g[1];
        bind(e, line, "strftime_now", p, 1, 1, &a, v, g);
        jstr f = want_str(e, line, v[0], "strftime_now() format");
        if (f.n > 200) jj_fail(c, MT_ERR_INVALID, line, "strftime_now() format is too long");
        char fmt[256], out[1024];
        memcpy(fmt, f.p, f.n);
        fmt[f.n] = 0;
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = fmt[0] ? strftime(out, sizeof out, fmt, &tm) : 0;
        return jv_str(jj_str(c, out, n));
    }
    default: break;
    }
    jj_fail(c, MT_ERR_INVALID, line, "no function with id %d", fn);
}
