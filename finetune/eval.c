/* eval.c — held-out perplexity of a base model and of the same base with an adapter, over the
 * same tokens, for `moetune eval` and the quickstart's side-by-side figures. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peft/lora.h"
#include "run-impl.h"

/* DAP's KV blocks: the serving engine's and mt_generate's size, so the rule sees the same blocks */
#define EVAL_DAP_BLOCK 16
/* rows of one decoder step: a prefill chunk */
#define EVAL_DAP_CHUNK 256

/* The rows' mean token loss through the paged decoder, each row prefilled in chunks as a prompt
 * is, with DAP at tau on every row. Rows are one document each (eval does not pack), so a row's
 * real tokens are those up to its last target; the padding after them is not fed. */
static mt_status eval_rows_paged(mt_model *m, const mt_rows *rows, const mt_adapter *adapter, const mt_dap_opts *dap,
                                 float tau, double *loss, int64_t *n_tokens, struct mt_eval_dap *counts, mt_error *err) {
    const int T = rows->T, V = mt_model_config(m)->vocab_size, C = T < EVAL_DAP_CHUNK ? T : EVAL_DAP_CHUNK;
    mt_kv_pool *pool = NULL;
    mt_decoder *dec = NULL;
    mt_kv_pool_opts po = {.block_size = EVAL_DAP_BLOCK, .n_blocks = (T + EVAL_DAP_BLOCK - 1) / EVAL_DAP_BLOCK + 1,
                          .max_seqs = 1, .max_seq_len = T};
    mt_status st = mt_kv_pool_init(&pool, m, &po, err);
    if (!st) st = mt_decoder_init(&dec, m, C, adapter ? adapter->max_rank : 0, err);
    if (st) {
        mt_kv_pool_free(pool);
        return st;
    }
    mt_decoder_set_dap(dec, dap);
    int32_t *seq = mt_xcalloc((size_t)C, sizeof(int32_t)), *lrows = mt_xmalloc((size_t)C * sizeof(int32_t));
    float *taus = mt_xmalloc((size_t)C * sizeof(float)), *logits = mt_xmalloc((size_t)C * (size_t)V * sizeof(float));
    for (int i = 0; i < C; i++) {
        lrows[i] = i;
        taus[i] = tau;
    }
    const mt_adapter *slots[1] = {adapter};
    double sum = 0;
    int64_t count = 0;
    for (int64_t r = 0; r < rows->n_rows && !st; r++) {
        const int32_t *tok = rows->tokens + (size_t)r * T, *tgt = rows->targets + (size_t)r * T;
        const int32_t *pos = rows->pos + (size_t)r * T;
        int n = 0;
        for (int t = 0; t < T; t++)
            if (tgt[t] >= 0) n = t + 1;
        for (int t = 0; t < n && !st; t++)
            if (pos[t] != t || (rows->kv_start && rows->kv_start[(size_t)r * T + t] != 0))
                st = mt_error_set(err, MT_ERR_INVALID, "eval: DAP scores rows of one document each; row %lld is packed",
                                  (long long)r);
        int s = -1;
        if (!st && n > 0) st = mt_kv_seq_open(pool, &s, err);
        for (int t0 = 0; t0 < n && !st; t0 += C) {
            const int k = n - t0 < C ? n - t0 : C;
            for (int i = 0; i < k; i++) seq[i] = s;
            mt_decode_batch b = {.n_rows = k,
                                 .tokens = tok + t0,
                                 .seq = seq,
                                 .adapters = slots,
                                 .n_slots = 1,
                                 .logit_rows = lrows,
                                 .n_logits = k,
                                 .dap_threshold = tau > 0 ? taus : NULL};
            st = mt_decode_step(dec, pool, &b, logits, err);
            for (int i = 0; !st && i < k; i++) {
                int32_t y = tgt[t0 + i];
                if (y < 0) continue;
                const float *z = logits + (size_t)i * V;
                double mx = -INFINITY, e = 0;
                for (int v = 0; v < V; v++)
                    if (z[v] > mx) mx = z[v];
                for (int v = 0; v < V; v++) e += exp((double)z[v] - mx);
                sum += mx + log(e) - (double)z[y];
                count++;
            }
        }
        if (s >= 0) mt_kv_seq_close(pool, s);
    }
    if (!st) {
        *loss = count ? sum / (double)count : NAN;
        if (n_tokens) *n_tokens = count;
        mt_dap_counts c;
        mt_decoder_dap_stats(dec, &c);
        *counts = (struct mt_eval_dap){c.queries, c.blocks, c.skipped, c.fallbacks};
    }
    free(seq);
    free(lrows);
    free(taus);
    free(logits);
    mt_decoder_free(dec);
    mt_kv_pool_free(pool);
    return st;
}

mt_status mt_evaluate(const mt_eval_opts *o, mt_eval_result *res, mt_error *err) {
    res->base_loss = res->base_ppl = res->adapter_loss = res->adapter_ppl = NAN;
    res->n_docs = res->n_tokens = 0;
    res->mean_experts = NAN;
    res->adapter_experts = 0;
    res->base_tau = res->adapter_tau = 0;
    memset(&res->base_dap, 0, sizeof res->base_dap);
    memset(&res->adapter_dap, 0, sizeof res->adapter_dap);
    if (o->max_seq_len < 2 || o->batch < 1)
        return mt_error_set(err, MT_ERR_INVALID, "eval: max_seq_len must be >= 2 and batch >= 1");
    const char *tok_dir = o->tokenizer_dir ? o->tokenizer_dir : o->model_dir;
    mt_backend *be = NULL;
    mt_tokenizer *tok = NULL;
    mt_model *m = NULL;
    mt_lora *l = NULL;
    mt_workspace *ws = NULL;
    mt_docs docs = {0};
    mt_rows rows = {0};
    mt_batch_buf buf = {0};
    mt_data_source *src = mt_xcalloc(o->data->n + 1, sizeof *src);
    char tok_hash[65];
    mt_status st = mt_backend_init(&be, MT_BACKEND_CPU, o->threads, err);
    if (st == MT_OK) st = mt_tokenizer_load(&tok, tok_dir, err);
    if (st == MT_OK) st = mt_tokenizer_file_hash(tok_dir, tok_hash, err);
    if (st == MT_OK) st = mt_model_load(&m, o->model_dir, be, err);
    mt_lora_meta meta = {0};
    if (st == MT_OK && o->adapter_dir) st = mt_lora_load_peft(&l, m, o->adapter_dir, &meta, err);
    if (st == MT_OK && l && o->experts_from_adapter)
        mt_lora_meta_threshold(meta.thresholds_json, "experts", &res->adapter_experts);
    /* after the adapter: its base check hashes the weights as stored, not as quantised */
    if (st == MT_OK) st = mt_model_quantize(m, (mt_quant)o->quantize, 0, err);
    if (st == MT_OK) {
        mt_adaptive_k ak = {.threshold = o->expert_threshold, .min_k = o->min_k, .max_k = o->max_k};
        mt_model_set_adaptive_k(m, &ak);
    }
    /* every token of every document scores, prompts included: this is the corpus's perplexity */
    if (st == MT_OK) st = mt_data_load(o->data, o->format, false, tok, tok_hash, NULL, &docs, src, err);
    int32_t pad = tok ? mt_tokenizer_eos_id(tok) : 0;
    if (st == MT_OK) st = mt_rows_build(&docs, o->max_seq_len, false, pad < 0 ? 0 : pad, &rows, err);
    if (st == MT_OK) st = mt_workspace_init(&ws, m, o->batch, o->max_seq_len, false, l ? mt_lora_max_rank(l) : 0, err);
    if (st == MT_OK) {
        mt_batch_buf_init(&buf, o->batch, o->max_seq_len);
        res->n_docs = docs.n_docs;
        if (o->dap) {
            res->base_tau = res->adapter_tau = o->dap->threshold;
            /* the trainer's domain threshold (finetune/run.c format_thresholds) */
            if (l && o->dap_adapter) mt_lora_meta_threshold(meta.thresholds_json, "dap_threshold", &res->adapter_tau);
            st = eval_rows_paged(m, &rows, NULL, o->dap, res->base_tau, &res->base_loss, &res->n_tokens, &res->base_dap,
                                 err);
        } else {
            st = mt_eval_rows(m, ws, &buf, &rows, NULL, &res->base_loss, &res->n_tokens, err);
        }
        res->base_ppl = exp(res->base_loss);
        if (st == MT_OK && l) {
            if (res->adapter_experts > 0) {
                /* the adapter's own threshold on its pass, counted alone */
                mt_adaptive_k ak = {.threshold = res->adapter_experts, .min_k = o->min_k, .max_k = o->max_k};
                mt_model_set_adaptive_k(m, &ak);
            }
            if (o->dap)
                st = eval_rows_paged(m, &rows, mt_lora_adapter(l), o->dap, res->adapter_tau, &res->adapter_loss, NULL,
                                     &res->adapter_dap, err);
            else
                st = mt_eval_rows(m, ws, &buf, &rows, mt_lora_adapter(l), &res->adapter_loss, NULL, err);
            res->adapter_ppl = exp(res->adapter_loss);
        }
        uint64_t nt, ne;
        mt_model_adaptive_k_stats(m, &nt, &ne);
        if ((o->expert_threshold > 0 || res->adapter_experts > 0) && nt > 0)
            res->mean_experts = (double)ne / (double)nt;
    }
    mt_batch_buf_free(&buf);
    mt_workspace_free(ws);
    mt_rows_free(&rows);
    mt_docs_free(&docs);
    free(src);
    mt_lora_free(l);
    free(meta.thresholds_json);
    free(meta.score);
    mt_model_free(m);
    mt_tokenizer_free(tok);
    if (be) mt_backend_free(be);
    return st;
}
