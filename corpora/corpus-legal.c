/* corpus-legal.c — the legal corpus's sources: the license texts in
 * /usr/share/common-licenses and every installed package's /usr/share/doc/<pkg>/copyright
 * (DEP-5 or free-form), one document each, with paragraph-level dedup of repeated licenses. */
#define _GNU_SOURCE /* PATH_MAX, which corpus-impl.h uses */
#include "corpus-impl.h"

#include <stdio.h>
#include <string.h>

static bool starts_with(const char *s, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && !memcmp(s, prefix, k);
}

/* In a machine-readable (DEP-5) copyright file, the Files, Files-Excluded and Files-Included
 * fields list paths, not legal text; Boost's alone lists 2 MB of them. They are removed, field
 * name and continuation lines, in place. */
static void drop_dep5_file_lists(mt_corpus_buf *t) {
    if (!starts_with(t->p, t->len, "Format:")) return;
    size_t w = 0;
    bool dropping = false;
    for (size_t ls = 0; ls < t->len;) {
        const char *nl = memchr(t->p + ls, '\n', t->len - ls);
        size_t le = nl ? (size_t)(nl - t->p) + 1 : t->len;
        const char *line = t->p + ls;
        size_t n = le - ls;
        bool continuation = n && (line[0] == ' ' || line[0] == '\t');
        if (!continuation) dropping = starts_with(line, n, "Files:") || starts_with(line, n, "Files-Excluded:") ||
                                      starts_with(line, n, "Files-Included:");
        if (!dropping) {
            memmove(t->p + w, line, n);
            w += n;
        }
        ls = le;
    }
    t->len = w;
    t->p[w] = '\0';
}

/* common-licenses first, so the canonical text of each license is the copy that is kept and
 * the copies pasted into copyright files are the ones dropped as duplicate paragraphs. */
static void add_file(mt_corpus_ctx *c, const char *rel, const char *source, mt_corpus_buf *text) {
    char path[PATH_MAX];
    if (!mt_corpus_path(c, rel, path, sizeof path)) {
        c->st->files_skipped++;
        return;
    }
    if (!mt_corpus_load_text(c, path, text)) return;
    drop_dep5_file_lists(text);
    mt_corpus_add_doc(c, rel, source, text->p, text->len, MT_CORPUS_DOC_PARAGRAPHS);
}

mt_status mt_corpus_collect_legal(mt_corpus_ctx *c, mt_error *err) {
    char licenses[PATH_MAX], docs[PATH_MAX];
    if (!mt_corpus_path(c, "usr/share/common-licenses", licenses, sizeof licenses) ||
        !mt_corpus_path(c, "usr/share/doc", docs, sizeof docs))
        return mt_error_set(err, MT_ERR_INVALID, "%s: root path too long", c->root);
    bool have_licenses = mt_corpus_is_dir_inside(c, licenses), have_docs = mt_corpus_is_dir_inside(c, docs);
    if (!have_licenses && !have_docs)
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s and %s: not found (the legal corpus reads the license texts "
                            "Debian ships there)", licenses, docs);
    mt_corpus_buf text = {0};
    char **names;
    size_t n;
    char rel[PATH_MAX];
    mt_corpus_list_dir(licenses, &names, &n);
    for (size_t i = 0; i < n; i++) {
        snprintf(rel, sizeof rel, "usr/share/common-licenses/%s", names[i]);
        add_file(c, rel, "common-licenses", &text);
    }
    mt_corpus_names_free(names, n);

    mt_corpus_list_dir(docs, &names, &n);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        snprintf(rel, sizeof rel, "usr/share/doc/%s/copyright", names[i]);
        if (mt_corpus_path(c, rel, path, sizeof path) && mt_path_exists(path)) add_file(c, rel, "copyright", &text);
    }
    mt_corpus_names_free(names, n);
    if (text.oom) c->oom = true;
    mt_corpus_buf_free(&text);
    return MT_OK;
}
