/* sender_key.h - Sender Keys for groups, in libsignal's current format
 * (distribution UUID; SenderKeyMessage signed with XEdDSA; SKDM unsigned).
 *
 * One record per (sender device, distribution id), holding up to 5 chain states
 * (newest first). The sender's own record holds the signing private key. */
#ifndef PARLEY_CRYPTO_SENDER_KEY_H
#define PARLEY_CRYPTO_SENDER_KEY_H

#include "ps.h"
#include "session.h"

typedef struct {
    uint32_t chain_id;
    uint32_t iteration;                 /* iteration chain_key yields next */
    uint8_t chain_key[PS_KEY_LEN];
    uint8_t signing_public[PS_KEY_LEN];
    bool has_signing_private;
    uint8_t signing_private[PS_KEY_LEN];
    ps_skipped_key *skipped;            /* oldest first, at most PS_SK_MAX_SKIPPED_KEYS */
    uint32_t nskipped;
} ps_sk_state;

typedef struct {
    uint8_t distribution_id[PS_UUID_LEN];
    ps_sk_state states[PS_SK_MAX_STATES]; /* newest first */
    uint32_t nstates;
} ps_sender_key_record;

/* A parsed SenderKeyDistributionMessage. */
typedef struct {
    uint8_t distribution_id[PS_UUID_LEN];
    uint32_t chain_id;
    uint32_t iteration;
    uint8_t chain_key[PS_KEY_LEN];
    uint8_t signing_key[PS_KEY_LEN];
} ps_skdm;

void ps_sender_key_record_clear(ps_sender_key_record *rec);

/* Our own sending record: creates a chain (random 31-bit chain id, fresh signing key)
 * when the record is empty, then writes the SKDM for its current iteration. */
PS_MUST_CHECK int ps_sender_key_create(ps_sender_key_record *rec, const uint8_t dist[PS_UUID_LEN],
                                       const ps_rng *rng, ps_bytes *skdm);

PS_MUST_CHECK int ps_skdm_parse(ps_skdm *m, const uint8_t *body, size_t len);

/* Adds the state an SKDM describes to a peer's record (same chain and key: kept). */
PS_MUST_CHECK int ps_sender_key_process(ps_sender_key_record *rec, const ps_skdm *m);

/* Encrypts with our newest state: 0x33 || SenderKeyMessage || XEdDSA signature. */
PS_MUST_CHECK int ps_sender_key_encrypt(ps_sender_key_record *rec, const uint8_t *plaintext,
                                        size_t len, const ps_rng *rng, ps_bytes *out);

/* Reads the distribution id of a SenderKeyMessage, to find its record. */
PS_MUST_CHECK int ps_sender_key_message_distribution(const uint8_t *body, size_t len,
                                                     uint8_t dist[PS_UUID_LEN]);

/* Verifies and decrypts; the record changes only on success. */
PS_MUST_CHECK int ps_sender_key_decrypt(ps_sender_key_record *rec, const uint8_t *body, size_t len,
                                        ps_bytes *plaintext);

PS_MUST_CHECK int ps_sender_key_record_serialize(const ps_sender_key_record *rec, ps_bytes *out);
PS_MUST_CHECK int ps_sender_key_record_deserialize(ps_sender_key_record *rec, const uint8_t *in,
                                                   size_t len);

#endif
