/* corpora.h — the corpora room's one public header: domain corpora built from the text every
 * Debian machine carries (licenses for legal, GCIDE for medical, dictionary and documentation
 * prose for general), written as JSONL train and held-out eval files. Uses common/ only. */
#ifndef MT_CORPORA_H
#define MT_CORPORA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Domain corpora built from text every Debian machine carries (docs/data.md): the license
 * texts and package copyright files (legal), GCIDE dictionary entries tagged (Med.), (Anat.),
 * (Pathol.), (Physiol.), (Surg.) (medical), and other dictionary and documentation prose
 * (general, for pretraining the tiny base). Output is JSONL, one {"text","source","id"} object
 * per document, train and held-out eval in two files, byte-identical run to run. */

typedef enum mt_corpus_kind {
    MT_CORPUS_KIND_LEGAL = 0,
    MT_CORPUS_KIND_MEDICAL,
    MT_CORPUS_KIND_GENERAL,
    MT_CORPUS_KIND_COUNT
} mt_corpus_kind;

/* The GCIDE field tags that make an entry medical, in the order of mt_corpus_stats.tag_docs. */
typedef enum mt_corpus_tag {
    MT_CORPUS_TAG_MED = 0,
    MT_CORPUS_TAG_ANAT,
    MT_CORPUS_TAG_PATHOL,
    MT_CORPUS_TAG_PHYSIOL,
    MT_CORPUS_TAG_SURG,
    MT_CORPUS_TAG_COUNT
} mt_corpus_tag;

/* The general corpus's default size cap: enough prose to pretrain the tiny base, bounded so
 * that its data and tokenization stay small. */
#define MT_CORPUS_GENERAL_MAX_BYTES ((uint64_t)8 << 20)
/* max_bytes value that means "no cap" for every kind. */
#define MT_CORPUS_NO_CAP UINT64_MAX

typedef struct mt_corpus_opts {
    const char *root;     /* prefix the /usr/share paths are read under; NULL or "" = "/" */
    double eval_fraction; /* held-out share of documents, in [0, 0.5]; default 0.05 */
    uint64_t max_bytes;   /* cap on the text bytes kept (train + eval); 0 = the kind's default
                           * (MT_CORPUS_GENERAL_MAX_BYTES for general, none for legal/medical) */
    uint64_t seed;        /* mixed into the split and sampling hashes; default 0 */
} mt_corpus_opts;

typedef struct mt_corpus_stats {
    uint64_t files_read;           /* files opened and decoded as text (decompressed when gzip) */
    uint64_t files_skipped;        /* binary, unreadable, empty, outside the root, or a second
                                    * path (symlink) to a file already read */
    uint64_t files_repaired;       /* held bytes that were not UTF-8, re-decoded as Windows-1252 */
    uint64_t bytes_read;           /* decoded bytes of the files read */
    uint64_t entries_read;         /* GCIDE entries examined (medical, general) */
    uint64_t docs_seen;            /* candidate documents */
    uint64_t docs_duplicate;       /* dropped: same whitespace-normalised text as an earlier one */
    uint64_t docs_empty;           /* dropped: too little left after paragraph dedup/filtering */
    uint64_t docs_capped;          /* dropped by max_bytes */
    uint64_t paragraphs_seen;      /* paragraphs examined by the paragraph-level dedup */
    uint64_t paragraphs_duplicate; /* dropped: seen before (normalised) in this corpus */
    uint64_t paragraphs_legal;     /* general: dropped as legal text (licenses, copyright) */
    uint64_t docs_train, docs_eval;
    uint64_t bytes_train, bytes_eval;          /* UTF-8 bytes of the "text" values written */
    uint64_t tag_docs[MT_CORPUS_TAG_COUNT];    /* medical: kept documents carrying each tag */
} mt_corpus_stats;

void mt_corpus_opts_default(mt_corpus_opts *opts);
/* "legal", "medical", "general"; an unknown name gets MT_ERR_INVALID with a suggestion. */
mt_status mt_corpus_kind_parse(const char *name, mt_corpus_kind *out, mt_error *err);
const char *mt_corpus_kind_name(mt_corpus_kind kind);
const char *mt_corpus_tag_name(mt_corpus_tag tag); /* "Med.", "Anat.", ... */
/* The held-out file beside `out_path`: "x.jsonl" → "x.eval.jsonl", any other name → name +
 * ".eval.jsonl". Returns false when it does not fit in `cap`. */
bool mt_corpus_eval_path(const char *out_path, char *dst, size_t cap);

/* Builds the corpus of `kind`: reads the sources under opts->root in sorted order, drops
 * duplicate documents and paragraphs, caps the size, splits documents into train (out_path)
 * and held-out eval (mt_corpus_eval_path) by a hash of their text, and writes both files
 * atomically. opts may be NULL (defaults); stats may be NULL. Fails with MT_ERR_NOT_FOUND when
 * the sources are missing or give no document. */
mt_status mt_corpus_build(mt_corpus_kind kind, const char *out_path, const mt_corpus_opts *opts,
                          mt_corpus_stats *stats, mt_error *err);

/* ---- definition pairs (docs/preference.md) ---- */

typedef struct mt_definition_pairs_stats {
    uint64_t definitions;      /* "Term: definition" entries read from the medical corpus */
    uint64_t entries_skipped;  /* entries with no term or too short a definition */
    uint64_t same_definition;  /* terms left out: their other term had the same definition */
    uint64_t pairs;            /* written */
} mt_definition_pairs_stats;

/* Preference pairs from the medical corpus (built as mt_corpus_build does, with opts' root and
 * seed): one per term, {"prompt": "Term:", "chosen": " its definition", "rejected": " another
 * term's definition", "label_source": "gcide-definitions"}, definitions cut to their first
 * sentence and at most max_chars bytes (0: 160). The other term is drawn from opts->seed.
 * Written atomically to out_path; stats may be NULL. */
mt_status mt_corpus_definition_pairs(const char *out_path, const mt_corpus_opts *opts, size_t max_chars,
                                     mt_definition_pairs_stats *stats, mt_error *err);

#endif
