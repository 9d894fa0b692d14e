/* ws.c - RFC 6455 frame codec: header parsing, reassembly, control frames, limits. */
#include "ws.h"

#include <stdlib.h>
#include <string.h>

#include "utf8.h"

typedef struct {
    bool fin;
    int opcode;
    bool masked;
    uint8_t mask[4];
    uint64_t payload_len;
    size_t header_len;
} frame_header;

void ws_reader_init(ws_reader *r, bool expect_masked)
{
    memset(r, 0, sizeof *r);
    r->expect_masked = expect_masked;
}

void ws_reader_free(ws_reader *r)
{
    free(r->partial);
    free(r->message);
    r->partial = r->message = NULL;
    r->partial_len = r->partial_cap = r->message_len = 0;
    r->message_opcode = 0;
}

bool ws_close_code_valid(uint16_t code)
{
    if (code >= 3000 && code <= 4999)
        return true; /* registered and private use */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014);
}

/* Parses a header from buf. Returns 1 when complete, 0 when more bytes are needed,
 * or minus a close code. */
static int parse_header(const uint8_t *buf, size_t len, const ws_reader *r,
                        const ws_limits *lim, frame_header *h)
{
    if (len < 2)
        return 0;
    h->fin = (buf[0] & 0x80) != 0;
    h->opcode = buf[0] & 0x0f;
    h->masked = (buf[1] & 0x80) != 0;
    if (buf[0] & 0x70) /* no extension was negotiated, so RSV bits must be 0 */
        return -WS_CLOSE_PROTOCOL_ERROR;
    if ((h->opcode > WS_OP_BINARY && h->opcode < WS_OP_CLOSE) || h->opcode > WS_OP_PONG)
        return -WS_CLOSE_PROTOCOL_ERROR;
    if (h->masked != r->expect_masked)
        return -WS_CLOSE_PROTOCOL_ERROR;
    uint64_t n = buf[1] & 0x7f;
    size_t at = 2;
    if (n == 126) {
        if (len < 4)
            return 0;
        n = (uint64_t)buf[2] << 8 | buf[3];
        at = 4;
    } else if (n == 127) {
        if (len < 10)
            return 0;
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | buf[2 + i];
        if (n >> 63)
            return -WS_CLOSE_PROTOCOL_ERROR;
        at = 10;
    }
    if ((h->opcode & 0x8) && (!h->fin || n > WS_MAX_CONTROL_PAYLOAD))
        return -WS_CLOSE_PROTOCOL_ERROR;
    if (n > lim->max_frame)
        return -WS_CLOSE_TOO_BIG;
    if (h->masked) {
        if (len < at + 4)
            return 0;
        memcpy(h->mask, buf + at, 4);
        at += 4;
    }
    h->payload_len = n;
    h->header_len = at;
    return 1;
}

static int check_close_payload(const uint8_t *p, size_t len)
{
    if (len == 0)
        return 0;
    if (len == 1)
        return WS_CLOSE_PROTOCOL_ERROR;
    if (!ws_close_code_valid((uint16_t)(p[0] << 8 | p[1])))
        return WS_CLOSE_PROTOCOL_ERROR;
    return utf8_valid(p + 2, len - 2) ? 0 : WS_CLOSE_INVALID_DATA;
}

/* Acts on one complete, unmasked frame. Returns 0, a close code, or -1 to stop. */
static int handle_frame(ws_reader *r, const frame_header *h, uint8_t *payload,
                        const ws_limits *lim, const ws_handlers *hd, void *ctx)
{
    size_t len = (size_t)h->payload_len;
    if (h->opcode & 0x8) {
        if (h->opcode == WS_OP_CLOSE) {
            int rc = check_close_payload(payload, len);
            if (rc)
                return rc;
        }
        return hd->control(ctx, h->opcode, payload, len) ? 0 : -1;
    }
    if (h->opcode == WS_OP_CONTINUATION) {
        if (!r->message_opcode)
            return WS_CLOSE_PROTOCOL_ERROR;
        if (len > lim->max_message - r->message_len)
            return WS_CLOSE_TOO_BIG;
        if (len) {
            uint8_t *grown = realloc(r->message, r->message_len + len);
            if (!grown)
                return WS_CLOSE_INTERNAL_ERROR;
            memcpy(grown + r->message_len, payload, len);
            r->message = grown;
            r->message_len += (uint32_t)len;
        }
        if (!h->fin)
            return 0;
        int opcode = r->message_opcode;
        uint8_t *msg = r->message;
        size_t msg_len = r->message_len;
        r->message = NULL;
        r->message_len = 0;
        r->message_opcode = 0;
        int rc = 0;
        if (opcode == WS_OP_TEXT && !utf8_valid(msg, msg_len))
            rc = WS_CLOSE_INVALID_DATA;
        else if (!hd->message(ctx, opcode, msg ? msg : (uint8_t *)"", msg_len))
            rc = -1;
        free(msg);
        return rc;
    }
    if (r->message_opcode) /* a new message before the last one finished */
        return WS_CLOSE_PROTOCOL_ERROR;
    if (len > lim->max_message)
        return WS_CLOSE_TOO_BIG;
    if (!h->fin) {
        r->message = len ? malloc(len) : NULL;
        if (len && !r->message)
            return WS_CLOSE_INTERNAL_ERROR;
        if (len)
            memcpy(r->message, payload, len);
        r->message_len = (uint32_t)len;
        r->message_opcode = (uint8_t)h->opcode;
        return 0;
    }
    if (h->opcode == WS_OP_TEXT && !utf8_valid(payload, len))
        return WS_CLOSE_INVALID_DATA;
    return hd->message(ctx, h->opcode, payload, len) ? 0 : -1;
}

/* Keeps bytes of an incomplete frame: the header so far, or the whole frame's room. */
static int keep_partial(ws_reader *r, const uint8_t *data, size_t len, size_t frame_len)
{
    size_t cap = frame_len ? frame_len : WS_MAX_HEADER;
    if (r->partial_cap < cap) {
        uint8_t *grown = realloc(r->partial, cap);
        if (!grown)
            return WS_CLOSE_INTERNAL_ERROR;
        r->partial = grown;
        r->partial_cap = (uint32_t)cap;
    }
    memcpy(r->partial + r->partial_len, data, len);
    r->partial_len += (uint32_t)len;
    return 0;
}

static void drop_partial(ws_reader *r)
{
    free(r->partial);
    r->partial = NULL;
    r->partial_len = r->partial_cap = 0;
}

static int fail(ws_reader *r, int code)
{
    r->failed = true;
    ws_reader_free(r);
    return code;
}

int ws_reader_feed(ws_reader *r, uint8_t *data, size_t len, const ws_limits *lim,
                   const ws_handlers *hd, void *ctx)
{
    if (r->failed)
        return WS_CLOSE_PROTOCOL_ERROR;
    frame_header h;
    int rc;
    /* Finish a frame left over from the last read first. */
    while (r->partial) {
        rc = parse_header(r->partial, r->partial_len, r, lim, &h);
        if (rc < 0)
            return fail(r, -rc);
        if (rc == 0) { /* header still incomplete: take one more byte and look again */
            if (!len)
                return 0;
            if ((rc = keep_partial(r, data, 1, 0)))
                return fail(r, rc);
            data++, len--;
            continue;
        }
        size_t frame_len = h.header_len + (size_t)h.payload_len;
        size_t take = frame_len - r->partial_len;
        if (take > len)
            take = len;
        if ((rc = keep_partial(r, data, take, frame_len)))
            return fail(r, rc);
        data += take, len -= take;
        if (r->partial_len < frame_len)
            return 0;
        uint8_t *payload = r->partial + h.header_len;
        if (h.masked)
            ws_mask(payload, (size_t)h.payload_len, h.mask, 0);
        rc = handle_frame(r, &h, payload, lim, hd, ctx);
        drop_partial(r);
        if (rc < 0)
            return 0;
        if (rc)
            return fail(r, rc);
    }
    /* Whole frames straight from the caller's buffer. */
    while (len) {
        rc = parse_header(data, len, r, lim, &h);
        if (rc < 0)
            return fail(r, -rc);
        size_t frame_len = rc ? h.header_len + (size_t)h.payload_len : 0;
        if (rc == 0 || frame_len > len) {
            if ((rc = keep_partial(r, data, len, frame_len)))
                return fail(r, rc);
            return 0;
        }
        uint8_t *payload = data + h.header_len;
        if (h.masked)
            ws_mask(payload, (size_t)h.payload_len, h.mask, 0);
        rc = handle_frame(r, &h, payload, lim, hd, ctx);
        if (rc < 0)
            return 0;
        if (rc)
            return fail(r, rc);
        data += frame_len, len -= frame_len;
    }
    return 0;
}

size_t ws_frame_header(uint8_t out[WS_MAX_HEADER], bool fin, int opcode, uint64_t len,
                       const uint8_t mask[4])
{
    size_t at = 2;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
    if (len < 126) {
        out[1] = (uint8_t)len;
    } else if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        at = 4;
    } else {
        out[1] = 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        at = 10;
    }
    if (mask) {
        out[1] |= 0x80;
        memcpy(out + at, mask, 4);
        at += 4;
    }
    return at;
}

void ws_mask(uint8_t *data, size_t len, const uint8_t mask[4], size_t offset)
{
    for (size_t i = 0; i < len; i++)
        data[i] ^= mask[(i + offset) & 3];
}

size_t ws_close_payload(uint8_t out[WS_MAX_CONTROL_PAYLOAD], uint16_t code, const char *reason)
{
    size_t n = reason ? strlen(reason) : 0;
    if (n > WS_MAX_CONTROL_PAYLOAD - 2)
        n = WS_MAX_CONTROL_PAYLOAD - 2;
    while (n > 0 && !utf8_valid((const uint8_t *)reason, n)) /* never cut a character in two */
        n--;
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    memcpy(out + 2, reason, n);
    return n + 2;
}
