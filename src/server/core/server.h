/* server.h - parleyd's shared state: the configuration, the store, the bus, the rate
 * limits, the services and the I/O threads. Each connection lives on one I/O thread for
 * its life. Nothing here belongs to one service: a service keeps its own state in its
 * own file (service.h), so a new one adds no field here. */
#ifndef PARLEY_SERVER_H
#define PARLEY_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "admission.h"
#include "bus.h"
#include "clock.h"
#include "errors.h"
#include "options.h"
#include "rate_limit.h"
#include "store.h"
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
    uint32_t sms_log_max;        /* file:PATH past this many bytes becomes PATH.1 */
    uint64_t retention_ms;
    uint32_t heartbeat_seconds;
    uint32_t max_frame_bytes;
    uint32_t max_recipients;     /* device messages in one Send */
    uint32_t send_rate;          /* sends and receipts per second per device (burst: twice) */
    uint32_t conn_rate;          /* new connections per second per address; 0: no limit */
    uint32_t deliver_window;     /* unacknowledged envelopes per receiving connection */
    uint32_t fetch_rate;         /* prekey bundle fetches per second per device (burst: twice) */
    uint32_t max_conns_per_address; /* connections one address holds at once; 0: no cap */
    uint32_t max_connections;    /* 0 until parsed: the descriptor limit less a reserve */
    char trusted_proxies[512];   /* addresses exempt from the per-address limits */
    uint32_t auth_timeout_seconds; /* accept to upgrade, upgrade to authentication */
    uint32_t code_rate;          /* verification codes an address may ask for an hour */
    uint32_t code_global_rate;   /* codes the whole server sends a minute */
    uint32_t sms_queue;          /* SMS sends in flight at once; more are refused */
    uint32_t lookup_rate;        /* lookups per second per device, and per address */
    uint32_t lookup_daily;       /* lookups a device may make a day */
    uint32_t fetch_target_rate;  /* bundles with a one-time prekey handed out per account a minute */
    uint32_t output_budget;      /* bytes queued for all connections; past it the largest are cut */
    uint32_t inbox_max_envelopes, inbox_max_bytes; /* what one device's inbox holds (store_quota) */
    uint32_t daily_writes, daily_bytes;            /* what one account may write a UTC day */
    uint32_t group_creates;      /* groups one account may create a UTC day; 0: no limit */
} server_config;

/* Rate tables, each of token buckets keyed by a device, a client address or nothing
 * (one bucket for the server). A dispatch row names a class: its first table, and the
 * class takes a token from each of its tables (rate_class_tables, dispatch.c). */
enum {
    RATE_NONE = 0,
    RATE_SENDS,                  /* class; per device: sends, receipts, key uploads */
    RATE_FETCHES,                /* class; per device: prekey bundle fetches */
    RATE_CONNECTIONS,            /* per address: new connections (at accept, admission.h) */
    RATE_LOOKUPS,                /* class; per device a second, with the two below */
    RATE_LOOKUPS_ADDRESS,        /* per address a second */
    RATE_LOOKUPS_DAILY,          /* per device a day */
    RATE_CODES,                  /* class; per address an hour, with the one below */
    RATE_CODES_GLOBAL,           /* the server, a minute (what the SMS provider bills) */
    RATE_FETCH_TARGET,           /* per fetched account, a minute: one-time prekeys handed out */
    RATE_CLASSES
};

typedef struct server server;
typedef struct service service;

typedef struct {
    server *srv;
    int index;
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;              /* phase 1: stop accepting and reading, close connections */
    uv_async_t finish;            /* phase 2, after the store stopped: last answers, then end */
    store_home *home;             /* where this thread's store requests complete */
    ws_thread ws;
    uint8_t *scratch;             /* any service's, within one callback (frames being built) */
    size_t scratch_cap;
    pthread_t tid;
} io_thread;

struct server {
    server_config cfg;
    store *st;
    bus *bus;
    rate_table rates[RATE_CLASSES];
    admission admit;              /* who may connect (at accept) */
    const service *const *services;  /* NULL-terminated */
    const struct dispatch_table *dispatch;
    io_thread *io;
    int nio;
    uv_sem_t stopped;             /* posted by each I/O thread when phase 1 is done */
};

/* The server's life (io.c): services started, listeners on every thread, then the
 * two-phase stop. server_stop: no more input is read, so no more writes are submitted;
 * then the store completes what is queued; then the threads deliver the last answers
 * and end. Returns the store's counts. */
int server_start(server *srv, const service *const *services);
store_run_stats server_stop(server *srv);

/* The scratch buffer of t, grown to at least need bytes; NULL without memory. */
uint8_t *io_scratch(io_thread *t, size_t need);

#endif
