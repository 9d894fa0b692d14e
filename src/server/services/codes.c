/* codes.c - the table of verification codes (codes.h). */
#include "codes.h"

#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "hash.h"
#include "store.h"

#define BUCKETS (1u << 18) /* 2 MiB of chain heads, touched only where numbers land */
#define STRIPES 256
#define HOUR_MS (3600 * 1000ULL)

typedef struct code_entry {
    struct code_entry *next;
    char phone[STORE_PHONE_MAX + 1];
    char code[7];                     /* "" once spent */
    uint32_t attempts_left;
    uint64_t expires_ms;
    uint64_t sent_ms[CODES_PER_HOUR]; /* the last sends, newest first */
    uint32_t sent_by[CODES_PER_HOUR]; /* a hash of the address each was asked from */
    uint32_t wrong_by[CODE_ATTEMPTS]; /* the addresses of this code's wrong tries */
} code_entry;

static struct {
    pthread_mutex_t stripes[STRIPES];
    pthread_once_t once;
    code_entry **buckets;
    size_t count;                     /* atomic */
    size_t longest_walk;              /* atomic, max */
    size_t sweep_at;                  /* the next bucket to sweep (under sweep_lock) */
    pthread_mutex_t sweep_lock;
} t = {.once = PTHREAD_ONCE_INIT, .sweep_lock = PTHREAD_MUTEX_INITIALIZER};

static void init_once(void)
{
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&t.stripes[i], NULL);
    t.buckets = calloc(BUCKETS, sizeof *t.buckets);
}

/* The bucket of phone, with its stripe locked; NULL (nothing locked) without memory. */
static code_entry **lock_bucket(const char *phone, pthread_mutex_t **lock)
{
    pthread_once(&t.once, init_once);
    if (!t.buckets)
        return NULL;
    size_t b = (size_t)hash_bytes(phone, strlen(phone)) & (BUCKETS - 1);
    *lock = &t.stripes[b % STRIPES];
    pthread_mutex_lock(*lock);
    return &t.buckets[b];
}

static code_entry *find(code_entry **bucket, const char *phone)
{
    size_t walked = 0;
    code_entry *e = *bucket;
    for (; e && strcmp(e->phone, phone) != 0; e = e->next)
        walked++;
    size_t seen = __atomic_load_n(&t.longest_walk, __ATOMIC_RELAXED);
    while (walked + 1 > seen && !__atomic_compare_exchange_n(&t.longest_walk, &seen, walked + 1, false,
                                                             __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
    return e;
}

static bool live(const code_entry *e, uint64_t now)
{
    return e->code[0] && now <= e->expires_ms && e->attempts_left > 0;
}

int codes_request(const char *phone, const uint8_t address[16], uint64_t now, char code[7])
{
    pthread_mutex_t *lock;
    code_entry **bucket = lock_bucket(phone, &lock);
    if (!bucket)
        return CODES_NO_MEMORY;
    code_entry *e = find(bucket, phone);
    if (!e) {
        if (!(e = calloc(1, sizeof *e))) {
            pthread_mutex_unlock(lock);
            return CODES_NO_MEMORY;
        }
        snprintf(e->phone, sizeof e->phone, "%s", phone);
        e->next = *bucket;
        *bucket = e;
        __atomic_add_fetch(&t.count, 1, __ATOMIC_RELAXED);
    }
    uint32_t by = address ? (uint32_t)hash_bytes(address, 16) | 1 : 0; /* 0: not counted */
    int recent = 0, from_here = 0;
    for (int i = 0; i < CODES_PER_HOUR; i++)
        if (e->sent_ms[i] && now - e->sent_ms[i] < HOUR_MS) {
            recent++;
            from_here += by && e->sent_by[i] == by;
        }
    int rc = recent >= CODES_PER_HOUR      ? CODES_NUMBER_LIMITED
             : from_here >= CODES_PER_ADDRESS ? CODES_ADDRESS_LIMITED
                                              : CODES_SEND;
    if (rc == CODES_SEND) {
        if (!live(e, now)) { /* a new code; a live one is sent again as it is */
            snprintf(e->code, sizeof e->code, "%06u", (unsigned)randombytes_uniform(1000000));
            e->attempts_left = CODE_ATTEMPTS;
            memset(e->wrong_by, 0, sizeof e->wrong_by);
        }
        e->expires_ms = now + CODE_TTL_MS;
        memmove(e->sent_ms + 1, e->sent_ms, (CODES_PER_HOUR - 1) * sizeof e->sent_ms[0]);
        memmove(e->sent_by + 1, e->sent_by, (CODES_PER_HOUR - 1) * sizeof e->sent_by[0]);
        e->sent_ms[0] = now;
        e->sent_by[0] = by;
        memcpy(code, e->code, 7);
    }
    pthread_mutex_unlock(lock);
    return rc;
}

bool codes_waiting(const char *phone, uint64_t now)
{
    pthread_mutex_t *lock;
    code_entry **bucket = lock_bucket(phone, &lock);
    if (!bucket)
        return false;
    code_entry *e = find(bucket, phone);
    bool waiting = e && e->code[0] && now <= e->expires_ms;
    pthread_mutex_unlock(lock);
    return waiting;
}

uint32_t codes_check(const char *phone, const char *code, const uint8_t address[16], uint64_t now)
{
    uint32_t by = address ? (uint32_t)hash_bytes(address, 16) | 1 : 0;
    pthread_mutex_t *lock;
    code_entry **bucket = lock_bucket(phone, &lock);
    if (!bucket)
        return PERR_WRONG_CODE;
    code_entry *e = find(bucket, phone);
    uint32_t result;
    if (!e || !e->code[0]) {
        result = PERR_WRONG_CODE;
    } else if (now > e->expires_ms) {
        result = PERR_CODE_EXPIRED;
    } else if (e->attempts_left == 0) {
        result = PERR_TOO_MANY_ATTEMPTS;
    } else if (!code || strlen(code) != 6 || sodium_memcmp(code, e->code, 6) != 0) {
        int mine = 0;
        for (int i = 0; by && i < CODE_ATTEMPTS; i++)
            mine += e->wrong_by[i] == by;
        if (mine >= CODE_TRIES_PER_ADDRESS) {
            result = PERR_TOO_MANY_ATTEMPTS; /* for this address; the code stands */
        } else {
            e->wrong_by[CODE_ATTEMPTS - e->attempts_left] = by;
            e->attempts_left--;
            result = e->attempts_left ? PERR_WRONG_CODE : PERR_TOO_MANY_ATTEMPTS;
        }
    } else {
        sodium_memzero(e->code, sizeof e->code); /* one use */
        result = 0;
    }
    pthread_mutex_unlock(lock);
    return result;
}

static bool spent(const code_entry *e, uint64_t now)
{
    return (!e->code[0] || now > e->expires_ms) && now - e->sent_ms[0] >= HOUR_MS;
}

size_t codes_sweep(uint64_t now, size_t nbuckets)
{
    pthread_once(&t.once, init_once);
    if (!t.buckets)
        return 0;
    size_t removed = 0;
    pthread_mutex_lock(&t.sweep_lock);
    for (size_t n = 0; n < nbuckets && n < BUCKETS; n++) {
        size_t b = t.sweep_at;
        t.sweep_at = (t.sweep_at + 1) & (BUCKETS - 1);
        pthread_mutex_t *lock = &t.stripes[b % STRIPES];
        pthread_mutex_lock(lock);
        for (code_entry **link = &t.buckets[b]; *link;) {
            code_entry *e = *link;
            if (spent(e, now)) {
                *link = e->next;
                sodium_memzero(e, sizeof *e);
                free(e);
                removed++;
            } else {
                link = &e->next;
            }
        }
        pthread_mutex_unlock(lock);
    }
    pthread_mutex_unlock(&t.sweep_lock);
    __atomic_sub_fetch(&t.count, removed, __ATOMIC_RELAXED);
    return removed;
}

size_t codes_count(void)
{
    return __atomic_load_n(&t.count, __ATOMIC_RELAXED);
}

size_t codes_longest_walk(void)
{
    return __atomic_exchange_n(&t.longest_walk, 0, __ATOMIC_RELAXED);
}

void codes_clear(void)
{
    pthread_once(&t.once, init_once);
    for (size_t b = 0; t.buckets && b < BUCKETS; b++) {
        pthread_mutex_t *lock = &t.stripes[b % STRIPES];
        pthread_mutex_lock(lock);
        for (code_entry *e = t.buckets[b], *next; e; e = next) {
            next = e->next;
            sodium_memzero(e, sizeof *e);
            free(e);
        }
        t.buckets[b] = NULL;
        pthread_mutex_unlock(lock);
    }
    __atomic_store_n(&t.count, 0, __ATOMIC_RELAXED);
}
