/* rate_limit.c - token buckets (see rate_limit.h). */
#include "rate_limit.h"

#include <netinet/in.h>
#include <string.h>

bool token_take(uint32_t *tokens_milli, uint64_t *last_ms, uint32_t rate, uint32_t burst,
                uint64_t now_ms, uint32_t *retry_after_ms)
{
    uint64_t cap = (uint64_t)burst * 1000;
    uint64_t tokens = *last_ms == 0 ? cap : *tokens_milli;
    if (now_ms > *last_ms && *last_ms != 0)
        tokens += (now_ms - *last_ms) * rate; /* rate tokens per 1000 ms, in thousandths */
    if (tokens > cap)
        tokens = cap;
    *last_ms = now_ms;
    if (tokens >= 1000) {
        *tokens_milli = (uint32_t)(tokens - 1000);
        return true;
    }
    *tokens_milli = (uint32_t)tokens;
    if (retry_after_ms)
        *retry_after_ms = rate ? (uint32_t)((1000 - tokens + rate - 1) / rate) : UINT32_MAX;
    return false;
}

void conn_limiter_init(conn_limiter *l, uint32_t per_second)
{
    memset(l->slots, 0, sizeof l->slots);
    l->per_second = per_second;
    pthread_mutex_init(&l->lock, NULL);
}

void conn_limiter_destroy(conn_limiter *l)
{
    pthread_mutex_destroy(&l->lock);
}

bool conn_limiter_allow(conn_limiter *l, const struct sockaddr_storage *addr, uint64_t now_ms,
                        uint32_t *retry_after_ms)
{
    if (!l->per_second)
        return true;
    uint8_t key[16] = {0};
    if (addr->ss_family == AF_INET)
        memcpy(key, &((const struct sockaddr_in *)addr)->sin_addr, 4);
    else if (addr->ss_family == AF_INET6)
        memcpy(key, &((const struct sockaddr_in6 *)addr)->sin6_addr, 16);
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    pthread_mutex_lock(&l->lock);
    conn_slot *s = &l->slots[h % CONN_LIMITER_SLOTS];
    bool ok = token_take(&s->tokens_milli, &s->last_ms, l->per_second, l->per_second, now_ms,
                         retry_after_ms);
    pthread_mutex_unlock(&l->lock);
    return ok;
}
