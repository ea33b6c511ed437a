/* cmd_generate.c — `moetune generate --model DIR --prompt TEXT`: streams the continuation to
 * stdout as it is sampled and prints prompt and decode speed to stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T]\n"
            "                        [--top-k K] [--top-p P] [--seed S] [--stop STR]... [--no-eos]\n"
            "                        [--threads N]\n"
            "\n"
            "Streams the generated text to stdout; prompt and decode tokens/s go to stderr.\n"
            "  --model DIR       a Hugging Face model folder with tokenizer.json\n"
            "  --prompt TEXT     the prompt (BOS added as the tokenizer's post-processor says)\n"
            "  --max-tokens N    new tokens at most (default 128)\n"
            "  --temperature T   0 = greedy (default 0.8)\n"
            "  --top-k K         keep the K most likely tokens, 0 = off (default 40)\n"
            "  --top-p P         keep the smallest set with probability >= P, 1 = off (default 0.95)\n"
            "  --seed S          sampling seed (default 0)\n"
            "  --stop STR        stop when the text contains STR (repeatable; STR is not printed)\n"
            "  --no-eos          do not stop at the end-of-sequence token\n"
            "  --threads N       CPU threads (default: all cores)\n");
}

static const char *value_of(const char *name, int argc, char **argv, int *i) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n)) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] || *i + 1 >= argc) return NULL;
    return argv[++*i];
}

static bool is_flag(const char *a, const char *name) {
    size_t n = strlen(name);
    return !strncmp(a, name, n) && (a[n] == '\0' || a[n] == '=');
}

static bool parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

static bool print_text(void *user, const char *text, size_t len) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

int mt_cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *prompt = NULL;
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
        } else if (is_flag(a, "--model")) {
            if (!(model_dir = value_of("--model", argc, argv, &i))) goto bad;
        } else if (is_flag(a, "--prompt")) {
            if (!(prompt = value_of("--prompt", argc, argv, &i))) goto bad;
        } else if (is_flag(a, "--max-tokens")) {
            if (!(v = value_of("--max-tokens", argc, argv, &i)) || !parse_long(v, 0, 1 << 24, &max_tokens)) goto bad;
        } else if (is_flag(a, "--temperature")) {
            if (!(v = value_of("--temperature", argc, argv, &i)) || !parse_double(v, 0, 100, &temperature)) goto bad;
        } else if (is_flag(a, "--top-k")) {
            if (!(v = value_of("--top-k", argc, argv, &i)) || !parse_long(v, 0, 1 << 30, &top_k)) goto bad;
        } else if (is_flag(a, "--top-p")) {
            if (!(v = value_of("--top-p", argc, argv, &i)) || !parse_double(v, 0, 1, &top_p)) goto bad;
        } else if (is_flag(a, "--seed")) {
            if (!(v = value_of("--seed", argc, argv, &i)) || !parse_long(v, 0, 0x7fffffffL, &seed)) goto bad;
        } else if (is_flag(a, "--stop")) {
            if (!(v = value_of("--stop", argc, argv, &i)) || !*v) goto bad;
            stops[n_stop++] = v;
        } else if (!strcmp(a, "--no-eos")) {
            stop_at_eos = false;
        } else if (is_flag(a, "--threads")) {
            if (!(v = value_of("--threads", argc, argv, &i)) || !parse_long(v, 0, 4096, &threads)) goto bad;
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
    mt_status st = mt_model_load(&m, model_dir, be, &err);
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
    mt_model_free(m);
    mt_backend_free(be);
    free(stops);
    return rc;
}
