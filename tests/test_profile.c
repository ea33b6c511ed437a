/* test_profile.c — the profiler on tiny random models: FLOPs per part and layer equal counts
 * written here by hand from config.json's shapes (deepseek_v3 with MLA, qwen2_moe with biases,
 * a gated shared expert and bf16 weights); routed rows sum to tokens × top_k and the expert
 * FLOPs to Σ rows × per-row FLOPs; a LoRA delta's FLOPs are a part of their own; the LM head's
 * bytes follow the stored dtype; profiling changes no loss bit; `moetune profile`'s JSON parses
 * and its totals are the sums of its parts; missing --input, an unknown metric and a bad input
 * line are errors that say so. */
#define _GNU_SOURCE
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

static char root[4096], v3_dir[4200], q2_dir[4200], input_path[4200];

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "%s", mt_test_tmpdir("profile"));
    snprintf(v3_dir, sizeof v3_dir, "%s/v3", root);
    snprintf(q2_dir, sizeof q2_dir, "%s/q2", root);
    snprintf(input_path, sizeof input_path, "%s/input.jsonl", root);
    FILE *f = fopen(input_path, "w");
    if (!f) return -1;
    for (int i = 0; i < 12; i++)
        fprintf(f, "{\"text\": \"The licensee shall not distribute the software without written consent, clause %d.\"}\n",
                i);
    fprintf(f, "a plain text line is a document too\n");
    fclose(f);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "init --preset tiny --seed 3 --tokenizer '%s' '%s'",
                             mt_test_fixture("tokenizers/deepseek_v3"), v3_dir);
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    if (rc) return -1;
    rc = mt_test_run_cli(&out, "init --preset tiny --family qwen2_moe --dtype bf16 --seed 4 --tokenizer '%s' '%s'",
                         mt_test_fixture("tokenizers/deepseek_v3"), q2_dir);
    if (rc != 0) fprintf(stderr, "%s\n", out);
    free(out);
    return rc == 0 ? 0 : -1;
}

/* FLOPs of one part of layer l for B sequences of T tokens, from the config alone:
 * 2·m·n·k per GEMM, 4 per RMSNorm element, and the attention core's two matmuls over the
 * T(T+1)/2 causal (query, key) pairs of each sequence and head. */
static double hand_flops(const mt_config *c, int l, mt_prof_part part, int B, int T) {
    double N = (double)B * T, H = c->hidden_size, nh = c->n_heads;
    bool moe = c->layer_is_moe[l];
    double qk = c->mla ? c->qk_nope_head_dim + c->qk_rope_head_dim : c->head_dim;
    double vh = c->mla ? c->v_head_dim : c->head_dim;
    switch (part) {
    case MT_PROF_NORM: return 2 * 4 * N * H;
    case MT_PROF_ATTN_PROJ:
        if (c->mla) {
            double ql = c->q_lora_rank, kvl = c->kv_lora_rank, rope = c->qk_rope_head_dim;
            double q = ql > 0 ? 2 * N * H * ql + 4 * N * ql + 2 * N * ql * nh * qk : 2 * N * H * nh * qk;
            double kv = 2 * N * H * (kvl + rope) + 4 * N * kvl + 2 * N * kvl * nh * (c->qk_nope_head_dim + vh);
            return q + kv + 2 * N * nh * vh * H;
        }
        return 2 * N * H * nh * qk + 2 * 2 * N * H * c->n_kv_heads * qk + 2 * N * nh * vh * H;
    case MT_PROF_ATTN_CORE: return B * (T * (T + 1) / 2.0) * nh * 2 * (qk + vh);
    case MT_PROF_DENSE_MLP: return moe ? 0 : 3 * 2 * N * H * c->intermediate_size;
    case MT_PROF_ROUTER: return moe ? 2 * N * H * c->n_experts : 0;
    case MT_PROF_EXPERTS: return moe ? N * c->top_k * 3 * 2 * H * c->moe_intermediate_size : 0;
    case MT_PROF_SHARED: {
        if (!moe) return 0;
        double w = (double)c->moe_intermediate_size * c->n_shared_experts + c->shared_intermediate_size;
        return 3 * 2 * N * H * w + (c->shared_expert_gate ? 2 * N * H : 0);
    }
    default: return 0;
    }
}

static void fill_batch(int32_t *tok, int32_t *tgt, int n, int T, int V) {
    uint64_t s = 12345;
    for (int i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        tok[i] = (int32_t)((s >> 33) % (uint64_t)V);
    }
    for (int i = 0; i < n; i++) tgt[i] = (i % T) + 1 < T ? tok[i + 1] : MT_IGNORE_INDEX;
}

static void check_model(const char *dir, bool bf16) {
    mt_error err = {0};
    mt_backend *be = NULL;
    assert_int_equal(mt_backend_init(&be, MT_BACKEND_CPU, 1, &err), MT_OK);
    mt_model *m = NULL;
    assert_int_equal(mt_model_load(&m, dir, be, &err), MT_OK);
    const mt_config *c = mt_model_config(m);
    int B = 2, T = 24, N = B * T;
    mt_workspace *ws = NULL;
    assert_int_equal(mt_workspace_init(&ws, m, B, T, false, 0, &err), MT_OK);
    int32_t tok[48], tgt[48];
    fill_batch(tok, tgt, N, T, c->vocab_size);
    mt_batch batch = {.B = B, .T = T, .tokens = tok, .targets = tgt};

    /* the same forward without and with the profiler: every token loss bit for bit */
    mt_forward_result r0, r1;
    assert_int_equal(mt_model_forward(m, ws, &batch, NULL, &r0, &err), MT_OK);
    float *loss0 = malloc((size_t)N * sizeof(float));
    memcpy(loss0, r0.token_loss, (size_t)N * sizeof(float));
    mt_profile *p = NULL;
    mt_dap_opts dap = {.threshold = 1.0f, .n_sink_blocks = 1, .n_local_blocks = 1, .mass_floor = 0};
    assert_int_equal(mt_profile_init(&p, m, &dap, 8, &err), MT_OK);
    mt_model_set_profile(m, p);
    assert_int_equal(mt_model_forward(m, ws, &batch, NULL, &r1, &err), MT_OK);
    mt_model_set_profile(m, NULL);
    assert_true(memcmp(&r0.loss_sum, &r1.loss_sum, sizeof(double)) == 0);
    assert_memory_equal(loss0, r1.token_loss, (size_t)N * sizeof(float));
    free(loss0);

    static const mt_prof_part layer_parts[] = {MT_PROF_NORM,      MT_PROF_ATTN_PROJ, MT_PROF_ATTN_CORE, MT_PROF_ROUTER,
                                               MT_PROF_EXPERTS,   MT_PROF_SHARED,    MT_PROF_DENSE_MLP};
    double sum = 0;
    for (int l = 0; l < c->n_layers; l++) {
        for (size_t k = 0; k < sizeof layer_parts / sizeof layer_parts[0]; k++) {
            double want = hand_flops(c, l, layer_parts[k], B, T);
            double got = mt_profile_cell(p, l, layer_parts[k])->flops;
            if (got != want)
                fail_msg("%s layer %d %s: %.0f FLOPs, hand count %.0f", dir, l, mt_prof_part_name(layer_parts[k]), got,
                         want);
            sum += want;
        }
        assert_true(mt_profile_cell(p, l, MT_PROF_ATTN_PROJ)->seconds > 0);
        uint64_t tokens, used;
        const uint64_t *tpe = mt_profile_routing(p, l, &tokens, &used);
        if (!c->layer_is_moe[l]) {
            assert_null(tpe);
            continue;
        }
        /* every token goes to top_k experts; the experts' FLOPs are Σ rows × per-row FLOPs */
        assert_non_null(tpe);
        uint64_t rows = 0;
        double per_row = 3 * 2.0 * c->hidden_size * c->moe_intermediate_size, ex = 0;
        for (int e = 0; e < c->n_experts; e++) {
            rows += tpe[e];
            ex += (double)tpe[e] * per_row;
        }
        assert_int_equal(tokens, (uint64_t)N);
        assert_int_equal(rows, (uint64_t)N * c->top_k);
        assert_int_equal(used, (uint64_t)N * c->top_k);
        assert_true(ex == mt_profile_cell(p, l, MT_PROF_EXPERTS)->flops);
        /* the DAP rule saw every query of every head, each over its own blocks */
        mt_dap_counts dc = mt_profile_dap(p, l);
        assert_int_equal(dc.queries, (uint64_t)N * c->n_heads);
    }
    /* model level: final norm and LM head; the LM head reads its weight as stored */
    int L = c->n_layers;
    double H = c->hidden_size, V = c->vocab_size;
    assert_true(mt_profile_cell(p, L, MT_PROF_NORM)->flops == 4.0 * N * H);
    assert_true(mt_profile_cell(p, L, MT_PROF_LM_HEAD)->flops == 2.0 * N * H * V);
    double wsz = bf16 && !c->tie_word_embeddings ? 2 : 4;
    assert_true(mt_profile_cell(p, L, MT_PROF_LM_HEAD)->bytes == V * H * wsz + N * (H + V) * 4.0);
    assert_true(mt_profile_cell(p, L, MT_PROF_EMBEDDING)->bytes == 2.0 * N * H * 4);
    sum += 4.0 * N * H + 2.0 * N * H * V;
    mt_prof_cell tot = mt_profile_total(p);
    assert_true(fabs(tot.flops - sum) <= 1e-12 * sum);
    assert_true(mt_profile_cell(p, 0, MT_PROF_LORA)->calls == 0);
    uint64_t passes, prow;
    double wall;
    mt_profile_passes(p, &passes, &prow, &wall);
    assert_int_equal(passes, 1);
    assert_int_equal(prow, (uint64_t)N);
    assert_true(wall >= tot.seconds);

    mt_profile_free(p);

    /* a rank-4 delta on layer 1's first attention linear: its own cell, 2·N·r·(in + out) */
    int nl = mt_model_linear_count(m), target = -1;
    for (int i = 0; i < nl && target < 0; i++)
        if (mt_model_linear(m, i)->layer == 1 && mt_model_linear(m, i)->kind == MT_LINEAR_ATTN) target = i;
    assert_true(target >= 0);
    const mt_linear *tl = mt_model_linear(m, target);
    int r = 4;
    float *A = calloc((size_t)r * tl->in, sizeof(float)), *Bm = calloc((size_t)tl->out * r, sizeof(float));
    mt_lowrank lr = {.r = r, .scale = 2.0f, .A = A, .B = Bm};
    const mt_lowrank **lin = calloc((size_t)nl, sizeof *lin);
    lin[target] = &lr;
    mt_adapter ad = {.n_linears = nl, .lin = lin, .max_rank = r};
    mt_forward_opts fo = {.adapter = &ad};
    assert_int_equal(mt_profile_init(&p, m, NULL, 0, &err), MT_OK);
    mt_model_set_profile(m, p);
    assert_int_equal(mt_model_forward(m, ws, &batch, &fo, &r1, &err), MT_OK);
    mt_model_set_profile(m, NULL);
    assert_true(mt_profile_cell(p, 1, MT_PROF_LORA)->flops == 2.0 * N * r * (tl->in + tl->out));
    assert_int_equal(mt_profile_cell(p, 1, MT_PROF_LORA)->calls, 1);
    assert_true(mt_profile_cell(p, 1, MT_PROF_ATTN_PROJ)->flops == hand_flops(c, 1, MT_PROF_ATTN_PROJ, B, T));
    assert_true(mt_profile_cell(p, 0, MT_PROF_LORA)->calls == 0);
    mt_profile_free(p);
    free(lin);
    free(A);
    free(Bm);
    mt_workspace_free(ws);
    mt_model_free(m);
    mt_backend_free(be);
}

static void test_flops_deepseek_v3(void **state) {
    (void)state;
    check_model(v3_dir, false);
}

static void test_flops_qwen2_moe_bf16(void **state) {
    (void)state;
    check_model(q2_dir, true);
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v)) fail_msg("JSON: no number \"%s\"", k);
    return v->valuedouble;
}

static void assert_rel(double got, double want, const char *what) {
    if (fabs(got - want) > 1e-9 * (fabs(want) + 1e-12)) fail_msg("%s: %.17g != %.17g", what, got, want);
}

static void test_cli_json(void **state) {
    (void)state;
    char json_path[4300], *out = NULL;
    snprintf(json_path, sizeof json_path, "%s/profile.json", root);
    int rc = mt_test_run_cli(&out,
                             "profile --model '%s' --input '%s' --max-len 32 --batch 2 --threads 1 --breakdown op "
                             "--metrics latency,flops,memory --dap-threshold 0.5 --decode 4 --json '%s'",
                             v3_dir, input_path, json_path);
    if (rc != 0) fail_msg("profile failed: %s", out);
    assert_non_null(strstr(out, "L1 experts"));
    assert_non_null(strstr(out, "GFLOP/s"));
    assert_non_null(strstr(out, "not a measured speed-up"));
    assert_non_null(strstr(out, "peak RSS"));
    free(out);
    char *text = NULL;
    size_t len = 0;
    mt_error err = {0};
    assert_int_equal(mt_read_file(json_path, &text, &len, &err), MT_OK);
    cJSON *root_j = cJSON_Parse(text);
    free(text);
    assert_non_null(root_j);
    const char *const views[] = {"forward", "decode"};
    for (int v = 0; v < 2; v++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(root_j, views[v]);
        assert_true(cJSON_IsObject(f));
        const cJSON *tot = cJSON_GetObjectItemCaseSensitive(f, "totals");
        const char *const keys[] = {"seconds", "flops", "bytes"};
        for (int k = 0; k < 3; k++) {
            double by_part = 0, by_type = 0, by_layer = 0;
            const cJSON *it;
            cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(f, "parts")) by_part += num(it, keys[k]);
            cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(f, "by_layer_type")) by_type += num(it, keys[k]);
            const cJSON *ly;
            cJSON_ArrayForEach(ly, cJSON_GetObjectItemCaseSensitive(f, "layers")) {
                cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(ly, "parts")) by_layer += num(it, keys[k]);
            }
            assert_rel(by_part, num(tot, keys[k]), keys[k]);
            assert_rel(by_type, num(tot, keys[k]), keys[k]);
            assert_rel(by_layer, num(tot, keys[k]), keys[k]);
        }
        assert_true(num(tot, "flops") > 0);
        assert_true(num(f, "wall_seconds") >= num(tot, "seconds"));
        const cJSON *moe;
        double rows = num(f, "rows");
        cJSON_ArrayForEach(moe, cJSON_GetObjectItemCaseSensitive(f, "moe")) {
            double s = 0;
            const cJSON *e;
            cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(moe, "tokens_per_expert")) s += e->valuedouble;
            assert_rel(s, rows * 2, "routed rows = tokens x top_k"); /* the tiny preset routes top-2 */
            assert_rel(num(moe, "experts_per_token"), 2, "experts per token");
        }
        const cJSON *mem = cJSON_GetObjectItemCaseSensitive(f, "memory");
        assert_true(num(mem, "weight_bytes") > 0 && num(mem, "peak_rss_bytes") > 0);
    }
    const cJSON *dap = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root_j, "forward"), "dap");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(dap, "evaluated")));
    double frac = num(cJSON_GetObjectItemCaseSensitive(dap, "total"), "skip_fraction");
    assert_true(frac >= 0 && frac <= 1);
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root_j, "decode");
    assert_rel(num(dec, "rows"), 4, "decode rows");
    assert_true(num(cJSON_GetObjectItemCaseSensitive(dec, "memory"), "kv_bytes") > 0);
    cJSON_Delete(root_j);
}

static void test_cli_errors(void **state) {
    (void)state;
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "profile --model '%s' --metrics latency", v3_dir);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "--input FILE is required"));
    free(out);
    rc = mt_test_run_cli(&out, "profile --model '%s' --input '%s' --metrics latency,watts", v3_dir, input_path);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "unknown metric \"watts\""));
    free(out);
    rc = mt_test_run_cli(&out, "profile --model '%s' --input '%s' --breakdown expert", v3_dir, input_path);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "--breakdown"));
    free(out);
    char bad[4300];
    snprintf(bad, sizeof bad, "%s/bad.jsonl", root);
    FILE *f = fopen(bad, "w");
    assert_non_null(f);
    fprintf(f, "{\"text\": \"fine\"}\n{\"prompt\": \"no text field\"}\n");
    fclose(f);
    rc = mt_test_run_cli(&out, "profile --model '%s' --input '%s'", v3_dir, bad);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "bad.jsonl:2"));
    assert_non_null(strstr(out, "\"text\""));
    free(out);
    rc = mt_test_run_cli(&out, "profile --model '%s' --input '%s/missing.txt'", v3_dir, root);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "missing.txt"));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flops_deepseek_v3),
        cmocka_unit_test(test_flops_qwen2_moe_bf16),
        cmocka_unit_test(test_cli_json),
        cmocka_unit_test(test_cli_errors),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
