/* model.h — the model room's one public header: Hugging Face config.json, safetensors I/O,
 * tokenizers, and the Mixture-of-Experts decoder (forward, backward, KV cache, sampling) for
 * the deepseek_v3, deepseek_v2, qwen3_moe, qwen2_moe, mixtral and olmoe families.
 * Uses kernels/ for every tensor op; knows nothing of training loops or adapters' formats. */
#ifndef MT_MODEL_H
#define MT_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "tokenizer/tokenizer.h"
#include "chat/chat.h"

/* =========================================================================================
 * Configuration (config.json)
 * ========================================================================================= */

typedef enum mt_family {
    MT_FAMILY_DEEPSEEK_V3 = 0, /* moetune's default: MLA + sigmoid noaux_tc routing */
    MT_FAMILY_DEEPSEEK_V2,
    MT_FAMILY_QWEN3_MOE,
    MT_FAMILY_QWEN2_MOE,
    MT_FAMILY_MIXTRAL,
    MT_FAMILY_OLMOE,
    MT_FAMILY_COUNT
} mt_family;

typedef enum mt_qk_norm {
    MT_QK_NORM_NONE = 0,
    MT_QK_NORM_HEAD, /* Qwen3: RMSNorm over each head's head_dim, weight [head_dim] */
    MT_QK_NORM_PROJ, /* OLMoE: RMSNorm over the whole projection, weight [n_heads·head_dim] */
} mt_qk_norm;

typedef enum mt_rope_scaling {
    MT_ROPE_SCALING_NONE = 0,
    MT_ROPE_SCALING_LINEAR,
    MT_ROPE_SCALING_YARN,
} mt_rope_scaling;

#define MT_MAX_LAYERS 256
#define MT_MAX_EOS 8

typedef struct mt_config {
    mt_family family;
    int vocab_size;
    int hidden_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;            /* q/k/v head width for standard attention */
    int intermediate_size;   /* dense MLP width */
    float rms_norm_eps;
    double rope_theta;
    int max_position_embeddings;
    int sliding_window;      /* 0 = none */
    bool tie_word_embeddings;
    bool attention_bias;     /* q/k/v biases (Qwen2-MoE) */
    mt_qk_norm qk_norm;
    mt_rope_style rope_style;
    float initializer_range;

    /* rope scaling */
    mt_rope_scaling rope_scaling;
    double rope_factor;
    int rope_original_max_pos;
    double yarn_beta_fast, yarn_beta_slow, yarn_mscale, yarn_mscale_all_dim;

    /* mixture of experts */
    int n_experts;           /* routed experts; 0 = dense model */
    int top_k;
    int moe_intermediate_size;
    int n_shared_experts;    /* DeepSeek: shared MLP width = moe_intermediate_size·n_shared_experts */
    int shared_intermediate_size; /* Qwen2-MoE shared expert width; 0 = none */
    bool shared_expert_gate; /* Qwen2-MoE: σ(x·w) scales the shared expert */
    mt_route_scoring scoring;
    mt_route_method route_method;
    int n_group, topk_group;
    bool norm_topk_prob;
    mt_route_norm route_norm; /* derived from family + norm_topk_prob */
    float routed_scaling_factor;
    int first_k_dense_replace;
    int moe_layer_freq;
    int decoder_sparse_step;
    bool layer_is_moe[MT_MAX_LAYERS]; /* resolved from the keys above when loading */
    float router_aux_loss_coef;
    float router_jitter_noise;
    bool seq_aux;            /* DeepSeek-V2 sequence-wise aux loss */

    /* Multi-head Latent Attention (DeepSeek) */
    bool mla;
    int q_lora_rank;         /* 0 = q_proj directly */
    int kv_lora_rank;
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;

    int bos_token_id;        /* −1 when absent */
    int eos_token_ids[MT_MAX_EOS];
    int n_eos;
    char torch_dtype[16];    /* as written in config.json ("bfloat16", "float32") */
} mt_config;

const char *mt_family_name(mt_family f); /* the HF model_type */
mt_status mt_family_from_name(const char *model_type, mt_family *out, mt_error *err);

/* Parses a Hugging Face config.json. Unknown model_type, a missing required key or a value of
 * the wrong type is an error naming the file and the key. */
mt_status mt_config_load(mt_config *cfg, const char *path, mt_error *err);
/* Serialises to a config.json that transformers loads for this family. Caller frees *json. */
mt_status mt_config_to_json(const mt_config *cfg, char **json, mt_error *err);
/* Presets for `moetune init`: "tiny" and "small" (any family; vocab_size is the caller's
 * tokenizer's), and the published shapes "olmoe-1b-7b" and "deepseek-v2-lite" (their own
 * family and vocab_size; the tokenizer's vocab_size must not exceed it). */
mt_status mt_config_preset(mt_config *cfg, mt_family family, const char *preset, int vocab_size, mt_error *err);
/* True for a preset that fixes its family (the published shapes), which it stores in *family. */
bool mt_config_preset_family(const char *preset, mt_family *family);
/* Checks internal consistency (head counts divide, k ≤ experts, ...). */
mt_status mt_config_validate(const mt_config *cfg, const char *origin, mt_error *err);
/* Attention widths: q/k head width and v head width (differ under MLA). */
int mt_config_qk_head_dim(const mt_config *cfg);
int mt_config_v_head_dim(const mt_config *cfg);
/* Parameters in total and activated per token (routed experts counted k of E). */
int64_t mt_config_param_count(const mt_config *cfg, int64_t *active);
/* Forward FLOPs per token at context length T (matmuls 2·m·n·k, attention included). */
double mt_config_flops_per_token(const mt_config *cfg, int T);

/* =========================================================================================
 * safetensors
 * ========================================================================================= */

typedef enum mt_dtype {
    MT_DTYPE_F32 = 0,
    MT_DTYPE_F16,
    MT_DTYPE_BF16,
    MT_DTYPE_F64,
    MT_DTYPE_F8_E4M3,
    MT_DTYPE_F8_E5M2,
    MT_DTYPE_I64,
    MT_DTYPE_I32,
    MT_DTYPE_I16,
    MT_DTYPE_I8,
    MT_DTYPE_U64,
    MT_DTYPE_U32,
    MT_DTYPE_U16,
    MT_DTYPE_U8,
    MT_DTYPE_BOOL,
    MT_DTYPE_COUNT
} mt_dtype;

const char *mt_dtype_name(mt_dtype d); /* safetensors spelling: "BF16" */
size_t mt_dtype_size(mt_dtype d);
mt_status mt_dtype_from_name(const char *name, mt_dtype *out); /* MT_ERR_UNSUPPORTED if unknown */

float mt_bf16_to_f32(uint16_t h);
uint16_t mt_f32_to_bf16(float f); /* round to nearest even, NaN preserved */
float mt_f16_to_f32(uint16_t h);
uint16_t mt_f32_to_f16(float f);

#define MT_ST_MAX_DIMS 8

typedef struct mt_st_tensor {
    const char *name;
    mt_dtype dtype;
    int ndim;
    int64_t shape[MT_ST_MAX_DIMS];
    int64_t numel;
    const void *data; /* points into the read-only mapping */
    size_t nbytes;
    int shard;        /* which file of a sharded checkpoint */
} mt_st_tensor;

typedef struct mt_safetensors mt_safetensors;

/* `path` is a .safetensors file, a model.safetensors.index.json, or a folder holding either.
 * Files are mmap'ed read-only; every check the official reader makes is applied (header size
 * limit, valid JSON, offsets contiguous from 0 without holes or overlaps, sizes that match
 * dtype × shape with overflow-checked arithmetic, no duplicate names, file size exact). */
mt_status mt_safetensors_open(mt_safetensors **out, const char *path, mt_error *err);
void mt_safetensors_close(mt_safetensors *st);
size_t mt_safetensors_count(const mt_safetensors *st);
const mt_st_tensor *mt_safetensors_at(const mt_safetensors *st, size_t i);
const mt_st_tensor *mt_safetensors_find(const mt_safetensors *st, const char *name);
/* "__metadata__" value of the (first) file, or NULL */
const char *mt_safetensors_metadata(const mt_safetensors *st, const char *key);
/* Converts any float dtype (F32, F16, BF16, F64) to f32. dst holds numel floats. */
mt_status mt_st_tensor_to_f32(const mt_st_tensor *t, float *dst, mt_error *err);

typedef struct mt_st_writer mt_st_writer;

mt_st_writer *mt_st_writer_init(void);
void mt_st_writer_free(mt_st_writer *w);
/* Adds an f32 source tensor to be stored as `dtype` (F32, F16 or BF16). The data pointer is
 * kept, not copied: it must stay valid until save. Names must be unique (asserted). */
void mt_st_writer_add(mt_st_writer *w, const char *name, mt_dtype dtype, int ndim, const int64_t *shape,
                      const float *data);
void mt_st_writer_set_metadata(mt_st_writer *w, const char *key, const char *value);
/* One file, written atomically (header padded with spaces to a multiple of 8). */
mt_status mt_st_writer_save(const mt_st_writer *w, const char *path, mt_error *err);
/* Several files of at most max_shard_bytes plus model.safetensors.index.json in `dir`
 * (one file named model.safetensors when everything fits). */
mt_status mt_st_writer_save_sharded(const mt_st_writer *w, const char *dir, size_t max_shard_bytes, mt_error *err);

/* =========================================================================================
 * The model
 * ========================================================================================= */

/* A named parameter, named as in the Hugging Face checkpoint. */
typedef struct mt_param {
    const char *name;   /* "model.layers.0.self_attn.q_proj.weight" */
    int ndim;
    int64_t shape[4];
    int64_t numel;
    float *data;        /* backend memory, fp32; NULL while the values are held in `raw` */
    float *grad;        /* NULL unless mt_model_require_grad was called on it */
    /* A frozen linear weight may keep a low-precision storage instead of fp32 `data`: BF16 or
     * F16 as the checkpoint stores it (read straight from the file mapping), or I8 after
     * mt_model_quantize (values q·qscale). Everything else, and every weight with a gradient,
     * is F32. */
    mt_dtype dtype;      /* F32, BF16, F16 or I8 */
    const void *raw;     /* [shape] BF16/F16 (uint16) or I8 (int8) values; NULL for F32 */
    const float *qscale; /* I8: [out, ceil(in / qgroup)] fp32 scales */
    int qgroup;          /* I8: elements of a row per scale */
} mt_param;

typedef enum mt_linear_kind {
    MT_LINEAR_ATTN = 0,  /* q/k/v/o and MLA's q_a/q_b/kv_a/kv_b projections */
    MT_LINEAR_MLP,       /* dense MLP gate/up/down */
    MT_LINEAR_EXPERT,    /* a routed expert's gate/up/down */
    MT_LINEAR_SHARED,    /* shared expert(s) gate/up/down and Qwen2's shared_expert_gate */
    MT_LINEAR_ROUTER,    /* the router (mlp.gate) */
    MT_LINEAR_LM_HEAD,
    MT_LINEAR_KIND_COUNT
} mt_linear_kind;

/* ---- adapters as data ----
 * An adapter is not installed into the model: it is a table of low-rank deltas, one per
 * linear layer (or none), that a pass is given. The base GEMM of a linear runs once for all
 * rows of a pass; then each run of rows that share an adapter gets that adapter's delta (the
 * Punica/S-LoRA idea). "No adapter" (NULL) is a slot like any other, so base-model rows and
 * adapted rows decode in one step, and one model serves many adapters at once. peft/ builds
 * these tables (LoRA, PEFT folders, the registry); model/ only applies them. */

/* What a training forward keeps of one trainable delta for its backward: h = dropout(x)·Aᵀ and
 * the dropout mask as bits (32× smaller than the dropped-out input PEFT keeps), so the backward
 * neither recomputes the projection nor hashes the mask again. Grown on first use; a backward
 * that does not follow its forward's rows (another pass in between) recomputes instead. */
typedef struct mt_lowrank_tape mt_lowrank_tape;
mt_lowrank_tape *mt_lowrank_tape_new(void);
void mt_lowrank_tape_free(mt_lowrank_tape *t);

/* One linear's delta in one adapter: y += scale·(dropout(x)·Aᵀ)·Bᵀ. */
typedef struct mt_lowrank {
    int r;
    float scale;
    const float *A;      /* [r, in] */
    const float *B;      /* [out, r] */
    float *dA, *dB;      /* gradients, accumulated by backward; NULL for a frozen adapter */
    mt_lowrank_tape *tape; /* NULL: the backward recomputes h and the mask */
} mt_lowrank;

typedef struct mt_adapter {
    int n_linears;                 /* the model's linear count (checked by every pass) */
    const mt_lowrank *const *lin;  /* [n_linears], NULL where the linear is not adapted */
    float dropout;                 /* on the delta's input, training passes only */
    int max_rank;                  /* largest r in lin */
} mt_adapter;

/* y = x·Wᵀ + b (+ adapter). */
typedef struct mt_linear {
    const char *module;  /* HF module path, what PEFT's target_modules match:
                            "model.layers.0.mlp.experts.3.gate_proj" */
    mt_linear_kind kind;
    int layer;           /* −1 for lm_head */
    int expert;          /* routed expert index, else −1 */
    int in, out;
    mt_param *weight;    /* [out, in] */
    mt_param *bias;      /* [out] or NULL */
} mt_linear;

typedef struct mt_model mt_model;

/* Loads config.json and the safetensors weights (f32/bf16/f16) of an HF model folder onto
 * the backend. Tensors missing or of the wrong shape are errors naming the tensor. On the CPU,
 * F32 tensors are used straight from the read-only mapping, and so are BF16/F16 linear
 * weights (p->dtype, p->raw; no fp32 copy): the GEMMs convert them on the fly. Embeddings,
 * norms, biases and MLA's kv_b_proj are converted to fp32. */
mt_status mt_model_load(mt_model **out, const char *dir, mt_backend *be, mt_error *err);
/* Random initialisation as transformers does (normal(0, initializer_range), norms 1). */
mt_status mt_model_init_random(mt_model **out, const mt_config *cfg, uint64_t seed, mt_backend *be, mt_error *err);
void mt_model_free(mt_model *m);
/* Writes config.json, generation_config.json and model.safetensors (sharded above
 * max_shard_bytes; 0 = never) in `dir`, weights stored as `dtype`. */
mt_status mt_model_save(const mt_model *m, const char *dir, mt_dtype dtype, size_t max_shard_bytes, mt_error *err);
/* mt_model_init_random followed by mt_model_save (one model.safetensors), streamed: the
 * weights are generated and written a chunk at a time, so memory stays at a few MB per thread
 * whatever the model's size. fast = false gives the very bytes init + save would;
 * fast = true draws each 64 Ki-value chunk from its own stream (so threads share a tensor)
 * as a sum of four uniforms (Irwin–Hall: mean 0, standard deviation initializer_range, cut
 * off at ±3.46σ) — about 20x cheaper than Box–Muller, for models of billions of values. */
mt_status mt_model_write_random(const mt_config *cfg, uint64_t seed, mt_dtype dtype, bool fast, int threads,
                                const char *dir, mt_error *err);

const mt_config *mt_model_config(const mt_model *m);
mt_backend *mt_model_backend(const mt_model *m);
int mt_model_param_count(const mt_model *m);
mt_param *mt_model_param(mt_model *m, int i);
mt_param *mt_model_find_param(mt_model *m, const char *name);
int mt_model_linear_count(const mt_model *m);
mt_linear *mt_model_linear(mt_model *m, int i);
mt_linear *mt_model_find_linear(mt_model *m, const char *module);
/* Allocates (zeroed) a gradient buffer for the parameter; the backward pass fills it. A
 * parameter still in the read-only safetensors mapping is first copied (made writable). */
mt_status mt_model_require_grad(mt_model *m, mt_param *p, mt_error *err);
/* F32 tensors are used straight from the read-only file mapping: call this before changing a
 * parameter's values in place (merging an adapter, an optimiser step without a gradient). A
 * BF16/F16/I8 weight becomes an fp32 copy of its (dequantised) values. */
mt_status mt_model_param_make_writable(mt_model *m, mt_param *p, mt_error *err);
void mt_model_zero_grad(mt_model *m);
/* A parameter's values as fp32 into host memory dst [numel], whatever its storage (F32, or a
 * low-precision weight converted or dequantised). */
void mt_model_param_to_f32(const mt_model *m, const mt_param *p, float *dst);

/* Weight-only quantisation of the frozen base. INT8: symmetric, per output channel and per
 * group of `group` consecutive input elements (group <= 0: MT_QUANT_GROUP_DEFAULT; a multiple
 * of 8; a group as wide as the row is plain per-channel), scale s = max|w| / 127 per group,
 * q = round(w / s), so |w − q·s| <= s/2. Every linear weight without a gradient is
 * quantised (its fp32 or 16-bit copy freed) except three that other code reads as fp32 or
 * that routing is sensitive to: the router (mlp.gate), MLA's kv_b_proj (decode absorbs it
 * into the queries) and a tied LM head (it is the embedding table). Training LoRA on top works:
 * the base GEMMs dequantise on the fly. Content hashes afterwards are of the dequantised
 * values. */
typedef enum mt_quant {
    MT_QUANT_NONE = 0,
    MT_QUANT_INT8,
} mt_quant;
#define MT_QUANT_GROUP_DEFAULT 64
mt_status mt_model_quantize(mt_model *m, mt_quant q, int group, mt_error *err);
mt_status mt_quant_from_name(const char *name, mt_quant *out); /* "none", "int8" */
/* SHA-256 over the parameter names, shapes and fp32 values: identifies a base model whatever
 * dtype or sharding it was stored with. */
void mt_model_content_hash(const mt_model *m, char out[65]);

/* ---- one training or evaluation step ---- */

typedef struct mt_batch {
    int B, T;
    const int32_t *tokens;   /* [B·T] */
    const int32_t *targets;  /* [B·T] the next token for each position, or MT_IGNORE_INDEX;
                                NULL: no loss (logits only) */
    const int32_t *pos;      /* [B·T] positions; NULL = 0..T−1 in every row */
    const int32_t *kv_start; /* [B·T] first key each query may see (packed documents); NULL = 0 */
} mt_batch;

typedef struct mt_forward_opts {
    bool train;           /* keep activations for backward; dropout and router noise on */
    uint64_t seed;        /* per step: dropout masks and router noise derive from it */
    float router_noise;   /* multiplicative jitter ε on router inputs (Mixtral), 0 = off */
    float aux_coef;       /* weight of the load-balancing loss, 0 = off */
    const mt_adapter *adapter; /* applied to every row; NULL = the base model alone */
    float *logits_out;    /* optional [B·T, V]: the full logits (tests, evaluation) */
    /* Routing record and replay, [n_layers][B·T][top_k] host arrays, CPU backend only (entries
     * of dense layers untouched). route_out receives the experts each MoE layer's router chose
     * for each row; where route_in's row starts with an expert (not −1) and names another set
     * than the router chose, that row is sent to route_in's experts instead, weighted as the
     * router weights its own choice (its scores renormalised over the set, then scaled); the
     * same set leaves the router's weights as they are. An RL trainer replays a rollout's
     * routes. */
    int32_t *route_out;
    const int32_t *route_in;
    /* optional [n_layers][B·T] host array, CPU backend only (dense layers' entries untouched):
     * the share of each row's router scores its top_k chosen experts hold
     * (mt_route_topk_share), what the trainer calibrates adaptive expert counts on */
    float *topk_share_out;
    /* Token losses and their backward on logits / temperature (0 or 1 = the logits): the
     * sampler's distribution, whose log-probs RL objectives need */
    float temperature;
} mt_forward_opts;

typedef struct mt_forward_result {
    double loss_sum;      /* Σ cross-entropy over tokens with a target */
    int64_t n_tokens;     /* tokens with a target */
    double aux_loss;      /* load-balancing loss (unweighted), 0 when no MoE layer */
    const float *token_loss; /* [B·T] −log p(target), 0 where ignored (owned by the workspace) */
} mt_forward_result;

typedef struct mt_workspace mt_workspace;

/* Activation memory for batches up to B×T, allocated once: forward and backward never
 * allocate. `train` keeps what backward needs. Adapter scratch is sized for ranks up to
 * max_rank (0: MT_DEFAULT_MAX_RANK); a pass with a higher-rank adapter is refused. */
#define MT_DEFAULT_MAX_RANK 64
mt_status mt_workspace_init(mt_workspace **out, mt_model *m, int B, int T, bool train, int max_rank, mt_error *err);
/* Activation checkpointing of a training workspace (docs/performance.md): NONE keeps every
 * layer's activations for the backward; LAYERS keeps each layer's input and one activation set
 * for all layers, and the backward recomputes each layer's forward from its input before its
 * backward (activation memory of one layer instead of all); SELECTIVE keeps every GEMM and
 * attention output of every layer and recomputes only what costs no GEMM: the two RMSNorm
 * outputs, QK-norm's normed and roped q/k, MLA's normed latents and expanded keys, the MoE
 * input's jitter and its gather into expert order. Losses and gradients are bit-identical in
 * all three. */
typedef enum mt_checkpointing {
    MT_CHECKPOINTING_NONE = 0,
    MT_CHECKPOINTING_LAYERS,
    MT_CHECKPOINTING_SELECTIVE,
} mt_checkpointing;
/* mt_workspace_init(out, m, B, T, true, max_rank, err) with checkpointing ck. */
mt_status mt_workspace_init_checkpointed(mt_workspace **out, mt_model *m, int B, int T, int max_rank,
                                         mt_checkpointing ck, mt_error *err);
void mt_workspace_free(mt_workspace *ws);
size_t mt_workspace_bytes(const mt_workspace *ws);

mt_status mt_model_forward(mt_model *m, mt_workspace *ws, const mt_batch *batch, const mt_forward_opts *opts,
                           mt_forward_result *res, mt_error *err);
/* Backpropagates ∂L/∂(token_loss) (dloss [B·T]; NULL = 1/n_tokens on every token with a target,
 * i.e. the mean) plus aux_coef·aux into every parameter with a gradient buffer and every
 * gradient buffer of the forward's adapter (dA/dB). Requires a preceding forward with
 * train = true on the same batch. */
mt_status mt_model_backward(mt_model *m, mt_workspace *ws, const float *dloss, mt_error *err);
/* The same, plus dhidden [B·T, hidden] (may be NULL) added to ∂L/∂(final hidden states after
 * the final norm, mt_workspace_hidden(ws, L)): the backward of a head on them (a reward or
 * value head). dloss may be NULL with dhidden when the loss has no token term. */
mt_status mt_model_backward_hidden(mt_model *m, mt_workspace *ws, const float *dloss, const float *dhidden,
                                   mt_error *err);
/* ∂L/∂(input embeddings) [B·T, hidden] after backward (the model's gradient for its inputs). */
const float *mt_workspace_input_grad(const mt_workspace *ws);
/* Hidden states of the last forward as transformers' output_hidden_states gives them, each
 * [B·T, hidden]: i < L is layer i's input (i = 0: the embeddings), i = L the last layer's output
 * after the final norm. NULL outside [0, L], and for i < L in a workspace made without train
 * (one made without train keeps the final states only: enough for a reward or value head). */
const float *mt_workspace_hidden(const mt_workspace *ws, int i);

typedef struct mt_router_stats {
    int layer;
    double entropy;          /* mean over tokens of the routing distribution's entropy, nats */
    const int32_t *tokens_per_expert; /* [n_experts] after the last forward */
} mt_router_stats;

/* Statistics of the last forward for the i-th MoE layer; returns false past the last one. */
bool mt_workspace_router_stats(const mt_workspace *ws, int i, mt_router_stats *out);

/* ---- paged KV cache ----
 * One pool of fixed-size blocks for all sequences; each sequence has a block table. A block
 * holds block_size positions of every layer: K and V per KV head (post-norm, post-RoPE), or
 * for MLA the normed latent c [kv_lora_rank] and the roped k_pe per position (decoding uses
 * the absorbed form, which is what keeps MLA's cache small). Blocks are reference-counted: a
 * forked sequence shares its parent's blocks (several samples of one prompt) and the first
 * write into a shared block copies it (copy-on-write). A pool is used from one thread at a
 * time. */

typedef struct mt_kv_pool mt_kv_pool;

typedef struct mt_kv_pool_opts {
    int block_size;   /* positions per block; 0 = 16 */
    int n_blocks;     /* blocks in the pool */
    int max_seqs;     /* sequences open at once */
    int max_seq_len;  /* positions one sequence may hold; 0 = max_position_embeddings */
} mt_kv_pool_opts;

mt_status mt_kv_pool_init(mt_kv_pool **out, const mt_model *m, const mt_kv_pool_opts *o, mt_error *err);
void mt_kv_pool_free(mt_kv_pool *p);
size_t mt_kv_pool_bytes(const mt_kv_pool *p);
int mt_kv_pool_block_size(const mt_kv_pool *p);
int mt_kv_pool_blocks_total(const mt_kv_pool *p);
int mt_kv_pool_blocks_free(const mt_kv_pool *p);
int mt_kv_pool_seqs_open(const mt_kv_pool *p);
/* A new empty sequence. MT_ERR_EXHAUSTED when max_seqs are open. */
mt_status mt_kv_seq_open(mt_kv_pool *p, int *seq, mt_error *err);
/* A new sequence holding src's positions by sharing src's blocks (no copy until written). */
mt_status mt_kv_seq_fork(mt_kv_pool *p, int src, int *seq, mt_error *err);
/* Ends a sequence; blocks no other sequence shares go back to the pool. */
void mt_kv_seq_close(mt_kv_pool *p, int seq);
int mt_kv_seq_len(const mt_kv_pool *p, int seq); /* −1 for a sequence that is not open */
/* Blocks appending n positions to seq would take from the pool (new blocks, and the copy of
 * a shared last block): a scheduler's admission and preemption test. */
int mt_kv_seq_blocks_needed(const mt_kv_pool *p, int seq, int n);

/* ---- batched decode: one step over many sequences ----
 * A step runs R rows. Each row names its sequence, its position (the sequence's length, +1
 * for each earlier row of the same sequence in the step) and its adapter slot. A row may be a
 * piece of a prompt (prefill, several rows of one sequence) or one new token; both kinds mix
 * in one step, which is what continuous batching needs. */

/* Adaptive expert counts of a pass or a row (docs/attention-pruning.md). */
typedef struct mt_adaptive_k {
    float threshold; /* experts in router order until their share of Σ_E scores ≥ threshold; ≥ 1 = top-max-k */
    int min_k, max_k; /* bounds (0 = 1 and the config's top_k) */
} mt_adaptive_k;

typedef struct mt_decode_batch {
    int n_rows;
    const int32_t *tokens;          /* [n_rows] */
    const int32_t *seq;             /* [n_rows] pool sequence of each row */
    const int32_t *pos;             /* [n_rows] position of each row; NULL = implied by the order */
    const int32_t *slot;            /* [n_rows] index into adapters; NULL = slot 0 for every row */
    const mt_adapter *const *adapters; /* [n_slots]; an entry may be NULL: the base model */
    int n_slots;                    /* 0 with adapters NULL: every row is the base model */
    const int32_t *logit_rows;      /* [n_logits] rows whose next-token logits are wanted */
    int n_logits;
    int32_t *route_out;             /* optional [n_layers][n_rows][top_k] (CPU): the experts chosen
                                       for each row by each MoE layer */
    const float *dap_threshold;     /* optional [n_rows] DAP τ of each row in [0, 1] (CPU); NULL or
                                       0 = full attention, the unchanged path (docs/attention-pruning.md) */
    const mt_adaptive_k *adaptive_k; /* optional [n_rows] adaptive expert counts of each row
                                       (CPU; threshold 0: the config's top_k); NULL = the model's
                                       setting (mt_model_set_adaptive_k) */
    int32_t *experts_used;          /* optional [n_rows] out: routed experts each row used, summed
                                       over the MoE layers (n_moe·top_k with fixed routing) */
} mt_decode_batch;

/* The activation buffers of one step: up to max_rows rows, adapters up to max_rank (0:
 * MT_DEFAULT_MAX_RANK). One decoder per decoding thread; the model is shared read-only. */
typedef struct mt_decoder mt_decoder;

mt_status mt_decoder_init(mt_decoder **out, mt_model *m, int max_rows, int max_rank, mt_error *err);
void mt_decoder_free(mt_decoder *d);
int mt_decoder_max_rows(const mt_decoder *d);
size_t mt_decoder_bytes(const mt_decoder *d);
/* Runs one step: each row's K/V is appended to its sequence and logits [n_logits, V] written
 * in logit_rows order. Bad input (a token outside the vocabulary, a position out of order, a
 * closed sequence, too many rows, an adapter for another model or of too high a rank) is
 * MT_ERR_INVALID; not enough free blocks is MT_ERR_EXHAUSTED (the caller preempts and
 * retries). Either way the pool is left exactly as it was. */
mt_status mt_decode_step(mt_decoder *d, mt_kv_pool *p, const mt_decode_batch *b, float *logits, mt_error *err);
/* Routing of the last step's i-th MoE layer (entropy over the step's rows). */
bool mt_decoder_router_stats(const mt_decoder *d, int i, mt_router_stats *out);

/* ---- one sequence, the simple way (a pool of one sequence plus a decoder) ---- */

typedef struct mt_kv_cache mt_kv_cache;

mt_status mt_kv_cache_init(mt_kv_cache **out, mt_model *m, int max_seq, mt_error *err);
void mt_kv_cache_free(mt_kv_cache *c);
void mt_kv_cache_reset(mt_kv_cache *c);
int mt_kv_cache_len(const mt_kv_cache *c);
size_t mt_kv_cache_bytes(const mt_kv_cache *c);
/* The adapter later decode calls apply (NULL: the base). Kept by pointer. */
mt_status mt_kv_cache_set_adapter(mt_kv_cache *c, const mt_adapter *a, mt_error *err);

/* Runs n tokens (a prompt chunk, or one token) at positions len .. len+n−1, appends them to
 * the cache, and writes the logits of the last one to logits [V]. */
mt_status mt_model_decode(mt_model *m, mt_kv_cache *c, const int32_t *tokens, int n, float *logits, mt_error *err);

/* ---- sampling and generation ---- */

typedef struct mt_sample_opts {
    float temperature;   /* 0 = greedy */
    int top_k;           /* 0 = off */
    float top_p;         /* 1 = off */
    uint64_t seed;
} mt_sample_opts;

/* Picks a token from logits [V] (modified in place). Deterministic for a given rng state. */
int32_t mt_sample(const mt_sample_opts *o, float *logits, int V, mt_rng *rng);

typedef struct mt_generate_opts {
    mt_sample_opts sample;
    int max_new_tokens;
    const char *const *stop;  /* stop strings; a sequence ends when its text reaches one */
    int n_stop;
    bool stop_at_eos;
    /* called with each new piece of text of output `index` (complete UTF-8, never a possible
     * start of a stop string); return false to stop that output early */
    bool (*on_text)(void *user, int index, const char *text, size_t len);
    void *user;
    /* DAP on every step, prefill and decode: NULL or threshold 0 = off (a prompt may carry its
       own τ, with the sinks, window and floor of these options); the counts of the run are
       written to dap_counts when given */
    const struct mt_dap_opts *dap;
    struct mt_dap_counts *dap_counts;
} mt_generate_opts;

/* One prompt of a generation batch. */
typedef struct mt_gen_prompt {
    const char *text;
    const mt_adapter *adapter; /* NULL: the base model */
    int n;                     /* samples of this prompt (0 = 1); they share its prompt blocks */
    bool dap_own;              /* this prompt's DAP τ is dap_threshold (in [0, 1]; e.g. its
                                  adapter's domain threshold), not the options' */
    float dap_threshold;
} mt_gen_prompt;

typedef struct mt_generate_result {
    int n_prompt_tokens, n_new_tokens;
    double prefill_seconds, decode_seconds; /* of the whole batch */
    char *text;         /* generated text without the prompt, stop string removed; malloc'ed,
                           NUL-terminated, may hold NULs of its own (byte tokens) */
    size_t len;         /* bytes of text */
    const char *finish; /* "stop", "length" or "eos" */
} mt_generate_result;

/* Generates for all prompts in one batch: each prompt is prefilled once (in chunks), its n
 * samples fork its blocks, then every live sequence decodes one token per step, each with its
 * prompt's adapter. res has Σ n entries, prompt by prompt. Sample j of a prompt draws from an
 * rng seeded with o->sample.seed + j, so the same seed gives the same text whatever else is
 * in the batch. */
mt_status mt_generate(mt_model *m, const mt_tokenizer *tok, const mt_gen_prompt *prompts, int n_prompts,
                      const mt_generate_opts *o, mt_generate_result *res, mt_error *err);
void mt_generate_result_free(mt_generate_result *r);

/* ---- dynamic attention pruning and adaptive expert counts (docs/attention-pruning.md) ---- */

typedef struct mt_dap_opts {
    float threshold;    /* τ: a block whose bound gives its keys at most τ× the best block's
                           weight is skipped; 0 = full attention exactly */
    int n_sink_blocks;  /* the first blocks, always kept (attention sinks) */
    int n_local_blocks; /* the last blocks, always kept (local window) */
    float mass_floor;   /* kept blocks' estimated share of the mass below this: full attention */
} mt_dap_opts;
typedef struct mt_dap_counts {
    uint64_t queries, blocks, skipped, fallbacks;
} mt_dap_counts;
/* Per-channel min/max of n_tok key rows (row stride `stride` floats) over d channels. */
void mt_dap_block_summary(const float *k, int n_tok, int d, int stride, float *kmin, float *kmax);
/* An upper bound of q·k for every k inside [kmin, kmax] (channel-wise). */
float mt_dap_block_bound(const float *q, const float *kmin, const float *kmax, int d);
/* keep[b] = 1 for the blocks attended, from their bounds (unscaled q·k) and token counts;
 * returns how many are kept. o NULL or threshold 0 keeps all. Counts are accumulated. */
int mt_dap_select(const float *bounds, const int *n_tok, int n_blocks, float scale, const mt_dap_opts *o,
                  uint8_t *keep, mt_dap_counts *c);
/* One head's decode attention of q [d] over n_tok keys/values [n_tok, d] in blocks of `block`
 * rows, with DAP (o may be NULL). scratch holds mt_dap_attend_scratch() bytes. */
void mt_dap_attend(const float *q, const float *k, const float *v, int n_tok, int d, int block, float scale,
                   const mt_dap_opts *o, mt_dap_counts *c, float *scratch, float *out);
size_t mt_dap_attend_scratch(int n_tok, int d, int block);
/* DAP in the paged decode (CPU backend). The pool keeps every block's per-channel key min/max
 * (per layer and KV head: post-RoPE K; MLA: the absorbed form's key [c | k_pe], whose score
 * q_abs·c + q_pe·k_pe is one dot product), updated as rows are written and copied with a block
 * on copy-on-write. A row of mt_decode_batch with dap_threshold τ > 0 attends, per query head,
 * to the blocks mt_dap_select keeps (sinks and local window always; all of them on fallback).
 * The decoder's options give sinks, local window and mass floor (its threshold is unused:
 * τ is per row); default 1, 1, 0.9. Setting them resets the counts. */
void mt_decoder_set_dap(mt_decoder *d, const mt_dap_opts *o);
/* Counts since the options were last set: (row, layer, query head) triples with τ > 0, their
 * blocks, skipped blocks, fallbacks. */
void mt_decoder_dap_stats(const mt_decoder *d, mt_dap_counts *out);

/* After mt_route_forward: for each token keeps its first c of K chosen experts (c from the
 * cumulative router probability, clamped), renormalises their weights as `norm`/`scale` do and
 * zeroes the rest. k_used [n_tok] may be NULL. Returns Σ c. */
int mt_route_adaptive_k(const float *scores, int n_tok, int E, int K, const int32_t *idx, float *w,
                        const mt_adaptive_k *a, mt_route_norm norm, float scale, int32_t *k_used);
/* share[t] = Σ_{j<K} scores[t, idx[t, j]] / Σ_{e<E} scores[t, e]: the part of token t's router
 * scores its K chosen experts hold, in double, over all E scores as mt_route_adaptive_k's
 * cumulative share is: under threshold P a token whose share is below P keeps all K experts,
 * and only one whose share reaches P can stop earlier. */
void mt_route_topk_share(const float *scores, int n_tok, int E, int K, const int32_t *idx, float *share);
/* Adaptive routing for the model's inference passes on the CPU (NULL or threshold 0: off),
 * and the (token, MoE layer) pairs and experts it has routed since it was set. Dropped slots
 * are not dispatched: an expert runs over the rows it keeps (docs/attention-pruning.md). A
 * decode step with per-row settings (mt_decode_batch.adaptive_k) uses those instead and
 * counts through experts_used, not here. */
void mt_model_set_adaptive_k(mt_model *m, const mt_adaptive_k *a);
void mt_model_adaptive_k_stats(const mt_model *m, uint64_t *tokens, uint64_t *experts);

/* ---- profiler (docs/profile.md) ----
 * A profile set on the model records what its forward passes and decode steps run, per layer
 * and part: wall time around the part, FLOPs counted from the shapes (2·m·n·k per GEMM, the
 * attention core's two matmuls over the keys each query actually sees, 4 per RMSNorm
 * element), and bytes moved as a model (each GEMM reads its weight in its stored dtype and
 * its input and writes its output in fp32; the attention core reads Q, K, V and writes O
 * once; a norm reads its input and weight and writes its output; elementwise glue — RoPE,
 * SwiGLU, expert gather/scatter, residual adds — is not counted). Routed experts count the
 * rows actually routed to each one. Profiling changes no number a pass computes; a model with
 * a profile set is used from one thread. */

typedef enum mt_prof_part {
    MT_PROF_EMBEDDING = 0,
    MT_PROF_NORM,       /* input / post-attention / final RMSNorm */
    MT_PROF_ATTN_PROJ,  /* q/k/v/o (MLA: q_a, q_b, kv_a, kv_b) GEMMs with the block's own norms and RoPE */
    MT_PROF_ATTN_CORE,  /* softmax(q·kᵀ)·v (MLA decode: with the absorbed kv_b products) */
    MT_PROF_ROUTER,     /* router GEMM, scoring, top-k */
    MT_PROF_EXPERTS,    /* routed experts: permute, expert GEMMs, SwiGLU, weighted scatter */
    MT_PROF_SHARED,     /* shared expert(s) and Qwen2's gate */
    MT_PROF_DENSE_MLP,
    MT_PROF_LORA,       /* every adapter delta, wherever it is applied */
    MT_PROF_LM_HEAD,
    MT_PROF_PART_COUNT
} mt_prof_part;
const char *mt_prof_part_name(mt_prof_part p); /* "attn_proj", ... */

typedef struct mt_prof_cell {
    double seconds, flops, bytes;
    uint64_t calls;
} mt_prof_cell;

typedef struct mt_profile mt_profile;

/* dap: evaluate the pruning rule on every whole-sequence attention (NULL or threshold 0: not
 * evaluated); dap_block: keys per block (0 = 16, the KV pool's default). */
mt_status mt_profile_init(mt_profile **out, const mt_model *m, const mt_dap_opts *dap, int dap_block, mt_error *err);
void mt_profile_free(mt_profile *p);
/* Passes record into p from now on (NULL: off, the default). */
void mt_model_set_profile(mt_model *m, mt_profile *p);
/* Layer l < n_layers, or l = n_layers for the model-level parts (embedding, final norm, lm_head). */
const mt_prof_cell *mt_profile_cell(const mt_profile *p, int layer, mt_prof_part part);
/* Sum over every layer and part. */
mt_prof_cell mt_profile_total(const mt_profile *p);
/* Rows through the profiled passes and their wall time (parts + what no part covers). */
void mt_profile_passes(const mt_profile *p, uint64_t *passes, uint64_t *rows, double *seconds);
/* Routing of MoE layer l: rows routed to each expert [n_experts] (NULL for a dense layer),
 * tokens, and routed slots with a nonzero weight. */
const uint64_t *mt_profile_routing(const mt_profile *p, int layer, uint64_t *tokens, uint64_t *experts_used);
/* What the DAP rule would skip on layer l (query-head pairs, blocks, skipped, fallbacks). */
mt_dap_counts mt_profile_dap(const mt_profile *p, int layer);

typedef enum mt_prof_breakdown {
    MT_PROF_BY_LAYER_TYPE = 0, /* attention / moe / dense-mlp / norm / lora / lm_head / embedding */
    MT_PROF_BY_LAYER,
    MT_PROF_BY_OP,             /* every part of every layer */
} mt_prof_breakdown;
mt_status mt_prof_breakdown_from_name(const char *name, mt_prof_breakdown *out);

enum { MT_PROF_LATENCY = 1, MT_PROF_FLOPS = 2, MT_PROF_MEMORY = 4 };
/* "latency,flops,memory" (any subset) to MT_PROF_* bits; an unknown name is an error naming it. */
mt_status mt_prof_metrics_from_list(const char *list, unsigned *out, mt_error *err);

typedef struct mt_prof_memory {
    size_t weight_bytes;    /* parameters as stored (mt_profile_weight_bytes) */
    size_t workspace_bytes; /* activation memory of the profiled passes */
    size_t kv_bytes;        /* KV cache of profiled decode, 0 when none */
    size_t peak_rss_bytes;  /* of the process */
} mt_prof_memory;
size_t mt_profile_weight_bytes(const mt_model *m);
size_t mt_profile_peak_rss(void);

/* The report: a table (name, time ms, share %, GFLOP, GFLOP/s, MB moved, GB/s: the columns
 * `metrics` asks for) followed by routing and DAP lines; and a JSON object with every cell.
 * Both malloc'ed. */
char *mt_profile_table(const mt_profile *p, const char *title, mt_prof_breakdown b, unsigned metrics,
                       const mt_prof_memory *mem);
char *mt_profile_json(const mt_profile *p, const mt_prof_memory *mem);

/* Reads FILE (JSONL with a "text" field per line, or plain text lines), encodes every
 * document with tok (its BOS as the post-processor adds it) and concatenates them: *ids
 * (malloc'ed) of *n tokens. A bad line is an error naming the file and line. */
mt_status mt_profile_read_input(const char *path, const mt_tokenizer *tok, int32_t **ids, size_t *n, mt_error *err);

typedef struct mt_profile_run {
    int max_len;                /* tokens per row (rows of the stream, packed) */
    int batch;                  /* rows per forward pass */
    const mt_adapter *adapter;  /* NULL: the base */
    int decode;                 /* > 0: greedy decode steps after the first row's prompt */
    int max_rows;               /* 0: every row of the input; else at most this many */
} mt_profile_run;

typedef struct mt_profile_run_result {
    uint64_t rows, tokens, decoded;
    double loss_mean;           /* next-token loss over the profiled rows */
    size_t workspace_bytes, kv_bytes;
} mt_profile_run_result;

/* Forward passes over ids in rows of max_len into `fwd`; with run->decode, a decode of that
 * many tokens after a prompt of the first row into `dec` (may be NULL without decode). The
 * model's profile is restored to NULL afterwards. */
mt_status mt_profile_model(mt_model *m, const int32_t *ids, size_t n, const mt_profile_run *run, mt_profile *fwd,
                           mt_profile *dec, mt_profile_run_result *res, mt_error *err);

#endif
