/* cmd_eval.c — `moetune eval --model DIR [--adapter DIR] --data FILE... [--quantize int8]`:
 * held-out loss and perplexity of the base and of the adapted model, side by side on the same
 * tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "finetune/finetune.h"
#include "model/model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune eval --model DIR [--adapter DIR] --data PATH [--data PATH]... [--max-seq-len N]\n"
            "                    [--batch B] [--threads N] [--tokenizer DIR] [--quantize int8]\n"
            "                    [--expert-threshold P [--min-k N] [--max-k N]]\n"
            "                    [--dap-threshold T|adapter [--dap-sink N] [--dap-local N] [--dap-mass-floor F]]\n"
            "\n"
            "Scores every token of the documents in PATH (JSONL text / prompt_completion / messages,\n"
            "or a folder of plain text) and prints the mean loss (nats per token) and perplexity of\n"
            "the base model and, with --adapter, of the base with that PEFT LoRA adapter.\n"
            "  --max-seq-len N   tokens per row; longer documents are cut into rows (default 256)\n"
            "  --batch B         rows per forward pass (default 4)\n"
            "  --threads N       CPU threads (default: all cores)\n"
            "  --quantize int8   INT8 weight-only base (per channel, groups of 64 inputs, fp32 scales)\n"
            "  --expert-threshold P  adaptive expert count: experts in router order until their\n"
            "                    probabilities sum to P (0 = off, 1 = top-k), within --min-k/--max-k;\n"
            "                    without it, the adapter's metadata \"experts\" (if any) on the adapted pass\n"
            "  --dap-threshold T|adapter  score every row through the paged decoder, prefilled as a\n"
            "                    prompt is, with dynamic attention pruning at T in [0, 1] (0: the paged\n"
            "                    path in full); 'adapter': the adapter pass takes the adapter's domain\n"
            "                    threshold (its metadata \"dap_threshold\"), the base pass none\n"
            "                    (docs/attention-pruning.md); --dap-sink N (1) and --dap-local N (1)\n"
            "                    blocks always kept, full attention below --dap-mass-floor F (0.9)\n");
}

int mt_cmd_eval(int argc, char **argv) {
    if (mt_cli_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    mt_eval_opts o = {.max_seq_len = 256, .batch = 4, .format = MT_RECIPE_FORMAT_AUTO};
    bool threshold_given = false;
    char **paths = mt_xcalloc((size_t)argc, sizeof *paths);
    mt_recipe_list data = {.n = 0, .items = paths};
    mt_dap_opts dap = {.n_sink_blocks = 1, .n_local_blocks = 1, .mass_floor = 0.9f};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        if (mt_cli_is_flag(a, "--model")) {
            if (!(o.model_dir = mt_cli_value("--model", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--adapter")) {
            if (!(o.adapter_dir = mt_cli_value("--adapter", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--tokenizer")) {
            if (!(o.tokenizer_dir = mt_cli_value("--tokenizer", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--data")) {
            if (!(v = mt_cli_value("--data", argc, argv, &i))) goto bad;
            paths[data.n++] = (char *)v;
        } else if (mt_cli_is_flag(a, "--max-seq-len")) {
            if (!(v = mt_cli_value("--max-seq-len", argc, argv, &i)) || !mt_cli_parse_long(v, 2, 1 << 20, &n)) goto bad;
            o.max_seq_len = (int)n;
        } else if (mt_cli_is_flag(a, "--batch")) {
            if (!(v = mt_cli_value("--batch", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 4096, &n)) goto bad;
            o.batch = (int)n;
        } else if (mt_cli_is_flag(a, "--threads")) {
            if (!(v = mt_cli_value("--threads", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 4096, &n)) goto bad;
            o.threads = (int)n;
        } else if (mt_cli_is_flag(a, "--quantize")) {
            mt_quant q;
            if (!(v = mt_cli_value("--quantize", argc, argv, &i)) || mt_quant_from_name(v, &q) != MT_OK) goto bad;
            o.quantize = (int)q;
        } else if (mt_cli_is_flag(a, "--expert-threshold")) {
            char *end;
            if (!(v = mt_cli_value("--expert-threshold", argc, argv, &i))) goto bad;
            double t = strtod(v, &end);
            if (*end || !(t >= 0 && t <= 1)) {
                fprintf(stderr, "eval: --expert-threshold %s: must be a number in [0, 1]\n", v);
                goto bad;
            }
            o.expert_threshold = (float)t;
            threshold_given = true;
        } else if (mt_cli_is_flag(a, "--min-k")) {
            if (!(v = mt_cli_value("--min-k", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 4096, &n)) goto bad;
            o.min_k = (int)n;
        } else if (mt_cli_is_flag(a, "--max-k")) {
            if (!(v = mt_cli_value("--max-k", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 4096, &n)) goto bad;
            o.max_k = (int)n;
        } else if (mt_cli_is_flag(a, "--dap-threshold")) {
            double t;
            if (!(v = mt_cli_value("--dap-threshold", argc, argv, &i))) goto bad;
            if (!strcmp(v, "adapter")) {
                o.dap_adapter = true;
            } else if (!mt_cli_parse_double(v, 0, 1, &t)) {
                fprintf(stderr, "eval: --dap-threshold %s: must be a number in [0, 1] or 'adapter'\n", v);
                goto bad;
            } else {
                dap.threshold = (float)t;
            }
            o.dap = &dap;
        } else if (mt_cli_is_flag(a, "--dap-mass-floor")) {
            double t;
            if (!(v = mt_cli_value("--dap-mass-floor", argc, argv, &i)) || !mt_cli_parse_double(v, 0, 1, &t)) goto bad;
            dap.mass_floor = (float)t;
        } else if (mt_cli_is_flag(a, "--dap-sink")) {
            if (!(v = mt_cli_value("--dap-sink", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 1 << 20, &n)) goto bad;
            dap.n_sink_blocks = (int)n;
        } else if (mt_cli_is_flag(a, "--dap-local")) {
            if (!(v = mt_cli_value("--dap-local", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 1 << 20, &n)) goto bad;
            dap.n_local_blocks = (int)n;
        } else {
            goto bad;
        }
    }
    if (!o.model_dir || data.n == 0) goto bad;
    if (o.dap_adapter && !o.adapter_dir) {
        fprintf(stderr, "eval: --dap-threshold adapter needs --adapter\n");
        goto bad;
    }
    o.data = &data;
    o.experts_from_adapter = o.adapter_dir && !threshold_given;
    mt_eval_result res;
    mt_error err = {0};
    mt_status st = mt_evaluate(&o, &res, &err);
    free(paths);
    if (st != MT_OK) return mt_cli_fail("eval", &err);
    printf("documents: %lld, tokens scored: %lld\n", (long long)res.n_docs, (long long)res.n_tokens);
    printf("%-10s %10s %12s\n", "model", "loss", "perplexity");
    printf("%-10s %10.4f %12.2f\n", "base", res.base_loss, res.base_ppl);
    if (o.adapter_dir) {
        printf("%-10s %10.4f %12.2f\n", "adapted", res.adapter_loss, res.adapter_ppl);
        printf("perplexity change: %+.1f%%\n", 100.0 * (res.adapter_ppl / res.base_ppl - 1.0));
    }
    if (o.dap) {
        for (int k = 0; k < (o.adapter_dir ? 2 : 1); k++) {
            const struct mt_eval_dap *c = k ? &res.adapter_dap : &res.base_dap;
            printf("DAP (%s): threshold %g, %llu of %llu key blocks skipped (%.2f%%), %llu of %llu queries fell "
                   "back to full attention\n",
                   k ? "adapted" : "base", (double)(k ? res.adapter_tau : res.base_tau), (unsigned long long)c->skipped,
                   (unsigned long long)c->blocks, c->blocks ? 100.0 * (double)c->skipped / (double)c->blocks : 0.0,
                   (unsigned long long)c->fallbacks, (unsigned long long)c->queries);
        }
    }
    if (o.expert_threshold > 0)
        printf("adaptive experts: threshold %g, mean experts per token and MoE layer %.3f\n",
               (double)o.expert_threshold, res.mean_experts);
    else if (res.adapter_experts > 0)
        printf("adaptive experts: threshold %g from the adapter's metadata (adapted pass only; --expert-threshold "
               "overrides), mean experts per token and MoE layer %.3f\n",
               (double)res.adapter_experts, res.mean_experts);
    return 0;
bad:
    free(paths);
    usage(stderr);
    return 2;
}
