/* jinja_lex.c — splits a chat template into text and tag tokens exactly as jinja2's regex lexer
 * does with trim_blocks=True and lstrip_blocks=True (transformers' settings), including the
 * whitespace control signs, raw blocks, comments and Python-style literals. */
#include "jinja-impl.h"

#include <stdlib.h>
#include <string.h>

const char *const jj_op_spelling[OP_COUNT] = {
    "//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(",
    ")",  "{",  "}",  ">",  "<",  "=",  ".", ":", "|", ",", ";",
};

typedef struct lexer {
    jj_ctx *c;
    const char *s; /* normalised source */
    size_t n;
    size_t line_off; /* line counting cursor */
    int line;
    jtok *toks;
    size_t n_tok, cap_tok;
    bool line_starting; /* the previous match ended with a newline (lstrip_blocks needs it) */
} lexer;

static int line_at(lexer *lx, size_t off) {
    for (; lx->line_off < off; lx->line_off++) lx->line += lx->s[lx->line_off] == '\n';
    return lx->line;
}

static jtok *emit(lexer *lx, jt_kind kind, size_t off) {
    if (lx->n_tok == lx->cap_tok) {
        size_t cap = lx->cap_tok ? 2 * lx->cap_tok : 64;
        jtok *t = jj_alloc(lx->c, cap * sizeof *t);
        if (lx->n_tok) memcpy(t, lx->toks, lx->n_tok * sizeof *t);
        lx->toks = t;
        lx->cap_tok = cap;
    }
    jtok *t = &lx->toks[lx->n_tok++];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->line = line_at(lx, off);
    return t;
}

/* Length of the whitespace run (Python's \s, Unicode) at s[i]. */
static size_t ws_run(const char *s, size_t n, size_t i) {
    size_t j = i;
    while (j < n) {
        size_t k = j;
        if (!jj_isspace(jj_utf8_next(s, n, &k))) break;
        j = k;
    }
    return j - i;
}

/* The start of the trailing whitespace of s[a:b] (Python's rstrip). */
static size_t rstrip_at(const char *s, size_t a, size_t b) {
    size_t end = b;
    while (end > a) {
        size_t k = end - 1;
        while (k > a && ((unsigned char)s[k] & 0xc0) == 0x80) k--;
        size_t j = k;
        if (!jj_isspace(jj_utf8_next(s, end, &j)) || j != end) break;
        end = k;
    }
    return end;
}

/* Text before a tag, after the tag's whitespace control: "-" strips all whitespace before it;
 * otherwise lstrip_blocks removes the spaces between a line start and a {% or {# tag. */
static void emit_data(lexer *lx, size_t a, size_t b, char sign, bool lstrip_ok) {
    if (sign == '-')
        b = rstrip_at(lx->s, a, b);
    else if (sign != '+' && lstrip_ok) {
        size_t l = b;
        while (l > a && lx->s[l - 1] != '\n') l--;
        if ((l > a || lx->line_starting) && b > l && ws_run(lx->s, b, l) == b - l) b = l;
    }
    if (b > a) {
        jtok *t = emit(lx, JT_DATA, a);
        t->text = (jstr){lx->s + a, b - a};
    }
}

static bool at(const lexer *lx, size_t i, const char *lit) {
    size_t n = strlen(lit);
    return lx->n - i >= n && !memcmp(lx->s + i, lit, n);
}

/* End of `{%`, `-%}`, `+%}` forms: returns the offset after the match or 0 when none. Block
 * ends swallow one newline (trim_blocks) unless written +%}; -%} swallows all whitespace. */
static bool at_close(const lexer *lx, size_t i, char kind) {
    return i + 1 < lx->n && lx->s[i] == kind && lx->s[i + 1] == '}';
}

static size_t match_close(const lexer *lx, size_t i, char kind) {
    if (kind != '}' && lx->s[i] == '+' && at_close(lx, i + 1, kind)) return i + 3;
    if (lx->s[i] == '-' && at_close(lx, i + 1, kind)) return i + 3 + ws_run(lx->s, lx->n, i + 3);
    if (at_close(lx, i, kind)) {
        size_t e = i + 2;
        if (kind != '}' && e < lx->n && lx->s[e] == '\n') e++;
        return e;
    }
    return 0;
}

static bool isdig(char ch) { return ch >= '0' && ch <= '9'; }

/* (\d+_)*\d+ at i: returns the end, or i when there is no digit. */
static size_t digits_us(const lexer *lx, size_t i) {
    if (i >= lx->n || !isdig(lx->s[i])) return i;
    size_t j = i;
    while (j < lx->n && isdig(lx->s[j])) j++;
    while (j + 1 < lx->n && lx->s[j] == '_' && isdig(lx->s[j + 1])) {
        j++;
        while (j < lx->n && isdig(lx->s[j])) j++;
    }
    return j;
}

static size_t exponent_end(const lexer *lx, size_t i) {
    if (i >= lx->n || (lx->s[i] | 32) != 'e') return 0;
    size_t j = i + 1;
    if (j < lx->n && (lx->s[j] == '+' || lx->s[j] == '-')) j++;
    size_t e = digits_us(lx, j);
    return e > j ? e : 0;
}

/* float_re of jinja: digits with an exponent, or with a fraction (and optional exponent). */
static size_t match_float(const lexer *lx, size_t i) {
    if (i > 0 && lx->s[i - 1] == '.') return 0;
    size_t q = digits_us(lx, i);
    if (q == i) return 0;
    if (q < lx->n && lx->s[q] == '.' && q + 1 < lx->n && isdig(lx->s[q + 1])) {
        size_t f = digits_us(lx, q + 1);
        size_t e = exponent_end(lx, f);
        return e ? e : f;
    }
    size_t e = exponent_end(lx, q);
    return e;
}

static int hexval(char ch) {
    if (isdig(ch)) return ch - '0';
    ch = (char)(ch | 32);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* integer_re of jinja: 0b/0o/0x forms, decimals with single underscores, or zeros. */
static size_t match_int(lexer *lx, size_t i, int64_t *val, int line) {
    const char *s = lx->s;
    int base = 10;
    size_t j = i;
    if (s[i] == '0' && i + 1 < lx->n && s[i + 1] && strchr("bBoOxX", s[i + 1])) {
        char b = (char)(s[i + 1] | 32);
        base = b == 'b' ? 2 : b == 'o' ? 8 : 16;
        j = i + 2;
    } else if (s[i] == '0') {
        j = i + 1;
        while (j < lx->n && (s[j] == '0' || (s[j] == '_' && j + 1 < lx->n && s[j + 1] == '0'))) j++;
        *val = 0;
        return j;
    } else if (!isdig(s[i]))
        return 0;
    uint64_t v = 0;
    size_t start = j;
    for (;;) {
        size_t k = j;
        if (k < lx->n && s[k] == '_' && (base != 10 || k > start)) k++;
        int d = k < lx->n ? hexval(s[k]) : -1;
        if (d < 0 || d >= base) break;
        if (v > ((uint64_t)INT64_MAX - (uint64_t)d) / (uint64_t)base)
            jj_fail(lx->c, MT_ERR_FORMAT, line, "integer literal too large");
        v = v * (uint64_t)base + (uint64_t)d;
        j = k + 1;
    }
    if (j == start) return 0; /* "0x" without digits: jinja lexes the 0 alone */
    *val = (int64_t)v;
    return j;
}

/* A string literal as Python's unicode-escape decodes it after backslashreplace: the usual
 * escapes, \ooo \xhh \uhhhh \Uhhhhhhhh, line continuations, and unknown escapes kept as is. */
static jstr unescape(lexer *lx, size_t a, size_t b, int line) {
    jbuf out = {0};
    const char *s = lx->s;
    for (size_t i = a; i < b;) {
        if (s[i] != '\\') {
            size_t j = i;
            while (j < b && s[j] != '\\') j++;
            jj_buf_put(lx->c, &out, s + i, j - i);
            i = j;
            continue;
        }
        char e = s[i + 1], u[4];
        i += 2;
        const char *simple = strchr("\\'\"abfnrtv", e);
        if (e && simple) {
            static const char map[] = "\\'\"\a\b\f\n\r\t\v";
            jj_buf_put(lx->c, &out, &map[simple - "\\'\"abfnrtv"], 1);
        } else if (e == '\n') {
            continue;
        } else if (e >= '0' && e <= '7') {
            uint32_t v = (uint32_t)(e - '0');
            for (int k = 0; k < 2 && i < b && s[i] >= '0' && s[i] <= '7'; k++) v = v * 8 + (uint32_t)(s[i++] - '0');
            jj_buf_put(lx->c, &out, u, jj_utf8_put(u, v));
        } else if (e == 'x' || e == 'u' || e == 'U') {
            int want = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t v = 0;
            for (int k = 0; k < want; k++) {
                int d = i < b ? hexval(s[i]) : -1;
                if (d < 0) jj_fail(lx->c, MT_ERR_FORMAT, line, "truncated \\%c escape in a string literal", e);
                v = v * 16 + (uint32_t)d;
                i++;
            }
            if (v > 0x10ffff || (v >= 0xd800 && v < 0xe000))
                jj_fail(lx->c, MT_ERR_FORMAT, line, "\\%c escape out of range in a string literal", e);
            jj_buf_put(lx->c, &out, u, jj_utf8_put(u, v));
        } else if (e == 'N') {
            jj_fail(lx->c, MT_ERR_UNSUPPORTED, line, "\\N{...} escapes are not supported");
        } else if ((unsigned char)e >= 0x80) {
            /* backslashreplace turned the character into \xhh / \uhhhh text first */
            size_t k = i - 1;
            uint32_t cp = jj_utf8_next(s, b, &k);
            i = k;
            if (cp < 0x100)
                jj_buf_printf(lx->c, &out, "\\x%02x", cp);
            else if (cp < 0x10000)
                jj_buf_printf(lx->c, &out, "\\u%04x", cp);
            else
                jj_buf_printf(lx->c, &out, "\\U%08x", cp);
        } else {
            char keep[2] = {'\\', e};
            jj_buf_put(lx->c, &out, keep, 2);
        }
    }
    return jj_buf_str(&out);
}

/* Tokens inside {{ }} or {% %} up to the closing tag (kind '}' or '%'). */
static size_t lex_tag(lexer *lx, size_t i, char kind) {
    char stack[JJ_MAX_DEPTH];
    int depth = 0;
    const char *s = lx->s;
    while (i < lx->n) {
        if (!depth) {
            size_t e = match_close(lx, i, kind);
            if (e) {
                emit(lx, kind == '%' ? JT_BLOCK_END : JT_VAR_END, i);
                lx->line_starting = s[e - 1] == '\n';
                return e;
            }
        }
        size_t w = ws_run(s, lx->n, i);
        if (w) {
            i += w;
            continue;
        }
        int line = line_at(lx, i);
        size_t e = match_float(lx, i);
        if (e) {
            char num[64];
            size_t k = 0;
            for (size_t j = i; j < e && k < sizeof num - 1; j++)
                if (s[j] != '_') num[k++] = s[j];
            num[k] = 0;
            jtok *t = emit(lx, JT_FLOAT, i);
            t->f = strtod(num, NULL);
            i = e;
            continue;
        }
        int64_t iv;
        if ((e = match_int(lx, i, &iv, line))) {
            jtok *t = emit(lx, JT_INT, i);
            t->i = iv;
            i = e;
            continue;
        }
        char ch = s[i];
        if (ch == '_' || ((ch | 32) >= 'a' && (ch | 32) <= 'z')) {
            e = i + 1;
            while (e < lx->n && (s[e] == '_' || isdig(s[e]) || ((s[e] | 32) >= 'a' && (s[e] | 32) <= 'z'))) e++;
            if (e < lx->n && (unsigned char)s[e] >= 0x80)
                jj_fail(lx->c, MT_ERR_UNSUPPORTED, line, "non-ASCII identifiers are not supported");
            jtok *t = emit(lx, JT_NAME, i);
            t->text = (jstr){s + i, e - i};
            i = e;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            e = i + 1;
            while (e < lx->n && s[e] != ch) e += s[e] == '\\' && e + 1 < lx->n ? 2 : 1;
            if (e >= lx->n) jj_fail(lx->c, MT_ERR_FORMAT, line, "unterminated string literal");
            jtok *t = emit(lx, JT_STRING, i);
            t->text = unescape(lx, i + 1, e, line);
            i = e + 1;
            continue;
        }
        int op = -1;
        for (int k = 0; k < OP_COUNT && op < 0; k++)
            if (jj_op_spelling[k][0] == ch && at(lx, i, jj_op_spelling[k])) op = k;
        if (op < 0) {
            if ((unsigned char)ch < 0x80 && ch >= 0x20)
                jj_fail(lx->c, MT_ERR_FORMAT, line, "unexpected character '%c'", ch);
            jj_fail(lx->c, MT_ERR_FORMAT, line, "unexpected character (byte 0x%02x)", (unsigned char)ch);
        }
        if (op == OP_LPAREN || op == OP_LBRACKET || op == OP_LBRACE) {
            if (depth == JJ_MAX_DEPTH) jj_fail(lx->c, MT_ERR_FORMAT, line, "brackets nested too deeply");
            stack[depth++] = op == OP_LPAREN ? ')' : op == OP_LBRACKET ? ']' : '}';
        } else if (op == OP_RPAREN || op == OP_RBRACKET || op == OP_RBRACE) {
            char closer = jj_op_spelling[op][0];
            if (!depth) jj_fail(lx->c, MT_ERR_FORMAT, line, "unexpected '%c'", closer);
            if (stack[depth - 1] != closer)
                jj_fail(lx->c, MT_ERR_FORMAT, line, "unexpected '%c', expected '%c'", closer, stack[depth - 1]);
            depth--;
        }
        jtok *t = emit(lx, JT_OP, i);
        t->op = (jop)op;
        i += strlen(jj_op_spelling[op]);
    }
    return i; /* unterminated tag: the parser reports the unexpected end */
}

/* {%[-+]? raw [-]%} ... at i: returns the end of the opening tag or 0. */
static size_t match_raw_open(const lexer *lx, size_t i) {
    size_t j = i + 2;
    if (j < lx->n && (lx->s[j] == '-' || lx->s[j] == '+')) j++;
    j += ws_run(lx->s, lx->n, j);
    if (!at(lx, j, "raw")) return 0;
    j += 3;
    j += ws_run(lx->s, lx->n, j);
    if (at(lx, j, "-%}")) return j + 3 + ws_run(lx->s, lx->n, j + 3);
    if (at(lx, j, "%}")) return j + 2;
    return 0;
}

/* {%[-+]? endraw <close> at i: the end of the match or 0; *sign gets the opening sign. */
static size_t match_endraw(const lexer *lx, size_t i, char *sign) {
    if (!at(lx, i, "{%")) return 0;
    size_t j = i + 2;
    *sign = 0;
    if (j < lx->n && (lx->s[j] == '-' || lx->s[j] == '+')) *sign = lx->s[j++];
    j += ws_run(lx->s, lx->n, j);
    if (!at(lx, j, "endraw")) return 0;
    j += 6;
    j += ws_run(lx->s, lx->n, j);
    return j < lx->n ? match_close(lx, j, '%') : 0;
}

jtok *jj_lex(jj_ctx *c, const char *src, size_t len, size_t *n_tok) {
    /* jinja's newline normalisation: \r\n and \r become \n, and one trailing newline goes */
    char *s = jj_alloc(c, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else
            s[n++] = src[i];
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;

    lexer lx = {.c = c, .s = s, .n = n, .line = 1, .line_starting = true};
    size_t pos = 0;
    while (pos < n) {
        size_t p = pos;
        while (p + 1 < n && !(s[p] == '{' && (s[p + 1] == '{' || s[p + 1] == '%' || s[p + 1] == '#'))) p++;
        if (p + 1 >= n) {
            emit_data(&lx, pos, n, 0, false);
            break;
        }
        char kind = s[p + 1];
        size_t raw_end = kind == '%' ? match_raw_open(&lx, p) : 0;
        size_t q = p + 2;
        char sign = q < n && (s[q] == '-' || s[q] == '+') ? s[q] : 0;
        emit_data(&lx, pos, p, sign, kind != '{');
        if (sign) q++;
        lx.line_starting = false;
        if (raw_end) {
            lx.line_starting = s[raw_end - 1] == '\n';
            size_t r = raw_end, e = 0;
            char rsign = 0;
            while (r < n && !(e = match_endraw(&lx, r, &rsign))) r++;
            /* jinja's lexer stops quietly when the opening tag took the rest of the input */
            if (!e && raw_end >= n) break;
            if (!e) jj_fail(c, MT_ERR_FORMAT, line_at(&lx, p), "missing end of raw directive");
            emit_data(&lx, raw_end, r, rsign, true);
            lx.line_starting = s[e - 1] == '\n';
            pos = e;
        } else if (kind == '#') {
            size_t r = q, e = 0;
            while (r < n && !(e = match_close(&lx, r, '#'))) r++;
            if (!e && q >= n) break;
            if (!e) jj_fail(c, MT_ERR_FORMAT, line_at(&lx, p), "missing end of comment tag");
            lx.line_starting = s[e - 1] == '\n';
            pos = e;
        } else {
            emit(&lx, kind == '%' ? JT_BLOCK_BEGIN : JT_VAR_BEGIN, p);
            pos = lex_tag(&lx, q, kind == '%' ? '%' : '}');
        }
    }
    emit(&lx, JT_EOF, n);
    *n_tok = lx.n_tok;
    return lx.toks;
}
