/* cmd_serve.c — `moetune serve --model DIR [--adapters DIR] [--watch] ...`: starts the engine
 * and its OpenAI/vLLM-compatible HTTP server, logs to stderr, and stops cleanly on Ctrl-C or
 * SIGTERM. Every flag maps to one engine or server option (docs/serving.md). */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "engine/engine.h"
#include "model/model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune serve --model DIR [--adapters DIR] [--watch] [--max-loaded N] [--host H] [--port P]\n"
            "                     [--api-key KEY] [--store FILE] [--served-model-name NAME] [--max-seqs N]\n"
            "                     [--max-batch-tokens N] [--kv-blocks N] [--block-size N] [--max-queue N]\n"
            "                     [--max-model-len N] [--max-tokens N] [--max-body-bytes N] [--max-rank R]\n"
            "                     [--threads N] [--dap-threshold T] [--dap-sink N] [--dap-local N]\n"
            "                     [--dap-mass-floor F] [--dap-adapter-thresholds on|off]\n"
            "\n"
            "Serves the model over HTTP: OpenAI /v1/completions, /v1/chat/completions, /v1/models; vLLM\n"
            "/v1/load_lora_adapter and /v1/unload_lora_adapter; /health; /metrics (Prometheus).\n"
            "  --model DIR              a Hugging Face model folder with tokenizer.json\n"
            "  --served-model-name NAME the base's \"model\" name (default: the folder's name)\n"
            "  --adapters DIR           every PEFT adapter folder in DIR is servable as \"model\": \"<folder>\"\n"
            "  --watch                  load new and replaced exports in --adapters as they appear (inotify)\n"
            "  --max-loaded N           adapters held in memory, least recently used evicted (default 64)\n"
            "  --max-rank R             highest LoRA rank accepted (default 64)\n"
            "  --host H                 address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)\n"
            "  --port P                 port (default 8000; 0 = any free port, printed)\n"
            "  --api-key KEY            require \"Authorization: Bearer KEY\" on the /v1 routes\n"
            "                           (default: $MOETUNE_API_KEY when set)\n"
            "  --store FILE             record every request in this SQLite store (table served); the\n"
            "                           workbench at http://HOST:PORT/ shows it (docs/workbench.md)\n"
            "  --max-seqs N             sequences decoded together (default 64)\n"
            "  --max-batch-tokens N     rows per step: decode tokens plus prefill chunks (default 256)\n"
            "  --kv-blocks N            KV cache blocks (default: max-seqs x 1024 positions)\n"
            "  --block-size N           positions per KV block (default 16)\n"
            "  --max-queue N            requests waiting before 429 (default 256)\n"
            "  --max-model-len N        prompt + completion tokens (default: the model's)\n"
            "  --max-tokens N           largest max_tokens a request may ask (default: max-model-len)\n"
            "  --max-body-bytes N       larger request bodies get 413 (default 4194304)\n"
            "  --threads N              CPU threads (default: all cores)\n"
            "  --dap-threshold T        dynamic attention pruning of the decode steps, T in [0, 1], for\n"
            "                           requests without \"dap_threshold\" whose adapter's metadata has no\n"
            "                           \"dap\" (default 0 = off; docs/attention-pruning.md)\n"
            "  --dap-sink N             first KV blocks always kept (default 1)\n"
            "  --dap-local N            last KV blocks always kept (default 1)\n"
            "  --dap-mass-floor F       full attention when the kept blocks' estimated mass is below F\n"
            "                           (default 0.9)\n"
            "  --dap-adapter-thresholds on|off  use an adapter's metadata \"dap\" threshold (default on)\n"
            "  --expert-threshold P     adaptive expert counts: experts in router order until their share\n"
            "                           of the router's scores reaches P in [0, 1], for requests without\n"
            "                           \"expert_threshold\" whose adapter's metadata has no \"experts\"\n"
            "                           (default 0 = off: top_k; docs/attention-pruning.md)\n"
            "  --min-experts N          fewest experts per token for requests without min_experts (default 1)\n"
            "  --max-experts N          most experts per token for requests without max_experts (default top_k)\n"
            "  --expert-adapter-thresholds on|off  use an adapter's metadata \"experts\" threshold (default on)\n");
}

static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

static void log_line(void *user, const char *line) {
    (void)user;
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02dZ %s\n", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
            tm.tm_min, tm.tm_sec, line);
}

typedef struct int_flag {
    const char *name;
    long lo, hi;
    long *dst;
} int_flag;

int mt_cmd_serve(int argc, char **argv) {
    const char *model = NULL, *adapters = NULL, *host = "127.0.0.1", *api_key = getenv("MOETUNE_API_KEY");
    const char *store = NULL, *served = NULL;
    bool watch = false;
    long port = 8000, max_loaded = 0, max_rank = 0, max_seqs = 0, batch = 0, kv_blocks = 0, block = 0, queue = 0;
    long model_len = 0, max_tokens = 0, body = 0, threads = 0, dap_sink = 1, dap_local = 1;
    long min_experts = 0, max_experts = 0;
    double dap_threshold = 0, dap_floor = 0.9, expert_threshold = 0;
    bool dap_adapter = true, expert_adapter = true;
    const int_flag ints[] = {
        {"--port", 0, 65535, &port},           {"--max-loaded", 1, 1 << 20, &max_loaded},
        {"--max-rank", 1, 4096, &max_rank},    {"--max-seqs", 1, 4096, &max_seqs},
        {"--max-batch-tokens", 1, 1 << 16, &batch}, {"--kv-blocks", 1, 1 << 24, &kv_blocks},
        {"--block-size", 1, 1024, &block},     {"--max-queue", 1, 1 << 20, &queue},
        {"--max-model-len", 2, 1 << 24, &model_len}, {"--max-tokens", 1, 1 << 24, &max_tokens},
        {"--max-body-bytes", 1024, 1L << 30, &body}, {"--threads", 0, 4096, &threads},
        {"--dap-sink", 0, 1 << 20, &dap_sink},  {"--dap-local", 0, 1 << 20, &dap_local},
        {"--min-experts", 1, 1 << 16, &min_experts}, {"--max-experts", 1, 1 << 16, &max_experts},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        bool done = false;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !done; k++)
            if (mt_cli_is_flag(a, ints[k].name)) {
                if (!(v = mt_cli_value(ints[k].name, argc, argv, &i)) ||
                    !mt_cli_parse_long(v, ints[k].lo, ints[k].hi, ints[k].dst)) {
                    fprintf(stderr, "moetune serve: %s needs an integer in [%ld, %ld]\n", ints[k].name, ints[k].lo,
                            ints[k].hi);
                    return 2;
                }
                done = true;
            }
        if (done) continue;
        double *dbl = mt_cli_is_flag(a, "--dap-threshold")    ? &dap_threshold
                      : mt_cli_is_flag(a, "--dap-mass-floor") ? &dap_floor
                      : mt_cli_is_flag(a, "--expert-threshold") ? &expert_threshold
                                                              : NULL;
        if (dbl) {
            char flag[64];
            snprintf(flag, sizeof flag, "%.*s", (int)strcspn(a, "="), a);
            if (!(v = mt_cli_value(flag, argc, argv, &i)) || !mt_cli_parse_double(v, 0, 1, dbl)) {
                fprintf(stderr, "moetune serve: %s needs a number in [0, 1]\n", flag);
                return 2;
            }
            continue;
        }
        if (mt_cli_is_flag(a, "--dap-adapter-thresholds")) {
            if (!(v = mt_cli_value("--dap-adapter-thresholds", argc, argv, &i)) || (strcmp(v, "on") && strcmp(v, "off"))) {
                fprintf(stderr, "moetune serve: --dap-adapter-thresholds needs on or off\n");
                return 2;
            }
            dap_adapter = !strcmp(v, "on");
            continue;
        }
        if (mt_cli_is_flag(a, "--expert-adapter-thresholds")) {
            if (!(v = mt_cli_value("--expert-adapter-thresholds", argc, argv, &i)) ||
                (strcmp(v, "on") && strcmp(v, "off"))) {
                fprintf(stderr, "moetune serve: --expert-adapter-thresholds needs on or off\n");
                return 2;
            }
            expert_adapter = !strcmp(v, "on");
            continue;
        }
        const char **str = mt_cli_is_flag(a, "--model")               ? &model
                           : mt_cli_is_flag(a, "--adapters")          ? &adapters
                           : mt_cli_is_flag(a, "--host")              ? &host
                           : mt_cli_is_flag(a, "--api-key")           ? &api_key
                           : mt_cli_is_flag(a, "--store")             ? &store
                           : mt_cli_is_flag(a, "--served-model-name") ? &served
                                                                      : NULL;
        if (str) {
            const char *name = a;
            char flag[64];
            snprintf(flag, sizeof flag, "%.*s", (int)strcspn(a, "="), a);
            if (!(*str = mt_cli_value(flag, argc, argv, &i)) || !**str) {
                fprintf(stderr, "moetune serve: %s needs a value\n", name);
                return 2;
            }
        } else if (!strcmp(a, "--watch")) {
            watch = true;
        } else {
            fprintf(stderr, "moetune serve: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "moetune serve: --model is required\n");
        usage(stderr);
        return 2;
    }
    if (watch && !adapters) {
        fprintf(stderr, "moetune serve: --watch needs --adapters DIR\n");
        return 2;
    }
    mt_dap_opts dap = {.threshold = (float)dap_threshold,
                       .n_sink_blocks = (int)dap_sink,
                       .n_local_blocks = (int)dap_local,
                       .mass_floor = (float)dap_floor};
    /* bounds above the model's top_k are the engine's error (it knows the model) */
    mt_adaptive_k experts = {
        .threshold = (float)expert_threshold, .min_k = (int)min_experts, .max_k = (int)max_experts};
    mt_backend *be = mt_cli_backend("serve", NULL, (int)threads);
    if (!be) return 1;
    mt_engine_opts eo = {.model_dir = model,
                         .served_name = served,
                         .adapters_dir = adapters,
                         .watch = watch,
                         .max_loaded = (int)max_loaded,
                         .max_rank = (int)max_rank,
                         .block_size = (int)block,
                         .kv_blocks = (int)kv_blocks,
                         .max_seqs = (int)max_seqs,
                         .max_batch_tokens = (int)batch,
                         .max_queue = (int)queue,
                         .max_model_len = (int)model_len,
                         .max_tokens = (int)max_tokens,
                         .store_path = store,
                         .dap = &dap,
                         .dap_ignore_adapter_thresholds = !dap_adapter,
                         .experts = &experts,
                         .experts_ignore_adapter_thresholds = !expert_adapter,
                         .log = log_line};
    mt_error err = {0};
    mt_engine *e = NULL;
    mt_server *srv = NULL;
    mt_status st = mt_engine_init(&e, be, &eo, &err);
    if (!st) {
        mt_server_opts so = {.host = host, .port = (int)port, .api_key = api_key, .max_body_bytes = (size_t)body,
                             .ui_store = store};
        st = mt_server_start(&srv, e, &so, &err);
    }
    int rc = 0;
    if (st) {
        rc = mt_cli_fail("serve", &err);
    } else {
        /* the line scripts wait for: the port is known here even with --port 0 */
        bool v6 = strchr(host, ':') != NULL; /* an IPv6 address goes in brackets in a URL */
        fprintf(stderr, "moetune serve: listening on http://%s%s%s:%d (model %s%s%s)\n", v6 ? "[" : "", host,
                v6 ? "]" : "", mt_server_port(srv), model,
                api_key && *api_key ? ", API key required" : "", watch ? ", watching adapters" : "");
        struct sigaction sa = {0};
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        while (!stop_signal) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        fprintf(stderr, "moetune serve: stopping (%s)\n", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
    }
    mt_server_stop(srv);
    mt_engine_free(e);
    mt_backend_free(be);
    return rc;
}
