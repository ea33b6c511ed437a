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
    /* without a gradient the logits stay as they are, so the exponentials go to scratch */
    float *scratch = grad_scale == 0.0f ? mt_cpu_scratch(be, (size_t)V) : NULL;
    size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
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
        const float zy = z[y];
        float *e = scratch ? scratch + (size_t)omp_get_thread_num() * stride : z;
        const double sum = mt_cpu_exp_affine(z, e, V, 1.0f, -mx);
        losses[t] = (float)((double)mx + log(sum) - (double)zy);
        if (grad_scale != 0.0f) {
            /* softmax·g = exp(z − max)·g/Σ */
            const float f = (float)((double)grad_scale / sum);
            for (int i = 0; i < V; i++) z[i] *= f;
            z[y] -= grad_scale;
        }
    }
}
