/* test_kernels_attention.c — the tiled CPU attention against a naive double-precision
 * softmax(QKᵀ)V, its backward against central finite differences (GQA, dqk ≠ dv, packed
 * documents, q_offset, single-token decode, sequences longer than a key block, strided and
 * fused layouts), chunked prefill + decode against one full pass, and thread independence. */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/kernels.h"

static mt_backend *be; /* 2 threads */

static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    return mt_backend_init(&be, MT_BACKEND_CPU, 2, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(be);
    return 0;
}

static float *fzeros(size_t n) { return mt_xcalloc(n ? n : 1, sizeof(float)); }

static float *frand(size_t n, float lo, float hi, uint64_t seed) {
    float *x = fzeros(n);
    mt_test_fill_uniform(x, n, lo, hi, seed);
    return x;
}

static float *fcopy(const float *x, size_t n) {
    float *y = fzeros(n);
    memcpy(y, x, n * sizeof(float));
    return y;
}

/* ---- a test problem: arguments, buffers and their sizes ---- */

typedef struct attn_case {
    const char *name;
    int B, Tq, Tk, H, KV, dqk, dv, q_offset;
    bool packed; /* kv_start from documents of 3, 5, 4, ... tokens */
    bool fused;  /* q, k, v interleaved in one [T, (H+KV)·dqk + KV·dv + pad] buffer */
    size_t fd_step;
} attn_case;

typedef struct attn_problem {
    mt_attn_args a;
    float *qkv, *q, *k, *v; /* q, k, v point into qkv when fused */
    float *o, *lse, *r;
    size_t nq, nk, nv, no, nlse; /* buffer lengths in floats (from the pointer on) */
    int32_t *kv_start;
} attn_problem;

static void problem_init(attn_problem *p, const attn_case *c, uint64_t seed) {
    memset(p, 0, sizeof *p);
    mt_attn_args *a = &p->a;
    *a = (mt_attn_args){.B = c->B, .Tq = c->Tq, .Tk = c->Tk, .n_head = c->H, .n_kv_head = c->KV, .dqk = c->dqk,
                        .dv = c->dv, .q_offset = c->q_offset, .scale = 1.0f / sqrtf((float)c->dqk)};
    if (c->fused) {
        MT_ASSERT(c->Tq == c->Tk);
        int row = (c->H + c->KV) * c->dqk + c->KV * c->dv + 3;
        a->q_row = a->k_row = a->v_row = row;
        a->q_head = a->k_head = c->dqk;
        a->v_head = c->dv;
        size_t n = (size_t)c->B * c->Tk * row;
        p->qkv = frand(n, -1.5f, 1.5f, seed);
        p->q = p->qkv;
        p->k = p->qkv + (size_t)c->H * c->dqk;
        p->v = p->k + (size_t)c->KV * c->dqk;
        p->nq = n;
        p->nk = n - (size_t)c->H * c->dqk;
        p->nv = p->nk - (size_t)c->KV * c->dqk;
    } else { /* heads one float apart, rows padded by 3 */
        a->q_head = a->k_head = c->dqk + 1;
        a->v_head = c->dv + 1;
        a->q_row = c->H * a->q_head + 3;
        a->k_row = c->KV * a->k_head + 3;
        a->v_row = c->KV * a->v_head + 3;
        p->nq = (size_t)c->B * c->Tq * a->q_row;
        p->nk = (size_t)c->B * c->Tk * a->k_row;
        p->nv = (size_t)c->B * c->Tk * a->v_row;
        p->q = frand(p->nq, -1.5f, 1.5f, seed);
        p->k = frand(p->nk, -1.5f, 1.5f, seed + 1);
        p->v = frand(p->nv, -1.5f, 1.5f, seed + 2);
    }
    a->o_head = c->dv;
    a->o_row = c->H * c->dv + 5;
    p->no = (size_t)c->B * c->Tq * a->o_row;
    p->o = fzeros(p->no);
    p->nlse = (size_t)c->B * c->H * c->Tq;
    p->lse = fzeros(p->nlse);
    p->r = frand(p->no, -1, 1, seed + 3);
    if (c->packed) {
        p->kv_start = mt_xcalloc((size_t)c->B * c->Tq, sizeof(int32_t));
        for (int b = 0; b < c->B; b++)
            for (int i = 0; i < c->Tq; i++) {
                int pos = c->q_offset + i, start = 0, len = 3 + b;
                while (start + len <= pos) { /* documents of 3+b, 5+b, 7+b, ... tokens */
                    start += len;
                    len += 2;
                }
                p->kv_start[b * c->Tq + i] = start;
            }
        a->kv_start = p->kv_start;
    }
}

static void problem_free(attn_problem *p) {
    if (p->qkv) {
        free(p->qkv);
    } else {
        free(p->q), free(p->k), free(p->v);
    }
    free(p->o), free(p->lse), free(p->r), free(p->kv_start);
}

/* Naive reference: full score rows in double, masked, softmax, ·V. */
static void attn_ref(const mt_attn_args *a, const float *q, const float *k, const float *v, float *o, float *lse) {
    double *s = mt_xcalloc((size_t)a->Tk, sizeof(double));
    int group = a->n_head / a->n_kv_head;
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < a->n_head; h++)
            for (int i = 0; i < a->Tq; i++) {
                int g = h / group, lo = a->kv_start ? a->kv_start[b * a->Tq + i] : 0, hi = a->q_offset + i;
                const float *qi = q + ((size_t)b * a->Tq + i) * a->q_row + (size_t)h * a->q_head;
                double mx = -INFINITY, sum = 0;
                for (int j = lo; j <= hi; j++) {
                    const float *kj = k + ((size_t)b * a->Tk + j) * a->k_row + (size_t)g * a->k_head;
                    double d = 0;
                    for (int c = 0; c < a->dqk; c++) d += (double)qi[c] * kj[c];
                    s[j] = d * a->scale;
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int j = lo; j <= hi; j++) sum += exp(s[j] - mx);
                float *oi = o + ((size_t)b * a->Tq + i) * a->o_row + (size_t)h * a->o_head;
                for (int c = 0; c < a->dv; c++) {
                    double acc = 0;
                    for (int j = lo; j <= hi; j++)
                        acc += exp(s[j] - mx) / sum * v[((size_t)b * a->Tk + j) * a->v_row + (size_t)g * a->v_head + c];
                    oi[c] = (float)acc;
                }
                lse[((size_t)b * a->n_head + h) * a->Tq + i] = (float)(mx + log(sum));
            }
    free(s);
}

static double attn_loss(void *ctx) {
    attn_problem *p = ctx;
    mt_attention_forward(be, &p->a, p->q, p->k, p->v, p->o, p->lse);
    double s = 0;
    for (size_t i = 0; i < p->no; i++) s += (double)p->o[i] * p->r[i];
    return s;
}

/* Central differences of Σ r⊙O for every step-th element of x (the fp32 step actually taken). */
static void fd_check(const char *what, float *x, size_t n, size_t step, const float *analytic, attn_problem *p) {
    const float eps = 1e-3f;
    size_t m = (n + step - 1) / step;
    float *num = fzeros(m), *ana = fzeros(m);
    for (size_t i = 0, j = 0; i < n; i += step, j++) {
        float x0 = x[i], xp = x0 + eps, xm = x0 - eps;
        x[i] = xp;
        double lp = attn_loss(p);
        x[i] = xm;
        double lm = attn_loss(p);
        x[i] = x0;
        num[j] = (float)((lp - lm) / ((double)xp - (double)xm));
        ana[j] = analytic[i];
    }
    mt_test_assert_close(what, ana, num, m, 1e-2);
    free(num);
    free(ana);
}

static void run_case(const attn_case *c) {
    attn_problem p;
    problem_init(&p, c, 1000 + (uint64_t)c->Tk);
    float *want = fzeros(p.no), *want_lse = fzeros(p.nlse);
    attn_ref(&p.a, p.q, p.k, p.v, want, want_lse);
    mt_attention_forward(be, &p.a, p.q, p.k, p.v, p.o, p.lse);
    char what[128];
    snprintf(what, sizeof what, "%s: output", c->name);
    mt_test_assert_close(what, p.o, want, p.no, 2e-6);
    snprintf(what, sizeof what, "%s: lse", c->name);
    mt_test_assert_close(what, p.lse, want_lse, p.nlse, 2e-6);

    /* gradients accumulate into prefilled buffers; the prefill is subtracted again */
    float *dq0 = frand(p.nq, -1, 1, 7), *dk0 = frand(p.nk, -1, 1, 8), *dv0 = frand(p.nv, -1, 1, 9);
    float *dq = fcopy(dq0, p.nq), *dk = fcopy(dk0, p.nk), *dv = fcopy(dv0, p.nv);
    if (c->fused) { /* one gradient buffer shaped like qkv; q, k and v parts are disjoint */
        free(dk), free(dv);
        dk = dq + (p.k - p.q);
        dv = dq + (p.v - p.q);
        free(dk0), free(dv0);
        dk0 = dq0 + (p.k - p.q);
        dv0 = dq0 + (p.v - p.q);
    }
    mt_attention_backward(be, &p.a, p.q, p.k, p.v, p.o, p.lse, p.r, dq, dk, dv);
    float *gq = fzeros(p.nq), *gk = fzeros(p.nk), *gv = fzeros(p.nv);
    for (size_t i = 0; i < p.nq; i++) gq[i] = dq[i] - dq0[i];
    for (size_t i = 0; i < p.nk; i++) gk[i] = dk[i] - dk0[i];
    for (size_t i = 0; i < p.nv; i++) gv[i] = dv[i] - dv0[i];
    if (c->fused) { /* a fused buffer's gradient is read through the q view only */
        snprintf(what, sizeof what, "%s: d(qkv)", c->name);
        fd_check(what, p.qkv, p.nq, c->fd_step, gq, &p);
    } else {
        snprintf(what, sizeof what, "%s: dq", c->name);
        fd_check(what, p.q, p.nq, c->fd_step, gq, &p);
        snprintf(what, sizeof what, "%s: dk", c->name);
        fd_check(what, p.k, p.nk, c->fd_step, gk, &p);
        snprintf(what, sizeof what, "%s: dv", c->name);
        fd_check(what, p.v, p.nv, c->fd_step, gv, &p);
    }
    /* NULL gradients are skipped; dq alone matches the full call's dq (the finite differences
     * left O and lse of a perturbed input behind: recompute them) */
    mt_attention_forward(be, &p.a, p.q, p.k, p.v, p.o, p.lse);
    float *dq_only = fzeros(p.nq);
    mt_attention_backward(be, &p.a, p.q, p.k, p.v, p.o, p.lse, p.r, dq_only, NULL, NULL);
    if (!c->fused) mt_test_assert_close("dq alone", dq_only, gq, p.nq, 1e-6);
    if (!c->fused) free(dk), free(dv), free(dk0), free(dv0);
    free(dq), free(dq0), free(gq), free(gk), free(gv), free(dq_only), free(want), free(want_lse);
    problem_free(&p);
}

static void test_attention_mha(void **state) {
    (void)state;
    run_case(&(attn_case){"mha", 2, 7, 7, 2, 2, 8, 8, 0, false, false, 1});
}

static void test_attention_gqa_fused(void **state) {
    (void)state;
    run_case(&(attn_case){"gqa fused qkv", 2, 9, 9, 4, 2, 8, 8, 0, false, true, 1});
}

static void test_attention_mla_dims(void **state) {
    (void)state;
    run_case(&(attn_case){"dqk != dv", 1, 6, 6, 3, 3, 12, 8, 0, false, false, 1});
    run_case(&(attn_case){"dqk != dv, gqa", 2, 5, 5, 4, 1, 6, 10, 0, false, false, 1});
}

static void test_attention_packed(void **state) {
    (void)state;
    run_case(&(attn_case){"kv_start", 2, 13, 13, 2, 1, 8, 8, 0, true, false, 1});
}

static void test_attention_q_offset(void **state) {
    (void)state;
    run_case(&(attn_case){"q_offset", 2, 4, 11, 2, 1, 8, 8, 7, false, false, 1});
    run_case(&(attn_case){"q_offset + kv_start", 2, 5, 12, 4, 2, 8, 6, 7, true, false, 1});
}

static void test_attention_decode(void **state) {
    (void)state;
    run_case(&(attn_case){"decode", 2, 1, 9, 4, 2, 8, 6, 8, false, false, 1});
}

static void test_attention_long(void **state) {
    (void)state;
    /* 150 keys: three key blocks of 64 and five query tiles of 32 */
    run_case(&(attn_case){"long", 1, 150, 150, 2, 1, 8, 8, 0, false, false, 13});
    run_case(&(attn_case){"long packed", 1, 150, 150, 2, 2, 4, 4, 0, true, false, 17});
}

/* Chunked prefill then token-by-token decode (q_offset > 0, Tk growing) gives bit-identical
 * outputs and lse to a single pass over the whole sequence. window > 0 replaces the packed
 * documents by a sliding window: every query then starts at its own key, and its 70 keys
 * straddle a block boundary, which catches blocks aligned per tile instead of absolutely. */
static void prefix_decode(bool packed, int window) {
    attn_case c = {"prefix", 2, 100, 100, 4, 2, 16, 16, 0, packed || window > 0, false, 1};
    attn_problem p;
    problem_init(&p, &c, 77);
    if (window > 0)
        for (int b = 0; b < c.B; b++)
            for (int i = 0; i < c.Tq; i++) p.kv_start[b * c.Tq + i] = i - window + 1 > 0 ? i - window + 1 : 0;
    mt_attention_forward(be, &p.a, p.q, p.k, p.v, p.o, p.lse);
    const int T = 100, bounds[] = {0, 70, 87, 88, 89, 90, 97, 100};
    const int nb = (int)(sizeof bounds / sizeof bounds[0]);
    float *o = fzeros(p.no), *lse = fzeros(p.nlse);
    for (int b = 0; b < c.B; b++)
        for (int ci = 0; ci + 1 < nb; ci++) {
            int s0 = bounds[ci], s1 = bounds[ci + 1];
            mt_attn_args a = p.a; /* one sequence: Tq = chunk, Tk = everything so far */
            a.B = 1;
            a.Tq = s1 - s0;
            a.Tk = s1;
            a.q_offset = s0;
            a.kv_start = p.kv_start ? p.kv_start + b * T + s0 : NULL;
            const float *q = p.q + ((size_t)b * T + s0) * a.q_row;
            const float *k = p.k + (size_t)b * T * a.k_row, *v = p.v + (size_t)b * T * a.v_row;
            float *oc = o + ((size_t)b * T + s0) * a.o_row;
            float *lc = fzeros((size_t)a.n_head * a.Tq);
            mt_attention_forward(be, &a, q, k, v, oc, lc);
            for (int h = 0; h < a.n_head; h++)
                memcpy(lse + ((size_t)b * a.n_head + h) * T + s0, lc + (size_t)h * a.Tq, (size_t)a.Tq * sizeof(float));
            free(lc);
        }
    if (memcmp(o, p.o, p.no * sizeof(float)) != 0 || memcmp(lse, p.lse, p.nlse * sizeof(float)) != 0) {
        mt_test_assert_close("prefix + decode output", o, p.o, p.no, 0);
        mt_test_assert_close("prefix + decode lse", lse, p.lse, p.nlse, 0);
    }
    free(o), free(lse);
    problem_free(&p);
}

static void test_attention_prefix_decode(void **state) {
    (void)state;
    prefix_decode(false, 0);
    prefix_decode(true, 0);
    prefix_decode(false, 70);
}

static void test_attention_threads(void **state) {
    (void)state;
    mt_backend *b1, *b2;
    mt_error err = {0};
    assert_int_equal(mt_backend_init(&b1, MT_BACKEND_CPU, 1, &err), MT_OK);
    assert_int_equal(mt_backend_init(&b2, MT_BACKEND_CPU, 2, &err), MT_OK);
    attn_case c = {"threads", 2, 130, 130, 4, 2, 32, 24, 0, true, false, 1};
    attn_problem p;
    problem_init(&p, &c, 99);
    float *o[2], *lse[2], *dq[2], *dk[2], *dv[2];
    mt_backend *bs[2] = {b1, b2};
    for (int i = 0; i < 2; i++) {
        o[i] = fzeros(p.no), lse[i] = fzeros(p.nlse);
        dq[i] = fzeros(p.nq), dk[i] = fzeros(p.nk), dv[i] = fzeros(p.nv);
        mt_attention_forward(bs[i], &p.a, p.q, p.k, p.v, o[i], lse[i]);
        mt_attention_backward(bs[i], &p.a, p.q, p.k, p.v, o[i], lse[i], p.r, dq[i], dk[i], dv[i]);
    }
    assert_memory_equal(o[0], o[1], p.no * sizeof(float));
    assert_memory_equal(lse[0], lse[1], p.nlse * sizeof(float));
    assert_memory_equal(dq[0], dq[1], p.nq * sizeof(float));
    assert_memory_equal(dk[0], dk[1], p.nk * sizeof(float));
    assert_memory_equal(dv[0], dv[1], p.nv * sizeof(float));
    for (int i = 0; i < 2; i++) free(o[i]), free(lse[i]), free(dq[i]), free(dk[i]), free(dv[i]);
    problem_free(&p);
    mt_backend_free(b1);
    mt_backend_free(b2);
}

static void bad_offset(void) {
    float x[64] = {0}, lse[4];
    mt_attn_args a = {.B = 1, .Tq = 2, .Tk = 2, .n_head = 1, .n_kv_head = 1, .dqk = 4, .dv = 4, .q_row = 4,
                      .q_head = 4, .k_row = 4, .k_head = 4, .v_row = 4, .v_head = 4, .o_row = 4, .o_head = 4,
                      .q_offset = 1, .scale = 1};
    mt_attention_forward(be, &a, x, x, x, x + 32, lse);
}

static void test_attention_invalid(void **state) {
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        bad_offset();
        _exit(0);
    }
    close(fds[1]);
    char buf[2048];
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    assert_non_null(strstr(buf, "q_offset + a->Tq <= a->Tk"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_mha),          cmocka_unit_test(test_attention_gqa_fused),
        cmocka_unit_test(test_attention_mla_dims),     cmocka_unit_test(test_attention_packed),
        cmocka_unit_test(test_attention_q_offset),     cmocka_unit_test(test_attention_decode),
        cmocka_unit_test(test_attention_long),         cmocka_unit_test(test_attention_prefix_decode),
        cmocka_unit_test(test_attention_threads),      cmocka_unit_test(test_attention_invalid),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
