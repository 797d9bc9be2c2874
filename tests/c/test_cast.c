/* test_cast.c - f32 <-> bf16 / f16 conversions (kernels/dtype_math.h) and
 * fsdp_cast_cpu. Known values were computed with numpy's float16; beyond
 * those, every f16 and bf16 value is decoded against an independent formula,
 * round-tripped, and every rounding midpoint between neighbours is checked
 * for ties-to-even (and one f32 step either side). */
#include <stdint.h>
#include <string.h>
#include "fsdp.h"
#include "check.h"
#include "dtype_math.h"

static float from_bits(uint32_t u) { return fsdp_bits_f32(u); }

/* ---- f16 --------------------------------------------------------------- */

static void test_f16_known(void) {
    /* f32 bits -> f16 bits, from numpy: np.float32(x).astype(np.float16) */
    static const uint32_t cases[][2] = {
        {0x477fe000, 0x7bff}, /* 65504, the largest f16 */
        {0x477fef00, 0x7bff}, /* 65519 rounds down */
        {0x477ff000, 0x7c00}, /* 65520, the midpoint to 65536: tie to even is inf */
        {0x47800000, 0x7c00}, /* 65536 */
        {0x49742400, 0x7c00}, /* 1e6 overflows to inf */
        {0x387fffd5, 0x0400}, /* 6.1035e-05 rounds up to the smallest normal */
        {0x38800000, 0x0400}, /* 2^-14 */
        {0x38000000, 0x0200}, /* 2^-15, subnormal */
        {0x337ffae5, 0x0001}, /* 5.96e-08 rounds to the smallest subnormal 2^-24 */
        {0x33000000, 0x0000}, /* 2^-25: tie between 0 and 2^-24, even is 0 */
        {0x33000001, 0x0001}, /* just above it */
        {0x32fffae5, 0x0000}, /* 2.98e-08 */
        {0x3696feb5, 0x004b}, /* 4.5e-06, subnormal with rounding */
        {0x3eaaaaab, 0x3555}, /* 1/3 */
        {0x3dcccccd, 0x2e66}, /* 0.1 */
        {0x3f801000, 0x3c00}, /* 1 + 2^-11: tie, even is 1 */
        {0x3f803000, 0x3c02}, /* 1 + 3 * 2^-11: tie, even is 1 + 2^-9 */
        {0xc0200000, 0xc100}, /* -2.5 */
        {0x2edbe6ff, 0x0000}, /* 1e-10 underflows to 0 */
        {0x80000000, 0x8000}, /* -0 */
        {0x00000001, 0x0000}, /* f32 subnormal */
        {0x7f800000, 0x7c00}, /* inf */
        {0xff800000, 0xfc00}, /* -inf */
        {0x7f7fffff, 0x7c00}, /* largest f32 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = fsdp_f32_to_f16(from_bits(cases[i][0]));
        CHECK(got == cases[i][1], "f32 %08x -> f16: got %04x want %04x", cases[i][0], got,
              cases[i][1]);
    }
    /* NaN stays NaN (quiet), including a signaling payload that naive
     * truncation would turn into inf */
    uint32_t nans[] = {0x7fc00000, 0xffc00000, 0x7f800001, 0x7f802000};
    for (int i = 0; i < 4; i++) {
        uint16_t h = fsdp_f32_to_f16(from_bits(nans[i]));
        CHECK((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0, "f32 NaN %08x -> f16 %04x", nans[i], h);
    }
    CHECK(isnan(fsdp_f16_to_f32(0x7e00)), "f16 NaN -> f32");
    CHECK(fsdp_f16_to_f32(0x7bff) == 65504.0f, "f16 max");
    CHECK(fsdp_f16_to_f32(0x0001) == ldexpf(1, -24), "f16 smallest subnormal");
    CHECK(fsdp_f16_to_f32(0x3555) == 0.333251953125f, "f16 1/3");
}

/* every f16: decode, round trip, and each midpoint to the next value */
static void test_f16_sweep(void) {
    int bad_decode = 0, bad_trip = 0, bad_mid = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        int e = (h >> 10) & 31, m = h & 1023;
        float got = fsdp_f16_to_f32((uint16_t)h);
        if (e == 31) {
            bad_decode += m ? !isnan(got) : !(isinf(got) && (got < 0) == (h >> 15));
            continue;
        }
        double mag = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
        double want = (h & 0x8000) ? -mag : mag;
        bad_decode += !(got == want && !signbit(got) == !signbit(want));
        bad_trip += fsdp_f32_to_f16(got) != h;
    }
    /* positive neighbours lo = h, hi = h + 1 (0x7c00 is inf); negatives mirror */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        float lo = fsdp_f16_to_f32((uint16_t)h);
        float hi = h + 1 == 0x7c00 ? 65536.0f : fsdp_f16_to_f32((uint16_t)(h + 1));
        float mid = (lo + hi) / 2; /* exact: 12 significant bits */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        float below = nextafterf(mid, 0), above = nextafterf(mid, INFINITY);
        bad_mid += fsdp_f32_to_f16(mid) != even;
        bad_mid += fsdp_f32_to_f16(below) != h;
        bad_mid += fsdp_f32_to_f16(above) != h + 1;
        bad_mid += fsdp_f32_to_f16(-mid) != (even | 0x8000);
        bad_mid += fsdp_f32_to_f16(-above) != ((h + 1) | 0x8000);
    }
    CHECK(bad_decode == 0, "%d f16 values decode wrongly", bad_decode);
    CHECK(bad_trip == 0, "%d f16 values do not round-trip through f32", bad_trip);
    CHECK(bad_mid == 0, "%d f16 rounding midpoints wrong", bad_mid);
}

/* ---- bf16 -------------------------------------------------------------- */

static void test_bf16(void) {
    static const uint32_t cases[][2] = {
        {0x3f800000, 0x3f80}, /* 1 */
        {0x3eaaaaab, 0x3eab}, /* 1/3 rounds up */
        {0x3f808000, 0x3f80}, /* tie, even stays */
        {0x3f818000, 0x3f82}, /* tie, odd goes up */
        {0x3f808001, 0x3f81}, /* just above a tie */
        {0x7f7fffff, 0x7f80}, /* largest f32 rounds to inf */
        {0x7f7f7fff, 0x7f7f}, /* ... but just under the midpoint stays finite */
        {0x00010000, 0x0001}, /* subnormals are representable */
        {0x80000000, 0x8000}, /* -0 */
        {0xff800000, 0xff80}, /* -inf */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = fsdp_f32_to_bf16(from_bits(cases[i][0]));
        CHECK(got == cases[i][1], "f32 %08x -> bf16: got %04x want %04x", cases[i][0], got,
              cases[i][1]);
    }
    uint32_t nans[] = {0x7fc00000, 0x7f800001, 0xff800100};
    for (int i = 0; i < 3; i++) {
        uint16_t h = fsdp_f32_to_bf16(from_bits(nans[i]));
        CHECK((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0, "f32 NaN %08x -> bf16 %04x", nans[i], h);
    }
    /* every bf16 round-trips; every midpoint ties to even */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f)) continue; /* NaN */
        float f = fsdp_bf16_to_f32((uint16_t)h);
        bad += fsdp_f32_bits(f) != h << 16;
        bad += fsdp_f32_to_bf16(f) != h;
    }
    for (uint32_t h = 0; h < 0x7f80; h++) {
        uint32_t mid = h << 16 | 0x8000;
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        bad += fsdp_f32_to_bf16(from_bits(mid)) != even;
        bad += fsdp_f32_to_bf16(from_bits(mid - 1)) != h;
        bad += fsdp_f32_to_bf16(from_bits(mid + 1)) != h + 1;
    }
    CHECK(bad == 0, "%d bf16 round trips or midpoints wrong", bad);
}

/* ---- fsdp_cast_cpu ----------------------------------------------------- */

static void test_cast_kernel(void) {
    enum { n = 100003 }; /* past the parallel threshold */
    fsdp_rng rng;
    fsdp_rng_seed(&rng, 7);
    float *x = malloc(sizeof(float) * n), *back = malloc(sizeof(float) * n);
    uint16_t *h = malloc(2 * n), *b = malloc(2 * n), *b2 = malloc(2 * n);
    fsdp_rng_fill_normal(&rng, x, n, 0, 1000); /* wide enough to overflow f16 sometimes */
    x[0] = NAN;
    x[1] = -0.0f;

    /* f32 -> f16 / bf16 element by element as the helpers do it */
    CHECK(fsdp_cast_cpu(h, FSDP_F16, x, FSDP_F32, n) == FSDP_OK, "cast f32 -> f16");
    CHECK(fsdp_cast_cpu(b, FSDP_BF16, x, FSDP_F32, n) == FSDP_OK, "cast f32 -> bf16");
    int bad = 0;
    for (int i = 0; i < n; i++)
        bad += h[i] != fsdp_f32_to_f16(x[i]) || b[i] != fsdp_f32_to_bf16(x[i]);
    CHECK(bad == 0, "cast to f16/bf16: %d elements differ from the helpers", bad);

    /* back to f32 is exact; f16 -> bf16 goes through f32 */
    CHECK(fsdp_cast_cpu(back, FSDP_F32, h, FSDP_F16, n) == FSDP_OK, "cast f16 -> f32");
    bad = 0;
    for (int i = 0; i < n; i++) {
        float want = fsdp_f16_to_f32(h[i]);
        bad += !(memcmp(&back[i], &want, 4) == 0);
    }
    CHECK(bad == 0, "cast f16 -> f32: %d elements wrong", bad);
    CHECK(fsdp_cast_cpu(b2, FSDP_BF16, h, FSDP_F16, n) == FSDP_OK, "cast f16 -> bf16");
    bad = 0;
    for (int i = 0; i < n; i++) bad += b2[i] != fsdp_f32_to_bf16(fsdp_f16_to_f32(h[i]));
    CHECK(bad == 0, "cast f16 -> bf16: %d elements wrong", bad);

    /* same dtype copies bits, in place too */
    CHECK(fsdp_cast_cpu(b2, FSDP_BF16, b, FSDP_BF16, n) == FSDP_OK && memcmp(b, b2, 2 * n) == 0,
          "cast bf16 -> bf16 copies");
    CHECK(fsdp_cast_cpu(b2, FSDP_BF16, b2, FSDP_BF16, n) == FSDP_OK && memcmp(b, b2, 2 * n) == 0,
          "cast in place");

    /* errors */
    CHECK(fsdp_cast_cpu(h, FSDP_F16, x, FSDP_I32, n) == FSDP_ERR_INVALID &&
              strstr(fsdp_last_error(), "fsdp_cast_cpu: src dtype 3"),
          "cast from i32 must fail: '%s'", fsdp_last_error());
    CHECK(fsdp_cast_cpu(h, 99, x, FSDP_F32, n) == FSDP_ERR_INVALID &&
              strstr(fsdp_last_error(), "dst dtype 99"),
          "cast to dtype 99 must fail: '%s'", fsdp_last_error());
    CHECK(fsdp_cast_cpu(h, FSDP_F16, x, FSDP_F32, -1) == FSDP_ERR_INVALID &&
              strstr(fsdp_last_error(), "fsdp_cast_cpu: n"),
          "cast n < 0 must fail: '%s'", fsdp_last_error());
    CHECK(fsdp_cast_cpu(NULL, FSDP_F16, x, FSDP_F32, n) == FSDP_ERR_INVALID, "cast dst NULL");
    CHECK(fsdp_cast_cpu(NULL, FSDP_F16, NULL, FSDP_F32, 0) == FSDP_OK, "cast n = 0");
    free(x); free(back); free(h); free(b); free(b2);
}

int main(void) {
    test_f16_known();
    test_f16_sweep();
    test_bf16();
    test_cast_kernel();
    return check_exit("test_cast");
}
