/* run.c — setting a training run up (model, tokenizer, data rows, thresholds, adapter or full
 * weights, optimiser, resume, store record) and tearing it down. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/dist.h"
#include "peft/lora.h"
#include "objective-impl.h"
#include "recipe-impl.h"
#include "store/store.h"

/* Rows sampled for the thresholds: enough for a stable mean, few enough to cost seconds. */
#define DAP_MAX_ROWS 64
/* Gradient bucket of the data-parallel all-reduce, in floats (16 MiB: all of a LoRA's gradients
 * in one all-reduce; full fine-tuning goes in pieces of this size). */
#define DIST_BUCKET_FLOATS ((size_t)1 << 22)

void mt_run_note(const mt_train_opts *o, const char *fmt, ...) {
    if (!o->on_note) return;
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    o->on_note(o->user, line);
}

char *mt_json_quote(const char *s) {
    cJSON *j = cJSON_CreateString(s ? s : "");
    char *out = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return out;
}

mt_status mt_tokenizer_file_hash(const char *dir, char out[65], mt_error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    return mt_sha256_file_hex(path, out, err);
}

mt_status mt_copy_tokenizer_files(const char *from_dir, const char *to_dir, mt_error *err) {
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char src[4200], dst[4200];
        snprintf(src, sizeof src, "%s/%s", from_dir, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", to_dir, files[i]);
        if (i > 0 && !mt_path_exists(src)) continue;
        char *data;
        size_t len;
        MT_TRY(mt_read_file(src, &data, &len, err));
        mt_status st = mt_write_file_atomic(dst, data, len, err);
        free(data);
        MT_TRY(st);
    }
    return MT_OK;
}

/* ---- thresholds ---- */

mt_status mt_dap_from_model(mt_model *m, const mt_rows *rows, int max_rows, double base, double max_entropy,
                            double *threshold, double *mean_entropy, int64_t *n_seqs, mt_error *err) {
    int T = rows->T, V = mt_model_config(m)->vocab_size;
    int64_t n = rows->n_rows < max_rows ? rows->n_rows : max_rows;
    if (n <= 0) return mt_error_set(err, MT_ERR_INVALID, "thresholds: no training rows to measure entropy on");
    mt_workspace *ws;
    MT_TRY(mt_workspace_init(&ws, m, 1, T, false, 0, err));
    float *logits = mt_xmalloc((size_t)T * (size_t)V * sizeof(float));
    mt_batch_buf buf;
    mt_batch_buf_init(&buf, 1, T);
    mt_dap_stats s;
    mt_dap_stats_init(&s);
    mt_status st = MT_OK;
    for (int64_t i = 0; i < n && st == MT_OK; i++) {
        int64_t row = i * rows->n_rows / n; /* evenly spread over the corpus, not its first pages */
        mt_batch_buf_fill(&buf, rows, &row, 1);
        mt_batch b = mt_batch_buf_view(&buf);
        mt_forward_opts fo = {.logits_out = logits};
        mt_forward_result fr;
        st = mt_model_forward(m, ws, &b, &fo, &fr, err);
        if (st == MT_OK) mt_dap_stats_add_sequence(&s, logits, buf.targets, T, V);
    }
    if (st == MT_OK) {
        uint64_t k = 0;
        st = mt_dap_stats_result(&s, base, max_entropy, threshold, mean_entropy, &k, err);
        if (n_seqs) *n_seqs = (int64_t)k;
    }
    mt_batch_buf_free(&buf);
    free(logits);
    mt_workspace_free(ws);
    return st;
}

mt_status mt_experts_from_model(mt_model *m, const mt_adapter *ad, const mt_rows *rows, int max_rows,
                                double *threshold, int64_t *n_shares, mt_error *err) {
    const mt_config *cfg = mt_model_config(m);
    int T = rows->T;
    int64_t n = rows->n_rows < max_rows ? rows->n_rows : max_rows;
    if (n <= 0) return mt_error_set(err, MT_ERR_INVALID, "thresholds.experts: no training rows to calibrate on");
    mt_workspace *ws;
    MT_TRY(mt_workspace_init(&ws, m, 1, T, false, ad ? ad->max_rank : 0, err));
    float *share = mt_xmalloc((size_t)cfg->n_layers * (size_t)T * sizeof(float));
    mt_batch_buf buf;
    mt_batch_buf_init(&buf, 1, T);
    mt_expert_shares s;
    mt_expert_shares_init(&s);
    mt_status st = MT_OK;
    for (int64_t i = 0; i < n && st == MT_OK; i++) {
        int64_t row = i * rows->n_rows / n; /* the rows mt_dap_from_model measures */
        mt_batch_buf_fill(&buf, rows, &row, 1);
        mt_batch b = mt_batch_buf_view(&buf);
        mt_forward_opts fo = {.adapter = ad, .topk_share_out = share};
        mt_forward_result fr;
        st = mt_model_forward(m, ws, &b, &fo, &fr, err);
        if (st == MT_OK) mt_expert_shares_add(&s, cfg, share, buf.targets, T);
    }
    if (st == MT_OK) st = mt_expert_shares_median(&s, threshold, err);
    if (st == MT_OK && n_shares) *n_shares = (int64_t)s.n;
    mt_expert_shares_free(&s);
    mt_batch_buf_free(&buf);
    free(share);
    mt_workspace_free(ws);
    return st;
}

/* ---- data ---- */


static mt_status record_sources(mt_run *run, const mt_recipe_list *paths, const mt_data_source *src,
                                const mt_docs *docs, const char *split, mt_error *err) {
    if (!run->store) return MT_OK;
    for (size_t i = 0; i < paths->n; i++) {
        mt_store_dataset_info info = {.path = src[i].path,
                                      .sha256 = src[i].sha256,
                                      .format = mt_data_format_name(src[i].format),
                                      .n_docs = paths->n == 1 ? docs->n_docs : -1,
                                      .n_tokens = paths->n == 1 ? docs->n_tokens : -1,
                                      .run_id = run->run_id,
                                      .split = split};
        int64_t id;
        MT_TRY(mt_store_dataset_add(run->store, &info, &id, err));
    }
    return MT_OK;
}

mt_status mt_run_load_docs(mt_run *run, mt_error *err) {
    const mt_recipe *r = run->r;
    char tok_hash[65];
    MT_TRY(mt_tokenizer_file_hash(r->model.tokenizer, tok_hash, err));
    mt_data_source *src = mt_xcalloc(r->data.train.n + 1, sizeof *src);
    mt_docs all = {0};
    mt_status st = mt_data_load(&r->data.train, r->data.format, r->data.mask_prompt, run->tok, tok_hash,
                                r->data.cache_dir, &all, src, err);
    if (st == MT_OK) {
        int cached = 0;
        for (size_t i = 0; i < r->data.train.n; i++) cached += src[i].from_cache;
        mt_run_note(run->opts, "data: %lld documents, %lld tokens%s", (long long)all.n_docs, (long long)all.n_tokens,
             cached ? " (tokenized data from the cache)" : "");
    }
    if (st == MT_OK && r->data.eval.n == 0 && r->data.eval_split > 0) {
        mt_docs_split(&all, r->data.eval_split, (uint64_t)r->train.seed, &run->train_docs, &run->eval_docs);
        mt_docs_free(&all);
    } else if (st == MT_OK) {
        run->train_docs = all;
        if (r->data.eval.n) {
            mt_data_source *esrc = mt_xcalloc(r->data.eval.n, sizeof *esrc);
            st = mt_data_load(&r->data.eval, r->data.format, r->data.mask_prompt, run->tok, tok_hash,
                              r->data.cache_dir, &run->eval_docs, esrc, err);
            if (st == MT_OK) st = record_sources(run, &r->data.eval, esrc, &run->eval_docs, "eval", err);
            free(esrc);
        }
    } else {
        mt_docs_free(&all);
    }
    if (st == MT_OK) st = record_sources(run, &r->data.train, src, &run->train_docs, "train", err);
    free(src);
    MT_TRY(st);
    int32_t pad = mt_tokenizer_eos_id(run->tok);
    if (pad < 0) pad = 0;
    MT_TRY(mt_rows_build(&run->train_docs, run->T, r->data.packing, pad, &run->train_rows, err));
    if (run->eval_docs.n_docs > 0)
        MT_TRY(mt_rows_build(&run->eval_docs, run->T, r->data.packing, pad, &run->eval_rows, err));
    mt_run_note(run->opts, "rows of %d tokens: %lld train, %lld held out", run->T, (long long)run->train_rows.n_rows,
         (long long)run->eval_rows.n_rows);
    run->n_examples = run->train_rows.n_rows;
    return MT_OK;
}

/* ---- what is trained ---- */

/* adapter.from: the policy starts as an existing adapter (an SFT one before DPO). */
static mt_status load_start_adapter(mt_run *run, mt_error *err) {
    const mt_recipe *r = run->r;
    mt_lora_meta meta = {0};
    mt_status st = mt_lora_load_peft(&run->lora, run->model, r->adapter.from, &meta, err);
    free(meta.thresholds_json);
    run->from_score = meta.score;
    run->from_score_rows = meta.score_rows;
    run->from_score_cols = meta.score_cols;
    if (st != MT_OK) {
        mt_error_prefix(err, "adapter.from: ");
        return st;
    }
    if (meta.base_hash[0] && strcmp(meta.base_hash, run->base_hash) != 0)
        return mt_error_set(err, MT_ERR_INVALID,
                            "adapter.from: %s was trained on another base (content hash %.12s…, this base %.12s…)",
                            r->adapter.from, meta.base_hash, run->base_hash);
    MT_TRY(mt_lora_alloc_grads(run->lora, err));
    mt_lora_summary s;
    mt_lora_get_summary(run->lora, &s);
    mt_run_note(run->opts, "LoRA from %s: %d modules, %lld trainable parameters", r->adapter.from, s.n_modules,
                (long long)s.n_params);
    char *from = mt_json_quote(r->adapter.from);
    snprintf(run->trained_json, sizeof run->trained_json,
             "{\"type\":\"lora\",\"from\":%s,\"modules\":%d,\"params\":%lld,\"base_params\":%lld}", from,
             s.n_modules, (long long)s.n_params, (long long)s.base_params);
    free(from);
    int n = mt_lora_tensor_count(run->lora);
    for (int i = 0; i < n; i++) {
        mt_lora_tensor *t = mt_lora_tensor_at(run->lora, i);
        mt_run_add_trainable(run, t->name, t->data, t->grad, t->numel, true, 1.0);
    }
    return MT_OK;
}

static mt_status attach_lora(mt_run *run, mt_error *err) {
    const mt_recipe *r = run->r;
    if (r->adapter.from) return load_start_adapter(run, err);
    mt_lora_config c;
    mt_lora_config_default(&c);
    c.r = r->adapter.r;
    c.alpha = (float)r->adapter.alpha;
    c.dropout = (float)r->adapter.dropout;
    c.use_rslora = r->adapter.use_rslora;
    c.init = r->adapter.init == MT_RECIPE_LORA_INIT_GAUSSIAN ? MT_LORA_INIT_GAUSSIAN : MT_LORA_INIT_DEFAULT;
    c.seed = (uint64_t)r->train.seed;
    c.targets = (const char *const *)r->adapter.targets.items;
    c.n_targets = (int)r->adapter.targets.n;
    c.exclude = (const char *const *)r->adapter.exclude.items;
    c.n_exclude = (int)r->adapter.exclude.n;
    int nr = (int)r->adapter.rank_pattern.n, na = (int)r->adapter.alpha_pattern.n;
    int *ranks = mt_xcalloc((size_t)nr + 1, sizeof *ranks);
    float *alphas = mt_xcalloc((size_t)na + 1, sizeof *alphas);
    for (int i = 0; i < nr; i++) ranks[i] = (int)r->adapter.rank_pattern.values[i];
    for (int i = 0; i < na; i++) alphas[i] = (float)r->adapter.alpha_pattern.values[i];
    c.rank_keys = (const char *const *)r->adapter.rank_pattern.patterns;
    c.rank_values = ranks;
    c.n_rank = nr;
    c.alpha_keys = (const char *const *)r->adapter.alpha_pattern.patterns;
    c.alpha_values = alphas;
    c.n_alpha = na;
    mt_status st = mt_lora_attach(&run->lora, run->model, &c, err);
    free(ranks);
    free(alphas);
    if (st != MT_OK) {
        mt_error_prefix(err, "adapter.targets: ");
        return st;
    }
    mt_lora_summary s;
    mt_lora_get_summary(run->lora, &s);
    char by_kind[600] = "";
    size_t off = 0;
    for (int k = 0; k < MT_LINEAR_KIND_COUNT; k++)
        if (s.modules[k] && off < sizeof by_kind)
            off += (size_t)snprintf(by_kind + off, sizeof by_kind - off, "%s%s %d (%lld params)", off ? ", " : "",
                                    mt_linear_kind_name((mt_linear_kind)k), s.modules[k], (long long)s.params[k]);
    mt_run_note(run->opts, "LoRA r=%d alpha=%g%s on %d modules: %s; %lld trainable parameters = %.3f%% of %lld", c.r,
         (double)c.alpha, c.use_rslora ? " (rsLoRA)" : "", s.n_modules, by_kind, (long long)s.n_params,
         100.0 * (double)s.n_params / (double)(s.base_params ? s.base_params : 1), (long long)s.base_params);
    off = (size_t)snprintf(run->trained_json, sizeof run->trained_json,
                           "{\"type\":\"lora\",\"r\":%d,\"alpha\":%g,\"rslora\":%s,\"modules\":%d,\"params\":%lld,"
                           "\"base_params\":%lld,\"by_kind\":{",
                           c.r, (double)c.alpha, c.use_rslora ? "true" : "false", s.n_modules, (long long)s.n_params,
                           (long long)s.base_params);
    for (int k = 0, first = 1; k < MT_LINEAR_KIND_COUNT && off < sizeof run->trained_json; k++)
        if (s.modules[k]) {
            off += (size_t)snprintf(run->trained_json + off, sizeof run->trained_json - off,
                                    "%s\"%s\":{\"modules\":%d,\"params\":%lld}", first ? "" : ",",
                                    mt_linear_kind_name((mt_linear_kind)k), s.modules[k], (long long)s.params[k]);
            first = 0;
        }
    if (off < sizeof run->trained_json) snprintf(run->trained_json + off, sizeof run->trained_json - off, "}}");
    int n = mt_lora_tensor_count(run->lora);
    for (int i = 0; i < n; i++) {
        mt_lora_tensor *t = mt_lora_tensor_at(run->lora, i);
        mt_run_add_trainable(run, t->name, t->data, t->grad, t->numel, true, 1.0);
    }
    return MT_OK;
}

static mt_status require_all(mt_run *run, mt_error *err) {
    int n = mt_model_param_count(run->model), k = 0;
    int64_t params = 0;
    for (int i = 0; i < n; i++) {
        mt_param *p = mt_model_param(run->model, i);
        /* DeepSeek-V3's routing bias is a buffer updated by load statistics, not by gradients */
        if (strstr(p->name, "e_score_correction_bias")) continue;
        MT_TRY(mt_model_require_grad(run->model, p, err));
        mt_run_add_trainable(run, p->name, p->data, p->grad, p->numel, p->ndim >= 2, 1.0);
        k++;
        params += p->numel;
    }
    mt_run_note(run->opts, "full fine-tuning: %d tensors, %lld parameters", k, (long long)params);
    snprintf(run->trained_json, sizeof run->trained_json, "{\"type\":\"full\",\"tensors\":%d,\"params\":%lld}", k,
             (long long)params);
    return MT_OK;
}

/* ---- the store record ---- */

static mt_status begin_record(mt_run *run, bool resuming, mt_error *err) {
    const mt_recipe *r = run->r;
    if (run->opts->no_store) return MT_OK;
    MT_TRY(mt_store_open(&run->store, r->output.store, true, err));
    if (resuming) {
        run->run_id = run->st.run_id;
        if (run->run_id > 0) {
            MT_TRY(mt_store_run_resume(run->store, run->run_id, err));
            char d[200];
            snprintf(d, sizeof d, "{\"step\":%lld}", (long long)run->st.step);
            MT_TRY(mt_store_log_event(run->store, run->run_id, run->st.step, "resume", d, err));
        }
        return MT_OK;
    }
    char *text = NULL;
    if (run->opts->recipe_path) MT_TRY(mt_read_file(run->opts->recipe_path, &text, NULL, err));
    if (!text) text = mt_recipe_dump_yaml(r, NULL);
    char *json = mt_recipe_to_json(r);
    char sha[65];
    mt_recipe_hash(r, sha);
    mt_store_run_info info = {.name = r->name,
                              .method = mt_recipe_method_name(r->method),
                              .recipe_text = text,
                              .recipe_sha256 = sha,
                              .base_path = r->model.path,
                              .base_hash = run->base_hash,
                              .seed = (uint64_t)r->train.seed,
                              .config_json = json};
    mt_status st = mt_store_run_begin(run->store, &info, &run->run_id, err);
    free(text);
    free(json);
    return st;
}

/* ---- open / close ---- */

static mt_status resolve_steps(mt_run *run, mt_error *err) {
    const mt_recipe *r = run->r;
    int64_t per_step = (int64_t)r->train.micro_batch * r->train.grad_accum;
    if (r->train.steps != MT_RECIPE_UNSET)
        run->total_steps = r->train.steps;
    else
        run->total_steps = (int64_t)ceil(r->train.epochs * (double)run->n_examples / (double)per_step);
    if (run->total_steps < 1 || run->n_examples < 1)
        return mt_error_set(err, MT_ERR_INVALID, "train: %lld training examples make no whole step",
                            (long long)run->n_examples);
    run->warmup = r->train.warmup_steps != MT_RECIPE_UNSET ? r->train.warmup_steps
                                                           : (int64_t)ceil(r->train.warmup_ratio * (double)run->total_steps);
    run->aux_coef = r->train.router_aux_coef;
    if (run->aux_coef == MT_RECIPE_AUTO) run->aux_coef = mt_model_config(run->model)->router_aux_loss_coef;
    return MT_OK;
}

/* thresholds.experts (resumed runs too: it is not in the checkpoint): a number is the recipe's,
 * auto is calibrated after training (mt_run_calibrate_experts). */
static mt_status experts_setting(mt_run *run, mt_error *err) {
    const mt_recipe *r = run->r;
    if (r->thresholds.experts == 0) return MT_OK;
    int n_moe = 0;
    const mt_config *cfg = mt_model_config(run->model);
    for (int l = 0; l < cfg->n_layers; l++) n_moe += cfg->layer_is_moe[l];
    if (n_moe == 0)
        return mt_error_set(err, MT_ERR_INVALID, "thresholds.experts: %s, but the model has no MoE layer",
                            r->thresholds.experts == MT_RECIPE_AUTO ? "auto" : "a number");
    if (r->thresholds.experts != MT_RECIPE_AUTO) run->experts_threshold = r->thresholds.experts;
    return MT_OK;
}

static mt_status thresholds(mt_run *run, mt_error *err) {
    const mt_recipe *r = run->r;

    if (r->thresholds.dap != MT_RECIPE_AUTO) {
        run->st.dap_threshold = r->thresholds.dap;
        run->st.mean_entropy = -1;
    } else {
        double thr, ent;
        int64_t n;
        double t0 = mt_now_seconds();
        MT_TRY(mt_dap_from_model(run->model, &run->train_rows, DAP_MAX_ROWS, r->thresholds.base,
                                 r->thresholds.max_entropy, &thr, &ent, &n, err));
        run->st.dap_threshold = thr;
        run->st.mean_entropy = ent;
        mt_run_note(run->opts, "thresholds: mean predictive entropy %.3f bits over %lld rows -> dap_threshold %.4f (%.1fs)",
             ent, (long long)n, thr, mt_now_seconds() - t0);
    }
    return MT_OK;
}

static void format_thresholds(mt_run *run) {
    const mt_recipe *r = run->r;
    char ent[64] = "null", exp[96] = "";
    if (run->st.mean_entropy >= 0) snprintf(ent, sizeof ent, "%.17g", run->st.mean_entropy);
    /* "experts" is the key the engine, eval and generate read (docs/attention-pruning.md) */
    if (run->experts_threshold > 0)
        snprintf(exp, sizeof exp, ",\"experts\":%.17g,\"experts_source\":\"%s\"", run->experts_threshold,
                 r->thresholds.experts == MT_RECIPE_AUTO ? "auto" : "recipe");
    snprintf(run->thresholds_json, sizeof run->thresholds_json,
             "{\"dap_threshold\":%.17g,\"mean_entropy_bits\":%s,\"base\":%.17g,\"max_entropy_bits\":%.17g,"
             "\"source\":\"%s\"%s}",
             run->st.dap_threshold, ent, r->thresholds.base, r->thresholds.max_entropy,
             r->thresholds.dap == MT_RECIPE_AUTO ? "auto" : "recipe", exp);
}

mt_status mt_run_calibrate_experts(mt_run *run, mt_error *err) {
    if (run->r->thresholds.experts != MT_RECIPE_AUTO) return MT_OK;
    double p, t0 = mt_now_seconds();
    int64_t n;
    const mt_adapter *ad = run->lora ? mt_lora_adapter(run->lora) : NULL;
    MT_TRY(mt_experts_from_model(run->model, ad, &run->train_rows, DAP_MAX_ROWS, &p, &n, err));
    run->experts_threshold = p;
    format_thresholds(run);
    mt_run_note(run->opts,
                "thresholds: median top-%d router share %.4f over %lld (token, MoE layer) pairs of the trained model "
                "-> experts %.4f (%.1fs)",
                mt_model_config(run->model)->top_k, p, (long long)n, p, mt_now_seconds() - t0);
    if (!run->store) return MT_OK;
    MT_TRY(mt_store_log_event(run->store, run->run_id, run->st.step, "thresholds", run->thresholds_json, err));
    mt_metric m[] = {{"experts_threshold", p}};
    return mt_store_log_metrics(run->store, run->run_id, run->st.step, m, 1, err);
}

static mt_status setup(mt_run *run, mt_train_result *res, mt_error *err) {
    const mt_recipe *r = run->r;
    const mt_train_opts *o = run->opts;
    if (r->train.device != MT_RECIPE_DEVICE_CPU)
        return mt_error_set(err, MT_ERR_UNSUPPORTED,
                            "train.device: cuda: the CUDA backend manages devices only (memory, transfers, cuBLAS) "
                            "and has no compute op yet; train with train.device: cpu");
    run->T = r->data.max_seq_len;
    if (run->n_ranks > r->train.grad_accum)
        return mt_error_set(err, MT_ERR_INVALID,
                            "train.grad_accum is %d but %d ranks share each step's micro-batches: use at most %d ranks "
                            "or raise train.grad_accum (the global batch is micro_batch x grad_accum rows)",
                            r->train.grad_accum, run->n_ranks, r->train.grad_accum);
    if (run->rank == 0) MT_TRY(mt_mkdirs(r->output.dir, err));
    MT_TRY(mt_backend_init(&run->be, MT_BACKEND_CPU, r->train.threads, err));
    MT_TRY(mt_tokenizer_load(&run->tok, r->model.tokenizer, err));
    double t0 = mt_now_seconds();
    MT_TRY(mt_model_load(&run->model, r->model.path, run->be, err));
    /* the hash identifies the base as stored; quantising changes its values, not its identity */
    mt_model_content_hash(run->model, run->base_hash);
    if (r->model.quantize == MT_RECIPE_QUANT_INT8) {
        MT_TRY(mt_model_quantize(run->model, MT_QUANT_INT8, 0, err));
        mt_run_note(o, "model: frozen linear weights quantised to int8 (groups of %d)", MT_QUANT_GROUP_DEFAULT);
    }
    int64_t active;
    int64_t params = mt_config_param_count(mt_model_config(run->model), &active);
    mt_run_note(o, "model: %s (%s, %.2fM parameters, %.2fM active per token) loaded in %.1fs", r->model.path,
         mt_family_name(mt_model_config(run->model)->family), params / 1e6, active / 1e6, mt_now_seconds() - t0);
    if (mt_tokenizer_vocab_size(run->tok) > mt_model_config(run->model)->vocab_size)
        return mt_error_set(err, MT_ERR_INVALID, "%s: the tokenizer has %d tokens, the model's vocabulary only %d",
                            r->model.tokenizer, mt_tokenizer_vocab_size(run->tok),
                            mt_model_config(run->model)->vocab_size);

    /* Resume state first: it decides whether a new store record is made. */
    bool resuming = o->resume || r->train.resume;
    char ckpt[4096] = "";
    if (resuming) {
        mt_status fs = mt_ckpt_find_latest(r->output.dir, ckpt, sizeof ckpt, err);
        if (fs == MT_ERR_NOT_FOUND)
            return mt_error_set(err, MT_ERR_NOT_FOUND, "--resume: no checkpoint under %s/checkpoints", r->output.dir);
        MT_TRY(fs);
    } else if (!o->no_checkpoints) {
        /* a new run must not mix its checkpoints with an earlier run's: --resume would pick them */
        mt_error ignore = {0};
        if (mt_ckpt_find_latest(r->output.dir, ckpt, sizeof ckpt, &ignore) == MT_OK)
            return mt_error_set(err, MT_ERR_INVALID,
                                "%s holds checkpoints of an earlier run (%s): continue it with --resume, or "
                                "delete %s/checkpoints (or choose another output.dir) to start again",
                                r->output.dir, ckpt, r->output.dir);
        ckpt[0] = '\0';
    }
    run->obj = mt_objective_for(r->method);
    MT_ASSERT(run->obj); /* every method has its objective */
    if (run->n_ranks > 1 && !run->obj->data_parallel)
        return mt_error_set(err, MT_ERR_UNSUPPORTED,
                            "method: %s does not split its steps over data-parallel ranks yet: run it on one rank "
                            "(without mpirun, or -np 1)",
                            mt_recipe_method_name(r->method));
    /* rank 0 reads the data first, so that the others find its token cache written and only read */
    if (run->rank > 0) MT_TRY(mt_dist_barrier(run->dist, err));
    MT_TRY(run->obj->open_data(run, err));
    if (run->rank == 0) MT_TRY(mt_dist_barrier(run->dist, err));
    MT_TRY(resolve_steps(run, err));
    res->total_steps = run->total_steps;
    run->order = mt_xcalloc((size_t)run->n_examples, sizeof *run->order);
    run->step_idx = mt_xcalloc((size_t)r->train.micro_batch * r->train.grad_accum, sizeof *run->step_idx);

    if (!resuming) MT_TRY(thresholds(run, err)); /* the base alone: before any adapter exists */
    MT_TRY(experts_setting(run, err));
    if (r->adapter.type == MT_RECIPE_ADAPTER_LORA)
        MT_TRY(attach_lora(run, err));
    else
        MT_TRY(require_all(run, err));
    MT_TRY(run->obj->open_model(run, err));
    MT_TRY(mt_optim_init(&run->optim, run->be, run->trainables, run->n_trainables, err));
    res->trainable_params = run->optim.n_params;
    if (run->n_ranks > 1) {
        run->dist_bucket_cap = (size_t)run->optim.n_params < DIST_BUCKET_FLOATS ? (size_t)run->optim.n_params
                                                                                 : DIST_BUCKET_FLOATS;
        if (run->dist_bucket_cap == 0) run->dist_bucket_cap = 1;
        run->dist_bucket = mt_xmalloc(run->dist_bucket_cap * sizeof(float));
        mt_run_note(o, "data parallel: %d ranks, each %d of the %d micro-batches of a step; %.1f MB of gradients "
                       "summed per step in %zu all-reduce(s)",
                    run->n_ranks, (r->train.grad_accum + run->n_ranks - 1) / run->n_ranks, r->train.grad_accum,
                    (double)run->optim.n_params * 4 / 1e6,
                    ((size_t)run->optim.n_params + run->dist_bucket_cap - 1) / run->dist_bucket_cap);
    }

    if (resuming) {
        MT_TRY(mt_ckpt_load(ckpt, &run->optim, &run->st, err));
        char sha[65];
        mt_recipe_hash(r, sha);
        if (strcmp(sha, run->st.recipe_sha256) != 0)
            mt_run_note(o, "warning: the recipe changed since the checkpoint was written; continuing with the new one");
        if (run->st.threads != mt_backend_threads(run->be))
            mt_run_note(o, "warning: checkpoint written with %d threads, resuming with %d: the loss curve will not be "
                    "bit-identical to an uninterrupted run",
                 run->st.threads, mt_backend_threads(run->be));
        if (run->st.ranks != run->n_ranks)
            mt_run_note(o, "checkpoint written by %d rank(s), resuming on %d: the loss curve continues to fp32 "
                           "tolerance, not bit for bit (gradients are summed in another order)",
                        run->st.ranks, run->n_ranks);
        run->st.ranks = run->n_ranks;
        mt_run_note(o, "resuming from %s (step %lld of %lld)", ckpt, (long long)run->st.step, (long long)run->total_steps);
    } else {
        run->st.ranks = run->n_ranks;
        run->st.threads = mt_backend_threads(run->be);
        mt_recipe_hash(r, run->st.recipe_sha256);
    }
    res->dap_threshold = run->st.dap_threshold;
    res->mean_entropy = run->st.mean_entropy >= 0 ? run->st.mean_entropy : NAN;
    format_thresholds(run);
    mt_rows_epoch_order(run->n_examples, (uint64_t)r->train.seed, run->st.epoch, r->data.shuffle, run->order);

    MT_TRY(begin_record(run, resuming, err));
    res->run_id = run->run_id;
    run->st.run_id = run->run_id;
    if (run->store && !resuming) {
        MT_TRY(mt_store_log_event(run->store, run->run_id, 0, "thresholds", run->thresholds_json, err));
        MT_TRY(mt_store_log_event(run->store, run->run_id, 0, "trainable", run->trained_json, err));
        mt_metric m[] = {{"dap_threshold", run->st.dap_threshold}, {"data_mean_entropy", run->st.mean_entropy}};
        MT_TRY(mt_store_log_metrics(run->store, run->run_id, 0, m, run->st.mean_entropy >= 0 ? 2 : 1, err));
        if (run->experts_threshold > 0) {
            mt_metric me[] = {{"experts_threshold", run->experts_threshold}};
            MT_TRY(mt_store_log_metrics(run->store, run->run_id, 0, me, 1, err));
        }
    }

    static const char *const recompute[] = {"", " (checkpointing: layers)", " (checkpointing: selective)"};
    mt_run_note(o, "training: %lld steps of %d x %d rows x %d tokens, lr %g, %s schedule, warmup %lld; activations %.1f MB%s",
         (long long)run->total_steps, r->train.grad_accum, r->train.micro_batch, run->T, r->train.lr,
         r->train.schedule == MT_RECIPE_SCHEDULE_COSINE   ? "cosine"
         : r->train.schedule == MT_RECIPE_SCHEDULE_LINEAR ? "linear"
                                                          : "constant",
         (long long)run->warmup, run->ws ? (double)mt_workspace_bytes(run->ws) / 1e6 : 0.0,
         recompute[r->train.checkpointing]);
    return MT_OK;
}

mt_status mt_run_open(mt_run *run, const mt_recipe *r, const mt_train_opts *opts, mt_train_result *res,
                      mt_error *err) {
    memset(run, 0, sizeof *run);
    run->r = r;
    run->opts = opts;
    run->dist = opts->dist;
    run->rank = mt_dist_rank(opts->dist);
    run->n_ranks = mt_dist_size(opts->dist);
    if (run->rank > 0) {
        /* one record of the run: rank 0 writes the store, checkpoints and the export, and talks */
        run->rank_opts = *opts;
        run->rank_opts.no_store = run->rank_opts.no_checkpoints = run->rank_opts.no_export = true;
        run->rank_opts.on_note = NULL;
        run->rank_opts.on_progress = NULL;
        run->opts = &run->rank_opts;
    }
    return setup(run, res, err);
}

void mt_run_close(mt_run *run) {
    if (run->obj && run->obj->close) run->obj->close(run);
    mt_batch_buf_free(&run->eval_buf);
    mt_batch_buf_free(&run->buf);
    mt_workspace_free(run->eval_ws);
    mt_workspace_free(run->ws);
    mt_optim_free(&run->optim);
    free(run->trainables);
    mt_lora_free(run->lora);
    mt_rows_free(&run->train_rows);
    mt_rows_free(&run->eval_rows);
    mt_docs_free(&run->train_docs);
    mt_docs_free(&run->eval_docs);
    free(run->order);
    free(run->step_idx);
    free(run->from_score);
    free(run->dist_bucket);
    mt_model_free(run->model);
    mt_tokenizer_free(run->tok);
    mt_store_close(run->store);
    if (run->be) mt_backend_free(run->be);
    memset(run, 0, sizeof *run);
}

void mt_run_add_trainable(mt_run *run, const char *name, float *data, float *grad, int64_t numel, bool decay,
                          double lr_scale) {
    run->trainables = mt_xrealloc(run->trainables, (size_t)(run->n_trainables + 1) * sizeof *run->trainables);
    run->trainables[run->n_trainables++] =
        (mt_trainable){.name = name, .data = data, .grad = grad, .numel = numel, .decay = decay, .lr_scale = lr_scale};
}
