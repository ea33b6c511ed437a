/* kvpool.c — the paged KV cache: one allocation of fixed-size blocks for every layer, a free
 * list, a block table and a length per sequence, reference counts that let forked sequences
 * share a prompt's blocks until one of them writes (copy-on-write). Writing rows into the
 * blocks is the decoder's job (decoder.c); this file only hands blocks out and takes them
 * back, and never fails halfway: a request that cannot be met changes nothing. */
#include <stdlib.h>
#include <string.h>

#include "model-impl.h"

static int kv_row_floats(const mt_model *m) {
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    return m->cfg.mla ? d.kva_dim : 2 * d.kv_dim;
}

mt_status mt_kv_pool_init(mt_kv_pool **out, const mt_model *m, const mt_kv_pool_opts *o, mt_error *err) {
    *out = NULL;
    mt_status st = mt_model_check_backend(m, err);
    if (st) return st;
    int bs = o->block_size > 0 ? o->block_size : 16;
    int max_len = o->max_seq_len > 0 ? o->max_seq_len : m->rope_len;
    if (max_len > m->rope_len)
        return mt_error_set(err, MT_ERR_INVALID, "kv pool: max_seq_len %d exceeds max_position_embeddings %d", max_len,
                            m->rope_len);
    if (o->n_blocks < 1 || o->max_seqs < 1 || bs > 4096)
        return mt_error_set(err, MT_ERR_INVALID, "kv pool: needs at least one block and one sequence (got %d, %d), "
                            "block_size at most 4096 (got %d)", o->n_blocks, o->max_seqs, bs);
    const mt_config *cfg = &m->cfg;
    size_t row = (size_t)kv_row_floats(m);
    size_t floats = (size_t)cfg->n_layers * (size_t)o->n_blocks * (size_t)bs * row;
    if (floats / row / (size_t)bs / (size_t)cfg->n_layers != (size_t)o->n_blocks || floats > SIZE_MAX / sizeof(float))
        return mt_error_set(err, MT_ERR_INVALID, "kv pool: %d blocks of %d positions overflow the address space",
                            o->n_blocks, bs);
    mt_kv_pool *p = mt_xcalloc(1, sizeof *p);
    p->m = m;
    p->block_size = bs;
    p->n_blocks = o->n_blocks;
    p->max_seqs = o->max_seqs;
    p->max_seq_len = max_len;
    p->max_blocks = (max_len + bs - 1) / bs;
    p->kv_row = (int)row;
    p->bytes = floats * sizeof(float);
    p->data = mt_backend_alloc(m->be, p->bytes);
    if (!p->data) {
        double mb = (double)p->bytes / 1e6;
        free(p);
        return mt_error_set(err, MT_ERR_NOMEM, "kv pool: cannot allocate %.1f MB for %d blocks of %d positions", mb,
                            o->n_blocks, bs);
    }
    p->refs = mt_xcalloc((size_t)p->n_blocks, sizeof(int32_t));
    p->free_list = mt_xmalloc((size_t)p->n_blocks * sizeof(int32_t));
    /* lowest block ids first: a fresh pool fills from the start of its memory */
    for (int b = 0; b < p->n_blocks; b++) p->free_list[b] = p->n_blocks - 1 - b;
    p->n_free = p->n_blocks;
    p->tables = mt_xcalloc((size_t)p->max_seqs * (size_t)p->max_blocks, sizeof(int32_t));
    p->len = mt_xmalloc((size_t)p->max_seqs * sizeof(int32_t));
    for (int s = 0; s < p->max_seqs; s++) p->len[s] = -1;
    if (mt_backend_get_kind(m->be) == MT_BACKEND_CPU) {
        /* DAP summaries: standard attention bounds each KV head's post-RoPE K; MLA's absorbed
         * decode scores q_abs·[c | k_pe], one shared key head of kvl + rope channels */
        mt_dims d;
        mt_model_dims(cfg, &d);
        p->ks_heads = cfg->mla ? 1 : d.nkv;
        p->ks_dim = cfg->mla ? d.kva_dim : d.hd;
        p->ks_off = 0;
        p->ks_head = cfg->mla ? 0 : d.hd;
        p->ksum = mt_xmalloc((size_t)cfg->n_layers * (size_t)p->n_blocks * (size_t)p->ks_heads * 2u *
                             (size_t)p->ks_dim * sizeof(float));
    }
    *out = p;
    return MT_OK;
}

void mt_kv_pool_free(mt_kv_pool *p) {
    if (!p) return;
    if (p->data) mt_backend_release(p->m->be, p->data);
    free(p->refs);
    free(p->free_list);
    free(p->tables);
    free(p->len);
    free(p->ksum);
    free(p);
}

static float *ksum_at(const mt_kv_pool *p, int l, int32_t blk) {
    return p->ksum + ((size_t)l * p->n_blocks + (size_t)blk) * (size_t)p->ks_heads * 2u * (size_t)p->ks_dim;
}

void mt_kv_pool_note_key(mt_kv_pool *p, int l, int seq, int pos) {
    if (!p->ksum) return;
    int32_t blk = p->tables[(size_t)seq * p->max_blocks + pos / p->block_size];
    const float *row = mt_kv_pool_row(p, l, seq, pos) + p->ks_off;
    float *sum = ksum_at(p, l, blk);
    int D = p->ks_dim;
    bool first = pos % p->block_size == 0; /* a block's first row starts its summary afresh */
    for (int g = 0; g < p->ks_heads; g++) {
        const float *k = row + (size_t)g * p->ks_head;
        float *kmin = sum + (size_t)g * 2 * D, *kmax = kmin + D;
        if (first) {
            memcpy(kmin, k, (size_t)D * sizeof(float));
            memcpy(kmax, k, (size_t)D * sizeof(float));
            continue;
        }
        for (int i = 0; i < D; i++) {
            if (k[i] < kmin[i]) kmin[i] = k[i];
            if (k[i] > kmax[i]) kmax[i] = k[i];
        }
    }
}

size_t mt_kv_pool_bytes(const mt_kv_pool *p) { return p->bytes; }
int mt_kv_pool_block_size(const mt_kv_pool *p) { return p->block_size; }
int mt_kv_pool_blocks_total(const mt_kv_pool *p) { return p->n_blocks; }
int mt_kv_pool_blocks_free(const mt_kv_pool *p) { return p->n_free; }
int mt_kv_pool_seqs_open(const mt_kv_pool *p) { return p->n_open; }

float *mt_kv_pool_layer(const mt_kv_pool *p, int l) {
    return p->data + (size_t)l * p->n_blocks * p->block_size * p->kv_row;
}

float *mt_kv_pool_row(const mt_kv_pool *p, int l, int seq, int pos) {
    int32_t blk = p->tables[(size_t)seq * p->max_blocks + pos / p->block_size];
    return mt_kv_pool_layer(p, l) + ((size_t)blk * p->block_size + (size_t)(pos % p->block_size)) * p->kv_row;
}

static bool seq_ok(const mt_kv_pool *p, int seq) { return seq >= 0 && seq < p->max_seqs && p->len[seq] >= 0; }

int mt_kv_seq_len(const mt_kv_pool *p, int seq) { return seq_ok(p, seq) ? p->len[seq] : -1; }

static int take_slot(mt_kv_pool *p) {
    for (int s = 0; s < p->max_seqs; s++)
        if (p->len[s] < 0) return s;
    return -1;
}

mt_status mt_kv_seq_open(mt_kv_pool *p, int *seq, mt_error *err) {
    int s = take_slot(p);
    if (s < 0) return mt_error_set(err, MT_ERR_EXHAUSTED, "kv pool: all %d sequences are open", p->max_seqs);
    p->len[s] = 0;
    p->n_open++;
    *seq = s;
    return MT_OK;
}

mt_status mt_kv_seq_fork(mt_kv_pool *p, int src, int *seq, mt_error *err) {
    if (!seq_ok(p, src)) return mt_error_set(err, MT_ERR_INVALID, "kv pool: fork of sequence %d, which is not open", src);
    int s = take_slot(p);
    if (s < 0) return mt_error_set(err, MT_ERR_EXHAUSTED, "kv pool: all %d sequences are open", p->max_seqs);
    int nb = (p->len[src] + p->block_size - 1) / p->block_size;
    memcpy(p->tables + (size_t)s * p->max_blocks, p->tables + (size_t)src * p->max_blocks, (size_t)nb * sizeof(int32_t));
    for (int i = 0; i < nb; i++) p->refs[p->tables[(size_t)s * p->max_blocks + i]]++;
    p->len[s] = p->len[src];
    p->n_open++;
    *seq = s;
    return MT_OK;
}

static void drop_block(mt_kv_pool *p, int32_t b) {
    MT_ASSERT(p->refs[b] > 0);
    if (--p->refs[b] == 0) p->free_list[p->n_free++] = b;
}

void mt_kv_seq_close(mt_kv_pool *p, int seq) {
    if (!seq_ok(p, seq)) return;
    int nb = (p->len[seq] + p->block_size - 1) / p->block_size;
    for (int i = 0; i < nb; i++) drop_block(p, p->tables[(size_t)seq * p->max_blocks + i]);
    p->len[seq] = -1;
    p->n_open--;
}

int mt_kv_seq_blocks_needed(const mt_kv_pool *p, int seq, int n) {
    if (!seq_ok(p, seq) || n <= 0) return 0;
    int len = p->len[seq], bs = p->block_size;
    int have = (len + bs - 1) / bs, want = (len + n + bs - 1) / bs;
    int need = want - have;
    /* appending into a partly filled block that another sequence shares copies it first */
    if (len % bs != 0 && p->refs[p->tables[(size_t)seq * p->max_blocks + have - 1]] > 1) need++;
    return need;
}

/* Makes room for positions len .. len+n−1 of seq: copies a shared partly filled last block
 * and takes new blocks. The caller has checked that enough blocks are free. */
void mt_kv_seq_reserve(mt_kv_pool *p, int seq, int n) {
    int len = p->len[seq], bs = p->block_size;
    int32_t *table = p->tables + (size_t)seq * p->max_blocks;
    int have = (len + bs - 1) / bs, want = (len + n + bs - 1) / bs;
    if (len % bs != 0 && p->refs[table[have - 1]] > 1) {
        MT_ASSERT(p->n_free > 0);
        int32_t old = table[have - 1], fresh = p->free_list[--p->n_free];
        size_t rows = (size_t)(len % bs) * p->kv_row;
        for (int l = 0; l < p->m->cfg.n_layers; l++) {
            float *base = mt_kv_pool_layer(p, l);
            mt_backend_copy(p->m->be, base + (size_t)fresh * bs * p->kv_row, base + (size_t)old * bs * p->kv_row,
                            rows * sizeof(float));
            /* a shared block is never written in place, so its summary is that of the rows copied */
            if (p->ksum)
                memcpy(ksum_at(p, l, fresh), ksum_at(p, l, old),
                       (size_t)p->ks_heads * 2u * (size_t)p->ks_dim * sizeof(float));
        }
        p->refs[fresh] = 1;
        p->refs[old]--;
        table[have - 1] = fresh;
    }
    for (int i = have; i < want; i++) {
        MT_ASSERT(p->n_free > 0);
        int32_t b = p->free_list[--p->n_free];
        p->refs[b] = 1;
        table[i] = b;
    }
}
