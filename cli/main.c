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
    {"serve", "serve the model and its adapters over HTTP (OpenAI and vLLM APIs)", mt_cmd_serve},
    {"ui", "the workbench web page for a store, without a model (runs, adapters, pairs)", mt_cmd_ui},
    {"tokenizer", "train or apply a BPE tokenizer", mt_cmd_tokenizer},
    {"train", "train a LoRA adapter or every weight from a recipe", mt_cmd_train},
    {"eval", "held-out perplexity of a base model, with and without an adapter", mt_cmd_eval},
    {"export", "merge an adapter into its base and write a Hugging Face model", mt_cmd_export},
    {"bench", "measure throughput (model, train, decode)", mt_cmd_bench},
    {"profile", "time, FLOPs and bytes per part of every layer; routing; the DAP rule's skips", mt_cmd_profile},
    {"recipe", "check a training recipe and print its effective values", mt_cmd_recipe},
    {"runs", "list, show, compare and plot recorded runs", mt_cmd_runs},
    {"data", "build legal, medical or general corpora from text on this machine", mt_cmd_data},
    {"pairs", "import, list, inspect and export preference pairs in the store", mt_cmd_pairs},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
    fprintf(f, "moetune %s — fine-tuning workbench for Mixture-of-Experts language models\n\n", MT_VERSION);
    fprintf(f, "usage: moetune <command> [options]   (moetune <command> --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

/* Two runtime choices are made when a library loads, before main() runs, so they are set
 * here and the process starts again (once: the variables are then set, so nothing changes).
 * - OpenBLAS 0.3.21 does not know AMD Zen 4/5: it falls back to AVX2 kernels although its
 *   AVX-512 (SkylakeX) ones are about 1.7x faster there; the kernels room advises a core type.
 * - libgomp's threads spin while they wait. On a machine with anything else running, a
 *   spinning thread holds the core its descheduled partner needs: a 2-thread training step
 *   measured 3x slower (747 vs 2197 tokens/s, bench train beside one busy process) than with
 *   waiting threads that sleep. A user's own OMP_WAIT_POLICY stands. docs/performance.md. */
static void choose_runtime(char **argv) {
    bool again = false;
    const char *core = mt_backend_preferred_coretype();
    if (core) {
        setenv("OPENBLAS_CORETYPE", core, 1);
        again = true;
    }
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        again = true;
    }
    if (again) execv("/proc/self/exe", argv);
    /* exec failed: carry on with what is already loaded */
}

int main(int argc, char **argv) {
    choose_runtime(argv);
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
