/* bpe_train.c — learning a byte-level BPE vocabulary the way the Hugging Face tokenizers
 * BpeTrainer does (same word counting over lines, same pair heap with lazy count refresh,
 * same tie-break on the lower pair of ids), so that equal inputs give the same merges, and
 * writing tokenizer.json in the library's own pretty-printed layout plus tokenizer_config.json. */
#define _GNU_SOURCE
#include "tokenizer-impl.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- the pre-tokenizer styles, spelt as the models' published tokenizer.json files ---- */

static const char llama3_re[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char qwen2_re[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                               "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char ds3_digits_re[] = "\\p{N}{1,3}";
/* [一-龥\u3040-ゟ゠-ヿ]+ : CJK ideographs, hiragana, katakana */
static const char ds3_cjk_re[] = "[\xE4\xB8\x80-\xE9\xBE\xA5\xE3\x81\x80-\xE3\x82\x9F\xE3\x82\xA0-\xE3\x83\xBF]+";
static const char ds3_main_re[] =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}"
    "\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";

static cJSON *bytelevel_json(bool add_prefix_space, bool trim_offsets, bool use_regex) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "ByteLevel");
    cJSON_AddBoolToObject(j, "add_prefix_space", add_prefix_space);
    cJSON_AddBoolToObject(j, "trim_offsets", trim_offsets);
    cJSON_AddBoolToObject(j, "use_regex", use_regex);
    return j;
}

static cJSON *split_json(const char *re) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "Split");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(j, "pattern"), "Regex", re);
    cJSON_AddStringToObject(j, "behavior", "Isolated");
    cJSON_AddBoolToObject(j, "invert", false);
    return j;
}

static cJSON *sequence_json(const char *key, cJSON *const *items, int n) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "Sequence");
    cJSON *arr = cJSON_AddArrayToObject(j, key);
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, items[i]);
    return j;
}

typedef struct style_json {
    cJSON *normalizer, *pre_tokenizer, *post_bytelevel, *decoder; /* post_bytelevel: the no-BOS post-processor */
    bool ignore_merges;
} style_json;

static void style_free(style_json *s) {
    cJSON_Delete(s->normalizer);
    cJSON_Delete(s->pre_tokenizer);
    cJSON_Delete(s->post_bytelevel);
    cJSON_Delete(s->decoder);
}

static mt_status style_build(mt_pretok_style style, style_json *s, mt_error *err) {
    memset(s, 0, sizeof *s);
    switch (style) {
    case MT_PRETOK_GPT2:
        s->normalizer = cJSON_CreateNull();
        s->pre_tokenizer = bytelevel_json(false, true, true);
        s->post_bytelevel = bytelevel_json(true, false, true);
        s->decoder = bytelevel_json(true, true, true);
        return MT_OK;
    case MT_PRETOK_LLAMA3: {
        s->normalizer = cJSON_CreateNull();
        cJSON *items[2] = {split_json(llama3_re), bytelevel_json(false, true, false)};
        s->pre_tokenizer = sequence_json("pretokenizers", items, 2);
        s->post_bytelevel = bytelevel_json(true, false, true);
        s->decoder = bytelevel_json(true, true, true);
        s->ignore_merges = true;
        return MT_OK;
    }
    case MT_PRETOK_QWEN2: {
        s->normalizer = cJSON_CreateObject();
        cJSON_AddStringToObject(s->normalizer, "type", "NFC");
        cJSON *items[2] = {split_json(qwen2_re), bytelevel_json(false, false, false)};
        s->pre_tokenizer = sequence_json("pretokenizers", items, 2);
        s->post_bytelevel = bytelevel_json(false, false, false);
        s->decoder = bytelevel_json(false, false, false);
        return MT_OK;
    }
    case MT_PRETOK_DEEPSEEK_V3: {
        s->normalizer = sequence_json("normalizers", NULL, 0);
        cJSON *items[4] = {split_json(ds3_digits_re), split_json(ds3_cjk_re), split_json(ds3_main_re),
                           bytelevel_json(false, true, false)};
        s->pre_tokenizer = sequence_json("pretokenizers", items, 4);
        s->post_bytelevel = bytelevel_json(true, false, true);
        s->decoder = bytelevel_json(true, true, true);
        return MT_OK;
    }
    }
    return mt_error_set(err, MT_ERR_INVALID, "unknown pre-tokenizer style %d", (int)style);
}

/* ---- JSON output in serde_json's pretty layout (two-space indent, "key": value) ---- */

static void json_string(tk_buf *o, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    tk_buf_putc(o, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[7];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                memcpy(u, "\\u00", 4);
                u[4] = hex[c >> 4];
                u[5] = hex[c & 15];
                u[6] = '\0';
                esc = u;
            }
        }
        if (!esc) continue;
        tk_buf_put(o, s + run, i - run);
        tk_buf_puts(o, esc);
        run = i + 1;
    }
    tk_buf_put(o, s + run, n - run);
    tk_buf_putc(o, '"');
}

static void indent(tk_buf *o, int n) {
    for (int i = 0; i < n; i++) tk_buf_putc(o, ' ');
}

static void json_pretty(tk_buf *o, const cJSON *v, int ind) {
    if (cJSON_IsNull(v))
        tk_buf_puts(o, "null");
    else if (cJSON_IsBool(v))
        tk_buf_puts(o, cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNumber(v)) {
        char num[32];
        snprintf(num, sizeof num, "%lld", (long long)v->valuedouble);
        tk_buf_puts(o, num);
    } else if (cJSON_IsString(v))
        json_string(o, v->valuestring, strlen(v->valuestring));
    else {
        bool obj = cJSON_IsObject(v);
        if (!v->child) {
            tk_buf_puts(o, obj ? "{}" : "[]");
            return;
        }
        tk_buf_puts(o, obj ? "{\n" : "[\n");
        for (const cJSON *c = v->child; c; c = c->next) {
            indent(o, ind + 2);
            if (obj) {
                json_string(o, c->string, strlen(c->string));
                tk_buf_puts(o, ": ");
            }
            json_pretty(o, c, ind + 2);
            tk_buf_puts(o, c->next ? ",\n" : "\n");
        }
        indent(o, ind);
        tk_buf_putc(o, obj ? '}' : ']');
    }
}

/* ---- input files ---- */

typedef struct file_list {
    char **v;
    size_t n, cap;
} file_list;

static void files_push(file_list *l, const char *path) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = mt_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = mt_xstrdup(path);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Folders are walked recursively, entries in byte order, so --max-bytes cuts reproducibly. */
static mt_status collect(file_list *l, const char *path, int depth, mt_error *err) {
    struct stat sb;
    if (stat(path, &sb) != 0) return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no such file or folder", path);
    if (S_ISREG(sb.st_mode)) {
        files_push(l, path);
        return MT_OK;
    }
    if (!S_ISDIR(sb.st_mode) || depth > 32) return MT_OK;
    DIR *d = opendir(path);
    if (!d) return mt_error_set(err, MT_ERR_IO, "%s: cannot open folder", path);
    file_list names = {0};
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) files_push(&names, e->d_name);
    closedir(d);
    if (names.n) qsort(names.v, names.n, sizeof *names.v, cmp_str);
    mt_status st = MT_OK;
    for (size_t i = 0; i < names.n; i++) {
        char child[4096];
        if (!st) {
            if (!mt_path_join(child, sizeof child, path, names.v[i]))
                st = mt_error_set(err, MT_ERR_INVALID, "%s/%s: path too long", path, names.v[i]);
            else
                st = collect(l, child, depth + 1, err);
        }
        free(names.v[i]);
    }
    free(names.v);
    return st;
}

/* ---- training state ---- */

typedef struct heap_entry {
    int64_t count;
    uint64_t pair;  /* a << 32 | b */
    uint32_t *pos;  /* sorted word indices where the pair was seen */
    uint32_t npos;
} heap_entry;

typedef struct trainer {
    /* words */
    tk_strmap words;  /* byte-mapped word → index */
    uint64_t *count;  /* [n_words] occurrences */
    size_t n_words, cap_words;
    int32_t *sym;     /* symbols of all words, word w at sym[off[w]] */
    size_t *off;      /* [n_words + 1] */
    uint32_t *len;    /* [n_words] current symbol count */
    /* vocabulary */
    tk_strmap vocab;
    tk_buf tok_text;
    size_t *tok_off, *tok_len; /* [n_tok] */
    size_t n_tok, cap_tok;
    /* pairs */
    tk_u64map pair_count; /* pair → int64 as u64 */
    heap_entry *heap;
    size_t n_heap, cap_heap;
    /* merged pairs in creation order */
    uint64_t *merge_pair;
    size_t n_merges, cap_merges;
} trainer;

static int32_t add_token(trainer *t, const char *s, size_t n) {
    int32_t id = tk_strmap_get(&t->vocab, s, n);
    if (id >= 0) return id;
    if (t->n_tok == t->cap_tok) {
        t->cap_tok = t->cap_tok ? t->cap_tok * 2 : 1024;
        t->tok_off = mt_xrealloc(t->tok_off, t->cap_tok * sizeof *t->tok_off);
        t->tok_len = mt_xrealloc(t->tok_len, t->cap_tok * sizeof *t->tok_len);
    }
    id = (int32_t)t->n_tok++;
    t->tok_off[id] = t->tok_text.len;
    t->tok_len[id] = n;
    tk_buf_put(&t->tok_text, s, n);
    tk_strmap_put(&t->vocab, s, n, id);
    return id;
}

static void count_word(trainer *t, const char *s, size_t n) {
    int32_t w = tk_strmap_get(&t->words, s, n);
    if (w < 0) {
        if (t->n_words == t->cap_words) {
            t->cap_words = t->cap_words ? t->cap_words * 2 : 4096;
            t->count = mt_xrealloc(t->count, t->cap_words * sizeof *t->count);
        }
        w = (int32_t)t->n_words++;
        t->count[w] = 0;
        tk_strmap_put(&t->words, s, n, w);
    }
    t->count[w]++;
}

static bool heap_above(const heap_entry *a, const heap_entry *b) {
    return a->count != b->count ? a->count > b->count : a->pair < b->pair;
}

static void heap_push(trainer *t, heap_entry e) {
    if (t->n_heap == t->cap_heap) {
        t->cap_heap = t->cap_heap ? t->cap_heap * 2 : 4096;
        t->heap = mt_xrealloc(t->heap, t->cap_heap * sizeof *t->heap);
    }
    size_t i = t->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_above(&e, &t->heap[p])) break;
        t->heap[i] = t->heap[p];
        i = p;
    }
    t->heap[i] = e;
}

static heap_entry heap_pop(trainer *t) {
    heap_entry top = t->heap[0], last = t->heap[--t->n_heap];
    size_t i = 0, n = t->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const heap_entry *best = &last;
        if (l < n && heap_above(&t->heap[l], best)) m = l, best = &t->heap[l];
        if (r < n && heap_above(&t->heap[r], best)) m = r;
        if (m == i) break;
        t->heap[i] = t->heap[m];
        i = m;
    }
    if (n) t->heap[i] = last;
    return top;
}

/* Word lists per pair, gathered while counting or merging (the trainer's where_to_update). */
typedef struct where_list {
    uint64_t pair;
    uint32_t *pos;
    uint32_t n, cap;
} where_list;

typedef struct where_map {
    tk_u64map index; /* pair → slot in v */
    where_list *v;
    size_t n, cap;
} where_map;

static void where_add(where_map *m, uint64_t pair, uint32_t w) {
    uint64_t *slot = tk_u64map_slot(&m->index, pair, UINT64_MAX);
    if (*slot == UINT64_MAX) {
        if (m->n == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 256;
            m->v = mt_xrealloc(m->v, m->cap * sizeof *m->v);
        }
        *slot = m->n;
        m->v[m->n++] = (where_list){pair, NULL, 0, 0};
    }
    where_list *l = &m->v[*slot];
    if (l->n && l->pos[l->n - 1] == w) return;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4;
        l->pos = mt_xrealloc(l->pos, l->cap * sizeof *l->pos);
    }
    l->pos[l->n++] = w;
}

/* Moves every list with a positive count into the heap and empties the map. */
static void where_drain(trainer *t, where_map *m) {
    for (size_t i = 0; i < m->n; i++) {
        where_list *l = &m->v[i];
        uint64_t c = 0;
        tk_u64map_get(&t->pair_count, l->pair, &c);
        if ((int64_t)c > 0)
            heap_push(t, (heap_entry){(int64_t)c, l->pair, l->pos, l->n});
        else
            free(l->pos);
    }
    m->n = 0;
    tk_u64map_free(&m->index);
}

static void pair_add(trainer *t, uint64_t pair, int64_t delta) {
    uint64_t *c = tk_u64map_slot(&t->pair_count, pair, 0);
    *c = (uint64_t)((int64_t)*c + delta);
}

#define PAIR(a, b) ((uint64_t)(uint32_t)(a) << 32 | (uint32_t)(b))

/* Word::merge: merges every (c1, c2) left to right and reports the pair count changes. */
static void word_merge(trainer *t, uint32_t w, int32_t c1, int32_t c2, int32_t rep, where_map *where) {
    int32_t *s = t->sym + t->off[w];
    uint32_t n = t->len[w];
    int64_t cnt = (int64_t)t->count[w];
    for (uint32_t i = 0; i < n; i++) {
        if (s[i] != c1 || i + 1 >= n || s[i + 1] != c2) continue;
        if (i > 0) {
            pair_add(t, PAIR(s[i - 1], c1), -cnt);
            pair_add(t, PAIR(s[i - 1], rep), cnt);
            where_add(where, PAIR(s[i - 1], rep), w);
        }
        s[i] = rep;
        memmove(s + i + 1, s + i + 2, (n - i - 2) * sizeof *s);
        n--;
        if (i + 1 < n) {
            pair_add(t, PAIR(c2, s[i + 1]), -cnt);
            pair_add(t, PAIR(rep, s[i + 1]), cnt);
            where_add(where, PAIR(rep, s[i + 1]), w);
        }
    }
    t->len[w] = n;
}

static void trainer_free(trainer *t) {
    tk_strmap_free(&t->words);
    free(t->count);
    free(t->sym);
    free(t->off);
    free(t->len);
    tk_strmap_free(&t->vocab);
    tk_buf_free(&t->tok_text);
    free(t->tok_off);
    free(t->tok_len);
    tk_u64map_free(&t->pair_count);
    for (size_t i = 0; i < t->n_heap; i++) free(t->heap[i].pos);
    free(t->heap);
    free(t->merge_pair);
}

/* Splits a file into lines that keep their "\n" (the library's lines_with_ending) and counts
 * the pre-tokenized words of each. Invalid UTF-8 is replaced by U+FFFD first. */
static mt_status count_file(trainer *t, const mt_tokenizer *pipe, tk_match *m, const char *text, size_t len,
                            size_t *budget, mt_error *err) {
    tk_buf fixed = {0};
    size_t i = 0;
    mt_status st = MT_OK;
    while (i < len && !st && *budget) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - text) + 1 : len;
        const char *line = text + i;
        size_t n = e - i;
        if (!mt_utf8_valid(line, n, NULL)) {
            fixed.len = 0;
            tk_utf8_lossy(&fixed, line, n);
            line = fixed.p;
            n = fixed.len;
        }
        tk_pieces pieces;
        st = tk_pretokenize(pipe, m, line, n, true, &pieces, err);
        if (!st) {
            for (size_t k = 0; k < pieces.n; k++)
                if (pieces.v[k].len) count_word(t, pieces.text.p + pieces.v[k].off, pieces.v[k].len);
            tk_pieces_free(&pieces);
        }
        *budget = *budget > e - i ? *budget - (e - i) : 0;
        i = e;
    }
    tk_buf_free(&fixed);
    return st;
}

/* ---- writing ---- */

/* JSONL corpora (what `moetune data` writes, what recipes train on) count by the text they
 * carry: "text", "prompt", "completion", and each message's "content" — not the JSON syntax. */
static mt_status count_json_strings(trainer *t, const mt_tokenizer *pipe, tk_match *m, const cJSON *v,
                                    size_t *budget, mt_error *err) {
    static const char *const keys[] = {"text", "prompt", "completion", "chosen", "rejected"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(v, keys[k]);
        if (cJSON_IsString(s) && *budget) {
            mt_status st = count_file(t, pipe, m, s->valuestring, strlen(s->valuestring), budget, err);
            if (st) return st;
        }
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(v, "messages");
    const cJSON *msg;
    cJSON_ArrayForEach(msg, msgs) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "content");
        if (cJSON_IsString(c) && *budget) {
            mt_status st = count_file(t, pipe, m, c->valuestring, strlen(c->valuestring), budget, err);
            if (st) return st;
        }
    }
    return MT_OK;
}

static mt_status count_jsonl(trainer *t, const mt_tokenizer *pipe, tk_match *m, const char *text, size_t len,
                             size_t *budget, mt_error *err) {
    size_t line = 1;
    for (size_t off = 0; off < len && *budget; line++) {
        const char *nl = memchr(text + off, '\n', len - off);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *p = text + off;
        size_t n = end - off;
        off = end + 1;
        while (n && (*p == ' ' || *p == '\t' || *p == '\r')) p++, n--;
        if (!n) continue;
        cJSON *v = cJSON_ParseWithLength(p, n);
        if (!cJSON_IsObject(v)) {
            cJSON_Delete(v);
            return mt_error_set(err, MT_ERR_FORMAT, "line %zu: not a JSON object", line);
        }
        mt_status st = count_json_strings(t, pipe, m, v, budget, err);
        cJSON_Delete(v);
        if (st) return st;
    }
    return MT_OK;
}

static void write_added(tk_buf *o, const char *content, int32_t id, bool last) {
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", content);
    cJSON_AddBoolToObject(a, "single_word", false);
    cJSON_AddBoolToObject(a, "lstrip", false);
    cJSON_AddBoolToObject(a, "rstrip", false);
    cJSON_AddBoolToObject(a, "normalized", false);
    cJSON_AddBoolToObject(a, "special", true);
    indent(o, 4);
    json_pretty(o, a, 4);
    tk_buf_puts(o, last ? "\n" : ",\n");
    cJSON_Delete(a);
}

static cJSON *template_json(const char *bos, int32_t bos_id) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "TemplateProcessing");
    for (int pair = 0; pair < 2; pair++) {
        cJSON *arr = cJSON_AddArrayToObject(j, pair ? "pair" : "single");
        for (int part = 0; part < (pair ? 2 : 1); part++) {
            cJSON *sp = cJSON_CreateObject(), *sq = cJSON_CreateObject();
            cJSON *spi = cJSON_AddObjectToObject(sp, "SpecialToken");
            cJSON_AddStringToObject(spi, "id", bos);
            cJSON_AddNumberToObject(spi, "type_id", part);
            cJSON *sqi = cJSON_AddObjectToObject(sq, "Sequence");
            cJSON_AddStringToObject(sqi, "id", part ? "B" : "A");
            cJSON_AddNumberToObject(sqi, "type_id", part);
            cJSON_AddItemToArray(arr, sp);
            cJSON_AddItemToArray(arr, sq);
        }
    }
    cJSON *st = cJSON_AddObjectToObject(cJSON_AddObjectToObject(j, "special_tokens"), bos);
    cJSON_AddStringToObject(st, "id", bos);
    cJSON_AddItemToObject(st, "ids", cJSON_CreateIntArray(&bos_id, 1));
    const char *toks[1] = {bos};
    cJSON_AddItemToObject(st, "tokens", cJSON_CreateStringArray(toks, 1));
    return j;
}

static void section(tk_buf *o, const char *key, const cJSON *v) {
    tk_buf_puts(o, "  ");
    json_string(o, key, strlen(key));
    tk_buf_puts(o, ": ");
    json_pretty(o, v, 2);
    tk_buf_puts(o, ",\n");
}

/* The tokenizers library's Tokenizer::save(pretty = true) layout, field for field. */
static void write_tokenizer_json(tk_buf *o, const trainer *t, const style_json *sj, const uint64_t *mp,
                                 size_t n_merges, const char *const *specials, const int32_t *special_ids,
                                 int n_specials, const char *bos, int32_t bos_id) {
    tk_buf_puts(o, "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n");
    /* added tokens in ascending id order, each once */
    int n_new = 0;
    int32_t *order = mt_xmalloc((size_t)(n_specials + 1) * sizeof *order);
    for (int i = 0; i < n_specials; i++) {
        bool seen = false;
        for (int k = 0; k < n_new; k++) seen |= special_ids[order[k]] == special_ids[i];
        if (!seen) order[n_new++] = i;
    }
    for (int i = 1; i < n_new; i++)
        for (int k = i; k > 0 && special_ids[order[k]] < special_ids[order[k - 1]]; k--) {
            int32_t x = order[k];
            order[k] = order[k - 1];
            order[k - 1] = x;
        }
    if (!n_new)
        tk_buf_puts(o, "  \"added_tokens\": [],\n");
    else {
        tk_buf_puts(o, "  \"added_tokens\": [\n");
        for (int i = 0; i < n_new; i++)
            write_added(o, specials[order[i]], special_ids[order[i]], i + 1 == n_new);
        tk_buf_puts(o, "  ],\n");
    }
    free(order);
    section(o, "normalizer", sj->normalizer);
    section(o, "pre_tokenizer", sj->pre_tokenizer);
    if (bos) {
        cJSON *tmpl = template_json(bos, bos_id);
        section(o, "post_processor", tmpl);
        cJSON_Delete(tmpl);
    } else
        section(o, "post_processor", sj->post_bytelevel);
    section(o, "decoder", sj->decoder);
    tk_buf_puts(o, "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
                   "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"
                   "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n");
    tk_buf_puts(o, sj->ignore_merges ? "    \"ignore_merges\": true,\n" : "    \"ignore_merges\": false,\n");
    tk_buf_puts(o, "    \"vocab\": {\n");
    for (size_t i = 0; i < t->n_tok; i++) {
        char num[32];
        indent(o, 6);
        json_string(o, t->tok_text.p + t->tok_off[i], t->tok_len[i]);
        snprintf(num, sizeof num, ": %zu%s\n", i, i + 1 < t->n_tok ? "," : "");
        tk_buf_puts(o, num);
    }
    tk_buf_puts(o, "    },\n");
    if (!n_merges)
        tk_buf_puts(o, "    \"merges\": []\n");
    else {
        tk_buf_puts(o, "    \"merges\": [\n");
        for (size_t i = 0; i < n_merges; i++) {
            uint32_t a = (uint32_t)(mp[i] >> 32), b = (uint32_t)mp[i];
            tk_buf_puts(o, "      [\n        ");
            json_string(o, t->tok_text.p + t->tok_off[a], t->tok_len[a]);
            tk_buf_puts(o, ",\n        ");
            json_string(o, t->tok_text.p + t->tok_off[b], t->tok_len[b]);
            tk_buf_puts(o, i + 1 < n_merges ? "\n      ],\n" : "\n      ]\n");
        }
        tk_buf_puts(o, "    ]\n");
    }
    tk_buf_puts(o, "  }\n}");
}

static void write_config(tk_buf *o, const char *bos, const char *eos) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddBoolToObject(c, "add_bos_token", bos != NULL);
    cJSON_AddBoolToObject(c, "add_eos_token", false);
    if (bos) cJSON_AddStringToObject(c, "bos_token", bos);
    cJSON_AddBoolToObject(c, "clean_up_tokenization_spaces", false);
    if (eos) cJSON_AddStringToObject(c, "eos_token", eos);
    cJSON_AddStringToObject(c, "tokenizer_class", "PreTrainedTokenizerFast");
    json_pretty(o, c, 0);
    tk_buf_putc(o, '\n');
    cJSON_Delete(c);
}

/* ---- the trainer ---- */

static mt_status check_opts(const mt_bpe_train_opts *o, int n_files, mt_error *err) {
    if (n_files <= 0) return mt_error_set(err, MT_ERR_INVALID, "tokenizer training needs at least one input file");
    if (o->min_frequency < 0)
        return mt_error_set(err, MT_ERR_INVALID, "min_frequency must be at least 0 (got %d)", o->min_frequency);
    if (o->n_special < 0 || (o->n_special && !o->special_tokens))
        return mt_error_set(err, MT_ERR_INVALID, "n_special %d does not match special_tokens", o->n_special);
    for (int i = 0; i < o->n_special; i++)
        if (!o->special_tokens[i] || !o->special_tokens[i][0] ||
            !mt_utf8_valid(o->special_tokens[i], strlen(o->special_tokens[i]), NULL))
            return mt_error_set(err, MT_ERR_INVALID, "special token %d is empty or not valid UTF-8", i);
    const char *be[2] = {o->bos_token, o->eos_token};
    for (int i = 0; i < 2; i++)
        if (be[i] && (!be[i][0] || !mt_utf8_valid(be[i], strlen(be[i]), NULL)))
            return mt_error_set(err, MT_ERR_INVALID, "%s token is empty or not valid UTF-8", i ? "eos" : "bos");
    return MT_OK;
}

mt_status mt_tokenizer_train(const char *const *files, int n_files, const mt_bpe_train_opts *opts, const char *out_dir,
                             mt_error *err) {
    mt_status st = check_opts(opts, n_files, err);
    if (st) return st;

    /* special tokens in order: the listed ones, then bos/eos when not among them */
    const char **specials = mt_xmalloc((size_t)(opts->n_special + 2) * sizeof *specials);
    int n_specials = 0;
    for (int i = 0; i < opts->n_special + 2; i++) {
        const char *s = i < opts->n_special ? opts->special_tokens[i] : i == opts->n_special ? opts->bos_token
                                                                                              : opts->eos_token;
        if (!s) continue;
        bool dup = false;
        for (int k = 0; k < n_specials; k++) dup |= !strcmp(specials[k], s);
        if (!dup) specials[n_specials++] = s;
    }
    long target = (long)opts->vocab_size - n_specials;
    if (target < 256) {
        free(specials);
        return mt_error_set(err, MT_ERR_INVALID,
                            "vocab_size %d is too small: it must hold the 256 byte tokens and %d special tokens",
                            opts->vocab_size, n_specials);
    }

    style_json sj;
    if ((st = style_build(opts->pretok, &sj, err))) {
        free(specials);
        return st;
    }
    /* The pipeline is loaded from the same JSON that will be written, so the words counted
     * are exactly the ones encoding will see. */
    cJSON *skel = cJSON_CreateObject();
    cJSON_AddItemReferenceToObject(skel, "normalizer", sj.normalizer);
    cJSON_AddItemReferenceToObject(skel, "pre_tokenizer", sj.pre_tokenizer);
    cJSON *model = cJSON_AddObjectToObject(skel, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddObjectToObject(model, "vocab");
    cJSON_AddArrayToObject(model, "merges");
    char *skel_text = cJSON_PrintUnformatted(skel);
    cJSON_Delete(skel);
    mt_tokenizer *pipe = NULL;
    st = mt_tokenizer_load_json(&pipe, skel_text, strlen(skel_text), "pre-tokenizer style", err);
    free(skel_text);

    file_list fl = {0};
    for (int i = 0; i < n_files && !st; i++) st = collect(&fl, files[i], 0, err);
    if (!st && !fl.n) st = mt_error_set(err, MT_ERR_NOT_FOUND, "no input files found under %s", files[0]);

    trainer t = {0};
    tk_match *m = tk_match_new();
    size_t budget = opts->max_bytes ? opts->max_bytes : SIZE_MAX;
    for (size_t i = 0; i < fl.n && !st && budget; i++) {
        char *text;
        size_t len;
        st = mt_read_file(fl.v[i], &text, &len, err);
        if (st) break;
        size_t n = strlen(fl.v[i]);
        if (n > 6 && !strcmp(fl.v[i] + n - 6, ".jsonl"))
            st = count_jsonl(&t, pipe, m, text, len, &budget, err);
        else
            st = count_file(&t, pipe, m, text, len, &budget, err);
        free(text);
        if (st) mt_error_prefix(err, "%s: ", fl.v[i]);
    }
    tk_match_free(m);
    mt_tokenizer_free(pipe);
    for (size_t i = 0; i < fl.n; i++) free(fl.v[i]);
    free(fl.v);

    /* the alphabet: all 256 byte characters, ordered by code point as the trainer sorts them */
    uint8_t byte_of_id[256];
    int32_t id_of_byte[256];
    if (!st) {
        int k = 0;
        for (uint32_t cp = 0; cp < 0x200; cp++) {
            int b = tk_cp_to_byte(cp);
            if (b < 0) continue;
            byte_of_id[k] = (uint8_t)b;
            id_of_byte[b] = k++;
        }
        MT_ASSERT(k == 256);
        for (int i = 0; i < 256; i++) {
            char u[4];
            add_token(&t, u, tk_utf8_encode(tk_byte_to_cp[byte_of_id[i]], u));
        }
    }

    /* words to symbols */
    if (!st) {
        t.off = mt_xmalloc((t.n_words + 1) * sizeof *t.off);
        t.len = mt_xmalloc((t.n_words + 1) * sizeof *t.len);
        size_t total = 0;
        for (size_t i = 0; i < t.words.cap; i++)
            if (t.words.slots[i].used) total += t.words.slots[i].len;
        t.sym = mt_xmalloc((total + 1) * sizeof *t.sym);
        /* words are laid out in index order */
        const char **wtext = mt_xmalloc((t.n_words + 1) * sizeof *wtext);
        uint32_t *wlen = mt_xmalloc((t.n_words + 1) * sizeof *wlen);
        for (size_t i = 0; i < t.words.cap; i++)
            if (t.words.slots[i].used) {
                wtext[t.words.slots[i].val] = tk_strmap_key(&t.words, i);
                wlen[t.words.slots[i].val] = t.words.slots[i].len;
            }
        size_t at = 0;
        for (size_t w = 0; w < t.n_words; w++) {
            t.off[w] = at;
            const unsigned char *s = (const unsigned char *)wtext[w];
            for (size_t k = 0; k < wlen[w];) {
                uint32_t cp;
                size_t l = tk_utf8_decode(s + k, wlen[w] - k, &cp);
                int b = l ? tk_cp_to_byte(cp) : -1;
                MT_ASSERT(b >= 0);
                t.sym[at++] = id_of_byte[b];
                k += l;
            }
            t.len[w] = (uint32_t)(at - t.off[w]);
        }
        t.off[t.n_words] = at;
        free(wtext);
        free(wlen);
    }

    /* initial pair counts */
    where_map where = {0};
    if (!st) {
        for (uint32_t w = 0; w < t.n_words; w++) {
            const int32_t *s = t.sym + t.off[w];
            for (uint32_t k = 0; k + 1 < t.len[w]; k++) {
                pair_add(&t, PAIR(s[k], s[k + 1]), (int64_t)t.count[w]);
                where_add(&where, PAIR(s[k], s[k + 1]), w);
            }
        }
        where_drain(&t, &where);
    }

    /* merges */
    tk_buf nt = {0};
    while (!st && (long)t.n_tok < target && t.n_heap) {
        heap_entry top = heap_pop(&t);
        uint64_t cur = 0;
        tk_u64map_get(&t.pair_count, top.pair, &cur);
        if (top.count != (int64_t)cur) {
            top.count = (int64_t)cur;
            heap_push(&t, top);
            continue;
        }
        if (top.count < 1 || (int64_t)opts->min_frequency > top.count) {
            free(top.pos);
            break;
        }
        int32_t a = (int32_t)(top.pair >> 32), b = (int32_t)(uint32_t)top.pair;
        nt.len = 0;
        tk_buf_put(&nt, t.tok_text.p + t.tok_off[a], t.tok_len[a]);
        tk_buf_put(&nt, t.tok_text.p + t.tok_off[b], t.tok_len[b]);
        int32_t new_id = add_token(&t, nt.p, nt.len);
        if (t.n_merges == t.cap_merges) {
            t.cap_merges = t.cap_merges ? t.cap_merges * 2 : 1024;
            t.merge_pair = mt_xrealloc(t.merge_pair, t.cap_merges * sizeof *t.merge_pair);
        }
        t.merge_pair[t.n_merges++] = top.pair;
        for (uint32_t k = 0; k < top.npos; k++) word_merge(&t, top.pos[k], a, b, new_id, &where);
        free(top.pos);
        where_drain(&t, &where);
    }
    tk_buf_free(&nt);
    free(where.v);

    if (!st) {
        /* A pair merged twice keeps only its last rank, as the library's merge map does. */
        tk_u64map last = {0};
        for (size_t i = 0; i < t.n_merges; i++) tk_u64map_put(&last, t.merge_pair[i], i);
        uint64_t *mp = mt_xmalloc((t.n_merges + 1) * sizeof *mp);
        size_t nm = 0;
        for (size_t i = 0; i < t.n_merges; i++) {
            uint64_t li;
            tk_u64map_get(&last, t.merge_pair[i], &li);
            if (li == i) mp[nm++] = t.merge_pair[i];
        }
        tk_u64map_free(&last);

        /* special tokens after the vocabulary; one the vocabulary already has keeps its id */
        int32_t *sid = mt_xmalloc((size_t)(n_specials + 1) * sizeof *sid);
        int32_t next = (int32_t)t.n_tok;
        for (int i = 0; i < n_specials; i++) {
            int32_t have = tk_strmap_get(&t.vocab, specials[i], strlen(specials[i]));
            sid[i] = have >= 0 ? have : next++;
        }
        int32_t bos_id = -1;
        for (int i = 0; i < n_specials; i++)
            if (opts->bos_token && !strcmp(specials[i], opts->bos_token)) bos_id = sid[i];

        tk_buf json = {0}, cfg = {0};
        write_tokenizer_json(&json, &t, &sj, mp, nm, specials, sid, n_specials, opts->bos_token, bos_id);
        write_config(&cfg, opts->bos_token, opts->eos_token);
        char path[4200];
        st = mt_mkdirs(out_dir, err);
        if (!st && !mt_path_join(path, sizeof path, out_dir, "tokenizer.json"))
            st = mt_error_set(err, MT_ERR_INVALID, "%s: path too long", out_dir);
        if (!st) st = mt_write_file_atomic(path, json.p, json.len, err);
        if (!st && !mt_path_join(path, sizeof path, out_dir, "tokenizer_config.json"))
            st = mt_error_set(err, MT_ERR_INVALID, "%s: path too long", out_dir);
        if (!st) st = mt_write_file_atomic(path, cfg.p, cfg.len, err);
        tk_buf_free(&json);
        tk_buf_free(&cfg);
        free(mp);
        free(sid);
    }
    trainer_free(&t);
    style_free(&sj);
    free(specials);
    return st;
}
