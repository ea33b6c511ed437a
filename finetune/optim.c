/* optim.c — AdamW state over the trainable tensors, gradient norms and clipping, and the
 * learning-rate schedules of the recipe. */
#define _GNU_SOURCE
#include "optim-impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dist/dist.h"

mt_status mt_optim_init(mt_optim *o, mt_backend *be, const mt_trainable *t, int n, mt_error *err) {
    memset(o, 0, sizeof *o);
    o->be = be;
    o->t = mt_xcalloc((size_t)(n ? n : 1), sizeof *o->t);
    o->n = n;
    for (int i = 0; i < n; i++) {
        o->t[i] = t[i];
        size_t bytes = (size_t)t[i].numel * sizeof(float);
        o->t[i].m = mt_backend_alloc(be, bytes);
        o->t[i].v = mt_backend_alloc(be, bytes);
        if (!o->t[i].m || !o->t[i].v) {
            mt_optim_free(o);
            return mt_error_set(err, MT_ERR_NOMEM, "cannot allocate optimizer state for %s (%lld values)", t[i].name,
                                (long long)t[i].numel);
        }
        o->n_params += t[i].numel;
    }
    return MT_OK;
}

void mt_optim_free(mt_optim *o) {
    for (int i = 0; i < o->n; i++) {
        if (o->t[i].m) mt_backend_release(o->be, o->t[i].m);
        if (o->t[i].v) mt_backend_release(o->be, o->t[i].v);
    }
    free(o->t);
    memset(o, 0, sizeof *o);
}

void mt_optim_zero_grad(mt_optim *o) {
    for (int i = 0; i < o->n; i++) mt_backend_memset0(o->be, o->t[i].grad, (size_t)o->t[i].numel * sizeof(float));
}

double mt_optim_grad_norm(const mt_optim *o) {
    double s = 0;
    for (int i = 0; i < o->n; i++) s += mt_sum_squares(o->be, o->t[i].grad, (size_t)o->t[i].numel);
    return sqrt(s);
}

void mt_optim_scale_grad(mt_optim *o, float s) {
    for (int i = 0; i < o->n; i++) mt_scale(o->be, o->t[i].grad, s, (size_t)o->t[i].numel);
}

/* Moves `fill` packed values back to their tensors, starting at tensor *ti offset *off. */
static void unpack(mt_optim *o, const float *bucket, size_t fill, int *ti, int64_t *off) {
    size_t k = 0;
    while (k < fill) {
        mt_trainable *t = &o->t[*ti];
        size_t c = (size_t)(t->numel - *off);
        if (c > fill - k) c = fill - k;
        memcpy(t->grad + *off, bucket + k, c * sizeof(float));
        k += c;
        *off += (int64_t)c;
        if (*off == t->numel) {
            (*ti)++;
            *off = 0;
        }
    }
}

mt_status mt_optim_allreduce_grad(mt_optim *o, struct mt_dist *d, float *bucket, size_t cap, mt_error *err) {
    size_t fill = 0;
    int ui = 0;        /* where the next unpack starts */
    int64_t uoff = 0;
    for (int i = 0; i < o->n; i++) {
        const mt_trainable *t = &o->t[i];
        int64_t off = 0;
        while (off < t->numel) {
            size_t c = (size_t)(t->numel - off);
            if (c > cap - fill) c = cap - fill;
            memcpy(bucket + fill, t->grad + off, c * sizeof(float));
            fill += c;
            off += (int64_t)c;
            if (fill == cap) {
                MT_TRY(mt_dist_allreduce_f32(d, bucket, fill, MT_DIST_OP_SUM, err));
                unpack(o, bucket, fill, &ui, &uoff);
                fill = 0;
            }
        }
    }
    if (fill) {
        MT_TRY(mt_dist_allreduce_f32(d, bucket, fill, MT_DIST_OP_SUM, err));
        unpack(o, bucket, fill, &ui, &uoff);
    }
    return MT_OK;
}

void mt_optim_step(mt_optim *o, const mt_recipe *r, double lr) {
    o->step++;
    for (int i = 0; i < o->n; i++) {
        mt_adamw_args a = {
            .lr = o->t[i].lr_scale > 0 ? lr * o->t[i].lr_scale : lr,
            .beta1 = r->train.beta1,
            .beta2 = r->train.beta2,
            .eps = r->train.eps,
            .weight_decay = o->t[i].decay ? r->train.weight_decay : 0.0,
            .step = o->step,
        };
        mt_adamw_step(o->be, &a, o->t[i].data, o->t[i].grad, o->t[i].m, o->t[i].v, (size_t)o->t[i].numel);
    }
}

double mt_schedule_lr(const mt_recipe *r, int64_t step, int64_t total, int64_t warmup) {
    double peak = r->train.lr;
    if (step < warmup) return peak * (double)(step + 1) / (double)warmup;
    if (r->train.schedule == MT_RECIPE_SCHEDULE_CONSTANT) return peak;
    double floor = peak * r->train.min_lr_ratio;
    int64_t span = total - warmup;
    double progress = span > 0 ? (double)(step - warmup) / (double)span : 1.0;
    if (progress > 1) progress = 1;
    if (r->train.schedule == MT_RECIPE_SCHEDULE_LINEAR) return floor + (peak - floor) * (1.0 - progress);
    return floor + (peak - floor) * 0.5 * (1.0 + cos(M_PI * progress));
}
