/* test_cuda_emu_loss.cc - the mean of cross-entropy's per-row losses over
 * the counted rows (kernels/crossentropy_mean_cuda.cu) against its CPU twin
 * (crossentropy_mean_cpu.c), under the fiber emulation with
 * AddressSanitizer, as test_cuda_emu_kernels.cc does for the other kernels.
 *
 * What must hold: the count is the CPU's exactly; the mean agrees to the
 * rounding of a double sum taken in another order; the backward gives the
 * CPU's bits, adds into the gradient (random start) and leaves ignored rows
 * alone; no counted row gives a mean of 0 and no gradient; N <= 0 is an
 * error naming the kernel; the emulator reports no race. */
#include <stdint.h>
#include <string.h>
#include <vector>
#include "fsdp.h"
#include "check.h"
#include "cuda_emu.h"

typedef std::vector<float> vec;
static fsdp_rng rng;

static vec uniform(long n, float lo = -1.0f, float hi = 1.0f) {
    vec v(n > 0 ? n : 1);
    fsdp_rng_fill_uniform(&rng, v.data(), n, lo, hi);
    v.resize(n);
    return v;
}

/* denominator 0: the mean over the counted rows; > 0: their sum over it */
static void test_mean(int N, double ignored_share, double denominator = 0.0) {
    const int ignore = -100;
    vec loss = uniform(N, 0.0f, 9.0f), dinit = uniform(N), dout = uniform(1, -3.0f, 3.0f);
    std::vector<int32_t> targets(N);
    for (int n = 0; n < N; n++) targets[n] = fsdp_rng_uniform(&rng) < ignored_share ? ignore : n % 17;
    float out_c = -1, out_g = -1;
    int32_t count_c = -1, count_g = -1;
    CHECK(fsdp_crossentropy_mean_forward_cpu(&out_c, &count_c, loss.data(), targets.data(), N, ignore, denominator) == FSDP_OK,
          "cpu forward: %s", fsdp_last_error());
    CHECK(fsdp_crossentropy_mean_forward_cuda(&out_g, &count_g, loss.data(), targets.data(), N, ignore, denominator, nullptr) ==
              FSDP_OK, "gpu forward: %s", fsdp_last_error());
    int32_t want = 0;
    for (int n = 0; n < N; n++) want += targets[n] != ignore;
    CHECK(count_c == want && count_g == want, "N %d: counts cpu %d gpu %d, want %d", N, count_c, count_g, want);
    CHECK(fabsf(out_g - out_c) <= 1e-6f * fabsf(out_c), "N %d: mean gpu %.9g cpu %.9g", N, out_g, out_c);
    double sum = 0.0;
    for (int n = 0; n < N; n++) if (targets[n] != ignore) sum += loss[n];
    const double by = denominator > 0.0 ? denominator : (double)want;
    if (want) CHECK(out_c == (float)(sum / by), "N %d: cpu loss %.9g, want %.9g", N, out_c, (float)(sum / by));
    if (want == 0) CHECK(out_c == 0.0f && out_g == 0.0f, "N %d: no counted row, mean %g / %g", N, out_c, out_g);

    vec dc = dinit, dg = dinit;
    CHECK(fsdp_crossentropy_mean_backward_cpu(dc.data(), dout.data(), &count_c, targets.data(), N, ignore, denominator) ==
              FSDP_OK, "cpu backward: %s", fsdp_last_error());
    CHECK(fsdp_crossentropy_mean_backward_cuda(dg.data(), dout.data(), &count_g, targets.data(), N, ignore, denominator,
                                               nullptr) == FSDP_OK, "gpu backward: %s", fsdp_last_error());
    CHECK(!memcmp(dc.data(), dg.data(), 4 * (size_t)N), "N %d: backward bits differ", N);
    const float d = want ? (float)((double)dout[0] / by) : 0.0f;
    for (int n = 0; n < N; n++) {
        const float expect = targets[n] == ignore ? dinit[n] : dinit[n] + d;
        if (dg[n] != expect) {
            CHECK(false, "N %d row %d: gradient %.9g, want %.9g", N, n, dg[n], expect);
            break;
        }
    }
}

int main() {
    fsdp_rng_seed(&rng, 4242);
    for (int N : {1, 7, 1000, 3001}) test_mean(N, 0.3);
    test_mean(50, 1.0);  /* every row ignored */
    test_mean(2049, 0.0);
    test_mean(1000, 0.3, 18.5);   /* SFT: the step's learned tokens / world */
    test_mean(77, 0.5, 1.0 / 3.0);
    float out;
    int32_t count;
    const float l = 1;
    const int32_t tg = 0;
    CHECK(fsdp_crossentropy_mean_forward_cuda(&out, &count, &l, &tg, 0, -100, 0.0, nullptr) == FSDP_ERR_INVALID,
          "N = 0 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_crossentropy_mean_forward_cuda"), "message: %s", fsdp_last_error());
    CHECK(fsdp_emu::failures == 0, "the emulator reported %d races or deadlocks", fsdp_emu::failures);
    return check_exit("test_cuda_emu_loss");
}
