/* test_model_grad.c — whole-model finite differences: for every family, central differences
 * of the loss (mean cross-entropy + aux_coef·aux, accumulated in double) at random entries of
 * every parameter, of the input embeddings and of adapters handed to the pass, against
 * the backward pass — with router jitter off and on. This catches what the fixtures cannot:
 * the aux-loss gradient of every family (DeepSeek's included), the jitter's backward, and the
 * adapter plumbing. Also: jitter off equals evaluation; jitter is seeded. */
#include "model_testlib.h"

#include <math.h>

static mt_backend *g_be;

/* One thread: thousands of forwards of a tiny model are dominated by thread start-up
 * otherwise, and the kernels' results do not depend on the thread count. */
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


/* Three entries of w [n]: those with the largest |g| among a few random picks. */
static void fd_array(fd_ctx *c, float *w, const float *g, long n, const char *what, mt_rng *r, double *worst,
                     int *skipped, int *checked) {
    double scale = 0;
    for (long i = 0; i < n; i++) scale = fmax(scale, fabs(g[i]));
    for (int k = 0; k < 3; k++) {
        long best = (long)mt_rng_below(r, (uint64_t)n);
        for (int t = 0; t < 6; t++) {
            long j = (long)mt_rng_below(r, (uint64_t)n);
            if (fabs(g[j]) > fabs(g[best])) best = j;
        }
        if (!fd_entry(c, w, g[best], scale, what, best, worst)) ++*skipped;
        ++*checked;
    }
}

static void fd_family(const char *variant, float noise, bool adapters) {
    mt_error err = {0};
    fd_ctx *c = mt_xcalloc(1, sizeof *c);
    c->m = load_fixture(g_be, variant);
    const mt_config *cfg = mt_model_config(c->m);
    int V = cfg->vocab_size, H = cfg->hidden_size;
    for (int i = 0; i < mt_model_param_count(c->m); i++)
        if (mt_model_require_grad(c->m, mt_model_param(c->m, i), &err) != MT_OK) fail_msg("%s", err.msg);
    /* adapters on a few linears of each kind */
    int nl = mt_model_linear_count(c->m);
    toy_set *ts = toy_set_new(c->m);
    toy_adapter **ad = ts->ad;
    if (adapters) {
        bool seen[MT_LINEAR_KIND_COUNT] = {0};
        for (int i = nl - 1; i >= 0; i--) {
            mt_linear *L = mt_model_linear(c->m, i);
            bool kv_b = strstr(L->module, "kv_b_proj") != NULL;
            if (seen[L->kind] && !kv_b) continue;
            seen[L->kind] = true;
            toy_add(ts, c->m, i, 3, 900 + (uint64_t)i);
        }
    }
    if (mt_workspace_init(&c->ws, c->m, NB, NT, true, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    random_tokens(c->tokens, NB * NT, V, 77);
    for (int i = 0; i < NB * NT; i++) c->targets[i] = (i + 1) % NT ? c->tokens[i + 1] : MT_IGNORE_INDEX;
    c->targets[3] = MT_IGNORE_INDEX;
    c->b = (mt_batch){.B = NB, .T = NT, .tokens = c->tokens, .targets = c->targets};
    c->o = (mt_forward_opts){.train = true, .seed = 5, .router_noise = noise, .aux_coef = 0.5f,
                             .adapter = adapters ? &ts->view : NULL};

    mt_model_zero_grad(c->m);
    fd_loss(c);
    if (mt_model_backward(c->m, c->ws, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    float *din = mt_xmalloc((size_t)NB * NT * H * sizeof(float));
    memcpy(din, mt_workspace_input_grad(c->ws), (size_t)NB * NT * H * sizeof(float));
    /* the gradients are read before any perturbed forward overwrites nothing they hold */
    int np = mt_model_param_count(c->m);
    float **g = mt_xcalloc((size_t)np, sizeof(float *));
    for (int i = 0; i < np; i++) {
        mt_param *p = mt_model_param(c->m, i);
        g[i] = mt_xmalloc((size_t)p->numel * sizeof(float));
        memcpy(g[i], p->grad, (size_t)p->numel * sizeof(float));
    }
    mt_rng r;
    mt_rng_seed(&r, 4242);
    double worst = 0;
    int skipped = 0, checked = 0;
    for (int i = 0; i < np; i++) {
        mt_param *p = mt_model_param(c->m, i);
        if (strstr(p->name, "e_score_correction_bias")) continue; /* selection only: no gradient */
        fd_array(c, p->data, g[i], (long)p->numel, p->name, &r, &worst, &skipped, &checked);
    }
    /* input embeddings: a token that occurs once, its embedding row is that position's input */
    mt_param *emb = mt_model_find_param(c->m, "model.embed_tokens.weight");
    for (int pos = 0, found = 0; pos < NB * NT && found < 3; pos++) {
        int n = 0;
        for (int j = 0; j < NB * NT; j++) n += c->tokens[j] == c->tokens[pos];
        if (n != 1) continue;
        double scale = 0;
        for (int j = 0; j < H; j++) scale = fmax(scale, fabs(din[(size_t)pos * H + j]));
        int j = (int)mt_rng_below(&r, (uint64_t)H);
        if (fd_entry(c, emb->data + (size_t)c->tokens[pos] * H, din[(size_t)pos * H + j], scale, "inputs_embeds",
                     (long)j, &worst))
            found++;
        else
            skipped++;
        checked++;
    }
    for (int i = 0; i < nl; i++) {
        if (!ad[i]) continue;
        char what[256];
        snprintf(what, sizeof what, "adapter A of %s", mt_model_linear(c->m, i)->module);
        float *gA = mt_xmalloc((size_t)ad[i]->r * ad[i]->in * sizeof(float));
        memcpy(gA, ad[i]->dA, (size_t)ad[i]->r * ad[i]->in * sizeof(float));
        fd_array(c, ad[i]->A, gA, (long)ad[i]->r * ad[i]->in, what, &r, &worst, &skipped, &checked);
        free(gA);
        snprintf(what, sizeof what, "adapter B of %s", mt_model_linear(c->m, i)->module);
        float *gB = mt_xmalloc((size_t)ad[i]->out * ad[i]->r * sizeof(float));
        memcpy(gB, ad[i]->dB, (size_t)ad[i]->out * ad[i]->r * sizeof(float));
        fd_array(c, ad[i]->Bm, gB, (long)ad[i]->out * ad[i]->r, what, &r, &worst, &skipped, &checked);
        free(gB);
    }
    print_message("%-16s noise %.2f%s: %d entries of %d parameters, worst normalised difference %.2g, %d near ties\n",
                  variant, noise, adapters ? ", adapters" : "", checked, np, worst, skipped);
    /* without jitter the fixtures have no near-tie at all; with it only a few entries may */
    assert_true(noise > 0 ? skipped * 20 <= checked : skipped == 0);
    for (int i = 0; i < np; i++) free(g[i]);
    free(g);
    free(din);
    toy_set_free(ts);
    mt_workspace_free(c->ws);
    mt_model_free(c->m);
    free(c);
}

static void fd_no_noise(void **state) {
    (void)state;
    for (int v = 0; v < N_VARIANTS; v++) fd_family(variant_name(v), 0.0f, false);
}

static void fd_noise_and_adapters(void **state) {
    (void)state;
    for (int v = 0; v < N_VARIANTS; v++) fd_family(variant_name(v), 0.05f, true);
}

/* Jitter off in training is evaluation; jitter on is deterministic for a seed, differs
 * across seeds, and never applies outside training. */
static void jitter_consistency(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = load_fixture(g_be, "mixtral");
    int V = mt_model_config(m)->vocab_size;
    mt_workspace *ws = NULL;
    if (mt_workspace_init(&ws, m, NB, NT, true, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t tokens[NB * NT];
    random_tokens(tokens, NB * NT, V, 31);
    size_t n = (size_t)NB * NT * V;
    float *l0 = mt_xmalloc(n * sizeof(float)), *l1 = mt_xmalloc(n * sizeof(float)), *l2 = mt_xmalloc(n * sizeof(float)),
          *l3 = mt_xmalloc(n * sizeof(float)), *l4 = mt_xmalloc(n * sizeof(float));
    mt_batch b = {.B = NB, .T = NT, .tokens = tokens};
    mt_forward_opts eval = {.logits_out = l0};
    mt_forward_opts off = {.train = true, .seed = 3, .logits_out = l1};
    mt_forward_opts on = {.train = true, .seed = 3, .router_noise = 0.1f, .logits_out = l2};
    mt_forward_opts on_again = on, other = on, not_train = {.router_noise = 0.1f, .seed = 3, .logits_out = l4};
    on_again.logits_out = l3;
    assert_int_equal(mt_model_forward(m, ws, &b, &eval, NULL, &err), MT_OK);
    assert_int_equal(mt_model_forward(m, ws, &b, &off, NULL, &err), MT_OK);
    assert_memory_equal(l0, l1, n * sizeof(float));
    assert_int_equal(mt_model_forward(m, ws, &b, &on, NULL, &err), MT_OK);
    assert_true(mt_test_rel_err(l2, l0, n, 1e-30) > 1e-4);
    assert_int_equal(mt_model_forward(m, ws, &b, &on_again, NULL, &err), MT_OK);
    assert_memory_equal(l2, l3, n * sizeof(float));
    other.seed = 4;
    other.logits_out = l3;
    assert_int_equal(mt_model_forward(m, ws, &b, &other, NULL, &err), MT_OK);
    assert_true(mt_test_rel_err(l3, l2, n, 1e-30) > 1e-5);
    assert_int_equal(mt_model_forward(m, ws, &b, &not_train, NULL, &err), MT_OK);
    assert_memory_equal(l4, l0, n * sizeof(float));
    free(l0);
    free(l1);
    free(l2);
    free(l3);
    free(l4);
    mt_workspace_free(ws);
    mt_model_free(m);
}

/* Per-token dloss generalises the mean: dloss = 1/n on tokens with targets is the default;
 * doubling it doubles every gradient; a frozen model still yields input gradients. */
static void dloss_and_frozen(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = load_fixture(g_be, "qwen3_moe");
    const mt_config *cfg = mt_model_config(m);
    int V = cfg->vocab_size, H = cfg->hidden_size, N = NB * NT;
    mt_workspace *ws = NULL;
    if (mt_workspace_init(&ws, m, NB, NT, true, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t tokens[NB * NT], targets[NB * NT];
    random_tokens(tokens, N, V, 8);
    for (int i = 0; i < N; i++) targets[i] = (i + 1) % NT ? tokens[i + 1] : MT_IGNORE_INDEX;
    mt_batch b = {.B = NB, .T = NT, .tokens = tokens, .targets = targets};
    mt_forward_opts o = {.train = true};
    mt_forward_result r;
    /* frozen: no parameter has a gradient buffer, the input gradient is still produced */
    assert_int_equal(mt_model_forward(m, ws, &b, &o, &r, &err), MT_OK);
    assert_int_equal(mt_model_backward(m, ws, NULL, &err), MT_OK);
    float *frozen = mt_xmalloc((size_t)N * H * sizeof(float));
    memcpy(frozen, mt_workspace_input_grad(ws), (size_t)N * H * sizeof(float));
    assert_true(mt_sum_squares(g_be, frozen, (size_t)N * H) > 0);

    mt_param *p = mt_model_find_param(m, "model.layers.1.self_attn.q_proj.weight");
    assert_non_null(p);
    assert_int_equal(mt_model_require_grad(m, p, &err), MT_OK);
    assert_int_equal(mt_model_forward(m, ws, &b, &o, &r, &err), MT_OK);
    assert_int_equal(mt_model_backward(m, ws, NULL, &err), MT_OK);
    mt_test_assert_close("frozen input gradient", mt_workspace_input_grad(ws), frozen, (size_t)N * H, 1e-6);
    float *g_mean = mt_xmalloc((size_t)p->numel * sizeof(float));
    memcpy(g_mean, p->grad, (size_t)p->numel * sizeof(float));
    float dloss[NB * NT];
    for (int i = 0; i < N; i++) dloss[i] = targets[i] == MT_IGNORE_INDEX ? 0.0f : 2.0f / (float)r.n_tokens;
    mt_model_zero_grad(m);
    assert_int_equal(mt_model_forward(m, ws, &b, &o, &r, &err), MT_OK);
    assert_int_equal(mt_model_backward(m, ws, dloss, &err), MT_OK);
    for (int64_t i = 0; i < p->numel; i++) g_mean[i] *= 2;
    mt_test_assert_close("dloss = 2/n", p->grad, g_mean, (size_t)p->numel, 1e-5);
    /* backward accumulates */
    assert_int_equal(mt_model_forward(m, ws, &b, &o, &r, &err), MT_OK);
    assert_int_equal(mt_model_backward(m, ws, dloss, &err), MT_OK);
    for (int64_t i = 0; i < p->numel; i++) g_mean[i] *= 2;
    mt_test_assert_close("accumulated", p->grad, g_mean, (size_t)p->numel, 1e-5);

    /* misuse: backward without a training forward */
    mt_forward_opts ev = {0};
    assert_int_equal(mt_model_forward(m, ws, &b, &ev, &r, &err), MT_OK);
    mt_error e2 = {0};
    assert_int_equal(mt_model_backward(m, ws, NULL, &e2), MT_ERR_INVALID);
    assert_non_null(strstr(e2.msg, "train = true"));
    free(frozen);
    free(g_mean);
    mt_workspace_free(ws);
    mt_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fd_no_noise),
        cmocka_unit_test(fd_noise_and_adapters),
        cmocka_unit_test(jitter_consistency),
        cmocka_unit_test(dloss_and_frozen),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
