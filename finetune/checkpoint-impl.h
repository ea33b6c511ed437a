/* checkpoint-impl.h — what a training checkpoint holds and how it is written so that a crash
 * at any moment leaves either the previous checkpoint or the new one, never a torn one. */
#ifndef MT_FINETUNE_CHECKPOINT_IMPL_H
#define MT_FINETUNE_CHECKPOINT_IMPL_H

#include <stdint.h>

#include "optim-impl.h"

/* Every piece of state the loop needs to continue exactly as the uninterrupted run would.
 * Randomness (shuffling, dropout masks, router noise) is counter-based on (seed, epoch, step),
 * so the step and the data position are the whole random state. */
typedef struct mt_ckpt_state {
    int64_t step;         /* optimizer steps taken (applied or skipped) */
    int64_t optim_step;   /* AdamW updates applied (its bias-correction counter) */
    int64_t epoch;        /* data epoch of the next micro-batch */
    int64_t cursor;       /* next row of that epoch's order */
    int64_t tokens_seen;  /* input tokens processed */
    int64_t nan_streak;   /* consecutive non-finite steps */
    int64_t run_id;       /* the store's run this checkpoint belongs to */
    int threads;          /* CPU threads: GEMM bits depend on it, so a resume must match */
    int ranks;            /* data-parallel ranks (their sums' order is in the bits too); 1 when
                           * a checkpoint predates the field */
    double dap_threshold; /* as computed from the data at the start of the run */
    double mean_entropy;
    char recipe_sha256[65];
} mt_ckpt_state;

/* Writes <dir>/checkpoints/step-NNNNNNNN/ (trainable tensors with their AdamW moments in
 * state.safetensors, the rest in trainer_state.json) through a temporary folder renamed into
 * place, then deletes the oldest checkpoints beyond keep (0 = keep all). */
mt_status mt_ckpt_save(const char *dir, const mt_optim *o, const mt_ckpt_state *s, int keep, char *saved_path,
                       size_t cap, mt_error *err);
/* Finds the newest complete checkpoint under <dir>/checkpoints. MT_ERR_NOT_FOUND if none. */
mt_status mt_ckpt_find_latest(const char *dir, char *path, size_t cap, mt_error *err);
/* Restores tensor values and moments into o (names and sizes must match) and the state. */
mt_status mt_ckpt_load(const char *path, mt_optim *o, mt_ckpt_state *s, mt_error *err);

#endif
