/* check.h - the C tests' tiny harness. CHECK records a failure with file and
 * line and carries on; the test's main returns check_exit(), which is
 * non-zero when anything failed, so a failing assertion fails `make test`. */
#ifndef FSDP_CHECK_H
#define FSDP_CHECK_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int check_failures = 0;
static int check_count = 0;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        check_count++;                                                         \
        if (!(cond)) {                                                         \
            check_failures++;                                                  \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

/* |a - b| <= atol + rtol * |b|, elementwise; reports the worst element */
static inline int check_close_impl(const char *what, const float *a, const float *b, long n,
                            double rtol, double atol, const char *file, int line) {
    long worst = -1;
    double worst_err = 0;
    for (long i = 0; i < n; i++) {
        double err = fabs((double)a[i] - (double)b[i]);
        double tol = atol + rtol * fabs((double)b[i]);
        if (!(err <= tol) && (worst < 0 || err - tol > worst_err)) { worst = i; worst_err = err - tol; }
    }
    check_count++;
    if (worst >= 0) {
        check_failures++;
        fprintf(stderr, "FAIL %s:%d: %s: element %ld: got %.8g want %.8g (rtol %g atol %g)\n", file,
                line, what, worst, a[worst], b[worst], rtol, atol);
        return 0;
    }
    return 1;
}
#define CHECK_CLOSE(what, a, b, n, rtol, atol) \
    check_close_impl(what, a, b, n, rtol, atol, __FILE__, __LINE__)

static int check_exit(const char *name) {
    if (check_failures) {
        fprintf(stderr, "%s: %d of %d checks failed\n", name, check_failures, check_count);
        return 1;
    }
    printf("%s: %d checks passed\n", name, check_count);
    return 0;
}
#endif
