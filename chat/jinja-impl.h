/* jinja-impl.h — internals of the Jinja2 subset that renders chat templates the way transformers'
 * apply_chat_template does (jinja2 3.1, trim_blocks + lstrip_blocks, sandboxed): values and their
 * arena, the lexer's tokens, the AST, and the entry points chat_template.c calls. */
#ifndef MT_JINJA_IMPL_H
#define MT_JINJA_IMPL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* ---- limits: malformed or hostile templates must fail cleanly, never exhaust the machine ---- */
#define JJ_MAX_DEPTH 200                    /* nesting of expressions and blocks */
#define JJ_MAX_STEPS 50000000               /* evaluated nodes per render */
#define JJ_MAX_ARENA ((size_t)256 << 20)    /* bytes of values, strings and output */
#define JJ_MAX_RANGE 100000                 /* jinja's sandbox MAX_RANGE */

/* ---- arena: every value, string, token and node of one render lives here ---- */
typedef struct jj_chunk jj_chunk;
typedef struct jj_arena {
    jj_chunk *head;
    size_t total; /* bytes obtained from malloc so far */
} jj_arena;

/* Errors unwind with longjmp to the entry point (mt_jinja_render): everything a render allocates
 * is in the arena, so an error in the middle of a render leaks nothing. */
typedef struct jj_ctx {
    jmp_buf jmp;
    jj_arena arena;
    mt_status code;
    char msg[900];
    int depth;        /* current nesting, against JJ_MAX_DEPTH */
    long max_steps;   /* JJ_MAX_STEPS unless the caller asks for less (the fuzzer does) */
    size_t max_arena; /* JJ_MAX_ARENA unless the caller asks for less */
} jj_ctx;

_Noreturn void jj_fail(jj_ctx *c, mt_status code, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void *jj_alloc(jj_ctx *c, size_t n); /* zeroed */
void jj_arena_free(jj_arena *a);

/* ---- strings: UTF-8 bytes, immutable once made, not NUL-terminated ---- */
typedef struct jstr {
    const char *p;
    size_t n;
} jstr;

jstr jj_str(jj_ctx *c, const char *p, size_t n); /* copies into the arena */
jstr jj_cstr(const char *s);                     /* borrows a C string */
bool jj_str_eq(jstr a, const char *s);
/* Decodes one code point at p[*i] and advances; an invalid byte decodes as itself. */
uint32_t jj_utf8_next(const char *p, size_t n, size_t *i);
size_t jj_utf8_put(char *dst, uint32_t cp); /* at most 4 bytes */
size_t jj_utf8_len(jstr s);                 /* code points, as Python's len() */
bool jj_isspace(uint32_t cp);               /* Python's str.isspace() */

/* Growable byte buffer in the arena (output, captured blocks, string building). */
typedef struct jbuf {
    char *p;
    size_t n, cap;
} jbuf;
void jj_buf_put(jj_ctx *c, jbuf *b, const char *p, size_t n);
void jj_buf_puts(jj_ctx *c, jbuf *b, const char *s);
void jj_buf_printf(jj_ctx *c, jbuf *b, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
jstr jj_buf_str(const jbuf *b);

/* ---- values (Python's objects as a template sees them) ---- */
typedef enum jv_type {
    JV_UNDEF,  /* jinja2.Undefined: renders empty, fails on attribute access and arithmetic */
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST,   /* list, or tuple when l->tuple */
    JV_DICT,
    JV_NS,     /* namespace(): a dict whose attributes `set ns.x = ...` may assign */
    JV_LOOP,   /* the `loop` variable of a for loop */
    JV_FUNC,   /* a global function: range, namespace, dict, raise_exception, strftime_now */
    JV_METHOD, /* obj.method before it is called */
} jv_type;

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jloop jloop;
typedef struct jmethod jmethod;

typedef struct jv {
    jv_type t;
    union {
        bool b;
        int64_t i;
        double f;
        jstr s;
        jlist *l;
        jdict *d;
        jloop *loop;
        int fn;
        jmethod *m;
        const char *undef; /* why it is undefined, for the error message if it is used */
    };
} jv;

/* depth: 1 + the deepest list or dict inside, held under JJ_MAX_DEPTH as items go in, so that
 * ==, ordering and printing, which recurse, stay within the stack. */
struct jlist {
    jv *v; /* [n] */
    size_t n, cap;
    bool tuple;
    int depth;
};
/* Insertion-ordered, linear lookup: chat messages have a handful of keys. */
struct jdict {
    jv *k, *v; /* [n] each */
    size_t n, cap;
    int depth;
};
struct jloop {
    jlist *items;
    size_t index0;
};
struct jmethod {
    jv self;
    const char *name;
};

enum { JF_RANGE, JF_NAMESPACE, JF_DICT, JF_RAISE, JF_STRFTIME, JF_COUNT };
extern const char *const jj_func_names[JF_COUNT];

static inline jv jv_undef(const char *why) { jv v = {.t = JV_UNDEF}; v.undef = why; return v; }
static inline jv jv_none(void) { jv v = {.t = JV_NONE}; return v; }
static inline jv jv_bool(bool b) { jv v = {.t = JV_BOOL}; v.b = b; return v; }
static inline jv jv_int(int64_t i) { jv v = {.t = JV_INT}; v.i = i; return v; }
static inline jv jv_float(double f) { jv v = {.t = JV_FLOAT}; v.f = f; return v; }
static inline jv jv_str(jstr s) { jv v = {.t = JV_STR}; v.s = s; return v; }
static inline jv jv_list(jlist *l) { jv v = {.t = JV_LIST}; v.l = l; return v; }
static inline jv jv_dict(jdict *d) { jv v = {.t = JV_DICT}; v.d = d; return v; }

jlist *jj_list_new(jj_ctx *c, size_t cap);
void jj_list_push(jj_ctx *c, jlist *l, jv v);
jdict *jj_dict_new(jj_ctx *c);
void jj_dict_set(jj_ctx *c, jdict *d, jv key, jv val); /* replaces in place when present */
jv *jj_dict_find(const jdict *d, jv key);              /* NULL when absent */

const char *jj_type_name(jv v); /* Python's type name: 'str', 'dict', 'NoneType', ... */
bool jj_truthy(jv v);
bool jj_equal(jv a, jv b); /* Python's == */
/* Python's <, <=, ... as -1/0/1; fails (TypeError) on unordered types. */
int jj_compare(jj_ctx *c, int line, jv a, jv b);
/* str(v) and repr(v), as Python prints them. */
void jj_write_str(jj_ctx *c, jbuf *b, int line, jv v);
void jj_write_repr(jj_ctx *c, jbuf *b, int line, jv v);
jstr jj_to_str(jj_ctx *c, int line, jv v);
void jj_float_repr(char out[32], double f);

/* json.dumps(v, ensure_ascii, indent, separators, sort_keys) as transformers' tojson calls it.
 * indent: NULL for none, else the string put per level (an int n is n spaces). */
typedef struct jj_json_opts {
    bool ensure_ascii;
    const char *indent;
    size_t indent_len;
    jstr item_sep, key_sep;
    bool sort_keys;
} jj_json_opts;
void jj_json_dump(jj_ctx *c, jbuf *b, int line, jv v, const jj_json_opts *o);
/* Parses JSON text into values (objects keep key order; ints stay ints). */
jv jj_json_parse(jj_ctx *c, const char *text, size_t len);

/* ---- lexer ---- */
typedef enum jt_kind {
    JT_DATA,
    JT_VAR_BEGIN,
    JT_VAR_END,
    JT_BLOCK_BEGIN,
    JT_BLOCK_END,
    JT_NAME,
    JT_STRING,
    JT_INT,
    JT_FLOAT,
    JT_OP,
    JT_EOF,
} jt_kind;

/* Operators, longest spellings first as jinja's lexer matches them. */
typedef enum jop {
    OP_FLOORDIV, OP_POW, OP_EQ, OP_NE, OP_GTEQ, OP_LTEQ,
    OP_ADD, OP_SUB, OP_DIV, OP_MUL, OP_MOD, OP_TILDE, OP_LBRACKET, OP_RBRACKET, OP_LPAREN,
    OP_RPAREN, OP_LBRACE, OP_RBRACE, OP_GT, OP_LT, OP_ASSIGN, OP_DOT, OP_COLON, OP_PIPE,
    OP_COMMA, OP_SEMICOLON,
    OP_COUNT
} jop;
extern const char *const jj_op_spelling[OP_COUNT];

typedef struct jtok {
    jt_kind kind;
    int line;
    jop op;
    jstr text; /* data, name, or the unescaped string literal */
    int64_t i;
    double f;
} jtok;

/* Tokenizes the template after jinja's newline normalisation, applying whitespace control
 * ({%- -%} {{- -}} {#- -#}, trim_blocks, lstrip_blocks). The array ends with JT_EOF. */
jtok *jj_lex(jj_ctx *c, const char *src, size_t len, size_t *n_tok);

/* ---- AST ---- */
typedef enum jn_kind {
    /* statements */
    JN_DATA,      /* text */
    JN_OUTPUT,    /* {{ a }} */
    JN_IF,        /* if a: body (args) else (kw) — elif nests in else */
    JN_FOR,       /* for a in b [if c]: body (args) else (kw) */
    JN_SET,       /* set a = b */
    JN_SETBLOCK,  /* set a [| filters c]: body (args) endset */
    JN_FILTERBLOCK, /* filter c: body (args) endfilter */
    JN_BODY,      /* a plain body (args): {% generation %} */
    JN_BREAK,
    JN_CONTINUE,
    /* expressions */
    JN_CONST,     /* value */
    JN_NAME,      /* name */
    JN_NSREF,     /* name.name2 as an assignment target */
    JN_TUPLE,     /* args */
    JN_LIST,      /* args */
    JN_DICT,      /* args: JN_PAIR (a: key, b: value) */
    JN_PAIR,
    JN_GETATTR,   /* a.name */
    JN_GETITEM,   /* a[b] */
    JN_SLICE,     /* a:b:c, any may be NULL */
    JN_CALL,      /* a(args, kwargs) */
    JN_KWARG,     /* name=a */
    JN_FILTER,    /* a | op(args, kwargs); a NULL inside filter blocks */
    JN_TEST,      /* a is op(args, kwargs) */
    JN_NOT,
    JN_NEG,
    JN_POS,
    JN_AND,
    JN_OR,
    JN_BINOP,     /* a op b: + - * / // % ** */
    JN_CONCAT,    /* args joined with ~ */
    JN_COMPARE,   /* a then args: JN_OPERAND (op, a) */
    JN_OPERAND,
    JN_CONDEXPR,  /* b if a else c */
} jn_kind;

/* compare operators beyond jop */
enum { CMP_IN = OP_COUNT, CMP_NOTIN };

typedef struct jnode jnode;
typedef struct jnodes {
    jnode **v; /* [n] */
    size_t n;
} jnodes;

struct jnode {
    jn_kind kind;
    int line;
    int op;       /* jop, CMP_*, filter or test id */
    jv value;     /* JN_CONST */
    jstr name, name2;
    jnode *a, *b, *c;
    jnodes args;
    jnodes kw;
};

/* Filters and tests, resolved at parse time as jinja resolves them at compile time. */
typedef enum jfilter {
    FL_ABS, FL_CAPITALIZE, FL_COUNT, FL_D, FL_DEFAULT, FL_FIRST, FL_FLOAT, FL_INT, FL_ITEMS,
    FL_JOIN, FL_LAST, FL_LENGTH, FL_LIST, FL_LOWER, FL_MAP, FL_REJECT, FL_REJECTATTR, FL_REPLACE,
    FL_REVERSE, FL_SAFE, FL_SELECT, FL_SELECTATTR, FL_STRING, FL_TITLE, FL_TOJSON, FL_TRIM,
    FL_UPPER,
    FL_N
} jfilter;
typedef enum jtest {
    TS_BOOLEAN, TS_CALLABLE, TS_DEFINED, TS_DIVISIBLEBY, TS_EQ, TS_EQUALTO, TS_EQ_OP, TS_EVEN,
    TS_FALSE, TS_FLOAT, TS_GE, TS_GE_OP, TS_GREATERTHAN, TS_GT, TS_GT_OP, TS_IN, TS_INTEGER,
    TS_ITERABLE, TS_LE, TS_LE_OP, TS_LESSTHAN, TS_LOWER, TS_LT, TS_LT_OP, TS_MAPPING, TS_NE,
    TS_NE_OP, TS_NONE, TS_NUMBER, TS_ODD, TS_SAMEAS, TS_SEQUENCE, TS_STRING, TS_TRUE,
    TS_UNDEFINED, TS_UPPER,
    TS_N
} jtest;
extern const char *const jj_filter_names[FL_N];
extern const char *const jj_test_names[TS_N];

/* Parses tokens into the template body (a JN_BODY). */
jnode *jj_parse(jj_ctx *c, const jtok *toks, size_t n_tok);

/* ---- evaluation ---- */
typedef struct jj_frame jj_frame;
typedef struct jj_eval {
    jj_ctx *c;
    jdict *vars;     /* what the caller passed (messages, bos_token, ...) */
    jj_frame *frame; /* innermost scope: template level, then one per loop iteration */
    jbuf *out;
    long steps;
    int loop_ctl;    /* 1 after {% break %}, 2 after {% continue %}, until the loop sees it */
} jj_eval;

jv jj_eval_expr(jj_eval *e, const jnode *n);
jv jj_getattr(jj_eval *e, int line, jv obj, jstr name);
jv jj_getitem(jj_eval *e, int line, jv obj, jv key);
/* Iterating as Python's for does: list items, dict keys, string characters. */
jlist *jj_iterate(jj_eval *e, int line, jv v);

/* builtins (jinja_builtins.c) */
jv jj_apply_filter(jj_eval *e, const jnode *n, jv val);
bool jj_apply_test(jj_eval *e, const jnode *n, jv val);
jv jj_call_method(jj_eval *e, int line, jv self, const char *name, const jv *args, size_t n_args,
                  const jstr *kw_names, const jv *kw_vals, size_t n_kw);
jv jj_call_func(jj_eval *e, int line, int fn, const jv *args, size_t n_args, const jstr *kw_names,
                const jv *kw_vals, size_t n_kw);
bool jj_has_method(jv self, jstr name);
/* What the sandbox refuses: underscore attributes, and the methods that change a list or dict. */
bool jj_is_unsafe_attr(jv self, jstr name);

/* Renders the parsed template with `vars`; the result is in the arena. */
jstr jj_render(jj_ctx *c, const jnode *root, jdict *vars);

/* ---- entry points (chat_template.c) ---- */

typedef struct jj_limits {
    long max_steps;   /* 0: JJ_MAX_STEPS */
    size_t max_arena; /* 0: JJ_MAX_ARENA */
} jj_limits;

/* Renders template text with variables given as a JSON object (each key a template variable),
 * with transformers' globals (raise_exception, strftime_now, namespace, dict, range). The
 * in-memory entry behind mt_chat_render, and what the tests and the fuzzer drive directly.
 * *out is malloc'ed and NUL-terminated. lim may be NULL. */
mt_status mt_jinja_render(const char *tmpl, size_t tmpl_len, const char *vars_json, size_t vars_len,
                          const jj_limits *lim, char **out, size_t *out_len, mt_error *err);

#endif
