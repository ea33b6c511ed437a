/* cmd_export.c — `moetune export --merge ADAPTER --out DIR [--model BASE]`: the base with the
 * adapter folded into its weights, as a Hugging Face model folder. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "finetune/finetune.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune export --merge ADAPTER --out DIR [--model BASE] [--dtype D] [--threads N]\n"
            "\n"
            "Writes BASE with the PEFT LoRA adapter merged (W + scale*B*A) to DIR: config.json,\n"
            "model.safetensors, generation_config.json and the base's tokenizer files; it loads\n"
            "in transformers and in moetune with no adapter. BASE defaults to the adapter's recorded\n"
            "base (adapter_config.json base_model_name_or_path); a base whose weights differ from the\n"
            "one the adapter was trained on is refused.\n"
            "  --dtype D   f32, bf16 or f16 on disk (default: the dtype of the base's weights)\n");
}

int mt_cmd_export(int argc, char **argv) {
    if (mt_cli_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    const char *adapter = NULL, *out = NULL, *base = NULL, *v;
    mt_export_dtype dtype = MT_EXPORT_AUTO;
    long threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (mt_cli_is_flag(a, "--merge")) {
            if (!(adapter = mt_cli_value("--merge", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--out")) {
            if (!(out = mt_cli_value("--out", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--model")) {
            if (!(base = mt_cli_value("--model", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--dtype")) {
            if (!(v = mt_cli_value("--dtype", argc, argv, &i))) goto bad;
            if (!strcmp(v, "f32"))
                dtype = MT_EXPORT_F32;
            else if (!strcmp(v, "bf16"))
                dtype = MT_EXPORT_BF16;
            else if (!strcmp(v, "f16"))
                dtype = MT_EXPORT_F16;
            else {
                fprintf(stderr, "moetune export: --dtype: expected f32, bf16 or f16, got '%s'\n", v);
                return 2;
            }
        } else if (mt_cli_is_flag(a, "--threads")) {
            if (!(v = mt_cli_value("--threads", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 4096, &threads)) goto bad;
        } else {
            goto bad;
        }
    }
    if (!adapter || !out) goto bad;
    mt_error err = {0};
    if (mt_export_merged(adapter, base, out, (int)threads, dtype, &err) != MT_OK) return mt_cli_fail("export", &err);
    printf("merged model written to %s\n", out);
    return 0;
bad:
    usage(stderr);
    return 2;
}
