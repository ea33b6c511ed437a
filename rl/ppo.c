/* ppo.c — PPO's pieces as TRL's PPOTrainer computes them: per-token KL estimators, entropy from
 * logits, the per-token reward (KL penalty plus the score after the last token), GAE over the
 * padded length, masked whitening, and the clipped policy and value losses with gradients. */
#include <string.h>

#include "rl-impl.h"

float mt_rl_kl(mt_kl_estimator e, float logp, float ref_logp, float *d_logp) {
    double logr = (double)ref_logp - logp;
    if (e == MT_KL_K1) {
        if (d_logp) *d_logp = 1.0f;
        return (float)-logr;
    }
    /* k3 = e^logr − 1 − logr; d/d logp = −e^logr + 1 (logr falls as logp rises) */
    double el = exp(logr);
    if (d_logp) *d_logp = (float)(1.0 - el);
    return (float)(el - 1.0 - logr);
}

void mt_rl_entropy_from_logits(size_t rows, size_t vocab, const float *logits, float *out) {
    for (size_t i = 0; i < rows; i++) {
        const float *x = logits + i * vocab;
        double mx = -INFINITY;
        for (size_t j = 0; j < vocab; j++) mx = fmax(mx, x[j]);
        double z = 0, zx = 0;
        for (size_t j = 0; j < vocab; j++) {
            double e = exp(x[j] - mx);
            z += e;
            zx += e * x[j];
        }
        /* H = logsumexp(x) − Σ p·x */
        out[i] = (float)(mx + log(z) - zx / z);
    }
}

void mt_ppo_rewards(size_t B, size_t T, const float *logp, const float *ref_logp, const int32_t *last,
                    const float *scores, double kl_coef, mt_kl_estimator est, float *rewards, float *kl) {
    for (size_t b = 0; b < B; b++) {
        long L = last[b];
        for (size_t t = 0; t < T; t++) {
            /* TRL sets both log-probs to the same filler past the response, so the KL is 0 there */
            float k = (long)t <= L ? mt_rl_kl(est, logp[b * T + t], ref_logp[b * T + t], NULL) : 0.0f;
            if (kl) kl[b * T + t] = k;
            rewards[b * T + t] = (float)(-kl_coef * k);
        }
        if (T == 0) continue;
        /* the score lands one past the last token (TRL's sequence_lengths_p1), or on the last
         * token when the response fills the whole length */
        size_t end = L + 1 < (long)T ? (size_t)(L + 1) : (size_t)L;
        rewards[b * T + end] += scores[b];
    }
}

void mt_ppo_gae(size_t B, size_t T, const float *rewards, const float *values, double gamma, double lam,
                float *advantages, float *returns) {
    for (size_t b = 0; b < B; b++) {
        double lastgaelam = 0;
        for (size_t t = T; t-- > 0;) {
            double next = t + 1 < T ? values[b * T + t + 1] : 0.0;
            double delta = rewards[b * T + t] + gamma * next - values[b * T + t];
            lastgaelam = delta + gamma * lam * lastgaelam;
            advantages[b * T + t] = (float)lastgaelam;
            returns[b * T + t] = (float)(lastgaelam + values[b * T + t]);
        }
    }
}

mt_status mt_rl_masked_whiten(size_t n, const float *x, const uint8_t *mask, bool shift_mean, float *out,
                              mt_error *err) {
    double s = 0, cnt = 0;
    for (size_t i = 0; i < n; i++)
        if (mask[i]) s += x[i], cnt++;
    if (cnt < 2)
        return mt_error_set(err, MT_ERR_INVALID,
                            "whitening over %g entries; the unbiased variance needs at least 2 (a larger batch)", cnt);
    double mean = s / cnt, v = 0;
    for (size_t i = 0; i < n; i++)
        if (mask[i]) v += (x[i] - mean) * (x[i] - mean);
    double var = v / cnt * (cnt / (cnt - 1)); /* Bessel's correction, as TRL's masked_var */
    double inv = 1.0 / sqrt(var + 1e-8);
    for (size_t i = 0; i < n; i++)
        out[i] = mask[i] ? (float)((x[i] - mean) * inv + (shift_mean ? 0 : mean)) : 0.0f;
    return MT_OK;
}

/* d max(a, b) split as torch splits it: all to the larger, half each on a tie */
static void max_weights(double a, double b, double *wa, double *wb) {
    if (a > b)
        *wa = 1, *wb = 0;
    else if (b > a)
        *wa = 0, *wb = 1;
    else
        *wa = *wb = 0.5;
}

static double clampd(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

mt_status mt_ppo_policy_loss(size_t n, const float *new_logp, const float *old_logp, const float *adv,
                             const uint8_t *mask, double cliprange, double *loss, float *d_new, mt_ppo_stats *st,
                             mt_error *err) {
    double cnt = 0;
    for (size_t i = 0; i < n; i++) cnt += mask[i] != 0;
    if (cnt == 0) return mt_error_set(err, MT_ERR_INVALID, "PPO policy loss over no tokens");
    double sum = 0, clipped = 0, kl = 0, ratios = 0;
    for (size_t i = 0; i < n; i++) {
        if (!mask[i]) {
            if (d_new) d_new[i] = 0;
            ratios += 1; /* TRL fills both log-probs alike past the response: ratio 1 there */
            continue;
        }
        double diff = (double)new_logp[i] - old_logp[i], rho = exp(diff);
        double lo = 1 - cliprange, hi = 1 + cliprange, rc = clampd(rho, lo, hi);
        double a = adv[i], l1 = -a * rho, l2 = -a * rc, w1, w2;
        max_weights(l1, l2, &w1, &w2);
        sum += fmax(l1, l2);
        clipped += l2 > l1;
        kl += diff * diff;
        ratios += rho;
        double inside = rho >= lo && rho <= hi; /* clamp passes the gradient only inside */
        if (d_new) d_new[i] = (float)((w1 * -a * rho + w2 * -a * rho * inside) / cnt);
    }
    *loss = sum / cnt;
    if (st) {
        st->clipfrac = clipped / cnt;
        st->approxkl = 0.5 * kl / n;
        st->ratio_mean = ratios / n;
    }
    return isfinite(*loss) ? MT_OK : mt_error_set(err, MT_ERR_NUMERIC, "PPO policy loss is not finite (%g)", *loss);
}

mt_status mt_ppo_value_loss(size_t n, const float *vpred, const float *old_values, const float *returns,
                            const uint8_t *mask, double cliprange_value, double *loss, float *d_vpred,
                            mt_ppo_stats *st, mt_error *err) {
    double cnt = 0;
    for (size_t i = 0; i < n; i++) cnt += mask[i] != 0;
    if (cnt == 0) return mt_error_set(err, MT_ERR_INVALID, "PPO value loss over no tokens");
    double sum = 0, clipped = 0;
    for (size_t i = 0; i < n; i++) {
        if (!mask[i]) {
            if (d_vpred) d_vpred[i] = 0;
            continue;
        }
        double v = vpred[i], R = returns[i];
        double lo = (double)old_values[i] - cliprange_value, hi = (double)old_values[i] + cliprange_value;
        double vc = clampd(v, lo, hi);
        double l1 = (v - R) * (v - R), l2 = (vc - R) * (vc - R), w1, w2;
        max_weights(l1, l2, &w1, &w2);
        sum += fmax(l1, l2);
        clipped += l2 > l1;
        double inside = v >= lo && v <= hi;
        if (d_vpred) d_vpred[i] = (float)(0.5 * (w1 * 2 * (v - R) + w2 * 2 * (vc - R) * inside) / cnt);
    }
    *loss = 0.5 * sum / cnt;
    if (st) {
        st->clipfrac = clipped / cnt;
        st->approxkl = st->ratio_mean = NAN;
    }
    return isfinite(*loss) ? MT_OK : mt_error_set(err, MT_ERR_NUMERIC, "PPO value loss is not finite (%g)", *loss);
}
