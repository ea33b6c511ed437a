/* cmd_recipe.c — `moetune recipe check FILE [--set k=v]... [--strict]` validates a recipe and
 * prints its effective (canonical) form; the unlisted `moetune recipe docs` prints
 * docs/recipes.md from the key table (for regenerating that file). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "finetune/finetune.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune recipe check RECIPE.yaml [--set KEY=VALUE]... [--strict]\n"
            "\n"
            "check   validate RECIPE.yaml; print the effective recipe (canonical YAML) on stdout and\n"
            "        exit 0, or print every problem found on stderr and exit 2\n"
            "        --set KEY=VALUE  override a key after the file (VALUE is YAML), repeatable\n"
            "        --strict         also require the model, tokenizer and data paths to exist\n"
            "every key, its default and the rules: docs/recipes.md\n");
}

static int cmd_check(int argc, char **argv) {
    const char *file = NULL;
    const char **sets = mt_xcalloc((size_t)argc + 1, sizeof *sets);
    size_t n_sets = 0;
    mt_recipe_load_opts opts = {.check_paths = false};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--set")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "moetune recipe check: --set needs KEY=VALUE\n");
                free(sets);
                return 2;
            }
            sets[n_sets++] = argv[++i];
        } else if (!strncmp(a, "--set=", 6)) {
            sets[n_sets++] = a + 6;
        } else if (!strcmp(a, "--strict")) {
            opts.check_paths = true;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(sets);
            return 0;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "moetune recipe check: unknown option '%s'\n", a);
            usage(stderr);
            free(sets);
            return 2;
        } else if (file) {
            fprintf(stderr, "moetune recipe check: one recipe at a time ('%s' and '%s')\n", file, a);
            free(sets);
            return 2;
        } else {
            file = a;
        }
    }
    if (!file) {
        usage(stderr);
        free(sets);
        return 2;
    }
    mt_recipe r;
    mt_recipe_diags diags = {0};
    mt_error err = {0};
    mt_status st = mt_recipe_validate(file, sets, n_sets, &opts, &r, &diags, &err);
    free(sets);
    if (st != MT_OK) {
        for (size_t i = 0; i < diags.n; i++) fprintf(stderr, "%s\n", diags.msgs[i]);
        fprintf(stderr, "moetune recipe check: %s: %zu problem%s\n", file, diags.n, diags.n == 1 ? "" : "s");
        mt_recipe_diags_free(&diags);
        /* a recipe that cannot be read or is wrong is bad input either way */
        return st == MT_ERR_NOMEM ? 1 : 2;
    }
    mt_recipe_diags_free(&diags);
    size_t len;
    char *yaml = mt_recipe_dump_yaml(&r, &len);
    char hash[65];
    mt_recipe_hash(&r, hash);
    fwrite(yaml, 1, len, stdout);
    fprintf(stderr, "moetune recipe check: %s: ok, sha256 %s\n", file, hash);
    free(yaml);
    mt_recipe_free(&r);
    return 0;
}

int mt_cmd_recipe(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "check")) return cmd_check(argc - 1, argv + 1);
    if (!strcmp(argv[1], "docs")) {
        if (argc > 2) {
            fprintf(stderr, "moetune recipe docs: takes no arguments\n");
            return 2;
        }
        size_t len;
        char *md = mt_recipe_docs_markdown(&len);
        fwrite(md, 1, len, stdout);
        free(md);
        return 0;
    }
    fprintf(stderr, "moetune recipe: unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
