/* test_feedback.c — POST /v1/feedback black-box over loopback with libcurl: two chat
 * completions of one prompt become a conversational pair in the store with source "served" and
 * both ids, models and adapter versions in label_json; choices of one n > 1 response; ratings
 * that pair up once two of one prompt differ; every error's status and JSON body with nothing
 * stored; duplicates counted, not stored; a schema-3 store upgraded with its rows kept; and the
 * loop closed: serve, feed back, `moetune train` DPO on the served pairs into the watched
 * folder, the server serving the new adapter. */
#define _GNU_SOURCE
#include "testutil.h"

#include <cjson/cJSON.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef MT_NO_CURL
#include <curl/curl.h>
#endif

#include "engine/engine.h"
#include "model/model.h"
#include "peft/lora.h"
#include "store/store.h"

#ifndef MT_NO_CURL

static char root[4096], base_dir[4200], adapters_dir[4200], store_path[4200];
static mt_backend *g_be;
static mt_engine *g_e;
static mt_server *g_s;
static int g_port;
static int g_threads;

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

/* A rank-4 LoRA on every linear, B random so that it changes what the model says. */
static void write_adapter(const char *dir, uint64_t seed) {
    mt_error err = {0};
    mt_model *m = NULL;
    if (mt_model_load(&m, base_dir, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    char hash[65];
    mt_model_content_hash(m, hash);
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
    if (mt_lora_save_peft(l, dir, &meta, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_lora_free(l);
    mt_model_free(m);
}

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("feedback"));
    snprintf(base_dir, sizeof base_dir, "%s/base", root);
    snprintf(adapters_dir, sizeof adapters_dir, "%s/adapters", root);
    snprintf(store_path, sizeof store_path, "%s/moetune.db", root);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), base_dir);
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    if (rc != 0) return -1;
    mt_error err = {0};
    const char *omp = getenv("OMP_NUM_THREADS");
    g_threads = omp && atoi(omp) > 0 ? atoi(omp) : 2;
    if (mt_backend_init(&g_be, MT_BACKEND_CPU, g_threads, &err) != MT_OK) return -1;
    if (mt_mkdirs(adapters_dir, &err) != MT_OK) return -1;
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/ad0", adapters_dir);
    write_adapter(dir, 100);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    mt_engine_opts eo = {.model_dir = base_dir,
                         .adapters_dir = adapters_dir,
                         .watch = true,
                         .max_seqs = 8,
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

static resp http_on(int port, const char *method, const char *path, const char *body, const char *key) {
    resp r = {0};
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (key) {
        char line[300];
        snprintf(line, sizeof line, "Authorization: Bearer %s", key);
        h = curl_slist_append(h, line);
    }
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

static cJSON *post_json(int port, const char *path, const char *body, long want_status) {
    resp r = http_on(port, "POST", path, body, NULL);
    if (r.status != want_status) fail_msg("POST %s %s: status %ld, wanted %ld: %s", path, body, r.status, want_status, r.body);
    cJSON *o = cJSON_Parse(r.body);
    if (!o) fail_msg("not JSON: %s", r.body);
    free(r.body);
    return o;
}

/* A served completion: its response id and its choices' texts. */
typedef struct served {
    char id[64];
    char *text[4];
    int n;
} served;

static void served_free(served *s) {
    for (int i = 0; i < s->n; i++) free(s->text[i]);
}

static served serve(const char *path, const char *body) {
    cJSON *o = post_json(g_port, path, body, 200);
    served s = {0};
    snprintf(s.id, sizeof s.id, "%s", cJSON_GetObjectItem(o, "id")->valuestring);
    const cJSON *ch;
    cJSON_ArrayForEach(ch, cJSON_GetObjectItem(o, "choices")) {
        const cJSON *t = cJSON_GetObjectItem(ch, "text");
        if (!t) t = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"), "content");
        assert_true(cJSON_IsString(t) && s.n < 4);
        s.text[s.n++] = mt_xstrdup(t->valuestring);
    }
    cJSON_Delete(o);
    return s;
}

static served chat(const char *content, const char *model, int n, int seed) {
    char body[1024];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],%s%s%s\"n\":%d,\"seed\":%d,\"temperature\":1,"
             "\"max_tokens\":6}",
             content, model ? "\"model\":\"" : "", model ? model : "", model ? "\"," : "", n, seed);
    return serve("/v1/chat/completions", body);
}

/* chat(...) until its first text differs from `other` (sampling may repeat a short text) */
static served chat_unlike(const char *content, const char *model, const char *other, int seed) {
    for (int k = 0; k < 20; k++) {
        served s = chat(content, model, 1, seed + 97 * k);
        if (strcmp(s.text[0], other) && s.text[0][0]) return s;
        served_free(&s);
    }
    fail_msg("20 seeds gave the same text");
    return (served){0};
}

static cJSON *feedback(const char *body, long want_status) { return post_json(g_port, "/v1/feedback", body, want_status); }

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    if (!cJSON_IsNumber(v)) fail_msg("'%s' is not a number", k);
    return v->valuedouble;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    if (!cJSON_IsString(v)) fail_msg("'%s' is not a string", k);
    return v->valuestring;
}

/* The pairs of a named dataset (a fresh handle, as another process would read them). */
static mt_pair_record_list pairs_of(const char *dataset) {
    mt_store *st = NULL;
    mt_error err = {0};
    if (mt_store_open(&st, store_path, false, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_pairs_query q = {.dataset = dataset, .limit = -1};
    mt_pair_record_list l = {0};
    if (mt_store_pairs_list(st, &q, &l, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_store_close(st);
    return l;
}

static size_t count_pairs(const char *dataset) {
    mt_pair_record_list l = pairs_of(dataset);
    size_t n = l.n;
    mt_pair_record_list_free(&l);
    return n;
}

static bool dataset_exists(const char *dataset) {
    mt_store *st = NULL;
    mt_error err = {0};
    if (mt_store_open(&st, store_path, false, &err) != MT_OK) fail_msg("%s", err.msg);
    int64_t id = 0;
    mt_status rs = mt_store_pairs_dataset_id(st, dataset, &id, &err);
    mt_store_close(st);
    assert_true(rs == MT_OK || rs == MT_ERR_NOT_FOUND);
    return rs == MT_OK;
}

static char *assistant(const char *text) {
    cJSON *a = cJSON_CreateArray(), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON_AddStringToObject(m, "content", text);
    cJSON_AddItemToArray(a, m);
    char *s = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    return s;
}

/* ---- 1. a preference between two chat completions ---- */

static void chat_preference_becomes_pair(void **state) {
    (void)state;
    served base = chat("Name a colour.", NULL, 1, 11);
    served ad = chat_unlike("Name a colour.", "ad0", base.text[0], 12);
    char body[1024];
    /* sent the moment the responses arrived: the rows may still be in the writer's queue */
    snprintf(body, sizeof body, "{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"fb-chat\",\"annotator\":\"alice\"}",
             ad.id, base.id);
    cJSON *o = feedback(body, 200);
    assert_string_equal(str(o, "object"), "feedback");
    assert_string_equal(str(o, "dataset"), "fb-chat");
    assert_string_equal(str(o, "split"), "train");
    assert_int_equal((int)num(o, "pairs_added"), 1);
    assert_int_equal((int)num(o, "duplicates"), 0);
    double pair_id = num(o, "pair_id");
    cJSON_Delete(o);

    mt_pair_record_list l = pairs_of("fb-chat");
    assert_int_equal(l.n, 1);
    mt_pair_record *p = &l.items[0];
    assert_int_equal(p->id, (int64_t)pair_id);
    assert_int_equal(p->format, MT_PAIR_CONVERSATIONAL);
    assert_string_equal(p->prompt, "[{\"role\":\"user\",\"content\":\"Name a colour.\"}]");
    char *want_c = assistant(ad.text[0]), *want_r = assistant(base.text[0]);
    assert_string_equal(p->chosen, want_c);
    assert_string_equal(p->rejected, want_r);
    cJSON_free(want_c), cJSON_free(want_r);
    assert_string_equal(p->source, "served");
    assert_string_equal(p->annotator, "alice");
    assert_false(p->eval);
    cJSON *lab = cJSON_Parse(p->label_json);
    assert_non_null(lab);
    assert_string_equal(str(lab, "feedback"), "preference");
    assert_string_equal(str(lab, "chosen_id"), ad.id);
    assert_string_equal(str(lab, "rejected_id"), base.id);
    assert_int_equal((int)num(lab, "chosen_index"), 0);
    assert_string_equal(str(lab, "chosen_model"), "ad0");
    assert_string_equal(str(lab, "chosen_adapter"), "ad0");
    assert_int_equal((int)num(lab, "chosen_adapter_version"), 1);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(lab, "rejected_adapter")));
    assert_int_equal((int)num(lab, "rejected_adapter_version"), 0);
    cJSON_Delete(lab);
    mt_pair_record_list_free(&l);

    /* the same feedback again: the content hash finds the pair, nothing is added */
    o = feedback(body, 200);
    assert_int_equal((int)num(o, "pairs_added"), 0);
    assert_int_equal((int)num(o, "duplicates"), 1);
    assert_int_equal((int64_t)num(o, "pair_id"), (int64_t)pair_id);
    cJSON_Delete(o);
    l = pairs_of("fb-chat");
    assert_int_equal(l.n, 1);
    mt_pair_record_list_free(&l);
    served_free(&base);
    served_free(&ad);
}

/* ---- 2. completions: choices of one response, and a response with several prompts ---- */

static void completion_choices_become_pair(void **state) {
    (void)state;
    served s = {0};
    for (int seed = 1; seed < 40; seed++) {
        char body[256];
        snprintf(body, sizeof body, "{\"prompt\":\"The sky is\",\"n\":2,\"seed\":%d,\"temperature\":1,\"max_tokens\":5}",
                 seed);
        s = serve("/v1/completions", body);
        if (strcmp(s.text[0], s.text[1]) && s.text[0][0] && s.text[1][0]) break;
        served_free(&s);
        s.n = 0;
    }
    assert_int_equal(s.n, 2);
    char body[1024];
    snprintf(body, sizeof body,
             "{\"chosen_id\":\"%s\",\"chosen_index\":1,\"rejected_id\":\"%s\",\"rejected_index\":0,"
             "\"dataset\":\"fb-text\",\"split\":\"eval\"}",
             s.id, s.id);
    cJSON *o = feedback(body, 200);
    assert_int_equal((int)num(o, "pairs_added"), 1);
    assert_string_equal(str(o, "split"), "eval");
    cJSON_Delete(o);
    mt_pair_record_list l = pairs_of("fb-text");
    assert_int_equal(l.n, 1);
    assert_int_equal(l.items[0].format, MT_PAIR_STANDARD);
    assert_string_equal(l.items[0].prompt, "The sky is");
    assert_string_equal(l.items[0].chosen, s.text[1]);
    assert_string_equal(l.items[0].rejected, s.text[0]);
    assert_true(l.items[0].eval);
    assert_null(l.items[0].annotator);
    cJSON *lab = cJSON_Parse(l.items[0].label_json);
    assert_int_equal((int)num(lab, "chosen_index"), 1);
    assert_int_equal((int)num(lab, "rejected_index"), 0);
    assert_string_equal(str(lab, "chosen_id"), s.id);
    cJSON_Delete(lab);
    mt_pair_record_list_free(&l);
    served_free(&s);

    /* two prompts in one request: choice i answers prompt i / n, so 0 and 1 differ in prompt */
    served two = serve("/v1/completions", "{\"prompt\":[\"Alpha\",\"Beta\"],\"seed\":3,\"temperature\":1,\"max_tokens\":4}");
    assert_int_equal(two.n, 2);
    snprintf(body, sizeof body, "{\"chosen_id\":\"%s\",\"chosen_index\":1,\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}",
             two.id, two.id);
    o = feedback(body, 400);
    assert_string_equal(str(cJSON_GetObjectItem(o, "error"), "code"), "prompt_mismatch");
    cJSON_Delete(o);
    served_free(&two);
    assert_false(dataset_exists("fb-err"));
}

/* ---- 3. ratings ---- */

static void ratings_pair_up(void **state) {
    (void)state;
    served a = chat("Say a number.", NULL, 1, 21);
    served b = chat_unlike("Say a number.", NULL, a.text[0], 22);
    served c = {0};
    for (int k = 0; k < 40 && !c.n; k++) {
        c = chat("Say a number.", NULL, 1, 23 + 31 * k);
        if (!strcmp(c.text[0], a.text[0]) || !strcmp(c.text[0], b.text[0]) || !c.text[0][0]) served_free(&c), c.n = 0;
    }
    assert_int_equal(c.n, 1);
    char body[512];
    /* one rating alone is no pair; an equal one neither */
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"rating\":5,\"dataset\":\"fb-rate\",\"annotator\":\"bob\"}", a.id);
    cJSON *o = feedback(body, 200);
    assert_int_equal((int)num(o, "pairs_added"), 0);
    assert_int_equal((int)num(o, "rating"), 5);
    assert_string_equal(str(o, "id"), a.id);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "pair_id")));
    cJSON_Delete(o);
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"index\":0,\"rating\":5,\"dataset\":\"fb-rate\"}", b.id);
    o = feedback(body, 200);
    assert_int_equal((int)num(o, "pairs_added"), 0);
    cJSON_Delete(o);
    assert_int_equal(count_pairs("fb-rate"), 0);
    /* a lower one pairs with both */
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"rating\":1.5,\"dataset\":\"fb-rate\",\"annotator\":\"bob\"}", c.id);
    o = feedback(body, 200);
    assert_int_equal((int)num(o, "pairs_added"), 2);
    cJSON_Delete(o);
    mt_pair_record_list l = pairs_of("fb-rate");
    assert_int_equal(l.n, 2);
    char *rej = assistant(c.text[0]);
    for (size_t i = 0; i < l.n; i++) {
        assert_string_equal(l.items[i].rejected, rej);
        assert_string_equal(l.items[i].source, "served");
        cJSON *lab = cJSON_Parse(l.items[i].label_json);
        assert_string_equal(str(lab, "feedback"), "rating");
        assert_true(num(lab, "chosen_rating") == 5);
        assert_true(num(lab, "rejected_rating") == 1.5);
        assert_string_equal(str(lab, "rejected_id"), c.id);
        const char *cid = str(lab, "chosen_id");
        assert_true(!strcmp(cid, a.id) || !strcmp(cid, b.id));
        /* the annotator is kept when both ratings had the same one (a: bob; b: none) */
        if (!strcmp(cid, a.id))
            assert_string_equal(l.items[i].annotator, "bob");
        else
            assert_null(l.items[i].annotator);
        cJSON_Delete(lab);
    }
    cJSON_free(rej);
    mt_pair_record_list_free(&l);
    /* rating a again with the same value: its pair with c is already there */
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"rating\":5,\"dataset\":\"fb-rate\",\"annotator\":\"bob\"}", a.id);
    o = feedback(body, 200);
    assert_int_equal((int)num(o, "pairs_added"), 0);
    assert_int_equal((int)num(o, "duplicates"), 1);
    cJSON_Delete(o);
    assert_int_equal(count_pairs("fb-rate"), 2);
    served_free(&a), served_free(&b), served_free(&c);
}

/* ---- 4. every error: status, param, code; nothing stored ---- */

static void expect_error(const char *body, long status, const char *param, const char *code, const char *in_message) {
    cJSON *o = feedback(body, status);
    const cJSON *e = cJSON_GetObjectItem(o, "error");
    if (!cJSON_IsObject(e)) fail_msg("%s: no error object", body);
    const cJSON *p = cJSON_GetObjectItem(e, "param"), *c = cJSON_GetObjectItem(e, "code");
    if (param ? !cJSON_IsString(p) || strcmp(p->valuestring, param) : !cJSON_IsNull(p))
        fail_msg("%s: param %s, wanted %s", body, cJSON_IsString(p) ? p->valuestring : "null", param ? param : "null");
    if (code ? !cJSON_IsString(c) || strcmp(c->valuestring, code) : !cJSON_IsNull(c))
        fail_msg("%s: code %s, wanted %s", body, cJSON_IsString(c) ? c->valuestring : "null", code ? code : "null");
    assert_true(cJSON_IsString(cJSON_GetObjectItem(e, "message")));
    assert_string_equal(str(e, "type"), status >= 500 ? "server_error" : "invalid_request_error");
    if (in_message && !strstr(str(e, "message"), in_message))
        fail_msg("%s: message '%s' lacks '%s'", body, str(e, "message"), in_message);
    cJSON_Delete(o);
}

static void errors_store_nothing(void **state) {
    (void)state;
    served a = chat("Pick a fruit.", NULL, 1, 31);
    served b = chat_unlike("Pick a fruit.", NULL, a.text[0], 32);
    served other = chat("Pick a tree.", NULL, 1, 33);
    served text = serve("/v1/completions", "{\"prompt\":\"Pick a fruit.\",\"seed\":4,\"temperature\":1,\"max_tokens\":4}");
    served g1 = serve("/v1/completions", "{\"prompt\":\"Same\",\"temperature\":0,\"max_tokens\":4}");
    served g2 = serve("/v1/completions", "{\"prompt\":\"Same\",\"temperature\":0,\"max_tokens\":4}");
    assert_string_equal(g1.text[0], g2.text[0]);
    char body[1024];
#define FB(fmt, ...) (snprintf(body, sizeof body, fmt, __VA_ARGS__), body)
    expect_error(FB("{\"chosen_id\":\"chatcmpl-nosuch\",\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}", b.id), 404,
                 "chosen_id", "completion_not_found", "chatcmpl-nosuch");
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"cmpl-0000\",\"dataset\":\"fb-err\"}", a.id), 404,
                 "rejected_id", "completion_not_found", "cmpl-0000");
    expect_error("{\"id\":\"chatcmpl-gone\",\"rating\":1,\"dataset\":\"fb-err\"}", 404, "id",
                 "completion_not_found", "chatcmpl-gone");
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}", a.id, other.id), 400,
                 "rejected_id", "prompt_mismatch", other.id);
    /* the same words as chat and as a completion are two prompts (two forms) */
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}", text.id, a.id), 400,
                 "rejected_id", "prompt_mismatch", NULL);
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}", a.id, a.id), 400,
                 "rejected_id", "same_completion", a.id);
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}", g1.id, g2.id), 400,
                 "rejected_id", "identical_completions", NULL);
    expect_error(FB("{\"chosen_id\":\"%s\",\"chosen_index\":3,\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}", a.id, b.id),
                 400, "chosen_index", "invalid_choice", "no index 3");
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"rejected_index\":-1,\"dataset\":\"fb-err\"}", a.id, b.id),
                 400, "rejected_index", NULL, NULL);
    /* malformed bodies and fields, each named */
    expect_error("{\"chosen_id\":", 400, NULL, NULL, "not valid JSON");
    expect_error("", 400, NULL, NULL, "not valid JSON");
    expect_error("[1,2]", 400, NULL, NULL, "JSON object");
    expect_error(FB("{\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}", b.id), 400, "chosen_id", NULL, "required");
    expect_error(FB("{\"chosen_id\":\"%s\",\"dataset\":\"fb-err\"}", a.id), 400, "rejected_id", NULL, "required");
    expect_error(FB("{\"chosen_id\":7,\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}", b.id), 400, "chosen_id", NULL,
                 "string");
    expect_error(FB("{\"chosen_id\":\"\",\"rejected_id\":\"%s\",\"dataset\":\"fb-err\"}", b.id), 400, "chosen_id", NULL,
                 "empty");
    expect_error(FB("{\"chosen\":\"%s\",\"rejected\":\"%s\",\"dataset\":\"fb-err\"}", a.id, b.id), 400, "chosen", NULL,
                 "unknown field");
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"chosen_index\":1.5,\"dataset\":\"fb-err\"}", a.id, b.id),
                 400, "chosen_index", NULL, "integer");
    expect_error(FB("{\"id\":\"%s\",\"dataset\":\"fb-err\"}", a.id), 400, "rating", NULL, "required");
    expect_error(FB("{\"id\":\"%s\",\"rating\":\"good\",\"dataset\":\"fb-err\"}", a.id), 400, "rating", NULL, "number");
    expect_error("{\"rating\":3,\"dataset\":\"fb-err\"}", 400, "id", NULL, "required");
    expect_error(FB("{\"id\":\"%s\",\"rating\":3,\"chosen_id\":\"%s\",\"dataset\":\"fb-err\"}", a.id, b.id), 400, "rating",
                 NULL, "not both");
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"\"}", a.id, b.id), 400, "dataset", NULL,
                 "empty");
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"fb-err\",\"split\":\"test\"}", a.id, b.id),
                 400, "split", NULL, "train");
    expect_error(FB("{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"fb-err\",\"annotator\":3}", a.id, b.id), 400,
                 "annotator", NULL, "string");
#undef FB
    resp r = http_on(g_port, "GET", "/v1/feedback", NULL, NULL);
    assert_int_equal(r.status, 405);
    free(r.body);
    assert_false(dataset_exists("fb-err"));

    /* an API key guards it like the other /v1 routes (a second server on the same engine) */
    mt_server *ks = NULL;
    mt_error err = {0};
    mt_server_opts so = {.port = 0, .api_key = "sekrit"};
    assert_int_equal(mt_server_start(&ks, g_e, &so, &err), MT_OK);
    snprintf(body, sizeof body, "{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"fb-key\"}", a.id, b.id);
    r = http_on(mt_server_port(ks), "POST", "/v1/feedback", body, NULL);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.body, "invalid_api_key"));
    free(r.body);
    r = http_on(mt_server_port(ks), "POST", "/v1/feedback", body, "wrong");
    assert_int_equal(r.status, 401);
    free(r.body);
    assert_false(dataset_exists("fb-key"));
    r = http_on(mt_server_port(ks), "POST", "/v1/feedback", body, "sekrit");
    assert_int_equal(r.status, 200);
    free(r.body);
    mt_server_stop(ks);
    assert_int_equal(count_pairs("fb-key"), 1);

    /* a server without --store says so */
    mt_engine *e2 = NULL;
    mt_server *s2 = NULL;
    int port2 = 0;
    mt_engine_opts eo = {.model_dir = base_dir, .max_seqs = 2, .log = log_quiet};
    start(&e2, &s2, &port2, &eo, NULL);
    r = http_on(port2, "POST", "/v1/feedback", body, NULL);
    assert_int_equal(r.status, 409);
    cJSON *o = cJSON_Parse(r.body);
    assert_string_equal(str(cJSON_GetObjectItem(o, "error"), "code"), "no_store");
    assert_non_null(strstr(str(cJSON_GetObjectItem(o, "error"), "message"), "--store"));
    cJSON_Delete(o);
    free(r.body);
    mt_server_stop(s2);
    mt_engine_free(e2);
    served_free(&a), served_free(&b), served_free(&other), served_free(&text), served_free(&g1), served_free(&g2);
}

/* ---- 5. a store written before feedback existed (schema 3) upgrades, its rows kept ---- */

static void raw_exec(sqlite3 *db, const char *sql) {
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) fail_msg("%s: %s", sql, msg);
}

static int64_t raw_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void schema3_store_upgrades(void **state) {
    (void)state;
    char path[4300];
    snprintf(path, sizeof path, "%s/old.db", root);
    mt_store *s = NULL;
    mt_error err = {0};
    assert_int_equal(mt_store_open(&s, path, true, &err), MT_OK);
    mt_store_close(s);
    /* take migration 3 -> 4 back out, leaving what a schema-3 binary wrote, and one old row */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    raw_exec(db, "DROP INDEX served_by_response; DROP TABLE served_ratings;"
                 "ALTER TABLE served DROP COLUMN n_per_prompt; ALTER TABLE served DROP COLUMN prompts_json;"
                 "ALTER TABLE served DROP COLUMN response_id; PRAGMA user_version = 3;"
                 "INSERT INTO served (time, endpoint, status, prompt, completions_json)"
                 " VALUES (1, '/v1/completions', 200, 'old prompt', '[\"old text\"]')");
    sqlite3_close(db);
    assert_int_equal(mt_store_open(&s, path, false, &err), MT_OK);
    int64_t n = 0;
    assert_int_equal(mt_store_served_count(s, &n, &err), MT_OK);
    assert_int_equal(n, 1);
    mt_served_choice c;
    assert_int_equal(mt_store_served_choice(s, "cmpl-0123456789abcdef", 0, &c, &err), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "cmpl-0123456789abcdef"));
    mt_served_choice_free(&c);
    /* a new row is findable at once */
    mt_store_served row = {.time = 2, .endpoint = "/v1/completions", .status = 200, .n_choices = 1,
                           .prompt = "p", .completions_json = "[\" q\"]", .response_id = "cmpl-new",
                           .prompts_json = "[\"p\"]", .n_per_prompt = 1};
    assert_int_equal(mt_store_served_add(s, &row, 1, &err), MT_OK);
    assert_int_equal(mt_store_served_choice(s, "cmpl-new", 0, &c, &err), MT_OK);
    assert_string_equal(c.prompt, "p");
    assert_string_equal(c.completion, " q");
    assert_int_equal(c.format, MT_PAIR_STANDARD);
    mt_served_choice_free(&c);
    mt_store_close(s);
    db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(raw_int(db, "PRAGMA user_version"), MT_STORE_SCHEMA_VERSION);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM served WHERE prompt = 'old prompt' AND response_id IS NULL"), 1);
    sqlite3_close(db);
}

/* ---- 6. the loop: serve, feed back, train DPO on the served pairs, serve the result ---- */

/* the loaded version of `name` in /v1/models, 0 when it is not loaded */
static int served_version(const char *name) {
    resp r = http_on(g_port, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 200);
    cJSON *o = cJSON_Parse(r.body);
    free(r.body);
    int v = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItem(o, "data")) {
        if (strcmp(str(m, "id"), name)) continue;
        const cJSON *x = cJSON_GetObjectItem(m, "moetune");
        if (cJSON_IsTrue(cJSON_GetObjectItem(x, "loaded"))) v = (int)num(x, "version");
    }
    cJSON_Delete(o);
    return v;
}

static void train_on_served_pairs(void **state) {
    (void)state;
    static const char *const prompts[] = {"Tell me a fact.", "Greet me.", "Name an animal.", "Count to three.",
                                          "Describe rain.", "Pick a word."};
    size_t n_prompts = sizeof prompts / sizeof prompts[0];
    for (size_t i = 0; i < n_prompts; i++) {
        served s = {0};
        for (int k = 0; k < 30; k++) {
            s = chat(prompts[i], NULL, 2, 50 + (int)i * 100 + k * 2);
            if (strcmp(s.text[0], s.text[1]) && s.text[0][0] && s.text[1][0]) break;
            served_free(&s);
            s.n = 0;
        }
        assert_int_equal(s.n, 2);
        char body[512];
        snprintf(body, sizeof body,
                 "{\"chosen_id\":\"%s\",\"chosen_index\":0,\"rejected_id\":\"%s\",\"rejected_index\":1,\"dataset\":\"loop\"}",
                 s.id, s.id);
        cJSON *o = feedback(body, 200);
        assert_int_equal((int)num(o, "pairs_added"), 1);
        cJSON_Delete(o);
        served_free(&s);
    }
    assert_int_equal(count_pairs("loop"), n_prompts);

    char dir[4200], recipe[4300], adapter[4300];
    snprintf(dir, sizeof dir, "%s/loop", root);
    snprintf(recipe, sizeof recipe, "%s/recipe.yaml", dir);
    snprintf(adapter, sizeof adapter, "%s/loop-lora", adapters_dir);
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(dir, &err), MT_OK);
    FILE *f = fopen(recipe, "w");
    assert_non_null(f);
    fprintf(f,
            "name: loop\nmethod: dpo\nmodel:\n  path: %s\n"
            "adapter:\n  type: lora\n  r: 4\n  alpha: 8\n  dropout: 0\n  targets: all-linear\n"
            "data:\n  pairs: loop\n  max_seq_len: 48\n"
            "train:\n  seed: 5\n  steps: 2\n  micro_batch: 2\n  grad_accum: 1\n  lr: 1e-2\n  warmup_steps: 0\n"
            "  threads: %d\n  log_every: 1\n  eval_every: 0\n  save_every: 0\n  router_noise: 0\n"
            "  router_aux_coef: 0\n  clip_norm: 0\n"
            "thresholds:\n  dap: 0\n"
            "output:\n  dir: %s/run\n  adapter: %s\n  store: %s\n",
            base_dir, g_threads, dir, adapter, store_path);
    fclose(f);
    assert_int_equal(served_version("loop-lora"), 0);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "train '%s'", recipe);
    if (rc != 0) fail_msg("moetune train: %s", out);
    free(out);

    /* --watch loads the export once its files are quiet */
    int v = 0;
    for (int i = 0; i < 300 && !v; i++) {
        mt_engine_watch_sync(g_e);
        v = served_version("loop-lora");
        if (!v) usleep(50 * 1000);
    }
    assert_true(v >= 1);
    /* and serves it: its completions feed back like any other, labelled with its version */
    served base = chat("Tell me a fact.", NULL, 1, 7);
    served tuned = chat_unlike("Tell me a fact.", "loop-lora", base.text[0], 8);
    char body[512];
    snprintf(body, sizeof body, "{\"chosen_id\":\"%s\",\"rejected_id\":\"%s\",\"dataset\":\"loop-2\"}", tuned.id, base.id);
    cJSON *o = feedback(body, 200);
    assert_int_equal((int)num(o, "pairs_added"), 1);
    cJSON_Delete(o);
    mt_pair_record_list l = pairs_of("loop-2");
    assert_int_equal(l.n, 1);
    cJSON *lab = cJSON_Parse(l.items[0].label_json);
    assert_string_equal(str(lab, "chosen_adapter"), "loop-lora");
    assert_int_equal((int)num(lab, "chosen_adapter_version"), v);
    cJSON_Delete(lab);
    mt_pair_record_list_free(&l);
    served_free(&base), served_free(&tuned);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chat_preference_becomes_pair),
        cmocka_unit_test(completion_choices_become_pair),
        cmocka_unit_test(ratings_pair_up),
        cmocka_unit_test(errors_store_nothing),
        cmocka_unit_test(schema3_store_upgrades),
        cmocka_unit_test(train_on_served_pairs),
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
