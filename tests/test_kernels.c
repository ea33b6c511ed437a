/* test_kernels.c — the CPU backend's ops (all but attention, see test_kernels_attention.c)
 * against naive double-precision loops, transformers' routers and torch's AdamW (fixtures),
 * a hand-computed AdamW step and central finite differences; plus backend dispatch, error
 * paths, and results that are bit-identical on 1 and 2 threads. */
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

/* ---- helpers ---- */

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

static double wsum(const float *out, const float *r, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * (double)r[i];
    return s;
}

/* out[i] = a[i] − b[i]: isolates what an accumulating backward added to a prefilled buffer */
static float *fdiff(const float *a, const float *b, size_t n) {
    float *d = fzeros(n);
    for (size_t i = 0; i < n; i++) d[i] = a[i] - b[i];
    return d;
}

typedef double (*fd_loss)(void *ctx);

/* Central differences of loss() w.r.t. x[i] for every step-th i, against analytic[i]. The
 * step is the difference of the two fp32 inputs actually used, not the nominal 2·eps. */
static void fd_check(const char *what, float *x, size_t n, size_t step, const float *analytic, fd_loss loss,
                     void *ctx, double tol) {
    const float eps = 1e-3f;
    size_t m = (n + step - 1) / step;
    float *num = fzeros(m), *ana = fzeros(m);
    for (size_t i = 0, j = 0; i < n; i += step, j++) {
        float x0 = x[i], xp = x0 + eps, xm = x0 - eps;
        x[i] = xp;
        double lp = loss(ctx);
        x[i] = xm;
        double lm = loss(ctx);
        x[i] = x0;
        num[j] = (float)((lp - lm) / ((double)xp - (double)xm));
        ana[j] = analytic[i];
    }
    mt_test_assert_close(what, ana, num, m, tol);
    free(num);
    free(ana);
}

#define FD_TOL 1e-2

/* Runs fn(arg) in a child and expects it to abort with `needle` in its stderr. */
static void expect_abort(void (*fn)(void *), void *arg, const char *needle) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    char buf[4096];
    size_t len = 0;
    ssize_t got;
    while (len + 1 < sizeof buf && (got = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)got;
    buf[len] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT)
        fail_msg("expected an abort mentioning '%s', got status %d and stderr: %s", needle, status, buf);
    if (!strstr(buf, needle)) fail_msg("abort message lacks '%s': %s", needle, buf);
}

/* ---- backend ---- */

static void test_backend_basics(void **state) {
    (void)state;
    assert_int_equal(mt_backend_get_kind(be), MT_BACKEND_CPU);
    assert_string_equal(mt_backend_name(be), "cpu");
    assert_int_equal(mt_backend_threads(be), 2);
    const char *d = mt_backend_describe(be);
    assert_non_null(strstr(d, "CPU: 2 threads, OpenBLAS 0."));
    assert_non_null(strstr(d, "kernels"));
    for (int op = 0; op < MT_OP_COUNT; op++) {
        assert_true(mt_backend_supports(be, (mt_op)op));
        assert_string_not_equal(mt_op_name((mt_op)op), "unknown op");
    }
    assert_false(mt_backend_supports(be, MT_OP_COUNT));
    assert_string_equal(mt_op_name(MT_OP_ATTENTION), "attention");

    float *p = mt_backend_alloc(be, 1000 * sizeof(float));
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 64, 0);
    for (int i = 0; i < 1000; i++) assert_true(p[i] == 0.0f);
    float host[1000], back[1000];
    for (int i = 0; i < 1000; i++) host[i] = (float)i;
    mt_backend_upload(be, p, host, sizeof host);
    float *q = mt_backend_alloc(be, sizeof host);
    mt_backend_copy(be, q, p, sizeof host);
    mt_backend_download(be, back, q, sizeof back);
    assert_memory_equal(back, host, sizeof host);
    mt_backend_memset0(be, q, 10 * sizeof(float));
    mt_backend_download(be, back, q, sizeof back);
    assert_true(back[9] == 0.0f && back[10] == 10.0f);
    mt_backend_sync(be);
    mt_backend_release(be, p);
    mt_backend_release(be, q);
    mt_backend_release(be, NULL);

    mt_backend *all = NULL;
    mt_error err = {0};
    assert_int_equal(mt_backend_init(&all, MT_BACKEND_CPU, 0, &err), MT_OK);
    assert_true(mt_backend_threads(all) >= 1);
    mt_backend_free(all);
    mt_backend_free(NULL);
}

static void matmul_on(void *backend) {
    float x[4] = {0};
    mt_matmul(backend, false, false, 2, 2, 2, 1.0f, x, 2, x, 2, 0.0f, x, 2);
}

static void test_backend_errors(void **state) {
    (void)state;
    mt_backend *b = NULL;
    mt_error err = {0};
    mt_status st = mt_backend_init(&b, MT_BACKEND_CUDA, 1, &err);
    if (st == MT_OK) { /* a CUDA build on a machine with a GPU: device management only */
        assert_string_equal(mt_backend_name(b), "cuda");
        assert_non_null(strstr(mt_backend_describe(b), "CUDA: "));
        for (int op = 0; op < MT_OP_COUNT; op++) assert_false(mt_backend_supports(b, (mt_op)op));
        /* an unsupported op is refused by name, before any device pointer is touched */
        expect_abort(matmul_on, b, "the cuda backend supports op matmul");
        mt_backend_free(b);
    } else {
        assert_int_equal(st, MT_ERR_UNSUPPORTED);
        assert_null(b);
        assert_non_null(strstr(err.msg, "CUDA"));
    }
    mt_error_clear(&err);
    assert_int_equal(mt_backend_init(&b, (mt_backend_kind)7, 1, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "backend kind 7"));
}

static void test_preferred_coretype(void **state) {
    (void)state;
    const char *saved = getenv("OPENBLAS_CORETYPE");
    char *copy = saved ? mt_xstrdup(saved) : NULL;
    unsetenv("OPENBLAS_CORETYPE");
    const char *pref = mt_backend_preferred_coretype();
    if (pref) { /* only on AVX-512 machines where OpenBLAS picked an AVX2 core */
        assert_string_equal(pref, "SkylakeX");
        assert_non_null(strstr(mt_backend_describe(be), "OPENBLAS_CORETYPE=SkylakeX"));
    } else {
        assert_null(strstr(mt_backend_describe(be), "OPENBLAS_CORETYPE"));
    }
    setenv("OPENBLAS_CORETYPE", "Haswell", 1); /* the user's choice is never overridden */
    assert_null(mt_backend_preferred_coretype());
    if (copy)
        setenv("OPENBLAS_CORETYPE", copy, 1);
    else
        unsetenv("OPENBLAS_CORETYPE");
    free(copy);
}

static void test_sgemm_gflops(void **state) {
    (void)state;
    double g = mt_backend_sgemm_gflops(be, 96, 3);
    assert_true(g > 0.0 && isfinite(g));
}

/* ---- dense algebra ---- */

static void test_matmul(void **state) {
    (void)state;
    const int m = 13, n = 17, k = 9, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
            int lda = ac + pad, ldb = bc + pad, ldc = n + pad;
            float *a = frand((size_t)ar * lda, -1, 1, 1), *b = frand((size_t)br * ldb, -1, 1, 2);
            float *c = frand((size_t)m * ldc, -1, 1, 3), *c0 = fcopy(c, (size_t)m * ldc);
            float *want = fcopy(c, (size_t)m * ldc);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    for (int l = 0; l < k; l++) {
                        double av = ta ? a[(size_t)l * lda + i] : a[(size_t)i * lda + l];
                        double bv = tb ? b[(size_t)j * ldb + l] : b[(size_t)l * ldb + j];
                        s += av * bv;
                    }
                    want[(size_t)i * ldc + j] = (float)(0.75 * s - 0.5 * c0[(size_t)i * ldc + j]);
                }
            mt_matmul(be, ta, tb, m, n, k, 0.75f, a, lda, b, ldb, -0.5f, c, ldc);
            mt_test_assert_close("matmul", c, want, (size_t)m * ldc, 1e-5);
            free(a), free(b), free(c), free(c0), free(want);
        }
    /* k = 0 leaves beta·C, and beta = 0 clears NaN garbage as BLAS does */
    float c[4] = {1, 2, NAN, 4};
    mt_matmul(be, false, false, 2, 2, 0, 1.0f, NULL, 1, NULL, 2, 0.0f, c, 2);
    for (int i = 0; i < 4; i++) assert_true(c[i] == 0.0f);
}

static void test_elementwise(void **state) {
    (void)state;
    const size_t n = 100003;
    float *x = frand(n, -2, 2, 4), *y = frand(n, -2, 2, 5), *y0 = fcopy(y, n);
    mt_add(be, y, x, -0.25f, n);
    for (size_t i = 0; i < n; i += 997) assert_float_equal(y[i], y0[i] - 0.25f * x[i], 1e-6);
    mt_scale(be, y, 3.0f, n);
    for (size_t i = 0; i < n; i += 997) assert_float_equal(y[i], 3.0f * (y0[i] - 0.25f * x[i]), 1e-5);
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    assert_true(fabs(mt_sum_squares(be, x, n) - ss) <= 1e-12 * ss);
    assert_true(mt_sum_squares(be, x, 0) == 0.0);
    assert_true(mt_sum_squares(be, x, 3) == (double)x[0] * x[0] + (double)x[1] * x[1] + (double)x[2] * x[2]);
    free(x), free(y), free(y0);

    /* bias rows and their column-sum backward */
    const int rows = 37, d = 150;
    float *yb = frand((size_t)rows * d, -1, 1, 6), *yb0 = fcopy(yb, (size_t)rows * d), *b = frand(d, -1, 1, 7);
    mt_add_bias(be, yb, b, rows, d);
    for (int t = 0; t < rows; t++)
        for (int i = 0; i < d; i++) assert_true(yb[(size_t)t * d + i] == yb0[(size_t)t * d + i] + b[i]);
    float *db = frand(d, -1, 1, 8), *db0 = fcopy(db, d), *want = fzeros(d);
    mt_add_bias_backward(be, yb0, rows, d, db);
    for (int i = 0; i < d; i++) {
        double s = db0[i];
        for (int t = 0; t < rows; t++) s += yb0[(size_t)t * d + i];
        want[i] = (float)s;
    }
    mt_test_assert_close("add_bias_backward", db, want, d, 1e-6);
    free(yb), free(yb0), free(b), free(db), free(db0), free(want);

    /* strided blocks: copy 5 columns of 7-wide rows into 9-wide rows at column 2, and back */
    float *src = frand(6 * 7, -1, 1, 9), *dst = frand(6 * 9, -1, 1, 10), *dst0 = fcopy(dst, 6 * 9);
    mt_copy_2d(be, dst + 2, 9, src + 1, 7, 6, 5);
    for (int r = 0; r < 6; r++)
        for (int c = 0; c < 9; c++)
            assert_true(dst[r * 9 + c] == (c >= 2 && c < 7 ? src[r * 7 + c - 1] : dst0[r * 9 + c]));
    float *acc = frand(6 * 7, -1, 1, 11), *acc0 = fcopy(acc, 6 * 7);
    mt_add_2d(be, acc + 1, 7, dst + 2, 9, 6, 5);
    for (int r = 0; r < 6; r++)
        for (int c = 0; c < 7; c++)
            assert_true(acc[r * 7 + c] ==
                        (c >= 1 && c < 6 ? acc0[r * 7 + c] + src[r * 7 + c] : acc0[r * 7 + c]));
    free(src), free(dst), free(dst0), free(acc), free(acc0);
}

/* ---- embedding ---- */

typedef struct emb_ctx {
    const int32_t *tok;
    int n, d;
    float *table, *out;
    const float *r;
} emb_ctx;

static double emb_loss(void *p) {
    emb_ctx *c = p;
    mt_embedding_forward(be, c->tok, c->n, c->table, c->d, c->out);
    return wsum(c->out, c->r, (size_t)c->n * c->d);
}

static void test_embedding(void **state) {
    (void)state;
    const int V = 11, d = 70, n = 9;
    const int32_t tok[9] = {3, 0, 10, 3, 7, 3, 0, 5, 10}; /* repeats add up */
    float *table = frand((size_t)V * d, -1, 1, 12), *out = fzeros((size_t)n * d);
    float *r = frand((size_t)n * d, -1, 1, 13);
    mt_embedding_forward(be, tok, n, table, d, out);
    for (int t = 0; t < n; t++) assert_memory_equal(out + (size_t)t * d, table + (size_t)tok[t] * d, d * sizeof(float));
    float *dt = frand((size_t)V * d, -1, 1, 14), *dt0 = fcopy(dt, (size_t)V * d);
    mt_embedding_backward(be, tok, n, r, d, dt);
    float *grad = fdiff(dt, dt0, (size_t)V * d);
    emb_ctx c = {tok, n, d, table, out, r};
    fd_check("embedding d(table)", table, (size_t)V * d, 1, grad, emb_loss, &c, FD_TOL);
    free(table), free(out), free(r), free(dt), free(dt0), free(grad);
}

/* ---- RMSNorm ---- */

typedef struct norm_ctx {
    float *x, *w, *y, *rstd;
    const float *r;
    int n, d;
    float eps;
} norm_ctx;

static double norm_loss(void *p) {
    norm_ctx *c = p;
    mt_rmsnorm_forward(be, c->x, c->w, c->y, c->rstd, c->n, c->d, c->eps);
    return wsum(c->y, c->r, (size_t)c->n * c->d);
}

static void test_rmsnorm(void **state) {
    (void)state;
    const int n = 6, d = 37;
    const float eps = 1e-5f;
    float *x = frand((size_t)n * d, -2, 2, 15), *w = frand(d, 0.5f, 1.5f, 16), *y = fzeros((size_t)n * d);
    float *rstd = fzeros(n), *r = frand((size_t)n * d, -1, 1, 17), *want = fzeros((size_t)n * d);
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = 0; i < d; i++) ss += (double)x[t * d + i] * x[t * d + i];
        double rs = 1.0 / sqrt(ss / d + eps);
        for (int i = 0; i < d; i++) want[t * d + i] = (float)(w[i] * x[t * d + i] * rs);
    }
    mt_rmsnorm_forward(be, x, w, y, rstd, n, d, eps);
    mt_test_assert_close("rmsnorm forward", y, want, (size_t)n * d, 1e-6);

    float *dx = frand((size_t)n * d, -1, 1, 18), *dx0 = fcopy(dx, (size_t)n * d);
    float *dw = frand(d, -1, 1, 19), *dw0 = fcopy(dw, d);
    mt_rmsnorm_backward(be, r, x, w, rstd, dx, dw, n, d);
    float *gx = fdiff(dx, dx0, (size_t)n * d), *gw = fdiff(dw, dw0, d);
    norm_ctx c = {x, w, y, rstd, r, n, d, eps};
    fd_check("rmsnorm dx", x, (size_t)n * d, 1, gx, norm_loss, &c, FD_TOL);
    fd_check("rmsnorm dw", w, d, 1, gw, norm_loss, &c, FD_TOL);

    /* y may alias x */
    float *xa = fcopy(x, (size_t)n * d);
    mt_rmsnorm_forward(be, xa, w, xa, rstd, n, d, eps);
    mt_test_assert_close("rmsnorm in place", xa, want, (size_t)n * d, 1e-6);
    free(x), free(w), free(y), free(rstd), free(r), free(want), free(dx), free(dx0), free(dw), free(dw0);
    free(gx), free(gw), free(xa);
}

/* ---- RoPE ---- */

typedef struct rope_ctx {
    const mt_rope_args *a;
    float *x, *work;
    const float *r;
    size_t n;
} rope_ctx;

static double rope_loss(void *p) {
    rope_ctx *c = p;
    memcpy(c->work, c->x, c->n * sizeof(float));
    mt_rope_forward(be, c->a, c->work);
    return wsum(c->work, c->r, c->n);
}

/* HF tables: inv_freq_i = θ^(−2i/rot), cos/sin of pos·inv_freq */
static void rope_tables(int max_pos, int rot, float *cs, float *sn) {
    for (int p = 0; p < max_pos; p++)
        for (int i = 0; i < rot / 2; i++) {
            double ang = p * pow(10000.0, -2.0 * i / rot);
            cs[p * (rot / 2) + i] = (float)cos(ang);
            sn[p * (rot / 2) + i] = (float)sin(ang);
        }
}

static void rope_case(mt_rope_style style, int n_tok, int n_head, int row_stride, int head_stride, int offset,
                      int rot) {
    const int max_pos = 64;
    float *cs = fzeros((size_t)max_pos * rot / 2), *sn = fzeros((size_t)max_pos * rot / 2);
    rope_tables(max_pos, rot, cs, sn);
    int32_t pos[16];
    for (int t = 0; t < n_tok; t++) pos[t] = (t * 7 + 3) % max_pos;
    size_t n = (size_t)n_tok * row_stride;
    float *x = frand(n, -1, 1, 20 + style), *y = fcopy(x, n), *want = fcopy(x, n);
    for (int t = 0; t < n_tok; t++)
        for (int h = 0; h < n_head; h++) {
            float *in = x + (size_t)t * row_stride + offset + (size_t)h * head_stride;
            float *o = want + (size_t)t * row_stride + offset + (size_t)h * head_stride;
            for (int j = 0; j < rot / 2; j++) {
                double ang = pos[t] * pow(10000.0, -2.0 * j / rot), c = cos(ang), s = sin(ang);
                int i0 = style == MT_ROPE_STYLE_HALF ? j : 2 * j, i1 = style == MT_ROPE_STYLE_HALF ? j + rot / 2 : 2 * j + 1;
                o[i0] = (float)(in[i0] * c - in[i1] * s);
                o[i1] = (float)(in[i1] * c + in[i0] * s);
            }
        }
    mt_rope_args a = {n_tok, n_head, row_stride, head_stride, rot, pos, cs, sn, style};
    mt_rope_forward(be, &a, y + offset);
    mt_test_assert_close("rope forward", y, want, n, 1e-6);
    /* everything outside the rotated sub-blocks is untouched */
    for (size_t i = 0; i < n; i++) {
        size_t in_row = i % (size_t)row_stride;
        bool rotated = false;
        for (int h = 0; h < n_head; h++) {
            size_t b0 = (size_t)offset + (size_t)h * head_stride;
            if (in_row >= b0 && in_row < b0 + (size_t)rot) rotated = true;
        }
        if (!rotated) assert_true(y[i] == x[i]);
    }
    /* backward: R(−θ) on the gradient, the untouched part passes through */
    float *r = frand(n, -1, 1, 30 + style), *g = fcopy(r, n), *work = fzeros(n);
    mt_rope_backward(be, &a, g + offset);
    /* the loss covers the buffer from the first rotated element on */
    rope_ctx c = {&a, x + offset, work + offset, r + offset, n - (size_t)offset};
    fd_check("rope dx", x + offset, n - (size_t)offset, 1, g + offset, rope_loss, &c, FD_TOL);
    /* forward then backward is the identity */
    float *z = fcopy(x, n);
    mt_rope_forward(be, &a, z + offset);
    mt_rope_backward(be, &a, z + offset);
    mt_test_assert_close("rope round trip", z, x, n, 1e-6);
    free(cs), free(sn), free(x), free(y), free(want), free(r), free(g), free(work), free(z);
}

static void test_rope(void **state) {
    (void)state;
    rope_case(MT_ROPE_STYLE_HALF, 5, 3, 3 * 16, 16, 0, 16);
    rope_case(MT_ROPE_STYLE_INTERLEAVED, 5, 3, 3 * 16, 16, 0, 16);
    /* MLA: each head is [nope 12 | rope 8] and only the rope part turns; rows padded */
    rope_case(MT_ROPE_STYLE_INTERLEAVED, 4, 2, 2 * 20 + 3, 20, 12, 8);
    rope_case(MT_ROPE_STYLE_HALF, 4, 2, 2 * 20 + 3, 20, 12, 8);
}

/* ---- SwiGLU and the sigmoid gate ---- */

typedef struct swiglu_ctx {
    float *g, *u, *h;
    const float *r;
    size_t n;
} swiglu_ctx;

static double swiglu_loss(void *p) {
    swiglu_ctx *c = p;
    mt_swiglu_forward(be, c->g, c->u, c->h, c->n);
    return wsum(c->h, c->r, c->n);
}

static void test_swiglu(void **state) {
    (void)state;
    const size_t n = 203;
    float *g = frand(n, -4, 4, 40), *u = frand(n, -2, 2, 41), *h = fzeros(n), *r = frand(n, -1, 1, 42);
    float *want = fzeros(n);
    for (size_t i = 0; i < n; i++) want[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
    mt_swiglu_forward(be, g, u, h, n);
    mt_test_assert_close("swiglu forward", h, want, n, 1e-6);
    float *dg = frand(n, -1, 1, 43), *dg0 = fcopy(dg, n), *du = frand(n, -1, 1, 44), *du0 = fcopy(du, n);
    mt_swiglu_backward(be, r, g, u, dg, du, n);
    float *gg = fdiff(dg, dg0, n), *gu = fdiff(du, du0, n);
    swiglu_ctx c = {g, u, h, r, n};
    fd_check("swiglu dg", g, n, 1, gg, swiglu_loss, &c, FD_TOL);
    fd_check("swiglu du", u, n, 1, gu, swiglu_loss, &c, FD_TOL);
    mt_swiglu_backward(be, r, g, u, NULL, du, n); /* a NULL gradient is skipped */
    free(g), free(u), free(h), free(r), free(want), free(dg), free(dg0), free(du), free(du0), free(gg), free(gu);
}

typedef struct gate_ctx {
    float *z, *x, *y;
    const float *y0, *r;
    int n, d;
} gate_ctx;

static double gate_loss(void *p) {
    gate_ctx *c = p;
    memcpy(c->y, c->y0, (size_t)c->n * c->d * sizeof(float));
    mt_sigmoid_gate_forward(be, c->z, c->x, c->y, c->n, c->d);
    return wsum(c->y, c->r, (size_t)c->n * c->d);
}

static void test_sigmoid_gate(void **state) {
    (void)state;
    const int n = 7, d = 19;
    float *z = frand(n, -3, 3, 50), *x = frand((size_t)n * d, -1, 1, 51), *y0 = frand((size_t)n * d, -1, 1, 52);
    float *y = fcopy(y0, (size_t)n * d), *r = frand((size_t)n * d, -1, 1, 53), *want = fzeros((size_t)n * d);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < d; i++)
            want[t * d + i] = (float)(y0[t * d + i] + x[t * d + i] / (1.0 + exp(-(double)z[t])));
    mt_sigmoid_gate_forward(be, z, x, y, n, d);
    mt_test_assert_close("sigmoid gate forward", y, want, (size_t)n * d, 1e-6);
    float *dz = frand(n, -1, 1, 54), *dz0 = fcopy(dz, n), *dx = frand((size_t)n * d, -1, 1, 55);
    float *dx0 = fcopy(dx, (size_t)n * d);
    mt_sigmoid_gate_backward(be, z, x, r, dz, dx, n, d);
    float *gz = fdiff(dz, dz0, n), *gx = fdiff(dx, dx0, (size_t)n * d);
    gate_ctx c = {z, x, y, y0, r, n, d};
    fd_check("sigmoid gate dz", z, n, 1, gz, gate_loss, &c, FD_TOL);
    fd_check("sigmoid gate dx", x, (size_t)n * d, 1, gx, gate_loss, &c, FD_TOL);
    free(z), free(x), free(y0), free(y), free(r), free(want), free(dz), free(dz0), free(dx), free(dx0), free(gz);
    free(gx);
}

/* ---- routing ---- */

/* transformers' own routers (tests/reference/kernels_route.py): the chosen set and the weights
 * must match; order within a token's k slots is not compared (HF uses sorted=False). */
static void test_route_hf_fixture(void **state) {
    (void)state;
    FILE *f = fopen(mt_test_fixture("kernels/route_hf.txt"), "r");
    assert_non_null(f);
    int cases = 0;
    char name[64], scoring[16], method[16], norm[16];
    int n_tok, E, k, n_group, topk_group, has_bias;
    float scale;
    while (fscanf(f, " case %63s %d %d %d %15s %15s %d %d %15s %f %d", name, &n_tok, &E, &k, scoring, method,
                  &n_group, &topk_group, norm, &scale, &has_bias) == 11) {
        float *bias = NULL;
        if (has_bias) {
            bias = fzeros(E);
            assert_int_equal(fscanf(f, " bias"), 0);
            for (int e = 0; e < E; e++) assert_int_equal(fscanf(f, "%f", &bias[e]), 1);
        }
        float *logits = fzeros((size_t)n_tok * E), *hw = fzeros((size_t)n_tok * k);
        int32_t *hidx = mt_xcalloc((size_t)n_tok * k, sizeof(int32_t));
        for (int t = 0; t < n_tok; t++) {
            for (int e = 0; e < E; e++) assert_int_equal(fscanf(f, "%f", &logits[t * E + e]), 1);
            assert_int_equal(fscanf(f, " |"), 0);
            for (int j = 0; j < k; j++) assert_int_equal(fscanf(f, "%d", &hidx[t * k + j]), 1);
            assert_int_equal(fscanf(f, " |"), 0);
            for (int j = 0; j < k; j++) assert_int_equal(fscanf(f, "%f", &hw[t * k + j]), 1);
        }
        mt_route_args a = {
            .n_tok = n_tok,
            .n_expert = E,
            .top_k = k,
            .scoring = strcmp(scoring, "softmax") == 0 ? MT_ROUTE_SCORING_SOFTMAX : MT_ROUTE_SCORING_SIGMOID,
            .method = strcmp(method, "greedy") == 0          ? MT_ROUTE_METHOD_GREEDY
                      : strcmp(method, "group_limited") == 0 ? MT_ROUTE_METHOD_GROUP_LIMITED
                                                             : MT_ROUTE_METHOD_NOAUX_TC,
            .n_group = n_group,
            .topk_group = topk_group,
            .bias = bias,
            .norm = strcmp(norm, "none") == 0  ? MT_ROUTE_NORM_NONE
                    : strcmp(norm, "sum") == 0 ? MT_ROUTE_NORM_SUM
                                               : MT_ROUTE_NORM_SUM_EPS,
            .scale = scale,
        };
        float *scores = fzeros((size_t)n_tok * E), *w = fzeros((size_t)n_tok * k);
        int32_t *idx = mt_xcalloc((size_t)n_tok * k, sizeof(int32_t));
        mt_route_forward(be, &a, logits, scores, idx, w);
        for (int t = 0; t < n_tok; t++)
            for (int j = 0; j < k; j++) {
                int found = -1;
                for (int i = 0; i < k; i++)
                    if (idx[t * k + i] == hidx[t * k + j]) found = i;
                if (found < 0) fail_msg("%s token %d: transformers chose expert %d, moetune did not", name, t, hidx[t * k + j]);
                if (fabsf(w[t * k + found] - hw[t * k + j]) > 1e-6f * (1 + fabsf(hw[t * k + j])))
                    fail_msg("%s token %d expert %d: weight %.9g, transformers %.9g", name, t, hidx[t * k + j],
                             (double)w[t * k + found], (double)hw[t * k + j]);
            }
        cases++;
        free(bias), free(logits), free(hw), free(hidx), free(scores), free(w), free(idx);
    }
    fclose(f);
    assert_int_equal(cases, 4);
}

static void test_route_rules(void **state) {
    (void)state;
    float scores[16], w[4];
    int32_t idx[4];
    /* ties go to the lowest index; chosen experts come in descending score order */
    float flat[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    mt_route_args a = {.n_tok = 1, .n_expert = 8, .top_k = 3, .norm = MT_ROUTE_NORM_SUM, .scale = 1};
    mt_route_forward(be, &a, flat, scores, idx, w);
    assert_int_equal(idx[0], 0), assert_int_equal(idx[1], 1), assert_int_equal(idx[2], 2);
    for (int j = 0; j < 3; j++) assert_float_equal(w[j], 1.0f / 3, 1e-7);
    float z[8] = {0.1f, 2, -1, 2, 3, 0, 0, 0};
    mt_route_forward(be, &a, z, scores, idx, w);
    assert_int_equal(idx[0], 4), assert_int_equal(idx[1], 1), assert_int_equal(idx[2], 3);

    /* sigmoid greedy without normalisation: w = σ(z)·scale */
    a.scoring = MT_ROUTE_SCORING_SIGMOID;
    a.norm = MT_ROUTE_NORM_NONE;
    a.scale = 2;
    mt_route_forward(be, &a, z, scores, idx, w);
    assert_float_equal(w[0], 2.0 / (1.0 + exp(-3.0)), 1e-6);
    assert_float_equal(scores[2], 1.0 / (1.0 + exp(1.0)), 1e-7);

    /* NOAUX_TC: every biased score of the kept group is negative. transformers masks the other
     * groups with −inf, so the negative experts are still chosen (a 0 mask would pick group 1).
     * Groups: {0,1} {2,3}; group 0 has the larger sum of top-2 biased scores. */
    float z4[4] = {4, 4, -4, -4};
    float bias[4] = {-1.5f, -1.6f, -0.2f, -0.3f}; /* s' ≈ {−0.518, −0.618, −0.182, −0.282} */
    mt_route_args v3 = {.n_tok = 1, .n_expert = 4, .top_k = 2, .scoring = MT_ROUTE_SCORING_SIGMOID,
                        .method = MT_ROUTE_METHOD_NOAUX_TC, .n_group = 2, .topk_group = 1, .bias = bias,
                        .norm = MT_ROUTE_NORM_SUM_EPS, .scale = 1};
    mt_route_forward(be, &v3, z4, scores, idx, w);
    /* group sums: g0 = −1.136, g1 = −0.464 → group 1 kept */
    assert_int_equal(idx[0], 2), assert_int_equal(idx[1], 3);
    float bias2[4] = {-0.6f, -0.6f, -1.2f, -1.3f}; /* s' ≈ {0.382, 0.382, −1.182, −1.282}: group 0 kept */
    v3.bias = bias2;
    float z5[4] = {4, 4, 4, 4};
    mt_route_forward(be, &v3, z5, scores, idx, w);
    assert_int_equal(idx[0], 0), assert_int_equal(idx[1], 1);
    assert_float_equal(w[0], 0.5f, 1e-7); /* weights are the unbiased, normalised scores */
    bias2[0] = -1.0f;                     /* s' ≈ {−0.018, 0.382, ...}: group 0 still kept, expert 0 negative */
    mt_route_forward(be, &v3, z5, scores, idx, w);
    assert_int_equal(idx[0], 1), assert_int_equal(idx[1], 0);

    /* GROUP_LIMITED keeps the groups with the largest maximum; others cannot be chosen */
    float z8[8] = {1, 0, 0, 0, 3, -5, 0.5f, 0.4f};
    mt_route_args v2 = {.n_tok = 1, .n_expert = 8, .top_k = 3, .method = MT_ROUTE_METHOD_GROUP_LIMITED,
                        .n_group = 4, .topk_group = 2, .norm = MT_ROUTE_NORM_NONE, .scale = 1};
    mt_route_forward(be, &v2, z8, scores, idx, w);
    /* group maxima: {1, 0, 3, 0.5} → groups 2 and 0 → experts 4, 0, then 1 (0 beats nothing else) */
    assert_int_equal(idx[0], 4), assert_int_equal(idx[1], 0), assert_int_equal(idx[2], 1);
    assert_float_equal(w[0], scores[4], 0), assert_float_equal(w[2], scores[1], 0);
    double sum = 0;
    for (int e = 0; e < 8; e++) sum += scores[e];
    assert_float_equal(sum, 1.0, 1e-6); /* scores are the unmasked softmax */
}

typedef struct route_ctx {
    const mt_route_args *a;
    float *logits, *scores, *w;
    int32_t *idx;
    const int32_t *idx0;
    const float *rw, *rs;
} route_ctx;

static double route_loss(void *p) {
    route_ctx *c = p;
    const mt_route_args *a = c->a;
    mt_route_forward(be, a, c->logits, c->scores, c->idx, c->w);
    if (memcmp(c->idx, c->idx0, (size_t)a->n_tok * a->top_k * sizeof(int32_t)) != 0)
        fail_msg("a finite-difference step changed the expert selection: the test's logits sit too close to a tie");
    return wsum(c->w, c->rw, (size_t)a->n_tok * a->top_k) + wsum(c->scores, c->rs, (size_t)a->n_tok * a->n_expert);
}

/* Logits on a grid spaced 0.35 apart, shuffled per token, so no finite-difference step comes
 * near a selection tie. */
static float *separated_logits(int n_tok, int E, uint64_t seed) {
    float *z = fzeros((size_t)n_tok * E);
    mt_rng rng;
    mt_rng_seed(&rng, seed);
    for (int t = 0; t < n_tok; t++) {
        for (int e = 0; e < E; e++) z[t * E + e] = -2.0f + 0.35f * (float)e;
        for (int e = E - 1; e > 0; e--) {
            int j = (int)mt_rng_below(&rng, (uint64_t)e + 1);
            float tmp = z[t * E + e];
            z[t * E + e] = z[t * E + j];
            z[t * E + j] = tmp;
        }
    }
    return z;
}

static void route_fd_case(const char *what, mt_route_args *a, uint64_t seed) {
    const int n = a->n_tok, E = a->n_expert, k = a->top_k;
    float *z = separated_logits(n, E, seed), *scores = fzeros((size_t)n * E), *w = fzeros((size_t)n * k);
    int32_t *idx = mt_xcalloc((size_t)n * k, sizeof(int32_t)), *idx0 = mt_xcalloc((size_t)n * k, sizeof(int32_t));
    float *rw = frand((size_t)n * k, -1, 1, seed + 1), *rs = frand((size_t)n * E, -1, 1, seed + 2);
    mt_route_forward(be, a, z, scores, idx0, w);
    float *dz = frand((size_t)n * E, -1, 1, seed + 3), *dz0 = fcopy(dz, (size_t)n * E);
    mt_route_backward(be, a, scores, idx0, rw, rs, dz);
    float *g = fdiff(dz, dz0, (size_t)n * E);
    route_ctx c = {a, z, scores, w, idx, idx0, rw, rs};
    fd_check(what, z, (size_t)n * E, 1, g, route_loss, &c, FD_TOL);
    /* without dscores only the weights' path remains (scores recomputed: the finite
     * differences left those of a perturbed input behind) */
    mt_route_forward(be, a, z, scores, idx, w);
    memcpy(dz, dz0, (size_t)n * E * sizeof(float));
    mt_route_backward(be, a, scores, idx0, rw, NULL, dz);
    float *zero_rs = fzeros((size_t)n * E);
    c.rs = zero_rs;
    free(g);
    g = fdiff(dz, dz0, (size_t)n * E);
    fd_check(what, z, (size_t)n * E, 3, g, route_loss, &c, FD_TOL);
    free(z), free(scores), free(w), free(idx), free(idx0), free(rw), free(rs), free(dz), free(dz0), free(g);
    free(zero_rs);
}

static void test_route_gradients(void **state) {
    (void)state;
    mt_route_args mixtral = {.n_tok = 5, .n_expert = 8, .top_k = 2, .scoring = MT_ROUTE_SCORING_SOFTMAX,
                             .method = MT_ROUTE_METHOD_GREEDY, .norm = MT_ROUTE_NORM_SUM, .scale = 1};
    route_fd_case("route softmax+sum d(logits)", &mixtral, 60);
    float bias[16];
    mt_test_fill_uniform(bias, 16, -0.05f, 0.05f, 61);
    mt_route_args v3 = {.n_tok = 4, .n_expert = 16, .top_k = 4, .scoring = MT_ROUTE_SCORING_SIGMOID,
                        .method = MT_ROUTE_METHOD_NOAUX_TC, .n_group = 4, .topk_group = 2, .bias = bias,
                        .norm = MT_ROUTE_NORM_SUM_EPS, .scale = 2.5f};
    route_fd_case("route sigmoid+noaux_tc+sum_eps d(logits)", &v3, 62);
    mt_route_args v2 = {.n_tok = 4, .n_expert = 16, .top_k = 3, .scoring = MT_ROUTE_SCORING_SOFTMAX,
                        .method = MT_ROUTE_METHOD_GROUP_LIMITED, .n_group = 4, .topk_group = 2,
                        .norm = MT_ROUTE_NORM_NONE, .scale = 1.5f};
    route_fd_case("route softmax+group_limited d(logits)", &v2, 63);
}

static void bad_route(void *arg) {
    (void)arg;
    float z[6] = {0}, s[6], w[4];
    int32_t idx[4];
    /* 6 experts in 4 groups */
    mt_route_args a = {.n_tok = 1, .n_expert = 6, .top_k = 2, .method = MT_ROUTE_METHOD_GROUP_LIMITED,
                       .n_group = 4, .topk_group = 1, .scale = 1};
    mt_route_forward(be, &a, z, s, idx, w);
}

static void test_route_invalid(void **state) {
    (void)state;
    expect_abort(bad_route, NULL, "n_expert % a->n_group == 0");
}

/* ---- expert dispatch ---- */

static void test_moe_permute(void **state) {
    (void)state;
    const int n_tok = 7, k = 3, E = 5;
    int32_t idx[21];
    mt_rng rng;
    mt_rng_seed(&rng, 70);
    for (int t = 0; t < n_tok; t++) /* distinct experts per token, expert 3 never used */
        for (int j = 0; j < k; j++) {
            int e;
            bool dup;
            do {
                e = (int)mt_rng_below(&rng, 4);
                e = e == 3 ? 4 : e;
                dup = false;
                for (int i = 0; i < j; i++) dup |= idx[t * k + i] == e;
            } while (dup);
            idx[t * k + j] = e;
        }
    int32_t offsets[6], src_tok[21], src_slot[21];
    mt_moe_permute(be, idx, n_tok, k, E, offsets, src_tok, src_slot);
    int r = 0;
    for (int e = 0; e < E; e++) {
        assert_int_equal(offsets[e], r);
        for (int i = 0; i < n_tok * k; i++) /* naive: scan slots in order */
            if (idx[i] == e) {
                assert_int_equal(src_slot[r], i);
                assert_int_equal(src_tok[r], i / k);
                r++;
            }
    }
    assert_int_equal(offsets[E], n_tok * k);
    assert_int_equal(offsets[3], offsets[4]);
}

typedef struct moe_ctx {
    const int32_t *src_tok, *src_slot;
    int n_rows, d, n_tok;
    float *x, *xp, *yp, *w, *y;
    const float *y0, *r;
} moe_ctx;

static double gather_loss(void *p) {
    moe_ctx *c = p;
    mt_gather_rows(be, c->x, c->src_tok, c->n_rows, c->d, c->xp);
    return wsum(c->xp, c->r, (size_t)c->n_rows * c->d);
}

static double unpermute_loss(void *p) {
    moe_ctx *c = p;
    memcpy(c->y, c->y0, (size_t)c->n_tok * c->d * sizeof(float));
    mt_moe_unpermute(be, c->yp, c->src_tok, c->src_slot, c->w, c->n_rows, c->d, c->y);
    return wsum(c->y, c->r, (size_t)c->n_tok * c->d);
}

static void test_moe_gather_unpermute(void **state) {
    (void)state;
    const int n_tok = 6, k = 2, E = 4, d = 70, n_rows = n_tok * k;
    const int32_t idx[12] = {0, 2, 2, 1, 3, 0, 2, 3, 1, 0, 0, 3};
    int32_t offsets[5], src_tok[12], src_slot[12];
    mt_moe_permute(be, idx, n_tok, k, E, offsets, src_tok, src_slot);
    float *x = frand((size_t)n_tok * d, -1, 1, 80), *xp = fzeros((size_t)n_rows * d);
    mt_gather_rows(be, x, src_tok, n_rows, d, xp);
    for (int r = 0; r < n_rows; r++)
        assert_memory_equal(xp + (size_t)r * d, x + (size_t)src_tok[r] * d, d * sizeof(float));
    float *rx = frand((size_t)n_rows * d, -1, 1, 81), *dx = frand((size_t)n_tok * d, -1, 1, 82);
    float *dx0 = fcopy(dx, (size_t)n_tok * d);
    mt_gather_rows_backward(be, rx, src_tok, n_rows, d, dx);
    float *gx = fdiff(dx, dx0, (size_t)n_tok * d);
    moe_ctx c = {.src_tok = src_tok, .src_slot = src_slot, .n_rows = n_rows, .d = d, .n_tok = n_tok, .x = x,
                 .xp = xp, .r = rx};
    fd_check("gather d(x)", x, (size_t)n_tok * d, 1, gx, gather_loss, &c, FD_TOL);

    float *yp = frand((size_t)n_rows * d, -1, 1, 83), *w = frand(n_rows, 0, 1, 84);
    float *y0 = frand((size_t)n_tok * d, -1, 1, 85), *y = fcopy(y0, (size_t)n_tok * d), *want = fcopy(y0, (size_t)n_tok * d);
    for (int t = 0; t < n_tok; t++) /* naive: for each token, its k slots */
        for (int j = 0; j < k; j++) {
            int slot = t * k + j, r = -1;
            for (int i = 0; i < n_rows; i++)
                if (src_slot[i] == slot) r = i;
            for (int i = 0; i < d; i++) want[t * d + i] += w[slot] * yp[(size_t)r * d + i];
        }
    mt_moe_unpermute(be, yp, src_tok, src_slot, w, n_rows, d, y);
    mt_test_assert_close("unpermute", y, want, (size_t)n_tok * d, 1e-6);
    float *ry = frand((size_t)n_tok * d, -1, 1, 86), *dyp = frand((size_t)n_rows * d, -1, 1, 87);
    float *dyp0 = fcopy(dyp, (size_t)n_rows * d), *dw = frand(n_rows, -1, 1, 88), *dw0 = fcopy(dw, n_rows);
    mt_moe_unpermute_backward(be, ry, yp, src_tok, src_slot, w, n_rows, d, dyp, dw);
    float *gyp = fdiff(dyp, dyp0, (size_t)n_rows * d), *gw = fdiff(dw, dw0, n_rows);
    c.yp = yp, c.w = w, c.y = y, c.y0 = y0, c.r = ry;
    fd_check("unpermute d(yp)", yp, (size_t)n_rows * d, 1, gyp, unpermute_loss, &c, FD_TOL);
    fd_check("unpermute d(w)", w, n_rows, 1, gw, unpermute_loss, &c, FD_TOL);
    free(x), free(xp), free(rx), free(dx), free(dx0), free(gx), free(yp), free(w), free(y0), free(y), free(want);
    free(ry), free(dyp), free(dyp0), free(dw), free(dw0), free(gyp), free(gw);
}

/* ---- cross-entropy ---- */

typedef struct ce_ctx {
    float *logits, *work, *losses;
    const int32_t *tg;
    int n, V;
    double scale;
} ce_ctx;

static double ce_loss(void *p) {
    ce_ctx *c = p;
    memcpy(c->work, c->logits, (size_t)c->n * c->V * sizeof(float));
    mt_cross_entropy(be, c->work, c->tg, c->n, c->V, 0.0f, c->losses);
    double s = 0;
    for (int t = 0; t < c->n; t++) s += c->losses[t];
    return s * c->scale;
}

static void test_cross_entropy(void **state) {
    (void)state;
    const int n = 5, V = 23;
    const int32_t tg[5] = {3, MT_IGNORE_INDEX, 22, 0, 3};
    float *z = frand((size_t)n * V, -3, 3, 90), *work = fcopy(z, (size_t)n * V), *losses = fzeros(n);
    float *want = fzeros(n);
    for (int t = 0; t < n; t++) {
        if (tg[t] == MT_IGNORE_INDEX) continue;
        double s = 0;
        for (int i = 0; i < V; i++) s += exp((double)z[t * V + i]);
        want[t] = (float)(log(s) - z[t * V + tg[t]]);
    }
    mt_cross_entropy(be, work, tg, n, V, 0.0f, losses);
    mt_test_assert_close("cross-entropy loss", losses, want, n, 1e-6);
    assert_memory_equal(work, z, (size_t)n * V * sizeof(float)); /* grad_scale 0: logits kept */

    const float gs = 0.25f; /* 1 / (4 targets) */
    mt_cross_entropy(be, work, tg, n, V, gs, losses);
    mt_test_assert_close("cross-entropy loss (with grad)", losses, want, n, 1e-6);
    for (int i = 0; i < V; i++) assert_true(work[1 * V + i] == 0.0f); /* ignored row */
    ce_ctx c = {z, fzeros((size_t)n * V), losses, tg, n, V, gs};
    float *grad = fcopy(work, (size_t)n * V);
    fd_check("cross-entropy d(logits)", z, (size_t)n * V, 1, grad, ce_loss, &c, FD_TOL);

    /* huge logits: no overflow, the loss is the gap to the winner */
    float big[3] = {1000.0f, 990.0f, -1000.0f};
    int32_t t1 = 1;
    float l;
    mt_cross_entropy(be, big, &t1, 1, 3, 1.0f, &l);
    assert_float_equal(l, 10.0 + log1p(exp(-10.0)), 1e-4);
    assert_true(isfinite(big[0]) && big[1] < 0);
    free(z), free(work), free(losses), free(want), free(c.work), free(grad);
}

static void bad_target(void *arg) {
    (void)arg;
    float z[4] = {0};
    int32_t t = 4;
    float l;
    mt_cross_entropy(be, z, &t, 1, 4, 0.0f, &l);
}

static void test_cross_entropy_invalid(void **state) {
    (void)state;
    expect_abort(bad_target, NULL, "y == MT_IGNORE_INDEX || (y >= 0 && y < V)");
}

/* ---- AdamW ---- */

static void test_adamw(void **state) {
    (void)state;
    const int n = 5;
    float p[5] = {0.5f, -1.0f, 2.0f, 0.0f, -0.25f}, m[5] = {0}, v[5] = {0};
    double pd[5], md[5] = {0}, vd[5] = {0};
    for (int i = 0; i < n; i++) pd[i] = p[i];
    const float grads[3][5] = {{0.1f, -0.2f, 0.3f, 0.0f, 1.0f}, {-0.3f, 0.1f, 0.2f, 0.5f, -1.0f},
                               {0.05f, 0.05f, -0.4f, 0.2f, 0.3f}};
    mt_adamw_args a = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
    for (int s = 1; s <= 3; s++) {
        a.step = s;
        mt_adamw_step(be, &a, p, grads[s - 1], m, v, n);
        for (int i = 0; i < n; i++) { /* by hand, in double */
            double g = grads[s - 1][i];
            pd[i] -= 1e-2 * 0.1 * pd[i];
            md[i] = 0.9 * md[i] + 0.1 * g;
            vd[i] = 0.999 * vd[i] + 0.001 * g * g;
            double mh = md[i] / (1 - pow(0.9, s)), vh = vd[i] / (1 - pow(0.999, s));
            pd[i] -= 1e-2 * mh / (sqrt(vh) + 1e-8);
        }
        for (int i = 0; i < n; i++) {
            assert_float_equal(p[i], pd[i], 2e-6);
            assert_float_equal(m[i], md[i], 1e-7);
            assert_float_equal(v[i], vd[i], 1e-9);
        }
    }
}

/* ten steps of torch.optim.AdamW itself (tests/reference/kernels_adamw.py) */
static void test_adamw_torch_fixture(void **state) {
    (void)state;
    FILE *f = fopen(mt_test_fixture("kernels/adamw_torch.txt"), "r");
    assert_non_null(f);
    mt_adamw_args a;
    int steps, n;
    assert_int_equal(fscanf(f, "%lf %lf %lf %lf %lf %d %d", &a.lr, &a.beta1, &a.beta2, &a.eps, &a.weight_decay,
                            &steps, &n),
                     7);
    float *p = fzeros(n), *m = fzeros(n), *v = fzeros(n), *g = fzeros((size_t)steps * n);
    float *want = fzeros(3 * (size_t)n);
    for (int i = 0; i < n; i++) assert_int_equal(fscanf(f, "%f", &p[i]), 1);
    for (int i = 0; i < steps * n; i++) assert_int_equal(fscanf(f, "%f", &g[i]), 1);
    for (int i = 0; i < 3 * n; i++) assert_int_equal(fscanf(f, "%f", &want[i]), 1);
    fclose(f);
    for (int s = 1; s <= steps; s++) {
        a.step = s;
        mt_adamw_step(be, &a, p, g + (size_t)(s - 1) * n, m, v, n);
    }
    /* m and v follow torch's fused multiply-adds exactly; p differs by torch's inexact sqrt */
    mt_test_assert_close("adamw p vs torch", p, want, n, 1e-6);
    mt_test_assert_close("adamw exp_avg vs torch", m, want + n, n, 1e-7);
    mt_test_assert_close("adamw exp_avg_sq vs torch", v, want + 2 * n, n, 1e-7);
    free(p), free(m), free(v), free(g), free(want);
}

/* ---- determinism across thread counts ---- */

static void test_threads_bit_identical(void **state) {
    (void)state;
    mt_backend *b1, *b2;
    mt_error err = {0};
    assert_int_equal(mt_backend_init(&b1, MT_BACKEND_CPU, 1, &err), MT_OK);
    assert_int_equal(mt_backend_init(&b2, MT_BACKEND_CPU, 2, &err), MT_OK);
    mt_backend *bs[2] = {b1, b2};

    const int n = 300, d = 256, V = 40, E = 64, k = 6;
    float *x = frand((size_t)n * d, -2, 2, 100), *w = frand(d, 0.5f, 1.5f, 101), *dy = frand((size_t)n * d, -1, 1, 102);
    int32_t *tok = mt_xcalloc(n, sizeof(int32_t));
    for (int t = 0; t < n; t++) tok[t] = (t * 13) % V;
    float *zl = frand((size_t)n * E, -3, 3, 103), *bias = frand(E, -0.1f, 0.1f, 104), *rw = frand((size_t)n * k, -1, 1, 105);
    float *logits = frand((size_t)n * 500, -4, 4, 106);
    int32_t *tg = mt_xcalloc(n, sizeof(int32_t));
    for (int t = 0; t < n; t++) tg[t] = t % 7 == 0 ? MT_IGNORE_INDEX : (t * 31) % 500;

    float *out[2][12];
    double ssq[2];
    for (int bi = 0; bi < 2; bi++) {
        mt_backend *b = bs[bi];
        float **o = out[bi];
        o[0] = fzeros((size_t)n * d), o[1] = fzeros(n), o[2] = fzeros((size_t)n * d), o[3] = fzeros(d);
        mt_rmsnorm_forward(b, x, w, o[0], o[1], n, d, 1e-6f);
        mt_rmsnorm_backward(b, dy, x, w, o[1], o[2], o[3], n, d);
        o[4] = fzeros((size_t)V * d);
        mt_embedding_backward(b, tok, n, dy, d, o[4]);
        mt_route_args ra = {.n_tok = n, .n_expert = E, .top_k = k, .scoring = MT_ROUTE_SCORING_SIGMOID,
                            .method = MT_ROUTE_METHOD_NOAUX_TC, .n_group = 8, .topk_group = 4, .bias = bias,
                            .norm = MT_ROUTE_NORM_SUM_EPS, .scale = 2.5f};
        o[5] = fzeros((size_t)n * E), o[6] = fzeros((size_t)n * k), o[7] = fzeros((size_t)n * E);
        int32_t *idx = mt_xcalloc((size_t)n * k, sizeof(int32_t)), *src_tok = mt_xcalloc((size_t)n * k, sizeof(int32_t));
        int32_t *src_slot = mt_xcalloc((size_t)n * k, sizeof(int32_t)), offsets[65];
        mt_route_forward(b, &ra, zl, o[5], idx, o[6]);
        mt_route_backward(b, &ra, o[5], idx, rw, NULL, o[7]);
        mt_moe_permute(b, idx, n, k, E, offsets, src_tok, src_slot);
        const int rows = n * k, dd = 64;
        float *yp = frand((size_t)rows * dd, -1, 1, 107);
        o[8] = fzeros((size_t)n * dd), o[9] = fzeros((size_t)rows * dd), o[10] = fzeros((size_t)rows);
        mt_moe_unpermute(b, yp, src_tok, src_slot, o[6], rows, dd, o[8]);
        mt_moe_unpermute_backward(b, dy, yp, src_tok, src_slot, o[6], rows, dd, o[9], o[10]);
        mt_gather_rows_backward(b, yp, src_tok, rows, dd, o[8]);
        o[11] = fcopy(logits, (size_t)n * 500);
        float *losses = fzeros(n);
        mt_cross_entropy(b, o[11], tg, n, 500, 0.01f, losses);
        mt_add(b, o[11], losses, 1.0f, (size_t)n);
        ssq[bi] = mt_sum_squares(b, x, (size_t)n * d);
        free(idx), free(src_tok), free(src_slot), free(yp), free(losses);
    }
    const size_t sizes[12] = {(size_t)n * d, n, (size_t)n * d, d, (size_t)V * d, (size_t)n * E, (size_t)n * k,
                              (size_t)n * E, (size_t)n * 64, (size_t)n * k * 64, (size_t)n * k, (size_t)n * 500};
    for (int i = 0; i < 12; i++) {
        if (memcmp(out[0][i], out[1][i], sizes[i] * sizeof(float)) != 0)
            fail_msg("output %d differs between 1 and 2 threads", i);
        free(out[0][i]), free(out[1][i]);
    }
    assert_true(ssq[0] == ssq[1]);
    /* OpenBLAS blocks sgemm differently per thread count (documented in kernels.h): the same
     * count repeats its bits exactly, different counts agree to rounding */
    const int m = 200;
    float *a = frand((size_t)m * m, -1, 1, 108), *c1 = fzeros((size_t)m * m), *c2 = fzeros((size_t)m * m);
    float *c3 = fzeros((size_t)m * m);
    mt_matmul(b2, false, true, m, m, m, 1, a, m, a, m, 0, c2, m);
    mt_matmul(b1, false, true, m, m, m, 1, a, m, a, m, 0, c1, m);
    mt_matmul(b2, false, true, m, m, m, 1, a, m, a, m, 0, c3, m);
    assert_memory_equal(c2, c3, (size_t)m * m * sizeof(float));
    mt_test_assert_close("sgemm 1 vs 2 threads", c1, c2, (size_t)m * m, 1e-6);
    free(a), free(c1), free(c2), free(c3);
    free(x), free(w), free(dy), free(tok), free(zl), free(bias), free(rw), free(logits), free(tg);
    mt_backend_free(b1);
    mt_backend_free(b2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backend_basics),
        cmocka_unit_test(test_backend_errors),
        cmocka_unit_test(test_preferred_coretype),
        cmocka_unit_test(test_sgemm_gflops),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_sigmoid_gate),
        cmocka_unit_test(test_route_hf_fixture),
        cmocka_unit_test(test_route_rules),
        cmocka_unit_test(test_route_gradients),
        cmocka_unit_test(test_route_invalid),
        cmocka_unit_test(test_moe_permute),
        cmocka_unit_test(test_moe_gather_unpermute),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_cross_entropy_invalid),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_adamw_torch_fixture),
        cmocka_unit_test(test_threads_bit_identical),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
