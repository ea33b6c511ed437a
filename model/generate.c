/* generate.c — text generation for a batch of prompts on the paged KV cache: every prompt is
 * prefilled once (chunks of several prompts share a step), its samples fork its blocks, then
 * each step decodes one token for every live output, each with its prompt's adapter, until
 * EOS, a stop string, the token budget or a full sequence. Text streams through a per-output
 * incremental detokenizer that holds back possible stop strings. */
#include <stdlib.h>
#include <string.h>

#include "model-impl.h"

#define GEN_BLOCK 16

static bool is_eos(const mt_model *m, const mt_tokenizer *tok, int32_t id) {
    for (int i = 0; i < m->cfg.n_eos; i++)
        if (m->cfg.eos_token_ids[i] == id) return true;
    return tok && mt_tokenizer_eos_id(tok) == id;
}

void mt_generate_result_free(mt_generate_result *r) {
    if (!r) return;
    free(r->text);
    r->text = NULL;
}

/* One output being generated. */
typedef struct gen_out {
    int prompt;
    int seq;
    mt_rng rng;
    mt_detok *detok;
    float *logits;       /* [V] next-token logits */
    int n_new;
    bool done, user_stop;
    const char *finish;
} gen_out;

typedef struct gen {
    mt_model *m;
    const mt_tokenizer *tok;
    const mt_generate_opts *o;
    mt_kv_pool *pool;
    mt_decoder *dec;
    int n_prompts, n_out, V;
    int32_t **ids;
    size_t *n_ids;
    int *prompt_seq;
    gen_out *out;
    const mt_adapter **slots; /* [n_prompts]: slot i is prompt i's adapter */
    int32_t *tokens, *seq, *slot, *logit_rows; /* step rows */
    float *tau;               /* [rows] DAP threshold of each row, prompt and decode */
    float *prompt_tau;        /* [n_prompts] */
    bool tau_on;              /* DAP on: pass tau to every step */
    float *logits;            /* [rows, V] */
} gen;

static void gen_free(gen *g) {
    for (int i = 0; g->ids && i < g->n_prompts; i++) free(g->ids[i]);
    for (int i = 0; g->out && i < g->n_out; i++) {
        mt_detok_free(g->out[i].detok);
        free(g->out[i].logits);
    }
    free(g->ids);
    free(g->n_ids);
    free(g->prompt_seq);
    free(g->out);
    free(g->slots);
    free(g->tokens);
    free(g->seq);
    free(g->slot);
    free(g->logit_rows);
    free(g->tau);
    free(g->prompt_tau);
    free(g->logits);
    mt_decoder_free(g->dec);
    mt_kv_pool_free(g->pool);
}

static mt_status encode_prompts(gen *g, const mt_gen_prompt *prompts, mt_error *err) {
    for (int i = 0; i < g->n_prompts; i++) {
        const char *text = prompts[i].text ? prompts[i].text : "";
        mt_status st = mt_tokenizer_encode(g->tok, text, strlen(text), true, &g->ids[i], &g->n_ids[i], err);
        if (st) return st;
        if (g->n_ids[i] == 0) {
            int32_t bos = mt_tokenizer_bos_id(g->tok) >= 0 ? mt_tokenizer_bos_id(g->tok) : g->m->cfg.bos_token_id;
            if (bos < 0)
                return mt_error_set(err, MT_ERR_INVALID, "generate: prompt %d is empty and there is no BOS token", i);
            free(g->ids[i]);
            g->ids[i] = mt_xmalloc(sizeof(int32_t));
            g->ids[i][0] = bos;
            g->n_ids[i] = 1;
        }
        if ((long)g->n_ids[i] >= g->m->rope_len)
            return mt_error_set(err, MT_ERR_INVALID, "generate: prompt %d has %zu tokens, the model holds %d", i,
                                g->n_ids[i], g->m->rope_len);
    }
    return MT_OK;
}

/* Prefills every prompt, packing chunks of several prompts into each step; the last row of a
 * prompt asks for its logits, which seed each of its outputs. */
static mt_status prefill(gen *g, float *first_logits, mt_error *err) {
    int rows = mt_decoder_max_rows(g->dec);
    int p = 0;
    size_t off = 0;
    while (p < g->n_prompts) {
        int n = 0, nl = 0;
        while (n < rows && p < g->n_prompts) {
            g->tokens[n] = g->ids[p][off];
            g->seq[n] = g->prompt_seq[p];
            g->slot[n] = p;
            g->tau[n] = g->prompt_tau[p];
            n++;
            if (++off == g->n_ids[p]) {
                g->logit_rows[nl++] = n - 1;
                p++;
                off = 0;
            }
        }
        mt_decode_batch b = {.n_rows = n,
                             .tokens = g->tokens,
                             .seq = g->seq,
                             .slot = g->slot,
                             .adapters = g->slots,
                             .n_slots = g->n_prompts,
                             .logit_rows = g->logit_rows,
                             .n_logits = nl,
                             .dap_threshold = g->tau_on ? g->tau : NULL};
        mt_status st = mt_decode_step(g->dec, g->pool, &b, g->logits, err);
        if (st) return st;
        /* the prompts that finished in this step are the nl before p, in order */
        for (int q = 0; q < nl; q++)
            memcpy(first_logits + (size_t)(p - nl + q) * g->V, g->logits + (size_t)q * g->V, (size_t)g->V * sizeof(float));
    }
    return MT_OK;
}

static void emit(gen *g, int i, const char *text, size_t len) {
    gen_out *go = &g->out[i];
    if (!len || !g->o->on_text || go->user_stop) return;
    if (!g->o->on_text(g->o->user, i, text, len)) go->user_stop = true;
}

/* Samples the next token of output i from its logits and feeds the detokenizer; returns the
 * token, or −1 when the output has finished. */
static int32_t next_token(gen *g, int i) {
    gen_out *go = &g->out[i];
    const mt_generate_opts *o = g->o;
    int32_t id = mt_sample(&o->sample, go->logits, g->V, &go->rng);
    if (o->stop_at_eos && is_eos(g->m, g->tok, id)) {
        go->finish = "eos";
        return -1;
    }
    go->n_new++;
    const char *text;
    size_t len;
    int stop = mt_detok_push(go->detok, id, &text, &len);
    emit(g, i, text, len);
    if (stop >= 0 || go->user_stop) {
        go->finish = "stop";
        return -1;
    }
    if (go->n_new >= o->max_new_tokens) {
        go->finish = "length";
        return -1;
    }
    if (mt_kv_seq_len(g->pool, go->seq) + 1 > g->pool->max_seq_len) {
        go->finish = "length";
        return -1;
    }
    return id;
}

mt_status mt_generate(mt_model *m, const mt_tokenizer *tok, const mt_gen_prompt *prompts, int n_prompts,
                      const mt_generate_opts *o, mt_generate_result *res, mt_error *err) {
    if (n_prompts < 1 || !prompts) return mt_error_set(err, MT_ERR_INVALID, "generate: no prompts");
    if (o->max_new_tokens < 1) return mt_error_set(err, MT_ERR_INVALID, "generate: max_new_tokens must be at least 1");
    gen g = {.m = m, .tok = tok, .o = o, .n_prompts = n_prompts, .V = m->cfg.vocab_size};
    int max_rank = 0;
    for (int i = 0; i < n_prompts; i++) {
        if (prompts[i].n < 0) return mt_error_set(err, MT_ERR_INVALID, "generate: prompt %d asks for %d samples", i, prompts[i].n);
        g.n_out += prompts[i].n > 0 ? prompts[i].n : 1;
        if (prompts[i].adapter && prompts[i].adapter->max_rank > max_rank) max_rank = prompts[i].adapter->max_rank;
    }
    memset(res, 0, (size_t)g.n_out * sizeof *res);
    g.ids = mt_xcalloc((size_t)n_prompts, sizeof *g.ids);
    g.n_ids = mt_xcalloc((size_t)n_prompts, sizeof *g.n_ids);
    g.prompt_seq = mt_xcalloc((size_t)n_prompts, sizeof *g.prompt_seq);
    g.out = mt_xcalloc((size_t)g.n_out, sizeof *g.out);
    g.slots = mt_xcalloc((size_t)n_prompts, sizeof *g.slots);
    for (int i = 0; i < n_prompts; i++) g.slots[i] = prompts[i].adapter;
    mt_status st = encode_prompts(&g, prompts, err);
    if (st) goto done;

    size_t longest = 0;
    int blocks = 0;
    for (int i = 0, j = 0; i < n_prompts; i++) {
        int n = prompts[i].n > 0 ? prompts[i].n : 1;
        size_t len = g.n_ids[i];
        if (len > longest) longest = len;
        /* the prompt's blocks once, then each output's own blocks from its first copied one */
        int total = (int)((len + (size_t)o->max_new_tokens + GEN_BLOCK - 1) / GEN_BLOCK);
        blocks += (int)((len + GEN_BLOCK - 1) / GEN_BLOCK) + n * (total - (int)(len / GEN_BLOCK));
        for (int k = 0; k < n; k++, j++) g.out[j].prompt = i;
    }
    long max_len = (long)longest + o->max_new_tokens;
    if (max_len > m->rope_len) max_len = m->rope_len;
    mt_kv_pool_opts po = {.block_size = GEN_BLOCK, .n_blocks = blocks, .max_seqs = n_prompts + g.n_out,
                          .max_seq_len = (int)max_len};
    st = mt_kv_pool_init(&g.pool, m, &po, err);
    int rows = g.n_out > 256 ? g.n_out : 256;
    if (!st) st = mt_decoder_init(&g.dec, m, rows, max_rank, err);
    if (st) goto done;
    g.tokens = mt_xmalloc((size_t)rows * sizeof(int32_t));
    g.seq = mt_xmalloc((size_t)rows * sizeof(int32_t));
    g.slot = mt_xmalloc((size_t)rows * sizeof(int32_t));
    g.logit_rows = mt_xmalloc((size_t)rows * sizeof(int32_t));
    g.tau = mt_xmalloc((size_t)rows * sizeof(float));
    /* each prompt's τ: its own, else the options'; DAP runs when any is above 0 */
    g.prompt_tau = mt_xmalloc((size_t)n_prompts * sizeof(float));
    bool dap = false;
    for (int i = 0; i < n_prompts; i++) {
        g.prompt_tau[i] = prompts[i].dap_own ? prompts[i].dap_threshold : o->dap ? o->dap->threshold : 0.0f;
        dap |= g.prompt_tau[i] > 0;
    }
    g.tau_on = dap;
    mt_dap_opts dopt = o->dap ? *o->dap : (mt_dap_opts){.n_sink_blocks = 1, .n_local_blocks = 1, .mass_floor = 0.9f};
    if (dap) mt_decoder_set_dap(g.dec, &dopt);
    g.logits = mt_xmalloc((size_t)rows * (size_t)g.V * sizeof(float));
    for (int i = 0; i < n_prompts && !st; i++) st = mt_kv_seq_open(g.pool, &g.prompt_seq[i], err);
    if (st) goto done;

    float *first = mt_xmalloc((size_t)n_prompts * (size_t)g.V * sizeof(float));
    double t0 = mt_now_seconds();
    st = prefill(&g, first, err);
    double t1 = mt_now_seconds();
    for (int j = 0, k = 0; !st && j < g.n_out; j++) {
        gen_out *go = &g.out[j];
        k = j > 0 && g.out[j - 1].prompt == go->prompt ? k + 1 : 0;
        mt_rng_seed(&go->rng, o->sample.seed + (uint64_t)k);
        st = mt_kv_seq_fork(g.pool, g.prompt_seq[go->prompt], &go->seq, err);
        if (!st) st = mt_detok_init(&go->detok, tok, true, o->stop, o->n_stop, err);
        go->logits = mt_xmalloc((size_t)g.V * sizeof(float));
        memcpy(go->logits, first + (size_t)go->prompt * g.V, (size_t)g.V * sizeof(float));
    }
    free(first);
    /* the outputs hold the prompts' blocks now */
    for (int i = 0; !st && i < n_prompts; i++) mt_kv_seq_close(g.pool, g.prompt_seq[i]);

    while (!st) {
        int n = 0;
        for (int j = 0; j < g.n_out; j++) {
            gen_out *go = &g.out[j];
            if (go->done) continue;
            int32_t id = next_token(&g, j);
            if (id < 0) {
                go->done = true;
                continue;
            }
            g.tokens[n] = id;
            g.seq[n] = go->seq;
            g.slot[n] = go->prompt;
            g.tau[n] = g.prompt_tau[go->prompt];
            g.logit_rows[n] = n;
            n++;
        }
        if (n == 0) break;
        mt_decode_batch b = {.n_rows = n,
                             .tokens = g.tokens,
                             .seq = g.seq,
                             .slot = g.slot,
                             .adapters = g.slots,
                             .n_slots = n_prompts,
                             .logit_rows = g.logit_rows,
                             .n_logits = n,
                             .dap_threshold = dap ? g.tau : NULL};
        st = mt_decode_step(g.dec, g.pool, &b, g.logits, err);
        for (int j = 0, r = 0; !st && j < g.n_out; j++) {
            if (g.out[j].done) continue;
            memcpy(g.out[j].logits, g.logits + (size_t)r++ * g.V, (size_t)g.V * sizeof(float));
        }
    }
    double t2 = mt_now_seconds();
    if (o->dap_counts) mt_decoder_dap_stats(g.dec, o->dap_counts);
    if (st) goto done;
    for (int j = 0; j < g.n_out; j++) {
        gen_out *go = &g.out[j];
        const char *text;
        size_t len;
        if (strcmp(go->finish, "stop") != 0) {
            mt_detok_flush(go->detok, &text, &len);
            emit(&g, j, text, len);
        }
        const char *all = mt_detok_text(go->detok, &len);
        res[j] = (mt_generate_result){.n_prompt_tokens = (int)g.n_ids[go->prompt],
                                      .n_new_tokens = go->n_new,
                                      .prefill_seconds = t1 - t0,
                                      .decode_seconds = t2 - t1,
                                      .text = mt_xmalloc(len + 1),
                                      .len = len,
                                      .finish = go->finish};
        memcpy(res[j].text, all, len + 1);
    }
done:
    gen_free(&g);
    return st;
}
