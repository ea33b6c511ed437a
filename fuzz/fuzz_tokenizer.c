/* fuzz_tokenizer.c — libFuzzer target for the tokenizer. The first input byte picks a mode:
 * even: the rest is a tokenizer.json, parsed in memory and, when it loads, used to encode and
 * decode a fixed text; odd: the rest (made valid UTF-8) is encoded with a committed fixture
 * tokenizer, and decode(encode(text)) must give the text back exactly, and the rest's bytes
 * read as ids are decoded. Every decode must equal the streaming detokenizer's text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "tokenizer/tokenizer-impl.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Byte-level fixtures whose normalizers change nothing, so the round trip is exact. */
static const char *const tok_fixtures[] = {"llama3", "gpt2", "deepseek_v3"};
#define TOK_N_FIXTURES (sizeof tok_fixtures / sizeof tok_fixtures[0])
static mt_tokenizer *tok_loaded[TOK_N_FIXTURES];

/* Loaded once before the first input, so that libFuzzer's leak check does not count them. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    /* MT_FUZZ_FIXTURES, or the fixtures beside this source file */
    char root[4096];
    const char *env = getenv("MT_FUZZ_FIXTURES");
    if (env)
        snprintf(root, sizeof root, "%s", env);
    else {
        snprintf(root, sizeof root, "%s", __FILE__);
        char *slash = strrchr(root, '/');
        if (slash)
            snprintf(slash, sizeof root - (size_t)(slash - root), "/../tests/fixtures/tokenizers");
        else
            snprintf(root, sizeof root, "../tests/fixtures/tokenizers");
    }
    for (size_t i = 0; i < TOK_N_FIXTURES; i++) {
        char path[4300];
        snprintf(path, sizeof path, "%s/%s/tokenizer.json", root, tok_fixtures[i]);
        mt_error err = {0};
        if (mt_tokenizer_load(&tok_loaded[i], path, &err) != MT_OK) {
            fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
            abort();
        }
    }
    return 0;
}

/* The streaming detokenizer's pieces plus its flush must be the whole decode, byte for byte. */
static void detok_check(const mt_tokenizer *tok, const int32_t *ids, size_t n, bool skip, const char *want,
                        size_t want_len) {
    mt_detok *d;
    if (mt_detok_init(&d, tok, skip, NULL, 0, NULL) != MT_OK) abort();
    tk_buf got = {0};
    const char *p;
    size_t l;
    for (size_t i = 0; i < n; i++) {
        if (mt_detok_push(d, ids[i], &p, &l) != -1) abort();
        tk_buf_put(&got, p, l);
    }
    mt_detok_flush(d, &p, &l);
    tk_buf_put(&got, p, l);
    if (got.len != want_len || (want_len && memcmp(got.p, want, want_len))) {
        fprintf(stderr, "streamed text (%zu bytes) differs from the decode (%zu bytes)\n", got.len, want_len);
        abort();
    }
    tk_buf_free(&got);
    mt_detok_free(d);
}

static void decode_and_stream(const mt_tokenizer *tok, const int32_t *ids, size_t n) {
    for (int skip = 0; skip < 2; skip++) {
        char *out;
        size_t out_len;
        if (mt_tokenizer_decode(tok, ids, n, skip, &out, &out_len, NULL) != MT_OK) continue;
        if (!mt_utf8_valid(out, out_len, NULL)) abort();
        detok_check(tok, ids, n, skip, out, out_len);
        free(out);
    }
}

static void tok_exercise(const mt_tokenizer *tok, const char *text, size_t len, bool special, bool check_round_trip) {
    int32_t *ids;
    size_t n;
    mt_error err = {0};
    if (mt_tokenizer_encode(tok, text, len, special, &ids, &n, &err) != MT_OK) return;
    int vocab = mt_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) abort();
    for (int skip = 0; skip < 2; skip++) {
        char *out;
        size_t out_len;
        mt_error derr = {0};
        if (mt_tokenizer_decode(tok, ids, n, skip, &out, &out_len, &derr) != MT_OK) continue;
        if (!mt_utf8_valid(out, out_len, NULL)) abort();
        detok_check(tok, ids, n, skip, out, out_len);
        if (check_round_trip && !skip && !special && (out_len != len || memcmp(out, text, len))) {
            fprintf(stderr, "round trip lost the text: %zu bytes in, %zu out\n", len, out_len);
            abort();
        }
        free(out);
    }
    char buf[256];
    for (size_t i = 0; i < n; i++) {
        size_t w = mt_tokenizer_token_bytes(tok, ids[i], buf, sizeof buf);
        if (w > sizeof buf) abort();
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t mode = data[0];
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    if (!(mode & 1)) {
        mt_tokenizer *tok = NULL;
        mt_error err = {0};
        if (mt_tokenizer_load_json(&tok, rest, n, "fuzz/tokenizer.json", &err) != MT_OK) {
            if (tok || !err.msg[0]) abort(); /* failures leave nothing behind and say why */
            return 0;
        }
        static const char sample[] = "Hello, world! It's 12345 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80  \n\tend";
        tok_exercise(tok, sample, sizeof sample - 1, (mode >> 1) & 1, false);
        mt_tokenizer_free(tok);
        return 0;
    }
    tk_buf text = {0};
    tk_utf8_lossy(&text, rest, n);
    const mt_tokenizer *tok = tok_loaded[(mode >> 1) % TOK_N_FIXTURES];
    tok_exercise(tok, text.p ? text.p : "", text.len, (mode >> 3) & 1, true);
    tk_buf_free(&text);
    /* arbitrary ids: byte tokens that do not line up, special and unknown ones */
    int32_t ids[512];
    size_t n_ids = 0;
    for (size_t i = 0; i + 1 < n && n_ids < 512; i += 2)
        ids[n_ids++] = (int32_t)(((unsigned char)rest[i] << 8 | (unsigned char)rest[i + 1]) % (mt_tokenizer_vocab_size(tok) + 8));
    decode_and_stream(tok, ids, n_ids);
    return 0;
}
