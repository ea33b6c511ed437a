/* batch.c — micro-batches cut from rows, and the held-out loss of a model over a row set. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train-impl.h"

void mt_batch_buf_init(mt_batch_buf *b, int B, int T) {
    size_t n = (size_t)B * (size_t)T;
    b->B = B;
    b->T = T;
    b->tokens = mt_xcalloc(n, sizeof(int32_t));
    b->targets = mt_xcalloc(n, sizeof(int32_t));
    b->pos = mt_xcalloc(n, sizeof(int32_t));
    b->kv_start = mt_xcalloc(n, sizeof(int32_t));
    b->dloss = mt_xcalloc(n, sizeof(float));
}

void mt_batch_buf_free(mt_batch_buf *b) {
    free(b->tokens);
    free(b->targets);
    free(b->pos);
    free(b->kv_start);
    free(b->dloss);
    memset(b, 0, sizeof *b);
}

void mt_batch_buf_fill(mt_batch_buf *b, const mt_rows *rows, const int64_t *idx, int n) {
    MT_ASSERT(rows->T == b->T && n <= b->B);
    size_t T = (size_t)b->T;
    for (int i = 0; i < b->B; i++) {
        size_t o = (size_t)i * T;
        if (i < n) {
            size_t s = (size_t)idx[i] * T;
            memcpy(b->tokens + o, rows->tokens + s, T * sizeof(int32_t));
            memcpy(b->targets + o, rows->targets + s, T * sizeof(int32_t));
            memcpy(b->pos + o, rows->pos + s, T * sizeof(int32_t));
            memcpy(b->kv_start + o, rows->kv_start + s, T * sizeof(int32_t));
        } else {
            for (size_t t = 0; t < T; t++) {
                b->tokens[o + t] = 0;
                b->targets[o + t] = MT_IGNORE_INDEX;
                b->pos[o + t] = (int32_t)t;
                b->kv_start[o + t] = 0;
            }
        }
    }
}

mt_batch mt_batch_buf_view(const mt_batch_buf *b) {
    return (mt_batch){.B = b->B,
                      .T = b->T,
                      .tokens = b->tokens,
                      .targets = b->targets,
                      .pos = b->pos,
                      .kv_start = b->kv_start};
}

mt_status mt_eval_rows(mt_model *m, mt_workspace *ws, mt_batch_buf *buf, const mt_rows *rows,
                       const mt_adapter *adapter, double *loss,
                       int64_t *n_tokens, mt_error *err) {
    double sum = 0;
    int64_t count = 0;
    int64_t *idx = mt_xcalloc((size_t)buf->B, sizeof *idx);
    mt_forward_opts fo = {.train = false, .adapter = adapter};
    mt_status st = MT_OK;
    for (int64_t r = 0; r < rows->n_rows && st == MT_OK; r += buf->B) {
        int n = 0;
        for (; n < buf->B && r + n < rows->n_rows; n++) idx[n] = r + n;
        mt_batch_buf_fill(buf, rows, idx, n);
        mt_batch batch = mt_batch_buf_view(buf);
        mt_forward_result res;
        st = mt_model_forward(m, ws, &batch, &fo, &res, err);
        if (st == MT_OK) {
            sum += res.loss_sum;
            count += res.n_tokens;
        }
    }
    free(idx);
    if (st != MT_OK) return st;
    *loss = count ? sum / (double)count : NAN;
    if (n_tokens) *n_tokens = count;
    return MT_OK;
}
