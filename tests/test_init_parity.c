/* test_init_parity.c — a model `moetune init` writes is a Hugging Face model: for every family,
 * the tiny preset made with seed 0 loads in transformers (tests/reference/make_model_fixtures.py
 * --check-init, which refuses missing or unexpected tensors) and gives these logits, committed
 * in tests/fixtures/init/<family>.safetensors; moetune, re-making the same model, must match
 * them to 1e-4. Init is deterministic, so only the logits need committing. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

static const char *const families[] = {"deepseek_v3", "deepseek_v2", "qwen3_moe", "qwen2_moe", "mixtral", "olmoe"};

static void test_init_matches_transformers(void **state) {
    (void)state;
    mt_error err = {0};
    mt_backend *be;
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        char dir[4200], ref_path[4200];
        snprintf(dir, sizeof dir, "%s/%s", mt_test_tmpdir("init_parity"), families[f]);
        char *out = NULL;
        if (mt_test_run_cli(&out, "init --preset tiny --family %s --seed 0 '%s'", families[f], dir) != 0)
            fail_msg("init %s: %s", families[f], out);
        free(out);
        snprintf(ref_path, sizeof ref_path, "%s", mt_test_fixture("init"));
        snprintf(ref_path + strlen(ref_path), sizeof ref_path - strlen(ref_path), "/%s.safetensors", families[f]);
        mt_safetensors *ref;
        if (mt_safetensors_open(&ref, ref_path, &err) != MT_OK) fail_msg("%s", err.msg);
        const mt_st_tensor *ids_t = mt_safetensors_find(ref, "input_ids");
        const mt_st_tensor *logits_t = mt_safetensors_find(ref, "logits");
        assert_non_null(ids_t);
        assert_non_null(logits_t);
        int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1], V = (int)logits_t->shape[2];

        mt_model *m;
        if (mt_model_load(&m, dir, be, &err) != MT_OK) fail_msg("%s: %s", families[f], err.msg);
        assert_int_equal(mt_model_config(m)->vocab_size, V);
        int32_t *tokens = mt_xcalloc((size_t)B * T, sizeof(int32_t));
        const int64_t *ids64 = ids_t->data;
        for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)ids64[i];
        float *want = mt_xmalloc((size_t)B * T * V * sizeof(float));
        float *got = mt_xmalloc((size_t)B * T * V * sizeof(float));
        assert_int_equal(mt_st_tensor_to_f32(logits_t, want, &err), MT_OK);
        mt_workspace *ws;
        assert_int_equal(mt_workspace_init(&ws, m, B, T, false, 0, &err), MT_OK);
        mt_batch b = {.B = B, .T = T, .tokens = tokens};
        mt_forward_opts o = {.logits_out = got};
        mt_forward_result res;
        if (mt_model_forward(m, ws, &b, &o, &res, &err) != MT_OK) fail_msg("%s", err.msg);
        char what[64];
        snprintf(what, sizeof what, "%s logits", families[f]);
        mt_test_assert_close(what, got, want, (size_t)B * T * V, 1e-4);
        mt_workspace_free(ws);
        mt_model_free(m);
        free(tokens);
        free(want);
        free(got);
        mt_safetensors_close(ref);
    }
    mt_backend_free(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_init_matches_transformers)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
