/* moe.c — the feed-forward half of a decoder layer: the dense SwiGLU MLP, and the mixture of
 * experts (router jitter, routing, grouping tokens by expert so each expert is one GEMM over
 * its rows, weighted scatter back, shared expert(s) with Qwen2's sigmoid gate). Forward and
 * backward. */
#include <string.h>

#include "model-impl.h"

static void zero(mt_backend *be, void *p, size_t bytes) { mt_backend_memset0(be, p, bytes); }

void mt_route_args_fill(const mt_model *m, const mt_layer *ly, int n_tok, mt_route_args *ra) {
    const mt_config *cfg = &m->cfg;
    memset(ra, 0, sizeof *ra);
    ra->n_tok = n_tok;
    ra->n_expert = cfg->n_experts;
    ra->top_k = cfg->top_k;
    ra->scoring = cfg->scoring;
    ra->method = cfg->route_method;
    ra->n_group = cfg->n_group > 0 ? cfg->n_group : 1;
    ra->topk_group = cfg->topk_group > 0 ? cfg->topk_group : ra->n_group;
    ra->bias = ly->router_bias ? ly->router_bias->data : NULL;
    ra->norm = cfg->route_norm;
    ra->scale = cfg->routed_scaling_factor != 0 ? cfg->routed_scaling_factor : 1.0f;
}

/* Mixtral's jitter (MixtralSparseMoeBlock): the MoE block's input is multiplied in place by
 * U(1−ε, 1+ε) before the router, so the experts (and here the shared expert too) see the
 * jittered input as well. A counter-based hash makes the factors reproducible in backward. */
float mt_jitter(uint64_t seed, int layer, uint64_t i, float eps) {
    uint64_t key = mt_hash_u64(seed ^ 0x6a09e667f3bcc909ULL, (uint64_t)layer);
    return 1.0f - eps + 2.0f * eps * mt_hash_float(key, i);
}

static bool jitter_on(const mt_pass *p) { return p->train && p->noise > 0; }

static void apply_jitter(const mt_backend *be, const mt_pass *p, int layer, const float *x, float *xj, size_t n) {
    long long nn = (long long)n;
    int nt = mt_loop_threads(be, n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long long i = 0; i < nn; i++) xj[i] = x[i] * mt_jitter(p->seed, layer, (uint64_t)i, p->noise);
}

static void jitter_backward(const mt_backend *be, const mt_pass *p, int layer, const float *dxj, float *dx,
                            size_t n) {
    long long nn = (long long)n;
    int nt = mt_loop_threads(be, n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long long i = 0; i < nn; i++) dx[i] += dxj[i] * mt_jitter(p->seed, layer, (uint64_t)i, p->noise);
}

/* The context of the expert GEMMs: rows are (token, slot) pairs grouped by expert, so a
 * multi-adapter pass maps each permuted row to its token's adapter slot. Rows of one expert
 * stay in token order, so tokens sorted by slot keep their runs. */
static void expert_ctx(const mt_lin_ctx *c, mt_acts *a, int NK, mt_lin_ctx *ce) {
    *ce = *c;
    if (!c->row_slot) return;
    for (int r = 0; r < NK; r++) a->perm_slot[r] = c->row_slot[a->src_tok[r]];
    ce->row_slot = a->perm_slot;
}

/* ---- the routed experts' GEMMs ----
 * Rows are (token, slot) pairs grouped by expert (a->xp); expert e owns rows off[e] ..
 * off[e+1]−1, and the row index in this permuted space keys dropout and adapter slots. */

static bool g_expert_loop;

void mt_moe_set_expert_loop(bool on) { g_expert_loop = on; }

static bool g_dispatch_dropped;

void mt_moe_set_dispatch_dropped(bool on) { g_dispatch_dropped = on; }

/* Mean rows per expert from which the per-expert loop is kept: there each expert's sgemm is
 * big enough to use both threads well, and the grouped call measured slower (tiny base, 8
 * experts of ~500 rows: 0.83x the loop's tokens/s; docs/performance.md). The grouped op wins
 * where experts are many and thin (64 experts of 64 rows: 2.6x; decode: 4x). The choice
 * depends on the shapes alone. */
#define GROUPED_MAX_MEAN_ROWS 256

static bool grouped_on(const mt_backend *be, int NK, int E) {
    return !g_expert_loop && mt_backend_supports(be, MT_OP_GROUPED_MATMUL) &&
           (int64_t)NK < (int64_t)GROUPED_MAX_MEAN_ROWS * E;
}

/* The reference: one mt_lin_forward / mt_lin_backward per expert and projection (also the path
 * of a backend without the grouped op). */
static void experts_forward_loop(mt_model *m, const mt_layer *ly, const mt_lin_ctx *ce, mt_acts *a, mt_scratch *s,
                                 const mt_dims *d, const int32_t *off, int NK) {
    for (int e = 0; e < d->E; e++) {
        int r0 = off[e], n = off[e + 1] - off[e];
        if (n <= 0) continue;
        mt_lin_forward(m, ly->exp_gate[e], ce, a->xp + (size_t)r0 * d->H, n, (uint64_t)r0, a->gp + (size_t)r0 * d->Im);
        mt_lin_forward(m, ly->exp_up[e], ce, a->xp + (size_t)r0 * d->H, n, (uint64_t)r0, a->up + (size_t)r0 * d->Im);
    }
    mt_swiglu_forward(ce->be, a->gp, a->up, s->h, (size_t)NK * d->Im);
    for (int e = 0; e < d->E; e++) {
        int r0 = off[e], n = off[e + 1] - off[e];
        if (n <= 0) continue;
        mt_lin_forward(m, ly->exp_down[e], ce, s->h + (size_t)r0 * d->Im, n, (uint64_t)r0, a->yp + (size_t)r0 * d->H);
    }
}

static void experts_backward_loop(mt_model *m, const mt_layer *ly, const mt_lin_ctx *ce, mt_acts *a, mt_scratch *s,
                                  mt_grads *g, const mt_dims *d, const int32_t *off, int NK) {
    mt_backend *be = ce->be;
    size_t nh = (size_t)NK * d->Im;
    for (int e = 0; e < d->E; e++) {
        int r0 = off[e], n = off[e + 1] - off[e];
        if (n <= 0) continue;
        mt_lin_backward(m, ly->exp_down[e], ce, s->h + (size_t)r0 * d->Im, g->dyp + (size_t)r0 * d->H, n,
                        (uint64_t)r0, g->dh + (size_t)r0 * d->Im);
    }
    zero(be, g->dg, nh * sizeof(float));
    zero(be, g->du, nh * sizeof(float));
    mt_swiglu_backward(be, g->dh, a->gp, a->up, g->dg, g->du, nh);
    zero(be, g->dxp, (size_t)NK * d->H * sizeof(float));
    for (int e = 0; e < d->E; e++) {
        int r0 = off[e], n = off[e + 1] - off[e];
        if (n <= 0) continue;
        const float *xp = a->xp + (size_t)r0 * d->H;
        float *dxp = g->dxp + (size_t)r0 * d->H;
        mt_lin_backward(m, ly->exp_gate[e], ce, xp, g->dg + (size_t)r0 * d->Im, n, (uint64_t)r0, dxp);
        mt_lin_backward(m, ly->exp_up[e], ce, xp, g->du + (size_t)r0 * d->Im, n, (uint64_t)r0, dxp);
    }
}

/* Experts per grouped call: the weight tables live on the stack (the model keeps no per-layer
 * arrays of them), so a layer of more experts (DeepSeek-V3's 256) takes a few calls. */
#define GROUP_CHUNK 128

/* The weights of experts e0 .. e0+n−1 of one projection, as the grouped op takes them. */
typedef struct expert_weights {
    const float *f32[GROUP_CHUNK];
    mt_lowp_weight lowp[GROUP_CHUNK];
    float *dw[GROUP_CHUNK];
    bool any_dw;
} expert_weights;

static void expert_weights_fill(mt_linear *const *L, int e0, int n, expert_weights *w, mt_grouped_proj *p) {
    w->any_dw = false;
    for (int i = 0; i < n; i++) {
        const mt_param *wt = L[e0 + i]->weight;
        w->f32[i] = wt->dtype == MT_DTYPE_F32 ? wt->data : NULL;
        if (!w->f32[i]) mt_param_lowp(wt, &w->lowp[i]);
        w->dw[i] = wt->grad;
        w->any_dw |= wt->grad != NULL;
    }
    *p = (mt_grouped_proj){.out = L[e0]->out, .f32 = w->f32, .lowp = w->lowp, .dw = w->any_dw ? w->dw : NULL};
}

/* What mt_lin_forward adds after its base GEMM, for each expert's rows: the bias, the adapters'
 * deltas (one run per adapter slot) and the profiler's count of the base GEMM. */
static void experts_after_forward(mt_model *m, mt_linear *const *L, const mt_lin_ctx *ce, const float *x, float *y,
                                  int E, const int32_t *off) {
    for (int e = 0; e < E; e++) {
        int r0 = off[e], n = off[e + 1] - off[e];
        if (n <= 0) continue;
        if (m->prof) mt_prof_linear_(m->prof, L[e], n);
        float *ye = y + (size_t)r0 * L[e]->out;
        if (L[e]->bias) mt_add_bias(ce->be, ye, L[e]->bias->data, n, L[e]->out);
        mt_lin_delta_forward(m, L[e], ce, x + (size_t)r0 * L[e]->in, n, (uint64_t)r0, ye);
    }
}

static void experts_after_backward(mt_model *m, mt_linear *const *L, const mt_lin_ctx *ce, const float *x,
                                   const float *dy, float *dx, int E, const int32_t *off) {
    for (int e = 0; e < E; e++) {
        int r0 = off[e], n = off[e + 1] - off[e];
        if (n <= 0) continue;
        const float *dye = dy + (size_t)r0 * L[e]->out;
        if (L[e]->bias && L[e]->bias->grad) mt_add_bias_backward(ce->be, dye, n, L[e]->out, L[e]->bias->grad);
        mt_lin_delta_backward(m, L[e], ce, x + (size_t)r0 * L[e]->in, dye, n, (uint64_t)r0,
                              dx + (size_t)r0 * L[e]->in);
    }
}

/* All experts' gate and up in one grouped call, then down in another; each expert's bias and
 * adapter deltas on its rows after the base products. */
static void experts_forward_grouped(mt_model *m, const mt_layer *ly, const mt_lin_ctx *ce, mt_acts *a, mt_scratch *s,
                                    const mt_dims *d, const int32_t *off, int NK) {
    mt_backend *be = ce->be;
    expert_weights wg, wu;
    for (int e0 = 0; e0 < d->E; e0 += GROUP_CHUNK) {
        int n = d->E - e0 < GROUP_CHUNK ? d->E - e0 : GROUP_CHUNK;
        mt_grouped_proj p[2];
        expert_weights_fill(ly->exp_gate, e0, n, &wg, &p[0]);
        expert_weights_fill(ly->exp_up, e0, n, &wu, &p[1]);
        p[0].y = a->gp;
        p[1].y = a->up;
        mt_grouped_matmul(be, n, off + e0, d->H, a->xp, 2, p);
    }
    experts_after_forward(m, ly->exp_gate, ce, a->xp, a->gp, d->E, off);
    experts_after_forward(m, ly->exp_up, ce, a->xp, a->up, d->E, off);
    mt_swiglu_forward(be, a->gp, a->up, s->h, (size_t)NK * d->Im);
    for (int e0 = 0; e0 < d->E; e0 += GROUP_CHUNK) {
        int n = d->E - e0 < GROUP_CHUNK ? d->E - e0 : GROUP_CHUNK;
        mt_grouped_proj p;
        expert_weights_fill(ly->exp_down, e0, n, &wg, &p);
        p.y = a->yp;
        mt_grouped_matmul(be, n, off + e0, d->Im, s->h, 1, &p);
    }
    experts_after_forward(m, ly->exp_down, ce, s->h, a->yp, d->E, off);
}

/* down's input and weight gradients in one grouped call, then gate's, then up's; each expert's
 * adapters after its projection's base product, in the per-expert loop's order (gate's delta
 * reaches dxp before up's base product), so on one thread the two paths agree bit for bit. */
static void experts_backward_grouped(mt_model *m, const mt_layer *ly, const mt_lin_ctx *ce, mt_acts *a,
                                     mt_scratch *s, mt_grads *g, const mt_dims *d, const int32_t *off, int NK) {
    mt_backend *be = ce->be;
    size_t nh = (size_t)NK * d->Im;
    expert_weights w;
    for (int e0 = 0; e0 < d->E; e0 += GROUP_CHUNK) {
        int n = d->E - e0 < GROUP_CHUNK ? d->E - e0 : GROUP_CHUNK;
        mt_grouped_proj p;
        expert_weights_fill(ly->exp_down, e0, n, &w, &p);
        p.dy = g->dyp;
        mt_grouped_matmul_backward(be, n, off + e0, d->Im, s->h, g->dh, 1, &p);
    }
    experts_after_backward(m, ly->exp_down, ce, s->h, g->dyp, g->dh, d->E, off);
    zero(be, g->dg, nh * sizeof(float));
    zero(be, g->du, nh * sizeof(float));
    mt_swiglu_backward(be, g->dh, a->gp, a->up, g->dg, g->du, nh);
    zero(be, g->dxp, (size_t)NK * d->H * sizeof(float));
    mt_linear *const *projs[2] = {ly->exp_gate, ly->exp_up};
    const float *dys[2] = {g->dg, g->du};
    for (int k = 0; k < 2; k++) {
        for (int e0 = 0; e0 < d->E; e0 += GROUP_CHUNK) {
            int n = d->E - e0 < GROUP_CHUNK ? d->E - e0 : GROUP_CHUNK;
            mt_grouped_proj p;
            expert_weights_fill(projs[k], e0, n, &w, &p);
            p.dy = dys[k];
            mt_grouped_matmul_backward(be, n, off + e0, d->H, a->xp, g->dxp, 1, &p);
        }
        experts_after_backward(m, projs[k], ce, a->xp, dys[k], g->dxp, d->E, off);
    }
}

/* SwiGLU MLP on rows x [n, in]: h = silu(gate(x)) ⊙ up(x); out = down(h). */
static void mlp_forward(mt_model *m, const mt_linear *gate, const mt_linear *up, const mt_linear *down,
                        const mt_lin_ctx *c, const float *x, int n, float *g, float *u, float *h, float *out) {
    int w = gate->out;
    mt_lin_forward(m, gate, c, x, n, 0, g);
    mt_lin_forward(m, up, c, x, n, 0, u);
    mt_swiglu_forward(c->be, g, u, h, (size_t)n * w);
    mt_lin_forward(m, down, c, h, n, 0, out);
}

static void mlp_backward(mt_model *m, const mt_linear *gate, const mt_linear *up, const mt_linear *down,
                         const mt_lin_ctx *c, const float *x, int n, const float *g, const float *u, float *h,
                         const float *dout, mt_grads *gr, float *dx) {
    mt_backend *be = c->be;
    size_t nw = (size_t)n * gate->out;
    mt_swiglu_forward(be, g, u, h, nw); /* recomputed: cheaper than keeping it */
    zero(be, gr->dh, nw * sizeof(float));
    mt_lin_backward(m, down, c, h, dout, n, 0, gr->dh);
    zero(be, gr->dg, nw * sizeof(float));
    zero(be, gr->du, nw * sizeof(float));
    mt_swiglu_backward(be, gr->dh, g, u, gr->dg, gr->du, nw);
    mt_lin_backward(m, gate, c, x, gr->dg, n, 0, dx);
    mt_lin_backward(m, up, c, x, gr->du, n, 0, dx);
}

/* Records the router's choice, then, where the given experts differ from it, puts them in its
 * place with the weights the router gives them (the scores renormalised over the chosen set and scaled, as it weights its
 * own choice): an RL trainer replays the experts its rollout used (host memory, CPU). */
static void route_record_replay(const mt_pass *p, int layer, mt_acts *a, int N, int E, int K, const mt_route_args *ra) {
    size_t o = (size_t)layer * N * K;
    if (p->route_out) memcpy(p->route_out + o, a->idx, (size_t)N * K * sizeof(int32_t));
    if (!p->route_in) return;
    for (int t = 0; t < N; t++) {
        const int32_t *in = p->route_in + o + (size_t)t * K;
        if (in[0] < 0) continue;
        int32_t *it = a->idx + (size_t)t * K;
        float *wt = a->w + (size_t)t * K;
        const float *sc = a->scores + (size_t)t * E;
        /* the same set in another order: the router's own weights stand, bit for bit */
        bool same = true;
        for (int x = 0; x < K && same; x++) {
            bool found = false;
            for (int y = 0; y < K; y++) found |= in[x] == it[y];
            same = found;
        }
        if (same) continue;
        double s = 0;
        for (int j = 0; j < K; j++) {
            it[j] = in[j];
            s += sc[in[j]];
        }
        if (ra->norm == MT_ROUTE_NORM_SUM_EPS) s += 1e-20;
        for (int j = 0; j < K; j++)
            wt[j] = (ra->norm == MT_ROUTE_NORM_NONE ? sc[in[j]] : (float)(sc[in[j]] / s)) * ra->scale;
    }
}

/* Adaptive expert counts (docs/attention-pruning.md) after the router: each token takes its
 * decode row's setting (p->row_ak) or else the model's. Inference only and host memory only:
 * training keeps the router's fixed k so its gradient is the one the loss defines. Adds each
 * token's experts to p->k_used when asked; returns whether some slot was given weight 0. */
static bool route_adaptive(mt_model *m, const mt_backend *be, const mt_pass *p, mt_acts *a, int N, const mt_dims *d,
                           const mt_route_args *ra) {
    bool on = !p->train && mt_backend_get_kind(be) == MT_BACKEND_CPU && (p->row_ak || m->adaptive_k.threshold > 0);
    if (!on) {
        if (p->k_used)
            for (int t = 0; t < N; t++) p->k_used[t] += d->K;
        return false;
    }
    uint64_t routed = 0, used = 0;
    for (int t = 0; t < N; t++) {
        const mt_adaptive_k *ak = p->row_ak ? &p->row_ak[t] : &m->adaptive_k;
        int c = d->K;
        if (ak->threshold > 0) {
            c = mt_route_adaptive_k(a->scores + (size_t)t * d->E, 1, d->E, d->K, a->idx + (size_t)t * d->K,
                                    a->w + (size_t)t * d->K, ak, ra->norm, ra->scale, NULL);
            routed++;
            used += (uint64_t)c;
        }
        if (p->k_used) p->k_used[t] += c;
    }
    /* the model-wide counts are the model's setting's (a decoder with per-row settings
     * reports through k_used, and leaves the shared model alone) */
    if (!p->row_ak) {
        m->ak_tokens += routed;
        m->ak_experts += used;
    }
    return used < routed * (uint64_t)d->K;
}

/* Fewer experts, less compute: the (token, slot) rows adaptive routing gave weight 0 leave
 * the dispatch (host memory: adaptive routing is CPU only), so an expert runs over the rows it
 * keeps and one with none is not run. Kept rows stay in token order within their expert and
 * each row's products do not depend on the rows beside it, so every kept row's output is the
 * one the full dispatch computes, and a 0-weight row added nothing to the scatter. Rewrites
 * off [E+1], src_tok and src_slot in place; returns the rows left. */
static int drop_zero_weight_rows(const float *w, int E, int32_t *off, int32_t *src_tok, int32_t *src_slot) {
    int n = 0;
    for (int e = 0; e < E; e++) {
        int r0 = off[e], r1 = off[e + 1];
        off[e] = n;
        for (int r = r0; r < r1; r++)
            if (w[src_slot[r]] != 0.0f) {
                src_tok[n] = src_tok[r];
                src_slot[n] = src_slot[r];
                n++;
            }
    }
    off[E] = n;
    return n;
}

void mt_ffn_forward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, const mt_pass *p, mt_acts *a,
                    mt_scratch *s, int N, float *out) {
    mt_backend *be = c->be;
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    if (!ly->moe) {
        mt_prof_begin(m, ly->index, MT_PROF_DENSE_MLP);
        mlp_forward(m, ly->gate, ly->up, ly->down, c, a->xn2, N, a->g, a->u, s->h, out);
        mt_prof_end(m);
        return;
    }
    mt_prof_begin(m, ly->index, MT_PROF_ROUTER);
    const float *x = a->xn2;
    if (jitter_on(p)) {
        apply_jitter(be, p, ly->index, a->xn2, a->xm, (size_t)N * d.H);
        x = a->xm;
    }
    int NK = N * d.K;
    mt_lin_forward(m, ly->router, c, x, N, 0, a->rlogits);
    mt_route_args ra;
    mt_route_args_fill(m, ly, N, &ra);
    mt_route_forward(be, &ra, a->rlogits, a->scores, a->idx, a->w);
    if (p->share_out) mt_route_topk_share(a->scores, N, d.E, d.K, a->idx, p->share_out + (size_t)ly->index * N);
    bool dropped = route_adaptive(m, be, p, a, N, &d, &ra);
    if (p->route_out || p->route_in) route_record_replay(p, ly->index, a, N, d.E, d.K, &ra);
    mt_prof_end(m);
    mt_prof_begin(m, ly->index, MT_PROF_EXPERTS);
    mt_moe_permute(be, a->idx, N, d.K, d.E, a->offsets, a->src_tok, a->src_slot);
    mt_backend_download(be, a->offsets_host, a->offsets, (size_t)(d.E + 1) * sizeof(int32_t));
    /* the path is chosen on the full N·K rows, so dropping rows never changes which kernels
     * compute the rows that are kept */
    bool grouped = grouped_on(be, NK, d.E);
    if (dropped && !g_dispatch_dropped) NK = drop_zero_weight_rows(a->w, d.E, a->offsets_host, a->src_tok, a->src_slot);
    mt_gather_rows(be, x, a->src_tok, NK, d.H, a->xp);
    const int32_t *off = a->offsets_host;
    mt_lin_ctx ce;
    expert_ctx(c, a, NK, &ce);
    if (grouped)
        experts_forward_grouped(m, ly, &ce, a, s, &d, off, NK);
    else
        experts_forward_loop(m, ly, &ce, a, s, &d, off, NK);
    zero(be, out, (size_t)N * d.H * sizeof(float));
    mt_moe_unpermute(be, a->yp, a->src_tok, a->src_slot, a->w, NK, d.H, out);
    if (m->prof) {
        mt_prof_end_(m->prof);
        mt_prof_route_(m->prof, ly->index, N, off, a->w);
    }
    if (ly->sh_gate) {
        mt_prof_begin(m, ly->index, MT_PROF_SHARED);
        mlp_forward(m, ly->sh_gate, ly->sh_up, ly->sh_down, c, x, N, a->sg, a->su, s->h, a->ys);
        if (ly->sh_expert_gate) {
            mt_lin_forward(m, ly->sh_expert_gate, c, x, N, 0, a->sz);
            mt_sigmoid_gate_forward(be, a->sz, a->ys, out, N, d.H);
        } else {
            mt_add(be, out, a->ys, 1.0f, (size_t)N * d.H);
        }
        mt_prof_end(m);
    }
}

void mt_ffn_backward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, const mt_pass *p, mt_acts *a,
                     mt_scratch *s, mt_grads *g, int N, const float *dout, const float *dsc, const float *drl_extra,
                     float *dxn) {
    mt_backend *be = c->be;
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    if (!ly->moe) {
        mlp_backward(m, ly->gate, ly->up, ly->down, c, a->xn2, N, a->g, a->u, s->h, dout, g, dxn);
        return;
    }
    bool jit = jitter_on(p);
    const float *x = jit ? a->xm : a->xn2;
    /* without jitter ∂L/∂x is ∂L/∂xn2: accumulate straight into dxn */
    float *dx = dxn;
    if (jit) {
        dx = g->dxm;
        zero(be, dx, (size_t)N * d.H * sizeof(float));
    }
    int NK = N * d.K;
    const int32_t *off = a->offsets_host;

    if (ly->sh_gate) {
        const float *dys = dout;
        if (ly->sh_expert_gate) {
            zero(be, g->dsz, (size_t)N * sizeof(float));
            zero(be, g->dys, (size_t)N * d.H * sizeof(float));
            mt_sigmoid_gate_backward(be, a->sz, a->ys, dout, g->dsz, g->dys, N, d.H);
            mt_lin_backward(m, ly->sh_expert_gate, c, x, g->dsz, N, 0, dx);
            dys = g->dys;
        }
        mlp_backward(m, ly->sh_gate, ly->sh_up, ly->sh_down, c, x, N, a->sg, a->su, s->h, dys, g, dx);
    }

    zero(be, g->dyp, (size_t)NK * d.H * sizeof(float));
    zero(be, g->dw, (size_t)NK * sizeof(float));
    mt_moe_unpermute_backward(be, dout, a->yp, a->src_tok, a->src_slot, a->w, NK, d.H, g->dyp, g->dw);
    size_t nh = (size_t)NK * d.Im;
    mt_swiglu_forward(be, a->gp, a->up, s->h, nh);
    zero(be, g->dh, nh * sizeof(float));
    mt_lin_ctx ce;
    expert_ctx(c, a, NK, &ce);
    if (grouped_on(be, NK, d.E))
        experts_backward_grouped(m, ly, &ce, a, s, g, &d, off, NK);
    else
        experts_backward_loop(m, ly, &ce, a, s, g, &d, off, NK);
    mt_gather_rows_backward(be, g->dxp, a->src_tok, NK, d.H, dx);

    zero(be, g->drl, (size_t)N * d.E * sizeof(float));
    mt_route_args ra;
    mt_route_args_fill(m, ly, N, &ra);
    mt_route_backward(be, &ra, a->scores, a->idx, g->dw, dsc, g->drl);
    if (drl_extra) mt_add(be, g->drl, drl_extra, 1.0f, (size_t)N * d.E);
    mt_lin_backward(m, ly->router, c, x, g->drl, N, 0, dx);

    if (jit) jitter_backward(be, p, ly->index, dx, dxn, (size_t)N * d.H);
}
