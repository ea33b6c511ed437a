/* decoder.c — one batched step over many sequences of a paged KV pool: rows of prompt chunks
 * and single new tokens mixed, each with its own position and adapter slot. Rows are put in
 * slot order so each linear applies one low-rank GEMM pair per adapter run after the shared
 * base GEMM; the layer body is layer.c's, with the attention half reading each row's block
 * table. MLA decodes in the absorbed form, an adapter on kv_b_proj entering as two low-rank
 * products per head, so its cache stays the latent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model-impl.h"

static void decoder_layout(mt_decoder *d, mt_carver *cv) {
    const mt_model *m = d->m;
    const mt_config *cfg = &m->cfg;
    mt_dims dm;
    mt_model_dims(cfg, &dm);
    size_t R = (size_t)d->max_rows;
    bool any_dense = false, any_moe = false;
    for (int l = 0; l < dm.L; l++) {
        if (m->layers[l].moe)
            any_moe = true;
        else
            any_dense = true;
    }
    mt_acts_want want = {.expanded = false, .dense = any_dense, .moe = any_moe, .jitter = false, .slots = true};
    d->a.offsets_host = d->offsets_host;
    mt_acts_layout(m, &d->a, R, &want, cv);
    d->s.h = mt_carve(cv, mt_ffn_hidden_floats(m, R) * sizeof(float));
    d->s.tmp = mt_carve(cv, R * dm.H * sizeof(float));
    d->s.adapter = mt_carve(cv, d->s.adapter_cap * sizeof(float));
    d->x = mt_carve(cv, R * dm.H * sizeof(float));
    d->xf = mt_carve(cv, R * dm.H * sizeof(float));
    d->rstdf = mt_carve(cv, R * sizeof(float));
    d->tokens = mt_carve(cv, R * sizeof(int32_t));
    d->pos = mt_carve(cv, R * sizeof(int32_t));
    d->kv_start = mt_carve(cv, R * sizeof(int32_t));
    if (cfg->mla) {
        d->qabs = mt_carve(cv, R * dm.nh * dm.kva_dim * sizeof(float));
        d->olat = mt_carve(cv, R * dm.nh * dm.kvl * sizeof(float));
    } else {
        d->kst = mt_carve(cv, R * dm.kv_dim * sizeof(float));
        d->vst = mt_carve(cv, R * dm.kv_dim * sizeof(float));
    }
}

mt_status mt_decoder_init(mt_decoder **out, mt_model *m, int max_rows, int max_rank, mt_error *err) {
    *out = NULL;
    if (max_rows < 1 || max_rows > (1 << 20))
        return mt_error_set(err, MT_ERR_INVALID, "decoder: max_rows %d must be in [1, %d]", max_rows, 1 << 20);
    mt_status st = mt_model_check_backend(m, err);
    if (st) return st;
    mt_dims dm;
    mt_model_dims(&m->cfg, &dm);
    mt_decoder *d = mt_xcalloc(1, sizeof *d);
    d->m = m;
    d->max_rows = max_rows;
    d->max_rank = max_rank > 0 ? max_rank : MT_DEFAULT_MAX_RANK;
    /* a decoder has its own backend (its own kernel scratch), so several threads can each
     * decode with their own decoder on one shared, read-only model */
    st = mt_backend_init(&d->be, mt_backend_get_kind(m->be), mt_backend_threads(m->be), err);
    if (st) {
        free(d);
        return st;
    }
    d->s.adapter_cap = mt_adapter_scratch_floats(m, max_rows, d->max_rank);
    int E = dm.E > 0 ? dm.E : 1;
    d->offsets_host = mt_xcalloc((size_t)E + 1, sizeof(int32_t));
    mt_carver cv = {0};
    decoder_layout(d, &cv);
    d->bytes = cv.off;
    d->block = mt_backend_alloc(d->be, d->bytes);
    if (!d->block) {
        size_t bytes = d->bytes;
        mt_decoder_free(d);
        return mt_error_set(err, MT_ERR_NOMEM, "decoder: cannot allocate %.1f MB for %d rows", (double)bytes / 1e6,
                            max_rows);
    }
    cv.base = d->block;
    cv.off = 0;
    decoder_layout(d, &cv);
    size_t R = (size_t)max_rows;
    d->order = mt_xmalloc(R * sizeof(int32_t));
    d->row_seq = mt_xmalloc(R * sizeof(int32_t));
    d->row_pos = mt_xmalloc(R * sizeof(int32_t));
    d->row_slot = mt_xmalloc(R * sizeof(int32_t));
    d->row_ks = mt_xmalloc(R * sizeof(int32_t));
    d->out_row = mt_xmalloc(R * sizeof(int32_t));
    d->logit_slot = mt_xmalloc(R * sizeof(int32_t));
    int n_moe = dm.n_moe > 0 ? dm.n_moe : 1;
    d->tpe = mt_xcalloc((size_t)n_moe * E, sizeof(int32_t));
    d->entropy = mt_xcalloc((size_t)n_moe, sizeof(double));
    d->row_tau = mt_xcalloc(R, sizeof(float));
    d->row_ak = mt_xcalloc(R, sizeof(mt_adaptive_k));
    d->row_kused = mt_xcalloc(R, sizeof(int32_t));
    mt_decoder_set_dap(d, NULL);
    *out = d;
    return MT_OK;
}

void mt_decoder_free(mt_decoder *d) {
    if (!d) return;
    if (d->block) mt_backend_release(d->be, d->block);
    mt_backend_free(d->be);
    free(d->offsets_host);
    free(d->order);
    free(d->row_seq);
    free(d->row_pos);
    free(d->row_slot);
    free(d->row_ks);
    free(d->out_row);
    free(d->logit_slot);
    free(d->seq_new);
    free(d->tpe);
    free(d->entropy);
    free(d->row_tau);
    free(d->row_ak);
    free(d->row_kused);
    free(d->dap_bounds);
    free(d->dap_ntok);
    free(d->dap_keep);
    free(d);
}

void mt_decoder_set_dap(mt_decoder *d, const mt_dap_opts *o) {
    d->dap = o ? *o : (mt_dap_opts){.n_sink_blocks = 1, .n_local_blocks = 1, .mass_floor = 0.9f};
    d->dap.threshold = 0;
    memset(&d->dap_counts, 0, sizeof d->dap_counts);
}

void mt_decoder_dap_stats(const mt_decoder *d, mt_dap_counts *out) { *out = d->dap_counts; }

int mt_decoder_max_rows(const mt_decoder *d) { return d->max_rows; }
size_t mt_decoder_bytes(const mt_decoder *d) { return d->bytes; }

bool mt_decoder_router_stats(const mt_decoder *d, int i, mt_router_stats *out) {
    return mt_router_stats_at(d->m, d->tpe, d->entropy, i, out);
}

/* ---- attention over the pool ---- */

/* The absorbed form's kv_b_proj deltas of each adapter run: with ΔW = s·B·A (B [kvb, r],
 * A [r, kvl]), head h's absorbed query gains s·(q_nope·B_UK,h)·A and its output
 * s·(olat·Aᵀ)·B_UV,hᵀ, where B_UK,h / B_UV,h are head h's rows of B. */
static void mla_delta(const mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, mt_decoder *d, int N, bool out) {
    mt_dims dm;
    mt_model_dims(&m->cfg, &dm);
    mt_backend *be = c->be;
    int hw = dm.nope + dm.vh, qa_row = dm.nh * dm.kva_dim, ol_row = dm.nh * dm.kvl;
    for (int i = 0; i < N;) {
        int slot = d->row_slot[i], j = i + 1;
        while (j < N && d->row_slot[j] == slot) j++;
        const mt_lowrank *dl = mt_lin_delta(m, ly->kv_b, c, slot);
        int n = j - i;
        if (dl) {
            double t0 = m->prof ? mt_now_seconds() : 0;
            float *t = c->scratch; /* [n, r] */
            MT_ASSERT((size_t)n * dl->r <= c->scratch_cap);
            for (int h = 0; h < dm.nh; h++) {
                if (!out) /* qabs_h += s·(q_nope,h·B_UK,h)·A: both factors as stored, untransposed */
                    mt_lowrank_forward(be, n, dm.nope, dm.kvl, dl->r, dl->scale,
                                       d->a.q + (size_t)i * dm.q_dim + (size_t)h * dm.qk_hd, dm.q_dim,
                                       dl->B + (size_t)h * hw * dl->r, true, dl->A, true, t,
                                       d->qabs + (size_t)i * qa_row + (size_t)h * dm.kva_dim, qa_row);
                else /* att_h += s·(olat_h·Aᵀ)·B_UV,hᵀ */
                    mt_lowrank_forward(be, n, dm.kvl, dm.vh, dl->r, dl->scale,
                                       d->olat + (size_t)i * ol_row + (size_t)h * dm.kvl, ol_row, dl->A, false,
                                       dl->B + ((size_t)h * hw + dm.nope) * dl->r, false, t,
                                       d->a.att + (size_t)i * dm.o_dim + (size_t)h * dm.vh, dm.o_dim);
            }
            if (m->prof)
                mt_prof_lora_(m->prof, dl, out ? dm.kvl : dm.nope, out ? dm.vh : dm.kvl, n * dm.nh,
                              mt_now_seconds() - t0);
        }
        i = j;
    }
}

/* DAP keep masks are built for at most this many bytes of rows at a time. */
#define DAP_KEEP_BYTES (8u << 20)

/* Sizes the DAP scratch: keep masks for `rows` rows of n_head heads over tables of `nb` blocks. */
static void dap_reserve(mt_decoder *d, int rows, int n_head, int nb) {
    size_t need = (size_t)rows * (size_t)n_head * (size_t)nb;
    if (need > d->dap_keep_cap || nb > d->dap_tab_cap) {
        free(d->dap_keep);
        free(d->dap_bounds);
        free(d->dap_ntok);
        if (need < d->dap_keep_cap) need = d->dap_keep_cap;
        d->dap_keep = mt_xmalloc(need);
        d->dap_keep_cap = need;
        if (nb > d->dap_tab_cap) d->dap_tab_cap = nb;
        d->dap_bounds = mt_xmalloc((size_t)d->dap_tab_cap * sizeof(float));
        d->dap_ntok = mt_xmalloc((size_t)d->dap_tab_cap * sizeof(int32_t));
    }
}

/* Paged attention with DAP (CPU: pool, queries and outputs are host memory). Each (row, query
 * head) with τ > 0 gets the keep mask mt_dap_select gives from the blocks' stored key summaries;
 * rows with τ = 0 keep every block. The kernel then runs every head of a KV group together, as
 * without DAP: a key is read once for the heads that keep its block and not at all when none
 * does, and a head that keeps every block (τ = 0, a fallback, nothing below τ) gets full
 * attention bit for bit. Rows go in chunks so the masks stay within DAP_KEEP_BYTES. */
static void dap_paged_attention(mt_decoder *d, mt_kv_pool *p, int l, const mt_paged_attn_args *pa, int N,
                                const float *q, float *o) {
    const int nh = pa->n_head, nkv = pa->n_kv_head, group = nh / nkv, dqk = pa->dqk, bs = p->block_size;
    const int nbt = p->max_blocks;
    MT_ASSERT(p->ksum && p->ks_heads == nkv && p->ks_dim == dqk);
    int chunk = (int)(DAP_KEEP_BYTES / ((size_t)nh * (size_t)nbt));
    if (chunk < 1) chunk = 1;
    if (chunk > N) chunk = N;
    dap_reserve(d, chunk, nh, nbt);
    mt_dap_opts o_row = d->dap;
    for (int r0 = 0; r0 < N; r0 += chunk) {
        const int n = N - r0 < chunk ? N - r0 : chunk;
        for (int i = 0; i < n; i++) {
            const int r = r0 + i;
            const int32_t *table = p->tables + (size_t)pa->seq[r] * p->max_blocks;
            const int lo = pa->kv_start ? pa->kv_start[r] : 0, hi = pa->pos[r];
            const int b0 = lo / bs, b1 = hi / bs, nvis = b1 - b0 + 1;
            const float tau = d->row_tau[r];
            uint8_t *keep_r = d->dap_keep + (size_t)i * nh * nbt;
            if (!(tau > 0)) {
                memset(keep_r, 1, (size_t)nh * nbt);
                continue;
            }
            o_row.threshold = tau;
            for (int j = 0; j < nvis; j++) {
                int b = b0 + j, t0 = b * bs > lo ? b * bs : lo, t1 = (b + 1) * bs - 1 < hi ? (b + 1) * bs - 1 : hi;
                d->dap_ntok[j] = t1 - t0 + 1;
            }
            for (int h = 0; h < nh; h++) {
                const int g = h / group;
                const float *qh = q + (size_t)r * pa->q_row + (size_t)h * pa->q_head;
                for (int j = 0; j < nvis; j++) {
                    const float *sum = p->ksum + (((size_t)l * p->n_blocks + (size_t)table[b0 + j]) * nkv + g) * 2u * dqk;
                    d->dap_bounds[j] = mt_dap_block_bound(qh, sum, sum + dqk, dqk);
                }
                uint8_t *kh = keep_r + (size_t)h * nbt;
                int kept = mt_dap_select(d->dap_bounds, d->dap_ntok, nvis, pa->scale, &o_row, kh + b0, &d->dap_counts);
                MT_ASSERT(kept > 0); /* τ ≤ 1: the best block's bound gives it weight 1 */
            }
        }
        mt_paged_attn_args pg = *pa;
        pg.n_rows = n;
        pg.seq = pa->seq + r0;
        pg.pos = pa->pos + r0;
        pg.kv_start = pa->kv_start ? pa->kv_start + r0 : NULL;
        pg.keep = d->dap_keep;
        pg.keep_stride = nbt;
        mt_paged_attention_forward(d->be, &pg, q + (size_t)r0 * pa->q_row, o + (size_t)r0 * pa->o_row);
    }
}

void mt_attn_paged_forward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, mt_acts *a, int N,
                           const mt_attn_plan *plan, float *out) {
    mt_backend *be = c->be;
    mt_dims dm;
    mt_model_dims(&m->cfg, &dm);
    mt_decoder *d = plan->dec;
    mt_kv_pool *p = plan->pool;
    int l = ly->index;
    mt_paged_attn_args pa = {.n_rows = N,
                             .n_head = dm.nh,
                             .cache = mt_kv_pool_layer(p, l),
                             .block_size = p->block_size,
                             .kv_row = p->kv_row,
                             .tables = p->tables,
                             .table_stride = p->max_blocks,
                             .seq = d->row_seq,
                             .pos = d->row_pos,
                             .kv_start = plan->kv_start ? d->row_ks : NULL,
                             .scale = m->attn_scale};
    mt_prof_begin(m, l, MT_PROF_ATTN_PROJ);
    if (!m->cfg.mla) {
        mt_attn_project(m, ly, c, a, N, plan->pos, d->kst, d->vst);
        for (int i = 0; i < N; i++) {
            float *dst = mt_kv_pool_row(p, l, d->row_seq[i], d->row_pos[i]);
            mt_backend_copy(be, dst, d->kst + (size_t)i * dm.kv_dim, (size_t)dm.kv_dim * sizeof(float));
            mt_backend_copy(be, dst + dm.kv_dim, d->vst + (size_t)i * dm.kv_dim, (size_t)dm.kv_dim * sizeof(float));
            mt_kv_pool_note_key(p, l, d->row_seq[i], d->row_pos[i]);
        }
        pa.n_kv_head = dm.nkv;
        pa.dqk = dm.hd;
        pa.dv = dm.hd;
        pa.q_row = dm.q_dim;
        pa.q_head = dm.hd;
        pa.o_row = dm.o_dim;
        pa.o_head = dm.vh;
        pa.k_off = 0;
        pa.k_head = dm.hd;
        pa.v_off = dm.kv_dim;
        pa.v_head = dm.hd;
        mt_prof_end(m);
        mt_prof_begin(m, l, MT_PROF_ATTN_CORE);
        if (d->dap_on)
            dap_paged_attention(d, p, l, &pa, N, a->q, a->att);
        else
            mt_paged_attention_forward(be, &pa, a->q, a->att);
        if (m->prof) mt_prof_attn_paged_(m->prof, N, d->row_pos, pa.kv_start, dm.nh, dm.hd, dm.hd, 2 * dm.kv_dim);
        mt_prof_end(m);
        mt_prof_begin(m, l, MT_PROF_ATTN_PROJ);
        mt_lin_forward(m, ly->o, c, a->att, N, 0, out);
        mt_prof_end(m);
        return;
    }
    mt_attn_project(m, ly, c, a, N, plan->pos, NULL, NULL);
    for (int i = 0; i < N; i++) {
        float *dst = mt_kv_pool_row(p, l, d->row_seq[i], d->row_pos[i]);
        mt_backend_copy(be, dst, a->cn + (size_t)i * dm.kvl, (size_t)dm.kvl * sizeof(float));
        mt_backend_copy(be, dst + dm.kvl, a->kva + (size_t)i * dm.kva_dim + dm.kvl, (size_t)dm.rope * sizeof(float));
        mt_kv_pool_note_key(p, l, d->row_seq[i], d->row_pos[i]);
    }
    mt_prof_end(m);
    mt_prof_begin(m, l, MT_PROF_ATTN_CORE);
    /* absorbed queries: [q_nope·W_UK,h | q_pe] per head, W [nh·(nope+vh), kvl] */
    const float *W = ly->kv_b->weight->data;
    int qa_row = dm.nh * dm.kva_dim, ol_row = dm.nh * dm.kvl, hw = dm.nope + dm.vh;
    for (int h = 0; h < dm.nh; h++) {
        const float *qn = a->q + (size_t)h * dm.qk_hd;
        float *qh = d->qabs + (size_t)h * dm.kva_dim;
        mt_matmul(be, false, false, N, dm.kvl, dm.nope, 1.0f, qn, dm.q_dim, W + (size_t)h * hw * dm.kvl, dm.kvl, 0.0f,
                  qh, qa_row);
        mt_copy_2d(be, qh + dm.kvl, qa_row, qn + dm.nope, dm.q_dim, N, dm.rope);
    }
    mla_delta(m, ly, c, d, N, false);
    /* one shared latent "KV head": keys [c | k_pe], values c */
    pa.n_kv_head = 1;
    pa.dqk = dm.kva_dim;
    pa.dv = dm.kvl;
    pa.q_row = qa_row;
    pa.q_head = dm.kva_dim;
    pa.o_row = ol_row;
    pa.o_head = dm.kvl;
    pa.k_off = 0;
    pa.k_head = 0;
    pa.v_off = 0;
    pa.v_head = 0;
    if (d->dap_on)
        dap_paged_attention(d, p, l, &pa, N, d->qabs, d->olat);
    else
        mt_paged_attention_forward(be, &pa, d->qabs, d->olat);
    if (m->prof) {
        mt_prof_attn_paged_(m->prof, N, d->row_pos, pa.kv_start, dm.nh, dm.kva_dim, dm.kvl, dm.kva_dim);
        /* the absorbed kv_b products: W_UK into the queries, W_UV out of the latent; kv_b read once */
        mt_prof_add_(m->prof, 2.0 * N * dm.nh * dm.kvl * (double)(dm.nope + dm.vh),
                     (double)ly->kv_b->weight->numel * sizeof(float) +
                         (double)N * dm.nh * (dm.nope + dm.kva_dim + dm.kvl + dm.vh) * sizeof(float));
    }
    for (int h = 0; h < dm.nh; h++)
        mt_matmul(be, false, true, N, dm.vh, dm.kvl, 1.0f, d->olat + (size_t)h * dm.kvl, ol_row,
                  W + ((size_t)h * hw + dm.nope) * dm.kvl, dm.kvl, 0.0f, a->att + (size_t)h * dm.vh, dm.o_dim);
    mla_delta(m, ly, c, d, N, true);
    mt_prof_end(m);
    mt_prof_begin(m, l, MT_PROF_ATTN_PROJ);
    mt_lin_forward(m, ly->o, c, a->att, N, 0, out);
    mt_prof_end(m);
}

/* ---- the step ---- */

static mt_status check_step(mt_decoder *d, mt_kv_pool *p, const mt_decode_batch *b, mt_error *err) {
    const mt_model *m = d->m;
    if (p->m != m) return mt_error_set(err, MT_ERR_INVALID, "decode: the pool belongs to another model");
    if (!b || b->n_rows < 1 || !b->tokens || !b->seq)
        return mt_error_set(err, MT_ERR_INVALID, "decode: a step needs at least one row with a token and a sequence");
    if (b->n_rows > d->max_rows)
        return mt_error_set(err, MT_ERR_INVALID, "decode: %d rows but the decoder holds %d", b->n_rows, d->max_rows);
    if (b->n_slots < 0 || (b->n_slots > 0 && !b->adapters))
        return mt_error_set(err, MT_ERR_INVALID, "decode: %d adapter slots without an adapter table", b->n_slots);
    for (int s = 0; s < b->n_slots; s++) {
        char what[48];
        snprintf(what, sizeof what, "decode: slot %d", s);
        mt_status st = mt_adapter_check(m, b->adapters[s], d->max_rank, what, err);
        if (st) return st;
    }
    if (b->n_logits < 0 || b->n_logits > b->n_rows || (b->n_logits > 0 && !b->logit_rows))
        return mt_error_set(err, MT_ERR_INVALID, "decode: %d logit rows for %d rows", b->n_logits, b->n_rows);
    for (int k = 0; k < b->n_logits; k++)
        if (b->logit_rows[k] < 0 || b->logit_rows[k] >= b->n_rows)
            return mt_error_set(err, MT_ERR_INVALID, "decode: logit row %d is not a row of the step", b->logit_rows[k]);
    if (b->dap_threshold) {
        bool any = false;
        for (int i = 0; i < b->n_rows; i++) {
            float t = b->dap_threshold[i];
            if (!(t >= 0 && t <= 1))
                return mt_error_set(err, MT_ERR_INVALID, "decode: row %d has DAP threshold %g, outside [0, 1]", i,
                                    (double)t);
            any |= t > 0;
        }
        if (any && !p->ksum)
            return mt_error_set(err, MT_ERR_UNSUPPORTED, "decode: DAP (a row with dap_threshold > 0) runs on the CPU "
                                "backend only");
    }
    if (b->adaptive_k) {
        int K = m->cfg.top_k;
        bool any = false;
        for (int i = 0; i < b->n_rows; i++) {
            const mt_adaptive_k *a = &b->adaptive_k[i];
            if (!(a->threshold >= 0 && a->threshold <= 1))
                return mt_error_set(err, MT_ERR_INVALID, "decode: row %d has expert threshold %g, outside [0, 1]", i,
                                    (double)a->threshold);
            if (a->min_k < 0 || a->min_k > K || a->max_k < 0 || a->max_k > K)
                return mt_error_set(err, MT_ERR_INVALID,
                                    "decode: row %d has expert bounds min %d, max %d, outside [1, top_k %d] "
                                    "(0: default)",
                                    i, a->min_k, a->max_k, K);
            if (a->min_k > 0 && a->max_k > 0 && a->min_k > a->max_k)
                return mt_error_set(err, MT_ERR_INVALID, "decode: row %d has min experts %d above max experts %d", i,
                                    a->min_k, a->max_k);
            any |= a->threshold > 0;
        }
        if (any && mt_backend_get_kind(m->be) != MT_BACKEND_CPU)
            return mt_error_set(err, MT_ERR_UNSUPPORTED,
                                "decode: adaptive expert counts (a row with expert threshold > 0) run on the CPU "
                                "backend only");
    }
    if (d->seq_new_cap < p->max_seqs) {
        d->seq_new = mt_xrealloc(d->seq_new, (size_t)p->max_seqs * sizeof(int32_t));
        d->seq_new_cap = p->max_seqs;
    }
    memset(d->seq_new, 0, (size_t)p->max_seqs * sizeof(int32_t));
    int V = m->cfg.vocab_size;
    for (int i = 0; i < b->n_rows; i++) {
        int s = b->seq[i], slot = b->slot ? b->slot[i] : 0;
        if (b->tokens[i] < 0 || b->tokens[i] >= V)
            return mt_error_set(err, MT_ERR_INVALID, "decode: token %d of row %d is outside the vocabulary (%d)",
                                b->tokens[i], i, V);
        if (s < 0 || s >= p->max_seqs || p->len[s] < 0)
            return mt_error_set(err, MT_ERR_INVALID, "decode: row %d names sequence %d, which is not open", i, s);
        if (slot < 0 || slot >= (b->n_slots > 0 ? b->n_slots : 1))
            return mt_error_set(err, MT_ERR_INVALID, "decode: row %d uses slot %d of %d", i, slot, b->n_slots);
        int want = p->len[s] + d->seq_new[s];
        if (b->pos && b->pos[i] != want)
            return mt_error_set(err, MT_ERR_INVALID,
                                "decode: row %d is at position %d but sequence %d continues at %d (rows of a sequence go "
                                "in order)",
                                i, b->pos[i], s, want);
        if (want >= p->max_seq_len)
            return mt_error_set(err, MT_ERR_INVALID, "decode: sequence %d is full (%d positions)", s, p->max_seq_len);
        d->seq_new[s]++;
    }
    return MT_OK;
}

mt_status mt_decode_step(mt_decoder *d, mt_kv_pool *p, const mt_decode_batch *b, float *logits, mt_error *err) {
    mt_status st = check_step(d, p, b, err);
    if (st) return st;
    if (b->route_out && mt_backend_get_kind(d->m->be) != MT_BACKEND_CPU)
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "decode: routing record runs on the CPU backend only");
    int need = 0;
    for (int s = 0; s < p->max_seqs; s++)
        if (d->seq_new[s]) need += mt_kv_seq_blocks_needed(p, s, d->seq_new[s]);
    if (need > p->n_free)
        return mt_error_set(err, MT_ERR_EXHAUSTED, "decode: the step needs %d free KV blocks, the pool has %d", need,
                            p->n_free);
    for (int s = 0; s < p->max_seqs; s++)
        if (d->seq_new[s]) mt_kv_seq_reserve(p, s, d->seq_new[s]);

    mt_model *m = d->m;
    mt_backend *be = d->be;
    const mt_config *cfg = &m->cfg;
    mt_dims dm;
    mt_model_dims(cfg, &dm);
    int N = b->n_rows, n_slots = b->n_slots > 0 ? b->n_slots : 1;
    /* rows in slot order (stable): one run per adapter in every linear */
    int k = 0;
    for (int slot = 0; slot < n_slots; slot++)
        for (int i = 0; i < N; i++)
            if ((b->slot ? b->slot[i] : 0) == slot) d->order[k++] = i;
    MT_ASSERT(k == N);
    int32_t *host_tok = d->row_ks; /* staging before the window starts are written */
    for (int s = 0; s < p->max_seqs; s++) d->seq_new[s] = 0;
    int32_t *pos_of = d->logit_slot; /* caller row → position, staging */
    for (int i = 0; i < N; i++) {
        int s = b->seq[i];
        pos_of[i] = p->len[s] + d->seq_new[s]++;
    }
    for (int j = 0; j < N; j++) {
        int i = d->order[j];
        d->out_row[i] = j;
        host_tok[j] = b->tokens[i];
        d->row_seq[j] = b->seq[i];
        d->row_pos[j] = pos_of[i];
        d->row_slot[j] = b->slot ? b->slot[i] : 0;
    }
    d->dap_on = false;
    for (int j = 0; j < N; j++) {
        d->row_tau[j] = b->dap_threshold ? b->dap_threshold[d->order[j]] : 0.0f;
        d->dap_on |= d->row_tau[j] > 0;
        if (b->adaptive_k) d->row_ak[j] = b->adaptive_k[d->order[j]];
        d->row_kused[j] = 0;
    }
    mt_backend_upload(be, d->tokens, host_tok, (size_t)N * sizeof(int32_t));
    mt_backend_upload(be, d->pos, d->row_pos, (size_t)N * sizeof(int32_t));
    int W = cfg->sliding_window;
    bool window = false;
    for (int j = 0; j < N; j++) {
        int ks = W > 0 ? d->row_pos[j] - W + 1 : 0;
        d->row_ks[j] = ks > 0 ? ks : 0;
        window |= ks > 0;
    }
    if (window) mt_backend_upload(be, d->kv_start, d->row_ks, (size_t)N * sizeof(int32_t));

    mt_lin_ctx c = {.be = be,
                    .train = false,
                    .seed = 0,
                    .scratch = d->s.adapter,
                    .scratch_cap = d->s.adapter_cap,
                    .adapters = b->n_slots > 0 ? b->adapters : NULL,
                    .n_slots = b->n_slots,
                    .row_slot = d->row_slot};
    mt_pass pass = {.train = false,
                    .route_out = b->route_out,
                    .row_ak = b->adaptive_k ? d->row_ak : NULL,
                    .k_used = b->experts_used ? d->row_kused : NULL};
    mt_attn_plan plan = {.paged = true, .pos = d->pos, .kv_start = window ? d->kv_start : NULL, .pool = p, .dec = d};
    mt_acts *a = &d->a;
    a->x_in = a->x_mid = d->x;
    double t_pass = m->prof ? mt_now_seconds() : 0;
    mt_prof_begin(m, dm.L, MT_PROF_EMBEDDING);
    mt_embedding_forward(be, d->tokens, N, m->embed->data, dm.H, d->x);
    if (m->prof) mt_prof_add_(m->prof, 0, 2.0 * N * dm.H * sizeof(float));
    mt_prof_end(m);
    int mi = 0;
    for (int l = 0; l < dm.L; l++) {
        const mt_layer *ly = &m->layers[l];
        mt_layer_forward(m, ly, &c, &pass, a, &d->s, N, &plan, d->x);
        if (ly->moe) {
            mt_router_stats_record(m, be, a, N, d->tpe + (size_t)mi * cfg->n_experts, &d->entropy[mi]);
            mi++;
        }
    }
    for (int i = 0; i < N; i++) p->len[b->seq[i]]++;
    if (b->experts_used)
        for (int j = 0; j < N; j++) b->experts_used[d->order[j]] = d->row_kused[j];
    d->n_rows_last = N;

    int nl = b->n_logits;
    if (nl > 0) {
        for (int q = 0; q < nl; q++) {
            int j = d->out_row[b->logit_rows[q]];
            mt_backend_copy(be, d->xf + (size_t)q * dm.H, d->x + (size_t)j * dm.H, (size_t)dm.H * sizeof(float));
            d->logit_slot[q] = d->row_slot[j];
        }
        mt_prof_begin(m, dm.L, MT_PROF_NORM);
        mt_rmsnorm_forward(be, d->xf, m->final_norm->data, d->xf, d->rstdf, nl, dm.H, cfg->rms_norm_eps);
        mt_prof_norm(m, nl, dm.H);
        mt_prof_end(m);
        c.row_slot = d->logit_slot;
        /* the CPU backend's memory is host memory (mt_model_check_backend): the logits go
         * straight into the caller's buffer */
        mt_prof_begin(m, dm.L, MT_PROF_LM_HEAD);
        mt_lin_forward(m, m->lm_head, &c, d->xf, nl, 0, logits);
        mt_prof_end(m);
    }
    if (m->prof) mt_prof_pass_(m->prof, N, mt_now_seconds() - t_pass);
    return MT_OK;
}
