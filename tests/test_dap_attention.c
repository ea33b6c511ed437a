/* test_dap_attention.c — dynamic attention pruning's building blocks and adaptive expert
 * counts: threshold 0 is full attention bit for bit, block bounds are true upper bounds
 * (randomised), larger thresholds skip more, sinks and the local window are never skipped, the
 * fallback fires exactly when the kept mass is under the floor, adaptive k with threshold 1
 * is top-max-k routing and small thresholds give min_k. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

static mt_backend *be;

static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    return mt_backend_init(&be, MT_BACKEND_CPU, 2, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(be);
    return 0;
}

static void naive_attend(const float *q, const float *k, const float *v, int n, int d, float scale, double *out) {
    double *s = calloc((size_t)n, sizeof(double)), mx = -INFINITY, z = 0;
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < d; i++) s[t] += (double)q[i] * k[(size_t)t * d + i];
        s[t] *= scale;
        if (s[t] > mx) mx = s[t];
    }
    for (int t = 0; t < n; t++) z += (s[t] = exp(s[t] - mx));
    for (int i = 0; i < d; i++) out[i] = 0;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < d; i++) out[i] += s[t] / z * v[(size_t)t * d + i];
    free(s);
}

static void test_threshold_zero_is_full(void **state) {
    (void)state;
    const int d = 32, block = 16;
    int lens[] = {1, 15, 16, 17, 100, 1000};
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        int n = lens[li];
        float *q = malloc(sizeof(float) * d), *k = malloc(sizeof(float) * (size_t)n * d),
              *v = malloc(sizeof(float) * (size_t)n * d);
        mt_test_fill_uniform(q, d, -2, 2, 1 + li);
        mt_test_fill_uniform(k, (size_t)n * d, -2, 2, 100 + li);
        mt_test_fill_uniform(v, (size_t)n * d, -1, 1, 200 + li);
        void *scr = malloc(mt_dap_attend_scratch(n, d, block));
        float full[32], dap0[32];
        double ref[32];
        float scale = 1.0f / sqrtf((float)d);
        mt_dap_attend(q, k, v, n, d, block, scale, NULL, NULL, scr, full);
        mt_dap_opts o = {.threshold = 0, .n_sink_blocks = 0, .n_local_blocks = 0, .mass_floor = 0.9f};
        mt_dap_counts c = {0};
        mt_dap_attend(q, k, v, n, d, block, scale, &o, &c, scr, dap0);
        assert_memory_equal(full, dap0, sizeof full);
        assert_int_equal((int)c.skipped, 0);
        assert_int_equal((int)c.fallbacks, 0);
        naive_attend(q, k, v, n, d, scale, ref);
        for (int i = 0; i < d; i++) assert_float_equal(full[i], ref[i], 1e-5);
        free(scr);
        free(q);
        free(k);
        free(v);
    }
}

static void test_bounds_are_upper_bounds(void **state) {
    (void)state;
    for (int trial = 0; trial < 500; trial++) {
        int d = 1 + trial % 128, n = 1 + (trial * 7) % 64;
        float lo = -(float)(1 + trial % 5) * 3, hi = (float)(1 + trial % 3) * 4;
        float *q = malloc(sizeof(float) * d), *k = malloc(sizeof(float) * (size_t)n * d);
        float *kmin = malloc(sizeof(float) * d), *kmax = malloc(sizeof(float) * d);
        mt_test_fill_uniform(q, d, lo, hi, 7000 + trial);
        mt_test_fill_uniform(k, (size_t)n * d, lo, hi, 9000 + trial);
        mt_dap_block_summary(k, n, d, d, kmin, kmax);
        float b = mt_dap_block_bound(q, kmin, kmax, d);
        for (int t = 0; t < n; t++) {
            double exact = 0;
            float f = 0;
            for (int i = 0; i < d; i++) {
                exact += (double)q[i] * k[(size_t)t * d + i];
                f += q[i] * k[(size_t)t * d + i];
            }
            assert_true((double)b >= exact);
            /* float dot products as the attention computes them: within rounding of the bound */
            assert_true(f <= b + 1e-5f * (fabsf(b) + 1.0f) * (float)d);
        }
        /* the bound is attained when a key sits at the corner q's signs pick */
        for (int i = 0; i < d; i++) k[i] = q[i] >= 0 ? kmax[i] : kmin[i];
        double corner = 0, mag = 0;
        for (int i = 0; i < d; i++) {
            corner += (double)q[i] * k[i];
            mag += fabs((double)q[i] * k[i]);
        }
        /* tight up to the allowance for its float rounding, (2d + 16)·2^-24·Σ|term| */
        if (!(fabs((double)b - corner) <= 2.0 * (2 * d + 16) * 0x1p-24 * mag + 1e-6 * (fabs(corner) + 1.0)))
            fail_msg("d %d: bound %.9g, corner %.9g, Σ|term| %.6g", d, (double)b, corner, mag);
        free(q);
        free(k);
        free(kmin);
        free(kmax);
    }
}

static void test_skip_monotone_and_always_kept(void **state) {
    (void)state;
    const int nb = 64;
    float bounds[64];
    int ntok[64];
    uint8_t keep[64];
    mt_test_fill_uniform(bounds, nb, -20, 20, 3);
    for (int b = 0; b < nb; b++) ntok[b] = 16;
    int prev = nb + 1;
    float taus[] = {0.0f, 1e-6f, 1e-3f, 0.01f, 0.1f, 0.5f, 0.99f};
    for (size_t i = 0; i < sizeof taus / sizeof *taus; i++) {
        mt_dap_opts o = {.threshold = taus[i], .n_sink_blocks = 1, .n_local_blocks = 2, .mass_floor = 0};
        int kept = mt_dap_select(bounds, ntok, nb, 1.0f, &o, keep, NULL);
        assert_true(kept <= prev);
        prev = kept;
        assert_true(keep[0] && keep[nb - 1] && keep[nb - 2]);
        float best = -INFINITY;
        for (int b = 0; b < nb; b++) best = bounds[b] > best ? bounds[b] : best;
        for (int b = 1; b < nb - 2; b++) assert_int_equal(keep[b], !(exp((double)bounds[b] - best) < taus[i]));
    }
    assert_true(prev < nb / 2); /* τ = 0.99 over ±20 bounds skips most blocks */
}

static void test_fallback(void **state) {
    (void)state;
    /* one dominant block and 9 just under the threshold: each skipped block carries e^-1 of the
     * best block's mass bound, so kept share = 1 / (1 + 9·e^-1) ≈ 0.232 */
    float bounds[10] = {5, 4, 4, 4, 4, 4, 4, 4, 4, 4};
    int ntok[10] = {16, 16, 16, 16, 16, 16, 16, 16, 16, 16};
    uint8_t keep[10];
    double share = 1.0 / (1.0 + 9.0 * exp(-1.0));
    mt_dap_counts c = {0};
    mt_dap_opts o = {.threshold = 0.5f, .mass_floor = (float)share + 0.01f};
    assert_int_equal(mt_dap_select(bounds, ntok, 10, 1.0f, &o, keep, &c), 10);
    for (int b = 0; b < 10; b++) assert_int_equal(keep[b], 1);
    assert_int_equal((int)c.fallbacks, 1);
    assert_int_equal((int)c.skipped, 0);
    o.mass_floor = (float)share - 0.01f;
    assert_int_equal(mt_dap_select(bounds, ntok, 10, 1.0f, &o, keep, &c), 1);
    assert_int_equal(keep[0], 1);
    assert_int_equal((int)c.fallbacks, 1);
    assert_int_equal((int)c.skipped, 9);
    assert_int_equal((int)c.queries, 2);
    assert_int_equal((int)c.blocks, 20);
    /* the fallback's output is full attention exactly */
    const int d = 8, n = 160;
    float q[8], *k = malloc(sizeof(float) * n * d), *v = malloc(sizeof(float) * n * d), full[8], fb[8];
    mt_test_fill_uniform(q, d, -1, 1, 5);
    mt_test_fill_uniform(k, (size_t)n * d, -1, 1, 6);
    mt_test_fill_uniform(v, (size_t)n * d, -1, 1, 8);
    void *scr = malloc(mt_dap_attend_scratch(n, d, 16));
    mt_dap_attend(q, k, v, n, d, 16, 1.0f, NULL, NULL, scr, full);
    mt_dap_opts all = {.threshold = 0.999f, .mass_floor = 1.0f};
    mt_dap_counts c2 = {0};
    mt_dap_attend(q, k, v, n, d, 16, 1.0f, &all, &c2, scr, fb);
    if (c2.skipped == 0) {
        assert_int_equal((int)c2.fallbacks, 1);
        assert_memory_equal(full, fb, sizeof full);
    }
    free(scr);
    free(k);
    free(v);
}

static void test_adaptive_k(void **state) {
    (void)state;
    const int n = 50, E = 16, K = 4;
    float logits[50 * 16], scores[50 * 16], w[50 * 4], w_ref[50 * 4], scores2[50 * 16], w2[50 * 2];
    int32_t idx[50 * 4], idx_ref[50 * 4], idx2[50 * 2], used[50];
    mt_test_fill_uniform(logits, (size_t)n * E, -3, 3, 42);
    mt_route_norm norms[] = {MT_ROUTE_NORM_NONE, MT_ROUTE_NORM_SUM};
    for (int ni = 0; ni < 2; ni++) {
        mt_route_args a = {.n_tok = n, .n_expert = E, .top_k = K, .scoring = MT_ROUTE_SCORING_SOFTMAX,
                           .method = MT_ROUTE_METHOD_GREEDY, .n_group = 1, .topk_group = 1, .norm = norms[ni],
                           .scale = 1.0f};
        mt_route_forward(be, &a, logits, scores, idx_ref, w_ref);
        memcpy(idx, idx_ref, sizeof idx);
        memcpy(w, w_ref, sizeof w);
        mt_adaptive_k ak = {.threshold = 1.0f, .min_k = 1, .max_k = K};
        assert_int_equal(mt_route_adaptive_k(scores, n, E, K, idx, w, &ak, a.norm, a.scale, used), n * K);
        assert_memory_equal(w, w_ref, sizeof w);
        assert_memory_equal(idx, idx_ref, sizeof idx);
        /* max_k 2 with threshold 1 = top-2 routing */
        ak.max_k = 2;
        assert_int_equal(mt_route_adaptive_k(scores, n, E, K, idx, w, &ak, a.norm, a.scale, used), n * 2);
        a.top_k = 2;
        mt_route_forward(be, &a, logits, scores2, idx2, w2);
        for (int t = 0; t < n; t++) {
            for (int j = 0; j < 2; j++) {
                assert_int_equal(idx[t * K + j], idx2[t * 2 + j]);
                assert_float_equal(w[t * K + j], w2[t * 2 + j], 1e-6);
            }
            assert_true(w[t * K + 2] == 0.0f && w[t * K + 3] == 0.0f);
        }
        /* a tiny threshold takes min_k; a middle one takes the first c whose sum passes it */
        memcpy(w, w_ref, sizeof w);
        ak = (mt_adaptive_k){.threshold = 1e-6f, .min_k = 1, .max_k = K};
        assert_int_equal(mt_route_adaptive_k(scores, n, E, K, idx_ref, w, &ak, a.norm, a.scale, used), n);
        memcpy(w, w_ref, sizeof w);
        ak.threshold = 0.3f;
        int tot = mt_route_adaptive_k(scores, n, E, K, idx_ref, w, &ak, a.norm, a.scale, used);
        int sum = 0;
        for (int t = 0; t < n; t++) {
            double cum = 0, tsum = 0;
            int c = K;
            for (int e = 0; e < E; e++) tsum += scores[t * E + e];
            for (int j = 0; j < K; j++) {
                cum += scores[t * E + idx_ref[t * K + j]] / tsum;
                if (cum >= 0.3) {
                    c = j + 1;
                    break;
                }
            }
            assert_int_equal(used[t], c);
            sum += c;
        }
        assert_int_equal(tot, sum);
        assert_true(tot < n * K && tot > n);
    }
}

static double eval_base_loss(const char *out) {
    const char *b = strstr(out, "\nbase ");
    double loss = NAN;
    if (b) sscanf(b + 6, "%lf", &loss);
    return loss;
}

static double eval_mean_experts(const char *out) {
    const char *b = strstr(out, "MoE layer ");
    double e = NAN;
    if (b) sscanf(b + 10, "%lf", &e);
    return e;
}

/* moetune eval end to end: threshold 1 is the router's top-k (same loss to the printed digit),
 * a tiny threshold routes min_k experts, out-of-range values are bad usage naming the flag */
static void test_eval_cli(void **state) {
    (void)state;
    const char *tmp = mt_test_tmpdir("dap_attention_cli");
    char model[4200], data[4200];
    snprintf(model, sizeof model, "%s/model", tmp);
    snprintf(data, sizeof data, "%s/eval.jsonl", tmp);
    FILE *f = fopen(data, "w");
    assert_non_null(f);
    for (int i = 0; i < 6; i++)
        fprintf(f, "{\"text\": \"Hypertrophy of the left ventricle, case %d, and the licensee may copy it.\"}\n", i);
    fclose(f);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 5 '%s'", model);
    if (rc != 0) fail_msg("init: %s", out);
    free(out);
    rc = mt_test_run_cli(&out, "eval --model '%s' --data '%s' --threads 2", model, data);
    if (rc != 0) fail_msg("eval: %s", out);
    double off = eval_base_loss(out);
    free(out);
    rc = mt_test_run_cli(&out, "eval --model '%s' --data '%s' --threads 2 --expert-threshold 1", model, data);
    if (rc != 0) fail_msg("eval: %s", out);
    assert_float_equal(eval_base_loss(out), off, 0);
    double e_all = eval_mean_experts(out);
    free(out);
    rc = mt_test_run_cli(&out, "eval --model '%s' --data '%s' --threads 2 --expert-threshold 0.001 --min-k 1", model,
                         data);
    if (rc != 0) fail_msg("eval: %s", out);
    double one = eval_base_loss(out);
    assert_float_equal(eval_mean_experts(out), 1.0, 0);
    free(out);
    print_message("eval loss top-k %.4f (%.3f experts), one expert %.4f\n", off, e_all, one);
    assert_true(e_all > 1.0);
    assert_true(isfinite(one) && one != off);
    /* generate: greedy text with threshold 1 is the top-k text */
    char *g0 = NULL, *g1 = NULL;
    rc = mt_test_run_cli(&g0, "generate --model '%s' --prompt 'Hypertrophy' --max-tokens 12 --temperature 0 --no-eos "
                              "--threads 2", model);
    if (rc != 0) fail_msg("generate: %s", g0);
    rc = mt_test_run_cli(&g1, "generate --model '%s' --prompt 'Hypertrophy' --max-tokens 12 --temperature 0 --no-eos "
                              "--threads 2 --expert-threshold 1", model);
    if (rc != 0) fail_msg("generate: %s", g1);
    /* the timing line that follows the text differs run to run */
    char *c0 = strstr(g0, "\nprompt: "), *c1 = strstr(g1, "\nprompt: ");
    assert_non_null(c0);
    assert_non_null(c1);
    *c0 = *c1 = 0;
    assert_string_equal(g0, g1);
    free(g0);
    free(g1);
    rc = mt_test_run_cli(&out, "generate --model '%s' --prompt 'x' --expert-threshold -0.5", model);
    assert_int_equal(rc, 2);
    free(out);
    rc = mt_test_run_cli(&out, "eval --model '%s' --data '%s' --expert-threshold 1.5", model, data);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "--expert-threshold 1.5"));
    free(out);
    rc = mt_test_run_cli(&out, "eval --model '%s' --data '%s' --expert-threshold 0.5 --min-k 0", model, data);
    assert_int_equal(rc, 2);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threshold_zero_is_full), cmocka_unit_test(test_bounds_are_upper_bounds),
        cmocka_unit_test(test_skip_monotone_and_always_kept), cmocka_unit_test(test_fallback),
        cmocka_unit_test(test_adaptive_k), cmocka_unit_test(test_eval_cli),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
