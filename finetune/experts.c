/* experts.c — the adaptive expert count threshold calibrated on the trained model: the median,
 * over the sampled training tokens and every MoE layer, of the share of the router's scores
 * its top-k experts hold. docs/data.md ("Thresholds") says what the number means and why. */
#include "finetune.h"
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

void mt_expert_shares_init(mt_expert_shares *s) { memset(s, 0, sizeof *s); }

void mt_expert_shares_free(mt_expert_shares *s) {
    free(s->v);
    memset(s, 0, sizeof *s);
}

void mt_expert_shares_add(mt_expert_shares *s, const mt_config *cfg, const float *share, const int32_t *targets,
                          int N) {
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!cfg->layer_is_moe[l]) continue;
        for (int t = 0; t < N; t++) {
            if (targets[t] < 0) continue;
            if (s->n == s->cap) {
                s->cap = s->cap ? 2 * s->cap : 4096;
                s->v = mt_xrealloc(s->v, s->cap * sizeof *s->v);
            }
            s->v[s->n++] = share[(size_t)l * N + t];
        }
    }
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

mt_status mt_expert_shares_median(mt_expert_shares *s, double *median, mt_error *err) {
    if (s->n == 0)
        return mt_error_set(err, MT_ERR_INVALID,
                            "thresholds.experts: no routed tokens to calibrate on (no MoE layer, or no rows)");
    qsort(s->v, s->n, sizeof *s->v, cmp_float);
    size_t h = s->n / 2;
    *median = s->n % 2 ? (double)s->v[h] : 0.5 * ((double)s->v[h - 1] + (double)s->v[h]);
    return MT_OK;
}
