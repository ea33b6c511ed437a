/* fuzz_request.c — libFuzzer target for the server's request parsing: the first byte picks the
 * endpoint (completions, chat, load_lora_adapter, unload_lora_adapter), the rest is the body as
 * a client sent it (not NUL-terminated). An accepted body must give parameters inside their
 * documented ranges; a refused one a 4xx with a message and an error body that is JSON. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine-impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(const mt_eng_http_error *h) {
    if (h->status < 400 || h->status > 499 || !h->message[0]) abort();
    char *json = mt_eng_error_json(h);
    cJSON *o = cJSON_Parse(json);
    if (!o || !cJSON_IsObject(cJSON_GetObjectItem(o, "error"))) abort();
    cJSON_Delete(o);
    cJSON_free(json);
}

static void check_params(const mt_eng_params *p, const mt_eng_parse_limits *lim) {
    if (!(p->temperature >= 0 && p->temperature <= 2) || !(p->top_p > 0 && p->top_p <= 1) || p->top_k < 0) abort();
    if (p->n < 1 || p->n > lim->max_choices || p->max_tokens < 0 || p->min_tokens < 0) abort();
    if (p->n_stop < 0 || p->n_stop > MT_ENG_MAX_STOP || p->top_logprobs < 0 || p->top_logprobs > MT_ENG_MAX_TOP_LOGPROBS)
        abort();
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i][0]) abort();
    for (int i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] < 0 || p->stop_ids[i] >= lim->vocab_size) abort();
    for (int i = 0; i < p->n_bias; i++)
        if (p->bias_ids[i] < 0 || p->bias_ids[i] >= lim->vocab_size || p->bias_values[i] < -100 ||
            p->bias_values[i] > 100)
            abort();
    if (p->model[sizeof p->model - 1]) abort();
    if (p->experts_given && !(p->expert_threshold >= 0 && p->expert_threshold <= 1)) abort();
    if (p->min_experts < 0 || p->min_experts > lim->top_k || p->max_experts < 0 || p->max_experts > lim->top_k ||
        (p->min_experts && p->max_experts && p->min_experts > p->max_experts))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % 4;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    mt_eng_http_error h = {0};
    if (which >= 2) {
        char name[MT_ENG_NAME_MAX], path[4096];
        bool inplace = false;
        bool ok = mt_eng_parse_lora(body, len, which == 2, name, sizeof name, path, sizeof path, &inplace, &h);
        if (ok) {
            if (!mt_eng_name_ok(name)) abort();
            if (which == 2 && !path[0]) abort();
        } else {
            check_error(&h);
        }
        return 0;
    }
    mt_eng_parse_limits lim = {.vocab_size = 3007, .max_choices = 16, .max_prompts = 16, .top_k = 8};
    mt_eng_params p;
    mt_eng_prompt *prompts = NULL;
    int n_prompts = 0;
    mt_eng_chat_msgs msgs;
    bool ok = mt_eng_parse_request(which == 0 ? MT_EP_COMPLETIONS : MT_EP_CHAT, body, len, &lim, &p, &prompts,
                                   &n_prompts, &msgs, &h);
    if (ok) {
        check_params(&p, &lim);
        if (which == 0) {
            if (n_prompts < 1 || n_prompts > lim.max_prompts || (int64_t)n_prompts * p.n > lim.max_choices) abort();
            for (int i = 0; i < n_prompts; i++) {
                if (!prompts[i].text && prompts[i].n_ids < 1) abort();
                for (int k = 0; k < prompts[i].n_ids; k++)
                    if (prompts[i].ids[k] < 0 || prompts[i].ids[k] >= lim.vocab_size) abort();
            }
        } else {
            if (msgs.n < 1) abort();
            for (int i = 0; i < msgs.n; i++)
                if (!msgs.role[i] || !msgs.content[i]) abort();
        }
    } else {
        check_error(&h);
    }
    mt_eng_prompts_free(prompts, n_prompts);
    mt_eng_chat_msgs_free(&msgs);
    return 0;
}
