/* store.h - parleyd's durable state, as the services ask for it: one request per intent
 * (accept a send, read an inbox, take up to a seq, take a one-time prekey, ...), not
 * transactions. A backend implements store_ops; the embedded one (store/lmdb/) keeps
 * the inboxes in a log (store/log/) and the rest in one LMDB file, behind a group-commit
 * writer, and a cluster backend on NATS JetStream can implement the same requests (the
 * mapping is given for each below).
 *
 * Requests. The caller allocates a request (a struct that begins with store_req), fills
 * its inputs and done, and submits it with the function for its intent, naming the home
 * of the loop it runs on. The request is the backend's until done(req, status) runs on
 * that home's loop; then its outputs are filled in and it is the caller's again. Done may
 * run before the submitting call returns (the embedded backend answers reads inline).
 *   status: STORE_OK; a refusal (a positive STORE_* code: nothing was written); or a
 *   storage error (negative: nothing was written either).
 * A write is durable when its done runs with STORE_OK, never before: the server answers
 * a client only then. Requests complete in the order they were submitted to one home
 * (store_sync relies on it).
 *
 * Origins. A request made for a connection names the device and the first bytes of the
 * identity key its connection proved; the backend refuses it with STORE_REPLACED once a
 * new registration of the number replaced that device, so a replaced device can never
 * write again, whatever its old connections still send.
 *
 * Envelopes are opaque here: the server packs them (proto/parley.proto, Envelope without
 * its seq). The few the store writes on its own behalf (delivered receipts, low-stock
 * notices) are packed through the store_envelopes hooks the server gives at open, so no
 * backend parses or builds the protocol. */
#ifndef PARLEY_STORE_H
#define PARLEY_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum {
    STORE_OK = 0,
    /* refusals */
    STORE_NOT_FOUND = 1,
    STORE_EXISTS = 2,            /* an id already in use with other content */
    STORE_UNKNOWN_ACCOUNT = 10,  /* the account has no device */
    STORE_DEVICE_MISMATCH = 11,  /* a send's devices are not the account's (store_send has the list) */
    STORE_REPLACED = 12,         /* the origin device was registered again since it proved its key */
    STORE_TOO_MANY_PREKEYS = 13, /* the device would hold more than max_held one-time prekeys */
    STORE_PREKEY_CONFLICT = 14,  /* a one-time prekey id already held with another key */
    STORE_INBOX_FULL = 15,       /* a device's inbox holds its quota (store_quota; store_send names them) */
    STORE_DAILY_QUOTA = 16,      /* the origin's account wrote its quota for the day (retry_ms) */
    STORE_UNKNOWN_GROUP = 17,
    STORE_NOT_MEMBER = 18,       /* the origin's account is not a member of the group */
    STORE_NOT_ADMIN = 19,        /* the group's settings let only admins do that */
    STORE_GROUP_FULL = 20,       /* a group holds at most STORE_GROUP_MAX members */
    STORE_LAST_ADMIN = 21,       /* the last admin leaves only naming another admin */
    STORE_GROUP_STALE = 22,      /* a group send for another membership version (the group is in the reply) */
    STORE_GROUP_QUOTA = 23,      /* the account created its groups for the day (retry_ms) */
    /* storage errors */
    STORE_FULL = -1,             /* the map or the disk is full: nothing was written */
    STORE_IO = -2,               /* I/O or engine error */
    STORE_NOMEM = -3,
    STORE_INVALID = -4,          /* bad argument or corrupt record */
};

/* A human-readable description of a STORE_* code. */
const char *store_strerror(int rc);

#define STORE_ACCOUNT_ID_LEN 16
#define STORE_MESSAGE_ID_LEN 16
#define STORE_PHONE_MAX 16       /* "+" and at most 15 digits (E.164) */
#define STORE_KEY_LEN 32
#define STORE_SIG_LEN 64
#define STORE_MAX_DEVICES 64     /* devices of one account */
#define STORE_MAX_UPLOAD 100     /* one-time prekeys in one upload */
#define STORE_GROUP_ID_LEN 16
#define STORE_GROUP_MAX 1024     /* members of one group */
#define STORE_SUBJECT_MAX 100    /* bytes of a group's subject (UTF-8) */

/* A device: its account's random 128-bit id and its device number (1 = primary). */
typedef struct {
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    uint32_t device;
} store_device;

typedef struct {
    uint32_t device;
    uint8_t identity_key[STORE_KEY_LEN]; /* Curve25519 u-coordinate */
    uint32_t registration_id;
} store_device_record;

typedef struct {
    uint32_t id;
    uint8_t key[STORE_KEY_LEN];          /* Curve25519 u-coordinate */
} store_prekey;

typedef struct {
    uint32_t id;
    uint8_t key[STORE_KEY_LEN];
    uint8_t signature[STORE_SIG_LEN];    /* XEdDSA by the device's identity key */
    uint64_t uploaded_ms;
} store_signed_prekey;

/* Keys a device uploads: an optional signed prekey (replaces the last) and one-time
 * prekeys (ids only grow; a key already held is skipped, see ldb_prekeys_add). */
typedef struct {
    bool has_signed;
    store_signed_prekey signed_prekey;
    size_t n;
    store_prekey prekeys[STORE_MAX_UPLOAD];
} store_keys;

typedef struct {
    store_device device;
    uint8_t key_prefix[8];               /* of the identity key its connection proved */
} store_origin;

/* What one account may take from the disk, so that it cannot take the disk from
 * everyone: an inbox holds at most so many envelopes and bytes (a send or receipt that
 * would pass them is refused whole; an empty inbox takes one of any size; the store's
 * own receipts and notices, and copies to the sender's own devices, are counted but
 * never refused), and an account writes at most so many sends and receipts and bytes of
 * envelopes a UTC day, all its devices together (its first of the day always goes).
 * 0: no limit. The embedded backend counts the day in memory: a restart starts it
 * again. */
typedef struct {
    uint64_t inbox_envelopes, inbox_bytes;
    uint64_t daily_writes, daily_bytes;
} store_quota;

/* Envelopes bound for device inboxes, packed one after another in one buffer. */
typedef struct {
    store_device device;
    size_t offset, len;                  /* of its envelope in the list's buffer */
    bool check_registration;             /* a send: the registration id it was encrypted for */
    uint32_t registration_id;
} store_entry;

typedef struct {
    store_entry *items;
    size_t n, cap;
    uint8_t *buf;
    size_t used, buf_cap;
} store_entries;

/* Appends an envelope for d; the new item is l->items[l->n - 1]. STORE_NOMEM. */
int store_entries_add(store_entries *l, const store_device *d, const uint8_t *envelope, size_t len);
/* Makes room for len more envelope bytes at l->buf + l->used (then store_entries_add
 * with envelope == NULL takes them as they are). */
int store_entries_reserve(store_entries *l, size_t len);
void store_entries_clear(store_entries *l);
void store_entries_free(store_entries *l);

/* Grows *buf (doubling from first bytes on) until it holds need bytes. */
bool store_buf_grow(void *buf, size_t *cap, size_t need, size_t first);

typedef struct store_group store_group;               /* group.h */
typedef struct store_group_summary store_group_summary; /* group.h */
typedef struct store_group_change store_group_change; /* below */

/* What the store packs through the server's protocol code. Each returns the envelope's
 * length, or 0 if it does not fit in cap. */
typedef struct {
    /* The author account and message id of a stored message envelope; false for
     * receipts and notices (no one to tell). */
    bool (*author_of)(const uint8_t *envelope, size_t len, const uint8_t **account, const uint8_t **id);
    /* A delivered receipt from acker for n message ids. */
    size_t (*delivered)(uint8_t *out, size_t cap, const store_device *acker, uint64_t now,
                        const uint8_t (*ids)[STORE_MESSAGE_ID_LEN], size_t n);
    /* "your one-time prekeys are running low": left are held. */
    size_t (*prekeys_low)(uint8_t *out, size_t cap, uint64_t now, uint32_t left);
    /* A group's message envelope (packed by the server without its seq) with its
     * group_seq; 0 if it does not fit. */
    size_t (*with_group_seq)(uint8_t *out, size_t cap, const uint8_t *envelope, size_t len, uint64_t seq);
    /* The event of a change c made to group g (now as it is after the change). */
    size_t (*group_event)(uint8_t *out, size_t cap, const store_group_change *c, const store_group *g, uint64_t seq);
} store_envelopes;

/* ---- requests ---------------------------------------------------------------------- */

typedef struct store store;
typedef struct store_home store_home;
typedef struct store_req store_req;

struct store_req {
    void (*done)(store_req *r, int status);
    /* the backend's from submission to done */
    uint8_t kind;
    int status;
    store_home *home;
    store_req *next;
};

/* Registers phone's primary device with its first keys, in one commit: a device is never
 * in the directory without keys. A new number gets a new account (new_id); a known one
 * keeps its id and has all its devices replaced, their inboxes and keys dropped.
 *   JetStream: KV ACCOUNTS phone.<hash> claimed with Create (a known number: Get), then
 *   dev.<uid>.1 Put, old dev.* keys and inbox subjects purged, keys as in
 *   store_upload_keys. Not one transaction there: the device key is written last, so a
 *   half registration is never usable. */
typedef struct {
    store_req req;
    char phone[STORE_PHONE_MAX + 1];
    uint8_t new_id[STORE_ACCOUNT_ID_LEN];
    store_device_record primary;
    store_keys keys;
    size_t max_held;                     /* one-time prekeys a device may hold */
    uint64_t now;
    uint8_t account[STORE_ACCOUNT_ID_LEN];  /* out */
    uint32_t replaced[STORE_MAX_DEVICES];   /* out: the devices it replaced (inboxes dropped) */
    size_t n_replaced;
} store_registration;
void store_register(store *s, store_home *h, store_registration *r);

/* A device's record (authentication). STORE_NOT_FOUND.
 *   JetStream: KV ACCOUNTS Get dev.<uid>.<devid>. */
typedef struct {
    store_req req;
    store_device device;
    store_device_record record;          /* out */
} store_device_query;
void store_get_device(store *s, store_home *h, store_device_query *r);

/* An account by phone number (phone set, by_account false) or a phone number by account,
 * with the account's device ids. STORE_NOT_FOUND, also for an account without devices.
 *   JetStream: KV Get phone.<hash> / acct.<uid>, Keys dev.<uid>.*. */
typedef struct {
    store_req req;
    bool by_account;
    uint8_t account[STORE_ACCOUNT_ID_LEN];  /* in when by_account, else out */
    char phone[STORE_PHONE_MAX + 1];        /* in unless by_account, else out */
    uint32_t ids[8];                        /* out, ascending */
    size_t n;
} store_lookup;
void store_lookup_account(store *s, store_home *h, store_lookup *r);

/* Accepts a send: de-duplicated by (origin device, message id) for at least the dedup
 * retention; every target addressed exactly the devices of its account (less the
 * sender; a resend may name some of them) with their current registration ids, else
 * STORE_DEVICE_MISMATCH with the account's devices and those re-registered since; then
 * within the quotas (STORE_DAILY_QUOTA with retry_ms; STORE_INBOX_FULL with the
 * recipient's devices whose inboxes hold theirs: the sender's own devices take their
 * copies whatever they hold); then each envelope appended to its device's inbox, all in one commit.
 *   JetStream: Get dev.<uid>.* for the check; js_PublishAsync of each envelope to
 *   inbox.<k>.<device> with Nats-Msg-Id = sender device || message id (the stream's
 *   duplicate window covers a client's quick resend; a dedup.<sender>.<id> KV Create
 *   covers the rest). Done after every publish ack. Quotas: the inbox count is the
 *   stream's MaxMsgsPerSubject with DiscardNewPerSubject (a publish past it fails: no
 *   per-subject byte limit there, so inbox_bytes is checked from the subject's state);
 *   the day's count in KV quota.<uid>.<day>, updated with the revision it was read at. */
typedef struct {
    store_req req;
    store_origin from;
    uint8_t message_id[STORE_MESSAGE_ID_LEN];
    uint8_t recipient[STORE_ACCOUNT_ID_LEN];
    bool resend;                         /* to the listed devices only */
    uint64_t accepted_ms;                /* in the envelopes already */
    store_entries targets;
    /* A group message: recipient is unused; targets are the pairwise key distributions
     * (to member devices, each must exist, any subset), appended before the group's
     * envelope, which goes once to every device of every member (the origin too), its
     * bytes stored once. Refused: STORE_UNKNOWN_GROUP, STORE_NOT_MEMBER, STORE_NOT_ADMIN
     * (an admins-only group), STORE_GROUP_STALE (another version: group has it now). The
     * members' inbox quotas are counted, not enforced (one full inbox must not silence a
     * group); the day's quota is the origin's, for every copy. */
    bool to_group;
    uint8_t group_id[STORE_GROUP_ID_LEN];
    uint64_t group_version;
    const uint8_t *group_envelope;
    size_t group_len;
    store_group *group;                  /* out on STORE_GROUP_STALE, the caller's to free (free()) */
    uint64_t group_seq;                  /* out: the message's place in the group */
    store_entries fanout;                /* out: the devices the group envelope went to */
    /* out */
    uint64_t server_ms;                  /* accepted_ms, or the first acceptance's */
    bool duplicate;                      /* nothing new was written */
    uint8_t mismatch_account[STORE_ACCOUNT_ID_LEN];
    uint32_t mismatch_ids[STORE_MAX_DEVICES];
    size_t mismatch_n;
    uint32_t stale_ids[STORE_MAX_DEVICES];
    size_t stale_n;
    uint32_t full_ids[STORE_MAX_DEVICES]; /* STORE_INBOX_FULL: the recipient's devices that are */
    size_t n_full;
    uint64_t retry_ms;                   /* STORE_DAILY_QUOTA: until the next day */
} store_send;
void store_accept_send(store *s, store_home *h, store_send *r);

/* Appends one envelope (a read or retry receipt) to every device of to_account but the
 * origin, and to the origin's other devices; or, when to_device is set, to that one
 * device only. STORE_UNKNOWN_ACCOUNT; the quotas as for a send (one write, its bytes
 * once per device). appended gets each device written to (for wakes).
 *   JetStream: Keys dev.<uid>.*, then one publish per device as in store_accept_send. */
typedef struct {
    store_req req;
    store_origin from;
    uint8_t to_account[STORE_ACCOUNT_ID_LEN];
    uint32_t to_device;                  /* 0: every device */
    const uint8_t *envelope;
    size_t len;
    uint64_t now;
    store_entries appended;              /* out: devices only */
    uint64_t retry_ms;                   /* out: STORE_DAILY_QUOTA */
} store_post;
void store_post_receipt(store *s, store_home *h, store_post *r);

/* Reads up to max envelopes of a device with seq > after, in order; fn returns false to
 * stop early; data is valid only during fn. Nothing is written; fn runs before done.
 *   JetStream: DirectGet next_by_subj inbox.<k>.<device> from the cursor, until
 *   NOT_FOUND or max. */
typedef bool (*store_envelope_fn)(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data,
                                  size_t len);
typedef struct {
    store_req req;
    store_device device;
    uint64_t after;
    size_t max;
    store_envelope_fn fn;
    void *ctx;
} store_read;
void store_read_inbox(store *s, store_home *h, store_read *r);

/* Takes (deletes) the origin's envelopes with seq <= up_to, a cumulative ack, and puts a
 * delivered receipt in the inbox of every device of each message's author (not for the
 * origin's own account's messages). A full disk loses the receipts, not the take: acks
 * keep freeing space when nothing else can be written. receipts gets the devices.
 *   JetStream: delete each taken sequence (pipelined raw deletes; not purge on 2.9),
 *   then receipts published as in store_post_receipt; the cursor kept in dev.<uid>.<id>. */
typedef struct {
    store_req req;
    store_origin from;
    uint64_t up_to;
    uint64_t now;
    store_entries receipts;              /* out: devices only */
} store_take;
void store_take_inbox(store *s, store_home *h, store_take *r);

/* Stores the origin's keys. Refusals (nothing stored): STORE_TOO_MANY_PREKEYS,
 * STORE_PREKEY_CONFLICT. An empty upload is the status query.
 *   JetStream: PREKEYS stream, one message per key on pk.<device>; signed prekey in KV
 *   spk.<device>; the stock counted from stream info with SubjectsFilter. */
typedef struct {
    store_req req;
    store_origin from;
    store_keys keys;
    size_t max_held;
    uint64_t now;
    /* out */
    size_t left;                         /* one-time prekeys held after it */
    bool has_signed;
    uint32_t signed_id;
} store_upload;
void store_upload_keys(store *s, store_home *h, store_upload *r);

/* Prekey bundles for the devices of account (wanted, or every one but the origin), each
 * with one one-time prekey if any is left: taken in this commit, so none is ever handed
 * out twice, not even across a crash. A device left with fewer than low keys gets a
 * low-stock notice in its inbox, once until it uploads again (a full disk loses the
 * notice, not the fetch). STORE_UNKNOWN_ACCOUNT.
 *   JetStream: take = DirectGet head of pk.<device>, then js_DeleteMsg: the delete that
 *   succeeds owns the key (err 10043: another taker won, try the next). */
typedef struct {
    store_device_record device;
    store_signed_prekey signed_prekey;
    bool has_prekey;
    store_prekey prekey;
} store_bundle;

typedef struct {
    store_req req;
    store_origin from;
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    uint32_t wanted[STORE_MAX_DEVICES];  /* none: every device */
    size_t n_wanted;
    size_t low;
    uint64_t now;
    bool no_prekey;                      /* hand out signed prekeys only (the target's
                                            one-time prekeys are being drained) */
    /* out */
    store_bundle bundles[STORE_MAX_DEVICES];
    size_t n;
    store_entries notices;               /* devices only */
} store_fetch;
void store_fetch_bundles(store *s, store_home *h, store_fetch *r);

/* ---- groups (group.h has the record and the rules of each change) ---------------- */

/* A change to a group (create, add, remove, leave, promote, demote, subject, settings),
 * by the origin's account, checked against the group's rules (group.h) and committed
 * with the group's new version; then the event (store_envelopes.group_event) goes to
 * every member device after the change and to the members removed, with the group's
 * next seq, in the same order as the group's messages. A create whose id exists with
 * the same creator is answered as the first (duplicate set), else STORE_EXISTS; at most
 * creates_per_day per account a UTC day (STORE_GROUP_QUOTA; counted in memory). Every
 * member account must exist (STORE_UNKNOWN_ACCOUNT).
 *   JetStream: KV GROUPS g.<gid> updated with the revision it was read at (another
 *   writer's change in between: read again, check again), mg.<uid>.<gid> keys for the
 *   member's list, the seq from the KV revision; the event published as a group send. */
struct store_group_change {
    store_req req;
    store_origin from;
    uint8_t op;                          /* GROUP_OP_* (group.h) */
    uint8_t group_id[STORE_GROUP_ID_LEN];
    uint8_t (*accounts)[STORE_ACCOUNT_ID_LEN]; /* the caller's, n_accounts of them */
    size_t n_accounts;
    char subject[STORE_SUBJECT_MAX + 1];
    uint8_t settings[3];                 /* add, send, edit_subject: GROUP_WHO_* (0: unchanged) */
    uint64_t now;
    uint32_t creates_per_day;            /* 0: no limit */
    /* out */
    store_group *group;                  /* the group after the change (also on a refusal,
                                            when it exists), the caller's to free (free()) */
    uint64_t seq;                        /* the event's */
    bool duplicate;                      /* a create sent again, or a change that changed nothing:
                                            no event */
    uint8_t (*removed)[STORE_ACCOUNT_ID_LEN]; /* no longer members (they get the event too); the
                                            caller's to free (free()) */
    size_t n_removed;
    store_entries targets;               /* devices the event went to */
    uint64_t retry_ms;                   /* STORE_GROUP_QUOTA */
};
void store_change_group(store *s, store_home *h, store_group_change *r);

/* A group's record (*group, the caller's to free), or the groups an account is a member
 * of (groups: n of them, without members). STORE_UNKNOWN_GROUP.
 *   JetStream: KV Get g.<gid>; Keys mg.<uid>.* then each g.<gid>. */
typedef struct {
    store_req req;
    bool list;
    uint8_t group_id[STORE_GROUP_ID_LEN];
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    store_group *group;                  /* out */
    store_group_summary *groups;         /* out, list: an array, the caller's to free (free()) */
    size_t n;
} store_group_query;
void store_get_group(store *s, store_home *h, store_group_query *r);

/* Deletes envelopes stored before inbox_cutoff and de-duplication records older than
 * dedup_cutoff, at most max of each (bounded work per request).
 *   JetStream: the streams' MaxAge does it; the request completes with nothing removed. */
typedef struct {
    store_req req;
    uint64_t inbox_cutoff, dedup_cutoff;
    size_t max;
    size_t inbox_removed, dedup_removed; /* out */
} store_sweep;
void store_sweep_expired(store *s, store_home *h, store_sweep *r);

/* Completes once every request submitted to h before it has completed, so a device's
 * new receiving connection sees what its previous one acknowledged; then checks, in
 * order with registrations, that from's device still has the key its connection
 * proved (STORE_REPLACED: registered again since, so the connection must not become
 * the receiving connection of the new install).
 *   JetStream: completes when the home's pending publish acks are in, then KV Get
 *   dev.<uid>.<devid> and the key compared. */
typedef struct {
    store_req req;
    store_origin from;
} store_sync_req;
void store_sync(store *s, store_home *h, store_sync_req *r);

/* ---- the store itself ----------------------------------------------------------------- */

typedef struct {
    uint64_t inbox_envelopes;   /* undelivered envelopes, all devices */
    uint64_t dedup_records;
    uint64_t accounts;
    uint64_t devices;
    uint64_t prekeys;           /* one-time prekeys held, all devices */
    uint64_t pages_used;        /* embedded: the data file's high-water mark */
    uint64_t pages_free;        /* embedded: freed pages waiting for reuse */
    uint32_t page_size;
} store_stats;

typedef struct {
    uint64_t commits;           /* durable commits (fsyncs) */
    uint64_t writes;            /* write requests they carried */
    uint64_t retries;           /* commits run again after a storage error in one request */
} store_run_stats;

/* What a backend implements. */
typedef struct {
    void (*submit)(store *s, store_home *h, store_req *r);
    int (*home_open)(store *s, uv_loop_t *loop, store_home **out);
    void (*home_close)(store_home *h);   /* on its loop, once the store stopped */
    store_run_stats (*stop)(store *s);   /* completes what was submitted; no more after */
    void (*close)(store *s);
    int (*stats)(store *s, store_stats *out);
} store_ops;

struct store {
    const store_ops *ops;
    const store_envelopes *envelopes;
};

/* The embedded backend in dir (created if missing): LMDB (data.mdb; map_size bounds it,
 * 0: 4 GiB) and the inbox log (inbox/), an older directory's inboxes moved there first;
 * quota may be NULL (no limits). Its writer thread starts here. */
int store_open_embedded(store **out, const char *dir, uint64_t map_size, const store_quota *quota,
                        const store_envelopes *envelopes);

/* A loop's return path: every request is submitted with the home of the loop it runs
 * on, where its done runs. */
int store_home_open(store *s, uv_loop_t *loop, store_home **out);
void store_home_close(store_home *h);

store_run_stats store_stop(store *s);
void store_close(store *s);
int store_get_stats(store *s, store_stats *out);

#endif
