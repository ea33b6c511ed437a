/* pair_rows.c — preference pairs into rows: prompt and completions tokenized separately as
 * TRL's DPOTrainer does (the prompt with the tokenizer's special tokens, each completion
 * without them and followed by EOS; conversational pairs through the chat template first),
 * then truncated: the prompt keeps its last data.max_prompt_len tokens, and prompt +
 * completion fit max_seq_len + 1 tokens by cutting the completion's end. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat.h"
#include "pairs-impl.h"
#include "store/store.h"

void mt_pair_set_free(mt_pair_set *s) {
    free(s->hash);
    mt_rows_free(&s->rows);
    free(s->cmask);
    free(s->clen);
    free(s->score);
    memset(s, 0, sizeof *s);
}

void mt_pairs_truncation_key(const mt_recipe *r, int T, char *out, size_t cap) {
    mt_ref_truncation_key(out, cap, T + 1, r->data.max_prompt_len == MT_RECIPE_UNSET ? 0 : r->data.max_prompt_len, 0,
                          "keep_start");
}

/* One pair in memory before it becomes rows. */
typedef struct raw_pair {
    mt_pair_format format;
    char *prompt, *chosen, *rejected;
    char hash[65];
    double score;
    char where[4200]; /* "file:line" or "dataset NAME pair ID", for messages */
} raw_pair;

static void raw_free(raw_pair *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(p[i].prompt);
        free(p[i].chosen);
        free(p[i].rejected);
    }
    free(p);
}

static bool conversational(mt_pair_format f) {
    return f == MT_PAIR_CONVERSATIONAL || f == MT_PAIR_IMPLICIT_CONVERSATIONAL;
}

/* [{"role","content"}...] → messages appended to *msgs (strings borrowed from the cJSON tree). */
static mt_status parse_messages(const char *json, const char *where, cJSON **tree, mt_chat_message **msgs, size_t *n,
                                mt_error *err) {
    *tree = cJSON_Parse(json);
    if (!cJSON_IsArray(*tree)) return mt_error_set(err, MT_ERR_FORMAT, "%s: a message list is not a JSON array", where);
    int k = cJSON_GetArraySize(*tree);
    *msgs = mt_xrealloc(*msgs, (*n + (size_t)k + 1) * sizeof **msgs);
    for (int i = 0; i < k; i++) {
        const cJSON *m = cJSON_GetArrayItem(*tree, i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(role) || !cJSON_IsString(content))
            return mt_error_set(err, MT_ERR_FORMAT, "%s: messages[%d] needs string \"role\" and \"content\"", where, i);
        (*msgs)[(*n)++] = (mt_chat_message){role->valuestring, content->valuestring};
    }
    return MT_OK;
}

/* The prompt and one completion of a conversational pair as text: the prompt rendered with a
 * generation prompt, the completion as what rendering prompt + completion adds to it (TRL's
 * maybe_apply_chat_template). */
static mt_status render_conv(const mt_tokenizer *tok, const char *prompt, const char *completion, const char *where,
                             char **prompt_text, char **completion_text, mt_error *err) {
    mt_chat_message *msgs = NULL;
    size_t n = 0;
    cJSON *pt = NULL, *ct = NULL;
    char *open = NULL, *full = NULL;
    size_t open_len = 0, full_len = 0;
    mt_status st = parse_messages(prompt, where, &pt, &msgs, &n, err);
    size_t n_prompt = n;
    if (st == MT_OK) st = parse_messages(completion, where, &ct, &msgs, &n, err);
    if (st == MT_OK) st = mt_chat_render(tok, msgs, n_prompt, true, &open, &open_len, err);
    if (st == MT_OK) st = mt_chat_render(tok, msgs, n, false, &full, &full_len, err);
    if (st == MT_OK && (full_len < open_len || memcmp(full, open, open_len) != 0))
        st = mt_error_set(err, MT_ERR_UNSUPPORTED,
                          "%s: the chat template does not render prompt + completion as an extension of the "
                          "prompt with a generation prompt",
                          where);
    if (st == MT_OK) {
        *prompt_text = open;
        *completion_text = mt_xmalloc(full_len - open_len + 1);
        memcpy(*completion_text, full + open_len, full_len - open_len);
        (*completion_text)[full_len - open_len] = 0;
        open = NULL;
    }
    free(open);
    free(full);
    free(msgs);
    cJSON_Delete(pt);
    cJSON_Delete(ct);
    if (st != MT_OK && st != MT_ERR_FORMAT && st != MT_ERR_UNSUPPORTED) mt_error_prefix(err, "%s: ", where);
    return st;
}

void mt_pairs_fill_batch(mt_batch_buf *buf, const mt_pair_set *s, const int64_t *pidx, int n, int B, int64_t *rowidx) {
    for (int b = 0; b < B; b++) {
        rowidx[b] = b < n ? 2 * pidx[b] : -1;
        rowidx[B + b] = b < n ? 2 * pidx[b] + 1 : -1;
    }
    /* fill takes the present rows first; place chosen and rejected halves separately */
    mt_batch_buf half = *buf;
    half.B = B;
    mt_batch_buf_fill(&half, &s->rows, rowidx, n);
    size_t o = (size_t)B * buf->T;
    half.tokens += o;
    half.targets += o;
    half.pos += o;
    half.kv_start += o;
    mt_batch_buf_fill(&half, &s->rows, rowidx + B, n);
}

mt_status mt_prompt_encode(const mt_tokenizer *tok, const char *prompt, bool conversational, const char *where,
                           int32_t **ids, size_t *n, mt_error *err) {
    if (!conversational) {
        mt_status st = mt_tokenizer_encode(tok, prompt, strlen(prompt), true, ids, n, err);
        if (st != MT_OK) mt_error_prefix(err, "%s: ", where);
        return st;
    }
    mt_chat_message *msgs = NULL;
    size_t k = 0, len = 0;
    cJSON *tree = NULL;
    char *text = NULL;
    mt_status st = parse_messages(prompt, where, &tree, &msgs, &k, err);
    if (st == MT_OK) st = mt_chat_render(tok, msgs, k, true, &text, &len, err);
    /* a rendered template carries its own BOS */
    if (st == MT_OK) st = mt_tokenizer_encode(tok, text, len, false, ids, n, err);
    if (st != MT_OK && st != MT_ERR_FORMAT) mt_error_prefix(err, "%s: ", where);
    free(text);
    free(msgs);
    cJSON_Delete(tree);
    return st;
}

typedef struct tok_seq {
    int32_t *ids;
    size_t n;
} tok_seq;

static mt_status encode(const mt_tokenizer *tok, const char *text, bool special, tok_seq *out, const char *where,
                        mt_error *err) {
    mt_status st = mt_tokenizer_encode(tok, text, strlen(text), special, &out->ids, &out->n, err);
    if (st != MT_OK) mt_error_prefix(err, "%s: ", where);
    return st;
}

/* Writes row `row` from prompt p and completion c (c already followed by EOS). Returns whether
 * anything was cut. */
static bool write_row(mt_pair_set *s, int64_t row, int T, const tok_seq *p, const tok_seq *c, int max_prompt,
                      bool full_targets, int32_t pad) {
    bool cut = false;
    size_t P = p->n, skip = 0;
    if (max_prompt > 0 && P > (size_t)max_prompt) {
        skip = P - (size_t)max_prompt;
        cut = true;
    }
    /* a prompt that leaves no room for the completion keeps its last half of the row */
    if (P - skip >= (size_t)T) {
        skip = P - (size_t)T / 2;
        cut = true;
    }
    P -= skip;
    size_t C = c->n;
    if (P + C > (size_t)T + 1) {
        C = (size_t)T + 1 - P;
        cut = true;
    }
    size_t L = P + C; /* tokens of the sequence; positions 0..L-2 predict 1..L-1 */
    int32_t *tk = s->rows.tokens + row * T, *tg = s->rows.targets + row * T, *ps = s->rows.pos + row * T,
            *ks = s->rows.kv_start + row * T;
    uint8_t *cm = s->cmask + row * T;
    int32_t n_targets = 0;
    for (size_t t = 0; t < (size_t)T; t++) {
        ps[t] = (int32_t)t;
        ks[t] = 0;
        if (t + 1 < L) {
            tk[t] = t < P ? p->ids[skip + t] : c->ids[t - P];
            int32_t next = t + 1 < P ? p->ids[skip + t + 1] : c->ids[t + 1 - P];
            bool completion = t + 1 >= P;
            cm[t] = completion;
            tg[t] = completion || full_targets ? next : MT_IGNORE_INDEX;
            n_targets += tg[t] != MT_IGNORE_INDEX;
        } else {
            tk[t] = pad;
            tg[t] = MT_IGNORE_INDEX;
            cm[t] = 0;
        }
    }
    s->rows.n_targets[row] = n_targets;
    s->clen[row] = (float)C;
    return cut;
}

static mt_status build(const mt_run *run, raw_pair *raw, size_t n, bool full_chosen, mt_pair_set *s, mt_error *err) {
    const mt_recipe *r = run->r;
    int T = run->T;
    memset(s, 0, sizeof *s);
    s->n = (int64_t)n;
    s->hash = mt_xcalloc(n ? n : 1, sizeof *s->hash);
    s->score = mt_xcalloc(n ? n : 1, sizeof *s->score);
    size_t rows = 2 * n;
    s->rows.T = T;
    s->rows.n_rows = (int64_t)rows;
    s->rows.tokens = mt_xcalloc(rows * T + 1, sizeof(int32_t));
    s->rows.targets = mt_xcalloc(rows * T + 1, sizeof(int32_t));
    s->rows.pos = mt_xcalloc(rows * T + 1, sizeof(int32_t));
    s->rows.kv_start = mt_xcalloc(rows * T + 1, sizeof(int32_t));
    s->rows.n_targets = mt_xcalloc(rows + 1, sizeof(int32_t));
    s->cmask = mt_xcalloc(rows * T + 1, 1);
    s->clen = mt_xcalloc(rows + 1, sizeof(float));
    int32_t eos = mt_tokenizer_eos_id(run->tok), pad = eos >= 0 ? eos : 0;
    int max_prompt = r->data.max_prompt_len == MT_RECIPE_UNSET ? 0 : r->data.max_prompt_len;
    mt_status st = MT_OK;
    for (size_t i = 0; i < n && st == MT_OK; i++) {
        raw_pair *q = &raw[i];
        memcpy(s->hash[i], q->hash, 65);
        s->score[i] = q->score;
        char *ptext = NULL, *ctext = NULL, *rtext = NULL, *ptext2 = NULL;
        tok_seq p = {0}, c = {0}, j = {0};
        bool conv = conversational(q->format);
        if (conv) {
            st = render_conv(run->tok, q->prompt, q->chosen, q->where, &ptext, &ctext, err);
            if (st == MT_OK) st = render_conv(run->tok, q->prompt, q->rejected, q->where, &ptext2, &rtext, err);
        } else {
            ptext = mt_xstrdup(q->prompt);
            ctext = mt_xstrdup(q->chosen);
            rtext = mt_xstrdup(q->rejected);
        }
        /* a rendered template carries its own BOS; plain text gets the tokenizer's */
        if (st == MT_OK) st = encode(run->tok, ptext, !conv, &p, q->where, err);
        if (st == MT_OK) st = encode(run->tok, ctext, false, &c, q->where, err);
        if (st == MT_OK) st = encode(run->tok, rtext, false, &j, q->where, err);
        if (st == MT_OK) {
            if (eos >= 0) {
                c.ids = mt_xrealloc(c.ids, (c.n + 1) * sizeof *c.ids);
                c.ids[c.n++] = eos;
                j.ids = mt_xrealloc(j.ids, (j.n + 1) * sizeof *j.ids);
                j.ids[j.n++] = eos;
            }
            if (c.n == 0 || j.n == 0)
                st = mt_error_set(err, MT_ERR_FORMAT, "%s: an empty completion (and no EOS token to train on)",
                                  q->where);
        }
        if (st == MT_OK) {
            bool cut = write_row(s, (int64_t)(2 * i), T, &p, &c, max_prompt, full_chosen, pad);
            cut |= write_row(s, (int64_t)(2 * i + 1), T, &p, &j, max_prompt, false, pad);
            s->n_truncated += cut;
        }
        free(ptext);
        free(ptext2);
        free(ctext);
        free(rtext);
        free(p.ids);
        free(c.ids);
        free(j.ids);
    }
    if (st != MT_OK) mt_pair_set_free(s);
    return st;
}

/* data.pairs: the dataset's split in the store. */
static mt_status from_store(const mt_run *run, bool eval, raw_pair **out, size_t *n, mt_error *err) {
    const mt_recipe *r = run->r;
    if (!mt_path_exists(r->output.store))
        return mt_error_set(err, MT_ERR_NOT_FOUND, "data.pairs: no store at %s (import pairs with `moetune pairs import`)",
                            r->output.store);
    mt_store *s;
    MT_TRY(mt_store_open(&s, r->output.store, false, err));
    mt_pairs_query q = {.dataset = r->data.pairs, .split = eval ? "eval" : "train", .limit = -1};
    mt_pair_record_list l = {0};
    mt_status st = mt_store_pairs_list(s, &q, &l, err);
    mt_store_close(s);
    if (st != MT_OK) {
        mt_error_prefix(err, "data.pairs: ");
        return st;
    }
    raw_pair *raw = mt_xcalloc(l.n ? l.n : 1, sizeof *raw);
    for (size_t i = 0; i < l.n; i++) {
        mt_pair_record *p = &l.items[i];
        raw[i].format = p->format;
        raw[i].prompt = p->prompt;
        raw[i].chosen = p->chosen;
        raw[i].rejected = p->rejected;
        p->prompt = p->chosen = p->rejected = NULL;
        memcpy(raw[i].hash, p->hash, 65);
        raw[i].score = p->score;
        snprintf(raw[i].where, sizeof raw[i].where, "%s: pair dataset %s, pair %lld", r->output.store, r->data.pairs,
                 (long long)p->id);
    }
    *n = l.n;
    *out = raw;
    mt_pair_record_list_free(&l);
    return MT_OK;
}

/* TRL JSONL files; split: -1 every pair, 0 the train side of eval_split, 1 its eval side. */
static mt_status from_files(const mt_recipe_list *paths, int split, double eval_split, raw_pair **out, size_t *n,
                            mt_error *err) {
    raw_pair *raw = NULL;
    size_t cnt = 0, cap = 0;
    mt_status st = MT_OK;
    for (size_t f = 0; f < paths->n && st == MT_OK; f++) {
        const char *path = paths->items[f];
        char *text;
        size_t len;
        st = mt_read_file(path, &text, &len, err);
        if (st != MT_OK) break;
        long line = 0;
        for (size_t off = 0; off < len && st == MT_OK;) {
            size_t e = off;
            while (e < len && text[e] != '\n') e++;
            line++;
            size_t a = off, b = e;
            while (a < b && (text[a] == ' ' || text[a] == '\t' || text[a] == '\r')) a++;
            while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\r')) b--;
            if (b > a) {
                mt_pair_parsed pp;
                char why[256];
                if (!mt_pairs_parse_line(text + a, b - a, &pp, why, sizeof why)) {
                    st = mt_error_set(err, MT_ERR_FORMAT, "%s:%ld: %s", path, line, why);
                } else {
                    bool is_eval = split >= 0 && mt_pairs_is_eval(pp.hash, eval_split);
                    if (split < 0 || is_eval == (split == 1)) {
                        if (cnt == cap) {
                            cap = cap ? 2 * cap : 64;
                            raw = mt_xrealloc(raw, cap * sizeof *raw);
                        }
                        raw_pair *q = &raw[cnt++];
                        memset(q, 0, sizeof *q);
                        q->format = pp.format;
                        q->prompt = pp.prompt;
                        q->chosen = pp.chosen;
                        q->rejected = pp.rejected;
                        pp.prompt = pp.chosen = pp.rejected = NULL;
                        memcpy(q->hash, pp.hash, 65);
                        q->score = pp.score;
                        snprintf(q->where, sizeof q->where, "%s:%ld", path, line);
                    }
                    mt_pair_parsed_free(&pp);
                }
            }
            off = e + 1;
        }
        free(text);
    }
    if (st != MT_OK) {
        raw_free(raw, cnt);
        return st;
    }
    *out = raw;
    *n = cnt;
    return MT_OK;
}

mt_status mt_pairs_load_run(const mt_run *run, bool eval, bool full_chosen_targets, mt_pair_set *out,
                            mt_error *err) {
    const mt_recipe *r = run->r;
    raw_pair *raw = NULL;
    size_t n = 0;
    if (r->data.pairs)
        MT_TRY(from_store(run, eval, &raw, &n, err));
    else if (eval && r->data.eval.n)
        MT_TRY(from_files(&r->data.eval, -1, 0, &raw, &n, err));
    else if (eval && r->data.eval_split <= 0)
        n = 0;
    else
        MT_TRY(from_files(&r->data.train, r->data.eval_split > 0 ? (eval ? 1 : 0) : -1, r->data.eval_split, &raw, &n,
                          err));
    mt_status st = build(run, raw, n, full_chosen_targets, out, err);
    raw_free(raw, n);
    return st;
}
