/* cli.h — the subcommand table and the few helpers every subcommand shares (status → exit
 * code, backend from --threads). The CLI holds no logic of its own: each command parses its
 * flags and calls a library. */
#ifndef MT_CLI_H
#define MT_CLI_H

#include <stdbool.h>

#include "common/common.h"
#include "kernels/kernels.h"

typedef struct mt_cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
} mt_cli_command;

/* Prints "moetune <cmd>: <message>" to stderr and returns the exit code for the status. */
int mt_cli_fail(const char *cmd, const mt_error *err);
/* Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad input. */
int mt_cli_exit_code(mt_status s);
/* Backend for --device/--threads; prints the error and returns NULL on failure. */
mt_backend *mt_cli_backend(const char *cmd, const char *device, int threads);

/* Flag parsing shared by the subcommands. mt_cli_value accepts "--name V" and "--name=V" and
 * advances *i past the value; NULL when argv[*i] is not that flag or the value is missing. */
const char *mt_cli_value(const char *name, int argc, char **argv, int *i);
bool mt_cli_is_flag(const char *arg, const char *name);
bool mt_cli_parse_long(const char *s, long lo, long hi, long *out);
bool mt_cli_parse_double(const char *s, double lo, double hi, double *out);
bool mt_cli_wants_help(int argc, char **argv);

int mt_cmd_train(int argc, char **argv);
int mt_cmd_eval(int argc, char **argv);
int mt_cmd_export(int argc, char **argv);
int mt_cmd_init(int argc, char **argv);
int mt_cmd_generate(int argc, char **argv);
int mt_cmd_serve(int argc, char **argv);
int mt_cmd_ui(int argc, char **argv);
int mt_cmd_bench(int argc, char **argv);
int mt_cmd_bench_train(int argc, char **argv);
int mt_cmd_bench_serve(int argc, char **argv);
int mt_cmd_bench_decode(int argc, char **argv);
int mt_cmd_tokenizer(int argc, char **argv);
int mt_cmd_recipe(int argc, char **argv);
int mt_cmd_runs(int argc, char **argv);
int mt_cmd_data(int argc, char **argv);
int mt_cmd_pairs(int argc, char **argv);
int mt_cmd_profile(int argc, char **argv);

#endif
