/* service.h - how a service plugs into the core: a row per frame type it serves (the
 * dispatch table) and hooks for the server's and the connection's life. The core calls
 * the hooks of every service in the order of the list main gives it; a service owns its
 * own state (in its own file), so adding one adds no field to the core.
 *
 * Dispatch: a frame from a client finds its row by body type; the core answers
 * NOT_AUTHENTICATED for a row that needs authentication on a connection without it, then
 * takes a token of the row's rate class for the device (RATE_LIMITED, and also when the
 * connection has too many requests waiting for the store), then calls the handler. A
 * body no row names gets UNKNOWN_FRAME; two rows for one body are refused at start. */
#ifndef PARLEY_SERVICE_H
#define PARLEY_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "parley.pb-c.h"
#include "server.h"
#include "session.h"

typedef void (*frame_handler)(session *s, uint64_t request_id, const Parley__Frame *f);

typedef struct {
    Parley__Frame__BodyCase body;
    bool needs_auth;
    uint8_t rate;                 /* RATE_NONE or a rate class */
    frame_handler handler;
} frame_route;

struct service {
    const char *name;
    const frame_route *routes;    /* terminated by a row with handler NULL; may be NULL */
    /* All optional. start runs before the threads exist (0, or an error that stops the
     * server); stop after they ended. */
    int (*start)(server *srv);
    void (*stop)(server *srv);
    /* On each I/O thread's loop: at its start, and when it stops reading (phase 1). */
    int (*thread_start)(io_thread *t);
    void (*thread_stop)(io_thread *t);
    /* A connection authenticated; it goes away (still usable for the last time). */
    void (*authenticated)(session *s);
    void (*closed)(session *s);
    /* Its write queue emptied; its device's inbox grew (a bus wake). */
    void (*writable)(session *s);
    void (*inbox_grew)(session *s);
};

/* The table built from the services' rows, one slot per body type. */
#define DISPATCH_SLOTS 64

typedef struct dispatch_table {
    const frame_route *rows[DISPATCH_SLOTS];
} dispatch_table;

/* Fills t from the services' rows; -1 (and a message on stderr) for a body out of
 * range or served twice. */
int dispatch_build(dispatch_table *t, const service *const *services);

/* The row for a body, or NULL. */
const frame_route *dispatch_find(const dispatch_table *t, Parley__Frame__BodyCase body);

/* Runs a decoded frame through the table on s: auth, rate class, handler. */
void dispatch_frame(const dispatch_table *t, session *s, const Parley__Frame *f);

/* For the rate classes: the reason words and table sizes. */
const char *rate_class_what(int rate);

#endif
