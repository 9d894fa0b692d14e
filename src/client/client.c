/* client.c - libparley's core (client_internal.h): the handle, events and errors,
 * requests in flight, the features' hooks, the connection's callbacks and the loop.
 *
 * Per connection, once authenticated, every feature's ready hook runs (our own devices
 * are looked up, our key status asked for), then their pumps: after every frame and
 * API call, in the order inbox, keys, outbox, receipts. A frame with a request id goes to its
 * request's handler; a frame the server pushes goes to the feature that takes its body
 * (Deliver: the inbox). */
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
#include "primitives.h"

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

void emit_state(parley *p, const uint8_t id[PARLEY_ID_LEN], const char *conversation, parley_state st,
                uint64_t server_ms, const char *reason)
{
    parley_event ev = {.type = PARLEY_EVENT_STATE};
    memcpy(ev.state.id, id, PARLEY_ID_LEN);
    ev.state.conversation = conversation;
    ev.state.peer = parley_conversation_kind_of(conversation) == PARLEY_CONVERSATION_DIRECT ? conversation : NULL;
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

parley_conversation_kind parley_conversation_kind_of(const char *conversation)
{
    static const char group[] = "group:";
    if (conversation && parley_phone_valid(conversation))
        return PARLEY_CONVERSATION_DIRECT;
    if (!conversation || strncmp(conversation, group, sizeof group - 1) != 0)
        return PARLEY_CONVERSATION_INVALID;
    const char *hex = conversation + sizeof group - 1;
    size_t n = 0;
    while ((hex[n] >= '0' && hex[n] <= '9') || (hex[n] >= 'a' && hex[n] <= 'f'))
        n++;
    return n == 2 * PARLEY_ID_LEN && hex[n] == 0 ? PARLEY_CONVERSATION_GROUP : PARLEY_CONVERSATION_INVALID;
}

/* PARLEY_ERR_INVALID or PARLEY_ERR_UNSUPPORTED unless conversation is a chat we serve. */
int check_conversation(parley *p, const char *conversation)
{
    switch (parley_conversation_kind_of(conversation)) {
    case PARLEY_CONVERSATION_DIRECT:
        return PARLEY_OK;
    case PARLEY_CONVERSATION_GROUP:
        return set_err(p, PARLEY_ERR_UNSUPPORTED, "groups are not supported by this version of parley yet");
    default:
        if (conversation && strncmp(conversation, "group:", 6) == 0)
            return set_err(p, PARLEY_ERR_INVALID, "%s is not a group id (group: and 32 hex digits)", conversation);
        return invalid_phone(p, conversation);
    }
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

bool pause_after_passing_error(const Parley__Frame *f, client_pause *z)
{
    uint32_t code = f->body_case == PARLEY__FRAME__BODY_ERROR ? f->error->code : 0;
    if (code != PERR_RATE_LIMITED && code != PERR_STORAGE_FULL && code != PERR_DAILY_QUOTA &&
        code != PERR_INTERNAL && code != 0)
        return false;
    uint32_t ms = (code == PERR_RATE_LIMITED || code == PERR_DAILY_QUOTA) && f->error->retry_after_ms
                      ? f->error->retry_after_ms
                      : backoff_ms(z->errors++);
    z->until = clock_mono_ms() + (ms < 60000 ? ms : 60000);
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

void *req_new(parley *p, const request_type *type, size_t size)
{
    if (p->n_reqs >= MAX_REQUESTS || size < sizeof(request))
        return NULL;
    request *r = calloc(1, size);
    if (r)
        r->type = type;
    return r;
}

void req_free(request *r)
{
    if (!r)
        return;
    if (r->type->free)
        r->type->free(r);
    free(r);
}

bool req_send(parley *p, request *r, Parley__Frame *f)
{
    r->rid = conn_send(&p->conn, f);
    if (!r->rid) {
        req_free(r);
        return false;
    }
    r->next = p->reqs;
    p->reqs = r;
    p->n_reqs++;
    return true;
}

size_t req_count(const parley *p, const request_type *type)
{
    size_t n = 0;
    for (const request *r = p->reqs; r; r = r->next)
        n += r->type == type;
    return n;
}

request *req_next(const request *r, const request_type *type)
{
    for (r = r->next; r && r->type != type; r = r->next)
        ;
    return (request *)r;
}

request *req_first(const parley *p, const request_type *type)
{
    request *r = p->reqs;
    return r && r->type != type ? req_next(r, type) : r;
}

/* The request a reply answers, off the list; NULL if none has its id. */
static request *req_take(parley *p, uint64_t rid)
{
    for (request **link = &p->reqs; *link; link = &(*link)->next)
        if ((*link)->rid == rid) {
            request *r = *link;
            *link = r->next;
            p->n_reqs--;
            return r;
        }
    return NULL;
}

static void req_free_all(parley *p)
{
    while (p->reqs) {
        request *r = p->reqs;
        p->reqs = r->next;
        req_free(r);
    }
    p->n_reqs = 0;
}

/* ---- features ------------------------------------------------------------------------ */

static const client_feature *const features[] = {&inbox_feature, &keys_feature, &outbox_feature,
                                                 &receipts_feature, NULL};

void features_pump(parley *p)
{
    for (const client_feature *const *f = features; *f; f++)
        if ((*f)->pump)
            (*f)->pump(p);
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
    req_free_all(p);
    for (const client_feature *const *f = features; *f; f++)
        if ((*f)->down)
            (*f)->down(p);
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
    for (const client_feature *const *f = features; *f; f++)
        if ((*f)->ready)
            (*f)->ready(p);
    features_pump(p);
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
    bool kept = false;
    request *r = f->has_request_id ? req_take(p, f->request_id) : NULL;
    if (r) {
        r->type->reply(p, r, f);
        req_free(r);
    } else if (f->body_case == PARLEY__FRAME__BODY_ERROR) {
        char reason[300]; /* an answer to no request of ours */
        snprintf(reason, sizeof reason, "the server reported: %s", server_reason(f->error));
        emit_error(p, PARLEY_ERR_REFUSED, reason);
    } else {
        const client_feature *const *feat = features;
        while (*feat && !((*feat)->push && (*feat)->push_body == f->body_case))
            feat++;
        if (*feat)
            kept = (*feat)->push(p, f);
    }
    if (p->ready)
        features_pump(p);
    return kept;
}

static const conn_callbacks conn_cbs = {on_conn_state, on_conn_ready, on_conn_frame, on_conn_down, on_conn_sign};

/* ---- the loop ---------------------------------------------------------------------- */

static uint64_t client_deadline(const parley *p)
{
    uint64_t t = UINT64_MAX;
    for (const client_feature *const *f = features; p->ready && *f; f++)
        if ((*f)->deadline) {
            uint64_t ft = (*f)->deadline(p);
            t = ft < t ? ft : t;
        }
    return t;
}

static void client_timers(parley *p, uint64_t now)
{
    for (const client_feature *const *f = features; *f; f++)
        if ((*f)->timers)
            (*f)->timers(p, now);
}

/* The sockets the loop polls: the messaging connection today; a media transfer adds
 * its own here (parley_dispatch finds each again by its fd). */
int parley_pollfds(const parley *p, struct pollfd *pfds, int max)
{
    int n = 0;
    int fd = p->conn_used ? conn_fd(&p->conn) : -1;
    if (fd >= 0 && n < max)
        pfds[n++] = (struct pollfd){.fd = fd, .events = conn_events(&p->conn)};
    return n;
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

int parley_dispatch(parley *p, const struct pollfd *pfds, int n)
{
    if (!p->conn_used)
        return PARLEY_OK;
    int fd = conn_fd(&p->conn);
    short revents = 0;
    for (int i = 0; fd >= 0 && i < n; i++)
        if (pfds[i].fd == fd)
            revents = pfds[i].revents;
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
    struct pollfd pfds[PARLEY_MAX_POLLFDS];
    int n = parley_pollfds(p, pfds, PARLEY_MAX_POLLFDS);
    int rc = poll(n ? pfds : NULL, (nfds_t)n, t);
    if (rc < 0 && errno == EINTR)
        return -1;
    parley_dispatch(p, pfds, rc > 0 ? n : 0);
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
    inbox_free(p);
    db_close(p->db);
    sodium_memzero(p->errmsg, sizeof p->errmsg);
    free(p);
}

/* ---- registration ------------------------------------------------------------------- */

/* Sends req on a short unauthenticated connection and returns the answer in *reply. */
int client_oneshot(parley *p, const char *url, Parley__Frame *req, Parley__Frame **reply, int timeout_ms)
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

