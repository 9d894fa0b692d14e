/* bench_client.c - the cost of end-to-end encryption in libparley: two profiles in a
 * temporary directory, driven through the session layer (src/client/e2e.c) with the
 * real SQLite store (WAL, synchronous=FULL: each transaction is an fsync), no network.
 *
 *   (a) session setup: Bob's bundle -> X3DH on Alice's side (identity recorded, session
 *       stored), the first PreKey message encrypted and stored, decrypted on Bob's side
 *       with his prekeys, and stored with the message (one-time prekey deleted);
 *   (b) steady state per 100-byte message: encrypt + store the session (one
 *       transaction), decrypt + store the session and the message (one transaction);
 *   (c) the same steps on in-memory records: crypto only, and crypto with the session
 *       record serialized and parsed as the store does, so the SQLite share is visible.
 *
 * Prints a table, then one JSON line.
 *   parley-bench-client [--seconds S]   (S per measurement, default 2; the whole run
 *                                        takes about 6 S) */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "e2e.h"
#include "primitives.h"

#define TEXT_LEN 100

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench-client: %s: %s\n", what, e2e_strerror(rc));
    exit(1);
}

typedef struct {
    const char *phone;
    uint8_t account[DB_ID_LEN];
    db *d;
    e2e_prekey pool[E2E_PREKEY_BATCH];   /* one-time prekeys "on the server" */
    size_t pool_n, pool_next;
} profile;

static void profile_open(profile *p, const char *top, const char *name, const char *phone, uint8_t acct)
{
    char dir[600], err[300];
    memset(p, 0, sizeof *p);
    p->phone = phone;
    memset(p->account, acct, DB_ID_LEN);
    snprintf(dir, sizeof dir, "%s/%s", top, name);
    if (db_open(&p->d, dir, err, sizeof err) != DB_OK) {
        fprintf(stderr, "bench-client: %s\n", err);
        exit(1);
    }
    ps_keypair kp;
    ps_keypair_generate(NULL, &kp);
    if (db_identity_create(p->d, kp.priv, 1 + randombytes_uniform(16380)) != DB_OK ||
        db_identity_set_registered(p->d, phone, p->account, 1) != DB_OK)
        die("profile", E2E_ERR_STORAGE);
    ps_keypair_clear(&kp);
    e2e_signed_prekey spk;
    int rc = e2e_signed_prekey_new(p->d, 1000, &spk);
    if (rc)
        die("signed prekey", rc);
}

/* The next bundle the server would hand out for p (uploading a batch when the pool is empty). */
static void next_bundle(profile *p, ps_bundle *b)
{
    if (p->pool_next == p->pool_n) {
        uint32_t ids[E2E_PREKEY_BATCH];
        int rc = e2e_prekeys_to_upload(p->d, E2E_PREKEY_BATCH, p->pool, &p->pool_n);
        if (rc)
            die("prekeys", rc);
        for (size_t i = 0; i < p->pool_n; i++)
            ids[i] = p->pool[i].id;
        if (db_prekeys_uploaded(p->d, ids, p->pool_n) != DB_OK)
            die("prekeys", E2E_ERR_STORAGE);
        p->pool_next = 0;
    }
    e2e_signed_prekey spk;
    uint8_t id33[33], spk33[33], pk33[33];
    int rc = e2e_signed_prekey_current(p->d, &spk);
    if (rc || (rc = e2e_identity_public(p->d, id33)))
        die("bundle", rc);
    ps_pubkey_serialize(spk33, spk.pub);
    const e2e_prekey *pk = &p->pool[p->pool_next++];
    ps_pubkey_serialize(pk33, pk->pub);
    db_identity ident;
    db_identity_get(p->d, &ident);
    if ((rc = e2e_bundle_parse(b, 1, ident.registration_id, id33, 33, spk.id, spk33, 33, spk.signature, 64, true,
                               pk->id, pk33, 33)))
        die("bundle", rc);
}

static void must(int db_rc, const char *what)
{
    if (db_rc != DB_OK)
        die(what, E2E_ERR_STORAGE);
}

/* Alice encrypts text for Bob and stores the session, one transaction; *w the body. */
static void seal(profile *from, profile *to, const uint8_t *text, size_t len, e2e_sealed *s)
{
    must(db_begin(from->d), "begin");
    int rc = e2e_encrypt(from->d, to->account, 1, text, len, s);
    if (rc)
        die("encrypt", rc);
    if ((rc = e2e_sealed_commit(from->d, to->account, 1, s)))
        die("store session", rc);
    must(db_commit(from->d), "commit");
}

/* Bob decrypts and stores session, prekey deletion and the message, one transaction. */
static void open_and_store(profile *to, profile *from, const e2e_sealed *s)
{
    e2e_opened o;
    must(db_begin(to->d), "begin");
    int rc = e2e_decrypt(to->d, from->account, 1, (uint32_t)s->type, s->body.data, s->body.len, &o);
    if (rc)
        die("decrypt", rc);
    if (o.prekey_message) {
        db_identity_seen seen;
        if ((rc = e2e_identity_seen(to->d, from->account, 1, from->phone, o.identity, &seen)))
            die("identity", rc);
    }
    if ((rc = e2e_opened_commit(to->d, from->account, 1, &o)))
        die("store session", rc);
    db_message m;
    memset(&m, 0, sizeof m);
    randombytes_buf(m.id, sizeof m.id);
    snprintf(m.peer_phone, sizeof m.peer_phone, "%s", from->phone);
    snprintf(m.conversation, sizeof m.conversation, "%s", from->phone);
    m.has_peer_account = true;
    memcpy(m.peer_account, from->account, DB_ID_LEN);
    m.from_device = 1;
    m.text = (const char *)o.plaintext.data;
    m.text_len = o.plaintext.len;
    bool inserted;
    must(db_incoming_add(to->d, &m, &inserted), "store message");
    must(db_commit(to->d), "commit");
    e2e_opened_clear(&o);
}

/* One session setup; returns its time in µs (the bundle as the server hands it out, and
 * the reset before, are not counted). */
static double setup_once(profile *a, profile *b, const uint8_t *text)
{
    ps_bundle bundle;
    ps_bytes rec;
    db_identity_seen seen;
    /* a fresh session each time: records do not grow with archived sessions */
    must(db_session_delete(a->d, b->account, 1), "delete");
    must(db_session_delete(b->d, a->account, 1), "delete");
    next_bundle(b, &bundle);
    double t0 = clock_mono_us();
    int rc = e2e_session_from_bundle(a->d, b->account, &bundle, &rec);
    if (rc)
        die("initiate", rc);
    must(db_begin(a->d), "begin");
    if ((rc = e2e_identity_seen(a->d, b->account, 1, b->phone, bundle.identity_key, &seen)))
        die("identity", rc);
    must(db_session_put(a->d, b->account, 1, rec.data, rec.len), "store session");
    must(db_commit(a->d), "commit");
    ps_bytes_free(&rec);
    e2e_sealed s;
    seal(a, b, text, TEXT_LEN, &s);
    if (s.type != PS_MSG_PREKEY)
        die("setup", PS_ERR_INTERNAL);
    open_and_store(b, a, &s);
    e2e_sealed_clear(&s);
    return clock_mono_us() - t0;
}

typedef struct {
    double setup_us;
    long setups;
    double enc_us, dec_us;
    long messages;
    double crypto_enc_us, crypto_dec_us, ser_enc_us, ser_dec_us;
    long crypto_messages;
} results;

static void bench_store(profile *a, profile *b, double seconds, results *r)
{
    uint8_t text[TEXT_LEN];
    randombytes_buf(text, sizeof text);
    setup_once(a, b, text); /* warm up */
    double start = clock_mono_us(), end = start + seconds * 1e6, total = 0;
    long n = 0;
    do {
        total += setup_once(a, b, text);
        n++;
    } while (clock_mono_us() < end);
    r->setup_us = total / (double)n;
    r->setups = n;

    /* steady state: Bob answered once, so Alice's messages are whisper messages */
    e2e_sealed s;
    seal(b, a, text, sizeof text, &s);
    open_and_store(a, b, &s);
    e2e_sealed_clear(&s);
    double enc = 0, dec = 0;
    n = 0;
    start = clock_mono_us();
    end = start + seconds * 1e6;
    do {
        double t0 = clock_mono_us();
        seal(a, b, text, sizeof text, &s);
        double t1 = clock_mono_us();
        open_and_store(b, a, &s);
        double t2 = clock_mono_us();
        e2e_sealed_clear(&s);
        enc += t1 - t0;
        dec += t2 - t1;
        n++;
    } while (clock_mono_us() < end);
    r->enc_us = enc / (double)n;
    r->dec_us = dec / (double)n;
    r->messages = n;
}

/* The same message steps on in-memory records: with serialize = true each step also
 * parses the record before and serializes it after, as e2e.c does around SQLite. */
static void bench_memory(double seconds, bool serialize, double *enc_us, double *dec_us, long *count)
{
    ps_local_identity ia, ib;
    ps_keypair spk, opk;
    uint8_t spk33[33], text[TEXT_LEN];
    randombytes_buf(text, sizeof text);
    memset(&ia, 0, sizeof ia);
    memset(&ib, 0, sizeof ib);
    ps_keypair_generate(NULL, &ia.identity);
    ps_keypair_generate(NULL, &ib.identity);
    ib.registration_id = 7;
    ps_keypair_generate(NULL, &spk);
    ps_keypair_generate(NULL, &opk);
    ps_bundle bb;
    memset(&bb, 0, sizeof bb);
    bb.registration_id = 7;
    bb.device_id = 1;
    memcpy(bb.identity_key, ib.identity.pub, 32);
    bb.signed_prekey_id = 1;
    memcpy(bb.signed_prekey, spk.pub, 32);
    ps_pubkey_serialize(spk33, spk.pub);
    int rc = ps_xeddsa_sign(bb.signed_prekey_signature, ib.identity.priv, spk33, 33, NULL);
    bb.has_prekey = true;
    bb.prekey_id = 1;
    memcpy(bb.prekey, opk.pub, 32);
    ps_session_record ra = {0}, rb = {0};
    if (rc || (rc = ps_session_initiate(&ra, &ia, &bb, NULL)))
        die("initiate", rc);
    /* first message and an answer: then steady whisper messages */
    ps_bytes body, pt;
    int type;
    ps_prekey_message m;
    bool used;
    if ((rc = ps_session_encrypt(&ra, text, sizeof text, &body, &type)) ||
        (rc = ps_prekey_message_parse(&m, body.data, body.len)) ||
        (rc = ps_session_decrypt_prekey(&rb, &ib, &m, &spk, &opk, &pt, NULL, &used)))
        die("first message", rc);
    ps_prekey_message_clear(&m);
    ps_bytes_free(&body);
    ps_bytes_free(&pt);
    if ((rc = ps_session_encrypt(&rb, text, sizeof text, &body, &type)) ||
        (rc = ps_session_decrypt(&ra, body.data, body.len, &pt, NULL)))
        die("answer", rc);
    ps_bytes_free(&body);
    ps_bytes_free(&pt);

    ps_bytes sa = {0}, sb = {0};
    if (serialize && ((rc = ps_session_record_serialize(&ra, &sa)) || (rc = ps_session_record_serialize(&rb, &sb))))
        die("serialize", rc);
    double enc = 0, dec = 0, start = clock_mono_us(), end = start + seconds * 1e6;
    long n = 0;
    do {
        double t0 = clock_mono_us();
        if (serialize) {
            ps_session_record_clear(&ra);
            if ((rc = ps_session_record_deserialize(&ra, sa.data, sa.len)))
                die("parse", rc);
            ps_bytes_free(&sa);
        }
        if ((rc = ps_session_encrypt(&ra, text, sizeof text, &body, &type)))
            die("encrypt", rc);
        if (serialize && (rc = ps_session_record_serialize(&ra, &sa)))
            die("serialize", rc);
        double t1 = clock_mono_us();
        if (serialize) {
            ps_session_record_clear(&rb);
            if ((rc = ps_session_record_deserialize(&rb, sb.data, sb.len)))
                die("parse", rc);
            ps_bytes_free(&sb);
        }
        if ((rc = ps_session_decrypt(&rb, body.data, body.len, &pt, NULL)))
            die("decrypt", rc);
        if (serialize && (rc = ps_session_record_serialize(&rb, &sb)))
            die("serialize", rc);
        double t2 = clock_mono_us();
        ps_bytes_free(&body);
        ps_bytes_free(&pt);
        enc += t1 - t0;
        dec += t2 - t1;
        n++;
    } while (clock_mono_us() < end);
    ps_bytes_free(&sa);
    ps_bytes_free(&sb);
    ps_session_record_clear(&ra);
    ps_session_record_clear(&rb);
    e2e_identity_clear(&ia);
    e2e_identity_clear(&ib);
    ps_keypair_clear(&spk);
    ps_keypair_clear(&opk);
    *enc_us = enc / (double)n;
    *dec_us = dec / (double)n;
    *count = n;
}

int main(int argc, char **argv)
{
    double seconds = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else {
            fprintf(stderr, "usage: parley-bench-client [--seconds S]\n");
            return 2;
        }
    }
    if (seconds <= 0 || seconds > 60)
        seconds = 2;
    if (sodium_init() < 0)
        return 1;
    const char *tmp = getenv("TMPDIR");
    char top[512];
    snprintf(top, sizeof top, "%s/parley-bench-client-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(top)) {
        perror("mkdtemp");
        return 1;
    }
    profile a, b;
    profile_open(&a, top, "alice", "+15550000001", 0xA1);
    profile_open(&b, top, "bob", "+15550000002", 0xB2);
    results r;
    memset(&r, 0, sizeof r);
    bench_store(&a, &b, seconds, &r);
    db_close(a.d);
    db_close(b.d);
    long n2;
    bench_memory(seconds / 2, false, &r.crypto_enc_us, &r.crypto_dec_us, &r.crypto_messages);
    bench_memory(seconds / 2, true, &r.ser_enc_us, &r.ser_dec_us, &n2);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", top);
    if (system(cmd) != 0)
        fprintf(stderr, "bench-client: could not remove %s\n", top);

    printf("libparley end-to-end encryption, %d-byte texts, SQLite in %s (WAL, synchronous=FULL)\n", TEXT_LEN,
           tmp && *tmp ? tmp : "/tmp");
    printf("%-44s %12s %12s %12s\n", "", "encrypt", "decrypt", "total");
    printf("%-44s %12s %12s %10.1f us  (%ld runs)\n", "session setup (bundle -> X3DH -> first message)", "", "",
           r.setup_us, r.setups);
    printf("%-44s %9.1f us %9.1f us %9.1f us  (%ld messages)\n", "per message, stored (sessions + message)", r.enc_us,
           r.dec_us, r.enc_us + r.dec_us, r.messages);
    printf("%-44s %9.1f us %9.1f us %9.1f us\n", "per message, crypto + record (de)serialized", r.ser_enc_us,
           r.ser_dec_us, r.ser_enc_us + r.ser_dec_us);
    printf("%-44s %9.1f us %9.1f us %9.1f us  (%ld messages)\n", "per message, crypto only", r.crypto_enc_us,
           r.crypto_dec_us, r.crypto_enc_us + r.crypto_dec_us, r.crypto_messages);
    printf("{\"bench\":\"client\",\"text_bytes\":%d,\"setup_us\":%.1f,\"setups\":%ld,"
           "\"stored\":{\"encrypt_us\":%.1f,\"decrypt_us\":%.1f,\"total_us\":%.1f,\"messages\":%ld},"
           "\"serialized\":{\"encrypt_us\":%.1f,\"decrypt_us\":%.1f,\"total_us\":%.1f},"
           "\"crypto_only\":{\"encrypt_us\":%.1f,\"decrypt_us\":%.1f,\"total_us\":%.1f,\"messages\":%ld}}\n",
           TEXT_LEN, r.setup_us, r.setups, r.enc_us, r.dec_us, r.enc_us + r.dec_us, r.messages, r.ser_enc_us,
           r.ser_dec_us, r.ser_enc_us + r.ser_dec_us, r.crypto_enc_us, r.crypto_dec_us,
           r.crypto_enc_us + r.crypto_dec_us, r.crypto_messages);
    return 0;
}
