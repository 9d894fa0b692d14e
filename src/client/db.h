/* db.h - the profile database (DIR/parley.db, SQLite): identity, contacts, messages,
 * outbox, incoming de-duplication. docs/client.md has the schema.
 *
 * Every function is one transaction, or joins the one opened with db_begin() (they
 * nest: only the outermost begin/commit touch SQLite). Returns DB_OK, DB_NOT_FOUND
 * where a lookup can miss, or DB_ERROR (db_errmsg says why). */
#ifndef PARLEY_CLIENT_DB_H
#define PARLEY_CLIENT_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "parley.h"

#define DB_ID_LEN 16
#define DB_PHONE_MAX PARLEY_PHONE_MAX
#define DB_URL_MAX PARLEY_URL_MAX
#define DB_MAX_DEVICES 16
#define DB_KEY_LEN 32
#define DB_SCHEMA_VERSION 2

enum { DB_OK = 0, DB_NOT_FOUND = 1, DB_ERROR = -1 };

typedef struct db db;

/* Opens dir/parley.db, creating dir (0700) and the file (0600) when missing, and
 * brings the schema to DB_SCHEMA_VERSION. On failure err gets the reason. */
int db_open(db **out, const char *dir, char *err, size_t errlen);
void db_close(db *d);
const char *db_errmsg(const db *d);

int db_begin(db *d);
int db_commit(db *d);
void db_rollback(db *d);

/* ---- identity ---------------------------------------------------------------------- */

typedef struct {
    bool exists;               /* a key pair was generated */
    uint32_t registration_id;
    char server_url[DB_URL_MAX + 1];
    char pending_phone[DB_PHONE_MAX + 1];
    bool registered;
    char phone[DB_PHONE_MAX + 1];
    uint8_t account[DB_ID_LEN];
    uint32_t device;
} db_identity;

/* Everything but the private key. */
int db_identity_get(db *d, db_identity *out);

/* Stores a new private key; DB_ERROR if the profile already has one. */
int db_identity_create(db *d, const uint8_t priv[DB_KEY_LEN], uint32_t registration_id);

/* Copies the private key into priv: the caller wipes it (sodium_memzero) after use. */
int db_identity_key(db *d, uint8_t priv[DB_KEY_LEN]);

int db_identity_set_pending(db *d, const char *server_url, const char *phone);

/* Records the account and clears the pending phone. */
int db_identity_set_registered(db *d, const char *phone, const uint8_t account[DB_ID_LEN],
                               uint32_t device);

/* ---- contacts ---------------------------------------------------------------------- */

typedef struct {
    uint8_t account[DB_ID_LEN];
    char phone[DB_PHONE_MAX + 1];   /* "" when unknown */
    uint32_t devices[DB_MAX_DEVICES];
    size_t n_devices;
} db_contact;

/* Inserts or replaces by account; a phone number moves to the newest account naming it. */
int db_contact_put(db *d, const db_contact *c);
int db_contact_by_phone(db *d, const char *phone, db_contact *out);
int db_contact_by_account(db *d, const uint8_t account[DB_ID_LEN], db_contact *out);

/* Drops the phone -> account mapping (the server said the account is gone). */
int db_contact_forget_phone(db *d, const char *phone);

/* ---- messages ---------------------------------------------------------------------- */

typedef struct {
    uint8_t id[DB_ID_LEN];
    bool outgoing;
    char peer_phone[DB_PHONE_MAX + 1];   /* "" when unknown */
    bool has_peer_account;
    uint8_t peer_account[DB_ID_LEN];
    uint32_t from_device;
    const char *text;                    /* NULL when malformed */
    size_t text_len;
    const char *problem;                 /* incoming: why the body is unreadable; outgoing: why it failed */
    uint64_t sent_ms;
    uint64_t server_time_ms;
    int state;                           /* a parley_state */
    int64_t local_seq;           /* read back: the row's place in local order */
} db_message;

/* A new outgoing message (state PENDING) and its outbox entry (the packed body to send),
 * in one transaction. DB_ERROR if the id exists. */
int db_outgoing_add(db *d, const db_message *m, const uint8_t *body, size_t body_len);

typedef struct {
    uint8_t id[DB_ID_LEN];
    char phone[DB_PHONE_MAX + 1];
    uint8_t *body;
    size_t body_len;
} db_outbox_entry;

/* The oldest max outbox entries, in the order they were queued. Free with db_outbox_free. */
int db_outbox_load(db *d, db_outbox_entry *out, size_t max, size_t *n);
void db_outbox_free(db_outbox_entry *e, size_t n);
int db_outbox_count(db *d, size_t *n);

/* The server acknowledged id: state PENDING -> SENT with its time and the recipient's
 * account (the time and account also when a receipt moved it on first), and the
 * outbox entry goes. *changed says whether the state moved. */
int db_outgoing_sent(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN],
                     uint64_t server_time_ms, bool *changed);

/* The message can never be sent: PENDING -> FAILED with the reason; the outbox entry goes. */
int db_outgoing_failed(db *d, const uint8_t id[DB_ID_LEN], const char *reason, bool *changed);

/* A receipt: moves our message id to peer_account forward to state (DELIVERED or READ);
 * never backward, never from FAILED. A PENDING message moves too (the server had it;
 * its ack was lost) if peer_account is the contact of its number; its outbox entry
 * goes. *changed says whether it moved. */
int db_outgoing_advance(db *d, const uint8_t id[DB_ID_LEN], const uint8_t peer_account[DB_ID_LEN],
                        int state, bool *changed);

/* A read receipt "up to": every message we sent to peer_account that the server
 * accepted at or before up_to_ms becomes READ. *ids (malloc'd, caller frees) gets the
 * ids that moved. */
int db_outgoing_read_up_to(db *d, const uint8_t peer_account[DB_ID_LEN], uint64_t up_to_ms,
                           uint8_t (**ids)[DB_ID_LEN], size_t *n);

/* Stores an incoming message (state RECEIVED) unless its key (sender account, sender
 * device, id) was seen before: then *inserted is false and nothing changes. */
int db_incoming_add(db *d, const db_message *m, bool *inserted);

/* Every RECEIVED message from phone becomes READ with a receipt to send. */
int db_mark_read(db *d, const char *phone, size_t *count);

/* Read receipts to send: up to max ids of one author account (the oldest first). */
int db_receipts_pending(db *d, uint8_t account[DB_ID_LEN], uint8_t (*ids)[DB_ID_LEN], size_t max,
                        size_t *n);
int db_receipts_pending_count(db *d, size_t *n);

/* The server acknowledged the read receipts for these messages from account. */
int db_receipts_sent(db *d, const uint8_t account[DB_ID_LEN], const uint8_t (*ids)[DB_ID_LEN],
                     size_t n);

/* An outgoing message's state; DB_NOT_FOUND if there is none with this id. */
int db_message_state(db *d, const uint8_t id[DB_ID_LEN], int *state);

/* The conversation with phone in local order; fn returns false to stop. */
typedef bool (*db_message_fn)(void *ctx, const db_message *m);
int db_history(db *d, const char *phone, db_message_fn fn, void *ctx);

/* Incoming messages not shown yet, in local order; and marking them shown. */
int db_unshown(db *d, db_message_fn fn, void *ctx);
int db_mark_shown(db *d, int64_t up_to_seq);

#endif
