/* norm.c — RMSNorm forward and backward on the CPU, statistics in fp32 as transformers
 * computes them (x·rsqrt(mean(x²)+eps), then ·w). */
#include "cpu/cpu-impl.h"

#include <math.h>
#include <omp.h>

void mt_cpu_rmsnorm_forward(mt_backend *be, const float *x, const float *w, float *y, float *rstd, int n, int d,
                            float eps) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)n * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * d;
        float *yr = y + (size_t)t * d;
        float r = 1.0f / sqrtf(mt_cpu_dot(xr, xr, d) / (float)d + eps);
        rstd[t] = r;
        for (int i = 0; i < d; i++) yr[i] = w[i] * (xr[i] * r);
    }
}

void mt_cpu_rmsnorm_backward(mt_backend *be, const float *dy, const float *x, const float *w, const float *rstd,
                             float *dx, float *dw, int n, int d) {
    int nt = mt_cpu_nthreads(be);
    bool par = (size_t)n * (size_t)d >= MT_CPU_PAR_MIN;
    if (dx) {
#pragma omp parallel for num_threads(nt) if (par) schedule(static)
        for (int t = 0; t < n; t++) {
            const float *xr = x + (size_t)t * d, *gr = dy + (size_t)t * d;
            float *dr = dx + (size_t)t * d;
            float r = rstd[t];
            /* mean(g⊙x̂) with g = dy⊙w and x̂ = x·r */
            float mean = mt_cpu_dot3(gr, w, xr, d) * r / (float)d;
            for (int i = 0; i < d; i++) dr[i] += (gr[i] * w[i] - xr[i] * r * mean) * r;
        }
    }
    if (dw) {
        /* a column sum over rows: split by columns so each dw[i] has one owner */
        int chunks = (d + MT_CPU_COL_CHUNK - 1) / MT_CPU_COL_CHUNK;
#pragma omp parallel for num_threads(nt) if (par) schedule(static)
        for (int ch = 0; ch < chunks; ch++) {
            int c0 = ch * MT_CPU_COL_CHUNK, c1 = c0 + MT_CPU_COL_CHUNK < d ? c0 + MT_CPU_COL_CHUNK : d;
            for (int t = 0; t < n; t++) {
                const float *xr = x + (size_t)t * d, *gr = dy + (size_t)t * d;
                float r = rstd[t];
                for (int i = c0; i < c1; i++) dw[i] += gr[i] * (xr[i] * r);
            }
        }
    }
}
