/* eval.c — held-out perplexity of a base model and of the same base with an adapter, over the
 * same tokens, for `moetune eval` and the quickstart's side-by-side figures. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peft/lora.h"
#include "run-impl.h"

mt_status mt_evaluate(const mt_eval_opts *o, mt_eval_result *res, mt_error *err) {
    res->base_loss = res->base_ppl = res->adapter_loss = res->adapter_ppl = NAN;
    res->n_docs = res->n_tokens = 0;
    res->mean_experts = NAN;
    res->adapter_experts = 0;
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
    free(meta.thresholds_json);
    free(meta.score);
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
        st = mt_eval_rows(m, ws, &buf, &rows, NULL, &res->base_loss, &res->n_tokens, err);
        res->base_ppl = exp(res->base_loss);
        if (st == MT_OK && l) {
            if (res->adapter_experts > 0) {
                /* the adapter's own threshold on its pass, counted alone */
                mt_adaptive_k ak = {.threshold = res->adapter_experts, .min_k = o->min_k, .max_k = o->max_k};
                mt_model_set_adaptive_k(m, &ak);
            }
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
    mt_model_free(m);
    mt_tokenizer_free(tok);
    if (be) mt_backend_free(be);
    return st;
}
