/* corpus-impl.h — internals shared by the corpus builders (corpus.c: text repair, dedup,
 * split, JSONL; corpus-legal.c, corpus-medical.c, corpus-general.c: the sources; gcide.c: the
 * dictd GCIDE reader and entry renderer). Nothing here is part of corpora.h. */
#ifndef MT_CORPUS_IMPL_H
#define MT_CORPUS_IMPL_H

#include <limits.h>

#include "corpora/corpora.h"

/* ---- growable byte buffer with a sticky out-of-memory flag: appends after a failed
 * allocation are ignored, and the builder checks `oom` once per stage ---- */
typedef struct mt_corpus_buf {
    char *p; /* [cap] bytes, NUL-terminated after every append */
    size_t len, cap;
    bool oom;
} mt_corpus_buf;

void mt_corpus_buf_put(mt_corpus_buf *b, const char *s, size_t n);
void mt_corpus_buf_putc(mt_corpus_buf *b, char c);
void mt_corpus_buf_puts(mt_corpus_buf *b, const char *s);
void mt_corpus_buf_free(mt_corpus_buf *b);

/* ---- open-addressing set of 64-bit hashes (dedup keys, real paths) ---- */
typedef struct mt_corpus_set {
    uint64_t *slots; /* [cap], 0 = empty */
    size_t cap, n;
    bool oom;
} mt_corpus_set;

/* Inserts h; returns true when it was already present. */
bool mt_corpus_set_insert(mt_corpus_set *s, uint64_t h);
void mt_corpus_set_free(mt_corpus_set *s);
/* FNV-1a over bytes, then a splitmix finaliser: stable across machines and builds. */
uint64_t mt_corpus_hash(const void *data, size_t n);

/* ---- text ---- */

/* Turns file bytes into clean UTF-8: valid UTF-8 passes through; any other byte is decoded as
 * Windows-1252 (*repaired set); CRLF and lone CR become LF, form feed a blank line; a leading
 * BOM, other control characters and trailing spaces on lines are dropped. Returns false, with
 * `out` unchanged, for binary data (a NUL byte). */
bool mt_corpus_decode_text(const char *raw, size_t n, mt_corpus_buf *out, bool *repaired);
/* Appends s[0..n) to out as the inside of a JSON string (s is valid UTF-8). */
void mt_corpus_json_escape(mt_corpus_buf *out, const char *s, size_t n);

/* ---- the builder's state ---- */

typedef struct mt_corpus_doc {
    char *text;         /* [len] UTF-8, owned */
    size_t len;
    char *id;           /* owned, UTF-8 */
    const char *source; /* static string */
    uint64_t hash;      /* mt_corpus_hash of text: drives sampling and the split */
    unsigned tags;      /* medical: bit mask over mt_corpus_tag */
} mt_corpus_doc;

typedef struct mt_corpus_ctx {
    mt_corpus_kind kind;
    mt_corpus_opts opts;
    mt_corpus_stats *st;
    char root[PATH_MAX];     /* opts.root without a trailing '/' ("" for "/") */
    char realroot[PATH_MAX]; /* realpath of the root: every file read must resolve inside it */
    mt_corpus_doc *docs;     /* [n_docs] in the order they were found */
    size_t n_docs, cap_docs;
    mt_corpus_set doc_keys;  /* whitespace-normalised document texts seen */
    mt_corpus_set para_keys; /* normalised paragraphs seen */
    mt_corpus_set real_paths; /* files already read, by resolved path */
    bool oom;
} mt_corpus_ctx;

/* "<root>/<rel>" into dst; false when it does not fit. */
bool mt_corpus_path(const mt_corpus_ctx *c, const char *rel, char *dst, size_t cap);
/* The sorted (byte order) names in a folder, "." and ".." left out. A missing or unreadable
 * folder gives an empty list. Free with mt_corpus_names_free. */
void mt_corpus_list_dir(const char *dir, char ***names, size_t *n);
void mt_corpus_names_free(char **names, size_t n);
/* true when `path` is a folder whose real path lies inside the root. */
bool mt_corpus_is_dir_inside(const mt_corpus_ctx *c, const char *path);
/* Reads a file (gzip-compressed or plain) as text into `text`, updating the file counters.
 * Returns false when the file is skipped: not a regular file, outside the root, already read
 * through another path, unreadable, binary, empty, or larger than the per-file limit. */
bool mt_corpus_load_text(mt_corpus_ctx *c, const char *path, mt_corpus_buf *text);
/* Reads a file's raw bytes (gunzipped when compressed) with the same checks, no decoding. */
bool mt_corpus_load_raw(mt_corpus_ctx *c, const char *path, mt_corpus_buf *raw);

enum {
    MT_CORPUS_DOC_PARAGRAPHS = 1 << 0, /* paragraph-level dedup */
    MT_CORPUS_DOC_NO_LEGAL = 1 << 1,   /* drop paragraphs that read as legal text */
    MT_CORPUS_DOC_CHUNK = 1 << 2,      /* split into documents of at most MT_CORPUS_CHUNK_BYTES */
};
/* Documents made of files need this much text left after dedup to be kept. */
#define MT_CORPUS_MIN_FILE_DOC_BYTES 64
#define MT_CORPUS_CHUNK_BYTES (32u << 10)

/* Offers one candidate document (text already decoded): document-level dedup, then what
 * `flags` ask for, then appends it (or its chunks) to the list. Returns how many documents it
 * appended (the last ones in c->docs). */
size_t mt_corpus_add_doc(mt_corpus_ctx *c, const char *id, const char *source, const char *text, size_t len,
                         unsigned flags);

/* The sources, one per kind. A source that is missing altogether is an error for legal and
 * medical (their only sources) and skipped for general. */
mt_status mt_corpus_collect_legal(mt_corpus_ctx *c, mt_error *err);
mt_status mt_corpus_collect_medical(mt_corpus_ctx *c, mt_error *err);
mt_status mt_corpus_collect_general(mt_corpus_ctx *c, mt_error *err);

/* ---- GCIDE in dictd format (gcide.index + gcide.dict.dz) ---- */

typedef struct mt_gcide_entry {
    uint64_t off, len; /* byte range in the decompressed dictionary */
} mt_gcide_entry;

typedef struct mt_gcide {
    mt_corpus_buf dict;   /* the decompressed dictionary text */
    mt_gcide_entry *ents; /* [n] distinct ranges, by offset */
    size_t n;
} mt_gcide;

/* Opens "<root>/usr/share/dictd/gcide.{index,dict.dz}" (or an uncompressed gcide.dict).
 * MT_ERR_NOT_FOUND when absent, MT_ERR_FORMAT (with the index line) when malformed. */
mt_status mt_gcide_open(mt_corpus_ctx *c, mt_gcide *g, mt_error *err);
void mt_gcide_close(mt_gcide *g);
/* Bit mask over mt_corpus_tag of the medical field tags anywhere in an entry. */
unsigned mt_gcide_entry_tags(const char *e, size_t n);
/* Renders one entry as clean text, "headword: definition ..." (a line per sub-entry), with
 * the markup (pronunciation, etymology, source and field tags, accent codes) stripped. With
 * medical_only, keeps only the senses in a medical tag's scope: the whole entry when the tag is
 * in the head, else the tagged senses. *tags gets the medical tags of what was kept. Leaves
 * `out` empty for metadata and malformed entries. */
void mt_gcide_render(const char *e, size_t n, bool medical_only, mt_corpus_buf *out, unsigned *tags);

#endif
