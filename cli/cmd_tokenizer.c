/* cmd_tokenizer.c — `moetune tokenizer train|encode|decode`: trains a byte-level BPE tokenizer
 * from text files (tokenizer/bpe_train.c), prints the ids of a text, or the text of ids, with any
 * Hugging Face tokenizer.json (tokenizer/). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/model.h"

static void usage_train(FILE *f) {
    fprintf(f,
            "usage: moetune tokenizer train --out DIR --vocab-size N [--min-frequency N]\n"
            "                               [--pretok gpt2|llama3|qwen2|deepseek_v3] [--special TOK]...\n"
            "                               [--bos TOK] [--eos TOK] [--max-bytes N] FILES/FOLDERS...\n"
            "\n"
            "Learns a byte-level BPE vocabulary (the 256 byte tokens, then merges by pair frequency, ties\n"
            "to the lower pair of ids, as the Hugging Face BpeTrainer) from text files; folders are read\n"
            "recursively. Writes DIR/tokenizer.json and DIR/tokenizer_config.json.\n"
            "  --vocab-size N     tokens in all, byte tokens and special tokens included\n"
            "  --min-frequency N  pairs seen fewer times are not merged (default 0)\n"
            "  --pretok STYLE     pre-tokenizer and normalizer of that model family (default llama3)\n"
            "  --special TOK      a special token, added after the learnt vocabulary (repeat for more)\n"
            "  --bos TOK          beginning-of-sequence token: added as special, and put before every\n"
            "                     encoded text by the post-processor\n"
            "  --eos TOK          end-of-sequence token, added as special\n"
            "  --max-bytes N      read at most about N bytes of input (default: all)\n");
}

static void usage_encode(FILE *f) {
    fprintf(f,
            "usage: moetune tokenizer encode --tokenizer PATH [--text T] [--no-special]\n"
            "\n"
            "Prints the ids of T (or of standard input) on one line, as Hugging Face's\n"
            "tokenizer.encode(text) gives them.\n"
            "  --tokenizer PATH   a tokenizer.json, or a folder holding it and tokenizer_config.json\n"
            "  --no-special       leave out what the post-processor adds (BOS and the like)\n");
}

static void usage_decode(FILE *f) {
    fprintf(f,
            "usage: moetune tokenizer decode --tokenizer PATH [--skip-special] [IDS...]\n"
            "\n"
            "Prints the text of the ids (arguments, or whitespace-separated on standard input), as\n"
            "Hugging Face's tokenizer.decode(ids) gives it.\n"
            "  --tokenizer PATH   a tokenizer.json, or a folder holding it and tokenizer_config.json\n"
            "  --skip-special     leave special tokens out\n");
}

static void usage(FILE *f) {
    fprintf(f, "usage: moetune tokenizer train|encode|decode [options]   (--help after each for its options)\n");
}

static int bad_value(const char *cmd, const char *opt, const char *v) {
    fprintf(stderr, "moetune tokenizer %s: bad or missing value for %s%s%s\n", cmd, opt, v ? ": " : "", v ? v : "");
    return 2;
}

static int cmd_train(int argc, char **argv) {
    mt_bpe_train_opts o = {.vocab_size = 0, .pretok = MT_PRETOK_LLAMA3};
    const char *out = NULL;
    const char **specials = mt_xcalloc((size_t)argc + 1, sizeof *specials);
    const char **files = mt_xcalloc((size_t)argc + 1, sizeof *files);
    int n_files = 0, rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        long num;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_train(stdout);
            rc = 0;
            goto done;
        } else if (mt_cli_is_flag(a, "--out")) {
            if (!(out = mt_cli_value("--out", argc, argv, &i))) goto bad_opt;
        } else if (mt_cli_is_flag(a, "--vocab-size")) {
            if (!(v = mt_cli_value("--vocab-size", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 1 << 24, &num)) goto bad_opt;
            o.vocab_size = (int)num;
        } else if (mt_cli_is_flag(a, "--min-frequency")) {
            if (!(v = mt_cli_value("--min-frequency", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 1L << 30, &num))
                goto bad_opt;
            o.min_frequency = (int)num;
        } else if (mt_cli_is_flag(a, "--max-bytes")) {
            if (!(v = mt_cli_value("--max-bytes", argc, argv, &i)) || !mt_cli_parse_long(v, 1, LONG_MAX, &num)) goto bad_opt;
            o.max_bytes = (size_t)num;
        } else if (mt_cli_is_flag(a, "--pretok")) {
            static const char *const names[] = {"gpt2", "llama3", "qwen2", "deepseek_v3"};
            if (!(v = mt_cli_value("--pretok", argc, argv, &i))) goto bad_opt;
            int found = -1;
            for (int k = 0; k < 4; k++)
                if (!strcmp(v, names[k])) found = k;
            if (found < 0) goto bad_opt;
            o.pretok = (mt_pretok_style)found;
        } else if (mt_cli_is_flag(a, "--special")) {
            if (!(v = mt_cli_value("--special", argc, argv, &i))) goto bad_opt;
            specials[o.n_special++] = v;
        } else if (mt_cli_is_flag(a, "--bos")) {
            if (!(o.bos_token = mt_cli_value("--bos", argc, argv, &i))) goto bad_opt;
        } else if (mt_cli_is_flag(a, "--eos")) {
            if (!(o.eos_token = mt_cli_value("--eos", argc, argv, &i))) goto bad_opt;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "moetune tokenizer train: unknown option '%s'\n", a);
            usage_train(stderr);
            goto done;
        } else
            files[n_files++] = a;
        continue;
    bad_opt:
        rc = bad_value("train", a, v);
        goto done;
    }
    if (!out || !o.vocab_size || !n_files) {
        fprintf(stderr, "moetune tokenizer train: --out, --vocab-size and at least one input are required\n");
        usage_train(stderr);
        goto done;
    }
    o.special_tokens = specials;
    mt_error err = {0};
    double t0 = mt_now_seconds();
    if (mt_tokenizer_train(files, n_files, &o, out, &err) != MT_OK) {
        rc = mt_cli_fail("tokenizer train", &err);
        goto done;
    }
    mt_tokenizer *tok = NULL;
    if (mt_tokenizer_load(&tok, out, &err) != MT_OK) {
        rc = mt_cli_fail("tokenizer train", &err);
        goto done;
    }
    printf("wrote %s/tokenizer.json (%d tokens) and tokenizer_config.json in %.2f s\n", out,
           mt_tokenizer_vocab_size(tok), mt_now_seconds() - t0);
    mt_tokenizer_free(tok);
    rc = 0;
done:
    free(specials);
    free(files);
    return rc;
}

/* Standard input, whole. */
static char *read_stdin(size_t *len) {
    size_t cap = 65536, n = 0, got;
    char *buf = mt_xmalloc(cap);
    while ((got = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) buf = mt_xrealloc(buf, cap *= 2);
    }
    *len = n;
    return buf;
}

static int cmd_encode(int argc, char **argv) {
    const char *path = NULL, *text = NULL;
    bool special = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_encode(stdout);
            return 0;
        } else if (mt_cli_is_flag(a, "--tokenizer")) {
            if (!(path = mt_cli_value("--tokenizer", argc, argv, &i))) return bad_value("encode", a, NULL);
        } else if (mt_cli_is_flag(a, "--text")) {
            if (!(text = mt_cli_value("--text", argc, argv, &i))) return bad_value("encode", a, NULL);
        } else if (!strcmp(a, "--no-special")) {
            special = false;
        } else {
            fprintf(stderr, "moetune tokenizer encode: unknown argument '%s'\n", a);
            usage_encode(stderr);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "moetune tokenizer encode: --tokenizer is required\n");
        return 2;
    }
    mt_error err = {0};
    mt_tokenizer *tok;
    if (mt_tokenizer_load(&tok, path, &err) != MT_OK) return mt_cli_fail("tokenizer encode", &err);
    char *input = NULL;
    size_t len = text ? strlen(text) : 0;
    if (!text) text = input = read_stdin(&len);
    int32_t *ids;
    size_t n;
    mt_status st = mt_tokenizer_encode(tok, text, len, special, &ids, &n, &err);
    free(input);
    mt_tokenizer_free(tok);
    if (st) return mt_cli_fail("tokenizer encode", &err);
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    free(ids);
    return 0;
}

static bool push_id(const char *s, int32_t **ids, size_t *n, size_t *cap) {
    long v;
    if (!mt_cli_parse_long(s, 0, INT32_MAX, &v)) return false;
    if (*n == *cap) *ids = mt_xrealloc(*ids, (*cap = *cap ? *cap * 2 : 64) * sizeof **ids);
    (*ids)[(*n)++] = (int32_t)v;
    return true;
}

static int cmd_decode(int argc, char **argv) {
    const char *path = NULL;
    bool skip = false;
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    bool from_args = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_decode(stdout);
            free(ids);
            return 0;
        } else if (mt_cli_is_flag(a, "--tokenizer")) {
            if (!(path = mt_cli_value("--tokenizer", argc, argv, &i))) {
                free(ids);
                return bad_value("decode", a, NULL);
            }
        } else if (!strcmp(a, "--skip-special")) {
            skip = true;
        } else if (push_id(a, &ids, &n, &cap)) {
            from_args = true;
        } else {
            fprintf(stderr, "moetune tokenizer decode: '%s' is neither an option nor an id\n", a);
            usage_decode(stderr);
            free(ids);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "moetune tokenizer decode: --tokenizer is required\n");
        free(ids);
        return 2;
    }
    if (!from_args) {
        size_t len;
        char *in = read_stdin(&len);
        in = mt_xrealloc(in, len + 1);
        in[len] = '\0';
        for (char *tokp = strtok(in, " \t\r\n"); tokp; tokp = strtok(NULL, " \t\r\n"))
            if (!push_id(tokp, &ids, &n, &cap)) {
                fprintf(stderr, "moetune tokenizer decode: '%s' on standard input is not an id\n", tokp);
                free(in);
                free(ids);
                return 2;
            }
        free(in);
    }
    mt_error err = {0};
    mt_tokenizer *tok;
    if (mt_tokenizer_load(&tok, path, &err) != MT_OK) {
        free(ids);
        return mt_cli_fail("tokenizer decode", &err);
    }
    char *text;
    size_t len;
    mt_status st = mt_tokenizer_decode(tok, ids, n, skip, &text, &len, &err);
    mt_tokenizer_free(tok);
    free(ids);
    if (st) return mt_cli_fail("tokenizer decode", &err);
    fwrite(text, 1, len, stdout);
    printf("\n");
    free(text);
    return 0;
}

int mt_cmd_tokenizer(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "encode")) return cmd_encode(argc - 1, argv + 1);
    if (!strcmp(argv[1], "decode")) return cmd_decode(argc - 1, argv + 1);
    fprintf(stderr, "moetune tokenizer: unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
