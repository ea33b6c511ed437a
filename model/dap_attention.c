/* dap_attention.c — dynamic attention pruning at KV-block level (Quest's per-channel key
 * min/max summaries) and adaptive expert counts. The rule, its threshold and the fallback are
 * defined in docs/attention-pruning.md; these are the host-side building blocks the paged
 * decode will call, and they are what the tests pin down. */
#include <math.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "model-impl.h"

void mt_dap_block_summary(const float *k, int n_tok, int d, int stride, float *kmin, float *kmax) {
    for (int i = 0; i < d; i++) {
        kmin[i] = INFINITY;
        kmax[i] = -INFINITY;
    }
    for (int t = 0; t < n_tok; t++) {
        const float *r = k + (size_t)t * (size_t)stride;
        for (int i = 0; i < d; i++) {
            if (r[i] < kmin[i]) kmin[i] = r[i];
            if (r[i] > kmax[i]) kmax[i] = r[i];
        }
    }
}

/* q·k = Σ q_i k_i and each term is linear in k_i over [kmin_i, kmax_i], so its largest value
 * is at one end: the sum of those is ≥ q·k for every key of the block. Accumulated in double
 * so the bound is not undercut by the float rounding of the score it bounds. */
float mt_dap_block_bound(const float *q, const float *kmin, const float *kmax, int d) {
    /* four partial sums (the products are exact in double; the decode computes this for
     * every block and query head, and one chain of dependent adds was its cost) */
    double s4[4] = {0, 0, 0, 0};
    int i = 0;
#ifdef __AVX2__
    /* the same four lanes as the loop below, four doubles at a time */
    __m256d acc = _mm256_setzero_pd();
    for (; i + 4 <= d; i += 4) {
        __m256d qd = _mm256_cvtps_pd(_mm_loadu_ps(q + i));
        __m256d a = _mm256_mul_pd(qd, _mm256_cvtps_pd(_mm_loadu_ps(kmin + i)));
        __m256d b = _mm256_mul_pd(qd, _mm256_cvtps_pd(_mm_loadu_ps(kmax + i)));
        acc = _mm256_add_pd(acc, _mm256_max_pd(a, b)); /* the larger; ties are one value */
    }
    _mm256_storeu_pd(s4, acc);
#endif
    for (; i + 4 <= d; i += 4)
        for (int j = 0; j < 4; j++) {
            double a = (double)q[i + j] * kmin[i + j], b = (double)q[i + j] * kmax[i + j];
            s4[j] += a > b ? a : b;
        }
    for (; i < d; i++) {
        double a = (double)q[i] * kmin[i], b = (double)q[i] * kmax[i];
        s4[0] += a > b ? a : b;
    }
    double s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
    /* round up to the next float so the float bound stays ≥ the exact one */
    float f = (float)s;
    if ((double)f < s) f = nextafterf(f, INFINITY);
    return f;
}

int mt_dap_select(const float *bounds, const int *n_tok, int n_blocks, float scale, const mt_dap_opts *o,
                  uint8_t *keep, mt_dap_counts *c) {
    for (int b = 0; b < n_blocks; b++) keep[b] = 1;
    if (c) {
        c->queries++;
        c->blocks += (uint64_t)n_blocks;
    }
    if (!o || !(o->threshold > 0) || n_blocks == 0) return n_blocks;
    float best = -INFINITY;
    for (int b = 0; b < n_blocks; b++)
        if (bounds[b] > best) best = bounds[b];
    double all = 0, kept_mass = 0;
    int kept = 0;
    for (int b = 0; b < n_blocks; b++) {
        /* the largest softmax weight any key of b can have relative to the best block's bound */
        double rel = exp((double)scale * ((double)bounds[b] - best));
        double mass = rel * n_tok[b];
        all += mass;
        bool always = b < o->n_sink_blocks || b >= n_blocks - o->n_local_blocks;
        if (!always && rel < o->threshold) {
            keep[b] = 0;
        } else {
            kept++;
            kept_mass += mass;
        }
    }
    if (kept < n_blocks && kept_mass < o->mass_floor * all) {
        for (int b = 0; b < n_blocks; b++) keep[b] = 1;
        if (c) c->fallbacks++;
        return n_blocks;
    }
    if (c) c->skipped += (uint64_t)(n_blocks - kept);
    return kept;
}

void mt_dap_attend(const float *q, const float *k, const float *v, int n_tok, int d, int block, float scale,
                   const mt_dap_opts *o, mt_dap_counts *c, float *scratch, float *out) {
    int nb = (n_tok + block - 1) / block;
    /* scratch: [nb] bounds, [nb] ints as floats' room, [nb] keep bytes, [n_tok] scores, [2d] */
    float *bounds = scratch;
    int *ntok = (int *)(bounds + nb);
    uint8_t *keep = (uint8_t *)(ntok + nb);
    float *sc = (float *)(keep + ((nb + 15) & ~15));
    float *kmin = sc + n_tok, *kmax = kmin + d;
    for (int b = 0; b < nb; b++) {
        int t0 = b * block, n = n_tok - t0 < block ? n_tok - t0 : block;
        ntok[b] = n;
        if (o && o->threshold > 0) {
            mt_dap_block_summary(k + (size_t)t0 * d, n, d, d, kmin, kmax);
            bounds[b] = mt_dap_block_bound(q, kmin, kmax, d);
        } else {
            bounds[b] = 0;
        }
    }
    mt_dap_select(bounds, ntok, nb, scale, o, keep, c);
    float mx = -INFINITY;
    for (int t = 0; t < n_tok; t++) {
        if (!keep[t / block]) continue;
        float s = 0;
        for (int i = 0; i < d; i++) s += q[i] * k[(size_t)t * d + i];
        sc[t] = s * scale;
        if (sc[t] > mx) mx = sc[t];
    }
    float z = 0;
    for (int t = 0; t < n_tok; t++) {
        if (!keep[t / block]) continue;
        sc[t] = expf(sc[t] - mx);
        z += sc[t];
    }
    memset(out, 0, (size_t)d * sizeof(float));
    for (int t = 0; t < n_tok; t++) {
        if (!keep[t / block]) continue;
        float p = sc[t] / z;
        for (int i = 0; i < d; i++) out[i] += p * v[(size_t)t * d + i];
    }
}

size_t mt_dap_attend_scratch(int n_tok, int d, int block) {
    size_t nb = (size_t)(n_tok + block - 1) / (size_t)block;
    return nb * sizeof(float) + nb * sizeof(int) + ((nb + 15) & ~(size_t)15) + ((size_t)n_tok + 2u * (size_t)d) * sizeof(float);
}

int mt_route_adaptive_k(const float *scores, int n_tok, int E, int K, const int32_t *idx, float *w,
                        const mt_adaptive_k *a, mt_route_norm norm, float scale, int32_t *k_used) {
    int min_k = a->min_k > 0 ? a->min_k : 1, max_k = a->max_k > 0 && a->max_k < K ? a->max_k : K;
    if (min_k > max_k) min_k = max_k;
    int total = 0;
    for (int t = 0; t < n_tok; t++) {
        const int32_t *it = idx + (size_t)t * K;
        float *wt = w + (size_t)t * K;
        int c = max_k;
        /* threshold ≥ 1 is top-max-k by definition: a sum of rounded probabilities can reach 1.0
         * before the last expert, and then "until the cumulative probability passes 1" would
         * depend on rounding */
        if (a->threshold < 1.0f) {
            /* shares of all E scores: softmax scores already sum to 1, sigmoid ones (DeepSeek-V3)
             * do not, and a threshold on their raw sum would mean nothing */
            double tot = 0, cum = 0;
            for (int e = 0; e < E; e++) tot += scores[(size_t)t * E + e];
            for (int j = 0; j < max_k; j++) {
                cum += scores[(size_t)t * E + it[j]] / tot;
                if (cum >= a->threshold) {
                    c = j + 1;
                    break;
                }
            }
            if (c < min_k) c = min_k;
        }
        if (c < K) {
            /* renormalise over the kept slots as the router normalises over its k */
            if (norm != MT_ROUTE_NORM_NONE) {
                double s = 0;
                for (int j = 0; j < c; j++) s += scores[(size_t)t * E + it[j]];
                if (norm == MT_ROUTE_NORM_SUM_EPS) s += 1e-20;
                for (int j = 0; j < c; j++) wt[j] = (float)(scores[(size_t)t * E + it[j]] / s) * scale;
            }
            for (int j = c; j < K; j++) wt[j] = 0.0f;
        }
        if (k_used) k_used[t] = c;
        total += c;
    }
    return total;
}

void mt_route_topk_share(const float *scores, int n_tok, int E, int K, const int32_t *idx, float *share) {
    for (int t = 0; t < n_tok; t++) {
        const float *s = scores + (size_t)t * E;
        double tot = 0, top = 0;
        for (int e = 0; e < E; e++) tot += s[e];
        for (int j = 0; j < K; j++) top += s[idx[(size_t)t * K + j]];
        share[t] = tot > 0 ? (float)(top / tot) : 1.0f;
    }
}

void mt_model_set_adaptive_k(mt_model *m, const mt_adaptive_k *a) {
    memset(&m->adaptive_k, 0, sizeof m->adaptive_k);
    if (a) m->adaptive_k = *a;
    m->ak_tokens = m->ak_experts = 0;
}

void mt_model_adaptive_k_stats(const mt_model *m, uint64_t *tokens, uint64_t *experts) {
    if (tokens) *tokens = m->ak_tokens;
    if (experts) *experts = m->ak_experts;
}
