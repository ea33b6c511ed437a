/* test_dpo_parity.c — DPO through the model against TRL's loss on PEFT + transformers
 * (tests/fixtures/peft/made/deepseek_v3/dpo_reference.safetensors, made by
 * tests/reference/make_dpo_fixture.py): the PEFT-made adapter (MLA attention, router, routed
 * and shared experts, dense MLP) on the deepseek_v3 fixture, two pairs, reference = the adapter
 * disabled. The path is the preference trainer's: per-token log-probs of one batched pass over
 * chosen and rejected rows, summed over the completion (mt_rl_seq_logps), the sigmoid loss
 * (mt_dpo_loss_compute), its gradient back to the tokens (mt_rl_seq_logps_backward) and the
 * model's backward into every LoRA tensor. Loss and log-probs within 1e-4, gradients 1e-3. */
#include "model_testlib.h"

#include <math.h>

#include "peft/lora.h"
#include "rl/rl.h"

enum { ROWS = 4, T = 12 };

static float *ref_f32(const mt_safetensors *st, const char *name) {
    const mt_st_tensor *t = mt_safetensors_find(st, name);
    if (!t) fail_msg("reference tensor %s missing", name);
    float *x = mt_xmalloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    mt_error err = {0};
    if (mt_st_tensor_to_f32(t, x, &err) != MT_OK) fail_msg("%s", err.msg);
    return x;
}

static int64_t ref_i64(const mt_safetensors *st, const char *name, int64_t *out, int n) {
    const mt_st_tensor *t = mt_safetensors_find(st, name);
    if (!t || t->dtype != MT_DTYPE_I64 || t->numel != n) fail_msg("reference id tensor %s missing", name);
    memcpy(out, t->data, (size_t)n * 8);
    return out[0];
}

static mt_lora_tensor *find_tensor(mt_lora *l, const char *name) {
    for (int i = 0; i < mt_lora_tensor_count(l); i++)
        if (!strcmp(mt_lora_tensor_at(l, i)->name, name)) return mt_lora_tensor_at(l, i);
    fail_msg("the adapter has no tensor %s", name);
    return NULL;
}

/* Summed completion log-probs of the 4 rows under `ad`; train keeps the activations. */
static void row_sums(mt_model *m, mt_workspace *ws, const mt_batch *b, const mt_adapter *ad, bool train,
                     const uint8_t *mask, float *sums) {
    mt_error err = {0};
    mt_forward_opts o = {.train = train, .seed = 1, .adapter = ad};
    mt_forward_result r;
    if (mt_model_forward(m, ws, b, &o, &r, &err) != MT_OK) fail_msg("%s", err.msg);
    float tok[ROWS * T], counts[ROWS];
    for (int i = 0; i < ROWS * T; i++) tok[i] = mask[i] ? -r.token_loss[i] : 0.0f;
    mt_rl_seq_logps(ROWS, T, tok, mask, sums, counts);
}

static void test_dpo_matches_trl_peft(void **state) {
    (void)state;
    mt_error err = {0};
    mt_backend *be;
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    mt_safetensors *ref = NULL;
    if (mt_safetensors_open(&ref, mt_test_fixture("peft/made/deepseek_v3/dpo_reference.safetensors"), &err) != MT_OK)
        fail_msg("%s", err.msg);
    mt_model *m = load_fixture(be, "deepseek_v3");
    mt_lora *l = NULL;
    if (mt_lora_load_peft(&l, m, mt_test_fixture("peft/made/deepseek_v3"), NULL, &err) != MT_OK)
        fail_msg("%s", err.msg);
    assert_int_equal(mt_lora_alloc_grads(l, &err), MT_OK);

    int64_t ids64[ROWS * T], P;
    ref_i64(ref, "dpo.input_ids", ids64, ROWS * T);
    ref_i64(ref, "dpo.prompt_len", &P, 1);
    int32_t tokens[ROWS * T], targets[ROWS * T];
    uint8_t mask[ROWS * T];
    for (int i = 0; i < ROWS * T; i++) {
        int t = i % T;
        tokens[i] = (int32_t)ids64[i];
        /* TRL: the logit at t predicts token t+1; the prompt's own tokens are not scored */
        bool scored = t + 1 < T && t + 1 >= P;
        targets[i] = t + 1 < T ? (int32_t)ids64[i + 1] : MT_IGNORE_INDEX;
        mask[i] = scored;
    }
    mt_batch b = {.B = ROWS, .T = T, .tokens = tokens, .targets = targets};
    mt_workspace *ws, *rws;
    assert_int_equal(mt_workspace_init(&ws, m, ROWS, T, true, 0, &err), MT_OK);
    assert_int_equal(mt_workspace_init(&rws, m, ROWS, T, false, 0, &err), MT_OK);
    float refs[ROWS], pol[ROWS];
    row_sums(m, rws, &b, NULL, false, mask, refs); /* the reference: the adapter switched off */
    mt_lora_zero_grad(l);
    row_sums(m, ws, &b, mt_lora_adapter(l), true, mask, pol);

    float *want_pol = ref_f32(ref, "dpo.policy"), *want_ref = ref_f32(ref, "dpo.reference");
    for (int r = 0; r < ROWS; r++) {
        if (fabs(pol[r] - want_pol[r]) > 1e-4 * fabs(want_pol[r]))
            fail_msg("policy log-prob of row %d: %.7g, TRL/PEFT %.7g", r, pol[r], want_pol[r]);
        if (fabs(refs[r] - want_ref[r]) > 1e-4 * fabs(want_ref[r]))
            fail_msg("reference log-prob of row %d: %.7g, TRL/PEFT %.7g", r, refs[r], want_ref[r]);
    }

    mt_dpo_config c;
    mt_dpo_config_default(&c);
    c.n_terms = 1;
    assert_int_equal(mt_dpo_loss_parse("sigmoid", &c.types[0], &err), MT_OK);
    c.weights[0] = 1.0;
    c.beta = 0.1;
    float lc[2] = {(float)(T - P), (float)(T - P)}, lr[2] = {(float)(T - P), (float)(T - P)};
    mt_dpo_batch db = {.n = 2, .policy_chosen = pol, .policy_rejected = pol + 2, .ref_chosen = refs,
                       .ref_rejected = refs + 2, .chosen_len = lc, .rejected_len = lr,
                       .logits_chosen = NAN, .logits_rejected = NAN};
    float d_sum[ROWS], d_tok[ROWS * T], dloss[ROWS * T];
    mt_dpo_grads g = {.policy_chosen = d_sum, .policy_rejected = d_sum + 2};
    double loss;
    size_t sb = mt_dpo_scratch_bytes(&c, 2);
    void *scratch = sb ? mt_xcalloc(1, sb) : NULL;
    assert_int_equal(mt_dpo_loss_compute(&c, &db, &loss, NULL, &g, NULL, scratch, &err), MT_OK);
    float *want_loss = ref_f32(ref, "dpo.loss");
    if (fabs(loss - want_loss[0]) > 1e-4 * fabs(want_loss[0]))
        fail_msg("loss %.7g, TRL/PEFT %.7g", loss, want_loss[0]);
    mt_rl_seq_logps_backward(ROWS, T, mask, d_sum, NULL, d_tok);
    for (int i = 0; i < ROWS * T; i++) dloss[i] = -d_tok[i]; /* token_loss = −log p */
    assert_int_equal(mt_model_backward(m, ws, dloss, &err), MT_OK);

    int covered = 0;
    double worst = 0;
    for (size_t i = 0; i < mt_safetensors_count(ref); i++) {
        const mt_st_tensor *t = mt_safetensors_at(ref, i);
        float *got = NULL;
        int64_t n = 0;
        if (!strncmp(t->name, "grad.", 5)) {
            mt_lora_tensor *lt = find_tensor(l, t->name + 5);
            n = lt->numel;
            got = mt_xmalloc((size_t)n * sizeof(float));
            memcpy(got, lt->grad, (size_t)n * sizeof(float));
            covered++;
        } else if (!strncmp(t->name, "gradsum.", 8)) {
            char names[512];
            snprintf(names, sizeof names, "%s", t->name + 8);
            char *plus = strchr(names, '+');
            assert_non_null(plus);
            *plus = '\0';
            mt_lora_tensor *a = find_tensor(l, names), *bb = find_tensor(l, plus + 1);
            n = a->numel;
            got = mt_xmalloc((size_t)n * sizeof(float));
            for (int64_t k = 0; k < n; k++) got[k] = a->grad[k] + bb->grad[k];
            covered += 2;
        } else {
            continue;
        }
        assert_int_equal(n, t->numel);
        float *want = ref_f32(ref, t->name);
        mt_test_assert_close(t->name, got, want, (size_t)n, 1e-3);
        worst = fmax(worst, mt_test_rel_err(got, want, (size_t)n, 1e-30));
        free(want);
        free(got);
    }
    assert_int_equal(covered, mt_lora_tensor_count(l));
    print_message("[ dpo  ] loss %.6f (TRL/PEFT %.6f), %d LoRA tensors, worst gradient relative error %.2g\n", loss,
                  want_loss[0], covered, worst);
    free(scratch);
    free(want_pol);
    free(want_ref);
    free(want_loss);
    mt_workspace_free(ws);
    mt_workspace_free(rws);
    mt_lora_free(l);
    mt_model_free(m);
    mt_safetensors_close(ref);
    mt_backend_free(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dpo_matches_trl_peft),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
