/* records.c — the store's other records: datasets (linked to runs), exported adapters,
 * preference pairs (batch insert with dedup), and the config diff `moetune runs compare` shows,
 * computed by SQLite's json_tree so the store needs no JSON parser of its own. */
#include "store-impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- datasets ---- */

static mt_status check_dataset(mt_store *s, int64_t dataset_id, mt_error *err) {
    int64_t n;
    mt_status rs = mt_st_query(s, "looking up a dataset", NULL, NULL, &n, err, "SELECT 1 FROM datasets WHERE id = ?1", "i",
                               dataset_id);
    if (rs == MT_OK && n == 0)
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no dataset with id %lld", s->path, (long long)dataset_id);
    return rs;
}

mt_status mt_store_dataset_add(mt_store *s, const mt_store_dataset_info *info, int64_t *dataset_id, mt_error *err) {
    *dataset_id = 0;
    if (!info->path || !info->sha256 || !info->format)
        return mt_error_set(err, MT_ERR_INVALID, "%s: a dataset needs a path, a sha256 and a format", s->path);
    mt_status rs = mt_st_begin(s, err);
    if (rs != MT_OK) return rs;
    if (info->run_id > 0) rs = mt_st_check_run(s, info->run_id, err);
    sqlite3_stmt *st = NULL;
    if (rs == MT_OK)
        rs = mt_st_prepare(s,
                           "INSERT INTO datasets (path, sha256, format, n_docs, n_tokens, added)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                           " ON CONFLICT (path, sha256, format) DO UPDATE SET"
                           " n_docs = coalesce(excluded.n_docs, n_docs), n_tokens = coalesce(excluded.n_tokens, n_tokens)"
                           " RETURNING id",
                           &st, err);
    if (rs == MT_OK) {
        mt_st_bind_text(st, 1, info->path);
        mt_st_bind_text(st, 2, info->sha256);
        mt_st_bind_text(st, 3, info->format);
        mt_st_bind_count(st, 4, info->n_docs);
        mt_st_bind_count(st, 5, info->n_tokens);
        sqlite3_bind_double(st, 6, mt_st_now());
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *dataset_id = sqlite3_column_int64(st, 0);
            rs = mt_st_step_done(s, st, "adding a dataset", err);
        } else {
            rs = mt_st_db_error(s, err, rc, "adding a dataset");
        }
        if (rs != MT_OK) mt_error_prefix(err, "dataset %s: ", info->path);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rs == MT_OK && info->run_id > 0) {
        rs = mt_st_prepare(s, "INSERT OR IGNORE INTO run_datasets (run_id, dataset_id, split) VALUES (?1, ?2, ?3)", &st,
                           err);
        if (rs == MT_OK) {
            sqlite3_bind_int64(st, 1, info->run_id);
            sqlite3_bind_int64(st, 2, *dataset_id);
            mt_st_bind_text(st, 3, info->split ? info->split : "train");
            rs = mt_st_step_done(s, st, "linking a dataset to its run", err);
        }
        sqlite3_finalize(st);
    }
    if (rs != MT_OK) {
        *dataset_id = 0;
        mt_st_rollback(s);
        return rs;
    }
    return mt_st_commit(s, err);
}

static void dataset_row(sqlite3_stmt *st, void *ctx) {
    mt_store_dataset_list *out = ctx;
    mt_store_dataset *d = mt_st_grow(&out->items, out->n++, sizeof *out->items);
    d->id = sqlite3_column_int64(st, 0);
    d->path = mt_st_col_text(st, 1);
    d->sha256 = mt_st_col_text(st, 2);
    d->format = mt_st_col_text(st, 3);
    d->n_docs = mt_st_col_count(st, 4);
    d->n_tokens = mt_st_col_count(st, 5);
    d->split = mt_st_col_text(st, 6);
    d->added = sqlite3_column_double(st, 7);
}

mt_status mt_store_datasets(mt_store *s, int64_t run_id, mt_store_dataset_list *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    mt_status rs =
        run_id > 0
            ? mt_st_query(s, "listing datasets", dataset_row, out, NULL, err,
                          "SELECT d.id, d.path, d.sha256, d.format, d.n_docs, d.n_tokens, l.split, d.added"
                          " FROM run_datasets l JOIN datasets d ON d.id = l.dataset_id WHERE l.run_id = ?1"
                          " ORDER BY l.split = 'train' DESC, l.split, d.id",
                          "i", run_id)
            : mt_st_query(s, "listing datasets", dataset_row, out, NULL, err,
                          "SELECT id, path, sha256, format, n_docs, n_tokens, NULL, added FROM datasets ORDER BY id", NULL);
    if (rs != MT_OK) mt_store_dataset_list_free(out);
    return rs;
}

void mt_store_dataset_list_free(mt_store_dataset_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].path);
        free(l->items[i].sha256);
        free(l->items[i].format);
        free(l->items[i].split);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* ---- adapters ---- */

static void first_id(sqlite3_stmt *st, void *ctx) { *(int64_t *)ctx = sqlite3_column_int64(st, 0); }

mt_status mt_store_adapter_add(mt_store *s, const mt_store_adapter_info *info, int64_t *adapter_id, mt_error *err) {
    *adapter_id = 0;
    if (!info->path || !*info->path) return mt_error_set(err, MT_ERR_INVALID, "%s: an adapter needs a path", s->path);
    if (info->rank <= 0)
        return mt_error_set(err, MT_ERR_INVALID, "%s: adapter %s: rank %d must be positive", s->path, info->path,
                            info->rank);
    mt_status rs = mt_st_begin(s, err);
    if (rs != MT_OK) return rs;
    if (info->run_id > 0) rs = mt_st_check_run(s, info->run_id, err);
    /* A run that exports to the same path again (resumed after a kill during its export)
     * replaces its row rather than recording the adapter twice. */
    int64_t existing = 0;
    sqlite3_stmt *st = NULL;
    if (rs == MT_OK && info->run_id > 0)
        rs = mt_st_query(s, "looking up an adapter", first_id, &existing, NULL, err,
                         "SELECT id FROM adapters WHERE run_id = ?1 AND path = ?2 ORDER BY id LIMIT 1", "it",
                         info->run_id, info->path);
    if (rs == MT_OK)
        rs = mt_st_prepare(s,
                           existing ? "UPDATE adapters SET run_id = ?1, path = ?2, base_hash = ?3, rank = ?4, alpha = ?5,"
                                      " targets_json = ?6, thresholds_json = ?7, eval_json = ?8, created = ?9"
                                      " WHERE id = ?10"
                                    : "INSERT INTO adapters (run_id, path, base_hash, rank, alpha, targets_json,"
                                      " thresholds_json, eval_json, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                           &st, err);
    if (rs == MT_OK) {
        if (existing) sqlite3_bind_int64(st, 10, existing);
        mt_st_bind_count(st, 1, info->run_id > 0 ? info->run_id : -1);
        mt_st_bind_text(st, 2, info->path);
        mt_st_bind_text(st, 3, info->base_hash);
        sqlite3_bind_int(st, 4, info->rank);
        sqlite3_bind_double(st, 5, info->alpha);
        mt_st_bind_text(st, 6, info->targets_json);
        mt_st_bind_text(st, 7, info->thresholds_json);
        mt_st_bind_text(st, 8, info->eval_json);
        sqlite3_bind_double(st, 9, mt_st_now());
        char what[300];
        snprintf(what, sizeof what, "adding adapter %.200s", info->path);
        rs = mt_st_step_done(s, st, what, err);
    }
    sqlite3_finalize(st);
    if (rs != MT_OK) {
        mt_st_rollback(s);
        return rs;
    }
    *adapter_id = existing ? existing : sqlite3_last_insert_rowid(s->db);
    rs = mt_st_commit(s, err);
    if (rs != MT_OK) *adapter_id = 0;
    return rs;
}

static void adapter_row(sqlite3_stmt *st, void *ctx) {
    mt_store_adapter_list *out = ctx;
    mt_store_adapter *a = mt_st_grow(&out->items, out->n++, sizeof *out->items);
    a->id = sqlite3_column_int64(st, 0);
    a->run_id = sqlite3_column_int64(st, 1); /* NULL reads as 0: not made by a recorded run */
    a->path = mt_st_col_text(st, 2);
    a->base_hash = mt_st_col_text(st, 3);
    a->rank = sqlite3_column_int(st, 4);
    a->alpha = sqlite3_column_double(st, 5);
    a->targets_json = mt_st_col_text(st, 6);
    a->thresholds_json = mt_st_col_text(st, 7);
    a->eval_json = mt_st_col_text(st, 8);
    a->created = sqlite3_column_double(st, 9);
}

mt_status mt_store_adapters(mt_store *s, int64_t run_id, mt_store_adapter_list *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    mt_status rs = mt_st_query(s, "listing adapters", adapter_row, out, NULL, err,
                               "SELECT id, run_id, path, base_hash, rank, alpha, targets_json, thresholds_json,"
                               " eval_json, created FROM adapters WHERE ?1 = 0 OR run_id = ?1 ORDER BY id",
                               "i", run_id > 0 ? run_id : (int64_t)0);
    if (rs != MT_OK) mt_store_adapter_list_free(out);
    return rs;
}

void mt_store_adapter_list_free(mt_store_adapter_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        mt_store_adapter *a = &l->items[i];
        free(a->path);
        free(a->base_hash);
        free(a->targets_json);
        free(a->thresholds_json);
        free(a->eval_json);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* ---- preference pairs ---- */

static void hash_field(mt_sha256 *h, const char *text) {
    uint64_t n = (uint64_t)strlen(text);
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(n >> (8 * i));
    mt_sha256_update(h, len, sizeof len);
    mt_sha256_update(h, text, (size_t)n);
}

void mt_store_pair_hash(const char *prompt, const char *chosen, const char *rejected, char out[65]) {
    mt_sha256 h;
    mt_sha256_init(&h);
    hash_field(&h, prompt);
    hash_field(&h, chosen);
    hash_field(&h, rejected);
    uint8_t d[32];
    mt_sha256_final(&h, d);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[64] = '\0';
}

mt_status mt_store_pairs_add(mt_store *s, int64_t dataset_id, const mt_store_pair *pairs, size_t n,
                             size_t *n_added, size_t *n_duplicates, mt_error *err) {
    if (n_added) *n_added = 0;
    if (n_duplicates) *n_duplicates = 0;
    for (size_t i = 0; i < n; i++)
        if (!pairs[i].prompt || !pairs[i].chosen || !pairs[i].rejected)
            return mt_error_set(err, MT_ERR_INVALID, "%s: pair %zu of the batch lacks a prompt, chosen or rejected text",
                                s->path, i);
    mt_status rs = mt_st_begin(s, err);
    if (rs != MT_OK) return rs;
    rs = check_dataset(s, dataset_id, err);
    sqlite3_stmt *st = NULL;
    if (rs == MT_OK)
        rs = mt_st_prepare(s,
                           "INSERT INTO pairs (dataset_id, prompt, chosen, rejected, source, label_json, hash)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (dataset_id, hash) DO NOTHING",
                           &st, err);
    size_t added = 0, dups = 0;
    for (size_t i = 0; rs == MT_OK && i < n; i++) {
        char hash[65];
        mt_store_pair_hash(pairs[i].prompt, pairs[i].chosen, pairs[i].rejected, hash);
        sqlite3_bind_int64(st, 1, dataset_id);
        mt_st_bind_text(st, 2, pairs[i].prompt);
        mt_st_bind_text(st, 3, pairs[i].chosen);
        mt_st_bind_text(st, 4, pairs[i].rejected);
        mt_st_bind_text(st, 5, pairs[i].source);
        mt_st_bind_text(st, 6, pairs[i].label_json);
        mt_st_bind_text(st, 7, hash);
        rs = mt_st_step_done(s, st, "adding a preference pair", err);
        if (rs != MT_OK) mt_error_prefix(err, "pair %zu of the batch: ", i);
        if (sqlite3_changes(s->db) == 1)
            added++;
        else
            dups++;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (rs != MT_OK) {
        mt_st_rollback(s);
        return rs;
    }
    rs = mt_st_commit(s, err);
    if (rs == MT_OK) {
        if (n_added) *n_added = added;
        if (n_duplicates) *n_duplicates = dups;
    }
    return rs;
}

mt_status mt_store_pairs_count(mt_store *s, int64_t dataset_id, int64_t *count, mt_error *err) {
    *count = 0;
    return mt_st_query(s, "counting pairs", first_id, count, NULL, err, "SELECT count(*) FROM pairs WHERE dataset_id = ?1",
                       "i", dataset_id);
}

static void pair_row(sqlite3_stmt *st, void *ctx) {
    mt_store_pair_list *out = ctx;
    mt_store_pair *p = mt_st_grow(&out->items, out->n++, sizeof *out->items);
    p->id = sqlite3_column_int64(st, 0);
    p->prompt = mt_st_col_text(st, 1);
    p->chosen = mt_st_col_text(st, 2);
    p->rejected = mt_st_col_text(st, 3);
    p->source = mt_st_col_text(st, 4);
    p->label_json = mt_st_col_text(st, 5);
}

mt_status mt_store_pairs_get(mt_store *s, int64_t dataset_id, int64_t offset, int64_t limit,
                             mt_store_pair_list *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    mt_status rs = mt_st_query(s, "reading pairs", pair_row, out, NULL, err,
                               "SELECT id, prompt, chosen, rejected, source, label_json FROM pairs"
                               " WHERE dataset_id = ?1 ORDER BY id LIMIT ?2 OFFSET ?3",
                               "iii", dataset_id, limit < 0 ? (int64_t)-1 : limit, /* SQLite: a negative LIMIT means none */
                               offset > 0 ? offset : (int64_t)0);
    if (rs != MT_OK) mt_store_pair_list_free(out);
    return rs;
}

void mt_store_pair_list_free(mt_store_pair_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        mt_store_pair *p = &l->items[i];
        /* the list made these copies; the struct's fields are const for the insert direction */
        free((char *)p->prompt);
        free((char *)p->chosen);
        free((char *)p->rejected);
        free((char *)p->source);
        free((char *)p->label_json);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* ---- config diff ---- */

/* Leaves of one run's config as (JSON path, JSON text). Empty objects and arrays count as
 * leaves, so that {} versus {"a": 1} still shows a difference. */
#define CONFIG_LEAVES(param)                                                                                      \
    "SELECT t.fullkey AS k, CASE t.type WHEN 'text' THEN json_quote(t.atom) WHEN 'true' THEN 'true'"             \
    " WHEN 'false' THEN 'false' WHEN 'null' THEN 'null' WHEN 'integer' THEN CAST(t.atom AS TEXT)"                 \
    " WHEN 'real' THEN CAST(t.atom AS TEXT) ELSE t.value END AS v"                                                \
    " FROM runs r, json_tree(r.config_json) t WHERE r.id = " param                                               \
    " AND (t.type NOT IN ('object', 'array') OR t.value IN ('{}', '[]'))"

static void diff_row(sqlite3_stmt *st, void *ctx) {
    mt_store_diff_list *out = ctx;
    mt_store_config_diff *d = mt_st_grow(&out->items, out->n++, sizeof *out->items);
    d->key = mt_st_col_text(st, 0);
    d->a = mt_st_col_text(st, 1);
    d->b = mt_st_col_text(st, 2);
}

mt_status mt_store_config_diff_runs(mt_store *s, int64_t run_a, int64_t run_b, mt_store_diff_list *out,
                                    mt_error *err) {
    memset(out, 0, sizeof *out);
    mt_status rs = mt_st_check_run(s, run_a, err);
    if (rs == MT_OK) rs = mt_st_check_run(s, run_b, err);
    if (rs != MT_OK) return rs;
    rs = mt_st_query(s, "comparing run configs", diff_row, out, NULL, err,
                     "WITH a AS (" CONFIG_LEAVES("?1") "), b AS (" CONFIG_LEAVES("?2") ")"
                     " SELECT k, av, bv FROM ("
                     "  SELECT a.k AS k, a.v AS av, b.v AS bv FROM a LEFT JOIN b ON b.k = a.k"
                     "  UNION ALL"
                     "  SELECT b.k, NULL, b.v FROM b WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.k = b.k)"
                     " ) WHERE av IS NOT bv ORDER BY k",
                     "ii", run_a, run_b);
    if (rs != MT_OK) mt_store_diff_list_free(out);
    return rs;
}

void mt_store_diff_list_free(mt_store_diff_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].a);
        free(l->items[i].b);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}
