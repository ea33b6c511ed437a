/* test_chat.c — chat templates against transformers' apply_chat_template, byte for byte: the real
 * templates of DeepSeek-V3, Qwen2/2.5/3, Mixtral and Llama-3/3.1 over many conversations, tools
 * and template errors, plus snippets for every filter, test and method (fixtures by
 * tests/reference/make_chat_fixtures.py); prefix stability as the trainer needs it; limits. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/jinja-impl.h"
#include "model/model.h"

/* ---- helpers ---- */

static cJSON *read_json(const char *rel) {
    char *text;
    size_t len;
    mt_error err = {0};
    if (mt_read_file(mt_test_fixture(rel), &text, &len, &err) != MT_OK) fail_msg("%s", err.msg);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j) fail_msg("%s: not JSON", rel);
    return j;
}

static const char *str_of(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(v)) fail_msg("fixture: '%s' is not a string", key);
    return v->valuestring;
}

/* A printable rendering of s for failure messages (static buffer, one at a time). */
static const char *show(const char *s, size_t n) {
    static char buf[900];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 8 < sizeof buf; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\')
            o += (size_t)snprintf(buf + o, sizeof buf - o, "\\\\");
        else if (c == '\n')
            o += (size_t)snprintf(buf + o, sizeof buf - o, "\\n");
        else if (c < 0x20 || c == 0x7f)
            o += (size_t)snprintf(buf + o, sizeof buf - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    buf[o] = '\0';
    return buf;
}

/* Checks a render's outcome against a fixture case: exact bytes, or an error naming the line
 * transformers' traceback names. Returns false (after printing why) on a mismatch. */
static bool check_outcome(const char *what, const cJSON *c, mt_status st, const char *out, size_t len,
                          const mt_error *err) {
    const cJSON *want_err = cJSON_GetObjectItemCaseSensitive(c, "error");
    if (want_err) {
        if (st == MT_OK) {
            print_message("  %s: rendered %s, transformers raised %s\n", what, show(out, len),
                          str_of(want_err, "message"));
            return false;
        }
        const cJSON *line = cJSON_GetObjectItemCaseSensitive(want_err, "line");
        if (cJSON_IsNumber(line)) {
            char want[48];
            snprintf(want, sizeof want, "line %d:", (int)line->valuedouble);
            if (!strstr(err->msg, want)) {
                print_message("  %s: error \"%s\" does not name %s (transformers: %s)\n", what, err->msg, want,
                              str_of(want_err, "message"));
                return false;
            }
        }
        return true;
    }
    const char *want = str_of(c, "expected");
    if (st != MT_OK) {
        print_message("  %s: failed: %s\n", what, err->msg);
        return false;
    }
    size_t wl = strlen(want);
    if (len != wl || memcmp(out, want, wl)) {
        size_t at = 0;
        while (at < len && at < wl && out[at] == want[at]) at++;
        print_message("  %s: differs from byte %zu\n    want: %s\n", what, at, show(want + at, wl - at));
        print_message("    got:  %s\n", show(out + at, len - at));
        return false;
    }
    return true;
}

/* Loads tokenizers/<tok>/tokenizer.json beside chat/<model>/tokenizer_config.json, as
 * transformers loads a model folder. */
static mt_tokenizer *load_model(const char *model, const cJSON *cases) {
    char rel[256], path[4200];
    const char *dir = mt_test_tmpdir(model);
    mt_error err = {0};
    const char *names[2] = {"tokenizer.json", "tokenizer_config.json"};
    for (int k = 0; k < 2; k++) {
        if (k == 0)
            snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer.json", str_of(cases, "tokenizer"));
        else
            snprintf(rel, sizeof rel, "chat/%s/tokenizer_config.json", model);
        char *text;
        size_t len;
        if (mt_read_file(mt_test_fixture(rel), &text, &len, &err) != MT_OK) fail_msg("%s", err.msg);
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        if (mt_write_file_atomic(path, text, len, &err) != MT_OK) fail_msg("%s", err.msg);
        free(text);
    }
    mt_tokenizer *tok = NULL;
    if (mt_tokenizer_load(&tok, dir, &err) != MT_OK) fail_msg("%s", err.msg);
    return tok;
}

typedef struct conv {
    mt_chat_message *msgs;
    size_t n;
} conv;

static conv conv_from_json(const cJSON *arr) {
    conv c = {0};
    c.n = (size_t)cJSON_GetArraySize(arr);
    c.msgs = mt_xcalloc(c.n ? c.n : 1, sizeof *c.msgs);
    size_t i = 0;
    for (const cJSON *m = arr->child; m; m = m->next, i++) {
        c.msgs[i].role = str_of(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        c.msgs[i].content = cJSON_IsString(content) ? content->valuestring : NULL;
    }
    return c;
}

/* Renders or returns NULL (the failure is not this caller's concern). */
static char *render_or_null(const mt_tokenizer *tok, const mt_chat_message *msgs, size_t n, bool agp) {
    char *out;
    size_t len;
    mt_error err = {0};
    return mt_chat_render(tok, msgs, n, agp, &out, &len, &err) == MT_OK ? out : NULL;
}

static bool starts_with(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

/* ---- the real templates ---- */

static void model_parity(const char *model) {
    char rel[256];
    snprintf(rel, sizeof rel, "chat/%s/cases.json", model);
    cJSON *cases = read_json(rel);
    mt_tokenizer *tok = load_model(model, cases);

    /* the template read from tokenizer_config.json is the committed .jinja file, byte for byte */
    snprintf(rel, sizeof rel, "chat/templates/%s", str_of(cases, "template"));
    char *tmpl_file;
    size_t tmpl_len;
    mt_error err = {0};
    if (mt_read_file(mt_test_fixture(rel), &tmpl_file, &tmpl_len, &err) != MT_OK) fail_msg("%s", err.msg);
    const char *tmpl = mt_tokenizer_chat_template(tok);
    assert_non_null(tmpl);
    assert_string_equal(tmpl, tmpl_file);
    free(tmpl_file);

    int bad = 0, n = 0, n_err = 0;
    for (const cJSON *c = cJSON_GetObjectItem(cases, "cases")->child; c; c = c->next, n++) {
        conv cv = conv_from_json(cJSON_GetObjectItem(c, "messages"));
        char *out = NULL;
        size_t len = 0;
        mt_error e = {0};
        mt_status st = mt_chat_render(tok, cv.msgs, cv.n, cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")),
                                      &out, &len, &e);
        char what[300];
        snprintf(what, sizeof what, "%s %s", model, str_of(c, "name"));
        bad += !check_outcome(what, c, st, out, len, &e);
        n_err += st != MT_OK;
        if (st != MT_OK) assert_null(out);
        free(out);
        free(cv.msgs);
    }
    /* tools, tool calls and extra arguments: the exact variables jinja received */
    for (const cJSON *c = cJSON_GetObjectItem(cases, "vars_cases")->child; c; c = c->next, n++) {
        const char *vars = str_of(c, "vars_json");
        char *out = NULL;
        size_t len = 0;
        mt_error e = {0};
        mt_status st = mt_jinja_render(tmpl, strlen(tmpl), vars, strlen(vars), NULL, &out, &len, &e);
        char what[300];
        snprintf(what, sizeof what, "%s %s (with variables)", model, str_of(c, "name"));
        bad += !check_outcome(what, c, st, out, len, &e);
        n_err += st != MT_OK;
        free(out);
    }
    print_message("  %s: %d renders (%d errors as transformers raised them), %d differ\n", model, n, n_err, bad);
    assert_int_equal(bad, 0);
    mt_tokenizer_free(tok);
    cJSON_Delete(cases);
}

static void test_deepseek_v3(void **state) { (void)state; model_parity("deepseek_v3"); }
static void test_qwen2(void **state) { (void)state; model_parity("qwen2"); }
static void test_qwen2_5(void **state) { (void)state; model_parity("qwen2_5"); }
static void test_qwen3(void **state) { (void)state; model_parity("qwen3"); }
static void test_mixtral(void **state) { (void)state; model_parity("mixtral"); }
static void test_mixtral_original(void **state) { (void)state; model_parity("mixtral_original"); }
static void test_llama3(void **state) { (void)state; model_parity("llama3"); }
static void test_llama3_1(void **state) { (void)state; model_parity("llama3_1"); }
static void test_special_tokens(void **state) { (void)state; model_parity("special_tokens"); }

/* ---- snippets: one filter, test, method or whitespace rule each ---- */

static void test_snippets(void **state) {
    (void)state;
    cJSON *cases = read_json("chat/snippets.json");
    int bad = 0, n = 0;
    for (const cJSON *c = cases->child; c; c = c->next, n++) {
        const char *tmpl = str_of(c, "template"), *vars = str_of(c, "vars_json");
        char *out = NULL;
        size_t len = 0;
        mt_error e = {0};
        mt_status st = mt_jinja_render(tmpl, strlen(tmpl), vars, strlen(vars), NULL, &out, &len, &e);
        bad += !check_outcome(str_of(c, "name"), c, st, out, len, &e);
        free(out);
    }
    print_message("  %d snippets, %d differ\n", n, bad);
    assert_int_equal(bad, 0);
    cJSON_Delete(cases);
}

/* ---- prefix stability: what the trainer relies on to mask all but assistant turns ---- */

/* For each conversation that renders: (a) messages[:k] renders to a prefix of messages[:n];
 * (b) messages[:k] with the generation prompt renders to a prefix of messages[:k+1] when
 * message k is the assistant's. The fixture says whether transformers' renderings have each
 * property over the same conversations; ours must agree, and must have it where it holds. */
static void prefix_stability(const char *model) {
    char rel[256];
    snprintf(rel, sizeof rel, "chat/%s/cases.json", model);
    cJSON *cases = read_json(rel);
    mt_tokenizer *tok = load_model(model, cases);
    bool stable = true, prompt_stable = true;
    int checked = 0;
    for (const cJSON *c = cJSON_GetObjectItem(cases, "cases")->child; c; c = c->next) {
        if (cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"))) continue; /* each conversation once */
        conv cv = conv_from_json(cJSON_GetObjectItem(c, "messages"));
        char *full = render_or_null(tok, cv.msgs, cv.n, false);
        for (size_t k = 1; full && k < cv.n; k++) {
            char *part = render_or_null(tok, cv.msgs, k, false);
            if (part) {
                checked++;
                if (!starts_with(full, part) && stable) {
                    print_message("  %s %s: messages[:%zu] is not a prefix of the whole\n", model, str_of(c, "name"), k);
                    stable = false;
                }
            }
            free(part);
            if (!strcmp(cv.msgs[k].role, "assistant")) {
                char *prompt = render_or_null(tok, cv.msgs, k, true), *longer = render_or_null(tok, cv.msgs, k + 1, false);
                if (prompt && longer && !starts_with(longer, prompt)) prompt_stable = false;
                free(prompt);
                free(longer);
            }
        }
        free(full);
        free(cv.msgs);
    }
    assert_true(checked > 10);
    assert_int_equal(stable, cJSON_IsTrue(cJSON_GetObjectItem(cases, "prefix_stable")));
    assert_int_equal(prompt_stable, cJSON_IsTrue(cJSON_GetObjectItem(cases, "prompt_prefix_stable")));
    mt_tokenizer_free(tok);
    cJSON_Delete(cases);
}

static void test_prefix_stability(void **state) {
    (void)state;
    /* stable in both senses */
    static const char *const both[] = {"deepseek_v3", "qwen2", "qwen2_5", "mixtral", "llama3", "llama3_1"};
    for (size_t i = 0; i < sizeof both / sizeof *both; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "chat/%s/cases.json", both[i]);
        cJSON *cases = read_json(rel);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cases, "prefix_stable")));
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cases, "prompt_prefix_stable")));
        cJSON_Delete(cases);
        prefix_stability(both[i]);
    }
    /* Qwen3 adds an empty <think></think> to an assistant turn after the last user message,
     * so a conversation cut after an assistant turn is not a prefix of the whole; the
     * generation prompt still is, which is what masking assistant turns needs. */
    prefix_stability("qwen3");
}

/* ---- errors and limits ---- */

static mt_status render_text(const char *tmpl, const char *vars, const jj_limits *lim, char **out, mt_error *err) {
    size_t len;
    mt_error_clear(err);
    return mt_jinja_render(tmpl, strlen(tmpl), vars, strlen(vars), lim, out, &len, err);
}

static void expect_error(const char *tmpl, const char *vars, const jj_limits *lim, mt_status code, const char *needle) {
    char *out = (char *)"sentinel";
    mt_error err = {0};
    mt_status st = render_text(tmpl, vars, lim, &out, &err);
    if (st == MT_OK) {
        print_message("  rendered \"%s\" where an error was expected\n", show(out, strlen(out)));
        free(out);
        fail();
    }
    assert_null(out);
    if (st != code || !strstr(err.msg, needle)) fail_msg("error %s \"%s\", expected %s with \"%s\"", mt_status_name(st), err.msg, mt_status_name(code), needle);
}

static void test_syntax_errors(void **state) {
    (void)state;
    expect_error("a\nb\n{% if x %}\nc", "{}", NULL, MT_ERR_FORMAT, "line 4: unexpected end of template");
    expect_error("a\n\n{{ 'x' | nosuchfilter }}", "{}", NULL, MT_ERR_FORMAT, "line 3: no filter named 'nosuchfilter'");
    expect_error("{{ 1 is nosuchtest }}", "{}", NULL, MT_ERR_FORMAT, "line 1: no test named 'nosuchtest'");
    expect_error("x\n{{ 1 | indent }}", "{}", NULL, MT_ERR_UNSUPPORTED, "line 2: the filter 'indent' is not supported");
    expect_error("\n{% macro m() %}{% endmacro %}", "{}", NULL, MT_ERR_UNSUPPORTED, "line 2: the 'macro' tag is not supported");
    expect_error("{{ (1 }}", "{}", NULL, MT_ERR_FORMAT, "line 1:");
    expect_error("{{ 'abc }}", "{}", NULL, MT_ERR_FORMAT, "unterminated string");
    expect_error("ok\n{% endfor %}", "{}", NULL, MT_ERR_FORMAT, "line 2:");
    /* a syntax error is reported even when the variables are bad: jinja compiles first */
    expect_error("{% if %}", "not json", NULL, MT_ERR_FORMAT, "line 1:");
}

static void test_runtime_errors(void **state) {
    (void)state;
    expect_error("one\ntwo\n{{ raise_exception('Roles must alternate') }}", "{}", NULL, MT_ERR_INVALID,
                 "chat template line 3: Roles must alternate");
    expect_error("{{ x.y }}", "{}", NULL, MT_ERR_INVALID, "'x' is undefined");
    expect_error("{{ m.role }}\n{{ m.nope + 1 }}", "{\"m\": {\"role\": \"user\"}}", NULL, MT_ERR_INVALID,
                 "line 2: 'dict object' has no attribute 'nope'");
    expect_error("{{ [1] | map('nosuch') | list }}", "{}", NULL, MT_ERR_INVALID, "No filter named 'nosuch'.");
    expect_error("{{ x }}", "[1, 2]", NULL, MT_ERR_INVALID, "variables must be a JSON object");
    expect_error("{{ x }}", "{\"x\": }", NULL, MT_ERR_FORMAT, "template variables (JSON)");
    char *out;
    mt_error err = {0};
    /* invalid UTF-8 in the template: Python could not have read it */
    assert_int_equal(mt_jinja_render("a\xff", 2, "{}", 2, NULL, &out, NULL, &err), MT_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "not valid UTF-8"));
}

static void test_limits(void **state) {
    (void)state;
    /* steps: a template that would loop 10^10 times stops at the limit, default and lowered */
    const char *loops = "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}";
    jj_limits small = {.max_steps = 100000};
    expect_error(loops, "{}", &small, MT_ERR_INVALID, "line 1: rendering took more than 100000 steps");
    expect_error(loops, "{}", NULL, MT_ERR_INVALID, "rendering took more than 50000000 steps");
    /* memory: output that would reach gigabytes */
    jj_limits mem = {.max_arena = (size_t)8 << 20};
    expect_error("{% set s = 'x' * 100000 %}{% for i in range(100000) %}{{ s }}{% endfor %}", "{}", &mem, MT_ERR_NOMEM,
                 "rendering needs more than 8 MiB");
    expect_error("{{ 'x' * 1000000000000 }}", "{}", NULL, MT_ERR_NOMEM, "repeated string too large");
    expect_error("{{ range(100001) | length }}", "{}", NULL, MT_ERR_INVALID, "Range too big");
    /* nesting: expressions, blocks and variables deeper than JJ_MAX_DEPTH */
    size_t depth = 2 * JJ_MAX_DEPTH + 10;
    char *deep = mt_xmalloc(depth * 16 + 64), *p = deep;
    p += sprintf(p, "{{ ");
    for (size_t i = 0; i < depth; i++) *p++ = '(';
    *p++ = '1';
    for (size_t i = 0; i < depth; i++) *p++ = ')';
    sprintf(p, " }}");
    expect_error(deep, "{}", NULL, MT_ERR_FORMAT, "nested too deeply");
    p = deep;
    for (size_t i = 0; i < depth; i++) p += sprintf(p, "{%% if 1 %%}");
    *p = 0;
    expect_error(deep, "{}", NULL, MT_ERR_FORMAT, "nested too deeply");
    p = deep;
    for (size_t i = 0; i < depth; i++) *p++ = '[';
    for (size_t i = 0; i < depth; i++) *p++ = ']';
    *p = 0;
    char *vars = mt_xmalloc(depth * 2 + 16);
    snprintf(vars, depth * 2 + 16, "{\"x\": %s}", deep);
    expect_error("{{ x }}", vars, NULL, MT_ERR_FORMAT, "nested too deeply");
    free(vars);
    /* chains build trees as deep as they are long, which evaluation recurses through */
    static const char *const links[] = {"|trim", "+1", ".a", "[0]", " or 1", " and 1", " if 1 else 0", "()", " ** 1"};
    deep = mt_xrealloc(deep, 10000 * 16 + 64);
    for (size_t k = 0; k < sizeof links / sizeof *links; k++) {
        p = deep;
        p += sprintf(p, "{{ 1");
        for (int i = 0; i < 10000; i++) p += sprintf(p, "%s", links[k]);
        sprintf(p, " }}");
        expect_error(deep, "{}", NULL, MT_ERR_FORMAT, "nested too deeply");
    }
    /* a value built deeper and deeper at run time stops at the value depth limit */
    expect_error("{% set ns = namespace(x=[]) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}"
                 "{{ ns.x == ns.x }}",
                 "{}", NULL, MT_ERR_INVALID, "nested more than 400 levels deep");
    /* 100 links is not deep */
    char *out;
    mt_error err = {0};
    p = deep;
    p += sprintf(p, "{{ 'a'");
    for (int i = 0; i < 100; i++) p += sprintf(p, "|trim");
    sprintf(p, " }}");
    assert_int_equal(render_text(deep, "{}", NULL, &out, &err), MT_OK);
    assert_string_equal(out, "a");
    free(out);
    free(deep);
}

static void test_chat_render_api(void **state) {
    (void)state;
    cJSON *cases = read_json("chat/llama3/cases.json");
    mt_tokenizer *tok = load_model("llama3", cases);
    cJSON_Delete(cases);
    mt_chat_message msgs[] = {{"user", "Hi"}, {"assistant", "Hello"}};
    char *out;
    size_t len;
    mt_error err = {0};
    assert_int_equal(mt_chat_render(tok, msgs, 2, true, &out, &len, &err), MT_OK);
    assert_int_equal(len, strlen(out));
    assert_string_equal(out, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(out);
    /* len may be NULL */
    assert_int_equal(mt_chat_render(tok, msgs, 1, false, &out, NULL, &err), MT_OK);
    free(out);
    assert_int_equal(mt_chat_render(tok, msgs, 0, false, &out, &len, &err), MT_ERR_INVALID);
    assert_null(out);
    mt_chat_message bad_utf8[] = {{"user", "a\xc3"}};
    mt_error_clear(&err);
    assert_int_equal(mt_chat_render(tok, bad_utf8, 1, false, &out, &len, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "chat message 0 (user): content is not valid UTF-8"));
    mt_chat_message no_role[] = {{NULL, "x"}};
    mt_error_clear(&err);
    assert_int_equal(mt_chat_render(tok, no_role, 1, false, &out, &len, &err), MT_ERR_INVALID);
    mt_tokenizer_free(tok);

    /* a tokenizer without a template */
    mt_tokenizer *plain = NULL;
    assert_int_equal(mt_tokenizer_load(&plain, mt_test_fixture("tokenizers/gpt2"), &err), MT_OK);
    mt_error_clear(&err);
    assert_int_equal(mt_chat_render(plain, msgs, 2, false, &out, &len, &err), MT_ERR_NOT_FOUND);
    assert_null(out);
    mt_tokenizer_free(plain);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deepseek_v3),
        cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_qwen2_5),
        cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_mixtral),
        cmocka_unit_test(test_mixtral_original),
        cmocka_unit_test(test_llama3),
        cmocka_unit_test(test_llama3_1),
        cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_snippets),
        cmocka_unit_test(test_prefix_stability),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_runtime_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_chat_render_api),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
