/* test_crypto_props.c - property tests of the Signal code against itself:
 * long random conversations with reordering, drops, replays, tampering and
 * restarts (serialize -> deserialize); simultaneous initiation; re-install;
 * the limits; sender keys; safety numbers; key records. */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>

#include "check.h"
#include "fingerprint.h"
#include "keys.h"
#include "primitives.h"
#include "sender_key.h"
#include "session.h"

/* ---- deterministic choices (keys still come from libsodium) -------------------- */

static uint64_t prng_state;

static uint32_t rnd(uint32_t n) /* uniform-ish in [0, n) */
{
    prng_state ^= prng_state << 13;
    prng_state ^= prng_state >> 7;
    prng_state ^= prng_state << 17;
    return n ? (uint32_t)(prng_state % n) : 0;
}

/* ---- a party: identity, prekeys, one session record with the other party -------- */

typedef struct {
    ps_local_identity me;
    ps_keypair spk;
    uint8_t spk_sig[PS_SIG_LEN];
    ps_keypair opk;
    bool opk_left;
    ps_session_record rec;
} party;

static void party_init(party *p, uint32_t reg_id)
{
    uint8_t spk33[PS_PUBKEY_LEN];
    memset(p, 0, sizeof *p);
    p->me.registration_id = reg_id;
    ps_keypair_generate(NULL, &p->me.identity);
    ps_keypair_generate(NULL, &p->spk);
    ps_keypair_generate(NULL, &p->opk);
    p->opk_left = true;
    ps_pubkey_serialize(spk33, p->spk.pub);
    if (ps_xeddsa_sign(p->spk_sig, p->me.identity.priv, spk33, sizeof spk33, NULL) != PS_OK)
        abort();
}

static void party_bundle(const party *p, ps_bundle *b, bool with_opk)
{
    memset(b, 0, sizeof *b);
    b->registration_id = p->me.registration_id;
    b->device_id = 1;
    memcpy(b->identity_key, p->me.identity.pub, 32);
    b->signed_prekey_id = 1;
    memcpy(b->signed_prekey, p->spk.pub, 32);
    memcpy(b->signed_prekey_signature, p->spk_sig, 64);
    if (with_opk && p->opk_left) {
        b->has_prekey = true;
        b->prekey_id = 9;
        memcpy(b->prekey, p->opk.pub, 32);
    }
}

static int party_decrypt(party *p, int type, const ps_bytes *body, ps_bytes *pt)
{
    pt->data = NULL;
    pt->len = 0;
    if (type == PS_MSG_WHISPER)
        return ps_session_decrypt(&p->rec, body->data, body->len, pt, NULL);
    ps_prekey_message m;
    int rc = ps_prekey_message_parse(&m, body->data, body->len);
    if (rc)
        return rc;
    bool used = false;
    rc = ps_session_decrypt_prekey(&p->rec, &p->me, &m, m.signed_prekey_id == 1 ? &p->spk : NULL,
                                   m.has_prekey_id && m.prekey_id == 9 && p->opk_left ? &p->opk : NULL,
                                   pt, NULL, &used);
    if (rc == PS_OK && used)
        p->opk_left = false;
    ps_prekey_message_clear(&m);
    return rc;
}

static bool record_bytes(const ps_session_record *r, ps_bytes *out)
{
    return ps_session_record_serialize(r, out) == PS_OK;
}

/* serialize -> deserialize -> serialize gives the same bytes; the copy replaces the original. */
static bool restart(party *p)
{
    ps_bytes a, b;
    ps_session_record back;
    if (!record_bytes(&p->rec, &a))
        return false;
    bool ok = ps_session_record_deserialize(&back, a.data, a.len) == PS_OK && record_bytes(&back, &b);
    ok = ok && a.len == b.len && memcmp(a.data, b.data, a.len) == 0;
    ps_bytes_free(&a);
    if (ok) {
        ps_bytes_free(&b);
        ps_session_record_clear(&p->rec);
        p->rec = back;
    }
    return ok;
}

/* A failing decrypt leaves the record exactly as it was. */
static bool rejected_without_change(party *p, int type, const ps_bytes *body)
{
    ps_bytes before, after = {0}, pt;
    if (!record_bytes(&p->rec, &before))
        return false;
    int rc = party_decrypt(p, type, body, &pt);
    ps_bytes_free(&pt);
    bool ok = rc != PS_OK && record_bytes(&p->rec, &after) && before.len == after.len &&
              memcmp(before.data, after.data, before.len) == 0;
    ps_bytes_free(&before);
    ps_bytes_free(&after);
    return ok;
}

typedef struct {
    ps_bytes body;
    int type;
    char text[48];
} in_flight;

/* ---- long random conversation ------------------------------------------------- */

/* A byte the MAC covers. A PreKey message's wrapper is not authenticated as a whole
 * (its registration id, for one, can change unnoticed, in every implementation), so
 * there the flip goes into the inner SignalMessage or the keys the MAC depends on. */
static size_t tamper_index(const ps_bytes *body, int type)
{
    if (type == PS_MSG_WHISPER)
        return rnd((uint32_t)body->len);
    ps_prekey_message m;
    if (ps_prekey_message_parse(&m, body->data, body->len) != PS_OK)
        abort();
    const uint8_t *inner = memmem(body->data, body->len, m.message.data, m.message.len);
    size_t at = (size_t)(inner - body->data) + rnd((uint32_t)m.message.len);
    ps_prekey_message_clear(&m);
    return at;
}

static void test_conversation(uint32_t messages)
{
    static party a, b;
    party_init(&a, 1001);
    party_init(&b, 2002);
    ps_bundle bb;
    party_bundle(&b, &bb, true);
    CHECK_RC(ps_session_initiate(&a.rec, &a.me, &bb, NULL), PS_OK);

    enum { WINDOW = 24 };
    in_flight q[2][WINDOW];
    int nq[2] = {0, 0};
    party *who[2] = {&a, &b};
    uint32_t sent = 0, delivered = 0, decrypted = 0, dropped = 0, replays_rejected = 0,
             replays = 0, tampers = 0, tampers_rejected = 0, restarts_ok = 0, restarts = 0;
    bool chains_ok = true;
    int dir = 0;

    while (sent < messages || nq[0] || nq[1]) {
        /* bursts: keep direction for a while, then switch */
        if (rnd(6) == 0)
            dir ^= 1;
        if (sent >= messages && nq[dir] == 0)
            dir ^= 1;
        party *src = who[dir], *dst = who[dir ^ 1];
        if (sent < messages && nq[dir] < WINDOW && (src == &a || b.rec.current) && rnd(3) != 0) {
            in_flight *m = &q[dir][nq[dir]++];
            snprintf(m->text, sizeof m->text, "message %u from %c", sent, dir ? 'b' : 'a');
            CHECK_RC(ps_session_encrypt(&src->rec, (const uint8_t *)m->text, strlen(m->text),
                                        &m->body, &m->type),
                     PS_OK);
            sent++;
            continue;
        }
        if (nq[dir] == 0)
            continue;
        /* deliver: usually the oldest, sometimes a random one (reordering), rarely drop */
        int i = rnd(4) == 0 ? (int)rnd((uint32_t)nq[dir]) : 0;
        in_flight m = q[dir][i];
        memmove(&q[dir][i], &q[dir][i + 1], (size_t)(nq[dir] - i - 1) * sizeof m);
        nq[dir]--;
        if (rnd(50) == 0) {
            dropped++;
            ps_bytes_free(&m.body);
            continue;
        }
        if (rnd(20) == 0) { /* a tampered copy first: refused, nothing changes */
            ps_bytes t = {malloc(m.body.len), m.body.len};
            memcpy(t.data, m.body.data, t.len);
            t.data[tamper_index(&m.body, m.type)] ^= (uint8_t)(1 + rnd(255));
            tampers++;
            tampers_rejected += rejected_without_change(dst, m.type, &t);
            ps_bytes_free(&t);
        }
        ps_bytes pt;
        delivered++;
        if (party_decrypt(dst, m.type, &m.body, &pt) == PS_OK && pt.len == strlen(m.text) &&
            memcmp(pt.data, m.text, pt.len) == 0)
            decrypted++;
        ps_bytes_free(&pt);
        if (rnd(25) == 0) { /* replay: refused, nothing changes */
            replays++;
            replays_rejected += rejected_without_change(dst, m.type, &m.body);
        }
        ps_bytes_free(&m.body);
        if (rnd(40) == 0) {
            restarts += 2;
            restarts_ok += restart(&a) + restart(&b);
        }
        for (int p = 0; p < 2; p++)
            if (who[p]->rec.current && who[p]->rec.current->nrecv > PS_MAX_RECEIVER_CHAINS)
                chains_ok = false;
    }
    CHECK(sent == messages);
    CHECK(decrypted == delivered);
    CHECK(delivered + dropped == messages);
    CHECK(replays > 0 && replays_rejected == replays);
    CHECK(tampers > 0 && tampers_rejected == tampers);
    CHECK(restarts > 0 && restarts_ok == restarts);
    CHECK(chains_ok);
    CHECK(!b.opk_left); /* the one-time prekey was consumed */
    printf("conversation: %u sent, %u delivered, %u dropped, %u replays, %u tampers, %u restarts\n",
           sent, delivered, dropped, replays, tampers, restarts);
    ps_session_record_clear(&a.rec);
    ps_session_record_clear(&b.rec);
}

/* Sends text from src to dst and checks it arrives. */
static bool exchange(party *src, party *dst, const char *text)
{
    ps_bytes body, pt;
    int type;
    if (ps_session_encrypt(&src->rec, (const uint8_t *)text, strlen(text), &body, &type) != PS_OK)
        return false;
    int rc = party_decrypt(dst, type, &body, &pt);
    bool ok = rc == PS_OK && pt.len == strlen(text) && memcmp(pt.data, text, pt.len) == 0;
    ps_bytes_free(&body);
    ps_bytes_free(&pt);
    return ok;
}

static void test_simultaneous_initiation(void)
{
    static party a, b;
    party_init(&a, 1);
    party_init(&b, 2);
    ps_bundle ab, bb;
    party_bundle(&a, &ab, true);
    party_bundle(&b, &bb, true);
    CHECK_RC(ps_session_initiate(&a.rec, &a.me, &bb, NULL), PS_OK);
    CHECK_RC(ps_session_initiate(&b.rec, &b.me, &ab, NULL), PS_OK);
    ps_bytes ma, mb, pt;
    int ta, tb;
    CHECK_RC(ps_session_encrypt(&a.rec, (const uint8_t *)"from a", 6, &ma, &ta), PS_OK);
    CHECK_RC(ps_session_encrypt(&b.rec, (const uint8_t *)"from b", 6, &mb, &tb), PS_OK);
    CHECK(ta == PS_MSG_PREKEY && tb == PS_MSG_PREKEY);
    CHECK_RC(party_decrypt(&b, ta, &ma, &pt), PS_OK);
    ps_bytes_free(&pt);
    CHECK_RC(party_decrypt(&a, tb, &mb, &pt), PS_OK);
    ps_bytes_free(&pt);
    ps_bytes_free(&ma);
    ps_bytes_free(&mb);
    int ok = 0;
    for (int i = 0; i < 50; i++) {
        ok += exchange(&a, &b, "after the crossing, a");
        ok += exchange(&b, &a, "after the crossing, b");
        if (i % 3 == 0)
            ok += exchange(&a, &b, "and again");
    }
    CHECK(ok == 100 + 17);
    ps_session_record_clear(&a.rec);
    ps_session_record_clear(&b.rec);
}

static void test_reinstall(void)
{
    static party a, b, b2;
    party_init(&a, 1);
    party_init(&b, 2);
    ps_bundle bb;
    party_bundle(&b, &bb, true);
    CHECK_RC(ps_session_initiate(&a.rec, &a.me, &bb, NULL), PS_OK);
    CHECK(exchange(&a, &b, "hi"));
    CHECK(exchange(&b, &a, "hello"));

    /* A message from the old install is still in flight when b re-installs. */
    ps_bytes late, pt;
    int late_type;
    CHECK_RC(ps_session_encrypt(&b.rec, (const uint8_t *)"late", 4, &late, &late_type), PS_OK);

    party_init(&b2, 3);
    ps_bundle nb;
    party_bundle(&b2, &nb, false); /* no one-time prekey left */
    CHECK_RC(ps_session_initiate(&a.rec, &a.me, &nb, NULL), PS_OK);
    CHECK(a.rec.nprevious == 1);
    CHECK(exchange(&a, &b2, "welcome back"));
    CHECK(exchange(&b2, &a, "thanks"));
    CHECK_RC(party_decrypt(&a, late_type, &late, &pt), PS_OK); /* opened by the archived session */
    CHECK(pt.len == 4 && memcmp(pt.data, "late", 4) == 0);
    ps_bytes_free(&pt);
    ps_bytes_free(&late);
    /* ... and that did not steal the current session from the new install for good */
    CHECK(exchange(&b2, &a, "still here"));
    CHECK(exchange(&a, &b2, "me too"));
    ps_session_record_clear(&a.rec);
    ps_session_record_clear(&b.rec);
    ps_session_record_clear(&b2.rec);
}

/* A repeat PreKey message whose (unauthenticated) identity field was swapped is
 * refused and changes nothing; the genuine one still opens. */
static void test_prekey_identity_swap(void)
{
    static party a, b, mallory;
    party_init(&a, 1);
    party_init(&b, 2);
    party_init(&mallory, 3);
    ps_bundle bb;
    party_bundle(&b, &bb, true);
    CHECK_RC(ps_session_initiate(&a.rec, &a.me, &bb, NULL), PS_OK);
    ps_bytes m1, m2, pt;
    int t1, t2;
    CHECK_RC(ps_session_encrypt(&a.rec, (const uint8_t *)"one", 3, &m1, &t1), PS_OK);
    CHECK_RC(ps_session_encrypt(&a.rec, (const uint8_t *)"two", 3, &m2, &t2), PS_OK);
    CHECK_RC(party_decrypt(&b, t1, &m1, &pt), PS_OK);
    ps_bytes_free(&pt);
    uint8_t id33[33], evil33[33];
    ps_pubkey_serialize(id33, a.me.identity.pub);
    ps_pubkey_serialize(evil33, mallory.me.identity.pub);
    ps_bytes forged = {malloc(m2.len), m2.len};
    memcpy(forged.data, m2.data, m2.len);
    uint8_t *at = memmem(forged.data, forged.len, id33, 33);
    CHECK(at != NULL);
    if (at)
        memcpy(at, evil33, 33);
    CHECK(rejected_without_change(&b, t2, &forged));
    CHECK(memcmp(b.rec.current->remote_identity, a.me.identity.pub, 32) == 0);
    CHECK_RC(party_decrypt(&b, t2, &m2, &pt), PS_OK);
    CHECK(pt.len == 3 && memcmp(pt.data, "two", 3) == 0);
    ps_bytes_free(&pt);
    ps_bytes_free(&forged);
    ps_bytes_free(&m1);
    ps_bytes_free(&m2);
    ps_session_record_clear(&a.rec);
    ps_session_record_clear(&b.rec);
}

static void test_bad_bundle(void)
{
    static party a, b;
    party_init(&a, 1);
    party_init(&b, 2);
    ps_bundle bb;
    party_bundle(&b, &bb, true);
    bb.signed_prekey_signature[10] ^= 0x04;
    CHECK_RC(ps_session_initiate(&a.rec, &a.me, &bb, NULL), PS_ERR_BAD_SIGNATURE);
    CHECK(a.rec.current == NULL);
    party_bundle(&b, &bb, true);
    bb.signed_prekey[0] ^= 1; /* key swapped under a valid signature */
    CHECK_RC(ps_session_initiate(&a.rec, &a.me, &bb, NULL), PS_ERR_BAD_SIGNATURE);
    party_bundle(&b, &bb, true);
    bb.prekey_id = 0; /* id 0 reads as "no one-time prekey" at the other end */
    CHECK_RC(ps_session_initiate(&a.rec, &a.me, &bb, NULL), PS_ERR_INVALID_MESSAGE);
    CHECK(a.rec.current == NULL);
}

static void test_limits(void)
{
    static party a, b;
    party_init(&a, 1);
    party_init(&b, 2);
    ps_bundle bb;
    party_bundle(&b, &bb, false);
    CHECK_RC(ps_session_initiate(&a.rec, &a.me, &bb, NULL), PS_OK);
    CHECK(exchange(&a, &b, "x3dh without a one-time prekey"));
    CHECK(exchange(&b, &a, "ok"));

    /* a's new chain: counters 0..2001 */
    enum { N = PS_MAX_FORWARD_JUMP + 2 };
    static ps_bytes bodies[N];
    int type;
    for (int i = 0; i < N; i++)
        CHECK_RC(ps_session_encrypt(&a.rec, (const uint8_t *)"n", 1, &bodies[i], &type), PS_OK);
    /* b is at counter 0 of this chain: 2001 ahead is too far, and changes nothing */
    CHECK(rejected_without_change(&b, PS_MSG_WHISPER, &bodies[N - 1]));
    ps_bytes pt;
    CHECK_RC(ps_session_decrypt(&b.rec, bodies[N - 1].data, bodies[N - 1].len, &pt, NULL),
             PS_ERR_TOO_FAR);
    /* exactly 2000 ahead works, and stores 2000 skipped keys that all open */
    CHECK_RC(ps_session_decrypt(&b.rec, bodies[N - 2].data, bodies[N - 2].len, &pt, NULL), PS_OK);
    ps_bytes_free(&pt);
    CHECK(b.rec.current->recv[b.rec.current->nrecv - 1].nskipped == PS_MAX_SKIPPED_KEYS);
    int opened = 0;
    for (int i = N - 3; i >= 0; i--) {
        opened += ps_session_decrypt(&b.rec, bodies[i].data, bodies[i].len, &pt, NULL) == PS_OK;
        ps_bytes_free(&pt);
    }
    CHECK(opened == N - 2);
    CHECK_RC(ps_session_decrypt(&b.rec, bodies[N - 1].data, bodies[N - 1].len, &pt, NULL), PS_OK);
    ps_bytes_free(&pt);
    for (int i = 0; i < N; i++)
        ps_bytes_free(&bodies[i]);

    /* many ratchet steps never keep more than 5 receiver chains */
    int ok = 0;
    for (int i = 0; i < 12; i++)
        ok += exchange(&a, &b, "ping") + exchange(&b, &a, "pong");
    CHECK(ok == 24);
    CHECK(a.rec.current->nrecv == PS_MAX_RECEIVER_CHAINS);
    CHECK(b.rec.current->nrecv == PS_MAX_RECEIVER_CHAINS);

    /* at most 40 archived sessions */
    for (int i = 0; i < PS_MAX_ARCHIVED_SESSIONS + 5; i++)
        CHECK_RC(ps_session_initiate(&a.rec, &a.me, &bb, NULL), PS_OK);
    CHECK(a.rec.nprevious == PS_MAX_ARCHIVED_SESSIONS);
    CHECK(restart(&a));
    CHECK(a.rec.nprevious == PS_MAX_ARCHIVED_SESSIONS);

    /* garbage and truncations of a real record are refused, never a crash */
    ps_bytes ser;
    ps_session_record back;
    CHECK(record_bytes(&b.rec, &ser));
    int refused = 0;
    for (size_t n = 0; n < ser.len; n += 7)
        if (ps_session_record_deserialize(&back, ser.data, n) == PS_OK)
            ps_session_record_clear(&back);
        else
            refused++;
    CHECK(refused > 0);
    ps_bytes_free(&ser);
    ps_session_record_clear(&a.rec);
    ps_session_record_clear(&b.rec);
}

/* ---- sender keys ---------------------------------------------------------------- */

static bool sk_bytes_equal(const ps_sender_key_record *x, const ps_sender_key_record *y)
{
    ps_bytes a, b;
    if (ps_sender_key_record_serialize(x, &a) || ps_sender_key_record_serialize(y, &b))
        return false;
    bool eq = a.len == b.len && memcmp(a.data, b.data, a.len) == 0;
    ps_bytes_free(&a);
    ps_bytes_free(&b);
    return eq;
}

static void test_sender_keys(void)
{
    static ps_sender_key_record mine, theirs;
    uint8_t dist[16];
    ps_bytes skdm;
    ps_skdm m;
    randombytes_buf(dist, sizeof dist);
    memset(&mine, 0, sizeof mine);
    memset(&theirs, 0, sizeof theirs);
    CHECK_RC(ps_sender_key_create(&mine, dist, NULL, &skdm), PS_OK);
    CHECK(skdm.data[0] == 0x33);
    CHECK(mine.states[0].chain_id < 0x80000000u);
    CHECK_RC(ps_skdm_parse(&m, skdm.data, skdm.len), PS_OK);
    CHECK_RC(ps_sender_key_process(&theirs, &m), PS_OK);
    ps_bytes_free(&skdm);

    enum { N = 3000, WINDOW = 30 };
    static ps_bytes q[WINDOW];
    static char texts[WINDOW][32];
    int nq = 0;
    uint32_t sent = 0, opened = 0, delivered = 0, replays = 0, replay_rejected = 0, tampered = 0;
    while (sent < N || nq) {
        if (sent < N && nq < WINDOW && rnd(2)) {
            snprintf(texts[nq], sizeof texts[nq], "group %u", sent);
            CHECK_RC(ps_sender_key_encrypt(&mine, (const uint8_t *)texts[nq], strlen(texts[nq]),
                                           NULL, &q[nq]),
                     PS_OK);
            nq++, sent++;
            continue;
        }
        if (!nq)
            continue;
        int i = (int)rnd((uint32_t)nq);
        ps_bytes body = q[i];
        char text[32];
        memcpy(text, texts[i], sizeof text);
        memmove(&q[i], &q[i + 1], (size_t)(nq - i - 1) * sizeof body);
        memmove(&texts[i], &texts[i + 1], (size_t)(nq - i - 1) * sizeof texts[0]);
        nq--;
        if (rnd(30) == 0) {
            ps_sender_key_record before;
            ps_bytes t = {malloc(body.len), body.len}, pt;
            memcpy(t.data, body.data, t.len);
            t.data[rnd((uint32_t)t.len)] ^= 0x20;
            CHECK(ps_sender_key_record_serialize(&theirs, &skdm) == PS_OK);
            CHECK_RC(ps_sender_key_record_deserialize(&before, skdm.data, skdm.len), PS_OK);
            ps_bytes_free(&skdm);
            tampered += ps_sender_key_decrypt(&theirs, t.data, t.len, &pt) != PS_OK &&
                        sk_bytes_equal(&before, &theirs);
            ps_sender_key_record_clear(&before);
            ps_bytes_free(&t);
        }
        ps_bytes pt;
        delivered++;
        if (ps_sender_key_decrypt(&theirs, body.data, body.len, &pt) == PS_OK &&
            pt.len == strlen(text) && memcmp(pt.data, text, pt.len) == 0)
            opened++;
        ps_bytes_free(&pt);
        if (rnd(20) == 0) {
            replays++;
            replay_rejected += ps_sender_key_decrypt(&theirs, body.data, body.len, &pt) ==
                               PS_ERR_DUPLICATE;
        }
        ps_bytes_free(&body);
        if (rnd(100) == 0) { /* restart the receiver */
            ps_sender_key_record back;
            CHECK(ps_sender_key_record_serialize(&theirs, &skdm) == PS_OK);
            CHECK_RC(ps_sender_key_record_deserialize(&back, skdm.data, skdm.len), PS_OK);
            CHECK(sk_bytes_equal(&back, &theirs));
            ps_sender_key_record_clear(&theirs);
            theirs = back;
            ps_bytes_free(&skdm);
        }
    }
    CHECK(opened == N && delivered == N);
    CHECK(replays > 0 && replay_rejected == replays);
    CHECK(tampered > 0);

    /* forward jump limit: the sender's chain moved 25001 ahead */
    ps_sk_state *st = &mine.states[0];
    uint8_t seed[32], next[32];
    for (int i = 0; i < PS_SK_MAX_FORWARD_JUMP + 1; i++) {
        ps_chain_step(st->chain_key, seed, next);
        memcpy(st->chain_key, next, 32);
        st->iteration++;
    }
    ps_bytes far, pt;
    CHECK_RC(ps_sender_key_encrypt(&mine, (const uint8_t *)"far", 3, NULL, &far), PS_OK);
    CHECK_RC(ps_sender_key_decrypt(&theirs, far.data, far.len, &pt), PS_ERR_TOO_FAR);
    ps_bytes_free(&far);

    /* a new chain per SKDM from a new sender key; at most 5 states kept */
    for (int i = 0; i < 7; i++) {
        ps_sender_key_record other;
        memset(&other, 0, sizeof other);
        CHECK_RC(ps_sender_key_create(&other, dist, NULL, &skdm), PS_OK);
        CHECK_RC(ps_skdm_parse(&m, skdm.data, skdm.len), PS_OK);
        CHECK_RC(ps_sender_key_process(&theirs, &m), PS_OK);
        ps_bytes_free(&skdm);
        ps_sender_key_record_clear(&other);
    }
    CHECK(theirs.nstates == PS_SK_MAX_STATES);

    /* iterations never wrap: the last one refuses to encrypt, and a receiver refuses it */
    mine.states[0].iteration = UINT32_MAX;
    CHECK_RC(ps_sender_key_encrypt(&mine, (const uint8_t *)"x", 1, NULL, &far), PS_ERR_TOO_FAR);
    ps_sk_state *last = &theirs.states[0];
    uint32_t n = 0;
    ps_skipped_key *none = NULL;
    uint8_t ck[32] = {0};
    uint32_t idx = UINT32_MAX - 1;
    CHECK_RC(ps_chain_seed_for(ck, &idx, &none, &n, UINT32_MAX, 10, 10, seed), PS_ERR_TOO_FAR);
    CHECK(idx == UINT32_MAX - 1 && n == 0 && last != NULL);
    ps_sender_key_record_clear(&mine);
    ps_sender_key_record_clear(&theirs);
}

/* ---- safety numbers and key records ------------------------------------------------- */

static void test_safety_numbers(void)
{
    ps_keypair a, b;
    ps_keypair_generate(NULL, &a);
    ps_keypair_generate(NULL, &b);
    char da[61], db[61];
    ps_bytes sa, sb;
    const char *ida = "+15550000001", *idb = "+15550000002";
    CHECK_RC(ps_safety_number(da, &sa, 2, PS_FINGERPRINT_ITERATIONS, (const uint8_t *)ida,
                              strlen(ida), a.pub, (const uint8_t *)idb, strlen(idb), b.pub),
             PS_OK);
    CHECK_RC(ps_safety_number(db, &sb, 2, PS_FINGERPRINT_ITERATIONS, (const uint8_t *)idb,
                              strlen(idb), b.pub, (const uint8_t *)ida, strlen(ida), a.pub),
             PS_OK);
    CHECK(strlen(da) == 60 && strcmp(da, db) == 0);
    /* each side's scannable form is local-first: the two halves swap */
    CHECK(sa.len == sb.len && sa.len == 2 + 2 * 36);
    CHECK(memcmp(sa.data + 2 + 2, sb.data + 2 + 36 + 2, 32) == 0);
    ps_bytes_free(&sa);
    ps_bytes_free(&sb);
    b.pub[3] ^= 1; /* another key, another number */
    CHECK_RC(ps_safety_number(db, &sb, 2, PS_FINGERPRINT_ITERATIONS, (const uint8_t *)ida,
                              strlen(ida), a.pub, (const uint8_t *)idb, strlen(idb), b.pub),
             PS_OK);
    CHECK(strcmp(da, db) != 0);
    ps_bytes_free(&sb);
}

static void test_key_records(void)
{
    ps_key_record k = {.kind = PS_KEY_SIGNED_PREKEY, .id = 77, .has_signature = true,
                       .created_at = 1700000000};
    ps_key_record back;
    ps_bytes ser;
    ps_keypair_generate(NULL, &k.pair);
    randombytes_buf(k.signature, sizeof k.signature);
    CHECK_RC(ps_key_record_serialize(&k, &ser), PS_OK);
    CHECK_RC(ps_key_record_deserialize(&back, ser.data, ser.len), PS_OK);
    CHECK(back.kind == k.kind && back.id == 77 && back.created_at == k.created_at &&
          memcmp(&back.pair, &k.pair, sizeof k.pair) == 0 &&
          memcmp(back.signature, k.signature, 64) == 0);
    ser.data[ser.len - 1 - 8 - 2 - 64 - 2 - 5] ^= 1; /* somewhere in the key bytes */
    CHECK(ps_key_record_deserialize(&back, ser.data, ser.len) != PS_OK);
    ps_bytes_free(&ser);
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0)
        return 2;
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
    if (!seed)
        randombytes_buf(&seed, sizeof seed);
    prng_state = seed | 1;
    printf("seed %llu (rerun: test_crypto_props %llu)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    RUN(test_conversation(5000));
    RUN(test_simultaneous_initiation());
    RUN(test_reinstall());
    RUN(test_prekey_identity_swap());
    RUN(test_bad_bundle());
    RUN(test_limits());
    RUN(test_sender_keys());
    RUN(test_safety_numbers());
    RUN(test_key_records());
    return check_summary("crypto_props");
}
