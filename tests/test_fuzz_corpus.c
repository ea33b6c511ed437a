/* test_fuzz_corpus.c — the fuzzers' smoke mode: every fuzz entry point runs over its committed
 * seed corpus (fuzz/corpus/<target>/) and the inputs that once broke it (fuzz/regressions/
 * <target>/), without libFuzzer, so that CI replays them under ASan and UBSan. The fuzz sources
 * are compiled in here, each with its entry points renamed. */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define LLVMFuzzerTestOneInput fuzz_safetensors_one
#include "fuzz/fuzz_safetensors.c"
#undef LLVMFuzzerTestOneInput

#define LLVMFuzzerTestOneInput fuzz_config_one
#include "fuzz/fuzz_config.c"
#undef LLVMFuzzerTestOneInput

#define LLVMFuzzerTestOneInput fuzz_tokenizer_one
#define LLVMFuzzerInitialize fuzz_tokenizer_init
#include "fuzz/fuzz_tokenizer.c"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

#define LLVMFuzzerTestOneInput fuzz_chat_one
#include "fuzz/fuzz_chat.c"
#undef LLVMFuzzerTestOneInput

#define LLVMFuzzerTestOneInput fuzz_request_one
#include "fuzz/fuzz_request.c"
#undef LLVMFuzzerTestOneInput

#define LLVMFuzzerTestOneInput fuzz_pairs_one
#include "fuzz/fuzz_pairs.c"
#undef LLVMFuzzerTestOneInput

#define LLVMFuzzerTestOneInput fuzz_recipe_one
#include "fuzz/fuzz_recipe.c"
#undef LLVMFuzzerTestOneInput

#define LLVMFuzzerTestOneInput fuzz_data_one
#define LLVMFuzzerInitialize fuzz_data_init
#include "fuzz/fuzz_data.c"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

#define LLVMFuzzerTestOneInput fuzz_adapter_one
#define LLVMFuzzerInitialize fuzz_adapter_init
#include "fuzz/fuzz_adapter.c"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

typedef int (*fuzz_fn)(const uint8_t *data, size_t size);

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Feeds every file of fuzz/<kind>/<target>/ to fn, in name order; returns how many. A missing
 * folder is zero files. Each input gets a buffer of exactly its size, as libFuzzer gives. */
static int replay(const char *kind, const char *target, fuzz_fn fn) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/../../fuzz/%s/%s", MT_FIXTURES_DIR, kind, target);
    DIR *d = opendir(dir);
    if (!d) return 0;
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        names = mt_xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = mt_xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    int done = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
            char *text;
            size_t len;
            mt_error err = {0};
            if (mt_read_file(path, &text, &len, &err) != MT_OK) fail_msg("%s", err.msg);
            uint8_t *exact = mt_xmalloc(len ? len : 1);
            if (len) memcpy(exact, text, len);
            free(text);
            fn(exact, len);
            free(exact);
            done++;
        }
        free(names[i]);
    }
    free(names);
    return done;
}

static void smoke(const char *target, fuzz_fn fn) {
    int seeds = replay("corpus", target, fn);
    int regressions = replay("regressions", target, fn);
    print_message("  %s: %d seeds, %d regression inputs\n", target, seeds, regressions);
    assert_true(seeds > 10);
}

static void test_safetensors(void **state) {
    (void)state;
    smoke("fuzz_safetensors", fuzz_safetensors_one);
}

static void test_config(void **state) {
    (void)state;
    smoke("fuzz_config", fuzz_config_one);
}

static void test_tokenizer(void **state) {
    (void)state;
    fuzz_tokenizer_init(NULL, NULL);
    smoke("fuzz_tokenizer", fuzz_tokenizer_one);
    for (size_t i = 0; i < TOK_N_FIXTURES; i++) {
        mt_tokenizer_free(tok_loaded[i]);
        tok_loaded[i] = NULL;
    }
}

static void test_chat(void **state) {
    (void)state;
    smoke("fuzz_chat", fuzz_chat_one);
}

/* pairs seeds are whole JSONL files of many lines each, so there are few of them */
static void test_pairs(void **state) {
    (void)state;
    int seeds = replay("corpus", "fuzz_pairs", fuzz_pairs_one);
    int regressions = replay("regressions", "fuzz_pairs", fuzz_pairs_one);
    print_message("  fuzz_pairs: %d seeds, %d regression inputs\n", seeds, regressions);
    assert_true(seeds >= 5 && regressions >= 1);
}

static void test_request(void **state) {
    (void)state;
    smoke("fuzz_request", fuzz_request_one);
}

static void test_recipe(void **state) {
    (void)state;
    smoke("fuzz_recipe", fuzz_recipe_one);
}

static void test_data(void **state) {
    (void)state;
    fuzz_data_init(NULL, NULL);
    smoke("fuzz_data", fuzz_data_one);
    mt_tokenizer_free(data_tok);
    data_tok = NULL;
}

static void test_adapter(void **state) {
    (void)state;
    fuzz_adapter_init(NULL, NULL);
    smoke("fuzz_adapter", fuzz_adapter_one);
    mt_model_free(adapter_base);
    mt_backend_free(adapter_be);
    free(adapter_cfg);
    free(adapter_st);
    adapter_base = NULL;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_tokenizer),
        cmocka_unit_test(test_chat),
        cmocka_unit_test(test_request),
        cmocka_unit_test(test_pairs),
        cmocka_unit_test(test_recipe),
        cmocka_unit_test(test_data),
        cmocka_unit_test(test_adapter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
