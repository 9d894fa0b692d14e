/* ws_handshake_client.c - the client end of the opening handshake (ws_handshake.h). */
#include "ws_handshake.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

void ws_handshake_new_key(char key[WS_KEY_LEN + 1])
{
    uint8_t raw[16];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(key, WS_KEY_LEN + 1, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
}

size_t ws_handshake_request(char *out, size_t cap, const char *host, const char *path, const char *key,
                            const char *user_agent)
{
    int n = snprintf(out, cap,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     path, host, key, user_agent ? "User-Agent: " : "", user_agent ? user_agent : "",
                     user_agent ? "\r\n" : "");
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* The value of header name in the head's lines (after the status line), trimmed and cut
 * to cap; "" if absent. */
static void header_value(const char *head, size_t len, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    const char *end = head + len, *line = memchr(head, '\n', len);
    out[0] = 0;
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        if ((size_t)(eol - line) > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1, *e = eol;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
                e--;
            size_t n = (size_t)(e - v) < cap - 1 ? (size_t)(e - v) : cap - 1;
            memcpy(out, v, n);
            out[n] = 0;
            return;
        }
        line = eol;
    }
}

int ws_handshake_check_response(const char *head, size_t len, const char *key, const char **why)
{
    *why = NULL;
    int status = 0;
    if (len >= 12 && memcmp(head, "HTTP/1.1 ", 9) == 0)
        for (size_t i = 9; i < 12 && head[i] >= '0' && head[i] <= '9'; i++)
            status = status * 10 + (head[i] - '0');
    if (status < 100)
        return 0;
    if (status != 101)
        return status;
    char upgrade[128], connection[128], accept[64], want[WS_ACCEPT_LEN + 1];
    header_value(head, len, "Upgrade", upgrade, sizeof upgrade);
    header_value(head, len, "Connection", connection, sizeof connection);
    header_value(head, len, "Sec-WebSocket-Accept", accept, sizeof accept);
    ws_handshake_accept_key(key, strlen(key), want);
    if (!ws_handshake_has_token(upgrade, "websocket") || !ws_handshake_has_token(connection, "upgrade"))
        *why = "Upgrade/Connection headers missing";
    else if (strcmp(accept, want) != 0)
        *why = "Sec-WebSocket-Accept does not match our key";
    return *why ? -1 : 101;
}
