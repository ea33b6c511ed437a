/* grpo.c — GRPO as TRL's GRPOTrainer computes it: weighted sums of reward functions, group-
 * relative advantages (scale_rewards group | batch | none), and the clipped per-token loss with
 * an optional k3 KL term, aggregated as grpo, bnpo, dr_grpo or dapo, with its gradient. */
#include <string.h>

#include "rl-impl.h"

static mt_status parse_name(const char *what, const char *name, const char *const *names, int n, int *out,
                            mt_error *err) {
    for (int i = 0; i < n; i++)
        if (!strcmp(name, names[i])) {
            *out = i;
            return MT_OK;
        }
    char list[160] = "";
    for (int i = 0; i < n; i++) {
        strncat(list, names[i], sizeof list - strlen(list) - 1);
        if (i + 1 < n) strncat(list, ", ", sizeof list - strlen(list) - 1);
    }
    return mt_error_set(err, MT_ERR_INVALID, "%s \"%s\" is unknown (%s)", what, name, list);
}

mt_status mt_grpo_scale_parse(const char *name, mt_grpo_scale *out, mt_error *err) {
    static const char *const names[] = {"group", "batch", "none"};
    int v = 0;
    mt_status st = parse_name("scale_rewards", name, names, 3, &v, err);
    if (st == MT_OK) *out = (mt_grpo_scale)v;
    return st;
}

mt_status mt_grpo_loss_type_parse(const char *name, mt_grpo_loss_type *out, mt_error *err) {
    static const char *const names[] = {"grpo", "bnpo", "dr_grpo", "dapo"};
    int v = 0;
    mt_status st = parse_name("loss_type", name, names, 4, &v, err);
    if (st == MT_OK) *out = (mt_grpo_loss_type)v;
    return st;
}

void mt_grpo_config_default(mt_grpo_config *c) {
    c->loss_type = MT_GRPO_LOSS_DAPO;
    c->epsilon_low = 0.2;
    c->epsilon_high = 0.2;
    c->beta = 0.0;
    c->max_completion_length = 256;
}

void mt_grpo_combine_rewards(size_t N, size_t F, const float *rewards, const double *weights, float *out) {
    for (size_t i = 0; i < N; i++) {
        double s = 0;
        bool any = false;
        for (size_t f = 0; f < F; f++) {
            float r = rewards[i * F + f];
            if (isnan(r)) continue;
            s += weights[f] * r;
            any = true;
        }
        out[i] = any ? (float)s : NAN;
    }
}

/* mean and Bessel-corrected std of the non-NaN entries of x[0..n) (TRL's nanmean, nanstd);
 * std is NaN with fewer than two values, mean NaN with none */
static void nan_mean_std(const float *x, size_t n, double *mean, double *std) {
    double s = 0, cnt = 0;
    for (size_t i = 0; i < n; i++)
        if (!isnan(x[i])) s += x[i], cnt++;
    *mean = cnt > 0 ? s / cnt : NAN;
    double v = 0;
    for (size_t i = 0; i < n; i++)
        if (!isnan(x[i])) v += (x[i] - *mean) * (x[i] - *mean);
    *std = cnt > 1 ? sqrt(v / cnt * (cnt / (cnt - 1))) : NAN;
}

mt_status mt_grpo_advantages(size_t n_groups, size_t group_size, const float *rewards, mt_grpo_scale scale,
                             float *adv, mt_grpo_adv_stats *stats, mt_error *err) {
    if (n_groups == 0 || group_size == 0)
        return mt_error_set(err, MT_ERR_INVALID, "GRPO advantages of %zu groups of %zu", n_groups, group_size);
    const size_t N = n_groups * group_size;
    double bmean, bstd;
    nan_mean_std(rewards, N, &bmean, &bstd);
    if (N == 1) bstd = 0; /* TRL uses a zero std for a single completion */
    double zero_std = 0;
    for (size_t g = 0; g < n_groups; g++) {
        const float *r = rewards + g * group_size;
        double gmean, gstd;
        nan_mean_std(r, group_size, &gmean, &gstd);
        if (group_size == 1) gstd = 0;
        double std = scale == MT_GRPO_SCALE_BATCH ? bstd : gstd;
        /* torch.isclose(std, 0): |std| <= 1e-8 */
        bool is_zero = fabs(std) <= 1e-8;
        for (size_t j = 0; j < group_size; j++) {
            double a = r[j] - gmean;
            if (scale != MT_GRPO_SCALE_NONE) a /= std + 1e-4;
            adv[g * group_size + j] = isnan(a) ? 0.0f : (float)a; /* TRL's nan_to_num */
            zero_std += is_zero;
        }
    }
    if (stats) {
        stats->reward_mean = bmean;
        stats->reward_std = bstd;
        stats->frac_reward_zero_std = zero_std / N;
    }
    return MT_OK;
}

static double clampd(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

mt_status mt_grpo_loss(const mt_grpo_config *c, const mt_grpo_batch *b, double *loss, float *d_logp,
                       mt_grpo_metrics *m, mt_error *err) {
    const size_t B = b->B, T = b->T;
    if (B == 0 || T == 0) return mt_error_set(err, MT_ERR_INVALID, "GRPO loss of an empty batch");
    if (c->beta != 0 && !b->ref_logp)
        return mt_error_set(err, MT_ERR_INVALID, "GRPO with beta = %g needs the reference log-probs", c->beta);
    if (c->loss_type == MT_GRPO_LOSS_DR_GRPO && c->max_completion_length == 0)
        return mt_error_set(err, MT_ERR_INVALID, "dr_grpo needs max_completion_length > 0");
    double active = 0;
    for (size_t i = 0; i < B * T; i++) active += b->mask[i] != 0;

    double total = 0, kl_sum = 0, low = 0, high = 0, region = 0, n_units = 0;
    double low_min = NAN, high_max = NAN;
    const double lo = 1 - c->epsilon_low, hi = 1 + c->epsilon_high;
    for (size_t s = 0; s < B; s++) {
        const uint8_t *mk = b->mask + s * T;
        const float *lp = b->logp + s * T, *old = b->old_logp ? b->old_logp + s * T : NULL;
        double ntok = 0;
        for (size_t t = 0; t < T; t++) ntok += mk[t] != 0;
        /* the weight of one token of this sequence in the aggregate */
        double w;
        switch (c->loss_type) {
        case MT_GRPO_LOSS_GRPO: w = 1.0 / (fmax(ntok, 1.0) * (double)B); break;
        case MT_GRPO_LOSS_BNPO: w = 1.0 / fmax(active, 1.0); break;
        case MT_GRPO_LOSS_DR_GRPO: w = 1.0 / ((double)B * (double)c->max_completion_length); break;
        default: w = 1.0 / fmax(b->num_items > 0 ? b->num_items : active, 1.0); break;
        }
        const double A = b->advantages[s];
        /* GSPO: ρ = exp(mean log-ratio), the same for every token; dρ/d logp_t = ρ/n */
        double rho_seq = 1, seq_lr = 0;
        if (c->sequence_level) {
            if (old)
                for (size_t t = 0; t < T; t++)
                    if (mk[t]) seq_lr += (double)lp[t] - old[t];
            rho_seq = exp(seq_lr / fmax(ntok, 1.0));
        }
        double seq_low = 0, seq_high = 0;
        for (size_t t = 0; t < T; t++) {
            if (!mk[t]) {
                if (d_logp) d_logp[s * T + t] = 0;
                continue;
            }
            double rho = c->sequence_level ? rho_seq : old ? exp((double)lp[t] - old[t]) : 1.0;
            double rc = clampd(rho, lo, hi);
            double l1 = rho * A, l2 = rc * A;
            double ptl = -fmin(l1, l2);
            /* d(−min)/dρ with torch's split on ties; clamp passes the gradient inside only */
            double w1 = l1 < l2 ? 1 : l1 > l2 ? 0 : 0.5;
            double inside = rho >= lo && rho <= hi;
            double g_rho = -(w1 * A + (1 - w1) * A * inside);
            /* token level: dρ/d logp = ρ on this token. Sequence level: every token's loss moves
             * with every token's log-prob, Σ_t' w·g·ρ/n, added once per token below */
            double g = c->sequence_level ? w * ntok * g_rho * rho / fmax(ntok, 1.0) : w * g_rho * rho;
            if (c->beta != 0) {
                float dk;
                double k = mt_rl_kl(MT_KL_K3, lp[t], b->ref_logp[s * T + t], &dk);
                ptl += c->beta * k;
                g += w * c->beta * dk;
                kl_sum += k;
            }
            total += w * ptl;
            if (d_logp) d_logp[s * T + t] = (float)g;
            if (!c->sequence_level) {
                bool is_low = rho < lo && A < 0, is_high = rho > hi && A > 0;
                low += is_low;
                high += is_high;
                region += is_low || is_high;
                seq_low += is_low;
                seq_high += is_high;
            }
        }
        if (c->sequence_level) {
            /* TRL counts a (B, 1) ratio once per completion, empty ones included */
            bool is_low = rho_seq < lo && A < 0, is_high = rho_seq > hi && A > 0;
            low += is_low;
            high += is_high;
            region += is_low || is_high;
            n_units++;
            low_min = isnan(low_min) ? is_low : fmin(low_min, is_low);
            high_max = isnan(high_max) ? is_high : fmax(high_max, is_high);
        } else if (ntok > 0) {
            /* TRL's nanmin / nanmax over the sequences' shares (empty sequences are NaN) */
            double fl = seq_low / ntok, fh = seq_high / ntok;
            low_min = isnan(low_min) ? fl : fmin(low_min, fl);
            high_max = isnan(high_max) ? fh : fmax(high_max, fh);
        }
    }
    if (!isfinite(total)) return mt_error_set(err, MT_ERR_NUMERIC, "GRPO loss is not finite (%g)", total);
    *loss = total;
    if (m) {
        double den = fmax(active, 1.0), cden = c->sequence_level ? fmax(n_units, 1.0) : den;
        m->kl = c->beta != 0 ? kl_sum / den : NAN;
        m->clip_low_mean = low / cden;
        m->clip_high_mean = high / cden;
        m->clip_region_mean = region / cden;
        m->clip_low_min = low_min;
        m->clip_high_max = high_max;
    }
    return MT_OK;
}
