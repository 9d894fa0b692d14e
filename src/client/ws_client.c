/* ws_client.c - the client side of a WebSocket over a non-blocking socket. */
#include "ws_client.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ws_handshake.h"

#define RBUF_SIZE (64 * 1024)
#define READS_PER_CALL 16 /* then let the owner's timers run */

/* strerror_r, with the first letter lower-cased to sit inside our sentences. */
static const char *errtext(int e, char *buf, size_t len)
{
    if (strerror_r(e, buf, len) != 0)
        snprintf(buf, len, "error %d", e);
    buf[0] = (char)tolower((unsigned char)buf[0]);
    return buf;
}

int wsc_parse_url(const char *url, char host[WSC_HOST_MAX + 1], char port[8],
                  char path[WSC_PATH_MAX + 1], char *err, size_t errlen)
{
    const char *p;
    if (strncasecmp(url, "wss://", 6) == 0) {
        snprintf(err, errlen, "%s: wss:// (TLS) is not supported yet; use ws:// (behind a TLS proxy, the proxy's plain address)", url);
        return -1;
    }
    if (strncasecmp(url, "ws://", 5) != 0) {
        snprintf(err, errlen, "%s is not a server address: expected ws://HOST:PORT", url);
        return -1;
    }
    p = url + 5;
    const char *host_start = p, *host_end;
    if (*p == '[') { /* [IPv6] */
        host_start = ++p;
        host_end = strchr(p, ']');
        if (!host_end) {
            snprintf(err, errlen, "%s: unclosed [ in the host", url);
            return -1;
        }
        p = host_end + 1;
    } else {
        while (*p && *p != ':' && *p != '/')
            p++;
        host_end = p;
    }
    size_t hlen = (size_t)(host_end - host_start);
    if (hlen == 0 || hlen > WSC_HOST_MAX) {
        snprintf(err, errlen, "%s: %s host name", url, hlen ? "too long a" : "no");
        return -1;
    }
    for (const char *c = host_start; c < host_end; c++)
        if (!isalnum((unsigned char)*c) && *c != '.' && *c != '-' && *c != ':' && *c != '_') {
            snprintf(err, errlen, "%s: the host name has a character it cannot have", url);
            return -1;
        }
    memcpy(host, host_start, hlen);
    host[hlen] = 0;
    snprintf(port, 8, "80");
    if (*p == ':') {
        const char *ps = ++p;
        unsigned long v = 0;
        while (isdigit((unsigned char)*p) && v <= 65535)
            v = v * 10 + (unsigned long)(*p++ - '0');
        if (p == ps || v == 0 || v > 65535 || (*p && *p != '/')) {
            snprintf(err, errlen, "%s: the port must be a number from 1 to 65535", url);
            return -1;
        }
        snprintf(port, 8, "%lu", v);
    }
    if (*p && *p != '/') {
        snprintf(err, errlen, "%s is not a server address: expected ws://HOST:PORT", url);
        return -1;
    }
    const char *path_src = *p ? p : "/";
    if (strlen(path_src) > WSC_PATH_MAX) {
        snprintf(err, errlen, "%s: the path is too long", url);
        return -1;
    }
    for (const char *c = path_src; *c; c++)
        if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f) {
            snprintf(err, errlen, "%s: the path has a space or control character", url);
            return -1;
        }
    snprintf(path, WSC_PATH_MAX + 1, "%s", path_src);
    return 0;
}

void wsc_init(ws_client *c, const wsc_handlers *h, void *ctx)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->h = h;
    c->ctx = ctx;
}

void wsc_set_max_message(ws_client *c, size_t max)
{
    c->max_message = max < WSC_MAX_MESSAGE ? max : WSC_MAX_MESSAGE;
}

void wsc_reset(ws_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->addrs)
        freeaddrinfo(c->addrs);
    c->addrs = c->cur = NULL;
    free(c->head);
    c->head = NULL;
    c->head_len = 0;
    ws_reader_free(&c->reader);
    free(c->rbuf);
    c->rbuf = NULL;
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = c->out_cap = 0;
    c->write_errno = 0;
    c->state = WSC_IDLE;
}

/* Tears down and tells the owner. The owner may start a new connection from closed(). */
static void finish(ws_client *c)
{
    char reason[sizeof c->fail_reason];
    memcpy(reason, c->fail_reason, sizeof reason);
    int code = c->fail_code;
    bool fatal = c->fail_fatal;
    c->fail_pending = false;
    wsc_reset(c);
    c->h->closed(c->ctx, code, reason, fatal);
}

void wsc_fail(ws_client *c, int code, const char *reason, bool fatal)
{
    if (c->state == WSC_IDLE || c->fail_pending)
        return; /* the first failure is the one to report */
    c->fail_pending = true;
    c->fail_code = code;
    c->fail_fatal = fatal;
    snprintf(c->fail_reason, sizeof c->fail_reason, "%s", reason);
    if (!c->busy)
        finish(c);
}

int wsc_fd(const ws_client *c)
{
    return c->fd;
}

size_t wsc_queued(const ws_client *c)
{
    return c->out_len - c->out_off;
}

short wsc_events(const ws_client *c)
{
    switch (c->state) {
    case WSC_CONNECTING:
        return POLLOUT;
    case WSC_HANDSHAKE:
    case WSC_OPEN:
    case WSC_CLOSING:
        return (short)(POLLIN | (wsc_queued(c) || c->write_errno ? POLLOUT : 0));
    default:
        return 0;
    }
}

/* Appends raw bytes to the output queue. */
static int queue_bytes(ws_client *c, const void *data, size_t len)
{
    if (c->out_off && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (len > WSC_MAX_QUEUED - wsc_queued(c))
        return -1;
    if (c->out_len + len > c->out_cap) {
        if (c->out_off) { /* slide the unwritten part to the front first */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + len > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 4096;
            while (cap < c->out_len + len)
                cap *= 2;
            uint8_t *grown = realloc(c->out, cap);
            if (!grown)
                return -1;
            c->out = grown;
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return 0;
}

/* Queues one masked frame. */
static int queue_frame(ws_client *c, int opcode, const uint8_t *data, size_t len)
{
    uint8_t hdr[WS_MAX_HEADER], mask[4];
    randombytes_buf(mask, sizeof mask);
    size_t hlen = ws_frame_header(hdr, true, opcode, len, mask);
    if (queue_bytes(c, hdr, hlen) != 0 || queue_bytes(c, data, len) != 0)
        return -1;
    /* out may have slid: find the payload from the end */
    ws_mask(c->out + c->out_len - len, len, mask, 0);
    return 0;
}

/* Writes what it can. Returns 0, or -1 after recording the error in write_errno. */
static int flush(ws_client *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        c->write_errno = n < 0 ? errno : EPIPE;
        return -1;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

static void fail_errno(ws_client *c, const char *what, int e)
{
    char buf[128], reason[WSC_REASON_MAX];
    snprintf(reason, sizeof reason, "%s %s: %s", what, c->url, errtext(e, buf, sizeof buf));
    wsc_fail(c, WSC_ABNORMAL, reason, false);
}

int wsc_send(ws_client *c, const uint8_t *data, size_t len)
{
    if (c->state != WSC_OPEN || c->fail_pending)
        return -1;
    if (queue_frame(c, WS_OP_BINARY, data, len) != 0)
        return -1;
    if (!c->write_errno)
        flush(c); /* an error waits for wsc_process, so the owner never re-enters here */
    return 0;
}

void wsc_close(ws_client *c, uint16_t code, const char *reason)
{
    if (c->state != WSC_OPEN)
        return;
    uint8_t payload[WS_MAX_CONTROL_PAYLOAD];
    size_t n = ws_close_payload(payload, code, reason);
    if (queue_frame(c, WS_OP_CLOSE, payload, n) != 0) {
        wsc_fail(c, code, reason, false);
        return;
    }
    c->state = WSC_CLOSING;
    if (!c->write_errno)
        flush(c);
}

/* ---- connecting ---------------------------------------------------------------------- */

static void send_upgrade(ws_client *c)
{
    ws_handshake_new_key(c->key);
    char req[WSC_HOST_MAX + WSC_PATH_MAX + 256], host[WSC_HOST_MAX + 16];
    bool v6 = strchr(c->host, ':') != NULL;
    snprintf(host, sizeof host, "%s%s%s:%s", v6 ? "[" : "", c->host, v6 ? "]" : "", c->port);
    size_t n = ws_handshake_request(req, sizeof req, host, c->path, c->key, "libparley/1");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* small frames, now */
    c->state = WSC_HANDSHAKE;
    if (n == 0 || queue_bytes(c, req, n) != 0) {
        wsc_fail(c, WSC_ABNORMAL, "out of memory", false);
        return;
    }
    flush(c);
}

/* Tries the addresses from cur on until one connects or is in progress. */
static void try_connect(ws_client *c)
{
    for (; c->cur; c->cur = c->cur->ai_next) {
        int fd = socket(c->cur->ai_family, c->cur->ai_socktype, c->cur->ai_protocol);
        if (fd < 0) {
            if (!c->connect_errno)
                c->connect_errno = errno;
            continue;
        }
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
            if (!c->connect_errno)
                c->connect_errno = errno;
            close(fd);
            continue;
        }
        c->fd = fd;
        if (connect(fd, c->cur->ai_addr, c->cur->ai_addrlen) == 0) {
            send_upgrade(c);
            return;
        }
        if (errno == EINPROGRESS || errno == EINTR) {
            c->state = WSC_CONNECTING;
            return;
        }
        if (!c->connect_errno)
            c->connect_errno = errno;
        close(fd);
        c->fd = -1;
    }
    c->state = WSC_CONNECTING; /* so that wsc_fail reports */
    fail_errno(c, "cannot reach", c->connect_errno ? c->connect_errno : ECONNREFUSED);
}

int wsc_open(ws_client *c, const char *url)
{
    if (c->state != WSC_IDLE)
        return -1;
    char err[WSC_REASON_MAX];
    c->connect_errno = 0;
    c->fail_pending = false;
    snprintf(c->url, sizeof c->url, "%s", url);
    c->state = WSC_CONNECTING;
    if (wsc_parse_url(url, c->host, c->port, c->path, err, sizeof err) != 0) {
        wsc_fail(c, WSC_ABNORMAL, err, true);
        return 0;
    }
    ws_reader_init(&c->reader, false);
    c->max_message = WSC_FIRST_MAX; /* until the server's Hello says more */
    c->rbuf = malloc(RBUF_SIZE);
    if (!c->rbuf) {
        wsc_fail(c, WSC_ABNORMAL, "out of memory", false);
        return 0;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(c->host, c->port, &hints, &c->addrs);
    if (rc != 0) {
        snprintf(err, sizeof err, "cannot reach %s: cannot resolve %s: %s", url, c->host,
                 rc == EAI_SYSTEM ? "system error" : gai_strerror(rc));
        c->addrs = NULL;
        wsc_fail(c, WSC_ABNORMAL, err, false);
        return 0;
    }
    c->cur = c->addrs;
    try_connect(c);
    return 0;
}

static void check_connect(ws_client *c)
{
    int e = 0;
    socklen_t len = sizeof e;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0)
        e = errno;
    if (e == 0) {
        send_upgrade(c);
        return;
    }
    if (!c->connect_errno)
        c->connect_errno = e;
    close(c->fd);
    c->fd = -1;
    c->cur = c->cur->ai_next;
    try_connect(c);
}

/* ---- the upgrade response ------------------------------------------------------------ */

static void feed(ws_client *c, uint8_t *data, size_t len);

/* Checks a complete response head; on success the connection is open. */
static void check_response(ws_client *c, size_t head_end)
{
    char reason[WSC_REASON_MAX];
    const char *why;
    int status = ws_handshake_check_response(c->head, head_end, c->key, &why);
    if (status == -1) {
        snprintf(reason, sizeof reason, "%s answered the WebSocket upgrade wrongly (%s)", c->url, why);
        wsc_fail(c, WSC_ABNORMAL, reason, true);
        return;
    }
    if (status != 101) {
        const char *eol = memchr(c->head, '\r', head_end);
        int line_len = eol ? (int)(eol - c->head) : 0;
        if (line_len > 80)
            line_len = 80;
        snprintf(reason, sizeof reason, "%s did not accept a WebSocket connection (it answered \"%.*s\")",
                 c->url, line_len, c->head);
        /* 5xx may pass; anything else means this is not (or not yet) a Parley server */
        wsc_fail(c, WSC_ABNORMAL, reason, !(status >= 500 && status <= 599));
        return;
    }
    c->state = WSC_OPEN;
    c->h->open(c->ctx);
    if (c->fail_pending || c->state != WSC_OPEN)
        return;
    /* frames that came in the same read as the head */
    size_t rest = c->head_len - head_end;
    char *head = c->head;
    c->head = NULL;
    c->head_len = 0;
    if (rest)
        feed(c, (uint8_t *)head + head_end, rest);
    free(head);
}

static void read_head(ws_client *c, const uint8_t *data, size_t len)
{
    if (!c->head && !(c->head = malloc(WS_HANDSHAKE_MAX_HEAD + 1))) {
        wsc_fail(c, WSC_ABNORMAL, "out of memory", false);
        return;
    }
    size_t room = WS_HANDSHAKE_MAX_HEAD - c->head_len;
    size_t take = len < room ? len : room;
    memcpy(c->head + c->head_len, data, take);
    c->head_len += take;
    c->head[c->head_len] = 0;
    size_t end = ws_handshake_head_len(c->head, c->head_len);
    if (end) {
        if (take < len) { /* frames beyond what the head buffer holds: keep them too */
            char *grown = realloc(c->head, c->head_len + (len - take) + 1);
            if (!grown) {
                wsc_fail(c, WSC_ABNORMAL, "out of memory", false);
                return;
            }
            c->head = grown;
            memcpy(c->head + c->head_len, data + take, len - take);
            c->head_len += len - take;
        }
        check_response(c, end);
    } else if (c->head_len >= WS_HANDSHAKE_MAX_HEAD) {
        char reason[WSC_REASON_MAX];
        snprintf(reason, sizeof reason, "%s sent an over-long HTTP response", c->url);
        wsc_fail(c, WSC_ABNORMAL, reason, true);
    }
}

/* ---- frames in --------------------------------------------------------------------- */

static bool on_ws_message(void *ctx, int opcode, uint8_t *data, size_t len)
{
    ws_client *c = ctx;
    if (c->fail_pending)
        return false;
    if (opcode != WS_OP_BINARY) {
        wsc_close(c, WS_CLOSE_UNSUPPORTED, "text frames are not part of the protocol");
        wsc_fail(c, WSC_ABNORMAL, "the server sent a text frame", false);
        return false;
    }
    if (c->state == WSC_OPEN)
        c->h->message(c->ctx, data, len);
    return !c->fail_pending;
}

static bool on_ws_control(void *ctx, int opcode, const uint8_t *data, size_t len)
{
    ws_client *c = ctx;
    if (opcode == WS_OP_PING) {
        if (c->state == WSC_OPEN && queue_frame(c, WS_OP_PONG, data, len) != 0)
            wsc_fail(c, WSC_ABNORMAL, "out of memory", false);
        return !c->fail_pending;
    }
    if (opcode != WS_OP_CLOSE)
        return true;
    int code = len >= 2 ? (data[0] << 8 | data[1]) : WS_CLOSE_NO_STATUS;
    char reason[WS_MAX_CONTROL_PAYLOAD + 1];
    size_t rlen = len > 2 ? len - 2 : 0;
    memcpy(reason, data + (len > 2 ? 2 : 0), rlen);
    reason[rlen] = 0;
    if (c->state == WSC_OPEN) { /* answer with the same code, as RFC 6455 5.5.1 asks */
        uint8_t payload[WS_MAX_CONTROL_PAYLOAD];
        size_t n = code == WS_CLOSE_NO_STATUS ? 0 : ws_close_payload(payload, (uint16_t)code, "");
        if (queue_frame(c, WS_OP_CLOSE, payload, n) == 0 && !c->write_errno)
            flush(c);
    }
    wsc_fail(c, code, reason, false);
    return false;
}

static void feed(ws_client *c, uint8_t *data, size_t len)
{
    static const ws_handlers handlers = {on_ws_message, on_ws_control};
    const ws_limits lim = {c->max_message, c->max_message};
    int code = ws_reader_feed(&c->reader, data, len, &lim, &handlers, c);
    if (code && !c->fail_pending) {
        uint8_t payload[WS_MAX_CONTROL_PAYLOAD];
        size_t n = ws_close_payload(payload, (uint16_t)code, "protocol error");
        if (c->state == WSC_OPEN && queue_frame(c, WS_OP_CLOSE, payload, n) == 0 && !c->write_errno)
            flush(c);
        char reason[WSC_REASON_MAX];
        snprintf(reason, sizeof reason, "the server broke the WebSocket protocol (we closed with %d)", code);
        wsc_fail(c, WSC_ABNORMAL, reason, false);
    }
}

static void read_some(ws_client *c)
{
    for (int i = 0; i < READS_PER_CALL && !c->fail_pending && c->state != WSC_IDLE; i++) {
        ssize_t n = recv(c->fd, c->rbuf, RBUF_SIZE, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0) {
            fail_errno(c, "connection to", errno);
            return;
        }
        if (n == 0) {
            char reason[WSC_REASON_MAX];
            snprintf(reason, sizeof reason, "%s closed the connection%s", c->url,
                     c->state == WSC_CLOSING ? "" : " without a close frame");
            wsc_fail(c, c->state == WSC_CLOSING ? WS_CLOSE_NORMAL : WSC_ABNORMAL, reason, false);
            return;
        }
        if (c->state == WSC_HANDSHAKE)
            read_head(c, c->rbuf, (size_t)n);
        else
            feed(c, c->rbuf, (size_t)n);
    }
}

void wsc_process(ws_client *c, short revents)
{
    if (c->state == WSC_IDLE)
        return;
    c->busy = true;
    if (c->state == WSC_CONNECTING) {
        if (revents & (POLLOUT | POLLERR | POLLHUP))
            check_connect(c);
    } else {
        if (!c->write_errno && wsc_queued(c) && (revents & POLLOUT))
            flush(c);
        if (!c->fail_pending && (revents & (POLLIN | POLLHUP | POLLERR)))
            read_some(c);
        if (!c->fail_pending && c->write_errno)
            fail_errno(c, "connection to", c->write_errno);
    }
    c->busy = false;
    if (c->fail_pending)
        finish(c);
}
