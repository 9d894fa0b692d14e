/* e2e.h - libparley's Signal session layer: our prekeys, sessions per peer device,
 * encrypting and decrypting message bodies, the identity keys of peers, safety numbers.
 * It works on the profile database (db.h) and the Signal code (src/crypto/) and knows
 * nothing about the network, so tests and the benchmark drive it directly.
 *
 * Private keys are read from the database only for the operation that needs them and
 * wiped (sodium_memzero) right after; so is every buffer that held a key, a session
 * record or a plaintext. Functions that change state do not store it themselves where
 * the caller must store it together with something else (a message, a sealed Send):
 * they hand back the new session record, and e2e_*_commit stores it inside the
 * caller's transaction.
 *
 * Return values: E2E_OK, a negative ps_err (PS_ERR_NO_SESSION, PS_ERR_BAD_MAC, ...), or
 * E2E_ERR_STORAGE (db_errmsg says why). e2e_strerror names them for people. */
#ifndef PARLEY_CLIENT_E2E_H
#define PARLEY_CLIENT_E2E_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "ps.h"
#include "session.h"

#define E2E_OK 0
#define E2E_ERR_STORAGE (-100)

#define E2E_MAX_KEY_ID 0xFFFFFFu                          /* prekey ids: 1 .. 2^24-1 */
#define E2E_PREKEY_BATCH 100                              /* one-time prekeys per upload */
#define E2E_PREKEY_LOW 20                                 /* fewer on the server: upload more */
#define E2E_SIGNED_PREKEY_MAX_AGE_MS (7ull * 86400 * 1000) /* then a new signed prekey */
#define E2E_SIGNED_PREKEY_KEEP_MS (30ull * 86400 * 1000)   /* a replaced one is kept this long */
#define E2E_SAFETY_VERSION 1                              /* phone numbers as the identifiers */

/* A name for an e2e/ps error code. */
const char *e2e_strerror(int rc);

/* Public parts for an upload. */
typedef struct {
    uint32_t id;
    uint8_t pub[PS_KEY_LEN];
    uint8_t signature[PS_SIG_LEN];   /* XEdDSA by our identity over 0x05 || pub */
    uint64_t created_ms;
} e2e_signed_prekey;

typedef struct {
    uint32_t id;
    uint8_t pub[PS_KEY_LEN];
} e2e_prekey;

/* Our identity key pair and registration id, from the database; wipe with
 * e2e_identity_clear. */
int e2e_identity_load(db *d, ps_local_identity *me);
void e2e_identity_clear(ps_local_identity *me);

/* Our identity public key as it travels: 0x05 || u. */
int e2e_identity_public(db *d, uint8_t out[PS_PUBKEY_LEN]);

/* A new signed prekey (id: the current one's + 1, or 1), signed and stored (durable when
 * this returns) as the current one; the one it replaces is kept (see
 * e2e_signed_prekey_prune). out gets the public parts. */
int e2e_signed_prekey_new(db *d, uint64_t now_ms, e2e_signed_prekey *out);

/* The current signed prekey's public parts; PS_ERR_NO_PREKEY when there is none. */
int e2e_signed_prekey_current(db *d, e2e_signed_prekey *out);

/* Forgets signed prekeys replaced more than E2E_SIGNED_PREKEY_KEEP_MS before now_ms. */
int e2e_signed_prekey_prune(db *d, uint64_t now_ms);

/* want one-time prekeys to upload: those stored but not uploaded yet first, then new
 * ones (increasing ids), generated and stored before this returns. out has room for
 * want; *n gets how many (want unless an error). Mark them with db_prekeys_uploaded
 * once the server took them. */
int e2e_prekeys_to_upload(db *d, size_t want, e2e_prekey *out, size_t *n);

/* ---- sessions ------------------------------------------------------------------------ */

/* A peer device's bundle as the server hands it out: checks that every key parses and
 * that the ids are in range. PS_ERR_INVALID_KEY / PS_ERR_INVALID_MESSAGE otherwise. */
int e2e_bundle_parse(ps_bundle *b, uint32_t device, uint32_t registration_id, const uint8_t *identity_key,
                     size_t identity_len, uint32_t signed_id, const uint8_t *signed_key, size_t signed_len,
                     const uint8_t *signature, size_t signature_len, bool has_prekey, uint32_t prekey_id,
                     const uint8_t *prekey, size_t prekey_len);

/* X3DH from a bundle: a new session with (account, b->device_id) becomes current in its
 * record (older ones are kept as previous). Checks the signed prekey's signature
 * (PS_ERR_BAD_SIGNATURE). Stores nothing: *record gets the record to store (with
 * db_session_put, after the identity was recorded: e2e_identity_seen). */
int e2e_session_from_bundle(db *d, const uint8_t account[DB_ID_LEN], const ps_bundle *b, ps_bytes *record);

/* A body encrypted for one device. */
typedef struct {
    int type;                    /* PS_MSG_PREKEY or PS_MSG_WHISPER */
    ps_bytes body;
    uint32_t registration_id;    /* the peer device's, as its session knows it (0: unknown) */
    uint8_t remote_identity[PS_KEY_LEN]; /* the identity key the session is with */
    ps_bytes record;             /* the session record after encrypting */
} e2e_sealed;

/* Encrypts plaintext with the stored session of (account, device); PS_ERR_NO_SESSION
 * when there is none (fetch a bundle). Call it inside the write transaction that will
 * store out->record (e2e_sealed_commit) with the message, so that two processes never
 * encrypt with the same counter. */
/* *usable: (account, device) has a session we can encrypt with (a readable record with a
 * current state). A record that cannot be read, or whose current state was archived,
 * is not: a bundle makes a new session, and the old states still decrypt. */
int e2e_session_usable(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, bool *usable);

/* Moves the current session of (account, device) among its previous ones (libsignal's
 * archiveCurrentState): the next message needs a new session (X3DH from a bundle),
 * while messages the peer sent in the old one still decrypt. Nothing to do without a
 * current session. */
int e2e_session_archive(db *d, const uint8_t account[DB_ID_LEN], uint32_t device);

int e2e_encrypt(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t *plaintext, size_t len,
                e2e_sealed *out);
int e2e_sealed_commit(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const e2e_sealed *s);
void e2e_sealed_clear(e2e_sealed *s);

/* A body decrypted from one device. */
typedef struct {
    ps_bytes plaintext;
    ps_bytes record;              /* the session record after decrypting */
    bool prekey_message;          /* it was a PreKey message: identity names the sender */
    uint8_t identity[PS_KEY_LEN];
    bool used_prekey;             /* a one-time prekey was used: delete it with the message */
    uint32_t prekey_id;
} e2e_opened;

/* Decrypts a body of type PS_MSG_WHISPER or PS_MSG_PREKEY from (account, device). A
 * PreKey message that starts a session is opened with our signed prekey (the current
 * one or a kept previous one) and the one-time prekey it names; one that repeats a
 * session we already have needs neither. Nothing is stored, and on failure nothing
 * changed: PS_ERR_NO_SESSION, PS_ERR_NO_PREKEY, PS_ERR_BAD_MAC, PS_ERR_DUPLICATE,
 * PS_ERR_INVALID_MESSAGE, ... Call it inside the transaction that will store the
 * message, and e2e_opened_commit there. */
int e2e_decrypt(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, uint32_t type, const uint8_t *body,
                size_t len, e2e_opened *out);
int e2e_opened_commit(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const e2e_opened *o);
void e2e_opened_clear(e2e_opened *o);

/* ---- identities of peers -------------------------------------------------------------- */

/* The identity key of (account, device) as a bundle or a PreKey message shows it: stored
 * when new; when it differs from the one stored, the change is recorded first (a notice
 * in the conversation with phone, the verified mark cleared) in the caller's
 * transaction. *seen says which. */
int e2e_identity_seen(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const char *phone,
                      const uint8_t key[PS_KEY_LEN], db_identity_seen *seen);

/* The text of an identity-change notice. */
void e2e_identity_notice(char *out, size_t len, const char *phone, bool was_verified);

/* The safety number between us (my_phone) and peer_phone's primary device (device 1 of
 * peer_account): 60 digits and the scannable form (CombinedFingerprints, version 1,
 * phone numbers as the identifiers, 5200 iterations). PS_ERR_NO_SESSION when the
 * peer's identity key is not known yet. */
int e2e_safety_number(db *d, const char *my_phone, const char *peer_phone, const uint8_t peer_account[DB_ID_LEN],
                      char digits[61], ps_bytes *scannable);

#endif
