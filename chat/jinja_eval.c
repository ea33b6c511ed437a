/* jinja_eval.c — walks the AST and writes the output: statements (if, for with loop/else/filter,
 * set with namespaces and tuples, block set, break/continue), expressions with Python's operator
 * semantics, and jinja's rules for undefined values, attribute/item lookup and scoping (each loop
 * iteration is a scope of its own, which is why templates need namespace()). */
#include "jinja-impl.h"

#include <math.h>
#include <string.h>

struct jj_frame {
    jj_frame *parent;
    jdict *vars;
};

static void step(jj_eval *e, int line) {
    long limit = e->c->max_steps ? e->c->max_steps : JJ_MAX_STEPS;
    if (++e->steps > limit) jj_fail(e->c, MT_ERR_INVALID, line, "rendering took more than %ld steps", limit);
}

static jv undef_msg(jj_eval *e, const char *fmt, jstr name, jv obj) {
    jbuf b = {0};
    jj_buf_printf(e->c, &b, fmt, jj_type_name(obj), (int)(name.n < 80 ? name.n : 80), name.p);
    return jv_undef(b.p);
}

static jv lookup(jj_eval *e, jstr name) {
    jv key = jv_str(name);
    for (jj_frame *f = e->frame; f; f = f->parent) {
        jv *v = jj_dict_find(f->vars, key);
        if (v) return *v;
    }
    jv *v = jj_dict_find(e->vars, key);
    if (v) return *v;
    for (int k = 0; k < JF_COUNT; k++)
        if (jj_str_eq(name, jj_func_names[k])) {
            jv f = {.t = JV_FUNC};
            f.fn = k;
            return f;
        }
    jbuf b = {0};
    jj_buf_printf(e->c, &b, "'%.*s' is undefined", (int)(name.n < 80 ? name.n : 80), name.p);
    return jv_undef(b.p);
}

_Noreturn static void fail_undef(jj_eval *e, int line, jv v) { jj_fail(e->c, MT_ERR_INVALID, line, "%s", v.undef); }

/* ---- attribute and item access (jinja's sandboxed getattr/getitem) ---- */

static jv loop_attr(jj_eval *e, const jloop *l, jstr name, jv self) {
    size_t n = l->items->n, i = l->index0;
    if (jj_str_eq(name, "index")) return jv_int((int64_t)i + 1);
    if (jj_str_eq(name, "index0")) return jv_int((int64_t)i);
    if (jj_str_eq(name, "revindex")) return jv_int((int64_t)(n - i));
    if (jj_str_eq(name, "revindex0")) return jv_int((int64_t)(n - i - 1));
    if (jj_str_eq(name, "first")) return jv_bool(i == 0);
    if (jj_str_eq(name, "last")) return jv_bool(i + 1 == n);
    if (jj_str_eq(name, "length")) return jv_int((int64_t)n);
    if (jj_str_eq(name, "depth")) return jv_int(1);
    if (jj_str_eq(name, "depth0")) return jv_int(0);
    if (jj_str_eq(name, "previtem"))
        return i > 0 ? l->items->v[i - 1] : jv_undef("there is no previous item");
    if (jj_str_eq(name, "nextitem"))
        return i + 1 < n ? l->items->v[i + 1] : jv_undef("there is no next item");
    if (jj_str_eq(name, "cycle")) {
        jmethod *m = jj_alloc(e->c, sizeof *m);
        m->self = self;
        m->name = "cycle";
        jv v = {.t = JV_METHOD};
        v.m = m;
        return v;
    }
    return undef_msg(e, "'%s object' has no attribute '%.*s'", name, self);
}

jv jj_getattr(jj_eval *e, int line, jv obj, jstr name) {
    switch (obj.t) {
    case JV_UNDEF: fail_undef(e, line, obj);
    case JV_LOOP: return loop_attr(e, obj.loop, name, obj);
    case JV_NS: {
        jv *v = jj_dict_find(obj.d, jv_str(name));
        return v ? *v : undef_msg(e, "'%s object' has no attribute '%.*s'", name, obj);
    }
    case JV_DICT:
    case JV_STR:
    case JV_LIST:
        if (jj_is_unsafe_attr(obj, name)) {
            jbuf b = {0};
            jj_buf_printf(e->c, &b, "access to attribute '%.*s' of '%s' object is unsafe.",
                          (int)(name.n < 80 ? name.n : 80), name.p, jj_type_name(obj));
            return jv_undef(b.p);
        }
        if (jj_has_method(obj, name)) {
            jmethod *m = jj_alloc(e->c, sizeof *m);
            m->self = obj;
            m->name = jj_str(e->c, name.p, name.n).p;
            jv v = {.t = JV_METHOD};
            v.m = m;
            return v;
        }
        if (obj.t == JV_DICT) {
            jv *v = jj_dict_find(obj.d, jv_str(name));
            if (v) return *v;
        }
        return undef_msg(e, "'%s object' has no attribute '%.*s'", name, obj);
    default: return undef_msg(e, "'%s object' has no attribute '%.*s'", name, obj);
    }
}

/* Python's index normalisation: negative counts from the end; false when out of range. */
static bool norm_index(jv key, size_t n, size_t *out) {
    int64_t i;
    if (key.t == JV_INT)
        i = key.i;
    else if (key.t == JV_BOOL)
        i = key.b;
    else
        return false;
    if (i < 0) i += (int64_t)n;
    if (i < 0 || (uint64_t)i >= n) return false;
    *out = (size_t)i;
    return true;
}

static jv missing_item(jj_eval *e, jv obj, jv key) {
    jbuf b = {0};
    if (key.t == JV_STR)
        jj_buf_printf(e->c, &b, "'%s object' has no attribute '%.*s'", jj_type_name(obj),
                      (int)(key.s.n < 80 ? key.s.n : 80), key.s.p);
    else {
        jj_buf_printf(e->c, &b, "%s object has no element ", jj_type_name(obj));
        jj_write_repr(e->c, &b, 0, key.t == JV_LIST || key.t == JV_DICT ? jv_str(jj_cstr("...")) : key);
    }
    return jv_undef(b.p);
}

jv jj_getitem(jj_eval *e, int line, jv obj, jv key) {
    size_t idx;
    switch (obj.t) {
    case JV_UNDEF: fail_undef(e, line, obj);
    case JV_DICT: {
        if (key.t == JV_LIST || key.t == JV_DICT || key.t == JV_NS)
            jj_fail(e->c, MT_ERR_INVALID, line, "unhashable type: '%s'", jj_type_name(key));
        jv *v = jj_dict_find(obj.d, key);
        if (v) return *v;
        break;
    }
    case JV_LIST:
        if (norm_index(key, obj.l->n, &idx)) return obj.l->v[idx];
        break;
    case JV_STR:
        if (key.t == JV_INT || key.t == JV_BOOL) {
            size_t n = jj_utf8_len(obj.s);
            if (norm_index(key, n, &idx)) {
                size_t i = 0;
                for (size_t k = 0; k < idx; k++) jj_utf8_next(obj.s.p, obj.s.n, &i);
                size_t start = i;
                jj_utf8_next(obj.s.p, obj.s.n, &i);
                return jv_str((jstr){obj.s.p + start, i - start});
            }
        }
        break;
    case JV_NS:
    case JV_LOOP:
        break;
    default: return missing_item(e, obj, key);
    }
    if (key.t == JV_STR) return jj_getattr(e, line, obj, key.s);
    return missing_item(e, obj, key);
}

/* A slice bound: *given says whether there is one; *bad that it is not an integer. */
static int64_t slice_arg(jj_eval *e, const jnode *n, bool *given, bool *bad) {
    *given = false;
    if (!n) return 0;
    jv v = jj_eval_expr(e, n);
    if (v.t == JV_NONE) return 0;
    if (v.t != JV_INT && v.t != JV_BOOL) {
        *bad = true;
        return 0;
    }
    *given = true;
    return v.t == JV_INT ? v.i : v.b;
}

/* obj[a:b:c] with Python's index adjustment, on lists, tuples and strings (by code point).
 * jinja compiles a slice to a plain Python subscript, not to the sandbox's getitem, so every
 * failure is an error rather than an undefined value. */
static jv eval_slice(jj_eval *e, const jnode *n, jv obj) {
    int line = n->line;
    bool has_start, has_stop, has_step, bad = false;
    int64_t start = slice_arg(e, n->a, &has_start, &bad), stop = slice_arg(e, n->b, &has_stop, &bad),
            stepv = slice_arg(e, n->c, &has_step, &bad);
    if (obj.t == JV_UNDEF) fail_undef(e, line, obj);
    if (obj.t == JV_DICT) jj_fail(e->c, MT_ERR_INVALID, line, "unhashable type: 'slice'");
    if (obj.t != JV_LIST && obj.t != JV_STR)
        jj_fail(e->c, MT_ERR_INVALID, line, "'%s' object is not subscriptable", jj_type_name(obj));
    if (bad) jj_fail(e->c, MT_ERR_INVALID, line, "slice indices must be integers or None or have an __index__ method");
    if (!has_step) stepv = 1;
    if (stepv == 0) jj_fail(e->c, MT_ERR_INVALID, line, "slice step cannot be zero");

    /* strings slice by code point: index their starts first */
    size_t len;
    size_t *offs = NULL;
    if (obj.t == JV_STR) {
        len = jj_utf8_len(obj.s);
        offs = jj_alloc(e->c, (len + 1) * sizeof *offs);
        size_t i = 0;
        for (size_t k = 0; k < len; k++) {
            offs[k] = i;
            jj_utf8_next(obj.s.p, obj.s.n, &i);
        }
        offs[len] = obj.s.n;
    } else
        len = obj.l->n;
    int64_t L = (int64_t)len;
    if (stepv > 0) {
        if (!has_start) start = 0;
        else if (start < 0 && (start += L) < 0) start = 0;
        else if (start > L) start = L;
        if (!has_stop) stop = L;
        else if (stop < 0 && (stop += L) < 0) stop = 0;
        else if (stop > L) stop = L;
    } else {
        if (!has_start) start = L - 1;
        else if (start < 0 && (start += L) < 0) start = -1;
        else if (start >= L) start = L - 1;
        if (!has_stop) stop = -1;
        else if (stop < 0 && (stop += L) < 0) stop = -1;
        else if (stop >= L) stop = L - 1;
    }
    if (obj.t == JV_LIST) {
        jlist *out = jj_list_new(e->c, 0);
        out->tuple = obj.l->tuple;
        for (int64_t i = start; stepv > 0 ? i < stop : i > stop; i += stepv) jj_list_push(e->c, out, obj.l->v[i]);
        return jv_list(out);
    }
    if (stepv == 1) return jv_str((jstr){obj.s.p + offs[start], start < stop ? offs[stop] - offs[start] : 0});
    jbuf b = {0};
    jj_buf_put(e->c, &b, "", 0);
    for (int64_t i = start; stepv > 0 ? i < stop : i > stop; i += stepv)
        jj_buf_put(e->c, &b, obj.s.p + offs[i], offs[i + 1] - offs[i]);
    return jv_str(jj_buf_str(&b));
}

jlist *jj_iterate(jj_eval *e, int line, jv v) {
    jlist *l;
    switch (v.t) {
    case JV_LIST: return v.l;
    case JV_UNDEF: return jj_list_new(e->c, 0);
    case JV_DICT:
        l = jj_list_new(e->c, v.d->n);
        for (size_t i = 0; i < v.d->n; i++) jj_list_push(e->c, l, v.d->k[i]);
        return l;
    case JV_STR:
        l = jj_list_new(e->c, 0);
        for (size_t i = 0; i < v.s.n;) {
            size_t start = i;
            jj_utf8_next(v.s.p, v.s.n, &i);
            jj_list_push(e->c, l, jv_str((jstr){v.s.p + start, i - start}));
        }
        return l;
    case JV_LOOP: return v.loop->items;
    default: jj_fail(e->c, MT_ERR_INVALID, line, "'%s' object is not iterable", jj_type_name(v));
    }
}

/* ---- operators ---- */

_Noreturn static void fail_operands(jj_eval *e, int line, const char *op, jv a, jv b) {
    if (a.t == JV_UNDEF) fail_undef(e, line, a);
    if (b.t == JV_UNDEF) fail_undef(e, line, b);
    if (a.t == JV_STR && !strcmp(op, "+"))
        jj_fail(e->c, MT_ERR_INVALID, line, "can only concatenate str (not \"%s\") to str", jj_type_name(b));
    jj_fail(e->c, MT_ERR_INVALID, line, "unsupported operand type(s) for %s: '%s' and '%s'", op, jj_type_name(a),
            jj_type_name(b));
}

static bool is_intlike(jv v) { return v.t == JV_INT || v.t == JV_BOOL; }
static bool is_num(jv v) { return is_intlike(v) || v.t == JV_FLOAT; }
static int64_t as_int(jv v) { return v.t == JV_INT ? v.i : v.b; }
static double as_float(jv v) { return v.t == JV_FLOAT ? v.f : (double)as_int(v); }

static jv repeat(jj_eval *e, int line, jv seq, int64_t times) {
    if (times < 0) times = 0;
    if (seq.t == JV_STR) {
        if (times && seq.s.n > JJ_MAX_ARENA / (uint64_t)times)
            jj_fail(e->c, MT_ERR_NOMEM, line, "repeated string too large");
        jbuf b = {0};
        jj_buf_put(e->c, &b, "", 0);
        for (int64_t k = 0; k < times; k++) jj_buf_put(e->c, &b, seq.s.p, seq.s.n);
        return jv_str(jj_buf_str(&b));
    }
    if (times && seq.l->n > JJ_MAX_ARENA / sizeof(jv) / (uint64_t)times)
        jj_fail(e->c, MT_ERR_NOMEM, line, "repeated list too large");
    jlist *l = jj_list_new(e->c, 0);
    l->tuple = seq.l->tuple;
    for (int64_t k = 0; k < times; k++)
        for (size_t i = 0; i < seq.l->n; i++) jj_list_push(e->c, l, seq.l->v[i]);
    return jv_list(l);
}

static jv binop(jj_eval *e, int line, int op, jv a, jv b) {
    int64_t r;
    switch (op) {
    case OP_ADD:
        if (is_intlike(a) && is_intlike(b)) {
            if (__builtin_add_overflow(as_int(a), as_int(b), &r)) break;
            return jv_int(r);
        }
        if (is_num(a) && is_num(b)) return jv_float(as_float(a) + as_float(b));
        if (a.t == JV_STR && b.t == JV_STR) {
            char *p = jj_alloc(e->c, a.s.n + b.s.n + 1);
            memcpy(p, a.s.p, a.s.n);
            memcpy(p + a.s.n, b.s.p, b.s.n);
            return jv_str((jstr){p, a.s.n + b.s.n});
        }
        if (a.t == JV_LIST && b.t == JV_LIST && a.l->tuple == b.l->tuple) {
            jlist *l = jj_list_new(e->c, a.l->n + b.l->n);
            l->tuple = a.l->tuple;
            for (size_t i = 0; i < a.l->n; i++) jj_list_push(e->c, l, a.l->v[i]);
            for (size_t i = 0; i < b.l->n; i++) jj_list_push(e->c, l, b.l->v[i]);
            return jv_list(l);
        }
        fail_operands(e, line, "+", a, b);
    case OP_SUB:
        if (is_intlike(a) && is_intlike(b)) {
            if (__builtin_sub_overflow(as_int(a), as_int(b), &r)) break;
            return jv_int(r);
        }
        if (is_num(a) && is_num(b)) return jv_float(as_float(a) - as_float(b));
        fail_operands(e, line, "-", a, b);
    case OP_MUL:
        if (is_intlike(a) && is_intlike(b)) {
            if (__builtin_mul_overflow(as_int(a), as_int(b), &r)) break;
            return jv_int(r);
        }
        if (is_num(a) && is_num(b)) return jv_float(as_float(a) * as_float(b));
        if ((a.t == JV_STR || a.t == JV_LIST) && is_intlike(b)) return repeat(e, line, a, as_int(b));
        if ((b.t == JV_STR || b.t == JV_LIST) && is_intlike(a)) return repeat(e, line, b, as_int(a));
        fail_operands(e, line, "*", a, b);
    case OP_DIV:
        if (!is_num(a) || !is_num(b)) fail_operands(e, line, "/", a, b);
        if (as_float(b) == 0.0) jj_fail(e->c, MT_ERR_INVALID, line, "division by zero");
        return jv_float(as_float(a) / as_float(b));
    case OP_FLOORDIV:
    case OP_MOD: {
        const char *name = op == OP_MOD ? "%" : "//";
        if (!is_num(a) || !is_num(b)) fail_operands(e, line, name, a, b);
        if (is_intlike(a) && is_intlike(b)) {
            int64_t x = as_int(a), y = as_int(b);
            if (!y) jj_fail(e->c, MT_ERR_INVALID, line, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) break;
            int64_t q = x / y, m = x % y;
            if (m && ((m < 0) != (y < 0))) {
                q--;
                m += y;
            }
            return jv_int(op == OP_MOD ? m : q);
        }
        double x = as_float(a), y = as_float(b);
        if (y == 0.0) jj_fail(e->c, MT_ERR_INVALID, line, "float division by zero");
        /* CPython's float_divmod */
        double m = fmod(x, y), d = (x - m) / y;
        if (m) {
            if ((y < 0) != (m < 0)) {
                m += y;
                d -= 1.0;
            }
        } else
            m = copysign(0.0, y);
        double q;
        if (d) {
            q = floor(d);
            if (d - q > 0.5) q += 1.0;
        } else
            q = copysign(0.0, x / y);
        return jv_float(op == OP_MOD ? m : q);
    }
    case OP_POW:
        if (!is_num(a) || !is_num(b)) fail_operands(e, line, "**", a, b);
        if (is_intlike(a) && is_intlike(b) && as_int(b) >= 0) {
            int64_t base = as_int(a), ex = as_int(b), acc = 1;
            while (ex) {
                if (ex & 1 && __builtin_mul_overflow(acc, base, &acc)) goto overflow;
                ex >>= 1;
                if (ex && __builtin_mul_overflow(base, base, &base)) goto overflow;
            }
            return jv_int(acc);
        }
        if (as_float(a) == 0.0 && as_float(b) < 0)
            jj_fail(e->c, MT_ERR_INVALID, line, "0.0 cannot be raised to a negative power");
        if (as_float(a) < 0 && as_float(b) != floor(as_float(b)))
            jj_fail(e->c, MT_ERR_UNSUPPORTED, line, "complex results are not supported");
        return jv_float(pow(as_float(a), as_float(b)));
    default: break;
    }
overflow:
    jj_fail(e->c, MT_ERR_UNSUPPORTED, line, "integer result outside the 64-bit range");
}

static bool contains(jj_eval *e, int line, jv needle, jv hay) {
    switch (hay.t) {
    case JV_STR:
        if (needle.t != JV_STR)
            jj_fail(e->c, MT_ERR_INVALID, line, "'in <string>' requires string as left operand, not %s",
                    jj_type_name(needle));
        if (!needle.s.n) return true;
        for (size_t i = 0; i + needle.s.n <= hay.s.n; i++)
            if (!memcmp(hay.s.p + i, needle.s.p, needle.s.n)) return true;
        return false;
    case JV_LIST:
        for (size_t i = 0; i < hay.l->n; i++)
            if (jj_equal(hay.l->v[i], needle)) return true;
        return false;
    case JV_DICT:
        if (needle.t == JV_LIST || needle.t == JV_DICT)
            jj_fail(e->c, MT_ERR_INVALID, line, "unhashable type: '%s'", jj_type_name(needle));
        return jj_dict_find(hay.d, needle) != NULL;
    case JV_UNDEF: return false;
    case JV_LOOP: return contains(e, line, needle, jv_list(hay.loop->items));
    default: jj_fail(e->c, MT_ERR_INVALID, line, "argument of type '%s' is not iterable", jj_type_name(hay));
    }
}

static bool compare_op(jj_eval *e, int line, int op, jv a, jv b) {
    switch (op) {
    case OP_EQ: return jj_equal(a, b);
    case OP_NE: return !jj_equal(a, b);
    case OP_LT: return jj_compare(e->c, line, a, b) < 0;
    case OP_LTEQ: return jj_compare(e->c, line, a, b) <= 0;
    case OP_GT: return jj_compare(e->c, line, a, b) > 0;
    case OP_GTEQ: return jj_compare(e->c, line, a, b) >= 0;
    case CMP_IN: return contains(e, line, a, b);
    case CMP_NOTIN: return !contains(e, line, a, b);
    default: return false;
    }
}

/* ---- calls ---- */

typedef struct callargs {
    jv *pos;
    size_t n_pos;
    jstr *kw_names;
    jv *kw_vals;
    size_t n_kw;
} callargs;

static callargs eval_args(jj_eval *e, const jnode *n) {
    callargs a = {0};
    a.n_pos = n->args.n;
    a.n_kw = n->kw.n;
    if (a.n_pos) a.pos = jj_alloc(e->c, a.n_pos * sizeof(jv));
    if (a.n_kw) {
        a.kw_names = jj_alloc(e->c, a.n_kw * sizeof(jstr));
        a.kw_vals = jj_alloc(e->c, a.n_kw * sizeof(jv));
    }
    for (size_t k = 0; k < a.n_pos; k++) a.pos[k] = jj_eval_expr(e, n->args.v[k]);
    for (size_t k = 0; k < a.n_kw; k++) {
        a.kw_names[k] = n->kw.v[k]->name;
        a.kw_vals[k] = jj_eval_expr(e, n->kw.v[k]->a);
    }
    return a;
}

static jv call_value(jj_eval *e, int line, jv f, const callargs *a) {
    switch (f.t) {
    case JV_FUNC: return jj_call_func(e, line, f.fn, a->pos, a->n_pos, a->kw_names, a->kw_vals, a->n_kw);
    case JV_METHOD:
        return jj_call_method(e, line, f.m->self, f.m->name, a->pos, a->n_pos, a->kw_names, a->kw_vals, a->n_kw);
    case JV_UNDEF: fail_undef(e, line, f);
    default: jj_fail(e->c, MT_ERR_INVALID, line, "'%s' object is not callable", jj_type_name(f));
    }
}

static jv eval_call(jj_eval *e, const jnode *n) {
    jv f;
    if (n->a->kind == JN_GETATTR) {
        /* obj.method(...) without materialising the bound method first */
        jv obj = jj_eval_expr(e, n->a->a);
        if ((obj.t == JV_STR || obj.t == JV_DICT || obj.t == JV_LIST) && jj_has_method(obj, n->a->name)) {
            callargs a = eval_args(e, n);
            jstr name = jj_str(e->c, n->a->name.p, n->a->name.n);
            return jj_call_method(e, n->line, obj, name.p, a.pos, a.n_pos, a.kw_names, a.kw_vals, a.n_kw);
        }
        f = jj_getattr(e, n->a->line, obj, n->a->name);
    } else
        f = jj_eval_expr(e, n->a);
    callargs a = eval_args(e, n);
    return call_value(e, n->line, f, &a);
}

/* ---- expressions ---- */

static jv eval_filter_chain(jj_eval *e, const jnode *n, jv input) {
    jv val = n->a ? (n->a->kind == JN_FILTER ? eval_filter_chain(e, n->a, input) : jj_eval_expr(e, n->a)) : input;
    return jj_apply_filter(e, n, val);
}

jv jj_eval_expr(jj_eval *e, const jnode *n) {
    step(e, n->line);
    switch (n->kind) {
    case JN_CONST: return n->value;
    case JN_NAME: return lookup(e, n->name);
    case JN_GETATTR: return jj_getattr(e, n->line, jj_eval_expr(e, n->a), n->name);
    case JN_GETITEM: {
        jv obj = jj_eval_expr(e, n->a);
        if (n->b->kind == JN_SLICE) return eval_slice(e, n->b, obj);
        return jj_getitem(e, n->line, obj, jj_eval_expr(e, n->b));
    }
    case JN_CALL: return eval_call(e, n);
    case JN_FILTER: return jj_apply_filter(e, n, jj_eval_expr(e, n->a));
    case JN_TEST: return jv_bool(jj_apply_test(e, n, jj_eval_expr(e, n->a)));
    case JN_NOT: return jv_bool(!jj_truthy(jj_eval_expr(e, n->a)));
    case JN_NEG:
    case JN_POS: {
        jv v = jj_eval_expr(e, n->a);
        if (v.t == JV_UNDEF) fail_undef(e, n->line, v);
        if (!is_num(v))
            jj_fail(e->c, MT_ERR_INVALID, n->line, "bad operand type for unary %s: '%s'",
                    n->kind == JN_NEG ? "-" : "+", jj_type_name(v));
        if (n->kind == JN_POS) return v.t == JV_BOOL ? jv_int(v.b) : v;
        if (v.t == JV_FLOAT) return jv_float(-v.f);
        if (as_int(v) == INT64_MIN) jj_fail(e->c, MT_ERR_UNSUPPORTED, n->line, "integer outside the 64-bit range");
        return jv_int(-as_int(v));
    }
    case JN_AND: {
        jv a = jj_eval_expr(e, n->a);
        return jj_truthy(a) ? jj_eval_expr(e, n->b) : a;
    }
    case JN_OR: {
        jv a = jj_eval_expr(e, n->a);
        return jj_truthy(a) ? a : jj_eval_expr(e, n->b);
    }
    case JN_BINOP: {
        jv a = jj_eval_expr(e, n->a);
        jv b = jj_eval_expr(e, n->b);
        return binop(e, n->line, n->op, a, b);
    }
    case JN_CONCAT: {
        jbuf b = {0};
        jj_buf_put(e->c, &b, "", 0);
        for (size_t k = 0; k < n->args.n; k++) jj_write_str(e->c, &b, n->line, jj_eval_expr(e, n->args.v[k]));
        return jv_str(jj_buf_str(&b));
    }
    case JN_COMPARE: {
        jv left = jj_eval_expr(e, n->a);
        for (size_t k = 0; k < n->args.n; k++) {
            const jnode *o = n->args.v[k];
            jv right = jj_eval_expr(e, o->a);
            if (!compare_op(e, o->line, o->op, left, right)) return jv_bool(false);
            left = right;
        }
        return jv_bool(true);
    }
    case JN_CONDEXPR:
        if (jj_truthy(jj_eval_expr(e, n->a))) return jj_eval_expr(e, n->b);
        return n->c ? jj_eval_expr(e, n->c) : jv_undef("the inline if-expression evaluated to false and has no else");
    case JN_LIST:
    case JN_TUPLE: {
        jlist *l = jj_list_new(e->c, n->args.n);
        l->tuple = n->kind == JN_TUPLE;
        for (size_t k = 0; k < n->args.n; k++) jj_list_push(e->c, l, jj_eval_expr(e, n->args.v[k]));
        return jv_list(l);
    }
    case JN_DICT: {
        jdict *d = jj_dict_new(e->c);
        for (size_t k = 0; k < n->args.n; k++) {
            jv key = jj_eval_expr(e, n->args.v[k]->a);
            if (key.t == JV_LIST || key.t == JV_DICT || key.t == JV_NS || key.t == JV_UNDEF)
                jj_fail(e->c, MT_ERR_INVALID, n->line, "unhashable dict key of type '%s'", jj_type_name(key));
            jj_dict_set(e->c, d, key, jj_eval_expr(e, n->args.v[k]->b));
        }
        return jv_dict(d);
    }
    default: jj_fail(e->c, MT_ERR_INVALID, n->line, "this expression cannot be evaluated here");
    }
}

/* ---- statements ---- */

static void exec_body(jj_eval *e, jnodes body);

static void assign(jj_eval *e, const jnode *target, jv v) {
    switch (target->kind) {
    case JN_NAME: jj_dict_set(e->c, e->frame->vars, jv_str(target->name), v); return;
    case JN_NSREF: {
        jv ns = lookup(e, target->name);
        if (ns.t != JV_NS)
            jj_fail(e->c, MT_ERR_INVALID, target->line, "cannot assign attribute '%.*s' on '%.*s', which is not a namespace",
                    (int)target->name2.n, target->name2.p, (int)target->name.n, target->name.p);
        if (target->name2.n && target->name2.p[0] == '_')
            jj_fail(e->c, MT_ERR_INVALID, target->line, "namespaces cannot store underscore-prefixed attributes");
        jj_dict_set(e->c, ns.d, jv_str(target->name2), v);
        return;
    }
    case JN_TUPLE: {
        jlist *items = jj_iterate(e, target->line, v);
        if (items->n != target->args.n)
            jj_fail(e->c, MT_ERR_INVALID, target->line, "%s values to unpack (expected %zu, got %zu)",
                    items->n < target->args.n ? "not enough" : "too many", target->args.n, items->n);
        for (size_t k = 0; k < items->n; k++) assign(e, target->args.v[k], items->v[k]);
        return;
    }
    default: jj_fail(e->c, MT_ERR_INVALID, target->line, "cannot assign to this expression");
    }
}

static jj_frame *push_frame(jj_eval *e) {
    jj_frame *f = jj_alloc(e->c, sizeof *f);
    f->parent = e->frame;
    f->vars = jj_dict_new(e->c);
    e->frame = f;
    return f;
}

static void exec_for(jj_eval *e, const jnode *n) {
    jlist *items = jj_iterate(e, n->line, jj_eval_expr(e, n->b));
    jj_frame *outer = e->frame;
    /* One frame serves every iteration, emptied in between: each iteration is a fresh scope,
     * and a long loop does not grow the arena by a scope per item. */
    jj_frame *f = push_frame(e);
    e->frame = outer;
    if (n->c) {
        /* `for x in xs if cond` filters before looping, so loop.length counts what is kept */
        jlist *kept = jj_list_new(e->c, 0);
        for (size_t i = 0; i < items->n; i++) {
            f->vars->n = 0;
            e->frame = f;
            assign(e, n->a, items->v[i]);
            bool keep = jj_truthy(jj_eval_expr(e, n->c));
            e->frame = outer;
            if (keep) jj_list_push(e->c, kept, items->v[i]);
        }
        items = kept;
    }
    if (!items->n) {
        exec_body(e, n->kw);
        return;
    }
    jloop *loop = jj_alloc(e->c, sizeof *loop);
    loop->items = items;
    jv loopv = {.t = JV_LOOP};
    loopv.loop = loop;
    for (size_t i = 0; i < items->n; i++) {
        step(e, n->line); /* an iteration is work even when its body is empty */
        loop->index0 = i;
        f->vars->n = 0;
        e->frame = f;
        jj_dict_set(e->c, f->vars, jv_str(jj_cstr("loop")), loopv);
        assign(e, n->a, items->v[i]);
        exec_body(e, n->args);
        e->frame = outer;
        int ctl = e->loop_ctl;
        e->loop_ctl = 0;
        if (ctl == 1) break;
    }
}

/* Renders a body into a string instead of the output (block set, filter blocks). */
static jstr capture(jj_eval *e, jnodes body) {
    jbuf b = {0}, *saved = e->out;
    jj_buf_put(e->c, &b, "", 0);
    e->out = &b;
    exec_body(e, body);
    e->out = saved;
    return jj_buf_str(&b);
}

static void exec_node(jj_eval *e, const jnode *n) {
    step(e, n->line);
    switch (n->kind) {
    case JN_DATA: jj_buf_put(e->c, e->out, n->name.p, n->name.n); return;
    case JN_OUTPUT: jj_write_str(e->c, e->out, n->line, jj_eval_expr(e, n->a)); return;
    case JN_IF: exec_body(e, jj_truthy(jj_eval_expr(e, n->a)) ? n->args : n->kw); return;
    case JN_FOR: exec_for(e, n); return;
    case JN_SET: assign(e, n->a, jj_eval_expr(e, n->b)); return;
    case JN_SETBLOCK: {
        jv v = jv_str(capture(e, n->args));
        if (n->c) v = eval_filter_chain(e, n->c, v);
        assign(e, n->a, v);
        return;
    }
    case JN_FILTERBLOCK: {
        jv v = eval_filter_chain(e, n->c, jv_str(capture(e, n->args)));
        jj_write_str(e->c, e->out, n->line, v);
        return;
    }
    case JN_BODY: exec_body(e, n->args); return;
    case JN_BREAK: e->loop_ctl = 1; return;
    case JN_CONTINUE: e->loop_ctl = 2; return;
    default: jj_fail(e->c, MT_ERR_INVALID, n->line, "this statement cannot be executed here");
    }
}

static void exec_body(jj_eval *e, jnodes body) {
    for (size_t k = 0; k < body.n && !e->loop_ctl; k++) exec_node(e, body.v[k]);
}

jstr jj_render(jj_ctx *c, const jnode *root, jdict *vars) {
    jbuf out = {0};
    jj_buf_put(c, &out, "", 0);
    jj_eval e = {.c = c, .vars = vars, .out = &out};
    push_frame(&e);
    exec_body(&e, root->args);
    return jj_buf_str(&out);
}
