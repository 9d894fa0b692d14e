/* test_client_db.c - libparley's profile database on a real file: permissions, the
 * identity, contacts, the outbox surviving a reopen, outgoing states that only move
 * forward, incoming de-duplication by (sender account, sender device, id), read
 * receipts, nested transactions that roll back whole, a refusal to open a database
 * from a newer schema, and (schema v3) sessions, prekeys consumed in the message's
 * transaction, signed-prekey retention, identity changes, sealed sends, RETRY
 * receipts, resends and their merging, and the migration of a v2 database. */
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "client_internal.h"
#include "clock.h"
#include "db.h"

static char dir[256];

static db *open_db(void)
{
    db *d = NULL;
    char err[300];
    if (db_open(&d, dir, err, sizeof err) != DB_OK) {
        fprintf(stderr, "db_open: %s\n", err);
        exit(2);
    }
    return d;
}

static void fill_id(uint8_t id[DB_ID_LEN], uint8_t v)
{
    memset(id, v, DB_ID_LEN);
}

static int add_outgoing(db *d, uint8_t idv, const char *phone, const char *text)
{
    db_message m;
    memset(&m, 0, sizeof m);
    fill_id(m.id, idv);
    m.outgoing = true;
    snprintf(m.peer_phone, sizeof m.peer_phone, "%s", phone);
    snprintf(m.conversation, sizeof m.conversation, "%s", phone);
    m.text = text;
    m.text_len = strlen(text);
    m.sent_ms = 1000 + idv;
    uint8_t body[3] = {idv, 1, 2};
    return db_outgoing_add(d, &m, body, sizeof body);
}

static int state_of(db *d, uint8_t idv)
{
    uint8_t id[DB_ID_LEN];
    int st = -1;
    fill_id(id, idv);
    if (db_message_state(d, id, &st) != DB_OK)
        return -1;
    return st;
}

static int add_incoming(db *d, uint8_t sender, uint32_t device, uint8_t idv, const char *phone, bool *inserted)
{
    db_message m;
    memset(&m, 0, sizeof m);
    fill_id(m.id, idv);
    m.has_peer_account = true;
    fill_id(m.peer_account, sender);
    m.from_device = device;
    snprintf(m.peer_phone, sizeof m.peer_phone, "%s", phone);
    snprintf(m.conversation, sizeof m.conversation, "%s", phone);
    m.text = "hi";
    m.text_len = 2;
    m.server_time_ms = 5000 + idv;
    return db_incoming_add(d, &m, inserted);
}

typedef struct {
    int n;
    int in, out;
    char last_text[32];
} history_count;

static bool count_row(void *ctx, const db_message *m)
{
    history_count *h = ctx;
    h->n++;
    if (m->outgoing)
        h->out++;
    else
        h->in++;
    snprintf(h->last_text, sizeof h->last_text, "%s", m->text ? m->text : "(null)");
    return true;
}

static void test_files_and_identity(void)
{
    db *d = open_db();
    struct stat sb;
    char path[300];
    CHECK(stat(dir, &sb) == 0 && (sb.st_mode & 0777) == 0700);
    snprintf(path, sizeof path, "%s/parley.db", dir);
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);

    db_identity id;
    CHECK_RC(db_identity_get(d, &id), DB_OK);
    CHECK(!id.exists && !id.registered);
    uint8_t priv[DB_KEY_LEN], back[DB_KEY_LEN];
    memset(priv, 0x42, sizeof priv);
    CHECK_RC(db_identity_create(d, priv, 1234), DB_OK);
    CHECK_RC(db_identity_create(d, priv, 1234), DB_ERROR); /* one key per profile */
    CHECK_RC(db_identity_key(d, back), DB_OK);
    CHECK_MEM(back, priv, sizeof priv);
    CHECK_RC(db_identity_set_pending(d, "ws://127.0.0.1:7443", "+15550000001"), DB_OK);
    CHECK_RC(db_identity_get(d, &id), DB_OK);
    CHECK(id.exists && !id.registered && id.registration_id == 1234);
    CHECK(strcmp(id.pending_phone, "+15550000001") == 0);
    CHECK(strcmp(id.server_url, "ws://127.0.0.1:7443") == 0);
    uint8_t account[DB_ID_LEN];
    fill_id(account, 0xAA);
    CHECK_RC(db_identity_set_registered(d, "+15550000001", account, 1), DB_OK);
    db_close(d);

    d = open_db(); /* all of it on disk */
    CHECK_RC(db_identity_get(d, &id), DB_OK);
    CHECK(id.registered && id.device == 1 && id.pending_phone[0] == 0);
    CHECK(strcmp(id.phone, "+15550000001") == 0);
    CHECK_MEM(id.account, account, DB_ID_LEN);
    db_close(d);
}

static void test_contacts(void)
{
    db *d = open_db();
    db_contact c, got;
    memset(&c, 0, sizeof c);
    fill_id(c.account, 0xB1);
    snprintf(c.phone, sizeof c.phone, "+15550000002");
    c.devices[0] = 1;
    c.devices[1] = 3;
    c.n_devices = 2;
    CHECK_RC(db_contact_put(d, &c), DB_OK);
    CHECK_RC(db_contact_by_phone(d, "+15550000002", &got), DB_OK);
    CHECK_MEM(got.account, c.account, DB_ID_LEN);
    CHECK(got.n_devices == 2 && got.devices[0] == 1 && got.devices[1] == 3);
    CHECK_RC(db_contact_by_phone(d, "+15550000009", &got), DB_NOT_FOUND);

    /* a device list update without a phone keeps the phone */
    c.phone[0] = 0;
    c.n_devices = 1;
    CHECK_RC(db_contact_put(d, &c), DB_OK);
    CHECK_RC(db_contact_by_account(d, c.account, &got), DB_OK);
    CHECK(strcmp(got.phone, "+15550000002") == 0 && got.n_devices == 1);

    /* the number moves to another account: the old one loses it */
    db_contact c2 = c;
    fill_id(c2.account, 0xB2);
    snprintf(c2.phone, sizeof c2.phone, "+15550000002");
    CHECK_RC(db_contact_put(d, &c2), DB_OK);
    CHECK_RC(db_contact_by_phone(d, "+15550000002", &got), DB_OK);
    CHECK_MEM(got.account, c2.account, DB_ID_LEN);
    CHECK_RC(db_contact_by_account(d, c.account, &got), DB_OK);
    CHECK(got.phone[0] == 0);

    CHECK_RC(db_contact_forget_phone(d, "+15550000002"), DB_OK);
    CHECK_RC(db_contact_by_phone(d, "+15550000002", &got), DB_NOT_FOUND);
    db_close(d);
}

static void test_outbox_and_states(void)
{
    db *d = open_db();
    uint8_t peer[DB_ID_LEN], other[DB_ID_LEN], id[DB_ID_LEN];
    fill_id(peer, 0xC1);
    fill_id(other, 0xC2);
    CHECK_RC(add_outgoing(d, 1, "+15550000003", "one"), DB_OK);
    CHECK_RC(add_outgoing(d, 2, "+15550000003", "two"), DB_OK);
    CHECK_RC(add_outgoing(d, 3, "+15550000004", "three"), DB_OK);
    CHECK_RC(add_outgoing(d, 1, "+15550000003", "again"), DB_ERROR); /* ids are unique */
    db_close(d);

    /* the outbox survives a reopen, in queue order, bodies intact */
    d = open_db();
    db_outbox_entry e[8];
    size_t n = 0;
    CHECK_RC(db_outbox_count(d, &n), DB_OK);
    CHECK(n == 3);
    CHECK_RC(db_outbox_load(d, e, 8, &n), DB_OK);
    CHECK(n == 3);
    CHECK(n == 3 && e[0].id[0] == 1 && e[1].id[0] == 2 && e[2].id[0] == 3);
    CHECK(n == 3 && strcmp(e[2].conversation, "+15550000004") == 0);
    CHECK(n == 3 && e[1].body_len == 3 && e[1].body[0] == 2);
    db_outbox_free(e, n);
    CHECK_RC(db_outbox_load(d, e, 2, &n), DB_OK); /* bounded */
    CHECK(n == 2);
    db_outbox_free(e, n);
    CHECK(state_of(d, 1) == PARLEY_STATE_PENDING);

    /* a receipt moves a pending message only when it comes from its number's account */
    bool changed = true;
    fill_id(id, 1);
    CHECK_RC(db_outgoing_advance(d, id, peer, PARLEY_STATE_DELIVERED, &changed), DB_OK);
    CHECK(!changed && state_of(d, 1) == PARLEY_STATE_PENDING); /* no contact: unknown sender */

    /* ack: pending -> sent, the outbox entry goes; a second ack changes nothing */
    CHECK_RC(db_outgoing_sent(d, id, peer, 7000, &changed), DB_OK);
    CHECK(changed && state_of(d, 1) == PARLEY_STATE_SENT);
    CHECK_RC(db_outgoing_sent(d, id, peer, 7000, &changed), DB_OK);
    CHECK(!changed);
    CHECK_RC(db_outbox_count(d, &n), DB_OK);
    CHECK(n == 2);

    /* forward only: sent -> delivered -> read; delivered after read is ignored */
    CHECK_RC(db_outgoing_advance(d, id, other, PARLEY_STATE_DELIVERED, &changed), DB_OK);
    CHECK(!changed); /* only the recipient's receipts count */
    CHECK_RC(db_outgoing_advance(d, id, peer, PARLEY_STATE_DELIVERED, &changed), DB_OK);
    CHECK(changed && state_of(d, 1) == PARLEY_STATE_DELIVERED);
    CHECK_RC(db_outgoing_advance(d, id, peer, PARLEY_STATE_DELIVERED, &changed), DB_OK);
    CHECK(!changed);
    CHECK_RC(db_outgoing_advance(d, id, peer, PARLEY_STATE_READ, &changed), DB_OK);
    CHECK(changed && state_of(d, 1) == PARLEY_STATE_READ);
    CHECK_RC(db_outgoing_advance(d, id, peer, PARLEY_STATE_DELIVERED, &changed), DB_OK);
    CHECK(!changed && state_of(d, 1) == PARLEY_STATE_READ);
    CHECK_RC(db_outgoing_advance(d, id, peer, PARLEY_STATE_SENT, &changed), DB_ERROR);
    CHECK(state_of(d, 1) == PARLEY_STATE_READ);

    /* read "up to": only acked messages to that account at or before the time */
    fill_id(id, 2);
    CHECK_RC(db_outgoing_sent(d, id, peer, 8000, &changed), DB_OK);
    CHECK_RC(add_outgoing(d, 4, "+15550000003", "four"), DB_OK);
    fill_id(id, 4);
    CHECK_RC(db_outgoing_sent(d, id, peer, 9000, &changed), DB_OK);
    CHECK_RC(add_outgoing(d, 5, "+15550000003", "five"), DB_OK); /* stays pending */
    uint8_t(*ids)[DB_ID_LEN] = NULL;
    CHECK_RC(db_outgoing_read_up_to(d, peer, 8500, &ids, &n), DB_OK);
    CHECK(n == 1 && ids && ids[0][0] == 2);
    free(ids);
    CHECK(state_of(d, 2) == PARLEY_STATE_READ && state_of(d, 4) == PARLEY_STATE_SENT);
    CHECK(state_of(d, 5) == PARLEY_STATE_PENDING);
    CHECK_RC(db_outgoing_read_up_to(d, peer, 8500, &ids, &n), DB_OK); /* again: nothing moves */
    CHECK(n == 0);
    free(ids);

    /* failed: pending -> failed, out of the outbox, and never moved again */
    fill_id(id, 3);
    CHECK_RC(db_outgoing_failed(d, id, "no account has the number +15550000004", &changed), DB_OK);
    CHECK(changed && state_of(d, 3) == PARLEY_STATE_FAILED);
    CHECK_RC(db_outgoing_sent(d, id, peer, 9999, &changed), DB_OK);
    CHECK(!changed && state_of(d, 3) == PARLEY_STATE_FAILED);
    CHECK_RC(db_outgoing_failed(d, id, "again", &changed), DB_OK);
    CHECK(!changed);
    CHECK_RC(db_outbox_count(d, &n), DB_OK);
    CHECK(n == 1); /* only message 5 is left */
    CHECK(state_of(d, 99) == -1);
    db_close(d);
}

/* The ack was lost (a crash) but the receipt came: the receipt counts as the ack. */
static void test_receipt_before_ack(void)
{
    db *d = open_db();
    uint8_t peer[DB_ID_LEN], stranger[DB_ID_LEN], id[DB_ID_LEN];
    fill_id(peer, 0xE1);
    fill_id(stranger, 0xE2);
    db_contact c;
    memset(&c, 0, sizeof c);
    memcpy(c.account, peer, DB_ID_LEN);
    snprintf(c.phone, sizeof c.phone, "+15550000008");
    c.devices[0] = 1;
    c.n_devices = 1;
    CHECK_RC(db_contact_put(d, &c), DB_OK);
    CHECK_RC(add_outgoing(d, 0x51, "+15550000008", "lost ack"), DB_OK);
    size_t before, after;
    CHECK_RC(db_outbox_count(d, &before), DB_OK);
    bool changed = true;
    fill_id(id, 0x51);
    CHECK_RC(db_outgoing_advance(d, id, stranger, PARLEY_STATE_READ, &changed), DB_OK);
    CHECK(!changed && state_of(d, 0x51) == PARLEY_STATE_PENDING);
    CHECK_RC(db_outgoing_advance(d, id, peer, PARLEY_STATE_DELIVERED, &changed), DB_OK);
    CHECK(changed && state_of(d, 0x51) == PARLEY_STATE_DELIVERED);
    CHECK_RC(db_outbox_count(d, &after), DB_OK);
    CHECK(after == before - 1); /* no need to send it again */
    /* the ack arriving late keeps the state and records the time */
    CHECK_RC(db_outgoing_sent(d, id, peer, 12345, &changed), DB_OK);
    CHECK(!changed && state_of(d, 0x51) == PARLEY_STATE_DELIVERED);
    uint8_t(*ids)[DB_ID_LEN] = NULL;
    size_t n = 0;
    CHECK_RC(db_outgoing_read_up_to(d, peer, 12345, &ids, &n), DB_OK);
    CHECK(n == 1 && ids && ids[0][0] == 0x51);
    free(ids);
    CHECK(state_of(d, 0x51) == PARLEY_STATE_READ);
    db_close(d);
}

static void test_incoming(void)
{
    db *d = open_db();
    bool inserted = false;
    CHECK_RC(add_incoming(d, 0xD1, 1, 0x31, "+15550000005", &inserted), DB_OK);
    CHECK(inserted);
    CHECK_RC(add_incoming(d, 0xD1, 1, 0x31, "+15550000005", &inserted), DB_OK);
    CHECK(!inserted); /* the same key again: a duplicate */
    CHECK_RC(add_incoming(d, 0xD1, 2, 0x31, "+15550000005", &inserted), DB_OK);
    CHECK(inserted); /* same id from another device of the sender */
    CHECK_RC(add_incoming(d, 0xD2, 1, 0x31, "+15550000006", &inserted), DB_OK);
    CHECK(inserted); /* same id from another sender */
    CHECK_RC(add_incoming(d, 0xD1, 1, 0x32, "+15550000005", &inserted), DB_OK);
    CHECK(inserted);
    db_close(d);

    d = open_db(); /* still a duplicate after a reopen */
    CHECK_RC(add_incoming(d, 0xD1, 1, 0x32, "+15550000005", &inserted), DB_OK);
    CHECK(!inserted);

    /* an incoming message never needs an outgoing id's uniqueness: an outgoing message
     * with the same id as an incoming one is fine */
    CHECK_RC(add_outgoing(d, 0x31, "+15550000005", "mine"), DB_OK);

    history_count h = {0};
    CHECK_RC(db_history(d, "+15550000005", count_row, &h), DB_OK);
    CHECK(h.n == 4 && h.in == 3 && h.out == 1 && strcmp(h.last_text, "mine") == 0);

    /* read: every received message of the conversation, once */
    size_t n = 0;
    CHECK_RC(db_mark_read(d, "+15550000005", &n), DB_OK);
    CHECK(n == 3);
    CHECK_RC(db_mark_read(d, "+15550000005", &n), DB_OK);
    CHECK(n == 0);
    CHECK_RC(db_receipts_pending_count(d, &n), DB_OK);
    CHECK(n == 3);
    uint8_t account[DB_ID_LEN], want[DB_ID_LEN], ids[4][DB_ID_LEN];
    fill_id(want, 0xD1);
    CHECK_RC(db_receipts_pending(d, account, ids, 2, &n), DB_OK);
    CHECK(n == 2);
    CHECK_MEM(account, want, DB_ID_LEN);
    CHECK_RC(db_receipts_sent(d, account, (const uint8_t(*)[DB_ID_LEN])ids, n), DB_OK);
    CHECK_RC(db_receipts_pending_count(d, &n), DB_OK);
    CHECK(n == 1);
    CHECK_RC(db_receipts_pending(d, account, ids, 4, &n), DB_OK);
    CHECK(n == 1 && ids[0][0] == 0x32);
    CHECK_RC(db_receipts_sent(d, account, (const uint8_t(*)[DB_ID_LEN])ids, n), DB_OK);
    CHECK_RC(db_receipts_pending(d, account, ids, 4, &n), DB_OK);
    CHECK(n == 0);
    /* the other sender's message is untouched */
    CHECK_RC(db_mark_read(d, "+15550000006", &n), DB_OK);
    CHECK(n == 1);
    db_close(d);
}

typedef struct {
    int n, stop_after;
    int64_t last_seq;
} unshown_count;

static bool count_unshown(void *ctx, const db_message *m)
{
    unshown_count *u = ctx;
    if (u->stop_after && u->n == u->stop_after)
        return false;
    CHECK(!m->outgoing && m->local_seq > u->last_seq);
    u->last_seq = m->local_seq;
    u->n++;
    return true;
}

/* Incoming messages start unshown (outgoing ones never are), in local order; marking
 * up to a row leaves the later ones; it survives a reopen. */
static void test_unshown(void)
{
    db *d = open_db();
    bool inserted;
    unshown_count u = {0};
    CHECK_RC(db_unshown(d, count_unshown, &u), DB_OK);
    int before = u.n; /* left by test_incoming */
    CHECK_RC(add_incoming(d, 0xE1, 1, 0x41, "+15550000007", &inserted), DB_OK);
    CHECK_RC(add_outgoing(d, 0x42, "+15550000007", "mine"), DB_OK);
    CHECK_RC(add_incoming(d, 0xE1, 1, 0x43, "+15550000007", &inserted), DB_OK);
    u = (unshown_count){0};
    CHECK_RC(db_unshown(d, count_unshown, &u), DB_OK);
    CHECK(u.n == before + 2);
    u = (unshown_count){.stop_after = before + 1};
    CHECK_RC(db_unshown(d, count_unshown, &u), DB_OK);
    CHECK_RC(db_mark_shown(d, u.last_seq), DB_OK);
    db_close(d);
    d = open_db();
    u = (unshown_count){0};
    CHECK_RC(db_unshown(d, count_unshown, &u), DB_OK);
    CHECK(u.n == 1); /* only the last one is left */
    CHECK_RC(db_mark_shown(d, u.last_seq), DB_OK);
    u = (unshown_count){0};
    CHECK_RC(db_unshown(d, count_unshown, &u), DB_OK);
    CHECK(u.n == 0);
    /* a duplicate delivery does not make a shown message unshown again */
    CHECK_RC(add_incoming(d, 0xE1, 1, 0x43, "+15550000007", &inserted), DB_OK);
    CHECK(!inserted);
    CHECK_RC(db_unshown(d, count_unshown, &u), DB_OK);
    CHECK(u.n == 0);
    db_close(d);
}

static void test_transactions(void)
{
    db *d = open_db();
    size_t before, after;
    CHECK_RC(db_outbox_count(d, &before), DB_OK);
    CHECK_RC(db_begin(d), DB_OK);
    CHECK_RC(add_outgoing(d, 0x70, "+15550000007", "x"), DB_OK); /* nests inside */
    CHECK_RC(add_outgoing(d, 0x70, "+15550000007", "dup"), DB_ERROR); /* dooms the whole */
    CHECK_RC(add_outgoing(d, 0x71, "+15550000007", "y"), DB_ERROR); /* doomed: fails too */
    CHECK_RC(db_commit(d), DB_ERROR);
    CHECK_RC(db_outbox_count(d, &after), DB_OK);
    CHECK(after == before);
    CHECK(state_of(d, 0x70) == -1 && state_of(d, 0x71) == -1);

    CHECK_RC(db_begin(d), DB_OK);
    CHECK_RC(add_outgoing(d, 0x72, "+15550000007", "z"), DB_OK);
    CHECK_RC(db_commit(d), DB_OK);
    CHECK(state_of(d, 0x72) == PARLEY_STATE_PENDING);
    db_close(d);
}

static void test_sessions_and_prekeys(void)
{
    db *d = open_db();
    uint8_t peer[DB_ID_LEN];
    fill_id(peer, 0x91);
    db_blob b;
    bool exists = true;
    CHECK_RC(db_session_get(d, peer, 1, &b), DB_NOT_FOUND);
    CHECK_RC(db_session_exists(d, peer, 1, &exists), DB_OK);
    CHECK(!exists);
    const uint8_t rec1[] = {1, 2, 3}, rec2[] = {4, 5, 6, 7};
    CHECK_RC(db_session_put(d, peer, 1, rec1, sizeof rec1), DB_OK);
    CHECK_RC(db_session_put(d, peer, 2, rec2, sizeof rec2), DB_OK);
    CHECK_RC(db_session_put(d, peer, 1, rec2, sizeof rec2), DB_OK); /* replaced */
    db_close(d);
    d = open_db();
    CHECK_RC(db_session_get(d, peer, 1, &b), DB_OK);
    CHECK(b.len == sizeof rec2 && memcmp(b.data, rec2, b.len) == 0);
    db_blob_free(&b);
    CHECK(b.data == NULL && b.len == 0);
    CHECK_RC(db_session_delete(d, peer, 1), DB_OK);
    CHECK_RC(db_session_get(d, peer, 1, &b), DB_NOT_FOUND);
    CHECK_RC(db_session_exists(d, peer, 2, &exists), DB_OK);
    CHECK(exists);

    /* one-time prekeys: the counter moves forward, a used key goes with the message in
     * one transaction, and stays when that transaction rolls back */
    uint32_t id1 = 0, id2 = 0, id3 = 0;
    CHECK_RC(db_prekey_next_id(d, &id1), DB_OK);
    CHECK_RC(db_prekey_next_id(d, &id2), DB_OK);
    CHECK(id1 == 1 && id2 == 2);
    CHECK_RC(db_prekey_add(d, id1, rec1, sizeof rec1), DB_OK);
    CHECK_RC(db_prekey_add(d, id2, rec2, sizeof rec2), DB_OK);
    CHECK_RC(db_prekey_add(d, id2, rec2, sizeof rec2), DB_ERROR); /* ids are unique */
    db_close(d);
    d = open_db();
    CHECK_RC(db_prekey_next_id(d, &id3), DB_OK);
    CHECK(id3 == 3); /* the counter survives a reopen */
    size_t n = 0;
    CHECK_RC(db_begin(d), DB_OK);
    CHECK_RC(db_prekey_delete(d, id1), DB_OK);
    bool inserted = false;
    CHECK_RC(add_incoming(d, 0x92, 1, 0x01, "+15550000020", &inserted), DB_OK);
    db_rollback(d); /* a crash before the commit: the prekey is still there */
    CHECK_RC(db_prekey_count(d, &n), DB_OK);
    CHECK(n == 2);
    CHECK_RC(db_prekey_get(d, id1, &b), DB_OK);
    db_blob_free(&b);
    CHECK_RC(db_begin(d), DB_OK);
    CHECK_RC(db_prekey_delete(d, id1), DB_OK);
    CHECK_RC(add_incoming(d, 0x92, 1, 0x01, "+15550000020", &inserted), DB_OK);
    CHECK_RC(db_commit(d), DB_OK);
    CHECK_RC(db_prekey_get(d, id1, &b), DB_NOT_FOUND);
    /* uploads: not uploaded first, in order; marked once the server took them */
    db_key_row rows[4];
    CHECK_RC(db_prekeys_not_uploaded(d, rows, 4, &n), DB_OK);
    CHECK(n == 1 && rows[0].id == id2 && rows[0].record.len == sizeof rec2);
    for (size_t i = 0; i < n; i++)
        db_blob_free(&rows[i].record);
    CHECK_RC(db_prekeys_uploaded(d, &id2, 1), DB_OK);
    CHECK_RC(db_prekeys_not_uploaded(d, rows, 4, &n), DB_OK);
    CHECK(n == 0);

    /* signed prekeys: a new one replaces the current; replaced ones stay until pruned */
    uint32_t cur = 0;
    uint64_t created = 0;
    CHECK_RC(db_signed_prekey_current(d, &cur, &b, &created), DB_NOT_FOUND);
    CHECK_RC(db_signed_prekey_add(d, 1, rec1, sizeof rec1, 1000), DB_OK);
    CHECK_RC(db_signed_prekey_add(d, 2, rec2, sizeof rec2, 5000), DB_OK); /* 1 replaced at 5000 */
    CHECK_RC(db_signed_prekey_current(d, &cur, &b, &created), DB_OK);
    CHECK(cur == 2 && created == 5000 && b.len == sizeof rec2);
    db_blob_free(&b);
    CHECK_RC(db_signed_prekey_get(d, 1, &b), DB_OK);
    db_blob_free(&b);
    CHECK_RC(db_signed_prekey_prune(d, 5000, &n), DB_OK); /* replaced at 5000: not before */
    CHECK(n == 0);
    CHECK_RC(db_signed_prekey_prune(d, 5001, &n), DB_OK);
    CHECK(n == 1);
    CHECK_RC(db_signed_prekey_get(d, 1, &b), DB_NOT_FOUND);
    CHECK_RC(db_signed_prekey_prune(d, UINT64_MAX, &n), DB_OK);
    CHECK(n == 0); /* the current one is never pruned */
    CHECK_RC(db_signed_prekey_get(d, 2, &b), DB_OK);
    db_blob_free(&b);
    db_close(d);
}

typedef struct {
    int notices, messages;
    int last_kind;
} kind_count;

static bool count_kinds(void *ctx, const db_message *m)
{
    kind_count *k = ctx;
    if (m->kind == DB_KIND_MESSAGE)
        k->messages++;
    else
        k->notices++;
    k->last_kind = m->kind;
    return true;
}

/* A number that moves to another account (a reverse lookup, a device list: the server
 * says so) is compared with the key the number had: another key is a change, and the
 * verified mark of the number's old account goes; the same key is none. */
static void test_identity_follows_the_number(void)
{
    db *d = open_db();
    uint8_t bob[DB_ID_LEN], x[DB_ID_LEN], y[DB_ID_LEN], kb[DB_KEY_LEN], kx[DB_KEY_LEN];
    fill_id(bob, 0xB0);
    fill_id(x, 0xB1);
    fill_id(y, 0xB2);
    memset(kb, 0x31, sizeof kb);
    memset(kx, 0x32, sizeof kx);
    db_contact c;
    memset(&c, 0, sizeof c);
    memcpy(c.account, bob, DB_ID_LEN);
    snprintf(c.phone, sizeof c.phone, "+15550000031");
    c.devices[0] = 1;
    c.n_devices = 1;
    CHECK_RC(db_contact_put(d, &c), DB_OK);
    db_identity_seen seen;
    CHECK_RC(db_peer_identity_put(d, bob, 1, "+15550000031", kb, &seen), DB_OK);
    CHECK(!seen.known && !seen.changed);
    CHECK_RC(db_contact_set_verified(d, bob, true), DB_OK);
    /* the number moves to account x, whose key (first seen) is another one */
    memcpy(c.account, x, DB_ID_LEN);
    CHECK_RC(db_contact_put(d, &c), DB_OK);
    CHECK_RC(db_peer_identity_put(d, x, 1, "+15550000031", kx, &seen), DB_OK);
    CHECK(seen.known && seen.changed && seen.was_verified);
    bool verified = true;
    CHECK_RC(db_contact_verified(d, bob, &verified), DB_OK);
    CHECK(!verified);
    /* seen again: no change */
    CHECK_RC(db_peer_identity_put(d, x, 1, "+15550000031", kx, &seen), DB_OK);
    CHECK(seen.known && !seen.changed);
    /* a key first seen for account y while the number is unnamed, then the number moves
     * to y: compared when it does */
    CHECK_RC(db_peer_identity_put(d, y, 1, NULL, kb, &seen), DB_OK);
    CHECK(!seen.known && !seen.changed);
    CHECK_RC(db_peer_identity_put(d, y, 1, "+15550000031", kb, &seen), DB_OK);
    CHECK(seen.known && seen.changed);
    db_close(d);
}

static void test_identities(void)
{
    db *d = open_db();
    uint8_t peer[DB_ID_LEN], key1[DB_KEY_LEN], key2[DB_KEY_LEN], got[DB_KEY_LEN];
    fill_id(peer, 0x93);
    memset(key1, 0x21, sizeof key1);
    memset(key2, 0x22, sizeof key2);
    db_identity_seen seen;
    CHECK_RC(db_peer_identity_get(d, peer, 1, got), DB_NOT_FOUND);
    CHECK_RC(db_peer_identity_put(d, peer, 1, NULL, key1, &seen), DB_OK);
    CHECK(!seen.known && !seen.changed);
    CHECK_RC(db_peer_identity_put(d, peer, 1, NULL, key1, &seen), DB_OK);
    CHECK(seen.known && !seen.changed);
    db_contact c;
    memset(&c, 0, sizeof c);
    memcpy(c.account, peer, DB_ID_LEN);
    snprintf(c.phone, sizeof c.phone, "+15550000021");
    c.devices[0] = 1;
    c.n_devices = 1;
    CHECK_RC(db_contact_put(d, &c), DB_OK);
    CHECK_RC(db_contact_set_verified(d, peer, true), DB_OK);
    CHECK_RC(db_contact_put(d, &c), DB_OK); /* a device-list update keeps the mark */
    bool verified = false;
    CHECK_RC(db_contact_verified(d, peer, &verified), DB_OK);
    CHECK(verified);
    CHECK_RC(db_peer_identity_put(d, peer, 1, NULL, key2, &seen), DB_OK);
    CHECK(seen.known && seen.changed && seen.was_verified);
    CHECK_RC(db_contact_verified(d, peer, &verified), DB_OK);
    CHECK(!verified);
    CHECK_RC(db_peer_identity_get(d, peer, 1, got), DB_OK);
    CHECK_MEM(got, key2, DB_KEY_LEN);
    uint8_t nobody[DB_ID_LEN];
    fill_id(nobody, 0x94);
    CHECK_RC(db_contact_set_verified(d, nobody, true), DB_NOT_FOUND);

    /* a notice in the conversation: shown by recv/listen, never read-receipted */
    size_t before = 0, after = 0;
    CHECK_RC(db_receipts_pending_count(d, &before), DB_OK);
    CHECK_RC(db_notice_add(d, DB_KIND_IDENTITY_CHANGED_VERIFIED, "+15550000021", peer, 1, "changed"), DB_OK);
    kind_count k = {0};
    CHECK_RC(db_history(d, "+15550000021", count_kinds, &k), DB_OK);
    CHECK(k.notices == 1 && k.last_kind == DB_KIND_IDENTITY_CHANGED_VERIFIED);
    size_t n = 0;
    CHECK_RC(db_mark_read(d, "+15550000021", &n), DB_OK);
    CHECK(n == 0);
    CHECK_RC(db_receipts_pending_count(d, &after), DB_OK);
    CHECK(after == before);
    k = (kind_count){0};
    CHECK_RC(db_unshown(d, count_kinds, &k), DB_OK);
    CHECK(k.notices == 1);
    db_close(d);
}

/* Sealed sends, RETRY receipts, resends, and a resend filling in an undecryptable row. */
static void test_retries(void)
{
    db *d = open_db();
    uint8_t me[DB_ID_LEN], peer[DB_ID_LEN], id[DB_ID_LEN];
    fill_id(me, 0xA0);
    fill_id(peer, 0x95);
    db_contact c;
    memset(&c, 0, sizeof c);
    memcpy(c.account, peer, DB_ID_LEN);
    snprintf(c.phone, sizeof c.phone, "+15550000022");
    c.devices[0] = 1;
    c.n_devices = 1;
    CHECK_RC(db_contact_put(d, &c), DB_OK);

    /* the sealed Send: stored, read back, dropped on DEVICE_MISMATCH with a count */
    CHECK_RC(add_outgoing(d, 0x60, "+15550000022", "sealed text"), DB_OK);
    fill_id(id, 0x60);
    db_blob b;
    CHECK_RC(db_outbox_sealed(d, id, &b), DB_NOT_FOUND);
    const uint8_t send[] = {9, 8, 7};
    CHECK_RC(db_outbox_seal(d, id, send, sizeof send), DB_OK);
    db_close(d);
    d = open_db();
    CHECK_RC(db_outbox_sealed(d, id, &b), DB_OK);
    CHECK(b.len == 3 && b.data[0] == 9);
    db_blob_free(&b);
    db_outbox_entry e[64];
    size_t n = 0;
    CHECK_RC(db_outbox_load(d, e, 64, &n), DB_OK);
    bool found = false;
    for (size_t i = 0; i < n; i++)
        if (e[i].id[0] == 0x60)
            found = e[i].sealed_len == 3 && e[i].sealed[2] == 7 && !e[i].resend && e[i].mismatches == 0;
    CHECK(found);
    db_outbox_free(e, n);
    uint32_t count = 0;
    CHECK_RC(db_outbox_unseal(d, id, &count), DB_OK);
    CHECK(count == 1);
    CHECK_RC(db_outbox_unseal(d, id, &count), DB_OK);
    CHECK(count == 2);
    CHECK_RC(db_outbox_sealed(d, id, &b), DB_NOT_FOUND);
    bool changed;
    CHECK_RC(db_outgoing_sent(d, id, peer, 100, &changed), DB_OK);
    CHECK_RC(db_outbox_seal(d, id, send, sizeof send), DB_NOT_FOUND); /* the entry is gone */

    /* the author's side: a RETRY names our message; each resend has a new id and counts */
    db_resend_source src;
    uint8_t stranger[DB_ID_LEN], unknown[DB_ID_LEN], y1[DB_ID_LEN], y2[DB_ID_LEN];
    fill_id(stranger, 0x96);
    fill_id(unknown, 0x61);
    CHECK_RC(db_resend_source_get(d, id, peer, 1, &src), DB_NOT_FOUND); /* sealed for no device yet */
    uint8_t key1[DB_KEY_LEN], key2[DB_KEY_LEN], got_key[DB_KEY_LEN];
    memset(key1, 0x31, sizeof key1);
    memset(key2, 0x32, sizeof key2);
    CHECK_RC(db_recipient_add(d, id, peer, 1, key1), DB_OK);
    CHECK_RC(db_recipient_add(d, id, me, 2, key2), DB_OK); /* a copy to our own other device */
    CHECK_RC(db_recipient_add(d, id, peer, 1, key1), DB_OK);
    CHECK_RC(db_resend_source_get(d, unknown, peer, 1, &src), DB_NOT_FOUND);
    CHECK_RC(db_resend_source_get(d, id, stranger, 1, &src), DB_NOT_FOUND); /* not sent to them */
    CHECK_RC(db_resend_source_get(d, id, peer, 3, &src), DB_NOT_FOUND);     /* a device added since */
    CHECK_RC(db_resend_source_get(d, id, peer, 1, &src), DB_OK);
    CHECK(strcmp(src.text, "sealed text") == 0 && src.resends == 0 && src.original[0] == 0x60);
    CHECK(strcmp(src.conversation, "+15550000022") == 0 && src.sent_ms == 1000 + 0x60);
    free(src.text);
    CHECK_RC(db_resend_source_get(d, id, me, 2, &src), DB_OK);
    free(src.text);
    fill_id(y1, 0x62);
    const uint8_t body[] = {1, 1};
    CHECK_RC(db_resend_add(d, y1, id, "+15550000022", peer, 1, body, sizeof body), DB_OK);
    CHECK_RC(db_outbox_load(d, e, 64, &n), DB_OK);
    found = false;
    for (size_t i = 0; i < n; i++)
        if (e[i].id[0] == 0x62)
            found = e[i].resend && e[i].resend_device == 1 && memcmp(e[i].resend_account, peer, DB_ID_LEN) == 0 &&
                    e[i].body_len == 2 && !e[i].sealed;
    CHECK(found);
    db_outbox_free(e, n);
    /* the resend may be sealed only for the key the original was sealed for */
    CHECK_RC(db_resend_identity(d, y1, got_key), DB_OK);
    CHECK_MEM(got_key, key1, DB_KEY_LEN);
    CHECK_RC(db_resend_identity(d, id, got_key), DB_NOT_FOUND); /* not a resend */
    /* a RETRY for the resend names its original, counted per device */
    CHECK_RC(db_resend_source_get(d, y1, peer, 1, &src), DB_OK);
    CHECK(src.original[0] == 0x60 && src.resends == 1);
    free(src.text);
    CHECK_RC(db_resend_source_get(d, y1, peer, 2, &src), DB_NOT_FOUND); /* not sent to that device */
    fill_id(y2, 0x63);
    CHECK_RC(db_resend_add(d, y2, id, "+15550000022", peer, 1, body, sizeof body), DB_OK);
    CHECK_RC(db_resend_source_get(d, id, peer, 1, &src), DB_OK);
    CHECK(src.resends == 2);
    free(src.text);

    /* the reader's side: RETRY receipts queued once per message, in batches per device */
    uint8_t ids[4][DB_ID_LEN], acct[DB_ID_LEN], m1[DB_ID_LEN], m2[DB_ID_LEN];
    uint32_t dev = 0;
    fill_id(m1, 0x64);
    fill_id(m2, 0x65);
    CHECK_RC(db_retry_pending(d, acct, &dev, ids, 4, &n), DB_OK);
    CHECK(n == 0);
    CHECK_RC(db_retry_add(d, peer, 1, m1), DB_OK);
    CHECK_RC(db_retry_add(d, peer, 1, m1), DB_OK); /* once */
    CHECK_RC(db_retry_add(d, peer, 1, m2), DB_OK);
    db_close(d);
    d = open_db();
    CHECK_RC(db_retry_pending(d, acct, &dev, ids, 4, &n), DB_OK);
    CHECK(n == 2 && dev == 1 && ids[0][0] == 0x64 && ids[1][0] == 0x65);
    CHECK_MEM(acct, peer, DB_ID_LEN);
    CHECK_RC(db_retry_sent(d, acct, dev, (const uint8_t(*)[DB_ID_LEN])ids, 1), DB_OK);
    CHECK_RC(db_retry_pending(d, acct, &dev, ids, 4, &n), DB_OK);
    CHECK(n == 1 && ids[0][0] == 0x65);
    CHECK_RC(db_retry_sent(d, acct, dev, (const uint8_t(*)[DB_ID_LEN])ids, 1), DB_OK);
    CHECK_RC(db_retry_add(d, peer, 1, m1), DB_OK); /* never a second time */
    CHECK_RC(db_retry_pending(d, acct, &dev, ids, 4, &n), DB_OK);
    CHECK(n == 0);

    /* an undecryptable row, filled in by the resend; the resend's own id is absorbed */
    db_message m;
    memset(&m, 0, sizeof m);
    memcpy(m.id, m1, DB_ID_LEN);
    m.has_peer_account = true;
    memcpy(m.peer_account, peer, DB_ID_LEN);
    m.from_device = 1;
    snprintf(m.peer_phone, sizeof m.peer_phone, "+15550000022");
    snprintf(m.conversation, sizeof m.conversation, "+15550000022");
    m.problem = "could not be decrypted";
    bool inserted = false, seen = false;
    CHECK_RC(db_incoming_add(d, &m, &inserted), DB_OK);
    CHECK(inserted);
    kind_count k = {0};
    CHECK_RC(db_unshown(d, count_kinds, &k), DB_OK);
    CHECK_RC(db_mark_shown(d, INT64_MAX), DB_OK);
    int fill = -1;
    CHECK_RC(db_incoming_fill(d, peer, 2, m1, "nope", 4, 1, &fill), DB_OK);
    CHECK(fill == DB_FILL_ABSENT); /* another device of the sender: not its row */
    CHECK_RC(db_incoming_fill(d, peer, 1, m1, "at last", 7, 4242, &fill), DB_OK);
    CHECK(fill == DB_FILL_DONE);
    CHECK_RC(db_incoming_fill(d, peer, 1, m1, "again", 5, 4243, &fill), DB_OK);
    CHECK(fill == DB_FILL_HAD_TEXT);
    k = (kind_count){0};
    CHECK_RC(db_unshown(d, count_kinds, &k), DB_OK);
    CHECK(k.messages == 1); /* to be shown again, now with its text */
    history_count h = {0};
    CHECK_RC(db_history(d, "+15550000022", count_row, &h), DB_OK);
    CHECK(strcmp(h.last_text, "at last") == 0);
    fill_id(y1, 0x66);
    CHECK_RC(db_incoming_seen(d, peer, 1, y1, &seen), DB_OK);
    CHECK(!seen);
    CHECK_RC(db_incoming_absorb(d, peer, 1, y1), DB_OK);
    CHECK_RC(db_incoming_absorb(d, peer, 1, y1), DB_OK);
    CHECK_RC(db_incoming_seen(d, peer, 1, y1, &seen), DB_OK);
    CHECK(seen);
    CHECK_RC(db_incoming_seen(d, peer, 1, m1, &seen), DB_OK);
    CHECK(seen);
    CHECK_RC(db_incoming_seen(d, peer, 2, m1, &seen), DB_OK);
    CHECK(!seen);
    db_close(d);
}

/* A profile written by the previous version (schema 2) opens, keeps its data, and gets
 * the new tables. */
static void test_migration_from_v2(void)
{
    char v2dir[300], path[400];
    snprintf(v2dir, sizeof v2dir, "%s-v2", dir);
    remove_tree(v2dir);
    CHECK(mkdir(v2dir, 0700) == 0);
    snprintf(path, sizeof path, "%s/parley.db", v2dir);
    sqlite3 *s;
    CHECK(sqlite3_open(path, &s) == SQLITE_OK);
    const char *v2 =
        "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (2);"
        "CREATE TABLE identity (id INTEGER PRIMARY KEY CHECK (id = 1), private_key BLOB NOT NULL,"
        " registration_id INTEGER NOT NULL, server_url TEXT, pending_phone TEXT, phone TEXT, account_id BLOB,"
        " device_id INTEGER);"
        "CREATE TABLE contacts (account_id BLOB PRIMARY KEY, phone TEXT UNIQUE, device_ids BLOB NOT NULL,"
        " updated_ms INTEGER NOT NULL);"
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY, id BLOB NOT NULL, direction INTEGER NOT NULL,"
        " peer_phone TEXT, peer_account BLOB, from_device INTEGER NOT NULL DEFAULT 0, text TEXT, problem TEXT,"
        " sent_ms INTEGER NOT NULL DEFAULT 0, server_time_ms INTEGER NOT NULL DEFAULT 0, state INTEGER NOT NULL,"
        " read_receipt_sent INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL,"
        " shown INTEGER NOT NULL DEFAULT 1);"
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, message_id BLOB NOT NULL UNIQUE, phone TEXT NOT NULL,"
        " body BLOB NOT NULL, created_ms INTEGER NOT NULL);"
        "INSERT INTO identity VALUES (1, zeroblob(32), 77, 'ws://x:1', NULL, '+15550000030', zeroblob(16), 1);"
        "INSERT INTO messages (id, direction, peer_phone, text, state, created_ms)"
        " VALUES (x'01010101010101010101010101010101', 1, '+15550000031', 'old', 1, 1);"
        "INSERT INTO outbox (message_id, phone, body, created_ms)"
        " VALUES (x'01010101010101010101010101010101', '+15550000031', x'0a036f6c64', 1);"
        /* incoming: one from +15550000031 (read), one unread, one from a sender never named */
        "INSERT INTO messages (id, direction, peer_phone, peer_account, from_device, text, state, created_ms)"
        " VALUES (x'02020202020202020202020202020202', 0, '+15550000031', x'31313131313131313131313131313131', 1,"
        " 'hi', 4, 2), (x'03030303030303030303030303030303', 0, '+15550000031',"
        " x'31313131313131313131313131313131', 1, 'unread', 5, 3), (x'04040404040404040404040404040404', 0, NULL,"
        " x'32323232323232323232323232323232', 1, 'who', 5, 4);";
    CHECK(sqlite3_exec(s, v2, NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(s);
    db *d = NULL;
    char err[300] = "";
    CHECK_RC(db_open(&d, v2dir, err, sizeof err), DB_OK);
    if (!d) {
        fprintf(stderr, "migration: %s\n", err);
        return;
    }
    db_identity id;
    CHECK_RC(db_identity_get(d, &id), DB_OK);
    CHECK(id.registered && id.registration_id == 77);
    db_outbox_entry e[2];
    size_t n = 0;
    CHECK_RC(db_outbox_load(d, e, 2, &n), DB_OK);
    CHECK(n == 1 && e[0].body_len == 5 && !e[0].sealed && !e[0].resend);
    CHECK(n == 1 && strcmp(e[0].conversation, "+15550000031") == 0); /* v5: the outbox names its chat */
    db_outbox_free(e, n);
    /* v5: every row of a number is its one-to-one chat; a sender never named is in none */
    history_count h = {0};
    CHECK_RC(db_history(d, "+15550000031", count_row, &h), DB_OK);
    CHECK(h.n == 3 && h.out == 1 && h.in == 2 && strcmp(h.last_text, "unread") == 0);
    size_t marked = 0;
    CHECK_RC(db_mark_read(d, "+15550000031", &marked), DB_OK);
    CHECK(marked == 1);
    history_count none = {0};
    CHECK_RC(db_history(d, "", count_row, &none), DB_OK);
    CHECK(none.n == 0);
    uint32_t pk = 0;
    CHECK_RC(db_prekey_next_id(d, &pk), DB_OK);
    CHECK(pk == 1);
    db_close(d);
    remove_tree(v2dir);
}

static void test_newer_schema_refused(void)
{
    char path[300];
    snprintf(path, sizeof path, "%s/parley.db", dir);
    sqlite3 *s;
    CHECK(sqlite3_open(path, &s) == SQLITE_OK);
    CHECK(sqlite3_exec(s, "UPDATE schema_version SET version = 99", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(s);
    db *d = NULL;
    char err[300] = "";
    CHECK_RC(db_open(&d, dir, err, sizeof err), DB_ERROR);
    CHECK(d == NULL && strstr(err, "newer") != NULL);
}

/* Message ids start with the time in ms, so that they grow (the server's de-duplication
 * index appends them), and end with 80 random bits. */
static void test_message_ids(void)
{
    uint8_t a[PARLEY_ID_LEN], b[PARLEY_ID_LEN];
    uint64_t before = clock_wall_ms();
    new_message_id(a);
    struct timespec pause = {0, 3 * 1000 * 1000};
    nanosleep(&pause, NULL);
    new_message_id(b);
    uint64_t after = clock_wall_ms(), ms = 0;
    for (int i = 0; i < 6; i++)
        ms = ms << 8 | a[i];
    CHECK(ms >= before && ms <= after);
    CHECK(memcmp(a, b, 6) < 0);
    CHECK(memcmp(a + 6, b + 6, PARLEY_ID_LEN - 6) != 0);
}

int main(void)
{
    RUN(test_message_ids());
    snprintf(dir, sizeof dir, "/tmp/parley-test-client-db-%d/profile", (int)getpid());
    remove_tree(dir);
    RUN(test_files_and_identity());
    RUN(test_contacts());
    RUN(test_outbox_and_states());
    RUN(test_receipt_before_ack());
    RUN(test_incoming());
    RUN(test_unshown());
    RUN(test_transactions());
    RUN(test_sessions_and_prekeys());
    RUN(test_identities());
    RUN(test_retries());
    RUN(test_migration_from_v2());
    RUN(test_identity_follows_the_number());
    RUN(test_newer_schema_refused());
    char top[256];
    snprintf(top, sizeof top, "/tmp/parley-test-client-db-%d", (int)getpid());
    remove_tree(top);
    return check_summary("client_db");
}
