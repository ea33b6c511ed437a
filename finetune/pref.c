/* pref.c — the preference objectives on pairs: the DPO family against a reference (the base
 * with the policy's adapter switched off, or a frozen adapter; log-probs computed every step
 * or cached per pair in the store), and the reference-free SimPO and ORPO. Each micro-batch
 * is one pass over B chosen rows followed by their B rejected rows; the losses of rl/ give the
 * gradient with respect to each row's summed (or averaged) completion log-prob, which becomes
 * ∂L/∂(token loss) for the model's backward. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "objective-impl.h"
#include "pairs-impl.h"
#include "peft/lora.h"
#include "rl/rl.h"

typedef struct pref_refs {
    float *chosen, *rejected; /* [n] summed completion log-probs under the reference */
} pref_refs;

typedef struct pref {
    mt_recipe_method method;
    mt_dpo_config dpo;
    mt_simpo_config simpo;
    mt_orpo_config orpo;
    mt_pair_set train, eval;
    bool needs_ref;
    mt_lora *ref_lora;          /* reference.model: adapter (frozen, no gradient memory) */
    char ref_adapter_hash[65];  /* "" for the base */
    bool cached;                /* refs below are complete: no reference pass in the steps */
    pref_refs train_ref, eval_ref;
    int64_t ref_hits, ref_computed;
    mt_workspace *ews;          /* evaluation / reference passes without activations */
    mt_batch_buf buf;           /* 2B rows */
    int64_t *rowidx;            /* [2B] */
    float *tok_logp, *d_tok;    /* [2B·T] */
    float *sums, *counts, *d_sum, *d_avg; /* [2B] */
    float *lm_mean;             /* [H] mean LM-head row: the mean logit over the vocabulary is lm_mean · h */
    void *scratch;
} pref;

static const mt_adapter *ref_adapter(const pref *p) { return p->ref_lora ? mt_lora_adapter(p->ref_lora) : NULL; }

/* ---- configuration from the recipe ---- */

static mt_status configure(pref *p, const mt_recipe *r, mt_error *err) {
    p->method = r->method;
    if (r->method == MT_RECIPE_METHOD_DPO) {
        mt_dpo_config *c = &p->dpo;
        mt_dpo_config_default(c);
        c->n_terms = (int)r->pref.loss_type.n;
        if (c->n_terms > MT_DPO_MAX_TERMS)
            return mt_error_set(err, MT_ERR_INVALID, "pref.loss_type: at most %d losses", MT_DPO_MAX_TERMS);
        if (r->pref.loss_weights.n && r->pref.loss_weights.n != r->pref.loss_type.n)
            return mt_error_set(err, MT_ERR_INVALID, "pref.loss_weights: %zu weights for %zu loss types",
                                r->pref.loss_weights.n, r->pref.loss_type.n);
        for (int i = 0; i < c->n_terms; i++) {
            MT_TRY(mt_dpo_loss_parse(r->pref.loss_type.items[i], &c->types[i], err));
            c->weights[i] = r->pref.loss_weights.n ? r->pref.loss_weights.values[i] : 1.0;
        }
        c->beta = r->pref.beta;
        c->label_smoothing = r->pref.label_smoothing;
        c->discopop_tau = r->pref.discopop_tau;
        c->f_divergence = (mt_dpo_fdiv)r->pref.f_divergence;
        c->f_alpha = r->pref.f_alpha;
        mt_status st = mt_dpo_config_check(c, err);
        if (st != MT_OK) mt_error_prefix(err, "pref: ");
        return st;
    }
    if (r->method == MT_RECIPE_METHOD_SIMPO) {
        mt_simpo_config_default(&p->simpo);
        p->simpo.beta = r->pref.beta;
        p->simpo.gamma = r->pref.simpo_gamma;
        p->simpo.label_smoothing = r->pref.label_smoothing;
        p->simpo.cpo_alpha = r->pref.cpo_alpha;
        return MT_OK;
    }
    p->orpo.beta = r->pref.beta;
    return MT_OK;
}

static mt_status pref_open_data(mt_run *run, mt_error *err) {
    pref *p = mt_xcalloc(1, sizeof *p);
    run->obj_state = p;
    const mt_recipe *r = run->r;
    run->T = r->data.max_seq_len;
    MT_TRY(configure(p, r, err));
    p->needs_ref = r->method == MT_RECIPE_METHOD_DPO;
    bool orpo = r->method == MT_RECIPE_METHOD_ORPO;
    MT_TRY(mt_pairs_load_run(run, false, orpo, &p->train, err));
    MT_TRY(mt_pairs_load_run(run, true, orpo, &p->eval, err));
    if (p->train.n == 0)
        return mt_error_set(err, MT_ERR_INVALID, "%s: no training pairs",
                            r->data.pairs ? "data.pairs" : "data.train");
    mt_run_note(run->opts, "pairs: %lld train, %lld held out%s; %lld truncated to %d tokens", (long long)p->train.n,
                (long long)p->eval.n, r->data.pairs ? " (from the store)" : "",
                (long long)(p->train.n_truncated + p->eval.n_truncated), run->T);
    /* the thresholds and the SFT-style bookkeeping read the rows: chosen and rejected alike */
    run->train_rows = p->train.rows;
    run->n_examples = p->train.n;
    return MT_OK;
}

/* ---- log-probs of rows ---- */

/* Per-row summed and averaged completion log-probs from the last forward's token losses. */
static void row_logps(pref *p, const mt_forward_result *fr, const uint8_t *cmask, int rows, int T, double ld_alpha) {
    size_t n = (size_t)rows * T;
    for (size_t t = 0; t < n; t++) p->tok_logp[t] = cmask[t] ? -fr->token_loss[t] : 0.0f;
    mt_rl_seq_logps((size_t)rows, (size_t)T, p->tok_logp, cmask, p->sums, p->counts);
    if (ld_alpha >= 0) mt_rl_pair_logps_ld((size_t)rows / 2, (size_t)T, p->tok_logp, cmask, ld_alpha, p->sums);
}

/* Fills the batch with pairs pidx[0..n) of set s: rows 0..B-1 chosen, B..2B-1 rejected
 * (missing pairs are padding), and the matching completion mask into cm. */
static void fill_pairs(pref *p, const mt_pair_set *s, const int64_t *pidx, int n, int B, uint8_t *cm, int T) {
    mt_pairs_fill_batch(&p->buf, s, pidx, n, B, p->rowidx);
    for (int b = 0; b < 2 * B; b++) {
        int64_t row = p->rowidx[b];
        if (row >= 0)
            memcpy(cm + (size_t)b * T, s->cmask + row * T, (size_t)T);
        else
            memset(cm + (size_t)b * T, 0, (size_t)T);
    }
}

/* The reference's summed log-probs of pairs pidx[0..n): forward passes without the policy. */
static mt_status ref_pass(mt_run *run, pref *p, const mt_pair_set *s, const int64_t *pidx, int n, uint8_t *cm,
                          float *out_c, float *out_r, mt_error *err) {
    int B = run->r->train.micro_batch, T = run->T;
    fill_pairs(p, s, pidx, n, B, cm, T);
    mt_batch batch = mt_batch_buf_view(&p->buf);
    mt_forward_opts fo = {.adapter = ref_adapter(p)};
    mt_forward_result fr;
    MT_TRY(mt_model_forward(run->model, p->ews, &batch, &fo, &fr, err));
    double ld = run->r->pref.ld_alpha == MT_RECIPE_UNSET ? -1 : run->r->pref.ld_alpha;
    row_logps(p, &fr, cm, 2 * B, T, ld);
    for (int b = 0; b < n; b++) {
        out_c[b] = p->sums[b];
        out_r[b] = p->sums[B + b];
    }
    return MT_OK;
}

/* ---- the reference cache ---- */

static void ref_key(const mt_run *run, const pref *p, char *tok_hash, char *trunc, size_t cap, mt_ref_key *k) {
    mt_pairs_truncation_key(run->r, run->T, trunc, cap);
    if (run->r->pref.ld_alpha != MT_RECIPE_UNSET) {
        size_t n = strlen(trunc);
        snprintf(trunc + n, cap - n, ";ld_alpha=%.17g", run->r->pref.ld_alpha);
    }
    *k = (mt_ref_key){.base_hash = run->base_hash,
                      .adapter_hash = p->ref_adapter_hash,
                      .tokenizer_hash = tok_hash,
                      .truncation = trunc};
}

/* Every pair of set s gets its reference log-probs: from the store where it has them, computed
 * (and stored) where it does not. */
static mt_status fill_refs(mt_run *run, pref *p, mt_store *store, const mt_ref_key *key, const mt_pair_set *s,
                           pref_refs *refs, mt_error *err) {
    size_t n = (size_t)s->n;
    refs->chosen = mt_xcalloc(n + 1, sizeof(float));
    refs->rejected = mt_xcalloc(n + 1, sizeof(float));
    if (!n) return MT_OK;
    const char **hashes = mt_xcalloc(n, sizeof *hashes);
    for (size_t i = 0; i < n; i++) hashes[i] = s->hash[i];
    mt_ref_logps *v = mt_xcalloc(n, sizeof *v);
    bool *found = mt_xcalloc(n, sizeof *found);
    size_t n_found = 0;
    mt_status st = MT_OK;
    if (store) st = mt_store_ref_logps_get(store, key, hashes, n, v, found, &n_found, err);
    int B = run->r->train.micro_batch;
    int64_t *miss = mt_xcalloc(n, sizeof *miss);
    size_t n_miss = 0;
    for (size_t i = 0; i < n; i++)
        if (found[i]) {
            refs->chosen[i] = (float)v[i].chosen;
            refs->rejected[i] = (float)v[i].rejected;
        } else {
            miss[n_miss++] = (int64_t)i;
        }
    uint8_t *cm = mt_xcalloc((size_t)2 * B * run->T, 1);
    float *oc = mt_xcalloc((size_t)B, sizeof(float)), *orj = mt_xcalloc((size_t)B, sizeof(float));
    for (size_t i = 0; i < n_miss && st == MT_OK; i += (size_t)B) {
        int k = (int)(n_miss - i < (size_t)B ? n_miss - i : (size_t)B);
        st = ref_pass(run, p, s, miss + i, k, cm, oc, orj, err);
        for (int b = 0; st == MT_OK && b < k; b++) {
            int64_t j = miss[i + (size_t)b];
            refs->chosen[j] = oc[b];
            refs->rejected[j] = orj[b];
            v[j] = (mt_ref_logps){.chosen = oc[b], .rejected = orj[b], .chosen_tokens = (int64_t)s->clen[2 * j],
                                  .rejected_tokens = (int64_t)s->clen[2 * j + 1]};
        }
    }
    if (st == MT_OK && store && n_miss) {
        const char **mh = mt_xcalloc(n_miss, sizeof *mh);
        mt_ref_logps *mv = mt_xcalloc(n_miss, sizeof *mv);
        for (size_t i = 0; i < n_miss; i++) {
            mh[i] = hashes[miss[i]];
            mv[i] = v[miss[i]];
        }
        st = mt_store_ref_logps_put(store, key, mh, mv, n_miss, err);
        free(mh);
        free(mv);
    }
    p->ref_hits += (int64_t)n_found;
    p->ref_computed += (int64_t)n_miss;
    free(cm);
    free(oc);
    free(orj);
    free(miss);
    free(found);
    free(v);
    free(hashes);
    return st;
}

/* The tokenizer as the cached log-probs depend on it: tokenizer.json, and the chat template in
 * tokenizer_config.json that renders conversational pairs (a template edit changes the rows). */
static mt_status tokenizer_identity(const char *dir, char out[65], mt_error *err) {
    char tj[65], cfg[65] = "", path[4200];
    MT_TRY(mt_tokenizer_file_hash(dir, tj, err));
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (!mt_path_exists(path)) {
        memcpy(out, tj, 65);
        return MT_OK;
    }
    MT_TRY(mt_sha256_file_hex(path, cfg, err));
    char both[140];
    snprintf(both, sizeof both, "%s+%s", tj, cfg);
    mt_sha256_hex(both, strlen(both), out);
    return MT_OK;
}

static mt_status precompute_refs(mt_run *run, pref *p, mt_error *err) {
    const mt_recipe *r = run->r;
    char tok_hash[65], trunc[256];
    MT_TRY(tokenizer_identity(r->model.tokenizer, tok_hash, err));
    mt_ref_key key;
    ref_key(run, p, tok_hash, trunc, sizeof trunc, &key);
    mt_store *store = NULL;
    if (!run->opts->no_store) MT_TRY(mt_store_open(&store, r->output.store, true, err));
    double t0 = mt_now_seconds();
    mt_status st = fill_refs(run, p, store, &key, &p->train, &p->train_ref, err);
    if (st == MT_OK) st = fill_refs(run, p, store, &key, &p->eval, &p->eval_ref, err);
    mt_store_close(store);
    MT_TRY(st);
    p->cached = true;
    mt_run_note(run->opts, "reference log-probs: %lld pairs from the store's cache, %lld computed (%.1fs)%s",
                (long long)p->ref_hits, (long long)p->ref_computed, mt_now_seconds() - t0,
                store ? "" : " (no store: kept for this run only)");
    return MT_OK;
}

static mt_status pref_open_model(mt_run *run, mt_error *err) {
    pref *p = run->obj_state;
    const mt_recipe *r = run->r;
    int B = r->train.micro_batch, T = run->T;
    int max_rank = run->lora ? mt_lora_max_rank(run->lora) : 0;
    if (p->needs_ref && r->reference.model == MT_RECIPE_REF_ADAPTER) {
        mt_lora_meta meta = {0};
        mt_status st = mt_lora_load_peft(&p->ref_lora, run->model, r->reference.adapter, &meta, err);
        free(meta.thresholds_json);
        if (st != MT_OK) {
            mt_error_prefix(err, "reference.adapter: ");
            return st;
        }
        if (meta.base_hash[0] && strcmp(meta.base_hash, run->base_hash) != 0)
            return mt_error_set(err, MT_ERR_INVALID, "reference.adapter: %s was trained on another base",
                                r->reference.adapter);
        char path[4200];
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", r->reference.adapter);
        MT_TRY(mt_sha256_file_hex(path, p->ref_adapter_hash, err));
        int rr = mt_lora_max_rank(p->ref_lora);
        if (rr > max_rank) max_rank = rr;
        mt_run_note(run->opts, "reference: the base with the frozen adapter %s", r->reference.adapter);
    } else if (p->needs_ref) {
        mt_run_note(run->opts, "reference: the base model (the policy's adapter switched off for its passes)");
    }
    if (p->needs_ref && r->adapter.type != MT_RECIPE_ADAPTER_LORA && !r->reference.cache)
        return mt_error_set(err, MT_ERR_INVALID,
                            "reference.cache: false with adapter.type: none: full fine-tuning changes the base "
                            "weights themselves, so no unchanged copy is left to be the reference; cache it "
                            "(reference.cache: true computes it before the first step) or train LoRA");
    MT_TRY(mt_run_train_workspace(run, 2 * B, T, max_rank, err));
    MT_TRY(mt_workspace_init(&p->ews, run->model, 2 * B, T, false, max_rank, err));
    mt_batch_buf_init(&p->buf, 2 * B, T);
    size_t n = (size_t)2 * B * T;
    p->rowidx = mt_xcalloc((size_t)2 * B, sizeof *p->rowidx);
    p->tok_logp = mt_xcalloc(n, sizeof(float));
    p->d_tok = mt_xcalloc(n, sizeof(float));
    p->sums = mt_xcalloc((size_t)2 * B, sizeof(float));
    p->counts = mt_xcalloc((size_t)2 * B, sizeof(float));
    p->d_sum = mt_xcalloc((size_t)2 * B, sizeof(float));
    p->d_avg = mt_xcalloc((size_t)2 * B, sizeof(float));
    size_t sb = p->method == MT_RECIPE_METHOD_DPO ? mt_dpo_scratch_bytes(&p->dpo, (size_t)B) : 0;
    size_t sbe = p->method == MT_RECIPE_METHOD_DPO ? mt_dpo_scratch_bytes(&p->dpo, (size_t)(p->eval.n + 1)) : 0;
    p->scratch = sb || sbe ? mt_xcalloc(1, sb > sbe ? sb : sbe) : NULL;
    /* the mean logit over the vocabulary that TRL logs is linear in the final hidden state */
    const mt_config *cfg = mt_model_config(run->model);
    mt_param *head = mt_model_find_param(run->model, "lm_head.weight");
    if (!head) head = mt_model_find_param(run->model, "model.embed_tokens.weight");
    if (head) {
        int H = cfg->hidden_size, V = cfg->vocab_size;
        float *w = mt_xmalloc((size_t)V * H * sizeof(float));
        mt_model_param_to_f32(run->model, head, w);
        p->lm_mean = mt_xcalloc((size_t)H, sizeof(float));
        for (int v = 0; v < V; v++)
            for (int h = 0; h < H; h++) p->lm_mean[h] += w[(size_t)v * H + h];
        for (int h = 0; h < H; h++) p->lm_mean[h] /= (float)V;
        free(w);
    }
    /* with the cache the reference is computed once, before any step changes the adapter */
    if (p->needs_ref && r->reference.cache) MT_TRY(precompute_refs(run, p, err));
    return MT_OK;
}

/* Mean over the rows' completion positions of the mean logit (lm_mean · h), chosen rows then
 * rejected rows of a batch of 2B rows. NaN when the final hidden states are not at hand. */
static void mean_logits(const pref *p, const float *xf, const uint8_t *cm, int B, int T, int H, double *lc,
                        double *lr) {
    *lc = *lr = NAN;
    if (!p->lm_mean || !xf) return;
    double s[2] = {0, 0};
    int64_t c[2] = {0, 0};
    for (int b = 0; b < 2 * B; b++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (!cm[i]) continue;
            const float *h = xf + i * H;
            double d = 0;
            for (int k = 0; k < H; k++) d += (double)p->lm_mean[k] * h[k];
            s[b >= B] += d;
            c[b >= B]++;
        }
    if (c[0]) *lc = s[0] / (double)c[0];
    if (c[1]) *lr = s[1] / (double)c[1];
}

/* ---- the loss of a batch of pairs ---- */

typedef struct pair_batch {
    int n;                 /* pairs */
    const float *pc, *pr;  /* policy sums (or averages) [n] */
    const float *rc, *rr;  /* reference sums [n] (dpo) */
    const float *lc, *lr;  /* completion lengths */
    double nll;            /* simpo / orpo */
    double logits_c, logits_r;
} pair_batch;

/* loss, ∂loss/∂policy (per pair) and ∂loss/∂nll; metrics into ms with TRL's names. */
static mt_status pair_loss(pref *p, const pair_batch *pb, double *loss, float *dc, float *dr, double *d_nll,
                           mt_obj_metrics *ms, mt_error *err) {
    *d_nll = 0;
    if (p->method == MT_RECIPE_METHOD_DPO) {
        mt_dpo_batch b = {.n = (size_t)pb->n, .policy_chosen = pb->pc, .policy_rejected = pb->pr,
                          .ref_chosen = pb->rc, .ref_rejected = pb->rr, .chosen_len = pb->lc,
                          .rejected_len = pb->lr, .logits_chosen = pb->logits_c, .logits_rejected = pb->logits_r};
        mt_dpo_grads g = {.policy_chosen = dc, .policy_rejected = dr};
        mt_dpo_metrics m;
        MT_TRY(mt_dpo_loss_compute(&p->dpo, &b, loss, NULL, &g, &m, p->scratch, err));
        mt_rl_metric l[MT_DPO_N_METRICS];
        mt_dpo_metrics_list(&m, l);
        for (int i = 0; i < MT_DPO_N_METRICS; i++) mt_obj_metric(ms, l[i].name, l[i].value);
        return MT_OK;
    }
    mt_pref_free_batch b = {.n = (size_t)pb->n, .chosen_avg = pb->pc, .rejected_avg = pb->pr, .nll = pb->nll,
                            .logits_chosen = pb->logits_c, .logits_rejected = pb->logits_r};
    mt_pref_free_metrics m;
    if (p->method == MT_RECIPE_METHOD_SIMPO)
        MT_TRY(mt_simpo_loss(&p->simpo, &b, loss, dc, dr, d_nll, &m, err));
    else
        MT_TRY(mt_orpo_loss(&p->orpo, &b, loss, dc, dr, d_nll, &m, err));
    mt_rl_metric l[MT_PREF_FREE_N_METRICS];
    mt_pref_free_metrics_list(&m, l);
    for (int i = 0; i < MT_PREF_FREE_N_METRICS; i++) mt_obj_metric(ms, l[i].name, l[i].value);
    return MT_OK;
}

/* Averages metric lists of several micro-batches into one (same names, same order). */
static void metrics_accumulate(mt_obj_metrics *acc, const mt_obj_metrics *m, bool first) {
    if (first) {
        *acc = *m;
        return;
    }
    for (int i = 0; i < m->n; i++)
        for (int j = 0; j < acc->n; j++)
            if (!strcmp(acc->m[j].name, m->m[i].name)) acc->m[j].value += m->m[i].value;
}

static mt_status pref_step(mt_run *run, const int64_t *idx, int n, mt_step_out *so, mt_error *err) {
    pref *p = run->obj_state;
    const mt_recipe *r = run->r;
    int B = r->train.micro_batch, ga = r->train.grad_accum, T = run->T;
    int H = mt_model_config(run->model)->hidden_size;
    MT_ASSERT(n == B * ga);
    double ld = r->pref.ld_alpha == MT_RECIPE_UNSET ? -1 : r->pref.ld_alpha;
    uint8_t *cm = mt_xcalloc((size_t)2 * B * T, 1);
    float *rc = mt_xcalloc((size_t)B, sizeof(float)), *rr = mt_xcalloc((size_t)B, sizeof(float));
    float *pc = mt_xcalloc((size_t)B, sizeof(float)), *pj = mt_xcalloc((size_t)B, sizeof(float));
    float *dc = mt_xcalloc((size_t)B, sizeof(float)), *dr = mt_xcalloc((size_t)B, sizeof(float));
    float *lc = mt_xcalloc((size_t)B, sizeof(float)), *lr = mt_xcalloc((size_t)B, sizeof(float));
    mt_run_zero_grad(run);
    double loss_sum = 0, aux_sum = 0;
    int64_t tokens = 0;
    mt_obj_metrics acc = {0};
    mt_status st = MT_OK;
    /* this rank's micro-batches (all of them alone), each weighted 1/ga of the whole step */
    for (int g = run->rank; g < ga && st == MT_OK; g += run->n_ranks) {
        const int64_t *pidx = idx + (size_t)g * B;
        if (p->needs_ref && !p->cached) {
            st = ref_pass(run, p, &p->train, pidx, B, cm, rc, rr, err);
        } else if (p->needs_ref) {
            for (int b = 0; b < B; b++) {
                rc[b] = p->train_ref.chosen[pidx[b]];
                rr[b] = p->train_ref.rejected[pidx[b]];
            }
        }
        if (st != MT_OK) break;
        fill_pairs(p, &p->train, pidx, B, B, cm, T);
        mt_batch batch = mt_batch_buf_view(&p->buf);
        mt_forward_opts fo = mt_run_forward_opts(run, g);
        mt_forward_result fr;
        st = mt_model_forward(run->model, run->ws, &batch, &fo, &fr, err);
        if (st != MT_OK) break;
        row_logps(p, &fr, cm, 2 * B, T, p->method == MT_RECIPE_METHOD_DPO ? ld : -1);
        bool avg = p->method != MT_RECIPE_METHOD_DPO;
        for (int b = 0; b < B; b++) {
            float cc = p->counts[b] > 0 ? p->counts[b] : 1, cr = p->counts[B + b] > 0 ? p->counts[B + b] : 1;
            pc[b] = avg ? p->sums[b] / cc : p->sums[b];
            pj[b] = avg ? p->sums[B + b] / cr : p->sums[B + b];
            lc[b] = p->train.clen[2 * pidx[b]];
            lr[b] = p->train.clen[2 * pidx[b] + 1];
        }
        /* the NLL term: CPO over the chosen completions, ORPO over the whole chosen rows (their
         * targets cover the prompt) */
        double nll = 0;
        int64_t nll_n = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                size_t i = (size_t)b * T + t;
                bool counts = p->method == MT_RECIPE_METHOD_ORPO ? p->buf.targets[i] != MT_IGNORE_INDEX : cm[i];
                if (counts) {
                    nll += fr.token_loss[i];
                    nll_n++;
                }
            }
        if (nll_n) nll /= (double)nll_n;
        double lgc, lgr;
        mean_logits(p, mt_workspace_hidden(run->ws, mt_model_config(run->model)->n_layers), cm, B, T, H,
                    &lgc, &lgr);
        pair_batch pb = {.n = B, .pc = pc, .pr = pj, .rc = rc, .rr = rr, .lc = lc, .lr = lr, .nll = nll,
                         .logits_c = lgc, .logits_r = lgr};
        double loss, d_nll;
        mt_obj_metrics ms = {0};
        st = pair_loss(p, &pb, &loss, dc, dr, &d_nll, &ms, err);
        if (st != MT_OK) break;
        metrics_accumulate(&acc, &ms, g == run->rank);
        /* ∂L/∂(token loss) = −∂L/∂logp, each micro-batch weighted 1/ga (the step's mean over pairs) */
        for (int b = 0; b < B; b++) {
            if (avg) {
                p->d_sum[b] = p->d_sum[B + b] = 0;
                p->d_avg[b] = dc[b];
                p->d_avg[B + b] = dr[b];
            } else {
                p->d_sum[b] = dc[b];
                p->d_sum[B + b] = dr[b];
            }
        }
        if (!avg && ld >= 0)
            mt_rl_pair_logps_ld_backward((size_t)B, (size_t)T, cm, ld, p->d_sum, p->d_tok);
        else
            mt_rl_seq_logps_backward((size_t)2 * B, (size_t)T, cm, avg ? NULL : p->d_sum, avg ? p->d_avg : NULL,
                                     p->d_tok);
        size_t nt = (size_t)2 * B * T;
        for (size_t i = 0; i < nt; i++) p->buf.dloss[i] = -p->d_tok[i] / (float)ga;
        if (nll_n && d_nll != 0)
            for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++) {
                    size_t i = (size_t)b * T + t;
                    bool counts = p->method == MT_RECIPE_METHOD_ORPO ? p->buf.targets[i] != MT_IGNORE_INDEX : cm[i];
                    if (counts) p->buf.dloss[i] += (float)(d_nll / (double)nll_n / ga);
                }
        st = mt_model_backward(run->model, run->ws, p->buf.dloss, err);
        loss_sum += loss;
        aux_sum += fr.aux_loss;
        tokens += (int64_t)2 * B * T;
    }
    free(cm);
    free(rc);
    free(rr);
    free(pc);
    free(pj);
    free(dc);
    free(dr);
    free(lc);
    free(lr);
    MT_TRY(st);
    for (int i = 0; i < acc.n; i++) acc.m[i].value /= ga;
    so->metrics = acc;
    so->loss = loss_sum / ga;
    so->aux = aux_sum / ga;
    so->n_tokens = tokens;
    mt_run_update(run, so->loss, so);
    return MT_OK;
}

/* ---- held-out pairs ---- */

static mt_status pref_eval(mt_run *run, mt_eval_out *eo, mt_error *err) {
    pref *p = run->obj_state;
    if (p->eval.n == 0) return MT_OK;
    const mt_recipe *r = run->r;
    int B = r->train.micro_batch, T = run->T;
    size_t n = (size_t)p->eval.n;
    double ld = r->pref.ld_alpha == MT_RECIPE_UNSET ? -1 : r->pref.ld_alpha;
    bool avg = p->method != MT_RECIPE_METHOD_DPO;
    float *pc = mt_xcalloc(n, sizeof(float)), *pj = mt_xcalloc(n, sizeof(float));
    float *rc = mt_xcalloc(n, sizeof(float)), *rr = mt_xcalloc(n, sizeof(float));
    float *lc = mt_xcalloc(n, sizeof(float)), *lr = mt_xcalloc(n, sizeof(float));
    uint8_t *cm = mt_xcalloc((size_t)2 * B * T, 1);
    int64_t *pidx = mt_xcalloc((size_t)B, sizeof *pidx);
    double nll = 0;
    int64_t nll_n = 0;
    mt_status st = MT_OK;
    for (size_t i = 0; i < n && st == MT_OK; i += (size_t)B) {
        int k = (int)(n - i < (size_t)B ? n - i : (size_t)B);
        for (int b = 0; b < k; b++) pidx[b] = (int64_t)(i + (size_t)b);
        if (p->needs_ref && !p->cached) {
            st = ref_pass(run, p, &p->eval, pidx, k, cm, rc + i, rr + i, err);
            if (st != MT_OK) break;
        }
        fill_pairs(p, &p->eval, pidx, k, B, cm, T);
        mt_batch batch = mt_batch_buf_view(&p->buf);
        mt_forward_opts fo = {.adapter = mt_lora_adapter(run->lora)};
        mt_forward_result fr;
        st = mt_model_forward(run->model, p->ews, &batch, &fo, &fr, err);
        if (st != MT_OK) break;
        row_logps(p, &fr, cm, 2 * B, T, avg ? -1 : ld);
        for (int b = 0; b < k; b++) {
            size_t j = i + (size_t)b;
            float cc = p->counts[b] > 0 ? p->counts[b] : 1, cr = p->counts[B + b] > 0 ? p->counts[B + b] : 1;
            pc[j] = avg ? p->sums[b] / cc : p->sums[b];
            pj[j] = avg ? p->sums[B + b] / cr : p->sums[B + b];
            lc[j] = p->eval.clen[2 * j];
            lr[j] = p->eval.clen[2 * j + 1];
            if (p->needs_ref && p->cached) {
                rc[j] = p->eval_ref.chosen[j];
                rr[j] = p->eval_ref.rejected[j];
            }
            for (int t = 0; t < T; t++) {
                size_t q = (size_t)b * T + t;
                bool counts = p->method == MT_RECIPE_METHOD_ORPO ? p->buf.targets[q] != MT_IGNORE_INDEX : cm[q];
                if (counts) {
                    nll += fr.token_loss[q];
                    nll_n++;
                }
            }
        }
    }
    if (st == MT_OK) {
        pair_batch pb = {.n = (int)n, .pc = pc, .pr = pj, .rc = rc, .rr = rr, .lc = lc, .lr = lr,
                         .nll = nll_n ? nll / (double)nll_n : 0, .logits_c = NAN, .logits_r = NAN};
        double d_nll;
        float *dc = mt_xcalloc(n, sizeof(float)), *dr = mt_xcalloc(n, sizeof(float));
        st = pair_loss(p, &pb, &eo->loss, dc, dr, &d_nll, &eo->metrics, err);
        free(dc);
        free(dr);
        eo->n_tokens = nll_n;
    }
    free(pc);
    free(pj);
    free(rc);
    free(rr);
    free(lc);
    free(lr);
    free(cm);
    free(pidx);
    return st;
}

static void pref_close(mt_run *run) {
    pref *p = run->obj_state;
    if (!p) return;
    /* run->train_rows borrowed the pair rows: the run must not free them twice */
    if (run->train_rows.tokens == p->train.rows.tokens) memset(&run->train_rows, 0, sizeof run->train_rows);
    mt_pair_set_free(&p->train);
    mt_pair_set_free(&p->eval);
    mt_lora_free(p->ref_lora);
    free(p->train_ref.chosen);
    free(p->train_ref.rejected);
    free(p->eval_ref.chosen);
    free(p->eval_ref.rejected);
    mt_workspace_free(p->ews);
    mt_batch_buf_free(&p->buf);
    free(p->rowidx);
    free(p->tok_logp);
    free(p->d_tok);
    free(p->sums);
    free(p->counts);
    free(p->d_sum);
    free(p->d_avg);
    free(p->lm_mean);
    free(p->scratch);
    free(p);
    run->obj_state = NULL;
}

const mt_objective mt_objective_pref = {
    .method = "dpo",
    .data_parallel = true,
    .open_data = pref_open_data,
    .open_model = pref_open_model,
    .step = pref_step,
    .eval = pref_eval,
    .close = pref_close,
};
