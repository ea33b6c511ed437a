/* test_crash.c — kill anywhere: a reference LoRA run (2 threads, eval on, checkpoints every 2
 * steps, a domain threshold that is not clamped) and then, for many kill points, the same run
 * killed with SIGKILL and resumed with --resume until it completes. Kill points are the Nth I/O
 * point of the trainer (every write, fsync, rename, folder made or removed, store page written
 * or synced — MOETUNE_FAULT=kill:N, common/fault.c), which lands kills inside a checkpoint
 * write, the export, the data cache and the store's WAL; and random times (during steps and
 * eval). Some resumed runs are killed again. After every kill: every checkpoint folder --resume
 * could pick is complete, and the store passes PRAGMA integrity_check. At the end: the loss
 * series, every metric and event, the run, dataset and adapter rows of the store, and the
 * adapter's bytes (safetensors header metadata, adapter_config.json, moetune.json) equal the
 * uninterrupted run's.
 *
 * MOETUNE_CRASH_POINTS=N runs N points instead of the suite's few dozen
 * (scripts/crash-soak.sh); MOETUNE_CRASH_SEED changes which. */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "model/model.h"

static char root[4096], work[4200], ref[4200], trace_path[4200];

static const char *const words[] = {
    "the",     "licensee", "shall",    "not",      "distribute", "software", "without", "written",
    "consent", "of",       "licensor", "warranty", "is",         "hereby",   "disclaimed", "any",
    "party",   "may",      "terminate", "this",    "agreement",  "upon",     "notice",  "copyright"};

static void write_corpus(const char *path, int n_docs, uint64_t seed) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    mt_rng rng;
    mt_rng_seed(&rng, seed);
    size_t nw = sizeof words / sizeof words[0];
    for (int d = 0; d < n_docs; d++) {
        fputs("{\"text\": \"", f);
        int clauses = 2 + (int)mt_rng_below(&rng, 3);
        for (int c = 0; c < clauses; c++) {
            size_t start = (size_t)mt_rng_below(&rng, 3) * 8;
            for (size_t w = 0; w < 8; w++) fprintf(f, "%s%s", w ? " " : "", words[(start + w) % nw]);
            fputs(". ", f);
        }
        fputs("\"}\n", f);
    }
    fclose(f);
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
    char cmd[9000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (system(cmd) != 0) fail_msg("failed: %s", cmd);
}

/* The recipe lives outside the work folder, so every attempt trains from the same text. */
static void write_recipe(const char *path, const char *base, const char *data) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "name: crash\nmethod: sft\nmodel:\n  path: %s\n"
            "adapter:\n  type: lora\n  r: 4\n  alpha: 8\n  dropout: 0.1\n  targets: all-linear\n"
            "data:\n  train: %s\n  format: text\n  max_seq_len: 48\n  packing: true\n  eval_split: 0.1\n"
            "train:\n  seed: 5\n  steps: 8\n  micro_batch: 2\n  grad_accum: 2\n  lr: 3e-3\n  warmup_steps: 2\n"
            "  threads: 2\n  log_every: 1\n  eval_every: 3\n  save_every: 2\n  save_total_limit: 2\n"
            /* max_entropy above the data's entropy: the threshold is not clamped to 0, so a resume
             * that lost or recomputed it differently shows in the adapter's metadata */
            "thresholds:\n  base: 0.5\n  max_entropy: 40\n"
            "output:\n  dir: %s/run\n  adapter: %s/adapter\n  store: %s/moetune.db\n",
            base, data, work, work, work);
    fclose(f);
}

static char recipe[4300];

/* Runs `moetune train` (with --resume when asked) under MOETUNE_FAULT=kill:N (0: no kill);
 * when kill_after_ms > 0, the parent kills it that long after it starts. Returns the exit
 * code, or 128 + signal. */
static int train(bool resume, int64_t kill_at, int kill_after_ms, const char *trace) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char log[4400], fault[64];
        snprintf(log, sizeof log, "%s.log", work);
        if (!freopen(log, "a", stderr) || !freopen("/dev/null", "w", stdout)) _exit(127);
        if (kill_at > 0) {
            snprintf(fault, sizeof fault, "kill:%lld", (long long)kill_at);
            setenv("MOETUNE_FAULT", fault, 1);
        } else {
            unsetenv("MOETUNE_FAULT");
        }
        if (trace) setenv("MOETUNE_FAULT_TRACE", trace, 1);
        else unsetenv("MOETUNE_FAULT_TRACE");
        if (resume)
            execl(MT_MOETUNE_BIN, "moetune", "train", recipe, "--resume", (char *)NULL);
        else
            execl(MT_MOETUNE_BIN, "moetune", "train", recipe, (char *)NULL);
        _exit(127);
    }
    if (kill_after_ms > 0) {
        /* the clock starts when the first checkpoint is in place */
        char first[4400];
        snprintf(first, sizeof first, "%s/run/checkpoints/step-00000002", work);
        for (int i = 0; i < 60000 && !mt_path_exists(first); i++) usleep(1000);
        struct timespec ts = {kill_after_ms / 1000, (long)(kill_after_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- what must hold after every kill ---- */

static int64_t query_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
    sqlite3_finalize(q);
    return v;
}

static void check_store_intact(const char *dir, const char *when) {
    char db[4400];
    snprintf(db, sizeof db, "%s/moetune.db", dir);
    if (!mt_path_exists(db)) return; /* killed before the store existed */
    sqlite3 *raw;
    assert_int_equal(sqlite3_open_v2(db, &raw, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(raw, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    const char *r = (const char *)sqlite3_column_text(q, 0);
    if (strcmp(r, "ok") != 0) fail_msg("%s: integrity_check says %s", when, r);
    sqlite3_finalize(q);
    sqlite3_close(raw);
}

/* Every folder --resume would consider (step-NNNNNNNN) must be complete and readable. */
static int check_checkpoints_complete(const char *dir, const char *when) {
    char cdir[4400];
    snprintf(cdir, sizeof cdir, "%s/run/checkpoints", dir);
    DIR *d = opendir(cdir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l != 13 || strncmp(e->d_name, "step-", 5) != 0 || strspn(e->d_name + 5, "0123456789") != 8) continue;
        char p[4700];
        snprintf(p, sizeof p, "%s/%s/trainer_state.json", cdir, e->d_name);
        char *text = NULL;
        mt_error err = {0};
        if (mt_read_file(p, &text, NULL, &err) != MT_OK || !strstr(text, "\"recipe_sha256\"") ||
            !strstr(text, "\"dap_threshold\""))
            fail_msg("%s: %s is a checkpoint folder --resume would pick, but its state is missing or torn", when, p);
        free(text);
        snprintf(p, sizeof p, "%s/%s/state.safetensors", cdir, e->d_name);
        mt_safetensors *st = NULL;
        if (mt_safetensors_open(&st, p, &err) != MT_OK)
            fail_msg("%s: %s is a checkpoint folder --resume would pick, but: %s", when, e->d_name, err.msg);
        if (mt_safetensors_count(st) == 0 || mt_safetensors_count(st) % 3 != 0)
            fail_msg("%s: %s holds %zu tensors", when, p, mt_safetensors_count(st));
        mt_safetensors_close(st);
        n++;
    }
    closedir(d);
    return n;
}

/* ---- comparing a finished run with the reference ---- */

/* One query's rows as text ("|" between columns, "\n" between rows). */
static char *rows_text(sqlite3 *db, const char *sql) {
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    size_t cap = 4096, n = 0;
    char *s = mt_xmalloc(cap);
    s[0] = '\0';
    while (sqlite3_step(q) == SQLITE_ROW) {
        for (int c = 0; c < sqlite3_column_count(q); c++) {
            const char *v = (const char *)sqlite3_column_text(q, c);
            size_t need = n + (v ? strlen(v) : 4) + 4;
            if (need > cap) {
                cap = need * 2;
                s = mt_xrealloc(s, cap);
            }
            n += (size_t)sprintf(s + n, "%s%s", c ? "|" : "", v ? v : "NULL");
        }
        s[n++] = '\n';
        s[n] = '\0';
    }
    sqlite3_finalize(q);
    return s;
}

/* What must not depend on whether the run was interrupted. Times, pids and the measured
 * throughput do. Events are the record of what happened, so the interrupted run's hold more:
 * 'resume' events, and a checkpoint or export repeated by a resumed attempt logs its event
 * again (same step, same detail); they are compared as the distinct events in order of first
 * occurrence. A checkpoint completed by an attempt killed before it could log the event has
 * no event (checked below: every checkpoint event is one the reference has). */
static const char *const store_queries[] = {
    "SELECT id, name, method, status, status_message, recipe_text, recipe_sha256, base_path, base_hash, git_revision,"
    " moetune_version, seed, config_json, last_step, host FROM runs ORDER BY id",
    "SELECT run_id, name, step, quote(value) FROM metrics WHERE name != 'tokens_per_sec' ORDER BY run_id, step, name",
    "SELECT run_id, step, kind, detail_json FROM events WHERE kind NOT IN ('resume', 'checkpoint')"
    " GROUP BY run_id, step, kind, detail_json ORDER BY min(id)",
    "SELECT id, path, sha256, format, n_docs, n_tokens FROM datasets ORDER BY id",
    "SELECT run_id, dataset_id, split FROM run_datasets ORDER BY run_id, dataset_id, split",
    "SELECT id, run_id, path, base_hash, rank, alpha, targets_json, thresholds_json, eval_json FROM adapters ORDER BY id",
};

static void compare_stores(const char *a_dir, const char *b_dir, const char *when) {
    char pa[4400], pb[4400];
    snprintf(pa, sizeof pa, "%s/moetune.db", a_dir);
    snprintf(pb, sizeof pb, "%s/moetune.db", b_dir);
    sqlite3 *a, *b;
    assert_int_equal(sqlite3_open_v2(pa, &a, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_open_v2(pb, &b, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    for (size_t i = 0; i < sizeof store_queries / sizeof store_queries[0]; i++) {
        char *x = rows_text(a, store_queries[i]), *y = rows_text(b, store_queries[i]);
        if (strcmp(x, y) != 0) {
            /* the first row that differs, whole */
            size_t k = 0, line = 0;
            while (x[k] && x[k] == y[k]) {
                if (x[k] == '\n') line = k + 1;
                k++;
            }
            fail_msg("%s: the store differs from the uninterrupted run's in\n  %s\nfirst differing row:\n"
                     "uninterrupted: %.*s\ninterrupted:   %.*s",
                     when, store_queries[i], (int)strcspn(x + line, "\n"), x + line, (int)strcspn(y + line, "\n"),
                     y + line);
        }
        free(x);
        free(y);
    }
    /* every checkpoint event names a checkpoint the reference also made */
    char *ca = rows_text(a, "SELECT step, detail_json FROM events WHERE kind = 'checkpoint' ORDER BY id");
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(b, "SELECT DISTINCT step, detail_json FROM events WHERE kind = 'checkpoint'", -1,
                                        &q, NULL),
                     SQLITE_OK);
    while (sqlite3_step(q) == SQLITE_ROW) {
        char row[4600];
        snprintf(row, sizeof row, "%s|%s\n", sqlite3_column_text(q, 0), sqlite3_column_text(q, 1));
        if (!strstr(ca, row)) fail_msg("%s: checkpoint event %s not in the uninterrupted run", when, row);
    }
    sqlite3_finalize(q);
    free(ca);
    if (query_int(b, "SELECT count(*) FROM runs WHERE status = 'completed'") != 1)
        fail_msg("%s: the store does not hold one completed run", when);
    sqlite3_close(a);
    sqlite3_close(b);
}

static void compare_adapters(const char *a_dir, const char *b_dir, const char *when) {
    static const char *const files[] = {"adapter_model.safetensors", "adapter_config.json", "moetune.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char pa[4400], pb[4400];
        snprintf(pa, sizeof pa, "%s/adapter/%s", a_dir, files[i]);
        snprintf(pb, sizeof pb, "%s/adapter/%s", b_dir, files[i]);
        char *x, *y;
        size_t nx, ny;
        mt_error err = {0};
        if (mt_read_file(pa, &x, &nx, &err) != MT_OK) fail_msg("%s", err.msg);
        if (mt_read_file(pb, &y, &ny, &err) != MT_OK) fail_msg("%s: %s", when, err.msg);
        if (nx != ny || memcmp(x, y, nx) != 0) {
            size_t k = 0;
            while (k < nx && k < ny && x[k] == y[k]) k++;
            fail_msg("%s: adapter/%s differs from the uninterrupted run's at byte %zu of %zu/%zu%s%.300s%s%.300s", when,
                     files[i], k, nx, ny, i ? "\nuninterrupted: " : "", i ? x : "", i ? "\ninterrupted:   " : "",
                     i ? y : "");
        }
        free(x);
        free(y);
    }
}

/* ---- the harness ---- */

typedef struct trace_info {
    int64_t n;             /* I/O points of the whole run */
    int64_t first_ckpt;    /* the point after which the first checkpoint is complete */
    int64_t export_from;   /* first point of the export (the adapter folder) */
    char phase[4096];      /* [n] where each point is: c checkpoint, e export, s store, d data cache */
} trace_info;

enum { N_PHASES = 4 };
static const char phase_letters[N_PHASES + 1] = "cesd";
static const char *const phase_names[N_PHASES] = {"checkpoint writes", "the export", "store writes", "the data cache"};

static trace_info read_trace(const char *path) {
    trace_info t = {0};
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        long long n;
        char kind[32], what[8000] = "";
        if (sscanf(line, "%lld %31s %7999s", &n, kind, what) < 2) continue;
        t.n = n;
        if (n > 0 && n < (long long)sizeof t.phase)
            t.phase[n] = strstr(what, "/checkpoints") ? 'c' : strstr(what, "/adapter") ? 'e' : !strcmp(kind, "db") ? 's' : 'd';
        /* the last rename of the first checkpoint (its folder into place) completes it; not
         * relying on which renames there are keeps the harness honest about how it is written */
        if (!strcmp(kind, "rename") && strstr(what, "/checkpoints/step-00000002") && !strstr(what, ".tmp-rm"))
            t.first_ckpt = n;
        if (!t.export_from && strstr(what, "/adapter/")) t.export_from = n;
    }
    fclose(f);
    return t;
}

typedef struct tally {
    int points, io_points, timed_points, second_kills, resumes, not_killed;
    int by_phase[N_PHASES]; /* I/O kill points by where they fell (phase_letters) */
} tally;

static void one_point(int64_t kill_at, int kill_ms, int64_t second_kill, const trace_info *ti, tally *t, int idx) {
    char when[256];
    if (kill_at)
        snprintf(when, sizeof when, "point %d (I/O point %lld of %lld%s)", idx, (long long)kill_at, (long long)ti->n,
                 second_kill ? ", resumed run killed again" : "");
    else
        snprintf(when, sizeof when, "point %d (killed %d ms after the start%s)", idx, kill_ms,
                 second_kill ? ", resumed run killed again" : "");
    sh("rm -rf '%s' '%s.log'", work, work);
    int rc = train(false, kill_at, kill_ms, NULL);
    if (rc == 0) {
        t->not_killed++; /* the timed kill came after the end: nothing to resume */
    } else {
        if (rc != 128 + SIGKILL) fail_msg("%s: the killed run exited %d (see %s.log)", when, rc, work);
        check_store_intact(work, when);
        int ckpts = check_checkpoints_complete(work, when);
        assert_true(ckpts > 0); /* kill points are chosen after the first checkpoint */
        if (second_kill) {
            rc = train(true, second_kill, 0, NULL);
            if (rc == 128 + SIGKILL) {
                t->second_kills++;
                check_store_intact(work, when);
                check_checkpoints_complete(work, when);
            } else if (rc != 0) {
                fail_msg("%s: the first resume exited %d (see %s.log)", when, rc, work);
            }
            t->resumes++;
        }
        if (rc != 0) {
            rc = train(true, 0, 0, NULL);
            t->resumes++;
            if (rc != 0) fail_msg("%s: --resume exited %d (see %s.log)", when, rc, work);
        }
    }
    check_store_intact(work, when);
    compare_adapters(ref, work, when);
    compare_stores(ref, work, when);
    t->points++;
}

static void test_kill_anywhere(void **state) {
    (void)state;
    const char *env = getenv("MOETUNE_CRASH_POINTS");
#if defined(__SANITIZE_ADDRESS__)
    const int default_points = 8; /* every attempt runs the sanitized binary: a few times slower */
#else
    const int default_points = 24;
#endif
    int n_points = env && atoi(env) > 0 ? atoi(env) : default_points;
    const char *seed_env = getenv("MOETUNE_CRASH_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : 20261202;

    /* the reference: uninterrupted, traced (which I/O points exist), then moved aside so every
     * attempt runs at the same paths (they are recorded in the store and the adapter) */
    sh("rm -rf '%s' '%s'", work, ref);
    double t0 = mt_now_seconds();
    assert_int_equal(train(false, 0, 0, trace_path), 0);
    double ref_secs = mt_now_seconds() - t0;
    trace_info ti = read_trace(trace_path);
    assert_true(ti.n > 50 && ti.first_ckpt > 0 && ti.export_from > ti.first_ckpt);
    sh("mv '%s' '%s'", work, ref);
    /* the threshold the resumes must restore is a measured one, strictly inside (0, base) */
    char meta_path[4400];
    snprintf(meta_path, sizeof meta_path, "%s/adapter/moetune.json", ref);
    size_t meta_len;
    char *meta = NULL;
    mt_error merr = {0};
    if (mt_read_file(meta_path, &meta, &meta_len, &merr) != MT_OK) fail_msg("%s", merr.msg);
    const char *thr = strstr(meta, "\"dap_threshold\":");
    assert_non_null(thr);
    double dap = strtod(thr + strlen("\"dap_threshold\":"), NULL);
    if (!(dap > 0.01 && dap < 0.49)) fail_msg("the reference's dap_threshold %g is clamped or nearly: %s", dap, meta);
    free(meta);

    mt_rng rng;
    mt_rng_seed(&rng, seed);
    tally t = {0};
    double t1 = mt_now_seconds();
    for (int i = 0; i < n_points; i++) {
        int64_t second = mt_rng_below(&rng, 5) == 0 ? 1 + (int64_t)mt_rng_below(&rng, (uint64_t)ti.n) : 0;
        if (i % 4 == 3) {
            /* a random moment after the first checkpoint: steps, eval, store writes in flight
             * (the reference's remaining time after its first checkpoint, measured) */
            int span = (int)(ref_secs * 1000 * (1.0 - (double)ti.first_ckpt / (double)ti.n));
            one_point(0, 1 + (int)mt_rng_below(&rng, (uint64_t)(span > 1 ? span : 1)), second, &ti, &t, i);
            t.timed_points++;
        } else {
            /* every I/O point after the first checkpoint is equally likely; the first few
             * points always include the export's */
            int64_t lo = ti.first_ckpt + 1, hi = ti.n;
            if (i < 3) lo = ti.export_from;
            int64_t at = lo + (int64_t)mt_rng_below(&rng, (uint64_t)(hi - lo + 1));
            one_point(at, 0, second, &ti, &t, i);
            t.io_points++;
            const char *ph = at < (int64_t)sizeof ti.phase ? strchr(phase_letters, ti.phase[at]) : NULL;
            if (ph && *ph) t.by_phase[ph - phase_letters]++;
        }
    }
    print_message("kill anywhere: %d kill points (%d at I/O points of %lld, %d at random times, %d of them after "
                  "the end), %d resumed runs killed again, %d resumes; reference run %.1f s, harness %.1f s\n",
                  t.points, t.io_points, (long long)ti.n, t.timed_points, t.not_killed, t.second_kills, t.resumes,
                  ref_secs, mt_now_seconds() - t1);
    for (int k = 0; k < N_PHASES; k++) print_message("  I/O kill points in %s: %d\n", phase_names[k], t.by_phase[k]);
}

/* Killed before its first checkpoint: nothing to resume, and --resume says so; the store is
 * intact and the run is recorded as not running. */
static void test_kill_before_first_checkpoint(void **state) {
    (void)state;
    sh("rm -rf '%s'", work);
    trace_info ti = read_trace(trace_path);
    /* the first store write after the setup's: the run record exists, no checkpoint yet */
    int64_t at = ti.first_ckpt - 3;
    assert_int_equal(train(false, at, 0, NULL), 128 + SIGKILL);
    check_store_intact(work, "before the first checkpoint");
    assert_int_equal(check_checkpoints_complete(work, "before the first checkpoint"), 0);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "train '%s' --resume", recipe);
    assert_int_not_equal(rc, 0);
    if (!strstr(out, "no checkpoint")) fail_msg("%s", out);
    free(out);
}

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("crash"));
    snprintf(work, sizeof work, "%s/work", root);
    snprintf(ref, sizeof ref, "%s/reference", root);
    snprintf(trace_path, sizeof trace_path, "%s/trace.txt", root);
    char base[4300], data[4300];
    snprintf(base, sizeof base, "%s/base", root);
    snprintf(data, sizeof data, "%s/corpus.jsonl", root);
    snprintf(recipe, sizeof recipe, "%s/recipe.yaml", root);
    write_corpus(data, 48, 11);
    write_recipe(recipe, base, data);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), base);
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    return rc == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_anywhere),
        cmocka_unit_test(test_kill_before_first_checkpoint),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
