/* outbox.c - sending. An outbox entry (the packed Content, stored by parley_send_text,
 * or a resend answering a RETRY receipt) goes out in three steps:
 *
 *   1. the devices: the recipient's (contacts cache, else Lookup) and our own other
 *      ones (learned at connect); a resend goes to one device only;
 *   2. a session with each: devices without one get a bundle (FetchBundles); each
 *      bundle's identity key is checked against the one we knew (a change is
 *      recorded and reported first), then X3DH, and the session is stored at once;
 *   3. sealing: inside one write transaction every device's copy is encrypted, and the
 *      updated sessions and the packed Send are stored; only after the commit is the
 *      frame written. A Send that must go again (the connection dropped) goes byte for
 *      byte from the outbox: re-encrypting would burn ratchet steps, and after a crash
 *      a second encryption under a counter already sent would read as a duplicate.
 *
 * DEVICE_MISMATCH (a device added or removed, or re-registered: Error.stale) updates
 * the lists, drops the sessions of stale and departed devices, unseals the entry and
 * starts again at 1 with the same message id; the fifth mismatch fails the message. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "clock.h"
#include "content.pb-c.h"

#define OUTBOX_SCAN 256      /* outbox entries looked at per pass */
#define MAX_MISMATCHES 5     /* DEVICE_MISMATCH answers for one message before it fails */
#define MAX_RESENDS 2        /* resends of one message to one device (RETRY receipts) */

/* One device a message goes to. */
typedef struct {
    uint8_t account[PARLEY_ID_LEN];
    uint32_t device;
    bool own;                /* one of our other devices: DeviceMessage.account_id is set */
} target;

/* The requests of sending, each with its reply handler (below). */
static void on_own_lookup_reply(parley *p, request *r, const Parley__Frame *f);
static void on_lookup_phone_reply(parley *p, request *r, const Parley__Frame *f);
static void on_fetch_reply(parley *p, request *r, const Parley__Frame *f);
static void on_send_reply(parley *p, request *r, const Parley__Frame *f);
static const request_type own_lookup_request = {"own lookup", on_own_lookup_reply, NULL};
const request_type lookup_phone_request = {"lookup by number", on_lookup_phone_reply, NULL};
static const request_type fetch_request = {"fetch bundles", on_fetch_reply, NULL};
static const request_type send_request = {"send", on_send_reply, NULL};

typedef struct {
    request base;
    char phone[PARLEY_PHONE_MAX + 1];
} lookup_phone_req;

typedef struct {
    request base;
    uint8_t account[PARLEY_ID_LEN];     /* whose bundles */
    char phone[PARLEY_CONVERSATION_MAX + 1]; /* the conversation (with this number) */
    uint8_t id[PARLEY_ID_LEN];          /* the outbox entry (zero: none) */
    bool for_identity;                  /* asked by parley_fetch_identity */
    uint32_t devices[DB_MAX_DEVICES];   /* the devices asked for */
    size_t n_devices;
} fetch_req;

typedef struct {
    request base;
    uint8_t id[PARLEY_ID_LEN];          /* the outbox entry */
    uint8_t account[PARLEY_ID_LEN];     /* the recipient */
    char phone[PARLEY_CONVERSATION_MAX + 1]; /* the conversation (with this number) */
    bool resend;                        /* a resend (it has no message of its own) */
} send_req;

static void pause_sends(parley *p, uint32_t ms)
{
    uint64_t until = clock_mono_ms() + ms;
    if (until > p->out.pause.until)
        p->out.pause.until = until;
}

static void transient_send_error(parley *p)
{
    p->out.pause.errors++;
    pause_sends(p, backoff_ms(p->out.pause.errors));
}

/* The message fails for good (a resend, which has no message, just leaves the outbox). */
static void fail_message(parley *p, const uint8_t id[PARLEY_ID_LEN], const char *phone, const char *reason)
{
    bool changed;
    if (db_outgoing_failed(p->db, id, reason, &changed) != DB_OK) {
        emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        return;
    }
    if (changed)
        emit_state(p, id, phone, PARLEY_STATE_FAILED, 0, reason);
}

/* Every queued message to phone fails (no account has the number). */
static void fail_phone(parley *p, const char *phone, const char *reason)
{
    db_outbox_entry *e = calloc(OUTBOX_SCAN, sizeof *e);
    size_t n;
    if (!e)
        return;
    if (db_outbox_load(p->db, e, OUTBOX_SCAN, &n) == DB_OK) {
        for (size_t i = 0; i < n; i++)
            if (strcmp(e[i].conversation, phone) == 0)
                fail_message(p, e[i].id, phone, reason);
        db_outbox_free(e, n);
    }
    free(e);
}

/* A request about the conversation with phone is out: its messages wait for it. */
static bool phone_busy(const parley *p, const char *phone)
{
    for (request *r = req_first(p, &send_request); r; r = req_next(r, &send_request))
        if (strcmp(((send_req *)r)->phone, phone) == 0)
            return true;
    for (request *r = req_first(p, &lookup_phone_request); r; r = req_next(r, &lookup_phone_request))
        if (strcmp(((lookup_phone_req *)r)->phone, phone) == 0)
            return true;
    for (request *r = req_first(p, &fetch_request); r; r = req_next(r, &fetch_request))
        if (strcmp(((fetch_req *)r)->phone, phone) == 0)
            return true;
    return false;
}

static void lookup_phone(parley *p, const char *phone)
{
    if (req_count(p, &lookup_phone_request) + req_count(p, &lookup_account_request) >= MAX_LOOKUPS)
        return;
    lookup_phone_req *r = req_new(p, &lookup_phone_request, sizeof *r);
    if (!r)
        return;
    snprintf(r->phone, sizeof r->phone, "%s", phone);
    Parley__Lookup l = PARLEY__LOOKUP__INIT;
    l.phone = r->phone;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_LOOKUP;
    f.lookup = &l;
    req_send(p, &r->base, &f);
}

/* ---- device lists ----------------------------------------------------------------------- */

static bool list_ok(const Parley__DeviceList *dl)
{
    return dl && dl->has_account_id && dl->account_id.len == PARLEY_ID_LEN;
}

static bool has_device(const uint32_t *devs, size_t n, uint32_t d)
{
    for (size_t i = 0; i < n; i++)
        if (devs[i] == d)
            return true;
    return false;
}

void set_own_devices(parley *p, const Parley__DeviceList *dl)
{
    p->out.n_own = 0;
    for (size_t i = 0; dl && i < dl->n_device_ids && p->out.n_own < DB_MAX_DEVICES; i++)
        if (dl->device_ids[i] != p->ident.device && !has_device(p->out.own_devices, p->out.n_own, dl->device_ids[i]))
            p->out.own_devices[p->out.n_own++] = dl->device_ids[i];
}

bool store_device_list(parley *p, const Parley__DeviceList *dl, const char *phone)
{
    if (!list_ok(dl))
        return false;
    db_contact c;
    memset(&c, 0, sizeof c);
    memcpy(c.account, dl->account_id.data, PARLEY_ID_LEN);
    if (phone && parley_phone_valid(phone))
        snprintf(c.phone, sizeof c.phone, "%s", phone);
    for (size_t i = 0; i < dl->n_device_ids && c.n_devices < DB_MAX_DEVICES; i++)
        if (dl->device_ids[i] != 0 && !has_device(c.devices, c.n_devices, dl->device_ids[i]))
            c.devices[c.n_devices++] = dl->device_ids[i];
    /* the number may have moved to this account: every key we know of the account is
     * compared with the one the number had (db_peer_identity_put), and a change recorded
     * before the key is used */
    uint32_t changed[DB_MAX_DEVICES];
    bool was_verified[DB_MAX_DEVICES];
    size_t n_changed = 0;
    if (db_begin(p->db) != DB_OK)
        goto storage;
    if (db_contact_put(p->db, &c) != DB_OK)
        goto rollback;
    for (size_t i = 0; c.phone[0] && i < c.n_devices; i++) {
        uint8_t key[DB_KEY_LEN];
        db_identity_seen seen;
        int rc = db_peer_identity_get(p->db, c.account, c.devices[i], key);
        if (rc == DB_ERROR)
            goto rollback;
        if (rc != DB_OK)
            continue; /* not seen yet: compared when it is */
        if (e2e_identity_seen(p->db, c.account, c.devices[i], c.phone, key, &seen) != E2E_OK)
            goto rollback;
        if (seen.changed) {
            was_verified[n_changed] = seen.was_verified;
            changed[n_changed++] = c.devices[i];
        }
    }
    if (db_commit(p->db) != DB_OK)
        goto storage;
    for (size_t i = 0; i < n_changed; i++)
        emit_identity_changed(p, c.phone, changed[i], was_verified[i]);
    return true;
rollback:
    db_rollback(p->db);
storage:
    emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
    return false;
}

/* The server's current list for an account: stored, and the sessions of devices that
 * left dropped. Our own account also updates the devices we copy messages to. */
static bool update_devices(parley *p, const Parley__DeviceList *dl, const char *phone)
{
    if (!list_ok(dl))
        return true;
    db_contact old;
    bool ok = true;
    if (db_contact_by_account(p->db, dl->account_id.data, &old) == DB_OK)
        for (size_t i = 0; ok && i < old.n_devices; i++)
            if (!has_device(dl->device_ids, dl->n_device_ids, old.devices[i]))
                ok = db_session_delete(p->db, old.account, old.devices[i]) == DB_OK;
    bool own = same_id(dl->account_id.data, p->ident.account);
    ok = ok && store_device_list(p, dl, own ? p->ident.phone : phone);
    if (ok && own)
        set_own_devices(p, dl);
    return ok;
}

/* Devices the server has no bundle for: gone since we listed them. */
static void forget_devices(parley *p, const uint8_t account[PARLEY_ID_LEN], const uint32_t *gone, size_t n)
{
    db_contact c;
    if (!n || db_contact_by_account(p->db, account, &c) != DB_OK)
        return;
    uint32_t keep[DB_MAX_DEVICES];
    size_t k = 0;
    for (size_t i = 0; i < c.n_devices; i++)
        if (!has_device(gone, n, c.devices[i]))
            keep[k++] = c.devices[i];
    Parley__DeviceList dl = PARLEY__DEVICE_LIST__INIT;
    dl.has_account_id = 1;
    dl.account_id = (ProtobufCBinaryData){PARLEY_ID_LEN, c.account};
    dl.n_device_ids = k;
    dl.device_ids = keep;
    update_devices(p, &dl, c.phone);
}

static void on_own_lookup_reply(parley *p, request *r, const Parley__Frame *f)
{
    (void)r;
    if (f->body_case == PARLEY__FRAME__BODY_LOOKUP_RESULT && list_ok(f->lookup_result->devices) &&
        same_id(f->lookup_result->devices->account_id.data, p->ident.account)) {
        update_devices(p, f->lookup_result->devices, p->ident.phone);
    } else {
        db_contact c; /* fall back on what we knew */
        if (db_contact_by_phone(p->db, p->ident.phone, &c) == DB_OK) {
            Parley__DeviceList dl = PARLEY__DEVICE_LIST__INIT;
            dl.n_device_ids = c.n_devices;
            dl.device_ids = c.devices;
            set_own_devices(p, &dl);
        }
    }
    p->out.own_known = true;
}

static void on_lookup_phone_reply(parley *p, request *req, const Parley__Frame *f)
{
    const lookup_phone_req *r = (const lookup_phone_req *)req;
    char reason[200];
    if (f->body_case == PARLEY__FRAME__BODY_LOOKUP_RESULT && f->lookup_result->devices &&
        f->lookup_result->devices->n_device_ids > 0) {
        if (list_ok(f->lookup_result->devices))
            update_devices(p, f->lookup_result->devices, r->phone);
        else
            transient_send_error(p); /* devices without an account: a failed lookup, after a pause */
        return;
    }
    if (f->body_case == PARLEY__FRAME__BODY_LOOKUP_RESULT ||
        (f->body_case == PARLEY__FRAME__BODY_ERROR && (f->error->code == PERR_UNKNOWN_ACCOUNT ||
                                                      f->error->code == PERR_INVALID_PHONE))) {
        snprintf(reason, sizeof reason, "no account has the number %s", r->phone);
        fail_phone(p, r->phone, reason);
        if (strcmp(p->out.want_identity, r->phone) == 0) {
            p->out.want_identity[0] = 0;
            emit_error(p, PARLEY_ERR_UNKNOWN_NUMBER, reason);
        }
        return;
    }
    transient_send_error(p);
}

/* ---- bundles ----------------------------------------------------------------------------- */

static bool fetch_in_flight(const parley *p, const uint8_t account[PARLEY_ID_LEN])
{
    for (request *r = req_first(p, &fetch_request); r; r = req_next(r, &fetch_request))
        if (same_id(((fetch_req *)r)->account, account))
            return true;
    return false;
}

/* Asks for the bundles of devs of account, for the entry id of the conversation phone. */
static void fetch_bundles(parley *p, const uint8_t account[PARLEY_ID_LEN], const uint32_t *devs, size_t n,
                          const char *phone, const uint8_t *entry, bool for_identity)
{
    if (n == 0 || n > DB_MAX_DEVICES || req_count(p, &fetch_request) >= MAX_FETCHES)
        return;
    fetch_req *r = req_new(p, &fetch_request, sizeof *r);
    if (!r)
        return;
    memcpy(r->account, account, PARLEY_ID_LEN);
    snprintf(r->phone, sizeof r->phone, "%s", phone);
    if (entry)
        memcpy(r->id, entry, PARLEY_ID_LEN);
    r->for_identity = for_identity;
    memcpy(r->devices, devs, n * sizeof *devs);
    r->n_devices = n;
    Parley__FetchBundles fb = PARLEY__FETCH_BUNDLES__INIT;
    fb.has_account_id = 1;
    fb.account_id = (ProtobufCBinaryData){PARLEY_ID_LEN, r->account};
    fb.n_device_ids = n;
    fb.device_ids = r->devices;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_FETCH_BUNDLES;
    f.fetch_bundles = &fb;
    req_send(p, &r->base, &f);
}

/* A bundle from the server as the session layer takes it. */
static int parse_bundle(const Parley__Bundle *b, ps_bundle *out)
{
    const Parley__SignedPreKey *s = b->signed_prekey;
    const Parley__PreKey *k = b->prekey;
    if (!b->has_device_id || !b->has_identity_key || !s || !s->has_id || !s->has_public_key || !s->has_signature)
        return PS_ERR_INVALID_MESSAGE;
    bool has_prekey = k && k->has_id && k->has_public_key;
    return e2e_bundle_parse(out, b->device_id, b->has_registration_id ? b->registration_id : 0,
                            b->identity_key.data, b->identity_key.len, s->id, s->public_key.data,
                            s->public_key.len, s->signature.data, s->signature.len, has_prekey,
                            has_prekey ? k->id : 0, has_prekey ? k->public_key.data : NULL,
                            has_prekey ? k->public_key.len : 0);
}

/* A session with (account, b->device_id) from its bundle, in one write transaction (a
 * session another process made meanwhile is kept as a previous one): the identity key
 * is checked first (a change is recorded, and reported after the commit), then the
 * session is stored. */
static int session_from_bundle(parley *p, const uint8_t account[PARLEY_ID_LEN], const char *phone,
                               const ps_bundle *b)
{
    ps_bytes rec = {0};
    db_identity_seen seen = {0};
    if (db_begin(p->db) != DB_OK)
        return E2E_ERR_STORAGE;
    int rc = e2e_session_from_bundle(p->db, account, b, &rec);
    if (rc == E2E_OK && (rc = e2e_identity_seen(p->db, account, b->device_id, phone, b->identity_key, &seen)) == E2E_OK)
        rc = db_session_put(p->db, account, b->device_id, rec.data, rec.len) == DB_OK ? E2E_OK : E2E_ERR_STORAGE;
    if (rc == E2E_OK)
        rc = db_commit(p->db) == DB_OK ? E2E_OK : E2E_ERR_STORAGE;
    else
        db_rollback(p->db);
    ps_bytes_free(&rec);
    if (rc == E2E_OK && seen.changed)
        emit_identity_changed(p, phone, b->device_id, seen.was_verified);
    return rc;
}

static void on_fetch_reply(parley *p, request *req, const Parley__Frame *f)
{
    const fetch_req *r = (const fetch_req *)req;
    char reason[400];
    bool own = same_id(r->account, p->ident.account);
    const char *phone = own ? p->ident.phone : r->phone;
    if (f->body_case == PARLEY__FRAME__BODY_ERROR) {
        const Parley__Error *err = f->error;
        if (err->code == PERR_RATE_LIMITED) {
            pause_sends(p, err->retry_after_ms ? (err->retry_after_ms < 60000 ? err->retry_after_ms : 60000) : 1000);
        } else if (err->code == PERR_UNKNOWN_ACCOUNT && !own) {
            db_contact_forget_phone(p->db, r->phone); /* a new lookup decides */
        } else if (err->code == PERR_UNKNOWN_FRAME) {
            p->out.disabled = true; /* a server without a keys directory cannot carry our messages */
            emit_error(p, PARLEY_ERR_UNSUPPORTED, "the server has no keys directory (FetchBundles): it cannot carry "
                                                  "end-to-end encrypted messages");
        } else {
            transient_send_error(p);
        }
        return;
    }
    const Parley__Bundles *bs = f->body_case == PARLEY__FRAME__BODY_BUNDLES ? f->bundles : NULL;
    if (!bs || (bs->has_account_id && (bs->account_id.len != PARLEY_ID_LEN || !same_id(bs->account_id.data, r->account)))) {
        transient_send_error(p);
        return;
    }
    uint32_t gone[DB_MAX_DEVICES];
    size_t n_gone = 0;
    bool bad = false;
    for (size_t i = 0; i < r->n_devices; i++) {
        const Parley__Bundle *b = NULL;
        for (size_t j = 0; j < bs->n_bundles && !b; j++)
            if (bs->bundles[j]->has_device_id && bs->bundles[j]->device_id == r->devices[i])
                b = bs->bundles[j];
        if (!b) {
            gone[n_gone++] = r->devices[i];
            continue;
        }
        ps_bundle pb;
        int rc = parse_bundle(b, &pb);
        if (rc == PS_OK)
            rc = session_from_bundle(p, r->account, phone, &pb);
        sodium_memzero(&pb, sizeof pb);
        if (rc == E2E_ERR_STORAGE) {
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
            return;
        }
        if (rc != E2E_OK && !bad) {
            bad = true;
            snprintf(reason, sizeof reason, "the server handed out unusable keys for device %u of %s (%s)",
                     r->devices[i], phone, e2e_strerror(rc));
        }
    }
    forget_devices(p, r->account, gone, n_gone);
    if (r->for_identity) {
        if (strcmp(p->out.want_identity, r->phone) == 0) {
            p->out.want_identity[0] = 0;
            if (n_gone || bad)
                emit_error(p, n_gone ? PARLEY_ERR_UNKNOWN_NUMBER : PARLEY_ERR_REFUSED,
                           n_gone ? "the number has no primary device with keys" : reason);
        }
        return;
    }
    uint32_t count = 0;
    if (bad) {
        fail_message(p, r->id, r->phone, reason); /* a hostile or broken server: not this message */
    } else if (n_gone && db_outbox_unseal(p->db, r->id, &count) == DB_OK && count >= MAX_MISMATCHES) {
        /* listed, but without keys (gone, or a client that never published any): the
         * lists are asked for again, a few times */
        snprintf(reason, sizeof reason, "the devices of %s kept changing or have no keys; gave up after %u tries",
                 phone, count);
        fail_message(p, r->id, r->phone, reason);
    }
}

/* ---- sealing and sending ------------------------------------------------------------------ */

/* The devices entry e goes to (c: the recipient's contact; unused for a resend). */
static size_t entry_targets(const parley *p, const db_outbox_entry *e, const db_contact *c, target *t)
{
    size_t n = 0;
    if (e->resend) {
        if (!(same_id(e->resend_account, p->ident.account) && e->resend_device == p->ident.device)) {
            memcpy(t[0].account, e->resend_account, PARLEY_ID_LEN);
            t[0].device = e->resend_device;
            t[0].own = false;
            n = 1;
        }
        return n;
    }
    bool to_self = same_id(c->account, p->ident.account); /* a note to ourselves */
    for (size_t i = 0; i < c->n_devices; i++) {
        if (to_self && c->devices[i] == p->ident.device)
            continue; /* a device never sends to itself */
        memcpy(t[n].account, c->account, PARLEY_ID_LEN);
        t[n].device = c->devices[i];
        t[n++].own = false;
    }
    for (size_t i = 0; !to_self && i < p->out.n_own; i++) {
        memcpy(t[n].account, p->ident.account, PARLEY_ID_LEN);
        t[n].device = p->out.own_devices[i];
        t[n++].own = true;
    }
    return n;
}

/* True when every target has a session; else asks for the missing bundles (at most one
 * fetch per account at a time) and the entry waits. */
static bool ensure_sessions(parley *p, const db_outbox_entry *e, const target *t, size_t n)
{
    bool all = true;
    for (int own = 0; own < 2; own++) {
        uint32_t missing[DB_MAX_DEVICES];
        size_t m = 0;
        const uint8_t *account = NULL;
        for (size_t i = 0; i < n; i++) {
            bool exists = true;
            if (t[i].own != (bool)own)
                continue;
            account = t[i].account;
            /* usable: a readable record with a current state (an unreadable or archived one
             * needs a new session from a bundle) */
            int rc = e2e_session_usable(p->db, t[i].account, t[i].device, &exists);
            if (rc == E2E_ERR_STORAGE)
                emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
            if (rc != E2E_OK)
                return false; /* out of memory: the next pass */
            if (!exists && m < DB_MAX_DEVICES)
                missing[m++] = t[i].device;
        }
        if (m == 0)
            continue;
        all = false;
        if (!fetch_in_flight(p, account))
            fetch_bundles(p, account, missing, m, e->conversation, e->id, false);
    }
    return all;
}

/* Sends a sealed Send as it was stored. */
static void send_sealed(parley *p, const db_outbox_entry *e, const uint8_t *sealed, size_t len)
{
    Parley__Send *s = parley__send__unpack(NULL, len, sealed);
    uint32_t count;
    if (!s || !s->has_recipient_account || s->recipient_account.len != PARLEY_ID_LEN) {
        if (s)
            parley__send__free_unpacked(s, NULL);
        db_outbox_unseal(p->db, e->id, &count); /* unreadable: sealed again */
        return;
    }
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_SEND;
    f.send = s;
    if (!conn_fits(&p->conn, &f)) { /* a server that now takes smaller frames */
        fail_message(p, e->id, e->conversation, "the message is larger than this server accepts");
    } else {
        send_req *r = req_new(p, &send_request, sizeof *r);
        if (r) {
            memcpy(r->id, e->id, PARLEY_ID_LEN);
            memcpy(r->account, s->recipient_account.data, PARLEY_ID_LEN);
            snprintf(r->phone, sizeof r->phone, "%s", e->conversation);
            r->resend = e->resend;
            req_send(p, &r->base, &f);
        }
    }
    parley__send__free_unpacked(s, NULL);
}

/* Encrypts e for every target and stores the sessions and the sealed Send in one write
 * transaction (another process on the profile waits: no counter is used twice), then
 * sends it. Returns false when the entry failed for good. */
static bool seal_entry(parley *p, const db_outbox_entry *e, const uint8_t recipient[PARLEY_ID_LEN], const target *t,
                       size_t n)
{
    e2e_sealed *sl = calloc(n, sizeof *sl);
    Parley__DeviceMessage *dms = calloc(n, sizeof *dms);
    Parley__DeviceMessage **dmp = calloc(n, sizeof *dmp);
    uint8_t *packed = NULL;
    const char *failure = NULL;
    char reason[300];
    bool began = false, ok = true, drop = false;
    /* an error is reported only once the transaction is over: a handler that writes
     * (parley_send_text, parley_mark_read) must not write inside it, to be rolled back */
    int err_code = 0;
    char err_msg[300];
    db_blob already;
    if (!sl || !dms || !dmp)
        goto nomem;
    if (db_begin(p->db) != DB_OK)
        goto storage;
    began = true;
    int rc = db_outbox_sealed(p->db, e->id, &already);
    if (rc == DB_ERROR)
        goto storage;
    if (rc == DB_OK) { /* another process sealed it meanwhile: that is the one to send */
        began = false;
        if (db_commit(p->db) == DB_OK)
            send_sealed(p, e, already.data, already.len);
        db_blob_free(&already);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        rc = e2e_encrypt(p->db, t[i].account, t[i].device, e->body, e->body_len, &sl[i]);
        if (rc == E2E_ERR_STORAGE)
            goto storage;
        if (rc == PS_ERR_NOMEM) /* tried again on the next pass */
            goto nomem;
        if (rc == PS_ERR_NO_SESSION) /* deleted meanwhile: the next pass fetches a bundle */
            goto out;
        if (rc != PS_OK) {
            snprintf(reason, sizeof reason, "cannot encrypt for device %u: %s", t[i].device, e2e_strerror(rc));
            failure = reason;
            goto out;
        }
        if (sl[i].body.len + CONN_BODY_OVERHEAD > p->conn.max_frame) { /* the server's own limit */
            failure = "the message is larger than this server accepts";
            goto out;
        }
        if (e->resend) { /* only to the identity the original was sealed for: not to a new install */
            uint8_t key[DB_KEY_LEN];
            rc = db_resend_identity(p->db, e->id, key);
            if (rc == DB_ERROR)
                goto storage;
            drop = rc == DB_NOT_FOUND || sodium_memcmp(key, sl[i].remote_identity, DB_KEY_LEN) != 0;
            if (drop)
                goto out;
        }
        parley__device_message__init(&dms[i]);
        if (t[i].own && !same_id(t[i].account, recipient)) {
            dms[i].has_account_id = 1;
            dms[i].account_id = (ProtobufCBinaryData){PARLEY_ID_LEN, (uint8_t *)t[i].account};
        }
        dms[i].has_device_id = 1;
        dms[i].device_id = t[i].device;
        dms[i].has_type = 1;
        dms[i].type = (uint32_t)sl[i].type;
        dms[i].has_body = 1;
        dms[i].body = (ProtobufCBinaryData){sl[i].body.len, sl[i].body.data};
        if (sl[i].registration_id) {
            dms[i].has_registration_id = 1;
            dms[i].registration_id = sl[i].registration_id;
        }
        dmp[i] = &dms[i];
    }
    Parley__Send s = PARLEY__SEND__INIT;
    s.has_message_id = 1;
    s.message_id = (ProtobufCBinaryData){PARLEY_ID_LEN, (uint8_t *)e->id};
    s.has_recipient_account = 1;
    s.recipient_account = (ProtobufCBinaryData){PARLEY_ID_LEN, (uint8_t *)recipient};
    s.n_messages = n;
    s.messages = dmp;
    if (e->resend) {
        s.has_resend = 1;
        s.resend = 1;
    }
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_SEND;
    f.send = &s;
    if (!conn_fits(&p->conn, &f)) {
        failure = "the message is larger than this server accepts";
        goto out;
    }
    size_t len = parley__send__get_packed_size(&s);
    if (!(packed = malloc(len)))
        goto nomem;
    parley__send__pack(&s, packed);
    for (size_t i = 0; i < n; i++)
        if (e2e_sealed_commit(p->db, t[i].account, t[i].device, &sl[i]) != E2E_OK ||
            (!e->resend && db_recipient_add(p->db, e->id, t[i].account, t[i].device, sl[i].remote_identity) != DB_OK))
            goto storage;
    rc = db_outbox_seal(p->db, e->id, packed, len);
    if (rc == DB_NOT_FOUND) /* acked or failed meanwhile (another process) */
        goto out;
    if (rc != DB_OK)
        goto storage;
    began = false;
    if (db_commit(p->db) != DB_OK)
        goto storage;
    /* durable: now it may go */
    send_req *r = req_new(p, &send_request, sizeof *r);
    if (r) {
        memcpy(r->id, e->id, PARLEY_ID_LEN);
        memcpy(r->account, recipient, PARLEY_ID_LEN);
        snprintf(r->phone, sizeof r->phone, "%s", e->conversation);
        r->resend = e->resend;
        req_send(p, &r->base, &f);
    }
    goto out;
nomem:
    err_code = PARLEY_ERR_NOMEM;
    snprintf(err_msg, sizeof err_msg, "out of memory");
    goto out;
storage:
    err_code = PARLEY_ERR_STORAGE;
    snprintf(err_msg, sizeof err_msg, "%s", db_errmsg(p->db));
out:
    if (began)
        db_rollback(p->db);
    if (err_code)
        emit_error(p, err_code, err_msg);
    if (failure || drop) { /* a dropped resend just leaves the outbox */
        fail_message(p, e->id, e->conversation, failure);
        ok = false;
    }
    for (size_t i = 0; sl && i < n; i++)
        e2e_sealed_clear(&sl[i]);
    free(sl);
    free(dms);
    free(dmp);
    free(packed);
    return ok;
}

/* A note to ourselves with no other device to copy it to: kept here only. */
static void note_to_self(parley *p, const db_outbox_entry *e, const uint8_t account[PARLEY_ID_LEN])
{
    bool changed;
    uint64_t now = clock_wall_ms();
    if (db_outgoing_sent(p->db, e->id, account, now, &changed) != DB_OK) {
        emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        return;
    }
    if (changed)
        emit_state(p, e->id, e->conversation, PARLEY_STATE_SENT, now, NULL);
}

/* A resend whose device is no longer listed has nothing to do. */
static bool resend_target_gone(parley *p, const db_outbox_entry *e)
{
    if (same_id(e->resend_account, p->ident.account))
        return !has_device(p->out.own_devices, p->out.n_own, e->resend_device);
    db_contact c;
    return db_contact_by_account(p->db, e->resend_account, &c) == DB_OK &&
           !has_device(c.devices, c.n_devices, e->resend_device);
}

/* Moves one entry on: returns false when it failed for good (the next entry of its
 * conversation may go), true when it went or waits for something. */
static bool send_entry(parley *p, const db_outbox_entry *e)
{
    if (parley_conversation_kind_of(e->conversation) != PARLEY_CONVERSATION_DIRECT) {
        /* a profile written by a newer parley (group sends come with the groups issue) */
        fail_message(p, e->id, e->conversation, "this version of parley cannot send to groups");
        return false;
    }
    if (e->sealed) {
        send_sealed(p, e, e->sealed, e->sealed_len);
        return true;
    }
    db_contact c;
    memset(&c, 0, sizeof c);
    const uint8_t *recipient = e->resend_account;
    if (!e->resend) {
        int rc = db_contact_by_phone(p->db, e->conversation, &c);
        if (rc == DB_ERROR) {
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
            return true;
        }
        if (rc == DB_NOT_FOUND || c.n_devices == 0) {
            lookup_phone(p, e->conversation);
            return true;
        }
        recipient = c.account;
        if (e->body_len + CONN_BODY_OVERHEAD > p->conn.max_frame) { /* the server's own limit */
            fail_message(p, e->id, e->conversation, "the message is larger than this server accepts");
            return false;
        }
    } else if (resend_target_gone(p, e)) {
        fail_message(p, e->id, e->conversation, NULL);
        return false;
    }
    target t[2 * DB_MAX_DEVICES];
    size_t n = entry_targets(p, e, &c, t);
    if (n == 0) {
        if (e->resend)
            fail_message(p, e->id, e->conversation, NULL);
        else
            note_to_self(p, e, c.account);
        return !e->resend;
    }
    if (!ensure_sessions(p, e, t, n))
        return true;
    return seal_entry(p, e, recipient, t, n);
}

/* parley_fetch_identity: the number's account, then its primary device's bundle. */
static void pump_identity(parley *p)
{
    const char *phone = p->out.want_identity;
    if (!phone[0] || phone_busy(p, phone))
        return;
    db_contact c;
    uint8_t key[DB_KEY_LEN];
    int rc = db_contact_by_phone(p->db, phone, &c);
    if (rc == DB_NOT_FOUND) {
        lookup_phone(p, phone);
    } else if (rc == DB_OK && db_peer_identity_get(p->db, c.account, 1, key) == DB_OK) {
        p->out.want_identity[0] = 0; /* known already */
    } else if (rc == DB_OK && !fetch_in_flight(p, c.account)) {
        const uint32_t primary = 1;
        fetch_bundles(p, c.account, &primary, 1, phone, NULL, true);
    }
}

static void pump_outbox(parley *p)
{
    if (!p->ready || !p->out.own_known || p->out.disabled || clock_mono_ms() < p->out.pause.until)
        return;
    pump_identity(p);
    if (req_count(p, &send_request) >= MAX_SENDS)
        return;
    db_outbox_entry *e = calloc(OUTBOX_SCAN, sizeof *e);
    char(*seen)[PARLEY_CONVERSATION_MAX + 1] = calloc(OUTBOX_SCAN, sizeof *seen);
    size_t n = 0, n_seen = 0;
    bool again = false;
    if (!e || !seen || db_outbox_load(p->db, e, OUTBOX_SCAN, &n) != DB_OK) {
        if (e && seen)
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        free(e);
        free(seen);
        return;
    }
    for (size_t i = 0; i < n && p->ready && req_count(p, &send_request) < MAX_SENDS; i++) {
        /* an earlier entry of the same conversation goes first */
        bool blocked = false;
        for (size_t j = 0; j < n_seen && !blocked; j++)
            blocked = strcmp(seen[j], e[i].conversation) == 0;
        if (blocked)
            continue;
        snprintf(seen[n_seen++], sizeof seen[0], "%s", e[i].conversation);
        if (phone_busy(p, e[i].conversation))
            continue;
        if (!send_entry(p, &e[i]))
            again = true; /* it failed for good: the next of its conversation may go */
    }
    db_outbox_free(e, n);
    free(e);
    free(seen);
    if (again)
        pump_outbox(p);
}

/* ---- answers to Send ---------------------------------------------------------------------- */

/* A list in a DEVICE_MISMATCH answer to r is taken only for the message's recipient
 * account or our own. */
static bool mismatch_list_ok(const parley *p, const send_req *r, const Parley__DeviceList *dl)
{
    return list_ok(dl) && (same_id(dl->account_id.data, r->account) || same_id(dl->account_id.data, p->ident.account));
}

static void on_send_reply(parley *p, request *req, const Parley__Frame *f)
{
    const send_req *r = (const send_req *)req;
    char reason[400];
    uint32_t count = 0;
    if (f->body_case == PARLEY__FRAME__BODY_SEND_ACK) {
        const Parley__SendAck *a = f->send_ack;
        bool changed;
        if (db_outgoing_sent(p->db, r->id, r->account, a->server_time_ms, &changed) != DB_OK) {
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
            return;
        }
        p->out.pause.errors = 0;
        if (r->resend)
            return; /* a resend has no message of its own to report */
        /* unchanged: another process on this profile recorded the ack first; report the
         * acknowledgement anyway, with the state the message has now */
        int st = PARLEY_STATE_SENT;
        if (!changed && db_message_state(p->db, r->id, &st) != DB_OK)
            st = PARLEY_STATE_SENT;
        emit_state(p, r->id, r->phone, (parley_state)st, a->server_time_ms, NULL);
        return;
    }
    if (f->body_case != PARLEY__FRAME__BODY_ERROR) {
        transient_send_error(p);
        return;
    }
    const Parley__Error *err = f->error;
    switch (err->code) {
    case PERR_DEVICE_MISMATCH:
        /* the lists we used are stale: take the server's, drop the sessions of devices
         * that left or were registered again, and encrypt again under the same id; all
         * in one transaction. Lists are taken only for the recipient's account or ours:
         * a list naming any other account would move the number to it */
        if (db_begin(p->db) != DB_OK) {
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
            break;
        }
        {
            bool devices_ok = mismatch_list_ok(p, r, err->devices);
            bool stale_ok = mismatch_list_ok(p, r, err->stale);
            bool ok = true;
            if (devices_ok)
                ok = update_devices(p, err->devices, r->phone);
            else if (!stale_ok)
                ok = db_contact_forget_phone(p->db, r->phone) == DB_OK; /* look it up again */
            for (size_t i = 0; ok && stale_ok && i < err->stale->n_device_ids; i++)
                ok = db_session_delete(p->db, err->stale->account_id.data, err->stale->device_ids[i]) == DB_OK;
            ok = ok && db_outbox_unseal(p->db, r->id, &count) == DB_OK;
            if (!ok)
                db_rollback(p->db);
            if (!ok || db_commit(p->db) != DB_OK) {
                emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
                break;
            }
        }
        if (count >= MAX_MISMATCHES) {
            snprintf(reason, sizeof reason, "the devices of %s kept changing or have no keys; gave up after %u tries",
                     r->phone, count);
            fail_message(p, r->id, r->phone, r->resend ? NULL : reason);
        }
        break;
    case PERR_RATE_LIMITED:
        pause_sends(p, err->retry_after_ms ? (err->retry_after_ms < 60000 ? err->retry_after_ms : 60000) : 1000);
        break;
    case PERR_UNKNOWN_ACCOUNT:
        /* a new lookup decides; what was sealed for the old account goes again */
        db_contact_forget_phone(p->db, r->phone);
        if (r->resend)
            fail_message(p, r->id, r->phone, NULL);
        else
            db_outbox_unseal(p->db, r->id, &count);
        break;
    case PERR_DAILY_QUOTA: /* every message waits for the next day: ask again within the hour */
        pause_sends(p, err->retry_after_ms && err->retry_after_ms < 3600000 ? err->retry_after_ms : 3600000);
        snprintf(reason, sizeof reason, "%s; messages stay queued", server_reason(err));
        emit_error(p, PARLEY_ERR_REFUSED, reason);
        break;
    case PERR_INBOX_FULL: /* its device has been away for long: failing tells the sender */
    case PERR_TOO_MANY_RECIPIENTS:
    case PERR_FRAME_TOO_LARGE:
    case PERR_PLAINTEXT_REFUSED:
    case PERR_MALFORMED_FRAME: /* this message; the next ones may be fine */
        snprintf(reason, sizeof reason, "the server refused the message: %s", server_reason(err));
        fail_message(p, r->id, r->phone, reason);
        break;
    case PERR_STORAGE_FULL:
    case PERR_INTERNAL:
        transient_send_error(p);
        snprintf(reason, sizeof reason, "the server could not take a message now (%s); retrying",
                 server_reason(err));
        emit_error(p, PARLEY_ERR_REFUSED, reason);
        break;
    default:
        /* UNKNOWN_FRAME (a server without messaging), or a frame it cannot read: sending
         * again on this connection would only repeat it */
        p->out.disabled = true;
        snprintf(reason, sizeof reason, "the server does not accept messages: %s", server_reason(err));
        emit_error(p, err->code == PERR_UNKNOWN_FRAME ? PARLEY_ERR_UNSUPPORTED : PARLEY_ERR_REFUSED,
                   reason);
        break;
    }
}

/* ---- resends ----------------------------------------------------------------------------- */

bool queue_resend(parley *p, const uint8_t id[PARLEY_ID_LEN], const uint8_t account[PARLEY_ID_LEN], uint32_t device)
{
    db_resend_source src;
    int rc = db_resend_source_get(p->db, id, account, device, &src);
    if (rc == DB_NOT_FOUND)
        return true; /* not ours (or no text): nothing to resend */
    if (rc != DB_OK)
        return false;
    bool ok = true;
    if (src.resends < MAX_RESENDS) {
        Parley__Content c = PARLEY__CONTENT__INIT;
        c.text = src.text;
        c.has_sent_ms = 1;
        c.sent_ms = src.sent_ms;
        c.has_retry_of = 1;
        c.retry_of = (ProtobufCBinaryData){PARLEY_ID_LEN, src.original};
        size_t len = parley__content__get_packed_size(&c);
        uint8_t *body = malloc(len), new_id[PARLEY_ID_LEN];
        new_message_id(new_id);
        /* only for the device and identity the message was sealed for (a RETRY from a
         * new install, or a forged one, changes nothing); then a new session, the old
         * one archived: messages the reader already has from it still decrypt */
        uint8_t sealed_for[DB_KEY_LEN], now_key[DB_KEY_LEN];
        int krc = db_recipient_identity(p->db, src.original, account, device, sealed_for);
        int nrc = krc == DB_OK ? db_peer_identity_get(p->db, account, device, now_key) : DB_NOT_FOUND;
        if (krc == DB_ERROR || nrc == DB_ERROR) {
            ok = false;
        } else if (krc != DB_OK || nrc != DB_OK || sodium_memcmp(sealed_for, now_key, DB_KEY_LEN) != 0) {
            free(body);
            body = NULL; /* nothing to resend */
            goto done;
        }
        ok = ok && body && e2e_session_archive(p->db, account, device) == E2E_OK;
        if (ok) {
            parley__content__pack(&c, body);
            ok = db_resend_add(p->db, new_id, src.original, src.conversation, account, device, body, len) == DB_OK;
            sodium_memzero(body, len);
        }
        free(body);
    }
done:
    sodium_memzero(src.text, src.text_len);
    free(src.text);
    return ok;
}

/* ---- the feature ------------------------------------------------------------------------- */

/* Our own device list first: every message goes to our other devices too. */
static void outbox_ready(parley *p)
{
    request *r = req_new(p, &own_lookup_request, sizeof *r);
    Parley__Lookup l = PARLEY__LOOKUP__INIT;
    l.phone = p->ident.phone;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_LOOKUP;
    f.lookup = &l;
    if (r)
        req_send(p, r, &f);
}

static void outbox_down(parley *p)
{
    p->out.own_known = false;
    p->out.n_own = 0;
    p->out.disabled = false;
}

static uint64_t outbox_deadline(const parley *p)
{
    return p->out.disabled ? UINT64_MAX : pause_deadline(&p->out.pause);
}

static void outbox_timers(parley *p, uint64_t now)
{
    if (pause_over(&p->out.pause, now))
        pump_outbox(p);
}

const client_feature outbox_feature = {
    .name = "outbox",
    .ready = outbox_ready,
    .down = outbox_down,
    .pump = pump_outbox,
    .deadline = outbox_deadline,
    .timers = outbox_timers,
};
