/* cmd_init.c — `moetune init --preset P OUT_DIR`: a randomly initialised model in the Hugging
 * Face layout (config.json, generation_config.json, model.safetensors) with a tokenizer: a copy
 * of a given one, or a byte-level BPE with no merges. tiny and small take any family; the
 * published shapes (olmoe-1b-7b, deepseek-v2-lite) are 7-16 B parameters, so the weights are
 * streamed to disk (never held in memory) and drawn with the cheap generator. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune init --preset P [--family F] [--seed N] [--dtype f32|bf16]\n"
            "                    [--tokenizer PATH] [--threads N] OUT_DIR\n"
            "\n"
            "Writes a randomly initialised model (normal(0, initializer_range) weights, norms 1) that\n"
            "transformers loads with AutoModelForCausalLM: config.json, generation_config.json,\n"
            "model.safetensors, tokenizer.json and tokenizer_config.json.\n"
            "  --preset P      tiny (about 2 M active parameters) or small (about 10x tiny), of any\n"
            "                  family; or the published configuration of a real model, random weights:\n"
            "                  olmoe-1b-7b (allenai/OLMoE-1B-7B-0924: 6.92 B parameters, 1.28 B active)\n"
            "                  deepseek-v2-lite (deepseek-ai/DeepSeek-V2-Lite: 15.71 B, 2.66 B active)\n"
            "  --family F      deepseek_v3 (default), deepseek_v2, qwen3_moe, qwen2_moe, mixtral, olmoe;\n"
            "                  a published preset has its own (olmoe, deepseek_v2)\n"
            "  --seed N        weights are a function of the seed (default 0)\n"
            "  --dtype D       f32 or bf16 on disk (default: f32; bf16 for a published preset)\n"
            "  --tokenizer P   copy this tokenizer.json (or a folder with tokenizer.json and\n"
            "                  tokenizer_config.json); vocab_size, bos and eos come from it (a published\n"
            "                  preset keeps its vocab_size: a smaller tokenizer leaves padding rows).\n"
            "                  Without it, a byte-level BPE with the 256 byte tokens, no merges, <|bos|>\n"
            "                  and <|eos|>\n"
            "  --threads N     threads (the published presets' weights are drawn in parallel)\n");
}

static bool parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || errno || s[0] == '-') return false;
    *out = v;
    return true;
}

int mt_cmd_init(int argc, char **argv) {
    const char *preset = NULL, *family_name = NULL, *dtype_name = NULL, *tok_path = NULL, *out = NULL;
    uint64_t seed = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (mt_cli_is_flag(a, "--preset")) {
            if (!(preset = mt_cli_value("--preset", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--family")) {
            if (!(family_name = mt_cli_value("--family", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--dtype")) {
            if (!(dtype_name = mt_cli_value("--dtype", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--tokenizer")) {
            if (!(tok_path = mt_cli_value("--tokenizer", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--seed")) {
            if (!(v = mt_cli_value("--seed", argc, argv, &i)) || !parse_u64(v, &seed)) goto bad;
        } else if (mt_cli_is_flag(a, "--threads")) {
            if (!(v = mt_cli_value("--threads", argc, argv, &i)) || !parse_u64(v, &threads) || threads > 4096) goto bad;
        } else if (a[0] == '-') {
            fprintf(stderr, "moetune init: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!out) {
            out = a;
        } else {
            fprintf(stderr, "moetune init: more than one OUT_DIR ('%s', '%s')\n", out, a);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "moetune init: %s needs a valid value\n", a);
        usage(stderr);
        return 2;
    }
    if (!preset || !out) {
        fprintf(stderr, "moetune init: %s is required\n", !preset ? "--preset" : "OUT_DIR");
        usage(stderr);
        return 2;
    }
    mt_family own_family;
    bool published = mt_config_preset_family(preset, &own_family);
    if (!family_name) family_name = published ? mt_family_name(own_family) : "deepseek_v3";
    if (!dtype_name) dtype_name = published ? "bf16" : "f32";
    mt_dtype dtype;
    if (!strcmp(dtype_name, "f32"))
        dtype = MT_DTYPE_F32;
    else if (!strcmp(dtype_name, "bf16"))
        dtype = MT_DTYPE_BF16;
    else {
        fprintf(stderr, "moetune init: --dtype must be f32 or bf16, not '%s'\n", dtype_name);
        return 2;
    }
    mt_error err = {0};
    mt_family family;
    if (mt_family_from_name(family_name, &family, &err) != MT_OK) return mt_cli_fail("init", &err);
    char probe[4096];
    if (mt_path_join(probe, sizeof probe, out, "config.json") && mt_path_exists(probe)) {
        fprintf(stderr, "moetune init: %s already holds a model (config.json); choose another folder\n", out);
        return 2;
    }
    if (mt_mkdirs(out, &err) != MT_OK) return mt_cli_fail("init", &err);

    int vocab = 258, bos = 256, eos = 257;
    mt_status st;
    if (tok_path) {
        st = mt_tokenizer_copy_files(tok_path, out, &err);
        mt_tokenizer *tok = NULL;
        if (!st) st = mt_tokenizer_load(&tok, out, &err);
        if (st) return mt_cli_fail("init", &err);
        vocab = mt_tokenizer_vocab_size(tok);
        bos = mt_tokenizer_bos_id(tok);
        eos = mt_tokenizer_eos_id(tok);
        mt_tokenizer_free(tok);
    }
    mt_config cfg;
    st = mt_config_preset(&cfg, family, preset, vocab, &err);
    if (st) return mt_cli_fail("init", &err);
    cfg.bos_token_id = bos;
    cfg.n_eos = 0;
    if (eos >= 0) cfg.eos_token_ids[cfg.n_eos++] = eos;
    if (!tok_path) {
        st = mt_tokenizer_write_bytes(out, cfg.max_position_embeddings, &err);
        if (st) return mt_cli_fail("init", &err);
    }
    mt_backend *be = mt_cli_backend("init", NULL, (int)threads);
    if (!be) return 1;
    st = mt_model_write_random(&cfg, seed, dtype, published, mt_backend_threads(be), out, &err);
    if (st) {
        mt_backend_free(be);
        return mt_cli_fail("init", &err);
    }
    int64_t active = 0, total = mt_config_param_count(&cfg, &active);
    printf("wrote %s: %s %s, %.2f M parameters (%.2f M active), vocab %d (tokenizer %d), %s weights\n", out,
           family_name, preset, total / 1e6, active / 1e6, cfg.vocab_size, vocab, dtype_name);
    if (published) {
        /* hashing reads every weight back: 14-31 GB through the page cache, for a figure that
         * training computes anyway when it records its base */
        printf("content hash not computed for a published preset (train and export hash the base they load)\n");
        mt_backend_free(be);
        return 0;
    }
    /* the hash of what was written, as every later load will see it (bf16 rounds the values) */
    mt_model *m = NULL;
    if (mt_model_load(&m, out, be, &err) != MT_OK) {
        mt_backend_free(be);
        return mt_cli_fail("init", &err);
    }
    char hash[65];
    mt_model_content_hash(m, hash);
    printf("content hash %s\n", hash);
    mt_model_free(m);
    mt_backend_free(be);
    return 0;
}
