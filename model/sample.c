/* sample.c — picking the next token from logits: greedy, or temperature → top-k → top-p →
 * a draw, in the order of transformers' logits warpers. Works in place on the logits, with
 * no allocation: the top-k and top-p cut-offs are found by bisection over the probabilities'
 * bit patterns (monotonic for non-negative floats) instead of by sorting. */
#include <math.h>
#include <string.h>

#include "model-impl.h"

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int32_t argmax(const float *x, int V) {
    int32_t best = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The largest threshold τ (over p's values) such that keep(τ) holds, where keep is monotone:
 * true for τ = 0. Returns τ. */
typedef bool (*mt_keep_fn)(const float *p, int V, float tau, const void *arg);

static float bisect_threshold(const float *p, int V, float pmax, mt_keep_fn keep, const void *arg) {
    uint32_t lo = 0, hi = float_bits(pmax); /* keep(lo) holds */
    if (keep(p, V, pmax, arg)) return pmax;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (keep(p, V, bits_float(mid), arg))
            lo = mid;
        else
            hi = mid;
    }
    return bits_float(lo);
}

/* at least k tokens have p >= τ */
static bool keep_top_k(const float *p, int V, float tau, const void *arg) {
    int k = *(const int *)arg, n = 0;
    for (int i = 0; i < V; i++) n += p[i] >= tau;
    return n >= k;
}

/* the tokens with p >= τ carry at least top_p of the mass */
static bool keep_top_p(const float *p, int V, float tau, const void *arg) {
    double target = *(const double *)arg, mass = 0;
    for (int i = 0; i < V; i++)
        if (p[i] >= tau) mass += p[i];
    return mass >= target;
}

int32_t mt_sample(const mt_sample_opts *o, float *logits, int V, mt_rng *rng) {
    if (V <= 0) return -1;
    if (!o || o->temperature <= 0) return argmax(logits, V);
    int32_t best = argmax(logits, V);
    float mx = logits[best];
    double sum = 0;
    for (int i = 0; i < V; i++) {
        float p = (float)exp((double)(logits[i] - mx) / o->temperature);
        logits[i] = p;
        sum += p;
    }
    for (int i = 0; i < V; i++) logits[i] = (float)(logits[i] / sum);
    float pmax = logits[best];
    /* top-k keeps every token tied with the k-th, as TopKLogitsWarper does */
    if (o->top_k > 0 && o->top_k < V) {
        float tau = bisect_threshold(logits, V, pmax, keep_top_k, &o->top_k);
        for (int i = 0; i < V; i++)
            if (logits[i] < tau) logits[i] = 0;
    }
    if (o->top_p > 0 && o->top_p < 1) {
        double mass = 0;
        for (int i = 0; i < V; i++) mass += logits[i];
        double target = o->top_p * mass;
        float tau = bisect_threshold(logits, V, pmax, keep_top_p, &target);
        for (int i = 0; i < V; i++)
            if (logits[i] < tau) logits[i] = 0;
    }
    double total = 0;
    for (int i = 0; i < V; i++) total += logits[i];
    double r = (double)mt_rng_float(rng) * total, acc = 0;
    int32_t last = best;
    for (int i = 0; i < V; i++) {
        if (logits[i] <= 0) continue;
        acc += logits[i];
        last = i;
        if (r < acc) return i;
    }
    return last;
}
