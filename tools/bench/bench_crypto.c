/* bench_crypto.c - cost of the Signal code on this machine: encrypt+decrypt per
 * message (same chain, and with a DH ratchet step per message), X3DH session
 * setup, XEdDSA, sender keys. Prints a table on stderr and one JSON object on stdout.
 *   parley-bench-crypto [--seconds S]   (S per measurement, default 1) */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "primitives.h"
#include "sender_key.h"
#include "session.h"

typedef struct {
    ps_local_identity me;
    ps_keypair spk, opk;
    uint8_t spk_sig[64];
    ps_session_record rec;
} party;

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench-crypto: %s: %s\n", what, ps_strerror(rc));
    exit(1);
}

static void party_init(party *p)
{
    uint8_t spk33[33];
    memset(p, 0, sizeof *p);
    p->me.registration_id = 1 + randombytes_uniform(0x3fff);
    ps_keypair_generate(NULL, &p->me.identity);
    ps_keypair_generate(NULL, &p->spk);
    ps_keypair_generate(NULL, &p->opk);
    ps_pubkey_serialize(spk33, p->spk.pub);
    int rc = ps_xeddsa_sign(p->spk_sig, p->me.identity.priv, spk33, 33, NULL);
    if (rc)
        die("sign", rc);
}

static void bundle_of(const party *p, ps_bundle *b)
{
    memset(b, 0, sizeof *b);
    b->registration_id = p->me.registration_id;
    b->device_id = 1;
    memcpy(b->identity_key, p->me.identity.pub, 32);
    b->signed_prekey_id = 1;
    memcpy(b->signed_prekey, p->spk.pub, 32);
    memcpy(b->signed_prekey_signature, p->spk_sig, 64);
    b->has_prekey = true;
    b->prekey_id = 1;
    memcpy(b->prekey, p->opk.pub, 32);
}

static void deliver(party *to, int type, const ps_bytes *body)
{
    ps_bytes pt;
    int rc;
    if (type == PS_MSG_PREKEY) {
        ps_prekey_message m;
        bool used;
        if ((rc = ps_prekey_message_parse(&m, body->data, body->len)))
            die("parse", rc);
        rc = ps_session_decrypt_prekey(&to->rec, &to->me, &m, &to->spk, &to->opk, &pt, NULL, &used);
        ps_prekey_message_clear(&m);
    } else {
        rc = ps_session_decrypt(&to->rec, body->data, body->len, &pt, NULL);
    }
    if (rc)
        die("decrypt", rc);
    ps_bytes_free(&pt);
}

static void send_one(party *from, party *to, const uint8_t *msg, size_t len)
{
    ps_bytes body;
    int type, rc;
    if ((rc = ps_session_encrypt(&from->rec, msg, len, &body, &type)))
        die("encrypt", rc);
    deliver(to, type, &body);
    ps_bytes_free(&body);
}

/* µs per encrypt+decrypt; alternate = each message goes the other way (a DH step each). */
static double bench_messages(size_t size, bool alternate, double seconds, long *count)
{
    static party a, b;
    party_init(&a);
    party_init(&b);
    ps_bundle bb;
    bundle_of(&b, &bb);
    int rc = ps_session_initiate(&a.rec, &a.me, &bb, NULL);
    if (rc)
        die("initiate", rc);
    uint8_t *msg = malloc(size);
    randombytes_buf(msg, size);
    send_one(&a, &b, msg, size);
    send_one(&b, &a, msg, size);
    long n = 0;
    double start = clock_mono_us(), end = start + seconds * 1e6, t;
    do {
        for (int i = 0; i < 64; i++, n++) {
            if (alternate && (n & 1))
                send_one(&b, &a, msg, size);
            else
                send_one(&a, &b, msg, size);
        }
    } while ((t = clock_mono_us()) < end);
    free(msg);
    ps_session_record_clear(&a.rec);
    ps_session_record_clear(&b.rec);
    *count = n;
    return (t - start) / (double)n;
}

/* µs per session setup: verify bundle + X3DH + first PreKey message + responder opens it. */
static double bench_setup(double seconds, long *count)
{
    static party a, b;
    party_init(&a);
    party_init(&b);
    ps_bundle bb;
    bundle_of(&b, &bb);
    long n = 0;
    double start = clock_mono_us(), end = start + seconds * 1e6, t;
    do {
        for (int i = 0; i < 16; i++, n++) {
            ps_session_record ra = {0}, rb = {0};
            a.rec = ra;
            b.rec = rb;
            int rc = ps_session_initiate(&a.rec, &a.me, &bb, NULL);
            if (rc)
                die("initiate", rc);
            send_one(&a, &b, (const uint8_t *)"hello", 5);
            ps_session_record_clear(&a.rec);
            ps_session_record_clear(&b.rec);
        }
    } while ((t = clock_mono_us()) < end);
    *count = n;
    return (t - start) / (double)n;
}

static double bench_xeddsa(bool verify, double seconds, long *count)
{
    ps_keypair k;
    uint8_t msg[33], sig[64];
    ps_keypair_generate(NULL, &k);
    randombytes_buf(msg, sizeof msg);
    if (ps_xeddsa_sign(sig, k.priv, msg, sizeof msg, NULL))
        die("sign", PS_ERR_INTERNAL);
    long n = 0, bad = 0;
    double start = clock_mono_us(), end = start + seconds * 1e6, t;
    do {
        for (int i = 0; i < 32; i++, n++) {
            if (verify)
                bad += !ps_xeddsa_verify(k.pub, msg, sizeof msg, sig);
            else
                bad += ps_xeddsa_sign(sig, k.priv, msg, sizeof msg, NULL) != PS_OK;
        }
    } while ((t = clock_mono_us()) < end);
    if (bad)
        die("xeddsa", PS_ERR_BAD_SIGNATURE);
    *count = n;
    return (t - start) / (double)n;
}

static double bench_group(size_t size, double seconds, long *count)
{
    static ps_sender_key_record mine, theirs;
    uint8_t dist[16];
    ps_bytes skdm, body, pt;
    ps_skdm m;
    randombytes_buf(dist, sizeof dist);
    memset(&mine, 0, sizeof mine);
    memset(&theirs, 0, sizeof theirs);
    int rc;
    if ((rc = ps_sender_key_create(&mine, dist, NULL, &skdm)) ||
        (rc = ps_skdm_parse(&m, skdm.data, skdm.len)) || (rc = ps_sender_key_process(&theirs, &m)))
        die("sender key", rc);
    ps_bytes_free(&skdm);
    uint8_t *msg = malloc(size);
    randombytes_buf(msg, size);
    long n = 0;
    double start = clock_mono_us(), end = start + seconds * 1e6, t;
    do {
        for (int i = 0; i < 32; i++, n++) {
            if ((rc = ps_sender_key_encrypt(&mine, msg, size, NULL, &body)) ||
                (rc = ps_sender_key_decrypt(&theirs, body.data, body.len, &pt)))
                die("group message", rc);
            ps_bytes_free(&body);
            ps_bytes_free(&pt);
        }
    } while ((t = clock_mono_us()) < end);
    free(msg);
    ps_sender_key_record_clear(&mine);
    ps_sender_key_record_clear(&theirs);
    *count = n;
    return (t - start) / (double)n;
}

int main(int argc, char **argv)
{
    double seconds = 1.0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else {
            fprintf(stderr, "usage: parley-bench-crypto [--seconds S]\n");
            return 2;
        }
    }
    if (sodium_init() < 0 || seconds <= 0)
        return 1;
    struct {
        const char *key, *label;
        double us;
        long n;
    } r[] = {
        {"message_100b_us", "encrypt+decrypt, 100 B, same chain", 0, 0},
        {"message_10kb_us", "encrypt+decrypt, 10 KB, same chain", 0, 0},
        {"message_100b_ratchet_us", "encrypt+decrypt, 100 B, DH step each", 0, 0},
        {"message_10kb_ratchet_us", "encrypt+decrypt, 10 KB, DH step each", 0, 0},
        {"session_setup_us", "X3DH setup + first PreKey message", 0, 0},
        {"xeddsa_sign_us", "XEdDSA sign", 0, 0},
        {"xeddsa_verify_us", "XEdDSA verify", 0, 0},
        {"group_100b_us", "sender key encrypt+decrypt, 100 B", 0, 0},
    };
    r[0].us = bench_messages(100, false, seconds, &r[0].n);
    r[1].us = bench_messages(10240, false, seconds, &r[1].n);
    r[2].us = bench_messages(100, true, seconds, &r[2].n);
    r[3].us = bench_messages(10240, true, seconds, &r[3].n);
    r[4].us = bench_setup(seconds, &r[4].n);
    r[5].us = bench_xeddsa(false, seconds, &r[5].n);
    r[6].us = bench_xeddsa(true, seconds, &r[6].n);
    r[7].us = bench_group(100, seconds, &r[7].n);
    size_t nr = sizeof r / sizeof r[0];
    fprintf(stderr, "%-40s %10s %10s\n", "parley (C)", "us/op", "ops");
    for (size_t i = 0; i < nr; i++)
        fprintf(stderr, "%-40s %10.2f %10ld\n", r[i].label, r[i].us, r[i].n);
    printf("{\"implementation\":\"parley\"");
    for (size_t i = 0; i < nr; i++)
        printf(",\"%s\":%.2f", r[i].key, r[i].us);
    printf("}\n");
    return 0;
}
