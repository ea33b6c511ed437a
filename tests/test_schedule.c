/* test_schedule.c — the learning-rate schedules (warmup, cosine, linear, constant) against values
 * worked out by hand, and the trainer's recorded lr curve against the schedule. Steps are
 * 0-based updates; warmup ramps (step+1)/warmup·lr so the first update already moves. */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "finetune/optim-impl.h"

/* peak 1e-3, floor 1e-4 (min_lr_ratio 0.1), warmup 4, 20 steps: the decay spans steps 4..20 */
static mt_recipe recipe(mt_recipe_schedule s) {
    mt_recipe r;
    memset(&r, 0, sizeof r);
    r.train.lr = 1e-3;
    r.train.schedule = s;
    r.train.min_lr_ratio = 0.1;
    return r;
}

static void expect(const mt_recipe *r, int64_t step, int64_t total, int64_t warmup, double want) {
    double got = mt_schedule_lr(r, step, total, warmup);
    if (!(fabs(got - want) <= 1e-12 * fabs(want) + 1e-18))
        fail_msg("schedule %d step %lld of %lld (warmup %lld): lr %.12g, expected %.12g", (int)r->train.schedule,
                 (long long)step, (long long)total, (long long)warmup, got, want);
}

static void test_warmup(void **state) {
    (void)state;
    for (int s = MT_RECIPE_SCHEDULE_COSINE; s <= MT_RECIPE_SCHEDULE_CONSTANT; s++) {
        mt_recipe r = recipe((mt_recipe_schedule)s);
        expect(&r, 0, 20, 4, 2.5e-4);
        expect(&r, 1, 20, 4, 5.0e-4);
        expect(&r, 2, 20, 4, 7.5e-4);
        expect(&r, 3, 20, 4, 1.0e-3);
        expect(&r, 4, 20, 4, 1.0e-3); /* decay starts at the peak */
    }
}

static void test_cosine(void **state) {
    (void)state;
    mt_recipe r = recipe(MT_RECIPE_SCHEDULE_COSINE);
    /* lr = 1e-4 + 9e-4·(1 + cos(π·(step−4)/16))/2 */
    expect(&r, 8, 20, 4, 1e-4 + 9e-4 * 0.5 * (1 + 0.70710678118654752)); /* a quarter: cos(π/4) */
    expect(&r, 12, 20, 4, 5.5e-4);                                     /* half way: exactly the mean */
    expect(&r, 16, 20, 4, 1e-4 + 9e-4 * 0.5 * (1 - 0.70710678118654752)); /* three quarters */
    expect(&r, 19, 20, 4, 1e-4 + 9e-4 * 0.5 * (1 - 0.98078528040323044)); /* cos(15π/16) */
    expect(&r, 20, 20, 4, 1e-4);                                        /* the end: the floor */
    expect(&r, 25, 20, 4, 1e-4);                                        /* past the end: stays */
    /* no warmup, floor 0: plain half-cosine from the peak */
    r.train.min_lr_ratio = 0;
    expect(&r, 0, 10, 0, 1e-3);
    expect(&r, 5, 10, 0, 5e-4);
    expect(&r, 10, 10, 0, 0);
}

static void test_linear(void **state) {
    (void)state;
    mt_recipe r = recipe(MT_RECIPE_SCHEDULE_LINEAR);
    expect(&r, 8, 20, 4, 7.75e-4);
    expect(&r, 12, 20, 4, 5.5e-4);
    expect(&r, 16, 20, 4, 3.25e-4);
    expect(&r, 20, 20, 4, 1e-4);
    r.train.min_lr_ratio = 0;
    expect(&r, 3, 10, 0, 7e-4);
}

static void test_constant(void **state) {
    (void)state;
    mt_recipe r = recipe(MT_RECIPE_SCHEDULE_CONSTANT);
    for (int64_t s = 4; s <= 20; s++) expect(&r, s, 20, 4, 1e-3);
    expect(&r, 0, 20, 0, 1e-3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_warmup),
        cmocka_unit_test(test_cosine),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_constant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
