/* test_config.c — config.json loading for the six MoE families against what transformers
 * 5.23 derives from the same files (tests/fixtures/configs/expected.txt, made by
 * tests/reference/make_config_fixtures.py), published model sizes, serialisation round
 * trips, presets, FLOP counts, and the error messages for bad configs. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

/* ---- helpers ---- */

static void write_text(const char *path, const char *text) {
    mt_error err = {0};
    if (mt_write_file_atomic(path, text, strlen(text), &err) != MT_OK) fail_msg("%s", err.msg);
}

/* Loads `json` from a scratch file named config.json; returns the status, fills err. */
static mt_status load_text(const char *json, mt_config *cfg, mt_error *err) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/config.json", mt_test_tmpdir("config_text"));
    write_text(path, json);
    mt_error_clear(err);
    return mt_config_load(cfg, path, err);
}

static void expect_error(const char *json, mt_status want, const char *fragment) {
    mt_config cfg;
    memset(&cfg, 0x5a, sizeof cfg);
    mt_config before = cfg;
    mt_error err = {0};
    mt_status s = load_text(json, &cfg, &err);
    if (s != want)
        fail_msg("want status %s, got %s (%s) for %s", mt_status_name(want), mt_status_name(s), err.msg, json);
    if (!strstr(err.msg, fragment)) fail_msg("message \"%s\" lacks \"%s\"", err.msg, fragment);
    if (!strstr(err.msg, "config.json")) fail_msg("message \"%s\" does not name the file", err.msg);
    /* a failed load leaves the caller's config as it was */
    assert_memory_equal(&cfg, &before, sizeof cfg);
}

static void load_fixture(const char *rel, mt_config *cfg) {
    mt_error err = {0};
    char path[4096];
    snprintf(path, sizeof path, "%s", mt_test_fixture(rel));
    if (mt_config_load(cfg, path, &err) != MT_OK) fail_msg("%s: %s", rel, err.msg);
}

/* Field-by-field equality (struct padding may differ). */
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

/* to_json, then load what it wrote: the same config must come back. */
static void assert_roundtrip(const mt_config *cfg, const char *what) {
    mt_error err = {0};
    char *json = NULL;
    if (mt_config_to_json(cfg, &json, &err) != MT_OK) fail_msg("%s: to_json: %s", what, err.msg);
    mt_config back;
    mt_status s = load_text(json, &back, &err);
    if (s != MT_OK) fail_msg("%s: reloading its own JSON: %s\n%s", what, err.msg, json);
    free(json);
    assert_config_equal(cfg, &back, what);
}

/* ---- facts computed by transformers ---- */

typedef struct fact {
    char file[128];
    char key[32];
    char vals[4096];
} fact;

static fact *read_facts(size_t *n) {
    char *text = NULL;
    size_t len = 0;
    mt_error err = {0};
    if (mt_read_file(mt_test_fixture("configs/expected.txt"), &text, &len, &err) != MT_OK) fail_msg("%s", err.msg);
    size_t cap = 64;
    fact *f = mt_xmalloc(cap * sizeof *f);
    *n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        if (*n == cap) f = mt_xrealloc(f, (cap *= 2) * sizeof *f);
        fact *x = &f[*n];
        int used = 0;
        if (sscanf(line, "%127s %31s %n", x->file, x->key, &used) != 2) fail_msg("bad line: %s", line);
        snprintf(x->vals, sizeof x->vals, "%s", line + used);
        (*n)++;
    }
    free(text);
    return f;
}

static double num(const char *s) { return strtod(s, NULL); }

static void check_fact(const mt_config *c, const fact *x) {
    const char *k = x->key, *v = x->vals;
    char what[256];
    snprintf(what, sizeof what, "%s %s", x->file, k);
    int64_t active = 0;
    int64_t total = mt_config_param_count(c, &active);
#define INT_FACT(name, expr)                                                                                           \
    if (strcmp(k, name) == 0) {                                                                                        \
        if ((double)(expr) != num(v)) fail_msg("%s: got %.17g, transformers says %s", what, (double)(expr), v);       \
        return;                                                                                                        \
    }
    INT_FACT("n_layers", c->n_layers);
    INT_FACT("n_heads", c->n_heads);
    INT_FACT("n_kv_heads", c->n_kv_heads);
    INT_FACT("qk_head_dim", mt_config_qk_head_dim(c));
    INT_FACT("v_head_dim", mt_config_v_head_dim(c));
    INT_FACT("head_dim", c->head_dim);
    INT_FACT("max_pos", c->max_position_embeddings);
    INT_FACT("tie", c->tie_word_embeddings);
    INT_FACT("bos", c->bos_token_id);
    INT_FACT("top_k", c->top_k);
    INT_FACT("sliding_window", c->sliding_window);
    INT_FACT("q_lora_rank", c->q_lora_rank);
    INT_FACT("kv_lora_rank", c->kv_lora_rank);
    INT_FACT("interleaved", c->rope_style == MT_ROPE_STYLE_INTERLEAVED);
    INT_FACT("params", total);
    INT_FACT("active", active);
    INT_FACT("rope_theta", c->rope_theta);
    INT_FACT("rope_factor", c->rope_factor);
    INT_FACT("yarn_orig", c->rope_original_max_pos);
    INT_FACT("yarn_beta_fast", c->yarn_beta_fast);
    INT_FACT("yarn_beta_slow", c->yarn_beta_slow);
    INT_FACT("yarn_mscale", c->yarn_mscale);
    INT_FACT("yarn_mscale_all_dim", c->yarn_mscale_all_dim);
    INT_FACT("rms_norm_eps", c->rms_norm_eps == (float)num(v) ? num(v) : c->rms_norm_eps);
#undef INT_FACT
    if (strcmp(k, "rope_type") == 0) {
        static const char *names[] = {"default", "linear", "yarn"};
        assert_string_equal(names[c->rope_scaling], v);
        return;
    }
    if (strcmp(k, "eos") == 0) {
        int n = 0;
        char buf[4096];
        snprintf(buf, sizeof buf, "%s", v);
        for (char *t = strtok(buf, " "); t; t = strtok(NULL, " ")) {
            if (strcmp(t, "-") == 0) break;
            if (n >= c->n_eos || c->eos_token_ids[n] != atoi(t)) fail_msg("%s: eos ids differ from %s", what, v);
            n++;
        }
        assert_int_equal(n, c->n_eos);
        return;
    }
    if (strcmp(k, "moe_layers") == 0) {
        int i = 0;
        char buf[4096];
        snprintf(buf, sizeof buf, "%s", v);
        for (char *t = strtok(buf, " "); t; t = strtok(NULL, " "), i++)
            if (c->layer_is_moe[i] != (atoi(t) != 0)) fail_msg("%s: layer %d MoE is %d, transformers built %s", what, i, c->layer_is_moe[i], t);
        assert_int_equal(i, c->n_layers);
        return;
    }
    if (strcmp(k, "flops_t") == 0) {
        int T = atoi(v);
        double want = num(strchr(v, ' ') + 1);
        double got = mt_config_flops_per_token(c, T);
        if (fabs(got - want) > 1e-9 * want) fail_msg("%s: %.1f FLOPs/token, torch counts %.1f", what, got, want);
        return;
    }
    fail_msg("%s: unknown fact", what);
}

static void test_transformers_facts(void **state) {
    (void)state;
    size_t n = 0;
    fact *f = read_facts(&n);
    assert_true(n > 400);
    char loaded[128] = "";
    mt_config cfg;
    int files = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(loaded, f[i].file) != 0) {
            char rel[256];
            snprintf(rel, sizeof rel, "configs/%s", f[i].file);
            load_fixture(rel, &cfg);
            snprintf(loaded, sizeof loaded, "%s", f[i].file);
            files++;
        }
        check_fact(&cfg, &f[i]);
    }
    assert_int_equal(files, 6 * 3 + 7);
    free(f);
}

/* The published and the transformers-5-resaved spelling of each config are one model. */
static void test_resaved_equals_published(void **state) {
    (void)state;
    const char *names[] = {"deepseek-v3", "deepseek-v2-lite", "qwen3-30b-a3b", "qwen1.5-moe-a2.7b", "mixtral-8x7b",
                           "olmoe-1b-7b"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char a[256], b[256];
        snprintf(a, sizeof a, "configs/published/%s.json", names[i]);
        snprintf(b, sizeof b, "configs/resaved/%s.json", names[i]);
        mt_config x, y;
        load_fixture(a, &x);
        load_fixture(b, &y);
        assert_config_equal(&x, &y, names[i]);
    }
}

/* Sizes the model makers publish. Totals agree within 1%. "Active" figures are rounded to
 * two digits and counted by each maker's own convention (DeepSeek leaves the input
 * embedding out; Qwen rounds 3.35 B down to 3.3 B), so those get the tolerance of their
 * rounding, 2.5%. */
static void test_published_sizes(void **state) {
    (void)state;
    const struct {
        const char *file;
        double total, active;
        bool active_without_embedding;
    } pub[] = {
        {"deepseek-v3", 671e9, 37e9, true},        {"deepseek-v2-lite", 15.7e9, 2.4e9, true},
        {"qwen3-30b-a3b", 30.5e9, 3.3e9, false},   {"qwen1.5-moe-a2.7b", 14.3e9, 2.7e9, false},
        {"mixtral-8x7b", 46.7e9, 12.9e9, false},   {"olmoe-1b-7b", 6.9e9, 1.3e9, false},
    };
    for (size_t i = 0; i < sizeof pub / sizeof *pub; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "configs/published/%s.json", pub[i].file);
        mt_config c;
        load_fixture(rel, &c);
        int64_t active;
        double total = (double)mt_config_param_count(&c, &active);
        double act = (double)active;
        if (pub[i].active_without_embedding) act -= (double)c.vocab_size * c.hidden_size;
        if (fabs(total / pub[i].total - 1) > 0.01)
            fail_msg("%s: %.4g parameters, published %.4g", pub[i].file, total, pub[i].total);
        if (fabs(act / pub[i].active - 1) > 0.025)
            fail_msg("%s: %.4g active, published %.4g", pub[i].file, act, pub[i].active);
    }
}

/* Leaves a config.json written by moetune, with moetune's parameter counts beside it, in
 * the build tree: tests/reference/check_config_export.py loads them with transformers. */
static void export_for_transformers(const char *dir, const mt_config *c, const char *name) {
    mt_error err = {0};
    char *json = NULL;
    if (mt_config_to_json(c, &json, &err) != MT_OK) fail_msg("%s", err.msg);
    char path[4300];
    snprintf(path, sizeof path, "%s/%s.json", dir, name);
    write_text(path, json);
    free(json);
    int64_t active, total = mt_config_param_count(c, &active);
    char facts[512];
    snprintf(facts, sizeof facts, "%lld %lld %.17g\n", (long long)total, (long long)active,
             mt_config_flops_per_token(c, 12));
    snprintf(path, sizeof path, "%s/%s.facts", dir, name);
    write_text(path, facts);
}

static void test_roundtrip_fixtures(void **state) {
    (void)state;
    const char *files[] = {"published/deepseek-v3", "published/deepseek-v2-lite", "published/qwen3-30b-a3b",
                           "published/qwen1.5-moe-a2.7b", "published/mixtral-8x7b", "published/olmoe-1b-7b",
                           "minimal/deepseek_v3", "minimal/deepseek_v2", "minimal/qwen3_moe", "minimal/qwen2_moe",
                           "minimal/mixtral", "minimal/olmoe", "tiny/deepseek_v3", "tiny/deepseek_v3-halfrope",
                           "tiny/deepseek_v2", "tiny/qwen3_moe", "tiny/qwen2_moe", "tiny/mixtral", "tiny/olmoe"};
    char export_dir[4096];
    snprintf(export_dir, sizeof export_dir, "%s", mt_test_tmpdir("config_export_fixtures"));
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "configs/%s.json", files[i]);
        mt_config c;
        load_fixture(rel, &c);
        assert_roundtrip(&c, files[i]);
        if (strncmp(files[i], "tiny/", 5) == 0) {
            char name[128];
            snprintf(name, sizeof name, "tiny-%s", files[i] + 5);
            export_for_transformers(export_dir, &c, name);
        }
    }
    /* what moetune wrote for the tiny fixtures (YaRN, linear RoPE, sliding window,
     * mlp_only_layers, tied embeddings, ...) after transformers loaded and saved it again */
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        if (strncmp(files[i], "tiny/", 5) != 0) continue;
        char rel[256], back_rel[256];
        snprintf(rel, sizeof rel, "configs/%s.json", files[i]);
        snprintf(back_rel, sizeof back_rel, "configs/roundtrip/tiny-%s.json", files[i] + 5);
        mt_config c, back;
        load_fixture(rel, &c);
        load_fixture(back_rel, &back);
        assert_config_equal(&c, &back, back_rel);
    }
}

/* ---- presets ---- */

static void test_presets(void **state) {
    (void)state;
    mt_error err = {0};
    char export_dir[4096];
    snprintf(export_dir, sizeof export_dir, "%s", mt_test_tmpdir("config_export"));
    for (int f = 0; f < MT_FAMILY_COUNT; f++) {
        mt_config tiny, small;
        if (mt_config_preset(&tiny, (mt_family)f, "tiny", 4096, &err) != MT_OK) fail_msg("%s", err.msg);
        if (mt_config_preset(&small, (mt_family)f, "small", 4096, &err) != MT_OK) fail_msg("%s", err.msg);
        assert_int_equal(tiny.family, f);
        assert_int_equal(tiny.vocab_size, 4096);
        assert_int_equal(mt_config_validate(&tiny, "tiny", &err), MT_OK);
        assert_roundtrip(&tiny, mt_family_name((mt_family)f));
        assert_roundtrip(&small, mt_family_name((mt_family)f));
        char name[64];
        snprintf(name, sizeof name, "%s-tiny", mt_family_name((mt_family)f));
        export_for_transformers(export_dir, &tiny, name);
        snprintf(name, sizeof name, "%s-small", mt_family_name((mt_family)f));
        export_for_transformers(export_dir, &small, name);

        int64_t at, as;
        mt_config_param_count(&tiny, &at);
        mt_config_param_count(&small, &as);
        /* small is the benchmark size: roughly ten times tiny per token */
        double ratio = (double)as / (double)at;
        if (ratio < 8 || ratio > 13) fail_msg("%s: small/tiny active ratio %.1f", mt_family_name((mt_family)f), ratio);
        assert_true(tiny.n_experts > 0 && tiny.top_k < tiny.n_experts);
    }
    /* the presets after transformers loaded and saved them again (check_config_export.py
     * --write-fixtures): moetune → transformers → moetune is lossless */
    for (int f = 0; f < MT_FAMILY_COUNT; f++) {
        for (int k = 0; k < 2; k++) {
            const char *preset = k ? "small" : "tiny";
            mt_config want, back;
            assert_int_equal(mt_config_preset(&want, (mt_family)f, preset, 4096, &err), MT_OK);
            char rel[256];
            snprintf(rel, sizeof rel, "configs/roundtrip/%s-%s.json", mt_family_name((mt_family)f), preset);
            load_fixture(rel, &back);
            assert_config_equal(&want, &back, rel);
        }
    }
    mt_config c;
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_DEEPSEEK_V3, "tiny", 4096, &err), MT_OK);
    /* moetune's quickstart base, as specified */
    assert_int_equal(c.hidden_size, 128);
    assert_int_equal(c.n_layers, 4);
    assert_int_equal(c.first_k_dense_replace, 1);
    assert_int_equal(c.n_heads, 4);
    assert_true(c.mla);
    assert_int_equal(c.q_lora_rank, 64);
    assert_int_equal(c.kv_lora_rank, 64);
    assert_int_equal(c.qk_nope_head_dim, 32);
    assert_int_equal(c.qk_rope_head_dim, 16);
    assert_int_equal(c.v_head_dim, 32);
    assert_int_equal(c.intermediate_size, 384);
    assert_int_equal(c.n_experts, 8);
    assert_int_equal(c.top_k, 2);
    assert_int_equal(c.n_group, 4);
    assert_int_equal(c.topk_group, 2);
    assert_int_equal(c.route_method, MT_ROUTE_METHOD_NOAUX_TC);
    assert_int_equal(c.scoring, MT_ROUTE_SCORING_SIGMOID);
    assert_true(c.norm_topk_prob);
    assert_int_equal(c.route_norm, MT_ROUTE_NORM_SUM_EPS);
    assert_true(c.routed_scaling_factor == 1.0f);
    assert_int_equal(c.moe_intermediate_size, 128);
    assert_int_equal(c.n_shared_experts, 1);
    assert_int_equal(c.rope_scaling, MT_ROPE_SCALING_NONE);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_true(c.rms_norm_eps == 1e-6f);
    assert_true(c.initializer_range == 0.02f);
    assert_false(c.tie_word_embeddings);
    assert_false(c.layer_is_moe[0]);
    assert_true(c.layer_is_moe[1] && c.layer_is_moe[3]);
    int64_t active;
    mt_config_param_count(&c, &active);
    assert_true(active > 1500000 && active < 2500000); /* "~2 M active" with a 4 K vocabulary */

    assert_int_equal(mt_config_preset(&c, MT_FAMILY_DEEPSEEK_V3, "small", 4096, &err), MT_OK);
    assert_int_equal(c.hidden_size, 512);
    assert_int_equal(c.n_layers, 8);
    assert_int_equal(c.n_heads, 8);
    assert_int_equal(c.n_experts, 16);
    assert_int_equal(c.top_k, 4);

    /* the features each family's preset is meant to exercise */
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_DEEPSEEK_V2, "tiny", 100, &err), MT_OK);
    assert_int_equal(c.q_lora_rank, 0);
    assert_int_equal(c.route_method, MT_ROUTE_METHOD_GROUP_LIMITED);
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_QWEN2_MOE, "tiny", 100, &err), MT_OK);
    assert_true(c.shared_intermediate_size > 0 && c.shared_expert_gate && c.attention_bias);
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_QWEN3_MOE, "tiny", 100, &err), MT_OK);
    assert_int_equal(c.qk_norm, MT_QK_NORM_HEAD);
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_OLMOE, "tiny", 100, &err), MT_OK);
    assert_int_equal(c.qk_norm, MT_QK_NORM_PROJ);
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_MIXTRAL, "tiny", 100, &err), MT_OK);
    assert_int_equal(c.n_experts, 8);
    assert_int_equal(c.top_k, 2);
    assert_int_equal(c.route_norm, MT_ROUTE_NORM_SUM);

    mt_error_clear(&err);
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_MIXTRAL, "huge", 100, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "huge"));
}

/* ---- derived values ---- */

static const char *V2_BASE = "{\"model_type\": \"deepseek_v2\", \"vocab_size\": 64, \"hidden_size\": 64, "
                             "\"intermediate_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                             "\"n_routed_experts\": 8, \"moe_intermediate_size\": 16, \"q_lora_rank\": null, "
                             "\"routed_scaling_factor\": 3.0, ";

static void test_routing_resolution(void **state) {
    (void)state;
    mt_config c;
    mt_error err = {0};
    char json[2048];
    /* DeepSeek-V2 renormalises (then does not scale) only with k > 1 and norm_topk_prob */
    snprintf(json, sizeof json, "%s\"num_experts_per_tok\": 2, \"norm_topk_prob\": true}", V2_BASE);
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_int_equal(c.route_norm, MT_ROUTE_NORM_SUM_EPS);
    assert_true(c.routed_scaling_factor == 1.0f);
    snprintf(json, sizeof json, "%s\"num_experts_per_tok\": 1, \"norm_topk_prob\": true}", V2_BASE);
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_int_equal(c.route_norm, MT_ROUTE_NORM_NONE);
    assert_true(c.routed_scaling_factor == 3.0f);
    snprintf(json, sizeof json, "%s\"num_experts_per_tok\": 2, \"norm_topk_prob\": false}", V2_BASE);
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_int_equal(c.route_norm, MT_ROUTE_NORM_NONE);
    assert_true(c.routed_scaling_factor == 3.0f);
    assert_int_equal(c.route_method, MT_ROUTE_METHOD_GREEDY);
    assert_int_equal(c.scoring, MT_ROUTE_SCORING_SOFTMAX);
    assert_int_equal(c.rope_style, MT_ROPE_STYLE_INTERLEAVED);
    assert_int_equal(c.q_lora_rank, 0); /* null: q_proj directly */
    /* absent q_lora_rank: the class default 1536 */
    snprintf(json, sizeof json,
             "{\"model_type\": \"deepseek_v2\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 64, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"n_routed_experts\": 8, "
             "\"moe_intermediate_size\": 16, \"num_experts_per_tok\": 2}");
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_int_equal(c.q_lora_rank, 1536);
    assert_int_equal(c.n_kv_heads, 4);

    /* V3 always scales, renormalising first when asked */
    mt_config v3;
    load_fixture("configs/published/deepseek-v3.json", &v3);
    assert_int_equal(v3.route_norm, MT_ROUTE_NORM_SUM_EPS);
    assert_true(v3.routed_scaling_factor == 2.5f);
    assert_int_equal(v3.route_method, MT_ROUTE_METHOD_NOAUX_TC);
    assert_int_equal(v3.scoring, MT_ROUTE_SCORING_SIGMOID);
    assert_int_equal(v3.n_group, 8);
    assert_int_equal(v3.topk_group, 4);
    assert_true(v3.mla && v3.q_lora_rank == 1536);
    assert_int_equal(v3.rope_scaling, MT_ROPE_SCALING_YARN);
    mt_config half;
    load_fixture("configs/tiny/deepseek_v3-halfrope.json", &half);
    assert_int_equal(half.route_norm, MT_ROUTE_NORM_NONE);
    assert_int_equal(half.rope_style, MT_ROPE_STYLE_HALF);
    assert_int_equal(half.q_lora_rank, 0);

    mt_config m;
    load_fixture("configs/published/mixtral-8x7b.json", &m);
    assert_int_equal(m.route_norm, MT_ROUTE_NORM_SUM);
    assert_int_equal(m.qk_norm, MT_QK_NORM_NONE);
    assert_true(m.router_aux_loss_coef == 0.02f);
    load_fixture("configs/published/olmoe-1b-7b.json", &m);
    assert_int_equal(m.route_norm, MT_ROUTE_NORM_NONE);
    assert_int_equal(m.qk_norm, MT_QK_NORM_PROJ);
    assert_int_equal(m.moe_intermediate_size, 1024);
    load_fixture("configs/published/qwen3-30b-a3b.json", &m);
    assert_int_equal(m.route_norm, MT_ROUTE_NORM_SUM);
    assert_int_equal(m.qk_norm, MT_QK_NORM_HEAD);
    assert_false(m.attention_bias);
    load_fixture("configs/published/qwen1.5-moe-a2.7b.json", &m);
    assert_int_equal(m.route_norm, MT_ROUTE_NORM_NONE);
    assert_true(m.attention_bias); /* qkv_bias defaults to true */
    assert_true(m.shared_expert_gate);
    assert_int_equal(m.shared_intermediate_size, 5632);
    assert_int_equal(m.sliding_window, 0); /* use_sliding_window false */
    assert_string_equal(m.torch_dtype, "bfloat16");
    load_fixture("configs/tiny/qwen2_moe.json", &m);
    /* decoder_sparse_step 2 and mlp_only_layers [3]: only layer 1 is MoE */
    assert_false(m.layer_is_moe[0]);
    assert_true(m.layer_is_moe[1]);
    assert_false(m.layer_is_moe[2]);
    assert_false(m.layer_is_moe[3]);
}

static const char *MIX = "{\"model_type\": \"mixtral\", \"vocab_size\": 64, \"hidden_size\": 64, "
                         "\"intermediate_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 8, "
                         "\"num_local_experts\": 4, \"num_experts_per_tok\": 2";

static void test_null_vs_absent(void **state) {
    (void)state;
    mt_config c;
    mt_error err = {0};
    char json[2048];
    /* num_key_value_heads: absent → the class default (8), null → num_attention_heads */
    snprintf(json, sizeof json, "%s}", MIX);
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_int_equal(c.n_kv_heads, 8);
    assert_true(c.rope_theta == 1e6); /* Mixtral's default_theta */
    assert_int_equal(c.bos_token_id, 1);
    snprintf(json, sizeof json,
             "{\"model_type\": \"mixtral\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 32, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_local_experts\": 4, "
             "\"num_experts_per_tok\": 2, \"num_key_value_heads\": null, \"bos_token_id\": null, "
             "\"eos_token_id\": [2, 32000], \"sliding_window\": 4096, \"head_dim\": null}");
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.n_eos, 2);
    assert_int_equal(c.eos_token_ids[1], 32000);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.head_dim, 16);
    /* eos null → none; alias num_experts for num_local_experts */
    snprintf(json, sizeof json,
             "{\"model_type\": \"mixtral\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 32, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"num_experts\": 4, "
             "\"num_experts_per_tok\": 2, \"eos_token_id\": null, \"rope_scaling\": null, "
             "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 5000.0}, \"rope_theta\": 7.0}");
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_int_equal(c.n_eos, 0);
    assert_int_equal(c.n_experts, 4);
    assert_true(c.rope_theta == 5000.0); /* the rope_parameters value wins */
    /* a non-empty rope_scaling wins over rope_parameters, with the top-level theta */
    snprintf(json, sizeof json,
             "%s, \"rope_theta\": 123.0, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 4}, "
             "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 5000.0}}",
             MIX);
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_int_equal(c.rope_scaling, MT_ROPE_SCALING_LINEAR);
    assert_true(c.rope_factor == 4.0);
    assert_true(c.rope_theta == 123.0);
    /* YaRN without factor: max_position_embeddings / original */
    snprintf(json, sizeof json,
             "%s, \"max_position_embeddings\": 8192, \"rope_parameters\": {\"rope_type\": \"yarn\", "
             "\"factor\": null, \"original_max_position_embeddings\": 2048, \"beta_fast\": null}}",
             MIX);
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_int_equal(c.rope_scaling, MT_ROPE_SCALING_YARN);
    assert_true(c.rope_factor == 4.0);
    assert_true(c.yarn_beta_fast == 32 && c.yarn_beta_slow == 1);
    assert_true(c.yarn_mscale == 0 && c.yarn_mscale_all_dim == 0);
    assert_int_equal(c.rope_original_max_pos, 2048);
    assert_roundtrip(&c, "yarn without mscale");
    /* torch_dtype (transformers 4) and dtype (5) */
    snprintf(json, sizeof json, "%s, \"torch_dtype\": \"float16\"}", MIX);
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    assert_string_equal(c.torch_dtype, "float16");
    /* a folder holding config.json loads too */
    mt_config d;
    char dir[4096], file[4200];
    snprintf(dir, sizeof dir, "%s", mt_test_tmpdir("config_dir"));
    snprintf(file, sizeof file, "%s/config.json", dir);
    write_text(file, json);
    assert_int_equal(mt_config_load(&d, dir, &err), MT_OK);
    assert_string_equal(d.torch_dtype, "float16");
}

static void test_flops_and_sizes(void **state) {
    (void)state;
    mt_config c;
    mt_error err = {0};
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_MIXTRAL, "tiny", 1000, &err), MT_OK);
    /* naive count, written out: per token 2·(lm_head + per layer (q,k,v,o + router + k
     * experts) + attention over T/2 keys) */
    int64_t H = c.hidden_size, I = c.moe_intermediate_size, hd = c.head_dim;
    int T = 100;
    double attn_w = (double)H * c.n_heads * hd * 2 + (double)H * c.n_kv_heads * hd * 2;
    double layer = attn_w + (double)c.n_experts * H + c.top_k * 3.0 * H * I + (T / 2.0) * c.n_heads * 2.0 * hd;
    double want = 2 * (1000.0 * H + c.n_layers * layer);
    assert_true(fabs(mt_config_flops_per_token(&c, T) - want) < 1e-6 * want);
    /* a sliding window of W < T caps the average keys at W − W²/(2T) */
    c.sliding_window = 20;
    double keys = 20 - 400.0 / (2 * T);
    double layer_w = attn_w + (double)c.n_experts * H + c.top_k * 3.0 * H * I + keys * c.n_heads * 2.0 * hd;
    double want_w = 2 * (1000.0 * H + c.n_layers * layer_w);
    assert_true(fabs(mt_config_flops_per_token(&c, T) - want_w) < 1e-6 * want_w);
    /* FLOPs grow linearly in T through attention alone */
    c.sliding_window = 0;
    double f1 = mt_config_flops_per_token(&c, 1000), f2 = mt_config_flops_per_token(&c, 2000);
    assert_true(fabs((f2 - f1) - 2.0 * 500 * c.n_heads * 2 * hd * c.n_layers) < 1e-6 * f2);
    /* tying the embeddings removes one V×H matrix from the count, not from the FLOPs */
    int64_t a1, a2;
    int64_t t1 = mt_config_param_count(&c, &a1);
    double fl = mt_config_flops_per_token(&c, 8);
    c.tie_word_embeddings = true;
    int64_t t2 = mt_config_param_count(&c, &a2);
    assert_int_equal(t1 - t2, 1000 * H);
    assert_int_equal(a1 - a2, 1000 * H);
    assert_true(mt_config_flops_per_token(&c, 8) == fl);
    assert_int_equal(mt_config_qk_head_dim(&c), hd);
    mt_config v;
    load_fixture("configs/published/deepseek-v3.json", &v);
    assert_int_equal(mt_config_qk_head_dim(&v), 192);
    assert_int_equal(mt_config_v_head_dim(&v), 128);
}

/* ---- names and errors ---- */

static void test_family_names(void **state) {
    (void)state;
    mt_error err = {0};
    for (int f = 0; f < MT_FAMILY_COUNT; f++) {
        mt_family g;
        assert_int_equal(mt_family_from_name(mt_family_name((mt_family)f), &g, &err), MT_OK);
        assert_int_equal(g, f);
    }
    assert_string_equal(mt_family_name(MT_FAMILY_DEEPSEEK_V3), "deepseek_v3");
    assert_string_equal(mt_family_name(MT_FAMILY_OLMOE), "olmoe");
    mt_family g;
    assert_int_equal(mt_family_from_name("llama", &g, &err), MT_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "llama"));
    assert_non_null(strstr(err.msg, "deepseek_v3, deepseek_v2, qwen3_moe, qwen2_moe, mixtral, olmoe"));
}

static void test_errors(void **state) {
    (void)state;
    char json[2048];
    expect_error("{\"model_type\": \"llama\", \"hidden_size\": 8}", MT_ERR_UNSUPPORTED,
                 "model_type \"llama\" is not supported (supported: deepseek_v3, deepseek_v2, qwen3_moe, qwen2_moe, "
                 "mixtral, olmoe)");
    expect_error("{\"hidden_size\": 8}", MT_ERR_INVALID, "\"model_type\" is missing");
    snprintf(json, sizeof json,
             "{\"model_type\": \"mixtral\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 32, "
             "\"num_hidden_layers\": \"2\", \"num_attention_heads\": 8, \"num_local_experts\": 4, "
             "\"num_experts_per_tok\": 2}");
    expect_error(json, MT_ERR_INVALID, "config.json: \"num_hidden_layers\" must be an integer, got string");
    snprintf(json, sizeof json,
             "{\"model_type\": \"mixtral\", \"vocab_size\": 64, \"hidden_size\": 64.5, \"intermediate_size\": 32, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"num_local_experts\": 4, "
             "\"num_experts_per_tok\": 2}");
    expect_error(json, MT_ERR_INVALID, "\"hidden_size\" must be an integer, got 64.5");
    snprintf(json, sizeof json,
             "{\"model_type\": \"mixtral\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 32, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"num_experts_per_tok\": 2}");
    expect_error(json, MT_ERR_INVALID, "required key \"num_local_experts\" is missing");
    snprintf(json, sizeof json, "%s, \"rms_norm_eps\": \"small\"}", MIX);
    expect_error(json, MT_ERR_INVALID, "\"rms_norm_eps\" must be a number, got string");
    snprintf(json, sizeof json, "%s, \"tie_word_embeddings\": 1}", MIX);
    expect_error(json, MT_ERR_INVALID, "\"tie_word_embeddings\" must be true or false, got 1");
    snprintf(json, sizeof json, "%s, \"eos_token_id\": [2, \"x\"]}", MIX);
    expect_error(json, MT_ERR_INVALID, "\"eos_token_id\" must be an integer, got string");
    snprintf(json, sizeof json, "%s, \"eos_token_id\": [1,2,3,4,5,6,7,8,9]}", MIX);
    expect_error(json, MT_ERR_UNSUPPORTED, "more than 8 ids");
    snprintf(json, sizeof json, "%s, \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2}}", MIX);
    expect_error(json, MT_ERR_UNSUPPORTED, "rope type \"dynamic\" is not supported");
    snprintf(json, sizeof json, "%s, \"rope_parameters\": \"yarn\"}", MIX);
    expect_error(json, MT_ERR_INVALID, "\"rope_parameters\" must be an object or null, got string");
    snprintf(json, sizeof json, "%s, \"hidden_act\": \"gelu\"}", MIX);
    expect_error(json, MT_ERR_UNSUPPORTED, "\"hidden_act\": \"gelu\" is not supported");
    snprintf(json, sizeof json,
             "{\"model_type\": \"mixtral\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 32, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"num_local_experts\": 4, "
             "\"num_experts_per_tok\": 5}");
    expect_error(json, MT_ERR_INVALID, "num_experts_per_tok 5 must be in 1..4");
    snprintf(json, sizeof json,
             "{\"model_type\": \"mixtral\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 32, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"num_key_value_heads\": 3, "
             "\"num_local_experts\": 4, \"num_experts_per_tok\": 2}");
    expect_error(json, MT_ERR_INVALID, "num_key_value_heads 3 must divide num_attention_heads 8");
    snprintf(json, sizeof json,
             "{\"model_type\": \"mixtral\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 32, "
             "\"num_hidden_layers\": 300, \"num_attention_heads\": 8, \"num_local_experts\": 4, "
             "\"num_experts_per_tok\": 2}");
    expect_error(json, MT_ERR_UNSUPPORTED, "\"num_hidden_layers\" 300 exceeds");
    snprintf(json, sizeof json, "%s\"num_experts_per_tok\": 2, \"topk_method\": \"noaux_tc\"}", V2_BASE);
    expect_error(json, MT_ERR_UNSUPPORTED, "\"topk_method\": \"noaux_tc\" is not supported for deepseek_v2");
    expect_error("{\"model_type\": \"deepseek_v3\", \"vocab_size\": 64, \"hidden_size\": 256, "
                 "\"intermediate_size\": 64, \"num_hidden_layers\": 5, \"num_attention_heads\": 128, "
                 "\"n_routed_experts\": 16, \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 32, "
                 "\"topk_method\": \"greedy\"}",
                 MT_ERR_UNSUPPORTED, "\"topk_method\": \"greedy\" is not supported");
    expect_error("{\"model_type\": \"deepseek_v3\", \"vocab_size\": 64, \"hidden_size\": 256, "
                 "\"intermediate_size\": 64, \"num_hidden_layers\": 5, \"num_attention_heads\": 8, "
                 "\"num_key_value_heads\": 4, \"n_routed_experts\": 16, \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 32}",
                 MT_ERR_INVALID, "MLA needs num_key_value_heads == num_attention_heads");
    expect_error("{\"model_type\": \"qwen2_moe\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 64, "
                 "\"num_hidden_layers\": 3, \"num_attention_heads\": 16, \"num_experts\": 8, "
                 "\"num_experts_per_tok\": 2, \"moe_intermediate_size\": 16, \"use_sliding_window\": true}",
                 MT_ERR_UNSUPPORTED, "\"use_sliding_window\": true is not supported for qwen2_moe");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 32, "
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_experts\": 8, "
                 "\"num_experts_per_tok\": 2, \"clip_qkv\": 8.0}",
                 MT_ERR_UNSUPPORTED, "\"clip_qkv\" is not supported");
    expect_error("{\"model_type\": \"qwen3_moe\", \"vocab_size\": 64, \"hidden_size\": 64, \"intermediate_size\": 64, "
                 "\"num_hidden_layers\": 3, \"num_attention_heads\": 8, \"num_experts\": 8, "
                 "\"num_experts_per_tok\": 2, \"moe_intermediate_size\": 16, \"decoder_sparse_step\": 0}",
                 MT_ERR_INVALID, "decoder_sparse_step must be >= 1");
    expect_error("{\"model_type\": \"mixtral\",\n \"vocab_size\": 64,\n \"hidden_size\": ,\n}", MT_ERR_FORMAT,
                 "config.json:3: not valid JSON");
    expect_error("[1, 2]", MT_ERR_FORMAT, "must hold a JSON object");

    mt_config c;
    mt_error err = {0};
    assert_int_equal(mt_config_load(&c, "/nonexistent/config.json", &err), MT_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/config.json"));

    /* validation of hand-made configs, and to_json refusing them */
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_QWEN3_MOE, "tiny", 100, &err), MT_OK);
    c.top_k = c.n_experts + 1;
    mt_error_clear(&err);
    assert_int_equal(mt_config_validate(&c, "mine", &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "mine: num_experts_per_tok"));
    char *json_out = (char *)1;
    mt_error_clear(&err);
    assert_int_equal(mt_config_to_json(&c, &json_out, &err), MT_ERR_INVALID);
    assert_null(json_out);
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_DEEPSEEK_V3, "tiny", 100, &err), MT_OK);
    c.layer_is_moe[0] = true; /* first_k_dense_replace says dense */
    mt_error_clear(&err);
    assert_int_equal(mt_config_validate(&c, "mine", &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "layer 0"));
    assert_int_equal(mt_config_preset(&c, MT_FAMILY_DEEPSEEK_V3, "tiny", 100, &err), MT_OK);
    c.route_norm = MT_ROUTE_NORM_SUM;
    mt_error_clear(&err);
    assert_int_equal(mt_config_validate(&c, "mine", &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "route_norm"));
}

/* Inputs fuzz/fuzz_config.c found (kept in fuzz/regressions/fuzz_config/): each loaded, then
 * broke mt_config_to_json or mt_config_param_count. */
static void test_fuzz_regressions(void **state) {
    (void)state;
    char json[2048];
    /* a dtype is written back into config.json unescaped: one that is not a dtype name (here
     * with a quote, and with a non-ASCII letter) tripped an assertion there */
    snprintf(json, sizeof json, "%s, \"torch_dtype\": \"bflo\\\"at16\"}", MIX);
    expect_error(json, MT_ERR_INVALID, "is not a torch dtype name");
    snprintf(json, sizeof json, "%s, \"dtype\": \"float\u00e916\"}", MIX);
    expect_error(json, MT_ERR_INVALID, "is not a torch dtype name");
    snprintf(json, sizeof json, "%s, \"dtype\": \"torch.bfloat16\"}", MIX);
    mt_config c;
    mt_error err = {0};
    assert_int_equal(load_text(json, &c, &err), MT_OK);
    /* sizes whose parameter count overflowed int64 (signed overflow, undefined behaviour) */
    expect_error("{\"model_type\": \"qwen2_moe\", \"vocab_size\": 151936, \"hidden_size\": 337855176, "
                 "\"intermediate_size\": 5632, \"num_hidden_layers\": 96, \"num_attention_heads\": 16, "
                 "\"num_experts\": 64, \"num_experts_per_tok\": 4, \"moe_intermediate_size\": 1408, "
                 "\"shared_expert_intermediate_size\": 5632}",
                 MT_ERR_INVALID, "parameters (at most 2^50)");
    /* the bound is far above real models: DeepSeek-V3's 671 billion count exactly */
    mt_config v3;
    load_fixture("configs/published/deepseek-v3.json", &v3);
    int64_t active, total = mt_config_param_count(&v3, &active);
    assert_true(total > 600000000000LL && total < 700000000000LL);
    assert_true(active > 30000000000LL && active < 45000000000LL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transformers_facts), cmocka_unit_test(test_resaved_equals_published),
        cmocka_unit_test(test_published_sizes),    cmocka_unit_test(test_roundtrip_fixtures),
        cmocka_unit_test(test_presets),            cmocka_unit_test(test_routing_resolution),
        cmocka_unit_test(test_null_vs_absent),     cmocka_unit_test(test_flops_and_sizes),
        cmocka_unit_test(test_family_names),       cmocka_unit_test(test_errors),
        cmocka_unit_test(test_fuzz_regressions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
