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

void mt_layer_recompute_cheap(mt_model *m, const mt_layer *ly, const mt_pass *p, mt_acts *a, int N,
                              const int32_t *pos) {
    mt_backend *be = m->be;
    const mt_config *cfg = &m->cfg;
    int H = cfg->hidden_size;
    mt_rmsnorm_forward(be, a->x_in, ly->attn_norm->data, a->xn1, a->rstd1, N, H, cfg->rms_norm_eps);
    mt_attn_recompute_cheap(m, ly, be, a, N, pos);
    mt_rmsnorm_forward(be, a->x_mid, ly->ffn_norm->data, a->xn2, a->rstd2, N, H, cfg->rms_norm_eps);
    if (!ly->moe) return;
    const float *x = a->xn2;
    if (p->train && p->noise > 0) {
        /* the expression mt_ffn_forward's jitter evaluates, element for element */
        long long n = (long long)N * H;
        int nt = mt_loop_threads(be, (size_t)n);
#pragma omp parallel for schedule(static) num_threads(nt)
        for (long long i = 0; i < n; i++) a->xm[i] = a->xn2[i] * mt_jitter(p->seed, ly->index, (uint64_t)i, p->noise);
        x = a->xm;
    }
    mt_gather_rows(be, x, a->src_tok, N * cfg->top_k, H, a->xp);
}
