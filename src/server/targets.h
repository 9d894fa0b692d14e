/* targets.h - envelopes bound for device inboxes: packed on an I/O thread (or in a
 * writer job), appended by the writer inside the job's batch, and after the commit
 * the devices' receiving connections are woken. Shared by messaging.c and keys.c. */
#ifndef PARLEY_SERVER_TARGETS_H
#define PARLEY_SERVER_TARGETS_H

#include <stdbool.h>
#include <stddef.h>

#include "parley.pb-c.h"
#include "server.h"

typedef struct {
    store_device device;
    size_t offset, len;           /* of its packed envelope in the list's buffer */
    bool check_registration;      /* the sender named the registration id it encrypted for */
    uint32_t registration_id;
} target;

typedef struct {
    size_t n, cap;
    target *items;
    uint8_t *buf;
    size_t used, buf_cap;
} target_list;

/* Grows *buf (a doubling from first bytes on) until it holds need bytes. */
bool buf_grow(void *buf, size_t *cap, size_t need, size_t first);

void targets_free(target_list *l);

/* Packs e for device d at the end of the list; the new item is l->items[l->n - 1]. */
int targets_add(target_list *l, const store_device *d, const Parley__Envelope *e);

/* Appends every envelope of the list to its device's inbox. */
int targets_append(store_batch *b, const target_list *l, uint64_t now);

/* After the commit: wakes each device's receiving connection. */
void targets_wake(server *srv, const target_list *l);

/* Adds one envelope for every device of account except skip (if it is one of them).
 * JOB_UNKNOWN_ACCOUNT (peer.h) if the account has no device. */
int targets_add_account(store_batch *b, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                        const store_device *skip, const Parley__Envelope *e, target_list *l);

#endif
