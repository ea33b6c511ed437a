/* cpu-impl.h — what the CPU backend's op files share: the backend context (thread count,
 * per-thread scratch), the parallel-loop threshold, fixed-order reductions, and the op
 * functions that cpu.c puts in the vtable. */
#ifndef MT_CPU_IMPL_H
#define MT_CPU_IMPL_H

#include "backend-impl.h"

typedef struct mt_cpu_ctx {
    int threads;
    char describe[256];
    /* Per-thread scratch, [threads, scratch_per_thread] floats, grown (never shrunk) on the
     * first call that needs more, so steady-state training steps never allocate. */
    float *scratch;
    size_t scratch_per_thread;
} mt_cpu_ctx;

static inline mt_cpu_ctx *mt_cpu_ctx_of(const mt_backend *be) { return (mt_cpu_ctx *)be->ctx; }
static inline int mt_cpu_nthreads(const mt_backend *be) { return mt_cpu_ctx_of(be)->threads; }

/* Below this many elements (or multiply-adds) a loop runs on one thread: waking the team
 * costs a few microseconds, more than the work. */
#define MT_CPU_PAR_MIN 32768

/* Returns the scratch base with at least `per_thread` floats for each of the backend's
 * threads; thread t owns base + t·mt_cpu_ctx_of(be)->scratch_per_thread. Call it outside
 * parallel regions. */
float *mt_cpu_scratch(mt_backend *be, size_t per_thread);

/* Dot product with eight independent partial sums combined in a fixed tree: GCC vectorises
 * it without -ffast-math, and the summation order depends on n alone, never on threads. */
static inline float mt_cpu_dot(const float *a, const float *b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Σ a⊙b⊙c, same scheme. */
static inline float mt_cpu_dot3(const float *a, const float *b, const float *c, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l] * c[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i] * c[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Scatter-adds and column sums (dtable[tok] += ..., db += Σ rows) are parallelised over
 * column chunks of this width: each element is then summed by one thread, in row order,
 * whatever the thread count. 64 floats = four cache lines. */
#define MT_CPU_COL_CHUNK 64

/* matmul.c */
void mt_cpu_matmul(mt_backend *be, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* elementwise.c */
void mt_cpu_add(mt_backend *be, float *y, const float *x, float alpha, size_t n);
void mt_cpu_scale(mt_backend *be, float *x, float alpha, size_t n);
double mt_cpu_sum_squares(mt_backend *be, const float *x, size_t n);
void mt_cpu_add_bias(mt_backend *be, float *y, const float *b, int n, int d);
void mt_cpu_add_bias_backward(mt_backend *be, const float *dy, int n, int d, float *db);
void mt_cpu_copy_2d(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols);
void mt_cpu_add_2d(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols);
void mt_cpu_embedding_forward(mt_backend *be, const int32_t *tokens, int n, const float *table, int d, float *out);
void mt_cpu_embedding_backward(mt_backend *be, const int32_t *tokens, int n, const float *dout, int d,
                               float *dtable);

/* norm.c */
void mt_cpu_rmsnorm_forward(mt_backend *be, const float *x, const float *w, float *y, float *rstd, int n, int d,
                            float eps);
void mt_cpu_rmsnorm_backward(mt_backend *be, const float *dy, const float *x, const float *w, const float *rstd,
                             float *dx, float *dw, int n, int d);

/* rope.c */
void mt_cpu_rope_forward(mt_backend *be, const mt_rope_args *a, float *x);
void mt_cpu_rope_backward(mt_backend *be, const mt_rope_args *a, float *dx);

/* lowrank.c */
void mt_cpu_lowrank_forward(mt_backend *be, int n, int in, int out, int r, float scale, const float *x, int ldx,
                            const float *A, bool a_t, const float *B, bool b_t, float *h, float *y, int ldy);

/* lowp_matmul.c */
void mt_cpu_lowp_matmul(mt_backend *be, const mt_lowp_weight *W, int n, const float *x, int ldx, float *y, int ldy);
void mt_cpu_lowp_matmul_dx(mt_backend *be, const mt_lowp_weight *W, int n, const float *dy, int lddy, float *dx,
                           int lddx);

/* grouped_matmul.c */
void mt_cpu_grouped_matmul(mt_backend *be, int G, const int32_t *offsets, int in, const float *x, int n_proj,
                           const mt_grouped_proj *p);
void mt_cpu_grouped_matmul_backward(mt_backend *be, int G, const int32_t *offsets, int in, const float *x,
                                    float *dx, int n_proj, const mt_grouped_proj *p);

/* paged_attention.c */
void mt_cpu_paged_attention_forward(mt_backend *be, const mt_paged_attn_args *a, const float *q, float *o);

/* attention.c */
void mt_cpu_attention_forward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k,
                              const float *v, float *o, float *lse);
void mt_cpu_attention_backward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k,
                               const float *v, const float *o, const float *lse, const float *dout, float *dq,
                               float *dk, float *dv);

/* swiglu.c */
void mt_cpu_swiglu_forward(mt_backend *be, const float *g, const float *u, float *h, size_t n);
void mt_cpu_swiglu_backward(mt_backend *be, const float *dh, const float *g, const float *u, float *dg, float *du,
                            size_t n);
void mt_cpu_sigmoid_gate_forward(mt_backend *be, const float *z, const float *x, float *y, int n, int d);
void mt_cpu_sigmoid_gate_backward(mt_backend *be, const float *z, const float *x, const float *dy, float *dz,
                                  float *dx, int n, int d);

/* route.c */
void mt_cpu_route_forward(mt_backend *be, const mt_route_args *a, const float *logits, float *scores, int32_t *idx,
                          float *w);
void mt_cpu_route_backward(mt_backend *be, const mt_route_args *a, const float *scores, const int32_t *idx,
                           const float *dw, const float *dscores, float *dlogits);

/* moe.c */
void mt_cpu_moe_permute(mt_backend *be, const int32_t *idx, int n_tok, int k, int n_expert, int32_t *offsets,
                        int32_t *src_tok, int32_t *src_slot);
void mt_cpu_gather_rows(mt_backend *be, const float *x, const int32_t *src_tok, int n_rows, int d, float *xp);
void mt_cpu_gather_rows_backward(mt_backend *be, const float *dxp, const int32_t *src_tok, int n_rows, int d,
                                 float *dx);
void mt_cpu_moe_unpermute(mt_backend *be, const float *yp, const int32_t *src_tok, const int32_t *src_slot,
                          const float *w, int n_rows, int d, float *y);
void mt_cpu_moe_unpermute_backward(mt_backend *be, const float *dy, const float *yp, const int32_t *src_tok,
                                   const int32_t *src_slot, const float *w, int n_rows, int d, float *dyp,
                                   float *dw);

/* loss.c */
void mt_cpu_cross_entropy(mt_backend *be, float *logits, const int32_t *targets, int n, int V, float grad_scale,
                          float *losses);

/* adamw.c */
void mt_cpu_adamw_step(mt_backend *be, const mt_adamw_args *a, float *p, const float *g, float *m, float *v,
                       size_t n);

#endif
