/* cmd_data.c — `moetune data legal|medical|general OUT.jsonl [options]` builds a domain corpus
 * from text on this machine (corpora/) and prints what it read, dropped and wrote;
 * `moetune data medical-pairs OUT.jsonl` makes preference pairs of its definitions. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "corpora/corpora.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune data legal|medical|general OUT.jsonl [--eval-fraction F] [--max-bytes N|none]\n"
            "                    [--root DIR] [--seed N]\n"
            "       moetune data medical-pairs OUT.jsonl [--max-chars N] [--root DIR] [--seed N]\n"
            "\n"
            "legal    license texts: /usr/share/common-licenses and every /usr/share/doc/*/copyright\n"
            "medical  GCIDE entries tagged (Med.), (Anat.), (Pathol.), (Physiol.), (Surg.) (dict-gcide)\n"
            "general  other GCIDE entries, info manuals, README/NEWS files, legal text left out\n"
            "\n"
            "medical-pairs  preference pairs of the medical corpus: prompt \"Term:\", chosen its definition,\n"
            "         rejected another term's (TRL JSONL for `moetune pairs import`, which splits them)\n"
            "\n"
            "Writes OUT.jsonl (train) and OUT.eval.jsonl (held out), one {\"text\",\"source\",\"id\"} per line.\n"
            "  --max-chars N      medical-pairs: definitions cut to their first sentence and N bytes (160)\n"
            "  --eval-fraction F  share of documents held out, 0..0.5 (default 0.05, at least 3 documents)\n"
            "  --max-bytes N      cap on the text kept, with K/M/G suffixes, or 'none' (default: 8M for\n"
            "                     general, none for legal and medical)\n"
            "  --root DIR         read DIR/usr/share/... instead of /usr/share/... (default /)\n"
            "  --seed N           changes which documents are held out and sampled (default 0)\n"
            "details: docs/data.md\n");
}

/* "8M", "512k", "1G", "123" */
static bool parse_bytes(const char *s, uint64_t *out) {
    if (!strcmp(s, "none")) {
        *out = MT_CORPUS_NO_CAP;
        return true;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno || s[0] == '-') return false;
    int shift = 0;
    if (*end == 'k' || *end == 'K')
        shift = 10;
    else if (*end == 'm' || *end == 'M')
        shift = 20;
    else if (*end == 'g' || *end == 'G')
        shift = 30;
    if (shift) end++;
    if (*end || v == 0 || v > (UINT64_MAX >> shift)) return false;
    *out = (uint64_t)v << shift;
    return true;
}

static void print_stats(mt_corpus_kind kind, const char *out, const char *eval, const mt_corpus_stats *s) {
    printf("corpus:            %s\n", mt_corpus_kind_name(kind));
    printf("train:             %s  (%llu documents, %llu bytes)\n", out, (unsigned long long)s->docs_train,
           (unsigned long long)s->bytes_train);
    printf("eval:              %s  (%llu documents, %llu bytes)\n", eval, (unsigned long long)s->docs_eval,
           (unsigned long long)s->bytes_eval);
    printf("files read:        %llu  (%llu bytes decoded)\n", (unsigned long long)s->files_read,
           (unsigned long long)s->bytes_read);
    printf("files skipped:     %llu  (binary, empty, unreadable, or another path to a file read)\n",
           (unsigned long long)s->files_skipped);
    printf("files repaired:    %llu  (not UTF-8: re-decoded as Windows-1252)\n", (unsigned long long)s->files_repaired);
    if (kind != MT_CORPUS_KIND_LEGAL) printf("GCIDE entries:     %llu\n", (unsigned long long)s->entries_read);
    printf("documents seen:    %llu\n", (unsigned long long)s->docs_seen);
    printf("  duplicate:       %llu\n", (unsigned long long)s->docs_duplicate);
    printf("  too small:       %llu  (after paragraph dedup)\n", (unsigned long long)s->docs_empty);
    printf("  over max-bytes:  %llu\n", (unsigned long long)s->docs_capped);
    printf("  kept:            %llu\n", (unsigned long long)(s->docs_train + s->docs_eval));
    if (kind != MT_CORPUS_KIND_MEDICAL) {
        printf("paragraphs seen:   %llu\n", (unsigned long long)s->paragraphs_seen);
        printf("  duplicate:       %llu\n", (unsigned long long)s->paragraphs_duplicate);
    }
    if (kind == MT_CORPUS_KIND_GENERAL) printf("  legal, dropped:  %llu\n", (unsigned long long)s->paragraphs_legal);
    if (kind == MT_CORPUS_KIND_MEDICAL)
        for (int t = 0; t < MT_CORPUS_TAG_COUNT; t++)
            printf("tag %-9s      %llu documents\n", mt_corpus_tag_name((mt_corpus_tag)t),
                   (unsigned long long)s->tag_docs[t]);
}

int mt_cmd_data(int argc, char **argv) {
    mt_corpus_opts opts;
    mt_corpus_opts_default(&opts);
    const char *kind_name = NULL, *out = NULL;
    size_t max_chars = 160;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (mt_cli_is_flag(a, "--eval-fraction")) {
            char *end;
            if (!(v = mt_cli_value("--eval-fraction", argc, argv, &i)) || !*v ||
                ((opts.eval_fraction = strtod(v, &end)), *end) || !isfinite(opts.eval_fraction) ||
                opts.eval_fraction < 0 || opts.eval_fraction > 0.5) {
                fprintf(stderr, "moetune data: --eval-fraction needs a number in [0, 0.5]\n");
                return 2;
            }
        } else if (mt_cli_is_flag(a, "--max-bytes")) {
            if (!(v = mt_cli_value("--max-bytes", argc, argv, &i)) || !parse_bytes(v, &opts.max_bytes)) {
                fprintf(stderr, "moetune data: --max-bytes needs a size > 0 (e.g. 8M) or 'none'\n");
                return 2;
            }
        } else if (mt_cli_is_flag(a, "--max-chars")) {
            char *end;
            long n;
            if (!(v = mt_cli_value("--max-chars", argc, argv, &i)) || !*v || ((n = strtol(v, &end, 10)), *end) ||
                n < 16 || n > 100000) {
                fprintf(stderr, "moetune data: --max-chars needs a whole number in [16, 100000]\n");
                return 2;
            }
            max_chars = (size_t)n;
        } else if (mt_cli_is_flag(a, "--root")) {
            if (!(v = mt_cli_value("--root", argc, argv, &i)) || !*v) {
                fprintf(stderr, "moetune data: --root needs a folder\n");
                return 2;
            }
            opts.root = v;
        } else if (mt_cli_is_flag(a, "--seed")) {
            char *end;
            if (!(v = mt_cli_value("--seed", argc, argv, &i)) || !*v || v[0] == '-' ||
                ((errno = 0), (opts.seed = strtoull(v, &end, 10)), *end) || errno) {
                fprintf(stderr, "moetune data: --seed needs a whole number ≥ 0\n");
                return 2;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "moetune data: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!kind_name) {
            kind_name = a;
        } else if (!out) {
            out = a;
        } else {
            fprintf(stderr, "moetune data: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!kind_name || !out) {
        usage(stderr);
        return 2;
    }
    mt_error err = {0};
    if (!strcmp(kind_name, "medical-pairs")) {
        mt_definition_pairs_stats ps;
        if (mt_corpus_definition_pairs(out, &opts, max_chars, &ps, &err) != MT_OK) return mt_cli_fail("data", &err);
        printf("definitions:       %llu  (from the medical corpus; %llu entries without one)\n",
               (unsigned long long)ps.definitions, (unsigned long long)ps.entries_skipped);
        printf("pairs:             %s  (%llu; %llu terms left out: the other term had the same definition)\n", out,
               (unsigned long long)ps.pairs, (unsigned long long)ps.same_definition);
        return 0;
    }
    mt_corpus_kind kind;
    if (mt_corpus_kind_parse(kind_name, &kind, &err) != MT_OK) return mt_cli_fail("data", &err);
    char eval[4096];
    if (!mt_corpus_eval_path(out, eval, sizeof eval)) {
        fprintf(stderr, "moetune data: %s: path too long\n", out);
        return 2;
    }
    mt_corpus_stats stats;
    if (mt_corpus_build(kind, out, &opts, &stats, &err) != MT_OK) return mt_cli_fail("data", &err);
    print_stats(kind, out, eval, &stats);
    return 0;
}
