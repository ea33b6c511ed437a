/* test_dap.c — the domain-adaptive threshold: predictive token entropy against closed forms
 * (uniform, two-way, near one-hot) and a naive double reference, the per-sequence
 * mean over counted positions, the formula base·(1 − min(H, H_max)/H_max), its clamp, errors. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/finetune.h"

static double naive_entropy_bits(const float *z, int V) {
    double sum = 0;
    for (int v = 0; v < V; v++) sum += exp((double)z[v]);
    double h = 0;
    for (int v = 0; v < V; v++) {
        double p = exp((double)z[v]) / sum;
        if (p > 0) h -= p * log2(p);
    }
    return h;
}

static void test_token_entropy(void **state) {
    (void)state;
    float z[256];
    for (int v = 0; v < 256; v++) z[v] = 3.25f; /* any constant: uniform */
    assert_float_equal(mt_dap_token_entropy(z, 256), 8.0, 1e-12);
    assert_float_equal(mt_dap_token_entropy(z, 4), 2.0, 1e-12);
    float two[2] = {-1.0f, -1.0f};
    assert_float_equal(mt_dap_token_entropy(two, 2), 1.0, 1e-12);
    /* one logit far above the rest: entropy ≈ 0, never negative */
    float peak[8] = {0, 0, 0, 200, 0, 0, 0, 0};
    double h = mt_dap_token_entropy(peak, 8);
    assert_true(h >= 0.0 && h < 1e-12);
    /* large logits do not overflow */
    float big[3] = {1000.0f, 1000.0f, 1000.0f};
    assert_float_equal(mt_dap_token_entropy(big, 3), log2(3.0), 1e-12);
    /* random logits against the naive formula */
    float r[100];
    mt_test_fill_uniform(r, 100, -4.0f, 4.0f, 11);
    assert_float_equal(mt_dap_token_entropy(r, 100), naive_entropy_bits(r, 100), 1e-10);
}

static void test_sequence_mean(void **state) {
    (void)state;
    /* T = 3 positions over V = 4: uniform (2 bits), two-way (1 bit, two huge equal logits),
     * and an ignored position that must not count */
    float logits[12] = {0, 0, 0, 0, 50, 50, -50, -50, 9, 1, 2, 3};
    int32_t targets[3] = {1, 0, -100};
    mt_dap_stats s;
    mt_dap_stats_init(&s);
    assert_true(mt_dap_stats_add_sequence(&s, logits, targets, 3, 4));
    assert_int_equal(s.n_seqs, 1);
    assert_float_equal(s.sum_entropy, 1.5, 1e-12);
    int32_t none[3] = {-100, -100, -100};
    assert_false(mt_dap_stats_add_sequence(&s, logits, none, 3, 4));
    assert_int_equal(s.n_seqs, 1);
}

static void test_threshold_formula(void **state) {
    (void)state;
    mt_dap_stats s = {.sum_entropy = 2.0 + 0.0, .n_seqs = 2}; /* mean 1 bit */
    mt_error err = {0};
    double t, h;
    uint64_t n;
    assert_int_equal(mt_dap_stats_result(&s, MT_DAP_DEFAULT_BASE, MT_DAP_DEFAULT_MAX_ENTROPY, &t, &h, &n, &err), MT_OK);
    assert_int_equal(n, 2);
    assert_float_equal(h, 1.0, 1e-12);
    assert_float_equal(t, 0.5 * (1.0 - 1.0 / 4.5), 1e-12);
    assert_int_equal(mt_dap_stats_result(&s, 1.0, 2.0, &t, NULL, NULL, &err), MT_OK);
    assert_float_equal(t, 0.5, 1e-12);
    assert_int_equal(mt_dap_stats_result(&s, 0.0, 4.5, &t, NULL, NULL, &err), MT_OK);
    assert_float_equal(t, 0.0, 0.0);
    /* a perfectly predictable domain: the full base threshold */
    mt_dap_stats zero = {.sum_entropy = 0.0, .n_seqs = 3};
    assert_int_equal(mt_dap_stats_result(&zero, 0.5, 4.5, &t, &h, NULL, &err), MT_OK);
    assert_float_equal(t, 0.5, 0.0);
}

static void test_clamp(void **state) {
    (void)state;
    mt_dap_stats s = {.sum_entropy = 5.0, .n_seqs = 1};
    mt_error err = {0};
    double t = -1, h = -1;
    assert_int_equal(mt_dap_stats_result(&s, 0.5, 4.5, &t, &h, NULL, &err), MT_OK);
    assert_float_equal(h, 5.0, 1e-12); /* the mean itself is reported unclamped */
    assert_float_equal(t, 0.0, 0.0);
    assert_false(signbit(t));
    assert_int_equal(mt_dap_stats_result(&s, 0.5, 5.0, &t, NULL, NULL, &err), MT_OK);
    assert_float_equal(t, 0.0, 1e-15);
}

static void test_errors(void **state) {
    (void)state;
    mt_dap_stats s;
    mt_dap_stats_init(&s);
    mt_error err = {0};
    double t;
    assert_int_equal(mt_dap_stats_result(&s, 0.5, 4.5, &t, NULL, NULL, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "no sequences"));
    s.n_seqs = 1;
    s.sum_entropy = 1;
    mt_error_clear(&err);
    assert_int_equal(mt_dap_stats_result(&s, -0.1, 4.5, &t, NULL, NULL, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "thresholds.base"));
    mt_error_clear(&err);
    assert_int_equal(mt_dap_stats_result(&s, 0.5, 0.0, &t, NULL, NULL, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "thresholds.max_entropy"));
    mt_error_clear(&err);
    assert_int_equal(mt_dap_stats_result(&s, NAN, 4.5, &t, NULL, NULL, &err), MT_ERR_NUMERIC);
    mt_error_clear(&err);
    assert_int_equal(mt_dap_stats_result(&s, 0.5, INFINITY, &t, NULL, NULL, &err), MT_ERR_NUMERIC);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_entropy), cmocka_unit_test(test_sequence_mean),
        cmocka_unit_test(test_threshold_formula), cmocka_unit_test(test_clamp), cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
