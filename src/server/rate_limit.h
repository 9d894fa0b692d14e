/* rate_limit.h - rate limits: one token bucket, used per device (sends and receipts) and
 * per client address (new connections). */
#ifndef PARLEY_SERVER_RATE_LIMIT_H
#define PARLEY_SERVER_RATE_LIMIT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* A bucket of burst tokens refilled at rate per second; counts in thousandths so that
 * a bucket is 12 bytes. Takes one token, or returns false and the wait for the next.
 * A fresh bucket (last_ms 0) starts full. */
bool token_take(uint32_t *tokens_milli, uint64_t *last_ms, uint32_t rate, uint32_t burst,
                uint64_t now_ms, uint32_t *retry_after_ms);

/* New connections per client address: a fixed table of buckets indexed by a hash of
 * the address. Two addresses sharing a slot share a bucket (stricter, never looser,
 * than one each); the table does not grow with the number of clients. */
#define CONN_LIMITER_SLOTS 4096

typedef struct {
    uint32_t tokens_milli;
    uint64_t last_ms;
} conn_slot;

typedef struct {
    pthread_mutex_t lock;
    uint32_t per_second;   /* 0: no limit */
    conn_slot slots[CONN_LIMITER_SLOTS];
} conn_limiter;

void conn_limiter_init(conn_limiter *l, uint32_t per_second);
void conn_limiter_destroy(conn_limiter *l);
bool conn_limiter_allow(conn_limiter *l, const struct sockaddr_storage *addr, uint64_t now_ms,
                        uint32_t *retry_after_ms);

#endif
