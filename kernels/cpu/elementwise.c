/* elementwise.c — CPU ops that touch each element once: axpy, scaling, the double-precision
 * sum of squares (gradient norms), bias rows, strided block copies, and the embedding
 * lookup with its scatter-add backward. */
#include "cpu/cpu-impl.h"

#include <omp.h>
#include <string.h>

void mt_cpu_add(mt_backend *be, float *y, const float *x, float alpha, size_t n) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if (n >= MT_CPU_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

void mt_cpu_scale(mt_backend *be, float *x, float alpha, size_t n) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if (n >= MT_CPU_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= alpha;
}

/* A fixed number of chunks whose bounds depend on n only, summed in chunk order: the
 * result is the same for any thread count. Inside a chunk, four double lanes vectorise. */
double mt_cpu_sum_squares(mt_backend *be, const float *x, size_t n) {
    enum { CHUNKS = 64 };
    double part[CHUNKS];
    size_t per = (n + CHUNKS - 1) / CHUNKS;
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if (n >= MT_CPU_PAR_MIN) schedule(static)
    for (int ch = 0; ch < CHUNKS; ch++) {
        size_t lo = (size_t)ch * per, hi = lo + per < n ? lo + per : n;
        double acc[4] = {0, 0, 0, 0};
        size_t i = lo;
        for (; i + 4 <= hi; i += 4)
            for (int l = 0; l < 4; l++) acc[l] += (double)x[i + l] * (double)x[i + l];
        for (int l = 0; i < hi; i++, l++) acc[l] += (double)x[i] * (double)x[i];
        part[ch] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
    double s = 0;
    for (int ch = 0; ch < CHUNKS; ch++) s += part[ch];
    return s;
}

void mt_cpu_add_bias(mt_backend *be, float *y, const float *b, int n, int d) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)n * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int t = 0; t < n; t++) {
        float *yr = y + (size_t)t * d;
        for (int i = 0; i < d; i++) yr[i] += b[i];
    }
}

void mt_cpu_add_bias_backward(mt_backend *be, const float *dy, int n, int d, float *db) {
    int nt = mt_cpu_nthreads(be);
    int chunks = (d + MT_CPU_COL_CHUNK - 1) / MT_CPU_COL_CHUNK;
#pragma omp parallel for num_threads(nt) if ((size_t)n * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int ch = 0; ch < chunks; ch++) {
        int c0 = ch * MT_CPU_COL_CHUNK, c1 = c0 + MT_CPU_COL_CHUNK < d ? c0 + MT_CPU_COL_CHUNK : d;
        for (int t = 0; t < n; t++) {
            const float *r = dy + (size_t)t * d;
            for (int i = c0; i < c1; i++) db[i] += r[i];
        }
    }
}

void mt_cpu_copy_2d(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)rows * (size_t)cols >= MT_CPU_PAR_MIN) schedule(static)
    for (int r = 0; r < rows; r++) memcpy(dst + (size_t)r * ldd, src + (size_t)r * lds, (size_t)cols * sizeof(float));
}

void mt_cpu_add_2d(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)rows * (size_t)cols >= MT_CPU_PAR_MIN) schedule(static)
    for (int r = 0; r < rows; r++) {
        float *dr = dst + (size_t)r * ldd;
        const float *sr = src + (size_t)r * lds;
        for (int c = 0; c < cols; c++) dr[c] += sr[c];
    }
}

void mt_cpu_embedding_forward(mt_backend *be, const int32_t *tokens, int n, const float *table, int d, float *out) {
    int nt = mt_cpu_nthreads(be);
    for (int t = 0; t < n; t++) MT_ASSERT(tokens[t] >= 0);
#pragma omp parallel for num_threads(nt) if ((size_t)n * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int t = 0; t < n; t++)
        memcpy(out + (size_t)t * d, table + (size_t)tokens[t] * d, (size_t)d * sizeof(float));
}

/* Repeated tokens add into the same table row, so threads split the columns, not the tokens. */
void mt_cpu_embedding_backward(mt_backend *be, const int32_t *tokens, int n, const float *dout, int d,
                               float *dtable) {
    int nt = mt_cpu_nthreads(be);
    int chunks = (d + MT_CPU_COL_CHUNK - 1) / MT_CPU_COL_CHUNK;
    for (int t = 0; t < n; t++) MT_ASSERT(tokens[t] >= 0);
#pragma omp parallel for num_threads(nt) if ((size_t)n * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int ch = 0; ch < chunks; ch++) {
        int c0 = ch * MT_CPU_COL_CHUNK, c1 = c0 + MT_CPU_COL_CHUNK < d ? c0 + MT_CPU_COL_CHUNK : d;
        for (int t = 0; t < n; t++) {
            float *row = dtable + (size_t)tokens[t] * d;
            const float *g = dout + (size_t)t * d;
            for (int i = c0; i < c1; i++) row[i] += g[i];
        }
    }
}
