/* ps.h - Parley's Signal protocol: shared types, limits and error codes.
 *
 * Everything under src/crypto/ is pure computation: no I/O, no globals. Secrets
 * live in caller-owned structs and are wiped by the *_clear / *_free functions.
 * Randomness comes from a ps_rng the caller passes, or libsodium when it is NULL
 * (tests pass a deterministic one to reproduce the reference's transcript).
 * Callers must have called sodium_init() once before using anything here. */
#ifndef PARLEY_CRYPTO_PS_H
#define PARLEY_CRYPTO_PS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PS_MUST_CHECK __attribute__((warn_unused_result))

#define PS_KEY_LEN 32       /* X25519 private key, u-coordinate, chain/root keys */
#define PS_PUBKEY_LEN 33    /* 0x05 || u, as every key travels on the wire */
#define PS_SIG_LEN 64       /* XEdDSA signature */
#define PS_DJB_TYPE 0x05
#define PS_UUID_LEN 16

/* Message version byte: (message_version << 4) | current_version. We write 0x33;
 * we read 0x33 and the official Rust library's 0x34 (SIGNAL-NOTES 2.6). */
#define PS_VERSION_BYTE 0x33
#define PS_MAC_LEN 8

/* Limits; no reference peer pushes us past what it accepts itself (notes 2.9). */
#define PS_MAX_FORWARD_JUMP 2000      /* 1:1 chain: messages skipped in one step */
#define PS_MAX_SKIPPED_KEYS 2000      /* stored skipped message keys per chain */
#define PS_MAX_RECEIVER_CHAINS 5
#define PS_MAX_ARCHIVED_SESSIONS 40
#define PS_SK_MAX_FORWARD_JUMP 25000  /* sender keys, as libsignal's MAX_FORWARD_JUMPS */
#define PS_SK_MAX_SKIPPED_KEYS 2000
#define PS_SK_MAX_STATES 5

#define PS_FINGERPRINT_ITERATIONS 5200

typedef enum {
    PS_OK = 0,
    PS_ERR_NOMEM = -1,
    PS_ERR_INVALID_MESSAGE = -2,   /* malformed bytes, missing fields */
    PS_ERR_VERSION = -3,           /* unsupported version byte */
    PS_ERR_INVALID_KEY = -4,       /* bad key encoding or low-order point */
    PS_ERR_BAD_MAC = -5,           /* tampered or not for this session */
    PS_ERR_BAD_SIGNATURE = -6,
    PS_ERR_DUPLICATE = -7,         /* message key already used (replay) */
    PS_ERR_TOO_FAR = -8,           /* counter beyond the forward-jump limit */
    PS_ERR_NO_SESSION = -9,
    PS_ERR_NO_PREKEY = -10,        /* PreKey message names a key we do not have */
    PS_ERR_NO_SENDER_KEY = -11,
    PS_ERR_BAD_STATE = -12,        /* serialized state is corrupt or of an unknown version */
    PS_ERR_INTERNAL = -13,
} ps_err;

/* A human-readable name for an error code. */
const char *ps_strerror(int err);

/* Source of randomness: fill(ctx, buf, len) must fill buf completely. */
typedef struct ps_rng {
    void (*fill)(void *ctx, uint8_t *buf, size_t len);
    void *ctx;
} ps_rng;

/* Fills buf from rng, or from libsodium's CSPRNG when rng is NULL. */
void ps_random(const ps_rng *rng, uint8_t *buf, size_t len);

/* A heap byte string. ps_bytes_free wipes before freeing (it may hold plaintext). */
typedef struct {
    uint8_t *data;
    size_t len;
} ps_bytes;

void ps_bytes_free(ps_bytes *b);

/* Curve25519 key pair: pub is the 32-byte u-coordinate, priv is clamped. */
typedef struct {
    uint8_t pub[PS_KEY_LEN];
    uint8_t priv[PS_KEY_LEN];
} ps_keypair;

#endif
