/* scheduler.c — the decode thread: requests join and leave the running batch at every step
 * (continuous batching), prompts are prefilled in chunks under the per-step row budget after the
 * decoding rows, n samples of a prompt fork its blocks, and when the pool runs out the youngest
 * sequence is preempted and later recomputed from its tokens (its rng state kept, so it goes on
 * to produce exactly the tokens it would have). Per-request sampling lives here too. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine-impl.h"

/* ---- requests ---- */

static void req_free(mt_engine *e, mt_eng_req *r) {
    for (int i = 0; i < r->n_samples; i++) {
        mt_eng_sample *s = &r->samples[i];
        free(s->ctx);
        free(s->out);
        free(s->lps);
        free(s->seen);
        mt_detok_free(s->detok);
    }
    if (r->has_ref) mt_registry_release(e->reg, &r->ref);
    free(r->samples);
    free(r->prompt_len);
    free(r->prompt_text);
    free(r->prompts_json);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

void mt_eng_req_unref(mt_engine *e, mt_eng_req *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left == 0) req_free(e, r);
}

bool mt_eng_resolve_model(mt_engine *e, const char *name, mt_adapter_ref *ref, bool *has_ref, mt_eng_http_error *herr) {
    *has_ref = false;
    /* vLLM serves a model under the path it was given: clients written for it send that */
    if (!name[0] || !strcmp(name, e->served_name) || !strcmp(name, e->model_dir)) return true;
    mt_error err = {0};
    if (mt_registry_acquire(e->reg, name, ref, &err) == MT_OK) {
        *has_ref = true;
        return true;
    }
    /* a folder of the adapters directory not loaded (evicted, or new without --watch) */
    if (e->adapters_dir[0] && mt_eng_name_ok(name)) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", e->adapters_dir, name);
        if (mt_is_dir(path)) {
            pthread_mutex_lock(&e->load_mu);
            mt_error_clear(&err);
            mt_status st = mt_registry_acquire(e->reg, name, ref, &err);
            if (st != MT_OK) {
                mt_error_clear(&err);
                st = mt_engine_load_adapter(e, name, name, false, NULL, &err);
                if (st == MT_OK) st = mt_registry_acquire(e->reg, name, ref, &err);
            }
            pthread_mutex_unlock(&e->load_mu);
            if (st == MT_OK) {
                *has_ref = true;
                return true;
            }
            mt_eng_herr(herr, 400, "invalid_request_error", "model", "adapter_load_failed",
                        "adapter '%s' could not be loaded: %s", name, err.msg);
            return false;
        }
    }
    mt_eng_herr(herr, 404, "invalid_request_error", "model", "model_not_found", "The model `%s` does not exist.",
                name);
    return false;
}

/* The adapter's metadata thresholds (moetune.json, written by the trainer: finetune/run.c
 * format_thresholds) are used as they are (mt_lora_meta_threshold clamps them to [0, 1]):
 * "dap_threshold" (finetune/dap.c) is on the decode
 * rule's scale — the largest relative softmax weight a skipped block may hold (docs/data.md,
 * docs/attention-pruning.md) — and "experts" (finetune/experts.c) is the adaptive-k threshold P,
 * the router's share the kept experts must reach. */

/* A request's DAP τ and adaptive expert threshold P, each the same way: its own
 * dap_threshold / expert_threshold, else its adapter's metadata value (unless the server
 * ignores those), else the server default. The metadata is read for the version the request
 * holds: the registry keeps one version's thresholds per name, so a replace between acquire and
 * find is noticed by the version and the adapter acquired again. The expert bounds are the
 * request's where given, else the server's. */
static bool resolve_thresholds(mt_engine *e, mt_eng_req *r, mt_eng_http_error *herr) {
    r->dap_tau = e->dap_default;
    r->experts = e->expert_default;
    bool dap_meta = !r->p.dap_given && !e->o.dap_ignore_adapter_thresholds;
    bool exp_meta = !r->p.experts_given && !e->o.experts_ignore_adapter_thresholds;
    if (r->has_ref && (dap_meta || exp_meta)) {
        for (int tries = 0; tries < 8; tries++) {
            mt_registry_info info;
            if (!mt_registry_find(e->reg, r->adapter, &info)) break; /* unloaded since: metadata unknown, the default */
            if (info.version == r->ref.version) {
                float t;
                if (dap_meta && mt_lora_meta_threshold(info.thresholds_json, "dap_threshold", &t)) r->dap_tau = t;
                if (exp_meta && mt_lora_meta_threshold(info.thresholds_json, "experts", &t)) r->experts.threshold = t;
                break;
            }
            mt_adapter_ref ref;
            mt_error err = {0};
            if (mt_registry_acquire(e->reg, r->adapter, &ref, &err) != MT_OK) break;
            mt_registry_release(e->reg, &r->ref);
            r->ref = ref;
            r->version = ref.version;
        }
    }
    if (r->p.dap_given) r->dap_tau = r->p.dap_threshold;
    if (r->p.experts_given) r->experts.threshold = r->p.expert_threshold;
    if (r->p.min_experts) r->experts.min_k = r->p.min_experts;
    if (r->p.max_experts) r->experts.max_k = r->p.max_experts;
    if (r->experts.min_k > 0 && r->experts.max_k > 0 && r->experts.min_k > r->experts.max_k) {
        /* one bound from the request, the other from the server */
        const char *f = r->p.min_experts ? "min_experts" : "max_experts";
        mt_eng_herr(herr, 400, "invalid_request_error", f, NULL,
                    "'%s' gives min experts %d above max experts %d (the server's --%s)", f, r->experts.min_k,
                    r->experts.max_k, r->p.min_experts ? "max-experts" : "min-experts");
        return false;
    }
    if (r->dap_tau > 0 && !e->dap_cpu) {
        if (r->p.dap_given) {
            mt_eng_herr(herr, 400, "invalid_request_error", "dap_threshold", NULL,
                        "'dap_threshold' > 0 needs the CPU backend; this server runs another");
            return false;
        }
        r->dap_tau = 0; /* an adapter's value on a backend without DAP: full attention */
    }
    if (r->experts.threshold > 0 && !e->dap_cpu) {
        if (r->p.experts_given) {
            mt_eng_herr(herr, 400, "invalid_request_error", "expert_threshold", NULL,
                        "'expert_threshold' > 0 needs the CPU backend; this server runs another");
            return false;
        }
        r->experts.threshold = 0; /* an adapter's value on a backend without it: fixed top_k */
    }
    return true;
}

mt_eng_req *mt_eng_req_new(mt_engine *e, mt_eng_endpoint ep, const mt_eng_params *p, mt_eng_prompt *prompts,
                           int n_prompts, mt_eng_http_error *herr) {
    int max_len = e->max_model_len;
    int cap_tokens = e->o.max_tokens > 0 ? e->o.max_tokens : max_len;
    int bs = e->block_size, total_blocks = e->total_blocks; /* the pool itself is the scheduler's */
    int want_max = p->max_tokens;
    if (want_max > cap_tokens) {
        mt_eng_herr(herr, 400, "invalid_request_error", "max_tokens", NULL,
                    "'max_tokens' is %d; this server allows at most %d", want_max, cap_tokens);
        return NULL;
    }
    if ((int64_t)n_prompts * p->n > e->o.max_seqs) {
        mt_eng_herr(herr, 400, "invalid_request_error", "n", NULL,
                    "%d choices are more than the %d sequences this server decodes at once", n_prompts * p->n,
                    e->o.max_seqs);
        return NULL;
    }
    int *maxes = mt_xcalloc((size_t)n_prompts, sizeof(int));
    for (int g = 0; g < n_prompts; g++) {
        int n = prompts[g].n_ids;
        if (n < 1) {
            free(maxes);
            mt_eng_herr(herr, 400, "invalid_request_error", "prompt", NULL, "the prompt is empty");
            return NULL;
        }
        int mt = want_max ? want_max : max_len - n;
        if (mt > cap_tokens) mt = cap_tokens;
        if (n >= max_len || (int64_t)n + mt > max_len) {
            free(maxes);
            mt_eng_herr(herr, 400, "invalid_request_error", ep == MT_EP_CHAT ? "messages" : "prompt",
                        "context_length_exceeded",
                        "This model's maximum context length is %d tokens. However, you requested %lld tokens "
                        "(%d in the messages, %d in the completion). Please reduce the length of the messages or "
                        "completion.",
                        max_len, (long long)n + (want_max ? want_max : 1), n, want_max ? want_max : 1);
            return NULL;
        }
        int need_blocks = (n + mt + bs - 1) / bs;
        if (need_blocks > total_blocks) {
            free(maxes);
            mt_eng_herr(herr, 400, "invalid_request_error", "max_tokens", "context_length_exceeded",
                        "%d prompt tokens + %d new ones need %d KV blocks; this server's pool holds %d "
                        "(lower max_tokens, or start the server with more --kv-blocks)",
                        n, mt, need_blocks, total_blocks);
            return NULL;
        }
        maxes[g] = mt;
    }
    mt_eng_req *r = mt_xcalloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->refs = 1;
    r->ep = ep;
    r->p = *p;
    if (!r->p.seed_given) {
        /* OpenAI: no seed means a random one; still one rng per choice */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r->p.seed = mt_hash_u64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30), atomic_fetch_add(&e->next_id, 1));
    }
    snprintf(r->id, sizeof r->id, "%s-%016llx", ep == MT_EP_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)mt_hash_u64(e->id_salt, atomic_fetch_add(&e->next_id, 1)));
    atomic_init(&r->cancelled, false);
    if (!mt_eng_resolve_model(e, p->model, &r->ref, &r->has_ref, herr)) {
        free(maxes);
        req_free(e, r);
        return NULL;
    }
    snprintf(r->model_name, sizeof r->model_name, "%s", p->model[0] ? p->model : e->served_name);
    if (r->has_ref) snprintf(r->adapter, sizeof r->adapter, "%s", p->model);
    r->version = r->has_ref ? r->ref.version : 0;
    if (!resolve_thresholds(e, r, herr)) {
        free(maxes);
        req_free(e, r);
        return NULL;
    }
    r->n_prompts = n_prompts;
    r->prompt_len = mt_xcalloc((size_t)n_prompts, sizeof(int));
    r->n_samples = n_prompts * p->n;
    r->samples = mt_xcalloc((size_t)r->n_samples, sizeof(mt_eng_sample));
    bool penalties = p->presence_penalty != 0 || p->frequency_penalty != 0 || p->repetition_penalty != 1;
    const char *stops[MT_ENG_MAX_STOP];
    for (int k = 0; k < p->n_stop; k++) stops[k] = r->p.stop[k];
    for (int g = 0; g < n_prompts; g++) {
        r->prompt_len[g] = prompts[g].n_ids;
        for (int j = 0; j < p->n; j++) {
            mt_eng_sample *s = &r->samples[g * p->n + j];
            s->req = r;
            s->index = g * p->n + j;
            s->group = g;
            s->j = j;
            s->n_prompt = prompts[g].n_ids;
            s->cap_ctx = s->n_prompt + maxes[g];
            s->ctx = mt_xmalloc((size_t)s->cap_ctx * sizeof(int32_t));
            memcpy(s->ctx, prompts[g].ids, (size_t)s->n_prompt * sizeof(int32_t));
            s->n_ctx = s->n_prompt;
            s->seq = -1;
            s->skip_step = -1;
            s->state = j == 0 ? MT_SS_ACTIVE : MT_SS_WAIT_FORK;
            mt_rng_seed(&s->rng, r->p.seed + (uint64_t)j);
            mt_error err = {0};
            if (mt_detok_init(&s->detok, e->tok, p->skip_special, stops, p->n_stop, &err) != MT_OK) {
                free(maxes);
                mt_eng_herr(herr, 500, "internal_error", NULL, NULL, "%s", err.msg);
                r->n_samples = g * p->n + j + 1;
                req_free(e, r);
                return NULL;
            }
            if (penalties) {
                s->seen = mt_xcalloc((size_t)e->vocab, 1);
                for (int t = 0; t < s->n_prompt; t++) s->seen[s->ctx[t]] |= 1;
            }
        }
    }
    free(maxes);
    return r;
}

bool mt_eng_submit(mt_engine *e, mt_eng_req *r, mt_eng_http_error *herr) {
    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        mt_eng_herr(herr, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        return false;
    }
    if (e->queue_len >= e->o.max_queue) {
        pthread_mutex_unlock(&e->mu);
        mt_eng_herr(herr, 429, "rate_limit_error", NULL, "queue_full",
                    "%d requests are already waiting; retry later", e->o.max_queue);
        return false;
    }
    r->t_arrival = mt_now_seconds();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->t_arrival_unix = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    pthread_mutex_lock(&r->mu);
    r->refs++;
    pthread_mutex_unlock(&r->mu);
    r->next = NULL;
    if (e->queue_tail)
        e->queue_tail->next = r;
    else
        e->queue_head = r;
    e->queue_tail = r;
    e->queue_len++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    int prompt = 0;
    for (int g = 0; g < r->n_prompts; g++) prompt += r->prompt_len[g];
    pthread_mutex_lock(&e->metrics.mu);
    e->metrics.prompt_tokens += (uint64_t)prompt;
    pthread_mutex_unlock(&e->metrics.mu);
    return true;
}

/* ---- output to the HTTP side ---- */

static void out_append(mt_eng_sample *s, const char *text, size_t len) {
    if (!len) return;
    if (s->out_len + len + 1 > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 256;
        while (cap < s->out_len + len + 1) cap *= 2;
        s->out = mt_xrealloc(s->out, cap);
        s->out_cap = cap;
    }
    memcpy(s->out + s->out_len, text, len);
    s->out_len += len;
    s->out[s->out_len] = 0;
}

static void record(mt_engine *e, mt_eng_req *r) {
    if (!e->rec) return;
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < r->n_samples; i++) cJSON_AddItemToArray(arr, cJSON_CreateString(r->samples[i].out ? r->samples[i].out : ""));
    char *json = cJSON_PrintUnformatted(arr);
    cJSON_Delete(arr);
    int64_t prompt = 0, gen = 0;
    for (int g = 0; g < r->n_prompts; g++) prompt += r->prompt_len[g];
    for (int i = 0; i < r->n_samples; i++) gen += r->samples[i].n_gen;
    double now = mt_now_seconds();
    mt_store_served row = {
        .time = r->t_arrival_unix,
        .endpoint = mt_eng_endpoint_path(r->ep),
        .model = r->model_name,
        .adapter = r->adapter[0] ? r->adapter : NULL,
        .adapter_version = r->version,
        .status = r->status == MT_OK ? 200 : 500,
        .prompt_tokens = prompt,
        .completion_tokens = gen,
        .n_choices = r->n_samples,
        .finish_reason = r->samples[0].finish,
        .ttft = r->t_first > 0 ? r->t_first - r->t_arrival : NAN,
        .latency = now - r->t_arrival,
        .prompt = r->prompt_text,
        .completions_json = json,
        .response_id = r->id,
        .prompts_json = r->prompts_json,
        .n_per_prompt = r->p.n,
    };
    mt_recorder_push(e->rec, &row);
    cJSON_free(json);
}

/* The scheduler's last word on a request: every choice finished (or the request failed). */
static void req_finish(mt_engine *e, mt_eng_req *r, mt_status st, const char *msg) {
    for (int i = 0; i < r->n_samples; i++) {
        mt_eng_sample *s = &r->samples[i];
        if (s->seq >= 0) mt_kv_seq_close(e->pool, s->seq);
        s->seq = -1;
    }
    /* the version it started with is no longer needed (a replaced one can be freed now), and
     * before the client hears it is done */
    if (r->has_ref) {
        mt_registry_release(e->reg, &r->ref);
        r->has_ref = false;
    }
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n_samples; i++) {
        mt_eng_sample *s = &r->samples[i];
        if (!s->finish) s->finish = st == MT_OK ? "stop" : "error";
        s->state = MT_SS_DONE;
    }
    r->status = st;
    if (msg) snprintf(r->errmsg, sizeof r->errmsg, "%s", msg);
    pthread_mutex_unlock(&r->mu);
    if (st == MT_OK) {
        pthread_mutex_lock(&e->metrics.mu);
        mt_hist_observe(&e->metrics.e2e, mt_now_seconds() - r->t_arrival);
        pthread_mutex_unlock(&e->metrics.mu);
    }
    /* queued for the store before the client can hear the request is done: feedback that
     * follows the response at once then finds its row (mt_recorder_with_store waits for it) */
    record(e, r);
    pthread_mutex_lock(&r->mu);
    r->done = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    /* remove its samples from the active list, keeping admission order */
    int w = 0;
    for (int i = 0; i < e->n_active; i++)
        if (e->active[i]->req != r) e->active[w++] = e->active[i];
    e->n_active = w;
    mt_eng_req_unref(e, r);
}

/* ---- sampling ---- */

static bool is_in(const int32_t *ids, int n, int32_t t) {
    for (int i = 0; i < n; i++)
        if (ids[i] == t) return true;
    return false;
}

/* log-sum-exp of raw logits and their top-n, before any penalty or temperature touches them
 * (the logprobs vLLM and OpenAI report are the model's own distribution). */
static double log_sum_exp(const float *l, int V) {
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = l[i] > mx ? l[i] : mx;
    double s = 0;
    for (int i = 0; i < V; i++) s += exp((double)l[i] - mx);
    return mx + log(s);
}

static int top_n(const float *l, int V, int n, int32_t *ids) {
    int k = 0;
    for (int i = 0; i < V; i++) {
        if (k < n) {
            ids[k++] = i;
        } else if (l[i] > l[ids[k - 1]]) {
            ids[k - 1] = i;
        } else {
            continue;
        }
        for (int j = k - 1; j > 0 && l[ids[j]] > l[ids[j - 1]]; j--) {
            int32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
    }
    return k;
}

/* Picks sample s's next token from logits [V] (modified in place). */
static int32_t pick(mt_engine *e, mt_eng_sample *s, float *logits, mt_eng_logprob *lp) {
    const mt_eng_params *p = &s->req->p;
    int V = e->vocab;
    if (p->logprobs) memcpy(e->scratch, logits, (size_t)V * sizeof(float));
    if (s->seen) {
        for (int t = 0; t < V; t++) {
            if (!s->seen[t]) continue;
            if (p->repetition_penalty != 1)
                logits[t] = logits[t] > 0 ? logits[t] / p->repetition_penalty : logits[t] * p->repetition_penalty;
            if ((s->seen[t] & 2) && p->presence_penalty != 0) logits[t] -= p->presence_penalty;
        }
        if (p->frequency_penalty != 0)
            for (int i = s->n_prompt; i < s->n_ctx; i++) logits[s->ctx[i]] -= p->frequency_penalty;
    }
    for (int i = 0; i < p->n_bias; i++) logits[p->bias_ids[i]] += p->bias_values[i];
    if (s->n_gen < p->min_tokens) {
        for (int i = 0; i < e->n_eos; i++) logits[e->eos[i]] = -INFINITY;
        for (int i = 0; i < p->n_stop_ids; i++) logits[p->stop_ids[i]] = -INFINITY;
    }
    mt_sample_opts so = {.temperature = p->temperature, .top_k = p->top_k, .top_p = p->top_p, .seed = p->seed};
    int32_t tok = mt_sample(&so, logits, V, &s->rng);
    if (p->logprobs) {
        double lse = log_sum_exp(e->scratch, V);
        lp->id = tok;
        lp->logprob = (float)(e->scratch[tok] - lse);
        lp->n_top = top_n(e->scratch, V, p->top_logprobs, lp->top_ids);
        for (int i = 0; i < lp->n_top; i++) lp->top_lps[i] = (float)(e->scratch[lp->top_ids[i]] - lse);
    }
    return tok;
}

/* One new token for s: text, stop conditions, latency metrics, and the output record. */
static void take_token(mt_engine *e, mt_eng_sample *s, float *logits, double now) {
    mt_eng_req *r = s->req;
    mt_eng_logprob lp = {0};
    int32_t tok = pick(e, s, logits, &lp);
    s->ctx[s->n_ctx++] = tok;
    s->n_gen++;
    if (s->seen) s->seen[tok] |= 2;
    const char *finish = NULL;
    const char *text = NULL, *tail = NULL;
    size_t len = 0, tail_len = 0;
    bool eos = !r->p.ignore_eos && is_in(e->eos, e->n_eos, tok);
    if (eos || is_in(r->p.stop_ids, r->p.n_stop_ids, tok)) {
        finish = "stop";
        mt_detok_flush(s->detok, &tail, &tail_len);
    } else {
        if (mt_detok_push(s->detok, tok, &text, &len) >= 0) finish = "stop";
        else if (s->n_gen >= s->cap_ctx - s->n_prompt || s->n_ctx >= e->max_model_len) {
            finish = "length";
            mt_detok_flush(s->detok, &tail, &tail_len);
        }
    }
    pthread_mutex_lock(&e->metrics.mu);
    if (r->t_first == 0) mt_hist_observe(&e->metrics.ttft, now - r->t_arrival);
    else if (s->t_last > 0) mt_hist_observe(&e->metrics.itl, now - s->t_last);
    e->metrics.gen_tokens++;
    e->metrics.tps_window_tokens++;
    pthread_mutex_unlock(&e->metrics.mu);
    s->t_last = now;
    pthread_mutex_lock(&r->mu);
    if (r->t_first == 0) r->t_first = now;
    out_append(s, text, len);
    out_append(s, tail, tail_len);
    if (r->p.logprobs) {
        if (s->n_lps == s->cap_lps) {
            s->cap_lps = s->cap_lps ? 2 * s->cap_lps : 16;
            s->lps = mt_xrealloc(s->lps, (size_t)s->cap_lps * sizeof *s->lps);
        }
        s->lps[s->n_lps++] = lp;
    }
    if (finish) {
        s->finish = finish;
        s->state = MT_SS_DONE;
        r->n_done++;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (finish && s->seq >= 0) {
        mt_kv_seq_close(e->pool, s->seq);
        s->seq = -1;
    }
}

/* ---- one step ---- */

static int slot_of(mt_engine *e, const mt_adapter *a, int *n_slots) {
    for (int i = 0; i < *n_slots; i++)
        if (e->b_adapters[i] == a) return i;
    e->b_adapters[*n_slots] = a;
    return (*n_slots)++;
}

typedef struct step_plan {
    int rows, n_logits, n_slots;
    bool any_tau; /* a row has DAP τ > 0 */
    bool any_ak;  /* a row has an expert threshold > 0 */
} step_plan;

static void add_rows(mt_engine *e, step_plan *sp, mt_eng_sample *s, int k) {
    const mt_adapter *a = s->req->has_ref ? s->req->ref.adapter : NULL;
    int slot = slot_of(e, a, &sp->n_slots);
    for (int i = 0; i < k; i++) {
        int row = sp->rows++;
        e->b_tokens[row] = s->ctx[s->fed + i];
        e->b_seq[row] = s->seq;
        e->b_pos[row] = s->fed + i;
        e->b_slot[row] = slot;
        e->b_rowsample[row] = s;
        /* DAP on every row of the request, prompt (prefill) and generated alike, as
         * mt_generate does */
        float tau = s->req->dap_tau;
        e->b_tau[row] = tau;
        sp->any_tau |= tau > 0;
        /* adaptive expert counts on every row of the request, prompt rows included, as the
         * model-wide setting of moetune generate does */
        e->b_ak[row] = s->req->experts;
        sp->any_ak |= s->req->experts.threshold > 0;
    }
    if (s->fed + k == s->n_ctx) {
        e->b_logit_rows[sp->n_logits] = sp->rows - 1;
        e->b_sample[sp->n_logits++] = s;
    }
}

/* Decoding rows first (one each), then prefill chunks in admission order while the row budget
 * and the free blocks last: a long prompt never stalls the sequences already decoding. */
static void plan_step(mt_engine *e, step_plan *sp) {
    memset(sp, 0, sizeof *sp);
    int avail = mt_kv_pool_blocks_free(e->pool);
    for (int i = 0; i < e->n_active && sp->rows < e->max_rows; i++) {
        mt_eng_sample *s = e->active[i];
        if (s->state != MT_SS_ACTIVE || s->seq < 0 || s->n_ctx - s->fed != 1) continue;
        avail -= mt_kv_seq_blocks_needed(e->pool, s->seq, 1);
        add_rows(e, sp, s, 1);
    }
    int bs = mt_kv_pool_block_size(e->pool);
    for (int i = 0; i < e->n_active && sp->rows < e->max_rows; i++) {
        mt_eng_sample *s = e->active[i];
        if (s->state != MT_SS_ACTIVE || s->skip_step == e->step_id) continue;
        if (s->seq >= 0 && s->n_ctx - s->fed == 1) continue; /* decoding, planned above */
        int left = s->n_ctx - s->fed, room = e->max_rows - sp->rows;
        int chunk = left < room ? left : room;
        if (s->seq < 0) {
            if (avail * bs < chunk && avail * bs < left) continue; /* not even its first chunk fits */
            mt_error err = {0};
            if (mt_kv_seq_open(e->pool, &s->seq, &err) != MT_OK) continue; /* every sequence slot taken */
            s->order = e->next_order++;
        }
        int need = mt_kv_seq_blocks_needed(e->pool, s->seq, chunk);
        while (chunk > 0 && need > avail) {
            chunk = chunk > bs ? chunk - bs : chunk - 1;
            need = chunk > 0 ? mt_kv_seq_blocks_needed(e->pool, s->seq, chunk) : 0;
        }
        if (chunk <= 0) continue;
        avail -= need;
        add_rows(e, sp, s, chunk);
    }
}

/* The youngest sequence holding blocks gives them back; it recomputes from its tokens later. */
static bool preempt_one(mt_engine *e) {
    mt_eng_sample *victim = NULL;
    for (int i = 0; i < e->n_active; i++) {
        mt_eng_sample *s = e->active[i];
        if (s->seq >= 0 && s->state == MT_SS_ACTIVE && (!victim || s->order > victim->order)) victim = s;
    }
    if (!victim) return false;
    mt_kv_seq_close(e->pool, victim->seq);
    victim->seq = -1;
    victim->fed = 0;
    victim->skip_step = e->step_id;
    pthread_mutex_lock(&e->metrics.mu);
    e->metrics.preemptions++;
    pthread_mutex_unlock(&e->metrics.mu);
    return true;
}

/* Sample 0 finished its prompt: its siblings share the prompt's blocks from here on. */
static void fork_siblings(mt_engine *e, mt_eng_sample *s0, const float *logits, double now) {
    mt_eng_req *r = s0->req;
    for (int j = 1; j < r->p.n; j++) {
        mt_eng_sample *s = &r->samples[s0->group * r->p.n + j];
        if (s->state != MT_SS_WAIT_FORK) continue;
        mt_error err = {0};
        s->state = MT_SS_ACTIVE;
        s->order = e->next_order++;
        if (mt_kv_seq_fork(e->pool, s0->seq, &s->seq, &err) != MT_OK) {
            s->seq = -1; /* no sequence slot: it prefills on its own later */
            continue;
        }
        s->fed = s0->fed;
        memcpy(e->logits_copy, logits, (size_t)e->vocab * sizeof(float));
        take_token(e, s, e->logits_copy, now);
    }
}

/* The distinct requests of a step's rows, collected before any of them is finished (finishing
 * may free a request, and its samples with it). */
static int step_requests(mt_engine *e, mt_eng_sample *const *samples, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) {
        mt_eng_req *r = samples[i]->req;
        bool seen = false;
        for (int j = 0; j < k && !seen; j++) seen = e->b_reqs[j] == r;
        if (!seen) e->b_reqs[k++] = r;
    }
    return k;
}

static void fail_batch(mt_engine *e, const step_plan *sp, const mt_error *err) {
    mt_eng_log(e, "decode step failed: %s", err->msg);
    int k = step_requests(e, e->b_rowsample, sp->rows);
    for (int i = 0; i < k; i++) req_finish(e, e->b_reqs[i], err->code, err->msg);
}

static void update_gauges(mt_engine *e) {
    int running = 0, waiting = 0;
    for (int i = 0; i < e->n_active; i++) {
        if (e->active[i]->state == MT_SS_DONE) continue;
        if (e->active[i]->seq >= 0) running++;
        else waiting++;
    }
    atomic_store(&e->running_seqs, running);
    atomic_store(&e->waiting_samples, waiting);
    atomic_store(&e->kv_used, mt_kv_pool_blocks_total(e->pool) - mt_kv_pool_blocks_free(e->pool));
    atomic_store(&e->seqs_open, mt_kv_pool_seqs_open(e->pool));
}

/* Moves queued requests into the active list while there is room for all their choices. */
static void admit(mt_engine *e) {
    while (e->queue_head && e->n_active + e->queue_head->n_samples <= e->cap_active) {
        mt_eng_req *r = e->queue_head;
        e->queue_head = r->next;
        if (!e->queue_head) e->queue_tail = NULL;
        e->queue_len--;
        for (int i = 0; i < r->n_samples; i++) e->active[e->n_active++] = &r->samples[i];
    }
}

static void run_step(mt_engine *e) {
    e->step_id++;
    step_plan sp;
    mt_status st = MT_OK;
    mt_error err = {0};
    for (int attempt = 0;; attempt++) {
        plan_step(e, &sp);
        if (sp.rows == 0) return;
        mt_decode_batch b = {.n_rows = sp.rows,
                             .tokens = e->b_tokens,
                             .seq = e->b_seq,
                             .pos = e->b_pos,
                             .slot = e->b_slot,
                             .adapters = e->b_adapters,
                             .n_slots = sp.n_slots,
                             .logit_rows = e->b_logit_rows,
                             .n_logits = sp.n_logits,
                             /* NULL when no row prunes: the unchanged path */
                             .dap_threshold = sp.any_tau ? e->b_tau : NULL,
                             .adaptive_k = sp.any_ak ? e->b_ak : NULL,
                             .experts_used = e->b_kused};
        mt_error_clear(&err);
        st = mt_decode_step(e->dec, e->pool, &b, e->logits, &err);
        if (st != MT_ERR_EXHAUSTED) break;
        if (attempt > e->n_active + 1 || !preempt_one(e)) break;
    }
    if (st != MT_OK) {
        fail_batch(e, &sp, &err);
        return;
    }
    for (int row = 0; row < sp.rows; row++) e->b_rowsample[row]->fed++;
    mt_eng_metrics_step(e, sp.rows);
    double now = mt_now_seconds();
    for (int i = 0; i < sp.n_logits; i++) {
        mt_eng_sample *s = e->b_sample[i];
        float *l = e->logits + (size_t)i * e->vocab;
        if (s->j == 0 && s->n_gen == 0 && s->req->p.n > 1) fork_siblings(e, s, l, now);
        take_token(e, s, l, now);
    }
    /* requests whose every choice is done leave the batch */
    int k = step_requests(e, e->b_sample, sp.n_logits);
    for (int i = 0; i < k; i++)
        if (e->b_reqs[i]->n_done == e->b_reqs[i]->n_samples) req_finish(e, e->b_reqs[i], MT_OK, NULL);
}

static void drop_cancelled(mt_engine *e) {
    for (int i = 0; i < e->n_active;) {
        mt_eng_req *r = e->active[i]->req;
        if (atomic_load(&r->cancelled)) {
            req_finish(e, r, MT_ERR_INTERRUPTED, "the client went away");
            i = 0; /* the list was compacted */
        } else {
            i++;
        }
    }
}

static void *sched_main(void *arg) {
    mt_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stopping && e->n_active == 0 && !e->queue_head) pthread_cond_wait(&e->cv, &e->mu);
        if (e->stopping) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        admit(e);
        pthread_mutex_unlock(&e->mu);
        drop_cancelled(e);
        run_step(e);
        update_gauges(e);
        if (e->n_active > 0 && atomic_load(&e->running_seqs) == 0) {
            /* nothing could run (all waiting for slots): do not spin */
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    /* shutting down: everything admitted or queued ends with an error */
    while (e->n_active > 0) req_finish(e, e->active[0]->req, MT_ERR_INTERRUPTED, "the server is shutting down");
    pthread_mutex_lock(&e->mu);
    mt_eng_req *q = e->queue_head;
    e->queue_head = e->queue_tail = NULL;
    e->queue_len = 0;
    pthread_mutex_unlock(&e->mu);
    while (q) {
        mt_eng_req *next = q->next;
        for (int i = 0; i < q->n_samples; i++) e->active[e->n_active++] = &q->samples[i];
        req_finish(e, q, MT_ERR_INTERRUPTED, "the server is shutting down");
        q = next;
    }
    update_gauges(e);
    return NULL;
}

mt_status mt_eng_sched_start(mt_engine *e, mt_error *err) {
    int V = e->vocab, R = e->max_rows;
    int L = e->o.max_seqs < R ? e->o.max_seqs : R; /* logits rows: one per sequence at most */
    e->cap_active = e->o.max_seqs;
    e->active = mt_xcalloc((size_t)e->cap_active + (size_t)e->o.max_choices, sizeof *e->active);
    e->b_tokens = mt_xcalloc((size_t)R, sizeof(int32_t));
    e->b_seq = mt_xcalloc((size_t)R, sizeof(int32_t));
    e->b_pos = mt_xcalloc((size_t)R, sizeof(int32_t));
    e->b_slot = mt_xcalloc((size_t)R, sizeof(int32_t));
    e->b_logit_rows = mt_xcalloc((size_t)R, sizeof(int32_t));
    e->b_sample = mt_xcalloc((size_t)R, sizeof *e->b_sample);
    e->b_rowsample = mt_xcalloc((size_t)R, sizeof *e->b_rowsample);
    e->b_reqs = mt_xcalloc((size_t)R, sizeof *e->b_reqs);
    e->b_adapters = mt_xcalloc((size_t)R + 1, sizeof *e->b_adapters);
    e->b_tau = mt_xcalloc((size_t)R, sizeof *e->b_tau);
    e->b_ak = mt_xcalloc((size_t)R, sizeof *e->b_ak);
    e->b_kused = mt_xcalloc((size_t)R, sizeof *e->b_kused);
    e->logits = mt_alloc_aligned((size_t)L * V * sizeof(float));
    e->logits_copy = mt_alloc_aligned((size_t)V * sizeof(float));
    e->scratch = mt_alloc_aligned((size_t)V * sizeof(float));
    if (!e->logits || !e->scratch || !e->logits_copy)
        return mt_error_set(err, MT_ERR_NOMEM, "logits for %d rows of %d tokens", L, V);
    e->max_logit_rows = L;
    if (pthread_create(&e->thread, NULL, sched_main, e) != 0)
        return mt_error_set(err, MT_ERR_NOMEM, "cannot start the scheduler thread: %s", strerror(errno));
    e->thread_started = true;
    return MT_OK;
}

void mt_eng_sched_stop(mt_engine *e) {
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stopping = true;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
        e->thread_started = false;
    }
    free(e->active);
    free(e->b_tokens);
    free(e->b_seq);
    free(e->b_pos);
    free(e->b_slot);
    free(e->b_logit_rows);
    free(e->b_sample);
    free(e->b_rowsample);
    free(e->b_reqs);
    e->b_reqs = NULL;
    free(e->b_adapters);
    free(e->b_tau);
    e->b_tau = NULL;
    free(e->b_ak);
    e->b_ak = NULL;
    free(e->b_kused);
    e->b_kused = NULL;
    mt_free_aligned(e->logits);
    mt_free_aligned(e->logits_copy);
    mt_free_aligned(e->scratch);
    e->active = NULL;
    e->b_tokens = e->b_seq = e->b_pos = e->b_slot = e->b_logit_rows = NULL;
    e->b_sample = e->b_rowsample = NULL;
    e->b_adapters = NULL;
    e->logits = e->logits_copy = e->scratch = NULL;
}
