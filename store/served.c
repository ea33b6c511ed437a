/* served.c — the requests `moetune serve --store` served: the `served` table (migration 1 -> 2;
 * response_id, prompts_json and n_per_prompt come with 3 -> 4 in feedback.c) and its batched
 * insert. The engine hands rows over in batches from a writer thread, so one transaction per
 * batch keeps SQLite's fsyncs off the decode loop's clock. */
#include <math.h>
#include <stdio.h>

#include "store-impl.h"

/* Referenced by the migration list in schema.c. completions_json is checked like every JSON
 * column so readers can json_extract it. */
const char mt_st_migration_served[] =
    "CREATE TABLE served ("
    "  id INTEGER PRIMARY KEY,"
    "  time REAL NOT NULL,"
    "  endpoint TEXT NOT NULL,"
    "  model TEXT,"
    "  adapter TEXT,"
    "  adapter_version INTEGER NOT NULL DEFAULT 0,"
    "  status INTEGER NOT NULL,"
    "  prompt_tokens INTEGER,"
    "  completion_tokens INTEGER,"
    "  n_choices INTEGER,"
    "  finish_reason TEXT,"
    "  ttft REAL,"
    "  latency REAL,"
    "  prompt TEXT,"
    "  completions_json TEXT CONSTRAINT completions_is_json"
    "    CHECK (completions_json IS NULL OR json_valid(completions_json))"
    ");"
    "CREATE INDEX served_by_time ON served(time);"
    "CREATE INDEX served_by_adapter ON served(adapter, adapter_version);";

static void bind_real(sqlite3_stmt *st, int i, double v) {
    if (isfinite(v))
        sqlite3_bind_double(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

mt_status mt_store_served_add(mt_store *s, const mt_store_served *rows, size_t n, mt_error *err) {
    if (n == 0) return MT_OK;
    mt_status rs = mt_st_begin(s, err);
    if (rs != MT_OK) return rs;
    sqlite3_stmt *st = NULL;
    rs = mt_st_prepare(s,
                       "INSERT INTO served (time, endpoint, model, adapter, adapter_version, status, prompt_tokens,"
                       " completion_tokens, n_choices, finish_reason, ttft, latency, prompt, completions_json,"
                       " response_id, prompts_json, n_per_prompt)"
                       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                       &st, err);
    for (size_t i = 0; rs == MT_OK && i < n; i++) {
        const mt_store_served *r = &rows[i];
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        sqlite3_bind_double(st, 1, r->time);
        mt_st_bind_text(st, 2, r->endpoint ? r->endpoint : "");
        mt_st_bind_text(st, 3, r->model);
        mt_st_bind_text(st, 4, r->adapter);
        sqlite3_bind_int64(st, 5, r->adapter_version);
        sqlite3_bind_int(st, 6, r->status);
        mt_st_bind_count(st, 7, r->prompt_tokens);
        mt_st_bind_count(st, 8, r->completion_tokens);
        sqlite3_bind_int(st, 9, r->n_choices);
        mt_st_bind_text(st, 10, r->finish_reason);
        bind_real(st, 11, r->ttft);
        bind_real(st, 12, r->latency);
        mt_st_bind_text(st, 13, r->prompt);
        mt_st_bind_text(st, 14, r->completions_json);
        mt_st_bind_text(st, 15, r->response_id);
        mt_st_bind_text(st, 16, r->prompts_json);
        if (r->n_per_prompt > 0)
            sqlite3_bind_int(st, 17, r->n_per_prompt);
        else
            sqlite3_bind_null(st, 17);
        rs = mt_st_step_done(s, st, "recording a served request", err);
    }
    sqlite3_finalize(st);
    if (rs != MT_OK) {
        mt_st_rollback(s);
        return rs;
    }
    return mt_st_commit(s, err);
}

mt_status mt_store_served_count(mt_store *s, int64_t *count, mt_error *err) {
    sqlite3_stmt *st = NULL;
    mt_status rs = mt_st_prepare(s, "SELECT count(*) FROM served", &st, err);
    if (rs == MT_OK) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *count = sqlite3_column_int64(st, 0);
        else
            rs = mt_st_db_error(s, err, rc, "counting served requests");
    }
    sqlite3_finalize(st);
    return rs;
}
