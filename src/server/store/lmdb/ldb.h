/* ldb.h - the embedded backend's tables on LMDB: per-device inboxes, send
 * de-duplication, accounts, devices and prekeys in one data file. Only store/lmdb/ uses
 * this (and the tools and tests of the embedded backend); the services see store.h.
 *
 * Writes happen in batches: one batch is one LMDB write transaction, and its commit
 * is one fsync for everything in it (group commit). Nothing in a batch is visible or
 * durable before ldb_batch_commit returns 0. A caller aborts the batch on any error,
 * so a full disk or map refuses the whole batch and never half-writes it.
 * Reads may run from any thread, concurrently with the writer (LMDB MVCC). */
#ifndef PARLEY_STORE_LMDB_LDB_H
#define PARLEY_STORE_LMDB_LDB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

typedef struct ldb ldb;
typedef struct ldb_batch ldb_batch;

/* Opens (creating) the store in dir; map_size bounds the data file (0: 4 GiB). */
int ldb_open(ldb **out, const char *dir, uint64_t map_size);
void ldb_close(ldb *s);

/* Opens an existing store for reading only, e.g. from a tool while parleyd runs (LMDB
 * readers in other processes never block the writer). Writes fail. */
int ldb_open_readonly(ldb **out, const char *dir);

int ldb_get_stats(ldb *s, store_stats *out);

/* Write batches: only one is open at a time (the storage writer thread's). */
int ldb_batch_begin(ldb *s, ldb_batch **out);
int ldb_batch_commit(ldb_batch *b); /* durable when it returns STORE_OK; frees b */
void ldb_batch_abort(ldb_batch *b);

/* A read-only batch: the read functions that take a batch work on it (they see what
 * was committed when it began); end it with ldb_batch_abort. */
int ldb_batch_begin_read(ldb *s, ldb_batch **out);

/* A nested batch inside b: its commit folds its changes into b (no fsync), its abort
 * undoes only them. One job of a group commit fails without spoiling the others. */
int ldb_batch_nest(ldb_batch *b, ldb_batch **child);

/* Appends an opaque envelope to a device's inbox; *seq is its place in the inbox
 * (strictly increasing per device, never reused, also across restarts). */
int ldb_inbox_append(ldb_batch *b, const store_device *d, uint64_t now_ms,
                     const uint8_t *envelope, size_t len, uint64_t *seq);

/* What a device's inbox holds: envelopes and their bytes (kept with every change). */
int ldb_inbox_usage(ldb_batch *b, const store_device *d, uint64_t *envelopes, uint64_t *bytes);

/* Deletes the device's envelopes with seq <= up_to (a cumulative ack). */
int ldb_inbox_ack(ldb_batch *b, const store_device *d, uint64_t up_to, size_t *deleted);

/* The same, showing each envelope to fn (if not NULL) before it goes: the server
 * learns whom to send delivered receipts to. fn's return value is ignored. */
int ldb_inbox_take(ldb_batch *b, const store_device *d, uint64_t up_to,
                   store_envelope_fn fn, void *ctx, size_t *deleted);

/* Drops a device's whole inbox (the device was replaced or removed). */
int ldb_inbox_drop(ldb_batch *b, const store_device *d, size_t *deleted);

/* Send de-duplication by (sender device, client message id): get returns the
 * server timestamp of the first acceptance, or STORE_NOT_FOUND. */
int ldb_dedup_get(ldb_batch *b, const store_device *sender,
                  const uint8_t id[STORE_MESSAGE_ID_LEN], uint64_t *accepted_ms);
int ldb_dedup_put(ldb_batch *b, const store_device *sender,
                  const uint8_t id[STORE_MESSAGE_ID_LEN], uint64_t accepted_ms);

/* Deletes envelopes stored before inbox_cutoff_ms and dedup records older than
 * dedup_cutoff_ms, at most max of each per call (bounded work per batch). */
int ldb_sweep(ldb_batch *b, uint64_t inbox_cutoff_ms, uint64_t dedup_cutoff_ms, size_t max,
              size_t *inbox_removed, size_t *dedup_removed);

/* ---- accounts and devices ---------------------------------------------------- */


/* Registers phone's primary device. A new number gets a new account with the given
 * id; a known number keeps its account id (written to *account) and has all its
 * devices replaced: their keys and LMDB inboxes are dropped, and their ids go to
 * replaced (up to STORE_MAX_DEVICES; *n_replaced of them). */
int ldb_register(ldb_batch *b, const char *phone, const uint8_t new_id[STORE_ACCOUNT_ID_LEN],
                 const store_device_record *primary, uint8_t account[STORE_ACCOUNT_ID_LEN], uint32_t *replaced,
                 size_t *n_replaced);

/* The inboxes as data directories from before the inbox log kept them: every envelope
 * in (device, seq) order to envelope, then every device's next seq to next_seq (either
 * returns false to stop); *any: there was something. Then clear empties those tables. */
int ldb_legacy_inbox_each(ldb *s,
                          bool (*envelope)(void *ctx, const store_device *d, uint64_t seq, uint64_t stored_ms,
                                           const uint8_t *data, size_t len),
                          bool (*next_seq)(void *ctx, const store_device *d, uint64_t next), void *ctx, bool *any);
int ldb_legacy_inbox_clear(ldb *s);

/* The account of a phone number, or STORE_NOT_FOUND. */
int ldb_account_by_phone(ldb *s, const char *phone, uint8_t account[STORE_ACCOUNT_ID_LEN]);

/* The phone number of an account (NUL-terminated), or STORE_NOT_FOUND. */
int ldb_phone_by_account(ldb *s, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                         char phone[STORE_PHONE_MAX + 1]);

/* One device's record, or STORE_NOT_FOUND. */
int ldb_device_get(ldb *s, const store_device *d, store_device_record *out);

/* The same inside a batch. */
int ldb_batch_device_get(ldb_batch *b, const store_device *d, store_device_record *out);

/* The device ids of an account, ascending; *n gets the count (at most max). */
int ldb_account_devices(ldb *s, const uint8_t account[STORE_ACCOUNT_ID_LEN], uint32_t *ids,
                        size_t max, size_t *n);

/* The same inside a batch: sees the batch's own changes (the writer checks a send's
 * device list against the list its commit will hold). */
int ldb_batch_account_devices(ldb_batch *b, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                              uint32_t *ids, size_t max, size_t *n);

/* The same with each device's record (key and registration id), ascending by device. */
int ldb_batch_account_device_records(ldb_batch *b, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                                     store_device_record *out, size_t max, size_t *n);

/* ---- the keys directory: prekeys --------------------------------------------- */



/* A device's signed prekey (one; a put replaces it), or STORE_NOT_FOUND. */
int ldb_signed_prekey_put(ldb_batch *b, const store_device *d, const store_signed_prekey *k);
int ldb_signed_prekey_get(ldb_batch *b, const store_device *d, store_signed_prekey *out);

/* Adds one-time prekeys to a device's stock. Ids only grow: an id at or below the
 * highest the device ever uploaded is skipped unless held (a resent upload must not
 * revive a key already handed out); a key already held under its id is skipped too;
 * an id held with another key is STORE_EXISTS (abort the batch: some may have been
 * added). Adding keys re-arms the low-stock notice. */
int ldb_prekeys_add(ldb_batch *b, const store_device *d, const store_prekey *keys, size_t n);

/* The device is short of prekeys: *first is true if it was not told so since its last
 * upload (and now counts as told). */
int ldb_prekeys_notice(ldb_batch *b, const store_device *d, bool *first);

/* One-time prekeys held for a device. */
int ldb_prekeys_count(ldb_batch *b, const store_device *d, size_t *n);

/* Removes and returns the device's lowest-id one-time prekey; *left gets how many are
 * still held. STORE_NOT_FOUND when there is none. */
int ldb_prekey_take(ldb_batch *b, const store_device *d, store_prekey *out, size_t *left);

/* Reads up to max envelopes of a device with seq > after, in order (store_envelope_fn,
 * store.h), in a read transaction of its own. */
int ldb_inbox_read(ldb *s, const store_device *d, uint64_t after, size_t max,
                   store_envelope_fn fn, void *ctx);

/* ---- groups (the record and its rules: group.h) ------------------------------ */

/* A group's record, or STORE_NOT_FOUND: in a batch, or in a read transaction of its own. */
int ldb_group_get(ldb_batch *b, const uint8_t id[STORE_GROUP_ID_LEN], store_group *out);
int ldb_group_read(ldb *s, const uint8_t id[STORE_GROUP_ID_LEN], store_group *out);

/* Writes g, and the member lists of those who joined or left since before (NULL: a
 * new group). */
int ldb_group_put(ldb_batch *b, const store_group *g, const store_group *before);

/* The groups account is a member of (*out malloc'd, *n of them), by id. */
int ldb_member_groups(ldb *s, const uint8_t account[STORE_ACCOUNT_ID_LEN], store_group_summary **out, size_t *n);

/* The last seq given to a group's messages and events, as last checkpointed (0: none). */
int ldb_group_seq_get(ldb_batch *b, const uint8_t id[STORE_GROUP_ID_LEN], uint64_t *seq);
int ldb_group_seq_put(ldb_batch *b, const uint8_t id[STORE_GROUP_ID_LEN], uint64_t seq);

/* Number of envelopes waiting for a device. */
int ldb_inbox_count(ldb *s, const store_device *d, uint64_t *count);

#endif
