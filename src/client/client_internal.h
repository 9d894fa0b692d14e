/* client_internal.h - what the pieces of libparley's API share: the parley handle, the
 * requests in flight, and the functions each piece offers the others.
 *
 *   client.c  the public API: profiles, registration, the connection and the loop,
 *             events, history
 *   outbox.c  sending: the outbox, device lists, prekey bundles, sealing (encrypting
 *             for every device, then storing the sessions and the sealed Send in one
 *             transaction), Send answers, resends after RETRY receipts
 *   inbox.c   receiving: Deliver frames (decrypted and stored in one transaction,
 *             acked after the commit), receipts of every kind, read and RETRY
 *             receipts we send
 *   keys.c    our prekeys on the server (status after each authentication, top-ups,
 *             signed-prekey rotation), safety numbers
 * The Signal state itself is e2e.c's (no networking); the database is db.c's. */
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

typedef enum {
    REQ_FREE = 0,
    REQ_OWN_LOOKUP,
    REQ_LOOKUP_PHONE,
    REQ_LOOKUP_ACCOUNT,
    REQ_SEND,
    REQ_RECEIPT,         /* READ receipts */
    REQ_RETRY_RECEIPT,   /* RETRY receipts */
    REQ_FETCH,           /* FetchBundles */
    REQ_KEYS_STATUS,     /* an empty UploadKeys */
    REQ_KEYS_UPLOAD,
} req_kind;

typedef struct {
    req_kind kind;
    uint64_t rid;
    char phone[PARLEY_PHONE_MAX + 1];   /* LOOKUP_PHONE, SEND, FETCH: the conversation */
    uint8_t id[PARLEY_ID_LEN];          /* SEND, FETCH: the outbox entry; LOOKUP_ACCOUNT: the account */
    uint8_t account[PARLEY_ID_LEN];     /* SEND: recipient; RECEIPT: the author; FETCH: whose bundles */
    uint32_t device;                    /* RETRY_RECEIPT: the author's device */
    bool resend;                        /* SEND: a resend (it has no message of its own) */
    bool for_identity;                  /* FETCH: asked by parley_fetch_identity */
    uint32_t devices[DB_MAX_DEVICES];   /* FETCH: the devices asked for */
    size_t n_devices;
    uint8_t (*ids)[PARLEY_ID_LEN];      /* RECEIPT, RETRY_RECEIPT */
    size_t n_ids;
    uint32_t *key_ids;                  /* KEYS_UPLOAD: the one-time prekeys sent */
    size_t n_key_ids;
} request;

struct parley {
    db *db;
    db_identity ident;
    char errmsg[512];
    parley_event_fn handler;
    void *handler_ctx;
    int in_callback;
    bool stop;
    conn conn;
    bool conn_used;                 /* conn was initialised (something to tear down) */
    int fatal_status;               /* the connection ended for good with this */
    /* per connection */
    bool ready;
    bool own_known;
    uint32_t own_devices[DB_MAX_DEVICES];   /* our account's other devices */
    size_t n_own;
    request reqs[MAX_REQUESTS];
    Parley__Frame *dq[MAX_DELIVER_QUEUE];   /* Deliver frames in arrival order */
    size_t dq_sizes[MAX_DELIVER_QUEUE];
    size_t dq_head, dq_len, dq_bytes;
    uint8_t unnamed[MAX_UNNAMED][PARLEY_ID_LEN];
    size_t n_unnamed;
    struct {                                /* failed decryptions per sender device */
        uint8_t account[PARLEY_ID_LEN];
        uint32_t device;
        unsigned failures;
    } failing[MAX_FAILING];
    size_t n_failing;
    bool sending_disabled;          /* the server does not take Send (this connection) */
    bool receipts_disabled;
    bool keys_disabled;             /* the server refused our keys (this connection) */
    bool keys_wanted;               /* a status query is due (after authentication, the low-stock notice) */
    unsigned keys_errors;
    uint64_t keys_pause_until;      /* monotonic ms: the server was busy or rate limited us */
    uint64_t keys_next_check;       /* monotonic ms: the hourly status query on a long connection
                                       (signed prekey rotation and pruning) */
    unsigned send_errors;           /* transient send errors in a row, for the pause */
    uint64_t send_pause_until;      /* monotonic ms */
    unsigned receipt_errors;
    uint64_t receipt_pause_until;
    /* parley_fetch_identity: a number whose primary device's keys are wanted */
    char want_identity[PARLEY_PHONE_MAX + 1];
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
/* A new message id: the time in ms (48 bits, big-endian), then 80 random bits. Ids that
 * grow with time land at the end of the server's de-duplication index instead of at a
 * random page of it, which is most of what a durable send writes (docs/storage.md). */
void new_message_id(uint8_t id[PARLEY_ID_LEN]);
/* The pause after the n-th transient error in a row: 1 s doubling to RETRY_MAX_MS. */
uint32_t backoff_ms(unsigned errors);
/* A reply that is a passing error (rate limited, storage full, internal, or no error at
 * all where an answer was due): sets *pause_until (the server's retry_after_ms, else the
 * backoff for ++*errors; at most a minute) and returns true. */
bool pause_after_passing_error(const Parley__Frame *f, unsigned *errors, uint64_t *pause_until);
bool same_id(const uint8_t *a, const uint8_t *b);
const char *server_reason(const Parley__Error *e);
void emit(parley *p, const parley_event *ev);
void emit_error(parley *p, int status, const char *reason);
void emit_state(parley *p, const uint8_t id[PARLEY_ID_LEN], const char *peer, parley_state st,
                uint64_t server_ms, const char *reason);
void emit_identity_changed(parley *p, const char *phone, uint32_t device, bool was_verified);

request *req_new(parley *p, req_kind kind);
void req_free(request *r);
size_t req_count(const parley *p, req_kind kind);
/* Sends f and files r under its request id; frees r if sending failed. */
bool req_send(parley *p, request *r, Parley__Frame *f);

/* ---- outbox.c ------------------------------------------------------------------------ */

/* Sends what the outbox holds, as far as the limits allow. */
void pump_outbox(parley *p);
void on_send_reply(parley *p, request *r, const Parley__Frame *f);
void on_fetch_reply(parley *p, request *r, const Parley__Frame *f);
void on_lookup_phone_reply(parley *p, request *r, const Parley__Frame *f);
void on_own_lookup_reply(parley *p, const Parley__Frame *f);
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

/* Handles queued Deliver frames in order, each once the names of its senders are known. */
void process_deliveries(parley *p);
void on_lookup_account_reply(parley *p, request *r, const Parley__Frame *f);
/* Sends queued read and RETRY receipts, one Receipt frame at a time. */
void pump_receipts(parley *p);
void on_receipt_reply(parley *p, request *r, const Parley__Frame *f);
/* Drops what one connection kept about deliveries. */
void inbox_reset(parley *p);

/* ---- keys.c -------------------------------------------------------------------------- */

/* After authentication, and on the server's low-stock notice: asks for our key status
 * and uploads what is missing. */
void keys_check(parley *p);
void on_keys_reply(parley *p, request *r, const Parley__Frame *f);
/* The keys a registration carries (generated and stored first): *ids gets the one-time
 * prekey ids (malloc'd) to mark uploaded once registered; free with keys_upload_free. */
int keys_for_registration(parley *p, Parley__UploadKeys *out, uint32_t **ids, size_t *n_ids);
void keys_upload_free(Parley__UploadKeys *u);

#endif
