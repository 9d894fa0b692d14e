/* ws_echo_server.c - a WebSocket echo server on libuv and Parley's own codec
 * (src/server/net/ws.c, ws_handshake.c), so that real clients (npm ws, raw sockets)
 * can test the codec over real TCP: tests/ws/.
 *   ws-echo-server --listen HOST:PORT [--max-message BYTES] [--max-frame BYTES]
 * Prints "listening PORT" when ready; SIGTERM closes every connection with 1001
 * and exits 0.
 *
 * Hanging up politely: after a close frame (or an HTTP error) the server shuts down
 * its sending side and keeps reading and discarding until the peer's FIN or a
 * deadline, then closes. Closing at once with unread input would make the kernel
 * send a reset, and a client still writing a large message would lose the close
 * frame (it would see 1006 instead of, say, 1009). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "ws.h"
#include "ws_handshake.h"

typedef struct conn {
    uv_tcp_t tcp;
    ws_reader reader;
    char *head;            /* the HTTP request head until the upgrade */
    size_t head_len;
    bool upgraded;
    bool closing;          /* no more input is handled: it is read and dropped */
    uint64_t linger_until; /* when closing: hang up at this loop time (ms) at the latest */
    uv_shutdown_t shutdown;
    struct conn *prev, *next;
} conn;

typedef struct {
    uv_write_t req;
    conn *c;
    bool hang_up_after;    /* shut down our side once this is written */
    size_t len;
    uint8_t data[];
} write_req;

static uv_loop_t *loop;
static uv_tcp_t server;
static uv_signal_t sigterm, sigint;
static uv_timer_t linger_timer; /* one timer for every closing connection */
static bool shutting_down;

#define LINGER_MS 1000
static ws_limits limits = {1 << 20, 1 << 20};
static conn *conns;
static char read_buf[64 * 1024]; /* one read buffer for the thread, none per connection */

static void on_closed(uv_handle_t *h)
{
    conn *c = h->data;
    ws_reader_free(&c->reader);
    free(c->head);
    if (c->prev)
        c->prev->next = c->next;
    else
        conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

static void close_conn(conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    if (status < 0)
        close_conn(req->data);
}

static void on_written(uv_write_t *req, int status)
{
    write_req *w = (write_req *)req;
    if (status < 0) {
        close_conn(w->c);
    } else if (w->hang_up_after && !uv_is_closing((uv_handle_t *)&w->c->tcp)) {
        w->c->shutdown.data = w->c;
        if (uv_shutdown(&w->c->shutdown, (uv_stream_t *)&w->c->tcp, on_shutdown) != 0)
            close_conn(w->c);
    }
    free(w);
}

/* From now on input is dropped; the connection ends at the peer's FIN or the deadline. */
static void start_closing(conn *c)
{
    c->closing = true;
    c->linger_until = uv_now(loop) + LINGER_MS;
}

static void on_linger_tick(uv_timer_t *t)
{
    uint64_t now = uv_now(loop);
    for (conn *c = conns; c; c = c->next)
        if (c->closing && now >= c->linger_until)
            close_conn(c);
    if (shutting_down && !conns)
        uv_close((uv_handle_t *)t, NULL);
}

static void send_bytes(conn *c, const uint8_t *hdr, size_t hlen, const uint8_t *body, size_t blen,
                       bool hang_up_after)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    write_req *w = malloc(sizeof *w + hlen + blen);
    if (!w) {
        close_conn(c);
        return;
    }
    memcpy(w->data, hdr, hlen);
    if (blen)
        memcpy(w->data + hlen, body, blen);
    w->c = c;
    w->hang_up_after = hang_up_after;
    w->len = hlen + blen;
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)w->len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) {
        free(w);
        close_conn(c);
    }
}

static void send_frame(conn *c, int opcode, const uint8_t *payload, size_t len, bool hang_up_after)
{
    uint8_t hdr[WS_MAX_HEADER];
    size_t hlen = ws_frame_header(hdr, true, opcode, len, NULL);
    send_bytes(c, hdr, hlen, payload, len, hang_up_after);
}

/* Starts the closing handshake from our side (or answers with an error code). */
static void send_close(conn *c, uint16_t code, const char *reason)
{
    uint8_t payload[WS_MAX_CONTROL_PAYLOAD];
    size_t n = ws_close_payload(payload, code, reason);
    start_closing(c);
    send_frame(c, WS_OP_CLOSE, payload, n, true);
}

static bool on_message(void *ctx, int opcode, uint8_t *data, size_t len)
{
    send_frame(ctx, opcode, data, len, false);
    return true;
}

static bool on_control(void *ctx, int opcode, const uint8_t *data, size_t len)
{
    conn *c = ctx;
    if (opcode == WS_OP_PING) {
        send_frame(c, WS_OP_PONG, data, len, false);
    } else if (opcode == WS_OP_CLOSE) { /* answer with the peer's code, then hang up */
        start_closing(c);
        send_frame(c, WS_OP_CLOSE, data, len >= 2 ? 2 : 0, true);
        return false;
    }
    return true;
}

static const ws_handlers handlers = {on_message, on_control};

static void feed(conn *c, uint8_t *data, size_t len)
{
    int code = ws_reader_feed(&c->reader, data, len, &limits, &handlers, c);
    if (code)
        send_close(c, (uint16_t)code, code == WS_CLOSE_TOO_BIG      ? "message too big"
                                      : code == WS_CLOSE_INVALID_DATA ? "invalid UTF-8"
                                                                      : "protocol error");
}

static void on_handshake_bytes(conn *c, char *data, size_t len)
{
    char resp[WS_HANDSHAKE_MAX_RESPONSE];
    size_t resp_len = 0;
    size_t room = WS_HANDSHAKE_MAX_HEAD - c->head_len;
    size_t take = len < room ? len : room;
    char *grown = realloc(c->head, c->head_len + take + 1);
    if (!grown) {
        close_conn(c);
        return;
    }
    c->head = grown;
    memcpy(c->head + c->head_len, data, take);
    size_t before = c->head_len;
    c->head_len += take;
    size_t head_len = ws_handshake_head_len(c->head, c->head_len);
    if (!head_len) {
        if (c->head_len == WS_HANDSHAKE_MAX_HEAD) {
            resp_len = ws_handshake_too_large(resp);
            start_closing(c);
            send_bytes(c, (uint8_t *)resp, resp_len, NULL, 0, true);
        }
        return;
    }
    int status = ws_handshake_answer(c->head, head_len, resp, &resp_len);
    free(c->head);
    c->head = NULL;
    if (status != 101) {
        start_closing(c);
        send_bytes(c, (uint8_t *)resp, resp_len, NULL, 0, true);
        return;
    }
    c->upgraded = true;
    send_bytes(c, (uint8_t *)resp, resp_len, NULL, 0, false);
    size_t used = head_len - before; /* bytes of this read that belonged to the head */
    if (used < len)
        feed(c, (uint8_t *)data + used, len - used);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h, (void)suggested;
    *buf = uv_buf_init(read_buf, sizeof read_buf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn *c = s->data;
    if (n < 0) {
        close_conn(c);
        return;
    }
    if (n == 0 || c->closing)
        return;
    if (!c->upgraded)
        on_handshake_bytes(c, buf->base, (size_t)n);
    else
        feed(c, (uint8_t *)buf->base, (size_t)n);
}

static void on_connection(uv_stream_t *srv, int status)
{
    if (status < 0)
        return;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    ws_reader_init(&c->reader, true);
    c->next = conns;
    if (conns)
        conns->prev = c;
    conns = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        close_conn(c);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    (void)sig;
    fprintf(stderr, "ws-echo-server: signal %d, closing\n", signum);
    shutting_down = true;
    uv_close((uv_handle_t *)&server, NULL);
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
    for (conn *c = conns; c; c = c->next) {
        if (c->upgraded && !c->closing)
            send_close(c, WS_CLOSE_GOING_AWAY, "server shutting down");
        else if (!c->closing)
            close_conn(c);
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: ws-echo-server --listen HOST:PORT [--max-message BYTES] [--max-frame BYTES]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *listen_at = NULL;
    bool frame_set = false;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            return usage();
        if (strcmp(argv[i], "--listen") == 0) {
            listen_at = argv[++i];
        } else if (strcmp(argv[i], "--max-message") == 0) {
            limits.max_message = strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--max-frame") == 0) {
            limits.max_frame = strtoul(argv[++i], NULL, 10);
            frame_set = true;
        } else {
            return usage();
        }
    }
    if (!listen_at || limits.max_message == 0 || limits.max_message > UINT32_MAX)
        return usage();
    if (!frame_set)
        limits.max_frame = limits.max_message;
    char host[256];
    const char *colon = strrchr(listen_at, ':');
    if (!colon || (size_t)(colon - listen_at) >= sizeof host)
        return usage();
    memcpy(host, listen_at, (size_t)(colon - listen_at));
    host[colon - listen_at] = 0;
    struct sockaddr_in addr;
    if (uv_ip4_addr(host, atoi(colon + 1), &addr) != 0)
        return usage();

    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    uv_tcp_init(loop, &server);
    int rc;
    if ((rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&server, 511, on_connection)) != 0) {
        fprintf(stderr, "ws-echo-server: cannot listen on %s: %s\n", listen_at, uv_strerror(rc));
        return 1;
    }
    struct sockaddr_in bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &blen);
    uv_timer_init(loop, &linger_timer);
    uv_timer_start(&linger_timer, on_linger_tick, LINGER_MS / 4, LINGER_MS / 4);
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_init(loop, &sigint);
    uv_signal_start(&sigint, on_signal, SIGINT);
    printf("listening %d\n", ntohs(bound.sin_port));
    fflush(stdout);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
