/* upgrade.h - the server's answer to a WebSocket upgrade request: http-parser reads the
 * request head, src/ws/ws_handshake.c decides and writes the response. */
#ifndef PARLEY_NET_UPGRADE_H
#define PARLEY_NET_UPGRADE_H

#include <stddef.h>

#include "ws_handshake.h"

/* Answers a complete request head (ws_handshake_head_len bytes). Writes the response
 * into out (NUL-terminated, *out_len bytes) and returns 101 when the upgrade is accepted,
 * else the HTTP error status it wrote: 400 (malformed or not a WebSocket request), 405
 * (not GET), 426 (Sec-WebSocket-Version is not 13). */
int upgrade_answer(const char *head, size_t len, char out[WS_HANDSHAKE_MAX_RESPONSE], size_t *out_len);

#endif
