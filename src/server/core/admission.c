/* admission.c - connection admission at accept (admission.h). */
#include "admission.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"

void address_key(const struct sockaddr *peer, uint8_t key[16])
{
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memset(key, 0, 16);
    if (peer->sa_family == AF_INET) {
        memcpy(key, v4_mapped, 12);
        memcpy(key + 12, &((const struct sockaddr_in *)peer)->sin_addr, 4);
    } else if (peer->sa_family == AF_INET6) {
        const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in6 *)peer)->sin6_addr;
        if (memcmp(a, v4_mapped, 12) == 0)
            memcpy(key, a, 16);
        else
            memcpy(key, a, 8); /* a host has a whole /64: it is one client */
    }
}

static int parse_address(const char *text, uint8_t key[16])
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &v4->sin_addr) == 1)
        v4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1)
        v6->sin6_family = AF_INET6;
    else
        return -1;
    address_key((const struct sockaddr *)&ss, key);
    return 0;
}

int admission_init(admission *a, uint32_t per_address, uint32_t max_total, const char *trusted, char *err,
                   size_t errlen)
{
    memset(a, 0, sizeof *a);
    a->per_address = per_address;
    a->max_total = max_total;
    for (const char *p = trusted; p && *p;) {
        size_t n = strcspn(p, ",");
        char one[64];
        if (n == 0 || n >= sizeof one || a->ntrusted == ADMISSION_MAX_TRUSTED) {
            snprintf(err, errlen, "--trusted-proxy wants at most %d IP addresses, separated by commas",
                     ADMISSION_MAX_TRUSTED);
            return -1;
        }
        memcpy(one, p, n);
        one[n] = 0;
        if (parse_address(one, a->trusted[a->ntrusted]) != 0) {
            snprintf(err, errlen, "--trusted-proxy: %s is not an IP address", one);
            return -1;
        }
        a->ntrusted++;
        p += n + (p[n] == ',');
    }
    a->counts = calloc(ADMISSION_SLOTS, sizeof *a->counts);
    if (!a->counts) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void admission_free(admission *a)
{
    free(a->counts);
    a->counts = NULL;
}

bool admission_trusted(const admission *a, const uint8_t key[16])
{
    for (size_t i = 0; i < a->ntrusted; i++)
        if (memcmp(a->trusted[i], key, 16) == 0)
            return true;
    return false;
}

static uint32_t slot_of(const uint8_t key[16])
{
    return (uint32_t)hash_bytes(key, 16) & (ADMISSION_SLOTS - 1);
}

int admission_admit(admission *a, rate_table *rate, const struct sockaddr *peer, uint64_t now_ms, uint32_t *slot,
                    uint32_t *retry_after_s)
{
    uint8_t key[16];
    address_key(peer, key);
    *slot = 0;
    *retry_after_s = 1;
    /* every descriptor counts until it is released, a refused one too (it lingers while
     * the answer goes out); past half the reserve as well, refusals are dropped unanswered */
    uint32_t total = __atomic_add_fetch(&a->total, 1, __ATOMIC_RELAXED);
    if (a->max_total && total > a->max_total + ADMISSION_DROP_AFTER) {
        __atomic_sub_fetch(&a->total, 1, __ATOMIC_RELAXED);
        return -1;
    }
    if (a->max_total && total > a->max_total)
        return 503;
    if (admission_trusted(a, key))
        return 0;
    uint32_t retry_ms = 0;
    if (!rate_table_take(rate, key, sizeof key, now_ms, &retry_ms)) {
        *retry_after_s = retry_ms > 1000 ? (retry_ms + 999) / 1000 : 1;
        return 503;
    }
    uint32_t k = slot_of(key);
    uint32_t held = __atomic_add_fetch(&a->counts[k], 1, __ATOMIC_RELAXED);
    if (a->per_address && held > a->per_address) {
        __atomic_sub_fetch(&a->counts[k], 1, __ATOMIC_RELAXED);
        *retry_after_s = 10;
        return 503;
    }
    *slot = k + 1;
    return 0;
}

void admission_release(admission *a, uint32_t slot)
{
    if (slot)
        __atomic_sub_fetch(&a->counts[slot - 1], 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&a->total, 1, __ATOMIC_RELAXED);
}
