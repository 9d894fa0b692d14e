/* ws_conn.c - WebSocket connections on libuv (see ws_conn.h).
 *
 * Hanging up politely: after a close frame (or an HTTP error) we shut down our sending
 * side and keep reading and discarding until the peer's FIN or a deadline, then close.
 * Closing at once with unread input would make the kernel send a reset, and a client
 * still writing a large message would lose our close frame (it would see 1006). */
#include "ws_conn.h"

#include <malloc.h>
#include <sanitizer/asan_interface.h> /* no-ops unless built with AddressSanitizer */
#include <stdlib.h>
#include <string.h>

#include "upgrade.h"

#define LINGER_MS 1000
#define SWEEP_MS 250
#define WRITE_QUEUE_MAX (16u << 20) /* a peer this far behind in reading is cut off */
#define UNTRUSTED_QUEUE_MAX (64u << 10) /* the same before it authenticated */
#define UNTRUSTED_MESSAGE_MAX (64u << 10) /* the largest message before it authenticated */
#define OFFENDER_QUEUE (256u << 10) /* over the output budget, queues this large are cut */
#define TRIM_AFTER_CLOSES 256       /* closes between two returns of free memory to the system */
#define TRIM_QUIET_SWEEPS 4         /* or sweeps without a close, after some */
#define TRIM_EVERY_MS 5000          /* and then not more often than this */

/* glibc's malloc_trim works on glibc's arenas: under AddressSanitizer, whose allocator
 * they are not, it breaks glibc's own bookkeeping (an assertion at thread exit). */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN_BUILD 1
#endif
#endif
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(ASAN_BUILD)
#define RETURN_FREE_MEMORY 1
#endif

/* Bytes handed to the kernel's write queues and not yet written, all threads together:
 * past the output budget the connections with the largest queues are cut first. */
static size_t queued_total;

/* Connections come from slabs of the thread, not one malloc each: no allocator header
 * or size-class rounding per connection, and no long-lived connections scattered among
 * the short-lived buffers of the heap (idle memory per connection, docs/bench.md). A
 * freed slot is reused by the next connection; slabs go when the thread stops. */
#define SLAB_SLOTS 64

typedef union conn_slot {
    union conn_slot *next_free;
    ws_conn c;
} conn_slot;

struct conn_slab {
    struct conn_slab *next;
    conn_slot slots[SLAB_SLOTS];
};

/* A free slot is poisoned for AddressSanitizer (all but its link), so a connection used
 * after it was closed is still reported, as it was when each came from malloc. */
static void slot_poison(conn_slot *slot)
{
    ASAN_POISON_MEMORY_REGION((char *)slot + sizeof slot->next_free, sizeof *slot - sizeof slot->next_free);
}

static ws_conn *conn_alloc(ws_thread *t)
{
    if (!t->free_slots) {
        struct conn_slab *slab = malloc(sizeof *slab);
        if (!slab)
            return NULL;
        slab->next = t->slabs;
        t->slabs = slab;
        for (size_t i = 0; i < SLAB_SLOTS; i++) {
            slab->slots[i].next_free = t->free_slots;
            t->free_slots = &slab->slots[i];
            slot_poison(&slab->slots[i]);
        }
    }
    conn_slot *slot = t->free_slots;
    t->free_slots = slot->next_free;
    ASAN_UNPOISON_MEMORY_REGION(slot, sizeof *slot);
    memset(&slot->c, 0, sizeof slot->c);
    return &slot->c;
}

static void conn_free(ws_thread *t, ws_conn *c)
{
    conn_slot *slot = (conn_slot *)c;
    slot->next_free = t->free_slots;
    t->free_slots = slot;
    slot_poison(slot);
}

/* One write handed to libuv; while c->out points to it, frames are still added. */
typedef struct ws_out {
    uv_write_t req;
    ws_conn *c;
    uint32_t len, cap;
    bool hang_up_after;
    uint8_t data[];
} write_req;

static void on_written(uv_write_t *req, int status);

/* Hands the gathered frames to libuv. */
static void flush_out(ws_conn *c)
{
    write_req *w = c->out;
    if (!w)
        return;
    c->out = NULL;
    uv_buf_t buf = uv_buf_init((char *)w->data, w->len);
    if (uv_is_closing((uv_handle_t *)&c->tcp) ||
        uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) {
        free(w);
        ws_conn_abort(c);
        return;
    }
    __atomic_add_fetch(&queued_total, w->len, __ATOMIC_RELAXED);
}

static void on_flush(uv_prepare_t *h)
{
    ws_thread *t = h->data;
    for (size_t i = 0; i < t->ndirty; i++)
        flush_out(t->dirty[i]);
    t->ndirty = 0;
}

/* The thread's handles go once it is stopping and has no connections left. */
static void release_thread(ws_thread *t)
{
    if (!uv_is_closing((uv_handle_t *)&t->sweep)) {
        uv_close((uv_handle_t *)&t->sweep, NULL);
        uv_close((uv_handle_t *)&t->flush, NULL);
        free(t->dirty);
        t->dirty = NULL;
        t->ndirty = t->dirty_cap = 0;
        while (t->slabs) { /* no connection is left in them */
            struct conn_slab *next = t->slabs->next;
            ASAN_UNPOISON_MEMORY_REGION(t->slabs, sizeof *t->slabs);
            free(t->slabs);
            t->slabs = next;
        }
        t->free_slots = NULL;
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    ws_conn *c = (ws_conn *)h;
    ws_thread *t = ws_conn_thread(c);
    if (c->upgraded && t->cb->on_closed)
        t->cb->on_closed(c);
    if (c->admitted && t->cb->released)
        t->cb->released(c);
    ws_reader_free(&c->reader);
    if (c->upgraded) { /* still listed even if a hang-up flushed it: unlist, drop the rest */
        for (size_t i = 0; i < t->ndirty; i++)
            if (t->dirty[i] == c) {
                t->dirty[i] = t->dirty[--t->ndirty];
                break;
            }
        free(c->out);
    } else {
        free(c->head);
    }
    t->nconns--;
    t->closes++;
    conn_free(t, c);
    if (t->stopping && !t->nconns)
        release_thread(t);
}

void ws_conn_abort(ws_conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    ws_conn *c = req->data;
    free(req);
    if (status < 0)
        ws_conn_abort(c);
}

static void on_written(uv_write_t *req, int status)
{
    write_req *w = (write_req *)req;
    ws_conn *c = w->c;
    __atomic_sub_fetch(&queued_total, w->len, __ATOMIC_RELAXED);
    if (status < 0) {
        ws_conn_abort(c);
    } else if (w->hang_up_after && !uv_is_closing((uv_handle_t *)&c->tcp)) {
        uv_shutdown_t *sd = malloc(sizeof *sd);
        if (!sd) {
            ws_conn_abort(c);
        } else {
            sd->data = c;
            if (uv_shutdown(sd, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
                free(sd);
                ws_conn_abort(c);
            }
        }
    } else if (c->tcp.write_queue_size == 0 && !c->closing && ws_conn_thread(c)->cb->on_writable) {
        ws_conn_thread(c)->cb->on_writable(c);
    }
    free(w);
}

size_t ws_conn_queued(const ws_conn *c)
{
    return c->tcp.write_queue_size + (c->upgraded && c->out ? c->out->len : 0);
}

/* Adds bytes to what the connection sends at the end of this turn of the loop; a
 * frame that hangs up goes at once, after what was gathered. */
static bool send_bytes(ws_conn *c, const uint8_t *hdr, size_t hlen, const uint8_t *body,
                       size_t blen, bool hang_up_after)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return false;
    ws_thread *t = ws_conn_thread(c);
    size_t queued = ws_conn_queued(c);
    bool untrusted = !c->trusted && t->trust_timeout_ms;
    /* a slow reader does not hold our memory: a small queue before authentication, a
     * larger one after, and over the budget for all the largest queues go first */
    if (queued > (untrusted ? UNTRUSTED_QUEUE_MAX : WRITE_QUEUE_MAX) ||
        (t->output_budget && queued >= OFFENDER_QUEUE &&
         __atomic_load_n(&queued_total, __ATOMIC_RELAXED) > t->output_budget)) {
        ws_conn_abort(c);
        return false;
    }
    size_t need = hlen + blen;
    bool gather = c->upgraded && !hang_up_after;
    write_req *w = gather ? c->out : NULL;
    if (c->upgraded && !gather) {
        flush_out(c); /* what was gathered goes first */
    } else if (gather && !w && t->ndirty == t->dirty_cap) { /* room to list it before anything changes */
        size_t cap = t->dirty_cap ? 2 * t->dirty_cap : 64;
        ws_conn **grown = realloc(t->dirty, cap * sizeof *grown);
        if (!grown) {
            ws_conn_abort(c);
            return false;
        }
        t->dirty = grown;
        t->dirty_cap = cap;
    }
    if (!w || w->len + need > w->cap) {
        size_t cap = w ? 2 * (size_t)w->cap : 0;
        if (cap < (w ? w->len : 0) + need)
            cap = (w ? w->len : 0) + need;
        write_req *grown = realloc(w, sizeof *grown + cap);
        if (!grown) {
            ws_conn_abort(c); /* what was gathered is freed when the handle closes */
            return false;
        }
        if (!w) {
            grown->len = 0;
            grown->c = c;
            grown->hang_up_after = hang_up_after;
        }
        grown->cap = (uint32_t)cap;
        w = grown;
    }
    memcpy(w->data + w->len, hdr, hlen);
    if (blen)
        memcpy(w->data + w->len + hlen, body, blen);
    w->len += (uint32_t)need;
    if (gather) {
        if (!c->out)
            t->dirty[t->ndirty++] = c;
        c->out = w;
        return true;
    }
    uv_buf_t buf = uv_buf_init((char *)w->data, w->len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) {
        free(w);
        ws_conn_abort(c);
        return false;
    }
    __atomic_add_fetch(&queued_total, w->len, __ATOMIC_RELAXED);
    return true;
}

static bool send_frame(ws_conn *c, int opcode, const uint8_t *payload, size_t len, bool hang_up)
{
    uint8_t hdr[WS_MAX_HEADER];
    size_t hlen = ws_frame_header(hdr, true, opcode, len, NULL);
    return send_bytes(c, hdr, hlen, payload, len, hang_up);
}

bool ws_conn_send(ws_conn *c, int opcode, const uint8_t *payload, size_t len)
{
    return !c->closing && send_frame(c, opcode, payload, len, false);
}

/* From now on input is dropped; the connection ends at the peer's FIN or the deadline. */
static void start_closing(ws_conn *c)
{
    c->closing = true;
    c->deadline_ms = uv_now(c->tcp.loop) + LINGER_MS;
}

void ws_conn_close(ws_conn *c, uint16_t code, const char *reason)
{
    if (c->closing)
        return;
    uint8_t payload[WS_MAX_CONTROL_PAYLOAD];
    size_t n = ws_close_payload(payload, code, reason);
    start_closing(c);
    send_frame(c, WS_OP_CLOSE, payload, n, true);
}

static bool on_frame_message(void *ctx, int opcode, uint8_t *data, size_t len)
{
    ws_conn *c = ctx;
    return ws_conn_thread(c)->cb->on_message(c, opcode, data, len) && !c->closing;
}

static bool on_frame_control(void *ctx, int opcode, const uint8_t *data, size_t len)
{
    ws_conn *c = ctx;
    if (opcode == WS_OP_PING) {
        send_frame(c, WS_OP_PONG, data, len, false);
    } else if (opcode == WS_OP_CLOSE) { /* answer with the peer's code, then hang up */
        start_closing(c);
        send_frame(c, WS_OP_CLOSE, data, len >= 2 ? 2 : 0, true);
        return false;
    }
    return true;
}

static const ws_handlers frame_handlers = {on_frame_message, on_frame_control};

static void feed(ws_conn *c, uint8_t *data, size_t len)
{
    ws_thread *t = ws_conn_thread(c);
    const ws_limits *lim = c->trusted || !t->trust_timeout_ms ? &t->limits : &t->untrusted;
    int code = ws_reader_feed(&c->reader, data, len, lim, &frame_handlers, c);
    if (code)
        ws_conn_close(c, (uint16_t)code, code == WS_CLOSE_TOO_BIG      ? "message too big"
                                         : code == WS_CLOSE_INVALID_DATA ? "invalid UTF-8"
                                                                         : "protocol error");
}

static void refuse(ws_conn *c, const char *resp, size_t len)
{
    start_closing(c);
    send_bytes(c, (const uint8_t *)resp, len, NULL, 0, true);
}

static void on_handshake_bytes(ws_conn *c, char *data, size_t len)
{
    char resp[WS_HANDSHAKE_MAX_RESPONSE];
    size_t resp_len = 0;
    size_t room = WS_HANDSHAKE_MAX_HEAD - c->head_len;
    size_t take = len < room ? len : room;
    char *grown = realloc(c->head, c->head_len + take + 1);
    if (!grown) {
        ws_conn_abort(c);
        return;
    }
    c->head = grown;
    memcpy(c->head + c->head_len, data, take);
    size_t before = c->head_len;
    c->head_len += (uint16_t)take;
    size_t head_len = ws_handshake_head_len(c->head, c->head_len);
    if (!head_len) {
        if (c->head_len == WS_HANDSHAKE_MAX_HEAD) {
            free(c->head);
            c->head = NULL;
            resp_len = ws_handshake_error(resp, 431);
            refuse(c, resp, resp_len);
        }
        return;
    }
    int status = upgrade_answer(c->head, head_len, resp, &resp_len);
    free(c->head);
    c->head = NULL; /* and so c->out, once upgraded, is NULL */
    if (status != 101) {
        refuse(c, resp, resp_len);
        return;
    }
    c->upgraded = true;
    ws_thread *t = ws_conn_thread(c);
    c->deadline_ms = t->idle_timeout_ms ? uv_now(t->loop) + t->idle_timeout_ms : 0;
    c->trust_deadline_ms = t->trust_timeout_ms ? uv_now(t->loop) + t->trust_timeout_ms : 0;
    send_bytes(c, (const uint8_t *)resp, resp_len, NULL, 0, false);
    if (t->cb->on_open)
        t->cb->on_open(c);
    size_t used = head_len - before; /* bytes of this read that belonged to the head */
    if (used < len && !c->closing)
        feed(c, (uint8_t *)data + used, len - used);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ws_thread *t = ws_conn_thread((ws_conn *)h);
    (void)suggested;
    *buf = uv_buf_init(t->read_buf, sizeof t->read_buf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    ws_conn *c = (ws_conn *)s;
    ws_thread *t = ws_conn_thread(c);
    if (n < 0) {
        ws_conn_abort(c);
        return;
    }
    if (n == 0 || c->closing)
        return;
    if (t->idle_timeout_ms && c->upgraded)
        c->deadline_ms = uv_now(t->loop) + t->idle_timeout_ms;
    if (!c->upgraded)
        on_handshake_bytes(c, buf->base, (size_t)n);
    else
        feed(c, (uint8_t *)buf->base, (size_t)n);
}

/* The connection behind a handle of t's loop, or NULL for the loop's other handles. */
static ws_conn *conn_of(uv_handle_t *h, ws_thread *t)
{
    return h->type == UV_TCP && h->data == &t->conn_mark && !uv_is_closing(h) ? (ws_conn *)h : NULL;
}

static void sweep_one(uv_handle_t *h, void *arg)
{
    ws_thread *t = arg;
    ws_conn *c = conn_of(h, t);
    if (!c)
        return;
    uint64_t now = uv_now(t->loop);
    if (c->upgraded && !c->closing && c->trust_deadline_ms && now >= c->trust_deadline_ms)
        ws_conn_close(c, WS_CLOSE_POLICY, "authentication timeout"); /* talk is not authentication */
    else if (!c->deadline_ms || now < c->deadline_ms)
        return;
    else if (c->closing || !c->upgraded)
        ws_conn_abort(c);
    else
        ws_conn_close(c, WS_CLOSE_GOING_AWAY, "idle timeout");
}

static void on_sweep(uv_timer_t *timer)
{
    ws_thread *t = timer->data;
    uv_walk(t->loop, sweep_one, t);
#ifdef RETURN_FREE_MEMORY
    /* what closed connections held goes back: after many closes, or a second after
     * closes stopped (at most every few seconds: a trim walks the whole heap) */
    t->quiet_sweeps = t->closes == t->closes_seen ? t->quiet_sweeps + 1 : 0;
    uint64_t now = uv_now(t->loop);
    if (t->closes >= TRIM_AFTER_CLOSES ||
        (t->closes && t->quiet_sweeps >= TRIM_QUIET_SWEEPS && now - t->trimmed_ms >= TRIM_EVERY_MS)) {
        t->closes = 0;
        t->trimmed_ms = now;
        malloc_trim(0);
    }
    t->closes_seen = t->closes;
#endif
}

void ws_thread_init(ws_thread *t, uv_loop_t *loop, const ws_conn_callbacks *cb,
                    ws_limits limits, uint32_t idle_timeout_ms, uint32_t trust_timeout_ms)
{
    t->loop = loop;
    t->cb = cb;
    t->limits = limits;
    t->idle_timeout_ms = idle_timeout_ms;
    t->trust_timeout_ms = trust_timeout_ms;
    t->untrusted = limits;
    if (t->untrusted.max_frame > UNTRUSTED_MESSAGE_MAX)
        t->untrusted.max_frame = UNTRUSTED_MESSAGE_MAX;
    if (t->untrusted.max_message > UNTRUSTED_MESSAGE_MAX)
        t->untrusted.max_message = UNTRUSTED_MESSAGE_MAX;
    t->output_budget = 0;
    t->closes = t->closes_seen = t->quiet_sweeps = 0;
    t->trimmed_ms = 0;
    t->nconns = 0;
    t->stopping = false;
    t->dirty = NULL;
    t->ndirty = t->dirty_cap = 0;
    t->slabs = NULL;
    t->free_slots = NULL;
    uv_timer_init(loop, &t->sweep);
    t->sweep.data = t;
    uv_timer_start(&t->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_prepare_init(loop, &t->flush);
    t->flush.data = t;
    uv_prepare_start(&t->flush, on_flush);
}

void ws_thread_accept(ws_thread *t, uv_stream_t *server)
{
    ws_conn *c = conn_alloc(t);
    if (!c)
        return;
    uv_tcp_init(t->loop, &c->tcp);
    c->tcp.data = &t->conn_mark;
    ws_reader_init(&c->reader, true);
    /* Until the upgrade, a deadline that traffic does not move bounds a slow or silent
     * handshake (a half-open connection holds a descriptor). */
    uint32_t until_upgraded = t->trust_timeout_ms ? t->trust_timeout_ms : t->idle_timeout_ms;
    c->deadline_ms = uv_now(t->loop) + (until_upgraded ? until_upgraded : 10000);
    t->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        ws_conn_abort(c);
        return;
    }
    struct sockaddr_storage peer;
    int plen = sizeof peer;
    uint32_t retry_s = 1;
    int refused = 0;
    if (t->cb->admit) {
        if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &plen) != 0)
            memset(&peer, 0, sizeof peer);
        refused = t->cb->admit(c, (const struct sockaddr *)&peer, &retry_s);
        c->admitted = refused >= 0;
        if (refused < 0) {
            ws_conn_abort(c);
            return;
        }
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        ws_conn_abort(c);
        return;
    }
    if (refused) { /* answered before its request is read: it may come back after the wait */
        char resp[160];
        int n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 %d %s\r\nRetry-After: %u\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                         refused, refused == 503 ? "Service Unavailable" : "Too Many Requests", retry_s);
        free(c->head);
        c->head = NULL;
        refuse(c, resp, (size_t)n);
    }
}

void ws_conn_postpone(ws_conn *c, uint32_t ms)
{
    uint64_t until = uv_now(ws_conn_thread(c)->loop) + ms;
    if (!c->trusted && !c->closing && c->upgraded && c->trust_deadline_ms && c->trust_deadline_ms < until)
        c->trust_deadline_ms = until;
}

void ws_conn_trust(ws_conn *c)
{
    ws_thread *t = ws_conn_thread(c);
    c->trusted = true;
    c->trust_deadline_ms = 0;
    if (c->upgraded && !c->closing)
        c->deadline_ms = t->idle_timeout_ms ? uv_now(t->loop) + t->idle_timeout_ms : 0;
}

static void stop_one(uv_handle_t *h, void *arg)
{
    ws_conn *c = conn_of(h, arg);
    if (c && c->upgraded && !c->closing)
        ws_conn_close(c, WS_CLOSE_GOING_AWAY, "server shutting down");
    else if (c && !c->closing)
        ws_conn_abort(c);
}

void ws_thread_stop(ws_thread *t)
{
    t->stopping = true;
    uv_walk(t->loop, stop_one, t);
    if (!t->nconns)
        release_thread(t);
}
