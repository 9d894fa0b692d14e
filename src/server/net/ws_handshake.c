/* ws_handshake.c - WebSocket opening handshake, server side. */
#include "ws_handshake.h"

#include <http_parser.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

typedef struct {
    char name[64];
    size_t name_len;
    int field;          /* which of the fields below the current header fills, or -1 */
    bool last_was_value;
    char upgrade[128], connection[128], version[16], key[64];
    size_t lens[4];
    bool overflow;
} request;

enum { FIELD_UPGRADE, FIELD_CONNECTION, FIELD_VERSION, FIELD_KEY };

static char *field_buf(request *q, int f)
{
    switch (f) {
    case FIELD_UPGRADE: return q->upgrade;
    case FIELD_CONNECTION: return q->connection;
    case FIELD_VERSION: return q->version;
    default: return q->key;
    }
}

static size_t field_cap(int f)
{
    return f == FIELD_UPGRADE || f == FIELD_CONNECTION ? 128 : f == FIELD_VERSION ? 16 : 64;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    request *q = p->data;
    if (q->last_was_value) {
        q->name_len = 0;
        q->last_was_value = false;
    }
    size_t room = sizeof q->name - 1 - q->name_len;
    size_t n = len < room ? len : room;
    memcpy(q->name + q->name_len, at, n);
    q->name_len += n;
    q->name[q->name_len] = 0;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    request *q = p->data;
    if (!q->last_was_value) {
        q->last_was_value = true;
        q->field = !strcasecmp(q->name, "Upgrade")                 ? FIELD_UPGRADE
                   : !strcasecmp(q->name, "Connection")            ? FIELD_CONNECTION
                   : !strcasecmp(q->name, "Sec-WebSocket-Version") ? FIELD_VERSION
                   : !strcasecmp(q->name, "Sec-WebSocket-Key")     ? FIELD_KEY
                                                                   : -1;
        if (q->field >= 0 && q->lens[q->field]) { /* a repeated header joins as a list */
            char *b = field_buf(q, q->field);
            if (q->lens[q->field] + 1 < field_cap(q->field))
                b[q->lens[q->field]++] = ',';
        }
    }
    if (q->field < 0)
        return 0;
    char *b = field_buf(q, q->field);
    size_t *l = &q->lens[q->field];
    if (*l + len >= field_cap(q->field)) {
        q->overflow = true;
        return 0;
    }
    memcpy(b + *l, at, len);
    *l += len;
    b[*l] = 0;
    return 0;
}

bool ws_handshake_has_token(const char *list, const char *token)
{
    size_t tlen = strlen(token);
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if ((size_t)(end - start) == tlen && strncasecmp(start, token, tlen) == 0)
            return true;
    }
    return false;
}

static const char *trimmed(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = 0;
    return s;
}

void ws_handshake_accept_key(const char *key, size_t key_len, char out[29])
{
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, key, key_len) != 1 ||
        EVP_DigestUpdate(ctx, ws_guid, sizeof ws_guid - 1) != 1 ||
        EVP_DigestFinal_ex(ctx, digest, &dlen) != 1 || dlen != 20)
        memset(digest, 0, sizeof digest); /* cannot happen with a working libcrypto */
    EVP_MD_CTX_free(ctx);
    sodium_bin2base64(out, 29, digest, 20, sodium_base64_VARIANT_ORIGINAL);
}

static size_t error_response(char out[WS_HANDSHAKE_MAX_RESPONSE], int status, const char *reason,
                             const char *extra)
{
    int n = snprintf(out, WS_HANDSHAKE_MAX_RESPONSE,
                     "HTTP/1.1 %d %s\r\n%sContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s\n",
                     status, reason, extra, strlen(reason) + 1, reason);
    return n > 0 && n < WS_HANDSHAKE_MAX_RESPONSE ? (size_t)n : 0;
}

size_t ws_handshake_too_large(char out[WS_HANDSHAKE_MAX_RESPONSE])
{
    return error_response(out, 431, "Request Header Fields Too Large", "");
}

size_t ws_handshake_head_len(const char *buf, size_t len)
{
    for (size_t i = 3; i < len; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r')
            return i + 1;
    return 0;
}

int ws_handshake_answer(const char *head, size_t len, char out[WS_HANDSHAKE_MAX_RESPONSE],
                        size_t *out_len)
{
    request q;
    memset(&q, 0, sizeof q);
    q.field = -1;
    http_parser p;
    http_parser_settings s;
    http_parser_init(&p, HTTP_REQUEST);
    http_parser_settings_init(&s);
    s.on_header_field = on_header_field;
    s.on_header_value = on_header_value;
    p.data = &q;
    size_t parsed = http_parser_execute(&p, &s, head, len);
    bool complete = HTTP_PARSER_ERRNO(&p) == HPE_OK && (p.upgrade || parsed == len);
    if (!complete || q.overflow) {
        *out_len = error_response(out, 400, "Bad Request", "");
        return 400;
    }
    if (p.method != HTTP_GET) {
        *out_len = error_response(out, 405, "Method Not Allowed", "Allow: GET\r\n");
        return 405;
    }
    uint8_t raw_key[32];
    size_t raw_len = 0;
    const char *key = trimmed(q.key);
    if (p.http_major != 1 || p.http_minor < 1 || !ws_handshake_has_token(q.upgrade, "websocket") ||
        !ws_handshake_has_token(q.connection, "upgrade") ||
        sodium_base642bin(raw_key, sizeof raw_key, key, strlen(key), NULL, &raw_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        raw_len != 16 || strlen(key) != 24) {
        *out_len = error_response(out, 400, "Bad Request", "");
        return 400;
    }
    if (strcmp(trimmed(q.version), "13") != 0) {
        *out_len = error_response(out, 426, "Upgrade Required", "Sec-WebSocket-Version: 13\r\n");
        return 426;
    }
    char accept[29];
    ws_handshake_accept_key(key, strlen(key), accept);
    int n = snprintf(out, WS_HANDSHAKE_MAX_RESPONSE,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    *out_len = (size_t)n;
    return 101;
}
