/* lowp_matmul.c — y = x·Wᵀ and dx += dy·W on the CPU for a frozen weight stored as bf16, f16 or
 * int8 + scales: W is converted to fp32 a tile at a time into per-thread scratch and the tiles
 * go to single-threaded sgemm calls (one per thread, fp32 accumulation); a few rows (decode)
 * take a register-blocked kernel that widens the stored weights in registers and feeds each
 * widened vector to every row's FMA, so W is read once and never written out as fp32. */
#include "cpu/cpu-impl.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

/* Rows of x at or below which the forward takes the dot-product path. */
#define LOWP_SMALL_N MT_CPU_LOWP_GEMV_ROWS
/* Tiles of the sgemm path: TILE_O rows of W by TILE_K columns (128 KiB of fp32, half of a
 * Zen 3 core's L2), over chunks of ROW_CHUNK rows of x. The decomposition is fixed, never
 * derived from the thread count, so results do not depend on it. */
#define TILE_O 64
#define TILE_K 512
#define ROW_CHUNK 256
/* Columns of dx one task of the small backward owns. */
#define DX_COLS 512
/* Output channels one task of the small forward owns (a multiple of every channel blocking). */
#define GEMV_CHUNK 16

static inline float bf16_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

static inline float f16_f32(uint16_t h) { return _cvtsh_ss(h); }

void mt_lowp_row_to_f32(const mt_lowp_weight *W, int o, int i0, int cnt, float *dst) {
    const size_t row = (size_t)o * (size_t)W->in;
    int i = 0;
    switch (W->type) {
    case MT_LOWP_BF16: {
        const uint16_t *src = (const uint16_t *)W->w + row + i0;
        /* bf16 is the top half of an fp32: widen and shift */
        for (; i + 8 <= cnt; i += 8) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
        for (; i < cnt; i++) dst[i] = bf16_f32(src[i]);
        return;
    }
    case MT_LOWP_F16: {
        const uint16_t *src = (const uint16_t *)W->w + row + i0;
        for (; i + 8 <= cnt; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
        for (; i < cnt; i++) dst[i] = f16_f32(src[i]);
        return;
    }
    case MT_LOWP_Q8: {
        const int8_t *src = (const int8_t *)W->w + row;
        const int g = W->group, ng = (W->in + g - 1) / g;
        const float *sc = W->scales + (size_t)o * (size_t)ng;
        int c = i0;
        const int end = i0 + cnt;
        while (c < end) {
            /* one group (or the part of it inside the range) at a time: one scale */
            const int gi = c / g, gend = (gi + 1) * g < end ? (gi + 1) * g : end;
            const __m256 s = _mm256_set1_ps(sc[gi]);
            float *d = dst + (c - i0);
            int j = c;
            for (; j + 8 <= gend; j += 8, d += 8) {
                __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(src + j)));
                _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_cvtepi32_ps(q), s));
            }
            for (; j < gend; j++, d++) *d = (float)src[j] * sc[gi];
            c = gend;
        }
        return;
    }
    }
    MT_ASSERT(0 && "unknown low-precision weight type");
}

/* The tiles' sgemm calls run one per OpenMP thread, so OpenBLAS must not fan each out to its
 * own pool (the pthread build would oversubscribe the cores and serialise the callers).
 * mt_cpu_matmul sets the backend's count back before its next call. */
static void single_threaded_blas(void) {
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

static void check_weight(const mt_lowp_weight *W) {
    MT_ASSERT(W && W->w && W->out > 0 && W->in > 0);
    MT_ASSERT(W->type != MT_LOWP_Q8 || (W->scales && W->group > 0));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- the few-rows kernel: straight from the stored weights ---- */

/* The kernel also reads plain fp32 rows (mt_cpu_f32_gemv): a type of its own, outside the
 * public enum, so that every switch over stored types stays exhaustive. */
enum { GEMV_F32 = MT_LOWP_Q8 + 1 };

/* 8 weights of a row from element i, widened to fp32 (for Q8 still unscaled: q as a float). */
static inline __attribute__((always_inline)) __m256 widen8(int type, const void *row, int i) {
    switch (type) {
    case GEMV_F32:
        return _mm256_loadu_ps((const float *)row + i);
    case MT_LOWP_BF16: { /* bf16 is the top half of an fp32: widen and shift */
        const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case MT_LOWP_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
    case MT_LOWP_Q8:
        break;
    }
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)row + i))));
}

static inline float widen1(int type, const void *row, int i) {
    switch (type) {
    case GEMV_F32:
        return ((const float *)row)[i];
    case MT_LOWP_BF16:
        return bf16_f32(((const uint16_t *)row)[i]);
    case MT_LOWP_F16:
        return f16_f32(((const uint16_t *)row)[i]);
    case MT_LOWP_Q8:
        break;
    }
    return (float)((const int8_t *)row)[i];
}

/* y[t·ldy + o0 + c] = ⟨x_t, w_{o0+c}⟩ for R rows and C channels (compile-time constants once
 * inlined, so the R·C accumulators live in registers). Each weight vector is widened once and
 * feeds the R rows' FMAs. Every element has one 8-lane accumulator over the row's 8-wide
 * vectors in order, then a fixed horizontal sum and a scalar tail: its bits do not depend on R,
 * C or which elements are computed beside it. A Q8 group's weights are scaled in the register
 * (q·s, the exact fp32 value mt_lowp_row_to_f32 makes) by one multiply shared by the R rows:
 * accumulating each group's dot unscaled and adding s·dot per group would double the
 * accumulators (spilling at 8 rows) and cost R FMAs per group instead of one multiply per vector. */
static inline __attribute__((always_inline)) void gemv_block(const mt_lowp_weight *W, int type, int R,
                                                             int C, int o0, const float *x, int ldx, float *y,
                                                             int ldy) {
    const int in = W->in, in8 = in & ~7;
    const size_t esz = type == MT_LOWP_Q8 ? 1 : type == GEMV_F32 ? 4 : 2;
    const char *rows[4];
    for (int c = 0; c < C; c++) rows[c] = (const char *)W->w + (size_t)(o0 + c) * (size_t)in * esz;
    const int g = type == MT_LOWP_Q8 ? W->group : (in8 > 0 ? in8 : 8), ng = (in + g - 1) / g;
    const float *sc = type == MT_LOWP_Q8 ? W->scales + (size_t)o0 * (size_t)ng : NULL;
    /* The C rows are one contiguous block of memory, read as C streams at once: with several
     * streams inside a page the hardware prefetcher falls behind (without the prefetch, bf16
     * decode of the small preset, which does not fit in the caches, ran at two thirds of the
     * old convert-then-dot loop's speed), so each vector step prefetches the block two blocks
     * ahead, 8·C elements' bytes further each step: by the block's end all of it. */
    const size_t blk = (size_t)C * (size_t)in * esz;
    const char *pf = o0 + 3 * C <= W->out ? rows[0] + 2 * blk : rows[0];
    __m256 acc[8][4];
    for (int t = 0; t < R; t++)
        for (int c = 0; c < C; c++) acc[t][c] = _mm256_setzero_ps();
    for (int i0 = 0; i0 < in8; i0 += g) {
        const int end = i0 + g < in8 ? i0 + g : in8;
        __m256 s[4];
        if (type == MT_LOWP_Q8)
            for (int c = 0; c < C; c++) s[c] = _mm256_broadcast_ss(sc + (size_t)c * ng + i0 / g);
        for (int i = i0; i < end; i += 8) {
            for (size_t b = 0; b < 8 * (size_t)C * esz; b += 64) /* fp32: two lines a step */
                _mm_prefetch(pf + (size_t)i * C * esz + b, _MM_HINT_T0);
            __m256 w[4];
            for (int c = 0; c < C; c++) {
                w[c] = widen8(type, rows[c], i);
                if (type == MT_LOWP_Q8) w[c] = _mm256_mul_ps(w[c], s[c]);
            }
            for (int t = 0; t < R; t++) {
                const __m256 u = _mm256_loadu_ps(x + (size_t)t * ldx + i);
                for (int c = 0; c < C; c++) acc[t][c] = _mm256_fmadd_ps(u, w[c], acc[t][c]);
            }
        }
    }
    for (int c = 0; c < C; c++) {
        /* the tail lies in the row's last group (groups are multiples of 8) */
        const float st = type == MT_LOWP_Q8 ? sc[(size_t)c * ng + ng - 1] : 1.0f;
        for (int t = 0; t < R; t++) {
            const float *xt = x + (size_t)t * ldx;
            float r = hsum8(acc[t][c]);
            for (int i = in8; i < in; i++) {
                const float wv = widen1(type, rows[c], i);
                r += xt[i] * (type == MT_LOWP_Q8 ? wv * st : wv);
            }
            y[(size_t)t * ldy + o0 + c] = r;
        }
    }
}

/* Channels o0 .. o0+no−1 of one type for R rows: C channels a pass (C·R ≤ 8 accumulators, so
 * there are enough independent FMA chains to cover the latency at one row), the rest one by one. */
static inline __attribute__((always_inline)) void gemv_rows(const mt_lowp_weight *W, int type, int R,
                                                            int o0, int no, const float *x, int ldx, float *y,
                                                            int ldy) {
    const int C = R <= 2 ? 4 : R <= 4 ? 2 : 1;
    int o = o0;
    for (; o + C <= o0 + no; o += C) gemv_block(W, type, R, C, o, x, ldx, y, ldy);
    for (; o < o0 + no; o++) gemv_block(W, type, R, 1, o, x, ldx, y, ldy);
}

#define GEMV_TYPE(type)                                                                                              \
    static void gemv_##type(const mt_lowp_weight *W, int R, int o0, int no, const float *x, int ldx, float *y,     \
                            int ldy) {                                                                               \
        switch (R) {                                                                                                 \
        case 1: gemv_rows(W, type, 1, o0, no, x, ldx, y, ldy); return;                                               \
        case 2: gemv_rows(W, type, 2, o0, no, x, ldx, y, ldy); return;                                               \
        case 3: gemv_rows(W, type, 3, o0, no, x, ldx, y, ldy); return;                                               \
        case 4: gemv_rows(W, type, 4, o0, no, x, ldx, y, ldy); return;                                               \
        case 5: gemv_rows(W, type, 5, o0, no, x, ldx, y, ldy); return;                                               \
        case 6: gemv_rows(W, type, 6, o0, no, x, ldx, y, ldy); return;                                               \
        case 7: gemv_rows(W, type, 7, o0, no, x, ldx, y, ldy); return;                                               \
        case 8: gemv_rows(W, type, 8, o0, no, x, ldx, y, ldy); return;                                               \
        }                                                                                                            \
        MT_ASSERT(0 && "the few-rows kernel takes 1 to 8 rows");                                                     \
    }
GEMV_TYPE(MT_LOWP_BF16)
GEMV_TYPE(MT_LOWP_F16)
GEMV_TYPE(MT_LOWP_Q8)
GEMV_TYPE(GEMV_F32)
#undef GEMV_TYPE

void mt_cpu_lowp_gemv(const mt_lowp_weight *W, int o0, int no, int n, const float *x, int ldx, float *y, int ldy) {
    MT_ASSERT(n >= 1 && n <= MT_CPU_LOWP_GEMV_ROWS && o0 >= 0 && no >= 0 && o0 + no <= W->out);
    MT_ASSERT(W->type != MT_LOWP_Q8 || W->group % 8 == 0);
    switch (W->type) {
    case MT_LOWP_BF16: gemv_MT_LOWP_BF16(W, n, o0, no, x, ldx, y, ldy); return;
    case MT_LOWP_F16: gemv_MT_LOWP_F16(W, n, o0, no, x, ldx, y, ldy); return;
    case MT_LOWP_Q8: gemv_MT_LOWP_Q8(W, n, o0, no, x, ldx, y, ldy); return;
    }
    MT_ASSERT(0 && "unknown low-precision weight type");
}

void mt_cpu_f32_gemv(const float *w, int out, int in, int o0, int no, int n, const float *x, int ldx, float *y,
                     int ldy) {
    MT_ASSERT(n >= 1 && n <= MT_CPU_LOWP_GEMV_ROWS && o0 >= 0 && no >= 0 && o0 + no <= out);
    const mt_lowp_weight W = {.type = (mt_lowp_type)GEMV_F32, .out = out, .in = in, .w = w};
    gemv_GEMV_F32(&W, n, o0, no, x, ldx, y, ldy);
}

/* Few rows: tasks of GEMV_CHUNK output channels through the kernel above, W read once. */
static void forward_small(mt_backend *be, const mt_lowp_weight *W, int n, const float *x, int ldx, float *y, int ldy) {
    const int out = W->out, nt = mt_cpu_nthreads(be), tasks = (out + GEMV_CHUNK - 1) / GEMV_CHUNK;
    const size_t work = (size_t)out * (size_t)W->in;
#pragma omp parallel for num_threads(nt) if (work >= MT_CPU_PAR_MIN && tasks > 1) schedule(static)
    for (int task = 0; task < tasks; task++) {
        const int o0 = task * GEMV_CHUNK;
        mt_cpu_lowp_gemv(W, o0, out - o0 < GEMV_CHUNK ? out - o0 : GEMV_CHUNK, n, x, ldx, y, ldy);
    }
}

/* Many rows: tasks of (row chunk, TILE_O rows of W); each converts its W tile TILE_K columns
 * at a time and accumulates sgemm products into y. */
static void forward_tiled(mt_backend *be, const mt_lowp_weight *W, int n, const float *x, int ldx, float *y, int ldy) {
    const int in = W->in, out = W->out, nt = mt_cpu_nthreads(be);
    float *scratch = mt_cpu_scratch(be, (size_t)TILE_O * TILE_K);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    const int n_ot = (out + TILE_O - 1) / TILE_O, n_rc = (n + ROW_CHUNK - 1) / ROW_CHUNK;
    const int tasks = n_ot * n_rc;
    single_threaded_blas();
#pragma omp parallel for num_threads(nt) if (tasks > 1) schedule(dynamic, 1)
    for (int task = 0; task < tasks; task++) {
        const int o0 = (task % n_ot) * TILE_O, r0 = (task / n_ot) * ROW_CHUNK;
        const int no = out - o0 < TILE_O ? out - o0 : TILE_O, nr = n - r0 < ROW_CHUNK ? n - r0 : ROW_CHUNK;
        float *tile = scratch + (size_t)omp_get_thread_num() * stride; /* [no, kk] */
        for (int k0 = 0; k0 < in; k0 += TILE_K) {
            const int kk = in - k0 < TILE_K ? in - k0 : TILE_K;
            for (int o = 0; o < no; o++) mt_lowp_row_to_f32(W, o0 + o, k0, kk, tile + (size_t)o * kk);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, no, kk, 1.0f, x + (size_t)r0 * ldx + k0, ldx,
                        tile, kk, k0 ? 1.0f : 0.0f, y + (size_t)r0 * ldy + o0, ldy);
        }
    }
}

void mt_cpu_lowp_matmul(mt_backend *be, const mt_lowp_weight *W, int n, const float *x, int ldx, float *y, int ldy) {
    check_weight(W);
    MT_ASSERT(n >= 0 && ldx >= W->in && ldy >= W->out);
    if (n == 0) return;
    if (n <= LOWP_SMALL_N)
        forward_small(be, W, n, x, ldx, y, ldy);
    else
        forward_tiled(be, W, n, x, ldx, y, ldy);
}

/* Few rows: tasks own DX_COLS columns of dx; for every row of W the task converts its columns
 * (into L1) and adds dy[t, o]·W[o, cols] to each row t. */
static void backward_small(mt_backend *be, const mt_lowp_weight *W, int n, const float *dy, int lddy, float *dx,
                           int lddx) {
    const int in = W->in, out = W->out, nt = mt_cpu_nthreads(be);
    float *scratch = mt_cpu_scratch(be, DX_COLS);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    const int tasks = (in + DX_COLS - 1) / DX_COLS;
    const size_t work = (size_t)out * (size_t)in;
#pragma omp parallel for num_threads(nt) if (work >= MT_CPU_PAR_MIN && tasks > 1) schedule(static)
    for (int task = 0; task < tasks; task++) {
        const int c0 = task * DX_COLS, cc = in - c0 < DX_COLS ? in - c0 : DX_COLS;
        float *wseg = scratch + (size_t)omp_get_thread_num() * stride;
        for (int o = 0; o < out; o++) {
            mt_lowp_row_to_f32(W, o, c0, cc, wseg);
            for (int t = 0; t < n; t++) {
                const float a = dy[(size_t)t * lddy + o];
                float *d = dx + (size_t)t * lddx + c0;
                for (int i = 0; i < cc; i++) d[i] += a * wseg[i];
            }
        }
    }
}

/* Many rows: tasks of (row chunk, TILE_K columns of dx); each converts W [TILE_O rows, its
 * columns] tiles and accumulates dy[:, o-tile]·tile into dx. */
static void backward_tiled(mt_backend *be, const mt_lowp_weight *W, int n, const float *dy, int lddy, float *dx,
                           int lddx) {
    const int in = W->in, out = W->out, nt = mt_cpu_nthreads(be);
    float *scratch = mt_cpu_scratch(be, (size_t)TILE_O * TILE_K);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    const int n_ct = (in + TILE_K - 1) / TILE_K, n_rc = (n + ROW_CHUNK - 1) / ROW_CHUNK;
    const int tasks = n_ct * n_rc;
    single_threaded_blas();
#pragma omp parallel for num_threads(nt) if (tasks > 1) schedule(dynamic, 1)
    for (int task = 0; task < tasks; task++) {
        const int c0 = (task % n_ct) * TILE_K, r0 = (task / n_ct) * ROW_CHUNK;
        const int cc = in - c0 < TILE_K ? in - c0 : TILE_K, nr = n - r0 < ROW_CHUNK ? n - r0 : ROW_CHUNK;
        float *tile = scratch + (size_t)omp_get_thread_num() * stride; /* [oo, cc] */
        for (int o0 = 0; o0 < out; o0 += TILE_O) {
            const int oo = out - o0 < TILE_O ? out - o0 : TILE_O;
            for (int o = 0; o < oo; o++) mt_lowp_row_to_f32(W, o0 + o, c0, cc, tile + (size_t)o * cc);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, cc, oo, 1.0f, dy + (size_t)r0 * lddy + o0, lddy,
                        tile, cc, 1.0f, dx + (size_t)r0 * lddx + c0, lddx);
        }
    }
}

void mt_cpu_lowp_matmul_dx(mt_backend *be, const mt_lowp_weight *W, int n, const float *dy, int lddy, float *dx,
                           int lddx) {
    check_weight(W);
    MT_ASSERT(n >= 0 && lddy >= W->out && lddx >= W->in);
    if (n == 0) return;
    if (n <= LOWP_SMALL_N)
        backward_small(be, W, n, dy, lddy, dx, lddx);
    else
        backward_tiled(be, W, n, dy, lddy, dx, lddx);
}
