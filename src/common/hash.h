/* hash.h - FNV-1a over bytes: the hash of the fixed tables keyed by a device, an
 * address or a number (rate buckets, admission slots, the code table). Not for anything
 * an attacker could aim at a single slot to their profit: a shared slot only makes the
 * limit stricter, never looser. */
#ifndef PARLEY_HASH_H
#define PARLEY_HASH_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t hash_bytes(const void *data, size_t len)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ ((const uint8_t *)data)[i]) * 1099511628211ULL;
    return h ^ h >> 32; /* the high bits into the low ones the tables index by */
}

#endif
