/* rng.c — xoshiro256** (Blackman & Vigna) for stateful streams whose state checkpoints save,
 * and a splitmix64-based counter hash for masks regenerated on demand. */
#include "common/common.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void mt_rng_seed(mt_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

uint64_t mt_rng_u64(mt_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float mt_rng_float(mt_rng *r) { return (float)(mt_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

uint64_t mt_rng_below(mt_rng *r, uint64_t n) {
    MT_ASSERT(n > 0);
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = mt_rng_u64(r);
    while (x >= limit);
    return x % n;
}

float mt_rng_normal(mt_rng *r) {
    /* Box–Muller; u1 kept away from 0 so the log is finite */
    double u1 = ((double)(mt_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(mt_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t mt_hash_u64(uint64_t key, uint64_t counter) {
    uint64_t x = key ^ (counter * 0xd1342543de82ef95ULL);
    splitmix64(&x);
    return splitmix64(&x);
}

float mt_hash_float(uint64_t key, uint64_t counter) {
    return (float)(mt_hash_u64(key, counter) >> 40) * (1.0f / 16777216.0f);
}
