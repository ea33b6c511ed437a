/* lora.c — the LoRA adapter itself: building A/B for the selected linears, PEFT's
 * initialisation, the forward/backward hooks the model's linears call (with inverted dropout
 * whose mask is regenerated from a counter hash), merge/unmerge, and the trainer's view of
 * the tensors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora-impl.h"

void mt_lora_config_default(mt_lora_config *c) {
    memset(c, 0, sizeof *c);
    c->r = 8;
    c->alpha = 16.0f;
    c->dropout = 0.0f;
    c->init = MT_LORA_INIT_DEFAULT;
}

float mt_lora_scale(float alpha, int r, bool use_rslora) {
    /* computed in double as PEFT does in Python, then used as a float factor */
    return (float)(use_rslora ? (double)alpha / sqrt((double)r) : (double)alpha / (double)r);
}

const char *mt_linear_kind_name(mt_linear_kind k) {
    static const char *const names[MT_LINEAR_KIND_COUNT] = {
        [MT_LINEAR_ATTN] = "attention", [MT_LINEAR_MLP] = "mlp",       [MT_LINEAR_EXPERT] = "expert",
        [MT_LINEAR_SHARED] = "shared",  [MT_LINEAR_ROUTER] = "router", [MT_LINEAR_LM_HEAD] = "lm_head",
    };
    return (unsigned)k < MT_LINEAR_KIND_COUNT ? names[k] : "unknown";
}

/* ---- the hooks ---- */

static bool dropout_on(const mt_lora *l, const mt_adapter_call *c) { return c->train && l->dropout > 0.0f; }

/* Inverted dropout as torch.nn.Dropout: keep with probability 1−p and scale by 1/(1−p). The
 * mask of (row, column) comes from a hash of the call's key and that element's counter, so the
 * backward pass regenerates the forward's mask without storing it. One 64-bit hash serves four
 * consecutive counters (16 bits each: p is resolved to 1/65536): hashing every element cost
 * 10% of a LoRA step with dropout on the tiny base (perf, bench train).
 * apply_mask: dst[i] (+)= src[i] · keep(base + i) for i < n. */
static void apply_mask(uint64_t key, uint64_t base, int n, float p, float inv, const float *src, float *dst,
                       bool accumulate) {
    for (int i = 0; i < n;) {
        uint64_t ctr = base + (uint64_t)i;
        uint64_t h = mt_hash_u64(key, ctr >> 2);
        for (int lane = (int)(ctr & 3); lane < 4 && i < n; lane++, i++) {
            float u = (float)((h >> (16 * lane)) & 0xffff) * (1.0f / 65536.0f);
            float v = u >= p ? src[i] * inv : 0.0f;
            dst[i] = accumulate ? dst[i] + v : v;
        }
    }
}

/* buf [rows, in] = dropout(x) for rows t0 .. t0+rows−1 of the call */
static void stage_dropout(const mt_lora *l, const mt_adapter_call *c, const float *x, int in, int t0, int rows,
                          float *buf) {
    float p = l->dropout, inv = 1.0f / (1.0f - p);
    for (int t = 0; t < rows; t++) {
        uint64_t base = (c->row0 + (uint64_t)(t0 + t)) * (uint64_t)in;
        apply_mask(c->key, base, in, p, inv, x + (size_t)(t0 + t) * in, buf + (size_t)t * in, false);
    }
}

/* h [n, r] = dropout(x)·Aᵀ */
static void project(const mt_lora_mod *md, const mt_adapter_call *c, const float *x, int n, float *h) {
    const mt_lora *l = md->owner;
    int in = md->lin->in, r = md->r;
    if (!dropout_on(l, c)) {
        mt_matmul(c->be, false, true, n, r, in, 1.0f, x, in, md->A, in, 0.0f, h, r);
        return;
    }
    for (int t0 = 0; t0 < n; t0 += MT_LORA_DROP_ROWS) {
        int rows = n - t0 < MT_LORA_DROP_ROWS ? n - t0 : MT_LORA_DROP_ROWS;
        stage_dropout(l, c, x, in, t0, rows, l->drop);
        mt_matmul(c->be, false, true, rows, r, in, 1.0f, l->drop, in, md->A, in, 0.0f, h + (size_t)t0 * r, r);
    }
}

static void lora_forward(void *self, const mt_adapter_call *c, const float *x, int n, float *y) {
    const mt_lora_mod *md = self;
    int out = md->lin->out, r = md->r;
    MT_ASSERT((size_t)n * (size_t)r * 2 <= c->scratch_cap);
    float *h = c->scratch;
    project(md, c, x, n, h);
    mt_matmul(c->be, false, true, n, out, r, md->scale, h, r, md->B, r, 1.0f, y, out);
}

/* With u = dropout(x), h = u·Aᵀ, y += s·h·Bᵀ:
 *   dB += s·dyᵀ·h,  dh = s·dy·B,  dA += dhᵀ·u,  dx += mask ⊙ (dh·A)/(1−p). */
static void lora_backward(void *self, const mt_adapter_call *c, const float *x, const float *dy, int n, float *dx) {
    mt_lora_mod *md = self;
    const mt_lora *l = md->owner;
    mt_backend *be = c->be;
    int in = md->lin->in, out = md->lin->out, r = md->r;
    float s = md->scale;
    MT_ASSERT((size_t)n * (size_t)r * 2 <= c->scratch_cap);
    float *h = c->scratch, *dh = c->scratch + (size_t)n * r;
    project(md, c, x, n, h);
    mt_matmul(be, true, false, out, r, n, s, dy, out, h, r, 1.0f, md->dB, r);
    mt_matmul(be, false, false, n, r, out, s, dy, out, md->B, r, 0.0f, dh, r);
    if (!dropout_on(l, c)) {
        mt_matmul(be, true, false, r, in, n, 1.0f, dh, r, x, in, 1.0f, md->dA, in);
        if (dx) mt_matmul(be, false, false, n, in, r, 1.0f, dh, r, md->A, in, 1.0f, dx, in);
        return;
    }
    float p = l->dropout, inv = 1.0f / (1.0f - p);
    for (int t0 = 0; t0 < n; t0 += MT_LORA_DROP_ROWS) {
        int rows = n - t0 < MT_LORA_DROP_ROWS ? n - t0 : MT_LORA_DROP_ROWS;
        const float *dhc = dh + (size_t)t0 * r;
        stage_dropout(l, c, x, in, t0, rows, l->drop);
        mt_matmul(be, true, false, r, in, rows, 1.0f, dhc, r, l->drop, in, 1.0f, md->dA, in);
        if (!dx) continue;
        mt_matmul(be, false, false, rows, in, r, 1.0f, dhc, r, md->A, in, 0.0f, l->drop, in);
        for (int t = 0; t < rows; t++) {
            uint64_t base = (c->row0 + (uint64_t)(t0 + t)) * (uint64_t)in;
            apply_mask(c->key, base, in, p, inv, l->drop + (size_t)t * in, dx + (size_t)(t0 + t) * in, true);
        }
    }
}

static const mt_adapter_ops lora_ops = {lora_forward, lora_backward};

/* ---- building and freeing ---- */

static int cmp_spec(const void *a, const void *b) {
    const mt_lora_spec *x = a, *y = b;
    return (x->linear > y->linear) - (x->linear < y->linear);
}

mt_status mt_lora_build(mt_lora **out, mt_model *m, const mt_lora_spec *specs_in, int n, float dropout, bool use_rslora,
                        mt_error *err) {
    *out = NULL;
    mt_backend *be = mt_model_backend(m);
    mt_lora_spec *specs = mt_xmalloc((size_t)(n > 0 ? n : 1) * sizeof *specs);
    memcpy(specs, specs_in, (size_t)n * sizeof *specs);
    qsort(specs, (size_t)n, sizeof *specs, cmp_spec);
    for (int i = 0; i < n; i++) {
        const mt_linear *L = mt_model_linear(m, specs[i].linear);
        MT_ASSERT(specs[i].r >= 1 && L->hook.ops == NULL && (i == 0 || specs[i].linear != specs[i - 1].linear));
    }

    mt_lora *l = mt_xcalloc(1, sizeof *l);
    l->m = m;
    l->be = be;
    l->dropout = dropout;
    l->use_rslora = use_rslora;
    l->enabled = true;
    l->n_mods = n;
    l->mods = mt_xcalloc((size_t)(n > 0 ? n : 1), sizeof *l->mods);
    l->n_tensors = 2 * n;
    l->tensors = mt_xcalloc((size_t)(2 * n > 0 ? 2 * n : 1), sizeof *l->tensors);

    size_t values = 0, name_bytes = 0;
    int max_in = 0;
    for (int i = 0; i < n; i++) {
        const mt_linear *L = mt_model_linear(m, specs[i].linear);
        values += (size_t)specs[i].r * ((size_t)L->in + (size_t)L->out);
        name_bytes += 2 * (strlen(L->module) + sizeof "base_model.model..lora_A.weight");
        if (L->in > max_in) max_in = L->in;
    }
    l->n_values = values;
    l->block = mt_backend_alloc(be, 2 * values * sizeof(float) + 64);
    if (dropout > 0.0f) l->drop = mt_backend_alloc(be, (size_t)MT_LORA_DROP_ROWS * (size_t)max_in * sizeof(float) + 64);
    if (!l->block || (dropout > 0.0f && !l->drop)) {
        if (l->block) mt_backend_release(be, l->block);
        if (l->drop) mt_backend_release(be, l->drop);
        free(l->mods);
        free(l->tensors);
        free(l);
        free(specs);
        return mt_error_set(err, MT_ERR_NOMEM, "lora: cannot allocate %.1f MB for the adapter",
                            2.0 * (double)values * sizeof(float) / 1e6);
    }
    mt_backend_memset0(be, l->block, 2 * values * sizeof(float));
    l->names = mt_xmalloc(name_bytes + 1);

    size_t off = 0, name_off = 0;
    for (int i = 0; i < n; i++) {
        mt_linear *L = mt_model_linear(m, specs[i].linear);
        mt_lora_mod *md = &l->mods[i];
        md->owner = l;
        md->lin = L;
        md->index = specs[i].linear;
        md->r = specs[i].r;
        md->alpha = specs[i].alpha;
        md->scale = mt_lora_scale(md->alpha, md->r, use_rslora);
        size_t na = (size_t)md->r * L->in, nb = (size_t)L->out * md->r;
        md->A = l->block + off;
        md->dA = l->block + values + off;
        off += na;
        md->B = l->block + off;
        md->dB = l->block + values + off;
        off += nb;
        for (int k = 0; k < 2; k++) {
            mt_lora_tensor *t = &l->tensors[2 * i + k];
            char *name = l->names + name_off;
            name_off += (size_t)sprintf(name, "base_model.model.%s.lora_%c.weight", L->module, k ? 'B' : 'A') + 1;
            t->name = name;
            t->shape[0] = k ? L->out : md->r;
            t->shape[1] = k ? md->r : L->in;
            t->numel = t->shape[0] * t->shape[1];
            t->data = k ? md->B : md->A;
            t->grad = k ? md->dB : md->dA;
        }
        L->hook = (mt_adapter_hook){.ops = &lora_ops, .self = md, .max_rank = md->r, .enabled = true};
    }
    free(specs);
    *out = l;
    return MT_OK;
}

void mt_lora_free(mt_lora *l) {
    if (!l) return;
    if (l->merged) mt_lora_unmerge(l, NULL);
    for (int i = 0; i < l->n_mods; i++) l->mods[i].lin->hook = (mt_adapter_hook){0};
    mt_backend_release(l->be, l->block);
    if (l->drop) mt_backend_release(l->be, l->drop);
    for (int i = 0; i < l->n_rank; i++) free(l->rank_keys[i]);
    for (int i = 0; i < l->n_alpha; i++) free(l->alpha_keys[i]);
    free(l->rank_keys);
    free(l->rank_values);
    free(l->alpha_keys);
    free(l->alpha_values);
    free(l->target_regex);
    free(l->names);
    free(l->tensors);
    free(l->mods);
    free(l);
}

static void sync_hooks(mt_lora *l) {
    for (int i = 0; i < l->n_mods; i++) l->mods[i].lin->hook.enabled = l->enabled && !l->merged;
}

void mt_lora_set_enabled(mt_lora *l, bool on) {
    /* as PEFT's disable_adapter: a merged adapter is taken back out of the weights */
    if (!on && l->merged) mt_lora_unmerge(l, NULL);
    l->enabled = on;
    sync_hooks(l);
}

int mt_lora_tensor_count(const mt_lora *l) { return l->n_tensors; }

mt_lora_tensor *mt_lora_tensor_at(mt_lora *l, int i) {
    MT_ASSERT(i >= 0 && i < l->n_tensors);
    return &l->tensors[i];
}

void mt_lora_zero_grad(mt_lora *l) { mt_backend_memset0(l->be, l->block + l->n_values, l->n_values * sizeof(float)); }

void mt_lora_get_summary(const mt_lora *l, mt_lora_summary *s) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < l->n_mods; i++) {
        const mt_lora_mod *md = &l->mods[i];
        int64_t p = (int64_t)md->r * (md->lin->in + md->lin->out);
        s->modules[md->lin->kind]++;
        s->params[md->lin->kind] += p;
        s->n_modules++;
        s->n_params += p;
    }
    for (int i = 0; i < mt_model_param_count(l->m); i++) s->base_params += mt_model_param(l->m, i)->numel;
}

/* ---- attach: targets, patterns, initialisation ---- */

static char **dup_strings(const char *const *s, int n) {
    char **d = mt_xcalloc((size_t)(n > 0 ? n : 1), sizeof *d);
    for (int i = 0; i < n; i++) d[i] = mt_xstrdup(s[i]);
    return d;
}

static mt_status check_config(const mt_lora_config *c, mt_error *err) {
    if (c->r < 1) return mt_error_set(err, MT_ERR_INVALID, "lora: r must be at least 1, got %d", c->r);
    if (!isfinite(c->alpha)) return mt_error_set(err, MT_ERR_INVALID, "lora: alpha must be a finite number");
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return mt_error_set(err, MT_ERR_INVALID, "lora: dropout must be in [0, 1), got %g", (double)c->dropout);
    if ((unsigned)c->init > MT_LORA_INIT_GAUSSIAN) return mt_error_set(err, MT_ERR_INVALID, "lora: unknown init");
    if (c->n_targets < 1 || !c->targets)
        return mt_error_set(err, MT_ERR_INVALID, "lora: no targets given (e.g. \"all-linear\", \"q_proj\")");
    for (int i = 0; i < c->n_rank; i++)
        if (c->rank_values[i] < 1)
            return mt_error_set(err, MT_ERR_INVALID, "lora: rank_pattern \"%s\": rank must be at least 1, got %d",
                                c->rank_keys[i], c->rank_values[i]);
    for (int i = 0; i < c->n_alpha; i++)
        if (!isfinite(c->alpha_values[i]))
            return mt_error_set(err, MT_ERR_INVALID, "lora: alpha_pattern \"%s\": alpha must be finite",
                                c->alpha_keys[i]);
    return MT_OK;
}

/* PEFT's defaults: A kaiming_uniform_(a=√5) on [r, in], i.e. U(±gain·√(3/fan_in)) with
 * gain = √(2/(1+a²)), fan_in = in; or ("gaussian") A ~ N(0, std 1/r). B = 0 either way. Each
 * module has its own stream, so choosing more targets leaves the others' values unchanged. */
static void init_module(const mt_lora_mod *md, mt_lora_init init, uint64_t seed, int linear_index, mt_backend *be) {
    int in = md->lin->in;
    size_t na = (size_t)md->r * in;
    float *a = mt_xmalloc(na * sizeof(float));
    mt_rng rng;
    mt_rng_seed(&rng, mt_hash_u64(seed, (uint64_t)linear_index));
    if (init == MT_LORA_INIT_GAUSSIAN) {
        float std = (float)(1.0 / (double)md->r);
        for (size_t i = 0; i < na; i++) a[i] = std * mt_rng_normal(&rng);
    } else {
        double a_neg = sqrt(5.0), gain = sqrt(2.0 / (1.0 + a_neg * a_neg));
        double bound = sqrt(3.0) * (gain / sqrt((double)in));
        for (size_t i = 0; i < na; i++) a[i] = (float)(-bound + 2.0 * bound * (double)mt_rng_float(&rng));
    }
    mt_backend_upload(be, md->A, a, na * sizeof(float));
    free(a);
}

mt_status mt_lora_attach(mt_lora **out, mt_model *m, const mt_lora_config *c, mt_error *err) {
    *out = NULL;
    mt_status st = check_config(c, err);
    if (st) return st;
    mt_lora_patterns *tp = NULL, *xp = NULL, *rp = NULL, *ap = NULL;
    int nl = mt_model_linear_count(m);
    bool *chosen = mt_xcalloc((size_t)nl, sizeof *chosen);
    mt_lora_spec *specs = mt_xcalloc((size_t)nl, sizeof *specs);
    int n = 0;
    st = mt_lora_patterns_targets(&tp, c->targets, c->n_targets, "lora: targets", err);
    if (!st) st = mt_lora_patterns_targets(&xp, c->exclude, c->n_exclude, "lora: exclude", err);
    if (!st) st = mt_lora_patterns_keys(&rp, c->rank_keys, c->n_rank, "lora: rank_pattern", err);
    if (!st) st = mt_lora_patterns_keys(&ap, c->alpha_keys, c->n_alpha, "lora: alpha_pattern", err);
    for (int t = 0; !st && t < c->n_targets; t++) {
        bool any = false;
        for (int i = 0; i < nl; i++) {
            if (!mt_lora_patterns_select(tp, t, mt_model_linear(m, i))) continue;
            chosen[i] = any = true;
        }
        if (!any) {
            char list[700];
            mt_lora_list_modules(m, list, sizeof list);
            st = mt_error_set(err, MT_ERR_NOT_FOUND, "lora: target \"%s\" matches no linear layer; the model has: %s",
                              c->targets[t], list);
        }
    }
    for (int i = 0; !st && i < nl; i++) {
        if (!chosen[i]) continue;
        mt_linear *L = mt_model_linear(m, i);
        bool excluded = false;
        for (int x = 0; x < c->n_exclude && !excluded; x++) excluded = mt_lora_patterns_select(xp, x, L);
        if (excluded) continue;
        if (L->hook.ops) {
            st = mt_error_set(err, MT_ERR_INVALID, "lora: %s already has an adapter attached", L->module);
            break;
        }
        int rk = mt_lora_patterns_find(rp, L->module), ak = mt_lora_patterns_find(ap, L->module);
        specs[n++] = (mt_lora_spec){.linear = i,
                                    .r = rk >= 0 ? c->rank_values[rk] : c->r,
                                    .alpha = ak >= 0 ? c->alpha_values[ak] : c->alpha};
    }
    if (!st && n == 0) st = mt_error_set(err, MT_ERR_NOT_FOUND, "lora: exclude removes every targeted linear layer");
    mt_lora *l = NULL;
    if (!st) st = mt_lora_build(&l, m, specs, n, c->dropout, c->use_rslora, err);
    if (!st) {
        l->r = c->r;
        l->alpha = c->alpha;
        l->init = c->init;
        for (int i = 0; i < l->n_mods; i++)
            init_module(&l->mods[i], c->init, c->seed, l->mods[i].index, l->be);
        if (c->n_targets == 1 && c->n_exclude == 0 && !strncmp(c->targets[0], "re:", 3))
            l->target_regex = mt_xstrdup(c->targets[0] + 3);
        l->n_rank = c->n_rank;
        l->rank_keys = dup_strings(c->rank_keys, c->n_rank);
        l->rank_values = mt_xcalloc((size_t)(c->n_rank > 0 ? c->n_rank : 1), sizeof(int));
        if (c->n_rank) memcpy(l->rank_values, c->rank_values, (size_t)c->n_rank * sizeof(int));
        l->n_alpha = c->n_alpha;
        l->alpha_keys = dup_strings(c->alpha_keys, c->n_alpha);
        l->alpha_values = mt_xcalloc((size_t)(c->n_alpha > 0 ? c->n_alpha : 1), sizeof(float));
        if (c->n_alpha) memcpy(l->alpha_values, c->alpha_values, (size_t)c->n_alpha * sizeof(float));
        *out = l;
    }
    mt_lora_patterns_free(tp);
    mt_lora_patterns_free(xp);
    mt_lora_patterns_free(rp);
    mt_lora_patterns_free(ap);
    free(chosen);
    free(specs);
    return st;
}

/* ---- merge ---- */

mt_status mt_lora_merge(mt_lora *l, mt_error *err) {
    if (l->merged) return mt_error_set(err, MT_ERR_INVALID, "lora: the adapter is already merged");
    /* every weight is made writable before any is changed: a failure leaves all as they were */
    for (int i = 0; i < l->n_mods; i++) {
        mt_status st = mt_model_param_make_writable(l->m, l->mods[i].lin->weight, err);
        if (st) return st;
    }
    for (int i = 0; i < l->n_mods; i++) {
        const mt_lora_mod *md = &l->mods[i];
        int in = md->lin->in, out = md->lin->out;
        mt_matmul(l->be, false, false, out, in, md->r, md->scale, md->B, md->r, md->A, in, 1.0f,
                  md->lin->weight->data, in);
    }
    l->merged = true;
    sync_hooks(l);
    return MT_OK;
}

mt_status mt_lora_unmerge(mt_lora *l, mt_error *err) {
    if (!l->merged) return mt_error_set(err, MT_ERR_INVALID, "lora: the adapter is not merged");
    for (int i = 0; i < l->n_mods; i++) {
        const mt_lora_mod *md = &l->mods[i];
        int in = md->lin->in, out = md->lin->out;
        mt_matmul(l->be, false, false, out, in, md->r, -md->scale, md->B, md->r, md->A, in, 1.0f,
                  md->lin->weight->data, in);
    }
    l->merged = false;
    sync_hooks(l);
    return MT_OK;
}
