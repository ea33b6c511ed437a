/* tokenizer_util.c — the small machinery under the tokenizer: byte buffers, hash tables,
 * UTF-8 decoding with Rust's lossy rules, Unicode character classes as Rust defines them, the
 * GPT-2 byte↔unicode map, and PCRE2 regexes translated from the Oniguruma dialect that the
 * Hugging Face tokenizers library compiles its patterns with. */
#include "tokenizer-impl.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- buffers ---- */

void tk_buf_reserve(tk_buf *b, size_t extra) {
    if (b->cap - b->len > extra) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len <= extra) cap *= 2;
    b->p = mt_xrealloc(b->p, cap);
    b->cap = cap;
}

void tk_buf_put(tk_buf *b, const void *s, size_t n) {
    tk_buf_reserve(b, n);
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void tk_buf_putc(tk_buf *b, char c) { tk_buf_put(b, &c, 1); }

void tk_buf_puts(tk_buf *b, const char *s) { tk_buf_put(b, s, strlen(s)); }

void tk_buf_free(tk_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- hashing ---- */

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

uint64_t tk_hash_bytes(const void *s, size_t n) {
    const unsigned char *p = s;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0x100000001b3ull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix64(h ^ w) + 0x9e3779b97f4a7c15ull;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    return mix64(h ^ w ^ ((uint64_t)n << 56));
}

/* ---- string map ---- */

static size_t strmap_find(const tk_strmap *m, const char *s, size_t n, uint64_t h) {
    size_t mask = m->cap - 1, i = h & mask;
    for (;;) {
        const tk_strmap_slot *sl = &m->slots[i];
        if (!sl->used) return i;
        if (sl->hash == h && sl->len == n && !memcmp(m->pool.p + sl->off, s, n)) return i;
        i = (i + 1) & mask;
    }
}

static void strmap_grow(tk_strmap *m) {
    size_t ncap = m->cap ? m->cap * 2 : 64;
    tk_strmap_slot *old = m->slots;
    size_t ocap = m->cap;
    m->slots = mt_xcalloc(ncap, sizeof *m->slots);
    m->cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (!old[i].used) continue;
        size_t j = old[i].hash & (ncap - 1);
        while (m->slots[j].used) j = (j + 1) & (ncap - 1);
        m->slots[j] = old[i];
    }
    free(old);
}

int32_t tk_strmap_get(const tk_strmap *m, const char *s, size_t n) {
    if (!m->cap) return -1;
    size_t i = strmap_find(m, s, n, tk_hash_bytes(s, n));
    return m->slots[i].used ? m->slots[i].val : -1;
}

int32_t tk_strmap_put(tk_strmap *m, const char *s, size_t n, int32_t val) {
    if ((m->count + 1) * 4 >= m->cap * 3) strmap_grow(m);
    uint64_t h = tk_hash_bytes(s, n);
    size_t i = strmap_find(m, s, n, h);
    tk_strmap_slot *sl = &m->slots[i];
    if (sl->used) {
        int32_t prev = sl->val;
        sl->val = val;
        return prev;
    }
    MT_ASSERT(m->pool.len + n < UINT32_MAX);
    sl->used = true;
    sl->hash = h;
    sl->off = (uint32_t)m->pool.len;
    sl->len = (uint32_t)n;
    sl->val = val;
    tk_buf_put(&m->pool, s, n);
    tk_buf_putc(&m->pool, '\0'); /* keys stay NUL-terminated for callers that print them */
    m->count++;
    return -1;
}

const char *tk_strmap_key(const tk_strmap *m, size_t i) { return m->pool.p + m->slots[i].off; }

void tk_strmap_free(tk_strmap *m) {
    free(m->slots);
    tk_buf_free(&m->pool);
    memset(m, 0, sizeof *m);
}

/* ---- u64 map ---- */

#define U64_EMPTY UINT64_MAX

static size_t u64map_find(const tk_u64map *m, uint64_t key) {
    size_t mask = m->cap - 1, i = mix64(key) & mask;
    while (m->keys[i] != U64_EMPTY && m->keys[i] != key) i = (i + 1) & mask;
    return i;
}

static void u64map_grow(tk_u64map *m) {
    size_t ncap = m->cap ? m->cap * 2 : 64;
    uint64_t *ok = m->keys, *ov = m->vals;
    size_t ocap = m->cap;
    m->keys = mt_xmalloc(ncap * sizeof *m->keys);
    m->vals = mt_xmalloc(ncap * sizeof *m->vals);
    memset(m->keys, 0xff, ncap * sizeof *m->keys);
    m->cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (ok[i] == U64_EMPTY) continue;
        size_t j = u64map_find(m, ok[i]);
        m->keys[j] = ok[i];
        m->vals[j] = ov[i];
    }
    free(ok);
    free(ov);
}

bool tk_u64map_get(const tk_u64map *m, uint64_t key, uint64_t *val) {
    if (!m->cap) return false;
    size_t i = u64map_find(m, key);
    if (m->keys[i] == U64_EMPTY) return false;
    *val = m->vals[i];
    return true;
}

uint64_t *tk_u64map_slot(tk_u64map *m, uint64_t key, uint64_t init) {
    MT_ASSERT(key != U64_EMPTY);
    if ((m->count + 1) * 4 >= m->cap * 3) u64map_grow(m);
    size_t i = u64map_find(m, key);
    if (m->keys[i] == U64_EMPTY) {
        m->keys[i] = key;
        m->vals[i] = init;
        m->count++;
    }
    return &m->vals[i];
}

void tk_u64map_put(tk_u64map *m, uint64_t key, uint64_t val) { *tk_u64map_slot(m, key, val) = val; }

void tk_u64map_free(tk_u64map *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---- UTF-8 ---- */

/* Rust's core::str validation: overlong forms, surrogates and code points past U+10FFFF
 * are invalid, and the second byte's range depends on the first. */
size_t tk_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (!n) return 0;
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        if (n < 2 || (s[1] & 0xC0) != 0x80) return 0;
        *cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3) return 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80) return 0;
        *cp = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4) return 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        *cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
        return 4;
    }
    return 0;
}

size_t tk_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

bool mt_utf8_valid(const char *s, size_t n, size_t *bad_at) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = tk_utf8_decode(u + i, n - i, &cp);
        if (!k) {
            if (bad_at) *bad_at = i;
            return false;
        }
        i += k;
    }
    return true;
}

/* How many bytes of the invalid sequence at s Rust folds into one U+FFFD: the longest prefix
 * that could still have begun a valid character (core::str::lossy::Utf8Chunks). */
static size_t lossy_invalid_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t want;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        want = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        want = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        want = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 1;
    if (n < 2 || s[1] < lo || s[1] > hi) return 1;
    size_t i = 2;
    while (i < want && i < n && (s[i] & 0xC0) == 0x80) i++;
    return i;
}

bool tk_utf8_pending(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = u[i] < 0x80 ? 1 : tk_utf8_decode(u + i, n - i, &cp);
        if (!k) {
            k = lossy_invalid_len(u + i, n - i);
            /* cut short by the end, after a lead byte that could begin a character */
            if (i + k == n && u[i] >= 0xC2 && u[i] <= 0xF4) return true;
        }
        i += k;
    }
    return false;
}

void tk_utf8_lossy(tk_buf *out, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    tk_buf_reserve(out, n);
    while (i < n) {
        uint32_t cp;
        size_t k = u[i] < 0x80 ? 1 : tk_utf8_decode(u + i, n - i, &cp);
        if (k) {
            i += k;
            continue;
        }
        tk_buf_put(out, s + run, i - run);
        tk_buf_put(out, "\xEF\xBF\xBD", 3);
        i += lossy_invalid_len(u + i, n - i);
        run = i;
    }
    tk_buf_put(out, s + run, n - run);
}

/* ---- character classes ---- */

bool tk_is_whitespace(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return true;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

bool tk_is_numeric(uint32_t cp) {
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

bool tk_is_word_char(uint32_t cp) {
    if (cp == 0x200C || cp == 0x200D) return true;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}

/* ---- byte-level map ---- */

/* Printable Latin-1 bytes stand for themselves; the other 68 take U+0100.. in byte order. */
#define P(b) [b] = b
const uint16_t tk_byte_to_cp[256] = {
    [0x00] = 0x100, [0x01] = 0x101, [0x02] = 0x102, [0x03] = 0x103, [0x04] = 0x104, [0x05] = 0x105,
    [0x06] = 0x106, [0x07] = 0x107, [0x08] = 0x108, [0x09] = 0x109, [0x0A] = 0x10A, [0x0B] = 0x10B,
    [0x0C] = 0x10C, [0x0D] = 0x10D, [0x0E] = 0x10E, [0x0F] = 0x10F, [0x10] = 0x110, [0x11] = 0x111,
    [0x12] = 0x112, [0x13] = 0x113, [0x14] = 0x114, [0x15] = 0x115, [0x16] = 0x116, [0x17] = 0x117,
    [0x18] = 0x118, [0x19] = 0x119, [0x1A] = 0x11A, [0x1B] = 0x11B, [0x1C] = 0x11C, [0x1D] = 0x11D,
    [0x1E] = 0x11E, [0x1F] = 0x11F, [0x20] = 0x120,
    P(0x21), P(0x22), P(0x23), P(0x24), P(0x25), P(0x26), P(0x27), P(0x28), P(0x29), P(0x2A), P(0x2B),
    P(0x2C), P(0x2D), P(0x2E), P(0x2F), P(0x30), P(0x31), P(0x32), P(0x33), P(0x34), P(0x35), P(0x36),
    P(0x37), P(0x38), P(0x39), P(0x3A), P(0x3B), P(0x3C), P(0x3D), P(0x3E), P(0x3F), P(0x40), P(0x41),
    P(0x42), P(0x43), P(0x44), P(0x45), P(0x46), P(0x47), P(0x48), P(0x49), P(0x4A), P(0x4B), P(0x4C),
    P(0x4D), P(0x4E), P(0x4F), P(0x50), P(0x51), P(0x52), P(0x53), P(0x54), P(0x55), P(0x56), P(0x57),
    P(0x58), P(0x59), P(0x5A), P(0x5B), P(0x5C), P(0x5D), P(0x5E), P(0x5F), P(0x60), P(0x61), P(0x62),
    P(0x63), P(0x64), P(0x65), P(0x66), P(0x67), P(0x68), P(0x69), P(0x6A), P(0x6B), P(0x6C), P(0x6D),
    P(0x6E), P(0x6F), P(0x70), P(0x71), P(0x72), P(0x73), P(0x74), P(0x75), P(0x76), P(0x77), P(0x78),
    P(0x79), P(0x7A), P(0x7B), P(0x7C), P(0x7D), P(0x7E),
    [0x7F] = 0x121, [0x80] = 0x122, [0x81] = 0x123, [0x82] = 0x124, [0x83] = 0x125, [0x84] = 0x126,
    [0x85] = 0x127, [0x86] = 0x128, [0x87] = 0x129, [0x88] = 0x12A, [0x89] = 0x12B, [0x8A] = 0x12C,
    [0x8B] = 0x12D, [0x8C] = 0x12E, [0x8D] = 0x12F, [0x8E] = 0x130, [0x8F] = 0x131, [0x90] = 0x132,
    [0x91] = 0x133, [0x92] = 0x134, [0x93] = 0x135, [0x94] = 0x136, [0x95] = 0x137, [0x96] = 0x138,
    [0x97] = 0x139, [0x98] = 0x13A, [0x99] = 0x13B, [0x9A] = 0x13C, [0x9B] = 0x13D, [0x9C] = 0x13E,
    [0x9D] = 0x13F, [0x9E] = 0x140, [0x9F] = 0x141, [0xA0] = 0x142,
    P(0xA1), P(0xA2), P(0xA3), P(0xA4), P(0xA5), P(0xA6), P(0xA7), P(0xA8), P(0xA9), P(0xAA), P(0xAB),
    P(0xAC), [0xAD] = 0x143,
    P(0xAE), P(0xAF), P(0xB0), P(0xB1), P(0xB2), P(0xB3), P(0xB4), P(0xB5), P(0xB6), P(0xB7), P(0xB8),
    P(0xB9), P(0xBA), P(0xBB), P(0xBC), P(0xBD), P(0xBE), P(0xBF), P(0xC0), P(0xC1), P(0xC2), P(0xC3),
    P(0xC4), P(0xC5), P(0xC6), P(0xC7), P(0xC8), P(0xC9), P(0xCA), P(0xCB), P(0xCC), P(0xCD), P(0xCE),
    P(0xCF), P(0xD0), P(0xD1), P(0xD2), P(0xD3), P(0xD4), P(0xD5), P(0xD6), P(0xD7), P(0xD8), P(0xD9),
    P(0xDA), P(0xDB), P(0xDC), P(0xDD), P(0xDE), P(0xDF), P(0xE0), P(0xE1), P(0xE2), P(0xE3), P(0xE4),
    P(0xE5), P(0xE6), P(0xE7), P(0xE8), P(0xE9), P(0xEA), P(0xEB), P(0xEC), P(0xED), P(0xEE), P(0xEF),
    P(0xF0), P(0xF1), P(0xF2), P(0xF3), P(0xF4), P(0xF5), P(0xF6), P(0xF7), P(0xF8), P(0xF9), P(0xFA),
    P(0xFB), P(0xFC), P(0xFD), P(0xFE), P(0xFF),
};
#undef P

int tk_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) {
        if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || cp >= 0xAE) return (int)cp;
        return -1;
    }
    if (cp > 0x143) return -1;
    static const uint8_t others[68] = {
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10,
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x7F,
        0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F, 0x90,
        0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xAD,
    };
    return others[cp - 0x100];
}

/* ---- regular expressions ---- */

struct tk_regex {
    pcre2_code *code;
    bool jit;
};

/* Oniguruma's \s is the White_Space property; PCRE2's also takes U+180E and Rust's \w and
 * Ruby's \h differ from PCRE2's, so these escapes are spelt out as explicit classes. */
#define WS_SET                                                                                                 \
    "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define WORD_SET "\\p{L}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}"
#define HEX_SET "0-9a-fA-F"

static void translate_class_escape(tk_buf *o, char c, bool in_class) {
    const char *set = c == 's' || c == 'S' ? WS_SET : c == 'w' || c == 'W' ? WORD_SET : HEX_SET;
    bool neg = c == 'S' || c == 'W' || c == 'H';
    if (in_class) {
        /* a negated escape cannot be spelt inside a class: keep PCRE2's own */
        if (neg) {
            tk_buf_putc(o, '\\');
            tk_buf_putc(o, c);
        } else
            tk_buf_puts(o, set);
        return;
    }
    tk_buf_puts(o, neg ? "[^" : "[");
    tk_buf_puts(o, set);
    tk_buf_putc(o, ']');
}

static void translate_pattern(tk_buf *o, const char *p, size_t n) {
    int depth = 0; /* nesting of character classes (Oniguruma allows [a[b]]) */
    size_t i = 0;
    while (i < n) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            if (strchr("sSwWhH", e)) {
                translate_class_escape(o, e, depth > 0);
                i += 2;
                continue;
            }
            if (e == 'u' && i + 6 <= n) {
                bool hex = true;
                for (int k = 2; k < 6; k++)
                    if (!strchr("0123456789abcdefABCDEF", p[i + k])) hex = false;
                if (hex) {
                    tk_buf_puts(o, "\\x{");
                    tk_buf_put(o, p + i + 2, 4);
                    tk_buf_putc(o, '}');
                    i += 6;
                    continue;
                }
            }
            tk_buf_put(o, p + i, 2);
            i += 2;
            if ((e == 'p' || e == 'P' || e == 'x') && i < n && p[i] == '{') {
                while (i < n && p[i] != '}') tk_buf_putc(o, p[i++]);
                if (i < n) tk_buf_putc(o, p[i++]);
            }
            continue;
        }
        if (c == '[') {
            if (depth > 0 && i + 1 < n && p[i + 1] == ':') {
                /* POSIX class [:alpha:] inside a class: copy through ":]" */
                const char *end = NULL;
                for (size_t k = i + 2; k + 1 < n; k++)
                    if (p[k] == ':' && p[k + 1] == ']') {
                        end = p + k + 2;
                        break;
                    }
                if (end) {
                    tk_buf_put(o, p + i, (size_t)(end - (p + i)));
                    i = (size_t)(end - p);
                    continue;
                }
            }
            depth++;
            tk_buf_putc(o, c);
            i++;
            if (i < n && p[i] == '^') tk_buf_putc(o, p[i++]);
            if (i < n && p[i] == ']') tk_buf_putc(o, p[i++]); /* a leading ] is literal */
            continue;
        }
        if (c == ']' && depth > 0) depth--;
        tk_buf_putc(o, c);
        i++;
    }
}

mt_status tk_regex_compile(tk_regex **out, const char *pattern, size_t len, bool literal, const char *origin,
                           const char *where, mt_error *err) {
    *out = NULL;
    tk_buf pat = {0};
    if (literal) {
        tk_buf_puts(&pat, "\\Q");
        /* \E inside the literal would end quoting: split it as \E\\E\Q */
        for (size_t i = 0; i < len; i++) {
            if (pattern[i] == '\\' && i + 1 < len && pattern[i + 1] == 'E') {
                tk_buf_puts(&pat, "\\E\\\\E\\Q");
                i++;
            } else
                tk_buf_putc(&pat, pattern[i]);
        }
        tk_buf_puts(&pat, "\\E");
    } else
        translate_pattern(&pat, pattern, len);
    if (!pat.p) tk_buf_put(&pat, "", 0);
    int code;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat.p, pat.len, opts, &code, &off, NULL);
    tk_buf_free(&pat);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return mt_error_set(err, MT_ERR_FORMAT, "%s: %s: pattern '%.*s' does not compile: %s", origin, where,
                            (int)(len > 200 ? 200 : len), pattern, (const char *)msg);
    }
    tk_regex *r = mt_xcalloc(1, sizeof *r);
    r->code = re;
    r->jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    *out = r;
    return MT_OK;
}

void tk_regex_free(tk_regex *re) {
    if (!re) return;
    pcre2_code_free(re->code);
    free(re);
}

tk_match *tk_match_new(void) {
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    MT_ASSERT(md);
    return (tk_match *)md;
}

void tk_match_free(tk_match *m) { pcre2_match_data_free((pcre2_match_data *)m); }

int tk_regex_find(const tk_regex *re, tk_match *m, const char *s, size_t n, size_t start, size_t *ms, size_t *me) {
    pcre2_match_data *md = (pcre2_match_data *)m;
    /* Subjects are validated UTF-8 cut at character boundaries, so the check is skipped. */
    int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && re->jit)
        rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) return -1;
    /* rc == 0: more groups than the ovector holds; the whole match is still there */
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}
