/* parley.h - libparley, the Parley client library (docs/client.md).
 *
 * One `parley` handle is one device's profile: a directory holding the device's
 * identity key and its SQLite database (messages, contacts, outbox). The handle is
 * single-threaded: call it from one thread at a time. Network work happens only inside
 * parley_run() / parley_dispatch() (an event loop over poll(2) on its sockets), which
 * report what happened through the event callback set with parley_set_handler().
 *
 * Durability: a message handed to parley_send_text() is in the outbox on disk before
 * the call returns, and is resent with the same id after every reconnect until the
 * server acknowledges it. An incoming message is committed to the database before the
 * library acknowledges it to the server, and is shown (reported) once, however often
 * the server delivers it.
 *
 * End-to-end encryption: every message body is encrypted with the Signal protocol for
 * each recipient device (and each other device of our own); the server never sees a
 * text. Sessions, prekeys and the identity keys of contacts live in the profile's
 * database; a contact's new identity key is reported (PARLEY_EVENT_IDENTITY_CHANGED
 * and a notice in the conversation) before anything is encrypted to it, and safety
 * numbers (parley_safety_number) let two people check their keys.
 *
 * Return values: functions returning int give PARLEY_OK (0) or a negative
 * parley_status; parley_errmsg() then says what went wrong in words for a person. */
#ifndef PARLEY_H
#define PARLEY_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PARLEY_ID_LEN 16         /* message ids and account ids: random 128-bit */
#define PARLEY_PHONE_MAX 16      /* an E.164 number: '+' and at most 15 digits */
#define PARLEY_URL_MAX 255       /* ws://HOST:PORT[/PATH] */
#define PARLEY_MAX_TEXT 65536    /* bytes of UTF-8 in one text message */
#define PARLEY_CONVERSATION_MAX 38 /* "group:" and 32 hex digits */

typedef struct parley parley;

typedef enum {
    PARLEY_OK = 0,
    PARLEY_ERR_INVALID = -1,            /* a bad argument (not an E.164 number, text too long, ...) */
    PARLEY_ERR_NOMEM = -2,
    PARLEY_ERR_STORAGE = -3,            /* the profile directory or its database failed */
    PARLEY_ERR_NOT_REGISTERED = -4,     /* register and verify first */
    PARLEY_ERR_ALREADY_REGISTERED = -5,
    PARLEY_ERR_NETWORK = -6,            /* the server cannot be reached, or the connection broke */
    PARLEY_ERR_TIMEOUT = -7,
    PARLEY_ERR_REFUSED = -8,            /* the server answered with an error (wrong code, ...) */
    PARLEY_ERR_UNKNOWN_NUMBER = -9,     /* no account has that phone number */
    PARLEY_ERR_REPLACED = -10,          /* another client took over this device (close 4000) */
    PARLEY_ERR_AUTH = -11,              /* the server does not accept this device's key */
    PARLEY_ERR_STATE = -12,             /* not possible now (e.g. already connected, or in a callback) */
    PARLEY_ERR_UNSUPPORTED = -13,       /* the server does not offer what was asked for */
    PARLEY_ERR_UNKNOWN_KEY = -14,       /* the contact's identity key is not known yet: parley_fetch_identity */
    PARLEY_ERR_KEYS = -15,              /* the server refused this device's prekeys (an ERROR event; not fatal) */
} parley_status;

/* Message states. Outgoing: PENDING -> SENT -> DELIVERED -> READ, only ever forward
 * (or PENDING -> FAILED). Incoming: RECEIVED -> READ. */
typedef enum {
    PARLEY_STATE_FAILED = 0,     /* outgoing, refused for good (e.g. no account has the number) */
    PARLEY_STATE_PENDING = 1,    /* outgoing, in the outbox: not acknowledged by the server yet */
    PARLEY_STATE_SENT = 2,       /* outgoing, the server has it (one tick) */
    PARLEY_STATE_DELIVERED = 3,  /* outgoing, a device of the recipient has it (two ticks) */
    PARLEY_STATE_READ = 4,       /* outgoing: the recipient read it; incoming: marked read */
    PARLEY_STATE_RECEIVED = 5,   /* incoming, not read yet */
} parley_state;

/* A short lower-case name: "pending", "sent", "delivered", "read", "received", "failed". */
const char *parley_state_name(parley_state s);

/* A short description of a parley_status code. */
const char *parley_strerror(int status);

/* ---- profiles -------------------------------------------------------------------- */

/* Opens (creating when needed) the profile in dir: the directory is created 0700 and
 * the database dir/parley.db 0600. On failure *out is NULL and err (if not NULL) gets
 * the reason. Calls sodium_init(). */
int parley_open(parley **out, const char *dir, char *err, size_t errlen);

/* Closes the connection politely (waiting up to 2 s for the server to confirm), then
 * frees everything. Must not be called from inside the event callback. NULL is a no-op. */
void parley_close(parley *p);

/* The last error on this handle, for a person; "" when there was none. */
const char *parley_errmsg(const parley *p);

typedef struct {
    bool registered;
    char phone[PARLEY_PHONE_MAX + 1];          /* when registered */
    char pending_phone[PARLEY_PHONE_MAX + 1];  /* a code was requested for it, not verified yet */
    char server_url[PARLEY_URL_MAX + 1];
    uint8_t account_id[PARLEY_ID_LEN];
    uint32_t device_id;
} parley_profile;

/* Copies the profile's registration details. */
int parley_profile_get(parley *p, parley_profile *out);

/* ---- registration (blocking, each opens its own short connection) ------------------ */

/* Asks server_url (ws://HOST:PORT) to send a verification code to phone (E.164).
 * Creates the device's identity key on first use. PARLEY_ERR_ALREADY_REGISTERED when
 * this profile has an account; PARLEY_ERR_REFUSED when the server says no (bad
 * number, too many codes). timeout_ms bounds the whole exchange. */
int parley_request_code(parley *p, const char *server_url, const char *phone, int timeout_ms);

/* Sends the code that arrived by SMS, with the device's first keys: a signed prekey and
 * 100 one-time prekeys, generated (once) and stored before they are sent. On success
 * the profile is registered (device 1). PARLEY_ERR_NOT_REGISTERED when no code was
 * requested; PARLEY_ERR_REFUSED for a wrong, expired or burnt code, or refused keys. */
int parley_verify(parley *p, const char *code, int timeout_ms);

/* ---- events ---------------------------------------------------------------------- */

typedef enum {
    PARLEY_EVENT_MESSAGE = 1,   /* a new incoming message (never reported twice) */
    PARLEY_EVENT_RECEIPT,       /* delivered/read receipts for messages we sent */
    PARLEY_EVENT_STATE,         /* the server acknowledged an outgoing message, or it failed */
    PARLEY_EVENT_CONNECTION,    /* the connection changed state */
    PARLEY_EVENT_DRAINED,       /* the server's offline queue for this device is empty */
    PARLEY_EVENT_ERROR,         /* a problem that does not close the connection */
    PARLEY_EVENT_IDENTITY_CHANGED, /* a contact's device has a new identity key (recorded
                                      before anything is encrypted to it) */
} parley_event_type;

/* What a parley_message is: a message, or a notice in the conversation. */
typedef enum {
    PARLEY_MESSAGE_TEXT = 0,
    PARLEY_MESSAGE_IDENTITY_CHANGED = 1, /* the contact's device (from_device) has a new identity
                                            key; text is the line for people */
} parley_message_kind;

typedef struct {
    uint8_t id[PARLEY_ID_LEN];
    bool outgoing;
    parley_message_kind kind;
    bool was_verified;          /* IDENTITY_CHANGED: the contact had been verified (no longer) */
    const char *conversation;   /* its chat ("+E164" or "group:..."); NULL if the server could not name the sender */
    const char *peer;           /* the other party's number (incoming: the sender's); NULL if the server could not name it */
    uint32_t from_device;       /* incoming: the sender's device */
    uint64_t server_time_ms;    /* when the server accepted it; 0 while pending */
    uint64_t sent_ms;           /* the author's clock */
    const char *text;           /* NUL-terminated UTF-8; NULL when malformed */
    size_t text_len;
    const char *problem;        /* NULL, or what went wrong: why an incoming body could not
                                   be read or decrypted (the sender was asked to send it
                                   again: when it comes, the message is reported again under
                                   the same id, with its text), or why an outgoing message failed */
    parley_state state;
} parley_message;

typedef struct {
    parley_state status;        /* PARLEY_STATE_DELIVERED or PARLEY_STATE_READ */
    const char *from;           /* who received or read them; NULL if unknown */
    uint32_t from_device;
    const uint8_t (*ids)[PARLEY_ID_LEN];  /* our messages whose state moved forward */
    size_t n_ids;
} parley_receipt;

/* PARLEY_EVENT_STATE: state is SENT on an acknowledgement (or later, when receipts
 * recorded by another process on this profile got there first), or FAILED. Delivered
 * and read arrive as PARLEY_EVENT_RECEIPT. */
typedef struct {
    uint8_t id[PARLEY_ID_LEN];
    const char *conversation;   /* the message's chat */
    const char *peer;           /* the recipient's number (a one-to-one chat); NULL otherwise */
    parley_state state;
    uint64_t server_time_ms;
    const char *reason;         /* PARLEY_STATE_FAILED: why */
} parley_state_change;

/* PARLEY_EVENT_IDENTITY_CHANGED */
typedef struct {
    const char *peer;           /* the contact's number; NULL if unknown */
    uint32_t device;
    bool was_verified;          /* the contact had been verified: the mark is now cleared */
} parley_identity_change;

typedef enum {
    PARLEY_CONN_OFFLINE = 0,     /* not connected and not trying (stopped, or a fatal error) */
    PARLEY_CONN_CONNECTING,      /* opening TCP and the WebSocket */
    PARLEY_CONN_AUTHENTICATING,  /* Hello received; proving the device key */
    PARLEY_CONN_READY,           /* authenticated: sending and receiving */
    PARLEY_CONN_WAITING,         /* lost or failed; the next attempt is in retry_in_ms */
} parley_conn_state;

typedef struct {
    parley_conn_state state;
    int status;                  /* why it went down: PARLEY_OK or a parley_status */
    const char *reason;          /* for a person; NULL when there is nothing to say */
    uint32_t retry_in_ms;        /* PARLEY_CONN_WAITING */
} parley_connection;

typedef struct {
    parley_event_type type;
    union {
        parley_message message;       /* PARLEY_EVENT_MESSAGE */
        parley_receipt receipt;       /* PARLEY_EVENT_RECEIPT */
        parley_state_change state;    /* PARLEY_EVENT_STATE */
        parley_connection connection; /* PARLEY_EVENT_CONNECTION */
        parley_identity_change identity; /* PARLEY_EVENT_IDENTITY_CHANGED */
        struct {
            int status;
            const char *reason;
        } error;                      /* PARLEY_EVENT_ERROR */
    };
} parley_event;

/* Called from inside parley_run()/parley_dispatch(). Pointers in the event are valid
 * only during the call. The callback may call any function but parley_close(). */
typedef void (*parley_event_fn)(void *ctx, const parley_event *ev);

void parley_set_handler(parley *p, parley_event_fn fn, void *ctx);

/* ---- the connection and the event loop -------------------------------------------- */

enum {
    PARLEY_SEND_ONLY = 0,  /* sends the outbox and read receipts; gets no deliveries */
    PARLEY_RECEIVE = 1,    /* the device's receiving connection: a newer one elsewhere ends it */
};

/* Starts connecting to the profile's server. From then on the library keeps a
 * connection up, reconnecting with exponential backoff and full jitter (a random wait
 * up to 0.5 s, doubling per failure to 30 s), until parley_disconnect() or a fatal
 * error (another client took over the device, or the server refuses the key).
 * Resolving the host name blocks (getaddrinfo); everything else is non-blocking.
 * Connection events may be reported before this returns. PARLEY_ERR_NOT_REGISTERED
 * if the profile has no account; PARLEY_ERR_STATE if already connected. */
int parley_connect(parley *p, int mode);

/* Closes the connection politely and stops reconnecting. Data in flight is not lost:
 * unacknowledged sends stay in the outbox. */
void parley_disconnect(parley *p);

/* The current connection state. */
parley_conn_state parley_connection_state(const parley *p);

/* Runs the event loop for up to timeout_ms (-1: until parley_stop or a fatal error).
 * Returns PARLEY_OK after the timeout, after parley_stop(), or early when a signal
 * interrupted poll(2) (so a signal handler that sets a flag is seen promptly); a
 * fatal connection error (PARLEY_ERR_REPLACED, PARLEY_ERR_AUTH, ...) is returned as
 * such. Returns at once when there is no connection and none is being attempted. */
int parley_run(parley *p, int timeout_ms);

/* Makes the current (or next) parley_run() return; safe from the event callback. */
void parley_stop(parley *p);

/* For a caller with its own poll loop: parley_pollfds fills up to max entries of pfds
 * with the library's sockets and the events to wait for, and returns how many (0 when
 * there is none just now; today at most one, the messaging connection; media
 * transfers will add theirs, so pass PARLEY_MAX_POLLFDS entries). Wait at most
 * parley_timeout_ms() (-1: no deadline), then call parley_dispatch() with those entries
 * and their revents (n = 0 after a timeout). */
#define PARLEY_MAX_POLLFDS 4
int parley_pollfds(const parley *p, struct pollfd *pfds, int max);
int parley_timeout_ms(const parley *p);
/* Returns PARLEY_OK, or the fatal status once the connection ended for good. */
int parley_dispatch(parley *p, const struct pollfd *pfds, int n);

/* ---- conversations ----------------------------------------------------------------- */

/* A conversation is named by a string: "+E164" is the one-to-one chat with that number
 * (a number that moves to a new account keeps its chat, as in WhatsApp), and "group:"
 * followed by 32 lower-case hex digits (a 128-bit group id) is a group. This version of
 * the library serves no groups yet: it refuses them with PARLEY_ERR_UNSUPPORTED. */
typedef enum {
    PARLEY_CONVERSATION_INVALID = 0,
    PARLEY_CONVERSATION_DIRECT,
    PARLEY_CONVERSATION_GROUP,
} parley_conversation_kind;

parley_conversation_kind parley_conversation_kind_of(const char *conversation);

/* ---- messages -------------------------------------------------------------------- */

/* Queues a text message to a conversation: it is in the outbox (durable) when this
 * returns and goes out as soon as a connection is ready. id_out (may be NULL) gets its
 * id. Text must be UTF-8 without NUL bytes, 1 to PARLEY_MAX_TEXT bytes. */
int parley_send_text(parley *p, const char *conversation, const char *text,
                     uint8_t id_out[PARLEY_ID_LEN]);

/* The state of an outgoing message; PARLEY_ERR_INVALID if there is no such message. */
int parley_message_state(parley *p, const uint8_t id[PARLEY_ID_LEN], parley_state *out);

/* Messages waiting in the outbox for the server's acknowledgement. */
int parley_outbox_count(parley *p, size_t *n);

/* Marks every unread incoming message of a conversation read and queues their read
 * receipts (sent, batched, when a connection is ready). *count (may be NULL) gets how
 * many. */
int parley_mark_read(parley *p, const char *conversation, size_t *count);

/* Receipts queued but not acknowledged by the server yet: read receipts, and RETRY
 * receipts (asking the senders of messages that could not be decrypted to send them
 * again). */
int parley_pending_receipts(parley *p, size_t *n);

/* Calls fn for every message of a conversation, oldest first (in the order this device
 * learned of them). fn returns false to stop early. */
typedef bool (*parley_message_fn)(void *ctx, const parley_message *m);
int parley_history(parley *p, const char *conversation, parley_message_fn fn, void *ctx);

/* Incoming messages not shown yet, oldest first: fn shows each one (returning false
 * when it could not, e.g. its output failed), and those it showed are then marked
 * shown. A program that displays messages calls this after MESSAGE events (and once
 * at start): a message committed just before a crash is shown on the next run, and
 * one shown just before a crash may be shown again (at least once, never lost).
 * PARLEY_ERR_STATE if fn stopped early. */
int parley_take_unshown(parley *p, parley_message_fn fn, void *ctx);

/* True for an E.164 number: '+', a non-zero digit, 7 to 15 digits in all. */
bool parley_phone_valid(const char *phone);

/* ---- identity keys and safety numbers ----------------------------------------------- */

#define PARLEY_KEY_LEN 33            /* a public key as it travels: 0x05 || u */
#define PARLEY_SAFETY_DIGITS 60
#define PARLEY_SCANNABLE_MAX 128

/* This device's identity public key (0x05 || u). */
int parley_identity_key(parley *p, uint8_t out[PARLEY_KEY_LEN]);

typedef struct {
    char digits[PARLEY_SAFETY_DIGITS + 1];   /* the same 60 digits on both phones */
    char grouped[PARLEY_SAFETY_DIGITS / 5 * 6]; /* 12 groups of 5, separated by spaces */
    uint8_t scannable[PARLEY_SCANNABLE_MAX]; /* the QR code's payload (CombinedFingerprints) */
    size_t scannable_len;
    bool verified;                           /* marked verified (parley_verify_safety) */
} parley_safety;

/* The safety number with phone: Signal's numeric fingerprint (version 1: the E.164
 * numbers as identifiers, 5200 iterations) of this device's identity key and the
 * contact's primary device's (device 1). PARLEY_ERR_UNKNOWN_KEY when that key is not
 * known yet: ask for it with parley_fetch_identity() and call again once connected. */
int parley_safety_number(parley *p, const char *phone, parley_safety *out);

/* Asks the server (on the current or next connection) for phone's number and its
 * primary device's keys; the session made from them is kept for the next message, so
 * the one-time prekey is not wasted. An unknown number is reported as a
 * PARLEY_EVENT_ERROR with PARLEY_ERR_UNKNOWN_NUMBER. */
int parley_fetch_identity(parley *p, const char *phone);

/* Compares number (60 digits; spaces are ignored) with the safety number with phone, in
 * constant time; when they match the contact is marked verified (until its key changes)
 * and *match is true. PARLEY_ERR_UNKNOWN_KEY as for parley_safety_number. */
int parley_verify_safety(parley *p, const char *phone, const char *number, bool *match);

#ifdef __cplusplus
}
#endif

#endif
