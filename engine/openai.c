/* openai.c — /v1/completions and /v1/chat/completions: a body becomes a request (the chat
 * template renders messages, the tokenizer encodes), the scheduler runs it, and the choices come
 * back as one OpenAI response object or as server-sent events (`data: {...}` chunks, the usage
 * chunk when stream_options.include_usage, then `data: [DONE]`). A client that goes away is
 * noticed within 100 ms and its sequences are freed. */
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine-impl.h"

#define WAIT_SLICE_NS (100 * 1000 * 1000)

static void wait_slice(mt_eng_req *r) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += WAIT_SLICE_NS;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
}

/* Token bytes as valid UTF-8 (a byte-level token may hold part of a character): invalid
 * sequences become U+FFFD, as the tokenizers library shows them. */
static void token_text(const mt_engine *e, int32_t id, char *out, size_t cap, uint8_t *raw, size_t *raw_len) {
    char b[256];
    size_t n = mt_tokenizer_token_bytes(e->tok, id, b, sizeof b);
    if (n > sizeof b) n = sizeof b;
    if (raw) {
        memcpy(raw, b, n);
        *raw_len = n;
    }
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap;) {
        unsigned char c = (unsigned char)b[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) ok = ((unsigned char)b[i + k] >> 6) == 2;
        if (ok && len == 1 && c == 0) ok = false;
        if (ok) {
            memcpy(out + o, b + i, len);
            o += len;
            i += len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
}

/* logprobs of choice tokens [from, to): the completions shape or the chat shape. */
static cJSON *logprobs_json(const mt_engine *e, const mt_eng_req *r, const mt_eng_sample *s, int from, int to,
                            size_t *text_offset) {
    char t[1024];
    uint8_t raw[256];
    size_t raw_len = 0;
    if (r->ep == MT_EP_CHAT) {
        cJSON *o = cJSON_CreateObject(), *content = cJSON_AddArrayToObject(o, "content");
        for (int i = from; i < to; i++) {
            const mt_eng_logprob *lp = &s->lps[i];
            cJSON *x = cJSON_CreateObject();
            token_text(e, lp->id, t, sizeof t, raw, &raw_len);
            cJSON_AddStringToObject(x, "token", t);
            cJSON_AddNumberToObject(x, "logprob", lp->logprob);
            cJSON *bytes = cJSON_AddArrayToObject(x, "bytes");
            for (size_t k = 0; k < raw_len; k++) cJSON_AddItemToArray(bytes, cJSON_CreateNumber(raw[k]));
            cJSON *tops = cJSON_AddArrayToObject(x, "top_logprobs");
            for (int k = 0; k < lp->n_top; k++) {
                cJSON *y = cJSON_CreateObject();
                token_text(e, lp->top_ids[k], t, sizeof t, raw, &raw_len);
                cJSON_AddStringToObject(y, "token", t);
                cJSON_AddNumberToObject(y, "logprob", lp->top_lps[k]);
                cJSON *yb = cJSON_AddArrayToObject(y, "bytes");
                for (size_t q = 0; q < raw_len; q++) cJSON_AddItemToArray(yb, cJSON_CreateNumber(raw[q]));
                cJSON_AddItemToArray(tops, y);
            }
            cJSON_AddItemToArray(content, x);
        }
        return o;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens"), *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs"), *offs = cJSON_AddArrayToObject(o, "text_offset");
    for (int i = from; i < to; i++) {
        const mt_eng_logprob *lp = &s->lps[i];
        token_text(e, lp->id, t, sizeof t, NULL, NULL);
        cJSON_AddItemToArray(tokens, cJSON_CreateString(t));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(lp->logprob));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)*text_offset));
        *text_offset += strlen(t);
        cJSON *top = cJSON_CreateObject();
        for (int k = 0; k < lp->n_top; k++) {
            token_text(e, lp->top_ids[k], t, sizeof t, NULL, NULL);
            if (!cJSON_GetObjectItemCaseSensitive(top, t)) cJSON_AddNumberToObject(top, t, lp->top_lps[k]);
        }
        cJSON_AddItemToArray(tops, top);
    }
    return o;
}

static void usage_json(cJSON *parent, const mt_eng_req *r) {
    int prompt = 0, gen = 0;
    for (int g = 0; g < r->n_prompts; g++) prompt += r->prompt_len[g];
    for (int i = 0; i < r->n_samples; i++) gen += r->samples[i].n_gen;
    cJSON *u = cJSON_AddObjectToObject(parent, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", gen);
    cJSON_AddNumberToObject(u, "total_tokens", prompt + gen);
}

static cJSON *response_head(const mt_eng_req *r, const char *id, long created, bool chunk) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object",
                            r->ep == MT_EP_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "model", r->model_name);
    return o;
}

/* ---- request preparation ---- */

typedef struct gen_ctx {
    mt_eng_params p;
    mt_eng_prompt *prompts;
    int n_prompts;
    mt_eng_chat_msgs msgs;
    char **echo;             /* [n_prompts] prompt text for echo, NULL entries when not asked */
} gen_ctx;

static void gen_ctx_free(gen_ctx *g) {
    if (g->echo)
        for (int i = 0; i < g->n_prompts; i++) free(g->echo[i]);
    free(g->echo);
    mt_eng_prompts_free(g->prompts, g->n_prompts);
    mt_eng_chat_msgs_free(&g->msgs);
}

static bool encode_prompts(mt_engine *e, mt_eng_endpoint ep, gen_ctx *g, mt_eng_http_error *h) {
    mt_error err = {0};
    if (ep == MT_EP_CHAT) {
        mt_chat_message *m = mt_xcalloc((size_t)g->msgs.n, sizeof *m);
        for (int i = 0; i < g->msgs.n; i++) m[i] = (mt_chat_message){g->msgs.role[i], g->msgs.content[i]};
        char *text = NULL;
        size_t len = 0;
        mt_status st = mt_chat_render(e->tok, m, (size_t)g->msgs.n, true, &text, &len, &err);
        free(m);
        if (st == MT_ERR_NOT_FOUND) {
            mt_eng_herr(h, 400, "invalid_request_error", "messages", NULL,
                        "this model's tokenizer has no chat template; use /v1/completions");
            return false;
        }
        if (st != MT_OK) {
            mt_eng_herr(h, 400, "invalid_request_error", "messages", NULL, "the chat template failed: %s", err.msg);
            return false;
        }
        g->prompts = mt_xcalloc(1, sizeof *g->prompts);
        g->n_prompts = 1;
        g->prompts[0].text = text;
        size_t n = 0;
        /* the template already wrote the special tokens it wants (transformers tokenizes a rendered
         * chat with add_special_tokens=False) */
        st = mt_tokenizer_encode(e->tok, text, len, false, &g->prompts[0].ids, &n, &err);
        g->prompts[0].n_ids = (int)n;
        if (st != MT_OK) {
            mt_eng_herr(h, 400, "invalid_request_error", "messages", NULL, "%s", err.msg);
            return false;
        }
        return true;
    }
    if (g->p.echo) g->echo = mt_xcalloc((size_t)g->n_prompts, sizeof(char *));
    for (int i = 0; i < g->n_prompts; i++) {
        mt_eng_prompt *pr = &g->prompts[i];
        if (pr->text) {
            size_t n = 0;
            if (mt_tokenizer_encode(e->tok, pr->text, strlen(pr->text), true, &pr->ids, &n, &err) != MT_OK) {
                mt_eng_herr(h, 400, "invalid_request_error", "prompt", NULL, "%s", err.msg);
                return false;
            }
            pr->n_ids = (int)n;
            if (g->echo) g->echo[i] = mt_xstrdup(pr->text);
        } else if (g->echo || i == 0 || e->rec) {
            char *text = NULL;
            size_t len = 0;
            if (mt_tokenizer_decode(e->tok, pr->ids, (size_t)pr->n_ids, false, &text, &len, &err) != MT_OK) {
                mt_eng_herr(h, 400, "invalid_request_error", "prompt", NULL, "%s", err.msg);
                return false;
            }
            if (g->echo) g->echo[i] = text;
            else pr->text = text; /* for the store (feedback needs every prompt's text) */
        }
    }
    return true;
}

/* ---- non-streaming ---- */

static int respond_whole(mt_server *s, struct MHD_Connection *c, mt_eng_req *r, gen_ctx *g) {
    mt_engine *e = s->e;
    pthread_mutex_lock(&r->mu);
    while (!r->done) {
        wait_slice(r);
        if (!atomic_load(&r->cancelled) && (atomic_load(&s->stopping) || mt_eng_client_gone(c)))
            atomic_store(&r->cancelled, true);
    }
    pthread_mutex_unlock(&r->mu);
    if (r->status != MT_OK) {
        mt_eng_http_error h;
        if (r->status == MT_ERR_INTERRUPTED)
            mt_eng_herr(&h, 503, "server_error", NULL, "cancelled", "%s", r->errmsg);
        else
            mt_eng_herr(&h, 500, "server_error", NULL, "internal_error", "%s", r->errmsg);
        return mt_eng_send_error(s, c, r->ep, r->model_name, &h);
    }
    cJSON *o = response_head(r, r->id, (long)r->t_arrival_unix, false);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < r->n_samples; i++) {
        mt_eng_sample *sm = &r->samples[i];
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", sm->index);
        const char *text = sm->out ? sm->out : "";
        if (r->ep == MT_EP_CHAT) {
            cJSON *msg = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(msg, "role", "assistant");
            cJSON_AddStringToObject(msg, "content", text);
        } else if (g->echo && g->echo[sm->group]) {
            size_t a = strlen(g->echo[sm->group]), b = strlen(text);
            char *both = mt_xmalloc(a + b + 1);
            memcpy(both, g->echo[sm->group], a);
            memcpy(both + a, text, b + 1);
            cJSON_AddStringToObject(ch, "text", both);
            free(both);
        } else {
            cJSON_AddStringToObject(ch, "text", text);
        }
        size_t off = 0;
        if (r->p.logprobs)
            cJSON_AddItemToObject(ch, "logprobs", logprobs_json(e, r, sm, 0, sm->n_lps, &off));
        else
            cJSON_AddNullToObject(ch, "logprobs");
        cJSON_AddStringToObject(ch, "finish_reason", sm->finish ? sm->finish : "stop");
        cJSON_AddItemToArray(choices, ch);
    }
    usage_json(o, r);
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    int ok = mt_eng_send(s, c, r->ep, r->model_name, 200, "application/json", json, strlen(json));
    cJSON_free(json);
    return ok;
}

/* ---- streaming ---- */

typedef struct stream {
    mt_server *s;
    mt_eng_req *r;
    struct MHD_Connection *c;
    char id[64];
    long created;
    mt_eng_buf buf;          /* bytes formatted, not yet handed to MHD */
    size_t off;
    size_t *sent_text;       /* [n_samples] */
    int *sent_lps;           /* [n_samples] */
    size_t *text_offset;     /* [n_samples] completions logprobs text_offset */
    bool *finish_sent;       /* [n_samples] */
    bool started;            /* role chunks (chat) / echo chunks sent */
    bool ended;
    char **echo;             /* taken from gen_ctx */
    int n_echo;
} stream;

static void sse(stream *st, cJSON *o) {
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    mt_eng_buf_add(&st->buf, "data: ", 6);
    mt_eng_buf_add(&st->buf, json, strlen(json));
    mt_eng_buf_add(&st->buf, "\n\n", 2);
    cJSON_free(json);
}

static void chunk(stream *st, const mt_eng_sample *sm, const char *text, size_t len, int lp_from, int lp_to,
                  const char *finish, bool role) {
    mt_eng_req *r = st->r;
    cJSON *o = response_head(r, st->id, st->created, true);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices"), *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", sm->index);
    char *t = mt_xmalloc(len + 1);
    memcpy(t, text, len);
    t[len] = 0;
    if (r->ep == MT_EP_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(ch, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (len || role) cJSON_AddStringToObject(d, "content", t);
    } else {
        cJSON_AddStringToObject(ch, "text", t);
    }
    free(t);
    if (r->p.logprobs && lp_to > lp_from)
        cJSON_AddItemToObject(ch, "logprobs", logprobs_json(st->s->e, r, sm, lp_from, lp_to, &st->text_offset[sm->index]));
    else
        cJSON_AddNullToObject(ch, "logprobs");
    if (finish)
        cJSON_AddStringToObject(ch, "finish_reason", finish);
    else
        cJSON_AddNullToObject(ch, "finish_reason");
    cJSON_AddItemToArray(choices, ch);
    sse(st, o);
}

/* Formats everything new since the last call (under r->mu). */
static void format_new(stream *st) {
    mt_eng_req *r = st->r;
    if (!st->started) {
        st->started = true;
        for (int i = 0; i < r->n_samples; i++) {
            const mt_eng_sample *sm = &r->samples[i];
            if (r->ep == MT_EP_CHAT)
                chunk(st, sm, "", 0, 0, 0, NULL, true);
            else if (st->echo && st->echo[sm->group])
                chunk(st, sm, st->echo[sm->group], strlen(st->echo[sm->group]), 0, 0, NULL, false);
        }
    }
    for (int i = 0; i < r->n_samples; i++) {
        const mt_eng_sample *sm = &r->samples[i];
        bool new_text = sm->out_len > st->sent_text[i], new_lps = sm->n_lps > st->sent_lps[i];
        bool fin = sm->finish && !st->finish_sent[i]; /* set, under r->mu, only when the choice is done */
        if (!new_text && !new_lps && !fin) continue;
        chunk(st, sm, sm->out ? sm->out + st->sent_text[i] : "", sm->out_len - st->sent_text[i], st->sent_lps[i],
              sm->n_lps, fin ? sm->finish : NULL, false);
        st->sent_text[i] = sm->out_len;
        st->sent_lps[i] = sm->n_lps;
        if (fin) st->finish_sent[i] = true;
    }
    if (r->done) {
        if (r->status != MT_OK) {
            mt_eng_http_error h;
            mt_eng_herr(&h, r->status == MT_ERR_INTERRUPTED ? 503 : 500, "server_error", NULL, NULL, "%s", r->errmsg);
            char *json = mt_eng_error_json(&h);
            mt_eng_buf_add(&st->buf, "data: ", 6);
            mt_eng_buf_add(&st->buf, json, strlen(json));
            mt_eng_buf_add(&st->buf, "\n\n", 2);
            cJSON_free(json);
        } else if (r->p.include_usage) {
            cJSON *o = response_head(r, st->id, st->created, true);
            cJSON_AddArrayToObject(o, "choices");
            usage_json(o, r);
            sse(st, o);
        }
        mt_eng_buf_add(&st->buf, "data: [DONE]\n\n", 14);
        st->ended = true;
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
    stream *st = cls;
    mt_eng_req *r = st->r;
    (void)pos;
    for (;;) {
        if (st->off < st->buf.n) {
            size_t n = st->buf.n - st->off < max ? st->buf.n - st->off : max;
            memcpy(out, st->buf.p + st->off, n);
            st->off += n;
            return (ssize_t)n;
        }
        st->buf.n = st->off = 0;
        if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&r->mu);
        for (;;) {
            bool fresh = !st->started || r->done;
            for (int i = 0; i < r->n_samples && !fresh; i++)
                fresh = r->samples[i].out_len > st->sent_text[i] || r->samples[i].n_lps > st->sent_lps[i] ||
                        (r->samples[i].finish && !st->finish_sent[i]);
            if (fresh) break;
            wait_slice(r);
            if (atomic_load(&st->s->stopping) || mt_eng_client_gone(st->c)) {
                atomic_store(&r->cancelled, true);
                pthread_mutex_unlock(&r->mu);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
        }
        format_new(st);
        pthread_mutex_unlock(&r->mu);
    }
}

static void stream_free(void *cls) {
    stream *st = cls;
    mt_eng_req *r = st->r;
    if (!r->done) atomic_store(&r->cancelled, true); /* the connection closed before the end */
    mt_eng_req_unref(st->s->e, r);
    free(st->buf.p);
    free(st->sent_text);
    free(st->sent_lps);
    free(st->text_offset);
    free(st->finish_sent);
    if (st->echo)
        for (int i = 0; i < st->n_echo; i++) free(st->echo[i]);
    free(st->echo);
    free(st);
}

static int respond_stream(mt_server *s, struct MHD_Connection *c, mt_eng_req *r, gen_ctx *g) {
    stream *st = mt_xcalloc(1, sizeof *st);
    st->s = s;
    st->r = r;
    st->c = c;
    snprintf(st->id, sizeof st->id, "%s", r->id);
    st->created = (long)r->t_arrival_unix;
    st->sent_text = mt_xcalloc((size_t)r->n_samples, sizeof(size_t));
    st->sent_lps = mt_xcalloc((size_t)r->n_samples, sizeof(int));
    st->text_offset = mt_xcalloc((size_t)r->n_samples, sizeof(size_t));
    st->finish_sent = mt_xcalloc((size_t)r->n_samples, sizeof(bool));
    st->echo = g->echo;
    st->n_echo = g->n_prompts;
    g->echo = NULL;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, st, stream_free);
    if (!resp) {
        stream_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    mt_metrics_count_request(&s->e->metrics, r->ep, r->model_name, 200);
    return ok;
}

/* What feedback turns into a pair's prompt: chat's messages as TRL's conversational form
 * ([{"role","content"},...], unformatted), or every prompt's text. */
static char *prompts_json(mt_eng_endpoint ep, const gen_ctx *g) {
    cJSON *a = cJSON_CreateArray();
    if (ep == MT_EP_CHAT) {
        for (int i = 0; i < g->msgs.n; i++) {
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", g->msgs.role[i]);
            cJSON_AddStringToObject(m, "content", g->msgs.content[i]);
            cJSON_AddItemToArray(a, m);
        }
    } else {
        for (int i = 0; i < g->n_prompts; i++)
            cJSON_AddItemToArray(a, cJSON_CreateString(g->prompts[i].text ? g->prompts[i].text : ""));
    }
    char *json = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    char *out = mt_xstrdup(json);
    cJSON_free(json);
    return out;
}

int mt_eng_handle_generate(mt_server *s, struct MHD_Connection *c, mt_eng_endpoint ep, const char *body, size_t len) {
    mt_engine *e = s->e;
    gen_ctx g = {0};
    mt_eng_http_error h;
    mt_eng_parse_limits lim = {.vocab_size = e->vocab, .max_choices = e->o.max_choices, .max_prompts = e->o.max_choices,
                               .top_k = e->cfg->top_k};
    if (!mt_eng_parse_request(ep, body, len, &lim, &g.p, &g.prompts, &g.n_prompts, &g.msgs, &h) ||
        !encode_prompts(e, ep, &g, &h)) {
        gen_ctx_free(&g);
        return mt_eng_send_error(s, c, ep, "", &h);
    }
    mt_eng_req *r = mt_eng_req_new(e, ep, &g.p, g.prompts, g.n_prompts, &h);
    if (!r) {
        int ok = mt_eng_send_error(s, c, ep, "", &h); /* not a model the server knows: no label */
        gen_ctx_free(&g);
        return ok;
    }
    if (g.prompts[0].text) r->prompt_text = mt_xstrdup(g.prompts[0].text);
    if (e->rec) r->prompts_json = prompts_json(ep, &g);
    if (!mt_eng_submit(e, r, &h)) {
        int ok = mt_eng_send_error(s, c, ep, r->model_name, &h);
        mt_eng_req_unref(e, r);
        gen_ctx_free(&g);
        return ok;
    }
    int ok;
    if (g.p.stream) {
        ok = respond_stream(s, c, r, &g); /* the stream holds the HTTP side's reference now */
    } else {
        ok = respond_whole(s, c, r, &g);
        mt_eng_req_unref(e, r);
    }
    gen_ctx_free(&g);
    return ok;
}
