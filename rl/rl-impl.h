/* rl-impl.h — what the rl room's files share: numerically stable logistic helpers. All the
 * room's arithmetic runs in double; the arrays it reads and writes are float. */
#ifndef MT_RL_IMPL_H
#define MT_RL_IMPL_H

#include <math.h>

#include "rl/rl.h"

/* σ(x) without overflow for large |x| */
static inline double mt_rl_sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

/* log σ(x) = −log(1 + e^(−x)), stable on both sides */
static inline double mt_rl_logsigmoid(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }

/* log(1 − e^x) for x < 0, branching at −ln 2 as TRL's log1mexp does to avoid cancellation */
static inline double mt_rl_log1mexp(double x) { return x < -0.6931471805599453 ? log1p(-exp(x)) : log(-expm1(x)); }

#endif
