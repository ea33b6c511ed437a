/* test_expert_calibration.c — thresholds.experts: auto (docs/data.md, "Thresholds"): the top-k
 * router share on hand-made scores (softmax-like and sigmoid-like), the median of odd and even
 * counts, and the calibration over a tiny model with an adapter equal to the median this test
 * takes itself of the shares its own forward passes report, over the same rows (every row when
 * there are fewer than the sample size, an even spread when there are more). */
#include "model_testlib.h"
#include "finetune/finetune.h"
#include "finetune/run-impl.h"

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

static void topk_share_by_hand(void **state) {
    (void)state;
    /* softmax-like (sums to 1) and sigmoid-like (does not): the share is over all E scores */
    const float scores[8] = {0.1f, 0.4f, 0.2f, 0.3f, 0.5f, 0.9f, 0.1f, 0.5f};
    const int32_t idx[4] = {1, 3, 1, 0};
    float share[2];
    mt_route_topk_share(scores, 2, 4, 2, idx, share);
    assert_float_equal(share[0], 0.7f, 1e-6f);
    assert_float_equal(share[1], 1.4f / 2.0f, 1e-6f);
}

static void median_of_odd_and_even_counts(void **state) {
    (void)state;
    mt_config cfg = {.n_layers = 2};
    cfg.layer_is_moe[1] = true; /* layer 0 is dense: its entries are not shares */
    const float sh[2][3] = {{9, 9, 9}, {0.3f, 0.1f, 0.2f}};
    const int32_t all[3] = {1, 1, 1}, two[3] = {1, -100, 1};
    mt_expert_shares s;
    mt_error err = {0};
    double med;
    mt_expert_shares_init(&s);
    assert_int_equal(mt_expert_shares_median(&s, &med, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "thresholds.experts"));
    mt_expert_shares_add(&s, &cfg, &sh[0][0], all, 3);
    assert_int_equal(mt_expert_shares_median(&s, &med, &err), MT_OK);
    assert_true(med == (double)0.2f);
    mt_expert_shares_add(&s, &cfg, &sh[0][0], two, 3); /* + 0.3 and 0.2: 0.1 0.2 0.2 0.3 0.3 */
    assert_int_equal(mt_expert_shares_median(&s, &med, &err), MT_OK);
    assert_true(med == (double)0.2f);
    const int32_t one[3] = {-100, 1, -100}; /* + 0.1: six values, the middle two 0.2 and 0.2 */
    mt_expert_shares_add(&s, &cfg, &sh[0][0], one, 3);
    const int32_t last[3] = {1, -100, -100}; /* + 0.3, then + 0.1: 0.1 0.1 0.1 0.2 | 0.2 0.3 0.3 0.3 */
    mt_expert_shares_add(&s, &cfg, &sh[0][0], last, 3);
    mt_expert_shares_add(&s, &cfg, &sh[0][0], one, 3);
    assert_int_equal(mt_expert_shares_median(&s, &med, &err), MT_OK);
    assert_true(med == 0.5 * ((double)0.2f + (double)0.2f));
    mt_expert_shares_free(&s);
    mt_expert_shares_init(&s);
    const int32_t first_two[3] = {1, 1, -100}; /* 0.3 and 0.1: the mean of the two */
    mt_expert_shares_add(&s, &cfg, &sh[0][0], first_two, 3);
    assert_int_equal(mt_expert_shares_median(&s, &med, &err), MT_OK);
    assert_true(med == 0.5 * ((double)0.1f + (double)0.3f));
    mt_expert_shares_free(&s);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { T = 12, MAX_ROWS = 4 };

/* The calibration against this test's own median, with max_rows above and below the rows. */
static void calibration_is_the_median(void **state) {
    (void)state;
    const mt_family fams[] = {MT_FAMILY_QWEN3_MOE, MT_FAMILY_DEEPSEEK_V3};
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        mt_error err = {0};
        mt_config cfg;
        if (mt_config_preset(&cfg, fams[f], "tiny", 64, &err) != MT_OK) fail_msg("%s", err.msg);
        cfg.initializer_range = 0.25f;
        mt_model *m = NULL;
        if (mt_model_init_random(&m, &cfg, 17 + f, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
        const mt_config *mc = mt_model_config(m);
        toy_set *ts = toy_set_new(m);
        for (int i = 0; i < mt_model_linear_count(m); i++) toy_add(ts, m, i, 2, 700 + (uint64_t)i);
        enum { NR = 7 };
        int32_t tok[NR * T], tgt[NR * T], pos[NR * T], ks[NR * T], nt[NR];
        random_tokens(tok, NR * T, mc->vocab_size, 5 + f);
        for (int r = 0; r < NR; r++) {
            nt[r] = 0;
            for (int t = 0; t < T; t++) {
                int i = r * T + t;
                /* the last positions of some rows are padding, without a target */
                tgt[i] = t + 1 < T - (r % 3) ? tok[i + 1] : MT_IGNORE_INDEX;
                nt[r] += tgt[i] >= 0;
                pos[i] = t;
                ks[i] = 0;
            }
        }
        mt_rows rows = {.T = T, .n_rows = NR, .tokens = tok, .targets = tgt, .pos = pos, .kv_start = ks,
                        .n_targets = nt};
        const int max_rows[] = {64, MAX_ROWS};
        for (int k = 0; k < 2; k++) {
            double got;
            int64_t n_got;
            if (mt_experts_from_model(m, &ts->view, &rows, max_rows[k], &got, &n_got, &err) != MT_OK)
                fail_msg("%s", err.msg);
            /* this test's own: the rows picked as i·n_rows/n, one forward each, the shares of the
             * MoE layers at the positions with a target, sorted, the middle */
            int n = NR < max_rows[k] ? NR : max_rows[k];
            double *v = mt_xmalloc((size_t)n * T * mc->n_layers * sizeof(double));
            size_t nv = 0;
            float *share = mt_xmalloc((size_t)mc->n_layers * T * sizeof(float));
            mt_workspace *ws = NULL;
            if (mt_workspace_init(&ws, m, 1, T, false, 0, &err) != MT_OK) fail_msg("%s", err.msg);
            for (int i = 0; i < n; i++) {
                int r = i * NR / n;
                mt_batch b = {.B = 1, .T = T, .tokens = tok + r * T, .targets = tgt + r * T, .pos = pos + r * T,
                             .kv_start = ks + r * T};
                mt_forward_opts fo = {.adapter = &ts->view, .topk_share_out = share};
                mt_forward_result fr;
                if (mt_model_forward(m, ws, &b, &fo, &fr, &err) != MT_OK) fail_msg("%s", err.msg);
                for (int l = 0; l < mc->n_layers; l++)
                    for (int t = 0; t < T; t++)
                        if (mc->layer_is_moe[l] && tgt[r * T + t] >= 0) {
                            double s = share[(size_t)l * T + t];
                            assert_true(s > 0 && s <= 1.0 + 1e-6);
                            v[nv++] = s;
                        }
            }
            qsort(v, nv, sizeof *v, cmp_double);
            double want = nv % 2 ? v[nv / 2] : 0.5 * (v[nv / 2 - 1] + v[nv / 2]);
            assert_int_equal(n_got, (int64_t)nv);
            if (got != want) fail_msg("%s, max_rows %d: calibrated %.9g, the median is %.9g", mt_family_name(fams[f]),
                                      max_rows[k], got, want);
            mt_workspace_free(ws);
            free(share);
            free(v);
        }
        toy_set_free(ts);
        mt_model_free(m);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(topk_share_by_hand),
        cmocka_unit_test(median_of_odd_and_even_counts),
        cmocka_unit_test(calibration_is_the_median),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
