/* api.c — the OpenAI/vLLM request bodies: parsing and validating /v1/completions,
 * /v1/chat/completions into mt_eng_params, the LoRA load/unload and /v1/feedback bodies into
 * theirs, and OpenAI-style error bodies. Everything here treats its input as hostile: each
 * field is checked for type and range and named in the error, and no input can make it crash
 * (fuzz/fuzz_request.c). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine-impl.h"

void mt_eng_herr(mt_eng_http_error *h, int status, const char *type, const char *param, const char *code,
                 const char *fmt, ...) {
    h->status = status;
    h->type = type;
    snprintf(h->param, sizeof h->param, "%s", param ? param : "");
    h->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->message, sizeof h->message, fmt, ap);
    va_end(ap);
}

char *mt_eng_error_json(const mt_eng_http_error *h) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", h->message);
    cJSON_AddStringToObject(e, "type", h->type ? h->type : "invalid_request_error");
    if (h->param[0])
        cJSON_AddStringToObject(e, "param", h->param);
    else
        cJSON_AddNullToObject(e, "param");
    if (h->code)
        cJSON_AddStringToObject(e, "code", h->code);
    else
        cJSON_AddNullToObject(e, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* One JSON value and nothing but whitespace after it (cJSON alone stops at the value's end). */
static cJSON *parse_json(const char *body, size_t len, const char **end) {
    *end = NULL;
    if (len == 0) return NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(body, len, end, false);
    if (!o) return NULL;
    for (const char *p = *end; p && p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(o);
            *end = p;
            return NULL;
        }
    return o;
}

static const char *json_type_name(const cJSON *v) {
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "invalid";
}

static bool bad(mt_eng_http_error *h, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool bad(mt_eng_http_error *h, const char *param, const char *fmt, ...) {
    h->status = 400;
    h->type = "invalid_request_error";
    snprintf(h->param, sizeof h->param, "%s", param ? param : "");
    h->code = NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->message, sizeof h->message, fmt, ap);
    va_end(ap);
    return false;
}

/* A field that is absent or null takes its default (clients send null for "not set"). */
static const cJSON *field(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNull(v) ? NULL : v;
}

static bool get_number(const cJSON *o, const char *name, double lo, double hi, bool lo_open, double *out,
                       mt_eng_http_error *h) {
    const cJSON *v = field(o, name);
    if (!v) return true;
    if (!cJSON_IsNumber(v)) return bad(h, name, "'%s' must be a number, not %s", name, json_type_name(v));
    double x = v->valuedouble;
    if (!isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo))
        return bad(h, name, "'%s' is %g; it must be in %s%g, %g]", name, x, lo_open ? "(" : "[", lo, hi);
    *out = x;
    return true;
}

static bool get_int(const cJSON *o, const char *name, double lo, double hi, int64_t *out, mt_eng_http_error *h) {
    const cJSON *v = field(o, name);
    if (!v) return true;
    if (!cJSON_IsNumber(v)) return bad(h, name, "'%s' must be an integer, not %s", name, json_type_name(v));
    double x = v->valuedouble;
    if (!isfinite(x) || floor(x) != x) return bad(h, name, "'%s' must be an integer, not %g", name, x);
    if (x < lo || x > hi) return bad(h, name, "'%s' is %.0f; it must be in [%.0f, %.0f]", name, x, lo, hi);
    *out = (int64_t)x;
    return true;
}

static bool get_bool(const cJSON *o, const char *name, bool *out, mt_eng_http_error *h) {
    const cJSON *v = field(o, name);
    if (!v) return true;
    if (!cJSON_IsBool(v)) return bad(h, name, "'%s' must be a boolean, not %s", name, json_type_name(v));
    *out = cJSON_IsTrue(v);
    return true;
}

/* Sampling and stopping fields both endpoints share. */
static bool parse_common(const cJSON *o, mt_eng_endpoint ep, const mt_eng_parse_limits *lim, mt_eng_params *p,
                         mt_eng_http_error *h) {
    const cJSON *v;
    if ((v = field(o, "model"))) {
        if (!cJSON_IsString(v)) return bad(h, "model", "'model' must be a string, not %s", json_type_name(v));
        if (strlen(v->valuestring) >= sizeof p->model)
            return bad(h, "model", "'model' is longer than %zu bytes", sizeof p->model - 1);
        snprintf(p->model, sizeof p->model, "%s", v->valuestring);
    }
    double d;
    int64_t i;
    d = 1.0;
    if (!get_number(o, "temperature", 0, 2, false, &d, h)) return false;
    p->temperature = (float)d;
    d = 1.0;
    if (!get_number(o, "top_p", 0, 1, true, &d, h)) return false;
    p->top_p = (float)d;
    i = 0;
    if (!get_int(o, "top_k", -1, 1e9, &i, h)) return false;
    p->top_k = i < 0 ? 0 : (int)i;
    if ((v = field(o, "seed"))) {
        if (!cJSON_IsNumber(v) || floor(v->valuedouble) != v->valuedouble || fabs(v->valuedouble) > 9.2e18)
            return bad(h, "seed", "'seed' must be an integer");
        p->seed = (uint64_t)(int64_t)v->valuedouble;
        p->seed_given = true;
    }
    /* max_completion_tokens is the newer OpenAI name for chat; the larger legal value is the
     * server's cap, checked where the context length is known */
    i = 0;
    if (!get_int(o, "max_tokens", 1, 1e9, &i, h)) return false;
    if (ep == MT_EP_CHAT && !field(o, "max_tokens") && !get_int(o, "max_completion_tokens", 1, 1e9, &i, h))
        return false;
    p->max_tokens = (int)i;
    i = 0;
    if (!get_int(o, "min_tokens", 0, 1e9, &i, h)) return false;
    p->min_tokens = (int)i;
    if (p->max_tokens && p->min_tokens > p->max_tokens)
        return bad(h, "min_tokens", "'min_tokens' (%d) exceeds 'max_tokens' (%d)", p->min_tokens, p->max_tokens);
    i = 1;
    if (!get_int(o, "n", 1, lim->max_choices, &i, h)) return false;
    p->n = (int)i;
    int64_t best_of = p->n;
    if (!get_int(o, "best_of", 1, lim->max_choices, &best_of, h)) return false;
    if (best_of != p->n) return bad(h, "best_of", "'best_of' other than 'n' is not supported");
    if (!get_bool(o, "stream", &p->stream, h)) return false;
    if ((v = field(o, "stream_options"))) {
        if (!cJSON_IsObject(v))
            return bad(h, "stream_options", "'stream_options' must be an object, not %s", json_type_name(v));
        if (!p->stream) return bad(h, "stream_options", "'stream_options' is only allowed when 'stream' is true");
        if (!get_bool(v, "include_usage", &p->include_usage, h)) return false;
    }
    d = 0;
    if (!get_number(o, "presence_penalty", -2, 2, false, &d, h)) return false;
    p->presence_penalty = (float)d;
    d = 0;
    if (!get_number(o, "frequency_penalty", -2, 2, false, &d, h)) return false;
    p->frequency_penalty = (float)d;
    d = 1;
    if (!get_number(o, "repetition_penalty", 0, 2, true, &d, h)) return false;
    p->repetition_penalty = (float)d;
    /* DAP τ of the decode steps (docs/attention-pruning.md); absent or null: the adapter's, else
     * the server's */
    d = -1;
    if (!get_number(o, "dap_threshold", 0, 1, false, &d, h)) return false;
    p->dap_given = d >= 0;
    p->dap_threshold = p->dap_given ? (float)d : 0.0f;
    /* adaptive expert counts (docs/attention-pruning.md); absent or null: the adapter's "experts",
     * else the server's; the bounds, when given, replace the server's */
    d = -1;
    if (!get_number(o, "expert_threshold", 0, 1, false, &d, h)) return false;
    p->experts_given = d >= 0;
    p->expert_threshold = p->experts_given ? (float)d : 0.0f;
    int kmax = lim->top_k > 0 ? lim->top_k : 1;
    i = 0;
    if (!get_int(o, "min_experts", 1, kmax, &i, h)) return false;
    p->min_experts = (int)i;
    i = 0;
    if (!get_int(o, "max_experts", 1, kmax, &i, h)) return false;
    p->max_experts = (int)i;
    if (p->min_experts && p->max_experts && p->min_experts > p->max_experts)
        return bad(h, "min_experts", "'min_experts' (%d) exceeds 'max_experts' (%d)", p->min_experts, p->max_experts);
    if (!get_bool(o, "ignore_eos", &p->ignore_eos, h)) return false;
    p->skip_special = true;
    if (!get_bool(o, "skip_special_tokens", &p->skip_special, h)) return false;

    if ((v = field(o, "stop"))) {
        if (cJSON_IsString(v)) {
            if (!v->valuestring[0]) return bad(h, "stop", "'stop' strings must not be empty");
            if (strlen(v->valuestring) > MT_ENG_MAX_STOP_LEN)
                return bad(h, "stop", "'stop' strings are at most %d bytes", MT_ENG_MAX_STOP_LEN);
            snprintf(p->stop[0], sizeof p->stop[0], "%s", v->valuestring);
            p->n_stop = 1;
        } else if (cJSON_IsArray(v)) {
            int n = cJSON_GetArraySize(v);
            if (n > MT_ENG_MAX_STOP) return bad(h, "stop", "'stop' holds at most %d strings", MT_ENG_MAX_STOP);
            const cJSON *s;
            cJSON_ArrayForEach(s, v) {
                if (!cJSON_IsString(s)) return bad(h, "stop", "'stop' must hold strings, not %s", json_type_name(s));
                if (!s->valuestring[0]) return bad(h, "stop", "'stop' strings must not be empty");
                if (strlen(s->valuestring) > MT_ENG_MAX_STOP_LEN)
                    return bad(h, "stop", "'stop' strings are at most %d bytes", MT_ENG_MAX_STOP_LEN);
                snprintf(p->stop[p->n_stop++], sizeof p->stop[0], "%s", s->valuestring);
            }
        } else {
            return bad(h, "stop", "'stop' must be a string or an array of strings, not %s", json_type_name(v));
        }
    }
    if ((v = field(o, "stop_token_ids"))) {
        if (!cJSON_IsArray(v)) return bad(h, "stop_token_ids", "'stop_token_ids' must be an array of token ids");
        if (cJSON_GetArraySize(v) > MT_ENG_MAX_STOP_IDS)
            return bad(h, "stop_token_ids", "'stop_token_ids' holds at most %d ids", MT_ENG_MAX_STOP_IDS);
        const cJSON *s;
        cJSON_ArrayForEach(s, v) {
            double x = cJSON_IsNumber(s) ? s->valuedouble : -1;
            if (floor(x) != x || x < 0 || x >= lim->vocab_size)
                return bad(h, "stop_token_ids", "'stop_token_ids' must hold token ids in [0, %d)", lim->vocab_size);
            p->stop_ids[p->n_stop_ids++] = (int32_t)x;
        }
    }
    if ((v = field(o, "logit_bias"))) {
        if (!cJSON_IsObject(v))
            return bad(h, "logit_bias", "'logit_bias' must be an object of token id to bias, not %s",
                       json_type_name(v));
        if (cJSON_GetArraySize(v) > MT_ENG_MAX_BIAS)
            return bad(h, "logit_bias", "'logit_bias' holds at most %d entries", MT_ENG_MAX_BIAS);
        const cJSON *s;
        cJSON_ArrayForEach(s, v) {
            char *end = NULL;
            long id = s->string ? strtol(s->string, &end, 10) : -1;
            if (!s->string || !s->string[0] || *end || id < 0 || id >= lim->vocab_size)
                return bad(h, "logit_bias", "'logit_bias' keys must be token ids in [0, %d)", lim->vocab_size);
            if (!cJSON_IsNumber(s) || !isfinite(s->valuedouble) || fabs(s->valuedouble) > 100)
                return bad(h, "logit_bias", "'logit_bias' values must be numbers in [-100, 100]");
            p->bias_ids[p->n_bias] = (int32_t)id;
            p->bias_values[p->n_bias++] = (float)s->valuedouble;
        }
    }
    if ((v = field(o, "response_format"))) {
        const cJSON *t = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "type") : NULL;
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text"))
            return bad(h, "response_format", "only 'response_format' {\"type\": \"text\"} is supported");
    }
    if ((v = field(o, "tools")) && (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > 0))
        return bad(h, "tools", "tool calling is not supported by this server");
    return true;
}

/* A prompt as token ids: every entry an integer id of the vocabulary. */
static bool parse_ids(const cJSON *a, const mt_eng_parse_limits *lim, mt_eng_prompt *out, mt_eng_http_error *h) {
    int n = cJSON_GetArraySize(a);
    out->ids = mt_xmalloc((size_t)(n ? n : 1) * sizeof(int32_t));
    out->n_ids = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, a) {
        double x = cJSON_IsNumber(t) ? t->valuedouble : -1;
        if (!cJSON_IsNumber(t) || floor(x) != x || x < 0 || x >= lim->vocab_size)
            return bad(h, "prompt", "token ids in 'prompt' must be integers in [0, %d)", lim->vocab_size);
        out->ids[out->n_ids++] = (int32_t)x;
    }
    if (n == 0) return bad(h, "prompt", "'prompt' must not be empty");
    return true;
}

static bool all_numbers(const cJSON *a) {
    const cJSON *t;
    cJSON_ArrayForEach(t, a) if (!cJSON_IsNumber(t)) return false;
    return true;
}

/* prompt: a string, an array of strings, an array of token ids, or an array of such arrays. */
static bool parse_prompts(const cJSON *o, const mt_eng_parse_limits *lim, mt_eng_prompt **out, int *n_out,
                          mt_eng_http_error *h) {
    const cJSON *v = field(o, "prompt");
    if (!v) return bad(h, "prompt", "'prompt' is required");
    int n = 1;
    bool single = cJSON_IsString(v) || (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0 && all_numbers(v));
    if (!single) {
        if (!cJSON_IsArray(v))
            return bad(h, "prompt", "'prompt' must be a string, an array of strings or of token ids, not %s",
                       json_type_name(v));
        n = cJSON_GetArraySize(v);
        if (n == 0) return bad(h, "prompt", "'prompt' must not be empty");
        if (n > lim->max_prompts) return bad(h, "prompt", "'prompt' holds at most %d prompts", lim->max_prompts);
    }
    mt_eng_prompt *ps = mt_xcalloc((size_t)n, sizeof *ps);
    *out = ps;
    *n_out = n;
    for (int k = 0; k < n; k++) {
        const cJSON *e = single ? v : cJSON_GetArrayItem(v, k);
        if (cJSON_IsString(e)) {
            ps[k].text = mt_xstrdup(e->valuestring);
        } else if (cJSON_IsArray(e) && all_numbers(e)) {
            if (!parse_ids(e, lim, &ps[k], h)) return false;
        } else {
            return bad(h, "prompt", "'prompt' entries must be strings or arrays of token ids, not %s",
                       json_type_name(e));
        }
    }
    return true;
}

/* content: a string, or an array of {"type":"text","text":...} parts (concatenated). */
static bool parse_content(const cJSON *c, char **out, mt_eng_http_error *h) {
    if (!c) {
        *out = mt_xstrdup("");
        return true;
    }
    if (cJSON_IsString(c)) {
        *out = mt_xstrdup(c->valuestring);
        return true;
    }
    if (!cJSON_IsArray(c))
        return bad(h, "messages", "message 'content' must be a string or an array of parts, not %s",
                   json_type_name(c));
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") ||
            !cJSON_IsString(text))
            return bad(h, "messages", "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
        len += strlen(text->valuestring);
    }
    char *s = mt_xmalloc(len + 1);
    size_t at = 0;
    cJSON_ArrayForEach(part, c) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t l = strlen(t);
        memcpy(s + at, t, l);
        at += l;
    }
    s[at] = 0;
    *out = s;
    return true;
}

static bool parse_messages(const cJSON *o, mt_eng_chat_msgs *m, mt_eng_http_error *h) {
    const cJSON *v = field(o, "messages");
    if (!v) return bad(h, "messages", "'messages' is required");
    if (!cJSON_IsArray(v)) return bad(h, "messages", "'messages' must be an array, not %s", json_type_name(v));
    int n = cJSON_GetArraySize(v);
    if (n == 0) return bad(h, "messages", "'messages' must not be empty");
    m->role = mt_xcalloc((size_t)n, sizeof(char *));
    m->content = mt_xcalloc((size_t)n, sizeof(char *));
    const cJSON *msg;
    cJSON_ArrayForEach(msg, v) {
        if (!cJSON_IsObject(msg)) return bad(h, "messages", "each message must be an object, not %s", json_type_name(msg));
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
        if (!cJSON_IsString(role) || !role->valuestring[0])
            return bad(h, "messages", "message %d: 'role' must be a non-empty string", m->n);
        static const char *const roles[] = {"system", "user", "assistant", "developer", "tool"};
        bool known = false;
        for (size_t r = 0; r < sizeof roles / sizeof roles[0]; r++) known |= !strcmp(role->valuestring, roles[r]);
        if (!known)
            return bad(h, "messages", "message %d: unknown role '%.64s' (system, user, assistant, developer, tool)",
                       m->n, role->valuestring);
        m->role[m->n] = mt_xstrdup(role->valuestring);
        if (!parse_content(field(msg, "content"), &m->content[m->n], h)) {
            m->n++;
            return false;
        }
        m->n++;
    }
    return true;
}

bool mt_eng_parse_request(mt_eng_endpoint ep, const char *body, size_t len, const mt_eng_parse_limits *lim,
                          mt_eng_params *p, mt_eng_prompt **prompts, int *n_prompts, mt_eng_chat_msgs *msgs,
                          mt_eng_http_error *herr) {
    memset(p, 0, sizeof *p);
    *prompts = NULL;
    *n_prompts = 0;
    memset(msgs, 0, sizeof *msgs);
    const char *end = NULL;
    cJSON *o = parse_json(body, len, &end);
    if (!o) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        return bad(herr, NULL, "the body is not valid JSON (near byte %zu)", at);
    }
    bool ok = true;
    if (!cJSON_IsObject(o)) ok = bad(herr, NULL, "the body must be a JSON object, not %s", json_type_name(o));
    if (ok) ok = parse_common(o, ep, lim, p, herr);
    if (ok && ep == MT_EP_COMPLETIONS) {
        const cJSON *lp = field(o, "logprobs");
        if (lp) {
            int64_t k = 0;
            if (!get_int(o, "logprobs", 0, MT_ENG_MAX_TOP_LOGPROBS, &k, herr)) ok = false;
            p->logprobs = true;
            p->top_logprobs = (int)k;
        }
        if (ok) ok = get_bool(o, "echo", &p->echo, herr);
        const cJSON *sfx = field(o, "suffix");
        if (ok && sfx && (!cJSON_IsString(sfx) || sfx->valuestring[0]))
            ok = bad(herr, "suffix", "'suffix' is not supported");
        if (ok && p->echo && p->logprobs)
            ok = bad(herr, "echo", "'echo' together with 'logprobs' is not supported");
        if (ok) ok = parse_prompts(o, lim, prompts, n_prompts, herr);
        if (ok && (int64_t)*n_prompts * p->n > lim->max_choices)
            ok = bad(herr, "n", "%d prompts × n = %d gives more than %d choices", *n_prompts, p->n, lim->max_choices);
    } else if (ok && ep == MT_EP_CHAT) {
        if (!get_bool(o, "logprobs", &p->logprobs, herr)) ok = false;
        int64_t k = 0;
        if (ok && !get_int(o, "top_logprobs", 0, MT_ENG_MAX_TOP_LOGPROBS, &k, herr)) ok = false;
        if (ok && k > 0 && !p->logprobs) ok = bad(herr, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        p->top_logprobs = (int)k;
        if (ok) ok = parse_messages(o, msgs, herr);
    }
    cJSON_Delete(o);
    return ok;
}

void mt_eng_prompts_free(mt_eng_prompt *p, int n) {
    if (!p) return;
    for (int i = 0; i < n; i++) {
        free(p[i].text);
        free(p[i].ids);
    }
    free(p);
}

void mt_eng_chat_msgs_free(mt_eng_chat_msgs *m) {
    for (int i = 0; i < m->n; i++) {
        free(m->role[i]);
        free(m->content[i]);
    }
    free(m->role);
    free(m->content);
    memset(m, 0, sizeof *m);
}

bool mt_eng_parse_lora(const char *body, size_t len, bool want_path, char *name, size_t name_cap, char *path,
                       size_t path_cap, bool *load_inplace, mt_eng_http_error *herr) {
    const char *end = NULL;
    cJSON *o = parse_json(body, len, &end);
    if (!o) return bad(herr, NULL, "the body is not valid JSON");
    bool ok = true;
    const cJSON *n = cJSON_IsObject(o) ? field(o, "lora_name") : NULL;
    if (!cJSON_IsObject(o))
        ok = bad(herr, NULL, "the body must be a JSON object, not %s", json_type_name(o));
    else if (!cJSON_IsString(n) || !n->valuestring[0])
        ok = bad(herr, "lora_name", "'lora_name' must be a non-empty string");
    else if (strlen(n->valuestring) >= name_cap)
        ok = bad(herr, "lora_name", "'lora_name' is longer than %zu bytes", name_cap - 1);
    else if (!mt_eng_name_ok(n->valuestring))
        ok = bad(herr, "lora_name",
                 "'lora_name' may hold letters, digits and . _ - (not starting with '.'), at most 255 bytes");
    if (ok) snprintf(name, name_cap, "%s", n->valuestring);
    if (ok && want_path) {
        const cJSON *pth = field(o, "lora_path");
        if (!cJSON_IsString(pth) || !pth->valuestring[0])
            ok = bad(herr, "lora_path", "'lora_path' must be a non-empty string");
        else if (strlen(pth->valuestring) >= path_cap)
            ok = bad(herr, "lora_path", "'lora_path' is too long");
        else
            snprintf(path, path_cap, "%s", pth->valuestring);
        *load_inplace = false;
        if (ok) ok = get_bool(o, "load_inplace", load_inplace, herr);
    }
    cJSON_Delete(o);
    return ok;
}

/* A string field of at most cap − 1 bytes, copied to out; absent leaves out as it is. */
static bool get_string(const cJSON *o, const char *name, bool required, bool nonempty, char *out, size_t cap,
                       mt_eng_http_error *h) {
    const cJSON *v = field(o, name);
    if (!v) return required ? bad(h, name, "'%s' is required", name) : true;
    if (!cJSON_IsString(v)) return bad(h, name, "'%s' must be a string, not %s", name, json_type_name(v));
    if (nonempty && !v->valuestring[0]) return bad(h, name, "'%s' must not be empty", name);
    if (strlen(v->valuestring) >= cap) return bad(h, name, "'%s' is longer than %zu bytes", name, cap - 1);
    snprintf(out, cap, "%s", v->valuestring);
    return true;
}

bool mt_eng_parse_feedback(const char *body, size_t len, mt_eng_feedback *f, mt_eng_http_error *herr) {
    static const char *const known[] = {"chosen_id", "rejected_id", "chosen_index", "rejected_index", "id", "index",
                                        "rating", "dataset", "annotator", "split"};
    memset(f, 0, sizeof *f);
    snprintf(f->dataset, sizeof f->dataset, "served");
    const char *end = NULL;
    cJSON *o = parse_json(body, len, &end);
    if (!o) return bad(herr, NULL, "the body is not valid JSON");
    bool ok = true;
    if (!cJSON_IsObject(o)) ok = bad(herr, NULL, "the body must be a JSON object, not %s", json_type_name(o));
    for (const cJSON *kv = ok ? o->child : NULL; kv && ok; kv = kv->next) {
        bool k = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) k |= !strcmp(kv->string, known[i]);
        if (!k)
            ok = bad(herr, kv->string,
                     "unknown field '%.60s': a preference is {\"chosen_id\", \"rejected_id\"}, a rating {\"id\", "
                     "\"rating\"}",
                     kv->string);
    }
    if (ok) {
        f->is_rating = field(o, "rating") || field(o, "id") || field(o, "index");
        if (f->is_rating && (field(o, "chosen_id") || field(o, "rejected_id") || field(o, "chosen_index") ||
                             field(o, "rejected_index")))
            ok = bad(herr, field(o, "rating") ? "rating" : field(o, "id") ? "id" : "index",
                     "give either a preference (chosen_id, rejected_id) or a rating (id, rating), not both");
    }
    int64_t ci = 0, ri = 0;
    if (ok && f->is_rating) {
        ok = get_string(o, "id", true, true, f->chosen_id, sizeof f->chosen_id, herr) &&
             get_int(o, "index", 0, 1 << 20, &ci, herr);
        if (ok && !field(o, "rating")) ok = bad(herr, "rating", "'rating' is required");
        if (ok) ok = get_number(o, "rating", -1e300, 1e300, false, &f->rating, herr);
    } else if (ok) {
        ok = get_string(o, "chosen_id", true, true, f->chosen_id, sizeof f->chosen_id, herr) &&
             get_string(o, "rejected_id", true, true, f->rejected_id, sizeof f->rejected_id, herr) &&
             get_int(o, "chosen_index", 0, 1 << 20, &ci, herr) && get_int(o, "rejected_index", 0, 1 << 20, &ri, herr);
    }
    f->chosen_index = (int)ci;
    f->rejected_index = (int)ri;
    if (ok) ok = get_string(o, "dataset", false, true, f->dataset, sizeof f->dataset, herr);
    if (ok) ok = get_string(o, "annotator", false, false, f->annotator, sizeof f->annotator, herr);
    char split[16] = "train";
    if (ok) ok = get_string(o, "split", false, true, split, sizeof split, herr);
    if (ok && strcmp(split, "train") && strcmp(split, "eval")) ok = bad(herr, "split", "'split' must be \"train\" or \"eval\"");
    f->eval = ok && !strcmp(split, "eval");
    cJSON_Delete(o);
    return ok;
}
