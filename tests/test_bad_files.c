/* test_bad_files.c — bad files where a user points moetune: PEFT adapter folders (rank 0,
 * missing keys, wrong shapes, an adapter for another base, NaN or infinite weights, truncated or
 * empty weights, broken configs), JSONL data (empty, broken UTF-8, wrong types, huge lines,
 * not JSON), checkpoints (truncated, from another adapter, torn state) and store files (not
 * SQLite; newer schema versions and foreign databases are test_store's). Each
 * is refused with an error naming the file and the problem, and nothing is written over. The
 * adapter cases are the hand-made seeds of fuzz/corpus/fuzz_adapter (fuzz/make_file_seeds.py). */
#define _GNU_SOURCE
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/checkpoint-impl.h"
#include "finetune/data-impl.h"
#include "finetune/finetune.h"
#include "model/model.h"
#include "peft/lora.h"
#include "store/store.h"
#include "tokenizer/tokenizer.h"

static char root[4096];

static char *slurp(const char *path, size_t *len) {
    char *d;
    mt_error err = {0};
    if (mt_read_file(path, &d, len, &err) != MT_OK) fail_msg("%s", err.msg);
    return d;
}

static void put(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* ---- adapters ---- */

typedef struct bad_adapter {
    const char *seed;    /* fuzz/corpus/fuzz_adapter/<seed> */
    const char *problem; /* a word the message must contain */
} bad_adapter;

static const bad_adapter bad_adapters[] = {
    {"config-rank0", "r"},
    {"config-rank-negative", "r"},
    {"config-rank-string", "r"},
    {"config-missing-r", "r"},
    {"config-missing-target_modules", "target_modules"},
    {"config-unknown-target", "do not select"},
    {"config-not-lora", "peft_type"},
    {"config-dora", "dora"},
    {"config-empty", "adapter_config.json"},
    {"config-not-object", "adapter_config.json"},
    {"weights-missing-key", "missing"},
    {"weights-wrong-shape", "shape"},
    {"weights-mixtral", "adapter_model.safetensors"},
    {"weights-unknown-module", "lora_A"},
    {"weights-nan", "non-finite"},
    {"weights-inf", "non-finite"},
    {"weights-truncated", "adapter_model.safetensors"},
    {"weights-empty", "adapter_model.safetensors"},
};

static void test_bad_adapters(void **state) {
    (void)state;
    mt_error err = {0};
    mt_backend *be;
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    mt_model *m;
    if (mt_model_load(&m, mt_test_fixture("models/deepseek_v3"), be, &err) != MT_OK) fail_msg("%s", err.msg);
    char hash_before[65];
    mt_model_content_hash(m, hash_before);
    size_t cfg_len, st_len;
    char *good_cfg = slurp(mt_test_fixture("peft/export/deepseek_v3/adapter_config.json"), &cfg_len);
    char *good_st = slurp(mt_test_fixture("peft/export/deepseek_v3/adapter_model.safetensors"), &st_len);
    int refused = 0;
    for (size_t i = 0; i < sizeof bad_adapters / sizeof bad_adapters[0]; i++) {
        const bad_adapter *b = &bad_adapters[i];
        char seed[4300], dir[4300], cfg[4400], stp[4400];
        snprintf(seed, sizeof seed, "%s/../../fuzz/corpus/fuzz_adapter/%s", MT_FIXTURES_DIR, b->seed);
        size_t n;
        char *bytes = slurp(seed, &n);
        assert_true(n >= 1);
        snprintf(dir, sizeof dir, "%s/adapter-%s", root, b->seed);
        assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
        snprintf(stp, sizeof stp, "%s/adapter_model.safetensors", dir);
        bool is_cfg = bytes[0] & 1;
        put(cfg, is_cfg ? bytes + 1 : good_cfg, is_cfg ? n - 1 : cfg_len);
        put(stp, is_cfg ? good_st : bytes + 1, is_cfg ? st_len : n - 1);
        mt_lora *l = NULL;
        mt_lora_meta meta;
        memset(&meta, 0, sizeof meta);
        mt_error_clear(&err);
        mt_status st = mt_lora_load_peft(&l, m, dir, &meta, &err);
        free(meta.thresholds_json);
        if (st == MT_OK) {
            mt_lora_free(l);
            fail_msg("%s: accepted, but it is a bad adapter (%s)", b->seed, b->problem);
        }
        if (!strstr(err.msg, dir)) fail_msg("%s: the error does not name the folder or file: %s", b->seed, err.msg);
        if (!strstr(err.msg, b->problem)) fail_msg("%s: the error does not say '%s': %s", b->seed, b->problem, err.msg);
        /* nothing written over: the folder holds what it held, the base is as it was */
        size_t n1, n2;
        char *c1 = slurp(cfg, &n1), *c2 = slurp(stp, &n2);
        assert_memory_equal(c1, is_cfg ? bytes + 1 : good_cfg, n1);
        assert_memory_equal(c2, is_cfg ? good_st : bytes + 1, n2);
        free(c1);
        free(c2);
        char hash_after[65];
        mt_model_content_hash(m, hash_after);
        assert_string_equal(hash_before, hash_after);
        print_message("  %-30s %s\n", b->seed, err.msg);
        free(bytes);
        refused++;
    }
    assert_int_equal(refused, (int)(sizeof bad_adapters / sizeof bad_adapters[0]));
    free(good_cfg);
    free(good_st);
    mt_model_free(m);
    mt_backend_free(be);
}

/* ---- JSONL data ---- */

typedef struct bad_data {
    const char *name;
    mt_recipe_format format;
    const char *text; /* NULL: built in the test */
    const char *problem;
} bad_data;

static void test_bad_data(void **state) {
    (void)state;
    mt_error err = {0};
    mt_tokenizer *tok;
    if (mt_tokenizer_load(&tok, mt_test_fixture("tokenizers/deepseek_v3"), &err) != MT_OK) fail_msg("%s", err.msg);
    const bad_data cases[] = {
        {"empty", MT_RECIPE_FORMAT_TEXT, "", "no"},
        {"blank", MT_RECIPE_FORMAT_AUTO, "\n\n  \n", "no"},
        {"bad-utf8", MT_RECIPE_FORMAT_TEXT, "{\"text\": \"caf\xc3\"}\n", "UTF-8"},
        {"wrong-type", MT_RECIPE_FORMAT_TEXT, "{\"text\": 42}\n", "text"},
        {"wrong-type-pc", MT_RECIPE_FORMAT_PROMPT_COMPLETION, "{\"prompt\": [1], \"completion\": \"x\"}\n", "prompt"},
        {"not-json", MT_RECIPE_FORMAT_TEXT, "{\"text\": \"a\"}\nthis is not json\n", ":2"},
        {"not-object", MT_RECIPE_FORMAT_AUTO, "[1, 2]\n", ":1"},
        {"truncated", MT_RECIPE_FORMAT_TEXT, "{\"text\": \"abc", ":1"},
        {"messages-no-content", MT_RECIPE_FORMAT_MESSAGES, "{\"messages\": [{\"role\": \"user\"}]}\n", ":1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[4300];
        snprintf(path, sizeof path, "%s/data-%s.jsonl", root, cases[i].name);
        put(path, cases[i].text, strlen(cases[i].text));
        char *paths[] = {path};
        mt_recipe_list list = {1, paths};
        mt_docs docs;
        memset(&docs, 0, sizeof docs);
        mt_data_source src[1];
        mt_error_clear(&err);
        mt_status st = mt_data_load(&list, cases[i].format, true, tok, "t", NULL, &docs, src, &err);
        mt_docs_free(&docs);
        if (st == MT_OK) fail_msg("%s: accepted", cases[i].name);
        if (!strstr(err.msg, path)) fail_msg("%s: the error does not name the file: %s", cases[i].name, err.msg);
        if (!strstr(err.msg, cases[i].problem))
            fail_msg("%s: the error does not say '%s': %s", cases[i].name, cases[i].problem, err.msg);
        print_message("  %-20s %s\n", cases[i].name, err.msg + strlen(root) + 1);
    }
    /* a huge line is read whole (no line-length limit to trip over), and counted */
    char path[4300];
    snprintf(path, sizeof path, "%s/data-huge.jsonl", root);
    size_t words = 200000;
    char *huge = mt_xmalloc(words * 5 + 32);
    size_t n = (size_t)sprintf(huge, "{\"text\": \"");
    for (size_t w = 0; w < words; w++) n += (size_t)sprintf(huge + n, "word ");
    n += (size_t)sprintf(huge + n, "\"}\n");
    put(path, huge, n);
    free(huge);
    char *paths[] = {path};
    mt_recipe_list list = {1, paths};
    mt_docs docs;
    memset(&docs, 0, sizeof docs);
    mt_data_source src[1];
    if (mt_data_load(&list, MT_RECIPE_FORMAT_TEXT, true, tok, "t", NULL, &docs, src, &err) != MT_OK)
        fail_msg("%s", err.msg);
    assert_int_equal(docs.n_docs, 1);
    assert_true(docs.n_tokens >= (int64_t)words);
    mt_docs_free(&docs);
    mt_tokenizer_free(tok);
}

/* ---- checkpoints ---- */

static void test_bad_checkpoints(void **state) {
    (void)state;
    mt_error err = {0};
    mt_backend *be;
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    float data[64], grad[64], other[48], ograd[48];
    for (int i = 0; i < 64; i++) data[i] = (float)i;
    mt_trainable t = {.name = "w", .data = data, .grad = grad, .numel = 64};
    mt_optim o;
    assert_int_equal(mt_optim_init(&o, be, &t, 1, &err), MT_OK);
    char dir[4300], path[4300];
    snprintf(dir, sizeof dir, "%s/ckpt", root);
    mt_ckpt_state s = {.step = 3, .run_id = 1, .threads = 1};
    memset(s.recipe_sha256, 'b', 64);
    assert_int_equal(mt_ckpt_save(dir, &o, &s, 0, path, sizeof path, &err), MT_OK);

    /* another adapter's optimiser: the sizes differ */
    mt_trainable t2 = {.name = "w", .data = other, .grad = ograd, .numel = 48};
    mt_optim o2;
    assert_int_equal(mt_optim_init(&o2, be, &t2, 1, &err), MT_OK);
    mt_ckpt_state got;
    assert_int_not_equal(mt_ckpt_load(path, &o2, &got, &err), MT_OK);
    if (!strstr(err.msg, "state.safetensors") || !strstr(err.msg, "64 values")) fail_msg("%s", err.msg);
    mt_optim_free(&o2);

    /* truncated tensors, then a torn trainer_state.json: refused, and the files stay as they are */
    char st_path[4400], js_path[4400];
    snprintf(st_path, sizeof st_path, "%s/state.safetensors", path);
    snprintf(js_path, sizeof js_path, "%s/trainer_state.json", path);
    size_t n;
    char *bytes = slurp(st_path, &n);
    put(st_path, bytes, n / 2);
    mt_error_clear(&err);
    assert_int_not_equal(mt_ckpt_load(path, &o, &got, &err), MT_OK);
    if (!strstr(err.msg, st_path) || !strstr(err.msg, "truncated")) fail_msg("%s", err.msg);
    size_t n2;
    char *after = slurp(st_path, &n2);
    assert_int_equal(n2, n / 2);
    free(after);
    put(st_path, bytes, n);
    free(bytes);
    put(js_path, "{\"step\": 3", 10);
    mt_error_clear(&err);
    assert_int_not_equal(mt_ckpt_load(path, &o, &got, &err), MT_OK);
    if (!strstr(err.msg, js_path)) fail_msg("%s", err.msg);
    mt_optim_free(&o);
    mt_backend_free(be);
}

/* ---- store files ---- */

static void test_bad_store(void **state) {
    (void)state;
    char path[4300];
    snprintf(path, sizeof path, "%s/not-sqlite.db", root);
    const char junk[] = "this is a text file, not a database\n";
    put(path, junk, sizeof junk - 1);
    mt_store *s = NULL;
    mt_error err = {0};
    assert_int_not_equal(mt_store_open(&s, path, true, &err), MT_OK);
    assert_null(s);
    if (!strstr(err.msg, path) || !strstr(err.msg, "not a moetune store")) fail_msg("%s", err.msg);
    size_t n;
    char *after = slurp(path, &n);
    assert_int_equal(n, sizeof junk - 1);
    assert_memory_equal(after, junk, n);
    free(after);
}

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("bad_files"));
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_adapters),
        cmocka_unit_test(test_bad_data),
        cmocka_unit_test(test_bad_checkpoints),
        cmocka_unit_test(test_bad_store),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
