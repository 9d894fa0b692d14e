/* upgrade.c - reads an upgrade request's head with http-parser (upgrade.h). */
#include "upgrade.h"

#include <http_parser.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

enum { FIELD_UPGRADE, FIELD_CONNECTION, FIELD_VERSION, FIELD_KEY, NFIELDS };

static const size_t field_cap[NFIELDS] = {128, 128, 16, 64};

typedef struct {
    char name[64];
    size_t name_len;
    int field;          /* which field the current header fills, or -1 */
    bool last_was_value;
    char values[NFIELDS][128];
    size_t lens[NFIELDS];
    bool overflow;
} request;

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
        if (q->field >= 0 && q->lens[q->field] && q->lens[q->field] + 1 < field_cap[q->field])
            q->values[q->field][q->lens[q->field]++] = ','; /* a repeated header joins as a list */
    }
    if (q->field < 0)
        return 0;
    size_t *l = &q->lens[q->field];
    if (*l + len >= field_cap[q->field]) {
        q->overflow = true;
        return 0;
    }
    memcpy(q->values[q->field] + *l, at, len);
    *l += len;
    q->values[q->field][*l] = 0;
    return 0;
}

int upgrade_answer(const char *head, size_t len, char out[WS_HANDSHAKE_MAX_RESPONSE], size_t *out_len)
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
        *out_len = ws_handshake_error(out, 400);
        return 400;
    }
    ws_upgrade_fields f = {.get = p.method == HTTP_GET, .http_major = p.http_major, .http_minor = p.http_minor,
                           .upgrade = q.values[FIELD_UPGRADE], .connection = q.values[FIELD_CONNECTION],
                           .version = q.values[FIELD_VERSION], .key = q.values[FIELD_KEY]};
    return ws_handshake_answer_fields(&f, out, out_len);
}
