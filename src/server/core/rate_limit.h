/* rate_limit.h - rate limits as token buckets in fixed tables: one keyed by device
 * (sends and receipts per second, whatever connection they come on) and one keyed by
 * client address (new connections per second).
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
    uint32_t tokens_milli;   /* thousandths of a token */
    uint64_t last_ms;        /* 0: a fresh bucket, full */
} rate_bucket;

typedef struct {
    pthread_mutex_t locks[RATE_LOCKS];
    uint32_t rate;           /* tokens per second; 0: no limit */
    uint32_t burst;          /* bucket size */
    size_t nbuckets;         /* a power of two */
    rate_bucket *buckets;
} rate_table;

int rate_table_init(rate_table *t, size_t nbuckets, uint32_t rate, uint32_t burst);
void rate_table_destroy(rate_table *t);

/* Takes one token for key, or returns false and how long until the next one. */
bool rate_table_take(rate_table *t, const void *key, size_t len, uint64_t now_ms, uint32_t *retry_after_ms);

/* The bucket arithmetic on its own (exposed for the unit test). */
bool token_take(rate_bucket *b, uint32_t rate, uint32_t burst, uint64_t now_ms, uint32_t *retry_after_ms);

#endif
