/* kvcache.c — the single-sequence cache of model.h (a pool holding one sequence, plus a
 * decoder), for callers that decode one text at a time: evaluation, tests, the simple
 * generate path. Everything runs through the batched paged decode step. */
#include <stdlib.h>

#include "model-impl.h"

#define CACHE_BLOCK 16
#define CACHE_ROWS 256

mt_status mt_kv_cache_init(mt_kv_cache **out, mt_model *m, int max_seq, mt_error *err) {
    *out = NULL;
    if (max_seq <= 0 || max_seq > m->rope_len)
        return mt_error_set(err, MT_ERR_INVALID, "kv cache: length %d must be in [1, max_position_embeddings = %d]",
                            max_seq, m->rope_len);
    mt_kv_cache *c = mt_xcalloc(1, sizeof *c);
    c->m = m;
    c->max_seq = max_seq;
    mt_kv_pool_opts po = {.block_size = CACHE_BLOCK,
                          .n_blocks = (max_seq + CACHE_BLOCK - 1) / CACHE_BLOCK,
                          .max_seqs = 1,
                          .max_seq_len = max_seq};
    mt_status st = mt_kv_pool_init(&c->pool, m, &po, err);
    if (!st) st = mt_decoder_init(&c->dec, m, max_seq < CACHE_ROWS ? max_seq : CACHE_ROWS, 0, err);
    if (!st) st = mt_kv_seq_open(c->pool, &c->seq, err);
    if (st) {
        mt_kv_cache_free(c);
        return st;
    }
    *out = c;
    return MT_OK;
}

void mt_kv_cache_free(mt_kv_cache *c) {
    if (!c) return;
    mt_decoder_free(c->dec);
    mt_kv_pool_free(c->pool);
    free(c);
}

void mt_kv_cache_reset(mt_kv_cache *c) {
    mt_kv_seq_close(c->pool, c->seq);
    mt_status st = mt_kv_seq_open(c->pool, &c->seq, NULL);
    MT_ASSERT(st == MT_OK); /* the one slot was just freed */
}

int mt_kv_cache_len(const mt_kv_cache *c) { return mt_kv_seq_len(c->pool, c->seq); }
size_t mt_kv_cache_bytes(const mt_kv_cache *c) { return mt_kv_pool_bytes(c->pool) + mt_decoder_bytes(c->dec); }

mt_status mt_kv_cache_set_adapter(mt_kv_cache *c, const mt_adapter *a, mt_error *err) {
    mt_status st = mt_adapter_check(c->m, a, c->dec->max_rank, "kv cache", err);
    if (st) return st;
    c->adapter = a;
    return MT_OK;
}

mt_status mt_model_decode(mt_model *m, mt_kv_cache *c, const int32_t *tokens, int n, float *logits, mt_error *err) {
    if (c->m != m) return mt_error_set(err, MT_ERR_INVALID, "decode: the cache belongs to another model");
    if (n <= 0 || !tokens) return mt_error_set(err, MT_ERR_INVALID, "decode: no tokens");
    int len = mt_kv_cache_len(c);
    if (n > c->max_seq - len)
        return mt_error_set(err, MT_ERR_INVALID, "decode: %d more tokens do not fit the cache (%d of %d used)", n, len,
                            c->max_seq);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
            return mt_error_set(err, MT_ERR_INVALID, "decode: token %d at %d is outside the vocabulary (%d)", tokens[i],
                                i, m->cfg.vocab_size);
    int rows = mt_decoder_max_rows(c->dec);
    int32_t *seq = mt_xmalloc((size_t)rows * sizeof(int32_t));
    for (int i = 0; i < rows; i++) seq[i] = c->seq;
    mt_status st = MT_OK;
    for (int done = 0; done < n && !st;) {
        int r = n - done < rows ? n - done : rows;
        int32_t last = r - 1;
        bool final = done + r == n && logits;
        mt_decode_batch b = {.n_rows = r,
                             .tokens = tokens + done,
                             .seq = seq,
                             .adapters = &c->adapter,
                             .n_slots = c->adapter ? 1 : 0,
                             .logit_rows = final ? &last : NULL,
                             .n_logits = final ? 1 : 0};
        st = mt_decode_step(c->dec, c->pool, &b, final ? logits : NULL, err);
        done += r;
    }
    free(seq);
    return st;
}
