/* test_lora.c — the peft room on its own: finite differences of the whole model's loss for
 * LoRA's A, B and the input (attention incl. MLA, dense MLP, routed and shared experts, the
 * router; without and with dropout), the dropout mask itself, merge/unmerge, decode through
 * the KV cache, target selection (all-linear, suffixes, globs, regexes, excludes, patterns),
 * save → load round trips and the errors of malformed adapter folders. */
#include "model_testlib.h"

#include <math.h>

#include "model/model-impl.h"
#include "peft/lora.h"


static mt_backend *g_be;

/* One thread: many forwards of a tiny model are dominated by thread start-up otherwise. */
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

static mt_lora *attach(mt_model *m, const char *const *targets, int n, int r, float alpha, mt_error *err) {
    mt_lora_config c;
    mt_lora_config_default(&c);
    c.r = r;
    c.alpha = alpha;
    c.targets = targets;
    c.n_targets = n;
    c.seed = 11;
    mt_lora *l = NULL;
    return mt_lora_attach(&l, m, &c, err) == MT_OK ? l : NULL;
}

static mt_lora *attach_ok(mt_model *m, const mt_lora_config *c) {
    mt_error err = {0};
    mt_lora *l = NULL;
    if (mt_lora_attach(&l, m, c, &err) != MT_OK) fail_msg("%s", err.msg);
    return l;
}

/* B is zero after PEFT's init; give it values so A's gradient and the delta are not zero. */
static void randomize_b(mt_lora *l, uint64_t seed) {
    mt_rng r;
    mt_rng_seed(&r, seed);
    for (int i = 1; i < mt_lora_tensor_count(l); i += 2) {
        mt_lora_tensor *t = mt_lora_tensor_at(l, i);
        for (int64_t k = 0; k < t->numel; k++) t->data[k] = 0.3f * mt_rng_normal(&r) / sqrtf((float)t->shape[1]);
    }
}

static int count_kind(mt_model *m, mt_linear_kind k) {
    int n = 0;
    for (int i = 0; i < mt_model_linear_count(m); i++) n += mt_model_linear(m, i)->kind == k;
    return n;
}

static int count_adapted(const mt_lora *l, mt_model *m) {
    const mt_adapter *a = mt_lora_adapter(l);
    int n = 0;
    for (int i = 0; i < mt_model_linear_count(m); i++) n += a->lin[i] != NULL;
    return n;
}

/* ---- finite differences through the whole model ---- */

static void fd_tensor(fd_ctx *c, mt_lora_tensor *t, mt_rng *r, double *worst, int *checked, int *skipped) {
    float *g = mt_xmalloc((size_t)t->numel * sizeof(float));
    memcpy(g, t->grad, (size_t)t->numel * sizeof(float));
    double scale = 0;
    for (int64_t i = 0; i < t->numel; i++) scale = fmax(scale, fabs(g[i]));
    assert_true(scale > 0); /* every adapted kind receives a gradient */
    for (int k = 0; k < 2; k++) {
        long best = (long)mt_rng_below(r, (uint64_t)t->numel);
        for (int s = 0; s < 6; s++) {
            long j = (long)mt_rng_below(r, (uint64_t)t->numel);
            if (fabs(g[j]) > fabs(g[best])) best = j;
        }
        if (!fd_entry(c, t->data, g[best], scale, t->name, best, worst)) ++*skipped;
        ++*checked;
    }
    free(g);
}

/* LoRA on every linear of the family (all-linear plus the router), a few entries of one A
 * and one B of each kind of linear, and of the input embeddings. */
static void fd_family(const char *variant, float dropout) {
    mt_error err = {0};
    fd_ctx *c = mt_xcalloc(1, sizeof *c);
    c->m = load_fixture(g_be, variant);
    const mt_config *cfg = mt_model_config(c->m);
    int V = cfg->vocab_size, H = cfg->hidden_size;
    static const char *const targets[] = {"all-linear", "re:.*\\.(gate|block_sparse_moe\\.gate)"};
    mt_lora_config lc;
    mt_lora_config_default(&lc);
    lc.r = 3;
    lc.alpha = 5.0f;
    lc.dropout = dropout;
    lc.seed = 21;
    lc.targets = targets;
    lc.n_targets = 2;
    mt_lora *l = attach_ok(c->m, &lc);
    randomize_b(l, 5);
    mt_param *emb = mt_model_find_param(c->m, "model.embed_tokens.weight");
    if (mt_model_param_make_writable(c->m, emb, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_workspace_init(&c->ws, c->m, NB, NT, true, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    random_tokens(c->tokens, NB * NT, V, 77);
    for (int i = 0; i < NB * NT; i++) c->targets[i] = (i + 1) % NT ? c->tokens[i + 1] : MT_IGNORE_INDEX;
    c->b = (mt_batch){.B = NB, .T = NT, .tokens = c->tokens, .targets = c->targets};
    c->o = (mt_forward_opts){.train = true, .seed = 9, .adapter = mt_lora_adapter(l)};

    mt_lora_zero_grad(l);
    double loss = fd_loss(c);
    if (mt_model_backward(c->m, c->ws, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    float *din = mt_xmalloc((size_t)NB * NT * H * sizeof(float));
    memcpy(din, mt_workspace_input_grad(c->ws), (size_t)NB * NT * H * sizeof(float));
    /* frozen base: no parameter gained a gradient buffer */
    for (int i = 0; i < mt_model_param_count(c->m); i++) assert_null(mt_model_param(c->m, i)->grad);
    if (dropout > 0) {
        /* dropout is on: evaluation gives another loss, and the same seed the same one */
        mt_forward_opts train = c->o;
        c->o.train = false;
        double eval = fd_loss(c);
        c->o = train;
        assert_true(fabs(eval - loss) > 1e-4);
        assert_true(fd_loss(c) == loss);
    }

    mt_rng r;
    mt_rng_seed(&r, 4242);
    double worst = 0;
    int checked = 0, skipped = 0;
    bool seen[MT_LINEAR_KIND_COUNT] = {0};
    mt_lora_summary s;
    mt_lora_get_summary(l, &s);
    for (int i = 0; i < mt_lora_tensor_count(l); i += 2) {
        /* the module of tensor pair i: the one whose name the A tensor carries */
        const char *name = mt_lora_tensor_at(l, i)->name + strlen("base_model.model.");
        char module[512];
        snprintf(module, sizeof module, "%.*s", (int)(strstr(name, ".lora_A") - name), name);
        mt_linear *L = mt_model_find_linear(c->m, module);
        assert_non_null(L);
        bool kv_b = strstr(module, "kv_b_proj") != NULL;
        if (seen[L->kind] && !kv_b) continue;
        seen[L->kind] = true;
        fd_tensor(c, mt_lora_tensor_at(l, i), &r, &worst, &checked, &skipped);
        fd_tensor(c, mt_lora_tensor_at(l, i + 1), &r, &worst, &checked, &skipped);
    }
    for (int k = 0; k < MT_LINEAR_KIND_COUNT; k++)
        if (k != MT_LINEAR_LM_HEAD) assert_true(seen[k] == (s.modules[k] > 0));
    /* the input: a token that occurs once, its embedding row is that position's input */
    for (int pos = 0, found = 0; pos < NB * NT && found < 3; pos++) {
        int n = 0;
        for (int j = 0; j < NB * NT; j++) n += c->tokens[j] == c->tokens[pos];
        if (n != 1) continue;
        double scale = 0;
        for (int j = 0; j < H; j++) scale = fmax(scale, fabs(din[(size_t)pos * H + j]));
        int j = (int)mt_rng_below(&r, (uint64_t)H);
        if (fd_entry(c, emb->data + (size_t)c->tokens[pos] * H, din[(size_t)pos * H + j], scale, "input", (long)j,
                     &worst))
            found++;
        else
            skipped++;
        checked++;
    }
    print_message("[ lora ] %-12s dropout %.2f: %d modules, %d entries, worst normalised difference %.2g, %d near ties\n",
                  variant, (double)dropout, s.n_modules, checked, worst, skipped);
    assert_int_equal(skipped, 0);
    free(din);
    mt_workspace_free(c->ws);
    mt_lora_free(l);
    mt_model_free(c->m);
    free(c);
}

static void test_fd_no_dropout(void **state) {
    (void)state;
    fd_family("deepseek_v3", 0.0f); /* MLA, dense MLP, routed + shared experts, sigmoid router */
    fd_family("qwen2_moe", 0.0f);   /* biases, shared expert behind its sigmoid gate */
    fd_family("mixtral", 0.0f);
}

static void test_fd_dropout(void **state) {
    (void)state;
    fd_family("deepseek_v3", 0.25f);
    fd_family("qwen2_moe", 0.25f);
}

/* The delta on its own, through the model's linear (base GEMM taken off by a pass without
 * the adapter): with A selecting input column 0 and B all ones, the delta of every output is
 * s·dropout(x)[t, 0], so the kept fraction and the 1/(1−p) scale are visible; the backward
 * regenerates the same mask. */
static void lin_pass(mt_model *m, const mt_linear *L, const mt_adapter *ad, bool train, uint64_t row0, const float *x,
                     const float *dy, int n, float *y, float *dx, float *scratch, size_t cap) {
    const mt_adapter *slots[1] = {ad};
    mt_lin_ctx c = {.be = g_be, .train = train, .seed = 1234, .scratch = scratch, .scratch_cap = cap,
                    .adapters = ad ? slots : NULL, .n_slots = ad ? 1 : 0};
    mt_lin_forward(m, L, &c, x, n, row0, y);
    if (dx) mt_lin_backward(m, L, &c, x, dy, n, row0, dx);
}

static void test_dropout_mask(void **state) {
    (void)state;
    mt_model *m = load_fixture(g_be, "qwen3_moe");
    static const char *const t[] = {"model.layers.0.self_attn.q_proj"};
    mt_lora_config c;
    mt_lora_config_default(&c);
    c.r = 1;
    c.alpha = 2.0f;
    c.dropout = 0.3f;
    c.targets = t;
    c.n_targets = 1;
    mt_lora *l = attach_ok(m, &c);
    mt_linear *L = mt_model_find_linear(m, t[0]);
    mt_lora_tensor *A = mt_lora_tensor_at(l, 0), *B = mt_lora_tensor_at(l, 1);
    memset(A->data, 0, (size_t)A->numel * sizeof(float));
    A->data[0] = 1.0f;
    for (int64_t k = 0; k < B->numel; k++) B->data[k] = 1.0f;
    enum { N = 4000 };
    size_t ny = (size_t)N * L->out, nx = (size_t)N * L->in;
    float *x = mt_xmalloc(nx * sizeof(float)), *y = mt_xcalloc(ny, sizeof(float)), *y0 = mt_xcalloc(ny, sizeof(float));
    float *dy = mt_xmalloc(ny * sizeof(float)), *dx = mt_xcalloc(nx, sizeof(float)), *dx0 = mt_xcalloc(nx, sizeof(float));
    size_t cap = mt_adapter_scratch_floats(m, N, 1);
    float *scratch = mt_xmalloc(cap * sizeof(float));
    for (size_t i = 0; i < nx; i++) x[i] = 1.0f;
    for (size_t i = 0; i < ny; i++) dy[i] = 1.0f;
    const mt_adapter *ad = mt_lora_adapter(l);
    lin_pass(m, L, NULL, true, 500, x, dy, N, y0, dx0, scratch, cap);
    lin_pass(m, L, ad, true, 500, x, dy, N, y, dx, scratch, cap);
    int kept = 0;
    const float s = 2.0f, inv = 1.0f / 0.7f;
    for (int r = 0; r < N; r++) {
        float v = y[(size_t)r * L->out] - y0[(size_t)r * L->out];
        assert_true(fabsf(v) < 1e-4f || fabsf(v - s * inv) < 1e-4f);
        bool keep = fabsf(v) >= 1e-4f;
        for (int o = 1; o < L->out; o++)
            assert_true(fabsf(y[(size_t)r * L->out + o] - y0[(size_t)r * L->out + o] - (keep ? s * inv : 0.0f)) < 1e-4f);
        kept += keep;
        /* dx[t, 0] gains s·(dy·B)·A masked = s·out/(1−p) exactly where the forward kept x[t, 0] */
        float d = dx[(size_t)r * L->in] - dx0[(size_t)r * L->in];
        assert_true(!keep ? fabsf(d) < 1e-3f : fabsf(d - s * (float)L->out * inv) < 1e-3f);
        assert_true(dx[(size_t)r * L->in + 1] == dx0[(size_t)r * L->in + 1]);
    }
    double frac = (double)kept / N;
    print_message("[ lora ] dropout 0.30: kept %.4f of %d inputs\n", frac, N);
    assert_true(fabs(frac - 0.7) < 0.03);
    /* the gradient of B: every output's dB[o, 0] is s·Σ_t kept_t/(1−p) */
    assert_true(fabs(B->grad[0] - s * inv * (float)kept) < 1e-2 * kept);
    /* the backward from the forward's tape (h and the mask bits) equals one that recomputes
     * both: a forward on other rows in between invalidates the tape */
    for (size_t i = 0; i < nx; i++) x[i] = (float)((i * 7919u) % 1000u) / 500.0f - 1.0f;
    for (size_t i = 0; i < ny; i++) dy[i] = (float)((i * 104729u) % 1000u) / 500.0f - 1.0f;
    for (int64_t k = 0; k < A->numel; k++) A->data[k] = (float)((k * 31 % 17) - 8) / 16.0f;
    float *xo = mt_xmalloc(nx * sizeof(float)), *yo = mt_xcalloc(ny, sizeof(float));
    memcpy(xo, x, nx * sizeof(float));
    float *gt[3], *gr[3];
    for (int pass = 0; pass < 2; pass++) {
        mt_lora_zero_grad(l);
        memset(dx, 0, nx * sizeof(float));
        const mt_adapter *slots[1] = {ad};
        mt_lin_ctx lc = {.be = g_be, .train = true, .seed = 99, .scratch = scratch, .scratch_cap = cap,
                         .adapters = slots, .n_slots = 1};
        mt_lin_forward(m, L, &lc, x, N, 500, y);
        if (pass == 1) mt_lin_forward(m, L, &lc, xo, N / 2, 7, yo);
        mt_lin_backward(m, L, &lc, x, dy, N, 500, dx);
        float **g = pass == 0 ? gt : gr;
        g[0] = mt_xmalloc((size_t)A->numel * sizeof(float));
        g[1] = mt_xmalloc((size_t)B->numel * sizeof(float));
        g[2] = mt_xmalloc(nx * sizeof(float));
        memcpy(g[0], A->grad, (size_t)A->numel * sizeof(float));
        memcpy(g[1], B->grad, (size_t)B->numel * sizeof(float));
        memcpy(g[2], dx, nx * sizeof(float));
    }
    assert_memory_equal(gt[0], gr[0], (size_t)A->numel * sizeof(float));
    assert_memory_equal(gt[1], gr[1], (size_t)B->numel * sizeof(float));
    assert_memory_equal(gt[2], gr[2], nx * sizeof(float));
    for (int k = 0; k < 3; k++) {
        free(gt[k]);
        free(gr[k]);
    }
    free(xo);
    free(yo);
    for (size_t i = 0; i < nx; i++) x[i] = 1.0f;
    for (size_t i = 0; i < ny; i++) dy[i] = 1.0f;
    memset(A->data, 0, (size_t)A->numel * sizeof(float));
    A->data[0] = 1.0f;
    /* row0 moves the mask: the same rows at another offset are masked differently */
    float *y2 = mt_xcalloc(ny, sizeof(float));
    lin_pass(m, L, ad, true, 0, x, dy, N, y2, NULL, scratch, cap);
    assert_true(memcmp(y, y2, ny * sizeof(float)) != 0);
    /* outside training: no dropout at all */
    lin_pass(m, L, ad, false, 500, x, dy, N, y2, NULL, scratch, cap);
    for (int r = 0; r < N; r++) assert_true(fabsf(y2[(size_t)r * L->out] - y0[(size_t)r * L->out] - s) < 1e-4f);
    free(x);
    free(y);
    free(y0);
    free(y2);
    free(dy);
    free(dx);
    free(dx0);
    free(scratch);
    mt_lora_free(l);
    mt_model_free(m);
}

/* ---- merge, decode ---- */

static float *eval_logits(mt_model *m, const mt_adapter *ad, const int32_t *tokens) {
    mt_error err = {0};
    size_t n = (size_t)NB * NT * mt_model_config(m)->vocab_size;
    float *out = mt_xmalloc(n * sizeof(float));
    mt_workspace *ws;
    if (mt_workspace_init(&ws, m, NB, NT, false, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_batch b = {.B = NB, .T = NT, .tokens = tokens};
    mt_forward_opts o = {.logits_out = out, .adapter = ad};
    if (mt_model_forward(m, ws, &b, &o, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_workspace_free(ws);
    return out;
}

static void test_merge(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = load_fixture(g_be, "deepseek_v3");
    int V = mt_model_config(m)->vocab_size;
    size_t n = (size_t)NB * NT * V;
    int32_t tokens[NB * NT];
    random_tokens(tokens, NB * NT, V, 3);
    float *base = eval_logits(m, NULL, tokens);
    static const char *const t[] = {"all-linear", "mlp.gate"};
    mt_lora_config c;
    mt_lora_config_default(&c);
    c.targets = t;
    c.n_targets = 2;
    c.use_rslora = true;
    mt_lora *l = attach_ok(m, &c);
    randomize_b(l, 8);
    /* copies of every adapted weight before the merge */
    int nl = mt_model_linear_count(m);
    float **w0 = mt_xcalloc((size_t)nl, sizeof *w0);
    for (int i = 0; i < nl; i++) {
        mt_linear *L = mt_model_linear(m, i);
        if (!mt_lora_adapter(l)->lin[i]) continue;
        w0[i] = mt_xmalloc((size_t)L->weight->numel * sizeof(float));
        memcpy(w0[i], L->weight->data, (size_t)L->weight->numel * sizeof(float));
    }
    float *hooked = eval_logits(m, mt_lora_adapter(l), tokens);
    assert_true(mt_test_rel_err(hooked, base, n, 1e-30) > 1e-2);
    assert_int_equal(mt_lora_merge(l, &err), MT_OK);
    /* merged, the weights hold the delta: the adapter is no longer handed to passes */
    assert_null(mt_lora_adapter(l));
    float *merged = eval_logits(m, NULL, tokens);
    mt_test_assert_close("merged vs adapter applied", merged, hooked, n, 1e-5);
    double e_merge = mt_test_rel_err(merged, hooked, n, 1e-30);
    mt_error e2 = {0};
    assert_int_equal(mt_lora_merge(l, &e2), MT_ERR_INVALID);
    assert_int_equal(mt_lora_unmerge(l, &err), MT_OK);
    double w_err = 0;
    long exact = 0, total = 0;
    for (int i = 0; i < nl; i++) {
        if (!w0[i]) continue;
        mt_linear *L = mt_model_linear(m, i);
        w_err = fmax(w_err, mt_test_rel_err(L->weight->data, w0[i], (size_t)L->weight->numel, 1e-30));
        for (int64_t k = 0; k < L->weight->numel; k++) exact += L->weight->data[k] == w0[i][k];
        total += L->weight->numel;
    }
    print_message("[ lora ] merge: logits rel err %.2g; unmerge: weights rel err %.2g, %.1f%% bit-exact\n", e_merge,
                  w_err, 100.0 * (double)exact / (double)total);
    assert_true(w_err <= 1e-6);
    e2 = (mt_error){0};
    assert_int_equal(mt_lora_unmerge(l, &e2), MT_ERR_INVALID);
    float *again = eval_logits(m, mt_lora_adapter(l), tokens);
    mt_test_assert_close("unmerged, the adapter applied again", again, hooked, n, 1e-5);
    /* without the adapter: the base alone */
    float *off = eval_logits(m, NULL, tokens);
    mt_test_assert_close("no adapter", off, base, n, 1e-5);
    /* freeing a merged adapter restores the weights */
    assert_int_equal(mt_lora_merge(l, &err), MT_OK);
    mt_lora_free(l);
    free(off);
    off = eval_logits(m, NULL, tokens);
    mt_test_assert_close("freed while merged", off, base, n, 1e-5);
    for (int i = 0; i < nl; i++) free(w0[i]);
    free(w0);
    free(base);
    free(hooked);
    free(merged);
    free(again);
    free(off);
    mt_model_free(m);
}

/* The KV-cache decode (MLA's absorbed attention takes kv_b_proj's delta as two low-rank
 * products per head) gives the full forward's logits with a LoRA adapter. */
static void test_decode(void **state) {
    (void)state;
    mt_error err = {0};
    static const char *const variants[] = {"deepseek_v3", "qwen3_moe"};
    for (int v = 0; v < 2; v++) {
        mt_model *m = load_fixture(g_be, variants[v]);
        int V = mt_model_config(m)->vocab_size;
        static const char *const t[] = {"all-linear"};
        mt_lora *l = attach(m, t, 1, 4, 8.0f, &err);
        assert_non_null(l);
        randomize_b(l, 2);
        int32_t tokens[NB * NT];
        random_tokens(tokens, NB * NT, V, 4);
        float *full = eval_logits(m, mt_lora_adapter(l), tokens);
        mt_kv_cache *kv;
        if (mt_kv_cache_init(&kv, m, NT, &err) != MT_OK) fail_msg("%s", err.msg);
        if (mt_kv_cache_set_adapter(kv, mt_lora_adapter(l), &err) != MT_OK) fail_msg("%s", err.msg);
        float *row = mt_xmalloc((size_t)V * sizeof(float));
        for (int t2 = 0; t2 < NT; t2++) {
            if (mt_model_decode(m, kv, tokens + t2, 1, row, &err) != MT_OK) fail_msg("%s", err.msg);
            char what[64];
            snprintf(what, sizeof what, "%s decode position %d", variants[v], t2);
            mt_test_assert_close(what, row, full + (size_t)t2 * V, (size_t)V, 1e-4);
        }
        free(row);
        free(full);
        mt_kv_cache_free(kv);
        mt_lora_free(l);
        mt_model_free(m);
    }
}

/* ---- target selection ---- */

static int n_modules(const mt_lora *l) {
    mt_lora_summary s;
    mt_lora_get_summary(l, &s);
    return s.n_modules;
}

static void expect_targets(mt_model *m, const char *const *t, int n, int want, const char *why) {
    mt_error err = {0};
    mt_lora *l = attach(m, t, n, 2, 4.0f, &err);
    if (!l) fail_msg("%s: %s", why, err.msg);
    if (n_modules(l) != want) fail_msg("%s: %d modules, want %d", why, n_modules(l), want);
    mt_lora_free(l);
}

static void test_targets(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = load_fixture(g_be, "deepseek_v3");
    int attn = count_kind(m, MT_LINEAR_ATTN), mlp = count_kind(m, MT_LINEAR_MLP), ex = count_kind(m, MT_LINEAR_EXPERT),
        sh = count_kind(m, MT_LINEAR_SHARED), router = count_kind(m, MT_LINEAR_ROUTER);
    assert_true(attn > 0 && mlp > 0 && ex > 0 && sh > 0 && router > 0);

    static const char *const all[] = {"all-linear"};
    mt_lora *l = attach(m, all, 1, 2, 4.0f, &err);
    assert_non_null(l);
    mt_lora_summary s;
    mt_lora_get_summary(l, &s);
    assert_int_equal(s.modules[MT_LINEAR_ATTN], attn);
    assert_int_equal(s.modules[MT_LINEAR_MLP], mlp);
    assert_int_equal(s.modules[MT_LINEAR_EXPERT], ex);
    assert_int_equal(s.modules[MT_LINEAR_SHARED], sh);
    assert_int_equal(s.modules[MT_LINEAR_ROUTER], 0);
    assert_int_equal(s.modules[MT_LINEAR_LM_HEAD], 0);
    int64_t params = 0;
    for (int i = 0; i < mt_lora_tensor_count(l); i++) params += mt_lora_tensor_at(l, i)->numel;
    assert_int_equal(s.n_params, params);
    assert_true(s.base_params > s.n_params);
    assert_string_equal(mt_linear_kind_name(MT_LINEAR_EXPERT), "expert");
    assert_string_equal(mt_linear_kind_name(MT_LINEAR_ROUTER), "router");
    /* adapters are data: a second one on the same linears coexists with the first */
    static const char *const q[] = {"q_a_proj"};
    mt_error e2 = {0};
    mt_lora *l2 = attach(m, q, 1, 2, 4.0f, &e2);
    assert_non_null(l2);
    assert_int_equal(count_adapted(l, m), n_modules(l));
    assert_int_equal(count_adapted(l2, m), mt_model_config(m)->n_layers);
    mt_lora_free(l2);
    mt_lora_free(l);

    static const char *const t1[] = {"ALL-LINEAR", "mlp.gate"};
    expect_targets(m, t1, 2, attn + mlp + ex + sh + router, "all-linear (any case) plus the router");
    static const char *const t2[] = {"gate_proj"};
    expect_targets(m, t2, 1, mlp / 3 + ex / 3 + sh / 3, "suffix gate_proj: dense, routed and shared");
    static const char *const t3[] = {"mlp.experts.*.gate_proj"};
    expect_targets(m, t3, 1, ex / 3, "glob over the expert index");
    static const char *const t4[] = {"experts.*.*"};
    expect_targets(m, t4, 1, ex, "globs never cross a '.'");
    static const char *const t5[] = {"re:model\\.layers\\.1\\..*_proj"};
    int layer1 = 0;
    for (int i = 0; i < mt_model_linear_count(m); i++) {
        const char *p = mt_model_linear(m, i)->module;
        layer1 += !strncmp(p, "model.layers.1.", 15) && strlen(p) > 5 && !strcmp(p + strlen(p) - 5, "_proj");
    }
    expect_targets(m, t5, 1, layer1, "full-match regex");
    static const char *const t6[] = {"re:layers\\.1"};
    mt_error e3 = {0};
    assert_null(attach(m, t6, 1, 2, 4.0f, &e3));
    assert_int_equal(e3.code, MT_ERR_NOT_FOUND); /* a regex must match the whole path */
    static const char *const t7[] = {"o_proj", "experts.3.down_proj"};
    expect_targets(m, t7, 2, attn / 5 + ex / (3 * mt_model_config(m)->n_experts), "two suffixes");

    /* exclude */
    static const char *const ex_re[] = {"re:.*experts\\.[0-9]+\\..*", "kv_b_proj"};
    mt_lora_config c;
    mt_lora_config_default(&c);
    c.targets = all;
    c.n_targets = 1;
    c.exclude = ex_re;
    c.n_exclude = 2;
    l = attach_ok(m, &c);
    mt_lora_get_summary(l, &s);
    assert_int_equal(s.modules[MT_LINEAR_EXPERT], 0);
    assert_int_equal(s.modules[MT_LINEAR_ATTN], attn - attn / 5);
    mt_lora_free(l);
    static const char *const ex_all[] = {"all-linear"};
    c.exclude = ex_all;
    c.n_exclude = 1;
    mt_error e4 = {0};
    mt_lora *none = NULL;
    assert_int_equal(mt_lora_attach(&none, m, &c, &e4), MT_ERR_NOT_FOUND);
    assert_null(none);

    /* a target matching nothing names itself and lists the model's modules */
    static const char *const miss[] = {"o_proj", "q_proj"};
    mt_error e5 = {0};
    assert_null(attach(m, miss, 2, 2, 4.0f, &e5));
    assert_int_equal(e5.code, MT_ERR_NOT_FOUND);
    assert_non_null(strstr(e5.msg, "\"q_proj\""));
    assert_non_null(strstr(e5.msg, "model.layers.*.self_attn.q_a_proj"));
    assert_non_null(strstr(e5.msg, "model.layers.*.mlp.experts.*.gate_proj"));
    static const char *const bad_re[] = {"re:(q_proj"};
    mt_error e6 = {0};
    assert_null(attach(m, bad_re, 1, 2, 4.0f, &e6));
    assert_int_equal(e6.code, MT_ERR_INVALID);
    assert_non_null(strstr(e6.msg, "(q_proj"));
    mt_error e7 = {0};
    assert_null(attach(m, all, 1, 0, 4.0f, &e7));
    assert_int_equal(e7.code, MT_ERR_INVALID);
    c.exclude = NULL;
    c.n_exclude = 0;
    c.n_targets = 0;
    mt_error e8 = {0};
    assert_int_equal(mt_lora_attach(&none, m, &c, &e8), MT_ERR_INVALID);

    /* rank_pattern / alpha_pattern as PEFT's get_pattern_key reads them: the key must match
     * the path's end on a '.' boundary; the first key that matches wins */
    static const char *const rk[] = {"b_proj", ".*b_proj", "q_b_proj"};
    static const int rv[] = {7, 3, 5};
    static const char *const ak[] = {"layers\\.1\\.self_attn\\.o_proj"};
    static const float av[] = {2.5f};
    mt_lora_config_default(&c);
    c.r = 4;
    c.alpha = 8.0f;
    c.targets = all;
    c.n_targets = 1;
    c.rank_keys = rk;
    c.rank_values = rv;
    c.n_rank = 3;
    c.alpha_keys = ak;
    c.alpha_values = av;
    c.n_alpha = 1;
    l = attach_ok(m, &c);
    for (int i = 0; i < mt_lora_tensor_count(l); i += 2) {
        const mt_lora_tensor *t = mt_lora_tensor_at(l, i);
        bool b_proj = strstr(t->name, "q_b_proj.") || strstr(t->name, "kv_b_proj.");
        assert_int_equal(t->shape[0], b_proj ? 3 : 4);
    }
    mt_lora_free(l);
    mt_model_free(m);
}

/* ---- save and load ---- */

static char *slurp(const char *dir, const char *name) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    mt_error err = {0};
    char *s = NULL;
    if (mt_read_file(path, &s, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    return s;
}

static void test_round_trip(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = load_fixture(g_be, "qwen2_moe");
    int V = mt_model_config(m)->vocab_size;
    static const char *const t[] = {"all-linear"};
    static const char *const rk[] = {"q_proj"};
    static const int rv[] = {6};
    static const char *const ak[] = {".*shared_expert\\..*"};
    static const float av[] = {3.5f};
    mt_lora_config c;
    mt_lora_config_default(&c);
    c.r = 4;
    c.alpha = 16.0f;
    c.dropout = 0.05f;
    c.use_rslora = true;
    c.init = MT_LORA_INIT_GAUSSIAN;
    c.seed = 77;
    c.targets = t;
    c.n_targets = 1;
    c.rank_keys = rk;
    c.rank_values = rv;
    c.n_rank = 1;
    c.alpha_keys = ak;
    c.alpha_values = av;
    c.n_alpha = 1;
    mt_lora *l = attach_ok(m, &c);
    /* gaussian init: A ~ N(0, (1/r)²) */
    double sum2 = 0;
    long cnt = 0;
    for (int i = 0; i < mt_lora_tensor_count(l); i += 2) {
        mt_lora_tensor *a = mt_lora_tensor_at(l, i);
        if (a->shape[0] != 4) continue;
        for (int64_t k = 0; k < a->numel; k++) sum2 += (double)a->data[k] * a->data[k];
        cnt += a->numel;
    }
    assert_true(fabs(sqrt(sum2 / (double)cnt) - 0.25) < 0.02);
    randomize_b(l, 12);
    int32_t tokens[NB * NT];
    random_tokens(tokens, NB * NT, V, 6);
    float *before = eval_logits(m, mt_lora_adapter(l), tokens);

    const char *tmp = mt_test_tmpdir("test_lora_round_trip");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/adapter", tmp);
    mt_lora_meta meta = {.run_id = 42, .thresholds_json = "{\"dap\": 0.31, \"base\": 0.5}"};
    snprintf(meta.base_model, sizeof meta.base_model, "/models/base");
    mt_model_content_hash(m, meta.base_hash);
    assert_int_equal(mt_lora_save_peft(l, dir, &meta, &err), MT_OK);
    char *cfg = slurp(dir, "adapter_config.json");
    /* PEFT's own spelling, json.dumps(indent=2, sort_keys=True) */
    assert_non_null(strstr(cfg, "{\n  \"alpha_pattern\": {\n    \".*shared_expert\\\\..*\": 3.5\n  },\n"));
    assert_non_null(strstr(cfg, "\n  \"lora_alpha\": 16,\n  \"lora_dropout\": 0.05,\n"));
    assert_non_null(strstr(cfg, "\"init_lora_weights\": \"gaussian\""));
    assert_non_null(strstr(cfg, "\"rank_pattern\": {\n    \"q_proj\": 6\n  }"));
    assert_non_null(strstr(cfg, "\"use_rslora\": true\n}"));
    assert_non_null(strstr(cfg, "\"peft_type\": \"LORA\""));
    assert_non_null(strstr(cfg, "\"base_model_name_or_path\": \"/models/base\""));
    assert_non_null(strstr(cfg, "\"target_modules\": [\n    \"down_proj\",\n    \"gate_proj\",\n"));
    assert_non_null(strstr(cfg, "\"shared_expert_gate\""));
    /* a second save writes the same bytes */
    char dir2[4200];
    snprintf(dir2, sizeof dir2, "%s/again", tmp);
    assert_int_equal(mt_lora_save_peft(l, dir2, &meta, &err), MT_OK);
    char *cfg2 = slurp(dir2, "adapter_config.json");
    assert_string_equal(cfg, cfg2);
    free(cfg2);
    free(cfg);

    mt_model *m2 = load_fixture(g_be, "qwen2_moe");
    mt_lora *l2 = NULL;
    mt_lora_meta got;
    assert_int_equal(mt_lora_load_peft(&l2, m2, dir, &got, &err), MT_OK);
    assert_int_equal(mt_lora_tensor_count(l2), mt_lora_tensor_count(l));
    for (int i = 0; i < mt_lora_tensor_count(l); i++) {
        mt_lora_tensor *a = mt_lora_tensor_at(l, i), *b = mt_lora_tensor_at(l2, i);
        assert_string_equal(a->name, b->name);
        assert_memory_equal(a->shape, b->shape, sizeof a->shape);
        assert_memory_equal(a->data, b->data, (size_t)a->numel * sizeof(float));
    }
    float *after = eval_logits(m2, mt_lora_adapter(l2), tokens);
    assert_memory_equal(before, after, (size_t)NB * NT * V * sizeof(float));
    assert_string_equal(got.base_hash, meta.base_hash);
    assert_string_equal(got.base_model, "/models/base");
    assert_int_equal(got.run_id, 42);
    assert_non_null(got.thresholds_json);
    assert_non_null(strstr(got.thresholds_json, "\"dap\":0.31"));
    free(got.thresholds_json);
    /* saved again from the loaded adapter: the same config (patterns as given still hold) */
    char dir3[4200];
    snprintf(dir3, sizeof dir3, "%s/resaved", tmp);
    assert_int_equal(mt_lora_save_peft(l2, dir3, &meta, &err), MT_OK);
    char *a1 = slurp(dir, "adapter_config.json"), *a3 = slurp(dir3, "adapter_config.json");
    assert_string_equal(a1, a3);
    free(a1);
    free(a3);
    mt_lora_free(l2);

    /* without moetune.json the safetensors metadata still carries it */
    char path[4300];
    snprintf(path, sizeof path, "%s/moetune.json", dir);
    assert_int_equal(remove(path), 0);
    assert_int_equal(mt_lora_load_peft(&l2, m2, dir, &got, &err), MT_OK);
    assert_string_equal(got.base_hash, meta.base_hash);
    assert_int_equal(got.run_id, 42);
    assert_non_null(got.thresholds_json);
    free(got.thresholds_json);
    mt_lora_free(l2);

    /* one regex target is saved as PEFT's string form; moetune reads it back the same */
    static const char *const re[] = {"re:.*\\.(q_proj|v_proj)"};
    mt_lora *l3 = attach(m2, re, 1, 2, 4.0f, &err);
    assert_non_null(l3);
    snprintf(dir3, sizeof dir3, "%s/regex", tmp);
    assert_int_equal(mt_lora_save_peft(l3, dir3, NULL, &err), MT_OK);
    char *rc = slurp(dir3, "adapter_config.json");
    assert_non_null(strstr(rc, "\"target_modules\": \".*\\\\.(q_proj|v_proj)\""));
    assert_non_null(strstr(rc, "\"base_model_name_or_path\": null"));
    free(rc);
    int n3 = n_modules(l3);
    mt_lora_free(l3);
    assert_int_equal(mt_lora_load_peft(&l3, m2, dir3, NULL, &err), MT_OK);
    assert_int_equal(n_modules(l3), n3);
    mt_lora_free(l3);

    /* bad thresholds are refused before anything is written */
    mt_lora_meta badm = {.thresholds_json = "[1, 2"};
    snprintf(dir3, sizeof dir3, "%s/badmeta", tmp);
    mt_error e2 = {0};
    assert_int_equal(mt_lora_save_peft(l, dir3, &badm, &e2), MT_ERR_INVALID);
    assert_false(mt_path_exists(dir3));
    free(before);
    free(after);
    mt_lora_free(l);
    mt_model_free(m);
    mt_model_free(m2);
}

/* ---- malformed folders ---- */

static void write_text(const char *dir, const char *name, const char *text) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    mt_error err = {0};
    if (mt_write_file_atomic(path, text, strlen(text), &err) != MT_OK) fail_msg("%s", err.msg);
}

/* One q_proj pair of qwen3_moe's layer 0 ([64, 32]) under `prefix`, shapes overridable. */
static void write_weights(const char *dir, const char *module, int r, int in, int out, bool with_b, float poison) {
    char path[4200], na[512], nb[512];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    snprintf(na, sizeof na, "base_model.model.%s.lora_A.weight", module);
    snprintf(nb, sizeof nb, "base_model.model.%s.lora_B.weight", module);
    float *a = mt_xcalloc((size_t)r * in, sizeof(float)), *b = mt_xcalloc((size_t)out * r, sizeof(float));
    a[0] = poison;
    int64_t sa[2] = {r, in}, sb[2] = {out, r};
    mt_st_writer *w = mt_st_writer_init();
    mt_st_writer_add(w, na, MT_DTYPE_F32, 2, sa, a);
    if (with_b) mt_st_writer_add(w, nb, MT_DTYPE_F32, 2, sb, b);
    mt_error err = {0};
    if (mt_st_writer_save(w, path, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_st_writer_free(w);
    free(a);
    free(b);
}

#define GOOD_CFG(extra)                                                                                              \
    "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"], \"bias\": \"none\"" \
    extra "}"

static void expect_load_error(mt_model *m, const char *dir, mt_status code, const char *needle1, const char *needle2) {
    mt_error err = {0};
    mt_lora *l = NULL;
    mt_status st = mt_lora_load_peft(&l, m, dir, NULL, &err);
    if (st != code) fail_msg("expected %s, got %s: %s", mt_status_name(code), mt_status_name(st), err.msg);
    assert_null(l);
    if (needle1 && !strstr(err.msg, needle1)) fail_msg("message lacks \"%s\": %s", needle1, err.msg);
    if (needle2 && !strstr(err.msg, needle2)) fail_msg("message lacks \"%s\": %s", needle2, err.msg);
}

static void test_load_errors(void **state) {
    (void)state;
    mt_model *m = load_fixture(g_be, "qwen3_moe");
    const char *q = "model.layers.0.self_attn.q_proj";
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", mt_test_tmpdir("test_lora_errors"));

    expect_load_error(m, "/nonexistent/adapter", MT_ERR_NOT_FOUND, "/nonexistent/adapter", NULL);
    expect_load_error(m, dir, MT_ERR_IO, "adapter_config.json", NULL);
    write_text(dir, "adapter_config.json", "{\"peft_type\": \"LORA\", ");
    expect_load_error(m, dir, MT_ERR_FORMAT, "adapter_config.json", "not valid JSON");

    static const struct {
        const char *cfg;
        mt_status code;
        const char *field;
    } bad_cfg[] = {
        {"{\"peft_type\": \"IA3\", \"target_modules\": [\"q_proj\"]}", MT_ERR_UNSUPPORTED, "\"peft_type\""},
        {GOOD_CFG(", \"fan_in_fan_out\": true"), MT_ERR_UNSUPPORTED, "\"fan_in_fan_out\""},
        {GOOD_CFG(", \"use_dora\": true"), MT_ERR_UNSUPPORTED, "\"use_dora\""},
        {GOOD_CFG(", \"modules_to_save\": [\"lm_head\"]"), MT_ERR_UNSUPPORTED, "\"modules_to_save\""},
        {"{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"q_proj\"], \"bias\": \"all\"}", MT_ERR_UNSUPPORTED,
         "\"bias\""},
        {GOOD_CFG(", \"init_lora_weights\": \"pissa_niter_4\""), MT_ERR_UNSUPPORTED, "\"init_lora_weights\""},
        {GOOD_CFG(", \"lora_bias\": true"), MT_ERR_UNSUPPORTED, "\"lora_bias\""},
        {"{\"peft_type\": \"LORA\", \"r\": \"eight\", \"target_modules\": [\"q_proj\"]}", MT_ERR_FORMAT, "\"r\""},
        {"{\"peft_type\": \"LORA\", \"r\": 2.5, \"target_modules\": [\"q_proj\"]}", MT_ERR_FORMAT, "\"r\""},
        {"{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": 7}", MT_ERR_FORMAT, "\"target_modules\""},
        {"{\"peft_type\": \"LORA\", \"r\": 4}", MT_ERR_FORMAT, "\"target_modules\""},
        {GOOD_CFG(", \"lora_dropout\": 1.5"), MT_ERR_FORMAT, "\"lora_dropout\""},
        {GOOD_CFG(", \"rank_pattern\": {\"q_proj\": 0}"), MT_ERR_FORMAT, "\"rank_pattern\""},
        {GOOD_CFG(", \"alpha_pattern\": {\"(q_proj\": 2}"), MT_ERR_INVALID, "\"alpha_pattern\""},
        {GOOD_CFG(", \"use_rslora\": \"yes\""), MT_ERR_FORMAT, "\"use_rslora\""},
        {"[1, 2]", MT_ERR_FORMAT, "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad_cfg / sizeof bad_cfg[0]; i++) {
        write_text(dir, "adapter_config.json", bad_cfg[i].cfg);
        expect_load_error(m, dir, bad_cfg[i].code, "adapter_config.json", bad_cfg[i].field);
    }

    /* weights */
    write_text(dir, "adapter_config.json", GOOD_CFG(""));
    expect_load_error(m, dir, MT_ERR_NOT_FOUND, "adapter_model.safetensors", NULL);
    write_text(dir, "adapter_model.bin", "pickle");
    expect_load_error(m, dir, MT_ERR_UNSUPPORTED, "adapter_model.bin", NULL);
    write_weights(dir, "model.layers.0.self_attn.q_proj", 4, 32, 64, true, 0.0f);
    mt_error err = {0};
    mt_lora *l = NULL;
    assert_int_equal(mt_lora_load_peft(&l, m, dir, NULL, &err), MT_OK); /* the good case */
    assert_int_equal(n_modules(l), 1);
    mt_lora_free(l);
    write_weights(dir, "model.layers.0.self_attn.q_proj", 4, 32, 60, true, 0.0f);
    expect_load_error(m, dir, MT_ERR_FORMAT, "lora_B [60, 4]", q);
    write_weights(dir, "model.layers.0.self_attn.q_proj", 2, 32, 64, true, 0.0f);
    expect_load_error(m, dir, MT_ERR_FORMAT, "r = 4", q);
    write_weights(dir, "model.layers.0.self_attn.q_proj", 4, 32, 64, false, 0.0f);
    expect_load_error(m, dir, MT_ERR_FORMAT, "exactly one lora_A and one lora_B", q);
    write_weights(dir, "model.layers.7.self_attn.q_proj", 4, 32, 64, true, 0.0f);
    expect_load_error(m, dir, MT_ERR_NOT_FOUND, "model.layers.7.self_attn.q_proj", "does not have");
    write_weights(dir, "model.layers.0.self_attn.k_proj", 4, 32, 32, true, 0.0f);
    expect_load_error(m, dir, MT_ERR_FORMAT, "model.layers.0.self_attn.k_proj", "do not select");
    write_weights(dir, "model.layers.0.self_attn.q_proj", 4, 32, 64, true, NAN);
    expect_load_error(m, dir, MT_ERR_NUMERIC, "non-finite", NULL);
    /* a key that is no LoRA factor (DoRA's magnitude, say) */
    {
        char path[4200];
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        float v[64] = {0};
        int64_t shape[1] = {64};
        mt_st_writer *w = mt_st_writer_init();
        mt_st_writer_add(w, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", MT_DTYPE_F32, 1,
                         shape, v);
        if (mt_st_writer_save(w, path, &err) != MT_OK) fail_msg("%s", err.msg);
        mt_st_writer_free(w);
        expect_load_error(m, dir, MT_ERR_FORMAT, "lora_magnitude_vector", "not a LoRA factor");
        /* a truncated file: the safetensors reader's own checks */
        write_weights(dir, "model.layers.0.self_attn.q_proj", 4, 32, 64, true, 0.0f);
        char *bytes;
        size_t size;
        assert_int_equal(mt_read_file(path, &bytes, &size, &err), MT_OK);
        assert_int_equal(mt_write_file_atomic(path, bytes, size - 16, &err), MT_OK);
        free(bytes);
        expect_load_error(m, dir, MT_ERR_FORMAT, "adapter_model.safetensors", NULL);
    }

    /* accepted spellings: the adapter name in the keys, a regex string, layers_to_transform */
    {
        char path[4200];
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        float a[4 * 32] = {0}, b[64 * 4] = {0};
        a[0] = 1.0f;
        b[0] = 1.0f;
        int64_t sa[2] = {4, 32}, sb[2] = {64, 4};
        mt_st_writer *w = mt_st_writer_init();
        mt_st_writer_add(w, "base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight", MT_DTYPE_F32, 2, sa,
                         a);
        mt_st_writer_add(w, "base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight", MT_DTYPE_BF16, 2, sb,
                         b);
        if (mt_st_writer_save(w, path, &err) != MT_OK) fail_msg("%s", err.msg);
        mt_st_writer_free(w);
        write_text(dir, "adapter_config.json",
                   "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": \".*\\\\.q_proj\"}");
        assert_int_equal(mt_lora_load_peft(&l, m, dir, NULL, &err), MT_OK);
        assert_float_equal(mt_lora_tensor_at(l, 1)->data[0], 1.0f, 0);
        mt_lora_free(l);
        write_text(dir, "adapter_config.json", GOOD_CFG(", \"layers_to_transform\": [1]"));
        assert_int_equal(mt_lora_load_peft(&l, m, dir, NULL, &err), MT_OK);
        mt_lora_free(l);
        write_text(dir, "adapter_config.json", GOOD_CFG(", \"layers_to_transform\": 0"));
        expect_load_error(m, dir, MT_ERR_FORMAT, "do not select", NULL);
        write_text(dir, "adapter_config.json", GOOD_CFG(", \"exclude_modules\": [\"q_proj\"]"));
        expect_load_error(m, dir, MT_ERR_FORMAT, "do not select", NULL);
        /* moetune.json that is not JSON */
        write_text(dir, "adapter_config.json", GOOD_CFG(""));
        write_text(dir, "moetune.json", "{\"base_hash\": 5}");
        expect_load_error(m, dir, MT_ERR_FORMAT, "moetune.json", "base_hash");
    }
    mt_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_no_dropout), cmocka_unit_test(test_fd_dropout), cmocka_unit_test(test_dropout_mask),
        cmocka_unit_test(test_merge),         cmocka_unit_test(test_decode),     cmocka_unit_test(test_targets),
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
