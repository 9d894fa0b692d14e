/* pb.h - parley-bench's shared pieces: the run's configuration, the devices' keys, the
 * counters and latency histogram a worker reports, and the commands the orchestrating
 * process sends its workers over a socketpair (docs/bench.md). */
#ifndef PARLEY_BENCH_PB_H
#define PARLEY_BENCH_PB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "clock.h"

enum { PB_IDLE, PB_PAIRS, PB_OFFLINE, PB_STORM };

/* A device's part in the run. */
enum { PB_ROLE_IDLE = 1, PB_ROLE_SENDER = 2, PB_ROLE_RECEIVER = 4 };

/* Payload of every message: run id, stream (pair or sender index), per-stream sequence
 * number, recipient device, send time (CLOCK_MONOTONIC ns), then filler. */
#define PB_PAYLOAD_MIN 24

typedef struct {
    int workload;
    uint32_t devices;     /* provisioned devices, global indices 0 .. devices-1 */
    uint32_t workers;
    uint32_t sources;     /* loopback source addresses 127.0.0.2 .. 127.0.0.(1+sources) */
    uint32_t concurrency; /* connection attempts in progress, per worker */
    uint16_t port;
    uint32_t run_id;      /* random: in every message id and payload */
    uint32_t window;      /* Sends without SendAck per sender */
    uint32_t payload;     /* bytes per message body */
    /* pairs: device 2p sends to device 2p+1 */
    uint32_t pairs;
    double rate;          /* total messages per second; 0: full speed */
    /* offline, storm: senders are devices 0 .. senders-1, recipient r is device senders+r;
     * a sender's j-th message is message k = j*senders + s, to recipient k % recipients */
    uint32_t senders, recipients;
    uint64_t messages;
} pb_config;

typedef struct {
    uint8_t account[16];
    uint8_t priv[32];
} pb_device_key;

/* Loaded by the parent before the workers fork. */
extern pb_device_key *pb_keys;

static inline uint32_t pb_owner(const pb_config *c, uint32_t dev)
{
    return (c->workload == PB_PAIRS ? dev / 2 : dev) % c->workers;
}

static inline int pb_role_of(const pb_config *c, uint32_t dev)
{
    if (c->workload == PB_IDLE)
        return PB_ROLE_IDLE;
    if (c->workload == PB_PAIRS)
        return dev % 2 ? PB_ROLE_RECEIVER : PB_ROLE_SENDER;
    return dev < c->senders ? PB_ROLE_SENDER : PB_ROLE_RECEIVER;
}

/* Messages sender s sends in offline/storm: k = j*S + s for every k < M. */
static inline uint64_t pb_sender_quota(const pb_config *c, uint32_t s)
{
    return s < c->messages ? (c->messages - s + c->senders - 1) / c->senders : 0;
}

/* ---- latency histogram: log-linear, 128 sub-buckets per power of two (<0.8% error),
 * in nanoseconds from 1 ns to 2^37 ns (137 s); mergeable by adding counts ---------- */
#define PB_HIST_SUB_BITS 7
#define PB_HIST_SUB (1u << PB_HIST_SUB_BITS)
#define PB_HIST_BUCKETS (31u * PB_HIST_SUB)

typedef struct {
    uint64_t count, sum_ns, min_ns, max_ns;
    uint32_t n[PB_HIST_BUCKETS];
} pb_hist;

void pb_hist_init(pb_hist *h);
void pb_hist_add(pb_hist *h, uint64_t ns);
void pb_hist_merge(pb_hist *into, const pb_hist *from);
/* The value at quantile q (0..1): the middle of its bucket, never above the maximum. */
uint64_t pb_hist_quantile(const pb_hist *h, double q);

/* ---- what a worker reports: counters (summed over workers) and times (CLOCK_MONOTONIC
 * ns; 0 = never; first_* merge by minimum, last_* by maximum) ---------------------- */
typedef struct {
    uint64_t conn_started, conn_open, authed, conn_failed, unexpected_closes, drained;
    uint64_t error_frames, protocol_errors;
    uint64_t sent, acked, send_errors, in_flight;
    uint64_t delivered, delivered_measured, duplicates, out_of_order, bad_payload, missing;
    uint64_t receipts, receipt_duplicates, receipt_unknown, receipts_missing;
    uint64_t notices, unexpected_envelopes, pings, pongs;
    uint64_t cpu_ns;
    uint64_t first_connect, last_auth, last_drained, first_send, last_ack;
    uint64_t first_deliver, last_deliver, last_receipt;
    char first_error[200];
} pb_stats;

void pb_stats_merge(pb_stats *into, const pb_stats *from);

/* ---- parent -> worker commands (SOCK_SEQPACKET, one struct per message) ------------ */
enum {
    PB_CMD_CONNECT = 1, /* connect and authenticate the devices of these roles (no reply) */
    PB_CMD_SEND,        /* start sending: at t_start; pairs measure [t0, t1) and stop at t1 */
    PB_CMD_QUERY,       /* reply: pb_stats */
    PB_CMD_FINAL,       /* reply: pb_stats with the final checks, then pb_hist */
    PB_CMD_QUIT,        /* close every connection and exit */
};

typedef struct {
    uint32_t cmd;
    uint32_t roles;
    uint64_t t_start, t0, t1;
} pb_cmd;


/* The worker process: serves commands on ctl until PB_CMD_QUIT or the parent goes. */
void pb_worker_main(const pb_config *cfg, uint32_t index, int ctl) __attribute__((noreturn));

#endif
