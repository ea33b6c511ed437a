/* pairs-impl.h — preference pairs as the trainer consumes them: read from the store's pair
 * datasets or straight from TRL JSONL files, tokenized the way TRL's DPOTrainer does, truncated,
 * and laid out as two rows per pair (chosen, rejected) that the model's batches take. */
#ifndef MT_FINETUNE_PAIRS_IMPL_H
#define MT_FINETUNE_PAIRS_IMPL_H

#include "run-impl.h"

typedef struct mt_pair_set {
    int64_t n;          /* pairs */
    char (*hash)[65];   /* [n] content hashes (the reference cache's key) */
    /* [2n] rows of T positions: row 2i is pair i's prompt + chosen, 2i+1 prompt + rejected.
     * Targets are the completion tokens (for ORPO's chosen rows the whole sequence: its NLL
     * term covers the prompt as well). */
    mt_rows rows;
    uint8_t *cmask;     /* [2n·T] 1 where the target is a completion token (what log-probs sum) */
    float *clen;        /* [2n] completion tokens kept */
    int64_t n_truncated; /* pairs whose prompt or completion was cut */
    double *score;      /* [n] the pair's score, NaN when none (a reward margin) */
} mt_pair_set;

void mt_pair_set_free(mt_pair_set *s);

/* The run's pairs: from data.pairs (the store's dataset, its train or eval split) or from the
 * data.train / data.eval files (eval: data.eval, else data.eval_split of the pairs by hash).
 * full_chosen_targets: targets over the whole chosen row (ORPO). */
mt_status mt_pairs_load_run(const mt_run *run, bool eval, bool full_chosen_targets, mt_pair_set *out,
                            mt_error *err);

/* One batch of pairs pidx[0..n) of s (n <= B) in buf (2B rows): rows 0..B−1 the chosen
 * sequences, B..2B−1 the rejected ones, the rest padding; rowidx [2B] gets each batch row's row
 * of s (−1 for padding). */
void mt_pairs_fill_batch(mt_batch_buf *buf, const mt_pair_set *s, const int64_t *pidx, int n, int B, int64_t *rowidx);

/* A prompt as TRL's trainers tokenize it: a string with the tokenizer's special tokens, a
 * message list (JSON text) rendered by the chat template with a generation prompt. */
mt_status mt_prompt_encode(const mt_tokenizer *tok, const char *prompt, bool conversational, const char *where,
                           int32_t **ids, size_t *n, mt_error *err);

/* The truncation settings as the reference cache keys them. */
void mt_pairs_truncation_key(const mt_recipe *r, int T, char *out, size_t cap);

#endif
