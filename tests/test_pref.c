/* test_pref.c — the preference objectives through the trainer on a tiny random deepseek_v3
 * model: the DPO gradient the trainer back-propagates equals central finite differences of the
 * loss it reports (sigmoid and ipo); the reference cache stores one entry per pair, serves a
 * second run entirely, computes only an edited pair, and gives what a fresh reference pass
 * gives; a stopped and resumed DPO run is bit-identical to the uninterrupted one; pairs from a
 * store dataset train and log TRL's metrics; recipe mistakes are diagnostics naming the key;
 * SimPO and ORPO learn a repeated pair; the reward model's gradient (LoRA through the hidden
 * states, and its score head) equals finite differences, and its exported head and adapter
 * give back the held-out rewards the trainer measured. */
#define _GNU_SOURCE
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/finetune.h"
#include "finetune/objective-impl.h"
#include "peft/lora.h"
#include "store/store.h"

static char base_dir[4096], pairs_path[4096], edited_path[4096], repeated_path[4096], root[4096];

static const char *const words[] = {"the",     "licensee", "shall",   "not",    "distribute", "software",
                                    "without", "written",  "consent", "of",     "licensor",   "warranty",
                                    "is",      "hereby",   "party",   "may",    "terminate",  "agreement"};
#define N_PAIRS 8

/* Pair i: a prompt of three words, chosen continues the clause, rejected is scrambled. With
 * `edit` >= 0 that pair's chosen text differs (a new content hash, the others unchanged). */
static void write_pairs(const char *path, int edit, int repeat_first) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    size_t nw = sizeof words / sizeof words[0];
    for (int i = 0; i < N_PAIRS; i++) {
        int k = repeat_first ? 0 : i;
        fprintf(f, "{\"prompt\": \"%s %s %s\", \"chosen\": \" %s %s %s%s\", \"rejected\": \" %s %s\"}\n",
                words[k % nw], words[(k + 1) % nw], words[(k + 2) % nw], words[(k + 3) % nw], words[(k + 4) % nw],
                words[(k + 5) % nw], i == edit ? " hereby" : "", words[(k * 7 + 11) % nw], words[(k * 5 + 3) % nw]);
    }
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("pref"));
    snprintf(base_dir, sizeof base_dir, "%s/base", root);
    snprintf(pairs_path, sizeof pairs_path, "%s/pairs.jsonl", root);
    snprintf(edited_path, sizeof edited_path, "%s/pairs-edited.jsonl", root);
    snprintf(repeated_path, sizeof repeated_path, "%s/pairs-repeated.jsonl", root);
    write_pairs(pairs_path, -1, 0);
    write_pairs(edited_path, 5, 0);
    write_pairs(repeated_path, -1, 1);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), base_dir);
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    return rc == 0 ? 0 : -1;
}

/* `dir`/recipe.yaml: method on `data_yaml` (a data.train or data.pairs line), extra sections
 * appended (pref:, reference:); the store is `store` (a path) or dir/moetune.db. */
static void write_recipe(const char *dir, const char *method, const char *data_yaml, int steps, const char *extra,
                         const char *store) {
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
    char path[4200], db[4200];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    if (store)
        snprintf(db, sizeof db, "%s", store);
    else
        snprintf(db, sizeof db, "%s/moetune.db", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "name: p\nmethod: %s\nmodel:\n  path: %s\n"
            "adapter:\n  type: lora\n  r: 4\n  alpha: 8\n  dropout: 0\n  targets: all-linear\n"
            "data:\n%s  max_seq_len: 24\n"
            "train:\n  seed: 5\n  steps: %d\n  micro_batch: 2\n  grad_accum: 2\n  lr: 1e-2\n  warmup_steps: 0\n"
            "  threads: 1\n  log_every: 1\n  eval_every: 0\n  save_every: 2\n  router_noise: 0\n"
            "  router_aux_coef: 0\n  clip_norm: 0\n"
            "thresholds:\n  dap: 0\n%s"
            "output:\n  dir: %s/run\n  adapter: %s/adapter\n  store: %s\n",
            method, base_dir, data_yaml, steps, extra ? extra : "", dir, dir, db);
    fclose(f);
}

static void load_recipe(const char *dir, const char *const *sets, size_t n_sets, mt_recipe *r) {
    char path[4200];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    mt_error err = {0};
    if (mt_recipe_load(path, sets, n_sets, r, &err) != MT_OK) fail_msg("%s", err.msg);
}

static char train_line[4300];
static const char *train_data(const char *path) {
    snprintf(train_line, sizeof train_line, "  train: %s\n", path);
    return train_line;
}

/* ---- 1. the trainer's DPO gradient against finite differences of its loss ---- */

static double step_loss(mt_run *run, const int64_t *idx, int n) {
    mt_step_out so;
    memset(&so, 0, sizeof so);
    mt_error err = {0};
    if (run->obj->step(run, idx, n, &so, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_false(so.skipped);
    return so.loss;
}

/* `label` names the case; extra is the recipe's pref/reference sections. */
static void grad_check(const char *label, const char *method, const char *extra) {
    const char *loss_type = label;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/grad-%s", root, label);
    write_recipe(dir, method, train_data(pairs_path), 4, extra, NULL);
    mt_recipe r;
    load_recipe(dir, NULL, 0, &r);
    mt_train_opts o = {.no_store = true, .no_export = true, .no_checkpoints = true};
    mt_train_result res;
    memset(&res, 0, sizeof res);
    mt_run run;
    memset(&run, 0, sizeof run);
    mt_error err = {0};
    if (mt_run_open(&run, &r, &o, &res, &err) != MT_OK) fail_msg("%s", err.msg);
    /* lr 0: the step's AdamW update leaves the weights as they are, so every call evaluates
     * the same function; LoRA B = 0 would make the policy the reference and A's gradient zero */
    r.train.lr = 0;
    mt_rng rng;
    mt_rng_seed(&rng, 11);
    for (int t = 0; t < run.n_trainables; t++)
        for (int64_t i = 0; i < run.trainables[t].numel; i++)
            run.trainables[t].data[i] = (float)(0.2 * (mt_rng_float(&rng) - 0.5));
    const int64_t idx[4] = {0, 3, 5, 6};
    double l0 = step_loss(&run, idx, 4);
    assert_true(isfinite(l0));
    /* a few parameters in A and B matrices of different layers: the largest gradient of each
     * and one chosen at random */
    int picks[][2] = {{0, -1}, {1, -1}, {run.n_trainables / 2, -1}, {run.n_trainables - 1, -1},
                      {1, 0}, {run.n_trainables - 2, 0}};
    size_t np = sizeof picks / sizeof picks[0];
    double *g = mt_xcalloc(np, sizeof *g);
    for (size_t k = 0; k < np; k++) {
        mt_trainable *tr = &run.trainables[picks[k][0]];
        int64_t best = 0;
        if (picks[k][1] < 0) {
            for (int64_t i = 1; i < tr->numel; i++)
                if (fabsf(tr->grad[i]) > fabsf(tr->grad[best])) best = i;
        } else {
            best = (int64_t)mt_rng_below(&rng, (uint64_t)tr->numel);
        }
        picks[k][1] = (int)best;
        g[k] = tr->grad[best];
    }
    const double eps = 1e-2;
    double gmax = 0;
    for (size_t k = 0; k < np; k++) gmax = fmax(gmax, fabs(g[k]));
    assert_true(gmax > 1e-4); /* the check means something */
    for (size_t k = 0; k < np; k++) {
        mt_trainable *tr = &run.trainables[picks[k][0]];
        float *w = &tr->data[picks[k][1]], w0 = *w;
        *w = w0 + (float)eps;
        double lp = step_loss(&run, idx, 4);
        *w = w0 - (float)eps;
        double lm = step_loss(&run, idx, 4);
        *w = w0;
        double fd = (lp - lm) / ((double)(w0 + (float)eps) - (double)(w0 - (float)eps));
        double tol = 2e-2 * fmax(fabs(fd), fabs(g[k])) + 2e-3 * gmax;
        if (fabs(fd - g[k]) > tol)
            fail_msg("%s: %s[%d]: trainer gradient %.6g, finite differences %.6g", loss_type, tr->name, picks[k][1],
                     g[k], fd);
    }
    /* the weights never moved: the loss is what it was */
    assert_true(fabs(step_loss(&run, idx, 4) - l0) < 1e-6);
    free(g);
    mt_run_close(&run);
    mt_recipe_free(&r);
}

static void test_dpo_gradient_is_finite_differences(void **state) {
    (void)state;
    grad_check("sigmoid", "dpo", "pref:\n  beta: 0.5\n  loss_type: [sigmoid]\nreference:\n  cache: false\n");
    grad_check("ipo", "dpo", "pref:\n  beta: 0.5\n  loss_type: [ipo]\nreference:\n  cache: false\n");
    /* LD-DPO weights the tokens past the shorter completion; the cached reference path */
    grad_check("ld", "dpo", "pref:\n  beta: 0.5\n  ld_alpha: 0.3\nreference:\n  cache: true\n");
}

/* The reference-free losses: averaged log-probs, plus the chosen NLL (SimPO's CPO term over
 * the completion, ORPO's over the whole chosen row). */
static void test_simpo_orpo_gradient_is_finite_differences(void **state) {
    (void)state;
    grad_check("simpo", "simpo", "pref:\n  beta: 2\n  cpo_alpha: 0.5\n");
    grad_check("orpo", "orpo", "pref:\n  beta: 0.5\n");
}

/* The last trainable is the score head: picks {n-1, -1} and {n-2, 0} cover it and the LoRA
 * tensors whose gradient arrives through the final hidden states. */
static void test_reward_gradient_is_finite_differences(void **state) {
    (void)state;
    grad_check("reward", "reward", NULL);
    grad_check("reward-center", "reward", "reward:\n  center_coef: 0.1\n");
}

/* ---- 2. the reference cache ---- */

typedef struct notes {
    long long hits, computed;
    int seen;
} notes;

static void on_note(void *user, const char *line) {
    notes *n = user;
    long long h, c;
    if (sscanf(line, "reference log-probs: %lld pairs from the store's cache, %lld computed", &h, &c) == 2) {
        n->hits = h;
        n->computed = c;
        n->seen++;
    }
}

static int64_t count_ref_rows(const char *db) {
    sqlite3 *raw;
    assert_int_equal(sqlite3_open_v2(db, &raw, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(raw, "SELECT count(*) FROM ref_logps", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(raw);
    return n;
}

static mt_store_series series(const char *db, int64_t run_id, const char *name) {
    mt_store *s;
    mt_error err = {0};
    if (mt_store_open(&s, db, false, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_series sr;
    if (mt_store_metric_series(s, run_id, name, &sr, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_close(s);
    return sr;
}

/* A DPO run in root/name on `data` with the shared store db; returns the run id. */
static int64_t cache_run(const char *name, const char *data, bool cache, const char *db, notes *n) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    write_recipe(dir, "dpo", train_data(data), 3, cache ? "reference:\n  cache: true\n" : "reference:\n  cache: false\n",
                 db);
    mt_recipe r;
    load_recipe(dir, NULL, 0, &r);
    memset(n, 0, sizeof *n);
    mt_train_opts o = {.on_note = on_note, .user = n, .no_export = true};
    mt_train_result res;
    mt_error err = {0};
    if (mt_train(&r, &o, &res, &err) != MT_OK) fail_msg("%s: %s", name, err.msg);
    assert_int_equal(res.steps, 3);
    mt_recipe_free(&r);
    return res.run_id;
}

static void test_reference_cache(void **state) {
    (void)state;
    char db[4200];
    snprintf(db, sizeof db, "%s/cache.db", root);
    notes n;
    int64_t first = cache_run("cache1", pairs_path, true, db, &n);
    assert_int_equal(n.seen, 1);
    assert_int_equal(n.hits, 0);
    assert_int_equal(n.computed, N_PAIRS);
    assert_int_equal(count_ref_rows(db), N_PAIRS);

    int64_t second = cache_run("cache2", pairs_path, true, db, &n);
    assert_int_equal(n.hits, N_PAIRS);
    assert_int_equal(n.computed, 0);
    assert_int_equal(count_ref_rows(db), N_PAIRS);

    cache_run("cache3", edited_path, true, db, &n);
    assert_int_equal(n.hits, N_PAIRS - 1);
    assert_int_equal(n.computed, 1);
    assert_int_equal(count_ref_rows(db), N_PAIRS + 1);

    int64_t fresh = cache_run("nocache", pairs_path, false, db, &n);
    assert_int_equal(n.seen, 0); /* no cache: reference passes in the steps */

    /* the policy starts as the base (LoRA B = 0): at step 1 the implicit rewards are zero only
     * if the cached reference is what the policy's pass computes */
    mt_store_series rc = series(db, first, "rewards/chosen"), rr = series(db, first, "rewards/rejected");
    assert_int_equal(rc.n, 3);
    assert_true(fabs(rc.values[0]) < 1e-5 && fabs(rr.values[0]) < 1e-5);
    mt_store_series_free(&rr);
    /* later steps depend on the reference through the margin: cached (computed or served from
     * the store) and fresh reference passes agree */
    const char *names[] = {"loss", "rewards/chosen", "rewards/margins"};
    for (size_t k = 0; k < 3; k++) {
        mt_store_series a = series(db, first, names[k]), b = series(db, second, names[k]),
                        c = series(db, fresh, names[k]);
        assert_int_equal(a.n, 3);
        assert_int_equal(b.n, 3);
        assert_int_equal(c.n, 3);
        for (size_t i = 0; i < 3; i++) {
            assert_memory_equal(&a.values[i], &b.values[i], sizeof(double)); /* float → double → float is exact */
            if (fabs(a.values[i] - c.values[i]) > 1e-5 * fmax(1, fabs(c.values[i])))
                fail_msg("%s at step %zu: %.9g with the cache, %.9g with fresh reference passes", names[k], i + 1,
                         a.values[i], c.values[i]);
        }
        mt_store_series_free(&a);
        mt_store_series_free(&b);
        mt_store_series_free(&c);
    }
    assert_true(fabs(rc.values[2]) > 1e-4); /* by then the policy has moved off the reference */
    mt_store_series_free(&rc);

    /* the chat template is part of the tokenizer's identity: after an edit of
     * tokenizer_config.json nothing cached before matches */
    char cfg[4300], *text = NULL;
    size_t len = 0;
    mt_error err = {0};
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", base_dir);
    assert_int_equal(mt_read_file(cfg, &text, &len, &err), MT_OK);
    char *edited = mt_xmalloc(len + 2);
    memcpy(edited, text, len);
    memcpy(edited + len, "\n", 2);
    assert_int_equal(mt_write_file_atomic(cfg, edited, len + 1, &err), MT_OK);
    cache_run("cache-template", pairs_path, true, db, &n);
    assert_int_equal(n.hits, 0);
    assert_int_equal(n.computed, N_PAIRS);
    assert_int_equal(mt_write_file_atomic(cfg, text, len, &err), MT_OK);
    cache_run("cache-again", pairs_path, true, db, &n);
    assert_int_equal(n.hits, N_PAIRS);
    free(edited);
    free(text);
}

/* ---- 3. stop and resume ---- */

static void test_resume_is_bit_identical(void **state) {
    (void)state;
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/resume-whole", root);
    snprintf(b, sizeof b, "%s/resume-cut", root);
    const int steps = 6;
    write_recipe(a, "dpo", train_data(pairs_path), steps, "pref:\n  loss_type: [sigmoid, ipo]\n  loss_weights: [1, 0.5]\n",
                 NULL);
    write_recipe(b, "dpo", train_data(pairs_path), steps, "pref:\n  loss_type: [sigmoid, ipo]\n  loss_weights: [1, 0.5]\n",
                 NULL);
    mt_recipe ra, rb;
    load_recipe(a, NULL, 0, &ra);
    load_recipe(b, NULL, 0, &rb);
    mt_error err = {0};
    mt_train_result whole, cut, resumed;
    mt_train_opts o = {.no_export = true};
    if (mt_train(&ra, &o, &whole, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_train_opts oc = {.no_export = true, .max_steps = 3};
    if (mt_train(&rb, &oc, &cut, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(cut.steps, 3);
    mt_train_opts orr = {.no_export = true, .resume = true};
    if (mt_train(&rb, &orr, &resumed, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(resumed.steps, steps);
    assert_memory_equal(&whole.last_loss, &resumed.last_loss, sizeof(double));
    char da[4300], dbp[4300];
    snprintf(da, sizeof da, "%s/moetune.db", a);
    snprintf(dbp, sizeof dbp, "%s/moetune.db", b);
    const char *names[] = {"loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"};
    for (size_t k = 0; k < 5; k++) {
        mt_store_series x = series(da, whole.run_id, names[k]), y = series(dbp, resumed.run_id, names[k]);
        assert_int_equal(x.n, (size_t)steps);
        assert_int_equal(y.n, (size_t)steps);
        for (size_t i = 0; i < x.n; i++) {
            assert_int_equal(x.steps[i], y.steps[i]);
            if (memcmp(&x.values[i], &y.values[i], sizeof(double)) != 0)
                fail_msg("%s at step %lld: %.17g uninterrupted, %.17g resumed", names[k], (long long)x.steps[i],
                         x.values[i], y.values[i]);
        }
        mt_store_series_free(&x);
        mt_store_series_free(&y);
    }
    mt_recipe_free(&ra);
    mt_recipe_free(&rb);
}

/* ---- 4. pairs from the store ---- */

static void test_pairs_from_store(void **state) {
    (void)state;
    char dir[4200], db[4300];
    snprintf(dir, sizeof dir, "%s/store-pairs", root);
    snprintf(db, sizeof db, "%s/moetune.db", dir);
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
    mt_store *s;
    if (mt_store_open(&s, db, true, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_pairs_import_opts io = {.dataset = "prefs", .eval_fraction = 0.3};
    mt_pairs_import_report rep;
    if (mt_store_pairs_import(s, pairs_path, &io, &rep, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(rep.n_added, N_PAIRS);
    size_t n_eval = rep.n_eval;
    mt_pairs_import_report_free(&rep);
    mt_store_close(s);

    write_recipe(dir, "dpo", "  pairs: prefs\n", 2, NULL, NULL);
    mt_recipe r;
    load_recipe(dir, NULL, 0, &r);
    mt_train_opts o = {.no_export = true};
    mt_train_result res;
    if (mt_train(&r, &o, &res, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(res.steps, 2);
    assert_true(isfinite(res.last_loss));
    if (n_eval) assert_true(isfinite(res.eval_loss));

    if (mt_store_open(&s, db, false, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_run run;
    assert_int_equal(mt_store_run_get(s, res.run_id, &run, &err), MT_OK);
    assert_string_equal(run.method, "dpo");
    assert_int_equal(run.status, MT_RUN_COMPLETED);
    mt_store_run_free(&run);
    mt_store_metric_list ml;
    assert_int_equal(mt_store_metric_names(s, res.run_id, &ml, &err), MT_OK);
    const char *want[] = {"loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
                          "rewards/chosen"};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        bool found = false;
        for (size_t i = 0; i < ml.n; i++)
            if (!strcmp(ml.items[i].name, want[k])) {
                found = true;
                assert_int_equal(ml.items[i].count, 2);
                assert_true(isfinite(ml.items[i].last));
            }
        if (!found) fail_msg("metric %s not logged", want[k]);
    }
    mt_store_metric_list_free(&ml);
    mt_store_close(s);
    mt_recipe_free(&r);
}

/* ---- 5. recipe mistakes ---- */

static void expect_diag(const char *name, const char *method, const char *data_yaml, const char *extra,
                        const char *key, const char *words_in) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/bad-%s", root, name);
    write_recipe(dir, method, data_yaml, 2, extra, NULL);
    char path[4300];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    mt_recipe r;
    mt_recipe_diags d = {0};
    mt_error err = {0};
    assert_int_not_equal(mt_recipe_validate(path, NULL, 0, NULL, &r, &d, &err), MT_OK);
    bool found = false;
    for (size_t i = 0; i < d.n; i++)
        found |= strstr(d.msgs[i], key) && strstr(d.msgs[i], words_in) && strstr(d.msgs[i], "recipe.yaml:");
    if (!found) {
        for (size_t i = 0; i < d.n; i++) fprintf(stderr, "  %s\n", d.msgs[i]);
        fail_msg("%s: no diagnostic naming %s with \"%s\"", name, key, words_in);
    }
    if (d.n != 1) {
        for (size_t i = 0; i < d.n; i++) fprintf(stderr, "  %s\n", d.msgs[i]);
        fail_msg("%s: %zu diagnostics for one mistake", name, d.n);
    }
    mt_recipe_diags_free(&d);
}

static void test_recipe_errors(void **state) {
    (void)state;
    char both[8400];
    snprintf(both, sizeof both, "  train: %s\n  pairs: prefs\n", pairs_path);
    expect_diag("both", "dpo", both, NULL, "data.pairs", "not both");
    expect_diag("refadapter", "dpo", train_data(pairs_path), "reference:\n  model: adapter\n", "reference.adapter",
                "name the frozen reference adapter");
    expect_diag("weights", "dpo", train_data(pairs_path), "pref:\n  loss_type: [sigmoid, ipo]\n  loss_weights: [1]\n",
                "pref.loss_weights", "1 weights for 2 loss types");
    expect_diag("losstype", "dpo", train_data(pairs_path), "pref:\n  loss_type: [sigmoid, ipoo]\n", "pref.loss_type",
                "did you mean \"ipo\"");
}

/* ---- 6. the reference-free losses learn ---- */

static void learns(const char *method, const char *extra) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/learn-%s", root, method);
    write_recipe(dir, method, train_data(repeated_path), 10, extra, NULL);
    mt_recipe r;
    const char *sets[] = {"train.lr=3e-2"};
    load_recipe(dir, sets, 1, &r);
    mt_train_opts o = {.no_export = true};
    mt_train_result res;
    mt_error err = {0};
    if (mt_train(&r, &o, &res, &err) != MT_OK) fail_msg("%s: %s", method, err.msg);
    char db[4300];
    snprintf(db, sizeof db, "%s/moetune.db", dir);
    mt_store_series l = series(db, res.run_id, "loss"), m = series(db, res.run_id, "rewards/margins"),
                    a = series(db, res.run_id, "rewards/accuracies");
    assert_int_equal(l.n, 10);
    assert_int_equal(m.n, 10);
    assert_int_equal(a.n, 10);
    for (size_t i = 0; i < l.n; i++) assert_true(isfinite(l.values[i]) && isfinite(m.values[i]));
    if (!(l.values[9] < l.values[0] - 0.05 && m.values[9] > m.values[0]))
        fail_msg("%s: loss %.5f -> %.5f, margin %.5f -> %.5f: the repeated pair was not learnt", method, l.values[0],
                 l.values[9], m.values[0], m.values[9]);
    assert_true(a.values[9] == 1.0);
    mt_store_series_free(&l);
    mt_store_series_free(&m);
    mt_store_series_free(&a);
    mt_recipe_free(&r);
}

static void test_simpo_and_orpo_learn(void **state) {
    (void)state;
    learns("simpo", NULL);
    learns("orpo", NULL);
}

/* ---- 7. the reward model's export ---- */

static void test_reward_export_round_trip(void **state) {
    (void)state;
    char a[4200], b[4200], eval_line[8500];
    snprintf(a, sizeof a, "%s/rm-train", root);
    snprintf(b, sizeof b, "%s/rm-again", root);
    snprintf(eval_line, sizeof eval_line, "  train: %s\n  eval: [%s]\n", pairs_path, edited_path);
    write_recipe(a, "reward", eval_line, 4, NULL, NULL);
    mt_recipe ra;
    load_recipe(a, NULL, 0, &ra);
    mt_train_opts o = {0};
    mt_train_result trained;
    mt_error err = {0};
    if (mt_train(&ra, &o, &trained, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_true(isfinite(trained.eval_loss));

    /* PEFT's sequence-classification layout: task SEQ_CLS, the head as modules_to_save */
    char adapter[4300], cfg_path[4400];
    snprintf(adapter, sizeof adapter, "%s/adapter", a);
    snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", adapter);
    char *cfg = NULL;
    assert_int_equal(mt_read_file(cfg_path, &cfg, NULL, &err), MT_OK);
    cJSON *j = cJSON_Parse(cfg);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "task_type")->valuestring, "SEQ_CLS");
    const cJSON *mts = cJSON_GetObjectItem(j, "modules_to_save");
    assert_true(cJSON_IsArray(mts) && cJSON_GetArraySize(mts) == 1);
    assert_string_equal(cJSON_GetArrayItem(mts, 0)->valuestring, "score");
    cJSON_Delete(j);
    free(cfg);
    mt_backend *be;
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    mt_model *m;
    if (mt_model_load(&m, base_dir, be, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_lora *l;
    mt_lora_meta meta = {0};
    if (mt_lora_load_peft(&l, m, adapter, &meta, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_non_null(meta.score);
    assert_int_equal(meta.score_rows, 1);
    assert_int_equal(meta.score_cols, mt_model_config(m)->hidden_size);
    free(meta.score);
    free(meta.thresholds_json);
    mt_lora_free(l);
    mt_model_free(m);
    mt_backend_free(be);

    /* a run opened from the export holds the trained weights: before any step, its held-out
     * loss and rewards are the first run's final ones, bit for bit, only if the head and the
     * adapter came back whole */
    char from[4500];
    snprintf(from, sizeof from, "adapter.from=%s", adapter);
    write_recipe(b, "reward", eval_line, 1, NULL, NULL);
    const char *sets[] = {from};
    mt_recipe rb;
    load_recipe(b, sets, 1, &rb);
    mt_train_opts ob = {.no_store = true, .no_export = true, .no_checkpoints = true};
    mt_train_result unused;
    mt_run run;
    memset(&run, 0, sizeof run);
    if (mt_run_open(&run, &rb, &ob, &unused, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_eval_out eo;
    memset(&eo, 0, sizeof eo);
    if (run.obj->eval(&run, &eo, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_memory_equal(&trained.eval_loss, &eo.loss, sizeof(double));
    char da[4300];
    snprintf(da, sizeof da, "%s/moetune.db", a);
    const char *names[] = {"accuracy", "mean_reward", "min_reward", "max_reward"};
    for (size_t k = 0; k < 4; k++) {
        char stored[64];
        snprintf(stored, sizeof stored, "eval_%s", names[k]);
        mt_store_series x = series(da, trained.run_id, stored);
        assert_true(x.n >= 1);
        int found = 0;
        for (int i = 0; i < eo.metrics.n; i++)
            if (!strcmp(eo.metrics.m[i].name, names[k])) {
                found = 1;
                if ((float)x.values[x.n - 1] != (float)eo.metrics.m[i].value)
                    fail_msg("%s: %.9g trained, %.9g from the export", names[k], x.values[x.n - 1],
                             eo.metrics.m[i].value);
            }
        assert_true(found);
        mt_store_series_free(&x);
    }
    mt_run_close(&run);
    /* and the head moved away from its initialisation: a fresh head gives other rewards */
    mt_store_series mr = series(da, trained.run_id, "mean_reward");
    assert_int_equal(mr.n, 4);
    assert_true(fabs(mr.values[3] - mr.values[0]) > 1e-6);
    mt_store_series_free(&mr);
    mt_recipe_free(&ra);
    mt_recipe_free(&rb);
}

int main(void) {
    setenv("OMP_NUM_THREADS", "1", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dpo_gradient_is_finite_differences),
        cmocka_unit_test(test_simpo_orpo_gradient_is_finite_differences),
        cmocka_unit_test(test_reference_cache),
        cmocka_unit_test(test_resume_is_bit_identical),
        cmocka_unit_test(test_pairs_from_store),
        cmocka_unit_test(test_recipe_errors),
        cmocka_unit_test(test_simpo_and_orpo_learn),
        cmocka_unit_test(test_reward_gradient_is_finite_differences),
        cmocka_unit_test(test_reward_export_round_trip),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
