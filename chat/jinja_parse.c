/* jinja_parse.c — recursive-descent parser from tokens to the AST, following jinja2/parser.py
 * rule by rule (precedence, filters binding tighter than unary minus, tests, tuples, slices), so
 * that templates mean here what they mean to jinja; unknown tags, filters and tests fail at parse
 * time as they fail at jinja's compile time. */
#include "jinja-impl.h"

#include <stdio.h>
#include <string.h>

const char *const jj_filter_names[FL_N] = {
    "abs",   "capitalize", "count",   "d",       "default", "first",   "float", "int",    "items",
    "join",  "last",       "length",  "list",    "lower",   "map",     "reject", "rejectattr",
    "replace", "reverse",  "safe",    "select",  "selectattr", "string", "title", "tojson", "trim",
    "upper",
};
const char *const jj_test_names[TS_N] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "even", "false", "float",
    "ge",      ">=",       "greaterthan", "gt",      ">",  "in",      "integer", "iterable", "le",
    "<=",      "lessthan", "lower",   "lt",          "<",  "mapping", "ne",      "!=",       "none",
    "number",  "odd",      "sameas",  "sequence",    "string", "true", "undefined", "upper",
};

/* Part of jinja but not of this subset: a clear "unsupported" beats "unknown". */
static const char *const jinja_only_filters[] = {
    "attr", "batch", "center", "dictsort", "e", "escape", "filesizeformat", "forceescape", "format",
    "groupby", "indent", "max", "min", "pprint", "random", "round", "slice", "sort", "striptags",
    "sum", "truncate", "unique", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr", NULL,
};
static const char *const jinja_only_tests[] = {"escaped", "filter", "test", NULL};
static const char *const jinja_only_tags[] = {
    "macro", "call", "block", "extends", "include", "import", "from", "with", "autoescape", NULL,
};

typedef struct parser {
    jj_ctx *c;
    const jtok *t;
    size_t n, i;
    int loops; /* enclosing for loops, for break/continue */
} parser;

static const jtok *cur(const parser *p) { return &p->t[p->i]; }
static const jtok *look(const parser *p) { return &p->t[p->i + 1 < p->n ? p->i + 1 : p->i]; }
static const jtok *advance(parser *p) {
    const jtok *t = cur(p);
    if (p->i + 1 < p->n) p->i++;
    return t;
}

static bool is_op(const jtok *t, jop op) { return t->kind == JT_OP && t->op == op; }
static bool is_name(const jtok *t, const char *name) { return t->kind == JT_NAME && jj_str_eq(t->text, name); }

static const char *describe(parser *p, const jtok *t) {
    switch (t->kind) {
    case JT_DATA: return "template data";
    case JT_VAR_BEGIN: return "'{{'";
    case JT_VAR_END: return "end of print statement";
    case JT_BLOCK_BEGIN: return "'{%'";
    case JT_BLOCK_END: return "end of statement block";
    case JT_NAME: {
        jbuf b = {0};
        jj_buf_puts(p->c, &b, "'");
        jj_buf_put(p->c, &b, t->text.p, t->text.n < 60 ? t->text.n : 60);
        jj_buf_puts(p->c, &b, "'");
        return b.p;
    }
    case JT_STRING: return "string";
    case JT_INT: return "integer";
    case JT_FLOAT: return "float";
    case JT_OP: {
        jbuf b = {0};
        jj_buf_printf(p->c, &b, "'%s'", jj_op_spelling[t->op]);
        return b.p;
    }
    case JT_EOF: return "end of template";
    }
    return "token";
}

_Noreturn static void fail_at(parser *p, const jtok *t, const char *what) {
    jj_fail(p->c, MT_ERR_FORMAT, t->line, "%s", what);
}

_Noreturn static void fail_expected(parser *p, const char *want) {
    jbuf b = {0};
    jj_buf_printf(p->c, &b, "expected %s, got %s", want, describe(p, cur(p)));
    fail_at(p, cur(p), b.p);
}

static void expect_op(parser *p, jop op) {
    if (!is_op(cur(p), op)) {
        char want[16];
        snprintf(want, sizeof want, "'%s'", jj_op_spelling[op]);
        fail_expected(p, want);
    }
    advance(p);
}

static void expect_kind(parser *p, jt_kind k, const char *want) {
    if (cur(p)->kind != k) fail_expected(p, want);
    advance(p);
}

static jstr expect_name(parser *p) {
    if (cur(p)->kind != JT_NAME) fail_expected(p, "a name");
    return advance(p)->text;
}

static jnode *node(parser *p, jn_kind kind, int line) {
    jnode *n = jj_alloc(p->c, sizeof *n);
    n->kind = kind;
    n->line = line;
    return n;
}

/* Growable node list, compacted into the arena when done. */
typedef struct nlist {
    jnode **v;
    size_t n, cap;
} nlist;

static void nl_push(parser *p, nlist *l, jnode *x) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        jnode **v = jj_alloc(p->c, cap * sizeof *v);
        if (l->n) memcpy(v, l->v, l->n * sizeof *v);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static jnodes nl_done(nlist *l) { return (jnodes){l->v, l->n}; }

static void enter(parser *p) {
    if (++p->c->depth > JJ_MAX_DEPTH) fail_at(p, cur(p), "template nested too deeply");
}
static void leave(parser *p) { p->c->depth--; }

/* Chains like a.b.c, x|f|g or 1+2+3 parse in a loop but build a tree as deep as they are long,
 * which evaluation then recurses through: each link counts as a level of nesting. */
static void deeper(parser *p, int *links) {
    enter(p);
    (*links)++;
}
static void shallower(parser *p, int links) {
    while (links-- > 0) leave(p);
}

/* ---- expressions ---- */

static jnode *parse_expression(parser *p, bool with_condexpr);
static jnode *parse_tuple(parser *p, bool simplified, bool with_condexpr, const char *extra_end,
                          bool explicit_parens, bool with_namespace);
static jnode *parse_unary(parser *p, bool with_filter);
static jnode *parse_primary(parser *p, bool with_namespace);
static jnode *parse_postfix(parser *p, jnode *n);
static jnode *parse_filter(parser *p, jnode *n, bool start_inline);

static int lookup(const char *const *names, int count, jstr name) {
    for (int k = 0; k < count; k++)
        if (jj_str_eq(name, names[k])) return k;
    return -1;
}

static bool in_list(const char *const *names, jstr name) {
    for (int k = 0; names[k]; k++)
        if (jj_str_eq(name, names[k])) return true;
    return false;
}

static void parse_call_args(parser *p, nlist *args, nlist *kw) {
    const jtok *open = cur(p);
    expect_op(p, OP_LPAREN);
    bool need_comma = false;
    while (!is_op(cur(p), OP_RPAREN)) {
        if (need_comma) {
            expect_op(p, OP_COMMA);
            if (is_op(cur(p), OP_RPAREN)) break;
        }
        if (is_op(cur(p), OP_MUL) || is_op(cur(p), OP_POW))
            jj_fail(p->c, MT_ERR_UNSUPPORTED, cur(p)->line, "*args and **kwargs in calls are not supported");
        if (cur(p)->kind == JT_NAME && is_op(look(p), OP_ASSIGN)) {
            jnode *k = node(p, JN_KWARG, cur(p)->line);
            k->name = advance(p)->text;
            advance(p);
            k->a = parse_expression(p, true);
            nl_push(p, kw, k);
        } else {
            if (kw->n) fail_at(p, open, "invalid syntax for function call expression");
            nl_push(p, args, parse_expression(p, true));
        }
        need_comma = true;
    }
    expect_op(p, OP_RPAREN);
}

static jnode *parse_subscribed(parser *p) {
    int line = cur(p)->line;
    jnode *start = NULL;
    if (is_op(cur(p), OP_COLON))
        advance(p);
    else {
        start = parse_expression(p, true);
        if (!is_op(cur(p), OP_COLON)) return start;
        advance(p);
    }
    jnode *s = node(p, JN_SLICE, line);
    s->a = start;
    if (!is_op(cur(p), OP_COLON) && !is_op(cur(p), OP_RBRACKET) && !is_op(cur(p), OP_COMMA))
        s->b = parse_expression(p, true);
    if (is_op(cur(p), OP_COLON)) {
        advance(p);
        if (!is_op(cur(p), OP_RBRACKET) && !is_op(cur(p), OP_COMMA)) s->c = parse_expression(p, true);
    }
    return s;
}

static jnode *parse_subscript(parser *p, jnode *obj) {
    const jtok *t = advance(p);
    if (t->kind == JT_OP && t->op == OP_DOT) {
        const jtok *attr = advance(p);
        if (attr->kind == JT_NAME) {
            jnode *n = node(p, JN_GETATTR, t->line);
            n->a = obj;
            n->name = attr->text;
            return n;
        }
        if (attr->kind != JT_INT) fail_at(p, attr, "expected name or number after '.'");
        jnode *n = node(p, JN_GETITEM, t->line);
        n->a = obj;
        n->b = node(p, JN_CONST, attr->line);
        n->b->value = jv_int(attr->i);
        return n;
    }
    nlist items = {0};
    while (!is_op(cur(p), OP_RBRACKET)) {
        if (items.n) expect_op(p, OP_COMMA);
        nl_push(p, &items, parse_subscribed(p));
    }
    expect_op(p, OP_RBRACKET);
    jnode *n = node(p, JN_GETITEM, t->line);
    n->a = obj;
    if (items.n == 1)
        n->b = items.v[0];
    else {
        n->b = node(p, JN_TUPLE, t->line);
        n->b->args = nl_done(&items);
    }
    return n;
}

static jnode *parse_call(parser *p, jnode *fn) {
    jnode *n = node(p, JN_CALL, cur(p)->line);
    nlist args = {0}, kw = {0};
    parse_call_args(p, &args, &kw);
    n->a = fn;
    n->args = nl_done(&args);
    n->kw = nl_done(&kw);
    return n;
}

static jnode *parse_postfix(parser *p, jnode *n) {
    int links = 0;
    for (;;) {
        if (is_op(cur(p), OP_DOT) || is_op(cur(p), OP_LBRACKET)) {
            deeper(p, &links);
            n = parse_subscript(p, n);
        } else if (is_op(cur(p), OP_LPAREN)) {
            deeper(p, &links);
            n = parse_call(p, n);
        } else {
            shallower(p, links);
            return n;
        }
    }
}

/* A dotted filter or test name, as jinja reads it. */
static jstr dotted_name(parser *p) {
    jstr name = expect_name(p);
    while (is_op(cur(p), OP_DOT)) {
        advance(p);
        jstr more = expect_name(p);
        jbuf b = {0};
        jj_buf_put(p->c, &b, name.p, name.n);
        jj_buf_puts(p->c, &b, ".");
        jj_buf_put(p->c, &b, more.p, more.n);
        name = jj_buf_str(&b);
    }
    return name;
}

static jnode *parse_filter(parser *p, jnode *n, bool start_inline) {
    int links = 0;
    while (is_op(cur(p), OP_PIPE) || start_inline) {
        deeper(p, &links);
        if (!start_inline) advance(p);
        int line = cur(p)->line;
        jstr name = dotted_name(p);
        int id = lookup(jj_filter_names, FL_N, name);
        if (id < 0)
            jj_fail(p->c, in_list(jinja_only_filters, name) ? MT_ERR_UNSUPPORTED : MT_ERR_FORMAT, line,
                    in_list(jinja_only_filters, name) ? "the filter '%.*s' is not supported" : "no filter named '%.*s'",
                    (int)name.n, name.p);
        jnode *f = node(p, JN_FILTER, line);
        f->op = id;
        f->a = n;
        if (is_op(cur(p), OP_LPAREN)) {
            nlist args = {0}, kw = {0};
            parse_call_args(p, &args, &kw);
            f->args = nl_done(&args);
            f->kw = nl_done(&kw);
        }
        n = f;
        start_inline = false;
    }
    shallower(p, links);
    return n;
}

static jnode *parse_test(parser *p, jnode *n) {
    int line = advance(p)->line; /* 'is' */
    bool negated = false;
    if (is_name(cur(p), "not")) {
        advance(p);
        negated = true;
    }
    int name_line = cur(p)->line;
    jstr name = dotted_name(p);
    int id = lookup(jj_test_names, TS_N, name);
    if (id < 0)
        jj_fail(p->c, in_list(jinja_only_tests, name) ? MT_ERR_UNSUPPORTED : MT_ERR_FORMAT, name_line,
                in_list(jinja_only_tests, name) ? "the test '%.*s' is not supported" : "no test named '%.*s'",
                (int)name.n, name.p);
    jnode *t = node(p, JN_TEST, line);
    t->op = id;
    t->a = n;
    const jtok *c = cur(p);
    if (is_op(c, OP_LPAREN)) {
        nlist args = {0}, kw = {0};
        parse_call_args(p, &args, &kw);
        t->args = nl_done(&args);
        t->kw = nl_done(&kw);
    } else if ((c->kind == JT_NAME || c->kind == JT_STRING || c->kind == JT_INT || c->kind == JT_FLOAT ||
                is_op(c, OP_LBRACKET) || is_op(c, OP_LBRACE)) &&
               !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
        if (is_name(c, "is")) fail_at(p, c, "you cannot chain multiple tests with 'is'");
        nlist args = {0};
        nl_push(p, &args, parse_postfix(p, parse_primary(p, false)));
        t->args = nl_done(&args);
    }
    if (negated) {
        jnode *nn = node(p, JN_NOT, line);
        nn->a = t;
        return nn;
    }
    return t;
}

static jnode *parse_filter_expr(parser *p, jnode *n) {
    int links = 0;
    for (;;) {
        deeper(p, &links);
        if (is_op(cur(p), OP_PIPE))
            n = parse_filter(p, n, false);
        else if (is_name(cur(p), "is"))
            n = parse_test(p, n);
        else if (is_op(cur(p), OP_LPAREN))
            n = parse_call(p, n);
        else {
            shallower(p, links);
            return n;
        }
    }
}

static jnode *parse_list(parser *p) {
    jnode *n = node(p, JN_LIST, cur(p)->line);
    expect_op(p, OP_LBRACKET);
    nlist items = {0};
    while (!is_op(cur(p), OP_RBRACKET)) {
        if (items.n) expect_op(p, OP_COMMA);
        if (is_op(cur(p), OP_RBRACKET)) break;
        nl_push(p, &items, parse_expression(p, true));
    }
    expect_op(p, OP_RBRACKET);
    n->args = nl_done(&items);
    return n;
}

static jnode *parse_dict(parser *p) {
    jnode *n = node(p, JN_DICT, cur(p)->line);
    expect_op(p, OP_LBRACE);
    nlist items = {0};
    while (!is_op(cur(p), OP_RBRACE)) {
        if (items.n) expect_op(p, OP_COMMA);
        if (is_op(cur(p), OP_RBRACE)) break;
        jnode *pair = node(p, JN_PAIR, cur(p)->line);
        pair->a = parse_expression(p, true);
        expect_op(p, OP_COLON);
        pair->b = parse_expression(p, true);
        nl_push(p, &items, pair);
    }
    expect_op(p, OP_RBRACE);
    n->args = nl_done(&items);
    return n;
}

static jnode *parse_primary(parser *p, bool with_namespace) {
    enter(p);
    const jtok *t = cur(p);
    jnode *n;
    if (t->kind == JT_NAME) {
        advance(p);
        n = node(p, JN_CONST, t->line);
        if (jj_str_eq(t->text, "true") || jj_str_eq(t->text, "True"))
            n->value = jv_bool(true);
        else if (jj_str_eq(t->text, "false") || jj_str_eq(t->text, "False"))
            n->value = jv_bool(false);
        else if (jj_str_eq(t->text, "none") || jj_str_eq(t->text, "None"))
            n->value = jv_none();
        else if (with_namespace && is_op(cur(p), OP_DOT)) {
            advance(p);
            n->kind = JN_NSREF;
            n->name = t->text;
            n->name2 = expect_name(p);
        } else {
            n->kind = JN_NAME;
            n->name = t->text;
        }
    } else if (t->kind == JT_STRING) {
        /* adjacent string literals concatenate, as in Python */
        jbuf b = {0};
        while (cur(p)->kind == JT_STRING) {
            jstr s = advance(p)->text;
            jj_buf_put(p->c, &b, s.p, s.n);
        }
        n = node(p, JN_CONST, t->line);
        n->value = jv_str(jj_buf_str(&b));
    } else if (t->kind == JT_INT || t->kind == JT_FLOAT) {
        advance(p);
        n = node(p, JN_CONST, t->line);
        n->value = t->kind == JT_INT ? jv_int(t->i) : jv_float(t->f);
    } else if (is_op(t, OP_LPAREN)) {
        advance(p);
        n = parse_tuple(p, false, true, NULL, true, false);
        expect_op(p, OP_RPAREN);
    } else if (is_op(t, OP_LBRACKET))
        n = parse_list(p);
    else if (is_op(t, OP_LBRACE))
        n = parse_dict(p);
    else {
        jbuf b = {0};
        jj_buf_printf(p->c, &b, "unexpected %s", describe(p, t));
        fail_at(p, t, b.p);
    }
    leave(p);
    return n;
}

static jnode *parse_unary(parser *p, bool with_filter) {
    enter(p);
    const jtok *t = cur(p);
    jnode *n;
    if (is_op(t, OP_SUB) || is_op(t, OP_ADD)) {
        advance(p);
        n = node(p, is_op(t, OP_SUB) ? JN_NEG : JN_POS, t->line);
        n->a = parse_unary(p, false);
    } else
        n = parse_primary(p, false);
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_expr(p, n);
    leave(p);
    return n;
}

static jnode *binop(parser *p, int op, jnode *a, jnode *b, int line) {
    jnode *n = node(p, JN_BINOP, line);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static jnode *parse_pow(parser *p) {
    int line = cur(p)->line, links = 0;
    jnode *left = parse_unary(p, true);
    while (is_op(cur(p), OP_POW)) {
        deeper(p, &links);
        advance(p);
        left = binop(p, OP_POW, left, parse_unary(p, true), line);
        line = cur(p)->line;
    }
    shallower(p, links);
    return left;
}

static jnode *parse_math2(parser *p) {
    int line = cur(p)->line, links = 0;
    jnode *left = parse_pow(p);
    while (is_op(cur(p), OP_MUL) || is_op(cur(p), OP_DIV) || is_op(cur(p), OP_FLOORDIV) || is_op(cur(p), OP_MOD)) {
        deeper(p, &links);
        int op = advance(p)->op;
        left = binop(p, op, left, parse_pow(p), line);
        line = cur(p)->line;
    }
    shallower(p, links);
    return left;
}

static jnode *parse_concat(parser *p) {
    int line = cur(p)->line;
    jnode *first = parse_math2(p);
    if (!is_op(cur(p), OP_TILDE)) return first;
    nlist args = {0};
    nl_push(p, &args, first);
    while (is_op(cur(p), OP_TILDE)) {
        advance(p);
        nl_push(p, &args, parse_math2(p));
    }
    jnode *n = node(p, JN_CONCAT, line);
    n->args = nl_done(&args);
    return n;
}

static jnode *parse_math1(parser *p) {
    int line = cur(p)->line, links = 0;
    jnode *left = parse_concat(p);
    while (is_op(cur(p), OP_ADD) || is_op(cur(p), OP_SUB)) {
        deeper(p, &links);
        int op = advance(p)->op;
        left = binop(p, op, left, parse_concat(p), line);
        line = cur(p)->line;
    }
    shallower(p, links);
    return left;
}

static jnode *parse_compare(parser *p) {
    int line = cur(p)->line;
    jnode *expr = parse_math1(p);
    nlist ops = {0};
    for (;;) {
        const jtok *t = cur(p);
        int op;
        if (t->kind == JT_OP && (t->op == OP_EQ || t->op == OP_NE || t->op == OP_LT || t->op == OP_LTEQ ||
                                 t->op == OP_GT || t->op == OP_GTEQ)) {
            op = t->op;
            advance(p);
        } else if (is_name(t, "in")) {
            op = CMP_IN;
            advance(p);
        } else if (is_name(t, "not") && is_name(look(p), "in")) {
            op = CMP_NOTIN;
            advance(p);
            advance(p);
        } else
            break;
        jnode *o = node(p, JN_OPERAND, t->line);
        o->op = op;
        o->a = parse_math1(p);
        nl_push(p, &ops, o);
    }
    if (!ops.n) return expr;
    jnode *n = node(p, JN_COMPARE, line);
    n->a = expr;
    n->args = nl_done(&ops);
    return n;
}

static jnode *parse_not(parser *p) {
    if (is_name(cur(p), "not")) {
        enter(p);
        jnode *n = node(p, JN_NOT, advance(p)->line);
        n->a = parse_not(p);
        leave(p);
        return n;
    }
    return parse_compare(p);
}

static jnode *parse_and(parser *p) {
    int line = cur(p)->line, links = 0;
    jnode *left = parse_not(p);
    while (is_name(cur(p), "and")) {
        deeper(p, &links);
        advance(p);
        jnode *n = node(p, JN_AND, line);
        n->a = left;
        n->b = parse_not(p);
        left = n;
        line = cur(p)->line;
    }
    shallower(p, links);
    return left;
}

static jnode *parse_or(parser *p) {
    int line = cur(p)->line, links = 0;
    jnode *left = parse_and(p);
    while (is_name(cur(p), "or")) {
        deeper(p, &links);
        advance(p);
        jnode *n = node(p, JN_OR, line);
        n->a = left;
        n->b = parse_and(p);
        left = n;
        line = cur(p)->line;
    }
    shallower(p, links);
    return left;
}

static jnode *parse_condexpr(parser *p) {
    int line = cur(p)->line, links = 0;
    jnode *expr = parse_or(p);
    while (is_name(cur(p), "if")) {
        deeper(p, &links);
        advance(p);
        jnode *n = node(p, JN_CONDEXPR, line);
        n->b = expr;
        n->a = parse_or(p);
        if (is_name(cur(p), "else")) {
            advance(p);
            n->c = parse_condexpr(p);
        }
        expr = n;
        line = cur(p)->line;
    }
    shallower(p, links);
    return expr;
}

static jnode *parse_expression(parser *p, bool with_condexpr) {
    enter(p);
    jnode *n = with_condexpr ? parse_condexpr(p) : parse_or(p);
    leave(p);
    return n;
}

static bool is_tuple_end(const parser *p, const char *extra_end) {
    const jtok *t = cur(p);
    if (t->kind == JT_VAR_END || t->kind == JT_BLOCK_END || is_op(t, OP_RPAREN)) return true;
    return extra_end && is_name(t, extra_end);
}

static jnode *parse_tuple(parser *p, bool simplified, bool with_condexpr, const char *extra_end,
                          bool explicit_parens, bool with_namespace) {
    int line = cur(p)->line;
    nlist args = {0};
    bool is_tuple = false;
    for (;;) {
        if (args.n) expect_op(p, OP_COMMA);
        if (is_tuple_end(p, extra_end)) break;
        nl_push(p, &args, simplified ? parse_primary(p, with_namespace) : parse_expression(p, with_condexpr));
        if (is_op(cur(p), OP_COMMA))
            is_tuple = true;
        else
            break;
        line = cur(p)->line;
    }
    if (!is_tuple) {
        if (args.n) return args.v[0];
        if (!explicit_parens) {
            jbuf b = {0};
            jj_buf_printf(p->c, &b, "expected an expression, got %s", describe(p, cur(p)));
            fail_at(p, cur(p), b.p);
        }
    }
    jnode *n = node(p, JN_TUPLE, line);
    n->args = nl_done(&args);
    return n;
}

/* ---- statements ---- */

static jnodes subparse(parser *p, const char *const *end_tags);

static void check_target(parser *p, const jnode *t, bool allow_nsref) {
    if (t->kind == JN_NAME || (allow_nsref && t->kind == JN_NSREF)) return;
    if (t->kind == JN_TUPLE) {
        for (size_t k = 0; k < t->args.n; k++) check_target(p, t->args.v[k], allow_nsref);
        return;
    }
    jj_fail(p->c, MT_ERR_FORMAT, t->line, "can't assign to this expression");
}

/* After the tag's own tokens: optional ':' then '%}', then the body up to one of end_tags. */
static jnodes parse_body(parser *p, const char *const *end_tags, int open_line, const char *tag) {
    if (is_op(cur(p), OP_COLON)) advance(p);
    expect_kind(p, JT_BLOCK_END, "end of statement block");
    jnodes body = subparse(p, end_tags);
    if (cur(p)->kind == JT_EOF) {
        jbuf b = {0};
        jj_buf_printf(p->c, &b, "unexpected end of template: the '%s' block opened on line %d needs ", tag,
                      open_line);
        for (int k = 0; end_tags[k]; k++) jj_buf_printf(p->c, &b, "%s'%s'", k ? " or " : "", end_tags[k]);
        fail_at(p, cur(p), b.p);
    }
    return body;
}

static jnode *parse_for(parser *p, int line) {
    static const char *const ends[] = {"endfor", "else", NULL};
    static const char *const end_only[] = {"endfor", NULL};
    jnode *n = node(p, JN_FOR, line);
    n->a = parse_tuple(p, true, true, "in", false, false);
    check_target(p, n->a, false);
    if (!is_name(cur(p), "in")) fail_expected(p, "'in'");
    advance(p);
    n->b = parse_tuple(p, false, false, "recursive", false, false);
    if (is_name(cur(p), "if")) {
        advance(p);
        n->c = parse_expression(p, true);
    }
    if (is_name(cur(p), "recursive"))
        jj_fail(p->c, MT_ERR_UNSUPPORTED, cur(p)->line, "recursive for loops are not supported");
    p->loops++;
    n->args = parse_body(p, ends, line, "for");
    p->loops--;
    if (jj_str_eq(advance(p)->text, "else")) {
        n->kw = parse_body(p, end_only, line, "for");
        advance(p);
    }
    return n;
}

static jnode *parse_if(parser *p, int line) {
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    static const char *const end_only[] = {"endif", NULL};
    jnode *root = node(p, JN_IF, line), *n = root;
    for (;;) {
        n->a = parse_tuple(p, false, false, NULL, false, false);
        n->args = parse_body(p, ends, line, "if");
        const jtok *t = advance(p);
        if (jj_str_eq(t->text, "elif")) {
            jnode *next = node(p, JN_IF, t->line);
            jnode **slot = jj_alloc(p->c, sizeof *slot);
            *slot = next;
            n->kw = (jnodes){slot, 1};
            n = next;
            continue;
        }
        if (jj_str_eq(t->text, "else")) {
            n->kw = parse_body(p, end_only, line, "if");
            advance(p);
        }
        return root;
    }
}

static jnode *parse_set(parser *p, int line) {
    static const char *const ends[] = {"endset", NULL};
    jnode *target = parse_tuple(p, true, true, NULL, false, true);
    check_target(p, target, true);
    if (is_op(cur(p), OP_ASSIGN)) {
        advance(p);
        jnode *n = node(p, JN_SET, line);
        n->a = target;
        n->b = parse_tuple(p, false, true, NULL, false, false);
        return n;
    }
    jnode *n = node(p, JN_SETBLOCK, line);
    n->a = target;
    n->c = parse_filter(p, NULL, false);
    n->args = parse_body(p, ends, line, "set");
    advance(p);
    return n;
}

static jnode *parse_statement(parser *p) {
    const jtok *t = cur(p);
    if (t->kind != JT_NAME) fail_at(p, t, "tag name expected");
    int line = t->line;
    jstr tag = advance(p)->text;
    enter(p);
    jnode *n;
    if (jj_str_eq(tag, "for"))
        n = parse_for(p, line);
    else if (jj_str_eq(tag, "if"))
        n = parse_if(p, line);
    else if (jj_str_eq(tag, "set"))
        n = parse_set(p, line);
    else if (jj_str_eq(tag, "print")) {
        nlist items = {0};
        while (cur(p)->kind != JT_BLOCK_END) {
            if (items.n) expect_op(p, OP_COMMA);
            jnode *o = node(p, JN_OUTPUT, cur(p)->line);
            o->a = parse_expression(p, true);
            nl_push(p, &items, o);
        }
        n = node(p, JN_BODY, line);
        n->args = nl_done(&items);
    } else if (jj_str_eq(tag, "filter")) {
        static const char *const ends[] = {"endfilter", NULL};
        n = node(p, JN_FILTERBLOCK, line);
        n->c = parse_filter(p, NULL, true);
        n->args = parse_body(p, ends, line, "filter");
        advance(p);
    } else if (jj_str_eq(tag, "generation")) {
        /* transformers' AssistantTracker tag: renders its body unchanged */
        static const char *const ends[] = {"endgeneration", NULL};
        n = node(p, JN_BODY, line);
        n->args = parse_body(p, ends, line, "generation");
        advance(p);
    } else if (jj_str_eq(tag, "break") || jj_str_eq(tag, "continue")) {
        if (!p->loops) jj_fail(p->c, MT_ERR_FORMAT, line, "'%.*s' outside a for loop", (int)tag.n, tag.p);
        n = node(p, jj_str_eq(tag, "break") ? JN_BREAK : JN_CONTINUE, line);
    } else if (in_list(jinja_only_tags, tag))
        jj_fail(p->c, MT_ERR_UNSUPPORTED, line, "the '%.*s' tag is not supported", (int)tag.n, tag.p);
    else
        jj_fail(p->c, MT_ERR_FORMAT, line, "unknown tag '%.*s'", (int)tag.n, tag.p);
    leave(p);
    return n;
}

static bool is_end_tag(const jtok *t, const char *const *end_tags) {
    if (!end_tags || t->kind != JT_NAME) return false;
    for (int k = 0; end_tags[k]; k++)
        if (jj_str_eq(t->text, end_tags[k])) return true;
    return false;
}

/* Statements and text until EOF, or until a {% tag %} named in end_tags (left as the current
 * token, as jinja's subparse leaves it). */
static jnodes subparse(parser *p, const char *const *end_tags) {
    nlist body = {0};
    for (;;) {
        const jtok *t = cur(p);
        if (t->kind == JT_EOF) break;
        if (t->kind == JT_DATA) {
            jnode *n = node(p, JN_DATA, t->line);
            n->name = t->text;
            nl_push(p, &body, n);
            advance(p);
        } else if (t->kind == JT_VAR_BEGIN) {
            advance(p);
            jnode *n = node(p, JN_OUTPUT, t->line);
            n->a = parse_tuple(p, false, true, NULL, false, false);
            expect_kind(p, JT_VAR_END, "end of print statement");
            nl_push(p, &body, n);
        } else if (t->kind == JT_BLOCK_BEGIN) {
            advance(p);
            if (is_end_tag(cur(p), end_tags)) break;
            nl_push(p, &body, parse_statement(p));
            expect_kind(p, JT_BLOCK_END, "end of statement block");
        } else
            fail_at(p, t, "unexpected token");
    }
    return nl_done(&body);
}

jnode *jj_parse(jj_ctx *c, const jtok *toks, size_t n_tok) {
    parser p = {.c = c, .t = toks, .n = n_tok};
    jnode *root = node(&p, JN_BODY, 1);
    root->args = subparse(&p, NULL);
    return root;
}
