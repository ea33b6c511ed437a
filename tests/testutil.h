/* testutil.h — what the cmocka tests share: array comparisons with relative error, fixture
 * paths, scratch folders, and running the moetune binary as a user would. */
#ifndef MT_TESTUTIL_H
#define MT_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the three headers above first */
#include <cmocka.h>

#include "common/common.h"

/* max_i |a_i − b_i| / max(max_i |b_i|, floor): one scale for the whole tensor, so that tiny
 * entries do not blow up the ratio (the NMSE-style comparison test-backend-ops uses). */
double mt_test_rel_err(const float *a, const float *b, size_t n, double floor);
/* Fails the test with the worst index and both values when the relative error exceeds tol. */
void mt_test_assert_close(const char *what, const float *got, const float *want, size_t n, double tol);

/* "<fixtures>/<rel>" into a static buffer (one call at a time). */
const char *mt_test_fixture(const char *rel);
/* A fresh empty folder under the build tree, named after the test; returns a static path. */
const char *mt_test_tmpdir(const char *name);
/* Runs `moetune <args>` through /bin/sh; returns the exit status and, when out != NULL, the
 * combined stdout+stderr (malloc'ed). */
int mt_test_run_cli(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Fills x with uniform values in [lo, hi) from a seeded generator. */
void mt_test_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed);

#endif
