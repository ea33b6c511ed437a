/* test_store.c — the run store and its plots: migrations and refusals, round trips of every
 * record type, metric order, pair dedup, a reader beside a live writer, a run killed with
 * SIGKILL (integrity and whole transactions afterwards), error messages, the SVG renderer, and
 * the `moetune runs` subcommands. Checks read the file with plain SQL where they can, so they do
 * not trust the store's own queries. */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store/store.h"

/* ---- helpers ---- */

static char *store_path(const char *test, const char *file) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", mt_test_tmpdir(test), file);
    return mt_xstrdup(buf);
}

static mt_store *open_ok(const char *path) {
    mt_store *s = NULL;
    mt_error err = {0};
    mt_status st = mt_store_open(&s, path, true, &err);
    if (st != MT_OK) fail_msg("open %s: %s", path, err.msg);
    return s;
}

static int64_t begin_run(mt_store *s, const char *name, const char *config_json) {
    mt_store_run_info info = {.name = name, .method = "sft", .recipe_text = "method: sft\n", .config_json = config_json};
    int64_t id = 0;
    mt_error err = {0};
    if (mt_store_run_begin(s, &info, &id, &err) != MT_OK) fail_msg("run_begin: %s", err.msg);
    return id;
}

static void log_ok(mt_store *s, int64_t run, int64_t step, const mt_metric *m, size_t n) {
    mt_error err = {0};
    if (mt_store_log_metrics(s, run, step, m, n, &err) != MT_OK) fail_msg("log_metrics: %s", err.msg);
}

/* An independent connection to the file, for checks in plain SQL. */
static sqlite3 *raw_open(const char *path) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) fail_msg("sqlite3 open %s", path);
    sqlite3_busy_timeout(db, 10000);
    return db;
}

static int64_t raw_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    if (sqlite3_step(st) != SQLITE_ROW) fail_msg("%s: no row: %s", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static char *raw_text(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    if (sqlite3_step(st) != SQLITE_ROW) fail_msg("%s: no row", sql);
    char *v = mt_xstrdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return v;
}

static void raw_exec(sqlite3 *db, const char *sql) {
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) fail_msg("%s: %s", sql, msg);
}

static size_t count_substr(const char *hay, const char *needle) {
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

/* ---- migrations ---- */

static void test_migrate_and_reopen(void **state) {
    (void)state;
    char *path = store_path("test_store_migrate", "deep/er/runs.db"); /* the folders do not exist yet */
    mt_store *s = open_ok(path);
    int64_t run = begin_run(s, "first", NULL);
    mt_store_close(s);

    sqlite3 *db = raw_open(path);
    assert_int_equal(raw_int(db, "PRAGMA user_version"), MT_STORE_SCHEMA_VERSION);
    char *mode = raw_text(db, "PRAGMA journal_mode");
    assert_string_equal(mode, "wal");
    free(mode);
    const char *tables[] = {"runs", "metrics", "events", "datasets", "run_datasets", "adapters", "pairs"};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        char sql[200];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '%s'", tables[i]);
        assert_int_equal(raw_int(db, sql), 1);
    }
    int64_t n_objects = raw_int(db, "SELECT count(*) FROM sqlite_schema");
    sqlite3_close(db);

    /* reopening migrates nothing and keeps the data */
    s = open_ok(path);
    mt_store_run r;
    mt_error err = {0};
    assert_int_equal(mt_store_run_get(s, run, &r, &err), MT_OK);
    assert_string_equal(r.name, "first");
    mt_store_run_free(&r);
    mt_store_close(s);
    db = raw_open(path);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM sqlite_schema"), n_objects);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM runs"), 1);
    assert_int_equal(raw_int(db, "PRAGMA user_version"), MT_STORE_SCHEMA_VERSION);
    sqlite3_close(db);

    /* a reader does not create stores */
    char *missing = store_path("test_store_migrate_missing", "none.db");
    mt_store *t = NULL;
    assert_int_equal(mt_store_open(&t, missing, false, &err), MT_ERR_NOT_FOUND);
    assert_null(t);
    assert_non_null(strstr(err.msg, missing));
    assert_false(mt_path_exists(missing));
    free(missing);
    free(path);
}

static void test_newer_schema_refused(void **state) {
    (void)state;
    char *path = store_path("test_store_newer", "runs.db");
    mt_store_close(open_ok(path));
    sqlite3 *db = raw_open(path);
    raw_exec(db, "PRAGMA user_version = 99");
    sqlite3_close(db);
    mt_store *s = NULL;
    mt_error err = {0};
    assert_int_equal(mt_store_open(&s, path, true, &err), MT_ERR_UNSUPPORTED);
    assert_null(s);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "99"));
    assert_non_null(strstr(err.msg, "newer"));
    /* and it was left as it was */
    db = raw_open(path);
    assert_int_equal(raw_int(db, "PRAGMA user_version"), 99);
    sqlite3_close(db);
    free(path);
}

static void test_foreign_database_refused(void **state) {
    (void)state;
    char *path = store_path("test_store_foreign", "other.db");
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    raw_exec(db, "CREATE TABLE contacts (name TEXT)");
    sqlite3_close(db);
    mt_store *s = NULL;
    mt_error err = {0};
    assert_int_equal(mt_store_open(&s, path, true, &err), MT_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "not a moetune store"));
    assert_non_null(strstr(err.msg, path));
    db = raw_open(path);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM sqlite_schema"), 1); /* not migrated into */
    sqlite3_close(db);
    free(path);
}

/* ---- round trips ---- */

static void test_run_roundtrip(void **state) {
    (void)state;
    char *path = store_path("test_store_runs", "runs.db");
    mt_store *s = open_ok(path);
    mt_error err = {0};
    mt_store_run_info info = {
        .name = "legal-lora",
        .method = "sft",
        .recipe_text = "base: tiny\nmethod: sft\nlora: {r: 8}\n",
        .recipe_sha256 = "ab12",
        .base_path = "/models/tiny",
        .base_hash = "cd34",
        .git_revision = "0123abc",
        .version = NULL,
        .seed = 0xfedcba9876543210ull, /* above 2^63: must survive SQLite's signed integers */
        .config_json = "{\"lora\":{\"r\":8}}",
    };
    int64_t id = 0;
    assert_int_equal(mt_store_run_begin(s, &info, &id, &err), MT_OK);
    assert_true(id > 0);

    mt_store_run r;
    assert_int_equal(mt_store_run_get(s, id, &r, &err), MT_OK);
    assert_int_equal(r.id, id);
    assert_string_equal(r.name, info.name);
    assert_string_equal(r.method, info.method);
    assert_string_equal(r.recipe_text, info.recipe_text);
    assert_string_equal(r.recipe_sha256, info.recipe_sha256);
    assert_string_equal(r.base_path, info.base_path);
    assert_string_equal(r.base_hash, info.base_hash);
    assert_string_equal(r.git_revision, info.git_revision);
    assert_string_equal(r.version, MT_VERSION);
    assert_string_equal(r.config_json, info.config_json);
    assert_true(r.seed == info.seed);
    assert_int_equal(r.pid, getpid());
    assert_int_equal(r.status, MT_RUN_RUNNING); /* this process is alive */
    assert_false(r.stale);
    assert_int_equal(r.last_step, -1);
    assert_false(r.has_loss);
    double now = (double)time(NULL);
    assert_true(fabs(r.started - now) < 5);
    assert_true(r.ended == 0);
    mt_store_run_free(&r);

    /* optional fields absent */
    mt_store_run_info bare = {.name = "bare", .method = "dpo"};
    int64_t id2 = 0;
    assert_int_equal(mt_store_run_begin(s, &bare, &id2, &err), MT_OK);
    assert_int_equal(mt_store_run_get(s, id2, &r, &err), MT_OK);
    assert_null(r.git_revision);
    assert_null(r.recipe_text);
    assert_string_equal(r.config_json, "{}");
    mt_store_run_free(&r);

    mt_metric m[] = {{"loss", 2.5}, {"lr", 1e-4}};
    log_ok(s, id, 0, m, 2);
    m[0].value = 1.75;
    log_ok(s, id, 10, m, 2);
    assert_int_equal(mt_store_run_set_status(s, id, MT_RUN_COMPLETED, "done", &err), MT_OK);
    assert_int_equal(mt_store_run_set_status(s, id2, MT_RUN_FAILED, "out of memory", &err), MT_OK);

    mt_store_run_list l;
    assert_int_equal(mt_store_run_list_all(s, &l, &err), MT_OK);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.items[0].id, id);
    assert_int_equal(l.items[0].status, MT_RUN_COMPLETED);
    assert_string_equal(l.items[0].status_message, "done");
    assert_int_equal(l.items[0].last_step, 10);
    assert_true(l.items[0].has_loss);
    assert_true(l.items[0].last_loss == 1.75);
    assert_true(l.items[0].ended >= l.items[0].started);
    assert_true(l.items[0].duration >= 0 && l.items[0].duration < 5);
    assert_null(l.items[0].recipe_text); /* the list leaves the big texts out */
    assert_int_equal(l.items[1].status, MT_RUN_FAILED);
    assert_string_equal(l.items[1].status_message, "out of memory");
    mt_store_run_list_free(&l);

    /* a "running" run begun on another host cannot be judged dead from here */
    int64_t id3 = begin_run(s, "elsewhere", NULL);
    sqlite3 *db = raw_open(path);
    char sql[200];
    snprintf(sql, sizeof sql, "UPDATE runs SET host = 'other-machine', pid = 999999999 WHERE id = %lld", (long long)id3);
    raw_exec(db, sql);
    sqlite3_close(db);
    assert_int_equal(mt_store_run_get(s, id3, &r, &err), MT_OK);
    assert_int_equal(r.status, MT_RUN_RUNNING);
    mt_store_run_free(&r);

    /* errors */
    assert_int_equal(mt_store_run_get(s, 4242, &r, &err), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "4242"));
    mt_error_clear(&err);
    assert_int_equal(mt_store_run_set_status(s, 4242, MT_RUN_FAILED, NULL, &err), MT_ERR_NOT_FOUND);
    mt_error_clear(&err);
    mt_store_run_info noname = {.method = "sft"};
    assert_int_equal(mt_store_run_begin(s, &noname, &id, &err), MT_ERR_INVALID);
    mt_error_clear(&err);
    mt_store_run_info badjson = {.name = "x", .method = "sft", .config_json = "{lora: 8"};
    assert_int_equal(mt_store_run_begin(s, &badjson, &id, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "config_is_json"));
    assert_non_null(strstr(err.msg, path));
    assert_string_equal(mt_run_status_name(MT_RUN_INTERRUPTED), "interrupted");
    mt_store_close(s);
    free(path);
}

static void test_metrics_in_step_order(void **state) {
    (void)state;
    char *path = store_path("test_store_metrics", "runs.db");
    mt_store *s = open_ok(path);
    mt_error err = {0};
    int64_t run = begin_run(s, "m", NULL);
    /* logged out of order (as a resumed run may): read back by step */
    const int64_t steps[] = {40, 0, 30, 10, 20, 50};
    for (size_t i = 0; i < 6; i++) {
        mt_metric m[] = {{"loss", 10.0 - (double)steps[i] / 10}, {"grad_norm", (double)steps[i]}};
        log_ok(s, run, steps[i], m, 2);
    }
    mt_metric nan_metric = {"loss", NAN};
    log_ok(s, run, 60, &nan_metric, 1);
    mt_metric again = {"grad_norm", -1.0}; /* re-logging a step replaces it */
    log_ok(s, run, 20, &again, 1);

    mt_store_series sr;
    assert_int_equal(mt_store_metric_series(s, run, "loss", &sr, &err), MT_OK);
    assert_int_equal(sr.n, 7);
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(sr.steps[i], (int64_t)i * 10);
        assert_true(sr.values[i] == 10.0 - (double)i);
    }
    assert_int_equal(sr.steps[6], 60);
    assert_true(isnan(sr.values[6]));
    mt_store_series_free(&sr);
    assert_int_equal(mt_store_metric_series(s, run, "grad_norm", &sr, &err), MT_OK);
    assert_int_equal(sr.n, 6);
    assert_true(sr.values[2] == -1.0);
    mt_store_series_free(&sr);
    assert_int_equal(mt_store_metric_series(s, run, "nothing", &sr, &err), MT_OK);
    assert_int_equal(sr.n, 0);
    mt_store_series_free(&sr);

    mt_store_metric_list names;
    assert_int_equal(mt_store_metric_names(s, run, &names, &err), MT_OK);
    assert_int_equal(names.n, 2);
    assert_string_equal(names.items[0].name, "grad_norm");
    assert_string_equal(names.items[1].name, "loss");
    const mt_store_metric_summary *loss = &names.items[1];
    assert_int_equal(loss->count, 7);
    assert_int_equal(loss->last_step, 60);
    assert_true(isnan(loss->last));
    assert_true(loss->min == 5.0);
    assert_int_equal(loss->min_step, 50);
    assert_true(loss->max == 10.0);
    assert_int_equal(loss->max_step, 0);
    assert_true(names.items[0].min == -1.0);
    assert_int_equal(names.items[0].min_step, 20);
    mt_store_metric_list_free(&names);

    /* the heartbeat columns the list reads */
    mt_store_run r;
    assert_int_equal(mt_store_run_get(s, run, &r, &err), MT_OK);
    assert_int_equal(r.last_step, 60);
    assert_true(r.has_loss);
    assert_true(isnan(r.last_loss));
    mt_store_run_free(&r);

    /* errors leave nothing behind */
    mt_metric two[] = {{"a", 1}, {"", 2}};
    assert_int_equal(mt_store_log_metrics(s, run, 70, two, 2, &err), MT_ERR_INVALID);
    mt_error_clear(&err);
    assert_int_equal(mt_store_log_metrics(s, 999, 0, two, 1, &err), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "999"));
    mt_error_clear(&err);
    assert_int_equal(mt_store_log_metrics(s, run, -1, two, 1, &err), MT_ERR_INVALID);
    sqlite3 *db = raw_open(path);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM metrics WHERE step = 70 OR run_id = 999"), 0);
    sqlite3_close(db);
    mt_store_close(s);
    free(path);
}

static void test_events_roundtrip(void **state) {
    (void)state;
    char *path = store_path("test_store_events", "runs.db");
    mt_store *s = open_ok(path);
    mt_error err = {0};
    int64_t run = begin_run(s, "e", NULL);
    assert_int_equal(mt_store_log_event(s, run, -1, "start", NULL, &err), MT_OK);
    assert_int_equal(mt_store_log_event(s, run, 100, "checkpoint", "{\"path\":\"ckpt/step-100\"}", &err), MT_OK);
    assert_int_equal(mt_store_log_event(s, run, 123, "nan_skip", "{\"loss\":null}", &err), MT_OK);
    assert_int_equal(mt_store_log_event(s, run, 5, "bad", "{not json", &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "detail_is_json"));
    mt_error_clear(&err);
    assert_int_equal(mt_store_log_event(s, 77, 5, "orphan", NULL, &err), MT_ERR_NOT_FOUND);
    mt_error_clear(&err);

    mt_store_event_list ev;
    assert_int_equal(mt_store_events(s, run, &ev, &err), MT_OK);
    assert_int_equal(ev.n, 3);
    assert_string_equal(ev.items[0].kind, "start");
    assert_int_equal(ev.items[0].step, -1);
    assert_null(ev.items[0].detail_json);
    assert_string_equal(ev.items[1].kind, "checkpoint");
    assert_int_equal(ev.items[1].step, 100);
    assert_string_equal(ev.items[1].detail_json, "{\"path\":\"ckpt/step-100\"}");
    assert_string_equal(ev.items[2].kind, "nan_skip");
    assert_true(ev.items[1].time >= ev.items[0].time && ev.items[2].time >= ev.items[1].time);
    mt_store_event_list_free(&ev);
    mt_store_close(s);
    free(path);
}

static void test_datasets_and_adapters(void **state) {
    (void)state;
    char *path = store_path("test_store_records", "runs.db");
    mt_store *s = open_ok(path);
    mt_error err = {0};
    int64_t run = begin_run(s, "d", NULL);
    mt_store_dataset_info train = {.path = "data/legal.jsonl", .sha256 = "aa", .format = "text", .n_docs = 800,
                                   .n_tokens = -1, .run_id = run, .split = "train"};
    mt_store_dataset_info eval = {.path = "data/legal-eval.jsonl", .sha256 = "bb", .format = "text", .n_docs = 40,
                                  .n_tokens = 9000, .run_id = run, .split = "eval"};
    int64_t d1 = 0, d2 = 0, d3 = 0;
    assert_int_equal(mt_store_dataset_add(s, &train, &d1, &err), MT_OK);
    assert_int_equal(mt_store_dataset_add(s, &eval, &d2, &err), MT_OK);
    assert_true(d1 > 0 && d2 > 0 && d1 != d2);
    /* the same file again: same id, counts refreshed where given */
    train.n_tokens = 123456;
    train.n_docs = -1;
    assert_int_equal(mt_store_dataset_add(s, &train, &d3, &err), MT_OK);
    assert_int_equal(d3, d1);
    /* a pairs dataset not linked to a run */
    mt_store_dataset_info pairs = {.path = "pairs.jsonl", .sha256 = "cc", .format = "preference", .n_docs = -1,
                                   .n_tokens = -1};
    int64_t d4 = 0;
    assert_int_equal(mt_store_dataset_add(s, &pairs, &d4, &err), MT_OK);

    mt_store_dataset_list dl;
    assert_int_equal(mt_store_datasets(s, run, &dl, &err), MT_OK);
    assert_int_equal(dl.n, 2);
    assert_int_equal(dl.items[0].id, d1);
    assert_string_equal(dl.items[0].split, "train");
    assert_string_equal(dl.items[0].path, "data/legal.jsonl");
    assert_string_equal(dl.items[0].sha256, "aa");
    assert_string_equal(dl.items[0].format, "text");
    assert_int_equal(dl.items[0].n_docs, 800);
    assert_int_equal(dl.items[0].n_tokens, 123456);
    assert_string_equal(dl.items[1].split, "eval");
    assert_int_equal(dl.items[1].n_tokens, 9000);
    mt_store_dataset_list_free(&dl);
    assert_int_equal(mt_store_datasets(s, 0, &dl, &err), MT_OK);
    assert_int_equal(dl.n, 3);
    assert_null(dl.items[2].split);
    assert_int_equal(dl.items[2].n_docs, -1);
    mt_store_dataset_list_free(&dl);

    mt_store_adapter_info ai = {.path = "out/legal-lora", .run_id = run, .base_hash = "cd34", .rank = 16, .alpha = 32,
                                .targets_json = "[\"q_proj\",\"v_proj\"]", .thresholds_json = "{\"dap_threshold\":0.31}",
                                .eval_json = "{\"eval_loss\":1.82}"};
    int64_t a1 = 0;
    assert_int_equal(mt_store_adapter_add(s, &ai, &a1, &err), MT_OK);
    assert_true(a1 > 0);
    mt_store_adapter_info loose = {.path = "imported", .rank = 4, .alpha = 8};
    int64_t a2 = 0;
    assert_int_equal(mt_store_adapter_add(s, &loose, &a2, &err), MT_OK);
    mt_store_adapter_list al;
    assert_int_equal(mt_store_adapters(s, run, &al, &err), MT_OK);
    assert_int_equal(al.n, 1);
    assert_int_equal(al.items[0].id, a1);
    assert_int_equal(al.items[0].run_id, run);
    assert_string_equal(al.items[0].path, ai.path);
    assert_string_equal(al.items[0].base_hash, ai.base_hash);
    assert_int_equal(al.items[0].rank, 16);
    assert_true(al.items[0].alpha == 32);
    assert_string_equal(al.items[0].targets_json, ai.targets_json);
    assert_string_equal(al.items[0].thresholds_json, ai.thresholds_json);
    assert_string_equal(al.items[0].eval_json, ai.eval_json);
    mt_store_adapter_list_free(&al);
    assert_int_equal(mt_store_adapters(s, 0, &al, &err), MT_OK);
    assert_int_equal(al.n, 2);
    assert_int_equal(al.items[1].run_id, 0);
    assert_null(al.items[1].targets_json);
    mt_store_adapter_list_free(&al);

    /* errors */
    ai.run_id = 555;
    assert_int_equal(mt_store_adapter_add(s, &ai, &a1, &err), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "555"));
    mt_error_clear(&err);
    ai.run_id = run;
    ai.targets_json = "[q_proj";
    assert_int_equal(mt_store_adapter_add(s, &ai, &a1, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "targets_is_json"));
    mt_error_clear(&err);
    ai.rank = 0;
    assert_int_equal(mt_store_adapter_add(s, &ai, &a1, &err), MT_ERR_INVALID);
    mt_error_clear(&err);
    train.run_id = 556;
    assert_int_equal(mt_store_dataset_add(s, &train, &d3, &err), MT_ERR_NOT_FOUND);
    mt_store_close(s);
    free(path);
}

static void test_pairs_dedup(void **state) {
    (void)state;
    char *path = store_path("test_store_pairs", "runs.db");
    mt_store *s = open_ok(path);
    mt_error err = {0};
    mt_store_dataset_info di = {.path = "pairs.jsonl", .sha256 = "cc", .format = "preference", .n_docs = -1,
                                .n_tokens = -1};
    mt_store_dataset_info dj = {.path = "other.jsonl", .sha256 = "dd", .format = "preference", .n_docs = -1,
                                .n_tokens = -1};
    int64_t ds = 0, ds2 = 0;
    assert_int_equal(mt_store_dataset_add(s, &di, &ds, &err), MT_OK);
    assert_int_equal(mt_store_dataset_add(s, &dj, &ds2, &err), MT_OK);

    mt_store_pair batch[] = {
        {.prompt = "Define: angina", .chosen = "chest pain from poor blood flow", .rejected = "a kind of tree",
         .source = "gcide:(Med.)", .label_json = "{\"term\":\"angina\"}"},
        {.prompt = "Define: femur", .chosen = "the thigh bone", .rejected = "a small bird"},
        {.prompt = "Define: angina", .chosen = "chest pain from poor blood flow", .rejected = "a kind of tree",
         .source = "again"}, /* duplicate inside the batch */
        /* the same characters split differently: not a duplicate */
        {.prompt = "Define: femu", .chosen = "rthe thigh bone", .rejected = "a small bird"},
    };
    size_t added = 0, dups = 0;
    assert_int_equal(mt_store_pairs_add(s, ds, batch, 4, &added, &dups, &err), MT_OK);
    assert_int_equal(added, 3);
    assert_int_equal(dups, 1);
    /* the whole batch again: all duplicates */
    assert_int_equal(mt_store_pairs_add(s, ds, batch, 4, &added, &dups, &err), MT_OK);
    assert_int_equal(added, 0);
    assert_int_equal(dups, 4);
    /* another dataset keeps its own copy */
    assert_int_equal(mt_store_pairs_add(s, ds2, batch, 1, &added, &dups, &err), MT_OK);
    assert_int_equal(added, 1);
    int64_t count = 0;
    assert_int_equal(mt_store_pairs_count(s, ds, &count, &err), MT_OK);
    assert_int_equal(count, 3);

    mt_store_pair_list pl;
    assert_int_equal(mt_store_pairs_get(s, ds, 0, -1, &pl, &err), MT_OK);
    assert_int_equal(pl.n, 3);
    assert_string_equal(pl.items[0].prompt, batch[0].prompt);
    assert_string_equal(pl.items[0].chosen, batch[0].chosen);
    assert_string_equal(pl.items[0].rejected, batch[0].rejected);
    assert_string_equal(pl.items[0].source, "gcide:(Med.)"); /* the first copy wins */
    assert_string_equal(pl.items[0].label_json, batch[0].label_json);
    assert_null(pl.items[1].source);
    assert_string_equal(pl.items[2].prompt, "Define: femu");
    mt_store_pair_list_free(&pl);
    assert_int_equal(mt_store_pairs_get(s, ds, 1, 1, &pl, &err), MT_OK);
    assert_int_equal(pl.n, 1);
    assert_string_equal(pl.items[0].prompt, "Define: femur");
    mt_store_pair_list_free(&pl);

    /* the stored hash is the documented one */
    char want[65];
    mt_store_pair_hash(batch[1].prompt, batch[1].chosen, batch[1].rejected, want);
    sqlite3 *db = raw_open(path);
    char *got = raw_text(db, "SELECT hash FROM pairs WHERE prompt = 'Define: femur'");
    assert_string_equal(got, want);
    free(got);
    /* length-prefixing: independent computation of SHA-256(len8(p) p len8(c) c len8(r) r) */
    unsigned char buf[64];
    size_t n = 0;
    const char *fields[3] = {"a", "", "xy"};
    for (int f = 0; f < 3; f++) {
        uint64_t len = strlen(fields[f]);
        for (int i = 0; i < 8; i++) buf[n++] = (unsigned char)(len >> (8 * i));
        memcpy(buf + n, fields[f], len);
        n += len;
    }
    char ref[65];
    mt_sha256_hex(buf, n, ref);
    mt_store_pair_hash("a", "", "xy", want);
    assert_string_equal(want, ref);

    /* errors roll the whole batch back */
    mt_store_pair bad[] = {{.prompt = "new", .chosen = "c", .rejected = "r"}, {.prompt = "p", .chosen = "c"}};
    assert_int_equal(mt_store_pairs_add(s, ds, bad, 2, &added, &dups, &err), MT_ERR_INVALID);
    mt_error_clear(&err);
    mt_store_pair badlabel[] = {{.prompt = "new", .chosen = "c", .rejected = "r"},
                                {.prompt = "p", .chosen = "c", .rejected = "r", .label_json = "{x"}};
    assert_int_equal(mt_store_pairs_add(s, ds, badlabel, 2, &added, &dups, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "pair 1"));
    mt_error_clear(&err);
    assert_int_equal(mt_store_pairs_add(s, 999, batch, 1, &added, &dups, &err), MT_ERR_NOT_FOUND);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM pairs WHERE prompt = 'new'"), 0);
    sqlite3_close(db);
    mt_store_close(s);
    free(path);
}

static void test_config_diff(void **state) {
    (void)state;
    char *path = store_path("test_store_diff", "runs.db");
    mt_store *s = open_ok(path);
    mt_error err = {0};
    int64_t a = begin_run(s, "a", "{\"lr\":0.001,\"lora\":{\"r\":8,\"targets\":[\"q\",\"v\"]},\"name\":\"x\",\"opt\":{}}");
    int64_t b = begin_run(s, "b", "{\"lr\":0.002,\"lora\":{\"r\":8,\"targets\":[\"q\"]},\"packing\":true,\"opt\":{}}");
    mt_store_diff_list d;
    assert_int_equal(mt_store_config_diff_runs(s, a, b, &d, &err), MT_OK);
    assert_int_equal(d.n, 4);
    assert_string_equal(d.items[0].key, "$.lora.targets[1]");
    assert_string_equal(d.items[0].a, "\"v\"");
    assert_null(d.items[0].b);
    assert_string_equal(d.items[1].key, "$.lr");
    assert_string_equal(d.items[1].a, "0.001");
    assert_string_equal(d.items[1].b, "0.002");
    assert_string_equal(d.items[2].key, "$.name");
    assert_string_equal(d.items[2].a, "\"x\"");
    assert_null(d.items[2].b);
    assert_string_equal(d.items[3].key, "$.packing");
    assert_null(d.items[3].a);
    assert_string_equal(d.items[3].b, "true");
    mt_store_diff_list_free(&d);
    assert_int_equal(mt_store_config_diff_runs(s, a, a, &d, &err), MT_OK);
    assert_int_equal(d.n, 0);
    mt_store_diff_list_free(&d);
    assert_int_equal(mt_store_config_diff_runs(s, a, 31337, &d, &err), MT_ERR_NOT_FOUND);
    mt_store_close(s);
    free(path);
}

/* ---- concurrency and crashes ---- */

#define N_PER_STEP 24

static void write_steps(const char *path, int64_t run, int n_steps, useconds_t pause_us) {
    mt_store *s = NULL;
    mt_error err = {0};
    if (mt_store_open(&s, path, true, &err) != MT_OK) _exit(3);
    mt_metric m[N_PER_STEP];
    char names[N_PER_STEP][16];
    for (int i = 0; i < N_PER_STEP; i++) {
        snprintf(names[i], sizeof names[i], "m%02d", i);
        m[i].name = names[i];
    }
    for (int step = 0; step < n_steps; step++) {
        for (int i = 0; i < N_PER_STEP; i++) m[i].value = step + i * 0.01;
        if (mt_store_log_metrics(s, run, step, m, N_PER_STEP, &err) != MT_OK) _exit(4);
        if (pause_us) usleep(pause_us);
    }
    mt_store_close(s);
}

static void test_reader_during_writes(void **state) {
    (void)state;
    char *path = store_path("test_store_concurrent", "runs.db");
    mt_store *s = open_ok(path);
    int64_t run = begin_run(s, "live", NULL);

    /* a read transaction is a snapshot: a commit made after it began stays invisible to it */
    sqlite3 *db = raw_open(path);
    raw_exec(db, "BEGIN");
    assert_int_equal(raw_int(db, "SELECT count(*) FROM metrics"), 0);
    mt_metric m = {"loss", 1.0};
    log_ok(s, run, 0, &m, 1);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM metrics"), 0);
    raw_exec(db, "COMMIT");
    assert_int_equal(raw_int(db, "SELECT count(*) FROM metrics"), 1);

    /* a writer process and this reader at the same time. SQLite connections must not cross a
     * fork (the child would inherit their lock bookkeeping without the locks): close, fork, and
     * open again on each side. */
    int64_t run2 = begin_run(s, "live2", NULL);
    mt_store_close(s);
    sqlite3_close(db);
    const int n_steps = 300;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        write_steps(path, run2, n_steps, 500);
        _exit(0);
    }
    s = open_ok(path);
    db = raw_open(path);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*), coalesce(sum(c != %d), 0), coalesce(max(step), -1) FROM"
             " (SELECT step, count(*) AS c FROM metrics WHERE run_id = %lld GROUP BY step)",
             N_PER_STEP, (long long)run2);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int64_t last_seen = 0, polls_mid_run = 0;
    int status = 0;
    for (;;) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        int64_t n = sqlite3_column_int64(st, 0), partial = sqlite3_column_int64(st, 1);
        int64_t max_step = sqlite3_column_int64(st, 2);
        sqlite3_reset(st);
        assert_int_equal(partial, 0);       /* never a step with some of its metrics */
        assert_int_equal(max_step, n - 1);  /* steps arrive in order, none missing */
        assert_true(n >= last_seen);        /* committed rows stay */
        last_seen = n;
        if (n > 0 && n < n_steps) polls_mid_run++;
        /* the API's own reader on the same live file */
        mt_store_series sr;
        mt_error err = {0};
        assert_int_equal(mt_store_metric_series(s, run2, "m07", &sr, &err), MT_OK);
        for (size_t i = 0; i < sr.n; i++) assert_int_equal(sr.steps[i], (int64_t)i);
        mt_store_series_free(&sr);
        if (done == pid) break;
        usleep(300);
    }
    sqlite3_finalize(st);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(last_seen, n_steps);
    assert_true(polls_mid_run > 0);
    sqlite3_close(db);
    mt_store_close(s);
    free(path);
}

static void test_interrupted_run(void **state) {
    (void)state;
    char *path = store_path("test_store_killed", "runs.db");
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        mt_store *s = NULL;
        mt_error err = {0};
        if (mt_store_open(&s, path, true, &err) != MT_OK) _exit(3);
        mt_store_run_info info = {.name = "doomed", .method = "sft"};
        int64_t run = 0;
        if (mt_store_run_begin(s, &info, &run, &err) != MT_OK) _exit(4);
        mt_metric m[N_PER_STEP];
        char names[N_PER_STEP][16];
        for (int i = 0; i < N_PER_STEP; i++) {
            snprintf(names[i], sizeof names[i], "m%02d", i);
            m[i].name = names[i];
        }
        for (int64_t step = 0; step < 10000000; step++) {
            for (int i = 0; i < N_PER_STEP; i++) m[i].value = (double)step;
            if (mt_store_log_metrics(s, run, step, m, N_PER_STEP, &err) != MT_OK) _exit(5);
            if (step == 20 && write(ready[1], &run, sizeof run) != sizeof run) _exit(6);
        }
        _exit(0);
    }
    close(ready[1]);
    int64_t run = 0;
    assert_int_equal(read(ready[0], &run, sizeof run), sizeof run);
    close(ready[0]);
    usleep(20000 + (useconds_t)(getpid() % 17) * 1000); /* somewhere in the middle of a later step */
    assert_int_equal(kill(pid, SIGKILL), 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    /* a plain SQLite connection first: it recovers from the WAL the dead writer left */
    sqlite3 *db = raw_open(path);
    char *ok = raw_text(db, "PRAGMA integrity_check");
    assert_string_equal(ok, "ok");
    free(ok);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*), coalesce(sum(c != %d), 0), coalesce(max(step), -1) FROM"
             " (SELECT step, count(*) AS c FROM metrics WHERE run_id = %lld GROUP BY step)",
             N_PER_STEP, (long long)run);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t n_steps = sqlite3_column_int64(st, 0);
    assert_true(n_steps > 20);                            /* what was committed is there */
    assert_int_equal(sqlite3_column_int64(st, 1), 0);     /* every step whole */
    assert_int_equal(sqlite3_column_int64(st, 2), n_steps - 1);
    sqlite3_finalize(st);
    sqlite3_close(db);

    mt_store *s = open_ok(path);
    mt_error err = {0};
    mt_store_run_list l;
    assert_int_equal(mt_store_run_list_all(s, &l, &err), MT_OK);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.items[0].status, MT_RUN_INTERRUPTED);
    assert_true(l.items[0].stale);
    assert_int_equal(l.items[0].last_step, n_steps - 1);
    assert_true(l.items[0].duration >= 0);
    mt_store_run_list_free(&l);
    mt_store_run r;
    assert_int_equal(mt_store_run_get(s, run, &r, &err), MT_OK);
    assert_int_equal(r.status, MT_RUN_INTERRUPTED);
    assert_int_equal(r.pid, pid);
    mt_store_run_free(&r);
    /* the stored row still says running: only the reading changed */
    db = raw_open(path);
    char *stored = raw_text(db, "SELECT status FROM runs");
    assert_string_equal(stored, "running");
    free(stored);
    sqlite3_close(db);
    /* the trainer's resume path marks it for good */
    assert_int_equal(mt_store_run_set_status(s, run, MT_RUN_INTERRUPTED, "killed", &err), MT_OK);
    assert_int_equal(mt_store_run_get(s, run, &r, &err), MT_OK);
    assert_int_equal(r.status, MT_RUN_INTERRUPTED);
    assert_false(r.stale);
    assert_true(r.ended > 0);
    mt_store_run_free(&r);
    mt_store_close(s);
    free(path);
}

/* ---- error paths ---- */

static void test_open_errors(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("test_store_errors");
    char file[4096], under_file[4200], garbage[4096], truncated[4096];
    snprintf(file, sizeof file, "%s/plain.txt", dir);
    mt_error err = {0};
    assert_int_equal(mt_write_file_atomic(file, "hello", 5, &err), MT_OK);
    mt_store *s = NULL;

    /* unwritable: the parent "folder" is a file */
    snprintf(under_file, sizeof under_file, "%s/runs.db", file);
    assert_int_equal(mt_store_open(&s, under_file, true, &err), MT_ERR_IO);
    assert_null(s);
    assert_non_null(strstr(err.msg, under_file));
    assert_non_null(strstr(err.msg, "not a folder"));
    mt_error_clear(&err);

    /* a folder given as the store */
    assert_int_equal(mt_store_open(&s, dir, true, &err), MT_ERR_IO);
    assert_non_null(strstr(err.msg, "is a folder"));
    mt_error_clear(&err);

    /* a file that is not a database at all */
    snprintf(garbage, sizeof garbage, "%s/garbage.db", dir);
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (char)("moetune!"[i % 8] ^ (i * 31));
    assert_int_equal(mt_write_file_atomic(garbage, junk, sizeof junk, &err), MT_OK);
    assert_int_equal(mt_store_open(&s, garbage, true, &err), MT_ERR_FORMAT);
    assert_null(s);
    assert_non_null(strstr(err.msg, garbage));
    assert_non_null(strstr(err.msg, "not a moetune store"));
    mt_error_clear(&err);

    /* a real store whose pages after the header were overwritten */
    snprintf(truncated, sizeof truncated, "%s/damaged.db", dir);
    s = open_ok(truncated);
    int64_t run = begin_run(s, "r", NULL);
    for (int step = 0; step < 200; step++) {
        mt_metric m[] = {{"loss", 1.0 / (step + 1)}, {"lr", 1e-3}, {"grad_norm", 0.5}};
        log_ok(s, run, step, m, 3);
    }
    mt_store_close(s);
    s = NULL;
    char *data;
    size_t len;
    assert_int_equal(mt_read_file(truncated, &data, &len, &err), MT_OK);
    assert_true(len > 8192);
    for (size_t i = 4096 + 100; i < len; i++) data[i] = (char)(i * 7);
    assert_int_equal(mt_write_file_atomic(truncated, data, len, &err), MT_OK);
    free(data);
    mt_status st = mt_store_open(&s, truncated, true, &err);
    if (st == MT_OK) {
        mt_store_run_list l;
        st = mt_store_run_list_all(s, &l, &err);
        if (st == MT_OK) mt_store_run_list_free(&l);
        mt_store_close(s);
    }
    assert_int_equal(st, MT_ERR_FORMAT);
    assert_non_null(strstr(err.msg, truncated));
    assert_non_null(strstr(err.msg, "malformed"));
    mt_error_clear(&err);

    assert_int_equal(mt_store_open(&s, "", true, &err), MT_ERR_INVALID);
}

/* ---- plots ---- */

/* Number of points in the d attribute of the path with this series index and role. */
static size_t path_points(const char *svg, size_t series, const char *role, size_t *subpaths) {
    char key[96];
    snprintf(key, sizeof key, "data-series=\"%zu\" data-role=\"%s\"", series, role);
    const char *p = strstr(svg, key);
    if (!p) fail_msg("no path %s", key);
    p = strstr(p, " d=\"");
    assert_non_null(p);
    p += 4;
    const char *end = strchr(p, '"');
    size_t points = 0, moves = 0;
    for (const char *q = p; q < end; q++) {
        if (*q == 'M') moves++;
        if (*q == 'M' || *q == 'L') points++;
    }
    if (subpaths) *subpaths = moves;
    return points;
}

static void test_plot_svg(void **state) {
    (void)state;
    enum { N = 50, NE = 5 };
    double x[N], y[N], ex[NE], ey[NE];
    for (int i = 0; i < N; i++) {
        x[i] = i * 10;
        y[i] = 3.0 * exp(-i / 15.0) + 1.0 + 0.1 * sin(i * 1.7);
    }
    for (int i = 0; i < NE; i++) {
        ex[i] = (i + 1) * 100 - 10;
        ey[i] = 3.0 * exp(-(i + 1) * 10 / 15.0) + 1.1;
    }
    mt_plot_series series[] = {
        {.label = "run 3 loss", .x = x, .y = y, .n = N, .style = MT_PLOT_LINE, .smooth = true},
        {.label = "run 3 eval_loss", .x = ex, .y = ey, .n = NE, .style = MT_PLOT_POINTS},
    };
    mt_plot_opts o = {.title = "loss <run 3> & co", .x_label = "step (optimizer updates)",
                      .y_label = "loss (nats/token)"};
    char *svg = NULL;
    mt_error err = {0};
    assert_int_equal(mt_plot_svg(&o, series, 2, &svg, &err), MT_OK);
    assert_non_null(strstr(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_non_null(strstr(svg, "</svg>"));
    assert_non_null(strstr(svg, ">step (optimizer updates)</text>"));
    assert_non_null(strstr(svg, ">loss (nats/token)</text>"));
    assert_non_null(strstr(svg, "loss &lt;run 3&gt; &amp; co")); /* escaped, not raw markup */
    assert_null(strstr(svg, "<run 3>"));
    const char *legend = strstr(svg, "data-role=\"legend\"");
    assert_non_null(legend);
    assert_non_null(strstr(legend, ">run 3 loss</text>"));
    assert_non_null(strstr(legend, ">run 3 eval_loss</text>"));
    assert_int_equal(path_points(svg, 0, "line", NULL), N);
    assert_int_equal(path_points(svg, 1, "line", NULL), NE);
    const char *markers = strstr(svg, "data-series=\"1\" data-role=\"points\"");
    assert_non_null(markers);
    assert_int_equal(count_substr(markers, "<circle"), NE + 1); /* + the legend's sample marker */
    assert_null(strstr(svg, "data-role=\"raw\"")); /* no smoothing asked for */
    /* the tick labels of x: 0 .. 490 in steps of 50 */
    const char *xt = strstr(svg, "data-role=\"x-ticks\"");
    assert_non_null(xt);
    assert_non_null(strstr(xt, ">0</text>"));
    assert_non_null(strstr(xt, ">450</text>"));
    free(svg);

    /* smoothing: the raw curve faint underneath, the EMA on top, both with every point */
    o.ema = 0.8;
    assert_int_equal(mt_plot_svg(&o, series, 2, &svg, &err), MT_OK);
    assert_int_equal(path_points(svg, 0, "raw", NULL), N);
    assert_int_equal(path_points(svg, 0, "line", NULL), N);
    assert_non_null(strstr(svg, "(EMA 0.8)"));
    free(svg);

    /* a NaN breaks the curve into two pieces */
    y[20] = NAN;
    o.ema = 0;
    size_t pieces = 0;
    assert_int_equal(mt_plot_svg(&o, series, 1, &svg, &err), MT_OK);
    assert_int_equal(path_points(svg, 0, "line", &pieces), N - 1);
    assert_int_equal(pieces, 2);
    free(svg);
    y[20] = 1.5;

    /* log axis: decades for a wide range */
    double wide[N];
    for (int i = 0; i < N; i++) wide[i] = pow(10, -3 + 4.0 * i / (N - 1));
    mt_plot_series ws = {.label = "w", .x = x, .y = wide, .n = N};
    o.log_y = true;
    assert_int_equal(mt_plot_svg(&o, &ws, 1, &svg, &err), MT_OK);
    const char *yt = strstr(svg, "data-role=\"y-ticks\"");
    assert_non_null(strstr(yt, ">0.001</text>"));
    assert_non_null(strstr(yt, ">1</text>"));
    assert_non_null(strstr(yt, ">10</text>"));
    free(svg);
    wide[3] = 0;
    assert_int_equal(mt_plot_svg(&o, &ws, 1, &svg, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "log axis"));
    assert_null(svg);
    mt_error_clear(&err);

    /* nothing to draw */
    o.log_y = false;
    mt_plot_series empty = {.label = "e", .x = x, .y = y, .n = 0};
    assert_int_equal(mt_plot_svg(&o, &empty, 1, &svg, &err), MT_ERR_INVALID);
    mt_error_clear(&err);
    o.ema = 1.5;
    assert_int_equal(mt_plot_svg(&o, series, 1, &svg, &err), MT_ERR_INVALID);

    /* a long curve is reduced per pixel column but keeps its extremes */
    enum { BIG = 100000 };
    double *bx = mt_xmalloc(BIG * sizeof *bx), *by = mt_xmalloc(BIG * sizeof *by);
    for (int i = 0; i < BIG; i++) bx[i] = i, by[i] = (i == 77777) ? 50.0 : 1.0 + (i % 7) * 0.01;
    mt_plot_series big = {.label = "big", .x = bx, .y = by, .n = BIG};
    mt_plot_opts ob = {.title = "big"};
    mt_error_clear(&err);
    assert_int_equal(mt_plot_svg(&ob, &big, 1, &svg, &err), MT_OK);
    size_t pts = path_points(svg, 0, "line", NULL);
    assert_true(pts <= 2 * 1000 && pts >= 800);
    assert_true(strlen(svg) < 200000);
    /* the spike survives: its pixel row (plot area 48..498, y range padded by 5%) is in the path */
    double ylo = 1.0 - 0.05 * 49, yhi = 50.0 + 0.05 * 49;
    char spike[32];
    snprintf(spike, sizeof spike, ",%.1f", 498 - (50.0 - ylo) / (yhi - ylo) * 450);
    assert_non_null(strstr(svg, spike));
    free(svg);
    free(bx);
    free(by);
}

static void test_plot_ticks(void **state) {
    (void)state;
    double t[64];
    size_t n = mt_plot_ticks(0, 1, 5, t, 64);
    assert_int_equal(n, 6);
    for (size_t i = 0; i < n; i++) assert_true(fabs(t[i] - 0.2 * (double)i) < 1e-12);
    n = mt_plot_ticks(-3, 7, 5, t, 64);
    assert_int_equal(n, 5);
    assert_true(t[0] == -2 && t[1] == 0 && t[4] == 6);
    n = mt_plot_ticks(1.37, 4.12, 6, t, 64);
    assert_true(t[0] == 1.5 && n == 6);
    assert_int_equal(mt_plot_ticks(1, 1, 5, t, 64), 0);
    /* property: every tick is k * {1,2,5} * 10^e, evenly spaced, inside the range, about target many */
    mt_rng r;
    mt_rng_seed(&r, 7);
    for (int trial = 0; trial < 500; trial++) {
        double lo = (mt_rng_float(&r) - 0.5) * pow(10, (int)mt_rng_below(&r, 10) - 4);
        double hi = lo + (mt_rng_float(&r) + 0.01) * pow(10, (int)mt_rng_below(&r, 10) - 4);
        int target = 3 + (int)mt_rng_below(&r, 8);
        n = mt_plot_ticks(lo, hi, target, t, 64);
        assert_true(n >= (size_t)(target / 2 > 2 ? target / 2 : 2) && n <= (size_t)(2.5 * target) + 1);
        /* t[1] - t[0] loses digits when the ticks are far from zero: compare with the exact step */
        double diff = t[1] - t[0], mag = pow(10, floor(log10(diff) + 1e-6)), mant = round(diff / mag);
        assert_true(mant == 1 || mant == 2 || mant == 5);
        double step = mant * mag;
        for (size_t i = 0; i < n; i++) {
            double tol = fmax(step * 1e-6, fabs(t[i]) * 1e-13);
            assert_true(t[i] >= lo - tol && t[i] <= hi + tol);
            assert_true(fabs(t[i] - round(t[i] / step) * step) < tol);
            if (i) assert_true(fabs(t[i] - t[i - 1] - step) < tol);
        }
    }
}

/* ---- the CLI ---- */

static void test_cli_runs(void **state) {
    (void)state;
    if (!mt_path_exists(MT_MOETUNE_BIN)) skip(); /* the moetune binary is built with the whole project */
    char *path = store_path("test_store_cli", "runs.db");
    const char *dir = mt_test_tmpdir("test_store_cli_out");
    char svg_path[4096];
    snprintf(svg_path, sizeof svg_path, "%s/loss.svg", dir);
    mt_store *s = open_ok(path);
    mt_error err = {0};
    int64_t a = begin_run(s, "legal-lora", "{\"lr\":0.001,\"lora\":{\"r\":8}}");
    int64_t b = begin_run(s, "legal-lora-r16", "{\"lr\":0.001,\"lora\":{\"r\":16}}");
    for (int step = 0; step <= 100; step++) {
        mt_metric m[] = {{"loss", 3.0 * exp(-step / 30.0) + 1.2}, {"lr", 1e-3}};
        log_ok(s, a, step, m, 2);
        m[0].value -= 0.1;
        log_ok(s, b, step, m, 2);
        if (step % 25 == 0) {
            mt_metric e = {"eval_loss", 3.0 * exp(-step / 30.0) + 1.3};
            log_ok(s, a, step, &e, 1);
        }
    }
    assert_int_equal(mt_store_log_event(s, a, 50, "checkpoint", "{\"path\":\"ckpt-50\"}", &err), MT_OK);
    mt_store_dataset_info di = {.path = "data/legal.jsonl", .sha256 = "aa11", .format = "text", .n_docs = 800,
                                .n_tokens = 200000, .run_id = a, .split = "train"};
    int64_t did;
    assert_int_equal(mt_store_dataset_add(s, &di, &did, &err), MT_OK);
    mt_store_adapter_info ai = {.path = "out/legal-lora", .run_id = a, .rank = 8, .alpha = 16,
                                .targets_json = "[\"q_proj\"]"};
    int64_t aid;
    assert_int_equal(mt_store_adapter_add(s, &ai, &aid, &err), MT_OK);
    assert_int_equal(mt_store_run_set_status(s, a, MT_RUN_COMPLETED, NULL, &err), MT_OK);
    mt_store_close(s);

    char *out = NULL;
    assert_int_equal(mt_test_run_cli(&out, "runs --store '%s' list", path), 0);
    assert_non_null(strstr(out, "legal-lora-r16"));
    assert_non_null(strstr(out, "completed"));
    assert_non_null(strstr(out, "running"));
    free(out);
    assert_int_equal(mt_test_run_cli(&out, "runs --store '%s' show %lld", path, (long long)a), 0);
    assert_non_null(strstr(out, "method: sft"));
    assert_non_null(strstr(out, "data/legal.jsonl"));
    assert_non_null(strstr(out, "out/legal-lora"));
    assert_non_null(strstr(out, "eval_loss"));
    assert_non_null(strstr(out, "checkpoint"));
    free(out);
    assert_int_equal(mt_test_run_cli(&out, "runs --store '%s' compare %lld %lld", path, (long long)a, (long long)b), 0);
    assert_non_null(strstr(out, "$.lora.r"));
    assert_non_null(strstr(out, "16"));
    free(out);
    assert_int_equal(mt_test_run_cli(&out, "runs --store '%s' plot %lld %lld --metric loss --smooth 0.6 --out '%s'",
                                     path, (long long)a, (long long)b, svg_path),
                     0);
    free(out);
    char *svg;
    size_t len;
    assert_int_equal(mt_read_file(svg_path, &svg, &len, &err), MT_OK);
    assert_non_null(strstr(svg, "eval_loss"));
    assert_non_null(strstr(svg, "legal-lora-r16"));
    assert_non_null(strstr(svg, "nats/token"));
    assert_int_equal(path_points(svg, 1, "line", NULL), 5); /* run a's eval curve: steps 0, 25, .. 100 */
    free(svg);

    /* errors: exit 2 with a message naming the problem */
    assert_int_equal(mt_test_run_cli(&out, "runs --store '%s' show 999", path), 2);
    assert_non_null(strstr(out, "999"));
    free(out);
    assert_int_equal(mt_test_run_cli(&out, "runs --store '%s' plot %lld --metric loss", path, (long long)a), 2);
    assert_non_null(strstr(out, "--out"));
    free(out);
    assert_int_equal(mt_test_run_cli(&out, "runs --store '%s' plot %lld --metric nope --out x.svg", path, (long long)a), 2);
    assert_non_null(strstr(out, "nope"));
    free(out);
    assert_int_equal(mt_test_run_cli(&out, "runs --store '%s/none.db' list", dir), 2);
    assert_non_null(strstr(out, "none.db"));
    free(out);
    assert_int_equal(mt_test_run_cli(&out, "runs --store '%s' frobnicate", path), 2);
    free(out);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrate_and_reopen),
        cmocka_unit_test(test_newer_schema_refused),
        cmocka_unit_test(test_foreign_database_refused),
        cmocka_unit_test(test_run_roundtrip),
        cmocka_unit_test(test_metrics_in_step_order),
        cmocka_unit_test(test_events_roundtrip),
        cmocka_unit_test(test_datasets_and_adapters),
        cmocka_unit_test(test_pairs_dedup),
        cmocka_unit_test(test_config_diff),
        cmocka_unit_test(test_reader_during_writes),
        cmocka_unit_test(test_interrupted_run),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_plot_svg),
        cmocka_unit_test(test_plot_ticks),
        cmocka_unit_test(test_cli_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
