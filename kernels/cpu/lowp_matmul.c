/* lowp_matmul.c — y = x·Wᵀ and dx += dy·W on the CPU for a frozen weight stored as bf16, f16 or
 * int8 + scales: W is converted to fp32 a tile at a time into per-thread scratch and the tiles
 * go to single-threaded sgemm calls (one per thread, fp32 accumulation); a few rows (decode)
 * take dot products against each converted row while it sits in L1, so W is read once. */
#include "cpu/cpu-impl.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

/* Rows of x at or below which the forward takes the dot-product path. */
#define LOWP_SMALL_N 8
/* Tiles of the sgemm path: TILE_O rows of W by TILE_K columns (128 KiB of fp32, half of a
 * Zen 3 core's L2), over chunks of ROW_CHUNK rows of x. The decomposition is fixed, never
 * derived from the thread count, so results do not depend on it. */
#define TILE_O 64
#define TILE_K 512
#define ROW_CHUNK 256
/* Columns of dx one task of the small backward owns. */
#define DX_COLS 512

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

/* Σ_i a[i]·w[i] with four 8-wide accumulators (FMA latency is four cycles on Zen 3: one
 * chain would run at a quarter of the rate), combined in a fixed order: a row's value does
 * not depend on how many rows are computed beside it. */
static inline __m256 dot_acc(const float *a, const float *w, int n, int *done) {
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        c0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(w + i), c0);
        c1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(w + i + 8), c1);
        c2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(w + i + 16), c2);
        c3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(w + i + 24), c3);
    }
    for (; i + 8 <= n; i += 8) c0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(w + i), c0);
    *done = i;
    return _mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3));
}

static inline float hsum(__m256 v, const float *a, const float *w, int i, int n) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    float r = _mm_cvtss_f32(s);
    for (; i < n; i++) r += a[i] * w[i];
    return r;
}

/* Few rows: each W row is converted once (into L1) and dotted with every row of x. */
static void forward_small(mt_backend *be, const mt_lowp_weight *W, int n, const float *x, int ldx, float *y, int ldy) {
    const int in = W->in, out = W->out, nt = mt_cpu_nthreads(be);
    float *scratch = mt_cpu_scratch(be, (size_t)in);
    const size_t stride = mt_cpu_ctx_of(be)->scratch_per_thread;
    const size_t work = (size_t)out * (size_t)in;
#pragma omp parallel for num_threads(nt) if (work >= MT_CPU_PAR_MIN) schedule(static)
    for (int o = 0; o < out; o++) {
        float *wrow = scratch + (size_t)omp_get_thread_num() * stride;
        mt_lowp_row_to_f32(W, o, 0, in, wrow);
        for (int t = 0; t < n; t++) {
            const float *xt = x + (size_t)t * ldx;
            int done;
            __m256 acc = dot_acc(xt, wrow, in, &done);
            y[(size_t)t * ldy + o] = hsum(acc, xt, wrow, done, in);
        }
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
