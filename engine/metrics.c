/* metrics.c — what /metrics shows, in the Prometheus text format (version 0.0.4): requests and
 * errors by endpoint and model, queue and batch sizes, KV blocks, latency histograms (TTFT,
 * inter-token, end to end), token counts and rate, adapters and their load times, and per MoE
 * layer the router's entropy and the tokens each expert received. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine-impl.h"

static const double ttft_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                 0.5,   1,      2.5,   5,    10,    30,   60};
static const double itl_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                0.075,  0.1,   0.25,   0.5,   1,    2.5};
static const double e2e_le[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

static void hist_init(mt_hist *h, const double *le, int n) {
    memset(h, 0, sizeof *h);
    h->le = le;
    h->n = n;
}

void mt_hist_observe(mt_hist *h, double v) {
    int i = 0;
    while (i < h->n && v > h->le[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

void mt_metrics_init(mt_metrics *m, int n_moe, int n_experts) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    hist_init(&m->ttft, ttft_le, (int)(sizeof ttft_le / sizeof ttft_le[0]));
    hist_init(&m->itl, itl_le, (int)(sizeof itl_le / sizeof itl_le[0]));
    hist_init(&m->e2e, e2e_le, (int)(sizeof e2e_le / sizeof e2e_le[0]));
    m->n_moe = n_moe;
    m->n_experts = n_experts;
    if (n_moe > 0) {
        m->layer = mt_xcalloc((size_t)n_moe, sizeof(int));
        for (int i = 0; i < n_moe; i++) m->layer[i] = -1;
        m->entropy_last = mt_xcalloc((size_t)n_moe, sizeof(double));
        m->entropy_sum = mt_xcalloc((size_t)n_moe, sizeof(double));
        m->entropy_rows = mt_xcalloc((size_t)n_moe, sizeof(uint64_t));
        m->expert_tokens = mt_xcalloc((size_t)n_moe * (size_t)(n_experts > 0 ? n_experts : 1), sizeof(uint64_t));
    }
    m->tps_window_start = mt_now_seconds();
}

void mt_metrics_free(mt_metrics *m) {
    free(m->layer);
    free(m->entropy_last);
    free(m->entropy_sum);
    free(m->entropy_rows);
    free(m->expert_tokens);
    pthread_mutex_destroy(&m->mu);
    memset(m, 0, sizeof *m);
}

void mt_metrics_count_request(mt_metrics *m, mt_eng_endpoint ep, const char *model, int status) {
    pthread_mutex_lock(&m->mu);
    int i = 0;
    for (; i < m->n_req; i++)
        if (m->req[i].ep == ep && m->req[i].status == status && !strcmp(m->req[i].model, model)) break;
    if (i == m->n_req) {
        if (m->n_req == MT_METRIC_KEYS) {
            m->req_overflow++;
            pthread_mutex_unlock(&m->mu);
            return;
        }
        m->req[i].ep = ep;
        m->req[i].status = status;
        snprintf(m->req[i].model, sizeof m->req[i].model, "%s", model);
        m->n_req++;
    }
    m->req[i].count++;
    pthread_mutex_unlock(&m->mu);
}

/* Called by the scheduler after every step: routing statistics and the tokens/s window. */
void mt_eng_metrics_step(mt_engine *e, int n_rows) {
    mt_metrics *m = &e->metrics;
    /* the decoder's DAP counts since its options were set (at init): the step's delta */
    mt_dap_counts dc;
    mt_decoder_dap_stats(e->dec, &dc);
    mt_dap_counts delta = {dc.queries - e->dap_seen.queries, dc.blocks - e->dap_seen.blocks,
                           dc.skipped - e->dap_seen.skipped, dc.fallbacks - e->dap_seen.fallbacks};
    e->dap_seen = dc;
    pthread_mutex_lock(&m->mu);
    m->steps++;
    m->dap.queries += delta.queries;
    m->dap.blocks += delta.blocks;
    m->dap.skipped += delta.skipped;
    m->dap.fallbacks += delta.fallbacks;
    /* every row of the step was routed by each MoE layer; experts_used says with how many */
    m->routed_pairs += (uint64_t)n_rows * (uint64_t)m->n_moe;
    for (int r = 0; r < n_rows; r++) m->experts_used += (uint64_t)e->b_kused[r];
    mt_router_stats rs;
    for (int i = 0; i < m->n_moe && mt_decoder_router_stats(e->dec, i, &rs); i++) {
        m->layer[i] = rs.layer;
        m->entropy_last[i] = rs.entropy;
        m->entropy_sum[i] += rs.entropy * n_rows;
        m->entropy_rows[i] += (uint64_t)n_rows;
        if (rs.tokens_per_expert)
            for (int x = 0; x < m->n_experts; x++)
                m->expert_tokens[(size_t)i * m->n_experts + x] += (uint64_t)rs.tokens_per_expert[x];
    }
    double now = mt_now_seconds();
    if (now - m->tps_window_start >= 2.0) {
        m->tps_last = m->tps_window_tokens / (now - m->tps_window_start);
        m->tps_window_start = now;
        m->tps_window_tokens = 0;
    }
    pthread_mutex_unlock(&m->mu);
}

/* ---- text output ---- */

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static void bprintf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(buf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k >= 0 && (size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        b->cap = b->cap * 2 + (size_t)(k > 0 ? k : 0) + 64;
        b->p = mt_xrealloc(b->p, b->cap);
    }
}

/* A label value with \, " and newline escaped as the exposition format requires. */
static const char *esc(const char *s, char *out, size_t cap) {
    size_t o = 0;
    for (; *s && o + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') {
            out[o++] = '\\';
            out[o++] = *s;
        } else if (*s == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *s;
        }
    }
    out[o] = 0;
    return out;
}

static void head(buf *b, const char *name, const char *type, const char *help) {
    bprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hist_text(buf *b, const char *name, const char *help, const mt_hist *h) {
    head(b, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        bprintf(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
    }
    cum += h->counts[h->n];
    bprintf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name, (unsigned long long)cum, name,
            h->sum, name, (unsigned long long)h->count);
}

char *mt_eng_metrics_text(mt_engine *e) {
    buf b = {mt_xmalloc(8192), 0, 8192};
    b.p[0] = 0;
    char l1[600], l2[600];
    mt_metrics *m = &e->metrics;

    /* the registry has its own lock: read it before taking the metrics lock */
    int n_ad = mt_registry_count(e->reg);
    mt_registry_info *ads = mt_xcalloc((size_t)(n_ad > 0 ? n_ad : 1), sizeof *ads);
    int got = 0;
    for (int i = 0; i < n_ad; i++)
        if (mt_registry_get(e->reg, i, &ads[got])) got++;
    int live = mt_registry_live_versions(e->reg);
    int queued;
    pthread_mutex_lock(&e->mu);
    queued = e->queue_len;
    pthread_mutex_unlock(&e->mu);

    pthread_mutex_lock(&m->mu);
    head(&b, "moetune_requests_total", "counter", "HTTP requests answered, by endpoint, model and status code.");
    for (int i = 0; i < m->n_req; i++)
        bprintf(&b, "moetune_requests_total{endpoint=\"%s\",model=\"%s\",status=\"%d\"} %llu\n",
                mt_eng_endpoint_path(m->req[i].ep), esc(m->req[i].model, l1, sizeof l1), m->req[i].status,
                (unsigned long long)m->req[i].count);
    head(&b, "moetune_request_errors_total", "counter", "HTTP requests answered with a 4xx or 5xx status.");
    for (int i = 0; i < m->n_req; i++)
        if (m->req[i].status >= 400)
            bprintf(&b, "moetune_request_errors_total{endpoint=\"%s\",model=\"%s\",status=\"%d\"} %llu\n",
                    mt_eng_endpoint_path(m->req[i].ep), esc(m->req[i].model, l1, sizeof l1), m->req[i].status,
                    (unsigned long long)m->req[i].count);
    head(&b, "moetune_queue_length", "gauge", "Requests queued plus sequences waiting for KV blocks.");
    bprintf(&b, "moetune_queue_length %d\n", queued + atomic_load(&e->waiting_samples));
    head(&b, "moetune_running_sequences", "gauge", "Sequences in the running batch.");
    bprintf(&b, "moetune_running_sequences %d\n", atomic_load(&e->running_seqs));
    head(&b, "moetune_kv_blocks_used", "gauge", "KV cache blocks in use.");
    bprintf(&b, "moetune_kv_blocks_used %d\n", atomic_load(&e->kv_used));
    head(&b, "moetune_kv_blocks_total", "gauge", "KV cache blocks in the pool.");
    bprintf(&b, "moetune_kv_blocks_total %d\n", atomic_load(&e->kv_total));
    hist_text(&b, "moetune_time_to_first_token_seconds", "Time from arrival to a request's first token.", &m->ttft);
    hist_text(&b, "moetune_inter_token_latency_seconds", "Time between consecutive tokens of a sequence.", &m->itl);
    hist_text(&b, "moetune_request_latency_seconds", "Time from arrival to a request's last token.", &m->e2e);
    head(&b, "moetune_generated_tokens_total", "counter", "Tokens generated.");
    bprintf(&b, "moetune_generated_tokens_total %llu\n", (unsigned long long)m->gen_tokens);
    head(&b, "moetune_prompt_tokens_total", "counter", "Prompt tokens of the requests admitted.");
    bprintf(&b, "moetune_prompt_tokens_total %llu\n", (unsigned long long)m->prompt_tokens);
    double now = mt_now_seconds(), span = now - m->tps_window_start;
    double tps = span > 2.0 ? m->tps_window_tokens / span : m->tps_last;
    head(&b, "moetune_generation_tokens_per_second", "gauge", "Tokens generated per second over the last seconds.");
    bprintf(&b, "moetune_generation_tokens_per_second %.3f\n", tps);
    head(&b, "moetune_preemptions_total", "counter", "Sequences preempted when KV blocks ran out (recomputed later).");
    bprintf(&b, "moetune_preemptions_total %llu\n", (unsigned long long)m->preemptions);
    head(&b, "moetune_decode_steps_total", "counter", "Batched decode steps run.");
    bprintf(&b, "moetune_decode_steps_total %llu\n", (unsigned long long)m->steps);
    head(&b, "moetune_dap_queries_total", "counter",
         "DAP: (decode row, layer, query head) attentions run with a threshold > 0.");
    bprintf(&b, "moetune_dap_queries_total %llu\n", (unsigned long long)m->dap.queries);
    head(&b, "moetune_dap_blocks_total", "counter", "DAP: KV blocks those attentions considered.");
    bprintf(&b, "moetune_dap_blocks_total %llu\n", (unsigned long long)m->dap.blocks);
    head(&b, "moetune_dap_skipped_blocks_total", "counter", "DAP: KV blocks skipped by the pruning rule.");
    bprintf(&b, "moetune_dap_skipped_blocks_total %llu\n", (unsigned long long)m->dap.skipped);
    head(&b, "moetune_dap_fallbacks_total", "counter",
         "DAP: attentions that fell back to every block (kept mass below the floor).");
    bprintf(&b, "moetune_dap_fallbacks_total %llu\n", (unsigned long long)m->dap.fallbacks);
    head(&b, "moetune_routed_tokens_total", "counter",
         "(token row, MoE layer) pairs routed by the decode steps (prefill rows included).");
    bprintf(&b, "moetune_routed_tokens_total %llu\n", (unsigned long long)m->routed_pairs);
    head(&b, "moetune_routed_experts_total", "counter",
         "Routed experts those pairs used (top_k each with fixed routing, fewer with adaptive expert counts); "
         "over moetune_routed_tokens_total: mean experts per token and layer.");
    bprintf(&b, "moetune_routed_experts_total %llu\n", (unsigned long long)m->experts_used);
    head(&b, "moetune_adapters_loaded", "gauge", "Adapters loaded (current versions).");
    bprintf(&b, "moetune_adapters_loaded %d\n", got);
    head(&b, "moetune_adapter_versions_live", "gauge", "Adapter versions alive, replaced ones still in use included.");
    bprintf(&b, "moetune_adapter_versions_live %d\n", live);
    head(&b, "moetune_adapter_load_seconds", "gauge", "Time the last load of each adapter took.");
    for (int i = 0; i < got; i++)
        bprintf(&b, "moetune_adapter_load_seconds{adapter=\"%s\"} %.6f\n", esc(ads[i].name, l1, sizeof l1),
                ads[i].load_seconds);
    head(&b, "moetune_adapter_version", "gauge", "Current version of each adapter (1, 2, ... per reload).");
    for (int i = 0; i < got; i++)
        bprintf(&b, "moetune_adapter_version{adapter=\"%s\",base_hash=\"%s\"} %lld\n", esc(ads[i].name, l1, sizeof l1),
                esc(ads[i].base_hash, l2, sizeof l2), (long long)ads[i].version);
    head(&b, "moetune_router_entropy_nats", "gauge", "Mean routing entropy per MoE layer over every token decoded.");
    for (int i = 0; i < m->n_moe; i++)
        if (m->layer[i] >= 0)
            bprintf(&b, "moetune_router_entropy_nats{layer=\"%d\"} %.6f\n", m->layer[i],
                    m->entropy_rows[i] ? m->entropy_sum[i] / (double)m->entropy_rows[i] : 0.0);
    head(&b, "moetune_router_entropy_last_nats", "gauge", "Routing entropy per MoE layer in the last decode step.");
    for (int i = 0; i < m->n_moe; i++)
        if (m->layer[i] >= 0)
            bprintf(&b, "moetune_router_entropy_last_nats{layer=\"%d\"} %.6f\n", m->layer[i], m->entropy_last[i]);
    head(&b, "moetune_expert_tokens_total", "counter", "Tokens routed to each expert of each MoE layer.");
    for (int i = 0; i < m->n_moe; i++)
        if (m->layer[i] >= 0)
            for (int x = 0; x < m->n_experts; x++)
                bprintf(&b, "moetune_expert_tokens_total{layer=\"%d\",expert=\"%d\"} %llu\n", m->layer[i], x,
                        (unsigned long long)m->expert_tokens[(size_t)i * m->n_experts + x]);
    head(&b, "moetune_uptime_seconds", "gauge", "Seconds since the engine started.");
    bprintf(&b, "moetune_uptime_seconds %.3f\n", now - e->t_started);
    pthread_mutex_unlock(&m->mu);
    free(ads);
    return b.p;
}
