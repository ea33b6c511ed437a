/* test_decode_batch.c — many sequences and many adapters in one decode step: for every
 * family, sequences of mixed lengths on mixed adapters (and the base), prefill chunks and
 * single tokens mixed in steps, each get the logits and greedy tokens they get decoded alone;
 * block size does not change a bit; forked prompts share blocks (copy-on-write) and give what
 * unshared prompts give; running out of blocks or bad rows leave the pool as it was. */
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

enum { N_SEQ = 6, MAX_PROMPT = 9, N_GEN = 5, N_ADAPT = 3 };

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy decoding of one sequence alone through the single-sequence cache: the logits after
 * the prompt and after each new token, [N_GEN, V], and the tokens. */
static void solo(mt_model *m, const mt_adapter *ad, const int32_t *prompt, int n, float *logits, int32_t *gen) {
    mt_error err = {0};
    int V = mt_model_config(m)->vocab_size;
    mt_kv_cache *c = NULL;
    if (mt_kv_cache_init(&c, m, n + N_GEN, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_kv_cache_set_adapter(c, ad, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_model_decode(m, c, prompt, n, logits, &err) != MT_OK) fail_msg("%s", err.msg);
    for (int k = 0; k < N_GEN; k++) {
        gen[k] = argmax(logits + (size_t)k * V, V);
        if (k + 1 < N_GEN && mt_model_decode(m, c, &gen[k], 1, logits + (size_t)(k + 1) * V, &err) != MT_OK)
            fail_msg("%s", err.msg);
    }
    mt_kv_cache_free(c);
}

/* The same sequences in one pool, scheduled as a server would: each step takes at most
 * `budget` rows, new tokens of running sequences first, then prompt chunks of up to 4. */
static void batched(mt_model *m, const mt_adapter *const *slots, int n_slots, int32_t prompts[N_SEQ][MAX_PROMPT],
                    const int *len, const int *slot_of, int block_size, int budget, float *logits, int32_t *gen) {
    mt_error err = {0};
    int V = mt_model_config(m)->vocab_size;
    mt_kv_pool *p = NULL;
    mt_kv_pool_opts po = {.block_size = block_size, .n_blocks = 64, .max_seqs = N_SEQ, .max_seq_len = 32};
    if (mt_kv_pool_init(&p, m, &po, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_decoder *d = NULL;
    if (mt_decoder_init(&d, m, budget, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    int seq[N_SEQ], fed[N_SEQ] = {0}, made[N_SEQ] = {0};
    for (int s = 0; s < N_SEQ; s++)
        if (mt_kv_seq_open(p, &seq[s], &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t tok[64], sq[64], sl[64], lr[64], owner[64];
    float *out = mt_xmalloc((size_t)budget * V * sizeof(float));
    for (int step = 0; step < 100; step++) {
        int n = 0, nl = 0;
        for (int s = 0; s < N_SEQ && n < budget; s++)
            if (fed[s] == len[s] && made[s] > 0 && made[s] < N_GEN) {
                tok[n] = gen[s * N_GEN + made[s] - 1];
                sq[n] = seq[s];
                sl[n] = slot_of[s];
                owner[nl] = s;
                lr[nl++] = n++;
            }
        for (int s = 0; s < N_SEQ && n < budget; s++) {
            if (fed[s] == len[s]) continue;
            int take = len[s] - fed[s] < 4 ? len[s] - fed[s] : 4;
            if (take > budget - n) take = budget - n;
            for (int k = 0; k < take; k++) {
                tok[n] = prompts[s][fed[s] + k];
                sq[n] = seq[s];
                sl[n] = slot_of[s];
                n++;
            }
            fed[s] += take;
            if (fed[s] == len[s]) {
                owner[nl] = s;
                lr[nl++] = n - 1;
            }
        }
        if (n == 0) break;
        mt_decode_batch b = {.n_rows = n, .tokens = tok, .seq = sq, .slot = sl, .adapters = slots,
                             .n_slots = n_slots, .logit_rows = lr, .n_logits = nl};
        if (mt_decode_step(d, p, &b, out, &err) != MT_OK) fail_msg("%s", err.msg);
        for (int q = 0; q < nl; q++) {
            int s = owner[q];
            memcpy(logits + ((size_t)s * N_GEN + made[s]) * V, out + (size_t)q * V, (size_t)V * sizeof(float));
            gen[s * N_GEN + made[s]] = argmax(out + (size_t)q * V, V);
            made[s]++;
        }
    }
    for (int s = 0; s < N_SEQ; s++) {
        assert_int_equal(made[s], N_GEN);
        assert_int_equal(mt_kv_seq_len(p, seq[s]), len[s] + N_GEN - 1);
        mt_kv_seq_close(p, seq[s]);
    }
    assert_int_equal(mt_kv_pool_blocks_free(p), mt_kv_pool_blocks_total(p));
    free(out);
    mt_decoder_free(d);
    mt_kv_pool_free(p);
}

static void mixed_batch_equals_alone(void **state) {
    (void)state;
    for (int v = 0; v < N_VARIANTS; v++) {
        mt_model *m = load_fixture(g_be, variant_name(v));
        int V = mt_model_config(m)->vocab_size, nl = mt_model_linear_count(m);
        /* three adapters on every linear (kv_b_proj, experts, routers, the LM head included),
         * of different ranks; slot 0 and slot 2 are the base */
        toy_set *ts[N_ADAPT];
        for (int a = 0; a < N_ADAPT; a++) {
            ts[a] = toy_set_new(m);
            for (int i = 0; i < nl; i++) toy_add(ts[a], m, i, 2 + a, 1000 * (uint64_t)(a + 1) + (uint64_t)i);
        }
        const mt_adapter *slots[5] = {NULL, &ts[0]->view, NULL, &ts[1]->view, &ts[2]->view};
        int32_t prompts[N_SEQ][MAX_PROMPT];
        int len[N_SEQ] = {1, 9, 4, 7, 2, 5}, slot_of[N_SEQ] = {1, 3, 0, 4, 2, 1};
        for (int s = 0; s < N_SEQ; s++) random_tokens(prompts[s], MAX_PROMPT, V, 40 + (uint64_t)(v * 10 + s));
        size_t per = (size_t)N_GEN * V;
        float *want = mt_xmalloc(N_SEQ * per * sizeof(float)), *got = mt_xmalloc(N_SEQ * per * sizeof(float));
        int32_t want_tok[N_SEQ * N_GEN], got_tok[N_SEQ * N_GEN];
        for (int s = 0; s < N_SEQ; s++) solo(m, slots[slot_of[s]], prompts[s], len[s], want + s * per, want_tok + s * N_GEN);
        const int budgets[] = {5, 16}, blocks[] = {4, 16};
        for (int k = 0; k < 2; k++) {
            batched(m, slots, 5, prompts, len, slot_of, blocks[k], budgets[k], got, got_tok);
            for (int s = 0; s < N_SEQ; s++) {
                char what[96];
                snprintf(what, sizeof what, "%s seq %d (slot %d), budget %d", variant_name(v), s, slot_of[s], budgets[k]);
                mt_test_assert_close(what, got + s * per, want + s * per, per, 1e-4);
                assert_memory_equal(got_tok + s * N_GEN, want_tok + s * N_GEN, N_GEN * sizeof(int32_t));
            }
        }
        /* the adapters matter: the base gives other logits than slot 1 on the same prompt */
        float *base = mt_xmalloc(per * sizeof(float));
        int32_t base_tok[N_GEN];
        solo(m, NULL, prompts[0], len[0], base, base_tok);
        assert_true(mt_test_rel_err(base, want, per, 1e-30) > 1e-3);
        free(base);
        free(want);
        free(got);
        for (int a = 0; a < N_ADAPT; a++) toy_set_free(ts[a]);
        mt_model_free(m);
    }
}

/* One sequence through pools of different block sizes: identical bits (attention takes keys
 * in tiles of absolute positions, whatever block they live in). */
static void block_size_changes_nothing(void **state) {
    (void)state;
    mt_error err = {0};
    const char *variants[] = {"deepseek_v3", "mixtral"};
    for (int v = 0; v < 2; v++) {
        mt_model *m = load_fixture(g_be, variants[v]);
        int V = mt_model_config(m)->vocab_size;
        enum { T = 40 };
        int32_t tokens[T];
        random_tokens(tokens, T, V, 5);
        float *ref = NULL;
        const int sizes[] = {1, 3, 16, 64};
        for (int k = 0; k < 4; k++) {
            mt_kv_pool *p = NULL;
            mt_kv_pool_opts po = {.block_size = sizes[k], .n_blocks = T / sizes[k] + 2, .max_seqs = 1};
            if (mt_kv_pool_init(&p, m, &po, &err) != MT_OK) fail_msg("%s", err.msg);
            mt_decoder *d = NULL;
            if (mt_decoder_init(&d, m, 8, 0, &err) != MT_OK) fail_msg("%s", err.msg);
            int s;
            if (mt_kv_seq_open(p, &s, &err) != MT_OK) fail_msg("%s", err.msg);
            float *logits = mt_xmalloc((size_t)T * V * sizeof(float));
            int32_t seq[8] = {s, s, s, s, s, s, s, s}, rows[8] = {0, 1, 2, 3, 4, 5, 6, 7};
            for (int t = 0; t < T; t += 8) {
                mt_decode_batch b = {.n_rows = 8, .tokens = tokens + t, .seq = seq, .logit_rows = rows, .n_logits = 8};
                if (mt_decode_step(d, p, &b, logits + (size_t)t * V, &err) != MT_OK) fail_msg("%s", err.msg);
            }
            if (!ref) {
                ref = logits;
            } else {
                assert_memory_equal(logits, ref, (size_t)T * V * sizeof(float));
                free(logits);
            }
            mt_decoder_free(d);
            mt_kv_pool_free(p);
        }
        free(ref);
        mt_model_free(m);
    }
}

/* n samples of one prompt: the prompt is prefilled once and forked; the forks share its
 * blocks until they write, and decode what separately prefilled copies decode. */
static void forked_prompt_shares_blocks(void **state) {
    (void)state;
    mt_error err = {0};
    for (int v = 0; v < N_VARIANTS; v++) {
        mt_model *m = load_fixture(g_be, variant_name(v));
        int V = mt_model_config(m)->vocab_size;
        enum { P = 10, BS = 4, K = 3 };
        int32_t prompt[P], next[K];
        random_tokens(prompt, P, V, 77);
        random_tokens(next, K, V, 78);
        float *shared[K], *alone[K];
        for (int k = 0; k < K; k++) {
            shared[k] = mt_xmalloc((size_t)V * sizeof(float));
            alone[k] = mt_xmalloc((size_t)V * sizeof(float));
        }
        for (int mode = 0; mode < 2; mode++) {
            mt_kv_pool *p = NULL;
            mt_kv_pool_opts po = {.block_size = BS, .n_blocks = 16, .max_seqs = K + 1};
            if (mt_kv_pool_init(&p, m, &po, &err) != MT_OK) fail_msg("%s", err.msg);
            mt_decoder *d = NULL;
            if (mt_decoder_init(&d, m, P * K, 0, &err) != MT_OK) fail_msg("%s", err.msg);
            int seqs[K];
            int32_t tok[P * K], sq[P * K];
            int n = 0;
            if (mode == 0) {
                int s0;
                if (mt_kv_seq_open(p, &s0, &err) != MT_OK) fail_msg("%s", err.msg);
                for (int i = 0; i < P; i++) {
                    tok[i] = prompt[i];
                    sq[i] = s0;
                }
                mt_decode_batch b = {.n_rows = P, .tokens = tok, .seq = sq};
                if (mt_decode_step(d, p, &b, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
                int used = 16 - mt_kv_pool_blocks_free(p);
                assert_int_equal(used, (P + BS - 1) / BS);
                for (int k = 0; k < K; k++)
                    if (mt_kv_seq_fork(p, s0, &seqs[k], &err) != MT_OK) fail_msg("%s", err.msg);
                mt_kv_seq_close(p, s0);
                /* forking copies nothing; the parent's close frees nothing the forks hold */
                assert_int_equal(16 - mt_kv_pool_blocks_free(p), used);
                /* appending into the shared, partly filled last block copies it for each fork
                 * but the last one to write, which finds it no longer shared */
                assert_int_equal(mt_kv_seq_blocks_needed(p, seqs[0], 1), 1);
            } else {
                for (int k = 0; k < K; k++) {
                    if (mt_kv_seq_open(p, &seqs[k], &err) != MT_OK) fail_msg("%s", err.msg);
                    for (int i = 0; i < P; i++) {
                        tok[n] = prompt[i];
                        sq[n++] = seqs[k];
                    }
                }
                mt_decode_batch b = {.n_rows = n, .tokens = tok, .seq = sq};
                if (mt_decode_step(d, p, &b, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
            }
            int32_t rows[K] = {0, 1, 2};
            for (int k = 0; k < K; k++) sq[k] = seqs[k];
            mt_decode_batch b = {.n_rows = K, .tokens = next, .seq = sq, .logit_rows = rows, .n_logits = K};
            float *out = mt_xmalloc((size_t)K * V * sizeof(float));
            if (mt_decode_step(d, p, &b, out, &err) != MT_OK) fail_msg("%s", err.msg);
            for (int k = 0; k < K; k++) memcpy(mode == 0 ? shared[k] : alone[k], out + (size_t)k * V, (size_t)V * sizeof(float));
            if (mode == 0) /* the first K−1 forks copied the shared last block; the last kept it */
                assert_int_equal(16 - mt_kv_pool_blocks_free(p), (P + BS - 1) / BS + (K - 1));
            for (int k = 0; k < K; k++) mt_kv_seq_close(p, seqs[k]);
            assert_int_equal(mt_kv_pool_blocks_free(p), 16);
            free(out);
            mt_decoder_free(d);
            mt_kv_pool_free(p);
        }
        for (int k = 0; k < K; k++) {
            char what[64];
            snprintf(what, sizeof what, "%s fork %d", variant_name(v), k);
            mt_test_assert_close(what, shared[k], alone[k], (size_t)V, 1e-5);
        }
        /* different next tokens: the forks really are separate sequences */
        assert_true(mt_test_rel_err(shared[0], shared[1], (size_t)V, 1e-30) > 1e-4);
        for (int k = 0; k < K; k++) {
            free(shared[k]);
            free(alone[k]);
        }
        mt_model_free(m);
    }
}

/* Out of blocks is MT_ERR_EXHAUSTED and bad rows MT_ERR_INVALID; either way nothing in the
 * pool changed, and the same step succeeds once blocks are freed. */
static void errors_leave_the_pool_as_it_was(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = load_fixture(g_be, "qwen3_moe");
    int V = mt_model_config(m)->vocab_size;
    mt_kv_pool *p = NULL;
    mt_kv_pool_opts po = {.block_size = 4, .n_blocks = 3, .max_seqs = 2, .max_seq_len = 16};
    assert_int_equal(mt_kv_pool_init(&p, m, &po, &err), MT_OK);
    mt_decoder *d = NULL;
    assert_int_equal(mt_decoder_init(&d, m, 12, 4, &err), MT_OK);
    int a, b2, c;
    assert_int_equal(mt_kv_seq_open(p, &a, &err), MT_OK);
    assert_int_equal(mt_kv_seq_open(p, &b2, &err), MT_OK);
    assert_int_equal(mt_kv_seq_open(p, &c, &err), MT_ERR_EXHAUSTED);
    int32_t tok[12], sq[12];
    random_tokens(tok, 12, V, 3);
    for (int i = 0; i < 12; i++) sq[i] = i < 8 ? a : b2;
    /* 8 positions of a (2 blocks) and 4 of b (1 block) fit exactly; 9 of a do not */
    mt_decode_batch ok = {.n_rows = 12, .tokens = tok, .seq = sq};
    sq[8] = a;
    mt_decode_batch big = {.n_rows = 12, .tokens = tok, .seq = sq};
    mt_error e = {0};
    assert_int_equal(mt_decode_step(d, p, &big, NULL, &e), MT_ERR_EXHAUSTED);
    assert_non_null(strstr(e.msg, "free KV blocks"));
    assert_int_equal(mt_kv_pool_blocks_free(p), 3);
    assert_int_equal(mt_kv_seq_len(p, a), 0);
    assert_int_equal(mt_kv_seq_len(p, b2), 0);
    sq[8] = b2;
    /* bad rows */
    int32_t bad_tok = V, pos[12], bad_slot[12] = {0};
    struct {
        mt_decode_batch b;
        const char *msg;
    } cases[] = {
        {{.n_rows = 13, .tokens = tok, .seq = sq}, "rows but the decoder holds"},
        {{.n_rows = 1, .tokens = &bad_tok, .seq = sq}, "outside the vocabulary"},
        {{.n_rows = 2, .tokens = tok, .seq = (int32_t[]){a, 5}}, "not open"},
        {{.n_rows = 2, .tokens = tok, .seq = sq, .pos = pos}, "continues at"},
        {{.n_rows = 1, .tokens = tok, .seq = sq, .slot = bad_slot + 1, .n_slots = 0}, NULL},
        {{.n_rows = 1, .tokens = tok, .seq = sq, .logit_rows = (int32_t[]){3}, .n_logits = 1}, "not a row"},
    };
    pos[0] = 0;
    pos[1] = 2;
    bad_slot[1] = 1;
    cases[4].msg = "slot 1";
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mt_error ei = {0};
        assert_int_equal(mt_decode_step(d, p, &cases[i].b, NULL, &ei), MT_ERR_INVALID);
        if (!strstr(ei.msg, cases[i].msg)) fail_msg("case %zu: '%s' lacks '%s'", i, ei.msg, cases[i].msg);
        assert_int_equal(mt_kv_pool_blocks_free(p), 3);
        assert_int_equal(mt_kv_seq_len(p, a), 0);
    }
    /* an adapter of higher rank than the decoder was sized for */
    toy_set *ts = toy_set_new(m);
    toy_add(ts, m, 0, 5, 9);
    const mt_adapter *slots[1] = {&ts->view};
    mt_decode_batch hi = {.n_rows = 1, .tokens = tok, .seq = sq, .adapters = slots, .n_slots = 1};
    mt_error eh = {0};
    assert_int_equal(mt_decode_step(d, p, &hi, NULL, &eh), MT_ERR_INVALID);
    assert_non_null(strstr(eh.msg, "rank 5"));
    toy_set_free(ts);
    assert_int_equal(mt_decode_step(d, p, &ok, NULL, &err), MT_OK);
    assert_int_equal(mt_kv_pool_blocks_free(p), 0);
    assert_int_equal(mt_kv_seq_len(p, a), 8);
    assert_int_equal(mt_kv_seq_blocks_needed(p, a, 1), 1);
    /* freeing b's block lets a grow by one block */
    mt_kv_seq_close(p, b2);
    assert_int_equal(mt_kv_pool_blocks_free(p), 1);
    int32_t one[1] = {a};
    mt_decode_batch more = {.n_rows = 1, .tokens = tok, .seq = one};
    assert_int_equal(mt_decode_step(d, p, &more, NULL, &err), MT_OK);
    assert_int_equal(mt_kv_seq_len(p, a), 9);
    /* the router statistics of the last step cover its rows */
    mt_router_stats rs;
    assert_true(mt_decoder_router_stats(d, 0, &rs));
    int total = 0;
    for (int e2 = 0; e2 < mt_model_config(m)->n_experts; e2++) total += rs.tokens_per_expert[e2];
    assert_int_equal(total, mt_model_config(m)->top_k);
    assert_true(rs.entropy > 0);
    mt_decoder_free(d);
    mt_kv_pool_free(p);
    mt_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mixed_batch_equals_alone),
        cmocka_unit_test(block_size_changes_nothing),
        cmocka_unit_test(forked_prompt_shares_blocks),
        cmocka_unit_test(errors_leave_the_pool_as_it_was),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
