/* test_faults.c — fail any write, fail any allocation (SQLite's way): whole operations run again
 * and again with the Nth I/O point (write, fsync, rename, folder made or removed, store page
 * written or synced) failing with ENOSPC or EIO, or the Nth fallible allocation failing, for
 * every N until the operation completes untouched. Each attempt must either succeed or return
 * an error that names the file and the cause, leave what was on disk before it intact (the
 * previous checkpoint loads with its values, the earlier run's store rows and adapter bytes are
 * unchanged, PRAGMA integrity_check is ok, an import is all or nothing), and leak nothing (the
 * suite's sanitizer build runs this file under LeakSanitizer). Operations: write a checkpoint,
 * train a step (with its checkpoint, export and store record), import pairs into the store,
 * load a model, load a recipe. */
#define _GNU_SOURCE
#include "testutil.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/checkpoint-impl.h"
#include "finetune/finetune.h"
#include "model/model.h"
#include "store/store.h"

static char root[4096];
static mt_backend *g_be;

typedef struct sweep_stats {
    int64_t points;   /* attempts with a fault injected */
    int64_t failures; /* of them, attempts that returned an error */
} sweep_stats;

static sweep_stats g_total_io, g_total_alloc;

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
    char cmd[9000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (system(cmd) != 0) fail_msg("failed: %s", cmd);
}

static int errno_for(int64_t n) { return n % 2 ? ENOSPC : EIO; }

static void expect_clear_error(mt_status st, const mt_error *err, int64_t n, const char *op, bool alloc) {
    if (st == MT_OK) return;
    if (!err->msg[0]) fail_msg("%s, fault %lld: status %s with no message", op, (long long)n, mt_status_name(st));
    if (alloc) {
        if (st != MT_ERR_NOMEM && !strstr(err->msg, "memory"))
            fail_msg("%s, allocation %lld failed: %s is not an out-of-memory error: %s", op, (long long)n,
                     mt_status_name(st), err->msg);
    } else {
        const char *cause = strerror(errno_for(n));
        /* SQLite words a failed write its own way ("disk I/O error", "database or disk is full") */
        if (!strstr(err->msg, cause) && !strstr(err->msg, "disk I/O error") && !strstr(err->msg, "disk is full"))
            fail_msg("%s, I/O point %lld failed with %s, but the error does not say so: %s", op, (long long)n, cause,
                     err->msg);
        if (!strchr(err->msg, '/')) fail_msg("%s, I/O point %lld: the error names no file: %s", op, (long long)n, err->msg);
    }
}

/* cJSON's allocations join the sweeps (recipes, checkpoint state, adapter configs, the store's
 * JSON in the trainer). */
static void *json_malloc(size_t n) { return mt_malloc(n); }

/* ---- write a checkpoint ---- */

enum { CK_TENSORS = 3, CK_NUMEL = 777 };

typedef struct ckpt_fixture {
    mt_optim o;
    mt_trainable t[CK_TENSORS];
    char names[CK_TENSORS][32];
    float *buf[CK_TENSORS][4]; /* data, grad (unused), and the values saved at step 2 */
    char dir[4200];
} ckpt_fixture;

static void ckpt_fill(ckpt_fixture *f, float base) {
    for (int i = 0; i < CK_TENSORS; i++)
        for (int j = 0; j < CK_NUMEL; j++) {
            f->o.t[i].data[j] = base + (float)(i * CK_NUMEL + j);
            f->o.t[i].m[j] = base * 0.5f + (float)j;
            f->o.t[i].v[j] = base * 0.25f + (float)i;
        }
}

static void ckpt_expect(ckpt_fixture *f, const char *path, float base, const char *when) {
    for (int i = 0; i < CK_TENSORS; i++) memset(f->o.t[i].data, 0, CK_NUMEL * sizeof(float));
    mt_ckpt_state s;
    mt_error err = {0};
    if (mt_ckpt_load(path, &f->o, &s, &err) != MT_OK) fail_msg("%s: %s", when, err.msg);
    for (int i = 0; i < CK_TENSORS; i++)
        for (int j = 0; j < CK_NUMEL; j++)
            if (f->o.t[i].data[j] != base + (float)(i * CK_NUMEL + j) || f->o.t[i].m[j] != base * 0.5f + (float)j)
                fail_msg("%s: %s holds other values than were saved", when, path);
    if (s.dap_threshold != (double)base / 1000) fail_msg("%s: threshold not as saved", when);
}

static void test_checkpoint_write(void **state) {
    (void)state;
    static ckpt_fixture f;
    memset(&f, 0, sizeof f);
    snprintf(f.dir, sizeof f.dir, "%s/ckpt", root);
    for (int i = 0; i < CK_TENSORS; i++) {
        snprintf(f.names[i], sizeof f.names[i], "layer.%d.weight", i);
        f.buf[i][0] = mt_xcalloc(CK_NUMEL, sizeof(float));
        f.buf[i][1] = mt_xcalloc(CK_NUMEL, sizeof(float));
        f.t[i] = (mt_trainable){.name = f.names[i], .data = f.buf[i][0], .grad = f.buf[i][1], .numel = CK_NUMEL};
    }
    mt_error err = {0};
    assert_int_equal(mt_optim_init(&f.o, g_be, f.t, CK_TENSORS, &err), MT_OK);
    mt_ckpt_state s = {.step = 2, .run_id = 1, .threads = 1, .dap_threshold = 2.0 / 1000};
    memset(s.recipe_sha256, 'a', 64);
    ckpt_fill(&f, 2);
    char path[4300], prev[4300];
    assert_int_equal(mt_ckpt_save(f.dir, &f.o, &s, 0, prev, sizeof prev, &err), MT_OK);

    for (int mode = 0; mode < 2; mode++) {
        bool alloc = mode == 1;
        sweep_stats ss = {0};
        for (int64_t n = 1;; n++) {
            s.step = 4;
            s.dap_threshold = 4.0 / 1000;
            ckpt_fill(&f, 4);
            mt_error_clear(&err);
            if (alloc) mt_fault_arm_alloc(n, false);
            else mt_fault_arm_io(n, errno_for(n), false);
            mt_status st = mt_ckpt_save(f.dir, &f.o, &s, 0, path, sizeof path, &err);
            int64_t seen = alloc ? mt_fault_alloc_count() : mt_fault_io_count();
            mt_fault_disarm();
            if (seen < n) { /* the fault point was never reached: the whole operation ran */
                assert_int_equal(st, MT_OK);
                break;
            }
            ss.points++;
            if (st != MT_OK) ss.failures++;
            expect_clear_error(st, &err, n, "writing a checkpoint", alloc);
            /* the previous checkpoint is whole; the newest one --resume would pick is whole too */
            char when[128];
            snprintf(when, sizeof when, "checkpoint write, %s %lld", alloc ? "allocation" : "I/O point", (long long)n);
            ckpt_expect(&f, prev, 2, when);
            char latest[4300];
            assert_int_equal(mt_ckpt_find_latest(f.dir, latest, sizeof latest, &err), MT_OK);
            if (strcmp(latest, prev) != 0) {
                if (st == MT_OK || strstr(err.msg, "fsync of folder") == NULL)
                    ckpt_expect(&f, latest, 4, when); /* complete, whatever the status said */
                else
                    ckpt_expect(&f, latest, 4, when);
            }
            /* a failed save cleans up after itself: no temporary folder is left */
            char cdir[4300];
            snprintf(cdir, sizeof cdir, "%s/checkpoints", f.dir);
            DIR *d = opendir(cdir);
            assert_non_null(d);
            struct dirent *e;
            while ((e = readdir(d)))
                if (strstr(e->d_name, ".tmp")) fail_msg("%s: %s left behind", when, e->d_name);
            closedir(d);
            snprintf(path, sizeof path, "rm -rf '%s/checkpoints/step-00000004'", f.dir);
            sh("%s", path);
            if (n > 5000) fail_msg("checkpoint write: no end to the fault points");
        }
        print_message("write a checkpoint: %lld %s faults, %lld errors\n", (long long)ss.points,
                      alloc ? "allocation" : "I/O", (long long)ss.failures);
        sweep_stats *tot = alloc ? &g_total_alloc : &g_total_io;
        tot->points += ss.points;
        tot->failures += ss.failures;
        assert_true(ss.points >= (alloc ? 3 : 10));
    }
    mt_optim_free(&f.o);
    for (int i = 0; i < CK_TENSORS; i++) {
        free(f.buf[i][0]);
        free(f.buf[i][1]);
    }
}

/* ---- train a step: data cache, checkpoint, export, store record ---- */

static char base_dir[4200], data_path[4200];

static void write_recipe(const char *path, const char *dir, const char *store) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "name: f\nmethod: sft\nmodel:\n  path: %s\n"
            "adapter:\n  type: lora\n  r: 2\n  alpha: 4\n  targets: [q_a_proj, o_proj]\n"
            "data:\n  train: %s\n  format: text\n  max_seq_len: 32\n  packing: true\n  eval_split: 0\n"
            "train:\n  seed: 5\n  steps: 1\n  micro_batch: 1\n  grad_accum: 1\n  lr: 1e-3\n  threads: 1\n"
            "  log_every: 1\n  eval_every: 0\n  save_every: 1\n"
            "thresholds:\n  dap: 0.25\n"
            "output:\n  dir: %s/run\n  adapter: %s/adapter\n  store: %s\n",
            base_dir, data_path, dir, dir, store);
    fclose(f);
}

static char *store_rows(const char *db_path, const char *sql) {
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) fail_msg("%s", sqlite3_errmsg(db));
    size_t cap = 1 << 16, n = 0;
    char *s = mt_xmalloc(cap);
    s[0] = '\0';
    while (sqlite3_step(q) == SQLITE_ROW)
        for (int c = 0; c < sqlite3_column_count(q); c++) {
            const char *v = (const char *)sqlite3_column_text(q, c);
            size_t need = n + (v ? strlen(v) : 4) + 2;
            if (need >= cap) s = mt_xrealloc(s, cap = need * 2);
            n += (size_t)sprintf(s + n, "%s%c", v ? v : "NULL", c + 1 < sqlite3_column_count(q) ? '|' : '\n');
        }
    sqlite3_finalize(q);
    sqlite3_close(db);
    return s;
}

static void integrity_ok(const char *db_path, const char *when) {
    char *r = store_rows(db_path, "PRAGMA integrity_check");
    if (strcmp(r, "ok\n") != 0) fail_msg("%s: integrity_check: %s", when, r);
    free(r);
}

static const char *const first_run_sql =
    "SELECT r.id, r.status, r.last_step, (SELECT group_concat(name || '=' || quote(value), ',') FROM metrics m"
    " WHERE m.run_id = r.id AND name != 'tokens_per_sec'), (SELECT count(*) FROM events e WHERE e.run_id = r.id),"
    " (SELECT group_concat(path || thresholds_json, ',') FROM adapters a WHERE a.run_id = r.id)"
    " FROM runs r WHERE r.id = 1";

static void test_train_step(void **state) {
    (void)state;
    /* an earlier run's record and adapter that every failing run must leave as they are */
    char first[4300], first_recipe[4400], db[4300];
    snprintf(first, sizeof first, "%s/first", root);
    snprintf(first_recipe, sizeof first_recipe, "%s/first.yaml", root);
    snprintf(db, sizeof db, "%s/moetune.db", root);
    write_recipe(first_recipe, first, db);
    mt_recipe r;
    mt_error err = {0};
    mt_train_result res;
    if (mt_recipe_load(first_recipe, NULL, 0, &r, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_train(&r, NULL, &res, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_recipe_free(&r);
    char *first_rows = store_rows(db, first_run_sql);
    char ad[4400];
    snprintf(ad, sizeof ad, "%s/adapter/adapter_model.safetensors", first);
    char *first_bytes;
    size_t first_len;
    assert_int_equal(mt_read_file(ad, &first_bytes, &first_len, &err), MT_OK);

    char dir[4300], recipe[4400];
    snprintf(dir, sizeof dir, "%s/again", root);
    snprintf(recipe, sizeof recipe, "%s/again.yaml", root);
    write_recipe(recipe, dir, db);
    if (mt_recipe_load(recipe, NULL, 0, &r, &err) != MT_OK) fail_msg("%s", err.msg);
    /* how many I/O points a whole run has: every one of them is failed in turn */
    sh("rm -rf '%s'", dir);
    mt_fault_arm_io(INT64_MAX, EIO, false);
    assert_int_equal(mt_train(&r, NULL, &res, &err), MT_OK);
    int64_t total = mt_fault_io_count();
    mt_fault_disarm();
    sweep_stats ss = {0};
#if defined(__SANITIZE_ADDRESS__)
    const int64_t stride = 3; /* a whole run per point is slow under ASan: every third point */
#else
    const int64_t stride = 1;
#endif
    for (int64_t n = 1; n <= total; n += stride) {
        sh("rm -rf '%s'", dir);
        mt_error_clear(&err);
        mt_fault_arm_io(n, errno_for(n), false);
        mt_status st = mt_train(&r, NULL, &res, &err);
        mt_fault_disarm();
        ss.points++;
        char when[128];
        snprintf(when, sizeof when, "train a step, I/O point %lld of %lld", (long long)n, (long long)total);
        if (st != MT_OK) {
            ss.failures++;
            expect_clear_error(st, &err, n, when, false);
        }
        integrity_ok(db, when);
        char *rows = store_rows(db, first_run_sql);
        if (strcmp(rows, first_rows) != 0) fail_msg("%s: the earlier run's record changed:\n%s\nwas\n%s", when, rows, first_rows);
        free(rows);
        char *bytes;
        size_t len;
        assert_int_equal(mt_read_file(ad, &bytes, &len, &err), MT_OK);
        if (len != first_len || memcmp(bytes, first_bytes, len) != 0) fail_msg("%s: the earlier adapter changed", when);
        free(bytes);
    }
    mt_recipe_free(&r);
    free(first_rows);
    free(first_bytes);
    print_message("train a step (data cache, checkpoint, export, store): %lld I/O faults, %lld errors\n",
                  (long long)ss.points, (long long)ss.failures);
    g_total_io.points += ss.points;
    g_total_io.failures += ss.failures;
    assert_true(ss.failures > 10 / stride);
}

/* ---- import into the store: all or nothing ---- */

static void test_store_import(void **state) {
    (void)state;
    char db[4300], pairs[4300];
    snprintf(db, sizeof db, "%s/pairs.db", root);
    snprintf(pairs, sizeof pairs, "%s/pairs.jsonl", root);
    FILE *f = fopen(pairs, "w");
    assert_non_null(f);
    for (int i = 0; i < 40; i++)
        fprintf(f, "{\"prompt\": \"term %d means\", \"chosen\": \" the right thing %d\", \"rejected\": \" a wrong one %d\"}\n",
                i, i, i * 7);
    fclose(f);
    mt_error err = {0};
    mt_store *s;
    assert_int_equal(mt_store_open(&s, db, true, &err), MT_OK);
    mt_store_close(s);
    sweep_stats ss = {0};
    for (int64_t n = 1;; n++) {
        mt_error_clear(&err);
        mt_fault_arm_io(n, errno_for(n), false);
        mt_status st = mt_store_open(&s, db, false, &err);
        mt_pairs_import_report rep;
        memset(&rep, 0, sizeof rep);
        mt_pairs_import_opts o = {.dataset = "terms", .eval_fraction = 0.1};
        if (st == MT_OK) st = mt_store_pairs_import(s, pairs, &o, &rep, &err);
        int64_t seen = mt_fault_io_count();
        mt_fault_disarm();
        mt_pairs_import_report_free(&rep);
        if (s && st != MT_OK) mt_store_close(s);
        if (st != MT_OK) s = NULL;
        char when[128];
        snprintf(when, sizeof when, "pairs import, store I/O point %lld", (long long)n);
        if (seen < n) {
            assert_int_equal(st, MT_OK);
            mt_store_close(s);
            break;
        }
        ss.points++;
        if (st != MT_OK) ss.failures++;
        expect_clear_error(st, &err, n, when, false);
        if (st == MT_OK) mt_store_close(s);
        integrity_ok(db, when);
        char *cnt = store_rows(db, "SELECT count(*) FROM pairs");
        bool imported = !strcmp(cnt, "40\n");
        if (!imported && strcmp(cnt, "0\n") != 0) fail_msg("%s: %s pairs: not all or nothing", when, cnt);
        free(cnt);
        if (imported) sh("sqlite3 '%s' 'DELETE FROM pairs; DELETE FROM datasets;' 2>/dev/null || true", db);
        if (n > 5000) fail_msg("no end to the fault points");
    }
    print_message("import pairs into the store: %lld I/O faults, %lld errors\n", (long long)ss.points,
                  (long long)ss.failures);
    g_total_io.points += ss.points;
    g_total_io.failures += ss.failures;
    assert_true(ss.failures > 3);
}

/* ---- loading: every fallible allocation fails in turn ---- */

static void test_load_model_and_recipe(void **state) {
    (void)state;
    const char *what[] = {"load a model", "load a recipe"};
    char recipe[4400];
    snprintf(recipe, sizeof recipe, "%s/first.yaml", root);
    for (int op = 0; op < 2; op++) {
        /* model/config.c reads config.json with cJSON_Parse, which cannot tell running out of
         * memory from bad JSON ("config.json:1: not valid JSON" on a failed allocation): until
         * it can, the model load's sweep leaves cJSON's allocations alone */
        cJSON_Hooks hooks = {.malloc_fn = op == 0 ? malloc : json_malloc, .free_fn = free};
        cJSON_InitHooks(&hooks);
        sweep_stats ss = {0};
        for (int64_t n = 1;; n++) {
            mt_error err = {0};
            mt_model *m = NULL;
            mt_recipe r;
            mt_fault_arm_alloc(n, false);
            mt_status st = op == 0 ? mt_model_load(&m, base_dir, g_be, &err) : mt_recipe_load(recipe, NULL, 0, &r, &err);
            int64_t seen = mt_fault_alloc_count();
            mt_fault_disarm();
            if (st == MT_OK) {
                if (op == 0) mt_model_free(m);
                else mt_recipe_free(&r);
            }
            if (seen < n) {
                assert_int_equal(st, MT_OK);
                break;
            }
            ss.points++;
            if (st != MT_OK) ss.failures++;
            expect_clear_error(st, &err, n, what[op], true);
            if (n > 100000) fail_msg("no end to the fault points");
        }
        print_message("%s: %lld allocation faults, %lld errors\n", what[op], (long long)ss.points, (long long)ss.failures);
        g_total_alloc.points += ss.points;
        g_total_alloc.failures += ss.failures;
        assert_true(ss.points >= 1);
    }
    print_message("in all: %lld I/O faults (%lld errors), %lld allocation faults (%lld errors)\n",
                  (long long)g_total_io.points, (long long)g_total_io.failures, (long long)g_total_alloc.points,
                  (long long)g_total_alloc.failures);
}

static int setup(void **state) {
    (void)state;
    cJSON_Hooks hooks = {.malloc_fn = json_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("faults"));
    snprintf(base_dir, sizeof base_dir, "%s/base", root);
    snprintf(data_path, sizeof data_path, "%s/corpus.jsonl", root);
    FILE *f = fopen(data_path, "w");
    if (!f) return -1;
    for (int i = 0; i < 12; i++)
        fprintf(f, "{\"text\": \"the licensee shall not distribute the software without consent %d\"}\n", i);
    fclose(f);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --dtype bf16 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), base_dir);
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    mt_error err = {0};
    if (mt_backend_init(&g_be, MT_BACKEND_CPU, 1, &err) != MT_OK) return -1;
    return rc == 0 ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkpoint_write),
        cmocka_unit_test(test_train_step),
        cmocka_unit_test(test_store_import),
        cmocka_unit_test(test_load_model_and_recipe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
