/* forward.c — the workspace (every activation buffer carved from one allocation sized for
 * B×T up front) and the forward pass: embedding, the layers, the final norm, and the LM head
 * with cross-entropy in row chunks so the [B·T, V] logits are never held at once. Also the
 * load-balancing loss and the router statistics of each MoE layer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model-impl.h"

/* ---- carving ---- */

void *mt_carve(mt_carver *c, size_t bytes) {
    size_t start = (c->off + 63) & ~(size_t)63;
    c->off = start + (bytes ? bytes : 1);
    return c->base ? c->base + start : NULL;
}

#define CF(n) ((float *)mt_carve(cv, (size_t)(n) * sizeof(float)))
#define CI(n) ((int32_t *)mt_carve(cv, (size_t)(n) * sizeof(int32_t)))

static size_t max3(size_t a, size_t b, size_t c) {
    size_t m = a > b ? a : b;
    return m > c ? m : c;
}

void mt_acts_layout(const mt_model *m, mt_acts *a, size_t N, const mt_acts_want *want, mt_carver *cv) {
    const mt_config *cfg = &m->cfg;
    mt_dims d;
    mt_model_dims(cfg, &d);
    size_t NK = N * (size_t)(d.K > 0 ? d.K : 1);
    bool qkn = !cfg->mla && cfg->qk_norm != MT_QK_NORM_NONE;
    int32_t *offsets_host = a->offsets_host;
    /* what selective checkpointing recomputes (mt_layer_recompute_cheap) */
    bool cheap = !want->no_cheap;
    memset(a, 0, sizeof *a);
    a->offsets_host = offsets_host;
    if (cheap) a->xn1 = CF(N * d.H);
    a->rstd1 = CF(N);
    if (cheap || !qkn) a->q = CF(N * d.q_dim);
    if (cfg->mla) {
        if (want->expanded) {
            if (cheap) a->k = CF(N * d.q_dim);
            a->kvb = CF(N * d.kvb_dim);
        }
        if (d.ql > 0) {
            a->qa = CF(N * d.ql);
            a->qa_rstd = CF(N);
            if (cheap) a->qan = CF(N * d.ql);
        }
        a->kva = CF(N * d.kva_dim);
        if (cheap) a->c_raw = CF(N * d.kvl);
        a->c_rstd = CF(N);
        if (cheap) a->cn = CF(N * d.kvl);
    } else {
        if (want->expanded) {
            if (cheap || !qkn) a->k = CF(N * d.kv_dim);
            a->v = CF(N * d.kv_dim);
        }
        if (qkn) {
            a->q_raw = CF(N * d.q_dim);
            a->q_rstd = CF(N * d.nh);
            a->k_raw = CF(N * d.kv_dim);
            a->k_rstd = CF(N * d.nkv);
        }
    }
    a->att = CF(N * d.o_dim);
    a->lse = CF(N * d.nh);
    if (cheap) a->xn2 = CF(N * d.H);
    a->rstd2 = CF(N);
    if (want->dense) {
        a->g = CF(N * d.I);
        a->u = CF(N * d.I);
    }
    if (want->moe) {
        if (want->jitter && cheap) a->xm = CF(N * d.H);
        a->rlogits = CF(N * d.E);
        a->scores = CF(N * d.E);
        a->idx = CI(NK);
        a->w = CF(NK);
        a->offsets = CI(d.E + 1);
        a->src_tok = CI(NK);
        a->src_slot = CI(NK);
        if (want->slots) a->perm_slot = CI(NK);
        if (cheap) a->xp = CF(NK * d.H);
        a->gp = CF(NK * d.Im);
        a->up = CF(NK * d.Im);
        a->yp = CF(NK * d.H);
        if (d.Is > 0) {
            a->sg = CF(N * d.Is);
            a->su = CF(N * d.Is);
            a->ys = CF(N * d.H);
            a->sz = CF(N);
        }
    }
}

size_t mt_ffn_hidden_floats(const mt_model *m, size_t N) {
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    bool any_dense = false, any_moe = false;
    for (int l = 0; l < d.L; l++) {
        if (m->layers[l].moe)
            any_moe = true;
        else
            any_dense = true;
    }
    return max3(any_dense ? N * d.I : 0, any_moe ? N * (size_t)d.K * d.Im : 0, any_moe ? N * d.Is : 0);
}

/* Assigns every buffer (or, with cv->base NULL, only measures them). */
static void ws_layout(mt_workspace *ws, mt_carver *cv) {
    const mt_model *m = ws->m;
    const mt_config *cfg = &m->cfg;
    mt_dims d;
    mt_model_dims(cfg, &d);
    size_t N = (size_t)ws->N, NK = N * (size_t)(d.K > 0 ? d.K : 1);
    bool qkn = !cfg->mla && cfg->qk_norm != MT_QK_NORM_NONE;
    bool any_dense = false, any_moe = false;
    for (int l = 0; l < d.L; l++) {
        if (m->layers[l].moe)
            any_moe = true;
        else
            any_dense = true;
    }

    ws->tokens = CI(N);
    ws->targets = CI(N);
    ws->pos = CI(N);
    ws->kv_start = CI(N);
    float *shared_x = ws->train ? NULL : CF(N * d.H);
    bool layers = ws->ckpt == MT_CHECKPOINTING_LAYERS, sel = ws->ckpt == MT_CHECKPOINTING_SELECTIVE;
    for (int s = 0; s < ws->n_sets; s++) {
        mt_acts *a = &ws->acts[s];
        /* a training set serves layer s only; the shared inference or LAYERS set serves every layer */
        bool own = ws->train && !layers;
        mt_acts_want want = {.expanded = true,
                             .dense = own ? !m->layers[s].moe : any_dense,
                             .moe = own ? m->layers[s].moe : any_moe,
                             .jitter = ws->train,
                             .no_cheap = sel};
        mt_acts_layout(m, a, N, &want, cv);
        if (layers) {
            a->x_in = NULL; /* the saved input of the layer it serves, set per layer */
            a->x_mid = CF(N * d.H);
        } else if (ws->train) {
            a->x_in = CF(N * d.H);
            a->x_mid = CF(N * d.H);
        } else {
            a->x_in = a->x_mid = shared_x;
        }
    }
    if (layers)
        for (int l = 0; l < d.L; l++) ws->x_layer[l] = CF(N * d.H);
    if (sel) {
        /* one copy of what is recomputed, written by each layer's forward and again before its backward */
        float *xn1 = CF(N * d.H), *xn2 = CF(N * d.H);
        float *q = NULL, *k = NULL, *qan = NULL, *c_raw = NULL, *cn = NULL, *xm = NULL, *xp = NULL;
        if (cfg->mla) {
            k = CF(N * d.q_dim);
            if (d.ql > 0) qan = CF(N * d.ql);
            c_raw = CF(N * d.kvl);
            cn = CF(N * d.kvl);
        } else if (qkn) {
            q = CF(N * d.q_dim);
            k = CF(N * d.kv_dim);
        }
        if (any_moe) {
            xm = CF(N * d.H);
            xp = CF(NK * d.H);
        }
        for (int l = 0; l < d.L; l++) {
            mt_acts *a = &ws->acts[l];
            a->xn1 = xn1;
            a->xn2 = xn2;
            if (cfg->mla) {
                a->k = k;
                a->qan = qan;
                a->c_raw = c_raw;
                a->cn = cn;
            } else if (qkn) {
                a->q = q;
                a->k = k;
            }
            if (m->layers[l].moe) {
                a->xm = xm;
                a->xp = xp;
            }
        }
    }
    ws->x_final = ws->train ? CF(N * d.H) : shared_x;
    ws->xf = CF(N * d.H);
    ws->rstdf = CF(N);
    size_t size_h = mt_ffn_hidden_floats(m, N);
    ws->s.h = CF(size_h);
    ws->s.tmp = CF(N * d.H);
    ws->s.adapter = CF(ws->s.adapter_cap);
    ws->logits = CF((size_t)ws->chunk * d.V);
    ws->chunk_loss = CF(ws->chunk);
    ws->token_loss = CF(N);
    if (!ws->train) return;

    mt_grads *g = &ws->g;
    g->dres = CF(N * d.H);
    g->dxn = CF(N * d.H);
    g->dq = CF(N * d.q_dim);
    g->datt = CF(N * d.o_dim);
    if (cfg->mla) {
        g->dk = CF(N * d.q_dim);
        if (d.ql > 0) {
            g->dqa = CF(N * d.ql);
            g->dqan = CF(N * d.ql);
        }
        g->dkva = CF(N * d.kva_dim);
        g->dc = CF(N * d.kvl);
        g->dcn = CF(N * d.kvl);
        g->dkvb = CF(N * d.kvb_dim);
    } else {
        g->dk = CF(N * d.kv_dim);
        g->dv = CF(N * d.kv_dim);
        if (qkn) {
            g->dq_raw = CF(N * d.q_dim);
            g->dk_raw = CF(N * d.kv_dim);
        }
    }
    g->dh = CF(size_h);
    g->dg = CF(size_h);
    g->du = CF(size_h);
    if (any_moe) {
        g->dxm = CF(N * d.H);
        g->dxp = CF(NK * d.H);
        g->dyp = CF(NK * d.H);
        g->dw = CF(NK);
        g->drl = CF(N * d.E);
        g->dsc = CF(N * d.E);
        g->drl_aux = CF(N * d.E);
        if (d.Is > 0) {
            g->dys = CF(N * d.H);
            g->dsz = CF(N);
        }
    }
    ws->dxf = CF(N * d.H);
}

static mt_status ws_init(mt_workspace **out, mt_model *m, int B, int T, bool train, int max_rank, mt_checkpointing ck,
                         mt_error *err) {
    *out = NULL;
    if (ck != MT_CHECKPOINTING_NONE && ck != MT_CHECKPOINTING_LAYERS && ck != MT_CHECKPOINTING_SELECTIVE)
        return mt_error_set(err, MT_ERR_INVALID, "workspace: checkpointing %d is not none, layers or selective", (int)ck);
    if (B <= 0 || T <= 0 || (int64_t)B * T > INT32_MAX / 64)
        return mt_error_set(err, MT_ERR_INVALID, "workspace: batch %d x %d is not a usable size", B, T);
    if (T > m->rope_len)
        return mt_error_set(err, MT_ERR_INVALID, "workspace: sequence length %d exceeds max_position_embeddings %d", T,
                            m->rope_len);
    mt_status st = mt_model_check_backend(m, err);
    if (st) return st;
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    mt_workspace *ws = mt_xcalloc(1, sizeof *ws);
    ws->m = m;
    ws->B = B;
    ws->T = T;
    ws->N = B * T;
    ws->train = train;
    ws->ckpt = train ? ck : MT_CHECKPOINTING_NONE;
    ws->n_sets = train && ws->ckpt != MT_CHECKPOINTING_LAYERS ? d.L : 1;
    ws->acts = mt_xcalloc((size_t)ws->n_sets, sizeof(mt_acts));
    if (ws->ckpt == MT_CHECKPOINTING_LAYERS) ws->x_layer = mt_xcalloc((size_t)d.L, sizeof(float *));
    /* LM-head chunks of at most ~32 MB of logits, 16..256 rows */
    int chunk = (int)((8u << 20) / (unsigned)d.V);
    if (chunk > 256) chunk = 256;
    if (chunk < 16) chunk = 16;
    if (chunk > ws->N) chunk = ws->N;
    ws->chunk = chunk;
    ws->max_rank = max_rank > 0 ? max_rank : MT_DEFAULT_MAX_RANK;
    ws->s.adapter_cap = mt_adapter_scratch_floats(m, ws->N, ws->max_rank);

    int E = d.E > 0 ? d.E : 1;
    ws->offsets_host = mt_xcalloc((size_t)ws->n_sets * (size_t)(E + 1), sizeof(int32_t));
    for (int s = 0; s < ws->n_sets; s++) ws->acts[s].offsets_host = ws->offsets_host + (size_t)s * (E + 1);
    mt_carver cv = {0};
    ws_layout(ws, &cv);
    ws->bytes = cv.off;
    ws->block = mt_backend_alloc(m->be, ws->bytes);
    if (!ws->block) {
        size_t bytes = ws->bytes;
        free(ws->offsets_host);
        free(ws->x_layer);
        free(ws->acts);
        free(ws);
        return mt_error_set(err, MT_ERR_NOMEM, "workspace: cannot allocate %.1f MB of activations for %d x %d",
                            (double)bytes / 1e6, B, T);
    }
    cv.base = ws->block;
    cv.off = 0;
    ws_layout(ws, &cv);
    ws->kv_host = mt_xcalloc((size_t)ws->N, sizeof(int32_t));
    ws->tpe = mt_xcalloc((size_t)(d.n_moe > 0 ? d.n_moe : 1) * (size_t)E, sizeof(int32_t));
    ws->entropy = mt_xcalloc((size_t)(d.n_moe > 0 ? d.n_moe : 1), sizeof(double));
    ws->aux_cnt = mt_xcalloc((size_t)E, sizeof(double));
    ws->aux_psum = mt_xcalloc((size_t)E, sizeof(double));
    if (ws->ckpt == MT_CHECKPOINTING_LAYERS && d.n_moe > 0)
        ws->route_keep = mt_xcalloc((size_t)d.L * ws->N * d.K, sizeof(int32_t));
    *out = ws;
    return MT_OK;
}

mt_status mt_workspace_init(mt_workspace **out, mt_model *m, int B, int T, bool train, int max_rank, mt_error *err) {
    return ws_init(out, m, B, T, train, max_rank, MT_CHECKPOINTING_NONE, err);
}

mt_status mt_workspace_init_checkpointed(mt_workspace **out, mt_model *m, int B, int T, int max_rank,
                                         mt_checkpointing ck, mt_error *err) {
    return ws_init(out, m, B, T, true, max_rank, ck, err);
}

void mt_workspace_free(mt_workspace *ws) {
    if (!ws) return;
    if (ws->block) mt_backend_release(ws->m->be, ws->block);
    free(ws->acts);
    free(ws->x_layer);
    free(ws->route_keep);
    free(ws->offsets_host);
    free(ws->kv_host);
    free(ws->tpe);
    free(ws->entropy);
    free(ws->aux_cnt);
    free(ws->aux_psum);
    free(ws);
}

size_t mt_workspace_bytes(const mt_workspace *ws) { return ws->bytes; }

const float *mt_workspace_input_grad(const mt_workspace *ws) { return ws->train ? ws->g.dres : NULL; }

const float *mt_workspace_hidden(const mt_workspace *ws, int i) {
    int L = ws->m->cfg.n_layers;
    if (!ws->fwd_done || i < 0 || i > L) return NULL;
    /* the final (normed) states exist in every workspace; the layers' inputs only in training ones */
    if (i == L) return ws->xf;
    if (ws->x_layer) return ws->x_layer[i];
    return ws->train ? ws->acts[i].x_in : NULL;
}

bool mt_router_stats_at(const mt_model *m, const int32_t *tpe, const double *entropy, int i, mt_router_stats *out) {
    int mi = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        if (!m->layers[l].moe) continue;
        if (mi == i) {
            out->layer = l;
            out->entropy = entropy[mi];
            out->tokens_per_expert = tpe + (size_t)mi * m->cfg.n_experts;
            return true;
        }
        mi++;
    }
    return false;
}

bool mt_workspace_router_stats(const mt_workspace *ws, int i, mt_router_stats *out) {
    return mt_router_stats_at(ws->m, ws->tpe, ws->entropy, i, out);
}

void mt_router_stats_record(const mt_model *m, mt_backend *be, const mt_acts *a, int N, int32_t *tpe, double *entropy) {
    const mt_config *cfg = &m->cfg;
    int E = cfg->n_experts;
    for (int e = 0; e < E; e++) tpe[e] = a->offsets_host[e + 1] - a->offsets_host[e];
    double ent = 0;
    bool softmax = cfg->scoring == MT_ROUTE_SCORING_SOFTMAX;
    int nt = mt_loop_threads(be, (size_t)N * E);
#pragma omp parallel for reduction(+ : ent) schedule(static) num_threads(nt)
    for (int t = 0; t < N; t++) {
        const float *sc = a->scores + (size_t)t * E;
        double tot = 0, h = 0;
        if (!softmax)
            for (int e = 0; e < E; e++) tot += sc[e];
        for (int e = 0; e < E; e++) {
            double p = softmax ? sc[e] : (tot > 0 ? sc[e] / tot : 0);
            if (p > 0) h -= p * log(p);
        }
        ent += h;
    }
    *entropy = N > 0 ? ent / N : 0;
}

mt_acts *mt_ws_layer_acts(mt_workspace *ws, int l) { return &ws->acts[ws->n_sets > 1 ? l : 0]; }

float *mt_ws_layer_input(mt_workspace *ws, int l) {
    if (l >= ws->m->cfg.n_layers) return ws->x_final;
    if (ws->x_layer) return ws->x_layer[l];
    return ws->acts[ws->n_sets > 1 ? l : 0].x_in;
}

void mt_ws_lin_ctx(mt_workspace *ws, bool train, uint64_t seed, mt_lin_ctx *c) {
    c->be = ws->m->be;
    c->train = train;
    c->seed = seed;
    c->scratch = ws->s.adapter;
    c->scratch_cap = ws->s.adapter_cap;
    /* one adapter (or none) for every row of a training or evaluation pass */
    c->adapters = ws->opts.adapter ? &ws->opts.adapter : NULL;
    c->n_slots = ws->opts.adapter ? 1 : 0;
    c->row_slot = NULL;
}

/* ---- router statistics and the load-balancing loss (host side) ---- */

/* transformers' load_balancing_loss_func (Mixtral, Qwen2/3-MoE, OLMoE) works on the router
 * logits of all MoE layers concatenated; DeepSeek-V2 uses its own per-layer loss. */
static bool aux_is_switch(const mt_config *cfg) { return cfg->family != MT_FAMILY_DEEPSEEK_V2; }

static void softmax_row(const float *z, int E, double *p) {
    double mx = z[0];
    for (int e = 1; e < E; e++)
        if (z[e] > mx) mx = z[e];
    double s = 0;
    for (int e = 0; e < E; e++) s += (p[e] = exp((double)z[e] - mx));
    for (int e = 0; e < E; e++) p[e] /= s;
}

/* top-k of a row by value, ties to the lower index (torch.topk on the CPU) */
static void topk_row(const float *z, int E, int K, int32_t *out) {
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int i = 0; i < j; i++) taken |= out[i] == e;
            if (!taken && (best < 0 || z[e] > z[best])) best = e;
        }
        out[j] = best;
    }
}

static void layer_router_stats(mt_workspace *ws, int mi, const mt_acts *a, int N) {
    const mt_config *cfg = &ws->m->cfg;
    int E = cfg->n_experts, K = cfg->top_k;
    mt_router_stats_record(ws->m, ws->m->be, a, N, ws->tpe + (size_t)mi * E, &ws->entropy[mi]);
    if (!aux_is_switch(cfg)) return;
    double *p = mt_xmalloc((size_t)E * sizeof(double));
    int32_t *top = mt_xmalloc((size_t)K * sizeof(int32_t));
    for (int t = 0; t < N; t++) {
        const float *z = a->rlogits + (size_t)t * E;
        softmax_row(z, E, p);
        for (int e = 0; e < E; e++) ws->aux_psum[e] += p[e];
        /* load_balancing_loss_func counts the top-k of softmax(logits), whatever the
         * family routes with (DeepSeek-V3's bias and groups play no part in it) */
        topk_row(z, E, K, top);
        for (int j = 0; j < K; j++) ws->aux_cnt[top[j]] += 1;
    }
    free(p);
    free(top);
}

/* DeepSeek-V2 (the paper's expert-level balance loss, DeepSeek's MoEGate code): seq_aux:
 * ce_{b,e} = count_{b,e}·E/(T·k), aux = mean_b Σ_e ce_{b,e}·mean_t s_{b,t,e}; otherwise f_e = count_e/(N·k),
 * aux = E·Σ_e f_e·mean_t s_{t,e}. Counts are of the experts actually chosen. With dsc it
 * writes coef·∂aux/∂s into dsc [N, E] instead of returning the value. */
static double v2_aux(const mt_config *cfg, const mt_acts *a, int B, int T, float coef, float *dsc) {
    int E = cfg->n_experts, K = cfg->top_k, N = B * T;
    int groups = cfg->seq_aux ? B : 1, rows = cfg->seq_aux ? T : N;
    double *cnt = mt_xcalloc((size_t)E, sizeof(double)), *ms = mt_xcalloc((size_t)E, sizeof(double));
    double aux = 0;
    for (int b = 0; b < groups; b++) {
        memset(cnt, 0, (size_t)E * sizeof(double));
        memset(ms, 0, (size_t)E * sizeof(double));
        for (int t = b * rows; t < (b + 1) * rows; t++) {
            for (int j = 0; j < K; j++) cnt[a->idx[(size_t)t * K + j]] += 1;
            for (int e = 0; e < E; e++) ms[e] += a->scores[(size_t)t * E + e];
        }
        for (int e = 0; e < E; e++) {
            double ce = cnt[e] * E / ((double)rows * K);
            aux += ce * ms[e] / rows / groups;
            if (dsc)
                for (int t = b * rows; t < (b + 1) * rows; t++) dsc[(size_t)t * E + e] = (float)(coef * ce / rows / groups);
        }
    }
    free(cnt);
    free(ms);
    return aux;
}

/* ∂(coef·aux)/∂(router logits) of the Switch-style loss for one layer: the loss sees
 * p = softmax(logits) with ∂aux/∂p_{t,e} = E·f_e/(L·N). */
static void switch_aux_grad(const mt_workspace *ws, const mt_acts *a, float coef, float *drl) {
    const mt_config *cfg = &ws->m->cfg;
    int E = cfg->n_experts, N = ws->fN;
    mt_dims d;
    mt_model_dims(cfg, &d);
    double rows = (double)d.n_moe * N;
    double *gsc = mt_xmalloc((size_t)E * sizeof(double));
    for (int e = 0; e < E; e++) gsc[e] = coef * E * (ws->aux_cnt[e] / rows) / rows;
    int nt = mt_loop_threads(ws->m->be, (size_t)N * E);
#pragma omp parallel num_threads(nt)
    {
        double *p = mt_xmalloc((size_t)E * sizeof(double));
#pragma omp for schedule(static)
        for (int t = 0; t < N; t++) {
            softmax_row(a->rlogits + (size_t)t * E, E, p);
            double dot = 0;
            for (int e = 0; e < E; e++) dot += p[e] * gsc[e];
            for (int e = 0; e < E; e++) drl[(size_t)t * E + e] = (float)(p[e] * (gsc[e] - dot));
        }
        free(p);
    }
    free(gsc);
}

/* Extra router gradients from the aux loss for a layer (backward.c): logits (Switch) or
 * scores (DeepSeek-V2). Leaves both NULL when the aux loss is off. */
void mt_aux_backward(mt_workspace *ws, const mt_acts *a, const float **dsc, const float **drl) {
    *dsc = *drl = NULL;
    float coef = ws->opts.aux_coef;
    if (coef == 0) return;
    const mt_config *cfg = &ws->m->cfg;
    if (aux_is_switch(cfg)) {
        switch_aux_grad(ws, a, coef, ws->g.drl_aux);
        *drl = ws->g.drl_aux;
    } else {
        v2_aux(cfg, a, ws->fB, ws->fT, coef, ws->g.dsc);
        *dsc = ws->g.dsc;
    }
}

/* ---- the forward pass ---- */

static mt_status check_batch(const mt_model *m, const mt_workspace *ws, const mt_batch *b, mt_error *err) {
    if (!b || !b->tokens || b->B <= 0 || b->T <= 0)
        return mt_error_set(err, MT_ERR_INVALID, "forward: empty batch");
    if ((int64_t)b->B * b->T > ws->N || b->T > m->rope_len)
        return mt_error_set(err, MT_ERR_INVALID,
                            "forward: batch %d x %d does not fit the workspace (%d x %d) or max_position_embeddings %d",
                            b->B, b->T, ws->B, ws->T, m->rope_len);
    int N = b->B * b->T, V = m->cfg.vocab_size;
    for (int i = 0; i < N; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= V)
            return mt_error_set(err, MT_ERR_INVALID, "forward: token %d at [%d, %d] is outside the vocabulary (%d)",
                                b->tokens[i], i / b->T, i % b->T, V);
        if (b->targets && b->targets[i] != MT_IGNORE_INDEX && (b->targets[i] < 0 || b->targets[i] >= V))
            return mt_error_set(err, MT_ERR_INVALID, "forward: target %d at [%d, %d] is outside the vocabulary (%d)",
                                b->targets[i], i / b->T, i % b->T, V);
        if (b->pos && (b->pos[i] < 0 || b->pos[i] >= m->rope_len))
            return mt_error_set(err, MT_ERR_INVALID, "forward: position %d at [%d, %d] is outside [0, %d)", b->pos[i],
                                i / b->T, i % b->T, m->rope_len);
        if (b->kv_start && (b->kv_start[i] < 0 || b->kv_start[i] > i % b->T))
            return mt_error_set(err, MT_ERR_INVALID,
                                "forward: kv_start %d at [%d, %d] must be in [0, %d] (a query sees at least itself)",
                                b->kv_start[i], i / b->T, i % b->T, i % b->T);
    }
    return MT_OK;
}

mt_status mt_model_forward(mt_model *m, mt_workspace *ws, const mt_batch *batch, const mt_forward_opts *opts,
                           mt_forward_result *res, mt_error *err) {
    static const mt_forward_opts defaults = {0};
    if (!opts) opts = &defaults;
    if (ws->m != m) return mt_error_set(err, MT_ERR_INVALID, "forward: workspace belongs to another model");
    mt_status st = check_batch(m, ws, batch, err);
    if (!st) st = mt_adapter_check(m, opts->adapter, ws->max_rank, "forward", err);
    if (st) return st;
    mt_backend *be = m->be;
    const mt_config *cfg = &m->cfg;
    mt_dims d;
    mt_model_dims(cfg, &d);
    int B = batch->B, T = batch->T, N = B * T;
    if ((opts->route_out || opts->route_in || opts->topk_share_out) && mt_backend_get_kind(be) != MT_BACKEND_CPU)
        return mt_error_set(err, MT_ERR_UNSUPPORTED,
                            "forward: routing record, replay and shares run on the CPU backend only");
    if (opts->route_in)
        for (size_t i = 0, n = (size_t)d.L * N * d.K; i < n; i++)
            if (opts->route_in[i] >= d.E)
                return mt_error_set(err, MT_ERR_INVALID, "forward: replayed expert %d of %d", opts->route_in[i], d.E);
    if (opts->temperature < 0 || !isfinite(opts->temperature))
        return mt_error_set(err, MT_ERR_INVALID, "forward: temperature %g", (double)opts->temperature);
    ws->fwd_done = false;
    ws->fB = B;
    ws->fT = T;
    ws->fN = N;
    ws->opts = *opts;
    ws->opts.logits_out = NULL;
    ws->opts.route_out = NULL;
    ws->opts.route_in = NULL;
    ws->opts.topk_share_out = NULL;
    ws->has_targets = batch->targets != NULL;
    /* LAYERS recomputes the routing in the backward: the replayed experts must be there then */
    ws->route_kept = ws->route_keep && opts->route_in;
    if (ws->route_kept) memcpy(ws->route_keep, opts->route_in, (size_t)d.L * N * d.K * sizeof(int32_t));

    /* the batch, on the device */
    mt_backend_upload(be, ws->tokens, batch->tokens, (size_t)N * sizeof(int32_t));
    if (batch->targets) mt_backend_upload(be, ws->targets, batch->targets, (size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) ws->kv_host[i] = batch->pos ? batch->pos[i] : i % T;
    mt_backend_upload(be, ws->pos, ws->kv_host, (size_t)N * sizeof(int32_t));
    /* packed documents and the sliding window both bound the first visible key */
    int W = cfg->sliding_window;
    ws->has_kv_start = batch->kv_start != NULL || (W > 0 && W < T);
    if (ws->has_kv_start) {
        for (int i = 0; i < N; i++) {
            int t = i % T, ks = batch->kv_start ? batch->kv_start[i] : 0;
            if (W > 0 && t - W + 1 > ks) ks = t - W + 1;
            ws->kv_host[i] = ks;
        }
        mt_backend_upload(be, ws->kv_start, ws->kv_host, (size_t)N * sizeof(int32_t));
    }
    const int32_t *kv_start = ws->has_kv_start ? ws->kv_start : NULL;

    mt_lin_ctx c;
    mt_ws_lin_ctx(ws, opts->train, opts->seed, &c);
    mt_pass pass = {.train = opts->train, .seed = opts->seed, .noise = opts->train ? opts->router_noise : 0,
                    .route_out = opts->route_out, .route_in = opts->route_in, .share_out = opts->topk_share_out};
    if (!ws->train) pass.noise = 0;
    memset(ws->aux_cnt, 0, (size_t)(d.E > 0 ? d.E : 1) * sizeof(double));
    memset(ws->aux_psum, 0, (size_t)(d.E > 0 ? d.E : 1) * sizeof(double));
    double v2_total = 0;

    double t_pass = m->prof ? mt_now_seconds() : 0;
    mt_prof_begin(m, d.L, MT_PROF_EMBEDDING);
    mt_embedding_forward(be, ws->tokens, N, m->embed->data, d.H, mt_ws_layer_input(ws, 0));
    if (m->prof) mt_prof_add_(m->prof, 0, 2.0 * N * d.H * sizeof(float));
    mt_prof_end(m);
    mt_attn_plan plan = {.paged = false, .B = B, .T = T, .pos = ws->pos, .kv_start = kv_start};
    int mi = 0;
    for (int l = 0; l < d.L; l++) {
        const mt_layer *ly = &m->layers[l];
        mt_acts *a = mt_ws_layer_acts(ws, l);
        if (ws->x_layer) a->x_in = ws->x_layer[l];
        float *x_out = mt_ws_layer_input(ws, l + 1);
        mt_layer_forward(m, ly, &c, &pass, a, &ws->s, N, &plan, x_out);
        if (ly->moe) {
            layer_router_stats(ws, mi++, a, N);
            if (!aux_is_switch(cfg)) v2_total += v2_aux(cfg, a, B, T, 0, NULL);
        }
    }
    mt_prof_begin(m, d.L, MT_PROF_NORM);
    mt_rmsnorm_forward(be, ws->x_final, m->final_norm->data, ws->xf, ws->rstdf, N, d.H, cfg->rms_norm_eps);
    mt_prof_norm(m, N, d.H);
    mt_prof_end(m);

    /* LM head and cross-entropy, chunk by chunk */
    for (int r0 = 0; r0 < N; r0 += ws->chunk) {
        int rows = N - r0 < ws->chunk ? N - r0 : ws->chunk;
        mt_prof_begin(m, d.L, MT_PROF_LM_HEAD);
        mt_lin_forward(m, m->lm_head, &c, ws->xf + (size_t)r0 * d.H, rows, (uint64_t)r0, ws->logits);
        mt_prof_end(m);
        if (opts->logits_out)
            mt_backend_download(be, opts->logits_out + (size_t)r0 * d.V, ws->logits, (size_t)rows * d.V * sizeof(float));
        if (opts->temperature > 0 && opts->temperature != 1.0f)
            mt_scale(be, ws->logits, 1.0f / opts->temperature, (size_t)rows * d.V);
        if (batch->targets) mt_cross_entropy(be, ws->logits, ws->targets + r0, rows, d.V, 0.0f, ws->token_loss + r0);
    }
    if (!batch->targets) mt_backend_memset0(be, ws->token_loss, (size_t)N * sizeof(float));

    double loss_sum = 0;
    int64_t n_tok = 0;
    for (int i = 0; i < N; i++) {
        loss_sum += ws->token_loss[i];
        if (batch->targets && batch->targets[i] != MT_IGNORE_INDEX) n_tok++;
    }
    double aux = 0;
    if (d.n_moe > 0) {
        if (aux_is_switch(cfg)) {
            double rows = (double)d.n_moe * N;
            for (int e = 0; e < d.E; e++) aux += (ws->aux_cnt[e] / rows) * (ws->aux_psum[e] / rows);
            aux *= d.E;
        } else {
            aux = v2_total;
        }
    }
    ws->n_tokens = n_tok;
    ws->aux_loss = aux;
    ws->fwd_done = true;
    if (m->prof) mt_prof_pass_(m->prof, N, mt_now_seconds() - t_pass);
    if (res) {
        res->loss_sum = loss_sum;
        res->n_tokens = n_tok;
        res->aux_loss = aux;
        res->token_loss = ws->token_loss;
    }
    return MT_OK;
}
