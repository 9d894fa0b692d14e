/* pb_worker.c - a parley-bench worker process: one single-threaded epoll loop that owns
 * a slice of the devices, one WebSocket connection each, and answers the parent's
 * commands (pb.h). Built to cost the server's cores as little as possible:
 *   - a connection is a small struct; the read buffer (256 KiB) is shared by the worker,
 *     and an output buffer exists only while bytes are waiting to be written;
 *   - frames are gathered per connection and written once per loop turn;
 *   - the few server frames the bench needs are decoded by hand, without allocating,
 *     and Sends are encoded straight into the output buffer.
 * Every message is checked: exactly once, in order per stream, for this recipient, with
 * its delivered receipt counted exactly once by its sender. */
#define _GNU_SOURCE /* IP_BIND_ADDRESS_NO_PORT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "parley.pb-c.h"
#include "pb.h"
#include "pbwire.h"
#include "primitives.h"
#include "ws.h"
#include "ws_handshake.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define READ_BUF (256 * 1024)
#define HANDSHAKE_MAX 4096
#define CTL_EVENT UINT64_MAX
#define REQ_CONNECT 1
#define REQ_AUTH 2
#define REQ_PING 3
#define REQ_SEND_BASE 16 /* a Send's request id is this plus its j */
#define AUTH_CONTEXT "parley-auth-v1"

enum { C_IDLE, C_CONNECTING, C_UPGRADING, C_HELLO, C_CHALLENGE, C_AUTH, C_READY, C_DEAD };

typedef struct {
    uint64_t *w;
    uint64_t cap; /* bits */
} bits;

typedef struct {
    int fd;
    uint32_t dev;       /* global device index */
    uint32_t slot;      /* its sender or receiver record */
    uint8_t state;
    uint8_t role;
    bool dirty;         /* in the flush list */
    bool want_out;      /* EPOLLOUT registered */
    bool drained;       /* Deliver.drained seen */
    bool kill;          /* drop after the current read */
    bool queued;        /* waiting for its turn to connect */
    uint16_t hs_len;
    uint32_t last_tx_s; /* worker second of the last frame sent */
    uint64_t last_seq;  /* highest envelope seq received */
    ws_reader rd;
    uint8_t *out;       /* only while bytes are waiting */
    uint32_t out_len, out_cap;
    uint8_t *hs;        /* an incomplete handshake response */
} conn;

typedef struct {
    uint32_t conn;
    uint32_t stream;    /* pairs: the pair; offline: the sender index */
    uint32_t receiver;  /* pairs: the receiver record of the pair */
    uint32_t in_flight;
    uint64_t next;      /* messages sent: the next j */
    uint64_t limit;
    double phase;       /* pacing offset in [0, 1) */
    uint32_t *per_r;    /* offline: the next seq for each recipient */
    bits acked, receipted;
} sender;

typedef struct {
    uint32_t conn;
    uint32_t sender;    /* pairs: the sender record of the pair */
    uint32_t stream;    /* pairs: the pair */
    uint64_t expect;    /* pairs: the next seq */
    uint32_t *expects;  /* offline: the next seq from each sender */
    bits delivered;     /* pairs */
} receiver;

static struct {
    const pb_config *cfg;
    uint32_t index;
    int ep, ctl;
    conn *c;
    uint32_t n;
    uint32_t *dirty, ndirty;
    uint32_t *queue, qhead, qlen;
    uint32_t connecting;
    sender *snd;
    uint32_t nsnd;
    receiver *rcv;
    uint32_t nrcv;
    uint8_t *rbuf;
    uint8_t *filler;
    uint8_t mask[4];
    uint8_t key_seed[12];
    uint32_t heartbeat;
    bool sending, started;
    uint64_t t_start, t0, t1;
    uint64_t now, epoch, next_sweep, next_pace;
    ws_limits lim;
    pb_stats st;
    pb_hist hist;
} W;

pb_device_key *pb_keys;

/* ---- small helpers ------------------------------------------------------------------ */

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    if (W.st.first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(W.st.first_error, sizeof W.st.first_error, fmt, ap);
    va_end(ap);
}

static uint64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000u +
           ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000u;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "parley-bench: worker %u: out of memory\n", W.index);
        _exit(3);
    }
    return p;
}

static bool bits_get(const bits *b, uint64_t i)
{
    return i < b->cap && (b->w[i / 64] >> (i % 64) & 1);
}

/* Makes room for bits 0 .. n-1 (cleared). */
static void bits_reserve(bits *b, uint64_t n)
{
    if (n <= b->cap)
        return;
    uint64_t cap = b->cap ? b->cap : 4096;
    while (cap < n)
        cap *= 2;
    uint64_t *w = realloc(b->w, cap / 8);
    if (!w) {
        fprintf(stderr, "parley-bench: worker %u: out of memory\n", W.index);
        _exit(3);
    }
    memset(w + b->cap / 64, 0, (cap - b->cap) / 8);
    b->w = w;
    b->cap = cap;
}

/* Sets bit i; returns whether it was set before. */
static bool bits_set(bits *b, uint64_t i)
{
    bits_reserve(b, i + 1);
    bool was = b->w[i / 64] >> (i % 64) & 1;
    b->w[i / 64] |= 1ull << (i % 64);
    return was;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Message ids as libparley makes them, the time first (docs/protocol.md): wall-clock ms
 * (48 bits), then this run (16 bits), the sending device (32) and its message number
 * (32), which is what the bench reads back from acks and receipts. */
static void put_message_id(uint8_t *id, uint32_t dev, uint64_t j)
{
    uint64_t ms = clock_wall_ms();
    for (int i = 0; i < 6; i++)
        id[i] = (uint8_t)(ms >> (8 * (5 - i)));
    id[6] = (uint8_t)(W.cfg->run_id >> 8);
    id[7] = (uint8_t)W.cfg->run_id;
    put_u32(id + 8, dev);
    put_u32(id + 12, (uint32_t)j);
}

/* True if id is one of this run's ids from device dev; *j gets its number. */
static bool own_message_id(const uint8_t *id, uint32_t dev, uint64_t *j)
{
    *j = get_u32(id + 12);
    return (uint16_t)(id[6] << 8 | id[7]) == (uint16_t)W.cfg->run_id && get_u32(id + 8) == dev;
}

/* ---- connections: output ---------------------------------------------------------- */

static uint32_t now_s(void)
{
    return (uint32_t)((W.now - W.epoch) / 1000000000u);
}

static uint8_t *out_reserve(conn *c, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 2048;
        while (cap < c->out_len + n)
            cap *= 2;
        uint8_t *grown = realloc(c->out, cap);
        if (!grown) {
            fprintf(stderr, "parley-bench: worker %u: out of memory\n", W.index);
            _exit(3);
        }
        c->out = grown;
        c->out_cap = (uint32_t)cap;
    }
    if (!c->dirty) {
        c->dirty = true;
        W.dirty[W.ndirty++] = (uint32_t)(c - W.c);
    }
    return c->out + c->out_len;
}

/* Appends one masked WebSocket frame holding len bytes of data. */
static void put_ws(conn *c, int opcode, const uint8_t *data, size_t len)
{
    uint8_t *p = out_reserve(c, WS_MAX_HEADER + len);
    size_t h = ws_frame_header(p, true, opcode, len, W.mask);
    memcpy(p + h, data, len);
    ws_mask(p + h, len, W.mask, 0);
    c->out_len += (uint32_t)(h + len);
    c->last_tx_s = now_s();
}

static void set_events(conn *c, bool want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.u64 = (uint64_t)(c - W.c)};
    epoll_ctl(W.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void drop(conn *c)
{
    if (c->state == C_DEAD)
        return;
    if (c->state < C_READY) {
        W.st.conn_failed++;
        if (c->state != C_IDLE)
            W.connecting--;
    } else {
        W.st.unexpected_closes++;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->out);
    free(c->hs);
    c->out = c->hs = NULL;
    c->out_len = c->out_cap = c->hs_len = 0;
    ws_reader_free(&c->rd);
    c->state = C_DEAD;
}

static void kill_conn(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void kill_conn(conn *c, const char *fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    static const char *names[] = {"idle", "connecting", "upgrading", "waiting for Hello",
                                  "waiting for Challenge", "waiting for Authenticated", "ready", "dead"};
    note("device %u (%s): %s", c->dev, names[c->state], why);
    c->kill = true;
}

static void flush_conn(conn *c)
{
    if (c->state == C_DEAD || c->state == C_CONNECTING || !c->out_len)
        return;
    ssize_t n = write(c->fd, c->out, c->out_len);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        kill_conn(c, "write: %s", strerror(errno));
        drop(c);
        return;
    }
    if (n == (ssize_t)c->out_len) {
        free(c->out);
        c->out = NULL;
        c->out_len = c->out_cap = 0;
        set_events(c, false);
        return;
    }
    if (n > 0) {
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (uint32_t)n;
    }
    set_events(c, true);
}

static void flush_all(void)
{
    for (uint32_t i = 0; i < W.ndirty; i++) {
        conn *c = &W.c[W.dirty[i]];
        c->dirty = false;
        flush_conn(c);
    }
    W.ndirty = 0;
}

/* ---- frames the bench sends ----------------------------------------------------------- */

static void send_connect(conn *c)
{
    uint8_t f[64], *q = f;
    *q++ = 0x08, *q++ = 1;          /* version */
    *q++ = 0x10, *q++ = REQ_CONNECT; /* request_id */
    *q++ = 0xB2, *q++ = 0x01;       /* Frame.connect (22) */
    *q++ = 22;
    *q++ = 0x0A, *q++ = 16;         /* account_id */
    memcpy(q, pb_keys[c->dev].account, 16);
    q += 16;
    *q++ = 0x10, *q++ = 1; /* device_id */
    *q++ = 0x18, *q++ = 1; /* receive */
    put_ws(c, WS_OP_BINARY, f, (size_t)(q - f));
}

static void send_authenticate(conn *c, const uint8_t nonce[32])
{
    uint8_t msg[sizeof AUTH_CONTEXT - 1 + 32 + 16 + 4], *m = msg;
    memcpy(m, AUTH_CONTEXT, sizeof AUTH_CONTEXT - 1);
    m += sizeof AUTH_CONTEXT - 1;
    memcpy(m, nonce, 32);
    m += 32;
    memcpy(m, pb_keys[c->dev].account, 16);
    m += 16;
    *m++ = 0, *m++ = 0, *m++ = 0, *m++ = 1; /* device 1, big-endian */
    uint8_t f[80], *q = f;
    *q++ = 0x08, *q++ = 1;
    *q++ = 0x10, *q++ = REQ_AUTH;
    *q++ = 0xC2, *q++ = 0x01; /* Frame.authenticate (24) */
    *q++ = 66;
    *q++ = 0x0A, *q++ = 64; /* signature */
    if (ps_xeddsa_sign(q, pb_keys[c->dev].priv, msg, sizeof msg, NULL) != PS_OK) {
        kill_conn(c, "signing the challenge failed");
        return;
    }
    q += 64;
    put_ws(c, WS_OP_BINARY, f, (size_t)(q - f));
}

static void send_deliver_ack(conn *c, uint64_t seq)
{
    uint8_t f[24], *q = f;
    *q++ = 0x08, *q++ = 1;
    *q++ = 0xFA, *q++ = 0x01; /* Frame.deliver_ack (31) */
    *q++ = (uint8_t)(1 + pbw_varint_len(seq));
    *q++ = 0x08; /* up_to_seq */
    q = pbw_put_varint(q, seq);
    put_ws(c, WS_OP_BINARY, f, (size_t)(q - f));
}

static void send_ping(conn *c)
{
    static const uint8_t f[] = {0x08, 1, 0x10, REQ_PING, 0x92, 0x02, 0}; /* Frame.ping (34), empty */
    put_ws(c, WS_OP_BINARY, f, sizeof f);
    W.st.pings++;
}

/* One Send, encoded straight into the connection's output:
 *   Frame{version, request_id, send(28): Send{message_id, recipient_account,
 *         messages: DeviceMessage{device_id 1, type 2, body}}} */
static void send_message(conn *c, uint32_t to, uint32_t stream, uint32_t seq, uint64_t j)
{
    size_t body = W.cfg->payload;
    size_t dm_len = 2 + 2 + 1 + pbw_varint_len(body) + body;
    size_t send_len = 18 + 18 + 1 + pbw_varint_len(dm_len) + dm_len;
    uint64_t rid = REQ_SEND_BASE + j;
    size_t frame_len = 2 + 1 + pbw_varint_len(rid) + 2 + pbw_varint_len(send_len) + send_len;
    uint8_t *p = out_reserve(c, WS_MAX_HEADER + frame_len);
    size_t h = ws_frame_header(p, true, WS_OP_BINARY, frame_len, W.mask);
    uint8_t *start = p + h, *q = start;
    *q++ = 0x08, *q++ = 1;
    *q++ = 0x10;
    q = pbw_put_varint(q, rid);
    *q++ = 0xE2, *q++ = 0x01; /* Frame.send (28) */
    q = pbw_put_varint(q, send_len);
    *q++ = 0x0A, *q++ = 16; /* message_id */
    put_message_id(q, c->dev, j);
    q += 16;
    *q++ = 0x12, *q++ = 16; /* recipient_account */
    memcpy(q, pb_keys[to].account, 16);
    q += 16;
    *q++ = 0x1A; /* messages */
    q = pbw_put_varint(q, dm_len);
    *q++ = 0x10, *q++ = 1; /* device_id */
    *q++ = 0x18, *q++ = 2; /* type: SignalMessage */
    *q++ = 0x22;           /* body */
    q = pbw_put_varint(q, body);
    put_u32(q, W.cfg->run_id);
    put_u32(q + 4, stream);
    put_u32(q + 8, seq);
    put_u32(q + 12, to);
    put_u64(q + 16, W.now);
    memcpy(q + PB_PAYLOAD_MIN, W.filler, body - PB_PAYLOAD_MIN);
    q += body;
    ws_mask(start, frame_len, W.mask, 0);
    c->out_len += (uint32_t)(h + frame_len);
    c->last_tx_s = now_s();
}

/* Sends up to n of sender s's next messages. */
static void send_some(sender *s, uint64_t n)
{
    conn *c = &W.c[s->conn];
    const pb_config *cfg = W.cfg;
    if (c->state != C_READY)
        return;
    if (n > s->limit - s->next)
        n = s->limit - s->next;
    if (n > cfg->window - s->in_flight)
        n = cfg->window - s->in_flight;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t j = s->next++;
        if (cfg->workload == PB_PAIRS) {
            send_message(c, 2 * s->stream + 1, s->stream, (uint32_t)j, j);
        } else {
            uint32_t r = (uint32_t)((j * cfg->senders + s->stream) % cfg->recipients);
            send_message(c, cfg->senders + r, s->stream, s->per_r[r]++, j);
        }
        s->in_flight++;
        W.st.sent++;
        if (!W.st.first_send)
            W.st.first_send = W.now;
    }
}

/* Full speed: keep the window full until the stop time (pairs) or the quota. */
static void pump(sender *s)
{
    if (!W.started || W.cfg->rate > 0 || W.now >= W.t1)
        return;
    send_some(s, UINT64_MAX);
}

/* Paced: sender s may have sent floor(elapsed * rate_per_sender + phase) by now. */
static void pace(void)
{
    double per = W.cfg->rate / W.cfg->pairs, elapsed = (double)(W.now - W.t_start) * 1e-9;
    for (uint32_t i = 0; i < W.nsnd; i++) {
        sender *s = &W.snd[i];
        uint64_t allowed = (uint64_t)(elapsed * per + s->phase);
        if (allowed > s->next)
            send_some(s, allowed - s->next);
    }
}

/* ---- frames the bench receives ----------------------------------------------------- */

static void on_payload(conn *c, const uint8_t *acct, const uint8_t *mid, const uint8_t *b, size_t len)
{
    const pb_config *cfg = W.cfg;
    if (c->role != PB_ROLE_RECEIVER || len != cfg->payload || get_u32(b) != cfg->run_id ||
        get_u32(b + 12) != c->dev || !mid) {
        W.st.bad_payload++;
        note("device %u: a message that is not one of this run's messages to it", c->dev);
        return;
    }
    uint32_t stream = get_u32(b + 4), seq = get_u32(b + 8);
    uint64_t ts = get_u64(b + 16), mid_j;
    receiver *r = &W.rcv[c->slot];
    uint32_t from = cfg->workload == PB_PAIRS ? 2 * stream : stream;
    if ((cfg->workload == PB_PAIRS ? stream != r->stream : stream >= cfg->senders) || !acct ||
        memcmp(acct, pb_keys[from].account, 16) != 0 || !own_message_id(mid, from, &mid_j)) {
        W.st.bad_payload++;
        note("device %u: a message with the wrong sender (stream %u)", c->dev, stream);
        return;
    }
    if (cfg->workload == PB_PAIRS) {
        if (seq >= W.snd[r->sender].next) {
            W.st.bad_payload++;
            note("pair %u: message %u was never sent", stream, seq);
            return;
        }
        if (bits_set(&r->delivered, seq)) {
            W.st.duplicates++;
            note("pair %u: message %u delivered twice", stream, seq);
            return;
        }
        if (seq != r->expect) {
            W.st.out_of_order++;
            note("pair %u: message %u arrived when %llu was expected", stream, seq,
                 (unsigned long long)r->expect);
        }
        if (seq >= r->expect)
            r->expect = (uint64_t)seq + 1;
        if (W.now >= W.t0 && W.now < W.t1) {
            pb_hist_add(&W.hist, W.now > ts ? W.now - ts : 0);
            W.st.delivered_measured++;
        }
    } else {
        if (!r->expects)
            r->expects = xcalloc(cfg->senders, sizeof *r->expects);
        uint32_t *e = &r->expects[stream];
        if (seq < *e) {
            W.st.duplicates++;
            note("device %u: message %u from sender %u delivered twice or late (expected %u)", c->dev, seq,
                 stream, *e);
            return;
        }
        if (seq > *e) {
            W.st.out_of_order++;
            note("device %u: message %u from sender %u arrived when %u was expected", c->dev, seq, stream, *e);
        }
        *e = seq + 1;
    }
    W.st.delivered++;
    if (!W.st.first_deliver)
        W.st.first_deliver = W.now;
    W.st.last_deliver = W.now;
}

/* A DELIVERED receipt's message id: this sender's, sent, acked... and counted once. */
static void on_receipt_id(conn *c, const uint8_t *id, size_t len)
{
    uint64_t j;
    if (c->role != PB_ROLE_SENDER || len != 16 || !own_message_id(id, c->dev, &j)) {
        W.st.receipt_unknown++;
        note("device %u: a receipt for a message it did not send", c->dev);
        return;
    }
    sender *s = &W.snd[c->slot];
    bool delivered = j < s->next &&
                     (W.cfg->workload != PB_PAIRS || bits_get(&W.rcv[s->receiver].delivered, j));
    if (!delivered) {
        W.st.receipt_unknown++;
        note("device %u: a receipt for message %llu, which was not delivered", c->dev, (unsigned long long)j);
        return;
    }
    if (bits_set(&s->receipted, j)) {
        W.st.receipt_duplicates++;
        note("device %u: two receipts for message %llu", c->dev, (unsigned long long)j);
        return;
    }
    W.st.receipts++;
    W.st.last_receipt = W.now;
}

static bool on_envelope(conn *c, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len, *acct = NULL, *mid = NULL, *body = NULL, *receipt = NULL;
    size_t body_len = 0, receipt_len = 0;
    uint64_t seq = 0;
    bool bad = false, has_seq = false, has_notice = false;
    pbw_field f;
    while (pbw_next_field(&p, end, &f, &bad)) {
        if (f.field == 1 && f.wire == 0)
            seq = f.v, has_seq = true;
        else if (f.field == 2 && f.wire == 2 && f.len == 16)
            acct = f.data;
        else if (f.field == 4 && f.wire == 2 && f.len == 16)
            mid = f.data;
        else if (f.field == 7 && f.wire == 2)
            body = f.data, body_len = f.len;
        else if (f.field == 8 && f.wire == 2)
            receipt = f.data, receipt_len = f.len;
        else if (f.field == 9 && f.wire == 0)
            has_notice = true;
    }
    if (bad || !has_seq || seq <= c->last_seq) {
        W.st.protocol_errors++;
        kill_conn(c, bad ? "a malformed Envelope" : "an Envelope out of seq order");
        return false;
    }
    c->last_seq = seq;
    if (receipt) {
        const uint8_t *rp = receipt, *rend = receipt + receipt_len;
        uint64_t status = 0;
        while (pbw_next_field(&rp, rend, &f, &bad)) {
            if (f.field == 1 && f.wire == 0)
                status = f.v;
            else if (f.field == 4 && f.wire == 2)
                on_receipt_id(c, f.data, f.len);
        }
        if (bad || status != PARLEY__RECEIPT_STATUS__DELIVERED) {
            W.st.unexpected_envelopes++;
            note("device %u: a receipt with status %llu", c->dev, (unsigned long long)status);
        }
    } else if (body) {
        on_payload(c, acct, mid, body, body_len);
    } else if (has_notice && !acct) {
        W.st.notices++; /* "prekeys running low": acked with the rest */
    } else {
        W.st.unexpected_envelopes++;
        note("device %u: an envelope with neither body nor receipt", c->dev);
    }
    return true;
}

static void on_deliver(conn *c, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    bool bad = false, drained = false, any = false;
    pbw_field f;
    if (c->state != C_READY) {
        W.st.protocol_errors++;
        kill_conn(c, "Deliver before authentication");
        return;
    }
    while (pbw_next_field(&p, end, &f, &bad)) {
        if (f.field == 1 && f.wire == 2) {
            if (!on_envelope(c, f.data, f.len))
                return;
            any = true;
        } else if (f.field == 2 && f.wire == 0) {
            drained = f.v != 0;
        }
    }
    if (bad) {
        W.st.protocol_errors++;
        kill_conn(c, "a malformed Deliver");
        return;
    }
    if (any)
        send_deliver_ack(c, c->last_seq);
    if (drained && !c->drained) {
        c->drained = true;
        W.st.drained++;
        W.st.last_drained = W.now;
    }
}

static void on_send_ack(conn *c, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len, *id = NULL;
    bool bad = false;
    pbw_field f;
    while (pbw_next_field(&p, end, &f, &bad))
        if (f.field == 1 && f.wire == 2 && f.len == 16)
            id = f.data;
    sender *s = c->role == PB_ROLE_SENDER ? &W.snd[c->slot] : NULL;
    uint64_t j = 0;
    if (bad || !s || !id || !own_message_id(id, c->dev, &j) || j >= s->next ||
        !s->in_flight || bits_set(&s->acked, j)) {
        W.st.protocol_errors++;
        note("device %u: a SendAck for no Send in flight", c->dev);
        return;
    }
    s->in_flight--;
    W.st.acked++;
    W.st.last_ack = W.now;
    pump(s);
}

static void on_error_frame(conn *c, uint64_t rid, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    bool bad = false;
    uint64_t code = 0;
    char reason[96] = "";
    pbw_field f;
    while (pbw_next_field(&p, end, &f, &bad)) {
        if (f.field == 1 && f.wire == 0)
            code = f.v;
        else if (f.field == 2 && f.wire == 2)
            snprintf(reason, sizeof reason, "%.*s", (int)(f.len < 95 ? f.len : 95), (const char *)f.data);
    }
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&parley__error_code__descriptor, (int)code);
    W.st.error_frames++;
    note("device %u: Error %s (%llu) for request %llu: %s", c->dev, v ? v->name : "?", (unsigned long long)code,
         (unsigned long long)rid, reason);
    if (rid >= REQ_SEND_BASE && c->role == PB_ROLE_SENDER && W.snd[c->slot].in_flight) {
        W.snd[c->slot].in_flight--; /* not stored: the run fails, but the window moves on */
        W.st.send_errors++;
    }
    if (c->state < C_READY)
        kill_conn(c, "Error %s during authentication: %s", v ? v->name : "?", reason);
}

static bool on_ws_message(void *ctx, int opcode, uint8_t *data, size_t len)
{
    conn *c = ctx;
    if (c->kill)
        return false;
    if (opcode != WS_OP_BINARY) {
        W.st.protocol_errors++;
        kill_conn(c, "a text message from the server");
        return false;
    }
    const uint8_t *p = data, *end = data + len, *body = NULL;
    size_t body_len = 0;
    uint32_t which = 0;
    uint64_t rid = 0;
    bool bad = false;
    pbw_field f;
    while (pbw_next_field(&p, end, &f, &bad)) {
        if (f.field == 2 && f.wire == 0)
            rid = f.v;
        else if (f.field >= 16 && f.wire == 2)
            which = f.field, body = f.data, body_len = f.len;
    }
    if (bad || !which) {
        W.st.protocol_errors++;
        kill_conn(c, "an undecodable Frame");
        return false;
    }
    switch (which) {
    case 16:
        on_error_frame(c, rid, body, body_len);
        break;
    case 17: { /* Hello */
        const uint8_t *q = body, *qend = body + body_len;
        while (pbw_next_field(&q, qend, &f, &bad))
            if (f.field == 2 && f.wire == 0 && f.v > 0)
                W.heartbeat = (uint32_t)f.v;
        if (c->state != C_HELLO) {
            W.st.protocol_errors++;
            kill_conn(c, "a second Hello");
            break;
        }
        W.st.conn_open++;
        send_connect(c);
        c->state = C_CHALLENGE;
        break;
    }
    case 23: { /* Challenge */
        const uint8_t *q = body, *qend = body + body_len, *nonce = NULL;
        while (pbw_next_field(&q, qend, &f, &bad))
            if (f.field == 1 && f.wire == 2 && f.len == 32)
                nonce = f.data;
        if (c->state != C_CHALLENGE || !nonce || rid != REQ_CONNECT) {
            W.st.protocol_errors++;
            kill_conn(c, "an unexpected Challenge");
            break;
        }
        send_authenticate(c, nonce);
        c->state = C_AUTH;
        break;
    }
    case 25: /* Authenticated */
        if (c->state != C_AUTH || rid != REQ_AUTH) {
            W.st.protocol_errors++;
            kill_conn(c, "an unexpected Authenticated");
            break;
        }
        c->state = C_READY;
        W.connecting--;
        W.st.authed++;
        W.st.last_auth = W.now;
        break;
    case 29:
        on_send_ack(c, body, body_len);
        break;
    case 30:
        on_deliver(c, body, body_len);
        break;
    case 35:
        W.st.pongs++;
        break;
    default:
        W.st.protocol_errors++;
        note("device %u: an unexpected frame (field %u)", c->dev, which);
        break;
    }
    return !c->kill;
}

static bool on_ws_control(void *ctx, int opcode, const uint8_t *data, size_t len)
{
    conn *c = ctx;
    if (opcode == WS_OP_PING) {
        put_ws(c, WS_OP_PONG, data, len);
    } else if (opcode == WS_OP_CLOSE) {
        unsigned code = len >= 2 ? (unsigned)(data[0] << 8 | data[1]) : 1005;
        int rlen = len > 2 ? (int)len - 2 : 0;
        kill_conn(c, "closed by the server: %u %.*s", code, rlen, len > 2 ? (const char *)data + 2 : "");
        return false;
    }
    return !c->kill;
}

static const ws_handlers handlers = {on_ws_message, on_ws_control};

/* ---- connecting --------------------------------------------------------------------- */

static void ws_key(const conn *c, char out[WS_KEY_LEN + 1])
{
    uint8_t raw[16];
    memcpy(raw, W.key_seed, 12);
    put_u32(raw + 12, (uint32_t)(c - W.c));
    sodium_bin2base64(out, WS_KEY_LEN + 1, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
}

static void start_connect(conn *c)
{
    const pb_config *cfg = W.cfg;
    W.st.conn_started++;
    if (!W.st.first_connect)
        W.st.first_connect = W.now;
    W.connecting++;
    c->state = C_CONNECTING;
    int one = 1;
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000002u + c->dev % cfg->sources);
    dst.sin_addr.s_addr = htonl(0x7f000001u);
    dst.sin_port = htons(cfg->port);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        kill_conn(c, "socket: %s", strerror(errno));
        drop(c);
        return;
    }
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0) {
        kill_conn(c, "bind to 127.0.0.%u: %s", 2 + c->dev % cfg->sources, strerror(errno));
        drop(c);
        return;
    }
    if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS) {
        kill_conn(c, "connect: %s", strerror(errno));
        drop(c);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = (uint64_t)(c - W.c)};
    c->want_out = true;
    if (epoll_ctl(W.ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        kill_conn(c, "epoll_ctl: %s", strerror(errno));
        drop(c);
    }
}

static void connected(conn *c)
{
    int err = 0;
    socklen_t elen = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
        err = errno;
    if (err) {
        kill_conn(c, "connect: %s", strerror(err));
        drop(c);
        return;
    }
    char key[WS_KEY_LEN + 1], host[32], req[320];
    ws_key(c, key);
    snprintf(host, sizeof host, "127.0.0.1:%u", W.cfg->port);
    size_t n = ws_handshake_request(req, sizeof req, host, "/", key, NULL);
    c->state = C_UPGRADING;
    memcpy(out_reserve(c, n), req, n);
    c->out_len += (uint32_t)n;
    set_events(c, false); /* flush sets EPOLLOUT again if the request does not go at once */
}

/* The 101 response, checked against our key. */
static bool response_ok(const conn *c, const char *head, size_t len)
{
    char key[WS_KEY_LEN + 1];
    const char *why;
    ws_key(c, key);
    return ws_handshake_check_response(head, len, key, &why) == 101;
}

static void on_handshake_bytes(conn *c, uint8_t *data, size_t len)
{
    uint8_t *buf = data;
    size_t blen = len;
    if (c->hs || !ws_handshake_head_len((const char *)data, len)) { /* an incomplete head: keep it */
        if (c->hs_len + len > HANDSHAKE_MAX) {
            kill_conn(c, "an oversized handshake response");
            return;
        }
        if (!c->hs)
            c->hs = xcalloc(1, HANDSHAKE_MAX);
        memcpy(c->hs + c->hs_len, data, len);
        c->hs_len += (uint16_t)len;
        buf = c->hs;
        blen = c->hs_len;
    }
    size_t head = ws_handshake_head_len((const char *)buf, blen);
    if (!head)
        return;
    if (!response_ok(c, (const char *)buf, head)) {
        int line = 0;
        while (line < (int)head && buf[line] != '\r')
            line++;
        kill_conn(c, "the upgrade was refused: %.*s", line, (const char *)buf);
        return;
    }
    c->state = C_HELLO;
    ws_reader_init(&c->rd, false);
    if (blen > head) {
        int rc = ws_reader_feed(&c->rd, buf + head, blen - head, &W.lim, &handlers, c);
        if (rc && !c->kill)
            kill_conn(c, "a WebSocket protocol error (%d)", rc);
    }
    free(c->hs);
    c->hs = NULL;
    c->hs_len = 0;
}

static void on_readable(conn *c)
{
    ssize_t n = read(c->fd, W.rbuf, READ_BUF);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        kill_conn(c, "read: %s", strerror(errno));
    } else if (n == 0) {
        kill_conn(c, "the server closed the connection");
    } else {
        W.now = clock_mono_ns();
        if (c->state == C_UPGRADING) {
            on_handshake_bytes(c, W.rbuf, (size_t)n);
        } else {
            int rc = ws_reader_feed(&c->rd, W.rbuf, (size_t)n, &W.lim, &handlers, c);
            if (rc && !c->kill)
                kill_conn(c, "a WebSocket protocol error (%d)", rc);
        }
    }
    if (c->kill)
        drop(c);
}

static void on_conn_event(conn *c, uint32_t events)
{
    if (c->state == C_DEAD || c->state == C_IDLE)
        return;
    if (c->state == C_CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            connected(c);
        return;
    }
    if (events & EPOLLOUT)
        flush_conn(c);
    if (c->state != C_DEAD && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        on_readable(c);
}

/* ---- commands ---------------------------------------------------------------------- */

static void reply(const void *data, size_t len)
{
    if (send(W.ctl, data, len, MSG_NOSIGNAL) != (ssize_t)len)
        _exit(4);
}

static void fill_gauges(void)
{
    W.st.cpu_ns = cpu_ns();
    W.st.in_flight = 0;
    for (uint32_t i = 0; i < W.nsnd; i++)
        W.st.in_flight += W.snd[i].in_flight;
}

/* Pairs: every acked message delivered, every delivered one's receipt in. */
static void final_checks(void)
{
    if (W.cfg->workload != PB_PAIRS)
        return;
    W.st.missing = W.st.receipts_missing = 0;
    for (uint32_t i = 0; i < W.nsnd; i++) {
        sender *s = &W.snd[i];
        receiver *r = &W.rcv[s->receiver];
        for (uint64_t j = 0; j < s->next; j++) {
            bool delivered = bits_get(&r->delivered, j);
            W.st.missing += bits_get(&s->acked, j) && !delivered;
            W.st.receipts_missing += delivered && !bits_get(&s->receipted, j);
        }
    }
}

static void on_command(void)
{
    pb_cmd cmd;
    ssize_t n = recv(W.ctl, &cmd, sizeof cmd, 0);
    if (n < 0 && errno == EINTR)
        return;
    if (n != (ssize_t)sizeof cmd)
        _exit(n == 0 ? 0 : 4); /* the parent went away */
    switch (cmd.cmd) {
    case PB_CMD_CONNECT:
        for (uint32_t i = 0; i < W.n; i++)
            if ((W.c[i].role & cmd.roles) && W.c[i].state == C_IDLE && !W.c[i].queued) {
                W.c[i].queued = true;
                W.queue[W.qlen++] = i;
            }
        break;
    case PB_CMD_SEND:
        W.sending = true;
        W.t_start = cmd.t_start;
        W.t0 = cmd.t0;
        W.t1 = cmd.t1;
        break;
    case PB_CMD_QUERY:
        fill_gauges();
        reply(&W.st, sizeof W.st);
        break;
    case PB_CMD_FINAL:
        fill_gauges();
        final_checks();
        reply(&W.st, sizeof W.st);
        reply(&W.hist, sizeof W.hist);
        break;
    case PB_CMD_QUIT:
        for (uint32_t i = 0; i < W.n; i++)
            if (W.c[i].fd >= 0)
                close(W.c[i].fd);
        _exit(0);
    default:
        _exit(4);
    }
}

/* ---- the loop -------------------------------------------------------------------------- */

static void tick(void)
{
    while (W.connecting < W.cfg->concurrency && W.qhead < W.qlen)
        start_connect(&W.c[W.queue[W.qhead++]]);
    if (W.sending && !W.started && W.now >= W.t_start) {
        W.started = true;
        for (uint32_t i = 0; i < W.nsnd; i++)
            pump(&W.snd[i]);
    }
    if (W.started && W.cfg->rate > 0 && W.now < W.t1 && W.now >= W.next_pace) {
        W.next_pace = W.now + 1000000u; /* a 1 ms tick */
        pace();
    }
    if (W.now >= W.next_sweep) { /* a Ping on every connection quiet for half the heartbeat */
        W.next_sweep = W.now + 1000000000u;
        uint32_t quiet = W.heartbeat > 1 ? W.heartbeat / 2 : 1, t = now_s();
        for (uint32_t i = 0; i < W.n; i++)
            if (W.c[i].state == C_READY && t - W.c[i].last_tx_s >= quiet)
                send_ping(&W.c[i]);
    }
}

static int loop_timeout(void)
{
    if (W.sending && !W.started)
        return W.t_start > W.now ? (int)((W.t_start - W.now) / 1000000u) + 1 : 0;
    if (W.started && W.cfg->rate > 0 && W.now < W.t1)
        return W.next_pace > W.now ? (int)((W.next_pace - W.now + 999999u) / 1000000u) : 0;
    return 250;
}

static void setup(const pb_config *cfg, uint32_t index, int ctl)
{
    W.cfg = cfg;
    W.index = index;
    W.ctl = ctl;
    W.heartbeat = 30;
    W.epoch = W.now = clock_mono_ns();
    W.next_sweep = W.now + 1000000000u;
    W.lim = (ws_limits){.max_frame = 64u << 20, .max_message = 64u << 20};
    W.rbuf = xcalloc(1, READ_BUF);
    W.filler = xcalloc(1, cfg->payload);
    memset(W.filler, 0xA5, cfg->payload);
    randombytes_buf(W.mask, sizeof W.mask);
    randombytes_buf(W.key_seed, sizeof W.key_seed);
    pb_hist_init(&W.hist);
    for (uint32_t d = 0; d < cfg->devices; d++)
        W.n += pb_owner(cfg, d) == index;
    W.c = xcalloc(W.n, sizeof *W.c);
    W.dirty = xcalloc(W.n, sizeof *W.dirty);
    W.queue = xcalloc(W.n, sizeof *W.queue);
    uint32_t i = 0, senders = 0, receivers = 0;
    for (uint32_t d = 0; d < cfg->devices; d++) {
        if (pb_owner(cfg, d) != index)
            continue;
        conn *c = &W.c[i++];
        c->fd = -1;
        c->dev = d;
        c->role = (uint8_t)pb_role_of(cfg, d);
        senders += c->role == PB_ROLE_SENDER;
        receivers += c->role == PB_ROLE_RECEIVER;
    }
    W.snd = xcalloc(senders, sizeof *W.snd);
    W.rcv = xcalloc(receivers, sizeof *W.rcv);
    for (i = 0; i < W.n; i++) {
        conn *c = &W.c[i];
        if (c->role == PB_ROLE_SENDER) {
            sender *s = &W.snd[c->slot = W.nsnd++];
            s->conn = i;
            if (cfg->workload == PB_PAIRS) {
                s->stream = c->dev / 2;
                s->limit = UINT64_MAX;
                s->phase = (double)s->stream / cfg->pairs;
            } else {
                s->stream = c->dev;
                s->limit = pb_sender_quota(cfg, c->dev);
                s->per_r = xcalloc(cfg->recipients, sizeof *s->per_r);
                bits_reserve(&s->acked, s->limit); /* sized once */
                bits_reserve(&s->receipted, s->limit);
            }
        } else if (c->role == PB_ROLE_RECEIVER) {
            receiver *r = &W.rcv[c->slot = W.nrcv++];
            r->conn = i;
            r->stream = c->dev / 2;
        }
    }
    if (cfg->workload == PB_PAIRS) /* a pair's sender and receiver live in the same worker */
        for (i = 0; i < W.nsnd; i++) {
            sender *s = &W.snd[i];
            conn *rc = &W.c[s->conn + 1]; /* devices 2p and 2p+1 are consecutive here */
            s->receiver = rc->slot;
            W.rcv[rc->slot].sender = i;
        }
    W.ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = CTL_EVENT};
    if (W.ep < 0 || epoll_ctl(W.ep, EPOLL_CTL_ADD, ctl, &ev) != 0) {
        fprintf(stderr, "parley-bench: worker %u: epoll: %s\n", index, strerror(errno));
        _exit(3);
    }
}

void pb_worker_main(const pb_config *cfg, uint32_t index, int ctl)
{
    setup(cfg, index, ctl);
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(W.ep, evs, 512, loop_timeout());
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "parley-bench: worker %u: epoll_wait: %s\n", index, strerror(errno));
            _exit(3);
        }
        W.now = clock_mono_ns();
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == CTL_EVENT)
                on_command();
            else
                on_conn_event(&W.c[evs[i].data.u64], evs[i].events);
        }
        W.now = clock_mono_ns();
        tick();
        flush_all();
    }
}
