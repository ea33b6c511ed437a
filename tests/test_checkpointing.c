/* test_checkpointing.c — activation checkpointing (train.checkpointing): for every fixture
 * family (MLA with a dense layer, DeepSeek-V2's aux loss, Qwen2-MoE's gated shared expert and
 * dense layer, Mixtral's jitter, QK-norm of both kinds), full fine-tuning and adapters with
 * dropout on every linear, the losses, token losses, aux loss, router statistics, recorded
 * routes and every gradient of `layers` and `selective` are bit-identical to `none`, also with
 * replayed routes and a smaller batch after a larger one; the profiler counts the forward once;
 * the workspace shrinks by what the shapes say; and a training run checkpointed with `layers`,
 * stopped and resumed with `selective` reproduces the loss curve and adapter of an
 * uncheckpointed run bit for bit. */
#include "model_testlib.h"

#include "finetune/finetune.h"
#include "model/model-impl.h"
#include "store/store.h"

static mt_backend *g_be;

/* One thread: many small passes are dominated by thread start-up otherwise (the kernels give the
 * same bits for any thread count, and the trainer run below uses two). */
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

/* Everything a pass produces that checkpointing must not change. */
typedef struct outcome {
    double loss[2], aux[2];
    int64_t n_tokens[2];
    float *token_loss[2];
    float *din;                 /* ∂L/∂(input embeddings) of the last pass */
    float **grads;              /* [n_params] */
    float **dA, **dB;           /* [n_linears] */
    int32_t *route_out;         /* [L·N·K] of the first pass */
    int32_t *tpe;               /* tokens per expert, every MoE layer, of the last pass */
    double *entropy;
    mt_prof_cell prof;          /* profiled totals of the last pass */
    uint64_t prof_passes, prof_routed;
    size_t bytes;
} outcome;

enum { RB = 3, RT = 10 }; /* the workspace's capacity; the second pass uses fewer rows */

static float *dup_floats(const float *p, size_t n) {
    float *d = mt_xmalloc(n * sizeof(float));
    memcpy(d, p, n * sizeof(float));
    return d;
}

static void run_mode(const char *variant, bool full, float noise, mt_checkpointing ck, outcome *o) {
    mt_error err = {0};
    memset(o, 0, sizeof *o);
    mt_model *m = load_fixture(g_be, variant);
    const mt_config *cfg = mt_model_config(m);
    int V = cfg->vocab_size, H = cfg->hidden_size, L = cfg->n_layers, K = cfg->top_k > 0 ? cfg->top_k : 1;
    int np = mt_model_param_count(m), nl = mt_model_linear_count(m);
    if (full)
        for (int i = 0; i < np; i++)
            if (mt_model_require_grad(m, mt_model_param(m, i), &err) != MT_OK) fail_msg("%s", err.msg);
    toy_set *ts = toy_set_new(m);
    if (!full) {
        for (int i = 0; i < nl; i++) toy_add(ts, m, i, 2, 300 + (uint64_t)i);
        ts->view.dropout = 0.2f;
    }
    mt_workspace *ws = NULL;
    if (mt_workspace_init_checkpointed(&ws, m, RB, RT, 0, ck, &err) != MT_OK) fail_msg("%s", err.msg);
    o->bytes = mt_workspace_bytes(ws);
    mt_profile *prof = NULL;
    if (mt_profile_init(&prof, m, NULL, 0, &err) != MT_OK) fail_msg("%s", err.msg);

    int N = RB * RT;
    int32_t tokens[RB * RT], targets[RB * RT];
    size_t nr = (size_t)L * N * K;
    int32_t *route_in = mt_xmalloc(nr * sizeof(int32_t));
    o->route_out = mt_xcalloc(nr, sizeof(int32_t));
    /* every third row of every layer replays other experts (the next K after the first choice
     * of a row of the same batch, so some sets differ and some are the same in another order) */
    for (size_t i = 0; i < nr; i += (size_t)K) {
        size_t row = i / (size_t)K;
        for (int j = 0; j < K; j++)
            route_in[i + (size_t)j] =
                row % 3 ? -1 : (int32_t)((row / 3 + (size_t)(K - 1 - j) * (row % 2 ? 1 : 2)) % (size_t)(cfg->n_experts > 0 ? cfg->n_experts : 1));
    }
    mt_model_zero_grad(m);
    for (int pass = 0; pass < 2; pass++) {
        int B = pass ? 2 : RB, T = pass ? RT - 3 : RT, n = B * T;
        random_tokens(tokens, n, V, 41 + (uint64_t)pass);
        for (int i = 0; i < n; i++) targets[i] = (i + 1) % T ? tokens[i + 1] : MT_IGNORE_INDEX;
        targets[2] = MT_IGNORE_INDEX;
        mt_batch b = {.B = B, .T = T, .tokens = tokens, .targets = targets};
        bool moe = cfg->n_experts > 0;
        mt_forward_opts fo = {.train = true, .seed = 11 + (uint64_t)pass, .router_noise = noise, .aux_coef = 0.3f,
                              .adapter = full ? NULL : &ts->view,
                              .route_out = pass == 0 && moe ? o->route_out : NULL,
                              .route_in = pass == 0 && moe ? route_in : NULL};
        /* the second pass is profiled: recomputation must not count as a second forward */
        if (pass == 1) mt_model_set_profile(m, prof);
        mt_forward_result r;
        if (mt_model_forward(m, ws, &b, &fo, &r, &err) != MT_OK) fail_msg("%s", err.msg);
        if (mt_model_backward(m, ws, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
        mt_model_set_profile(m, NULL);
        o->loss[pass] = r.loss_sum;
        o->aux[pass] = r.aux_loss;
        o->n_tokens[pass] = r.n_tokens;
        o->token_loss[pass] = dup_floats(r.token_loss, (size_t)n);
        if (pass == 1) o->din = dup_floats(mt_workspace_input_grad(ws), (size_t)n * H);
    }
    o->grads = mt_xcalloc((size_t)np, sizeof(float *));
    for (int i = 0; i < np; i++) {
        mt_param *p = mt_model_param(m, i);
        if (p->grad) o->grads[i] = dup_floats(p->grad, (size_t)p->numel);
    }
    o->dA = mt_xcalloc((size_t)nl, sizeof(float *));
    o->dB = mt_xcalloc((size_t)nl, sizeof(float *));
    for (int i = 0; i < nl && !full; i++) {
        toy_adapter *a = ts->ad[i];
        o->dA[i] = dup_floats(a->dA, (size_t)a->r * a->in);
        o->dB[i] = dup_floats(a->dB, (size_t)a->out * a->r);
    }
    int E = cfg->n_experts > 0 ? cfg->n_experts : 1;
    o->tpe = mt_xcalloc((size_t)L * E, sizeof(int32_t));
    o->entropy = mt_xcalloc((size_t)L, sizeof(double));
    mt_router_stats rs;
    for (int i = 0; mt_workspace_router_stats(ws, i, &rs); i++) {
        memcpy(o->tpe + (size_t)i * E, rs.tokens_per_expert, (size_t)E * sizeof(int32_t));
        o->entropy[i] = rs.entropy;
    }
    o->prof = mt_profile_total(prof);
    uint64_t rows;
    double secs;
    mt_profile_passes(prof, &o->prof_passes, &rows, &secs);
    for (int l = 0; l < L; l++) {
        uint64_t tok = 0, used = 0;
        mt_profile_routing(prof, l, &tok, &used);
        o->prof_routed += tok + used;
    }
    mt_profile_free(prof);
    free(route_in);
    toy_set_free(ts);
    mt_workspace_free(ws);
    mt_model_free(m);
}

static void outcome_free(outcome *o, int np, int nl) {
    for (int p = 0; p < 2; p++) free(o->token_loss[p]);
    free(o->din);
    for (int i = 0; i < np; i++) free(o->grads[i]);
    for (int i = 0; i < nl; i++) {
        free(o->dA[i]);
        free(o->dB[i]);
    }
    free(o->grads);
    free(o->dA);
    free(o->dB);
    free(o->route_out);
    free(o->tpe);
    free(o->entropy);
}

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Bytes of one activation set as mt_acts_layout carves it (each piece starts 64-aligned). */
static size_t set_bytes(const mt_model *m, bool dense, bool moe, bool no_cheap) {
    mt_acts a = {0};
    mt_carver cv = {0};
    mt_acts_want w = {.expanded = true, .dense = dense, .moe = moe, .jitter = true, .no_cheap = no_cheap};
    mt_acts_layout(m, &a, (size_t)RB * RT, &w, &cv);
    return up64(cv.off);
}

/* What `none` minus `layers` and `none` minus `selective` must be, from the shapes alone. */
static void expected_savings(const char *variant, size_t *layers, size_t *selective) {
    mt_model *m = load_fixture(g_be, variant);
    const mt_config *cfg = mt_model_config(m);
    mt_dims d;
    mt_model_dims(cfg, &d);
    size_t N = (size_t)RB * RT, NH = up64(N * d.H * sizeof(float));
    bool any_dense = false, any_moe = false;
    size_t sum = 0, sum_kept = 0;
    for (int l = 0; l < d.L; l++) {
        bool moe = m->layers[l].moe;
        any_moe |= moe;
        any_dense |= !moe;
        sum += set_bytes(m, !moe, moe, false);
        sum_kept += set_bytes(m, !moe, moe, true);
    }
    /* layers: one set (and its x_mid) for all; every layer's input kept */
    *layers = sum - set_bytes(m, any_dense, any_moe, false) + (size_t)(d.L - 1) * NH;
    /* selective: one copy of the recomputed tensors for all layers */
    size_t cheap = 2 * NH;
    if (cfg->mla)
        cheap += up64(N * d.q_dim * 4) + (d.ql > 0 ? up64(N * d.ql * 4) : 0) + 2 * up64(N * d.kvl * 4);
    else if (cfg->qk_norm != MT_QK_NORM_NONE)
        cheap += up64(N * d.q_dim * 4) + up64(N * d.kv_dim * 4);
    if (any_moe) cheap += NH + up64(N * d.K * d.H * 4);
    *selective = sum - sum_kept - cheap;
    mt_model_free(m);
}

static void assert_same(const char *variant, const char *what, const outcome *a, const outcome *b, int np,
                        int nl, int L, int E, int H, int K) {
    for (int p = 0; p < 2; p++) {
        if (memcmp(&a->loss[p], &b->loss[p], sizeof(double)) || memcmp(&a->aux[p], &b->aux[p], sizeof(double)))
            fail_msg("%s %s pass %d: loss %.17g / %.17g, aux %.17g / %.17g", variant, what, p, a->loss[p], b->loss[p],
                     a->aux[p], b->aux[p]);
        assert_int_equal(a->n_tokens[p], b->n_tokens[p]);
        int n = p ? 2 * (RT - 3) : RB * RT;
        assert_memory_equal(a->token_loss[p], b->token_loss[p], (size_t)n * sizeof(float));
    }
    assert_memory_equal(a->din, b->din, (size_t)2 * (RT - 3) * H * sizeof(float));
    assert_memory_equal(a->route_out, b->route_out, (size_t)L * RB * RT * K * sizeof(int32_t));
    assert_memory_equal(a->tpe, b->tpe, (size_t)L * E * sizeof(int32_t));
    assert_memory_equal(a->entropy, b->entropy, (size_t)L * sizeof(double));
    for (int i = 0; i < np; i++) assert_true(!a->grads[i] == !b->grads[i]);
    for (int i = 0; i < nl; i++) assert_true(!a->dA[i] == !b->dA[i]);
    if (a->prof.flops != b->prof.flops || a->prof.bytes != b->prof.bytes || a->prof.calls != b->prof.calls ||
        a->prof_passes != b->prof_passes || a->prof_routed != b->prof_routed)
        fail_msg("%s %s: profiled %.0f flops %.0f bytes %llu calls %llu passes vs %.0f %.0f %llu %llu", variant, what,
                 b->prof.flops, b->prof.bytes, (unsigned long long)b->prof.calls, (unsigned long long)b->prof_passes,
                 a->prof.flops, a->prof.bytes, (unsigned long long)a->prof.calls, (unsigned long long)a->prof_passes);
}

static void check_variant(const char *variant, bool full, float noise) {
    outcome o[3];
    const mt_checkpointing modes[3] = {MT_CHECKPOINTING_NONE, MT_CHECKPOINTING_LAYERS, MT_CHECKPOINTING_SELECTIVE};
    for (int k = 0; k < 3; k++) run_mode(variant, full, noise, modes[k], &o[k]);
    mt_model *m = load_fixture(g_be, variant);
    const mt_config *cfg = mt_model_config(m);
    int np = mt_model_param_count(m), nl = mt_model_linear_count(m);
    int L = cfg->n_layers, E = cfg->n_experts > 0 ? cfg->n_experts : 1, H = cfg->hidden_size;
    int K = cfg->top_k > 0 ? cfg->top_k : 1;
    int n_grads = 0;
    for (int k = 1; k < 3; k++) {
        const char *what = k == 1 ? "layers" : "selective";
        assert_same(variant, what, &o[0], &o[k], np, nl, L, E, H, K);
        for (int i = 0; i < np; i++) {
            mt_param *p = mt_model_param(m, i);
            if (!o[0].grads[i]) continue;
            if (memcmp(o[0].grads[i], o[k].grads[i], (size_t)p->numel * sizeof(float)))
                fail_msg("%s %s: gradient of %s differs", variant, what, p->name);
            n_grads += k == 1;
        }
        for (int i = 0; i < nl; i++) {
            if (!o[0].dA[i]) continue;
            const mt_linear *lin = mt_model_linear(m, i);
            if (memcmp(o[0].dA[i], o[k].dA[i], (size_t)2 * lin->in * sizeof(float)) ||
                memcmp(o[0].dB[i], o[k].dB[i], (size_t)lin->out * 2 * sizeof(float)))
                fail_msg("%s %s: adapter gradient of %s differs", variant, what, lin->module);
            n_grads += k == 1;
        }
    }
    assert_true(n_grads > 0);
    assert_true(o[0].prof.flops > 0 && o[0].prof_passes == 1);
    size_t exp_layers, exp_sel;
    expected_savings(variant, &exp_layers, &exp_sel);
    print_message("%-16s %s noise %.2f: %d gradients identical; workspace %zu B, layers %zu B, selective %zu B\n",
                  variant, full ? "full" : "adapters", noise, n_grads, o[0].bytes, o[1].bytes, o[2].bytes);
    assert_true(o[1].bytes < o[0].bytes && o[2].bytes < o[0].bytes);
    assert_int_equal(o[0].bytes - o[1].bytes, exp_layers);
    assert_int_equal(o[0].bytes - o[2].bytes, exp_sel);
    for (int k = 0; k < 3; k++) outcome_free(&o[k], np, nl);
    mt_model_free(m);
}

static void full_finetuning_bit_identical(void **state) {
    (void)state;
    for (int v = 0; v < N_VARIANTS; v++) check_variant(variant_name(v), true, 0.0f);
}

static void adapters_with_dropout_and_jitter_bit_identical(void **state) {
    (void)state;
    for (int v = 0; v < N_VARIANTS; v++) check_variant(variant_name(v), false, 0.05f);
}

/* `layers` keeps one activation set: a model twice as deep grows by its inputs only. */
static void layers_memory_grows_by_inputs(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = load_fixture(g_be, "olmoe");
    const mt_config *cfg = mt_model_config(m);
    mt_config deep = *cfg;
    deep.n_layers = 2 * cfg->n_layers;
    for (int l = cfg->n_layers; l < deep.n_layers; l++) deep.layer_is_moe[l] = cfg->layer_is_moe[l - cfg->n_layers];
    mt_model *m2 = NULL;
    if (mt_model_init_random(&m2, &deep, 1, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    size_t b[2][2];
    mt_model *ms[2] = {m, m2};
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++) {
            mt_workspace *ws = NULL;
            mt_checkpointing ck = k ? MT_CHECKPOINTING_LAYERS : MT_CHECKPOINTING_NONE;
            if (mt_workspace_init_checkpointed(&ws, ms[i], RB, RT, 0, ck, &err) != MT_OK) fail_msg("%s", err.msg);
            b[i][k] = mt_workspace_bytes(ws);
            mt_workspace_free(ws);
        }
    size_t NH = up64((size_t)RB * RT * cfg->hidden_size * sizeof(float));
    assert_int_equal(b[1][1] - b[0][1], (size_t)cfg->n_layers * NH);
    assert_true(b[1][0] - b[0][0] > 4 * (b[1][1] - b[0][1]));
    /* a value outside the enum is refused, naming what is allowed */
    mt_workspace *ws = NULL;
    assert_int_equal(mt_workspace_init_checkpointed(&ws, m, RB, RT, 0, (mt_checkpointing)7, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "none, layers or selective"));
    assert_null(ws);
    mt_model_free(m);
    mt_model_free(m2);
}

/* ---- end to end: train.checkpointing through the trainer, with a resume ---- */

static char root[4096], base_dir[4200], data_path[4200];

static void write_corpus(const char *path) {
    static const char *const words[] = {"the", "licensee", "shall", "not", "distribute", "software", "without",
                                        "written", "consent", "of", "licensor", "warranty", "is", "hereby"};
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    mt_rng rng;
    mt_rng_seed(&rng, 3);
    for (int d = 0; d < 30; d++) {
        fputs("{\"text\": \"", f);
        for (int w = 0; w < 40; w++) fprintf(f, "%s%s", w ? " " : "", words[mt_rng_below(&rng, 14)]);
        fputs(".\"}\n", f);
    }
    fclose(f);
}

static void write_recipe(const char *dir, const char *ck) {
    char path[4300];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "name: ck\nmethod: sft\nmodel:\n  path: %s\n"
            "adapter:\n  type: lora\n  r: 4\n  alpha: 8\n  dropout: 0.1\n  targets: all-linear\n"
            "data:\n  train: %s\n  format: text\n  max_seq_len: 32\n  packing: true\n"
            "train:\n  seed: 5\n  steps: 6\n  micro_batch: 2\n  grad_accum: 2\n  lr: 3e-3\n  warmup_steps: 2\n"
            "  threads: 2\n  log_every: 1\n  eval_every: 0\n  save_every: 3\n  router_noise: 0.05\n"
            "  checkpointing: %s\n"
            "output:\n  dir: %s/run\n  adapter: %s/adapter\n  store: %s/moetune.db\n",
            base_dir, data_path, ck, dir, dir, dir);
    fclose(f);
}

static void train_dir(const char *dir, const char *set, int64_t max_steps, bool resume) {
    char path[4300];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    mt_recipe r;
    mt_error err = {0};
    const char *sets[] = {set};
    if (mt_recipe_load(path, sets, set ? 1 : 0, &r, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_train_opts o = {.max_steps = max_steps, .resume = resume};
    mt_train_result res;
    if (mt_train(&r, &o, &res, &err) != MT_OK) fail_msg("%s: %s", dir, err.msg);
    mt_recipe_free(&r);
}

static mt_store_series losses(const char *dir) {
    char path[4300];
    snprintf(path, sizeof path, "%s/moetune.db", dir);
    mt_store *s;
    mt_error err = {0};
    if (mt_store_open(&s, path, false, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_series sr;
    if (mt_store_metric_series(s, 1, "loss", &sr, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_close(s);
    return sr;
}

static void training_with_resume_bit_identical(void **state) {
    (void)state;
    mt_error err = {0};
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("checkpointing"));
    snprintf(base_dir, sizeof base_dir, "%s/base", root);
    snprintf(data_path, sizeof data_path, "%s/corpus.jsonl", root);
    write_corpus(data_path);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), base_dir);
    if (rc != 0) fail_msg("%s", out);
    free(out);
    char a[4300], b[4300];
    snprintf(a, sizeof a, "%s/none", root);
    snprintf(b, sizeof b, "%s/ckpt", root);
    assert_int_equal(mt_mkdirs(a, &err), MT_OK);
    assert_int_equal(mt_mkdirs(b, &err), MT_OK);
    write_recipe(a, "none");
    write_recipe(b, "layers");
    train_dir(a, NULL, 0, false);
    /* half the steps with `layers`, the rest resumed from the step-3 checkpoint with `selective` */
    train_dir(b, NULL, 3, false);
    train_dir(b, "train.checkpointing=selective", 0, true);

    mt_store_series la = losses(a), lb = losses(b);
    assert_int_equal(la.n, 6);
    assert_int_equal(lb.n, 6);
    for (size_t i = 0; i < la.n; i++)
        if (la.steps[i] != lb.steps[i] || memcmp(&la.values[i], &lb.values[i], sizeof(double)))
            fail_msg("step %lld: loss %.17g without checkpointing, %.17g with", (long long)la.steps[i], la.values[i],
                     lb.values[i]);
    mt_store_series_free(&la);
    mt_store_series_free(&lb);
    char pa[4400], pb[4400];
    snprintf(pa, sizeof pa, "%s/adapter/adapter_model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/adapter/adapter_model.safetensors", b);
    mt_safetensors *sa, *sb;
    assert_int_equal(mt_safetensors_open(&sa, pa, &err), MT_OK);
    assert_int_equal(mt_safetensors_open(&sb, pb, &err), MT_OK);
    assert_int_equal(mt_safetensors_count(sa), mt_safetensors_count(sb));
    assert_true(mt_safetensors_count(sa) > 0);
    for (size_t i = 0; i < mt_safetensors_count(sa); i++) {
        const mt_st_tensor *x = mt_safetensors_at(sa, i);
        const mt_st_tensor *y = mt_safetensors_find(sb, x->name);
        assert_non_null(y);
        assert_int_equal(x->nbytes, y->nbytes);
        if (memcmp(x->data, y->data, x->nbytes)) fail_msg("adapter tensor %s differs", x->name);
    }
    mt_safetensors_close(sa);
    mt_safetensors_close(sb);

    /* the recipe key: names, and a wrong one is an error naming the field */
    mt_recipe r;
    char path[4400];
    snprintf(path, sizeof path, "%s/recipe.yaml", b);
    const char *bad[] = {"train.checkpointing=all"};
    assert_int_not_equal(mt_recipe_load(path, bad, 1, &r, &err), MT_OK);
    assert_non_null(strstr(err.msg, "train.checkpointing"));
    mt_error_clear(&err);
    assert_int_equal(mt_recipe_load(path, NULL, 0, &r, &err), MT_OK);
    assert_int_equal(r.train.checkpointing, MT_RECIPE_CHECKPOINTING_LAYERS);
    mt_recipe_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_finetuning_bit_identical),
        cmocka_unit_test(adapters_with_dropout_and_jitter_bit_identical),
        cmocka_unit_test(layers_memory_grows_by_inputs),
        cmocka_unit_test(training_with_resume_bit_identical),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
