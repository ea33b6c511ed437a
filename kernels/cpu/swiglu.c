/* swiglu.c — the expert activation silu(g)⊙u and the per-token sigmoid gate of Qwen2-MoE's
 * shared expert, forward and backward, on the CPU. */
#include "cpu/cpu-impl.h"

#include <math.h>
#include <omp.h>

static inline float sigmoidf(float x) { return 1.0f / (1.0f + mt_cpu_expf(-x)); }

/* Chunks of this many elements per task: whole vectors, so the vector/tail split (and hence
 * every value: the two paths run the same operations) does not depend on the thread count. */
#define SWIGLU_CHUNK 4096

static void swiglu_forward_span(const float *g, const float *u, float *h, size_t n) {
    size_t i = 0;
#ifdef __AVX2__
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 sv = _mm256_div_ps(one, _mm256_add_ps(one, mt_cpu_exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(_mm256_mul_ps(gv, sv), _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < n; i++) {
        float sg = sigmoidf(g[i]);
        float gs = g[i] * sg;
        h[i] = gs * u[i];
    }
}

/* dg += dh·u·s·(1 + g·(1 − s)), du += dh·g·s, s = sigmoid(g) */
static void swiglu_backward_span(const float *dh, const float *g, const float *u, float *dg, float *du, size_t n) {
    size_t i = 0;
#ifdef __AVX2__
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), dv = _mm256_loadu_ps(dh + i);
        __m256 sv = _mm256_div_ps(one, _mm256_add_ps(one, mt_cpu_exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        if (dg) {
            __m256 t = _mm256_fmadd_ps(gv, _mm256_sub_ps(one, sv), one);
            __m256 a = _mm256_mul_ps(_mm256_mul_ps(dv, _mm256_loadu_ps(u + i)), sv);
            _mm256_storeu_ps(dg + i, _mm256_fmadd_ps(a, t, _mm256_loadu_ps(dg + i)));
        }
        if (du) _mm256_storeu_ps(du + i, _mm256_fmadd_ps(_mm256_mul_ps(dv, gv), sv, _mm256_loadu_ps(du + i)));
    }
#endif
    for (; i < n; i++) {
        float sg = sigmoidf(g[i]);
        if (dg) {
            float t = __builtin_fmaf(g[i], 1.0f - sg, 1.0f);
            float du_s = dh[i] * u[i];
            float a = du_s * sg;
            dg[i] = __builtin_fmaf(a, t, dg[i]);
        }
        if (du) {
            float dgp = dh[i] * g[i];
            du[i] = __builtin_fmaf(dgp, sg, du[i]);
        }
    }
}

void mt_cpu_swiglu_forward(mt_backend *be, const float *g, const float *u, float *h, size_t n) {
    int nt = mt_cpu_nthreads(be);
    long long chunks = (long long)((n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK);
#pragma omp parallel for num_threads(nt) if (n >= MT_CPU_PAR_MIN) schedule(static)
    for (long long c = 0; c < chunks; c++) {
        size_t i0 = (size_t)c * SWIGLU_CHUNK, len = n - i0 < SWIGLU_CHUNK ? n - i0 : SWIGLU_CHUNK;
        swiglu_forward_span(g + i0, u + i0, h + i0, len);
    }
}

void mt_cpu_swiglu_backward(mt_backend *be, const float *dh, const float *g, const float *u, float *dg, float *du,
                            size_t n) {
    int nt = mt_cpu_nthreads(be);
    long long chunks = (long long)((n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK);
#pragma omp parallel for num_threads(nt) if (n >= MT_CPU_PAR_MIN) schedule(static)
    for (long long c = 0; c < chunks; c++) {
        size_t i0 = (size_t)c * SWIGLU_CHUNK, len = n - i0 < SWIGLU_CHUNK ? n - i0 : SWIGLU_CHUNK;
        swiglu_backward_span(dh + i0, g + i0, u + i0, dg ? dg + i0 : NULL, du ? du + i0 : NULL, len);
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
