/* keys.h - serialization of identity, signed-prekey and one-time prekey records. */
#ifndef PARLEY_CRYPTO_KEYS_H
#define PARLEY_CRYPTO_KEYS_H

#include "ps.h"

typedef enum { PS_KEY_IDENTITY = 1, PS_KEY_SIGNED_PREKEY = 2, PS_KEY_ONE_TIME_PREKEY = 3 } ps_key_kind;

typedef struct {
    ps_key_kind kind;
    uint32_t id;                     /* prekey id; registration id for an identity */
    ps_keypair pair;
    bool has_signature;              /* signed prekeys: XEdDSA by the identity over 0x05||pub */
    uint8_t signature[PS_SIG_LEN];
    uint64_t created_at;             /* signed prekeys: seconds since the epoch */
} ps_key_record;

PS_MUST_CHECK int ps_key_record_serialize(const ps_key_record *k, ps_bytes *out);

/* Refuses unknown formats, wrong lengths, and a public key that does not match the private one. */
PS_MUST_CHECK int ps_key_record_deserialize(ps_key_record *k, const uint8_t *in, size_t len);

#endif
