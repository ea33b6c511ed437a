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
 * is at one end: the sum of those is ≥ q·k for every key of the block. The decode takes this
 * for every block and query head, at a cost that once ate what pruning saved, so it is summed
 * in float, eight lanes at a time, and then raised by a bound on that sum's rounding: each of
 * the d terms and each addition errs by at most u = 2^-24 of the magnitudes summed, so adding
 * (2d + 16)·u·Σ|term| (twice the textbook γ, covering the error of Σ|term| itself) and rounding
 * up keeps the result ≥ the exact bound (test_dap_attention checks it against double sums). */
float mt_dap_block_bound(const float *q, const float *kmin, const float *kmax, int d) {
    float sum = 0, mag = 0;
    int i = 0;
#ifdef __AVX2__
    __m256 s8 = _mm256_setzero_ps(), a8 = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= d; i += 8) {
        __m256 qv = _mm256_loadu_ps(q + i);
        __m256 t = _mm256_max_ps(_mm256_mul_ps(qv, _mm256_loadu_ps(kmin + i)), _mm256_mul_ps(qv, _mm256_loadu_ps(kmax + i)));
        s8 = _mm256_add_ps(s8, t);
        a8 = _mm256_add_ps(a8, _mm256_andnot_ps(sign, t));
    }
    float ls[8], la[8];
    _mm256_storeu_ps(ls, s8);
    _mm256_storeu_ps(la, a8);
    sum = ((ls[0] + ls[1]) + (ls[2] + ls[3])) + ((ls[4] + ls[5]) + (ls[6] + ls[7]));
    mag = ((la[0] + la[1]) + (la[2] + la[3])) + ((la[4] + la[5]) + (la[6] + la[7]));
#endif
    for (; i < d; i++) {
        float x = q[i] * kmin[i], y = q[i] * kmax[i], t = x > y ? x : y;
        sum += t;
        mag += fabsf(t);
    }
    float f = sum + (float)(2 * d + 16) * 0x1p-24f * mag;
    return nextafterf(f, INFINITY);
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
