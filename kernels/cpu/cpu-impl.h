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

/* exp(x) in float to about 1 ulp (Cephes' expf: n = round(x·log2 e), r = x − n·ln 2 in two
 * parts, a degree-6 polynomial, times 2^n), 0 below −87.3 and +inf above 88.7, NaN kept. The
 * scalar and the eight-lane version run the same operations (explicit FMAs, nothing left for
 * the compiler to contract), so an element's value never depends on whether it fell in a
 * vector or in a loop's tail: results stay independent of block and tile sizes. libm's expf is
 * a call per element; this is what the softmaxes spend most of their time in. */
#define MT_EXP_LO (-87.3f)
#define MT_EXP_HI 88.7f
static inline float mt_cpu_expf(float x) {
    if (x != x) return x;
    if (x < MT_EXP_LO) return 0.0f;
    if (x > MT_EXP_HI) return __builtin_inff();
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = __builtin_fmaf(n, -0.693359375f, x);
    r = __builtin_fmaf(n, 2.12194440e-4f, r);
    float z = r * r;
    float p = 1.9875691500e-4f;
    p = __builtin_fmaf(p, r, 1.3981999507e-3f);
    p = __builtin_fmaf(p, r, 8.3334519073e-3f);
    p = __builtin_fmaf(p, r, 4.1665795894e-2f);
    p = __builtin_fmaf(p, r, 1.6666665459e-1f);
    p = __builtin_fmaf(p, r, 5.0000001201e-1f);
    p = __builtin_fmaf(p, z, r);
    p = p + 1.0f;
    int32_t bits;
    __builtin_memcpy(&bits, &p, sizeof bits);
    bits += (int32_t)n * (1 << 23);
    __builtin_memcpy(&p, &bits, sizeof p);
    return p;
}

#ifdef __AVX2__
#include <immintrin.h>
static inline __m256 mt_cpu_exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(MT_EXP_LO), hi = _mm256_set1_ps(MT_EXP_HI);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 z = _mm256_mul_ps(r, r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, z, r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    p = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    p = _mm256_blendv_ps(p, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    p = _mm256_blendv_ps(p, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_blendv_ps(p, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
#endif

/* dst[i] = exp(src[i]·a + b) (one FMA, then mt_cpu_expf); returns Σ dst[i] summed in double
 * in a fixed order that depends on n alone. dst may be src. */
static inline double mt_cpu_exp_affine(const float *src, float *dst, int n, float a, float b) {
    int i = 0;
    double sum = 0.0;
#ifdef __AVX2__
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    for (; i + 8 <= n; i += 8) {
        __m256 e = mt_cpu_exp8(_mm256_fmadd_ps(_mm256_loadu_ps(src + i), va, vb));
        _mm256_storeu_ps(dst + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(s0, s1));
    sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
#endif
    for (; i < n; i++) {
        dst[i] = mt_cpu_expf(__builtin_fmaf(src[i], a, b));
        sum += dst[i];
    }
    return sum;
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
/* The few-rows forward on the calling thread: y[t·ldy + o] = ⟨x_t, W_o⟩ for the n ≤
 * MT_CPU_LOWP_GEMV_ROWS rows t of x and the channels o = o0 .. o0+no−1, computed from the stored
 * weights (no fp32 copy). An element's bits depend on neither n nor o0, no (nor the thread). */
#define MT_CPU_LOWP_GEMV_ROWS 8
void mt_cpu_lowp_gemv(const mt_lowp_weight *W, int o0, int no, int n, const float *x, int ldx, float *y, int ldy);
/* The same kernel over an fp32 weight w [out, in] (no packing of w, unlike sgemm with M = 1). */
void mt_cpu_f32_gemv(const float *w, int out, int in, int o0, int no, int n, const float *x, int ldx, float *y,
                     int ldy);

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
