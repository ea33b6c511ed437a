/* test_kernels_decode.c — the decode ops against independent references: paged attention
 * (keys scattered over shuffled blocks) against the contiguous tiled attention kernel, for
 * grouped heads, MLA's shared latent head and sliding windows; the low-rank delta against a
 * double-precision loop, on its direct path and its sgemm path, with either factor
 * transposed. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

static mt_backend *g_be;

static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    return mt_backend_init(&g_be, MT_BACKEND_CPU, 2, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be);
    return 0;
}

typedef struct paged_case {
    int n_head, n_kv, dqk, dv, len, block;
    bool mla;    /* one latent head: the value is the key's first dv floats */
    int window;  /* 0 = none */
} paged_case;

static void check_paged(const paged_case *pc, uint64_t seed) {
    const int nh = pc->n_head, nkv = pc->mla ? 1 : pc->n_kv, dqk = pc->dqk, dv = pc->dv, T = pc->len;
    const int bs = pc->block, nb = (T + bs - 1) / bs;
    /* contiguous K [T, nkv·dqk], V [T, nkv·dv] (MLA: V is K's first dv columns) */
    float *k = mt_xmalloc((size_t)T * nkv * dqk * sizeof(float));
    float *v = mt_xmalloc((size_t)T * nkv * dv * sizeof(float));
    float *q = mt_xmalloc((size_t)T * nh * dqk * sizeof(float));
    mt_test_fill_uniform(k, (size_t)T * nkv * dqk, -1, 1, seed);
    mt_test_fill_uniform(v, (size_t)T * nkv * dv, -1, 1, seed + 1);
    mt_test_fill_uniform(q, (size_t)T * nh * dqk, -1, 1, seed + 2);
    if (pc->mla)
        for (int t = 0; t < T; t++) memcpy(v + (size_t)t * dv, k + (size_t)t * dqk, (size_t)dv * sizeof(float));
    /* the reference: every query of the sequence at once, causal (and windowed) */
    int32_t *ks = mt_xmalloc((size_t)T * sizeof(int32_t));
    for (int t = 0; t < T; t++) ks[t] = pc->window && t - pc->window + 1 > 0 ? t - pc->window + 1 : 0;
    mt_attn_args aa = {.B = 1, .Tq = T, .Tk = T, .n_head = nh, .n_kv_head = nkv, .dqk = dqk, .dv = dv,
                       .q_row = nh * dqk, .q_head = dqk, .k_row = nkv * dqk, .k_head = dqk, .v_row = nkv * dv,
                       .v_head = dv, .o_row = nh * dv, .o_head = dv, .kv_start = pc->window ? ks : NULL,
                       .scale = 1.0f / sqrtf((float)dqk)};
    float *want = mt_xmalloc((size_t)T * nh * dv * sizeof(float)), *lse = mt_xmalloc((size_t)T * nh * sizeof(float));
    mt_attention_forward(g_be, &aa, q, k, v, want, lse);
    /* the cache: a row per position [K | V] (MLA: [K] only), blocks in shuffled order */
    int row = pc->mla ? nkv * dqk : nkv * (dqk + dv), pool_blocks = nb + 3;
    float *cache = mt_xcalloc((size_t)pool_blocks * bs * row, sizeof(float));
    int32_t *table = mt_xmalloc((size_t)nb * sizeof(int32_t));
    mt_rng r;
    mt_rng_seed(&r, seed + 3);
    int32_t *perm = mt_xmalloc((size_t)pool_blocks * sizeof(int32_t));
    for (int i = 0; i < pool_blocks; i++) perm[i] = i;
    for (int i = pool_blocks - 1; i > 0; i--) {
        int j = (int)mt_rng_below(&r, (uint64_t)i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < nb; i++) table[i] = perm[i];
    for (int t = 0; t < T; t++) {
        float *dst = cache + ((size_t)table[t / bs] * bs + (size_t)(t % bs)) * row;
        memcpy(dst, k + (size_t)t * nkv * dqk, (size_t)nkv * dqk * sizeof(float));
        if (!pc->mla) memcpy(dst + nkv * dqk, v + (size_t)t * nkv * dv, (size_t)nkv * dv * sizeof(float));
    }
    /* every query as a decode row of its own, in a scrambled row order */
    int32_t *seq = mt_xcalloc((size_t)T, sizeof(int32_t)), *pos = mt_xmalloc((size_t)T * sizeof(int32_t));
    int32_t *rks = mt_xmalloc((size_t)T * sizeof(int32_t));
    float *qr = mt_xmalloc((size_t)T * nh * dqk * sizeof(float)), *got = mt_xmalloc((size_t)T * nh * dv * sizeof(float));
    for (int i = 0; i < T; i++) {
        int t = (int)((i * 7 + 3) % T);
        pos[i] = t;
        rks[i] = ks[t];
        memcpy(qr + (size_t)i * nh * dqk, q + (size_t)t * nh * dqk, (size_t)nh * dqk * sizeof(float));
    }
    if (T % 7 == 0) fail_msg("T must not be a multiple of 7");
    mt_paged_attn_args pa = {.n_rows = T, .n_head = nh, .n_kv_head = nkv, .dqk = dqk, .dv = dv, .q_row = nh * dqk,
                             .q_head = dqk, .o_row = nh * dv, .o_head = dv, .cache = cache, .block_size = bs,
                             .kv_row = row, .k_off = 0, .k_head = pc->mla ? 0 : dqk, .v_off = pc->mla ? 0 : nkv * dqk,
                             .v_head = pc->mla ? 0 : dv, .tables = table, .table_stride = nb, .seq = seq, .pos = pos,
                             .kv_start = pc->window ? rks : NULL, .scale = aa.scale};
    mt_paged_attention_forward(g_be, &pa, qr, got);
    for (int i = 0; i < T; i++) {
        char what[96];
        snprintf(what, sizeof what, "paged attention h%d/kv%d d%d/%d block %d%s%s, query %d", nh, nkv, dqk, dv, bs,
                 pc->mla ? " mla" : "", pc->window ? " window" : "", pos[i]);
        mt_test_assert_close(what, got + (size_t)i * nh * dv, want + (size_t)pos[i] * nh * dv, (size_t)nh * dv, 1e-5);
    }
    free(k);
    free(v);
    free(q);
    free(ks);
    free(want);
    free(lse);
    free(cache);
    free(table);
    free(perm);
    free(seq);
    free(pos);
    free(rks);
    free(qr);
    free(got);
}

static void test_paged_attention(void **state) {
    (void)state;
    const paged_case cases[] = {
        {.n_head = 4, .n_kv = 2, .dqk = 16, .dv = 16, .len = 75, .block = 16},
        {.n_head = 4, .n_kv = 4, .dqk = 32, .dv = 32, .len = 130, .block = 1},
        {.n_head = 8, .n_kv = 1, .dqk = 24, .dv = 24, .len = 66, .block = 5, .window = 9},
        {.n_head = 6, .mla = true, .dqk = 40, .dv = 32, .len = 200, .block = 16},
        {.n_head = 2, .n_kv = 2, .dqk = 8, .dv = 8, .len = 1, .block = 4},
        /* rows past 1024 keys are split into spans merged afterwards */
        {.n_head = 4, .n_kv = 2, .dqk = 16, .dv = 8, .len = 2200, .block = 16},
        {.n_head = 4, .mla = true, .dqk = 24, .dv = 16, .len = 1500, .block = 16},
        {.n_head = 2, .n_kv = 1, .dqk = 8, .dv = 8, .len = 2101, .block = 7, .window = 1300},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_paged(&cases[i], 100 + i);
}

static void check_lowrank(int n, int in, int out, int r, bool a_t, bool b_t, uint64_t seed) {
    int ldx = in + 3, ldy = out + 5;
    float *x = mt_xmalloc((size_t)n * ldx * sizeof(float)), *A = mt_xmalloc((size_t)r * in * sizeof(float));
    float *B = mt_xmalloc((size_t)out * r * sizeof(float)), *y = mt_xmalloc((size_t)n * ldy * sizeof(float));
    float *h = mt_xmalloc((size_t)n * r * sizeof(float));
    mt_test_fill_uniform(x, (size_t)n * ldx, -1, 1, seed);
    mt_test_fill_uniform(A, (size_t)r * in, -1, 1, seed + 1);
    mt_test_fill_uniform(B, (size_t)out * r, -1, 1, seed + 2);
    mt_test_fill_uniform(y, (size_t)n * ldy, -1, 1, seed + 3);
    float *want = mt_xmalloc((size_t)n * ldy * sizeof(float));
    memcpy(want, y, (size_t)n * ldy * sizeof(float));
    const float s = 0.75f;
    for (int t = 0; t < n; t++) {
        double hh[64];
        for (int k = 0; k < r; k++) {
            double acc = 0;
            for (int i = 0; i < in; i++)
                acc += (double)x[(size_t)t * ldx + i] * (a_t ? A[(size_t)i * r + k] : A[(size_t)k * in + i]);
            hh[k] = acc;
        }
        for (int o = 0; o < out; o++) {
            double acc = 0;
            for (int k = 0; k < r; k++) acc += hh[k] * (b_t ? B[(size_t)k * out + o] : B[(size_t)o * r + k]);
            want[(size_t)t * ldy + o] += (float)(s * acc);
        }
    }
    mt_lowrank_forward(g_be, n, in, out, r, s, x, ldx, A, a_t, B, b_t, h, y, ldy);
    char what[96];
    snprintf(what, sizeof what, "lowrank n %d in %d out %d r %d%s%s", n, in, out, r, a_t ? " A^T" : "", b_t ? " B^T" : "");
    mt_test_assert_close(what, y, want, (size_t)n * ldy, 1e-5);
    free(x);
    free(A);
    free(B);
    free(y);
    free(h);
    free(want);
}

static void test_lowrank(void **state) {
    (void)state;
    for (int a_t = 0; a_t < 2; a_t++)
        for (int b_t = 0; b_t < 2; b_t++) {
            check_lowrank(1, 64, 48, 8, a_t, b_t, 1);   /* one decode row: the direct path */
            check_lowrank(5, 129, 33, 16, a_t, b_t, 2); /* odd widths */
            check_lowrank(300, 256, 200, 16, a_t, b_t, 3); /* a prefill chunk: sgemm */
        }
}

/* The keep mask (DAP): every (row, head) over its own random subset of blocks against a
 * double-precision softmax over exactly the kept keys; a head that keeps every block equals
 * the unmasked kernel bit for bit; results do not depend on the thread count (split rows). */
static void test_paged_keep(void **state) {
    (void)state;
    const int nh = 4, nkv = 2, group = nh / nkv, d = 16, bs = 16, T = 2300, nb = (T + bs - 1) / bs;
    const int rows = 6, row_len = nkv * 2 * d;
    const int pos[6] = {0, 15, 63, 1023, 1700, T - 1};
    float *cache = mt_xmalloc((size_t)nb * bs * row_len * sizeof(float));
    float *q = mt_xmalloc((size_t)rows * nh * d * sizeof(float));
    mt_test_fill_uniform(cache, (size_t)nb * bs * row_len, -2, 2, 7);
    mt_test_fill_uniform(q, (size_t)rows * nh * d, -2, 2, 8);
    int32_t *table = mt_xmalloc((size_t)nb * sizeof(int32_t));
    for (int b = 0; b < nb; b++) table[b] = nb - 1 - b; /* reversed: the table is honoured */
    int32_t seq[6] = {0}, ps[6];
    memcpy(ps, pos, sizeof ps);
    uint8_t *keep = mt_xmalloc((size_t)rows * nh * nb);
    mt_rng rng;
    mt_rng_seed(&rng, 9);
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < nh; h++) {
            uint8_t *kp = keep + ((size_t)r * nh + h) * nb;
            /* head 0 keeps all; the others about 40 %, the row's last block always */
            for (int b = 0; b < nb; b++) kp[b] = h == 0 || mt_rng_below(&rng, 10) < 4;
            kp[pos[r] / bs] = 1;
        }
    mt_paged_attn_args pa = {.n_rows = rows, .n_head = nh, .n_kv_head = nkv, .dqk = d, .dv = d, .q_row = nh * d,
                             .q_head = d, .o_row = nh * d, .o_head = d, .cache = cache, .block_size = bs,
                             .kv_row = row_len, .k_off = 0, .k_head = d, .v_off = nkv * d, .v_head = d,
                             .tables = table, .table_stride = nb, .seq = seq, .pos = ps, .scale = 0.25f};
    float *plain = mt_xmalloc((size_t)rows * nh * d * sizeof(float)), *got = mt_xmalloc((size_t)rows * nh * d * sizeof(float));
    float *got1 = mt_xmalloc((size_t)rows * nh * d * sizeof(float));
    mt_paged_attention_forward(g_be, &pa, q, plain);
    pa.keep = keep;
    pa.keep_stride = nb;
    mt_paged_attention_forward(g_be, &pa, q, got);
    mt_backend *one = NULL;
    mt_error err = {0};
    assert_int_equal(mt_backend_init(&one, MT_BACKEND_CPU, 1, &err), MT_OK);
    mt_paged_attention_forward(one, &pa, q, got1);
    mt_backend_free(one);
    assert_memory_equal(got, got1, (size_t)rows * nh * d * sizeof(float));
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < nh; h++) {
            const uint8_t *kp = keep + ((size_t)r * nh + h) * nb;
            const float *qh = q + ((size_t)r * nh + h) * d;
            const int g = h / group;
            double mx = -INFINITY, z = 0, acc[16] = {0};
            for (int t = 0; t <= pos[r]; t++) {
                if (!kp[t / bs]) continue;
                const float *kr = cache + ((size_t)table[t / bs] * bs + t % bs) * row_len + g * d;
                double sc = 0;
                for (int i = 0; i < d; i++) sc += (double)qh[i] * kr[i];
                if (sc * 0.25 > mx) mx = sc * 0.25;
            }
            for (int t = 0; t <= pos[r]; t++) {
                if (!kp[t / bs]) continue;
                const float *kr = cache + ((size_t)table[t / bs] * bs + t % bs) * row_len + g * d;
                double sc = 0;
                for (int i = 0; i < d; i++) sc += (double)qh[i] * kr[i];
                double e = exp(sc * 0.25 - mx);
                z += e;
                for (int i = 0; i < d; i++) acc[i] += e * kr[nkv * d + i];
            }
            float want[16];
            for (int i = 0; i < d; i++) want[i] = (float)(acc[i] / z);
            char what[64];
            snprintf(what, sizeof what, "keep mask row %d (pos %d) head %d", r, pos[r], h);
            mt_test_assert_close(what, got + ((size_t)r * nh + h) * d, want, (size_t)d, 2e-5);
            if (h == 0) /* every block kept: the unmasked result exactly */
                assert_memory_equal(got + (size_t)r * nh * d, plain + (size_t)r * nh * d, (size_t)d * sizeof(float));
        }
    free(cache);
    free(q);
    free(table);
    free(keep);
    free(plain);
    free(got);
    free(got1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paged_attention),
        cmocka_unit_test(test_paged_keep),
        cmocka_unit_test(test_lowrank),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
