/* test_lowp.c — frozen weights in low precision: the bf16/f16/int8 GEMMs (forward and dx, the
 * few-rows and tiled paths, odd shapes and strides) against mt_matmul on the same dequantised
 * values; a bf16 checkpoint used straight from its mapping (no fp32 copy) giving the logits,
 * decode, LoRA gradients and content hash of the fp32 model of the same values, merge on it;
 * INT8 quantisation's per-element bound, what it leaves alone, and its cost in logits. */
#include "model_testlib.h"

#include "model/model-impl.h"
#include "peft/lora.h"

#include <math.h>

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

/* ---- the kernels ---- */

/* A random weight of the given type and its dequantised values, computed here independently of
 * the kernel's converter (model.h's scalar conversions, q·s). */
typedef struct test_weight {
    mt_lowp_weight w;
    void *store;
    float *scales;
    float *deq; /* [out, in] */
} test_weight;

static void weight_make(test_weight *t, mt_lowp_type type, int out, int in, int group, uint64_t seed) {
    size_t n = (size_t)out * in;
    float *v = mt_xmalloc(n * sizeof(float));
    mt_test_fill_uniform(v, n, -1.0f, 1.0f, seed);
    t->deq = mt_xmalloc(n * sizeof(float));
    t->scales = NULL;
    if (type == MT_LOWP_Q8) {
        int ng = (in + group - 1) / group;
        int8_t *q = t->store = mt_xmalloc(n);
        t->scales = mt_xmalloc((size_t)out * ng * sizeof(float));
        mt_test_fill_uniform(t->scales, (size_t)out * ng, 0.001f, 0.02f, seed + 7);
        for (size_t i = 0; i < n; i++) q[i] = (int8_t)lrintf(v[i] * 127.0f);
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++)
                t->deq[(size_t)o * in + i] = (float)q[(size_t)o * in + i] * t->scales[(size_t)o * ng + i / group];
    } else {
        uint16_t *h = t->store = mt_xmalloc(n * sizeof(uint16_t));
        for (size_t i = 0; i < n; i++) {
            h[i] = type == MT_LOWP_BF16 ? mt_f32_to_bf16(v[i]) : mt_f32_to_f16(v[i]);
            t->deq[i] = type == MT_LOWP_BF16 ? mt_bf16_to_f32(h[i]) : mt_f16_to_f32(h[i]);
        }
    }
    t->w = (mt_lowp_weight){.type = type, .out = out, .in = in, .w = t->store, .scales = t->scales, .group = group};
    free(v);
}

static void weight_free(test_weight *t) {
    free(t->store);
    free(t->scales);
    free(t->deq);
}

static void gemm_case(mt_lowp_type type, int n, int out, int in, int group, int pad) {
    test_weight t;
    weight_make(&t, type, out, in, group, (uint64_t)(n * 131 + out * 7 + in));
    int ldx = in + pad, ldy = out + pad;
    float *x = mt_xmalloc((size_t)n * ldx * sizeof(float));
    float *y = mt_xmalloc((size_t)n * ldy * sizeof(float)), *yr = mt_xmalloc((size_t)n * ldy * sizeof(float));
    mt_test_fill_uniform(x, (size_t)n * ldx, -1.0f, 1.0f, 11);
    mt_test_fill_uniform(y, (size_t)n * ldy, -9.0f, 9.0f, 12); /* overwritten: garbage must not leak */
    memcpy(yr, y, (size_t)n * ldy * sizeof(float));
    mt_lowp_matmul(g_be, &t.w, n, x, ldx, y, ldy);
    mt_matmul(g_be, false, true, n, out, in, 1.0f, x, ldx, t.deq, in, 0.0f, yr, ldy);
    char what[96];
    snprintf(what, sizeof what, "forward type %d n %d out %d in %d", (int)type, n, out, in);
    mt_test_assert_close(what, y, yr, (size_t)n * ldy, 1e-5);

    /* dx += dy·W on a non-zero dx: accumulation */
    float *dy = mt_xmalloc((size_t)n * ldy * sizeof(float));
    float *dx = mt_xmalloc((size_t)n * ldx * sizeof(float)), *dxr = mt_xmalloc((size_t)n * ldx * sizeof(float));
    mt_test_fill_uniform(dy, (size_t)n * ldy, -1.0f, 1.0f, 13);
    mt_test_fill_uniform(dx, (size_t)n * ldx, -1.0f, 1.0f, 14);
    memcpy(dxr, dx, (size_t)n * ldx * sizeof(float));
    mt_lowp_matmul_dx(g_be, &t.w, n, dy, ldy, dx, ldx);
    mt_matmul(g_be, false, false, n, in, out, 1.0f, dy, ldy, t.deq, in, 1.0f, dxr, ldx);
    snprintf(what, sizeof what, "dx type %d n %d out %d in %d", (int)type, n, out, in);
    mt_test_assert_close(what, dx, dxr, (size_t)n * ldx, 1e-5);

    /* the converter itself, on a window that starts and ends inside groups */
    if (in > 10) {
        float seg[64];
        int i0 = 3, cnt = in - 5 < 64 ? in - 5 : 64;
        mt_lowp_row_to_f32(&t.w, out - 1, i0, cnt, seg);
        for (int i = 0; i < cnt; i++) assert_true(seg[i] == t.deq[(size_t)(out - 1) * in + i0 + i]);
    }
    free(x);
    free(y);
    free(yr);
    free(dy);
    free(dx);
    free(dxr);
    weight_free(&t);
}

static void gemm_against_fp32(void **state) {
    (void)state;
    /* n <= 8 takes the dot-product path, larger n the tiles (TILE_O 64, TILE_K 512, rows in
     * chunks of 256): shapes straddle every boundary and leave remainders of 8-wide vectors */
    static const int shapes[][3] = {{1, 1, 1},     {1, 37, 53},    {3, 64, 200},  {8, 130, 513},
                                    {9, 70, 77},   {33, 65, 1030}, {300, 129, 40}, {257, 3, 520}};
    for (int type = 0; type < 3; type++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int group = type == MT_LOWP_Q8 ? (s % 2 ? 32 : 64) : 0;
            gemm_case((mt_lowp_type)type, shapes[s][0], shapes[s][1], shapes[s][2], group, (int)(s % 3) * 3);
        }
    /* one thread gives the same bits as two: the decomposition is fixed */
    mt_backend *one = NULL;
    mt_error err = {0};
    assert_int_equal(mt_backend_init(&one, MT_BACKEND_CPU, 1, &err), MT_OK);
    test_weight t;
    weight_make(&t, MT_LOWP_BF16, 150, 700, 0, 5);
    int n = 40;
    float *x = mt_xmalloc((size_t)n * 700 * sizeof(float));
    float *y1 = mt_xmalloc((size_t)n * 150 * sizeof(float)), *y2 = mt_xmalloc((size_t)n * 150 * sizeof(float));
    mt_test_fill_uniform(x, (size_t)n * 700, -1.0f, 1.0f, 6);
    mt_lowp_matmul(one, &t.w, n, x, 700, y1, 150);
    mt_lowp_matmul(g_be, &t.w, n, x, 700, y2, 150);
    assert_memory_equal(y1, y2, (size_t)n * 150 * sizeof(float));
    free(x);
    free(y1);
    free(y2);
    weight_free(&t);
    mt_backend_free(one);
}

/* The few-rows forward (n = 1 .. 8, the decode path) against a double-precision product of the
 * dequantised weights, element by element within 1e-5 of Σ|x·w| (input sizes that are odd
 * multiples of the group, or not multiples of 8, so a Q8 row's last group is short; output
 * counts that are not multiples of the kernel's channel blocking of 4 or 2). A row's bits do not depend on how many
 * rows share the call, nor on the thread count. */
static void few_rows_against_double(void **state) {
    (void)state;
    static const int shapes[][3] = {/* out, in, Q8 group */ {1, 8, 8},   {3, 24, 8},    {5, 120, 8},
                                    {7, 264, 24}, {13, 53, 8}, {9, 77, 24}, {37, 200, 40}, {66, 1032, 24}};
    mt_backend *one = NULL;
    mt_error err = {0};
    assert_int_equal(mt_backend_init(&one, MT_BACKEND_CPU, 1, &err), MT_OK);
    for (int type = 0; type < 3; type++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int out = shapes[s][0], in = shapes[s][1];
            const int group = type == MT_LOWP_Q8 ? shapes[s][2] : 0;
            test_weight t;
            weight_make(&t, (mt_lowp_type)type, out, in, group, (uint64_t)(out * 7 + in + type));
            const int ldx = in + 3, ldy = out + 2, N = 8;
            float *x = mt_xmalloc((size_t)N * ldx * sizeof(float));
            float *y8 = mt_xmalloc((size_t)N * ldy * sizeof(float)), *y = mt_xmalloc((size_t)N * ldy * sizeof(float));
            mt_test_fill_uniform(x, (size_t)N * ldx, -1.0f, 1.0f, 21 + s);
            mt_lowp_matmul(g_be, &t.w, N, x, ldx, y8, ldy);
            for (int r = 0; r < N; r++)
                for (int o = 0; o < out; o++) {
                    double ref = 0, mag = 0;
                    for (int i = 0; i < in; i++) {
                        double v = (double)x[(size_t)r * ldx + i] * t.deq[(size_t)o * in + i];
                        ref += v;
                        mag += fabs(v);
                    }
                    double e = fabs(y8[(size_t)r * ldy + o] - ref);
                    if (e > 1e-5 * mag + 1e-30)
                        fail_msg("few rows, type %d out %d in %d: y[%d, %d] = %.9g, want %.9g", type, out, in, r, o,
                                 (double)y8[(size_t)r * ldy + o], ref);
                }
            for (int n = 1; n <= N; n++) {
                mt_lowp_matmul(n % 2 ? one : g_be, &t.w, n, x, ldx, y, ldy);
                for (int r = 0; r < n; r++)
                    assert_memory_equal(y + (size_t)r * ldy, y8 + (size_t)r * ldy, (size_t)out * sizeof(float));
            }
            free(x);
            free(y8);
            free(y);
            weight_free(&t);
        }
    mt_backend_free(one);
}

/* ---- models ---- */

static mt_model *random_model(mt_family f, uint64_t seed) {
    mt_error err = {0};
    mt_config cfg;
    if (mt_config_preset(&cfg, f, "tiny", 64, &err) != MT_OK) fail_msg("%s", err.msg);
    cfg.tie_word_embeddings = false;
    cfg.bos_token_id = 1;
    cfg.n_eos = 1;
    cfg.eos_token_ids[0] = 2;
    mt_model *m = NULL;
    if (mt_model_init_random(&m, &cfg, seed, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    return m;
}

static mt_model *save_and_load(const mt_model *m, const char *dir, mt_dtype dt) {
    mt_error err = {0};
    if (mt_model_save(m, dir, dt, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_model *back = NULL;
    if (mt_model_load(&back, dir, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    return back;
}

enum { LB = 2, LT = 9 };

static float *logits_of(mt_model *m, const mt_adapter *ad) {
    mt_error err = {0};
    int V = mt_model_config(m)->vocab_size;
    mt_workspace *ws = NULL;
    if (mt_workspace_init(&ws, m, LB, LT, false, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t tokens[LB * LT];
    random_tokens(tokens, LB * LT, V, 3);
    float *out = mt_xmalloc((size_t)LB * LT * V * sizeof(float));
    mt_batch b = {.B = LB, .T = LT, .tokens = tokens};
    mt_forward_opts o = {.logits_out = out, .adapter = ad};
    if (mt_model_forward(m, ws, &b, &o, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_workspace_free(ws);
    return out;
}

/* Logits of the last of 6 tokens decoded one at a time through the KV cache (the decode
 * GEMMs take the few-rows path). */
static float *decode_logits(mt_model *m) {
    mt_error err = {0};
    int V = mt_model_config(m)->vocab_size;
    mt_kv_cache *c = NULL;
    if (mt_kv_cache_init(&c, m, 16, &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t tokens[6];
    random_tokens(tokens, 6, V, 4);
    float *out = mt_xmalloc((size_t)V * sizeof(float));
    if (mt_model_decode(m, c, tokens, 3, out, &err) != MT_OK) fail_msg("%s", err.msg);
    for (int i = 3; i < 6; i++)
        if (mt_model_decode(m, c, tokens + i, 1, out, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_kv_cache_free(c);
    return out;
}

/* One LoRA training step's gradients (toy adapters on an attention, an expert and the LM head)
 * and the input gradient; everything is copied into one malloc'ed array of *n floats. */
static float *lora_grads(mt_model *m, size_t *n) {
    mt_error err = {0};
    const mt_config *cfg = mt_model_config(m);
    toy_set *ts = toy_set_new(m);
    const char *mods[] = {"model.layers.1.self_attn.o_proj", "model.layers.1.mlp.experts.2.down_proj",
                          "model.layers.0.mlp.up_proj", "lm_head"};
    for (int k = 0; k < 4; k++) {
        mt_linear *L = mt_model_find_linear(m, mods[k]);
        if (!L) continue;
        toy_add(ts, m, toy_linear_index(m, mods[k]), 4, 100 + (uint64_t)k);
    }
    mt_workspace *ws = NULL;
    if (mt_workspace_init(&ws, m, LB, LT, true, 8, &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t tokens[LB * LT], targets[LB * LT];
    random_tokens(tokens, LB * LT, cfg->vocab_size, 5);
    random_tokens(targets, LB * LT, cfg->vocab_size, 6);
    mt_batch b = {.B = LB, .T = LT, .tokens = tokens, .targets = targets};
    mt_forward_opts o = {.train = true, .seed = 1, .adapter = &ts->view};
    mt_forward_result r;
    if (mt_model_forward(m, ws, &b, &o, &r, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_model_backward(m, ws, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    size_t total = (size_t)LB * LT * cfg->hidden_size;
    for (int i = 0; i < ts->n; i++)
        if (ts->ad[i]) total += (size_t)ts->ad[i]->r * (ts->ad[i]->in + ts->ad[i]->out);
    float *g = mt_xmalloc(total * sizeof(float)), *p = g;
    memcpy(p, mt_workspace_input_grad(ws), (size_t)LB * LT * cfg->hidden_size * sizeof(float));
    p += (size_t)LB * LT * cfg->hidden_size;
    for (int i = 0; i < ts->n; i++) {
        toy_adapter *a = ts->ad[i];
        if (!a) continue;
        memcpy(p, a->dA, (size_t)a->r * a->in * sizeof(float));
        p += (size_t)a->r * a->in;
        memcpy(p, a->dB, (size_t)a->out * a->r * sizeof(float));
        p += (size_t)a->out * a->r;
    }
    *n = total;
    mt_workspace_free(ws);
    toy_set_free(ts);
    return g;
}

static bool is_linear_weight(mt_model *m, const mt_param *p) {
    for (int j = 0; j < mt_model_linear_count(m); j++)
        if (mt_model_linear(m, j)->weight == p) return true;
    return false;
}

static void bf16_model_like_fp32(void **state) {
    (void)state;
    static const mt_family fams[] = {MT_FAMILY_DEEPSEEK_V3, MT_FAMILY_QWEN2_MOE};
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        mt_model *m = random_model(fams[f], 21 + f);
        char name[64];
        snprintf(name, sizeof name, "lowp_bf16_%zu", f);
        mt_model *bf = save_and_load(m, mt_test_tmpdir(name), MT_DTYPE_BF16);
        /* the fp32 model of the same (bf16-rounded) values: the same file re-saved as F32 */
        snprintf(name, sizeof name, "lowp_bf16_f32_%zu", f);
        mt_model *ref = save_and_load(bf, mt_test_tmpdir(name), MT_DTYPE_F32);

        /* storage: linear weights in the mapping as bf16, no fp32 copy; the rest fp32 */
        int n16 = 0;
        for (int i = 0; i < mt_model_param_count(bf); i++) {
            mt_param *p = mt_model_param(bf, i);
            bool kvb = strstr(p->name, "kv_b_proj") != NULL;
            bool lin = is_linear_weight(bf, p) && p != mt_model_find_param(bf, "model.embed_tokens.weight");
            if (lin && !kvb) {
                if (p->dtype != MT_DTYPE_BF16) fail_msg("%s is %s, not BF16", p->name, mt_dtype_name(p->dtype));
                assert_null(p->data);
                assert_non_null(p->raw);
                assert_int_equal(bf->home[i], MT_PARAM_HOME_MMAP);
                n16++;
            } else {
                assert_int_equal(p->dtype, MT_DTYPE_F32);
                assert_non_null(p->data);
            }
        }
        assert_true(n16 > 10);
        /* the fp32 block holds only what is not a 16-bit linear weight */
        size_t block = 0, lin16 = 0;
        for (int i = 0; i < mt_model_param_count(bf); i++) {
            mt_param *p = mt_model_param(bf, i);
            if (bf->home[i] == MT_PARAM_HOME_BLOCK) block += (size_t)p->numel;
            if (p->dtype == MT_DTYPE_BF16) lin16 += (size_t)p->numel;
        }
        assert_true(lin16 > block);

        /* the content hash is that of the fp32 values, as before 16-bit storage */
        char hb[65], hr[65];
        mt_model_content_hash(bf, hb);
        mt_model_content_hash(ref, hr);
        assert_string_equal(hb, hr);

        /* logits, decode, LoRA gradients */
        int V = mt_model_config(bf)->vocab_size;
        float *lb = logits_of(bf, NULL), *lr = logits_of(ref, NULL);
        mt_test_assert_close("bf16 logits", lb, lr, (size_t)LB * LT * V, 1e-5);
        float *db = decode_logits(bf), *dr = decode_logits(ref);
        mt_test_assert_close("bf16 decode logits", db, dr, (size_t)V, 1e-5);
        size_t ng1, ng2;
        float *gb = lora_grads(bf, &ng1), *gr = lora_grads(ref, &ng2);
        assert_int_equal(ng1, ng2);
        mt_test_assert_close("LoRA gradients on a bf16 base", gb, gr, ng1, 1e-5);
        free(gb);
        free(gr);
        free(db);
        free(dr);

        /* a bf16 weight that gets a gradient becomes an fp32 master of the same values */
        mt_param *q = mt_model_find_param(bf, "model.layers.1.self_attn.o_proj.weight");
        mt_error err = {0};
        assert_int_equal(mt_model_require_grad(bf, q, &err), MT_OK);
        assert_int_equal(q->dtype, MT_DTYPE_F32);
        assert_null(q->raw);
        assert_non_null(q->grad);
        assert_memory_equal(q->data, mt_model_find_param(ref, q->name)->data, (size_t)q->numel * sizeof(float));
        mt_model_content_hash(bf, hb);
        assert_string_equal(hb, hr);

        /* merge on the bf16 base: W becomes fp32 W + s·B·A and the merged logits equal the
         * unmerged adapter's */
        mt_lora_config lc;
        mt_lora_config_default(&lc);
        const char *targets[] = {"all-linear"};
        lc.targets = targets;
        lc.n_targets = 1;
        mt_lora *l = NULL;
        if (mt_lora_attach(&l, bf, &lc, &err) != MT_OK) fail_msg("%s", err.msg);
        const mt_adapter *ad = mt_lora_adapter(l);
        for (int i = 0; i < ad->n_linears; i++)
            if (ad->lin[i]) {
                const mt_lowrank *d = ad->lin[i];
                mt_test_fill_uniform((float *)(uintptr_t)d->B, (size_t)mt_model_linear(bf, i)->out * d->r, -0.05f,
                                     0.05f, 40 + (uint64_t)i);
            }
        float *lu = logits_of(bf, ad);
        if (mt_lora_merge(l, &err) != MT_OK) fail_msg("%s", err.msg);
        mt_param *merged = mt_model_find_param(bf, "model.layers.0.self_attn.o_proj.weight");
        assert_int_equal(merged->dtype, MT_DTYPE_F32);
        assert_non_null(merged->data);
        float *lm = logits_of(bf, NULL);
        mt_test_assert_close("merged on a bf16 base", lm, lu, (size_t)LB * LT * V, 1e-5);
        mt_lora_free(l);
        free(lu);
        free(lm);
        free(lb);
        free(lr);
        mt_model_free(ref);
        mt_model_free(bf);
        mt_model_free(m);
    }
}

/* An f16 checkpoint written by hand (the writer stores F16 too) stays f16. */
static void f16_model_like_fp32(void **state) {
    (void)state;
    mt_model *m = random_model(MT_FAMILY_QWEN3_MOE, 31);
    mt_model *h = save_and_load(m, mt_test_tmpdir("lowp_f16"), MT_DTYPE_F16);
    mt_model *ref = save_and_load(h, mt_test_tmpdir("lowp_f16_f32"), MT_DTYPE_F32);
    assert_int_equal(mt_model_find_param(h, "model.layers.0.self_attn.q_proj.weight")->dtype, MT_DTYPE_F16);
    int V = mt_model_config(h)->vocab_size;
    float *a = logits_of(h, NULL), *b = logits_of(ref, NULL);
    mt_test_assert_close("f16 logits", a, b, (size_t)LB * LT * V, 1e-5);
    char h1[65], h2[65];
    mt_model_content_hash(h, h1);
    mt_model_content_hash(ref, h2);
    assert_string_equal(h1, h2);
    free(a);
    free(b);
    mt_model_free(ref);
    mt_model_free(h);
    mt_model_free(m);
}

/* ---- INT8 ---- */

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static void int8_quantisation(void **state) {
    (void)state;
    mt_error err = {0};
    static const mt_family fams[] = {MT_FAMILY_DEEPSEEK_V3, MT_FAMILY_MIXTRAL};
    static const int groups[] = {0, 32};
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        mt_model *m = random_model(fams[f], 51 + f);
        int V = mt_model_config(m)->vocab_size;
        float *l32 = logits_of(m, NULL);
        /* keep the fp32 values to check the bound against */
        int np = mt_model_param_count(m);
        float **orig = mt_xcalloc((size_t)np, sizeof(float *));
        for (int i = 0; i < np; i++) {
            mt_param *p = mt_model_param(m, i);
            orig[i] = mt_xmalloc((size_t)p->numel * sizeof(float));
            memcpy(orig[i], p->data, (size_t)p->numel * sizeof(float));
        }
        assert_int_equal(mt_model_quantize(m, MT_QUANT_INT8, 12, &err), MT_ERR_INVALID); /* not a multiple of 8 */
        assert_int_equal(mt_model_param(m, 0)->dtype, MT_DTYPE_F32);
        err = (mt_error){0};
        if (mt_model_quantize(m, MT_QUANT_INT8, groups[f], &err) != MT_OK) fail_msg("%s", err.msg);
        int want_group = groups[f] ? groups[f] : MT_QUANT_GROUP_DEFAULT;
        int nq = 0;
        for (int i = 0; i < np; i++) {
            mt_param *p = mt_model_param(m, i);
            bool keep = !is_linear_weight(m, p) || strstr(p->name, "kv_b_proj") || strstr(p->name, "mlp.gate.weight") ||
                        strstr(p->name, "block_sparse_moe.gate.weight");
            if (keep) {
                if (p->dtype != MT_DTYPE_F32) fail_msg("%s was quantised", p->name);
                assert_memory_equal(p->data, orig[i], (size_t)p->numel * sizeof(float));
                continue;
            }
            nq++;
            assert_int_equal(p->dtype, MT_DTYPE_I8);
            assert_null(p->data);
            assert_int_equal(p->qgroup, want_group);
            int out = (int)p->shape[0], in = (int)p->shape[1], ng = (in + want_group - 1) / want_group;
            const int8_t *q = p->raw;
            for (int o = 0; o < out; o++)
                for (int j = 0; j < in; j++) {
                    float s = p->qscale[(size_t)o * ng + j / want_group];
                    float w = orig[i][(size_t)o * in + j];
                    float e = fabsf(w - (float)q[(size_t)o * in + j] * s);
                    if (!(e <= s * 0.5f * (1.0f + 1e-5f) + 1e-12f))
                        fail_msg("%s[%d,%d]: |w − q·s| = %g > s/2 = %g", p->name, o, j, e, s / 2);
                    assert_true(q[(size_t)o * in + j] >= -127);
                }
        }
        assert_true(nq > 10);
        /* the fp32 copies left the block: it holds only what was not quantised */
        size_t block = 0;
        for (int i = 0; i < np; i++)
            if (m->home[i] == MT_PARAM_HOME_BLOCK) block += (size_t)mt_model_param(m, i)->numel;
        size_t kept = 0;
        for (int i = 0; i < np; i++)
            if (mt_model_param(m, i)->dtype == MT_DTYPE_F32) kept += (size_t)mt_model_param(m, i)->numel;
        assert_int_equal(block, kept);

        float *l8 = logits_of(m, NULL);
        double e = rel_l2(l8, l32, (size_t)LB * LT * V);
        print_message("int8 (group %d) logits vs fp32, %s: relative L2 error %.3g\n", want_group,
                      mt_family_name(fams[f]), e);
        assert_true(e < 0.05); /* measured 1.5% (deepseek_v3, 64) and 3.3% (mixtral, 32) on these random bases */

        /* the fp32 model of the dequantised values: same logits, decode and LoRA gradients */
        const char *dir = mt_test_tmpdir(f ? "lowp_q8_b" : "lowp_q8_a");
        mt_model *deq = save_and_load(m, dir, MT_DTYPE_F32);
        float *ld = logits_of(deq, NULL);
        mt_test_assert_close("int8 logits against its dequantised fp32 model", l8, ld, (size_t)LB * LT * V, 1e-5);
        float *d8 = decode_logits(m), *dd = decode_logits(deq);
        mt_test_assert_close("int8 decode", d8, dd, (size_t)V, 1e-5);
        size_t n1, n2;
        float *g8 = lora_grads(m, &n1), *gd = lora_grads(deq, &n2);
        assert_int_equal(n1, n2);
        mt_test_assert_close("LoRA gradients on an int8 base", g8, gd, n1, 1e-5);
        char h8[65], hd[65];
        mt_model_content_hash(m, h8);
        mt_model_content_hash(deq, hd);
        assert_string_equal(h8, hd);
        /* made writable (merge, training the weight): the dequantised values in fp32 */
        mt_param *p = mt_model_find_param(m, "model.layers.1.self_attn.o_proj.weight");
        assert_int_equal(mt_model_param_make_writable(m, p, &err), MT_OK);
        assert_int_equal(p->dtype, MT_DTYPE_F32);
        assert_memory_equal(p->data, mt_model_find_param(deq, p->name)->data, (size_t)p->numel * sizeof(float));
        free(g8);
        free(gd);
        free(d8);
        free(dd);
        free(ld);
        free(l8);
        free(l32);
        mt_model_free(deq);
        for (int i = 0; i < np; i++) free(orig[i]);
        free(orig);
        mt_model_free(m);
    }
}

/* A bf16 checkpoint quantised: from the mapping to int8 without an fp32 copy in between. */
static void int8_from_bf16(void **state) {
    (void)state;
    mt_error err = {0};
    mt_model *m = random_model(MT_FAMILY_DEEPSEEK_V3, 61);
    mt_model *bf = save_and_load(m, mt_test_tmpdir("lowp_q8_bf16"), MT_DTYPE_BF16);
    mt_model *ref = save_and_load(bf, mt_test_tmpdir("lowp_q8_bf16_f32"), MT_DTYPE_F32);
    if (mt_model_quantize(bf, MT_QUANT_INT8, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_model_quantize(ref, MT_QUANT_INT8, 0, &err) != MT_OK) fail_msg("%s", err.msg);
    char h1[65], h2[65];
    mt_model_content_hash(bf, h1);
    mt_model_content_hash(ref, h2);
    assert_string_equal(h1, h2); /* the same int8 values and scales from bf16 or its fp32 */
    assert_int_equal(mt_quant_from_name("int8", &(mt_quant){0}), MT_OK);
    assert_int_equal(mt_quant_from_name("int4", &(mt_quant){0}), MT_ERR_UNSUPPORTED);
    mt_model_free(ref);
    mt_model_free(bf);
    mt_model_free(m);
}

/* The CLI end to end: `init --dtype bf16` makes a model that generates and evaluates as stored
 * and on an int8 base; an unknown scheme is bad usage. */
static double eval_loss(const char *out) {
    const char *b = strstr(out, "\nbase");
    if (!b) fail_msg("no base line in:\n%s", out);
    double loss = NAN;
    if (sscanf(b + 5, "%lf", &loss) != 1) fail_msg("unreadable base line in:\n%s", out);
    return loss;
}

static void cli_bf16_and_int8(void **state) {
    (void)state;
    const char *tmp = mt_test_tmpdir("lowp_cli");
    char model[4200], data[4200];
    snprintf(model, sizeof model, "%s/model", tmp);
    snprintf(data, sizeof data, "%s/eval.jsonl", tmp);
    FILE *f = fopen(data, "w");
    assert_non_null(f);
    for (int i = 0; i < 6; i++)
        fprintf(f, "{\"text\": \"The licensee may copy and distribute verbatim copies, paragraph %d.\"}\n", i);
    fclose(f);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --dtype bf16 '%s'", model);
    if (rc != 0) fail_msg("init: %s", out);
    free(out);
    rc = mt_test_run_cli(&out, "generate --model '%s' --prompt 'The' --max-tokens 4 --temperature 0 --threads 2 "
                               "--quantize int8", model);
    if (rc != 0) fail_msg("generate --quantize int8: %s", out);
    free(out);
    rc = mt_test_run_cli(&out, "eval --model '%s' --data '%s' --threads 2", model, data);
    if (rc != 0) fail_msg("eval: %s", out);
    double l16 = eval_loss(out);
    free(out);
    rc = mt_test_run_cli(&out, "eval --model '%s' --data '%s' --threads 2 --quantize int8", model, data);
    if (rc != 0) fail_msg("eval --quantize int8: %s", out);
    double l8 = eval_loss(out);
    free(out);
    print_message("eval loss bf16 %.4f, int8 %.4f\n", l16, l8);
    assert_true(fabs(l8 - l16) < 0.01 * l16);
    rc = mt_test_run_cli(&out, "generate --model '%s' --prompt 'The' --quantize int4", model);
    assert_int_equal(rc, 2);
    free(out);

    /* export of an adapter merged onto the bf16 base: bf16 by default (the base's dtype), F32
     * when asked, and the bf16 file holds the F32 file's values rounded to bf16 */
    mt_error err = {0};
    mt_model *m = NULL;
    if (mt_model_load(&m, model, g_be, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_lora_config lc;
    mt_lora_config_default(&lc);
    const char *targets[] = {"o_proj"};
    lc.targets = targets;
    lc.n_targets = 1;
    mt_lora *l = NULL;
    if (mt_lora_attach(&l, m, &lc, &err) != MT_OK) fail_msg("%s", err.msg);
    for (int i = 0; i < mt_lora_tensor_count(l); i++) {
        mt_lora_tensor *t = mt_lora_tensor_at(l, i);
        mt_test_fill_uniform(t->data, (size_t)t->numel, -0.1f, 0.1f, 90 + (uint64_t)i);
    }
    char ad[4200], m16[4200], m32[4200];
    snprintf(ad, sizeof ad, "%s/adapter", tmp);
    snprintf(m16, sizeof m16, "%s/merged16", tmp);
    snprintf(m32, sizeof m32, "%s/merged32", tmp);
    if (mt_lora_save_peft(l, ad, NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_lora_free(l);
    mt_model_free(m);
    rc = mt_test_run_cli(&out, "export --merge '%s' --model '%s' --out '%s'", ad, model, m16);
    if (rc != 0) fail_msg("export: %s", out);
    free(out);
    rc = mt_test_run_cli(&out, "export --merge '%s' --model '%s' --out '%s' --dtype f32", ad, model, m32);
    if (rc != 0) fail_msg("export --dtype f32: %s", out);
    free(out);
    rc = mt_test_run_cli(&out, "export --merge '%s' --model '%s' --out '%s/x' --dtype int8", ad, model, tmp);
    assert_int_equal(rc, 2);
    free(out);
    mt_safetensors *a16, *a32;
    if (mt_safetensors_open(&a16, m16, &err) != MT_OK) fail_msg("%s", err.msg);
    if (mt_safetensors_open(&a32, m32, &err) != MT_OK) fail_msg("%s", err.msg);
    const mt_st_tensor *w16 = mt_safetensors_find(a16, "model.layers.0.self_attn.o_proj.weight");
    const mt_st_tensor *w32 = mt_safetensors_find(a32, "model.layers.0.self_attn.o_proj.weight");
    assert_non_null(w16);
    assert_non_null(w32);
    assert_int_equal(w16->dtype, MT_DTYPE_BF16);
    assert_int_equal(w32->dtype, MT_DTYPE_F32);
    assert_int_equal(w16->numel, w32->numel);
    const uint16_t *h = w16->data;
    const float *v = w32->data;
    for (int64_t i = 0; i < w16->numel; i++) assert_int_equal(h[i], mt_f32_to_bf16(v[i]));
    mt_safetensors_close(a16);
    mt_safetensors_close(a32);
    rc = mt_test_run_cli(&out, "eval --model '%s' --data '%s' --threads 2", m16, data);
    if (rc != 0) fail_msg("eval of the bf16 merge: %s", out);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gemm_against_fp32),   cmocka_unit_test(few_rows_against_double),
        cmocka_unit_test(bf16_model_like_fp32),
        cmocka_unit_test(f16_model_like_fp32), cmocka_unit_test(int8_quantisation),
        cmocka_unit_test(int8_from_bf16),      cmocka_unit_test(cli_bf16_and_int8),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
