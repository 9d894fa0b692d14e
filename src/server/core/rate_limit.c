/* rate_limit.c - token buckets in fixed tables (see rate_limit.h). */
#include "rate_limit.h"

#include <stdlib.h>
#include <string.h>

bool token_take(rate_bucket *b, uint32_t rate, uint32_t burst, uint64_t now_ms, uint32_t *retry_after_ms)
{
    uint64_t cap = (uint64_t)burst * 1000;
    uint64_t tokens = b->last_ms == 0 ? cap : b->tokens_milli;
    if (b->last_ms != 0 && now_ms > b->last_ms)
        tokens += (now_ms - b->last_ms) * rate; /* rate tokens per 1000 ms, in thousandths */
    if (tokens > cap)
        tokens = cap;
    if (now_ms > b->last_ms || b->last_ms == 0)
        b->last_ms = now_ms ? now_ms : 1;
    if (tokens >= 1000) {
        b->tokens_milli = (uint32_t)(tokens - 1000);
        return true;
    }
    b->tokens_milli = (uint32_t)tokens;
    if (retry_after_ms)
        *retry_after_ms = rate ? (uint32_t)((1000 - tokens + rate - 1) / rate) : UINT32_MAX;
    return false;
}

int rate_table_init(rate_table *t, size_t nbuckets, uint32_t rate, uint32_t burst)
{
    t->rate = rate;
    t->burst = burst;
    t->nbuckets = nbuckets;
    t->buckets = rate ? calloc(nbuckets, sizeof *t->buckets) : NULL;
    if (rate && !t->buckets)
        return -1;
    for (int i = 0; i < RATE_LOCKS; i++)
        pthread_mutex_init(&t->locks[i], NULL);
    return 0;
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
    if (!t->rate)
        return true;
    uint64_t h = 14695981039346656037ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ ((const uint8_t *)key)[i]) * 1099511628211ULL;
    size_t k = (size_t)(h ^ h >> 32) & (t->nbuckets - 1);
    pthread_mutex_t *lock = &t->locks[k % RATE_LOCKS];
    pthread_mutex_lock(lock);
    bool ok = token_take(&t->buckets[k], t->rate, t->burst, now_ms, retry_after_ms);
    pthread_mutex_unlock(lock);
    return ok;
}
