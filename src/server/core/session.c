/* session.c - a connection's life in the core (session.h): Hello and the connection
 * rate limit when it opens, frames decoded and run through the dispatch table, the
 * services' hooks at authentication and close, requests held out for it, and the bus's
 * callbacks, which land on the connection's own thread. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>

#include "service.h"

/* ---- requests out ---------------------------------------------------------------- */

void session_hold(session *s)
{
    s->pending++;
}

bool session_returned(session *s)
{
    s->pending--;
    if (s->conn)
        return true;
    if (s->pending == 0)
        free(s); /* the connection went away while the request was out */
    return false;
}

bool session_address(const session *s, uint8_t key[16])
{
    struct sockaddr_storage peer;
    int len = sizeof peer;
    memset(&peer, 0, sizeof peer);
    if (!s->conn || uv_tcp_getpeername(&s->conn->tcp, (struct sockaddr *)&peer, &len) != 0)
        memset(&peer, 0, sizeof peer);
    address_key((const struct sockaddr *)&peer, key);
    return !s->conn || !admission_trusted(&session_server(s)->admit, key);
}

void session_ask_begin(session_ask *a, session *s, uint64_t request_id)
{
    a->s = s;
    a->srv = session_server(s);
    a->request_id = request_id;
    session_hold(s);
}

void session_origin(const session *s, store_origin *o)
{
    o->device = s->device;
    memcpy(o->key_prefix, s->key_prefix, sizeof o->key_prefix);
}

void session_wake(server *srv, const store_entries *appended)
{
    for (size_t i = 0; i < appended->n; i++)
        if (i == 0 || memcmp(&appended->items[i].device, &appended->items[i - 1].device, sizeof(store_device)) != 0)
            bus_wake(srv->bus, &appended->items[i].device);
}

/* ---- the services' hooks --------------------------------------------------------- */

#define EACH_SERVICE(srv, svc) \
    for (const service *const *svc_ = (srv)->services, *svc; (svc = *svc_) != NULL; svc_++)

void session_authenticated(session *s)
{
    ws_conn_trust(s->conn); /* the authentication deadline is met: idle deadlines from now */
    EACH_SERVICE (session_server(s), svc)
        if (svc->authenticated && session_open(s))
            svc->authenticated(s);
}

/* ---- the bus's owner --------------------------------------------------------------- */

static session *of_claim(const bus_claim *c)
{
    return (session *)((char *)c - offsetof(session, claim));
}

static const store_device *claim_device(const bus_claim *c)
{
    return &of_claim(c)->device;
}

static int claim_thread(const bus_claim *c)
{
    return session_thread(of_claim(c))->index;
}

static void claim_wake(bus_claim *c)
{
    session *s = of_claim(c);
    EACH_SERVICE (session_server(s), svc)
        if (svc->inbox_grew)
            svc->inbox_grew(s);
}

static void claim_kicked(bus_claim *c, bool replaced)
{
    session_close_replaced(of_claim(c), replaced);
}

static void claim_ephemeral(bus_claim *c, const uint8_t *frame, size_t len)
{
    session *s = of_claim(c);
    if (session_open(s))
        ws_conn_send(s->conn, WS_OP_BINARY, frame, len);
}

const bus_owner session_bus_owner = {claim_device, claim_thread, claim_wake, claim_kicked, claim_ephemeral};

/* ---- the connection's life ------------------------------------------------------------ */

static int admit(ws_conn *c, const struct sockaddr *peer, uint32_t *retry_after_s)
{
    server *srv = ((io_thread *)c->tcp.loop->data)->srv;
    return admission_admit(&srv->admit, &srv->rates[RATE_CONNECTIONS], peer, clock_wall_ms(), &c->admit_slot,
                           retry_after_s);
}

static void released(ws_conn *c)
{
    admission_release(&((io_thread *)c->tcp.loop->data)->srv->admit, c->admit_slot);
}

static void on_open(ws_conn *c)
{
    server *srv = ((io_thread *)c->tcp.loop->data)->srv;
    session *s = calloc(1, sizeof *s);
    if (!s) {
        ws_conn_close(c, WS_CLOSE_INTERNAL_ERROR, "out of memory");
        return;
    }
    s->conn = c;
    c->user = s;
    Parley__Hello h = PARLEY__HELLO__INIT;
    h.has_protocol_version = 1;
    h.protocol_version = PARLEY_PROTOCOL_VERSION;
    h.has_heartbeat_seconds = 1;
    h.heartbeat_seconds = srv->cfg.heartbeat_seconds;
    h.has_server_time_ms = 1;
    h.server_time_ms = clock_wall_ms();
    h.has_max_frame_bytes = 1;
    h.max_frame_bytes = srv->cfg.max_frame_bytes;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_HELLO;
    f.hello = &h;
    session_send_frame(s, &f);
}

static bool on_message(ws_conn *c, int opcode, uint8_t *data, size_t len)
{
    session *s = c->user;
    if (!s)
        return false;
    if (opcode == WS_OP_TEXT) {
        session_error(s, 0, PERR_TEXT_FRAME, NULL);
        return true;
    }
    Parley__Frame *f = parley__frame__unpack(NULL, len, data);
    if (!f) {
        session_error(s, 0, PERR_MALFORMED_FRAME, "not a Parley frame");
        return true;
    }
    uint64_t rid = f->has_request_id ? f->request_id : 0;
    if (f->has_version && f->version != PARLEY_PROTOCOL_VERSION)
        session_error(s, rid, PERR_UNSUPPORTED_VERSION, NULL);
    else
        dispatch_frame(session_server(s)->dispatch, s, f);
    parley__frame__free_unpacked(f, NULL);
    return true;
}

static void on_closed(ws_conn *c)
{
    session *s = c->user;
    if (!s)
        return;
    EACH_SERVICE (session_server(s), svc)
        if (svc->closed)
            svc->closed(s);
    bus_release(session_server(s)->bus, &s->claim);
    free(s->nonce);
    s->nonce = NULL;
    s->conn = NULL;
    if (s->pending == 0)
        free(s);
}

static void on_writable(ws_conn *c)
{
    session *s = c->user;
    if (!s)
        return;
    EACH_SERVICE (session_server(s), svc)
        if (svc->writable)
            svc->writable(s);
}

const ws_conn_callbacks session_callbacks = {admit, released, on_open, on_message, on_closed, on_writable};
