/* cmd_profile.c — `moetune profile --model DIR [--adapter A] --input FILE --metrics LIST
 * --breakdown layer_type|layer|op [--json OUT]`: forward passes (and optionally decode steps)
 * over the input with the model's profiler on; prints the table, writes the JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/model.h"
#include "peft/lora.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune profile --model DIR --input FILE [--adapter DIR] [--metrics latency,flops,memory]\n"
            "                       [--breakdown layer_type|layer|op] [--json OUT] [--max-len N] [--batch B]\n"
            "                       [--max-rows N] [--decode N] [--threads N] [--quantize int8]\n"
            "                       [--expert-threshold P [--min-k N] [--max-k N]]\n"
            "                       [--dap-threshold T [--dap-block N] [--dap-sink N] [--dap-local N] [--dap-mass-floor F]]\n"
            "\n"
            "Runs forward passes over FILE (JSONL {\"text\"} or plain text lines, tokenized with the\n"
            "model's tokenizer and packed into rows of --max-len tokens) and reports, per part of\n"
            "every layer, wall time, FLOPs (counted from the shapes) and bytes moved (a model: weights\n"
            "as stored, activations in and out in fp32), tokens per expert, experts per token, and\n"
            "with --dap-threshold the fraction of KV blocks the DAP rule would skip (the rule's\n"
            "fraction: the profiled whole-sequence forward does not prune; generate, eval and serve\n"
            "prune in the paged kernels, docs/attention-pruning.md). docs/profile.md.\n"
            "  --metrics LIST    any of latency, flops, memory (default: all three)\n"
            "  --breakdown B     layer_type (summed over layers, default), layer, or op (part x layer)\n"
            "  --json OUT        write every figure as JSON to OUT\n"
            "  --max-len N       tokens per row (default 256); --batch B rows per pass (default 4)\n"
            "  --max-rows N      profile at most N rows (default: all)\n"
            "  --decode N        also profile N greedy decode steps after the first row's prompt\n"
            "  --threads N       CPU threads (default: all cores)\n"
            "  --dap-threshold T evaluate the DAP skip rule at threshold T in (0, 1] (default 0: off);\n"
            "                    blocks of --dap-block keys (16), first --dap-sink (1) and last --dap-local\n"
            "                    (1) blocks always kept, full attention below --dap-mass-floor (0.9)\n");
}

static int fail_usage(const char *msg, const char *arg) {
    fprintf(stderr, "moetune profile: %s%s%s\n", msg, arg ? " " : "", arg ? arg : "");
    usage(stderr);
    return 2;
}

int mt_cmd_profile(int argc, char **argv) {
    if (mt_cli_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    const char *model_dir = NULL, *adapter_dir = NULL, *input = NULL, *json_out = NULL, *metrics_s = NULL;
    mt_prof_breakdown bd = MT_PROF_BY_LAYER_TYPE;
    long max_len = 256, batch = 4, threads = 0, decode = 0, max_rows = 0, dap_block = 16, dap_sink = 1, dap_local = 1;
    double dap_thr = 0, dap_floor = 0.9, akt_thr = 0;
    long min_k = 0, max_k = 0;
    mt_quant quant = MT_QUANT_NONE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        bool ok = true;
        if (mt_cli_is_flag(a, "--model"))
            ok = (model_dir = mt_cli_value("--model", argc, argv, &i)) != NULL;
        else if (mt_cli_is_flag(a, "--adapter"))
            ok = (adapter_dir = mt_cli_value("--adapter", argc, argv, &i)) != NULL;
        else if (mt_cli_is_flag(a, "--input"))
            ok = (input = mt_cli_value("--input", argc, argv, &i)) != NULL;
        else if (mt_cli_is_flag(a, "--json"))
            ok = (json_out = mt_cli_value("--json", argc, argv, &i)) != NULL;
        else if (mt_cli_is_flag(a, "--metrics"))
            ok = (metrics_s = mt_cli_value("--metrics", argc, argv, &i)) != NULL;
        else if (mt_cli_is_flag(a, "--breakdown")) {
            ok = (v = mt_cli_value("--breakdown", argc, argv, &i)) != NULL;
            if (ok && mt_prof_breakdown_from_name(v, &bd) != MT_OK)
                return fail_usage("--breakdown must be layer_type, layer or op, not", v);
        } else if (mt_cli_is_flag(a, "--max-len"))
            ok = (v = mt_cli_value("--max-len", argc, argv, &i)) && mt_cli_parse_long(v, 2, 1 << 20, &max_len);
        else if (mt_cli_is_flag(a, "--batch"))
            ok = (v = mt_cli_value("--batch", argc, argv, &i)) && mt_cli_parse_long(v, 1, 4096, &batch);
        else if (mt_cli_is_flag(a, "--max-rows"))
            ok = (v = mt_cli_value("--max-rows", argc, argv, &i)) && mt_cli_parse_long(v, 0, 1L << 30, &max_rows);
        else if (mt_cli_is_flag(a, "--decode"))
            ok = (v = mt_cli_value("--decode", argc, argv, &i)) && mt_cli_parse_long(v, 0, 1 << 20, &decode);
        else if (mt_cli_is_flag(a, "--threads"))
            ok = (v = mt_cli_value("--threads", argc, argv, &i)) && mt_cli_parse_long(v, 0, 4096, &threads);
        else if (mt_cli_is_flag(a, "--quantize"))
            ok = (v = mt_cli_value("--quantize", argc, argv, &i)) && mt_quant_from_name(v, &quant) == MT_OK;
        else if (mt_cli_is_flag(a, "--expert-threshold"))
            ok = (v = mt_cli_value("--expert-threshold", argc, argv, &i)) && mt_cli_parse_double(v, 0, 1, &akt_thr);
        else if (mt_cli_is_flag(a, "--min-k"))
            ok = (v = mt_cli_value("--min-k", argc, argv, &i)) && mt_cli_parse_long(v, 1, 4096, &min_k);
        else if (mt_cli_is_flag(a, "--max-k"))
            ok = (v = mt_cli_value("--max-k", argc, argv, &i)) && mt_cli_parse_long(v, 1, 4096, &max_k);
        else if (mt_cli_is_flag(a, "--dap-threshold"))
            ok = (v = mt_cli_value("--dap-threshold", argc, argv, &i)) && mt_cli_parse_double(v, 0, 1, &dap_thr);
        else if (mt_cli_is_flag(a, "--dap-block"))
            ok = (v = mt_cli_value("--dap-block", argc, argv, &i)) && mt_cli_parse_long(v, 1, 1 << 16, &dap_block);
        else if (mt_cli_is_flag(a, "--dap-sink"))
            ok = (v = mt_cli_value("--dap-sink", argc, argv, &i)) && mt_cli_parse_long(v, 0, 1 << 20, &dap_sink);
        else if (mt_cli_is_flag(a, "--dap-local"))
            ok = (v = mt_cli_value("--dap-local", argc, argv, &i)) && mt_cli_parse_long(v, 0, 1 << 20, &dap_local);
        else if (mt_cli_is_flag(a, "--dap-mass-floor"))
            ok = (v = mt_cli_value("--dap-mass-floor", argc, argv, &i)) && mt_cli_parse_double(v, 0, 1, &dap_floor);
        else
            return fail_usage("unknown argument", a);
        if (!ok) {
            fprintf(stderr, "moetune profile: %s needs a valid value%s%s\n", a, v ? ", not " : "", v ? v : "");
            usage(stderr);
            return 2;
        }
    }
    if (!model_dir) return fail_usage("--model DIR is required", NULL);
    if (!input) return fail_usage("--input FILE is required", NULL);
    mt_error err = {0};
    unsigned metrics = MT_PROF_LATENCY | MT_PROF_FLOPS | MT_PROF_MEMORY;
    if (metrics_s && mt_prof_metrics_from_list(metrics_s, &metrics, &err) != MT_OK) {
        fprintf(stderr, "moetune profile: %s\n", err.msg);
        usage(stderr);
        return 2;
    }

    mt_backend *be = mt_cli_backend("profile", NULL, (int)threads);
    if (!be) return 1;
    mt_model *m = NULL;
    mt_tokenizer *tok = NULL;
    mt_lora *lora = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    mt_profile *fwd = NULL, *dec = NULL;
    int rc = 0;
    mt_dap_opts dap = {.threshold = (float)dap_thr,
                       .n_sink_blocks = (int)dap_sink,
                       .n_local_blocks = (int)dap_local,
                       .mass_floor = (float)dap_floor};
    mt_adaptive_k akt = {.threshold = (float)akt_thr, .min_k = (int)min_k, .max_k = (int)max_k};
    mt_status st = mt_model_load(&m, model_dir, be, &err);
    if (!st && adapter_dir) st = mt_lora_load_peft(&lora, m, adapter_dir, NULL, &err);
    if (!st) st = mt_model_quantize(m, quant, 0, &err);
    if (!st) mt_model_set_adaptive_k(m, &akt);
    if (!st) st = mt_tokenizer_load(&tok, model_dir, &err);
    if (!st) st = mt_profile_read_input(input, tok, &ids, &n_ids, &err);
    if (!st) st = mt_profile_init(&fwd, m, &dap, (int)dap_block, &err);
    if (!st && decode > 0) st = mt_profile_init(&dec, m, NULL, 0, &err);
    mt_profile_run run = {.max_len = (int)max_len,
                          .batch = (int)batch,
                          .adapter = lora ? mt_lora_adapter(lora) : NULL,
                          .decode = (int)decode,
                          .max_rows = (int)max_rows};
    mt_profile_run_result res;
    if (!st) st = mt_profile_model(m, ids, n_ids, &run, fwd, dec, &res, &err);
    if (st) {
        rc = mt_cli_fail("profile", &err);
    } else {
        mt_prof_memory mem = {.weight_bytes = mt_profile_weight_bytes(m),
                              .workspace_bytes = res.workspace_bytes,
                              .peak_rss_bytes = mt_profile_peak_rss()};
        printf("model %s%s%s, input %s: %llu rows, %llu tokens, mean loss %.4f\n", model_dir,
               adapter_dir ? " + adapter " : "", adapter_dir ? adapter_dir : "", input, (unsigned long long)res.rows,
               (unsigned long long)res.tokens, res.loss_mean);
        char *t = mt_profile_table(fwd, "forward", bd, metrics, &mem);
        fputs(t, stdout);
        free(t);
        char *jf = mt_profile_json(fwd, &mem), *jd = NULL;
        if (dec) {
            mt_prof_memory dm = mem;
            dm.workspace_bytes = 0; /* decode's step buffers are in the KV cache's figure */
            dm.kv_bytes = res.kv_bytes;
            t = mt_profile_table(dec, "decode", bd, metrics, &dm);
            printf("\n");
            fputs(t, stdout);
            free(t);
            jd = mt_profile_json(dec, &dm);
        }
        if (json_out) {
            size_t cap = strlen(jf) + (jd ? strlen(jd) : 0) + 4096;
            char *doc = mt_xmalloc(cap);
            int n = snprintf(doc, cap,
                             "{\"command\": \"profile\", \"rows\": %llu, \"tokens\": %llu, \"loss_mean\": %.9g, "
                             "\"max_len\": %ld, \"batch\": %ld,\n\"forward\": %s,\n\"decode\": %s}\n",
                             (unsigned long long)res.rows, (unsigned long long)res.tokens, res.loss_mean, max_len,
                             batch, jf, jd ? jd : "null");
            st = mt_write_file_atomic(json_out, doc, (size_t)n, &err);
            free(doc);
            if (st) rc = mt_cli_fail("profile", &err);
        }
        free(jf);
        free(jd);
    }
    mt_profile_free(fwd);
    mt_profile_free(dec);
    free(ids);
    mt_tokenizer_free(tok);
    mt_lora_free(lora);
    mt_model_free(m);
    mt_backend_free(be);
    return rc;
}
