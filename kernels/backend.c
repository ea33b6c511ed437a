/* backend.c — the one dispatch point of every op: picks a backend at init and forwards each
 * public call through its vtable, refusing (with an abort naming op and backend) any op the
 * backend does not support. Also the backend-neutral sgemm throughput measurement. */
#include "backend-impl.h"

#include <stdio.h>
#include <stdlib.h>

static const char *const op_names[MT_OP_COUNT] = {
    [MT_OP_MATMUL] = "matmul",
    [MT_OP_ADD] = "add",
    [MT_OP_SCALE] = "scale",
    [MT_OP_EMBEDDING] = "embedding",
    [MT_OP_RMSNORM] = "rmsnorm",
    [MT_OP_ROPE] = "rope",
    [MT_OP_ATTENTION] = "attention",
    [MT_OP_SWIGLU] = "swiglu",
    [MT_OP_SIGMOID_GATE] = "sigmoid_gate",
    [MT_OP_ROUTE] = "route",
    [MT_OP_MOE_PERMUTE] = "moe_permute",
    [MT_OP_CROSS_ENTROPY] = "cross_entropy",
    [MT_OP_ADAMW] = "adamw",
    [MT_OP_SUM_SQUARES] = "sum_squares",
    [MT_OP_ADD_BIAS] = "add_bias",
    [MT_OP_COPY_2D] = "copy_2d",
    [MT_OP_PAGED_ATTENTION] = "paged_attention",
    [MT_OP_LOWRANK] = "lowrank",
    [MT_OP_LOWP_MATMUL] = "lowp_matmul",
    [MT_OP_GROUPED_MATMUL] = "grouped_matmul",
};

const char *mt_op_name(mt_op op) {
    if ((unsigned)op >= MT_OP_COUNT || !op_names[op]) return "unknown op";
    return op_names[op];
}

mt_status mt_backend_init(mt_backend **out, mt_backend_kind kind, int threads, mt_error *err) {
    *out = NULL;
    switch (kind) {
    case MT_BACKEND_CPU:
        return mt_cpu_backend_init(out, threads, err);
    case MT_BACKEND_CUDA:
#ifdef MOETUNE_CUDA
        return mt_cuda_backend_init(out, threads, err);
#else
        return mt_error_set(err, MT_ERR_UNSUPPORTED,
                            "CUDA backend: this moetune was built without CUDA (configure with -DMOETUNE_CUDA=ON)");
#endif
    }
    return mt_error_set(err, MT_ERR_INVALID, "backend kind %d is not a known backend", (int)kind);
}

void mt_backend_free(mt_backend *be) {
    if (be) be->iface->free(be);
}

mt_backend_kind mt_backend_get_kind(const mt_backend *be) { return be->iface->kind; }
const char *mt_backend_name(const mt_backend *be) { return be->iface->name; }
const char *mt_backend_describe(const mt_backend *be) { return be->iface->describe(be); }
int mt_backend_threads(const mt_backend *be) { return be->iface->threads(be); }

bool mt_backend_supports(const mt_backend *be, mt_op op) {
    if ((unsigned)op >= MT_OP_COUNT) return false;
    return be->iface->supports_op(be, op);
}

/* An unsupported op is a programming error in the caller (it should have asked
 * mt_backend_supports), so it aborts like MT_ASSERT, but with the op and backend named. */
static void require_op(const mt_backend *be, mt_op op, int line) {
    if (be->iface->supports_op(be, op)) return;
    char what[256];
    snprintf(what, sizeof what, "the %s backend supports op %s (check mt_backend_supports before calling)",
             be->iface->name, mt_op_name(op));
    mt_assert_fail(what, __FILE__, line);
}
#define REQUIRE(op) require_op(be, op, __LINE__)

void *mt_backend_alloc(mt_backend *be, size_t bytes) { return be->iface->alloc(be, bytes); }
void mt_backend_release(mt_backend *be, void *p) {
    if (p) be->iface->release(be, p);
}
void mt_backend_upload(mt_backend *be, void *dst, const void *host_src, size_t bytes) {
    if (bytes) be->iface->upload(be, dst, host_src, bytes);
}
void mt_backend_download(mt_backend *be, void *host_dst, const void *src, size_t bytes) {
    if (bytes) be->iface->download(be, host_dst, src, bytes);
}
void mt_backend_memset0(mt_backend *be, void *p, size_t bytes) {
    if (bytes) be->iface->memset0(be, p, bytes);
}
void mt_backend_copy(mt_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes) be->iface->copy(be, dst, src, bytes);
}
void mt_backend_sync(mt_backend *be) { be->iface->sync(be); }

/* ---- ops ---- */

void mt_matmul(mt_backend *be, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    REQUIRE(MT_OP_MATMUL);
    be->iface->matmul(be, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void mt_add(mt_backend *be, float *y, const float *x, float alpha, size_t n) {
    REQUIRE(MT_OP_ADD);
    be->iface->add(be, y, x, alpha, n);
}

void mt_scale(mt_backend *be, float *x, float alpha, size_t n) {
    REQUIRE(MT_OP_SCALE);
    be->iface->scale(be, x, alpha, n);
}

double mt_sum_squares(mt_backend *be, const float *x, size_t n) {
    REQUIRE(MT_OP_SUM_SQUARES);
    return be->iface->sum_squares(be, x, n);
}

void mt_add_bias(mt_backend *be, float *y, const float *b, int n, int d) {
    REQUIRE(MT_OP_ADD_BIAS);
    be->iface->add_bias(be, y, b, n, d);
}

void mt_add_bias_backward(mt_backend *be, const float *dy, int n, int d, float *db) {
    REQUIRE(MT_OP_ADD_BIAS);
    be->iface->add_bias_backward(be, dy, n, d, db);
}

void mt_copy_2d(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    REQUIRE(MT_OP_COPY_2D);
    be->iface->copy_2d(be, dst, ldd, src, lds, rows, cols);
}

void mt_add_2d(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    REQUIRE(MT_OP_COPY_2D);
    be->iface->add_2d(be, dst, ldd, src, lds, rows, cols);
}

void mt_embedding_forward(mt_backend *be, const int32_t *tokens, int n, const float *table, int d, float *out) {
    REQUIRE(MT_OP_EMBEDDING);
    be->iface->embedding_forward(be, tokens, n, table, d, out);
}

void mt_embedding_backward(mt_backend *be, const int32_t *tokens, int n, const float *dout, int d, float *dtable) {
    REQUIRE(MT_OP_EMBEDDING);
    be->iface->embedding_backward(be, tokens, n, dout, d, dtable);
}

void mt_rmsnorm_forward(mt_backend *be, const float *x, const float *w, float *y, float *rstd, int n, int d,
                        float eps) {
    REQUIRE(MT_OP_RMSNORM);
    be->iface->rmsnorm_forward(be, x, w, y, rstd, n, d, eps);
}

void mt_rmsnorm_backward(mt_backend *be, const float *dy, const float *x, const float *w, const float *rstd,
                         float *dx, float *dw, int n, int d) {
    REQUIRE(MT_OP_RMSNORM);
    be->iface->rmsnorm_backward(be, dy, x, w, rstd, dx, dw, n, d);
}

void mt_rope_forward(mt_backend *be, const mt_rope_args *a, float *x) {
    REQUIRE(MT_OP_ROPE);
    be->iface->rope_forward(be, a, x);
}

void mt_rope_backward(mt_backend *be, const mt_rope_args *a, float *dx) {
    REQUIRE(MT_OP_ROPE);
    be->iface->rope_backward(be, a, dx);
}

void mt_attention_forward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k, const float *v,
                          float *o, float *lse) {
    REQUIRE(MT_OP_ATTENTION);
    be->iface->attention_forward(be, a, q, k, v, o, lse);
}

void mt_attention_backward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k, const float *v,
                           const float *o, const float *lse, const float *dout, float *dq, float *dk, float *dv) {
    REQUIRE(MT_OP_ATTENTION);
    be->iface->attention_backward(be, a, q, k, v, o, lse, dout, dq, dk, dv);
}

void mt_lowrank_forward(mt_backend *be, int n, int in, int out, int r, float scale, const float *x, int ldx,
                        const float *A, bool a_t, const float *B, bool b_t, float *h, float *y, int ldy) {
    REQUIRE(MT_OP_LOWRANK);
    be->iface->lowrank_forward(be, n, in, out, r, scale, x, ldx, A, a_t, B, b_t, h, y, ldy);
}

void mt_lowp_matmul(mt_backend *be, const mt_lowp_weight *W, int n, const float *x, int ldx, float *y, int ldy) {
    REQUIRE(MT_OP_LOWP_MATMUL);
    be->iface->lowp_matmul(be, W, n, x, ldx, y, ldy);
}

void mt_lowp_matmul_dx(mt_backend *be, const mt_lowp_weight *W, int n, const float *dy, int lddy, float *dx,
                       int lddx) {
    REQUIRE(MT_OP_LOWP_MATMUL);
    be->iface->lowp_matmul_dx(be, W, n, dy, lddy, dx, lddx);
}

void mt_grouped_matmul(mt_backend *be, int G, const int32_t *offsets, int in, const float *x, int n_proj,
                       const mt_grouped_proj *p) {
    REQUIRE(MT_OP_GROUPED_MATMUL);
    be->iface->grouped_matmul(be, G, offsets, in, x, n_proj, p);
}

void mt_grouped_matmul_backward(mt_backend *be, int G, const int32_t *offsets, int in, const float *x, float *dx,
                                int n_proj, const mt_grouped_proj *p) {
    REQUIRE(MT_OP_GROUPED_MATMUL);
    be->iface->grouped_matmul_backward(be, G, offsets, in, x, dx, n_proj, p);
}

void mt_paged_attention_forward(mt_backend *be, const mt_paged_attn_args *a, const float *q, float *o) {
    REQUIRE(MT_OP_PAGED_ATTENTION);
    be->iface->paged_attention_forward(be, a, q, o);
}

void mt_swiglu_forward(mt_backend *be, const float *g, const float *u, float *h, size_t n) {
    REQUIRE(MT_OP_SWIGLU);
    be->iface->swiglu_forward(be, g, u, h, n);
}

void mt_swiglu_backward(mt_backend *be, const float *dh, const float *g, const float *u, float *dg, float *du,
                        size_t n) {
    REQUIRE(MT_OP_SWIGLU);
    be->iface->swiglu_backward(be, dh, g, u, dg, du, n);
}

void mt_sigmoid_gate_forward(mt_backend *be, const float *z, const float *x, float *y, int n, int d) {
    REQUIRE(MT_OP_SIGMOID_GATE);
    be->iface->sigmoid_gate_forward(be, z, x, y, n, d);
}

void mt_sigmoid_gate_backward(mt_backend *be, const float *z, const float *x, const float *dy, float *dz, float *dx,
                              int n, int d) {
    REQUIRE(MT_OP_SIGMOID_GATE);
    be->iface->sigmoid_gate_backward(be, z, x, dy, dz, dx, n, d);
}

void mt_route_forward(mt_backend *be, const mt_route_args *a, const float *logits, float *scores, int32_t *idx,
                      float *w) {
    REQUIRE(MT_OP_ROUTE);
    be->iface->route_forward(be, a, logits, scores, idx, w);
}

void mt_route_backward(mt_backend *be, const mt_route_args *a, const float *scores, const int32_t *idx,
                       const float *dw, const float *dscores, float *dlogits) {
    REQUIRE(MT_OP_ROUTE);
    be->iface->route_backward(be, a, scores, idx, dw, dscores, dlogits);
}

void mt_moe_permute(mt_backend *be, const int32_t *idx, int n_tok, int k, int n_expert, int32_t *offsets,
                    int32_t *src_tok, int32_t *src_slot) {
    REQUIRE(MT_OP_MOE_PERMUTE);
    be->iface->moe_permute(be, idx, n_tok, k, n_expert, offsets, src_tok, src_slot);
}

void mt_gather_rows(mt_backend *be, const float *x, const int32_t *src_tok, int n_rows, int d, float *xp) {
    REQUIRE(MT_OP_MOE_PERMUTE);
    be->iface->gather_rows(be, x, src_tok, n_rows, d, xp);
}

void mt_gather_rows_backward(mt_backend *be, const float *dxp, const int32_t *src_tok, int n_rows, int d, float *dx) {
    REQUIRE(MT_OP_MOE_PERMUTE);
    be->iface->gather_rows_backward(be, dxp, src_tok, n_rows, d, dx);
}

void mt_moe_unpermute(mt_backend *be, const float *yp, const int32_t *src_tok, const int32_t *src_slot, const float *w,
                      int n_rows, int d, float *y) {
    REQUIRE(MT_OP_MOE_PERMUTE);
    be->iface->moe_unpermute(be, yp, src_tok, src_slot, w, n_rows, d, y);
}

void mt_moe_unpermute_backward(mt_backend *be, const float *dy, const float *yp, const int32_t *src_tok,
                               const int32_t *src_slot, const float *w, int n_rows, int d, float *dyp, float *dw) {
    REQUIRE(MT_OP_MOE_PERMUTE);
    be->iface->moe_unpermute_backward(be, dy, yp, src_tok, src_slot, w, n_rows, d, dyp, dw);
}

void mt_cross_entropy(mt_backend *be, float *logits, const int32_t *targets, int n, int V, float grad_scale,
                      float *losses) {
    REQUIRE(MT_OP_CROSS_ENTROPY);
    be->iface->cross_entropy(be, logits, targets, n, V, grad_scale, losses);
}

void mt_adamw_step(mt_backend *be, const mt_adamw_args *a, float *p, const float *g, float *m, float *v, size_t n) {
    REQUIRE(MT_OP_ADAMW);
    be->iface->adamw_step(be, a, p, g, m, v, n);
}

/* ---- sgemm throughput ---- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double mt_backend_sgemm_gflops(mt_backend *be, int n, int reps) {
    MT_ASSERT(n > 0);
    if (reps < 1) reps = 1;
    size_t nn = (size_t)n * (size_t)n, bytes = nn * sizeof(float);
    float *a = mt_backend_alloc(be, bytes), *b = mt_backend_alloc(be, bytes), *c = mt_backend_alloc(be, bytes);
    float *host = malloc(bytes);
    double *times = malloc((size_t)reps * sizeof(double));
    double result = 0;
    if (a && b && c && host && times) {
        mt_rng rng;
        mt_rng_seed(&rng, 1234);
        for (size_t i = 0; i < nn; i++) host[i] = mt_rng_float(&rng) - 0.5f;
        mt_backend_upload(be, a, host, bytes);
        for (size_t i = 0; i < nn; i++) host[i] = mt_rng_float(&rng) - 0.5f;
        mt_backend_upload(be, b, host, bytes);
        mt_matmul(be, false, false, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm-up: threads, caches */
        mt_backend_sync(be);
        for (int r = 0; r < reps; r++) {
            double t0 = mt_now_seconds();
            mt_matmul(be, false, false, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
            mt_backend_sync(be);
            times[r] = mt_now_seconds() - t0;
        }
        qsort(times, (size_t)reps, sizeof(double), cmp_double);
        double median = reps % 2 ? times[reps / 2] : 0.5 * (times[reps / 2 - 1] + times[reps / 2]);
        if (median > 0) result = 2.0 * (double)n * (double)n * (double)n / median * 1e-9;
    }
    free(times);
    free(host);
    mt_backend_release(be, c);
    mt_backend_release(be, b);
    mt_backend_release(be, a);
    return result;
}
