/* attention.c — the attention block of a decoder layer over whole sequences (training,
 * evaluation, prefill): standard GQA with optional QK-norm and biases, and DeepSeek's
 * Multi-head Latent Attention in its expanded (training) form. Forward and backward. */
#include <string.h>

#include "model-impl.h"

/* transformers builds q_a_layernorm and kv_a_layernorm with DeepseekV3RMSNorm's default
 * eps (1e-6), not config.rms_norm_eps */
#define MLA_NORM_EPS 1e-6f

static void zero(mt_backend *be, float *p, size_t n) { mt_backend_memset0(be, p, n * sizeof(float)); }

static mt_rope_args rope_args(const mt_model *m, int n_tok, int n_head, int row_stride, int head_stride,
                              const int32_t *pos) {
    mt_rope_args r = {.n_tok = n_tok,
                      .n_head = n_head,
                      .row_stride = row_stride,
                      .head_stride = head_stride,
                      .rot_dim = m->rot_dim,
                      .pos = pos,
                      .cos = m->rope_cos,
                      .sin = m->rope_sin,
                      .style = m->cfg.rope_style};
    return r;
}

void mt_attn_args_fill(const mt_model *m, mt_attn_args *aa, int B, int Tq, int Tk, int q_offset,
                       const int32_t *kv_start) {
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    memset(aa, 0, sizeof *aa);
    aa->B = B;
    aa->Tq = Tq;
    aa->Tk = Tk;
    aa->n_head = d.nh;
    aa->dqk = d.qk_hd;
    aa->dv = d.vh;
    aa->q_row = d.q_dim;
    aa->q_head = d.qk_hd;
    aa->o_row = d.o_dim;
    aa->o_head = d.vh;
    aa->q_offset = q_offset;
    aa->kv_start = kv_start;
    aa->scale = m->attn_scale;
    if (m->cfg.mla) {
        /* expanded MLA: every head has its own key [k_nope | k_pe] and its value inside kvb */
        aa->n_kv_head = d.nh;
        aa->k_row = d.q_dim;
        aa->k_head = d.qk_hd;
        aa->v_row = d.kvb_dim;
        aa->v_head = d.nope + d.vh;
    } else {
        aa->n_kv_head = d.nkv;
        aa->k_row = d.kv_dim;
        aa->k_head = d.hd;
        aa->v_row = d.kv_dim;
        aa->v_head = d.hd;
    }
}

void mt_attn_project(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, mt_acts *a, int N, const int32_t *pos,
                     float *k_out, float *v_out) {
    mt_backend *be = c->be;
    const mt_config *cfg = &m->cfg;
    mt_dims d;
    mt_model_dims(cfg, &d);
    if (cfg->mla) {
        if (ly->q_a) {
            mt_lin_forward(m, ly->q_a, c, a->xn1, N, 0, a->qa);
            mt_rmsnorm_forward(be, a->qa, ly->q_a_norm->data, a->qan, a->qa_rstd, N, d.ql, MLA_NORM_EPS);
            mt_prof_norm(m, N, d.ql);
            mt_lin_forward(m, ly->q_b, c, a->qan, N, 0, a->q);
        } else {
            mt_lin_forward(m, ly->q, c, a->xn1, N, 0, a->q);
        }
        mt_rope_args rq = rope_args(m, N, d.nh, d.q_dim, d.qk_hd, pos);
        mt_rope_forward(be, &rq, a->q + d.nope);
        mt_lin_forward(m, ly->kv_a, c, a->xn1, N, 0, a->kva);
        mt_copy_2d(be, a->c_raw, d.kvl, a->kva, d.kva_dim, N, d.kvl);
        mt_rmsnorm_forward(be, a->c_raw, ly->kv_a_norm->data, a->cn, a->c_rstd, N, d.kvl, MLA_NORM_EPS);
        mt_prof_norm(m, N, d.kvl);
        /* k_pe is one head shared by all query heads */
        mt_rope_args rk = rope_args(m, N, 1, d.kva_dim, 0, pos);
        mt_rope_forward(be, &rk, a->kva + d.kvl);
        return;
    }
    float eps = cfg->rms_norm_eps;
    if (cfg->qk_norm != MT_QK_NORM_NONE) {
        mt_lin_forward(m, ly->q, c, a->xn1, N, 0, a->q_raw);
        mt_lin_forward(m, ly->k, c, a->xn1, N, 0, a->k_raw);
        if (cfg->qk_norm == MT_QK_NORM_HEAD) {
            mt_rmsnorm_forward(be, a->q_raw, ly->q_norm->data, a->q, a->q_rstd, N * d.nh, d.hd, eps);
            mt_rmsnorm_forward(be, a->k_raw, ly->k_norm->data, k_out, a->k_rstd, N * d.nkv, d.hd, eps);
            mt_prof_norm(m, N * d.nh, d.hd);
            mt_prof_norm(m, N * d.nkv, d.hd);
        } else {
            mt_rmsnorm_forward(be, a->q_raw, ly->q_norm->data, a->q, a->q_rstd, N, d.q_dim, eps);
            mt_rmsnorm_forward(be, a->k_raw, ly->k_norm->data, k_out, a->k_rstd, N, d.kv_dim, eps);
            mt_prof_norm(m, N, d.q_dim);
            mt_prof_norm(m, N, d.kv_dim);
        }
    } else {
        mt_lin_forward(m, ly->q, c, a->xn1, N, 0, a->q);
        mt_lin_forward(m, ly->k, c, a->xn1, N, 0, k_out);
    }
    mt_lin_forward(m, ly->v, c, a->xn1, N, 0, v_out);
    mt_rope_args rq = rope_args(m, N, d.nh, d.q_dim, d.hd, pos);
    mt_rope_forward(be, &rq, a->q);
    mt_rope_args rk = rope_args(m, N, d.nkv, d.kv_dim, d.hd, pos);
    mt_rope_forward(be, &rk, k_out);
}

void mt_attn_recompute_cheap(mt_model *m, const mt_layer *ly, mt_backend *be, mt_acts *a, int N, const int32_t *pos) {
    const mt_config *cfg = &m->cfg;
    mt_dims d;
    mt_model_dims(cfg, &d);
    if (cfg->mla) {
        if (ly->q_a) mt_rmsnorm_forward(be, a->qa, ly->q_a_norm->data, a->qan, a->qa_rstd, N, d.ql, MLA_NORM_EPS);
        /* kva's latent columns are as the projection wrote them (only k_pe is roped) */
        mt_copy_2d(be, a->c_raw, d.kvl, a->kva, d.kva_dim, N, d.kvl);
        mt_rmsnorm_forward(be, a->c_raw, ly->kv_a_norm->data, a->cn, a->c_rstd, N, d.kvl, MLA_NORM_EPS);
        for (int h = 0; h < d.nh; h++) {
            mt_copy_2d(be, a->k + h * d.qk_hd, d.q_dim, a->kvb + h * (d.nope + d.vh), d.kvb_dim, N, d.nope);
            mt_copy_2d(be, a->k + h * d.qk_hd + d.nope, d.q_dim, a->kva + d.kvl, d.kva_dim, N, d.rope);
        }
        return;
    }
    if (cfg->qk_norm == MT_QK_NORM_NONE) return;
    float eps = cfg->rms_norm_eps;
    if (cfg->qk_norm == MT_QK_NORM_HEAD) {
        mt_rmsnorm_forward(be, a->q_raw, ly->q_norm->data, a->q, a->q_rstd, N * d.nh, d.hd, eps);
        mt_rmsnorm_forward(be, a->k_raw, ly->k_norm->data, a->k, a->k_rstd, N * d.nkv, d.hd, eps);
    } else {
        mt_rmsnorm_forward(be, a->q_raw, ly->q_norm->data, a->q, a->q_rstd, N, d.q_dim, eps);
        mt_rmsnorm_forward(be, a->k_raw, ly->k_norm->data, a->k, a->k_rstd, N, d.kv_dim, eps);
    }
    mt_rope_args rq = rope_args(m, N, d.nh, d.q_dim, d.hd, pos);
    mt_rope_forward(be, &rq, a->q);
    mt_rope_args rk = rope_args(m, N, d.nkv, d.kv_dim, d.hd, pos);
    mt_rope_forward(be, &rk, a->k);
}

void mt_attn_forward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, mt_acts *a, int B, int T,
                     const int32_t *pos, const int32_t *kv_start, float *out) {
    mt_backend *be = c->be;
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    int N = B * T;
    mt_prof_begin(m, ly->index, MT_PROF_ATTN_PROJ);
    mt_attn_project(m, ly, c, a, N, pos, a->k, a->v);
    const float *v = a->v;
    if (m->cfg.mla) {
        mt_lin_forward(m, ly->kv_b, c, a->cn, N, 0, a->kvb);
        for (int h = 0; h < d.nh; h++) {
            mt_copy_2d(be, a->k + h * d.qk_hd, d.q_dim, a->kvb + h * (d.nope + d.vh), d.kvb_dim, N, d.nope);
            mt_copy_2d(be, a->k + h * d.qk_hd + d.nope, d.q_dim, a->kva + d.kvl, d.kva_dim, N, d.rope);
        }
        v = a->kvb + d.nope;
    }
    mt_prof_end(m);
    mt_attn_args aa;
    mt_attn_args_fill(m, &aa, B, T, T, 0, kv_start);
    mt_prof_begin(m, ly->index, MT_PROF_ATTN_CORE);
    mt_attention_forward(be, &aa, a->q, a->k, v, a->att, a->lse);
    if (m->prof) {
        /* kv_start is host memory here: model passes run on host-visible backends */
        mt_prof_attn_core_(m->prof, &aa, kv_start);
        mt_prof_end_(m->prof);
        mt_prof_dap_(m->prof, m, ly->index, a, B, T);
    }
    mt_prof_begin(m, ly->index, MT_PROF_ATTN_PROJ);
    mt_lin_forward(m, ly->o, c, a->att, N, 0, out);
    mt_prof_end(m);
}

void mt_attn_backward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, mt_acts *a, mt_grads *g, int B, int T,
                      const int32_t *pos, const int32_t *kv_start, const float *dout, float *dxn) {
    mt_backend *be = c->be;
    const mt_config *cfg = &m->cfg;
    mt_dims d;
    mt_model_dims(cfg, &d);
    int N = B * T;
    zero(be, g->datt, (size_t)N * d.o_dim);
    mt_lin_backward(m, ly->o, c, a->att, dout, N, 0, g->datt);
    mt_attn_args aa;
    mt_attn_args_fill(m, &aa, B, T, T, 0, kv_start);

    if (cfg->mla) {
        zero(be, g->dq, (size_t)N * d.q_dim);
        zero(be, g->dk, (size_t)N * d.q_dim);
        zero(be, g->dkvb, (size_t)N * d.kvb_dim);
        mt_attention_backward(be, &aa, a->q, a->k, a->kvb + d.nope, a->att, a->lse, g->datt, g->dq, g->dk,
                              g->dkvb + d.nope);
        zero(be, g->dkva, (size_t)N * d.kva_dim);
        for (int h = 0; h < d.nh; h++) {
            mt_add_2d(be, g->dkvb + h * (d.nope + d.vh), d.kvb_dim, g->dk + h * d.qk_hd, d.q_dim, N, d.nope);
            mt_add_2d(be, g->dkva + d.kvl, d.kva_dim, g->dk + h * d.qk_hd + d.nope, d.q_dim, N, d.rope);
        }
        mt_rope_args rk = rope_args(m, N, 1, d.kva_dim, 0, pos);
        mt_rope_backward(be, &rk, g->dkva + d.kvl);
        zero(be, g->dcn, (size_t)N * d.kvl);
        mt_lin_backward(m, ly->kv_b, c, a->cn, g->dkvb, N, 0, g->dcn);
        zero(be, g->dc, (size_t)N * d.kvl);
        mt_rmsnorm_backward(be, g->dcn, a->c_raw, ly->kv_a_norm->data, a->c_rstd, g->dc, ly->kv_a_norm->grad, N, d.kvl);
        mt_add_2d(be, g->dkva, d.kva_dim, g->dc, d.kvl, N, d.kvl);
        mt_lin_backward(m, ly->kv_a, c, a->xn1, g->dkva, N, 0, dxn);
        mt_rope_args rq = rope_args(m, N, d.nh, d.q_dim, d.qk_hd, pos);
        mt_rope_backward(be, &rq, g->dq + d.nope);
        if (ly->q_a) {
            zero(be, g->dqan, (size_t)N * d.ql);
            mt_lin_backward(m, ly->q_b, c, a->qan, g->dq, N, 0, g->dqan);
            zero(be, g->dqa, (size_t)N * d.ql);
            mt_rmsnorm_backward(be, g->dqan, a->qa, ly->q_a_norm->data, a->qa_rstd, g->dqa, ly->q_a_norm->grad, N, d.ql);
            mt_lin_backward(m, ly->q_a, c, a->xn1, g->dqa, N, 0, dxn);
        } else {
            mt_lin_backward(m, ly->q, c, a->xn1, g->dq, N, 0, dxn);
        }
        return;
    }

    zero(be, g->dq, (size_t)N * d.q_dim);
    zero(be, g->dk, (size_t)N * d.kv_dim);
    zero(be, g->dv, (size_t)N * d.kv_dim);
    mt_attention_backward(be, &aa, a->q, a->k, a->v, a->att, a->lse, g->datt, g->dq, g->dk, g->dv);
    mt_rope_args rq = rope_args(m, N, d.nh, d.q_dim, d.hd, pos);
    mt_rope_backward(be, &rq, g->dq);
    mt_rope_args rk = rope_args(m, N, d.nkv, d.kv_dim, d.hd, pos);
    mt_rope_backward(be, &rk, g->dk);
    const float *dq = g->dq, *dk = g->dk;
    if (cfg->qk_norm != MT_QK_NORM_NONE) {
        zero(be, g->dq_raw, (size_t)N * d.q_dim);
        zero(be, g->dk_raw, (size_t)N * d.kv_dim);
        bool head = cfg->qk_norm == MT_QK_NORM_HEAD;
        mt_rmsnorm_backward(be, g->dq, a->q_raw, ly->q_norm->data, a->q_rstd, g->dq_raw, ly->q_norm->grad,
                            head ? N * d.nh : N, head ? d.hd : d.q_dim);
        mt_rmsnorm_backward(be, g->dk, a->k_raw, ly->k_norm->data, a->k_rstd, g->dk_raw, ly->k_norm->grad,
                            head ? N * d.nkv : N, head ? d.hd : d.kv_dim);
        dq = g->dq_raw;
        dk = g->dk_raw;
    }
    mt_lin_backward(m, ly->q, c, a->xn1, dq, N, 0, dxn);
    mt_lin_backward(m, ly->k, c, a->xn1, dk, N, 0, dxn);
    mt_lin_backward(m, ly->v, c, a->xn1, g->dv, N, 0, dxn);
}
