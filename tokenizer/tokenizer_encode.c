/* tokenizer_encode.c — text to ids, step for step as the Hugging Face tokenizers library
 * does it: added tokens cut out of the raw text (leftmost-longest), normalizers, the
 * pre-tokenizers' splits, BPE merges by rank (a heap over a linked list of symbols, so long
 * words stay O(n log n)), byte fallback, and the post-processor's special tokens. */
#include "tokenizer-impl.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- pieces ---- */

void tk_pieces_free(tk_pieces *p) {
    free(p->v);
    tk_buf_free(&p->text);
    memset(p, 0, sizeof *p);
}

static void piece_push(tk_pieces *p, const char *s, size_t n, int32_t id, bool at_start) {
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->v = mt_xrealloc(p->v, p->cap * sizeof *p->v);
    }
    p->v[p->n++] = (tk_piece){p->text.len, n, id, at_start};
    tk_buf_put(&p->text, s, n);
}

static void pieces_swap(tk_pieces *a, tk_pieces *b) {
    tk_pieces t = *a;
    *a = *b;
    *b = t;
    b->n = 0;
    b->text.len = 0;
}

/* ---- segments: a string cut into matched and unmatched runs ---- */

typedef struct tk_seg {
    size_t s, e;
    bool match; /* after a behavior is applied: true = drop this run */
} tk_seg;

typedef struct tk_segs {
    tk_seg *v;
    size_t n, cap;
} tk_segs;

static void seg_push(tk_segs *g, size_t s, size_t e, bool match) {
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 16;
        g->v = mt_xrealloc(g->v, g->cap * sizeof *g->v);
    }
    g->v[g->n++] = (tk_seg){s, e, match};
}

static size_t char_len(const char *s, size_t n) {
    unsigned c = (unsigned char)s[0];
    size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    return k < n ? k : n;
}

/* Every match of re in s, with the runs between them, covering s. Empty matches are kept
 * except right after the previous match's end, as the onig crate's find_iter does. */
static int regex_segs(const tk_regex *re, tk_match *m, const char *s, size_t n, bool invert, tk_segs *g) {
    g->n = 0;
    if (!n) {
        seg_push(g, 0, 0, false);
        return 0;
    }
    size_t prev = 0, pos = 0;
    bool have_last = false;
    size_t last_end = 0;
    while (pos <= n) {
        size_t ms, me;
        int rc = tk_regex_find(re, m, s, n, pos, &ms, &me);
        if (rc < 0) return -1;
        if (!rc) break;
        if (ms == me && have_last && last_end == me) {
            if (pos >= n) break;
            pos += char_len(s + pos, n - pos);
            continue;
        }
        if (prev != ms) seg_push(g, prev, ms, invert);
        seg_push(g, ms, me, !invert);
        prev = me;
        pos = me;
        have_last = true;
        last_end = me;
    }
    if (prev != n) seg_push(g, prev, n, invert);
    return 0;
}

typedef bool (*char_pred)(uint32_t cp, uint32_t arg);

static bool pred_numeric(uint32_t cp, uint32_t arg) { return (void)arg, tk_is_numeric(cp); }
static bool pred_space(uint32_t cp, uint32_t arg) { return (void)arg, tk_is_whitespace(cp); }
static bool pred_equal(uint32_t cp, uint32_t arg) { return cp == arg; }

/* Each character satisfying pred is its own match (the library's Fn(char) -> bool pattern). */
static void char_segs(char_pred pred, uint32_t arg, const char *s, size_t n, tk_segs *g) {
    g->n = 0;
    if (!n) {
        seg_push(g, 0, 0, false);
        return;
    }
    size_t last = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        MT_ASSERT(k);
        if (pred(cp, arg)) {
            if (last < i) seg_push(g, last, i, false);
            seg_push(g, i, i + k, true);
            last = i + k;
        }
        i += k;
    }
    if (last < n) seg_push(g, last, n, false);
}

/* NormalizedString::split's behaviors; afterwards `match` means "remove". */
static void apply_behavior(tk_segs *g, tk_behavior b) {
    if (b == TK_SPLIT_REMOVED) return;
    size_t out = 0;
    bool prev_match = false;
    if (b == TK_SPLIT_ISOLATED) {
        for (size_t i = 0; i < g->n; i++) g->v[i].match = false;
        return;
    }
    if (b == TK_SPLIT_MERGED_NEXT) {
        /* built back to front, then reversed */
        tk_seg *tmp = mt_xmalloc((g->n + 1) * sizeof *tmp);
        for (size_t k = g->n; k-- > 0;) {
            tk_seg sg = g->v[k];
            if (sg.match && !prev_match && out)
                tmp[out - 1].s = sg.s;
            else
                tmp[out++] = (tk_seg){sg.s, sg.e, false};
            prev_match = sg.match;
        }
        for (size_t k = 0; k < out; k++) g->v[k] = tmp[out - 1 - k];
        g->n = out;
        free(tmp);
        return;
    }
    for (size_t i = 0; i < g->n; i++) {
        tk_seg sg = g->v[i];
        bool merge = b == TK_SPLIT_CONTIGUOUS ? sg.match == prev_match : sg.match && !prev_match;
        if (merge && out)
            g->v[out - 1].e = sg.e;
        else
            g->v[out++] = (tk_seg){sg.s, sg.e, false};
        prev_match = sg.match;
    }
    g->n = out;
}

static void emit_segs(tk_pieces *dst, const tk_segs *g, const char *s, bool at_start) {
    for (size_t i = 0; i < g->n; i++) {
        const tk_seg *sg = &g->v[i];
        if (sg->match || sg->e == sg->s) continue;
        piece_push(dst, s + sg->s, sg->e - sg->s, -1, at_start && sg->s == 0);
    }
}

/* ---- added tokens ---- */

static bool ends_with_word(const char *s, size_t n) {
    if (!n) return false;
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    uint32_t cp;
    return tk_utf8_decode((const unsigned char *)s + i, n - i, &cp) && tk_is_word_char(cp);
}

static bool starts_with_word(const char *s, size_t n) {
    uint32_t cp;
    return n && tk_utf8_decode((const unsigned char *)s, n, &cp) && tk_is_word_char(cp);
}

static size_t trailing_space_start(const char *s, size_t n) {
    size_t i = n;
    while (i > 0) {
        size_t j = i - 1;
        while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
        uint32_t cp;
        if (!tk_utf8_decode((const unsigned char *)s + j, i - j, &cp) || !tk_is_whitespace(cp)) break;
        i = j;
    }
    return i;
}

static size_t leading_space_len(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (!k || !tk_is_whitespace(cp)) break;
        i += k;
    }
    return i;
}

/* Longest token of the trie starting at s[i]; returns its added index or −1. */
static int32_t trie_longest(const tk_trie *tr, const char *s, size_t n, size_t i, size_t *end) {
    uint64_t node = 0;
    int32_t best = -1;
    for (size_t k = i; k < n; k++) {
        uint64_t child;
        if (!tk_u64map_get(&tr->edges, node << 8 | (unsigned char)s[k], &child)) break;
        node = child;
        if (tr->term[node] >= 0) {
            best = tr->term[node];
            *end = k + 1;
        }
    }
    return best;
}

/* AddedVocabulary::find_matches over one piece, pushing the resulting pieces. */
static void split_added(const mt_tokenizer *tok, const tk_trie *tr, const char *s, size_t n, bool at_start,
                        tk_pieces *dst) {
    if (tr->n_nodes <= 1) {
        if (n) piece_push(dst, s, n, -1, at_start);
        return;
    }
    size_t start_offset = 0, i = 0;
    while (i < n) {
        size_t end = 0;
        int32_t a = trie_longest(tr, s, n, i, &end);
        if (a < 0) {
            i++;
            continue;
        }
        const tk_added *t = &tok->added[a];
        size_t start = i, stop = end;
        i = end; /* the automaton resumes after the match, whatever is decided below */
        if (t->single_word) {
            bool start_space = start == 0 || !ends_with_word(s, start);
            bool stop_space = stop == n || !starts_with_word(s + stop, n - stop);
            if (!start_space || !stop_space) continue;
        }
        if (t->lstrip) {
            size_t ns = trailing_space_start(s, start);
            start = ns > start_offset ? ns : start_offset;
        }
        if (t->rstrip) stop += leading_space_len(s + stop, n - stop);
        if (start_offset < start)
            piece_push(dst, s + start_offset, start - start_offset, -1, at_start && start_offset == 0);
        piece_push(dst, s + start, stop - start, t->id, at_start && start == 0);
        start_offset = stop;
    }
    if (start_offset < n) piece_push(dst, s + start_offset, n - start_offset, -1, at_start && start_offset == 0);
}

/* ---- normalizers ---- */

static mt_status utf8proc_form(const char *s, size_t n, utf8proc_option_t opt, tk_buf *out, const char *origin,
                               mt_error *err) {
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, opt | UTF8PROC_STABLE);
    if (r < 0) {
        free(dst);
        return mt_error_set(err, MT_ERR_INVALID, "%s: Unicode normalization failed: %s", origin, utf8proc_errmsg(r));
    }
    tk_buf_put(out, dst, (size_t)r);
    free(dst);
    return MT_OK;
}

static mt_status regex_fail(const mt_tokenizer *tok, mt_error *err) {
    return mt_error_set(err, MT_ERR_INVALID, "%s: a regular expression ran out of resources on this text", tok->origin);
}

mt_status tk_normalize(const mt_tokenizer *tok, tk_match *m, const char *s, size_t n, tk_buf *out, mt_error *err) {
    tk_buf a = {0}, b = {0};
    tk_buf_put(&a, s, n);
    tk_segs g = {0};
    mt_status st = MT_OK;
    for (int i = 0; i < tok->n_norms && !st; i++) {
        const tk_norm *nm = &tok->norms[i];
        b.len = 0;
        switch (nm->type) {
        case TK_NORM_NFC: st = utf8proc_form(a.p, a.len, UTF8PROC_COMPOSE, &b, tok->origin, err); break;
        case TK_NORM_NFD: st = utf8proc_form(a.p, a.len, UTF8PROC_DECOMPOSE, &b, tok->origin, err); break;
        case TK_NORM_NFKC:
            st = utf8proc_form(a.p, a.len, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, &b, tok->origin, err);
            break;
        case TK_NORM_NFKD:
            st = utf8proc_form(a.p, a.len, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, &b, tok->origin, err);
            break;
        case TK_NORM_PREPEND:
            if (a.len) tk_buf_put(&b, nm->str, nm->str_len);
            tk_buf_put(&b, a.p, a.len);
            break;
        case TK_NORM_REPLACE:
            if (regex_segs(nm->re, m, a.p, a.len, false, &g) < 0) {
                st = regex_fail(tok, err);
                break;
            }
            for (size_t k = 0; k < g.n; k++) {
                if (g.v[k].match)
                    tk_buf_put(&b, nm->str, nm->str_len);
                else
                    tk_buf_put(&b, a.p + g.v[k].s, g.v[k].e - g.v[k].s);
            }
            break;
        case TK_NORM_STRIP: {
            size_t lo = nm->left ? leading_space_len(a.p, a.len) : 0;
            size_t hi = nm->right ? trailing_space_start(a.p, a.len) : a.len;
            if (hi < lo) hi = lo;
            tk_buf_put(&b, a.p + lo, hi - lo);
            break;
        }
        case TK_NORM_BYTELEVEL:
            for (size_t k = 0; k < a.len; k++) {
                char u[4];
                tk_buf_put(&b, u, tk_utf8_encode(tk_byte_to_cp[(unsigned char)a.p[k]], u));
            }
            break;
        }
        tk_buf t = a;
        a = b;
        b = t;
    }
    if (!st) tk_buf_put(out, a.p, a.len);
    tk_buf_free(&a);
    tk_buf_free(&b);
    free(g.v);
    return st;
}

/* ---- pre-tokenizers ---- */

static void byte_map(tk_pieces *dst, const char *s, size_t n, bool at_start) {
    tk_buf tmp = {0};
    for (size_t k = 0; k < n; k++) {
        char u[4];
        tk_buf_put(&tmp, u, tk_utf8_encode(tk_byte_to_cp[(unsigned char)s[k]], u));
    }
    piece_push(dst, tmp.p, tmp.len, -1, at_start);
    tk_buf_free(&tmp);
}

static mt_status run_pretok(const mt_tokenizer *tok, const tk_pretok *pt, tk_match *m, tk_pieces *src, tk_pieces *dst,
                            mt_error *err) {
    tk_segs g = {0};
    tk_buf tmp = {0};
    mt_status st = MT_OK;
    for (size_t i = 0; i < src->n && !st; i++) {
        const tk_piece *pc = &src->v[i];
        const char *s = src->text.p + pc->off;
        size_t n = pc->len;
        if (pc->id >= 0) {
            piece_push(dst, s, n, pc->id, pc->at_start);
            continue;
        }
        switch (pt->type) {
        case TK_PRE_SPLIT:
        case TK_PRE_WHITESPACE:
            if (regex_segs(pt->re, m, s, n, pt->type == TK_PRE_WHITESPACE || pt->invert, &g) < 0) {
                st = regex_fail(tok, err);
                break;
            }
            apply_behavior(&g, pt->type == TK_PRE_WHITESPACE ? TK_SPLIT_REMOVED : pt->behavior);
            emit_segs(dst, &g, s, pc->at_start);
            break;
        case TK_PRE_BYTELEVEL: {
            tmp.len = 0;
            if (pt->add_prefix_space && (n == 0 || s[0] != ' ')) tk_buf_putc(&tmp, ' ');
            tk_buf_put(&tmp, s, n);
            if (!pt->use_regex) {
                byte_map(dst, tmp.p, tmp.len, pc->at_start);
                break;
            }
            if (regex_segs(pt->re, m, tmp.p, tmp.len, false, &g) < 0) {
                st = regex_fail(tok, err);
                break;
            }
            for (size_t k = 0; k < g.n; k++)
                if (g.v[k].e > g.v[k].s)
                    byte_map(dst, tmp.p + g.v[k].s, g.v[k].e - g.v[k].s, pc->at_start && !g.v[k].s);
            break;
        }
        case TK_PRE_METASPACE: {
            char rep[4];
            size_t rl = tk_utf8_encode(pt->replacement, rep);
            tmp.len = 0;
            bool starts_rep = false;
            for (size_t k = 0; k < n; k++) {
                if (s[k] == ' ')
                    tk_buf_put(&tmp, rep, rl);
                else
                    tk_buf_putc(&tmp, s[k]);
            }
            starts_rep = tmp.len >= rl && !memcmp(tmp.p, rep, rl);
            bool prepend =
                !starts_rep && (pt->scheme == TK_PREPEND_ALWAYS || (pt->scheme == TK_PREPEND_FIRST && pc->at_start));
            if (prepend) {
                tk_buf_put(&tmp, rep, rl); /* grow, then shift right */
                memmove(tmp.p + rl, tmp.p, tmp.len - rl);
                memcpy(tmp.p, rep, rl);
            }
            if (!pt->split) {
                piece_push(dst, tmp.p, tmp.len, -1, pc->at_start);
                break;
            }
            char_segs(pred_equal, pt->replacement, tmp.p, tmp.len, &g);
            apply_behavior(&g, TK_SPLIT_MERGED_NEXT);
            emit_segs(dst, &g, tmp.p, pc->at_start);
            break;
        }
        case TK_PRE_DIGITS:
            char_segs(pred_numeric, 0, s, n, &g);
            apply_behavior(&g, pt->individual ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIGUOUS);
            emit_segs(dst, &g, s, pc->at_start);
            break;
        case TK_PRE_WHITESPACE_SPLIT:
            char_segs(pred_space, 0, s, n, &g);
            emit_segs(dst, &g, s, pc->at_start);
            break;
        }
    }
    free(g.v);
    tk_buf_free(&tmp);
    return st;
}

mt_status tk_pretokenize(const mt_tokenizer *tok, tk_match *m, const char *text, size_t len, bool skip_added,
                         tk_pieces *out, mt_error *err) {
    tk_pieces a = {0}, b = {0};
    mt_status st = MT_OK;
    /* 1. added tokens that match the raw text */
    if (skip_added)
        piece_push(&a, text, len, -1, true);
    else
        split_added(tok, &tok->trie_raw, text, len, true, &a);
    /* 2. normalize what is left, then cut out the tokens that match normalized text */
    tk_buf norm = {0};
    for (size_t i = 0; i < a.n && !st; i++) {
        const tk_piece *pc = &a.v[i];
        if (pc->id >= 0) {
            piece_push(&b, a.text.p + pc->off, pc->len, pc->id, pc->at_start);
            continue;
        }
        if (!pc->len) continue;
        norm.len = 0;
        st = tk_normalize(tok, m, a.text.p + pc->off, pc->len, &norm, err);
        if (st) break;
        if (skip_added)
            piece_push(&b, norm.p, norm.len, -1, pc->at_start);
        else
            split_added(tok, &tok->trie_norm, norm.p, norm.len, pc->at_start, &b);
    }
    tk_buf_free(&norm);
    pieces_swap(&a, &b);
    /* 3. pre-tokenizers, in order */
    for (int k = 0; k < tok->n_pretoks && !st; k++) {
        st = run_pretok(tok, &tok->pretoks[k], m, &a, &b, err);
        pieces_swap(&a, &b);
    }
    tk_pieces_free(&b);
    if (st) {
        tk_pieces_free(&a);
        return st;
    }
    *out = a;
    return MT_OK;
}

/* ---- BPE ---- */

typedef struct tk_sym {
    int32_t c;
    int32_t prev, next;
    uint32_t len; /* bytes; 0 = merged away */
} tk_sym;

typedef struct tk_hent {
    uint32_t rank, pos;
    int32_t new_id;
} tk_hent;

typedef struct tk_ids {
    int32_t *v;
    size_t n, cap;
} tk_ids;

static void ids_push(tk_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        ids->cap = ids->cap ? ids->cap * 2 : 64;
        ids->v = mt_xrealloc(ids->v, ids->cap * sizeof *ids->v);
    }
    ids->v[ids->n++] = id;
}

/* Per-call scratch for the merge loop. */
typedef struct tk_bpe_scratch {
    tk_sym *sym;
    size_t nsym, cap_sym;
    tk_hent *heap;
    size_t nheap, cap_heap;
    tk_buf s;
} tk_bpe_scratch;

static void sym_add(tk_bpe_scratch *w, int32_t c, uint32_t len) {
    if (w->nsym == w->cap_sym) {
        w->cap_sym = w->cap_sym ? w->cap_sym * 2 : 64;
        w->sym = mt_xrealloc(w->sym, w->cap_sym * sizeof *w->sym);
    }
    int32_t i = (int32_t)w->nsym;
    if (i > 0) w->sym[i - 1].next = i;
    w->sym[w->nsym++] = (tk_sym){c, i - 1, -1, len};
}

static bool hent_less(const tk_hent *a, const tk_hent *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(tk_bpe_scratch *w, tk_hent e) {
    if (w->nheap == w->cap_heap) {
        w->cap_heap = w->cap_heap ? w->cap_heap * 2 : 64;
        w->heap = mt_xrealloc(w->heap, w->cap_heap * sizeof *w->heap);
    }
    size_t i = w->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hent_less(&e, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = e;
}

static tk_hent heap_pop(tk_bpe_scratch *w) {
    tk_hent top = w->heap[0], last = w->heap[--w->nheap];
    size_t i = 0, n = w->nheap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const tk_hent *best = &last;
        if (l < n && hent_less(&w->heap[l], best)) m = l, best = &w->heap[l];
        if (r < n && hent_less(&w->heap[r], best)) m = r;
        if (m == i) break;
        w->heap[i] = w->heap[m];
        i = m;
    }
    if (n) w->heap[i] = last;
    return top;
}

static bool merge_of(const mt_tokenizer *tok, int32_t a, int32_t b, uint32_t *rank, int32_t *new_id) {
    uint64_t v;
    if (!tk_u64map_get(&tok->merges, (uint64_t)(uint32_t)a << 32 | (uint32_t)b, &v)) return false;
    *rank = (uint32_t)(v >> 32);
    *new_id = (int32_t)(uint32_t)v;
    return true;
}

/* BPE::merge_word + Word::merge_all for one pre-token. */
static mt_status bpe_word(const mt_tokenizer *tok, tk_bpe_scratch *w, const char *s, size_t n, tk_ids *out,
                          mt_error *err) {
    if (tok->ignore_merges) {
        int32_t id = tk_strmap_get(&tok->vocab, s, n);
        if (id >= 0) {
            ids_push(out, id);
            return MT_OK;
        }
    }
    w->nsym = 0;
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    bool unk_pending = false;
    size_t plen = tok->cont_prefix ? strlen(tok->cont_prefix) : 0;
    size_t slen = tok->eow_suffix ? strlen(tok->eow_suffix) : 0;
    for (size_t i = 0; i < n;) {
        size_t k = char_len(s + i, n - i);
        bool first = i == 0, last = i + k == n;
        const char *key = s + i;
        size_t klen = k;
        if ((!first && plen) || (last && slen)) {
            w->s.len = 0;
            if (!first && plen) tk_buf_put(&w->s, tok->cont_prefix, plen);
            tk_buf_put(&w->s, s + i, k);
            if (last && slen) tk_buf_put(&w->s, tok->eow_suffix, slen);
            key = w->s.p;
            klen = w->s.len;
        }
        int32_t id = tk_strmap_get(&tok->vocab, key, klen);
        if (id >= 0) {
            if (unk_pending) sym_add(w, unk_id, unk_len), unk_pending = false;
            sym_add(w, id, (uint32_t)k);
            i += k;
            continue;
        }
        if (tok->byte_fallback) {
            bool all = true;
            for (size_t b = 0; b < klen; b++)
                if (tok->byte_ids[(unsigned char)key[b]] < 0) all = false;
            if (all) {
                /* the library does not flush a pending unknown here either */
                for (size_t b = 0; b < klen; b++) sym_add(w, tok->byte_ids[(unsigned char)key[b]], 1);
                i += k;
                continue;
            }
        }
        if (tok->unk_token) {
            int32_t uid = tk_strmap_get(&tok->vocab, tok->unk_token, strlen(tok->unk_token));
            if (uid < 0)
                return mt_error_set(err, MT_ERR_FORMAT, "%s: model.unk_token '%s' is not in model.vocab", tok->origin,
                                    tok->unk_token);
            if (unk_pending && tok->fuse_unk)
                unk_len += (uint32_t)k;
            else {
                if (unk_pending) sym_add(w, unk_id, unk_len);
                unk_id = uid;
                unk_len = (uint32_t)k;
                unk_pending = true;
            }
        }
        i += k;
    }
    if (unk_pending) sym_add(w, unk_id, unk_len);

    w->nheap = 0;
    for (size_t i = 0; i + 1 < w->nsym; i++) {
        uint32_t rank;
        int32_t nid;
        if (merge_of(tok, w->sym[i].c, w->sym[i + 1].c, &rank, &nid)) heap_push(w, (tk_hent){rank, (uint32_t)i, nid});
    }
    while (w->nheap) {
        tk_hent top = heap_pop(w);
        tk_sym *cur = &w->sym[top.pos];
        if (!cur->len || cur->next < 0) continue;
        int32_t next_pos = cur->next;
        tk_sym right = w->sym[next_pos];
        uint32_t rank;
        int32_t nid;
        /* an expired entry: the pair at pos changed since it was queued */
        if (!merge_of(tok, cur->c, right.c, &rank, &nid) || nid != top.new_id) continue;
        cur->c = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        w->sym[next_pos].len = 0;
        if (right.next >= 0 && (size_t)right.next < w->nsym) w->sym[right.next].prev = (int32_t)top.pos;
        if (cur->prev >= 0 && merge_of(tok, w->sym[cur->prev].c, cur->c, &rank, &nid))
            heap_push(w, (tk_hent){rank, (uint32_t)cur->prev, nid});
        if (cur->next >= 0 && (size_t)cur->next < w->nsym && merge_of(tok, cur->c, w->sym[cur->next].c, &rank, &nid))
            heap_push(w, (tk_hent){rank, top.pos, nid});
    }
    for (size_t i = 0; i < w->nsym; i++)
        if (w->sym[i].len) ids_push(out, w->sym[i].c);
    return MT_OK;
}

mt_status mt_tokenizer_encode(const mt_tokenizer *tok, const char *text, size_t len, bool add_special, int32_t **ids,
                              size_t *n_ids, mt_error *err) {
    *ids = NULL;
    *n_ids = 0;
    size_t bad;
    if (!mt_utf8_valid(text, len, &bad))
        return mt_error_set(err, MT_ERR_INVALID, "%s: the text to encode is not valid UTF-8 (byte %zu)", tok->origin,
                            bad);
    tk_match *m = tk_match_new();
    tk_pieces pieces;
    mt_status st = tk_pretokenize(tok, m, text, len, false, &pieces, err);
    tk_match_free(m);
    if (st) return st;
    tk_ids out = {0};
    if (add_special)
        for (int i = 0; i < tok->n_prefix; i++) ids_push(&out, tok->prefix_ids[i]);
    tk_bpe_scratch w = {0};
    for (size_t i = 0; i < pieces.n && !st; i++) {
        const tk_piece *pc = &pieces.v[i];
        if (pc->id >= 0)
            ids_push(&out, pc->id);
        else if (pc->len)
            st = bpe_word(tok, &w, pieces.text.p + pc->off, pc->len, &out, err);
    }
    if (add_special)
        for (int i = 0; i < tok->n_suffix; i++) ids_push(&out, tok->suffix_ids[i]);
    free(w.sym);
    free(w.heap);
    tk_buf_free(&w.s);
    tk_pieces_free(&pieces);
    if (st) {
        free(out.v);
        return st;
    }
    if (!out.v) out.v = mt_xmalloc(sizeof *out.v);
    *ids = out.v;
    *n_ids = out.n;
    return MT_OK;
}
