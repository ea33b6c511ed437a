/* linear.c — every projection of the decoder goes through here: one GEMM over all rows of a
 * pass (fp32, or the low-precision kernel for a frozen bf16/f16/int8 weight), the bias, then
 * each run of rows' adapter delta (rows that share an adapter slot are one run, so a batch of
 * many adapters costs one base GEMM plus small low-rank GEMMs), forward and backward, with
 * inverted dropout on the delta's input during training. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "model-impl.h"

/* Rows of dropout(x) staged at a time for the delta's GEMMs: at least DROP_ROWS (so the dA
 * update, K = rows, is not a thin GEMM), and as many as fit in DROP_FLOATS, so that a training
 * pass's run is usually one GEMM per product rather than one per chunk (every GEMM call wakes
 * and joins the BLAS threads). */
#define DROP_ROWS 128
#define DROP_FLOATS ((size_t)1 << 21)

/* Rows up to which a fp32 linear's forward skips sgemm (its packing) for the unpacked kernel. */
#define FEW_ROWS 8

static int drop_rows(int rows, int in) {
    size_t fit = DROP_FLOATS / (size_t)(in > 0 ? in : 1);
    int k = fit < (size_t)DROP_ROWS ? DROP_ROWS : (int)(fit > (size_t)rows ? (size_t)rows : fit);
    return k < DROP_ROWS ? DROP_ROWS : k;
}

int mt_loop_threads(const mt_backend *be, size_t work) {
    int t = mt_backend_threads(be);
    return work < ((size_t)1 << 16) || t < 1 ? 1 : t;
}

static int max_linear_in(const mt_model *m) {
    int w = 0;
    for (int i = 0; i < m->n_linears; i++)
        if (m->linears[i].in > w) w = m->linears[i].in;
    return w;
}

size_t mt_adapter_scratch_floats(const mt_model *m, int rows, int max_rank) {
    int in = max_linear_in(m);
    return (size_t)rows * (size_t)max_rank * 2 + (size_t)drop_rows(rows, in) * (size_t)in;
}

mt_status mt_adapter_check(const mt_model *m, const mt_adapter *a, int max_rank, const char *what, mt_error *err) {
    if (!a) return MT_OK;
    if (a->n_linears != m->n_linears || !a->lin)
        return mt_error_set(err, MT_ERR_INVALID, "%s: the adapter was made for a model with %d linear layers, not %d",
                            what, a->n_linears, m->n_linears);
    if (a->max_rank > max_rank)
        return mt_error_set(err, MT_ERR_INVALID,
                            "%s: the adapter's rank %d is above the %d this pass was sized for (raise max_rank)", what,
                            a->max_rank, max_rank);
    if (!(a->dropout >= 0.0f && a->dropout < 1.0f))
        return mt_error_set(err, MT_ERR_INVALID, "%s: adapter dropout %g is outside [0, 1)", what, (double)a->dropout);
    return MT_OK;
}

const mt_lowrank *mt_lin_delta(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, int slot) {
    if (!c->adapters || slot < 0 || slot >= c->n_slots) return NULL;
    const mt_adapter *a = c->adapters[slot];
    return a ? a->lin[mt_linear_index(m, L)] : NULL;
}

struct mt_lowrank_tape {
    size_t cap_h, cap_bits; /* floats of h, words of bits allocated */
    float *h;               /* [n, r] */
    uint64_t *bits;         /* [n, words]: bit c of row t = element c kept */
    /* the forward that filled it */
    bool valid;
    uint64_t key, row0;
    int n, r, in;
    float p;
    const float *x;
};

mt_lowrank_tape *mt_lowrank_tape_new(void) { return calloc(1, sizeof(mt_lowrank_tape)); }

void mt_lowrank_tape_free(mt_lowrank_tape *t) {
    if (!t) return;
    free(t->h);
    free(t->bits);
    free(t);
}

static int mask_words(int in) { return (in + 63) / 64; }

/* Inverted dropout as torch.nn.Dropout: keep with probability 1−p and scale by 1/(1−p). The
 * mask of (row, column) comes from a hash of the call's key and that element's counter, so a
 * backward without a tape regenerates the forward's mask without storing it. One 64-bit hash
 * serves four consecutive counters (16 bits each: p is resolved to 1/65536, u = v/65536 ≥ p
 * exactly when v ≥ ⌈65536·p⌉): hashing every element cost 10% of a LoRA step with dropout on
 * the tiny base (perf, bench train).
 * dst[i] (+)= src[i] · keep(base + i) · inv for i < n; with bits, also bit i = keep(base + i). */
static void apply_mask(uint64_t key, uint64_t base, int n, uint32_t thr, float inv, const float *src, float *dst,
                       bool accumulate, uint64_t *bits) {
    if (bits) memset(bits, 0, (size_t)mask_words(n) * sizeof(uint64_t));
    int i = 0;
#ifdef __AVX2__
    /* eight elements (two hashes) at a time once the counter is at a hash boundary: the 16-bit
     * draws compared unsigned against thr, the select done as an AND (the same values as the
     * scalar loop below, element for element) */
    if (((base + (uint64_t)i) & 3) == 0) {
        const __m128i vthr = _mm_set1_epi16((short)(uint16_t)(thr > 0xffff ? 0xffff : thr));
        const bool all_drop = thr > 0xffff;
        const __m256 vinv = _mm256_set1_ps(inv);
        for (; i + 8 <= n; i += 8) {
            uint64_t ctr = (base + (uint64_t)i) >> 2;
            __m128i v = _mm_set_epi64x((long long)mt_hash_u64(key, ctr + 1), (long long)mt_hash_u64(key, ctr));
            __m128i keep16 = all_drop ? _mm_setzero_si128() : _mm_cmpeq_epi16(_mm_max_epu16(v, vthr), v);
            __m256 keep = _mm256_castsi256_ps(_mm256_cvtepi16_epi32(keep16));
            __m256 val = _mm256_and_ps(keep, _mm256_mul_ps(_mm256_loadu_ps(src + i), vinv));
            if (accumulate) val = _mm256_add_ps(_mm256_loadu_ps(dst + i), val);
            _mm256_storeu_ps(dst + i, val);
            if (bits) {
                uint64_t m8 = (uint64_t)(unsigned)_mm_movemask_epi8(_mm_packs_epi16(keep16, _mm_setzero_si128())) & 0xff;
                bits[i >> 6] |= m8 << (i & 63);
            }
        }
    }
#endif
    while (i < n) {
        uint64_t ctr = base + (uint64_t)i;
        uint64_t h = mt_hash_u64(key, ctr >> 2);
        for (int lane = (int)(ctr & 3); lane < 4 && i < n; lane++, i++) {
            bool keep = ((h >> (16 * lane)) & 0xffff) >= thr;
            float v = keep ? src[i] * inv : 0.0f;
            dst[i] = accumulate ? dst[i] + v : v;
            if (bits) bits[i >> 6] |= (uint64_t)keep << (i & 63);
        }
    }
}

/* dst[i] (+)= src[i] · bit i · inv: the stored mask, no hashing */
static void apply_bits(const uint64_t *bits, int n, float inv, const float *src, float *dst, bool accumulate) {
    int i = 0;
#ifdef __AVX2__
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 vinv = _mm256_set1_ps(inv);
    for (; i + 8 <= n; i += 8) {
        int byte = (int)((bits[i >> 6] >> (i & 63)) & 0xff);
        __m256i b = _mm256_and_si256(_mm256_set1_epi32(byte), lane_bit);
        __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, lane_bit));
        __m256 val = _mm256_and_ps(keep, _mm256_mul_ps(_mm256_loadu_ps(src + i), vinv));
        if (accumulate) val = _mm256_add_ps(_mm256_loadu_ps(dst + i), val);
        _mm256_storeu_ps(dst + i, val);
    }
#endif
    for (; i < n; i++) {
        float v = (bits[i >> 6] >> (i & 63)) & 1 ? src[i] * inv : 0.0f;
        dst[i] = accumulate ? dst[i] + v : v;
    }
}

/* One run of rows with one delta: what the forward and backward of that run share. */
typedef struct run {
    const mt_lowrank *d;
    float p;           /* dropout probability, 0 = off */
    uint32_t thr;      /* keep an element when its 16 hash bits are ≥ thr */
    float inv;         /* 1/(1−p) */
    uint64_t key;      /* dropout stream of (step, linear) */
    uint64_t row0;     /* the run's first row in the call's row space */
    int in, out, n;
    float *h, *dh;     /* [n, r] each, in scratch */
    float *drop;       /* [chunk, in] in scratch */
    int chunk;         /* rows of dropout(x) staged at a time */
    mt_lowrank_tape *tape; /* kept from the forward, or NULL */
    int nt;            /* threads for the row loops */
} run;

/* buf [rows, in] = dropout(x) for rows t0 .. t0+rows−1 of the run (from the tape's bits when
 * it has them; writing them when `record`) */
static void stage_dropout(const run *r, const float *x, int t0, int rows, float *buf, bool record) {
    int words = mask_words(r->in);
    const mt_lowrank_tape *tp = r->tape;
#pragma omp parallel for schedule(static) num_threads(r->nt)
    for (int t = 0; t < rows; t++) {
        const float *src = x + (size_t)(t0 + t) * r->in;
        float *dst = buf + (size_t)t * r->in;
        uint64_t *bits = tp ? tp->bits + (size_t)(t0 + t) * words : NULL;
        if (bits && !record) {
            apply_bits(bits, r->in, r->inv, src, dst, false);
        } else {
            uint64_t base = (r->row0 + (uint64_t)(t0 + t)) * (uint64_t)r->in;
            apply_mask(r->key, base, r->in, r->thr, r->inv, src, dst, false, record ? bits : NULL);
        }
    }
}

/* dx rows t0 .. += mask ⊙ buf · inv */
static void unstage_dropout(const run *r, const float *buf, int t0, int rows, float *dx) {
    int words = mask_words(r->in);
    const mt_lowrank_tape *tp = r->tape;
#pragma omp parallel for schedule(static) num_threads(r->nt)
    for (int t = 0; t < rows; t++) {
        const float *src = buf + (size_t)t * r->in;
        float *dst = dx + (size_t)(t0 + t) * r->in;
        if (tp) {
            apply_bits(tp->bits + (size_t)(t0 + t) * words, r->in, r->inv, src, dst, true);
        } else {
            uint64_t base = (r->row0 + (uint64_t)(t0 + t)) * (uint64_t)r->in;
            apply_mask(r->key, base, r->in, r->thr, r->inv, src, dst, true, NULL);
        }
    }
}

/* h [n, r] = dropout(x)·Aᵀ (recording the mask in the tape when `record`) */
static void project(mt_backend *be, const run *r, const float *x, float *h, bool record) {
    int in = r->in, rk = r->d->r;
    if (r->p <= 0.0f) {
        mt_matmul(be, false, true, r->n, rk, in, 1.0f, x, in, r->d->A, in, 0.0f, h, rk);
        return;
    }
    for (int t0 = 0; t0 < r->n; t0 += r->chunk) {
        int rows = r->n - t0 < r->chunk ? r->n - t0 : r->chunk;
        stage_dropout(r, x, t0, rows, r->drop, record);
        mt_matmul(be, false, true, rows, rk, in, 1.0f, r->drop, in, r->d->A, in, 0.0f, h + (size_t)t0 * rk, rk);
    }
}

/* Makes the tape hold a run of r's size; false (tape unused) when memory runs out. */
static bool tape_reserve(mt_lowrank_tape *t, const run *r) {
    size_t nh = (size_t)r->n * (size_t)r->d->r;
    size_t nb = r->p > 0.0f ? (size_t)r->n * (size_t)mask_words(r->in) : 0;
    t->valid = false;
    if (nh > t->cap_h) {
        float *h = realloc(t->h, nh * sizeof(float));
        if (!h) return false;
        t->h = h;
        t->cap_h = nh;
    }
    if (nb > t->cap_bits) {
        uint64_t *b = realloc(t->bits, nb * sizeof(uint64_t));
        if (!b) return false;
        t->bits = b;
        t->cap_bits = nb;
    }
    return true;
}

/* the tape was filled by this run's forward */
static bool tape_matches(const mt_lowrank_tape *t, const run *r, const float *x) {
    return t && t->valid && t->x == x && t->key == r->key && t->row0 == r->row0 && t->n == r->n &&
           t->r == r->d->r && t->in == r->in && t->p == r->p;
}

static void run_forward(mt_backend *be, run *r, const float *x, float *y) {
    mt_lowrank_tape *t = r->tape;
    if (t && tape_reserve(t, r)) {
        /* the same arithmetic as without a tape, so a training forward equals an evaluation one */
        if (r->p <= 0.0f) {
            mt_lowrank_forward(be, r->n, r->in, r->out, r->d->r, r->d->scale, x, r->in, r->d->A, false, r->d->B, false,
                               t->h, y, r->out);
        } else {
            project(be, r, x, t->h, true);
            mt_matmul(be, false, true, r->n, r->out, r->d->r, r->d->scale, t->h, r->d->r, r->d->B, r->d->r, 1.0f, y,
                      r->out);
        }
        *t = (mt_lowrank_tape){.cap_h = t->cap_h, .cap_bits = t->cap_bits, .h = t->h, .bits = t->bits,
                               .valid = true, .key = r->key, .row0 = r->row0, .n = r->n, .r = r->d->r,
                               .in = r->in, .p = r->p, .x = x};
        return;
    }
    r->tape = NULL;
    if (r->p <= 0.0f) {
        mt_lowrank_forward(be, r->n, r->in, r->out, r->d->r, r->d->scale, x, r->in, r->d->A, false, r->d->B, false, r->h,
                           y, r->out);
        return;
    }
    project(be, r, x, r->h, false);
    mt_matmul(be, false, true, r->n, r->out, r->d->r, r->d->scale, r->h, r->d->r, r->d->B, r->d->r, 1.0f, y, r->out);
}

/* With u = dropout(x), h = u·Aᵀ, y += s·h·Bᵀ:
 *   dB += s·dyᵀ·h,  dh = s·dy·B,  dA += dhᵀ·u,  dx += mask ⊙ (dh·A)/(1−p).
 * h and the mask come from the tape when the forward kept them. A frozen delta (dA, dB NULL)
 * still sends its gradient to x. */
static void run_backward(mt_backend *be, run *r, const float *x, const float *dy, float *dx) {
    const mt_lowrank *d = r->d;
    int in = r->in, out = r->out, rk = d->r, n = r->n;
    float s = d->scale;
    if (!tape_matches(r->tape, r, x)) r->tape = NULL;
    if (d->dB) {
        const float *h = r->tape ? r->tape->h : r->h;
        if (!r->tape) project(be, r, x, r->h, false);
        mt_matmul(be, true, false, out, rk, n, s, dy, out, h, rk, 1.0f, d->dB, rk);
    }
    if (!d->dA && !dx) return;
    mt_matmul(be, false, false, n, rk, out, s, dy, out, d->B, rk, 0.0f, r->dh, rk);
    if (r->p <= 0.0f) {
        if (d->dA) mt_matmul(be, true, false, rk, in, n, 1.0f, r->dh, rk, x, in, 1.0f, d->dA, in);
        if (dx) mt_matmul(be, false, false, n, in, rk, 1.0f, r->dh, rk, d->A, in, 1.0f, dx, in);
        return;
    }
    for (int t0 = 0; t0 < n; t0 += r->chunk) {
        int rows = n - t0 < r->chunk ? n - t0 : r->chunk;
        const float *dhc = r->dh + (size_t)t0 * rk;
        if (d->dA) {
            stage_dropout(r, x, t0, rows, r->drop, false);
            mt_matmul(be, true, false, rk, in, rows, 1.0f, dhc, rk, r->drop, in, 1.0f, d->dA, in);
        }
        if (!dx) continue;
        mt_matmul(be, false, false, rows, in, rk, 1.0f, dhc, rk, d->A, in, 0.0f, r->drop, in);
        unstage_dropout(r, r->drop, t0, rows, dx);
    }
}

/* Walks the runs of equal slot among rows row0 .. row0+n−1 of the call and hands each run
 * that has a delta on L to fn (forward) or bn (backward). */
static void for_each_run(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, int n,
                         uint64_t row0, float *y, const float *dy, float *dx) {
    if (!c->adapters) return;
    int idx = mt_linear_index(m, L);
    for (int i = 0; i < n;) {
        int slot = c->row_slot ? c->row_slot[row0 + (uint64_t)i] : 0;
        int j = i + 1;
        while (j < n && (c->row_slot ? c->row_slot[row0 + (uint64_t)j] : 0) == slot) j++;
        const mt_adapter *a = slot >= 0 && slot < c->n_slots ? c->adapters[slot] : NULL;
        const mt_lowrank *d = a ? a->lin[idx] : NULL;
        if (d) {
            int rows = j - i;
            size_t used = (size_t)rows * (size_t)d->r * 2;
            MT_ASSERT(used + (size_t)DROP_ROWS * (size_t)L->in <= c->scratch_cap);
            size_t fit = (c->scratch_cap - used) / (size_t)L->in;
            int chunk = fit > (size_t)rows ? rows : (int)fit;
            float p = c->train ? a->dropout : 0.0f;
            run r = {.d = d,
                     .p = p,
                     .thr = (uint32_t)ceilf(p * 65536.0f),
                     .inv = 1.0f / (1.0f - p),
                     .tape = c->train && (d->dA || d->dB) ? d->tape : NULL,
                     .nt = mt_loop_threads(c->be, (size_t)rows * (size_t)L->in),
                     /* one dropout stream per (step, linear), so masks regenerate in backward */
                     .key = mt_hash_u64(c->seed, (uint64_t)idx),
                     .row0 = row0 + (uint64_t)i,
                     .in = L->in,
                     .out = L->out,
                     .n = rows,
                     .h = c->scratch,
                     .dh = c->scratch + (size_t)rows * d->r,
                     .drop = c->scratch + (size_t)rows * d->r * 2,
                     .chunk = chunk};
            const float *xr = x + (size_t)i * L->in;
            if (y && m->prof) {
                double t0 = mt_now_seconds();
                run_forward(c->be, &r, xr, y + (size_t)i * L->out);
                mt_prof_lora_(m->prof, d, L->in, L->out, rows, mt_now_seconds() - t0);
            } else if (y)
                run_forward(c->be, &r, xr, y + (size_t)i * L->out);
            else
                run_backward(c->be, &r, xr, dy + (size_t)i * L->out, dx ? dx + (size_t)i * L->in : NULL);
        }
        i = j;
    }
}

void mt_lin_delta_forward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, int n,
                          uint64_t row0, float *y) {
    if (n > 0) for_each_run(m, L, c, x, n, row0, y, NULL, NULL);
}

void mt_lin_delta_backward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, const float *dy,
                           int n, uint64_t row0, float *dx) {
    if (n > 0) for_each_run(m, L, c, x, n, row0, NULL, dy, dx);
}

void mt_lin_forward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, int n, uint64_t row0,
                    float *y) {
    if (n <= 0) return;
    if (m->prof) mt_prof_linear_(m->prof, L, n);
    if (L->weight->dtype != MT_DTYPE_F32) {
        /* a frozen bf16/f16/int8 base: tiles converted to fp32 inside the kernel */
        mt_lowp_weight w;
        mt_param_lowp(L->weight, &w);
        mt_lowp_matmul(c->be, &w, n, x, L->in, y, L->out);
    } else if (n <= FEW_ROWS && mt_backend_supports(c->be, MT_OP_GROUPED_MATMUL)) {
        /* a decode step's few rows: sgemm would pack the whole weight for each call (most of a
         * single-stream step's time); the grouped op's few-rows kernel streams it once, unpacked */
        const float *w = L->weight->data;
        int32_t off[2] = {0, n};
        mt_grouped_proj p = {.out = L->out, .f32 = &w, .y = y};
        mt_grouped_matmul(c->be, 1, off, L->in, x, 1, &p);
    } else {
        mt_matmul(c->be, false, true, n, L->out, L->in, 1.0f, x, L->in, L->weight->data, L->in, 0.0f, y, L->out);
    }
    if (L->bias) mt_add_bias(c->be, y, L->bias->data, n, L->out);
    for_each_run(m, L, c, x, n, row0, y, NULL, NULL);
}

void mt_lin_backward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, const float *dy,
                     int n, uint64_t row0, float *dx) {
    if (n <= 0) return;
    if (dx && L->weight->dtype != MT_DTYPE_F32) {
        mt_lowp_weight w;
        mt_param_lowp(L->weight, &w);
        mt_lowp_matmul_dx(c->be, &w, n, dy, L->out, dx, L->in);
    } else if (dx) {
        mt_matmul(c->be, false, false, n, L->in, L->out, 1.0f, dy, L->out, L->weight->data, L->in, 1.0f, dx, L->in);
    }
    /* frozen weights (no gradient buffer) skip their weight-gradient GEMM; a low-precision
     * weight never has one (require_grad makes it an fp32 master first) */
    if (L->weight->grad)
        mt_matmul(c->be, true, false, L->out, L->in, n, 1.0f, dy, L->out, x, L->in, 1.0f, L->weight->grad, L->in);
    if (L->bias && L->bias->grad) mt_add_bias_backward(c->be, dy, n, L->out, L->bias->grad);
    for_each_run(m, L, c, x, n, row0, NULL, dy, dx);
}

/* The ops a forward/backward pass needs, and host-visible memory for the few steps done in
 * model code (router statistics, the aux loss, router jitter, block tables). */
mt_status mt_model_check_backend(const mt_model *m, mt_error *err) {
    static const mt_op needed[] = {MT_OP_MATMUL,       MT_OP_ADD,          MT_OP_SCALE,   MT_OP_EMBEDDING,
                                   MT_OP_RMSNORM,      MT_OP_ROPE,         MT_OP_ATTENTION, MT_OP_SWIGLU,
                                   MT_OP_SIGMOID_GATE, MT_OP_ROUTE,        MT_OP_MOE_PERMUTE, MT_OP_CROSS_ENTROPY,
                                   MT_OP_ADD_BIAS,     MT_OP_COPY_2D,      MT_OP_PAGED_ATTENTION, MT_OP_LOWP_MATMUL};
    for (size_t i = 0; i < sizeof needed / sizeof needed[0]; i++)
        if (!mt_backend_supports(m->be, needed[i]))
            return mt_error_set(err, MT_ERR_UNSUPPORTED, "model: the %s backend does not run op %s; use the CPU backend",
                                mt_backend_name(m->be), mt_op_name(needed[i]));
    if (!mt_backend_is_host(m->be))
        return mt_error_set(err, MT_ERR_UNSUPPORTED,
                            "model: forward and decode need host-visible activations (CPU backend), not %s",
                            mt_backend_name(m->be));
    return MT_OK;
}
