/* test_train.c — the trainer end to end on a tiny random deepseek_v3 model: LoRA training
 * lowers held-out loss and exports an adapter that evaluates the same after reloading and
 * merging; a run killed with SIGKILL and resumed gives the bit-identical loss curve and adapter
 * of the uninterrupted run, and leaves an intact store; the NaN guard; full fine-tuning. */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "finetune/finetune.h"
#include "model/model.h"
#include "peft/lora.h"
#include "store/store.h"

/* A tiny base and a small corpus, made once for every test. */
static char base_dir[4096], data_path[4096], root[4096];

static const char *const words[] = {
    "the",      "licensee", "shall",   "not",       "distribute", "software", "without",    "written",
    "consent",  "of",       "licensor", "warranty", "is",         "hereby",   "disclaimed", "any",
    "party",    "may",      "terminate", "this",    "agreement",  "upon",     "notice",     "copyright",
    "holder",   "grants",   "a",        "license",  "to",         "use",      "copy",       "modify"};

/* Documents with structure a model can learn: a few fixed clauses recombined. */
static void write_corpus(const char *path, int n_docs, uint64_t seed) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    mt_rng rng;
    mt_rng_seed(&rng, seed);
    size_t nw = sizeof words / sizeof words[0];
    for (int d = 0; d < n_docs; d++) {
        fputs("{\"text\": \"", f);
        int clauses = 3 + (int)mt_rng_below(&rng, 4);
        for (int c = 0; c < clauses; c++) {
            size_t start = (size_t)mt_rng_below(&rng, 4) * 8;
            for (size_t w = 0; w < 8; w++) fprintf(f, "%s%s", w ? " " : "", words[(start + w) % nw]);
            fputs(". ", f);
        }
        fputs("\"}\n", f);
    }
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("train"));
    snprintf(base_dir, sizeof base_dir, "%s/base", root);
    snprintf(data_path, sizeof data_path, "%s/corpus.jsonl", root);
    write_corpus(data_path, 120, 7);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), base_dir);
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    return rc == 0 ? 0 : -1;
}

/* A recipe in `dir`/recipe.yaml; extra is appended (YAML lines overriding nothing: use --set). */
static void write_recipe_for(const char *model, const char *dir, const char *adapter_yaml, int steps,
                             const char *extra) {
    char path[4200];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "name: t\nmethod: sft\nmodel:\n  path: %s\n%s"
            "data:\n  train: %s\n  format: text\n  max_seq_len: 64\n  packing: true\n  eval_split: 0.1\n"
            "train:\n  seed: 5\n  steps: %d\n  micro_batch: 2\n  grad_accum: 2\n  lr: 3e-3\n  warmup_steps: 2\n"
            "  threads: 1\n  log_every: 1\n  eval_every: 0\n  save_every: 4\n%s"
            "output:\n  dir: %s/run\n  adapter: %s/adapter\n  store: %s/moetune.db\n",
            model, adapter_yaml, data_path, steps, extra ? extra : "", dir, dir, dir);
    fclose(f);
}

static void write_recipe(const char *dir, const char *adapter_yaml, int steps, const char *extra) {
    write_recipe_for(base_dir, dir, adapter_yaml, steps, extra);
}

static const char *lora_yaml = "adapter:\n  type: lora\n  r: 4\n  alpha: 8\n  dropout: 0.1\n  targets: all-linear\n";

static void load_recipe(const char *dir, mt_recipe *r) {
    char path[4200];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    mt_error err = {0};
    if (mt_recipe_load(path, NULL, 0, r, &err) != MT_OK) fail_msg("%s", err.msg);
}

static mt_store_series loss_series(const char *dir, int64_t run_id) {
    char path[4200];
    snprintf(path, sizeof path, "%s/moetune.db", dir);
    mt_store *s;
    mt_error err = {0};
    if (mt_store_open(&s, path, false, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_series sr;
    if (mt_store_metric_series(s, run_id, "loss", &sr, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_close(s);
    return sr;
}

static void test_lora_lowers_loss_and_exports(void **state) {
    (void)state;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/lora", root);
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
    write_recipe(dir, lora_yaml, 24, NULL);
    mt_recipe r;
    char path[4300];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    const char *sets[] = {"train.eval_every=12"};
    if (mt_recipe_load(path, sets, 1, &r, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_train_result res;
    mt_status st = mt_train(&r, NULL, &res, &err);
    if (st != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(res.steps, 24);
    assert_true(isfinite(res.eval_loss));
    assert_true(res.dap_threshold >= 0 && res.dap_threshold <= 0.5);
    assert_true(res.mean_entropy > 0);

    /* the store has the whole curve, the run completed, the adapter is recorded */
    mt_store_series sr = loss_series(dir, res.run_id);
    assert_int_equal(sr.n, 24);
    mt_store_series_free(&sr);
    char db[4200];
    snprintf(db, sizeof db, "%s/moetune.db", dir);
    mt_store *s;
    assert_int_equal(mt_store_open(&s, db, false, &err), MT_OK);
    mt_store_run run;
    assert_int_equal(mt_store_run_get(s, res.run_id, &run, &err), MT_OK);
    assert_int_equal(run.status, MT_RUN_COMPLETED);
    mt_store_run_free(&run);
    /* every MoE layer's routing has a curve: entropy within [0, ln E], the busiest expert's
     * load over the mean within [1, E] */
    mt_store_metric_list names;
    assert_int_equal(mt_store_metric_names(s, res.run_id, &names, &err), MT_OK);
    int n_ent = 0, n_load = 0;
    for (size_t i = 0; i < names.n; i++) {
        const mt_store_metric_summary *ms = &names.items[i];
        if (!strncmp(ms->name, "router/entropy/L", 16)) {
            n_ent++;
            assert_int_equal(ms->count, 24);
            assert_true(ms->min > 0 && ms->max <= log(8.0) + 1e-9);
        } else if (!strncmp(ms->name, "router/load_max/L", 17)) {
            n_load++;
            assert_int_equal(ms->count, 24);
            assert_true(ms->min >= 1.0 && ms->max <= 8.0);
        }
    }
    mt_store_metric_list_free(&names);
    assert_true(n_ent > 0);
    assert_int_equal(n_load, n_ent);
    mt_store_adapter_list al;
    assert_int_equal(mt_store_adapters(s, res.run_id, &al, &err), MT_OK);
    assert_int_equal(al.n, 1);
    assert_non_null(strstr(al.items[0].thresholds_json, "dap_threshold"));
    assert_null(strstr(al.items[0].thresholds_json, "experts")); /* thresholds.experts: off */
    mt_store_adapter_list_free(&al);
    mt_store_event_list ev;
    assert_int_equal(mt_store_events(s, res.run_id, &ev, &err), MT_OK);
    bool reported = false;
    for (size_t i = 0; i < ev.n; i++)
        if (!strcmp(ev.items[i].kind, "trainable"))
            reported = strstr(ev.items[i].detail_json, "\"expert\":{\"modules\":") &&
                       strstr(ev.items[i].detail_json, "\"attention\"");
    assert_true(reported);
    mt_store_event_list_free(&ev);
    mt_store_close(s);

    /* held-out: the adapter beats the base on the same tokens */
    char eval_path[4200];
    snprintf(eval_path, sizeof eval_path, "%s", data_path);
    char *paths[] = {eval_path};
    mt_recipe_list data = {1, paths};
    mt_eval_opts eo = {.model_dir = base_dir, .adapter_dir = r.output.adapter, .data = &data,
                       .format = MT_RECIPE_FORMAT_TEXT, .max_seq_len = 64, .batch = 4, .threads = 2};
    mt_eval_result er;
    if (mt_evaluate(&eo, &er, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_true(er.n_tokens > 1000);
    if (!(er.adapter_loss < er.base_loss - 0.5))
        fail_msg("adapter loss %.4f vs base %.4f: training did not learn the corpus", er.adapter_loss, er.base_loss);

    /* DAP in eval: the paged path with τ = 0 scores what the whole-sequence pass scores; the
     * adapter's own domain threshold (its metadata, as the trainer wrote it) is found and run */
    mt_dap_opts dap0 = {.threshold = 0, .n_sink_blocks = 1, .n_local_blocks = 1, .mass_floor = 0.9f};
    mt_eval_opts po = eo;
    po.dap = &dap0;
    po.dap_adapter = true;
    mt_eval_result pr;
    if (mt_evaluate(&po, &pr, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(pr.n_tokens, er.n_tokens);
    if (fabs(pr.base_loss - er.base_loss) > 1e-5 * fabs(er.base_loss))
        fail_msg("paged eval base loss %.7f, whole-sequence %.7f", pr.base_loss, er.base_loss);
    assert_true(pr.base_tau == 0 && pr.base_dap.queries == 0);
    {
        float want_tau = -1;
        mt_lora_meta meta = {0};
        mt_lora *ll = NULL;
        mt_model *bm = NULL;
        mt_backend *be = NULL;
        assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
        assert_int_equal(mt_model_load(&bm, base_dir, be, &err), MT_OK);
        assert_int_equal(mt_lora_load_peft(&ll, bm, r.output.adapter, &meta, &err), MT_OK);
        assert_true(mt_lora_meta_threshold(meta.thresholds_json, "dap_threshold", &want_tau));
        free(meta.thresholds_json);
        free(meta.score);
        mt_lora_free(ll);
        mt_model_free(bm);
        mt_backend_free(be);
        /* the random base finds this corpus more surprising than max_entropy: its threshold is 0 */
        assert_true(want_tau >= 0 && want_tau <= 0.5);
        assert_float_equal(pr.adapter_tau, want_tau, 1e-7);
        if (want_tau == 0 && fabs(pr.adapter_loss - er.adapter_loss) > 1e-5 * fabs(er.adapter_loss))
            fail_msg("paged eval adapter loss %.7f, whole-sequence %.7f", pr.adapter_loss, er.adapter_loss);
        assert_true(want_tau == 0 ? pr.adapter_dap.queries == 0 : pr.adapter_dap.queries > 0);
    }
    /* τ = 1 with nothing always kept prunes all but the best-bounded block of 16-key blocks (rows
     * of 64): every (row, layer, head) query counted, losses finite */
    mt_dap_opts dap5 = {.threshold = 1.0f, .n_sink_blocks = 0, .n_local_blocks = 0, .mass_floor = 0};
    po.dap = &dap5;
    po.dap_adapter = false;
    if (mt_evaluate(&po, &pr, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_true(pr.base_dap.queries > 0 && pr.adapter_dap.queries == pr.base_dap.queries);
    assert_true(pr.adapter_dap.skipped > 0 && pr.adapter_dap.skipped < pr.adapter_dap.blocks);
    assert_true(isfinite(pr.adapter_loss) && isfinite(pr.base_loss));

    /* merged export computes what base + adapter computes */
    char merged[4200];
    snprintf(merged, sizeof merged, "%s/merged", dir);
    if (mt_export_merged(r.output.adapter, NULL, merged, 2, MT_EXPORT_AUTO, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_eval_opts mo = eo;
    mo.model_dir = merged;
    mo.adapter_dir = NULL;
    mt_eval_result mr;
    if (mt_evaluate(&mo, &mr, &err) != MT_OK) fail_msg("%s", err.msg);
    if (fabs(mr.base_loss - er.adapter_loss) > 1e-4 * fabs(er.adapter_loss))
        fail_msg("merged loss %.6f, adapter loss %.6f", mr.base_loss, er.adapter_loss);

    /* merging onto a different base is refused */
    mt_error_clear(&err);
    char other[4200];
    snprintf(other, sizeof other, "%s/merged2", dir);
    assert_int_not_equal(mt_export_merged(r.output.adapter, merged, other, 2, MT_EXPORT_AUTO, &err), MT_OK);
    assert_non_null(strstr(err.msg, "content hash"));
    mt_recipe_free(&r);
}

static pid_t spawn_train(const char *dir, bool resume) {
    char recipe[4200];
    snprintf(recipe, sizeof recipe, "%s/recipe.yaml", dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char log[4300];
        snprintf(log, sizeof log, "%s/train%s.log", dir, resume ? "-resume" : "");
        if (!freopen(log, "w", stderr) || !freopen("/dev/null", "w", stdout)) _exit(127);
        if (resume)
            execl(MT_MOETUNE_BIN, "moetune", "train", recipe, "--resume", (char *)NULL);
        else
            execl(MT_MOETUNE_BIN, "moetune", "train", recipe, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid) {
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *file_bytes(const char *path, size_t *len) {
    char *d;
    mt_error err = {0};
    if (mt_read_file(path, &d, len, &err) != MT_OK) fail_msg("%s", err.msg);
    return d;
}

static void test_kill_and_resume_is_bit_identical(void **state) {
    (void)state;
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/whole", root);
    snprintf(b, sizeof b, "%s/killed", root);
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(a, &err), MT_OK);
    assert_int_equal(mt_mkdirs(b, &err), MT_OK);
    const int steps = 24;
    write_recipe(a, lora_yaml, steps, NULL);
    write_recipe(b, lora_yaml, steps, NULL);
    assert_int_equal(wait_exit(spawn_train(a, false)), 0);

    /* kill -9 as soon as the first checkpoint is complete */
    pid_t pid = spawn_train(b, false);
    char ckpt[4300];
    snprintf(ckpt, sizeof ckpt, "%s/run/checkpoints/step-00000004/trainer_state.json", b);
    for (int i = 0; i < 60000 && !mt_path_exists(ckpt); i++) usleep(1000);
    assert_true(mt_path_exists(ckpt));
    kill(pid, SIGKILL);
    assert_int_equal(wait_exit(pid), 128 + SIGKILL);

    /* the store survived the kill whole, and says the run was interrupted */
    char db[4300];
    snprintf(db, sizeof db, "%s/moetune.db", b);
    sqlite3 *raw;
    assert_int_equal(sqlite3_open_v2(db, &raw, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(raw, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "ok");
    sqlite3_finalize(q);
    sqlite3_close(raw);
    mt_store *s;
    assert_int_equal(mt_store_open(&s, db, false, &err), MT_OK);
    mt_store_run run;
    assert_int_equal(mt_store_run_get(s, 1, &run, &err), MT_OK);
    assert_int_equal(run.status, MT_RUN_INTERRUPTED);
    mt_store_series partial;
    assert_int_equal(mt_store_metric_series(s, 1, "loss", &partial, &err), MT_OK);
    assert_true(partial.n >= 4 && partial.n < (size_t)steps); /* killed mid-way, not at the end */
    mt_store_series_free(&partial);
    mt_store_run_free(&run);
    mt_store_close(s);

    assert_int_equal(wait_exit(spawn_train(b, true)), 0);

    /* Ctrl-C: the run checkpoints where it is, says so, exits 130; --resume finishes it */
    char c[4200];
    snprintf(c, sizeof c, "%s/sigint", root);
    assert_int_equal(mt_mkdirs(c, &err), MT_OK);
    write_recipe(c, lora_yaml, steps, NULL);
    pid = spawn_train(c, false);
    snprintf(ckpt, sizeof ckpt, "%s/run/checkpoints/step-00000004/trainer_state.json", c);
    for (int i = 0; i < 60000 && !mt_path_exists(ckpt); i++) usleep(1000);
    kill(pid, SIGINT);
    assert_int_equal(wait_exit(pid), 130);
    char log[4300];
    snprintf(log, sizeof log, "%s/train.log", c);
    size_t log_len;
    char *log_text = file_bytes(log, &log_len);
    if (!strstr(log_text, "--resume")) fail_msg("no hint to resume in: %s", log_text);
    free(log_text);
    snprintf(db, sizeof db, "%s/moetune.db", c);
    assert_int_equal(mt_store_open(&s, db, false, &err), MT_OK);
    assert_int_equal(mt_store_run_get(s, 1, &run, &err), MT_OK);
    assert_int_equal(run.status, MT_RUN_INTERRUPTED);
    assert_false(run.stale); /* recorded as interrupted, not merely found dead */
    mt_store_run_free(&run);
    mt_store_close(s);
    assert_int_equal(wait_exit(spawn_train(c, true)), 0);

    mt_store_series la = loss_series(a, 1), lb = loss_series(b, 1), lc = loss_series(c, 1);
    assert_int_equal(lc.n, steps);
    assert_memory_equal(la.values, lc.values, (size_t)steps * sizeof(double));
    mt_store_series_free(&lc);
    assert_int_equal(la.n, steps);
    assert_int_equal(lb.n, steps);
    for (size_t i = 0; i < la.n; i++) {
        assert_int_equal(la.steps[i], lb.steps[i]);
        if (memcmp(&la.values[i], &lb.values[i], sizeof(double)) != 0)
            fail_msg("step %lld: loss %.17g uninterrupted, %.17g resumed", (long long)la.steps[i], la.values[i],
                     lb.values[i]);
    }
    mt_store_series_free(&la);
    mt_store_series_free(&lb);

    char pa[4300], pb[4300];
    snprintf(pa, sizeof pa, "%s/adapter/adapter_model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/adapter/adapter_model.safetensors", b);
    size_t na, nb;
    char *da = file_bytes(pa, &na), *dbytes = file_bytes(pb, &nb);
    /* the tensors are identical; the header's metadata names each run's own id and paths */
    mt_safetensors *sa, *sb;
    assert_int_equal(mt_safetensors_open(&sa, pa, &err), MT_OK);
    assert_int_equal(mt_safetensors_open(&sb, pb, &err), MT_OK);
    assert_int_equal(mt_safetensors_count(sa), mt_safetensors_count(sb));
    for (size_t i = 0; i < mt_safetensors_count(sa); i++) {
        const mt_st_tensor *x = mt_safetensors_at(sa, i);
        const mt_st_tensor *y = mt_safetensors_find(sb, x->name);
        assert_non_null(y);
        assert_int_equal(x->nbytes, y->nbytes);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
    mt_safetensors_close(sa);
    mt_safetensors_close(sb);
    free(da);
    free(dbytes);

    /* the resumed run is one run: completed, with a resume event */
    assert_int_equal(mt_store_open(&s, db, false, &err), MT_OK);
    assert_int_equal(mt_store_run_get(s, 1, &run, &err), MT_OK);
    assert_int_equal(run.status, MT_RUN_COMPLETED);
    mt_store_run_free(&run);
    mt_store_event_list ev;
    assert_int_equal(mt_store_events(s, 1, &ev, &err), MT_OK);
    bool resumed = false;
    for (size_t i = 0; i < ev.n; i++) resumed |= !strcmp(ev.items[i].kind, "resume");
    assert_true(resumed);
    mt_store_event_list_free(&ev);
    mt_store_close(s);
}

static void test_nan_guard_stops_the_run(void **state) {
    (void)state;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/nan", root);
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
    /* a base whose final norm is NaN: every step's loss is non-finite */
    char bad[4300];
    snprintf(bad, sizeof bad, "%s/nan-base", dir);
    mt_backend *be;
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    mt_model *m;
    assert_int_equal(mt_model_load(&m, base_dir, be, &err), MT_OK);
    mt_param *p = mt_model_find_param(m, "model.norm.weight");
    assert_non_null(p);
    assert_int_equal(mt_model_param_make_writable(m, p, &err), MT_OK);
    p->data[0] = NAN;
    assert_int_equal(mt_model_save(m, bad, MT_DTYPE_F32, 0, &err), MT_OK);
    mt_model_free(m);
    mt_backend_free(be);
    write_recipe_for(bad, dir, lora_yaml, 20, "  max_nan_skips: 2\n");
    mt_recipe r;
    char path[4300];
    snprintf(path, sizeof path, "%s/recipe.yaml", dir);
    char tokset[4400];
    snprintf(tokset, sizeof tokset, "model.tokenizer=%s", base_dir);
    const char *sets[] = {"thresholds.dap=0.3", tokset};
    if (mt_recipe_load(path, sets, 2, &r, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_train_result res;
    assert_int_equal(mt_train(&r, NULL, &res, &err), MT_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "max_nan_skips"));
    char db[4300];
    snprintf(db, sizeof db, "%s/moetune.db", dir);
    mt_store *s;
    assert_int_equal(mt_store_open(&s, db, false, &err), MT_OK);
    mt_store_event_list ev;
    assert_int_equal(mt_store_events(s, res.run_id, &ev, &err), MT_OK);
    int skips = 0;
    for (size_t i = 0; i < ev.n; i++) skips += !strcmp(ev.items[i].kind, "nan_skip");
    assert_int_equal(skips, 3);
    mt_store_event_list_free(&ev);
    mt_store_run run;
    assert_int_equal(mt_store_run_get(s, res.run_id, &run, &err), MT_OK);
    assert_int_equal(run.status, MT_RUN_FAILED);
    assert_non_null(strstr(run.status_message, "non-finite"));
    mt_store_run_free(&run);
    mt_store_close(s);
    mt_recipe_free(&r);
}

static void test_full_finetune_and_errors(void **state) {
    (void)state;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/full", root);
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
    write_recipe(dir, "adapter:\n  type: none\n", 3, NULL);
    mt_recipe r;
    load_recipe(dir, &r);
    mt_train_result res;
    if (mt_train(&r, NULL, &res, &err) != MT_OK) fail_msg("%s", err.msg);
    /* the export is a model folder moetune (and transformers) loads, with its tokenizer */
    mt_backend *be;
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    mt_model *m;
    if (mt_model_load(&m, r.output.adapter, be, &err) != MT_OK) fail_msg("%s", err.msg);
    char hb[65], hf[65];
    mt_model_content_hash(m, hf);
    mt_model_free(m);
    assert_int_equal(mt_model_load(&m, base_dir, be, &err), MT_OK);
    mt_model_content_hash(m, hb);
    mt_model_free(m);
    assert_string_not_equal(hb, hf); /* the weights moved */
    mt_backend_free(be);
    char tok[4300];
    snprintf(tok, sizeof tok, "%s/tokenizer.json", r.output.adapter);
    assert_true(mt_path_exists(tok));

    /* --resume with no checkpoint is an error that says where it looked */
    char dir2[4200];
    snprintf(dir2, sizeof dir2, "%s/full2", root);
    assert_int_equal(mt_mkdirs(dir2, &err), MT_OK);
    write_recipe(dir2, "adapter:\n  type: none\n", 3, NULL);
    mt_recipe r2;
    load_recipe(dir2, &r2);
    mt_train_opts o = {.resume = true};
    assert_int_equal(mt_train(&r2, &o, &res, &err), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "checkpoint"));
    /* a LoRA target that matches nothing names what exists */
    mt_recipe_free(&r2);
    write_recipe(dir2, "adapter:\n  type: lora\n  targets: [nonexistent_proj]\n", 3, NULL);
    load_recipe(dir2, &r2);
    mt_error_clear(&err); /* the first error set wins: start from a clean one */
    assert_int_not_equal(mt_train(&r2, NULL, &res, &err), MT_OK);
    if (!strstr(err.msg, "nonexistent_proj")) fail_msg("%s", err.msg);
    assert_non_null(strstr(err.msg, "q_a_proj"));
    mt_recipe_free(&r2);
    mt_recipe_free(&r);
}

/* The "experts" value of an exported adapter's metadata, as PEFT import reads it back. */
static float exported_experts(const char *dir) {
    char path[4300];
    snprintf(path, sizeof path, "%s/adapter", dir);
    mt_error err = {0};
    mt_backend *be;
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    mt_model *m;
    if (mt_model_load(&m, base_dir, be, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_lora *l;
    mt_lora_meta meta = {0};
    if (mt_lora_load_peft(&l, m, path, &meta, &err) != MT_OK) fail_msg("%s", err.msg);
    float v = -1;
    if (!mt_lora_meta_threshold(meta.thresholds_json, "experts", &v))
        fail_msg("no experts in %s", meta.thresholds_json);
    free(meta.thresholds_json);
    free(meta.score);
    mt_lora_free(l);
    mt_model_free(m);
    mt_backend_free(be);
    return v;
}

static double store_metric(const char *dir, int64_t run_id, const char *name) {
    char path[4200];
    snprintf(path, sizeof path, "%s/moetune.db", dir);
    mt_store *s;
    mt_error err = {0};
    if (mt_store_open(&s, path, false, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_series sr;
    if (mt_store_metric_series(s, run_id, name, &sr, &err) != MT_OK) fail_msg("%s", err.msg);
    if (sr.n != 1) fail_msg("%s: %zu values", name, sr.n);
    double v = sr.values[0];
    mt_store_series_free(&sr);
    mt_store_close(s);
    return v;
}

/* thresholds.experts: auto calibrates after training, a number is taken as it is; either is in
 * the store and round-trips through the PEFT export; eval and generate use it. */
static void test_experts_threshold_exported(void **state) {
    (void)state;
    const char *vals[] = {"auto", "0.25"};
    for (int k = 0; k < 2; k++) {
        char dir[4200], extra[128];
        snprintf(dir, sizeof dir, "%s/experts-%d", root, k);
        mt_error err = {0};
        assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
        snprintf(extra, sizeof extra, "thresholds:\n  experts: %s\n", vals[k]);
        write_recipe(dir, lora_yaml, 3, extra);
        mt_recipe r;
        load_recipe(dir, &r);
        mt_train_result res;
        if (mt_train(&r, NULL, &res, &err) != MT_OK) fail_msg("%s", err.msg);
        double logged = store_metric(dir, res.run_id, "experts_threshold");
        float meta = exported_experts(dir);
        assert_true(meta == (float)logged);
        if (k == 1)
            assert_true(logged == 0.25);
        else
            assert_true(logged > 0 && logged <= 1);
        mt_recipe_free(&r);
        if (k == 0) {
            char *out = NULL;
            int rc = mt_test_run_cli(&out, "eval --model '%s' --adapter '%s/adapter' --data '%s' --max-seq-len 32 "
                                           "--threads 1",
                                     base_dir, dir, data_path);
            if (rc != 0 || !strstr(out, "from the adapter's metadata")) fail_msg("eval: %s", out);
            free(out);
            rc = mt_test_run_cli(&out, "generate --model '%s' --adapter '%s/adapter' --prompt 'The' --max-tokens 4 "
                                       "--temperature 0 --threads 1",
                                 base_dir, dir);
            if (rc != 0 || !strstr(out, "from the adapter's metadata")) fail_msg("generate: %s", out);
            free(out);
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lora_lowers_loss_and_exports),
        cmocka_unit_test(test_kill_and_resume_is_bit_identical),
        cmocka_unit_test(test_nan_guard_stops_the_run),
        cmocka_unit_test(test_full_finetune_and_errors),
        cmocka_unit_test(test_experts_threshold_exported),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
