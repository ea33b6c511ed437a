/* test_tokenizer.c — the tokenizer against the Hugging Face tokenizers library: ids and decodes
 * of a few hundred strings per fixture (tests/reference/make_tokenizer_fixtures.py made them),
 * folder loading with tokenizer_config.json as transformers reads it, streaming bytes, training
 * that reproduces its committed output byte for byte, error messages, and the CLI. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

/* ---- helpers ---- */

static cJSON *read_json(const char *rel) {
    char *text;
    size_t len;
    mt_error err = {0};
    if (mt_read_file(mt_test_fixture(rel), &text, &len, &err) != MT_OK) fail_msg("%s", err.msg);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j) fail_msg("%s: not JSON", rel);
    return j;
}

/* A printable rendering of s for failure messages (static buffer, one at a time). */
static const char *show(const char *s, size_t n) {
    static char buf[600];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 8 < sizeof buf; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\' || c == '"')
            o += (size_t)snprintf(buf + o, sizeof buf - o, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            o += (size_t)snprintf(buf + o, sizeof buf - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    buf[o] = '\0';
    return buf;
}

static bool ids_equal(const int32_t *got, size_t n, const cJSON *want) {
    if ((size_t)cJSON_GetArraySize(want) != n) return false;
    size_t i = 0;
    for (const cJSON *e = want->child; e; e = e->next, i++)
        if (got[i] != (int32_t)e->valuedouble) return false;
    return true;
}

static void ids_from_json(const cJSON *arr, int32_t **ids, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    *ids = mt_xmalloc((*n + 1) * sizeof **ids);
    size_t i = 0;
    for (const cJSON *e = arr->child; e; e = e->next) (*ids)[i++] = (int32_t)e->valuedouble;
}

static char *hex_decode(const char *hex, size_t *n) {
    *n = strlen(hex) / 2;
    char *out = mt_xmalloc(*n + 1);
    for (size_t i = 0; i < *n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    out[*n] = '\0';
    return out;
}

static mt_tokenizer *load_ok(const char *rel) {
    mt_tokenizer *tok = NULL;
    mt_error err = {0};
    if (mt_tokenizer_load(&tok, mt_test_fixture(rel), &err) != MT_OK) fail_msg("%s", err.msg);
    return tok;
}

static int32_t *encode_ok(const mt_tokenizer *tok, const char *s, size_t n, bool special, size_t *n_ids) {
    int32_t *ids;
    mt_error err = {0};
    if (mt_tokenizer_encode(tok, s, n, special, &ids, n_ids, &err) != MT_OK) fail_msg("encode: %s", err.msg);
    return ids;
}

static char *decode_ok(const mt_tokenizer *tok, const int32_t *ids, size_t n, bool skip, size_t *len) {
    char *out;
    mt_error err = {0};
    if (mt_tokenizer_decode(tok, ids, n, skip, &out, len, &err) != MT_OK) fail_msg("decode: %s", err.msg);
    return out;
}

/* ---- parity with the Hugging Face tokenizers library ---- */

static int report(int *bad, const char *fmt, const char *a, const char *b) {
    if ((*bad)++ < 5) print_message(fmt, a, b);
    return 0;
}

static void parity(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "tokenizers/%s/cases.json", name);
    cJSON *cases = read_json(rel);
    snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer.json", name);
    mt_tokenizer *tok = load_ok(rel);
    assert_int_equal(mt_tokenizer_vocab_size(tok), (int)cJSON_GetObjectItem(cases, "vocab_size")->valuedouble);
    int bad = 0, n_cases = 0;
    for (const cJSON *c = cJSON_GetObjectItem(cases, "encode")->child; c; c = c->next, n_cases++) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        size_t tl = strlen(text), n;
        char label[700];
        snprintf(label, sizeof label, "%s", show(text, tl));
        for (int sp = 0; sp < 2; sp++) {
            int32_t *ids = encode_ok(tok, text, tl, sp, &n);
            const cJSON *want = cJSON_GetObjectItem(c, sp ? "ids_special" : "ids");
            if (!ids_equal(ids, n, want)) {
                char *w = cJSON_PrintUnformatted(want);
                report(&bad, "  %s: encode differs, want %s\n", label, w);
                free(w);
            }
            free(ids);
        }
        int32_t *ids;
        ids_from_json(cJSON_GetObjectItem(c, "ids_special"), &ids, &n);
        for (int skip = 0; skip < 2; skip++) {
            size_t len;
            char *out = decode_ok(tok, ids, n, skip, &len);
            const char *want = cJSON_GetObjectItem(c, skip ? "decoded_skip" : "decoded")->valuestring;
            if (len != strlen(want) || memcmp(out, want, len))
                report(&bad, "  %s: decode differs: got %s\n", label, show(out, len));
            free(out);
        }
        free(ids);
    }
    for (const cJSON *c = cJSON_GetObjectItem(cases, "decode")->child; c; c = c->next, n_cases++) {
        int32_t *ids;
        size_t n;
        ids_from_json(cJSON_GetObjectItem(c, "ids"), &ids, &n);
        for (int skip = 0; skip < 2; skip++) {
            size_t len, wl;
            char *out = decode_ok(tok, ids, n, skip, &len);
            char *want = hex_decode(cJSON_GetObjectItem(c, skip ? "hex_skip" : "hex")->valuestring, &wl);
            if (len != wl || memcmp(out, want, len)) {
                char *w = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "ids"));
                report(&bad, "  decode %s differs: got %s\n", w, show(out, len));
                free(w);
            }
            free(out);
            free(want);
        }
        free(ids);
    }
    mt_tokenizer_free(tok);

    /* loading the folder: tokenizer_config.json as transformers applies it */
    const cJSON *folder = cJSON_GetObjectItem(cases, "folder");
    if (folder) {
        snprintf(rel, sizeof rel, "tokenizers/%s", name);
        tok = load_ok(rel);
        assert_int_equal(mt_tokenizer_bos_id(tok), (int)cJSON_GetObjectItem(folder, "bos_id")->valuedouble);
        assert_int_equal(mt_tokenizer_eos_id(tok), (int)cJSON_GetObjectItem(folder, "eos_id")->valuedouble);
        const cJSON *tmpl = cJSON_GetObjectItem(folder, "chat_template");
        if (cJSON_IsString(tmpl))
            assert_string_equal(mt_tokenizer_chat_template(tok), tmpl->valuestring);
        else
            assert_null(mt_tokenizer_chat_template(tok));
        for (const cJSON *c = cJSON_GetObjectItem(folder, "encode")->child; c; c = c->next, n_cases++) {
            const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
            size_t n;
            int32_t *ids = encode_ok(tok, text, strlen(text), true, &n);
            if (!ids_equal(ids, n, cJSON_GetObjectItem(c, "ids")))
                report(&bad, "  %s (folder): encode differs%s\n", show(text, strlen(text)), "");
            free(ids);
        }
        mt_tokenizer_free(tok);
    }
    cJSON_Delete(cases);
    if (bad) fail_msg("%s: %d of %d cases differ from Hugging Face", name, bad, n_cases);
}

static void test_parity_gpt2(void **state) { (void)state, parity("gpt2"); }
static void test_parity_llama3(void **state) { (void)state, parity("llama3"); }
static void test_parity_qwen2(void **state) { (void)state, parity("qwen2"); }
static void test_parity_deepseek_v3(void **state) { (void)state, parity("deepseek_v3"); }
static void test_parity_mixtral(void **state) { (void)state, parity("mixtral"); }
static void test_parity_sp_metaspace(void **state) { (void)state, parity("sp_metaspace"); }
static void test_parity_custom_split(void **state) { (void)state, parity("custom_split"); }
static void test_parity_custom_ws(void **state) { (void)state, parity("custom_ws"); }
static void test_parity_custom_meta(void **state) { (void)state, parity("custom_meta"); }
static void test_parity_custom_affix(void **state) { (void)state, parity("custom_affix"); }
static void test_parity_train_gpt2(void **state) { (void)state, parity("train_gpt2"); }
static void test_parity_train_llama3(void **state) { (void)state, parity("train_llama3"); }
static void test_parity_train_qwen2(void **state) { (void)state, parity("train_qwen2"); }
static void test_parity_train_deepseek_v3(void **state) { (void)state, parity("train_deepseek_v3"); }

/* ---- properties that need no reference ---- */

static const char *const samples[] = {
    "Hello world",
    "  two  spaces  ",
    "tabs\tand\nnewlines\r\n",
    "中文测试 日本語 한국어",
    "émoji 😀👍🏽 done",
    "numbers 1234567 and 3.14",
    "x",
    "It's 'LL",
    "ﬁ ligature Å",
};
#define N_SAMPLES (sizeof samples / sizeof samples[0])

/* decode(encode(s)) == s wherever no normalizer changes the text */
static void test_round_trip(void **state) {
    (void)state;
    const char *names[] = {"tokenizers/gpt2", "tokenizers/llama3", "tokenizers/deepseek_v3", "tokenizers/mixtral"};
    for (size_t k = 0; k < 4; k++) {
        mt_tokenizer *tok = load_ok(names[k]);
        for (size_t i = 0; i < N_SAMPLES; i++) {
            size_t n, len;
            int32_t *ids = encode_ok(tok, samples[i], strlen(samples[i]), true, &n);
            char *out = decode_ok(tok, ids, n, true, &len);
            if (len != strlen(samples[i]) || memcmp(out, samples[i], len))
                fail_msg("%s: '%s' came back as '%s'", names[k], samples[i], show(out, len));
            free(out);
            free(ids);
        }
        mt_tokenizer_free(tok);
    }
}

/* Streaming: the bytes of each token, joined, are the text (byte-level), or the text behind
 * a space (SentencePiece's prepended ▁, which Strip removes only at sequence level). */
static void test_token_bytes(void **state) {
    (void)state;
    const char *names[] = {"tokenizers/gpt2", "tokenizers/llama3", "tokenizers/mixtral"};
    for (size_t k = 0; k < 3; k++) {
        mt_tokenizer *tok = load_ok(names[k]);
        bool sp = k == 2;
        for (size_t i = 0; i < N_SAMPLES; i++) {
            size_t n;
            int32_t *ids = encode_ok(tok, samples[i], strlen(samples[i]), false, &n);
            char joined[512];
            size_t at = 0;
            for (size_t t = 0; t < n; t++) {
                char piece[64];
                size_t w = mt_tokenizer_token_bytes(tok, ids[t], piece, sizeof piece);
                assert_true(w > 0 && at + w < sizeof joined);
                memcpy(joined + at, piece, w);
                at += w;
            }
            char want[512];
            snprintf(want, sizeof want, "%s%s", sp ? " " : "", samples[i]);
            if (at != strlen(want) || memcmp(joined, want, at))
                fail_msg("%s: token bytes of '%s' join to '%s'", names[k], samples[i], show(joined, at));
            free(ids);
        }
        /* a special token gives its text; an unknown id nothing; a short buffer is cut */
        int32_t bos = mt_tokenizer_bos_id(tok);
        char buf[64];
        const char *bos_text =
            mt_tokenizer_id_to_token(tok, bos >= 0 ? bos : mt_tokenizer_token_to_id(tok, "<|endoftext|>"));
        assert_non_null(bos_text);
        size_t w = mt_tokenizer_token_bytes(tok, mt_tokenizer_token_to_id(tok, bos_text), buf, sizeof buf);
        assert_int_equal(w, strlen(bos_text));
        assert_memory_equal(buf, bos_text, w);
        assert_int_equal(mt_tokenizer_token_bytes(tok, -1, buf, sizeof buf), 0);
        assert_int_equal(mt_tokenizer_token_bytes(tok, 1 << 30, buf, sizeof buf), 0);
        assert_int_equal(mt_tokenizer_token_bytes(tok, mt_tokenizer_token_to_id(tok, bos_text), buf, 2), 2);
        mt_tokenizer_free(tok);
    }
    /* a byte-fallback token is one raw byte */
    mt_tokenizer *tok = load_ok("tokenizers/mixtral");
    char b;
    assert_int_equal(mt_tokenizer_token_bytes(tok, mt_tokenizer_token_to_id(tok, "<0xE4>"), &b, 1), 1);
    assert_int_equal((unsigned char)b, 0xE4);
    mt_tokenizer_free(tok);
}

static void test_lookups(void **state) {
    (void)state;
    mt_tokenizer *tok = load_ok("tokenizers/llama3/tokenizer.json");
    int32_t bot = mt_tokenizer_token_to_id(tok, "<|begin_of_text|>");
    assert_true(bot >= 0);
    assert_string_equal(mt_tokenizer_id_to_token(tok, bot), "<|begin_of_text|>");
    assert_true(mt_tokenizer_is_special(tok, bot));
    assert_false(mt_tokenizer_is_special(tok, 0));
    assert_int_equal(mt_tokenizer_bos_id(tok), bot); /* from tokenizer.json's template alone */
    assert_int_equal(mt_tokenizer_eos_id(tok), -1);
    assert_null(mt_tokenizer_chat_template(tok));
    assert_null(mt_tokenizer_id_to_token(tok, -1));
    assert_null(mt_tokenizer_id_to_token(tok, mt_tokenizer_vocab_size(tok)));
    assert_int_equal(mt_tokenizer_token_to_id(tok, "no such token here"), -1);
    /* Llama-3 ignore_merges: a word that is a vocabulary entry is one token */
    size_t n;
    int32_t *ids = encode_ok(tok, " the", 4, false, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], mt_tokenizer_token_to_id(tok, "\xC4\xA0the"));
    free(ids);
    /* encode never returns NULL, even for no ids */
    ids = encode_ok(tok, "", 0, false, &n);
    assert_non_null(ids);
    assert_int_equal(n, 0);
    free(ids);
    mt_tokenizer_free(tok);
}

/* A word of 20 000 characters with no pre-tokenizer between them: the heap keeps it fast. */
static void test_long_word(void **state) {
    (void)state;
    mt_tokenizer *tok = load_ok("tokenizers/mixtral");
    size_t n = 20000;
    char *s = mt_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) s[i] = "the license "[i % 12];
    double t0 = mt_now_seconds();
    size_t n_ids, len;
    int32_t *ids = encode_ok(tok, s, n, false, &n_ids);
    double dt = mt_now_seconds() - t0;
    char *back = decode_ok(tok, ids, n_ids, false, &len);
    assert_int_equal(len, n);
    assert_memory_equal(back, s, n);
    assert_true(dt < 2.0);
    free(back);
    free(ids);
    free(s);
    mt_tokenizer_free(tok);
}

/* ---- errors ---- */

static mt_status load_text(const char *json, mt_error *err) {
    const char *dir = mt_test_tmpdir("tokenizer_errors");
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    mt_error werr = {0};
    if (mt_write_file_atomic(path, json, strlen(json), &werr) != MT_OK) fail_msg("%s", werr.msg);
    mt_tokenizer *tok = NULL;
    mt_status st = mt_tokenizer_load(&tok, path, err);
    if (st == MT_OK) mt_tokenizer_free(tok);
    assert_true(st != MT_OK || tok != NULL);
    return st;
}

static void expect_error(const char *json, mt_status code, const char *needle) {
    mt_error err = {0};
    mt_status st = load_text(json, &err);
    if (st != code) fail_msg("status %s, want %s (%s) for %s", mt_status_name(st), mt_status_name(code), err.msg, json);
    if (!strstr(err.msg, needle)) fail_msg("message '%s' lacks '%s'", err.msg, needle);
    if (!strstr(err.msg, "tokenizer.json")) fail_msg("message '%s' does not name the file", err.msg);
}

#define MODEL_OK "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}"

static void test_errors(void **state) {
    (void)state;
    mt_error err = {0};
    mt_tokenizer *tok = NULL;
    assert_int_equal(mt_tokenizer_load(&tok, "/nonexistent/dir/tokenizer.json", &err), MT_ERR_NOT_FOUND);
    assert_null(tok);
    assert_non_null(strstr(err.msg, "/nonexistent/dir/tokenizer.json"));
    mt_error_clear(&err);
    assert_int_equal(mt_tokenizer_load(&tok, mt_test_fixture("tokenizers/train_corpus"), &err), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "no tokenizer.json"));

    expect_error("{\"model\": {", MT_ERR_FORMAT, "not valid JSON");
    expect_error("[1, 2]", MT_ERR_FORMAT, "top level must be a JSON object");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"\xff\":0}}}", MT_ERR_FORMAT, "not valid UTF-8 (byte 33)");
    expect_error("{}", MT_ERR_FORMAT, "model is missing");
    expect_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", MT_ERR_UNSUPPORTED,
                 "model.type 'WordPiece' is not supported");
    /* broken merges */
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"ab\":1},\"merges\":[\"a b\"]}}", MT_ERR_FORMAT,
                 "model.merges[0]: merge part 'b' is not in model.vocab");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[[\"a\",\"b\"]]}}", MT_ERR_FORMAT,
                 "model.merges[0]: merge result 'ab' is not in model.vocab");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a a a\"]}}", MT_ERR_FORMAT,
                 "model.merges[0] 'a a a' must be two tokens separated by one space");
    /* unknown components, named by their JSON path */
    expect_error("{" MODEL_OK ",\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"ByteLevel\"},"
                 "{\"type\":\"Foo\"}]}}",
                 MT_ERR_UNSUPPORTED, "tokenizer.json: pre_tokenizer.pretokenizers[1].type 'Foo' is not supported");
    expect_error("{" MODEL_OK ",\"normalizer\":{\"type\":\"Lowercase\"}}", MT_ERR_UNSUPPORTED,
                 "normalizer.type 'Lowercase' is not supported");
    expect_error("{" MODEL_OK ",\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"CTC\"}]}}",
                 MT_ERR_UNSUPPORTED, "decoder.decoders[0].type 'CTC' is not supported");
    expect_error("{" MODEL_OK ",\"post_processor\":{\"type\":\"Magic\"}}", MT_ERR_UNSUPPORTED,
                 "post_processor.type 'Magic' is not supported");
    /* wrong JSON types */
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":[\"a\"]}}", MT_ERR_FORMAT, "model.vocab must be an object");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"0\"}}}", MT_ERR_FORMAT,
                 "model.vocab['a'] must be an integer");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1}}}", MT_ERR_FORMAT,
                 "model.vocab['a'] must be an integer");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[7]}}", MT_ERR_FORMAT,
                 "model.merges[0] must be \"a b\" or [\"a\", \"b\"]");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"byte_fallback\":\"yes\"}}", MT_ERR_FORMAT,
                 "model.byte_fallback must be true or false");
    expect_error("{" MODEL_OK ",\"added_tokens\":[{\"id\":\"3\",\"content\":\"x\"}]}", MT_ERR_FORMAT,
                 "added_tokens[0].id must be an integer");
    expect_error("{" MODEL_OK ",\"added_tokens\":{}}", MT_ERR_FORMAT, "added_tokens must be an array");
    expect_error("{" MODEL_OK ",\"normalizer\":{\"type\":7}}", MT_ERR_FORMAT, "normalizer.type must be a string");
    expect_error("{" MODEL_OK ",\"pre_tokenizer\":\"ByteLevel\"}", MT_ERR_FORMAT,
                 "pre_tokenizer must be an object or null");
    expect_error("{" MODEL_OK
                 ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\"}}",
                 MT_ERR_FORMAT, "pre_tokenizer.behavior 'Sideways' must be");
    expect_error("{" MODEL_OK
                 ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},\"behavior\":\"Isolated\"}}",
                 MT_ERR_FORMAT, "pre_tokenizer.pattern.Regex: pattern '(a' does not compile");
    expect_error("{" MODEL_OK ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":\"a\",\"behavior\":\"Isolated\"}}",
                 MT_ERR_FORMAT, "pre_tokenizer.pattern must be {\"String\": ...} or {\"Regex\": ...}");
    expect_error("{" MODEL_OK ",\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"ab\"}}", MT_ERR_FORMAT,
                 "pre_tokenizer.replacement must be exactly one character");
    expect_error("{" MODEL_OK ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
                 "{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{}}}",
                 MT_ERR_FORMAT, "names '<s>', which special_tokens does not define");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"dropout\":0.1}}", MT_ERR_UNSUPPORTED,
                 "model.dropout is set");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0}}}", MT_ERR_FORMAT, "gives id 0 to both");

    /* encoding text that is not UTF-8, and an unknown character with a missing unk token */
    tok = load_ok("tokenizers/gpt2");
    int32_t *ids = (int32_t *)1;
    size_t n = 7;
    mt_error_clear(&err);
    assert_int_equal(mt_tokenizer_encode(tok, "ok\xC3(", 4, false, &ids, &n, &err), MT_ERR_INVALID);
    assert_null(ids);
    assert_int_equal(n, 0);
    assert_non_null(strstr(err.msg, "not valid UTF-8 (byte 2)"));
    mt_tokenizer_free(tok);
    mt_error_clear(&err);
    assert_int_equal(load_text("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"unk_token\":\"<unk>\"}}", &err),
                     MT_OK);
    const char *dir = mt_test_tmpdir("tokenizer_errors");
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    mt_error werr = {0};
    const char *j = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"unk_token\":\"<unk>\"}}";
    assert_int_equal(mt_write_file_atomic(path, j, strlen(j), &werr), MT_OK);
    tok = NULL;
    assert_int_equal(mt_tokenizer_load(&tok, path, &err), MT_OK);
    assert_int_equal(mt_tokenizer_encode(tok, "ab", 2, false, &ids, &n, &err), MT_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "model.unk_token '<unk>' is not in model.vocab"));
    mt_tokenizer_free(tok);

    /* tokenizer_config.json naming a token the vocabulary lacks */
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    j = "{\"bos_token\": \"<nope>\"}";
    assert_int_equal(mt_write_file_atomic(path, j, strlen(j), &werr), MT_OK);
    mt_error_clear(&err);
    assert_int_equal(mt_tokenizer_load(&tok, dir, &err), MT_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tokenizer_config.json: bos_token '<nope>' is not in the tokenizer's vocabulary"));
}

/* ---- training ---- */

static const char *const train_styles[] = {"gpt2", "llama3", "qwen2", "deepseek_v3"};
static const char *const train_specials[] = {"<|bos|>", "<|eos|>", "<|pad|>"};

static void assert_same_file(const char *got_path, const char *want_rel) {
    char *got, *want;
    size_t gl, wl;
    mt_error err = {0};
    if (mt_read_file(got_path, &got, &gl, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_read_file(mt_test_fixture(want_rel), &want, &wl, &err) != MT_OK) fail_msg("%s", err.msg);
    size_t i = 0;
    while (i < gl && i < wl && got[i] == want[i]) i++;
    if (gl != wl || i < gl) fail_msg("%s differs from %s at byte %zu (sizes %zu, %zu)", got_path, want_rel, i, gl, wl);
    free(got);
    free(want);
}

/* Re-training with the committed inputs gives the committed files, byte for byte. */
static void test_train_deterministic(void **state) {
    (void)state;
    const char *corpus = mt_test_fixture("tokenizers/train_corpus");
    char corpus_path[4096];
    snprintf(corpus_path, sizeof corpus_path, "%s", corpus);
    for (size_t k = 0; k < 4; k++) {
        mt_bpe_train_opts o = {.vocab_size = 1000,
                               .pretok = (mt_pretok_style)k,
                               .special_tokens = train_specials,
                               .n_special = 3,
                               .bos_token = "<|bos|>",
                               .eos_token = "<|eos|>"};
        const char *files[1] = {corpus_path};
        char name[64];
        snprintf(name, sizeof name, "train_%s", train_styles[k]);
        char out[4096];
        snprintf(out, sizeof out, "%s", mt_test_tmpdir(name));
        mt_error err = {0};
        double t0 = mt_now_seconds();
        if (mt_tokenizer_train(files, 1, &o, out, &err) != MT_OK) fail_msg("%s", err.msg);
        print_message("  trained %s in %.2f s\n", train_styles[k], mt_now_seconds() - t0);
        char path[4200], rel[256];
        snprintf(path, sizeof path, "%s/tokenizer.json", out);
        snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer.json", name);
        assert_same_file(path, rel);
        snprintf(path, sizeof path, "%s/tokenizer_config.json", out);
        snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer_config.json", name);
        assert_same_file(path, rel);

        mt_tokenizer *tok = NULL;
        assert_int_equal(mt_tokenizer_load(&tok, out, &err), MT_OK);
        assert_int_equal(mt_tokenizer_vocab_size(tok), 1000);
        assert_int_equal(mt_tokenizer_bos_id(tok), 997);
        assert_int_equal(mt_tokenizer_eos_id(tok), 998);
        for (size_t i = 0; i < N_SAMPLES; i++) {
            size_t n, len;
            int32_t *ids = encode_ok(tok, samples[i], strlen(samples[i]), true, &n);
            assert_int_equal(ids[0], 997);
            char *back = decode_ok(tok, ids, n, true, &len);
            /* qwen2 composes to NFC; the samples hold nothing NFC changes except "Å" */
            if (len != strlen(samples[i]) || memcmp(back, samples[i], len))
                assert_true(k == 2 && strstr(samples[i], "Å") != NULL);
            free(back);
            free(ids);
        }
        mt_tokenizer_free(tok);
    }
}

static void test_train_errors(void **state) {
    (void)state;
    const char *out = mt_test_tmpdir("train_errors");
    char corpus[4096];
    snprintf(corpus, sizeof corpus, "%s", mt_test_fixture("tokenizers/train_corpus"));
    const char *files[1] = {corpus};
    mt_bpe_train_opts o = {.vocab_size = 200, .pretok = MT_PRETOK_GPT2};
    mt_error err = {0};
    assert_int_equal(mt_tokenizer_train(files, 1, &o, out, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "vocab_size 200 is too small"));
    const char *missing[1] = {"/nonexistent/corpus.txt"};
    o.vocab_size = 300;
    mt_error_clear(&err);
    assert_int_equal(mt_tokenizer_train(missing, 1, &o, out, &err), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/corpus.txt"));
    mt_error_clear(&err);
    assert_int_equal(mt_tokenizer_train(files, 0, &o, out, &err), MT_ERR_INVALID);
    /* min_frequency stops the merges early; max_bytes reads less */
    o.min_frequency = 1000000;
    mt_error_clear(&err);
    assert_int_equal(mt_tokenizer_train(files, 1, &o, out, &err), MT_OK);
    mt_tokenizer *tok = NULL;
    assert_int_equal(mt_tokenizer_load(&tok, out, &err), MT_OK);
    assert_int_equal(mt_tokenizer_vocab_size(tok), 256);
    mt_tokenizer_free(tok);
}

/* ---- the command line ---- */

static void test_cli(void **state) {
    (void)state;
    char *out;
    const char *tok = mt_test_fixture("tokenizers/llama3");
    char tok_path[4096];
    snprintf(tok_path, sizeof tok_path, "%s", tok);
    assert_int_equal(mt_test_run_cli(&out, "tokenizer encode --tokenizer '%s' --text 'Hello world'", tok_path), 0);
    mt_tokenizer *t = load_ok("tokenizers/llama3");
    size_t n;
    int32_t *ids = encode_ok(t, "Hello world", 11, true, &n);
    char want[256];
    size_t at = 0;
    for (size_t i = 0; i < n; i++) at += (size_t)snprintf(want + at, sizeof want - at, "%s%d", i ? " " : "", ids[i]);
    snprintf(want + at, sizeof want - at, "\n");
    assert_string_equal(out, want);
    free(out);
    want[strlen(want) - 1] = '\0';
    assert_int_equal(mt_test_run_cli(&out, "tokenizer decode --tokenizer '%s' --skip-special %s", tok_path, want), 0);
    assert_string_equal(out, "Hello world\n");
    free(out);
    free(ids);
    mt_tokenizer_free(t);
    assert_int_equal(mt_test_run_cli(&out, "tokenizer encode --tokenizer /nonexistent --text x"), 2);
    assert_non_null(strstr(out, "/nonexistent"));
    free(out);
    assert_int_equal(mt_test_run_cli(&out, "tokenizer train --help"), 0);
    assert_non_null(strstr(out, "--vocab-size"));
    free(out);
    assert_int_equal(mt_test_run_cli(&out, "tokenizer frobnicate"), 2);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity_gpt2),
        cmocka_unit_test(test_parity_llama3),
        cmocka_unit_test(test_parity_qwen2),
        cmocka_unit_test(test_parity_deepseek_v3),
        cmocka_unit_test(test_parity_mixtral),
        cmocka_unit_test(test_parity_sp_metaspace),
        cmocka_unit_test(test_parity_custom_split),
        cmocka_unit_test(test_parity_custom_ws),
        cmocka_unit_test(test_parity_custom_meta),
        cmocka_unit_test(test_parity_custom_affix),
        cmocka_unit_test(test_parity_train_gpt2),
        cmocka_unit_test(test_parity_train_llama3),
        cmocka_unit_test(test_parity_train_qwen2),
        cmocka_unit_test(test_parity_train_deepseek_v3),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_token_bytes),
        cmocka_unit_test(test_lookups),
        cmocka_unit_test(test_long_word),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_train_deterministic),
        cmocka_unit_test(test_train_errors),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
