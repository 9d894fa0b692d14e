/* rate_limit.h - rate limits as token buckets in fixed tables: one keyed by device
 * (sends and receipts, fetches, lookups, whatever connection they come on), others keyed
 * by client address (new connections, verification codes), at any rate per period.
 *
 * A table is an array of buckets indexed by a hash of the key, so it never grows with
 * the number of clients and needs no expiry. Two keys that share a bucket share its
 * allowance: stricter, never looser, than one each. The array is allocated zeroed, so
 * only the pages of buckets in use cost memory. Locks are striped. */
#ifndef PARLEY_SERVER_RATE_LIMIT_H
#define PARLEY_SERVER_RATE_LIMIT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RATE_LOCKS 64

typedef struct {
    uint64_t tokens_milli;   /* thousandths of a token (bursts up to 10^8 and more) */
    uint64_t last_ms;        /* 0: a fresh bucket, full */
} rate_bucket;

typedef struct {
    pthread_mutex_t locks[RATE_LOCKS];
    uint32_t count;          /* tokens per period; 0: no limit */
    uint32_t period_ms;
    uint32_t burst;          /* bucket size */
    size_t nbuckets;         /* a power of two */
    rate_bucket *buckets;
} rate_table;

/* rate tokens per second, up to burst at once. */
int rate_table_init(rate_table *t, size_t nbuckets, uint32_t rate, uint32_t burst);
/* count tokens per period_ms (e.g. 5 a minute, 1,000 a day), up to burst at once. */
int rate_table_init_per(rate_table *t, size_t nbuckets, uint32_t count, uint32_t period_ms, uint32_t burst);
void rate_table_destroy(rate_table *t);

/* Takes one token for key, or returns false and how long until the next one. */
bool rate_table_take(rate_table *t, const void *key, size_t len, uint64_t now_ms, uint32_t *retry_after_ms);

/* The bucket arithmetic on its own (exposed for the unit test): count tokens per
 * period_ms; time not yet worth a thousandth of a token is kept for the next call, so
 * slow rates refill however often they are asked (to within a percent: a thousandth's
 * time is counted in whole milliseconds). */
bool token_take_per(rate_bucket *b, uint32_t count, uint32_t period_ms, uint32_t burst, uint64_t now_ms,
                    uint32_t *retry_after_ms);
/* The same with rate tokens per second. */
bool token_take(rate_bucket *b, uint32_t rate, uint32_t burst, uint64_t now_ms, uint32_t *retry_after_ms);

#endif
