/* day_quota.h - what each account wrote on the current UTC day, for the daily quota
 * (store_quota): a hash table in memory, owned by one thread (the embedded backend's
 * storage writer), so a send costs no disk write for it.
 *
 * A restart starts every account's day again. A write counted in a batch that the disk
 * then refused still counts (stricter, never looser: it happens only on storage errors).
 * Accounts of past days are dropped when the table grows, so it holds about the accounts
 * that wrote today. */
#ifndef PARLEY_STORE_DAY_QUOTA_H
#define PARLEY_STORE_DAY_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

typedef struct {
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    uint64_t day;            /* days since the epoch; 0: a free slot */
    uint64_t writes, bytes;
} day_entry;

typedef struct {
    day_entry *slots;
    size_t cap, used;        /* cap: a power of two, or 0 */
} day_quota;

void day_quota_free(day_quota *q);   /* a zeroed day_quota is an empty one */

/* Counts one write of bytes for account on day (> 0), unless it would take the account
 * past max_writes writes or max_bytes bytes that day (0: no limit): then false, nothing
 * counted. An account's first write of a day always goes, so that a write larger than
 * the whole quota does not wait forever. Without memory for a new entry: true. */
bool day_quota_charge(day_quota *q, const uint8_t account[STORE_ACCOUNT_ID_LEN], uint64_t day,
                      uint64_t max_writes, uint64_t max_bytes, uint64_t bytes);

#endif
