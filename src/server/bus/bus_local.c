/* bus_local.c - the bus in one process (bus.h): one table (device -> its claims) behind
 * a mutex, and a mailbox per I/O thread. Claims are only ever touched by their owner on
 * their own thread: other threads post "wake", "kick" or "ephemeral" to the owner's
 * mailbox, and the owner's thread looks the claims up again, so a claim released
 * meanwhile is simply not found. */
#include "bus.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

#define INITIAL_BUCKETS 1024
#define MAX_THREADS 256
#define TOMBSTONES 4096 /* devices replaced recently, by a hash: a collision forgets the older */

enum { MAIL_WAKE = 1, MAIL_KICK, MAIL_EPHEMERAL };

typedef struct {
    uint8_t kind;
    store_device device;
    uint64_t order;       /* kick: claims older than this go */
    uint8_t *frame;       /* ephemeral: a copy, freed once handled */
    size_t len;
} mail;

typedef struct {
    bus *b;
    uv_async_t async;
    pthread_mutex_t lock;
    mail *items;
    size_t n, cap;
    bool open;            /* closed while shutting down: mail is dropped (the inboxes keep everything) */
} mailbox;

struct bus {
    const bus_owner *owner;
    uint8_t node;
    pthread_mutex_t lock; /* the table */
    bus_claim **buckets;
    size_t nbuckets;      /* a power of two */
    size_t count;
    uint64_t last_order;
    int nthreads;
    mailbox *boxes;
    /* Devices kicked whole (registered again), with the order of the kick: a claim older
     * than that is refused even if it comes after the kick (a connection that
     * authenticated with the old key just before the registration). */
    struct {
        store_device device;
        uint64_t order;
    } replaced[TOMBSTONES];
};

static uint64_t device_hash(const store_device *d)
{
    uint64_t h; /* account ids are random: their first bytes hash well already */
    memcpy(&h, d->account, sizeof h);
    h ^= (uint64_t)d->device * 0x9E3779B97F4A7C15ULL;
    return h ^ h >> 29;
}

static size_t bucket_of(const bus *b, const store_device *d)
{
    return (size_t)device_hash(d) & (b->nbuckets - 1);
}

static size_t tombstone_of(const store_device *d)
{
    return (size_t)device_hash(d) & (TOMBSTONES - 1);
}

static bool same_device(const store_device *a, const store_device *b)
{
    return a->device == b->device && memcmp(a->account, b->account, STORE_ACCOUNT_ID_LEN) == 0;
}

static const store_device *device_of(const bus *b, const bus_claim *c)
{
    return b->owner->device_of(c);
}

int bus_open_local(bus **out, const bus_owner *owner, int nthreads, uint8_t node)
{
    *out = NULL;
    if (nthreads < 1 || nthreads > MAX_THREADS)
        return -1;
    bus *b = calloc(1, sizeof *b);
    if (!b)
        return -1;
    b->owner = owner;
    b->node = node;
    b->nbuckets = INITIAL_BUCKETS;
    b->buckets = calloc(b->nbuckets, sizeof *b->buckets);
    b->boxes = calloc((size_t)nthreads, sizeof *b->boxes);
    if (!b->buckets || !b->boxes) {
        free(b->buckets);
        free(b->boxes);
        free(b);
        return -1;
    }
    b->nthreads = nthreads;
    pthread_mutex_init(&b->lock, NULL);
    *out = b;
    return 0;
}

void bus_close(bus *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->lock);
    free(b->buckets);
    free(b->boxes);
    free(b);
}

uint64_t bus_order_next(bus *b)
{
    /* ms (44 bits) | counter (12) | node (8): time orders claims across nodes, the
     * counter within one millisecond on a node (spilling into the ms bits if it must),
     * and the node id breaks ties */
    uint64_t fresh = clock_wall_ms() << 20;
    uint64_t last = __atomic_load_n(&b->last_order, __ATOMIC_RELAXED), next;
    do {
        uint64_t after = (last & ~(uint64_t)0xFF) + 0x100;
        next = (fresh > after ? fresh : after) | b->node;
    } while (!__atomic_compare_exchange_n(&b->last_order, &last, next, false, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    return next;
}

/* Doubles the table when it is as full as it is long; a failed malloc keeps chains longer. */
static void grow(bus *b)
{
    size_t n = b->nbuckets * 2;
    bus_claim **nb = calloc(n, sizeof *nb);
    if (!nb)
        return;
    bus_claim **old = b->buckets;
    size_t nold = b->nbuckets;
    b->buckets = nb;
    b->nbuckets = n;
    for (size_t i = 0; i < nold; i++)
        for (bus_claim *c = old[i], *next; c; c = next) {
            next = c->next;
            size_t k = bucket_of(b, device_of(b, c));
            c->next = nb[k];
            nb[k] = c;
        }
    free(old);
}

static void post(bus *b, int thread, const mail *m)
{
    mailbox *box = &b->boxes[thread];
    pthread_mutex_lock(&box->lock);
    if (!box->open) {
        pthread_mutex_unlock(&box->lock);
        free(m->frame);
        return;
    }
    if (box->n == box->cap) {
        size_t cap = box->cap ? box->cap * 2 : 64;
        mail *items = realloc(box->items, cap * sizeof *items);
        if (!items) { /* a lost nudge only delays delivery to the next ack or reconnect */
            pthread_mutex_unlock(&box->lock);
            free(m->frame);
            return;
        }
        box->items = items;
        box->cap = cap;
    }
    box->items[box->n++] = *m;
    uv_async_send(&box->async); /* under the lock, so the handle cannot be closed meanwhile */
    pthread_mutex_unlock(&box->lock);
}

/* The threads holding a claim of d older than order; tells whether one at least as new
 * exists. Called with the lock held. */
static size_t threads_to_kick(bus *b, const store_device *d, uint64_t order, int *threads, bool *newer_exists)
{
    size_t n = 0;
    *newer_exists = false;
    for (bus_claim *q = b->buckets[bucket_of(b, d)]; q; q = q->next) {
        if (!same_device(device_of(b, q), d))
            continue;
        if (q->order > order) {
            *newer_exists = true;
            continue;
        }
        int t = b->owner->thread_of(q);
        bool listed = false;
        for (size_t i = 0; i < n; i++)
            listed |= threads[i] == t;
        if (!listed)
            threads[n++] = t;
    }
    return n;
}

bool bus_claim_device(bus *b, bus_claim *c)
{
    int threads[MAX_THREADS];
    bool newer;
    const store_device *d = device_of(b, c);
    pthread_mutex_lock(&b->lock);
    size_t nkick = threads_to_kick(b, d, c->order, threads, &newer);
    size_t t = tombstone_of(d);
    if (b->replaced[t].order > c->order && same_device(&b->replaced[t].device, d)) {
        newer = true; /* the device was replaced after this claim's connection authenticated */
        nkick = 0;
    }
    if (!newer) {
        size_t k = bucket_of(b, d);
        c->next = b->buckets[k];
        b->buckets[k] = c;
        c->held = true;
        if (++b->count > b->nbuckets)
            grow(b);
    }
    pthread_mutex_unlock(&b->lock);
    mail kick = {.kind = MAIL_KICK, .device = *d, .order = c->order};
    for (size_t i = 0; i < nkick; i++)
        post(b, threads[i], &kick);
    return !newer;
}

void bus_kick(bus *b, const store_device *d, uint64_t order)
{
    int threads[MAX_THREADS];
    bool newer;
    uint64_t now = order == BUS_KICK_ALL ? bus_order_next(b) : 0;
    pthread_mutex_lock(&b->lock);
    if (order == BUS_KICK_ALL) {
        size_t t = tombstone_of(d);
        b->replaced[t].device = *d;
        b->replaced[t].order = now;
    }
    size_t nkick = threads_to_kick(b, d, order, threads, &newer);
    pthread_mutex_unlock(&b->lock);
    mail kick = {.kind = MAIL_KICK, .device = *d, .order = order};
    for (size_t i = 0; i < nkick; i++)
        post(b, threads[i], &kick);
}

static void unlink_locked(bus *b, bus_claim *c)
{
    for (bus_claim **link = &b->buckets[bucket_of(b, device_of(b, c))]; *link; link = &(*link)->next)
        if (*link == c) {
            *link = c->next;
            b->count--;
            break;
        }
    c->held = false;
    c->next = NULL;
}

void bus_release(bus *b, bus_claim *c)
{
    if (!c->held)
        return;
    pthread_mutex_lock(&b->lock);
    unlink_locked(b, c);
    pthread_mutex_unlock(&b->lock);
}

/* The thread of d's newest claim, or -1. */
static int newest_thread(bus *b, const store_device *d)
{
    int t = -1;
    uint64_t newest = 0;
    pthread_mutex_lock(&b->lock);
    for (bus_claim *q = b->buckets[bucket_of(b, d)]; q; q = q->next)
        if (same_device(device_of(b, q), d) && q->order >= newest) {
            newest = q->order;
            t = b->owner->thread_of(q);
        }
    pthread_mutex_unlock(&b->lock);
    return t;
}

void bus_wake(bus *b, const store_device *d)
{
    int t = newest_thread(b, d);
    if (t >= 0) {
        mail wake = {.kind = MAIL_WAKE, .device = *d};
        post(b, t, &wake);
    }
}

void bus_publish(bus *b, const store_device *d, const uint8_t *frame, size_t len)
{
    int t = newest_thread(b, d);
    if (t < 0)
        return;
    mail m = {.kind = MAIL_EPHEMERAL, .device = *d, .frame = malloc(len ? len : 1), .len = len};
    if (!m.frame)
        return; /* ephemeral: dropping it is allowed */
    memcpy(m.frame, frame, len);
    post(b, t, &m);
}

/* On the owner's thread: the claims a mail is about are looked up again here. */
static void handle(bus *b, int thread, const mail *m)
{
    bus_claim *newest = NULL, *kicked[64];
    size_t nkicked = 0;
    pthread_mutex_lock(&b->lock);
    for (bus_claim **link = &b->buckets[bucket_of(b, &m->device)]; *link;) {
        bus_claim *q = *link;
        if (!same_device(device_of(b, q), &m->device) || b->owner->thread_of(q) != thread) {
            link = &q->next;
        } else if (m->kind == MAIL_KICK && q->order < m->order && nkicked < sizeof kicked / sizeof *kicked) {
            unlink_locked(b, q); /* no more deliveries for it */
            kicked[nkicked++] = q;
        } else {
            if (!newest || q->order > newest->order)
                newest = q;
            link = &q->next;
        }
    }
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < nkicked; i++)
        b->owner->kicked(kicked[i], m->order == BUS_KICK_ALL);
    if (newest && m->kind == MAIL_WAKE)
        b->owner->wake(newest);
    else if (newest && m->kind == MAIL_EPHEMERAL)
        b->owner->ephemeral(newest, m->frame, m->len);
}

static void drain(uv_async_t *a)
{
    mailbox *box = a->data;
    int thread = (int)(box - box->b->boxes);
    for (;;) {
        pthread_mutex_lock(&box->lock);
        mail *items = box->items;
        size_t n = box->n;
        box->items = NULL;
        box->n = box->cap = 0;
        pthread_mutex_unlock(&box->lock);
        if (!n) {
            free(items);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            handle(box->b, thread, &items[i]);
            free(items[i].frame);
        }
        free(items);
    }
}

int bus_thread_open(bus *b, int index, uv_loop_t *loop)
{
    mailbox *box = &b->boxes[index];
    box->b = b;
    box->items = NULL;
    box->n = box->cap = 0;
    pthread_mutex_init(&box->lock, NULL);
    box->async.data = box;
    int rc = uv_async_init(loop, &box->async, drain);
    box->open = rc == 0;
    return rc;
}

void bus_thread_close(bus *b, int index)
{
    mailbox *box = &b->boxes[index];
    pthread_mutex_lock(&box->lock);
    bool was_open = box->open;
    box->open = false;
    for (size_t i = 0; i < box->n; i++)
        free(box->items[i].frame);
    free(box->items);
    box->items = NULL;
    box->n = box->cap = 0;
    pthread_mutex_unlock(&box->lock);
    if (was_open)
        uv_close((uv_handle_t *)&box->async, NULL);
}
