/* optim-impl.h — AdamW over the trainable tensors of a run (LoRA factors or every base weight),
 * the learning-rate schedule, and global-norm clipping. Moments live beside each tensor so
 * that checkpoints can save and restore them exactly. */
#ifndef MT_FINETUNE_OPTIM_IMPL_H
#define MT_FINETUNE_OPTIM_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "finetune.h"
#include "kernels/kernels.h"

typedef struct mt_trainable {
    const char *name; /* as saved in checkpoints: the adapter's or the model's tensor name */
    float *data;      /* [numel] */
    float *grad;      /* [numel] */
    float *m, *v;     /* [numel] AdamW moments, owned by the optimiser */
    int64_t numel;
    bool decay;       /* weight decay applies (matrices; not norms, biases or vectors) */
    double lr_scale;  /* its parameter group's learning rate as a ratio of the schedule's (0 = 1) */
} mt_trainable;

typedef struct mt_optim {
    mt_backend *be;
    mt_trainable *t; /* [n] */
    int n;
    int64_t n_params;
    int64_t step;    /* optimizer updates applied so far */
} mt_optim;

/* Takes the list (names are borrowed), allocating zeroed moments for each tensor. */
mt_status mt_optim_init(mt_optim *o, mt_backend *be, const mt_trainable *t, int n, mt_error *err);
void mt_optim_free(mt_optim *o);
void mt_optim_zero_grad(mt_optim *o);
/* √Σ g² over every trainable tensor, in double precision. */
double mt_optim_grad_norm(const mt_optim *o);
/* Scales every gradient by s (clipping). */
void mt_optim_scale_grad(mt_optim *o, float s);
struct mt_dist;
/* Sums every gradient over the job's ranks in place: the tensors packed one after another into
 * bucket[0..cap) and all-reduced a full bucket at a time (one all-reduce per step for LoRA), so
 * the latency is paid per bucket rather than per tensor. Gradients are host memory (CPU). */
mt_status mt_optim_allreduce_grad(mt_optim *o, struct mt_dist *d, float *bucket, size_t cap, mt_error *err);
/* One AdamW update with learning rate lr; increments o->step first (1-based bias correction). */
void mt_optim_step(mt_optim *o, const mt_recipe *r, double lr);

/* Learning rate at optimizer step `step` (0-based, the update about to be applied) of
 * `total`: linear warmup from lr/warmup to lr over warmup steps (as transformers'
 * get_*_schedule_with_warmup do), then cosine or linear decay to lr·min_lr_ratio, or constant. */
double mt_schedule_lr(const mt_recipe *r, int64_t step, int64_t total, int64_t warmup);

#endif
