/* pairs.c — preference pairs in the store: parsing the JSONL forms people already have (TRL's
 * standard, conversational and implicit-prompt forms), named pair datasets, imports that are one
 * transaction with provenance, dedup by content hash and a split by hash, listing, stats, export,
 * and the cache of reference log-probs per pair that lets a DPO run skip pairs it has seen. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-impl.h"

/* Referenced by the migration list in schema.c. A pair dataset is a `datasets` row with a name
 * (path "pairs:<name>", format "preference", sha256 = digest of its pair hashes); each import
 * is a `pair_imports` row carrying the file, its hash, the counts and every refused line; the
 * new `pairs` columns carry the form, split, score, annotator and the line it came from. The
 * reference cache is keyed by content, not by pair id, so that it survives re-imports, edits
 * of other lines, and the same pair in another dataset. */
const char mt_st_migration_pairs[] =
    "ALTER TABLE datasets ADD COLUMN name TEXT;"
    "CREATE UNIQUE INDEX datasets_by_name ON datasets(name) WHERE name IS NOT NULL;"
    "CREATE TABLE pair_imports ("
    "  id INTEGER PRIMARY KEY,"
    "  dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,"
    "  file TEXT NOT NULL,"
    "  file_sha256 TEXT NOT NULL,"
    "  time REAL NOT NULL,"
    "  strict INTEGER NOT NULL,"
    "  eval_fraction REAL NOT NULL,"
    "  n_lines INTEGER NOT NULL,"
    "  n_added INTEGER NOT NULL,"
    "  n_duplicates INTEGER NOT NULL,"
    "  n_refused INTEGER NOT NULL,"
    "  refused_json TEXT NOT NULL DEFAULT '[]' CONSTRAINT refused_is_json CHECK (json_valid(refused_json))"
    ");"
    "CREATE INDEX pair_imports_by_dataset ON pair_imports(dataset_id, id);"
    "ALTER TABLE pairs ADD COLUMN format TEXT NOT NULL DEFAULT 'standard'"
    "  CONSTRAINT format_is_known CHECK (format IN ('standard','conversational','implicit','implicit_conversational'));"
    "ALTER TABLE pairs ADD COLUMN split TEXT NOT NULL DEFAULT 'train'"
    "  CONSTRAINT split_is_known CHECK (split IN ('train','eval'));"
    "ALTER TABLE pairs ADD COLUMN score REAL;"
    "ALTER TABLE pairs ADD COLUMN annotator TEXT;"
    "ALTER TABLE pairs ADD COLUMN import_id INTEGER REFERENCES pair_imports(id) ON DELETE SET NULL;"
    "ALTER TABLE pairs ADD COLUMN line INTEGER;"
    "ALTER TABLE pairs ADD COLUMN created REAL;"
    "CREATE TABLE ref_logps ("
    "  base_hash TEXT NOT NULL,"
    "  adapter_hash TEXT NOT NULL DEFAULT '',"
    "  tokenizer_hash TEXT NOT NULL,"
    "  truncation TEXT NOT NULL,"
    "  pair_hash TEXT NOT NULL,"
    "  chosen_logp REAL NOT NULL,"
    "  rejected_logp REAL NOT NULL,"
    "  chosen_tokens INTEGER NOT NULL,"
    "  rejected_tokens INTEGER NOT NULL,"
    "  created REAL NOT NULL,"
    "  PRIMARY KEY (base_hash, adapter_hash, tokenizer_hash, truncation, pair_hash)"
    ") WITHOUT ROWID;";

static const char *const format_names[MT_PAIR_FORMAT_COUNT] = {"standard", "conversational", "implicit",
                                                                "implicit_conversational"};

const char *mt_pair_format_name(mt_pair_format f) {
    return (unsigned)f < MT_PAIR_FORMAT_COUNT ? format_names[f] : "unknown";
}

static mt_pair_format format_from_name(const char *s) {
    for (int i = 0; i < MT_PAIR_FORMAT_COUNT; i++)
        if (s && !strcmp(s, format_names[i])) return (mt_pair_format)i;
    return MT_PAIR_STANDARD;
}

/* ====================================== parsing a line ====================================== */

void mt_pair_parsed_free(mt_pair_parsed *p) {
    if (!p) return;
    free(p->prompt);
    free(p->chosen);
    free(p->rejected);
    free(p->source);
    free(p->annotator);
    free(p->label_json);
    memset(p, 0, sizeof *p);
}

static bool refuse(char *reason, size_t cap, const char *fmt, const char *arg) {
    snprintf(reason, cap, fmt, arg);
    return false;
}

/* A message list: a non-empty array of objects with string "role" and "content". */
static bool check_messages(const cJSON *a, const char *field, char *reason, size_t cap) {
    if (cJSON_GetArraySize(a) == 0) return refuse(reason, cap, "\"%s\" is an empty message list", field);
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, a) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !cJSON_IsString(content)) {
            snprintf(reason, cap, "\"%s\"[%d]: a message needs string \"role\" and \"content\"", field, i);
            return false;
        }
        i++;
    }
    return true;
}

/* Length in code points of a UTF-8 prefix, and the byte offset of code point k. */
static size_t cp_next(const char *s, size_t i) {
    i++;
    while (((unsigned char)s[i] & 0xC0) == 0x80) i++;
    return i;
}

/* TRL's extract_prompt on strings, code point by code point as Python indexes str: idx is the
 * first position where chosen and rejected differ, moved back by one when the character before
 * it is a space (so the completions keep their leading space); when one string is a prefix of
 * the other TRL's loop ends with idx at the last index of the shorter one, and so does this. */
static bool split_implicit_text(const char *c, const char *r, size_t *cut_c, size_t *cut_r) {
    size_t ic = 0, ir = 0, prev_c = 0;
    bool differ = false, have_prev = false;
    size_t last_c = 0, last_r = 0; /* byte offsets of the last code point compared */
    while (c[ic] && r[ir]) {
        size_t nc = cp_next(c, ic), nr = cp_next(r, ir);
        if (nc - ic != nr - ir || memcmp(c + ic, r + ir, nc - ic)) {
            differ = true;
            break;
        }
        last_c = ic, last_r = ir;
        prev_c = ic;
        have_prev = true;
        ic = nc, ir = nr;
    }
    if (!differ) {
        /* no difference within the shorter string: idx = len(shorter) − 1 */
        if (!have_prev) return false;
        *cut_c = last_c;
        *cut_r = last_r;
        return last_c > 0;
    }
    if (!have_prev) return false; /* nothing shared: no implicit prompt */
    if (c[prev_c] == ' ') {
        ic = prev_c;
        ir = prev_c; /* the shared prefix is byte-identical */
    }
    *cut_c = ic;
    *cut_r = ir;
    return ic > 0;
}

static char *dup_range(const char *s, size_t n) {
    char *o = mt_xmalloc(n + 1);
    memcpy(o, s, n);
    o[n] = '\0';
    return o;
}

/* the items [from, to) of a JSON array as a new unformatted JSON array text */
static char *array_slice_json(const cJSON *a, int from, int to) {
    cJSON *out = cJSON_CreateArray();
    for (int i = from; i < to; i++) cJSON_AddItemToArray(out, cJSON_Duplicate(cJSON_GetArrayItem(a, i), true));
    char *s = cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    char *o = mt_xstrdup(s);
    cJSON_free(s);
    return o;
}

static char *json_text(const cJSON *v) {
    char *s = cJSON_PrintUnformatted(v);
    char *o = mt_xstrdup(s);
    cJSON_free(s);
    return o;
}

/* Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF): tokenizers
 * and chat templates downstream assume it, so a bad byte is refused here with its line. */
static bool utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    while (p < e) {
        unsigned c = *p;
        size_t k = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 9;
        if (k == 9 || (size_t)(e - p) < k + 1) return false;
        uint32_t cp = k == 0 ? c : k == 1 ? c & 0x1F : k == 2 ? c & 0x0F : c & 0x07;
        for (size_t i = 1; i <= k; i++) {
            if ((p[i] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (p[i] & 0x3F);
        }
        static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        p += k + 1;
    }
    return true;
}

static const char *const known_keys[] = {"prompt", "chosen", "rejected", "score", "label_source", "source",
                                         "annotator"};

bool mt_pairs_parse_line(const char *line, size_t len, mt_pair_parsed *out, char *reason, size_t cap) {
    memset(out, 0, sizeof *out);
    out->score = NAN;
    if (!utf8_valid(line, len)) return refuse(reason, cap, "%s", "not valid UTF-8");
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(line, len, &end, false);
    if (!o) return refuse(reason, cap, "%s", "not valid JSON");
    for (; end && end < line + len; end++)
        if (*end != ' ' && *end != '\t' && *end != '\r') {
            cJSON_Delete(o);
            return refuse(reason, cap, "%s", "not valid JSON (text after the object)");
        }
    bool ok = false;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "chosen");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "rejected");
    const cJSON *score = cJSON_GetObjectItemCaseSensitive(o, "score");
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(o, "label_source");
    if (!src) src = cJSON_GetObjectItemCaseSensitive(o, "source");
    const cJSON *ann = cJSON_GetObjectItemCaseSensitive(o, "annotator");
    if (!cJSON_IsObject(o)) {
        refuse(reason, cap, "%s", "not a JSON object");
        goto done;
    }
    if (!c || !r) {
        refuse(reason, cap, "missing \"%s\"", !c ? "chosen" : "rejected");
        goto done;
    }
    bool conv = cJSON_IsArray(c);
    if (conv != cJSON_IsArray(r) || (!conv && (!cJSON_IsString(c) || !cJSON_IsString(r)))) {
        refuse(reason, cap, "%s", "\"chosen\" and \"rejected\" must both be strings or both message lists");
        goto done;
    }
    if (p && !cJSON_IsNull(p) && (conv ? !cJSON_IsArray(p) : !cJSON_IsString(p))) {
        refuse(reason, cap, "\"prompt\" must be %s like \"chosen\"", conv ? "a message list" : "a string");
        goto done;
    }
    if (score && !cJSON_IsNull(score) && (!cJSON_IsNumber(score) || !isfinite(score->valuedouble))) {
        refuse(reason, cap, "%s", "\"score\" must be a finite number");
        goto done;
    }
    if ((src && !cJSON_IsNull(src) && !cJSON_IsString(src)) || (ann && !cJSON_IsNull(ann) && !cJSON_IsString(ann))) {
        refuse(reason, cap, "%s", "\"label_source\", \"source\" and \"annotator\" must be strings");
        goto done;
    }
    bool implicit = !p || cJSON_IsNull(p);
    if (conv) {
        if (!check_messages(c, "chosen", reason, cap) || !check_messages(r, "rejected", reason, cap)) goto done;
        if (!implicit && cJSON_GetArraySize(p) > 0 && !check_messages(p, "prompt", reason, cap)) goto done;
        if (implicit) {
            /* the shared leading messages are the prompt (TRL's extract_prompt on lists) */
            int nc = cJSON_GetArraySize(c), nr = cJSON_GetArraySize(r), n = nc < nr ? nc : nr, idx = 0;
            bool differ = false;
            for (idx = 0; idx < n; idx++)
                if (!cJSON_Compare(cJSON_GetArrayItem(c, idx), cJSON_GetArrayItem(r, idx), true)) {
                    differ = true;
                    break;
                }
            if (!differ) idx = n - 1;
            if (idx <= 0) {
                refuse(reason, cap, "%s", "no \"prompt\", and chosen and rejected share no leading messages");
                goto done;
            }
            out->prompt = array_slice_json(c, 0, idx);
            out->chosen = array_slice_json(c, idx, nc);
            out->rejected = array_slice_json(r, idx, nr);
            out->format = MT_PAIR_IMPLICIT_CONVERSATIONAL;
        } else {
            out->prompt = json_text(p);
            out->chosen = json_text(c);
            out->rejected = json_text(r);
            out->format = MT_PAIR_CONVERSATIONAL;
        }
    } else {
        const char *cs = c->valuestring, *rs = r->valuestring;
        if (implicit) {
            size_t kc, kr;
            if (!split_implicit_text(cs, rs, &kc, &kr)) {
                refuse(reason, cap, "%s", "no \"prompt\", and chosen and rejected share no prefix");
                goto done;
            }
            out->prompt = dup_range(cs, kc);
            out->chosen = mt_xstrdup(cs + kc);
            out->rejected = mt_xstrdup(rs + kr);
            out->format = MT_PAIR_IMPLICIT;
        } else {
            out->prompt = mt_xstrdup(p->valuestring);
            out->chosen = mt_xstrdup(cs);
            out->rejected = mt_xstrdup(rs);
            out->format = MT_PAIR_STANDARD;
        }
    }
    if (!*out->chosen || !*out->rejected || !strcmp(out->chosen, "[]") || !strcmp(out->rejected, "[]")) {
        refuse(reason, cap, "empty \"%s\"", !*out->chosen || !strcmp(out->chosen, "[]") ? "chosen" : "rejected");
        goto done;
    }
    if (!strcmp(out->chosen, out->rejected)) {
        refuse(reason, cap, "%s", "\"chosen\" and \"rejected\" are identical: the pair teaches nothing");
        goto done;
    }
    if (score && cJSON_IsNumber(score)) out->score = score->valuedouble;
    if (cJSON_IsString(src)) out->source = mt_xstrdup(src->valuestring);
    if (cJSON_IsString(ann)) out->annotator = mt_xstrdup(ann->valuestring);
    /* every other key travels along as label metadata, so nothing in the file is lost */
    cJSON *extra = cJSON_CreateObject();
    const cJSON *kv;
    cJSON_ArrayForEach(kv, o) {
        bool known = false;
        for (size_t i = 0; i < sizeof known_keys / sizeof known_keys[0]; i++) known |= !strcmp(kv->string, known_keys[i]);
        if (!known) cJSON_AddItemToObject(extra, kv->string, cJSON_Duplicate(kv, true));
    }
    if (cJSON_GetArraySize(extra) > 0) out->label_json = json_text(extra);
    cJSON_Delete(extra);
    mt_store_pair_hash(out->prompt, out->chosen, out->rejected, out->hash);
    ok = true;
done:
    cJSON_Delete(o);
    if (!ok) {
        mt_pair_parsed_free(out);
        out->score = NAN;
    }
    return ok;
}

bool mt_pairs_is_eval(const char *hash, double eval_fraction) {
    /* the first 16 hex digits as a fraction of 2^64: uniform over content, fixed per pair */
    uint64_t v = 0;
    for (int i = 0; i < 16 && hash[i]; i++) {
        char ch = hash[i];
        v = v << 4 | (uint64_t)(ch <= '9' ? ch - '0' : ch - 'a' + 10);
    }
    return (double)v / 18446744073709551616.0 < eval_fraction;
}

/* ======================================== datasets ======================================== */

mt_status mt_store_pairs_dataset_id(mt_store *s, const char *name, int64_t *id, mt_error *err) {
    *id = 0;
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(s, "SELECT id FROM datasets WHERE name = ?1", &st, err);
    if (rs != MT_OK) return rs;
    mt_st_bind_text(st, 1, name);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW) return MT_OK;
    if (rc == SQLITE_DONE) return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no pair dataset named \"%s\"", s->path, name);
    return mt_st_db_error(s, err, rc, "looking up a pair dataset");
}

mt_status mt_st_pair_dataset_get_or_create(mt_store *s, const char *name, int64_t *id, mt_error *err) {
    mt_error e2 = {0};
    mt_status rs = mt_store_pairs_dataset_id(s, name, id, &e2);
    if (rs != MT_ERR_NOT_FOUND) {
        if (rs != MT_OK) *err = e2;
        return rs;
    }
    sqlite3_stmt *st;
    rs = mt_st_prepare(s,
                       "INSERT INTO datasets (path, sha256, format, n_docs, n_tokens, added, name)"
                       " VALUES ('pairs:' || ?1, ?2, 'preference', 0, NULL, ?3, ?1)",
                       &st, err);
    if (rs != MT_OK) return rs;
    char empty[65];
    mt_sha256_hex("", 0, empty);
    mt_st_bind_text(st, 1, name);
    mt_st_bind_text(st, 2, empty);
    sqlite3_bind_double(st, 3, mt_st_now());
    rs = mt_st_step_done(s, st, "creating a pair dataset", err);
    sqlite3_finalize(st);
    if (rs == MT_OK) *id = sqlite3_last_insert_rowid(s->db);
    return rs;
}

mt_status mt_st_pair_dataset_refresh(mt_store *s, int64_t id, mt_error *err) {
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(s, "SELECT hash FROM pairs WHERE dataset_id = ?1 ORDER BY hash", &st, err);
    if (rs != MT_OK) return rs;
    sqlite3_bind_int64(st, 1, id);
    mt_sha256 h;
    mt_sha256_init(&h);
    int64_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        mt_sha256_update(&h, sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0));
        n++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return mt_st_db_error(s, err, rc, "hashing a pair dataset");
    uint8_t d[32];
    mt_sha256_final(&h, d);
    char hex[65];
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) hex[2 * i] = digits[d[i] >> 4], hex[2 * i + 1] = digits[d[i] & 15];
    hex[64] = '\0';
    rs = mt_st_prepare(s, "UPDATE datasets SET sha256 = ?2, n_docs = ?3 WHERE id = ?1", &st, err);
    if (rs != MT_OK) return rs;
    sqlite3_bind_int64(st, 1, id);
    mt_st_bind_text(st, 2, hex);
    sqlite3_bind_int64(st, 3, n);
    rs = mt_st_step_done(s, st, "updating a pair dataset", err);
    sqlite3_finalize(st);
    return rs;
}

/* ========================================= import ========================================= */

void mt_pairs_import_report_free(mt_pairs_import_report *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n_refused; i++) free(r->refused[i].reason), free(r->refused[i].file);
    free(r->refused);
    memset(r, 0, sizeof *r);
}

static void add_refusal(mt_pairs_import_report *r, size_t *cap, const char *file, int64_t line, const char *why) {
    if (r->n_refused == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        r->refused = mt_xrealloc(r->refused, *cap * sizeof *r->refused);
    }
    r->refused[r->n_refused++] = (mt_pairs_refusal){mt_xstrdup(file), line, mt_xstrdup(why)};
}

/* [{"line": N, "reason": "..."}, ...] of an import */
static char *refusals_json(const mt_pairs_import_report *r) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < r->n_refused; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "line", (double)r->refused[i].line);
        cJSON_AddStringToObject(o, "reason", r->refused[i].reason);
        cJSON_AddItemToArray(a, o);
    }
    char *s = json_text(a);
    cJSON_Delete(a);
    return s;
}

typedef struct parsed_line {
    mt_pair_parsed p;
    int64_t line;
} parsed_line;

static mt_status write_import(mt_store *s, const char *path, const char *file_hash, const mt_pairs_import_opts *o,
                              parsed_line *lines, size_t n, mt_pairs_import_report *rep, mt_error *err) {
    mt_status rs = mt_st_begin(s, err);
    if (rs != MT_OK) return rs;
    int64_t ds = 0, imp = 0;
    double now = mt_st_now();
    sqlite3_stmt *st = NULL;
    rs = mt_st_pair_dataset_get_or_create(s, o->dataset, &ds, err);
    if (rs == MT_OK)
        rs = mt_st_prepare(s,
                           "INSERT INTO pair_imports (dataset_id, file, file_sha256, time, strict, eval_fraction,"
                           " n_lines, n_added, n_duplicates, n_refused) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, 0)",
                           &st, err);
    if (rs == MT_OK) {
        sqlite3_bind_int64(st, 1, ds);
        mt_st_bind_text(st, 2, path);
        mt_st_bind_text(st, 3, file_hash);
        sqlite3_bind_double(st, 4, now);
        sqlite3_bind_int(st, 5, o->strict);
        sqlite3_bind_double(st, 6, o->eval_fraction);
        sqlite3_bind_int64(st, 7, (int64_t)rep->n_lines);
        rs = mt_st_step_done(s, st, "recording an import", err);
        imp = sqlite3_last_insert_rowid(s->db);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rs == MT_OK)
        rs = mt_st_prepare(s,
                           "INSERT INTO pairs (dataset_id, prompt, chosen, rejected, source, label_json, hash, format,"
                           " split, score, annotator, import_id, line, created)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                           " ON CONFLICT (dataset_id, hash) DO NOTHING",
                           &st, err);
    for (size_t i = 0; rs == MT_OK && i < n; i++) {
        const mt_pair_parsed *p = &lines[i].p;
        bool eval = mt_pairs_is_eval(p->hash, o->eval_fraction);
        sqlite3_bind_int64(st, 1, ds);
        mt_st_bind_text(st, 2, p->prompt);
        mt_st_bind_text(st, 3, p->chosen);
        mt_st_bind_text(st, 4, p->rejected);
        mt_st_bind_text(st, 5, p->source);
        mt_st_bind_text(st, 6, p->label_json);
        mt_st_bind_text(st, 7, p->hash);
        mt_st_bind_text(st, 8, mt_pair_format_name(p->format));
        mt_st_bind_text(st, 9, eval ? "eval" : "train");
        if (isnan(p->score))
            sqlite3_bind_null(st, 10);
        else
            sqlite3_bind_double(st, 10, p->score);
        mt_st_bind_text(st, 11, p->annotator);
        sqlite3_bind_int64(st, 12, imp);
        sqlite3_bind_int64(st, 13, lines[i].line);
        sqlite3_bind_double(st, 14, now);
        rs = mt_st_step_done(s, st, "adding a preference pair", err);
        if (rs != MT_OK) {
            mt_error_prefix(err, "%s:%lld: ", path, (long long)lines[i].line);
            break;
        }
        if (sqlite3_changes(s->db) == 1) {
            rep->n_added++;
            rep->n_by_format[p->format]++;
            if (eval)
                rep->n_eval++;
            else
                rep->n_train++;
        } else {
            rep->n_duplicates++;
        }
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rs == MT_OK) rs = mt_st_prepare(s,
                                        "UPDATE pair_imports SET n_added = ?2, n_duplicates = ?3, n_refused = ?4,"
                                        " refused_json = ?5 WHERE id = ?1",
                                        &st, err);
    if (rs == MT_OK) {
        char *rj = refusals_json(rep);
        sqlite3_bind_int64(st, 1, imp);
        sqlite3_bind_int64(st, 2, (int64_t)rep->n_added);
        sqlite3_bind_int64(st, 3, (int64_t)rep->n_duplicates);
        sqlite3_bind_int64(st, 4, (int64_t)rep->n_refused);
        mt_st_bind_text(st, 5, rj);
        free(rj);
        rs = mt_st_step_done(s, st, "recording an import", err);
    }
    sqlite3_finalize(st);
    if (rs == MT_OK) rs = mt_st_pair_dataset_refresh(s, ds, err);
    if (rs != MT_OK) {
        mt_st_rollback(s);
        return rs;
    }
    rs = mt_st_commit(s, err);
    if (rs == MT_OK) {
        rep->dataset_id = ds;
        rep->import_id = imp;
    }
    return rs;
}

mt_status mt_store_pairs_import(mt_store *s, const char *path, const mt_pairs_import_opts *o,
                                mt_pairs_import_report *rep, mt_error *err) {
    memset(rep, 0, sizeof *rep);
    if (!o->dataset || !*o->dataset) return mt_error_set(err, MT_ERR_INVALID, "pairs import: a dataset name is needed");
    if (!(o->eval_fraction >= 0 && o->eval_fraction < 1))
        return mt_error_set(err, MT_ERR_INVALID, "eval fraction %g is not in [0, 1)", o->eval_fraction);
    char *text = NULL;
    size_t len = 0;
    mt_status rs = mt_read_file(path, &text, &len, err);
    if (rs != MT_OK) return rs;
    char file_hash[65];
    mt_sha256_hex(text, len, file_hash);

    /* parse every line before touching the store: a strict import that fails leaves no trace,
     * and the write transaction holds the lock only for the inserts */
    parsed_line *lines = NULL;
    size_t n = 0, cap = 0, rcap = 0;
    int64_t lineno = 0;
    for (size_t at = 0; at < len;) {
        size_t end = at;
        while (end < len && text[end] != '\n') end++;
        size_t stop = end > at && text[end - 1] == '\r' ? end - 1 : end;
        lineno++;
        bool blank = true;
        for (size_t k = at; k < stop; k++) blank &= text[k] == ' ' || text[k] == '\t';
        if (!blank) {
            rep->n_lines++;
            if (n == cap) lines = mt_xrealloc(lines, (cap = cap ? 2 * cap : 64) * sizeof *lines);
            char why[256];
            if (mt_pairs_parse_line(text + at, stop - at, &lines[n].p, why, sizeof why)) {
                lines[n++].line = lineno;
            } else {
                add_refusal(rep, &rcap, path, lineno, why);
            }
        }
        at = end + 1;
    }
    free(text);
    if (rep->n_refused > 0 && o->strict) {
        rs = mt_error_set(err, MT_ERR_FORMAT, "%s:%lld: %s (--strict: nothing imported; %zu line%s refused)", path,
                          (long long)rep->refused[0].line, rep->refused[0].reason, rep->n_refused,
                          rep->n_refused == 1 ? "" : "s");
    } else if (n == 0) {
        rs = mt_error_set(err, MT_ERR_FORMAT, "%s: no preference pair in the file (%zu line%s refused)", path,
                          rep->n_refused, rep->n_refused == 1 ? "" : "s");
    } else {
        rs = write_import(s, path, file_hash, o, lines, n, rep, err);
    }
    if (rs != MT_OK) {
        /* the refusals stay in the report so the caller can show them */
        rep->n_added = rep->n_duplicates = rep->n_train = rep->n_eval = 0;
        memset(rep->n_by_format, 0, sizeof rep->n_by_format);
    }
    for (size_t i = 0; i < n; i++) mt_pair_parsed_free(&lines[i].p);
    free(lines);
    return rs;
}

/* ======================================= reading back ======================================= */

void mt_pair_record_list_free(mt_pair_record_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        mt_pair_record *r = &l->items[i];
        free(r->prompt), free(r->chosen), free(r->rejected), free(r->source), free(r->annotator);
        free(r->label_json), free(r->file);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

mt_status mt_store_pairs_list(mt_store *s, const mt_pairs_query *q, mt_pair_record_list *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    int64_t ds;
    mt_status rs = mt_store_pairs_dataset_id(s, q->dataset, &ds, err);
    if (rs != MT_OK) return rs;
    if (q->split && strcmp(q->split, "train") && strcmp(q->split, "eval"))
        return mt_error_set(err, MT_ERR_INVALID, "split \"%s\": use train or eval", q->split);
    sqlite3_stmt *st;
    rs = mt_st_prepare(s,
                       "SELECT p.id, p.format, p.prompt, p.chosen, p.rejected, p.hash, p.split, p.score, p.source,"
                       " p.annotator, p.label_json, i.file, p.line, p.created FROM pairs p"
                       " LEFT JOIN pair_imports i ON i.id = p.import_id"
                       " WHERE p.dataset_id = ?1 AND (?2 IS NULL OR p.split = ?2) ORDER BY p.id LIMIT ?3 OFFSET ?4",
                       &st, err);
    if (rs != MT_OK) return rs;
    sqlite3_bind_int64(st, 1, ds);
    mt_st_bind_text(st, 2, q->split);
    sqlite3_bind_int64(st, 3, q->limit < 0 ? -1 : q->limit);
    sqlite3_bind_int64(st, 4, q->offset > 0 ? q->offset : 0);
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (out->n == cap) out->items = mt_xrealloc(out->items, (cap = cap ? 2 * cap : 64) * sizeof *out->items);
        mt_pair_record *r = &out->items[out->n++];
        memset(r, 0, sizeof *r);
        r->id = sqlite3_column_int64(st, 0);
        r->format = format_from_name((const char *)sqlite3_column_text(st, 1));
        r->prompt = mt_st_col_text(st, 2);
        r->chosen = mt_st_col_text(st, 3);
        r->rejected = mt_st_col_text(st, 4);
        const unsigned char *h = sqlite3_column_text(st, 5);
        snprintf(r->hash, sizeof r->hash, "%s", h ? (const char *)h : "");
        r->eval = sqlite3_column_text(st, 6) && !strcmp((const char *)sqlite3_column_text(st, 6), "eval");
        r->score = mt_st_col_real(st, 7);
        r->source = mt_st_col_text(st, 8);
        r->annotator = mt_st_col_text(st, 9);
        r->label_json = mt_st_col_text(st, 10);
        r->file = mt_st_col_text(st, 11);
        r->line = mt_st_col_count(st, 12);
        r->created = mt_st_col_real(st, 13);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        mt_pair_record_list_free(out);
        return mt_st_db_error(s, err, rc, "reading pairs");
    }
    return MT_OK;
}

char *mt_pair_record_json(const mt_pair_record *r) {
    cJSON *o = cJSON_CreateObject();
    bool conv = r->format == MT_PAIR_CONVERSATIONAL || r->format == MT_PAIR_IMPLICIT_CONVERSATIONAL;
    const char *keys[3] = {"prompt", "chosen", "rejected"};
    const char *vals[3] = {r->prompt, r->chosen, r->rejected};
    for (int k = 0; k < 3; k++) {
        cJSON *v = conv ? cJSON_Parse(vals[k]) : NULL;
        cJSON_AddItemToObject(o, keys[k], v ? v : cJSON_CreateString(vals[k]));
    }
    if (!isnan(r->score)) cJSON_AddNumberToObject(o, "score", r->score);
    if (r->source) cJSON_AddStringToObject(o, "label_source", r->source);
    if (r->annotator) cJSON_AddStringToObject(o, "annotator", r->annotator);
    cJSON *extra = r->label_json ? cJSON_Parse(r->label_json) : NULL;
    if (cJSON_IsObject(extra)) {
        cJSON *kv = extra->child;
        while (kv) {
            cJSON *next = kv->next;
            if (!cJSON_GetObjectItemCaseSensitive(o, kv->string))
                cJSON_AddItemToObject(o, kv->string, cJSON_DetachItemViaPointer(extra, kv));
            kv = next;
        }
    }
    cJSON_Delete(extra);
    char *s = json_text(o);
    cJSON_Delete(o);
    return s;
}

/* ========================================== stats ========================================== */

void mt_pairs_stats_free(mt_pairs_stats *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n_refused_listed; i++) free(st->refused[i].file), free(st->refused[i].reason);
    free(st->refused);
    memset(st, 0, sizeof *st);
}

mt_status mt_store_pairs_stats(mt_store *s, const char *dataset, mt_pairs_stats *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    mt_status rs = mt_store_pairs_dataset_id(s, dataset, &out->dataset_id, err);
    if (rs != MT_OK) return rs;
    sqlite3_stmt *st;
    rs = mt_st_prepare(s, "SELECT format, split, count(*) FROM pairs WHERE dataset_id = ?1 GROUP BY format, split",
                       &st, err);
    if (rs != MT_OK) return rs;
    sqlite3_bind_int64(st, 1, out->dataset_id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t c = sqlite3_column_int64(st, 2);
        out->n_pairs += c;
        out->n_by_format[format_from_name((const char *)sqlite3_column_text(st, 0))] += c;
        if (!strcmp((const char *)sqlite3_column_text(st, 1), "eval"))
            out->n_eval += c;
        else
            out->n_train += c;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return mt_st_db_error(s, err, rc, "counting pairs");
    /* one row per refused line of every import, in import and line order */
    rs = mt_st_prepare(s,
                       "SELECT i.file, json_extract(r.value, '$.line'), json_extract(r.value, '$.reason')"
                       " FROM pair_imports i, json_each(i.refused_json) r WHERE i.dataset_id = ?1"
                       " ORDER BY i.id, r.key",
                       &st, err);
    if (rs != MT_OK) return rs;
    sqlite3_bind_int64(st, 1, out->dataset_id);
    size_t cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (out->n_refused_listed == cap)
            out->refused = mt_xrealloc(out->refused, (cap = cap ? 2 * cap : 16) * sizeof *out->refused);
        out->refused[out->n_refused_listed++] =
            (mt_pairs_refusal){mt_st_col_text(st, 0), sqlite3_column_int64(st, 1), mt_st_col_text(st, 2)};
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        mt_pairs_stats_free(out);
        return mt_st_db_error(s, err, rc, "reading import records");
    }
    rs = mt_st_prepare(s,
                       "SELECT count(*), coalesce(sum(n_lines), 0), coalesce(sum(n_duplicates), 0),"
                       " coalesce(sum(n_refused), 0) FROM pair_imports WHERE dataset_id = ?1",
                       &st, err);
    if (rs != MT_OK) {
        mt_pairs_stats_free(out);
        return rs;
    }
    sqlite3_bind_int64(st, 1, out->dataset_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->n_imports = sqlite3_column_int64(st, 0);
        out->n_lines = sqlite3_column_int64(st, 1);
        out->n_duplicates = sqlite3_column_int64(st, 2);
        out->n_refused = sqlite3_column_int64(st, 3);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) {
        mt_pairs_stats_free(out);
        return mt_st_db_error(s, err, rc, "reading import records");
    }
    return MT_OK;
}

mt_status mt_store_pair_datasets(mt_store *s, mt_store_dataset_list *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st;
    mt_status rs = mt_st_prepare(s,
                                 "SELECT id, name, sha256, format, n_docs, n_tokens, added FROM datasets"
                                 " WHERE name IS NOT NULL ORDER BY name",
                                 &st, err);
    if (rs != MT_OK) return rs;
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (out->n == cap) out->items = mt_xrealloc(out->items, (cap = cap ? 2 * cap : 8) * sizeof *out->items);
        mt_store_dataset *d = &out->items[out->n++];
        memset(d, 0, sizeof *d);
        d->id = sqlite3_column_int64(st, 0);
        d->path = mt_st_col_text(st, 1); /* the name, for a pair dataset */
        d->sha256 = mt_st_col_text(st, 2);
        d->format = mt_st_col_text(st, 3);
        d->n_docs = mt_st_col_count(st, 4);
        d->n_tokens = mt_st_col_count(st, 5);
        d->added = sqlite3_column_double(st, 6);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        mt_store_dataset_list_free(out);
        return mt_st_db_error(s, err, rc, "listing pair datasets");
    }
    return MT_OK;
}

/* =================================== reference log-probs =================================== */

size_t mt_ref_truncation_key(char *out, size_t cap, int64_t max_length, int64_t max_prompt_length,
                             int64_t max_completion_length, const char *truncation_mode) {
    int n = snprintf(out, cap, "max_length=%lld;max_prompt_length=%lld;max_completion_length=%lld;mode=%s",
                     (long long)max_length, (long long)max_prompt_length, (long long)max_completion_length,
                     truncation_mode ? truncation_mode : "keep_end");
    return n < 0 ? 0 : (size_t)n;
}

static mt_status check_key(mt_store *s, const mt_ref_key *k, mt_error *err) {
    if (!k->base_hash || !*k->base_hash || !k->tokenizer_hash || !*k->tokenizer_hash || !k->truncation)
        return mt_error_set(err, MT_ERR_INVALID,
                            "%s: a reference log-prob key needs the base hash, the tokenizer hash and the truncation "
                            "settings",
                            s->path);
    return MT_OK;
}

static void bind_key(sqlite3_stmt *st, const mt_ref_key *k) {
    mt_st_bind_text(st, 1, k->base_hash);
    mt_st_bind_text(st, 2, k->adapter_hash ? k->adapter_hash : "");
    mt_st_bind_text(st, 3, k->tokenizer_hash);
    mt_st_bind_text(st, 4, k->truncation);
}

mt_status mt_store_ref_logps_put(mt_store *s, const mt_ref_key *k, const char *const *pair_hashes,
                                 const mt_ref_logps *v, size_t n, mt_error *err) {
    mt_status rs = check_key(s, k, err);
    if (rs != MT_OK) return rs;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i].chosen) || !isfinite(v[i].rejected))
            return mt_error_set(err, MT_ERR_NUMERIC, "%s: reference log-probs of pair %s are not finite (%g, %g)",
                                s->path, pair_hashes[i], v[i].chosen, v[i].rejected);
    if ((rs = mt_st_begin(s, err)) != MT_OK) return rs;
    sqlite3_stmt *st;
    rs = mt_st_prepare(s,
                       "INSERT OR REPLACE INTO ref_logps (base_hash, adapter_hash, tokenizer_hash, truncation,"
                       " pair_hash, chosen_logp, rejected_logp, chosen_tokens, rejected_tokens, created)"
                       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                       &st, err);
    double now = mt_st_now();
    for (size_t i = 0; rs == MT_OK && i < n; i++) {
        bind_key(st, k);
        mt_st_bind_text(st, 5, pair_hashes[i]);
        sqlite3_bind_double(st, 6, v[i].chosen);
        sqlite3_bind_double(st, 7, v[i].rejected);
        sqlite3_bind_int64(st, 8, v[i].chosen_tokens);
        sqlite3_bind_int64(st, 9, v[i].rejected_tokens);
        sqlite3_bind_double(st, 10, now);
        rs = mt_st_step_done(s, st, "caching reference log-probs", err);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (rs != MT_OK) {
        mt_st_rollback(s);
        return rs;
    }
    return mt_st_commit(s, err);
}

mt_status mt_store_ref_logps_get(mt_store *s, const mt_ref_key *k, const char *const *pair_hashes, size_t n,
                                 mt_ref_logps *out, bool *found, size_t *n_found, mt_error *err) {
    if (n_found) *n_found = 0;
    mt_status rs = check_key(s, k, err);
    if (rs != MT_OK) return rs;
    sqlite3_stmt *st;
    rs = mt_st_prepare(s,
                       "SELECT chosen_logp, rejected_logp, chosen_tokens, rejected_tokens FROM ref_logps"
                       " WHERE base_hash = ?1 AND adapter_hash = ?2 AND tokenizer_hash = ?3 AND truncation = ?4"
                       " AND pair_hash = ?5",
                       &st, err);
    if (rs != MT_OK) return rs;
    size_t hits = 0;
    for (size_t i = 0; i < n; i++) {
        bind_key(st, k);
        mt_st_bind_text(st, 5, pair_hashes[i]);
        int rc = sqlite3_step(st);
        found[i] = rc == SQLITE_ROW;
        if (rc == SQLITE_ROW) {
            out[i] = (mt_ref_logps){sqlite3_column_double(st, 0), sqlite3_column_double(st, 1),
                                    sqlite3_column_int64(st, 2), sqlite3_column_int64(st, 3)};
            hits++;
        } else if (rc != SQLITE_DONE) {
            sqlite3_finalize(st);
            return mt_st_db_error(s, err, rc, "reading cached reference log-probs");
        }
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (n_found) *n_found = hits;
    return MT_OK;
}
