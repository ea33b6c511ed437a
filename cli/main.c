/* main.c — moetune's entry point: picks the subcommand from the table and runs it. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const mt_cli_command commands[] = {
    {"init", "write a randomly initialised model in Hugging Face layout", mt_cmd_init},
    {"generate", "generate text from a prompt", mt_cmd_generate},
    {"tokenizer", "train or apply a BPE tokenizer", mt_cmd_tokenizer},
    {"train", "train a LoRA adapter or every weight from a recipe", mt_cmd_train},
    {"eval", "held-out perplexity of a base model, with and without an adapter", mt_cmd_eval},
    {"export", "merge an adapter into its base and write a Hugging Face model", mt_cmd_export},
    {"bench", "measure throughput (model, train)", mt_cmd_bench},
    {"recipe", "check a training recipe and print its effective values", mt_cmd_recipe},
    {"runs", "list, show, compare and plot recorded runs", mt_cmd_runs},
    {"data", "build legal, medical or general corpora from text on this machine", mt_cmd_data},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
    fprintf(f, "moetune %s — fine-tuning workbench for Mixture-of-Experts language models\n\n", MT_VERSION);
    fprintf(f, "usage: moetune <command> [options]   (moetune <command> --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

/* OpenBLAS picks its kernels when the library loads, before main() runs, and 0.3.21 does not
 * know AMD Zen 4/5: it falls back to AVX2 kernels although its AVX-512 (SkylakeX) ones are
 * about 1.7x faster there. When the kernels room advises a core type, set it and start again
 * (once: the variable is then set, so the check declines). docs/performance.md. */
static void choose_blas_kernels(char **argv) {
    const char *core = mt_backend_preferred_coretype();
    if (!core) return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the kernels already loaded */
}

int main(int argc, char **argv) {
    choose_blas_kernels(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("moetune %s\n", MT_VERSION);
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "moetune: unknown command '%s'\n", argv[1]);
    const char *best = NULL;
    int best_d = 3;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        int d = mt_edit_distance(argv[1], commands[i].name);
        if (d < best_d) best_d = d, best = commands[i].name;
    }
    if (best) fprintf(stderr, "did you mean '%s'?\n", best);
    usage(stderr);
    return 2;
}
