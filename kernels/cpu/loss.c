/* loss.c — per-row cross-entropy on the CPU, numerically stable (max subtracted, the sum of
 * exponentials in double), optionally overwriting the logits with their gradient. */
#include "cpu/cpu-impl.h"

#include <math.h>
#include <omp.h>

void mt_cpu_cross_entropy(mt_backend *be, float *logits, const int32_t *targets, int n, int V, float grad_scale,
                          float *losses) {
    MT_ASSERT(n >= 0 && V > 0);
    for (int t = 0; t < n; t++) {
        const int32_t y = targets[t];
        MT_ASSERT(y == MT_IGNORE_INDEX || (y >= 0 && y < V));
    }
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)n * (size_t)V >= MT_CPU_PAR_MIN) schedule(static)
    for (int t = 0; t < n; t++) {
        float *z = logits + (size_t)t * V;
        const int32_t y = targets[t];
        if (y == MT_IGNORE_INDEX) {
            losses[t] = 0.0f;
            if (grad_scale != 0.0f)
                for (int i = 0; i < V; i++) z[i] = 0.0f;
            continue;
        }
        float mx = z[0];
        for (int i = 1; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        double sum = 0.0;
        for (int i = 0; i < V; i++) sum += (double)expf(z[i] - mx);
        const double lse = (double)mx + log(sum);
        losses[t] = (float)(lse - (double)z[y]);
        if (grad_scale != 0.0f) {
            const float lsef = (float)lse;
            for (int i = 0; i < V; i++) z[i] = grad_scale * expf(z[i] - lsef);
            z[y] -= grad_scale;
        }
    }
}
