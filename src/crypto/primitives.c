/* primitives.c - libsodium/OpenSSL wrappers used by the Signal protocol code. */
#include "primitives.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <protobuf-c/protobuf-c.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

const char *ps_strerror(int err)
{
    switch (err) {
    case PS_OK: return "ok";
    case PS_ERR_NOMEM: return "out of memory";
    case PS_ERR_INVALID_MESSAGE: return "invalid message";
    case PS_ERR_VERSION: return "unsupported message version";
    case PS_ERR_INVALID_KEY: return "invalid key";
    case PS_ERR_BAD_MAC: return "bad MAC";
    case PS_ERR_BAD_SIGNATURE: return "bad signature";
    case PS_ERR_DUPLICATE: return "duplicate message";
    case PS_ERR_TOO_FAR: return "message too far into the future";
    case PS_ERR_NO_SESSION: return "no session";
    case PS_ERR_NO_PREKEY: return "unknown prekey";
    case PS_ERR_NO_SENDER_KEY: return "no sender key";
    case PS_ERR_BAD_STATE: return "corrupt or unknown serialized state";
    default: return "internal error";
    }
}

void ps_random(const ps_rng *rng, uint8_t *buf, size_t len)
{
    if (rng && rng->fill)
        rng->fill(rng->ctx, buf, len);
    else
        randombytes_buf(buf, len);
}

void ps_bytes_free(ps_bytes *b)
{
    if (b->data) {
        sodium_memzero(b->data, b->len);
        free(b->data);
    }
    b->data = NULL;
    b->len = 0;
}

void ps_keypair_from_private(ps_keypair *kp, const uint8_t priv[PS_KEY_LEN])
{
    memcpy(kp->priv, priv, PS_KEY_LEN);
    kp->priv[0] &= 248;
    kp->priv[31] &= 127;
    kp->priv[31] |= 64;
    crypto_scalarmult_base(kp->pub, kp->priv);
}

void ps_keypair_generate(const ps_rng *rng, ps_keypair *kp)
{
    uint8_t seed[PS_KEY_LEN];
    ps_random(rng, seed, sizeof seed);
    ps_keypair_from_private(kp, seed);
    sodium_memzero(seed, sizeof seed);
}

void ps_keypair_clear(ps_keypair *kp)
{
    sodium_memzero(kp, sizeof *kp);
}

int ps_dh(uint8_t out[PS_KEY_LEN], const uint8_t priv[PS_KEY_LEN], const uint8_t pub[PS_KEY_LEN])
{
    return crypto_scalarmult(out, priv, pub) == 0 ? PS_OK : PS_ERR_INVALID_KEY;
}

void ps_pubkey_serialize(uint8_t out[PS_PUBKEY_LEN], const uint8_t pub[PS_KEY_LEN])
{
    out[0] = PS_DJB_TYPE;
    memcpy(out + 1, pub, PS_KEY_LEN);
}

int ps_pubkey_parse(uint8_t out[PS_KEY_LEN], const uint8_t *in, size_t len)
{
    /* Bit 255 of u is never set by an honest encoder and X25519 ignores it; refusing
     * it keeps one encoding per key (a base key names its session byte for byte). */
    if (len != PS_PUBKEY_LEN || in[0] != PS_DJB_TYPE || (in[PS_PUBKEY_LEN - 1] & 0x80))
        return PS_ERR_INVALID_KEY;
    memcpy(out, in + 1, PS_KEY_LEN);
    return PS_OK;
}

/* Above this many bytes OpenSSL's HMAC is used: it has the CPU's SHA extensions
 * (about 4x libsodium's speed on a 10 KB message here); below it libsodium's is
 * quicker and needs no copy. */
#define HMAC_OPENSSL_THRESHOLD 1024

void ps_hmac_sha256(uint8_t out[32], const uint8_t *key, size_t keylen,
                    const uint8_t *const *parts, const size_t *lens, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += lens[i];
    uint8_t *joined = total >= HMAC_OPENSSL_THRESHOLD && keylen <= INT32_MAX ? malloc(total) : NULL;
    if (joined) {
        size_t at = 0;
        unsigned int outlen = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(joined + at, parts[i], lens[i]);
            at += lens[i];
        }
        bool ok = HMAC(EVP_sha256(), key, (int)keylen, joined, total, out, &outlen) != NULL &&
                  outlen == 32;
        sodium_memzero(joined, total);
        free(joined);
        if (ok)
            return;
    }
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, keylen);
    for (size_t i = 0; i < n; i++)
        crypto_auth_hmacsha256_update(&st, parts[i], lens[i]);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

int ps_hkdf(uint8_t *out, size_t outlen, const uint8_t *salt, size_t saltlen,
            const uint8_t *ikm, size_t ikmlen, const char *info)
{
    static const uint8_t zero_salt[32];
    if (!salt) {
        salt = zero_salt;
        saltlen = sizeof zero_salt;
    }
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    if (!kdf)
        return PS_ERR_INTERNAL;
    EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (!ctx)
        return PS_ERR_NOMEM;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info)),
        OSSL_PARAM_construct_end(),
    };
    int ok = EVP_KDF_derive(ctx, out, outlen, params);
    EVP_KDF_CTX_free(ctx);
    if (ok != 1)
        ERR_clear_error();
    return ok == 1 ? PS_OK : PS_ERR_INTERNAL;
}

static int aes_cbc(ps_bytes *out, int enc, const uint8_t key[32], const uint8_t iv[16],
                   const uint8_t *in, size_t len)
{
    out->data = NULL;
    out->len = 0;
    if (len > (size_t)INT32_MAX - 32)
        return PS_ERR_INVALID_MESSAGE;
    if (!enc && (len == 0 || len % 16 != 0))
        return PS_ERR_INVALID_MESSAGE;
    uint8_t *buf = malloc(len + 16);
    if (!buf)
        return PS_ERR_NOMEM;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n1 = 0, n2 = 0, rc = PS_ERR_NOMEM;
    if (!ctx)
        goto fail;
    rc = enc ? PS_ERR_INTERNAL : PS_ERR_INVALID_MESSAGE;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_cbc(), NULL, key, iv, enc) != 1 ||
        EVP_CipherUpdate(ctx, buf, &n1, in, (int)len) != 1 ||
        EVP_CipherFinal_ex(ctx, buf + n1, &n2) != 1)
        goto fail;
    EVP_CIPHER_CTX_free(ctx);
    out->data = buf;
    out->len = (size_t)n1 + (size_t)n2;
    return PS_OK;
fail:
    ERR_clear_error(); /* a bad padding leaves an entry; do not let them pile up */
    EVP_CIPHER_CTX_free(ctx);
    sodium_memzero(buf, len + 16);
    free(buf);
    return rc;
}

int ps_aes_cbc_encrypt(ps_bytes *out, const uint8_t key[32], const uint8_t iv[16],
                       const uint8_t *in, size_t len)
{
    return aes_cbc(out, 1, key, iv, in, len);
}

int ps_aes_cbc_decrypt(ps_bytes *out, const uint8_t key[32], const uint8_t iv[16],
                       const uint8_t *in, size_t len)
{
    return aes_cbc(out, 0, key, iv, in, len);
}

/* protobuf-c copies every bytes field it unpacks; for records that hold keys those
 * copies must be wiped when freed, so the block remembers its size in a header. */
#define WIPE_HEADER 16 /* keeps the malloc alignment */

static void *wiping_alloc(void *data, size_t size)
{
    (void)data;
    uint8_t *base = malloc(size + WIPE_HEADER);
    if (!base)
        return NULL;
    memcpy(base, &size, sizeof size);
    return base + WIPE_HEADER;
}

static void wiping_free(void *data, void *ptr)
{
    (void)data;
    if (!ptr)
        return;
    uint8_t *base = (uint8_t *)ptr - WIPE_HEADER;
    size_t size;
    memcpy(&size, base, sizeof size);
    sodium_memzero(ptr, size);
    free(base);
}

ProtobufCAllocator ps_wiping_allocator = {wiping_alloc, wiping_free, NULL};
