/* tokenizer.h — the tokenizer room's one public header: tokenizer.json (byte-level BPE, and
 * SentencePiece-style BPE with byte fallback) encode and decode as the Hugging Face tokenizers
 * library does, streaming detokenization, and BPE training. Uses common/ only. */
#ifndef MT_TOKENIZER_H
#define MT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* =========================================================================================
 * Tokenizer (tokenizer.json: byte-level BPE, and SentencePiece-style BPE with byte fallback)
 * ========================================================================================= */

typedef struct mt_tokenizer mt_tokenizer;

/* `path` is a tokenizer.json or a folder holding it (and optionally tokenizer_config.json,
 * whose bos/eos tokens and chat_template are read). */
mt_status mt_tokenizer_load(mt_tokenizer **out, const char *path, mt_error *err);
void mt_tokenizer_free(mt_tokenizer *tok);
int mt_tokenizer_vocab_size(const mt_tokenizer *tok); /* highest id + 1, added tokens included */
/* Encodes like HF `tokenizer.encode(text, add_special_tokens=add_special)`: added tokens
 * matched first, normalizer, pre-tokenizer, BPE, then the post-processor's BOS when asked.
 * *ids is malloc'ed. */
mt_status mt_tokenizer_encode(const mt_tokenizer *tok, const char *text, size_t len, bool add_special, int32_t **ids,
                              size_t *n_ids, mt_error *err);
/* Decodes like HF `tokenizer.decode(ids, skip_special_tokens=skip_special)`. *out is malloc'ed,
 * NUL-terminated, invalid UTF-8 replaced by U+FFFD. */
mt_status mt_tokenizer_decode(const mt_tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special,
                              char **out, size_t *len, mt_error *err);
/* The raw bytes a single token stands for (may be part of a UTF-8 character), for streaming.
 * Returns the number of bytes written to buf (at most cap). Special tokens give their text. */
size_t mt_tokenizer_token_bytes(const mt_tokenizer *tok, int32_t id, char *buf, size_t cap);
const char *mt_tokenizer_id_to_token(const mt_tokenizer *tok, int32_t id); /* NULL if out of range */
int32_t mt_tokenizer_token_to_id(const mt_tokenizer *tok, const char *token); /* −1 if absent */
bool mt_tokenizer_is_special(const mt_tokenizer *tok, int32_t id);
int32_t mt_tokenizer_bos_id(const mt_tokenizer *tok); /* −1 when none */
int32_t mt_tokenizer_eos_id(const mt_tokenizer *tok);
const char *mt_tokenizer_chat_template(const mt_tokenizer *tok); /* NULL when none */
/* The special tokens tokenizer_config.json names, as transformers' special_tokens_map hands
 * them to chat templates (bos_token ... mask_token, other "*_token" strings, the entries of
 * extra_special_tokens): *keys and *vals get arrays of the returned count, owned by tok. */
int mt_tokenizer_config_tokens(const mt_tokenizer *tok, const char *const **keys, const char *const **vals);
/* What messages name the tokenizer by: its tokenizer.json path (or the name it was loaded as). */
const char *mt_tokenizer_origin(const mt_tokenizer *tok);
/* true when s[0..n) is valid UTF-8 (RFC 3629); otherwise *bad_at (may be NULL) is the offset
 * of the first byte that does not start a valid character. */
bool mt_utf8_valid(const char *s, size_t n, size_t *bad_at);

/* ---- streaming detokenization ----
 * Text for one sequence as its tokens arrive. The pieces, concatenated (plus the flush),
 * equal mt_tokenizer_decode of the whole id sequence byte for byte, invalid UTF-8 included
 * (replaced as the Hugging Face tokenizers library replaces it); text that could still be
 * the start of a stop string is held back until it is known not to be one. */

typedef struct mt_detok mt_detok;

/* skip_special as in mt_tokenizer_decode; the stop strings (non-empty) are copied. The first
 * stop string to complete wins; of several completed by one token, the one that begins first. */
mt_status mt_detok_init(mt_detok **out, const mt_tokenizer *tok, bool skip_special, const char *const *stop,
                        int n_stop, mt_error *err);
void mt_detok_free(mt_detok *d);
/* Adds one token; *text, *len: the text that became final (pointer valid until the next call).
 * Returns the index of a stop string that is now complete (the text emitted ends just before
 * it; later calls emit nothing), else −1. */
int mt_detok_push(mt_detok *d, int32_t id, const char **text, size_t *len);
/* The end of the sequence: releases what was held back (an incomplete UTF-8 tail becomes what
 * the whole decode makes of it). A stop string that only this completes still ends the text
 * before it. */
void mt_detok_flush(mt_detok *d, const char **text, size_t *len);
/* Everything emitted so far, NUL-terminated. */
const char *mt_detok_text(const mt_detok *d, size_t *len);

/* ---- tokenizer folders ---- */

/* Writes dir/tokenizer.json and tokenizer_config.json for a byte-level BPE with the 256 byte
 * tokens, no merges, and the special tokens <|bos|> (256, which the post-processor prepends)
 * and <|eos|> (257); model_max_length is max_len. The Hugging Face tokenizers library loads it. */
mt_status mt_tokenizer_write_bytes(const char *dir, int max_len, mt_error *err);
/* Copies tokenizer.json (and tokenizer_config.json, special_tokens_map.json when present) from
 * src, a tokenizer.json or a folder holding one, into dir. */
mt_status mt_tokenizer_copy_files(const char *src, const char *dir, mt_error *err);

/* ---- BPE training ---- */

typedef enum mt_pretok_style {
    MT_PRETOK_GPT2 = 0,
    MT_PRETOK_LLAMA3,
    MT_PRETOK_QWEN2,
    MT_PRETOK_DEEPSEEK_V3,
} mt_pretok_style;

typedef struct mt_bpe_train_opts {
    int vocab_size;                 /* including the 256 byte tokens and special tokens */
    int min_frequency;              /* pairs seen fewer times are not merged */
    mt_pretok_style pretok;
    const char *const *special_tokens; /* added as special tokens after the learnt vocabulary */
    int n_special;
    const char *bos_token, *eos_token; /* written into tokenizer_config.json; may be NULL */
    size_t max_bytes;               /* stop reading input after this many bytes (0 = all) */
} mt_bpe_train_opts;

/* Learns a byte-level BPE vocabulary from text files and writes `out_dir`/tokenizer.json (and
 * tokenizer_config.json) that the Hugging Face tokenizers library loads. */
mt_status mt_tokenizer_train(const char *const *files, int n_files, const mt_bpe_train_opts *opts,
                             const char *out_dir, mt_error *err);

#endif
