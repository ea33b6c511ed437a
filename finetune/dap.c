/* dap.c — the domain-adaptive attention-pruning threshold: the base model's mean predictive
 * token entropy over the domain data, mapped to base·(1 − min(H, H_max)/H_max). Computed before
 * training; docs/data.md ("Thresholds") says what the number means and why this entropy. */
#define _GNU_SOURCE
#include "finetune.h"

#include <math.h>
#include <string.h>

void mt_dap_stats_init(mt_dap_stats *s) { memset(s, 0, sizeof *s); }

double mt_dap_token_entropy(const float *logits, int V) {
    double max = -INFINITY;
    for (int v = 0; v < V; v++)
        if (logits[v] > max) max = logits[v];
    /* H = log Z − Σ p·z (nats), with z shifted by the max so exp cannot overflow */
    double z = 0, pz = 0;
    for (int v = 0; v < V; v++) {
        double e = exp((double)logits[v] - max);
        z += e;
        pz += e * ((double)logits[v] - max);
    }
    double h = log(z) - pz / z;
    return h > 0 ? h / M_LN2 : 0.0; /* rounding can leave −0 for a one-hot distribution */
}

bool mt_dap_stats_add_sequence(mt_dap_stats *s, const float *logits, const int32_t *targets, int T, int V) {
    double sum = 0;
    int n = 0;
    for (int t = 0; t < T; t++) {
        if (targets[t] < 0) continue;
        sum += mt_dap_token_entropy(logits + (size_t)t * (size_t)V, V);
        n++;
    }
    if (n == 0) return false;
    s->sum_entropy += sum / n;
    s->n_seqs++;
    return true;
}

mt_status mt_dap_stats_result(const mt_dap_stats *s, double base, double max_entropy, double *threshold,
                              double *mean_entropy, uint64_t *n_seqs, mt_error *err) {
    if (!isfinite(base) || !isfinite(max_entropy))
        return mt_error_set(err, MT_ERR_NUMERIC, "thresholds: base (%g) and max_entropy (%g) must be finite", base,
                            max_entropy);
    if (base < 0.0) return mt_error_set(err, MT_ERR_INVALID, "thresholds.base: %g is negative; must be ≥ 0", base);
    if (max_entropy <= 0.0)
        return mt_error_set(err, MT_ERR_INVALID, "thresholds.max_entropy: %g bits; must be > 0", max_entropy);
    if (s->n_seqs == 0)
        return mt_error_set(err, MT_ERR_INVALID, "thresholds.dap: no sequences to measure (empty domain data)");
    double mean = s->sum_entropy / (double)s->n_seqs;
    /* The clamp keeps the threshold in [0, base]: data more surprising than max_entropy bits
     * would otherwise ask for a negative pruning threshold, which has no meaning. */
    double h = mean < max_entropy ? mean : max_entropy;
    double t = base * (1.0 - h / max_entropy);
    if (t < 0.0) t = 0.0;
    if (t > base) t = base;
    if (threshold) *threshold = t;
    if (mean_entropy) *mean_entropy = mean;
    if (n_seqs) *n_seqs = s->n_seqs;
    return MT_OK;
}
