/* dtype.c — the element types safetensors files carry: their names and sizes, and exact
 * bf16/f16 <-> f32 conversions (round to nearest, ties to even; NaN, infinities and
 * subnormals handled as IEEE 754 says), written in portable C so every backend agrees. */
#include "model/model.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[MT_DTYPE_COUNT] = {
    [MT_DTYPE_F32] = {"F32", 4},         [MT_DTYPE_F16] = {"F16", 2},   [MT_DTYPE_BF16] = {"BF16", 2},
    [MT_DTYPE_F64] = {"F64", 8},         [MT_DTYPE_F8_E4M3] = {"F8_E4M3", 1},
    [MT_DTYPE_F8_E5M2] = {"F8_E5M2", 1}, [MT_DTYPE_I64] = {"I64", 8},   [MT_DTYPE_I32] = {"I32", 4},
    [MT_DTYPE_I16] = {"I16", 2},         [MT_DTYPE_I8] = {"I8", 1},     [MT_DTYPE_U64] = {"U64", 8},
    [MT_DTYPE_U32] = {"U32", 4},         [MT_DTYPE_U16] = {"U16", 2},   [MT_DTYPE_U8] = {"U8", 1},
    [MT_DTYPE_BOOL] = {"BOOL", 1},
};

const char *mt_dtype_name(mt_dtype d) {
    if ((unsigned)d >= MT_DTYPE_COUNT) return "?";
    return dtype_info[d].name;
}

size_t mt_dtype_size(mt_dtype d) {
    if ((unsigned)d >= MT_DTYPE_COUNT) return 0;
    return dtype_info[d].size;
}

mt_status mt_dtype_from_name(const char *name, mt_dtype *out) {
    for (int d = 0; d < MT_DTYPE_COUNT; d++) {
        if (strcmp(name, dtype_info[d].name) == 0) {
            *out = (mt_dtype)d;
            return MT_OK;
        }
    }
    return MT_ERR_UNSUPPORTED;
}

/* memcpy is the strict-aliasing-safe way to reinterpret bits; compilers turn it into a move. */
static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float mt_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t mt_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        /* Truncating a NaN could clear every remaining mantissa bit and turn it into an
         * infinity; forcing the quiet bit keeps it a NaN with its sign and top payload. */
        return (uint16_t)((u >> 16) | 0x0040u);
    }
    /* Adding 0x7fff plus the lowest kept bit rounds half-way cases to the even neighbour;
     * a carry out of the mantissa bumps the exponent, which is exactly right (up to inf). */
    uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)((u + rounding) >> 16);
}

float mt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13)); /* inf, NaN payload kept */
    if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
    if (mant == 0) return bits_f32(sign);
    /* Subnormal: value = mant · 2^-24; normalise it into an f32 exponent. */
    int shift = 0;
    while (!(mant & 0x400u)) {
        mant <<= 1;
        shift++;
    }
    mant &= 0x3ffu;
    return bits_f32(sign | ((uint32_t)(113 - shift) << 23) | (mant << 13));
}

uint16_t mt_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu)); /* NaN, quiet */
    if (abs >= 0x47800000u) return (uint16_t)(sign | 0x7c00u); /* ≥ 65536 (or inf): inf */
    int exp = (int)(abs >> 23) - 127;
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u; /* implicit one made explicit */
    if (exp >= -14) {
        /* Normal f16: keep 10 of 23 mantissa bits, round the 13 dropped ones to even. The
         * sum's carry may reach the exponent field and, from 65520 up, produce inf. */
        uint32_t h = ((uint32_t)(exp + 15) << 10) | ((mant >> 13) & 0x3ffu);
        uint32_t rest = mant & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    if (exp < -25) return sign; /* below half the smallest subnormal: ±0 */
    /* Subnormal f16: value = m · 2^-24 with m = mant · 2^(exp+1) (mant has 23 fraction bits). */
    int drop = -exp - 1; /* 14..24 bits dropped from the 24-bit mant */
    uint32_t m = mant >> drop;
    uint32_t rest = mant & ((1u << drop) - 1u);
    uint32_t half = 1u << (drop - 1);
    if (rest > half || (rest == half && (m & 1u))) m++; /* may become the smallest normal: correct */
    return (uint16_t)(sign | m);
}
