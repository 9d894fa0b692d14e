/* ws_client.h - one client WebSocket (RFC 6455) over a non-blocking TCP socket:
 * connect, the HTTP upgrade (Sec-WebSocket-Key/Accept checked), masked binary
 * messages out, the project's frame codec (src/server/net/ws.h) for frames in.
 * No threads and no timers: the owner polls wsc_fd()/wsc_events() and calls
 * wsc_process(); deadlines (connect, close) are the owner's. */
#ifndef PARLEY_CLIENT_WS_CLIENT_H
#define PARLEY_CLIENT_WS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ws.h"
#include "ws_handshake.h"

#define WSC_HOST_MAX 255
#define WSC_PATH_MAX 255
#define WSC_MAX_MESSAGE (8u << 20)   /* largest message accepted from the server */
#define WSC_FIRST_MAX (64u << 10)    /* ... until it announced its own limit (Hello) */
#define WSC_MAX_QUEUED (16u << 20)   /* bytes waiting to be written before we give up */
#define WSC_URL_MAX 255
#define WSC_REASON_MAX 512           /* a failure's description */

/* Close codes of our own, reported to the owner (never sent on the wire). */
enum {
    WSC_ABNORMAL = 1006,   /* the connection ended without a close frame */
};

typedef enum {
    WSC_IDLE = 0,     /* no socket */
    WSC_CONNECTING,   /* TCP connect under way */
    WSC_HANDSHAKE,    /* upgrade request sent, waiting for 101 */
    WSC_OPEN,
    WSC_CLOSING,      /* we sent a close frame; waiting for the server's */
} wsc_state;

typedef struct {
    /* The upgrade succeeded. */
    void (*open)(void *ctx);
    /* One binary message; data is writable and valid during the call only. */
    void (*message)(void *ctx, uint8_t *data, size_t len);
    /* The connection is gone (the socket is closed when this runs): code is the
     * server's close code, or WSC_ABNORMAL with reason saying what broke. fatal: the
     * server answered but is not a WebSocket server we can use; retrying won't help. */
    void (*closed)(void *ctx, int code, const char *reason, bool fatal);
} wsc_handlers;

typedef struct ws_client {
    wsc_state state;
    int fd;
    const wsc_handlers *h;
    void *ctx;
    char url[WSC_URL_MAX + 1];
    char host[WSC_HOST_MAX + 1];
    char port[8];
    char path[WSC_PATH_MAX + 1];
    struct addrinfo *addrs;     /* resolved addresses; cur is the one being tried */
    struct addrinfo *cur;
    int connect_errno;          /* the first address's failure, for the message */
    char key[WS_KEY_LEN + 1];   /* Sec-WebSocket-Key we sent */
    char *head;                 /* the response head so far (handshake only) */
    size_t head_len;
    ws_reader reader;
    size_t max_message;         /* the largest message accepted now (wsc_set_max_message) */
    uint8_t *rbuf;
    uint8_t *out;               /* bytes to write: out[out_off .. out_len) */
    size_t out_off, out_len, out_cap;
    int write_errno;            /* a write failed inside wsc_send; reported by wsc_process */
    bool busy;                  /* inside wsc_process: teardown waits until it returns */
    bool fail_pending;
    int fail_code;
    bool fail_fatal;
    char fail_reason[WSC_REASON_MAX];
} ws_client;

/* Splits ws://HOST[:PORT][/PATH] (IPv6 hosts in brackets). Returns 0, or -1 with err. */
int wsc_parse_url(const char *url, char host[WSC_HOST_MAX + 1], char port[8],
                  char path[WSC_PATH_MAX + 1], char *err, size_t errlen);

void wsc_init(ws_client *c, const wsc_handlers *h, void *ctx);

/* Lowers or raises the largest message accepted (at most WSC_MAX_MESSAGE); each new
 * connection starts at WSC_FIRST_MAX, so a server cannot make us buffer more than it
 * announced. */
void wsc_set_max_message(ws_client *c, size_t max);

/* Starts connecting (resolving the host first, which blocks briefly). Failures are
 * reported through closed(), possibly before this returns. Returns -1 if the client
 * is not idle. */
int wsc_open(ws_client *c, const char *url);

/* The socket (-1 when idle) and the poll events it waits for. */
int wsc_fd(const ws_client *c);
short wsc_events(const ws_client *c);

/* Does the I/O poll reported (revents 0: just retry pending work). */
void wsc_process(ws_client *c, short revents);

/* Queues one binary message (masked). Returns -1 if not open or too much is queued. */
int wsc_send(ws_client *c, const uint8_t *data, size_t len);

/* Bytes queued and not yet written. */
size_t wsc_queued(const ws_client *c);

/* Starts the closing handshake (a close frame after whatever is queued). */
void wsc_close(ws_client *c, uint16_t code, const char *reason);

/* Ends the connection now; closed() runs with code and reason (now, or at the end of
 * the current wsc_process call when called from inside a handler). */
void wsc_fail(ws_client *c, int code, const char *reason, bool fatal);

/* Drops the socket without a callback, and frees buffers. */
void wsc_reset(ws_client *c);

#endif
