/* route.c — the MoE router on the CPU: softmax or sigmoid scores, greedy, DeepSeek-V2
 * group-limited and DeepSeek-V3 noaux_tc top-k selection, normalisation and scaling of the
 * chosen weights, and the backward through all of it with the selection held constant. */
#include "cpu/cpu-impl.h"

#include <math.h>
#include <omp.h>

#define ROUTE_SUM_EPS 1e-20f /* DeepSeek's denominator guard: topk_weights.sum() + 1e-20 */

static void check_args(const mt_route_args *a) {
    MT_ASSERT(a->n_tok >= 0 && a->n_expert > 0 && a->top_k > 0 && a->top_k <= a->n_expert);
    if (a->method != MT_ROUTE_METHOD_GREEDY) {
        MT_ASSERT(a->n_group > 0 && a->n_expert % a->n_group == 0);
        MT_ASSERT(a->topk_group > 0 && a->topk_group <= a->n_group);
        MT_ASSERT(a->top_k <= a->topk_group * (a->n_expert / a->n_group));
        if (a->method == MT_ROUTE_METHOD_NOAUX_TC) MT_ASSERT(a->n_expert / a->n_group >= 2);
    }
}

/* Index of the largest of x[0..n) not yet taken (taken[i] != 0); ties go to the lowest index
 * because only a strictly greater value replaces the current best. */
static int argmax_untaken(const float *x, const float *taken, int n) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (taken[i] == 0.0f && (best < 0 || x[i] > x[best])) best = i;
    return best;
}

static void route_token(const mt_route_args *a, const float *z, float *s, int32_t *idx, float *w, float *ws) {
    const int E = a->n_expert, k = a->top_k;
    float *sel = ws;          /* [E] selection scores */
    float *taken = sel + E;   /* [E] 1 once chosen */
    float *gscore = taken + E; /* [n_group] */
    float *gkeep = gscore + (a->n_group > 0 ? a->n_group : 0); /* [n_group] 1 once kept */

    if (a->scoring == MT_ROUTE_SCORING_SOFTMAX) {
        float mx = -INFINITY, sum = 0.0f;
        for (int e = 0; e < E; e++) mx = z[e] > mx ? z[e] : mx;
        for (int e = 0; e < E; e++) {
            s[e] = expf(z[e] - mx);
            sum += s[e];
        }
        for (int e = 0; e < E; e++) s[e] /= sum;
    } else {
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-z[e]));
    }
    for (int e = 0; e < E; e++) {
        sel[e] = s[e];
        if (a->method == MT_ROUTE_METHOD_NOAUX_TC && a->bias) sel[e] += a->bias[e];
        taken[e] = 0.0f;
    }

    if (a->method != MT_ROUTE_METHOD_GREEDY) {
        const int G = a->n_group, gs = E / G;
        for (int gi = 0; gi < G; gi++) {
            const float *x = sel + (size_t)gi * gs;
            if (a->method == MT_ROUTE_METHOD_GROUP_LIMITED) {
                float mx = x[0];
                for (int i = 1; i < gs; i++) mx = x[i] > mx ? x[i] : mx;
                gscore[gi] = mx;
            } else { /* sum of the two largest */
                float t1 = -INFINITY, t2 = -INFINITY;
                for (int i = 0; i < gs; i++) {
                    if (x[i] > t1) {
                        t2 = t1;
                        t1 = x[i];
                    } else if (x[i] > t2) {
                        t2 = x[i];
                    }
                }
                gscore[gi] = t1 + t2;
            }
            gkeep[gi] = 0.0f;
        }
        for (int j = 0; j < a->topk_group; j++) gkeep[argmax_untaken(gscore, gkeep, G)] = 1.0f;
        /* transformers' masked_fill values: V2 0.0 on softmax scores, V3 −inf on biased ones */
        const float masked = a->method == MT_ROUTE_METHOD_GROUP_LIMITED ? 0.0f : -INFINITY;
        for (int gi = 0; gi < G; gi++)
            if (gkeep[gi] == 0.0f)
                for (int i = 0; i < gs; i++) sel[(size_t)gi * gs + i] = masked;
    }

    float sum = 0.0f;
    for (int j = 0; j < k; j++) {
        int e = argmax_untaken(sel, taken, E);
        taken[e] = 1.0f;
        idx[j] = e;
        w[j] = s[e]; /* unbiased score */
        sum += w[j];
    }
    float denom = a->norm == MT_ROUTE_NORM_SUM ? sum : a->norm == MT_ROUTE_NORM_SUM_EPS ? sum + ROUTE_SUM_EPS : 1.0f;
    for (int j = 0; j < k; j++) w[j] = a->norm == MT_ROUTE_NORM_NONE ? w[j] * a->scale : w[j] / denom * a->scale;
}

void mt_cpu_route_forward(mt_backend *be, const mt_route_args *a, const float *logits, float *scores, int32_t *idx,
                          float *w) {
    check_args(a);
    const int E = a->n_expert, k = a->top_k;
    float *scratch = mt_cpu_scratch(be, 2 * (size_t)E + 2 * (size_t)(a->n_group > 0 ? a->n_group : 0));
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)a->n_tok * (size_t)E * (size_t)k >= MT_CPU_PAR_MIN) \
    schedule(static)
    for (int t = 0; t < a->n_tok; t++)
        route_token(a, logits + (size_t)t * E, scores + (size_t)t * E, idx + (size_t)t * k, w + (size_t)t * k,
                    scratch + (size_t)omp_get_thread_num() * stride);
}

void mt_cpu_route_backward(mt_backend *be, const mt_route_args *a, const float *scores, const int32_t *idx,
                           const float *dw, const float *dscores, float *dlogits) {
    check_args(a);
    const int E = a->n_expert, k = a->top_k;
    float *scratch = mt_cpu_scratch(be, (size_t)E);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)a->n_tok * (size_t)E >= MT_CPU_PAR_MIN) schedule(static)
    for (int t = 0; t < a->n_tok; t++) {
        const float *s = scores + (size_t)t * E;
        const int32_t *id = idx + (size_t)t * k;
        const float *g = dw + (size_t)t * k;
        float *ds = scratch + (size_t)omp_get_thread_num() * stride; /* [E] ∂L/∂scores */
        for (int e = 0; e < E; e++) ds[e] = dscores ? dscores[(size_t)t * E + e] : 0.0f;
        if (a->norm == MT_ROUTE_NORM_NONE) {
            for (int j = 0; j < k; j++) ds[id[j]] += a->scale * g[j];
        } else {
            /* w_j = scale·s_j/D with D = Σ s_i (+eps): ∂L/∂s_i = scale·(dw_i/D − Σ_j dw_j·s_j/D²) */
            float sum = 0.0f, gs = 0.0f;
            for (int j = 0; j < k; j++) {
                sum += s[id[j]];
                gs += g[j] * s[id[j]];
            }
            const float D = a->norm == MT_ROUTE_NORM_SUM_EPS ? sum + ROUTE_SUM_EPS : sum;
            for (int j = 0; j < k; j++) ds[id[j]] += a->scale * (g[j] / D - gs / (D * D));
        }
        float *dz = dlogits + (size_t)t * E;
        if (a->scoring == MT_ROUTE_SCORING_SOFTMAX) {
            const float dot = mt_cpu_dot(s, ds, E);
            for (int e = 0; e < E; e++) dz[e] += s[e] * (ds[e] - dot);
        } else {
            for (int e = 0; e < E; e++) dz[e] += ds[e] * s[e] * (1.0f - s[e]);
        }
    }
}
