/* test_mpi.c — data-parallel training under `mpirun --oversubscribe -np 2` (one thread a rank):
 * the 2-rank SFT, DPO, reward-model, GRPO and PPO runs log the loss curve (and every metric) of
 * the 1-rank run with the same global batch to fp32 tolerance and write one store record; a
 * 2-rank run whose rank 1 is killed with SIGKILL ends (no rank left waiting in a collective) and,
 * resumed on one rank, finishes on the 1-rank curve; stopped and resumed on 2 ranks it is
 * bit-identical to the uninterrupted 2-rank run; more ranks than micro-batches is a clear error.
 * Skipped when moetune is built without MPI (MOETUNE_MPI=OFF). */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "finetune/optim-impl.h"

/* ---- 0. the gradient bucket: tensors packed across bucket boundaries come back in place ---- */

static void test_bucket_round_trip(void **state) {
    (void)state;
    /* a bucket smaller than a tensor, tensors straddling buckets, a last partial bucket */
    static const int64_t sizes[] = {5, 3, 11, 1, 7};
    enum { N_T = sizeof sizes / sizeof sizes[0] };
    mt_trainable t[N_T];
    float *want[N_T];
    memset(t, 0, sizeof t);
    for (int i = 0; i < N_T; i++) {
        t[i].name = "t";
        t[i].numel = sizes[i];
        t[i].data = mt_xcalloc((size_t)sizes[i], sizeof(float));
        t[i].grad = mt_xcalloc((size_t)sizes[i], sizeof(float));
        want[i] = mt_xcalloc((size_t)sizes[i], sizeof(float));
        for (int64_t k = 0; k < sizes[i]; k++) want[i][k] = t[i].grad[k] = (float)(100 * i + k) + 0.25f;
    }
    mt_backend *be = NULL;
    mt_error err = {0};
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    mt_optim o;
    assert_int_equal(mt_optim_init(&o, be, t, N_T, &err), MT_OK);
    for (size_t cap = 1; cap <= 30; cap++) {
        float bucket[30];
        /* one rank: the all-reduce is the identity, so only packing and unpacking act */
        assert_int_equal(mt_optim_allreduce_grad(&o, NULL, bucket, cap, &err), MT_OK);
        for (int i = 0; i < N_T; i++)
            for (int64_t k = 0; k < sizes[i]; k++)
                if (o.t[i].grad[k] != want[i][k])
                    fail_msg("bucket of %zu: tensor %d [%lld] = %g, want %g", cap, i, (long long)k, o.t[i].grad[k],
                             want[i][k]);
        /* and the packing visits every value: the bucket's last fill ends on the last value */
        assert_true(bucket[(27 - 1) % cap] == want[N_T - 1][6]);
    }
    mt_optim_free(&o);
    mt_backend_free(be);
    for (int i = 0; i < N_T; i++) {
        free(t[i].data);
        free(t[i].grad);
        free(want[i]);
    }
}

#ifdef MT_MPIEXEC

static char root[4096], base_dir[4200], text_path[4200], pairs_path[4200], prompts_path[4200];
/* -x options for the ranks' environment: the sanitizers' settings, leak checks off (see setup) */
static char rank_env[4400];

static const char *const words[] = {
    "the",     "licensee", "shall",    "not",      "distribute", "software", "without", "written",
    "consent", "of",       "licensor", "warranty", "is",         "hereby",   "disclaimed", "any",
    "party",   "may",      "terminate", "this",    "agreement",  "upon",     "notice",  "copyright"};
#define N_WORDS (sizeof words / sizeof words[0])

static void write_text(const char *path, int n_docs, uint64_t seed) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    mt_rng rng;
    mt_rng_seed(&rng, seed);
    for (int d = 0; d < n_docs; d++) {
        fputs("{\"text\": \"", f);
        int n = 10 + (int)mt_rng_below(&rng, 30); /* uneven lengths: token counts differ per rank */
        for (int w = 0; w < n; w++) fprintf(f, "%s%s", w ? " " : "", words[mt_rng_below(&rng, N_WORDS)]);
        fputs(".\"}\n", f);
    }
    fclose(f);
}

static void write_pairs(const char *path, int n) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int k = 0; k < n; k++)
        fprintf(f, "{\"prompt\": \"%s %s %s\", \"chosen\": \" %s %s %s\", \"rejected\": \" %s %s\"}\n",
                words[k % N_WORDS], words[(k + 1) % N_WORDS], words[(k + 2) % N_WORDS], words[(k + 3) % N_WORDS],
                words[(k + 4) % N_WORDS], words[(k + 5) % N_WORDS], words[(k * 7 + 11) % N_WORDS],
                words[(k * 5 + 3) % N_WORDS]);
    fclose(f);
}

/* RL prompts: `n` lines {"prompt": three words}. */
static void write_prompts(const char *path, int n) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int k = 0; k < n; k++)
        fprintf(f, "{\"prompt\": \"%s %s %s\"}\n", words[k % N_WORDS], words[(k * 5 + 1) % N_WORDS],
                words[(k * 7 + 2) % N_WORDS]);
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("mpi"));
    snprintf(base_dir, sizeof base_dir, "%s/base", root);
    snprintf(text_path, sizeof text_path, "%s/text.jsonl", root);
    snprintf(pairs_path, sizeof pairs_path, "%s/pairs.jsonl", root);
    write_text(text_path, 64, 7);
    write_pairs(pairs_path, 24);
    snprintf(prompts_path, sizeof prompts_path, "%s/prompts.jsonl", root);
    write_prompts(prompts_path, 24);
    /* mpirun refuses root unless told; inside CI containers the tests run as root */
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    /* Sanitizer builds: ranks keep AddressSanitizer and UBSan, but not LeakSanitizer. Open MPI
     * leaves allocations of its components behind at MPI_Finalize and unloads the components,
     * so the leaks come with "<unknown module>" stacks that no suppression can name; the same
     * trainer code runs leak-checked in the single-rank tests (and in this test's 1-rank runs). */
    const char *asan = getenv("ASAN_OPTIONS");
    if (asan)
        snprintf(rank_env, sizeof rank_env, "-x 'ASAN_OPTIONS=%s:detect_leaks=0' -x UBSAN_OPTIONS", asan);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), base_dir);
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    return rc == 0 ? 0 : -1;
}

/* `dir`/recipe.yaml: `method` on `data_yaml`, `steps` steps of 2 x grad_accum rows. */
static void write_recipe(const char *dir, const char *method, const char *data_yaml, int steps, int grad_accum,
                         const char *extra) {
    mt_error err = {0};
    char path[4400];
    snprintf(path, sizeof path, "rm -rf '%s' '%s.log'", dir, dir); /* a rerun starts clean */
    assert_int_equal(system(path), 0);
    assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "name: dp\nmethod: %s\nmodel:\n  path: %s\n"
            "adapter:\n  type: lora\n  r: 4\n  alpha: 8\n  dropout: 0.1\n  targets: all-linear\n"
            "data:\n%s  max_seq_len: 32\n"
            "train:\n  seed: 5\n  steps: %d\n  micro_batch: 2\n  grad_accum: %d\n  lr: 3e-3\n  warmup_steps: 2\n"
            "  threads: 1\n  log_every: 1\n  eval_every: 5\n  save_every: 4\n"
            "thresholds:\n  dap: 0.5\n%s"
            "output:\n  dir: %s/run\n  adapter: %s/adapter\n  store: %s/moetune.db\n",
            method, base_dir, data_yaml, steps, grad_accum, extra ? extra : "", dir, dir, dir);
    fclose(f);
}

/* The mpirun line for `ranks` ranks of `moetune train DIR/recipe.yaml ARGS`, output to DIR.log. */
static void mpirun_cmd(char *cmd, size_t cap, int ranks, const char *dir, const char *args) {
    snprintf(cmd, cap,
             "'%s' --oversubscribe --bind-to none -np %d -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 "
             "%s '%s' train '%s/recipe.yaml' %s >>'%s.log' 2>&1",
             MT_MPIEXEC, ranks, rank_env, MT_MOETUNE_BIN, dir, args, dir);
}

/* Runs the recipe in `dir` on `ranks` ranks (1: the plain binary, no launcher); the exit code. */
static int train(const char *dir, int ranks, const char *args) {
    char cmd[9000];
    if (ranks == 1)
        snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 '%s' train '%s/recipe.yaml' %s >>'%s.log' 2>&1", MT_MOETUNE_BIN,
                 dir, args, dir);
    else
        mpirun_cmd(cmd, sizeof cmd, ranks, dir, args);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static void must_train(const char *dir, int ranks, const char *args) {
    int rc = train(dir, ranks, args);
    if (rc != 0) {
        char log[4400], *text = NULL;
        snprintf(log, sizeof log, "%s.log", dir);
        mt_error err = {0};
        mt_read_file(log, &text, NULL, &err);
        print_error("%s\n", text ? text : "");
        free(text);
        fail_msg("%d-rank training in %s exited %d (its output above)", ranks, dir, rc);
    }
}

/* ---- the store's record ---- */

typedef struct series {
    int n;
    int64_t step[256];
    double v[256];
} series;

static sqlite3 *open_db(const char *dir) {
    char db[4400];
    snprintf(db, sizeof db, "%s/moetune.db", dir);
    sqlite3 *h;
    assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    return h;
}

static int64_t query_int(const char *dir, const char *sql) {
    sqlite3 *db = open_db(dir);
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
    sqlite3_finalize(q);
    sqlite3_close(db);
    return v;
}

static series get_series(const char *dir, const char *name) {
    sqlite3 *db = open_db(dir);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT step, value FROM metrics WHERE name = ? ORDER BY step", -1, &q,
                                        NULL),
                     SQLITE_OK);
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    series s = {0};
    while (sqlite3_step(q) == SQLITE_ROW && s.n < 256) {
        s.step[s.n] = sqlite3_column_int64(q, 0);
        s.v[s.n++] = sqlite3_column_double(q, 1);
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    return s;
}

/* Every metric of `names` has the same steps in both stores and values within fp32 tolerance
 * (the ranks sum gradients in another order than one rank accumulates them); `exact`: the
 * same bits. */
static void assert_curves(const char *want_dir, const char *got_dir, const char *const *names, size_t n_names,
                          int want_steps, bool exact) {
    for (size_t k = 0; k < n_names; k++) {
        series a = get_series(want_dir, names[k]), b = get_series(got_dir, names[k]);
        if (a.n == 0) fail_msg("%s: no %s logged", want_dir, names[k]);
        if (!strcmp(names[k], "loss")) assert_int_equal(a.n, want_steps);
        if (a.n != b.n) fail_msg("%s: %d values in %s, %d in %s", names[k], a.n, want_dir, b.n, got_dir);
        double worst = 0;
        for (int i = 0; i < a.n; i++) {
            assert_int_equal(a.step[i], b.step[i]);
            double d = fabs(a.v[i] - b.v[i]), tol = exact ? 0.0 : 1e-5 * fabs(a.v[i]) + 1e-6;
            if (!(d <= tol))
                fail_msg("%s at step %lld: %.9g with 1 rank, %.9g with 2", names[k], (long long)a.step[i], a.v[i],
                         b.v[i]);
            if (d / (fabs(a.v[i]) + 1e-12) > worst) worst = d / (fabs(a.v[i]) + 1e-12);
        }
        print_message("  %-20s %3d steps, largest relative difference %.2e\n", names[k], a.n, worst);
    }
}

static void assert_one_record(const char *dir, const char *method) {
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM runs WHERE method = '%s' AND status = 'completed'", method);
    assert_int_equal(query_int(dir, "SELECT count(*) FROM runs"), 1);
    assert_int_equal(query_int(dir, sql), 1);
}

/* ---- 1. two ranks equal one with the same global batch ---- */

static void check_method(const char *name, const char *method, const char *data_yaml, const char *extra,
                         const char *const *names, size_t n_names) {
    char one[4300], two[4300];
    snprintf(one, sizeof one, "%s/%s-1", root, name);
    snprintf(two, sizeof two, "%s/%s-2", root, name);
    write_recipe(one, method, data_yaml, 10, 4, extra);
    write_recipe(two, method, data_yaml, 10, 4, extra);
    must_train(one, 1, "");
    must_train(two, 2, "");
    print_message("%s: 1 rank vs 2 ranks (global batch 2 x 4 rows)\n", name);
    assert_curves(one, two, names, n_names, 10, false);
    assert_one_record(two, method);
    /* rank 0 alone wrote: one export, and its checkpoints */
    char p[4400];
    snprintf(p, sizeof p, "%s/adapter/adapter_config.json", two);
    assert_true(mt_path_exists(p));
    snprintf(p, sizeof p, "%s/run/checkpoints/step-00000010", two);
    assert_true(mt_path_exists(p));
}

static char data_line[4400];

static void test_sft_two_ranks_equal_one(void **state) {
    (void)state;
    static const char *const names[] = {"loss", "grad_norm", "aux_loss", "eval_loss", "num_tokens"};
    snprintf(data_line, sizeof data_line, "  train: %s\n  format: text\n  packing: true\n  eval_split: 0.1\n",
             text_path);
    check_method("sft", "sft", data_line, NULL, names, sizeof names / sizeof names[0]);
}

static void test_dpo_two_ranks_equal_one(void **state) {
    (void)state;
    /* the reference cache: rank 0 keeps it in the store, rank 1 computes its own */
    static const char *const names[] = {"loss", "grad_norm", "rewards/chosen", "rewards/margins",
                                        "rewards/accuracies", "logps/chosen", "logps/rejected"};
    snprintf(data_line, sizeof data_line, "  train: %s\n", pairs_path);
    check_method("dpo", "dpo", data_line, "pref:\n  beta: 0.5\nreference:\n  cache: true\n", names,
                 sizeof names / sizeof names[0]);
}

static void test_reward_two_ranks_equal_one(void **state) {
    (void)state;
    /* min_reward / max_reward: extremes over ranks, not sums */
    static const char *const names[] = {"loss", "grad_norm", "accuracy", "margin", "min_reward", "max_reward"};
    snprintf(data_line, sizeof data_line, "  train: %s\n", pairs_path);
    check_method("reward", "reward", data_line, NULL, names, sizeof names / sizeof names[0]);
}

/* GRPO: every rank samples its own micro-batches' groups (the streams keyed by the completion's
 * place in the whole step, so the ranks sample what one rank does); the batch's reward mean and
 * std (scale_rewards: batch divides by it), dapo's token count, the rollout's metrics and the
 * routing mismatch are sums over ranks; clip_ratio/low_min and high_max are extremes; eval on
 * rank 0. Two iterations a step: two updates on every rank. */
static void test_grpo_two_ranks_equal_one(void **state) {
    (void)state;
    static const char *const names[] = {
        "loss", "grad_norm", "aux_loss", "num_tokens", "reward", "reward_std", "frac_reward_zero_std", "kl",
        "clip_ratio/region_mean", "clip_ratio/low_min", "clip_ratio/high_max", "completions/mean_length",
        "completions/min_length", "completions/clipped_ratio", "entropy", "rewards/regex:^ /mean",
        "routing/mismatch", "eval_reward"};
    snprintf(data_line, sizeof data_line, "  train: %s\n  eval_split: 0.2\n", prompts_path);
    check_method("grpo", "grpo", data_line,
                 "rollout:\n  num_generations: 3\n  max_new_tokens: 6\n"
                 "reward:\n  rules: [\"regex:^ \", \"length:0-20\"]\n"
                 "grpo:\n  num_iterations: 2\n  beta: 0.1\n  scale_rewards: batch\n",
                 names, sizeof names / sizeof names[0]);
    /* group scaling and the per-sequence loss: nothing but the metrics spans ranks */
    static const char *const names_g[] = {"loss", "grad_norm", "reward", "reward_std", "frac_reward_zero_std",
                                          "clip_ratio/high_mean", "entropy"};
    check_method("grpo-group", "grpo", data_line,
                 "rollout:\n  num_generations: 3\n  max_new_tokens: 6\n"
                 "reward:\n  rules: [\"regex:^ \"]\ngrpo:\n  loss_type: grpo\n",
                 names_g, sizeof names_g / sizeof names_g[0]);
}

/* PPO: rewards and GAE per completion on its rank; the whitening of rewards and advantages over
 * every rank's tokens; objective/... as shares of the step's completions. Two epochs a step. */
static void test_ppo_two_ranks_equal_one(void **state) {
    (void)state;
    static const char *const names[] = {
        "loss", "grad_norm", "aux_loss", "num_tokens", "objective/kl", "objective/entropy", "objective/scores",
        "objective/rlhf_reward", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/ratio_mean",
        "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "completions/max_length", "entropy",
        "routing/mismatch"};
    snprintf(data_line, sizeof data_line, "  train: %s\n", prompts_path);
    check_method("ppo", "ppo", data_line,
                 "rollout:\n  num_generations: 3\n  max_new_tokens: 6\n"
                 "reward:\n  rules: [\"regex:^ \", \"length:0-20\"]\n"
                 "ppo:\n  kl_coef: 0.1\n  num_ppo_epochs: 2\n  whiten_rewards: true\n",
                 names, sizeof names / sizeof names[0]);
}

/* ---- 2. a rank killed: the job ends; resumed on one rank it finishes on the curve ---- */

/* The pid of the rank `rank` process training `recipe` (from /proc: its launcher's environment
 * names the rank), or 0. */
static pid_t find_rank(const char *recipe, int rank) {
    DIR *d = opendir("/proc");
    assert_non_null(d);
    struct dirent *e;
    pid_t found = 0;
    char want[64];
    snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
    while (!found && (e = readdir(d))) {
        if (strspn(e->d_name, "0123456789") != strlen(e->d_name)) continue;
        char p[300], buf[65536];
        snprintf(p, sizeof p, "/proc/%s/cmdline", e->d_name);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        bool is_train = false, has_recipe = false;
        for (size_t i = 0; i < n; i += strlen(buf + i) + 1) {
            buf[n] = '\0';
            if (strstr(buf + i, "moetune") && i == 0) is_train = true;
            if (!strcmp(buf + i, recipe)) has_recipe = true;
        }
        if (!is_train || !has_recipe) continue;
        snprintf(p, sizeof p, "/proc/%s/environ", e->d_name);
        if (!(f = fopen(p, "r"))) continue;
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
            if (!strcmp(buf + i, want)) found = (pid_t)atoi(e->d_name);
    }
    closedir(d);
    return found;
}

static void test_killed_rank_ends_job_and_resumes_on_one(void **state) {
    (void)state;
    char ref[4300], dir[4300], recipe[4400], ckpt[4400], log[4400];
    snprintf(ref, sizeof ref, "%s/kill-ref", root);
    snprintf(dir, sizeof dir, "%s/kill", root);
    snprintf(data_line, sizeof data_line, "  train: %s\n  format: text\n  packing: true\n  eval_split: 0.1\n",
             text_path);
    write_recipe(ref, "sft", data_line, 40, 4, NULL);
    write_recipe(dir, "sft", data_line, 40, 4, NULL);
    must_train(ref, 1, "");
    snprintf(recipe, sizeof recipe, "%s/recipe.yaml", dir);
    snprintf(ckpt, sizeof ckpt, "%s/run/checkpoints/step-00000004", dir);
    snprintf(log, sizeof log, "%s.log", dir);

    char cmd[9000];
    mpirun_cmd(cmd, sizeof cmd, 2, dir, "");
    pid_t launcher = fork();
    assert_true(launcher >= 0);
    if (launcher == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 120000 && !mt_path_exists(ckpt); i++) usleep(1000);
    assert_true(mt_path_exists(ckpt));
    pid_t r0 = find_rank(recipe, 0), r1 = find_rank(recipe, 1);
    if (!r0 || !r1) fail_msg("ranks of the running job not found (rank 0 pid %d, rank 1 pid %d)", r0, r1);
    assert_int_equal(kill(r1, SIGKILL), 0);
    /* rank 0 is now waiting for rank 1 in the next all-reduce: the launcher must end it */
    double t0 = mt_now_seconds();
    int status = 0;
    pid_t w = 0;
    while ((w = waitpid(launcher, &status, WNOHANG)) == 0 && mt_now_seconds() - t0 < 60) usleep(10000);
    if (w == 0) {
        kill(r0, SIGKILL);
        kill(launcher, SIGKILL);
        waitpid(launcher, &status, 0);
        fail_msg("rank 1 was killed, but the job was still running 60 s later (rank 0 hangs)");
    }
    print_message("rank 1 killed: the job ended %.1f s later (exit status %d)\n", mt_now_seconds() - t0,
                  WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    assert_false(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (int i = 0; i < 100 && kill(r0, 0) == 0; i++) usleep(20000);
    assert_int_not_equal(kill(r0, 0), 0); /* no rank left behind */
    char *text = NULL;
    mt_error err = {0};
    assert_int_equal(mt_read_file(log, &text, NULL, &err), MT_OK);
    assert_non_null(strstr(text, "rank 1")); /* the launcher names the rank that died */
    free(text);
    assert_true(query_int(dir, "SELECT count(*) FROM metrics WHERE name = 'loss'") < 40);

    /* the checkpoint holds the global data position, so one rank continues the same step */
    must_train(dir, 1, "--resume");
    assert_int_equal(mt_read_file(log, &text, NULL, &err), MT_OK);
    assert_non_null(strstr(text, "checkpoint written by 2 rank(s), resuming on 1"));
    free(text);
    print_message("killed 2-rank run resumed on 1 rank vs the 1-rank run\n");
    static const char *const names[] = {"loss", "grad_norm", "eval_loss", "num_tokens"};
    assert_curves(ref, dir, names, sizeof names / sizeof names[0], 40, false);
    assert_one_record(dir, "sft");
}

/* ---- 3. stopped and resumed on as many ranks: bit-identical ---- */

static void test_resume_same_ranks_bit_identical(void **state) {
    (void)state;
    char ref[4300], dir[4300];
    snprintf(ref, sizeof ref, "%s/same-ref", root);
    snprintf(dir, sizeof dir, "%s/same", root);
    snprintf(data_line, sizeof data_line, "  train: %s\n  format: text\n  packing: true\n  eval_split: 0.1\n",
             text_path);
    write_recipe(ref, "sft", data_line, 10, 4, NULL);
    write_recipe(dir, "sft", data_line, 10, 4, NULL);
    must_train(ref, 2, "");
    must_train(dir, 2, "--max-steps 5");
    assert_int_equal(query_int(dir, "SELECT count(*) FROM metrics WHERE name = 'loss'"), 5);
    must_train(dir, 2, "--resume");
    static const char *const names[] = {"loss", "grad_norm", "aux_loss", "eval_loss"};
    print_message("2 ranks stopped at step 5 and resumed on 2 ranks vs uninterrupted\n");
    assert_curves(ref, dir, names, sizeof names / sizeof names[0], 10, true);
}

/* ---- 4. what 2 ranks refuse, with a message and no hang ---- */

static void expect_refusal(const char *name, const char *method, const char *data_yaml, int grad_accum,
                           const char *extra, const char *want) {
    char dir[4300], log[4400];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    write_recipe(dir, method, data_yaml, 4, grad_accum, extra);
    int rc = train(dir, 2, "");
    assert_int_not_equal(rc, 0);
    snprintf(log, sizeof log, "%s.log", dir);
    char *text = NULL;
    mt_error err = {0};
    assert_int_equal(mt_read_file(log, &text, NULL, &err), MT_OK);
    if (!strstr(text, want)) fail_msg("%s: no \"%s\" in:\n%s", name, want, text);
    free(text);
}

static void test_refusals(void **state) {
    (void)state;
    snprintf(data_line, sizeof data_line, "  train: %s\n  format: text\n", text_path);
    expect_refusal("toomany", "sft", data_line, 1, NULL, "train.grad_accum is 1 but 2 ranks");
    snprintf(data_line, sizeof data_line, "  train: %s\n", prompts_path);
    expect_refusal("toomany-grpo", "grpo", data_line, 1,
                   "rollout:\n  num_generations: 2\n  max_new_tokens: 4\nreward:\n  rules: [\"length:0-1000\"]\n",
                   "train.grad_accum is 1 but 2 ranks");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_round_trip),
        cmocka_unit_test(test_sft_two_ranks_equal_one),
        cmocka_unit_test(test_dpo_two_ranks_equal_one),
        cmocka_unit_test(test_reward_two_ranks_equal_one),
        cmocka_unit_test(test_grpo_two_ranks_equal_one),
        cmocka_unit_test(test_ppo_two_ranks_equal_one),
        cmocka_unit_test(test_killed_rank_ends_job_and_resumes_on_one),
        cmocka_unit_test(test_resume_same_ranks_bit_identical),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

#else

static void test_skipped(void **state) {
    (void)state;
    print_message("moetune is built without MPI (MOETUNE_MPI=OFF): nothing to test\n");
    skip();
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_bucket_round_trip), cmocka_unit_test(test_skipped)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif
