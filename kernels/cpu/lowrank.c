/* lowrank.c — a LoRA delta y += s·(x·A')·B' on the CPU. A few rows (a decode step's run of one
 * adapter) go through vectorised dot products or row updates on the calling thread, reading
 * both factors contiguously and packing nothing; many rows go to two sgemm calls. */
#include "cpu/cpu-impl.h"

/* Multiply-adds below which the direct path is used. */
#define LOWRANK_SMALL (1 << 18)

/* y[i] += a·x[i] */
static inline void axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void mt_cpu_lowrank_forward(mt_backend *be, int n, int in, int out, int r, float scale, const float *x, int ldx,
                            const float *A, bool a_t, const float *B, bool b_t, float *h, float *y, int ldy) {
    MT_ASSERT(n >= 0 && in > 0 && out > 0 && r > 0 && ldx >= in && ldy >= out);
    if (n == 0) return;
    if ((size_t)n * (size_t)r * (size_t)(in + out) > LOWRANK_SMALL) {
        /* A given [r, in] is multiplied transposed; given [in, r] as it is (likewise B) */
        mt_cpu_matmul(be, false, !a_t, n, r, in, 1.0f, x, ldx, A, a_t ? r : in, 0.0f, h, r);
        mt_cpu_matmul(be, false, !b_t, n, out, r, scale, h, r, B, b_t ? out : r, 1.0f, y, ldy);
        return;
    }
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * ldx;
        float *ht = h + (size_t)t * r, *yt = y + (size_t)t * ldy;
        if (!a_t) {
            for (int k = 0; k < r; k++) ht[k] = mt_cpu_dot(xt, A + (size_t)k * in, in);
        } else {
            for (int k = 0; k < r; k++) ht[k] = 0.0f;
            for (int i = 0; i < in; i++) axpy(ht, xt[i], A + (size_t)i * r, r);
        }
        if (!b_t) {
            for (int o = 0; o < out; o++) yt[o] += scale * mt_cpu_dot(ht, B + (size_t)o * r, r);
        } else {
            for (int k = 0; k < r; k++) axpy(yt, scale * ht[k], B + (size_t)k * out, out);
        }
    }
}
