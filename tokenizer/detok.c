/* detok.c — streaming detokenization: the text of one sequence as its tokens arrive, equal
 * byte for byte to mt_tokenizer_decode of the whole sequence, with text that could begin a stop
 * string held back until it is known not to.
 *
 * The decoders are not all token by token: ByteLevel turns the bytes of all tokens into one
 * string (an unfinished character waits for the next token's bytes), ByteFallback judges a run
 * of <0xNN> tokens whole, Metaspace and Strip treat the sequence's first token apart, and
 * BPEDecoder's suffix becomes a space only when another token follows. So the tokens not yet
 * final wait in a window that is decoded anew on every push (tk_decode_ids, told whether the
 * window begins the sequence and whether more follows), and the window is cut where the decoders
 * say nothing before the cut depends on what comes after (tk_dec_info). In ordinary text that is
 * after every token, so the window stays one or two tokens long. A decoder chain that cannot be
 * cut at all (ByteLevel after Fuse, say) gets its text at the flush. */
#include "tokenizer-impl.h"

#include <stdlib.h>
#include <string.h>

struct mt_detok {
    const mt_tokenizer *tok;
    bool skip_special;
    bool streamable;       /* the decoder chain can be cut between tokens */
    bool followed_matters; /* a window's text depends on whether tokens follow it */
    bool stopped;          /* a stop string completed: nothing more is emitted */
    size_t n_done;         /* tokens whose text is in `text` */
    int32_t *win;          /* [n_win] tokens after them, kept by decode, not final yet */
    size_t n_win, cap_win;
    tk_buf text;           /* final text of the first n_done tokens */
    tk_buf out;            /* what was emitted: a prefix of text, NUL-terminated */
    char **stop;           /* [n_stop] */
    size_t *stop_len;      /* [n_stop] */
    int n_stop;
};

/* A chain can be cut when every decoder after a join (ByteLevel, Fuse) only looks at the
 * joined item's start: the per-token ones (ByteLevel's map, Replace's matches, ByteFallback's
 * byte tokens) and Strip's end would see an item that spans windows. */
static bool chain_streamable(const mt_tokenizer *tok) {
    bool joined = false;
    for (int k = 0; k < tok->n_decs; k++) {
        const tk_decoder *d = &tok->decs[k];
        switch (d->type) {
        case TK_DEC_BYTELEVEL:
        case TK_DEC_REPLACE:
        case TK_DEC_BYTEFALLBACK:
            if (joined) return false;
            if (d->type == TK_DEC_BYTELEVEL) joined = true;
            break;
        case TK_DEC_FUSE: joined = true; break;
        case TK_DEC_STRIP:
            if (joined && d->stop) return false;
            break;
        case TK_DEC_METASPACE:
        case TK_DEC_BPE: break;
        }
    }
    return true;
}

static bool chain_followed_matters(const mt_tokenizer *tok) {
    if (!tok->has_decoder) return true;
    bool joined = false;
    for (int k = 0; k < tok->n_decs; k++) {
        tk_dec_type t = tok->decs[k].type;
        if (t == TK_DEC_BYTELEVEL || t == TK_DEC_FUSE) joined = true;
        if (t == TK_DEC_BPE && !joined) return true;
    }
    return false;
}

mt_status mt_detok_init(mt_detok **out, const mt_tokenizer *tok, bool skip_special, const char *const *stop,
                        int n_stop, mt_error *err) {
    *out = NULL;
    if (n_stop < 0 || (n_stop && !stop)) return mt_error_set(err, MT_ERR_INVALID, "detokenizer: bad stop string list");
    for (int i = 0; i < n_stop; i++)
        if (!stop[i] || !stop[i][0])
            return mt_error_set(err, MT_ERR_INVALID, "detokenizer: stop string %d is empty", i);
    mt_detok *d = mt_xcalloc(1, sizeof *d);
    d->tok = tok;
    d->skip_special = skip_special;
    d->streamable = chain_streamable(tok);
    d->followed_matters = chain_followed_matters(tok);
    d->n_stop = n_stop;
    if (n_stop) {
        d->stop = mt_xmalloc((size_t)n_stop * sizeof *d->stop);
        d->stop_len = mt_xmalloc((size_t)n_stop * sizeof *d->stop_len);
        for (int i = 0; i < n_stop; i++) {
            d->stop[i] = mt_xstrdup(stop[i]);
            d->stop_len[i] = strlen(stop[i]);
        }
    }
    tk_buf_put(&d->out, "", 0);
    *out = d;
    return MT_OK;
}

void mt_detok_free(mt_detok *d) {
    if (!d) return;
    for (int i = 0; i < d->n_stop; i++) free(d->stop[i]);
    free(d->stop);
    free(d->stop_len);
    free(d->win);
    tk_buf_free(&d->text);
    tk_buf_free(&d->out);
    free(d);
}

/* Moves the window's final part into text: all of it when nothing in it waits for later
 * tokens, else all but its last token when the cut before that token is clean. */
static void advance(mt_detok *d) {
    const mt_tokenizer *tok = d->tok;
    bool first = d->n_done == 0;
    tk_buf whole = {0}, head = {0}, last = {0};
    tk_dec_info iw, ih, il;
    if (tk_decode_ids(tok, d->win, d->n_win, first, false, &iw, &whole, NULL)) goto done;
    if (iw.closed && !iw.bf_last_byte) {
        bool same = true;
        if (d->followed_matters) {
            tk_buf f = {0};
            same = !tk_decode_ids(tok, d->win, d->n_win, first, true, NULL, &f, NULL) && f.len == whole.len &&
                   (!f.len || !memcmp(f.p, whole.p, f.len));
            tk_buf_free(&f);
        }
        if (same) {
            tk_buf_put(&d->text, whole.p ? whole.p : "", whole.len);
            d->n_done += d->n_win;
            d->n_win = 0;
            goto done;
        }
    }
    if (d->n_win < 2) goto done;
    if (tk_decode_ids(tok, d->win, d->n_win - 1, first, true, &ih, &head, NULL) ||
        tk_decode_ids(tok, d->win + d->n_win - 1, 1, false, false, &il, &last, NULL))
        goto done;
    /* the pieces must add up to the whole window's text: a check that costs nothing here */
    bool adds_up = head.len + last.len == whole.len && (!head.len || !memcmp(whole.p, head.p, head.len)) &&
                   (!last.len || !memcmp(whole.p + head.len, last.p, last.len));
    if (ih.closed && !(ih.bf_last_byte && il.bf_first_byte) && adds_up) {
        tk_buf_put(&d->text, head.p ? head.p : "", head.len);
        d->n_done += d->n_win - 1;
        d->win[0] = d->win[d->n_win - 1];
        d->n_win = 1;
    }
done:
    tk_buf_free(&whole);
    tk_buf_free(&head);
    tk_buf_free(&last);
}

/* Emits text not yet emitted up to the first complete stop string (returning its index), or,
 * without one, up to where a stop string could begin (everything, at the end). */
static int release(mt_detok *d, bool at_end, const char **text, size_t *len) {
    size_t from = d->out.len, end = d->text.len;
    int hit = -1;
    size_t hit_at = end;
    for (int i = 0; i < d->n_stop; i++) {
        size_t sl = d->stop_len[i];
        for (size_t p = from; p + sl <= end && p < hit_at; p++)
            if (!memcmp(d->text.p + p, d->stop[i], sl)) {
                hit = i;
                hit_at = p;
                break;
            }
    }
    size_t upto = hit_at;
    if (hit < 0 && !at_end)
        /* the earliest place where the rest of the text is a proper prefix of a stop string */
        for (size_t p = from; p < upto; p++) {
            bool held = false;
            for (int i = 0; i < d->n_stop && !held; i++)
                held = end - p < d->stop_len[i] && !memcmp(d->text.p + p, d->stop[i], end - p);
            if (held) {
                upto = p;
                break;
            }
        }
    if (upto > from) tk_buf_put(&d->out, d->text.p + from, upto - from);
    if (hit >= 0) d->stopped = true;
    *text = d->out.p + from;
    *len = upto - from;
    return hit;
}

int mt_detok_push(mt_detok *d, int32_t id, const char **text, size_t *len) {
    *text = d->out.p + d->out.len;
    *len = 0;
    if (d->stopped || !tk_decode_keeps(d->tok, id, d->skip_special)) return -1;
    if (d->n_win == d->cap_win) {
        d->cap_win = d->cap_win ? d->cap_win * 2 : 8;
        d->win = mt_xrealloc(d->win, d->cap_win * sizeof *d->win);
    }
    d->win[d->n_win++] = id;
    if (d->streamable) advance(d);
    return release(d, false, text, len);
}

void mt_detok_flush(mt_detok *d, const char **text, size_t *len) {
    *text = d->out.p + d->out.len;
    *len = 0;
    if (d->stopped) return;
    /* the window's text as the end of the sequence; a decoder error leaves it out, as
     * mt_tokenizer_decode would fail */
    if (d->n_win && !tk_decode_ids(d->tok, d->win, d->n_win, d->n_done == 0, false, NULL, &d->text, NULL)) {
        d->n_done += d->n_win;
        d->n_win = 0;
    }
    release(d, true, text, len);
}

const char *mt_detok_text(const mt_detok *d, size_t *len) {
    if (len) *len = d->out.len;
    return d->out.p;
}
