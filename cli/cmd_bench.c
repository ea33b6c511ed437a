/* cmd_bench.c — `moetune bench model --model DIR`: forward and forward+backward throughput of
 * a model (full fine-tuning with every weight gradient, and a frozen base that only
 * propagates activations' gradients), achieved GFLOP/s, and the sgemm peak measured in the
 * same run for comparison. Median of N timed steps after a warm-up. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune bench model --model DIR [--batch B] [--seq T] [--steps N] [--threads N]\n"
            "       moetune bench train --recipe RECIPE.yaml [--steps N]   (see bench train --help)\n"
            "       moetune bench serve --model DIR [--adapters N]        (see bench serve --help)\n"
            "       moetune bench decode --model DIR [--batch 1,8,32] [--adapters N]   (see bench decode --help)\n"
            "\n"
            "Times forward, forward+backward with a frozen base (gradients for activations only, what\n"
            "LoRA training runs) and forward+backward of full fine-tuning (every weight gradient) on\n"
            "random tokens. Reports the median of N steps after one warm-up, tokens/s, GFLOP/s\n"
            "(forward flops from the config; backward counted as 2x forward, 1x for the frozen base),\n"
            "and the fraction of this backend's sgemm GFLOP/s measured in the same run.\n"
            "  --batch B     sequences per step (default 4)\n"
            "  --seq T       tokens per sequence (default 256)\n"
            "  --steps N     timed steps (default 5)\n"
            "  --threads N   CPU threads (default: all cores)\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef enum bench_kind { BENCH_FORWARD = 0, BENCH_FROZEN, BENCH_FULL } bench_kind;

/* Median seconds of one step over `steps` timed runs after a warm-up. */
static mt_status time_steps(mt_model *m, mt_workspace *ws, const mt_batch *b, bench_kind kind, int steps,
                            double *median, mt_error *err) {
    double *t = mt_xcalloc((size_t)steps, sizeof(double));
    mt_forward_opts opts = {.train = kind != BENCH_FORWARD, .seed = 7};
    mt_forward_result res;
    mt_status st = MT_OK;
    for (int i = -1; i < steps && !st; i++) {
        double t0 = mt_now_seconds();
        opts.seed = (uint64_t)(i + 8);
        st = mt_model_forward(m, ws, b, &opts, &res, err);
        if (!st && kind != BENCH_FORWARD) st = mt_model_backward(m, ws, NULL, err);
        if (i >= 0) t[i] = mt_now_seconds() - t0;
    }
    qsort(t, (size_t)steps, sizeof(double), cmp_double);
    *median = steps % 2 ? t[steps / 2] : 0.5 * (t[steps / 2 - 1] + t[steps / 2]);
    free(t);
    return st;
}

int mt_cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "train")) return mt_cmd_bench_train(argc, argv);
    if (!strcmp(argv[1], "serve")) return mt_cmd_bench_serve(argc, argv);
    if (!strcmp(argv[1], "decode")) return mt_cmd_bench_decode(argc, argv);
    if (strcmp(argv[1], "model")) {
        fprintf(stderr, "moetune bench: unknown benchmark '%s' (model, train, decode)\n", argv[1]);
        return 2;
    }
    const char *model_dir = NULL;
    long batch = 4, seq = 256, steps = 5, threads = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (mt_cli_is_flag(a, "--model")) {
            if (!(model_dir = mt_cli_value("--model", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--batch")) {
            if (!(v = mt_cli_value("--batch", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 1 << 16, &batch)) goto bad;
        } else if (mt_cli_is_flag(a, "--seq")) {
            if (!(v = mt_cli_value("--seq", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 1 << 20, &seq)) goto bad;
        } else if (mt_cli_is_flag(a, "--steps")) {
            if (!(v = mt_cli_value("--steps", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 10000, &steps)) goto bad;
        } else if (mt_cli_is_flag(a, "--threads")) {
            if (!(v = mt_cli_value("--threads", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 4096, &threads)) goto bad;
        } else {
            fprintf(stderr, "moetune bench model: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "moetune bench model: %s needs a valid value\n", a);
        usage(stderr);
        return 2;
    }
    if (!model_dir) {
        fprintf(stderr, "moetune bench model: --model is required\n");
        usage(stderr);
        return 2;
    }
    mt_backend *be = mt_cli_backend("bench", NULL, (int)threads);
    if (!be) return 1;
    mt_error err = {0};
    mt_model *m = NULL;
    mt_workspace *eval_ws = NULL, *train_ws = NULL;
    int N = (int)(batch * seq);
    int32_t *tokens = mt_xmalloc((size_t)N * sizeof(int32_t)), *targets = mt_xmalloc((size_t)N * sizeof(int32_t));
    mt_status st = mt_model_load(&m, model_dir, be, &err);
    if (!st) st = mt_workspace_init(&eval_ws, m, (int)batch, (int)seq, false, 0, &err);
    if (!st) st = mt_workspace_init(&train_ws, m, (int)batch, (int)seq, true, 0, &err);
    double t_fwd = 0, t_frozen = 0, t_full = 0;
    const mt_config *cfg = m ? mt_model_config(m) : NULL;
    if (!st) {
        mt_rng r;
        mt_rng_seed(&r, 1234);
        for (int i = 0; i < N; i++) tokens[i] = (int32_t)mt_rng_below(&r, (uint64_t)cfg->vocab_size);
        for (int i = 0; i < N; i++) targets[i] = (i + 1) % seq ? tokens[i + 1] : MT_IGNORE_INDEX;
        mt_batch b = {.B = (int)batch, .T = (int)seq, .tokens = tokens, .targets = targets};
        st = time_steps(m, eval_ws, &b, BENCH_FORWARD, (int)steps, &t_fwd, &err);
        if (!st) st = time_steps(m, train_ws, &b, BENCH_FROZEN, (int)steps, &t_frozen, &err);
        for (int i = 0; !st && i < mt_model_param_count(m); i++)
            st = mt_model_require_grad(m, mt_model_param(m, i), &err);
        if (!st) st = time_steps(m, train_ws, &b, BENCH_FULL, (int)steps, &t_full, &err);
    }
    int rc = 0;
    if (st) {
        rc = mt_cli_fail("bench", &err);
    } else {
        double peak = mt_backend_sgemm_gflops(be, 1024, 5);
        double fpt = mt_config_flops_per_token(cfg, (int)seq);
        int64_t active = 0, total = mt_config_param_count(cfg, &active);
        printf("model:    %s (%s, %.2f M parameters, %.2f M active)\n", model_dir, mt_family_name(cfg->family),
               total / 1e6, active / 1e6);
        printf("device:   %s\n", mt_backend_describe(be));
        printf("shape:    batch %ld x seq %ld = %d tokens/step, median of %ld steps\n", batch, seq, N, steps);
        printf("sgemm:    %.1f GFLOP/s (1024^3)\n", peak);
        struct {
            const char *name;
            double t, mult;
        } rows[] = {{"forward", t_fwd, 1}, {"fwd+bwd frozen base", t_frozen, 2}, {"fwd+bwd full", t_full, 3}};
        printf("%-22s %10s %12s %10s %8s\n", "pass", "ms/step", "tokens/s", "GFLOP/s", "of sgemm");
        for (int i = 0; i < 3; i++) {
            double tps = N / rows[i].t, gf = fpt * rows[i].mult * tps / 1e9;
            printf("%-22s %10.2f %12.1f %10.2f %7.1f%%\n", rows[i].name, rows[i].t * 1e3, tps, gf,
                   peak > 0 ? 100 * gf / peak : 0);
        }
    }
    free(tokens);
    free(targets);
    mt_workspace_free(eval_ws);
    mt_workspace_free(train_ws);
    mt_model_free(m);
    mt_backend_free(be);
    return rc;
}
