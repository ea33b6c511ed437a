/* cmd_generate.c — `moetune generate --model DIR --prompt TEXT`: streams the continuation to
 * stdout as it is sampled and prints prompt and decode speed to stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/model.h"
#include "peft/lora.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune generate --model DIR --prompt TEXT [--adapter DIR] [--max-tokens N] [--temperature T]\n"
            "                        [--top-k K] [--top-p P] [--seed S] [--stop STR]... [--no-eos]\n"
            "                        [--threads N]\n"
            "\n"
            "Streams the generated text to stdout; prompt and decode tokens/s go to stderr.\n"
            "  --model DIR       a Hugging Face model folder with tokenizer.json\n"
            "  --prompt TEXT     the prompt (BOS added as the tokenizer's post-processor says)\n"
            "  --adapter DIR     a PEFT LoRA adapter for this base, merged before generating\n"
            "  --max-tokens N    new tokens at most (default 128)\n"
            "  --temperature T   0 = greedy (default 0.8)\n"
            "  --top-k K         keep the K most likely tokens, 0 = off (default 40)\n"
            "  --top-p P         keep the smallest set with probability >= P, 1 = off (default 0.95)\n"
            "  --seed S          sampling seed (default 0)\n"
            "  --stop STR        stop when the text contains STR (repeatable; STR is not printed)\n"
            "  --no-eos          do not stop at the end-of-sequence token\n"
            "  --threads N       CPU threads (default: all cores)\n");
}

static bool print_text(void *user, const char *text, size_t len) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

int mt_cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *prompt = NULL, *adapter_dir = NULL;
    long max_tokens = 128, top_k = 40, threads = 0, seed = 0;
    double temperature = 0.8, top_p = 0.95;
    bool stop_at_eos = true;
    const char **stops = mt_xcalloc((size_t)argc, sizeof(char *));
    int n_stop = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(stops);
            return 0;
        } else if (mt_cli_is_flag(a, "--model")) {
            if (!(model_dir = mt_cli_value("--model", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--adapter")) {
            if (!(adapter_dir = mt_cli_value("--adapter", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--prompt")) {
            if (!(prompt = mt_cli_value("--prompt", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--max-tokens")) {
            if (!(v = mt_cli_value("--max-tokens", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 1 << 24, &max_tokens)) goto bad;
        } else if (mt_cli_is_flag(a, "--temperature")) {
            if (!(v = mt_cli_value("--temperature", argc, argv, &i)) || !mt_cli_parse_double(v, 0, 100, &temperature)) goto bad;
        } else if (mt_cli_is_flag(a, "--top-k")) {
            if (!(v = mt_cli_value("--top-k", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 1 << 30, &top_k)) goto bad;
        } else if (mt_cli_is_flag(a, "--top-p")) {
            if (!(v = mt_cli_value("--top-p", argc, argv, &i)) || !mt_cli_parse_double(v, 0, 1, &top_p)) goto bad;
        } else if (mt_cli_is_flag(a, "--seed")) {
            if (!(v = mt_cli_value("--seed", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 0x7fffffffL, &seed)) goto bad;
        } else if (mt_cli_is_flag(a, "--stop")) {
            if (!(v = mt_cli_value("--stop", argc, argv, &i)) || !*v) goto bad;
            stops[n_stop++] = v;
        } else if (!strcmp(a, "--no-eos")) {
            stop_at_eos = false;
        } else if (mt_cli_is_flag(a, "--threads")) {
            if (!(v = mt_cli_value("--threads", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 4096, &threads)) goto bad;
        } else {
            fprintf(stderr, "moetune generate: unknown argument '%s'\n", a);
            usage(stderr);
            free(stops);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "moetune generate: %s needs a valid value\n", a);
        usage(stderr);
        free(stops);
        return 2;
    }
    if (!model_dir || !prompt) {
        fprintf(stderr, "moetune generate: %s is required\n", !model_dir ? "--model" : "--prompt");
        usage(stderr);
        free(stops);
        return 2;
    }
    mt_error err = {0};
    mt_backend *be = mt_cli_backend("generate", NULL, (int)threads);
    if (!be) {
        free(stops);
        return 1;
    }
    mt_model *m = NULL;
    mt_tokenizer *tok = NULL;
    mt_kv_cache *cache = NULL;
    mt_generate_result res = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    mt_lora *lora = NULL;
    mt_status st = mt_model_load(&m, model_dir, be, &err);
    /* merged into the weights: every decode path (MLA's absorbed one included) then sees it */
    if (!st && adapter_dir) st = mt_lora_load_peft(&lora, m, adapter_dir, NULL, &err);
    if (!st && lora) st = mt_lora_merge(lora, &err);
    if (!st) st = mt_tokenizer_load(&tok, model_dir, &err);
    if (!st) st = mt_tokenizer_encode(tok, prompt, strlen(prompt), true, &ids, &n_ids, &err);
    if (!st) {
        /* room for the prompt and every new token, within the model's positions */
        long need = (long)n_ids + max_tokens + 1, cap = mt_model_config(m)->max_position_embeddings;
        st = mt_kv_cache_init(&cache, m, (int)(need < cap ? need : cap), &err);
    }
    if (!st) {
        mt_generate_opts o = {.sample = {.temperature = (float)temperature,
                                         .top_k = (int)top_k,
                                         .top_p = (float)top_p,
                                         .seed = (uint64_t)seed},
                              .max_new_tokens = (int)max_tokens,
                              .stop = stops,
                              .n_stop = n_stop,
                              .stop_at_eos = stop_at_eos,
                              .on_text = print_text};
        st = mt_generate(m, tok, cache, prompt, &o, &res, &err);
    }
    if (st) {
        rc = mt_cli_fail("generate", &err);
    } else {
        printf("\n");
        fflush(stdout);
        double pf = res.prefill_seconds > 0 ? res.n_prompt_tokens / res.prefill_seconds : 0;
        double dc = res.decode_seconds > 0 ? res.n_new_tokens / res.decode_seconds : 0;
        fprintf(stderr, "prompt: %d tokens, %.1f tokens/s; decode: %d tokens, %.1f tokens/s; finish: %s\n",
                res.n_prompt_tokens, pf, res.n_new_tokens, dc, res.finish);
    }
    mt_generate_result_free(&res);
    free(ids);
    mt_kv_cache_free(cache);
    mt_tokenizer_free(tok);
    mt_lora_free(lora);
    mt_model_free(m);
    mt_backend_free(be);
    free(stops);
    return rc;
}
