/* fuzz_adapter.c — libFuzzer target for loading a PEFT LoRA folder onto a base (the committed
 * deepseek_v3 fixture model). The first byte picks which file of the folder the rest is: odd,
 * adapter_config.json (beside the fixture adapter's weights); even, adapter_model.safetensors
 * (beside the fixture's config) — wrong shapes, missing keys, rank 0, NaN weights, another
 * base's names. moetune.json is absent, so the safetensors metadata is read too. An adapter that
 * loads is freed again; a refusal must say why. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "model/model.h"
#include "peft/lora.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mt_backend *adapter_be;
static mt_model *adapter_base;
static char *adapter_cfg, *adapter_st; /* the fixture adapter's two files */
static size_t adapter_cfg_len, adapter_st_len;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    mt_error err = {0};
    if (mt_backend_init(&adapter_be, MT_BACKEND_CPU, 1, &err) != MT_OK ||
        mt_model_load(&adapter_base, fuzz_fixture("models/deepseek_v3"), adapter_be, &err) != MT_OK ||
        mt_read_file(fuzz_fixture("peft/export/deepseek_v3/adapter_config.json"), &adapter_cfg, &adapter_cfg_len,
                     &err) != MT_OK ||
        mt_read_file(fuzz_fixture("peft/export/deepseek_v3/adapter_model.safetensors"), &adapter_st, &adapter_st_len,
                     &err) != MT_OK) {
        fprintf(stderr, "fuzz_adapter: %s\n", err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if (!adapter_base) LLVMFuzzerInitialize(NULL, NULL);
    bool config = data[0] & 1;
    char dir[600], cfg[700], st[700];
    snprintf(dir, sizeof dir, "%s", fuzz_scratch());
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    snprintf(st, sizeof st, "%s/adapter_model.safetensors", dir);
    fuzz_write(cfg, config ? (const char *)data + 1 : adapter_cfg, config ? size - 1 : adapter_cfg_len);
    fuzz_write(st, config ? adapter_st : (const char *)data + 1, config ? adapter_st_len : size - 1);
    mt_lora *l = NULL;
    mt_lora_meta meta;
    memset(&meta, 0, sizeof meta);
    mt_error err = {0};
    if (mt_lora_load_peft(&l, adapter_base, dir, &meta, &err) != MT_OK) {
        if (!err.msg[0] || l) abort();
        free(meta.thresholds_json);
        return 0;
    }
    free(meta.thresholds_json);
    mt_lora_free(l);
    return 0;
}
