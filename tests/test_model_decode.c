/* test_model_decode.c — the KV cache against the full forward: for every family, prefill then
 * one token at a time gives the logits of one pass over the whole sequence (MLA's absorbed
 * decode against its expanded training form), with and without adapters on every linear;
 * prompts longer than one decode chunk; the sliding window; packed documents. */
#include "model_testlib.h"

#include <math.h>

static mt_backend *g_be;

static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    return mt_backend_init(&g_be, MT_BACKEND_CPU, 2, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be);
    return 0;
}

/* Full-sequence logits [T, V] of one row of tokens. */
static float *forward_logits_with(mt_model *m, const mt_adapter *ad, const int32_t *tokens, int T,
                                  const int32_t *pos, const int32_t *kv_start) {
    mt_error err = {0};
    int V = mt_model_config(m)->vocab_size;
    mt_workspace *ws = NULL;
    if (mt_workspace_init(&ws, m, 1, T, false, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    float *logits = mt_xmalloc((size_t)T * V * sizeof(float));
    mt_batch b = {.B = 1, .T = T, .tokens = tokens, .pos = pos, .kv_start = kv_start};
    mt_forward_opts o = {.logits_out = logits, .adapter = ad};
    if (mt_model_forward(m, ws, &b, &o, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_workspace_free(ws);
    return logits;
}

static float *forward_logits(mt_model *m, const int32_t *tokens, int T, const int32_t *pos, const int32_t *kv_start) {
    return forward_logits_with(m, NULL, tokens, T, pos, kv_start);
}

/* Decodes tokens in the given chunk sizes (then one at a time) and compares the logits of
 * the last token of every call with the full forward. */
static void check_decode_with(mt_model *m, const mt_adapter *ad, const int32_t *tokens, int T, const int *chunks,
                              int n_chunks, const char *what) {
    mt_error err = {0};
    int V = mt_model_config(m)->vocab_size;
    float *want = forward_logits_with(m, ad, tokens, T, NULL, NULL);
    mt_kv_cache *c = NULL;
    if (mt_kv_cache_init(&c, m, T, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_kv_cache_set_adapter(c, ad, &err) != MT_OK) fail_msg("%s", err.msg);
    float *row = mt_xmalloc((size_t)V * sizeof(float));
    int done = 0, k = 0;
    while (done < T) {
        int n = k < n_chunks ? chunks[k++] : 1;
        if (mt_model_decode(m, c, tokens + done, n, row, &err) != MT_OK) fail_msg("%s", err.msg);
        done += n;
        char name[128];
        snprintf(name, sizeof name, "%s: decode logits at %d", what, done - 1);
        mt_test_assert_close(name, row, want + (size_t)(done - 1) * V, (size_t)V, 1e-4);
    }
    assert_int_equal(mt_kv_cache_len(c), T);
    /* a full cache refuses more */
    assert_int_equal(mt_model_decode(m, c, tokens, 1, row, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "do not fit"));
    mt_kv_cache_reset(c);
    assert_int_equal(mt_kv_cache_len(c), 0);
    free(row);
    free(want);
    mt_kv_cache_free(c);
}

static void check_decode(mt_model *m, const int32_t *tokens, int T, const int *chunks, int n_chunks, const char *what) {
    check_decode_with(m, NULL, tokens, T, chunks, n_chunks, what);
}

static void decode_every_family(void **state) {
    (void)state;
    for (int v = 0; v < N_VARIANTS; v++) {
        mt_model *m = load_fixture(g_be, variant_name(v));
        int32_t tokens[12];
        random_tokens(tokens, 12, mt_model_config(m)->vocab_size, 100 + (uint64_t)v);
        const int prefill5[] = {5}, mixed[] = {1, 3, 4};
        check_decode(m, tokens, 12, prefill5, 1, variant_name(v));
        check_decode(m, tokens, 12, mixed, 3, variant_name(v));
        mt_model_free(m);
    }
}

/* Adapters on every linear (attention incl. MLA's kv_b_proj, which the absorbed decode folds
 * into its latent-space products, experts, routers, shared experts, the LM head). */
static void decode_with_adapters(void **state) {
    (void)state;
    for (int v = 0; v < N_VARIANTS; v++) {
        mt_model *m = load_fixture(g_be, variant_name(v));
        int nl = mt_model_linear_count(m);
        toy_set *ts = toy_set_new(m);
        for (int i = 0; i < nl; i++) toy_add(ts, m, i, 2, 500 + (uint64_t)i);
        int32_t tokens[12];
        random_tokens(tokens, 12, mt_model_config(m)->vocab_size, 200 + (uint64_t)v);
        const int prefill4[] = {4};
        char what[64];
        snprintf(what, sizeof what, "%s with adapters", variant_name(v));
        check_decode_with(m, &ts->view, tokens, 12, prefill4, 1, what);
        /* no adapter is the base model */
        float *with = forward_logits_with(m, &ts->view, tokens, 12, NULL, NULL);
        float *without = forward_logits(m, tokens, 12, NULL, NULL);
        int V = mt_model_config(m)->vocab_size;
        assert_true(mt_test_rel_err(with, without, (size_t)12 * V, 1e-30) > 1e-3);
        free(with);
        free(without);
        toy_set_free(ts);
        mt_model_free(m);
    }
}

static mt_model *random_model(mt_family f, int vocab, int sliding_window, uint64_t seed) {
    mt_error err = {0};
    mt_config cfg;
    if (mt_config_preset(&cfg, f, "tiny", vocab, &err) != MT_OK) fail_msg("%s", err.msg);
    cfg.initializer_range = 0.25f; /* O(1) activations: routing far from ties */
    cfg.sliding_window = sliding_window;
    mt_model *m = NULL;
    if (mt_model_init_random(&m, &cfg, seed, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    return m;
}

/* A prompt longer than one decode chunk (256 rows) goes through several passes. */
static void decode_long_prompt(void **state) {
    (void)state;
    const mt_family fams[] = {MT_FAMILY_DEEPSEEK_V3, MT_FAMILY_QWEN3_MOE};
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        mt_model *m = random_model(fams[f], 64, 0, 7);
        enum { T = 300 };
        int32_t tokens[T];
        random_tokens(tokens, T, 64, 9);
        const int chunks[] = {298};
        check_decode(m, tokens, T, chunks, 1, mt_family_name(fams[f]));
        mt_model_free(m);
    }
}

/* Mixtral-style sliding window: keys older than the window are masked in the forward and in
 * decode alike, and the window changes what late tokens see. */
static void sliding_window(void **state) {
    (void)state;
    enum { T = 20, W = 6 };
    mt_model *mw = random_model(MT_FAMILY_MIXTRAL, 48, W, 11);
    mt_model *mf = random_model(MT_FAMILY_MIXTRAL, 48, 0, 11);
    int32_t tokens[T];
    random_tokens(tokens, T, 48, 12);
    const int chunks[] = {9};
    check_decode(mw, tokens, T, chunks, 1, "sliding window");
    float *a = forward_logits(mw, tokens, T, NULL, NULL), *b = forward_logits(mf, tokens, T, NULL, NULL);
    /* the windowed model is the full one with kv_start = t − W + 1 */
    int32_t ks[T];
    for (int t = 0; t < T; t++) ks[t] = t - W + 1 > 0 ? t - W + 1 : 0;
    float *c = forward_logits(mf, tokens, T, NULL, ks);
    mt_test_assert_close("window as kv_start", a, c, (size_t)T * 48, 1e-5);
    mt_test_assert_close("inside the window", a, b, (size_t)W * 48, 1e-5);
    assert_true(mt_test_rel_err(a + (size_t)(T - 1) * 48, b + (size_t)(T - 1) * 48, 48, 1e-30) > 1e-4);
    free(a);
    free(b);
    free(c);
    mt_model_free(mw);
    mt_model_free(mf);
}

/* Two documents packed in one row (positions restart, kv_start blocks the first) give the
 * second document's logits of a row of its own. */
static void packed_documents(void **state) {
    (void)state;
    for (int v = 0; v < N_VARIANTS; v++) {
        mt_model *m = load_fixture(g_be, variant_name(v));
        int V = mt_model_config(m)->vocab_size;
        int32_t tokens[12], pos[12], ks[12];
        random_tokens(tokens, 12, V, 300 + (uint64_t)v);
        for (int t = 0; t < 12; t++) {
            pos[t] = t < 5 ? t : t - 5;
            ks[t] = t < 5 ? 0 : 5;
        }
        float *packed = forward_logits(m, tokens, 12, pos, ks);
        float *alone = forward_logits(m, tokens + 5, 7, NULL, NULL);
        float *first = forward_logits(m, tokens, 5, NULL, NULL);
        mt_test_assert_close(variant_name(v), packed + (size_t)5 * V, alone, (size_t)7 * V, 1e-4);
        mt_test_assert_close(variant_name(v), packed, first, (size_t)5 * V, 1e-4);
        free(packed);
        free(alone);
        free(first);
        mt_model_free(m);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(decode_every_family), cmocka_unit_test(decode_with_adapters),
        cmocka_unit_test(decode_long_prompt),  cmocka_unit_test(sliding_window),
        cmocka_unit_test(packed_documents),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
