/* test_pairs.c — preference pairs in the store: every JSONL form (prompt extraction checked
 * against TRL's extract_prompt outputs), dedup by content, lenient and strict imports with line
 * numbers, the split by hash, an import that fails half-way leaving nothing, stats, export and
 * re-import, the reference log-prob cache, and the `moetune pairs` command. */
#define _GNU_SOURCE
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "testutil.h"

static const char *write_file(const char *dir, const char *name, const char *text) {
    static char path[4][1024];
    static int slot;
    char *p = path[slot++ % 4];
    snprintf(p, 1024, "%s/%s", dir, name);
    mt_error err = {0};
    if (mt_write_file_atomic(p, text, strlen(text), &err) != MT_OK) fail_msg("%s", err.msg);
    return p;
}

static mt_store *open_store(const char *dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/pairs.db", dir);
    mt_store *s;
    mt_error err = {0};
    if (mt_store_open(&s, path, true, &err) != MT_OK) fail_msg("%s", err.msg);
    return s;
}

static mt_pair_record_list list_all(mt_store *s, const char *dataset, const char *split) {
    mt_pairs_query q = {dataset, split, 0, -1};
    mt_pair_record_list l;
    mt_error err = {0};
    if (mt_store_pairs_list(s, &q, &l, &err) != MT_OK) fail_msg("%s", err.msg);
    return l;
}

static void test_every_format(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("pairs_formats");
    /* the implicit cases are those whose TRL extract_prompt outputs are written below */
    const char *jsonl =
        "{\"prompt\": \"The sky is\", \"chosen\": \" blue.\", \"rejected\": \" green.\", \"score\": 0.75,"
        " \"label_source\": \"human\", \"annotator\": \"ann-7\", \"id\": \"q1\"}\n"
        "{\"prompt\": [{\"role\": \"user\", \"content\": \"Sky colour?\"}],"
        " \"chosen\": [{\"role\": \"assistant\", \"content\": \"Blue.\"}],"
        " \"rejected\": [{\"role\": \"assistant\", \"content\": \"Green.\"}]}\n"
        "{\"chosen\": \"The grass is green.\", \"rejected\": \"The grass is blue.\"}\n"
        "{\"chosen\": \"abc\", \"rejected\": \"abcd\"}\n"
        "{\"chosen\": \"Caf\\u00e9 au lait\", \"rejected\": \"Caf\\u00e9 noir\"}\n"
        "{\"chosen\": \"na\\u00efve\", \"rejected\": \"naive\"}\n"
        "{\"chosen\": [{\"role\": \"user\", \"content\": \"What color is the sky?\"},"
        " {\"role\": \"assistant\", \"content\": \"It is blue.\"}],"
        " \"rejected\": [{\"role\": \"user\", \"content\": \"What color is the sky?\"},"
        " {\"role\": \"assistant\", \"content\": \"It is green.\"}], \"source\": \"served\"}\n";
    const char *path = write_file(dir, "formats.jsonl", jsonl);
    mt_store *s = open_store(dir);
    mt_pairs_import_opts o = {"formats", false, 0.0};
    mt_pairs_import_report rep;
    mt_error err = {0};
    assert_int_equal(mt_store_pairs_import(s, path, &o, &rep, &err), MT_OK);
    assert_int_equal(rep.n_lines, 7);
    assert_int_equal(rep.n_added, 7);
    assert_int_equal(rep.n_refused, 0);
    assert_int_equal(rep.n_by_format[MT_PAIR_STANDARD], 1);
    assert_int_equal(rep.n_by_format[MT_PAIR_CONVERSATIONAL], 1);
    assert_int_equal(rep.n_by_format[MT_PAIR_IMPLICIT], 4);
    assert_int_equal(rep.n_by_format[MT_PAIR_IMPLICIT_CONVERSATIONAL], 1);
    mt_pairs_import_report_free(&rep);

    mt_pair_record_list l = list_all(s, "formats", NULL);
    assert_int_equal(l.n, 7);
    const mt_pair_record *r = l.items;
    assert_int_equal(r[0].format, MT_PAIR_STANDARD);
    assert_string_equal(r[0].prompt, "The sky is");
    assert_float_equal(r[0].score, 0.75, 0);
    assert_string_equal(r[0].source, "human");
    assert_string_equal(r[0].annotator, "ann-7");
    assert_string_equal(r[0].label_json, "{\"id\":\"q1\"}");
    assert_non_null(strstr(r[0].file, "formats.jsonl"));
    assert_int_equal(r[0].line, 1);
    assert_true(r[0].created > 1e9);
    assert_int_equal(r[1].format, MT_PAIR_CONVERSATIONAL);
    assert_string_equal(r[1].prompt, "[{\"role\":\"user\",\"content\":\"Sky colour?\"}]");
    assert_true(isnan(r[1].score));
    assert_null(r[1].source);
    assert_int_equal(r[2].format, MT_PAIR_IMPLICIT);
    assert_string_equal(r[2].prompt, "The grass is");
    assert_string_equal(r[2].chosen, " green.");
    assert_int_equal(r[6].format, MT_PAIR_IMPLICIT_CONVERSATIONAL);
    assert_string_equal(r[6].source, "served");
    assert_int_equal(r[6].line, 7);
    mt_pair_record_list_free(&l);
    mt_store_close(s);
}

/* The implicit-prompt extraction, each case against TRL 1.16's extract_prompt output. */
static void test_implicit_prompt_as_trl(void **state) {
    (void)state;
    static const struct {
        const char *line, *prompt, *chosen, *rejected;
    } cases[] = {
        {"{\"chosen\": \"The sky is blue.\", \"rejected\": \"The sky is green.\"}", "The sky is", " blue.", " green."},
        {"{\"chosen\": \"abc\", \"rejected\": \"abcd\"}", "ab", "c", "cd"},
        {"{\"chosen\": \"Caf\\u00e9 au lait\", \"rejected\": \"Caf\\u00e9 noir\"}", "Caf\xc3\xa9", " au lait", " noir"},
        {"{\"chosen\": \"na\\u00efve\", \"rejected\": \"naive\"}", "na", "\xc3\xafve", "ive"},
        {"{\"chosen\": [{\"role\": \"user\", \"content\": \"What color is the sky?\"}, {\"role\": \"assistant\","
         " \"content\": \"It is blue.\"}], \"rejected\": [{\"role\": \"user\", \"content\": \"What color is the sky?\"},"
         " {\"role\": \"assistant\", \"content\": \"It is green.\"}]}",
         "[{\"role\":\"user\",\"content\":\"What color is the sky?\"}]",
         "[{\"role\":\"assistant\",\"content\":\"It is blue.\"}]",
         "[{\"role\":\"assistant\",\"content\":\"It is green.\"}]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mt_pair_parsed p;
        char why[256];
        if (!mt_pairs_parse_line(cases[i].line, strlen(cases[i].line), &p, why, sizeof why))
            fail_msg("case %zu refused: %s", i, why);
        assert_string_equal(p.prompt, cases[i].prompt);
        assert_string_equal(p.chosen, cases[i].chosen);
        assert_string_equal(p.rejected, cases[i].rejected);
        char h[65];
        mt_store_pair_hash(p.prompt, p.chosen, p.rejected, h);
        assert_string_equal(p.hash, h);
        mt_pair_parsed_free(&p);
    }
    /* the standard form of the first case has the same content, hence the same hash */
    mt_pair_parsed a, b;
    char why[256];
    const char *sa = "{\"chosen\": \"The sky is blue.\", \"rejected\": \"The sky is green.\"}";
    const char *sb = "{\"prompt\": \"The sky is\", \"chosen\": \" blue.\", \"rejected\": \" green.\"}";
    assert_true(mt_pairs_parse_line(sa, strlen(sa), &a, why, sizeof why));
    assert_true(mt_pairs_parse_line(sb, strlen(sb), &b, why, sizeof why));
    assert_string_equal(a.hash, b.hash);
    mt_pair_parsed_free(&a);
    mt_pair_parsed_free(&b);
}

static void test_refusals(void **state) {
    (void)state;
    static const struct {
        const char *line, *reason;
    } cases[] = {
        {"{\"prompt\": \"p\", \"chosen\": \"a\"", "not valid JSON"},
        {"[1, 2]", "not a JSON object"},
        {"{\"prompt\": \"p\", \"chosen\": \"a\"}", "missing \"rejected\""},
        {"{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": [{\"role\": \"assistant\", \"content\": \"b\"}]}",
         "must both be strings or both message lists"},
        {"{\"prompt\": [], \"chosen\": [{\"role\": \"assistant\"}], \"rejected\": [{\"role\": \"a\", \"content\": \"b\"}]}",
         "\"chosen\"[0]: a message needs"},
        {"{\"prompt\": \"p\", \"chosen\": \"\", \"rejected\": \"b\"}", "empty \"chosen\""},
        {"{\"prompt\": \"p\", \"chosen\": \"same\", \"rejected\": \"same\"}", "identical"},
        {"{\"chosen\": \"blue\", \"rejected\": \"green\"}", "share no prefix"},
        {"{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\", \"score\": \"high\"}", "\"score\" must be a finite number"},
        {"{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\", \"score\": 1e999}", "finite number"},
        {"{\"prompt\": 3, \"chosen\": \"a\", \"rejected\": \"b\"}", "\"prompt\" must be a string"},
        {"{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"} trailing", "text after the object"},
        {"{\"prompt\": \"p\", \"chosen\": \"caf\xe9\", \"rejected\": \"b\"}", "not valid UTF-8"},
        {"{\"prompt\": \"p\", \"chosen\": \"\xed\xa0\x80\", \"rejected\": \"b\"}", "not valid UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mt_pair_parsed p;
        char why[256] = "";
        assert_false(mt_pairs_parse_line(cases[i].line, strlen(cases[i].line), &p, why, sizeof why));
        if (!strstr(why, cases[i].reason)) fail_msg("case %zu: reason \"%s\", expected \"%s\"", i, why, cases[i].reason);
        assert_null(p.prompt);
    }
}

static void test_dedup(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("pairs_dedup");
    /* line 3 repeats line 1; line 4 is line 2 with other JSON spacing (the same content) */
    const char *jsonl = "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n"
                        "{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}], \"chosen\": [{\"role\": \"assistant\","
                        " \"content\": \"y\"}], \"rejected\": [{\"role\": \"assistant\", \"content\": \"n\"}]}\n"
                        "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\",\"score\":1}\n"
                        "{\"prompt\":[{\"role\":\"user\",\"content\":\"q\"}],\"chosen\":[{\"role\":\"assistant\","
                        "\"content\":\"y\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"n\"}]}\n"
                        "\n"
                        "{\"prompt\": \"ab\", \"chosen\": \"c\", \"rejected\": \"d\"}\r\n";
    const char *path = write_file(dir, "dups.jsonl", jsonl);
    mt_store *s = open_store(dir);
    mt_pairs_import_opts o = {"d", false, 0.0};
    mt_pairs_import_report rep;
    mt_error err = {0};
    assert_int_equal(mt_store_pairs_import(s, path, &o, &rep, &err), MT_OK);
    assert_int_equal(rep.n_lines, 5); /* the blank line is not a line of data */
    assert_int_equal(rep.n_added, 3);
    assert_int_equal(rep.n_duplicates, 2);
    mt_pairs_import_report_free(&rep);
    /* the same file again: nothing new */
    assert_int_equal(mt_store_pairs_import(s, path, &o, &rep, &err), MT_OK);
    assert_int_equal(rep.n_added, 0);
    assert_int_equal(rep.n_duplicates, 5);
    mt_pairs_import_report_free(&rep);
    /* another dataset keeps its own copy */
    mt_pairs_import_opts o2 = {"other", false, 0.0};
    assert_int_equal(mt_store_pairs_import(s, path, &o2, &rep, &err), MT_OK);
    assert_int_equal(rep.n_added, 3);
    mt_pairs_import_report_free(&rep);
    mt_pairs_stats st;
    assert_int_equal(mt_store_pairs_stats(s, "d", &st, &err), MT_OK);
    assert_int_equal(st.n_pairs, 3);
    assert_int_equal(st.n_imports, 2);
    assert_int_equal(st.n_duplicates, 7);
    assert_int_equal(st.n_lines, 10);
    mt_pairs_stats_free(&st);
    /* the dataset's digest is its content: "d" and "other" hold the same pairs */
    mt_store_dataset_list dl;
    assert_int_equal(mt_store_pair_datasets(s, &dl, &err), MT_OK);
    assert_int_equal(dl.n, 2);
    assert_string_equal(dl.items[0].path, "d");
    assert_string_equal(dl.items[0].sha256, dl.items[1].sha256);
    assert_int_equal(dl.items[0].n_docs, 3);
    mt_store_dataset_list_free(&dl);
    mt_store_close(s);
}

static const char *mixed_jsonl = "{\"prompt\": \"p1\", \"chosen\": \"a\", \"rejected\": \"b\"}\n"
                                 "{\"prompt\": \"p2\", \"chosen\": \"a\"\n"
                                 "{\"prompt\": \"p3\", \"chosen\": \"a\", \"rejected\": \"b\"}\n"
                                 "{\"prompt\": \"p4\", \"chosen\": \"a\"}\n"
                                 "\n"
                                 "{\"prompt\": \"p6\", \"chosen\": \"x\", \"rejected\": \"x\"}\n"
                                 "{\"prompt\": \"p7\", \"chosen\": \"a\", \"rejected\": \"b\"}\n";

static void test_lenient_and_strict(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("pairs_strict");
    const char *path = write_file(dir, "mixed.jsonl", mixed_jsonl);
    mt_store *s = open_store(dir);
    mt_error err = {0};
    mt_pairs_import_report rep;
    /* strict: the first bad line fails the import and nothing is written */
    mt_pairs_import_opts strict = {"strict", true, 0.1};
    assert_int_equal(mt_store_pairs_import(s, path, &strict, &rep, &err), MT_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "mixed.jsonl:2: not valid JSON"));
    assert_non_null(strstr(err.msg, "3 lines refused"));
    assert_int_equal(rep.n_refused, 3);
    assert_int_equal(rep.n_added, 0);
    mt_pairs_import_report_free(&rep);
    int64_t id;
    mt_error_clear(&err);
    assert_int_equal(mt_store_pairs_dataset_id(s, "strict", &id, &err), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "no pair dataset named \"strict\""));
    /* lenient: bad lines reported with their numbers and reasons, the rest imported */
    mt_pairs_import_opts lenient = {"lenient", false, 0.1};
    mt_error_clear(&err);
    assert_int_equal(mt_store_pairs_import(s, path, &lenient, &rep, &err), MT_OK);
    assert_int_equal(rep.n_lines, 6);
    assert_int_equal(rep.n_added, 3);
    assert_int_equal(rep.n_refused, 3);
    assert_int_equal(rep.refused[0].line, 2);
    assert_int_equal(rep.refused[1].line, 4);
    assert_string_equal(rep.refused[1].reason, "missing \"rejected\"");
    assert_int_equal(rep.refused[2].line, 6);
    assert_non_null(strstr(rep.refused[2].reason, "identical"));
    mt_pairs_import_report_free(&rep);
    /* the refusals are kept with the import and come back in the stats */
    mt_pairs_stats st;
    assert_int_equal(mt_store_pairs_stats(s, "lenient", &st, &err), MT_OK);
    assert_int_equal(st.n_refused, 3);
    assert_int_equal(st.n_refused_listed, 3);
    assert_int_equal(st.refused[0].line, 2);
    assert_non_null(strstr(st.refused[0].file, "mixed.jsonl"));
    assert_string_equal(st.refused[0].reason, "not valid JSON");
    assert_int_equal(st.n_train + st.n_eval, 3);
    mt_pairs_stats_free(&st);
    /* the lines kept their provenance */
    mt_pair_record_list l = list_all(s, "lenient", NULL);
    assert_int_equal(l.items[2].line, 7);
    mt_pair_record_list_free(&l);
    /* a file without one usable pair, and a missing file */
    const char *bad = write_file(dir, "bad.jsonl", "nope\n{}\n");
    assert_int_equal(mt_store_pairs_import(s, bad, &lenient, &rep, &err), MT_ERR_FORMAT);
    mt_pairs_import_report_free(&rep);
    char missing[1024];
    snprintf(missing, sizeof missing, "%s/none.jsonl", dir);
    mt_error_clear(&err);
    assert_int_not_equal(mt_store_pairs_import(s, missing, &lenient, &rep, &err), MT_OK);
    mt_pairs_import_report_free(&rep);
    mt_store_close(s);
}

static void test_split_is_deterministic(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("pairs_split");
    enum { N = 400 };
    size_t cap = N * 96 + 1;
    char *fwd = calloc(1, cap), *rev = calloc(1, cap);
    for (int i = 0; i < N; i++) {
        char line[96];
        snprintf(line, sizeof line, "{\"prompt\": \"q%d\", \"chosen\": \"yes %d\", \"rejected\": \"no %d\"}\n", i, i, i);
        strcat(fwd, line);
        snprintf(line, sizeof line, "{\"prompt\": \"q%d\", \"chosen\": \"yes %d\", \"rejected\": \"no %d\"}\n",
                 N - 1 - i, N - 1 - i, N - 1 - i);
        strcat(rev, line);
    }
    const char *pf = write_file(dir, "fwd.jsonl", fwd), *pr = write_file(dir, "rev.jsonl", rev);
    free(fwd), free(rev);
    mt_store *s = open_store(dir);
    mt_error err = {0};
    mt_pairs_import_report rep;
    mt_pairs_import_opts a = {"fwd", false, 0.2}, b = {"rev", false, 0.2};
    assert_int_equal(mt_store_pairs_import(s, pf, &a, &rep, &err), MT_OK);
    size_t n_eval = rep.n_eval;
    assert_int_equal(rep.n_train + rep.n_eval, N);
    mt_pairs_import_report_free(&rep);
    assert_int_equal(mt_store_pairs_import(s, pr, &b, &rep, &err), MT_OK);
    assert_int_equal(rep.n_eval, n_eval);
    mt_pairs_import_report_free(&rep);
    /* roughly the fraction asked for (binomial: 80 ± 8) */
    assert_true(n_eval > 50 && n_eval < 110);
    /* the same pairs in either order land in the same split */
    mt_pair_record_list ea = list_all(s, "fwd", "eval"), eb = list_all(s, "rev", "eval");
    assert_int_equal(ea.n, eb.n);
    for (size_t i = 0; i < ea.n; i++) {
        bool in_b = false;
        for (size_t j = 0; j < eb.n && !in_b; j++) in_b = !strcmp(ea.items[i].hash, eb.items[j].hash);
        assert_true(in_b);
        assert_true(ea.items[i].eval);
        assert_true(mt_pairs_is_eval(ea.items[i].hash, 0.2));
    }
    mt_pair_record_list_free(&ea);
    mt_pair_record_list_free(&eb);
    /* a smaller fraction keeps a subset of the eval pairs; zero keeps none */
    mt_pair_record_list all = list_all(s, "fwd", NULL);
    for (size_t i = 0; i < all.n; i++) {
        if (mt_pairs_is_eval(all.items[i].hash, 0.1)) assert_true(mt_pairs_is_eval(all.items[i].hash, 0.2));
        assert_false(mt_pairs_is_eval(all.items[i].hash, 0.0));
    }
    mt_pair_record_list_free(&all);
    mt_store_close(s);
}

/* An insert that fails part-way (a trigger refuses the third pair) rolls the whole import back:
 * no dataset, no import record, no pair. */
static void test_import_is_atomic(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("pairs_atomic");
    const char *path = write_file(dir, "five.jsonl",
                                  "{\"prompt\": \"1\", \"chosen\": \"a\", \"rejected\": \"b\"}\n"
                                  "{\"prompt\": \"2\", \"chosen\": \"a\", \"rejected\": \"b\"}\n"
                                  "{\"prompt\": \"3\", \"chosen\": \"a\", \"rejected\": \"b\"}\n"
                                  "{\"prompt\": \"4\", \"chosen\": \"a\", \"rejected\": \"b\"}\n"
                                  "{\"prompt\": \"5\", \"chosen\": \"a\", \"rejected\": \"b\"}\n");
    mt_store *s = open_store(dir);
    mt_store_close(s);
    char db_path[1024];
    snprintf(db_path, sizeof db_path, "%s/pairs.db", dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "CREATE TRIGGER third_fails BEFORE INSERT ON pairs"
                                  " WHEN (SELECT count(*) FROM pairs) >= 2"
                                  " BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    s = open_store(dir);
    mt_pairs_import_opts o = {"atomic", false, 0.0};
    mt_pairs_import_report rep;
    mt_error err = {0};
    assert_int_not_equal(mt_store_pairs_import(s, path, &o, &rep, &err), MT_OK);
    assert_non_null(strstr(err.msg, "five.jsonl:3:"));
    assert_non_null(strstr(err.msg, "injected failure"));
    assert_int_equal(rep.n_added, 0);
    mt_pairs_import_report_free(&rep);
    mt_store_close(s);
    assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
    const char *counts[] = {"SELECT count(*) FROM pairs", "SELECT count(*) FROM pair_imports",
                            "SELECT count(*) FROM datasets"};
    for (int i = 0; i < 3; i++) {
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_prepare_v2(db, counts[i], -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        if (sqlite3_column_int64(st, 0) != 0) fail_msg("%s: %lld rows after a failed import", counts[i],
                                                       (long long)sqlite3_column_int64(st, 0));
        sqlite3_finalize(st);
    }
    /* without the trigger the same import succeeds */
    assert_int_equal(sqlite3_exec(db, "DROP TRIGGER third_fails", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    s = open_store(dir);
    mt_error_clear(&err);
    assert_int_equal(mt_store_pairs_import(s, path, &o, &rep, &err), MT_OK);
    assert_int_equal(rep.n_added, 5);
    mt_pairs_import_report_free(&rep);
    mt_store_close(s);
}

static void test_export_reimport(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("pairs_export");
    const char *path = write_file(
        dir, "in.jsonl",
        "{\"prompt\": \"The sky is\", \"chosen\": \" blue.\", \"rejected\": \" green.\", \"score\": 2,"
        " \"annotator\": \"a1\", \"source\": \"gcide:(Med.)\", \"topic\": {\"k\": [1, 2]}}\n"
        "{\"chosen\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"y\"}],"
        " \"rejected\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"n\"}]}\n"
        "{\"chosen\": \"Once upon a time\", \"rejected\": \"Once more\"}\n");
    mt_store *s = open_store(dir);
    mt_pairs_import_opts o = {"src", false, 0.0};
    mt_pairs_import_report rep;
    mt_error err = {0};
    assert_int_equal(mt_store_pairs_import(s, path, &o, &rep, &err), MT_OK);
    mt_pairs_import_report_free(&rep);
    mt_pair_record_list l = list_all(s, "src", NULL);
    assert_int_equal(l.n, 3);
    char *j0 = mt_pair_record_json(&l.items[0]);
    assert_string_equal(j0, "{\"prompt\":\"The sky is\",\"chosen\":\" blue.\",\"rejected\":\" green.\",\"score\":2,"
                            "\"label_source\":\"gcide:(Med.)\",\"annotator\":\"a1\",\"topic\":{\"k\":[1,2]}}");
    char *j1 = mt_pair_record_json(&l.items[1]);
    assert_string_equal(j1, "{\"prompt\":[{\"role\":\"user\",\"content\":\"q\"}],\"chosen\":[{\"role\":\"assistant\","
                            "\"content\":\"y\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"n\"}]}");
    char *j2 = mt_pair_record_json(&l.items[2]);
    assert_string_equal(j2, "{\"prompt\":\"Once\",\"chosen\":\" upon a time\",\"rejected\":\" more\"}");
    /* exported lines import back to the same content */
    char out[4096];
    snprintf(out, sizeof out, "%s\n%s\n%s\n", j0, j1, j2);
    free(j0), free(j1), free(j2);
    const char *p2 = write_file(dir, "out.jsonl", out);
    mt_pairs_import_opts o2 = {"copy", false, 0.0};
    assert_int_equal(mt_store_pairs_import(s, p2, &o2, &rep, &err), MT_OK);
    assert_int_equal(rep.n_added, 3);
    mt_pairs_import_report_free(&rep);
    mt_pair_record_list l2 = list_all(s, "copy", NULL);
    for (size_t i = 0; i < 3; i++) assert_string_equal(l.items[i].hash, l2.items[i].hash);
    assert_float_equal(l2.items[0].score, 2, 0);
    assert_string_equal(l2.items[0].source, "gcide:(Med.)");
    assert_string_equal(l2.items[0].label_json, "{\"topic\":{\"k\":[1,2]}}");
    mt_pair_record_list_free(&l);
    mt_pair_record_list_free(&l2);
    mt_store_close(s);
}

static void test_ref_logp_cache(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("pairs_refcache");
    mt_store *s = open_store(dir);
    char trunc[128];
    size_t tl = mt_ref_truncation_key(trunc, sizeof trunc, 1024, 512, 0, NULL);
    assert_string_equal(trunc, "max_length=1024;max_prompt_length=512;max_completion_length=0;mode=keep_end");
    assert_int_equal(tl, strlen(trunc));
    mt_ref_key k = {"base-aaaa", NULL, "tok-1111", trunc};
    char h[3][65];
    mt_store_pair_hash("p", "a", "b", h[0]);
    mt_store_pair_hash("p", "a", "c", h[1]);
    mt_store_pair_hash("q", "a", "b", h[2]);
    const char *hashes[3] = {h[0], h[1], h[2]};
    mt_ref_logps v[2] = {{-12.5, -14.25, 5, 7}, {-3.0, -9.0, 2, 6}};
    mt_error err = {0};
    assert_int_equal(mt_store_ref_logps_put(s, &k, hashes, v, 2, &err), MT_OK);
    mt_ref_logps got[3];
    bool found[3];
    size_t n_found;
    assert_int_equal(mt_store_ref_logps_get(s, &k, hashes, 3, got, found, &n_found, &err), MT_OK);
    assert_int_equal(n_found, 2);
    assert_true(found[0] && found[1] && !found[2]);
    assert_float_equal(got[0].chosen, -12.5, 0);
    assert_float_equal(got[0].rejected, -14.25, 0);
    assert_int_equal(got[0].chosen_tokens, 5);
    assert_int_equal(got[1].rejected_tokens, 6);
    /* each part of the key matters: another adapter, tokenizer, truncation or base misses */
    mt_ref_key other[4] = {{"base-aaaa", "adapter-9", "tok-1111", trunc},
                           {"base-aaaa", NULL, "tok-2222", trunc},
                           {"base-aaaa", NULL, "tok-1111", "max_length=2048"},
                           {"base-bbbb", NULL, "tok-1111", trunc}};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(mt_store_ref_logps_get(s, &other[i], hashes, 3, got, found, &n_found, &err), MT_OK);
        assert_int_equal(n_found, 0);
    }
    /* "" and NULL adapter hashes are the same reference (the base alone) */
    mt_ref_key empty_adapter = {"base-aaaa", "", "tok-1111", trunc};
    assert_int_equal(mt_store_ref_logps_get(s, &empty_adapter, hashes, 1, got, found, &n_found, &err), MT_OK);
    assert_int_equal(n_found, 1);
    /* a put replaces; a non-finite value is refused and writes nothing of its batch */
    mt_ref_logps v2[2] = {{-1.0, -2.0, 1, 1}, {NAN, -1.0, 1, 1}};
    const char *hs2[2] = {h[2], h[0]};
    assert_int_equal(mt_store_ref_logps_put(s, &k, hs2, v2, 2, &err), MT_ERR_NUMERIC);
    mt_error_clear(&err);
    assert_int_equal(mt_store_ref_logps_get(s, &k, hashes, 3, got, found, &n_found, &err), MT_OK);
    assert_int_equal(n_found, 2);
    v2[1] = (mt_ref_logps){-4.0, -5.0, 3, 3};
    assert_int_equal(mt_store_ref_logps_put(s, &k, hs2, v2, 2, &err), MT_OK);
    assert_int_equal(mt_store_ref_logps_get(s, &k, hashes, 3, got, found, &n_found, &err), MT_OK);
    assert_int_equal(n_found, 3);
    assert_float_equal(got[0].chosen, -4.0, 0);
    assert_float_equal(got[2].rejected, -2.0, 0);
    /* a key without its parts is refused */
    mt_ref_key bad = {NULL, NULL, "tok", trunc};
    assert_int_equal(mt_store_ref_logps_get(s, &bad, hashes, 1, got, found, &n_found, &err), MT_ERR_INVALID);
    mt_store_close(s);
}

static void test_cli(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("pairs_cli");
    const char *path = write_file(dir, "mixed.jsonl", mixed_jsonl);
    char *out = NULL;
    int rc = mt_test_run_cli(&out, "pairs --store %s/cli.db import %s --dataset demo --strict", dir, path);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "mixed.jsonl:2: not valid JSON"));
    free(out);
    rc = mt_test_run_cli(&out, "pairs --store %s/cli.db import %s --dataset demo --eval-fraction 0.3", dir, path);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "3 pairs added"));
    assert_non_null(strstr(out, "3 lines refused"));
    assert_non_null(strstr(out, "mixed.jsonl:4: missing \"rejected\""));
    free(out);
    rc = mt_test_run_cli(&out, "pairs --store %s/cli.db list", dir);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "demo"));
    free(out);
    rc = mt_test_run_cli(&out, "pairs --store %s/cli.db list --dataset demo", dir);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "prompt:   p7"));
    free(out);
    rc = mt_test_run_cli(&out, "pairs --store %s/cli.db stats --dataset demo", dir);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "3 pairs"));
    assert_non_null(strstr(out, "refused"));
    assert_non_null(strstr(out, ":6: \"chosen\" and \"rejected\" are identical"));
    free(out);
    rc = mt_test_run_cli(&out, "pairs --store %s/cli.db export --dataset demo --out %s/export.jsonl", dir, dir);
    assert_int_equal(rc, 0);
    free(out);
    char ep[1024], *text = NULL;
    size_t len;
    snprintf(ep, sizeof ep, "%s/export.jsonl", dir);
    mt_error err = {0};
    assert_int_equal(mt_read_file(ep, &text, &len, &err), MT_OK);
    assert_non_null(strstr(text, "{\"prompt\":\"p1\",\"chosen\":\"a\",\"rejected\":\"b\"}\n"));
    free(text);
    /* token lengths with a tokenizer; the counts are those of HF tokenizers on the same file
     * ("Hello" 3, " world" 1, " there friend" 4, "Hi there" 3, "Hello you" 4, "No" 2) */
    const char *tl = write_file(dir, "tok.jsonl",
                                "{\"prompt\": \"Hello\", \"chosen\": \" world\", \"rejected\": \" there friend\"}\n"
                                "{\"chosen\": [{\"role\": \"user\", \"content\": \"Hi there\"}, {\"role\": \"assistant\","
                                " \"content\": \"Hello you\"}], \"rejected\": [{\"role\": \"user\", \"content\":"
                                " \"Hi there\"}, {\"role\": \"assistant\", \"content\": \"No\"}]}\n");
    rc = mt_test_run_cli(&out, "pairs --store %s/cli.db import %s --dataset tok", dir, tl);
    assert_int_equal(rc, 0);
    free(out);
    rc = mt_test_run_cli(&out, "pairs --store %s/cli.db stats --dataset tok --tokenizer %s", dir,
                         mt_test_fixture("tokenizers/gpt2/tokenizer.json"));
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "prompt    min 3  mean 3.0  max 3"));
    assert_non_null(strstr(out, "chosen    min 1  mean 2.5  max 4"));
    assert_non_null(strstr(out, "rejected  min 2  mean 3.0  max 4"));
    free(out);
    /* readers do not create stores; unknown datasets are named */
    rc = mt_test_run_cli(&out, "pairs --store %s/none.db list", dir);
    assert_int_not_equal(rc, 0);
    free(out);
    rc = mt_test_run_cli(&out, "pairs --store %s/cli.db stats --dataset nope", dir);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "no pair dataset named \"nope\""));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_format),
        cmocka_unit_test(test_implicit_prompt_as_trl),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_dedup),
        cmocka_unit_test(test_lenient_and_strict),
        cmocka_unit_test(test_split_is_deterministic),
        cmocka_unit_test(test_import_is_atomic),
        cmocka_unit_test(test_export_reimport),
        cmocka_unit_test(test_ref_logp_cache),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
