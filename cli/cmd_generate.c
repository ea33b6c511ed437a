/* cmd_generate.c — `moetune generate --model DIR --prompt TEXT | --prompts FILE`: one batch for
 * every prompt and sample (optionally on an INT8-quantised base), streamed to stdout for a
 * single output; speeds to stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/model.h"
#include "finetune/finetune.h"
#include "peft/lora.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune generate --model DIR (--prompt TEXT... | --prompts FILE) [--n N]\n"
            "                        [--adapter DIR | --adapter NAME=DIR...] [--max-tokens N] [--temperature T]\n"
            "                        [--top-k K] [--top-p P] [--seed S] [--stop STR]... [--no-eos] [--threads N]\n"
            "                        [--quantize int8] [--dap-threshold T|adapter [--dap-sink N] [--dap-local N]]\n"
            "\n"
            "Generates for every prompt in one batch (each prompt prefilled once, its samples sharing\n"
            "its KV blocks, one decode step for all outputs). One output streams to stdout; several\n"
            "are printed in order, each under a header line. Speeds go to stderr.\n"
            "  --model DIR       a Hugging Face model folder with tokenizer.json\n"
            "  --prompt TEXT     a prompt (repeatable; BOS added as the tokenizer's post-processor says)\n"
            "  --prompts FILE    prompts, one per line: plain text, or JSONL {\"prompt\", \"adapter\", \"n\"}\n"
            "  --n N             samples per prompt (default 1); sample j uses seed S + j\n"
            "  --adapter DIR     a PEFT LoRA adapter for this base, applied to every prompt\n"
            "  --adapter NAME=DIR  a named adapter; prompts pick it with \"adapter\": \"NAME\" (repeatable)\n"
            "  --max-tokens N    new tokens at most (default 128)\n"
            "  --temperature T   0 = greedy (default 0.8)\n"
            "  --top-k K         keep the K most likely tokens, 0 = off (default 40)\n"
            "  --top-p P         keep the smallest set with probability >= P, 1 = off (default 0.95)\n"
            "  --seed S          sampling seed (default 0)\n"
            "  --stop STR        stop when the text contains STR (repeatable; STR is not printed)\n"
            "  --no-eos          do not stop at the end-of-sequence token\n"
            "  --threads N       CPU threads (default: all cores)\n"
            "  --quantize int8   INT8 weight-only base (per channel, groups of 64 inputs, fp32 scales)\n"
            "  --expert-threshold P  adaptive expert count: experts in router order until their\n"
            "                    score share reaches P (0 = off, 1 = top-k), within --min-k/--max-k\n"
            "  --dap-threshold T|adapter  dynamic attention pruning of the prompt and decode steps\n"
            "                    (docs/attention-pruning.md; 'adapter': each adapter's domain threshold\n"
            "                    from its metadata, T = 0 for the base):\n"
            "                    skip a KV block whose key bound gives it at most T x the best block's\n"
            "                    weight, T in [0, 1] (0 = off: full attention); first --dap-sink (1) and\n"
            "                    last --dap-local (1) blocks always kept, full attention when the kept\n"
            "                    blocks' estimated mass is below --dap-mass-floor (0.9)\n");
}

static bool print_text(void *user, int index, const char *text, size_t len) {
    (void)user;
    (void)index;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

typedef struct named_adapter {
    const char *name; /* NULL: the one unnamed --adapter */
    const char *dir;
    mt_lora *lora;
    bool has_tau;  /* its metadata holds the trainer's domain threshold */
    float tau;
} named_adapter;

int mt_cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *prompts_file = NULL;
    long max_tokens = 128, top_k = 40, threads = 0, seed = 0, n_samples = 1;
    double temperature = 0.8, top_p = 0.95;
    bool stop_at_eos = true;
    mt_quant quant = MT_QUANT_NONE;
    mt_adaptive_k akt = {0};
    bool threshold_given = false;
    long akn;
    mt_dap_opts dap = {.n_sink_blocks = 1, .n_local_blocks = 1, .mass_floor = 0.9f};
    mt_dap_counts dapc = {0};
    bool dap_adapter = false; /* --dap-threshold adapter: each adapter's own domain threshold */
    const char **stops = mt_xcalloc((size_t)argc, sizeof(char *));
    const char **texts = mt_xcalloc((size_t)argc, sizeof(char *));
    named_adapter *ads = mt_xcalloc((size_t)argc, sizeof *ads);
    int n_stop = 0, n_texts = 0, n_ads = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            goto out;
        } else if (mt_cli_is_flag(a, "--model")) {
            if (!(model_dir = mt_cli_value("--model", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--adapter")) {
            if (!(v = mt_cli_value("--adapter", argc, argv, &i)) || !*v) goto bad;
            const char *eq = strchr(v, '=');
            if (eq && eq > v && !mt_is_dir(v)) {
                char *name = mt_xstrdup(v);
                name[eq - v] = '\0';
                ads[n_ads++] = (named_adapter){.name = name, .dir = eq + 1};
            } else {
                ads[n_ads++] = (named_adapter){.dir = v};
            }
        } else if (mt_cli_is_flag(a, "--prompt")) {
            if (!(texts[n_texts] = mt_cli_value("--prompt", argc, argv, &i))) goto bad;
            n_texts++;
        } else if (mt_cli_is_flag(a, "--prompts")) {
            if (!(prompts_file = mt_cli_value("--prompts", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--n")) {
            if (!(v = mt_cli_value("--n", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 4096, &n_samples)) goto bad;
        } else if (mt_cli_is_flag(a, "--max-tokens")) {
            if (!(v = mt_cli_value("--max-tokens", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 1 << 24, &max_tokens)) goto bad;
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
        } else if (mt_cli_is_flag(a, "--quantize")) {
            if (!(v = mt_cli_value("--quantize", argc, argv, &i)) || mt_quant_from_name(v, &quant) != MT_OK) goto bad;
        } else if (mt_cli_is_flag(a, "--expert-threshold")) {
            double t;
            if (!(v = mt_cli_value("--expert-threshold", argc, argv, &i)) || !mt_cli_parse_double(v, 0, 1, &t)) goto bad;
            akt.threshold = (float)t;
            threshold_given = true;
        } else if (mt_cli_is_flag(a, "--min-k")) {
            if (!(v = mt_cli_value("--min-k", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 4096, &akn)) goto bad;
            akt.min_k = (int)akn;
        } else if (mt_cli_is_flag(a, "--max-k")) {
            if (!(v = mt_cli_value("--max-k", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 4096, &akn)) goto bad;
            akt.max_k = (int)akn;
        } else if (mt_cli_is_flag(a, "--dap-threshold")) {
            double t;
            if (!(v = mt_cli_value("--dap-threshold", argc, argv, &i))) goto bad;
            if (!strcmp(v, "adapter"))
                dap_adapter = true;
            else if (!mt_cli_parse_double(v, 0, 1, &t))
                goto bad;
            else
                dap.threshold = (float)t;
        } else if (mt_cli_is_flag(a, "--dap-mass-floor")) {
            double t;
            if (!(v = mt_cli_value("--dap-mass-floor", argc, argv, &i)) || !mt_cli_parse_double(v, 0, 1, &t)) goto bad;
            dap.mass_floor = (float)t;
        } else if (mt_cli_is_flag(a, "--dap-sink")) {
            if (!(v = mt_cli_value("--dap-sink", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 1 << 20, &akn)) goto bad;
            dap.n_sink_blocks = (int)akn;
        } else if (mt_cli_is_flag(a, "--dap-local")) {
            if (!(v = mt_cli_value("--dap-local", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 1 << 20, &akn)) goto bad;
            dap.n_local_blocks = (int)akn;
        } else if (!strcmp(a, "--no-eos")) {
            stop_at_eos = false;
        } else if (mt_cli_is_flag(a, "--threads")) {
            if (!(v = mt_cli_value("--threads", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 4096, &threads)) goto bad;
        } else {
            fprintf(stderr, "moetune generate: unknown argument '%s'\n", a);
            usage(stderr);
            rc = 2;
            goto out;
        }
        continue;
    bad:
        fprintf(stderr, "moetune generate: %s needs a valid value\n", a);
        usage(stderr);
        rc = 2;
        goto out;
    }
    int unnamed = 0;
    for (int i = 0; i < n_ads; i++) unnamed += ads[i].name == NULL;
    if (!model_dir || (!n_texts && !prompts_file) || (n_texts && prompts_file) || unnamed > 1 ||
        (unnamed && n_ads > 1)) {
        fprintf(stderr, "moetune generate: %s\n",
                !model_dir                      ? "--model is required"
                : !n_texts && !prompts_file     ? "--prompt or --prompts is required"
                : n_texts && prompts_file       ? "give --prompt or --prompts, not both"
                                                : "one unnamed --adapter DIR, or only named ones (NAME=DIR)");
        usage(stderr);
        rc = 2;
        goto out;
    }
    mt_error err = {0};
    mt_backend *be = mt_cli_backend("generate", NULL, (int)threads);
    if (!be) {
        rc = 1;
        goto out;
    }
    mt_model *m = NULL;
    mt_tokenizer *tok = NULL;
    mt_prompt_item *items = NULL;
    int n_items = 0;
    mt_gen_prompt *gp = NULL;
    mt_generate_result *res = NULL;
    int n_out = 0;
    mt_status st = mt_model_load(&m, model_dir, be, &err);
    /* one unnamed adapter and no --expert-threshold: the adapter's own threshold, as the
     * server applies it (named adapters share one model-wide setting: none is picked) */
    bool from_adapter = false;
    for (int i = 0; !st && i < n_ads; i++) {
        mt_lora_meta meta = {0};
        st = mt_lora_load_peft(&ads[i].lora, m, ads[i].dir, &meta, &err);
        if (!st && !threshold_given && n_ads == 1 && !ads[i].name &&
            mt_lora_meta_threshold(meta.thresholds_json, "experts", &akt.threshold) && akt.threshold > 0) {
            from_adapter = true;
            fprintf(stderr, "adaptive experts: threshold %g from the adapter's metadata (--expert-threshold "
                            "overrides)\n",
                    (double)akt.threshold);
        }
        /* the trainer's domain threshold, for --dap-threshold adapter */
        if (!st && mt_lora_meta_threshold(meta.thresholds_json, "dap_threshold", &ads[i].tau)) {
            ads[i].has_tau = true;
            if (dap_adapter)
                fprintf(stderr, "dap: adapter %s: its domain threshold %g\n", ads[i].name ? ads[i].name : ads[i].dir,
                        (double)ads[i].tau);
        }
        free(meta.thresholds_json);
        free(meta.score);
    }
    /* after the adapters: their base check hashes the weights as stored, not as quantised */
    if (!st) st = mt_model_quantize(m, quant, 0, &err);
    if (!st) mt_model_set_adaptive_k(m, &akt);
    if (!st) st = mt_tokenizer_load(&tok, model_dir, &err);
    if (!st && prompts_file) st = mt_prompts_load(prompts_file, &items, &n_items, &err);
    int n_prompts = prompts_file ? n_items : n_texts;
    if (!st) {
        gp = mt_xcalloc((size_t)n_prompts, sizeof *gp);
        for (int i = 0; i < n_prompts && !st; i++) {
            const char *want = items ? items[i].adapter : NULL;
            gp[i].text = items ? items[i].text : texts[i];
            gp[i].n = items && items[i].n > 0 ? items[i].n : (int)n_samples;
            n_out += gp[i].n;
            if (unnamed) {
                gp[i].adapter = mt_lora_adapter(ads[0].lora);
                gp[i].dap_own = dap_adapter && ads[0].has_tau;
                gp[i].dap_threshold = ads[0].tau;
            }
            if (want) {
                int k = 0;
                while (k < n_ads && !(ads[k].name && !strcmp(ads[k].name, want))) k++;
                if (k == n_ads)
                    st = mt_error_set(&err, MT_ERR_NOT_FOUND, "%s: prompt %d asks for adapter \"%s\", not given as "
                                      "--adapter %s=DIR", prompts_file, i + 1, want, want);
                else {
                    gp[i].adapter = mt_lora_adapter(ads[k].lora);
                    gp[i].dap_own = dap_adapter && ads[k].has_tau;
                    gp[i].dap_threshold = ads[k].tau;
                }
            }
        }
    }
    if (!st) {
        res = mt_xcalloc((size_t)n_out, sizeof *res);
        mt_generate_opts o = {.sample = {.temperature = (float)temperature,
                                         .top_k = (int)top_k,
                                         .top_p = (float)top_p,
                                         .seed = (uint64_t)seed},
                              .max_new_tokens = (int)max_tokens,
                              .stop = stops,
                              .n_stop = n_stop,
                              .stop_at_eos = stop_at_eos,
                              .on_text = n_out == 1 ? print_text : NULL,
                              .dap = &dap,
                              .dap_counts = &dapc};
        st = mt_generate(m, tok, gp, n_prompts, &o, res, &err);
    }
    if (st) {
        rc = mt_cli_fail("generate", &err);
    } else {
        long prompt_tok = 0, new_tok = 0;
        for (int j = 0, p = 0, k = 0; j < n_out; j++) {
            if (n_out > 1) {
                printf("=== output %d: prompt %d, sample %d, %s, %d tokens, finish %s ===\n", j + 1, p + 1, k + 1,
                       items && items[p].adapter ? items[p].adapter : unnamed ? "adapter" : "base",
                       res[j].n_new_tokens, res[j].finish);
                fwrite(res[j].text, 1, res[j].len, stdout);
                printf("\n");
            } else {
                printf("\n");
            }
            if (k == 0) prompt_tok += res[j].n_prompt_tokens;
            new_tok += res[j].n_new_tokens;
            if (++k == gp[p].n) {
                k = 0;
                p++;
            }
        }
        fflush(stdout);
        double pf = res[0].prefill_seconds > 0 ? prompt_tok / res[0].prefill_seconds : 0;
        double dc = res[0].decode_seconds > 0 ? new_tok / res[0].decode_seconds : 0;
        fprintf(stderr, "prompt: %ld tokens, %.1f tokens/s; decode: %ld tokens in %d outputs, %.1f tokens/s%s%s\n",
                prompt_tok, pf, new_tok, n_out, dc, n_out == 1 ? "; finish: " : "", n_out == 1 ? res[0].finish : "");
        uint64_t akt_tok, akt_exp;
        mt_model_adaptive_k_stats(m, &akt_tok, &akt_exp);
        if (akt.threshold > 0 && akt_tok > 0)
            fprintf(stderr, "adaptive experts: threshold %g%s, mean experts per token and MoE layer %.3f\n",
                    (double)akt.threshold, from_adapter ? " (the adapter's)" : "", (double)akt_exp / (double)akt_tok);
        if (dap.threshold > 0 || dapc.queries > 0)
            fprintf(stderr, "dap: threshold %g, %llu of %llu KV blocks skipped (%.1f%%) over %llu head-layer queries, "
                    "%llu fallbacks\n", (double)dap.threshold, (unsigned long long)dapc.skipped,
                    (unsigned long long)dapc.blocks, dapc.blocks ? 100.0 * (double)dapc.skipped / (double)dapc.blocks : 0.0,
                    (unsigned long long)dapc.queries, (unsigned long long)dapc.fallbacks);
    }
    for (int j = 0; res && j < n_out; j++) mt_generate_result_free(&res[j]);
    free(res);
    free(gp);
    mt_prompts_free(items, n_items);
    mt_tokenizer_free(tok);
    for (int i = 0; i < n_ads; i++) mt_lora_free(ads[i].lora);
    mt_model_free(m);
    mt_backend_free(be);
out:
    for (int i = 0; i < n_ads; i++) free((char *)ads[i].name);
    free(ads);
    free(texts);
    free(stops);
    return rc;
}
