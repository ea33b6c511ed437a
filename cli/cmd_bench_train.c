/* cmd_bench_train.c — `moetune bench train --recipe R`: the training loop's own throughput
 * (median step after a warm-up), peak memory, and the share of the sgemm peak it reaches. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "finetune/finetune.h"
#include "model/model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune bench train --recipe RECIPE.yaml [--steps N] [--set KEY=VALUE]...\n"
            "\n"
            "Runs N+1 optimizer steps of the recipe (no store, checkpoints or export; thresholds\n"
            "fixed so that setup stays short) and prints the median step's tokens/s, the peak\n"
            "resident memory of the process, and the achieved GFLOP/s as a share of the sgemm\n"
            "GFLOP/s measured in the same run (LoRA: forward + activation backward = 2x forward\n"
            "flops; full fine-tuning: 3x; reference passes and rollout decoding are not counted as\n"
            "flops). tokens/s counts the input tokens the objective processed: two rows a DPO pair,\n"
            "prompts and completions of a GRPO/PPO rollout. The first step is a warm-up and is not counted.\n"
            "  --steps N   timed steps (default 5)\n");
}

typedef struct timing {
    double last, *dt, *tok; /* per timed step: seconds, input tokens */
    int n, cap;
} timing;

static void on_progress(void *user, const mt_train_progress *p) {
    timing *t = user;
    if (p->eval) return;
    double now = mt_now_seconds();
    if (p->step > 1 && t->n < t->cap) { /* step 1 is the warm-up */
        t->tok[t->n] = (double)p->tokens;
        t->dt[t->n++] = now - t->last;
    }
    t->last = now;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int mt_cmd_bench_train(int argc, char **argv) {
    if (mt_cli_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    const char *recipe = NULL, *v;
    long steps = 5;
    const char **sets = mt_xcalloc((size_t)argc + 2, sizeof *sets);
    size_t n_sets = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (mt_cli_is_flag(a, "--recipe")) {
            if (!(recipe = mt_cli_value("--recipe", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--steps")) {
            if (!(v = mt_cli_value("--steps", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 100000, &steps)) goto bad;
        } else if (mt_cli_is_flag(a, "--set")) {
            if (!(v = mt_cli_value("--set", argc, argv, &i))) goto bad;
            sets[n_sets++] = v;
        } else {
            goto bad;
        }
    }
    if (!recipe) goto bad;
    sets[n_sets++] = "thresholds.dap=0.5";
    mt_recipe r;
    mt_error err = {0};
    mt_status st = mt_recipe_load(recipe, sets, n_sets, &r, &err);
    free(sets);
    if (st != MT_OK) return mt_cli_fail("bench train", &err);

    timing t = {.dt = mt_xcalloc((size_t)steps, sizeof(double)), .tok = mt_xcalloc((size_t)steps, sizeof(double)),
                .cap = (int)steps, .last = mt_now_seconds()};
    mt_train_opts o = {.on_progress = on_progress, .user = &t, .max_steps = steps + 1, .no_store = true,
                       .no_export = true, .no_checkpoints = true};
    mt_train_result res;
    st = mt_train(&r, &o, &res, &err);
    if (st != MT_OK) {
        free(t.dt);
        free(t.tok);
        mt_recipe_free(&r);
        return mt_cli_fail("bench train", &err);
    }
    mt_config cfg;
    char cfg_path[4200];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", r.model.path);
    st = mt_config_load(&cfg, cfg_path, &err);
    mt_backend *be = mt_cli_backend("bench train", NULL, r.train.threads);
    if (st != MT_OK || !be || t.n == 0) {
        free(t.dt);
        free(t.tok);
        mt_recipe_free(&r);
        if (be) mt_backend_free(be);
        return st != MT_OK ? mt_cli_fail("bench train", &err) : 1;
    }
    double peak = mt_backend_sgemm_gflops(be, 1024, 5);
    /* the objective's own count: a DPO step runs two rows a pair, a GRPO step its rollout */
    double tokens = 0;
    for (int i = 0; i < t.n; i++) tokens += t.tok[i] / t.n;
    qsort(t.dt, (size_t)t.n, sizeof(double), cmp_double);
    double med = t.dt[t.n / 2];
    int T = r.data.max_seq_len;
    double passes = r.adapter.type == MT_RECIPE_ADAPTER_LORA ? 2.0 : 3.0;
    double gflops = passes * mt_config_flops_per_token(&cfg, T) * tokens / med / 1e9;
    printf("recipe:        %s (%s, micro-batch %d x %d tokens, grad accum %d, %d threads)\n", recipe,
           r.adapter.type == MT_RECIPE_ADAPTER_LORA ? "LoRA" : "full fine-tuning", r.train.micro_batch, T,
           r.train.grad_accum, mt_backend_threads(be));
    printf("trainable:     %lld parameters\n", (long long)res.trainable_params);
    printf("step:          %.1f ms median of %d (min %.1f, max %.1f)\n", med * 1e3, t.n, t.dt[0] * 1e3,
           t.dt[t.n - 1] * 1e3);
    printf("tokens/s:      %.0f  (%.0f input tokens a step, the mean of the timed steps)\n", tokens / med, tokens);
    printf("examples/s:    %.2f  (%d a step: rows, pairs or prompts as the method counts them)\n",
           (double)r.train.micro_batch * r.train.grad_accum / med, r.train.micro_batch * r.train.grad_accum);
    printf("peak RSS:      %.0f MB\n", res.peak_rss_mb);
    printf("GFLOP/s:       %.1f achieved, sgemm %.1f (1024^3) -> %.0f%% of the sgemm peak\n", gflops, peak,
           peak > 0 ? 100 * gflops / peak : 0);
    free(t.dt);
    free(t.tok);
    mt_recipe_free(&r);
    mt_backend_free(be);
    return 0;
bad:
    free(sets);
    usage(stderr);
    return 2;
}
