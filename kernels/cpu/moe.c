/* moe.c — expert dispatch on the CPU: a stable counting sort of (token, slot) pairs by
 * expert, the row gather into expert order, and the weighted scatter back, with backwards.
 * Scatters into token rows are split by columns so no two threads add into one element. */
#include "cpu/cpu-impl.h"

#include <omp.h>
#include <string.h>

void mt_cpu_moe_permute(mt_backend *be, const int32_t *idx, int n_tok, int k, int n_expert, int32_t *offsets,
                        int32_t *src_tok, int32_t *src_slot) {
    (void)be;
    const size_t n = (size_t)n_tok * (size_t)k;
    memset(offsets, 0, ((size_t)n_expert + 1) * sizeof *offsets);
    for (size_t i = 0; i < n; i++) {
        MT_ASSERT(idx[i] >= 0 && idx[i] < n_expert);
        offsets[idx[i] + 1]++;
    }
    for (int e = 0; e < n_expert; e++) offsets[e + 1] += offsets[e];
    /* offsets[e] doubles as the fill cursor of expert e, then is restored from its neighbour */
    for (size_t i = 0; i < n; i++) {
        int32_t r = offsets[idx[i]]++;
        src_tok[r] = (int32_t)(i / (size_t)k);
        src_slot[r] = (int32_t)i;
    }
    for (int e = n_expert; e > 0; e--) offsets[e] = offsets[e - 1];
    offsets[0] = 0;
}

void mt_cpu_gather_rows(mt_backend *be, const float *x, const int32_t *src_tok, int n_rows, int d, float *xp) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)n_rows * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int r = 0; r < n_rows; r++)
        memcpy(xp + (size_t)r * d, x + (size_t)src_tok[r] * d, (size_t)d * sizeof(float));
}

void mt_cpu_gather_rows_backward(mt_backend *be, const float *dxp, const int32_t *src_tok, int n_rows, int d,
                                 float *dx) {
    int nt = mt_cpu_nthreads(be);
    int chunks = (d + MT_CPU_COL_CHUNK - 1) / MT_CPU_COL_CHUNK;
#pragma omp parallel for num_threads(nt) if ((size_t)n_rows * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int ch = 0; ch < chunks; ch++) {
        int c0 = ch * MT_CPU_COL_CHUNK, c1 = c0 + MT_CPU_COL_CHUNK < d ? c0 + MT_CPU_COL_CHUNK : d;
        for (int r = 0; r < n_rows; r++) {
            float *dst = dx + (size_t)src_tok[r] * d;
            const float *src = dxp + (size_t)r * d;
            for (int i = c0; i < c1; i++) dst[i] += src[i];
        }
    }
}

void mt_cpu_moe_unpermute(mt_backend *be, const float *yp, const int32_t *src_tok, const int32_t *src_slot,
                          const float *w, int n_rows, int d, float *y) {
    int nt = mt_cpu_nthreads(be);
    int chunks = (d + MT_CPU_COL_CHUNK - 1) / MT_CPU_COL_CHUNK;
#pragma omp parallel for num_threads(nt) if ((size_t)n_rows * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int ch = 0; ch < chunks; ch++) {
        int c0 = ch * MT_CPU_COL_CHUNK, c1 = c0 + MT_CPU_COL_CHUNK < d ? c0 + MT_CPU_COL_CHUNK : d;
        for (int r = 0; r < n_rows; r++) {
            float *dst = y + (size_t)src_tok[r] * d;
            const float *src = yp + (size_t)r * d;
            const float wr = w[src_slot[r]];
            for (int i = c0; i < c1; i++) dst[i] += wr * src[i];
        }
    }
}

/* Each permuted row r owns dyp[r] and its slot's dw entry, so rows run in parallel. */
void mt_cpu_moe_unpermute_backward(mt_backend *be, const float *dy, const float *yp, const int32_t *src_tok,
                                   const int32_t *src_slot, const float *w, int n_rows, int d, float *dyp,
                                   float *dw) {
    int nt = mt_cpu_nthreads(be);
#pragma omp parallel for num_threads(nt) if ((size_t)n_rows * (size_t)d >= MT_CPU_PAR_MIN) schedule(static)
    for (int r = 0; r < n_rows; r++) {
        const float *g = dy + (size_t)src_tok[r] * d;
        if (dyp) {
            float *dst = dyp + (size_t)r * d;
            const float wr = w[src_slot[r]];
            for (int i = 0; i < d; i++) dst[i] += wr * g[i];
        }
        if (dw) dw[src_slot[r]] += mt_cpu_dot(g, yp + (size_t)r * d, d);
    }
}
