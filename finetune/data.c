/* data.c — reads the recipe's data (JSONL in the formats people use, or folders of plain
 * documents), tokenizes each document once with its loss mask, and caches the result keyed by
 * the data's and the tokenizer's hashes. */
#define _GNU_SOURCE
#include "data-impl.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CACHE_MAGIC "MTTOKS02"

void mt_docs_free(mt_docs *d) {
    free(d->ids);
    free(d->learn);
    free(d->doc_off);
    memset(d, 0, sizeof *d);
}

/* ---- growing the document set ---- */

typedef struct docs_builder {
    mt_docs *d;
    int64_t cap_tokens, cap_docs;
} docs_builder;

static void builder_init(docs_builder *b, mt_docs *d) {
    b->d = d;
    b->cap_tokens = d->n_tokens;
    b->cap_docs = d->n_docs;
    if (!d->doc_off) {
        d->doc_off = mt_xcalloc(1, sizeof(int64_t));
        b->cap_docs = 0;
    }
}

static void builder_reserve(docs_builder *b, int64_t more_tokens) {
    mt_docs *d = b->d;
    if (d->n_tokens + more_tokens > b->cap_tokens) {
        int64_t cap = b->cap_tokens ? b->cap_tokens : 4096;
        while (cap < d->n_tokens + more_tokens) cap *= 2;
        d->ids = mt_xrealloc(d->ids, (size_t)cap * sizeof *d->ids);
        d->learn = mt_xrealloc(d->learn, (size_t)cap * sizeof *d->learn);
        b->cap_tokens = cap;
    }
    if (d->n_docs + 1 > b->cap_docs) {
        int64_t cap = b->cap_docs ? b->cap_docs * 2 : 256;
        d->doc_off = mt_xrealloc(d->doc_off, (size_t)(cap + 1) * sizeof *d->doc_off);
        b->cap_docs = cap;
    }
}

static void builder_push(docs_builder *b, const int32_t *ids, size_t n, bool learn) {
    builder_reserve(b, (int64_t)n);
    mt_docs *d = b->d;
    memcpy(d->ids + d->n_tokens, ids, n * sizeof *ids);
    memset(d->learn + d->n_tokens, learn ? 1 : 0, n);
    d->n_tokens += (int64_t)n;
}

static void builder_end_doc(docs_builder *b) {
    mt_docs *d = b->d;
    int64_t start = d->doc_off[d->n_docs];
    if (d->n_tokens == start) return; /* empty documents are dropped */
    d->learn[start] = 0;              /* nothing precedes a document's first token */
    d->n_docs++;
    d->doc_off[d->n_docs] = d->n_tokens;
}

/* ---- tokenizing one document ---- */

typedef struct tok_ctx {
    const mt_tokenizer *tok;
    int32_t eos;
    bool mask_prompt;
    const char *file;
    long line;
} tok_ctx;

static mt_status push_text(docs_builder *b, const tok_ctx *c, const char *text, size_t len, bool add_special,
                           bool learn, mt_error *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    mt_status st = mt_tokenizer_encode(c->tok, text, len, add_special, &ids, &n, err);
    if (st != MT_OK) {
        mt_error_prefix(err, "%s:%ld: ", c->file, c->line);
        return st;
    }
    builder_push(b, ids, n, learn);
    free(ids);
    return MT_OK;
}

static void push_eos(docs_builder *b, const tok_ctx *c, bool learn) {
    if (c->eos >= 0) builder_push(b, &c->eos, 1, learn);
}

static mt_status doc_text(docs_builder *b, const tok_ctx *c, const char *text, size_t len, mt_error *err) {
    mt_status st = push_text(b, c, text, len, true, true, err);
    if (st != MT_OK) return st;
    push_eos(b, c, true);
    builder_end_doc(b);
    return MT_OK;
}

static mt_status doc_prompt_completion(docs_builder *b, const tok_ctx *c, const char *prompt, const char *completion,
                                       mt_error *err) {
    mt_status st = push_text(b, c, prompt, strlen(prompt), true, !c->mask_prompt, err);
    if (st == MT_OK) st = push_text(b, c, completion, strlen(completion), false, true, err);
    if (st != MT_OK) return st;
    push_eos(b, c, true);
    builder_end_doc(b);
    return MT_OK;
}

/* A conversation renders through the chat template; rendering every prefix finds the spans
 * each message adds, so the loss can be confined to what the assistant wrote (the generation
 * prompt that introduces an assistant turn is context, not a target). */
static mt_status doc_messages(docs_builder *b, const tok_ctx *c, const cJSON *messages, mt_error *err) {
    int n = cJSON_GetArraySize(messages);
    if (n == 0) return mt_error_set(err, MT_ERR_FORMAT, "%s:%ld: \"messages\" is empty", c->file, c->line);
    mt_chat_message *msgs = mt_xcalloc((size_t)n, sizeof *msgs);
    for (int i = 0; i < n; i++) {
        const cJSON *m = cJSON_GetArrayItem(messages, i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(role) || !cJSON_IsString(content)) {
            free(msgs);
            return mt_error_set(err, MT_ERR_FORMAT,
                                "%s:%ld: messages[%d] needs string \"role\" and \"content\"", c->file, c->line, i);
        }
        msgs[i].role = role->valuestring;
        msgs[i].content = content->valuestring;
    }
    mt_status st = MT_OK;
    char *prev = mt_xstrdup("");
    size_t prev_len = 0;
    for (int i = 0; i < n && st == MT_OK; i++) {
        bool assistant = !strcmp(msgs[i].role, "assistant");
        char *open = NULL, *full = NULL;
        size_t open_len = 0, full_len = 0;
        if (assistant) {
            st = mt_chat_render(c->tok, msgs, (size_t)i, true, &open, &open_len, err);
            if (st == MT_OK && (open_len < prev_len || memcmp(open, prev, prev_len) != 0))
                st = mt_error_set(err, MT_ERR_UNSUPPORTED,
                                  "%s:%ld: the chat template does not render messages[:%d] with a generation "
                                  "prompt as an extension of messages[:%d]; assistant turns cannot be masked",
                                  c->file, c->line, i, i);
        }
        if (st == MT_OK) st = mt_chat_render(c->tok, msgs, (size_t)i + 1, false, &full, &full_len, err);
        size_t mid = assistant ? open_len : prev_len;
        if (st == MT_OK && (full_len < mid || memcmp(full, assistant ? open : prev, mid) != 0))
            st = mt_error_set(err, MT_ERR_UNSUPPORTED,
                              "%s:%ld: the chat template does not render messages[:%d] as an extension of "
                              "messages[:%d]; assistant turns cannot be masked",
                              c->file, c->line, i + 1, i);
        if (st == MT_OK && mid > prev_len)
            st = push_text(b, c, full + prev_len, mid - prev_len, false, !c->mask_prompt, err);
        if (st == MT_OK && full_len > mid)
            st = push_text(b, c, full + mid, full_len - mid, false, assistant || !c->mask_prompt, err);
        free(open);
        if (st == MT_OK) {
            free(prev);
            prev = full;
            prev_len = full_len;
        } else {
            free(full);
        }
    }
    free(prev);
    free(msgs);
    if (st != MT_OK) return st;
    builder_end_doc(b);
    return MT_OK;
}

/* ---- formats ---- */

const char *mt_data_format_name(mt_recipe_format f) {
    switch (f) {
    case MT_RECIPE_FORMAT_TEXT: return "text";
    case MT_RECIPE_FORMAT_PROMPT_COMPLETION: return "prompt_completion";
    case MT_RECIPE_FORMAT_MESSAGES: return "messages";
    case MT_RECIPE_FORMAT_PLAIN: return "plain";
    default: return "auto";
    }
}

static mt_recipe_format format_of_object(const cJSON *obj) {
    if (cJSON_GetObjectItemCaseSensitive(obj, "messages")) return MT_RECIPE_FORMAT_MESSAGES;
    if (cJSON_GetObjectItemCaseSensitive(obj, "prompt") && cJSON_GetObjectItemCaseSensitive(obj, "completion"))
        return MT_RECIPE_FORMAT_PROMPT_COMPLETION;
    if (cJSON_GetObjectItemCaseSensitive(obj, "text")) return MT_RECIPE_FORMAT_TEXT;
    return MT_RECIPE_FORMAT_AUTO;
}

static mt_status jsonl_document(docs_builder *b, const tok_ctx *c, const cJSON *obj, mt_recipe_format fmt,
                                mt_error *err) {
    if (fmt == MT_RECIPE_FORMAT_TEXT) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "text");
        if (!cJSON_IsString(t))
            return mt_error_set(err, MT_ERR_FORMAT, "%s:%ld: expected a string \"text\" field (format text)", c->file,
                                c->line);
        return doc_text(b, c, t->valuestring, strlen(t->valuestring), err);
    }
    if (fmt == MT_RECIPE_FORMAT_PROMPT_COMPLETION) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "prompt");
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(obj, "completion");
        if (!cJSON_IsString(p) || !cJSON_IsString(q))
            return mt_error_set(err, MT_ERR_FORMAT,
                                "%s:%ld: expected string \"prompt\" and \"completion\" fields (format "
                                "prompt_completion)",
                                c->file, c->line);
        return doc_prompt_completion(b, c, p->valuestring, q->valuestring, err);
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(obj, "messages");
    if (!cJSON_IsArray(m))
        return mt_error_set(err, MT_ERR_FORMAT, "%s:%ld: expected a \"messages\" array (format messages)", c->file,
                            c->line);
    return doc_messages(b, c, m, err);
}

static mt_status read_jsonl(docs_builder *b, tok_ctx *c, const char *data, size_t len, mt_recipe_format *fmt,
                            mt_error *err) {
    const char *p = data, *end = data + len;
    c->line = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        c->line++;
        const char *q = p;
        while (q < line_end && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < line_end) {
            cJSON *obj = cJSON_ParseWithLength(p, (size_t)(line_end - p));
            if (!obj || !cJSON_IsObject(obj)) {
                cJSON_Delete(obj);
                return mt_error_set(err, MT_ERR_FORMAT, "%s:%ld: not a JSON object", c->file, c->line);
            }
            if (*fmt == MT_RECIPE_FORMAT_AUTO) {
                *fmt = format_of_object(obj);
                if (*fmt == MT_RECIPE_FORMAT_AUTO) {
                    cJSON_Delete(obj);
                    return mt_error_set(err, MT_ERR_FORMAT,
                                        "%s:%ld: cannot tell the format: the object has none of \"text\", "
                                        "\"prompt\"+\"completion\", \"messages\" (set data.format)",
                                        c->file, c->line);
                }
            }
            mt_status st = jsonl_document(b, c, obj, *fmt, err);
            cJSON_Delete(obj);
            /* a message from below (the chat template, the tokenizer) names the line it came from */
            if (st != MT_OK && err && strncmp(err->msg, c->file, strlen(c->file)) != 0)
                mt_error_prefix(err, "%s:%ld: ", c->file, c->line);
            if (st != MT_OK) return st;
        }
        p = line_end + 1;
    }
    return MT_OK;
}

/* ---- files and folders ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every regular file under `dir`, recursively, sorted by path so that the order (and so the
 * token stream and its hash) does not depend on the file system. Hidden entries skipped. */
static mt_status list_files(const char *dir, char ***files, size_t *n, size_t *cap, mt_error *err) {
    DIR *d = opendir(dir);
    if (!d) return mt_error_set(err, MT_ERR_IO, "%s: cannot open folder", dir);
    struct dirent *e;
    char **names = NULL;
    size_t nn = 0, nc = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (nn == nc) {
            nc = nc ? nc * 2 : 64;
            names = mt_xrealloc(names, nc * sizeof *names);
        }
        names[nn++] = mt_xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, nn, sizeof *names, cmp_str);
    mt_status st = MT_OK;
    for (size_t i = 0; i < nn; i++) {
        char path[4096];
        if (st == MT_OK && !mt_path_join(path, sizeof path, dir, names[i]))
            st = mt_error_set(err, MT_ERR_INVALID, "%s/%s: path too long", dir, names[i]);
        if (st == MT_OK) {
            struct stat sb;
            if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
                st = list_files(path, files, n, cap, err);
            } else if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
                if (*n == *cap) {
                    *cap = *cap ? *cap * 2 : 64;
                    *files = mt_xrealloc(*files, *cap * sizeof **files);
                }
                (*files)[(*n)++] = mt_xstrdup(path);
            }
        }
        free(names[i]);
    }
    free(names);
    return st;
}

/* Plain documents are text: a file with NUL bytes is almost surely binary and would only
 * teach the model noise. */
static bool looks_binary(const char *data, size_t len) { return memchr(data, '\0', len) != NULL; }

/* ---- the cache ---- */

static mt_status cache_read(const char *path, docs_builder *b, bool *hit, mt_error *err) {
    *hit = false;
    char *buf = NULL;
    size_t len = 0;
    mt_error ignored = {0};
    if (mt_read_file(path, &buf, &len, &ignored) != MT_OK) return MT_OK; /* a miss */
    int64_t hdr[2];
    bool ok = len >= 8 + sizeof hdr && memcmp(buf, CACHE_MAGIC, 8) == 0;
    if (ok) memcpy(hdr, buf + 8, sizeof hdr);
    ok = ok && hdr[0] >= 0 && hdr[1] >= 0 && hdr[0] < (1LL << 40) && hdr[1] < (1LL << 40);
    size_t need = ok ? 8 + sizeof hdr + (size_t)(hdr[0] + 1) * 8 + (size_t)hdr[1] * 5 : 0;
    if (!ok || len != need) {
        free(buf);
        return MT_OK; /* stale or torn: tokenize again and rewrite it */
    }
    int64_t n_docs = hdr[0], n_tokens = hdr[1];
    const char *p = buf + 8 + sizeof hdr;
    const int64_t *off = (const int64_t *)(const void *)p;
    const int32_t *ids = (const int32_t *)(const void *)(p + (size_t)(n_docs + 1) * 8);
    const uint8_t *learn = (const uint8_t *)(p + (size_t)(n_docs + 1) * 8 + (size_t)n_tokens * 4);
    for (int64_t d = 0; d < n_docs; d++) {
        int64_t a = off[d], z = off[d + 1];
        if (a < 0 || z < a || z > n_tokens) {
            free(buf);
            return mt_error_set(err, MT_ERR_FORMAT, "%s: corrupt token cache (delete it)", path);
        }
        builder_reserve(b, z - a);
        memcpy(b->d->ids + b->d->n_tokens, ids + a, (size_t)(z - a) * 4);
        memcpy(b->d->learn + b->d->n_tokens, learn + a, (size_t)(z - a));
        b->d->n_tokens += z - a;
        builder_end_doc(b);
    }
    free(buf);
    *hit = true;
    return MT_OK;
}

static mt_status cache_write(const char *path, const mt_docs *d, int64_t first_doc, mt_error *err) {
    int64_t n_docs = d->n_docs - first_doc;
    int64_t t0 = d->doc_off[first_doc];
    int64_t n_tokens = d->n_tokens - t0;
    size_t len = 8 + 16 + (size_t)(n_docs + 1) * 8 + (size_t)n_tokens * 5;
    char *buf = mt_xmalloc(len);
    memcpy(buf, CACHE_MAGIC, 8);
    int64_t hdr[2] = {n_docs, n_tokens};
    memcpy(buf + 8, hdr, sizeof hdr);
    char *p = buf + 24;
    for (int64_t i = 0; i <= n_docs; i++) {
        int64_t o = d->doc_off[first_doc + i] - t0;
        memcpy(p + i * 8, &o, 8);
    }
    p += (n_docs + 1) * 8;
    memcpy(p, d->ids + t0, (size_t)n_tokens * 4);
    memcpy(p + n_tokens * 4, d->learn + t0, (size_t)n_tokens);
    mt_status st = mt_write_file_atomic(path, buf, len, err);
    free(buf);
    return st;
}

/* ---- one source ---- */

static mt_status hash_folder(char **files, size_t n, char out[65], mt_error *err) {
    mt_sha256 s;
    mt_sha256_init(&s);
    for (size_t i = 0; i < n; i++) {
        char h[65];
        mt_status st = mt_sha256_file_hex(files[i], h, err);
        if (st != MT_OK) return st;
        mt_sha256_update(&s, files[i], strlen(files[i]) + 1);
        mt_sha256_update(&s, h, 64);
    }
    uint8_t d[32];
    mt_sha256_final(&s, d);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
    return MT_OK;
}

/* The format of a JSONL file's first object, so that the cache can be keyed before reading
 * it all; AUTO when it cannot tell (reading then reports the problem with its line). */
static mt_recipe_format peek_format(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return MT_RECIPE_FORMAT_AUTO;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    mt_recipe_format fmt = MT_RECIPE_FORMAT_AUTO;
    while ((n = getline(&line, &cap, f)) >= 0) {
        size_t k = 0;
        while (k < (size_t)n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r' || line[k] == '\n')) k++;
        if (k == (size_t)n) continue;
        cJSON *obj = cJSON_ParseWithLength(line, (size_t)n);
        if (cJSON_IsObject(obj)) fmt = format_of_object(obj);
        cJSON_Delete(obj);
        break;
    }
    free(line);
    fclose(f);
    return fmt;
}

static mt_status load_source(const char *path, mt_recipe_format format, tok_ctx *c, docs_builder *b,
                             const char *tokenizer_hash, const char *cache_dir, mt_data_source *src,
                             mt_error *err) {
    memset(src, 0, sizeof *src);
    snprintf(src->path, sizeof src->path, "%s", path);
    bool is_dir = mt_is_dir(path);
    if (!is_dir && !mt_path_exists(path)) return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no such data file", path);

    char **files = NULL;
    size_t n_files = 0, cap = 0;
    mt_status st = MT_OK;
    if (is_dir) {
        st = list_files(path, &files, &n_files, &cap, err);
        if (st == MT_OK && n_files == 0) st = mt_error_set(err, MT_ERR_NOT_FOUND, "%s: the folder holds no files", path);
        if (st == MT_OK) st = hash_folder(files, n_files, src->sha256, err);
        if (format == MT_RECIPE_FORMAT_AUTO) format = MT_RECIPE_FORMAT_PLAIN;
    } else {
        st = mt_sha256_file_hex(path, src->sha256, err);
        if (format == MT_RECIPE_FORMAT_AUTO) {
            size_t l = strlen(path);
            bool jsonl = (l > 6 && !strcmp(path + l - 6, ".jsonl")) || (l > 5 && !strcmp(path + l - 5, ".json"));
            if (!jsonl) format = MT_RECIPE_FORMAT_PLAIN;
            else if (st == MT_OK) format = peek_format(path);
        }
    }

    char cache_path[4096] = "";
    if (st == MT_OK && cache_dir && format != MT_RECIPE_FORMAT_AUTO) {
        char key_src[512], key[65];
        snprintf(key_src, sizeof key_src, "%s|%s|%s|%d|%s", src->sha256, tokenizer_hash, mt_data_format_name(format),
                 c->mask_prompt, CACHE_MAGIC);
        mt_sha256_hex(key_src, strlen(key_src), key);
        char name[80];
        snprintf(name, sizeof name, "%.32s.tok", key);
        st = mt_mkdirs(cache_dir, err);
        if (st == MT_OK) mt_path_join(cache_path, sizeof cache_path, cache_dir, name);
        bool hit = false;
        if (st == MT_OK) st = cache_read(cache_path, b, &hit, err);
        if (st == MT_OK && hit) {
            src->format = format;
            src->from_cache = true;
            for (size_t i = 0; i < n_files; i++) free(files[i]);
            free(files);
            return MT_OK;
        }
    }

    int64_t first_doc = b->d->n_docs;
    if (st == MT_OK) {
        if (!is_dir) {
            files = mt_xmalloc(sizeof *files);
            files[0] = mt_xstrdup(path);
            n_files = 1;
        }
        for (size_t i = 0; i < n_files && st == MT_OK; i++) {
            char *data = NULL;
            size_t len = 0;
            st = mt_read_file(files[i], &data, &len, err);
            if (st != MT_OK) break;
            c->file = files[i];
            c->line = 1;
            if (format == MT_RECIPE_FORMAT_PLAIN) {
                if (!looks_binary(data, len)) st = doc_text(b, c, data, len, err);
            } else {
                st = read_jsonl(b, c, data, len, &format, err);
            }
            free(data);
        }
    }
    if (st == MT_OK && b->d->n_docs == first_doc)
        st = mt_error_set(err, MT_ERR_FORMAT, "%s: holds no documents", path);
    if (st == MT_OK && cache_path[0] && format != MT_RECIPE_FORMAT_AUTO) {
        /* the format is known only after the first line of an AUTO file: key the cache by it
         * from the next run on, which re-resolves it the same way */
        st = cache_write(cache_path, b->d, first_doc, err);
    }
    src->format = format;
    for (size_t i = 0; i < n_files; i++) free(files[i]);
    free(files);
    return st;
}

mt_status mt_data_load(const mt_recipe_list *paths, mt_recipe_format format, bool mask_prompt,
                       const mt_tokenizer *tok, const char *tokenizer_hash, const char *cache_dir, mt_docs *docs,
                       mt_data_source *sources, mt_error *err) {
    docs_builder b;
    builder_init(&b, docs);
    tok_ctx c = {.tok = tok, .eos = mt_tokenizer_eos_id(tok), .mask_prompt = mask_prompt};
    for (size_t i = 0; i < paths->n; i++) {
        mt_status st = load_source(paths->items[i], format, &c, &b, tokenizer_hash, cache_dir, &sources[i], err);
        if (st != MT_OK) return st;
    }
    return MT_OK;
}

/* ---- splits and rows ---- */

static void docs_append(docs_builder *b, const mt_docs *src, int64_t d) {
    int64_t a = src->doc_off[d], z = src->doc_off[d + 1];
    builder_reserve(b, z - a);
    memcpy(b->d->ids + b->d->n_tokens, src->ids + a, (size_t)(z - a) * sizeof(int32_t));
    memcpy(b->d->learn + b->d->n_tokens, src->learn + a, (size_t)(z - a));
    b->d->n_tokens += z - a;
    builder_end_doc(b);
}

void mt_docs_split(const mt_docs *all, double fraction, uint64_t seed, mt_docs *train, mt_docs *eval) {
    memset(train, 0, sizeof *train);
    memset(eval, 0, sizeof *eval);
    docs_builder bt, be;
    builder_init(&bt, train);
    builder_init(&be, eval);
    bool *to_eval = mt_xcalloc((size_t)all->n_docs + 1, 1);
    int64_t n_eval = 0;
    for (int64_t d = 0; d < all->n_docs; d++) {
        to_eval[d] = mt_hash_float(seed ^ 0x6576616c73706c74ULL, (uint64_t)d) < fraction;
        n_eval += to_eval[d];
    }
    /* keep both sides non-empty when that is possible */
    if (fraction > 0 && all->n_docs >= 2) {
        if (n_eval == 0) to_eval[all->n_docs - 1] = true;
        if (n_eval == all->n_docs) to_eval[0] = false;
    }
    for (int64_t d = 0; d < all->n_docs; d++) docs_append(to_eval[d] ? &be : &bt, all, d);
    free(to_eval);
}

void mt_rows_free(mt_rows *r) {
    free(r->tokens);
    free(r->targets);
    free(r->pos);
    free(r->kv_start);
    free(r->n_targets);
    memset(r, 0, sizeof *r);
}

static void rows_alloc(mt_rows *r, int T, int64_t n_rows) {
    r->T = T;
    r->n_rows = n_rows;
    size_t n = (size_t)n_rows * (size_t)T;
    r->tokens = mt_xcalloc(n ? n : 1, sizeof(int32_t));
    r->targets = mt_xcalloc(n ? n : 1, sizeof(int32_t));
    r->pos = mt_xcalloc(n ? n : 1, sizeof(int32_t));
    r->kv_start = mt_xcalloc(n ? n : 1, sizeof(int32_t));
    r->n_targets = mt_xcalloc(n_rows ? (size_t)n_rows : 1, sizeof(int32_t));
}

mt_status mt_rows_build(const mt_docs *docs, int T, bool packing, int32_t pad_id, mt_rows *rows, mt_error *err) {
    memset(rows, 0, sizeof *rows);
    if (T < 2) return mt_error_set(err, MT_ERR_INVALID, "max_seq_len %d is too short", T);
    if (docs->n_tokens == 0) return mt_error_set(err, MT_ERR_INVALID, "no tokens to train on");
    if (packing) {
        /* One stream; row r holds stream[r·T, r·T+T) and predicts the token after each. */
        int64_t n = docs->n_tokens;
        int64_t n_rows = (n - 1 + T - 1) / T;
        rows_alloc(rows, T, n_rows);
        int64_t d = 0;
        for (int64_t r = 0; r < n_rows; r++) {
            int64_t s = r * T;
            int32_t *tk = rows->tokens + r * T, *tg = rows->targets + r * T, *ps = rows->pos + r * T,
                    *kv = rows->kv_start + r * T;
            for (int t = 0; t < T; t++) {
                int64_t p = s + t;
                if (p >= n) {
                    tk[t] = pad_id;
                    tg[t] = MT_IGNORE_INDEX;
                    kv[t] = t;
                    ps[t] = 0;
                    continue;
                }
                while (docs->doc_off[d + 1] <= p) d++;
                int64_t start = docs->doc_off[d] > s ? docs->doc_off[d] : s;
                tk[t] = docs->ids[p];
                kv[t] = (int32_t)(start - s);
                ps[t] = (int32_t)(p - start);
                bool same_doc = p + 1 < docs->doc_off[d + 1];
                if (same_doc && docs->learn[p + 1]) {
                    tg[t] = docs->ids[p + 1];
                    rows->n_targets[r]++;
                } else {
                    tg[t] = MT_IGNORE_INDEX;
                }
            }
        }
        return MT_OK;
    }
    /* Unpacked: a document of n tokens gives rows covering its n−1 predictions, T at a time. */
    int64_t n_rows = 0;
    for (int64_t d = 0; d < docs->n_docs; d++) {
        int64_t n = docs->doc_off[d + 1] - docs->doc_off[d];
        if (n >= 2) n_rows += (n - 1 + T - 1) / T;
    }
    if (n_rows == 0) return mt_error_set(err, MT_ERR_INVALID, "every document is shorter than two tokens");
    rows_alloc(rows, T, n_rows);
    int64_t r = 0;
    for (int64_t d = 0; d < docs->n_docs; d++) {
        int64_t a = docs->doc_off[d], n = docs->doc_off[d + 1] - a;
        for (int64_t s = 0; s + 1 < n; s += T, r++) {
            int32_t *tk = rows->tokens + r * T, *tg = rows->targets + r * T, *ps = rows->pos + r * T;
            for (int t = 0; t < T; t++) {
                int64_t p = s + t;
                ps[t] = t;
                if (p + 1 < n) {
                    tk[t] = docs->ids[a + p];
                    if (docs->learn[a + p + 1]) {
                        tg[t] = docs->ids[a + p + 1];
                        rows->n_targets[r]++;
                    } else {
                        tg[t] = MT_IGNORE_INDEX;
                    }
                } else {
                    tk[t] = p < n ? docs->ids[a + p] : pad_id;
                    tg[t] = MT_IGNORE_INDEX;
                }
            }
        }
    }
    return MT_OK;
}

void mt_rows_epoch_order(int64_t n_rows, uint64_t seed, int64_t epoch, bool shuffle, int64_t *order) {
    for (int64_t i = 0; i < n_rows; i++) order[i] = i;
    if (!shuffle) return;
    mt_rng rng;
    mt_rng_seed(&rng, mt_hash_u64(seed, 0x73687566666c65ULL + (uint64_t)epoch));
    for (int64_t i = n_rows - 1; i > 0; i--) {
        int64_t j = (int64_t)mt_rng_below(&rng, (uint64_t)i + 1);
        int64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}
