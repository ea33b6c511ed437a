/* cmd_train.c — `moetune train RECIPE.yaml [--set k=v]... [--resume]`: runs a recipe with a
 * progress bar on a terminal (plain lines otherwise); Ctrl-C checkpoints and stops. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "dist/dist.h"
#include "finetune/finetune.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune train RECIPE.yaml [--set KEY=VALUE]... [--resume] [--max-steps N]\n"
            "\n"
            "Trains what the recipe says (docs/recipes.md) and exports the adapter (or the model) to\n"
            "output.adapter; every step's metrics, the events and the result go to the run store.\n"
            "  --set KEY=VALUE  override a recipe key (the value is YAML), e.g. --set train.lr=1e-4\n"
            "  --resume         continue from the newest checkpoint in output.dir\n"
            "  --max-steps N    stop (with a checkpoint) after N steps in this process\n"
            "Ctrl-C writes a checkpoint and stops; `--resume` continues exactly where it stopped.\n"
            "Under `mpirun -np N` the ranks share every step's micro-batches (train.grad_accum of them)\n"
            "and rank 0 alone writes; a checkpoint resumes with any number of ranks (docs/scale-out.md).\n");
}

static volatile int stop_requested;

static void on_sigint(int sig) {
    (void)sig;
    stop_requested = 1;
    /* a second Ctrl-C ends the process at once */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}

typedef struct view {
    bool tty;
    bool bar_shown;
} view;

static void clear_bar(view *v) {
    if (v->bar_shown) fputs("\r\033[K", stderr);
    v->bar_shown = false;
}

static void on_note(void *user, const char *line) {
    view *v = user;
    clear_bar(v);
    fprintf(stderr, "moetune train: %s\n", line);
}

static void fmt_eta(double s, char *buf, size_t cap) {
    if (!(s >= 0) || s > 1e7) {
        snprintf(buf, cap, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
}

/* The objective's headline figures, when it reports them: " accuracy 0.75  margin 0.31". */
static void key_metrics(const mt_train_progress *p, char *buf, size_t cap) {
    static const char *const keys[][2] = {
        {"rewards/accuracies", "acc"}, {"rewards/margins", "margin"}, {"accuracy", "acc"},
        {"margin", "margin"},          {"reward", "reward"},         {"objective/rlhf_reward", "rlhf_reward"},
        {"objective/kl", "kl"},        {"kl", "kl"},
    };
    size_t off = 0;
    buf[0] = '\0';
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        for (int i = 0; i < p->n_metrics; i++)
            if (!strcmp(p->metric_names[i], keys[k][0]) && off < cap)
                off += (size_t)snprintf(buf + off, cap - off, "  %s %.4f", keys[k][1], p->metric_values[i]);
}

static void on_progress(void *user, const mt_train_progress *p) {
    view *v = user;
    char extra[256];
    key_metrics(p, extra, sizeof extra);
    if (p->eval) {
        clear_bar(v);
        if (p->eval_ppl == p->eval_ppl)
            fprintf(stderr, "moetune train: step %lld/%lld  eval loss %.4f  ppl %.2f%s\n", (long long)p->step,
                    (long long)p->total_steps, p->eval_loss, p->eval_ppl, extra);
        else
            fprintf(stderr, "moetune train: step %lld/%lld  eval loss %.4f%s\n", (long long)p->step,
                    (long long)p->total_steps, p->eval_loss, extra);
        return;
    }
    char eta[32];
    fmt_eta(p->eta_seconds, eta, sizeof eta);
    if (v->tty) {
        int width = 24, filled = (int)((double)width * (double)p->step / (double)p->total_steps);
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '-';
        bar[width] = '\0';
        fprintf(stderr, "\r\033[K[%s] %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s%s", bar, (long long)p->step,
                (long long)p->total_steps, p->loss, p->lr, p->tokens_per_sec, eta, p->skipped ? "  (skipped)" : "");
        v->bar_shown = true;
        if (p->step == p->total_steps) clear_bar(v);
    } else if (p->log_line || p->skipped) {
        fprintf(stderr, "moetune train: step %lld/%lld  loss %.4f  lr %.3e  grad_norm %.3f  aux %.4f%s  %.0f tok/s  ETA %s%s\n",
                (long long)p->step, (long long)p->total_steps, p->loss, p->lr, p->grad_norm, p->aux_loss, extra,
                p->tokens_per_sec, eta, p->skipped ? "  (update skipped: non-finite)" : "");
    }
}

int mt_cmd_train(int argc, char **argv) {
    if (argc < 2 || mt_cli_wants_help(argc, argv)) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *file = NULL;
    const char **sets = mt_xcalloc((size_t)argc, sizeof *sets);
    size_t n_sets = 0;
    mt_train_opts opts = {0};
    int code = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        if (mt_cli_is_flag(a, "--set")) {
            if (!(v = mt_cli_value("--set", argc, argv, &i))) goto bad;
            sets[n_sets++] = v;
        } else if (!strcmp(a, "--resume")) {
            opts.resume = true;
        } else if (mt_cli_is_flag(a, "--max-steps")) {
            if (!(v = mt_cli_value("--max-steps", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 1L << 40, &n)) goto bad;
            opts.max_steps = n;
        } else if (a[0] == '-' || file) {
            goto bad;
        } else {
            file = a;
        }
    }
    if (!file) goto bad;

    /* launched by mpirun: this process is one rank of a data-parallel job */
    mt_dist *dist = NULL;
    mt_error derr = {0};
    if (mt_dist_open(&dist, &derr) != MT_OK) {
        free(sets);
        return mt_cli_fail("train", &derr);
    }
    opts.dist = dist;
    int rank = mt_dist_rank(dist), n_ranks = mt_dist_size(dist);

    mt_recipe r;
    mt_recipe_diags diags = {0};
    mt_recipe_load_opts lo = {.check_paths = true};
    mt_error err = {0};
    mt_status st = mt_recipe_validate(file, sets, n_sets, &lo, &r, &diags, &err);
    free(sets);
    if (st != MT_OK) {
        if (rank == 0) {
            for (size_t i = 0; i < diags.n; i++) fprintf(stderr, "%s\n", diags.msgs[i]);
            if (!diags.n) fprintf(stderr, "moetune train: %s\n", err.msg);
        }
        mt_recipe_diags_free(&diags);
        mt_dist_close(dist); /* every rank read the same recipe and stops here */
        return mt_cli_exit_code(st);
    }
    mt_recipe_diags_free(&diags);

    view v = {.tty = isatty(STDERR_FILENO) == 1};
    opts.on_note = on_note;
    opts.on_progress = on_progress;
    opts.user = &v;
    opts.recipe_path = file;
    opts.stop_flag = &stop_requested;
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);

    mt_train_result res;
    st = mt_train(&r, &opts, &res, &err);
    clear_bar(&v);
    if (st != MT_OK && st != MT_ERR_INTERRUPTED && n_ranks > 1) {
        /* the others may be waiting in a collective for this rank: end the whole job */
        fprintf(stderr, "moetune train: rank %d of %d: %s; ending the job\n", rank, n_ranks,
                err.msg[0] ? err.msg : mt_status_name(st));
        fflush(stderr);
        mt_dist_abort(dist, mt_cli_exit_code(st));
    }
    mt_dist_close(dist);
    if (rank > 0) {
        mt_recipe_free(&r);
        return mt_cli_exit_code(st);
    }
    if (st == MT_OK || st == MT_ERR_INTERRUPTED) {
        printf("run:            %lld (%s)\n", (long long)res.run_id, r.output.store);
        printf("steps:          %lld of %lld\n", (long long)res.steps, (long long)res.total_steps);
        printf("last loss:      %.4f\n", res.last_loss);
        if (res.eval_loss == res.eval_loss && res.eval_ppl == res.eval_ppl)
            printf("eval loss:      %.4f (perplexity %.2f over %lld tokens)\n", res.eval_loss, res.eval_ppl,
                   (long long)res.eval_tokens);
        else if (res.eval_loss == res.eval_loss)
            printf("eval loss:      %.4f (%s)\n", res.eval_loss, r.method == MT_RECIPE_METHOD_SFT ? "" : "the objective's");
        if (res.mean_entropy == res.mean_entropy)
            printf("dap threshold:  %.4f (mean predictive entropy %.3f bits)\n", res.dap_threshold, res.mean_entropy);
        else
            printf("dap threshold:  %.4f (from the recipe)\n", res.dap_threshold);
        printf("throughput:     %.0f tokens/s, %.1f s, peak RSS %.0f MB\n", res.tokens_per_sec, res.seconds,
               res.peak_rss_mb);
        if (n_ranks > 1) printf("ranks:          %d (%.0f tokens/s per rank)\n", n_ranks, res.tokens_per_sec / n_ranks);
        if (res.adapter_dir[0]) printf("exported:       %s\n", res.adapter_dir);
    }
    mt_recipe_free(&r);
    if (st != MT_OK) return mt_cli_fail("train", &err);
    return 0;

bad:
    free(sets);
    usage(stderr);
    return code;
}
