/* schema.c — the store's schema as an ordered list of migrations, written once as data. Entry i
 * takes a store from user_version i to i + 1; the opener walks the list in one transaction.
 * Never edit a released entry: append a new one (docs/store.md describes every column). */
#include "store-impl.h"

extern const char mt_st_migration_served[]; /* 1 -> 2, beside the code that uses it (served.c) */
extern const char mt_st_migration_pairs[];  /* 2 -> 3, preference pairs and reference log-probs (pairs.c) */
extern const char mt_st_migration_feedback[]; /* 3 -> 4, served requests findable by id, ratings (feedback.c) */

const char *const mt_st_migrations[] = {
    /* 0 -> 1: the first schema. Times are Unix seconds (REAL, UTC) so that the sqlite3 shell can
     * show them with datetime(col, 'unixepoch'). JSON columns are checked with json_valid so a
     * reader can always use json_extract on them. */
    "CREATE TABLE runs ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  method TEXT NOT NULL,"
    "  status TEXT NOT NULL DEFAULT 'running'"
    "    CONSTRAINT status_is_known CHECK (status IN ('running','completed','failed','interrupted')),"
    "  status_message TEXT,"
    "  recipe_text TEXT,"
    "  recipe_sha256 TEXT,"
    "  base_path TEXT,"
    "  base_hash TEXT,"
    "  git_revision TEXT,"
    "  moetune_version TEXT NOT NULL,"
    "  seed INTEGER NOT NULL DEFAULT 0,"
    "  config_json TEXT NOT NULL DEFAULT '{}' CONSTRAINT config_is_json CHECK (json_valid(config_json)),"
    "  host TEXT NOT NULL,"
    "  pid INTEGER NOT NULL,"
    "  pid_start INTEGER,"
    "  started REAL NOT NULL,"
    "  updated REAL NOT NULL,"
    "  ended REAL,"
    "  last_step INTEGER"
    ");"
    /* Keyed by (run, step, name): one step's rows sit side by side, so a commit of a step's
     * metrics dirties one or two leaf pages. A (run, name, step) key would put each name on its
     * own page and multiply the WAL writes of every step by the number of metrics; reading one
     * series scans the run's rows instead, which is cheap next to training. */
    "CREATE TABLE metrics ("
    "  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  name TEXT NOT NULL,"
    "  step INTEGER NOT NULL,"
    "  value REAL,"
    "  time REAL NOT NULL,"
    "  PRIMARY KEY (run_id, step, name)"
    ") WITHOUT ROWID;"
    "CREATE TABLE events ("
    "  id INTEGER PRIMARY KEY,"
    "  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  step INTEGER,"
    "  time REAL NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  detail_json TEXT CONSTRAINT detail_is_json CHECK (detail_json IS NULL OR json_valid(detail_json))"
    ");"
    "CREATE INDEX events_by_run ON events(run_id, id);"
    "CREATE TABLE datasets ("
    "  id INTEGER PRIMARY KEY,"
    "  path TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  format TEXT NOT NULL,"
    "  n_docs INTEGER,"
    "  n_tokens INTEGER,"
    "  added REAL NOT NULL,"
    "  UNIQUE (path, sha256, format)"
    ");"
    "CREATE TABLE run_datasets ("
    "  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,"
    "  split TEXT NOT NULL DEFAULT 'train',"
    "  PRIMARY KEY (run_id, dataset_id, split)"
    ") WITHOUT ROWID;"
    "CREATE TABLE adapters ("
    "  id INTEGER PRIMARY KEY,"
    "  run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,"
    "  path TEXT NOT NULL,"
    "  base_hash TEXT,"
    "  rank INTEGER NOT NULL,"
    "  alpha REAL NOT NULL,"
    "  targets_json TEXT CONSTRAINT targets_is_json CHECK (targets_json IS NULL OR json_valid(targets_json)),"
    "  thresholds_json TEXT"
    "    CONSTRAINT thresholds_is_json CHECK (thresholds_json IS NULL OR json_valid(thresholds_json)),"
    "  eval_json TEXT CONSTRAINT eval_is_json CHECK (eval_json IS NULL OR json_valid(eval_json)),"
    "  created REAL NOT NULL"
    ");"
    "CREATE INDEX adapters_by_run ON adapters(run_id);"
    "CREATE TABLE pairs ("
    "  id INTEGER PRIMARY KEY,"
    "  dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,"
    "  prompt TEXT NOT NULL,"
    "  chosen TEXT NOT NULL,"
    "  rejected TEXT NOT NULL,"
    "  source TEXT,"
    "  label_json TEXT CONSTRAINT label_is_json CHECK (label_json IS NULL OR json_valid(label_json)),"
    "  hash TEXT NOT NULL,"
    "  UNIQUE (dataset_id, hash)"
    ");",
    mt_st_migration_served,
    mt_st_migration_pairs,
    mt_st_migration_feedback,
};

_Static_assert(sizeof mt_st_migrations / sizeof mt_st_migrations[0] == MT_STORE_SCHEMA_VERSION,
               "one migration per schema version");
const size_t mt_st_n_migrations = sizeof mt_st_migrations / sizeof mt_st_migrations[0];
