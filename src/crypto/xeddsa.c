/* xeddsa.c - XEdDSA signatures over Curve25519 keys, libsignal's variant.
 *
 * libsignal does not negate the private scalar as the XEdDSA paper does; it keeps
 * it and stores the Edwards public key's sign bit in the unused top bit of s
 * (sig[63] bit 7). Verifiers map u to Edwards y = (u - 1) / (u + 1), restore the
 * sign bit from the signature and check an ordinary Ed25519 signature. libsodium
 * has every group operation but not the field map, which OpenSSL's BIGNUM does. */
#include "primitives.h"

#include <openssl/bn.h>
#include <sodium.h>
#include <string.h>

/* 2^255 - 19, big-endian. */
static const uint8_t field_prime_be[32] = {
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xed,
};

int ps_xeddsa_sign(uint8_t sig[PS_SIG_LEN], const uint8_t priv[PS_KEY_LEN],
                   const uint8_t *msg, size_t len, const ps_rng *rng)
{
    static const uint8_t hash1_prefix[32] = {
        0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    };
    uint8_t a[32], A[32], Z[64], nonce_hash[64], r[32], R[32];
    uint8_t h_hash[64], h[32], a_wide[64], a_red[32], s[32];
    crypto_hash_sha512_state st;
    int rc = PS_ERR_INTERNAL;

    memcpy(a, priv, 32);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    if (crypto_scalarmult_ed25519_base_noclamp(A, a) != 0)
        goto out;

    ps_random(rng, Z, sizeof Z);
    crypto_hash_sha512_init(&st);
    crypto_hash_sha512_update(&st, hash1_prefix, sizeof hash1_prefix);
    crypto_hash_sha512_update(&st, a, sizeof a);
    crypto_hash_sha512_update(&st, msg, len);
    crypto_hash_sha512_update(&st, Z, sizeof Z);
    crypto_hash_sha512_final(&st, nonce_hash);
    crypto_core_ed25519_scalar_reduce(r, nonce_hash);
    if (crypto_scalarmult_ed25519_base_noclamp(R, r) != 0)
        goto out;

    crypto_hash_sha512_init(&st);
    crypto_hash_sha512_update(&st, R, sizeof R);
    crypto_hash_sha512_update(&st, A, sizeof A);
    crypto_hash_sha512_update(&st, msg, len);
    crypto_hash_sha512_final(&st, h_hash);
    crypto_core_ed25519_scalar_reduce(h, h_hash);

    memset(a_wide, 0, sizeof a_wide);
    memcpy(a_wide, a, 32);
    crypto_core_ed25519_scalar_reduce(a_red, a_wide);
    crypto_core_ed25519_scalar_mul(s, h, a_red);
    crypto_core_ed25519_scalar_add(s, s, r);

    memcpy(sig, R, 32);
    memcpy(sig + 32, s, 32);
    sig[63] = (uint8_t)((sig[63] & 0x7f) | (A[31] & 0x80));
    rc = PS_OK;
out:
    sodium_memzero(a, sizeof a);
    sodium_memzero(Z, sizeof Z);
    sodium_memzero(nonce_hash, sizeof nonce_hash);
    sodium_memzero(r, sizeof r);
    sodium_memzero(a_wide, sizeof a_wide);
    sodium_memzero(a_red, sizeof a_red);
    sodium_memzero(&st, sizeof st);
    return rc;
}

/* Edwards y (little-endian) of the Montgomery u-coordinate; fails for u = -1. */
static bool montgomery_to_edwards_y(uint8_t y_le[32], const uint8_t u_le[32])
{
    uint8_t u_masked[32];
    bool ok = false;
    memcpy(u_masked, u_le, 32);
    u_masked[31] &= 0x7f;

    BN_CTX *ctx = BN_CTX_new();
    if (!ctx)
        return false;
    BN_CTX_start(ctx);
    BIGNUM *p = BN_CTX_get(ctx), *u = BN_CTX_get(ctx), *num = BN_CTX_get(ctx);
    BIGNUM *den = BN_CTX_get(ctx), *inv = BN_CTX_get(ctx), *y = BN_CTX_get(ctx);
    if (!y || !BN_bin2bn(field_prime_be, 32, p) || !BN_lebin2bn(u_masked, 32, u) ||
        !BN_nnmod(u, u, p, ctx))
        goto out;
    if (!BN_sub(num, u, BN_value_one()) || !BN_nnmod(num, num, p, ctx) ||
        !BN_add(den, u, BN_value_one()) || !BN_nnmod(den, den, p, ctx))
        goto out;
    if (BN_is_zero(den))
        goto out;
    if (!BN_mod_inverse(inv, den, p, ctx) || !BN_mod_mul(y, num, inv, p, ctx) ||
        BN_bn2lebinpad(y, y_le, 32) != 32)
        goto out;
    ok = true;
out:
    BN_CTX_end(ctx);
    BN_CTX_free(ctx);
    return ok;
}

bool ps_xeddsa_verify(const uint8_t pub[PS_KEY_LEN], const uint8_t *msg, size_t len,
                      const uint8_t sig[PS_SIG_LEN])
{
    uint8_t A[32], s[PS_SIG_LEN];
    if (!montgomery_to_edwards_y(A, pub))
        return false;
    A[31] = (uint8_t)((A[31] & 0x7f) | (sig[63] & 0x80));
    memcpy(s, sig, PS_SIG_LEN);
    s[63] &= 0x7f;
    return crypto_sign_ed25519_verify_detached(s, msg, len, A) == 0;
}
