/* train-impl.h — pieces of the trainer shared between the training loop, evaluation and the
 * benchmark: batches cut from rows, and the loss of a model over a set of rows. */
#ifndef MT_FINETUNE_TRAIN_IMPL_H
#define MT_FINETUNE_TRAIN_IMPL_H

#include "data-impl.h"

/* Host buffers of one micro-batch, filled from rows. */
typedef struct mt_batch_buf {
    int B, T;
    int32_t *tokens, *targets, *pos, *kv_start; /* [B·T] */
    float *dloss;                               /* [B·T] ∂L/∂(token loss) */
} mt_batch_buf;

void mt_batch_buf_init(mt_batch_buf *b, int B, int T);
void mt_batch_buf_free(mt_batch_buf *b);
/* Copies rows idx[0..n) (n ≤ B) into the batch; missing rows become padding without targets. */
void mt_batch_buf_fill(mt_batch_buf *b, const mt_rows *rows, const int64_t *idx, int n);
mt_batch mt_batch_buf_view(const mt_batch_buf *b);

/* Mean cross-entropy of the model over every row (in micro-batches of ws's B), i.e. the
 * held-out loss; perplexity is its exp. */
mt_status mt_eval_rows(mt_model *m, mt_workspace *ws, mt_batch_buf *buf, const mt_rows *rows,
                       const mt_adapter *adapter, double *loss,
                       int64_t *n_tokens, mt_error *err);

#endif
