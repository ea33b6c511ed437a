/* util.c — status-to-exit-code mapping and backend creation shared by the subcommands. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int mt_cli_exit_code(mt_status s) {
    switch (s) {
    case MT_OK: return 0;
    case MT_ERR_FORMAT:
    case MT_ERR_INVALID:
    case MT_ERR_UNSUPPORTED:
    case MT_ERR_NOT_FOUND: return 2;
    case MT_ERR_INTERRUPTED: return 130;
    default: return 1;
    }
}

int mt_cli_fail(const char *cmd, const mt_error *err) {
    fprintf(stderr, "moetune %s: %s\n", cmd, err->msg[0] ? err->msg : mt_status_name(err->code));
    return mt_cli_exit_code(err->code);
}

mt_backend *mt_cli_backend(const char *cmd, const char *device, int threads) {
    mt_backend_kind kind = MT_BACKEND_CPU;
    if (device && !strcmp(device, "cuda"))
        kind = MT_BACKEND_CUDA;
    else if (device && strcmp(device, "cpu")) {
        fprintf(stderr, "moetune %s: --device must be cpu or cuda, not '%s'\n", cmd, device);
        return NULL;
    }
    mt_backend *be = NULL;
    mt_error err = {0};
    if (mt_backend_init(&be, kind, threads, &err) != MT_OK) {
        mt_cli_fail(cmd, &err);
        return NULL;
    }
    return be;
}

const char *mt_cli_value(const char *name, int argc, char **argv, int *i) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n)) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] || *i + 1 >= argc) return NULL;
    return argv[++*i];
}

bool mt_cli_is_flag(const char *arg, const char *name) {
    size_t n = strlen(name);
    return !strncmp(arg, name, n) && (arg[n] == '\0' || arg[n] == '=');
}

bool mt_cli_parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool mt_cli_parse_double(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

bool mt_cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return true;
    return false;
}
