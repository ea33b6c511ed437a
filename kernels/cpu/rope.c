/* rope.c — rotary position embedding on the CPU, in place, for HF's rotate_half layout and
 * DeepSeek's interleaved pairs, over arbitrarily strided heads (MLA rotates only the rope
 * sub-block of each head). Backward is the inverse rotation (sin negated). */
#include "cpu/cpu-impl.h"

#include <omp.h>

static void rope_apply(mt_backend *be, const mt_rope_args *a, float *x, float sign) {
    MT_ASSERT(a->rot_dim % 2 == 0 && a->rot_dim > 0);
    int half = a->rot_dim / 2;
    int nt = mt_cpu_nthreads(be);
    size_t work = (size_t)a->n_tok * (size_t)a->n_head * (size_t)a->rot_dim;
#pragma omp parallel for num_threads(nt) if (work >= MT_CPU_PAR_MIN) schedule(static)
    for (int t = 0; t < a->n_tok; t++) {
        MT_ASSERT(a->pos[t] >= 0);
        const float *c = a->cos + (size_t)a->pos[t] * half;
        const float *s = a->sin + (size_t)a->pos[t] * half;
        for (int h = 0; h < a->n_head; h++) {
            float *xh = x + (size_t)t * a->row_stride + (size_t)h * a->head_stride;
            if (a->style == MT_ROPE_STYLE_HALF) {
                for (int j = 0; j < half; j++) {
                    float x0 = xh[j], x1 = xh[j + half], sn = sign * s[j];
                    xh[j] = x0 * c[j] - x1 * sn;
                    xh[j + half] = x1 * c[j] + x0 * sn;
                }
            } else {
                for (int j = 0; j < half; j++) {
                    float x0 = xh[2 * j], x1 = xh[2 * j + 1], sn = sign * s[j];
                    xh[2 * j] = x0 * c[j] - x1 * sn;
                    xh[2 * j + 1] = x1 * c[j] + x0 * sn;
                }
            }
        }
    }
}

void mt_cpu_rope_forward(mt_backend *be, const mt_rope_args *a, float *x) { rope_apply(be, a, x, 1.0f); }

void mt_cpu_rope_backward(mt_backend *be, const mt_rope_args *a, float *dx) { rope_apply(be, a, dx, -1.0f); }
