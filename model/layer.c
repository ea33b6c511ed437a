/* layer.c — the one decoder-layer body that training, evaluation and batched decode all run:
 * input RMSNorm, attention (over whole sequences, or over the paged KV cache), residual,
 * post-attention RMSNorm, the FFN (dense SwiGLU or mixture of experts), residual. Keeping one
 * body means a kernel change reaches every pass and the passes cannot drift apart. */
#include "model-impl.h"

static void residual(mt_backend *be, float *dst, const float *src, const float *branch, size_t n) {
    if (dst != src) mt_backend_copy(be, dst, src, n * sizeof(float));
    mt_add(be, dst, branch, 1.0f, n);
}

void mt_layer_forward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, const mt_pass *p, mt_acts *a,
                      mt_scratch *s, int N, const mt_attn_plan *plan, float *x_out) {
    mt_backend *be = c->be;
    const mt_config *cfg = &m->cfg;
    size_t n = (size_t)N * cfg->hidden_size;
    mt_prof_begin(m, ly->index, MT_PROF_NORM);
    mt_rmsnorm_forward(be, a->x_in, ly->attn_norm->data, a->xn1, a->rstd1, N, cfg->hidden_size, cfg->rms_norm_eps);
    mt_prof_norm(m, N, cfg->hidden_size);
    mt_prof_end(m);
    if (plan->paged)
        mt_attn_paged_forward(m, ly, c, a, N, plan, s->tmp);
    else
        mt_attn_forward(m, ly, c, a, plan->B, plan->T, plan->pos, plan->kv_start, s->tmp);
    residual(be, a->x_mid, a->x_in, s->tmp, n);
    mt_prof_begin(m, ly->index, MT_PROF_NORM);
    mt_rmsnorm_forward(be, a->x_mid, ly->ffn_norm->data, a->xn2, a->rstd2, N, cfg->hidden_size, cfg->rms_norm_eps);
    mt_prof_norm(m, N, cfg->hidden_size);
    mt_prof_end(m);
    mt_ffn_forward(m, ly, c, p, a, s, N, s->tmp);
    residual(be, x_out, a->x_mid, s->tmp, n);
}
