/* inbox_index.h - the inbox log's index, in memory: for each device, where its
 * envelopes lie in the log (in seq order), its next seq, and what its inbox holds (the
 * quota's counts). Rebuilt from the log when the store opens (inbox_log.h).
 *
 * Threads: one writer (the storage writer thread) changes it; readers (the I/O threads)
 * copy entries out. Devices are spread over stripes, each with its own lock and hash
 * table: a change or a read holds one stripe's lock for one device, never across I/O.
 *
 * Visibility: an entry's place in the log (segment, offset) only grows with the time it
 * was written; readers name the end of what is durable and see only entries before it,
 * so an envelope is never delivered before the commit that acknowledged it. */
#ifndef PARLEY_STORE_INBOX_INDEX_H
#define PARLEY_STORE_INBOX_INDEX_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define INBOX_STRIPES 64
#define INBOX_DEVICE_KEY 20      /* account(16) device(4), as the store's keys */

typedef struct {
    uint64_t seq;
    uint64_t stored_ms;
    uint32_t segment;            /* where the envelope's bytes are: segment number, */
    uint32_t offset;             /* and offset of the bytes in it */
    uint32_t len;
    uint32_t spare;
} inbox_entry;

/* An entry's place in the log, as one number that grows with the log. */
static inline uint64_t inbox_entry_place(const inbox_entry *e)
{
    return (uint64_t)e->segment << 32 | e->offset;
}

typedef struct {
    uint8_t key[INBOX_DEVICE_KEY];
    uint32_t seq_segment;        /* the log segment where its next seq was last recorded */
    uint64_t next_seq;
    uint64_t bytes;              /* of the envelopes held */
    inbox_entry *ring;           /* held envelopes, oldest at head */
    uint32_t head, count, cap;   /* cap: a power of two, or 0 */
} inbox_device;

typedef struct {
    pthread_mutex_t lock;
    inbox_device **slots;        /* open addressing; NULL: free */
    size_t cap, used;
} inbox_stripe;

typedef struct {
    inbox_stripe stripes[INBOX_STRIPES];
    uint64_t envelopes, bytes;   /* all devices (the writer's; for stats) */
} inbox_index;

int inbox_index_init(inbox_index *ix);
void inbox_index_free(inbox_index *ix);

void inbox_device_key(uint8_t out[INBOX_DEVICE_KEY], const store_device *d);

/* ---- the writer's ---------------------------------------------------------------- */

/* Appends an entry for d: e->seq is set to the device's next seq. record_segment is
 * the segment of the record that carries it (seq_segment). STORE_NOMEM. */
int inbox_index_append(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], inbox_entry *e, uint32_t record_segment);

/* The same with the seq given (replaying the log): an entry at or below the device's
 * last seq is a copy already seen and ignored; next_seq moves past it. */
int inbox_index_replay(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], const inbox_entry *e,
                       uint32_t record_segment, bool *added);

/* An entry moved forward out of an old segment, read back: inserted in seq order unless
 * d has it already (the old copy's segment was still there), or the device never had
 * that seq. */
int inbox_index_replay_moved(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], const inbox_entry *e, bool *added);

/* Raises a device's next seq to at least next (a FLOOR record in record_segment). */
int inbox_index_seq_floor(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], uint64_t next,
                          uint32_t record_segment);

/* Every device whose next seq was last recorded in segment up_to or before: fn records
 * it again (a FLOOR record in segment now, which becomes its seq_segment). Under the
 * stripes' locks: fn must not call into the index. */
typedef void (*inbox_floor_fn)(void *ctx, const uint8_t key[INBOX_DEVICE_KEY], uint64_t next_seq);
void inbox_index_floors(inbox_index *ix, uint32_t up_to, uint32_t now, inbox_floor_fn fn, void *ctx);

/* Removes d's entries with seq <= up_to, oldest first, showing each to fn (if not NULL)
 * after it left the index; *removed gets how many. */
typedef void (*inbox_entry_fn)(void *ctx, const uint8_t key[INBOX_DEVICE_KEY], const inbox_entry *e);
void inbox_index_take(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], uint64_t up_to, inbox_entry_fn fn,
                      void *ctx, size_t *removed);

/* What d's inbox holds, and its next seq (1 for a device never seen). */
void inbox_index_usage(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], uint64_t *envelopes, uint64_t *bytes,
                       uint64_t *next_seq);

/* Every device with an entry stored before cutoff: the seq up to which its entries are
 * older (they are in seq order, so in time order too), at most max devices per call.
 * fn runs without the stripe's lock and may take entries (not add devices). */
typedef void (*inbox_expired_fn)(void *ctx, const uint8_t key[INBOX_DEVICE_KEY], uint64_t up_to);
size_t inbox_index_expired(inbox_index *ix, uint64_t cutoff_ms, size_t max, inbox_expired_fn fn, void *ctx);

/* Shows every entry of every device (relocation, checks); fn may change the entry's
 * place (segment, offset) but nothing else. */
typedef void (*inbox_visit_fn)(void *ctx, const inbox_device *d, inbox_entry *e);
void inbox_index_visit(inbox_index *ix, inbox_visit_fn fn, void *ctx);

/* ---- readers --------------------------------------------------------------------- */

/* Copies up to max of d's entries with seq > after and a place before durable (the end
 * of what is durable, inbox_entry_place), in order, to out; returns how many. */
size_t inbox_index_read(inbox_index *ix, const uint8_t key[INBOX_DEVICE_KEY], uint64_t after, uint64_t durable,
                        inbox_entry *out, size_t max);

#endif
