/* kernels.h — the op set a Mixture-of-Experts decoder needs, behind one backend interface.
 * The CPU backend (OpenBLAS GEMM + vectorised C) is always built and is the reference; a CUDA
 * backend is built when nvcc is found. Model code calls only the functions declared here.
 *
 * Conventions for every op:
 *  - tensors are fp32 (mt_lowp_matmul's frozen weights excepted), row-major, in memory owned by
 *    the backend the op runs on (mt_backend_alloc); shapes are given in the comment of each
 *    parameter;
 *  - forward outputs are overwritten;
 *  - backward outputs (gradients) are ACCUMULATED (+=), as in llm.c: the caller zeroes them,
 *    which lets residual branches and shared weights add up without temporaries;
 *  - a NULL gradient pointer means "not needed" and is skipped;
 *  - calling an op the backend does not support aborts with a message naming the op and the
 *    backend: model code checks mt_backend_supports first and falls back (e.g. to the CPU);
 *  - a backend is used from one thread at a time (like a CUDA stream): its ops parallelise
 *    internally, and their results do not depend on the thread count (mt_matmul excepted). */
#ifndef MT_KERNELS_H
#define MT_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

typedef enum mt_backend_kind {
    MT_BACKEND_CPU = 0,
    MT_BACKEND_CUDA,
} mt_backend_kind;

typedef enum mt_op {
    MT_OP_MATMUL = 0,
    MT_OP_ADD,
    MT_OP_SCALE,
    MT_OP_EMBEDDING,
    MT_OP_RMSNORM,
    MT_OP_ROPE,
    MT_OP_ATTENTION,
    MT_OP_SWIGLU,
    MT_OP_SIGMOID_GATE,
    MT_OP_ROUTE,
    MT_OP_MOE_PERMUTE,
    MT_OP_CROSS_ENTROPY,
    MT_OP_ADAMW,
    MT_OP_SUM_SQUARES,
    MT_OP_ADD_BIAS,
    MT_OP_COPY_2D,
    MT_OP_PAGED_ATTENTION,
    MT_OP_LOWRANK,
    MT_OP_LOWP_MATMUL,
    MT_OP_GROUPED_MATMUL,
    MT_OP_COUNT
} mt_op;

typedef struct mt_backend mt_backend;

/* threads <= 0: all cores. The CPU backend runs its OpenMP loops on that many threads and sets
 * OpenBLAS's (process-wide) thread count to it before each GEMM. MT_ERR_UNSUPPORTED for CUDA
 * when this build has no CUDA backend or the machine has no CUDA device. */
mt_status mt_backend_init(mt_backend **out, mt_backend_kind kind, int threads, mt_error *err);
void mt_backend_free(mt_backend *be);
mt_backend_kind mt_backend_get_kind(const mt_backend *be);
const char *mt_backend_name(const mt_backend *be);
/* One line describing the device: "CPU: 2 threads, OpenBLAS 0.3.21 (Haswell kernels)". */
const char *mt_backend_describe(const mt_backend *be);
bool mt_backend_supports(const mt_backend *be, mt_op op);
const char *mt_op_name(mt_op op);
int mt_backend_threads(const mt_backend *be);

/* "SkylakeX" when OpenBLAS should be told to use its AVX-512 kernels and is not already doing
 * so, else NULL. OpenBLAS 0.3.21 does not know AMD Zen 4/5 and falls back to its Haswell
 * (AVX2) kernels there, although SkylakeX kernels measure about 1.7x faster on Zen 5. It is
 * "SkylakeX" only when the CPU and OS really support AVX-512F/BW/DQ/VL (forcing those kernels
 * elsewhere dies of SIGILL), the user has not set OPENBLAS_CORETYPE, and OpenBLAS picked a
 * non-AVX-512 core. OpenBLAS reads the variable when it loads, so a program's main() sets
 * OPENBLAS_CORETYPE to the answer and re-executes itself once. See docs/performance.md. */
const char *mt_backend_preferred_coretype(void);

/* Device memory. On the CPU these are 64-byte aligned host blocks, zeroed. */
void *mt_backend_alloc(mt_backend *be, size_t bytes);
void mt_backend_release(mt_backend *be, void *p);
void mt_backend_upload(mt_backend *be, void *dst, const void *host_src, size_t bytes);
void mt_backend_download(mt_backend *be, void *host_dst, const void *src, size_t bytes);
void mt_backend_memset0(mt_backend *be, void *p, size_t bytes);
void mt_backend_copy(mt_backend *be, void *dst, const void *src, size_t bytes);
/* Waits for queued work (a no-op on the CPU). */
void mt_backend_sync(mt_backend *be);

/* ---- dense algebra ---- */

/* C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C, op = transpose when the flag is set.
 * Leading dimensions are row strides of the matrices as stored. A linear layer y = x·Wᵀ with
 * W [out,in] is mt_matmul(be, false, true, n, out, in, 1, x, in, W, in, 0, y, out).
 * The one op whose last bits depend on the thread count: OpenBLAS blocks the product
 * differently for 1 and 2 threads. A fixed thread count still gives the same bits every run. */
void mt_matmul(mt_backend *be, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
               const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* The low-rank delta of a LoRA adapter on n rows: y [n, out] += scale·(x·A')·B' with x [n, in]
 * (row stride ldx), A' = Aᵀ for A [r, in] (or A itself, [in, r], when a_t), B' = Bᵀ for
 * B [out, r] (or B itself, [r, out], when b_t), y row stride ldy; h [n, r] is scratch (it
 * holds x·A' afterwards). Decode steps call this on runs of a few rows per adapter, where a
 * GEMM library's per-call cost (packing, waking threads) exceeds the work, so the CPU backend
 * computes small products itself and hands large ones to sgemm. */
void mt_lowrank_forward(mt_backend *be, int n, int in, int out, int r, float scale, const float *x, int ldx,
                        const float *A, bool a_t, const float *B, bool b_t, float *h, float *y, int ldy);

/* A frozen weight W [out, in] kept in a low-precision storage type: bf16 or f16 (as a
 * checkpoint stores it, read straight from the file mapping) or int8 with fp32 scales
 * (symmetric, one scale per `group` consecutive elements of a row: w ≈ q·s, the last group of
 * a row may be shorter). */
typedef enum mt_lowp_type {
    MT_LOWP_BF16 = 0,
    MT_LOWP_F16,
    MT_LOWP_Q8,
} mt_lowp_type;

typedef struct mt_lowp_weight {
    mt_lowp_type type;
    int out, in;
    const void *w;       /* [out, in] uint16 (BF16, F16) or int8 (Q8) */
    const float *scales; /* Q8: [out, ceil(in / group)] */
    int group;           /* Q8: elements per scale, a multiple of 8 */
} mt_lowp_weight;

/* y [n, out] = x [n, in]·Wᵀ (overwritten), row strides ldx and ldy, with fp32 accumulation.
 * W's tiles are converted to fp32 on the fly into per-thread scratch and multiplied with
 * sgemm; a few rows (decode) instead take a kernel that widens the stored weights in
 * registers (no fp32 copy) and multiplies them with all the rows at once, reading W once. The
 * result equals mt_matmul on the dequantised W up to summation order. */
void mt_lowp_matmul(mt_backend *be, const mt_lowp_weight *W, int n, const float *x, int ldx, float *y, int ldy);
/* dx [n, in] += dy [n, out]·W (the input gradient of y = x·Wᵀ; W is frozen: no dW). */
void mt_lowp_matmul_dx(mt_backend *be, const mt_lowp_weight *W, int n, const float *dy, int lddy, float *dx,
                       int lddx);
/* Row o's elements i0 .. i0+cnt−1 of W as fp32 into dst (dequantised: q·s for Q8); W and dst in
 * host memory (the CPU backend's). Loading, hashing and saving use it too. */
void mt_lowp_row_to_f32(const mt_lowp_weight *W, int o, int i0, int cnt, float *dst);

/* ---- grouped GEMM: every expert of a layer in one call ---- */

/* G groups of rows of X [rows, in]: group g is rows offsets[g] .. offsets[g+1]−1 (offsets [G+1],
 * host memory, non-decreasing; empty groups allowed), each multiplied by its own weight W_g
 * [out, in] as a linear layer does (y = x·W_gᵀ). A projection is one such weight per group, with
 * its output or its gradients; several projections of the same X (an expert's gate and up) go in
 * one call. W_g is f32[g] when f32 and f32[g] are not NULL, else lowp[g] (bf16/f16/int8, its out
 * and in equal to the projection's). Matrices are dense: row strides in, out. */
typedef struct mt_grouped_proj {
    int out;
    const float *const *f32;    /* [G] fp32 W_g [out, in], or NULL */
    const mt_lowp_weight *lowp; /* [G], or NULL when every W_g is fp32 */
    float *y;                   /* forward: Y [rows, out], overwritten on the groups' rows */
    const float *dy;            /* backward: dY [rows, out] */
    float *const *dw;           /* backward: [G] dW_g [out, in] (+= dY_gᵀ·X_g); NULL, or a NULL
                                   entry: not needed (frozen) */
} mt_grouped_proj;

/* Y_p[g's rows] = X[g's rows]·W_{p,g}ᵀ for each of the n_proj projections. The work is cut into
 * items, taken by the backend's threads as they get free, each computed on one thread:
 * for an fp32 weight one single-threaded sgemm per (projection, group), the call mt_matmul makes
 * for that expert alone, so on one thread the bits equal a per-expert loop's (a forward group of
 * at most 8 rows: a register GEMV over column tiles, as in mt_lin_forward's own
 * few-rows path, so the bits still agree); for a low-precision
 * weight mt_lowp_matmul's tiles (its few-rows kernel for groups of a few rows). The cut
 * depends on the shapes alone, so the result does not depend on the thread count. */
void mt_grouped_matmul(mt_backend *be, int G, const int32_t *offsets, int in, const float *x, int n_proj,
                       const mt_grouped_proj *p);
/* dX[g's rows] += Σ_p dY_p[g's rows]·W_{p,g} (when dx is not NULL; projections added in order)
 * and dW_{p,g} += dY_p[g's rows]ᵀ·X[g's rows] (where p[].dw[g] is given), in one call. */
void mt_grouped_matmul_backward(mt_backend *be, int G, const int32_t *offsets, int in, const float *x, float *dx,
                                int n_proj, const mt_grouped_proj *p);

/* y[i] += alpha · x[i] */
void mt_add(mt_backend *be, float *y, const float *x, float alpha, size_t n);
/* x[i] *= alpha */
void mt_scale(mt_backend *be, float *x, float alpha, size_t n);
/* y[t,:] += b for every row: linear-layer biases (Qwen2-MoE q/k/v). y [n,d], b [d] */
void mt_add_bias(mt_backend *be, float *y, const float *b, int n, int d);
/* db[:] += Σ_t dy[t,:]; dy [n,d], db [d] */
void mt_add_bias_backward(mt_backend *be, const float *dy, int n, int d, float *db);
/* Strided blocks, for splitting and joining heads without a GEMM (MLA's [k_nope; k_pe]):
 * dst[r·ldd + c] = src[r·lds + c], resp. dst[r·ldd + c] += src[r·lds + c], r < rows, c < cols.
 * mt_add_2d is mt_copy_2d's backward. Blocks must not overlap. */
void mt_copy_2d(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols);
void mt_add_2d(mt_backend *be, float *dst, int ldd, const float *src, int lds, int rows, int cols);
/* Σ x[i]² in double precision (gradient norms). */
double mt_sum_squares(mt_backend *be, const float *x, size_t n);

/* ---- embedding ---- */

/* out[t,:] = table[tokens[t],:]; table [V,d], out [n,d]; tokens are checked by the caller
 * (0 <= token < V): the op only asserts token >= 0. */
void mt_embedding_forward(mt_backend *be, const int32_t *tokens, int n, const float *table, int d, float *out);
/* dtable[tokens[t],:] += dout[t,:] */
void mt_embedding_backward(mt_backend *be, const int32_t *tokens, int n, const float *dout, int d, float *dtable);

/* ---- RMSNorm over rows of length d (fp32 statistics) ---- */

/* y = w ⊙ x · rsqrt(mean(x²) + eps); x, y [n,d]; w [d]; rstd [n] saved for backward.
 * y may alias x. */
void mt_rmsnorm_forward(mt_backend *be, const float *x, const float *w, float *y, float *rstd, int n, int d, float eps);
/* dx += (g − x̂·mean(g⊙x̂))·rstd with g = dy⊙w, x̂ = x·rstd; dw += Σ_rows dy⊙x̂.
 * x is the forward INPUT. */
void mt_rmsnorm_backward(mt_backend *be, const float *dy, const float *x, const float *w, const float *rstd,
                         float *dx, float *dw, int n, int d);

/* ---- rotary position embedding (in place) ---- */

typedef enum mt_rope_style {
    MT_ROPE_STYLE_HALF = 0,    /* HF rotate_half: pairs (j, j+d/2) */
    MT_ROPE_STYLE_INTERLEAVED, /* DeepSeek checkpoints: pairs (2j, 2j+1) */
} mt_rope_style;

/* Rotates the first `rot_dim` elements of each head of x:
 * element (t, h, i) lives at x[t·row_stride + h·head_stride + i], t < n_tok, h < n_head.
 * Token t is at position pos[t]; cos/sin are tables [max_pos, rot_dim/2] (any YaRN
 * attention scaling already folded in, as HF does). Pair j uses cos/sin column j.
 * INTERLEAVED rotates pairs in place; transformers' DeepSeek code writes the rotated pairs
 * out de-interleaved (all evens, then all odds). Both give the same q·k dot products (q and k
 * are permuted alike), so attention scores agree, but the vectors differ by that permutation. */
typedef struct mt_rope_args {
    int n_tok, n_head, row_stride, head_stride, rot_dim;
    const int32_t *pos;  /* [n_tok] */
    const float *cos, *sin; /* [max_pos, rot_dim/2] */
    mt_rope_style style;
} mt_rope_args;

void mt_rope_forward(mt_backend *be, const mt_rope_args *a, float *x);
/* dx = R(−θ)·dy, applied in place on the gradient buffer (rotation is orthogonal). */
void mt_rope_backward(mt_backend *be, const mt_rope_args *a, float *dx);

/* ---- causal attention with grouped KV heads ---- */

/* B sequences; Tq queries and Tk keys per sequence. Query i of a sequence sits at absolute
 * position q_offset + i and may see keys j ≤ q_offset + i (and j ≥ kv_start[b·Tq + i] when
 * kv_start is given: block-diagonal masks for packed documents). Query head h reads KV head
 * h / (n_head / n_kv_head).
 * Element (b, t, h, i) of Q is at q[(b·Tq + t)·q_row + h·q_head + i]; likewise K, V with Tk and
 * O with Tq. dqk is the q/k head width, dv the v/o head width (they differ for MLA).
 * lse [B, n_head, Tq] is the log-sum-exp of each score row, saved for backward.
 * Requires q_offset + Tq <= Tk, n_head % n_kv_head == 0, and 0 <= kv_start <= q_offset + i
 * (every query sees at least itself); violations are asserted.
 * CPU implementation is tiled (flash-style): memory O(block) per head, not O(Tq·Tk); a query's
 * result depends only on that query and its visible keys, so a prefix followed by decode
 * steps (q_offset > 0) gives bit-identical outputs to one pass over the whole sequence. */
typedef struct mt_attn_args {
    int B, Tq, Tk, n_head, n_kv_head, dqk, dv;
    int q_row, q_head, k_row, k_head, v_row, v_head, o_row, o_head;
    int q_offset;
    const int32_t *kv_start; /* [B·Tq] or NULL */
    float scale;
} mt_attn_args;

void mt_attention_forward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k, const float *v,
                          float *o, float *lse);
/* dq, dk, dv accumulate (same layouts as q, k, v). */
void mt_attention_backward(mt_backend *be, const mt_attn_args *a, const float *q, const float *k, const float *v,
                           const float *o, const float *lse, const float *dout, float *dq, float *dk, float *dv);

/* ---- attention over a paged KV cache (batched decode, chunked prefill) ---- */

/* n_rows query rows, each of its own sequence and position: row r sees the keys at positions
 * kv_start[r] ..= pos[r] of sequence seq[r] (kv_start NULL: from 0). Position p of sequence s
 * lives in block tables[s·table_stride + p / block_size], at cache + (block·block_size +
 * p % block_size)·kv_row; within that row, KV head g's key starts at k_off + g·k_head and its
 * value at v_off + g·v_head (MLA's latent cache: one head, the value inside the key). Query
 * head h reads KV head h / (n_head / n_kv_head). Q element (r, h, i) at q[r·q_row + h·q_head + i],
 * O likewise with o_row/o_head. Keys are taken in tiles of 64 and a row seeing more than 1024
 * keys in spans of 1024 (merged in order), both aligned to absolute positions, so a row's
 * result depends on its own query and keys only: not on the block size, the thread count, the
 * other rows of the step, or how the sequence was split into steps. */
typedef struct mt_paged_attn_args {
    int n_rows, n_head, n_kv_head, dqk, dv;
    int q_row, q_head, o_row, o_head;
    const float *cache;
    int block_size, kv_row;
    int k_off, k_head, v_off, v_head;
    const int32_t *tables;
    int table_stride;
    const int32_t *seq, *pos, *kv_start; /* [n_rows] each (kv_start may be NULL) */
    float scale;
    /* optional (CPU; DAP): keep[(r·n_head + h)·keep_stride + b] = 0 makes query head h of row r
       skip the keys of the b-th block of its table (positions b·block_size ..); a head keeps at
       least one block. NULL: every block. A head that keeps all its blocks gets exactly the
       unmasked result. */
    const uint8_t *keep;
    int keep_stride;
} mt_paged_attn_args;

void mt_paged_attention_forward(mt_backend *be, const mt_paged_attn_args *a, const float *q, float *o);

/* ---- SwiGLU and gates ---- */

/* h = silu(g) ⊙ u over n elements */
void mt_swiglu_forward(mt_backend *be, const float *g, const float *u, float *h, size_t n);
/* dg += dh ⊙ u ⊙ silu′(g); du += dh ⊙ silu(g) */
void mt_swiglu_backward(mt_backend *be, const float *dh, const float *g, const float *u, float *dg, float *du, size_t n);

/* Per-row scalar gate: y[t,:] += σ(z[t]) · x[t,:] (Qwen2-MoE shared expert). x, y [n,d]; z [n].
 * Backward: dx[t,:] += σ(z[t])·dy[t,:]; dz[t] += σ′(z[t])·⟨dy[t,:], x[t,:]⟩. */
void mt_sigmoid_gate_forward(mt_backend *be, const float *z, const float *x, float *y, int n, int d);
void mt_sigmoid_gate_backward(mt_backend *be, const float *z, const float *x, const float *dy, float *dz, float *dx,
                              int n, int d);

/* ---- routing ---- */

typedef enum mt_route_scoring {
    MT_ROUTE_SCORING_SOFTMAX = 0,
    MT_ROUTE_SCORING_SIGMOID,
} mt_route_scoring;

typedef enum mt_route_method {
    MT_ROUTE_METHOD_GREEDY = 0,      /* top-k over all experts */
    MT_ROUTE_METHOD_GROUP_LIMITED,   /* DeepSeek-V2: group score = max in group, keep topk_group groups */
    MT_ROUTE_METHOD_NOAUX_TC,        /* DeepSeek-V3: selection on s + bias, group score = sum of top-2 */
} mt_route_method;

typedef enum mt_route_norm {
    MT_ROUTE_NORM_NONE = 0,  /* weights are the scores of the chosen experts */
    MT_ROUTE_NORM_SUM,       /* w / Σw (Mixtral, Qwen with norm_topk_prob) */
    MT_ROUTE_NORM_SUM_EPS,   /* w / (Σw + 1e-20) (DeepSeek) */
} mt_route_norm;

typedef struct mt_route_args {
    int n_tok, n_expert, top_k;
    mt_route_scoring scoring;
    mt_route_method method;
    int n_group, topk_group;     /* group-limited methods only */
    const float *bias;           /* [n_expert] e_score_correction_bias, NOAUX_TC only (NULL there
                                    = zeros); ignored by the other methods */
    mt_route_norm norm;
    float scale;                 /* routed_scaling_factor applied after normalisation (1 = none) */
} mt_route_args;

/* logits [n_tok, E] → scores [n_tok, E] (softmax or sigmoid, fp32, never masked), and for each
 * token the chosen experts idx [n_tok, k] (in descending order of selection score) and their
 * weights w [n_tok, k]. Groups are contiguous runs of E/n_group experts; groups not kept are
 * masked as transformers does: GROUP_LIMITED sets their scores to 0 (DeepseekV2TopkRouter),
 * NOAUX_TC sets their biased scores to −inf (DeepseekV3TopkRouter). Requires E % n_group == 0,
 * topk_group <= n_group, top_k <= topk_group·E/n_group, and E/n_group >= 2 for NOAUX_TC.
 * Ties (equal scores, groups or experts) go to the lowest index, as torch.topk on the CPU. */
void mt_route_forward(mt_backend *be, const mt_route_args *a, const float *logits, float *scores, int32_t *idx,
                      float *w);
/* Given dw [n_tok, k] = ∂L/∂w, accumulates ∂L/∂logits (selection held constant; normalisation,
 * scaling and the softmax/sigmoid differentiated). dscores [n_tok, E] (may be NULL) is an extra
 * gradient arriving directly on the scores, e.g. from the load-balancing loss. */
void mt_route_backward(mt_backend *be, const mt_route_args *a, const float *scores, const int32_t *idx,
                       const float *dw, const float *dscores, float *dlogits);

/* ---- expert dispatch: group (token, slot) pairs by expert so each expert is one GEMM ---- */

/* From idx [n_tok, k]: offsets [E+1] (rows of expert e are offsets[e] .. offsets[e+1]-1), and
 * for each permuted row r: src_tok[r] (the token) and src_slot[r] (= t·k + j, the flat slot).
 * Stable: within an expert, rows are in token order. */
void mt_moe_permute(mt_backend *be, const int32_t *idx, int n_tok, int k, int n_expert, int32_t *offsets,
                    int32_t *src_tok, int32_t *src_slot);
/* xp[r,:] = x[src_tok[r],:]; x [n_tok,d], xp [n_rows,d] */
void mt_gather_rows(mt_backend *be, const float *x, const int32_t *src_tok, int n_rows, int d, float *xp);
/* dx[src_tok[r],:] += dxp[r,:] */
void mt_gather_rows_backward(mt_backend *be, const float *dxp, const int32_t *src_tok, int n_rows, int d, float *dx);
/* y[src_tok[r],:] += w[src_slot[r]] · yp[r,:] */
void mt_moe_unpermute(mt_backend *be, const float *yp, const int32_t *src_tok, const int32_t *src_slot, const float *w,
                      int n_rows, int d, float *y);
/* dyp[r,:] += w[src_slot[r]]·dy[src_tok[r],:]; dw[src_slot[r]] += ⟨dy[src_tok[r],:], yp[r,:]⟩ */
void mt_moe_unpermute_backward(mt_backend *be, const float *dy, const float *yp, const int32_t *src_tok,
                               const int32_t *src_slot, const float *w, int n_rows, int d, float *dyp, float *dw);

/* ---- loss ---- */

#define MT_IGNORE_INDEX (-100)

/* Per-row cross-entropy on logits [n, V] in place: loss[t] = logsumexp(z_t) − z_t[y_t] (0 when
 * y_t = MT_IGNORE_INDEX). When grad_scale != 0 the logits are replaced by
 * grad_scale·(softmax(z_t) − onehot(y_t)) (0 rows for ignored targets), so the full softmax is
 * never stored beside the logits; with grad_scale == 0 they are left as they are. losses [n]
 * is overwritten. Targets outside [0, V) other than MT_IGNORE_INDEX are asserted. */
void mt_cross_entropy(mt_backend *be, float *logits, const int32_t *targets, int n, int V, float grad_scale,
                      float *losses);

/* ---- optimiser ---- */

typedef struct mt_adamw_args {
    /* doubles like torch's Python-float hyperparameters, so 1−β2 etc. round as torch's do */
    double lr, beta1, beta2, eps, weight_decay;
    int64_t step; /* 1-based, for bias correction */
} mt_adamw_args;

/* Decoupled weight decay (Loshchilov & Hutter): p −= lr·(m̂/(√v̂+eps) + wd·p), with
 * m̂ = m/(1−β1^step), v̂ = v/(1−β2^step). p, g, m, v [n]; m and v are updated in place, in
 * the operation order of torch.optim.AdamW's single-tensor path. */
void mt_adamw_step(mt_backend *be, const mt_adamw_args *a, float *p, const float *g, float *m, float *v, size_t n);

/* ---- sgemm peak measurement for benchmarks ---- */

/* GFLOP/s of an n×n×n sgemm on this backend, median of `reps` timed runs after one warm-up;
 * 0 when the three n×n buffers cannot be allocated. */
double mt_backend_sgemm_gflops(mt_backend *be, int n, int reps);

#endif
