/* rng.c - xoshiro256** seeded through splitmix64; normal samples by Box-Muller.
 * The state is four words of plain data, so checkpoints store it as bytes and
 * a resumed run draws exactly the numbers the uninterrupted run would. */
#include <math.h>
#include <string.h>
#include "internal.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void fsdp_rng_seed(fsdp_rng *rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

uint64_t fsdp_rng_next(fsdp_rng *rng) {
    uint64_t *s = rng->s;
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

double fsdp_rng_uniform(fsdp_rng *rng) {
    return (double)(fsdp_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
}

void fsdp_rng_fill_uniform(fsdp_rng *rng, float *out, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) out[i] = lo + (hi - lo) * (float)fsdp_rng_uniform(rng);
}

void fsdp_rng_fill_normal(fsdp_rng *rng, float *out, int64_t n, float mean, float std) {
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = fsdp_rng_uniform(rng), u2 = fsdp_rng_uniform(rng);
        if (u1 < 1e-300) u1 = 1e-300;
        double r = sqrt(-2.0 * log(u1));
        out[i] = mean + std * (float)(r * cos(2.0 * M_PI * u2));
        if (i + 1 < n) out[i + 1] = mean + std * (float)(r * sin(2.0 * M_PI * u2));
    }
}

/* counter-based: splitmix64 of (seed, index) gives two uniforms per element */
static inline double unit_from(uint64_t seed, uint64_t counter) {
    uint64_t x = seed ^ (counter * 0xd1b54a32d192ed03ULL);
    return (double)(splitmix64(&x) >> 11) * (1.0 / 9007199254740992.0);
}

void fsdp_init_normal(float *out, int64_t n, uint64_t seed, int64_t first, float mean, float std) {
    #pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        uint64_t j = (uint64_t)(first + i);
        double u1 = unit_from(seed, 2 * j), u2 = unit_from(seed, 2 * j + 1);
        if (u1 < 1e-300) u1 = 1e-300;
        out[i] = mean + std * (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
    }
}

void fsdp_init_uniform(float *out, int64_t n, uint64_t seed, int64_t first, float lo, float hi) {
    #pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; i++)
        out[i] = lo + (hi - lo) * (float)unit_from(seed, 2 * (uint64_t)(first + i));
}

uint64_t fsdp_hash64(const void *data, int64_t n, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed; /* FNV-1a, then a splitmix finalizer */
    for (int64_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return splitmix64(&h);
}

/* order-free: a sum (mod 2^64) of one hash per element, so the sums of the
 * pieces of any slicing add up to the sum of the whole */
uint64_t fsdp_fingerprint_f32(const float *x, int64_t n, uint64_t seed, int64_t first) {
    uint64_t total = 0;
    #pragma omp parallel for reduction(+:total) if (n > 262144)
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], 4);
        uint64_t h = seed ^ ((uint64_t)(first + i) * 0xd1b54a32d192ed03ULL) ^ ((uint64_t)bits << 17);
        total += splitmix64(&h);
    }
    return total;
}
