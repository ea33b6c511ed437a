/* ui.c — the workbench: the static page compiled into the binary (engine/ui/, embedded by
 * ui/embed.cmake) and the read-only JSON it draws from, under /ui/api/: runs, a run with its
 * recipe, events and every metric series, a live stream of a training run (server-sent events),
 * recipe differences, adapters in the store and served, pair datasets and their pairs. The store
 * is opened per request (one SQLite handle per thread) and only read, except for a person's
 * corrections to a pair (swap, drop); everything else the page changes goes through the /v1
 * endpoints. Every POST is under the key and the cross-origin rule (http.c). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine-impl.h"

typedef struct mt_ui_asset {
    const char *path, *type;
    const unsigned char *data;
    size_t size;
} mt_ui_asset;
extern const mt_ui_asset mt_ui_assets[]; /* ui_assets.c, generated; ends with a NULL path */

/* ---- replies ---- */

static int send_err(mt_server *s, struct MHD_Connection *c, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int send_err(mt_server *s, struct MHD_Connection *c, int status, const char *code, const char *fmt, ...) {
    mt_eng_http_error h;
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mt_eng_herr(&h, status, status >= 500 ? "server_error" : "invalid_request_error", NULL, code, "%s", msg);
    return mt_eng_send_error(s, c, MT_EP_OTHER, "", &h);
}

static int send_json(mt_server *s, struct MHD_Connection *c, cJSON *o) {
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    int ok = mt_eng_send(s, c, MT_EP_OTHER, "", 200, "application/json", json, strlen(json));
    cJSON_free(json);
    return ok;
}

static int send_store_err(mt_server *s, struct MHD_Connection *c, mt_status st, const mt_error *err) {
    return send_err(s, c, st == MT_ERR_NOT_FOUND ? 404 : 500, st == MT_ERR_NOT_FOUND ? "not_found" : "store_error",
                    "%s", err->msg);
}

/* NaN and ±inf are not JSON: they go out as null (the page breaks a curve there). */
static void add_num(cJSON *o, const char *k, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

static void add_str(cJSON *o, const char *k, const char *v) {
    if (v) cJSON_AddStringToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

/* A JSON text kept in the store goes out as the value it is (null when absent or not JSON). */
static void add_raw_json(cJSON *o, const char *k, const char *json) {
    cJSON *v = json ? cJSON_Parse(json) : NULL;
    cJSON_AddItemToObject(o, k, v ? v : cJSON_CreateNull());
}

static mt_status open_store(const mt_server *s, mt_store **st, mt_error *err) {
    if (!s->o.ui_store) return mt_error_set(err, MT_ERR_NOT_FOUND, "no store: start with --store FILE");
    return mt_store_open(st, s->o.ui_store, false, err);
}

static bool parse_id(const char *p, int64_t *id, const char **rest) {
    char *end = NULL;
    long long v = strtoll(p, &end, 10);
    if (end == p || v <= 0) return false;
    *id = v;
    *rest = end;
    return true;
}

/* ---- runs ---- */

static double best_eval_loss(mt_store *st, int64_t run_id) {
    mt_store_metric_list ml = {0};
    mt_error err = {0};
    double best = NAN;
    if (mt_store_metric_names(st, run_id, &ml, &err) == MT_OK)
        for (size_t i = 0; i < ml.n; i++)
            if (!strcmp(ml.items[i].name, "eval_loss")) best = ml.items[i].min;
    mt_store_metric_list_free(&ml);
    return best;
}

/* with_best: look up the best eval loss (a pass over the run's metrics; the stream leaves it out). */
static cJSON *run_json(mt_store *st, const mt_store_run *r, bool full, bool with_best) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)r->id);
    add_str(o, "name", r->name);
    add_str(o, "method", r->method);
    add_str(o, "base_path", r->base_path);
    add_str(o, "base_hash", r->base_hash);
    cJSON_AddStringToObject(o, "status", mt_run_status_name(r->status));
    cJSON_AddBoolToObject(o, "stale", r->stale);
    add_num(o, "started", r->started);
    add_num(o, "ended", r->ended > 0 ? r->ended : NAN);
    add_num(o, "duration", r->duration);
    cJSON_AddNumberToObject(o, "last_step", (double)r->last_step);
    add_num(o, "last_loss", r->has_loss ? r->last_loss : NAN);
    if (with_best) add_num(o, "best_eval_loss", best_eval_loss(st, r->id));
    if (full) {
        add_str(o, "recipe_text", r->recipe_text);
        add_str(o, "recipe_sha256", r->recipe_sha256);
        add_raw_json(o, "config", r->config_json);
        add_str(o, "status_message", r->status_message);
        add_str(o, "git_revision", r->git_revision);
        add_str(o, "version", r->version);
        add_str(o, "host", r->host);
        cJSON_AddNumberToObject(o, "seed", (double)r->seed);
    }
    return o;
}

static int h_runs(mt_server *s, struct MHD_Connection *c) {
    mt_store *st = NULL;
    mt_error err = {0};
    mt_status rc = open_store(s, &st, &err);
    if (rc != MT_OK) return send_store_err(s, c, rc, &err);
    mt_store_run_list l = {0};
    if ((rc = mt_store_run_list_all(st, &l, &err)) != MT_OK) {
        mt_store_close(st);
        return send_store_err(s, c, rc, &err);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(o, "runs");
    for (size_t i = 0; i < l.n; i++) cJSON_AddItemToArray(a, run_json(st, &l.items[i], false, true));
    mt_store_run_list_free(&l);
    mt_store_close(st);
    return send_json(s, c, o);
}

static cJSON *events_json(const mt_store_event_list *ev, size_t from) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = from; i < ev->n; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "id", (double)ev->items[i].id);
        if (ev->items[i].step >= 0) cJSON_AddNumberToObject(e, "step", (double)ev->items[i].step);
        else cJSON_AddNullToObject(e, "step");
        add_num(e, "time", ev->items[i].time);
        add_str(e, "kind", ev->items[i].kind);
        add_raw_json(e, "detail", ev->items[i].detail_json);
        cJSON_AddItemToArray(a, e);
    }
    return a;
}

static cJSON *adapter_json(const mt_store_adapter *ad) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)ad->id);
    if (ad->run_id) cJSON_AddNumberToObject(o, "run_id", (double)ad->run_id);
    else cJSON_AddNullToObject(o, "run_id");
    add_str(o, "path", ad->path);
    add_str(o, "base_hash", ad->base_hash);
    cJSON_AddNumberToObject(o, "rank", ad->rank);
    add_num(o, "alpha", ad->alpha);
    add_raw_json(o, "targets", ad->targets_json);
    add_raw_json(o, "thresholds", ad->thresholds_json);
    add_raw_json(o, "eval", ad->eval_json);
    add_num(o, "created", ad->created);
    return o;
}

static cJSON *point_json(int64_t step, double v) {
    cJSON *p = cJSON_CreateArray();
    cJSON_AddItemToArray(p, cJSON_CreateNumber((double)step));
    cJSON_AddItemToArray(p, isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull());
    return p;
}

/* Every metric of a run as {name: [[step, value|null], ...]} in step order. */
static mt_status series_json(mt_store *st, int64_t run_id, cJSON **out, mt_error *err) {
    mt_store_metric_list ml = {0};
    mt_status rc = mt_store_metric_names(st, run_id, &ml, err);
    if (rc != MT_OK) return rc;
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i < ml.n && rc == MT_OK; i++) {
        mt_store_series sr = {0};
        if ((rc = mt_store_metric_series(st, run_id, ml.items[i].name, &sr, err)) != MT_OK) break;
        cJSON *pts = cJSON_AddArrayToObject(o, ml.items[i].name);
        for (size_t k = 0; k < sr.n; k++) cJSON_AddItemToArray(pts, point_json(sr.steps[k], sr.values[k]));
        mt_store_series_free(&sr);
    }
    mt_store_metric_list_free(&ml);
    if (rc != MT_OK) {
        cJSON_Delete(o);
        return rc;
    }
    *out = o;
    return MT_OK;
}

static int h_run(mt_server *s, struct MHD_Connection *c, int64_t id) {
    mt_store *st = NULL;
    mt_error err = {0};
    mt_status rc = open_store(s, &st, &err);
    if (rc != MT_OK) return send_store_err(s, c, rc, &err);
    mt_store_run r = {0};
    if ((rc = mt_store_run_get(st, id, &r, &err)) != MT_OK) {
        mt_store_close(st);
        return send_store_err(s, c, rc, &err);
    }
    cJSON *o = run_json(st, &r, true, true);
    mt_store_run_free(&r);
    mt_store_event_list ev = {0};
    mt_store_adapter_list al = {0};
    mt_store_dataset_list dl = {0};
    cJSON *series = NULL;
    if ((rc = mt_store_events(st, id, &ev, &err)) == MT_OK &&
        (rc = mt_store_adapters(st, id, &al, &err)) == MT_OK && (rc = mt_store_datasets(st, id, &dl, &err)) == MT_OK)
        rc = series_json(st, id, &series, &err);
    if (rc == MT_OK) {
        cJSON_AddItemToObject(o, "events", events_json(&ev, 0));
        cJSON *a = cJSON_AddArrayToObject(o, "adapters");
        for (size_t i = 0; i < al.n; i++) cJSON_AddItemToArray(a, adapter_json(&al.items[i]));
        cJSON *d = cJSON_AddArrayToObject(o, "datasets");
        for (size_t i = 0; i < dl.n; i++) {
            cJSON *x = cJSON_CreateObject();
            add_str(x, "path", dl.items[i].path);
            add_str(x, "format", dl.items[i].format);
            add_str(x, "split", dl.items[i].split);
            cJSON_AddNumberToObject(x, "n_docs", (double)dl.items[i].n_docs);
            cJSON_AddNumberToObject(x, "n_tokens", (double)dl.items[i].n_tokens);
            cJSON_AddItemToArray(d, x);
        }
        cJSON_AddItemToObject(o, "metrics", series);
    }
    mt_store_event_list_free(&ev);
    mt_store_adapter_list_free(&al);
    mt_store_dataset_list_free(&dl);
    mt_store_close(st);
    if (rc != MT_OK) {
        cJSON_Delete(o);
        return send_store_err(s, c, rc, &err);
    }
    return send_json(s, c, o);
}

/* ---- the live stream of a run: SSE, polling the store (the trainer is another process) ---- */

typedef struct run_stream {
    mt_server *s;
    struct MHD_Connection *c;
    mt_store *st;
    int64_t id;
    cJSON *sent;         /* {metric: last step sent} */
    int64_t from_step;   /* the highest step sent: each poll reads from there (its later rows too) */
    size_t events_sent;
    char status[32];     /* last status sent */
    bool ended;
    mt_eng_buf buf;
    size_t off;
    double last_write;   /* a comment line now and then lets a gone client be noticed */
} run_stream;

#define MT_UI_POLL_NS (250 * 1000 * 1000)

/* The points logged since the last poll, as {name: [[step, value], ...]}: rows at the highest
 * step sent are read again (that step's eval metrics may come in a later transaction than its
 * train metrics) and dropped when already sent. */
static mt_status new_points(run_stream *rs, cJSON **out, size_t *n, mt_error *err) {
    mt_store_point_list l = {0};
    mt_status rc = mt_store_metrics_since(rs->st, rs->id, rs->from_step, &l, err);
    if (rc != MT_OK) return rc;
    cJSON *o = cJSON_CreateObject();
    *n = 0;
    for (size_t i = 0; i < l.n; i++) {
        const mt_store_point *p = &l.items[i];
        cJSON *last = cJSON_GetObjectItemCaseSensitive(rs->sent, p->name);
        if (last && p->step <= (int64_t)last->valuedouble) continue;
        if (last) cJSON_SetNumberValue(last, (double)p->step);
        else cJSON_AddNumberToObject(rs->sent, p->name, (double)p->step);
        cJSON *pts = cJSON_GetObjectItemCaseSensitive(o, p->name);
        if (!pts) pts = cJSON_AddArrayToObject(o, p->name);
        cJSON_AddItemToArray(pts, point_json(p->step, p->value));
        if (p->step > rs->from_step) rs->from_step = p->step;
        (*n)++;
    }
    mt_store_point_list_free(&l);
    *out = o;
    return MT_OK;
}

/* What changed since the last event: new points, new events, a new status. Returns false on a
 * store error (the stream then ends). */
static bool stream_poll(run_stream *rs) {
    mt_error err = {0};
    mt_store_run r = {0};
    if (mt_store_run_get(rs->st, rs->id, &r, &err) != MT_OK) return false;
    cJSON *pts = NULL;
    size_t n_points = 0;
    mt_store_event_list ev = {0};
    bool ok = new_points(rs, &pts, &n_points, &err) == MT_OK && mt_store_events(rs->st, rs->id, &ev, &err) == MT_OK;
    const char *status = mt_run_status_name(r.status);
    if (ok && (n_points || ev.n > rs->events_sent || strcmp(status, rs->status))) {
        cJSON *o = run_json(rs->st, &r, false, false);
        cJSON_AddItemToObject(o, "metrics", pts);
        pts = NULL;
        cJSON_AddItemToObject(o, "events", events_json(&ev, rs->events_sent));
        rs->events_sent = ev.n;
        snprintf(rs->status, sizeof rs->status, "%s", status);
        char *json = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        mt_eng_buf_add(&rs->buf, "data: ", 6);
        mt_eng_buf_add(&rs->buf, json, strlen(json));
        mt_eng_buf_add(&rs->buf, "\n\n", 2);
        cJSON_free(json);
    }
    /* a run that is no longer running has said everything: one last event, then the end */
    if (ok && r.status != MT_RUN_RUNNING) {
        mt_eng_buf_add(&rs->buf, "event: end\ndata: {}\n\n", 21);
        rs->ended = true;
    }
    cJSON_Delete(pts);
    mt_store_event_list_free(&ev);
    mt_store_run_free(&r);
    return ok;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
    run_stream *rs = cls;
    (void)pos;
    for (;;) {
        if (rs->off < rs->buf.n) {
            size_t n = rs->buf.n - rs->off < max ? rs->buf.n - rs->off : max;
            memcpy(out, rs->buf.p + rs->off, n);
            rs->off += n;
            rs->last_write = mt_now_seconds();
            return (ssize_t)n;
        }
        rs->buf.n = rs->off = 0;
        if (rs->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        if (atomic_load(&rs->s->stopping) || mt_eng_client_gone(rs->c)) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (!stream_poll(rs)) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (rs->buf.n) continue;
        if (mt_now_seconds() - rs->last_write > 15) {
            mt_eng_buf_add(&rs->buf, ": ping\n\n", 8);
            continue;
        }
        struct timespec ts = {0, MT_UI_POLL_NS};
        nanosleep(&ts, NULL);
    }
}

static void stream_free(void *cls) {
    run_stream *rs = cls;
    mt_store_close(rs->st);
    cJSON_Delete(rs->sent);
    free(rs->buf.p);
    free(rs);
}

static int h_run_stream(mt_server *s, struct MHD_Connection *c, int64_t id) {
    mt_store *st = NULL;
    mt_error err = {0};
    mt_status rc = open_store(s, &st, &err);
    if (rc != MT_OK) return send_store_err(s, c, rc, &err);
    mt_store_run r = {0};
    if ((rc = mt_store_run_get(st, id, &r, &err)) != MT_OK) {
        mt_store_close(st);
        return send_store_err(s, c, rc, &err);
    }
    mt_store_run_free(&r);
    run_stream *rs = mt_xcalloc(1, sizeof *rs);
    rs->s = s;
    rs->c = c;
    rs->st = st;
    rs->id = id;
    rs->sent = cJSON_CreateObject();
    rs->last_write = mt_now_seconds();
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, rs,
                                                                  stream_free);
    if (!resp) {
        stream_free(rs);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* GET /ui/api/compare?runs=1,2,3: each run's config differences from the first's. */
static int h_compare(mt_server *s, struct MHD_Connection *c) {
    const char *ids = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "runs");
    int64_t id[16];
    int n = 0;
    const char *p = ids ? ids : "";
    while (*p && n < 16) {
        const char *rest = NULL;
        if (!parse_id(p, &id[n], &rest) || (*rest && *rest != ',')) break;
        n++;
        p = *rest ? rest + 1 : rest;
    }
    if (n < 2 || *p)
        return send_err(s, c, 400, "invalid_runs", "runs: give 2 to 16 run ids separated by commas, e.g. runs=1,2");
    mt_store *st = NULL;
    mt_error err = {0};
    mt_status rc = open_store(s, &st, &err);
    if (rc != MT_OK) return send_store_err(s, c, rc, &err);
    cJSON *o = cJSON_CreateObject();
    cJSON *runs = cJSON_AddArrayToObject(o, "runs");
    cJSON *diffs = cJSON_AddArrayToObject(o, "differences");
    for (int i = 0; i < n && rc == MT_OK; i++) {
        mt_store_run r = {0};
        if ((rc = mt_store_run_get(st, id[i], &r, &err)) != MT_OK) break;
        cJSON_AddItemToArray(runs, run_json(st, &r, false, true));
        mt_store_run_free(&r);
        if (i == 0) continue;
        mt_store_diff_list dl = {0};
        if ((rc = mt_store_config_diff_runs(st, id[0], id[i], &dl, &err)) != MT_OK) break;
        for (size_t k = 0; k < dl.n; k++) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddNumberToObject(d, "run", (double)id[i]);
            add_str(d, "key", dl.items[k].key);
            add_str(d, "first", dl.items[k].a);
            add_str(d, "this", dl.items[k].b);
            cJSON_AddItemToArray(diffs, d);
        }
        mt_store_diff_list_free(&dl);
    }
    mt_store_close(st);
    if (rc != MT_OK) {
        cJSON_Delete(o);
        return send_store_err(s, c, rc, &err);
    }
    return send_json(s, c, o);
}

/* ---- adapters: the store's, the served ones, the folders that can be loaded ---- */

/* Requests answered 200 for `model` on the generation endpoints since the server started. */
static double requests_served(mt_engine *e, const char *model) {
    uint64_t n = 0;
    pthread_mutex_lock(&e->metrics.mu);
    for (int i = 0; i < e->metrics.n_req; i++) {
        const mt_req_counter *r = &e->metrics.req[i];
        if ((r->ep == MT_EP_CHAT || r->ep == MT_EP_COMPLETIONS) && r->status == 200 && !strcmp(r->model, model))
            n += r->count;
    }
    pthread_mutex_unlock(&e->metrics.mu);
    return (double)n;
}

static void add_folder(void *user, const char *name, const char *path) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddItemToArray(user, o);
}

static int h_adapters(mt_server *s, struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject();
    if (s->o.ui_store) {
        mt_store *st = NULL;
        mt_error err = {0};
        mt_store_adapter_list al = {0};
        mt_status rc = open_store(s, &st, &err);
        if (rc == MT_OK) rc = mt_store_adapters(st, 0, &al, &err);
        mt_store_close(st);
        if (rc != MT_OK) {
            cJSON_Delete(o);
            return send_store_err(s, c, rc, &err);
        }
        cJSON *a = cJSON_AddArrayToObject(o, "stored");
        for (size_t i = 0; i < al.n; i++) cJSON_AddItemToArray(a, adapter_json(&al.items[i]));
        mt_store_adapter_list_free(&al);
    } else {
        cJSON_AddNullToObject(o, "stored");
    }
    mt_engine *e = s->e;
    if (!e) {
        cJSON_AddNullToObject(o, "served");
        cJSON_AddNullToObject(o, "folders");
        return send_json(s, c, o);
    }
    cJSON *sv = cJSON_AddArrayToObject(o, "served");
    int n = mt_registry_count(e->reg);
    for (int i = 0; i < n; i++) {
        mt_registry_info in;
        if (!mt_registry_get(e->reg, i, &in)) continue;
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "name", in.name);
        cJSON_AddStringToObject(a, "path", in.path);
        cJSON_AddNumberToObject(a, "version", (double)in.version);
        cJSON_AddStringToObject(a, "base_hash", in.base_hash);
        cJSON_AddNumberToObject(a, "rank", in.max_rank);
        cJSON_AddNumberToObject(a, "modules", in.n_modules);
        add_raw_json(a, "thresholds", in.thresholds_json[0] ? in.thresholds_json : NULL);
        cJSON_AddNumberToObject(a, "load_seconds", in.load_seconds);
        cJSON_AddNumberToObject(a, "requests", requests_served(e, in.name));
        cJSON_AddItemToArray(sv, a);
    }
    mt_eng_list_folders(e, add_folder, cJSON_AddArrayToObject(o, "folders"));
    return send_json(s, c, o);
}

/* ---- pairs ---- */

static int h_datasets(mt_server *s, struct MHD_Connection *c) {
    mt_store *st = NULL;
    mt_error err = {0};
    mt_status rc = open_store(s, &st, &err);
    if (rc != MT_OK) return send_store_err(s, c, rc, &err);
    mt_store_dataset_list dl = {0};
    if ((rc = mt_store_pair_datasets(st, &dl, &err)) != MT_OK) {
        mt_store_close(st);
        return send_store_err(s, c, rc, &err);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(o, "datasets");
    for (size_t i = 0; i < dl.n && rc == MT_OK; i++) {
        mt_pairs_stats ps = {0};
        if ((rc = mt_store_pairs_stats(st, dl.items[i].path, &ps, &err)) != MT_OK) break;
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "name", dl.items[i].path);
        add_str(d, "digest", dl.items[i].sha256);
        cJSON_AddNumberToObject(d, "pairs", (double)ps.n_pairs);
        cJSON_AddNumberToObject(d, "train", (double)ps.n_train);
        cJSON_AddNumberToObject(d, "eval", (double)ps.n_eval);
        cJSON_AddNumberToObject(d, "imports", (double)ps.n_imports);
        cJSON_AddNumberToObject(d, "duplicates", (double)ps.n_duplicates);
        cJSON_AddNumberToObject(d, "refused", (double)ps.n_refused);
        cJSON *f = cJSON_AddObjectToObject(d, "formats");
        for (int k = 0; k < MT_PAIR_FORMAT_COUNT; k++)
            cJSON_AddNumberToObject(f, mt_pair_format_name((mt_pair_format)k), (double)ps.n_by_format[k]);
        cJSON_AddItemToArray(a, d);
        mt_pairs_stats_free(&ps);
    }
    mt_store_dataset_list_free(&dl);
    mt_store_close(st);
    if (rc != MT_OK) {
        cJSON_Delete(o);
        return send_store_err(s, c, rc, &err);
    }
    return send_json(s, c, o);
}

static long arg_long(struct MHD_Connection *c, const char *k, long dflt, long lo, long hi, bool *ok) {
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, k);
    if (!v) return dflt;
    char *end = NULL;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi) *ok = false;
    return x;
}

/* GET /ui/api/pairs?dataset=NAME[&split=train|eval][&offset=N][&limit=N], or
 * /ui/api/pairs/export?dataset=NAME[&split=]: TRL's JSONL, the same lines `moetune pairs
 * export` writes. */
static int h_pairs(mt_server *s, struct MHD_Connection *c, bool export) {
    const char *ds = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "dataset");
    const char *split = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "split");
    bool ok = true;
    long offset = arg_long(c, "offset", 0, 0, 1L << 40, &ok);
    long limit = arg_long(c, "limit", 50, 1, 1000, &ok);
    if (!ds || !*ds) return send_err(s, c, 400, "invalid_dataset", "dataset: give the pair dataset's name");
    if (split && strcmp(split, "train") && strcmp(split, "eval"))
        return send_err(s, c, 400, "invalid_split", "split: train or eval");
    if (!ok) return send_err(s, c, 400, "invalid_range", "offset: an integer >= 0; limit: an integer in [1, 1000]");
    mt_store *st = NULL;
    mt_error err = {0};
    mt_status rc = open_store(s, &st, &err);
    if (rc != MT_OK) return send_store_err(s, c, rc, &err);
    mt_pairs_query q = {.dataset = ds, .split = split, .offset = export ? 0 : offset, .limit = export ? -1 : limit};
    mt_pair_record_list l = {0};
    int64_t total = 0, id = 0;
    if ((rc = mt_store_pairs_dataset_id(st, ds, &id, &err)) == MT_OK &&
        (rc = mt_store_pairs_count(st, id, &total, &err)) == MT_OK)
        rc = mt_store_pairs_list(st, &q, &l, &err);
    mt_store_close(st);
    if (rc != MT_OK) return send_store_err(s, c, rc, &err);
    if (export) {
        mt_eng_buf b = {0};
        mt_eng_buf_add(&b, "", 0);
        for (size_t i = 0; i < l.n; i++) {
            char *line = mt_pair_record_json(&l.items[i]);
            mt_eng_buf_add(&b, line, strlen(line));
            mt_eng_buf_add(&b, "\n", 1);
            free(line);
        }
        mt_pair_record_list_free(&l);
        int r = mt_eng_send(s, c, MT_EP_OTHER, "", 200, "application/x-ndjson; charset=utf-8", b.p, b.n);
        free(b.p);
        return r;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "dataset", ds);
    cJSON_AddNumberToObject(o, "total", (double)total);
    cJSON_AddNumberToObject(o, "offset", (double)offset);
    cJSON *a = cJSON_AddArrayToObject(o, "pairs");
    for (size_t i = 0; i < l.n; i++) {
        const mt_pair_record *r = &l.items[i];
        cJSON *p = cJSON_CreateObject();
        cJSON_AddNumberToObject(p, "id", (double)r->id);
        cJSON_AddStringToObject(p, "format", mt_pair_format_name(r->format));
        add_str(p, "prompt", r->prompt);
        add_str(p, "chosen", r->chosen);
        add_str(p, "rejected", r->rejected);
        cJSON_AddStringToObject(p, "split", r->eval ? "eval" : "train");
        add_num(p, "score", r->score);
        add_str(p, "source", r->source);
        add_str(p, "annotator", r->annotator);
        add_raw_json(p, "label", r->label_json);
        add_str(p, "file", r->file);
        if (r->line >= 0) cJSON_AddNumberToObject(p, "line", (double)r->line);
        else cJSON_AddNullToObject(p, "line");
        add_num(p, "created", r->created);
        cJSON_AddItemToArray(a, p);
    }
    mt_pair_record_list_free(&l);
    return send_json(s, c, o);
}

/* GET /ui/api/info: what the page can do here (a model to chat with, a store to show). */
static int h_info(mt_server *s, struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject();
    add_str(o, "store", s->o.ui_store);
    if (s->e) {
        cJSON_AddStringToObject(o, "model", s->e->served_name);
        cJSON_AddStringToObject(o, "base_hash", s->e->base_hash);
        add_str(o, "adapters_dir", s->e->adapters_dir[0] ? s->e->adapters_dir : NULL);
    } else {
        cJSON_AddNullToObject(o, "model");
    }
    cJSON_AddStringToObject(o, "version", MT_VERSION);
    return send_json(s, c, o);
}

/* POST /ui/api/pairs/ID/swap or /drop {"dataset": NAME[, "annotator": TEXT]}: a person's
 * correction (store/pairs_edit.c). The one place the page writes the store; behind the key and
 * the cross-origin rule like every POST. */
static int h_pair_edit(mt_server *s, struct MHD_Connection *c, int64_t id, mt_pair_edit op, const char *body,
                       size_t len) {
    cJSON *o = cJSON_ParseWithLength(body, len);
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(o, "dataset");
    const cJSON *an = cJSON_GetObjectItemCaseSensitive(o, "annotator");
    if (!cJSON_IsObject(o) || !cJSON_IsString(ds) || !*ds->valuestring || (an && !cJSON_IsString(an))) {
        cJSON_Delete(o);
        return send_err(s, c, 400, "invalid_body",
                        "the body is {\"dataset\": NAME} with an optional \"annotator\" string");
    }
    mt_store *st = NULL;
    mt_error err = {0};
    mt_status rc = open_store(s, &st, &err);
    int64_t ds_id = 0, n = 0;
    if (rc == MT_OK) rc = mt_store_pair_edit(st, ds->valuestring, id, op, an ? an->valuestring : NULL, &err);
    if (rc == MT_OK) rc = mt_store_pairs_dataset_id(st, ds->valuestring, &ds_id, &err);
    if (rc == MT_OK) rc = mt_store_pairs_count(st, ds_id, &n, &err);
    mt_store_close(st);
    if (rc != MT_OK) {
        cJSON_Delete(o);
        if (rc == MT_ERR_INVALID) return send_err(s, c, 409, "pair_conflict", "%s", err.msg);
        return send_store_err(s, c, rc, &err);
    }
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "object", "pair_edit");
    cJSON_AddStringToObject(r, "dataset", ds->valuestring);
    cJSON_AddNumberToObject(r, "id", (double)id);
    cJSON_AddStringToObject(r, "edit", op == MT_PAIR_SWAP ? "swap" : "drop");
    cJSON_AddNumberToObject(r, "pairs", (double)n);
    cJSON_Delete(o);
    return send_json(s, c, r);
}

int mt_eng_handle_ui_post(mt_server *s, struct MHD_Connection *c, const char *url, const char *body, size_t len) {
    static const char pre[] = "/ui/api/pairs/";
    int64_t id = 0;
    const char *rest = NULL;
    if (!strncmp(url, pre, sizeof pre - 1) && parse_id(url + sizeof pre - 1, &id, &rest)) {
        if (!strcmp(rest, "/swap")) return h_pair_edit(s, c, id, MT_PAIR_SWAP, body, len);
        if (!strcmp(rest, "/drop")) return h_pair_edit(s, c, id, MT_PAIR_DROP, body, len);
    }
    return send_err(s, c, 405, "method_not_allowed",
                    "POST %.200s: the workbench's JSON is read with GET; POST /ui/api/pairs/ID/swap or /drop"
                    " edits a pair",
                    url);
}

/* ---- routing within /ui ---- */

static int h_asset(mt_server *s, struct MHD_Connection *c, const char *url) {
    const char *path = !strcmp(url, "/") ? "/ui/index.html" : url;
    for (const mt_ui_asset *a = mt_ui_assets; a->path; a++)
        if (!strcmp(a->path, path)) {
            struct MHD_Response *r =
                MHD_create_response_from_buffer(a->size, (void *)a->data, MHD_RESPMEM_PERSISTENT);
            if (!r) return MHD_NO;
            MHD_add_response_header(r, "Content-Type", a->type);
            /* the page runs only its own script: an injected tag would not run even if one got in */
            MHD_add_response_header(r, "Content-Security-Policy",
                                    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                                    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
            MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
            MHD_add_response_header(r, "Cache-Control", "no-cache");
            enum MHD_Result ok = MHD_queue_response(c, 200, r);
            MHD_destroy_response(r);
            if (s->e) mt_metrics_count_request(&s->e->metrics, MT_EP_OTHER, "", 200);
            return ok;
        }
    return send_err(s, c, 404, "not_found", "no page %.200s", url);
}

int mt_eng_handle_ui(mt_server *s, struct MHD_Connection *c, const char *url) {
    static const char api[] = "/ui/api/";
    if (strncmp(url, api, sizeof api - 1)) return h_asset(s, c, url);
    const char *p = url + sizeof api - 1;
    if (!strcmp(p, "info")) return h_info(s, c);
    if (!strcmp(p, "runs")) return h_runs(s, c);
    if (!strcmp(p, "compare")) return h_compare(s, c);
    if (!strcmp(p, "adapters")) return h_adapters(s, c);
    if (!strcmp(p, "datasets")) return h_datasets(s, c);
    if (!strcmp(p, "pairs")) return h_pairs(s, c, false);
    if (!strcmp(p, "pairs/export")) return h_pairs(s, c, true);
    if (!strncmp(p, "runs/", 5)) {
        int64_t id = 0;
        const char *rest = NULL;
        if (!parse_id(p + 5, &id, &rest)) return send_err(s, c, 404, "run_not_found", "no run %.100s", p + 5);
        if (!*rest) return h_run(s, c, id);
        if (!strcmp(rest, "/stream")) return h_run_stream(s, c, id);
    }
    return send_err(s, c, 404, "not_found", "no route for GET %.200s", url);
}
