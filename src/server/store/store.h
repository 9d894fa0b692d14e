/* store.h - parleyd's durable state: per-device inboxes and send de-duplication,
 * on LMDB (single node). The server's services use only this header, so a
 * clustered backend can stand behind it later.
 *
 * Writes happen in batches: one batch is one LMDB write transaction, and its commit
 * is one fsync for everything in it (group commit). Nothing in a batch is visible or
 * durable before store_batch_commit returns 0. A caller aborts the batch on any error,
 * so a full disk or map refuses the whole batch and never half-writes it.
 * Reads may run from any thread, concurrently with the writer (LMDB MVCC). */
#ifndef PARLEY_STORE_H
#define PARLEY_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    STORE_OK = 0,
    STORE_NOT_FOUND = 1,
    STORE_FULL = -1,      /* the map or the disk is full: the batch was refused */
    STORE_IO = -2,        /* I/O or LMDB error */
    STORE_NOMEM = -3,
    STORE_INVALID = -4,   /* bad argument or corrupt record */
    STORE_EXISTS = 2,     /* an id already in use with other content */
};

#define STORE_ACCOUNT_ID_LEN 16
#define STORE_MESSAGE_ID_LEN 16

/* A device: its account's random 128-bit id and its device number (1 = primary). */
typedef struct {
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    uint32_t device;
} store_device;

typedef struct store store;
typedef struct store_batch store_batch;

/* Opens (creating) the store in dir; map_size bounds the data file (0: 4 GiB). */
int store_open(store **out, const char *dir, uint64_t map_size);
void store_close(store *s);

/* Opens an existing store for reading only, e.g. from a tool while parleyd runs (LMDB
 * readers in other processes never block the writer). Writes fail. */
int store_open_readonly(store **out, const char *dir);

typedef struct {
    uint64_t inbox_envelopes;   /* undelivered envelopes, all devices */
    uint64_t dedup_records;
    uint64_t accounts;
    uint64_t devices;
    uint64_t prekeys;           /* one-time prekeys held, all devices */
    uint64_t pages_used;        /* of the data file: the high-water mark of the map */
    uint64_t pages_free;        /* freed pages waiting for reuse */
    uint32_t page_size;
} store_stats;

int store_get_stats(store *s, store_stats *out);

/* A human-readable description of a STORE_* code. */
const char *store_strerror(int rc);

/* Write batches: only one is open at a time (the storage writer thread's). */
int store_batch_begin(store *s, store_batch **out);
int store_batch_commit(store_batch *b); /* durable when it returns STORE_OK; frees b */
void store_batch_abort(store_batch *b);

/* A nested batch inside b: its commit folds its changes into b (no fsync), its abort
 * undoes only them. One job of a group commit fails without spoiling the others. */
int store_batch_nest(store_batch *b, store_batch **child);

/* Appends an opaque envelope to a device's inbox; *seq is its place in the inbox
 * (strictly increasing per device, never reused, also across restarts). */
int store_inbox_append(store_batch *b, const store_device *d, uint64_t now_ms,
                       const uint8_t *envelope, size_t len, uint64_t *seq);

/* Reads up to max envelopes of a device with seq > after, in order. fn returns false
 * to stop early. Data is valid only during the call. */
typedef bool (*store_envelope_fn)(void *ctx, uint64_t seq, uint64_t stored_ms,
                                  const uint8_t *data, size_t len);

/* Deletes the device's envelopes with seq <= up_to (a cumulative ack). */
int store_inbox_ack(store_batch *b, const store_device *d, uint64_t up_to, size_t *deleted);

/* The same, showing each envelope to fn (if not NULL) before it goes: the server
 * learns whom to send delivered receipts to. fn's return value is ignored. */
int store_inbox_take(store_batch *b, const store_device *d, uint64_t up_to,
                     store_envelope_fn fn, void *ctx, size_t *deleted);

/* Drops a device's whole inbox (the device was replaced or removed). */
int store_inbox_drop(store_batch *b, const store_device *d, size_t *deleted);

/* Send de-duplication by (sender device, client message id): get returns the
 * server timestamp of the first acceptance, or STORE_NOT_FOUND. */
int store_dedup_get(store_batch *b, const store_device *sender,
                    const uint8_t id[STORE_MESSAGE_ID_LEN], uint64_t *accepted_ms);
int store_dedup_put(store_batch *b, const store_device *sender,
                    const uint8_t id[STORE_MESSAGE_ID_LEN], uint64_t accepted_ms);

/* Deletes envelopes stored before inbox_cutoff_ms and dedup records older than
 * dedup_cutoff_ms, at most max of each per call (bounded work per batch). */
int store_sweep(store_batch *b, uint64_t inbox_cutoff_ms, uint64_t dedup_cutoff_ms, size_t max,
                size_t *inbox_removed, size_t *dedup_removed);

/* ---- accounts and devices ---------------------------------------------------- */

#define STORE_PHONE_MAX 16 /* "+" and at most 15 digits (E.164) */
#define STORE_KEY_LEN 32

typedef struct {
    uint32_t device;
    uint8_t identity_key[STORE_KEY_LEN]; /* Curve25519 u-coordinate */
    uint32_t registration_id;
} store_device_record;

/* Registers phone's primary device. A new number gets a new account with the given
 * id; a known number keeps its account id (written to *account) and has all its
 * devices replaced: their inboxes are dropped. */
int store_register(store_batch *b, const char *phone, const uint8_t new_id[STORE_ACCOUNT_ID_LEN],
                   const store_device_record *primary, uint8_t account[STORE_ACCOUNT_ID_LEN]);

/* The account of a phone number, or STORE_NOT_FOUND. */
int store_account_by_phone(store *s, const char *phone, uint8_t account[STORE_ACCOUNT_ID_LEN]);

/* The phone number of an account (NUL-terminated), or STORE_NOT_FOUND. */
int store_phone_by_account(store *s, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                           char phone[STORE_PHONE_MAX + 1]);

/* One device's record, or STORE_NOT_FOUND. */
int store_device_get(store *s, const store_device *d, store_device_record *out);

/* The same inside a batch. */
int store_batch_device_get(store_batch *b, const store_device *d, store_device_record *out);

/* The device ids of an account, ascending; *n gets the count (at most max). */
int store_account_devices(store *s, const uint8_t account[STORE_ACCOUNT_ID_LEN], uint32_t *ids,
                          size_t max, size_t *n);

/* The same inside a batch: sees the batch's own changes (the writer checks a send's
 * device list against the list its commit will hold). */
int store_batch_account_devices(store_batch *b, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                                uint32_t *ids, size_t max, size_t *n);

/* The same with each device's record (key and registration id), ascending by device. */
int store_batch_account_device_records(store_batch *b, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                                       store_device_record *out, size_t max, size_t *n);

/* ---- the keys directory: prekeys --------------------------------------------- */

#define STORE_SIG_LEN 64

typedef struct {
    uint32_t id;
    uint8_t key[STORE_KEY_LEN];          /* Curve25519 u-coordinate */
} store_prekey;

typedef struct {
    uint32_t id;
    uint8_t key[STORE_KEY_LEN];
    uint8_t signature[STORE_SIG_LEN];    /* XEdDSA by the device's identity key */
    uint64_t uploaded_ms;
} store_signed_prekey;

/* A device's signed prekey (one; a put replaces it), or STORE_NOT_FOUND. */
int store_signed_prekey_put(store_batch *b, const store_device *d, const store_signed_prekey *k);
int store_signed_prekey_get(store_batch *b, const store_device *d, store_signed_prekey *out);

/* Adds one-time prekeys to a device's stock. Ids only grow: an id at or below the
 * highest the device ever uploaded is skipped unless held (a resent upload must not
 * revive a key already handed out); a key already held under its id is skipped too;
 * an id held with another key is STORE_EXISTS (abort the batch: some may have been
 * added). Adding keys re-arms the low-stock notice. */
int store_prekeys_add(store_batch *b, const store_device *d, const store_prekey *keys, size_t n);

/* The device is short of prekeys: *first is true if it was not told so since its last
 * upload (and now counts as told). */
int store_prekeys_notice(store_batch *b, const store_device *d, bool *first);

/* One-time prekeys held for a device. */
int store_prekeys_count(store_batch *b, const store_device *d, size_t *n);

/* Removes and returns the device's lowest-id one-time prekey; *left gets how many are
 * still held. STORE_NOT_FOUND when there is none. */
int store_prekey_take(store_batch *b, const store_device *d, store_prekey *out, size_t *left);

/* Reads up to max envelopes of a device with seq > after, in order (store_envelope_fn
 * above), in a read transaction of its own. */
int store_inbox_read(store *s, const store_device *d, uint64_t after, size_t max,
                     store_envelope_fn fn, void *ctx);

/* Number of envelopes waiting for a device. */
int store_inbox_count(store *s, const store_device *d, uint64_t *count);

#endif
