/* pairs_edit.c — a person's corrections to a stored pair (the workbench's Pairs page): swap
 * chosen and rejected when the label was the wrong way round, or drop the pair. Each is one
 * transaction that also refreshes the dataset's digest and count, so a DPO run sees the
 * dataset as edited, and a swapped pair gets the content hash of its new order (its cached
 * reference log-probs are keyed by that hash and are recomputed) and a label whose chosen_* and
 * rejected_* keys follow the texts. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-impl.h"

/* The label of a swapped pair: its "chosen_*" and "rejected_*" keys (a served pair's response
 * ids, models, adapter versions) trade places with the texts they describe, and "relabelled"
 * says it happened. malloc'ed JSON; NULL when the label is not a JSON object. */
static char *swapped_label(const char *label) {
    cJSON *o = cJSON_Parse(label ? label : "{}");
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON *out = cJSON_CreateObject();
    for (cJSON *k = o->child; k; k = k->next) {
        char name[256];
        if (!strncmp(k->string, "chosen_", 7)) snprintf(name, sizeof name, "rejected_%s", k->string + 7);
        else if (!strncmp(k->string, "rejected_", 9)) snprintf(name, sizeof name, "chosen_%s", k->string + 9);
        else snprintf(name, sizeof name, "%s", k->string);
        if (strcmp(name, "relabelled")) cJSON_AddItemToObject(out, name, cJSON_Duplicate(k, true));
    }
    cJSON_AddStringToObject(out, "relabelled", "swapped");
    char *text = cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    cJSON_Delete(o);
    char *copy = mt_xstrdup(text);
    cJSON_free(text);
    return copy;
}

static mt_status swap(mt_store *s, int64_t ds, int64_t id, const char *annotator, mt_error *err) {
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(
        s, "SELECT prompt, chosen, rejected, label_json FROM pairs WHERE id = ?1 AND dataset_id = ?2", &st, err);
    if (rs != MT_OK) return rs;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, ds);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(st);
        if (rc == SQLITE_DONE)
            return mt_error_set(err, MT_ERR_NOT_FOUND, "no pair %lld in that dataset", (long long)id);
        return mt_st_db_error(s, err, rc, "reading a pair");
    }
    char hash[65];
    mt_store_pair_hash((const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 2),
                       (const char *)sqlite3_column_text(st, 1), hash);
    char *label = swapped_label((const char *)sqlite3_column_text(st, 3));
    sqlite3_finalize(st);
    if (!label) return mt_error_set(err, MT_ERR_FORMAT, "pair %lld: its label is not a JSON object", (long long)id);
    rs = mt_st_prepare(s, "SELECT id FROM pairs WHERE dataset_id = ?1 AND hash = ?2", &st, err);
    if (rs != MT_OK) {
        free(label);
        return rs;
    }
    sqlite3_bind_int64(st, 1, ds);
    mt_st_bind_text(st, 2, hash);
    rc = sqlite3_step(st);
    int64_t other = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) rs = mt_st_db_error(s, err, rc, "looking for a pair");
    else if (other)
        rs = mt_error_set(err, MT_ERR_INVALID, "pair %lld swapped is pair %lld, already in the dataset: drop one",
                          (long long)id, (long long)other);
    if (rs == MT_OK)
        rs = mt_st_prepare(s,
                           "UPDATE pairs SET chosen = rejected, rejected = chosen, hash = ?2,"
                           " annotator = coalesce(?3, annotator), label_json = ?4 WHERE id = ?1",
                           &st, err);
    if (rs == MT_OK) {
        sqlite3_bind_int64(st, 1, id);
        mt_st_bind_text(st, 2, hash);
        mt_st_bind_text(st, 3, annotator);
        mt_st_bind_text(st, 4, label);
        rs = mt_st_step_done(s, st, "swapping a pair", err);
        sqlite3_finalize(st);
    }
    free(label);
    return rs;
}

static mt_status drop(mt_store *s, int64_t ds, int64_t id, mt_error *err) {
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(s, "DELETE FROM pairs WHERE id = ?1 AND dataset_id = ?2", &st, err);
    if (rs != MT_OK) return rs;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, ds);
    rs = mt_st_step_done(s, st, "dropping a pair", err);
    sqlite3_finalize(st);
    if (rs == MT_OK && sqlite3_changes(s->db) == 0)
        rs = mt_error_set(err, MT_ERR_NOT_FOUND, "no pair %lld in that dataset", (long long)id);
    return rs;
}

mt_status mt_store_pair_edit(mt_store *s, const char *dataset, int64_t pair_id, mt_pair_edit op,
                             const char *annotator, mt_error *err) {
    if (op != MT_PAIR_SWAP && op != MT_PAIR_DROP) return mt_error_set(err, MT_ERR_INVALID, "unknown pair edit %d", op);
    int64_t ds = 0;
    mt_status rs = mt_store_pairs_dataset_id(s, dataset, &ds, err);
    if (rs != MT_OK) return rs;
    if ((rs = mt_st_begin(s, err)) != MT_OK) return rs;
    rs = op == MT_PAIR_SWAP ? swap(s, ds, pair_id, annotator, err) : drop(s, ds, pair_id, err);
    if (rs == MT_OK) rs = mt_st_pair_dataset_refresh(s, ds, err);
    if (rs == MT_OK) rs = mt_st_commit(s, err);
    else mt_st_rollback(s);
    return rs;
}
