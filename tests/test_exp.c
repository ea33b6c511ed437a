/* test_exp.c — the CPU kernels' exp (kernels/cpu/cpu-impl.h) against libm in double: error in
 * ulps over the whole range the softmaxes use, the scalar and eight-lane versions bit for bit
 * equal, the edges (−inf → 0, +inf, NaN, underflow to 0), and exp_affine's sum. */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/cpu-impl.h"

static double ulp_err(float got, double want) {
    if (want == 0.0) return got == 0.0f ? 0.0 : INFINITY;
    int e;
    frexp(want, &e);
    double ulp = ldexp(1.0, e - 24); /* float ulp of a value in [2^(e−1), 2^e) */
    return fabs((double)got - want) / ulp;
}

static void test_exp_accuracy(void **state) {
    (void)state;
    double worst = 0;
    float worst_x = 0;
    int n = 0;
    for (float x = -87.0f; x <= 88.5f; x = nextafterf(x + 1e-3f * fabsf(x) + 1e-6f, INFINITY)) {
        double e = ulp_err(mt_cpu_expf(x), exp((double)x));
        if (e > worst) {
            worst = e;
            worst_x = x;
        }
        n++;
    }
    print_message("[ exp ] %d points in [-87, 88.5]: worst %.2f ulp at %g\n", n, worst, (double)worst_x);
    assert_true(n > 10000);
    assert_true(worst <= 2.0);
    assert_true(mt_cpu_expf(0.0f) == 1.0f);
    assert_true(mt_cpu_expf(-INFINITY) == 0.0f);
    assert_true(mt_cpu_expf(-200.0f) == 0.0f);
    assert_true(isinf(mt_cpu_expf(INFINITY)) && mt_cpu_expf(INFINITY) > 0);
    assert_true(isinf(mt_cpu_expf(100.0f)));
    assert_true(isnan(mt_cpu_expf(NAN)));
}

/* an element's value does not depend on where it falls: vector lanes = scalar tail */
static void test_exp_lanes(void **state) {
    (void)state;
    enum { N = 4099 };
    static float src[N], a[N], b[N];
    for (int i = 0; i < N; i++) src[i] = (float)(((i * 2654435761u) >> 8) % 20000u) / 100.0f - 150.0f;
    src[5] = -INFINITY;
    src[6] = INFINITY;
    src[7] = NAN;
    (void)mt_cpu_exp_affine(src, a, N, 0.75f, 3.0f);
    double want = 0;
    for (int i = 0; i < N; i++) {
        b[i] = mt_cpu_expf(fmaf(src[i], 0.75f, 3.0f));
        if (i != 6 && i != 7) want += b[i];
    }
    for (int i = 0; i < N; i++) {
        if (i == 7) {
            assert_true(isnan(a[i]));
            continue;
        }
        assert_memory_equal(&a[i], &b[i], sizeof(float));
    }
    /* in place, and without the infinite and NaN entries the sum matches a plain one */
    src[6] = 0.0f;
    src[7] = 0.0f;
    want += 2 * (double)mt_cpu_expf(3.0f);
    double sum = mt_cpu_exp_affine(src, src, N, 0.75f, 3.0f);
    assert_true(fabs(sum - want) <= 1e-12 * want);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_accuracy),
        cmocka_unit_test(test_exp_lanes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
