/* db.c — opening a store: connection settings (WAL, synchronous, foreign keys, busy timeout),
 * recognising foreign or newer files, walking the migration list in one transaction, and the
 * SQLite helpers the other store files share. */
#define _GNU_SOURCE
#include "store-impl.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* PRAGMA application_id marks the file as a moetune store ('moet'), so that another program's
 * SQLite database given by mistake is refused instead of being migrated into. */
#define MT_STORE_APP_ID 0x6d6f6574

/* A reader (sqlite3 shell, `moetune runs`) and the training writer share the file; WAL lets
 * them run concurrently, and the busy timeout covers the short moments one waits for a lock
 * (checkpoints, a second writer). */
#define MT_STORE_BUSY_MS 10000

mt_status mt_st_db_error(mt_store *s, mt_error *err, int rc, const char *what) {
    mt_status code;
    switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: code = MT_ERR_FORMAT; break;
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_READONLY:
    case SQLITE_FULL:
    case SQLITE_PERM: code = MT_ERR_IO; break;
    case SQLITE_CONSTRAINT: code = MT_ERR_INVALID; break;
    case SQLITE_NOMEM: code = MT_ERR_NOMEM; break;
    default: code = MT_ERR_DB;
    }
    const char *msg = s && s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    return mt_error_set(err, code, "%s: %s: %s", s ? s->path : "(store)", what, msg);
}

mt_status mt_st_prepare(mt_store *s, const char *sql, sqlite3_stmt **st, mt_error *err) {
    int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
    if (rc != SQLITE_OK) {
        *st = NULL;
        return mt_st_db_error(s, err, rc, "preparing a query");
    }
    return MT_OK;
}

mt_status mt_st_prepare_kept(mt_store *s, const char *sql, sqlite3_stmt **slot, mt_error *err) {
    if (*slot) {
        sqlite3_reset(*slot);
        sqlite3_clear_bindings(*slot);
        return MT_OK;
    }
    int rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL);
    if (rc != SQLITE_OK) {
        *slot = NULL;
        return mt_st_db_error(s, err, rc, "preparing a query");
    }
    return MT_OK;
}

mt_status mt_st_begin(mt_store *s, mt_error *err) {
    int rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    return rc == SQLITE_OK ? MT_OK : mt_st_db_error(s, err, rc, "starting a write transaction");
}

mt_status mt_st_commit(mt_store *s, mt_error *err) {
    int rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    if (rc == SQLITE_OK) return MT_OK;
    mt_status st = mt_st_db_error(s, err, rc, "committing");
    mt_st_rollback(s);
    return st;
}

void mt_st_rollback(mt_store *s) {
    if (!sqlite3_get_autocommit(s->db)) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

mt_status mt_st_step_done(mt_store *s, sqlite3_stmt *st, const char *what, mt_error *err) {
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    return rc == SQLITE_DONE ? MT_OK : mt_st_db_error(s, err, rc, what);
}

void mt_st_bind_text(sqlite3_stmt *st, int i, const char *v) {
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

void mt_st_bind_count(sqlite3_stmt *st, int i, int64_t v) {
    if (v >= 0)
        sqlite3_bind_int64(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

char *mt_st_col_text(sqlite3_stmt *st, int i) {
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? mt_xstrdup((const char *)t) : NULL;
}

int64_t mt_st_col_count(sqlite3_stmt *st, int i) {
    return sqlite3_column_type(st, i) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, i);
}

double mt_st_col_real(sqlite3_stmt *st, int i) {
    return sqlite3_column_type(st, i) == SQLITE_NULL ? NAN : sqlite3_column_double(st, i);
}

double mt_st_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

mt_status mt_st_query(mt_store *s, const char *what, mt_st_row_fn row, void *ctx, int64_t *n_rows, mt_error *err,
                      const char *sql, const char *binds, ...) {
    if (n_rows) *n_rows = 0;
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(s, sql, &st, err);
    if (rs != MT_OK) return rs;
    va_list ap;
    va_start(ap, binds);
    for (int i = 0; binds && binds[i]; i++) {
        switch (binds[i]) {
        case 'i': sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t)); break;
        case 't': mt_st_bind_text(st, i + 1, va_arg(ap, const char *)); break;
        case 'r': sqlite3_bind_double(st, i + 1, va_arg(ap, double)); break;
        default: MT_ASSERT(!"mt_st_query: bind letters are i, t and r");
        }
    }
    va_end(ap);
    int64_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (row) row(st, ctx);
        n++;
    }
    sqlite3_finalize(st);
    if (n_rows) *n_rows = n;
    return rc == SQLITE_DONE ? MT_OK : mt_st_db_error(s, err, rc, what);
}

void *mt_st_grow(void *items_ptr, size_t n, size_t size) {
    void **items = items_ptr;
    /* capacity is implied by n: 16, then every power of two */
    if (n == 0 || (n >= 16 && (n & (n - 1)) == 0)) *items = mt_xrealloc(*items, (n ? 2 * n : 16) * size);
    char *slot = (char *)*items + n * size;
    memset(slot, 0, size);
    return slot;
}

mt_status mt_st_check_run(mt_store *s, int64_t run_id, mt_error *err) {
    int64_t n;
    mt_status rs = mt_st_query(s, "looking up a run", NULL, NULL, &n, err, "SELECT 1 FROM runs WHERE id = ?1", "i", run_id);
    if (rs == MT_OK && n == 0)
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no run with id %lld", s->path, (long long)run_id);
    return rs;
}

/* Runs a PRAGMA whose single result is an integer. */
static mt_status pragma_int(mt_store *s, const char *sql, int64_t *out, mt_error *err) {
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) return MT_OK;
    return mt_st_db_error(s, err, rc, sql);
}

/* A file with user_version 0 is either brand new (no tables) or somebody else's database. */
static mt_status check_is_ours(mt_store *s, int64_t version, mt_error *err) {
    int64_t app_id = 0, n_tables = 0;
    mt_status st = pragma_int(s, "PRAGMA application_id", &app_id, err);
    if (st == MT_OK) st = pragma_int(s, "SELECT count(*) FROM sqlite_schema", &n_tables, err);
    if (st != MT_OK) return st;
    bool ours = app_id == MT_STORE_APP_ID || (app_id == 0 && version == 0 && n_tables == 0);
    if (!ours)
        return mt_error_set(err, MT_ERR_FORMAT,
                            "%s: an SQLite database, but not a moetune store (application_id %lld, %lld tables)",
                            s->path, (long long)app_id, (long long)n_tables);
    if (version > MT_STORE_SCHEMA_VERSION)
        return mt_error_set(err, MT_ERR_UNSUPPORTED,
                            "%s: store schema version %lld is newer than this moetune (%s) understands (%d); "
                            "use a newer moetune to read it",
                            s->path, (long long)version, MT_VERSION, MT_STORE_SCHEMA_VERSION);
    return MT_OK;
}

/* Applies the pending migrations in one transaction: a crash or an error part-way leaves the
 * store at its old version, never between two. The version is re-read under the write lock
 * because another process may have migrated the file since we first looked. */
static mt_status migrate(mt_store *s, mt_error *err) {
    int64_t version = 0;
    mt_status st = pragma_int(s, "PRAGMA user_version", &version, err);
    if (st == MT_OK) st = check_is_ours(s, version, err);
    if (st != MT_OK || version == MT_STORE_SCHEMA_VERSION) return st;

    if ((st = mt_st_begin(s, err)) != MT_OK) return st;
    st = pragma_int(s, "PRAGMA user_version", &version, err);
    if (st == MT_OK) st = check_is_ours(s, version, err);
    for (int64_t v = version; st == MT_OK && v < MT_STORE_SCHEMA_VERSION; v++) {
        char *msg = NULL;
        int rc = sqlite3_exec(s->db, mt_st_migrations[v], NULL, NULL, &msg);
        if (rc != SQLITE_OK)
            st = mt_error_set(err, MT_ERR_DB, "%s: migrating the store from version %lld to %lld: %s", s->path,
                              (long long)v, (long long)v + 1, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
    }
    if (st == MT_OK) {
        /* PRAGMA takes no bound parameters; both values are compile-time integers */
        char sql[96];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d; PRAGMA application_id = %d", MT_STORE_SCHEMA_VERSION,
                 MT_STORE_APP_ID);
        int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK) st = mt_st_db_error(s, err, rc, "recording the schema version");
    }
    if (st != MT_OK) {
        mt_st_rollback(s);
        return st;
    }
    return mt_st_commit(s, err);
}

/* Connection settings. synchronous=NORMAL in WAL mode fsyncs at checkpoints, not at every
 * commit: a killed process never loses or tears a committed transaction (the WAL is in the OS
 * cache), and a power cut can lose only the last few commits while the file stays consistent.
 * Metrics are logged every step, so a per-commit fsync (FULL) would cost milliseconds a step
 * for durability nobody needs from a log. */
static mt_status configure(mt_store *s, mt_error *err) {
    sqlite3_busy_timeout(s->db, MT_STORE_BUSY_MS);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
    }
    if (rc != SQLITE_ROW) {
        if ((rc & 0xff) == SQLITE_NOTADB)
            return mt_error_set(err, MT_ERR_FORMAT, "%s: not a moetune store (SQLite: %s)", s->path,
                                sqlite3_errmsg(s->db));
        return mt_st_db_error(s, err, rc, "switching to WAL mode");
    }
    rc = sqlite3_exec(s->db, "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON", NULL, NULL, NULL);
    return rc == SQLITE_OK ? MT_OK : mt_st_db_error(s, err, rc, "configuring the connection");
}

mt_status mt_store_open(mt_store **out, const char *path, bool create, mt_error *err) {
    *out = NULL;
    if (!path || !*path) return mt_error_set(err, MT_ERR_INVALID, "store path is empty");
    bool memory = !strcmp(path, ":memory:");
    if (!memory) {
        if (mt_is_dir(path)) return mt_error_set(err, MT_ERR_IO, "%s: is a folder, not a store file", path);
        if (!mt_path_exists(path)) {
            if (!create) return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no store here", path);
            char *copy = mt_xstrdup(path);
            mt_status st = mt_mkdirs(dirname(copy), err);
            free(copy);
            if (st != MT_OK) {
                mt_error_prefix(err, "%s: cannot create the store: ", path);
                return st;
            }
        }
    }
    mt_store *s = mt_xcalloc(1, sizeof *s);
    s->path = mt_xstrdup(path);
    if (gethostname(s->host, sizeof s->host - 1) != 0) snprintf(s->host, sizeof s->host, "unknown");
    int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(path, &s->db, flags, mt_st_fault_vfs());
    mt_status st = MT_OK;
    if (rc != SQLITE_OK) {
        st = mt_error_set(err, (rc & 0xff) == SQLITE_CANTOPEN ? MT_ERR_IO : MT_ERR_DB, "%s: cannot open the store: %s",
                          path, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
    } else {
        sqlite3_extended_result_codes(s->db, 1);
        st = configure(s, err);
        if (st == MT_OK) st = migrate(s, err);
    }
    if (st != MT_OK) {
        mt_store_close(s);
        return st;
    }
    *out = s;
    return MT_OK;
}

void mt_store_close(mt_store *s) {
    if (!s) return;
    sqlite3_finalize(s->touch_run);
    sqlite3_finalize(s->put_metric);
    /* close_v2 defers the close until every statement is finalised instead of failing */
    if (s->db) sqlite3_close_v2(s->db);
    free(s->path);
    free(s);
}

const char *mt_store_path(const mt_store *s) { return s->path; }
