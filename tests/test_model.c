/* test_model.c — parity of the MoE decoder with Hugging Face transformers on every fixture in
 * tests/fixtures/models/ (made by tests/reference/make_model_fixtures.py): logits, loss,
 * hidden states, routing, every dumped gradient, the aux loss and its router gradients, and
 * the greedy generation reproduced token for token through the KV-cache decode path. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

#define NB 2
#define NT 12

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

static float *ref_f32(const mt_safetensors *st, const char *name, size_t *n) {
    const mt_st_tensor *t = mt_safetensors_find(st, name);
    if (!t) fail_msg("reference tensor %s missing", name);
    float *x = mt_xmalloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    mt_error err = {0};
    if (mt_st_tensor_to_f32(t, x, &err) != MT_OK) fail_msg("%s", err.msg);
    if (n) *n = (size_t)t->numel;
    return x;
}

static int32_t *ref_ids(const mt_safetensors *st, const char *name, size_t *n) {
    const mt_st_tensor *t = mt_safetensors_find(st, name);
    if (!t || t->dtype != MT_DTYPE_I64) fail_msg("reference id tensor %s missing", name);
    int32_t *x = mt_xmalloc((size_t)t->numel * sizeof(int32_t));
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        memcpy(&v, (const uint8_t *)t->data + 8 * i, 8);
        x[i] = (int32_t)v;
    }
    if (n) *n = (size_t)t->numel;
    return x;
}

static double ref_scalar(const mt_safetensors *st, const char *name) {
    float *x = ref_f32(st, name, NULL);
    double v = x[0];
    free(x);
    return v;
}

static void assert_rel(const char *what, double got, double want, double tol) {
    double rel = fabs(got - want) / fmax(fabs(want), 1e-30);
    if (!(rel <= tol)) fail_msg("%s: got %.9g, want %.9g (relative error %.3g > %.3g)", what, got, want, rel, tol);
}

/* Compares every "<prefix><param name>" reference tensor with that parameter's gradient. */
static int compare_grads(mt_model *m, const mt_safetensors *ref, const char *prefix, double tol, double *worst) {
    int n = 0;
    size_t pl = strlen(prefix);
    for (size_t i = 0; i < mt_safetensors_count(ref); i++) {
        const mt_st_tensor *t = mt_safetensors_at(ref, i);
        if (strncmp(t->name, prefix, pl) || !strcmp(t->name, "grad.inputs_embeds")) continue;
        mt_param *p = mt_model_find_param(m, t->name + pl);
        if (!p) fail_msg("%s: no parameter named %s", t->name, t->name + pl);
        assert_int_equal(p->numel, t->numel);
        assert_non_null(p->grad);
        float *want = ref_f32(ref, t->name, NULL);
        mt_test_assert_close(t->name, p->grad, want, (size_t)t->numel, tol);
        double e = mt_test_rel_err(p->grad, want, (size_t)t->numel, 1e-30);
        if (e > *worst) *worst = e;
        free(want);
        n++;
    }
    return n;
}

static void parity(void **state) {
    const char *variant = *state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s", mt_test_fixture("models/"));
    strncat(dir, variant, sizeof dir - strlen(dir) - 1);
    mt_error err = {0};
    mt_model *m = NULL;
    if (mt_model_load(&m, dir, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    char refpath[600];
    snprintf(refpath, sizeof refpath, "%s/reference.safetensors", dir);
    mt_safetensors *ref = NULL;
    if (mt_safetensors_open(&ref, refpath, &err) != MT_OK) fail_msg("%s", err.msg);
    const mt_config *cfg = mt_model_config(m);
    int V = cfg->vocab_size, H = cfg->hidden_size, L = cfg->n_layers, N = NB * NT;

    int32_t *tokens = ref_ids(ref, "input_ids", NULL);
    int32_t *labels = ref_ids(ref, "labels", NULL);
    int32_t targets[NB * NT];
    for (int b = 0; b < NB; b++)
        for (int t = 0; t < NT; t++) {
            int l = t + 1 < NT ? labels[b * NT + t + 1] : -100;
            targets[b * NT + t] = l == -100 ? MT_IGNORE_INDEX : l;
        }
    for (int i = 0; i < mt_model_param_count(m); i++)
        if (mt_model_require_grad(m, mt_model_param(m, i), &err) != MT_OK) fail_msg("%s", err.msg);

    mt_workspace *ws = NULL;
    if (mt_workspace_init(&ws, m, NB, NT, true, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    float *logits = mt_xmalloc((size_t)N * V * sizeof(float));
    mt_batch batch = {.B = NB, .T = NT, .tokens = tokens, .targets = targets};
    mt_forward_opts opts = {.train = true, .seed = 1, .logits_out = logits};
    mt_forward_result res;
    if (mt_model_forward(m, ws, &batch, &opts, &res, &err) != MT_OK) fail_msg("%s", err.msg);

    float *want = ref_f32(ref, "logits", NULL);
    mt_test_assert_close("logits", logits, want, (size_t)N * V, 1e-4);
    double logits_err = mt_test_rel_err(logits, want, (size_t)N * V, 1e-30);
    free(want);
    assert_int_equal(res.n_tokens, 19);
    assert_rel("loss", res.loss_sum / (double)res.n_tokens, ref_scalar(ref, "loss"), 1e-4);
    for (int i = 0; i <= L; i++) {
        char name[64];
        snprintf(name, sizeof name, "hidden.%d", i);
        want = ref_f32(ref, name, NULL);
        const float *h = mt_workspace_hidden(ws, i);
        assert_non_null(h);
        mt_test_assert_close(name, h, want, (size_t)N * H, 1e-4);
        free(want);
    }
    /* routing: the reference's chosen experts, counted per expert, against the router stats */
    for (int i = 0;; i++) {
        mt_router_stats rs;
        if (!mt_workspace_router_stats(ws, i, &rs)) break;
        char name[64];
        snprintf(name, sizeof name, "router.%d.topk_idx", rs.layer);
        size_t n_idx;
        int32_t *idx = ref_ids(ref, name, &n_idx);
        assert_int_equal(n_idx, (size_t)N * cfg->top_k);
        for (int e = 0; e < cfg->n_experts; e++) {
            int cnt = 0;
            for (size_t j = 0; j < n_idx; j++) cnt += idx[j] == e;
            if (cnt != rs.tokens_per_expert[e])
                fail_msg("layer %d expert %d: %d tokens, reference %d", rs.layer, e, rs.tokens_per_expert[e], cnt);
        }
        assert_true(rs.entropy > 0 && rs.entropy <= log(cfg->n_experts) + 1e-9);
        free(idx);
    }

    if (mt_model_backward(m, ws, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    double grad_err = 0, aux_err = 0;
    int n_grads = compare_grads(m, ref, "grad.", 1e-3, &grad_err);
    assert_true(n_grads >= 8);
    want = ref_f32(ref, "grad.inputs_embeds", NULL);
    mt_test_assert_close("grad.inputs_embeds", mt_workspace_input_grad(ws), want, (size_t)N * H, 1e-3);
    free(want);

    if (mt_safetensors_find(ref, "aux_loss")) {
        mt_model_zero_grad(m);
        opts.aux_coef = cfg->router_aux_loss_coef;
        opts.logits_out = NULL;
        if (mt_model_forward(m, ws, &batch, &opts, &res, &err) != MT_OK) fail_msg("%s", err.msg);
        assert_rel("aux_loss", res.aux_loss, ref_scalar(ref, "aux_loss"), 1e-4);
        assert_rel("loss_with_aux", res.loss_sum / (double)res.n_tokens + opts.aux_coef * res.aux_loss,
                   ref_scalar(ref, "loss_with_aux"), 1e-4);
        if (mt_model_backward(m, ws, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
        assert_true(compare_grads(m, ref, "grad_aux.", 1e-3, &aux_err) >= 1);
    }

    /* greedy generation through the KV cache: prefill the prompt, then one token at a time */
    size_t n_prompt, n_gen;
    int32_t *prompt = ref_ids(ref, "generate_prompt", &n_prompt);
    int32_t *golden = ref_ids(ref, "generate_greedy", &n_gen);
    mt_kv_cache *cache = NULL;
    if (mt_kv_cache_init(&cache, m, 32, &err) != MT_OK) fail_msg("%s", err.msg);
    float *row = mt_xmalloc((size_t)V * sizeof(float));
    if (mt_model_decode(m, cache, prompt, (int)n_prompt, row, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_sample_opts greedy = {.temperature = 0};
    for (size_t i = n_prompt; i < n_gen; i++) {
        int32_t next = mt_sample(&greedy, row, V, NULL);
        if (next != golden[i]) fail_msg("%s: generated token %zu is %d, transformers %d", variant, i, next, golden[i]);
        if (mt_model_decode(m, cache, &next, 1, row, &err) != MT_OK) fail_msg("%s", err.msg);
    }
    assert_int_equal(mt_kv_cache_len(cache), (int)n_gen);

    print_message("%-16s logits %.2g, %d gradients worst %.2g, aux gradients %.2g, %zu tokens generated\n", variant,
                  logits_err, n_grads, grad_err, aux_err, n_gen - n_prompt);
    free(row);
    mt_kv_cache_free(cache);
    free(prompt);
    free(golden);
    free(logits);
    free(tokens);
    free(labels);
    mt_workspace_free(ws);
    mt_safetensors_close(ref);
    mt_model_free(m);
}

#define PARITY(v) cmocka_unit_test_prestate(parity, (void *)v)

int main(void) {
    const struct CMUnitTest tests[] = {
        PARITY("qwen3_moe"), PARITY("mixtral"),     PARITY("olmoe"),           PARITY("qwen2_moe"),
        PARITY("deepseek_v3"), PARITY("deepseek_v3_noq"), PARITY("deepseek_v2"),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
