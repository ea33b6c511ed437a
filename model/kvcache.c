/* kvcache.c — the KV cache and incremental decoding. Standard attention caches post-norm,
 * post-RoPE K and V per KV head; MLA caches only the normed latent c and the roped k_pe per
 * position and decodes in the absorbed form (queries mapped into latent space by W_UK, output
 * (P·c)·W_UVᵀ), which is what makes MLA's cache small. A prompt chunk and a single token go
 * through the same code; every buffer comes from the cache object. */
#include <stdlib.h>
#include <string.h>

#include "model-impl.h"


static void cache_layout(mt_kv_cache *c, mt_carver *cv) {
    const mt_model *m = c->m;
    const mt_config *cfg = &m->cfg;
    mt_dims d;
    mt_model_dims(cfg, &d);
    size_t R = (size_t)c->chunk, S = (size_t)c->max_seq;
    for (int l = 0; l < d.L; l++) {
        if (cfg->mla) {
            c->ckv[l] = mt_carve(cv, S * d.kva_dim * sizeof(float));
        } else {
            c->k[l] = mt_carve(cv, S * d.kv_dim * sizeof(float));
            c->v[l] = mt_carve(cv, S * d.kv_dim * sizeof(float));
        }
    }
    bool any_dense = false, any_moe = false;
    for (int l = 0; l < d.L; l++) {
        if (m->layers[l].moe)
            any_moe = true;
        else
            any_dense = true;
    }
    mt_acts_want want = {.expanded = false, .dense = any_dense, .moe = any_moe, .jitter = false};
    c->a.offsets_host = c->offsets_host;
    mt_acts_layout(m, &c->a, R, &want, cv);
    c->s.h = mt_carve(cv, mt_ffn_hidden_floats(m, R) * sizeof(float));
    c->s.tmp = mt_carve(cv, R * d.H * sizeof(float));
    c->s.adapter = mt_carve(cv, c->s.adapter_cap * sizeof(float));
    c->x = mt_carve(cv, R * d.H * sizeof(float));
    c->xf = mt_carve(cv, (size_t)d.H * sizeof(float));
    c->rstdf = mt_carve(cv, sizeof(float));
    c->logits = mt_carve(cv, (size_t)d.V * sizeof(float));
    c->tokens = mt_carve(cv, R * sizeof(int32_t));
    c->pos = mt_carve(cv, R * sizeof(int32_t));
    c->kv_start = mt_carve(cv, R * sizeof(int32_t));
    if (cfg->mla) {
        c->qabs = mt_carve(cv, R * d.nh * d.kva_dim * sizeof(float));
        c->olat = mt_carve(cv, R * d.nh * d.kvl * sizeof(float));
        c->eye = mt_carve(cv, (size_t)d.kvl * d.kvl * sizeof(float));
        c->dkvb = mt_carve(cv, (size_t)d.kvl * d.kvb_dim * sizeof(float));
    }
}

mt_status mt_kv_cache_init(mt_kv_cache **out, const mt_model *m, int max_seq, mt_error *err) {
    *out = NULL;
    if (max_seq <= 0 || max_seq > m->rope_len)
        return mt_error_set(err, MT_ERR_INVALID, "kv cache: length %d must be in [1, max_position_embeddings = %d]",
                            max_seq, m->rope_len);
    mt_status st = mt_model_check_backend(m, err);
    if (st) return st;
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    mt_kv_cache *c = mt_xcalloc(1, sizeof *c);
    c->m = m;
    c->max_seq = max_seq;
    c->chunk = max_seq < 256 ? max_seq : 256;
    int rows = c->chunk > d.kvl ? c->chunk : d.kvl;
    size_t need = mt_adapter_scratch_floats(m, rows), floor_cap = (size_t)rows * 64 * 2;
    c->s.adapter_cap = need > floor_cap ? need : floor_cap;
    c->k = mt_xcalloc((size_t)d.L, sizeof(float *));
    c->v = mt_xcalloc((size_t)d.L, sizeof(float *));
    c->ckv = mt_xcalloc((size_t)d.L, sizeof(float *));
    c->offsets_host = mt_xcalloc((size_t)(d.E > 0 ? d.E : 1) + 1, sizeof(int32_t));
    c->host_i32 = mt_xcalloc((size_t)c->chunk, sizeof(int32_t));
    mt_carver cv = {0};
    cache_layout(c, &cv);
    c->bytes = cv.off;
    c->block = mt_backend_alloc(m->be, c->bytes);
    if (!c->block) {
        size_t bytes = c->bytes;
        mt_kv_cache_free(c);
        return mt_error_set(err, MT_ERR_NOMEM, "kv cache: cannot allocate %.1f MB for %d positions", (double)bytes / 1e6,
                            max_seq);
    }
    cv.base = c->block;
    cv.off = 0;
    cache_layout(c, &cv);
    if (m->cfg.mla) {
        float *eye = mt_xcalloc((size_t)d.kvl * d.kvl, sizeof(float));
        for (int i = 0; i < d.kvl; i++) eye[(size_t)i * d.kvl + i] = 1.0f;
        mt_backend_upload(m->be, c->eye, eye, (size_t)d.kvl * d.kvl * sizeof(float));
        free(eye);
    }
    *out = c;
    return MT_OK;
}

void mt_kv_cache_free(mt_kv_cache *c) {
    if (!c) return;
    if (c->block) mt_backend_release(c->m->be, c->block);
    free(c->k);
    free(c->v);
    free(c->ckv);
    free(c->offsets_host);
    free(c->host_i32);
    free(c);
}

void mt_kv_cache_reset(mt_kv_cache *c) { c->len = 0; }
int mt_kv_cache_len(const mt_kv_cache *c) { return c->len; }
size_t mt_kv_cache_bytes(const mt_kv_cache *c) { return c->bytes; }

/* Absorbed MLA attention for n new rows whose latent rows are already in the cache. */
static void mla_decode(mt_model *m, const mt_layer *ly, mt_kv_cache *c, const mt_lin_ctx *lc, int n,
                       const int32_t *kv_start, float *out) {
    mt_backend *be = m->be;
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    mt_acts *a = &c->a;
    const float *W = ly->kv_b->weight->data; /* [nh·(nope+vh), kvl]: per head W_UK [nope, kvl], W_UV [vh, kvl] */
    int qa_row = d.nh * d.kva_dim, ol_row = d.nh * d.kvl, hw = d.nope + d.vh;
    /* An adapter on kv_b_proj changes W by some ΔW we never see; applying the hook to the
     * identity reads ΔWᵀ off it (adapters are linear in their input; no dropout here). */
    bool delta = mt_hook_active(ly->kv_b);
    if (delta) {
        mt_backend_memset0(be, c->dkvb, (size_t)d.kvl * d.kvb_dim * sizeof(float));
        mt_adapter_call call = {.be = be,
                                .train = false,
                                .key = mt_hash_u64(lc->seed, (uint64_t)mt_linear_index(m, ly->kv_b)),
                                .row0 = 0,
                                .scratch = lc->scratch,
                                .scratch_cap = lc->scratch_cap};
        ly->kv_b->hook.ops->forward(ly->kv_b->hook.self, &call, c->eye, d.kvl, c->dkvb);
    }
    for (int h = 0; h < d.nh; h++) {
        const float *qn = a->q + (size_t)h * d.qk_hd;
        float *qh = c->qabs + (size_t)h * d.kva_dim;
        mt_matmul(be, false, false, n, d.kvl, d.nope, 1.0f, qn, d.q_dim, W + (size_t)h * hw * d.kvl, d.kvl, 0.0f, qh,
                  qa_row);
        if (delta)
            mt_matmul(be, false, true, n, d.kvl, d.nope, 1.0f, qn, d.q_dim, c->dkvb + (size_t)h * hw, d.kvb_dim, 1.0f,
                      qh, qa_row);
        mt_copy_2d(be, qh + d.kvl, qa_row, qn + d.nope, d.q_dim, n, d.rope);
    }
    /* one shared latent "KV head": keys [c | k_pe], values c */
    mt_attn_args aa = {.B = 1,
                       .Tq = n,
                       .Tk = c->len + n,
                       .n_head = d.nh,
                       .n_kv_head = 1,
                       .dqk = d.kva_dim,
                       .dv = d.kvl,
                       .q_row = qa_row,
                       .q_head = d.kva_dim,
                       .k_row = d.kva_dim,
                       .k_head = 0,
                       .v_row = d.kva_dim,
                       .v_head = 0,
                       .o_row = ol_row,
                       .o_head = d.kvl,
                       .q_offset = c->len,
                       .kv_start = kv_start,
                       .scale = m->attn_scale};
    const float *ckv = c->ckv[ly->index];
    mt_attention_forward(be, &aa, c->qabs, ckv, ckv, c->olat, a->lse);
    for (int h = 0; h < d.nh; h++) {
        const float *oh = c->olat + (size_t)h * d.kvl;
        float *att = a->att + (size_t)h * d.vh;
        mt_matmul(be, false, true, n, d.vh, d.kvl, 1.0f, oh, ol_row, W + ((size_t)h * hw + d.nope) * d.kvl, d.kvl, 0.0f,
                  att, d.o_dim);
        if (delta)
            mt_matmul(be, false, false, n, d.vh, d.kvl, 1.0f, oh, ol_row, c->dkvb + (size_t)h * hw + d.nope, d.kvb_dim,
                      1.0f, att, d.o_dim);
    }
    mt_lin_forward(m, ly->o, lc, a->att, n, 0, out);
}

static void attn_decode(mt_model *m, const mt_layer *ly, mt_kv_cache *c, const mt_lin_ctx *lc, int n,
                        const int32_t *kv_start, float *out) {
    mt_backend *be = m->be;
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    mt_acts *a = &c->a;
    int l = ly->index;
    if (m->cfg.mla) {
        mt_attn_project(m, ly, lc, a, n, c->pos, NULL, NULL);
        float *rows = c->ckv[l] + (size_t)c->len * d.kva_dim;
        mt_copy_2d(be, rows, d.kva_dim, a->cn, d.kvl, n, d.kvl);
        mt_copy_2d(be, rows + d.kvl, d.kva_dim, a->kva + d.kvl, d.kva_dim, n, d.rope);
        mla_decode(m, ly, c, lc, n, kv_start, out);
        return;
    }
    float *k = c->k[l] + (size_t)c->len * d.kv_dim, *v = c->v[l] + (size_t)c->len * d.kv_dim;
    mt_attn_project(m, ly, lc, a, n, c->pos, k, v);
    mt_attn_args aa;
    mt_attn_args_fill(m, &aa, 1, n, c->len + n, c->len, kv_start);
    mt_attention_forward(be, &aa, a->q, c->k[l], c->v[l], a->att, a->lse);
    mt_lin_forward(m, ly->o, lc, a->att, n, 0, out);
}

mt_status mt_model_decode(mt_model *m, mt_kv_cache *c, const int32_t *tokens, int n, float *logits, mt_error *err) {
    if (c->m != m) return mt_error_set(err, MT_ERR_INVALID, "decode: the cache belongs to another model");
    if (n <= 0 || !tokens) return mt_error_set(err, MT_ERR_INVALID, "decode: no tokens");
    if (n > c->max_seq - c->len)
        return mt_error_set(err, MT_ERR_INVALID, "decode: %d more tokens do not fit the cache (%d of %d used)", n, c->len,
                            c->max_seq);
    const mt_config *cfg = &m->cfg;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= cfg->vocab_size)
            return mt_error_set(err, MT_ERR_INVALID, "decode: token %d at %d is outside the vocabulary (%d)", tokens[i],
                                i, cfg->vocab_size);
    int rows_adapter = c->chunk > cfg->kv_lora_rank ? c->chunk : cfg->kv_lora_rank;
    if (mt_adapter_scratch_floats(m, rows_adapter) > c->s.adapter_cap)
        return mt_error_set(err, MT_ERR_INVALID,
                            "decode: the attached adapters need more scratch than the cache has; create the cache after "
                            "attaching them");
    mt_backend *be = m->be;
    mt_dims d;
    mt_model_dims(cfg, &d);
    mt_lin_ctx lc = {.be = be, .train = false, .seed = 0, .scratch = c->s.adapter, .scratch_cap = c->s.adapter_cap};
    mt_pass pass = {.train = false};
    int W = cfg->sliding_window;
    for (int done = 0; done < n;) {
        int r = n - done < c->chunk ? n - done : c->chunk;
        mt_backend_upload(be, c->tokens, tokens + done, (size_t)r * sizeof(int32_t));
        for (int i = 0; i < r; i++) c->host_i32[i] = c->len + i;
        mt_backend_upload(be, c->pos, c->host_i32, (size_t)r * sizeof(int32_t));
        const int32_t *kv_start = NULL;
        if (W > 0 && c->len + r > W) {
            for (int i = 0; i < r; i++) {
                int ks = c->len + i - W + 1;
                c->host_i32[i] = ks > 0 ? ks : 0;
            }
            mt_backend_upload(be, c->kv_start, c->host_i32, (size_t)r * sizeof(int32_t));
            kv_start = c->kv_start;
        }
        mt_embedding_forward(be, c->tokens, r, m->embed->data, d.H, c->x);
        for (int l = 0; l < d.L; l++) {
            const mt_layer *ly = &m->layers[l];
            mt_acts *a = &c->a;
            mt_rmsnorm_forward(be, c->x, ly->attn_norm->data, a->xn1, a->rstd1, r, d.H, cfg->rms_norm_eps);
            attn_decode(m, ly, c, &lc, r, kv_start, c->s.tmp);
            mt_add(be, c->x, c->s.tmp, 1.0f, (size_t)r * d.H);
            mt_rmsnorm_forward(be, c->x, ly->ffn_norm->data, a->xn2, a->rstd2, r, d.H, cfg->rms_norm_eps);
            mt_ffn_forward(m, ly, &lc, &pass, a, &c->s, r, c->s.tmp);
            mt_add(be, c->x, c->s.tmp, 1.0f, (size_t)r * d.H);
        }
        c->len += r;
        done += r;
        if (done == n) {
            const float *last = c->x + (size_t)(r - 1) * d.H;
            mt_rmsnorm_forward(be, last, m->final_norm->data, c->xf, c->rstdf, 1, d.H, cfg->rms_norm_eps);
            mt_lin_forward(m, m->lm_head, &lc, c->xf, 1, 0, c->logits);
            if (logits) mt_backend_download(be, logits, c->logits, (size_t)d.V * sizeof(float));
        }
    }
    return MT_OK;
}
