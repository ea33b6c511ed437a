/* weights.c — the checkpoint name tables (one per family, written once as data) and the code
 * that walks them: building the parameter and linear lists, loading safetensors (f32/bf16/f16,
 * F32 and 16-bit linear weights used straight from the mapping when possible), INT8 weight-only
 * quantisation, random initialisation, saving in the Hugging Face layout, gradient buffers and
 * the content hash. */
#define _GNU_SOURCE /* madvise */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "model-impl.h"

/* ---- the tables ---- */

typedef enum mt_slot {
    SLOT_ATTN_NORM = 0,
    SLOT_FFN_NORM,
    SLOT_Q,
    SLOT_K,
    SLOT_V,
    SLOT_O,
    SLOT_Q_NORM,
    SLOT_K_NORM,
    SLOT_Q_A,
    SLOT_Q_A_NORM,
    SLOT_Q_B,
    SLOT_KV_A,
    SLOT_KV_A_NORM,
    SLOT_KV_B,
    SLOT_GATE,
    SLOT_UP,
    SLOT_DOWN,
    SLOT_ROUTER,
    SLOT_ROUTER_BIAS,
    SLOT_EXP_GATE,
    SLOT_EXP_UP,
    SLOT_EXP_DOWN,
    SLOT_SH_GATE,
    SLOT_SH_UP,
    SLOT_SH_DOWN,
    SLOT_SH_EXPERT_GATE,
} mt_slot;

typedef enum mt_when {
    WHEN_ALWAYS = 0,
    WHEN_QK_NORM,   /* the family's QK-norm is on */
    WHEN_Q_LORA,    /* MLA with q_lora_rank */
    WHEN_NO_Q_LORA, /* MLA without */
    WHEN_DENSE,     /* a layer with a dense MLP */
    WHEN_MOE,       /* a MoE layer */
    WHEN_SHARED,    /* a MoE layer with shared expert(s) */
    WHEN_SHARED_GATE,
    WHEN_NOAUX,     /* a MoE layer routed with noaux_tc (e_score_correction_bias) */
} mt_when;

typedef enum mt_dim {
    DIM_NONE = 0,
    DIM_H,    /* hidden */
    DIM_Q,    /* nh·qk_hd */
    DIM_KV,   /* nkv·hd */
    DIM_HD,   /* hd */
    DIM_O,    /* nh·vh */
    DIM_I,    /* dense MLP width */
    DIM_IM,   /* routed expert width */
    DIM_IS,   /* shared expert width */
    DIM_E,    /* routed experts */
    DIM_ONE,
    DIM_QL,   /* q_lora_rank */
    DIM_KVA,  /* kv_lora_rank + qk_rope_head_dim */
    DIM_KVL,  /* kv_lora_rank */
    DIM_KVB,  /* nh·(nope + vh) */
} mt_dim;

typedef enum mt_bias_rule { BIAS_NONE = 0, BIAS_IF_ATTN } mt_bias_rule;

/* One tensor (or one linear) of a decoder layer. `path` follows "model.layers.{i}."; "{e}"
 * stands for the routed expert index. Linears name their module (".weight"/".bias" are
 * appended); vectors give the whole tensor name. */
typedef struct mt_tensor_entry {
    mt_slot slot;
    const char *path;
    mt_when when;
    mt_dim out, in; /* linears [out, in]; vectors [out] */
    mt_bias_rule bias;
} mt_tensor_entry;

#define ATTN_NORM {SLOT_ATTN_NORM, "input_layernorm.weight", WHEN_ALWAYS, DIM_H, DIM_NONE, BIAS_NONE}
#define FFN_NORM {SLOT_FFN_NORM, "post_attention_layernorm.weight", WHEN_ALWAYS, DIM_H, DIM_NONE, BIAS_NONE}
#define DENSE_MLP                                                                  \
    {SLOT_GATE, "mlp.gate_proj", WHEN_DENSE, DIM_I, DIM_H, BIAS_NONE},             \
        {SLOT_UP, "mlp.up_proj", WHEN_DENSE, DIM_I, DIM_H, BIAS_NONE},             \
        {SLOT_DOWN, "mlp.down_proj", WHEN_DENSE, DIM_H, DIM_I, BIAS_NONE}
#define EXPERTS(prefix, g, u, d)                                                            \
    {SLOT_EXP_GATE, prefix ".experts.{e}." g, WHEN_MOE, DIM_IM, DIM_H, BIAS_NONE},           \
        {SLOT_EXP_UP, prefix ".experts.{e}." u, WHEN_MOE, DIM_IM, DIM_H, BIAS_NONE},         \
        {SLOT_EXP_DOWN, prefix ".experts.{e}." d, WHEN_MOE, DIM_H, DIM_IM, BIAS_NONE}

/* Qwen3-MoE: per-head QK-norm; attention_bias puts biases on q/k/v/o. */
static const mt_tensor_entry TABLE_QWEN3_MOE[] = {
    ATTN_NORM,
    {SLOT_Q, "self_attn.q_proj", WHEN_ALWAYS, DIM_Q, DIM_H, BIAS_IF_ATTN},
    {SLOT_K, "self_attn.k_proj", WHEN_ALWAYS, DIM_KV, DIM_H, BIAS_IF_ATTN},
    {SLOT_V, "self_attn.v_proj", WHEN_ALWAYS, DIM_KV, DIM_H, BIAS_IF_ATTN},
    {SLOT_O, "self_attn.o_proj", WHEN_ALWAYS, DIM_H, DIM_O, BIAS_IF_ATTN},
    {SLOT_Q_NORM, "self_attn.q_norm.weight", WHEN_QK_NORM, DIM_HD, DIM_NONE, BIAS_NONE},
    {SLOT_K_NORM, "self_attn.k_norm.weight", WHEN_QK_NORM, DIM_HD, DIM_NONE, BIAS_NONE},
    {SLOT_ROUTER, "mlp.gate", WHEN_MOE, DIM_E, DIM_H, BIAS_NONE},
    EXPERTS("mlp", "gate_proj", "up_proj", "down_proj"),
    DENSE_MLP,
    FFN_NORM,
};

/* Qwen2-MoE: q/k/v biases (qkv_bias), a shared expert behind a sigmoid gate. */
static const mt_tensor_entry TABLE_QWEN2_MOE[] = {
    ATTN_NORM,
    {SLOT_Q, "self_attn.q_proj", WHEN_ALWAYS, DIM_Q, DIM_H, BIAS_IF_ATTN},
    {SLOT_K, "self_attn.k_proj", WHEN_ALWAYS, DIM_KV, DIM_H, BIAS_IF_ATTN},
    {SLOT_V, "self_attn.v_proj", WHEN_ALWAYS, DIM_KV, DIM_H, BIAS_IF_ATTN},
    {SLOT_O, "self_attn.o_proj", WHEN_ALWAYS, DIM_H, DIM_O, BIAS_NONE},
    {SLOT_ROUTER, "mlp.gate", WHEN_MOE, DIM_E, DIM_H, BIAS_NONE},
    EXPERTS("mlp", "gate_proj", "up_proj", "down_proj"),
    {SLOT_SH_GATE, "mlp.shared_expert.gate_proj", WHEN_SHARED, DIM_IS, DIM_H, BIAS_NONE},
    {SLOT_SH_UP, "mlp.shared_expert.up_proj", WHEN_SHARED, DIM_IS, DIM_H, BIAS_NONE},
    {SLOT_SH_DOWN, "mlp.shared_expert.down_proj", WHEN_SHARED, DIM_H, DIM_IS, BIAS_NONE},
    {SLOT_SH_EXPERT_GATE, "mlp.shared_expert_gate", WHEN_SHARED_GATE, DIM_ONE, DIM_H, BIAS_NONE},
    DENSE_MLP,
    FFN_NORM,
};

/* Mixtral: the on-disk names keep block_sparse_moe and w1 (gate) / w3 (up) / w2 (down). */
static const mt_tensor_entry TABLE_MIXTRAL[] = {
    ATTN_NORM,
    {SLOT_Q, "self_attn.q_proj", WHEN_ALWAYS, DIM_Q, DIM_H, BIAS_NONE},
    {SLOT_K, "self_attn.k_proj", WHEN_ALWAYS, DIM_KV, DIM_H, BIAS_NONE},
    {SLOT_V, "self_attn.v_proj", WHEN_ALWAYS, DIM_KV, DIM_H, BIAS_NONE},
    {SLOT_O, "self_attn.o_proj", WHEN_ALWAYS, DIM_H, DIM_O, BIAS_NONE},
    {SLOT_ROUTER, "block_sparse_moe.gate", WHEN_MOE, DIM_E, DIM_H, BIAS_NONE},
    EXPERTS("block_sparse_moe", "w1", "w3", "w2"),
    FFN_NORM,
};

/* OLMoE: QK-norm over the whole projection (q_norm [nh·hd], k_norm [nkv·hd]). */
static const mt_tensor_entry TABLE_OLMOE[] = {
    ATTN_NORM,
    {SLOT_Q, "self_attn.q_proj", WHEN_ALWAYS, DIM_Q, DIM_H, BIAS_IF_ATTN},
    {SLOT_K, "self_attn.k_proj", WHEN_ALWAYS, DIM_KV, DIM_H, BIAS_IF_ATTN},
    {SLOT_V, "self_attn.v_proj", WHEN_ALWAYS, DIM_KV, DIM_H, BIAS_IF_ATTN},
    {SLOT_O, "self_attn.o_proj", WHEN_ALWAYS, DIM_H, DIM_O, BIAS_IF_ATTN},
    {SLOT_Q_NORM, "self_attn.q_norm.weight", WHEN_QK_NORM, DIM_Q, DIM_NONE, BIAS_NONE},
    {SLOT_K_NORM, "self_attn.k_norm.weight", WHEN_QK_NORM, DIM_KV, DIM_NONE, BIAS_NONE},
    {SLOT_ROUTER, "mlp.gate", WHEN_MOE, DIM_E, DIM_H, BIAS_NONE},
    EXPERTS("mlp", "gate_proj", "up_proj", "down_proj"),
    FFN_NORM,
};

/* DeepSeek-V2/V3: MLA (q_proj or q_a/q_b, kv_a_proj_with_mqa, kv_b_proj), shared experts
 * without a gate, V3's e_score_correction_bias. attention_bias biases q_a, kv_a and o. */
static const mt_tensor_entry TABLE_DEEPSEEK[] = {
    ATTN_NORM,
    {SLOT_Q, "self_attn.q_proj", WHEN_NO_Q_LORA, DIM_Q, DIM_H, BIAS_NONE},
    {SLOT_Q_A, "self_attn.q_a_proj", WHEN_Q_LORA, DIM_QL, DIM_H, BIAS_IF_ATTN},
    {SLOT_Q_A_NORM, "self_attn.q_a_layernorm.weight", WHEN_Q_LORA, DIM_QL, DIM_NONE, BIAS_NONE},
    {SLOT_Q_B, "self_attn.q_b_proj", WHEN_Q_LORA, DIM_Q, DIM_QL, BIAS_NONE},
    {SLOT_KV_A, "self_attn.kv_a_proj_with_mqa", WHEN_ALWAYS, DIM_KVA, DIM_H, BIAS_IF_ATTN},
    {SLOT_KV_A_NORM, "self_attn.kv_a_layernorm.weight", WHEN_ALWAYS, DIM_KVL, DIM_NONE, BIAS_NONE},
    {SLOT_KV_B, "self_attn.kv_b_proj", WHEN_ALWAYS, DIM_KVB, DIM_KVL, BIAS_NONE},
    {SLOT_O, "self_attn.o_proj", WHEN_ALWAYS, DIM_H, DIM_O, BIAS_IF_ATTN},
    {SLOT_ROUTER, "mlp.gate", WHEN_MOE, DIM_E, DIM_H, BIAS_NONE},
    {SLOT_ROUTER_BIAS, "mlp.gate.e_score_correction_bias", WHEN_NOAUX, DIM_E, DIM_NONE, BIAS_NONE},
    EXPERTS("mlp", "gate_proj", "up_proj", "down_proj"),
    {SLOT_SH_GATE, "mlp.shared_experts.gate_proj", WHEN_SHARED, DIM_IS, DIM_H, BIAS_NONE},
    {SLOT_SH_UP, "mlp.shared_experts.up_proj", WHEN_SHARED, DIM_IS, DIM_H, BIAS_NONE},
    {SLOT_SH_DOWN, "mlp.shared_experts.down_proj", WHEN_SHARED, DIM_H, DIM_IS, BIAS_NONE},
    DENSE_MLP,
    FFN_NORM,
};

typedef struct mt_family_table {
    const mt_tensor_entry *entries;
    int n;
} mt_family_table;

#define TABLE(t) {t, (int)(sizeof t / sizeof t[0])}
static const mt_family_table FAMILY_TABLES[MT_FAMILY_COUNT] = {
    [MT_FAMILY_DEEPSEEK_V3] = TABLE(TABLE_DEEPSEEK), [MT_FAMILY_DEEPSEEK_V2] = TABLE(TABLE_DEEPSEEK),
    [MT_FAMILY_QWEN3_MOE] = TABLE(TABLE_QWEN3_MOE),  [MT_FAMILY_QWEN2_MOE] = TABLE(TABLE_QWEN2_MOE),
    [MT_FAMILY_MIXTRAL] = TABLE(TABLE_MIXTRAL),      [MT_FAMILY_OLMOE] = TABLE(TABLE_OLMOE),
};

/* ---- sizes ---- */

static bool family_is_deepseek(mt_family f) { return f == MT_FAMILY_DEEPSEEK_V3 || f == MT_FAMILY_DEEPSEEK_V2; }

void mt_model_dims(const mt_config *cfg, mt_dims *d) {
    memset(d, 0, sizeof *d);
    d->H = cfg->hidden_size;
    d->V = cfg->vocab_size;
    d->L = cfg->n_layers;
    d->nh = cfg->n_heads;
    d->nkv = cfg->n_kv_heads > 0 ? cfg->n_kv_heads : cfg->n_heads;
    d->hd = cfg->head_dim > 0 ? cfg->head_dim : (cfg->n_heads > 0 ? cfg->hidden_size / cfg->n_heads : 0);
    if (cfg->mla) {
        d->nope = cfg->qk_nope_head_dim;
        d->rope = cfg->qk_rope_head_dim;
        d->vh = cfg->v_head_dim;
        d->kvl = cfg->kv_lora_rank;
        d->ql = cfg->q_lora_rank;
        d->qk_hd = d->nope + d->rope;
        d->kvb_dim = d->nh * (d->nope + d->vh);
        d->kva_dim = d->kvl + d->rope;
    } else {
        d->qk_hd = d->hd;
        d->vh = d->hd;
    }
    d->q_dim = d->nh * d->qk_hd;
    d->kv_dim = d->nkv * d->hd;
    d->o_dim = d->nh * d->vh;
    d->I = cfg->intermediate_size;
    d->E = cfg->n_experts;
    d->K = cfg->top_k;
    /* Mixtral and OLMoE name their expert width intermediate_size */
    d->Im = cfg->moe_intermediate_size > 0 ? cfg->moe_intermediate_size : cfg->intermediate_size;
    d->Is = family_is_deepseek(cfg->family) ? d->Im * cfg->n_shared_experts : cfg->shared_intermediate_size;
    d->ffn_max = d->I;
    if (d->Im > d->ffn_max) d->ffn_max = d->Im;
    if (d->Is > d->ffn_max) d->ffn_max = d->Is;
    for (int l = 0; l < cfg->n_layers && l < MT_MAX_LAYERS; l++)
        if (cfg->layer_is_moe[l] && d->E > 0) d->n_moe++;
}

static int dim_value(const mt_dims *d, mt_dim k) {
    switch (k) {
    case DIM_NONE: return 0;
    case DIM_H: return d->H;
    case DIM_Q: return d->q_dim;
    case DIM_KV: return d->kv_dim;
    case DIM_HD: return d->hd;
    case DIM_O: return d->o_dim;
    case DIM_I: return d->I;
    case DIM_IM: return d->Im;
    case DIM_IS: return d->Is;
    case DIM_E: return d->E;
    case DIM_ONE: return 1;
    case DIM_QL: return d->ql;
    case DIM_KVA: return d->kva_dim;
    case DIM_KVL: return d->kvl;
    case DIM_KVB: return d->kvb_dim;
    }
    return 0;
}

static bool entry_applies(const mt_config *cfg, const mt_dims *d, const mt_tensor_entry *e, bool moe) {
    switch (e->when) {
    case WHEN_ALWAYS: return true;
    case WHEN_QK_NORM: return cfg->qk_norm != MT_QK_NORM_NONE;
    case WHEN_Q_LORA: return cfg->q_lora_rank > 0;
    case WHEN_NO_Q_LORA: return cfg->q_lora_rank <= 0;
    case WHEN_DENSE: return !moe;
    case WHEN_MOE: return moe;
    case WHEN_SHARED: return moe && d->Is > 0;
    case WHEN_SHARED_GATE: return moe && d->Is > 0 && cfg->shared_expert_gate;
    case WHEN_NOAUX: return moe && cfg->route_method == MT_ROUTE_METHOD_NOAUX_TC;
    }
    return false;
}

static bool slot_is_vector(mt_slot s) {
    return s == SLOT_ATTN_NORM || s == SLOT_FFN_NORM || s == SLOT_Q_NORM || s == SLOT_K_NORM ||
           s == SLOT_Q_A_NORM || s == SLOT_KV_A_NORM || s == SLOT_ROUTER_BIAS;
}

static mt_linear_kind slot_kind(mt_slot s) {
    switch (s) {
    case SLOT_GATE:
    case SLOT_UP:
    case SLOT_DOWN: return MT_LINEAR_MLP;
    case SLOT_EXP_GATE:
    case SLOT_EXP_UP:
    case SLOT_EXP_DOWN: return MT_LINEAR_EXPERT;
    case SLOT_SH_GATE:
    case SLOT_SH_UP:
    case SLOT_SH_DOWN:
    case SLOT_SH_EXPERT_GATE: return MT_LINEAR_SHARED;
    case SLOT_ROUTER: return MT_LINEAR_ROUTER;
    default: return MT_LINEAR_ATTN;
    }
}

/* ---- name index (open addressing over FNV-1a) ---- */

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

typedef const char *(*mt_name_of)(const mt_model *m, int i);

static const char *param_name_of(const mt_model *m, int i) { return m->params[i].name; }
static const char *linear_name_of(const mt_model *m, int i) { return m->linears[i].module; }

static void index_build(mt_name_index *ix, const mt_model *m, int n, mt_name_of name_of) {
    size_t cap = 16;
    while (cap < (size_t)n * 2) cap <<= 1;
    ix->cap = cap;
    ix->slots = mt_xmalloc(cap * sizeof(int));
    for (size_t i = 0; i < cap; i++) ix->slots[i] = -1;
    for (int i = 0; i < n; i++) {
        size_t h = fnv1a(name_of(m, i)) & (cap - 1);
        while (ix->slots[h] >= 0) h = (h + 1) & (cap - 1);
        ix->slots[h] = i;
    }
}

static int index_find(const mt_name_index *ix, const mt_model *m, mt_name_of name_of, const char *name) {
    if (!ix->slots || !name) return -1;
    size_t h = fnv1a(name) & (ix->cap - 1);
    while (ix->slots[h] >= 0) {
        if (!strcmp(name_of(m, ix->slots[h]), name)) return ix->slots[h];
        h = (h + 1) & (ix->cap - 1);
    }
    return -1;
}

/* ---- building the tables ---- */

typedef struct mt_builder {
    mt_model *m;
    const mt_dims *d;
    size_t name_cap, name_used;
    bool count_only;
    int n_params, n_linears;
    char scratch[4][512]; /* names while counting: a linear's name feeds its tensors' names */
    int next_scratch;
} mt_builder;

/* Appends a name to the name arena (or only counts it); returns its start. */
static const char *builder_name(mt_builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *builder_name(mt_builder *b, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    MT_ASSERT(n > 0 && (size_t)n < sizeof buf);
    if (b->count_only) {
        b->name_cap += (size_t)n + 1;
        char *dst = b->scratch[b->next_scratch++ & 3];
        memcpy(dst, buf, (size_t)n + 1);
        return dst;
    }
    MT_ASSERT(b->name_used + (size_t)n + 1 <= b->name_cap);
    char *dst = b->m->names + b->name_used;
    memcpy(dst, buf, (size_t)n + 1);
    b->name_used += (size_t)n + 1;
    return dst;
}

static mt_param *builder_param(mt_builder *b, const char *name, int ndim, int64_t d0, int64_t d1,
                               mt_param_init init) {
    int i = b->n_params++;
    if (b->count_only) return NULL;
    b->m->init[i] = init;
    mt_param *p = &b->m->params[i];
    p->name = name;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 0;
    p->numel = ndim > 1 ? d0 * d1 : d0;
    return p;
}

static mt_linear *builder_linear(mt_builder *b, const char *module, mt_linear_kind kind, int layer, int expert,
                                 int out, int in, bool bias) {
    const char *wname = builder_name(b, "%s.weight", module);
    mt_param *w = builder_param(b, wname, 2, out, in, MT_PARAM_INIT_NORMAL);
    mt_param *bp = NULL;
    if (bias) bp = builder_param(b, builder_name(b, "%s.bias", module), 1, out, 0, MT_PARAM_INIT_ZERO);
    int i = b->n_linears++;
    if (b->count_only) return NULL;
    mt_linear *L = &b->m->linears[i];
    L->module = module;
    L->kind = kind;
    L->layer = layer;
    L->expert = expert;
    L->in = in;
    L->out = out;
    L->weight = w;
    L->bias = bp;
    return L;
}

/* Expands "{e}" in a path. */
static void expand_path(char *dst, size_t cap, const char *path, int e) {
    const char *at = strstr(path, "{e}");
    if (!at) {
        snprintf(dst, cap, "%s", path);
        return;
    }
    snprintf(dst, cap, "%.*s%d%s", (int)(at - path), path, e, at + 3);
}

static void builder_run(mt_builder *b) {
    mt_model *m = b->m;
    const mt_config *cfg = &m->cfg;
    const mt_dims *d = b->d;
    const mt_family_table *tab = &FAMILY_TABLES[cfg->family];
    int expert_used = 0;

    const char *ename = builder_name(b, "model.embed_tokens.weight");
    mt_param *embed = builder_param(b, ename, 2, d->V, d->H, MT_PARAM_INIT_NORMAL);
    if (!b->count_only) m->embed = embed;

    for (int l = 0; l < d->L; l++) {
        bool moe = cfg->layer_is_moe[l] && d->E > 0;
        mt_layer *ly = b->count_only ? NULL : &m->layers[l];
        if (ly) {
            ly->index = l;
            ly->moe = moe;
            if (moe) {
                ly->exp_gate = m->expert_ptrs + expert_used;
                ly->exp_up = ly->exp_gate + d->E;
                ly->exp_down = ly->exp_up + d->E;
            }
        }
        if (moe) expert_used += 3 * d->E;
        for (int t = 0; t < tab->n; t++) {
            const mt_tensor_entry *e = &tab->entries[t];
            if (!entry_applies(cfg, d, e, moe)) continue;
            int out = dim_value(d, e->out), in = dim_value(d, e->in);
            if (slot_is_vector(e->slot)) {
                mt_param_init init = e->slot == SLOT_ROUTER_BIAS ? MT_PARAM_INIT_ZERO : MT_PARAM_INIT_ONE;
                mt_param *p = builder_param(b, builder_name(b, "model.layers.%d.%s", l, e->path), 1, out, 0, init);
                if (!ly) continue;
                switch (e->slot) {
                case SLOT_ATTN_NORM: ly->attn_norm = p; break;
                case SLOT_FFN_NORM: ly->ffn_norm = p; break;
                case SLOT_Q_NORM: ly->q_norm = p; break;
                case SLOT_K_NORM: ly->k_norm = p; break;
                case SLOT_Q_A_NORM: ly->q_a_norm = p; break;
                case SLOT_KV_A_NORM: ly->kv_a_norm = p; break;
                case SLOT_ROUTER_BIAS: ly->router_bias = p; break;
                default: MT_ASSERT(0);
                }
                continue;
            }
            bool bias = e->bias == BIAS_IF_ATTN && cfg->attention_bias;
            int n_rep = (e->slot == SLOT_EXP_GATE || e->slot == SLOT_EXP_UP || e->slot == SLOT_EXP_DOWN) ? d->E : 1;
            for (int x = 0; x < n_rep; x++) {
                char path[256];
                expand_path(path, sizeof path, e->path, x);
                const char *module = builder_name(b, "model.layers.%d.%s", l, path);
                int expert = n_rep > 1 ? x : -1;
                mt_linear *L = builder_linear(b, module, slot_kind(e->slot), l, expert, out, in, bias);
                if (!ly) continue;
                switch (e->slot) {
                case SLOT_Q: ly->q = L; break;
                case SLOT_K: ly->k = L; break;
                case SLOT_V: ly->v = L; break;
                case SLOT_O: ly->o = L; break;
                case SLOT_Q_A: ly->q_a = L; break;
                case SLOT_Q_B: ly->q_b = L; break;
                case SLOT_KV_A: ly->kv_a = L; break;
                case SLOT_KV_B: ly->kv_b = L; break;
                case SLOT_GATE: ly->gate = L; break;
                case SLOT_UP: ly->up = L; break;
                case SLOT_DOWN: ly->down = L; break;
                case SLOT_ROUTER: ly->router = L; break;
                case SLOT_EXP_GATE: ly->exp_gate[x] = L; break;
                case SLOT_EXP_UP: ly->exp_up[x] = L; break;
                case SLOT_EXP_DOWN: ly->exp_down[x] = L; break;
                case SLOT_SH_GATE: ly->sh_gate = L; break;
                case SLOT_SH_UP: ly->sh_up = L; break;
                case SLOT_SH_DOWN: ly->sh_down = L; break;
                case SLOT_SH_EXPERT_GATE: ly->sh_expert_gate = L; break;
                default: MT_ASSERT(0);
                }
            }
        }
    }

    mt_param *fn = builder_param(b, builder_name(b, "model.norm.weight"), 1, d->H, 0, MT_PARAM_INIT_ONE);
    if (!b->count_only) m->final_norm = fn;
    if (cfg->tie_word_embeddings) {
        /* the LM head reads the embedding table: one parameter, one gradient */
        const char *module = builder_name(b, "lm_head");
        int i = b->n_linears++;
        if (!b->count_only) {
            mt_linear *L = &m->linears[i];
            L->module = module;
            L->kind = MT_LINEAR_LM_HEAD;
            L->layer = -1;
            L->expert = -1;
            L->in = d->H;
            L->out = d->V;
            L->weight = m->embed;
            m->lm_head = L;
        }
    } else {
        mt_linear *L = builder_linear(b, builder_name(b, "lm_head"), MT_LINEAR_LM_HEAD, -1, -1, d->V, d->H, false);
        if (!b->count_only) m->lm_head = L;
    }
}

static void model_free_tables(mt_model *m) {
    free(m->params);
    free(m->home);
    free(m->init);
    free(m->linears);
    free(m->layers);
    free(m->expert_ptrs);
    free(m->names);
    free(m->param_index.slots);
    free(m->linear_index.slots);
}

/* Shapes the config implies must be positive and fit in int. */
static mt_status check_dims(const mt_config *cfg, const mt_dims *d, mt_error *err) {
    if (cfg->family < 0 || cfg->family >= MT_FAMILY_COUNT)
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "model: unknown family %d", (int)cfg->family);
    if (d->H <= 0 || d->V <= 0 || d->L <= 0 || d->L > MT_MAX_LAYERS || d->nh <= 0 || d->nkv <= 0 ||
        d->qk_hd <= 0 || d->vh <= 0)
        return mt_error_set(err, MT_ERR_INVALID,
                            "model: config has an impossible shape (hidden %d, vocab %d, layers %d, heads %d/%d, "
                            "head width %d/%d)",
                            d->H, d->V, d->L, d->nh, d->nkv, d->qk_hd, d->vh);
    if (d->nh % d->nkv)
        return mt_error_set(err, MT_ERR_INVALID, "model: %d attention heads are not a multiple of %d KV heads", d->nh,
                            d->nkv);
    if (cfg->mla && (d->kvl <= 0 || d->rope <= 0 || d->rope % 2 || d->nope < 0))
        return mt_error_set(err, MT_ERR_INVALID, "model: MLA needs kv_lora_rank > 0 and an even qk_rope_head_dim");
    if (!cfg->mla && d->hd % 2)
        return mt_error_set(err, MT_ERR_INVALID, "model: head_dim %d must be even for RoPE", d->hd);
    bool any_dense = false;
    for (int l = 0; l < d->L; l++)
        if (!(cfg->layer_is_moe[l] && d->E > 0)) any_dense = true;
    if (d->n_moe > 0 && (d->K <= 0 || d->K > d->E || d->Im <= 0))
        return mt_error_set(err, MT_ERR_INVALID, "model: MoE layers need 0 < top_k (%d) <= experts (%d) and an expert width",
                            d->K, d->E);
    if (any_dense && d->I <= 0)
        return mt_error_set(err, MT_ERR_INVALID, "model: dense layers need intermediate_size > 0");
    if (any_dense && (cfg->family == MT_FAMILY_MIXTRAL || cfg->family == MT_FAMILY_OLMOE))
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "model: %s has no dense MLP layers, but the config makes one",
                            mt_family_name(cfg->family));
    return MT_OK;
}

mt_status mt_model_build(mt_model **out, const mt_config *cfg, mt_backend *be, mt_error *err) {
    *out = NULL;
    mt_dims d;
    mt_model_dims(cfg, &d);
    mt_status st = check_dims(cfg, &d, err);
    if (st) return st;
    mt_model *m = mt_xcalloc(1, sizeof *m);
    m->cfg = *cfg;
    m->be = be;
    mt_builder b = {.m = m, .d = &d, .count_only = true};
    builder_run(&b);
    m->n_params = b.n_params;
    m->n_linears = b.n_linears;
    m->params = mt_xcalloc((size_t)b.n_params, sizeof(mt_param));
    m->home = mt_xcalloc((size_t)b.n_params, sizeof(mt_param_home));
    m->init = mt_xcalloc((size_t)b.n_params, sizeof(mt_param_init));
    m->linears = mt_xcalloc((size_t)b.n_linears, sizeof(mt_linear));
    m->layers = mt_xcalloc((size_t)d.L, sizeof(mt_layer));
    m->expert_ptrs = mt_xcalloc((size_t)d.n_moe * 3 * (size_t)(d.E > 0 ? d.E : 1), sizeof(mt_linear *));
    m->names = mt_xmalloc(b.name_cap);
    mt_builder b2 = {.m = m, .d = &d, .name_cap = b.name_cap};
    builder_run(&b2);
    MT_ASSERT(b2.n_params == m->n_params && b2.n_linears == m->n_linears);
    index_build(&m->param_index, m, m->n_params, param_name_of);
    index_build(&m->linear_index, m, m->n_linears, linear_name_of);
    *out = m;
    return MT_OK;
}

/* ---- memory ---- */

/* Floats reserved per BLOCK parameter: rounded up to 16 so every tensor starts 64-byte aligned. */
static size_t padded(int64_t numel) { return ((size_t)numel + 15) & ~(size_t)15; }

static mt_status alloc_block(mt_model *m, mt_error *err) {
    size_t total = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->home[i] == MT_PARAM_HOME_BLOCK) total += padded(m->params[i].numel);
    if (total == 0) return MT_OK;
    m->block = mt_backend_alloc(m->be, total * sizeof(float));
    if (!m->block)
        return mt_error_set(err, MT_ERR_NOMEM, "model: cannot allocate %.1f MB for the weights",
                            (double)total * 4 / 1e6);
    size_t off = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->home[i] == MT_PARAM_HOME_BLOCK) {
            m->params[i].data = m->block + off;
            off += padded(m->params[i].numel);
        }
    return MT_OK;
}

bool mt_backend_is_host(const mt_backend *be) { return mt_backend_get_kind(be) == MT_BACKEND_CPU; }

void mt_model_free(mt_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_params; i++) {
        mt_param *p = &m->params[i];
        if (p->grad) mt_backend_release(m->be, p->grad);
        if (m->home[i] == MT_PARAM_HOME_OWN) mt_backend_release(m->be, p->data);
        if (m->home[i] == MT_PARAM_HOME_QUANT) mt_backend_release(m->be, (void *)(uintptr_t)p->raw);
    }
    if (m->block) mt_backend_release(m->be, m->block);
    if (m->rope_cos) mt_backend_release(m->be, m->rope_cos);
    if (m->rope_sin) mt_backend_release(m->be, m->rope_sin);
    if (m->st) mt_safetensors_close(m->st);
    model_free_tables(m);
    free(m);
}

/* ---- loading ---- */

/* The tensor a parameter is read from: its own name, or for a routed expert a slice of the
 * stacked tensors transformers 5 keeps in memory (mlp.experts.gate_up_proj [E, 2·Im, H],
 * mlp.experts.down_proj [E, H, Im]) when a checkpoint was written in that layout. */
static bool find_source(const mt_safetensors *st, const mt_param *p, mt_st_tensor *src) {
    const mt_st_tensor *t = mt_safetensors_find(st, p->name);
    if (t) {
        *src = *t;
        return true;
    }
    int layer, e;
    char rest[128];
    if (sscanf(p->name, "model.layers.%d.%*[a-z_].experts.%d.%127s", &layer, &e, rest) != 3) return false;
    bool gate = !strcmp(rest, "gate_proj.weight") || !strcmp(rest, "w1.weight");
    bool up = !strcmp(rest, "up_proj.weight") || !strcmp(rest, "w3.weight");
    bool down = !strcmp(rest, "down_proj.weight") || !strcmp(rest, "w2.weight");
    if (!gate && !up && !down) return false;
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s", layer, down ? "down_proj" : "gate_up_proj");
    t = mt_safetensors_find(st, name);
    if (!t || t->ndim != 3 || t->shape[0] <= e) return false;
    int64_t rows = p->shape[0], cols = p->shape[1];
    int64_t per = t->shape[1] * t->shape[2];
    if (down ? (t->shape[1] != rows || t->shape[2] != cols) : (t->shape[1] != 2 * rows || t->shape[2] != cols))
        return false;
    size_t es = mt_dtype_size(t->dtype);
    int64_t first = (int64_t)e * per + (up ? rows * cols : 0);
    *src = *t;
    src->ndim = 2;
    src->shape[0] = rows;
    src->shape[1] = cols;
    src->numel = rows * cols;
    src->nbytes = (size_t)src->numel * es;
    src->data = (const uint8_t *)t->data + (size_t)first * es;
    return true;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* Marks the parameters that may stay in a low-precision storage: linear weights, except the
 * embedding table (a tied LM head reads it, and the embedding lookup needs fp32 rows) and MLA's
 * kv_b_proj, whose weight the absorbed decode multiplies directly (it is small). The router is
 * marked too unless `router` is false: quantisation leaves it as stored, because which experts
 * a token picks turns on small differences between router logits. */
static bool *lowp_candidates(const mt_model *m, bool router) {
    bool *ok = mt_xcalloc((size_t)m->n_params, sizeof(bool));
    for (int j = 0; j < m->n_linears; j++) {
        const mt_linear *L = &m->linears[j];
        if (L->weight == m->embed || (!router && L->kind == MT_LINEAR_ROUTER)) continue;
        ok[L->weight - m->params] = true;
    }
    for (int l = 0; l < m->cfg.n_layers; l++)
        if (m->layers[l].kv_b) ok[m->layers[l].kv_b->weight - m->params] = false;
    return ok;
}

static mt_lowp_type lowp_type_of(mt_dtype d) {
    switch (d) {
    case MT_DTYPE_BF16: return MT_LOWP_BF16;
    case MT_DTYPE_F16: return MT_LOWP_F16;
    case MT_DTYPE_I8: return MT_LOWP_Q8;
    default: MT_ASSERT(0 && "not a low-precision weight dtype");
    }
    return MT_LOWP_BF16;
}

void mt_param_lowp(const mt_param *p, mt_lowp_weight *w) {
    MT_ASSERT(p->dtype != MT_DTYPE_F32 && p->raw && p->ndim == 2);
    *w = (mt_lowp_weight){.type = lowp_type_of(p->dtype),
                          .out = (int)p->shape[0],
                          .in = (int)p->shape[1],
                          .w = p->raw,
                          .scales = p->qscale,
                          .group = p->qgroup};
}

void mt_model_param_to_f32(const mt_model *m, const mt_param *p, float *dst) {
    if (p->dtype == MT_DTYPE_F32) {
        mt_backend_download(m->be, dst, p->data, (size_t)p->numel * sizeof(float));
        return;
    }
    mt_lowp_weight w;
    mt_param_lowp(p, &w);
    for (int o = 0; o < w.out; o++) mt_lowp_row_to_f32(&w, o, 0, w.in, dst + (size_t)o * w.in);
}

static mt_status load_weights(mt_model *m, const char *dir, mt_error *err) {
    mt_status st = mt_safetensors_open(&m->st, dir, err);
    if (st) return st;
    mt_st_tensor *src = mt_xcalloc((size_t)m->n_params, sizeof *src);
    bool host = mt_backend_is_host(m->be);
    bool *lowp_ok = lowp_candidates(m, true);
    for (int i = 0; i < m->n_params; i++) {
        mt_param *p = &m->params[i];
        if (!find_source(m->st, p, &src[i])) {
            st = mt_error_set(err, MT_ERR_NOT_FOUND, "%s: tensor '%s' is missing (the config.json of this %s model needs it)",
                              dir, p->name, mt_family_name(m->cfg.family));
            goto done;
        }
        bool same = src[i].ndim == p->ndim;
        for (int k = 0; same && k < p->ndim; k++) same = src[i].shape[k] == p->shape[k];
        if (!same) {
            char got[128], want[128];
            shape_str(got, sizeof got, src[i].ndim, src[i].shape);
            shape_str(want, sizeof want, p->ndim, p->shape);
            st = mt_error_set(err, MT_ERR_FORMAT, "%s: tensor '%s' has shape %s but config.json implies %s", dir, p->name,
                              got, want);
            goto done;
        }
        if (src[i].dtype != MT_DTYPE_F32 && src[i].dtype != MT_DTYPE_BF16 && src[i].dtype != MT_DTYPE_F16 &&
            src[i].dtype != MT_DTYPE_F64) {
            st = mt_error_set(err, MT_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; moetune loads F32, BF16, F16 and F64",
                              dir, p->name, mt_dtype_name(src[i].dtype));
            goto done;
        }
        /* F32 on a host backend is used in place: no copy, pages load on first touch; so are
         * 16-bit linear weights, which the GEMMs convert tile by tile */
        bool aligned = ((uintptr_t)src[i].data % sizeof(float)) == 0;
        bool half = (src[i].dtype == MT_DTYPE_BF16 || src[i].dtype == MT_DTYPE_F16) && lowp_ok[i] &&
                    ((uintptr_t)src[i].data % sizeof(uint16_t)) == 0;
        m->home[i] = MT_PARAM_HOME_BLOCK;
        if (host && ((src[i].dtype == MT_DTYPE_F32 && aligned) || half)) m->home[i] = MT_PARAM_HOME_MMAP;
    }
    st = alloc_block(m, err);
    if (st) goto done;
    float *tmp = NULL;
    size_t tmp_cap = 0;
    for (int i = 0; i < m->n_params && !st; i++) {
        mt_param *p = &m->params[i];
        if (m->home[i] == MT_PARAM_HOME_MMAP) {
            if (src[i].dtype == MT_DTYPE_F32) {
                p->data = (float *)(uintptr_t)src[i].data;
            } else {
                p->data = NULL;
                p->dtype = src[i].dtype;
                p->raw = src[i].data;
            }
            continue;
        }
        if (host) {
            st = mt_st_tensor_to_f32(&src[i], p->data, err);
            continue;
        }
        if ((size_t)p->numel > tmp_cap) {
            free(tmp);
            tmp_cap = (size_t)p->numel;
            tmp = mt_xmalloc(tmp_cap * sizeof(float));
        }
        st = mt_st_tensor_to_f32(&src[i], tmp, err);
        if (!st) mt_backend_upload(m->be, p->data, tmp, (size_t)p->numel * sizeof(float));
    }
    free(tmp);
    if (st) mt_error_prefix(err, "%s: ", dir);
done:
    free(lowp_ok);
    free(src);
    return st;
}

/* generation_config.json may name more end-of-sequence tokens than config.json does. */
static void merge_generation_eos(mt_config *cfg, const char *dir) {
    char path[4096];
    if (!mt_path_join(path, sizeof path, dir, "generation_config.json") || !mt_path_exists(path)) return;
    char *text = NULL;
    size_t len = 0;
    if (mt_read_file(path, &text, &len, NULL) != MT_OK) return;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) return;
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(j, "eos_token_id");
    const cJSON *item = NULL;
    if (cJSON_IsNumber(eos)) {
        item = eos;
        eos = NULL;
    }
    for (const cJSON *it = item ? item : (cJSON_IsArray(eos) ? eos->child : NULL); it; it = item ? NULL : it->next) {
        if (!cJSON_IsNumber(it)) continue;
        int id = (int)it->valuedouble;
        bool have = false;
        for (int k = 0; k < cfg->n_eos; k++) have |= cfg->eos_token_ids[k] == id;
        if (!have && cfg->n_eos < MT_MAX_EOS) cfg->eos_token_ids[cfg->n_eos++] = id;
        if (item) break;
    }
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(j, "bos_token_id");
    if (cfg->bos_token_id < 0 && cJSON_IsNumber(bos)) cfg->bos_token_id = (int)bos->valuedouble;
    cJSON_Delete(j);
}

static mt_status model_finish(mt_model *m, mt_error *err) { return mt_rope_init(m, err); }

mt_status mt_model_load(mt_model **out, const char *dir, mt_backend *be, mt_error *err) {
    *out = NULL;
    char path[4096];
    if (!mt_path_join(path, sizeof path, dir, "config.json"))
        return mt_error_set(err, MT_ERR_INVALID, "%s: path too long", dir);
    mt_config cfg;
    mt_status st = mt_config_load(&cfg, path, err);
    if (st) return st;
    st = mt_config_validate(&cfg, path, err);
    if (st) return st;
    merge_generation_eos(&cfg, dir);
    mt_model *m = NULL;
    st = mt_model_build(&m, &cfg, be, err);
    if (st) {
        mt_error_prefix(err, "%s: ", path);
        return st;
    }
    st = load_weights(m, dir, err);
    if (!st) st = model_finish(m, err);
    if (st) {
        mt_model_free(m);
        return st;
    }
    *out = m;
    return MT_OK;
}

/* ---- random initialisation ---- */

mt_status mt_model_init_random(mt_model **out, const mt_config *cfg, uint64_t seed, mt_backend *be, mt_error *err) {
    *out = NULL;
    mt_status st = mt_config_validate(cfg, "config", err);
    if (st) return st;
    mt_model *m = NULL;
    st = mt_model_build(&m, cfg, be, err);
    if (st) return st;
    st = alloc_block(m, err);
    if (!st) st = model_finish(m, err);
    if (st) {
        mt_model_free(m);
        return st;
    }
    bool host = mt_backend_is_host(be);
    float std = cfg->initializer_range > 0 ? cfg->initializer_range : 0.02f;
    size_t max_numel = 0;
    for (int i = 0; i < m->n_params; i++)
        if ((size_t)m->params[i].numel > max_numel) max_numel = (size_t)m->params[i].numel;
    float *tmp = host ? NULL : mt_xmalloc(max_numel * sizeof(float));
    /* One stream per parameter, seeded from (seed, index): the values do not depend on the
     * order or the number of threads that fill them. */
    for (int i = 0; i < m->n_params; i++) {
        mt_param *p = &m->params[i];
        float *dst = host ? p->data : tmp;
        if (m->init[i] == MT_PARAM_INIT_ONE) {
            for (int64_t j = 0; j < p->numel; j++) dst[j] = 1.0f;
        } else if (m->init[i] == MT_PARAM_INIT_ZERO) {
            memset(dst, 0, (size_t)p->numel * sizeof(float));
        } else {
            mt_rng r;
            mt_rng_seed(&r, mt_hash_u64(seed, (uint64_t)i));
            for (int64_t j = 0; j < p->numel; j++) dst[j] = std * mt_rng_normal(&r);
        }
        if (!host) mt_backend_upload(be, p->data, tmp, (size_t)p->numel * sizeof(float));
    }
    free(tmp);
    *out = m;
    return MT_OK;
}

/* ---- saving ---- */

static const char *torch_dtype_of(mt_dtype d) {
    switch (d) {
    case MT_DTYPE_BF16: return "bfloat16";
    case MT_DTYPE_F16: return "float16";
    default: return "float32";
    }
}

static mt_status write_generation_config(const mt_config *cfg, const char *dir, mt_error *err) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "_from_model_config", true);
    if (cfg->bos_token_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", cfg->bos_token_id);
    if (cfg->n_eos == 1) {
        cJSON_AddNumberToObject(j, "eos_token_id", cfg->eos_token_ids[0]);
    } else if (cfg->n_eos > 1) {
        cJSON *a = cJSON_AddArrayToObject(j, "eos_token_id");
        for (int i = 0; i < cfg->n_eos; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(cfg->eos_token_ids[i]));
    }
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    char path[4096];
    mt_status st;
    if (!mt_path_join(path, sizeof path, dir, "generation_config.json"))
        st = mt_error_set(err, MT_ERR_INVALID, "%s: path too long", dir);
    else
        st = mt_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return st;
}

/* config.json (torch_dtype naming the weights' dtype) and generation_config.json. */
static mt_status write_config_files(const mt_config *model_cfg, const char *dir, mt_dtype dtype, mt_error *err) {
    if (dtype != MT_DTYPE_F32 && dtype != MT_DTYPE_BF16 && dtype != MT_DTYPE_F16)
        return mt_error_set(err, MT_ERR_INVALID, "model save: dtype must be F32, BF16 or F16, not %s", mt_dtype_name(dtype));
    mt_status st = mt_mkdirs(dir, err);
    if (st) return st;
    mt_config cfg = *model_cfg;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s", torch_dtype_of(dtype));
    char *json = NULL;
    st = mt_config_to_json(&cfg, &json, err);
    if (st) return st;
    char path[4096];
    if (!mt_path_join(path, sizeof path, dir, "config.json")) {
        free(json);
        return mt_error_set(err, MT_ERR_INVALID, "%s: path too long", dir);
    }
    st = mt_write_file_atomic(path, json, strlen(json), err);
    free(json);
    if (st) return st;
    return write_generation_config(&cfg, dir, err);
}

/* transformers keeps the routing bias in fp32 whatever the model dtype */
static mt_dtype stored_dtype(const mt_param *p, mt_dtype dtype) {
    return strstr(p->name, "e_score_correction_bias") ? MT_DTYPE_F32 : dtype;
}

mt_status mt_model_save(const mt_model *m, const char *dir, mt_dtype dtype, size_t max_shard_bytes, mt_error *err) {
    mt_status st = write_config_files(&m->cfg, dir, dtype, err);
    if (st) return st;
    char path[4096];

    bool host = mt_backend_is_host(m->be);
    float **copies = host ? NULL : mt_xcalloc((size_t)m->n_params, sizeof(float *));
    mt_st_writer *w = mt_st_writer_init();
    if (!copies)
        for (int i = 0; i < m->n_params && !copies; i++)
            if (m->params[i].dtype != MT_DTYPE_F32) copies = mt_xcalloc((size_t)m->n_params, sizeof(float *));
    for (int i = 0; i < m->n_params; i++) {
        const mt_param *p = &m->params[i];
        const float *data = p->data;
        /* the writer takes fp32 sources: device tensors and low-precision weights get a host copy */
        if (!host || p->dtype != MT_DTYPE_F32) {
            copies[i] = mt_xmalloc((size_t)p->numel * sizeof(float));
            mt_model_param_to_f32(m, p, copies[i]);
            data = copies[i];
        }
        mt_st_writer_add(w, p->name, stored_dtype(p, dtype), p->ndim, p->shape, data);
    }
    mt_st_writer_set_metadata(w, "format", "pt");
    if (max_shard_bytes > 0) {
        st = mt_st_writer_save_sharded(w, dir, max_shard_bytes, err);
    } else if (!mt_path_join(path, sizeof path, dir, "model.safetensors")) {
        st = mt_error_set(err, MT_ERR_INVALID, "%s: path too long", dir);
    } else {
        st = mt_st_writer_save(w, path, err);
    }
    mt_st_writer_free(w);
    if (copies) {
        for (int i = 0; i < m->n_params; i++) free(copies[i]);
        free(copies);
    }
    return st;
}

/* ---- streamed random initialisation ---- */

enum { STREAM_CHUNK = 1 << 16, STREAM_BATCH = 64 }; /* values per chunk; chunks per write */

/* One chunk of the fast initialisation: a stream of its own keyed by (seed, parameter,
 * chunk), each value a sum of four 16-bit uniforms scaled to unit variance: the discrete
 * uniform on 0..65535 has variance (65536² − 1)/12, four of them (65536² − 1)/3. */
static void fast_normal_chunk(uint64_t seed, int param, int64_t chunk, float std, float *dst, size_t n) {
    mt_rng r;
    mt_rng_seed(&r, mt_hash_u64(mt_hash_u64(seed, (uint64_t)param), (uint64_t)chunk));
    const double mean = 4 * 32767.5, scale = std / sqrt((65536.0 * 65536.0 - 1) / 3);
    for (size_t j = 0; j < n; j++) {
        uint64_t u = mt_rng_u64(&r);
        double sum = (double)(u & 0xffff) + (double)((u >> 16) & 0xffff) + (double)((u >> 32) & 0xffff) + (double)(u >> 48);
        dst[j] = (float)((sum - mean) * scale);
    }
}

static void put_stored(float x, mt_dtype dt, uint8_t *out) {
    if (dt == MT_DTYPE_F32) {
        uint32_t u;
        memcpy(&u, &x, sizeof u);
        for (int b = 0; b < 4; b++) out[b] = (uint8_t)(u >> (8 * b));
    } else {
        uint16_t u = dt == MT_DTYPE_F16 ? mt_f32_to_f16(x) : mt_f32_to_bf16(x);
        out[0] = (uint8_t)u;
        out[1] = (uint8_t)(u >> 8);
    }
}

/* The safetensors header mt_st_writer_save writes for these tensors in this order: the same
 * bytes, so the streamed file equals the one init + save make. Parameter names are the
 * tables' (letters, digits, '.', '_'): nothing to escape. */
static char *stream_header(const mt_model *m, mt_dtype dtype, size_t *len) {
    size_t cap = 4096 + (size_t)m->n_params * 192, n = 0;
    char *h = mt_xmalloc(cap);
    n += (size_t)snprintf(h + n, cap - n, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int i = 0; i < m->n_params; i++) {
        const mt_param *p = &m->params[i];
        mt_dtype dt = stored_dtype(p, dtype);
        uint64_t bytes = (uint64_t)p->numel * mt_dtype_size(dt);
        if (cap - n < strlen(p->name) + 160) {
            cap = 2 * cap + strlen(p->name) + 160;
            h = mt_xrealloc(h, cap);
        }
        n += (size_t)snprintf(h + n, cap - n, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", p->name, mt_dtype_name(dt));
        for (int d = 0; d < p->ndim; d++) n += (size_t)snprintf(h + n, cap - n, "%s%" PRId64, d ? "," : "", p->shape[d]);
        n += (size_t)snprintf(h + n, cap - n, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + bytes);
        off += bytes;
    }
    n += (size_t)snprintf(h + n, cap - n, "}");
    while (n % 8) h[n++] = ' ';
    h[n] = '\0';
    *len = n;
    return h;
}

mt_status mt_model_write_random(const mt_config *cfg, uint64_t seed, mt_dtype dtype, bool fast, int threads,
                                const char *dir, mt_error *err) {
    mt_status st = mt_config_validate(cfg, "config", err);
    if (st) return st;
    mt_model *m = NULL;
    st = mt_model_build(&m, cfg, NULL, err); /* names, shapes and init kinds; no memory for weights */
    if (st) return st;
    st = write_config_files(cfg, dir, dtype, err);
    char path[4096];
    if (!st && !mt_path_join(path, sizeof path, dir, "model.safetensors"))
        st = mt_error_set(err, MT_ERR_INVALID, "%s: path too long", dir);
    mt_atomic_file *f = NULL;
    if (!st) st = mt_atomic_file_open(&f, path, err);
    size_t hlen = 0;
    char *header = st ? NULL : stream_header(m, dtype, &hlen);
    if (!st) {
        uint8_t len8[8];
        for (int b = 0; b < 8; b++) len8[b] = (uint8_t)((uint64_t)hlen >> (8 * b));
        st = mt_atomic_file_write(f, len8, 8, err);
        if (!st) st = mt_atomic_file_write(f, header, hlen, err);
    }
    free(header);
    float std = cfg->initializer_range > 0 ? cfg->initializer_range : 0.02f;
    int nt = threads > 0 ? threads : 1;
    float *vals = mt_xmalloc((size_t)STREAM_BATCH * STREAM_CHUNK * sizeof(float));
    uint8_t *bytes = mt_xmalloc((size_t)STREAM_BATCH * STREAM_CHUNK * sizeof(float));
    for (int i = 0; i < m->n_params && !st; i++) {
        const mt_param *p = &m->params[i];
        mt_dtype dt = stored_dtype(p, dtype);
        size_t es = mt_dtype_size(dt);
        int64_t n_chunks = (p->numel + STREAM_CHUNK - 1) / STREAM_CHUNK;
        /* init_random's stream for this parameter, continued across batches when exact */
        mt_rng exact;
        mt_rng_seed(&exact, mt_hash_u64(seed, (uint64_t)i));
        for (int64_t c0 = 0; c0 < n_chunks && !st; c0 += STREAM_BATCH) {
            int64_t c1 = c0 + STREAM_BATCH < n_chunks ? c0 + STREAM_BATCH : n_chunks;
            int64_t first = c0 * STREAM_CHUNK, count = (c1 * STREAM_CHUNK < p->numel ? c1 * STREAM_CHUNK : p->numel) - first;
            if (m->init[i] != MT_PARAM_INIT_NORMAL) {
                float v = m->init[i] == MT_PARAM_INIT_ONE ? 1.0f : 0.0f;
                for (int64_t j = 0; j < count; j++) vals[j] = v;
            } else if (!fast) {
                for (int64_t j = 0; j < count; j++) vals[j] = std * mt_rng_normal(&exact);
            }
            int nthr = fast && m->init[i] == MT_PARAM_INIT_NORMAL ? nt : 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthr)
            for (int64_t c = c0; c < c1; c++) {
                int64_t lo = (c - c0) * STREAM_CHUNK, hi = lo + STREAM_CHUNK < count ? lo + STREAM_CHUNK : count;
                if (fast && m->init[i] == MT_PARAM_INIT_NORMAL) fast_normal_chunk(seed, i, c, std, vals + lo, (size_t)(hi - lo));
                for (int64_t j = lo; j < hi; j++) put_stored(vals[j], dt, bytes + (size_t)j * es);
            }
            st = mt_atomic_file_write(f, bytes, (size_t)count * es, err);
        }
    }
    free(vals);
    free(bytes);
    mt_model_free(m);
    if (!f) return st;
    if (st) {
        mt_atomic_file_abort(f);
        return st;
    }
    return mt_atomic_file_commit(f, err);
}

/* ---- accessors ---- */

const mt_config *mt_model_config(const mt_model *m) { return &m->cfg; }
mt_backend *mt_model_backend(const mt_model *m) { return m->be; }
int mt_model_param_count(const mt_model *m) { return m->n_params; }

mt_param *mt_model_param(mt_model *m, int i) {
    if (i < 0 || i >= m->n_params) return NULL;
    return &m->params[i];
}

mt_param *mt_model_find_param(mt_model *m, const char *name) {
    int i = index_find(&m->param_index, m, param_name_of, name);
    return i < 0 ? NULL : &m->params[i];
}

int mt_model_linear_count(const mt_model *m) { return m->n_linears; }

mt_linear *mt_model_linear(mt_model *m, int i) {
    if (i < 0 || i >= m->n_linears) return NULL;
    return &m->linears[i];
}

mt_linear *mt_model_find_linear(mt_model *m, const char *module) {
    int i = index_find(&m->linear_index, m, linear_name_of, module);
    return i < 0 ? NULL : &m->linears[i];
}

int mt_linear_index(const mt_model *m, const mt_linear *L) { return (int)(L - m->linears); }

static int param_index_of(const mt_model *m, const mt_param *p) {
    if (p < m->params || p >= m->params + m->n_params) return -1;
    return (int)(p - m->params);
}

mt_status mt_model_param_make_writable(mt_model *m, mt_param *p, mt_error *err) {
    int i = param_index_of(m, p);
    if (i < 0) return mt_error_set(err, MT_ERR_INVALID, "model: parameter does not belong to this model");
    if (m->home[i] != MT_PARAM_HOME_MMAP && m->home[i] != MT_PARAM_HOME_QUANT) return MT_OK;
    float *own = mt_backend_alloc(m->be, (size_t)p->numel * sizeof(float));
    if (!own)
        return mt_error_set(err, MT_ERR_NOMEM, "model: cannot allocate %.1f MB to make '%s' writable",
                            (double)p->numel * 4 / 1e6, p->name);
    /* low-precision storage exists on host backends only, so `own` is host memory then */
    if (p->dtype != MT_DTYPE_F32)
        mt_model_param_to_f32(m, p, own);
    else
        mt_backend_upload(m->be, own, p->data, (size_t)p->numel * sizeof(float));
    if (m->home[i] == MT_PARAM_HOME_QUANT) mt_backend_release(m->be, (void *)(uintptr_t)p->raw);
    p->data = own;
    p->dtype = MT_DTYPE_F32;
    p->raw = NULL;
    p->qscale = NULL;
    p->qgroup = 0;
    m->home[i] = MT_PARAM_HOME_OWN;
    return MT_OK;
}

mt_status mt_model_require_grad(mt_model *m, mt_param *p, mt_error *err) {
    if (param_index_of(m, p) < 0) return mt_error_set(err, MT_ERR_INVALID, "model: parameter does not belong to this model");
    if (p->grad) return MT_OK;
    /* a trained weight is updated in place, which the read-only mapping forbids */
    mt_status st = mt_model_param_make_writable(m, p, err);
    if (st) return st;
    p->grad = mt_backend_alloc(m->be, (size_t)p->numel * sizeof(float));
    if (!p->grad)
        return mt_error_set(err, MT_ERR_NOMEM, "model: cannot allocate %.1f MB of gradient for '%s'",
                            (double)p->numel * 4 / 1e6, p->name);
    mt_backend_memset0(m->be, p->grad, (size_t)p->numel * sizeof(float));
    return MT_OK;
}

void mt_model_zero_grad(mt_model *m) {
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].grad) mt_backend_memset0(m->be, m->params[i].grad, (size_t)m->params[i].numel * sizeof(float));
}

void mt_model_content_hash(const mt_model *m, char out[65]) {
    mt_sha256 h;
    mt_sha256_init(&h);
    bool host = mt_backend_is_host(m->be);
    enum { CHUNK = 1 << 16 };
    float *tmp = host ? NULL : mt_xmalloc(CHUNK * sizeof(float));
    for (int i = 0; i < m->n_params; i++) {
        const mt_param *p = &m->params[i];
        mt_sha256_update(&h, p->name, strlen(p->name) + 1);
        uint8_t dims[8 * 5];
        int nd = 0;
        uint64_t v = (uint64_t)p->ndim;
        for (int b = 0; b < 8; b++) dims[nd++] = (uint8_t)(v >> (8 * b));
        for (int k = 0; k < p->ndim; k++) {
            v = (uint64_t)p->shape[k];
            for (int b = 0; b < 8; b++) dims[nd++] = (uint8_t)(v >> (8 * b));
        }
        mt_sha256_update(&h, dims, (size_t)nd);
        /* little-endian fp32 bytes, the layout of every platform moetune builds on; a
         * low-precision weight hashes its values converted to fp32, row by row, so a bf16
         * checkpoint hashes alike whether it was loaded as bf16 or converted */
        if (p->dtype != MT_DTYPE_F32) {
            mt_lowp_weight w;
            mt_param_lowp(p, &w);
            float *row = mt_xmalloc((size_t)w.in * sizeof(float));
            for (int o = 0; o < w.out; o++) {
                mt_lowp_row_to_f32(&w, o, 0, w.in, row);
                mt_sha256_update(&h, row, (size_t)w.in * sizeof(float));
            }
            free(row);
        } else if (host) {
            mt_sha256_update(&h, p->data, (size_t)p->numel * sizeof(float));
        } else {
            for (int64_t o = 0; o < p->numel; o += CHUNK) {
                size_t n = (size_t)(p->numel - o < CHUNK ? p->numel - o : CHUNK);
                mt_backend_download(m->be, tmp, p->data + o, n * sizeof(float));
                mt_sha256_update(&h, tmp, n * sizeof(float));
            }
        }
    }
    free(tmp);
    uint8_t dig[32];
    mt_sha256_final(&h, dig);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", dig[i]);
}

/* ---- INT8 weight-only quantisation ---- */

mt_status mt_quant_from_name(const char *name, mt_quant *out) {
    if (name && !strcmp(name, "none")) {
        *out = MT_QUANT_NONE;
        return MT_OK;
    }
    if (name && !strcmp(name, "int8")) {
        *out = MT_QUANT_INT8;
        return MT_OK;
    }
    return MT_ERR_UNSUPPORTED;
}

/* Bytes of a quantised weight's block: the int8 values (padded to 64 bytes) then the scales. */
static size_t quant_bytes(const mt_param *p, int group, size_t *scale_off) {
    int64_t out = p->shape[0], in = p->shape[1], ng = (in + group - 1) / group;
    *scale_off = ((size_t)p->numel + 63) & ~(size_t)63;
    return *scale_off + (size_t)(out * ng) * sizeof(float);
}

/* Symmetric per-group quantisation of one row w [in]: s = max|w| / 127, q = round(w / s). */
static void quantize_row(const float *w, int in, int group, int8_t *q, float *scales) {
    for (int g0 = 0, gi = 0; g0 < in; g0 += group, gi++) {
        int ge = g0 + group < in ? g0 + group : in;
        float amax = 0.0f;
        for (int j = g0; j < ge; j++) amax = fmaxf(amax, fabsf(w[j]));
        float s = amax / 127.0f;
        scales[gi] = s;
        for (int j = g0; j < ge; j++) {
            long v = s > 0.0f ? lrintf(w[j] / s) : 0;
            q[j] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
    }
}

/* The pages wholly inside a mapped tensor go back to the page cache: a quantised weight no
 * longer reads them, and a populated mapping would otherwise keep them in the resident set. */
static void drop_mapped_pages(const void *p, size_t bytes) {
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0) return;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    uintptr_t e = ((uintptr_t)p + bytes) & ~((uintptr_t)pg - 1);
    if (e > a) (void)madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Moves the BLOCK parameters still there into a block of their own size, so the fp32 copies
 * of quantised weights are freed. Without memory for the new block the old one stays. */
static void compact_block(mt_model *m) {
    size_t total = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->home[i] == MT_PARAM_HOME_BLOCK) total += padded(m->params[i].numel);
    float *nb = total ? mt_backend_alloc(m->be, total * sizeof(float)) : NULL;
    if (total && !nb) return;
    size_t off = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->home[i] == MT_PARAM_HOME_BLOCK) {
            mt_param *p = &m->params[i];
            mt_backend_copy(m->be, nb + off, p->data, (size_t)p->numel * sizeof(float));
            p->data = nb + off;
            off += padded(p->numel);
        }
    mt_backend_release(m->be, m->block);
    m->block = nb;
}

mt_status mt_model_quantize(mt_model *m, mt_quant q, int group, mt_error *err) {
    if (q == MT_QUANT_NONE) return MT_OK;
    if (q != MT_QUANT_INT8) return mt_error_set(err, MT_ERR_INVALID, "quantize: unknown scheme %d", (int)q);
    if (group <= 0) group = MT_QUANT_GROUP_DEFAULT;
    if (group % 8)
        return mt_error_set(err, MT_ERR_INVALID, "quantize: the group size %d is not a multiple of 8", group);
    if (!mt_backend_is_host(m->be))
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "quantize: int8 weights run on the CPU backend, not %s",
                            mt_backend_name(m->be));
    bool *ok = lowp_candidates(m, false);
    void **bufs = mt_xcalloc((size_t)m->n_params, sizeof(void *));
    mt_status st = MT_OK;
    int max_in = 0;
    /* every buffer first: running out of memory leaves the model as it was */
    for (int i = 0; i < m->n_params && !st; i++) {
        mt_param *p = &m->params[i];
        if (!ok[i] || p->grad || p->dtype == MT_DTYPE_I8) continue;
        size_t off;
        bufs[i] = mt_backend_alloc(m->be, quant_bytes(p, group, &off));
        if (!bufs[i])
            st = mt_error_set(err, MT_ERR_NOMEM, "quantize: cannot allocate the int8 copy of '%s'", p->name);
        if (p->shape[1] > max_in) max_in = (int)p->shape[1];
    }
    if (st) {
        for (int i = 0; i < m->n_params; i++) mt_backend_release(m->be, bufs[i]);
        free(bufs);
        free(ok);
        return st;
    }
    float *row = mt_xmalloc((size_t)(max_in > 0 ? max_in : 1) * sizeof(float));
    bool from_block = false;
    for (int i = 0; i < m->n_params; i++) {
        if (!bufs[i]) continue;
        mt_param *p = &m->params[i];
        int out = (int)p->shape[0], in = (int)p->shape[1], ng = (in + group - 1) / group;
        size_t off;
        quant_bytes(p, group, &off);
        int8_t *qv = bufs[i];
        float *sc = (float *)((uint8_t *)bufs[i] + off);
        mt_lowp_weight w;
        if (p->dtype != MT_DTYPE_F32) mt_param_lowp(p, &w);
        for (int o = 0; o < out; o++) {
            const float *src = p->data ? p->data + (size_t)o * in : row;
            if (!p->data) mt_lowp_row_to_f32(&w, o, 0, in, row);
            quantize_row(src, in, group, qv + (size_t)o * in, sc + (size_t)o * ng);
        }
        switch (m->home[i]) {
        case MT_PARAM_HOME_OWN: mt_backend_release(m->be, p->data); break;
        case MT_PARAM_HOME_MMAP:
            drop_mapped_pages(p->data ? (const void *)p->data : p->raw,
                              (size_t)p->numel * (p->data ? sizeof(float) : sizeof(uint16_t)));
            break;
        case MT_PARAM_HOME_BLOCK: from_block = true; break;
        case MT_PARAM_HOME_QUANT: MT_ASSERT(0); break;
        }
        p->data = NULL;
        p->dtype = MT_DTYPE_I8;
        p->raw = qv;
        p->qscale = sc;
        p->qgroup = group;
        m->home[i] = MT_PARAM_HOME_QUANT;
    }
    if (from_block) compact_block(m);
    free(row);
    free(bufs);
    free(ok);
    return MT_OK;
}
