/* test_client_e2e.c - libparley's session layer (src/client/e2e.c) on two real profile
 * databases, reopened between steps as separate processes would: keys (a signed prekey
 * signed over 0x05||pub, one-time prekeys with increasing ids, uploads resumed after a
 * crash), X3DH from a bundle and the first PreKey message, repeats of a PreKey message
 * that need no prekeys, the one-time prekey deleted in the message's transaction (and
 * kept when that transaction rolls back), replies, out of order and corrupted messages,
 * unknown prekey ids, a late PreKey message on a replaced signed prekey (kept 30 days,
 * then refused), identity changes recorded as notices, safety numbers. */
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "e2e.h"
#include "primitives.h"

static char top[256];

typedef struct {
    const char *name;
    const char *phone;
    uint8_t account[DB_ID_LEN];
    db *d;
} profile;

static void open_profile(profile *p)
{
    char dir[400], err[300];
    snprintf(dir, sizeof dir, "%s/%s", top, p->name);
    if (db_open(&p->d, dir, err, sizeof err) != DB_OK) {
        fprintf(stderr, "db_open: %s\n", err);
        exit(2);
    }
}

static void reopen(profile *p)
{
    db_close(p->d);
    open_profile(p);
}

static void make_profile(profile *p, const char *name, const char *phone, uint8_t account_byte)
{
    memset(p, 0, sizeof *p);
    p->name = name;
    p->phone = phone;
    memset(p->account, account_byte, DB_ID_LEN);
    open_profile(p);
    ps_keypair kp;
    ps_keypair_generate(NULL, &kp);
    CHECK_RC(db_identity_create(p->d, kp.priv, 100 + account_byte), DB_OK);
    ps_keypair_clear(&kp);
    CHECK_RC(db_identity_set_registered(p->d, phone, p->account, 1), DB_OK);
}

/* The bundle the server would hand out for p: its current signed prekey and one
 * one-time prekey (the first not handed out yet; *next counts them). */
static void bundle_of(profile *p, ps_bundle *b, size_t *next)
{
    e2e_signed_prekey spk;
    e2e_prekey pks[E2E_PREKEY_BATCH];
    size_t n = 0;
    uint8_t id33[PS_PUBKEY_LEN], spk33[PS_PUBKEY_LEN], pk33[PS_PUBKEY_LEN];
    CHECK_RC(e2e_signed_prekey_current(p->d, &spk), E2E_OK);
    CHECK_RC(e2e_prekeys_to_upload(p->d, E2E_PREKEY_BATCH, pks, &n), E2E_OK);
    CHECK(n == E2E_PREKEY_BATCH && *next < n);
    CHECK_RC(e2e_identity_public(p->d, id33), E2E_OK);
    ps_pubkey_serialize(spk33, spk.pub);
    ps_pubkey_serialize(pk33, pks[*next].pub);
    db_identity ident;
    CHECK_RC(db_identity_get(p->d, &ident), DB_OK);
    CHECK_RC(e2e_bundle_parse(b, 1, ident.registration_id, id33, sizeof id33, spk.id, spk33, sizeof spk33,
                              spk.signature, sizeof spk.signature, true, pks[*next].id, pk33, sizeof pk33),
             PS_OK);
    (*next)++;
}

/* from starts a session with to from to's bundle, recording to's identity. */
static void start_session(profile *from, profile *to, size_t *next)
{
    ps_bundle b;
    bundle_of(to, &b, next);
    ps_bytes rec;
    db_identity_seen seen;
    CHECK_RC(e2e_session_from_bundle(from->d, to->account, &b, &rec), PS_OK);
    CHECK_RC(db_begin(from->d), DB_OK);
    CHECK_RC(e2e_identity_seen(from->d, to->account, 1, to->phone, b.identity_key, &seen), E2E_OK);
    CHECK_RC(db_session_put(from->d, to->account, 1, rec.data, rec.len), DB_OK);
    CHECK_RC(db_commit(from->d), DB_OK);
    ps_bytes_free(&rec);
}

typedef struct {
    int type;
    uint8_t body[4096];
    size_t len;
} wire;

/* Encrypts text from -> to and stores the session, as one transaction. */
static void seal(profile *from, profile *to, const char *text, wire *w)
{
    e2e_sealed s;
    CHECK_RC(db_begin(from->d), DB_OK);
    CHECK_RC(e2e_encrypt(from->d, to->account, 1, (const uint8_t *)text, strlen(text), &s), PS_OK);
    CHECK_RC(e2e_sealed_commit(from->d, to->account, 1, &s), E2E_OK);
    CHECK_RC(db_commit(from->d), DB_OK);
    w->type = s.type;
    CHECK(s.body.len <= sizeof w->body);
    w->len = s.body.len < sizeof w->body ? s.body.len : sizeof w->body;
    memcpy(w->body, s.body.data, w->len);
    e2e_sealed_clear(&s);
}

/* Decrypts w at to (from `from`) and stores session, prekey deletion and the message
 * in one transaction; returns the e2e code, the text in out. */
static int open_wire(profile *to, profile *from, const wire *w, char *out, size_t cap)
{
    e2e_opened o;
    out[0] = 0;
    int rc = e2e_decrypt(to->d, from->account, 1, (uint32_t)w->type, w->body, w->len, &o);
    if (rc != PS_OK)
        return rc;
    snprintf(out, cap, "%.*s", (int)o.plaintext.len, (const char *)o.plaintext.data);
    CHECK_RC(db_begin(to->d), DB_OK);
    if (o.prekey_message) {
        db_identity_seen seen;
        CHECK_RC(e2e_identity_seen(to->d, from->account, 1, from->phone, o.identity, &seen), E2E_OK);
    }
    CHECK_RC(e2e_opened_commit(to->d, from->account, 1, &o), E2E_OK);
    db_message m;
    memset(&m, 0, sizeof m);
    randombytes_buf(m.id, sizeof m.id);
    snprintf(m.peer_phone, sizeof m.peer_phone, "%s", from->phone);
    snprintf(m.conversation, sizeof m.conversation, "%s", from->phone);
    m.has_peer_account = true;
    memcpy(m.peer_account, from->account, DB_ID_LEN);
    m.from_device = 1;
    m.text = out;
    m.text_len = strlen(out);
    bool inserted;
    CHECK_RC(db_incoming_add(to->d, &m, &inserted), DB_OK);
    CHECK_RC(db_commit(to->d), DB_OK);
    e2e_opened_clear(&o);
    return rc;
}

static size_t prekeys(profile *p)
{
    size_t n = 0;
    CHECK_RC(db_prekey_count(p->d, &n), DB_OK);
    return n;
}

static void test_keys(profile *a)
{
    e2e_signed_prekey spk, again;
    CHECK_RC(e2e_signed_prekey_current(a->d, &spk), PS_ERR_NO_PREKEY);
    CHECK_RC(e2e_signed_prekey_new(a->d, 1000000, &spk), E2E_OK);
    CHECK(spk.id == 1 && spk.created_ms == 1000000);
    uint8_t id33[PS_PUBKEY_LEN], spk33[PS_PUBKEY_LEN];
    CHECK_RC(e2e_identity_public(a->d, id33), E2E_OK);
    CHECK(id33[0] == 0x05);
    ps_pubkey_serialize(spk33, spk.pub);
    CHECK(ps_xeddsa_verify(id33 + 1, spk33, sizeof spk33, spk.signature)); /* over 0x05 || pub */
    CHECK(!ps_xeddsa_verify(id33 + 1, spk.pub, PS_KEY_LEN, spk.signature));
    reopen(a);
    CHECK_RC(e2e_signed_prekey_current(a->d, &again), PS_OK);
    CHECK(again.id == 1 && memcmp(again.pub, spk.pub, PS_KEY_LEN) == 0);

    /* one-time prekeys: increasing ids; not uploaded ones come back first (a crash
     * between storing and uploading), then new ones */
    e2e_prekey pk[E2E_PREKEY_BATCH], pk2[E2E_PREKEY_BATCH];
    size_t n = 0, n2 = 0;
    CHECK_RC(e2e_prekeys_to_upload(a->d, E2E_PREKEY_BATCH, pk, &n), E2E_OK);
    CHECK(n == E2E_PREKEY_BATCH && pk[0].id == 1 && pk[99].id == 100);
    bool increasing = true;
    for (size_t i = 1; i < n; i++)
        increasing &= pk[i].id == pk[i - 1].id + 1;
    CHECK(increasing);
    reopen(a);
    CHECK_RC(e2e_prekeys_to_upload(a->d, E2E_PREKEY_BATCH, pk2, &n2), E2E_OK);
    CHECK(n2 == n && memcmp(pk, pk2, sizeof pk) == 0);
    uint32_t ids[E2E_PREKEY_BATCH];
    for (size_t i = 0; i < 60; i++)
        ids[i] = pk[i].id;
    CHECK_RC(db_prekeys_uploaded(a->d, ids, 60), DB_OK); /* the server took 60 of them */
    CHECK_RC(e2e_prekeys_to_upload(a->d, E2E_PREKEY_BATCH, pk2, &n2), E2E_OK);
    CHECK(n2 == 100 && pk2[0].id == 61 && pk2[39].id == 100 && pk2[40].id == 101 && pk2[99].id == 160);
    CHECK(prekeys(a) == 160);
}

/* Alice starts with Bob's bundle; both sides' state survives reopening between steps. */
static void test_conversation(profile *a, profile *b)
{
    size_t next = 0;
    char got[256];
    wire w1, w2, w3;
    e2e_signed_prekey spk;
    CHECK_RC(e2e_signed_prekey_new(b->d, 2000000, &spk), E2E_OK);
    start_session(a, b, &next);
    bool exists = false;
    CHECK_RC(db_session_exists(a->d, b->account, 1, &exists), DB_OK);
    CHECK(exists);
    reopen(a);
    seal(a, b, "hello bob", &w1);
    seal(a, b, "second before an answer", &w2);
    CHECK(w1.type == PS_MSG_PREKEY && w2.type == PS_MSG_PREKEY);
    reopen(a);

    /* the first PreKey message opens with the signed prekey and the one-time prekey; the
     * transaction that stores the message is rolled back (a crash): nothing is lost */
    size_t before = prekeys(b);
    e2e_opened o;
    CHECK_RC(e2e_decrypt(b->d, a->account, 1, (uint32_t)w1.type, w1.body, w1.len, &o), PS_OK);
    CHECK(o.prekey_message && o.used_prekey && o.prekey_id == 1);
    CHECK_RC(db_begin(b->d), DB_OK);
    CHECK_RC(e2e_opened_commit(b->d, a->account, 1, &o), E2E_OK);
    CHECK(prekeys(b) == before - 1);
    db_rollback(b->d);
    e2e_opened_clear(&o);
    CHECK(prekeys(b) == before);
    CHECK_RC(db_session_exists(b->d, a->account, 1, &exists), DB_OK);
    CHECK(!exists);

    reopen(b);
    CHECK_RC(open_wire(b, a, &w1, got, sizeof got), PS_OK);
    CHECK(strcmp(got, "hello bob") == 0);
    CHECK(prekeys(b) == before - 1); /* used: deleted with the message */
    reopen(b);
    /* a repeat PreKey message of the same session: no prekeys needed (the one-time one is gone) */
    CHECK_RC(open_wire(b, a, &w2, got, sizeof got), PS_OK);
    CHECK(strcmp(got, "second before an answer") == 0);
    CHECK_RC(open_wire(b, a, &w2, got, sizeof got), PS_ERR_DUPLICATE);

    /* Bob answers; Alice's next messages are plain whisper messages */
    seal(b, a, "hi alice", &w3);
    CHECK(w3.type == PS_MSG_WHISPER);
    reopen(b);
    CHECK_RC(open_wire(a, b, &w3, got, sizeof got), PS_OK);
    CHECK(strcmp(got, "hi alice") == 0);
    reopen(a);

    /* out of order, a corrupted one, then more */
    wire m[4];
    for (int i = 0; i < 4; i++) {
        char text[32];
        snprintf(text, sizeof text, "ordered %d", i);
        seal(a, b, text, &m[i]);
        CHECK(m[i].type == PS_MSG_WHISPER);
    }
    CHECK_RC(open_wire(b, a, &m[2], got, sizeof got), PS_OK);
    CHECK(strcmp(got, "ordered 2") == 0);
    reopen(b);
    wire bad = m[1];
    bad.body[bad.len / 2] ^= 0x40;
    int rc = open_wire(b, a, &bad, got, sizeof got);
    CHECK(rc == PS_ERR_BAD_MAC || rc == PS_ERR_INVALID_MESSAGE);
    CHECK_RC(open_wire(b, a, &m[0], got, sizeof got), PS_OK);
    CHECK(strcmp(got, "ordered 0") == 0);
    CHECK_RC(open_wire(b, a, &m[1], got, sizeof got), PS_OK); /* the failure changed nothing */
    CHECK(strcmp(got, "ordered 1") == 0);
    CHECK_RC(open_wire(b, a, &m[3], got, sizeof got), PS_OK);
    wire garbage = {.type = PS_MSG_WHISPER, .len = 40};
    randombytes_buf(garbage.body, garbage.len);
    rc = open_wire(b, a, &garbage, got, sizeof got);
    CHECK(rc != PS_OK);
    garbage.type = PS_MSG_PREKEY;
    CHECK(open_wire(b, a, &garbage, got, sizeof got) != PS_OK);
    garbage.type = 0; /* plaintext is not a Signal message */
    CHECK_RC(open_wire(b, a, &garbage, got, sizeof got), PS_ERR_INVALID_MESSAGE);

    /* a PreKey message naming a one-time prekey Bob does not have */
    ps_bundle bb;
    bundle_of(b, &bb, &next);
    bb.prekey_id = 999999;
    ps_bytes rec;
    CHECK_RC(e2e_session_from_bundle(a->d, b->account, &bb, &rec), PS_OK);
    CHECK_RC(db_session_put(a->d, b->account, 1, rec.data, rec.len), DB_OK);
    ps_bytes_free(&rec);
    wire unknown;
    seal(a, b, "unknown prekey", &unknown);
    CHECK_RC(open_wire(b, a, &unknown, got, sizeof got), PS_ERR_NO_PREKEY);
    /* ...and the session before it still works both ways once a good one is made */
    start_session(a, b, &next);
    seal(a, b, "fresh", &w1);
    CHECK_RC(open_wire(b, a, &w1, got, sizeof got), PS_OK);
    CHECK(strcmp(got, "fresh") == 0);
}

/* A PreKey message made from a signed prekey that was replaced since still opens while
 * the old key is kept (30 days); after that it is refused. */
static void test_signed_prekey_retention(profile *a, profile *b)
{
    size_t next = 20;
    char got[64];
    db_session_delete(a->d, b->account, 1);
    start_session(a, b, &next); /* with Bob's current signed prekey */
    wire late;
    seal(a, b, "late", &late);
    e2e_signed_prekey old, cur;
    CHECK_RC(e2e_signed_prekey_current(b->d, &old), PS_OK);
    uint64_t t = 5000000000ull;
    CHECK_RC(e2e_signed_prekey_new(b->d, t, &cur), E2E_OK);
    CHECK(cur.id == old.id + 1);
    CHECK_RC(e2e_signed_prekey_prune(b->d, t + E2E_SIGNED_PREKEY_KEEP_MS - 1000), E2E_OK);
    reopen(b);
    wire copy = late;
    CHECK_RC(open_wire(b, a, &copy, got, sizeof got), PS_OK);
    CHECK(strcmp(got, "late") == 0);

    db_session_delete(a->d, b->account, 1);
    db_session_delete(b->d, a->account, 1);
    ps_bundle stale;
    bundle_of(b, &stale, &next);
    /* a bundle from before the rotation */
    stale.signed_prekey_id = old.id;
    memcpy(stale.signed_prekey, old.pub, PS_KEY_LEN);
    memcpy(stale.signed_prekey_signature, old.signature, PS_SIG_LEN);
    ps_bytes rec;
    CHECK_RC(e2e_session_from_bundle(a->d, b->account, &stale, &rec), PS_OK);
    CHECK_RC(db_session_put(a->d, b->account, 1, rec.data, rec.len), DB_OK);
    ps_bytes_free(&rec);
    seal(a, b, "too late", &late);
    CHECK_RC(e2e_signed_prekey_prune(b->d, t + E2E_SIGNED_PREKEY_KEEP_MS + 1000), E2E_OK);
    CHECK_RC(open_wire(b, a, &late, got, sizeof got), PS_ERR_NO_PREKEY);
    e2e_signed_prekey still;
    CHECK_RC(e2e_signed_prekey_current(b->d, &still), PS_OK); /* the current one is never pruned */
    CHECK(still.id == cur.id);

    /* a bundle whose signature does not verify is refused */
    ps_bundle forged;
    bundle_of(b, &forged, &next);
    forged.signed_prekey_signature[5] ^= 1;
    CHECK_RC(e2e_session_from_bundle(a->d, b->account, &forged, &rec), PS_ERR_BAD_SIGNATURE);
}

typedef struct {
    int notices, kinds[4];
    char last[160];
} notice_count;

static bool count_notice(void *ctx, const db_message *m)
{
    notice_count *c = ctx;
    if (m->kind != DB_KIND_MESSAGE) {
        c->kinds[c->notices++ & 3] = m->kind;
        snprintf(c->last, sizeof c->last, "%s", m->text ? m->text : "");
    }
    return true;
}

static void test_identity_changes_and_safety_numbers(profile *a, profile *b)
{
    char da[61], db_[61];
    ps_bytes qa, qb;
    CHECK_RC(e2e_safety_number(a->d, a->phone, b->phone, b->account, da, &qa), PS_OK);
    CHECK_RC(e2e_safety_number(b->d, b->phone, a->phone, a->account, db_, &qb), PS_OK);
    CHECK(strlen(da) == 60 && strcmp(da, db_) == 0);
    CHECK(qa.len > 64 && qa.len == qb.len && memcmp(qa.data, qb.data, qa.len) != 0); /* local first */
    ps_bytes_free(&qa);
    ps_bytes_free(&qb);
    uint8_t stranger[DB_ID_LEN];
    memset(stranger, 0x77, sizeof stranger);
    CHECK_RC(e2e_safety_number(a->d, a->phone, "+15550009999", stranger, da, &qa), PS_ERR_NO_SESSION);

    /* Bob's key as Alice knows it; a contact row to carry the verified mark */
    db_contact c;
    memset(&c, 0, sizeof c);
    memcpy(c.account, b->account, DB_ID_LEN);
    snprintf(c.phone, sizeof c.phone, "%s", b->phone);
    c.devices[0] = 1;
    c.n_devices = 1;
    CHECK_RC(db_contact_put(a->d, &c), DB_OK);
    uint8_t known[PS_KEY_LEN], other[PS_KEY_LEN];
    CHECK_RC(db_peer_identity_get(a->d, b->account, 1, known), DB_OK);
    db_identity_seen seen;
    CHECK_RC(e2e_identity_seen(a->d, b->account, 1, b->phone, known, &seen), E2E_OK);
    CHECK(seen.known && !seen.changed);
    notice_count nc = {0};
    CHECK_RC(db_history(a->d, b->phone, count_notice, &nc), DB_OK);
    CHECK(nc.notices == 0);

    /* Bob's new install: a change, recorded as a notice in the conversation */
    memset(other, 0x11, sizeof other);
    CHECK_RC(e2e_identity_seen(a->d, b->account, 1, b->phone, other, &seen), E2E_OK);
    CHECK(seen.known && seen.changed && !seen.was_verified);
    nc = (notice_count){0};
    CHECK_RC(db_history(a->d, b->phone, count_notice, &nc), DB_OK);
    CHECK(nc.notices == 1 && nc.kinds[0] == DB_KIND_IDENTITY_CHANGED);
    CHECK(strstr(nc.last, "security code with +15550000002 changed") != NULL);

    /* verified, then changed again: the mark is cleared and the notice says so */
    CHECK_RC(db_contact_set_verified(a->d, b->account, true), DB_OK);
    bool verified = false;
    CHECK_RC(db_contact_verified(a->d, b->account, &verified), DB_OK);
    CHECK(verified);
    CHECK_RC(e2e_identity_seen(a->d, b->account, 1, b->phone, known, &seen), E2E_OK);
    CHECK(seen.changed && seen.was_verified);
    CHECK_RC(db_contact_verified(a->d, b->account, &verified), DB_OK);
    CHECK(!verified);
    nc = (notice_count){0};
    CHECK_RC(db_history(a->d, b->phone, count_notice, &nc), DB_OK);
    CHECK(nc.notices == 2 && nc.kinds[1] == DB_KIND_IDENTITY_CHANGED_VERIFIED);
    CHECK(strstr(nc.last, "it was verified") != NULL);

    /* a device seen for the first time is no change */
    CHECK_RC(e2e_identity_seen(a->d, b->account, 2, b->phone, other, &seen), E2E_OK);
    CHECK(!seen.known && !seen.changed);
}

/* A RETRY receipt archives the session (it is not deleted): the next message needs a
 * new session from a bundle, and what the peer sent in the old one still decrypts. An
 * unreadable record counts as no usable session (a bundle is fetched), not as one. */
static void test_archive_and_unreadable(profile *a, profile *b)
{
    size_t next = 40;
    char got[256];
    wire w, from_b;
    bool usable = false;
    start_session(a, b, &next);
    seal(a, b, "before the retry", &w);
    CHECK_RC(open_wire(b, a, &w, got, sizeof got), PS_OK);
    seal(b, a, "sent in the old session", &from_b);
    CHECK_RC(e2e_session_usable(a->d, b->account, 1, &usable), E2E_OK);
    CHECK(usable);
    CHECK_RC(e2e_session_archive(a->d, b->account, 1), E2E_OK);
    reopen(a);
    CHECK_RC(e2e_session_usable(a->d, b->account, 1, &usable), E2E_OK);
    CHECK(!usable);
    bool exists = false;
    CHECK_RC(db_session_exists(a->d, b->account, 1, &exists), DB_OK);
    CHECK(exists); /* kept, archived */
    e2e_sealed sl;
    CHECK_RC(e2e_encrypt(a->d, b->account, 1, (const uint8_t *)"x", 1, &sl), PS_ERR_NO_SESSION);
    /* Bob's message from the old session still opens */
    CHECK_RC(open_wire(a, b, &from_b, got, sizeof got), PS_OK);
    CHECK(strcmp(got, "sent in the old session") == 0);
    CHECK_RC(e2e_session_archive(a->d, b->account, 1), E2E_OK); /* again: nothing current */
    /* a new session from a bundle: X3DH anew */
    start_session(a, b, &next);
    CHECK_RC(e2e_session_usable(a->d, b->account, 1, &usable), E2E_OK);
    CHECK(usable);
    seal(a, b, "after the retry", &w);
    CHECK(w.type == PS_MSG_PREKEY);
    CHECK_RC(open_wire(b, a, &w, got, sizeof got), PS_OK);
    CHECK(strcmp(got, "after the retry") == 0);

    /* an unreadable record: not usable, and a bundle replaces it */
    const uint8_t junk[] = {0xde, 0xad, 0xbe, 0xef};
    CHECK_RC(db_session_put(a->d, b->account, 1, junk, sizeof junk), DB_OK);
    CHECK_RC(e2e_session_usable(a->d, b->account, 1, &usable), E2E_OK);
    CHECK(!usable);
    start_session(a, b, &next);
    CHECK_RC(e2e_session_usable(a->d, b->account, 1, &usable), E2E_OK);
    CHECK(usable);
    seal(a, b, "after the junk", &w);
    CHECK_RC(open_wire(b, a, &w, got, sizeof got), PS_OK);
}

int main(void)
{
    if (sodium_init() < 0)
        return 2;
    snprintf(top, sizeof top, "/tmp/parley-test-client-e2e-%d", (int)getpid());
    remove_tree(top);
    profile a, b;
    make_profile(&a, "alice", "+15550000001", 0xA1);
    make_profile(&b, "bob", "+15550000002", 0xB2);
    RUN(test_keys(&a));
    RUN(test_conversation(&a, &b));
    RUN(test_signed_prekey_retention(&a, &b));
    RUN(test_identity_changes_and_safety_numbers(&a, &b));
    RUN(test_archive_and_unreadable(&a, &b));
    db_close(a.d);
    db_close(b.d);
    remove_tree(top);
    return check_summary("client_e2e");
}
