/* test_detok.c — the streaming detokenizer: its pieces add up to mt_tokenizer_decode of the whole
 * sequence on random id sequences (byte tokens that make invalid UTF-8, special tokens, skip on
 * and off) for every fixture tokenizer, decode replaces invalid UTF-8 as the Hugging Face
 * tokenizers library does (tests/reference/make_detok_fixtures.py), text streams without waiting
 * for the end, stop strings across token boundaries are held back and cut, tails are flushed. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

/* every decoder chain the fixtures have: ByteLevel (gpt2 … qwen2), Replace+ByteFallback+Fuse+
 * Strip (mixtral), Metaspace (sp_metaspace), Replace(regex)+ByteFallback+Strip+Fuse
 * (custom_meta), BPEDecoder (custom_affix), none (custom_ws) */
static const char *const NAMES[] = {"gpt2",         "llama3",      "qwen2",        "deepseek_v3", "mixtral",
                                    "sp_metaspace", "custom_meta", "custom_affix", "custom_ws"};
#define N_NAMES (sizeof NAMES / sizeof NAMES[0])

static mt_tokenizer *load_ok(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer.json", name);
    mt_tokenizer *tok = NULL;
    mt_error err = {0};
    if (mt_tokenizer_load(&tok, mt_test_fixture(rel), &err) != MT_OK) fail_msg("%s", err.msg);
    return tok;
}

static char *decode_ok(const mt_tokenizer *tok, const int32_t *ids, size_t n, bool skip, size_t *len) {
    char *out;
    mt_error err = {0};
    if (mt_tokenizer_decode(tok, ids, n, skip, &out, len, &err) != MT_OK) fail_msg("decode: %s", err.msg);
    return out;
}

static int32_t *encode_ok(const mt_tokenizer *tok, const char *s, size_t *n) {
    int32_t *ids;
    mt_error err = {0};
    if (mt_tokenizer_encode(tok, s, strlen(s), false, &ids, n, &err) != MT_OK) fail_msg("encode: %s", err.msg);
    return ids;
}

static mt_detok *detok_ok(const mt_tokenizer *tok, bool skip, const char *const *stop, int n_stop) {
    mt_detok *d;
    mt_error err = {0};
    if (mt_detok_init(&d, tok, skip, stop, n_stop, &err) != MT_OK) fail_msg("detok: %s", err.msg);
    return d;
}

/* A growable byte string for the pieces a stream emits. */
typedef struct text {
    char *p;
    size_t n;
} text;

static void text_add(text *t, const char *s, size_t n) {
    t->p = mt_xrealloc(t->p, t->n + n + 1);
    if (n) memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = 0;
}

/* Streams ids without stop strings, checking that every push returns −1 and that what was
 * emitted is always what mt_detok_text reports; returns the pieces plus the flush. */
static text stream(const mt_tokenizer *tok, const int32_t *ids, size_t n, bool skip, size_t *before_flush) {
    mt_detok *d = detok_ok(tok, skip, NULL, 0);
    text t = {0};
    text_add(&t, "", 0);
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t l;
        assert_int_equal(mt_detok_push(d, ids[i], &p, &l), -1);
        text_add(&t, p, l);
    }
    if (before_flush) *before_flush = t.n;
    const char *p;
    size_t l, tl;
    mt_detok_flush(d, &p, &l);
    text_add(&t, p, l);
    const char *all = mt_detok_text(d, &tl);
    assert_int_equal(tl, t.n);
    assert_memory_equal(all, t.p, t.n);
    mt_detok_free(d);
    return t;
}

static void hex(char *dst, size_t cap, const char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 3 < cap; i++) o += (size_t)snprintf(dst + o, cap - o, "%02x", (unsigned char)s[i]);
    dst[o] = 0;
}

static void expect_stream_equals_decode(const char *name, const mt_tokenizer *tok, const int32_t *ids, size_t n,
                                        bool skip) {
    size_t wl;
    char *want = decode_ok(tok, ids, n, skip, &wl);
    text got = stream(tok, ids, n, skip, NULL);
    if (got.n != wl || memcmp(got.p, want, wl)) {
        char a[1024], b[1024], seq[1024];
        hex(a, sizeof a, got.p, got.n);
        hex(b, sizeof b, want, wl);
        size_t o = 0;
        for (size_t i = 0; i < n && o + 16 < sizeof seq; i++) o += (size_t)snprintf(seq + o, sizeof seq - o, "%d ", ids[i]);
        fail_msg("%s skip=%d ids [%s]: stream %s, decode %s", name, skip, seq, a, b);
    }
    free(want);
    free(got.p);
}

/* ---- whole decode against the tokenizers library, invalid UTF-8 above all ---- */

static void test_decode_bytes_parity(void **state) {
    for (size_t k = 0; k < N_NAMES; k++) {
        char rel[256];
        snprintf(rel, sizeof rel, "tokenizers/%s/decode_bytes.json", NAMES[k]);
        char *json;
        size_t jl;
        mt_error err = {0};
        if (mt_read_file(mt_test_fixture(rel), &json, &jl, &err) != MT_OK) fail_msg("%s", err.msg);
        cJSON *root = cJSON_ParseWithLength(json, jl);
        free(json);
        assert_non_null(root);
        mt_tokenizer *tok = load_ok(NAMES[k]);
        int n_cases = 0;
        for (const cJSON *c = cJSON_GetObjectItem(root, "decode")->child; c; c = c->next, n_cases++) {
            const cJSON *arr = cJSON_GetObjectItem(c, "ids");
            size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
            int32_t *ids = mt_xmalloc((n + 1) * sizeof *ids);
            for (const cJSON *e = arr->child; e; e = e->next) ids[i++] = (int32_t)e->valuedouble;
            for (int skip = 0; skip < 2; skip++) {
                size_t len;
                char *out = decode_ok(tok, ids, n, skip, &len);
                char got[4096];
                hex(got, sizeof got, out, len);
                const char *want = cJSON_GetObjectItem(c, skip ? "hex_skip" : "hex")->valuestring;
                if (strcmp(got, want)) fail_msg("%s case %d skip=%d: decode %s, tokenizers %s", NAMES[k], n_cases, skip, got, want);
                free(out);
                expect_stream_equals_decode(NAMES[k], tok, ids, n, skip);
            }
            free(ids);
        }
        assert_true(n_cases >= 50);
        cJSON_Delete(root);
        mt_tokenizer_free(tok);
    }
}

/* ---- random sequences ---- */

/* Ids worth drawing often: tokens of one byte >= 0x80 (they make invalid UTF-8 when they do
 * not line up) and special tokens. */
static void interesting_ids(const mt_tokenizer *tok, int32_t **bytes, size_t *n_bytes, int32_t **special,
                            size_t *n_special) {
    int v = mt_tokenizer_vocab_size(tok);
    *bytes = mt_xmalloc((size_t)v * sizeof **bytes);
    *special = mt_xmalloc((size_t)v * sizeof **special);
    *n_bytes = *n_special = 0;
    for (int32_t id = 0; id < v; id++) {
        char buf[16];
        size_t w = mt_tokenizer_token_bytes(tok, id, buf, sizeof buf);
        const char *t = mt_tokenizer_id_to_token(tok, id);
        if ((w == 1 && (unsigned char)buf[0] >= 0x80) || (t && strlen(t) == 6 && !strncmp(t, "<0x", 3)))
            (*bytes)[(*n_bytes)++] = id;
        if (mt_tokenizer_is_special(tok, id)) (*special)[(*n_special)++] = id;
    }
}

static void test_random_sequences(void **state) {
    mt_rng rng;
    mt_rng_seed(&rng, 8);
    for (size_t k = 0; k < N_NAMES; k++) {
        mt_tokenizer *tok = load_ok(NAMES[k]);
        int v = mt_tokenizer_vocab_size(tok);
        int32_t *bytes, *special;
        size_t nb, ns;
        interesting_ids(tok, &bytes, &nb, &special, &ns);
        int32_t ids[48];
        for (int rep = 0; rep < 400; rep++) {
            size_t n = (size_t)mt_rng_below(&rng, 48);
            for (size_t i = 0; i < n; i++) {
                uint64_t r = mt_rng_below(&rng, 100);
                if (nb && r < 45)
                    ids[i] = bytes[mt_rng_below(&rng, nb)];
                else if (ns && r < 55)
                    ids[i] = special[mt_rng_below(&rng, ns)];
                else if (r < 58)
                    ids[i] = r < 57 ? v + (int32_t)mt_rng_below(&rng, 4) : -1; /* dropped by decode */
                else
                    ids[i] = (int32_t)mt_rng_below(&rng, (uint64_t)v);
            }
            for (int skip = 0; skip < 2; skip++) expect_stream_equals_decode(NAMES[k], tok, ids, n, skip);
        }
        free(bytes);
        free(special);
        mt_tokenizer_free(tok);
    }
}

/* ---- streaming: text comes out as the tokens do, not at the end ---- */

static const char *const SENTENCE = "The quick brown fox jumps over the lazy dog, twice: 3 times. Grüße, Ünïcode!";

static void test_streams_promptly(void **state) {
    for (size_t k = 0; k < N_NAMES; k++) {
        mt_tokenizer *tok = load_ok(NAMES[k]);
        size_t n, before, head_len;
        int32_t *ids = encode_ok(tok, SENTENCE, &n);
        assert_true(n > 4);
        text t = stream(tok, ids, n, false, &before);
        /* all but (at most) the last token's text is out before the flush */
        char *head = decode_ok(tok, ids, n - 1, false, &head_len);
        if (before < head_len)
            fail_msg("%s: %zu bytes out before the flush, want at least %zu", NAMES[k], before, head_len);
        free(head);
        free(t.p);
        free(ids);
        mt_tokenizer_free(tok);
    }
}

/* ---- stop strings ---- */

/* Streams SENTENCE's ids with `stop` and checks: the text emitted is always a prefix of the
 * whole decode up to the first stop string found in it, the push that completes it returns
 * its index, and nothing comes after. */
static void expect_stop(const char *name, const mt_tokenizer *tok, const char *const *stop, int n_stop,
                        int want_index) {
    size_t n, wl;
    int32_t *ids = encode_ok(tok, SENTENCE, &n);
    char *whole = decode_ok(tok, ids, n, true, &wl);
    const char *at = strstr(whole, stop[want_index]);
    if (!at) fail_msg("%s: '%s' is not in '%s'", name, stop[want_index], whole);
    size_t cut = (size_t)(at - whole);
    mt_detok *d = detok_ok(tok, true, stop, n_stop);
    text t = {0};
    text_add(&t, "", 0);
    int hit = -1;
    size_t hit_push = n;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t l;
        int r = mt_detok_push(d, ids[i], &p, &l);
        text_add(&t, p, l);
        if (hit >= 0) {
            assert_int_equal(r, -1);
            assert_int_equal(l, 0);
        } else if (r >= 0) {
            hit = r;
            hit_push = i;
        }
        if (t.n > cut || memcmp(t.p, whole, t.n)) fail_msg("%s: emitted '%s' is not a prefix of '%.*s'", name, t.p, (int)cut, whole);
    }
    assert_int_equal(hit, want_index);
    /* it completed with the first tokens whose decode holds it */
    char *upto = decode_ok(tok, ids, hit_push + 1, true, &wl);
    assert_non_null(strstr(upto, stop[want_index]));
    free(upto);
    upto = decode_ok(tok, ids, hit_push, true, &wl);
    assert_null(strstr(upto, stop[want_index]));
    free(upto);
    const char *p;
    size_t l;
    mt_detok_flush(d, &p, &l);
    assert_int_equal(l, 0);
    assert_int_equal(t.n, cut);
    assert_memory_equal(t.p, whole, cut);
    mt_detok_free(d);
    free(t.p);
    free(whole);
    free(ids);
}

static void test_stop_strings(void **state) {
    for (size_t k = 0; k < N_NAMES; k++) {
        /* these decode the sentence with other spaces; the random tests cover their streams */
        if (!strncmp(NAMES[k], "custom_", 7)) continue;
        mt_tokenizer *tok = load_ok(NAMES[k]);
        const char *one[] = {"own fox ju"}; /* begins and ends inside tokens */
        expect_stop(NAMES[k], tok, one, 1, 0);
        /* the first to complete wins, whatever its index */
        const char *three[] = {"zzz", "lazy dog", "jumps"};
        expect_stop(NAMES[k], tok, three, 3, 2);
        /* sp_metaspace has no ByteFallback decoder: its ü stays "<0xC3><0xBC>" */
        const char *accent[] = {strcmp(NAMES[k], "sp_metaspace") ? "üße" : "<0xBC><0xC3>"};
        expect_stop(NAMES[k], tok, accent, 1, 0);
        mt_tokenizer_free(tok);
    }
}

static void test_stop_prefix_released_at_end(void **state) {
    mt_tokenizer *tok = load_ok("llama3");
    size_t n, wl;
    int32_t *ids = encode_ok(tok, "over the lazy", &n);
    char *whole = decode_ok(tok, ids, n, true, &wl);
    const char *stop[] = {"lazy cat", "he lazy dog"};
    mt_detok *d = detok_ok(tok, true, stop, 2);
    text t = {0};
    text_add(&t, "", 0);
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t l;
        assert_int_equal(mt_detok_push(d, ids[i], &p, &l), -1);
        text_add(&t, p, l);
    }
    /* "he lazy" could still become "he lazy dog": held back from the 'h' on */
    assert_string_equal(t.p, "over t");
    const char *p;
    size_t l;
    mt_detok_flush(d, &p, &l);
    text_add(&t, p, l);
    assert_int_equal(t.n, wl);
    assert_memory_equal(t.p, whole, wl);
    mt_detok_free(d);
    free(t.p);
    free(whole);
    free(ids);
    mt_error err = {0};
    const char *empty[] = {""};
    assert_int_equal(mt_detok_init(&d, tok, true, empty, 1, &err), MT_ERR_INVALID);
    mt_tokenizer_free(tok);
}

/* ---- tails: an unfinished character waits, and the flush gives what decode gives ---- */

static int32_t byte_id(const mt_tokenizer *tok, unsigned b) {
    int v = mt_tokenizer_vocab_size(tok);
    for (int32_t id = 0; id < v; id++) {
        char buf[16];
        if (mt_tokenizer_token_bytes(tok, id, buf, sizeof buf) == 1 && (unsigned char)buf[0] == b) return id;
    }
    fail_msg("no token for byte 0x%02x", b);
    return -1;
}

static void expect_tail(const char *name, const unsigned *bytes, size_t n, const char *want_before,
                        const char *want_all) {
    mt_tokenizer *tok = load_ok(name);
    int32_t ids[8];
    for (size_t i = 0; i < n; i++) ids[i] = byte_id(tok, bytes[i]);
    size_t before;
    text t = stream(tok, ids, n, false, &before);
    size_t wl;
    char *whole = decode_ok(tok, ids, n, false, &wl);
    assert_string_equal(t.p, want_all);
    assert_string_equal(whole, want_all);
    assert_int_equal(before, strlen(want_before));
    assert_memory_equal(t.p, want_before, before);
    free(whole);
    free(t.p);
    mt_tokenizer_free(tok);
}

static void test_flush_tails(void **state) {
    /* byte-level: one U+FFFD for the maximal subpart E4 B8; nothing out before the flush */
    const unsigned cut[] = {'a', 0xE4, 0xB8};
    expect_tail("gpt2", cut, 3, "a", "a\xEF\xBF\xBD");
    /* completed: out at once */
    const unsigned whole[] = {0xE4, 0xB8, 0xAD, 'b'};
    expect_tail("qwen2", whole, 4, "\xE4\xB8\xAD" "b", "\xE4\xB8\xAD" "b");
    /* a byte that cannot continue it ends the subpart: E4 B8 → U+FFFD, 41 → 'A' */
    const unsigned broken[] = {0xE4, 0xB8, 'A', 0xF0, 0x9F};
    expect_tail("llama3", broken, 5, "\xEF\xBF\xBD" "A", "\xEF\xBF\xBD" "A\xEF\xBF\xBD");
    /* SentencePiece byte fallback: an invalid run is one U+FFFD per byte token, and a run is
     * judged at its end, so nothing of it is out before the flush */
    const unsigned sp[] = {0xE4, 0xB8};
    expect_tail("mixtral", sp, 2, "", "\xEF\xBF\xBD\xEF\xBF\xBD");
    const unsigned sp_ok[] = {0xE4, 0xB8, 0xAD};
    expect_tail("mixtral", sp_ok, 3, "", "\xE4\xB8\xAD");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_bytes_parity), cmocka_unit_test(test_random_sequences),
        cmocka_unit_test(test_streams_promptly),    cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_stop_prefix_released_at_end), cmocka_unit_test(test_flush_tails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
