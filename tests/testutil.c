/* testutil.c — shared helpers for the cmocka tests. */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

double mt_test_rel_err(const float *a, const float *b, size_t n, double floor) {
    double scale = floor, worst = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(b[i]) > scale) scale = fabs(b[i]);
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= worst)) worst = d; /* NaN propagates as a failure */
    }
    return worst / scale;
}

void mt_test_assert_close(const char *what, const float *got, const float *want, size_t n, double tol) {
    double scale = 1e-30, worst = -1;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(want[i]) > scale) scale = fabs(want[i]);
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (isnan(d)) d = INFINITY;
        if (d > worst) {
            worst = d;
            wi = i;
        }
    }
    double rel = n ? worst / scale : 0;
    if (!(rel <= tol)) {
        fail_msg("%s: relative error %.3g > %.3g at [%zu]: got %.9g, want %.9g (scale %.4g, n %zu)", what, rel, tol,
                 wi, (double)got[wi], (double)want[wi], scale, n);
    }
}

const char *mt_test_fixture(const char *rel) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", MT_FIXTURES_DIR, rel);
    return buf;
}

const char *mt_test_tmpdir(const char *name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", MT_TEST_TMP_DIR, name);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", buf, buf);
    if (system(cmd) != 0) fail_msg("cannot create %s", buf);
    return buf;
}

int mt_test_run_cli(char **out, const char *fmt, ...) {
    char args[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", MT_MOETUNE_BIN, args);
    FILE *p = popen(cmd, "r");
    if (!p) fail_msg("popen failed for %s", cmd);
    size_t cap = 4096, n = 0;
    char *buf = mt_xmalloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            cap *= 2;
            buf = mt_xrealloc(buf, cap);
        }
    }
    buf[n] = '\0';
    int status = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void mt_test_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed) {
    mt_rng r;
    mt_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * mt_rng_float(&r);
}
