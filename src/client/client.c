/* client.c - libparley's public API (include/parley.h): profiles, registration, the
 * connection and its event loop, events, the outbox and history as the API shows them.
 * Sending is outbox.c's, receiving inbox.c's, our keys on the server keys.c's
 * (client_internal.h says who does what).
 *
 * Per connection, once authenticated: look up our own devices, ask for our key status,
 * then send the outbox in queue order, one message in flight per conversation (so a
 * retry never reorders a conversation) and up to MAX_SENDS conversations at once.
 * Deliveries are handled strictly in order: a Deliver frame waits until every sender in
 * it has a name (a reverse lookup), then all its envelopes are decrypted and stored in
 * one transaction, and only after the commit is the DeliverAck sent and are the events
 * reported. */
#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_internal.h"
#include "clock.h"
#include "phone.h"
#include "content.pb-c.h"
#include "primitives.h"
#include "utf8.h"

/* ---- small things ------------------------------------------------------------------ */

void new_message_id(uint8_t id[PARLEY_ID_LEN])
{
    uint64_t ms = clock_wall_ms();
    for (int i = 0; i < 6; i++)
        id[i] = (uint8_t)(ms >> (8 * (5 - i)));
    randombytes_buf(id + 6, PARLEY_ID_LEN - 6);
}

int set_err(parley *p, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->errmsg, sizeof p->errmsg, fmt, ap);
    va_end(ap);
    return status;
}

int db_err(parley *p)
{
    return set_err(p, PARLEY_ERR_STORAGE, "the profile database failed: %s", db_errmsg(p->db));
}

void emit(parley *p, const parley_event *ev)
{
    if (!p->handler)
        return;
    p->in_callback++;
    p->handler(p->handler_ctx, ev);
    p->in_callback--;
}

void emit_error(parley *p, int status, const char *reason)
{
    parley_event ev = {.type = PARLEY_EVENT_ERROR};
    ev.error.status = status;
    ev.error.reason = reason;
    emit(p, &ev);
}

void emit_state(parley *p, const uint8_t id[PARLEY_ID_LEN], const char *peer, parley_state st, uint64_t server_ms,
                const char *reason)
{
    parley_event ev = {.type = PARLEY_EVENT_STATE};
    memcpy(ev.state.id, id, PARLEY_ID_LEN);
    ev.state.peer = peer;
    ev.state.state = st;
    ev.state.server_time_ms = server_ms;
    ev.state.reason = reason;
    emit(p, &ev);
}

void emit_identity_changed(parley *p, const char *phone, uint32_t device, bool was_verified)
{
    parley_event ev = {.type = PARLEY_EVENT_IDENTITY_CHANGED};
    ev.identity.peer = phone && *phone ? phone : NULL;
    ev.identity.device = device;
    ev.identity.was_verified = was_verified;
    emit(p, &ev);
}

bool parley_phone_valid(const char *phone)
{
    return phone_is_e164(phone);
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
    case PARLEY_ERR_UNKNOWN_KEY: return "the contact's key is not known yet";
    case PARLEY_ERR_KEYS: return "the server refused this device's keys";
    }
    return "unknown error";
}

const char *parley_errmsg(const parley *p)
{
    return p ? p->errmsg : "";
}

const char *server_reason(const Parley__Error *e)
{
    return e->reason && *e->reason ? e->reason : "no reason given";
}

uint32_t backoff_ms(unsigned errors)
{
    unsigned shift = errors < 6 ? errors : 6;
    uint32_t ms = 1000u << shift;
    return ms > RETRY_MAX_MS ? RETRY_MAX_MS : ms;
}

bool pause_after_passing_error(const Parley__Frame *f, unsigned *errors, uint64_t *pause_until)
{
    uint32_t code = f->body_case == PARLEY__FRAME__BODY_ERROR ? f->error->code : 0;
    if (code != PERR_RATE_LIMITED && code != PERR_STORAGE_FULL &&
        code != PERR_INTERNAL && code != 0)
        return false;
    uint32_t ms = code == PERR_RATE_LIMITED && f->error->retry_after_ms
                      ? f->error->retry_after_ms
                      : backoff_ms((*errors)++);
    *pause_until = clock_mono_ms() + (ms < 60000 ? ms : 60000);
    return true;
}

bool same_id(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, PARLEY_ID_LEN) == 0;
}

int invalid_phone(parley *p, const char *phone)
{
    return set_err(p, PARLEY_ERR_INVALID, "%s is not a phone number in E.164 form (like +15550000001)",
                   phone ? phone : "(none)");
}

/* ---- requests ------------------------------------------------------------------------ */

request *req_new(parley *p, req_kind kind)
{
    for (size_t i = 0; i < MAX_REQUESTS; i++)
        if (p->reqs[i].kind == REQ_FREE) {
            memset(&p->reqs[i], 0, sizeof p->reqs[i]);
            p->reqs[i].kind = kind;
            return &p->reqs[i];
        }
    return NULL;
}

void req_free(request *r)
{
    free(r->ids);
    free(r->key_ids);
    memset(r, 0, sizeof *r);
}

size_t req_count(const parley *p, req_kind kind)
{
    size_t n = 0;
    for (size_t i = 0; i < MAX_REQUESTS; i++)
        n += p->reqs[i].kind == kind;
    return n;
}

bool req_send(parley *p, request *r, Parley__Frame *f)
{
    r->rid = conn_send(&p->conn, f);
    if (!r->rid) {
        req_free(r);
        return false;
    }
    return true;
}

/* ---- profile ------------------------------------------------------------------------ */

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
    inbox_reset(p);
    p->sending_disabled = p->receipts_disabled = p->keys_disabled = false;
    p->keys_wanted = false;
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
    p->keys_wanted = true; /* our key status, and a top-up if needed */
    p->keys_next_check = clock_mono_ms() + KEYS_CHECK_MS;
    keys_check(p);
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
        keys_check(p);      /* a low-stock notice may have come */
        pump_outbox(p);     /* resends answering RETRY receipts */
        pump_receipts(p);   /* RETRY receipts for what did not decrypt */
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
    r->key_ids = NULL;
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
    case REQ_FETCH:
        on_fetch_reply(p, &done, f);
        break;
    case REQ_RECEIPT:
    case REQ_RETRY_RECEIPT:
        on_receipt_reply(p, &done, f);
        break;
    case REQ_KEYS_STATUS:
    case REQ_KEYS_UPLOAD:
        on_keys_reply(p, &done, f);
        break;
    default:
        break;
    }
    free(done.ids);
    free(done.key_ids);
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
    if (p->ready && p->keys_pause_until && !p->keys_disabled && p->keys_pause_until < t)
        t = p->keys_pause_until;
    if (p->ready && p->keys_next_check && !p->keys_disabled && p->keys_next_check < t)
        t = p->keys_next_check;
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
    if (p->ready && p->keys_next_check && now >= p->keys_next_check) {
        /* a connection that stays up for days still rotates its signed prekey */
        p->keys_next_check = now + KEYS_CHECK_MS;
        p->keys_wanted = true;
        keys_check(p);
    }
    if (p->keys_pause_until && now >= p->keys_pause_until) {
        p->keys_pause_until = 0;
        keys_check(p);
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
    uint64_t now = clock_mono_ms();
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
    conn_process(&p->conn, revents, clock_mono_ms());
    client_timers(p, clock_mono_ms());
    return p->conn.phase == CONN_OFF && p->fatal_status ? p->fatal_status : PARLEY_OK;
}

/* One poll round, waiting at most until deadline. Returns -1 if a signal interrupted. */
static int loop_once(parley *p, uint64_t deadline)
{
    uint64_t now = clock_mono_ms();
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
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : clock_mono_ms() + (uint64_t)timeout_ms;
    while (!p->stop) {
        if (!p->conn_used || p->conn.phase == CONN_OFF)
            return p->fatal_status;
        if (deadline != UINT64_MAX && clock_mono_ms() >= deadline)
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
    uint64_t deadline = clock_mono_ms() + CONN_CLOSE_TIMEOUT_MS + 500;
    while (p->conn.phase != CONN_OFF && clock_mono_ms() < deadline)
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
    uint64_t deadline = clock_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 30000);
    conn_start(&p->conn);
    while (!p->one.reply && p->conn.phase != CONN_OFF && clock_mono_ms() < deadline)
        if (loop_once(p, deadline) < 0)
            break;
    int rc = PARLEY_OK;
    if (p->one.reply)
        *reply = p->one.reply;
    else if (p->conn.phase == CONN_OFF)
        rc = set_err(p, PARLEY_ERR_NETWORK, "%s", p->conn.last_reason[0] ? p->conn.last_reason : "cannot reach the server");
    else if (clock_mono_ms() >= deadline)
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
        return invalid_phone(p, phone);
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
    uint8_t pub[PS_PUBKEY_LEN];
    if (e2e_identity_public(p->db, pub) != E2E_OK)
        return db_err(p);
    /* the first keys, stored before they go out (a second try sends the same ones) */
    Parley__UploadKeys keys = PARLEY__UPLOAD_KEYS__INIT;
    uint32_t *key_ids = NULL;
    size_t n_key_ids = 0;
    int krc = keys_for_registration(p, &keys, &key_ids, &n_key_ids);
    if (krc != PARLEY_OK)
        return krc;
    char phone[PARLEY_PHONE_MAX + 1];
    snprintf(phone, sizeof phone, "%s", p->ident.pending_phone);
    Parley__Register rg = PARLEY__REGISTER__INIT;
    rg.phone = phone;
    rg.code = (char *)code;
    rg.has_identity_key = 1;
    rg.identity_key = (ProtobufCBinaryData){sizeof pub, pub};
    rg.has_registration_id = 1;
    rg.registration_id = p->ident.registration_id;
    rg.keys = &keys;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_REGISTER;
    f.register_ = &rg;
    Parley__Frame *reply;
    int rc = oneshot(p, p->ident.server_url, &f, &reply, timeout_ms);
    keys_upload_free(&keys);
    if (rc != PARLEY_OK) {
        free(key_ids);
        return rc;
    }
    if (reply->body_case == PARLEY__FRAME__BODY_REGISTERED && reply->registered->has_account_id &&
        reply->registered->account_id.len == PARLEY_ID_LEN) {
        uint32_t device = reply->registered->has_device_id ? reply->registered->device_id : 1;
        rc = db_begin(p->db) == DB_OK &&
                     db_identity_set_registered(p->db, phone, reply->registered->account_id.data, device) == DB_OK &&
                     db_prekeys_uploaded(p->db, key_ids, n_key_ids) == DB_OK && db_commit(p->db) == DB_OK
                 ? PARLEY_OK
                 : (db_rollback(p->db), db_err(p));
    } else if (reply->body_case == PARLEY__FRAME__BODY_ERROR) {
        const Parley__Error *e = reply->error;
        const char *what = e->code == PERR_WRONG_CODE          ? "wrong code"
                           : e->code == PERR_CODE_EXPIRED      ? "the code expired; run register again for a new one"
                           : e->code == PERR_TOO_MANY_ATTEMPTS ? "too many wrong codes; run register again for a new one"
                                                                              : server_reason(e);
        rc = set_err(p, PARLEY_ERR_REFUSED, "the server did not accept the code: %s", what);
    } else {
        rc = set_err(p, PARLEY_ERR_REFUSED, "unexpected answer from the server");
    }
    free(key_ids);
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
        return invalid_phone(p, phone);
    size_t len = text ? strlen(text) : 0;
    if (len == 0)
        return set_err(p, PARLEY_ERR_INVALID, "the message is empty");
    if (len > PARLEY_MAX_TEXT)
        return set_err(p, PARLEY_ERR_INVALID, "the message is longer than %d bytes", PARLEY_MAX_TEXT);
    if (!utf8_valid((const uint8_t *)text, len))
        return set_err(p, PARLEY_ERR_INVALID, "the message is not valid UTF-8");
    db_message m;
    memset(&m, 0, sizeof m);
    new_message_id(m.id);
    m.outgoing = true;
    snprintf(m.peer_phone, sizeof m.peer_phone, "%s", phone);
    m.text = text;
    m.text_len = len;
    m.sent_ms = clock_wall_ms();
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
        return invalid_phone(p, phone);
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
    pm.kind = m->kind == DB_KIND_MESSAGE ? PARLEY_MESSAGE_TEXT : PARLEY_MESSAGE_IDENTITY_CHANGED;
    pm.was_verified = m->kind == DB_KIND_IDENTITY_CHANGED_VERIFIED;
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
        return invalid_phone(p, phone);
    history_ctx h = {fn, ctx};
    return db_history(p->db, phone, history_row, &h) == DB_OK ? PARLEY_OK : db_err(p);
}
