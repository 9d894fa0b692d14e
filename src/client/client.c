/* client.c - libparley's public API (include/parley.h): registration, the outbox, the
 * deliveries, receipts and events, on top of conn (the session) and db (SQLite).
 *
 * Per connection, once authenticated: look up our own devices, then send the outbox
 * in queue order, one message in flight per conversation (so a retry never reorders
 * a conversation) and up to MAX_SENDS conversations at once. Deliveries are handled
 * strictly in order: a Deliver frame waits until every sender in it has a name (a
 * reverse lookup), then all its envelopes are stored in one transaction, and only
 * after the commit is the DeliverAck sent and are the events reported. */
#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conn.h"
#include "content.pb-c.h"
#include "db.h"
#include "parley.h"
#include "primitives.h"
#include "utf8.h"

#define MAX_REQUESTS 64          /* requests in flight on one connection */
#define MAX_SENDS 16             /* Send frames in flight (each a different conversation) */
#define MAX_LOOKUPS 16           /* Lookup frames in flight */
#define OUTBOX_SCAN 256          /* outbox entries looked at per pass */
#define MAX_DELIVER_QUEUE 512    /* Deliver frames waiting for sender names: above any
                                    sane server window (parleyd: 256 envelopes) */
#define MAX_DELIVER_BYTES (64u << 20) /* and their packed size together */
#define MAX_UNNAMED 4096         /* accounts the server could not name, per connection: more than
                                    * one Deliver frame can hold, so none is asked twice */
#define RECEIPT_BATCH 1000       /* message ids per Receipt frame */
#define MAX_BODY (256 * 1024)    /* an incoming body larger than this is not read */
#define MAX_MISMATCHES 5         /* DEVICE_MISMATCH in a row before pausing */
#define RETRY_MAX_MS 30000

typedef enum {
    REQ_FREE = 0,
    REQ_ONESHOT,
    REQ_OWN_LOOKUP,
    REQ_LOOKUP_PHONE,
    REQ_LOOKUP_ACCOUNT,
    REQ_SEND,
    REQ_RECEIPT,
} req_kind;

typedef struct {
    req_kind kind;
    uint64_t rid;
    char phone[PARLEY_PHONE_MAX + 1];   /* LOOKUP_PHONE, SEND */
    uint8_t id[PARLEY_ID_LEN];          /* SEND: message id; LOOKUP_ACCOUNT: the account */
    uint8_t account[PARLEY_ID_LEN];     /* SEND: recipient; RECEIPT: the author */
    uint8_t (*ids)[PARLEY_ID_LEN];      /* RECEIPT */
    size_t n_ids;
} request;

struct parley {
    db *db;
    db_identity ident;
    char errmsg[512];
    parley_event_fn handler;
    void *handler_ctx;
    int in_callback;
    bool stop;
    conn conn;
    bool conn_used;                 /* conn was initialised (something to tear down) */
    int fatal_status;               /* the connection ended for good with this */
    /* per connection */
    bool ready;
    bool own_known;
    uint32_t own_devices[DB_MAX_DEVICES];   /* our account's other devices */
    size_t n_own;
    request reqs[MAX_REQUESTS];
    Parley__Frame *dq[MAX_DELIVER_QUEUE];   /* Deliver frames in arrival order */
    size_t dq_sizes[MAX_DELIVER_QUEUE];
    size_t dq_head, dq_len, dq_bytes;
    uint8_t unnamed[MAX_UNNAMED][PARLEY_ID_LEN];
    size_t n_unnamed;
    bool sending_disabled;          /* the server does not take Send (this connection) */
    bool receipts_disabled;
    unsigned mismatches;
    unsigned send_errors;           /* transient send errors in a row, for the pause */
    uint64_t send_pause_until;      /* monotonic ms */
    unsigned receipt_errors;
    uint64_t receipt_pause_until;
    /* a one-shot exchange (registration) */
    struct {
        bool active;
        Parley__Frame *req;
        uint64_t rid;
        Parley__Frame *reply;
    } one;
};

/* ---- small things ------------------------------------------------------------------ */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int set_err(parley *p, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int set_err(parley *p, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->errmsg, sizeof p->errmsg, fmt, ap);
    va_end(ap);
    return status;
}

static int db_err(parley *p)
{
    return set_err(p, PARLEY_ERR_STORAGE, "the profile database failed: %s", db_errmsg(p->db));
}

static void emit(parley *p, const parley_event *ev)
{
    if (!p->handler)
        return;
    p->in_callback++;
    p->handler(p->handler_ctx, ev);
    p->in_callback--;
}

static void emit_error(parley *p, int status, const char *reason)
{
    parley_event ev = {.type = PARLEY_EVENT_ERROR};
    ev.error.status = status;
    ev.error.reason = reason;
    emit(p, &ev);
}

static void emit_state(parley *p, const uint8_t id[PARLEY_ID_LEN], const char *peer, parley_state st,
                       uint64_t server_ms, const char *reason)
{
    parley_event ev = {.type = PARLEY_EVENT_STATE};
    memcpy(ev.state.id, id, PARLEY_ID_LEN);
    ev.state.peer = peer;
    ev.state.state = st;
    ev.state.server_time_ms = server_ms;
    ev.state.reason = reason;
    emit(p, &ev);
}

bool parley_phone_valid(const char *phone)
{
    size_t n = phone ? strlen(phone) : 0;
    if (n < 8 || n > PARLEY_PHONE_MAX || phone[0] != '+' || phone[1] < '1' || phone[1] > '9')
        return false;
    for (size_t i = 2; i < n; i++)
        if (phone[i] < '0' || phone[i] > '9')
            return false;
    return true;
}

const char *parley_state_name(parley_state s)
{
    switch (s) {
    case PARLEY_STATE_FAILED: return "failed";
    case PARLEY_STATE_PENDING: return "pending";
    case PARLEY_STATE_SENT: return "sent";
    case PARLEY_STATE_DELIVERED: return "delivered";
    case PARLEY_STATE_READ: return "read";
    case PARLEY_STATE_RECEIVED: return "received";
    }
    return "unknown";
}

const char *parley_strerror(int status)
{
    switch (status) {
    case PARLEY_OK: return "ok";
    case PARLEY_ERR_INVALID: return "invalid argument";
    case PARLEY_ERR_NOMEM: return "out of memory";
    case PARLEY_ERR_STORAGE: return "profile storage failed";
    case PARLEY_ERR_NOT_REGISTERED: return "not registered";
    case PARLEY_ERR_ALREADY_REGISTERED: return "already registered";
    case PARLEY_ERR_NETWORK: return "cannot reach the server";
    case PARLEY_ERR_TIMEOUT: return "timed out";
    case PARLEY_ERR_REFUSED: return "refused by the server";
    case PARLEY_ERR_UNKNOWN_NUMBER: return "no account has this number";
    case PARLEY_ERR_REPLACED: return "another client took over this device";
    case PARLEY_ERR_AUTH: return "the server does not accept this device";
    case PARLEY_ERR_STATE: return "not possible now";
    case PARLEY_ERR_UNSUPPORTED: return "not supported by the server";
    }
    return "unknown error";
}

const char *parley_errmsg(const parley *p)
{
    return p ? p->errmsg : "";
}

static const char *server_reason(const Parley__Error *e)
{
    return e->reason && *e->reason ? e->reason : "no reason given";
}

static bool same_id(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, PARLEY_ID_LEN) == 0;
}

/* ---- requests ------------------------------------------------------------------------ */

static request *req_new(parley *p, req_kind kind)
{
    for (size_t i = 0; i < MAX_REQUESTS; i++)
        if (p->reqs[i].kind == REQ_FREE) {
            memset(&p->reqs[i], 0, sizeof p->reqs[i]);
            p->reqs[i].kind = kind;
            return &p->reqs[i];
        }
    return NULL;
}

static void req_free(request *r)
{
    free(r->ids);
    memset(r, 0, sizeof *r);
}

static size_t req_count(const parley *p, req_kind kind)
{
    size_t n = 0;
    for (size_t i = 0; i < MAX_REQUESTS; i++)
        n += p->reqs[i].kind == kind;
    return n;
}

/* Sends f and files r under its request id; frees r if sending failed. */
static bool req_send(parley *p, request *r, Parley__Frame *f)
{
    r->rid = conn_send(&p->conn, f);
    if (!r->rid) {
        req_free(r);
        return false;
    }
    return true;
}

static bool phone_busy(const parley *p, const char *phone)
{
    for (size_t i = 0; i < MAX_REQUESTS; i++) {
        const request *r = &p->reqs[i];
        if ((r->kind == REQ_SEND || r->kind == REQ_LOOKUP_PHONE) && strcmp(r->phone, phone) == 0)
            return true;
    }
    return false;
}

/* ---- profile and registration ------------------------------------------------------- */

int parley_open(parley **out, const char *dir, char *err, size_t errlen)
{
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    *out = NULL;
    if (!dir || !*dir) {
        snprintf(err, errlen, "no profile directory given");
        return PARLEY_ERR_INVALID;
    }
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium cannot initialise");
        return PARLEY_ERR_NOMEM;
    }
    parley *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return PARLEY_ERR_NOMEM;
    }
    if (db_open(&p->db, dir, err, errlen) != DB_OK) {
        free(p);
        return PARLEY_ERR_STORAGE;
    }
    if (db_identity_get(p->db, &p->ident) != DB_OK) {
        snprintf(err, errlen, "%s", db_errmsg(p->db));
        db_close(p->db);
        free(p);
        return PARLEY_ERR_STORAGE;
    }
    *out = p;
    return PARLEY_OK;
}

int parley_profile_get(parley *p, parley_profile *out)
{
    memset(out, 0, sizeof *out);
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    out->registered = p->ident.registered;
    snprintf(out->phone, sizeof out->phone, "%s", p->ident.phone);
    snprintf(out->pending_phone, sizeof out->pending_phone, "%s", p->ident.pending_phone);
    snprintf(out->server_url, sizeof out->server_url, "%s", p->ident.server_url);
    memcpy(out->account_id, p->ident.account, PARLEY_ID_LEN);
    out->device_id = p->ident.device;
    return PARLEY_OK;
}

void parley_set_handler(parley *p, parley_event_fn fn, void *ctx)
{
    p->handler = fn;
    p->handler_ctx = ctx;
}

/* ---- the connection callbacks ------------------------------------------------------- */

static void session_reset(parley *p)
{
    p->ready = false;
    p->own_known = false;
    p->n_own = 0;
    for (size_t i = 0; i < MAX_REQUESTS; i++)
        if (p->reqs[i].kind != REQ_FREE)
            req_free(&p->reqs[i]);
    while (p->dq_len) {
        parley__frame__free_unpacked(p->dq[p->dq_head], NULL);
        p->dq_head = (p->dq_head + 1) % MAX_DELIVER_QUEUE;
        p->dq_len--;
    }
    p->dq_head = 0;
    p->dq_bytes = 0;
    p->n_unnamed = 0;
    p->sending_disabled = p->receipts_disabled = false;
    p->mismatches = 0;
}

static void on_conn_state(void *ctx, parley_conn_state st, int status, const char *reason, uint32_t retry_ms)
{
    parley *p = ctx;
    if (st == PARLEY_CONN_OFFLINE && status != PARLEY_OK) {
        p->fatal_status = status;
        set_err(p, status, "%s", reason ? reason : parley_strerror(status));
    } else if (st == PARLEY_CONN_WAITING && reason) {
        set_err(p, status, "%s", reason); /* the latest trouble, for a caller that gives up */
    }
    if (p->one.active)
        return; /* registration reports through its return value */
    parley_event ev = {.type = PARLEY_EVENT_CONNECTION};
    ev.connection.state = st;
    ev.connection.status = status;
    ev.connection.reason = reason;
    ev.connection.retry_in_ms = retry_ms;
    emit(p, &ev);
}

static void pump_outbox(parley *p);
static void pump_receipts(parley *p);
static void process_deliveries(parley *p);

static void on_conn_ready(void *ctx)
{
    parley *p = ctx;
    if (p->one.active) {
        p->one.rid = conn_send(&p->conn, p->one.req);
        if (!p->one.rid)
            conn_fail(&p->conn, PARLEY_ERR_NETWORK, true, "the request could not be sent");
        return;
    }
    p->ready = true;
    /* our own device list first: every message goes to our other devices too */
    request *r = req_new(p, REQ_OWN_LOOKUP);
    Parley__Lookup l = PARLEY__LOOKUP__INIT;
    l.phone = p->ident.phone;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_LOOKUP;
    f.lookup = &l;
    if (r)
        req_send(p, r, &f);
    pump_receipts(p);
}

static void on_conn_down(void *ctx)
{
    session_reset(ctx);
}

static int on_conn_sign(void *ctx, const uint8_t *msg, size_t len, uint8_t sig[64])
{
    parley *p = ctx;
    uint8_t priv[DB_KEY_LEN];
    if (db_identity_key(p->db, priv) != DB_OK)
        return -1;
    int rc = ps_xeddsa_sign(sig, priv, msg, len, NULL);
    sodium_memzero(priv, sizeof priv);
    return rc == PS_OK ? 0 : -1;
}

static void set_own_devices(parley *p, const Parley__DeviceList *dl)
{
    p->n_own = 0;
    for (size_t i = 0; dl && i < dl->n_device_ids && p->n_own < DB_MAX_DEVICES; i++)
        if (dl->device_ids[i] != p->ident.device)
            p->own_devices[p->n_own++] = dl->device_ids[i];
}

/* A device list from the server into the contacts cache. phone may be NULL. */
static bool store_device_list(parley *p, const Parley__DeviceList *dl, const char *phone)
{
    if (!dl || !dl->has_account_id || dl->account_id.len != PARLEY_ID_LEN)
        return false;
    db_contact c;
    memset(&c, 0, sizeof c);
    memcpy(c.account, dl->account_id.data, PARLEY_ID_LEN);
    if (phone && parley_phone_valid(phone))
        snprintf(c.phone, sizeof c.phone, "%s", phone);
    for (size_t i = 0; i < dl->n_device_ids && c.n_devices < DB_MAX_DEVICES; i++)
        c.devices[c.n_devices++] = dl->device_ids[i];
    if (db_contact_put(p->db, &c) != DB_OK) {
        emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        return false;
    }
    return true;
}

/* ---- the outbox -------------------------------------------------------------------- */

static void pause_sends(parley *p, uint32_t ms)
{
    uint64_t until = conn_now() + ms;
    if (until > p->send_pause_until)
        p->send_pause_until = until;
}

static uint32_t backoff_ms(unsigned errors)
{
    unsigned shift = errors < 6 ? errors : 6;
    uint32_t ms = 1000u << shift;
    return ms > RETRY_MAX_MS ? RETRY_MAX_MS : ms;
}

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
            if (strcmp(e[i].phone, phone) == 0)
                fail_message(p, e[i].id, phone, reason);
        db_outbox_free(e, n);
    }
    free(e);
}

static void lookup_phone(parley *p, const char *phone)
{
    if (req_count(p, REQ_LOOKUP_PHONE) + req_count(p, REQ_LOOKUP_ACCOUNT) >= MAX_LOOKUPS)
        return;
    request *r = req_new(p, REQ_LOOKUP_PHONE);
    if (!r)
        return;
    snprintf(r->phone, sizeof r->phone, "%s", phone);
    Parley__Lookup l = PARLEY__LOOKUP__INIT;
    l.phone = r->phone;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_LOOKUP;
    f.lookup = &l;
    req_send(p, r, &f);
}

/* Sends one outbox entry to the contact's devices and our own other devices.
 * Returns false if it failed for good (too large for the server). */
static bool send_entry(parley *p, const db_outbox_entry *e, const db_contact *c)
{
    Parley__DeviceMessage dms[2 * DB_MAX_DEVICES];
    Parley__DeviceMessage *dmp[2 * DB_MAX_DEVICES];
    size_t n = 0;
    bool to_self = same_id(c->account, p->ident.account); /* a note to ourselves */
    if (e->body_len + CONN_BODY_OVERHEAD > p->conn.max_frame) { /* the server's own limit */
        fail_message(p, e->id, e->phone, "the message is larger than this server accepts");
        return false;
    }
    for (size_t i = 0; i < c->n_devices; i++) {
        if (to_self && c->devices[i] == p->ident.device)
            continue; /* a device does not send to itself */
        parley__device_message__init(&dms[n]);
        dms[n].has_device_id = 1;
        dms[n].device_id = c->devices[i];
        n++;
    }
    for (size_t i = 0; !to_self && i < p->n_own; i++, n++) {
        parley__device_message__init(&dms[n]);
        dms[n].has_account_id = 1;
        dms[n].account_id = (ProtobufCBinaryData){PARLEY_ID_LEN, p->ident.account};
        dms[n].has_device_id = 1;
        dms[n].device_id = p->own_devices[i];
    }
    if (n == 0) { /* a note to ourselves with no other device to copy it to: kept here only */
        bool changed;
        uint64_t now = wall_ms();
        if (db_outgoing_sent(p->db, e->id, c->account, now, &changed) != DB_OK) {
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
            return false;
        }
        emit_state(p, e->id, e->phone, PARLEY_STATE_SENT, now, NULL);
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        dms[i].has_type = 1;
        dms[i].type = 0; /* plaintext until end-to-end encryption lands */
        dms[i].has_body = 1;
        dms[i].body = (ProtobufCBinaryData){e->body_len, e->body};
        dmp[i] = &dms[i];
    }
    Parley__Send s = PARLEY__SEND__INIT;
    s.has_message_id = 1;
    s.message_id = (ProtobufCBinaryData){PARLEY_ID_LEN, (uint8_t *)e->id};
    s.has_recipient_account = 1;
    s.recipient_account = (ProtobufCBinaryData){PARLEY_ID_LEN, (uint8_t *)c->account};
    s.n_messages = n;
    s.messages = dmp;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_SEND;
    f.send = &s;
    if (!conn_fits(&p->conn, &f)) {
        fail_message(p, e->id, e->phone, "the message is larger than this server accepts");
        return false;
    }
    request *r = req_new(p, REQ_SEND);
    if (!r)
        return true;
    memcpy(r->id, e->id, PARLEY_ID_LEN);
    memcpy(r->account, c->account, PARLEY_ID_LEN);
    snprintf(r->phone, sizeof r->phone, "%s", e->phone);
    req_send(p, r, &f);
    return true;
}

static void pump_outbox(parley *p)
{
    if (!p->ready || !p->own_known || p->sending_disabled || conn_now() < p->send_pause_until)
        return;
    if (req_count(p, REQ_SEND) >= MAX_SENDS)
        return;
    db_outbox_entry *e = calloc(OUTBOX_SCAN, sizeof *e);
    char(*seen)[PARLEY_PHONE_MAX + 1] = calloc(OUTBOX_SCAN, sizeof *seen);
    size_t n = 0, n_seen = 0;
    bool again = false;
    if (!e || !seen || db_outbox_load(p->db, e, OUTBOX_SCAN, &n) != DB_OK) {
        if (e && seen)
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        free(e);
        free(seen);
        return;
    }
    for (size_t i = 0; i < n && p->ready && req_count(p, REQ_SEND) < MAX_SENDS; i++) {
        /* an earlier entry of the same conversation goes first */
        bool blocked = false;
        for (size_t j = 0; j < n_seen && !blocked; j++)
            blocked = strcmp(seen[j], e[i].phone) == 0;
        if (blocked)
            continue;
        snprintf(seen[n_seen++], sizeof seen[0], "%s", e[i].phone);
        if (phone_busy(p, e[i].phone))
            continue;
        db_contact c;
        int rc = db_contact_by_phone(p->db, e[i].phone, &c);
        if (rc == DB_ERROR) {
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
            break;
        }
        if (rc == DB_NOT_FOUND || c.n_devices == 0) {
            lookup_phone(p, e[i].phone);
            continue;
        }
        if (!send_entry(p, &e[i], &c))
            again = true; /* it failed for good: the next of its conversation may go */
    }
    db_outbox_free(e, n);
    free(e);
    free(seen);
    if (again)
        pump_outbox(p);
}

static void on_send_reply(parley *p, request *r, const Parley__Frame *f)
{
    char reason[400];
    if (f->body_case == PARLEY__FRAME__BODY_SEND_ACK) {
        const Parley__SendAck *a = f->send_ack;
        bool changed;
        if (db_outgoing_sent(p->db, r->id, r->account, a->server_time_ms, &changed) != DB_OK) {
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
            return;
        }
        p->send_errors = 0;
        p->mismatches = 0;
        /* unchanged: another process on this profile recorded the ack first; report the
         * acknowledgement anyway, with the state the message has now */
        int st = PARLEY_STATE_SENT;
        if (!changed && db_message_state(p->db, r->id, &st) != DB_OK)
            st = PARLEY_STATE_SENT;
        emit_state(p, r->id, r->phone, (parley_state)st, a->server_time_ms, NULL);
        return;
    }
    if (f->body_case != PARLEY__FRAME__BODY_ERROR) {
        p->send_errors++;
        pause_sends(p, backoff_ms(p->send_errors));
        return;
    }
    const Parley__Error *err = f->error;
    switch (err->code) {
    case PARLEY__ERROR_CODE__DEVICE_MISMATCH:
        /* the list we used is stale: take the server's and resend the same id */
        if (err->devices && err->devices->has_account_id && err->devices->account_id.len == PARLEY_ID_LEN &&
            same_id(err->devices->account_id.data, p->ident.account)) {
            set_own_devices(p, err->devices);
            store_device_list(p, err->devices, p->ident.phone);
            if (same_id(r->account, p->ident.account))
                store_device_list(p, err->devices, r->phone);
        } else if (err->devices) {
            store_device_list(p, err->devices, r->phone);
        } else {
            db_contact_forget_phone(p->db, r->phone); /* look it up again */
        }
        if (++p->mismatches > MAX_MISMATCHES) {
            p->mismatches = 0;
            pause_sends(p, 5000);
        }
        break;
    case PARLEY__ERROR_CODE__RATE_LIMITED:
        pause_sends(p, err->retry_after_ms ? (err->retry_after_ms < 60000 ? err->retry_after_ms : 60000) : 1000);
        break;
    case PARLEY__ERROR_CODE__UNKNOWN_ACCOUNT:
        db_contact_forget_phone(p->db, r->phone); /* a new lookup decides */
        break;
    case PARLEY__ERROR_CODE__TOO_MANY_RECIPIENTS:
    case PARLEY__ERROR_CODE__FRAME_TOO_LARGE:
    case PARLEY__ERROR_CODE__MALFORMED_FRAME: /* this message; the next ones may be fine */
        snprintf(reason, sizeof reason, "the server refused the message: %s", server_reason(err));
        fail_message(p, r->id, r->phone, reason);
        break;
    case PARLEY__ERROR_CODE__STORAGE_FULL:
    case PARLEY__ERROR_CODE__INTERNAL:
        p->send_errors++;
        pause_sends(p, backoff_ms(p->send_errors));
        snprintf(reason, sizeof reason, "the server could not take a message now (%s); retrying",
                 server_reason(err));
        emit_error(p, PARLEY_ERR_REFUSED, reason);
        break;
    default:
        /* UNKNOWN_FRAME (a server without messaging), or a frame it cannot read: sending
         * again on this connection would only repeat it */
        p->sending_disabled = true;
        snprintf(reason, sizeof reason, "the server does not accept messages: %s", server_reason(err));
        emit_error(p, err->code == PARLEY__ERROR_CODE__UNKNOWN_FRAME ? PARLEY_ERR_UNSUPPORTED : PARLEY_ERR_REFUSED,
                   reason);
        break;
    }
}

static void on_lookup_phone_reply(parley *p, request *r, const Parley__Frame *f)
{
    char reason[200];
    if (f->body_case == PARLEY__FRAME__BODY_LOOKUP_RESULT && f->lookup_result->devices &&
        f->lookup_result->devices->n_device_ids > 0) {
        store_device_list(p, f->lookup_result->devices, r->phone);
        return;
    }
    if (f->body_case == PARLEY__FRAME__BODY_LOOKUP_RESULT ||
        (f->body_case == PARLEY__FRAME__BODY_ERROR && (f->error->code == PARLEY__ERROR_CODE__UNKNOWN_ACCOUNT ||
                                                      f->error->code == PARLEY__ERROR_CODE__INVALID_PHONE))) {
        snprintf(reason, sizeof reason, "no account has the number %s", r->phone);
        fail_phone(p, r->phone, reason);
        return;
    }
    p->send_errors++;
    pause_sends(p, backoff_ms(p->send_errors));
}

static void on_own_lookup_reply(parley *p, const Parley__Frame *f)
{
    if (f->body_case == PARLEY__FRAME__BODY_LOOKUP_RESULT && f->lookup_result->devices) {
        set_own_devices(p, f->lookup_result->devices);
        store_device_list(p, f->lookup_result->devices, p->ident.phone);
    } else {
        db_contact c; /* fall back on what we knew */
        if (db_contact_by_phone(p->db, p->ident.phone, &c) == DB_OK) {
            Parley__DeviceList dl = PARLEY__DEVICE_LIST__INIT;
            dl.n_device_ids = c.n_devices;
            dl.device_ids = c.devices;
            set_own_devices(p, &dl);
        }
    }
    p->own_known = true;
}

/* ---- read receipts ------------------------------------------------------------------- */

static void pump_receipts(parley *p)
{
    if (!p->ready || p->receipts_disabled || conn_now() < p->receipt_pause_until ||
        req_count(p, REQ_RECEIPT) > 0)
        return;
    request *r = req_new(p, REQ_RECEIPT);
    if (!r)
        return;
    if (!(r->ids = malloc(RECEIPT_BATCH * sizeof *r->ids))) {
        req_free(r);
        return;
    }
    if (db_receipts_pending(p->db, r->account, r->ids, RECEIPT_BATCH, &r->n_ids) != DB_OK) {
        emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        req_free(r);
        return;
    }
    if (r->n_ids == 0) {
        req_free(r);
        return;
    }
    ProtobufCBinaryData *ids = malloc(r->n_ids * sizeof *ids);
    if (!ids) {
        req_free(r);
        return;
    }
    for (size_t i = 0; i < r->n_ids; i++)
        ids[i] = (ProtobufCBinaryData){PARLEY_ID_LEN, r->ids[i]};
    Parley__Receipt rc = PARLEY__RECEIPT__INIT;
    rc.has_status = 1;
    rc.status = PARLEY__RECEIPT_STATUS__READ;
    rc.has_to_account = 1;
    rc.to_account = (ProtobufCBinaryData){PARLEY_ID_LEN, r->account};
    rc.message_ids = ids;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_RECEIPT;
    f.receipt = &rc;
    /* the server takes as many ids as its receipt envelope fits in a frame (18 bytes each) */
    size_t max_ids = p->conn.max_frame > 512 + 18 ? (p->conn.max_frame - 512) / 18 : 1;
    rc.n_message_ids = r->n_ids < max_ids ? r->n_ids : max_ids;
    while (rc.n_message_ids > 1 && !conn_fits(&p->conn, &f)) /* a server with small frames */
        rc.n_message_ids /= 2;
    r->n_ids = rc.n_message_ids;
    req_send(p, r, &f);
    free(ids);
}

static void on_receipt_reply(parley *p, request *r, const Parley__Frame *f)
{
    char reason[300];
    if (f->body_case == PARLEY__FRAME__BODY_RECEIPT_ACK) {
        p->receipt_errors = 0;
        if (db_receipts_sent(p->db, r->account, (const uint8_t(*)[PARLEY_ID_LEN])r->ids, r->n_ids) != DB_OK)
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        return;
    }
    uint32_t code = f->body_case == PARLEY__FRAME__BODY_ERROR ? f->error->code : 0;
    if (code == PARLEY__ERROR_CODE__RATE_LIMITED || code == PARLEY__ERROR_CODE__STORAGE_FULL ||
        code == PARLEY__ERROR_CODE__INTERNAL || code == 0) {
        uint32_t ms = code == PARLEY__ERROR_CODE__RATE_LIMITED && f->error->retry_after_ms
                          ? f->error->retry_after_ms
                          : backoff_ms(p->receipt_errors++);
        p->receipt_pause_until = conn_now() + (ms < 60000 ? ms : 60000);
        return;
    }
    p->receipts_disabled = true;
    snprintf(reason, sizeof reason, "the server does not accept read receipts: %s", server_reason(f->error));
    emit_error(p, code == PARLEY__ERROR_CODE__UNKNOWN_FRAME ? PARLEY_ERR_UNSUPPORTED : PARLEY_ERR_REFUSED, reason);
}

/* ---- deliveries ---------------------------------------------------------------------- */

static bool is_unnamed(const parley *p, const uint8_t *account)
{
    for (size_t i = 0; i < p->n_unnamed; i++)
        if (same_id(p->unnamed[i], account))
            return true;
    return false;
}

static void add_unnamed(parley *p, const uint8_t *account)
{
    if (!is_unnamed(p, account)) {
        if (p->n_unnamed == MAX_UNNAMED) /* forget the oldest; worst case it is asked again */
            memmove(p->unnamed[0], p->unnamed[1], (MAX_UNNAMED - 1) * PARLEY_ID_LEN), p->n_unnamed--;
        memcpy(p->unnamed[p->n_unnamed++], account, PARLEY_ID_LEN);
    }
}

/* The phone of account into out (out[0] = 0 if the server could not name it).
 * Returns false while a name is still to come from the server. */
static bool name_of(parley *p, const uint8_t *account, char out[PARLEY_PHONE_MAX + 1], bool ask)
{
    out[0] = 0;
    if (same_id(account, p->ident.account)) {
        snprintf(out, PARLEY_PHONE_MAX + 1, "%s", p->ident.phone);
        return true;
    }
    db_contact c;
    if (db_contact_by_account(p->db, account, &c) == DB_OK && c.phone[0]) {
        snprintf(out, PARLEY_PHONE_MAX + 1, "%s", c.phone);
        return true;
    }
    if (is_unnamed(p, account))
        return true;
    if (!ask)
        return false;
    for (size_t i = 0; i < MAX_REQUESTS; i++)
        if (p->reqs[i].kind == REQ_LOOKUP_ACCOUNT && same_id(p->reqs[i].id, account))
            return false;
    if (req_count(p, REQ_LOOKUP_PHONE) + req_count(p, REQ_LOOKUP_ACCOUNT) >= MAX_LOOKUPS)
        return false;
    request *r = req_new(p, REQ_LOOKUP_ACCOUNT);
    if (!r)
        return false;
    memcpy(r->id, account, PARLEY_ID_LEN);
    Parley__Lookup l = PARLEY__LOOKUP__INIT;
    l.has_account_id = 1;
    l.account_id = (ProtobufCBinaryData){PARLEY_ID_LEN, r->id};
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_LOOKUP;
    f.lookup = &l;
    req_send(p, r, &f);
    return false;
}

static void on_lookup_account_reply(parley *p, request *r, const Parley__Frame *f)
{
    const Parley__LookupResult *lr = f->body_case == PARLEY__FRAME__BODY_LOOKUP_RESULT ? f->lookup_result : NULL;
    if (lr && lr->phone && parley_phone_valid(lr->phone) && lr->devices && lr->devices->has_account_id &&
        lr->devices->account_id.len == PARLEY_ID_LEN && same_id(lr->devices->account_id.data, r->id)) {
        if (store_device_list(p, lr->devices, lr->phone))
            return;
    }
    if (f->body_case == PARLEY__FRAME__BODY_ERROR && f->error->code != PARLEY__ERROR_CODE__UNKNOWN_ACCOUNT &&
        f->error->code != PARLEY__ERROR_CODE__MALFORMED_FRAME) {
        /* a passing trouble: nothing of the frame is acked; it comes again on the next
         * connection, and the sender is asked for again */
        conn_fail(&p->conn, PARLEY_ERR_NETWORK, false, "the server could not name a sender now; trying again");
        return;
    }
    add_unnamed(p, r->id); /* the server does not know it: shown without a number */
}

static bool account_ok(const ProtobufCBinaryData *b, bool has)
{
    return has && b->len == PARLEY_ID_LEN;
}

/* What one envelope came to, kept until the transaction committed. */
typedef struct {
    int kind;                          /* 0 nothing to report, 1 message, 2 receipt */
    char phone[PARLEY_PHONE_MAX + 1];
    Parley__Content *content;          /* message, NULL when malformed */
    const char *problem;
    uint8_t (*ids)[PARLEY_ID_LEN];     /* receipt: the ids that moved */
    size_t n_ids;
} env_result;

/* Reads a body into content or says why it cannot be read. */
static const char *read_body(const Parley__Envelope *e, Parley__Content **content)
{
    *content = NULL;
    if (e->has_type && e->type != 0)
        return "an encrypted message (this client cannot decrypt yet)";
    if (!e->has_body || e->body.len == 0)
        return "an empty message";
    if (e->body.len > MAX_BODY)
        return "a message larger than this client reads";
    Parley__Content *c = parley__content__unpack(NULL, e->body.len, e->body.data);
    if (!c)
        return "a message that is not in the Parley format";
    const char *why = NULL;
    size_t len = c->text ? strlen(c->text) : 0;
    if (!c->text)
        why = "a message with no text";
    else if (len > PARLEY_MAX_TEXT)
        why = "a message with too long a text";
    else if (parley__content__get_packed_size(c) != e->body.len)
        why = "a message whose text holds a NUL byte"; /* strlen stopped early: re-packing is shorter */
    else if (!utf8_valid((const uint8_t *)c->text, len))
        why = "a message whose text is not UTF-8";
    if (why) {
        parley__content__free_unpacked(c, NULL);
        return why;
    }
    *content = c;
    return NULL;
}

static int store_message(parley *p, const Parley__Envelope *e, env_result *res)
{
    const char *problem = read_body(e, &res->content);
    db_message m;
    memset(&m, 0, sizeof m);
    memcpy(m.id, e->message_id.data, PARLEY_ID_LEN);
    snprintf(m.peer_phone, sizeof m.peer_phone, "%s", res->phone);
    m.has_peer_account = true;
    memcpy(m.peer_account, e->sender_account.data, PARLEY_ID_LEN);
    m.from_device = e->sender_device;
    m.text = res->content ? res->content->text : NULL;
    m.text_len = m.text ? strlen(m.text) : 0;
    m.problem = problem;
    m.sent_ms = res->content && res->content->has_sent_ms ? res->content->sent_ms : 0;
    m.server_time_ms = e->server_time_ms;
    bool inserted;
    if (db_incoming_add(p->db, &m, &inserted) != DB_OK)
        return -1;
    res->kind = inserted ? 1 : 0; /* a duplicate is not shown again */
    res->problem = problem;
    return 0;
}

static int store_receipt(parley *p, const Parley__ReceiptBody *rb, env_result *res)
{
    if (!account_ok(&rb->from_account, rb->has_from_account) ||
        (rb->status != PARLEY__RECEIPT_STATUS__DELIVERED && rb->status != PARLEY__RECEIPT_STATUS__READ))
        return 0; /* nothing we can apply */
    int state = rb->status == PARLEY__RECEIPT_STATUS__READ ? PARLEY_STATE_READ : PARLEY_STATE_DELIVERED;
    size_t cap = rb->n_message_ids;
    if (cap && !(res->ids = malloc(cap * PARLEY_ID_LEN)))
        return -1;
    for (size_t i = 0; i < rb->n_message_ids; i++) {
        bool changed;
        if (rb->message_ids[i].len != PARLEY_ID_LEN)
            continue;
        if (db_outgoing_advance(p->db, rb->message_ids[i].data, rb->from_account.data, state, &changed) != DB_OK)
            return -1;
        if (changed)
            memcpy(res->ids[res->n_ids++], rb->message_ids[i].data, PARLEY_ID_LEN);
    }
    if (state == PARLEY_STATE_READ && rb->has_up_to_server_ms) {
        uint8_t(*more)[PARLEY_ID_LEN];
        size_t n_more;
        if (db_outgoing_read_up_to(p->db, rb->from_account.data, rb->up_to_server_ms, &more, &n_more) != DB_OK)
            return -1;
        if (n_more) {
            uint8_t(*grown)[PARLEY_ID_LEN] = realloc(res->ids, (res->n_ids + n_more) * PARLEY_ID_LEN);
            if (!grown) {
                free(more);
                return -1;
            }
            res->ids = grown;
            memcpy(res->ids[res->n_ids], more, n_more * PARLEY_ID_LEN);
            res->n_ids += n_more;
        }
        free(more);
    }
    res->kind = res->n_ids ? 2 : 0;
    return 0;
}

static void free_results(env_result *res, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (res[i].content)
            parley__content__free_unpacked(res[i].content, NULL);
        free(res[i].ids);
    }
    free(res);
}

/* Stores every envelope of one Deliver (one transaction), acks, then reports.
 * Returns false when it could not be stored: nothing is acked, the server resends. */
static bool handle_deliver(parley *p, const Parley__Deliver *d)
{
    size_t n = d->n_envelopes;
    env_result *res = calloc(n ? n : 1, sizeof *res);
    uint64_t up_to = 0;
    char reason[400];
    if (!res || db_begin(p->db) != DB_OK) {
        free(res);
        snprintf(reason, sizeof reason, "cannot store incoming messages: %s", res ? db_errmsg(p->db) : "out of memory");
        emit_error(p, PARLEY_ERR_STORAGE, reason);
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        const Parley__Envelope *e = d->envelopes[i];
        if (e->seq > up_to)
            up_to = e->seq;
        if (e->receipt) {
            ok = store_receipt(p, e->receipt, &res[i]) == 0;
            if (ok && res[i].kind)
                name_of(p, e->receipt->from_account.data, res[i].phone, false);
        } else if (account_ok(&e->sender_account, e->has_sender_account) &&
                   account_ok(&e->message_id, e->has_message_id)) {
            name_of(p, e->sender_account.data, res[i].phone, false);
            ok = store_message(p, e, &res[i]) == 0;
        } /* else: no sender or id to store it under; acked with the rest, reported below */
    }
    if (!ok || db_commit(p->db) != DB_OK) {
        if (!ok)
            db_rollback(p->db);
        snprintf(reason, sizeof reason, "cannot store incoming messages: %s", db_errmsg(p->db));
        free_results(res, n);
        emit_error(p, PARLEY_ERR_STORAGE, reason);
        return false;
    }
    if (up_to) { /* only now, with everything on disk */
        Parley__DeliverAck ack = PARLEY__DELIVER_ACK__INIT;
        ack.has_up_to_seq = 1;
        ack.up_to_seq = up_to;
        Parley__Frame f = PARLEY__FRAME__INIT;
        f.body_case = PARLEY__FRAME__BODY_DELIVER_ACK;
        f.deliver_ack = &ack;
        conn_push(&p->conn, &f);
    }
    for (size_t i = 0; i < n; i++) {
        const Parley__Envelope *e = d->envelopes[i];
        parley_event ev;
        memset(&ev, 0, sizeof ev);
        if (res[i].kind == 1) {
            ev.type = PARLEY_EVENT_MESSAGE;
            parley_message *m = &ev.message;
            memcpy(m->id, e->message_id.data, PARLEY_ID_LEN);
            m->peer = res[i].phone[0] ? res[i].phone : NULL;
            m->from_device = e->sender_device;
            m->server_time_ms = e->server_time_ms;
            m->sent_ms = res[i].content && res[i].content->has_sent_ms ? res[i].content->sent_ms : 0;
            m->text = res[i].content ? res[i].content->text : NULL;
            m->text_len = m->text ? strlen(m->text) : 0;
            m->problem = res[i].problem;
            m->state = PARLEY_STATE_RECEIVED;
            emit(p, &ev);
        } else if (res[i].kind == 2) {
            ev.type = PARLEY_EVENT_RECEIPT;
            ev.receipt.status = e->receipt->status == PARLEY__RECEIPT_STATUS__READ ? PARLEY_STATE_READ
                                                                                 : PARLEY_STATE_DELIVERED;
            ev.receipt.from = res[i].phone[0] ? res[i].phone : NULL;
            ev.receipt.from_device = e->receipt->from_device;
            ev.receipt.ids = (const uint8_t(*)[PARLEY_ID_LEN])res[i].ids;
            ev.receipt.n_ids = res[i].n_ids;
            emit(p, &ev);
        } else if (!e->receipt && !(account_ok(&e->sender_account, e->has_sender_account) &&
                                    account_ok(&e->message_id, e->has_message_id))) {
            emit_error(p, PARLEY_ERR_REFUSED, "the server delivered an envelope without a sender or id; skipped");
        }
    }
    free_results(res, n);
    if (d->has_drained && d->drained) {
        parley_event ev = {.type = PARLEY_EVENT_DRAINED};
        emit(p, &ev);
    }
    return true;
}

/* Handles queued Deliver frames in order, each once the names of its senders are known. */
static void process_deliveries(parley *p)
{
    while (p->dq_len && p->ready) {
        Parley__Frame *f = p->dq[p->dq_head];
        const Parley__Deliver *d = f->deliver;
        bool named = true;
        char phone[PARLEY_PHONE_MAX + 1];
        for (size_t i = 0; i < d->n_envelopes; i++) {
            const Parley__Envelope *e = d->envelopes[i];
            if (e->receipt && account_ok(&e->receipt->from_account, e->receipt->has_from_account))
                named &= name_of(p, e->receipt->from_account.data, phone, true);
            else if (!e->receipt && account_ok(&e->sender_account, e->has_sender_account))
                named &= name_of(p, e->sender_account.data, phone, true);
        }
        if (!named)
            return; /* a lookup answer brings us back */
        if (!handle_deliver(p, d)) {
            conn_fail(&p->conn, PARLEY_ERR_STORAGE, false, "cannot store incoming messages; trying again later");
            return;
        }
        if (!p->dq_len) /* the connection went down while reporting (session_reset) */
            return;
        p->dq_bytes -= p->dq_sizes[p->dq_head];
        p->dq_head = (p->dq_head + 1) % MAX_DELIVER_QUEUE;
        p->dq_len--;
        parley__frame__free_unpacked(f, NULL);
    }
}

/* ---- frames ------------------------------------------------------------------------- */

static bool on_conn_frame(void *ctx, Parley__Frame *f)
{
    parley *p = ctx;
    if (p->one.active) {
        if (f->has_request_id && p->one.rid && f->request_id == p->one.rid && !p->one.reply) {
            p->one.reply = f;
            return true;
        }
        return false;
    }
    if (f->body_case == PARLEY__FRAME__BODY_DELIVER) {
        size_t size = parley__frame__get_packed_size(f);
        if (p->dq_len == MAX_DELIVER_QUEUE || size > MAX_DELIVER_BYTES - p->dq_bytes) {
            /* a server past its own delivery window: start over later */
            conn_fail(&p->conn, PARLEY_ERR_NETWORK, false, "the server sent more deliveries than this client holds");
            return false;
        }
        size_t at = (p->dq_head + p->dq_len) % MAX_DELIVER_QUEUE;
        p->dq[at] = f;
        p->dq_sizes[at] = size;
        p->dq_bytes += size;
        p->dq_len++;
        process_deliveries(p);
        return true;
    }
    request *r = NULL;
    for (size_t i = 0; f->has_request_id && i < MAX_REQUESTS && !r; i++)
        if (p->reqs[i].kind != REQ_FREE && p->reqs[i].rid == f->request_id)
            r = &p->reqs[i];
    if (!r) {
        if (f->body_case == PARLEY__FRAME__BODY_ERROR) {
            char reason[300];
            snprintf(reason, sizeof reason, "the server reported: %s", server_reason(f->error));
            emit_error(p, PARLEY_ERR_REFUSED, reason);
        }
        return false;
    }
    request done = *r; /* the slot is free again before anything below sends more */
    r->ids = NULL;
    req_free(r);
    switch (done.kind) {
    case REQ_OWN_LOOKUP:
        on_own_lookup_reply(p, f);
        break;
    case REQ_LOOKUP_PHONE:
        on_lookup_phone_reply(p, &done, f);
        break;
    case REQ_LOOKUP_ACCOUNT:
        on_lookup_account_reply(p, &done, f);
        process_deliveries(p);
        break;
    case REQ_SEND:
        on_send_reply(p, &done, f);
        break;
    case REQ_RECEIPT:
        on_receipt_reply(p, &done, f);
        break;
    default:
        break;
    }
    free(done.ids);
    pump_outbox(p);
    pump_receipts(p);
    return false;
}

static const conn_callbacks conn_cbs = {on_conn_state, on_conn_ready, on_conn_frame, on_conn_down, on_conn_sign};

/* ---- the loop ---------------------------------------------------------------------- */

static uint64_t client_deadline(const parley *p)
{
    uint64_t t = UINT64_MAX;
    if (p->ready && p->send_pause_until && !p->sending_disabled)
        t = p->send_pause_until;
    if (p->ready && p->receipt_pause_until && !p->receipts_disabled && p->receipt_pause_until < t)
        t = p->receipt_pause_until;
    return t;
}

static void client_timers(parley *p, uint64_t now)
{
    if (p->send_pause_until && now >= p->send_pause_until) {
        p->send_pause_until = 0;
        pump_outbox(p);
    }
    if (p->receipt_pause_until && now >= p->receipt_pause_until) {
        p->receipt_pause_until = 0;
        pump_receipts(p);
    }
}

int parley_pollfd(const parley *p, struct pollfd *pfd)
{
    int fd = conn_fd(&p->conn);
    if (!p->conn_used || fd < 0)
        return 0;
    pfd->fd = fd;
    pfd->events = conn_events(&p->conn);
    pfd->revents = 0;
    return 1;
}

int parley_timeout_ms(const parley *p)
{
    if (!p->conn_used)
        return -1;
    uint64_t now = conn_now();
    int t = conn_timeout(&p->conn, now);
    uint64_t c = client_deadline(p);
    if (c != UINT64_MAX) {
        int ct = c <= now ? 0 : (c - now > 3600000 ? 3600000 : (int)(c - now));
        if (t < 0 || ct < t)
            t = ct;
    }
    return t;
}

int parley_dispatch(parley *p, short revents)
{
    if (!p->conn_used)
        return PARLEY_OK;
    conn_process(&p->conn, revents, conn_now());
    client_timers(p, conn_now());
    return p->conn.phase == CONN_OFF && p->fatal_status ? p->fatal_status : PARLEY_OK;
}

/* One poll round, waiting at most until deadline. Returns -1 if a signal interrupted. */
static int loop_once(parley *p, uint64_t deadline)
{
    uint64_t now = conn_now();
    int t = parley_timeout_ms(p);
    uint64_t left = deadline > now ? deadline - now : 0;
    if (deadline != UINT64_MAX && (t < 0 || (uint64_t)t > left))
        t = (int)(left > 3600000 ? 3600000 : left);
    struct pollfd pfd;
    int n = parley_pollfd(p, &pfd);
    int rc = poll(n ? &pfd : NULL, (nfds_t)n, t);
    if (rc < 0 && errno == EINTR)
        return -1;
    parley_dispatch(p, rc > 0 && n ? pfd.revents : 0);
    return 0;
}

int parley_run(parley *p, int timeout_ms)
{
    if (p->in_callback)
        return set_err(p, PARLEY_ERR_STATE, "parley_run cannot be called from the event callback");
    p->stop = false;
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : conn_now() + (uint64_t)timeout_ms;
    while (!p->stop) {
        if (!p->conn_used || p->conn.phase == CONN_OFF)
            return p->fatal_status;
        if (deadline != UINT64_MAX && conn_now() >= deadline)
            break;
        if (loop_once(p, deadline) < 0)
            break;
    }
    return PARLEY_OK;
}

void parley_stop(parley *p)
{
    p->stop = true;
}

parley_conn_state parley_connection_state(const parley *p)
{
    if (!p->conn_used)
        return PARLEY_CONN_OFFLINE;
    switch (p->conn.phase) {
    case CONN_WAIT: return PARLEY_CONN_WAITING;
    case CONN_OPENING: return PARLEY_CONN_CONNECTING;
    case CONN_HELLO:
    case CONN_AUTH: return PARLEY_CONN_AUTHENTICATING;
    case CONN_READY: return PARLEY_CONN_READY;
    default: return PARLEY_CONN_OFFLINE;
    }
}

int parley_connect(parley *p, int mode)
{
    if (p->in_callback)
        return set_err(p, PARLEY_ERR_STATE, "parley_connect cannot be called from the event callback");
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    if (!p->ident.registered)
        return set_err(p, PARLEY_ERR_NOT_REGISTERED, "this profile is not registered yet");
    if (p->conn_used && p->conn.phase != CONN_OFF)
        return set_err(p, PARLEY_ERR_STATE, "already connected or connecting");
    conn_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.url, sizeof cfg.url, "%s", p->ident.server_url);
    cfg.authenticate = true;
    memcpy(cfg.account, p->ident.account, PARLEY_ID_LEN);
    cfg.device = p->ident.device;
    cfg.receive = mode == PARLEY_RECEIVE;
    cfg.reconnect = true;
    if (p->conn_used)
        conn_reset(&p->conn);
    conn_init(&p->conn, &cfg, &conn_cbs, p);
    p->conn_used = true;
    p->fatal_status = PARLEY_OK;
    session_reset(p);
    conn_start(&p->conn);
    return PARLEY_OK;
}

/* Closes politely and waits (bounded) for the server to confirm. */
static void shut_down(parley *p)
{
    if (!p->conn_used)
        return;
    conn_stop(&p->conn);
    uint64_t deadline = conn_now() + CONN_CLOSE_TIMEOUT_MS + 500;
    while (p->conn.phase != CONN_OFF && conn_now() < deadline)
        loop_once(p, deadline);
    conn_reset(&p->conn);
    session_reset(p);
}

void parley_disconnect(parley *p)
{
    if (!p->conn_used)
        return;
    if (p->in_callback) { /* finish the frame being handled first: just start closing */
        conn_stop(&p->conn);
        return;
    }
    shut_down(p);
}

void parley_close(parley *p)
{
    if (!p)
        return;
    shut_down(p);
    db_close(p->db);
    sodium_memzero(p->errmsg, sizeof p->errmsg);
    free(p);
}

/* ---- registration ------------------------------------------------------------------- */

/* Sends req on a short unauthenticated connection and returns the answer in *reply. */
static int oneshot(parley *p, const char *url, Parley__Frame *req, Parley__Frame **reply, int timeout_ms)
{
    *reply = NULL;
    if (p->in_callback)
        return set_err(p, PARLEY_ERR_STATE, "registration cannot run from the event callback");
    if (p->conn_used && p->conn.phase != CONN_OFF)
        return set_err(p, PARLEY_ERR_STATE, "disconnect before registering");
    conn_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.url, sizeof cfg.url, "%s", url);
    if (p->conn_used)
        conn_reset(&p->conn);
    conn_init(&p->conn, &cfg, &conn_cbs, p);
    p->conn_used = true;
    p->fatal_status = PARLEY_OK;
    p->errmsg[0] = 0;
    memset(&p->one, 0, sizeof p->one);
    p->one.active = true;
    p->one.req = req;
    uint64_t deadline = conn_now() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 30000);
    conn_start(&p->conn);
    while (!p->one.reply && p->conn.phase != CONN_OFF && conn_now() < deadline)
        if (loop_once(p, deadline) < 0)
            break;
    int rc = PARLEY_OK;
    if (p->one.reply)
        *reply = p->one.reply;
    else if (p->conn.phase == CONN_OFF)
        rc = set_err(p, PARLEY_ERR_NETWORK, "%s", p->conn.last_reason[0] ? p->conn.last_reason : "cannot reach the server");
    else if (conn_now() >= deadline)
        rc = set_err(p, PARLEY_ERR_TIMEOUT, "no answer from %s within %d s", url, (timeout_ms > 0 ? timeout_ms : 30000) / 1000);
    else
        rc = set_err(p, PARLEY_ERR_TIMEOUT, "interrupted");
    shut_down(p);
    p->one.active = false;
    p->conn_used = false;
    return rc;
}

int parley_request_code(parley *p, const char *server_url, const char *phone, int timeout_ms)
{
    char host[WSC_HOST_MAX + 1], port[8], path[WSC_PATH_MAX + 1], err[300];
    if (!server_url || wsc_parse_url(server_url, host, port, path, err, sizeof err) != 0)
        return set_err(p, PARLEY_ERR_INVALID, "%s", server_url ? err : "no server address given");
    if (strlen(server_url) > PARLEY_URL_MAX)
        return set_err(p, PARLEY_ERR_INVALID, "the server address is too long");
    if (!parley_phone_valid(phone))
        return set_err(p, PARLEY_ERR_INVALID, "%s is not a phone number in E.164 form (like +15550000001)",
                       phone ? phone : "(none)");
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    if (p->ident.registered)
        return set_err(p, PARLEY_ERR_ALREADY_REGISTERED,
                       "this profile is already registered as %s; use another profile directory for another number",
                       p->ident.phone);
    if (!p->ident.exists) { /* the device's identity key: made once, kept for good */
        ps_keypair kp;
        ps_keypair_generate(NULL, &kp);
        uint32_t regid = 1 + randombytes_uniform(16380);
        int rc = db_identity_create(p->db, kp.priv, regid);
        ps_keypair_clear(&kp);
        if (rc != DB_OK || db_identity_get(p->db, &p->ident) != DB_OK)
            return db_err(p);
    }
    Parley__RequestCode rq = PARLEY__REQUEST_CODE__INIT;
    rq.phone = (char *)phone;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_REQUEST_CODE;
    f.request_code = &rq;
    Parley__Frame *reply;
    int rc = oneshot(p, server_url, &f, &reply, timeout_ms);
    if (rc != PARLEY_OK)
        return rc;
    if (reply->body_case == PARLEY__FRAME__BODY_CODE_REQUESTED) {
        rc = db_identity_set_pending(p->db, server_url, phone) == DB_OK ? PARLEY_OK : db_err(p);
    } else if (reply->body_case == PARLEY__FRAME__BODY_ERROR) {
        rc = set_err(p, PARLEY_ERR_REFUSED, "the server refused to send a code: %s", server_reason(reply->error));
    } else {
        rc = set_err(p, PARLEY_ERR_REFUSED, "unexpected answer from the server");
    }
    parley__frame__free_unpacked(reply, NULL);
    db_identity_get(p->db, &p->ident);
    return rc;
}

int parley_verify(parley *p, const char *code, int timeout_ms)
{
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    if (p->ident.registered)
        return set_err(p, PARLEY_ERR_ALREADY_REGISTERED, "this profile is already registered as %s", p->ident.phone);
    if (!p->ident.exists || !p->ident.pending_phone[0])
        return set_err(p, PARLEY_ERR_NOT_REGISTERED, "no code was requested for this profile: register first");
    size_t n = code ? strlen(code) : 0;
    bool digits = n == 6;
    for (size_t i = 0; digits && i < n; i++)
        digits = code[i] >= '0' && code[i] <= '9';
    if (!digits)
        return set_err(p, PARLEY_ERR_INVALID, "the code is the 6 digits from the SMS");
    uint8_t priv[DB_KEY_LEN], pub[PS_PUBKEY_LEN];
    if (db_identity_key(p->db, priv) != DB_OK)
        return db_err(p);
    ps_keypair kp;
    ps_keypair_from_private(&kp, priv);
    sodium_memzero(priv, sizeof priv);
    ps_pubkey_serialize(pub, kp.pub);
    ps_keypair_clear(&kp);
    char phone[PARLEY_PHONE_MAX + 1];
    snprintf(phone, sizeof phone, "%s", p->ident.pending_phone);
    Parley__Register rg = PARLEY__REGISTER__INIT;
    rg.phone = phone;
    rg.code = (char *)code;
    rg.has_identity_key = 1;
    rg.identity_key = (ProtobufCBinaryData){sizeof pub, pub};
    rg.has_registration_id = 1;
    rg.registration_id = p->ident.registration_id;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_REGISTER;
    f.register_ = &rg;
    Parley__Frame *reply;
    int rc = oneshot(p, p->ident.server_url, &f, &reply, timeout_ms);
    if (rc != PARLEY_OK)
        return rc;
    if (reply->body_case == PARLEY__FRAME__BODY_REGISTERED && reply->registered->has_account_id &&
        reply->registered->account_id.len == PARLEY_ID_LEN) {
        uint32_t device = reply->registered->has_device_id ? reply->registered->device_id : 1;
        rc = db_identity_set_registered(p->db, phone, reply->registered->account_id.data, device) == DB_OK
                 ? PARLEY_OK
                 : db_err(p);
    } else if (reply->body_case == PARLEY__FRAME__BODY_ERROR) {
        const Parley__Error *e = reply->error;
        const char *what = e->code == PARLEY__ERROR_CODE__WRONG_CODE          ? "wrong code"
                           : e->code == PARLEY__ERROR_CODE__CODE_EXPIRED      ? "the code expired; run register again for a new one"
                           : e->code == PARLEY__ERROR_CODE__TOO_MANY_ATTEMPTS ? "too many wrong codes; run register again for a new one"
                                                                              : server_reason(e);
        rc = set_err(p, PARLEY_ERR_REFUSED, "the server did not accept the code: %s", what);
    } else {
        rc = set_err(p, PARLEY_ERR_REFUSED, "unexpected answer from the server");
    }
    parley__frame__free_unpacked(reply, NULL);
    db_identity_get(p->db, &p->ident);
    return rc;
}

/* ---- messages ---------------------------------------------------------------------- */

int parley_send_text(parley *p, const char *phone, const char *text, uint8_t id_out[PARLEY_ID_LEN])
{
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    if (!p->ident.registered)
        return set_err(p, PARLEY_ERR_NOT_REGISTERED, "this profile is not registered yet");
    if (!parley_phone_valid(phone))
        return set_err(p, PARLEY_ERR_INVALID, "%s is not a phone number in E.164 form (like +15550000001)",
                       phone ? phone : "(none)");
    size_t len = text ? strlen(text) : 0;
    if (len == 0)
        return set_err(p, PARLEY_ERR_INVALID, "the message is empty");
    if (len > PARLEY_MAX_TEXT)
        return set_err(p, PARLEY_ERR_INVALID, "the message is longer than %d bytes", PARLEY_MAX_TEXT);
    if (!utf8_valid((const uint8_t *)text, len))
        return set_err(p, PARLEY_ERR_INVALID, "the message is not valid UTF-8");
    db_message m;
    memset(&m, 0, sizeof m);
    randombytes_buf(m.id, sizeof m.id);
    m.outgoing = true;
    snprintf(m.peer_phone, sizeof m.peer_phone, "%s", phone);
    m.text = text;
    m.text_len = len;
    m.sent_ms = wall_ms();
    Parley__Content c = PARLEY__CONTENT__INIT;
    c.text = (char *)text;
    c.has_sent_ms = 1;
    c.sent_ms = m.sent_ms;
    size_t body_len = parley__content__get_packed_size(&c);
    uint8_t *body = malloc(body_len);
    if (!body)
        return set_err(p, PARLEY_ERR_NOMEM, "out of memory");
    parley__content__pack(&c, body);
    int rc = db_outgoing_add(p->db, &m, body, body_len);
    sodium_memzero(body, body_len);
    free(body);
    if (rc != DB_OK)
        return db_err(p);
    if (id_out)
        memcpy(id_out, m.id, PARLEY_ID_LEN);
    pump_outbox(p);
    return PARLEY_OK;
}

int parley_message_state(parley *p, const uint8_t id[PARLEY_ID_LEN], parley_state *out)
{
    int st;
    int rc = db_message_state(p->db, id, &st);
    if (rc == DB_NOT_FOUND)
        return set_err(p, PARLEY_ERR_INVALID, "no message has this id");
    if (rc != DB_OK)
        return db_err(p);
    *out = (parley_state)st;
    return PARLEY_OK;
}

int parley_outbox_count(parley *p, size_t *n)
{
    return db_outbox_count(p->db, n) == DB_OK ? PARLEY_OK : db_err(p);
}

int parley_pending_receipts(parley *p, size_t *n)
{
    return db_receipts_pending_count(p->db, n) == DB_OK ? PARLEY_OK : db_err(p);
}

int parley_mark_read(parley *p, const char *phone, size_t *count)
{
    size_t n = 0;
    if (!parley_phone_valid(phone))
        return set_err(p, PARLEY_ERR_INVALID, "%s is not a phone number in E.164 form (like +15550000001)",
                       phone ? phone : "(none)");
    if (db_mark_read(p->db, phone, &n) != DB_OK)
        return db_err(p);
    if (count)
        *count = n;
    pump_receipts(p);
    return PARLEY_OK;
}

typedef struct {
    parley_message_fn fn;
    void *ctx;
} history_ctx;

static bool history_row(void *ctx, const db_message *m)
{
    history_ctx *h = ctx;
    parley_message pm;
    memset(&pm, 0, sizeof pm);
    memcpy(pm.id, m->id, PARLEY_ID_LEN);
    pm.outgoing = m->outgoing;
    pm.peer = m->peer_phone[0] ? m->peer_phone : NULL;
    pm.from_device = m->from_device;
    pm.server_time_ms = m->server_time_ms;
    pm.sent_ms = m->sent_ms;
    pm.text = m->text;
    pm.text_len = m->text_len;
    pm.problem = m->problem;
    pm.state = (parley_state)m->state;
    return h->fn(h->ctx, &pm);
}

typedef struct {
    parley_message_fn fn;
    void *ctx;
    int64_t shown_up_to;
    bool stopped;
} unshown_ctx;

static bool unshown_row(void *ctx, const db_message *m)
{
    unshown_ctx *u = ctx;
    history_ctx h = {u->fn, u->ctx};
    if (!history_row(&h, m)) {
        u->stopped = true;
        return false;
    }
    u->shown_up_to = m->local_seq;
    return true;
}

int parley_take_unshown(parley *p, parley_message_fn fn, void *ctx)
{
    unshown_ctx u = {fn, ctx, 0, false};
    if (db_unshown(p->db, unshown_row, &u) != DB_OK)
        return db_err(p);
    if (u.shown_up_to && db_mark_shown(p->db, u.shown_up_to) != DB_OK)
        return db_err(p);
    return u.stopped ? set_err(p, PARLEY_ERR_STATE, "showing the messages stopped") : PARLEY_OK;
}

int parley_history(parley *p, const char *phone, parley_message_fn fn, void *ctx)
{
    if (!parley_phone_valid(phone))
        return set_err(p, PARLEY_ERR_INVALID, "%s is not a phone number in E.164 form (like +15550000001)",
                       phone ? phone : "(none)");
    history_ctx h = {fn, ctx};
    return db_history(p->db, phone, history_row, &h) == DB_OK ? PARLEY_OK : db_err(p);
}
