/* ws_handshake_server.c - the server end of the opening handshake (ws_handshake.h). */
#include "ws_handshake.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static size_t error_response(char out[WS_HANDSHAKE_MAX_RESPONSE], int status, const char *reason,
                             const char *extra)
{
    int n = snprintf(out, WS_HANDSHAKE_MAX_RESPONSE,
                     "HTTP/1.1 %d %s\r\n%sContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s\n",
                     status, reason, extra, strlen(reason) + 1, reason);
    return n > 0 && n < WS_HANDSHAKE_MAX_RESPONSE ? (size_t)n : 0;
}

size_t ws_handshake_error(char out[WS_HANDSHAKE_MAX_RESPONSE], int status)
{
    return status == 431 ? error_response(out, 431, "Request Header Fields Too Large", "")
                         : error_response(out, 400, "Bad Request", "");
}

/* A header value without the spaces around it, in buf. */
static const char *trimmed(const char *s, char *buf, size_t cap)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n >= cap)
        n = cap - 1;
    memcpy(buf, s, n);
    buf[n] = 0;
    return buf;
}

int ws_handshake_answer_fields(const ws_upgrade_fields *q, char out[WS_HANDSHAKE_MAX_RESPONSE],
                               size_t *out_len)
{
    if (!q->get) {
        *out_len = error_response(out, 405, "Method Not Allowed", "Allow: GET\r\n");
        return 405;
    }
    char key[64], version[16];
    uint8_t raw_key[32];
    size_t raw_len = 0;
    trimmed(q->key, key, sizeof key);
    if (q->http_major != 1 || q->http_minor < 1 || !ws_handshake_has_token(q->upgrade, "websocket") ||
        !ws_handshake_has_token(q->connection, "upgrade") || strlen(key) != WS_KEY_LEN ||
        sodium_base642bin(raw_key, sizeof raw_key, key, strlen(key), NULL, &raw_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        raw_len != 16) {
        *out_len = error_response(out, 400, "Bad Request", "");
        return 400;
    }
    if (strcmp(trimmed(q->version, version, sizeof version), "13") != 0) {
        *out_len = error_response(out, 426, "Upgrade Required", "Sec-WebSocket-Version: 13\r\n");
        return 426;
    }
    char accept[WS_ACCEPT_LEN + 1];
    ws_handshake_accept_key(key, strlen(key), accept);
    int n = snprintf(out, WS_HANDSHAKE_MAX_RESPONSE,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    *out_len = (size_t)n;
    return 101;
}

