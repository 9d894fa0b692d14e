/* ws_handshake.h - the HTTP/1.1 upgrade that opens a WebSocket (RFC 6455 section 4).
 * The request head is parsed with http-parser once it is complete; the connection
 * keeps the head only until then (at most WS_HANDSHAKE_MAX_HEAD bytes). */
#ifndef PARLEY_NET_WS_HANDSHAKE_H
#define PARLEY_NET_WS_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>

#define WS_HANDSHAKE_MAX_HEAD 8192
#define WS_HANDSHAKE_MAX_RESPONSE 512

/* Length of the request head in buf (through the blank line), or 0 if not there yet. */
size_t ws_handshake_head_len(const char *buf, size_t len);

/* Answers a complete request head. Writes the response into out (NUL-terminated,
 * *out_len bytes) and returns 101 when the upgrade is accepted, else the HTTP error
 * status it wrote: 400 (malformed or not a WebSocket request), 405 (not GET),
 * 426 (Sec-WebSocket-Version is not 13). */
int ws_handshake_answer(const char *head, size_t len, char out[WS_HANDSHAKE_MAX_RESPONSE],
                        size_t *out_len);

/* The response for a head that grew past WS_HANDSHAKE_MAX_HEAD (431). */
size_t ws_handshake_too_large(char out[WS_HANDSHAKE_MAX_RESPONSE]);

/* True when a comma-separated header value holds token (case-insensitive, spaces
 * ignored), as in "Connection: keep-alive, Upgrade". Clients check responses with it. */
bool ws_handshake_has_token(const char *list, const char *token);

/* Sec-WebSocket-Accept for a client key: base64(SHA-1(key || GUID)); out gets 29 bytes. */
void ws_handshake_accept_key(const char *key, size_t key_len, char out[29]);

#endif
