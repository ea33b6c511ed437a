/* lora.c — the LoRA adapter itself: building A/B for the selected linears, PEFT's
 * initialisation, the table of low-rank deltas that passes apply (model/ does the math, with
 * dropout), merge/unmerge, and the trainer's view of the tensors. */
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
        MT_ASSERT(L && specs[i].r >= 1 && (i == 0 || specs[i].linear != specs[i - 1].linear));
    }

    mt_lora *l = mt_xcalloc(1, sizeof *l);
    l->m = m;
    l->be = be;
    l->dropout = dropout;
    l->use_rslora = use_rslora;
    l->n_mods = n;
    l->mods = mt_xcalloc((size_t)(n > 0 ? n : 1), sizeof *l->mods);
    l->n_tensors = 2 * n;
    l->tensors = mt_xcalloc((size_t)(2 * n > 0 ? 2 * n : 1), sizeof *l->tensors);

    size_t values = 0, name_bytes = 0;
    for (int i = 0; i < n; i++) {
        const mt_linear *L = mt_model_linear(m, specs[i].linear);
        values += (size_t)specs[i].r * ((size_t)L->in + (size_t)L->out);
        name_bytes += 2 * (strlen(L->module) + sizeof "base_model.model..lora_A.weight");
    }
    l->n_values = values;
    /* values only: a loaded adapter that is served never needs gradient memory */
    l->block = mt_backend_alloc(be, values * sizeof(float) + 64);
    if (!l->block) {
        free(l->mods);
        free(l->tensors);
        free(l);
        free(specs);
        return mt_error_set(err, MT_ERR_NOMEM, "lora: cannot allocate %.1f MB for the adapter",
                            (double)values * sizeof(float) / 1e6);
    }
    l->names = mt_xmalloc(name_bytes + 1);
    l->deltas = mt_xcalloc((size_t)(n > 0 ? n : 1), sizeof *l->deltas);
    l->by_linear = mt_xcalloc((size_t)mt_model_linear_count(m), sizeof *l->by_linear);

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
        off += na;
        md->B = l->block + off;
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
        }
        l->deltas[i] = (mt_lowrank){.r = md->r, .scale = md->scale, .A = md->A, .B = md->B};
        l->by_linear[md->index] = &l->deltas[i];
        if (md->r > l->max_rank) l->max_rank = md->r;
    }
    l->view = (mt_adapter){.n_linears = mt_model_linear_count(m),
                           .lin = l->by_linear,
                           .dropout = dropout,
                           .max_rank = l->max_rank};
    free(specs);
    *out = l;
    return MT_OK;
}

void mt_lora_free(mt_lora *l) {
    if (!l) return;
    if (l->merged) mt_lora_unmerge(l, NULL);
    mt_backend_release(l->be, l->block);
    if (l->grads) mt_backend_release(l->be, l->grads);
    for (int i = 0; i < l->n_mods; i++) mt_lowrank_tape_free(l->deltas[i].tape);
    free(l->deltas);
    free(l->by_linear);
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

const mt_adapter *mt_lora_adapter(const mt_lora *l) { return l && !l->merged ? &l->view : NULL; }
int mt_lora_max_rank(const mt_lora *l) { return l->max_rank; }

int mt_lora_tensor_count(const mt_lora *l) { return l->n_tensors; }

mt_lora_tensor *mt_lora_tensor_at(mt_lora *l, int i) {
    MT_ASSERT(i >= 0 && i < l->n_tensors);
    return &l->tensors[i];
}

void mt_lora_zero_grad(mt_lora *l) {
    if (l->grads) mt_backend_memset0(l->be, l->grads, l->n_values * sizeof(float));
}

mt_status mt_lora_alloc_grads(mt_lora *l, mt_error *err) {
    if (l->grads) return MT_OK;
    l->grads = mt_backend_alloc(l->be, l->n_values * sizeof(float) + 64);
    if (!l->grads)
        return mt_error_set(err, MT_ERR_NOMEM, "lora: cannot allocate %.1f MB for the adapter's gradients",
                            (double)l->n_values * sizeof(float) / 1e6);
    mt_backend_memset0(l->be, l->grads, l->n_values * sizeof(float));
    for (int i = 0; i < l->n_mods; i++) {
        mt_lora_mod *md = &l->mods[i];
        md->dA = l->grads + (md->A - l->block);
        md->dB = l->grads + (md->B - l->block);
        l->tensors[2 * i].grad = md->dA;
        l->tensors[2 * i + 1].grad = md->dB;
        l->deltas[i].dA = md->dA;
        l->deltas[i].dB = md->dB;
        l->deltas[i].tape = mt_lowrank_tape_new();
    }
    return MT_OK;
}

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
        int rk = mt_lora_patterns_find(rp, L->module), ak = mt_lora_patterns_find(ap, L->module);
        specs[n++] = (mt_lora_spec){.linear = i,
                                    .r = rk >= 0 ? c->rank_values[rk] : c->r,
                                    .alpha = ak >= 0 ? c->alpha_values[ak] : c->alpha};
    }
    if (!st && n == 0) st = mt_error_set(err, MT_ERR_NOT_FOUND, "lora: exclude removes every targeted linear layer");
    mt_lora *l = NULL;
    if (!st) st = mt_lora_build(&l, m, specs, n, c->dropout, c->use_rslora, err);
    /* a new adapter is made to be trained */
    if (!st) st = mt_lora_alloc_grads(l, err);
    if (st && l) {
        mt_lora_free(l);
        l = NULL;
    }
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
    return MT_OK;
}
