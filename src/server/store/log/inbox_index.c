/* inbox_index.c - the inbox log's index in memory (inbox_index.h): stripes of open
 * addressing tables of devices, each device's envelopes in a ring. */
#include "inbox_index.h"

#include <stdlib.h>
#include <string.h>

#include "hash.h"

#define FIRST_SLOTS 64
#define FIRST_RING 8

void inbox_device_key(uint8_t out[INBOX_DEVICE_KEY], const store_device *d)
{
    memcpy(out, d->account, STORE_ACCOUNT_ID_LEN);
    out[16] = (uint8_t)(d->device >> 24);
    out[17] = (uint8_t)(d->device >> 16);
    out[18] = (uint8_t)(d->device >> 8);
    out[19] = (uint8_t)d->device;
}

int inbox_index_init(inbox_index *ix)
{
    memset(ix, 0, sizeof *ix);
    for (int i = 0; i < INBOX_STRIPES; i++)
        pthread_mutex_init(&ix->stripes[i].lock, NULL);
    return STORE_OK;
}

void inbox_index_free(inbox_index *ix)
{
    for (int i = 0; i < INBOX_STRIPES; i++) {
        inbox_stripe *st = &ix->stripes[i];
        for (size_t k = 0; k < st->cap; k++)
            if (st->slots[k]) {
                free(st->slots[k]->ring);
                free(st->slots[k]);
            }
        free(st->slots);
        pthread_mutex_destroy(&st->lock);
    }
    memset(ix, 0, sizeof *ix);
}

static uint64_t key_hash(const uint8_t key[INBOX_DEVICE_KEY])
{
    return hash_bytes(key, INBOX_DEVICE_KEY);
}

static inbox_stripe *stripe_of(inbox_index *ix, uint64_t h)
{
    return &ix->stripes[(h >> 58) % INBOX_STRIPES]; /* the top bits; the slots use the low ones */
}

static inbox_device **slot_of(inbox_device **slots, size_t cap, uint64_t h, const uint8_t key[INBOX_DEVICE_KEY])
{
    size_t i = (size_t)h & (cap - 1);
    while (slots[i] && memcmp(slots[i]->key, key, INBOX_DEVICE_KEY) != 0)
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

static inbox_device *find(inbox_stripe *st, uint64_t h, const uint8_t key[INBOX_DEVICE_KEY])
{
    return st->cap ? *slot_of(st->slots, st->cap, h, key) : NULL;
}

/* d, made if it is not there yet (the stripe's lock held). */
static inbox_device *find_or_add(inbox_stripe *st, uint64_t h, const uint8_t key[INBOX_DEVICE_KEY])
{
    inbox_device *d = find(st, h, key);
    if (d)
        return d;
    if ((st->used + 1) * 2 > st->cap) { /* at most half full */
        size_t cap = st->cap ? st->cap * 2 : FIRST_SLOTS;
        inbox_device **slots = calloc(cap, sizeof *slots);
        if (!slots)
            return NULL;
        for (size_t i = 0; i < st->cap; i++)
            if (st->slots[i])
                *slot_of(slots, cap, key_hash(st->slots[i]->key), st->slots[i]->key) = st->slots[i];
        free(st->slots);
        st->slots = slots;
        st->cap = cap;
    }
    if (!(d = calloc(1, sizeof *d)))
        return NULL;
    memcpy(d->key, key, INBOX_DEVICE_KEY);
    d->next_seq = 1;
    *slot_of(st->slots, st->cap, h, key) = d;
    st->used++;
    return d;
}

static inbox_entry *at(const inbox_device *d, uint32_t i)
{
    return &d->ring[(d->head + i) & (d->cap - 1)];
}

static bool push(inbox_device *d, const inbox_entry *e)
{
    if (d->count == d->cap) {
        uint32_t cap = d->cap ? d->cap * 2 : FIRST_RING;
        inbox_entry *ring = malloc((size_t)cap * sizeof *ring);
        if (!ring)
            return false;
        for (uint32_t i = 0; i < d->count; i++)
            ring[i] = *at(d, i);
        free(d->ring);
        d->ring = ring;
        d->cap = cap;
        d->head = 0;
    }
    *at(d, d->count++) = *e;
    d->bytes += e->len;
    return true;
}

/* Appends e to d's ring and counts it. */
static bool add(inbox_index *ix, inbox_device *d, const inbox_entry *e)
{
    if (!push(d, e))
        return false;
    ix->envelopes++;
    ix->bytes += e->len;
    return true;
}

/* Where seq is, or would go, among d's entries (binary search). */
static uint32_t position(const inbox_device *d, uint64_t seq)
{
    uint32_t lo = 0, hi = d->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (at(d, mid)->seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int inbox_index_append(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], inbox_entry *e, uint32_t record_segment)
{
    uint64_t h = key_hash(key);
    inbox_stripe *st = stripe_of(ix, h);
    pthread_mutex_lock(&st->lock);
    inbox_device *d = find_or_add(st, h, key);
    int rc = STORE_NOMEM;
    if (d) {
        e->seq = d->next_seq;
        if (add(ix, d, e)) {
            d->next_seq++;
            d->seq_segment = record_segment;
            rc = STORE_OK;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int inbox_index_replay(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], const inbox_entry *e,
                       uint32_t record_segment, bool *added)
{
    *added = false;
    uint64_t h = key_hash(key);
    inbox_stripe *st = stripe_of(ix, h);
    pthread_mutex_lock(&st->lock);
    inbox_device *d = find_or_add(st, h, key);
    int rc = d ? STORE_OK : STORE_NOMEM;
    if (d && e->seq >= d->next_seq) { /* a seq at or below the last is a copy already seen */
        if ((*added = add(ix, d, e))) {
            d->next_seq = e->seq + 1;
            d->seq_segment = record_segment;
        } else {
            rc = STORE_NOMEM;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int inbox_index_replay_moved(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], const inbox_entry *e, bool *added)
{
    uint64_t h = key_hash(key);
    inbox_stripe *st = stripe_of(ix, h);
    *added = false;
    pthread_mutex_lock(&st->lock);
    inbox_device *d = find_or_add(st, h, key);
    int rc = d ? STORE_OK : STORE_NOMEM;
    uint32_t i = d ? position(d, e->seq) : 0;
    if (d && !(i < d->count && at(d, i)->seq == e->seq)) { /* not had already */
        if ((*added = add(ix, d, e))) { /* at the end, then moved down into its place */
            for (uint32_t k = d->count - 1; k > i; k--)
                *at(d, k) = *at(d, k - 1);
            *at(d, i) = *e;
            if (e->seq >= d->next_seq) /* its segment was the only one with its seq */
                d->next_seq = e->seq + 1;
        } else {
            rc = STORE_NOMEM;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int inbox_index_seq_floor(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], uint64_t next,
                          uint32_t record_segment)
{
    uint64_t h = key_hash(key);
    inbox_stripe *st = stripe_of(ix, h);
    pthread_mutex_lock(&st->lock);
    inbox_device *d = find_or_add(st, h, key);
    if (d && d->next_seq <= next) {
        d->next_seq = next;
        d->seq_segment = record_segment;
    }
    pthread_mutex_unlock(&st->lock);
    return d ? STORE_OK : STORE_NOMEM;
}

void inbox_index_floors(inbox_index *ix, uint32_t up_to, uint32_t now, inbox_floor_fn fn, void *ctx)
{
    for (int i = 0; i < INBOX_STRIPES; i++) {
        inbox_stripe *st = &ix->stripes[i];
        pthread_mutex_lock(&st->lock);
        for (size_t k = 0; k < st->cap; k++) {
            inbox_device *d = st->slots[k];
            if (d && d->seq_segment <= up_to) {
                fn(ctx, d->key, d->next_seq);
                d->seq_segment = now;
            }
        }
        pthread_mutex_unlock(&st->lock);
    }
}

void inbox_index_take(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], uint64_t up_to, inbox_entry_fn fn,
                      void *ctx, size_t *removed)
{
    uint64_t h = key_hash(key);
    inbox_stripe *st = stripe_of(ix, h);
    size_t n = 0;
    pthread_mutex_lock(&st->lock);
    inbox_device *d = find(st, h, key);
    while (d && d->count && at(d, 0)->seq <= up_to) {
        inbox_entry e = *at(d, 0);
        d->head = (d->head + 1) & (d->cap - 1);
        d->count--;
        d->bytes -= e.len;
        ix->envelopes--;
        ix->bytes -= e.len;
        n++;
        if (fn)
            fn(ctx, key, &e);
    }
    if (d && d->count == 0 && d->cap > FIRST_RING) { /* a drained inbox gives its ring back */
        free(d->ring);
        d->ring = NULL;
        d->cap = d->head = 0;
    }
    pthread_mutex_unlock(&st->lock);
    if (removed)
        *removed = n;
}

void inbox_index_usage(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], uint64_t *envelopes, uint64_t *bytes,
                       uint64_t *next_seq)
{
    uint64_t h = key_hash(key);
    inbox_stripe *st = stripe_of(ix, h);
    pthread_mutex_lock(&st->lock);
    inbox_device *d = find(st, h, key);
    *envelopes = d ? d->count : 0;
    *bytes = d ? d->bytes : 0;
    if (next_seq)
        *next_seq = d ? d->next_seq : 1;
    pthread_mutex_unlock(&st->lock);
}

size_t inbox_index_expired(inbox_index *ix, uint64_t cutoff_ms, size_t max, inbox_expired_fn fn, void *ctx)
{
    size_t found = 0;
    for (int i = 0; i < INBOX_STRIPES && found < max; i++) {
        inbox_stripe *st = &ix->stripes[i];
        pthread_mutex_lock(&st->lock);
        for (size_t k = 0; k < st->cap && found < max; k++) {
            inbox_device *d = st->slots[k];
            if (!d || !d->count || at(d, 0)->stored_ms >= cutoff_ms)
                continue;
            uint32_t lo = 0, hi = d->count; /* the first entry stored at or after cutoff */
            while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (at(d, mid)->stored_ms < cutoff_ms)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            uint8_t key[INBOX_DEVICE_KEY];
            memcpy(key, d->key, INBOX_DEVICE_KEY);
            uint64_t up_to = at(d, lo - 1)->seq;
            pthread_mutex_unlock(&st->lock); /* fn may take it */
            fn(ctx, key, up_to);
            found++;
            pthread_mutex_lock(&st->lock);
        }
        pthread_mutex_unlock(&st->lock);
    }
    return found;
}

void inbox_index_visit(inbox_index *ix, inbox_visit_fn fn, void *ctx)
{
    for (int i = 0; i < INBOX_STRIPES; i++) {
        inbox_stripe *st = &ix->stripes[i];
        pthread_mutex_lock(&st->lock);
        for (size_t k = 0; k < st->cap; k++) {
            inbox_device *d = st->slots[k];
            for (uint32_t n = 0; d && n < d->count; n++)
                fn(ctx, d, at(d, n));
        }
        pthread_mutex_unlock(&st->lock);
    }
}

size_t inbox_index_read(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], uint64_t after, uint64_t durable,
                        inbox_entry *out, size_t max)
{
    uint64_t h = key_hash(key);
    inbox_stripe *st = stripe_of(ix, h);
    size_t n = 0;
    pthread_mutex_lock(&st->lock);
    inbox_device *d = find(st, h, key);
    if (d && d->count && after < UINT64_MAX) {
        for (uint32_t i = position(d, after + 1); i < d->count && n < max; i++) {
            const inbox_entry *e = at(d, i);
            if (inbox_entry_place(e) >= durable)
                break; /* not durable yet, nor anything after it */
            out[n++] = *e;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return n;
}
