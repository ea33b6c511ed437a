/* test_corpus.c — the domain corpus builder on the hand-made tree in tests/fixtures/corpus
 * (licenses and copyright files with repeated paragraphs, a dictzip'd GCIDE sample, an info
 * manual, READMEs): dedup counts, the held-out split, JSON escaping, medical tag selection,
 * the general corpus's filters and cap, errors; plus the real /usr/share/common-licenses. */
#include "testutil.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "corpora/corpora.h"

/* ---- a strict reader for the lines the builder writes: {"text": S, "source": S, "id": S} ---- */

typedef struct doc {
    char *text, *source, *id;
} doc;

typedef struct docs {
    doc *v;
    size_t n;
} docs;

static void put_utf8(char **o, unsigned cp) {
    unsigned char *u = (unsigned char *)*o;
    if (cp < 0x80) {
        *u++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *u++ = (unsigned char)(0xC0 | (cp >> 6));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *u++ = (unsigned char)(0xE0 | (cp >> 12));
        *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        *u++ = (unsigned char)(0xF0 | (cp >> 18));
        *u++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    *o = (char *)u;
}

static unsigned hex4(const char *s) {
    char buf[5] = {s[0], s[1], s[2], s[3], 0};
    char *end;
    unsigned long v = strtoul(buf, &end, 16);
    if (*end) fail_msg("bad \\u escape '%s'", buf);
    return (unsigned)v;
}

/* Parses the JSON string at *p (which must start with '"'), advancing past it. */
static char *json_string(const char **p) {
    const char *s = *p;
    assert_int_equal(*s, '"');
    s++;
    char *out = mt_xmalloc(strlen(s) * 2 + 1), *o = out;
    while (*s != '"') {
        unsigned char c = (unsigned char)*s;
        if (!c) fail_msg("unterminated JSON string");
        if (c < 0x20) fail_msg("raw control character 0x%02x inside a JSON string", c);
        if (c != '\\') {
            *o++ = *s++;
            continue;
        }
        s++;
        switch (*s) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp = hex4(s + 1);
            s += 4;
            if (cp >= 0xD800 && cp < 0xDC00) {
                assert_true(s[1] == '\\' && s[2] == 'u');
                cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4(s + 3) - 0xDC00);
                s += 6;
            }
            put_utf8(&o, cp);
            break;
        }
        default: fail_msg("bad escape '\\%c'", *s);
        }
        s++;
    }
    *o = '\0';
    *p = s + 1;
    return out;
}

static void expect(const char **p, const char *lit) {
    size_t n = strlen(lit);
    if (strncmp(*p, lit, n)) fail_msg("expected '%s' at '%.30s'", lit, *p);
    *p += n;
}

static docs read_docs(const char *path) {
    char *data;
    size_t len;
    mt_error err = {0};
    if (mt_read_file(path, &data, &len, &err) != MT_OK) fail_msg("%s", err.msg);
    docs d = {0};
    const char *p = data;
    while (*p) {
        d.v = mt_xrealloc(d.v, (d.n + 1) * sizeof *d.v);
        doc *x = &d.v[d.n++];
        expect(&p, "{\"text\": ");
        x->text = json_string(&p);
        expect(&p, ", \"source\": ");
        x->source = json_string(&p);
        expect(&p, ", \"id\": ");
        x->id = json_string(&p);
        expect(&p, "}\n");
    }
    free(data);
    return d;
}

static void free_docs(docs *d) {
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].text);
        free(d->v[i].source);
        free(d->v[i].id);
    }
    free(d->v);
    d->v = NULL;
    d->n = 0;
}

static const doc *find_id(const docs *d, const char *id) {
    for (size_t i = 0; i < d->n; i++)
        if (!strcmp(d->v[i].id, id)) return &d->v[i];
    return NULL;
}

static size_t count_containing(const docs *d, const char *needle) {
    size_t k = 0;
    for (size_t i = 0; i < d->n; i++) k += strstr(d->v[i].text, needle) != NULL;
    return k;
}

static uint64_t text_bytes(const docs *d) {
    uint64_t b = 0;
    for (size_t i = 0; i < d->n; i++) b += strlen(d->v[i].text);
    return b;
}

/* Builds a corpus from the fixture tree into dir/name.jsonl; returns train and eval docs. */
static void build(mt_corpus_kind kind, const char *dir, const char *name, const mt_corpus_opts *o,
                  mt_corpus_stats *st, docs *train, docs *eval) {
    char out[4096], ev[4096];
    snprintf(out, sizeof out, "%s/%s.jsonl", dir, name);
    assert_true(mt_corpus_eval_path(out, ev, sizeof ev));
    mt_corpus_opts opts;
    if (o)
        opts = *o;
    else {
        mt_corpus_opts_default(&opts);
        opts.root = mt_test_fixture("corpus");
    }
    mt_error err = {0};
    mt_status s = mt_corpus_build(kind, out, &opts, st, &err);
    if (s != MT_OK) fail_msg("build %s: %s", mt_corpus_kind_name(kind), err.msg);
    *train = read_docs(out);
    *eval = read_docs(ev);
    assert_int_equal(st->docs_train, train->n);
    assert_int_equal(st->docs_eval, eval->n);
    assert_int_equal(st->bytes_train, text_bytes(train));
    assert_int_equal(st->bytes_eval, text_bytes(eval));
}

static docs merged(const docs *a, const docs *b) {
    docs m = {mt_xmalloc((a->n + b->n + 1) * sizeof(doc)), a->n + b->n};
    memcpy(m.v, a->v, a->n * sizeof(doc));
    memcpy(m.v + a->n, b->v, b->n * sizeof(doc));
    return m;
}

/* ---- legal ---- */

static void test_legal_dedup_counts(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("corpus_legal");
    mt_corpus_stats st;
    docs train, eval;
    build(MT_CORPUS_KIND_LEGAL, dir, "legal", NULL, &st, &train, &eval);
    /* read: Example-1.0, Other-2.0 and the copyright files of alpha, beta, epsilon, eta, gamma,
     * zeta; skipped: the Example symlink, binary/ (NUL bytes), empty/, delta/ (symlink to alpha) */
    assert_int_equal(st.files_read, 8);
    assert_int_equal(st.files_skipped, 4);
    assert_int_equal(st.files_repaired, 1); /* gamma's Latin-1 byte */
    assert_int_equal(st.docs_seen, 8);
    assert_int_equal(st.docs_duplicate, 1); /* beta = alpha up to whitespace and line ends */
    assert_int_equal(st.docs_empty, 1);     /* epsilon: only paragraphs seen before */
    assert_int_equal(st.docs_capped, 0);
    /* paragraphs: Example 4, Other 3, alpha 6 (after its Files fields are dropped, the License
     * line split from its text), epsilon 3, eta 1, gamma 3, zeta 2; repeated: the permission
     * paragraph in alpha and gamma, two of Example's in epsilon */
    assert_int_equal(st.paragraphs_seen, 22);
    assert_int_equal(st.paragraphs_duplicate, 4);
    assert_int_equal(st.paragraphs_legal, 0);

    docs all = merged(&train, &eval);
    assert_int_equal(all.n, 6);
    const char *ids[] = {"usr/share/common-licenses/Example-1.0", "usr/share/common-licenses/Other-2.0",
                         "usr/share/doc/alpha/copyright", "usr/share/doc/eta/copyright",
                         "usr/share/doc/gamma/copyright", "usr/share/doc/zeta/copyright"};
    for (size_t i = 0; i < 6; i++) {
        const doc *d = find_id(&all, ids[i]);
        if (!d) fail_msg("missing document %s", ids[i]);
        assert_string_equal(d->source, strstr(ids[i], "common-licenses") ? "common-licenses" : "copyright");
    }
    /* the permission paragraph survives once, in the license file read first */
    assert_int_equal(count_containing(&all, "Permission is granted to anyone"), 1);
    assert_non_null(strstr(find_id(&all, ids[0])->text, "Permission is granted to anyone"));
    assert_int_equal(count_containing(&all, "without any guarantee of any kind"), 1);
    /* alpha: its own paragraph kept, DEP-5 file lists dropped, " ." became a paragraph break */
    const doc *alpha = find_id(&all, ids[2]);
    assert_non_null(strstr(alpha->text, "The alpha authors add this paragraph of their own"));
    assert_null(strstr(alpha->text, "src/two.c"));
    assert_null(strstr(alpha->text, "Files:"));
    assert_non_null(strstr(alpha->text, "Copyright: 2021 Second Author\nLicense: Example-1.0"));
    assert_null(strstr(alpha->text, "\n .\n"));
    free(all.v);
    free_docs(&train);
    free_docs(&eval);
}

static void test_json_escaping(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("corpus_json");
    mt_corpus_stats st;
    docs train, eval;
    build(MT_CORPUS_KIND_LEGAL, dir, "legal", NULL, &st, &train, &eval);
    docs all = merged(&train, &eval);
    const doc *g = find_id(&all, "usr/share/doc/gamma/copyright");
    assert_non_null(g);
    /* decoded: quotes, backslash and tab intact; the control character dropped; the Latin-1
     * byte repaired to é; U+2028 and the emoji kept */
    assert_string_equal(g->text,
                        "This is gamma, packaged by \"Quote Person\" <q@example.org> with a back\\slash,\n"
                        "a tab\there, a control char  gone, Latin-1 caf\xc3\xa9 repaired, a line separator "
                        "\xe2\x80\xa8 and \xf0\x9f\x99\x82.\n\n"
                        " * Gamma closes with a paragraph of its own that is long enough to be text.");
    /* encoded: the raw line spells each escape as JSON requires, U+2028 escaped for JSONL tools */
    char path[4096], *raw;
    size_t len;
    snprintf(path, sizeof path, "%s/legal%s.jsonl", dir, find_id(&train, g->id) ? "" : ".eval");
    mt_error err = {0};
    assert_int_equal(mt_read_file(path, &raw, &len, &err), MT_OK);
    assert_non_null(strstr(raw, "by \\\"Quote Person\\\" <q@example.org> with a back\\\\slash,\\na tab\\there"));
    assert_non_null(strstr(raw, "separator \\u2028 and \xf0\x9f\x99\x82."));
    assert_null(strstr(raw, "\xe2\x80\xa8"));
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)raw[i] < 0x20 && raw[i] != '\n') fail_msg("raw control byte 0x%02x at %zu", raw[i], i);
    free(raw);
    free(all.v);
    free_docs(&train);
    free_docs(&eval);
}

/* ---- the held-out split ---- */

static char *slurp(const char *path) {
    char *data;
    size_t len;
    mt_error err = {0};
    if (mt_read_file(path, &data, &len, &err) != MT_OK) fail_msg("%s", err.msg);
    return data;
}

static void test_split_by_document_deterministic(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("corpus_split");
    char d[4096];
    snprintf(d, sizeof d, "%s", dir);
    mt_corpus_stats st;
    docs t1, e1, t2, e2;
    build(MT_CORPUS_KIND_MEDICAL, d, "a", NULL, &st, &t1, &e1);
    build(MT_CORPUS_KIND_MEDICAL, d, "b", NULL, &st, &t2, &e2);
    /* byte-identical run to run */
    char p[4096], q[4096];
    const char *pairs[][2] = {{"a.jsonl", "b.jsonl"}, {"a.eval.jsonl", "b.eval.jsonl"}};
    for (int k = 0; k < 2; k++) {
        snprintf(p, sizeof p, "%s/%s", d, pairs[k][0]);
        snprintf(q, sizeof q, "%s/%s", d, pairs[k][1]);
        char *x = slurp(p), *y = slurp(q);
        assert_string_equal(x, y);
        free(x);
        free(y);
    }
    /* 7 documents at eval_fraction 0.05: the minimum of 3 held out; each document whole, in
     * exactly one of the two files */
    assert_int_equal(t1.n + e1.n, 7);
    assert_int_equal(e1.n, 3);
    for (size_t i = 0; i < e1.n; i++) {
        assert_null(find_id(&t1, e1.v[i].id));
        assert_int_equal(count_containing(&t1, e1.v[i].text), 0);
    }
    free_docs(&t2);
    free_docs(&e2);

    /* no eval set at fraction 0; at 0.5 at least the minimum; a different seed still gives a
     * split of whole documents */
    mt_corpus_opts o;
    mt_corpus_opts_default(&o);
    o.root = mt_test_fixture("corpus");
    o.eval_fraction = 0;
    build(MT_CORPUS_KIND_MEDICAL, d, "none", &o, &st, &t2, &e2);
    assert_int_equal(t2.n, 7);
    assert_int_equal(e2.n, 0);
    free_docs(&t2);
    free_docs(&e2);
    o.eval_fraction = 0.5;
    o.seed = 12345;
    build(MT_CORPUS_KIND_MEDICAL, d, "half", &o, &st, &t2, &e2);
    assert_int_equal(t2.n + e2.n, 7);
    assert_true(e2.n >= 3);
    for (size_t i = 0; i < e2.n; i++) assert_null(find_id(&t2, e2.v[i].id));
    free_docs(&t2);
    free_docs(&e2);
    free_docs(&t1);
    free_docs(&e1);
}

/* ---- medical ---- */

static void test_medical_tag_selection(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("corpus_medical");
    mt_corpus_stats st;
    docs train, eval;
    build(MT_CORPUS_KIND_MEDICAL, dir, "med", NULL, &st, &train, &eval);
    assert_int_equal(st.entries_read, 10); /* 12 index lines, two aliases of entries */
    assert_int_equal(st.docs_seen, 7);
    assert_int_equal(st.tag_docs[MT_CORPUS_TAG_MED], 2);
    assert_int_equal(st.tag_docs[MT_CORPUS_TAG_ANAT], 2);
    assert_int_equal(st.tag_docs[MT_CORPUS_TAG_PATHOL], 1);
    assert_int_equal(st.tag_docs[MT_CORPUS_TAG_PHYSIOL], 1);
    assert_int_equal(st.tag_docs[MT_CORPUS_TAG_SURG], 1);
    docs all = merged(&train, &eval);
    assert_int_equal(all.n, 7);
    /* Expected renderings, by hand from tests/fixtures/corpus/gcide-entries.txt: the tagged
     * sense only when the tag is on a sense, the whole entry when it is in the head;
     * pronunciation, etymology, sources, labels and quotations stripped. */
    static const char *const want[][2] = {
        {"gcide/Abdomen@396", "Abdomen: The belly, or that part of the body between the thorax and the pelvis."},
        {"gcide/Abdominal ring@739",
         "Abdominal ring: a fancied ringlike opening on each side of the abdomen; -- called also inguinal ring."},
        {"gcide/Abirritant@1053", "Abirritant: A medicine that diminishes or alleviates irritation."},
        {"gcide/Arthrotome@1171", "Arthrotome: A strong scalpel used in the dissection of joints."},
        {"gcide/Haematogenesis@1415", "Haematogenesis: (a) The origin and development of blood. (b) The "
                                      "transformation of venous into arterial blood by respiration; hematosis."},
        {"gcide/Reduce@1695", "Reduce: To restore to its proper place or condition, as a displaced organ or part; "
                              "as, to reduce a dislocation."},
        {"gcide/Scirrhus@2120", "Scirrhus: A cancerous tumor which is hard, or of firm consistence, and is usually "
                                "very slow in its growth; as, a scirrhus of the breast."},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const doc *d = find_id(&all, want[i][0]);
        if (!d) fail_msg("missing %s", want[i][0]);
        assert_string_equal(d->text, want[i][1]);
        assert_string_equal(d->source, "gcide");
    }
    assert_int_equal(count_containing(&all, "Arthropoda"), 0); /* Abdomen's (Zool.) sense */
    assert_int_equal(count_containing(&all, "brother"), 0);    /* Reduce's quotation */
    free(all.v);
    free_docs(&train);
    free_docs(&eval);
}

/* Pairs of the fixture's 7 medical entries: the term as the prompt, its first sentence (a
 * clause cut before its semicolon) chosen, another entry's rejected. */
static void test_definition_pairs(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("corpus_pairs");
    char out[4200];
    snprintf(out, sizeof out, "%s/pairs.jsonl", dir);
    mt_corpus_opts o;
    mt_corpus_opts_default(&o);
    o.root = mt_test_fixture("corpus");
    mt_definition_pairs_stats st;
    mt_error err = {0};
    if (mt_corpus_definition_pairs(out, &o, 0, &st, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(st.definitions, 7);
    assert_int_equal(st.pairs, 7);
    char *text;
    size_t len;
    assert_int_equal(mt_read_file(out, &text, &len, &err), MT_OK);
    static const char *const want[][2] = {
        {"Abdomen:", " The belly, or that part of the body between the thorax and the pelvis."},
        {"Abdominal ring:", " a fancied ringlike opening on each side of the abdomen"},
        {"Haematogenesis:", " (a) The origin and development of blood."},
        {"Reduce:", " To restore to its proper place or condition, as a displaced organ or part"},
    };
    char *chosen[7] = {0}, *rejected[7] = {0};
    int n = 0, found = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), n++) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        assert_true(n < 7);
        const char *p = cJSON_GetObjectItem(j, "prompt")->valuestring;
        chosen[n] = mt_xstrdup(cJSON_GetObjectItem(j, "chosen")->valuestring);
        rejected[n] = mt_xstrdup(cJSON_GetObjectItem(j, "rejected")->valuestring);
        assert_string_equal(cJSON_GetObjectItem(j, "label_source")->valuestring, "gcide-definitions");
        assert_string_not_equal(chosen[n], rejected[n]);
        for (size_t k = 0; k < sizeof want / sizeof want[0]; k++)
            if (!strcmp(p, want[k][0])) {
                assert_string_equal(chosen[n], want[k][1]);
                found++;
            }
        cJSON_Delete(j);
    }
    assert_int_equal(n, 7);
    assert_int_equal(found, 4);
    /* every rejected text is another term's true definition */
    for (int i = 0; i < 7; i++) {
        int is_other = 0;
        for (int k = 0; k < 7; k++) is_other |= k != i && !strcmp(rejected[i], chosen[k]);
        assert_true(is_other);
    }
    for (int i = 0; i < 7; i++) {
        free(chosen[i]);
        free(rejected[i]);
    }
    free(text);
    /* the same seed writes the same file */
    char out2[4300], *a, *b;
    size_t la, lb;
    snprintf(out2, sizeof out2, "%s/again.jsonl", dir);
    assert_int_equal(mt_corpus_definition_pairs(out2, &o, 0, NULL, &err), MT_OK);
    assert_int_equal(mt_read_file(out, &a, &la, &err), MT_OK);
    assert_int_equal(mt_read_file(out2, &b, &lb, &err), MT_OK);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    free(a);
    free(b);
}

/* ---- general ---- */

static void test_general_sources_and_filters(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("corpus_general");
    mt_corpus_stats st;
    docs train, eval;
    build(MT_CORPUS_KIND_GENERAL, dir, "gen", NULL, &st, &train, &eval);
    docs all = merged(&train, &eval);
    /* GCIDE without the medical entries (Abbey, Café), two info nodes (not the license one),
     * alpha's README and NEWS.gz, gamma's README.md; never changelogs or copyright files */
    assert_int_equal(all.n, 7);
    assert_int_equal(st.paragraphs_legal, 1);
    const doc *d = find_id(&all, "gcide/Caf\xc3\xa9@1308");
    assert_non_null(d);
    assert_string_equal(d->text, "Caf\xc3\xa9: A coffee house; a restaurant; as, the Caf\xc3\xa9 de Paris.");
    d = find_id(&all, "gcide/Abbey@74");
    assert_non_null(d);
    assert_string_equal(d->text, "Abbey: 1. A monastery or society of persons of either sex, secluded from the world "
                                 "and devoted to religion and celibacy; also, the monastic building or buildings. "
                                 "2. The church of a monastery.");
    d = find_id(&all, "usr/share/info/tiny.info.gz#Gardening");
    assert_non_null(d);
    assert_string_equal(d->text, "1 Gardening\n\nWater the plants in the morning, before the sun is high, and "
                                 "prune the\ndead branches in late winter when the sap is still low.");
    d = find_id(&all, "usr/share/info/tiny.info.gz#Top");
    assert_non_null(d);
    assert_null(strstr(d->text, "Menu"));
    assert_non_null(find_id(&all, "usr/share/doc/alpha/NEWS.gz")); /* read through zlib */
    assert_non_null(find_id(&all, "usr/share/doc/alpha/README"));
    d = find_id(&all, "usr/share/doc/gamma/README.md");
    assert_non_null(d);
    assert_null(strstr(d->text, "warranty"));
    assert_int_equal(count_containing(&all, "Zanzibarquux"), 0); /* changelog.Debian.gz */
    assert_int_equal(count_containing(&all, "verbatim copies"), 0);
    assert_int_equal(count_containing(&all, "belly"), 0);
    assert_int_equal(count_containing(&all, "Permission is granted"), 0);
    free(all.v);
    free_docs(&train);
    free_docs(&eval);
}

static void test_general_max_bytes(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("corpus_cap");
    mt_corpus_opts o;
    mt_corpus_opts_default(&o);
    o.root = mt_test_fixture("corpus");
    o.max_bytes = 500;
    mt_corpus_stats st;
    docs train, eval, t2, e2;
    build(MT_CORPUS_KIND_GENERAL, dir, "a", &o, &st, &train, &eval);
    assert_true(st.bytes_train + st.bytes_eval <= 500);
    assert_true(st.docs_capped > 0);
    assert_int_equal(st.docs_capped + train.n + eval.n, 7);
    build(MT_CORPUS_KIND_GENERAL, dir, "b", &o, &st, &t2, &e2);
    assert_int_equal(t2.n, train.n);
    for (size_t i = 0; i < train.n; i++) assert_string_equal(t2.v[i].id, train.v[i].id);
    free_docs(&train);
    free_docs(&eval);
    free_docs(&t2);
    free_docs(&e2);
}

/* ---- errors ---- */

static void expect_error(mt_corpus_kind kind, const char *out, const mt_corpus_opts *o, mt_status code,
                         const char *needle) {
    mt_error err = {0};
    mt_corpus_stats st;
    mt_status s = mt_corpus_build(kind, out, o, &st, &err);
    if (s != code) fail_msg("expected %s, got %s: %s", mt_status_name(code), mt_status_name(s), err.msg);
    if (!strstr(err.msg, needle)) fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_errors(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("corpus_errors");
    char tmp[4096], out[4096], bad[4096];
    snprintf(tmp, sizeof tmp, "%s", dir);
    snprintf(out, sizeof out, "%s/x.jsonl", tmp);
    mt_error err = {0};
    mt_corpus_kind k;
    assert_int_equal(mt_corpus_kind_parse("legl", &k, &err), MT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "did you mean 'legal'"));
    assert_int_equal(mt_corpus_kind_parse("medical", &k, &err), MT_OK);
    assert_int_equal(k, MT_CORPUS_KIND_MEDICAL);

    mt_corpus_opts o;
    mt_corpus_opts_default(&o);
    o.root = "/nonexistent/moetune/root";
    expect_error(MT_CORPUS_KIND_LEGAL, out, &o, MT_ERR_NOT_FOUND, "/nonexistent/moetune/root");
    o.root = tmp; /* a folder without usr/share */
    expect_error(MT_CORPUS_KIND_LEGAL, out, &o, MT_ERR_NOT_FOUND, "common-licenses");
    expect_error(MT_CORPUS_KIND_MEDICAL, out, &o, MT_ERR_NOT_FOUND, "dict-gcide");
    expect_error(MT_CORPUS_KIND_GENERAL, out, &o, MT_ERR_NOT_FOUND, "no documents");
    o.root = mt_test_fixture("corpus");
    o.eval_fraction = 0.7;
    expect_error(MT_CORPUS_KIND_LEGAL, out, &o, MT_ERR_INVALID, "eval_fraction");
    o.eval_fraction = 0.05;
    o.max_bytes = 10;
    expect_error(MT_CORPUS_KIND_MEDICAL, out, &o, MT_ERR_INVALID, "keeps no document");
    o.max_bytes = 0;
    snprintf(bad, sizeof bad, "%s/no/such/folder/x.jsonl", tmp);
    expect_error(MT_CORPUS_KIND_MEDICAL, bad, &o, MT_ERR_IO, "no/such/folder");
    expect_error(MT_CORPUS_KIND_LEGAL, "", &o, MT_ERR_INVALID, "output");

    /* a malformed index names its line */
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s/root/usr/share/dictd' && cp '%s/usr/share/dictd/gcide.dict.dz' '%s/root/usr/share/dictd/' "
             "&& printf 'Abbey\\tBK\\tFC\\nBroken\\tB!K\\tFC\\n' > '%s/root/usr/share/dictd/gcide.index'",
             tmp, mt_test_fixture("corpus"), tmp, tmp);
    assert_int_equal(system(cmd), 0);
    snprintf(bad, sizeof bad, "%s/root", tmp);
    o.root = bad;
    expect_error(MT_CORPUS_KIND_MEDICAL, out, &o, MT_ERR_FORMAT, "gcide.index:2:");
    snprintf(cmd, sizeof cmd, "printf 'Abbey\\tBK\\tZZZZ\\n' > '%s/root/usr/share/dictd/gcide.index'", tmp);
    assert_int_equal(system(cmd), 0);
    expect_error(MT_CORPUS_KIND_MEDICAL, out, &o, MT_ERR_FORMAT, "past the end");
    assert_false(mt_path_exists(out)); /* nothing written on failure */
}

static void test_eval_path(void **state) {
    (void)state;
    char p[64];
    assert_true(mt_corpus_eval_path("data/legal.jsonl", p, sizeof p));
    assert_string_equal(p, "data/legal.eval.jsonl");
    assert_true(mt_corpus_eval_path("legal.txt", p, sizeof p));
    assert_string_equal(p, "legal.txt.eval.jsonl");
    assert_false(mt_corpus_eval_path("a-rather-long-name-that-will-not-fit-in-a-tiny-buffer.jsonl", p, 16));
}

/* ---- the real machine ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void test_real_common_licenses(void **state) {
    (void)state;
    if (!mt_is_dir("/usr/share/common-licenses")) skip();
    const char *dir = mt_test_tmpdir("corpus_real");
    mt_corpus_opts o;
    mt_corpus_opts_default(&o);
    mt_corpus_stats st;
    docs train, eval;
    build(MT_CORPUS_KIND_LEGAL, dir, "legal", &o, &st, &train, &eval);
    docs all = merged(&train, &eval);
    assert_true(all.n > 10);
    assert_true(eval.n >= 3);
    assert_non_null(find_id(&all, "usr/share/common-licenses/GPL-3"));
    char **texts = mt_xmalloc(all.n * sizeof *texts);
    for (size_t i = 0; i < all.n; i++) texts[i] = all.v[i].text;
    qsort(texts, all.n, sizeof *texts, cmp_str);
    for (size_t i = 1; i < all.n; i++)
        if (!strcmp(texts[i - 1], texts[i])) fail_msg("duplicate document text: %.80s", texts[i]);
    /* paragraph-level dedup, checked independently: no paragraph of 64 or more normalised bytes
     * (indentation and comment marks dropped, whitespace runs as one space, lowercase) occurs
     * twice in the corpus, although the GPL and others are pasted into hundreds of files */
    size_t n_keys = 0, cap = 1024;
    char **keys = mt_xmalloc(cap * sizeof *keys);
    for (size_t i = 0; i < all.n; i++) {
        const char *t = all.v[i].text;
        while (*t) {
            const char *end = strstr(t, "\n\n");
            size_t n = end ? (size_t)(end - t) : strlen(t);
            char *k = mt_xmalloc(n + 1), *w = k;
            bool line_start = true, space = false;
            for (size_t j = 0; j < n; j++) {
                char ch = t[j];
                if (ch == '\n') {
                    line_start = true;
                    space = w > k;
                    continue;
                }
                if (line_start && (ch == ' ' || ch == '\t' || ch == '*' || ch == '#')) continue;
                line_start = false;
                if (ch == ' ' || ch == '\t') {
                    space = w > k;
                    continue;
                }
                if (space) *w++ = ' ';
                space = false;
                *w++ = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
            }
            *w = '\0';
            if (w - k >= 64) {
                if (n_keys == cap) keys = mt_xrealloc(keys, (cap *= 2) * sizeof *keys);
                keys[n_keys++] = k;
            } else
                free(k);
            t += n;
            while (*t == '\n') t++;
        }
    }
    qsort(keys, n_keys, sizeof *keys, cmp_str);
    for (size_t i = 1; i < n_keys; i++)
        if (!strcmp(keys[i - 1], keys[i])) fail_msg("paragraph kept twice: %.100s", keys[i]);
    assert_true(n_keys > 100);
    for (size_t i = 0; i < n_keys; i++) free(keys[i]);
    free(keys);
    free(texts);
    free(all.v);
    free_docs(&train);
    free_docs(&eval);
}

/* ---- the command line ---- */

static void test_cli(void **state) {
    (void)state;
    if (access(MT_MOETUNE_BIN, X_OK) != 0) skip();
    const char *dir = mt_test_tmpdir("corpus_cli");
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "data legal '%s/l.jsonl' --root '%s' --eval-fraction=0.05", dir,
                             mt_test_fixture("corpus"));
    if (rc != 0) fail_msg("exit %d: %s", rc, out);
    assert_non_null(strstr(out, "files read:        8"));
    assert_non_null(strstr(out, "  duplicate:       1"));
    assert_non_null(strstr(out, "  kept:            6"));
    free(out);
    rc = mt_test_run_cli(&out, "data medical '%s/m.jsonl' --root '%s' --max-bytes 64K", dir, mt_test_fixture("corpus"));
    if (rc != 0) fail_msg("exit %d: %s", rc, out);
    assert_non_null(strstr(out, "tag Anat."));
    free(out);
    assert_int_equal(mt_test_run_cli(NULL, "data legl '%s/x.jsonl'", dir), 2);
    assert_int_equal(mt_test_run_cli(NULL, "data legal '%s/x.jsonl' --eval-fraction 0.9", dir), 2);
    assert_int_equal(mt_test_run_cli(NULL, "data legal '%s/x.jsonl' --max-bytes 0", dir), 2);
    assert_int_equal(mt_test_run_cli(NULL, "data legal"), 2);
    assert_int_equal(mt_test_run_cli(NULL, "data medical '%s/x.jsonl' --root '%s'", dir, dir), 2);
    rc = mt_test_run_cli(&out, "data medical-pairs '%s/p.jsonl' --root '%s'", dir, mt_test_fixture("corpus"));
    if (rc != 0) fail_msg("exit %d: %s", rc, out);
    assert_non_null(strstr(out, "(7;"));
    free(out);
    assert_int_equal(mt_test_run_cli(NULL, "data medical-pairs '%s/x.jsonl' --max-chars 3", dir), 2);
    assert_int_equal(mt_test_run_cli(NULL, "data medical-pairs '%s/x.jsonl' --root '%s'", dir, dir), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_legal_dedup_counts),
        cmocka_unit_test(test_json_escaping),
        cmocka_unit_test(test_split_by_document_deterministic),
        cmocka_unit_test(test_medical_tag_selection),
        cmocka_unit_test(test_definition_pairs),
        cmocka_unit_test(test_general_sources_and_filters),
        cmocka_unit_test(test_general_max_bytes),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_eval_path),
        cmocka_unit_test(test_real_common_licenses),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
