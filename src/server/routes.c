/* routes.c - the device routing table and the per-thread mailboxes (see routes.h). */
#include "routes.h"

#include <stdlib.h>
#include <string.h>

#include "peer.h"

#define INITIAL_BUCKETS 1024

static size_t bucket_of(const routes *r, const store_device *d)
{
    uint64_t h; /* account ids are random: their first bytes hash well already */
    memcpy(&h, d->account, sizeof h);
    h ^= (uint64_t)d->device * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h ^ h >> 29) & (r->nbuckets - 1);
}

static bool same_device(const store_device *a, const store_device *b)
{
    return a->device == b->device && memcmp(a->account, b->account, STORE_ACCOUNT_ID_LEN) == 0;
}

int routes_init(routes *r)
{
    memset(r, 0, sizeof *r);
    r->nbuckets = INITIAL_BUCKETS;
    r->buckets = calloc(r->nbuckets, sizeof *r->buckets);
    if (!r->buckets)
        return -1;
    pthread_mutex_init(&r->lock, NULL);
    return 0;
}

void routes_destroy(routes *r)
{
    free(r->buckets);
    r->buckets = NULL;
    pthread_mutex_destroy(&r->lock);
}

/* Doubles the table when it is as full as it is long; a failed malloc keeps chains longer. */
static void grow(routes *r)
{
    size_t n = r->nbuckets * 2;
    peer **b = calloc(n, sizeof *b);
    if (!b)
        return;
    peer **old = r->buckets;
    size_t nold = r->nbuckets;
    r->buckets = b;
    r->nbuckets = n;
    for (size_t i = 0; i < nold; i++)
        for (peer *p = old[i], *next; p; p = next) {
            next = p->route_next;
            size_t k = bucket_of(r, &p->device);
            p->route_next = b[k];
            b[k] = p;
        }
    free(old);
}

static void post(io_thread *t, const route_mail *mail)
{
    route_mailbox *m = &t->mail;
    pthread_mutex_lock(&m->lock);
    if (m->closed) {
        pthread_mutex_unlock(&m->lock);
        return;
    }
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        route_mail *items = realloc(m->items, cap * sizeof *items);
        if (!items) { /* a lost wake only delays delivery to the next ack or reconnect */
            pthread_mutex_unlock(&m->lock);
            return;
        }
        m->items = items;
        m->cap = cap;
    }
    m->items[m->n++] = *mail;
    uv_async_send(&m->async); /* under the lock, so the handle cannot be closed meanwhile */
    pthread_mutex_unlock(&m->lock);
}

uint64_t routes_next_id(server *srv)
{
    return __atomic_add_fetch(&srv->routes.last_id, 1, __ATOMIC_RELAXED);
}

/* Posts a kick for every thread holding a receiving connection of d older than
 * route_id; tells whether one at least as new exists. Called with the lock held. */
static size_t threads_to_kick(routes *r, const store_device *d, uint64_t route_id, io_thread **threads,
                              size_t max, bool *newer_exists)
{
    size_t n = 0;
    *newer_exists = false;
    for (peer *q = r->buckets[bucket_of(r, d)]; q; q = q->route_next) {
        if (!same_device(&q->device, d))
            continue;
        if (q->route_id > route_id) {
            *newer_exists = true;
            continue;
        }
        io_thread *t = thread_of(q->conn);
        bool listed = false;
        for (size_t i = 0; i < n; i++)
            listed |= threads[i] == t;
        if (!listed && n < max)
            threads[n++] = t;
    }
    return n;
}

bool routes_add(server *srv, peer *p)
{
    routes *r = &srv->routes;
    io_thread *kick_threads[256];
    bool newer;
    pthread_mutex_lock(&r->lock);
    size_t nkick = threads_to_kick(r, &p->device, p->route_id, kick_threads, 256, &newer);
    if (!newer) {
        size_t k = bucket_of(r, &p->device);
        p->route_next = r->buckets[k];
        r->buckets[k] = p;
        p->routed = true;
        if (++r->count > r->nbuckets)
            grow(r);
    }
    pthread_mutex_unlock(&r->lock);
    route_mail kick = {ROUTE_KICK, p->device, p->route_id};
    for (size_t i = 0; i < nkick; i++)
        post(kick_threads[i], &kick);
    return !newer;
}

void routes_kick(server *srv, const store_device *d)
{
    routes *r = &srv->routes;
    io_thread *kick_threads[256];
    bool newer;
    pthread_mutex_lock(&r->lock);
    size_t nkick = threads_to_kick(r, d, UINT64_MAX, kick_threads, 256, &newer);
    pthread_mutex_unlock(&r->lock);
    route_mail kick = {ROUTE_KICK, *d, UINT64_MAX};
    for (size_t i = 0; i < nkick; i++)
        post(kick_threads[i], &kick);
}

static void unlink_locked(routes *r, peer *p)
{
    for (peer **link = &r->buckets[bucket_of(r, &p->device)]; *link; link = &(*link)->route_next)
        if (*link == p) {
            *link = p->route_next;
            r->count--;
            break;
        }
    p->routed = false;
    p->route_next = NULL;
}

void routes_remove(server *srv, peer *p)
{
    if (!p->routed)
        return;
    pthread_mutex_lock(&srv->routes.lock);
    unlink_locked(&srv->routes, p);
    pthread_mutex_unlock(&srv->routes.lock);
}

void routes_wake(server *srv, const store_device *d)
{
    routes *r = &srv->routes;
    io_thread *t = NULL;
    pthread_mutex_lock(&r->lock);
    uint64_t newest = 0;
    for (peer *q = r->buckets[bucket_of(r, d)]; q; q = q->route_next)
        if (same_device(&q->device, d) && q->route_id > newest) {
            newest = q->route_id;
            t = thread_of(q->conn);
        }
    pthread_mutex_unlock(&r->lock);
    if (t) {
        route_mail wake = {ROUTE_WAKE, *d, 0};
        post(t, &wake);
    }
}

/* On the owner's thread: the peers a mail is about are looked up again here, so a
 * peer that closed meanwhile is simply not found. */
static void handle(io_thread *t, const route_mail *mail)
{
    routes *r = &t->srv->routes;
    peer *wake = NULL, *kicked[64];
    size_t nkicked = 0;
    pthread_mutex_lock(&r->lock);
    for (peer **link = &r->buckets[bucket_of(r, &mail->device)]; *link;) {
        peer *q = *link;
        if (!same_device(&q->device, &mail->device) || thread_of(q->conn) != t) {
            link = &q->route_next;
        } else if (mail->kind == ROUTE_KICK && q->route_id < mail->route_id && nkicked < sizeof kicked / sizeof *kicked) {
            unlink_locked(r, q); /* no more deliveries for it */
            kicked[nkicked++] = q;
        } else {
            if (mail->kind == ROUTE_WAKE && (!wake || q->route_id > wake->route_id))
                wake = q;
            link = &q->route_next;
        }
    }
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < nkicked; i++)
        ws_conn_close(kicked[i]->conn, PARLEY_CLOSE_REPLACED,
                      mail->route_id == UINT64_MAX ? "this device was replaced by a new registration"
                                                   : "replaced by a newer connection");
    if (wake)
        messaging_pump(wake);
}

static void drain(uv_async_t *a)
{
    io_thread *t = a->loop->data;
    route_mailbox *m = &t->mail;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        route_mail *items = m->items;
        size_t n = m->n;
        m->items = NULL;
        m->n = m->cap = 0;
        pthread_mutex_unlock(&m->lock);
        if (!n) {
            free(items);
            return;
        }
        for (size_t i = 0; i < n; i++)
            handle(t, &items[i]);
        free(items);
    }
}

int route_mailbox_init(route_mailbox *m, uv_loop_t *loop)
{
    m->items = NULL;
    m->n = m->cap = 0;
    m->closed = false;
    pthread_mutex_init(&m->lock, NULL);
    return uv_async_init(loop, &m->async, drain);
}

void route_mailbox_close(route_mailbox *m)
{
    pthread_mutex_lock(&m->lock);
    m->closed = true;
    free(m->items);
    m->items = NULL;
    m->n = m->cap = 0;
    pthread_mutex_unlock(&m->lock);
    uv_close((uv_handle_t *)&m->async, NULL);
}
