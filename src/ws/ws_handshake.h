/* ws_handshake.h - both ends of the WebSocket opening handshake (RFC 6455 section 4),
 * without an HTTP parser: the server's own HTTP code (src/server/net/upgrade.c) reads
 * the request head and hands the fields it found to ws_handshake_answer_fields; the
 * client builds its request here and checks the 101 it gets back here.
 *
 * A head is kept only until it is complete, and never past WS_HANDSHAKE_MAX_HEAD. */
#ifndef PARLEY_WS_HANDSHAKE_H
#define PARLEY_WS_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>

#define WS_HANDSHAKE_MAX_HEAD 8192
#define WS_HANDSHAKE_MAX_RESPONSE 512
#define WS_KEY_LEN 24          /* base64 of 16 bytes */
#define WS_ACCEPT_LEN 28       /* base64 of a SHA-1 digest */

/* Length of the head in buf (through the blank line), or 0 if it is not all there. */
size_t ws_handshake_head_len(const char *buf, size_t len);

/* True when a comma-separated header value holds token (case-insensitive, spaces
 * ignored), as in "Connection: keep-alive, Upgrade". */
bool ws_handshake_has_token(const char *list, const char *token);

/* Sec-WebSocket-Accept for a client key: base64(SHA-1(key || GUID)), NUL-terminated. */
void ws_handshake_accept_key(const char *key, size_t key_len, char out[WS_ACCEPT_LEN + 1]);

/* ---- server end -------------------------------------------------------------------- */

/* What the server's HTTP parser found in a complete request head ("" when a header is
 * absent; a repeated header joined with commas). */
typedef struct {
    bool get;                    /* the method is GET */
    int http_major, http_minor;
    const char *upgrade, *connection, *version, *key;
} ws_upgrade_fields;

/* Answers a request. Writes the response into out (NUL-terminated, *out_len bytes) and
 * returns 101 when the upgrade is accepted, else the HTTP error status it wrote: 400 (not
 * a WebSocket request), 405 (not GET), 426 (Sec-WebSocket-Version is not 13). */
int ws_handshake_answer_fields(const ws_upgrade_fields *q, char out[WS_HANDSHAKE_MAX_RESPONSE],
                               size_t *out_len);

/* An error response with a short text body: 400 for a head that does not parse, 431
 * for one that grew past WS_HANDSHAKE_MAX_HEAD. */
size_t ws_handshake_error(char out[WS_HANDSHAKE_MAX_RESPONSE], int status);

/* ---- client end -------------------------------------------------------------------- */

/* A fresh random Sec-WebSocket-Key. */
void ws_handshake_new_key(char key[WS_KEY_LEN + 1]);

/* The upgrade request for path on host (the Host header's value, port included);
 * user_agent may be NULL. Returns its length, or 0 if it does not fit in cap. */
size_t ws_handshake_request(char *out, size_t cap, const char *host, const char *path, const char *key,
                            const char *user_agent);

/* Checks a complete response head against the key we sent. Returns 101 when the
 * connection is open; otherwise the status the server answered (0 if the head has no
 * HTTP/1.1 status line), or -1 for a 101 with wrong Upgrade, Connection or
 * Sec-WebSocket-Accept headers, with *why saying which. */
int ws_handshake_check_response(const char *head, size_t len, const char *key, const char **why);

#endif
