/* backward.c — the backward pass, layer by layer in reverse (the llm.c way): LM head and
 * cross-entropy recomputed chunk by chunk from the saved final hidden states, then each
 * layer's FFN and attention, the embedding table, and ∂L/∂(input embeddings). Gradients are
 * accumulated into every parameter that has a buffer and into the adapters. */
#include <string.h>

#include "model-impl.h"

static void zero(mt_backend *be, float *p, size_t n) { mt_backend_memset0(be, p, n * sizeof(float)); }

mt_status mt_model_backward(mt_model *m, mt_workspace *ws, const float *dloss, mt_error *err) {
    return mt_model_backward_hidden(m, ws, dloss, NULL, err);
}

mt_status mt_model_backward_hidden(mt_model *m, mt_workspace *ws, const float *dloss, const float *dhidden,
                                   mt_error *err) {
    if (ws->m != m) return mt_error_set(err, MT_ERR_INVALID, "backward: workspace belongs to another model");
    if (!ws->train) return mt_error_set(err, MT_ERR_INVALID, "backward: the workspace was created without train");
    if (!ws->fwd_done || !ws->opts.train)
        return mt_error_set(err, MT_ERR_INVALID, "backward: needs a preceding forward with train = true");
    if (dloss && !ws->has_targets)
        return mt_error_set(err, MT_ERR_INVALID, "backward: dloss given but the forward had no targets");
    mt_backend *be = m->be;
    const mt_config *cfg = &m->cfg;
    mt_dims d;
    mt_model_dims(cfg, &d);
    int B = ws->fB, T = ws->fT, N = ws->fN;
    mt_lin_ctx c;
    mt_ws_lin_ctx(ws, true, ws->opts.seed, &c);
    mt_pass pass = {.train = true, .seed = ws->opts.seed, .noise = ws->opts.router_noise};
    const int32_t *kv_start = ws->has_kv_start ? ws->kv_start : NULL;
    mt_grads *g = &ws->g;

    /* LM head: logits recomputed per chunk and turned into ∂L/∂logits in place */
    zero(be, ws->dxf, (size_t)N * d.H);
    bool lm = ws->has_targets && (dloss || ws->n_tokens > 0);
    float inv_t = ws->opts.temperature > 0 ? 1.0f / ws->opts.temperature : 1.0f;
    for (int r0 = 0; lm && r0 < N; r0 += ws->chunk) {
        int rows = N - r0 < ws->chunk ? N - r0 : ws->chunk;
        const float *xf = ws->xf + (size_t)r0 * d.H;
        mt_lin_forward(m, m->lm_head, &c, xf, rows, (uint64_t)r0, ws->logits);
        /* loss on z = logits / τ: ∂L/∂logits = ∂L/∂z / τ */
        if (inv_t != 1.0f) mt_scale(be, ws->logits, inv_t, (size_t)rows * d.V);
        if (dloss) {
            mt_cross_entropy(be, ws->logits, ws->targets + r0, rows, d.V, 1.0f, ws->chunk_loss);
            for (int r = 0; r < rows; r++)
                mt_scale(be, ws->logits + (size_t)r * d.V, dloss[r0 + r] * inv_t, (size_t)d.V);
        } else {
            mt_cross_entropy(be, ws->logits, ws->targets + r0, rows, d.V, inv_t / (float)ws->n_tokens, ws->chunk_loss);
        }
        mt_lin_backward(m, m->lm_head, &c, xf, ws->logits, rows, (uint64_t)r0, ws->dxf + (size_t)r0 * d.H);
    }
    /* a head on the final hidden states (reward, value) adds its gradient here */
    if (dhidden) mt_add(be, ws->dxf, dhidden, 1.0f, (size_t)N * d.H);
    zero(be, g->dres, (size_t)N * d.H);
    mt_rmsnorm_backward(be, ws->dxf, ws->x_final, m->final_norm->data, ws->rstdf, g->dres, m->final_norm->grad, N, d.H);

    mt_attn_plan plan = {.paged = false, .B = B, .T = T, .pos = ws->pos, .kv_start = kv_start};
    mt_pass redo = pass;
    redo.route_in = ws->route_kept ? ws->route_keep : NULL;
    for (int l = d.L - 1; l >= 0; l--) {
        const mt_layer *ly = &m->layers[l];
        mt_acts *a = mt_ws_layer_acts(ws, l);
        /* the profiler counts the forward once: recomputation is not a pass of its own */
        mt_profile *prof = m->prof;
        m->prof = NULL;
        if (ws->ckpt == MT_CHECKPOINTING_LAYERS && l < d.L - 1) {
            /* the shared set still holds the last layer from the forward; the others are rebuilt
             * from their saved inputs, the output going to dxn (zeroed below before its use) */
            a->x_in = ws->x_layer[l];
            mt_layer_forward(m, ly, &c, &redo, a, &ws->s, N, &plan, g->dxn);
        } else if (ws->ckpt == MT_CHECKPOINTING_SELECTIVE) {
            mt_layer_recompute_cheap(m, ly, &pass, a, N, ws->pos);
        }
        m->prof = prof;
        /* g->dres holds ∂L/∂(layer output) = ∂L/∂x_mid through the FFN residual */
        const float *dsc = NULL, *drl = NULL;
        if (ly->moe) mt_aux_backward(ws, a, &dsc, &drl);
        zero(be, g->dxn, (size_t)N * d.H);
        mt_ffn_backward(m, ly, &c, &pass, a, &ws->s, g, N, g->dres, dsc, drl, g->dxn);
        mt_rmsnorm_backward(be, g->dxn, a->x_mid, ly->ffn_norm->data, a->rstd2, g->dres, ly->ffn_norm->grad, N, d.H);
        zero(be, g->dxn, (size_t)N * d.H);
        mt_attn_backward(m, ly, &c, a, g, B, T, ws->pos, kv_start, g->dres, g->dxn);
        mt_rmsnorm_backward(be, g->dxn, a->x_in, ly->attn_norm->data, a->rstd1, g->dres, ly->attn_norm->grad, N, d.H);
    }
    if (m->embed->grad) mt_embedding_backward(be, ws->tokens, N, g->dres, d.H, m->embed->grad);
    return MT_OK;
}
