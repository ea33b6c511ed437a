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

/* dst[i .. i+W) += Σ_{c = cl..ch} coef[c]·src[c·stride + i ..], c ascending, one fused
 * rounding per term (the sequence an axpy per c gives), with the W sums in registers. */
#define ROW_CHUNK(W)                                                                  \
    for (; i + (W) <= w; i += (W)) {                                                  \
        float acc[W];                                                                 \
        for (int l = 0; l < (W); l++) acc[l] = dst[i + l];                            \
        for (int c = cl; c <= ch; c++) {                                              \
            const float k = coef[c];                                                  \
            const float *x = src + (size_t)c * stride + i;                            \
            for (int l = 0; l < (W); l++) acc[l] = fmaf(k, x[l], acc[l]);             \
        }                                                                             \
        for (int l = 0; l < (W); l++) dst[i + l] = acc[l];                            \
    }

/* dst[0..w) += Σ_{c = cl..ch} coef[c]·src[c·stride + ·]: a row of P·V or dS·K. */
static inline void row_update(float *dst, int w, const float *coef, int cl, int ch, const float *src, size_t stride) {
    int i = 0;
    ROW_CHUNK(32)
    ROW_CHUNK(8)
    ROW_CHUNK(1)
}

/* The same over the rows r < nq of a tile that see key column c (rcl[r] ≤ c ≤ rch[r]), r
 * ascending, coefficients from column c of the tile's P or dS: a row of Pᵀ·dO or dSᵀ·Q. */
#define COL_CHUNK(W)                                                                  \
    for (; i + (W) <= w; i += (W)) {                                                  \
        float acc[W];                                                                 \
        for (int l = 0; l < (W); l++) acc[l] = dst[i + l];                            \
        for (int r = r0; r <= r1; r++) {                                              \
            if (c < rcl[r] || c > rch[r]) continue;                                   \
            const float k = coef[(size_t)r * ATTN_BK + c];                            \
            const float *x = src + (size_t)r * stride + i;                            \
            for (int l = 0; l < (W); l++) acc[l] = fmaf(k, x[l], acc[l]);             \
        }                                                                             \
        for (int l = 0; l < (W); l++) dst[i + l] = acc[l];                            \
    }

static inline void col_update(float *dst, int w, const float *coef, int c, const int *rcl, const int *rch, int nq,
                              const float *src, size_t stride) {
    int r0 = 0, r1 = nq - 1;
    while (r0 <= r1 && (c < rcl[r0] || c > rch[r0])) r0++;
    while (r1 >= r0 && (c < rcl[r1] || c > rch[r1])) r1--;
    if (r0 > r1) return;
    int i = 0;
    COL_CHUNK(32)
    COL_CHUNK(8)
    COL_CHUNK(1)
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
                    row_update(ar, dv, s, cl, ch, V_AT(a, v, b, j0, g), (size_t)a->v_row);
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
 * group's heads in a fixed order. Per (query tile, key block) the tile's P and dS are formed
 * first, then dV and dK take them a key column at a time and dQ a query row at a time, each
 * element summed in the order (head, tile, row) that does not depend on the thread count. */
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
        int rcl[ATTN_BQ], rch[ATTN_BQ];                              /* visible columns of the block */

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
                    for (int r = 0; r < nq; r++) {
                        int lo, hi;
                        key_range(a, b, i0 + r, &lo, &hi);
                        const int cl = (lo > j0 ? lo : j0) - j0, ch = (hi < j0 + nk - 1 ? hi : j0 + nk - 1) - j0;
                        rcl[r] = cl;
                        rch[r] = ch;
                        if (cl > ch) continue;
                        float *p = P + (size_t)r * ATTN_BK, *ds = DS + (size_t)r * ATTN_BK;
                        scores_row(q0 + (size_t)r * a->q_row, kt, dqk, p);
                        mt_cpu_exp_affine(p + cl, p + cl, ch - cl + 1, scale, -lse_h[i0 + r]);
                        scores_row(g0 + (size_t)r * a->o_row, vt, dvw, ds); /* dP = dO·Vᵀ */
                        for (int c = cl; c <= ch; c++) ds[c] = p[c] * (ds[c] - D[r]) * scale;
                    }
                    for (int c = 0; c < nk; c++) {
                        if (dv) col_update(V_AT(a, dv, b, j0 + c, g), dvw, P, c, rcl, rch, nq, g0, (size_t)a->o_row);
                        if (dk) col_update(K_AT(a, dk, b, j0 + c, g), dqk, DS, c, rcl, rch, nq, q0, (size_t)a->q_row);
                    }
                    if (dq)
                        for (int r = 0; r < nq; r++)
                            if (rcl[r] <= rch[r])
                                row_update(dqacc + (size_t)r * dqk, dqk, DS + (size_t)r * ATTN_BK, rcl[r], rch[r],
                                           K_AT(a, k, b, j0, g), (size_t)a->k_row);
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
