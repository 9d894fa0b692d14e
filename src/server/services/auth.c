/* auth.c - challenge-response authentication (docs/protocol.md, "Authentication"):
 * Connect names a device and gets a fresh nonce; Authenticate proves the device's
 * identity key by an XEdDSA signature over the context, the nonce and the device. The
 * nonce exists only between the two and is good for one try. */
#include <sodium.h>
#include <stdlib.h>

#include "primitives.h"
#include "services.h"

#define AUTH_CONTEXT "parley-auth-v1"

static void on_connect(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__Connect *m = f->connect;
    if (s->state == SESSION_AUTHENTICATED) {
        session_error(s, rid, PERR_AUTH_FAILED, "already authenticated");
        return;
    }
    if (!m->has_account_id || m->account_id.len != STORE_ACCOUNT_ID_LEN || !m->has_device_id) {
        session_error(s, rid, PERR_MALFORMED_FRAME, "Connect needs account_id (16 bytes) and device_id");
        return;
    }
    if (!s->nonce && !(s->nonce = malloc(32))) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    randombytes_buf(s->nonce, 32);
    memcpy(s->device.account, m->account_id.data, STORE_ACCOUNT_ID_LEN);
    s->device.device = m->device_id;
    s->receive = !m->has_receive || m->receive;
    s->state = SESSION_CHALLENGED;
    Parley__Challenge ch = PARLEY__CHALLENGE__INIT;
    ch.has_nonce = 1;
    ch.nonce = (ProtobufCBinaryData){32, s->nonce};
    Parley__Frame r = PARLEY__FRAME__INIT;
    r.body_case = PARLEY__FRAME__BODY_CHALLENGE;
    r.challenge = &ch;
    session_reply(s, rid, &r);
}

typedef struct {
    store_device_query q;
    session_ask ask;
    uint8_t signed_msg[sizeof AUTH_CONTEXT - 1 + 32 + 16 + 4];
    bool has_signature;
    uint8_t signature[PS_SIG_LEN];
} auth_request;

/* The device's record is in: the signature decides. */
static void device_read(store_req *req, int status)
{
    auth_request *a = (auth_request *)req;
    session *s = a->ask.s;
    if (!session_returned(s) || s->conn->closing) {
        free(a);
        return;
    }
    const store_device_record *rec = &a->q.record;
    if (s->state != SESSION_NEW || memcmp(&s->device, &a->q.device, sizeof s->device) != 0)
        status = STORE_NOT_FOUND; /* a Connect came meanwhile: this proof is for a device no longer named */
    if (status != STORE_OK || !a->has_signature ||
        !ps_xeddsa_verify(rec->identity_key, a->signed_msg, sizeof a->signed_msg, a->signature)) {
        session_error(s, a->ask.request_id, PERR_AUTH_FAILED,
                      status == STORE_NOT_FOUND ? "unknown device" : "the signature does not verify");
        free(a);
        return;
    }
    s->state = SESSION_AUTHENTICATED;
    s->claim.order = bus_order_next(session_server(s)->bus); /* the newest connection of a device wins */
    memcpy(s->key_prefix, rec->identity_key, sizeof s->key_prefix);
    Parley__Authenticated au = PARLEY__AUTHENTICATED__INIT;
    au.has_server_time_ms = 1;
    au.server_time_ms = clock_wall_ms();
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_AUTHENTICATED;
    f.authenticated = &au;
    session_reply(s, a->ask.request_id, &f);
    free(a);
    session_authenticated(s); /* e.g. a receiving connection: claimed, and its inbox drained */
}

static void on_authenticate(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__Authenticate *m = f->authenticate;
    if (s->state != SESSION_CHALLENGED) {
        session_error(s, rid, PERR_AUTH_FAILED, "send Connect first");
        return;
    }
    auth_request *a = calloc(1, sizeof *a);
    if (!a) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    uint8_t *msg = a->signed_msg;
    memcpy(msg, AUTH_CONTEXT, sizeof AUTH_CONTEXT - 1);
    memcpy(msg + sizeof AUTH_CONTEXT - 1, s->nonce, 32);
    memcpy(msg + sizeof AUTH_CONTEXT - 1 + 32, s->device.account, 16);
    uint8_t *d = msg + sizeof AUTH_CONTEXT - 1 + 48;
    d[0] = (uint8_t)(s->device.device >> 24), d[1] = (uint8_t)(s->device.device >> 16);
    d[2] = (uint8_t)(s->device.device >> 8), d[3] = (uint8_t)s->device.device;
    a->has_signature = m->has_signature && m->signature.len == PS_SIG_LEN;
    if (a->has_signature)
        memcpy(a->signature, m->signature.data, PS_SIG_LEN);
    /* the nonce is good for one try: a new Connect is needed after a failure */
    free(s->nonce);
    s->nonce = NULL;
    s->state = SESSION_NEW;
    a->q.req.done = device_read;
    a->q.device = s->device;
    session_ask_begin(&a->ask, s, rid);
    store_get_device(session_server(s)->st, session_thread(s)->home, &a->q);
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_CONNECT, false, RATE_NONE, on_connect},
    {PARLEY__FRAME__BODY_AUTHENTICATE, false, RATE_NONE, on_authenticate},
    {0},
};

const service auth_service = {.name = "auth", .routes = routes};
