/* test_workbench.c — the workbench's JSON (/ui/api/...) and its safety rules, black-box over
 * loopback with libcurl, on a store this test fills through store.h (so every expected value
 * is one it wrote): runs with their best eval loss and every series (NaN as null), events, a
 * run's live stream growing as the test logs a step (and that step's eval apart) and ending when
 * the run completes, recipe
 * differences, pairs whose text is an HTML/JS payload coming back byte for byte, TRL export,
 * a pair swapped and dropped (hash, digest and count refreshed);
 * unknown runs and bad arguments as 4xx JSON; the page's JSON behind the API key while the page
 * itself is open; state-changing POSTs from another origin refused with 403 JSON; `moetune ui`
 * mode (no model): 503 JSON on the /v1 routes. The embedded page is checked against its source
 * files, and its script for HTML sinks. The browser half is tests/browser/test_workbench.py. */
#define _GNU_SOURCE
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef MT_NO_CURL
#include <curl/curl.h>
#endif

#include "engine/engine.h"
#include "store/store.h"

#ifndef MT_NO_CURL

static const char *const XSS_PROMPT = "<script>alert('p')</script>";
static const char *const XSS_CHOSEN = "<img src=x onerror=\"alert(1)\"> & \"quotes\"";
static const char *const XSS_REJECTED = "</td></tr><b>bold</b>";
static const char *const RECIPE_A = "name: a\nmethod: sft\ntrain:\n  lr: 0.001\n";
static const double LOSS_A[] = {3.5, 3.1, NAN, 2.6, 2.4};
static const double EVAL_A[] = {3.3, 2.9}; /* at steps 2 and 4 */

static char root[4096], store_path[4200];
static mt_server *g_open, *g_keyed; /* no key; with key "sekret" */
static int64_t g_run_a, g_run_b;

static void must(mt_status st, const mt_error *err) {
    if (st != MT_OK) fail_msg("%s", err->msg);
}

static void fill_store(void) {
    mt_error err = {0};
    mt_store *s = NULL;
    must(mt_store_open(&s, store_path, true, &err), &err);
    mt_store_run_info a = {.name = "<b>run-a</b>", .method = "sft", .recipe_text = RECIPE_A, .base_path = "/m/base",
                           .base_hash = "abc123", .seed = 1,
                           .config_json = "{\"train\":{\"lr\":0.001,\"steps\":5},\"adapter\":{\"r\":4}}"};
    must(mt_store_run_begin(s, &a, &g_run_a, &err), &err);
    for (int i = 0; i < 5; i++) {
        mt_metric m[2] = {{"loss", LOSS_A[i]}, {"eval_loss", i == 1 ? EVAL_A[0] : EVAL_A[1]}};
        must(mt_store_log_metrics(s, g_run_a, i + 1, m, i == 1 || i == 3 ? 2 : 1, &err), &err);
    }
    must(mt_store_log_event(s, g_run_a, 5, "checkpoint", "{\"path\":\"<i>ck</i>\"}", &err), &err);
    mt_store_adapter_info ad = {.path = "/x/adapters/a", .run_id = g_run_a, .base_hash = "abc123", .rank = 4,
                                .alpha = 8, .targets_json = "[\"q_proj\"]",
                                .thresholds_json = "{\"dap_threshold\":0.25}"};
    int64_t ad_id = 0;
    must(mt_store_adapter_add(s, &ad, &ad_id, &err), &err);
    must(mt_store_run_set_status(s, g_run_a, MT_RUN_COMPLETED, NULL, &err), &err);
    mt_store_run_info b = {.name = "run-b", .method = "dpo", .base_path = "/m/base", .seed = 2,
                           .config_json = "{\"train\":{\"lr\":0.002,\"steps\":5},\"adapter\":{\"r\":4}}"};
    must(mt_store_run_begin(s, &b, &g_run_b, &err), &err); /* stays running: this process is alive */
    mt_metric m = {"loss", 1.0};
    must(mt_store_log_metrics(s, g_run_b, 1, &m, 1, &err), &err);

    char jsonl[4300];
    snprintf(jsonl, sizeof jsonl, "%s/xss.jsonl", root);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "prompt", XSS_PROMPT);
    cJSON_AddStringToObject(o, "chosen", XSS_CHOSEN);
    cJSON_AddStringToObject(o, "rejected", XSS_REJECTED);
    cJSON_AddStringToObject(o, "source", "<svg onload=alert(2)>");
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    FILE *f = fopen(jsonl, "w");
    assert_non_null(f);
    fprintf(f, "%s\n{\"prompt\":\"p2\",\"chosen\":\"good\",\"rejected\":\"bad\",\"chosen_model\":\"m1\","
            "\"rejected_model\":\"m2\"}\n",
            line);
    fclose(f);
    cJSON_free(line);
    mt_pairs_import_opts io = {.dataset = "payloads"};
    mt_pairs_import_report rep = {0};
    must(mt_store_pairs_import(s, jsonl, &io, &rep, &err), &err);
    assert_int_equal(rep.n_added, 2);
    mt_pairs_import_report_free(&rep);
    mt_store_close(s);
}

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("workbench"));
    snprintf(store_path, sizeof store_path, "%s/moetune.db", root);
    unlink(store_path);
    fill_store();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    mt_error err = {0};
    mt_server_opts o = {.port = 0, .ui_store = store_path};
    if (mt_server_start(&g_open, NULL, &o, &err) != MT_OK) fail_msg("server: %s", err.msg);
    o.api_key = "sekret";
    if (mt_server_start(&g_keyed, NULL, &o, &err) != MT_OK) fail_msg("server: %s", err.msg);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    mt_server_stop(g_open);
    mt_server_stop(g_keyed);
    curl_global_cleanup();
    return 0;
}

/* ---- the client ---- */

typedef struct resp {
    long status;
    char *body;
    size_t len;
    char ctype[128], csp[512];
} resp;

static size_t on_data(char *p, size_t size, size_t n, void *user) {
    resp *r = user;
    size_t k = size * n;
    r->body = mt_xrealloc(r->body, r->len + k + 1);
    memcpy(r->body + r->len, p, k);
    r->len += k;
    r->body[r->len] = 0;
    return k;
}

static size_t on_header(char *p, size_t size, size_t n, void *user) {
    resp *r = user;
    size_t k = size * n;
    char line[600];
    snprintf(line, sizeof line, "%.*s", (int)(k < sizeof line - 1 ? k : sizeof line - 1), p);
    line[strcspn(line, "\r\n")] = 0;
    if (!strncasecmp(line, "Content-Type: ", 14)) snprintf(r->ctype, sizeof r->ctype, "%s", line + 14);
    if (!strncasecmp(line, "Content-Security-Policy: ", 25)) snprintf(r->csp, sizeof r->csp, "%s", line + 25);
    return k;
}

/* extra: one more header line, or NULL */
static resp http(const mt_server *s, const char *method, const char *path, const char *body, const char *key,
                 const char *extra) {
    resp r = {0};
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", mt_server_port(s), path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    char line[300];
    if (key) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", key);
        h = curl_slist_append(h, line);
    }
    if (extra) h = curl_slist_append(h, extra);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) fail_msg("%s %s: %s", method, path, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    if (!r.body) r.body = mt_xstrdup("");
    return r;
}

static cJSON *get_json(const mt_server *s, const char *path, const char *key, long want) {
    resp r = http(s, "GET", path, NULL, key, NULL);
    if (r.status != want) fail_msg("GET %s: status %ld, wanted %ld: %s", path, r.status, want, r.body);
    if (strcmp(r.ctype, "application/json")) fail_msg("GET %s: Content-Type %s", path, r.ctype);
    cJSON *o = cJSON_Parse(r.body);
    if (!o) fail_msg("GET %s: not JSON: %s", path, r.body);
    free(r.body);
    return o;
}

/* A 4xx/5xx answer is OpenAI's error object with this code. */
static void assert_error(const mt_server *s, const char *method, const char *path, const char *body, const char *key,
                         const char *extra, long status, const char *code) {
    resp r = http(s, method, path, body, key, extra);
    if (r.status != status) fail_msg("%s %s: status %ld, wanted %ld: %s", method, path, r.status, status, r.body);
    assert_string_equal(r.ctype, "application/json");
    cJSON *o = cJSON_Parse(r.body);
    if (!o) fail_msg("%s %s: not JSON: %s", method, path, r.body);
    const cJSON *e = cJSON_GetObjectItem(o, "error");
    assert_true(cJSON_IsString(cJSON_GetObjectItem(e, "message")));
    const cJSON *c = cJSON_GetObjectItem(e, "code");
    if (!cJSON_IsString(c) || strcmp(c->valuestring, code))
        fail_msg("%s %s: code %s, wanted %s", method, path, cJSON_IsString(c) ? c->valuestring : "(none)", code);
    cJSON_Delete(o);
    free(r.body);
}

static const cJSON *item(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v) fail_msg("no \"%s\"", k);
    return v;
}

static const cJSON *find_run(const cJSON *runs, int64_t id) {
    const cJSON *r;
    cJSON_ArrayForEach(r, runs) if ((int64_t)item(r, "id")->valuedouble == id) return r;
    fail_msg("run %lld not listed", (long long)id);
    return NULL;
}

/* ---- runs ---- */

static void runs_list(void **state) {
    (void)state;
    cJSON *o = get_json(g_open, "/ui/api/runs", NULL, 200);
    const cJSON *runs = item(o, "runs");
    assert_int_equal(cJSON_GetArraySize(runs), 2);
    const cJSON *a = find_run(runs, g_run_a), *b = find_run(runs, g_run_b);
    assert_string_equal(item(a, "name")->valuestring, "<b>run-a</b>"); /* text as stored: the page escapes */
    assert_string_equal(item(a, "method")->valuestring, "sft");
    assert_string_equal(item(a, "status")->valuestring, "completed");
    assert_string_equal(item(b, "status")->valuestring, "running");
    assert_int_equal((int)item(a, "last_step")->valuedouble, 5);
    double best = fmin(EVAL_A[0], EVAL_A[1]);
    assert_true(fabs(item(a, "best_eval_loss")->valuedouble - best) < 1e-12);
    assert_true(cJSON_IsNull(item(b, "best_eval_loss")));
    assert_true(fabs(item(a, "last_loss")->valuedouble - LOSS_A[4]) < 1e-12);
    assert_true(item(a, "duration")->valuedouble >= 0);
    assert_null(cJSON_GetObjectItem(a, "recipe_text")); /* the list stays small */
    cJSON_Delete(o);
}

static void run_page(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "/ui/api/runs/%lld", (long long)g_run_a);
    cJSON *o = get_json(g_open, path, NULL, 200);
    assert_string_equal(item(o, "recipe_text")->valuestring, RECIPE_A);
    assert_true(fabs(item(item(item(o, "config"), "train"), "lr")->valuedouble - 0.001) < 1e-15);
    const cJSON *loss = item(item(o, "metrics"), "loss");
    assert_int_equal(cJSON_GetArraySize(loss), 5);
    for (int i = 0; i < 5; i++) {
        const cJSON *p = cJSON_GetArrayItem(loss, i);
        assert_int_equal((int)cJSON_GetArrayItem(p, 0)->valuedouble, i + 1);
        const cJSON *v = cJSON_GetArrayItem(p, 1);
        if (isnan(LOSS_A[i])) assert_true(cJSON_IsNull(v)); /* NaN is not JSON */
        else assert_true(fabs(v->valuedouble - LOSS_A[i]) < 1e-12);
    }
    const cJSON *ev = item(item(o, "metrics"), "eval_loss");
    assert_int_equal(cJSON_GetArraySize(ev), 2);
    assert_int_equal((int)cJSON_GetArrayItem(cJSON_GetArrayItem(ev, 1), 0)->valuedouble, 4);
    const cJSON *e0 = cJSON_GetArrayItem(item(o, "events"), 0);
    assert_string_equal(item(e0, "kind")->valuestring, "checkpoint");
    assert_string_equal(item(item(e0, "detail"), "path")->valuestring, "<i>ck</i>");
    const cJSON *ad = cJSON_GetArrayItem(item(o, "adapters"), 0);
    assert_int_equal((int)item(ad, "rank")->valuedouble, 4);
    assert_true(fabs(item(item(ad, "thresholds"), "dap_threshold")->valuedouble - 0.25) < 1e-12);
    cJSON_Delete(o);

    assert_error(g_open, "GET", "/ui/api/runs/999", NULL, NULL, NULL, 404, "not_found");
    assert_error(g_open, "GET", "/ui/api/runs/abc", NULL, NULL, NULL, 404, "run_not_found");
    assert_error(g_open, "GET", "/ui/api/runs/1/nope", NULL, NULL, NULL, 404, "not_found");
    assert_error(g_open, "GET", "/ui/api/runs/999/stream", NULL, NULL, NULL, 404, "not_found");
    assert_error(g_open, "GET", "/ui/api/nothing", NULL, NULL, NULL, 404, "not_found");
    assert_error(g_open, "POST", "/ui/api/runs", "{}", NULL, NULL, 405, "method_not_allowed");
}

static void compare(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "/ui/api/compare?runs=%lld,%lld", (long long)g_run_a, (long long)g_run_b);
    cJSON *o = get_json(g_open, path, NULL, 200);
    assert_int_equal(cJSON_GetArraySize(item(o, "runs")), 2);
    const cJSON *d, *diffs = item(o, "differences");
    assert_int_equal(cJSON_GetArraySize(diffs), 1); /* lr only: steps and r are the same */
    d = cJSON_GetArrayItem(diffs, 0);
    assert_string_equal(item(d, "key")->valuestring, "$.train.lr");
    assert_true(fabs(atof(item(d, "first")->valuestring) - 0.001) < 1e-15);
    assert_true(fabs(atof(item(d, "this")->valuestring) - 0.002) < 1e-15);
    assert_int_equal((int64_t)item(d, "run")->valuedouble, g_run_b);
    cJSON_Delete(o);
    assert_error(g_open, "GET", "/ui/api/compare?runs=1", NULL, NULL, NULL, 400, "invalid_runs");
    assert_error(g_open, "GET", "/ui/api/compare?runs=1,x", NULL, NULL, NULL, 400, "invalid_runs");
    assert_error(g_open, "GET", "/ui/api/compare", NULL, NULL, NULL, 400, "invalid_runs");
    assert_error(g_open, "GET", "/ui/api/compare?runs=1,77", NULL, NULL, NULL, 404, "not_found");
}

/* ---- the live stream: an event at once, one more when a step is logged, the end on completion ---- */

typedef struct sse {
    char *buf;
    size_t len;
    int events;       /* "data:" blocks seen */
    int phase;        /* 0: waiting for the first; 1: logged step 2; 2: logged step 2's eval apart;
                       * 3: completed, waiting for the end */
    bool saw_step2, saw_eval2, saw_end;
    char status[32];
} sse;

static void log_or_finish(int phase) {
    mt_error err = {0};
    mt_store *s = NULL;
    must(mt_store_open(&s, store_path, false, &err), &err);
    if (phase == 0) {
        mt_metric m[2] = {{"loss", 0.75}, {"rewards/margins", 0.5}};
        must(mt_store_log_metrics(s, g_run_b, 2, m, 2, &err), &err);
    } else if (phase == 1) {
        /* the same step in a later transaction (as an eval after its train step) still arrives */
        mt_metric m = {"eval_loss", 0.5};
        must(mt_store_log_metrics(s, g_run_b, 2, &m, 1, &err), &err);
    } else {
        must(mt_store_run_set_status(s, g_run_b, MT_RUN_COMPLETED, NULL, &err), &err);
    }
    mt_store_close(s);
}

static size_t on_sse(char *p, size_t size, size_t n, void *user) {
    sse *x = user;
    size_t k = size * n;
    x->buf = mt_xrealloc(x->buf, x->len + k + 1);
    memcpy(x->buf + x->len, p, k);
    x->len += k;
    x->buf[x->len] = 0;
    char *end;
    while ((end = strstr(x->buf, "\n\n"))) {
        *end = 0;
        if (strstr(x->buf, "event: end")) x->saw_end = true;
        else if (!strncmp(x->buf, "data: ", 6)) {
            cJSON *o = cJSON_Parse(x->buf + 6);
            assert_non_null(o);
            x->events++;
            snprintf(x->status, sizeof x->status, "%s", item(o, "status")->valuestring);
            const cJSON *loss = cJSON_GetObjectItem(item(o, "metrics"), "loss");
            if (x->events == 1) {
                /* the first event has everything so far */
                assert_int_equal(cJSON_GetArraySize(loss), 1);
            } else if (!loss && cJSON_GetObjectItem(item(o, "metrics"), "eval_loss")) {
                const cJSON *ev = cJSON_GetObjectItem(item(o, "metrics"), "eval_loss");
                assert_int_equal(cJSON_GetArraySize(ev), 1);
                assert_int_equal((int)cJSON_GetArrayItem(cJSON_GetArrayItem(ev, 0), 0)->valuedouble, 2);
                assert_true(x->saw_step2);
                x->saw_eval2 = true;
            } else if (loss) {
                /* later ones only what is new: step 2 alone, with its value */
                assert_int_equal(cJSON_GetArraySize(loss), 1);
                const cJSON *pt = cJSON_GetArrayItem(loss, 0);
                assert_int_equal((int)cJSON_GetArrayItem(pt, 0)->valuedouble, 2);
                assert_true(fabs(cJSON_GetArrayItem(pt, 1)->valuedouble - 0.75) < 1e-12);
                assert_non_null(cJSON_GetObjectItem(item(o, "metrics"), "rewards/margins"));
                x->saw_step2 = true;
            }
            cJSON_Delete(o);
        }
        size_t used = (size_t)(end + 2 - x->buf);
        memmove(x->buf, end + 2, x->len - used + 1);
        x->len -= used;
        if (x->phase == 0 && x->events >= 1) log_or_finish(x->phase++);
        else if (x->phase == 1 && x->saw_step2) log_or_finish(x->phase++);
        else if (x->phase == 2 && x->saw_eval2) log_or_finish(x->phase++);
    }
    return k;
}

static void stream(void **state) {
    (void)state;
    sse x = {0};
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/ui/api/runs/%lld/stream", mt_server_port(g_open),
             (long long)g_run_b);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_sse);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    CURLcode rc = curl_easy_perform(c); /* returns when the server ends the stream */
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) fail_msg("stream: %s", curl_easy_strerror(rc));
    assert_int_equal(status, 200);
    assert_true(x.saw_step2);
    assert_true(x.saw_eval2);
    assert_true(x.saw_end);
    assert_string_equal(x.status, "completed");
    free(x.buf);
}

/* ---- pairs ---- */

static void pairs(void **state) {
    (void)state;
    cJSON *o = get_json(g_open, "/ui/api/datasets", NULL, 200);
    const cJSON *d = cJSON_GetArrayItem(item(o, "datasets"), 0);
    assert_string_equal(item(d, "name")->valuestring, "payloads");
    assert_int_equal((int)item(d, "pairs")->valuedouble, 2);
    assert_int_equal((int)item(item(d, "formats"), "standard")->valuedouble, 2);
    cJSON_Delete(o);

    o = get_json(g_open, "/ui/api/pairs?dataset=payloads&limit=1", NULL, 200);
    assert_int_equal((int)item(o, "total")->valuedouble, 2);
    assert_int_equal(cJSON_GetArraySize(item(o, "pairs")), 1);
    const cJSON *p = cJSON_GetArrayItem(item(o, "pairs"), 0);
    assert_string_equal(item(p, "prompt")->valuestring, XSS_PROMPT); /* byte for byte */
    assert_string_equal(item(p, "chosen")->valuestring, XSS_CHOSEN);
    assert_string_equal(item(p, "rejected")->valuestring, XSS_REJECTED);
    assert_string_equal(item(p, "source")->valuestring, "<svg onload=alert(2)>");
    assert_int_equal((int)item(p, "line")->valuedouble, 1);
    cJSON_Delete(o);
    o = get_json(g_open, "/ui/api/pairs?dataset=payloads&offset=1", NULL, 200);
    assert_string_equal(item(cJSON_GetArrayItem(item(o, "pairs"), 0), "prompt")->valuestring, "p2");
    cJSON_Delete(o);

    resp r = http(g_open, "GET", "/ui/api/pairs/export?dataset=payloads", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    char *nl = strchr(r.body, '\n');
    assert_non_null(nl);
    *nl = 0;
    cJSON *line = cJSON_Parse(r.body);
    assert_non_null(line);
    assert_string_equal(item(line, "prompt")->valuestring, XSS_PROMPT);
    assert_string_equal(item(line, "chosen")->valuestring, XSS_CHOSEN);
    cJSON_Delete(line);
    line = cJSON_Parse(nl + 1);
    assert_non_null(line);
    assert_string_equal(item(line, "prompt")->valuestring, "p2");
    assert_string_equal(item(line, "chosen")->valuestring, "good");
    assert_string_equal(item(line, "rejected")->valuestring, "bad");
    assert_string_equal(item(line, "chosen_model")->valuestring, "m1");
    cJSON_Delete(line);
    free(r.body);

    assert_error(g_open, "GET", "/ui/api/pairs", NULL, NULL, NULL, 400, "invalid_dataset");
    assert_error(g_open, "GET", "/ui/api/pairs?dataset=nope", NULL, NULL, NULL, 404, "not_found");
    assert_error(g_open, "GET", "/ui/api/pairs?dataset=payloads&split=both", NULL, NULL, NULL, 400, "invalid_split");
    assert_error(g_open, "GET", "/ui/api/pairs?dataset=payloads&limit=0", NULL, NULL, NULL, 400, "invalid_range");
    assert_error(g_open, "GET", "/ui/api/pairs?dataset=payloads&offset=-1", NULL, NULL, NULL, 400, "invalid_range");
}

/* Swap and drop, checked against the store read back: the new order, the hash of the new order
 * (mt_store_pair_hash), the digest and count refreshed; errors with nothing written. */
static void pair_edits(void **state) {
    (void)state;
    mt_error err = {0};
    mt_store *s = NULL;
    must(mt_store_open(&s, store_path, false, &err), &err);
    mt_pair_record_list l = {0};
    mt_pairs_query q = {.dataset = "payloads", .limit = -1};
    must(mt_store_pairs_list(s, &q, &l, &err), &err);
    assert_int_equal(l.n, 2);
    int64_t id = l.items[1].id;
    char want_hash[65], path[128];
    mt_store_pair_hash("p2", "bad", "good", want_hash);
    mt_pair_record_list_free(&l);
    mt_store_dataset_list dl = {0};
    must(mt_store_pair_datasets(s, &dl, &err), &err);
    char *digest0 = mt_xstrdup(dl.items[0].sha256);
    mt_store_dataset_list_free(&dl);

    snprintf(path, sizeof path, "/ui/api/pairs/%lld/swap", (long long)id);
    resp r = http(g_open, "POST", path, "{\"dataset\":\"payloads\"}", NULL, NULL);
    assert_int_equal(r.status, 200);
    cJSON *o = cJSON_Parse(r.body);
    assert_int_equal((int)item(o, "pairs")->valuedouble, 2);
    cJSON_Delete(o);
    free(r.body);
    must(mt_store_pairs_list(s, &q, &l, &err), &err);
    assert_string_equal(l.items[1].chosen, "bad");
    assert_string_equal(l.items[1].rejected, "good");
    assert_string_equal(l.items[1].hash, want_hash);
    cJSON *lab = cJSON_Parse(l.items[1].label_json);
    assert_string_equal(item(lab, "relabelled")->valuestring, "swapped");
    assert_string_equal(item(lab, "chosen_model")->valuestring, "m2"); /* the label follows the texts */
    assert_string_equal(item(lab, "rejected_model")->valuestring, "m1");
    cJSON_Delete(lab);
    mt_pair_record_list_free(&l);
    must(mt_store_pair_datasets(s, &dl, &err), &err);
    assert_string_not_equal(dl.items[0].sha256, digest0);
    mt_store_dataset_list_free(&dl);
    /* swapping back gives the first content, and so the first digest */
    r = http(g_open, "POST", path, "{\"dataset\":\"payloads\"}", NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    must(mt_store_pair_datasets(s, &dl, &err), &err);
    assert_string_equal(dl.items[0].sha256, digest0);
    mt_store_dataset_list_free(&dl);

    assert_error(g_open, "POST", path, "{}", NULL, NULL, 400, "invalid_body");
    assert_error(g_open, "POST", path, "not json", NULL, NULL, 400, "invalid_body");
    assert_error(g_open, "POST", path, "{\"dataset\":\"nope\"}", NULL, NULL, 404, "not_found");
    assert_error(g_open, "POST", "/ui/api/pairs/9999/drop", "{\"dataset\":\"payloads\"}", NULL, NULL, 404,
                 "not_found");
    assert_error(g_keyed, "POST", path, "{\"dataset\":\"payloads\"}", NULL, NULL, 401, "invalid_api_key");
    assert_error(g_keyed, "POST", path, "{\"dataset\":\"payloads\"}", "sekret", "Origin: http://evil.example", 403,
                 "cross_origin");

    snprintf(path, sizeof path, "/ui/api/pairs/%lld/drop", (long long)id);
    r = http(g_open, "POST", path, "{\"dataset\":\"payloads\"}", NULL, NULL);
    assert_int_equal(r.status, 200);
    o = cJSON_Parse(r.body);
    assert_int_equal((int)item(o, "pairs")->valuedouble, 1);
    cJSON_Delete(o);
    free(r.body);
    int64_t ds = 0, n = 0;
    must(mt_store_pairs_dataset_id(s, "payloads", &ds, &err), &err);
    must(mt_store_pairs_count(s, ds, &n, &err), &err);
    assert_int_equal(n, 1);
    must(mt_store_pair_datasets(s, &dl, &err), &err);
    assert_int_equal(dl.items[0].n_docs, 1);
    mt_store_dataset_list_free(&dl);
    assert_error(g_open, "POST", path, "{\"dataset\":\"payloads\"}", NULL, NULL, 404, "not_found");
    free(digest0);
    mt_store_close(s);
}

static void adapters_without_model(void **state) {
    (void)state;
    cJSON *o = get_json(g_open, "/ui/api/adapters", NULL, 200);
    assert_int_equal(cJSON_GetArraySize(item(o, "stored")), 1);
    assert_string_equal(item(cJSON_GetArrayItem(item(o, "stored"), 0), "path")->valuestring, "/x/adapters/a");
    assert_true(cJSON_IsNull(item(o, "served")));
    cJSON_Delete(o);
    o = get_json(g_open, "/ui/api/info", NULL, 200);
    assert_true(cJSON_IsNull(item(o, "model")));
    assert_string_equal(item(o, "store")->valuestring, store_path);
    cJSON_Delete(o);
    /* no model: the /v1 routes say so, /health still answers */
    assert_error(g_open, "GET", "/v1/models", NULL, NULL, NULL, 503, "no_model");
    assert_error(g_open, "POST", "/v1/chat/completions", "{}", NULL, NULL, 503, "no_model");
    resp r = http(g_open, "GET", "/health", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
}

/* ---- safety ---- */

static void api_key(void **state) {
    (void)state;
    assert_error(g_keyed, "GET", "/ui/api/runs", NULL, NULL, NULL, 401, "invalid_api_key");
    assert_error(g_keyed, "GET", "/ui/api/runs", NULL, "sekreT", NULL, 401, "invalid_api_key");
    assert_error(g_keyed, "GET", "/ui/api/runs/1/stream", NULL, NULL, NULL, 401, "invalid_api_key");
    assert_error(g_keyed, "POST", "/v1/feedback", "{}", NULL, NULL, 401, "invalid_api_key");
    cJSON *o = get_json(g_keyed, "/ui/api/runs", "sekret", 200);
    assert_int_equal(cJSON_GetArraySize(item(o, "runs")), 2);
    cJSON_Delete(o);
    /* the page itself is open, so that it can ask for the key */
    resp r = http(g_keyed, "GET", "/", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.ctype, "text/html; charset=utf-8");
    assert_non_null(strstr(r.csp, "script-src 'self'"));
    assert_null(strstr(r.csp, "unsafe-inline"));
    free(r.body);
}

static void cross_origin(void **state) {
    (void)state;
    char same[128];
    snprintf(same, sizeof same, "Origin: http://127.0.0.1:%d", mt_server_port(g_keyed));
    const char *body = "{\"chosen_id\":\"a\",\"rejected_id\":\"b\"}";
    /* refused before the key is looked at: the right key does not help a foreign page */
    assert_error(g_keyed, "POST", "/v1/feedback", body, "sekret", "Origin: http://evil.example", 403, "cross_origin");
    assert_error(g_keyed, "POST", "/v1/load_lora_adapter", body, "sekret", "Sec-Fetch-Site: cross-site", 403,
                 "cross_origin");
    assert_error(g_keyed, "POST", "/v1/unload_lora_adapter", body, "sekret", "Sec-Fetch-Site: same-site", 403,
                 "cross_origin");
    assert_error(g_keyed, "POST", "/v1/feedback", body, "sekret", "Origin: null", 403, "cross_origin");
    char port_off[128];
    snprintf(port_off, sizeof port_off, "Origin: http://127.0.0.1:%d", mt_server_port(g_keyed) + 1);
    assert_error(g_keyed, "POST", "/v1/feedback", body, "sekret", port_off, 403, "cross_origin");
    /* the server's own page, and clients that are not browsers, pass on to the route (here: no model) */
    assert_error(g_keyed, "POST", "/v1/feedback", body, "sekret", same, 503, "no_model");
    assert_error(g_keyed, "POST", "/v1/feedback", body, "sekret", "Sec-Fetch-Site: same-origin", 503, "no_model");
    assert_error(g_keyed, "POST", "/v1/feedback", body, "sekret", NULL, 503, "no_model");
    /* reads are not state-changing: a GET with a foreign Origin is answered (the browser keeps the
     * answer from the foreign page, as no CORS header allows it) */
    resp r = http(g_keyed, "GET", "/ui/api/runs", NULL, "sekret", "Origin: http://evil.example");
    assert_int_equal(r.status, 200);
    free(r.body);
}

/* The embedded files are the source files, and the script has no HTML sink: data goes in as
 * text only (textContent / text nodes). */
static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = mt_xmalloc((size_t)len + 1);
    assert_int_equal(fread(p, 1, (size_t)len, f), (size_t)len);
    p[len] = 0;
    fclose(f);
    *n = (size_t)len;
    return p;
}

static void assets(void **state) {
    (void)state;
    static const char *const files[][2] = {{"index.html", "text/html; charset=utf-8"},
                                           {"app.js", "text/javascript; charset=utf-8"},
                                           {"app.css", "text/css; charset=utf-8"}};
    for (size_t i = 0; i < 3; i++) {
        char src[4200], path[128];
        snprintf(src, sizeof src, "%s/../../engine/ui/%s", mt_test_fixture(""), files[i][0]);
        snprintf(path, sizeof path, "/ui/%s", files[i][0]);
        size_t n = 0;
        char *want = slurp(src, &n);
        resp r = http(g_open, "GET", path, NULL, NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.ctype, files[i][1]);
        assert_int_equal(r.len, n);
        assert_memory_equal(r.body, want, n);
        static const char *const sinks[] = {"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                                            "eval(", "new Function"};
        for (size_t k = 0; i == 1 && k < sizeof sinks / sizeof sinks[0]; k++)
            if (strstr(want, sinks[k])) fail_msg("app.js uses %s", sinks[k]);
        free(want);
        free(r.body);
    }
    assert_error(g_open, "GET", "/ui/nope.js", NULL, NULL, NULL, 404, "not_found");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(runs_list),   cmocka_unit_test(run_page),
        cmocka_unit_test(compare),     cmocka_unit_test(pairs),
        cmocka_unit_test(pair_edits), /* after pairs: it drops the second pair */
        cmocka_unit_test(adapters_without_model), cmocka_unit_test(api_key),
        cmocka_unit_test(cross_origin), cmocka_unit_test(assets),
        cmocka_unit_test(stream), /* last: it completes run b */
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

#else

static void skipped(void **state) {
    (void)state;
    skip();
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(skipped)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif
