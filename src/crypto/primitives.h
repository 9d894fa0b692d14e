/* primitives.h - thin wrappers over libsodium and OpenSSL primitives:
 * X25519, key encoding, HMAC-SHA256, HKDF-SHA256, AES-256-CBC, XEdDSA. */
#ifndef PARLEY_CRYPTO_PRIMITIVES_H
#define PARLEY_CRYPTO_PRIMITIVES_H

#include "ps.h"

/* A protobuf-c allocator whose frees wipe: unpack records that hold keys with it. */
struct ProtobufCAllocator;
extern struct ProtobufCAllocator ps_wiping_allocator;

/* Generates a key pair: 32 random bytes, clamped, public = X25519 base point multiple. */
void ps_keypair_generate(const ps_rng *rng, ps_keypair *kp);

/* Builds a key pair from a private key (clamped on import, as libsignal does). */
void ps_keypair_from_private(ps_keypair *kp, const uint8_t priv[PS_KEY_LEN]);

/* Wipes a key pair. */
void ps_keypair_clear(ps_keypair *kp);

/* X25519: out = DH(priv, pub). Fails on a low-order public key. */
PS_MUST_CHECK int ps_dh(uint8_t out[PS_KEY_LEN], const uint8_t priv[PS_KEY_LEN],
                        const uint8_t pub[PS_KEY_LEN]);

/* Writes 0x05 || u. */
void ps_pubkey_serialize(uint8_t out[PS_PUBKEY_LEN], const uint8_t pub[PS_KEY_LEN]);

/* Reads a 33-byte 0x05 || u key (bit 255 of u clear); anything else is PS_ERR_INVALID_KEY. */
PS_MUST_CHECK int ps_pubkey_parse(uint8_t out[PS_KEY_LEN], const uint8_t *in, size_t len);

/* HMAC-SHA256 over the concatenation of n parts. */
void ps_hmac_sha256(uint8_t out[32], const uint8_t *key, size_t keylen,
                    const uint8_t *const *parts, const size_t *lens, size_t n);

/* HKDF-SHA256 (RFC 5869); salt NULL means 32 zero bytes. */
PS_MUST_CHECK int ps_hkdf(uint8_t *out, size_t outlen, const uint8_t *salt, size_t saltlen,
                          const uint8_t *ikm, size_t ikmlen, const char *info);

/* AES-256-CBC with PKCS#7 padding. Output allocated in *out. */
PS_MUST_CHECK int ps_aes_cbc_encrypt(ps_bytes *out, const uint8_t key[32], const uint8_t iv[16],
                                     const uint8_t *in, size_t len);
PS_MUST_CHECK int ps_aes_cbc_decrypt(ps_bytes *out, const uint8_t key[32], const uint8_t iv[16],
                                     const uint8_t *in, size_t len);

/* XEdDSA as libsignal does it: the Edwards sign bit of the public key rides in sig[63]. */
PS_MUST_CHECK int ps_xeddsa_sign(uint8_t sig[PS_SIG_LEN], const uint8_t priv[PS_KEY_LEN],
                                 const uint8_t *msg, size_t len, const ps_rng *rng);

/* True only for a valid signature of msg by the X25519 public key pub (u-coordinate). */
PS_MUST_CHECK bool ps_xeddsa_verify(const uint8_t pub[PS_KEY_LEN], const uint8_t *msg, size_t len,
                                    const uint8_t sig[PS_SIG_LEN]);

#endif
