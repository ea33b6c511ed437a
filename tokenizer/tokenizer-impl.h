/* tokenizer-impl.h — internals shared by the tokenizer files (loading, encoding, decoding,
 * training) and the fuzz target: growable buffers, hash tables, UTF-8 helpers, the GPT-2
 * byte↔unicode map, the PCRE2 wrapper and the parsed tokenizer.json pipeline. */
#ifndef MT_TOKENIZER_IMPL_H
#define MT_TOKENIZER_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

/* ---- growable byte buffer ---- */

typedef struct tk_buf {
    char *p;
    size_t len, cap;
} tk_buf;

void tk_buf_reserve(tk_buf *b, size_t extra);
void tk_buf_put(tk_buf *b, const void *s, size_t n);
void tk_buf_putc(tk_buf *b, char c);
void tk_buf_puts(tk_buf *b, const char *s);
void tk_buf_free(tk_buf *b);

/* ---- string → int32 hash table (keys copied into a pool) ---- */

typedef struct tk_strmap_slot {
    uint64_t hash;
    uint32_t off, len; /* key bytes in pool */
    int32_t val;
    bool used;
} tk_strmap_slot;

typedef struct tk_strmap {
    tk_strmap_slot *slots;
    size_t cap, count; /* cap is a power of two */
    tk_buf pool;
} tk_strmap;

uint64_t tk_hash_bytes(const void *s, size_t n);
/* Returns the value, or −1 when absent. */
int32_t tk_strmap_get(const tk_strmap *m, const char *s, size_t n);
/* Inserts or overwrites; returns the previous value or −1. */
int32_t tk_strmap_put(tk_strmap *m, const char *s, size_t n, int32_t val);
/* Key bytes of slot i (for iteration over used slots). */
const char *tk_strmap_key(const tk_strmap *m, size_t i);
void tk_strmap_free(tk_strmap *m);

/* ---- u64 → u64 hash table (UINT64_MAX is reserved as the empty key) ---- */

typedef struct tk_u64map {
    uint64_t *keys, *vals;
    size_t cap, count;
} tk_u64map;

bool tk_u64map_get(const tk_u64map *m, uint64_t key, uint64_t *val);
void tk_u64map_put(tk_u64map *m, uint64_t key, uint64_t val);
/* Pointer to the value for key, inserting `init` first when absent. */
uint64_t *tk_u64map_slot(tk_u64map *m, uint64_t key, uint64_t init);
void tk_u64map_free(tk_u64map *m);

/* ---- UTF-8 ---- */

/* Length (1–4) of the valid UTF-8 character at s, or 0 when s[0..n) does not start with one. */
size_t tk_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
size_t tk_utf8_encode(uint32_t cp, char out[4]);
/* Appends s with every invalid sequence replaced by U+FFFD exactly as Rust's
 * String::from_utf8_lossy does (one U+FFFD per maximal subpart of an ill-formed sequence, the
 * Unicode "substitution of maximal subparts"). */
void tk_utf8_lossy(tk_buf *out, const char *s, size_t n);
/* true when s[0..n) ends inside a character that more bytes could still complete: lossy
 * decoding of it is not final yet. */
bool tk_utf8_pending(const char *s, size_t n);
/* Rust's char::is_whitespace (the Unicode White_Space property). */
bool tk_is_whitespace(uint32_t cp);
/* Rust's char::is_numeric (general categories Nd, Nl, No). */
bool tk_is_numeric(uint32_t cp);
/* The Rust regex crate's \w: letters, marks, decimal digits, connector punctuation, ZWJ/ZWNJ. */
bool tk_is_word_char(uint32_t cp);

/* ---- GPT-2 byte-level map (bytes_to_unicode of GPT-2's encoder.py: the printable bytes
 * 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF stand for themselves, the other 68 map in order to U+0100...) ---- */

extern const uint16_t tk_byte_to_cp[256]; /* byte → code point */
int tk_cp_to_byte(uint32_t cp);           /* code point → byte, −1 when not in the map */

/* ---- regular expressions (PCRE2, UTF + UCP, JIT when available) ---- */

typedef struct tk_regex tk_regex;
typedef struct tk_match tk_match; /* per-thread match scratch */

/* Compiles an Oniguruma/Rust-style pattern as the tokenizers library understands it
 * (\s = White_Space, \w as Rust, \h = hex digit, ^/$ at line ends); `literal` escapes the
 * whole string instead. On failure, err names `where` and PCRE2's message. */
mt_status tk_regex_compile(tk_regex **out, const char *pattern, size_t len, bool literal, const char *origin,
                           const char *where, mt_error *err);
void tk_regex_free(tk_regex *re);
tk_match *tk_match_new(void);
void tk_match_free(tk_match *m);
/* Finds the next match in s[0..n) at or after `start` (lookbehind sees s[0..start)).
 * Returns 1 with [*ms, *me) set, 0 when none, −1 when the matcher ran out of resources. */
int tk_regex_find(const tk_regex *re, tk_match *m, const char *s, size_t n, size_t start, size_t *ms, size_t *me);

/* ---- the parsed pipeline ---- */

typedef enum tk_norm_type {
    TK_NORM_NFC = 0,
    TK_NORM_NFD,
    TK_NORM_NFKC,
    TK_NORM_NFKD,
    TK_NORM_PREPEND,
    TK_NORM_REPLACE,
    TK_NORM_STRIP,
    TK_NORM_BYTELEVEL,
} tk_norm_type;

typedef struct tk_norm {
    tk_norm_type type;
    char *str;       /* Prepend: the prefix; Replace: the replacement */
    size_t str_len;
    tk_regex *re;    /* Replace: the pattern */
    bool left, right; /* Strip */
} tk_norm;

typedef enum tk_behavior {
    TK_SPLIT_REMOVED = 0,
    TK_SPLIT_ISOLATED,
    TK_SPLIT_MERGED_PREV,
    TK_SPLIT_MERGED_NEXT,
    TK_SPLIT_CONTIGUOUS,
} tk_behavior;

typedef enum tk_pre_type {
    TK_PRE_SPLIT = 0,
    TK_PRE_BYTELEVEL,
    TK_PRE_METASPACE,
    TK_PRE_DIGITS,
    TK_PRE_WHITESPACE,
    TK_PRE_WHITESPACE_SPLIT,
} tk_pre_type;

typedef enum tk_prepend_scheme { TK_PREPEND_ALWAYS = 0, TK_PREPEND_FIRST, TK_PREPEND_NEVER } tk_prepend_scheme;

typedef struct tk_pretok {
    tk_pre_type type;
    tk_regex *re;             /* Split pattern; ByteLevel's GPT-2 regex; Whitespace's regex */
    tk_behavior behavior;
    bool invert;
    bool add_prefix_space;    /* ByteLevel */
    bool use_regex;           /* ByteLevel */
    uint32_t replacement;     /* Metaspace */
    tk_prepend_scheme scheme; /* Metaspace */
    bool split;               /* Metaspace */
    bool individual;          /* Digits */
} tk_pretok;

typedef enum tk_dec_type {
    TK_DEC_BYTELEVEL = 0,
    TK_DEC_REPLACE,
    TK_DEC_BYTEFALLBACK,
    TK_DEC_FUSE,
    TK_DEC_STRIP,
    TK_DEC_METASPACE,
    TK_DEC_BPE,
} tk_dec_type;

typedef struct tk_decoder {
    tk_dec_type type;
    tk_regex *re;         /* Replace pattern */
    char *str;            /* Replace content; BPEDecoder suffix */
    size_t str_len;
    uint32_t ch;          /* Strip content; Metaspace replacement */
    int start, stop;      /* Strip */
    tk_prepend_scheme scheme; /* Metaspace */
} tk_decoder;

typedef struct tk_added {
    char *content;
    size_t len;
    char *text;      /* what id_to_token and decode give: content, normalized when normalized */
    size_t text_len;
    int32_t id;
    bool special, lstrip, rstrip, normalized, single_word;
} tk_added;

/* Byte trie over added tokens for leftmost-longest matching. Node 0 is the root; an edge is
 * a u64map entry (node << 8 | byte) → child. */
typedef struct tk_trie {
    tk_u64map edges;
    int32_t *term;   /* [n_nodes] index into tok->added, −1 when no token ends here */
    size_t n_nodes, cap_nodes;
} tk_trie;

struct mt_tokenizer {
    char *origin; /* the tokenizer.json path (or a name) used in messages */

    /* BPE model */
    tk_strmap vocab;          /* model vocabulary: token → id */
    tk_u64map merges;         /* (a << 32 | b) → (rank << 32 | new id) */
    char **id_tok;            /* [vocab_size] token text by id (added tokens included), NULL = hole */
    uint32_t *id_len;         /* [vocab_size] */
    int32_t *id_added;        /* [vocab_size] index into added, −1 when not an added token */
    int vocab_size;           /* highest id + 1 */
    char *unk_token;          /* NULL when none */
    char *cont_prefix, *eow_suffix; /* NULL when none */
    bool byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_ids[256];    /* id of "<0xNN>", −1 when absent */

    /* added tokens */
    tk_added *added;
    int n_added;
    tk_trie trie_raw, trie_norm; /* normalized = false / true */
    tk_strmap special_set;       /* contents of special tokens: decode skips tokens spelt so */

    /* pipeline */
    tk_norm *norms;
    int n_norms;
    tk_pretok *pretoks;
    int n_pretoks;
    bool has_decoder;
    tk_decoder *decs;
    int n_decs;
    int32_t *prefix_ids, *suffix_ids; /* what the post-processor puts around a sequence */
    int n_prefix, n_suffix;

    /* tokenizer_config.json */
    int32_t bos_id, eos_id;
    char *chat_template;
    /* The special tokens it names, as transformers' special_tokens_map hands them to chat
     * templates: bos_token ... mask_token, other "*_token" strings, extra_special_tokens {...}. */
    char **chat_token_keys, **chat_token_vals; /* [n_chat_tokens] */
    int n_chat_tokens;
};

/* Parses tokenizer.json text (len bytes, need not be NUL-terminated); `origin` names it in
 * error messages. The in-memory entry point behind mt_tokenizer_load (and the fuzzer's). */
mt_status mt_tokenizer_load_json(mt_tokenizer **out, const char *json, size_t len, const char *origin,
                                 mt_error *err);

/* ---- decoding internals (tokenizer_decode.c), shared with the streaming detokenizer ---- */

/* What a window of tokens tells about cutting the sequence after it. */
typedef struct tk_dec_info {
    bool closed;        /* nothing in the window's text depends on tokens after it, byte-token
                         * runs aside (below); false for decoder chains that cannot be cut */
    bool bf_first_byte; /* ByteFallback saw a byte token first in the window */
    bool bf_last_byte;  /* ... and last: a run of byte tokens may go on past the window */
} tk_dec_info;

/* Whether decode keeps id: a known id, and not special when skip_special. */
bool tk_decode_keeps(const mt_tokenizer *tok, int32_t id, bool skip_special);
/* Runs the decoder chain over ids (all kept), a window of the whole sequence: `first` when it
 * begins the sequence, `followed` when more tokens come after it (BPEDecoder's suffix, the
 * space join without a decoder). Appends the text to out; info (may be NULL) as above.
 * mt_tokenizer_decode is this over the whole sequence (first, not followed). */
mt_status tk_decode_ids(const mt_tokenizer *tok, const int32_t *ids, size_t n_ids, bool first, bool followed,
                        tk_dec_info *info, tk_buf *out, mt_error *err);

/* ---- encoding internals (tokenizer_encode.c) ---- */

/* A piece of text on its way through the pipeline: bytes [off, off+len) of a buffer, or an
 * added token already resolved to `id`. */
typedef struct tk_piece {
    size_t off, len;
    int32_t id;      /* −1 until it is a token */
    bool at_start;   /* begins at offset 0 of the original text (Metaspace "first") */
} tk_piece;

typedef struct tk_pieces {
    tk_piece *v;
    size_t n, cap;
    tk_buf text;
} tk_pieces;

void tk_pieces_free(tk_pieces *p);
/* Runs the normalizers over valid UTF-8 s, appending the result to out. */
mt_status tk_normalize(const mt_tokenizer *tok, tk_match *m, const char *s, size_t n, tk_buf *out, mt_error *err);
/* Runs added-token extraction (unless skip_added), the normalizers and the pre-tokenizers
 * over valid UTF-8 text. The trainer uses this to count words exactly as encoding sees them. */
mt_status tk_pretokenize(const mt_tokenizer *tok, tk_match *m, const char *text, size_t len, bool skip_added,
                         tk_pieces *out, mt_error *err);

#endif
