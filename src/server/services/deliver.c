/* deliver.c - Deliver and DeliverAck (docs/protocol.md, "Messages"):
 *   A receiving connection claims its device on the bus once every write submitted
 *   before its authentication completed (store_sync), then gets its inbox: straight
 *   from the store, in seq order, never more than a window of unacknowledged envelopes.
 *   Online and offline devices take the same path: a commit wakes the device's claim,
 *   which reads its inbox.
 *   DeliverAck takes (deletes) what it acknowledges; the store puts delivered receipts
 *   in the authors' inboxes, and the authors are woken. */
#include <stdio.h>
#include <stdlib.h>

#include "pbwire.h"
#include "services.h"

#define DELIVER_FRAME_TARGET (64 * 1024) /* or max_frame_bytes if smaller */
#define WRITE_QUEUE_HIGH (1 << 20)       /* bytes queued for a connection before deliveries pause */

/* ---- Deliver --------------------------------------------------------------------- */

/* Deliver frames are written by hand from the stored envelopes: each stored envelope
 * is a packed Envelope without its seq, and protobuf lets the seq field come first,
 * so an envelope goes out as tag, length, seq field, stored bytes, with no unpacking.
 *   Frame   { 1: version = 1, 30: Deliver }
 *   Deliver { 1: Envelope (repeated), 2: drained } */
#define FRAME_HEAD_ROOM 16

typedef struct {
    store_read q;
    session *s;
    io_thread *t;
    size_t want;
    size_t frame_target; /* flush a Deliver frame before it grows past this */
    size_t budget;       /* bytes this pump may queue for the connection */
    size_t produced;
    size_t len;          /* Deliver content bytes after FRAME_HEAD_ROOM, in the thread's scratch */
    size_t count;
    uint64_t first_seq, last_seq;
    bool failed;
    bool full;           /* stopped at the byte budget, not at the end of the inbox */
} pump_read;

static void pump(session *s);

static uint8_t *reserve(io_thread *t, size_t need)
{
    return io_scratch(t, need);
}

static void flush_deliver(pump_read *d, bool drained)
{
    uint8_t *content = d->t->scratch + FRAME_HEAD_ROOM;
    size_t len = d->len;
    if (drained) {
        content[len++] = 0x10; /* field 2, varint */
        content[len++] = 1;
    }
    uint8_t head[FRAME_HEAD_ROOM], *h = head;
    *h++ = 0x08; /* Frame.version */
    *h++ = PARLEY_PROTOCOL_VERSION;
    *h++ = 0xF2; /* Frame.deliver: field 30, length-delimited, as a two-byte varint tag */
    *h++ = 0x01;
    h = pbw_put_varint(h, len);
    size_t hlen = (size_t)(h - head);
    memcpy(content - hlen, head, hlen);
    ws_conn_send(d->s->conn, WS_OP_BINARY, content - hlen, hlen + len);
    d->len = 0;
}

static bool add_envelope(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data, size_t len)
{
    pump_read *d = ctx;
    (void)stored_ms;
    size_t item = 1 + pbw_varint_len(seq) + len;
    size_t need = 1 + pbw_varint_len(item) + item;
    if (d->count && d->produced + need > d->budget) { /* the first always goes: progress */
        d->full = true;
        return false;
    }
    d->produced += need;
    if (d->len && d->len + need > d->frame_target)
        flush_deliver(d, false);
    if (!reserve(d->t, FRAME_HEAD_ROOM + d->len + need + 2)) { /* +2: the drained field */
        d->failed = true;
        return false;
    }
    uint8_t *w = d->t->scratch + FRAME_HEAD_ROOM + d->len;
    *w++ = 0x0A; /* Deliver.envelopes */
    w = pbw_put_varint(w, item);
    *w++ = 0x08; /* Envelope.seq */
    w = pbw_put_varint(w, seq);
    memcpy(w, data, len);
    d->len += need;
    if (!d->count++)
        d->first_seq = seq;
    d->last_seq = seq;
    return true;
}

/* The envelopes were shown to add_envelope; what was read goes out. */
static void pump_read_done(store_req *req, int rc)
{
    pump_read *d = (pump_read *)req;
    session *s = d->s;
    s->pump_reading = false;
    if (!session_returned(s) || !session_open(s)) {
        free(d);
        return;
    }
    if (rc != STORE_OK || d->failed) /* what was read still goes; the next ack or wake retries */
        fprintf(stderr, "parleyd: reading an inbox failed: %s\n", d->failed ? "out of memory" : store_strerror(rc));
    if (d->count) {
        if (s->delivered_seq == 0) /* the window counts from the first envelope handed out */
            s->acked_seq = d->first_seq - 1;
        s->delivered_seq = d->last_seq;
    }
    bool drained = rc == STORE_OK && !d->failed && !d->full && d->count < d->want && !s->drained_sent;
    if (d->len || drained)
        flush_deliver(d, drained);
    s->drained_sent |= drained;
    if (d->full) /* more is waiting: go on once the kernel took what is queued */
        s->pump_blocked = true;
    free(d);
    if (s->pump_again) {
        s->pump_again = false;
        pump(s);
    }
}

/* Delivers what the window allows. */
static void pump(session *s)
{
    if (!session_open(s) || !s->receive || s->state != SESSION_AUTHENTICATED || !s->claim.held)
        return;
    if (s->pump_reading) { /* one read at a time: this one goes on when it is back */
        s->pump_again = true;
        return;
    }
    io_thread *t = session_thread(s);
    const server_config *cfg = &t->srv->cfg;
    uint64_t in_flight = s->delivered_seq - s->acked_seq; /* seq distance: never less than the count */
    if (in_flight >= cfg->deliver_window)
        return; /* the next ack resumes */
    if (ws_conn_queued(s->conn) >= WRITE_QUEUE_HIGH) {
        s->pump_blocked = true; /* the write queue emptying resumes */
        return;
    }
    pump_read *d = calloc(1, sizeof *d);
    if (!d || !reserve(t, FRAME_HEAD_ROOM + 2)) {
        free(d);
        return;
    }
    d->s = s;
    d->t = t;
    d->want = cfg->deliver_window - in_flight;
    d->budget = WRITE_QUEUE_HIGH - ws_conn_queued(s->conn);
    d->frame_target = cfg->max_frame_bytes < DELIVER_FRAME_TARGET ? cfg->max_frame_bytes : DELIVER_FRAME_TARGET;
    d->q.req.done = pump_read_done;
    d->q.device = s->device;
    d->q.after = s->delivered_seq;
    d->q.max = d->want;
    d->q.fn = add_envelope;
    d->q.ctx = d;
    s->pump_reading = true;
    session_hold(s);
    store_read_inbox(t->srv->st, t->home, &d->q);
}

/* ---- a receiving connection starts ------------------------------------------------- */

/* It delivers only once every write submitted before its authentication is durable:
 * acks sent on the device's previous connection are then applied, and what they
 * acknowledged is not delivered again. */
typedef struct {
    store_sync_req r;
    session *s;
} sync_request;

static void synced(store_req *req, int status)
{
    sync_request *j = (sync_request *)req;
    session *s = j->s;
    free(j);
    if (!session_returned(s) || !session_open(s))
        return;
    if (status == STORE_REPLACED) { /* registered again while it authenticated */
        session_store_error(s, 0, status);
        return;
    }
    /* from now on every commit for the device wakes s, unless a newer connection won */
    if (!bus_claim_device(session_server(s)->bus, &s->claim)) {
        session_close_replaced(s, false);
        return;
    }
    pump(s);
}

static void authenticated(session *s)
{
    if (!s->receive)
        return;
    sync_request *j = calloc(1, sizeof *j);
    if (!j) {
        ws_conn_close(s->conn, WS_CLOSE_INTERNAL_ERROR, "out of memory");
        return;
    }
    j->r.req.done = synced;
    session_origin(s, &j->r.from);
    j->s = s;
    session_hold(s);
    store_sync(session_server(s)->st, session_thread(s)->home, &j->r);
}

/* ---- DeliverAck ------------------------------------------------------------------------ */

typedef struct {
    store_take r;
    server *srv;
} take_request;

static void taken(store_req *req, int status)
{
    take_request *j = (take_request *)req;
    if (status == STORE_OK)
        session_wake(j->srv, &j->r.receipts);
    else if (status != STORE_REPLACED) /* the envelopes stay and come again on the next connection */
        fprintf(stderr, "parleyd: an ack could not be stored: %s\n", store_strerror(status));
    store_entries_free(&j->r.receipts);
    free(j);
}

static void on_deliver_ack(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__DeliverAck *m = f->deliver_ack;
    (void)rid;
    /* only what this connection delivered can be acknowledged on it */
    uint64_t up_to = m->up_to_seq < s->delivered_seq ? m->up_to_seq : s->delivered_seq;
    if (!m->has_up_to_seq || up_to <= s->acked_seq)
        return;
    take_request *j = calloc(1, sizeof *j);
    if (!j)
        return; /* as if the ack was lost: the envelopes come again on the next connection */
    s->acked_seq = up_to;
    /* nothing to answer, and s may go before the take completes: it is not held */
    j->r.req.done = taken;
    session_origin(s, &j->r.from);
    j->r.up_to = up_to;
    j->r.now = clock_wall_ms();
    j->srv = session_server(s);
    store_take_inbox(j->srv->st, session_thread(s)->home, &j->r);
    pump(s);
}

/* ---- the hooks ----------------------------------------------------------------------------- */

static void writable(session *s)
{
    if (s->pump_blocked) { /* deliveries paused for a slow reader go on */
        s->pump_blocked = false;
        pump(s);
    }
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_DELIVER_ACK, true, RATE_NONE, on_deliver_ack},
    {0},
};

const service deliver_service = {
    .name = "deliver",
    .routes = routes,
    .authenticated = authenticated,
    .writable = writable,
    .inbox_grew = pump,
};
