/* test_ws.c - the WebSocket codec and handshake: frames of every length class,
 * any split of the byte stream, fragmentation with control frames between, every
 * protocol error with its close code, limits checked from the header, and the
 * opening handshake (RFC 6455's own example key). */
#include "check.h"
#include "upgrade.h"
#include "ws.h"

typedef struct {
    int events;
    int opcodes[64];
    size_t lens[64];
    uint8_t data[1 << 16];
    size_t data_len;
    int stop_after; /* handler returns false at this event (0: never) */
} sink;

static bool record(sink *s, int opcode, const uint8_t *data, size_t len)
{
    if (s->events < 64) {
        s->opcodes[s->events] = opcode;
        s->lens[s->events] = len;
    }
    s->events++;
    if (s->data_len + len <= sizeof s->data) {
        memcpy(s->data + s->data_len, data, len);
        s->data_len += len;
    }
    return s->events != s->stop_after;
}

static bool on_message(void *ctx, int opcode, uint8_t *data, size_t len)
{
    return record(ctx, opcode, data, len);
}

static bool on_control(void *ctx, int opcode, const uint8_t *data, size_t len)
{
    return record(ctx, opcode, data, len);
}

static const ws_handlers handlers = {on_message, on_control};
static const ws_limits limits = {1 << 16, 1 << 17};

/* Appends a masked client frame to buf; returns the new length. */
static size_t frame(uint8_t *buf, size_t at, bool fin, int opcode, const void *payload, size_t len)
{
    uint8_t mask[4];
    randombytes_buf(mask, 4);
    at += ws_frame_header(buf + at, fin, opcode, len, mask);
    memcpy(buf + at, payload, len);
    ws_mask(buf + at, len, mask, 0);
    return at + len;
}

/* Feeds stream in pieces of `piece` bytes (0: all at once); returns the last result. */
static int feed(ws_reader *r, sink *s, const uint8_t *stream, size_t len, size_t piece)
{
    static uint8_t copy[1 << 18];
    memcpy(copy, stream, len);
    size_t at = 0;
    int rc = 0;
    while (at < len && rc == 0) {
        size_t n = piece ? piece : len;
        if (n > len - at)
            n = len - at;
        rc = ws_reader_feed(r, copy + at, n, &limits, &handlers, s);
        at += n;
    }
    return rc;
}

static void test_lengths_and_splits(void)
{
    static uint8_t stream[1 << 18], payload[70000];
    size_t sizes[] = {0, 1, 125, 126, 127, 65535, 65536};
    randombytes_buf(payload, sizeof payload);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t pieces[] = {0, 1, 2, 3, 7, 13, 4096};
        for (size_t p = 0; p < sizeof pieces / sizeof pieces[0]; p++) {
            if (pieces[p] == 1 && sizes[k] > 200)
                continue; /* byte at a time only for the small ones: it is slow */
            sink s = {0};
            ws_reader r;
            ws_reader_init(&r, true);
            size_t n = frame(stream, 0, true, WS_OP_BINARY, payload, sizes[k]);
            n = frame(stream, n, true, WS_OP_PING, "hi", 2);
            CHECK_RC(feed(&r, &s, stream, n, pieces[p]), 0);
            CHECK(s.events == 2 && s.opcodes[0] == WS_OP_BINARY && s.lens[0] == sizes[k] &&
                  s.opcodes[1] == WS_OP_PING && s.lens[1] == 2);
            CHECK(memcmp(s.data, payload, sizes[k]) == 0);
            CHECK(r.partial == NULL && r.message == NULL); /* idle: nothing held */
            ws_reader_free(&r);
        }
    }
    CHECK(sizeof(ws_reader) <= 40);
}

static void test_fragments(void)
{
    static uint8_t stream[4096];
    const char *text = "héllo wörld";
    size_t tl = strlen(text);
    for (size_t piece = 0; piece < 9; piece++) {
        sink s = {0};
        ws_reader r;
        ws_reader_init(&r, true);
        size_t n = frame(stream, 0, false, WS_OP_TEXT, text, 2); /* "h" + half of é */
        n = frame(stream, n, true, WS_OP_PING, "p", 1);
        n = frame(stream, n, false, WS_OP_CONTINUATION, text + 2, 5);
        n = frame(stream, n, true, WS_OP_CONTINUATION, text + 7, tl - 7);
        CHECK_RC(feed(&r, &s, stream, n, piece), 0);
        CHECK(s.events == 2 && s.opcodes[0] == WS_OP_PING && s.opcodes[1] == WS_OP_TEXT);
        CHECK(s.lens[1] == tl && memcmp(s.data + 1, text, tl) == 0);
        CHECK(r.message == NULL && r.partial == NULL);
        ws_reader_free(&r);
    }
}

static int one_error(const uint8_t *stream, size_t n, bool server)
{
    sink s = {0};
    ws_reader r;
    ws_reader_init(&r, server);
    int rc = feed(&r, &s, stream, n, 0);
    int again = ws_reader_feed(&r, (uint8_t *)"\x82\x80\0\0\0\0", 6, &limits, &handlers, &s);
    ws_reader_free(&r);
    return rc && again ? rc : -1; /* a failed reader stays failed */
}

static void test_errors(void)
{
    uint8_t b[300];
    size_t n;
    uint8_t big[200] = {0};

    CHECK_RC(one_error((const uint8_t *)"\x82\x01x", 3, true), WS_CLOSE_PROTOCOL_ERROR); /* unmasked */
    n = frame(b, 0, true, WS_OP_BINARY, "x", 1);
    CHECK_RC(one_error(b, n, false), WS_CLOSE_PROTOCOL_ERROR); /* masked, to a client */
    n = frame(b, 0, true, WS_OP_BINARY, "x", 1);
    b[0] |= 0x40; /* RSV1 */
    CHECK_RC(one_error(b, n, true), WS_CLOSE_PROTOCOL_ERROR);
    for (int op = 3; op < 16; op++) {
        if (op >= 8 && op <= 10)
            continue;
        n = frame(b, 0, true, op, "x", 1);
        CHECK_RC(one_error(b, n, true), WS_CLOSE_PROTOCOL_ERROR);
    }
    n = frame(b, 0, true, WS_OP_PING, big, 126);
    CHECK_RC(one_error(b, n, true), WS_CLOSE_PROTOCOL_ERROR); /* control > 125 */
    n = frame(b, 0, false, WS_OP_PING, "x", 1);
    CHECK_RC(one_error(b, n, true), WS_CLOSE_PROTOCOL_ERROR); /* fragmented control */
    n = frame(b, 0, true, WS_OP_CONTINUATION, "x", 1);
    CHECK_RC(one_error(b, n, true), WS_CLOSE_PROTOCOL_ERROR); /* nothing to continue */
    n = frame(b, 0, false, WS_OP_BINARY, "x", 1);
    n = frame(b, n, true, WS_OP_TEXT, "y", 1);
    CHECK_RC(one_error(b, n, true), WS_CLOSE_PROTOCOL_ERROR); /* new message mid-message */
    n = frame(b, 0, true, WS_OP_TEXT, "\xc3\x28", 2);
    CHECK_RC(one_error(b, n, true), WS_CLOSE_INVALID_DATA);
    n = frame(b, 0, false, WS_OP_TEXT, "\xe2\x82", 2);
    n = frame(b, n, true, WS_OP_CONTINUATION, "\x28", 1);
    CHECK_RC(one_error(b, n, true), WS_CLOSE_INVALID_DATA); /* bad across fragments */
    n = frame(b, 0, true, WS_OP_CLOSE, "\x03", 1);
    CHECK_RC(one_error(b, n, true), WS_CLOSE_PROTOCOL_ERROR); /* 1-byte close */
    uint16_t bad_codes[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000};
    for (size_t i = 0; i < sizeof bad_codes / sizeof bad_codes[0]; i++) {
        uint8_t p[2] = {(uint8_t)(bad_codes[i] >> 8), (uint8_t)bad_codes[i]};
        n = frame(b, 0, true, WS_OP_CLOSE, p, 2);
        CHECK_RC(one_error(b, n, true), WS_CLOSE_PROTOCOL_ERROR);
    }
    n = frame(b, 0, true, WS_OP_CLOSE, "\x03\xe8\xff", 3);
    CHECK_RC(one_error(b, n, true), WS_CLOSE_INVALID_DATA); /* reason not UTF-8 */
    /* 64-bit length with the top bit set */
    uint8_t huge[14] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    CHECK_RC(one_error(huge, sizeof huge, true), WS_CLOSE_PROTOCOL_ERROR);
    /* too big is known from the header alone: no payload needed */
    uint8_t hdr[WS_MAX_HEADER];
    uint8_t mask[4] = {1, 2, 3, 4};
    n = ws_frame_header(hdr, true, WS_OP_BINARY, limits.max_frame + 1, mask);
    CHECK_RC(one_error(hdr, n, true), WS_CLOSE_TOO_BIG);
    /* a message over the limit, fragment by fragment */
    {
        static uint8_t s2[1 << 18], chunk[1 << 16];
        size_t m = frame(s2, 0, false, WS_OP_BINARY, chunk, sizeof chunk);
        m = frame(s2, m, false, WS_OP_CONTINUATION, chunk, sizeof chunk);
        m = frame(s2, m, true, WS_OP_CONTINUATION, chunk, 1);
        CHECK_RC(one_error(s2, m, true), WS_CLOSE_TOO_BIG);
    }
    /* valid close codes pass, and a handler can stop the reader */
    uint16_t good_codes[] = {1000, 1001, 1002, 1003, 1007, 1011, 3000, 4999};
    for (size_t i = 0; i < sizeof good_codes / sizeof good_codes[0]; i++) {
        uint8_t p[4] = {(uint8_t)(good_codes[i] >> 8), (uint8_t)good_codes[i], 'o', 'k'};
        sink s = {.stop_after = 1};
        ws_reader r;
        ws_reader_init(&r, true);
        n = frame(b, 0, true, WS_OP_CLOSE, p, 4);
        n = frame(b, n, true, WS_OP_BINARY, "after", 5);
        CHECK_RC(feed(&r, &s, b, n, 0), 0);
        CHECK(s.events == 1 && s.opcodes[0] == WS_OP_CLOSE); /* stopped: "after" not seen */
        ws_reader_free(&r);
    }
}

static void test_writer(void)
{
    uint8_t out[WS_MAX_HEADER];
    CHECK(ws_frame_header(out, true, WS_OP_BINARY, 125, NULL) == 2 && out[0] == 0x82 && out[1] == 125);
    CHECK(ws_frame_header(out, true, WS_OP_BINARY, 126, NULL) == 4 && out[1] == 126 && out[3] == 126);
    CHECK(ws_frame_header(out, false, WS_OP_TEXT, 65536, NULL) == 10 && out[0] == 0x01 &&
          out[1] == 127 && out[7] == 1 && out[8] == 0);
    uint8_t p[WS_MAX_CONTROL_PAYLOAD];
    char reason[200];
    memset(reason, 'a', sizeof reason);
    reason[122] = (char)0xc3, reason[123] = (char)0xa9; /* "é" across the 123-byte cut */
    reason[199] = 0;
    size_t n = ws_close_payload(p, 1001, reason);
    CHECK(n == 124 && p[0] == 0x03 && p[1] == 0xe9); /* cut before the é, not inside it */
}

static void test_handshake(void)
{
    char accept[29];
    ws_handshake_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, accept);
    CHECK(strcmp(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);

    char out[WS_HANDSHAKE_MAX_RESPONSE];
    size_t n;
    const char *ok = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n"
                     "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n";
    CHECK(ws_handshake_head_len(ok, strlen(ok)) == strlen(ok));
    CHECK(ws_handshake_head_len(ok, strlen(ok) - 1) == 0);
    CHECK(upgrade_answer(ok, strlen(ok), out, &n) == 101);
    CHECK(strstr(out, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n") != NULL);
    CHECK(strncmp(out, "HTTP/1.1 101 ", 13) == 0 && n == strlen(out));

    const char *v8 = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    CHECK(upgrade_answer(v8, strlen(v8), out, &n) == 426);
    CHECK(strstr(out, "Sec-WebSocket-Version: 13\r\n") != NULL);
    const char *post = "POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                       "Content-Length: 0\r\n\r\n";
    CHECK(upgrade_answer(post, strlen(post), out, &n) == 405);
    const char *nokey = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n";
    CHECK(upgrade_answer(nokey, strlen(nokey), out, &n) == 400);
    const char *shortkey = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: AAAA\r\nSec-WebSocket-Version: 13\r\n\r\n";
    CHECK(upgrade_answer(shortkey, strlen(shortkey), out, &n) == 400);
    const char *plain = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(upgrade_answer(plain, strlen(plain), out, &n) == 400);
    const char *junk = "\x16\x03\x01garbage\r\n\r\n";
    CHECK(upgrade_answer(junk, strlen(junk), out, &n) == 400);
    CHECK(strncmp(out, "HTTP/1.1 400 ", 13) == 0);
    n = ws_handshake_error(out, 431);
    CHECK(n > 0 && strncmp(out, "HTTP/1.1 431 ", 13) == 0);
}

/* The client end against the server end: our request is accepted, and the check of the
 * response tells a good 101 from a wrong key, a refusal and something that is not HTTP. */
static void test_client_handshake(void)
{
    char key[WS_KEY_LEN + 1], other[WS_KEY_LEN + 1], req[512], out[WS_HANDSHAKE_MAX_RESPONSE];
    const char *why;
    size_t n;
    ws_handshake_new_key(key);
    ws_handshake_new_key(other);
    CHECK(strlen(key) == WS_KEY_LEN && strcmp(key, other) != 0);
    size_t len = ws_handshake_request(req, sizeof req, "[::1]:7443", "/v1", key, "test/1");
    CHECK(len == strlen(req) && strncmp(req, "GET /v1 HTTP/1.1\r\nHost: [::1]:7443\r\n", 36) == 0);
    CHECK(strstr(req, "\r\nUser-Agent: test/1\r\n\r\n") != NULL);
    CHECK(ws_handshake_request(req, 40, "h", "/", key, NULL) == 0); /* does not fit */
    len = ws_handshake_request(req, sizeof req, "h:1", "/", key, NULL);
    CHECK(strstr(req, "User-Agent") == NULL && ws_handshake_head_len(req, len) == len);
    CHECK(upgrade_answer(req, len, out, &n) == 101);
    CHECK(ws_handshake_check_response(out, n, key, &why) == 101 && why == NULL);
    CHECK(ws_handshake_check_response(out, n, other, &why) == -1 && strstr(why, "Accept"));
    const char *no_upgrade = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n";
    CHECK(ws_handshake_check_response(no_upgrade, strlen(no_upgrade), key, &why) == -1 && strstr(why, "Upgrade"));
    n = ws_handshake_error(out, 400);
    CHECK(ws_handshake_check_response(out, n, key, &why) == 400);
    const char *busy = "HTTP/1.1 503 Service Unavailable\r\n\r\n";
    CHECK(ws_handshake_check_response(busy, strlen(busy), key, &why) == 503);
    const char *ssh = "SSH-2.0-OpenSSH_9.2\r\n\r\n";
    CHECK(ws_handshake_check_response(ssh, strlen(ssh), key, &why) == 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 2;
    RUN(test_lengths_and_splits());
    RUN(test_fragments());
    RUN(test_errors());
    RUN(test_writer());
    RUN(test_handshake());
    RUN(test_client_handshake());
    return check_summary("ws_codec");
}
