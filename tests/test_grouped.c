/* test_grouped.c — the grouped expert GEMM: mt_grouped_matmul and its backward against a naive
 * double-precision loop for fp32, bf16, f16 and int8 weights (empty and one-row groups, 64
 * groups, odd shapes, tile edges, rows outside the groups untouched, thread counts 1 and 2
 * bit-identical), and the MoE layers of whole models through it against the per-expert loop
 * (mt_lin_forward/backward per expert): loss, input gradient, LoRA gradients on experts (with
 * dropout) and every parameter's gradient in full fine-tuning, fp32 (bit for bit on one thread)
 * and bf16 bases. */
#include "model_testlib.h"

#include "model/model-impl.h"

#include <math.h>

static mt_backend *g_be1, *g_be2;

static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    if (mt_backend_init(&g_be1, MT_BACKEND_CPU, 1, &err) != MT_OK) return -1;
    return mt_backend_init(&g_be2, MT_BACKEND_CPU, 2, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be1);
    mt_backend_free(g_be2);
    return 0;
}

/* ---- the op ---- */

enum { T_F32 = -1 }; /* a group's weight type: T_F32 or an mt_lowp_type */

typedef struct gweight {
    int type;
    float *f32;       /* fp32 weight (T_F32) */
    void *store;      /* bf16/f16/int8 values */
    float *scales;
    mt_lowp_weight lw;
    double *deq;      /* [out, in] the values the kernel must use, converted here */
} gweight;

static void gweight_make(gweight *w, int type, int out, int in, uint64_t seed) {
    size_t n = (size_t)out * in;
    float *v = mt_xmalloc(n * sizeof(float));
    mt_test_fill_uniform(v, n, -1.0f, 1.0f, seed);
    memset(w, 0, sizeof *w);
    w->type = type;
    w->deq = mt_xmalloc(n * sizeof(double));
    if (type == T_F32) {
        w->f32 = v;
        for (size_t i = 0; i < n; i++) w->deq[i] = v[i];
        return;
    }
    const int group = 32;
    if (type == MT_LOWP_Q8) {
        int ng = (in + group - 1) / group;
        int8_t *q = w->store = mt_xmalloc(n);
        w->scales = mt_xmalloc((size_t)out * ng * sizeof(float));
        mt_test_fill_uniform(w->scales, (size_t)out * ng, 0.001f, 0.02f, seed + 3);
        for (size_t i = 0; i < n; i++) q[i] = (int8_t)lrintf(v[i] * 127.0f);
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++)
                w->deq[(size_t)o * in + i] =
                    (double)((float)q[(size_t)o * in + i] * w->scales[(size_t)o * ng + i / group]);
    } else {
        uint16_t *h = w->store = mt_xmalloc(n * sizeof(uint16_t));
        for (size_t i = 0; i < n; i++) {
            h[i] = type == MT_LOWP_BF16 ? mt_f32_to_bf16(v[i]) : mt_f32_to_f16(v[i]);
            w->deq[i] = type == MT_LOWP_BF16 ? mt_bf16_to_f32(h[i]) : mt_f16_to_f32(h[i]);
        }
    }
    w->lw = (mt_lowp_weight){.type = (mt_lowp_type)type, .out = out, .in = in, .w = w->store, .scales = w->scales,
                             .group = group};
    free(v);
}

static void gweight_free(gweight *w) {
    free(w->f32);
    free(w->store);
    free(w->scales);
    free(w->deq);
}

/* |a − ref| ≤ tol·Σ|terms| elementwise: the fp32 rounding bound of a sum scales with the sum
 * of the magnitudes of its terms, not with the result. */
static void expect_close(const float *a, const double *ref, const double *mag, size_t n, double tol, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!(fabs(a[i] - ref[i]) <= tol * mag[i] + 1e-30))
            fail_msg("%s[%zu]: %.9g, naive %.9g (magnitude %.3g)", what, i, (double)a[i], ref[i], mag[i]);
}

/* One case: groups of the given sizes (after `lead` rows that belong to no group), two
 * projections of widths out0 and out1 over X [rows, in], each group's weights of type types[g % nt].
 * Forward, dx and dW against the naive loop, and bit-identical on 1 and 2 threads. */
static void grouped_case(const int *sizes, int G, int lead, int in, int out0, int out1, const int *types, int ntypes,
                         uint64_t seed) {
    const int outs[2] = {out0, out1};
    int32_t *off = mt_xmalloc((size_t)(G + 1) * sizeof(int32_t));
    off[0] = lead;
    for (int g = 0; g < G; g++) off[g + 1] = off[g] + sizes[g];
    const int rows = off[G] + 2; /* two rows after the groups, also untouched */
    float *x = mt_xmalloc((size_t)rows * in * sizeof(float));
    mt_test_fill_uniform(x, (size_t)rows * in, -1.0f, 1.0f, seed);
    gweight *w[2];
    const float **f32[2];
    mt_lowp_weight *lw[2];
    float **dw[2], **dw2[2];
    float *y[2], *y2[2], *y0[2], *dy[2];
    mt_grouped_proj p[2], p2[2];
    for (int k = 0; k < 2; k++) {
        w[k] = mt_xcalloc((size_t)G, sizeof(gweight));
        f32[k] = mt_xcalloc((size_t)G, sizeof(float *));
        lw[k] = mt_xcalloc((size_t)G, sizeof(mt_lowp_weight));
        dw[k] = mt_xcalloc((size_t)G, sizeof(float *));
        dw2[k] = mt_xcalloc((size_t)G, sizeof(float *));
        for (int g = 0; g < G; g++) {
            gweight_make(&w[k][g], types[(g + k) % ntypes], outs[k], in, seed * 977 + (uint64_t)(g * 2 + k));
            f32[k][g] = w[k][g].f32;
            lw[k][g] = w[k][g].lw;
            /* every other group's weight is frozen: no gradient */
            if ((g + k) % 3 != 2) {
                size_t nw = (size_t)outs[k] * in;
                dw[k][g] = mt_xmalloc(nw * sizeof(float));
                mt_test_fill_uniform(dw[k][g], nw, -0.5f, 0.5f, seed + 50 + (uint64_t)g);
                dw2[k][g] = mt_xmalloc(nw * sizeof(float));
                memcpy(dw2[k][g], dw[k][g], nw * sizeof(float));
            }
        }
        size_t ny = (size_t)rows * outs[k];
        y[k] = mt_xmalloc(ny * sizeof(float));
        y2[k] = mt_xmalloc(ny * sizeof(float));
        dy[k] = mt_xmalloc(ny * sizeof(float));
        mt_test_fill_uniform(y[k], ny, -7.0f, 7.0f, seed + 10 + (uint64_t)k); /* garbage: overwritten */
        memcpy(y2[k], y[k], ny * sizeof(float));
        y0[k] = mt_xmalloc(ny * sizeof(float));
        memcpy(y0[k], y[k], ny * sizeof(float));
        mt_test_fill_uniform(dy[k], ny, -1.0f, 1.0f, seed + 20 + (uint64_t)k);
        p[k] = (mt_grouped_proj){.out = outs[k], .f32 = f32[k], .lowp = lw[k], .y = y[k], .dy = dy[k], .dw = dw[k]};
        p2[k] = p[k];
        p2[k].y = y2[k];
        p2[k].dw = dw2[k];
    }
    float *dx = mt_xmalloc((size_t)rows * in * sizeof(float)), *dx2 = mt_xmalloc((size_t)rows * in * sizeof(float));
    mt_test_fill_uniform(dx, (size_t)rows * in, -0.5f, 0.5f, seed + 30);
    memcpy(dx2, dx, (size_t)rows * in * sizeof(float));
    float *dx0 = mt_xmalloc((size_t)rows * in * sizeof(float));
    memcpy(dx0, dx, (size_t)rows * in * sizeof(float));

    mt_grouped_matmul(g_be2, G, off, in, x, 2, p);
    mt_grouped_matmul(g_be1, G, off, in, x, 2, p2);
    mt_grouped_matmul_backward(g_be2, G, off, in, x, dx, 2, p);
    mt_grouped_matmul_backward(g_be1, G, off, in, x, dx2, 2, p2);

    /* thread counts: bit for bit */
    for (int k = 0; k < 2; k++) {
        assert_memory_equal(y[k], y2[k], (size_t)rows * outs[k] * sizeof(float));
        for (int g = 0; g < G; g++)
            if (dw[k][g]) assert_memory_equal(dw[k][g], dw2[k][g], (size_t)outs[k] * in * sizeof(float));
    }
    assert_memory_equal(dx, dx2, (size_t)rows * in * sizeof(float));

    /* the naive loop */
    const double tol = 4e-6;
    for (int k = 0; k < 2; k++) {
        const int out = outs[k];
        double *ref = mt_xmalloc((size_t)out * sizeof(double)), *mag = mt_xmalloc((size_t)out * sizeof(double));
        for (int r = 0; r < rows; r++) {
            int g = -1;
            for (int h = 0; h < G; h++)
                if (r >= off[h] && r < off[h + 1]) g = h;
            if (g < 0) { /* no group's row: left as it was */
                assert_memory_equal(y[k] + (size_t)r * out, y0[k] + (size_t)r * out, (size_t)out * sizeof(float));
                continue;
            }
            for (int o = 0; o < out; o++) {
                double s = 0, a = 0;
                for (int i = 0; i < in; i++) {
                    double t = (double)x[(size_t)r * in + i] * w[k][g].deq[(size_t)o * in + i];
                    s += t;
                    a += fabs(t);
                }
                ref[o] = s;
                mag[o] = a;
            }
            expect_close(y[k] + (size_t)r * out, ref, mag, (size_t)out, tol, "y");
        }
        /* dW_g = dW0 + dY_gᵀ·X_g */
        for (int g = 0; g < G; g++) {
            if (!dw[k][g]) continue;
            float *d0 = mt_xmalloc((size_t)out * in * sizeof(float));
            mt_test_fill_uniform(d0, (size_t)out * in, -0.5f, 0.5f, seed + 50 + (uint64_t)g);
            double *rr = mt_xmalloc((size_t)in * sizeof(double)), *mm = mt_xmalloc((size_t)in * sizeof(double));
            for (int o = 0; o < out; o++) {
                for (int i = 0; i < in; i++) {
                    double s = d0[(size_t)o * in + i], a = fabs(s);
                    for (int r = off[g]; r < off[g + 1]; r++) {
                        double t = (double)dy[k][(size_t)r * out + o] * x[(size_t)r * in + i];
                        s += t;
                        a += fabs(t);
                    }
                    rr[i] = s;
                    mm[i] = a;
                }
                expect_close(dw[k][g] + (size_t)o * in, rr, mm, (size_t)in, tol, "dW");
            }
            free(d0);
            free(rr);
            free(mm);
        }
        free(ref);
        free(mag);
    }
    /* dX = dX0 + Σ_k dY_k·W_k; rows outside the groups keep dX0 */
    double *ref = mt_xmalloc((size_t)in * sizeof(double)), *mag = mt_xmalloc((size_t)in * sizeof(double));
    for (int r = 0; r < rows; r++) {
        int g = -1;
        for (int h = 0; h < G; h++)
            if (r >= off[h] && r < off[h + 1]) g = h;
        for (int i = 0; i < in; i++) {
            double s = dx0[(size_t)r * in + i], a = fabs(s);
            for (int k = 0; g >= 0 && k < 2; k++)
                for (int o = 0; o < outs[k]; o++) {
                    double t = (double)dy[k][(size_t)r * outs[k] + o] * w[k][g].deq[(size_t)o * in + i];
                    s += t;
                    a += fabs(t);
                }
            ref[i] = s;
            mag[i] = a;
        }
        if (g < 0) assert_memory_equal(dx + (size_t)r * in, dx0 + (size_t)r * in, (size_t)in * sizeof(float));
        expect_close(dx + (size_t)r * in, ref, mag, (size_t)in, tol, "dx");
    }
    free(ref);
    free(mag);

    for (int k = 0; k < 2; k++) {
        for (int g = 0; g < G; g++) {
            gweight_free(&w[k][g]);
            free(dw[k][g]);
            free(dw2[k][g]);
        }
        free(w[k]);
        free(f32[k]);
        free(lw[k]);
        free(dw[k]);
        free(dw2[k]);
        free(y[k]);
        free(y2[k]);
        free(y0[k]);
        free(dy[k]);
    }
    free(dx);
    free(dx2);
    free(dx0);
    free(x);
    free(off);
}

static const int all_types[] = {T_F32, MT_LOWP_BF16, MT_LOWP_F16, MT_LOWP_Q8};

static void op_small_and_empty_groups(void **state) {
    (void)state;
    /* 0 and 1 rows, the 4-row and 2-column blocks' edges, the few-rows/sgemm border (8 / 9) */
    static const int sizes[] = {0, 1, 2, 3, 4, 5, 0, 7, 8, 9, 13, 1, 0};
    const int G = (int)(sizeof sizes / sizeof sizes[0]);
    for (int t = 0; t < 4; t++) grouped_case(sizes, G, 3, 37, 29, 11, &all_types[t], 1, 100 + (uint64_t)t);
    grouped_case(sizes, G, 0, 40, 8, 3, all_types, 4, 7); /* mixed types, one call */
}

static void op_tile_edges(void **state) {
    (void)state;
    /* a group past ROW_CHUNK (256) rows; in past TILE_K (512) and DX_COLS; out past FWD_COLS (128) */
    static const int sizes[] = {260, 0, 20, 1, 9};
    static const int f32_only[] = {T_F32}, q8_only[] = {MT_LOWP_Q8};
    grouped_case(sizes, 5, 1, 520, 130, 5, f32_only, 1, 200);
    grouped_case(sizes, 5, 1, 520, 130, 5, q8_only, 1, 201);
}

static void op_many_groups(void **state) {
    (void)state;
    int sizes[64];
    mt_rng r;
    mt_rng_seed(&r, 5);
    for (int g = 0; g < 64; g++) sizes[g] = (int)mt_rng_below(&r, 14); /* 0 .. 13 rows, both paths */
    static const int f32_only[] = {T_F32}, bf16_only[] = {MT_LOWP_BF16}, q8_only[] = {MT_LOWP_Q8};
    grouped_case(sizes, 64, 0, 72, 48, 48, f32_only, 1, 300);
    grouped_case(sizes, 64, 0, 72, 48, 48, bf16_only, 1, 301);
    grouped_case(sizes, 64, 0, 72, 48, 48, q8_only, 1, 302);
}

/* No groups, or only empty ones: nothing is read or written. */
static void op_nothing_to_do(void **state) {
    (void)state;
    int32_t off[4] = {2, 2, 2, 2};
    float y = 42.0f, dx = 7.0f;
    mt_grouped_proj p = {.out = 3, .y = &y, .dy = &y};
    mt_grouped_matmul(g_be2, 3, off, 5, NULL, 1, &p);
    mt_grouped_matmul_backward(g_be2, 3, off, 5, NULL, &dx, 1, &p);
    mt_grouped_matmul(g_be2, 0, off, 5, NULL, 1, &p);
    assert_true(y == 42.0f && dx == 7.0f);
    assert_true(mt_backend_supports(g_be2, MT_OP_GROUPED_MATMUL));
    assert_string_equal(mt_op_name(MT_OP_GROUPED_MATMUL), "grouped_matmul");
}

/* ---- the MoE layer: grouped against the per-expert loop ---- */

enum { MB = 3, MT_ = 16 };

static mt_model *random_model(mt_backend *be, mt_family f, int n_experts, uint64_t seed) {
    mt_error err = {0};
    mt_config cfg;
    if (mt_config_preset(&cfg, f, "tiny", 64, &err) != MT_OK) fail_msg("%s", err.msg);
    cfg.tie_word_embeddings = false;
    cfg.bos_token_id = 1;
    cfg.n_eos = 1;
    cfg.eos_token_ids[0] = 2;
    if (n_experts > 0) {
        cfg.n_experts = n_experts;
        if (cfg.n_group > 1 && n_experts % cfg.n_group) cfg.n_group = cfg.topk_group = 1;
    }
    mt_model *m = NULL;
    if (mt_model_init_random(&m, &cfg, seed, be, &err) != MT_OK) fail_msg("%s", err.msg);
    return m;
}

typedef struct step_out {
    double loss;
    float *g;  /* input gradient, then adapter or parameter gradients */
    size_t n;
} step_out;

/* One training step (dropout on when the adapters have it), everything the backward wrote
 * copied out. */
static step_out train_step(mt_model *m, toy_set *ts, bool full) {
    mt_error err = {0};
    const mt_config *cfg = mt_model_config(m);
    mt_model_zero_grad(m);
    if (ts)
        for (int i = 0; i < ts->n; i++)
            if (ts->ad[i]) {
                memset(ts->ad[i]->dA, 0, (size_t)ts->ad[i]->r * ts->ad[i]->in * sizeof(float));
                memset(ts->ad[i]->dB, 0, (size_t)ts->ad[i]->out * ts->ad[i]->r * sizeof(float));
            }
    mt_workspace *ws = NULL;
    if (mt_workspace_init(&ws, m, MB, MT_, true, 8, &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t tokens[MB * MT_], targets[MB * MT_];
    random_tokens(tokens, MB * MT_, cfg->vocab_size, 5);
    random_tokens(targets, MB * MT_, cfg->vocab_size, 6);
    mt_batch b = {.B = MB, .T = MT_, .tokens = tokens, .targets = targets};
    mt_forward_opts o = {.train = true, .seed = 9, .aux_coef = 0.01f, .adapter = ts ? &ts->view : NULL};
    mt_forward_result r;
    if (mt_model_forward(m, ws, &b, &o, &r, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_model_backward(m, ws, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    step_out s = {.loss = r.loss_sum / (double)r.n_tokens};
    size_t nin = (size_t)MB * MT_ * cfg->hidden_size, total = nin;
    if (ts)
        for (int i = 0; i < ts->n; i++)
            if (ts->ad[i]) total += (size_t)ts->ad[i]->r * (ts->ad[i]->in + ts->ad[i]->out);
    if (full)
        for (int i = 0; i < mt_model_param_count(m); i++) total += mt_model_param(m, i)->numel;
    s.g = mt_xmalloc(total * sizeof(float));
    float *p = s.g;
    memcpy(p, mt_workspace_input_grad(ws), nin * sizeof(float));
    p += nin;
    if (ts)
        for (int i = 0; i < ts->n; i++) {
            toy_adapter *a = ts->ad[i];
            if (!a) continue;
            memcpy(p, a->dA, (size_t)a->r * a->in * sizeof(float));
            p += (size_t)a->r * a->in;
            memcpy(p, a->dB, (size_t)a->out * a->r * sizeof(float));
            p += (size_t)a->out * a->r;
        }
    if (full)
        for (int i = 0; i < mt_model_param_count(m); i++) {
            const mt_param *q = mt_model_param(m, i);
            memcpy(p, q->grad, q->numel * sizeof(float));
            p += q->numel;
        }
    s.n = total;
    mt_workspace_free(ws);
    return s;
}

/* Grouped and per-expert loop: with `exact` the same bits (fp32 weights on one thread: the same
 * sgemm calls in the same order), else the same loss and gradients to fp32 rounding (two threads:
 * OpenBLAS blocks the loop's multithreaded products otherwise; low precision: the few-rows
 * kernel sums in another order), max |a − b| ≤ 1e-5·max |b|. */
static void compare_paths(mt_model *m, toy_set *ts, bool full, bool exact, const char *what) {
    mt_moe_set_expert_loop(true);
    step_out ref = train_step(m, ts, full);
    mt_moe_set_expert_loop(false);
    step_out got = train_step(m, ts, full);
    assert_int_equal(ref.n, got.n);
    if (exact) {
        assert_true(ref.loss == got.loss);
        assert_memory_equal(ref.g, got.g, ref.n * sizeof(float));
    }
    assert_true(fabs(ref.loss - got.loss) <= 1e-6 * fabs(ref.loss));
    double scale = 0, worst = 0;
    for (size_t i = 0; i < ref.n; i++) {
        scale = fmax(scale, fabs(ref.g[i]));
        worst = fmax(worst, fabs((double)ref.g[i] - got.g[i]));
    }
    assert_true(scale > 0);
    if (!(worst <= 1e-5 * scale)) fail_msg("%s: gradients differ by %.3g (largest %.3g)", what, worst, scale);
    free(ref.g);
    free(got.g);
}

/* LoRA on every routed expert's gate, up and down of every layer (with dropout); thread counts 1
 * and 2 on the first family. */
static void moe_lora_on_experts(void **state) {
    (void)state;
    static const mt_family fams[] = {MT_FAMILY_DEEPSEEK_V3, MT_FAMILY_QWEN2_MOE, MT_FAMILY_OLMOE};
    mt_backend *bes[] = {g_be1, g_be2};
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++)
        for (int b = 0; b < (f == 0 ? 2 : 1); b++) {
            mt_model *m = random_model(bes[b], fams[f], 0, 40 + f);
            toy_set *ts = toy_set_new(m);
            for (int i = 0; i < ts->n; i++)
                if (strstr(mt_model_linear(m, i)->module, ".experts.")) toy_add(ts, m, i, 4, 500 + (uint64_t)i);
            ts->view.dropout = 0.1f;
            char what[96];
            snprintf(what, sizeof what, "LoRA on experts, %s, %d thread(s)", mt_family_name(fams[f]), b + 1);
            compare_paths(m, ts, false, b == 0, what);
            toy_set_free(ts);
            mt_model_free(m);
        }
}

/* Full fine-tuning: every parameter's gradient, with the preset's experts (groups of many rows)
 * and 64 (groups of a few, empty ones among them), on 1 and 2 threads. */
static void moe_full_finetune(void **state) {
    (void)state;
    mt_backend *bes[] = {g_be1, g_be2};
    static const int experts[] = {0, 64};
    for (int e = 0; e < 2; e++)
        for (int b = 0; b < 2; b++) {
            mt_error err = {0};
            mt_model *m = random_model(bes[b], MT_FAMILY_QWEN3_MOE, experts[e], 60 + (uint64_t)e);
            for (int i = 0; i < mt_model_param_count(m); i++)
                if (mt_model_require_grad(m, mt_model_param(m, i), &err) != MT_OK) fail_msg("%s", err.msg);
            char what[96];
            snprintf(what, sizeof what, "full fine-tuning, %d experts, %d thread(s)", experts[e], b + 1);
            compare_paths(m, NULL, true, b == 0, what);
            mt_model_free(m);
        }
}

/* A bf16 base (expert weights converted in the kernel) with LoRA on some experts. */
static void moe_bf16_base(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = random_model(g_be2, MT_FAMILY_MIXTRAL, 0, 70);
    const char *dir = mt_test_tmpdir("grouped_bf16");
    if (mt_model_save(m, dir, MT_DTYPE_BF16, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_model_free(m);
    if (mt_model_load(&m, dir, g_be2, &err) != MT_OK) fail_msg("%s", err.msg);
    toy_set *ts = toy_set_new(m);
    int added = 0;
    for (int i = 0; i < ts->n; i++)
        if (strstr(mt_model_linear(m, i)->module, ".experts.") && i % 2) {
            assert_true(mt_model_linear(m, i)->weight->dtype == MT_DTYPE_BF16);
            toy_add(ts, m, i, 4, 800 + (uint64_t)i);
            added++;
        }
    assert_true(added > 0);
    compare_paths(m, ts, false, false, "bf16 base, LoRA on experts");
    toy_set_free(ts);
    mt_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(op_small_and_empty_groups),
        cmocka_unit_test(op_tile_edges),
        cmocka_unit_test(op_many_groups),
        cmocka_unit_test(op_nothing_to_do),
        cmocka_unit_test(moe_lora_on_experts),
        cmocka_unit_test(moe_full_finetune),
        cmocka_unit_test(moe_bf16_base),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
