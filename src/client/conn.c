/* conn.c - the session state machine:
 *
 *   OFF -> OPENING -> HELLO -> AUTH -> READY
 *            ^  (failure, transient)  |
 *            +------- WAIT <----------+      fatal (4000, AUTH_FAILED, not a Parley
 *                                             server) or conn_stop -> OFF
 *
 * WAIT lasts a random time in [0, min(30 s, 0.5 s * 2^attempt)] ("full jitter": many
 * clients cut off together do not come back together). */
#include "conn.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "clock.h"

#define AUTH_CONTEXT "parley-auth-v1"

static void ws_open_cb(void *ctx);
static void ws_message_cb(void *ctx, uint8_t *data, size_t len);
static void ws_closed_cb(void *ctx, int code, const char *reason, bool fatal);
static const wsc_handlers ws_cbs = {ws_open_cb, ws_message_cb, ws_closed_cb};

void conn_init(conn *c, const conn_config *cfg, const conn_callbacks *cb, void *ctx)
{
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    c->cb = cb;
    c->ctx = ctx;
    c->next_rid = 1;
    c->heartbeat_ms = CONN_DEFAULT_HEARTBEAT_S * 1000;
    c->max_frame = CONN_DEFAULT_MAX_FRAME;
    wsc_init(&c->ws, &ws_cbs, c);
}

static void attempt(conn *c, uint64_t now)
{
    c->phase = CONN_OPENING;
    c->deadline = now + CONN_CONNECT_TIMEOUT_MS;
    c->fail_status = 0;
    c->fail_fatal = false;
    c->auth_rid = 0;
    c->cb->state(c->ctx, PARLEY_CONN_CONNECTING, PARLEY_OK, NULL, 0);
    wsc_open(&c->ws, c->cfg.url); /* a failure comes back through ws_closed_cb */
}

void conn_start(conn *c)
{
    if (c->phase == CONN_OFF || c->phase == CONN_WAIT)
        attempt(c, clock_mono_ms());
}

void conn_stop(conn *c)
{
    switch (c->phase) {
    case CONN_HELLO:
    case CONN_AUTH:
    case CONN_READY:
        c->phase = CONN_CLOSING;
        c->deadline = clock_mono_ms() + CONN_CLOSE_TIMEOUT_MS;
        wsc_close(&c->ws, WS_CLOSE_NORMAL, "bye");
        break;
    case CONN_OPENING:
        c->phase = CONN_CLOSING;
        wsc_fail(&c->ws, WS_CLOSE_NORMAL, "stopped", false);
        break;
    case CONN_WAIT:
        c->phase = CONN_OFF;
        c->cb->state(c->ctx, PARLEY_CONN_OFFLINE, PARLEY_OK, NULL, 0);
        break;
    default:
        break;
    }
}

void conn_reset(conn *c)
{
    wsc_reset(&c->ws);
    c->phase = CONN_OFF;
}

int conn_fd(const conn *c)
{
    return wsc_fd(&c->ws);
}

short conn_events(const conn *c)
{
    return wsc_events(&c->ws);
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

int conn_timeout(const conn *c, uint64_t now)
{
    uint64_t t = UINT64_MAX;
    switch (c->phase) {
    case CONN_WAIT:
    case CONN_OPENING:
    case CONN_CLOSING:
        t = c->deadline;
        break;
    case CONN_HELLO:
    case CONN_AUTH:
        t = min_u64(c->deadline, c->last_rx + 2ull * c->heartbeat_ms);
        if (c->next_ping)
            t = min_u64(t, c->next_ping);
        break;
    case CONN_READY:
        t = min_u64(c->next_ping, c->last_rx + 2ull * c->heartbeat_ms);
        break;
    default:
        return -1;
    }
    if (t <= now)
        return 0;
    return t - now > 3600000 ? 3600000 : (int)(t - now);
}

void conn_fail(conn *c, int status, bool fatal, const char *reason)
{
    if (c->phase == CONN_WAIT && fatal) {
        c->phase = CONN_OFF;
        c->last_status = status;
        snprintf(c->last_reason, sizeof c->last_reason, "%s", reason);
        c->cb->state(c->ctx, PARLEY_CONN_OFFLINE, status, reason, 0);
        return;
    }
    if (wsc_fd(&c->ws) < 0 && c->ws.state == WSC_IDLE)
        return;
    if (!c->fail_status) {
        c->fail_status = status;
        c->fail_fatal = fatal;
    }
    wsc_fail(&c->ws, WSC_ABNORMAL, reason, fatal);
}

static int pack_and_send(conn *c, Parley__Frame *f)
{
    f->has_version = 1;
    f->version = CONN_PROTOCOL_VERSION;
    size_t n = parley__frame__get_packed_size(f);
    if (n > c->max_frame)
        return -1;
    uint8_t stack[1024], *buf = n <= sizeof stack ? stack : malloc(n);
    if (!buf)
        return -1;
    parley__frame__pack(f, buf);
    int rc = wsc_send(&c->ws, buf, n);
    sodium_memzero(buf, n); /* may hold a message body */
    if (buf != stack)
        free(buf);
    if (rc != 0)
        conn_fail(c, PARLEY_ERR_NETWORK, false, "too much data waiting to be written to the server");
    return rc;
}

static uint64_t send_request(conn *c, Parley__Frame *f)
{
    uint64_t rid = c->next_rid++;
    f->has_request_id = 1;
    f->request_id = rid;
    return pack_and_send(c, f) == 0 ? rid : 0;
}

bool conn_fits(const conn *c, const Parley__Frame *f)
{
    /* + version and request id, at most 2 + 11 bytes */
    return parley__frame__get_packed_size(f) + 16 <= c->max_frame;
}

uint64_t conn_send(conn *c, Parley__Frame *f)
{
    if (c->phase != CONN_READY)
        return 0;
    return send_request(c, f);
}

int conn_push(conn *c, Parley__Frame *f)
{
    if (c->phase != CONN_READY)
        return -1;
    f->has_request_id = 0;
    return pack_and_send(c, f);
}

static void send_ping(conn *c, uint64_t now)
{
    Parley__Ping ping = PARLEY__PING__INIT;
    ping.has_nonce = 1;
    ping.nonce = now;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_PING;
    f.ping = &ping;
    send_request(c, &f);
    c->next_ping = now + c->heartbeat_ms / 2;
}

/* ---- the handshake -------------------------------------------------------------------- */

static void on_hello(conn *c, const Parley__Frame *f)
{
    if (f->body_case != PARLEY__FRAME__BODY_HELLO) {
        char reason[300];
        if (f->body_case == PARLEY__FRAME__BODY_ERROR)
            snprintf(reason, sizeof reason, "the server refused the connection: %s",
                     f->error->reason ? f->error->reason : "no reason given");
        else
            snprintf(reason, sizeof reason, "%s is not a Parley server (no Hello)", c->cfg.url);
        conn_fail(c, PARLEY_ERR_NETWORK, false, reason);
        return;
    }
    const Parley__Hello *h = f->hello;
    if (h->has_protocol_version && h->protocol_version != CONN_PROTOCOL_VERSION) {
        char reason[200];
        snprintf(reason, sizeof reason, "the server speaks protocol version %u; this client speaks %d",
                 h->protocol_version, CONN_PROTOCOL_VERSION);
        conn_fail(c, PARLEY_ERR_UNSUPPORTED, true, reason);
        return;
    }
    uint32_t hb = h->has_heartbeat_seconds && h->heartbeat_seconds ? h->heartbeat_seconds
                                                                    : CONN_DEFAULT_HEARTBEAT_S;
    if (hb > 3600)
        hb = 3600;
    c->heartbeat_ms = hb * 1000;
    c->max_frame = h->has_max_frame_bytes && h->max_frame_bytes >= 1024 ? h->max_frame_bytes
                                                                       : CONN_DEFAULT_MAX_FRAME;
    if (c->max_frame > WSC_MAX_MESSAGE)
        c->max_frame = WSC_MAX_MESSAGE;
    wsc_set_max_message(&c->ws, (size_t)c->max_frame + 4096); /* what the server promised, and a margin */
    uint64_t now = clock_mono_ms();
    c->next_ping = now + c->heartbeat_ms / 2;
    if (!c->cfg.authenticate) {
        c->phase = CONN_READY;
        c->ready_since = now;
        c->cb->ready(c->ctx);
        return;
    }
    c->phase = CONN_AUTH;
    c->cb->state(c->ctx, PARLEY_CONN_AUTHENTICATING, PARLEY_OK, NULL, 0);
    Parley__Connect m = PARLEY__CONNECT__INIT;
    m.has_account_id = 1;
    m.account_id = (ProtobufCBinaryData){PARLEY_ID_LEN, c->cfg.account};
    m.has_device_id = 1;
    m.device_id = c->cfg.device;
    m.has_receive = 1;
    m.receive = c->cfg.receive;
    Parley__Frame out = PARLEY__FRAME__INIT;
    out.body_case = PARLEY__FRAME__BODY_CONNECT;
    out.connect = &m;
    c->auth_rid = send_request(c, &out);
}

static void on_auth(conn *c, const Parley__Frame *f)
{
    if (!f->has_request_id || f->request_id != c->auth_rid)
        return; /* a Pong, or something unasked: not ours to judge yet */
    char reason[300];
    if (f->body_case == PARLEY__FRAME__BODY_CHALLENGE) {
        const Parley__Challenge *ch = f->challenge;
        if (!ch->has_nonce || ch->nonce.len != 32) {
            conn_fail(c, PARLEY_ERR_NETWORK, false, "the server sent a malformed challenge");
            return;
        }
        uint8_t msg[sizeof AUTH_CONTEXT - 1 + 32 + PARLEY_ID_LEN + 4], sig[64];
        uint8_t *p = msg;
        memcpy(p, AUTH_CONTEXT, sizeof AUTH_CONTEXT - 1), p += sizeof AUTH_CONTEXT - 1;
        memcpy(p, ch->nonce.data, 32), p += 32;
        memcpy(p, c->cfg.account, PARLEY_ID_LEN), p += PARLEY_ID_LEN;
        p[0] = (uint8_t)(c->cfg.device >> 24), p[1] = (uint8_t)(c->cfg.device >> 16);
        p[2] = (uint8_t)(c->cfg.device >> 8), p[3] = (uint8_t)c->cfg.device;
        if (c->cb->sign(c->ctx, msg, sizeof msg, sig) != 0) {
            conn_fail(c, PARLEY_ERR_STORAGE, true, "cannot read this device's identity key");
            return;
        }
        Parley__Authenticate a = PARLEY__AUTHENTICATE__INIT;
        a.has_signature = 1;
        a.signature = (ProtobufCBinaryData){sizeof sig, sig};
        Parley__Frame out = PARLEY__FRAME__INIT;
        out.body_case = PARLEY__FRAME__BODY_AUTHENTICATE;
        out.authenticate = &a;
        c->auth_rid = send_request(c, &out);
        return;
    }
    if (f->body_case == PARLEY__FRAME__BODY_AUTHENTICATED) {
        c->phase = CONN_READY;
        c->ready_since = clock_mono_ms();
        c->auth_rid = 0;
        c->cb->state(c->ctx, PARLEY_CONN_READY, PARLEY_OK, NULL, 0);
        if (c->phase == CONN_READY)
            c->cb->ready(c->ctx);
        return;
    }
    if (f->body_case == PARLEY__FRAME__BODY_ERROR && f->error->code == PERR_AUTH_FAILED) {
        snprintf(reason, sizeof reason,
                 "the server does not accept this device (%s); was the number registered again elsewhere?",
                 f->error->reason ? f->error->reason : "authentication failed");
        conn_fail(c, PARLEY_ERR_AUTH, true, reason);
        return;
    }
    snprintf(reason, sizeof reason, "authentication did not complete: %s",
             f->body_case == PARLEY__FRAME__BODY_ERROR && f->error->reason ? f->error->reason
                                                                           : "unexpected answer");
    conn_fail(c, PARLEY_ERR_NETWORK, false, reason);
}

/* ---- ws callbacks ------------------------------------------------------------------- */

static void ws_open_cb(void *ctx)
{
    conn *c = ctx;
    if (c->phase == CONN_OPENING) {
        c->phase = CONN_HELLO;
        c->last_rx = clock_mono_ms();
        c->next_ping = 0;
    }
}

static void ws_message_cb(void *ctx, uint8_t *data, size_t len)
{
    conn *c = ctx;
    c->last_rx = clock_mono_ms();
    Parley__Frame *f = parley__frame__unpack(NULL, len, data);
    if (!f) {
        conn_fail(c, PARLEY_ERR_NETWORK, false, "the server sent a frame this client cannot read");
        return;
    }
    bool kept = false;
    switch (c->phase) {
    case CONN_HELLO:
        on_hello(c, f);
        break;
    case CONN_AUTH:
        on_auth(c, f);
        break;
    case CONN_READY:
        if (f->body_case != PARLEY__FRAME__BODY_PONG)
            kept = c->cb->frame(c->ctx, f);
        break;
    default:
        break;
    }
    if (!kept)
        parley__frame__free_unpacked(f, NULL);
}

static void ws_closed_cb(void *ctx, int code, const char *reason, bool fatal)
{
    conn *c = ctx;
    uint64_t now = clock_mono_ms();
    conn_phase was = c->phase;
    int status = c->fail_status ? c->fail_status : PARLEY_ERR_NETWORK;
    fatal = fatal || c->fail_fatal;
    char why[sizeof c->last_reason];
    if (c->fail_status || code == WSC_ABNORMAL) {
        snprintf(why, sizeof why, "%s", reason);
    } else if (code == CONN_CLOSE_REPLACED) {
        status = PARLEY_ERR_REPLACED;
        fatal = true;
        snprintf(why, sizeof why, "another client took over this device");
    } else if (code == WS_CLOSE_GOING_AWAY) {
        snprintf(why, sizeof why, "the server is going away (restart or shutdown)");
    } else {
        snprintf(why, sizeof why, "the server closed the connection (%d%s%s)", code, *reason ? ": " : "",
                 reason);
    }
    if (was == CONN_READY && now - c->ready_since >= CONN_STABLE_MS)
        c->attempt = 0;
    c->fail_status = 0;
    c->fail_fatal = false;
    c->auth_rid = 0;
    c->cb->down(c->ctx);
    if (was == CONN_CLOSING) {
        c->phase = CONN_OFF;
        c->cb->state(c->ctx, PARLEY_CONN_OFFLINE, PARLEY_OK, NULL, 0);
        return;
    }
    c->last_status = status;
    snprintf(c->last_reason, sizeof c->last_reason, "%s", why);
    if (fatal || !c->cfg.reconnect) {
        c->phase = CONN_OFF;
        c->cb->state(c->ctx, PARLEY_CONN_OFFLINE, status, why, 0);
        return;
    }
    unsigned shift = c->attempt < 16 ? c->attempt : 16;
    uint64_t cap = (uint64_t)CONN_BACKOFF_BASE_MS << shift;
    if (cap > CONN_BACKOFF_MAX_MS)
        cap = CONN_BACKOFF_MAX_MS;
    uint32_t delay = randombytes_uniform((uint32_t)cap + 1);
    c->attempt++;
    c->phase = CONN_WAIT;
    c->deadline = now + delay;
    c->cb->state(c->ctx, PARLEY_CONN_WAITING, status, why, delay);
}

void conn_process(conn *c, short revents, uint64_t now)
{
    if (wsc_fd(&c->ws) >= 0)
        wsc_process(&c->ws, revents);
    now = clock_mono_ms() > now ? clock_mono_ms() : now;
    char reason[PARLEY_URL_MAX + 64];
    switch (c->phase) {
    case CONN_WAIT:
        if (now >= c->deadline)
            attempt(c, now);
        break;
    case CONN_OPENING:
    case CONN_HELLO:
    case CONN_AUTH:
    case CONN_READY:
        if (c->phase != CONN_READY && now >= c->deadline) {
            snprintf(reason, sizeof reason, "cannot reach %s: no answer within %d s", c->cfg.url,
                     CONN_CONNECT_TIMEOUT_MS / 1000);
            conn_fail(c, PARLEY_ERR_NETWORK, false, reason);
        } else if (c->phase != CONN_OPENING && now >= c->last_rx + 2ull * c->heartbeat_ms) {
            snprintf(reason, sizeof reason, "the server stopped answering (nothing for %u s)",
                     2 * c->heartbeat_ms / 1000);
            conn_fail(c, PARLEY_ERR_NETWORK, false, reason);
        } else if (c->phase != CONN_OPENING && c->next_ping && now >= c->next_ping) {
            send_ping(c, now);
        }
        break;
    case CONN_CLOSING:
        if (now >= c->deadline)
            wsc_fail(&c->ws, WS_CLOSE_NORMAL, "closed", false);
        break;
    default:
        break;
    }
}
