/* test_generate.c — generation for a batch of prompts: each output (prompts on different
 * adapters and the base, several samples of one prompt forking its blocks, sampling with
 * temperature) is exactly what that prompt generates alone with that sample's seed; stop
 * strings end an output before them; the text streamed equals the text returned; and
 * `moetune generate --prompts` prints the same outputs. */
#define _GNU_SOURCE /* memmem */
#include "model_testlib.h"

#include "peft/lora.h"

static mt_backend *g_be;
static char g_dir[4096];

static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    snprintf(g_dir, sizeof g_dir, "%s/tiny", mt_test_tmpdir("test_generate"));
    char *out = NULL;
    if (mt_test_run_cli(&out, "init --preset tiny --family deepseek_v3 --seed 3 '%s'", g_dir) != 0) {
        fprintf(stderr, "%s\n", out);
        free(out);
        return -1;
    }
    free(out);
    return mt_backend_init(&g_be, MT_BACKEND_CPU, 2, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be);
    return 0;
}

typedef struct streamed {
    char text[16][4096];
    size_t len[16];
} streamed;

static bool collect(void *user, int index, const char *text, size_t len) {
    streamed *s = user;
    assert_true(index >= 0 && index < 16 && s->len[index] + len < sizeof s->text[0]);
    memcpy(s->text[index] + s->len[index], text, len);
    s->len[index] += len;
    return true;
}

static void batch_equals_alone(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = NULL;
    mt_tokenizer *tok = NULL;
    if (mt_model_load(&m, g_dir, g_be, &err) != MT_OK || mt_tokenizer_load(&tok, g_dir, &err) != MT_OK)
        fail_msg("%s", err.msg);
    int nl = mt_model_linear_count(m);
    toy_set *ta = toy_set_new(m), *tb = toy_set_new(m);
    for (int i = 0; i < nl; i++) {
        toy_add(ta, m, i, 2, 10 + (uint64_t)i);
        toy_add(tb, m, i, 3, 5000 + (uint64_t)i);
    }
    const mt_gen_prompt prompts[] = {
        {.text = "The licensee shall", .adapter = NULL, .n = 1},
        {.text = "Permission is hereby granted", .adapter = &ta->view, .n = 3},
        {.text = "x", .adapter = &tb->view, .n = 1},
        {.text = "THE SOFTWARE IS PROVIDED", .adapter = &ta->view, .n = 2},
    };
    enum { NP = 4, NOUT = 7 };
    /* the random base makes invalid UTF-8 that decodes to U+FFFD: three in a row is a stop
     * string that several outputs reach, across token boundaries */
    static const char *const stops[] = {"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", "e t"};
    mt_generate_opts o = {.sample = {.temperature = 0.9f, .top_k = 30, .top_p = 0.95f, .seed = 17},
                          .max_new_tokens = 24,
                          .stop = stops,
                          .n_stop = 2,
                          .stop_at_eos = true};
    streamed *s = mt_xcalloc(1, sizeof *s);
    o.on_text = collect;
    o.user = s;
    mt_generate_result res[NOUT];
    if (mt_generate(m, tok, prompts, NP, &o, res, &err) != MT_OK) fail_msg("%s", err.msg);
    int j = 0, stopped = 0;
    for (int p = 0; p < NP; p++) {
        for (int k = 0; k < prompts[p].n; k++, j++) {
            mt_gen_prompt one = prompts[p];
            one.n = 1;
            mt_generate_opts alone = o;
            alone.sample.seed = o.sample.seed + (uint64_t)k;
            alone.on_text = NULL;
            mt_generate_result r1;
            if (mt_generate(m, tok, &one, 1, &alone, &r1, &err) != MT_OK) fail_msg("%s", err.msg);
            if (r1.len != res[j].len || memcmp(r1.text, res[j].text, r1.len))
                fail_msg("output %d (prompt %d, sample %d): batched \"%s\" but alone \"%s\"", j, p, k, res[j].text,
                         r1.text);
            assert_int_equal(r1.n_new_tokens, res[j].n_new_tokens);
            assert_string_equal(r1.finish, res[j].finish);
            /* streamed pieces add up to the result */
            assert_int_equal(s->len[j], res[j].len);
            assert_memory_equal(s->text[j], res[j].text, s->len[j]);
            for (int q = 0; q < 2; q++) assert_null(memmem(res[j].text, res[j].len, stops[q], strlen(stops[q])));
            stopped += !strcmp(res[j].finish, "stop");
            mt_generate_result_free(&r1);
        }
    }
    /* samples of one prompt differ (their seeds do) */
    assert_true(res[1].len != res[2].len || memcmp(res[1].text, res[2].text, res[1].len));
    print_message("[ generate ] %d outputs, %d ended by a stop string\n", NOUT, stopped);
    assert_true(stopped > 0);
    for (int i = 0; i < NOUT; i++) mt_generate_result_free(&res[i]);
    free(s);
    toy_set_free(ta);
    toy_set_free(tb);
    mt_tokenizer_free(tok);
    mt_model_free(m);
}

/* The CLI: several prompts from a JSONL file, a named adapter, n samples. */
static void cli_prompts_file(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = NULL;
    if (mt_model_load(&m, g_dir, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    static const char *const all[] = {"all-linear"};
    mt_lora_config c;
    mt_lora_config_default(&c);
    c.targets = all;
    c.n_targets = 1;
    mt_lora *l = NULL;
    if (mt_lora_attach(&l, m, &c, &err) != MT_OK) fail_msg("%s", err.msg);
    for (int t = 1; t < mt_lora_tensor_count(l); t += 2) {
        mt_lora_tensor *lt = mt_lora_tensor_at(l, t);
        mt_test_fill_uniform(lt->data, (size_t)lt->numel, -0.5f, 0.5f, 9 + (uint64_t)t);
    }
    char adir[4200], pfile[4200];
    const char *tmp = mt_test_tmpdir("test_generate_cli");
    snprintf(adir, sizeof adir, "%s/adapter", tmp);
    if (mt_lora_save_peft(l, adir, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_lora_free(l);
    mt_model_free(m);
    snprintf(pfile, sizeof pfile, "%s/prompts.jsonl", tmp);
    const char *jsonl = "{\"prompt\": \"Copyright (C)\"}\n\n{\"prompt\": \"Copyright (C)\", \"adapter\": \"legal\", \"n\": 2}\n";
    if (mt_write_file_atomic(pfile, jsonl, strlen(jsonl), &err) != MT_OK) fail_msg("%s", err.msg);
    char *batch = NULL, *base = NULL, *adapted = NULL;
    assert_int_equal(mt_test_run_cli(&batch, "generate --model '%s' --prompts '%s' --adapter legal='%s' --temperature 0 "
                                             "--max-tokens 10 --no-eos --threads 2",
                                     g_dir, pfile, adir),
                     0);
    assert_int_equal(mt_test_run_cli(&base, "generate --model '%s' --prompt 'Copyright (C)' --temperature 0 "
                                            "--max-tokens 10 --no-eos --threads 2",
                                     g_dir),
                     0);
    assert_int_equal(mt_test_run_cli(&adapted, "generate --model '%s' --prompt 'Copyright (C)' --adapter '%s' "
                                               "--temperature 0 --max-tokens 10 --no-eos --threads 2",
                                     g_dir, adir),
                     0);
    /* the speeds line goes last (stderr, merged): cut it off */
    char *outs[3] = {batch, base, adapted};
    for (int i = 0; i < 3; i++) {
        char *stats = strstr(outs[i], "\nprompt: ");
        assert_non_null(stats);
        stats[1] = '\0';
    }
    /* three outputs, headed; the base one and the two (greedy, so equal) adapted ones are what
     * single runs stream */
    assert_non_null(strstr(batch, "=== output 1: prompt 1, sample 1, base"));
    assert_non_null(strstr(batch, "=== output 3: prompt 2, sample 2, legal"));
    char want[8192];
    snprintf(want, sizeof want, "finish length ===\n%s", base);
    assert_non_null(strstr(batch, want));
    snprintf(want, sizeof want, "finish length ===\n%s", adapted);
    assert_non_null(strstr(batch, want));
    assert_true(strcmp(base, adapted) != 0);
    free(batch);
    free(base);
    free(adapted);
    /* a prompt naming an adapter that was not given */
    char *out = NULL;
    assert_int_equal(mt_test_run_cli(&out, "generate --model '%s' --prompts '%s' --max-tokens 2", g_dir, pfile), 2);
    assert_non_null(strstr(out, "asks for adapter \"legal\""));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batch_equals_alone),
        cmocka_unit_test(cli_prompts_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
