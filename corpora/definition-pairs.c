/* definition-pairs.c — preference pairs from the medical corpus: the prompt names a term
 * ("Abdomen:"), chosen is its own GCIDE definition and rejected the definition of another
 * term, so a model prefers the right one only if it has learnt what the terms mean. The
 * corpus is built first (mt_corpus_build into a scratch folder), so the pairs come from the
 * same entries, dedup and filters as `moetune data medical`. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "corpora.h"

typedef struct entry {
    char *term, *def;
} entry;

/* The first sentence of a definition, at most max_chars bytes cut at a word boundary (never
 * inside a UTF-8 character). */
static char *first_sentence(const char *d, size_t max_chars) {
    size_t n = strlen(d), end = n;
    for (size_t i = 0; i + 1 < n; i++)
        if ((d[i] == '.' || d[i] == ';') && d[i + 1] == ' ') {
            end = d[i] == '.' ? i + 1 : i; /* a clause ends without its semicolon */
            break;
        }
    if (end > max_chars) {
        end = max_chars;
        while (end > 0 && d[end] != ' ') end--;
        if (end == 0) end = max_chars;
        while (end > 0 && ((unsigned char)d[end] & 0xC0) == 0x80) end--;
    }
    while (end > 0 && d[end - 1] == ' ') end--;
    char *s = mt_xmalloc(end + 1);
    memcpy(s, d, end);
    s[end] = 0;
    return s;
}

/* pre + s + post, malloc'ed */
static char *prefixed(const char *s, const char *post, const char *pre) {
    size_t n = strlen(pre) + strlen(s) + strlen(post) + 1;
    char *o = mt_xmalloc(n);
    snprintf(o, n, "%s%s%s", pre, s, post);
    return o;
}

static mt_status read_entries(const char *path, size_t max_chars, entry **es, size_t *n, size_t *cap,
                              uint64_t *skipped, mt_error *err) {
    char *text;
    size_t len;
    MT_TRY(mt_read_file(path, &text, &len, err));
    for (size_t off = 0; off < len;) {
        size_t e = off;
        while (e < len && text[e] != '\n') e++;
        text[e] = 0;
        cJSON *j = cJSON_Parse(text + off);
        off = e + 1;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
        const char *s = cJSON_IsString(t) ? t->valuestring : NULL;
        const char *colon = s ? strstr(s, ": ") : NULL;
        if (!colon || colon == s || colon - s > 60) {
            (*skipped)++;
            cJSON_Delete(j);
            continue;
        }
        char *def = first_sentence(colon + 2, max_chars);
        if (strlen(def) < 12) {
            (*skipped)++;
            free(def);
            cJSON_Delete(j);
            continue;
        }
        if (*n == *cap) {
            *cap = *cap ? 2 * *cap : 1024;
            *es = mt_xrealloc(*es, *cap * sizeof **es);
        }
        entry *x = &(*es)[(*n)++];
        x->term = mt_xmalloc((size_t)(colon - s) + 1);
        memcpy(x->term, s, (size_t)(colon - s));
        x->term[colon - s] = 0;
        x->def = def;
        cJSON_Delete(j);
    }
    free(text);
    return MT_OK;
}

mt_status mt_corpus_definition_pairs(const char *out_path, const mt_corpus_opts *opts, size_t max_chars,
                                     mt_definition_pairs_stats *stats, mt_error *err) {
    mt_definition_pairs_stats st = {0};
    /* a scratch corpus, where the system keeps temporary files */
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/moetune-defs-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) return mt_error_set(err, MT_ERR_IO, "cannot make a scratch folder %s", dir);
    char corpus[4200], eval[4300];
    snprintf(corpus, sizeof corpus, "%s/medical.jsonl", dir);
    mt_corpus_eval_path(corpus, eval, sizeof eval);
    mt_corpus_opts o = opts ? *opts : (mt_corpus_opts){0};
    if (!opts) mt_corpus_opts_default(&o);
    o.eval_fraction = 0; /* one file of pairs: `moetune pairs import` splits them by content */
    entry *es = NULL;
    size_t n = 0, cap = 0;
    mt_status s = mt_corpus_build(MT_CORPUS_KIND_MEDICAL, corpus, &o, NULL, err);
    if (s == MT_OK) s = read_entries(corpus, max_chars ? max_chars : 160, &es, &n, &cap, &st.entries_skipped, err);
    if (s == MT_OK && access(eval, F_OK) == 0)
        s = read_entries(eval, max_chars ? max_chars : 160, &es, &n, &cap, &st.entries_skipped, err);
    unlink(corpus);
    unlink(eval);
    rmdir(dir);
    if (s == MT_OK && n < 2) s = mt_error_set(err, MT_ERR_NOT_FOUND, "the medical corpus gave %zu definitions", n);
    mt_atomic_file *f = NULL;
    if (s == MT_OK) s = mt_atomic_file_open(&f, out_path, err);
    uint64_t seed = opts ? opts->seed : 0;
    for (size_t i = 0; s == MT_OK && i < n; i++) {
        /* another entry, the same for a given seed, never this one; a definition shared by two
         * terms cannot be the wrong answer */
        size_t j = (i + 1 + (size_t)(mt_hash_u64(seed, i) % (n - 1))) % n;
        if (!strcmp(es[i].def, es[j].def)) {
            st.same_definition++;
            continue;
        }
        cJSON *p = cJSON_CreateObject();
        char *prompt = prefixed(es[i].term, ":", ""), *chosen = prefixed(es[i].def, "", " "),
             *rejected = prefixed(es[j].def, "", " ");
        cJSON_AddStringToObject(p, "prompt", prompt);
        cJSON_AddStringToObject(p, "chosen", chosen);
        cJSON_AddStringToObject(p, "rejected", rejected);
        cJSON_AddStringToObject(p, "label_source", "gcide-definitions");
        char *line = cJSON_PrintUnformatted(p);
        s = mt_atomic_file_write(f, line, strlen(line), err);
        if (s == MT_OK) s = mt_atomic_file_write(f, "\n", 1, err);
        st.pairs++;
        free(line);
        free(prompt);
        free(chosen);
        free(rejected);
        cJSON_Delete(p);
    }
    if (s == MT_OK) s = mt_atomic_file_commit(f, err);
    else if (f) mt_atomic_file_abort(f);
    st.definitions = n;
    for (size_t i = 0; i < n; i++) {
        free(es[i].term);
        free(es[i].def);
    }
    free(es);
    if (stats) *stats = st;
    return s;
}
