/* check.h - a minimal test harness: CHECK counts, the summary line is the
 * "N passed, N failed" that CI reads, and main's exit code follows it. Cases run
 * through RUN(test_x(args)), so a failed check names its case and the summary lists
 * the cases that failed. */
#ifndef PARLEY_TESTS_CHECK_H
#define PARLEY_TESTS_CHECK_H

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks_passed, checks_failed;
static const char *check_case = "main"; /* the case running now */
static char check_failed_cases[1024];   /* their names, for the summary */

/* Runs one case: `RUN(test_inbox());` or `RUN(test_conversation(&a, &b));`. */
#define RUN(call)                                                                    \
    do {                                                                             \
        int failed_before_ = checks_failed;                                          \
        check_case = #call;                                                          \
        call;                                                                        \
        if (checks_failed > failed_before_)                                          \
            check_note_failed_case(#call);                                           \
        check_case = "main";                                                         \
    } while (0)

static inline void check_note_failed_case(const char *call)
{
    size_t n = strlen(check_failed_cases);
    if (n + strlen(call) + 3 < sizeof check_failed_cases)
        snprintf(check_failed_cases + n, sizeof check_failed_cases - n, "%s%s", n ? ", " : "", call);
}

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (cond) {                                                                  \
            checks_passed++;                                                         \
        } else {                                                                     \
            checks_failed++;                                                         \
            fprintf(stderr, "%s:%d: [%s] CHECK failed: %s\n", __FILE__, __LINE__,     \
                    check_case, #cond);                                              \
        }                                                                            \
    } while (0)

#define CHECK_RC(expr, want)                                                         \
    do {                                                                             \
        int rc_ = (expr);                                                            \
        if (rc_ == (want)) {                                                         \
            checks_passed++;                                                         \
        } else {                                                                     \
            checks_failed++;                                                         \
            fprintf(stderr, "%s:%d: [%s] %s returned %d, wanted %d\n", __FILE__,      \
                    __LINE__, check_case, #expr, rc_, (int)(want));                  \
        }                                                                            \
    } while (0)

#define CHECK_MEM(a, b, n) CHECK(memcmp((a), (b), (n)) == 0)

/* Removes a test's scratch directory (and everything in it); a failure ends the test. */
static inline void remove_tree(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        exit(2);
}

static inline size_t hex_to_bin(uint8_t *out, size_t max, const char *hex)
{
    size_t n = 0;
    if (sodium_hex2bin(out, max, hex, strlen(hex), NULL, &n, NULL) != 0) {
        fprintf(stderr, "bad hex in test: %s\n", hex);
        exit(2);
    }
    return n;
}

static inline size_t b64_to_bin(uint8_t *out, size_t max, const char *b64)
{
    size_t n = 0;
    if (sodium_base642bin(out, max, b64, strlen(b64), NULL, &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0) {
        fprintf(stderr, "bad base64 in test: %s\n", b64);
        exit(2);
    }
    return n;
}

static inline int check_summary(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, checks_passed, checks_failed);
    if (check_failed_cases[0])
        printf("%s: failed cases: %s\n", name, check_failed_cases);
    return checks_failed == 0 && checks_passed > 0 ? 0 : 1;
}

#endif
