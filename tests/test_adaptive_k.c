/* test_adaptive_k.c — adaptive expert counts in the model's inference passes
 * (docs/attention-pruning.md): skipping the slots adaptive routing drops gives the bits the
 * full dispatch gave them at weight 0 (grouped and per-expert paths, adapters on the
 * experts; where OpenBLAS keeps one kernel, see below); per-row settings in one decode step:
 * P = 1 with max_k = top_k is fixed top-k bit for bit, rows with different thresholds in one
 * step give what each gets in a step of its own under the model-wide setting (to 1e-5; one
 * threshold on every row is the model-wide one bit for bit), experts_used counts each row; bad settings are MT_ERR_INVALID naming the row and leave the pool as it
 * was. Every family. */
#include "model_testlib.h"
#include "model/model-impl.h"

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

static const mt_family FAMS[] = {MT_FAMILY_QWEN3_MOE, MT_FAMILY_MIXTRAL, MT_FAMILY_QWEN2_MOE,
                                 MT_FAMILY_OLMOE,     MT_FAMILY_DEEPSEEK_V3, MT_FAMILY_DEEPSEEK_V2};
#define N_FAMS ((int)(sizeof FAMS / sizeof FAMS[0]))

enum { ROWS = 16, MAX_SEQ = 64 };

static mt_model *random_model(mt_family f, uint64_t seed) {
    mt_error err = {0};
    mt_config cfg;
    if (mt_config_preset(&cfg, f, "tiny", 64, &err) != MT_OK) fail_msg("%s", err.msg);
    cfg.initializer_range = 0.25f; /* O(1) activations, routing far from ties */
    mt_model *m = NULL;
    if (mt_model_init_random(&m, &cfg, seed, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    return m;
}

typedef struct ctx {
    mt_kv_pool *p;
    mt_decoder *d;
} ctx;

static void ctx_init(ctx *c, mt_model *m) {
    mt_error err = {0};
    mt_kv_pool_opts po = {.block_size = 8, .n_blocks = 64, .max_seqs = 4, .max_seq_len = MAX_SEQ};
    if (mt_kv_pool_init(&c->p, m, &po, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_decoder_init(&c->d, m, ROWS, 0, &err) != MT_OK) fail_msg("%s", err.msg);
}

static void ctx_free(ctx *c) {
    mt_decoder_free(c->d);
    mt_kv_pool_free(c->p);
}

static int open_seq(ctx *c) {
    mt_error err = {0};
    int s = -1;
    if (mt_kv_seq_open(c->p, &s, &err) != MT_OK) fail_msg("%s", err.msg);
    return s;
}

/* One step over n rows with every row's logits. */
static void step(ctx *c, const int32_t *tok, const int32_t *seq, const int32_t *slot, const mt_adapter *const *ads,
                 int n_slots, int n, const mt_adaptive_k *ak, int32_t *used, float *logits) {
    mt_error err = {0};
    int32_t lr[ROWS];
    for (int i = 0; i < n; i++) lr[i] = i;
    mt_decode_batch b = {.n_rows = n, .tokens = tok, .seq = seq, .slot = slot, .adapters = ads, .n_slots = n_slots,
                         .logit_rows = lr, .n_logits = n, .adaptive_k = ak, .experts_used = used};
    if (mt_decode_step(c->d, c->p, &b, logits, &err) != MT_OK) fail_msg("%s", err.msg);
}

static int n_moe_layers(const mt_model *m) {
    const mt_config *cfg = mt_model_config(m);
    int n = 0;
    for (int l = 0; l < cfg->n_layers; l++) n += cfg->layer_is_moe[l];
    return n;
}

/* Two sequences of n/2 prompt rows in one step, the second on an adapter over every linear
 * (the experts' included), under the model-wide setting; every row's logits. */
static void prefill_two(mt_model *m, const mt_adapter *ad, const int32_t *tok, int n, float *logits) {
    ctx c;
    ctx_init(&c, m);
    int s0 = open_seq(&c), s1 = open_seq(&c);
    int32_t seq[ROWS], slot[ROWS];
    for (int i = 0; i < n; i++) {
        seq[i] = i < n / 2 ? s0 : s1;
        slot[i] = i < n / 2 ? 0 : 1;
    }
    const mt_adapter *ads[2] = {NULL, ad};
    step(&c, tok, seq, slot, ads, 2, n, NULL, NULL, logits);
    ctx_free(&c);
}

/* OpenBLAS picks its sgemm kernel by the shape (a small-matrix kernel below a size), and the
 * two kernels round differently; each computes a row without looking at the others. So where
 * every expert's row count stays under that size (a decode step's few rows) skipping is bit
 * for bit the full dispatch, and where dropping rows moves an expert across it (a prefill
 * chunk) the kept rows may differ in the last bits, as a step's rows do with its batch's make-up
 * (test_decode_batch). */
static void skipping_dropped_slots_changes_no_bit(void **state) {
    (void)state;
    const float thr[] = {0.6f, 0.4f, 0.25f, 0.12f};
    const int sizes[] = {4, ROWS};
    for (int f = 0; f < N_FAMS; f++) {
        mt_model *m = random_model(FAMS[f], 7 + (uint64_t)f);
        int V = mt_model_config(m)->vocab_size, K = mt_model_config(m)->top_k;
        toy_set *ts = toy_set_new(m);
        for (int i = 0; i < mt_model_linear_count(m); i++) toy_add(ts, m, i, 3, 500 + (uint64_t)i);
        int32_t tok[ROWS];
        random_tokens(tok, ROWS, V, 11 + (uint64_t)f);
        size_t cap = (size_t)ROWS * V;
        float *want = mt_xmalloc(cap * sizeof(float)), *got = mt_xmalloc(cap * sizeof(float));
        bool partial = false;
        for (int loop = 0; loop < 2; loop++) {
            mt_moe_set_expert_loop(loop == 1);
            for (int z = 0; z < 2; z++)
                for (size_t k = 0; k < sizeof thr / sizeof thr[0]; k++) {
                    int nr = sizes[z];
                    size_t n = (size_t)nr * V;
                    mt_adaptive_k ak = {.threshold = thr[k]};
                    mt_model_set_adaptive_k(m, &ak);
                    mt_moe_set_dispatch_dropped(true);
                    prefill_two(m, &ts->view, tok, nr, want);
                    mt_moe_set_dispatch_dropped(false);
                    prefill_two(m, &ts->view, tok, nr, got);
                    uint64_t nt, ne;
                    mt_model_adaptive_k_stats(m, &nt, &ne);
                    partial |= ne > nt && ne < nt * (uint64_t)K; /* some slots dropped, not all */
                    char what[128];
                    snprintf(what, sizeof what, "%s, %s path, %d rows, threshold %g", mt_family_name(FAMS[f]),
                             loop ? "per-expert" : "grouped", nr, (double)thr[k]);
                    if (nr == ROWS) {
                        mt_test_assert_close(what, got, want, n, 1e-5);
                    } else if (memcmp(got, want, n * sizeof(float))) {
                        size_t i = 0;
                        while (got[i] == want[i]) i++;
                        fail_msg("%s: logit %zu is %.9g with dropped slots skipped, %.9g with them dispatched", what,
                                 i, (double)got[i], (double)want[i]);
                    }
                }
        }
        mt_moe_set_expert_loop(false);
        mt_model_set_adaptive_k(m, NULL);
        /* the thresholds were meant to drop some slots but not all: otherwise nothing was tested */
        if (!partial) fail_msg("%s: no threshold dropped part of the slots", mt_family_name(FAMS[f]));
        free(want);
        free(got);
        toy_set_free(ts);
        mt_model_free(m);
    }
}

static void row_at_one_is_fixed_top_k(void **state) {
    (void)state;
    for (int f = 0; f < N_FAMS; f++) {
        mt_model *m = random_model(FAMS[f], 30 + (uint64_t)f);
        int V = mt_model_config(m)->vocab_size, K = mt_model_config(m)->top_k;
        int32_t tok[ROWS], seq[ROWS], used[ROWS];
        random_tokens(tok, ROWS, V, 3 + (uint64_t)f);
        mt_adaptive_k ak[ROWS];
        for (int i = 0; i < ROWS; i++) ak[i] = (mt_adaptive_k){.threshold = 1.0f, .max_k = K};
        size_t n = (size_t)ROWS * V;
        float *want = mt_xmalloc(n * sizeof(float)), *got = mt_xmalloc(n * sizeof(float));
        ctx c;
        ctx_init(&c, m);
        int s = open_seq(&c);
        for (int i = 0; i < ROWS; i++) seq[i] = s;
        step(&c, tok, seq, NULL, NULL, 0, ROWS, NULL, NULL, want);
        ctx_free(&c);
        ctx_init(&c, m);
        s = open_seq(&c);
        step(&c, tok, seq, NULL, NULL, 0, ROWS, ak, used, got);
        ctx_free(&c);
        assert_memory_equal(got, want, n * sizeof(float));
        for (int i = 0; i < ROWS; i++) assert_int_equal(used[i], n_moe_layers(m) * K);
        free(want);
        free(got);
        mt_model_free(m);
    }
}

/* Three sequences at thresholds 0.5, 0.2 and 0 (fixed top-k): prefilled and then decoded one
 * token each in shared steps with per-row settings, and each alone under the model-wide
 * setting: the logits as close as a step's make-up allows even with fixed routing
 * (test_decode_batch: OpenBLAS's kernel depends on the rows), and each row's experts_used
 * against the model's counts. Then bit for bit: one step whose rows all carry a threshold is
 * the same step under that model-wide threshold. */
static void mixed_thresholds_equal_separate_steps(void **state) {
    (void)state;
    enum { NS = 3, PL = 4 };
    const float thr[NS] = {0.5f, 0.2f, 0.0f};
    for (int f = 0; f < N_FAMS; f++) {
        mt_model *m = random_model(FAMS[f], 60 + (uint64_t)f);
        int V = mt_model_config(m)->vocab_size, K = mt_model_config(m)->top_k, nm = n_moe_layers(m);
        int32_t tok[NS * PL], nxt[NS];
        random_tokens(tok, NS * PL, V, 90 + (uint64_t)f);
        random_tokens(nxt, NS, V, 190 + (uint64_t)f);
        float *want = mt_xmalloc((size_t)NS * (PL + 1) * V * sizeof(float));
        float *got = mt_xmalloc((size_t)NS * (PL + 1) * V * sizeof(float));
        int32_t want_used[NS * (PL + 1)], got_used[NS * PL];
        /* alone, under the model-wide setting: the model's counts per row of the decode step */
        for (int s = 0; s < NS; s++) {
            mt_adaptive_k ak = {.threshold = thr[s]};
            mt_model_set_adaptive_k(m, &ak);
            ctx c;
            ctx_init(&c, m);
            int q = open_seq(&c);
            int32_t seq[PL];
            for (int i = 0; i < PL; i++) seq[i] = q;
            step(&c, tok + s * PL, seq, NULL, NULL, 0, PL, NULL, NULL, want + (size_t)s * PL * V);
            uint64_t t0, e0, t1, e1;
            mt_model_adaptive_k_stats(m, &t0, &e0);
            step(&c, &nxt[s], seq, NULL, NULL, 0, 1, NULL, NULL, want + ((size_t)NS * PL + s) * V);
            mt_model_adaptive_k_stats(m, &t1, &e1);
            want_used[s] = thr[s] > 0 ? (int)(e1 - e0) : nm * K;
            if (thr[s] > 0) assert_int_equal((int)(t1 - t0), nm);
            ctx_free(&c);
        }
        mt_model_set_adaptive_k(m, NULL);
        /* together: prompt rows interleaved across sequences, then one decode row each */
        ctx c;
        ctx_init(&c, m);
        int qs[NS];
        for (int s = 0; s < NS; s++) qs[s] = open_seq(&c);
        int32_t t[NS * PL], seq[NS * PL];
        mt_adaptive_k ak[NS * PL];
        for (int i = 0; i < PL; i++)
            for (int s = 0; s < NS; s++) {
                int r = i * NS + s;
                t[r] = tok[s * PL + i];
                seq[r] = qs[s];
                ak[r] = (mt_adaptive_k){.threshold = thr[s]};
            }
        float *lg = mt_xmalloc((size_t)NS * PL * V * sizeof(float));
        step(&c, t, seq, NULL, NULL, 0, NS * PL, ak, got_used, lg);
        for (int i = 0; i < PL; i++)
            for (int s = 0; s < NS; s++)
                memcpy(got + ((size_t)s * PL + i) * V, lg + ((size_t)i * NS + s) * V, (size_t)V * sizeof(float));
        step(&c, nxt, qs, NULL, NULL, 0, NS, ak, got_used, got + (size_t)NS * PL * V);
        ctx_free(&c);
        for (int s = 0; s < NS; s++) {
            char what[96];
            snprintf(what, sizeof what, "%s, sequence %d (threshold %g)", mt_family_name(FAMS[f]), s, (double)thr[s]);
            mt_test_assert_close(what, got + (size_t)s * PL * V, want + (size_t)s * PL * V, (size_t)PL * V, 1e-5);
            mt_test_assert_close(what, got + ((size_t)NS * PL + s) * V, want + ((size_t)NS * PL + s) * V, (size_t)V,
                                 1e-5);
            if (got_used[s] != want_used[s])
                fail_msg("%s: experts_used %d, the model counted %d", what, got_used[s], want_used[s]);
            assert_true(got_used[s] >= nm && got_used[s] <= nm * K);
        }
        for (int s = 0; s < 2; s++) {
            mt_adaptive_k one = {.threshold = thr[s]};
            for (int r = 0; r < NS * PL; r++) ak[r] = one;
            float *lg2 = mt_xmalloc((size_t)NS * PL * V * sizeof(float));
            ctx_init(&c, m);
            for (int q = 0; q < NS; q++) qs[q] = open_seq(&c);
            step(&c, t, seq, NULL, NULL, 0, NS * PL, ak, NULL, lg);
            ctx_free(&c);
            mt_model_set_adaptive_k(m, &one);
            ctx_init(&c, m);
            for (int q = 0; q < NS; q++) qs[q] = open_seq(&c);
            step(&c, t, seq, NULL, NULL, 0, NS * PL, NULL, NULL, lg2);
            ctx_free(&c);
            mt_model_set_adaptive_k(m, NULL);
            assert_memory_equal(lg, lg2, (size_t)NS * PL * V * sizeof(float));
            free(lg2);
        }
        /* the 0.2 row keeps fewer experts than the fixed row: the counts do count */
        assert_true(got_used[1] < nm * K);
        assert_int_equal(got_used[2], nm * K);
        free(lg);
        free(want);
        free(got);
        mt_model_free(m);
    }
}

static void bad_settings_leave_the_pool(void **state) {
    (void)state;
    mt_model *m = random_model(MT_FAMILY_QWEN3_MOE, 5);
    int K = mt_model_config(m)->top_k;
    assert_true(K >= 2);
    ctx c;
    ctx_init(&c, m);
    int s = open_seq(&c);
    int32_t tok[2] = {1, 2}, seq[2] = {s, s};
    float *lg = mt_xmalloc(2 * (size_t)mt_model_config(m)->vocab_size * sizeof(float));
    step(&c, tok, seq, NULL, NULL, 0, 2, NULL, NULL, lg);
    int len = mt_kv_seq_len(c.p, s), free_blocks = mt_kv_pool_blocks_free(c.p);
    const mt_adaptive_k bad[] = {{.threshold = 1.5f},       {.threshold = -0.1f},
                                 {.threshold = NAN},        {.threshold = 0.5f, .min_k = K + 1},
                                 {.threshold = 0.5f, .max_k = -1}, {.threshold = 0.5f, .min_k = 2, .max_k = 1}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        mt_adaptive_k ak[2] = {{.threshold = 0.3f}, bad[k]};
        int32_t lr[2] = {0, 1};
        mt_decode_batch b = {.n_rows = 2, .tokens = tok, .seq = seq, .logit_rows = lr, .n_logits = 2, .adaptive_k = ak};
        mt_error err = {0};
        assert_int_equal(mt_decode_step(c.d, c.p, &b, lg, &err), MT_ERR_INVALID);
        if (!strstr(err.msg, "row 1")) fail_msg("case %zu: \"%s\" does not name row 1", k, err.msg);
        assert_int_equal(mt_kv_seq_len(c.p, s), len);
        assert_int_equal(mt_kv_pool_blocks_free(c.p), free_blocks);
    }
    free(lg);
    ctx_free(&c);
    mt_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(skipping_dropped_slots_changes_no_bit),
        cmocka_unit_test(row_at_one_is_fixed_top_k),
        cmocka_unit_test(mixed_thresholds_equal_separate_steps),
        cmocka_unit_test(bad_settings_leave_the_pool),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
