/* test_data.c — the trainer's data path (finetune/data.c, white-box): JSONL formats tokenized
 * as the tokenizer alone would, prompt masking, the token cache, packing with document
 * boundaries, unpacked rows, the eval split, epoch orders, and errors that name file:line. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../finetune/data-impl.h"

static mt_tokenizer *tok;
static char tok_hash[65];

static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", mt_test_fixture("tokenizers/deepseek_v3"));
    /* the folder, so that tokenizer_config.json's chat template comes with it */
    if (mt_tokenizer_load(&tok, mt_test_fixture("tokenizers/deepseek_v3"), &err) != MT_OK) return -1;
    return mt_sha256_file_hex(path, tok_hash, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_tokenizer_free(tok);
    return 0;
}

static const char *write_file(const char *dir, const char *name, const char *text) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static mt_status load(const char *path, mt_recipe_format fmt, bool mask, const char *cache, mt_docs *d,
                      mt_data_source *src, mt_error *err) {
    char *items[] = {(char *)path};
    mt_recipe_list l = {1, items};
    memset(d, 0, sizeof *d);
    return mt_data_load(&l, fmt, mask, tok, tok_hash, cache, d, src, err);
}

static void encode(const char *text, bool special, int32_t **ids, size_t *n) {
    mt_error err = {0};
    assert_int_equal(mt_tokenizer_encode(tok, text, strlen(text), special, ids, n, &err), MT_OK);
}

static void test_text_and_cache(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("data_text");
    const char *texts[] = {"The licensee shall not sublicense.", "Copyright 2024 \\u00e9l\\u00e8ve, all rights."};
    const char *decoded[] = {"The licensee shall not sublicense.", "Copyright 2024 \xc3\xa9l\xc3\xa8ve, all rights."};
    char body[512];
    snprintf(body, sizeof body, "{\"text\": \"%s\"}\n\n{\"text\": \"%s\", \"id\": 3}\n", texts[0], texts[1]);
    char path[4200];
    snprintf(path, sizeof path, "%s", write_file(dir, "a.jsonl", body));
    char cache[4200];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    mt_docs d;
    mt_data_source src;
    mt_error err = {0};
    if (load(path, MT_RECIPE_FORMAT_AUTO, true, cache, &d, &src, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(d.n_docs, 2);
    assert_int_equal(src.format, MT_RECIPE_FORMAT_TEXT);
    assert_false(src.from_cache);
    int32_t eos = mt_tokenizer_eos_id(tok);
    for (int k = 0; k < 2; k++) {
        int32_t *ids;
        size_t n;
        encode(decoded[k], true, &ids, &n);
        int64_t a = d.doc_off[k];
        assert_int_equal(d.doc_off[k + 1] - a, (int64_t)n + (eos >= 0));
        assert_memory_equal(d.ids + a, ids, n * sizeof(int32_t));
        if (eos >= 0) assert_int_equal(d.ids[a + (int64_t)n], eos);
        for (int64_t i = a + 1; i < d.doc_off[k + 1]; i++) assert_int_equal(d.learn[i], 1);
        free(ids);
    }
    /* the second load comes from the cache and is the same */
    mt_docs c;
    mt_data_source src2;
    if (load(path, MT_RECIPE_FORMAT_AUTO, true, cache, &c, &src2, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_true(src2.from_cache);
    assert_string_equal(src.sha256, src2.sha256);
    assert_int_equal(c.n_tokens, d.n_tokens);
    assert_memory_equal(c.ids, d.ids, (size_t)d.n_tokens * sizeof(int32_t));
    assert_memory_equal(c.learn, d.learn, (size_t)d.n_tokens);
    mt_docs_free(&c);
    /* changing the file invalidates the cache */
    write_file(dir, "a.jsonl", "{\"text\": \"other\"}\n");
    if (load(path, MT_RECIPE_FORMAT_AUTO, true, cache, &c, &src2, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_false(src2.from_cache);
    assert_int_equal(c.n_docs, 1);
    mt_docs_free(&c);
    mt_docs_free(&d);
}

static void test_prompt_masking(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("data_prompt");
    char path[4200];
    snprintf(path, sizeof path, "%s",
             write_file(dir, "p.jsonl", "{\"prompt\": \"Q: what is a tort?\", \"completion\": \" A civil wrong.\"}\n"));
    int32_t *p_ids, *c_ids;
    size_t np, nc;
    encode("Q: what is a tort?", true, &p_ids, &np);
    encode(" A civil wrong.", false, &c_ids, &nc);
    for (int mask = 0; mask < 2; mask++) {
        mt_docs d;
        mt_data_source src;
        mt_error err = {0};
        if (load(path, MT_RECIPE_FORMAT_AUTO, mask, NULL, &d, &src, &err) != MT_OK) fail_msg("%s", err.msg);
        assert_int_equal(src.format, MT_RECIPE_FORMAT_PROMPT_COMPLETION);
        assert_memory_equal(d.ids, p_ids, np * sizeof(int32_t));
        assert_memory_equal(d.ids + np, c_ids, nc * sizeof(int32_t));
        for (size_t i = 1; i < np; i++) assert_int_equal(d.learn[i], !mask);
        for (size_t i = np; i < (size_t)d.n_tokens; i++) assert_int_equal(d.learn[i], 1);
        /* rows: with the mask, only completion tokens (and EOS) are targets */
        mt_rows r;
        assert_int_equal(mt_rows_build(&d, 64, false, 0, &r, &err), MT_OK);
        assert_int_equal(r.n_rows, 1);
        int64_t want = mask ? (int64_t)d.n_tokens - (int64_t)np : (int64_t)d.n_tokens - 1;
        assert_int_equal(r.n_targets[0], want);
        mt_rows_free(&r);
        mt_docs_free(&d);
    }
    free(p_ids);
    free(c_ids);
}

/* Hand-made documents so every row value can be worked out. */
static mt_docs make_docs(const int *lens, int n_docs) {
    mt_docs d = {0};
    int64_t total = 0;
    for (int i = 0; i < n_docs; i++) total += lens[i];
    d.ids = mt_xcalloc((size_t)total, sizeof(int32_t));
    d.learn = mt_xcalloc((size_t)total, 1);
    d.doc_off = mt_xcalloc((size_t)n_docs + 1, sizeof(int64_t));
    for (int i = 0, p = 0; i < n_docs; i++) {
        d.doc_off[i] = p;
        for (int k = 0; k < lens[i]; k++, p++) {
            d.ids[p] = 100 * (i + 1) + k;
            d.learn[p] = k > 0;
        }
    }
    d.doc_off[n_docs] = total;
    d.n_docs = n_docs;
    d.n_tokens = total;
    return d;
}

static void test_packing(void **state) {
    (void)state;
    int lens[] = {5, 3, 6};
    mt_docs d = make_docs(lens, 3);
    mt_rows r;
    mt_error err = {0};
    assert_int_equal(mt_rows_build(&d, 4, true, 7, &r, &err), MT_OK);
    /* stream of 14 tokens, 13 predictions: 4 rows of 4 */
    assert_int_equal(r.n_rows, 4);
    const int32_t I = MT_IGNORE_INDEX;
    const int32_t tokens[16] = {100, 101, 102, 103, 104, 200, 201, 202, 300, 301, 302, 303, 304, 305, 7, 7};
    const int32_t targets[16] = {101, 102, 103, 104, I, 201, 202, I, 301, 302, 303, 304, 305, I, I, I};
    const int32_t pos[16] = {0, 1, 2, 3, 0, 0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 0};
    const int32_t kv[16] = {0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 2, 3};
    assert_memory_equal(r.tokens, tokens, sizeof tokens);
    assert_memory_equal(r.targets, targets, sizeof targets);
    assert_memory_equal(r.pos, pos, sizeof pos);
    assert_memory_equal(r.kv_start, kv, sizeof kv);
    const int32_t nt[4] = {4, 2, 4, 1};
    assert_memory_equal(r.n_targets, nt, sizeof nt);
    mt_rows_free(&r);

    /* unpacked: each document on rows of its own, padded */
    assert_int_equal(mt_rows_build(&d, 4, false, 7, &r, &err), MT_OK);
    assert_int_equal(r.n_rows, 4); /* 5 tokens: 4 predictions (1 row); 3: 2 (1); 6: 5 (2) */
    const int32_t t2[16] = {100, 101, 102, 103, 200, 201, 202, 7, 300, 301, 302, 303, 304, 305, 7, 7};
    const int32_t g2[16] = {101, 102, 103, 104, 201, 202, I, I, 301, 302, 303, 304, 305, I, I, I};
    assert_memory_equal(r.tokens, t2, sizeof t2);
    assert_memory_equal(r.targets, g2, sizeof g2);
    mt_rows_free(&r);

    assert_int_equal(mt_rows_build(&d, 1, true, 0, &r, &err), MT_ERR_INVALID);
    mt_docs_free(&d);
}

static void test_split_and_order(void **state) {
    (void)state;
    int lens[40];
    for (int i = 0; i < 40; i++) lens[i] = 3 + i % 5;
    mt_docs d = make_docs(lens, 40);
    mt_docs tr, ev, tr2, ev2;
    mt_docs_split(&d, 0.25, 9, &tr, &ev);
    mt_docs_split(&d, 0.25, 9, &tr2, &ev2);
    assert_int_equal(tr.n_docs + ev.n_docs, 40);
    assert_int_equal(tr.n_tokens + ev.n_tokens, d.n_tokens);
    assert_true(ev.n_docs > 0 && tr.n_docs > ev.n_docs);
    assert_int_equal(ev.n_docs, ev2.n_docs);
    assert_memory_equal(ev.ids, ev2.ids, (size_t)ev.n_tokens * sizeof(int32_t));
    mt_docs_free(&tr2);
    mt_docs_free(&ev2);
    /* a tiny fraction still holds one document out */
    mt_docs_split(&d, 1e-9, 9, &tr2, &ev2);
    assert_int_equal(ev2.n_docs, 1);
    mt_docs_free(&tr2);
    mt_docs_free(&ev2);
    mt_docs_free(&tr);
    mt_docs_free(&ev);
    mt_docs_free(&d);

    int64_t a[50], b[50], c[50];
    mt_rows_epoch_order(50, 1, 0, true, a);
    mt_rows_epoch_order(50, 1, 0, true, b);
    mt_rows_epoch_order(50, 1, 1, true, c);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    int seen[50] = {0};
    for (int i = 0; i < 50; i++) seen[a[i]]++;
    for (int i = 0; i < 50; i++) assert_int_equal(seen[i], 1);
    mt_rows_epoch_order(50, 1, 3, false, c);
    for (int i = 0; i < 50; i++) assert_int_equal(c[i], i);
}

static void test_errors_name_file_and_line(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("data_errors");
    struct {
        const char *body;
        mt_recipe_format fmt;
        const char *want;
    } cases[] = {
        {"{\"text\": \"ok\"}\n{\"text\": \"broken\n", MT_RECIPE_FORMAT_AUTO, "bad.jsonl:2: not a JSON object"},
        {"{\"text\": \"ok\"}\n\n{\"text\": 5}\n", MT_RECIPE_FORMAT_TEXT, "bad.jsonl:3: expected a string \"text\""},
        {"{\"title\": \"x\"}\n", MT_RECIPE_FORMAT_AUTO, "bad.jsonl:1: cannot tell the format"},
        {"{\"prompt\": \"x\"}\n", MT_RECIPE_FORMAT_PROMPT_COMPLETION, "bad.jsonl:1: expected string \"prompt\""},
        {"{\"messages\": []}\n", MT_RECIPE_FORMAT_MESSAGES, "bad.jsonl:1: \"messages\" is empty"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s", write_file(dir, "bad.jsonl", cases[i].body));
        mt_docs d;
        mt_data_source src;
        mt_error err = {0};
        assert_int_equal(load(path, cases[i].fmt, true, NULL, &d, &src, &err), MT_ERR_FORMAT);
        if (!strstr(err.msg, cases[i].want)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, cases[i].want);
        mt_docs_free(&d);
    }
    mt_docs d;
    mt_data_source src;
    mt_error err = {0};
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/none.jsonl", dir);
    assert_int_not_equal(load(missing, MT_RECIPE_FORMAT_AUTO, true, NULL, &d, &src, &err), MT_OK);
    assert_non_null(strstr(err.msg, "none.jsonl"));
    mt_docs_free(&d);
}

/* Conversations render through the tokenizer's chat template; only what the assistant wrote
 * (and the template's end of its turn) is learnt. */
static void test_messages_learn_only_assistant_turns(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("data_messages");
    char path[4200];
    snprintf(path, sizeof path, "%s",
             write_file(dir, "m.jsonl",
                        "{\"messages\": [{\"role\": \"system\", \"content\": \"You are a careful lawyer.\"}, "
                        "{\"role\": \"user\", \"content\": \"What is a tort?\"}, "
                        "{\"role\": \"assistant\", \"content\": \"A civil wrong.\"}, "
                        "{\"role\": \"user\", \"content\": \"And a crime?\"}, "
                        "{\"role\": \"assistant\", \"content\": \"A public wrong.\"}]}\n"));
    mt_docs d;
    mt_data_source src;
    mt_error err = {0};
    if (load(path, MT_RECIPE_FORMAT_AUTO, true, NULL, &d, &src, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(src.format, MT_RECIPE_FORMAT_MESSAGES);
    assert_int_equal(d.n_docs, 1);
    /* the tokens are the whole rendered conversation */
    mt_chat_message msgs[] = {{"system", "You are a careful lawyer."}, {"user", "What is a tort?"},
                              {"assistant", "A civil wrong."}, {"user", "And a crime?"},
                              {"assistant", "A public wrong."}};
    char *full, *text;
    size_t full_len, text_len;
    assert_int_equal(mt_chat_render(tok, msgs, 5, false, &full, &full_len, &err), MT_OK);
    assert_int_equal(mt_tokenizer_decode(tok, d.ids, (size_t)d.n_tokens, false, &text, &text_len, &err), MT_OK);
    assert_string_equal(text, full);
    free(text);
    /* what is learnt, decoded run by run, is the two answers and what ends their turns */
    int32_t *learnt = mt_xcalloc((size_t)d.n_tokens, sizeof(int32_t));
    int32_t *context = mt_xcalloc((size_t)d.n_tokens, sizeof(int32_t));
    size_t nl = 0, nc = 0;
    for (int64_t i = 0; i < d.n_tokens; i++) {
        if (d.learn[i])
            learnt[nl++] = d.ids[i];
        else
            context[nc++] = d.ids[i];
    }
    assert_int_equal(mt_tokenizer_decode(tok, learnt, nl, true, &text, &text_len, &err), MT_OK);
    assert_non_null(strstr(text, "A civil wrong."));
    assert_non_null(strstr(text, "A public wrong."));
    assert_null(strstr(text, "tort"));
    assert_null(strstr(text, "lawyer"));
    assert_null(strstr(text, "crime"));
    free(text);
    assert_int_equal(mt_tokenizer_decode(tok, context, nc, true, &text, &text_len, &err), MT_OK);
    assert_non_null(strstr(text, "What is a tort?"));
    assert_non_null(strstr(text, "And a crime?"));
    assert_null(strstr(text, "civil"));
    free(text);
    free(learnt);
    free(context);
    free(full);
    mt_docs_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_and_cache),       cmocka_unit_test(test_prompt_masking),
        cmocka_unit_test(test_packing),              cmocka_unit_test(test_split_and_order),
        cmocka_unit_test(test_errors_name_file_and_line), cmocka_unit_test(test_messages_learn_only_assistant_turns),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
