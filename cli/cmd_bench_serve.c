/* cmd_bench_serve.c — `moetune bench serve --model DIR`: starts the engine and its server on a
 * free loopback port (or, with --port, drives a server already running, e.g. another engine for
 * comparison), then measures over HTTP: single-stream decode tokens/s, throughput and p50/p99
 * latency at 1, 8 and 32 concurrent requests with the base and with every request on another
 * adapter, and the time to hot-load an adapter. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engine/engine.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune bench serve --model DIR [--adapters N] [--rank R] [--max-tokens N] [--requests N]\n"
            "                           [--prompt TEXT] [--threads N]\n"
            "       moetune bench serve --port P [--host H] --base-model NAME [--adapter NAME]... [...]\n"
            "\n"
            "Drives the server over the loopback with streamed greedy completions (EOS ignored) at 1, 8\n"
            "and 32 concurrent requests: generated tokens/s, request latency p50/p99, TTFT p50; first\n"
            "with the base, then with request i on adapter i mod N; then times a hot load.\n"
            "  --model DIR       start moetune's engine on this model (a free port on 127.0.0.1)\n"
            "  --adapters N      random rank-R adapters written for the run (default 32; 0 = base only)\n"
            "  --rank R          their rank (default 16)\n"
            "  --max-tokens N    tokens per request (default 64)\n"
            "  --requests N      requests per level (default 2 x concurrency, at least 8)\n"
            "  --prompt TEXT     the prompt (default a sentence of license text)\n"
            "  --threads N       CPU threads of the engine (default: all cores)\n"
            "  --port P          drive the server at P instead (no engine is started)\n"
            "  --host H          its address (default 127.0.0.1)\n"
            "  --base-model NAME its base model's name; --adapter NAME (repeatable) its adapters\n"
            "  --api-key KEY     sent as a bearer token\n");
}

int mt_cmd_bench_serve(int argc, char **argv) {
    const char *model = NULL, *host = "127.0.0.1", *base = NULL, *key = NULL;
    const char *prompt = "The licensee shall not sublicense the software, except as permitted by";
    long n_ad = 32, rank = 16, max_tokens = 64, requests = 0, threads = 0, port = 0;
    const char **ext = mt_xcalloc((size_t)argc, sizeof(char *));
    int n_ext = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(ext);
            return 0;
        }
#define LONG_FLAG(name, lo, hi, dst)                                                              \
    if (mt_cli_is_flag(a, name)) {                                                                \
        if (!(v = mt_cli_value(name, argc, argv, &i)) || !mt_cli_parse_long(v, lo, hi, &dst)) goto bad; \
        continue;                                                                                 \
    }
#define STR_FLAG(name, dst)                                                                       \
    if (mt_cli_is_flag(a, name)) {                                                                \
        if (!(dst = mt_cli_value(name, argc, argv, &i))) goto bad;                               \
        continue;                                                                                 \
    }
        LONG_FLAG("--adapters", 0, 1024, n_ad)
        LONG_FLAG("--rank", 1, 256, rank)
        LONG_FLAG("--max-tokens", 1, 100000, max_tokens)
        LONG_FLAG("--requests", 1, 100000, requests)
        LONG_FLAG("--threads", 0, 4096, threads)
        LONG_FLAG("--port", 1, 65535, port)
        STR_FLAG("--model", model)
        STR_FLAG("--host", host)
        STR_FLAG("--base-model", base)
        STR_FLAG("--api-key", key)
        STR_FLAG("--prompt", prompt)
        if (mt_cli_is_flag(a, "--adapter")) {
            if (!(v = mt_cli_value("--adapter", argc, argv, &i))) goto bad;
            ext[n_ext++] = v;
            continue;
        }
        fprintf(stderr, "moetune bench serve: unknown argument '%s'\n", a);
        usage(stderr);
        free(ext);
        return 2;
    bad:
        fprintf(stderr, "moetune bench serve: %s needs a valid value\n", a);
        free(ext);
        return 2;
    }
    if (!model && !port) {
        fprintf(stderr, "moetune bench serve: --model DIR or --port P is required\n");
        usage(stderr);
        free(ext);
        return 2;
    }
    mt_error err = {0};
    mt_backend *be = NULL;
    mt_engine *e = NULL;
    mt_server *srv = NULL;
    mt_status st = MT_OK;
    char dir[64] = "";
    char **names = NULL;
    mt_bench_serve_opts o = {.host = host, .port = (int)port, .api_key = key, .base_model = base,
                             .prompt = prompt, .max_tokens = (int)max_tokens, .requests = (int)requests,
                             .adapters = ext, .n_adapters = n_ext};
    if (model) {
        if (!(be = mt_cli_backend("bench serve", NULL, (int)threads))) {
            free(ext);
            return 1;
        }
        snprintf(dir, sizeof dir, "/tmp/moetune-bench-serve-XXXXXX");
        if (!mkdtemp(dir)) st = mt_error_set(&err, MT_ERR_IO, "cannot make a temporary folder");
        mt_engine_opts eo = {.model_dir = model, .adapters_dir = dir, .max_loaded = (int)n_ad + 1,
                             .max_rank = (int)rank};
        if (!st) st = mt_engine_init(&e, be, &eo, &err);
        if (!st) st = mt_bench_make_adapters(e, dir, (int)n_ad, (int)rank, &err);
        names = mt_xcalloc((size_t)n_ad + 1, sizeof(char *));
        for (long k = 0; !st && k < n_ad; k++) {
            names[k] = mt_xmalloc(32);
            snprintf(names[k], 32, "bench-%02ld", k);
            st = mt_engine_load_adapter(e, names[k], names[k], false, NULL, &err);
        }
        mt_server_opts so = {.host = "127.0.0.1", .port = 0};
        if (!st) st = mt_server_start(&srv, e, &so, &err);
        if (!st) {
            o.port = mt_server_port(srv);
            o.host = "127.0.0.1";
            o.base_model = mt_engine_served_name(e);
            o.adapters = (const char *const *)names;
            o.n_adapters = (int)n_ad;
        }
    } else if (!base) {
        st = mt_error_set(&err, MT_ERR_INVALID, "--base-model NAME is required with --port");
    }
    mt_bench_serve_row rows[6];
    int n_rows = 0;
    if (!st) st = mt_bench_serve(&o, rows, &n_rows, &err);
    if (!st) {
        printf("%-9s %5s %8s %9s %11s %9s %9s %10s\n", "model", "conc", "requests", "seconds", "tokens/s", "p50 s",
               "p99 s", "TTFT p50 s");
        for (int i = 0; i < n_rows; i++)
            printf("%-9s %5d %8d %9.2f %11.1f %9.3f %9.3f %10.4f\n", rows[i].label, rows[i].concurrency,
                   rows[i].requests, rows[i].seconds, rows[i].tokens_per_s, rows[i].p50_s, rows[i].p99_s,
                   rows[i].ttft_p50_s);
        for (int i = 1; i < n_rows; i++)
            if (!strcmp(rows[i].label, "adapters") && rows[i].concurrency == 8)
                for (int j = 0; j < n_rows; j++)
                    if (!strcmp(rows[j].label, "base") && rows[j].concurrency == 8)
                        printf("8 concurrent on 8 different adapters: %.1f%% of the base's tokens/s\n",
                               100.0 * rows[i].tokens_per_s / rows[j].tokens_per_s);
    }
    if (!st && e && n_ad > 0) {
        /* replace one adapter in place, through the API, a few times: the median is the figure */
        double http_s[5], reg_s[5];
        for (int k = 0; k < 5 && !st; k++) {
            st = mt_bench_hot_load(&o, names[0], names[k % n_ad], &http_s[k], &err);
            reg_s[k] = mt_engine_adapter_load_seconds(e, names[0]);
        }
        if (!st) {
            for (int a = 0; a < 5; a++)
                for (int b = a + 1; b < 5; b++) {
                    if (http_s[b] < http_s[a]) { double t = http_s[a]; http_s[a] = http_s[b]; http_s[b] = t; }
                    if (reg_s[b] < reg_s[a]) { double t = reg_s[a]; reg_s[a] = reg_s[b]; reg_s[b] = t; }
                }
            printf("hot load of a rank-%ld adapter (median of 5): %.2f ms in the registry, %.2f ms over HTTP\n", rank,
                   reg_s[2] * 1e3, http_s[2] * 1e3);
        }
    }
    int rc = st ? mt_cli_fail("bench serve", &err) : 0;
    mt_server_stop(srv);
    mt_engine_free(e);
    mt_backend_free(be);
    if (names)
        for (long k = 0; k < n_ad; k++) free(names[k]);
    free(names);
    free(ext);
    if (dir[0] && dir[0] == '/') {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "moetune bench serve: could not remove %s\n", dir);
    }
    return rc;
}
