/* test_recipe.c — recipes: every field and default, each error class with its exact
 * file:line:column and suggestion, --set, the canonical dump's round trip and golden bytes, the
 * docs against the generator, the shipped recipes, the CLI. Expectations are written by hand. */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finetune/finetune.h"

#define SRC_ROOT MT_FIXTURES_DIR "/../.."

/* Absolute real folder of the recipe fixtures: relative paths in them resolve against it. */
static const char *fixdir(void) {
    static char buf[PATH_MAX];
    if (!realpath(MT_FIXTURES_DIR "/recipes", buf)) fail_msg("realpath of the recipe fixtures failed");
    return buf;
}

static const char *fx(const char *name) {
    static char buf[PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s/recipes/%s", MT_FIXTURES_DIR, name);
    return buf;
}

/* Writes text to <tmp>/<test>/<name> and returns the path (static, one at a time). */
static const char *write_tmp(const char *test, const char *name, const char *text) {
    static char path[PATH_MAX + 64];
    const char *dir = mt_test_tmpdir(test);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    mt_error err = {0};
    if (mt_write_file_atomic(path, text, strlen(text), &err) != MT_OK) fail_msg("%s", err.msg);
    return path;
}

static char *joined(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = mt_xmalloc(n);
    snprintf(s, n, "%s%s", a, b);
    return s;
}

static void load_ok(const char *path, const char *const *sets, size_t n_sets, mt_recipe *r) {
    mt_recipe_diags d = {0};
    mt_error err = {0};
    mt_status st = mt_recipe_validate(path, sets, n_sets, NULL, r, &d, &err);
    if (st != MT_OK) fail_msg("%s did not load:\n%s", path, err.msg);
    assert_int_equal(d.n, 0);
    mt_recipe_diags_free(&d);
}

/* Validates and compares every problem reported with `want`, in order. A wanted line that does
 * not start with "--set " is prefixed with "<path>:" (so "3:9: key: ..." or " key: ..."). */
static void expect_diags(const char *path, const char *const *sets, size_t n_sets, const mt_recipe_load_opts *opts,
                         mt_status want_status, const char *const *want, size_t n_want) {
    mt_recipe r;
    memset(&r, 0x5a, sizeof r);
    mt_recipe before = r;
    mt_recipe_diags d = {0};
    mt_error err = {0};
    mt_status st = mt_recipe_validate(path, sets, n_sets, opts, &r, &d, &err);
    if (d.n != n_want)
        for (size_t i = 0; i < d.n; i++) print_message("  got: %s\n", d.msgs[i]);
    assert_int_equal(st, want_status);
    assert_int_equal(err.code, want_status);
    /* on failure the output is untouched */
    assert_memory_equal(&r, &before, sizeof r);
    assert_int_equal(d.n, n_want);
    for (size_t i = 0; i < n_want; i++) {
        char *w = strncmp(want[i], "--set ", 6) ? joined(path, ":") : mt_xstrdup("");
        char *full = joined(w, want[i]);
        assert_string_equal(d.msgs[i], full);
        free(w);
        free(full);
    }
    /* the single-message form starts with the first problem */
    assert_true(n_want == 0 || !strncmp(err.msg, d.msgs[0], strlen(d.msgs[0])));
    mt_recipe_diags_free(&d);
}

/* ---- a full recipe: every field ---- */

static void check_path(const char *got, const char *rel) {
    char want[PATH_MAX + 64];
    snprintf(want, sizeof want, "%s/%s", fixdir(), rel);
    assert_string_equal(got, want);
}

static void check_full(const mt_recipe *r) {
    assert_string_equal(r->name, "full-run");
    assert_int_equal(r->method, MT_RECIPE_METHOD_SFT);
    check_path(r->model.path, "models/base");
    assert_string_equal(r->model.tokenizer, "/opt/tokenizers/qwen");

    assert_int_equal(r->adapter.type, MT_RECIPE_ADAPTER_LORA);
    assert_int_equal(r->adapter.r, 16);
    assert_true(r->adapter.alpha == 32.0);
    assert_true(r->adapter.dropout == 0.05);
    assert_true(r->adapter.use_rslora);
    assert_int_equal(r->adapter.init, MT_RECIPE_LORA_INIT_GAUSSIAN);
    assert_int_equal(r->adapter.targets.n, 3);
    assert_string_equal(r->adapter.targets.items[0], "q_proj");
    assert_string_equal(r->adapter.targets.items[1], "*.experts.*.down_proj");
    assert_string_equal(r->adapter.targets.items[2], "re:.*\\.shared_experts\\..*");
    assert_int_equal(r->adapter.exclude.n, 1);
    assert_string_equal(r->adapter.exclude.items[0], "gate");
    assert_int_equal(r->adapter.rank_pattern.n, 2);
    assert_string_equal(r->adapter.rank_pattern.patterns[0], "o_proj");
    assert_true(r->adapter.rank_pattern.values[0] == 32.0);
    assert_string_equal(r->adapter.rank_pattern.patterns[1], "experts\\.\\d+\\.down_proj");
    assert_true(r->adapter.rank_pattern.values[1] == 4.0);
    assert_int_equal(r->adapter.alpha_pattern.n, 1);
    assert_string_equal(r->adapter.alpha_pattern.patterns[0], "o_proj");
    assert_true(r->adapter.alpha_pattern.values[0] == 64.5);

    assert_int_equal(r->data.train.n, 2);
    check_path(r->data.train.items[0], "data/a.jsonl");
    check_path(r->data.train.items[1], "data/more");
    assert_int_equal(r->data.eval.n, 1);
    check_path(r->data.eval.items[0], "data/eval.jsonl");
    assert_int_equal(r->data.format, MT_RECIPE_FORMAT_PROMPT_COMPLETION);
    assert_int_equal(r->data.max_seq_len, 512);
    assert_true(r->data.packing);
    assert_false(r->data.mask_prompt);
    assert_false(r->data.shuffle);
    assert_true(r->data.eval_split == 0.0);
    assert_string_equal(r->data.cache_dir, "/home/tester/cache/moetune");

    assert_int_equal(r->train.seed, 7);
    assert_int_equal(r->train.steps, 10000);
    assert_true(r->train.epochs == MT_RECIPE_UNSET);
    assert_int_equal(r->train.micro_batch, 8);
    assert_int_equal(r->train.grad_accum, 4);
    assert_true(r->train.lr == 3e-4);
    assert_int_equal(r->train.schedule, MT_RECIPE_SCHEDULE_LINEAR);
    assert_int_equal(r->train.warmup_steps, 100);
    assert_true(r->train.warmup_ratio == MT_RECIPE_UNSET);
    assert_true(r->train.min_lr_ratio == 0.1);
    assert_true(r->train.weight_decay == 0.01);
    assert_true(r->train.beta1 == 0.8);
    assert_true(r->train.beta2 == 0.95);
    assert_true(r->train.eps == 1e-6);
    assert_true(r->train.clip_norm == 0.5);
    assert_true(r->train.router_aux_coef == 0.02);
    assert_true(r->train.router_noise == 0.01);
    assert_int_equal(r->train.max_nan_skips, 3);
    assert_int_equal(r->train.eval_every, 250);
    assert_int_equal(r->train.save_every, 1000);
    assert_int_equal(r->train.log_every, 5);
    assert_int_equal(r->train.save_total_limit, 0);
    assert_true(r->train.resume);
    assert_int_equal(r->train.threads, 2);
    assert_int_equal(r->train.device, MT_RECIPE_DEVICE_CUDA);

    assert_true(r->thresholds.dap == 0.3);
    assert_true(r->thresholds.base == 0.6);
    assert_true(r->thresholds.max_entropy == 5.0);

    check_path(r->output.dir, "out/run");
    assert_string_equal(r->output.adapter, "/tmp/export/full-run");
    check_path(r->output.store, "db/runs.sqlite");
}

static void test_full_recipe(void **state) {
    (void)state;
    setenv("HOME", "/home/tester", 1);
    mt_recipe r;
    load_ok(fx("full.yaml"), NULL, 0, &r);
    check_full(&r);
    mt_recipe_free(&r);
}

/* The other side of each either-or pair, and a full fine-tune whose dump leaves out LoRA keys. */
static void test_epochs_and_full_finetune(void **state) {
    (void)state;
    mt_recipe r;
    load_ok(fx("epochs.yaml"), NULL, 0, &r);
    assert_int_equal(r.adapter.type, MT_RECIPE_ADAPTER_NONE);
    assert_true(r.train.epochs == 2.5);
    assert_int_equal(r.train.steps, MT_RECIPE_UNSET);
    assert_true(r.train.warmup_ratio == 0.1);
    assert_int_equal(r.train.warmup_steps, MT_RECIPE_UNSET);
    assert_true(r.data.eval_split == 0.1);
    assert_int_equal(r.data.eval.n, 0);
    assert_true(r.train.router_aux_coef == MT_RECIPE_AUTO);
    char *yaml = mt_recipe_dump_yaml(&r, NULL);
    assert_non_null(strstr(yaml, "adapter:\n  type: none\ndata:\n"));
    assert_non_null(strstr(yaml, "  steps: null\n  epochs: 2.5\n"));
    assert_non_null(strstr(yaml, "  warmup_steps: null\n  warmup_ratio: 0.1\n"));
    const char *path = write_tmp("recipe-epochs", "dump.yaml", yaml);
    mt_recipe r2;
    load_ok(path, NULL, 0, &r2);
    char *yaml2 = mt_recipe_dump_yaml(&r2, NULL);
    assert_string_equal(yaml, yaml2);
    free(yaml);
    free(yaml2);
    mt_recipe_free(&r);
    mt_recipe_free(&r2);
}

static void test_defaults(void **state) {
    (void)state;
    mt_recipe r;
    load_ok(fx("minimal.yaml"), NULL, 0, &r);
    char want[PATH_MAX + 64];
    assert_string_equal(r.name, "minimal");
    assert_int_equal(r.method, MT_RECIPE_METHOD_SFT);
    snprintf(want, sizeof want, "%s", fixdir());
    *strrchr(want, '/') = '\0';
    strcat(want, "/models/tiny"); /* "../models/tiny" from the fixture folder */
    assert_string_equal(r.model.path, want);
    assert_string_equal(r.model.tokenizer, want);

    assert_int_equal(r.adapter.type, MT_RECIPE_ADAPTER_LORA);
    assert_int_equal(r.adapter.r, 8);
    assert_true(r.adapter.alpha == 8.0);
    assert_true(r.adapter.dropout == 0.0);
    assert_false(r.adapter.use_rslora);
    assert_int_equal(r.adapter.init, MT_RECIPE_LORA_INIT_DEFAULT);
    const char *targets[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    assert_int_equal(r.adapter.targets.n, 4);
    for (size_t i = 0; i < 4; i++) assert_string_equal(r.adapter.targets.items[i], targets[i]);
    assert_int_equal(r.adapter.exclude.n, 0);
    assert_int_equal(r.adapter.rank_pattern.n, 0);
    assert_int_equal(r.adapter.alpha_pattern.n, 0);

    assert_int_equal(r.data.train.n, 1);
    check_path(r.data.train.items[0], "train.jsonl");
    assert_int_equal(r.data.eval.n, 0);
    assert_int_equal(r.data.format, MT_RECIPE_FORMAT_AUTO);
    assert_int_equal(r.data.max_seq_len, 2048);
    assert_false(r.data.packing);
    assert_true(r.data.mask_prompt);
    assert_true(r.data.shuffle);
    assert_true(r.data.eval_split == 0.0);
    check_path(r.data.cache_dir, "runs/minimal/cache");

    assert_int_equal(r.train.seed, 42);
    assert_int_equal(r.train.steps, MT_RECIPE_UNSET);
    assert_true(r.train.epochs == 1.0);
    assert_int_equal(r.train.micro_batch, 4);
    assert_int_equal(r.train.grad_accum, 1);
    assert_true(r.train.lr == 2e-4);
    assert_int_equal(r.train.schedule, MT_RECIPE_SCHEDULE_COSINE);
    assert_int_equal(r.train.warmup_steps, 0);
    assert_true(r.train.warmup_ratio == MT_RECIPE_UNSET);
    assert_true(r.train.min_lr_ratio == 0.0);
    assert_true(r.train.weight_decay == 0.0);
    assert_true(r.train.beta1 == 0.9);
    assert_true(r.train.beta2 == 0.999);
    assert_true(r.train.eps == 1e-8);
    assert_true(r.train.clip_norm == 1.0);
    assert_true(r.train.router_aux_coef == MT_RECIPE_AUTO);
    assert_true(r.train.router_noise == 0.0);
    assert_int_equal(r.train.max_nan_skips, 10);
    assert_int_equal(r.train.eval_every, 100);
    assert_int_equal(r.train.save_every, 500);
    assert_int_equal(r.train.log_every, 10);
    assert_int_equal(r.train.save_total_limit, 3);
    assert_false(r.train.resume);
    assert_int_equal(r.train.threads, 0);
    assert_int_equal(r.train.device, MT_RECIPE_DEVICE_CPU);

    assert_true(r.thresholds.dap == MT_RECIPE_AUTO);
    assert_true(r.thresholds.base == 0.5);
    assert_true(r.thresholds.max_entropy == 4.5);
    assert_true(r.thresholds.experts == 0); /* off: existing recipes export no "experts" */

    check_path(r.output.dir, "runs/minimal");
    check_path(r.output.adapter, "runs/minimal/adapter");
    check_path(r.output.store, "runs/moetune.db");
    mt_recipe_free(&r);
}

/* ---- errors ---- */

static void test_key_errors(void **state) {
    (void)state;
    const char *want[] = {
        "3:9: model.path: expected a path, got a list",
        "5:12: adapter.dropout: 1.5 is outside [0, 1)",
        "6:6: adapter.r: 0 is outside [1, 4096]",
        "7:3: adapter.lora_alpha: unknown key (did you mean 'alpha'?)",
        "10:12: data.packing: expected true or false, got 'yes' (write true)",
        "11:11: data.format: expected one of auto, text, prompt_completion, messages, plain, got 'jsonl'",
        "13:3: train.learnig_rate: unknown key (did you mean 'lr'?)",
        "14:10: train.steps: expected an integer, got 'ten'",
        "16:3: train.lr: duplicate key (first at 15:3)",
        "17:13: train.schedule: expected one of cosine, linear, constant, got 'cosin' (did you mean 'cosine'?)",
        "18:16: train.micro_batch: expected an integer, got '2.5'",
        "19:1: seed: unknown key (seed belongs under train:)",
        "20:1: trian: unknown key (did you mean 'train'?)",
    };
    expect_diags(fx("errors.yaml"), NULL, 0, NULL, MT_ERR_INVALID, want, sizeof want / sizeof want[0]);
}

static void test_suggestions(void **state) {
    (void)state;
    const char *path = write_tmp("recipe-suggest", "s.yaml",
                                 "model:\n"
                                 "  path: /m\n"
                                 "  zzzzzz: 1\n"
                                 "  learning_rate: 1e-4\n"
                                 "data:\n"
                                 "  train: /d\n"
                                 "  lora_alpha: 4\n"
                                 "  lr: 1\n"
                                 "  type: text\n"
                                 "lora_r: 8\n"
                                 "qqqqqqqqqq: 1\n"
                                 "adapter:\n"
                                 "  init: Gaussian\n"
                                 "  target_modules: [q_proj]\n"
                                 "thresholds:\n"
                                 "  dap: high\n");
    const char *want[] = {
        "3:3: model.zzzzzz: unknown key (keys under model: path, tokenizer, quantize)",
        "4:3: model.learning_rate: unknown key (did you mean 'train.lr'?)",
        "7:3: data.lora_alpha: unknown key (did you mean 'adapter.alpha'?)",
        "8:3: data.lr: unknown key (lr belongs under train:)",
        "9:3: data.type: unknown key (did you mean 'format'?)",
        "10:1: lora_r: unknown key (did you mean 'adapter.r'?)",
        ("11:1: qqqqqqqqqq: unknown key (top-level keys: name, method, model, adapter, data, train, pref, "
         "reference, reward, rollout, grpo, ppo, thresholds, output)"),
        "13:9: adapter.init: expected one of default, gaussian, got 'Gaussian' (did you mean 'gaussian'?)",
        "14:3: adapter.target_modules: unknown key (did you mean 'targets'?)",
        "16:8: thresholds.dap: expected auto or a number, got 'high'",
    };
    expect_diags(path, NULL, 0, NULL, MT_ERR_INVALID, want, sizeof want / sizeof want[0]);
}

/* thresholds.experts: off | auto | a number in (0, 1]; a bad value names the key. */
static void test_experts_threshold(void **state) {
    (void)state;
    static const struct {
        const char *v;
        double want;
    } ok[] = {{"off", 0}, {"auto", MT_RECIPE_AUTO}, {"0.35", 0.35}, {"1", 1}};
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
        char text[256];
        snprintf(text, sizeof text, "model:\n  path: /m\ndata:\n  train: /d\nthresholds:\n  experts: %s\n", ok[k].v);
        const char *path = write_tmp("recipe-experts", "e.yaml", text);
        mt_recipe r;
        mt_error err = {0};
        if (mt_recipe_load(path, NULL, 0, &r, &err) != MT_OK) fail_msg("experts: %s: %s", ok[k].v, err.msg);
        assert_true(r.thresholds.experts == ok[k].want);
        /* the normalised recipe writes it back as it was given */
        char *yaml = mt_recipe_dump_yaml(&r, NULL);
        char line[64];
        snprintf(line, sizeof line, "experts: %s", ok[k].v);
        if (!strstr(yaml, line)) fail_msg("experts: %s: not in\n%s", ok[k].v, yaml);
        free(yaml);
        mt_recipe_free(&r);
    }
    const char *path = write_tmp("recipe-experts-bad", "b.yaml",
                                 "model:\n  path: /m\ndata:\n  train: /d\nthresholds:\n  experts: high\n");
    const char *want[] = {"6:12: thresholds.experts: expected off, auto or a number, got 'high'"};
    expect_diags(path, NULL, 0, NULL, MT_ERR_INVALID, want, 1);
    path = write_tmp("recipe-experts-zero", "z.yaml",
                     "model:\n  path: /m\ndata:\n  train: /d\nthresholds:\n  experts: 0\n");
    const char *want0[] = {"6:12: thresholds.experts: 0 is outside (0, 1]"};
    expect_diags(path, NULL, 0, NULL, MT_ERR_INVALID, want0, 1);
    const char *sets[] = {"thresholds.experts=1.5"};
    const char *want1[] = {"--set thresholds.experts: 1.5 is outside (0, 1]"};
    path = write_tmp("recipe-experts-set", "s.yaml", "model:\n  path: /m\ndata:\n  train: /d\n");
    expect_diags(path, sets, 1, NULL, MT_ERR_INVALID, want1, 1);
}

static void test_value_forms(void **state) {
    (void)state;
    /* a scalar for a list, integers written as floats, quoted numbers, null for nullable keys,
     * null for a derived default, an empty mapping and a flow mapping */
    const char *path = write_tmp("recipe-forms", "f.yaml",
                                 "model: {path: /m, tokenizer: null}\n"
                                 "adapter:\n"
                                 "  targets: all-linear\n"
                                 "  rank_pattern:\n"
                                 "data:\n"
                                 "  train: /d/x.jsonl\n"
                                 "train:\n"
                                 "  steps: 1e3\n"
                                 "  epochs: ~\n"
                                 "  lr: \"0.001\"\n"
                                 "  seed: +5\n"
                                 "  warmup_steps: 999\n"
                                 "output:\n");
    mt_recipe r;
    load_ok(path, NULL, 0, &r);
    assert_int_equal(r.adapter.targets.n, 1);
    assert_string_equal(r.adapter.targets.items[0], "all-linear");
    assert_int_equal(r.adapter.rank_pattern.n, 0);
    assert_string_equal(r.model.tokenizer, "/m");
    assert_int_equal(r.train.steps, 1000);
    assert_true(r.train.epochs == MT_RECIPE_UNSET);
    assert_true(r.train.lr == 0.001);
    assert_int_equal(r.train.seed, 5);
    assert_int_equal(r.train.warmup_steps, 999);
    mt_recipe_free(&r);

    const char *bad = write_tmp("recipe-forms", "g.yaml",
                                "name: \"a\\0b\"\n"
                                "model: {path: \"\"}\n"
                                "data: {train: [/a, [/b]], eval: {x: 1}}\n"
                                "train: {lr: .inf, eps: 0x10, clip_norm: 1e999, steps: 2000000000}\n"
                                "adapter: {targets: [q_proj, \"a b\", \"[q\"], exclude: [all-linear], "
                                "rank_pattern: {\"\": 2, o: x}}\n"
                                "output: [a]\n");
    const char *want[] = {
        "1:7: name: contains a NUL character",
        "2:15: model.path: expected a path, got an empty string",
        "3:20: data.train[1]: expected a path, got a list",
        "3:33: data.eval: expected a path or a list of paths, got a mapping",
        "4:13: train.lr: expected a number, got '.inf'",
        "4:24: train.eps: expected a number, got '0x10'",
        "4:41: train.clip_norm: expected a number, got '1e999'",
        "4:55: train.steps: 2000000000 is outside [1, 1000000000]",
        ("5:29: adapter.targets[1]: 'a b': ' ' is not allowed in a module name or glob (use re:<regex> for a "
         "regex)"),
        "5:36: adapter.targets[2]: '[q': unbalanced '[' ']' in glob",
        "5:53: adapter.exclude[0]: 'all-linear' selects modules; it cannot be excluded",
        "5:81: adapter.rank_pattern[]: empty pattern",
        "5:91: adapter.rank_pattern[o]: expected an integer, got 'x'",
        "6:9: output: expected a mapping of output keys, got a list",
    };
    expect_diags(bad, NULL, 0, NULL, MT_ERR_INVALID, want, sizeof want / sizeof want[0]);
}

static void test_document_errors(void **state) {
    (void)state;
    const char *syntax[] = {
        "6:6: YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence at 5:10)"};
    expect_diags(fx("syntax.yaml"), NULL, 0, NULL, MT_ERR_FORMAT, syntax, 1);

    const char *tab[] = {"2:1: YAML syntax error: found character that cannot start any token (a tab: YAML indents "
                         "with spaces only)"};
    expect_diags(write_tmp("recipe-doc", "tab.yaml", "model:\n\tpath: /m\n"), NULL, 0, NULL, MT_ERR_FORMAT, tab, 1);

    const char *utf8[] = {"2:9: YAML syntax error: invalid leading UTF-8 octet"};
    expect_diags(write_tmp("recipe-doc", "utf8.yaml", "model:\n  path: \xff\n"), NULL, 0, NULL, MT_ERR_FORMAT, utf8,
                 1);

    const char *empty[] = {" empty recipe (it needs at least model.path and data.train)"};
    expect_diags(write_tmp("recipe-doc", "empty.yaml", "# nothing\n"), NULL, 0, NULL, MT_ERR_FORMAT, empty, 1);

    const char *list[] = {"1:1: expected a mapping of keys (model:, data:, train:, ...), got a list"};
    expect_diags(write_tmp("recipe-doc", "list.yaml", "- a\n- b\n"), NULL, 0, NULL, MT_ERR_FORMAT, list, 1);

    const char *two[] = {"4:1: a recipe is one YAML document; remove the second one (or the '---' before it)"};
    expect_diags(write_tmp("recipe-doc", "two.yaml", "model: {path: /m}\ndata: {train: /d}\n---\ntrain: {}\n"),
                 NULL, 0, NULL, MT_ERR_FORMAT, two, 1);

    const char *missing[] = {" no such recipe file"};
    expect_diags(MT_TEST_TMP_DIR "/no/such/recipe.yaml", NULL, 0, NULL, MT_ERR_NOT_FOUND, missing, 1);
}

static void test_cross_rules(void **state) {
    (void)state;
    const char *want[] = {
        "5:3: adapter.r: applies only when adapter.type is lora (here it is none)",
        "12:3: train.epochs: give train.steps or train.epochs, not both",
        "13:3: train.warmup_steps: 100 must be less than train.steps (100)",
        "9:3: data.eval_split: 0.1 holds out part of train, but data.eval already gives eval files; drop one",
        "8:3: data.eval: /d/b.jsonl is also in data.train",
    };
    expect_diags(fx("cross.yaml"), NULL, 0, NULL, MT_ERR_INVALID, want, sizeof want / sizeof want[0]);

    const char *required[] = {" model.path: required, but not given", " data.train: required, but not given"};
    expect_diags(write_tmp("recipe-cross", "req.yaml", "train: {steps: 5}\n"), NULL, 0, NULL, MT_ERR_INVALID,
                 required, 2);

    const char *lin[] = {"3:29: adapter.targets[1]: 'all-linear' stands alone; drop the other entries or list "
                         "modules"};
    expect_diags(write_tmp("recipe-cross", "lin.yaml",
                           "model: {path: /m}\ndata: {train: /d}\nadapter: {targets: [q_proj, all-linear]}\n"),
                 NULL, 0, NULL, MT_ERR_INVALID, lin, 1);

    const char *ratio[] = {"3:26: train.warmup_ratio: give train.warmup_steps or train.warmup_ratio, not both"};
    expect_diags(write_tmp("recipe-cross", "ratio.yaml",
                           "model: {path: /m}\ndata: {train: /d}\ntrain: {warmup_steps: 5, warmup_ratio: 0.1}\n"),
                 NULL, 0, NULL, MT_ERR_INVALID, ratio, 1);
}

/* ---- overrides ---- */

static void test_overrides(void **state) {
    (void)state;
    const char *sets[] = {
        "train.lr=3e-4",
        "adapter.targets=[q_proj,v_proj]",
        "train={epochs: 2, warmup_ratio: 0.05}", /* replaces the file's steps and warmup_steps */
        "data.eval=",                            /* clears the list */
        "data.max_seq_len=128",
        "name=renamed",
        "output.dir=/x/run",
    };
    setenv("HOME", "/home/tester", 1);
    mt_recipe r;
    load_ok(fx("full.yaml"), sets, sizeof sets / sizeof sets[0], &r);
    assert_true(r.train.lr == 3e-4);
    assert_int_equal(r.adapter.targets.n, 2);
    assert_string_equal(r.adapter.targets.items[0], "q_proj");
    assert_string_equal(r.adapter.targets.items[1], "v_proj");
    assert_true(r.train.epochs == 2.0);
    assert_int_equal(r.train.steps, MT_RECIPE_UNSET);
    assert_true(r.train.warmup_ratio == 0.05);
    assert_int_equal(r.train.warmup_steps, MT_RECIPE_UNSET);
    assert_int_equal(r.data.eval.n, 0);
    assert_int_equal(r.data.max_seq_len, 128);
    assert_string_equal(r.name, "renamed");
    assert_string_equal(r.output.dir, "/x/run");
    assert_string_equal(r.output.adapter, "/tmp/export/full-run"); /* given in the file */
    mt_recipe_free(&r);

    /* --set paths resolve against the current folder; derived defaults follow overrides */
    const char *rel[] = {"output.dir=rel/run", "model.path=./m/../base"};
    load_ok(fx("minimal.yaml"), rel, 2, &r);
    char cwd[PATH_MAX], wpath[PATH_MAX + 64];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(wpath, sizeof wpath, "%s/rel/run", strcmp(cwd, "/") ? cwd : "");
    assert_string_equal(r.output.dir, wpath);
    snprintf(wpath, sizeof wpath, "%s/rel/run/adapter", strcmp(cwd, "/") ? cwd : "");
    assert_string_equal(r.output.adapter, wpath);
    snprintf(wpath, sizeof wpath, "%s/base", strcmp(cwd, "/") ? cwd : "");
    assert_string_equal(r.model.path, wpath);
    assert_string_equal(r.model.tokenizer, wpath);
    mt_recipe_free(&r);

    /* switching a LoRA recipe to full fine-tuning: the file's LoRA keys are moot, not errors */
    const char *none[] = {"adapter.type=none"};
    load_ok(fx("full.yaml"), none, 1, &r);
    assert_int_equal(r.adapter.type, MT_RECIPE_ADAPTER_NONE);
    char *yaml = mt_recipe_dump_yaml(&r, NULL);
    assert_null(strstr(yaml, "  r: "));
    free(yaml);
    mt_recipe_free(&r);

    const char *bad[] = {
        "train.lr",
        "train.lr=abc",
        "train.learnig_rate=1",
        "lr=1",
        "trian.steps=1",
        "adapter.dropout=1.5",
        "adapter.targets=[q_proj",
        "model=3",
        "data.packing=on",
        "train={stepz: 3}",
        "adapter.r=4",
        "adapter.type=none",
    };
    const char *want[] = {
        "--set train.lr: expected key=value (e.g. train.lr=3e-4)",
        "--set train.lr: expected a number, got 'abc'",
        "--set train.learnig_rate: unknown key (did you mean 'train.lr'?)",
        "--set lr: unknown key (did you mean 'train.lr'?)",
        "--set trian.steps: unknown key (did you mean 'train'?)",
        "--set adapter.dropout: 1.5 is outside [0, 1)",
        "--set adapter.targets: YAML syntax error in the value: did not find expected ',' or ']'",
        "--set model: expected a mapping of model keys, got '3'",
        "--set data.packing: expected true or false, got 'on' (write true)",
        "--set train.stepz: unknown key (did you mean 'train.steps'?)",
        "--set adapter.r: applies only when adapter.type is lora (here it is none)",
    };
    expect_diags(fx("minimal.yaml"), bad, sizeof bad / sizeof bad[0], NULL, MT_ERR_INVALID, want,
                 sizeof want / sizeof want[0]);
}

/* ---- canonical form ---- */

static void test_round_trip(void **state) {
    (void)state;
    setenv("HOME", "/home/tester", 1);
    mt_recipe r;
    load_ok(fx("full.yaml"), NULL, 0, &r);
    size_t n1;
    char *yaml = mt_recipe_dump_yaml(&r, &n1);
    assert_int_equal(strlen(yaml), n1);
    char hash[65], want_hash[65];
    mt_recipe_hash(&r, hash);
    mt_sha256_hex(yaml, n1, want_hash);
    assert_string_equal(hash, want_hash);

    /* the dump re-loads to the same recipe: the same checks pass on it, and it dumps the same */
    const char *path = write_tmp("recipe-roundtrip", "full.yaml", yaml);
    mt_recipe r2;
    load_ok(path, NULL, 0, &r2);
    check_full(&r2);
    char *yaml2 = mt_recipe_dump_yaml(&r2, NULL);
    assert_string_equal(yaml, yaml2);
    char hash2[65];
    mt_recipe_hash(&r2, hash2);
    assert_string_equal(hash, hash2);

    /* a change of one value changes the hash */
    const char *set[] = {"train.seed=8"};
    mt_recipe r3;
    load_ok(fx("full.yaml"), set, 1, &r3);
    char hash3[65];
    mt_recipe_hash(&r3, hash3);
    assert_string_not_equal(hash, hash3);
    free(yaml);
    free(yaml2);
    mt_recipe_free(&r);
    mt_recipe_free(&r2);
    mt_recipe_free(&r3);
}

/* With absolute paths only, the canonical bytes are the same on every machine: they must not
 * change without intent, since run hashes in existing stores depend on them. The golden file
 * was checked to read back with PyYAML (YAML 1.1) to the same values. */
static void test_golden_dump(void **state) {
    (void)state;
    mt_recipe r;
    load_ok(fx("absolute.yaml"), NULL, 0, &r);
    size_t n;
    char *yaml = mt_recipe_dump_yaml(&r, &n);
    char *golden;
    size_t gn;
    mt_error err = {0};
    assert_int_equal(mt_read_file(fx("absolute.canonical.yaml"), &golden, &gn, &err), MT_OK);
    assert_string_equal(yaml, golden);
    char hash[65], want[65];
    mt_recipe_hash(&r, hash);
    mt_sha256_hex(golden, gn, want);
    assert_string_equal(hash, want);
    free(yaml);
    free(golden);
    mt_recipe_free(&r);
}

/* ---- docs, shipped recipes, --strict ---- */

static void test_docs_match(void **state) {
    (void)state;
    size_t n;
    char *md = mt_recipe_docs_markdown(&n);
    char *file;
    size_t fn;
    mt_error err = {0};
    assert_int_equal(mt_read_file(SRC_ROOT "/docs/recipes.md", &file, &fn, &err), MT_OK);
    if (fn != n || memcmp(md, file, n))
        fail_msg("docs/recipes.md differs from `moetune recipe docs`; regenerate it with "
                 "`moetune recipe docs > docs/recipes.md`");
    /* every key is documented */
    const char *keys[] = {"`model.path`", "`adapter.rank_pattern`", "`data.eval_split`", "`train.router_noise`",
                          "`thresholds.max_entropy`", "`output.store`"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) assert_non_null(strstr(md, keys[i]));
    free(md);
    free(file);
}

static void test_shipped_recipes(void **state) {
    (void)state;
    DIR *d = opendir(SRC_ROOT "/recipes");
    assert_non_null(d);
    struct dirent *e;
    size_t n = 0;
    bool legal = false;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".yaml")) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/recipes/%s", SRC_ROOT, e->d_name);
        mt_recipe r;
        load_ok(path, NULL, 0, &r);
        char want[128];
        snprintf(want, sizeof want, "%.*s", (int)(len - 5), e->d_name);
        assert_string_equal(r.name, want);
        if (!strcmp(r.name, "legal-lora")) {
            legal = true;
            assert_int_equal(r.adapter.type, MT_RECIPE_ADAPTER_LORA);
            assert_true(r.thresholds.dap == MT_RECIPE_AUTO);
        }
        mt_recipe_free(&r);
        n++;
    }
    closedir(d);
    assert_true(n >= 4);
    assert_true(legal);
}

static void test_strict_paths(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("recipe-strict");
    char path[PATH_MAX + 64], text[2 * PATH_MAX];
    mt_error err = {0};
    snprintf(path, sizeof path, "%s/model", dir);
    assert_int_equal(mt_mkdirs(path, &err), MT_OK);
    snprintf(path, sizeof path, "%s/model/config.json", dir);
    assert_int_equal(mt_write_file_atomic(path, "{}", 2, &err), MT_OK);
    snprintf(path, sizeof path, "%s/model/tokenizer.json", dir);
    assert_int_equal(mt_write_file_atomic(path, "{}", 2, &err), MT_OK);
    snprintf(path, sizeof path, "%s/train.jsonl", dir);
    assert_int_equal(mt_write_file_atomic(path, "{}\n", 3, &err), MT_OK);
    snprintf(text, sizeof text, "model: {path: model}\ndata: {train: train.jsonl}\n");
    snprintf(path, sizeof path, "%s/ok.yaml", dir);
    assert_int_equal(mt_write_file_atomic(path, text, strlen(text), &err), MT_OK);
    mt_recipe_load_opts strict = {.check_paths = true};
    mt_recipe r;
    assert_int_equal(mt_recipe_validate(path, NULL, 0, &strict, &r, NULL, &err), MT_OK);
    mt_recipe_free(&r);

    snprintf(text, sizeof text, "model:\n  path: train.jsonl\ndata:\n  train: [train.jsonl, gone.jsonl]\n");
    snprintf(path, sizeof path, "%s/bad.yaml", dir);
    assert_int_equal(mt_write_file_atomic(path, text, strlen(text), &err), MT_OK);
    char w0[PATH_MAX + 128], w1[PATH_MAX + 128], w2[PATH_MAX + 128];
    char real[PATH_MAX];
    assert_non_null(realpath(dir, real));
    snprintf(w0, sizeof w0, "2:3: model.path: %s/train.jsonl is not a folder", real);
    snprintf(w1, sizeof w1, "2:3: model.tokenizer: %s/train.jsonl has no tokenizer.json", real);
    snprintf(w2, sizeof w2, "4:3: data.train: %s/gone.jsonl does not exist", real);
    const char *want[] = {w0, w1, w2};
    expect_diags(path, NULL, 0, &strict, MT_ERR_INVALID, want, 3);
    /* without --strict the same recipe is fine */
    assert_int_equal(mt_recipe_validate(path, NULL, 0, NULL, &r, NULL, &err), MT_OK);
    mt_recipe_free(&r);
}

/* mt_recipe_load's one message holds the problems one per line; past MAX_DIAGS the rest are
 * counted, not listed. */
static void test_load_message_and_cap(void **state) {
    (void)state;
    mt_recipe r;
    mt_error err = {0};
    assert_int_equal(mt_recipe_load(fx("cross.yaml"), NULL, 0, &r, &err), MT_ERR_INVALID);
    char first[PATH_MAX + 128];
    snprintf(first, sizeof first, "%s:5:3: adapter.r: applies only when adapter.type is lora (here it is none)\n",
             fx("cross.yaml"));
    assert_true(!strncmp(err.msg, first, strlen(first)));
    assert_non_null(strstr(err.msg, "train.epochs: give train.steps or train.epochs, not both"));

    char text[4096] = "model: {path: /m}\ndata: {train: /d}\ntrain:\n";
    for (int i = 0; i < 70; i++) {
        size_t used = strlen(text);
        snprintf(text + used, sizeof text - used, "  zzzzzzzzzz%02d: 1\n", i);
    }
    const char *path = write_tmp("recipe-cap", "many.yaml", text);
    mt_recipe_diags d = {0};
    assert_int_equal(mt_recipe_validate(path, NULL, 0, NULL, &r, &d, NULL), MT_ERR_INVALID);
    assert_int_equal(d.n, 65);
    char last[PATH_MAX + 64];
    snprintf(last, sizeof last, "%s: 6 more problems not shown", path);
    assert_string_equal(d.msgs[64], last);
    mt_recipe_diags_free(&d);
}

/* ---- the CLI ---- */

static void test_cli(void **state) {
    (void)state;
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "recipe check '%s/recipes/legal-lora.yaml' --set train.steps=50", SRC_ROOT);
    if (rc != 0) fail_msg("exit %d:\n%s", rc, out);
    assert_non_null(strstr(out, "# moetune recipe, canonical form"));
    assert_non_null(strstr(out, "\nname: legal-lora\n"));
    assert_non_null(strstr(out, "\n  steps: 50\n"));
    assert_non_null(strstr(out, "ok, sha256 "));
    free(out);

    rc = mt_test_run_cli(&out, "recipe check '%s'", fx("errors.yaml"));
    assert_int_equal(rc, 2);
    char line[PATH_MAX + 128];
    snprintf(line, sizeof line, "%s:13:3: train.learnig_rate: unknown key (did you mean 'lr'?)\n", fx("errors.yaml"));
    assert_non_null(strstr(out, line));
    assert_non_null(strstr(out, "13 problems"));
    free(out);

    rc = mt_test_run_cli(&out, "recipe check '%s' --set adapter.r=0", fx("minimal.yaml"));
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "--set adapter.r: 0 is outside [1, 4096]"));
    free(out);

    rc = mt_test_run_cli(&out, "recipe check '%s' --strict", fx("minimal.yaml"));
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "model.path: "));
    free(out);

    assert_int_equal(mt_test_run_cli(NULL, "recipe check"), 2);
    assert_int_equal(mt_test_run_cli(NULL, "recipe check '%s' --bogus", fx("minimal.yaml")), 2);
    assert_int_equal(mt_test_run_cli(NULL, "recipe frobnicate"), 2);

    rc = mt_test_run_cli(&out, "recipe docs");
    assert_int_equal(rc, 0);
    char *md = mt_recipe_docs_markdown(NULL);
    assert_string_equal(out, md);
    free(md);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_recipe),
        cmocka_unit_test(test_epochs_and_full_finetune),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_key_errors),
        cmocka_unit_test(test_suggestions),
        cmocka_unit_test(test_experts_threshold),
        cmocka_unit_test(test_value_forms),
        cmocka_unit_test(test_document_errors),
        cmocka_unit_test(test_cross_rules),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_golden_dump),
        cmocka_unit_test(test_docs_match),
        cmocka_unit_test(test_shipped_recipes),
        cmocka_unit_test(test_strict_paths),
        cmocka_unit_test(test_load_message_and_cap),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
