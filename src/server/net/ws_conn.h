/* ws_conn.h - WebSocket connections on a libuv loop: accept, opening handshake,
 * frames, ping/pong, closing handshake, heartbeat deadlines.
 *
 * One ws_thread per I/O thread owns a read buffer shared by all its connections
 * (an idle connection holds none), the list of its connections and one timer that
 * sweeps them for heartbeat and linger deadlines (no timer per connection).
 * Frames a connection sends during one turn of the loop are gathered and go out in one
 * write just before the loop polls again: a commit that acks 30 sends of a connection
 * costs one system call, not 30.
 * The user of this module sees only complete messages and lifecycle events. */
#ifndef PARLEY_NET_WS_CONN_H
#define PARLEY_NET_WS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "ws.h"

typedef struct ws_conn ws_conn;
typedef struct ws_thread ws_thread;

typedef struct {
    /* Optional, at accept, before anything is read: 0 takes the connection; an HTTP
     * status (503) refuses it at once with that status and Retry-After retry_after_s;
     * -1 closes it at once, unanswered. Both 0 and a status are released once, when the
     * connection goes. */
    int (*admit)(ws_conn *c, const struct sockaddr *peer, uint32_t *retry_after_s);
    void (*released)(ws_conn *c);
    /* The upgrade succeeded; the connection may send from now on. */
    void (*on_open)(ws_conn *c);
    /* A complete data message (WS_OP_TEXT or WS_OP_BINARY). Return false to stop
     * reading (e.g. after starting to close). */
    bool (*on_message)(ws_conn *c, int opcode, uint8_t *data, size_t len);
    /* The connection is gone; free what user points to. Called once per connection. */
    void (*on_closed)(ws_conn *c);
    /* Optional: everything queued was handed to the kernel (write_queue_size is 0);
     * a sender that paused for a slow reader may go on. */
    void (*on_writable)(ws_conn *c);
} ws_conn_callbacks;

struct ws_thread {
    uv_loop_t *loop;
    ws_limits limits;
    const ws_conn_callbacks *cb;
    uint32_t idle_timeout_ms;  /* close a connection silent this long (0: never) */
    uint32_t trust_timeout_ms; /* from accept to the upgrade, and from it to ws_conn_trust
                                  (authentication): not extended by traffic (0: none; the idle
                                  deadline applies as well).
                                  Until then a connection also gets a small output queue and
                                  small messages (64 KiB each) */
    ws_limits untrusted;       /* limits before ws_conn_trust */
    size_t output_budget;      /* bytes queued for all connections of all threads; past it,
                                  connections with large queues are cut (0: no budget) */
    uint32_t closes;           /* since free memory was last returned to the system */
    uint32_t closes_seen;      /* closes at the sweep before: none since means quiet */
    uint32_t quiet_sweeps;     /* sweeps in a row without a close */
    uint64_t trimmed_ms;       /* when free memory last went back (loop time) */
    uv_timer_t sweep;          /* the one timer: heartbeat and linger deadlines */
    uv_prepare_t flush;        /* before each poll: writes what connections gathered */
    ws_conn **dirty;           /* connections with gathered frames */
    size_t ndirty, dirty_cap;
    size_t nconns;
    struct conn_slab *slabs;   /* where connections come from (ws_conn.c) */
    union conn_slot *free_slots;
    /* Only its address is used: every connection's tcp.data points here, which names the
     * thread and tells its connections from the loop's other handles (uv_walk). */
    char conn_mark;
    bool stopping;
    char read_buf[64 * 1024];
};

/* An idle connection costs this struct and nothing else, so it carries no list links
 * or thread pointer: tcp (first, so a handle is its connection) has the thread in data. */
struct ws_conn {
    uv_tcp_t tcp;
    ws_reader reader;
    union {                  /* one pointer, as the two never live at once: */
        char *head;          /* until the upgrade, the HTTP request head */
        struct ws_out *out;  /* after it, frames gathered this turn of the loop, or NULL */
    };
    uint16_t head_len;
    bool upgraded : 1;
    bool closing : 1;        /* input is read and dropped until FIN or the deadline */
    bool trusted : 1;        /* ws_conn_trust was called: traffic extends the deadline */
    bool admitted : 1;       /* admit took it: released is owed */
    uint32_t admit_slot;     /* the admit callback's own (e.g. where it counted the address) */
    uint64_t deadline_ms;    /* idle deadline; when closing, the linger deadline */
    uint64_t trust_deadline_ms; /* until ws_conn_trust: it must be trusted by then (0: none) */
    void *user;
};

static inline ws_thread *ws_conn_thread(const ws_conn *c)
{
    return (ws_thread *)((char *)c->tcp.data - offsetof(ws_thread, conn_mark));
}

/* Sets up a thread's state on loop and starts its sweep timer. */
void ws_thread_init(ws_thread *t, uv_loop_t *loop, const ws_conn_callbacks *cb,
                    ws_limits limits, uint32_t idle_timeout_ms, uint32_t trust_timeout_ms);

/* The peer proved who it is: from now on the idle deadline applies, extended by traffic. */
void ws_conn_trust(ws_conn *c);

/* Before trust: the deadline is at least ms from now (the server itself is slow, e.g. a
 * verification code waits for its SMS provider). */
void ws_conn_postpone(ws_conn *c, uint32_t ms);

/* Accepts a pending connection from server into t. */
void ws_thread_accept(ws_thread *t, uv_stream_t *server);

/* Closes every connection with 1001 and lets the loop end once they are gone. */
void ws_thread_stop(ws_thread *t);

/* Sends one unfragmented data or control frame. Returns false if it could not. */
bool ws_conn_send(ws_conn *c, int opcode, const uint8_t *payload, size_t len);

/* Bytes sent and not yet taken by the kernel: a sender that should not run ahead of a
 * slow reader checks this. */
size_t ws_conn_queued(const ws_conn *c);

/* Sends a close frame with code and reason, then hangs up politely. */
void ws_conn_close(ws_conn *c, uint16_t code, const char *reason);

/* Closes the TCP connection at once (no close frame). */
void ws_conn_abort(ws_conn *c);

#endif
