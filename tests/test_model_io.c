/* test_model_io.c — the model's tables and files: save → load round trips (f32 exact, bf16
 * within bf16 rounding, sharded, tied embeddings, the stacked-expert layout), the content
 * hash, deterministic initialisation, the parameter and linear tables, bad input (missing or
 * misshapen tensors, unknown model_type, out-of-range batches) and sampling. */
#include "model_testlib.h"

#include <math.h>

static mt_backend *g_be;

static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    return mt_backend_init(&g_be, MT_BACKEND_CPU, 1, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be);
    return 0;
}

static mt_model *random_model(mt_family f, bool tie, uint64_t seed) {
    mt_error err = {0};
    mt_config cfg;
    if (mt_config_preset(&cfg, f, "tiny", 64, &err) != MT_OK) fail_msg("%s", err.msg);
    cfg.tie_word_embeddings = tie;
    cfg.bos_token_id = 1;
    cfg.n_eos = 1;
    cfg.eos_token_ids[0] = 2;
    mt_model *m = NULL;
    if (mt_model_init_random(&m, &cfg, seed, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    return m;
}

static float *logits_of(mt_model *m) {
    mt_error err = {0};
    int V = mt_model_config(m)->vocab_size;
    mt_workspace *ws = NULL;
    if (mt_workspace_init(&ws, m, 1, 8, false, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t tokens[8];
    random_tokens(tokens, 8, V, 3);
    float *out = mt_xmalloc((size_t)8 * V * sizeof(float));
    mt_batch b = {.B = 1, .T = 8, .tokens = tokens};
    mt_forward_opts o = {.logits_out = out};
    if (mt_model_forward(m, ws, &b, &o, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_workspace_free(ws);
    return out;
}

static mt_model *save_and_load(mt_model *m, const char *dir, mt_dtype dt, size_t shard) {
    mt_error err = {0};
    if (mt_model_save(m, dir, dt, shard, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_model *back = NULL;
    if (mt_model_load(&back, dir, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    return back;
}

static void roundtrip_every_family(void **state) {
    (void)state;
    for (int f = 0; f < MT_FAMILY_COUNT; f++) {
        for (int tie = 0; tie < 2; tie++) {
            mt_model *m = random_model((mt_family)f, tie, 10 + (uint64_t)f);
            char h1[65], h2[65];
            mt_model_content_hash(m, h1);
            char name[64];
            snprintf(name, sizeof name, "model_io_%s_%d", mt_family_name((mt_family)f), tie);
            const char *dir = mt_test_tmpdir(name);
            mt_model *back = save_and_load(m, dir, MT_DTYPE_F32, 0);
            mt_model_content_hash(back, h2);
            assert_string_equal(h1, h2);
            assert_int_equal(mt_model_param_count(back), mt_model_param_count(m));
            for (int i = 0; i < mt_model_param_count(m); i++) {
                mt_param *a = mt_model_param(m, i), *b = mt_model_param(back, i);
                assert_string_equal(a->name, b->name);
                assert_memory_equal(a->data, b->data, (size_t)a->numel * sizeof(float));
            }
            const mt_config *c1 = mt_model_config(m), *c2 = mt_model_config(back);
            assert_int_equal(c1->family, c2->family);
            assert_int_equal(c1->hidden_size, c2->hidden_size);
            assert_int_equal(c1->n_experts, c2->n_experts);
            assert_int_equal(c1->tie_word_embeddings, c2->tie_word_embeddings);
            assert_int_equal(c2->n_eos, 1);
            assert_int_equal(c2->eos_token_ids[0], 2);
            assert_memory_equal(c1->layer_is_moe, c2->layer_is_moe, sizeof c1->layer_is_moe);
            /* tied models store no lm_head.weight, as transformers' save_pretrained */
            assert_true((mt_model_find_param(back, "lm_head.weight") == NULL) == (bool)tie);
            float *l1 = logits_of(m), *l2 = logits_of(back);
            assert_memory_equal(l1, l2, (size_t)8 * c1->vocab_size * sizeof(float));
            free(l1);
            free(l2);
            mt_model_free(back);
            mt_model_free(m);
        }
    }
}

static void roundtrip_bf16_and_shards(void **state) {
    (void)state;
    mt_model *m = random_model(MT_FAMILY_DEEPSEEK_V3, false, 5);
    /* a non-zero routing bias must survive as F32 */
    mt_param *bias = mt_model_find_param(m, "model.layers.1.mlp.gate.e_score_correction_bias");
    assert_non_null(bias);
    for (int64_t i = 0; i < bias->numel; i++) bias->data[i] = 0.01f * (float)i + 1e-4f;
    mt_model *bf = save_and_load(m, mt_test_tmpdir("model_io_bf16"), MT_DTYPE_BF16, 0);
    for (int i = 0; i < mt_model_param_count(m); i++) {
        mt_param *a = mt_model_param(m, i), *b = mt_model_param(bf, i);
        bool f32 = strstr(a->name, "e_score_correction_bias") != NULL;
        /* linear weights stay bf16 in the mapping (b->data NULL): read them converted */
        float *bv = mt_xmalloc((size_t)b->numel * sizeof(float));
        mt_model_param_to_f32(bf, b, bv);
        for (int64_t j = 0; j < a->numel; j++) {
            float want = f32 ? a->data[j] : mt_bf16_to_f32(mt_f32_to_bf16(a->data[j]));
            if (bv[j] != want) fail_msg("%s[%lld]: %.9g, want %.9g", a->name, (long long)j, bv[j], want);
        }
        free(bv);
    }
    char hb[65], hb2[65], hs[65], hm[65];
    mt_model_content_hash(bf, hb);
    mt_model_content_hash(m, hm);
    assert_string_not_equal(hb, hm);
    /* the hash identifies the values whatever the file: bf16 model re-saved as f32, sharded */
    mt_model *f32 = save_and_load(bf, mt_test_tmpdir("model_io_bf16_f32"), MT_DTYPE_F32, 0);
    mt_model_content_hash(f32, hb2);
    assert_string_equal(hb, hb2);
    const char *sdir = mt_test_tmpdir("model_io_shards");
    mt_model *sh = save_and_load(m, sdir, MT_DTYPE_F32, 256 * 1024);
    char idx[4096];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", sdir);
    assert_true(mt_path_exists(idx));
    mt_model_content_hash(sh, hs);
    assert_string_equal(hs, hm);
    mt_model_free(sh);
    mt_model_free(f32);
    mt_model_free(bf);
    mt_model_free(m);
}

static void init_is_deterministic(void **state) {
    (void)state;
    char a[65], b[65], c[65];
    mt_model *m1 = random_model(MT_FAMILY_QWEN2_MOE, false, 42), *m2 = random_model(MT_FAMILY_QWEN2_MOE, false, 42),
             *m3 = random_model(MT_FAMILY_QWEN2_MOE, false, 43);
    mt_model_content_hash(m1, a);
    mt_model_content_hash(m2, b);
    mt_model_content_hash(m3, c);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    /* normal(0, initializer_range) linears, unit norms, zero biases */
    const mt_config *cfg = mt_model_config(m1);
    mt_param *q = mt_model_find_param(m1, "model.layers.0.self_attn.q_proj.weight");
    mt_param *qb = mt_model_find_param(m1, "model.layers.0.self_attn.q_proj.bias");
    mt_param *n = mt_model_find_param(m1, "model.layers.0.input_layernorm.weight");
    assert_non_null(q);
    assert_non_null(qb);
    assert_non_null(n);
    double s2 = 0;
    for (int64_t i = 0; i < q->numel; i++) s2 += (double)q->data[i] * q->data[i];
    double std = sqrt(s2 / (double)q->numel);
    assert_true(fabs(std - cfg->initializer_range) < 0.1 * cfg->initializer_range);
    for (int64_t i = 0; i < n->numel; i++) assert_true(n->data[i] == 1.0f);
    for (int64_t i = 0; i < qb->numel; i++) assert_true(qb->data[i] == 0.0f);
    mt_model_free(m1);
    mt_model_free(m2);
    mt_model_free(m3);
}

/* The per-family name tables: what a checkpoint calls each linear, and what kind it is. */
static void tables(void **state) {
    (void)state;
    mt_model *m = load_fixture(g_be, "mixtral");
    mt_linear *L = mt_model_find_linear(m, "model.layers.1.block_sparse_moe.experts.3.w1");
    assert_non_null(L);
    assert_int_equal(L->kind, MT_LINEAR_EXPERT);
    assert_int_equal(L->layer, 1);
    assert_int_equal(L->expert, 3);
    assert_int_equal(L->in, 32);
    assert_int_equal(L->out, 24);
    assert_string_equal(L->weight->name, "model.layers.1.block_sparse_moe.experts.3.w1.weight");
    L = mt_model_find_linear(m, "model.layers.0.block_sparse_moe.gate");
    assert_non_null(L);
    assert_int_equal(L->kind, MT_LINEAR_ROUTER);
    L = mt_model_find_linear(m, "lm_head");
    assert_non_null(L);
    assert_int_equal(L->kind, MT_LINEAR_LM_HEAD);
    assert_int_equal(L->layer, -1);
    assert_null(mt_model_find_linear(m, "model.layers.9.self_attn.q_proj"));
    assert_null(mt_model_find_param(m, "nope"));
    mt_model_free(m);

    m = load_fixture(g_be, "qwen2_moe");
    L = mt_model_find_linear(m, "model.layers.0.mlp.shared_expert_gate");
    assert_non_null(L);
    assert_int_equal(L->kind, MT_LINEAR_SHARED);
    assert_int_equal(L->out, 1);
    L = mt_model_find_linear(m, "model.layers.0.self_attn.q_proj");
    assert_non_null(L->bias);
    assert_null(mt_model_find_linear(m, "model.layers.0.self_attn.o_proj")->bias);
    L = mt_model_find_linear(m, "model.layers.1.mlp.gate_proj"); /* mlp_only_layers: dense */
    assert_non_null(L);
    assert_int_equal(L->kind, MT_LINEAR_MLP);
    assert_null(mt_model_find_linear(m, "model.layers.1.mlp.gate"));
    mt_model_free(m);

    m = load_fixture(g_be, "deepseek_v3");
    static const char *mla[] = {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"};
    for (int i = 0; i < 5; i++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.1.self_attn.%s", mla[i]);
        L = mt_model_find_linear(m, name);
        assert_non_null(L);
        assert_int_equal(L->kind, MT_LINEAR_ATTN);
    }
    assert_non_null(mt_model_find_linear(m, "model.layers.1.mlp.shared_experts.down_proj"));
    assert_non_null(mt_model_find_param(m, "model.layers.1.mlp.gate.e_score_correction_bias"));
    /* a mapped weight is copied before it gets a gradient, and is writable afterwards */
    mt_param *p = mt_model_find_param(m, "model.layers.1.self_attn.kv_b_proj.weight");
    float first = p->data[0];
    mt_error err = {0};
    assert_int_equal(mt_model_require_grad(m, p, &err), MT_OK);
    assert_non_null(p->grad);
    p->data[0] = first + 1;
    assert_true(p->data[0] == first + 1);
    assert_int_equal(mt_model_param_make_writable(m, mt_model_param(m, 0), &err), MT_OK);
    mt_model_param(m, 0)->data[0] += 1;
    mt_model_free(m);
}

/* A checkpoint whose experts are stored stacked (transformers 5's in-memory layout:
 * mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]) loads the same. */
static void stacked_experts(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = random_model(MT_FAMILY_QWEN3_MOE, false, 8);
    const char *dir = mt_test_tmpdir("model_io_stacked");
    if (mt_model_save(m, dir, MT_DTYPE_F32, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    const mt_config *cfg = mt_model_config(m);
    int E = cfg->n_experts, I = cfg->moe_intermediate_size, H = cfg->hidden_size;
    mt_st_writer *w = mt_st_writer_init();
    float **keep = mt_xcalloc((size_t)cfg->n_layers * 2, sizeof(float *));
    char (*names)[128] = mt_xcalloc((size_t)cfg->n_layers * 2, 128);
    for (int i = 0; i < mt_model_param_count(m); i++) {
        mt_param *p = mt_model_param(m, i);
        if (strstr(p->name, ".experts.")) continue;
        mt_st_writer_add(w, p->name, MT_DTYPE_F32, p->ndim, p->shape, p->data);
    }
    for (int l = 0; l < cfg->n_layers; l++) {
        float *gu = keep[2 * l] = mt_xmalloc((size_t)E * 2 * I * H * sizeof(float));
        float *dn = keep[2 * l + 1] = mt_xmalloc((size_t)E * H * I * sizeof(float));
        for (int e = 0; e < E; e++) {
            char n[160];
            snprintf(n, sizeof n, "model.layers.%d.mlp.experts.%d.gate_proj", l, e);
            memcpy(gu + (size_t)e * 2 * I * H, mt_model_find_linear(m, n)->weight->data, (size_t)I * H * sizeof(float));
            snprintf(n, sizeof n, "model.layers.%d.mlp.experts.%d.up_proj", l, e);
            memcpy(gu + ((size_t)e * 2 + 1) * I * H, mt_model_find_linear(m, n)->weight->data,
                   (size_t)I * H * sizeof(float));
            snprintf(n, sizeof n, "model.layers.%d.mlp.experts.%d.down_proj", l, e);
            memcpy(dn + (size_t)e * H * I, mt_model_find_linear(m, n)->weight->data, (size_t)I * H * sizeof(float));
        }
        int64_t s1[3] = {E, 2 * I, H}, s2[3] = {E, H, I};
        snprintf(names[2 * l], 128, "model.layers.%d.mlp.experts.gate_up_proj", l);
        snprintf(names[2 * l + 1], 128, "model.layers.%d.mlp.experts.down_proj", l);
        mt_st_writer_add(w, names[2 * l], MT_DTYPE_BF16, 3, s1, gu);
        mt_st_writer_add(w, names[2 * l + 1], MT_DTYPE_BF16, 3, s2, dn);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (mt_st_writer_save(w, path, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_st_writer_free(w);
    mt_model *back = NULL;
    if (mt_model_load(&back, dir, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    for (int i = 0; i < mt_model_param_count(m); i++) {
        mt_param *a = mt_model_param(m, i), *b = mt_model_param(back, i);
        bool expert = strstr(a->name, ".experts.") != NULL;
        /* the experts' bf16 slices stay in the mapping: read them converted */
        float *bv = mt_xmalloc((size_t)b->numel * sizeof(float));
        mt_model_param_to_f32(back, b, bv);
        for (int64_t j = 0; j < a->numel; j++) {
            float want = expert ? mt_bf16_to_f32(mt_f32_to_bf16(a->data[j])) : a->data[j];
            if (bv[j] != want) fail_msg("%s[%lld]", a->name, (long long)j);
        }
        free(bv);
    }
    for (int i = 0; i < cfg->n_layers * 2; i++) free(keep[i]);
    free(keep);
    free(names);
    mt_model_free(back);
    mt_model_free(m);
}

/* Rewrites dir/model.safetensors from m's parameters, dropping `skip` and giving `reshape` a
 * wrong shape. */
static void write_broken(mt_model *m, const char *dir, const char *skip, const char *reshape) {
    mt_error err = {0};
    mt_st_writer *w = mt_st_writer_init();
    for (int i = 0; i < mt_model_param_count(m); i++) {
        mt_param *p = mt_model_param(m, i);
        if (skip && !strcmp(p->name, skip)) continue;
        int64_t shape[4] = {p->shape[0], p->shape[1]};
        if (reshape && !strcmp(p->name, reshape)) {
            shape[0] = p->shape[1];
            shape[1] = p->shape[0];
        }
        mt_st_writer_add(w, p->name, MT_DTYPE_F32, p->ndim, shape, p->data);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (mt_st_writer_save(w, path, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_st_writer_free(w);
}

static void bad_checkpoints(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = random_model(MT_FAMILY_OLMOE, false, 3), *back = NULL;
    const char *dir = mt_test_tmpdir("model_io_bad");
    char saved[4096];
    snprintf(saved, sizeof saved, "%s", dir);
    if (mt_model_save(m, saved, MT_DTYPE_F32, 0, &err) != MT_OK) fail_msg("%s", err.msg);

    write_broken(m, saved, "model.layers.2.mlp.experts.5.up_proj.weight", NULL);
    assert_int_equal(mt_model_load(&back, saved, g_be, &err), MT_ERR_NOT_FOUND);
    assert_null(back);
    assert_non_null(strstr(err.msg, "model.layers.2.mlp.experts.5.up_proj.weight"));
    assert_non_null(strstr(err.msg, "missing"));

    mt_error_clear(&err);
    write_broken(m, saved, NULL, "model.layers.1.mlp.experts.0.down_proj.weight");
    assert_int_equal(mt_model_load(&back, saved, g_be, &err), MT_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "model.layers.1.mlp.experts.0.down_proj.weight"));
    assert_non_null(strstr(err.msg, "has shape [64, 128] but config.json implies [128, 64]"));

    /* unknown model_type */
    mt_error_clear(&err);
    char cfgpath[4096], *text = NULL;
    size_t len = 0;
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", saved);
    assert_int_equal(mt_read_file(cfgpath, &text, &len, &err), MT_OK);
    char *at = strstr(text, "\"olmoe\"");
    assert_non_null(at);
    size_t pre = (size_t)(at - text);
    char *bad = mt_xmalloc(len + 32);
    snprintf(bad, len + 32, "%.*s\"llama4_moe\"%s", (int)pre, text, at + strlen("\"olmoe\""));
    assert_int_equal(mt_write_file_atomic(cfgpath, bad, strlen(bad), &err), MT_OK);
    assert_int_equal(mt_model_load(&back, saved, g_be, &err), MT_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "llama4_moe"));
    free(text);
    free(bad);

    /* no folder at all */
    mt_error_clear(&err);
    assert_true(mt_model_load(&back, "/nonexistent/model", g_be, &err) != MT_OK);
    assert_true(err.msg[0] != '\0');
    mt_model_free(m);
}

static void bad_batches(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = load_fixture(g_be, "qwen3_moe");
    const mt_config *cfg = mt_model_config(m);
    mt_workspace *ws = NULL;
    assert_int_equal(mt_workspace_init(&ws, m, 1, cfg->max_position_embeddings + 1, false, 0, &err), MT_ERR_INVALID);
    assert_int_equal(mt_workspace_init(&ws, m, 1, 8, false, 0, &err), MT_OK);
    assert_true(mt_workspace_bytes(ws) > 0);
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, tgt[8] = {2, 3, 4, 5, 6, 7, 8, MT_IGNORE_INDEX};
    int32_t pos[8] = {0, 1, 2, 3, 4, 5, 6, 7}, ks[8] = {0};
    mt_batch b = {.B = 1, .T = 8, .tokens = tok, .targets = tgt, .pos = pos, .kv_start = ks};
    mt_forward_opts o = {0};
    mt_forward_result r;
    assert_int_equal(mt_model_forward(m, ws, &b, &o, &r, &err), MT_OK);
    struct {
        int32_t *arr;
        int idx, val;
        const char *msg;
    } cases[] = {{tok, 3, cfg->vocab_size, "outside the vocabulary"},
                 {tok, 0, -1, "outside the vocabulary"},
                 {tgt, 2, cfg->vocab_size + 5, "target"},
                 {pos, 5, cfg->max_position_embeddings, "position"},
                 {ks, 4, 5, "kv_start"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int32_t old = cases[i].arr[cases[i].idx];
        cases[i].arr[cases[i].idx] = cases[i].val;
        mt_error e = {0};
        assert_int_equal(mt_model_forward(m, ws, &b, &o, &r, &e), MT_ERR_INVALID);
        if (!strstr(e.msg, cases[i].msg)) fail_msg("case %zu: message '%s' lacks '%s'", i, e.msg, cases[i].msg);
        cases[i].arr[cases[i].idx] = old;
    }
    mt_batch big = {.B = 2, .T = 8, .tokens = tok};
    mt_error e = {0};
    assert_int_equal(mt_model_forward(m, ws, &big, &o, &r, &e), MT_ERR_INVALID);
    /* an adapter of higher rank than the workspace was sized for, or made for another model */
    toy_set *ts = toy_set_new(m);
    toy_add(ts, m, toy_linear_index(m, "model.layers.0.self_attn.q_proj"), 200, 1);
    mt_forward_opts with = o;
    with.adapter = &ts->view;
    mt_error_clear(&e);
    assert_int_equal(mt_model_forward(m, ws, &b, &with, &r, &e), MT_ERR_INVALID);
    assert_non_null(strstr(e.msg, "rank 200"));
    ts->view.n_linears--;
    ts->view.max_rank = 2;
    mt_error_clear(&e);
    assert_int_equal(mt_model_forward(m, ws, &b, &with, &r, &e), MT_ERR_INVALID);
    assert_non_null(strstr(e.msg, "linear layers"));
    toy_set_free(ts);
    mt_kv_cache *c = NULL;
    assert_int_equal(mt_kv_cache_init(&c, m, cfg->max_position_embeddings + 1, &e), MT_ERR_INVALID);
    assert_int_equal(mt_kv_cache_init(&c, m, 4, &e), MT_OK);
    float *row = mt_xmalloc((size_t)cfg->vocab_size * sizeof(float));
    assert_int_equal(mt_model_decode(m, c, tok, 5, row, &e), MT_ERR_INVALID);
    int32_t badtok = cfg->vocab_size;
    assert_int_equal(mt_model_decode(m, c, &badtok, 1, row, &e), MT_ERR_INVALID);
    assert_int_equal(mt_kv_cache_len(c), 0);
    assert_true(mt_kv_cache_bytes(c) > 0);
    free(row);
    mt_kv_cache_free(c);
    mt_workspace_free(ws);
    mt_model_free(m);
}

static void sampling(void **state) {
    (void)state;
    float logits[6];
    const float base[6] = {0.1f, 2.0f, -1.0f, 1.9f, 0.5f, -3.0f};
    mt_rng r;
    mt_rng_seed(&r, 1);
    mt_sample_opts greedy = {.temperature = 0};
    memcpy(logits, base, sizeof base);
    assert_int_equal(mt_sample(&greedy, logits, 6, &r), 1);
    mt_sample_opts k1 = {.temperature = 1.0f, .top_k = 1, .top_p = 1};
    for (int i = 0; i < 50; i++) {
        memcpy(logits, base, sizeof base);
        assert_int_equal(mt_sample(&k1, logits, 6, &r), 1);
    }
    /* top-k 2 keeps tokens 1 and 3 only, in proportion to their probabilities */
    mt_sample_opts k2 = {.temperature = 1.0f, .top_k = 2, .top_p = 1, .seed = 0};
    int count[6] = {0};
    for (int i = 0; i < 4000; i++) {
        memcpy(logits, base, sizeof base);
        count[mt_sample(&k2, logits, 6, &r)]++;
    }
    assert_int_equal(count[0] + count[2] + count[4] + count[5], 0);
    double p1 = exp(2.0) / (exp(2.0) + exp(1.9));
    assert_true(fabs(count[1] / 4000.0 - p1) < 0.03);
    /* nucleus: the smallest top set with mass >= p */
    double z = 0;
    for (int i = 0; i < 6; i++) z += exp(base[i]);
    double m1 = exp(2.0) / z;
    mt_sample_opts p_small = {.temperature = 1.0f, .top_k = 0, .top_p = (float)(m1 * 0.9)};
    for (int i = 0; i < 50; i++) {
        memcpy(logits, base, sizeof base);
        assert_int_equal(mt_sample(&p_small, logits, 6, &r), 1);
    }
    mt_sample_opts p_two = {.temperature = 1.0f, .top_k = 0, .top_p = (float)(m1 * 1.1)};
    memset(count, 0, sizeof count);
    for (int i = 0; i < 2000; i++) {
        memcpy(logits, base, sizeof base);
        count[mt_sample(&p_two, logits, 6, &r)]++;
    }
    assert_int_equal(count[0] + count[2] + count[4] + count[5], 0);
    assert_true(count[3] > 0);
    /* full distribution at temperature 2 */
    mt_sample_opts t2 = {.temperature = 2.0f, .top_k = 0, .top_p = 1};
    memset(count, 0, sizeof count);
    for (int i = 0; i < 20000; i++) {
        memcpy(logits, base, sizeof base);
        count[mt_sample(&t2, logits, 6, &r)]++;
    }
    double zt = 0;
    for (int i = 0; i < 6; i++) zt += exp(base[i] / 2);
    for (int i = 0; i < 6; i++) assert_true(fabs(count[i] / 20000.0 - exp(base[i] / 2) / zt) < 0.015);
    /* the same rng state gives the same draw */
    mt_rng a, b;
    mt_rng_seed(&a, 9);
    mt_rng_seed(&b, 9);
    for (int i = 0; i < 20; i++) {
        float l1[6], l2[6];
        memcpy(l1, base, sizeof base);
        memcpy(l2, base, sizeof base);
        assert_int_equal(mt_sample(&t2, l1, 6, &a), mt_sample(&t2, l2, 6, &b));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(roundtrip_every_family), cmocka_unit_test(roundtrip_bf16_and_shards),
        cmocka_unit_test(init_is_deterministic),  cmocka_unit_test(tables),
        cmocka_unit_test(stacked_experts),        cmocka_unit_test(bad_checkpoints),
        cmocka_unit_test(bad_batches),            cmocka_unit_test(sampling),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
