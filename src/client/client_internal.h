/* client_internal.h - libparley's core and what its pieces share: the parley handle,
 * requests in flight (each with its own reply handler and payload), and the features
 * that plug into the core, each owning its state.
 *
 *   client.c    the core: the handle, events and errors, requests, the features' hooks,
 *               the connection's callbacks and the event loop
 *   register.c  registration: a code by SMS, then the device's first keys
 *   messages.c  the messages API: sending (into the outbox), states, history, reading
 *   outbox.c    feature: sending: the outbox, device lists, prekey bundles, sealing
 *               (encrypting for every device, then storing the sessions and the sealed
 *               Send in one transaction), Send answers, resends after RETRY receipts
 *   inbox.c     feature: receiving: Deliver frames (decrypted and stored in one
 *               transaction, acked after the commit), receipts of every kind, the read
 *               and RETRY receipts we send
 *   keys.c      feature: our prekeys on the server (status after each authentication,
 *               top-ups, signed-prekey rotation); safety numbers
 * The Signal state itself is e2e.c's (no networking); the database is db*.c's. */
#ifndef PARLEY_CLIENT_INTERNAL_H
#define PARLEY_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "db.h"
#include "e2e.h"
#include "errors.h"
#include "parley.h"

#define MAX_REQUESTS 64          /* requests in flight on one connection */
#define MAX_SENDS 16             /* Send frames in flight (each a different conversation) */
#define MAX_LOOKUPS 16           /* Lookup frames in flight */
#define MAX_FETCHES 8            /* FetchBundles frames in flight */
#define MAX_DELIVER_QUEUE 512    /* Deliver frames waiting for sender names: above any
                                    sane server window (parleyd: 256 envelopes) */
#define MAX_DELIVER_BYTES (64u << 20) /* and their packed size together */
#define MAX_UNNAMED 4096         /* accounts the server could not name, per connection: more than
                                    one Deliver frame can hold, so none is asked twice */
#define KEYS_CHECK_MS 3600000ULL /* key status asked again every hour on one connection */
#define MAX_FAILING 32           /* sender devices whose failed decryptions are counted */
#define RETRY_MAX_MS 30000

/* ---- requests (client.c) ----------------------------------------------------------------
 *
 * A request is a frame sent with a request id and waiting for its answer. Like libuv's
 * requests, each kind is its own struct that starts with a `request` and carries the
 * kind's payload; its type names the handler the answer goes to. The core keeps the
 * requests in flight in a list, finds a reply's request by id, takes it off the list
 * (so the handler may send more), calls the handler, then frees it; when the connection
 * goes, every request in flight is freed unanswered (its frame goes again, or is asked
 * again, on the next connection). */
typedef struct request request;

typedef struct {
    const char *name;
    void (*reply)(parley *p, request *r, const Parley__Frame *f);
    void (*free)(request *r);        /* what the payload owns (not r); may be NULL */
} request_type;

struct request {
    request *next;
    const request_type *type;
    uint64_t rid;
};

/* ---- features (client.c) ---------------------------------------------------------------
 *
 * The pieces of the client that talk to the server. Each owns its state (its struct
 * below, a field of `parley`) and plugs into the core through these hooks, all
 * optional, called in the order of the core's list: inbox (deliveries), keys, outbox,
 * receipts (the ones we send; inbox.c). */
typedef struct {
    const char *name;
    /* The connection authenticated; it went down (drop what one connection kept). */
    void (*ready)(parley *p);
    void (*down)(parley *p);
    /* After every frame and every API call that may have queued work: send what is due.
     * (A timer runs its own feature's work.) */
    void (*pump)(parley *p);
    /* A frame the server pushes (no request id) with this body; true: the feature keeps f. */
    Parley__Frame__BodyCase push_body;
    bool (*push)(parley *p, Parley__Frame *f);
    /* The next monotonic ms a timer of the feature is due (UINT64_MAX: none); run them. */
    uint64_t (*deadline)(const parley *p);
    void (*timers)(parley *p, uint64_t now);
} client_feature;

extern const client_feature inbox_feature, keys_feature, outbox_feature, receipts_feature;

/* ---- the features' state -------------------------------------------------------------- */

/* A feature's back-off after passing errors from the server (kept across connections):
 * the errors in a row, and the monotonic ms until which it sends nothing (0: none). */
typedef struct {
    unsigned errors;
    uint64_t until;
} client_pause;

/* The pause's end as a timer deadline (UINT64_MAX: none). */
static inline uint64_t pause_deadline(const client_pause *z)
{
    return z->until ? z->until : UINT64_MAX;
}

/* True, and the pause cleared, once now is past it: the feature may send again. */
static inline bool pause_over(client_pause *z, uint64_t now)
{
    if (!z->until || now < z->until)
        return false;
    z->until = 0;
    return true;
}

/* outbox.c: sending. Per connection unless said otherwise. */
typedef struct {
    bool own_known;                          /* our own device list arrived */
    uint32_t own_devices[DB_MAX_DEVICES];    /* our account's other devices */
    size_t n_own;
    bool disabled;                           /* the server does not take Send */
    client_pause pause;                      /* after transient send errors */
    /* parley_fetch_identity: a number whose primary device's keys are wanted */
    char want_identity[PARLEY_PHONE_MAX + 1];
} outbox_state;

/* inbox.c: receiving, and the receipts we send. */
typedef struct {
    Parley__Frame *dq[MAX_DELIVER_QUEUE];    /* Deliver frames in arrival order */
    size_t dq_sizes[MAX_DELIVER_QUEUE];
    size_t dq_head, dq_len, dq_bytes;
    bool delivering;                         /* in process_deliveries (it is not re-entered) */
    uint8_t (*unnamed)[PARLEY_ID_LEN];       /* MAX_UNNAMED, allocated on first use */
    size_t n_unnamed;
    struct {                                 /* failed decryptions per sender device */
        uint8_t account[PARLEY_ID_LEN];
        uint32_t device;
        unsigned failures;
    } failing[MAX_FAILING];
    size_t n_failing;
    bool receipts_disabled;
    client_pause receipt_pause;
} inbox_state;

/* keys.c: our prekeys on the server. */
typedef struct {
    bool disabled;                           /* the server refused our keys (this connection) */
    bool wanted;                             /* a status query is due (after authentication, the low-stock notice) */
    client_pause pause;                      /* the server was busy or rate limited us */
    uint64_t next_check;                     /* monotonic ms: the hourly status query on a long
                                                connection (signed prekey rotation and pruning) */
} keys_state;

struct parley {
    db *db;
    db_identity ident;
    char errmsg[512];
    parley_event_fn handler;
    void *handler_ctx;
    int in_callback;
    bool stop;
    conn conn;                      /* the messaging connection */
    bool conn_used;                 /* conn was initialised (something to tear down) */
    int fatal_status;               /* the connection ended for good with this */
    bool ready;                     /* authenticated (this connection) */
    request *reqs;                  /* in flight on this connection */
    size_t n_reqs;
    outbox_state out;
    inbox_state in;
    keys_state keys;
    /* a one-shot exchange (registration) */
    struct {
        bool active;
        Parley__Frame *req;
        uint64_t rid;
        Parley__Frame *reply;
    } one;
};

/* ---- client.c: errors, events, requests ---------------------------------------------- */

int set_err(parley *p, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int db_err(parley *p);
/* PARLEY_ERR_INVALID: "... is not a phone number in E.164 form" */
int invalid_phone(parley *p, const char *phone);
/* PARLEY_OK for a conversation this version serves (one-to-one); else PARLEY_ERR_INVALID,
 * or PARLEY_ERR_UNSUPPORTED for a group, with the reason set. */
int check_conversation(parley *p, const char *conversation);
/* A new message id: the time in ms (48 bits, big-endian), then 80 random bits. Ids that
 * grow with time land at the end of the server's de-duplication index instead of at a
 * random page of it, which is most of what a durable send writes (docs/storage.md). */
void new_message_id(uint8_t id[PARLEY_ID_LEN]);
/* The pause after the n-th transient error in a row: 1 s doubling to RETRY_MAX_MS. */
uint32_t backoff_ms(unsigned errors);
/* A reply that is a passing error (rate limited, storage full, internal, or no error at
 * all where an answer was due): sets the pause (the server's retry_after_ms, else the
 * backoff for one more error in a row; at most a minute) and returns true. */
bool pause_after_passing_error(const Parley__Frame *f, client_pause *z);
bool same_id(const uint8_t *a, const uint8_t *b);
const char *server_reason(const Parley__Error *e);
void emit(parley *p, const parley_event *ev);
void emit_error(parley *p, int status, const char *reason);
void emit_state(parley *p, const uint8_t id[PARLEY_ID_LEN], const char *conversation, parley_state st,
                uint64_t server_ms, const char *reason);
void emit_identity_changed(parley *p, const char *phone, uint32_t device, bool was_verified);

/* A zeroed request of size bytes (the kind's struct) and type; NULL at MAX_REQUESTS in
 * flight or without memory. Either req_send it or req_free it. */
void *req_new(parley *p, const request_type *type, size_t size);
void req_free(request *r);
/* Sends f and files r under its request id; frees r if sending failed. */
bool req_send(parley *p, request *r, Parley__Frame *f);
/* Requests of a type in flight; iterating them: for (r = req_first(p, t); r; r = req_next(r, t)). */
size_t req_count(const parley *p, const request_type *type);
request *req_first(const parley *p, const request_type *type);
request *req_next(const request *r, const request_type *type);
/* Runs every feature's pump (after work was queued outside a frame or timer). */
void features_pump(parley *p);
/* Sends req on a short unauthenticated connection (registration) and returns the answer
 * in *reply (free it with parley__frame__free_unpacked). */
int client_oneshot(parley *p, const char *url, Parley__Frame *req, Parley__Frame **reply, int timeout_ms);

/* ---- outbox.c ------------------------------------------------------------------------ */

/* Lookups by number (outbox.c) and by account (inbox.c) share MAX_LOOKUPS. */
extern const request_type lookup_phone_request, lookup_account_request;
/* Our own device list (from a Lookup or a DEVICE_MISMATCH). */
void set_own_devices(parley *p, const Parley__DeviceList *dl);
/* A device list from the server into the contacts cache. phone may be NULL. */
bool store_device_list(parley *p, const Parley__DeviceList *dl, const char *phone);
/* A RETRY receipt from (account, device) for our message id: queues a resend of its text
 * under a new id to that device only, after a new session. Inside the caller's
 * transaction; false on a storage error. */
bool queue_resend(parley *p, const uint8_t id[PARLEY_ID_LEN], const uint8_t account[PARLEY_ID_LEN],
                  uint32_t device);

/* ---- inbox.c ------------------------------------------------------------------------- */

/* Frees what the inbox holds for the handle's life (parley_close). */
void inbox_free(parley *p);

/* ---- keys.c -------------------------------------------------------------------------- */

/* The server's low-stock notice came (in a Deliver): ask for our key status, then upload
 * what is missing. */
void keys_wanted(parley *p);
/* The keys a registration carries (generated and stored first): *ids gets the one-time
 * prekey ids (malloc'd) to mark uploaded once registered; free with keys_upload_free. */
int keys_for_registration(parley *p, Parley__UploadKeys *out, uint32_t **ids, size_t *n_ids);
void keys_upload_free(Parley__UploadKeys *u);

#endif
