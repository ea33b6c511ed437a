/* chat_template.c — renders a tokenizer's chat template as transformers' apply_chat_template
 * does (tokenize=False): the same variables (messages, tools, documents, add_generation_prompt,
 * the config's special tokens), then lex, parse and render in one arena that errors unwind. */
#include <stdlib.h>
#include <string.h>

#include "chat/chat.h"
#include "jinja-impl.h"

/* What a render reads its variables from: chat messages, or a JSON object of variables. */
typedef struct chat_input {
    const mt_tokenizer *tok;
    const mt_chat_message *msgs;
    size_t n_msgs;
    bool add_generation_prompt;
    const char *vars_json;
    size_t vars_len;
} chat_input;

static void set_var(jj_ctx *c, jdict *vars, const char *name, jv v) { jj_dict_set(c, vars, jv_str(jj_cstr(name)), v); }

/* The keyword arguments render_jinja_template passes to jinja's render(). */
static jdict *chat_vars(jj_ctx *c, const chat_input *in) {
    jdict *vars = jj_dict_new(c);
    jlist *messages = jj_list_new(c, in->n_msgs);
    for (size_t i = 0; i < in->n_msgs; i++) {
        /* apply_chat_template drops keys whose value is None, so a NULL content is absent */
        jdict *m = jj_dict_new(c);
        jj_dict_set(c, m, jv_str(jj_cstr("role")), jv_str(jj_cstr(in->msgs[i].role)));
        if (in->msgs[i].content) jj_dict_set(c, m, jv_str(jj_cstr("content")), jv_str(jj_cstr(in->msgs[i].content)));
        jj_list_push(c, messages, jv_dict(m));
    }
    set_var(c, vars, "messages", jv_list(messages));
    set_var(c, vars, "tools", jv_none());
    set_var(c, vars, "documents", jv_none());
    set_var(c, vars, "add_generation_prompt", jv_bool(in->add_generation_prompt));
    const char *const *keys, *const *vals;
    int n = mt_tokenizer_config_tokens(in->tok, &keys, &vals);
    for (int i = 0; i < n; i++) set_var(c, vars, keys[i], jv_str(jj_cstr(vals[i])));
    return vars;
}

static jdict *json_vars(jj_ctx *c, const chat_input *in) {
    jv v = jj_json_parse(c, in->vars_json, in->vars_len);
    if (v.t != JV_DICT) jj_fail(c, MT_ERR_INVALID, 0, "template variables must be a JSON object");
    return v.d;
}

static mt_status render(const char *tmpl, size_t tmpl_len, const jj_limits *lim, const chat_input *in, char **out,
                        size_t *out_len, mt_error *err) {
    *out = NULL;
    if (out_len) *out_len = 0;
    size_t bad;
    if (!mt_utf8_valid(tmpl, tmpl_len, &bad))
        return mt_error_set(err, MT_ERR_FORMAT, "chat template: not valid UTF-8 (byte %zu)", bad);
    /* on the heap: the context outlives nothing, and longjmp leaves no locals to trust */
    jj_ctx *c = mt_xcalloc(1, sizeof *c);
    if (lim) {
        c->max_steps = lim->max_steps;
        c->max_arena = lim->max_arena;
    }
    if (setjmp(c->jmp)) {
        mt_status st = mt_error_set(err, c->code, "%s", c->msg);
        jj_arena_free(&c->arena);
        free(c);
        return st;
    }
    /* jinja compiles before it renders: a syntax error wins over bad variables */
    size_t n_tok;
    jtok *toks = jj_lex(c, tmpl, tmpl_len, &n_tok);
    jnode *root = jj_parse(c, toks, n_tok);
    jdict *vars = in->vars_json ? json_vars(c, in) : chat_vars(c, in);
    jstr text = jj_render(c, root, vars);
    char *res = malloc(text.n + 1);
    if (!res) {
        jj_arena_free(&c->arena);
        free(c);
        return mt_error_set(err, MT_ERR_NOMEM, "chat template: out of memory for %zu bytes of output", text.n);
    }
    memcpy(res, text.p, text.n);
    res[text.n] = 0;
    *out = res;
    if (out_len) *out_len = text.n;
    jj_arena_free(&c->arena);
    free(c);
    return MT_OK;
}

mt_status mt_jinja_render(const char *tmpl, size_t tmpl_len, const char *vars_json, size_t vars_len,
                          const jj_limits *lim, char **out, size_t *out_len, mt_error *err) {
    size_t bad;
    if (!mt_utf8_valid(vars_json, vars_len, &bad)) {
        *out = NULL;
        return mt_error_set(err, MT_ERR_FORMAT, "template variables: not valid UTF-8 (byte %zu)", bad);
    }
    chat_input in = {.vars_json = vars_json, .vars_len = vars_len};
    return render(tmpl, tmpl_len, lim, &in, out, out_len, err);
}

mt_status mt_chat_render(const mt_tokenizer *tok, const mt_chat_message *msgs, size_t n_msgs,
                         bool add_generation_prompt, char **out, size_t *len, mt_error *err) {
    *out = NULL;
    if (len) *len = 0;
    const char *tmpl = mt_tokenizer_chat_template(tok);
    if (!tmpl) return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: the tokenizer has no chat template",
                                     mt_tokenizer_origin(tok));
    /* transformers refuses an empty conversation before it looks at the template */
    if (!n_msgs) return mt_error_set(err, MT_ERR_INVALID, "chat template: the conversation has no messages");
    for (size_t i = 0; i < n_msgs; i++) {
        size_t bad;
        if (!msgs[i].role) return mt_error_set(err, MT_ERR_INVALID, "chat message %zu: no role", i);
        if (!mt_utf8_valid(msgs[i].role, strlen(msgs[i].role), &bad))
            return mt_error_set(err, MT_ERR_INVALID, "chat message %zu: role is not valid UTF-8 (byte %zu)", i, bad);
        if (msgs[i].content && !mt_utf8_valid(msgs[i].content, strlen(msgs[i].content), &bad))
            return mt_error_set(err, MT_ERR_INVALID, "chat message %zu (%s): content is not valid UTF-8 (byte %zu)", i,
                                msgs[i].role, bad);
    }
    chat_input in = {.tok = tok, .msgs = msgs, .n_msgs = n_msgs, .add_generation_prompt = add_generation_prompt};
    return render(tmpl, strlen(tmpl), NULL, &in, out, len, err);
}
