/* routes.h - which connection receives a device's deliveries, across I/O threads.
 *
 * One table (device -> its receiving connections, newest first in effect) behind a
 * mutex, and a mailbox per I/O thread. Peers are only ever touched on their own
 * thread: other threads post "wake" (the inbox grew) or "kick" (a newer receiving
 * connection exists) to the owner's mailbox, and the owner looks the peer up again. */
#ifndef PARLEY_SERVER_ROUTES_H
#define PARLEY_SERVER_ROUTES_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "store.h"

typedef struct peer peer;
typedef struct server server;

typedef struct routes {
    pthread_mutex_t lock;
    peer **buckets;
    size_t nbuckets;     /* a power of two */
    size_t count;
    uint64_t last_id;
} routes;

typedef struct {
    uint8_t kind;        /* ROUTE_WAKE or ROUTE_KICK */
    store_device device;
    uint64_t route_id;   /* kick: connections older than this one go */
} route_mail;

enum { ROUTE_WAKE = 1, ROUTE_KICK = 2 };

/* A thread's mailbox, drained on its loop. */
typedef struct {
    uv_async_t async;
    pthread_mutex_t lock;
    route_mail *items;
    size_t n, cap;
    bool closed;         /* shutting down: mail is dropped (the inboxes keep everything) */
} route_mailbox;

int routes_init(routes *r);
void routes_destroy(routes *r);

/* A new route id, taken when a connection authenticates: the newest wins. */
uint64_t routes_next_id(server *srv);

/* On p's thread, once p authenticated as a receiving connection: p becomes the one
 * its device's deliveries go to, and older receiving connections of the device are
 * told to close. Returns false (p not added) if a newer one is already there. */
bool routes_add(server *srv, peer *p);

/* From any thread: every receiving connection of d closes (the device was replaced). */
void routes_kick(server *srv, const store_device *d);

/* On p's thread, before p goes away. */
void routes_remove(server *srv, peer *p);

/* From any thread, after a commit that appended to d's inbox. */
void routes_wake(server *srv, const store_device *d);

int route_mailbox_init(route_mailbox *m, uv_loop_t *loop);
void route_mailbox_close(route_mailbox *m);

#endif
