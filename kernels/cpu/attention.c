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

/* s[c] = Σ_i x[i]·t[i][c] for the whole block: the fixed trip count lets the compiler keep the
 * 64 partial sums in registers (8 × AVX2). Each s[c] is the same fused sequence over i
 * whatever the block's other columns hold, so results do not depend on tiling. */
static inline void scores_row(const float *x, const float *t, int d, float *s) {
    float acc[ATTN_BK];
    for (int c = 0; c < ATTN_BK; c++) acc[c] = 0.0f;
    for (int i = 0; i < d; i++) {
        const float xi = x[i];
        const float *tr = t + (size_t)i * ATTN_BK;
        for (int c = 0; c < ATTN_BK; c++) acc[c] = fmaf(xi, tr[c], acc[c]);
    }
    for (int c = 0; c < ATTN_BK; c++) s[c] = acc[c];
}

/* y[i] += a·x[i] with one rounding per element */
static inline void axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

void mt_cpu_attention_forward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k,
                              const float *v, float *o, float *lse) {
    check_args(a);
    const int dqk = a->dqk, dv = a->dv, group = a->n_head / a->n_kv_head;
    const size_t per = (size_t)dqk * ATTN_BK + ATTN_BK + (size_t)ATTN_BQ * dv + 2 * ATTN_BQ;
    float *scratch = mt_cpu_scratch(be, per);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    const int tasks = a->B * a->n_head, nt = mt_cpu_nthreads(be);

#pragma omp parallel for num_threads(nt) if (attn_work(a) >= MT_CPU_PAR_MIN) schedule(static)
    for (int task = 0; task < tasks; task++) {
        const int b = task / a->n_head, h = task % a->n_head, g = h / group;
        float *kt = scratch + (size_t)omp_get_thread_num() * stride; /* [dqk, BK] */
        float *s = kt + (size_t)dqk * ATTN_BK;                       /* [BK] */
        float *acc = s + ATTN_BK;                                    /* [BQ, dv] */
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
            for (int j0 = jlo / ATTN_BK * ATTN_BK; j0 <= jhi; j0 += ATTN_BK) {
                const int nk = jhi + 1 - j0 < ATTN_BK ? jhi + 1 - j0 : ATTN_BK;
                transpose_block(K_AT(a, k, b, j0, g), (size_t)a->k_row, nk, dqk, kt);
                for (int r = 0; r < nq; r++) {
                    int lo, hi;
                    key_range(a, b, i0 + r, &lo, &hi);
                    const int cl = (lo > j0 ? lo : j0) - j0, ch = (hi < j0 + nk - 1 ? hi : j0 + nk - 1) - j0;
                    if (cl > ch) continue; /* no visible key in this block: the row is untouched */
                    scores_row(Q_AT(a, q, b, i0 + r, h), kt, dqk, s);
                    float bmax = -INFINITY;
                    for (int c = cl; c <= ch; c++) {
                        s[c] *= a->scale;
                        if (s[c] > bmax) bmax = s[c];
                    }
                    const float mnew = m[r] > bmax ? m[r] : bmax;
                    const float f = mt_cpu_expf(m[r] - mnew); /* 0 on the first visible block */
                    const float sum = (float)mt_cpu_exp_affine(s + cl, s + cl, ch - cl + 1, 1.0f, -mnew);
                    l[r] = l[r] * f + sum;
                    m[r] = mnew;
                    float *ar = acc + (size_t)r * dv;
                    if (f != 1.0f)
                        for (int i = 0; i < dv; i++) ar[i] *= f;
                    for (int c = cl; c <= ch; c++) axpy(ar, s[c], V_AT(a, v, b, j0 + c, g), dv);
                }
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
 * group's heads in a fixed order. */
void mt_cpu_attention_backward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k,
                               const float *v, const float *o, const float *lse, const float *dout, float *dq,
                               float *dk, float *dv) {
    check_args(a);
    if (!dq && !dk && !dv) return;
    const int dqk = a->dqk, dvw = a->dv, group = a->n_head / a->n_kv_head;
    const size_t per = (size_t)dqk * ATTN_BK + (size_t)dvw * ATTN_BK + 2 * ATTN_BK + (size_t)ATTN_BQ * dqk + ATTN_BQ;
    float *scratch = mt_cpu_scratch(be, per);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    const int tasks = a->B * a->n_kv_head, nt = mt_cpu_nthreads(be);
    const float scale = a->scale;

#pragma omp parallel for num_threads(nt) if (attn_work(a) >= MT_CPU_PAR_MIN) schedule(static)
    for (int task = 0; task < tasks; task++) {
        const int b = task / a->n_kv_head, g = task % a->n_kv_head;
        float *kt = scratch + (size_t)omp_get_thread_num() * stride; /* [dqk, BK] */
        float *vt = kt + (size_t)dqk * ATTN_BK;                      /* [dv, BK] */
        float *p = vt + (size_t)dvw * ATTN_BK;                       /* [BK] probabilities */
        float *ds = p + ATTN_BK;                                     /* [BK] dP, then dS */
        float *dqacc = ds + ATTN_BK;                                 /* [BQ, dqk] */
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
                for (int j0 = jlo / ATTN_BK * ATTN_BK; j0 <= jhi; j0 += ATTN_BK) {
                    const int nk = jhi + 1 - j0 < ATTN_BK ? jhi + 1 - j0 : ATTN_BK;
                    transpose_block(K_AT(a, k, b, j0, g), (size_t)a->k_row, nk, dqk, kt);
                    transpose_block(V_AT(a, v, b, j0, g), (size_t)a->v_row, nk, dvw, vt);
                    for (int r = 0; r < nq; r++) {
                        int lo, hi;
                        key_range(a, b, i0 + r, &lo, &hi);
                        const int cl = (lo > j0 ? lo : j0) - j0, ch = (hi < j0 + nk - 1 ? hi : j0 + nk - 1) - j0;
                        if (cl > ch) continue;
                        const float *qr = Q_AT(a, q, b, i0 + r, h);
                        const float *gr = O_AT(a, dout, b, i0 + r, h);
                        const float lr = lse_h[i0 + r];
                        scores_row(qr, kt, dqk, p);
                        mt_cpu_exp_affine(p + cl, p + cl, ch - cl + 1, scale, -lr);
                        scores_row(gr, vt, dvw, ds); /* dP = dO·Vᵀ */
                        for (int c = cl; c <= ch; c++) ds[c] = p[c] * (ds[c] - D[r]) * scale;
                        for (int c = cl; c <= ch; c++) {
                            const int j = j0 + c;
                            if (dv) axpy(V_AT(a, dv, b, j, g), p[c], gr, dvw);
                            if (dq) axpy(dqacc + (size_t)r * dqk, ds[c], K_AT(a, k, b, j, g), dqk);
                            if (dk) axpy(K_AT(a, dk, b, j, g), ds[c], qr, dqk);
                        }
                    }
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
