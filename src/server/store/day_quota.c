/* day_quota.c - the daily write counts (day_quota.h): open addressing, linear probing. */
#include "day_quota.h"

#include <stdlib.h>
#include <string.h>

#include "hash.h"

#define FIRST_CAP 1024

static day_entry *find(day_entry *slots, size_t cap, const uint8_t account[STORE_ACCOUNT_ID_LEN])
{
    size_t i = (size_t)hash_bytes(account, STORE_ACCOUNT_ID_LEN) & (cap - 1);
    while (slots[i].day && memcmp(slots[i].account, account, STORE_ACCOUNT_ID_LEN) != 0)
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

/* Rebuilds the table with room for one more, keeping only today's accounts. */
static bool grow(day_quota *q, uint64_t day)
{
    size_t today = 0;
    for (size_t i = 0; i < q->cap; i++)
        today += q->slots[i].day == day;
    size_t cap = q->cap ? q->cap : FIRST_CAP;
    while ((today + 1) * 2 > cap)
        cap *= 2;
    day_entry *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return false;
    for (size_t i = 0; i < q->cap; i++)
        if (q->slots[i].day == day)
            *find(slots, cap, q->slots[i].account) = q->slots[i];
    free(q->slots);
    q->slots = slots;
    q->cap = cap;
    q->used = today;
    return true;
}

bool day_quota_charge(day_quota *q, const uint8_t account[STORE_ACCOUNT_ID_LEN], uint64_t day,
                      uint64_t max_writes, uint64_t max_bytes, uint64_t bytes)
{
    if (!max_writes && !max_bytes)
        return true;
    day_entry *e = q->cap ? find(q->slots, q->cap, account) : NULL;
    if (!e || (!e->day && (q->used + 1) * 2 > q->cap)) {
        if (!grow(q, day))
            return true; /* no memory: a quota is not worth refusing a send for */
        e = find(q->slots, q->cap, account);
    }
    if (e->day != day) { /* a free slot, or the account's first write of a new day */
        q->used += e->day == 0;
        memcpy(e->account, account, STORE_ACCOUNT_ID_LEN);
        e->day = day;
        e->writes = e->bytes = 0;
    }
    if (e->writes && ((max_writes && e->writes >= max_writes) || (max_bytes && e->bytes + bytes > max_bytes)))
        return false;
    e->writes++;
    e->bytes += bytes;
    return true;
}

void day_quota_free(day_quota *q)
{
    free(q->slots);
    *q = (day_quota){0};
}
