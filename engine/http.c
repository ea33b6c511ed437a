/* http.c — the HTTP server (libmicrohttpd, a thread per connection): the route table, the API
 * key (compared in constant time), request bodies under a size limit, and the small endpoints
 * (/v1/models, vLLM's LoRA load/unload, /health, /metrics). Generation lives in openai.c,
 * feedback in feedback.c.
 * Binds 127.0.0.1 unless told otherwise. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "engine-impl.h"

void mt_eng_buf_add(mt_eng_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        b->p = mt_xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

bool mt_eng_client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return true;
    struct pollfd pfd = {.fd = ci->connect_fd, .events = POLLRDHUP};
    if (poll(&pfd, 1, 0) <= 0) return false;
    return (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

int mt_eng_send(mt_server *s, struct MHD_Connection *c, mt_eng_endpoint ep, const char *model, int status,
                const char *content_type, const char *body, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", content_type);
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    if (s->e) mt_metrics_count_request(&s->e->metrics, ep, model ? model : "", status);
    return ok;
}

int mt_eng_send_error(mt_server *s, struct MHD_Connection *c, mt_eng_endpoint ep, const char *model,
                      const mt_eng_http_error *h) {
    char *json = mt_eng_error_json(h);
    int ok = mt_eng_send(s, c, ep, model, h->status, "application/json", json, strlen(json));
    cJSON_free(json);
    return ok;
}

static int send_json_obj(mt_server *s, struct MHD_Connection *c, mt_eng_endpoint ep, const char *model, int status,
                         cJSON *o) {
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    int ok = mt_eng_send(s, c, ep, model, status, "application/json", json, strlen(json));
    cJSON_free(json);
    return ok;
}

/* ---- the small endpoints ---- */

typedef struct conn_state conn_state;
typedef int (*handler_fn)(mt_server *s, struct MHD_Connection *c, conn_state *cs);

typedef struct route {
    const char *method;
    const char *path;   /* exact, or a prefix when it ends in '/' */
    mt_eng_endpoint ep;
    bool needs_key;     /* the API key guards the /v1 routes, as vLLM does; /health and /metrics stay open */
    handler_fn fn;
    bool no_engine;     /* answers without a model (`moetune ui`): /health and the workbench */
} route;

struct conn_state {
    const route *rt;
    const char *url;
    char *body;
    size_t len, cap;
    bool too_large;
};

static void add_adapter_model(cJSON *data, const mt_engine *e, const mt_registry_info *in) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", in->name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)(time(NULL) - (time_t)(mt_now_seconds() - in->loaded_at)));
    cJSON_AddStringToObject(m, "owned_by", "moetune");
    cJSON_AddStringToObject(m, "root", in->path);
    cJSON_AddStringToObject(m, "parent", e->served_name);
    cJSON_AddNumberToObject(m, "max_model_len", e->max_model_len);
    cJSON *x = cJSON_AddObjectToObject(m, "moetune");
    cJSON_AddBoolToObject(x, "loaded", true);
    cJSON_AddNumberToObject(x, "version", (double)in->version);
    cJSON_AddNumberToObject(x, "rank", in->max_rank);
    cJSON_AddNumberToObject(x, "modules", in->n_modules);
    cJSON_AddNumberToObject(x, "refs", in->refs);
    cJSON_AddNumberToObject(x, "load_seconds", in->load_seconds);
    cJSON_AddStringToObject(x, "base_hash", in->base_hash);
    cJSON *th = in->thresholds_json[0] ? cJSON_Parse(in->thresholds_json) : NULL;
    cJSON_AddItemToObject(x, "thresholds", th ? th : cJSON_CreateNull());
    cJSON_AddItemToArray(data, m);
}

typedef struct list_ctx {
    mt_engine *e;
    cJSON *data;
} list_ctx;

static void add_folder_model(void *user, const char *name, const char *path) {
    list_ctx *l = user;
    mt_registry_info in;
    if (mt_registry_find(l->e->reg, name, &in)) return; /* listed with its version already */
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)time(NULL));
    cJSON_AddStringToObject(m, "owned_by", "moetune");
    cJSON_AddStringToObject(m, "root", path);
    cJSON_AddStringToObject(m, "parent", l->e->served_name);
    cJSON_AddNumberToObject(m, "max_model_len", l->e->max_model_len);
    cJSON *x = cJSON_AddObjectToObject(m, "moetune");
    cJSON_AddBoolToObject(x, "loaded", false); /* loads on first use */
    cJSON_AddItemToArray(l->data, m);
}

static cJSON *base_model(const mt_engine *e) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", e->served_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)(time(NULL) - (time_t)(mt_now_seconds() - e->t_started)));
    cJSON_AddStringToObject(m, "owned_by", "moetune");
    cJSON_AddStringToObject(m, "root", e->model_dir);
    cJSON_AddNullToObject(m, "parent");
    cJSON_AddNumberToObject(m, "max_model_len", e->max_model_len);
    cJSON *x = cJSON_AddObjectToObject(m, "moetune");
    cJSON_AddStringToObject(x, "base_hash", e->base_hash);
    cJSON_AddStringToObject(x, "family", mt_family_name(e->cfg->family));
    return m;
}

static int h_models(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    mt_engine *e = s->e;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON_AddItemToArray(data, base_model(e));
    int n = mt_registry_count(e->reg);
    for (int i = 0; i < n; i++) {
        mt_registry_info in;
        if (mt_registry_get(e->reg, i, &in)) add_adapter_model(data, e, &in);
    }
    list_ctx l = {e, data};
    mt_eng_list_folders(e, add_folder_model, &l);
    (void)cs;
    return send_json_obj(s, c, MT_EP_MODELS, "", 200, root);
}

/* GET /v1/models/{id} */
static int h_model(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    mt_engine *e = s->e;
    const char *id = cs->url + strlen("/v1/models/");
    if (!strcmp(id, e->served_name)) return send_json_obj(s, c, MT_EP_MODELS, id, 200, base_model(e));
    mt_registry_info in;
    if (mt_registry_find(e->reg, id, &in)) {
        cJSON *arr = cJSON_CreateArray();
        add_adapter_model(arr, e, &in);
        cJSON *m = cJSON_DetachItemFromArray(arr, 0);
        cJSON_Delete(arr);
        return send_json_obj(s, c, MT_EP_MODELS, id, 200, m);
    }
    mt_eng_http_error h;
    mt_eng_herr(&h, 404, "invalid_request_error", "model", "model_not_found", "The model `%.200s` does not exist.",
                id);
    return mt_eng_send_error(s, c, MT_EP_MODELS, "", &h);
}

static int h_load(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    char name[MT_ENG_NAME_MAX], path[PATH_MAX];
    bool inplace = false;
    mt_eng_http_error h;
    if (!mt_eng_parse_lora(cs->body, cs->len, true, name, sizeof name, path, sizeof path, &inplace, &h))
        return mt_eng_send_error(s, c, MT_EP_LOAD_LORA, "", &h);
    mt_error err = {0};
    int64_t v = 0;
    pthread_mutex_lock(&s->e->load_mu);
    mt_status st = mt_engine_load_adapter(s->e, name, path, inplace, &v, &err);
    pthread_mutex_unlock(&s->e->load_mu);
    if (st != MT_OK) {
        mt_eng_herr(&h, st == MT_ERR_NOT_FOUND ? 404 : 400, "invalid_request_error", "lora_path",
                    st == MT_ERR_NOT_FOUND ? "adapter_not_found" : "adapter_load_failed", "%s", err.msg);
        return mt_eng_send_error(s, c, MT_EP_LOAD_LORA, "", &h);
    }
    char msg[512];
    int n = snprintf(msg, sizeof msg, "Success: LoRA adapter '%s' added successfully (version %lld).", name,
                     (long long)v);
    return mt_eng_send(s, c, MT_EP_LOAD_LORA, name, 200, "text/plain; charset=utf-8", msg, (size_t)n);
}

static int h_unload(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    char name[MT_ENG_NAME_MAX];
    mt_eng_http_error h;
    if (!mt_eng_parse_lora(cs->body, cs->len, false, name, sizeof name, NULL, 0, NULL, &h))
        return mt_eng_send_error(s, c, MT_EP_UNLOAD_LORA, "", &h);
    mt_error err = {0};
    if (mt_engine_unload_adapter(s->e, name, &err) != MT_OK) {
        mt_eng_herr(&h, 404, "invalid_request_error", "lora_name", "adapter_not_found",
                    "The lora adapter '%s' cannot be found.", name);
        return mt_eng_send_error(s, c, MT_EP_UNLOAD_LORA, "", &h);
    }
    char msg[512];
    int n = snprintf(msg, sizeof msg, "Success: LoRA adapter '%s' removed successfully.", name);
    return mt_eng_send(s, c, MT_EP_UNLOAD_LORA, name, 200, "text/plain; charset=utf-8", msg, (size_t)n);
}

static int h_health(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    (void)cs;
    static const char ok[] = "{\"status\":\"ok\"}";
    return mt_eng_send(s, c, MT_EP_HEALTH, "", 200, "application/json", ok, sizeof ok - 1);
}

static int h_metrics(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    (void)cs;
    char *text = mt_eng_metrics_text(s->e);
    int ok = mt_eng_send(s, c, MT_EP_METRICS, "", 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
    free(text);
    return ok;
}

static int h_completions(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    return mt_eng_handle_generate(s, c, MT_EP_COMPLETIONS, cs->body, cs->len);
}

static int h_chat(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    return mt_eng_handle_generate(s, c, MT_EP_CHAT, cs->body, cs->len);
}

static int h_feedback(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    return mt_eng_handle_feedback(s, c, cs->body, cs->len);
}

/* The workbench (ui.c): the page itself is open, so that it can ask for the key; its JSON is not. */
static int h_ui(mt_server *s, struct MHD_Connection *c, conn_state *cs) { return mt_eng_handle_ui(s, c, cs->url); }
static int h_ui_post(mt_server *s, struct MHD_Connection *c, conn_state *cs) {
    return mt_eng_handle_ui_post(s, c, cs->url, cs->body, cs->len);
}

static const route routes[] = {
    {"POST", "/v1/completions", MT_EP_COMPLETIONS, true, h_completions, false},
    {"POST", "/v1/chat/completions", MT_EP_CHAT, true, h_chat, false},
    {"GET", "/v1/models", MT_EP_MODELS, true, h_models, false},
    {"GET", "/v1/models/", MT_EP_MODELS, true, h_model, false},
    {"POST", "/v1/load_lora_adapter", MT_EP_LOAD_LORA, true, h_load, false},
    {"POST", "/v1/unload_lora_adapter", MT_EP_UNLOAD_LORA, true, h_unload, false},
    {"POST", "/v1/feedback", MT_EP_FEEDBACK, true, h_feedback, false},
    {"GET", "/health", MT_EP_HEALTH, false, h_health, true},
    {"GET", "/", MT_EP_OTHER, false, h_ui, true},
    {"GET", "/ui/api/", MT_EP_OTHER, true, h_ui, true},
    {"POST", "/ui/api/", MT_EP_OTHER, true, h_ui_post, true},
    {"GET", "/ui/", MT_EP_OTHER, false, h_ui, true},
    {"GET", "/metrics", MT_EP_METRICS, false, h_metrics, false},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

static bool path_matches(const route *r, const char *url) {
    size_t n = strlen(r->path);
    if (n > 1 && r->path[n - 1] == '/') return !strncmp(url, r->path, n) && url[n];
    return !strcmp(url, r->path);
}

/* Same time whatever the given key: every byte of the real key is looked at, and a length
 * mismatch is folded into the same accumulator. */
static bool key_ok(const mt_server *s, struct MHD_Connection *c) {
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    const char *given = "";
    if (auth && !strncasecmp(auth, "Bearer ", 7)) given = auth + 7;
    size_t gl = strlen(given);
    volatile unsigned char diff = (unsigned char)(gl != s->api_key_len);
    for (size_t i = 0; i < s->api_key_len; i++)
        diff |= (unsigned char)(s->api_key[i] ^ (i < gl ? given[i] : 0));
    return diff == 0;
}

/* CSRF: a page of another site can make a browser POST here (a form, a no-cors fetch) with the
 * user's network position, though not read the answer. Browsers say where a request comes from
 * (Sec-Fetch-Site; Origin on every POST); clients that are not browsers send neither and pass. */
static bool cross_origin(struct MHD_Connection *c) {
    const char *site = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Sec-Fetch-Site");
    if (site && strcmp(site, "same-origin") && strcmp(site, "none")) return true;
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    if (!origin) return false;
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
    const char *o = strstr(origin, "://");
    return !host || !o || strcmp(o + 3, host) != 0; /* "null" (a sandboxed frame, file://) is foreign too */
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    mt_server *s = cls;
    (void)version;
    conn_state *cs = *con_cls;
    mt_eng_http_error h;
    if (!cs) {
        cs = mt_xcalloc(1, sizeof *cs);
        *con_cls = cs;
        cs->url = url;
        const route *path_hit = NULL;
        /* the first match: /ui/api/ comes before the /ui/ it lies in */
        for (size_t i = 0; i < N_ROUTES; i++)
            if (path_matches(&routes[i], url)) {
                if (!path_hit) path_hit = &routes[i];
                if (!cs->rt && !strcmp(method, routes[i].method)) cs->rt = &routes[i];
            }
        if (!cs->rt && path_hit) {
            mt_eng_herr(&h, 405, "invalid_request_error", NULL, "method_not_allowed", "%s %s: use %s", method,
                        path_hit->path, path_hit->method);
            return (enum MHD_Result)mt_eng_send_error(s, c, path_hit->ep, "", &h);
        }
        if (!cs->rt) {
            mt_eng_herr(&h, 404, "invalid_request_error", NULL, "not_found", "no route for %s %.200s", method, url);
            return (enum MHD_Result)mt_eng_send_error(s, c, MT_EP_OTHER, "", &h);
        }
        if (strcmp(method, "GET") && strcmp(method, "HEAD") && cross_origin(c)) {
            mt_eng_herr(&h, 403, "invalid_request_error", NULL, "cross_origin",
                        "%s %.200s from another origin refused: state-changing requests come from this server's "
                        "own pages or from clients that are not browsers", method, url);
            return (enum MHD_Result)mt_eng_send_error(s, c, cs->rt->ep, "", &h);
        }
        if (cs->rt->needs_key && s->api_key && !key_ok(s, c)) {
            mt_eng_herr(&h, 401, "invalid_request_error", NULL, "invalid_api_key",
                        "a valid API key is required (Authorization: Bearer KEY)");
            return (enum MHD_Result)mt_eng_send_error(s, c, cs->rt->ep, "", &h);
        }
        if (!s->e && !cs->rt->no_engine) {
            mt_eng_herr(&h, 503, "server_error", NULL, "no_model",
                        "no model is loaded here (moetune ui): start moetune serve --model DIR for %s", cs->rt->path);
            return (enum MHD_Result)mt_eng_send_error(s, c, cs->rt->ep, "", &h);
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->o.max_body_bytes) {
            mt_eng_herr(&h, 413, "invalid_request_error", NULL, "request_too_large",
                        "the request body is larger than %zu bytes", s->o.max_body_bytes);
            return (enum MHD_Result)mt_eng_send_error(s, c, cs->rt->ep, "", &h);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cs->too_large && cs->len + *upload_size <= s->o.max_body_bytes) {
            if (cs->len + *upload_size + 1 > cs->cap) {
                size_t cap = cs->cap ? cs->cap : 4096;
                while (cap < cs->len + *upload_size + 1) cap *= 2;
                cs->body = mt_xrealloc(cs->body, cap);
                cs->cap = cap;
            }
            memcpy(cs->body + cs->len, upload, *upload_size);
            cs->len += *upload_size;
            cs->body[cs->len] = 0;
        } else {
            cs->too_large = true; /* chunked bodies have no length up front: drop the rest */
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (cs->too_large) {
        mt_eng_herr(&h, 413, "invalid_request_error", NULL, "request_too_large",
                    "the request body is larger than %zu bytes", s->o.max_body_bytes);
        return (enum MHD_Result)mt_eng_send_error(s, c, cs->rt->ep, "", &h);
    }
    if (!cs->body) {
        cs->body = mt_xstrdup("");
        cs->len = 0;
    }
    return (enum MHD_Result)cs->rt->fn(s, c, cs);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    conn_state *cs = *con_cls;
    if (!cs) return;
    free(cs->body);
    free(cs);
    *con_cls = NULL;
}

static void on_log(void *cls, const char *fmt, va_list ap) {
    mt_server *s = cls;
    if (!s->e) return;
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n') line[--n] = 0;
    mt_eng_log(s->e, "http: %s", line);
}

mt_status mt_server_start(mt_server **out, mt_engine *e, const mt_server_opts *o, mt_error *err) {
    *out = NULL;
    mt_server *s = mt_xcalloc(1, sizeof *s);
    s->e = e;
    s->o = *o;
    if (!s->o.host) s->o.host = "127.0.0.1";
    if (!s->o.max_body_bytes) s->o.max_body_bytes = 4u << 20;
    if (s->o.max_connections <= 0) s->o.max_connections = 512;
    if (o->api_key && *o->api_key) {
        s->api_key = mt_xstrdup(o->api_key);
        s->api_key_len = strlen(o->api_key);
    }
    atomic_init(&s->stopping, false);
    if (o->port < 0 || o->port > 65535) {
        free(s->api_key);
        free(s);
        return mt_error_set(err, MT_ERR_INVALID, "port %d is outside [0, 65535]", o->port);
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", o->port);
    int gai = getaddrinfo(s->o.host, port, &hints, &ai);
    if (gai != 0 || !ai) {
        free(s->api_key);
        free(s);
        return mt_error_set(err, MT_ERR_INVALID, "cannot resolve host '%s': %s", o->host ? o->host : "",
                            gai_strerror(gai));
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    /* the logger first: MHD prints to stderr itself for options before it */
    s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, s,                              //
                            MHD_OPTION_EXTERNAL_LOGGER, on_log, s,                                          //
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,                                              //
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->o.max_connections,                    //
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,                                   //
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,                                   //
                            MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->d) {
        free(s->api_key);
        free(s);
        return mt_error_set(err, MT_ERR_IO, "cannot listen on %s:%d (in use, or not an address of this machine)",
                            o->host ? o->host : "127.0.0.1", o->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (di && getsockname(di->listen_fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                           : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    *out = s;
    return MT_OK;
}

int mt_server_port(const mt_server *s) { return s->port; }

void mt_server_stop(mt_server *s) {
    if (!s) return;
    atomic_store(&s->stopping, true);
    MHD_stop_daemon(s->d);
    free(s->api_key);
    free(s);
}
