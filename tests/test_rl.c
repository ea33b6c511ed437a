/* test_rl.c — the rl room against TRL: every DPO loss type, SimPO, ORPO, the reward loss, GRPO
 * and PPO pieces on the fixed inputs of tests/fixtures/rl/rl_reference.json (made by
 * tests/reference/make_rl_fixtures.py with TRL's own code; losses 1e-4 relative, gradients 1e-3),
 * plus hand-computed cases for GAE, clipping, group advantages, KL estimators and rule rewards. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl/rl.h"
#include "testutil.h"

#define LOSS_TOL 1e-4
#define GRAD_TOL 1e-3

static cJSON *fixture;
/* the worst agreement seen, printed at the end for the record */
static double worst_loss_err, worst_grad_err;

static int load_fixture(void **state) {
    (void)state;
    char *text = NULL;
    size_t len;
    mt_error err = {0};
    if (mt_read_file(mt_test_fixture("rl/rl_reference.json"), &text, &len, &err) != MT_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    fixture = cJSON_Parse(text);
    free(text);
    return fixture ? 0 : -1;
}

static int free_fixture(void **state) {
    (void)state;
    cJSON_Delete(fixture);
    printf("agreement with TRL: worst loss relative error %.3g, worst gradient relative error %.3g\n",
           worst_loss_err, worst_grad_err);
    return 0;
}

static cJSON *get(const cJSON *o, const char *key) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) fail_msg("fixture: no key \"%s\"", key);
    return v;
}

static double num(const cJSON *o, const char *key) {
    cJSON *v = get(o, key);
    return cJSON_IsNull(v) ? NAN : v->valuedouble;
}

/* a JSON array of numbers (null = NaN) as a malloc'ed float array */
static float *floats(const cJSON *o, const char *key, size_t *n_out) {
    cJSON *a = get(o, key);
    size_t n = (size_t)cJSON_GetArraySize(a);
    float *x = calloc(n ? n : 1, sizeof *x);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) x[i++] = cJSON_IsNull(e) ? NAN : (float)e->valuedouble;
    if (n_out) *n_out = n;
    return x;
}

static void check_loss(const char *what, double got, double want) {
    double e = fabs(got - want) / fmax(fabs(want), 1e-6);
    if (e > worst_loss_err) worst_loss_err = e;
    if (e > LOSS_TOL) fail_msg("%s: loss %.9g, TRL %.9g (relative error %.3g)", what, got, want, e);
}

static void check_grad(const char *what, const float *got, const float *want, size_t n) {
    double e = mt_test_rel_err(got, want, n, 1e-6);
    if (e > worst_grad_err) worst_grad_err = e;
    mt_test_assert_close(what, got, want, n, GRAD_TOL);
}

/* ---------------------------------------------------------------- DPO family vs TRL */

static void test_dpo_matches_trl(void **state) {
    (void)state;
    const cJSON *d = get(fixture, "dpo");
    size_t n;
    float *pc = floats(d, "policy_chosen", &n), *pr = floats(d, "policy_rejected", NULL);
    float *rc = floats(d, "ref_chosen", NULL), *rr = floats(d, "ref_rejected", NULL);
    float *lc = floats(d, "chosen_len", NULL), *lr = floats(d, "rejected_len", NULL);
    mt_dpo_batch b = {.n = n, .policy_chosen = pc, .policy_rejected = pr, .ref_chosen = rc, .ref_rejected = rr,
                      .chosen_len = lc, .rejected_len = lr, .logits_chosen = NAN, .logits_rejected = NAN};
    float *g[4];
    for (int k = 0; k < 4; k++) g[k] = calloc(n, sizeof(float));
    mt_dpo_grads grads = {g[0], g[1], g[2], g[3]};
    int n_cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, get(d, "cases")) {
        mt_dpo_config cfg;
        mt_dpo_config_default(&cfg);
        cfg.n_terms = 0;
        const cJSON *t;
        char what[160] = "";
        cJSON_ArrayForEach(t, get(c, "types")) {
            mt_error err = {0};
            assert_int_equal(mt_dpo_loss_parse(t->valuestring, &cfg.types[cfg.n_terms], &err), MT_OK);
            strncat(what, t->valuestring, sizeof what - strlen(what) - 2);
            strncat(what, "+", sizeof what - strlen(what) - 1);
            cfg.n_terms++;
        }
        int k = 0;
        cJSON_ArrayForEach(t, get(c, "weights")) cfg.weights[k++] = t->valuedouble;
        cfg.beta = num(c, "beta");
        cfg.label_smoothing = num(c, "label_smoothing");
        cfg.discopop_tau = num(c, "discopop_tau");
        assert_int_equal(mt_dpo_fdiv_parse(get(c, "f_divergence")->valuestring, &cfg.f_divergence, NULL), MT_OK);
        cfg.f_alpha = num(c, "f_alpha");
        snprintf(what + strlen(what), sizeof what - strlen(what), " %s", get(c, "f_divergence")->valuestring);
        snprintf(what + strlen(what), sizeof what - strlen(what), " beta=%g", cfg.beta);

        size_t sb = mt_dpo_scratch_bytes(&cfg, n);
        void *scratch = sb ? malloc(sb) : NULL;
        double loss;
        mt_dpo_metrics m;
        mt_error err = {0};
        mt_status st = mt_dpo_loss_compute(&cfg, &b, &loss, NULL, &grads, &m, scratch, &err);
        if (st != MT_OK) fail_msg("%s: %s", what, err.msg);
        check_loss(what, loss, num(c, "loss"));
        const char *keys[4] = {"grad_policy_chosen", "grad_policy_rejected", "grad_ref_chosen", "grad_ref_rejected"};
        for (int j = 0; j < 4; j++) {
            float *want = floats(c, keys[j], NULL);
            char w2[200];
            snprintf(w2, sizeof w2, "%s %s", what, keys[j]);
            check_grad(w2, g[j], want, n);
            free(want);
        }
        /* the metrics, under TRL's names */
        mt_rl_metric list[MT_DPO_N_METRICS];
        mt_dpo_metrics_list(&m, list);
        const cJSON *tm = get(c, "metrics");
        for (int j = 0; j < MT_DPO_N_METRICS; j++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(tm, list[j].name);
            if (!v) continue; /* the logits metrics are computed by the caller, who holds the logits */
            check_loss(list[j].name, list[j].value, v->valuedouble);
        }
        free(scratch);
        n_cases++;
    }
    assert_true(n_cases >= 30);
    for (int k = 0; k < 4; k++) free(g[k]);
    free(pc), free(pr), free(rc), free(rr), free(lc), free(lr);
}

/* The data path as TRL runs it: per-token log-probs summed over the completion mask, the loss,
 * and its gradient broadcast back to every completion token. */
static void test_dpo_token_path_matches_trl(void **state) {
    (void)state;
    const cJSON *d = get(fixture, "dpo");
    size_t n, nt;
    float *pc = floats(d, "policy_chosen", &n), *pr = floats(d, "policy_rejected", NULL);
    float *rc = floats(d, "ref_chosen", NULL), *rr = floats(d, "ref_rejected", NULL);
    float *lc = floats(d, "chosen_len", NULL), *lr = floats(d, "rejected_len", NULL);
    float *tok = floats(d, "token_logp", &nt), *maskf = floats(d, "token_mask", NULL);
    size_t T = (size_t)num(d, "T"), rows = 2 * n;
    assert_int_equal(nt, rows * T);
    uint8_t *mask = calloc(nt, 1);
    for (size_t i = 0; i < nt; i++) mask[i] = maskf[i] != 0;
    float *sums = calloc(rows, sizeof(float)), *counts = calloc(rows, sizeof(float));
    mt_rl_seq_logps(rows, T, tok, mask, sums, counts);
    check_grad("summed chosen log-probs", sums, pc, n);
    check_grad("summed rejected log-probs", sums + n, pr, n);
    for (size_t i = 0; i < n; i++) {
        assert_float_equal(counts[i], lc[i], 0);
        assert_float_equal(counts[n + i], lr[i], 0);
    }
    mt_dpo_batch b = {.n = n, .policy_chosen = sums, .policy_rejected = sums + n, .ref_chosen = rc,
                      .ref_rejected = rr, .chosen_len = counts, .rejected_len = counts + n};
    float *dsum = calloc(rows, sizeof(float)), *dtok = calloc(nt, sizeof(float));
    mt_dpo_grads g = {.policy_chosen = dsum, .policy_rejected = dsum + n};
    const cJSON *c;
    int checked = 0;
    cJSON_ArrayForEach(c, get(d, "cases")) {
        mt_dpo_config cfg;
        mt_dpo_config_default(&cfg);
        cfg.n_terms = 0;
        const cJSON *t;
        cJSON_ArrayForEach(t, get(c, "types")) assert_int_equal(mt_dpo_loss_parse(t->valuestring, &cfg.types[cfg.n_terms++], NULL), MT_OK);
        int k = 0;
        cJSON_ArrayForEach(t, get(c, "weights")) cfg.weights[k++] = t->valuedouble;
        cfg.beta = num(c, "beta");
        cfg.label_smoothing = num(c, "label_smoothing");
        cfg.discopop_tau = num(c, "discopop_tau");
        assert_int_equal(mt_dpo_fdiv_parse(get(c, "f_divergence")->valuestring, &cfg.f_divergence, NULL), MT_OK);
        cfg.f_alpha = num(c, "f_alpha");
        size_t sb = mt_dpo_scratch_bytes(&cfg, n);
        void *scratch = sb ? malloc(sb) : NULL;
        double loss;
        assert_int_equal(mt_dpo_loss_compute(&cfg, &b, &loss, NULL, &g, NULL, scratch, NULL), MT_OK);
        free(scratch);
        check_loss("token path loss", loss, num(c, "loss"));
        mt_rl_seq_logps_backward(rows, T, mask, dsum, NULL, dtok);
        float *want = floats(c, "token_grad", NULL);
        check_grad("d per-token log-probs", dtok, want, nt);
        free(want);
        checked++;
    }
    assert_true(checked >= 30);
    /* LD-DPO: the policy sums weighted past the shared length; TRL's per-token gradients */
    cJSON_ArrayForEach(c, get(d, "ld_cases")) {
        mt_dpo_config cfg;
        mt_dpo_config_default(&cfg);
        cfg.n_terms = 0;
        const cJSON *t;
        cJSON_ArrayForEach(t, get(c, "types")) assert_int_equal(mt_dpo_loss_parse(t->valuestring, &cfg.types[cfg.n_terms++], NULL), MT_OK);
        int k = 0;
        cJSON_ArrayForEach(t, get(c, "weights")) cfg.weights[k++] = t->valuedouble;
        cfg.beta = num(c, "beta");
        double ld = num(c, "ld_alpha");
        float *ldsums = calloc(rows, sizeof(float));
        mt_rl_pair_logps_ld(n, T, tok, mask, ld, ldsums);
        if (ld == 1.0) check_grad("ld_alpha 1 = plain sums", ldsums, sums, rows);
        mt_dpo_batch lb = b;
        lb.policy_chosen = ldsums;
        lb.policy_rejected = ldsums + n;
        double loss;
        assert_int_equal(mt_dpo_loss_compute(&cfg, &lb, &loss, NULL, &g, NULL, NULL, NULL), MT_OK);
        check_loss("ld-dpo loss", loss, num(c, "loss"));
        mt_rl_pair_logps_ld_backward(n, T, mask, ld, dsum, dtok);
        float *want = floats(c, "token_grad", NULL);
        check_grad("ld-dpo d per-token log-probs", dtok, want, nt);
        free(want);
        free(ldsums);
        checked++;
    }
    /* the average's backward spreads d_avg over the row's tokens */
    float da[2] = {3.0f, 0.0f}, dt[4];
    uint8_t m2[4] = {1, 1, 0, 0};
    mt_rl_seq_logps_backward(2, 2, m2, NULL, da, dt);
    assert_float_equal(dt[0], 1.5, 0);
    assert_float_equal(dt[1], 1.5, 0);
    assert_float_equal(dt[2], 0, 0);
    free(pc), free(pr), free(rc), free(rr), free(lc), free(lr), free(tok), free(maskf), free(mask);
    free(sums), free(counts), free(dsum), free(dtok);
}

static void test_dpo_config_checks(void **state) {
    (void)state;
    mt_dpo_config c;
    mt_dpo_config_default(&c);
    mt_error err = {0};
    assert_int_equal(mt_dpo_config_check(&c, &err), MT_OK);
    c.types[0] = MT_DPO_LOSS_ROBUST;
    c.label_smoothing = 0.5;
    assert_int_equal(mt_dpo_config_check(&c, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "[0, 0.5)"));
    mt_error_clear(&err);
    c.types[0] = MT_DPO_LOSS_EXO_PAIR;
    c.label_smoothing = 0;
    assert_int_equal(mt_dpo_config_check(&c, &err), MT_ERR_INVALID);
    mt_error_clear(&err);
    c.types[0] = MT_DPO_LOSS_SIGMOID;
    c.beta = 0;
    assert_int_equal(mt_dpo_config_check(&c, &err), MT_ERR_INVALID);
    mt_error_clear(&err);
    /* an f-divergence only with the losses TRL allows it for */
    c.beta = 0.1;
    c.types[0] = MT_DPO_LOSS_BCO_PAIR;
    c.f_divergence = MT_DPO_FDIV_JS;
    mt_error_clear(&err);
    assert_int_equal(mt_dpo_config_check(&c, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "bco_pair"));
    c.types[0] = MT_DPO_LOSS_HINGE;
    assert_int_equal(mt_dpo_config_check(&c, NULL), MT_OK);
    c.f_divergence = MT_DPO_FDIV_REVERSE_KL;
    mt_dpo_fdiv fd;
    assert_int_equal(mt_dpo_fdiv_parse("kl", &fd, &err), MT_ERR_INVALID);
    mt_error_clear(&err);
    mt_dpo_loss t;
    assert_int_equal(mt_dpo_loss_parse("sigmod", &t, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "did you mean \"sigmoid\""));
    for (int i = 0; i < MT_DPO_LOSS_COUNT; i++) {
        assert_int_equal(mt_dpo_loss_parse(mt_dpo_loss_name((mt_dpo_loss)i), &t, NULL), MT_OK);
        assert_int_equal(t, i);
    }
    /* aot without scratch is refused rather than allocating inside a step */
    mt_dpo_config_default(&c);
    c.types[0] = MT_DPO_LOSS_AOT;
    float x[2] = {-1, -2};
    mt_dpo_batch b = {.n = 2, .policy_chosen = x, .policy_rejected = x, .ref_chosen = x, .ref_rejected = x};
    double loss;
    mt_error_clear(&err);
    assert_int_equal(mt_dpo_loss_compute(&c, &b, &loss, NULL, NULL, NULL, NULL, &err), MT_ERR_INVALID);
}

/* sigmoid by hand: one pair with Δ = 2, β = 0.5 → −logσ(1) = log(1 + e^−1) */
static void test_dpo_sigmoid_by_hand(void **state) {
    (void)state;
    mt_dpo_config c;
    mt_dpo_config_default(&c);
    c.beta = 0.5;
    float pc = -3, pr = -6, rc = -4, rr = -5; /* c = 1, r = −1, Δ = 2 */
    mt_dpo_batch b = {.n = 1, .policy_chosen = &pc, .policy_rejected = &pr, .ref_chosen = &rc, .ref_rejected = &rr};
    float g0, g1;
    mt_dpo_grads g = {.policy_chosen = &g0, .policy_rejected = &g1};
    double loss;
    mt_dpo_metrics m;
    assert_int_equal(mt_dpo_loss_compute(&c, &b, &loss, NULL, &g, &m, NULL, NULL), MT_OK);
    assert_float_equal(loss, log1p(exp(-1.0)), 1e-12);
    double s = 1 / (1 + exp(1.0)); /* σ(−1) */
    assert_float_equal(g0, -0.5 * s, 1e-7);
    assert_float_equal(g1, 0.5 * s, 1e-7);
    assert_float_equal(m.rewards_chosen, 0.5, 1e-12);
    assert_float_equal(m.rewards_rejected, -0.5, 1e-12);
    assert_float_equal(m.rewards_accuracies, 1.0, 0);
    assert_float_equal(m.rewards_margins, 1.0, 1e-12);
}

/* ---------------------------------------------------------------- SimPO, ORPO, reward vs TRL */

static void test_simpo_orpo_match_trl(void **state) {
    (void)state;
    const cJSON *d = get(fixture, "pref_free");
    size_t n;
    float *a = floats(d, "chosen_avg", &n), *r = floats(d, "rejected_avg", NULL);
    mt_pref_free_batch b = {.n = n, .chosen_avg = a, .rejected_avg = r, .nll = num(d, "nll"),
                            .logits_chosen = NAN, .logits_rejected = NAN};
    float *gc = calloc(n, sizeof(float)), *gr = calloc(n, sizeof(float));
    const cJSON *c;
    cJSON_ArrayForEach(c, get(d, "simpo")) {
        mt_simpo_config cfg = {num(c, "beta"), num(c, "gamma"), num(c, "label_smoothing"), num(c, "cpo_alpha")};
        double loss, dnll;
        mt_pref_free_metrics m;
        assert_int_equal(mt_simpo_loss(&cfg, &b, &loss, gc, gr, &dnll, &m, NULL), MT_OK);
        check_loss("simpo", loss, num(c, "loss"));
        float *wc = floats(c, "grad_chosen", NULL), *wr = floats(c, "grad_rejected", NULL);
        check_grad("simpo d chosen", gc, wc, n);
        check_grad("simpo d rejected", gr, wr, n);
        if (cfg.cpo_alpha != 0) check_loss("simpo d nll", dnll, num(c, "grad_nll"));
        check_loss("simpo rewards/chosen", m.base.rewards_chosen, num(c, "rewards_chosen"));
        check_loss("simpo rewards/rejected", m.base.rewards_rejected, num(c, "rewards_rejected"));
        check_loss("simpo rewards/accuracies", m.base.rewards_accuracies, num(c, "rewards_accuracies"));
        free(wc), free(wr);
    }
    cJSON_ArrayForEach(c, get(d, "orpo")) {
        mt_orpo_config cfg = {num(c, "beta")};
        double loss, dnll;
        mt_pref_free_metrics m;
        assert_int_equal(mt_orpo_loss(&cfg, &b, &loss, gc, gr, &dnll, &m, NULL), MT_OK);
        check_loss("orpo", loss, num(c, "loss"));
        float *wc = floats(c, "grad_chosen", NULL), *wr = floats(c, "grad_rejected", NULL);
        check_grad("orpo d chosen", gc, wc, n);
        check_grad("orpo d rejected", gr, wr, n);
        check_loss("orpo d nll", dnll, num(c, "grad_nll"));
        check_loss("orpo log_odds_ratio", m.log_odds_ratio, num(c, "log_odds_ratio"));
        check_loss("orpo log_odds_chosen", m.log_odds_chosen, num(c, "log_odds_chosen"));
        check_loss("orpo rewards/chosen", m.base.rewards_chosen, num(c, "rewards_chosen"));
        mt_rl_metric ml[MT_PREF_FREE_N_METRICS];
        mt_pref_free_metrics_list(&m, ml);
        assert_string_equal(ml[0].name, "rewards/chosen");
        assert_string_equal(ml[MT_DPO_N_METRICS + 1].name, "log_odds_ratio");
        check_loss("log_odds_ratio", ml[MT_DPO_N_METRICS + 1].value, num(c, "log_odds_ratio"));
        assert_float_equal(ml[MT_DPO_N_METRICS].value, b.nll, 0);
        free(wc), free(wr);
    }
    /* ORPO's odds are undefined at log-prob 0 */
    float zero = 0.0f;
    mt_pref_free_batch bad = {.n = 1, .chosen_avg = &zero, .rejected_avg = a};
    mt_orpo_config oc = {0.1};
    double loss;
    mt_error err = {0};
    assert_int_equal(mt_orpo_loss(&oc, &bad, &loss, NULL, NULL, NULL, NULL, &err), MT_ERR_INVALID);
    free(gc), free(gr), free(a), free(r);
}

static void test_reward_matches_trl(void **state) {
    (void)state;
    const cJSON *d = get(fixture, "reward");
    size_t n;
    float *rc = floats(d, "chosen", &n), *rr = floats(d, "rejected", NULL), *mg = floats(d, "margin", NULL);
    float *gc = calloc(n, sizeof(float)), *gr = calloc(n, sizeof(float));
    const cJSON *c;
    cJSON_ArrayForEach(c, get(d, "cases")) {
        double center = num(c, "center"); /* null = TRL's None = NaN here */
        double loss;
        mt_reward_metrics m;
        assert_int_equal(mt_reward_bt_loss(n, rc, rr, cJSON_IsTrue(get(c, "margin")) ? mg : NULL, center, &loss, gc, gr,
                                           &m, NULL),
                         MT_OK);
        check_loss("reward loss", loss, num(c, "loss"));
        float *wc = floats(c, "grad_chosen", NULL), *wr = floats(c, "grad_rejected", NULL);
        check_grad("reward d chosen", gc, wc, n);
        check_grad("reward d rejected", gr, wr, n);
        const cJSON *tm = get(c, "metrics");
        check_loss("accuracy", m.accuracy, num(tm, "accuracy"));
        check_loss("margin", m.margin, num(tm, "margin"));
        check_loss("mean_reward", m.mean_reward, num(tm, "mean_reward"));
        check_loss("min_reward", m.min_reward, num(tm, "min_reward"));
        check_loss("max_reward", m.max_reward, num(tm, "max_reward"));
        mt_rl_metric ml[MT_REWARD_N_METRICS];
        mt_reward_metrics_list(&m, ml);
        for (int j = 0; j < MT_REWARD_N_METRICS; j++) check_loss(ml[j].name, ml[j].value, num(tm, ml[j].name));
        free(wc), free(wr);
    }
    free(rc), free(rr), free(mg), free(gc), free(gr);
}

/* ---------------------------------------------------------------- GRPO vs TRL */

static void test_grpo_matches_trl(void **state) {
    (void)state;
    const cJSON *d = get(fixture, "grpo");
    size_t G = (size_t)num(d, "G"), K = (size_t)num(d, "K"), T = (size_t)num(d, "T"), N = G * K;
    size_t nf;
    float *per_func = floats(d, "rewards_per_func", &nf);
    size_t F = nf / N;
    cJSON *wj = get(d, "reward_weights");
    double weights[8];
    for (size_t f = 0; f < F; f++) weights[f] = cJSON_GetArrayItem(wj, (int)f)->valuedouble;
    float *combined = calloc(N, sizeof(float)), *want_combined = floats(d, "combined_rewards", NULL);
    mt_grpo_combine_rewards(N, F, per_func, weights, combined);
    for (size_t i = 0; i < N; i++) {
        if (isnan(want_combined[i]))
            assert_true(isnan(combined[i]));
        else
            assert_float_equal(combined[i], want_combined[i], 1e-6);
    }
    float *adv = calloc(N, sizeof(float));
    const cJSON *c;
    cJSON_ArrayForEach(c, get(d, "advantage_cases")) {
        mt_grpo_scale scale;
        assert_int_equal(mt_grpo_scale_parse(get(c, "scale")->valuestring, &scale, NULL), MT_OK);
        mt_grpo_adv_stats st;
        assert_int_equal(mt_grpo_advantages(G, K, combined, scale, adv, &st, NULL), MT_OK);
        float *want = floats(c, "advantages", NULL);
        check_grad("grpo advantages", adv, want, N);
        check_loss("reward", st.reward_mean, num(c, "reward"));
        check_loss("reward_std", st.reward_std, num(c, "reward_std"));
        check_loss("frac_reward_zero_std", st.frac_reward_zero_std, num(c, "frac_reward_zero_std"));
        free(want);
    }

    float *logp = floats(d, "logp", NULL), *old = floats(d, "old_logp", NULL), *ref = floats(d, "ref_logp", NULL);
    float *maskf = floats(d, "mask", NULL), *a = floats(d, "advantages", NULL);
    uint8_t *mask = calloc(N * T, 1);
    for (size_t i = 0; i < N * T; i++) mask[i] = maskf[i] != 0;
    float *grad = calloc(N * T, sizeof(float));
    cJSON_ArrayForEach(c, get(d, "cases")) {
        mt_grpo_config cfg;
        mt_grpo_config_default(&cfg);
        assert_int_equal(mt_grpo_loss_type_parse(get(c, "loss_type")->valuestring, &cfg.loss_type, NULL), MT_OK);
        cfg.beta = num(c, "beta");
        cfg.epsilon_low = num(c, "epsilon_low");
        cfg.epsilon_high = num(c, "epsilon_high");
        cfg.max_completion_length = (size_t)num(c, "max_completion_length");
        cfg.sequence_level = !strcmp(get(c, "level")->valuestring, "sequence");
        float *case_adv = floats(c, "advantages", NULL);
        mt_grpo_batch b = {.B = N, .T = T, .logp = logp, .old_logp = cJSON_IsTrue(get(c, "use_old")) ? old : NULL,
                           .ref_logp = ref, .advantages = case_adv, .mask = mask, .num_items = num(c, "num_items")};
        double loss;
        mt_grpo_metrics m;
        mt_error err = {0};
        if (mt_grpo_loss(&cfg, &b, &loss, grad, &m, &err) != MT_OK) fail_msg("%s", err.msg);
        char what[64];
        snprintf(what, sizeof what, "grpo %s beta=%g %s", get(c, "loss_type")->valuestring, cfg.beta,
                 get(c, "level")->valuestring);
        check_loss(what, loss, num(c, "loss"));
        float *want = floats(c, "grad", NULL);
        check_grad(what, grad, want, N * T);
        free(want);
        const cJSON *tm = get(c, "metrics");
        if (cfg.beta != 0) check_loss("kl", m.kl, num(tm, "kl"));
        check_loss("clip_ratio/low_mean", m.clip_low_mean, num(tm, "clip_ratio/low_mean"));
        check_loss("clip_ratio/high_mean", m.clip_high_mean, num(tm, "clip_ratio/high_mean"));
        check_loss("clip_ratio/region_mean", m.clip_region_mean, num(tm, "clip_ratio/region_mean"));
        check_loss("clip_ratio/low_min", m.clip_low_min, num(tm, "clip_ratio/low_min"));
        check_loss("clip_ratio/high_max", m.clip_high_max, num(tm, "clip_ratio/high_max"));
        /* the list carries TRL's names: every key TRL logged is there with the same value */
        mt_grpo_adv_stats as = {0};
        mt_rl_metric ml[MT_GRPO_N_METRICS];
        mt_grpo_metrics_list(&as, &m, ml);
        const cJSON *kv;
        cJSON_ArrayForEach(kv, tm) {
            bool seen = false;
            for (int j = 0; j < MT_GRPO_N_METRICS; j++)
                if (!strcmp(ml[j].name, kv->string)) {
                    check_loss(kv->string, ml[j].value, kv->valuedouble);
                    seen = true;
                }
            if (!seen) fail_msg("TRL logs %s; the GRPO metric list lacks it", kv->string);
        }
        free(case_adv);
    }
    free(per_func), free(combined), free(want_combined), free(adv);
    free(logp), free(old), free(ref), free(maskf), free(a), free(mask), free(grad);
}

/* ---------------------------------------------------------------- PPO vs TRL */

static void test_ppo_matches_trl(void **state) {
    (void)state;
    const cJSON *d = get(fixture, "ppo");
    size_t B = (size_t)num(d, "B"), T = (size_t)num(d, "T"), n = B * T;
    float *logp = floats(d, "logp", NULL), *ref = floats(d, "ref_logp", NULL), *values = floats(d, "values", NULL);
    float *scores = floats(d, "scores", NULL);
    int32_t last[8];
    for (size_t b = 0; b < B; b++) last[b] = cJSON_GetArrayItem(get(d, "last"), (int)b)->valueint;
    float *rw = calloc(n, sizeof(float)), *kl = calloc(n, sizeof(float)), *adv = calloc(n, sizeof(float));
    float *ret = calloc(n, sizeof(float)), *wadv = calloc(n, sizeof(float)), *vmask = calloc(n, sizeof(float));
    float *grad = calloc(n, sizeof(float));
    uint8_t *mask = calloc(n, 1), *mask_p1 = calloc(n, 1);
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++) {
            mask[b * T + t] = (long)t <= last[b];
            mask_p1[b * T + t] = (long)t <= last[b] + 1; /* the value head keeps one more position */
            vmask[b * T + t] = mask_p1[b * T + t] ? values[b * T + t] : 0;
        }
    const cJSON *c;
    cJSON_ArrayForEach(c, get(d, "cases")) {
        const char *est_name = get(c, "kl_estimator")->valuestring;
        mt_kl_estimator est = !strcmp(est_name, "k1") ? MT_KL_K1 : MT_KL_K3;
        mt_ppo_rewards(B, T, logp, ref, last, scores, num(d, "kl_coef"), est, rw, kl);
        float *w = floats(c, "kl", NULL);
        check_grad("ppo kl", kl, w, n);
        free(w);
        w = floats(c, "rewards", NULL);
        check_grad("ppo rewards", rw, w, n);
        free(w);
        mt_ppo_gae(B, T, rw, vmask, num(d, "gamma"), num(d, "lam"), adv, ret);
        w = floats(c, "raw_advantages", NULL);
        check_grad("ppo gae advantages", adv, w, n);
        free(w);
        w = floats(c, "returns", NULL);
        check_grad("ppo returns", ret, w, n);
        free(w);
        assert_int_equal(mt_rl_masked_whiten(n, adv, mask, true, wadv, NULL), MT_OK);
        w = floats(c, "advantages", NULL);
        check_grad("ppo whitened advantages", wadv, w, n);
        free(w);

        float *newlp = floats(c, "new_logp", NULL), *vpred = floats(c, "vpred", NULL);
        double loss;
        mt_ppo_stats st;
        assert_int_equal(mt_ppo_policy_loss(n, newlp, logp, wadv, mask, num(d, "cliprange"), &loss, grad, &st, NULL),
                         MT_OK);
        check_loss("ppo pg_loss", loss, num(c, "pg_loss"));
        w = floats(c, "pg_grad", NULL);
        check_grad("ppo d new_logp", grad, w, n);
        free(w);
        check_loss("policy/clipfrac", st.clipfrac, num(c, "pg_clipfrac"));
        check_loss("policy/approxkl", st.approxkl, num(c, "approxkl"));
        check_loss("val/ratio", st.ratio_mean, num(c, "ratio_mean"));
        assert_int_equal(mt_ppo_value_loss(n, vpred, vmask, ret, mask_p1, num(d, "cliprange_value"), &loss, grad, &st,
                                           NULL),
                         MT_OK);
        check_loss("ppo vf_loss", loss, num(c, "vf_loss"));
        w = floats(c, "vf_grad", NULL);
        check_grad("ppo d vpred", grad, w, n);
        free(w);
        check_loss("val/clipfrac", st.clipfrac, num(c, "vf_clipfrac"));
        /* whiten_rewards: over the value positions, mean kept */
        float *wr = calloc(n, sizeof(float));
        assert_int_equal(mt_rl_masked_whiten(n, rw, mask_p1, false, wr, NULL), MT_OK);
        w = floats(c, "whitened_rewards", NULL);
        check_grad("ppo whitened rewards", wr, w, n);
        free(w), free(wr);
        mt_ppo_objective ob;
        mt_ppo_objective_metrics(B, T, kl, logp, mask, scores, num(d, "kl_coef"), &ob);
        check_loss("objective/kl", ob.kl, num(c, "objective_kl"));
        check_loss("objective/entropy", ob.entropy, num(c, "objective_entropy"));
        check_loss("objective/non_score_reward", ob.non_score_reward, num(c, "objective_non_score_reward"));
        check_loss("objective/rlhf_reward", ob.rlhf_reward, num(c, "objective_rlhf_reward"));
        check_loss("objective/scores", ob.scores, num(c, "objective_scores"));
        mt_rl_metric ml[MT_PPO_N_METRICS];
        mt_ppo_metrics_list(&ob, &st, 0.0, &st, loss, ml);
        assert_string_equal(ml[0].name, "objective/kl");
        assert_string_equal(ml[8].name, "loss/value_avg");
        assert_float_equal(ml[8].value, loss, 0);
        free(newlp), free(vpred);
    }
    /* entropy and the KL estimators */
    size_t rows = (size_t)num(d, "entropy_rows"), vocab = (size_t)num(d, "entropy_vocab");
    float *lg = floats(d, "entropy_logits", NULL), *want = floats(d, "entropy", NULL), ent[16];
    mt_rl_entropy_from_logits(rows, vocab, lg, ent);
    check_grad("entropy", ent, want, rows);
    free(lg), free(want);
    size_t nk;
    float *klp = floats(d, "kl_logp", &nk), *klr = floats(d, "kl_ref", NULL), kv[16], kg[16];
    const char *names[2] = {"k1", "k3"};
    for (int e = 0; e < 2; e++) {
        for (size_t i = 0; i < nk; i++) kv[i] = mt_rl_kl((mt_kl_estimator)e, klp[i], klr[i], &kg[i]);
        const cJSON *o = get(get(d, "kl"), names[e]);
        float *wv = floats(o, "value", NULL), *wg = floats(o, "grad", NULL);
        check_grad(names[e], kv, wv, nk);
        check_grad(names[e], kg, wg, nk);
        free(wv), free(wg);
    }
    free(klp), free(klr);
    free(logp), free(ref), free(values), free(scores), free(rw), free(kl), free(adv), free(ret), free(wadv);
    free(vmask), free(grad), free(mask), free(mask_p1);
}

/* ---------------------------------------------------------------- by hand */

static void test_gae_by_hand(void **state) {
    (void)state;
    /* δ2 = 2, A2 = 2; δ1 = 0 + 0.9·0 − 1 = −1, A1 = −1 + 0.72·2 = 0.44;
     * δ0 = 1 + 0.9·1 − 0.5 = 1.4, A0 = 1.4 + 0.72·0.44 = 1.7168 */
    float r[3] = {1, 0, 2}, v[3] = {0.5f, 1, 0}, a[3], ret[3];
    mt_ppo_gae(1, 3, r, v, 0.9, 0.8, a, ret);
    assert_float_equal(a[2], 2.0, 1e-6);
    assert_float_equal(a[1], 0.44, 1e-6);
    assert_float_equal(a[0], 1.7168, 1e-6);
    assert_float_equal(ret[0], 2.2168, 1e-6);
    assert_float_equal(ret[1], 1.44, 1e-6);
    assert_float_equal(ret[2], 2.0, 1e-6);
    /* γ = λ = 1 with zero values: the advantage is the reward-to-go */
    float r2[4] = {1, 2, 3, 4}, z[4] = {0}, a2[4], ret2[4];
    mt_ppo_gae(1, 4, r2, z, 1, 1, a2, ret2);
    assert_float_equal(a2[0], 10, 1e-6);
    assert_float_equal(a2[3], 4, 1e-6);
    /* whitening: [1, 2, 3] masked, 99 ignored → mean 2, unbiased var 1 */
    float x[4] = {1, 2, 99, 3}, w[4];
    uint8_t m[4] = {1, 1, 0, 1};
    assert_int_equal(mt_rl_masked_whiten(4, x, m, true, w, NULL), MT_OK);
    assert_float_equal(w[0], -1 / sqrt(1 + 1e-8), 1e-6);
    assert_float_equal(w[1], 0, 1e-6);
    assert_float_equal(w[2], 0, 0);
    assert_float_equal(w[3], 1 / sqrt(1 + 1e-8), 1e-6);
    uint8_t one[4] = {1, 0, 0, 0};
    mt_error err = {0};
    assert_int_equal(mt_rl_masked_whiten(4, x, one, true, w, &err), MT_ERR_INVALID);
}

static void test_ppo_clipping_by_hand(void **state) {
    (void)state;
    /* ρ = 1.5, c = 0.2. A = 2: −Aρ = −3, −A·1.2 = −2.4 → the clipped term wins, no gradient.
     * A = −1: 1.5 against 1.2 → the unclipped term, d/d logp = −Aρ = 1.5. Mean over 2 tokens. */
    float nl[3] = {logf(1.5f), logf(1.5f), 0}, ol[3] = {0, 0, 0}, a[3] = {2, -1, 7}, g[3];
    uint8_t m[3] = {1, 1, 0};
    double loss;
    mt_ppo_stats st;
    assert_int_equal(mt_ppo_policy_loss(3, nl, ol, a, m, 0.2, &loss, g, &st, NULL), MT_OK);
    assert_float_equal(loss, (-2.4 + 1.5) / 2, 1e-6);
    assert_float_equal(g[0], 0, 1e-7);
    assert_float_equal(g[1], 1.5 / 2, 1e-6);
    assert_float_equal(g[2], 0, 0);
    assert_float_equal(st.clipfrac, 0.5, 0);
    /* value: v = 1, v_old = 0.5, R = 0, c = 0.2 → clipped 0.7; max(1, 0.49) = 1; loss 0.5,
     * gradient 0.5·2·(v − R) = 1 */
    float v = 1, vo = 0.5f, R = 0, gv;
    uint8_t one = 1;
    assert_int_equal(mt_ppo_value_loss(1, &v, &vo, &R, &one, 0.2, &loss, &gv, &st, NULL), MT_OK);
    assert_float_equal(loss, 0.5, 1e-7);
    assert_float_equal(gv, 1.0, 1e-7);
    assert_float_equal(st.clipfrac, 0, 0);
    /* GRPO clips at 1 + ε_high above and 1 − ε_low below: ρ = 1.25 with A > 0 is clipped by
     * ε_high = 0.2 (no gradient) but not by ε_high = 0.3 */
    float lp = logf(1.25f), old = 0, adv = 1, gl;
    uint8_t mk = 1;
    mt_grpo_config c;
    mt_grpo_config_default(&c);
    c.loss_type = MT_GRPO_LOSS_BNPO;
    mt_grpo_batch b = {.B = 1, .T = 1, .logp = &lp, .old_logp = &old, .advantages = &adv, .mask = &mk};
    mt_grpo_metrics gm;
    assert_int_equal(mt_grpo_loss(&c, &b, &loss, &gl, &gm, NULL), MT_OK);
    assert_float_equal(loss, -1.2, 1e-6);
    assert_float_equal(gl, 0, 0);
    assert_float_equal(gm.clip_high_mean, 1, 0);
    c.epsilon_high = 0.3;
    assert_int_equal(mt_grpo_loss(&c, &b, &loss, &gl, &gm, NULL), MT_OK);
    assert_float_equal(loss, -1.25, 1e-6);
    assert_float_equal(gl, -1.25, 1e-6);
    assert_float_equal(gm.clip_high_mean, 0, 0);
}

static void test_group_advantages_by_hand(void **state) {
    (void)state;
    /* group [1, 2, 3]: mean 2, Bessel std 1 → ∓1/(1 + 1e−4); group [5, 5, 5]: zero std → 0 */
    float r[6] = {1, 2, 3, 5, 5, 5}, a[6];
    mt_grpo_adv_stats st;
    assert_int_equal(mt_grpo_advantages(2, 3, r, MT_GRPO_SCALE_GROUP, a, &st, NULL), MT_OK);
    assert_float_equal(a[0], -1 / 1.0001, 1e-6);
    assert_float_equal(a[1], 0, 1e-7);
    assert_float_equal(a[2], 1 / 1.0001, 1e-6);
    assert_float_equal(a[3], 0, 0);
    assert_float_equal(st.frac_reward_zero_std, 0.5, 0);
    assert_int_equal(mt_grpo_advantages(2, 3, r, MT_GRPO_SCALE_NONE, a, NULL, NULL), MT_OK);
    assert_float_equal(a[0], -1, 1e-7);
    assert_float_equal(a[2], 1, 1e-7);
    /* an unscorable completion (NaN) is left out of its group's mean and gets advantage 0 */
    float rn[3] = {1, NAN, 3}, an[3];
    assert_int_equal(mt_grpo_advantages(1, 3, rn, MT_GRPO_SCALE_NONE, an, NULL, NULL), MT_OK);
    assert_float_equal(an[0], -1, 1e-7);
    assert_float_equal(an[1], 0, 0);
    assert_float_equal(an[2], 1, 1e-7);
    mt_grpo_scale s;
    mt_error err = {0};
    assert_int_equal(mt_grpo_scale_parse("groups", &s, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "group, batch, none"));
}

static void test_kl_entropy_by_hand(void **state) {
    (void)state;
    float d;
    /* logp = −1, ref = −2: k1 = 1 (d = 1); k3 = e^−1 − (−1) − 1 = e^−1, d = 1 − e^−1 */
    assert_float_equal(mt_rl_kl(MT_KL_K1, -1, -2, &d), 1, 1e-7);
    assert_float_equal(d, 1, 0);
    assert_float_equal(mt_rl_kl(MT_KL_K3, -1, -2, &d), exp(-1.0), 1e-7);
    assert_float_equal(d, 1 - exp(-1.0), 1e-7);
    assert_float_equal(mt_rl_kl(MT_KL_K3, -1, -1, &d), 0, 0);
    /* uniform logits over 4 → ln 4; one dominant logit → ~0, even at a magnitude exp overflows */
    float lg[8] = {3, 3, 3, 3, 1000, 0, 0, 0}, h[2];
    mt_rl_entropy_from_logits(2, 4, lg, h);
    assert_float_equal(h[0], log(4.0), 1e-6);
    assert_float_equal(h[1], 0, 1e-6);
}

static void test_rule_rewards(void **state) {
    (void)state;
    mt_reward_rule rules[] = {
        {.kind = MT_RULE_EXACT, .weight = 1.0, .name = "exact"},
        {.kind = MT_RULE_CONTAINS, .target = "because", .weight = 0.5},
        {.kind = MT_RULE_REGEX, .target = "\\\\boxed\\{\\d+\\}", .weight = 2.0, .name = "boxed"},
        {.kind = MT_RULE_LENGTH, .min_chars = 3, .max_chars = 12, .weight = 0.25},
    };
    mt_reward_rules *r;
    mt_error err = {0};
    assert_int_equal(mt_reward_rules_compile(rules, 4, &r, &err), MT_OK);
    assert_int_equal(mt_reward_rules_count(r), 4);
    assert_string_equal(mt_reward_rules_name(r, 1), "contains");
    assert_string_equal(mt_reward_rules_name(r, 2), "boxed");
    double total, per[4];
    /* trimmed exact match, and 4 code points (é is two bytes) within [3, 12] */
    assert_int_equal(mt_reward_rules_score(r, "  42é\n", "42é", &total, per, &err), MT_OK);
    assert_float_equal(per[0], 1, 0);
    assert_float_equal(per[1], 0, 0);
    assert_float_equal(per[2], 0, 0);
    assert_float_equal(per[3], 1, 0);
    assert_float_equal(total, 1.25, 1e-12);
    assert_int_equal(mt_reward_rules_score(r, "because \\boxed{7} is long enough", "7", &total, per, &err), MT_OK);
    assert_float_equal(total, 0.5 + 2.0, 1e-12);
    /* a rule that compares with the reference needs one */
    assert_int_equal(mt_reward_rules_score(r, "x", NULL, &total, NULL, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "reference answer"));
    mt_reward_rules_free(r);
    /* a bad regex is reported with the rule and PCRE2's offset */
    mt_reward_rule bad = {.kind = MT_RULE_REGEX, .target = "(unclosed", .weight = 1, .name = "broken"};
    mt_error_clear(&err);
    assert_int_equal(mt_reward_rules_compile(&bad, 1, &r, &err), MT_ERR_INVALID);
    assert_null(r);
    assert_non_null(strstr(err.msg, "broken"));
    assert_non_null(strstr(err.msg, "offset"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dpo_matches_trl),
        cmocka_unit_test(test_dpo_token_path_matches_trl),
        cmocka_unit_test(test_dpo_config_checks),
        cmocka_unit_test(test_dpo_sigmoid_by_hand),
        cmocka_unit_test(test_simpo_orpo_match_trl),
        cmocka_unit_test(test_reward_matches_trl),
        cmocka_unit_test(test_grpo_matches_trl),
        cmocka_unit_test(test_ppo_matches_trl),
        cmocka_unit_test(test_gae_by_hand),
        cmocka_unit_test(test_ppo_clipping_by_hand),
        cmocka_unit_test(test_group_advantages_by_hand),
        cmocka_unit_test(test_kl_entropy_by_hand),
        cmocka_unit_test(test_rule_rewards),
    };
    return cmocka_run_group_tests(tests, load_fixture, free_fixture);
}
