/* cmd_pairs.c — `moetune pairs`: import preference pairs from JSONL into the store, list them,
 * show a dataset's stats (with token lengths when given a tokenizer) and export them as TRL
 * JSONL. Parsing, dedup, splits and transactions are store/ calls; this file formats. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "store/store.h"
#include "tokenizer/tokenizer.h"

#define CMD "pairs"
#define MAX_SHOWN_REFUSALS 20

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune pairs [--store PATH] <command>\n"
            "\n"
            "commands:\n"
            "  import FILE.jsonl --dataset NAME [--strict] [--eval-fraction F]\n"
            "                       add the pairs of a JSONL file to a named dataset, in one transaction.\n"
            "                       Lines: {\"prompt\",\"chosen\",\"rejected\"} as strings or message lists,\n"
            "                       or {\"chosen\",\"rejected\"} sharing a prefix (the prompt is extracted as\n"
            "                       TRL does); optional \"score\", \"label_source\", \"annotator\".\n"
            "                       Duplicates (same content) are dropped; a malformed line is reported\n"
            "                       with its number and skipped, or fails the import with --strict.\n"
            "                       --eval-fraction F: share of pairs, chosen by content hash, held out\n"
            "                       as the eval split (default 0.05)\n"
            "  list [--dataset NAME] [--split train|eval] [--limit N]\n"
            "                       without --dataset: the pair datasets; with it: its pairs\n"
            "  stats --dataset NAME [--tokenizer PATH]\n"
            "                       counts per split and form, duplicates dropped, lines refused with\n"
            "                       reasons; token lengths with a tokenizer.json (conversational pairs:\n"
            "                       the message contents, without a chat template)\n"
            "  export --dataset NAME [--split train|eval] [--out FILE]\n"
            "                       the pairs as TRL JSONL (standard output by default)\n"
            "\n"
            "options:\n"
            "  --store PATH         the store (default: $MOETUNE_STORE, else ./moetune.db)\n");
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "moetune " CMD ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(moetune pairs --help for the commands)\n");
    return 2;
}

typedef struct args {
    const char *store, *command, *file, *dataset, *split, *out, *tokenizer;
    bool strict;
    double eval_fraction;
    long limit;
} args;

static int parse_args(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    a->eval_fraction = 0.05;
    a->limit = 20;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if ((v = mt_cli_value("--store", argc, argv, &i)))
            a->store = v;
        else if ((v = mt_cli_value("--dataset", argc, argv, &i)))
            a->dataset = v;
        else if ((v = mt_cli_value("--split", argc, argv, &i)))
            a->split = v;
        else if ((v = mt_cli_value("--out", argc, argv, &i)))
            a->out = v;
        else if ((v = mt_cli_value("--tokenizer", argc, argv, &i)))
            a->tokenizer = v;
        else if ((v = mt_cli_value("--eval-fraction", argc, argv, &i))) {
            if (!mt_cli_parse_double(v, 0, 0.999999, &a->eval_fraction))
                return usage_error("--eval-fraction %s: give a number in [0, 1)", v);
        } else if ((v = mt_cli_value("--limit", argc, argv, &i))) {
            if (!mt_cli_parse_long(v, -1, 1L << 40, &a->limit)) return usage_error("--limit %s: give a count", v);
        } else if (mt_cli_is_flag(argv[i], "--strict"))
            a->strict = true;
        else if (argv[i][0] == '-' && argv[i][1])
            return usage_error("unknown or incomplete option %s", argv[i]);
        else if (!a->command)
            a->command = argv[i];
        else if (!a->file)
            a->file = argv[i];
        else
            return usage_error("unexpected argument %s", argv[i]);
    }
    if (!a->command) return usage_error("%s", "give a command: import, list, stats or export");
    if (!a->store) a->store = getenv("MOETUNE_STORE");
    if (!a->store || !*a->store) a->store = "moetune.db";
    return 0;
}

static void print_refusals(const mt_pairs_refusal *r, size_t n) {
    for (size_t i = 0; i < n && i < MAX_SHOWN_REFUSALS; i++)
        fprintf(stderr, "%s:%lld: %s\n", r[i].file ? r[i].file : "?", (long long)r[i].line, r[i].reason);
    if (n > MAX_SHOWN_REFUSALS)
        fprintf(stderr, "... and %zu more (moetune pairs stats lists them all)\n", n - MAX_SHOWN_REFUSALS);
}

static int cmd_import(mt_store *s, const args *a) {
    if (!a->file) return usage_error("%s", "import: give the JSONL file");
    if (!a->dataset) return usage_error("%s", "import: give --dataset NAME");
    mt_pairs_import_opts o = {a->dataset, a->strict, a->eval_fraction};
    mt_pairs_import_report rep;
    mt_error err = {0};
    mt_status st = mt_store_pairs_import(s, a->file, &o, &rep, &err);
    print_refusals(rep.refused, rep.n_refused);
    if (st != MT_OK) {
        mt_pairs_import_report_free(&rep);
        return mt_cli_fail(CMD, &err);
    }
    printf("dataset %s: %zu pairs added (train %zu, eval %zu) from %zu lines of %s; %zu duplicates dropped, "
           "%zu lines refused\n",
           a->dataset, rep.n_added, rep.n_train, rep.n_eval, rep.n_lines, a->file, rep.n_duplicates, rep.n_refused);
    printf("forms: standard %zu, conversational %zu, implicit %zu, implicit conversational %zu\n",
           rep.n_by_format[MT_PAIR_STANDARD], rep.n_by_format[MT_PAIR_CONVERSATIONAL],
           rep.n_by_format[MT_PAIR_IMPLICIT], rep.n_by_format[MT_PAIR_IMPLICIT_CONVERSATIONAL]);
    mt_pairs_import_report_free(&rep);
    return 0;
}

/* the first `cap` bytes of s on one line (newlines shown as ⏎), cut at a UTF-8 boundary */
static void one_line(char *out, size_t cap, const char *s) {
    size_t o = 0;
    for (; *s && o + 4 < cap; s++) {
        if (*s == '\n' || *s == '\t') {
            out[o++] = ' ';
            continue;
        }
        out[o++] = *s;
    }
    while (o > 0 && ((unsigned char)out[o - 1] & 0xC0) == 0x80) o--; /* drop a torn sequence */
    if (o > 0 && ((unsigned char)out[o - 1] & 0xC0) == 0xC0) o--;
    out[o] = '\0';
    if (*s && o + 3 < cap) strcat(out, "...");
}

static int cmd_list(mt_store *s, const args *a) {
    mt_error err = {0};
    if (!a->dataset) {
        mt_store_dataset_list l;
        if (mt_store_pair_datasets(s, &l, &err) != MT_OK) return mt_cli_fail(CMD, &err);
        printf("%-24s %8s  %s\n", "dataset", "pairs", "content sha256");
        for (size_t i = 0; i < l.n; i++)
            printf("%-24s %8lld  %.16s\n", l.items[i].path, (long long)l.items[i].n_docs, l.items[i].sha256);
        if (l.n == 0) printf("(no pair datasets; moetune pairs import FILE.jsonl --dataset NAME adds one)\n");
        mt_store_dataset_list_free(&l);
        return 0;
    }
    mt_pairs_query q = {a->dataset, a->split, 0, a->limit};
    mt_pair_record_list l;
    if (mt_store_pairs_list(s, &q, &l, &err) != MT_OK) return mt_cli_fail(CMD, &err);
    for (size_t i = 0; i < l.n; i++) {
        const mt_pair_record *r = &l.items[i];
        char p[64], c[64], j[64];
        one_line(p, sizeof p, r->prompt);
        one_line(c, sizeof c, r->chosen);
        one_line(j, sizeof j, r->rejected);
        printf("#%lld %s %s %s:%lld\n  prompt:   %s\n  chosen:   %s\n  rejected: %s\n", (long long)r->id,
               r->eval ? "eval" : "train", mt_pair_format_name(r->format), r->file ? r->file : "-",
               (long long)r->line, p, c, j);
    }
    mt_pair_record_list_free(&l);
    return 0;
}

/* the text a tokenizer should count: the string itself, or a message list's contents */
static char *countable_text(const char *s, bool conv) {
    if (!conv) return strdup(s);
    cJSON *a = cJSON_Parse(s);
    size_t cap = strlen(s) + 1, n = 0;
    char *out = calloc(1, cap);
    const cJSON *m;
    cJSON_ArrayForEach(m, a) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(c)) continue;
        size_t k = strlen(c->valuestring);
        if (n + k + 2 > cap) out = realloc(out, cap = 2 * (n + k + 2));
        if (n) out[n++] = '\n';
        memcpy(out + n, c->valuestring, k);
        out[n += k] = '\0';
    }
    cJSON_Delete(a);
    return out;
}

typedef struct length_stat {
    int64_t min, max;
    double sum;
} length_stat;

static int token_lengths(mt_store *s, const args *a) {
    mt_error err = {0};
    mt_tokenizer *tok;
    if (mt_tokenizer_load(&tok, a->tokenizer, &err) != MT_OK) return mt_cli_fail(CMD, &err);
    mt_pairs_query q = {a->dataset, a->split, 0, -1};
    mt_pair_record_list l;
    if (mt_store_pairs_list(s, &q, &l, &err) != MT_OK) {
        mt_tokenizer_free(tok);
        return mt_cli_fail(CMD, &err);
    }
    length_stat st[3];
    for (int k = 0; k < 3; k++) st[k] = (length_stat){INT64_MAX, 0, 0};
    int rc = 0;
    for (size_t i = 0; i < l.n && rc == 0; i++) {
        const mt_pair_record *r = &l.items[i];
        bool conv = r->format == MT_PAIR_CONVERSATIONAL || r->format == MT_PAIR_IMPLICIT_CONVERSATIONAL;
        const char *texts[3] = {r->prompt, r->chosen, r->rejected};
        for (int k = 0; k < 3; k++) {
            char *t = countable_text(texts[k], conv);
            int32_t *ids = NULL;
            size_t n = 0;
            if (mt_tokenizer_encode(tok, t, strlen(t), false, &ids, &n, &err) != MT_OK) rc = mt_cli_fail(CMD, &err);
            free(t);
            free(ids);
            if (rc) break;
            if ((int64_t)n < st[k].min) st[k].min = (int64_t)n;
            if ((int64_t)n > st[k].max) st[k].max = (int64_t)n;
            st[k].sum += (double)n;
        }
    }
    if (rc == 0 && l.n > 0) {
        const char *names[3] = {"prompt", "chosen", "rejected"};
        printf("tokens (%s, %zu pairs):\n", a->tokenizer, l.n);
        for (int k = 0; k < 3; k++)
            printf("  %-9s min %lld  mean %.1f  max %lld\n", names[k], (long long)st[k].min, st[k].sum / l.n,
                   (long long)st[k].max);
    }
    mt_pair_record_list_free(&l);
    mt_tokenizer_free(tok);
    return rc;
}

static int cmd_stats(mt_store *s, const args *a) {
    if (!a->dataset) return usage_error("%s", "stats: give --dataset NAME");
    mt_pairs_stats st;
    mt_error err = {0};
    if (mt_store_pairs_stats(s, a->dataset, &st, &err) != MT_OK) return mt_cli_fail(CMD, &err);
    printf("dataset %s: %lld pairs (train %lld, eval %lld)\n", a->dataset, (long long)st.n_pairs,
           (long long)st.n_train, (long long)st.n_eval);
    printf("forms: standard %lld, conversational %lld, implicit %lld, implicit conversational %lld\n",
           (long long)st.n_by_format[MT_PAIR_STANDARD], (long long)st.n_by_format[MT_PAIR_CONVERSATIONAL],
           (long long)st.n_by_format[MT_PAIR_IMPLICIT], (long long)st.n_by_format[MT_PAIR_IMPLICIT_CONVERSATIONAL]);
    printf("imports: %lld (%lld lines read, %lld duplicates dropped, %lld lines refused)\n", (long long)st.n_imports,
           (long long)st.n_lines, (long long)st.n_duplicates, (long long)st.n_refused);
    for (size_t i = 0; i < st.n_refused_listed; i++)
        printf("  refused %s:%lld: %s\n", st.refused[i].file, (long long)st.refused[i].line, st.refused[i].reason);
    mt_pairs_stats_free(&st);
    return a->tokenizer ? token_lengths(s, a) : 0;
}

static int cmd_export(mt_store *s, const args *a) {
    if (!a->dataset) return usage_error("%s", "export: give --dataset NAME");
    mt_pairs_query q = {a->dataset, a->split, 0, -1};
    mt_pair_record_list l;
    mt_error err = {0};
    if (mt_store_pairs_list(s, &q, &l, &err) != MT_OK) return mt_cli_fail(CMD, &err);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t i = 0; i < l.n; i++) {
        char *line = mt_pair_record_json(&l.items[i]);
        size_t k = strlen(line);
        if (n + k + 1 > cap) buf = realloc(buf, cap = 2 * (n + k + 1));
        memcpy(buf + n, line, k);
        buf[n + k] = '\n';
        n += k + 1;
        free(line);
    }
    mt_pair_record_list_free(&l);
    int rc = 0;
    if (a->out) {
        if (mt_write_file_atomic(a->out, buf, n, &err) != MT_OK)
            rc = mt_cli_fail(CMD, &err);
        else
            fprintf(stderr, "wrote %s\n", a->out);
    } else if (fwrite(buf, 1, n, stdout) != n) {
        fprintf(stderr, "moetune " CMD ": writing standard output failed\n");
        rc = 1;
    }
    free(buf);
    return rc;
}

int mt_cmd_pairs(int argc, char **argv) {
    if (mt_cli_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    static const struct {
        const char *name;
        int (*run)(mt_store *, const args *);
        bool writes;
    } commands[] = {
        {"import", cmd_import, true},
        {"list", cmd_list, false},
        {"stats", cmd_stats, false},
        {"export", cmd_export, false},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(a.command, commands[i].name)) continue;
        mt_store *s;
        mt_error err = {0};
        /* only an import may create the store; readers must not leave empty stores behind */
        if (mt_store_open(&s, a.store, commands[i].writes, &err) != MT_OK) return mt_cli_fail(CMD, &err);
        rc = commands[i].run(s, &a);
        mt_store_close(s);
        return rc;
    }
    return usage_error("unknown command %s (import, list, stats, export)", a.command);
}
