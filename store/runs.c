/* runs.c — runs, their metrics and events: the writes a training loop makes every step (each
 * call one transaction) and the reads `moetune runs` makes, including the liveness check that
 * shows a "running" run whose process has died as interrupted. */
#define _GNU_SOURCE
#include "store-impl.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static const char *const run_status_names[MT_RUN_STATUS_COUNT] = {
    [MT_RUN_RUNNING] = "running",
    [MT_RUN_COMPLETED] = "completed",
    [MT_RUN_FAILED] = "failed",
    [MT_RUN_INTERRUPTED] = "interrupted",
};

const char *mt_run_status_name(mt_run_status s) {
    return (unsigned)s < MT_RUN_STATUS_COUNT ? run_status_names[s] : "unknown";
}

static mt_run_status parse_status(const char *name) {
    for (int i = 0; i < MT_RUN_STATUS_COUNT; i++)
        if (name && !strcmp(name, run_status_names[i])) return (mt_run_status)i;
    return MT_RUN_INTERRUPTED; /* the schema's CHECK makes this unreachable for our own rows */
}

/* ---- process liveness ---- */

/* The start time of a process (field 22 of /proc/PID/stat, clock ticks since boot) tells a
 * reused pid from the process that began the run. 0 when unknown (no /proc); *zombie says the
 * process has exited and waits to be reaped. */
static int64_t proc_start_time(int64_t pid, bool *zombie) {
    *zombie = false;
    char path[64];
    snprintf(path, sizeof path, "/proc/%lld/stat", (long long)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* the command name (field 2) may hold spaces and parentheses: fields resume after the last ')' */
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    p++;
    char state = 0;
    unsigned long long start = 0;
    int field = 2;
    char *save = NULL;
    for (char *tok = strtok_r(p, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        field++;
        if (field == 3) state = tok[0];
        if (field == 22) {
            start = strtoull(tok, NULL, 10);
            break;
        }
    }
    *zombie = state == 'Z' || state == 'X';
    return (int64_t)start;
}

/* True only when we can tell the process that began a run is gone: the run was begun on this
 * host and its pid is dead, a zombie, or now belongs to a process started at another time. */
static bool run_process_gone(const mt_store *s, const char *host, int64_t pid, int64_t pid_start) {
    if (!host || strcmp(host, s->host) || pid <= 0) return false;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return true;
    bool zombie;
    int64_t now_start = proc_start_time(pid, &zombie);
    if (zombie) return true;
    return pid_start > 0 && now_start > 0 && now_start != pid_start;
}

/* ---- runs ---- */

mt_status mt_store_run_begin(mt_store *s, const mt_store_run_info *info, int64_t *run_id, mt_error *err) {
    *run_id = 0;
    if (!info->name || !*info->name || !info->method || !*info->method)
        return mt_error_set(err, MT_ERR_INVALID, "%s: a run needs a name and a method", s->path);
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(s,
                                 "INSERT INTO runs (name, method, recipe_text, recipe_sha256, base_path, base_hash,"
                                 " git_revision, moetune_version, seed, config_json, host, pid, pid_start, started,"
                                 " updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)",
                                 &st, err);
    if (rs != MT_OK) return rs;
    bool zombie;
    int64_t pid = (int64_t)getpid();
    int64_t pid_start = proc_start_time(pid, &zombie);
    mt_st_bind_text(st, 1, info->name);
    mt_st_bind_text(st, 2, info->method);
    mt_st_bind_text(st, 3, info->recipe_text);
    mt_st_bind_text(st, 4, info->recipe_sha256);
    mt_st_bind_text(st, 5, info->base_path);
    mt_st_bind_text(st, 6, info->base_hash);
    mt_st_bind_text(st, 7, info->git_revision);
    mt_st_bind_text(st, 8, info->version ? info->version : MT_VERSION);
    /* SQLite integers are signed: the seed's 64 bits are kept as they are and read back unsigned */
    sqlite3_bind_int64(st, 9, (int64_t)info->seed);
    mt_st_bind_text(st, 10, info->config_json ? info->config_json : "{}");
    mt_st_bind_text(st, 11, s->host);
    sqlite3_bind_int64(st, 12, pid);
    mt_st_bind_count(st, 13, pid_start > 0 ? pid_start : -1);
    sqlite3_bind_double(st, 14, mt_st_now());
    char what[300];
    snprintf(what, sizeof what, "beginning run '%s'", info->name);
    rs = mt_st_step_done(s, st, what, err);
    sqlite3_finalize(st);
    if (rs == MT_OK) *run_id = sqlite3_last_insert_rowid(s->db);
    return rs;
}

mt_status mt_store_run_resume(mt_store *s, int64_t run_id, mt_error *err) {
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(s,
                                 "UPDATE runs SET status = 'running', status_message = NULL, ended = NULL, host = ?2,"
                                 " pid = ?3, pid_start = ?4, updated = ?5 WHERE id = ?1",
                                 &st, err);
    if (rs != MT_OK) return rs;
    bool zombie;
    int64_t pid = (int64_t)getpid();
    int64_t pid_start = proc_start_time(pid, &zombie);
    sqlite3_bind_int64(st, 1, run_id);
    mt_st_bind_text(st, 2, s->host);
    sqlite3_bind_int64(st, 3, pid);
    mt_st_bind_count(st, 4, pid_start > 0 ? pid_start : -1);
    sqlite3_bind_double(st, 5, mt_st_now());
    rs = mt_st_step_done(s, st, "resuming a run", err);
    sqlite3_finalize(st);
    if (rs == MT_OK && sqlite3_changes(s->db) == 0)
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no run with id %lld", s->path, (long long)run_id);
    return rs;
}

mt_status mt_store_run_set_status(mt_store *s, int64_t run_id, mt_run_status status, const char *message,
                                  mt_error *err) {
    if ((unsigned)status >= MT_RUN_STATUS_COUNT)
        return mt_error_set(err, MT_ERR_INVALID, "%s: run %lld: status %d is not a run status", s->path,
                            (long long)run_id, (int)status);
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(s,
                                 "UPDATE runs SET status = ?2, status_message = ?3, ended = ?4, updated = "
                                 "coalesce(?4, updated) WHERE id = ?1",
                                 &st, err);
    if (rs != MT_OK) return rs;
    sqlite3_bind_int64(st, 1, run_id);
    mt_st_bind_text(st, 2, run_status_names[status]);
    mt_st_bind_text(st, 3, message);
    if (status == MT_RUN_RUNNING)
        sqlite3_bind_null(st, 4);
    else
        sqlite3_bind_double(st, 4, mt_st_now());
    rs = mt_st_step_done(s, st, "setting a run's status", err);
    sqlite3_finalize(st);
    if (rs == MT_OK && sqlite3_changes(s->db) == 0)
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no run with id %lld", s->path, (long long)run_id);
    return rs;
}

/* The columns every run query selects, in the order read_run expects. */
#define RUN_COLUMNS                                                                                               \
    "r.id, r.name, r.method, r.recipe_text, r.recipe_sha256, r.base_path, r.base_hash, r.git_revision,"          \
    " r.moetune_version, r.config_json, r.status, r.status_message, r.host, r.pid, r.pid_start, r.seed,"         \
    " r.started, r.updated, r.ended, r.last_step,"                                                               \
    " EXISTS (SELECT 1 FROM metrics m WHERE m.run_id = r.id AND m.name = 'loss'),"                                \
    " (SELECT m.value FROM metrics m WHERE m.run_id = r.id AND m.name = 'loss' ORDER BY m.step DESC LIMIT 1)"

static void read_run(const mt_store *s, sqlite3_stmt *st, bool full, mt_store_run *r) {
    memset(r, 0, sizeof *r);
    r->id = sqlite3_column_int64(st, 0);
    r->name = mt_st_col_text(st, 1);
    r->method = mt_st_col_text(st, 2);
    if (full) r->recipe_text = mt_st_col_text(st, 3);
    r->recipe_sha256 = mt_st_col_text(st, 4);
    r->base_path = mt_st_col_text(st, 5);
    r->base_hash = mt_st_col_text(st, 6);
    r->git_revision = mt_st_col_text(st, 7);
    r->version = mt_st_col_text(st, 8);
    if (full) r->config_json = mt_st_col_text(st, 9);
    r->status = parse_status((const char *)sqlite3_column_text(st, 10));
    r->status_message = mt_st_col_text(st, 11);
    r->host = mt_st_col_text(st, 12);
    r->pid = sqlite3_column_int64(st, 13);
    int64_t pid_start = mt_st_col_count(st, 14);
    r->seed = (uint64_t)sqlite3_column_int64(st, 15);
    r->started = sqlite3_column_double(st, 16);
    r->updated = sqlite3_column_double(st, 17);
    r->ended = sqlite3_column_type(st, 18) == SQLITE_NULL ? 0 : sqlite3_column_double(st, 18);
    r->last_step = mt_st_col_count(st, 19);
    r->has_loss = sqlite3_column_int(st, 20) != 0;
    r->last_loss = mt_st_col_real(st, 21);
    if (r->status == MT_RUN_RUNNING && run_process_gone(s, r->host, r->pid, pid_start)) {
        r->status = MT_RUN_INTERRUPTED;
        r->stale = true;
    }
    if (r->ended > 0)
        r->duration = r->ended - r->started;
    else if (r->status == MT_RUN_RUNNING)
        r->duration = mt_st_now() - r->started;
    else
        r->duration = r->updated - r->started;
}

typedef struct run_rows {
    mt_store *s;
    mt_store_run_list *list;
    mt_store_run *one;
} run_rows;

static void run_row(sqlite3_stmt *st, void *ctx) {
    run_rows *c = ctx;
    if (c->one) {
        read_run(c->s, st, true, c->one);
        return;
    }
    read_run(c->s, st, false, mt_st_grow(&c->list->items, c->list->n, sizeof *c->list->items));
    c->list->n++;
}

mt_status mt_store_run_list_all(mt_store *s, mt_store_run_list *out, mt_error *err) {
    out->items = NULL;
    out->n = 0;
    run_rows c = {.s = s, .list = out};
    mt_status rs = mt_st_query(s, "listing runs", run_row, &c, NULL, err, "SELECT " RUN_COLUMNS " FROM runs r ORDER BY r.id",
                               NULL);
    if (rs != MT_OK) mt_store_run_list_free(out);
    return rs;
}

mt_status mt_store_run_get(mt_store *s, int64_t run_id, mt_store_run *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    run_rows c = {.s = s, .one = out};
    int64_t n;
    mt_status rs = mt_st_query(s, "reading a run", run_row, &c, &n, err, "SELECT " RUN_COLUMNS " FROM runs r WHERE r.id = ?1",
                               "i", run_id);
    if (rs == MT_OK && n == 0)
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no run with id %lld", s->path, (long long)run_id);
    return rs;
}

void mt_store_run_free(mt_store_run *r) {
    if (!r) return;
    char *fields[] = {r->name,         r->method,      r->recipe_text, r->recipe_sha256, r->base_path, r->base_hash,
                      r->git_revision, r->version,     r->config_json, r->status_message, r->host};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) free(fields[i]);
    memset(r, 0, sizeof *r);
}

void mt_store_run_list_free(mt_store_run_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) mt_store_run_free(&l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* ---- metrics ---- */

/* Bumps the run's heartbeat (and highest step) inside the caller's transaction; NOT_FOUND when
 * the run does not exist, so that logging to a wrong id fails with a clear message. */
static mt_status touch_run(mt_store *s, int64_t run_id, int64_t step, double now, mt_error *err) {
    mt_status rs = mt_st_prepare_kept(
        s,
        "UPDATE runs SET updated = ?2,"
        " last_step = CASE WHEN ?3 IS NULL THEN last_step ELSE max(coalesce(last_step, ?3), ?3) END WHERE id = ?1",
        &s->touch_run, err);
    if (rs != MT_OK) return rs;
    sqlite3_stmt *st = s->touch_run;
    sqlite3_bind_int64(st, 1, run_id);
    sqlite3_bind_double(st, 2, now);
    mt_st_bind_count(st, 3, step);
    rs = mt_st_step_done(s, st, "updating a run's heartbeat", err);
    sqlite3_reset(st);
    if (rs == MT_OK && sqlite3_changes(s->db) == 0)
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no run with id %lld", s->path, (long long)run_id);
    return rs;
}

mt_status mt_store_log_metrics(mt_store *s, int64_t run_id, int64_t step, const mt_metric *m, size_t n,
                               mt_error *err) {
    if (step < 0) return mt_error_set(err, MT_ERR_INVALID, "%s: run %lld: metric step %lld is negative", s->path,
                                      (long long)run_id, (long long)step);
    for (size_t i = 0; i < n; i++)
        if (!m[i].name || !*m[i].name)
            return mt_error_set(err, MT_ERR_INVALID, "%s: run %lld step %lld: metric %zu has no name", s->path,
                                (long long)run_id, (long long)step, i);
    if (n == 0) return MT_OK;
    mt_status rs = mt_st_begin(s, err);
    if (rs != MT_OK) return rs;
    double now = mt_st_now();
    rs = touch_run(s, run_id, step, now, err);
    if (rs == MT_OK)
        rs = mt_st_prepare_kept(s,
                                "INSERT INTO metrics (run_id, name, step, value, time) VALUES (?1, ?2, ?3, ?4, ?5)"
                                " ON CONFLICT (run_id, step, name) DO UPDATE SET value = excluded.value,"
                                " time = excluded.time",
                                &s->put_metric, err);
    sqlite3_stmt *st = s->put_metric;
    for (size_t i = 0; rs == MT_OK && i < n; i++) {
        sqlite3_bind_int64(st, 1, run_id);
        mt_st_bind_text(st, 2, m[i].name);
        sqlite3_bind_int64(st, 3, step);
        if (isnan(m[i].value))
            sqlite3_bind_null(st, 4);
        else
            sqlite3_bind_double(st, 4, m[i].value);
        sqlite3_bind_double(st, 5, now);
        rs = mt_st_step_done(s, st, "logging a metric", err);
        if (rs != MT_OK) mt_error_prefix(err, "metric '%s' at step %lld: ", m[i].name, (long long)step);
        sqlite3_reset(st);
    }
    if (rs != MT_OK) {
        mt_st_rollback(s);
        return rs;
    }
    return mt_st_commit(s, err);
}

static void series_row(sqlite3_stmt *st, void *ctx) {
    mt_store_series *out = ctx;
    /* steps and values grow together: the same implied capacity */
    *(int64_t *)mt_st_grow(&out->steps, out->n, sizeof *out->steps) = sqlite3_column_int64(st, 0);
    *(double *)mt_st_grow(&out->values, out->n, sizeof *out->values) = mt_st_col_real(st, 1);
    out->n++;
}

mt_status mt_store_metric_series(mt_store *s, int64_t run_id, const char *name, mt_store_series *out,
                                 mt_error *err) {
    memset(out, 0, sizeof *out);
    mt_status rs = mt_st_query(s, "reading a metric series", series_row, out, NULL, err,
                               "SELECT step, value FROM metrics WHERE run_id = ?1 AND name = ?2 ORDER BY step", "it",
                               run_id, name);
    if (rs != MT_OK) mt_store_series_free(out);
    return rs;
}

void mt_store_series_free(mt_store_series *sr) {
    if (!sr) return;
    free(sr->steps);
    free(sr->values);
    memset(sr, 0, sizeof *sr);
}

static void point_row(sqlite3_stmt *st, void *ctx) {
    mt_store_point_list *out = ctx;
    mt_store_point *p = mt_st_grow(&out->items, out->n++, sizeof *out->items);
    p->step = sqlite3_column_int64(st, 0);
    p->name = mt_st_col_text(st, 1);
    p->value = mt_st_col_real(st, 2);
}

mt_status mt_store_metrics_since(mt_store *s, int64_t run_id, int64_t from_step, mt_store_point_list *out,
                                 mt_error *err) {
    memset(out, 0, sizeof *out);
    /* the primary key (run_id, step, name) makes this a range scan: a poll costs what is new */
    mt_status rs = mt_st_query(s, "reading recent metrics", point_row, out, NULL, err,
                               "SELECT step, name, value FROM metrics WHERE run_id = ?1 AND step >= ?2"
                               " ORDER BY step, name",
                               "ii", run_id, from_step);
    if (rs != MT_OK) mt_store_point_list_free(out);
    return rs;
}

void mt_store_point_list_free(mt_store_point_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) free(l->items[i].name);
    free(l->items);
    memset(l, 0, sizeof *l);
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const mt_store_metric_summary *)a)->name, ((const mt_store_metric_summary *)b)->name);
}

typedef struct summary_rows {
    mt_store_metric_list *out;
    size_t hint; /* where the last row's name was found */
} summary_rows;

static void summary_row(sqlite3_stmt *st, void *ctx) {
    summary_rows *c = ctx;
    mt_store_metric_list *out = c->out;
    const char *name = (const char *)sqlite3_column_text(st, 0);
    int64_t step = sqlite3_column_int64(st, 1);
    double v = mt_st_col_real(st, 2);
    mt_store_metric_summary *m = NULL;
    for (size_t k = 0; k < out->n && !m; k++) {
        size_t j = (c->hint + k) % out->n;
        if (!strcmp(out->items[j].name, name)) m = &out->items[j], c->hint = j + 1;
    }
    if (!m) {
        m = mt_st_grow(&out->items, out->n++, sizeof *out->items);
        *m = (mt_store_metric_summary){.name = mt_xstrdup(name), .min = NAN, .max = NAN, .min_step = -1,
                                       .max_step = -1};
        c->hint = out->n;
    }
    m->count++;
    m->last_step = step; /* rows come in step order: the latest row is the last */
    m->last = v;
    if (!isnan(v) && (isnan(m->min) || v < m->min)) m->min = v, m->min_step = step;
    if (!isnan(v) && (isnan(m->max) || v > m->max)) m->max = v, m->max_step = step;
}

/* One pass over the run's rows in key order (step, then name), folding each row into its
 * name's summary: no sort of the rows and no per-name rescans. A run has few metric names, so
 * finding a name's summary by a linear search (starting where the last row's was) is cheap. */
mt_status mt_store_metric_names(mt_store *s, int64_t run_id, mt_store_metric_list *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    summary_rows c = {.out = out};
    mt_status rs = mt_st_query(s, "summarising metrics", summary_row, &c, NULL, err,
                               "SELECT name, step, value FROM metrics WHERE run_id = ?1 ORDER BY step", "i", run_id);
    if (rs != MT_OK) {
        mt_store_metric_list_free(out);
        return rs;
    }
    if (out->n > 1) qsort(out->items, out->n, sizeof *out->items, by_name);
    return MT_OK;
}

void mt_store_metric_list_free(mt_store_metric_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) free(l->items[i].name);
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* ---- events ---- */

mt_status mt_store_log_event(mt_store *s, int64_t run_id, int64_t step, const char *kind, const char *detail_json,
                             mt_error *err) {
    if (!kind || !*kind) return mt_error_set(err, MT_ERR_INVALID, "%s: run %lld: an event needs a kind", s->path,
                                             (long long)run_id);
    mt_status rs = mt_st_begin(s, err);
    if (rs != MT_OK) return rs;
    double now = mt_st_now();
    sqlite3_stmt *st = NULL;
    rs = touch_run(s, run_id, -1, now, err);
    if (rs == MT_OK)
        rs = mt_st_prepare(s, "INSERT INTO events (run_id, step, time, kind, detail_json) VALUES (?1, ?2, ?3, ?4, ?5)",
                           &st, err);
    if (rs == MT_OK) {
        sqlite3_bind_int64(st, 1, run_id);
        mt_st_bind_count(st, 2, step);
        sqlite3_bind_double(st, 3, now);
        mt_st_bind_text(st, 4, kind);
        mt_st_bind_text(st, 5, detail_json);
        char what[200];
        snprintf(what, sizeof what, "logging event '%.100s' of run %lld", kind, (long long)run_id);
        rs = mt_st_step_done(s, st, what, err);
    }
    sqlite3_finalize(st);
    if (rs != MT_OK) {
        mt_st_rollback(s);
        return rs;
    }
    return mt_st_commit(s, err);
}

static void event_row(sqlite3_stmt *st, void *ctx) {
    mt_store_event_list *out = ctx;
    mt_store_event *e = mt_st_grow(&out->items, out->n++, sizeof *out->items);
    e->id = sqlite3_column_int64(st, 0);
    e->step = mt_st_col_count(st, 1);
    e->time = sqlite3_column_double(st, 2);
    e->kind = mt_st_col_text(st, 3);
    e->detail_json = mt_st_col_text(st, 4);
}

mt_status mt_store_events(mt_store *s, int64_t run_id, mt_store_event_list *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    mt_status rs = mt_st_query(s, "reading events", event_row, out, NULL, err,
                               "SELECT id, step, time, kind, detail_json FROM events WHERE run_id = ?1 ORDER BY id", "i",
                               run_id);
    if (rs != MT_OK) mt_store_event_list_free(out);
    return rs;
}

void mt_store_event_list_free(mt_store_event_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].kind);
        free(l->items[i].detail_json);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}
