/* model-impl.h — the decoder's private structures, shared by the model room's files: the
 * model (parameters, linears, layers), the per-layer activation buffers, the workspace of a
 * training/evaluation pass, the paged KV pool and the decoder of a batched step, and the one
 * decoder-layer body (layer.c) every pass runs. */
#ifndef MT_MODEL_IMPL_H
#define MT_MODEL_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* ---- layers ---- */

/* What one decoder layer holds. Pointers are NULL for what the family or layer lacks. */
typedef struct mt_layer {
    int index;
    bool moe;
    mt_param *attn_norm, *ffn_norm;  /* input_layernorm, post_attention_layernorm [H] */

    /* attention; MLA without q_lora_rank uses q (q_proj [nh·qk_hd, H]) */
    mt_linear *q, *k, *v, *o;        /* q [nh·hd, H], k/v [nkv·hd, H], o [H, nh·vh] */
    mt_param *q_norm, *k_norm;       /* Qwen3 [hd]; OLMoE [nh·hd] and [nkv·hd] */
    mt_linear *q_a, *q_b;            /* MLA: q_a [ql, H], q_b [nh·qk_hd, ql] */
    mt_param *q_a_norm;              /* [ql] */
    mt_linear *kv_a, *kv_b;          /* kv_a [kvl+rope, H], kv_b [nh·(nope+vh), kvl] */
    mt_param *kv_a_norm;             /* [kvl] */

    /* dense SwiGLU MLP */
    mt_linear *gate, *up, *down;     /* gate/up [I, H], down [H, I] */

    /* mixture of experts */
    mt_linear *router;               /* [E, H] */
    mt_param *router_bias;           /* e_score_correction_bias [E] (noaux_tc) */
    mt_linear **exp_gate, **exp_up, **exp_down; /* [E] each: gate/up [Im, H], down [H, Im] */
    mt_linear *sh_gate, *sh_up, *sh_down;       /* shared expert(s): gate/up [Is, H], down [H, Is] */
    mt_linear *sh_expert_gate;       /* Qwen2-MoE scalar gate [1, H] */
} mt_layer;

/* Where a parameter's memory lives: inside the model's block, straight in the read-only
 * safetensors mapping (F32 data, or BF16/F16 raw), in a block of its own (a mapped tensor made
 * writable), or in a quantised block of its own (I8 raw followed by its scales). */
typedef enum mt_param_home {
    MT_PARAM_HOME_BLOCK = 0,
    MT_PARAM_HOME_MMAP,
    MT_PARAM_HOME_OWN,
    MT_PARAM_HOME_QUANT,
} mt_param_home;

/* How mt_model_init_random fills a parameter (as transformers' _init_weights does). */
typedef enum mt_param_init {
    MT_PARAM_INIT_NORMAL = 0, /* normal(0, initializer_range): linears, embeddings */
    MT_PARAM_INIT_ONE,        /* RMSNorm weights */
    MT_PARAM_INIT_ZERO,       /* biases, e_score_correction_bias */
} mt_param_init;

typedef struct mt_name_index {
    int *slots; /* open addressing, −1 empty; holds indices into the named array */
    size_t cap;
} mt_name_index;

struct mt_model {
    mt_config cfg;
    mt_backend *be;
    mt_adaptive_k adaptive_k;     /* threshold 0 = fixed top_k routing */
    uint64_t ak_tokens, ak_experts; /* what adaptive routing used, summed over passes */
    mt_profile *prof;             /* NULL = not profiling (profile.c); passes record into it */

    int n_params;
    mt_param *params;            /* [n_params], in checkpoint-table order */
    mt_param_home *home;         /* [n_params] */
    mt_param_init *init;         /* [n_params] */
    int n_linears;
    mt_linear *linears;          /* [n_linears] */
    mt_layer *layers;            /* [n_layers] */
    mt_linear **expert_ptrs;     /* storage behind the layers' exp_* arrays */
    char *names;                 /* every name, NUL-separated */

    mt_param *embed;             /* model.embed_tokens.weight [V, H] */
    mt_param *final_norm;        /* model.norm.weight [H] */
    mt_linear *lm_head;          /* [V, H]; its weight is embed when tied */

    float *block;                /* backend memory of every BLOCK parameter */
    mt_safetensors *st;          /* kept open while parameters live in its mapping */

    /* RoPE: cos/sin [rope_len, rot_dim/2] with any YaRN attention factor folded in */
    int rot_dim, rope_len;
    float *rope_cos, *rope_sin;
    float attn_scale;            /* softmax scale, MLA's mscale² included */

    mt_name_index param_index, linear_index;
};

/* ---- derived sizes ---- */

typedef struct mt_dims {
    int H, V, L;
    int nh, nkv, hd;         /* standard attention */
    int qk_hd, vh;           /* q/k and v head widths (MLA: nope+rope, v_head_dim) */
    int nope, rope, kvl, ql; /* MLA */
    int q_dim;               /* nh·qk_hd */
    int kv_dim;              /* standard: nkv·hd */
    int o_dim;               /* nh·vh: attention output width, o_proj input */
    int kvb_dim;             /* MLA: nh·(nope+vh) */
    int kva_dim;             /* MLA: kvl+rope */
    int I, E, K, Im, Is;     /* dense width, experts, top-k, expert width, shared width */
    int ffn_max;             /* widest SwiGLU hidden of any kind */
    int n_moe;               /* MoE layers */
} mt_dims;

void mt_model_dims(const mt_config *cfg, mt_dims *d);

/* ---- activations ---- */

/* The buffers one layer's forward writes. In a training workspace every layer has its own
 * set (backward reads them); in an inference workspace and in the KV cache all layers share
 * one set. Shapes for N rows (B·T). */
typedef struct mt_acts {
    float *x_in, *x_mid;     /* [N, H] layer input; after the attention residual */
    float *xn1, *rstd1;      /* [N, H] input_layernorm output; [N] */
    float *q;                /* [N, nh·qk_hd] queries as attention reads them (normed, roped) */
    float *q_raw, *q_rstd;   /* QK-norm: [N, nh·hd] projection before the norm; [N·nh] or [N] */
    float *k, *v;            /* standard [N, nkv·hd] each; MLA k [N, nh·qk_hd] (v is in kvb) */
    float *k_raw, *k_rstd;   /* QK-norm: [N, nkv·hd]; [N·nkv] or [N] */
    float *qa, *qa_rstd;     /* MLA q_a_proj output [N, ql]; [N] */
    float *qan;              /* [N, ql] after q_a_layernorm */
    float *kva;              /* [N, kvl+rope] kv_a_proj_with_mqa output, k_pe part roped */
    float *c_raw, *c_rstd;   /* [N, kvl] latent before kv_a_layernorm; [N] */
    float *cn;               /* [N, kvl] normed latent */
    float *kvb;              /* [N, nh·(nope+vh)] kv_b_proj output: per head [k_nope | v] */
    float *att;              /* [N, nh·vh] attention output, o_proj input */
    float *lse;              /* [B·nh·T] */
    float *xn2, *rstd2;      /* [N, H] post_attention_layernorm output; [N] */
    float *g, *u;            /* dense MLP pre-activations [N, I] */
    float *xm;               /* [N, H] MoE input after router jitter (== xn2 without jitter) */
    float *rlogits, *scores; /* [N, E] */
    int32_t *idx;            /* [N, K] */
    float *w;                /* [N, K] */
    int32_t *offsets;        /* [E+1] device copy written by the permute */
    int32_t *offsets_host;   /* [E+1] */
    int32_t *src_tok, *src_slot; /* [N·K] */
    float *xp;               /* [N·K, H] expert inputs, grouped by expert */
    float *gp, *up;          /* [N·K, Im] */
    float *yp;               /* [N·K, H] expert outputs before weighting */
    float *sg, *su;          /* [N, Is] shared expert pre-activations */
    float *ys;               /* [N, H] shared expert output (before Qwen2's gate) */
    float *sz;               /* [N] Qwen2 shared_expert_gate logit */
    int32_t *perm_slot;      /* [N·K] host: adapter slot of each permuted expert row (multi-slot passes) */
} mt_acts;

/* Carves 64-byte aligned pieces from one block; with base NULL it only measures. */
typedef struct mt_carver {
    uint8_t *base;
    size_t off;
} mt_carver;

void *mt_carve(mt_carver *c, size_t bytes);

typedef struct mt_acts_want {
    bool expanded; /* whole-sequence attention: K/V (MLA: expanded K and kv_b output) */
    bool dense;    /* dense MLP buffers */
    bool moe;      /* MoE buffers */
    bool jitter;   /* a buffer for the jittered MoE input */
    bool slots;    /* rows may carry different adapters (batched decode) */
    bool no_cheap; /* selective checkpointing: leave what mt_layer_recompute_cheap writes unassigned */
} mt_acts_want;

/* Carves one activation set for N rows (x_in/x_mid are the caller's); keeps offsets_host. */
void mt_acts_layout(const mt_model *m, mt_acts *a, size_t N, const mt_acts_want *want, mt_carver *cv);
/* Floats of the widest SwiGLU hidden any layer needs for N rows. */
size_t mt_ffn_hidden_floats(const mt_model *m, size_t N);
/* Floats of adapter scratch a pass over N rows needs for adapters up to max_rank: the low-rank
 * intermediate h and its gradient, plus rows of dropout(x) staged for the delta's GEMM. */
size_t mt_adapter_scratch_floats(const mt_model *m, int rows, int max_rank);

/* Scratch shared by all layers (never saved). */
typedef struct mt_scratch {
    float *h;                /* [N·K or N, ffn_max] SwiGLU output (down_proj input) */
    float *tmp;              /* [N, H] attention / FFN branch output */
    float *adapter;          /* adapter scratch */
    size_t adapter_cap;
} mt_scratch;

/* Backward buffers (training workspaces only). */
typedef struct mt_grads {
    float *dres;             /* [N, H] ∂L/∂(residual stream) */
    float *dxn;              /* [N, H] ∂L/∂(norm output) */
    float *dq, *dk, *dv;     /* like q, k, v */
    float *dq_raw, *dk_raw;  /* QK-norm inputs */
    float *dqa, *dqan;       /* [N, ql] */
    float *dkva;             /* [N, kvl+rope] */
    float *dc, *dcn;         /* [N, kvl] */
    float *dkvb;             /* [N, nh·(nope+vh)] */
    float *datt;             /* [N, nh·vh] */
    float *dh, *dg, *du;     /* [N·K or N, ffn_max] */
    float *dxm;              /* [N, H] */
    float *dxp, *dyp;        /* [N·K, H] */
    float *dw;               /* [N, K] */
    float *drl;              /* [N, E] ∂L/∂(router logits) */
    float *dsc;              /* [N, E] ∂L/∂(router scores) from the aux loss (DeepSeek-V2) */
    float *drl_aux;          /* [N, E] ∂L/∂(router logits) from the aux loss (Switch style) */
    float *dys;              /* [N, H] */
    float *dsz;              /* [N] */
} mt_grads;

/* Runtime switches of one layer pass. */
typedef struct mt_pass {
    bool train;
    uint64_t seed;
    float noise;             /* router jitter ε (0 = off) */
    /* [L][N][K] host arrays (CPU only): the experts each row's router chose, and experts to use
     * instead (a row whose first entry is −1 routes as usual) */
    int32_t *route_out;
    const int32_t *route_in;
    /* inference on the CPU: [N] adaptive expert counts of each row (threshold 0: the config's
     * top_k), NULL = the model's setting; k_used [N] (or NULL) += each row's routed experts,
     * per MoE layer */
    const mt_adaptive_k *row_ak;
    int32_t *k_used;
    float *share_out;        /* [L][N] host (CPU): mt_route_topk_share of each MoE layer, or NULL */
} mt_pass;

struct mt_workspace {
    mt_model *m;
    int B, T, N;             /* capacity: N = B·T rows */
    bool train;
    int max_rank;            /* adapter scratch is sized for ranks up to this */
    void *block;             /* backend memory every buffer below is carved from */
    size_t bytes;
    int n_sets;
    mt_acts *acts;           /* [L] (train) or [1] shared by all layers (inference, LAYERS checkpointing) */
    mt_checkpointing ckpt;
    float **x_layer;         /* LAYERS: [L] each layer's saved input [N, H]; else NULL */
    int32_t *route_keep;     /* LAYERS with MoE: [L·N·K] host copy of the forward's route_in */
    bool route_kept;         /* the last forward replayed routes (route_keep holds them) */
    float *x_final;          /* [N, H] last layer's output */
    float *xf, *rstdf;       /* [N, H] final norm output; [N] */
    mt_scratch s;
    mt_grads g;              /* train only */
    float *dxf;              /* [N, H] */
    int32_t *tokens, *targets, *pos, *kv_start; /* [N] device copies of the batch */
    int chunk;               /* LM-head rows per chunk */
    float *logits;           /* [chunk, V] */
    float *chunk_loss;       /* [chunk] */
    float *token_loss;       /* [N] */
    /* host side */
    int32_t *offsets_host;   /* [n_sets, E+1] */
    int32_t *kv_host;        /* [N] */
    int32_t *tpe;            /* [n_moe, E] tokens per expert */
    double *entropy;         /* [n_moe] */
    double *aux_cnt, *aux_psum; /* [E] Switch-style counts and probability sums over all MoE layers */
    /* what the last forward did */
    bool fwd_done;
    int fB, fT, fN;
    bool has_targets, has_kv_start;
    mt_forward_opts opts;
    int64_t n_tokens;
    double aux_loss;
};

/* The paged KV pool (kvpool.c). Layer l's block b holds positions at
 * data + ((l·n_blocks + b)·block_size + i)·kv_row, i < block_size. */
struct mt_kv_pool {
    const mt_model *m;
    int block_size, n_blocks, max_seqs, max_seq_len;
    int max_blocks;          /* per sequence: ceil(max_seq_len / block_size) */
    int kv_row;              /* floats per cached position: 2·kv_dim, or MLA kvl + rope */
    float *data;             /* backend memory of every block */
    size_t bytes;
    int32_t *refs;           /* [n_blocks] sequences holding each block (0 = free) */
    int32_t *free_list;      /* [n_blocks] stack of free blocks */
    int n_free;
    int32_t *tables;         /* [max_seqs, max_blocks] block of each sequence's position p / block_size */
    int32_t *len;            /* [max_seqs] positions held; −1 = not open */
    int n_open;
    /* DAP key summaries (CPU only, else NULL), host memory: layer l, block b, key head g at
     * ksum + ((l·n_blocks + b)·ks_heads + g)·2·ks_dim: kmin [ks_dim] then kmax [ks_dim], of
     * the key at row offset ks_off + g·ks_head */
    float *ksum;
    int ks_heads, ks_dim, ks_off, ks_head;
};

/* Makes room for n more positions of seq (copying a shared partly filled last block first);
 * the caller has checked mt_kv_seq_blocks_needed against the free blocks. */
void mt_kv_seq_reserve(mt_kv_pool *p, int seq, int n);
/* Where position pos of seq lives in layer l. */
float *mt_kv_pool_row(const mt_kv_pool *p, int l, int seq, int pos);
float *mt_kv_pool_layer(const mt_kv_pool *p, int l);

/* The buffers of a batched step (decoder.c). */
struct mt_decoder {
    mt_model *m;
    mt_backend *be;          /* the decoder's own: kernel scratch is per backend */
    int max_rows, max_rank;
    void *block;
    size_t bytes;
    mt_acts a;               /* one activation set for max_rows rows, shared by every layer */
    int32_t *offsets_host;   /* [E+1] */
    mt_scratch s;
    float *x;                /* [R, H] residual stream */
    float *xf, *rstdf;       /* [R, H] final norm of the rows whose logits are wanted; [R] */
    float *kst, *vst;        /* [R, kv_dim] new K and V before they go to the pool (standard) */
    float *qabs;             /* [R, nh, kvl+rope] absorbed queries [q_nope·W_UK | q_pe] (MLA) */
    float *olat;             /* [R, nh, kvl] attention output in latent space (MLA) */
    int32_t *tokens, *pos, *kv_start; /* [R] device copies, rows in step order */
    /* host side: rows reordered so that rows of one adapter slot are adjacent */
    int32_t *order;          /* [R] step row → caller's row */
    int32_t *row_seq, *row_pos, *row_slot, *row_ks; /* [R] in step order */
    int32_t *out_row;        /* [R] caller row → step row */
    int32_t *logit_slot;     /* [R] slot of each logits row */
    int32_t *seq_new;        /* [max_seqs of the pool at step time] rows per sequence (scratch) */
    int seq_new_cap;
    int32_t *tpe;            /* [n_moe, E] tokens per expert in the last step */
    double *entropy;         /* [n_moe] */
    int n_rows_last;
    /* DAP (decoder.c): options, counts, the step's per-row τ (step order), and host scratch
     * for (row, query head) pairs: queries, outputs, compacted block tables and positions */
    mt_dap_opts dap;
    mt_dap_counts dap_counts;
    float *row_tau;          /* [R] */
    mt_adaptive_k *row_ak;   /* [R] each row's adaptive expert counts, in step order */
    int32_t *row_kused;      /* [R] each row's routed experts over the MoE layers, in step order */
    bool dap_on;             /* some row of this step has τ > 0 */
    size_t dap_keep_cap;     /* bytes of dap_keep */
    int dap_tab_cap;         /* blocks of dap_bounds / dap_ntok */
    float *dap_bounds;
    int32_t *dap_ntok;
    uint8_t *dap_keep;       /* [chunk rows][n_head][max_blocks] */
};
/* Folds the key of the row just written at (seq, pos) into its block's DAP summary. */
void mt_kv_pool_note_key(mt_kv_pool *p, int l, int seq, int pos);

/* The single-sequence cache of model.h: a pool of one sequence plus a decoder. */
struct mt_kv_cache {
    mt_model *m;
    mt_kv_pool *pool;
    mt_decoder *dec;
    int seq;
    int max_seq;
    const mt_adapter *adapter;
};

/* ---- linears ---- */

/* What every linear of a pass needs: the backend, dropout state, adapter scratch, and the
 * adapters of the pass. Rows are grouped into runs of one slot, and a run's delta is applied
 * with that slot's adapter (NULL slots are the base model). */
typedef struct mt_lin_ctx {
    mt_backend *be;
    bool train;
    uint64_t seed;
    float *scratch;
    size_t scratch_cap;
    const mt_adapter *const *adapters; /* [n_slots] or NULL */
    int n_slots;
    const int32_t *row_slot; /* host [rows of the call's row space]; NULL: every row is slot 0 */
} mt_lin_ctx;

/* y [n, out] = x [n, in]·Wᵀ + b, then each run of rows' adapter delta (row0: the first row's
 * index in the call's row space, for row_slot and the dropout masks). */
void mt_lin_forward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, int n, uint64_t row0,
                    float *y);
/* dx [n, in] += dy·W (when dx), dW += dyᵀ·x and db += Σ dy (when the parameters have grads),
 * the adapters' deltas backward (their dA/dB when not NULL). */
void mt_lin_backward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, const float *dy,
                     int n, uint64_t row0, float *dx);
int mt_linear_index(const mt_model *m, const mt_linear *L);
/* The delta of slot `slot` on linear L, or NULL. */
/* The adapters' part alone of mt_lin_forward / mt_lin_backward (the base product done elsewhere,
 * e.g. all experts of a layer in one grouped GEMM): y += each run's delta; dx += its gradient
 * and its dA/dB. */
void mt_lin_delta_forward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, int n,
                          uint64_t row0, float *y);
void mt_lin_delta_backward(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, const float *x, const float *dy,
                           int n, uint64_t row0, float *dx);
const mt_lowrank *mt_lin_delta(const mt_model *m, const mt_linear *L, const mt_lin_ctx *c, int slot);
/* Checks an adapter against the model and a scratch rank limit; `what` names it in messages. */
mt_status mt_adapter_check(const mt_model *m, const mt_adapter *a, int max_rank, const char *what, mt_error *err);

/* ---- weights.c ---- */

/* The kernels' view of a low-precision weight (p->dtype BF16, F16 or I8). */
void mt_param_lowp(const mt_param *p, mt_lowp_weight *w);

/* Builds the parameter and linear tables for cfg (no memory for values yet). */
mt_status mt_model_build(mt_model **out, const mt_config *cfg, mt_backend *be, mt_error *err);

/* ---- rope_tables.c ---- */

/* Fills m->rope_cos/sin/rot_dim/rope_len and m->attn_scale from m->cfg. */
mt_status mt_rope_init(mt_model *m, mt_error *err);

/* ---- attention.c ---- */

/* Projections of a layer for N rows at positions pos [N]: standard attention fills q (and
 * q_raw/q_rstd), writes K and V to k_out/v_out (row stride kv_dim); MLA fills q, qa/qan,
 * kva, c_raw/cn and leaves the roped k_pe in kva. */
void mt_attn_project(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, mt_acts *a, int N, const int32_t *pos,
                     float *k_out, float *v_out);
/* Training / full-sequence attention over B sequences of T tokens; writes the o_proj output to
 * out [N, H]. kv_start [N] or NULL. */
void mt_attn_forward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, mt_acts *a, int B, int T,
                     const int32_t *pos, const int32_t *kv_start, float *out);
/* dout [N, H] = ∂L/∂(o_proj output); accumulates ∂L/∂xn1 into dxn (zeroed by the caller). */
void mt_attn_backward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, mt_acts *a, mt_grads *g, int B, int T,
                      const int32_t *pos, const int32_t *kv_start, const float *dout, float *dxn);
void mt_attn_args_fill(const mt_model *m, mt_attn_args *aa, int B, int Tq, int Tk, int q_offset,
                       const int32_t *kv_start);

/* ---- moe.c ---- */

/* The layer's FFN (dense MLP or MoE) on a->xn2; writes out [N, H]. */
void mt_ffn_forward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, const mt_pass *p, mt_acts *a,
                    mt_scratch *s, int N, float *out);
/* dout [N, H]; accumulates ∂L/∂xn2 into dxn (zeroed by the caller). dsc: extra gradient on the
 * router scores (aux loss) or NULL; drl_extra: extra gradient on the router logits or NULL. */
void mt_ffn_backward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, const mt_pass *p, mt_acts *a,
                     mt_scratch *s, mt_grads *g, int N, const float *dout, const float *dsc, const float *drl_extra,
                     float *dxn);
void mt_route_args_fill(const mt_model *m, const mt_layer *ly, int n_tok, mt_route_args *ra);
/* Tests: the routed experts through one mt_lin_forward/backward per expert (the reference)
 * instead of the grouped GEMM, process-wide. */
void mt_moe_set_expert_loop(bool on);
/* Tests: the slots adaptive routing dropped still run through the expert GEMMs with weight 0
 * (the dispatch before they were skipped), process-wide: the reference skipping must match. */
void mt_moe_set_dispatch_dropped(bool on);
/* Router jitter factor for (layer, element): U(1−ε, 1+ε) from a counter-based hash. */
float mt_jitter(uint64_t seed, int layer, uint64_t i, float eps);

/* ---- layer.c: the one decoder-layer body ---- */

/* Where the attention half finds its keys: whole sequences of the pass (training, evaluation)
 * or the paged KV pool (batched decode). */
typedef struct mt_attn_plan {
    bool paged;
    int B, T;                 /* sequences: B sequences of T rows */
    const int32_t *pos;       /* [N] device positions */
    const int32_t *kv_start;  /* [N] first visible key, or NULL */
    mt_kv_pool *pool;         /* paged */
    mt_decoder *dec;
} mt_attn_plan;

/* x_out = layer(x_in) for N rows: RMSNorm, attention, residual, RMSNorm, FFN, residual.
 * a->x_in, a->x_mid and x_out may alias (inference runs in place). */
void mt_layer_forward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, const mt_pass *p, mt_acts *a,
                      mt_scratch *s, int N, const mt_attn_plan *plan, float *x_out);
/* Selective checkpointing: rewrites, bit for bit as mt_layer_forward wrote them, the tensors of
 * a training set that no GEMM produces (xn1, xn2, the QK-norm q/k, MLA's qan, c_raw, cn and
 * expanded k, the jittered MoE input xm, the gathered expert rows xp) from the ones kept. */
void mt_layer_recompute_cheap(mt_model *m, const mt_layer *ly, const mt_pass *p, mt_acts *a, int N,
                              const int32_t *pos);
/* attention.c's part of it: QK-norm's q and k, MLA's qan, c_raw, cn and expanded k. */
void mt_attn_recompute_cheap(mt_model *m, const mt_layer *ly, mt_backend *be, mt_acts *a, int N, const int32_t *pos);

/* ---- decoder.c ---- */

/* Paged attention of a layer for the decoder's rows: projections, K/V appended to the pool,
 * attention over each row's blocks, o_proj into out [N, H]. */
void mt_attn_paged_forward(mt_model *m, const mt_layer *ly, const mt_lin_ctx *c, mt_acts *a, int N,
                           const mt_attn_plan *plan, float *out);

/* ---- forward.c ---- */

/* Routing statistics of one MoE layer's rows (tokens per expert from the permute's offsets,
 * mean routing entropy), kept per layer by workspaces and decoders alike. */
void mt_router_stats_record(const mt_model *m, mt_backend *be, const mt_acts *a, int N, int32_t *tpe, double *entropy);
/* The i-th MoE layer's statistics out of per-layer arrays [n_moe, E] and [n_moe]. */
bool mt_router_stats_at(const mt_model *m, const int32_t *tpe, const double *entropy, int i, mt_router_stats *out);

/* Layer l's activation set and its input (l = L: the last layer's output) in a workspace. */
mt_acts *mt_ws_layer_acts(mt_workspace *ws, int l);
float *mt_ws_layer_input(mt_workspace *ws, int l);
/* The linear-layer context of a pass over a workspace. */
void mt_ws_lin_ctx(mt_workspace *ws, bool train, uint64_t seed, mt_lin_ctx *c);
/* The aux loss's extra router gradients for one MoE layer of the last forward: on the logits
 * (Switch style) or on the scores (DeepSeek-V2); both NULL when aux_coef is 0. */
void mt_aux_backward(mt_workspace *ws, const mt_acts *a, const float **dsc, const float **drl);

/* ---- profile.c: the profiler's hooks ----
 * A pass opens one section at a time (layer, part); time between begin and end goes to that
 * cell, less the LoRA deltas timed inside it (their own cell). Linears, norms and the
 * attention core add their analytic FLOPs and bytes to the open section. Every hook is one
 * pointer test when m->prof is NULL. */
void mt_prof_begin_(mt_profile *p, int layer, mt_prof_part part);
void mt_prof_end_(mt_profile *p);
void mt_prof_linear_(mt_profile *p, const mt_linear *L, int n);
void mt_prof_lora_(mt_profile *p, const mt_lowrank *d, int in, int out, int n, double seconds);
void mt_prof_norm_(mt_profile *p, int rows, int width);
void mt_prof_add_(mt_profile *p, double flops, double bytes);
/* Attention core of B sequences of T rows over the keys kv_start (host [N] or NULL) allows. */
void mt_prof_attn_core_(mt_profile *p, const mt_attn_args *aa, const int32_t *kv_start_host);
/* Paged rows: row i sees keys ks[i] .. pos[i] (ks NULL = 0), n_head query heads of widths dqk
 * and dv as the kernel runs them, kv_floats floats read per visible key. */
void mt_prof_attn_paged_(mt_profile *p, int N, const int32_t *pos, const int32_t *ks, int n_head, int dqk, int dv,
                         int kv_floats);
/* Routing of one MoE layer's N rows: rows per expert (offsets [E+1]), slots with weight > 0. */
void mt_prof_route_(mt_profile *p, int layer, int N, const int32_t *offsets, const float *w);
/* The skip rule on a whole-sequence pass's roped queries and keys (after the attention). */
void mt_prof_dap_(mt_profile *p, const mt_model *m, int layer, const mt_acts *a, int B, int T);
void mt_prof_pass_(mt_profile *p, int rows, double seconds);
static inline void mt_prof_begin(const mt_model *m, int layer, mt_prof_part part) {
    if (m->prof) mt_prof_begin_(m->prof, layer, part);
}
static inline void mt_prof_end(const mt_model *m) {
    if (m->prof) mt_prof_end_(m->prof);
}
static inline void mt_prof_norm(const mt_model *m, int rows, int width) {
    if (m->prof) mt_prof_norm_(m->prof, rows, width);
}

/* ---- host helpers (the CPU backend's memory is host memory) ---- */

bool mt_backend_is_host(const mt_backend *be);
/* Threads for a host loop over `work` elements in model code: the backend's count, or one
 * when the loop is too small to pay for waking a team. */
int mt_loop_threads(const mt_backend *be, size_t work);
mt_status mt_model_check_backend(const mt_model *m, mt_error *err);

#endif
