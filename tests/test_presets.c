/* test_presets.c — the published presets of `moetune init` (olmoe-1b-7b, deepseek-v2-lite)
 * against the published config.json files (tests/fixtures/configs/published, as the model
 * makers ship them) read by the loader, their parameter counts against a count written out
 * here from the published numbers, the streamed writer against init + save (byte for byte),
 * its fast generator's distribution and thread independence, a scaled-down instance of each
 * preset written, loaded and run, and the errors. No real-size model is written here:
 * bench/realsize.sh does that. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

static mt_backend *g_be;

static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    if (mt_backend_init(&g_be, MT_BACKEND_CPU, 2, &err) != MT_OK) fail_msg("%s", err.msg);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be);
    return 0;
}

static void load_fixture(const char *rel, mt_config *cfg) {
    mt_error err = {0};
    char path[4096];
    snprintf(path, sizeof path, "%s", mt_test_fixture(rel));
    if (mt_config_load(cfg, path, &err) != MT_OK) fail_msg("%s: %s", rel, err.msg);
}

static void assert_config_equal(const mt_config *a, const mt_config *b, const char *what) {
#define EQ(f)                                                                                                          \
    do {                                                                                                               \
        if (a->f != b->f) fail_msg("%s: field " #f " differs: %.17g vs %.17g", what, (double)a->f, (double)b->f);     \
    } while (0)
    EQ(family); EQ(vocab_size); EQ(hidden_size); EQ(n_layers); EQ(n_heads); EQ(n_kv_heads); EQ(head_dim);
    EQ(intermediate_size); EQ(rms_norm_eps); EQ(rope_theta); EQ(max_position_embeddings); EQ(sliding_window);
    EQ(tie_word_embeddings); EQ(attention_bias); EQ(qk_norm); EQ(rope_style); EQ(initializer_range);
    EQ(rope_scaling); EQ(rope_factor); EQ(rope_original_max_pos); EQ(yarn_beta_fast); EQ(yarn_beta_slow);
    EQ(yarn_mscale); EQ(yarn_mscale_all_dim); EQ(n_experts); EQ(top_k); EQ(moe_intermediate_size);
    EQ(n_shared_experts); EQ(shared_intermediate_size); EQ(shared_expert_gate); EQ(scoring); EQ(route_method);
    EQ(n_group); EQ(topk_group); EQ(norm_topk_prob); EQ(route_norm); EQ(routed_scaling_factor);
    EQ(first_k_dense_replace); EQ(moe_layer_freq); EQ(decoder_sparse_step); EQ(router_aux_loss_coef);
    EQ(router_jitter_noise); EQ(seq_aux); EQ(mla); EQ(q_lora_rank); EQ(kv_lora_rank); EQ(qk_nope_head_dim);
    EQ(qk_rope_head_dim); EQ(v_head_dim); EQ(bos_token_id); EQ(n_eos);
    for (int i = 0; i < a->n_eos; i++) EQ(eos_token_ids[i]);
    for (int i = 0; i < MT_MAX_LAYERS; i++) EQ(layer_is_moe[i]);
#undef EQ
    if (strcmp(a->torch_dtype, b->torch_dtype) != 0)
        fail_msg("%s: torch_dtype %s vs %s", what, a->torch_dtype, b->torch_dtype);
}

static void preset_ok(mt_config *c, mt_family f, const char *name, int vocab) {
    mt_error err = {0};
    if (mt_config_preset(c, f, name, vocab, &err) != MT_OK) fail_msg("%s: %s", name, err.msg);
}

/* The preset is the config the published config.json loads as; bos/eos are the tokenizer's
 * (set by init), so they are taken from the file for the comparison. */
static void test_equal_published_files(void **state) {
    (void)state;
    const struct {
        const char *preset, *file;
        mt_family family;
    } cases[] = {{"olmoe-1b-7b", "configs/published/olmoe-1b-7b.json", MT_FAMILY_OLMOE},
                 {"deepseek-v2-lite", "configs/published/deepseek-v2-lite.json", MT_FAMILY_DEEPSEEK_V2}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mt_family f;
        assert_true(mt_config_preset_family(cases[i].preset, &f));
        assert_int_equal(f, cases[i].family);
        mt_config pub, pre;
        load_fixture(cases[i].file, &pub);
        preset_ok(&pre, f, cases[i].preset, 258);
        pre.bos_token_id = pub.bos_token_id;
        pre.n_eos = pub.n_eos;
        memcpy(pre.eos_token_ids, pub.eos_token_ids, sizeof pre.eos_token_ids);
        assert_config_equal(&pre, &pub, cases[i].preset);
        /* and the config.json init writes loads back as the same. It stays in the build
         * tree with moetune's counts beside it: tests/reference/check_init_presets.sh builds
         * it in transformers on the meta device and counts its parameters. */
        mt_error err = {0};
        char *json = NULL;
        if (mt_config_to_json(&pre, &json, &err) != MT_OK) fail_msg("%s", err.msg);
        char sub[128], dir[4096], path[4200];
        snprintf(sub, sizeof sub, "presets_json/%s", cases[i].preset);
        snprintf(dir, sizeof dir, "%s", mt_test_tmpdir(sub));
        snprintf(path, sizeof path, "%s/config.json", dir);
        if (mt_write_file_atomic(path, json, strlen(json), &err) != MT_OK) fail_msg("%s", err.msg);
        free(json);
        mt_config back;
        if (mt_config_load(&back, path, &err) != MT_OK) fail_msg("%s", err.msg);
        assert_config_equal(&pre, &back, cases[i].preset);
        int64_t active, total = mt_config_param_count(&pre, &active);
        char counts[128];
        snprintf(counts, sizeof counts, "%lld %lld\n", (long long)total, (long long)active);
        snprintf(path, sizeof path, "%s/moetune_counts.txt", dir);
        if (mt_write_file_atomic(path, counts, strlen(counts), &err) != MT_OK) fail_msg("%s", err.msg);
    }
    assert_false(mt_config_preset_family("tiny", NULL));
    assert_false(mt_config_preset_family("small", NULL));
}

/* Parameter counts written out from the published numbers alone (not from the mt_config). */
static void test_param_counts(void **state) {
    (void)state;
    mt_config c;
    int64_t active;

    /* OLMoE-1B-7B: per layer two norms, q/k/v/o 2048x2048, q_norm and k_norm over the whole
     * 2048-wide projections, a 64x2048 router and 64 experts of 3 x 2048x1024 (8 active);
     * embeddings and an untied head of 50304x2048, the final norm. */
    {
        double H = 2048, V = 50304, L = 16, E = 64, K = 8, I = 1024;
        double expert = 3 * H * I, layer_fixed = 2 * H + 4 * H * H + 2 * H + E * H;
        double total = 2 * V * H + H + L * (layer_fixed + E * expert);
        double act = 2 * V * H + H + L * (layer_fixed + K * expert);
        preset_ok(&c, MT_FAMILY_OLMOE, "olmoe-1b-7b", 50280);
        assert_int_equal(mt_config_param_count(&c, &active), (int64_t)total);
        assert_int_equal(active, (int64_t)act);
        /* the published "6.9 B total, 1.3 B active" (the model card's 6.92 B / 1.28 B) */
        assert_true(fabs(total / 6.92e9 - 1) < 0.001);
        assert_true(fabs(act / 1.28e9 - 1) < 0.002);
    }
    /* DeepSeek-V2-Lite: MLA per layer (q_proj 2048 -> 16x192, kv_a 2048 -> 512+64, its norm,
     * kv_b 512 -> 16x(128+128), o_proj 16x128 -> 2048), two norms; layer 0 a dense MLP of
     * 3 x 2048x10944; layers 1..26 a 64x2048 router, 2 shared experts and 64 routed ones of
     * 3 x 2048x1408 (6 active). DeepSeek's "2.4 B active" leaves the input embedding out. */
    {
        double H = 2048, V = 102400, L = 27, E = 64, K = 6, Im = 1408, I = 10944, nh = 16;
        double attn = H * nh * 192 + H * (512 + 64) + 512 + 512 * nh * 256 + nh * 128 * H + 2 * H;
        double expert = 3 * H * Im, moe_fixed = E * H + 2 * expert;
        double total = 2 * V * H + H + L * attn + 3 * H * I + (L - 1) * (moe_fixed + E * expert);
        double act = 2 * V * H + H + L * attn + 3 * H * I + (L - 1) * (moe_fixed + K * expert);
        preset_ok(&c, MT_FAMILY_DEEPSEEK_V2, "deepseek-v2-lite", 258);
        assert_int_equal(mt_config_param_count(&c, &active), (int64_t)total);
        assert_int_equal(active, (int64_t)act);
        assert_true(fabs(total / 15.71e9 - 1) < 0.001);
        assert_true(fabs((act - V * H) / 2.45e9 - 1) < 0.005);
        assert_false(c.layer_is_moe[0]);
        for (int l = 1; l < 27; l++) assert_true(c.layer_is_moe[l]);
    }
}

static void test_errors(void **state) {
    (void)state;
    mt_config c;
    mt_error err = {0};
    assert_int_not_equal(mt_config_preset(&c, MT_FAMILY_MIXTRAL, "olmoe-1b-7b", 258, &err), MT_OK);
    assert_non_null(strstr(err.msg, "family olmoe"));
    mt_error_clear(&err);
    /* a tokenizer with more ids than the embedding table has rows */
    assert_int_not_equal(mt_config_preset(&c, MT_FAMILY_OLMOE, "olmoe-1b-7b", 50305, &err), MT_OK);
    assert_non_null(strstr(err.msg, "50304"));
    mt_error_clear(&err);
    assert_int_not_equal(mt_config_preset(&c, MT_FAMILY_OLMOE, "olmoe-7b", 258, &err), MT_OK);
    assert_non_null(strstr(err.msg, "deepseek-v2-lite"));
    /* the CLI says which family, and writes nothing */
    char *out = NULL;
    const char *dir = mt_test_tmpdir("presets_cli");
    int rc = mt_test_run_cli(&out, "init --preset deepseek-v2-lite --family olmoe '%s/m'", dir);
    assert_int_not_equal(rc, 0);
    if (!strstr(out, "family deepseek_v2")) fail_msg("%s", out);
    free(out);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/m/model.safetensors", dir);
    assert_false(mt_path_exists(probe));
}

static void read_all(const char *path, char **text, size_t *len) {
    mt_error err = {0};
    if (mt_read_file(path, text, len, &err) != MT_OK) fail_msg("%s", err.msg);
}

static void assert_same_file(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    read_all(a, &x, &nx);
    read_all(b, &y, &ny);
    if (nx != ny || memcmp(x, y, nx) != 0) fail_msg("%s and %s differ (%zu and %zu bytes)", a, b, nx, ny);
    free(x);
    free(y);
}

/* Exact mode writes what init_random + save write, for every family's layout and both dtypes
 * (deepseek_v3 has the fp32 routing bias). */
static void test_stream_equals_init_save(void **state) {
    (void)state;
    const struct {
        mt_family f;
        const char *preset;
        mt_dtype dt;
    } cases[] = {{MT_FAMILY_DEEPSEEK_V3, "tiny", MT_DTYPE_BF16},
                 {MT_FAMILY_QWEN2_MOE, "tiny", MT_DTYPE_F32},
                 {MT_FAMILY_OLMOE, "small", MT_DTYPE_BF16}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mt_error err = {0};
        mt_config c;
        preset_ok(&c, cases[i].f, cases[i].preset, 258);
        c.bos_token_id = 256;
        c.n_eos = 1;
        c.eos_token_ids[0] = 257;
        char a[4096], b[4096], fa[4200], fb[4200];
        snprintf(a, sizeof a, "%s", mt_test_tmpdir("presets_saved"));
        snprintf(b, sizeof b, "%s", mt_test_tmpdir("presets_streamed"));
        mt_model *m = NULL;
        if (mt_model_init_random(&m, &c, 7, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
        if (mt_model_save(m, a, cases[i].dt, 0, &err) != MT_OK) fail_msg("%s", err.msg);
        mt_model_free(m);
        if (mt_model_write_random(&c, 7, cases[i].dt, false, 2, b, &err) != MT_OK) fail_msg("%s", err.msg);
        const char *files[] = {"model.safetensors", "config.json", "generation_config.json"};
        for (int k = 0; k < 3; k++) {
            snprintf(fa, sizeof fa, "%s/%s", a, files[k]);
            snprintf(fb, sizeof fb, "%s/%s", b, files[k]);
            assert_same_file(fa, fb);
        }
    }
}

/* A preset's structure at toy widths: every feature of the published config kept (OLMoE's
 * projection-wide QK-norm; MLA without a q LoRA, YaRN, a dense first layer and shared
 * experts), only the widths and counts cut. */
static void scaled_down(mt_config *c, const char *preset) {
    mt_family f;
    assert_true(mt_config_preset_family(preset, &f));
    preset_ok(c, f, preset, 258);
    c->vocab_size = 4100; /* 8 chunks of the generator's, the last one partial */
    c->hidden_size = 128;
    c->n_layers = 3;
    c->n_heads = c->n_kv_heads = 4;
    c->n_experts = 8;
    c->top_k = f == MT_FAMILY_OLMOE ? 4 : 3;
    c->moe_intermediate_size = 48;
    if (f == MT_FAMILY_OLMOE) {
        c->head_dim = 32;
        c->intermediate_size = c->moe_intermediate_size;
    } else {
        c->intermediate_size = 160;
        c->kv_lora_rank = 32;
        c->qk_nope_head_dim = 16;
        c->qk_rope_head_dim = c->head_dim = 8;
        c->v_head_dim = 16;
        c->max_position_embeddings = 4096;
        c->rope_original_max_pos = 256;
    }
    c->bos_token_id = 256;
    c->n_eos = 1;
    c->eos_token_ids[0] = 257;
    for (int l = 0; l < MT_MAX_LAYERS; l++)
        c->layer_is_moe[l] = l < c->n_layers && (f == MT_FAMILY_OLMOE || l >= c->first_k_dense_replace);
    mt_error err = {0};
    if (mt_config_validate(c, preset, &err) != MT_OK) fail_msg("%s: %s", preset, err.msg);
}

/* The fast generator: the same bytes whatever the thread count; mean 0 and standard deviation
 * initializer_range, no value beyond the Irwin-Hall bound of sqrt(12) sigma; the model loads
 * with bf16 linear weights, and a forward over random tokens gives a loss near ln V (random
 * weights of std 0.02 make near-uniform predictions). */
static void test_scaled_down_instances(void **state) {
    (void)state;
    const char *presets[] = {"olmoe-1b-7b", "deepseek-v2-lite"};
    for (size_t i = 0; i < 2; i++) {
        mt_error err = {0};
        mt_config c;
        scaled_down(&c, presets[i]);
        char a[4096], b[4096], fa[4200], fb[4200];
        snprintf(a, sizeof a, "%s", mt_test_tmpdir("presets_fast1"));
        snprintf(b, sizeof b, "%s", mt_test_tmpdir("presets_fast2"));
        if (mt_model_write_random(&c, 11, MT_DTYPE_BF16, true, 1, a, &err) != MT_OK) fail_msg("%s", err.msg);
        if (mt_model_write_random(&c, 11, MT_DTYPE_BF16, true, 2, b, &err) != MT_OK) fail_msg("%s", err.msg);
        snprintf(fa, sizeof fa, "%s/model.safetensors", a);
        snprintf(fb, sizeof fb, "%s/model.safetensors", b);
        assert_same_file(fa, fb);

        mt_model *m = NULL;
        if (mt_model_load(&m, b, g_be, &err) != MT_OK) fail_msg("%s: %s", presets[i], err.msg);
        const mt_config *mc = mt_model_config(m);
        assert_int_equal(mc->family, c.family);
        assert_int_equal(mc->rope_scaling, c.rope_scaling);

        /* the embedding (converted to fp32 at load): 524800 draws */
        mt_param *emb = mt_model_find_param(m, "model.embed_tokens.weight");
        assert_non_null(emb);
        double s = 0, s2 = 0, mx = 0;
        for (int64_t j = 0; j < emb->numel; j++) {
            double x = emb->data[j];
            s += x;
            s2 += x * x;
            if (fabs(x) > mx) mx = fabs(x);
        }
        double mean = s / (double)emb->numel, sd = sqrt(s2 / (double)emb->numel - mean * mean);
        if (fabs(mean) > 2e-4 || fabs(sd / 0.02 - 1) > 0.01 || mx > 0.02 * sqrt(12.0) * 1.004 || mx < 0.02 * 3)
            fail_msg("%s: embedding mean %g, std %g, max |x| %g", presets[i], mean, sd, mx);
        /* a linear weight stays bf16 from the mapping */
        mt_param *o = mt_model_find_param(m, "model.layers.1.self_attn.o_proj.weight");
        assert_non_null(o);
        assert_int_equal(o->dtype, MT_DTYPE_BF16);

        enum { B = 2, T = 12 };
        int32_t tokens[B * T], targets[B * T];
        mt_rng r;
        mt_rng_seed(&r, 5);
        for (int j = 0; j < B * T; j++) tokens[j] = (int32_t)mt_rng_below(&r, 258);
        for (int j = 0; j < B * T; j++) targets[j] = (j + 1) % T ? tokens[j + 1] : MT_IGNORE_INDEX;
        mt_workspace *ws = NULL;
        if (mt_workspace_init(&ws, m, B, T, false, 0, &err) != MT_OK) fail_msg("%s", err.msg);
        mt_batch batch = {.B = B, .T = T, .tokens = tokens, .targets = targets};
        mt_forward_opts fo = {0};
        mt_forward_result res = {0};
        if (mt_model_forward(m, ws, &batch, &fo, &res, &err) != MT_OK) fail_msg("%s: %s", presets[i], err.msg);
        double loss = res.loss_sum / (double)res.n_tokens;
        assert_int_equal(res.n_tokens, B * (T - 1));
        if (!(fabs(loss - log(4100.0)) < 0.1)) fail_msg("%s: loss %g, ln V %g", presets[i], loss, log(4100.0));
        mt_workspace_free(ws);
        mt_model_free(m);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal_published_files),   cmocka_unit_test(test_param_counts),
        cmocka_unit_test(test_errors),                  cmocka_unit_test(test_stream_equals_init_save),
        cmocka_unit_test(test_scaled_down_instances),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
