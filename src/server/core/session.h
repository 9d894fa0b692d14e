/* session.h - the protocol state of one connection, and what every service does with
 * it: answer, refuse, ask the store on its behalf, wake devices.
 *
 * A session lives as long as its connection, or longer while requests made for it are
 * out (SMS sends, store requests): session_hold before handing one out, and
 * session_returned when it comes back, which says whether the connection is still there
 * to answer (and frees the session once the last request of a closed one returned). */
#ifndef PARLEY_SESSION_H
#define PARLEY_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "parley.pb-c.h"
#include "server.h"

enum { SESSION_NEW, SESSION_CHALLENGED, SESSION_AUTHENTICATED };

typedef struct session session;
/* Every connection has one, so it is kept to 88 bytes (flags as bits, fields in an
 * order that needs no padding): with malloc's header, a 96-byte chunk. The fields are
 * grouped by the service that owns them. */
struct session {
    ws_conn *conn;                /* NULL once the connection is gone */
    uint8_t *nonce;               /* auth: only while challenged */
    /* deliver: the window of seqs handed out and acknowledged on this connection */
    uint64_t delivered_seq;
    uint64_t acked_seq;
    bus_claim claim;              /* deliver: the device's receiving connection */
    store_device device;          /* auth: claimed in Connect, proven by Authenticate */
    uint8_t key_prefix[8];        /* auth: of the identity key it proved */
    uint16_t pending;             /* requests out for it */
    uint8_t errors;               /* reply.c: protocol errors answered (it is closed past a few) */
    uint8_t state : 2;            /* auth: SESSION_* */
    bool receive : 1;             /* deliver: the device's receiving connection */
    bool drained_sent : 1;        /* deliver: Deliver{drained} went out */
    bool pump_blocked : 1;        /* deliver: waits for the write queue to empty */
    bool pump_reading : 1;        /* deliver: an inbox read is out */
    bool pump_again : 1;          /* deliver: pump once more when it is back */
};
_Static_assert(sizeof(struct session) <= 88, "session grew: that is memory per idle connection");

static inline io_thread *session_thread(const session *s)
{
    return (io_thread *)s->conn->tcp.loop->data;
}

static inline server *session_server(const session *s)
{
    return session_thread(s)->srv;
}

static inline bool same_account(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, STORE_ACCOUNT_ID_LEN) == 0;
}

static inline bool session_open(const session *s)
{
    return s->conn && !s->conn->closing;
}

/* ---- frames out (reply.c) ---- */

/* Errors a connection is answered before it is closed (1008 "too many errors"): every
 * error before authentication, and malformed, unknown or unauthenticated frames after. */
#define SESSION_MAX_ERRORS 16

void session_send_frame(session *s, Parley__Frame *f);
void session_reply(session *s, uint64_t request_id, Parley__Frame *f);
/* An Error; reason NULL: the error table's text for code. */
void session_error(session *s, uint64_t request_id, uint32_t code, const char *reason);
void session_error_full(session *s, uint64_t request_id, uint32_t code, const char *reason,
                        uint32_t retry_after_ms, Parley__DeviceList *devices);
/* The answer to a store status that is not STORE_OK: a full store, an unknown account,
 * refused prekeys, the end of a replaced device (an error, then close 4000: do not come
 * back), or an internal error. */
void session_store_error(session *s, uint64_t request_id, int status);
/* The same for a refusal that says when to try again (STORE_DAILY_QUOTA). */
void session_store_error_retry(session *s, uint64_t request_id, int status, uint64_t retry_ms);
/* Closes s's connection: the device was replaced (replaced) or a newer connection of
 * it won. */
void session_close_replaced(session *s, bool replaced);

/* ---- requests out (session.c) ---- */

void session_hold(session *s);
bool session_returned(session *s);

/* The client's address as 16 bytes (address_key, admission.h); zeros if unknown. False
 * for an address on --trusted-proxy: it is not the client's, so per-address limits skip it. */
bool session_address(const session *s, uint8_t key[16]);

/* What a request made on behalf of a session carries back: the session (held until the
 * request returns), the server (the connection may be gone by then) and the request id
 * to answer. */
typedef struct {
    session *s;
    server *srv;
    uint64_t request_id;
} session_ask;

/* Before handing a request out for s: fills a and holds s. */
void session_ask_begin(session_ask *a, session *s, uint64_t request_id);
void session_origin(const session *s, store_origin *o);
/* After a commit that appended to these devices' inboxes. */
void session_wake(server *srv, const store_entries *appended);

/* The core's own part of the connection's life (session.c): the ws callbacks, and the
 * authenticated hook of every service, run once a connection proved its key. */
extern const ws_conn_callbacks session_callbacks;
void session_authenticated(session *s);

/* The bus's owner: sessions (session.c). */
extern const bus_owner session_bus_owner;

#endif
