/* test_dap_decode.c — DAP in the paged decode (docs/attention-pruning.md): τ = 0 is today's
 * decode bit for bit (NULL thresholds, zero thresholds, and a τ = 0 row beside a τ > 0 row of
 * the same step); τ > 0 on a few-hundred-token sequence in blocks of 16 skips blocks and stays
 * close to full attention; sinks and the local window are always kept (covering every block:
 * nothing skipped, bit-identical); a mass floor of 1 falls back to full attention exactly; a
 * forked sequence (shared prefix blocks, copy-on-write of the partly filled one, summaries
 * copied with it) decodes exactly as an unforked one. Every family: GQA/MHA and MLA (absorbed). */
#include "model_testlib.h"
#include "model/model-impl.h"

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

enum { BS = 16, PROMPT = 440, GEN = 24, CHUNK = 64 };

static const mt_family FAMS[] = {MT_FAMILY_QWEN3_MOE, MT_FAMILY_MIXTRAL, MT_FAMILY_QWEN2_MOE,
                                 MT_FAMILY_OLMOE,     MT_FAMILY_DEEPSEEK_V3, MT_FAMILY_DEEPSEEK_V2};
#define N_FAMS ((int)(sizeof FAMS / sizeof FAMS[0]))

static float g_init = 0.25f;

static mt_model *random_model(mt_family f, uint64_t seed) {
    mt_error err = {0};
    mt_config cfg;
    if (mt_config_preset(&cfg, f, "tiny", 64, &err) != MT_OK) fail_msg("%s", err.msg);
    cfg.initializer_range = g_init; /* 0.25: O(1) activations, routing far from ties */
    if (cfg.max_position_embeddings < PROMPT + GEN + 8) cfg.max_position_embeddings = PROMPT + GEN + 8;
    mt_model *m = NULL;
    if (mt_model_init_random(&m, &cfg, seed, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    return m;
}

typedef struct ctx {
    mt_model *m;
    mt_kv_pool *p;
    mt_decoder *d;
    int V;
} ctx;

static void ctx_init(ctx *c, mt_model *m, const mt_dap_opts *o) {
    mt_error err = {0};
    c->m = m;
    c->V = mt_model_config(m)->vocab_size;
    mt_kv_pool_opts po = {.block_size = BS, .n_blocks = 4 * ((PROMPT + GEN) / BS + 2), .max_seqs = 4,
                          .max_seq_len = PROMPT + GEN};
    if (mt_kv_pool_init(&c->p, m, &po, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_decoder_init(&c->d, m, CHUNK, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_decoder_set_dap(c->d, o);
}

static void ctx_free(ctx *c) {
    mt_decoder_free(c->d);
    mt_kv_pool_free(c->p);
}

/* Prefills tokens [0, n) of seq without DAP. */
static void prefill(ctx *c, int seq, const int32_t *tok, int n) {
    mt_error err = {0};
    int32_t seqs[CHUNK];
    for (int i = 0; i < CHUNK; i++) seqs[i] = seq;
    float *lg = malloc((size_t)c->V * sizeof(float));
    for (int off = 0; off < n; off += CHUNK) {
        int k = n - off < CHUNK ? n - off : CHUNK;
        int32_t last = k - 1;
        mt_decode_batch b = {.n_rows = k, .tokens = tok + off, .seq = seqs, .logit_rows = &last, .n_logits = 1};
        if (mt_decode_step(c->d, c->p, &b, lg, &err) != MT_OK) fail_msg("%s", err.msg);
    }
    free(lg);
}

/* One decode step of n rows (one token for each of seqs), thresholds tau (NULL: the field
 * left NULL); logits [n, V]. */
static void step(ctx *c, int n, const int32_t *seqs, const int32_t *tok, const float *tau, float *logits) {
    mt_error err = {0};
    int32_t rows[4] = {0, 1, 2, 3};
    mt_decode_batch b = {.n_rows = n, .tokens = tok, .seq = seqs, .logit_rows = rows, .n_logits = n,
                         .dap_threshold = tau};
    if (mt_decode_step(c->d, c->p, &b, logits, &err) != MT_OK) fail_msg("%s", err.msg);
}

/* A prompt then GEN teacher-forced tokens of one sequence; logits [GEN, V]. tau_mode 0: field
 * NULL; else an array holding tau. */
static void run_one(mt_model *m, const mt_dap_opts *o, int tau_mode, float tau, const int32_t *tok, float *logits,
                    mt_dap_counts *counts) {
    ctx c;
    ctx_init(&c, m, o);
    mt_error err = {0};
    int seq;
    if (mt_kv_seq_open(c.p, &seq, &err) != MT_OK) fail_msg("%s", err.msg);
    prefill(&c, seq, tok, PROMPT);
    for (int k = 0; k < GEN; k++)
        step(&c, 1, &seq, tok + PROMPT + k, tau_mode ? &tau : NULL, logits + (size_t)k * c.V);
    if (counts) mt_decoder_dap_stats(c.d, counts);
    ctx_free(&c);
}

static double max_rel(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (e > num) num = e;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return num / (den > 0 ? den : 1);
}

static const mt_dap_opts DEF = {.n_sink_blocks = 1, .n_local_blocks = 1, .mass_floor = 0.9f};

static void tokens_for(int f, int32_t *tok, int n) { random_tokens(tok, n, 64, 100 + (uint64_t)f); }

static void threshold_zero_is_today(void **state) {
    (void)state;
    for (int f = 0; f < N_FAMS; f++) {
        mt_model *m = random_model(FAMS[f], 11 + (uint64_t)f);
        int V = mt_model_config(m)->vocab_size;
        int32_t tok[PROMPT + GEN];
        tokens_for(f, tok, PROMPT + GEN);
        float *ref = malloc((size_t)GEN * V * sizeof(float)), *zero = malloc((size_t)GEN * V * sizeof(float));
        mt_dap_counts cnt;
        run_one(m, &DEF, 0, 0, tok, ref, NULL);
        run_one(m, &DEF, 1, 0.0f, tok, zero, &cnt);
        assert_memory_equal(ref, zero, (size_t)GEN * V * sizeof(float));
        assert_int_equal(cnt.queries, 0);
        free(ref);
        free(zero);
        mt_model_free(m);
    }
}

/* Row A at τ = 0 beside row B at τ > 0 in each step: A is bit-identical to the same two-row
 * steps without DAP (the τ > 0 row switches the layer to the pair path). */
static void threshold_zero_row_in_dap_step(void **state) {
    (void)state;
    for (int f = 0; f < N_FAMS; f++) {
        mt_model *m = random_model(FAMS[f], 21 + (uint64_t)f);
        int V = mt_model_config(m)->vocab_size;
        int32_t tok[PROMPT + GEN], tok2[PROMPT + GEN];
        tokens_for(f, tok, PROMPT + GEN);
        random_tokens(tok2, PROMPT + GEN, 64, 999);
        float *out[2];
        mt_dap_counts cnt[2];
        for (int pass = 0; pass < 2; pass++) {
            ctx c;
            ctx_init(&c, m, &DEF);
            mt_error err = {0};
            int32_t s[2];
            for (int i = 0; i < 2; i++)
                if (mt_kv_seq_open(c.p, &s[i], &err) != MT_OK) fail_msg("%s", err.msg);
            prefill(&c, s[0], tok, PROMPT);
            prefill(&c, s[1], tok2, PROMPT);
            out[pass] = malloc((size_t)GEN * 2 * V * sizeof(float));
            float tau[2] = {0.0f, 0.5f};
            for (int k = 0; k < GEN; k++) {
                int32_t t[2] = {tok[PROMPT + k], tok2[PROMPT + k]};
                step(&c, 2, s, t, pass ? tau : NULL, out[pass] + (size_t)k * 2 * V);
            }
            mt_decoder_dap_stats(c.d, &cnt[pass]);
            ctx_free(&c);
        }
        assert_true(cnt[1].queries > 0);
        for (int k = 0; k < GEN; k++)
            assert_memory_equal(out[0] + (size_t)k * 2 * V, out[1] + (size_t)k * 2 * V, (size_t)V * sizeof(float));
        free(out[0]);
        free(out[1]);
        mt_model_free(m);
    }
}

/* τ > 0: blocks are skipped and the logits stay close to full attention. On random-weight
 * models the block bounds are loose, and through MoE routing a small change of a hidden state
 * can flip an expert, so closeness holds where attention is not too peaked: small-init models
 * (measured: max |Δlogit| / max |logit| over 24 steps ≤ 3.5e-2 at init 0.05, 6.0e-2 for
 * deepseek_v3 at init 0.1; at init 0.25 the rule skips 20-80 % of the blocks and the logits
 * change by O(1): the rule's behaviour, pinned against mt_dap_attend below, not a bug). */
static void skips_and_stays_close(void **state) {
    (void)state;
    const struct {
        mt_family f;
        float init, tau;
    } cases[] = {{MT_FAMILY_QWEN3_MOE, 0.05f, 0.1f}, {MT_FAMILY_MIXTRAL, 0.05f, 0.3f},
                 {MT_FAMILY_QWEN2_MOE, 0.05f, 0.3f}, {MT_FAMILY_OLMOE, 0.05f, 0.1f},
                 {MT_FAMILY_DEEPSEEK_V3, 0.1f, 0.1f}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int f = 0;
        while (FAMS[f] != cases[i].f) f++;
        g_init = cases[i].init;
        mt_model *m = random_model(FAMS[f], 31 + (uint64_t)f);
        g_init = 0.25f;
        const mt_config *cfg = mt_model_config(m);
        int V = cfg->vocab_size;
        int32_t tok[PROMPT + GEN];
        tokens_for(f, tok, PROMPT + GEN);
        float *ref = malloc((size_t)GEN * V * sizeof(float)), *got = malloc((size_t)GEN * V * sizeof(float));
        run_one(m, &DEF, 0, 0, tok, ref, NULL);
        mt_dap_counts cnt;
        run_one(m, &DEF, 1, cases[i].tau, tok, got, &cnt);
        double e = max_rel(got, ref, (size_t)GEN * V);
        print_message("%-12s init %.2f tau %.2f: %.2f%% of %llu blocks skipped, %llu/%llu fallbacks, "
                      "max |dlogit|/max|logit| %.2e\n",
                      mt_family_name(FAMS[f]), (double)cases[i].init, (double)cases[i].tau,
                      100.0 * (double)cnt.skipped / (double)cnt.blocks, (unsigned long long)cnt.blocks,
                      (unsigned long long)cnt.fallbacks, (unsigned long long)cnt.queries, e);
        assert_int_equal(cnt.queries, (uint64_t)GEN * cfg->n_layers * cfg->n_heads);
        assert_true(cnt.skipped > 0);
        assert_true(e < 0.1);
        free(ref);
        free(got);
        mt_model_free(m);
    }
}

/* Sinks and local window covering every block: nothing can be skipped, even at τ = 1 with no
 * floor, and the result is full attention bit for bit. With fewer, skipped per query is at
 * most the blocks outside them. */
static void sinks_and_local_kept(void **state) {
    (void)state;
    for (int f = 0; f < N_FAMS; f++) {
        mt_model *m = random_model(FAMS[f], 41 + (uint64_t)f);
        int V = mt_model_config(m)->vocab_size;
        int32_t tok[PROMPT + GEN];
        tokens_for(f, tok, PROMPT + GEN);
        float *ref = malloc((size_t)GEN * V * sizeof(float)), *got = malloc((size_t)GEN * V * sizeof(float));
        run_one(m, &DEF, 0, 0, tok, ref, NULL);
        int nb = (PROMPT + GEN + BS - 1) / BS;
        mt_dap_opts all = {.n_sink_blocks = nb / 2, .n_local_blocks = nb - nb / 2, .mass_floor = 0};
        mt_dap_counts cnt;
        run_one(m, &all, 1, 1.0f, tok, got, &cnt);
        assert_true(cnt.queries > 0);
        assert_int_equal(cnt.skipped, 0);
        assert_int_equal(cnt.fallbacks, 0);
        assert_memory_equal(ref, got, (size_t)GEN * V * sizeof(float));
        mt_dap_opts some = {.n_sink_blocks = 3, .n_local_blocks = 4, .mass_floor = 0};
        run_one(m, &some, 1, 1.0f, tok, got, &cnt);
        /* the step at position p sees p / BS + 1 blocks; 7 of them always kept */
        uint64_t cap = 0;
        const mt_config *cfg = mt_model_config(m);
        for (int k = 0; k < GEN; k++) cap += (uint64_t)((PROMPT + k) / BS + 1 - 7);
        cap *= (uint64_t)cfg->n_layers * cfg->n_heads;
        assert_true(cnt.skipped > 0);
        assert_true(cnt.skipped <= cap);
        free(ref);
        free(got);
        mt_model_free(m);
    }
}

/* A mass floor of 1: every query that would skip falls back, and that is full attention. */
static void fallback_at_floor_one(void **state) {
    (void)state;
    for (int f = 0; f < N_FAMS; f++) {
        mt_model *m = random_model(FAMS[f], 51 + (uint64_t)f);
        int V = mt_model_config(m)->vocab_size;
        int32_t tok[PROMPT + GEN];
        tokens_for(f, tok, PROMPT + GEN);
        float *ref = malloc((size_t)GEN * V * sizeof(float)), *got = malloc((size_t)GEN * V * sizeof(float));
        run_one(m, &DEF, 0, 0, tok, ref, NULL);
        mt_dap_opts o = DEF;
        o.mass_floor = 1.0f;
        mt_dap_counts cnt;
        run_one(m, &o, 1, 0.1f, tok, got, &cnt);
        assert_true(cnt.fallbacks > 0);
        assert_int_equal(cnt.skipped, 0);
        assert_memory_equal(ref, got, (size_t)GEN * V * sizeof(float));
        free(ref);
        free(got);
        mt_model_free(m);
    }
}

/* Two forks of one prompt (PROMPT is not a multiple of BS: the last prefix block is partly
 * filled and shared). Fork 1 writes first (it takes the copy of the shared block and its
 * summary), fork 2 then writes into the block in place. Each decodes alone per step, with DAP,
 * and gets exactly what an unforked sequence with the same tokens gets. */
static void fork_matches_unforked(void **state) {
    (void)state;
    for (int f = 0; f < N_FAMS; f++) {
        mt_model *m = random_model(FAMS[f], 61 + (uint64_t)f);
        int V = mt_model_config(m)->vocab_size;
        int32_t tok[PROMPT + GEN], tok2[PROMPT + GEN];
        tokens_for(f, tok, PROMPT + GEN);
        memcpy(tok2, tok, PROMPT * sizeof(int32_t));
        random_tokens(tok2 + PROMPT, GEN, 64, 777);
        float tau = 0.1f;
        float *solo1 = malloc((size_t)GEN * V * sizeof(float)), *solo2 = malloc((size_t)GEN * V * sizeof(float));
        mt_dap_counts c1;
        run_one(m, &DEF, 1, tau, tok, solo1, &c1);
        run_one(m, &DEF, 1, tau, tok2, solo2, NULL);
        assert_true(c1.skipped > 0);
        float *got1 = malloc((size_t)GEN * V * sizeof(float)), *got2 = malloc((size_t)GEN * V * sizeof(float));
        ctx c;
        ctx_init(&c, m, &DEF);
        mt_error err = {0};
        int s0, s1, s2;
        if (mt_kv_seq_open(c.p, &s0, &err) != MT_OK) fail_msg("%s", err.msg);
        prefill(&c, s0, tok, PROMPT);
        if (mt_kv_seq_fork(c.p, s0, &s1, &err) != MT_OK) fail_msg("%s", err.msg);
        if (mt_kv_seq_fork(c.p, s0, &s2, &err) != MT_OK) fail_msg("%s", err.msg);
        mt_kv_seq_close(c.p, s0);
        for (int k = 0; k < GEN; k++) {
            step(&c, 1, &s1, tok + PROMPT + k, &tau, got1 + (size_t)k * V);
            step(&c, 1, &s2, tok2 + PROMPT + k, &tau, got2 + (size_t)k * V);
        }
        ctx_free(&c);
        assert_memory_equal(solo1, got1, (size_t)GEN * V * sizeof(float));
        assert_memory_equal(solo2, got2, (size_t)GEN * V * sizeof(float));
        free(solo1);
        free(solo2);
        free(got1);
        free(got2);
        mt_model_free(m);
    }
}


/* The pruned attention itself, against mt_dap_attend (the tested building block, summaries made
 * on the fly): after a DAP step, the last layer's queries (decoder activations), keys and
 * values (the pool) and attention output (MLA: the latent output) of every head agree, and so
 * do the counts of that layer. */
static void pruned_matches_reference(void **state) {
    (void)state;
    for (int f = 0; f < N_FAMS; f++) {
        mt_model *m = random_model(FAMS[f], 71 + (uint64_t)f);
        const mt_config *cfg = mt_model_config(m);
        int V = cfg->vocab_size, L = cfg->n_layers;
        int32_t tok[PROMPT + GEN];
        tokens_for(f, tok, PROMPT + GEN);
        ctx c;
        ctx_init(&c, m, &DEF);
        mt_error err = {0};
        int seq;
        if (mt_kv_seq_open(c.p, &seq, &err) != MT_OK) fail_msg("%s", err.msg);
        prefill(&c, seq, tok, PROMPT);
        float *lg = malloc((size_t)V * sizeof(float));
        float tau = 0.1f;
        step(&c, 1, &seq, tok + PROMPT, &tau, lg);
        mt_dap_counts got;
        mt_decoder_dap_stats(c.d, &got);
        mt_dims dm;
        mt_model_dims(cfg, &dm);
        int n = PROMPT + 1, nh = dm.nh, nkv = cfg->mla ? 1 : dm.nkv, dqk = cfg->mla ? dm.kva_dim : dm.hd;
        int dv = cfg->mla ? dm.kvl : dm.hd, vo = cfg->mla ? 0 : dm.kv_dim;
        const float *q = cfg->mla ? c.d->qabs : c.d->a.q, *o = cfg->mla ? c.d->olat : c.d->a.att;
        int q_head = cfg->mla ? dm.kva_dim : dm.hd, o_head = cfg->mla ? dm.kvl : dm.hd;
        float *k = malloc((size_t)n * dqk * sizeof(float)), *v = malloc((size_t)n * dqk * sizeof(float));
        float *out = malloc((size_t)dqk * sizeof(float));
        void *scratch = malloc(mt_dap_attend_scratch(n, dqk, BS));
        mt_dap_counts want = {0};
        mt_dap_opts o_tau = DEF;
        o_tau.threshold = tau;
        double worst = 0;
        for (int h = 0; h < nh; h++) {
            int g = h / (nh / nkv);
            for (int t = 0; t < n; t++) {
                const float *row = mt_kv_pool_row(c.p, L - 1, seq, t);
                memcpy(k + (size_t)t * dqk, row + (size_t)g * (cfg->mla ? 0 : dm.hd), (size_t)dqk * sizeof(float));
                memset(v + (size_t)t * dqk, 0, (size_t)dqk * sizeof(float));
                memcpy(v + (size_t)t * dqk, row + vo + (size_t)g * (cfg->mla ? 0 : dm.hd), (size_t)dv * sizeof(float));
            }
            mt_dap_attend(q + (size_t)h * q_head, k, v, n, dqk, BS, m->attn_scale, &o_tau, &want, scratch, out);
            double e = max_rel(o + (size_t)h * o_head, out, (size_t)dv);
            if (e > worst) worst = e;
        }
        /* the step's counts cover L layers; the reference covers the last one */
        print_message("%-12s last layer: %llu of %llu blocks skipped (reference %llu of %llu), worst rel err %.2e\n",
                      mt_family_name(FAMS[f]), (unsigned long long)got.skipped, (unsigned long long)got.blocks,
                      (unsigned long long)want.skipped, (unsigned long long)want.blocks, worst);
        assert_true(worst < 1e-5);
        assert_int_equal(want.blocks * L, got.blocks);
        free(k);
        free(v);
        free(out);
        free(scratch);
        free(lg);
        ctx_free(&c);
        mt_model_free(m);
    }
}

static void bad_threshold(void **state) {
    (void)state;
    mt_model *m = random_model(MT_FAMILY_MIXTRAL, 3);
    ctx c;
    ctx_init(&c, m, &DEF);
    mt_error err = {0};
    int seq;
    if (mt_kv_seq_open(c.p, &seq, &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t t = 1, row = 0;
    float tau = 1.5f, lg[64];
    mt_decode_batch b = {.n_rows = 1, .tokens = &t, .seq = &seq, .logit_rows = &row, .n_logits = 1,
                         .dap_threshold = &tau};
    assert_int_equal(mt_decode_step(c.d, c.p, &b, lg, &err), MT_ERR_INVALID);
    assert_int_equal(mt_kv_seq_len(c.p, seq), 0);
    ctx_free(&c);
    mt_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(threshold_zero_is_today),
        cmocka_unit_test(threshold_zero_row_in_dap_step),
        cmocka_unit_test(skips_and_stays_close),
        cmocka_unit_test(sinks_and_local_kept),
        cmocka_unit_test(fallback_at_floor_one),
        cmocka_unit_test(fork_matches_unforked),
        cmocka_unit_test(pruned_matches_reference),
        cmocka_unit_test(bad_threshold),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
