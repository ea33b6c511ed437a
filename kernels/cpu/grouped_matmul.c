/* grouped_matmul.c — every routed expert of a layer in one call on the CPU: the groups' row
 * ranges times their own weights (fp32, or bf16/f16/int8 converted a tile at a time with
 * mt_lowp_row_to_f32), forward, input gradient and weight gradient. One parallel region per
 * call: the work is cut into items by the shapes alone, and each thread takes the next item when
 * it is free, each item on one thread (single-threaded sgemm, or for a forward group of a few
 * rows mt_cpu_lowp_gemv / mt_cpu_f32_gemv, a register-blocked AVX2 kernel on the stored weights). */
#include "cpu/cpu-impl.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>

/* fp32: one item per (projection, group), the very sgemm call mt_lin_forward / mt_lin_backward
 * make for one expert, so with one thread the grouped path gives the per-expert loop's bits (and
 * a token's row does not depend on which of its expert's row counts crosses a tile edge). A
 * forward group of at most SMALL_ROWS rows takes mt_cpu_f32_gemv over TILE_O-column items, as
 * mt_lin_forward's few-rows path (this op with one group) does for one expert.
 * Low precision: items of ROW_CHUNK rows by TILE_O columns (forward) or TILE_K columns (dX), the
 * tiles of mt_lowp_matmul, converted TILE_O x TILE_K at a time into per-thread scratch (128 KiB);
 * groups of at most SMALL_ROWS rows take mt_cpu_lowp_gemv instead, which widens the stored
 * weights in registers (a few rows do not amortise the conversion of whole tiles). */
#define SMALL_ROWS MT_CPU_LOWP_GEMV_ROWS
#define ROW_CHUNK 256
#define TILE_O 64
#define TILE_K 512
/* A fixed cost per item, in multiply-adds, for the decision to open a parallel region. */
#define ITEM_OVERHEAD 4096.0

static inline int imin(int a, int b) { return a < b ? a : b; }

static inline bool is_f32(const mt_grouped_proj *p, int g) { return p->f32 && p->f32[g]; }

/* The items run one per OpenMP thread, so OpenBLAS must not fan each sgemm out to its own
 * pool; mt_cpu_matmul sets the backend's count back before its next call. */
static void single_threaded_blas(void) {
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

/* ---- the few-rows dX kernel ---- */

/* d[i] += a·s[i] */
static inline void axpy(float *d, float a, const float *s, int n) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(s + i), _mm256_loadu_ps(d + i)));
    for (; i < n; i++) d[i] = fmaf(a, s[i], d[i]);
}

/* ---- items ---- */

typedef enum item_kind { ITEM_FWD = 0, ITEM_DX, ITEM_DW } item_kind;

/* One call's work: what every thread walks to find its items. */
typedef struct plan {
    mt_backend *be;
    int G, in, n_proj;
    const int32_t *off;
    const mt_grouped_proj *p;
    const float *x;
    float *dx;
    bool fwd, bwd;
    float *scratch;
    size_t stride;
} plan;

typedef struct item {
    item_kind kind;
    int p, g, r0, nr, c0, nc;
} item;

static void run_fwd(const plan *pl, const item *it, float *tmp) {
    const mt_grouped_proj *p = &pl->p[it->p];
    const int in = pl->in, out = p->out;
    const float *x = pl->x + (size_t)it->r0 * in;
    float *y = p->y + (size_t)it->r0 * out;
    if (is_f32(p, it->g)) {
        if (it->nr <= SMALL_ROWS)
            mt_cpu_f32_gemv(p->f32[it->g], out, in, it->c0, it->nc, it->nr, x, in, y, out);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, it->nr, it->nc, in, 1.0f, x, in,
                        p->f32[it->g] + (size_t)it->c0 * in, in, 0.0f, y + it->c0, out);
        return;
    }
    const mt_lowp_weight *W = &p->lowp[it->g];
    MT_ASSERT(W->out == out && W->in == in);
    if (it->nr <= SMALL_ROWS) {
        mt_cpu_lowp_gemv(W, it->c0, it->nc, it->nr, x, in, y, out);
        return;
    }
    for (int o0 = it->c0; o0 < it->c0 + it->nc; o0 += TILE_O) {
        const int no = imin(TILE_O, it->c0 + it->nc - o0);
        for (int k0 = 0; k0 < in; k0 += TILE_K) {
            const int kk = imin(TILE_K, in - k0);
            for (int o = 0; o < no; o++) mt_lowp_row_to_f32(W, o0 + o, k0, kk, tmp + (size_t)o * kk);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, it->nr, no, kk, 1.0f, x + k0, in, tmp, kk,
                        k0 ? 1.0f : 0.0f, y + o0, out);
        }
    }
}

/* dX rows of the item, columns c0 .. c0+nc−1, += Σ_p dY_p·W_p (projections in order). */
static void run_dx(const plan *pl, const item *it, float *tmp) {
    const int in = pl->in, c0 = it->c0, nc = it->nc, nr = it->nr;
    float *dx = pl->dx + (size_t)it->r0 * in + c0;
    for (int pi = 0; pi < pl->n_proj; pi++) {
        const mt_grouped_proj *p = &pl->p[pi];
        const int out = p->out;
        const float *dy = p->dy + (size_t)it->r0 * out;
        if (is_f32(p, it->g)) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, nc, out, 1.0f, dy, out, p->f32[it->g] + c0, in,
                        1.0f, dx, in);
            continue;
        }
        const mt_lowp_weight *W = &p->lowp[it->g];
        MT_ASSERT(W->out == out && W->in == in);
        if (nr <= SMALL_ROWS) {
            for (int o = 0; o < out; o++) {
                mt_lowp_row_to_f32(W, o, c0, nc, tmp);
                for (int t = 0; t < nr; t++) axpy(dx + (size_t)t * in, dy[(size_t)t * out + o], tmp, nc);
            }
            continue;
        }
        for (int o0 = 0; o0 < out; o0 += TILE_O) {
            const int oo = imin(TILE_O, out - o0);
            for (int o = 0; o < oo; o++) mt_lowp_row_to_f32(W, o0 + o, c0, nc, tmp + (size_t)o * nc);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, nc, oo, 1.0f, dy + o0, out, tmp, nc, 1.0f, dx,
                        in);
        }
    }
}

/* dW_g rows c0 .. c0+nc−1 += dY_gᵀ·X_g over all the group's rows (in row order). */
static void run_dw(const plan *pl, const item *it) {
    const mt_grouped_proj *p = &pl->p[it->p];
    const int in = pl->in, out = p->out;
    const float *dy = p->dy + (size_t)it->r0 * out + it->c0;
    const float *x = pl->x + (size_t)it->r0 * in;
    float *dw = p->dw[it->g] + (size_t)it->c0 * in;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, it->nc, in, it->nr, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

static void run_item(const plan *pl, const item *it, float *tmp) {
    switch (it->kind) {
    case ITEM_FWD:
        run_fwd(pl, it, tmp);
        return;
    case ITEM_DX:
        run_dx(pl, it, tmp);
        return;
    case ITEM_DW:
        run_dw(pl, it);
        return;
    }
}

/* Walks the call's items in a fixed order. Without `next` it only sums their cost into *sum;
 * with it, it runs the items whose index it claims from the shared counter *next, one at a
 * time as it gets free: items are claimed in walk order, so each thread walks the list once,
 * and a thread the machine holds up delays only its own item (which thread computes an item
 * never changes its bits). */
static void walk(const plan *pl, int *next, double *sum, float *tmp) {
    double cum = 0;
    int idx = 0, ticket = -1;
    item it;
    if (next) {
#pragma omp atomic capture
        ticket = (*next)++;
    }
#define VISIT(cost)                                                                                                  \
    do {                                                                                                             \
        if (idx++ == ticket) {                                                                                       \
            run_item(pl, &it, tmp);                                                                                  \
            _Pragma("omp atomic capture") ticket = (*next)++;                                                        \
        }                                                                                                            \
        cum += (cost) + ITEM_OVERHEAD;                                                                               \
    } while (0)
    const int in = pl->in;
    for (int g = 0; g < pl->G; g++) {
        const int r_begin = pl->off[g], n = pl->off[g + 1] - r_begin;
        if (n <= 0) continue;
        if (pl->fwd)
            for (int pi = 0; pi < pl->n_proj; pi++) {
                const bool f32 = is_f32(&pl->p[pi], g);
                /* fp32 groups of many rows: one sgemm over the whole weight; of few rows: the
                 * unpacked kernel, over column tiles so that one group still spreads over threads */
                const bool whole = f32 && n > SMALL_ROWS;
                const int out = pl->p[pi].out, cols = whole ? out : TILE_O, chunk = f32 ? n : ROW_CHUNK;
                for (int r = 0; r < n; r += chunk)
                    for (int c = 0; c < out; c += cols) {
                        it = (item){ITEM_FWD, pi, g, r_begin + r, imin(chunk, n - r), c, imin(cols, out - c)};
                        VISIT((double)it.nr * it.nc * in);
                    }
            }
        if (pl->bwd && pl->dx) {
            int outs = 0;
            bool lowp = false;
            for (int pi = 0; pi < pl->n_proj; pi++) {
                outs += pl->p[pi].out;
                lowp |= !is_f32(&pl->p[pi], g);
            }
            const int cols = lowp ? TILE_K : in, chunk = lowp ? ROW_CHUNK : n;
            for (int r = 0; r < n; r += chunk)
                for (int c = 0; c < in; c += cols) {
                    it = (item){ITEM_DX, 0, g, r_begin + r, imin(chunk, n - r), c, imin(cols, in - c)};
                    VISIT((double)it.nr * it.nc * outs);
                }
        }
        if (pl->bwd)
            for (int pi = 0; pi < pl->n_proj; pi++) {
                if (!pl->p[pi].dw || !pl->p[pi].dw[g]) continue;
                const int out = pl->p[pi].out;
                {
                    it = (item){ITEM_DW, pi, g, r_begin, n, 0, out};
                    VISIT((double)n * it.nc * in);
                }
            }
    }
#undef VISIT
    if (sum) *sum = cum;
}

static void check_call(int G, const int32_t *offsets, int in, const float *x, int n_proj, const mt_grouped_proj *p) {
    MT_ASSERT(G >= 0 && in > 0 && n_proj >= 0 && (G == 0 || offsets));
    for (int g = 0; g < G; g++) MT_ASSERT(offsets[g] >= 0 && offsets[g + 1] >= offsets[g]);
    MT_ASSERT(G == 0 || offsets[G] == offsets[0] || x);
    for (int pi = 0; pi < n_proj; pi++) {
        MT_ASSERT(p[pi].out > 0);
        for (int g = 0; g < G; g++)
            if (offsets[g + 1] > offsets[g]) MT_ASSERT(is_f32(&p[pi], g) || p[pi].lowp);
    }
}

static void execute(plan *pl) {
    double total = 0;
    walk(pl, NULL, &total, NULL);
    if (total <= 0) return;
    mt_backend *be = pl->be;
    const int nt = mt_cpu_nthreads(be);
    /* the low-precision paths' converted tiles */
    pl->scratch = mt_cpu_scratch(be, (size_t)TILE_O * TILE_K);
    pl->stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    single_threaded_blas();
    const bool par = nt > 1 && total >= 2.0 * MT_CPU_PAR_MIN;
    int next = 0;
#pragma omp parallel num_threads(nt) if (par)
    walk(pl, &next, NULL, pl->scratch + (size_t)omp_get_thread_num() * pl->stride);
}

void mt_cpu_grouped_matmul(mt_backend *be, int G, const int32_t *offsets, int in, const float *x, int n_proj,
                           const mt_grouped_proj *p) {
    check_call(G, offsets, in, x, n_proj, p);
    for (int pi = 0; pi < n_proj; pi++) MT_ASSERT(p[pi].y || G == 0 || offsets[G] == offsets[0]);
    plan pl = {.be = be, .G = G, .in = in, .n_proj = n_proj, .off = offsets, .p = p, .x = x, .fwd = true};
    execute(&pl);
}

void mt_cpu_grouped_matmul_backward(mt_backend *be, int G, const int32_t *offsets, int in, const float *x,
                                    float *dx, int n_proj, const mt_grouped_proj *p) {
    check_call(G, offsets, in, x, n_proj, p);
    for (int pi = 0; pi < n_proj; pi++) MT_ASSERT(p[pi].dy || G == 0 || offsets[G] == offsets[0]);
    plan pl = {.be = be, .G = G, .in = in, .n_proj = n_proj, .off = offsets, .p = p, .x = x, .dx = dx, .bwd = true};
    execute(&pl);
}
