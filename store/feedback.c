/* feedback.c — from serving back to training: a served completion found again by its response
 * id (migration 3 -> 4 gives `served` the id, every prompt and n), a preference between two of
 * them or ratings of them turned into pairs of a named pair dataset, each with its provenance
 * (source "served", the ids, models and adapter versions in label_json). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-impl.h"

/* Referenced by the migration list in schema.c. Rows written before it have no response_id and
 * cannot be found by feedback (the index skips them). A rating is kept per (dataset, choice):
 * the same completion may be judged for several datasets, and judged again replaces. */
const char mt_st_migration_feedback[] =
    "ALTER TABLE served ADD COLUMN response_id TEXT;"
    "ALTER TABLE served ADD COLUMN prompts_json TEXT"
    "  CONSTRAINT prompts_is_json CHECK (prompts_json IS NULL OR json_valid(prompts_json));"
    "ALTER TABLE served ADD COLUMN n_per_prompt INTEGER;"
    "CREATE INDEX served_by_response ON served(response_id) WHERE response_id IS NOT NULL;"
    "CREATE TABLE served_ratings ("
    "  dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,"
    "  response_id TEXT NOT NULL,"
    "  choice_index INTEGER NOT NULL,"
    "  prompt_hash TEXT NOT NULL,"
    "  rating REAL NOT NULL,"
    "  annotator TEXT,"
    "  time REAL NOT NULL,"
    "  PRIMARY KEY (dataset_id, response_id, choice_index)"
    ") WITHOUT ROWID;"
    "CREATE INDEX served_ratings_by_prompt ON served_ratings(dataset_id, prompt_hash);";

void mt_served_choice_free(mt_served_choice *c) {
    if (!c) return;
    free(c->response_id), free(c->endpoint), free(c->model), free(c->adapter);
    free(c->prompt), free(c->completion), free(c->text);
    memset(c, 0, sizeof *c);
}

static char *json_text(const cJSON *v) {
    char *s = cJSON_PrintUnformatted(v);
    char *o = s ? mt_xstrdup(s) : NULL;
    cJSON_free(s);
    return o;
}

typedef struct served_row {
    bool found;
    int64_t id;
    char *response_id, *endpoint, *model, *adapter, *prompts_json, *completions_json;
    int64_t adapter_version, n_per_prompt;
    int status;
} served_row;

static void served_row_cb(sqlite3_stmt *st, void *ctx) {
    served_row *r = ctx;
    if (r->found) return;
    r->found = true;
    r->id = sqlite3_column_int64(st, 0);
    r->response_id = mt_st_col_text(st, 1);
    r->endpoint = mt_st_col_text(st, 2);
    r->model = mt_st_col_text(st, 3);
    r->adapter = mt_st_col_text(st, 4);
    r->adapter_version = sqlite3_column_int64(st, 5);
    r->status = sqlite3_column_int(st, 6);
    r->prompts_json = mt_st_col_text(st, 7);
    r->completions_json = mt_st_col_text(st, 8);
    r->n_per_prompt = mt_st_col_count(st, 9);
}

static void prompt_hash(mt_pair_format f, const char *prompt, char out[65]) {
    mt_sha256 h;
    mt_sha256_init(&h);
    const char *name = mt_pair_format_name(f);
    mt_sha256_update(&h, name, strlen(name) + 1); /* the NUL separates the form from the text */
    mt_sha256_update(&h, prompt, strlen(prompt));
    uint8_t d[32];
    mt_sha256_final(&h, d);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) out[2 * i] = digits[d[i] >> 4], out[2 * i + 1] = digits[d[i] & 15];
    out[64] = '\0';
}

/* The row's choice `index` as a pair side; false with a reason when the row cannot give one. */
static bool choice_from_row(const served_row *r, int index, mt_served_choice *c, char *why, size_t cap) {
    cJSON *texts = cJSON_Parse(r->completions_json ? r->completions_json : "null");
    cJSON *prompts = cJSON_Parse(r->prompts_json ? r->prompts_json : "null");
    bool ok = false;
    int n_choices = cJSON_IsArray(texts) ? cJSON_GetArraySize(texts) : 0;
    bool chat = r->endpoint && !strcmp(r->endpoint, "/v1/chat/completions");
    if (r->status != 200) {
        snprintf(why, cap, "the request \"%s\" failed (HTTP %d): it has no completion", r->response_id, r->status);
    } else if (index < 0 || index >= n_choices) {
        snprintf(why, cap, "the response \"%s\" has %d choice%s; there is no index %d", r->response_id, n_choices,
                 n_choices == 1 ? "" : "s", index);
    } else if (!cJSON_IsArray(prompts) || !cJSON_IsString(cJSON_GetArrayItem(texts, index))) {
        snprintf(why, cap, "the served request \"%s\" was recorded without its prompt", r->response_id);
    } else {
        const char *text = cJSON_GetArrayItem(texts, index)->valuestring;
        c->text = mt_xstrdup(text);
        if (chat) {
            c->format = MT_PAIR_CONVERSATIONAL;
            c->prompt = json_text(prompts);
            cJSON *a = cJSON_CreateArray(), *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", text);
            cJSON_AddItemToArray(a, m);
            c->completion = json_text(a);
            cJSON_Delete(a);
            ok = true;
        } else {
            int n = r->n_per_prompt > 0 ? (int)r->n_per_prompt : 1;
            const cJSON *p = cJSON_GetArrayItem(prompts, index / n);
            if (!cJSON_IsString(p)) {
                snprintf(why, cap, "the served request \"%s\" was recorded without its prompt", r->response_id);
            } else {
                c->format = MT_PAIR_STANDARD;
                c->prompt = mt_xstrdup(p->valuestring);
                c->completion = mt_xstrdup(text);
                ok = true;
            }
        }
    }
    if (ok) {
        c->row_id = r->id;
        c->response_id = mt_xstrdup(r->response_id);
        c->index = index;
        c->endpoint = r->endpoint ? mt_xstrdup(r->endpoint) : NULL;
        c->model = r->model ? mt_xstrdup(r->model) : NULL;
        c->adapter = r->adapter ? mt_xstrdup(r->adapter) : NULL;
        c->adapter_version = r->adapter_version;
        c->status = r->status;
        prompt_hash(c->format, c->prompt, c->prompt_hash);
    }
    cJSON_Delete(texts);
    cJSON_Delete(prompts);
    return ok;
}

mt_status mt_store_served_choice(mt_store *s, const char *response_id, int index, mt_served_choice *out,
                                 mt_error *err) {
    memset(out, 0, sizeof *out);
    served_row r = {0};
    /* the oldest row of that id: ids are random 64-bit values, so a second is a collision that
     * must not change what an id already fed back meant */
    mt_status rs = mt_st_query(s, "looking up a served request", served_row_cb, &r, NULL, err,
                               "SELECT id, response_id, endpoint, model, adapter, adapter_version, status, prompts_json,"
                               " completions_json, n_per_prompt FROM served WHERE response_id = ?1 ORDER BY id LIMIT 1",
                               "t", response_id);
    if (rs == MT_OK && !r.found)
        rs = mt_error_set(err, MT_ERR_NOT_FOUND, "no served completion has the id \"%s\"", response_id);
    if (rs == MT_OK) {
        char why[512];
        if (!choice_from_row(&r, index, out, why, sizeof why)) {
            mt_served_choice_free(out);
            rs = mt_error_set(err, MT_ERR_INVALID, "%s", why);
        }
    }
    free(r.response_id), free(r.endpoint), free(r.model), free(r.adapter), free(r.prompts_json);
    free(r.completions_json);
    return rs;
}

/* ---- writing pairs ---- */

static void add_side(cJSON *o, const char *side, const mt_served_choice *c) {
    char k[64];
    snprintf(k, sizeof k, "%s_id", side);
    cJSON_AddStringToObject(o, k, c->response_id);
    snprintf(k, sizeof k, "%s_index", side);
    cJSON_AddNumberToObject(o, k, c->index);
    snprintf(k, sizeof k, "%s_model", side);
    if (c->model)
        cJSON_AddStringToObject(o, k, c->model);
    else
        cJSON_AddNullToObject(o, k);
    snprintf(k, sizeof k, "%s_adapter", side);
    if (c->adapter)
        cJSON_AddStringToObject(o, k, c->adapter);
    else
        cJSON_AddNullToObject(o, k);
    snprintf(k, sizeof k, "%s_adapter_version", side);
    cJSON_AddNumberToObject(o, k, (double)c->adapter_version);
}

/* label_json of a served pair. Flat keys: `moetune pairs export` puts label keys beside
 * "prompt", "chosen" and "rejected", so nothing may be called that. */
static char *label_json(const mt_served_choice *ch, const mt_served_choice *rj, const char *kind, double r_ch,
                        double r_rj) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "feedback", kind);
    add_side(o, "chosen", ch);
    add_side(o, "rejected", rj);
    if (!isnan(r_ch)) cJSON_AddNumberToObject(o, "chosen_rating", r_ch);
    if (!isnan(r_rj)) cJSON_AddNumberToObject(o, "rejected_rating", r_rj);
    char *s = json_text(o);
    cJSON_Delete(o);
    return s;
}

static void first_id(sqlite3_stmt *st, void *ctx) { *(int64_t *)ctx = sqlite3_column_int64(st, 0); }

/* One pair into dataset ds inside the caller's transaction; dedup by content hash. */
static mt_status insert_pair(mt_store *s, int64_t ds, const mt_served_choice *ch, const mt_served_choice *rj,
                             const char *label, const char *annotator, bool eval, mt_feedback_result *res,
                             mt_error *err) {
    char hash[65];
    mt_store_pair_hash(ch->prompt, ch->completion, rj->completion, hash);
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(s,
                                 "INSERT INTO pairs (dataset_id, prompt, chosen, rejected, source, label_json, hash,"
                                 " format, split, annotator, created) VALUES (?1, ?2, ?3, ?4, 'served', ?5, ?6, ?7, ?8,"
                                 " ?9, ?10) ON CONFLICT (dataset_id, hash) DO NOTHING",
                                 &st, err);
    if (rs != MT_OK) return rs;
    sqlite3_bind_int64(st, 1, ds);
    mt_st_bind_text(st, 2, ch->prompt);
    mt_st_bind_text(st, 3, ch->completion);
    mt_st_bind_text(st, 4, rj->completion);
    mt_st_bind_text(st, 5, label);
    mt_st_bind_text(st, 6, hash);
    mt_st_bind_text(st, 7, mt_pair_format_name(ch->format));
    mt_st_bind_text(st, 8, eval ? "eval" : "train");
    mt_st_bind_text(st, 9, annotator);
    sqlite3_bind_double(st, 10, mt_st_now());
    rs = mt_st_step_done(s, st, "adding a served preference pair", err);
    bool added = rs == MT_OK && sqlite3_changes(s->db) == 1;
    sqlite3_finalize(st);
    if (rs != MT_OK) return rs;
    int64_t id = 0;
    rs = mt_st_query(s, "looking up a pair", first_id, &id, NULL, err,
                     "SELECT id FROM pairs WHERE dataset_id = ?1 AND hash = ?2", "it", ds, hash);
    if (rs != MT_OK) return rs;
    if (added)
        res->n_added++;
    else
        res->n_duplicates++;
    if (!res->pair_id) res->pair_id = id;
    return MT_OK;
}

static mt_status check_opts(mt_store *s, const mt_feedback_opts *o, mt_error *err) {
    if (!o->dataset || !*o->dataset)
        return mt_error_set(err, MT_ERR_INVALID, "%s: feedback needs a pair dataset name", s->path);
    return MT_OK;
}

mt_status mt_store_feedback_prefer(mt_store *s, const mt_served_choice *chosen, const mt_served_choice *rejected,
                                   const mt_feedback_opts *o, mt_feedback_result *res, mt_error *err) {
    memset(res, 0, sizeof *res);
    MT_TRY(check_opts(s, o, err));
    if (!strcmp(chosen->response_id, rejected->response_id) && chosen->index == rejected->index)
        return mt_error_set(err, MT_ERR_INVALID, "chosen and rejected are the same completion (\"%s\", choice %d)",
                            chosen->response_id, chosen->index);
    if (chosen->format != rejected->format || strcmp(chosen->prompt_hash, rejected->prompt_hash))
        return mt_error_set(err, MT_ERR_INVALID, "\"%s\" and \"%s\" answer different prompts", chosen->response_id,
                            rejected->response_id);
    if (!*chosen->text || !*rejected->text)
        return mt_error_set(err, MT_ERR_INVALID, "the completion of \"%s\" is empty: a pair needs two texts",
                            !*chosen->text ? chosen->response_id : rejected->response_id);
    if (!strcmp(chosen->text, rejected->text))
        return mt_error_set(err, MT_ERR_INVALID, "\"%s\" and \"%s\" have the same text: a pair needs two different ones",
                            chosen->response_id, rejected->response_id);
    char *label = label_json(chosen, rejected, "preference", NAN, NAN);
    mt_status rs = mt_st_begin(s, err);
    if (rs != MT_OK) {
        free(label);
        return rs;
    }
    int64_t ds = 0;
    rs = mt_st_pair_dataset_get_or_create(s, o->dataset, &ds, err);
    if (rs == MT_OK) rs = insert_pair(s, ds, chosen, rejected, label, o->annotator, o->eval, res, err);
    if (rs == MT_OK && res->n_added) rs = mt_st_pair_dataset_refresh(s, ds, err);
    free(label);
    if (rs == MT_OK) rs = mt_st_commit(s, err);
    else mt_st_rollback(s);
    if (rs != MT_OK) {
        memset(res, 0, sizeof *res);
        return rs;
    }
    res->dataset_id = ds;
    return MT_OK;
}

typedef struct rated {
    char *response_id;
    int index;
    double rating;
    char *annotator;
} rated;

typedef struct rated_list {
    rated *items;
    size_t n;
} rated_list;

static void rated_cb(sqlite3_stmt *st, void *ctx) {
    rated_list *l = ctx;
    rated *r = mt_st_grow(&l->items, l->n++, sizeof *l->items);
    r->response_id = mt_st_col_text(st, 0);
    r->index = sqlite3_column_int(st, 1);
    r->rating = sqlite3_column_double(st, 2);
    r->annotator = mt_st_col_text(st, 3);
}

static void same_or_null(const char *a, const char *b, const char **out) {
    *out = a && b && !strcmp(a, b) ? a : NULL;
}

mt_status mt_store_feedback_rate(mt_store *s, const mt_served_choice *c, double rating, const mt_feedback_opts *o,
                                 mt_feedback_result *res, mt_error *err) {
    memset(res, 0, sizeof *res);
    MT_TRY(check_opts(s, o, err));
    if (!isfinite(rating)) return mt_error_set(err, MT_ERR_NUMERIC, "a rating must be a finite number");
    mt_status rs = mt_st_begin(s, err);
    if (rs != MT_OK) return rs;
    int64_t ds = 0;
    rated_list others = {0};
    rs = mt_st_pair_dataset_get_or_create(s, o->dataset, &ds, err);
    if (rs == MT_OK) {
        sqlite3_stmt *st;
        rs = mt_st_prepare(s,
                           "INSERT INTO served_ratings (dataset_id, response_id, choice_index, prompt_hash, rating,"
                           " annotator, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                           " ON CONFLICT (dataset_id, response_id, choice_index) DO UPDATE SET rating = excluded.rating,"
                           " annotator = excluded.annotator, time = excluded.time",
                           &st, err);
        if (rs == MT_OK) {
            sqlite3_bind_int64(st, 1, ds);
            mt_st_bind_text(st, 2, c->response_id);
            sqlite3_bind_int(st, 3, c->index);
            mt_st_bind_text(st, 4, c->prompt_hash);
            sqlite3_bind_double(st, 5, rating);
            mt_st_bind_text(st, 6, o->annotator);
            sqlite3_bind_double(st, 7, mt_st_now());
            rs = mt_st_step_done(s, st, "recording a rating", err);
            sqlite3_finalize(st);
        }
    }
    if (rs == MT_OK)
        rs = mt_st_query(s, "reading ratings", rated_cb, &others, NULL, err,
                         "SELECT response_id, choice_index, rating, annotator FROM served_ratings"
                         " WHERE dataset_id = ?1 AND prompt_hash = ?2 AND rating <> ?3"
                         " AND NOT (response_id = ?4 AND choice_index = ?5) ORDER BY time, response_id, choice_index",
                         "itrti", ds, c->prompt_hash, rating, c->response_id, (int64_t)c->index);
    for (size_t i = 0; rs == MT_OK && i < others.n; i++) {
        mt_served_choice other;
        mt_error e2 = {0};
        /* a rated row is never deleted by moetune; one that fails to read back pairs with nothing */
        if (mt_store_served_choice(s, others.items[i].response_id, others.items[i].index, &other, &e2) != MT_OK) {
            mt_served_choice_free(&other);
            continue;
        }
        bool usable = other.format == c->format && !strcmp(other.prompt_hash, c->prompt_hash) && *other.text &&
                      *c->text && strcmp(other.text, c->text);
        if (usable) {
            bool mine = rating > others.items[i].rating;
            const mt_served_choice *ch = mine ? c : &other, *rj = mine ? &other : c;
            double r_ch = mine ? rating : others.items[i].rating, r_rj = mine ? others.items[i].rating : rating;
            const char *annot;
            same_or_null(o->annotator, others.items[i].annotator, &annot);
            char *label = label_json(ch, rj, "rating", r_ch, r_rj);
            rs = insert_pair(s, ds, ch, rj, label, annot, o->eval, res, err);
            free(label);
        }
        mt_served_choice_free(&other);
    }
    for (size_t i = 0; i < others.n; i++) free(others.items[i].response_id), free(others.items[i].annotator);
    free(others.items);
    if (rs == MT_OK && res->n_added) rs = mt_st_pair_dataset_refresh(s, ds, err);
    if (rs == MT_OK) rs = mt_st_commit(s, err);
    else mt_st_rollback(s);
    if (rs != MT_OK) {
        memset(res, 0, sizeof *res);
        return rs;
    }
    res->dataset_id = ds;
    return MT_OK;
}
