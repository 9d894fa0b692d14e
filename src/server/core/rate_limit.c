/* rate_limit.c - token buckets in fixed tables (see rate_limit.h). */
#include "rate_limit.h"

#include <stdlib.h>
#include <string.h>

#include "hash.h"

bool token_take_per(rate_bucket *b, uint32_t count, uint32_t period_ms, uint32_t burst, uint64_t now_ms,
                    uint32_t *retry_after_ms)
{
    uint64_t cap = (uint64_t)burst * 1000;
    uint64_t num = (uint64_t)count * 1000, den = period_ms ? period_ms : 1; /* thousandths per ms */
    uint64_t tokens = b->last_ms == 0 ? cap : b->tokens_milli;
    if (b->last_ms == 0) {
        b->last_ms = now_ms ? now_ms : 1;
    } else if (now_ms > b->last_ms) {
        uint64_t elapsed = now_ms - b->last_ms;
        /* 128 bits: a count of 10^8 a day idle for days would wrap 64 */
        unsigned __int128 wide = num ? (unsigned __int128)elapsed * num / den : 0;
        uint64_t added = wide > cap ? cap : (uint64_t)wide;
        if (tokens + added >= cap) {
            tokens = cap;
            b->last_ms = now_ms;
        } else {
            tokens += added;
            b->last_ms += num ? added * den / num : elapsed; /* the rest counts next time */
        }
    }
    if (tokens >= 1000) {
        b->tokens_milli = tokens - 1000;
        return true;
    }
    b->tokens_milli = tokens;
    if (retry_after_ms) {
        uint64_t wait = num ? ((1000 - tokens) * den + num - 1) / num : UINT32_MAX;
        *retry_after_ms = wait > UINT32_MAX ? UINT32_MAX : (uint32_t)wait;
    }
    return false;
}

bool token_take(rate_bucket *b, uint32_t rate, uint32_t burst, uint64_t now_ms, uint32_t *retry_after_ms)
{
    return token_take_per(b, rate, 1000, burst, now_ms, retry_after_ms);
}

int rate_table_init_per(rate_table *t, size_t nbuckets, uint32_t count, uint32_t period_ms, uint32_t burst)
{
    t->count = count;
    t->period_ms = period_ms ? period_ms : 1000;
    t->burst = burst;
    t->nbuckets = nbuckets;
    t->buckets = count ? calloc(nbuckets, sizeof *t->buckets) : NULL;
    if (count && !t->buckets)
        return -1;
    for (int i = 0; i < RATE_LOCKS; i++)
        pthread_mutex_init(&t->locks[i], NULL);
    return 0;
}

int rate_table_init(rate_table *t, size_t nbuckets, uint32_t rate, uint32_t burst)
{
    return rate_table_init_per(t, nbuckets, rate, 1000, burst);
}

void rate_table_destroy(rate_table *t)
{
    free(t->buckets);
    t->buckets = NULL;
    for (int i = 0; i < RATE_LOCKS; i++)
        pthread_mutex_destroy(&t->locks[i]);
}

bool rate_table_take(rate_table *t, const void *key, size_t len, uint64_t now_ms, uint32_t *retry_after_ms)
{
    if (!t->count)
        return true;
    size_t k = (size_t)hash_bytes(key, len) & (t->nbuckets - 1);
    pthread_mutex_t *lock = &t->locks[k % RATE_LOCKS];
    pthread_mutex_lock(lock);
    bool ok = token_take_per(&t->buckets[k], t->count, t->period_ms, t->burst, now_ms, retry_after_ms);
    pthread_mutex_unlock(lock);
    return ok;
}
