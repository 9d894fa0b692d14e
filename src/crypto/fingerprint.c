/* fingerprint.c - safety numbers as libsignal's NumericFingerprintGenerator makes them:
 * per party, hash = SHA-512(0x0000 || key33 || id), then hash = SHA-512(hash || key33)
 * for each further iteration; 30 bytes of it become six 5-digit groups. */
#include "fingerprint.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "primitives.h"
#include "signal.pb-c.h"

static void party_hash(uint8_t out[64], uint32_t iterations, const uint8_t *id, size_t id_len,
                       const uint8_t key[PS_KEY_LEN])
{
    static const uint8_t fingerprint_version[2] = {0, 0};
    uint8_t key33[PS_PUBKEY_LEN];
    crypto_hash_sha512_state st;
    ps_pubkey_serialize(key33, key);
    crypto_hash_sha512_init(&st);
    crypto_hash_sha512_update(&st, fingerprint_version, sizeof fingerprint_version);
    crypto_hash_sha512_update(&st, key33, sizeof key33);
    crypto_hash_sha512_update(&st, id, id_len);
    crypto_hash_sha512_update(&st, key33, sizeof key33);
    crypto_hash_sha512_final(&st, out);
    for (uint32_t i = 1; i < iterations; i++) {
        crypto_hash_sha512_init(&st);
        crypto_hash_sha512_update(&st, out, 64);
        crypto_hash_sha512_update(&st, key33, sizeof key33);
        crypto_hash_sha512_final(&st, out);
    }
}

/* 30 digits from the first 30 bytes: six 40-bit big-endian chunks, each mod 100000. */
static void encode_digits(char out[31], const uint8_t hash[64])
{
    for (int i = 0; i < 6; i++) {
        uint64_t v = 0;
        for (int j = 0; j < 5; j++)
            v = (v << 8) | hash[i * 5 + j];
        snprintf(out + i * 5, 6, "%05u", (unsigned)(v % 100000));
    }
}

int ps_safety_number(char digits[PS_SAFETY_DIGITS + 1], ps_bytes *scannable, uint32_t version,
                     uint32_t iterations, const uint8_t *local_id, size_t local_id_len,
                     const uint8_t local_key[PS_KEY_LEN], const uint8_t *remote_id,
                     size_t remote_id_len, const uint8_t remote_key[PS_KEY_LEN])
{
    uint8_t lh[64], rh[64];
    char ld[31], rd[31];
    if (iterations == 0)
        return PS_ERR_INTERNAL;
    party_hash(lh, iterations, local_id, local_id_len, local_key);
    party_hash(rh, iterations, remote_id, remote_id_len, remote_key);
    encode_digits(ld, lh);
    encode_digits(rd, rh);
    bool local_first = strcmp(ld, rd) <= 0;
    snprintf(digits, PS_SAFETY_DIGITS + 1, "%s%s", local_first ? ld : rd, local_first ? rd : ld);

    Signalwire__LogicalFingerprint lf = SIGNALWIRE__LOGICAL_FINGERPRINT__INIT;
    Signalwire__LogicalFingerprint rf = SIGNALWIRE__LOGICAL_FINGERPRINT__INIT;
    lf.has_content = 1;
    lf.content = (ProtobufCBinaryData){32, lh};
    rf.has_content = 1;
    rf.content = (ProtobufCBinaryData){32, rh};
    Signalwire__CombinedFingerprints cf = SIGNALWIRE__COMBINED_FINGERPRINTS__INIT;
    cf.has_version = 1;
    cf.version = version;
    cf.local_fingerprint = &lf;
    cf.remote_fingerprint = &rf;
    scannable->len = signalwire__combined_fingerprints__get_packed_size(&cf);
    scannable->data = malloc(scannable->len);
    if (!scannable->data) {
        scannable->len = 0;
        return PS_ERR_NOMEM;
    }
    signalwire__combined_fingerprints__pack(&cf, scannable->data);
    return PS_OK;
}
