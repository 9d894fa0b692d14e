/* dedup_recent.h - the sends accepted since the last checkpoint, by (sender device,
 * message id): the embedded backend's de-duplication keeps them in memory (and in the
 * inbox log's NOTE records, for a restart) until a checkpoint writes them to the data
 * file's dedup table in one transaction (docs/storage.md). One thread's (the writer's). */
#ifndef PARLEY_STORE_LMDB_DEDUP_RECENT_H
#define PARLEY_STORE_LMDB_DEDUP_RECENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define DEDUP_KEY_LEN 36             /* sender device (20) then message id (16) */

typedef struct {
    uint8_t key[DEDUP_KEY_LEN];
    uint64_t accepted_ms;            /* 0: a free slot */
} dedup_slot;

typedef struct {
    dedup_slot *slots;
    size_t cap, used;
} dedup_recent;

void dedup_recent_key(uint8_t out[DEDUP_KEY_LEN], const store_device *sender, const uint8_t id[STORE_MESSAGE_ID_LEN]);

/* A group's last seq rides in the same tables, NOTEs and checkpoints as the sends: its
 * key is the group id, device 0 (which no device has) and an all-zero message id; its
 * value is the seq. The checkpoint writes it to the group_seqs table (ldb.h). */
void dedup_recent_group_key(uint8_t out[DEDUP_KEY_LEN], const uint8_t group[STORE_GROUP_ID_LEN]);
bool dedup_recent_is_group(const uint8_t key[DEDUP_KEY_LEN]);

/* The first acceptance's time, or false. */
bool dedup_recent_get(const dedup_recent *t, const uint8_t key[DEDUP_KEY_LEN], uint64_t *accepted_ms);
/* STORE_NOMEM (never after dedup_recent_reserve made room). accepted_ms must not be 0. */
int dedup_recent_put(dedup_recent *t, const uint8_t key[DEDUP_KEY_LEN], uint64_t accepted_ms);

/* Room for n more entries, so that the puts that follow cannot fail. */
int dedup_recent_reserve(dedup_recent *t, size_t n);

/* Puts every entry of from into t (room reserved first), then clears from. */
int dedup_recent_merge(dedup_recent *t, dedup_recent *from);

void dedup_recent_clear(dedup_recent *t);    /* keeps the table's room */
void dedup_recent_free(dedup_recent *t);

#endif
