/* generate.c — text generation on the KV cache: prefill the prompt, then sample one token at a
 * time until EOS, a stop string, the token budget or a full cache. Text is streamed only as
 * complete UTF-8, and held back while it could still turn into a stop string. */
#include <stdlib.h>
#include <string.h>

#include "model-impl.h"

typedef struct mt_strbuf {
    char *p;
    size_t len, cap;
} mt_strbuf;

static void sb_append(mt_strbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        b->p = mt_xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Length of the valid UTF-8 sequence at s (n bytes available): > 0 valid, 0 incomplete but
 * possibly valid, −1 invalid first byte. */
static int utf8_seq(const uint8_t *s, size_t n) {
    uint8_t b = s[0];
    int len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF)
        len = 2;
    else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else
        return -1;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return 0;
        uint8_t lim_lo = i == 1 ? lo : 0x80, lim_hi = i == 1 ? hi : 0xBF;
        if (s[i] < lim_lo || s[i] > lim_hi) return -1;
    }
    return len;
}

/* Moves the complete UTF-8 prefix of pending into text (invalid bytes become U+FFFD, as a
 * lossy decode does); with flush, an incomplete tail becomes U+FFFD too. */
static void drain_utf8(mt_strbuf *pending, mt_strbuf *text, bool flush) {
    size_t i = 0;
    const uint8_t *s = (const uint8_t *)pending->p;
    while (i < pending->len) {
        int k = utf8_seq(s + i, pending->len - i);
        if (k > 0) {
            sb_append(text, (const char *)s + i, (size_t)k);
            i += (size_t)k;
        } else if (k < 0 || flush) {
            sb_append(text, "\xEF\xBF\xBD", 3);
            i += 1;
            if (k == 0) i = pending->len;
        } else {
            break;
        }
    }
    memmove(pending->p, pending->p + i, pending->len - i);
    pending->len -= i;
    if (pending->p) pending->p[pending->len] = '\0';
}

/* Bytes at the end of text that could be the start of a stop string. */
static size_t stop_holdback(const mt_strbuf *text, const mt_generate_opts *o) {
    size_t best = 0;
    for (int s = 0; s < o->n_stop; s++) {
        size_t sl = strlen(o->stop[s]);
        for (size_t k = sl > 0 ? sl - 1 : 0; k > best; k--)
            if (k <= text->len && !memcmp(text->p + text->len - k, o->stop[s], k)) {
                best = k;
                break;
            }
    }
    return best;
}

/* Earliest stop string occurring in text at or after `from`; returns its offset or −1. */
static long find_stop(const mt_strbuf *text, size_t from, const mt_generate_opts *o) {
    long best = -1;
    for (int s = 0; s < o->n_stop; s++) {
        size_t sl = strlen(o->stop[s]);
        if (!sl || sl > text->len) continue;
        for (size_t i = from; i + sl <= text->len; i++)
            if (!memcmp(text->p + i, o->stop[s], sl)) {
                if (best < 0 || (long)i < best) best = (long)i;
                break;
            }
    }
    return best;
}

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

mt_status mt_generate(mt_model *m, const mt_tokenizer *tok, mt_kv_cache *cache, const char *prompt,
                      const mt_generate_opts *o, mt_generate_result *res, mt_error *err) {
    memset(res, 0, sizeof *res);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    mt_status st = mt_tokenizer_encode(tok, prompt, strlen(prompt), true, &ids, &n_ids, err);
    if (st) return st;
    if (n_ids == 0) {
        free(ids);
        int32_t bos = mt_tokenizer_bos_id(tok) >= 0 ? mt_tokenizer_bos_id(tok) : m->cfg.bos_token_id;
        if (bos < 0) return mt_error_set(err, MT_ERR_INVALID, "generate: empty prompt and no BOS token to start from");
        ids = mt_xmalloc(sizeof(int32_t));
        ids[0] = bos;
        n_ids = 1;
    }
    mt_kv_cache_reset(cache);
    int cap = cache->max_seq;
    if ((long)n_ids >= cap) {
        free(ids);
        return mt_error_set(err, MT_ERR_INVALID, "generate: the prompt has %zu tokens but the cache holds %d", n_ids, cap);
    }
    int V = m->cfg.vocab_size;
    float *logits = mt_xmalloc((size_t)V * sizeof(float));
    double t0 = mt_now_seconds();
    st = mt_model_decode(m, cache, ids, (int)n_ids, logits, err);
    double t1 = mt_now_seconds();
    res->n_prompt_tokens = (int)n_ids;
    res->prefill_seconds = t1 - t0;
    free(ids);
    if (st) {
        free(logits);
        return st;
    }
    mt_rng rng;
    mt_rng_seed(&rng, o->sample.seed);
    mt_strbuf text = {0}, pending = {0};
    sb_append(&text, "", 0);
    size_t emitted = 0;
    const char *finish = NULL;
    char piece[256];
    bool user_stop = false;
    for (int i = 0; i < o->max_new_tokens && !finish; i++) {
        int32_t id = mt_sample(&o->sample, logits, V, &rng);
        if (o->stop_at_eos && is_eos(m, tok, id)) {
            finish = "eos";
            break;
        }
        res->n_new_tokens++;
        size_t nb = mt_tokenizer_token_bytes(tok, id, piece, sizeof piece);
        sb_append(&pending, piece, nb < sizeof piece ? nb : sizeof piece);
        size_t before = text.len;
        drain_utf8(&pending, &text, false);
        size_t longest = 0;
        for (int s = 0; s < o->n_stop; s++)
            if (strlen(o->stop[s]) > longest) longest = strlen(o->stop[s]);
        long at = find_stop(&text, before + 1 > longest ? before + 1 - longest : 0, o);
        if (at >= 0) {
            text.len = (size_t)at;
            text.p[text.len] = '\0';
            finish = "stop";
        }
        size_t safe = finish ? text.len : text.len - stop_holdback(&text, o);
        if (o->on_text && safe > emitted) {
            user_stop = !o->on_text(o->user, text.p + emitted, safe - emitted);
            emitted = safe;
            if (user_stop && !finish) finish = "stop";
        }
        if (finish) break;
        if (i + 1 >= o->max_new_tokens) break;
        if (cache->len >= cap) {
            finish = "length";
            break;
        }
        st = mt_model_decode(m, cache, &id, 1, logits, err);
        if (st) break;
    }
    res->decode_seconds = mt_now_seconds() - t1;
    free(logits);
    if (st) {
        free(text.p);
        free(pending.p);
        return st;
    }
    if (!finish) finish = "length";
    if (strcmp(finish, "stop") != 0 || !user_stop) {
        if (pending.len && strcmp(finish, "stop") != 0) drain_utf8(&pending, &text, true);
        if (o->on_text && text.len > emitted && !user_stop) o->on_text(o->user, text.p + emitted, text.len - emitted);
    }
    free(pending.p);
    res->text = text.p;
    res->finish = finish;
    return MT_OK;
}
