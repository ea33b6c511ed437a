/* cmd_ui.c — `moetune ui --store FILE [--host H] [--port P] [--api-key KEY]`: the workbench page
 * (docs/workbench.md) for a store, with no model loaded: runs, curves, adapters in the store and
 * pairs; the playground says there is no model. `moetune serve --store FILE` serves the same page
 * beside the model. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "engine/engine.h"
#include "store/store.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune ui --store FILE [--host H] [--port P] [--api-key KEY]\n"
            "\n"
            "Serves the workbench web page for the store at http://HOST:PORT/ (runs and their curves,\n"
            "live while they train; comparisons; adapters; preference pairs). No model is loaded: for\n"
            "the playground, use moetune serve --model DIR --store FILE (the same page).\n"
            "  --store FILE    the SQLite store to show (read-only)\n"
            "  --host H        address to listen on (default 127.0.0.1)\n"
            "  --port P        port (default 8000; 0 = any free port, printed)\n"
            "  --api-key KEY   require \"Authorization: Bearer KEY\" on the page's JSON (default:\n"
            "                  $MOETUNE_API_KEY when set)\n");
}

static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

int mt_cmd_ui(int argc, char **argv) {
    const char *store = NULL, *host = "127.0.0.1", *api_key = getenv("MOETUNE_API_KEY"), *v = NULL;
    long port = 8000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if ((v = mt_cli_value("--store", argc, argv, &i))) store = v;
        else if ((v = mt_cli_value("--host", argc, argv, &i))) host = v;
        else if ((v = mt_cli_value("--api-key", argc, argv, &i))) api_key = v;
        else if ((v = mt_cli_value("--port", argc, argv, &i))) {
            if (!mt_cli_parse_long(v, 0, 65535, &port)) {
                fprintf(stderr, "moetune ui: --port needs an integer in [0, 65535]\n");
                return 2;
            }
        } else {
            fprintf(stderr, "moetune ui: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!store || !*store) {
        fprintf(stderr, "moetune ui: --store FILE is required\n");
        usage(stderr);
        return 2;
    }
    /* a missing file or one that is not a store fails here, not on the page's first request */
    mt_error err = {0};
    mt_store *st = NULL;
    if (mt_store_open(&st, store, false, &err) != MT_OK) return mt_cli_fail("ui", &err);
    mt_store_close(st);
    mt_server_opts so = {.host = host, .port = (int)port, .api_key = api_key, .ui_store = store};
    mt_server *srv = NULL;
    if (mt_server_start(&srv, NULL, &so, &err) != MT_OK) return mt_cli_fail("ui", &err);
    bool v6 = strchr(host, ':') != NULL;
    fprintf(stderr, "moetune ui: listening on http://%s%s%s:%d (store %s%s)\n", v6 ? "[" : "", host, v6 ? "]" : "",
            mt_server_port(srv), store, api_key && *api_key ? ", API key required" : "");
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    while (!stop_signal) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "moetune ui: stopping (%s)\n", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
    mt_server_stop(srv);
    return 0;
}
