/* dpo.c — the DPO family of per-pair losses with their gradients with respect to the four summed
 * log-probs, combined as TRL 1.16's DPOTrainer combines a list of loss types; the reference-free
 * SimPO (CPOTrainer) and ORPO; and the Bradley–Terry loss of a reward model. */
#include <stdlib.h>
#include <string.h>

#include "rl-impl.h"

static const char *const loss_names[MT_DPO_LOSS_COUNT] = {
    [MT_DPO_LOSS_SIGMOID] = "sigmoid",       [MT_DPO_LOSS_HINGE] = "hinge",
    [MT_DPO_LOSS_IPO] = "ipo",               [MT_DPO_LOSS_EXO_PAIR] = "exo_pair",
    [MT_DPO_LOSS_NCA_PAIR] = "nca_pair",     [MT_DPO_LOSS_ROBUST] = "robust",
    [MT_DPO_LOSS_BCO_PAIR] = "bco_pair",     [MT_DPO_LOSS_SPPO_HARD] = "sppo_hard",
    [MT_DPO_LOSS_AOT] = "aot",               [MT_DPO_LOSS_AOT_UNPAIRED] = "aot_unpaired",
    [MT_DPO_LOSS_APO_ZERO] = "apo_zero",     [MT_DPO_LOSS_APO_DOWN] = "apo_down",
    [MT_DPO_LOSS_DISCOPOP] = "discopop",     [MT_DPO_LOSS_SFT] = "sft",
    [MT_DPO_LOSS_SIGMOID_NORM] = "sigmoid_norm",
};

const char *mt_dpo_loss_name(mt_dpo_loss t) { return (unsigned)t < MT_DPO_LOSS_COUNT ? loss_names[t] : "unknown"; }

mt_status mt_dpo_loss_parse(const char *name, mt_dpo_loss *out, mt_error *err) {
    int best = -1, best_d = 1 << 30;
    for (int i = 0; i < MT_DPO_LOSS_COUNT; i++) {
        if (!strcmp(name, loss_names[i])) {
            *out = (mt_dpo_loss)i;
            return MT_OK;
        }
        int d = mt_edit_distance(name, loss_names[i]);
        if (d < best_d) best_d = d, best = i;
    }
    if (best >= 0 && best_d <= 3)
        return mt_error_set(err, MT_ERR_INVALID, "loss_type \"%s\" is not a DPO loss; did you mean \"%s\"?", name,
                            loss_names[best]);
    return mt_error_set(err, MT_ERR_INVALID,
                        "loss_type \"%s\" is not a DPO loss (sigmoid, hinge, ipo, exo_pair, nca_pair, robust, "
                        "bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm)",
                        name);
}

mt_status mt_dpo_fdiv_parse(const char *name, mt_dpo_fdiv *out, mt_error *err) {
    static const char *const names[] = {"reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) {
            *out = (mt_dpo_fdiv)i;
            return MT_OK;
        }
    return mt_error_set(err, MT_ERR_INVALID,
                        "f_divergence_type \"%s\" is unknown (reverse_kl, forward_kl, js_divergence, alpha_divergence)",
                        name);
}

/* TRL 1.16's f_divergence_loss_types: the losses that read the (transformed) scores */
static bool takes_fdiv(mt_dpo_loss t) {
    switch (t) {
    case MT_DPO_LOSS_SIGMOID:
    case MT_DPO_LOSS_SIGMOID_NORM:
    case MT_DPO_LOSS_HINGE:
    case MT_DPO_LOSS_IPO:
    case MT_DPO_LOSS_EXO_PAIR:
    case MT_DPO_LOSS_ROBUST:
    case MT_DPO_LOSS_DISCOPOP:
    case MT_DPO_LOSS_SFT: return true;
    default: return false;
    }
}

/* The score of a log-ratio under the f-divergence, and its derivative (TRL's
 * _compute_loss; alpha within 1e−6 of 1 is reverse_kl there too). */
static double fdiv_score(const mt_dpo_config *c, double x, double *d) {
    switch (c->f_divergence) {
    case MT_DPO_FDIV_FORWARD_KL: *d = exp(-x); return 1 - exp(-x);
    case MT_DPO_FDIV_JS: *d = mt_rl_sigmoid(-x); return log(2.0) + mt_rl_logsigmoid(x);
    case MT_DPO_FDIV_ALPHA:
        if (fabs(c->f_alpha - 1.0) >= 1e-6) {
            double a1 = c->f_alpha - 1.0, t = a1 * x;
            /* torch.clamp(max=80) passes no gradient above the bound */
            if (t > 80) {
                *d = 0;
                return (exp(80.0) - 1) / a1;
            }
            *d = exp(t);
            return (exp(t) - 1) / a1;
        }
        *d = 1; /* the limit α → 1 is reverse_kl */
        return x;
    default: *d = 1; return x;
    }
}

void mt_dpo_config_default(mt_dpo_config *c) {
    memset(c, 0, sizeof *c);
    c->n_terms = 1;
    c->types[0] = MT_DPO_LOSS_SIGMOID;
    c->weights[0] = 1.0;
    c->beta = 0.1;
    c->label_smoothing = 0.0;
    c->discopop_tau = 0.05;
    c->f_divergence = MT_DPO_FDIV_REVERSE_KL;
    c->f_alpha = 0.5;
}

mt_status mt_dpo_config_check(const mt_dpo_config *c, mt_error *err) {
    if (c->n_terms < 1 || c->n_terms > MT_DPO_MAX_TERMS)
        return mt_error_set(err, MT_ERR_INVALID, "loss_type: %d terms; give 1 to %d", c->n_terms, MT_DPO_MAX_TERMS);
    if (!(c->beta > 0) || !isfinite(c->beta))
        return mt_error_set(err, MT_ERR_INVALID, "beta = %g; it must be a finite number > 0", c->beta);
    double ls = c->label_smoothing;
    for (int k = 0; k < c->n_terms; k++) {
        if ((unsigned)c->types[k] >= MT_DPO_LOSS_COUNT)
            return mt_error_set(err, MT_ERR_INVALID, "loss_type[%d]: unknown value %d", k, (int)c->types[k]);
        if (!isfinite(c->weights[k]))
            return mt_error_set(err, MT_ERR_INVALID, "loss_weights[%d] is not finite", k);
        if (c->f_divergence != MT_DPO_FDIV_REVERSE_KL && !takes_fdiv(c->types[k]))
            return mt_error_set(err, MT_ERR_INVALID,
                                "loss_type %s does not take an f_divergence_type other than reverse_kl (TRL allows it for "
                                "sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, sft)",
                                mt_dpo_loss_name(c->types[k]));
        switch (c->types[k]) {
        case MT_DPO_LOSS_ROBUST:
            if (!(ls >= 0 && ls < 0.5))
                return mt_error_set(err, MT_ERR_INVALID,
                                    "label_smoothing = %g; the robust loss needs it in [0, 0.5)", ls);
            break;
        case MT_DPO_LOSS_EXO_PAIR:
            /* log(ε) and log(1 − ε) both appear in the loss */
            if (!(ls > 0 && ls < 1))
                return mt_error_set(err, MT_ERR_INVALID,
                                    "label_smoothing = %g; the exo_pair loss needs it in (0, 1) (the paper uses 1e-3)",
                                    ls);
            break;
        case MT_DPO_LOSS_DISCOPOP:
            if (!(c->discopop_tau > 0))
                return mt_error_set(err, MT_ERR_INVALID, "discopop_tau = %g; it must be > 0", c->discopop_tau);
            break;
        default: break;
        }
    }
    return MT_OK;
}

static bool uses_sort(const mt_dpo_config *c) {
    for (int k = 0; k < c->n_terms; k++)
        if (c->types[k] == MT_DPO_LOSS_AOT || c->types[k] == MT_DPO_LOSS_AOT_UNPAIRED) return true;
    return false;
}

/* scratch: two index permutations and two key arrays of n entries */
size_t mt_dpo_scratch_bytes(const mt_dpo_config *c, size_t n) {
    return uses_sort(c) ? 2 * n * (sizeof(size_t) + sizeof(double)) : 0;
}

/* Sorts idx[0..n) by key ascending; insertion sort, stable: batches are tens of pairs, and
 * ties (equal log-ratio differences) then keep batch order deterministically. */
static void argsort(size_t n, const double *key, size_t *idx) {
    for (size_t i = 0; i < n; i++) idx[i] = i;
    for (size_t i = 1; i < n; i++) {
        size_t v = idx[i];
        size_t j = i;
        while (j > 0 && key[idx[j - 1]] > key[v]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = v;
    }
}

/* −(1 − ls)·logσ(βδ) − ls·logσ(−βδ) and its derivative in δ: the smoothed logistic loss of aot */
static double smoothed_logistic(double beta, double ls, double delta, double *d) {
    double z = beta * delta;
    *d = beta * (-(1 - ls) * mt_rl_sigmoid(-z) + ls * mt_rl_sigmoid(z));
    return -(1 - ls) * mt_rl_logsigmoid(z) - ls * mt_rl_logsigmoid(-z);
}

/* One pair's loss of a pairwise type as a function of the log-ratios c (chosen) and r
 * (rejected); lc, lr are the completion lengths (clamped to >= 1 as TRL does). Writes the
 * partial derivatives in c and r. */
static double pair_loss(const mt_dpo_config *cfg, mt_dpo_loss t, double c, double r, double lc, double lr,
                        double *dc, double *dr) {
    const double beta = cfg->beta, ls = cfg->label_smoothing;
    const double delta = c - r, z = beta * delta;
    double l = 0, g = 0; /* for the Δ-only losses: g = dℓ/dΔ */
    switch (t) {
    case MT_DPO_LOSS_SIGMOID:
        l = -mt_rl_logsigmoid(z);
        g = -beta * mt_rl_sigmoid(-z);
        break;
    case MT_DPO_LOSS_HINGE:
        l = 1 - z > 0 ? 1 - z : 0;
        g = 1 - z > 0 ? -beta : 0;
        break;
    case MT_DPO_LOSS_IPO: {
        double e = c / lc - r / lr - 1 / (2 * beta);
        *dc = 2 * e / lc;
        *dr = -2 * e / lr;
        return e * e;
    }
    case MT_DPO_LOSS_SIGMOID_NORM: {
        double zn = beta * (c / lc - r / lr);
        double s = mt_rl_sigmoid(-zn);
        *dc = -beta * s / lc;
        *dr = beta * s / lr;
        return -mt_rl_logsigmoid(zn);
    }
    case MT_DPO_LOSS_EXO_PAIR: {
        double qw = mt_rl_sigmoid(z), ql = mt_rl_sigmoid(-z);
        double log_pw = log1p(-ls), log_pl = log(ls);
        l = qw * (mt_rl_logsigmoid(z) - log_pw) + ql * (mt_rl_logsigmoid(-z) - log_pl);
        /* d/dz: σσ̄·(logσ(z) − logσ(−z) − log(1−ε) + log ε), and logσ(z) − logσ(−z) = z */
        g = beta * qw * ql * (z - log_pw + log_pl);
        break;
    }
    case MT_DPO_LOSS_NCA_PAIR: {
        double a = beta * c, b = beta * r;
        *dc = beta * (-mt_rl_sigmoid(-a) + 0.5 * mt_rl_sigmoid(a));
        *dr = beta * 0.5 * mt_rl_sigmoid(b);
        return -mt_rl_logsigmoid(a) - 0.5 * mt_rl_logsigmoid(-a) - 0.5 * mt_rl_logsigmoid(-b);
    }
    case MT_DPO_LOSS_ROBUST:
        l = (-(1 - ls) * mt_rl_logsigmoid(z) + ls * mt_rl_logsigmoid(-z)) / (1 - 2 * ls);
        g = beta * (-(1 - ls) * mt_rl_sigmoid(-z) - ls * mt_rl_sigmoid(z)) / (1 - 2 * ls);
        break;
    case MT_DPO_LOSS_BCO_PAIR: {
        double a = beta * c, b = beta * r;
        *dc = -beta * mt_rl_sigmoid(-a);
        *dr = beta * mt_rl_sigmoid(b);
        return -mt_rl_logsigmoid(a) - mt_rl_logsigmoid(-b);
    }
    case MT_DPO_LOSS_SPPO_HARD: {
        double ew = c - 0.5 / beta, el = r + 0.5 / beta;
        *dc = 2 * ew;
        *dr = 2 * el;
        return ew * ew + el * el;
    }
    case MT_DPO_LOSS_APO_ZERO: {
        double sa = mt_rl_sigmoid(beta * c), sb = mt_rl_sigmoid(beta * r);
        *dc = -beta * sa * (1 - sa);
        *dr = beta * sb * (1 - sb);
        return (1 - sa) + sb;
    }
    case MT_DPO_LOSS_APO_DOWN: {
        double sa = mt_rl_sigmoid(beta * c), sz = mt_rl_sigmoid(z);
        *dc = beta * sa * (1 - sa) - beta * sz * (1 - sz);
        *dr = beta * sz * (1 - sz);
        return sa + (1 - sz);
    }
    case MT_DPO_LOSS_DISCOPOP: {
        double tau = cfg->discopop_tau;
        double m = mt_rl_sigmoid(z / tau), dm = m * (1 - m) / tau;
        double logistic = -mt_rl_logsigmoid(z), ex = exp(-z);
        l = logistic * (1 - m) + ex * m;
        g = beta * (-dm * logistic + (1 - m) * -mt_rl_sigmoid(-z) + dm * ex - m * ex);
        break;
    }
    default: MT_ASSERT(0 && "not a pairwise DPO loss");
    }
    *dc = g;
    *dr = -g;
    return l;
}

static void add_grad(float *g, size_t i, double v) {
    if (g) g[i] += (float)v;
}

mt_status mt_dpo_loss_compute(const mt_dpo_config *cfg, const mt_dpo_batch *b, double *loss, float *per_pair,
                              const mt_dpo_grads *g, mt_dpo_metrics *m, void *scratch, mt_error *err) {
    mt_status st = mt_dpo_config_check(cfg, err);
    if (st != MT_OK) return st;
    const size_t n = b->n;
    if (n == 0) return mt_error_set(err, MT_ERR_INVALID, "DPO loss of an empty batch");
    if (uses_sort(cfg) && !scratch)
        return mt_error_set(err, MT_ERR_INVALID, "the aot losses need scratch (mt_dpo_scratch_bytes)");
    const mt_dpo_grads none = {0};
    if (!g) g = &none;
    float *gs[4] = {g->policy_chosen, g->policy_rejected, g->ref_chosen, g->ref_rejected};
    for (int k = 0; k < 4; k++)
        if (gs[k]) memset(gs[k], 0, n * sizeof(float));
    if (per_pair) memset(per_pair, 0, n * sizeof(float));

    const double beta = cfg->beta;
    double total = 0;
    for (int k = 0; k < cfg->n_terms; k++) {
        const mt_dpo_loss t = cfg->types[k];
        const double w = cfg->weights[k];
        double sum = 0;
        if (t == MT_DPO_LOSS_SFT) {
            /* TRL: the mean of the chosen completion tokens' NLL over the whole batch, expanded to
             * every pair, so its mean is that one number */
            double lp = 0, ntok = 0;
            for (size_t i = 0; i < n; i++) {
                lp += b->policy_chosen[i];
                ntok += b->chosen_len ? b->chosen_len[i] : 1;
            }
            if (!(ntok > 0)) return mt_error_set(err, MT_ERR_INVALID, "sft term: the batch has no chosen tokens");
            double l = -lp / ntok;
            for (size_t i = 0; i < n; i++) {
                add_grad(g->policy_chosen, i, -w / ntok);
                if (per_pair) per_pair[i] += (float)(w * l);
            }
            total += w * l;
            continue;
        }
        if (t == MT_DPO_LOSS_AOT || t == MT_DPO_LOSS_AOT_UNPAIRED) {
            size_t *ix = scratch, *iy = ix + n;
            double *kx = (double *)(iy + n), *ky = kx + n;
            const bool paired = t == MT_DPO_LOSS_AOT;
            for (size_t i = 0; i < n; i++) {
                /* aot: policy and reference log-odds; aot_unpaired: chosen and rejected log-ratios */
                kx[i] = paired ? (double)b->policy_chosen[i] - b->policy_rejected[i]
                               : (double)b->policy_chosen[i] - b->ref_chosen[i];
                ky[i] = paired ? (double)b->ref_chosen[i] - b->ref_rejected[i]
                               : (double)b->policy_rejected[i] - b->ref_rejected[i];
            }
            argsort(n, kx, ix);
            argsort(n, ky, iy);
            for (size_t j = 0; j < n; j++) {
                double d;
                double l = smoothed_logistic(beta, cfg->label_smoothing, kx[ix[j]] - ky[iy[j]], &d);
                sum += l;
                if (per_pair) per_pair[j] += (float)(w * l);
                double gw = w * d / (double)n;
                if (paired) {
                    add_grad(g->policy_chosen, ix[j], gw);
                    add_grad(g->policy_rejected, ix[j], -gw);
                    add_grad(g->ref_chosen, iy[j], -gw);
                    add_grad(g->ref_rejected, iy[j], gw);
                } else {
                    add_grad(g->policy_chosen, ix[j], gw);
                    add_grad(g->ref_chosen, ix[j], -gw);
                    add_grad(g->policy_rejected, iy[j], -gw);
                    add_grad(g->ref_rejected, iy[j], gw);
                }
            }
            total += w * sum / (double)n;
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            double c = (double)b->policy_chosen[i] - b->ref_chosen[i];
            double r = (double)b->policy_rejected[i] - b->ref_rejected[i];
            double lc = b->chosen_len ? fmax(b->chosen_len[i], 1.0) : 1.0;
            double lr = b->rejected_len ? fmax(b->rejected_len[i], 1.0) : 1.0;
            double fc, fr, dc, dr;
            double sc = fdiv_score(cfg, c, &fc), sr = fdiv_score(cfg, r, &fr);
            double l = pair_loss(cfg, t, sc, sr, lc, lr, &dc, &dr);
            dc *= fc;
            dr *= fr;
            sum += l;
            if (per_pair) per_pair[i] += (float)(w * l);
            double s = w / (double)n;
            add_grad(g->policy_chosen, i, s * dc);
            add_grad(g->ref_chosen, i, -s * dc);
            add_grad(g->policy_rejected, i, s * dr);
            add_grad(g->ref_rejected, i, -s * dr);
        }
        total += w * sum / (double)n;
    }
    if (!isfinite(total))
        return mt_error_set(err, MT_ERR_NUMERIC, "DPO loss is not finite (%g): check the log-probs", total);
    *loss = total;

    if (m) {
        double rc = 0, rr = 0, acc = 0, lpc = 0, lpr = 0;
        for (size_t i = 0; i < n; i++) {
            double cr = beta * ((double)b->policy_chosen[i] - b->ref_chosen[i]);
            double rj = beta * ((double)b->policy_rejected[i] - b->ref_rejected[i]);
            rc += cr;
            rr += rj;
            acc += cr > rj;
            lpc += b->policy_chosen[i];
            lpr += b->policy_rejected[i];
        }
        m->rewards_chosen = rc / n;
        m->rewards_rejected = rr / n;
        m->rewards_accuracies = acc / n;
        m->rewards_margins = (rc - rr) / n;
        m->logps_chosen = lpc / n;
        m->logps_rejected = lpr / n;
        m->logits_chosen = b->logits_chosen;
        m->logits_rejected = b->logits_rejected;
    }
    return MT_OK;
}

void mt_dpo_metrics_list(const mt_dpo_metrics *m, mt_rl_metric out[MT_DPO_N_METRICS]) {
    const mt_rl_metric list[MT_DPO_N_METRICS] = {
        {"rewards/chosen", m->rewards_chosen},     {"rewards/rejected", m->rewards_rejected},
        {"rewards/accuracies", m->rewards_accuracies}, {"rewards/margins", m->rewards_margins},
        {"logps/chosen", m->logps_chosen},         {"logps/rejected", m->logps_rejected},
        {"logits/chosen", m->logits_chosen},       {"logits/rejected", m->logits_rejected},
    };
    memcpy(out, list, sizeof list);
}

/* ---- reference-free ---- */

void mt_simpo_config_default(mt_simpo_config *c) {
    c->beta = 0.1;
    c->gamma = 0.5;
    c->label_smoothing = 0.0;
    c->cpo_alpha = 1.0;
}

/* rewards, accuracies, margins and log-probs of a reference-free batch: reward = β · average */
static void free_metrics(double beta, const mt_pref_free_batch *b, mt_pref_free_metrics *m) {
    double rc = 0, rr = 0, acc = 0;
    for (size_t i = 0; i < b->n; i++) {
        rc += b->chosen_avg[i];
        rr += b->rejected_avg[i];
        acc += beta * b->chosen_avg[i] > beta * b->rejected_avg[i];
    }
    m->base.rewards_chosen = beta * rc / b->n;
    m->base.rewards_rejected = beta * rr / b->n;
    m->base.rewards_accuracies = acc / b->n;
    m->base.rewards_margins = beta * (rc - rr) / b->n;
    m->base.logps_chosen = rc / b->n;
    m->base.logps_rejected = rr / b->n;
    m->base.logits_chosen = b->logits_chosen;
    m->base.logits_rejected = b->logits_rejected;
    m->log_odds_ratio = m->log_odds_chosen = NAN;
}

mt_status mt_simpo_loss(const mt_simpo_config *c, const mt_pref_free_batch *b, double *loss, float *d_chosen,
                        float *d_rejected, double *d_nll, mt_pref_free_metrics *m, mt_error *err) {
    if (b->n == 0) return mt_error_set(err, MT_ERR_INVALID, "SimPO loss of an empty batch");
    if (!(c->beta > 0)) return mt_error_set(err, MT_ERR_INVALID, "beta = %g; it must be > 0", c->beta);
    const double beta = c->beta, ls = c->label_smoothing;
    double sum = 0;
    for (size_t i = 0; i < b->n; i++) {
        double z = (double)b->chosen_avg[i] - b->rejected_avg[i] - c->gamma / beta;
        double d;
        sum += smoothed_logistic(beta, ls, z, &d);
        if (d_chosen) d_chosen[i] = (float)(d / b->n);
        if (d_rejected) d_rejected[i] = (float)(-d / b->n);
    }
    /* CPO drops the NLL term entirely when cpo_alpha is 0 (and logs nll_loss = 0) */
    double nll = c->cpo_alpha == 0 ? 0 : b->nll;
    *loss = sum / b->n + c->cpo_alpha * nll;
    if (d_nll) *d_nll = c->cpo_alpha;
    if (m) {
        free_metrics(beta, b, m);
        m->nll_loss = nll;
    }
    return isfinite(*loss) ? MT_OK : mt_error_set(err, MT_ERR_NUMERIC, "SimPO loss is not finite (%g)", *loss);
}

mt_status mt_orpo_loss(const mt_orpo_config *c, const mt_pref_free_batch *b, double *loss, float *d_chosen,
                       float *d_rejected, double *d_nll, mt_pref_free_metrics *m, mt_error *err) {
    if (b->n == 0) return mt_error_set(err, MT_ERR_INVALID, "ORPO loss of an empty batch");
    const double beta = c->beta;
    double ratio_sum = 0, odds_sum = 0;
    for (size_t i = 0; i < b->n; i++) {
        double a = b->chosen_avg[i], r = b->rejected_avg[i];
        if (!(a < 0) || !(r < 0))
            return mt_error_set(err, MT_ERR_INVALID,
                                "pair %zu: average log-probs %g, %g; ORPO's odds need both < 0", i, a, r);
        double lo = (a - r) - (mt_rl_log1mexp(a) - mt_rl_log1mexp(r));
        ratio_sum += mt_rl_logsigmoid(lo);
        odds_sum += lo;
        /* d lo/da = 1/(1 − e^a), d lo/dr = −1/(1 − e^r); d(−β·logσ(lo))/d lo = −β·σ(−lo) */
        double g = -beta * mt_rl_sigmoid(-lo) / b->n;
        if (d_chosen) d_chosen[i] = (float)(g / -expm1(a));
        if (d_rejected) d_rejected[i] = (float)(-g / -expm1(r));
    }
    *loss = b->nll - beta * ratio_sum / b->n;
    if (d_nll) *d_nll = 1.0;
    if (m) {
        free_metrics(beta, b, m);
        m->nll_loss = b->nll;
        m->log_odds_ratio = ratio_sum / b->n;
        m->log_odds_chosen = odds_sum / b->n;
    }
    return isfinite(*loss) ? MT_OK : mt_error_set(err, MT_ERR_NUMERIC, "ORPO loss is not finite (%g)", *loss);
}

/* ---- reward model ---- */

mt_status mt_reward_bt_loss(size_t n, const float *r_chosen, const float *r_rejected, const float *margin,
                            double center_coef, double *loss, float *d_chosen, float *d_rejected,
                            mt_reward_metrics *m, mt_error *err) {
    if (n == 0) return mt_error_set(err, MT_ERR_INVALID, "reward loss of an empty batch");
    const bool center = !isnan(center_coef);
    double bt = 0, sq = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)r_chosen[i] - r_rejected[i] - (margin ? margin[i] : 0);
        double s = r_chosen[i] + (double)r_rejected[i];
        bt += -mt_rl_logsigmoid(d);
        sq += s * s;
        double gd = -mt_rl_sigmoid(-d) / n, gs = center ? center_coef * 2 * s / n : 0;
        if (d_chosen) d_chosen[i] = (float)(gd + gs);
        if (d_rejected) d_rejected[i] = (float)(-gd + gs);
    }
    *loss = bt / n + (center ? center_coef * sq / n : 0);
    if (m) {
        double acc = 0, mar = 0, sum = 0, lo = INFINITY, hi = -INFINITY;
        for (size_t i = 0; i < n; i++) {
            acc += r_chosen[i] > r_rejected[i];
            mar += (double)r_chosen[i] - r_rejected[i];
            sum += (double)r_chosen[i] + r_rejected[i];
            lo = fmin(lo, fmin(r_chosen[i], r_rejected[i]));
            hi = fmax(hi, fmax(r_chosen[i], r_rejected[i]));
        }
        m->accuracy = acc / n;
        m->margin = mar / n;
        m->mean_reward = sum / (2.0 * n);
        m->min_reward = lo;
        m->max_reward = hi;
    }
    return isfinite(*loss) ? MT_OK : mt_error_set(err, MT_ERR_NUMERIC, "reward loss is not finite (%g)", *loss);
}
