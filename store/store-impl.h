/* store-impl.h — what the store's files share and nobody else sees: the handle, SQLite error
 * translation, transactions, binding and column helpers, and the migration list. */
#ifndef MT_STORE_IMPL_H
#define MT_STORE_IMPL_H

#include <sqlite3.h>

#include "store/store.h"

struct mt_store {
    sqlite3 *db;
    char *path;     /* as given to mt_store_open, for messages */
    char host[256]; /* this machine's name: a run's liveness can only be judged on its own host */
    /* the statements a training loop runs every step, prepared once rather than parsed again on
     * every call */
    sqlite3_stmt *touch_run;
    sqlite3_stmt *put_metric;
};

/* The schema, one SQL script per version step: migrations[i] takes user_version i to i + 1. */
extern const char *const mt_st_migrations[];
extern const size_t mt_st_n_migrations;

/* "<path>: <what>: <sqlite message>" with a status chosen from the SQLite code. Returns it. */
mt_status mt_st_db_error(mt_store *s, mt_error *err, int rc, const char *what);
mt_status mt_st_prepare(mt_store *s, const char *sql, sqlite3_stmt **st, mt_error *err);
/* Prepares into *slot on first use and keeps it (finalised by mt_store_close); resets it and
 * clears its bindings on every later use. */
mt_status mt_st_prepare_kept(mt_store *s, const char *sql, sqlite3_stmt **slot, mt_error *err);
/* BEGIN IMMEDIATE: takes the write lock up front, so the busy timeout applies and a deferred
 * transaction can never fail half-way when it upgrades from reading to writing. */
mt_status mt_st_begin(mt_store *s, mt_error *err);
mt_status mt_st_commit(mt_store *s, mt_error *err);
void mt_st_rollback(mt_store *s);
/* The store's one reader (issue 8 item 8): prepares `sql`, binds the arguments after `binds`
 * as ?1, ?2, ... by its letters ('i' int64_t, 't' const char *, NULL binding NULL, 'r' double),
 * calls row(st, ctx) on every row (row may be NULL), finalises, and sets *n_rows (may be NULL)
 * to the number of rows. A SQLite failure is "<path>: <what>: <message>"; on failure the rows
 * already handed to row stay with the caller, who frees them. */
typedef void (*mt_st_row_fn)(sqlite3_stmt *st, void *ctx);
mt_status mt_st_query(mt_store *s, const char *what, mt_st_row_fn row, void *ctx, int64_t *n_rows, mt_error *err,
                      const char *sql, const char *binds, ...);
/* The zeroed slot items[n] of a growing list (16 slots, then doubling); the caller counts it. */
void *mt_st_grow(void *items_ptr, size_t n, size_t size);

/* Step a statement that returns no rows (or whose rows are ignored). */
mt_status mt_st_step_done(mt_store *s, sqlite3_stmt *st, const char *what, mt_error *err);

void mt_st_bind_text(sqlite3_stmt *st, int i, const char *v); /* NULL binds SQL NULL */
void mt_st_bind_count(sqlite3_stmt *st, int i, int64_t v);    /* negative binds NULL (unknown) */
char *mt_st_col_text(sqlite3_stmt *st, int i);                /* malloc'ed copy, NULL for NULL */
int64_t mt_st_col_count(sqlite3_stmt *st, int i);             /* NULL reads as -1 */
double mt_st_col_real(sqlite3_stmt *st, int i);               /* NULL reads as NaN */

/* The name of the VFS that runs store writes through the fault hook (faultvfs.c), registered on
 * first use; NULL (SQLite's default VFS) while fault injection is not armed. */
const char *mt_st_fault_vfs(void);

/* Named pair datasets (pairs.c), inside the caller's transaction: the dataset of that name,
 * created when missing; and its refresh after pairs were added (sha256 = the digest of its pair
 * hashes in hash order, a set's identity whatever the insertion order; n_docs = its count). */
mt_status mt_st_pair_dataset_get_or_create(mt_store *s, const char *name, int64_t *id, mt_error *err);
mt_status mt_st_pair_dataset_refresh(mt_store *s, int64_t id, mt_error *err);

/* Unix time in seconds with sub-second precision. */
double mt_st_now(void);
/* MT_ERR_NOT_FOUND unless the run exists. */
mt_status mt_st_check_run(mt_store *s, int64_t run_id, mt_error *err);

#endif
