/* fixture.h - deterministic Signal state for the fuzz targets: the two parties of
 * the seeded reference transcript (tests/vectors) part-way through their
 * conversation, and a sender-key pair from a seeded generator. The seed corpus
 * in seeds/ holds real messages for exactly this state (make_seeds.c). */
#ifndef PARLEY_FUZZ_FIXTURE_H
#define PARLEY_FUZZ_FIXTURE_H

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "primitives.h"
#include "sender_key.h"
#include "session.h"

typedef struct {
    uint8_t key[randombytes_SEEDBYTES];
    uint64_t counter;
} seeded_rng;

static void seeded_fill(void *ctx, uint8_t *buf, size_t len)
{
    seeded_rng *r = ctx;
    memcpy(r->key, &r->counter, sizeof r->counter);
    r->counter++;
    randombytes_buf_deterministic(buf, len, r->key);
}

/* Hands out fixed private keys in order, as the reference generated them. */
typedef struct {
    const char *const *keys;
    int next, n;
} key_list;

static void key_list_fill(void *ctx, uint8_t *buf, size_t len)
{
    key_list *k = ctx;
    size_t n = 0;
    if (len != 32 || k->next >= k->n ||
        sodium_base642bin(buf, 32, k->keys[k->next], strlen(k->keys[k->next]), NULL, &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || n != 32)
        abort();
    k->next++;
}

static const char *const alice_keys[] = {
    "qCcvh28ClQZcGbb0oyDXZNIOZhD63+x4nk8DpYlhyFE=", "IIYR8ri74P4Kd5VE+eRhFN6XTNF+lE05oUcwOnwRZlU=",
    "gAYVsCBZTEeooK2BDx6duxPk3uqzA3vllKLTbkN1vHE=", "KNNoV9l+1/rHs9P07nm16GzDZTrExQBKbU+Ik3N650E=",
    "wHIqt92/lF8hSLkucAzGwg1Sx5cVde/bxNUXgV2fmVU=", "yLCrqcnDFDwd/BA8G+rJwRryS+Q1Z8TguiZ4LklyVkw=",
};
static const char *const bob_keys[] = {
    "kAvZ0qHqJ3IkPJ7LEytduWCnRdBH7pVdQcoQOs1W83I=", "4Nc6I73z/dhemLeZo5dBNC8EkGJJRUReXIi/twbpb28=",
    "ICU1yDx0UnIFp081cVUPPY3TJ8Hz+v+vBGHtl3rUYnk=", "UKFhXBP4AeCiSkaxFBfhbXldgdfJGuUojagF30WTcUA=",
    "cDq8ZVJJVBZZzUKADgGlF8ITIM3BDgrYBUh1ghi4blM=", "eO8j26YZPT6wgVf3jSerpT/fBndFWw5eesRJhv1jhlc=",
};
/* The transcript's first message: Alice's PreKey message "hello bob". */
static const char first_message[] =
    "MwgfEiEF5gbAHI49j1FSCAEsurOSELImEFhqOuRJ3YuVVIDumWcaIQWJ4DexSTttLWqwnH7GUEWdyjFc/wnn4Lca7AmRaR"
    "QsICJCMwohBXmf4XtcsmGM9VdDabrHeO+eWohw9ASiYqiijx2vQoMxEAAYACIQe7mRnWyFARB0sgBALOE/Z/lZYc2pKbNi"
    "KNcIMAc=";

typedef struct {
    ps_local_identity alice, bob;
    ps_keypair bob_spk, bob_opk;
    ps_session_record alice_rec; /* after sending two PreKey messages */
    ps_session_record bob_rec;   /* after opening the first one */
    ps_sender_key_record sk_sender, sk_receiver;
    ps_rng rng;
    seeded_rng rng_state;
} fixture;

static void keypair_from_b64(ps_keypair *kp, const char *b64)
{
    uint8_t priv[32];
    size_t n = 0;
    if (sodium_base642bin(priv, 32, b64, strlen(b64), NULL, &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || n != 32)
        abort();
    ps_keypair_from_private(kp, priv);
}

static void fixture_init(fixture *f)
{
    if (sodium_init() < 0)
        abort();
    memset(f, 0, sizeof *f);
    f->rng_state.counter = 1;
    f->rng.fill = seeded_fill;
    f->rng.ctx = &f->rng_state;

    keypair_from_b64(&f->alice.identity, alice_keys[0]);
    f->alice.registration_id = 1111;
    keypair_from_b64(&f->bob.identity, bob_keys[0]);
    f->bob.registration_id = 2222;
    keypair_from_b64(&f->bob_spk, bob_keys[1]);
    keypair_from_b64(&f->bob_opk, bob_keys[2]);

    ps_bundle b = {.registration_id = 2222, .device_id = 1, .signed_prekey_id = 7,
                   .has_prekey = true, .prekey_id = 31};
    memcpy(b.identity_key, f->bob.identity.pub, 32);
    memcpy(b.signed_prekey, f->bob_spk.pub, 32);
    memcpy(b.prekey, f->bob_opk.pub, 32);
    uint8_t spk33[33];
    ps_pubkey_serialize(spk33, b.signed_prekey);
    if (ps_xeddsa_sign(b.signed_prekey_signature, f->bob.identity.priv, spk33, 33, &f->rng))
        abort();
    key_list ak = {alice_keys, 2, 6}, bk = {bob_keys, 3, 6};
    ps_rng arng = {key_list_fill, &ak}, brng = {key_list_fill, &bk};
    if (ps_session_initiate(&f->alice_rec, &f->alice, &b, &arng))
        abort();
    for (int i = 0; i < 2; i++) {
        ps_bytes body;
        int type;
        if (ps_session_encrypt(&f->alice_rec, (const uint8_t *)"x", 1, &body, &type))
            abort();
        ps_bytes_free(&body);
    }
    uint8_t msg[512];
    size_t n = 0;
    if (sodium_base642bin(msg, sizeof msg, first_message, strlen(first_message), NULL, &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        abort();
    ps_prekey_message m;
    ps_bytes pt;
    bool used;
    if (ps_prekey_message_parse(&m, msg, n) ||
        ps_session_decrypt_prekey(&f->bob_rec, &f->bob, &m, &f->bob_spk, &f->bob_opk, &pt, &brng,
                                  &used))
        abort();
    ps_prekey_message_clear(&m);
    ps_bytes_free(&pt);

    uint8_t dist[16] = {0x6b, 0x3c, 0x1a, 0x2e, 0x44, 0x10, 0x4d, 0x7f,
                        0x9a, 0x01, 0x5e, 0x77, 0x20, 0x31, 0x88, 0xc4};
    ps_bytes skdm;
    ps_skdm parsed;
    if (ps_sender_key_create(&f->sk_sender, dist, &f->rng, &skdm) ||
        ps_skdm_parse(&parsed, skdm.data, skdm.len) ||
        ps_sender_key_process(&f->sk_receiver, &parsed))
        abort();
    ps_bytes_free(&skdm);
}

#endif
