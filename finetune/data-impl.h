/* data-impl.h — the trainer's data inside finetune/: documents tokenized once (and cached),
 * then cut into fixed-length rows of inputs, targets, positions and document masks that the
 * model consumes as mt_batch. */
#ifndef MT_FINETUNE_DATA_IMPL_H
#define MT_FINETUNE_DATA_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "finetune.h"
#include "model/model.h"

/* Tokenized documents, concatenated. learn[i] = 1 when token i is a prediction target that
 * counts in the loss (the first token of a document never is: nothing precedes it). */
typedef struct mt_docs {
    int32_t *ids;     /* [n_tokens] */
    uint8_t *learn;   /* [n_tokens] */
    int64_t *doc_off; /* [n_docs + 1] document d is ids[doc_off[d] .. doc_off[d+1]) */
    int64_t n_docs, n_tokens;
} mt_docs;

void mt_docs_free(mt_docs *d);
/* "text", "prompt_completion", "messages", "plain" or "auto", as the store records formats. */
const char *mt_data_format_name(mt_recipe_format f);

typedef struct mt_data_source {
    char path[4096];
    char sha256[65];            /* of the file, or of a folder's sorted (name, hash) list */
    mt_recipe_format format;    /* resolved (never AUTO) */
    bool from_cache;
} mt_data_source;

/* Reads and tokenizes every path (JSONL files in the recipe's formats, or folders / text files
 * of plain documents), appending to *docs. A cache file in cache_dir (may be NULL: no cache),
 * keyed by the data's and the tokenizer's hashes and the settings, makes the second run skip
 * tokenization. Errors name the file and line. sources[n_paths] receives what was read. */
mt_status mt_data_load(const mt_recipe_list *paths, mt_recipe_format format, bool mask_prompt,
                       const mt_tokenizer *tok, const char *tokenizer_hash, const char *cache_dir, mt_docs *docs,
                       mt_data_source *sources, mt_error *err);

/* Splits docs into two sets: a document goes to eval when a hash of (seed, its index) falls
 * below fraction; deterministic, and at least one document on each side when there are two. */
void mt_docs_split(const mt_docs *all, double fraction, uint64_t seed, mt_docs *train, mt_docs *eval);

/* Rows of T positions. For row r and position t: tokens[r·T+t] is the input,
 * targets[r·T+t] the next token or MT_IGNORE_INDEX (padding, a document boundary, or a token
 * the loss does not count), pos the rotary position, kv_start the first position of the row
 * the token may attend to (its document's start within the row). */
typedef struct mt_rows {
    int T;
    int64_t n_rows;
    int32_t *tokens, *targets, *pos, *kv_start; /* [n_rows·T] */
    int32_t *n_targets;                           /* [n_rows] targets that count */
} mt_rows;

/* packing: documents concatenated into one stream, cut every T tokens, attention confined to
 * each document; otherwise each document is cut into rows of its own, padded. */
mt_status mt_rows_build(const mt_docs *docs, int T, bool packing, int32_t pad_id, mt_rows *rows, mt_error *err);
void mt_rows_free(mt_rows *rows);

/* The order rows are visited in during epoch `epoch`: a permutation seeded by (seed, epoch),
 * or the identity when shuffle is false. order has n_rows entries. */
void mt_rows_epoch_order(int64_t n_rows, uint64_t seed, int64_t epoch, bool shuffle, int64_t *order);

#endif
