/* peer.h - the protocol state of one connection, shared by peer.c (registration,
 * authentication, dispatch) and messaging.c (send, deliver, acks, receipts). */
#ifndef PARLEY_SERVER_PEER_H
#define PARLEY_SERVER_PEER_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "parley.pb-c.h"
#include "server.h"

enum { PEER_NEW, PEER_CHALLENGED, PEER_AUTHENTICATED };

typedef struct peer peer;
/* Every connection has one, so it is kept to 88 bytes (flags as bits, fields in an
 * order that needs no padding): with malloc's header, a 96-byte chunk. */
struct peer {
    uint32_t pending_work;        /* SMS sends and store writes in flight for it */
    uint8_t state;
    bool receive : 1;             /* the device's receiving connection (routed deliveries) */
    bool routed : 1;              /* in the routing table */
    bool drained_sent : 1;        /* Deliver{drained} went out on this connection */
    bool pump_blocked : 1;        /* deliveries wait for the write queue to empty */
    ws_conn *conn;                /* NULL once the connection is gone */
    store_device device;          /* claimed in Connect, proven by Authenticate */
    uint8_t key_prefix[8];        /* of the identity key it proved: a re-registration changes it */
    uint8_t *nonce;               /* only while challenged */
    /* delivery window: seqs handed out and acknowledged on this connection */
    uint64_t delivered_seq;
    uint64_t acked_seq;
    uint64_t route_id;            /* newest authenticated connection of a device wins */
    peer *route_next;             /* routing table chain */
};
_Static_assert(sizeof(struct peer) <= 88, "peer grew: that is memory per idle connection");

static inline io_thread *thread_of(ws_conn *c)
{
    return (io_thread *)c->tcp.loop->data;
}

static inline server *server_of(ws_conn *c)
{
    return thread_of(c)->srv;
}

/* Frames out (peer.c). */
void peer_send_frame(ws_conn *c, Parley__Frame *f);
void peer_reply(ws_conn *c, uint64_t request_id, Parley__Frame *f);
void peer_error(ws_conn *c, uint64_t request_id, uint32_t code, const char *reason);
void peer_error_full(ws_conn *c, uint64_t request_id, uint32_t code, const char *reason,
                     uint32_t retry_after_ms, Parley__DeviceList *devices);

/* A store or job status as the client's error. */
void peer_store_error(ws_conn *c, uint64_t request_id, int status);

/* Hands a job to the storage writer on p's behalf: p stays allocated until the job's
 * done callback calls peer_job_returned, which is false if p is gone (and freed now). */
void peer_submit(peer *p, writer_job *job);
bool peer_job_returned(peer *p);

/* Who a writer job is for: the device whose connection asked, the key it proved
 * (checked again on the writer thread), and where the answer goes. */
typedef struct {
    server *srv;
    peer *p;                      /* NULL when no one waits for an answer */
    uint64_t request_id;
    store_device device;
    uint8_t key_prefix[8];
} job_origin;

void job_origin_init(job_origin *o, ws_conn *c, peer *p, uint64_t request_id);

/* Job results beyond the STORE_* codes. */
enum { JOB_UNKNOWN_ACCOUNT = 100, JOB_DEVICE_MISMATCH = 101, JOB_REPLACED = 102 };

/* On the writer thread: STORE_OK if the origin device still has the key its
 * connection proved, JOB_REPLACED once a new registration of the number replaced it. */
int job_origin_current(store_batch *b, const job_origin *o);

/* A failed job's answer: UNKNOWN_ACCOUNT, a replaced device's end (an error, then
 * close 4000: do not come back), or the store error. */
void peer_job_error(ws_conn *c, uint64_t request_id, int status);

/* One token of the device's bucket in limit (shared by all its connections), else a
 * RATE_LIMITED answer saying what; also refuses while the connection has too many
 * requests waiting for the writer (memory stays bounded). */
bool peer_take_token(ws_conn *c, peer *p, uint64_t request_id, rate_table *limit, const char *what);

static inline bool same_account(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, STORE_ACCOUNT_ID_LEN) == 0;
}

/* Messaging (messaging.c). */
void messaging_authenticated(peer *p);       /* a receiving connection starts: route, drain */
void messaging_closed(peer *p);              /* before p's connection goes away */
void messaging_pump(peer *p);                /* deliver what the window allows */
void on_send(ws_conn *c, peer *p, uint64_t rid, const Parley__Send *m);
void on_deliver_ack(ws_conn *c, peer *p, const Parley__DeliverAck *m);
void on_receipt(ws_conn *c, peer *p, uint64_t rid, const Parley__Receipt *m);

/* The keys directory (keys.c). */
void on_upload_keys(ws_conn *c, peer *p, uint64_t rid, const Parley__UploadKeys *m);
void on_fetch_bundles(ws_conn *c, peer *p, uint64_t rid, const Parley__FetchBundles *m);

/* The retention sweep (messaging.c), run from I/O thread 0's timer. */
void messaging_sweep_start(io_thread *t);
void messaging_sweep_stop(io_thread *t);

#endif
