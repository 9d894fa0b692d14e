/* test_codes.c - the verification code table (src/server/services/codes.c): a request or
 * a check walks one short chain however many numbers are waiting (it was a list walked
 * whole under one lock: at 100,000 numbers RequestCode fell from ~4,500/s to ~150/s);
 * spent entries are swept; a live code is sent again, not replaced; one address gets
 * only its share of a number's hour. */
#include "check.h"
#include "codes.h"
#include "errors.h"

#define HOUR (3600 * 1000ULL)

static const uint8_t here[16] = {1}, there[16] = {2}, elsewhere[16] = {3};

static void number(char out[20], int i)
{
    snprintf(out, 20, "+1555%07d", i);
}

static void test_many_numbers(void)
{
    enum { N = 100000 };
    uint64_t now = 10 * HOUR;
    char phone[20], code[7];
    int sent = 0;
    codes_longest_walk();
    for (int i = 0; i < N; i++) {
        number(phone, i);
        sent += codes_request(phone, here, now, code) == CODES_SEND;
    }
    CHECK(sent == N);
    CHECK(codes_count() == N);
    size_t walk = codes_longest_walk();
    CHECK(walk <= 8); /* chains stay short: no walk over the table */
    bool all_waiting = true;
    for (int i = 0; i < N; i += 97) {
        number(phone, i);
        all_waiting &= codes_waiting(phone, now + 1000);
    }
    CHECK(all_waiting);
    CHECK(codes_longest_walk() <= 8);
    /* nothing is spent within the hour */
    CHECK(codes_sweep(now + 30 * 60 * 1000, 1u << 18) == 0);
    /* an hour after the last send, with every code expired, the sweep takes them all */
    size_t removed = 0;
    for (int i = 0; i < 64; i++)
        removed += codes_sweep(now + HOUR + 1, 4096);
    CHECK(removed == N);
    CHECK(codes_count() == 0);
    printf("codes: %d numbers, longest walk %zu\n", N, walk);
}

static void test_resend_and_shares(void)
{
    uint64_t now = 100 * HOUR;
    char first[7] = "", again[7] = "", code[7];
    const char *phone = "+15559990001";
    CHECK_RC(codes_request(phone, here, now, first), CODES_SEND);
    /* asking again while the code lives sends the same code (a stranger cannot void it) */
    CHECK_RC(codes_request(phone, there, now + 1000, again), CODES_SEND);
    CHECK(strcmp(first, again) == 0);
    CHECK_RC(codes_request(phone, there, now + 2000, code), CODES_SEND);
    CHECK_RC(codes_request(phone, there, now + 3000, code), CODES_SEND);
    /* that address had its 3 of the number's 5 */
    CHECK_RC(codes_request(phone, there, now + 4000, code), CODES_ADDRESS_LIMITED);
    CHECK_RC(codes_request(phone, here, now + 5000, code), CODES_SEND);
    CHECK_RC(codes_request(phone, elsewhere, now + 6000, code), CODES_NUMBER_LIMITED); /* 5 this hour */
    CHECK(strcmp(code, first) == 0);
    /* a wrong try costs one of 5; the right one works once */
    CHECK_RC(codes_check(phone, "000000", here, now + 7000), strcmp(first, "000000") ? PERR_WRONG_CODE : 0);
    CHECK_RC(codes_check(phone, first, here, now + 8000), strcmp(first, "000000") ? 0 : PERR_WRONG_CODE);
    CHECK_RC(codes_check(phone, first, here, now + 9000), PERR_WRONG_CODE); /* spent */
    CHECK(!codes_waiting(phone, now + 9000));
    /* an hour after the first send the number may ask again: a new code */
    char later[7];
    CHECK_RC(codes_request(phone, there, now + HOUR + 10000, later), CODES_SEND);
    CHECK(codes_waiting(phone, now + HOUR + 10001));
    /* expiry: ten minutes */
    CHECK_RC(codes_check(phone, later, here, now + HOUR + 10000 + CODE_TTL_MS + 1), PERR_CODE_EXPIRED);
    /* tries: one address gets 2 wrong ones (then it is refused, and the code stands);
     * five wrong ones in all burn the code */
    const char *other = "+15559990002";
    char c2[7];
    CHECK_RC(codes_request(other, here, now, c2), CODES_SEND);
    const char *wrong = strcmp(c2, "111111") ? "111111" : "222222";
    CHECK_RC(codes_check(other, wrong, there, now + 1), PERR_WRONG_CODE);
    CHECK_RC(codes_check(other, wrong, there, now + 1), PERR_WRONG_CODE);
    CHECK_RC(codes_check(other, wrong, there, now + 1), PERR_TOO_MANY_ATTEMPTS);
    CHECK_RC(codes_check(other, wrong, there, now + 1), PERR_TOO_MANY_ATTEMPTS);
    CHECK(codes_waiting(other, now + 1));
    CHECK_RC(codes_check(other, c2, here, now + 2), 0); /* the owner's code still works */
    const char *third = "+15559990003";
    char c3[7];
    CHECK_RC(codes_request(third, here, now, c3), CODES_SEND);
    const char *w3 = strcmp(c3, "111111") ? "111111" : "222222";
    const uint8_t *from[5] = {there, there, elsewhere, elsewhere, here};
    for (int i = 0; i < 4; i++)
        CHECK_RC(codes_check(third, w3, from[i], now + 1), PERR_WRONG_CODE);
    CHECK_RC(codes_check(third, w3, from[4], now + 1), PERR_TOO_MANY_ATTEMPTS);
    CHECK_RC(codes_check(third, c3, here, now + 1), PERR_TOO_MANY_ATTEMPTS); /* burnt */
    codes_clear();
    CHECK(codes_count() == 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 2;
    RUN(test_many_numbers());
    RUN(test_resend_and_shares());
    return check_summary("codes");
}
