/* corpus-general.c — the general corpus's sources, prose that is neither legal nor medical:
 * GCIDE entries without a medical tag, GNU info manuals (/usr/share/info, one document per
 * node) and README, NEWS and .txt files under /usr/share/doc; license and copyright text is
 * filtered out so that the legal adaptation has something to measure. */
#define _GNU_SOURCE
#include "corpus-impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_DOC_DEPTH 4
static const unsigned FILE_FLAGS = MT_CORPUS_DOC_PARAGRAPHS | MT_CORPUS_DOC_NO_LEGAL | MT_CORPUS_DOC_CHUNK;

static mt_status add_gcide(mt_corpus_ctx *c, mt_error *err) {
    mt_gcide g;
    mt_error quiet = {0};
    mt_status st = mt_gcide_open(c, &g, &quiet);
    if (st == MT_ERR_NOT_FOUND) return MT_OK; /* general text has other sources */
    if (st != MT_OK) {
        mt_error_set(err, quiet.code, "%s", quiet.msg);
        return st;
    }
    mt_corpus_buf text = {0};
    for (size_t i = 0; i < g.n; i++) {
        const char *e = g.dict.p + g.ents[i].off;
        size_t len = (size_t)g.ents[i].len;
        c->st->entries_read++;
        if (mt_gcide_entry_tags(e, len)) continue; /* the medical corpus's */
        unsigned tags;
        mt_gcide_render(e, len, false, &text, &tags);
        if (!text.len) continue;
        const char *colon = memchr(text.p, ':', text.len);
        char id[256];
        snprintf(id, sizeof id, "gcide/%.*s@%llu", colon ? (int)(colon - text.p) : 0, text.p,
                 (unsigned long long)g.ents[i].off);
        mt_corpus_add_doc(c, id, "gcide", text.p, text.len, 0);
    }
    if (text.oom) c->oom = true;
    mt_corpus_buf_free(&text);
    mt_gcide_close(&g);
    return MT_OK;
}

static bool has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcmp(s + n - k, suf);
}

/* "x.info", "x.info.gz", "x.info-2.gz" */
static bool info_file(const char *name) {
    const char *p = strstr(name, ".info");
    if (!p) return false;
    p += 5;
    if (*p == '-') {
        p++;
        if (*p < '0' || *p > '9') return false;
        while (*p >= '0' && *p <= '9') p++;
    }
    return !*p || !strcmp(p, ".gz");
}

static bool line_of(const char *s, size_t n, char ch) {
    if (n < 3) return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] != ch) return false;
    return true;
}

/* One info node as prose: the "File: ..., Node: ..." header, the menu (to the node's end)
 * and the rules under section titles dropped. */
static void add_info_node(mt_corpus_ctx *c, const char *rel, const char *s, size_t n, mt_corpus_buf *out) {
    const char *nl = memchr(s, '\n', n);
    size_t hl = nl ? (size_t)(nl - s) : n;
    const char *node = memmem(s, hl, "Node: ", 6);
    if (strncmp(s, "File: ", 6) != 0 || !node) return; /* tag table, indirect table */
    node += 6;
    const char *node_end = memchr(node, ',', hl - (size_t)(node - s));
    size_t node_len = node_end ? (size_t)(node_end - node) : hl - (size_t)(node - s);
    char title[256];
    snprintf(title, sizeof title, "%.*s", (int)node_len, node);
    if (strcasestr(title, "licen") || strcasestr(title, "copying") || strcasestr(title, "copyright") ||
        strcasestr(title, "index"))
        return;
    out->len = 0;
    for (size_t ls = hl + 1; ls < n;) {
        const char *p = memchr(s + ls, '\n', n - ls);
        size_t le = p ? (size_t)(p - s) : n;
        const char *line = s + ls;
        size_t len = le - ls;
        ls = le + 1;
        if (len >= 7 && !strncmp(line, "* Menu:", 7)) break;
        if (line_of(line, len, '=') || line_of(line, len, '-') || line_of(line, len, '*') || line_of(line, len, '.'))
            continue;
        mt_corpus_buf_put(out, line, len);
        mt_corpus_buf_putc(out, '\n');
    }
    char id[PATH_MAX + 300];
    snprintf(id, sizeof id, "%s#%s", rel, title);
    mt_corpus_add_doc(c, id, "info", out->p ? out->p : "", out->len, FILE_FLAGS);
}

static void add_info(mt_corpus_ctx *c) {
    char dir[PATH_MAX];
    if (!mt_corpus_path(c, "usr/share/info", dir, sizeof dir) || !mt_corpus_is_dir_inside(c, dir)) return;
    char **names;
    size_t n;
    mt_corpus_list_dir(dir, &names, &n);
    mt_corpus_buf raw = {0}, text = {0}, node = {0};
    for (size_t i = 0; i < n; i++) {
        if (!info_file(names[i])) continue;
        char rel[PATH_MAX], path[PATH_MAX];
        snprintf(rel, sizeof rel, "usr/share/info/%s", names[i]);
        if (!mt_corpus_path(c, rel, path, sizeof path) || !mt_corpus_load_raw(c, path, &raw)) continue;
        /* Nodes are separated by the unit separator (0x1F), a control character that text
         * decoding drops: split the raw bytes first, then decode each node. */
        bool repaired_any = false;
        for (size_t s = 0; s < raw.len;) {
            const char *us = memchr(raw.p + s, '\037', raw.len - s);
            size_t e = us ? (size_t)(us - raw.p) : raw.len;
            bool repaired = false;
            text.len = 0;
            if (mt_corpus_decode_text(raw.p + s, e - s, &text, &repaired) && text.len) {
                size_t k = 0;
                while (k < text.len && text.p[k] == '\n') k++;
                add_info_node(c, rel, text.p + k, text.len - k, &node);
            }
            repaired_any |= repaired;
            s = e + 1;
        }
        if (repaired_any) c->st->files_repaired++;
    }
    if (raw.oom || text.oom || node.oom) c->oom = true;
    mt_corpus_buf_free(&raw);
    mt_corpus_buf_free(&text);
    mt_corpus_buf_free(&node);
    mt_corpus_names_free(names, n);
}

/* README*, NEWS* and *.txt, compressed or not; never the legal files or changelogs (lists of
 * names and dates rather than prose), nor markup formats. */
static bool doc_file(const char *name) {
    char base[256];
    snprintf(base, sizeof base, "%s", name);
    size_t n = strlen(base);
    if (n > 3 && !strcmp(base + n - 3, ".gz")) base[n -= 3] = '\0';
    static const char *const never[] = {"copyright", "licen", "copying", "changelog", "authors", ".htm", ".xml",
                                        ".json", ".pdf", ".ps"};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        if (strcasestr(base, never[i])) return false;
    if (has_suffix(base, ".txt")) return true;
    size_t k = !strncasecmp(base, "README", 6) ? 6 : !strncasecmp(base, "NEWS", 4) ? 4 : 0;
    return k && (base[k] == '\0' || base[k] == '.' || base[k] == '-' || base[k] == '_');
}

static void walk_docs(mt_corpus_ctx *c, const char *rel, int depth, mt_corpus_buf *text) {
    char dir[PATH_MAX];
    if (!mt_corpus_path(c, rel, dir, sizeof dir)) return;
    char **names;
    size_t n;
    mt_corpus_list_dir(dir, &names, &n);
    for (size_t i = 0; i < n; i++) {
        char sub[PATH_MAX], path[PATH_MAX];
        if (snprintf(sub, sizeof sub, "%s/%s", rel, names[i]) >= (int)sizeof sub ||
            !mt_corpus_path(c, sub, path, sizeof path))
            continue;
        if (mt_is_dir(path)) {
            /* a folder reached twice (a symlinked package folder) is walked once */
            char real[PATH_MAX];
            if (depth < MAX_DOC_DEPTH && mt_corpus_is_dir_inside(c, path) && realpath(path, real) &&
                !mt_corpus_set_insert(&c->real_paths, mt_corpus_hash(real, strlen(real)) ^ 1))
                walk_docs(c, sub, depth + 1, text);
        } else if (doc_file(names[i]) && mt_corpus_load_text(c, path, text))
            mt_corpus_add_doc(c, sub, "doc", text->p, text->len, FILE_FLAGS);
    }
    mt_corpus_names_free(names, n);
}

mt_status mt_corpus_collect_general(mt_corpus_ctx *c, mt_error *err) {
    mt_status st = add_gcide(c, err);
    if (st != MT_OK) return st;
    add_info(c);
    char docs[PATH_MAX];
    if (mt_corpus_path(c, "usr/share/doc", docs, sizeof docs) && mt_corpus_is_dir_inside(c, docs)) {
        mt_corpus_buf text = {0};
        walk_docs(c, "usr/share/doc", 1, &text);
        if (text.oom) c->oom = true;
        mt_corpus_buf_free(&text);
    }
    return MT_OK;
}
