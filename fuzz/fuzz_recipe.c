/* fuzz_recipe.c — libFuzzer target for the recipe loader: the input is a recipe.yaml (libyaml,
 * then the key table's validation). A recipe that loads must survive its own canonical dump:
 * the dump re-loads, and dumps again to the same text and hash. A refusal must say why. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/finetune.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600], again_path[600];
    snprintf(path, sizeof path, "%s/recipe.yaml", fuzz_scratch());
    snprintf(again_path, sizeof again_path, "%s/dumped.yaml", fuzz_scratch());
    fuzz_write(path, data, size);
    mt_recipe r;
    mt_error err = {0};
    if (mt_recipe_load(path, NULL, 0, &r, &err) != MT_OK) {
        if (!err.msg[0]) abort();
        return 0;
    }
    size_t len = 0;
    char *dump = mt_recipe_dump_yaml(&r, &len);
    char hash[65];
    mt_recipe_hash(&r, hash);
    fuzz_write(again_path, dump, len);
    mt_recipe again;
    mt_error err2 = {0};
    if (mt_recipe_load(again_path, NULL, 0, &again, &err2) != MT_OK) {
        fprintf(stderr, "the canonical dump does not load: %s\n%s\n", err2.msg, dump);
        abort();
    }
    char *dump2 = mt_recipe_dump_yaml(&again, NULL);
    char hash2[65];
    mt_recipe_hash(&again, hash2);
    if (strcmp(dump, dump2) != 0 || strcmp(hash, hash2) != 0) {
        fprintf(stderr, "the dump changed on reloading:\n%s\n---\n%s\n", dump, dump2);
        abort();
    }
    free(dump);
    free(dump2);
    mt_recipe_free(&again);
    mt_recipe_free(&r);
    return 0;
}
