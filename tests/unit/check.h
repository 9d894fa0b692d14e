/* check.h - a minimal test harness: CHECK counts, the summary line is the
 * "N passed, N failed" that CI reads, and main's exit code follows it. */
#ifndef PARLEY_TESTS_CHECK_H
#define PARLEY_TESTS_CHECK_H

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks_passed, checks_failed;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (cond) {                                                                  \
            checks_passed++;                                                         \
        } else {                                                                     \
            checks_failed++;                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                            \
    } while (0)

#define CHECK_RC(expr, want)                                                         \
    do {                                                                             \
        int rc_ = (expr);                                                            \
        if (rc_ == (want)) {                                                         \
            checks_passed++;                                                         \
        } else {                                                                     \
            checks_failed++;                                                         \
            fprintf(stderr, "%s:%d: %s returned %d, wanted %d\n", __FILE__, __LINE__, \
                    #expr, rc_, (int)(want));                                        \
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
    return checks_failed == 0 && checks_passed > 0 ? 0 : 1;
}

#endif
