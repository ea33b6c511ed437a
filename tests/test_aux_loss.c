/* test_aux_loss.c — the DeepSeek load-balancing losses against an implementation written from
 * their sources (tests/reference/make_aux_fixtures.py: DeepSeek-V2's sequence-wise and
 * batch-wise expert balance loss from the paper and its MoEGate code; transformers'
 * load_balancing_loss_func for DeepSeek-V3): the forward's value and the backward's gradient of
 * the aux term alone for every parameter it reaches, through the router and every earlier layer. */
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
    return mt_backend_init(&g_be, MT_BACKEND_CPU, 2, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be);
    return 0;
}

static float *ref_f32(const mt_safetensors *st, const char *name, size_t *n) {
    const mt_st_tensor *t = mt_safetensors_find(st, name);
    if (!t) fail_msg("reference has no %s", name);
    mt_error err = {0};
    float *x = mt_xmalloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (mt_st_tensor_to_f32(t, x, &err) != MT_OK) fail_msg("%s", err.msg);
    if (n) *n = (size_t)t->numel;
    return x;
}

static void aux_parity(void **state) {
    const char *variant = *state;
    mt_error err = {0};
    /* the variant's own folder when it has one (a config override), else the model fixture */
    char dir[600], refpath[600];
    snprintf(dir, sizeof dir, "%s/aux/%s", MT_FIXTURES_DIR, variant);
    if (!mt_is_dir(dir)) snprintf(dir, sizeof dir, "%s/models/%s", MT_FIXTURES_DIR, variant);
    snprintf(refpath, sizeof refpath, "%s/aux/%s.safetensors", MT_FIXTURES_DIR, variant);
    mt_model *m = NULL;
    if (mt_model_load(&m, dir, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_safetensors *ref = NULL;
    if (mt_safetensors_open(&ref, refpath, &err) != MT_OK) fail_msg("%s", err.msg);

    const mt_st_tensor *ids_t = mt_safetensors_find(ref, "input_ids");
    assert_non_null(ids_t);
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1], N = B * T;
    assert_int_equal(ids_t->dtype, MT_DTYPE_I64);
    int32_t *tokens = mt_xmalloc((size_t)N * sizeof(int32_t)), *targets = mt_xmalloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) {
        int64_t v;
        memcpy(&v, (const uint8_t *)ids_t->data + 8 * (size_t)i, 8);
        tokens[i] = targets[i] = (int32_t)v;
    }
    for (int i = 0; i < mt_model_param_count(m); i++)
        if (mt_model_require_grad(m, mt_model_param(m, i), &err) != MT_OK) fail_msg("%s", err.msg);
    mt_workspace *ws = NULL;
    if (mt_workspace_init(&ws, m, B, T, true, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_batch batch = {.B = B, .T = T, .tokens = tokens, .targets = targets};
    mt_forward_opts opts = {.train = true, .seed = 1, .aux_coef = 1.0f};
    mt_forward_result res;
    if (mt_model_forward(m, ws, &batch, &opts, &res, &err) != MT_OK) fail_msg("%s", err.msg);
    float *want_aux = ref_f32(ref, "aux_loss", NULL);
    double rel = fabs(res.aux_loss - want_aux[0]) / fabs(want_aux[0]);
    if (!(rel < 1e-5)) fail_msg("%s: aux loss %.9g, reference %.9g", variant, res.aux_loss, (double)want_aux[0]);

    /* the aux term alone: no cross-entropy gradient, coefficient 1 */
    float *zero = mt_xcalloc((size_t)N, sizeof(float));
    if (mt_model_backward(m, ws, zero, &err) != MT_OK) fail_msg("%s", err.msg);
    int n = 0;
    double worst = 0;
    for (size_t i = 0; i < mt_safetensors_count(ref); i++) {
        const mt_st_tensor *t = mt_safetensors_at(ref, i);
        if (strncmp(t->name, "grad_aux.", 9)) continue;
        mt_param *p = mt_model_find_param(m, t->name + 9);
        if (!p) fail_msg("%s: no parameter named %s", t->name, t->name + 9);
        assert_int_equal(p->numel, t->numel);
        float *want = ref_f32(ref, t->name, NULL);
        mt_test_assert_close(t->name, p->grad, want, (size_t)t->numel, 2e-4);
        double e = mt_test_rel_err(p->grad, want, (size_t)t->numel, 1e-30);
        if (e > worst) worst = e;
        free(want);
        n++;
    }
    /* the router's own gradient is among them, and earlier layers' (the path through x) */
    assert_true(n >= 10);
    print_message("%-20s aux %.9g (rel err %.2g), %d gradients, worst %.2g\n", variant, res.aux_loss, rel, n, worst);
    free(zero);
    free(want_aux);
    free(tokens);
    free(targets);
    mt_workspace_free(ws);
    mt_safetensors_close(ref);
    mt_model_free(m);
}

int main(void) {
    static const char *v2 = "deepseek_v2", *v2tok = "deepseek_v2_tokaux", *v3 = "deepseek_v3";
    const struct CMUnitTest tests[] = {
        {"aux_deepseek_v2_seq_aux", aux_parity, NULL, NULL, (void *)v2},
        {"aux_deepseek_v2_batch_aux", aux_parity, NULL, NULL, (void *)v2tok},
        {"aux_deepseek_v3_switch", aux_parity, NULL, NULL, (void *)v3},
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
