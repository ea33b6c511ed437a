/* engine.c — the engine's lifetime: loading the model, tokenizer and registry, sizing the KV
 * pool and the decoder from the options, starting and stopping the scheduler, watch and store
 * threads, and the log line callback. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "engine-impl.h"

static const char *const endpoint_paths[MT_EP_COUNT] = {
    [MT_EP_COMPLETIONS] = "/v1/completions",   [MT_EP_CHAT] = "/v1/chat/completions",
    [MT_EP_MODELS] = "/v1/models",             [MT_EP_LOAD_LORA] = "/v1/load_lora_adapter",
    [MT_EP_UNLOAD_LORA] = "/v1/unload_lora_adapter", [MT_EP_HEALTH] = "/health",
    [MT_EP_METRICS] = "/metrics",              [MT_EP_FEEDBACK] = "/v1/feedback",
    [MT_EP_OTHER] = "other",
};

const char *mt_eng_endpoint_path(mt_eng_endpoint ep) {
    return ep >= 0 && ep < MT_EP_COUNT ? endpoint_paths[ep] : "other";
}

void mt_eng_log(mt_engine *e, const char *fmt, ...) {
    if (!e->o.log) return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&e->log_mu);
    e->o.log(e->o.log_user, line);
    pthread_mutex_unlock(&e->log_mu);
}

static void set_defaults(mt_engine_opts *o) {
    if (o->max_loaded <= 0) o->max_loaded = 64;
    if (o->max_rank <= 0) o->max_rank = MT_DEFAULT_MAX_RANK;
    if (o->block_size <= 0) o->block_size = 16;
    if (o->max_seqs <= 0) o->max_seqs = 64;
    if (o->max_batch_tokens <= 0) o->max_batch_tokens = 256;
    if (o->max_queue <= 0) o->max_queue = 256;
    if (o->max_choices <= 0) o->max_choices = 16;
    if (o->max_choices > o->max_seqs) o->max_choices = o->max_seqs;
}

mt_status mt_engine_init(mt_engine **out, mt_backend *be, const mt_engine_opts *opts, mt_error *err) {
    *out = NULL;
    if (!opts->model_dir) return mt_error_set(err, MT_ERR_INVALID, "the engine needs a model folder");
    mt_engine *e = mt_xcalloc(1, sizeof *e);
    e->o = *opts;
    set_defaults(&e->o);
    e->inotify_fd = e->wake_fd = -1;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_mutex_init(&e->load_mu, NULL);
    pthread_mutex_init(&e->log_mu, NULL);
    pthread_mutex_init(&e->watch_mu, NULL);
    pthread_cond_init(&e->watch_cv, NULL);
    atomic_init(&e->next_id, 1);
    /* Response ids are hash(salt, counter): the counter restarts with every engine, and a store
     * outlives many, so the salt must not repeat; the clock is the fallback when the kernel's
     * generator cannot be read. */
    if (getrandom(&e->id_salt, sizeof e->id_salt, 0) != (ssize_t)sizeof e->id_salt) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        e->id_salt = mt_hash_u64((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, (uint64_t)getpid());
    }
    e->t_started = mt_now_seconds();
    snprintf(e->model_dir, sizeof e->model_dir, "%s", opts->model_dir);
    if (opts->served_name && *opts->served_name) {
        snprintf(e->served_name, sizeof e->served_name, "%s", opts->served_name);
    } else {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", opts->model_dir);
        size_t n = strlen(tmp);
        while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
        const char *slash = strrchr(tmp, '/');
        snprintf(e->served_name, sizeof e->served_name, "%s", slash ? slash + 1 : tmp);
    }
    mt_status st = mt_model_load(&e->model, opts->model_dir, be, err);
    if (!st) st = mt_tokenizer_load(&e->tok, opts->model_dir, err);
    if (!st) {
        e->cfg = mt_model_config(e->model);
        e->vocab = e->cfg->vocab_size;
        int tv = mt_tokenizer_vocab_size(e->tok);
        if (tv > e->vocab)
            st = mt_error_set(err, MT_ERR_INVALID, "%s: the tokenizer has %d tokens, the model %d", opts->model_dir, tv,
                              e->vocab);
        e->max_model_len = e->cfg->max_position_embeddings;
        if (e->o.max_model_len > 0 && e->o.max_model_len < e->max_model_len) e->max_model_len = e->o.max_model_len;
        for (int i = 0; i < e->cfg->n_eos && e->n_eos < MT_MAX_EOS; i++) e->eos[e->n_eos++] = e->cfg->eos_token_ids[i];
        int32_t teos = mt_tokenizer_eos_id(e->tok);
        bool have = false;
        for (int i = 0; i < e->n_eos; i++) have |= e->eos[i] == teos;
        if (teos >= 0 && teos < e->vocab && !have) e->eos[e->n_eos++] = teos;
    }
    if (!st) {
        mt_model_content_hash(e->model, e->base_hash);
        mt_registry_opts ro = {.max_rank = e->o.max_rank, .max_loaded = e->o.max_loaded};
        st = mt_registry_init(&e->reg, e->model, e->base_hash, &ro, err);
    }
    if (!st) {
        int per_seq = e->max_model_len < 1024 ? e->max_model_len : 1024;
        int blocks = e->o.kv_blocks > 0 ? e->o.kv_blocks
                                        : e->o.max_seqs * ((per_seq + e->o.block_size - 1) / e->o.block_size);
        mt_kv_pool_opts po = {.block_size = e->o.block_size,
                              .n_blocks = blocks,
                              .max_seqs = e->o.max_seqs,
                              .max_seq_len = e->max_model_len};
        st = mt_kv_pool_init(&e->pool, e->model, &po, err);
        if (!st) {
            e->block_size = mt_kv_pool_block_size(e->pool);
            e->total_blocks = mt_kv_pool_blocks_total(e->pool);
            atomic_store(&e->kv_total, e->total_blocks);
        }
    }
    if (!st) {
        e->max_rows = e->o.max_batch_tokens;
        st = mt_decoder_init(&e->dec, e->model, e->max_rows, e->o.max_rank, err);
    }
    if (!st) {
        /* DAP: the server default τ and the decoder's sinks, local window and mass floor */
        const mt_dap_opts *d = opts->dap;
        e->dap_cpu = mt_backend_get_kind(be) == MT_BACKEND_CPU;
        if (d && (!(d->threshold >= 0 && d->threshold <= 1) || d->n_sink_blocks < 0 || d->n_local_blocks < 0 ||
                  !(d->mass_floor >= 0 && d->mass_floor <= 1)))
            st = mt_error_set(err, MT_ERR_INVALID,
                              "DAP: threshold %g and mass floor %g must be in [0, 1], sinks %d and local %d >= 0",
                              (double)d->threshold, (double)d->mass_floor, d->n_sink_blocks, d->n_local_blocks);
        else if (d && d->threshold > 0 && !e->dap_cpu)
            st = mt_error_set(err, MT_ERR_UNSUPPORTED, "DAP (--dap-threshold > 0) runs on the CPU backend only");
        else {
            e->dap_default = d ? d->threshold : 0.0f;
            mt_decoder_set_dap(e->dec, d); /* NULL: the decoder's defaults (1, 1, 0.9) */
        }
        e->o.dap = NULL; /* the caller's; not kept */
    }
    if (!st && opts->experts) {
        /* adaptive expert counts: the server default, checked as a request's would be */
        const mt_adaptive_k *a = opts->experts;
        int K = e->cfg->top_k;
        if (!(a->threshold >= 0 && a->threshold <= 1))
            st = mt_error_set(err, MT_ERR_INVALID, "--expert-threshold %g must be in [0, 1]", (double)a->threshold);
        else if (a->min_k < 0 || a->min_k > K || a->max_k < 0 || a->max_k > K ||
                 (a->min_k > 0 && a->max_k > 0 && a->min_k > a->max_k))
            st = mt_error_set(err, MT_ERR_INVALID,
                              "--min-experts %d and --max-experts %d must be in [1, top_k %d], min <= max", a->min_k,
                              a->max_k, K);
        else if (a->threshold > 0 && !e->dap_cpu)
            st = mt_error_set(err, MT_ERR_UNSUPPORTED,
                              "adaptive expert counts (--expert-threshold > 0) run on the CPU backend only");
        else
            e->expert_default = *a;
    }
    e->o.experts = NULL;
    if (!st) {
        int n_moe = 0;
        for (int l = 0; l < e->cfg->n_layers && l < MT_MAX_LAYERS; l++) n_moe += e->cfg->layer_is_moe[l];
        mt_metrics_init(&e->metrics, e->cfg->n_experts > 0 ? n_moe : 0, e->cfg->n_experts);
    }
    if (!st && opts->store_path) st = mt_recorder_start(&e->rec, e, opts->store_path, err);
    if (!st) st = mt_eng_adapters_init(e, err);
    if (!st) st = mt_eng_sched_start(e, err);
    if (st) {
        mt_engine_free(e);
        return st;
    }
    *out = e;
    return MT_OK;
}

void mt_engine_free(mt_engine *e) {
    if (!e) return;
    mt_eng_adapters_stop(e);
    mt_eng_sched_stop(e);
    mt_recorder_stop(e->rec);
    mt_decoder_free(e->dec);
    mt_kv_pool_free(e->pool);
    mt_registry_free(e->reg);
    mt_metrics_free(&e->metrics);
    mt_tokenizer_free(e->tok);
    mt_model_free(e->model);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->load_mu);
    pthread_mutex_destroy(&e->log_mu);
    pthread_mutex_destroy(&e->watch_mu);
    pthread_cond_destroy(&e->watch_cv);
    free(e);
}

int mt_engine_live_versions(mt_engine *e) { return mt_registry_live_versions(e->reg); }

int mt_engine_seqs_open(mt_engine *e) { return atomic_load(&e->seqs_open); }

const char *mt_engine_served_name(const mt_engine *e) { return e->served_name; }

double mt_engine_adapter_load_seconds(mt_engine *e, const char *name) {
    mt_registry_info in;
    return mt_registry_find(e->reg, name, &in) ? in.load_seconds : -1;
}
