/* ws.h - the WebSocket frame codec (RFC 6455), written for a small idle footprint.
 *
 * A connection's reader holds nothing while idle: frames are parsed straight out of
 * the caller's (per-thread) read buffer, and only an incomplete frame at the end of a
 * read, or the fragments of an unfinished message, are copied to the heap, and freed
 * as soon as they complete. Limits are checked from the header, before any payload
 * is buffered. The same reader serves servers (client frames must be masked) and
 * clients (server frames must not be). */
#ifndef PARLEY_NET_WS_H
#define PARLEY_NET_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WS_MAX_HEADER 14
#define WS_MAX_CONTROL_PAYLOAD 125

enum {
    WS_OP_CONTINUATION = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close status codes this codec produces or names. */
enum {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL_ERROR = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005,       /* never sent: "the close frame had no code" */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL_ERROR = 1011,
};

typedef struct {
    size_t max_frame;   /* payload bytes in one frame */
    size_t max_message; /* payload bytes in one message, all fragments together */
} ws_limits;

/* What the reader reports. Payloads are unmasked and valid only during the call.
 * A close frame arrives as control(WS_OP_CLOSE) after its code and reason were checked.
 * A handler returns false to stop the reader (e.g. the connection is being closed). */
typedef struct {
    bool (*message)(void *ctx, int opcode, uint8_t *data, size_t len);
    bool (*control)(void *ctx, int opcode, const uint8_t *data, size_t len);
} ws_handlers;

typedef struct {
    uint8_t *partial;        /* an incomplete frame, NULL when there is none */
    uint32_t partial_len;
    uint32_t partial_cap;
    uint8_t *message;        /* fragments of an unfinished data message, or NULL */
    uint32_t message_len;
    uint8_t message_opcode;  /* WS_OP_TEXT/BINARY while a fragmented message is open */
    bool expect_masked;      /* true on the server side */
    bool failed;
} ws_reader;

/* A reader for a server (expect_masked) or a client connection. */
void ws_reader_init(ws_reader *r, bool expect_masked);

/* Frees any partial frame or message. */
void ws_reader_free(ws_reader *r);

/* Consumes len bytes (unmasked in place, hence not const). Returns 0, or the close
 * code to send when the peer broke the protocol (1002, 1007, 1009) or memory ran out
 * (1011); after that the reader refuses more input. Returns 0 early, without error,
 * when a handler asked to stop. */
int ws_reader_feed(ws_reader *r, uint8_t *data, size_t len, const ws_limits *lim,
                   const ws_handlers *h, void *ctx);

/* Writes a frame header; mask is NULL for server frames. Returns its length. */
size_t ws_frame_header(uint8_t out[WS_MAX_HEADER], bool fin, int opcode, uint64_t len,
                       const uint8_t mask[4]);

/* XORs data with the mask, starting at mask position offset % 4. */
void ws_mask(uint8_t *data, size_t len, const uint8_t mask[4], size_t offset);

/* A close frame's payload: the code big-endian, then the reason cut to fit 125 bytes. */
size_t ws_close_payload(uint8_t out[WS_MAX_CONTROL_PAYLOAD], uint16_t code, const char *reason);

/* True for a status code a peer may send in a close frame. */
bool ws_close_code_valid(uint16_t code);

#endif
