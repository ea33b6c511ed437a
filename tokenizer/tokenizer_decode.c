/* tokenizer_decode.c — ids back to text as the Hugging Face tokenizers library decodes them:
 * each id's token (added tokens included, special ones skipped on request, unknown ids
 * dropped) runs through the decoder chain (ByteLevel, Replace, ByteFallback, Fuse, Strip,
 * Metaspace, BPEDecoder), then is joined; plus the raw bytes of one token for streaming. */
#include "tokenizer-impl.h"

#include <stdlib.h>
#include <string.h>

/* A list of owned strings, the decoder chain's working set. */
typedef struct tk_strs {
    tk_buf *v;
    size_t n, cap;
} tk_strs;

static tk_buf *strs_push(tk_strs *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = mt_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    tk_buf *b = &l->v[l->n++];
    memset(b, 0, sizeof *b);
    tk_buf_put(b, s, n);
    return b;
}

static void strs_free(tk_strs *l) {
    for (size_t i = 0; i < l->n; i++) tk_buf_free(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* Each character of the token back to its byte; a token with any character outside the
 * map contributes its own UTF-8 bytes instead (that is how added tokens pass through). */
static void bytelevel_bytes(const char *s, size_t n, tk_buf *out) {
    size_t mark = out->len;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        int b = k ? tk_cp_to_byte(cp) : -1;
        if (b < 0) {
            out->len = mark;
            tk_buf_put(out, s, n);
            return;
        }
        tk_buf_putc(out, (char)b);
        i += k;
    }
}

/* "<0xNN>" → the byte; u8::from_str_radix accepts a leading '+', so "<0x+A>" counts too. */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0, digits = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        if (i == 3 && c == '+') continue;
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
        digits++;
    }
    return digits ? v : -1;
}

static void replace_all(const tk_regex *re, tk_match *m, const char *rep, size_t rl, const char *s, size_t n,
                        tk_buf *out, bool *failed) {
    size_t pos = 0, prev = 0;
    bool have_last = false;
    size_t last_end = 0;
    while (pos <= n) {
        size_t ms, me;
        int rc = tk_regex_find(re, m, s, n, pos, &ms, &me);
        if (rc < 0) *failed = true;
        if (rc <= 0) break;
        if (ms == me && have_last && last_end == me) {
            if (pos >= n) break;
            unsigned c = (unsigned char)s[pos];
            pos += c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
            continue;
        }
        tk_buf_put(out, s + prev, ms - prev);
        tk_buf_put(out, rep, rl);
        prev = pos = me;
        have_last = true;
        last_end = me;
    }
    tk_buf_put(out, s + prev, n - prev);
}

static void flush_bytes(tk_strs *dst, tk_buf *bytes) {
    if (!bytes->len) return;
    if (mt_utf8_valid(bytes->p, bytes->len, NULL))
        strs_push(dst, bytes->p, bytes->len);
    else
        for (size_t i = 0; i < bytes->len; i++) strs_push(dst, "\xEF\xBF\xBD", 3);
    bytes->len = 0;
}

/* Where the list a decoder sees sits in the whole sequence's list. Before a decoder that joins
 * (ByteLevel, Fuse), the list's items are whole tokens; after one, the list is one item that
 * may continue an item begun in an earlier window (tokenizer-impl.h, tk_decode_ids). */
typedef struct dec_stage {
    bool joined;   /* an earlier decoder joined the list into one item */
    bool first;    /* the list's first item is the sequence's first */
    bool followed; /* items come after the list's last one */
} dec_stage;

/* One decoder over the whole list (decode_chain). */
static mt_status run_decoder(const mt_tokenizer *tok, const tk_decoder *d, tk_match *m, tk_strs *src, tk_strs *dst,
                             dec_stage *stage, tk_dec_info *info, mt_error *err) {
    tk_buf tmp = {0};
    bool failed = false;
    switch (d->type) {
    case TK_DEC_BYTELEVEL:
        for (size_t i = 0; i < src->n; i++) bytelevel_bytes(src->v[i].p, src->v[i].len, &tmp);
        /* an unfinished character at the end may still be completed by the next token's bytes;
         * after a join, the per-token map would see one item spanning windows */
        if (stage->joined || tk_utf8_pending(tmp.p, tmp.len)) info->closed = false;
        stage->joined = true;
        {
            tk_buf text = {0};
            tk_utf8_lossy(&text, tmp.p ? tmp.p : "", tmp.len);
            strs_push(dst, text.p ? text.p : "", text.len);
            tk_buf_free(&text);
        }
        break;
    case TK_DEC_REPLACE:
        if (stage->joined) info->closed = false; /* a match may span windows */
        for (size_t i = 0; i < src->n; i++) {
            tmp.len = 0;
            replace_all(d->re, m, d->str, d->str_len, src->v[i].p, src->v[i].len, &tmp, &failed);
            strs_push(dst, tmp.p ? tmp.p : "", tmp.len);
        }
        break;
    case TK_DEC_BYTEFALLBACK:
        if (stage->joined) info->closed = false;
        for (size_t i = 0; i < src->n; i++) {
            int b = byte_token(src->v[i].p, src->v[i].len);
            /* a run of byte tokens is judged whole: a window must not end inside one */
            if (i == 0 && b >= 0) info->bf_first_byte = true;
            if (i + 1 == src->n && b >= 0) info->bf_last_byte = true;
            if (b >= 0) {
                tk_buf_putc(&tmp, (char)b);
                continue;
            }
            flush_bytes(dst, &tmp);
            strs_push(dst, src->v[i].p, src->v[i].len);
        }
        flush_bytes(dst, &tmp);
        break;
    case TK_DEC_FUSE:
        for (size_t i = 0; i < src->n; i++) tk_buf_put(&tmp, src->v[i].p, src->v[i].len);
        strs_push(dst, tmp.p ? tmp.p : "", tmp.len);
        stage->joined = true;
        break;
    case TK_DEC_STRIP:
        /* the joined item's end is the text's end, which later windows move */
        if (stage->joined && d->stop) info->closed = false;
        for (size_t i = 0; i < src->n; i++) {
            /* character positions of this token */
            const char *s = src->v[i].p;
            size_t n = src->v[i].len, nch = 0;
            size_t *at = mt_xmalloc((n + 1) * sizeof *at);
            uint32_t *cps = mt_xmalloc((n + 1) * sizeof *cps);
            for (size_t k = 0; k < n;) {
                size_t l = tk_utf8_decode((const unsigned char *)s + k, n - k, &cps[nch]);
                MT_ASSERT(l);
                at[nch++] = k;
                k += l;
            }
            at[nch] = n;
            size_t lo = 0, hi = nch;
            /* a joined item that continues an earlier window's has had its start stripped */
            bool at_start = !stage->joined || stage->first;
            for (size_t k = 0; at_start && k < (size_t)d->start && k < nch && cps[k] == d->ch; k++) lo = k + 1;
            /* fewer than `start` content characters and nothing else yet: more may follow */
            if (stage->joined && at_start && lo < (size_t)d->start && lo == nch) info->closed = false;
            for (size_t k = 0; k < (size_t)d->stop && k < nch && cps[nch - 1 - k] == d->ch; k++) hi = nch - 1 - k;
            if (hi < lo) hi = lo;
            strs_push(dst, s + at[lo], at[hi] - at[lo]);
            free(at);
            free(cps);
        }
        break;
    case TK_DEC_METASPACE: {
        char rep[4];
        size_t rl = tk_utf8_encode(d->ch, rep);
        for (size_t i = 0; i < src->n; i++) {
            /* every replacement character of the first token goes, not only a leading one */
            bool drop = i == 0 && (stage->joined || stage->first) && d->scheme != TK_PREPEND_NEVER;
            tmp.len = 0;
            const char *s = src->v[i].p;
            size_t n = src->v[i].len;
            for (size_t k = 0; k < n;) {
                if (k + rl <= n && !memcmp(s + k, rep, rl)) {
                    if (!drop) tk_buf_putc(&tmp, ' ');
                    k += rl;
                } else
                    tk_buf_putc(&tmp, s[k++]);
            }
            strs_push(dst, tmp.p ? tmp.p : "", tmp.len);
        }
        break;
    }
    case TK_DEC_BPE:
        for (size_t i = 0; i < src->n; i++) {
            tmp.len = 0;
            const char *s = src->v[i].p;
            size_t n = src->v[i].len, k = 0;
            while (k < n) {
                if (d->str_len && k + d->str_len <= n && !memcmp(s + k, d->str, d->str_len)) {
                    if (i + 1 < src->n || (!stage->joined && stage->followed)) tk_buf_putc(&tmp, ' ');
                    k += d->str_len;
                } else
                    tk_buf_putc(&tmp, s[k++]);
            }
            strs_push(dst, tmp.p ? tmp.p : "", tmp.len);
        }
        break;
    }
    tk_buf_free(&tmp);
    if (failed)
        return mt_error_set(err, MT_ERR_INVALID, "%s: a decoder's regular expression ran out of resources",
                            tok->origin);
    return MT_OK;
}

mt_status tk_decode_ids(const mt_tokenizer *tok, const int32_t *ids, size_t n_ids, bool first, bool followed,
                        tk_dec_info *info, tk_buf *out, mt_error *err) {
    tk_dec_info ignored;
    if (!info) info = &ignored;
    *info = (tk_dec_info){.closed = true};
    tk_strs a = {0}, b = {0};
    for (size_t i = 0; i < n_ids; i++) strs_push(&a, tok->id_tok[ids[i]], tok->id_len[ids[i]]);
    mt_status st = MT_OK;
    tk_buf joined = {0};
    if (tok->has_decoder) {
        tk_match *m = tk_match_new();
        dec_stage stage = {.first = first, .followed = followed};
        for (int k = 0; k < tok->n_decs && !st; k++) {
            st = run_decoder(tok, &tok->decs[k], m, &a, &b, &stage, info, err);
            strs_free(&a);
            a = b;
            memset(&b, 0, sizeof b);
        }
        tk_match_free(m);
        for (size_t i = 0; i < a.n; i++) tk_buf_put(&joined, a.v[i].p, a.v[i].len);
    } else {
        /* without a decoder the library joins the tokens with spaces */
        for (size_t i = 0; i < a.n; i++) {
            if (i) tk_buf_putc(&joined, ' ');
            tk_buf_put(&joined, a.v[i].p, a.v[i].len);
        }
        if (followed && a.n) tk_buf_putc(&joined, ' ');
    }
    strs_free(&a);
    strs_free(&b);
    if (!st) tk_utf8_lossy(out, joined.p ? joined.p : "", joined.len);
    tk_buf_free(&joined);
    return st;
}

bool tk_decode_keeps(const mt_tokenizer *tok, int32_t id, bool skip_special) {
    if (id < 0 || id >= tok->vocab_size || !tok->id_tok[id]) return false;
    /* as the library does, by spelling: any token that reads like a special one goes */
    return !skip_special || tk_strmap_get(&tok->special_set, tok->id_tok[id], tok->id_len[id]) < 0;
}

mt_status mt_tokenizer_decode(const mt_tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special, char **out,
                              size_t *len, mt_error *err) {
    *out = NULL;
    if (len) *len = 0;
    int32_t *kept = mt_xmalloc((n_ids ? n_ids : 1) * sizeof *kept);
    size_t n = 0;
    for (size_t i = 0; i < n_ids; i++)
        if (tk_decode_keeps(tok, ids[i], skip_special)) kept[n++] = ids[i];
    tk_buf text = {0};
    mt_status st = tk_decode_ids(tok, kept, n, true, false, NULL, &text, err);
    free(kept);
    if (st) {
        tk_buf_free(&text);
        return st;
    }
    if (!text.p) tk_buf_put(&text, "", 0);
    *out = text.p;
    if (len) *len = text.len;
    return MT_OK;
}

size_t mt_tokenizer_token_bytes(const mt_tokenizer *tok, int32_t id, char *buf, size_t cap) {
    if (id < 0 || id >= tok->vocab_size || !tok->id_tok[id]) return 0;
    const char *s = tok->id_tok[id];
    size_t n = tok->id_len[id];
    tk_buf cur = {0}, nxt = {0};
    tk_buf_put(&cur, s, n);
    /* Only the per-token steps apply: what depends on the token's place in the sequence
     * (Strip, Metaspace's first-token rule, BPEDecoder's last-token rule) is left to the
     * caller, and byte tokens stay raw bytes so a stream can join them itself. */
    if (tok->id_added[id] < 0) {
        tk_match *m = tk_match_new();
        for (int k = 0; k < tok->n_decs; k++) {
            const tk_decoder *d = &tok->decs[k];
            nxt.len = 0;
            bool failed = false;
            switch (d->type) {
            case TK_DEC_BYTELEVEL: bytelevel_bytes(cur.p, cur.len, &nxt); break;
            case TK_DEC_REPLACE: replace_all(d->re, m, d->str, d->str_len, cur.p, cur.len, &nxt, &failed); break;
            case TK_DEC_BYTEFALLBACK: {
                int b = byte_token(cur.p, cur.len);
                if (b >= 0)
                    tk_buf_putc(&nxt, (char)b);
                else
                    tk_buf_put(&nxt, cur.p, cur.len);
                break;
            }
            case TK_DEC_METASPACE: {
                char rep[4];
                size_t rl = tk_utf8_encode(d->ch, rep);
                for (size_t k2 = 0; k2 < cur.len;) {
                    if (k2 + rl <= cur.len && !memcmp(cur.p + k2, rep, rl)) {
                        tk_buf_putc(&nxt, ' ');
                        k2 += rl;
                    } else
                        tk_buf_putc(&nxt, cur.p[k2++]);
                }
                break;
            }
            case TK_DEC_FUSE:
            case TK_DEC_STRIP:
            case TK_DEC_BPE: tk_buf_put(&nxt, cur.p, cur.len); break;
            }
            if (failed) nxt.len = 0;
            tk_buf t = cur;
            cur = nxt;
            nxt = t;
        }
        tk_match_free(m);
    }
    size_t w = cur.len < cap ? cur.len : cap;
    if (w) memcpy(buf, cur.p, w);
    tk_buf_free(&cur);
    tk_buf_free(&nxt);
    return w;
}
