/* test_safetensors.c — dtype conversions (exhaustive over all 65536 f16/bf16 patterns,
 * rounding against independent references and torch), reading files the Python library
 * wrote (tests/fixtures/safetensors, made by tests/reference/make_safetensors_fixtures.py),
 * writing single and sharded checkpoints and reading them back, and every malformed or
 * hostile file the official reader refuses, each with its status and message. */
#define _GNU_SOURCE
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "model/model.h"
#include "model/safetensors-impl.h"

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- dtypes ---- */

static void test_dtype_names(void **state) {
    (void)state;
    static const struct {
        const char *name;
        size_t size;
    } want[MT_DTYPE_COUNT] = {
        [MT_DTYPE_F32] = {"F32", 4},         [MT_DTYPE_F16] = {"F16", 2},   [MT_DTYPE_BF16] = {"BF16", 2},
        [MT_DTYPE_F64] = {"F64", 8},         [MT_DTYPE_F8_E4M3] = {"F8_E4M3", 1},
        [MT_DTYPE_F8_E5M2] = {"F8_E5M2", 1}, [MT_DTYPE_I64] = {"I64", 8},   [MT_DTYPE_I32] = {"I32", 4},
        [MT_DTYPE_I16] = {"I16", 2},         [MT_DTYPE_I8] = {"I8", 1},     [MT_DTYPE_U64] = {"U64", 8},
        [MT_DTYPE_U32] = {"U32", 4},         [MT_DTYPE_U16] = {"U16", 2},   [MT_DTYPE_U8] = {"U8", 1},
        [MT_DTYPE_BOOL] = {"BOOL", 1},
    };
    for (int d = 0; d < MT_DTYPE_COUNT; d++) {
        assert_string_equal(mt_dtype_name((mt_dtype)d), want[d].name);
        assert_int_equal(mt_dtype_size((mt_dtype)d), want[d].size);
        mt_dtype back;
        assert_int_equal(mt_dtype_from_name(want[d].name, &back), MT_OK);
        assert_int_equal(back, d);
    }
    mt_dtype x;
    assert_int_equal(mt_dtype_from_name("F4", &x), MT_ERR_UNSUPPORTED);
    assert_int_equal(mt_dtype_from_name("f32", &x), MT_ERR_UNSUPPORTED);
}

/* IEEE half, decoded from its definition in double arithmetic */
static double f16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static double bf16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
    double v = e == 0 ? ldexp(m, -133) : e == 255 ? (m ? NAN : INFINITY) : ldexp(128 + m, e - 134);
    return s ? -v : v;
}

static void test_f16_exhaustive(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = mt_f16_to_f32((uint16_t)h);
        double want = f16_value((uint16_t)h);
        if (isnan(want)) {
            assert_true(isnan(f));
            assert_int_equal(bits(f) >> 31, h >> 15);
            uint16_t back = mt_f32_to_f16(f);
            /* NaN stays NaN with its sign; the payload survives, quietened */
            assert_int_equal(back, h | 0x200);
        } else {
            if ((double)f != want || !signbit(f) != !signbit(want)) fail_msg("f16 %04x: got %a, want %a", h, f, want);
            assert_int_equal(mt_f32_to_f16(f), h); /* every half is exact in f32 */
        }
#if defined(__F16C__)
        float hw = _cvtsh_ss((unsigned short)h);
        if (bits(hw) != bits(f) && !(isnan(hw) && isnan(f))) fail_msg("f16 %04x: F16C says %a, got %a", h, hw, f);
#endif
    }
}

static void test_bf16_exhaustive(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = mt_bf16_to_f32((uint16_t)h);
        double want = bf16_value((uint16_t)h);
        if (isnan(want)) {
            assert_true(isnan(f));
            assert_int_equal(mt_f32_to_bf16(f), h | 0x40);
        } else {
            if ((double)f != want || !signbit(f) != !signbit(want)) fail_msg("bf16 %04x: got %a, want %a", h, f, want);
            assert_int_equal(mt_f32_to_bf16(f), h);
        }
    }
}

/* Round to nearest, ties to the even pattern, between two neighbours lo < hi (patterns
 * pl, pl+1) of a format, decided in double arithmetic. */
static uint16_t nearest(double x, uint16_t pl, double lo, double hi) {
    double dl = x - lo, dh = hi - x;
    if (dl < dh) return pl;
    if (dh < dl) return (uint16_t)(pl + 1);
    return (pl & 1) ? (uint16_t)(pl + 1) : pl;
}

/* Reference f32 → f16: find the neighbours by scanning the ordered positive patterns. */
static uint16_t ref_f32_to_f16(float x) {
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs((double)x);
    if (a >= 65520.0) return sign | 0x7c00; /* past the midpoint of 65504 and 2^16: inf */
    uint16_t lo = 0, hi = 0x7c00;           /* binary search: value(lo) <= a < value(hi) */
    while (hi - lo > 1) {
        uint16_t mid = (uint16_t)((lo + hi) / 2);
        if (f16_value(mid) <= a)
            lo = mid;
        else
            hi = mid;
    }
    double vhi = hi == 0x7c00 ? 65536.0 : f16_value(hi);
    return sign | nearest(a, lo, f16_value(lo), vhi);
}

static uint16_t ref_f32_to_bf16(float x) {
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs((double)x);
    uint16_t lo = (uint16_t)(bits(fabsf(x)) >> 16); /* truncation gives the lower neighbour */
    double vhi = lo == 0x7f7f ? ldexp(1, 128) : bf16_value((uint16_t)(lo + 1));
    return sign | nearest(a, lo, bf16_value(lo), vhi);
}

/* Every pattern, the midpoints to its successor and the floats just beside them: the only
 * places where a rounding rule can go wrong. */
static void test_rounding_against_reference(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 0x7c00; h++) {
        double lo = f16_value((uint16_t)h), hi = h + 1 == 0x7c00 ? 65536.0 : f16_value((uint16_t)(h + 1));
        float mid = (float)((lo + hi) / 2); /* exact: 12 significant bits */
        float pts[] = {(float)lo, mid, nextafterf(mid, 0), nextafterf(mid, INFINITY), nextafterf((float)lo, INFINITY)};
        for (size_t i = 0; i < sizeof pts / sizeof *pts; i++) {
            for (int neg = 0; neg < 2; neg++) {
                float x = neg ? -pts[i] : pts[i];
                uint16_t got = mt_f32_to_f16(x), want = ref_f32_to_f16(x);
                if (got != want) fail_msg("f32 %a → f16: got %04x, want %04x", x, got, want);
#if defined(__F16C__)
                uint16_t hw = (uint16_t)_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
                if (got != hw) fail_msg("f32 %a → f16: got %04x, F16C says %04x", x, got, hw);
#endif
            }
        }
    }
    for (uint32_t h = 0; h < 0x7f80; h++) {
        double lo = bf16_value((uint16_t)h), hi = h + 1 == 0x7f80 ? ldexp(1, 128) : bf16_value((uint16_t)(h + 1));
        float mid = from_bits((h << 16) | 0x8000); /* the midpoint, exactly */
        assert_true((double)mid == (lo + hi) / 2);
        float pts[] = {(float)lo, mid, nextafterf(mid, 0), nextafterf(mid, INFINITY)};
        for (size_t i = 0; i < sizeof pts / sizeof *pts; i++) {
            for (int neg = 0; neg < 2; neg++) {
                float x = neg ? -pts[i] : pts[i];
                uint16_t got = mt_f32_to_bf16(x), want = ref_f32_to_bf16(x);
                if (got != want) fail_msg("f32 %a → bf16: got %04x, want %04x", x, got, want);
            }
        }
    }
    /* specials */
    assert_int_equal(mt_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(mt_f32_to_f16(-INFINITY), 0xfc00);
    assert_int_equal(mt_f32_to_f16(FLT_MAX), 0x7c00);
    assert_int_equal(mt_f32_to_f16(ldexpf(1, -25)), 0x0000);                      /* tie to even: 0 */
    assert_int_equal(mt_f32_to_f16(nextafterf(ldexpf(1, -25), 1)), 0x0001);       /* smallest subnormal */
    assert_int_equal(mt_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(mt_f32_to_f16(ldexpf(1, -14)), 0x0400);                      /* smallest normal */
    assert_int_equal(mt_f32_to_f16(ldexpf(1023, -24) + ldexpf(1, -25)), 0x0400);  /* subnormal rounds up to normal */
    assert_int_equal(mt_f32_to_bf16(FLT_MAX), 0x7f80);
    assert_int_equal(mt_f32_to_bf16(from_bits(0x7f7f7fff)), 0x7f7f);
    assert_int_equal(mt_f32_to_bf16(from_bits(0x00000001)), 0x0000);              /* f32 subnormal → 0 */
    assert_int_equal(mt_f32_to_bf16(from_bits(0x00018000)), 0x0002);              /* bf16 subnormal tie → even */
    assert_int_equal(mt_f32_to_bf16(from_bits(0x7f800001)) & 0x7fc0, 0x7fc0);     /* sNaN stays NaN */
    assert_int_equal(mt_f32_to_bf16(from_bits(0xffffffff)), 0xffff);
#if defined(__F16C__)
    /* a million random floats of every magnitude against the hardware */
    mt_rng r;
    mt_rng_seed(&r, 99);
    for (int i = 0; i < 1000000; i++) {
        float x = from_bits((uint32_t)mt_rng_u64(&r));
        if (isnan(x)) continue;
        uint16_t hw = (uint16_t)_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
        if (mt_f32_to_f16(x) != hw) fail_msg("f32 %a → f16: got %04x, F16C says %04x", x, mt_f32_to_f16(x), hw);
        if (mt_f32_to_bf16(x) != ref_f32_to_bf16(x)) fail_msg("f32 %a → bf16 differs from the reference", x);
    }
#endif
}

/* ---- files the Python library wrote ---- */

static const mt_st_tensor *must_find(const mt_safetensors *st, const char *name) {
    const mt_st_tensor *t = mt_safetensors_find(st, name);
    if (!t) fail_msg("tensor %s not found", name);
    return t;
}

static uint16_t raw16(const mt_st_tensor *t, int64_t i) {
    const uint8_t *p = (const uint8_t *)t->data + 2 * i;
    return (uint16_t)(p[0] | (p[1] << 8));
}

static void test_read_python_file(void **state) {
    (void)state;
    mt_safetensors *st = NULL;
    mt_error err = {0};
    if (mt_safetensors_open(&st, mt_test_fixture("safetensors/python_mixed.safetensors"), &err) != MT_OK)
        fail_msg("%s", err.msg);
    assert_int_equal(mt_safetensors_count(st), 9);
    /* in offset order */
    for (size_t i = 1; i < mt_safetensors_count(st); i++)
        assert_true((const uint8_t *)mt_safetensors_at(st, i)->data >=
                    (const uint8_t *)mt_safetensors_at(st, i - 1)->data + mt_safetensors_at(st, i - 1)->nbytes);
    assert_null(mt_safetensors_at(st, 9));
    assert_string_equal(mt_safetensors_metadata(st, "format"), "pt");
    assert_string_equal(mt_safetensors_metadata(st, "source"), "make_safetensors_fixtures.py");
    assert_null(mt_safetensors_metadata(st, "absent"));
    assert_null(mt_safetensors_find(st, "absent"));

    const mt_st_tensor *x = must_find(st, "f32.random"), *h = must_find(st, "f16.of_random"),
                       *b = must_find(st, "bf16.of_random");
    assert_int_equal(x->dtype, MT_DTYPE_F32);
    assert_int_equal(x->ndim, 2);
    assert_int_equal(x->shape[0], 3);
    assert_int_equal(x->shape[1], 5);
    assert_int_equal(x->numel, 15);
    assert_int_equal(x->nbytes, 60);
    assert_int_equal(h->dtype, MT_DTYPE_F16);
    assert_int_equal(b->dtype, MT_DTYPE_BF16);
    float xf[15], hf[15], bf[15];
    assert_int_equal(mt_st_tensor_to_f32(x, xf, &err), MT_OK);
    assert_int_equal(mt_st_tensor_to_f32(h, hf, &err), MT_OK);
    assert_int_equal(mt_st_tensor_to_f32(b, bf, &err), MT_OK);
    for (int i = 0; i < 15; i++) {
        /* torch's roundings are the reference for ours */
        assert_int_equal(mt_f32_to_f16(xf[i]), raw16(h, i));
        assert_int_equal(mt_f32_to_bf16(xf[i]), raw16(b, i));
        assert_true(bits(hf[i]) == bits(mt_f16_to_f32(raw16(h, i))));
        assert_true(bits(bf[i]) == bits(mt_bf16_to_f32(raw16(b, i))));
    }
    assert_true(xf[0] == 1.0f + ldexpf(1, -8));
    assert_true(bf[0] == 1.0f);
    assert_true(bf[1] == 1.0f + ldexpf(1, -6));
    assert_true(isinf(hf[3]));

    const mt_st_tensor *d = must_find(st, "f64.values");
    float df[4];
    assert_int_equal(mt_st_tensor_to_f32(d, df, &err), MT_OK);
    assert_true(df[0] == (float)(1.0 / 3));
    assert_true(df[1] == -2.5f);
    assert_true(df[2] == 0.0f);
    assert_true(df[3] == 65000.0f);

    const mt_st_tensor *ids = must_find(st, "i64.ids");
    assert_int_equal(ids->dtype, MT_DTYPE_I64);
    int64_t iv[3];
    memcpy(iv, ids->data, sizeof iv);
    assert_int_equal(iv[0], 0);
    assert_int_equal(iv[1], -1);
    assert_int_equal(iv[2], 1LL << 40);
    float junk[3];
    mt_error_clear(&err);
    assert_int_equal(mt_st_tensor_to_f32(ids, junk, &err), MT_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "tensor 'i64.ids': cannot convert I64"));

    const mt_st_tensor *u8 = must_find(st, "u8.bytes"), *fl = must_find(st, "bool.flags");
    assert_int_equal(u8->dtype, MT_DTYPE_U8);
    assert_memory_equal(u8->data, "\x00\x01\xfe\xff", 4);
    assert_int_equal(fl->dtype, MT_DTYPE_BOOL);
    assert_memory_equal(fl->data, "\x01\x00", 2);

    const mt_st_tensor *e = must_find(st, "empty"), *s = must_find(st, "scalar");
    assert_int_equal(e->ndim, 2);
    assert_int_equal(e->shape[0], 0);
    assert_int_equal(e->numel, 0);
    assert_int_equal(e->nbytes, 0);
    assert_int_equal(s->ndim, 0);
    assert_int_equal(s->numel, 1);
    float sv;
    assert_int_equal(mt_st_tensor_to_f32(s, &sv, &err), MT_OK);
    assert_true(sv == 7.25f);
    mt_safetensors_close(st);
}

static float ramp(int64_t i, int offset) { return (float)(i - offset) / 8; }

static void check_python_sharded(const char *path) {
    mt_safetensors *st = NULL;
    mt_error err = {0};
    if (mt_safetensors_open(&st, path, &err) != MT_OK) fail_msg("%s", err.msg);
    static const struct {
        const char *name;
        int offset;
        mt_dtype dtype;
        int64_t numel;
    } want[] = {
        {"model.embed_tokens.weight", 3, MT_DTYPE_BF16, 128},
        {"model.layers.0.mlp.gate.weight", 5, MT_DTYPE_F32, 32},
        {"model.layers.0.self_attn.q_proj.weight", 7, MT_DTYPE_F16, 64},
        {"model.norm.weight", 1, MT_DTYPE_BF16, 8},
        {"lm_head.weight", 11, MT_DTYPE_BF16, 128},
    };
    assert_int_equal(mt_safetensors_count(st), 5);
    int shards_seen = 0;
    for (size_t k = 0; k < sizeof want / sizeof *want; k++) {
        const mt_st_tensor *t = must_find(st, want[k].name);
        assert_int_equal(t->dtype, want[k].dtype);
        assert_int_equal(t->numel, want[k].numel);
        shards_seen |= 1 << t->shard;
        float v[128];
        assert_int_equal(mt_st_tensor_to_f32(t, v, &err), MT_OK);
        for (int64_t i = 0; i < t->numel; i++)
            if (v[i] != ramp(i, want[k].offset)) fail_msg("%s[%lld] = %g", want[k].name, (long long)i, v[i]);
    }
    assert_int_equal(shards_seen, 7); /* three shards */
    assert_string_equal(mt_safetensors_metadata(st, "format"), "pt");
    mt_safetensors_close(st);
}

static void test_read_python_sharded(void **state) {
    (void)state;
    check_python_sharded(mt_test_fixture("safetensors/python_sharded"));
    check_python_sharded(mt_test_fixture("safetensors/python_sharded/model.safetensors.index.json"));
}

/* ---- writing ---- */

/* The folder test_safetensors leaves moetune's files in, for make_safetensors_fixtures.py --check. */
static const char *export_dir(void) {
    static char dir[4096];
    if (!dir[0]) snprintf(dir, sizeof dir, "%s", mt_test_tmpdir("st_export"));
    return dir;
}

static void test_write_roundtrip(void **state) {
    (void)state;
    float a[6 * 7], b[5], c[3 * 2 * 4], one = 3.0f;
    mt_test_fill_uniform(a, 42, -3, 3, 1);
    mt_test_fill_uniform(b, 5, -1e-5f, 1e-5f, 2); /* f16 subnormals */
    mt_test_fill_uniform(c, 24, -7e4f, 7e4f, 3);  /* beyond f16's range: infinities */
    a[0] = NAN;
    a[1] = -INFINITY;
    c[0] = 7e4f;
    mt_st_writer *w = mt_st_writer_init();
    const int64_t sa[] = {6, 7}, sb[] = {5}, sc[] = {3, 2, 4}, se[] = {0, 3};
    mt_st_writer_add(w, "a.f32", MT_DTYPE_F32, 2, sa, a);
    mt_st_writer_add(w, "b \"quoted\\name\"", MT_DTYPE_F16, 1, sb, b);
    mt_st_writer_add(w, "c.bf16", MT_DTYPE_BF16, 3, sc, c);
    mt_st_writer_add(w, "c.f16", MT_DTYPE_F16, 3, sc, c);
    mt_st_writer_add(w, "empty", MT_DTYPE_BF16, 2, se, NULL);
    mt_st_writer_add(w, "scalar", MT_DTYPE_F32, 0, NULL, &one);
    mt_st_writer_set_metadata(w, "format", "np");
    mt_st_writer_set_metadata(w, "format", "pt"); /* replaces */
    mt_st_writer_set_metadata(w, "note", "line\nbreak \"and quotes\"");
    char path[4200];
    snprintf(path, sizeof path, "%s/roundtrip.safetensors", export_dir());
    mt_error err = {0};
    if (mt_st_writer_save(w, path, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_st_writer_free(w);

    char *raw = NULL;
    size_t len = 0;
    assert_int_equal(mt_read_file(path, &raw, &len, &err), MT_OK);
    uint64_t n;
    memcpy(&n, raw, 8);
    assert_int_equal(n % 8, 0); /* header padded with spaces to a multiple of 8 */
    assert_int_equal(raw[8], '{');
    assert_int_equal(raw[8 + n - 1] == ' ' || raw[8 + n - 1] == '}', 1);
    free(raw);

    mt_safetensors *st = NULL;
    if (mt_safetensors_open(&st, path, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(mt_safetensors_count(st), 6);
    /* offsets follow insertion order */
    static const char *order[] = {"a.f32", "b \"quoted\\name\"", "c.bf16", "c.f16", "empty", "scalar"};
    for (size_t i = 0; i < 6; i++) assert_string_equal(mt_safetensors_at(st, i)->name, order[i]);
    assert_string_equal(mt_safetensors_metadata(st, "format"), "pt");
    assert_string_equal(mt_safetensors_metadata(st, "note"), "line\nbreak \"and quotes\"");
    float back[42];
    const mt_st_tensor *t = must_find(st, "a.f32");
    assert_int_equal((uintptr_t)t->data % 8, 0); /* the padding keeps data aligned */
    assert_int_equal(mt_st_tensor_to_f32(t, back, &err), MT_OK);
    assert_true(isnan(back[0]));
    for (int i = 1; i < 42; i++) assert_true(bits(back[i]) == bits(a[i]));
    t = must_find(st, "b \"quoted\\name\"");
    assert_int_equal(mt_st_tensor_to_f32(t, back, &err), MT_OK);
    for (int i = 0; i < 5; i++) assert_true(back[i] == mt_f16_to_f32(mt_f32_to_f16(b[i])));
    t = must_find(st, "c.bf16");
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->shape[2], 4);
    assert_int_equal(mt_st_tensor_to_f32(t, back, &err), MT_OK);
    for (int i = 0; i < 24; i++) assert_true(back[i] == mt_bf16_to_f32(mt_f32_to_bf16(c[i])));
    t = must_find(st, "c.f16");
    assert_int_equal(mt_st_tensor_to_f32(t, back, &err), MT_OK);
    int infs = 0;
    for (int i = 0; i < 24; i++) {
        assert_true(back[i] == mt_f16_to_f32(mt_f32_to_f16(c[i])));
        infs += isinf(back[i]);
    }
    assert_true(infs > 0);
    assert_int_equal(must_find(st, "empty")->numel, 0);
    assert_int_equal(must_find(st, "scalar")->ndim, 0);
    mt_safetensors_close(st);

    /* an empty writer makes a valid file too */
    w = mt_st_writer_init();
    snprintf(path, sizeof path, "%s/empty.safetensors", export_dir());
    assert_int_equal(mt_st_writer_save(w, path, &err), MT_OK);
    mt_st_writer_free(w);
    assert_int_equal(mt_safetensors_open(&st, path, &err), MT_OK);
    assert_int_equal(mt_safetensors_count(st), 0);
    mt_safetensors_close(st);
}

static void check_folder(const char *dir, int n, const float *data, int64_t per) {
    mt_safetensors *st = NULL;
    mt_error err = {0};
    if (mt_safetensors_open(&st, dir, &err) != MT_OK) fail_msg("%s", err.msg);
    assert_int_equal(mt_safetensors_count(st), n);
    float *v = mt_xmalloc((size_t)per * sizeof *v);
    for (int k = 0; k < n; k++) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.weight", k);
        const mt_st_tensor *t = must_find(st, name);
        assert_int_equal(mt_st_tensor_to_f32(t, v, &err), MT_OK);
        for (int64_t i = 0; i < per; i++) assert_true(v[i] == mt_bf16_to_f32(mt_f32_to_bf16(data[k * per + i])));
    }
    free(v);
    mt_safetensors_close(st);
}

static void test_write_sharded(void **state) {
    (void)state;
    enum { N = 7, PER = 100 };
    float *data = mt_xmalloc(N * PER * sizeof *data);
    mt_test_fill_uniform(data, N * PER, -1, 1, 7);
    mt_st_writer *w = mt_st_writer_init();
    const int64_t shape[] = {10, 10};
    /* inserted in reverse name order so that the index must sort */
    for (int k = N - 1; k >= 0; k--) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.weight", k);
        mt_st_writer_add(w, name, MT_DTYPE_BF16, 2, shape, data + k * PER);
    }
    mt_st_writer_set_metadata(w, "format", "pt");
    char dir[4200], p[4400];
    snprintf(dir, sizeof dir, "%s/sharded", export_dir());
    mt_error err = {0};
    /* 200 bytes per tensor, 450 per shard: shards of 2, 2, 2, 1 tensors */
    if (mt_st_writer_save_sharded(w, dir, 450, &err) != MT_OK) fail_msg("%s", err.msg);
    for (int s = 1; s <= 4; s++) {
        snprintf(p, sizeof p, "%s/model-%05d-of-00004.safetensors", dir, s);
        assert_true(mt_path_exists(p));
    }
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    char *index = NULL;
    size_t len;
    assert_int_equal(mt_read_file(p, &index, &len, &err), MT_OK);
    assert_non_null(strstr(index, "\"total_size\": 1400"));
    assert_non_null(strstr(index, "\"total_parameters\": 700"));
    /* sorted names; layer 6 went first, into shard 1 */
    char *l0 = strstr(index, "\"model.layers.0.weight\": \"model-00004-of-00004.safetensors\"");
    char *l6 = strstr(index, "\"model.layers.6.weight\": \"model-00001-of-00004.safetensors\"");
    assert_non_null(l0);
    assert_non_null(l6);
    assert_true(l0 < l6);
    free(index);
    check_folder(dir, N, data, PER);

    /* everything fits: one model.safetensors, and the earlier shards and index are gone */
    assert_int_equal(mt_st_writer_save_sharded(w, dir, 0, &err), MT_OK);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_true(mt_path_exists(p));
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    assert_false(mt_path_exists(p));
    snprintf(p, sizeof p, "%s/model-00001-of-00004.safetensors", dir);
    assert_false(mt_path_exists(p));
    check_folder(dir, N, data, PER);

    /* and back to shards (a tensor larger than the limit gets a shard of its own) */
    char dir2[4300];
    snprintf(dir2, sizeof dir2, "%s/sharded_small", export_dir());
    assert_int_equal(mt_st_writer_save_sharded(w, dir2, 100, &err), MT_OK);
    snprintf(p, sizeof p, "%s/model-00007-of-00007.safetensors", dir2);
    assert_true(mt_path_exists(p));
    check_folder(dir2, N, data, PER);
    assert_int_equal(mt_st_writer_save_sharded(w, dir, 700, &err), MT_OK);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_false(mt_path_exists(p));
    check_folder(dir, N, data, PER);
    mt_st_writer_free(w);
    free(data);
}

static void test_many_tensors(void **state) {
    (void)state;
    enum { N = 5000 };
    float v[N];
    for (int i = 0; i < N; i++) v[i] = (float)i;
    mt_st_writer *w = mt_st_writer_init();
    const int64_t one[] = {1};
    for (int i = 0; i < N; i++) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.w%d.weight", i / 300, i % 100, i % 3);
        mt_st_writer_add(w, name, MT_DTYPE_F32, 1, one, &v[i]);
    }
    char path[4300];
    snprintf(path, sizeof path, "%s/many.safetensors", mt_test_tmpdir("st_many"));
    mt_error err = {0};
    assert_int_equal(mt_st_writer_save(w, path, &err), MT_OK);
    mt_st_writer_free(w);
    mt_safetensors *st = NULL;
    assert_int_equal(mt_safetensors_open(&st, path, &err), MT_OK);
    assert_int_equal(mt_safetensors_count(st), N);
    for (int i = 0; i < N; i++) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.w%d.weight", i / 300, i % 100, i % 3);
        const mt_st_tensor *t = must_find(st, name);
        float x;
        assert_int_equal(mt_st_tensor_to_f32(t, &x, &err), MT_OK);
        assert_true(x == (float)i);
    }
    assert_null(mt_safetensors_find(st, "model.layers.17.mlp.experts.0.w0.weight")); /* never written */
    assert_null(mt_safetensors_find(st, ""));
    mt_safetensors_close(st);
}

/* Adding a name twice is a programming error: the writer aborts. */
static void test_writer_duplicate_aborts(void **state) {
    (void)state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(1);
        float x = 1;
        mt_st_writer *w = mt_st_writer_init();
        mt_st_writer_add(w, "x", MT_DTYPE_F32, 0, NULL, &x);
        mt_st_writer_add(w, "x", MT_DTYPE_F32, 0, NULL, &x);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

/* ---- malformed and hostile files ---- */

/* 8-byte length + header + `data_len` bytes of data; `n` overrides the length field. */
static uint8_t *make_raw(const char *header, size_t hlen, size_t data_len, uint64_t n, size_t *size) {
    *size = 8 + hlen + data_len;
    uint8_t *buf = mt_xcalloc(*size + 1, 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++) buf[8 + hlen + i] = (uint8_t)i;
    return buf;
}

static void expect_bad_raw(const char *header, size_t hlen, size_t data_len, uint64_t n, mt_status want,
                           const char *fragment) {
    size_t size;
    uint8_t *buf = make_raw(header, hlen, data_len, n, &size);
    mt_safetensors *st = (mt_safetensors *)1;
    mt_error err = {0};
    mt_status s = mt_safetensors_open_memory(&st, buf, size, "evil.safetensors", &err);
    if (s != want) fail_msg("%s: want %s, got %s (%s)", header, mt_status_name(want), mt_status_name(s), err.msg);
    assert_null(st);
    if (!strstr(err.msg, fragment)) fail_msg("message \"%s\" lacks \"%s\"", err.msg, fragment);
    if (strncmp(err.msg, "evil.safetensors: ", 18) != 0) fail_msg("message \"%s\" does not name the file", err.msg);
    free(buf);
}

static void expect_bad(const char *header, size_t data_len, mt_status want, const char *fragment) {
    expect_bad_raw(header, strlen(header), data_len, strlen(header), want, fragment);
}

static void test_malformed(void **state) {
    (void)state;
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    /* the valid file these variations break */
    size_t size;
    uint8_t *buf = make_raw(ok, strlen(ok), 8, strlen(ok), &size);
    mt_safetensors *st = NULL;
    mt_error err = {0};
    assert_int_equal(mt_safetensors_open_memory(&st, buf, size, "good", &err), MT_OK);
    assert_int_equal(mt_safetensors_count(st), 1);
    mt_safetensors_close(st);
    /* misaligned data (the buffer shifted by one byte) still converts */
    uint8_t *shifted = mt_xmalloc(size + 1);
    memcpy(shifted + 1, buf, size);
    assert_int_equal(mt_safetensors_open_memory(&st, shifted + 1, size, "shifted", &err), MT_OK);
    float v[2];
    assert_int_equal(mt_st_tensor_to_f32(mt_safetensors_at(st, 0), v, &err), MT_OK);
    uint8_t want_bytes[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    assert_memory_equal(v, want_bytes, 8);
    mt_safetensors_close(st);
    free(shifted);
    free(buf);

    expect_bad_raw("", 0, 0, 0, MT_ERR_FORMAT, "does not start with '{'"); /* only the length */
    buf = mt_xcalloc(4, 1);
    mt_error_clear(&err);
    st = (mt_safetensors *)1;
    assert_int_equal(mt_safetensors_open_memory(&st, buf, 4, "evil.safetensors", &err), MT_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "evil.safetensors: 4 bytes is too short"));
    free(buf);
    expect_bad_raw(ok, strlen(ok), 8, 1000, MT_ERR_FORMAT, "header length 1000 runs past the end of the file");
    expect_bad_raw(ok, strlen(ok), 8, 100000001, MT_ERR_FORMAT, "header length 100000001 exceeds the limit");
    expect_bad_raw(ok, strlen(ok), 8, UINT64_MAX, MT_ERR_FORMAT, "exceeds the limit");
    expect_bad("{not json}", 0, MT_ERR_FORMAT, "header is not valid JSON");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, MT_ERR_FORMAT,
               "not valid JSON");
    expect_bad("[1, 2]", 0, MT_ERR_FORMAT, "does not start with '{'");
    expect_bad("        ", 0, MT_ERR_FORMAT, "does not start with '{'");
    expect_bad("{}  x   ", 0, MT_ERR_FORMAT, "text after its JSON object");
    expect_bad("{\"\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, MT_ERR_FORMAT,
               "not valid UTF-8");
    expect_bad("{\"\xc0\xaf\":1}", 0, MT_ERR_FORMAT, "not valid UTF-8");     /* overlong '/' */
    expect_bad("{\"\xed\xa0\x80\":1}", 0, MT_ERR_FORMAT, "not valid UTF-8"); /* surrogate */
    expect_bad_raw("{\"a\0\":1}", 8, 0, 8, MT_ERR_FORMAT, "not valid UTF-8");  /* NUL */
    /* offsets */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, MT_ERR_FORMAT, "tensor 'b': data_offsets [4, 12] overlap the previous tensor, which ends at 8");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
               20, MT_ERR_FORMAT, "tensor 'b': data_offsets [12, 20] leave a hole: the previous data ends at 8");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, MT_ERR_FORMAT,
               "tensor 'a': data_offsets [4, 8] leave a hole");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, MT_ERR_FORMAT,
               "end before they begin");
    expect_bad("{\"x.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12, MT_ERR_FORMAT,
               "evil.safetensors: tensor 'x.weight': data_offsets [0, 12] hold 12 bytes but F32 [2, 2] needs 16");
    expect_bad("{\"big\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,0]}}", 0,
               MT_ERR_FORMAT, "tensor 'big': shape [1099511627776, 1099511627776] overflows");
    expect_bad("{\"big\":{\"dtype\":\"F64\",\"shape\":[4503599627370496,4096],\"data_offsets\":[0,0]}}", 0,
               MT_ERR_FORMAT, "overflows");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-1,7]}}", 8, MT_ERR_FORMAT,
               "\"data_offsets\" must be two non-negative integers");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}", 8, MT_ERR_FORMAT,
               "\"data_offsets\" must be two non-negative integers");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}", 8, MT_ERR_FORMAT,
               "\"data_offsets\" must be two");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18014398509481984]}}", 8, MT_ERR_FORMAT,
               "\"data_offsets\" must be two non-negative integers");
    /* entries */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
               16, MT_ERR_FORMAT, "tensor 'a' appears twice");
    expect_bad("{\"a\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1, MT_ERR_UNSUPPORTED,
               "tensor 'a': unknown dtype \"F4\"");
    expect_bad("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, MT_ERR_FORMAT,
               "tensor 'a': \"dtype\" must be a string, got nothing");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, MT_ERR_FORMAT,
               "\"shape\" must be an array, got a number");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, MT_ERR_FORMAT,
               "\"shape\" must hold non-negative integers");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, MT_ERR_FORMAT,
               "\"shape\" must hold non-negative integers below 2^53, got a string");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
               MT_ERR_UNSUPPORTED, "9 dimensions");
    expect_bad("{\"a\":5}", 0, MT_ERR_FORMAT, "tensor 'a': entry must be an object, got a number");
    expect_bad("{\"__metadata__\":{\"k\":1}}", 0, MT_ERR_FORMAT, "\"__metadata__\" value of 'k' must be a string");
    expect_bad("{\"__metadata__\":[\"k\"]}", 0, MT_ERR_FORMAT, "\"__metadata__\" must be an object of strings");
    expect_bad("{\"__metadata__\":{},\"__metadata__\":{}}", 0, MT_ERR_FORMAT, "\"__metadata__\" appears twice");
    /* the data must end exactly where the file does */
    expect_bad(ok, 12, MT_ERR_FORMAT, "4 bytes follow the last tensor's data (it ends at byte");
    expect_bad(ok, 5, MT_ERR_FORMAT, "tensor data ends at byte");
    expect_bad("{}", 3, MT_ERR_FORMAT, "3 bytes follow");
    /* accepted: __metadata__ null, keys in any order, extra keys in entries, zero-size
     * tensors (even when the other dimensions would overflow: the product is 0) */
    const char *fine =
        "{\"__metadata__\":null,\"b\":{\"data_offsets\":[8,8],\"shape\":[0,1099511627776,1099511627776],\"dtype\":\"BF16\",\"extra\":1},"
        "\"a\":{\"shape\":[2],\"dtype\":\"F32\",\"data_offsets\":[0,8]},\"c\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[8,9]}}";
    buf = make_raw(fine, strlen(fine), 9, strlen(fine), &size);
    assert_int_equal(mt_safetensors_open_memory(&st, buf, size, "fine", &err), MT_OK);
    assert_int_equal(mt_safetensors_count(st), 3);
    assert_string_equal(mt_safetensors_at(st, 0)->name, "a");
    assert_null(mt_safetensors_metadata(st, "format"));
    mt_safetensors_close(st);
    free(buf);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    mt_error err = {0};
    if (mt_write_file_atomic(path, data, n, &err) != MT_OK) fail_msg("%s", err.msg);
}

static void expect_open_error(const char *path, mt_status want, const char *fragment) {
    mt_safetensors *st = (mt_safetensors *)1;
    mt_error err = {0};
    mt_status s = mt_safetensors_open(&st, path, &err);
    if (s != want) fail_msg("%s: want %s, got %s (%s)", path, mt_status_name(want), mt_status_name(s), err.msg);
    assert_null(st);
    if (!strstr(err.msg, fragment)) fail_msg("message \"%s\" lacks \"%s\"", err.msg, fragment);
}

static void test_bad_files_and_indexes(void **state) {
    (void)state;
    char dir[4096], p[4300], q[4300];
    snprintf(dir, sizeof dir, "%s", mt_test_tmpdir("st_bad"));
    /* a shard for the indexes below */
    float x[4] = {1, 2, 3, 4};
    const int64_t shape[] = {4};
    mt_st_writer *w = mt_st_writer_init();
    mt_st_writer_add(w, "present", MT_DTYPE_F32, 1, shape, x);
    snprintf(p, sizeof p, "%s/part-1.safetensors", dir);
    mt_error err = {0};
    assert_int_equal(mt_st_writer_save(w, p, &err), MT_OK);
    mt_st_writer_free(w);

    /* a file cut short on disk */
    char *raw = NULL;
    size_t len = 0;
    assert_int_equal(mt_read_file(p, &raw, &len, &err), MT_OK);
    snprintf(q, sizeof q, "%s/truncated.safetensors", dir);
    write_bytes(q, raw, len - 3);
    expect_open_error(q, MT_ERR_FORMAT, "truncated.safetensors: tensor data ends at byte");
    write_bytes(q, raw, 5);
    expect_open_error(q, MT_ERR_FORMAT, "5 bytes is too short");
    write_bytes(q, raw, 0);
    expect_open_error(q, MT_ERR_FORMAT, "0 bytes is too short");
    free(raw);

    snprintf(q, sizeof q, "%s/missing.safetensors", dir);
    expect_open_error(q, MT_ERR_NOT_FOUND, "missing.safetensors: cannot open");
    expect_open_error(dir, MT_ERR_NOT_FOUND, "holds neither model.safetensors nor model.safetensors.index.json");

    snprintf(q, sizeof q, "%s/model.safetensors.index.json", dir);
    const char *idx = "{\"metadata\": {\"total_size\": 16}, \"weight_map\": {\"present\": \"part-1.safetensors\", "
                      "\"lost\": \"part-2.safetensors\"}}";
    write_bytes(q, idx, strlen(idx));
    expect_open_error(dir, MT_ERR_NOT_FOUND, "weight_map maps 'lost' to 'part-2.safetensors', which does not exist");
    idx = "{\"weight_map\": {\"present\": \"part-1.safetensors\", \"ghost\": \"part-1.safetensors\"}}";
    write_bytes(q, idx, strlen(idx));
    expect_open_error(q, MT_ERR_NOT_FOUND,
                      "weight_map maps 'ghost' to 'part-1.safetensors', but that file does not hold it");
    idx = "{\"weight_map\": {\"present\": \"../part-1.safetensors\"}}";
    write_bytes(q, idx, strlen(idx));
    expect_open_error(q, MT_ERR_FORMAT, "outside the folder");
    idx = "{\"weight_map\": {\"present\": 3}}";
    write_bytes(q, idx, strlen(idx));
    expect_open_error(q, MT_ERR_FORMAT, "weight_map entry 'present' must be a file name");
    idx = "{\"weight_map\": {\"present\": \"part-1.safetensors\", \"present\": \"part-1.safetensors\"}}";
    write_bytes(q, idx, strlen(idx));
    expect_open_error(q, MT_ERR_FORMAT, "weight_map names tensor 'present' twice");
    idx = "{\"metadata\": {}}";
    write_bytes(q, idx, strlen(idx));
    expect_open_error(q, MT_ERR_FORMAT, "\"weight_map\" must be an object");
    idx = "{\"weight_map\": ";
    write_bytes(q, idx, strlen(idx));
    expect_open_error(q, MT_ERR_FORMAT, "model.safetensors.index.json: not valid JSON");
    /* a broken shard is reported with its own name */
    snprintf(p, sizeof p, "%s/part-3.safetensors", dir);
    write_bytes(p, "\x02\0\0\0\0\0\0\0[]", 10);
    idx = "{\"weight_map\": {\"present\": \"part-1.safetensors\", \"x\": \"part-3.safetensors\"}}";
    write_bytes(q, idx, strlen(idx));
    expect_open_error(q, MT_ERR_FORMAT, "part-3.safetensors: header does not start with '{'");
    /* and the good case: only what the weight map lists */
    idx = "{\"weight_map\": {\"present\": \"part-1.safetensors\"}}";
    write_bytes(q, idx, strlen(idx));
    mt_safetensors *st = NULL;
    assert_int_equal(mt_safetensors_open(&st, dir, &err), MT_OK);
    assert_int_equal(mt_safetensors_count(st), 1);
    float y[4];
    assert_int_equal(mt_st_tensor_to_f32(must_find(st, "present"), y, &err), MT_OK);
    assert_memory_equal(x, y, sizeof x);
    mt_safetensors_close(st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test(test_f16_exhaustive),
        cmocka_unit_test(test_bf16_exhaustive),
        cmocka_unit_test(test_rounding_against_reference),
        cmocka_unit_test(test_read_python_file),
        cmocka_unit_test(test_read_python_sharded),
        cmocka_unit_test(test_write_roundtrip),
        cmocka_unit_test(test_write_sharded),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_writer_duplicate_aborts),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bad_files_and_indexes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
