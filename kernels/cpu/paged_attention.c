/* paged_attention.c — attention of decode rows over a paged KV cache on the CPU: every row
 * streams its own sequence's keys through an online softmax, reading each position through
 * the block table. One task per (row, KV head) runs all the query heads of that KV head, so
 * a key row loaded for one head is reused by the group while it is in cache. */
#include "cpu/cpu-impl.h"

#include <math.h>
#include <omp.h>

/* Keys per tile, aligned to absolute positions (see kernels.h: results independent of the
 * block size and of the step's other rows). */
enum { PA_TILE = 64 };

static inline const float *key_row(const mt_paged_attn_args *a, const int32_t *table, int p) {
    int32_t blk = table[p / a->block_size];
    return a->cache + ((size_t)blk * a->block_size + (size_t)(p % a->block_size)) * a->kv_row;
}

void mt_cpu_paged_attention_forward(mt_backend *be, const mt_paged_attn_args *a, const float *q, float *o) {
    MT_ASSERT(a->n_rows >= 0 && a->n_head > 0 && a->n_kv_head > 0 && a->n_head % a->n_kv_head == 0);
    MT_ASSERT(a->block_size > 0 && a->dqk > 0 && a->dv > 0);
    const int group = a->n_head / a->n_kv_head, dqk = a->dqk, dv = a->dv;
    /* per thread: scores [group, TILE], accumulators [group, dv], running max and sum [group] */
    const size_t per = (size_t)group * PA_TILE + (size_t)group * dv + 2 * (size_t)group;
    float *scratch = mt_cpu_scratch(be, per);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    const int tasks = a->n_rows * a->n_kv_head;
    size_t work = 0;
    for (int r = 0; r < a->n_rows; r++) work += (size_t)(a->pos[r] + 1) * (size_t)a->n_head * (size_t)(dqk + dv);
    const int nt = mt_cpu_nthreads(be);

#pragma omp parallel for num_threads(nt) if (work >= MT_CPU_PAR_MIN) schedule(dynamic, 1)
    for (int task = 0; task < tasks; task++) {
        const int r = task / a->n_kv_head, g = task % a->n_kv_head;
        float *s = scratch + (size_t)omp_get_thread_num() * stride; /* [group, TILE] */
        float *acc = s + (size_t)group * PA_TILE;                     /* [group, dv] */
        float *m = acc + (size_t)group * dv;                          /* [group] */
        float *l = m + group;                                         /* [group] */
        const int32_t *table = a->tables + (size_t)a->seq[r] * a->table_stride;
        const int lo = a->kv_start ? a->kv_start[r] : 0, hi = a->pos[r];
        MT_ASSERT(lo >= 0 && lo <= hi);
        for (int hh = 0; hh < group; hh++) {
            m[hh] = -INFINITY;
            l[hh] = 0.0f;
            for (int i = 0; i < dv; i++) acc[(size_t)hh * dv + i] = 0.0f;
        }
        for (int j0 = lo / PA_TILE * PA_TILE; j0 <= hi; j0 += PA_TILE) {
            const int cl = (lo > j0 ? lo : j0) - j0, ch = (hi < j0 + PA_TILE - 1 ? hi : j0 + PA_TILE - 1) - j0;
            for (int c = cl; c <= ch; c++) {
                const float *kr = key_row(a, table, j0 + c) + a->k_off + (size_t)g * a->k_head;
                for (int hh = 0; hh < group; hh++) {
                    const float *qr = q + (size_t)r * a->q_row + (size_t)(g * group + hh) * a->q_head;
                    s[(size_t)hh * PA_TILE + c] = mt_cpu_dot(qr, kr, dqk) * a->scale;
                }
            }
            for (int hh = 0; hh < group; hh++) {
                float *sh = s + (size_t)hh * PA_TILE;
                float bmax = -INFINITY;
                for (int c = cl; c <= ch; c++)
                    if (sh[c] > bmax) bmax = sh[c];
                const float mnew = m[hh] > bmax ? m[hh] : bmax;
                const float f = mt_cpu_expf(m[hh] - mnew); /* 0 on the first tile */
                const float sum = (float)mt_cpu_exp_affine(sh + cl, sh + cl, ch - cl + 1, 1.0f, -mnew);
                l[hh] = l[hh] * f + sum;
                m[hh] = mnew;
                float *ah = acc + (size_t)hh * dv;
                if (f != 1.0f)
                    for (int i = 0; i < dv; i++) ah[i] *= f;
            }
            for (int c = cl; c <= ch; c++) {
                const float *vr = key_row(a, table, j0 + c) + a->v_off + (size_t)g * a->v_head;
                for (int hh = 0; hh < group; hh++) {
                    const float pc = s[(size_t)hh * PA_TILE + c];
                    float *ah = acc + (size_t)hh * dv;
                    for (int i = 0; i < dv; i++) ah[i] = fmaf(pc, vr[i], ah[i]);
                }
            }
        }
        for (int hh = 0; hh < group; hh++) {
            float *orow = o + (size_t)r * a->o_row + (size_t)(g * group + hh) * a->o_head;
            const float inv = 1.0f / l[hh];
            for (int i = 0; i < dv; i++) orow[i] = acc[(size_t)hh * dv + i] * inv;
        }
    }
}
