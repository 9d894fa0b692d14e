/* session.h - X3DH and the Double Ratchet (Signal v3 message formats).
 *
 * A session record holds the current session with one peer device and up to 40
 * previous ones, so that simultaneous initiation and a peer's re-install recover:
 * a message is tried against each session, and the one that opens it becomes
 * current. Decryption works on a copy and commits only on success, so a replay,
 * a forgery or garbage never changes stored state. */
#ifndef PARLEY_CRYPTO_SESSION_H
#define PARLEY_CRYPTO_SESSION_H

#include "ps.h"

/* Message type codes as the envelope carries them (libsignal's CiphertextMessageType). */
enum { PS_MSG_WHISPER = 2, PS_MSG_PREKEY = 3, PS_MSG_SENDERKEY = 7 };

typedef struct {
    uint32_t counter;
    uint8_t seed[PS_KEY_LEN]; /* message-key seed; the keys are derived when used */
} ps_skipped_key;

typedef struct {
    uint8_t their_ratchet[PS_KEY_LEN];
    uint8_t chain_key[PS_KEY_LEN];
    uint32_t index;           /* counter of the next key chain_key yields */
    ps_skipped_key *skipped;  /* oldest first, at most PS_MAX_SKIPPED_KEYS */
    uint32_t nskipped;
} ps_recv_chain;

typedef struct {
    uint32_t version;                 /* session version: 3 */
    uint8_t local_identity[PS_KEY_LEN];
    uint8_t remote_identity[PS_KEY_LEN];
    uint32_t local_registration_id;
    uint32_t remote_registration_id;
    uint8_t base_key[PS_KEY_LEN];     /* the initiator's X3DH base key: names the session */
    uint8_t root_key[PS_KEY_LEN];
    ps_keypair send_ratchet;
    uint8_t send_chain_key[PS_KEY_LEN];
    uint32_t send_index;
    uint32_t previous_counter;
    ps_recv_chain recv[PS_MAX_RECEIVER_CHAINS]; /* oldest first */
    uint32_t nrecv;
    bool has_pending_prekey;          /* we initiated and have not heard back yet */
    bool pending_has_one_time;
    uint32_t pending_prekey_id;
    uint32_t pending_signed_prekey_id;
} ps_session;

typedef struct {
    ps_session *current;                             /* NULL: no session */
    ps_session *previous[PS_MAX_ARCHIVED_SESSIONS];  /* newest first */
    uint32_t nprevious;
} ps_session_record;

/* Our own identity as X3DH needs it. */
typedef struct {
    ps_keypair identity;
    uint32_t registration_id;
} ps_local_identity;

/* A peer device's prekey bundle (keys as 32-byte u-coordinates). */
typedef struct {
    uint32_t registration_id;
    uint32_t device_id;
    uint8_t identity_key[PS_KEY_LEN];
    uint32_t signed_prekey_id;
    uint8_t signed_prekey[PS_KEY_LEN];
    uint8_t signed_prekey_signature[PS_SIG_LEN];
    bool has_prekey;
    uint32_t prekey_id;
    uint8_t prekey[PS_KEY_LEN];
} ps_bundle;

/* A parsed PreKeySignalMessage. */
typedef struct {
    uint8_t version;
    uint32_t registration_id;
    bool has_prekey_id;
    uint32_t prekey_id;
    uint32_t signed_prekey_id;
    uint8_t base_key[PS_KEY_LEN];
    uint8_t identity_key[PS_KEY_LEN];
    ps_bytes message;                 /* the inner SignalMessage, version byte and MAC included */
} ps_prekey_message;

/* Frees every session in the record and wipes it. */
void ps_session_record_clear(ps_session_record *rec);

/* Deep copy (for callers that keep a record and want a transactional update). */
PS_MUST_CHECK int ps_session_record_copy(ps_session_record *dst, const ps_session_record *src);

/* Initiator side of X3DH: checks the signed-prekey signature (PS_ERR_BAD_SIGNATURE if
 * it fails, nothing changed), derives the session and makes it current; the old
 * current session is archived. Messages are PreKey messages until the peer answers. */
PS_MUST_CHECK int ps_session_initiate(ps_session_record *rec, const ps_local_identity *me,
                                      const ps_bundle *bundle, const ps_rng *rng);

/* Encrypts with the current session. *type is PS_MSG_PREKEY or PS_MSG_WHISPER. */
PS_MUST_CHECK int ps_session_encrypt(ps_session_record *rec, const uint8_t *plaintext, size_t len,
                                     ps_bytes *out, int *type);

/* Decrypts a SignalMessage with any session of the record; changes the record only on success. */
PS_MUST_CHECK int ps_session_decrypt(ps_session_record *rec, const uint8_t *body, size_t len,
                                     ps_bytes *plaintext, const ps_rng *rng);

/* Parses a PreKeySignalMessage (no keys needed yet). Free with ps_prekey_message_clear. */
PS_MUST_CHECK int ps_prekey_message_parse(ps_prekey_message *m, const uint8_t *body, size_t len);
void ps_prekey_message_clear(ps_prekey_message *m);

/* True when the record already has the session this PreKey message started
 * (a repeat: no prekeys are needed to decrypt it). */
bool ps_session_record_has_base_key(const ps_session_record *rec, const uint8_t base_key[PS_KEY_LEN]);

/* Responder side: opens a PreKey message. signed_prekey and one_time_prekey (NULL if
 * the message names none) are looked up by the caller from the ids in m; neither is
 * needed when ps_session_record_has_base_key. On success *used_one_time_prekey says
 * whether the caller must now delete that one-time prekey. */
PS_MUST_CHECK int ps_session_decrypt_prekey(ps_session_record *rec, const ps_local_identity *me,
                                            const ps_prekey_message *m,
                                            const ps_keypair *signed_prekey,
                                            const ps_keypair *one_time_prekey,
                                            ps_bytes *plaintext, const ps_rng *rng,
                                            bool *used_one_time_prekey);

/* Serialization of a whole record (versioned; see serialize.c). */
PS_MUST_CHECK int ps_session_record_serialize(const ps_session_record *rec, ps_bytes *out);
PS_MUST_CHECK int ps_session_record_deserialize(ps_session_record *rec, const uint8_t *in, size_t len);

/* X3DH master secret -> (RootKey0, ChainKey0), per SIGNAL-NOTES 2.3; one-time prekey optional. */
PS_MUST_CHECK int ps_x3dh_initiator(uint8_t root[PS_KEY_LEN], uint8_t chain[PS_KEY_LEN],
                                    const uint8_t our_identity_priv[PS_KEY_LEN],
                                    const uint8_t our_base_priv[PS_KEY_LEN],
                                    const uint8_t their_identity[PS_KEY_LEN],
                                    const uint8_t their_signed_prekey[PS_KEY_LEN],
                                    const uint8_t *their_one_time_prekey);
PS_MUST_CHECK int ps_x3dh_responder(uint8_t root[PS_KEY_LEN], uint8_t chain[PS_KEY_LEN],
                                    const uint8_t our_identity_priv[PS_KEY_LEN],
                                    const uint8_t our_signed_prekey_priv[PS_KEY_LEN],
                                    const uint8_t *our_one_time_prekey_priv,
                                    const uint8_t their_identity[PS_KEY_LEN],
                                    const uint8_t their_base[PS_KEY_LEN]);

/* A chain's message keys, from the seed HMAC(chain_key, 0x01). */
typedef struct {
    uint8_t cipher_key[32];
    uint8_t mac_key[32];
    uint8_t iv[16];
} ps_message_keys;

PS_MUST_CHECK int ps_message_keys_derive(ps_message_keys *k, const uint8_t seed[PS_KEY_LEN]);

/* The message-key seed for `counter` of a chain at *index, storing the seeds it skips
 * (at most max_skipped, oldest dropped); PS_ERR_DUPLICATE for a used or forgotten one,
 * PS_ERR_TOO_FAR past max_jump. Shared by 1:1 chains and sender keys. */
PS_MUST_CHECK int ps_chain_seed_for(uint8_t chain_key[PS_KEY_LEN], uint32_t *index,
                                    ps_skipped_key **skipped, uint32_t *nskipped, uint32_t counter,
                                    uint32_t max_jump, uint32_t max_skipped,
                                    uint8_t seed[PS_KEY_LEN]);

/* Writes the version byte and a packed protobuf, leaving `extra` bytes of room after it. */
struct ProtobufCMessage;
PS_MUST_CHECK int ps_pack_versioned(ps_bytes *out, const struct ProtobufCMessage *msg, size_t extra);

/* One chain step: seed = HMAC(ck, 0x01), next = HMAC(ck, 0x02). Shared with sender keys. */
void ps_chain_step(const uint8_t chain_key[PS_KEY_LEN], uint8_t seed[PS_KEY_LEN],
                   uint8_t next[PS_KEY_LEN]);

#endif
