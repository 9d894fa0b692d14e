/* conn.h - one Parley session over a ws_client: Hello, Connect -> Challenge ->
 * Authenticate, heartbeat pings, request ids, and reconnection with exponential
 * backoff and full jitter. It knows nothing about messages: frames after
 * authentication go to the owner. Single-threaded; the owner drives it with
 * conn_fd/conn_events/conn_timeout and conn_process. */
#ifndef PARLEY_CLIENT_CONN_H
#define PARLEY_CLIENT_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "errors.h"
#include "parley.h"
#include "parley.pb-c.h"
#include "ws_client.h"

#define CONN_PROTOCOL_VERSION 1
#define CONN_CONNECT_TIMEOUT_MS 15000   /* TCP + upgrade + Hello + authentication */
#define CONN_CLOSE_TIMEOUT_MS 2000      /* waiting for the server's close frame */
#define CONN_BACKOFF_BASE_MS 500
#define CONN_BACKOFF_MAX_MS 30000
#define CONN_STABLE_MS 10000            /* a connection this old resets the backoff */
#define CONN_DEFAULT_HEARTBEAT_S 30
#define CONN_DEFAULT_MAX_FRAME (256u * 1024)
#define CONN_CLOSE_REPLACED 4000        /* the server: a newer connection took the device */

typedef enum {
    CONN_OFF = 0,    /* not connected, not trying */
    CONN_WAIT,       /* waiting to retry */
    CONN_OPENING,    /* TCP and the WebSocket upgrade */
    CONN_HELLO,      /* waiting for the server's Hello */
    CONN_AUTH,       /* Connect/Authenticate in flight */
    CONN_READY,
    CONN_CLOSING,    /* closing politely at the owner's request */
} conn_phase;

typedef struct {
    /* The connection state as the public API reports it. */
    void (*state)(void *ctx, parley_conn_state st, int status, const char *reason, uint32_t retry_ms);
    /* Authenticated (or, without authentication, Hello received): requests may go. */
    void (*ready)(void *ctx);
    /* A frame after ready. Return true to keep it (then free it with
     * parley__frame__free_unpacked), false to let conn free it. */
    bool (*frame)(void *ctx, Parley__Frame *f);
    /* The session ended: every request in flight is void. */
    void (*down)(void *ctx);
    /* Signs msg with the identity key (XEdDSA). 0 or -1. */
    int (*sign)(void *ctx, const uint8_t *msg, size_t len, uint8_t sig[64]);
} conn_callbacks;

typedef struct {
    char url[PARLEY_URL_MAX + 1];
    bool authenticate;
    uint8_t account[PARLEY_ID_LEN];
    uint32_t device;
    bool receive;       /* the device's receiving connection */
    bool reconnect;     /* false: one attempt, then CONN_OFF */
} conn_config;

typedef struct conn {
    conn_config cfg;
    const conn_callbacks *cb;
    void *ctx;
    ws_client ws;
    conn_phase phase;
    uint64_t deadline;        /* WAIT: retry; OPENING..AUTH: give up; CLOSING: hang up */
    uint64_t next_ping;
    uint64_t last_rx;         /* any frame from the server */
    uint64_t ready_since;
    uint32_t heartbeat_ms;
    uint32_t max_frame;
    uint64_t next_rid;
    uint64_t auth_rid;
    unsigned attempt;         /* failed attempts in a row, for the backoff */
    int fail_status;          /* set by conn itself before tearing down */
    bool fail_fatal;
    int last_status;          /* why the last session ended */
    char last_reason[320];
} conn;

void conn_init(conn *c, const conn_config *cfg, const conn_callbacks *cb, void *ctx);

/* Starts the first attempt now. */
void conn_start(conn *c);

/* Closes politely (close 1000) and stops trying; CONN_OFF once the server confirmed or
 * CONN_CLOSE_TIMEOUT_MS passed. */
void conn_stop(conn *c);

/* Drops everything at once (no callbacks). */
void conn_reset(conn *c);

int conn_fd(const conn *c);
short conn_events(const conn *c);

/* Milliseconds until conn_process must run (-1: no deadline). */
int conn_timeout(const conn *c, uint64_t now);

/* Socket work for revents, then timers. */
void conn_process(conn *c, short revents, uint64_t now);

/* Packs and sends f with a fresh request id, which it returns; 0 if the connection is
 * not ready or f is larger than the server accepts (check conn_fits first). */
uint64_t conn_send(conn *c, Parley__Frame *f);

/* Sends a frame that needs no answer (DeliverAck): request_id 0. Returns 0 or -1. */
int conn_push(conn *c, Parley__Frame *f);

/* The server keeps this much of max_frame_bytes for the envelope around a body. */
#define CONN_BODY_OVERHEAD 1024

/* True if f packs within the server's max_frame_bytes. */
bool conn_fits(const conn *c, const Parley__Frame *f);

/* Ends the session because of a client-side problem; it reconnects as usual unless fatal. */
void conn_fail(conn *c, int status, bool fatal, const char *reason);

#endif
