/* corpus-medical.c — the medical corpus's source: GCIDE entries whose definitions carry the
 * field tags (Med.), (Anat.), (Pathol.), (Physiol.) or (Surg.), rendered as clean
 * "headword: definition" text, one document per entry. */
#define _GNU_SOURCE /* PATH_MAX, which corpus-impl.h uses */
#include "corpus-impl.h"

#include <stdio.h>
#include <string.h>

mt_status mt_corpus_collect_medical(mt_corpus_ctx *c, mt_error *err) {
    mt_gcide g;
    mt_status st = mt_gcide_open(c, &g, err);
    if (st != MT_OK) return st;
    mt_corpus_buf text = {0};
    for (size_t i = 0; i < g.n; i++) {
        const char *e = g.dict.p + g.ents[i].off;
        size_t len = (size_t)g.ents[i].len;
        c->st->entries_read++;
        if (!mt_gcide_entry_tags(e, len)) continue;
        unsigned tags;
        mt_gcide_render(e, len, true, &text, &tags);
        if (!text.len) continue;
        /* "gcide/<headword>@<byte offset>": headwords repeat (noun and adjective entries) */
        const char *colon = memchr(text.p, ':', text.len);
        char id[256];
        snprintf(id, sizeof id, "gcide/%.*s@%llu", colon ? (int)(colon - text.p) : 0, text.p,
                 (unsigned long long)g.ents[i].off);
        if (mt_corpus_add_doc(c, id, "gcide", text.p, text.len, 0)) c->docs[c->n_docs - 1].tags = tags;
    }
    if (text.oom) c->oom = true;
    mt_corpus_buf_free(&text);
    mt_gcide_close(&g);
    return MT_OK;
}
