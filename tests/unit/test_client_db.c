/* test_client_db.c - libparley's profile database on a real file: permissions, the
 * identity, contacts, the outbox surviving a reopen, outgoing states that only move
 * forward, incoming de-duplication by (sender account, sender device, id), read
 * receipts, nested transactions that roll back whole, and a refusal to open a
 * database from a newer schema. */
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "db.h"

static char dir[256];

static void remove_tree(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        exit(2);
}

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
    CHECK(n == 3 && strcmp(e[2].phone, "+15550000004") == 0);
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

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/parley-test-client-db-%d/profile", (int)getpid());
    remove_tree(dir);
    test_files_and_identity();
    test_contacts();
    test_outbox_and_states();
    test_receipt_before_ack();
    test_incoming();
    test_unshown();
    test_transactions();
    test_newer_schema_refused();
    char top[256];
    snprintf(top, sizeof top, "/tmp/parley-test-client-db-%d", (int)getpid());
    remove_tree(top);
    return check_summary("client_db");
}
