/* swiglu.c — the expert activation silu(g)⊙u and the per-token sigmoid gate of Qwen2-MoE's
 * shared expert, forward and backward, on the CPU. */
#include "cpu/cpu-impl.h"

#include <math.h>
#include <omp.h>

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

void mt_cpu_swiglu_forward(mt_backend *be, const float *g, const float *u, float *h, size_t n) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if (n >= MT_CPU_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) h[i] = g[i] * sigmoidf(g[i]) * u[i];
}

void mt_cpu_swiglu_backward(mt_backend *be, const float *dh, const float *g, const float *u, float *dg, float *du,
                            size_t n) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if (n >= MT_CPU_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float s = sigmoidf(g[i]);
        if (dg) dg[i] += dh[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
        if (du) du[i] += dh[i] * g[i] * s;
    }
}

void mt_cpu_sigmoid_gate_forward(mt_backend *be, const float *z, const float *x, float *y, int n, int d) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)n * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int t = 0; t < n; t++) {
        float s = sigmoidf(z[t]);
        const float *xr = x + (size_t)t * d;
        float *yr = y + (size_t)t * d;
        for (int i = 0; i < d; i++) yr[i] += s * xr[i];
    }
}

void mt_cpu_sigmoid_gate_backward(mt_backend *be, const float *z, const float *x, const float *dy, float *dz,
                                  float *dx, int n, int d) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)n * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int t = 0; t < n; t++) {
        float s = sigmoidf(z[t]);
        const float *xr = x + (size_t)t * d, *gr = dy + (size_t)t * d;
        if (dz) dz[t] += s * (1.0f - s) * mt_cpu_dot(gr, xr, d);
        if (dx) {
            float *dr = dx + (size_t)t * d;
            for (int i = 0; i < d; i++) dr[i] += s * gr[i];
        }
    }
}
