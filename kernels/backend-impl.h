/* backend-impl.h — the kernels room's private backend interface (ggml style): a backend is
 * { iface, ctx }, its vtable holds memory management, a supports_op query and one function
 * pointer per op. Only kernels/ includes this; everyone else sees kernels/kernels.h. */
#ifndef MT_BACKEND_IMPL_H
#define MT_BACKEND_IMPL_H

#include "kernels/kernels.h"

typedef struct mt_backend_iface {
    mt_backend_kind kind;
    const char *name; /* "cpu", "cuda" */

    void (*free)(mt_backend *be); /* frees ctx and be */
    const char *(*describe)(const mt_backend *be);
    int (*threads)(const mt_backend *be);
    /* false for an op whose pointer below is NULL or that this device cannot run */
    bool (*supports_op)(const mt_backend *be, mt_op op);

    void *(*alloc)(mt_backend *be, size_t bytes);
    void (*release)(mt_backend *be, void *p);
    void (*upload)(mt_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(mt_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*memset0)(mt_backend *be, void *p, size_t bytes);
    void (*copy)(mt_backend *be, void *dst, const void *src, size_t bytes);
    void (*sync)(mt_backend *be);

    /* ops: same signatures and contracts as the public functions in kernels.h */
    void (*matmul)(mt_backend *be, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc);
    void (*add)(mt_backend *be, float *y, const float *x, float alpha, size_t n);
    void (*scale)(mt_backend *be, float *x, float alpha, size_t n);
    double (*sum_squares)(mt_backend *be, const float *x, size_t n);
    void (*add_bias)(mt_backend *be, float *y, const float *b, int n, int d);
    void (*add_bias_backward)(mt_backend *be, const float *dy, int n, int d, float *db);
    void (*copy_2d)(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols);
    void (*add_2d)(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols);
    void (*embedding_forward)(mt_backend *be, const int32_t *tokens, int n, const float *table, int d, float *out);
    void (*embedding_backward)(mt_backend *be, const int32_t *tokens, int n, const float *dout, int d,
                               float *dtable);
    void (*rmsnorm_forward)(mt_backend *be, const float *x, const float *w, float *y, float *rstd, int n, int d,
                            float eps);
    void (*rmsnorm_backward)(mt_backend *be, const float *dy, const float *x, const float *w, const float *rstd,
                             float *dx, float *dw, int n, int d);
    void (*rope_forward)(mt_backend *be, const mt_rope_args *a, float *x);
    void (*rope_backward)(mt_backend *be, const mt_rope_args *a, float *dx);
    void (*attention_forward)(mt_backend *be, const mt_attn_args *a, const float *q, const float *k, const float *v,
                              float *o, float *lse);
    void (*attention_backward)(mt_backend *be, const mt_attn_args *a, const float *q, const float *k,
                               const float *v, const float *o, const float *lse, const float *dout, float *dq,
                               float *dk, float *dv);
    void (*lowrank_forward)(mt_backend *be, int n, int in, int out, int r, float scale, const float *x, int ldx,
                            const float *A, bool a_t, const float *B, bool b_t, float *h, float *y, int ldy);
    void (*lowp_matmul)(mt_backend *be, const mt_lowp_weight *W, int n, const float *x, int ldx, float *y, int ldy);
    void (*lowp_matmul_dx)(mt_backend *be, const mt_lowp_weight *W, int n, const float *dy, int lddy, float *dx,
                           int lddx);
    void (*grouped_matmul)(mt_backend *be, int G, const int32_t *offsets, int in, const float *x, int n_proj,
                           const mt_grouped_proj *p);
    void (*grouped_matmul_backward)(mt_backend *be, int G, const int32_t *offsets, int in, const float *x,
                                    float *dx, int n_proj, const mt_grouped_proj *p);
    void (*paged_attention_forward)(mt_backend *be, const mt_paged_attn_args *a, const float *q, float *o);
    void (*swiglu_forward)(mt_backend *be, const float *g, const float *u, float *h, size_t n);
    void (*swiglu_backward)(mt_backend *be, const float *dh, const float *g, const float *u, float *dg, float *du,
                            size_t n);
    void (*sigmoid_gate_forward)(mt_backend *be, const float *z, const float *x, float *y, int n, int d);
    void (*sigmoid_gate_backward)(mt_backend *be, const float *z, const float *x, const float *dy, float *dz,
                                  float *dx, int n, int d);
    void (*route_forward)(mt_backend *be, const mt_route_args *a, const float *logits, float *scores,
                          int32_t *idx, float *w);
    void (*route_backward)(mt_backend *be, const mt_route_args *a, const float *scores, const int32_t *idx,
                           const float *dw, const float *dscores, float *dlogits);
    void (*moe_permute)(mt_backend *be, const int32_t *idx, int n_tok, int k, int n_expert, int32_t *offsets,
                        int32_t *src_tok, int32_t *src_slot);
    void (*gather_rows)(mt_backend *be, const float *x, const int32_t *src_tok, int n_rows, int d, float *xp);
    void (*gather_rows_backward)(mt_backend *be, const float *dxp, const int32_t *src_tok, int n_rows, int d,
                                 float *dx);
    void (*moe_unpermute)(mt_backend *be, const float *yp, const int32_t *src_tok, const int32_t *src_slot,
                          const float *w, int n_rows, int d, float *y);
    void (*moe_unpermute_backward)(mt_backend *be, const float *dy, const float *yp, const int32_t *src_tok,
                                   const int32_t *src_slot, const float *w, int n_rows, int d, float *dyp,
                                   float *dw);
    void (*cross_entropy)(mt_backend *be, float *logits, const int32_t *targets, int n, int V, float grad_scale,
                          float *losses);
    void (*adamw_step)(mt_backend *be, const mt_adamw_args *a, float *p, const float *g, float *m, float *v,
                       size_t n);
} mt_backend_iface;

struct mt_backend {
    const mt_backend_iface *iface;
    void *ctx; /* the backend's own state (mt_cpu_ctx, mt_cuda_ctx) */
};

/* Backend constructors, called by mt_backend_init. */
mt_status mt_cpu_backend_init(mt_backend **out, int threads, mt_error *err);
#ifdef MOETUNE_CUDA
mt_status mt_cuda_backend_init(mt_backend **out, int threads, mt_error *err);
#endif

#endif
