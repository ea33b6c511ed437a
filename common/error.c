/* error.c — status names, the first-error-wins message slot, and the assertion handler. */
#include "common/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const status_names[MT_STATUS_COUNT] = {
    [MT_OK] = "ok",
    [MT_ERR_IO] = "I/O error",
    [MT_ERR_FORMAT] = "malformed input",
    [MT_ERR_INVALID] = "invalid value",
    [MT_ERR_NOMEM] = "out of memory",
    [MT_ERR_UNSUPPORTED] = "unsupported",
    [MT_ERR_NOT_FOUND] = "not found",
    [MT_ERR_DB] = "database error",
    [MT_ERR_NUMERIC] = "non-finite number",
    [MT_ERR_INTERRUPTED] = "interrupted",
    [MT_ERR_EXHAUSTED] = "exhausted",
};

const char *mt_status_name(mt_status s) {
    if ((unsigned)s >= MT_STATUS_COUNT) return "unknown status";
    return status_names[s];
}

mt_status mt_error_set(mt_error *err, mt_status code, const char *fmt, ...) {
    if (!err || err->code != MT_OK) return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

void mt_error_prefix(mt_error *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char joined[sizeof err->msg];
    snprintf(joined, sizeof joined, "%s%s", prefix, err->msg);
    memcpy(err->msg, joined, sizeof err->msg);
}

void mt_error_clear(mt_error *err) {
    if (!err) return;
    err->code = MT_OK;
    err->msg[0] = '\0';
}

_Noreturn void mt_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "moetune: internal error: assertion `%s' failed at %s:%d\n", expr, file, line);
    abort();
}
