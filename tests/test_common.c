/* test_common.c — the shared utilities: SHA-256 against FIPS vectors, the RNG's determinism
 * and save/restore, atomic writes, and the first-error-wins message slot. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_sha256_vectors(void **state) {
    (void)state;
    char hex[65];
    mt_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    mt_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    mt_sha256_hex(two, strlen(two), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* one million 'a', fed in uneven pieces to exercise the buffering */
    mt_sha256 s;
    mt_sha256_init(&s);
    char chunk[997];
    memset(chunk, 'a', sizeof chunk);
    size_t left = 1000000;
    while (left) {
        size_t n = left < sizeof chunk ? left : sizeof chunk;
        mt_sha256_update(&s, chunk, n);
        left -= n;
    }
    uint8_t d[32];
    mt_sha256_final(&s, d);
    char got[65];
    for (int i = 0; i < 32; i++) snprintf(got + 2 * i, 3, "%02x", d[i]);
    assert_string_equal(got, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

static void test_rng_restore(void **state) {
    (void)state;
    mt_rng a, b;
    mt_rng_seed(&a, 42);
    for (int i = 0; i < 100; i++) mt_rng_u64(&a);
    b = a; /* a checkpoint is a copy of the state */
    for (int i = 0; i < 1000; i++) assert_int_equal(mt_rng_u64(&a), mt_rng_u64(&b));
    mt_rng c;
    mt_rng_seed(&c, 43);
    assert_true(mt_rng_u64(&c) != mt_rng_u64(&a));
    /* floats in [0,1), mean near 1/2 */
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        float f = mt_rng_float(&a);
        assert_true(f >= 0.0f && f < 1.0f);
        sum += f;
    }
    assert_true(sum / 100000 > 0.49 && sum / 100000 < 0.51);
    assert_true(mt_hash_float(7, 3) == mt_hash_float(7, 3));
    assert_true(mt_hash_u64(7, 3) != mt_hash_u64(7, 4));
}

static void test_atomic_write(void **state) {
    (void)state;
    const char *dir = mt_test_tmpdir("test_common");
    char path[4096];
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/a/b", dir);
    mt_error err = {0};
    assert_int_equal(mt_mkdirs(sub, &err), MT_OK);
    snprintf(path, sizeof path, "%s/file.txt", sub);
    assert_int_equal(mt_write_file_atomic(path, "hello", 5, &err), MT_OK);
    assert_int_equal(mt_write_file_atomic(path, "world!", 6, &err), MT_OK);
    char *data;
    size_t len;
    assert_int_equal(mt_read_file(path, &data, &len, &err), MT_OK);
    assert_int_equal(len, 6);
    assert_string_equal(data, "world!");
    free(data);
    /* a failed write names the path and leaves the old file */
    char bad[4096];
    snprintf(bad, sizeof bad, "%s/missing/file.txt", dir);
    assert_int_equal(mt_write_file_atomic(bad, "x", 1, &err), MT_ERR_IO);
    assert_non_null(strstr(err.msg, "missing/file.txt"));
}

static void test_error_first_wins(void **state) {
    (void)state;
    mt_error err = {0};
    assert_int_equal(mt_error_set(&err, MT_ERR_FORMAT, "inner %d", 1), MT_ERR_FORMAT);
    mt_error_set(&err, MT_ERR_IO, "outer");
    assert_int_equal(err.code, MT_ERR_FORMAT);
    mt_error_prefix(&err, "file.json: ");
    assert_string_equal(err.msg, "file.json: inner 1");
    assert_int_equal(mt_edit_distance("learning_rate", "learnig_rate"), 1);
    assert_int_equal(mt_edit_distance("", "abc"), 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors), cmocka_unit_test(test_rng_restore),
        cmocka_unit_test(test_atomic_write),   cmocka_unit_test(test_error_first_wins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
