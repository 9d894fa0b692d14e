/* server.h - parleyd's shared state: configuration, the store, the I/O threads and
 * the registration service. Each connection lives on one I/O thread for its life. */
#ifndef PARLEY_SERVER_H
#define PARLEY_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "clock.h"
#include "errors.h"
#include "options.h"
#include "rate_limit.h"
#include "routes.h"
#include "store.h"
#include "writer.h"
#include "ws_conn.h"

#define PARLEY_PROTOCOL_VERSION 1

/* WebSocket close code: another connection now speaks for this device (a newer one, or
 * a new registration of its number); the client should not reconnect. */
#define PARLEY_CLOSE_REPLACED 4000

typedef struct {
    opt_hostport listen;
    char data_dir[512];
    uint32_t threads;            /* 0 until parsed: one per core */
    char sms[1024];              /* "file:PATH" or "http://HOST[:PORT]/PATH" */
    uint64_t retention_ms;
    uint32_t heartbeat_seconds;
    uint32_t max_frame_bytes;
    uint64_t map_size;
    uint32_t max_recipients;     /* device messages in one Send */
    uint32_t send_rate;          /* sends and receipts per second per device (burst: twice) */
    uint32_t conn_rate;          /* new connections per second per address; 0: no limit */
    uint32_t deliver_window;     /* unacknowledged envelopes per receiving connection */
    uint32_t fetch_rate;         /* prekey bundle fetches per second per device (burst: twice) */
} server_config;

typedef struct server server;

typedef struct {
    server *srv;
    int index;
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;              /* phase 1: stop accepting and reading, close connections */
    uv_async_t finish;            /* phase 2, after the writer stopped: last answers, then end */
    writer_home home;             /* where the writer hands this thread's jobs back */
    route_mailbox mail;           /* wake-ups and kicks from other threads */
    uv_timer_t sweep;             /* retention sweeps (thread 0 only) */
    bool sweeping;                /* a sweep job is with the writer */
    uint8_t *deliver_buf;         /* scratch for building Deliver frames */
    size_t deliver_cap;
    ws_thread ws;
    pthread_t tid;
} io_thread;

/* One-time codes, in memory (a restart voids them; the user asks again). */
typedef struct code_entry {
    char phone[STORE_PHONE_MAX + 1];
    char code[7];
    uint64_t expires_ms;
    uint32_t attempts_left;
    uint64_t sent_ms[5];          /* when the last codes were sent, for the hourly limit */
    struct code_entry *next;
} code_entry;

struct server {
    server_config cfg;
    store *st;
    writer *wr;                   /* every write goes through it (group commit) */
    routes routes;                /* device -> its receiving connection */
    rate_table send_limit;        /* per device: sends and receipts */
    rate_table conn_limit;        /* per client address: new connections */
    rate_table fetch_limit;       /* per device: prekey bundle fetches */
    pthread_mutex_t codes_lock;
    code_entry *codes;
    io_thread *io;
    int nio;
    uv_sem_t stopped;             /* posted by each I/O thread when phase 1 is done */
};

/* I/O threads (io.c): listen with SO_REUSEPORT on every thread, run, stop.
 * Shutdown: io_stop (no more input is read, so no more writes are submitted; returns
 * when every thread got there), then writer_stop, then io_finish (the threads deliver
 * the last answers and end), then io_join. */
int io_start(server *srv);
void io_stop(server *srv);
void io_finish(server *srv);
void io_join(server *srv);

/* Per-connection protocol (peer.c). */
extern const ws_conn_callbacks peer_callbacks;

/* Sending one code by the configured provider (sms.c). Blocking; run off the loop. */
int sms_send(const char *provider, const char *phone, const char *code, char *err, size_t errlen);

#endif
