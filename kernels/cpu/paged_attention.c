/* paged_attention.c — attention of decode rows over a paged KV cache on the CPU: every row
 * streams its own sequence's keys through an online softmax, reading each position through
 * the block table. One task per (row, KV head, key span) runs all the query heads of that KV
 * head, so a key row loaded for one head is reused by the group while it is in cache; a row
 * that sees more than one span of PA_SPLIT keys is split into spans merged afterwards, so a
 * long context's one decode row keeps every core busy (split-K, as flash-decoding). With a
 * keep mask (DAP) a head skips the blocks it prunes, and a block no head keeps is not read. */
#include "cpu/cpu-impl.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Keys per tile and per span, both aligned to absolute positions (see kernels.h: results
 * independent of the block size, of the thread count and of the step's other rows). */
enum { PA_TILE = 64, PA_SPLIT = 1024 };

/* The keep byte of query head h of row r for the block holding position p (NULL: kept). */
static inline const uint8_t *keep_of(const mt_paged_attn_args *a, int r, int h) {
    return a->keep ? a->keep + ((size_t)r * a->n_head + (size_t)h) * (size_t)a->keep_stride : NULL;
}

#ifdef __AVX2__
/* q·k for eight keys at once: eight accumulators run in parallel (one dot alone is a chain of
 * dependent FMAs), each lane holding the products of the channels ≡ lane (mod 8) in channel
 * order, then for every key the lanes are combined in the tree ((0+1)+(2+3))+((4+5)+(6+7)):
 * the value dot1 gives for the same key, so a key's score does not depend on which of the two
 * computed it. d is a multiple of 8. */
static inline __m256 dot8(const float *q, const float *const *k, int d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int i = 0; i < d; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[0] + i), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[1] + i), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[2] + i), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[3] + i), a3);
        a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[4] + i), a4);
        a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[5] + i), a5);
        a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[6] + i), a6);
        a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[7] + i), a7);
    }
    /* hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7] */
    const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    const __m128 lo = _mm_add_ps(_mm256_castps256_ps128(h0), _mm256_extractf128_ps(h0, 1));
    const __m128 hi = _mm_add_ps(_mm256_castps256_ps128(h1), _mm256_extractf128_ps(h1, 1));
    return _mm256_set_m128(hi, lo);
}

static inline float dot1(const float *q, const float *k, int d) {
    __m256 a = _mm256_setzero_ps();
    for (int i = 0; i < d; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a);
    float l[8];
    _mm256_storeu_ps(l, a);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}
#endif

/* Scores s[c] = scale·q·k of keys c ∈ [c0, c1] (key rows kr[c]). */
static inline void scores(const float *q, const float *const *kr, int c0, int c1, int d, float scale, float *s) {
    int c = c0;
#ifdef __AVX2__
    if (d % 8 == 0) {
        const __m256 sc = _mm256_set1_ps(scale);
        for (; c + 8 <= c1 + 1; c += 8) _mm256_storeu_ps(s + c, _mm256_mul_ps(dot8(q, kr + c, d), sc));
        for (; c <= c1; c++) s[c] = dot1(q, kr[c], d) * scale;
        return;
    }
#endif
    for (; c <= c1; c++) s[c] = mt_cpu_dot(q, kr[c], d) * scale;
}

/* acc [dv] += Σ_c p[c]·v_c over c ∈ [c0, c1] (value rows vr[c]), in c order for every element,
 * the accumulators held in registers eight vectors at a time. */
static inline void weighted_sum(const float *p, const float *const *vr, int c0, int c1, int dv, float *acc) {
    int i = 0;
#ifdef __AVX2__
    for (; i + 32 <= dv; i += 32) {
        __m256 a0 = _mm256_loadu_ps(acc + i), a1 = _mm256_loadu_ps(acc + i + 8);
        __m256 a2 = _mm256_loadu_ps(acc + i + 16), a3 = _mm256_loadu_ps(acc + i + 24);
        for (int c = c0; c <= c1; c++) {
            const __m256 pc = _mm256_set1_ps(p[c]);
            const float *v = vr[c] + i;
            a0 = _mm256_fmadd_ps(pc, _mm256_loadu_ps(v), a0);
            a1 = _mm256_fmadd_ps(pc, _mm256_loadu_ps(v + 8), a1);
            a2 = _mm256_fmadd_ps(pc, _mm256_loadu_ps(v + 16), a2);
            a3 = _mm256_fmadd_ps(pc, _mm256_loadu_ps(v + 24), a3);
        }
        _mm256_storeu_ps(acc + i, a0);
        _mm256_storeu_ps(acc + i + 8, a1);
        _mm256_storeu_ps(acc + i + 16, a2);
        _mm256_storeu_ps(acc + i + 24, a3);
    }
    for (; i + 8 <= dv; i += 8) {
        __m256 a0 = _mm256_loadu_ps(acc + i);
        for (int c = c0; c <= c1; c++) a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[c]), _mm256_loadu_ps(vr[c] + i), a0);
        _mm256_storeu_ps(acc + i, a0);
    }
#endif
    for (; i < dv; i++)
        for (int c = c0; c <= c1; c++) acc[i] = fmaf(p[c], vr[c][i], acc[i]);
}

/* The next run [*a, *b] of positions within [c, ch] of tile j0 whose blocks head kp keeps
 * (kp NULL: all of them); false when none is left. */
static inline bool next_run(const uint8_t *kp, int j0, int bs, int c, int ch, int *a, int *b) {
    if (!kp) {
        if (c > ch) return false;
        *a = c;
        *b = ch;
        return true;
    }
    while (c <= ch && !kp[(j0 + c) / bs]) c = ((j0 + c) / bs + 1) * bs - j0;
    if (c > ch) return false;
    int e = c;
    while (e <= ch && kp[(j0 + e) / bs]) e = ((j0 + e) / bs + 1) * bs - j0;
    *a = c;
    *b = e - 1 < ch ? e - 1 : ch;
    return true;
}

/* Online softmax of row r's heads of KV head g over keys lo ..= hi: leaves the running max
 * m, sum l and unnormalised accumulators acc [group, dv]. s is [group, TILE] scratch, kr and vr
 * [TILE] row pointers; live [group] flags. A head that keeps every block computes exactly what
 * it would unmasked; a skipped position's score is −inf (exp gives 0 exactly) and its value is
 * not read. */
static void attend_span(const mt_paged_attn_args *a, const float *q, int r, int g, int lo, int hi, float *s,
                        float *acc, float *m, float *l, uint8_t *live, const float **kr, const float **vr) {
    const int group = a->n_head / a->n_kv_head, dqk = a->dqk, dv = a->dv, bs = a->block_size;
    const int32_t *table = a->tables + (size_t)a->seq[r] * a->table_stride;
    for (int hh = 0; hh < group; hh++) {
        m[hh] = -INFINITY;
        l[hh] = 0.0f;
        for (int i = 0; i < dv; i++) acc[(size_t)hh * dv + i] = 0.0f;
    }
    for (int j0 = lo / PA_TILE * PA_TILE; j0 <= hi; j0 += PA_TILE) {
        const int cl = (lo > j0 ? lo : j0) - j0, ch = (hi < j0 + PA_TILE - 1 ? hi : j0 + PA_TILE - 1) - j0;
        bool any = false;
        for (int hh = 0; hh < group; hh++) {
            const uint8_t *kp = keep_of(a, r, g * group + hh);
            live[hh] = 1;
            if (kp) {
                live[hh] = 0;
                for (int b = (j0 + cl) / bs; b <= (j0 + ch) / bs && !live[hh]; b++) live[hh] = kp[b];
            }
            any |= live[hh];
        }
        if (!any) continue;
        /* row pointers of the tile (a position no head keeps is never dereferenced) */
        {   /* walking the blocks: a division per position was as dear as the scores at small d */
            int b = (j0 + cl) / bs, o = (j0 + cl) % bs;
            for (int c = cl; c <= ch; c++) {
                const float *row = a->cache + ((size_t)table[b] * bs + (size_t)o) * a->kv_row;
                kr[c] = row + a->k_off + (size_t)g * a->k_head;
                vr[c] = row + a->v_off + (size_t)g * a->v_head;
                if (++o == bs) {
                    o = 0;
                    b++;
                }
            }
        }
        for (int hh = 0; hh < group; hh++) {
            if (!live[hh]) continue;
            const uint8_t *kp = keep_of(a, r, g * group + hh);
            const float *qr = q + (size_t)r * a->q_row + (size_t)(g * group + hh) * a->q_head;
            float *sh = s + (size_t)hh * PA_TILE;
            if (kp)
                for (int c = cl; c <= ch; c++) sh[c] = -INFINITY;
            int ra, rb;
            for (int c = cl; next_run(kp, j0, bs, c, ch, &ra, &rb); c = rb + 1) scores(qr, kr, ra, rb, dqk, a->scale, sh);
            float bmax = -INFINITY;
            for (int c = cl; c <= ch; c++)
                if (sh[c] > bmax) bmax = sh[c];
            const float mnew = m[hh] > bmax ? m[hh] : bmax;
            const float f = mt_cpu_expf(m[hh] - mnew); /* 0 on the first tile */
            const float sum = (float)mt_cpu_exp_affine(sh + cl, sh + cl, ch - cl + 1, 1.0f, -mnew);
            l[hh] = l[hh] * f + sum;
            m[hh] = mnew;
            float *ah = acc + (size_t)hh * dv;
            if (f != 1.0f)
                for (int i = 0; i < dv; i++) ah[i] *= f;
            for (int c = cl; next_run(kp, j0, bs, c, ch, &ra, &rb); c = rb + 1) weighted_sum(sh, vr, ra, rb, dv, ah);
        }
    }
}

void mt_cpu_paged_attention_forward(mt_backend *be, const mt_paged_attn_args *a, const float *q, float *o) {
    MT_ASSERT(a->n_rows >= 0 && a->n_head > 0 && a->n_kv_head > 0 && a->n_head % a->n_kv_head == 0);
    MT_ASSERT(a->block_size > 0 && a->dqk > 0 && a->dv > 0);
    const int group = a->n_head / a->n_kv_head, dv = a->dv, nkv = a->n_kv_head;
    /* per thread: scores [group, TILE], accumulators [group, dv], running max and sum [group],
       live flags [group] (as floats' room), key and value row pointers [TILE] each */
    const size_t per = (size_t)group * PA_TILE + (size_t)group * dv + 3 * (size_t)group +
                       2u * PA_TILE * 2u + 2u; /* a pointer is at most two floats; 2 for alignment */
    float *scratch = mt_cpu_scratch(be, per);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    /* spans: row r's keys lo ..= hi cut at multiples of PA_SPLIT; first[r] is its first task */
    int *first = mt_xmalloc(((size_t)a->n_rows + 1) * sizeof(int));
    size_t work = 0;
    bool split = false;
    first[0] = 0;
    for (int r = 0; r < a->n_rows; r++) {
        const int lo = a->kv_start ? a->kv_start[r] : 0, hi = a->pos[r];
        MT_ASSERT(lo >= 0 && lo <= hi);
        const int spans = hi / PA_SPLIT - lo / PA_SPLIT + 1;
        split |= spans > 1;
        first[r + 1] = first[r] + spans;
        work += (size_t)(hi - lo + 1) * (size_t)a->n_head * (size_t)(a->dqk + dv);
    }
    const int n_spans = first[a->n_rows];
    /* a split row's partial results: [span][KV head][group] × (max, sum, acc [dv]) */
    const size_t part_one = (size_t)group * (2 + (size_t)dv);
    float *part = split ? mt_xmalloc((size_t)n_spans * nkv * part_one * sizeof(float)) : NULL;
    const int tasks = n_spans * nkv;
    const int nt = mt_cpu_nthreads(be);

#pragma omp parallel for num_threads(nt) if (work >= MT_CPU_PAR_MIN) schedule(dynamic, 1)
    for (int task = 0; task < tasks; task++) {
        const int sp = task / nkv, g = task % nkv;
        int r = 0, lo_r = 0, hi_r = 0;
        { /* the row of span sp: binary search over first[] */
            int L = 0, H = a->n_rows - 1;
            while (L < H) {
                int mid = (L + H + 1) / 2;
                if (first[mid] <= sp) L = mid;
                else H = mid - 1;
            }
            r = L;
            lo_r = a->kv_start ? a->kv_start[r] : 0;
            hi_r = a->pos[r];
        }
        const int k = sp - first[r], c0 = lo_r / PA_SPLIT + k;
        const int lo = k == 0 ? lo_r : c0 * PA_SPLIT, hi = hi_r < (c0 + 1) * PA_SPLIT - 1 ? hi_r : (c0 + 1) * PA_SPLIT - 1;
        float *s = scratch + (size_t)omp_get_thread_num() * stride; /* [group, TILE] */
        float *acc = s + (size_t)group * PA_TILE;                     /* [group, dv] */
        float *m = acc + (size_t)group * dv;                          /* [group] */
        float *l = m + group;                                         /* [group] */
        uint8_t *live = (uint8_t *)(l + group);                       /* [group] */
        /* pointer arrays at the next 8-byte boundary after the flags */
        uintptr_t at = ((uintptr_t)(l + 2 * group) + 7) & ~(uintptr_t)7;
        const float **kr = (const float **)at, **vr = kr + PA_TILE;
        attend_span(a, q, r, g, lo, hi, s, acc, m, l, live, kr, vr);
        if (first[r + 1] - first[r] == 1) {
            for (int hh = 0; hh < group; hh++) {
                float *orow = o + (size_t)r * a->o_row + (size_t)(g * group + hh) * a->o_head;
                const float inv = 1.0f / l[hh];
                for (int i = 0; i < dv; i++) orow[i] = acc[(size_t)hh * dv + i] * inv;
            }
        } else {
            float *pp = part + ((size_t)sp * nkv + g) * part_one;
            for (int hh = 0; hh < group; hh++) {
                pp[2 * hh] = m[hh];
                pp[2 * hh + 1] = l[hh];
            }
            memcpy(pp + 2 * group, acc, (size_t)group * dv * sizeof(float));
        }
    }
    /* merge each split row's spans in span order (fixed, whatever ran where); a head whose
       spans were all pruned away cannot occur: the caller keeps at least one block */
    for (int r = 0; split && r < a->n_rows; r++) {
        if (first[r + 1] - first[r] == 1) continue;
        for (int g = 0; g < nkv; g++)
            for (int hh = 0; hh < group; hh++) {
                float mx = -INFINITY;
                for (int sp = first[r]; sp < first[r + 1]; sp++) {
                    float ms = part[((size_t)sp * nkv + g) * part_one + 2 * hh];
                    if (ms > mx) mx = ms;
                }
                float *orow = o + (size_t)r * a->o_row + (size_t)(g * group + hh) * a->o_head;
                for (int i = 0; i < dv; i++) orow[i] = 0.0f;
                float lsum = 0.0f;
                for (int sp = first[r]; sp < first[r + 1]; sp++) {
                    const float *pp = part + ((size_t)sp * nkv + g) * part_one;
                    if (pp[2 * hh] == -INFINITY) continue; /* a span whose blocks this head skipped */
                    const float f = mt_cpu_expf(pp[2 * hh] - mx);
                    lsum += pp[2 * hh + 1] * f;
                    const float *ac = pp + 2 * group + (size_t)hh * dv;
                    for (int i = 0; i < dv; i++) orow[i] = fmaf(ac[i], f, orow[i]);
                }
                const float inv = 1.0f / lsum;
                for (int i = 0; i < dv; i++) orow[i] *= inv;
            }
    }
    free(part);
    free(first);
}
