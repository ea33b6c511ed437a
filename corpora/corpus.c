/* corpus.c — the corpus builder's core: file reading (gzip or plain) confined to the root,
 * text repair, document- and paragraph-level dedup, the size cap, the hash-based held-out
 * split, and the JSONL writer. The sources themselves live in corpus-{legal,medical,general}.c. */
#define _GNU_SOURCE
#include "corpus-impl.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* A single input above this is not text anyone meant as a document (or a gzip bomb). */
#define MAX_FILE_BYTES ((size_t)256 << 20)
/* Paragraphs shorter than this (normalised) are structure — "License: MIT", "Files: *" — and
 * are never dropped as duplicates: dropping them would gut documents without shrinking them. */
#define MIN_DEDUP_PARAGRAPH 64
/* The held-out set gets at least this many documents when the corpus has twice as many, so a
 * small corpus still has an eval set at eval_fraction 0.05. */
#define MIN_EVAL_DOCS 3
/* A file more than 1/8 of whose bytes are not UTF-8 is binary or in an encoding we would only
 * turn into mojibake. */
#define MAX_INVALID_SHARE 8

static const uint64_t SALT_SAMPLE = 0x73616d706c65ull; /* "sample" */
static const uint64_t SALT_SPLIT = 0x73706c6974ull;    /* "split" */

/* ------------------------------------------------------------------------------------------
 * buffers, sets, hashes
 * ------------------------------------------------------------------------------------------ */

static bool buf_reserve(mt_corpus_buf *b, size_t extra) {
    if (b->oom) return false;
    if (b->len + extra + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void mt_corpus_buf_put(mt_corpus_buf *b, const char *s, size_t n) {
    if (!buf_reserve(b, n)) return;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void mt_corpus_buf_putc(mt_corpus_buf *b, char c) { mt_corpus_buf_put(b, &c, 1); }
void mt_corpus_buf_puts(mt_corpus_buf *b, const char *s) { mt_corpus_buf_put(b, s, strlen(s)); }

void mt_corpus_buf_free(mt_corpus_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

uint64_t mt_corpus_hash(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = FNV_OFFSET;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * FNV_PRIME;
    return mix64(h);
}

bool mt_corpus_set_insert(mt_corpus_set *s, uint64_t h) {
    if (s->oom) return false;
    if (!h) h = 1;
    if ((s->n + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        uint64_t *slots = calloc(cap, sizeof *slots);
        if (!slots) {
            s->oom = true;
            return false;
        }
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slots[i]) continue;
            size_t j = s->slots[i] & (cap - 1);
            while (slots[j]) j = (j + 1) & (cap - 1);
            slots[j] = s->slots[i];
        }
        free(s->slots);
        s->slots = slots;
        s->cap = cap;
    }
    size_t j = h & (s->cap - 1);
    while (s->slots[j]) {
        if (s->slots[j] == h) return true;
        j = (j + 1) & (s->cap - 1);
    }
    s->slots[j] = h;
    s->n++;
    return false;
}

void mt_corpus_set_free(mt_corpus_set *s) {
    free(s->slots);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------------------------
 * text repair and JSON
 * ------------------------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlongs, no surrogates, at most
 * U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (n < need + 1) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i <= need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return need + 1;
}

static void put_utf8(mt_corpus_buf *b, unsigned cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    }
    mt_corpus_buf_put(b, u, n);
}

/* Windows-1252's 0x80–0x9F (U+FFFD where it defines nothing); 0xA0–0xFF are Latin-1. */
static const unsigned short CP1252_HIGH[32] = {
    0x20AC, 0xFFFD, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0xFFFD, 0x017D, 0xFFFD, 0xFFFD, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0xFFFD, 0x017E, 0x0178,
};

static void trim_line_end(mt_corpus_buf *b, size_t line_start) {
    while (b->len > line_start && (b->p[b->len - 1] == ' ' || b->p[b->len - 1] == '\t')) b->len--;
    if (b->p) b->p[b->len] = '\0';
}

static void transcode(const char *raw, size_t n, mt_corpus_buf *out) {
    const unsigned char *s = (const unsigned char *)raw;
    size_t i = 0, line_start = out->len;
    if (n >= 3 && s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF) i = 3;
    while (i < n) {
        unsigned c = s[i];
        if (c == '\r' || c == '\n' || c == '\f') {
            trim_line_end(out, line_start);
            mt_corpus_buf_putc(out, '\n');
            line_start = out->len;
            i += (c == '\r' && i + 1 < n && s[i + 1] == '\n') ? 2 : 1;
            continue;
        }
        if (c < 0x80) {
            if (c >= 0x20 && c != 0x7F)
                mt_corpus_buf_putc(out, (char)c);
            else if (c == '\t')
                mt_corpus_buf_putc(out, '\t');
            i++;
            continue;
        }
        size_t k = utf8_seq(s + i, n - i);
        if (k) {
            /* C1 controls (U+0080–U+009F) are never text */
            if (!(k == 2 && c == 0xC2 && s[i + 1] < 0xA0)) mt_corpus_buf_put(out, raw + i, k);
            i += k;
            continue;
        }
        put_utf8(out, c < 0xA0 ? CP1252_HIGH[c - 0x80] : c);
        i++;
    }
    trim_line_end(out, line_start);
}

bool mt_corpus_decode_text(const char *raw, size_t n, mt_corpus_buf *out, bool *repaired) {
    const unsigned char *s = (const unsigned char *)raw;
    if (memchr(raw, '\0', n)) return false;
    size_t invalid = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(s + i, n - i);
        if (!k) {
            invalid++;
            k = 1;
        }
        i += k;
    }
    if (invalid > n / MAX_INVALID_SHARE) return false;
    if (repaired) *repaired = invalid > 0;
    transcode(raw, n, out);
    return true;
}

void mt_corpus_json_escape(mt_corpus_buf *out, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t run = 0; /* bytes at s+i-run.. that need no escaping, copied in one go */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7] = {0};
        size_t skip = 1;
        if (c == '"')
            memcpy(esc, "\\\"", 2);
        else if (c == '\\')
            memcpy(esc, "\\\\", 2);
        else if (c == '\n')
            memcpy(esc, "\\n", 2);
        else if (c == '\t')
            memcpy(esc, "\\t", 2);
        else if (c == '\r')
            memcpy(esc, "\\r", 2);
        else if (c < 0x20 || c == 0x7F) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
        } else if (c == 0xE2 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 &&
                   ((unsigned char)s[i + 2] == 0xA8 || (unsigned char)s[i + 2] == 0xA9)) {
            /* U+2028/U+2029 are valid in JSON but end lines in JavaScript and some JSONL tools */
            memcpy(esc, (unsigned char)s[i + 2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
            skip = 3;
        } else {
            run++;
            continue;
        }
        mt_corpus_buf_put(out, s + i - run, run);
        run = 0;
        mt_corpus_buf_puts(out, esc);
        i += skip - 1;
    }
    mt_corpus_buf_put(out, s + n - run, run);
}

/* ------------------------------------------------------------------------------------------
 * files under the root
 * ------------------------------------------------------------------------------------------ */

bool mt_corpus_path(const mt_corpus_ctx *c, const char *rel, char *dst, size_t cap) {
    int k = snprintf(dst, cap, "%s/%s", c->root, rel);
    return k >= 0 && (size_t)k < cap;
}

static bool inside_root(const mt_corpus_ctx *c, const char *real) {
    size_t n = strlen(c->realroot);
    if (n == 1 && c->realroot[0] == '/') return true;
    return !strncmp(real, c->realroot, n) && (real[n] == '/' || real[n] == '\0');
}

typedef struct name_entry {
    char *name;
    bool link;
} name_entry;

static int cmp_names(const void *a, const void *b) {
    const name_entry *x = a, *y = b;
    if (x->link != y->link) return x->link ? 1 : -1;
    return strcmp(x->name, y->name);
}

/* Symlinks sort after real entries so that a file is named by its own path (GPL-3, not its
 * alias GPL) and an alias is read only when its target was not. */
void mt_corpus_list_dir(const char *dir, char ***names, size_t *n) {
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return;
    name_entry *v = NULL;
    size_t cnt = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 64;
            v = mt_xrealloc(v, cap * sizeof *v);
        }
        char path[PATH_MAX];
        struct stat sb;
        bool link = snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path &&
                    lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode);
        v[cnt].name = mt_xstrdup(e->d_name);
        v[cnt].link = link;
        cnt++;
    }
    closedir(d);
    if (cnt) qsort(v, cnt, sizeof *v, cmp_names);
    char **out = cnt ? mt_xmalloc(cnt * sizeof *out) : NULL;
    for (size_t i = 0; i < cnt; i++) out[i] = v[i].name;
    free(v);
    *names = out;
    *n = cnt;
}

void mt_corpus_names_free(char **names, size_t n) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

bool mt_corpus_is_dir_inside(const mt_corpus_ctx *c, const char *path) {
    struct stat sb;
    char real[PATH_MAX];
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode) && realpath(path, real) && inside_root(c, real);
}

bool mt_corpus_load_raw(mt_corpus_ctx *c, const char *path, mt_corpus_buf *raw) {
    struct stat sb;
    char real[PATH_MAX];
    raw->len = 0;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || !realpath(path, real) || !inside_root(c, real) ||
        mt_corpus_set_insert(&c->real_paths, mt_corpus_hash(real, strlen(real)))) {
        c->st->files_skipped++;
        return false;
    }
    gzFile f = gzopen(path, "rb");
    if (!f) {
        c->st->files_skipped++;
        return false;
    }
    bool ok = true;
    for (;;) {
        if (!buf_reserve(raw, 1 << 16)) {
            ok = false;
            break;
        }
        int got = gzread(f, raw->p + raw->len, 1 << 16);
        if (got < 0) {
            ok = false;
            break;
        }
        if (got == 0) break;
        raw->len += (size_t)got;
        raw->p[raw->len] = '\0';
        if (raw->len > MAX_FILE_BYTES) {
            ok = false;
            break;
        }
    }
    gzclose(f);
    if (raw->oom) c->oom = true;
    if (!ok || raw->len == 0) {
        c->st->files_skipped++;
        raw->len = 0;
        return false;
    }
    c->st->files_read++;
    c->st->bytes_read += raw->len;
    return true;
}

bool mt_corpus_load_text(mt_corpus_ctx *c, const char *path, mt_corpus_buf *text) {
    mt_corpus_buf raw = {0};
    text->len = 0;
    bool ok = mt_corpus_load_raw(c, path, &raw);
    if (ok) {
        bool repaired = false;
        if (!mt_corpus_decode_text(raw.p, raw.len, text, &repaired)) {
            /* counted as read by load_raw; it turned out not to be text */
            c->st->files_read--;
            c->st->files_skipped++;
            c->st->bytes_read -= raw.len;
            ok = false;
        } else if (repaired)
            c->st->files_repaired++;
        if (text->oom) c->oom = true;
    }
    mt_corpus_buf_free(&raw);
    return ok;
}

/* ------------------------------------------------------------------------------------------
 * documents: dedup and paragraphs
 * ------------------------------------------------------------------------------------------ */

static bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n'; }

/* Hash of the text with every whitespace run read as one space, leading/trailing ones
 * ignored: "exact duplicate after whitespace normalisation" without building a copy. */
static uint64_t normalised_doc_hash(const char *s, size_t n) {
    uint64_t h = FNV_OFFSET;
    bool pending = false, any = false;
    for (size_t i = 0; i < n; i++) {
        if (is_space(s[i])) {
            pending = any;
            continue;
        }
        if (pending) h = (h ^ ' ') * FNV_PRIME;
        h = (h ^ (unsigned char)s[i]) * FNV_PRIME;
        pending = false;
        any = true;
    }
    return mix64(h);
}

/* The comparison key of a paragraph: per line, indentation and comment decoration ("*", "#")
 * dropped; whitespace runs as one space; ASCII lowercased. Copies of a license differ in
 * exactly these ways between copyright files. */
static void paragraph_key(const char *s, size_t n, mt_corpus_buf *key) {
    key->len = 0;
    bool line_start = true, pending = false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '\n') {
            line_start = true;
            pending = key->len > 0;
            continue;
        }
        if (line_start && (ch == ' ' || ch == '\t' || ch == '*' || ch == '#')) continue;
        line_start = false;
        if (ch == ' ' || ch == '\t') {
            pending = key->len > 0;
            continue;
        }
        if (pending) mt_corpus_buf_putc(key, ' ');
        pending = false;
        mt_corpus_buf_putc(key, (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch);
    }
}

/* Words that mark a paragraph of a license, a disclaimer or a copyright notice. */
static const char *const LEGAL_MARKERS[] = {
    "copyright", "licens", "licenc", "warrant", "liabilit", "redistribut", "free software foundation",
};

static bool reads_as_legal(const char *key) {
    for (size_t i = 0; i < sizeof LEGAL_MARKERS / sizeof LEGAL_MARKERS[0]; i++)
        if (strstr(key, LEGAL_MARKERS[i])) return true;
    return false;
}

static void keep_paragraph(mt_corpus_ctx *c, const char *s, size_t n, unsigned flags, mt_corpus_buf *key,
                           mt_corpus_buf *out) {
    c->st->paragraphs_seen++;
    paragraph_key(s, n, key);
    if (!key->len) return;
    if ((flags & MT_CORPUS_DOC_NO_LEGAL) && reads_as_legal(key->p)) {
        c->st->paragraphs_legal++;
        return;
    }
    if (key->len >= MIN_DEDUP_PARAGRAPH && mt_corpus_set_insert(&c->para_keys, mt_corpus_hash(key->p, key->len))) {
        c->st->paragraphs_duplicate++;
        return;
    }
    if (out->len) mt_corpus_buf_put(out, "\n\n", 2);
    mt_corpus_buf_put(out, s, n);
}

/* Blank, DEP-5's " ." (the blank line inside a field), or a comment's empty line (" *", "#"). */
static bool separator_line(const char *s, size_t n) {
    size_t dots = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.')
            dots++;
        else if (s[i] != ' ' && s[i] != '\t' && s[i] != '*' && s[i] != '#')
            return false;
    }
    return dots <= 1;
}

/* Paragraphs end at separator lines, so a license reads the same whether it was pasted as
 * DEP-5 continuation lines, a C comment or plain text.
 * A DEP-5 "License: NAME" line followed by the license text is split from it, because the
 * text is the part that repeats across copyright files under different headers. */
static void dedup_paragraphs(mt_corpus_ctx *c, const char *s, size_t n, unsigned flags, mt_corpus_buf *out) {
    mt_corpus_buf key = {0};
    size_t ps = 0, pe = 0, lines = 0;
    for (size_t ls = 0; ls < n;) {
        const char *nl = memchr(s + ls, '\n', n - ls);
        size_t le = nl ? (size_t)(nl - s) : n;
        if (separator_line(s + ls, le - ls)) {
            if (lines) keep_paragraph(c, s + ps, pe - ps, flags, &key, out);
            lines = 0;
        } else {
            if (!lines) ps = ls;
            if (lines == 1 && (s[ls] == ' ' || s[ls] == '\t') && !strncmp(s + ps, "License:", 8)) {
                keep_paragraph(c, s + ps, pe - ps, flags, &key, out);
                ps = ls;
                lines = 0;
            }
            lines++;
            pe = le;
        }
        ls = le + 1;
    }
    if (lines) keep_paragraph(c, s + ps, pe - ps, flags, &key, out);
    if (key.oom) c->oom = true;
    mt_corpus_buf_free(&key);
}

static void append_doc(mt_corpus_ctx *c, const char *id, const char *source, const char *text, size_t len) {
    if (c->n_docs == c->cap_docs) {
        size_t cap = c->cap_docs ? c->cap_docs * 2 : 1024;
        mt_corpus_doc *d = realloc(c->docs, cap * sizeof *d);
        if (!d) {
            c->oom = true;
            return;
        }
        c->docs = d;
        c->cap_docs = cap;
    }
    mt_corpus_buf idb = {0};
    transcode(id, strlen(id), &idb); /* file names need not be UTF-8 */
    char *t = malloc(len + 1);
    if (!t || idb.oom || !idb.p) {
        free(t);
        mt_corpus_buf_free(&idb);
        c->oom = true;
        return;
    }
    memcpy(t, text, len);
    t[len] = '\0';
    mt_corpus_doc *d = &c->docs[c->n_docs++];
    memset(d, 0, sizeof *d);
    d->text = t;
    d->len = len;
    d->id = idb.p;
    d->source = source;
    d->hash = mt_corpus_hash(text, len);
}

/* Cuts at the last paragraph break, else the last whitespace, before the limit; a run with
 * neither is cut at a UTF-8 character boundary. */
static size_t chunk_end(const char *s, size_t n, size_t limit) {
    if (n <= limit) return n;
    for (size_t i = limit; i > limit / 2; i--)
        if (s[i - 1] == '\n' && s[i] == '\n') return i - 1;
    for (size_t i = limit; i > limit / 2; i--)
        if (is_space(s[i])) return i;
    size_t i = limit;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i ? i : limit;
}

size_t mt_corpus_add_doc(mt_corpus_ctx *c, const char *id, const char *source, const char *text, size_t len,
                         unsigned flags) {
    size_t before = c->n_docs;
    c->st->docs_seen++;
    if (mt_corpus_set_insert(&c->doc_keys, normalised_doc_hash(text, len))) {
        c->st->docs_duplicate++;
        return 0;
    }
    mt_corpus_buf kept = {0};
    if (flags & MT_CORPUS_DOC_PARAGRAPHS) {
        dedup_paragraphs(c, text, len, flags, &kept);
        text = kept.p ? kept.p : "";
        len = kept.len;
    }
    size_t min = (flags & MT_CORPUS_DOC_PARAGRAPHS) ? MT_CORPUS_MIN_FILE_DOC_BYTES : 1;
    if (len < min) {
        c->st->docs_empty++;
    } else if (!(flags & MT_CORPUS_DOC_CHUNK) || len <= MT_CORPUS_CHUNK_BYTES) {
        append_doc(c, id, source, text, len);
    } else {
        char cid[PATH_MAX + 32];
        size_t part = 1;
        while (len) {
            while (len && is_space(*text)) text++, len--;
            if (!len) break;
            size_t k = chunk_end(text, len, MT_CORPUS_CHUNK_BYTES);
            snprintf(cid, sizeof cid, "%s#%zu", id, part++);
            append_doc(c, cid, source, text, k);
            text += k;
            len -= k;
        }
    }
    if (kept.oom || c->para_keys.oom || c->doc_keys.oom) c->oom = true;
    mt_corpus_buf_free(&kept);
    return c->n_docs - before;
}

/* ------------------------------------------------------------------------------------------
 * public API
 * ------------------------------------------------------------------------------------------ */

static const char *const KIND_NAMES[MT_CORPUS_KIND_COUNT] = {"legal", "medical", "general"};
static const char *const TAG_NAMES[MT_CORPUS_TAG_COUNT] = {"Med.", "Anat.", "Pathol.", "Physiol.", "Surg."};

void mt_corpus_opts_default(mt_corpus_opts *opts) {
    memset(opts, 0, sizeof *opts);
    opts->root = "/";
    opts->eval_fraction = 0.05;
}

const char *mt_corpus_kind_name(mt_corpus_kind kind) {
    return (unsigned)kind < MT_CORPUS_KIND_COUNT ? KIND_NAMES[kind] : "?";
}

const char *mt_corpus_tag_name(mt_corpus_tag tag) {
    return (unsigned)tag < MT_CORPUS_TAG_COUNT ? TAG_NAMES[tag] : "?";
}

mt_status mt_corpus_kind_parse(const char *name, mt_corpus_kind *out, mt_error *err) {
    int best = -1, best_d = 3;
    for (int k = 0; k < MT_CORPUS_KIND_COUNT; k++) {
        if (!strcmp(name, KIND_NAMES[k])) {
            *out = (mt_corpus_kind)k;
            return MT_OK;
        }
        int d = mt_edit_distance(name, KIND_NAMES[k]);
        if (d < best_d) best_d = d, best = k;
    }
    if (best >= 0)
        return mt_error_set(err, MT_ERR_INVALID, "corpus kind '%s': unknown (did you mean '%s'?); one of legal, "
                            "medical, general", name, KIND_NAMES[best]);
    return mt_error_set(err, MT_ERR_INVALID, "corpus kind '%s': unknown; one of legal, medical, general", name);
}

bool mt_corpus_eval_path(const char *out_path, char *dst, size_t cap) {
    size_t n = strlen(out_path);
    int k;
    if (n > 6 && !strcmp(out_path + n - 6, ".jsonl"))
        k = snprintf(dst, cap, "%.*s.eval.jsonl", (int)(n - 6), out_path);
    else
        k = snprintf(dst, cap, "%s.eval.jsonl", out_path);
    return k >= 0 && (size_t)k < cap;
}

typedef struct keyed {
    uint64_t key;
    size_t idx;
} keyed;

static int cmp_keyed(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Keeps a hash-ordered sample of the documents within max_bytes: the order is a fixed
 * pseudo-random permutation, so every source is represented in proportion and the same
 * inputs keep the same documents. Documents are filled greedily, so a big one that does not
 * fit leaves room for smaller ones after it. */
static void apply_cap(mt_corpus_ctx *c, uint64_t max_bytes, bool *keep) {
    uint64_t total = 0;
    for (size_t i = 0; i < c->n_docs; i++) total += c->docs[i].len;
    for (size_t i = 0; i < c->n_docs; i++) keep[i] = total <= max_bytes;
    if (total <= max_bytes) return;
    keyed *order = mt_xmalloc(c->n_docs * sizeof *order);
    for (size_t i = 0; i < c->n_docs; i++) order[i] = (keyed){mt_hash_u64(c->docs[i].hash, c->opts.seed ^ SALT_SAMPLE), i};
    qsort(order, c->n_docs, sizeof *order, cmp_keyed);
    uint64_t used = 0;
    for (size_t r = 0; r < c->n_docs; r++) {
        size_t i = order[r].idx;
        if (used + c->docs[i].len <= max_bytes) {
            keep[i] = true;
            used += c->docs[i].len;
        } else
            c->st->docs_capped++;
    }
    free(order);
}

/* The held-out set is the documents whose split hash, read as a number in [0, 1), is below
 * eval_fraction — topped up to MIN_EVAL_DOCS with the next-smallest hashes. Both rules pick a
 * prefix of the hash order, so the split depends only on each document's text and the seed. */
static void choose_eval(mt_corpus_ctx *c, const bool *keep, bool *eval) {
    size_t n = 0;
    keyed *order = mt_xmalloc((c->n_docs ? c->n_docs : 1) * sizeof *order);
    for (size_t i = 0; i < c->n_docs; i++) {
        eval[i] = false;
        if (keep[i]) order[n++] = (keyed){mt_hash_u64(c->docs[i].hash, c->opts.seed ^ SALT_SPLIT), i};
    }
    qsort(order, n, sizeof *order, cmp_keyed);
    size_t by_fraction = 0;
    while (by_fraction < n && (double)(order[by_fraction].key >> 11) * 0x1p-53 < c->opts.eval_fraction) by_fraction++;
    size_t min_eval = c->opts.eval_fraction > 0 ? (n / 2 < MIN_EVAL_DOCS ? n / 2 : MIN_EVAL_DOCS) : 0;
    size_t n_eval = by_fraction > min_eval ? by_fraction : min_eval;
    for (size_t r = 0; r < n_eval; r++) eval[order[r].idx] = true;
    free(order);
}

static void write_line(mt_corpus_buf *b, const mt_corpus_doc *d) {
    mt_corpus_buf_puts(b, "{\"text\": \"");
    mt_corpus_json_escape(b, d->text, d->len);
    mt_corpus_buf_puts(b, "\", \"source\": \"");
    mt_corpus_json_escape(b, d->source, strlen(d->source));
    mt_corpus_buf_puts(b, "\", \"id\": \"");
    mt_corpus_json_escape(b, d->id, strlen(d->id));
    mt_corpus_buf_puts(b, "\"}\n");
}

static void ctx_free(mt_corpus_ctx *c) {
    for (size_t i = 0; i < c->n_docs; i++) {
        free(c->docs[i].text);
        free(c->docs[i].id);
    }
    free(c->docs);
    mt_corpus_set_free(&c->doc_keys);
    mt_corpus_set_free(&c->para_keys);
    mt_corpus_set_free(&c->real_paths);
}

static mt_status write_outputs(mt_corpus_ctx *c, const char *out_path, const char *eval_path, mt_error *err) {
    uint64_t cap = c->opts.max_bytes;
    if (cap == 0) cap = c->kind == MT_CORPUS_KIND_GENERAL ? MT_CORPUS_GENERAL_MAX_BYTES : MT_CORPUS_NO_CAP;
    bool *keep = mt_xcalloc(c->n_docs, sizeof *keep);
    bool *eval = mt_xcalloc(c->n_docs, sizeof *eval);
    apply_cap(c, cap, keep);
    choose_eval(c, keep, eval);
    mt_corpus_buf train = {0}, held = {0};
    size_t smallest = SIZE_MAX, kept = 0;
    for (size_t i = 0; i < c->n_docs; i++) {
        const mt_corpus_doc *d = &c->docs[i];
        if (d->len < smallest) smallest = d->len;
        if (!keep[i]) continue;
        kept++;
        write_line(eval[i] ? &held : &train, d);
        if (eval[i]) {
            c->st->docs_eval++;
            c->st->bytes_eval += d->len;
        } else {
            c->st->docs_train++;
            c->st->bytes_train += d->len;
        }
        for (int t = 0; t < MT_CORPUS_TAG_COUNT; t++)
            if (d->tags & (1u << t)) c->st->tag_docs[t]++;
    }
    free(keep);
    free(eval);
    mt_status st = MT_OK;
    if (train.oom || held.oom)
        st = mt_error_set(err, MT_ERR_NOMEM, "%s: cannot hold the corpus in memory", out_path);
    else if (!kept)
        st = mt_error_set(err, MT_ERR_INVALID, "max_bytes %llu keeps no document (the smallest has %zu bytes)",
                          (unsigned long long)cap, smallest);
    if (st == MT_OK) st = mt_write_file_atomic(out_path, train.p ? train.p : "", train.len, err);
    if (st == MT_OK) st = mt_write_file_atomic(eval_path, held.p ? held.p : "", held.len, err);
    mt_corpus_buf_free(&train);
    mt_corpus_buf_free(&held);
    return st;
}

mt_status mt_corpus_build(mt_corpus_kind kind, const char *out_path, const mt_corpus_opts *opts,
                          mt_corpus_stats *stats, mt_error *err) {
    mt_corpus_opts defaults;
    mt_corpus_opts_default(&defaults);
    if (!opts) opts = &defaults;
    if ((unsigned)kind >= MT_CORPUS_KIND_COUNT)
        return mt_error_set(err, MT_ERR_INVALID, "corpus kind %d: unknown", (int)kind);
    if (!out_path || !*out_path) return mt_error_set(err, MT_ERR_INVALID, "corpus: no output path given");
    if (!isfinite(opts->eval_fraction) || opts->eval_fraction < 0 || opts->eval_fraction > 0.5)
        return mt_error_set(err, MT_ERR_INVALID, "corpus: eval_fraction %g is outside [0, 0.5]", opts->eval_fraction);
    char eval_path[PATH_MAX];
    if (!mt_corpus_eval_path(out_path, eval_path, sizeof eval_path))
        return mt_error_set(err, MT_ERR_INVALID, "%s: output path too long", out_path);

    mt_corpus_stats st = {0};
    mt_corpus_ctx c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    c.opts = *opts;
    c.st = &st;
    const char *root = opts->root && *opts->root ? opts->root : "/";
    size_t rn = strlen(root);
    while (rn > 1 && root[rn - 1] == '/') rn--;
    if (rn >= sizeof c.root) return mt_error_set(err, MT_ERR_INVALID, "%s: root path too long", root);
    if (rn == 1 && root[0] == '/') rn = 0;
    memcpy(c.root, root, rn);
    c.root[rn] = '\0';
    if (!realpath(rn ? c.root : "/", c.realroot) || !mt_is_dir(c.realroot))
        return mt_error_set(err, MT_ERR_NOT_FOUND, "corpus root %s: not a folder", root);

    static mt_status (*const collect[MT_CORPUS_KIND_COUNT])(mt_corpus_ctx *, mt_error *) = {
        mt_corpus_collect_legal, mt_corpus_collect_medical, mt_corpus_collect_general};
    mt_status s = collect[kind](&c, err);
    if (s == MT_OK && (c.oom || c.real_paths.oom))
        s = mt_error_set(err, MT_ERR_NOMEM, "%s corpus: out of memory while reading the sources", KIND_NAMES[kind]);
    if (s == MT_OK && c.n_docs == 0)
        s = mt_error_set(err, MT_ERR_NOT_FOUND, "%s corpus: no documents found under %s (%llu files read)",
                         KIND_NAMES[kind], root, (unsigned long long)st.files_read);
    if (s == MT_OK) s = write_outputs(&c, out_path, eval_path, err);
    ctx_free(&c);
    if (s == MT_OK && stats) *stats = st;
    return s;
}
