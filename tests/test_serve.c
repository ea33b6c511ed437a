/* test_serve.c — the engine and HTTP server, black-box over loopback with libcurl: greedy output
 * byte-identical to `moetune generate` (base and adapter), streaming equal to non-streaming,
 * eight adapters at once each equal to their solo output, n samples equal to single requests
 * with seed + j, preemption that changes no token, an adapter replaced while a request on it
 * is in flight, load/unload/watch/eviction, path confinement, the API key, every bad input's
 * 4xx with the server still serving, disconnects that free their sequences, Prometheus text,
 * requests recorded in the store, and DAP and adaptive expert counts: bad values, the
 * threshold that changes nothing, and the precedence request > adapter metadata > server. */
#define _GNU_SOURCE
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MT_NO_CURL
#include <curl/curl.h>
#endif

#include "engine/engine.h"
#include "model/model.h"
#include "peft/lora.h"
#include "store/store.h"

#ifndef MT_NO_CURL

#define N_ADAPTERS 8

static char root[4096], base_dir[4200], adapters_dir[4200], foreign_dir[4200], outside_dir[4200], store_path[4200];
static char dap_adapters_dir[4200];
static char base_hash[65];
static mt_backend *g_be;
static mt_engine *g_e;
static mt_server *g_s;
static int g_port;
static int g_threads;

/* ---- fixtures ---- */

/* A rank-r LoRA on every linear of m, B random so that it changes what the model says. */
static void write_adapter_meta(mt_model *m, const char *dir, uint64_t seed, const char *hash, const char *thresholds) {
    mt_error err = {0};
    static const char *const all[] = {"all-linear"};
    mt_lora_config c;
    mt_lora_config_default(&c);
    c.r = 4;
    c.alpha = 8;
    c.targets = all;
    c.n_targets = 1;
    c.seed = seed;
    mt_lora *l = NULL;
    if (mt_lora_attach(&l, m, &c, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_rng rng;
    mt_rng_seed(&rng, seed * 7 + 1);
    for (int t = 1; t < mt_lora_tensor_count(l); t += 2) {
        mt_lora_tensor *lt = mt_lora_tensor_at(l, t);
        for (int64_t k = 0; k < lt->numel; k++) lt->data[k] = 0.3f * mt_rng_normal(&rng);
    }
    mt_lora_meta meta = {0};
    snprintf(meta.base_hash, sizeof meta.base_hash, "%s", hash);
    meta.thresholds_json = (char *)thresholds; /* as the trainer writes it: {"dap_threshold":0.31,...} */
    if (mt_lora_save_peft(l, dir, &meta, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_lora_free(l);
}

static void write_adapter(mt_model *m, const char *dir, uint64_t seed, const char *hash) {
    write_adapter_meta(m, dir, seed, hash, NULL);
}

static void log_quiet(void *user, const char *line) {
    (void)user;
    if (getenv("MT_TEST_VERBOSE")) fprintf(stderr, "  [engine] %s\n", line);
}

static void start(mt_engine **e, mt_server **s, int *port, const mt_engine_opts *eo, const char *api_key) {
    mt_error err = {0};
    if (mt_engine_init(e, g_be, eo, &err) != MT_OK) fail_msg("engine: %s", err.msg);
    mt_server_opts so = {.port = 0, .api_key = api_key, .max_body_bytes = 64 * 1024};
    if (mt_server_start(s, *e, &so, &err) != MT_OK) fail_msg("server: %s", err.msg);
    *port = mt_server_port(*s);
}

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("serve"));
    snprintf(base_dir, sizeof base_dir, "%s/base", root);
    snprintf(adapters_dir, sizeof adapters_dir, "%s/adapters", root);
    snprintf(foreign_dir, sizeof foreign_dir, "%s/foreign-base", root);
    snprintf(outside_dir, sizeof outside_dir, "%s/outside", root);
    snprintf(store_path, sizeof store_path, "%s/served.db", root);
    snprintf(dap_adapters_dir, sizeof dap_adapters_dir, "%s/dap-adapters", root);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), base_dir);
    if (rc == 0) {
        free(out);
        out = NULL;
        rc = mt_test_run_cli(&out, "init --preset tiny --seed 4 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), foreign_dir);
    }
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    if (rc != 0) return -1;
    mt_error err = {0};
    /* OMP_NUM_THREADS=1 under ThreadSanitizer, which cannot see OpenMP's barriers */
    const char *omp = getenv("OMP_NUM_THREADS");
    g_threads = omp && atoi(omp) > 0 ? atoi(omp) : 2;
    if (mt_backend_init(&g_be, MT_BACKEND_CPU, g_threads, &err) != MT_OK) return -1;
    mt_model *m = NULL, *fm = NULL;
    if (mt_model_load(&m, base_dir, g_be, &err) != MT_OK) return -1;
    mt_model_content_hash(m, base_hash);
    mt_mkdirs(adapters_dir, &err);
    mt_mkdirs(outside_dir, &err);
    for (int k = 0; k < N_ADAPTERS; k++) {
        char dir[4400];
        snprintf(dir, sizeof dir, "%s/ad%d", adapters_dir, k);
        write_adapter(m, dir, 100 + (uint64_t)k, base_hash);
    }
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/swap", adapters_dir);
    write_adapter(m, dir, 200, base_hash);
    snprintf(dir, sizeof dir, "%s/escapee", outside_dir);
    write_adapter(m, dir, 300, base_hash);
    /* adapters whose metadata carries a DAP threshold (the trainer's thresholds_json), and one without */
    mt_mkdirs(dap_adapters_dir, &err);
    snprintf(dir, sizeof dir, "%s/meta-one", dap_adapters_dir);
    write_adapter_meta(m, dir, 500, base_hash, "{\"dap_threshold\":1.0,\"base\":0.5,\"max_entropy_bits\":4.5}");
    snprintf(dir, sizeof dir, "%s/meta-zero", dap_adapters_dir);
    write_adapter_meta(m, dir, 501, base_hash, "{\"dap_threshold\":0,\"base\":0.5}");
    snprintf(dir, sizeof dir, "%s/nometa", dap_adapters_dir);
    write_adapter(m, dir, 502, base_hash);
    /* and an adaptive-k threshold (the trainer's "experts"): one expert per token, and top_k */
    snprintf(dir, sizeof dir, "%s/experts-tiny", dap_adapters_dir);
    write_adapter_meta(m, dir, 503, base_hash, "{\"dap_threshold\":0,\"experts\":0.000001}");
    snprintf(dir, sizeof dir, "%s/experts-one", dap_adapters_dir);
    write_adapter_meta(m, dir, 504, base_hash, "{\"experts\":1}");
    /* made for another base: refused by its recorded hash */
    if (mt_model_load(&fm, foreign_dir, g_be, &err) != MT_OK) return -1;
    char fh[65];
    mt_model_content_hash(fm, fh);
    snprintf(dir, sizeof dir, "%s/other-base", adapters_dir);
    write_adapter(fm, dir, 400, fh);
    mt_model_free(fm);
    mt_model_free(m);
    /* a symlink out of the adapters folder */
    char link[4400];
    snprintf(link, sizeof link, "%s/sneaky", adapters_dir);
    snprintf(dir, sizeof dir, "%s/escapee", outside_dir);
    if (symlink(dir, link) != 0) return -1;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    mt_engine_opts eo = {.model_dir = base_dir,
                         .adapters_dir = adapters_dir,
                         .watch = true,
                         .max_seqs = 16,
                         .max_batch_tokens = 64,
                         .store_path = store_path,
                         .log = log_quiet};
    start(&g_e, &g_s, &g_port, &eo, NULL);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    mt_server_stop(g_s);
    mt_engine_free(g_e);
    mt_backend_free(g_be);
    curl_global_cleanup();
    return 0;
}

/* ---- the client ---- */

typedef struct resp {
    long status;
    char *body;
    size_t len;
    int chunks;       /* write callbacks seen */
    int abort_after;  /* > 0: abort the transfer after this many chunks (a client going away) */
    atomic_int *first_data;
} resp;

static size_t on_data(char *p, size_t size, size_t n, void *user) {
    resp *r = user;
    size_t k = size * n;
    r->body = mt_xrealloc(r->body, r->len + k + 1);
    memcpy(r->body + r->len, p, k);
    r->len += k;
    r->body[r->len] = 0;
    r->chunks++;
    if (r->first_data) atomic_store(r->first_data, 1);
    if (r->abort_after > 0 && r->chunks >= r->abort_after) return 0;
    return k;
}

static CURL *easy(int port, const char *method, const char *path, const char *body, const char *key, resp *r,
                  struct curl_slist **hdrs) {
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*"); /* the loopback, whatever http_proxy says */
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    if (key) {
        char h[300];
        snprintf(h, sizeof h, "Authorization: Bearer %s", key);
        *hdrs = curl_slist_append(*hdrs, h);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hdrs);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    return c;
}

static resp http_on(int port, const char *method, const char *path, const char *body, const char *key) {
    resp r = {0};
    struct curl_slist *h = NULL;
    CURL *c = easy(port, method, path, body, key, &r, &h);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) fail_msg("%s %s: %s", method, path, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    if (!r.body) r.body = mt_xstrdup("");
    return r;
}

static resp http(const char *method, const char *path, const char *body) {
    return http_on(g_port, method, path, body, NULL);
}

static cJSON *json_ok(const resp *r) {
    if (r->status != 200) fail_msg("status %ld: %s", r->status, r->body);
    cJSON *o = cJSON_Parse(r->body);
    if (!o) fail_msg("not JSON: %s", r->body);
    return o;
}

/* choices[i].text (completions) or choices[i].message.content (chat), malloc'ed */
static char *choice_text(const cJSON *o, int i) {
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), i);
    assert_non_null(ch);
    const cJSON *t = cJSON_GetObjectItem(ch, "text");
    if (!t) t = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"), "content");
    assert_true(cJSON_IsString(t));
    return mt_xstrdup(t->valuestring);
}

static char *complete(int port, const char *body) {
    resp r = http_on(port, "POST", "/v1/completions", body, NULL);
    cJSON *o = json_ok(&r);
    char *t = choice_text(o, 0);
    cJSON_Delete(o);
    free(r.body);
    return t;
}

/* The text of `moetune generate` (stdout without the newline it ends with). */
static char *generate_cli(const char *adapter_dir, const char *prompt, int max_tokens) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' generate --model '%s' %s%s%s --prompt '%s' --temperature 0 --max-tokens %d "
             "--threads %d 2>/dev/null",
             MT_MOETUNE_BIN, base_dir, adapter_dir ? "--adapter '" : "", adapter_dir ? adapter_dir : "",
             adapter_dir ? "'" : "", prompt, max_tokens, g_threads);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char *out = NULL;
    size_t len = 0;
    char buf[4096];
    for (size_t k; (k = fread(buf, 1, sizeof buf, f)) > 0;) {
        out = mt_xrealloc(out, len + k + 1);
        memcpy(out + len, buf, k);
        len += k;
    }
    assert_int_equal(pclose(f), 0);
    if (!out) out = mt_xstrdup("");
    out[len] = 0;
    if (len && out[len - 1] == '\n') out[len - 1] = 0;
    return out;
}

/* The SSE events' JSON, concatenating each choice's text; checks the stream's framing. */
typedef struct sse_result {
    char *text[8];
    char finish[8][16];
    int n_events;
    bool done, usage;
    int completion_tokens;
} sse_result;

static void parse_sse(const char *body, sse_result *s) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < 8; i++) s->text[i] = mt_xstrdup("");
    const char *p = body;
    while (*p) {
        const char *end = strstr(p, "\n\n");
        assert_non_null(end); /* every event ends with a blank line */
        assert_true(!strncmp(p, "data: ", 6));
        char *ev = strndup(p + 6, (size_t)(end - p - 6));
        if (!strcmp(ev, "[DONE]")) {
            s->done = true;
            assert_string_equal(end + 2, ""); /* nothing after [DONE] */
        } else {
            assert_false(s->done);
            cJSON *o = cJSON_Parse(ev);
            if (!o) fail_msg("bad event: %s", ev);
            assert_null(cJSON_GetObjectItem(o, "error"));
            s->n_events++;
            const cJSON *u = cJSON_GetObjectItem(o, "usage");
            if (cJSON_IsObject(u)) {
                s->usage = true;
                s->completion_tokens = cJSON_GetObjectItem(u, "completion_tokens")->valueint;
                assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "choices")), 0);
            }
            const cJSON *ch;
            cJSON_ArrayForEach(ch, cJSON_GetObjectItem(o, "choices")) {
                int idx = cJSON_GetObjectItem(ch, "index")->valueint;
                assert_in_range(idx, 0, 7);
                const cJSON *t = cJSON_GetObjectItem(ch, "text");
                if (!t) t = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "delta"), "content");
                if (cJSON_IsString(t)) {
                    size_t a = strlen(s->text[idx]), b = strlen(t->valuestring);
                    s->text[idx] = mt_xrealloc(s->text[idx], a + b + 1);
                    memcpy(s->text[idx] + a, t->valuestring, b + 1);
                }
                const cJSON *f = cJSON_GetObjectItem(ch, "finish_reason");
                if (cJSON_IsString(f)) snprintf(s->finish[idx], sizeof s->finish[idx], "%s", f->valuestring);
            }
            cJSON_Delete(o);
        }
        free(ev);
        p = end + 2;
    }
}

static void sse_free(sse_result *s) {
    for (int i = 0; i < 8; i++) free(s->text[i]);
}

/* ---- tests ---- */

static void greedy_equals_generate(void **state) {
    (void)state;
    const char *prompt = "The licensee shall";
    char body[512];
    snprintf(body, sizeof body, "{\"model\":\"base\",\"prompt\":\"%s\",\"max_tokens\":24,\"temperature\":0}", prompt);
    char *got = complete(g_port, body), *want = generate_cli(NULL, prompt, 24);
    assert_string_equal(got, want);
    char ad[4400];
    snprintf(ad, sizeof ad, "%s/ad3", adapters_dir);
    snprintf(body, sizeof body, "{\"model\":\"ad3\",\"prompt\":\"%s\",\"max_tokens\":24,\"temperature\":0}", prompt);
    char *got_ad = complete(g_port, body), *want_ad = generate_cli(ad, prompt, 24);
    assert_string_equal(got_ad, want_ad);
    assert_string_not_equal(got_ad, got); /* the adapter is in effect */
    free(got), free(want), free(got_ad), free(want_ad);
}

static void stream_equals_whole(void **state) {
    (void)state;
    static const char *const bodies[] = {
        "{\"model\":\"ad1\",\"prompt\":\"Permission is hereby granted\",\"max_tokens\":20,\"temperature\":0.8,"
        "\"seed\":7,\"n\":2%s}",
        "{\"model\":\"ad2\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}],\"max_tokens\":20,"
        "\"temperature\":0.7,\"top_p\":0.9,\"seed\":3,\"n\":2%s}",
    };
    static const char *const paths[] = {"/v1/completions", "/v1/chat/completions"};
    for (int k = 0; k < 2; k++) {
        char whole[1024], streamed[1024];
        snprintf(whole, sizeof whole, bodies[k], "");
        snprintf(streamed, sizeof streamed, bodies[k], ",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
        resp a = http("POST", paths[k], whole), b = http("POST", paths[k], streamed);
        cJSON *o = json_ok(&a);
        assert_int_equal(b.status, 200);
        sse_result s;
        parse_sse(b.body, &s);
        assert_true(s.done);
        assert_true(s.usage);
        assert_int_equal(s.completion_tokens,
                         cJSON_GetObjectItem(cJSON_GetObjectItem(o, "usage"), "completion_tokens")->valueint);
        for (int i = 0; i < 2; i++) {
            char *t = choice_text(o, i);
            assert_string_equal(s.text[i], t);
            const cJSON *f = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), i), "finish_reason");
            assert_string_equal(s.finish[i], f->valuestring);
            free(t);
        }
        sse_free(&s);
        cJSON_Delete(o);
        free(a.body), free(b.body);
    }
}

/* A stop string cuts the text just before it, streamed or not (the streaming detokenizer holds
 * back what could be its start); echo puts the prompt first. */
static void stop_strings_and_echo(void **state) {
    (void)state;
    const char *base_body = "{\"prompt\":\"The licensee shall\",\"max_tokens\":24,\"temperature\":0,\"ignore_eos\":true}";
    char *full = complete(g_port, base_body);
    size_t n = strlen(full);
    assert_true(n > 12);
    /* a stop string from the middle of the text, JSON-escaped through cJSON */
    char stop[8] = {0};
    size_t at = n / 2;
    while (at < n && ((unsigned char)full[at] & 0xC0) == 0x80) at++;
    memcpy(stop, full + at, 3);
    while (((unsigned char)stop[strlen(stop) - 1] & 0xC0) == 0xC0 || ((unsigned char)stop[strlen(stop) - 1] & 0x80))
        stop[strlen(stop) - 1] = 0; /* whole characters only */
    if (!stop[0]) skip();
    cJSON *req = cJSON_Parse(base_body);
    cJSON_AddStringToObject(req, "stop", stop);
    char *body = cJSON_PrintUnformatted(req);
    resp r = http("POST", "/v1/completions", body);
    cJSON *o = json_ok(&r);
    char *cut = choice_text(o, 0);
    const char *first = strstr(full, stop);
    assert_non_null(first);
    assert_int_equal(strlen(cut), (size_t)(first - full));
    assert_memory_equal(cut, full, strlen(cut));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "finish_reason")->valuestring,
                        "stop");
    cJSON_AddBoolToObject(req, "stream", true);
    char *sbody = cJSON_PrintUnformatted(req);
    resp sr = http("POST", "/v1/completions", sbody);
    sse_result ss;
    parse_sse(sr.body, &ss);
    assert_string_equal(ss.text[0], cut);
    assert_string_equal(ss.finish[0], "stop");
    sse_free(&ss);
    cJSON_Delete(o);
    free(r.body), free(sr.body), free(body), free(sbody), free(cut);
    cJSON_Delete(req);
    /* echo */
    char *echoed = complete(g_port, "{\"prompt\":\"The licensee shall\",\"max_tokens\":24,\"temperature\":0,"
                                    "\"ignore_eos\":true,\"echo\":true}");
    assert_true(!strncmp(echoed, "The licensee shall", 18));
    assert_string_equal(echoed + 18, full);
    free(echoed), free(full);
}

/* Sample j of n draws from seed + j: the same text as a single request with that seed. */
static void n_samples_are_seeded(void **state) {
    (void)state;
    resp r = http("POST", "/v1/completions",
                  "{\"prompt\":\"Copyright\",\"max_tokens\":16,\"temperature\":1.0,\"seed\":40,\"n\":3}");
    cJSON *o = json_ok(&r);
    for (int j = 0; j < 3; j++) {
        char body[256];
        snprintf(body, sizeof body, "{\"prompt\":\"Copyright\",\"max_tokens\":16,\"temperature\":1.0,\"seed\":%d}",
                 40 + j);
        char *single = complete(g_port, body), *t = choice_text(o, j);
        assert_string_equal(t, single);
        free(single), free(t);
    }
    cJSON_Delete(o);
    free(r.body);
}

/* Eight requests, each on its own adapter, in flight together: each gets its solo text. */
static void concurrent_adapters_equal_solo(void **state) {
    (void)state;
    char bodies[N_ADAPTERS][512], *solo[N_ADAPTERS];
    for (int k = 0; k < N_ADAPTERS; k++) {
        snprintf(bodies[k], sizeof bodies[k],
                 "{\"model\":\"ad%d\",\"prompt\":\"The software is provided\",\"max_tokens\":32,"
                 "\"temperature\":%s,\"seed\":%d,\"ignore_eos\":true}",
                 k, k % 2 ? "0.9" : "0", k);
        solo[k] = complete(g_port, bodies[k]);
        for (int j = 0; j < k; j++) assert_string_not_equal(solo[j], solo[k]); /* each adapter matters */
    }
    CURLM *mh = curl_multi_init();
    resp rs[N_ADAPTERS] = {0};
    CURL *hs[N_ADAPTERS];
    struct curl_slist *hd[N_ADAPTERS];
    for (int k = 0; k < N_ADAPTERS; k++) {
        hs[k] = easy(g_port, "POST", "/v1/completions", bodies[k], NULL, &rs[k], &hd[k]);
        curl_multi_add_handle(mh, hs[k]);
    }
    int running = 1;
    while (running) {
        curl_multi_perform(mh, &running);
        if (running) curl_multi_poll(mh, NULL, 0, 100, NULL);
    }
    for (int k = 0; k < N_ADAPTERS; k++) {
        curl_easy_getinfo(hs[k], CURLINFO_RESPONSE_CODE, &rs[k].status);
        cJSON *o = json_ok(&rs[k]);
        char *t = choice_text(o, 0);
        assert_string_equal(t, solo[k]);
        free(t), free(solo[k]), free(rs[k].body);
        cJSON_Delete(o);
        curl_multi_remove_handle(mh, hs[k]);
        curl_easy_cleanup(hs[k]);
        curl_slist_free_all(hd[k]);
    }
    curl_multi_cleanup(mh);
}

typedef struct bg_req {
    int port;
    const char *body;
    resp r;
    atomic_int first;
} bg_req;

static void *bg_main(void *arg) {
    bg_req *b = arg;
    b->r.first_data = &b->first;
    struct curl_slist *h = NULL;
    CURL *c = easy(b->port, "POST", "/v1/completions", b->body, NULL, &b->r, &h);
    curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &b->r.status);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    return NULL;
}

static int model_version(const char *name, bool *loaded) {
    resp r = http("GET", "/v1/models", NULL);
    cJSON *o = json_ok(&r);
    int v = -1;
    *loaded = false;
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItem(o, "data")) {
        if (strcmp(cJSON_GetObjectItem(m, "id")->valuestring, name)) continue;
        const cJSON *x = cJSON_GetObjectItem(m, "moetune");
        *loaded = cJSON_IsTrue(cJSON_GetObjectItem(x, "loaded"));
        const cJSON *ver = cJSON_GetObjectItem(x, "version");
        v = ver ? ver->valueint : 0;
    }
    cJSON_Delete(o);
    free(r.body);
    return v;
}

/* A request on "swap" while its folder is re-exported finishes with the old weights; the next
 * one uses the new. */
static void replace_in_flight(void **state) {
    (void)state;
    const char *body = "{\"model\":\"swap\",\"prompt\":\"Licensed under\",\"max_tokens\":600,\"temperature\":0,"
                       "\"ignore_eos\":true,\"stream\":true}";
    resp old = http("POST", "/v1/completions", body);
    sse_result old_s;
    parse_sse(old.body, &old_s);
    bool loaded;
    int v0 = model_version("swap", &loaded);
    assert_true(loaded);

    int live0 = mt_engine_live_versions(g_e);
    bg_req b = {.port = g_port, .body = body};
    atomic_init(&b.first, 0);
    pthread_t t;
    pthread_create(&t, NULL, bg_main, &b);
    while (!atomic_load(&b.first)) usleep(1000);
    mt_error err = {0};
    mt_model *m = NULL;
    assert_int_equal(mt_model_load(&m, base_dir, g_be, &err), MT_OK);
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/swap", adapters_dir);
    write_adapter(m, dir, 201, base_hash);
    mt_model_free(m);
    mt_engine_watch_sync(g_e);
    assert_int_equal(model_version("swap", &loaded), v0 + 1);
    /* the old version is still alive: the request in flight holds it */
    int live_during = mt_engine_live_versions(g_e);
    pthread_join(t, NULL);
    assert_int_equal(live_during, live0 + 1);
    assert_int_equal(mt_engine_live_versions(g_e), live0);
    sse_result got;
    parse_sse(b.r.body, &got);
    assert_string_equal(got.text[0], old_s.text[0]);
    resp next = http("POST", "/v1/completions", body);
    sse_result next_s;
    parse_sse(next.body, &next_s);
    assert_string_not_equal(next_s.text[0], old_s.text[0]);
    char *want = generate_cli(dir, "Licensed under", 24);
    char *now = complete(g_port, "{\"model\":\"swap\",\"prompt\":\"Licensed under\",\"max_tokens\":24,\"temperature\":0}");
    assert_string_equal(now, want);
    free(want), free(now);
    sse_free(&old_s), sse_free(&got), sse_free(&next_s);
    free(old.body), free(b.r.body), free(next.body);
}

static void load_unload_and_confinement(void **state) {
    (void)state;
    resp r = http("POST", "/v1/load_lora_adapter", "{\"lora_name\":\"legal\",\"lora_path\":\"ad4\"}");
    assert_int_equal(r.status, 200);
    free(r.body);
    bool loaded;
    assert_int_equal(model_version("legal", &loaded), 1);
    assert_true(loaded);
    char *a = complete(g_port, "{\"model\":\"legal\",\"prompt\":\"Warranty\",\"max_tokens\":12,\"temperature\":0}");
    char *b = complete(g_port, "{\"model\":\"ad4\",\"prompt\":\"Warranty\",\"max_tokens\":12,\"temperature\":0}");
    assert_string_equal(a, b);
    free(a), free(b);
    /* vLLM: loading a name again needs load_inplace */
    r = http("POST", "/v1/load_lora_adapter", "{\"lora_name\":\"legal\",\"lora_path\":\"ad5\"}");
    assert_int_equal(r.status, 400);
    free(r.body);
    r = http("POST", "/v1/load_lora_adapter", "{\"lora_name\":\"legal\",\"lora_path\":\"ad5\",\"load_inplace\":true}");
    assert_int_equal(r.status, 200);
    free(r.body);
    assert_int_equal(model_version("legal", &loaded), 2);
    r = http("POST", "/v1/unload_lora_adapter", "{\"lora_name\":\"legal\"}");
    assert_int_equal(r.status, 200);
    free(r.body);
    r = http("POST", "/v1/unload_lora_adapter", "{\"lora_name\":\"legal\"}");
    assert_int_equal(r.status, 404);
    free(r.body);
    r = http("POST", "/v1/completions", "{\"model\":\"legal\",\"prompt\":\"x\",\"max_tokens\":2}");
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "model_not_found"));
    free(r.body);

    char body[9000];
    const char *bad_paths[] = {"../base", "ad1/../../base", "sneaky", "/etc", "nonexistent"};
    const long want[] = {400, 400, 400, 400, 404};
    for (size_t i = 0; i < sizeof bad_paths / sizeof bad_paths[0]; i++) {
        snprintf(body, sizeof body, "{\"lora_name\":\"evil%zu\",\"lora_path\":\"%s\"}", i, bad_paths[i]);
        r = http("POST", "/v1/load_lora_adapter", body);
        if (r.status != want[i]) fail_msg("%s: %ld %s", bad_paths[i], r.status, r.body);
        free(r.body);
    }
    snprintf(body, sizeof body, "{\"lora_name\":\"escapee\",\"lora_path\":\"%s/escapee\"}", outside_dir);
    r = http("POST", "/v1/load_lora_adapter", body);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "outside"));
    free(r.body);
    /* an absolute path inside the folder is fine */
    snprintf(body, sizeof body, "{\"lora_name\":\"abs\",\"lora_path\":\"%s/ad6\"}", adapters_dir);
    r = http("POST", "/v1/load_lora_adapter", body);
    assert_int_equal(r.status, 200);
    free(r.body);
    /* made for another base: refused, naming the hashes */
    r = http("POST", "/v1/load_lora_adapter", "{\"lora_name\":\"other\",\"lora_path\":\"other-base\"}");
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, base_hash));
    free(r.body);
    r = http("POST", "/v1/completions", "{\"model\":\"other-base\",\"prompt\":\"x\",\"max_tokens\":2}");
    assert_int_equal(r.status, 400);
    free(r.body);
}

static void watch_loads_new_exports(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = NULL;
    assert_int_equal(mt_model_load(&m, base_dir, g_be, &err), MT_OK);
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/fresh", adapters_dir);
    write_adapter(m, dir, 500, base_hash);
    mt_model_free(m);
    mt_engine_watch_sync(g_e);
    bool loaded;
    assert_int_equal(model_version("fresh", &loaded), 1);
    assert_true(loaded);
    char *t = complete(g_port, "{\"model\":\"fresh\",\"prompt\":\"Notice\",\"max_tokens\":8,\"temperature\":0}");
    free(t);
    /* the folder removed: the adapter goes with it */
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    mt_engine_watch_sync(g_e);
    assert_int_equal(model_version("fresh", &loaded), -1);
}

typedef struct bad_case {
    const char *method, *path, *body;
    long status;
    const char *param; /* expected error.param, NULL = do not check */
} bad_case;

static void bad_inputs_get_4xx(void **state) {
    (void)state;
    char big[70000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    memcpy(big, "{\"prompt\":\"", 11);
    static const bad_case cases[] = {
        {"POST", "/v1/completions", "{", 400, NULL},
        {"POST", "/v1/completions", "", 400, NULL},
        {"POST", "/v1/completions", "[1,2]", 400, NULL},
        {"POST", "/v1/completions", "{\"prompt\":\"a\"} trailing", 400, NULL},
        {"POST", "/v1/completions", "{\"max_tokens\":4}", 400, "prompt"},
        {"POST", "/v1/completions", "{\"prompt\":5}", 400, "prompt"},
        {"POST", "/v1/completions", "{\"prompt\":[]}", 400, "prompt"},
        {"POST", "/v1/completions", "{\"prompt\":[1,2,99999999]}", 400, "prompt"},
        {"POST", "/v1/completions", "{\"prompt\":[1,-2]}", 400, "prompt"},
        {"POST", "/v1/completions", "{\"prompt\":[1.5]}", 400, "prompt"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"temperature\":\"hot\"}", 400, "temperature"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"temperature\":-1}", 400, "temperature"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"temperature\":3}", 400, "temperature"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"top_p\":0}", 400, "top_p"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"top_p\":1.5}", 400, "top_p"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"top_k\":-5}", 400, "top_k"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"n\":0}", 400, "n"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"n\":1000}", 400, "n"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":0}", 400, "max_tokens"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":-1}", 400, "max_tokens"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":2.5}", 400, "max_tokens"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":1e12}", 400, "max_tokens"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":100000}", 400, "max_tokens"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"stream\":\"yes\"}", 400, "stream"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"stream_options\":{\"include_usage\":true}}", 400,
         "stream_options"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"stop\":[\"\"]}", 400, "stop"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"stop\":[1]}", 400, "stop"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"logprobs\":50}", 400, "logprobs"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"logit_bias\":{\"x\":1}}", 400, "logit_bias"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"logit_bias\":{\"5\":500}}", 400, "logit_bias"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"seed\":\"x\"}", 400, "seed"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"model\":7}", 400, "model"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"model\":\"no-such-model\"}", 404, "model"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"presence_penalty\":5}", 400, "presence_penalty"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"suffix\":\"b\"}", 400, "suffix"},
        {"POST", "/v1/chat/completions", "{\"messages\":\"hi\"}", 400, "messages"},
        {"POST", "/v1/chat/completions", "{\"messages\":[]}", 400, "messages"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "messages"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
         400, "messages"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":3}",
         400, "top_logprobs"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{}]}", 400,
         "tools"},
        {"POST", "/v1/load_lora_adapter", "{\"lora_name\":\"x\"}", 400, "lora_path"},
        {"POST", "/v1/load_lora_adapter", "{\"lora_name\":\"a/b\",\"lora_path\":\"ad1\"}", 400, "lora_name"},
        {"POST", "/v1/load_lora_adapter", "{\"lora_name\":\"base\",\"lora_path\":\"ad1\"}", 400, NULL},
        {"POST", "/v1/unload_lora_adapter", "{}", 400, "lora_name"},
        {"GET", "/v1/completions", NULL, 405, NULL},
        {"DELETE", "/v1/models", NULL, 405, NULL},
        {"GET", "/nope", NULL, 404, NULL},
        {"GET", "/v1/models/no-such", NULL, 404, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        resp r = http(c->method, c->path, c->body);
        if (r.status != c->status) fail_msg("%s %s %s: got %ld: %s", c->method, c->path, c->body, r.status, r.body);
        cJSON *o = cJSON_Parse(r.body);
        if (!o) fail_msg("%s: error body is not JSON: %s", c->body ? c->body : c->path, r.body);
        const cJSON *e = cJSON_GetObjectItem(o, "error");
        assert_true(cJSON_IsString(cJSON_GetObjectItem(e, "message")));
        assert_true(cJSON_IsString(cJSON_GetObjectItem(e, "type")));
        assert_non_null(cJSON_GetObjectItem(e, "param"));
        assert_non_null(cJSON_GetObjectItem(e, "code"));
        if (c->param) {
            const cJSON *p = cJSON_GetObjectItem(e, "param");
            if (!cJSON_IsString(p) || strcmp(p->valuestring, c->param))
                fail_msg("%s: param %s, want %s", c->body, r.body, c->param);
        }
        cJSON_Delete(o);
        free(r.body);
    }
    /* a prompt longer than the model's context */
    size_t n = 30000;
    char *longp = mt_xmalloc(n + 64);
    strcpy(longp, "{\"prompt\":\"");
    for (size_t i = 11; i < n; i += 2) memcpy(longp + i, "a ", 2);
    strcpy(longp + n, "\",\"max_tokens\":4}");
    resp r = http("POST", "/v1/completions", longp);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "context_length_exceeded"));
    free(r.body);
    free(longp);
    /* over the body limit (64 KiB in this test) */
    r = http("POST", "/v1/completions", big);
    assert_int_equal(r.status, 413);
    free(r.body);
    /* still serving */
    r = http("GET", "/health", NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    char *t = complete(g_port, "{\"prompt\":\"still here\",\"max_tokens\":4}");
    free(t);
}

static void logprobs_shapes(void **state) {
    (void)state;
    resp r = http("POST", "/v1/chat/completions",
                  "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":6,\"temperature\":0,"
                  "\"logprobs\":true,\"top_logprobs\":3,\"ignore_eos\":true}");
    cJSON *o = json_ok(&r);
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    const cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "content");
    assert_int_equal(cJSON_GetArraySize(content), 6);
    const cJSON *x;
    cJSON_ArrayForEach(x, content) {
        double lp = cJSON_GetObjectItem(x, "logprob")->valuedouble;
        const cJSON *tops = cJSON_GetObjectItem(x, "top_logprobs");
        assert_int_equal(cJSON_GetArraySize(tops), 3);
        double best = cJSON_GetObjectItem(cJSON_GetArrayItem(tops, 0), "logprob")->valuedouble;
        assert_true(lp <= 0 && best <= 0);
        assert_true(fabs(lp - best) < 1e-5); /* greedy picks the most likely */
        assert_true(cJSON_GetObjectItem(cJSON_GetArrayItem(tops, 1), "logprob")->valuedouble <= best);
    }
    cJSON_Delete(o);
    free(r.body);
    r = http("POST", "/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":5,\"logprobs\":2,\"ignore_eos\":true}");
    o = json_ok(&r);
    const cJSON *lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "logprobs");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")), 5);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "top_logprobs")), 5);
    cJSON_Delete(o);
    free(r.body);
}

static void disconnect_frees_sequences(void **state) {
    (void)state;
    for (int k = 0; k < 2; k++) {
        resp r = {.abort_after = 2};
        struct curl_slist *h = NULL;
        CURL *c = easy(g_port, "POST", "/v1/completions",
                       k ? "{\"prompt\":\"Going\",\"max_tokens\":1500,\"ignore_eos\":true}"
                         : "{\"prompt\":\"Going\",\"max_tokens\":1500,\"ignore_eos\":true,\"stream\":true}",
                       NULL, &r, &h);
        if (k) curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 150L); /* non-streaming: give up waiting */
        CURLcode rc = curl_easy_perform(c);
        assert_int_not_equal(rc, CURLE_OK);
        curl_easy_cleanup(c);
        curl_slist_free_all(h);
        free(r.body);
        int open = -1;
        for (int i = 0; i < 300 && (open = mt_engine_seqs_open(g_e)) != 0; i++) usleep(10000);
        assert_int_equal(open, 0);
    }
}

/* Every line is a comment (# HELP / # TYPE) or `name{labels} value`. */
static void metrics_parse_as_prometheus(void **state) {
    (void)state;
    resp r = http("GET", "/metrics", NULL);
    assert_int_equal(r.status, 200);
    static const char *const must[] = {
        "moetune_requests_total{endpoint=\"/v1/completions\"", "moetune_request_errors_total{",
        "moetune_queue_length ", "moetune_running_sequences ", "moetune_kv_blocks_used ", "moetune_kv_blocks_total ",
        "moetune_time_to_first_token_seconds_bucket{le=\"+Inf\"}", "moetune_inter_token_latency_seconds_count ",
        "moetune_generated_tokens_total ", "moetune_generation_tokens_per_second ", "moetune_adapters_loaded ",
        "moetune_adapter_load_seconds{adapter=\"ad0\"}", "moetune_router_entropy_nats{layer=",
        "moetune_expert_tokens_total{layer=", "moetune_preemptions_total ", "moetune_dap_blocks_total ",
        "moetune_dap_skipped_blocks_total ", "moetune_dap_fallbacks_total ", "moetune_routed_tokens_total ",
        "moetune_routed_experts_total "};
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++)
        if (!strstr(r.body, must[i])) fail_msg("/metrics lacks %s", must[i]);
    char *save = NULL;
    int samples = 0;
    for (char *line = strtok_r(r.body, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') {
            assert_true(!strncmp(line, "# HELP moetune_", 15) || !strncmp(line, "# TYPE moetune_", 15));
            continue;
        }
        char *sp = strrchr(line, ' ');
        assert_non_null(sp);
        char *end = NULL;
        strtod(sp + 1, &end);
        if (*end) fail_msg("bad value: %s", line);
        size_t name_len = strspn(line, "abcdefghijklmnopqrstuvwxyz_0123456789");
        assert_true(name_len > 0);
        if (line[name_len] == '{') {
            char *close = strchr(line + name_len, '}');
            assert_non_null(close);
            assert_ptr_equal(close + 1, sp);
        } else {
            assert_ptr_equal(line + name_len, sp);
        }
        samples++;
    }
    assert_true(samples > 40);
    free(r.body);
}

/* A small pool: four requests that cannot all fit preempt one another and still produce what
 * each produces alone; a cap of two loaded adapters evicts the least recently used; the API key. */
static void preemption_eviction_api_key(void **state) {
    (void)state;
    mt_engine *e = NULL;
    mt_server *s = NULL;
    int port = 0;
    mt_engine_opts eo = {.model_dir = base_dir,
                         .adapters_dir = adapters_dir,
                         .max_loaded = 2,
                         .kv_blocks = 10,
                         .block_size = 16,
                         .max_seqs = 8,
                         .max_batch_tokens = 32,
                         .log = log_quiet};
    start(&e, &s, &port, &eo, "sekret-key");
    char bodies[4][512], *solo[4];
    for (int k = 0; k < 4; k++) {
        snprintf(bodies[k], sizeof bodies[k],
                 "{\"model\":\"ad%d\",\"prompt\":\"The license terms %d\",\"max_tokens\":60,\"temperature\":0.8,"
                 "\"seed\":%d,\"ignore_eos\":true}",
                 k, k, k);
        resp r = http_on(g_port, "POST", "/v1/completions", bodies[k], NULL); /* the roomy engine */
        cJSON *o = json_ok(&r);
        solo[k] = choice_text(o, 0);
        cJSON_Delete(o);
        free(r.body);
    }
    CURLM *mh = curl_multi_init();
    resp rs[4] = {0};
    CURL *hs[4];
    struct curl_slist *hd[4];
    for (int k = 0; k < 4; k++) {
        hs[k] = easy(port, "POST", "/v1/completions", bodies[k], "sekret-key", &rs[k], &hd[k]);
        curl_multi_add_handle(mh, hs[k]);
    }
    int running = 1;
    while (running) {
        curl_multi_perform(mh, &running);
        if (running) curl_multi_poll(mh, NULL, 0, 100, NULL);
    }
    for (int k = 0; k < 4; k++) {
        curl_easy_getinfo(hs[k], CURLINFO_RESPONSE_CODE, &rs[k].status);
        cJSON *o = json_ok(&rs[k]);
        char *t = choice_text(o, 0);
        assert_string_equal(t, solo[k]);
        free(t), free(solo[k]), free(rs[k].body);
        cJSON_Delete(o);
        curl_multi_remove_handle(mh, hs[k]);
        curl_easy_cleanup(hs[k]);
        curl_slist_free_all(hd[k]);
    }
    curl_multi_cleanup(mh);
    resp m = http_on(port, "GET", "/metrics", NULL, NULL); /* open without the key, as vLLM's */
    assert_int_equal(m.status, 200);
    const char *pre = strstr(m.body, "\nmoetune_preemptions_total ");
    assert_non_null(pre);
    assert_true(atoi(pre + strlen("\nmoetune_preemptions_total ")) > 0);
    const char *loaded = strstr(m.body, "\nmoetune_adapters_loaded ");
    assert_int_equal(atoi(loaded + strlen("\nmoetune_adapters_loaded ")), 2);
    free(m.body);

    resp r = http_on(port, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 401);
    free(r.body);
    r = http_on(port, "GET", "/v1/models", NULL, "sekret-kez");
    assert_int_equal(r.status, 401);
    free(r.body);
    r = http_on(port, "GET", "/v1/models", NULL, "sekret-key-longer");
    assert_int_equal(r.status, 401);
    free(r.body);
    r = http_on(port, "GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    mt_server_stop(s);
    mt_engine_free(e);
}

/* One sequence at a time and one place in the queue: while a long request runs, the next one
 * waits and the one after it gets 429; the server keeps serving when the long one goes away. */
static void queue_limit_gives_429(void **state) {
    (void)state;
    mt_engine *e = NULL;
    mt_server *s = NULL;
    int port = 0;
    mt_engine_opts eo = {.model_dir = base_dir, .max_seqs = 1, .max_queue = 1, .log = log_quiet};
    start(&e, &s, &port, &eo, NULL);
    bg_req longr = {.port = port,
                    .body = "{\"prompt\":\"Long\",\"max_tokens\":1000,\"ignore_eos\":true,\"stream\":true}"};
    atomic_init(&longr.first, 0);
    longr.r.abort_after = 1000000;
    pthread_t t1, t2;
    pthread_create(&t1, NULL, bg_main, &longr);
    while (!atomic_load(&longr.first)) usleep(1000);
    bg_req queued = {.port = port, .body = "{\"prompt\":\"Next\",\"max_tokens\":4}"};
    atomic_init(&queued.first, 0);
    pthread_create(&t2, NULL, bg_main, &queued);
    /* wait until it is queued: the metrics say so */
    for (int i = 0; i < 500; i++) {
        resp m = http_on(port, "GET", "/metrics", NULL, NULL);
        bool waiting = strstr(m.body, "\nmoetune_queue_length 1\n") != NULL;
        free(m.body);
        if (waiting) break;
        usleep(2000);
    }
    resp r = http_on(port, "POST", "/v1/completions", "{\"prompt\":\"Third\",\"max_tokens\":4}", NULL);
    assert_int_equal(r.status, 429);
    assert_non_null(strstr(r.body, "queue_full"));
    free(r.body);
    pthread_join(t2, NULL); /* served after the long one */
    assert_int_equal(queued.r.status, 200);
    pthread_join(t1, NULL);
    free(longr.r.body), free(queued.r.body);
    mt_server_stop(s);
    mt_engine_free(e);
}

/* Last: the store holds a row for every generation request served so far. */
static void requests_recorded_in_store(void **state) {
    (void)state;
    resp r = http("GET", "/metrics", NULL);
    free(r.body);
    mt_server_stop(g_s);
    mt_engine_free(g_e);
    g_s = NULL;
    g_e = NULL;
    mt_store *st = NULL;
    mt_error err = {0};
    assert_int_equal(mt_store_open(&st, store_path, false, &err), MT_OK);
    int64_t n = 0;
    assert_int_equal(mt_store_served_count(st, &n, &err), MT_OK);
    assert_true(n >= 20);
    mt_store_close(st);
    /* the next tests' engine */
    mt_engine_opts eo = {.model_dir = base_dir, .adapters_dir = adapters_dir, .log = log_quiet};
    start(&g_e, &g_s, &g_port, &eo, NULL);
}

/* ---- dynamic attention pruning (docs/attention-pruning.md, docs/serving.md) ---- */

/* The value of an unlabelled sample in /metrics of the server on port. */
static double metric_on(int port, const char *name) {
    resp r = http_on(port, "GET", "/metrics", NULL, NULL);
    assert_int_equal(r.status, 200);
    char key[256];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *at = strstr(r.body, key);
    if (!at) fail_msg("/metrics lacks %s", name);
    double v = strtod(at + strlen(key), NULL);
    free(r.body);
    return v;
}

typedef struct dap_snap {
    double blocks, skipped, fallbacks;
} dap_snap;

static dap_snap dap_now(int port) {
    return (dap_snap){metric_on(port, "moetune_dap_blocks_total"), metric_on(port, "moetune_dap_skipped_blocks_total"),
                      metric_on(port, "moetune_dap_fallbacks_total")};
}

/* A prompt of several hundred tokens: DAP has blocks to choose from. */
static const char *long_prompt(void) {
    static char p[8192];
    if (p[0]) return p;
    size_t n = 0;
    for (int k = 0; k < 48 && n + 200 < sizeof p; k++)
        n += (size_t)snprintf(p + n, sizeof p - n, "Section %d: the licensee shall keep record %d of every copy. ",
                              k, 7 * k + 3);
    return p;
}

static char *dap_body(const char *model, const char *extra) {
    char *b = mt_xmalloc(16384);
    snprintf(b, 16384, "{%s%s%s\"prompt\":\"%s\",\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true%s}",
             model ? "\"model\":\"" : "", model ? model : "", model ? "\"," : "", long_prompt(), extra ? extra : "");
    return b;
}

/* A request's completion text and the DAP counters' change over it. */
static char *dap_run(int port, const char *model, const char *extra, dap_snap *delta) {
    dap_snap a = dap_now(port);
    char *body = dap_body(model, extra);
    resp r = http_on(port, "POST", "/v1/completions", body, NULL);
    cJSON *o = json_ok(&r);
    const cJSON *u = cJSON_GetObjectItem(o, "usage");
    assert_true(cJSON_GetObjectItem(u, "prompt_tokens")->valueint >= 300);
    assert_null(cJSON_GetObjectItem(u, "dap_blocks")); /* usage stays OpenAI's: DAP is in /metrics */
    char *t = choice_text(o, 0);
    cJSON_Delete(o);
    free(r.body);
    free(body);
    dap_snap b = dap_now(port);
    *delta = (dap_snap){b.blocks - a.blocks, b.skipped - a.skipped, b.fallbacks - a.fallbacks};
    return t;
}

/* dap_threshold outside [0, 1] or not a number: 400 naming the field, on both endpoints. */
static void dap_bad_values_get_400(void **state) {
    (void)state;
    static const char *const bad[] = {"2", "\"x\"", "-0.5", "true", "[0.1]"};
    for (int ep = 0; ep < 2; ep++)
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            char body[512];
            if (ep == 0)
                snprintf(body, sizeof body, "{\"prompt\":\"hi\",\"max_tokens\":2,\"dap_threshold\":%s}", bad[k]);
            else
                snprintf(body, sizeof body,
                         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":2,\"dap_threshold\":%s}",
                         bad[k]);
            resp r = http("POST", ep == 0 ? "/v1/completions" : "/v1/chat/completions", body);
            if (r.status != 400) fail_msg("dap_threshold %s: status %ld: %s", bad[k], r.status, r.body);
            cJSON *o = cJSON_Parse(r.body);
            assert_non_null(o);
            const cJSON *param = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "param");
            assert_true(cJSON_IsString(param));
            assert_string_equal(param->valuestring, "dap_threshold");
            cJSON_Delete(o);
            free(r.body);
        }
    /* in range, null included, is accepted (chat too) */
    resp r = http("POST", "/v1/chat/completions",
                  "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":2,\"dap_threshold\":0.25}");
    assert_int_equal(r.status, 200);
    free(r.body);
    r = http("POST", "/v1/completions", "{\"prompt\":\"hi\",\"max_tokens\":2,\"dap_threshold\":null}");
    assert_int_equal(r.status, 200);
    free(r.body);
}

/* On the default server (DAP off): dap_threshold 0 is the greedy text without it, nothing counted;
 * a large threshold runs the rule (counted in /metrics). */
static void dap_zero_is_unchanged(void **state) {
    (void)state;
    dap_snap d;
    char *plain = dap_run(g_port, NULL, NULL, &d);
    assert_true(d.blocks == 0 && d.skipped == 0);
    char *zero = dap_run(g_port, NULL, ",\"dap_threshold\":0", &d);
    assert_string_equal(zero, plain);
    assert_true(d.blocks == 0);
    char *ad = dap_run(g_port, "ad0", NULL, &d), *ad_zero = dap_run(g_port, "ad0", ",\"dap_threshold\":0", &d);
    assert_string_equal(ad_zero, ad);
    assert_true(d.blocks == 0);
    char *big = dap_run(g_port, NULL, ",\"dap_threshold\":1", &d);
    assert_true(d.blocks > 0); /* 7 decode rows × layers × heads × ~26 blocks */
    free(plain);
    free(zero);
    free(ad);
    free(ad_zero);
    free(big);
}

/* Where τ comes from: the request, else the adapter's metadata "dap_threshold", else the server default;
 * --dap-adapter-thresholds off ignores the metadata. Mass floor 0 so that skips are not undone
 * by the fallback. */
static void dap_precedence(void **state) {
    (void)state;
    mt_engine *e = NULL;
    mt_server *s = NULL;
    int port = 0;
    mt_dap_opts dap = {.threshold = 0.5f, .n_sink_blocks = 1, .n_local_blocks = 1, .mass_floor = 0};
    mt_engine_opts eo = {.model_dir = base_dir,
                         .adapters_dir = dap_adapters_dir,
                         .max_seqs = 4,
                         .max_batch_tokens = 64,
                         .dap = &dap,
                         .log = log_quiet};
    start(&e, &s, &port, &eo, NULL);
    dap_snap d;
    /* the server default applies to a request without the field */
    free(dap_run(port, NULL, NULL, &d));
    assert_true(d.blocks > 0);
    /* the request's 0 wins over the default: full attention, the text of the server without DAP */
    char *zero = dap_run(port, NULL, ",\"dap_threshold\":0", &d);
    assert_true(d.blocks == 0);
    dap_snap d0;
    char *off = dap_run(g_port, NULL, NULL, &d0);
    assert_string_equal(zero, off);
    /* a large threshold on a long prompt skips blocks */
    free(dap_run(port, NULL, ",\"dap_threshold\":1", &d));
    assert_true(d.skipped > 0);
    /* an adapter's metadata wins over the default: 0 turns it off, 1 prunes */
    free(dap_run(port, "meta-zero", NULL, &d));
    assert_true(d.blocks == 0);
    free(dap_run(port, "meta-one", NULL, &d));
    assert_true(d.skipped > 0);
    /* the request wins over the metadata */
    free(dap_run(port, "meta-one", ",\"dap_threshold\":0", &d));
    assert_true(d.blocks == 0);
    /* an adapter without a threshold in its metadata gets the server default */
    free(dap_run(port, "nometa", NULL, &d));
    assert_true(d.blocks > 0);
    mt_server_stop(s);
    mt_engine_free(e);

    /* metadata ignored, default off: the adapter runs full attention */
    mt_engine_opts eo2 = {.model_dir = base_dir,
                          .adapters_dir = dap_adapters_dir,
                          .max_seqs = 4,
                          .max_batch_tokens = 64,
                          .dap_ignore_adapter_thresholds = true,
                          .log = log_quiet};
    start(&e, &s, &port, &eo2, NULL);
    free(dap_run(port, "meta-one", NULL, &d));
    assert_true(d.blocks == 0);
    mt_server_stop(s);
    mt_engine_free(e);

    /* a bad server default is refused at start */
    mt_dap_opts bad = {.threshold = 1.5f, .n_sink_blocks = 1, .n_local_blocks = 1, .mass_floor = 0.9f};
    mt_engine_opts eo3 = {.model_dir = base_dir, .dap = &bad, .log = log_quiet};
    mt_error err = {0};
    mt_engine *x = NULL;
    assert_int_equal(mt_engine_init(&x, g_be, &eo3, &err), MT_ERR_INVALID);
    assert_null(x);
    free(zero);
    free(off);
}

/* ---- adaptive expert counts ---- */

typedef struct experts_snap {
    double tokens, experts; /* moetune_routed_tokens_total, moetune_routed_experts_total */
} experts_snap;

static experts_snap experts_now(int port) {
    return (experts_snap){metric_on(port, "moetune_routed_tokens_total"),
                          metric_on(port, "moetune_routed_experts_total")};
}

/* A short greedy completion's text and the routing counters' change over it. */
static char *experts_run(int port, const char *model, const char *extra, experts_snap *delta) {
    experts_snap a = experts_now(port);
    char body[1024];
    snprintf(body, sizeof body,
             "{%s%s%s\"prompt\":\"The licensee shall keep\",\"max_tokens\":6,\"temperature\":0,"
             "\"ignore_eos\":true%s}",
             model ? "\"model\":\"" : "", model ? model : "", model ? "\"," : "", extra ? extra : "");
    resp r = http_on(port, "POST", "/v1/completions", body, NULL);
    cJSON *o = json_ok(&r);
    char *t = choice_text(o, 0);
    cJSON_Delete(o);
    free(r.body);
    experts_snap b = experts_now(port);
    *delta = (experts_snap){b.tokens - a.tokens, b.experts - a.experts};
    assert_true(delta->tokens > 0);
    return t;
}

/* Mean experts per routed (token, layer) pair over the request: exactly 1 or top_k here. */
static double experts_mean(const experts_snap *d) { return d->experts / d->tokens; }

static int served_top_k(void) {
    mt_config cfg;
    mt_error err = {0};
    char path[4300];
    snprintf(path, sizeof path, "%s/config.json", base_dir);
    if (mt_config_load(&cfg, path, &err) != MT_OK) fail_msg("%s", err.msg);
    return cfg.top_k;
}

/* expert_threshold outside [0, 1] or not a number, min_experts/max_experts not integers in
 * [1, top_k] or crossed: 400 naming the field. */
static void experts_bad_values_get_400(void **state) {
    (void)state;
    static const struct {
        const char *extra, *param;
    } bad[] = {
        {"\"expert_threshold\":2", "expert_threshold"},   {"\"expert_threshold\":-0.5", "expert_threshold"},
        {"\"expert_threshold\":\"x\"", "expert_threshold"}, {"\"expert_threshold\":true", "expert_threshold"},
        {"\"min_experts\":0", "min_experts"},             {"\"min_experts\":1.5", "min_experts"},
        {"\"min_experts\":99", "min_experts"},            {"\"max_experts\":0", "max_experts"},
        {"\"max_experts\":99", "max_experts"},            {"\"max_experts\":\"2\"", "max_experts"},
        {"\"min_experts\":2,\"max_experts\":1", "min_experts"},
    };
    for (int ep = 0; ep < 2; ep++)
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            char body[512];
            if (ep == 0)
                snprintf(body, sizeof body, "{\"prompt\":\"hi\",\"max_tokens\":2,%s}", bad[k].extra);
            else
                snprintf(body, sizeof body,
                         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":2,%s}", bad[k].extra);
            resp r = http("POST", ep == 0 ? "/v1/completions" : "/v1/chat/completions", body);
            if (r.status != 400) fail_msg("%s: status %ld: %s", bad[k].extra, r.status, r.body);
            cJSON *o = cJSON_Parse(r.body);
            assert_non_null(o);
            const cJSON *param = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "param");
            assert_true(cJSON_IsString(param));
            assert_string_equal(param->valuestring, bad[k].param);
            cJSON_Delete(o);
            free(r.body);
        }
    resp r = http("POST", "/v1/completions",
                  "{\"prompt\":\"hi\",\"max_tokens\":2,\"expert_threshold\":0.5,\"min_experts\":1,\"max_experts\":1}");
    assert_int_equal(r.status, 200);
    free(r.body);
}

/* On the default server (fixed top_k): expert_threshold 1 is the text without it, top_k
 * experts counted per pair; a tiny threshold routes to one expert, max_experts 1 too. */
static void experts_one_is_unchanged(void **state) {
    (void)state;
    int K = served_top_k();
    assert_true(K >= 2);
    experts_snap d;
    char *plain = experts_run(g_port, NULL, NULL, &d);
    assert_true(experts_mean(&d) == K);
    char *one = experts_run(g_port, NULL, ",\"expert_threshold\":1", &d);
    assert_string_equal(one, plain);
    assert_true(experts_mean(&d) == K);
    char *ad = experts_run(g_port, "ad0", NULL, &d);
    char *ad_one = experts_run(g_port, "ad0", ",\"expert_threshold\":1", &d);
    assert_string_equal(ad_one, ad);
    free(experts_run(g_port, NULL, ",\"expert_threshold\":0.000001", &d));
    assert_true(experts_mean(&d) == 1);
    free(experts_run(g_port, NULL, ",\"expert_threshold\":1,\"max_experts\":1", &d));
    assert_true(experts_mean(&d) == 1);
    free(plain);
    free(one);
    free(ad);
    free(ad_one);
}

/* Where P comes from: the request, else the adapter's metadata "experts", else the server
 * default; --expert-adapter-thresholds off ignores the metadata; the server's bounds apply
 * where a request gives none. */
static void experts_precedence(void **state) {
    (void)state;
    int K = served_top_k();
    mt_engine *e = NULL;
    mt_server *s = NULL;
    int port = 0;
    mt_adaptive_k def = {.threshold = 0.000001f};
    mt_engine_opts eo = {.model_dir = base_dir,
                         .adapters_dir = dap_adapters_dir,
                         .max_seqs = 4,
                         .max_batch_tokens = 64,
                         .experts = &def,
                         .log = log_quiet};
    start(&e, &s, &port, &eo, NULL);
    experts_snap d;
    /* the server default applies to a request without the field */
    free(experts_run(port, NULL, NULL, &d));
    assert_true(experts_mean(&d) == 1);
    /* the request's 1 wins over the default: top_k, the text of the server without it */
    char *one = experts_run(port, NULL, ",\"expert_threshold\":1", &d);
    assert_true(experts_mean(&d) == K);
    experts_snap d0;
    char *off = experts_run(g_port, NULL, NULL, &d0);
    assert_string_equal(one, off);
    /* an adapter's metadata wins over the default */
    free(experts_run(port, "experts-one", NULL, &d));
    assert_true(experts_mean(&d) == K);
    free(experts_run(port, "experts-tiny", NULL, &d));
    assert_true(experts_mean(&d) == 1);
    /* the request wins over the metadata */
    free(experts_run(port, "experts-tiny", ",\"expert_threshold\":1", &d));
    assert_true(experts_mean(&d) == K);
    /* an adapter without "experts" in its metadata gets the server default */
    free(experts_run(port, "nometa", NULL, &d));
    assert_true(experts_mean(&d) == 1);
    free(experts_run(port, "meta-one", NULL, &d));
    assert_true(experts_mean(&d) == 1);
    mt_server_stop(s);
    mt_engine_free(e);

    /* metadata ignored, default off: the adapter keeps top_k; the server's bounds */
    mt_adaptive_k bounds = {.threshold = 0, .min_k = K, .max_k = K};
    mt_engine_opts eo2 = {.model_dir = base_dir,
                          .adapters_dir = dap_adapters_dir,
                          .max_seqs = 4,
                          .max_batch_tokens = 64,
                          .experts = &bounds,
                          .experts_ignore_adapter_thresholds = true,
                          .log = log_quiet};
    start(&e, &s, &port, &eo2, NULL);
    free(experts_run(port, "experts-tiny", NULL, &d));
    assert_true(experts_mean(&d) == K);
    /* the server's min_k = top_k holds a request's tiny threshold at top_k */
    free(experts_run(port, NULL, ",\"expert_threshold\":0.000001", &d));
    assert_true(experts_mean(&d) == K);
    /* a request's max_experts under the server's min_experts: 400 naming it */
    resp r = http_on(port, "POST", "/v1/completions", "{\"prompt\":\"hi\",\"max_tokens\":2,\"max_experts\":1}", NULL);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "max_experts"));
    free(r.body);
    mt_server_stop(s);
    mt_engine_free(e);

    /* a bad server default is refused at start */
    const mt_adaptive_k bad[] = {{.threshold = 1.5f}, {.threshold = 0.5f, .max_k = K + 1},
                                 {.threshold = 0.5f, .min_k = 2, .max_k = 1}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        mt_engine_opts eo3 = {.model_dir = base_dir, .experts = &bad[k], .log = log_quiet};
        mt_error err = {0};
        mt_engine *x = NULL;
        assert_int_equal(mt_engine_init(&x, g_be, &eo3, &err), MT_ERR_INVALID);
        assert_null(x);
    }
    free(one);
    free(off);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greedy_equals_generate),
        cmocka_unit_test(stream_equals_whole),
        cmocka_unit_test(stop_strings_and_echo),
        cmocka_unit_test(n_samples_are_seeded),
        cmocka_unit_test(concurrent_adapters_equal_solo),
        cmocka_unit_test(replace_in_flight),
        cmocka_unit_test(load_unload_and_confinement),
        cmocka_unit_test(watch_loads_new_exports),
        cmocka_unit_test(bad_inputs_get_4xx),
        cmocka_unit_test(logprobs_shapes),
        cmocka_unit_test(disconnect_frees_sequences),
        cmocka_unit_test(metrics_parse_as_prometheus),
        cmocka_unit_test(preemption_eviction_api_key),
        cmocka_unit_test(queue_limit_gives_429),
        cmocka_unit_test(requests_recorded_in_store),
        cmocka_unit_test(dap_bad_values_get_400),
        cmocka_unit_test(dap_zero_is_unchanged),
        cmocka_unit_test(dap_precedence),
        cmocka_unit_test(experts_bad_values_get_400),
        cmocka_unit_test(experts_one_is_unchanged),
        cmocka_unit_test(experts_precedence),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

#else

static void needs_curl(void **state) {
    (void)state;
    skip(); /* libcurl4-openssl-dev is not installed (scripts/setup.sh installs it) */
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(needs_curl)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif
