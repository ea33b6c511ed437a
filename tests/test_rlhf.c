/* test_rlhf.c — GRPO and PPO through the trainer on a tiny random deepseek_v3 model, and the two model
 * features it rests on: token losses at a sampling temperature (the CE of logits / τ, its
 * gradient by finite differences through the GRPO KL term) and routing record / replay (a
 * pass replaying its own routes is bit-identical, replaying other experts changes it, and
 * the decoder's routes are the training forward's). The trainer's GRPO gradient equals finite
 * differences of its loss; a stopped and resumed GRPO run is bit-identical, sampling included;
 * rule rewards raise the mean reward; recipe mistakes are diagnostics. PPO: a rule reward rises,
 * stop and resume is bit-identical, a reward model exported by method: reward scores the
 * completions and starts the value head, the KL to the reference is logged. */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/finetune.h"
#include "finetune/objective-impl.h"
#include "model/model.h"
#include "store/store.h"

static char base_dir[4096], prompts_path[4096], root[4096];
static mt_backend *g_be;

static const char *const words[] = {"the",   "licensee", "shall", "not",     "distribute", "software",
                                    "party", "may",      "terminate", "agreement", "notice", "written"};
#define N_PROMPTS 8

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("rlhf"));
    snprintf(base_dir, sizeof base_dir, "%s/base", root);
    snprintf(prompts_path, sizeof prompts_path, "%s/prompts.jsonl", root);
    FILE *f = fopen(prompts_path, "w");
    if (!f) return -1;
    size_t nw = sizeof words / sizeof words[0];
    for (int i = 0; i < N_PROMPTS; i++)
        fprintf(f, "{\"prompt\": \"%s %s %s\", \"answer\": \"%s\"}\n", words[i % nw], words[(i + 1) % nw],
                words[(i + 2) % nw], words[(i + 3) % nw]);
    fclose(f);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), base_dir);
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    mt_error err = {0};
    if (rc == 0 && mt_backend_init(&g_be, MT_BACKEND_CPU, 1, &err) != MT_OK) rc = -1;
    return rc == 0 ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be);
    return 0;
}

/* ---- 1. the model: temperature and routing record / replay ---- */

static void test_temperature_and_replay(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m;
    if (mt_model_load(&m, base_dir, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    const mt_config *c = mt_model_config(m);
    int B = 2, T = 12, N = B * T, V = c->vocab_size, L = c->n_layers, K = c->top_k;
    assert_true(c->n_experts > 0);
    mt_workspace *ws;
    assert_int_equal(mt_workspace_init(&ws, m, B, T, false, 0, &err), MT_OK);
    int32_t tok[24], tgt[24];
    mt_rng rng;
    mt_rng_seed(&rng, 7);
    for (int i = 0; i < N; i++) tok[i] = (int32_t)mt_rng_below(&rng, (uint64_t)V);
    for (int i = 0; i < N; i++) tgt[i] = i % T + 1 < T ? tok[i + 1] : MT_IGNORE_INDEX;
    mt_batch b = {.B = B, .T = T, .tokens = tok, .targets = tgt};
    float *logits = mt_xmalloc((size_t)N * V * sizeof(float));
    float *tl = mt_xmalloc((size_t)N * sizeof(float));
    size_t nr = (size_t)L * N * K;
    int32_t *routes = mt_xmalloc(nr * sizeof(int32_t)), *routes2 = mt_xmalloc(nr * sizeof(int32_t));
    memset(routes, 0xff, nr * sizeof(int32_t));
    memset(routes2, 0xff, nr * sizeof(int32_t));
    mt_forward_opts o = {.logits_out = logits, .temperature = 0.7f, .route_out = routes};
    mt_forward_result fr;
    assert_int_equal(mt_model_forward(m, ws, &b, &o, &fr, &err), MT_OK);
    memcpy(tl, fr.token_loss, (size_t)N * sizeof(float));
    /* the token loss is the cross-entropy of the raw logits (logits_out) divided by τ */
    for (int i = 0; i < N; i++) {
        if (tgt[i] == MT_IGNORE_INDEX) continue;
        const float *z = logits + (size_t)i * V;
        double mx = -INFINITY, s = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, z[v] / 0.7);
        for (int v = 0; v < V; v++) s += exp(z[v] / 0.7 - mx);
        double want = log(s) + mx - z[tgt[i]] / 0.7;
        if (fabs(want - tl[i]) > 1e-4 * fmax(1, fabs(want))) fail_msg("row %d: %.7g, want %.7g", i, tl[i], want);
    }
    /* every MoE layer recorded K distinct experts per row */
    int moe_layers = 0;
    for (int l = 0; l < L; l++) {
        if (routes[(size_t)l * N * K] < 0) continue;
        moe_layers++;
        for (int i = 0; i < N; i++)
            for (int x = 0; x < K; x++) {
                int32_t e = routes[((size_t)l * N + i) * K + x];
                assert_true(e >= 0 && e < c->n_experts);
                for (int y = 0; y < x; y++) assert_int_not_equal(e, routes[((size_t)l * N + i) * K + y]);
            }
    }
    assert_true(moe_layers > 0);
    /* replaying its own routes gives the same pass bit for bit */
    mt_forward_opts rep = {.temperature = 0.7f, .route_in = routes, .route_out = routes2};
    assert_int_equal(mt_model_forward(m, ws, &b, &rep, &fr, &err), MT_OK);
    assert_memory_equal(tl, fr.token_loss, (size_t)N * sizeof(float));
    assert_memory_equal(routes, routes2, nr * sizeof(int32_t));
    /* replaying other experts (every row sent one expert along: a cyclic shift keeps a row's
     * experts distinct) changes the losses; what the first MoE layer records is still its
     * router's own choice (later layers see other inputs) */
    int32_t *shifted = mt_xmalloc(nr * sizeof(int32_t));
    for (size_t i = 0; i < nr; i++) shifted[i] = routes[i] < 0 ? -1 : (routes[i] + 1) % c->n_experts;
    rep.route_in = shifted;
    assert_int_equal(mt_model_forward(m, ws, &b, &rep, &fr, &err), MT_OK);
    int first_moe = 0;
    while (routes[(size_t)first_moe * N * K] < 0) first_moe++;
    assert_memory_equal(routes + (size_t)first_moe * N * K, routes2 + (size_t)first_moe * N * K,
                        (size_t)N * K * sizeof(int32_t));
    double diff = 0;
    for (int i = 0; i < N; i++) diff = fmax(diff, fabs(fr.token_loss[i] - tl[i]));
    assert_true(diff > 1e-4);
    /* an expert out of range is refused */
    shifted[0] = c->n_experts;
    rep.route_in = shifted;
    assert_int_equal(mt_model_forward(m, ws, &b, &rep, &fr, &err), MT_ERR_INVALID);

    /* the decoder routes a sequence as the training forward does (same kernels): prefill the
     * first row's tokens and compare with the forward's record */
    mt_kv_pool *pool;
    mt_kv_pool_opts po = {.block_size = 16, .n_blocks = 4, .max_seqs = 1, .max_seq_len = T};
    assert_int_equal(mt_kv_pool_init(&pool, m, &po, &err), MT_OK);
    mt_decoder *dec;
    assert_int_equal(mt_decoder_init(&dec, m, T, 0, &err), MT_OK);
    int seq;
    assert_int_equal(mt_kv_seq_open(pool, &seq, &err), MT_OK);
    int32_t seqs[12] = {0}, lr[1] = {T - 1};
    int32_t *dr = mt_xmalloc((size_t)L * T * K * sizeof(int32_t));
    memset(dr, 0xff, (size_t)L * T * K * sizeof(int32_t));
    for (int t = 0; t < T; t++) seqs[t] = seq;
    mt_decode_batch db = {.n_rows = T, .tokens = tok, .seq = seqs, .logit_rows = lr, .n_logits = 1, .route_out = dr};
    assert_int_equal(mt_decode_step(dec, pool, &db, logits, &err), MT_OK);
    int64_t same = 0, total = 0;
    for (int l = 0; l < L; l++) {
        if (routes[(size_t)l * N * K] < 0) continue;
        for (int t = 0; t < T; t++) {
            total++;
            int eq = 1;
            for (int x = 0; x < K; x++) eq &= routes[((size_t)l * N + t) * K + x] == dr[((size_t)l * T + t) * K + x];
            same += eq;
        }
    }
    assert_int_equal(same, total);
    /* and one token per step, as a rollout decodes */
    mt_kv_seq_close(pool, seq);
    assert_int_equal(mt_kv_seq_open(pool, &seq, &err), MT_OK);
    int64_t same1 = 0;
    for (int t = 0; t < T; t++) {
        memset(dr, 0xff, (size_t)L * K * sizeof(int32_t));
        int32_t lr0[1] = {0};
        mt_decode_batch d1 = {.n_rows = 1, .tokens = tok + t, .seq = &seq, .logit_rows = lr0, .n_logits = 1,
                              .route_out = dr};
        assert_int_equal(mt_decode_step(dec, pool, &d1, logits, &err), MT_OK);
        for (int l = 0; l < L; l++) {
            if (routes[(size_t)l * N * K] < 0) continue;
            int eq = 1;
            for (int x = 0; x < K; x++) eq &= routes[((size_t)l * N + t) * K + x] == dr[(size_t)l * K + x];
            same1 += eq;
        }
    }
    assert_int_equal(same1, total);
    free(dr);
    mt_decoder_free(dec);
    mt_kv_pool_free(pool);
    free(shifted);
    free(routes);
    free(routes2);
    free(logits);
    free(tl);
    mt_workspace_free(ws);
    mt_model_free(m);
}

/* ---- recipes ---- */

static const char *g_method = "grpo";

static void write_recipe_r(const char *dir, int steps, const char *rollout, const char *extra) {
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
    char path[4200];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "name: g\nmethod: %s\nmodel:\n  path: %s\n"
            "adapter:\n  type: lora\n  r: 4\n  alpha: 8\n  dropout: 0\n  targets: all-linear\n"
            "data:\n  train: %s\n  max_seq_len: 16\n"
            "train:\n  seed: 5\n  steps: %d\n  micro_batch: 2\n  grad_accum: 2\n  lr: 1e-2\n  warmup_steps: 0\n"
            "  threads: 1\n  log_every: 1\n  eval_every: 0\n  save_every: 2\n  router_noise: 0\n"
            "  router_aux_coef: 0\n  clip_norm: 0\n"
            "%s"
            "thresholds:\n  dap: 0\n%s"
            "output:\n  dir: %s/run\n  adapter: %s/adapter\n  store: %s/moetune.db\n",
            g_method, base_dir, prompts_path, steps, rollout ? rollout : "rollout:\n  num_generations: 3\n  max_new_tokens: 6\n",
            extra ? extra : "", dir, dir, dir);
    fclose(f);
}

static void write_recipe(const char *dir, int steps, const char *extra) { write_recipe_r(dir, steps, NULL, extra); }

static void load_recipe(const char *dir, const char *const *sets, size_t n, mt_recipe *r) {
    char path[4200];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    mt_error err = {0};
    if (mt_recipe_load(path, sets, n, r, &err) != MT_OK) fail_msg("%s", err.msg);
}

static mt_store_series series(const char *dir, int64_t run_id, const char *name) {
    char db[4300];
    snprintf(db, sizeof db, "%s/moetune.db", dir);
    mt_store *s;
    mt_error err = {0};
    if (mt_store_open(&s, db, false, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_series sr;
    if (mt_store_metric_series(s, run_id, name, &sr, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_close(s);
    return sr;
}

/* ---- 2. the trainer's gradient against finite differences ---- */

static double step_loss(mt_run *run, const int64_t *idx, int n) {
    mt_step_out so;
    memset(&so, 0, sizeof so);
    mt_error err = {0};
    if (run->obj->step(run, idx, n, &so, &err) != MT_OK) fail_msg("%s", err.msg);
    return so.loss;
}

/* top_k 1 makes the rollout the argmax at every step, so that the small perturbations of the
 * check never change which tokens were sampled; then every group is one completion repeated,
 * its advantages are zero, and the loss is β · the k3 KL to the base, a function of the
 * policy's log-probs at temperature 0.7 through the replayed routes. */
static void test_grpo_gradient_is_finite_differences(void **state) {
    (void)state;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/grad", root);
    write_recipe_r(dir, 2, "rollout:\n  num_generations: 3\n  max_new_tokens: 6\n  temperature: 0.7\n  top_k: 1\n",
                 "reward:\n  rules: [\"length:0-1000\"]\ngrpo:\n  beta: 0.5\n  loss_type: bnpo\n");
    mt_recipe r;
    load_recipe(dir, NULL, 0, &r);
    mt_train_opts o = {.no_store = true, .no_export = true, .no_checkpoints = true};
    mt_train_result res;
    memset(&res, 0, sizeof res);
    mt_run run;
    memset(&run, 0, sizeof run);
    mt_error err = {0};
    if (mt_run_open(&run, &r, &o, &res, &err) != MT_OK) fail_msg("%s", err.msg);
    r.train.lr = 0; /* the step's update leaves the weights where they are */
    mt_rng rng;
    mt_rng_seed(&rng, 11);
    for (int t = 0; t < run.n_trainables; t++)
        for (int64_t i = 0; i < run.trainables[t].numel; i++)
            run.trainables[t].data[i] = (float)(0.2 * (mt_rng_float(&rng) - 0.5));
    const int64_t idx[4] = {0, 3, 5, 6};
    double l0 = step_loss(&run, idx, 4);
    assert_true(isfinite(l0) && l0 > 1e-6);
    int picks[][2] = {{0, -1}, {1, -1}, {run.n_trainables / 2, -1}, {run.n_trainables - 1, -1}, {1, 0}};
    size_t np = sizeof picks / sizeof picks[0];
    double g[8], gmax = 0;
    for (size_t k = 0; k < np; k++) {
        mt_trainable *tr = &run.trainables[picks[k][0]];
        int64_t best = 0;
        if (picks[k][1] < 0) {
            for (int64_t i = 1; i < tr->numel; i++)
                if (fabsf(tr->grad[i]) > fabsf(tr->grad[best])) best = i;
        } else {
            best = (int64_t)mt_rng_below(&rng, (uint64_t)tr->numel);
        }
        picks[k][1] = (int)best;
        g[k] = tr->grad[best];
        gmax = fmax(gmax, fabs(g[k]));
    }
    assert_true(gmax > 1e-5);
    const double eps = 1e-2;
    for (size_t k = 0; k < np; k++) {
        mt_trainable *tr = &run.trainables[picks[k][0]];
        float *w = &tr->data[picks[k][1]], w0 = *w;
        *w = w0 + (float)eps;
        double lp = step_loss(&run, idx, 4);
        *w = w0 - (float)eps;
        double lm = step_loss(&run, idx, 4);
        *w = w0;
        double fd = (lp - lm) / ((double)(w0 + (float)eps) - (double)(w0 - (float)eps));
        double tol = 3e-2 * fmax(fabs(fd), fabs(g[k])) + 3e-3 * gmax;
        if (fabs(fd - g[k]) > tol)
            fail_msg("%s[%d]: trainer gradient %.6g, finite differences %.6g", tr->name, picks[k][1], g[k], fd);
    }
    assert_true(fabs(step_loss(&run, idx, 4) - l0) < 1e-9);
    mt_run_close(&run);
    mt_recipe_free(&r);
}

/* ---- 3. stop and resume ---- */

static const char *const k_names[] = {"loss", "reward", "reward_std", "entropy", "completions/mean_length",
                                      "routing/mismatch"};

static void test_resume_is_bit_identical(void **state) {
    (void)state;
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/whole", root);
    snprintf(b, sizeof b, "%s/cut", root);
    const char *extra = "reward:\n  rules: [\"length:0-12\", \"regex:e\"]\n  weights: [1, 0.5]\n"
                        "grpo:\n  beta: 0.1\n  num_iterations: 2\n";
    write_recipe(a, 4, extra);
    write_recipe(b, 4, extra);
    mt_recipe ra, rb;
    load_recipe(a, NULL, 0, &ra);
    load_recipe(b, NULL, 0, &rb);
    mt_error err = {0};
    mt_train_result whole, cut, resumed;
    mt_train_opts o = {.no_export = true};
    if (mt_train(&ra, &o, &whole, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_train_opts oc = {.no_export = true, .max_steps = 2};
    if (mt_train(&rb, &oc, &cut, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_train_opts orr = {.no_export = true, .resume = true};
    if (mt_train(&rb, &orr, &resumed, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(resumed.steps, 4);
    for (size_t k = 0; k < sizeof k_names / sizeof *k_names; k++) {
        mt_store_series x = series(a, whole.run_id, k_names[k]), y = series(b, resumed.run_id, k_names[k]);
        if (x.n != 4) fail_msg("%s: %zu values logged", k_names[k], x.n);
        assert_int_equal(y.n, 4);
        for (size_t i = 0; i < 4; i++)
            if (memcmp(&x.values[i], &y.values[i], sizeof(double)) != 0)
                fail_msg("%s at step %zu: %.17g uninterrupted, %.17g resumed", k_names[k], i + 1, x.values[i],
                         y.values[i]);
        mt_store_series_free(&x);
        mt_store_series_free(&y);
    }
    /* both rules and their weighted sum are logged */
    mt_store_series l = series(a, whole.run_id, "rewards/length:0-12/mean"),
                    rx = series(a, whole.run_id, "rewards/regex:e/mean");
    assert_int_equal(l.n, 4);
    assert_int_equal(rx.n, 4);
    mt_store_series_free(&l);
    mt_store_series_free(&rx);
    /* the rollout and the training pass run the same kernels: no token was routed differently */
    mt_store_series mm = series(a, whole.run_id, "routing/mismatch");
    for (size_t i = 0; i < mm.n; i++) assert_true(mm.values[i] == 0.0);
    mt_store_series_free(&mm);
    mt_recipe_free(&ra);
    mt_recipe_free(&rb);
}

/* ---- 4. it learns ---- */

/* A reward for completions that start with a space (about half of a random model's tokens):
 * the mean reward of the last steps is well above that of the first. Full fine-tuning: on a
 * random base the final norm and an untrained LM head (which LoRA's all-linear leaves out, as
 * PEFT does) keep the next-token distribution almost uniform whatever LoRA does below them. */
static void test_rule_reward_rises(void **state) {
    (void)state;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/learn", root);
    write_recipe(dir, 12, "reward:\n  rules: [\"regex:^ \"]\ngrpo:\n  loss_type: grpo\n");
    mt_recipe r;
    const char *sets[] = {"train.lr=5e-2", "adapter.type=none", "rollout.num_generations=8"};
    load_recipe(dir, sets, 3, &r);
    mt_train_opts o = {.no_export = true};
    mt_train_result res;
    mt_error err = {0};
    if (mt_train(&r, &o, &res, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_series rw = series(dir, res.run_id, "reward");
    assert_int_equal(rw.n, 12);
    double first = 0, last = 0;
    for (int i = 0; i < 4; i++) {
        first += rw.values[i] / 4;
        last += rw.values[8 + i] / 4;
    }
    if (!(last > first + 0.3)) {
        for (size_t i = 0; i < rw.n; i++) fprintf(stderr, "step %zu reward %.3f\n", i + 1, rw.values[i]);
        fail_msg("mean reward %.3f over the first 4 steps, %.3f over the last 4", first, last);
    }
    mt_store_series_free(&rw);
    mt_recipe_free(&r);
}

/* ---- 5. recipe mistakes ---- */

static void expect_error_in(const char *name, const char *rollout, const char *extra, const char *words_in) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/bad-%s", root, name);
    write_recipe_r(dir, 2, rollout, extra);
    mt_recipe r;
    char path[4300];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    mt_error err = {0};
    mt_status st = mt_recipe_load(path, NULL, 0, &r, &err);
    if (st == MT_OK) {
        mt_train_opts o = {.no_export = true};
        mt_train_result res;
        st = mt_train(&r, &o, &res, &err);
        mt_recipe_free(&r);
    }
    assert_int_not_equal(st, MT_OK);
    if (!strstr(err.msg, words_in)) fail_msg("%s: \"%s\" does not say \"%s\"", name, err.msg, words_in);
}

static void expect_error(const char *name, const char *extra, const char *words_in) {
    expect_error_in(name, NULL, extra, words_in);
}

static void expect_error_r(const char *name, const char *rollout, const char *words_in) {
    expect_error_in(name, rollout, "reward:\n  rules: [\"length:0-9\"]\n", words_in);
}

static void test_recipe_errors(void **state) {
    (void)state;
    expect_error("norewards", NULL, "reward.model (a reward model's folder) or reward.rules");
    expect_error("badrule", "reward:\n  rules: [\"regex:(\"]\n", "reward.rules");
    expect_error_r("greedy", "rollout:\n  num_generations: 2\n  temperature: 0\n", "rollout.temperature");
    expect_error_r("toolong", "rollout:\n  num_generations: 2\n  max_new_tokens: 16\n", "rollout.max_new_tokens");
    expect_error("notrm", "reward:\n  model: /nonexistent/rm\n", "reward.model");
}

/* ---- 6. PPO ---- */

static void test_ppo_rule_reward_rises(void **state) {
    (void)state;
    g_method = "ppo";
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/ppo-learn", root);
    write_recipe(dir, 12, "reward:\n  rules: [\"regex:^ \"]\nppo:\n  kl_coef: 0\n");
    mt_recipe r;
    const char *sets[] = {"train.lr=2e-2", "adapter.type=none", "rollout.num_generations=4"};
    load_recipe(dir, sets, 3, &r);
    mt_train_opts o = {.no_export = true};
    mt_train_result res;
    mt_error err = {0};
    if (mt_train(&r, &o, &res, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_series sc = series(dir, res.run_id, "objective/scores");
    assert_int_equal(sc.n, 12);
    double first = 0, last = 0;
    for (int i = 0; i < 4; i++) {
        first += sc.values[i] / 4;
        last += sc.values[8 + i] / 4;
    }
    if (!(last > first + 0.3)) {
        for (size_t i = 0; i < sc.n; i++) fprintf(stderr, "step %zu score %.3f\n", i + 1, sc.values[i]);
        fail_msg("mean score %.3f over the first 4 steps, %.3f over the last 4", first, last);
    }
    mt_store_series_free(&sc);
    const char *names[] = {"objective/kl", "objective/entropy", "objective/rlhf_reward", "policy/clipfrac_avg",
                           "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "policy/approxkl_avg"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        mt_store_series x = series(dir, res.run_id, names[k]);
        if (x.n != 12) fail_msg("%s: %zu values", names[k], x.n);
        mt_store_series_free(&x);
    }
    mt_recipe_free(&r);
    g_method = "grpo";
}

/* A reward model trained on pairs scores PPO's completions and starts its value head; the KL
 * to the base (LoRA off) is 0 at the first step, where the policy is the base, and then not;
 * stopped and resumed, the run is the uninterrupted one bit for bit. */
static void test_ppo_reward_model_and_resume(void **state) {
    (void)state;
    char rm[4200], pairs[4300];
    snprintf(rm, sizeof rm, "%s/rm", root);
    snprintf(pairs, sizeof pairs, "%s/pairs.jsonl", root);
    FILE *f = fopen(pairs, "w");
    assert_non_null(f);
    for (int i = 0; i < 8; i++)
        fprintf(f, "{\"prompt\": \"%s %s\", \"chosen\": \" %s\", \"rejected\": \" %s %s\"}\n", words[i % 12],
                words[(i + 1) % 12], words[(i + 2) % 12], words[(i + 7) % 12], words[(i + 5) % 12]);
    fclose(f);
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(rm, &err), MT_OK);
    char path[4300];
    snprintf(path, sizeof path, "%s/recipe.yaml", rm);
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "name: rm\nmethod: reward\nmodel:\n  path: %s\nadapter:\n  type: lora\n  r: 4\n  alpha: 8\n"
            "  dropout: 0\n  targets: all-linear\ndata:\n  train: %s\n  max_seq_len: 16\n"
            "train:\n  seed: 1\n  steps: 3\n  micro_batch: 2\n  lr: 1e-2\n  threads: 1\n  eval_every: 0\n"
            "  router_noise: 0\nthresholds:\n  dap: 0\n"
            "output:\n  dir: %s/run\n  adapter: %s/adapter\n  store: %s/moetune.db\n",
            base_dir, pairs, rm, rm, rm);
    fclose(f);
    mt_recipe rr;
    load_recipe(rm, NULL, 0, &rr);
    mt_train_opts ro = {0};
    mt_train_result rres;
    if (mt_train(&rr, &ro, &rres, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_recipe_free(&rr);

    g_method = "ppo";
    char a[4200], b[4200], extra[8600];
    snprintf(a, sizeof a, "%s/ppo-whole", root);
    snprintf(b, sizeof b, "%s/ppo-cut", root);
    snprintf(extra, sizeof extra, "reward:\n  model: %s/adapter\n  rules: [\"length:0-20\"]\n  weights: [1, 0.5]\n"
             "ppo:\n  kl_coef: 0.1\n  kl_estimator: k3\n  num_ppo_epochs: 2\n", rm);
    write_recipe(a, 4, extra);
    write_recipe(b, 4, extra);
    mt_recipe ra, rb;
    load_recipe(a, NULL, 0, &ra);
    load_recipe(b, NULL, 0, &rb);
    mt_train_result whole, cut, resumed;
    mt_train_opts o = {.no_export = true};
    if (mt_train(&ra, &o, &whole, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_train_opts oc = {.no_export = true, .max_steps = 2};
    if (mt_train(&rb, &oc, &cut, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_train_opts orr = {.no_export = true, .resume = true};
    if (mt_train(&rb, &orr, &resumed, &err) != MT_OK) fail_msg("%s", err.msg);
    const char *names[] = {"loss", "objective/scores", "objective/kl", "loss/value_avg", "rewards/reward_model/mean",
                           "routing/mismatch"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        mt_store_series x = series(a, whole.run_id, names[k]), y = series(b, resumed.run_id, names[k]);
        if (x.n != 4 || y.n != 4) fail_msg("%s: %zu and %zu values", names[k], x.n, y.n);
        for (size_t i = 0; i < 4; i++)
            if (memcmp(&x.values[i], &y.values[i], sizeof(double)) != 0)
                fail_msg("%s at step %zu: %.17g uninterrupted, %.17g resumed", names[k], i + 1, x.values[i],
                         y.values[i]);
        mt_store_series_free(&x);
        mt_store_series_free(&y);
    }
    mt_store_series kl = series(a, whole.run_id, "objective/kl"), rmv = series(a, whole.run_id, "rewards/reward_model/mean");
    assert_true(fabs(kl.values[0]) < 1e-6); /* LoRA B = 0: the policy is the base */
    assert_true(kl.values[3] > 1e-6);
    for (size_t i = 0; i < 4; i++) assert_true(isfinite(rmv.values[i]) && rmv.values[i] != 0.0);
    mt_store_series_free(&kl);
    mt_store_series_free(&rmv);
    mt_recipe_free(&ra);
    mt_recipe_free(&rb);
    g_method = "grpo";
}

int main(void) {
    setenv("OMP_NUM_THREADS", "1", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_temperature_and_replay),
        cmocka_unit_test(test_grpo_gradient_is_finite_differences),
        cmocka_unit_test(test_resume_is_bit_identical),
        cmocka_unit_test(test_rule_reward_rises),
        cmocka_unit_test(test_recipe_errors),
        cmocka_unit_test(test_ppo_rule_reward_rises),
        cmocka_unit_test(test_ppo_reward_model_and_resume),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
