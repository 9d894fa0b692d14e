/* bus.h - what connects a device's connection to the rest of the server (and, later,
 * the cluster): which connection receives a device's deliveries, wake-ups after its
 * inbox grew, kicks for connections that must go, and ephemeral frames (typing,
 * presence) that are never stored. The inbox is the truth; the bus only nudges, so a
 * lost nudge costs latency (the next ack, reconnect or wake catches up), never data.
 *
 * Claims. A receiving connection claims its device with an order taken when it
 * authenticated; the newest claim wins: an older claim of the device anywhere is kicked
 * ("replaced by a newer connection"), and a claim older than one already held is
 * refused. Orders are wall-clock milliseconds, then a per-node counter, then the node
 * id (bus_order_next), so claims made on different nodes compare too.
 *   JetStream: a claim subscribes live.<k>.<device> and publishes displace(order) there;
 *   a node holding an older claim of the device kicks it (CLUSTER-NOTES.md 6.3).
 *
 * Threads. A claim lives on one I/O thread and the bus calls its owner back only on that
 * thread (through the thread's mailbox), so the owner's state is never shared. Every
 * other function may be called from any thread. */
#ifndef PARLEY_BUS_H
#define PARLEY_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "store.h"

typedef struct bus bus;
typedef struct bus_claim bus_claim;

/* Lives inside the owner's per-connection state (no allocation per connection). */
struct bus_claim {
    bus_claim *next;      /* the local backend's table chain */
    uint64_t order;
    bool held;            /* in the table */
};

#define BUS_KICK_ALL UINT64_MAX /* kick order: every claim of the device (it was replaced) */

/* The owner of claims: the bus reads a claim's device and thread through these, and
 * calls back on the claim's thread. */
typedef struct {
    const store_device *(*device_of)(const bus_claim *c);
    int (*thread_of)(const bus_claim *c);
    /* The device's inbox grew. */
    void (*wake)(bus_claim *c);
    /* The claim lost its device (already out of the table): close its connection.
     * replaced: the device itself was replaced by a new registration. */
    void (*kicked)(bus_claim *c, bool replaced);
    /* An ephemeral frame for the device (valid only during the call). */
    void (*ephemeral)(bus_claim *c, const uint8_t *frame, size_t len);
} bus_owner;

/* The local backend: one process, nthreads I/O threads, node is this node's id (0-255). */
int bus_open_local(bus **out, const bus_owner *owner, int nthreads, uint8_t node);
void bus_close(bus *b);

/* On I/O thread index's loop, before it runs: its mailbox. */
int bus_thread_open(bus *b, int index, uv_loop_t *loop);
/* On that loop while shutting down: mail is dropped from now on. */
void bus_thread_close(bus *b, int index);

/* A fresh claim order: later than any this node handed out before. */
uint64_t bus_order_next(bus *b);

/* On c's thread: c (with c->order set) claims its device. Older claims are kicked;
 * false (c not held) if a newer claim holds the device. */
bool bus_claim_device(bus *b, bus_claim *c);

/* On c's thread, before c goes away. */
void bus_release(bus *b, bus_claim *c);

/* Every claim of d older than order is kicked. BUS_KICK_ALL (the device was registered
 * again): every claim, and claims made later with an order from before this call are
 * refused too. */
void bus_kick(bus *b, const store_device *d, uint64_t order);

/* After a commit that appended to d's inbox: the newest claim of d is woken. */
void bus_wake(bus *b, const store_device *d);

/* An ephemeral frame for d's newest claim, if d has one (dropped otherwise). */
void bus_publish(bus *b, const store_device *d, const uint8_t *frame, size_t len);

#endif
