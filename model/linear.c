/* linear.c — every projection of the decoder goes through here: one GEMM over all rows, the
 * bias, and the adapter hook (LoRA lives behind it, in peft/), forward and backward. */
#include "model-impl.h"

bool mt_hook_active(const mt_linear *L) { return L->hook.ops != NULL && L->hook.enabled; }

static void make_call(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, uint64_t row0, int n,
                      mt_adapter_call *call) {
    call->be = c->be;
    call->train = c->train;
    /* one dropout stream per (step, linear), so masks regenerate identically in backward */
    call->key = mt_hash_u64(c->seed, (uint64_t)mt_linear_index(m, L));
    call->row0 = row0;
    call->scratch = c->scratch;
    call->scratch_cap = c->scratch_cap;
    MT_ASSERT((size_t)n * (size_t)(L->hook.max_rank > 0 ? L->hook.max_rank : 0) * 2 <= c->scratch_cap);
}

void mt_lin_forward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, int n, uint64_t row0,
                    float *y) {
    if (n <= 0) return;
    mt_matmul(c->be, false, true, n, L->out, L->in, 1.0f, x, L->in, L->weight->data, L->in, 0.0f, y, L->out);
    if (L->bias) mt_add_bias(c->be, y, L->bias->data, n, L->out);
    if (mt_hook_active(L)) {
        mt_adapter_call call;
        make_call(m, L, c, row0, n, &call);
        L->hook.ops->forward(L->hook.self, &call, x, n, y);
    }
}

void mt_lin_backward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, const float *dy,
                     int n, uint64_t row0, float *dx) {
    if (n <= 0) return;
    if (dx) mt_matmul(c->be, false, false, n, L->in, L->out, 1.0f, dy, L->out, L->weight->data, L->in, 1.0f, dx, L->in);
    /* frozen weights (no gradient buffer) skip their weight-gradient GEMM */
    if (L->weight->grad)
        mt_matmul(c->be, true, false, L->out, L->in, n, 1.0f, dy, L->out, x, L->in, 1.0f, L->weight->grad, L->in);
    if (L->bias && L->bias->grad) mt_add_bias_backward(c->be, dy, n, L->out, L->bias->grad);
    if (mt_hook_active(L) && L->hook.ops->backward) {
        mt_adapter_call call;
        make_call(m, L, c, row0, n, &call);
        L->hook.ops->backward(L->hook.self, &call, x, dy, n, dx);
    }
}

int mt_loop_threads(const mt_backend *be, size_t work) {
    int t = mt_backend_threads(be);
    return work < ((size_t)1 << 16) || t < 1 ? 1 : t;
}

size_t mt_adapter_scratch_floats(const mt_model *m, int rows) {
    int rank = 0;
    for (int i = 0; i < m->n_linears; i++)
        if (m->linears[i].hook.ops && m->linears[i].hook.max_rank > rank) rank = m->linears[i].hook.max_rank;
    return (size_t)rows * (size_t)rank * 2;
}

/* The ops a forward/backward pass needs, and host-visible memory for the few steps done in
 * model code (router statistics, the aux loss, router jitter). */
mt_status mt_model_check_backend(const mt_model *m, mt_error *err) {
    static const mt_op needed[] = {MT_OP_MATMUL,       MT_OP_ADD,          MT_OP_SCALE,   MT_OP_EMBEDDING,
                                   MT_OP_RMSNORM,      MT_OP_ROPE,         MT_OP_ATTENTION, MT_OP_SWIGLU,
                                   MT_OP_SIGMOID_GATE, MT_OP_ROUTE,        MT_OP_MOE_PERMUTE, MT_OP_CROSS_ENTROPY,
                                   MT_OP_ADD_BIAS,     MT_OP_COPY_2D};
    for (size_t i = 0; i < sizeof needed / sizeof needed[0]; i++)
        if (!mt_backend_supports(m->be, needed[i]))
            return mt_error_set(err, MT_ERR_UNSUPPORTED, "model: the %s backend does not run op %s; use the CPU backend",
                                mt_backend_name(m->be), mt_op_name(needed[i]));
    if (!mt_backend_is_host(m->be))
        return mt_error_set(err, MT_ERR_UNSUPPORTED,
                            "model: forward and decode need host-visible activations (CPU backend), not %s",
                            mt_backend_name(m->be));
    return MT_OK;
}
