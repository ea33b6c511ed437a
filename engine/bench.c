/* bench.c — `moetune bench serve`: a load generator that drives a server over the loopback as
 * any client would (HTTP/1.1 over a socket, streamed completions), at 1, 8 and 32 concurrent
 * requests, with the base and with every request on another adapter; and the time a hot load of
 * an adapter takes through /v1/load_lora_adapter. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine-impl.h"

typedef struct one_result {
    bool ok;
    double latency, ttft;
    int tokens;
} one_result;

static int connect_to(const char *host, int port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    if (getaddrinfo(host, p, &hints, &ai) != 0 || !ai) return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

/* One POST; reads to the end (Connection: close). With stream, ttft is when the first data
 * event arrived. The response body (malloc'ed) goes to *body when asked. */
static bool post(const mt_bench_serve_opts *o, const char *path, const char *json, one_result *res, char **body) {
    double t0 = mt_now_seconds();
    int fd = connect_to(o->host ? o->host : "127.0.0.1", o->port);
    if (fd < 0) return false;
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n%s%s%s\r\n",
                      path, strlen(json), o->api_key ? "Authorization: Bearer " : "", o->api_key ? o->api_key : "",
                      o->api_key ? "\r\n" : "");
    bool ok = write(fd, head, (size_t)hn) == hn && write(fd, json, strlen(json)) == (ssize_t)strlen(json);
    mt_eng_buf b = {0};
    res->ttft = 0;
    char chunk[16384];
    for (ssize_t n; ok && (n = read(fd, chunk, sizeof chunk)) > 0;) {
        mt_eng_buf_add(&b, chunk, (size_t)n);
        if (res->ttft == 0 && strstr(b.p, "data: {")) res->ttft = mt_now_seconds() - t0;
    }
    close(fd);
    res->latency = mt_now_seconds() - t0;
    ok = ok && b.p && !strncmp(b.p, "HTTP/1.1 200", 12);
    /* the usage chunk when the server sends one, else one token per data event (llama.cpp) */
    const char *u = ok ? strstr(b.p, "\"completion_tokens\":") : NULL;
    if (u) {
        res->tokens = atoi(u + strlen("\"completion_tokens\":"));
    } else if (ok) {
        res->tokens = 0;
        /* events still running ("finish_reason": null) each carry one token; the last one none */
        for (const char *p = b.p; (p = strstr(p, "data: {")); p += 7) {
            const char *end = strstr(p, "\n\n");
            size_t n = end ? (size_t)(end - p) : strlen(p);
            const char *f = memmem(p, n, "\"finish_reason\"", 15);
            if (f && (!strncmp(f + 15, ": null", 6) || !strncmp(f + 15, ":null", 5))) res->tokens++;
        }
    }
    res->ok = ok && res->tokens > 0;
    if (body)
        *body = b.p;
    else
        free(b.p);
    return ok;
}

typedef struct level {
    const mt_bench_serve_opts *o;
    bool adapters;
    int requests;
    atomic_int next;
    one_result *res;
} level;

static void *worker(void *arg) {
    level *l = arg;
    for (int i; (i = atomic_fetch_add(&l->next, 1)) < l->requests;) {
        const char *model = l->adapters ? l->o->adapters[i % l->o->n_adapters] : l->o->base_model;
        cJSON *req = cJSON_CreateObject();
        cJSON_AddStringToObject(req, "model", model);
        cJSON_AddStringToObject(req, "prompt", l->o->prompt);
        cJSON_AddNumberToObject(req, "max_tokens", l->o->max_tokens);
        cJSON_AddNumberToObject(req, "temperature", 0);
        cJSON_AddBoolToObject(req, "ignore_eos", true);
        cJSON_AddBoolToObject(req, "stream", true);
        cJSON_AddBoolToObject(cJSON_AddObjectToObject(req, "stream_options"), "include_usage", true);
        char *json = cJSON_PrintUnformatted(req);
        cJSON_Delete(req);
        post(l->o, "/v1/completions", json, &l->res[i], NULL);
        cJSON_free(json);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double quantile(double *v, int n, double q) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int i = (int)(q * (n - 1) + 0.5);
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

mt_status mt_bench_serve(const mt_bench_serve_opts *o, mt_bench_serve_row *rows, int *n_rows, mt_error *err) {
    static const int conc[] = {1, 8, 32};
    *n_rows = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && o->n_adapters == 0) break;
        for (int c = 0; c < 3; c++) {
            int cc = conc[c];
            int nreq = o->requests > 0 ? o->requests : (2 * cc > 8 ? 2 * cc : 8);
            if (nreq < cc) nreq = cc;
            level l = {.o = o, .adapters = pass == 1, .requests = nreq};
            atomic_init(&l.next, 0);
            l.res = mt_xcalloc((size_t)nreq, sizeof *l.res);
            pthread_t *th = mt_xcalloc((size_t)cc, sizeof *th);
            double t0 = mt_now_seconds();
            for (int k = 0; k < cc; k++) pthread_create(&th[k], NULL, worker, &l);
            for (int k = 0; k < cc; k++) pthread_join(th[k], NULL);
            double wall = mt_now_seconds() - t0;
            double *lat = mt_xcalloc((size_t)nreq, sizeof(double)), *ttft = mt_xcalloc((size_t)nreq, sizeof(double));
            int ok = 0;
            long tokens = 0;
            for (int i = 0; i < nreq; i++)
                if (l.res[i].ok) {
                    lat[ok] = l.res[i].latency;
                    ttft[ok] = l.res[i].ttft;
                    tokens += l.res[i].tokens;
                    ok++;
                }
            mt_status st = MT_OK;
            if (ok < nreq)
                st = mt_error_set(err, MT_ERR_IO, "%d of %d requests at concurrency %d failed (is the server up on %s:%d?)",
                                  nreq - ok, nreq, cc, o->host ? o->host : "127.0.0.1", o->port);
            if (!st) {
                mt_bench_serve_row *r = &rows[(*n_rows)++];
                snprintf(r->label, sizeof r->label, "%s", pass ? "adapters" : "base");
                r->concurrency = cc;
                r->requests = nreq;
                r->seconds = wall;
                r->tokens_per_s = tokens / wall;
                r->p50_s = quantile(lat, ok, 0.5);
                r->p99_s = quantile(lat, ok, 0.99);
                r->ttft_p50_s = quantile(ttft, ok, 0.5);
            }
            free(lat), free(ttft), free(th), free(l.res);
            if (st) return st;
        }
    }
    return MT_OK;
}

mt_status mt_bench_hot_load(const mt_bench_serve_opts *o, const char *name, const char *path, double *http_seconds,
                            mt_error *err) {
    cJSON *req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "lora_name", name);
    cJSON_AddStringToObject(req, "lora_path", path);
    cJSON_AddBoolToObject(req, "load_inplace", true);
    char *json = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    one_result r = {0};
    char *body = NULL;
    bool ok = post(o, "/v1/load_lora_adapter", json, &r, &body);
    cJSON_free(json);
    if (!ok) {
        mt_status st = mt_error_set(err, MT_ERR_IO, "loading %s: %.300s", path, body ? body : "no answer");
        free(body);
        return st;
    }
    free(body);
    *http_seconds = r.latency;
    return MT_OK;
}

mt_status mt_bench_make_adapters(mt_engine *e, const char *dir, int n, int rank, mt_error *err) {
    static const char *const all[] = {"all-linear"};
    for (int k = 0; k < n; k++) {
        mt_lora_config c;
        mt_lora_config_default(&c);
        c.r = rank;
        c.alpha = (float)(2 * rank);
        c.targets = all;
        c.n_targets = 1;
        c.seed = 1000 + (uint64_t)k;
        mt_lora *l = NULL;
        mt_status st = mt_lora_attach(&l, e->model, &c, err);
        if (st) return st;
        mt_rng rng;
        mt_rng_seed(&rng, 77 + (uint64_t)k);
        for (int t = 1; t < mt_lora_tensor_count(l); t += 2) {
            mt_lora_tensor *lt = mt_lora_tensor_at(l, t);
            for (int64_t i = 0; i < lt->numel; i++) lt->data[i] = 0.02f * mt_rng_normal(&rng);
        }
        mt_lora_meta meta = {0};
        snprintf(meta.base_hash, sizeof meta.base_hash, "%s", e->base_hash);
        char path[4400];
        snprintf(path, sizeof path, "%s/bench-%02d", dir, k);
        st = mt_lora_save_peft(l, path, &meta, err);
        mt_lora_free(l);
        if (st) return st;
    }
    return MT_OK;
}
