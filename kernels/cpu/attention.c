/* attention.c — causal grouped-query attention on the CPU, tiled as FlashAttention-2: the
 * forward streams key blocks through an online softmax and saves the log-sum-exp; the
 * backward recomputes each probability block from it. Scratch is O(block) per thread. */
#include "cpu/cpu-impl.h"

#include <limits.h>
#include <math.h>
#include <omp.h>

/* Query rows per tile (the transposed key block is reused across them) and keys per block.
 * Key blocks are aligned to absolute multiples of ATTN_BK, so the blocks a query's visible
 * keys fall into, and hence its floating-point result, depend on that query alone. */
enum { ATTN_BQ = 32, ATTN_BK = 64 };

#define Q_AT(a, q, b, t, h) ((q) + ((size_t)(b) * (a)->Tq + (size_t)(t)) * (a)->q_row + (size_t)(h) * (a)->q_head)
#define K_AT(a, k, b, j, g) ((k) + ((size_t)(b) * (a)->Tk + (size_t)(j)) * (a)->k_row + (size_t)(g) * (a)->k_head)
#define V_AT(a, v, b, j, g) ((v) + ((size_t)(b) * (a)->Tk + (size_t)(j)) * (a)->v_row + (size_t)(g) * (a)->v_head)
#define O_AT(a, o, b, t, h) ((o) + ((size_t)(b) * (a)->Tq + (size_t)(t)) * (a)->o_row + (size_t)(h) * (a)->o_head)

static void check_args(const mt_attn_args *a) {
    MT_ASSERT(a->B >= 0 && a->Tq >= 0 && a->Tk >= 0);
    MT_ASSERT(a->n_head > 0 && a->n_kv_head > 0 && a->n_head % a->n_kv_head == 0);
    MT_ASSERT(a->dqk > 0 && a->dv > 0);
    MT_ASSERT(a->q_offset >= 0 && a->q_offset + a->Tq <= a->Tk);
    if (a->kv_start)
        for (int b = 0; b < a->B; b++)
            for (int i = 0; i < a->Tq; i++) {
                int32_t s = a->kv_start[(size_t)b * a->Tq + i];
                MT_ASSERT(s >= 0 && s <= a->q_offset + i);
            }
}

/* Visible keys of query i of sequence b: lo ..= hi. */
static inline void key_range(const mt_attn_args *a, int b, int i, int *lo, int *hi) {
    *lo = a->kv_start ? a->kv_start[(size_t)b * a->Tq + i] : 0;
    *hi = a->q_offset + i;
}

static size_t attn_work(const mt_attn_args *a) {
    return (size_t)a->B * a->n_head * (size_t)a->Tq * (size_t)a->Tk * (size_t)(a->dqk + a->dv);
}

/* kt[i·ATTN_BK + c] = K[j0 + c][i]: rows of the key block become columns, so a score row is
 * a sequence of axpys over c, which vectorise and sum over i in a fixed order. Columns past
 * the block's nk keys are zeroed so that whole-block score rows read defined values. */
static void transpose_block(const float *base, size_t row_stride, int nk, int d, float *kt) {
    for (int c = 0; c < nk; c++) {
        const float *r = base + (size_t)c * row_stride;
        for (int i = 0; i < d; i++) kt[(size_t)i * ATTN_BK + c] = r[i];
    }
    if (nk < ATTN_BK)
        for (int i = 0; i < d; i++)
            for (int c = nk; c < ATTN_BK; c++) kt[(size_t)i * ATTN_BK + c] = 0.0f;
}

/* C[m·ldc + n] (+)= Σ_k A[m·am + k·ak] · B[k·ldb + n] for m < M, n < N: k ascending, one fused
 * rounding per term, starting from C's value (acc) or from zero. Element for element that is
 * the sequence of an axpy per k, so which rows and columns share registers never changes a
 * bit, and a zero coefficient leaves an element as it was (finite B). am/ak let A be read
 * transposed (Pᵀ·dO) without a copy. */
#ifdef __AVX2__
/* mr rows × 16 columns: 2·mr accumulators (mr ≤ 6: 12 of the 16 ymm registers), per k two
 * loads of B and mr broadcasts of A. Always inlined with a constant mr, so the row loops
 * unroll and the accumulators stay in registers. */
static inline __attribute__((always_inline)) void gemm_16(int mr, bool acc, int K, const float *A, size_t am,
                                                           size_t ak, const float *B, size_t ldb, float *C,
                                                           size_t ldc) {
    __m256 c0[6], c1[6];
    for (int r = 0; r < mr; r++) {
        c0[r] = acc ? _mm256_loadu_ps(C + (size_t)r * ldc) : _mm256_setzero_ps();
        c1[r] = acc ? _mm256_loadu_ps(C + (size_t)r * ldc + 8) : _mm256_setzero_ps();
    }
    for (int k = 0; k < K; k++) {
        const __m256 b0 = _mm256_loadu_ps(B + (size_t)k * ldb), b1 = _mm256_loadu_ps(B + (size_t)k * ldb + 8);
        for (int r = 0; r < mr; r++) {
            const __m256 a = _mm256_broadcast_ss(A + (size_t)r * am + (size_t)k * ak);
            c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm256_storeu_ps(C + (size_t)r * ldc, c0[r]);
        _mm256_storeu_ps(C + (size_t)r * ldc + 8, c1[r]);
    }
}

static inline __attribute__((always_inline)) void gemm_8(int mr, bool acc, int K, const float *A, size_t am,
                                                          size_t ak, const float *B, size_t ldb, float *C,
                                                          size_t ldc) {
    __m256 c0[6];
    for (int r = 0; r < mr; r++) c0[r] = acc ? _mm256_loadu_ps(C + (size_t)r * ldc) : _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        const __m256 b0 = _mm256_loadu_ps(B + (size_t)k * ldb);
        for (int r = 0; r < mr; r++)
            c0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + (size_t)r * am + (size_t)k * ak), b0, c0[r]);
    }
    for (int r = 0; r < mr; r++) _mm256_storeu_ps(C + (size_t)r * ldc, c0[r]);
}

#define GEMM_ROWS(kern, m, ...)                                                                         \
    switch (m) {                                                                                        \
    case 1: kern(1, __VA_ARGS__); break;                                                                \
    case 2: kern(2, __VA_ARGS__); break;                                                                \
    case 3: kern(3, __VA_ARGS__); break;                                                                \
    case 4: kern(4, __VA_ARGS__); break;                                                                \
    case 5: kern(5, __VA_ARGS__); break;                                                                \
    default: kern(6, __VA_ARGS__); break;                                                               \
    }
#endif

static void tile_gemm(bool acc, int M, int N, int K, const float *A, size_t am, size_t ak, const float *B, size_t ldb,
                      float *C, size_t ldc) {
    int n0 = 0;
#ifdef __AVX2__
    for (; n0 + 16 <= N; n0 += 16)
        for (int m0 = 0; m0 < M; m0 += 6) {
            const int mr = M - m0 < 6 ? M - m0 : 6;
            GEMM_ROWS(gemm_16, mr, acc, K, A + (size_t)m0 * am, am, ak, B + n0, ldb, C + (size_t)m0 * ldc + n0, ldc)
        }
    for (; n0 + 8 <= N; n0 += 8)
        for (int m0 = 0; m0 < M; m0 += 6) {
            const int mr = M - m0 < 6 ? M - m0 : 6;
            GEMM_ROWS(gemm_8, mr, acc, K, A + (size_t)m0 * am, am, ak, B + n0, ldb, C + (size_t)m0 * ldc + n0, ldc)
        }
#endif
    for (int m = 0; m < M; m++)
        for (int n = n0; n < N; n++) {
            float s = acc ? C[(size_t)m * ldc + n] : 0.0f;
            for (int k = 0; k < K; k++) s = fmaf(A[(size_t)m * am + (size_t)k * ak], B[(size_t)k * ldb + n], s);
            C[(size_t)m * ldc + n] = s;
        }
}

/* row[c] = 0 for the block's columns c < nk outside the visible cl ..= ch (all when cl > ch). */
static inline void zero_outside(float *row, int nk, int cl, int ch) {
    for (int c = 0; c < nk; c++)
        if (c < cl || c > ch) row[c] = 0.0f;
}

/* Each tile's probabilities (and in the backward dS) are formed over the whole key block and
 * zeroed outside every row's visible keys, so the products with V, dO, Q and K are tile GEMMs
 * in which a hidden key adds nothing: a query's sums are those of its visible keys alone, in
 * ascending order, whatever tile or chunk it is computed in. */
void mt_cpu_attention_forward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k,
                              const float *v, float *o, float *lse) {
    check_args(a);
    const int dqk = a->dqk, dv = a->dv, group = a->n_head / a->n_kv_head;
    const size_t per = (size_t)dqk * ATTN_BK + (size_t)ATTN_BQ * ATTN_BK + (size_t)ATTN_BQ * dv + 2 * ATTN_BQ;
    float *scratch = mt_cpu_scratch(be, per);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    const int tasks = a->B * a->n_head, nt = mt_cpu_nthreads(be);

#pragma omp parallel for num_threads(nt) if (attn_work(a) >= MT_CPU_PAR_MIN) schedule(static)
    for (int task = 0; task < tasks; task++) {
        const int b = task / a->n_head, h = task % a->n_head, g = h / group;
        float *kt = scratch + (size_t)omp_get_thread_num() * stride; /* [dqk, BK] */
        float *S = kt + (size_t)dqk * ATTN_BK;                       /* [BQ, BK] scores, then P */
        float *acc = S + (size_t)ATTN_BQ * ATTN_BK;                  /* [BQ, dv] */
        float *m = acc + (size_t)ATTN_BQ * dv;                       /* [BQ] running max */
        float *l = m + ATTN_BQ;                                      /* [BQ] running sum */

        for (int i0 = 0; i0 < a->Tq; i0 += ATTN_BQ) {
            const int nq = a->Tq - i0 < ATTN_BQ ? a->Tq - i0 : ATTN_BQ;
            int jlo = INT_MAX, jhi = -1;
            for (int r = 0; r < nq; r++) {
                int lo, hi;
                key_range(a, b, i0 + r, &lo, &hi);
                if (lo < jlo) jlo = lo;
                if (hi > jhi) jhi = hi;
                m[r] = -INFINITY;
                l[r] = 0.0f;
                for (int i = 0; i < dv; i++) acc[(size_t)r * dv + i] = 0.0f;
            }
            const float *qt = Q_AT(a, q, b, i0, h);
            for (int j0 = jlo / ATTN_BK * ATTN_BK; j0 <= jhi; j0 += ATTN_BK) {
                const int nk = jhi + 1 - j0 < ATTN_BK ? jhi + 1 - j0 : ATTN_BK;
                transpose_block(K_AT(a, k, b, j0, g), (size_t)a->k_row, nk, dqk, kt);
                tile_gemm(false, nq, ATTN_BK, dqk, qt, (size_t)a->q_row, 1, kt, ATTN_BK, S, ATTN_BK);
                for (int r = 0; r < nq; r++) {
                    int lo, hi;
                    key_range(a, b, i0 + r, &lo, &hi);
                    const int cl = (lo > j0 ? lo : j0) - j0, ch = (hi < j0 + nk - 1 ? hi : j0 + nk - 1) - j0;
                    float *s = S + (size_t)r * ATTN_BK;
                    if (cl > ch) { /* no visible key in this block: the row is untouched */
                        zero_outside(s, nk, 0, -1);
                        continue;
                    }
                    float bmax = -INFINITY;
                    for (int c = cl; c <= ch; c++) {
                        s[c] *= a->scale;
                        if (s[c] > bmax) bmax = s[c];
                    }
                    const float mnew = m[r] > bmax ? m[r] : bmax;
                    const float f = mt_cpu_expf(m[r] - mnew); /* 0 on the first visible block */
                    const float sum = (float)mt_cpu_exp_affine(s + cl, s + cl, ch - cl + 1, 1.0f, -mnew);
                    zero_outside(s, nk, cl, ch);
                    l[r] = l[r] * f + sum;
                    m[r] = mnew;
                    float *ar = acc + (size_t)r * dv;
                    if (f != 1.0f)
                        for (int i = 0; i < dv; i++) ar[i] *= f;
                }
                tile_gemm(true, nq, dv, nk, S, ATTN_BK, 1, V_AT(a, v, b, j0, g), (size_t)a->v_row, acc, (size_t)dv);
            }
            for (int r = 0; r < nq; r++) {
                float *orow = O_AT(a, o, b, i0 + r, h);
                const float *ar = acc + (size_t)r * dv;
                for (int i = 0; i < dv; i++) orow[i] = ar[i] / l[r];
                lse[((size_t)b * a->n_head + h) * a->Tq + i0 + r] = m[r] + logf(l[r]);
            }
        }
    }
}

/* One task per (sequence, KV head): it runs every query head that reads this KV head, so the
 * dK/dV rows it accumulates have a single owner (no races, no atomics) and are summed over the
 * group's heads in a fixed order. Per (query tile, key block) the tile's P and dS are formed
 * first, then dV += Pᵀ·dO, dK += dSᵀ·Q and dQ += dS·K, each element summed in the order
 * (head, tile, row) that does not depend on the thread count. */
void mt_cpu_attention_backward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k,
                               const float *v, const float *o, const float *lse, const float *dout, float *dq,
                               float *dk, float *dv) {
    check_args(a);
    if (!dq && !dk && !dv) return;
    const int dqk = a->dqk, dvw = a->dv, group = a->n_head / a->n_kv_head;
    const size_t per = (size_t)dqk * ATTN_BK + (size_t)dvw * ATTN_BK + 2 * (size_t)ATTN_BQ * ATTN_BK +
                       (size_t)ATTN_BQ * dqk + ATTN_BQ;
    float *scratch = mt_cpu_scratch(be, per);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    const int tasks = a->B * a->n_kv_head, nt = mt_cpu_nthreads(be);
    const float scale = a->scale;

#pragma omp parallel for num_threads(nt) if (attn_work(a) >= MT_CPU_PAR_MIN) schedule(static)
    for (int task = 0; task < tasks; task++) {
        const int b = task / a->n_kv_head, g = task % a->n_kv_head;
        float *kt = scratch + (size_t)omp_get_thread_num() * stride; /* [dqk, BK] */
        float *vt = kt + (size_t)dqk * ATTN_BK;                      /* [dv, BK] */
        float *P = vt + (size_t)dvw * ATTN_BK;                       /* [BQ, BK] probabilities */
        float *DS = P + (size_t)ATTN_BQ * ATTN_BK;                   /* [BQ, BK] dP, then dS */
        float *dqacc = DS + (size_t)ATTN_BQ * ATTN_BK;               /* [BQ, dqk] */
        float *D = dqacc + (size_t)ATTN_BQ * dqk;                    /* [BQ] rowsum(dO⊙O) */

        for (int hh = 0; hh < group; hh++) {
            const int h = g * group + hh;
            const float *lse_h = lse + ((size_t)b * a->n_head + h) * a->Tq;
            for (int i0 = 0; i0 < a->Tq; i0 += ATTN_BQ) {
                const int nq = a->Tq - i0 < ATTN_BQ ? a->Tq - i0 : ATTN_BQ;
                int jlo = INT_MAX, jhi = -1;
                for (int r = 0; r < nq; r++) {
                    int lo, hi;
                    key_range(a, b, i0 + r, &lo, &hi);
                    if (lo < jlo) jlo = lo;
                    if (hi > jhi) jhi = hi;
                    D[r] = mt_cpu_dot(O_AT(a, dout, b, i0 + r, h), O_AT(a, o, b, i0 + r, h), dvw);
                    for (int i = 0; i < dqk; i++) dqacc[(size_t)r * dqk + i] = 0.0f;
                }
                const float *q0 = Q_AT(a, q, b, i0, h), *g0 = O_AT(a, dout, b, i0, h);
                for (int j0 = jlo / ATTN_BK * ATTN_BK; j0 <= jhi; j0 += ATTN_BK) {
                    const int nk = jhi + 1 - j0 < ATTN_BK ? jhi + 1 - j0 : ATTN_BK;
                    transpose_block(K_AT(a, k, b, j0, g), (size_t)a->k_row, nk, dqk, kt);
                    transpose_block(V_AT(a, v, b, j0, g), (size_t)a->v_row, nk, dvw, vt);
                    tile_gemm(false, nq, ATTN_BK, dqk, q0, (size_t)a->q_row, 1, kt, ATTN_BK, P, ATTN_BK);
                    /* dP = dO·Vᵀ */
                    tile_gemm(false, nq, ATTN_BK, dvw, g0, (size_t)a->o_row, 1, vt, ATTN_BK, DS, ATTN_BK);
                    for (int r = 0; r < nq; r++) {
                        int lo, hi;
                        key_range(a, b, i0 + r, &lo, &hi);
                        const int cl = (lo > j0 ? lo : j0) - j0, ch = (hi < j0 + nk - 1 ? hi : j0 + nk - 1) - j0;
                        float *p = P + (size_t)r * ATTN_BK, *ds = DS + (size_t)r * ATTN_BK;
                        if (cl <= ch) {
                            mt_cpu_exp_affine(p + cl, p + cl, ch - cl + 1, scale, -lse_h[i0 + r]);
                            for (int c = cl; c <= ch; c++) ds[c] = p[c] * (ds[c] - D[r]) * scale;
                        }
                        zero_outside(p, nk, cl, ch);
                        zero_outside(ds, nk, cl, ch);
                    }
                    if (dv)
                        tile_gemm(true, nk, dvw, nq, P, 1, ATTN_BK, g0, (size_t)a->o_row, V_AT(a, dv, b, j0, g),
                                  (size_t)a->v_row);
                    if (dk)
                        tile_gemm(true, nk, dqk, nq, DS, 1, ATTN_BK, q0, (size_t)a->q_row, K_AT(a, dk, b, j0, g),
                                  (size_t)a->k_row);
                    if (dq)
                        tile_gemm(true, nq, dqk, nk, DS, ATTN_BK, 1, K_AT(a, k, b, j0, g), (size_t)a->k_row, dqacc,
                                  (size_t)dqk);
                }
                if (dq)
                    for (int r = 0; r < nq; r++) {
                        float *dqr = Q_AT(a, dq, b, i0 + r, h);
                        const float *acc = dqacc + (size_t)r * dqk;
                        for (int i = 0; i < dqk; i++) dqr[i] += acc[i];
                    }
            }
        }
    }
}
