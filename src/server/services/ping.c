/* ping.c - Ping, answered with a Pong carrying its nonce, on any connection. */
#include "services.h"

static void on_ping(session *s, uint64_t rid, const Parley__Frame *f)
{
    Parley__Pong pong = PARLEY__PONG__INIT;
    pong.has_nonce = f->ping->has_nonce;
    pong.nonce = f->ping->nonce;
    Parley__Frame r = PARLEY__FRAME__INIT;
    r.body_case = PARLEY__FRAME__BODY_PONG;
    r.pong = &pong;
    session_reply(s, rid, &r);
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_PING, false, RATE_NONE, on_ping},
    {0},
};

const service ping_service = {.name = "ping", .routes = routes};
