/* db.h - the profile database (DIR/parley.db, SQLite): identity, contacts, messages,
 * outbox, incoming de-duplication, and (schema v3) the Signal state: our prekeys,
 * sessions per peer device, the identity keys seen, RETRY receipts and resends.
 * docs/client.md has the schema.
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
#define DB_CONVERSATION_MAX PARLEY_CONVERSATION_MAX
#define DB_SCHEMA_VERSION 5

enum { DB_OK = 0, DB_NOT_FOUND = 1, DB_ERROR = -1 };

typedef struct db db;

/* A heap byte string read from the database (it may hold keys): db_blob_free wipes it. */
typedef struct {
    uint8_t *data;
    size_t len;
} db_blob;

void db_blob_free(db_blob *b);

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

/* The account's "verified" mark (its safety number was compared); false when unknown. */
int db_contact_verified(db *d, const uint8_t account[DB_ID_LEN], bool *verified);
int db_contact_set_verified(db *d, const uint8_t account[DB_ID_LEN], bool verified);

/* ---- messages ---------------------------------------------------------------------- */

/* What a messages row is: a message, or a notice in the conversation. */
enum {
    DB_KIND_MESSAGE = 0,
    DB_KIND_IDENTITY_CHANGED = 1,           /* a device's identity key changed */
    DB_KIND_IDENTITY_CHANGED_VERIFIED = 2,  /* the same, and the contact had been verified */
};

typedef struct {
    uint8_t id[DB_ID_LEN];
    bool outgoing;
    int kind;                            /* DB_KIND_* (read back; messages are stored as MESSAGE) */
    char conversation[DB_CONVERSATION_MAX + 1]; /* its chat ("+E164" or "group:..."); "" when unknown */
    char peer_phone[DB_PHONE_MAX + 1];   /* the other party (incoming: the sender); "" when unknown */
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
    char conversation[DB_CONVERSATION_MAX + 1]; /* "+E164" or "group:..." */
    uint8_t *body;                       /* the packed Content */
    size_t body_len;
    uint8_t *sealed;                     /* NULL, or the packed Send with the ciphertexts */
    size_t sealed_len;
    uint32_t mismatches;                 /* DEVICE_MISMATCH answers so far */
    bool resend;                         /* a resend after a RETRY receipt: to one device only */
    uint8_t resend_account[DB_ID_LEN];
    uint32_t resend_device;
} db_outbox_entry;

/* The oldest max outbox entries, in the order they were queued. Free with db_outbox_free. */
int db_outbox_load(db *d, db_outbox_entry *out, size_t max, size_t *n);
void db_outbox_free(db_outbox_entry *e, size_t n);
int db_outbox_count(db *d, size_t *n);

/* The sealed Send of an outbox entry (another process may have sealed it): DB_NOT_FOUND
 * when the entry is gone or not sealed. */
int db_outbox_sealed(db *d, const uint8_t id[DB_ID_LEN], db_blob *out);

/* Stores the sealed Send of an entry, to be sent (and resent) byte for byte. */
int db_outbox_seal(db *d, const uint8_t id[DB_ID_LEN], const uint8_t *sealed, size_t len);

/* DEVICE_MISMATCH: the sealed Send is dropped (it must be encrypted again) and the
 * entry's mismatch count goes up; *count gets the new count. */
int db_outbox_unseal(db *d, const uint8_t id[DB_ID_LEN], uint32_t *count);

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

/* True when (sender account, sender device, id) was stored or absorbed before: a
 * redelivery, to be acked without decrypting it again. */
int db_incoming_seen(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN],
                     bool *seen);

/* Records the id of an incoming message that is not a row of its own (a resend merged
 * into the row of the message it replaces) for de-duplication. */
int db_incoming_absorb(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN]);

enum { DB_FILL_DONE, DB_FILL_HAD_TEXT, DB_FILL_ABSENT };

/* A resend's text for the row of (account, device, id): a row recorded without text
 * (undecryptable) gets it, its problem cleared, and is to be shown again
 * (DB_FILL_DONE); a row with text is left alone (DB_FILL_HAD_TEXT); *result is
 * DB_FILL_ABSENT when there is no such row. */
int db_incoming_fill(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN],
                     const char *text, size_t text_len, uint64_t sent_ms, int *result);

/* A notice in the conversation with phone (its one-to-one chat; state READ, never a receipt), to be shown
 * by recv/listen like a message. */
int db_notice_add(db *d, int kind, const char *phone, const uint8_t account[DB_ID_LEN], uint32_t device,
                  const char *text);

/* Every RECEIVED message of the conversation becomes READ with a receipt to send. */
int db_mark_read(db *d, const char *conversation, size_t *count);

/* Read receipts to send: up to max ids of one author account (the oldest first). */
int db_receipts_pending(db *d, uint8_t account[DB_ID_LEN], uint8_t (*ids)[DB_ID_LEN], size_t max,
                        size_t *n);
/* Read receipts and RETRY receipts not sent yet. */
int db_receipts_pending_count(db *d, size_t *n);

/* The server acknowledged the read receipts for these messages from account. */
int db_receipts_sent(db *d, const uint8_t account[DB_ID_LEN], const uint8_t (*ids)[DB_ID_LEN],
                     size_t n);

/* An outgoing message's state; DB_NOT_FOUND if there is none with this id. */
int db_message_state(db *d, const uint8_t id[DB_ID_LEN], int *state);

/* A conversation ("+E164" or "group:...") in local order; fn returns false to stop. */
typedef bool (*db_message_fn)(void *ctx, const db_message *m);
int db_history(db *d, const char *conversation, db_message_fn fn, void *ctx);

/* Incoming messages not shown yet, in local order; and marking them shown. */
int db_unshown(db *d, db_message_fn fn, void *ctx);
int db_mark_shown(db *d, int64_t up_to_seq);

/* ---- RETRY receipts we send (messages we could not decrypt) --------------------------- */

/* Queues a RETRY receipt for message id from (account, device); once per message. */
int db_retry_add(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN]);

/* RETRY receipts to send: up to max ids for one (account, device), the oldest first. */
int db_retry_pending(db *d, uint8_t account[DB_ID_LEN], uint32_t *device, uint8_t (*ids)[DB_ID_LEN],
                     size_t max, size_t *n);

/* The server took them (or refused them for good). */
int db_retry_sent(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t (*ids)[DB_ID_LEN],
                  size_t n);

/* ---- resends (RETRY receipts we answer) ------------------------------------------------ */

typedef struct {
    uint8_t original[DB_ID_LEN];     /* the message a resend replaces */
    char conversation[DB_CONVERSATION_MAX + 1]; /* its conversation */
    char *text;                      /* malloc'd; the caller frees (and wipes) it */
    size_t text_len;
    uint64_t sent_ms;
    uint32_t resends;                /* resends of it to (account, device) so far */
} db_resend_source;

/* Records that our message id was sealed for (account, device) with that identity key:
 * only such a device may ask for it again, and only while it has the same key. */
int db_recipient_add(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN], uint32_t device,
                     const uint8_t identity_key[DB_KEY_LEN]);

/* The identity key the original of resend new_id was sealed for, on the resend's device;
 * DB_NOT_FOUND when unknown. A resend is sealed only for that same key. */
int db_resend_identity(db *d, const uint8_t new_id[DB_ID_LEN], uint8_t identity_key[DB_KEY_LEN]);

/* The message a RETRY receipt from (account, device) names by id: one of ours sealed for
 * that very device (db_recipient_add), or one of our resends to it (then its original).
 * DB_NOT_FOUND when there is none with text. */
int db_resend_source_get(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN], uint32_t device,
                         db_resend_source *out);

/* Queues a resend (new id, body = the Content naming the original) to (account, device)
 * only, and remembers which message it replaces. */
int db_resend_add(db *d, const uint8_t new_id[DB_ID_LEN], const uint8_t original[DB_ID_LEN], const char *conversation,
                  const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t *body, size_t body_len);

/* ---- our prekeys -------------------------------------------------------------------- */

/* Signed prekeys: the current one, and those replaced (kept until the caller prunes them,
 * so that a PreKey message made from one still opens). The record is a serialized
 * ps_key_record with the private key. */
int db_signed_prekey_add(db *d, uint32_t id, const uint8_t *record, size_t len, uint64_t now_ms);
int db_signed_prekey_current(db *d, uint32_t *id, db_blob *record, uint64_t *created_ms);
int db_signed_prekey_get(db *d, uint32_t id, db_blob *record);
/* Deletes the signed prekeys replaced before before_ms; *n (may be NULL) gets how many. */
int db_signed_prekey_prune(db *d, uint64_t before_ms, size_t *n);

/* One-time prekeys. Ids come from a counter that only moves forward (1 .. 2^24-1, then
 * round again, skipping ids still held), so an id is not reused while it may be named. */
int db_prekey_next_id(db *d, uint32_t *id);
int db_prekey_add(db *d, uint32_t id, const uint8_t *record, size_t len);
int db_prekey_get(db *d, uint32_t id, db_blob *record);
int db_prekey_delete(db *d, uint32_t id);
int db_prekey_count(db *d, size_t *n);

typedef struct {
    uint32_t id;
    db_blob record;
} db_key_row;

/* Up to max one-time prekeys not uploaded yet, by id. Free each record with db_blob_free. */
int db_prekeys_not_uploaded(db *d, db_key_row *out, size_t max, size_t *n);
int db_prekeys_uploaded(db *d, const uint32_t *ids, size_t n);

/* ---- sessions and the identity keys of peer devices ---------------------------------- */

/* A serialized session record per peer device; DB_NOT_FOUND when there is none. */
int db_session_get(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, db_blob *record);
int db_session_put(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t *record, size_t len);
int db_session_delete(db *d, const uint8_t account[DB_ID_LEN], uint32_t device);
int db_session_exists(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, bool *exists);

/* The identity key (32-byte u) last seen for a peer device; DB_NOT_FOUND when none. */
int db_peer_identity_get(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, uint8_t key[DB_KEY_LEN]);

typedef struct {
    bool known;          /* a key was stored before */
    bool changed;        /* ... and it was another one */
    bool was_verified;   /* the contact had been verified (the mark is now cleared) */
} db_identity_seen;

/* Stores key as the identity of (account, device) and, when phone is given (not NULL
 * or empty), as the key last seen for (phone, device). It counts as changed when another
 * key was stored for (account, device), or for (phone, device) under any account (a
 * number that moved to another account: a new install, or a hostile server swapping the
 * account behind the number). On a change the verified marks of the account (and of the
 * account the number had) are cleared; the caller records the change in the same
 * transaction (db_notice_add). */
int db_peer_identity_put(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const char *phone,
                         const uint8_t key[DB_KEY_LEN], db_identity_seen *out);

/* The identity key message id was sealed for on (account, device) (recipients). */
int db_recipient_identity(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN], uint32_t device,
                          uint8_t identity_key[DB_KEY_LEN]);

#endif
