/* model_testlib.h — helpers the model tests share (header-only, static): toy low-rank
 * adapters as passes take them, fixture paths, and random token batches. */
#ifndef MT_MODEL_TESTLIB_H
#define MT_MODEL_TESTLIB_H

#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

/* Random low-rank deltas y += s·(x·Aᵀ)·Bᵀ (A [r, in], B [out, r], gradients into dA, dB) on
 * chosen linears, as an adapter passes take: what the model's adapter math is checked with
 * (finite differences, decode against forward) independently of peft/. */
typedef struct toy_adapter {
    int in, out, r;
    float s;
    float *A, *Bm, *dA, *dB;
} toy_adapter;

typedef struct toy_set {
    int n;                  /* the model's linears */
    toy_adapter **ad;       /* [n], NULL where not adapted */
    mt_lowrank *lr;         /* [n] */
    const mt_lowrank **by;  /* [n] */
    mt_adapter view;
} toy_set;

static inline toy_set *toy_set_new(mt_model *m) {
    toy_set *t = mt_xcalloc(1, sizeof *t);
    t->n = mt_model_linear_count(m);
    t->ad = mt_xcalloc((size_t)t->n, sizeof *t->ad);
    t->lr = mt_xcalloc((size_t)t->n, sizeof *t->lr);
    t->by = mt_xcalloc((size_t)t->n, sizeof *t->by);
    t->view = (mt_adapter){.n_linears = t->n, .lin = t->by};
    return t;
}

static inline toy_adapter *toy_add(toy_set *t, mt_model *m, int i, int r, uint64_t seed) {
    mt_linear *L = mt_model_linear(m, i);
    toy_adapter *a = mt_xcalloc(1, sizeof *a);
    a->in = L->in;
    a->out = L->out;
    a->r = r;
    a->s = 0.5f;
    a->A = mt_xmalloc((size_t)r * L->in * sizeof(float));
    a->Bm = mt_xmalloc((size_t)L->out * r * sizeof(float));
    a->dA = mt_xcalloc((size_t)r * L->in, sizeof(float));
    a->dB = mt_xcalloc((size_t)L->out * r, sizeof(float));
    mt_test_fill_uniform(a->A, (size_t)r * L->in, -0.3f, 0.3f, seed);
    mt_test_fill_uniform(a->Bm, (size_t)L->out * r, -0.3f, 0.3f, seed + 1);
    t->ad[i] = a;
    t->lr[i] = (mt_lowrank){.r = r, .scale = a->s, .A = a->A, .B = a->Bm, .dA = a->dA, .dB = a->dB};
    t->by[i] = &t->lr[i];
    if (r > t->view.max_rank) t->view.max_rank = r;
    return a;
}

static inline int toy_linear_index(mt_model *m, const char *module) {
    for (int i = 0; i < mt_model_linear_count(m); i++)
        if (!strcmp(mt_model_linear(m, i)->module, module)) return i;
    fail_msg("no linear %s", module);
    return -1;
}

static inline void toy_set_free(toy_set *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        toy_adapter *a = t->ad[i];
        if (!a) continue;
        free(a->A);
        free(a->Bm);
        free(a->dA);
        free(a->dB);
        free(a);
    }
    free(t->ad);
    free(t->lr);
    free(t->by);
    free(t);
}

static inline const char *model_fixture(const char *variant) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", MT_FIXTURES_DIR, variant);
    return dir;
}

static inline mt_model *load_fixture(mt_backend *be, const char *variant) {
    mt_error err = {0};
    mt_model *m = NULL;
    if (mt_model_load(&m, model_fixture(variant), be, &err) != MT_OK) fail_msg("%s", err.msg);
    return m;
}

static inline void random_tokens(int32_t *t, int n, int V, uint64_t seed) {
    mt_rng r;
    mt_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) t[i] = (int32_t)mt_rng_below(&r, (uint64_t)V);
}

/* Every fixture folder: one per family and variant. */
#define N_VARIANTS 7
static inline const char *variant_name(int i) {
    static const char *const names[N_VARIANTS] = {"deepseek_v3", "deepseek_v3_noq", "deepseek_v2", "qwen3_moe",
                                                  "qwen2_moe",   "mixtral",         "olmoe"};
    return names[i];
}

/* ---- finite-difference checks through the whole model (test_model_grad, test_lora) ---- */

enum { NB = 2, NT = 12 };

typedef struct fd_ctx {
    mt_model *m;
    mt_workspace *ws;
    mt_batch b;
    mt_forward_opts o;
    int32_t tokens[NB * NT], targets[NB * NT];
} fd_ctx;

/* The loss backward differentiates: mean cross-entropy + aux_coef·aux, in double. */
static inline double fd_loss(fd_ctx *c) {
    mt_error err = {0};
    mt_forward_result r;
    if (mt_model_forward(c->m, c->ws, &c->b, &c->o, &r, &err) != MT_OK) fail_msg("%s", err.msg);
    return r.loss_sum / (double)r.n_tokens + c->o.aux_coef * r.aux_loss;
}

static inline double fd_central(fd_ctx *c, float *w, long i, float h) {
    float w0 = w[i];
    w[i] = w0 + h;
    double lp = fd_loss(c);
    w[i] = w0 - h;
    double lm = fd_loss(c);
    w[i] = w0;
    return (lp - lm) / (2.0 * (double)h);
}

/* Central difference at w[i] against the analytic gradient an. The step is small enough not
 * to move a routing choice of the fixtures without jitter (their margins are > 5e-3
 * relative); with jitter a choice can sit near a tie, which shows as a difference quotient
 * that changes with the step: such an entry is reported as skipped (false), never as a pass. */
static inline bool fd_entry(fd_ctx *c, float *w, double an, double scale, const char *what, long i, double *worst) {
    const float h = 1e-3f;
    double fd = fd_central(c, w, i, h);
    double err = fabs(fd - an), tol = 0.03 * fabs(an) + 0.01 * scale + 2e-4;
    if (!(err <= tol)) {
        double fd2 = fd_central(c, w, i, h / 2);
        if (fabs(fd2 - fd) > tol) return false;
        fail_msg("%s[%ld]: finite difference %.6g, backward %.6g (gradient scale %.3g)", what, i, fd, an, scale);
    }
    *worst = fmax(*worst, err / (fabs(an) + scale + 1e-12));
    return true;
}

#endif
