/* test_cuda_emu_fused.cc - fused kernels against the unfused ones they
 * replace, under the fiber emulation with AddressSanitizer:
 * fsdp_add_rmsnorm_forward_cuda (a residual add and the RMSNorm after it,
 * one pass) must give the bits of fsdp_add_cuda then
 * fsdp_rmsnorm_forward_cuda, and the CPU reference within f32 reordering;
 * rows wider than the registers it holds (C > 8192) included. */
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

static bool same_bits(const vec &a, const vec &b) {
    return a.size() == b.size() && !memcmp(a.data(), b.data(), 4 * a.size());
}

static void test_add_rmsnorm(int N, int C) {
    const long n = (long)N * C;
    vec a = uniform(n, -2, 2), b = uniform(n), w = uniform(C, 0.5f, 1.5f);
    vec sum_c(n), out_c(n), rstd_c(N), sum_f(n), out_f(n), rstd_f(N), sum_u(n), out_u(n), rstd_u(N);
    CHECK(fsdp_add_rmsnorm_forward_cpu(sum_c.data(), out_c.data(), rstd_c.data(), a.data(), b.data(), w.data(), N, C,
                                       1e-5f) == FSDP_OK, "cpu: %s", fsdp_last_error());
    CHECK(fsdp_add_rmsnorm_forward_cuda(sum_f.data(), out_f.data(), rstd_f.data(), a.data(), b.data(), w.data(), N,
                                        C, 1e-5f, nullptr) == FSDP_OK, "fused: %s", fsdp_last_error());
    CHECK(fsdp_add_cuda(sum_u.data(), a.data(), b.data(), n, nullptr) == FSDP_OK, "add: %s", fsdp_last_error());
    CHECK(fsdp_rmsnorm_forward_cuda(out_u.data(), rstd_u.data(), sum_u.data(), w.data(), N, C, 1e-5f, nullptr) ==
              FSDP_OK, "rmsnorm: %s", fsdp_last_error());
    CHECK(same_bits(sum_f, sum_u) && same_bits(out_f, out_u) && same_bits(rstd_f, rstd_u),
          "N %d C %d: fused add + rmsnorm differs from add then rmsnorm on the device", N, C);
    CHECK(same_bits(sum_f, sum_c), "N %d C %d: the sum differs from the CPU's", N, C);
    char what[64];
    snprintf(what, sizeof what, "add_rmsnorm N%d C%d out", N, C);
    CHECK_CLOSE(what, out_f.data(), out_c.data(), n, 1e-5, 1e-6);
    snprintf(what, sizeof what, "add_rmsnorm N%d C%d rstd", N, C);
    CHECK_CLOSE(what, rstd_f.data(), rstd_c.data(), N, 1e-5, 1e-6);
}

int main() {
    fsdp_rng_seed(&rng, 77);
    for (int C : {13, 256, 1000}) test_add_rmsnorm(7, C);
    test_add_rmsnorm(1, 9000); /* more than 512 threads x 16 held values */
    test_add_rmsnorm(33, 64);
    float z = 0;
    CHECK(fsdp_add_rmsnorm_forward_cuda(&z, &z, &z, &z, &z, &z, 0, 4, 1e-5f, nullptr) == FSDP_ERR_INVALID,
          "N = 0 accepted");
    CHECK(strstr(fsdp_last_error(), "fsdp_add_rmsnorm_forward_cuda"), "message: %s", fsdp_last_error());
    CHECK(fsdp_emu::failures == 0, "the emulator reported %d races or deadlocks", fsdp_emu::failures);
    return check_exit("test_cuda_emu_fused");
}
