/* embedded.c - the embedded backend (store.h on one machine): the inboxes in the inbox
 * log (inbox_log.h: segment files, an index in memory), accounts, devices, keys and
 * checkpointed de-duplication records in LMDB (ldb.h). Writes go through the writer
 * thread (writer.h) in two phases a batch, the data file's parts first, then the log's
 * group commit; reads run inline on the calling loop (neither store makes a reader wait
 * for the writer). docs/storage.md has the design. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "day_quota.h"
#include "dedup_checkpoint.h"
#include "dedup_recent.h"
#include "group.h"
#include "inbox_log.h"
#include "ldb.h"
#include "store_kinds.h"
#include "writer.h"

#define MAX_BATCH 4096      /* requests in one commit */
#define NOTICE_CAP 64       /* a low-stock notice envelope */
#define DAY_MS 86400000u
#define CHECKPOINT_MS 1000        /* recent sends go to the data file at least this often */
#define CHECKPOINT_MAX 200000     /* or once this many wait */
#define NOTE_LEN (DEDUP_KEY_LEN + 8)

typedef struct {
    store base;
    ldb *db;
    writer *wr;
    inbox_log *log;
    store_quota quota;
    day_quota days;          /* the writer thread's, as are the ones below */
    day_quota group_days;    /* groups created today, by account */
    dedup_recent recent;     /* sends accepted since the last checkpoint, durable */
    dedup_recent pending;    /* and those of the batch being applied: recent once committed */
    dedup_recent saving;     /* those of the checkpoint under way (or failed: tried again) */
    uint64_t saving_segment; /* the log's segment when saving was taken from recent */
    bool saving_now;         /* saving is being written by the checkpoint thread */
    dedup_checkpoint *ckpt;
    uint64_t checkpoint_ms;  /* when the last one began */
    bool checkpoint_failed;  /* the last one did: the next waits CHECKPOINT_MS */
} embedded;

static embedded *owner_of(const store_req *r)
{
    return (embedded *)r->home->owner;
}

static bool same_account(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, STORE_ACCOUNT_ID_LEN) == 0;
}

/* STORE_OK if the origin device still has the key its connection proved. */
static int origin_current(ldb_batch *b, const store_origin *o)
{
    store_device_record rec;
    int rc = ldb_batch_device_get(b, &o->device, &rec);
    if (rc == STORE_OK && memcmp(rec.identity_key, o->key_prefix, sizeof o->key_prefix) != 0)
        rc = STORE_NOT_FOUND;
    return rc == STORE_NOT_FOUND ? STORE_REPLACED : rc;
}

/* The log room every envelope of l takes, and extra bytes more. */
static size_t cost_of(const store_entries *l, size_t envelope_len, size_t extra)
{
    size_t bytes = extra;
    for (size_t i = 0; i < l->n; i++)
        bytes += INBOX_LOG_ENVELOPE_COST(envelope_len ? envelope_len : l->items[i].len);
    return bytes;
}

/* Appends each envelope of l (or envelope, for all of them, when given), the room for
 * them reserved first: all go or none. */
static int append_all(inbox_log *log, const store_entries *l, const uint8_t *envelope, size_t len, uint64_t now,
                      size_t extra)
{
    int rc = inbox_log_reserve(log, cost_of(l, envelope ? len : 0, extra));
    for (size_t i = 0; rc == STORE_OK && i < l->n; i++) {
        uint64_t seq;
        const store_entry *t = &l->items[i];
        rc = envelope ? inbox_log_append(log, &t->device, now, envelope, len, &seq)
                      : inbox_log_append(log, &t->device, now, l->buf + t->offset, t->len, &seq);
    }
    return rc;
}

/* One envelope for every device of account except skip (if it is one of them). */
static int add_account(ldb_batch *b, const uint8_t account[STORE_ACCOUNT_ID_LEN], const store_device *skip,
                       const uint8_t *envelope, size_t len, store_entries *l)
{
    uint32_t ids[STORE_MAX_DEVICES];
    size_t n;
    int rc = ldb_batch_account_devices(b, account, ids, STORE_MAX_DEVICES, &n);
    if (rc != STORE_OK)
        return rc;
    if (n == 0)
        return STORE_UNKNOWN_ACCOUNT;
    for (size_t i = 0; i < n; i++) {
        store_device d = {.device = ids[i]};
        memcpy(d.account, account, STORE_ACCOUNT_ID_LEN);
        if (skip && skip->device == d.device && same_account(skip->account, account))
            continue;
        if ((rc = store_entries_add(l, &d, envelope, len)) != STORE_OK)
            return rc;
    }
    return STORE_OK;
}

/* ---- keys ------------------------------------------------------------------------- */

static int keys_apply(ldb_batch *b, const store_device *d, const store_keys *k, size_t max_held, uint64_t now,
                      size_t *left)
{
    int rc = STORE_OK;
    if (k->has_signed) {
        store_signed_prekey sp = k->signed_prekey;
        sp.uploaded_ms = now;
        rc = ldb_signed_prekey_put(b, d, &sp);
    }
    if (rc == STORE_OK && k->n)
        rc = ldb_prekeys_add(b, d, k->prekeys, k->n);
    if (rc == STORE_OK)
        rc = ldb_prekeys_count(b, d, left);
    if (rc == STORE_OK && *left > max_held)
        rc = STORE_TOO_MANY_PREKEYS; /* isolated: rolled back, nothing was added */
    return rc == STORE_EXISTS ? STORE_PREKEY_CONFLICT : rc;
}

static int register_apply(ldb_batch *b, store_registration *r)
{
    int rc = ldb_register(b, r->phone, r->new_id, &r->primary, r->account, r->replaced, &r->n_replaced);
    store_device d = {.device = r->primary.device};
    memcpy(d.account, r->account, STORE_ACCOUNT_ID_LEN);
    size_t left;
    return rc == STORE_OK ? keys_apply(b, &d, &r->keys, r->max_held, r->now, &left) : rc;
}

static int upload_apply(ldb_batch *b, store_upload *r)
{
    r->has_signed = false;
    int rc = origin_current(b, &r->from);
    if (rc == STORE_OK)
        rc = keys_apply(b, &r->from.device, &r->keys, r->max_held, r->now, &r->left);
    store_signed_prekey sp;
    int src = rc == STORE_OK ? ldb_signed_prekey_get(b, &r->from.device, &sp) : rc;
    if (src == STORE_OK) {
        r->has_signed = true;
        r->signed_id = sp.id;
    }
    return rc != STORE_OK ? rc : src == STORE_NOT_FOUND ? STORE_OK : src;
}

static bool wanted(const store_fetch *r, uint32_t device)
{
    if (same_account(r->account, r->from.device.account) && device == r->from.device.device)
        return false; /* a device never needs its own bundle */
    for (size_t i = 0; i < r->n_wanted; i++)
        if (r->wanted[i] == device)
            return true;
    return r->n_wanted == 0;
}

static int fetch_apply(ldb_batch *b, store_fetch *r, const store_envelopes *env)
{
    r->n = 0;
    store_entries_clear(&r->notices);
    store_device_record recs[STORE_MAX_DEVICES];
    size_t n;
    int rc = origin_current(b, &r->from);
    if (rc == STORE_OK)
        rc = ldb_batch_account_device_records(b, r->account, recs, STORE_MAX_DEVICES, &n);
    if (rc != STORE_OK)
        return rc;
    if (n == 0)
        return STORE_UNKNOWN_ACCOUNT;
    for (size_t i = 0; i < n && rc == STORE_OK; i++) {
        if (!wanted(r, recs[i].device))
            continue;
        store_bundle *out = &r->bundles[r->n];
        store_device d = {.device = recs[i].device};
        memcpy(d.account, r->account, STORE_ACCOUNT_ID_LEN);
        rc = ldb_signed_prekey_get(b, &d, &out->signed_prekey);
        if (rc == STORE_NOT_FOUND) { /* registered without keys: nothing to offer */
            rc = STORE_OK;
            continue;
        }
        size_t left = r->low; /* not taken: no notice either */
        if (rc == STORE_OK)
            rc = r->no_prekey ? STORE_NOT_FOUND : ldb_prekey_take(b, &d, &out->prekey, &left);
        out->has_prekey = rc == STORE_OK;
        if (rc == STORE_NOT_FOUND)
            rc = STORE_OK;
        if (rc != STORE_OK)
            break;
        out->device = recs[i];
        r->n++;
        bool first = false;
        if (left < r->low && (rc = ldb_prekeys_notice(b, &d, &first)) == STORE_OK && first &&
            (rc = store_entries_reserve(&r->notices, NOTICE_CAP)) == STORE_OK) { /* once until it uploads */
            size_t len = env->prekeys_low(r->notices.buf + r->notices.used, NOTICE_CAP, r->now, (uint32_t)left);
            rc = len ? store_entries_add(&r->notices, &d, NULL, len) : STORE_INVALID;
        }
    }
    return rc; /* the notices go in the log phase */
}

/* The low-stock notices a fetch decided on; a full disk loses them, not the fetch. */
static int fetch_log(store_fetch *r, embedded *e)
{
    if (r->notices.n && append_all(e->log, &r->notices, NULL, 0, r->now, 0) != STORE_OK)
        store_entries_clear(&r->notices);
    return STORE_OK;
}

/* ---- sends and receipts ------------------------------------------------------------- */

/* Refuses an envelope of len bytes that would take d's inbox past its quota (an empty
 * inbox takes one of any size: a write larger than the quota must not wait forever). */
static int check_inbox(inbox_log *log, const store_quota *q, const store_device *d, size_t len)
{
    uint64_t held, bytes;
    if (!q->inbox_envelopes && !q->inbox_bytes)
        return STORE_OK;
    inbox_log_usage(log, d, &held, &bytes);
    int rc = STORE_OK;
    if (held &&
        ((q->inbox_envelopes && held >= q->inbox_envelopes) || (q->inbox_bytes && bytes + len > q->inbox_bytes)))
        rc = STORE_INBOX_FULL;
    return rc;
}

/* Counts one write of bytes against the account's quota for today, or refuses it with
 * the time until the next UTC day. */
static int charge_day(embedded *e, const uint8_t account[STORE_ACCOUNT_ID_LEN], uint64_t now, uint64_t bytes,
                      uint64_t *retry_ms)
{
    uint64_t day = now / DAY_MS;
    if (day_quota_charge(&e->days, account, day, e->quota.daily_writes, e->quota.daily_bytes, bytes))
        return STORE_OK;
    *retry_ms = (day + 1) * DAY_MS - now;
    return STORE_DAILY_QUOTA;
}

/* Does the send address exactly the devices of account (less the sender itself), each
 * with the registration id it has now? A resend may address some of them only. */
static int check_devices(ldb_batch *b, store_send *r, const uint8_t account[STORE_ACCOUNT_ID_LEN])
{
    store_device_record recs[STORE_MAX_DEVICES];
    size_t n, given = 0, expected = 0, stale = 0;
    int rc = ldb_batch_account_device_records(b, account, recs, STORE_MAX_DEVICES, &n);
    if (rc != STORE_OK)
        return rc;
    if (n == 0)
        return STORE_UNKNOWN_ACCOUNT;
    bool match = true;
    for (size_t i = 0; i < n; i++) {
        if (same_account(account, r->from.device.account) && recs[i].device == r->from.device.device)
            continue;
        expected++;
        const store_entry *t = NULL;
        for (size_t k = 0; k < r->targets.n && !t; k++)
            if (r->targets.items[k].device.device == recs[i].device &&
                same_account(r->targets.items[k].device.account, account))
                t = &r->targets.items[k];
        if (t && t->check_registration && t->registration_id != recs[i].registration_id)
            r->stale_ids[stale++] = recs[i].device;
        match &= t != NULL || r->resend;
        given += t != NULL;
    }
    size_t addressed = 0; /* device messages for this account, existing devices or not */
    for (size_t k = 0; k < r->targets.n; k++)
        addressed += same_account(r->targets.items[k].device.account, account);
    if (match && stale == 0 && addressed == given && (r->resend || given == expected))
        return STORE_OK;
    memcpy(r->mismatch_account, account, STORE_ACCOUNT_ID_LEN);
    for (size_t i = 0; i < n; i++)
        r->mismatch_ids[i] = recs[i].device;
    r->mismatch_n = n;
    r->stale_n = stale;
    return STORE_DEVICE_MISMATCH;
}

/* A send accepted before: since the last checkpoint (in memory), or before it. */
static int dedup_get(ldb_batch *b, embedded *e, const uint8_t key[DEDUP_KEY_LEN], const store_send *r,
                     uint64_t *first)
{
    if (dedup_recent_get(&e->recent, key, first) || dedup_recent_get(&e->pending, key, first) ||
        dedup_recent_get(&e->saving, key, first))
        return STORE_OK;
    return ldb_dedup_get(b, &r->from.device, r->message_id, first);
}

/* ---- groups ------------------------------------------------------------------------ */

#define EVENT_CAP (64u << 10) /* a group event: the group's members, and the change's accounts */

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* The next seq of a group (its last: the batch's, the recent ones', the checkpoint's
 * under way, or the data file's; plus one). Taken by group_seq_take. */
static int group_seq_next(ldb_batch *b, embedded *e, const uint8_t id[STORE_GROUP_ID_LEN], uint64_t *next)
{
    uint8_t key[DEDUP_KEY_LEN];
    dedup_recent_group_key(key, id);
    uint64_t last;
    int rc = STORE_OK;
    if (!dedup_recent_get(&e->pending, key, &last) && !dedup_recent_get(&e->recent, key, &last) &&
        !dedup_recent_get(&e->saving, key, &last))
        rc = ldb_group_seq_get(b, id, &last);
    *next = last + 1;
    return rc;
}

/* A record of the de-duplication table (a send's, or a group's last seq): in a NOTE
 * (the log's room reserved), and in memory once the batch is committed (room in pending
 * reserved). */
static int remember(embedded *e, const uint8_t key[DEDUP_KEY_LEN], uint64_t value)
{
    uint8_t note[NOTE_LEN];
    memcpy(note, key, DEDUP_KEY_LEN);
    put_be64(note + DEDUP_KEY_LEN, value);
    int rc = inbox_log_note(e->log, note, sizeof note);
    return rc == STORE_OK ? dedup_recent_put(&e->pending, note, value) : rc;
}

/* The group's seq is seq from now on. */
static int group_seq_take(embedded *e, const uint8_t id[STORE_GROUP_ID_LEN], uint64_t seq)
{
    uint8_t key[DEDUP_KEY_LEN];
    dedup_recent_group_key(key, id);
    return remember(e, key, seq);
}

/* Every device of each of the n accounts (devices only). */
static int add_devices(ldb_batch *b, const uint8_t *accounts, size_t stride, size_t n, store_entries *l)
{
    uint32_t ids[STORE_MAX_DEVICES];
    int rc = STORE_OK;
    for (size_t i = 0; rc == STORE_OK && i < n; i++) {
        const uint8_t *account = accounts + i * stride;
        size_t k;
        if ((rc = ldb_batch_account_devices(b, account, ids, STORE_MAX_DEVICES, &k)) != STORE_OK)
            break;
        for (size_t j = 0; rc == STORE_OK && j < k; j++) {
            store_device d = {.device = ids[j]};
            memcpy(d.account, account, STORE_ACCOUNT_ID_LEN);
            rc = store_entries_add(l, &d, NULL, 0);
        }
    }
    return rc;
}

/* envelope once for every device of l, its bytes stored once (room reserved). */
static int append_group(inbox_log *log, const store_entries *l, uint64_t now, const uint8_t *envelope, size_t len)
{
    if (l->n == 0)
        return STORE_OK;
    store_device *devices = malloc(l->n * sizeof *devices);
    uint64_t *seqs = malloc(l->n * sizeof *seqs);
    int rc = devices && seqs ? STORE_OK : STORE_NOMEM;
    for (size_t i = 0; rc == STORE_OK && i < l->n; i++)
        devices[i] = l->items[i].device;
    if (rc == STORE_OK)
        rc = inbox_log_append_shared(log, devices, l->n, now, envelope, len, seqs);
    free(devices);
    free(seqs);
    return rc;
}

/* The rest of a group send, after the de-duplication (note is its NOTE's key): the
 * sender's right to send, the membership version, the key distributions' devices; then
 * the distributions, the group's envelope for every member device, both NOTEs (note
 * is the send's de-duplication key). */
static int group_send_apply(ldb_batch *b, store_send *r, embedded *e, const uint8_t note[DEDUP_KEY_LEN])
{
    store_entries_clear(&r->fanout);
    store_group *g = r->group ? r->group : (r->group = malloc(sizeof *r->group));
    if (!g)
        return STORE_NOMEM;
    int rc = ldb_group_get(b, r->group_id, g);
    if (rc == STORE_NOT_FOUND)
        rc = STORE_UNKNOWN_GROUP;
    if (rc == STORE_OK)
        rc = group_may_send(g, r->from.device.account);
    if (rc == STORE_OK && g->version != r->group_version)
        return STORE_GROUP_STALE; /* r->group goes back with the members as they are */
    /* each distribution goes to a member's device that exists (any of them) */
    bool resend = r->resend;
    r->resend = true;
    for (size_t i = 0; rc == STORE_OK && i < r->targets.n; i++) {
        const uint8_t *account = r->targets.items[i].device.account;
        bool seen = false;
        for (size_t k = 0; k < i && !seen; k++)
            seen = same_account(r->targets.items[k].device.account, account);
        if (seen)
            continue;
        if (group_find(g, account) < 0) {
            rc = STORE_GROUP_STALE;
            break;
        }
        rc = check_devices(b, r, account);
    }
    r->resend = resend;
    if (rc == STORE_GROUP_STALE)
        return rc;
    if (rc == STORE_OK)
        rc = add_devices(b, g->members[0].account, sizeof g->members[0], g->n, &r->fanout);
    free(r->group);
    r->group = NULL;
    uint64_t seq;
    if (rc == STORE_OK)
        rc = group_seq_next(b, e, r->group_id, &seq);
    if (rc != STORE_OK)
        return rc;
    size_t cap = r->group_len + 16, len;
    uint8_t *envelope = malloc(cap);
    if (!envelope)
        return STORE_NOMEM;
    len = e->base.envelopes->with_group_seq(envelope, cap, r->group_envelope, r->group_len, seq);
    rc = len ? STORE_OK : STORE_INVALID;
    if (rc == STORE_OK)
        rc = inbox_log_reserve(e->log, cost_of(&r->targets, 0, INBOX_LOG_SHARED_COST(r->fanout.n, len) +
                                                                    2 * INBOX_LOG_NOTE_COST(NOTE_LEN)));
    if (rc == STORE_OK)
        rc = dedup_recent_reserve(&e->pending, 2);
    if (rc == STORE_OK) /* the day's bytes: what the sender made the server store */
        rc = charge_day(e, r->from.device.account, r->server_ms, r->targets.used + len, &r->retry_ms);
    if (rc == STORE_OK)
        rc = append_all(e->log, &r->targets, NULL, 0, r->server_ms, 0);
    if (rc == STORE_OK)
        rc = append_group(e->log, &r->fanout, r->server_ms, envelope, len);
    free(envelope);
    if (rc == STORE_OK && (rc = remember(e, note, r->server_ms)) == STORE_OK)
        rc = group_seq_take(e, r->group_id, seq);
    if (rc == STORE_OK)
        r->group_seq = seq;
    return rc;
}

/* Every account a change brings in must exist. */
static int check_accounts(ldb_batch *b, const store_group_change *r)
{
    uint32_t ids[1];
    size_t n;
    for (size_t i = 0; i < r->n_accounts; i++) {
        int rc = ldb_batch_account_devices(b, r->accounts[i], ids, 1, &n);
        if (rc != STORE_OK)
            return rc;
        if (n == 0)
            return STORE_UNKNOWN_ACCOUNT;
    }
    return STORE_OK;
}

/* The data file's part of a group change: the record, checked by the rules and written
 * with the members' lists. The event follows in the log part (group_change_log). */
static int group_change_db(ldb_batch *b, store_group_change *r, embedded *e)
{
    r->duplicate = false;
    r->n_removed = 0;
    int rc = origin_current(b, &r->from);
    if (rc != STORE_OK)
        return rc;
    store_group *g = r->group ? r->group : (r->group = malloc(sizeof *r->group));
    if (!g || (!r->removed && !(r->removed = malloc(STORE_GROUP_MAX * sizeof *r->removed))))
        return STORE_NOMEM;
    rc = ldb_group_get(b, r->group_id, g);
    if (r->op == GROUP_OP_CREATE) {
        if (rc == STORE_OK) { /* a create sent again: its creator gets the group as it is */
            if (!same_account(g->creator, r->from.device.account))
                return STORE_EXISTS;
            r->duplicate = true;
            return STORE_OK;
        }
        if (rc != STORE_NOT_FOUND || (rc = check_accounts(b, r)) != STORE_OK ||
            (rc = group_create(g, r)) != STORE_OK)
            return rc;
        uint64_t day = r->now / DAY_MS;
        if (r->creates_per_day &&
            !day_quota_charge(&e->group_days, r->from.device.account, day, r->creates_per_day, 0, 0)) {
            r->retry_ms = (day + 1) * DAY_MS - r->now;
            return STORE_GROUP_QUOTA;
        }
        return ldb_group_put(b, g, NULL);
    }
    if (rc == STORE_NOT_FOUND) {
        free(r->group);
        r->group = NULL;
        return STORE_UNKNOWN_GROUP;
    }
    if (rc != STORE_OK || (r->op == GROUP_OP_ADD && (rc = check_accounts(b, r)) != STORE_OK))
        return rc;
    store_group *before = malloc(sizeof *before);
    if (!before)
        return STORE_NOMEM;
    memcpy(before, g, sizeof *before);
    bool changed;
    rc = group_apply(g, r, &changed, r->removed, &r->n_removed);
    if (rc == STORE_OK && !changed)
        r->duplicate = true;
    else if (rc == STORE_OK)
        rc = ldb_group_put(b, g, before);
    free(before);
    return rc;
}

/* The event of a change, to every member device after it and to the removed ones, with
 * the group's next seq. A full disk here (another request of the batch took the last
 * room) loses the event, not the change: it is reported, and the next event's version
 * tells the members that they missed one. */
static int group_change_log(ldb_batch *b, store_group_change *r, embedded *e)
{
    store_entries_clear(&r->targets);
    if (r->duplicate)
        return STORE_OK;
    store_group *g = r->group;
    uint64_t seq;
    int rc = add_devices(b, g->members[0].account, sizeof g->members[0], g->n, &r->targets);
    if (rc == STORE_OK)
        rc = add_devices(b, r->removed[0], sizeof r->removed[0], r->n_removed, &r->targets);
    if (rc == STORE_OK)
        rc = group_seq_next(b, e, g->id, &seq);
    uint8_t *envelope = rc == STORE_OK ? malloc(EVENT_CAP) : NULL;
    if (rc == STORE_OK && !envelope)
        rc = STORE_NOMEM;
    size_t len = rc == STORE_OK ? e->base.envelopes->group_event(envelope, EVENT_CAP, r, g, seq) : 0;
    if (rc == STORE_OK && !len)
        rc = STORE_INVALID;
    if (rc == STORE_OK)
        rc = inbox_log_reserve(e->log, INBOX_LOG_SHARED_COST(r->targets.n, len) + INBOX_LOG_NOTE_COST(NOTE_LEN));
    if (rc == STORE_OK)
        rc = dedup_recent_reserve(&e->pending, 1);
    if (rc == STORE_OK)
        rc = append_group(e->log, &r->targets, r->now, envelope, len);
    if (rc == STORE_OK)
        rc = group_seq_take(e, g->id, seq);
    free(envelope);
    if (rc == STORE_OK) {
        r->seq = seq;
    } else {
        fprintf(stderr, "parleyd: a group's event could not be stored (version %llu): %s\n",
                (unsigned long long)g->version, store_strerror(rc));
        store_entries_clear(&r->targets);
    }
    return rc;
}

/* A group, or an account's groups: read inline. */
static int group_query(ldb *db, store_group_query *r)
{
    if (r->list)
        return ldb_member_groups(db, r->account, &r->groups, &r->n);
    if (!r->group && !(r->group = malloc(sizeof *r->group)))
        return STORE_NOMEM;
    int rc = ldb_group_read(db, r->group_id, r->group);
    return rc == STORE_NOT_FOUND ? STORE_UNKNOWN_GROUP : rc;
}

/* ---- sends ---------------------------------------------------------------------- */

static int send_apply(ldb_batch *b, store_send *r, embedded *e)
{
    uint64_t first;
    uint8_t note[NOTE_LEN];
    r->duplicate = false;
    r->server_ms = r->accepted_ms;
    int rc = origin_current(b, &r->from);
    if (rc != STORE_OK)
        return rc;
    dedup_recent_key(note, &r->from.device, r->message_id);
    rc = dedup_get(b, e, note, r, &first);
    if (rc == STORE_OK) { /* a resend: the same ack, nothing new */
        r->server_ms = first;
        r->duplicate = true;
        return STORE_OK;
    }
    if (rc != STORE_NOT_FOUND)
        return rc;
    if (r->to_group)
        return group_send_apply(b, r, e, note);
    if ((rc = check_devices(b, r, r->recipient)) != STORE_OK)
        return rc;
    if (!same_account(r->recipient, r->from.device.account) &&
        (rc = check_devices(b, r, r->from.device.account)) != STORE_OK)
        return rc;
    /* every refusal before the first write: this request shares its group. The sender's
     * own devices take their copies whatever they hold (its day's quota bounds them). */
    r->n_full = 0;
    for (size_t i = 0; i < r->targets.n; i++) {
        const store_device *d = &r->targets.items[i].device;
        if (same_account(d->account, r->from.device.account))
            continue;
        if ((rc = check_inbox(e->log, &e->quota, d, r->targets.items[i].len)) == STORE_INBOX_FULL)
            r->full_ids[r->n_full++] = d->device;
        else if (rc != STORE_OK)
            return rc;
    }
    if (r->n_full)
        return STORE_INBOX_FULL;
    if ((rc = inbox_log_reserve(e->log, cost_of(&r->targets, 0, INBOX_LOG_NOTE_COST(NOTE_LEN)))) != STORE_OK ||
        (rc = dedup_recent_reserve(&e->pending, 1)) != STORE_OK ||
        (rc = charge_day(e, r->from.device.account, r->server_ms, r->targets.used, &r->retry_ms)) != STORE_OK)
        return rc;
    /* the envelopes, and the de-duplication record (a NOTE: replayed into memory until a
     * checkpoint puts it in the data file) */
    if ((rc = append_all(e->log, &r->targets, NULL, 0, r->server_ms, 0)) != STORE_OK)
        return rc;
    return remember(e, note, r->server_ms);
}

static int post_apply(ldb_batch *b, store_post *r, embedded *e)
{
    store_entries *l = &r->appended;
    store_entries_clear(l);
    int rc = origin_current(b, &r->from);
    if (rc == STORE_OK && r->to_device) { /* to that device alone */
        store_device_record rec;
        store_device d = {.device = r->to_device};
        memcpy(d.account, r->to_account, STORE_ACCOUNT_ID_LEN);
        rc = ldb_batch_device_get(b, &d, &rec);
        if (rc == STORE_NOT_FOUND)
            rc = STORE_UNKNOWN_ACCOUNT;
        if (rc == STORE_OK)
            rc = store_entries_add(l, &d, r->envelope, 0);
    } else if (rc == STORE_OK) {
        rc = add_account(b, r->to_account, &r->from.device, r->envelope, 0, l);
        if (rc == STORE_OK && !same_account(r->to_account, r->from.device.account)) /* the origin's other devices */
            rc = add_account(b, r->from.device.account, &r->from.device, r->envelope, 0, l);
    }
    for (size_t i = 0; rc == STORE_OK && i < l->n; i++)
        if (!same_account(l->items[i].device.account, r->from.device.account))
            rc = check_inbox(e->log, &e->quota, &l->items[i].device, r->len);
    if (rc == STORE_OK)
        rc = inbox_log_reserve(e->log, cost_of(l, r->len, 0));
    if (rc == STORE_OK)
        rc = charge_day(e, r->from.device.account, r->now, (uint64_t)r->len * l->n, &r->retry_ms);
    return rc == STORE_OK ? append_all(e->log, l, r->envelope, r->len, r->now, 0) : rc;
}

typedef struct {
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    uint8_t id[STORE_MESSAGE_ID_LEN];
} authored;

typedef struct {
    const store_envelopes *env;
    const uint8_t *acker;
    authored *items;
    size_t n, cap;
    bool failed;
} authored_list;

/* Notes the author and id of each message envelope a take deletes (not receipts, and
 * not the copies a device's own account sent it). */
static bool collect_authored(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data, size_t len)
{
    authored_list *l = ctx;
    const uint8_t *account, *id;
    (void)seq, (void)stored_ms;
    if (!l->env->author_of(data, len, &account, &id) || same_account(account, l->acker))
        return true;
    size_t bytes = l->cap * sizeof *l->items;
    if (!store_buf_grow(&l->items, &bytes, (l->n + 1) * sizeof *l->items, 64 * sizeof *l->items)) {
        l->failed = true;
        return true;
    }
    l->cap = bytes / sizeof *l->items;
    memcpy(l->items[l->n].account, account, STORE_ACCOUNT_ID_LEN);
    memcpy(l->items[l->n].id, id, STORE_MESSAGE_ID_LEN);
    l->n++;
    return true;
}

static int by_account(const void *a, const void *b)
{
    return memcmp(((const authored *)a)->account, ((const authored *)b)->account, STORE_ACCOUNT_ID_LEN);
}

#define RECEIPT_IDS 64
#define RECEIPT_CAP (256 + RECEIPT_IDS * (STORE_MESSAGE_ID_LEN + 2))

/* One delivered receipt per author and run of at most 64 ids (a window's worth,
 * usually one), to every device of the author's account: all packed first (each
 * receipt's devices and bytes in r->receipts), then appended, all or none. */
static int append_receipts(ldb_batch *b, embedded *e, store_take *r, const authored_list *l)
{
    uint8_t ids[RECEIPT_IDS][STORE_MESSAGE_ID_LEN], envelope[RECEIPT_CAP];
    int rc = STORE_OK;
    for (size_t i = 0; rc == STORE_OK && i < l->n;) {
        size_t n = 0;
        const uint8_t *author = l->items[i].account;
        while (i < l->n && n < RECEIPT_IDS && same_account(l->items[i].account, author))
            memcpy(ids[n++], l->items[i++].id, STORE_MESSAGE_ID_LEN);
        size_t len = e->base.envelopes->delivered(envelope, sizeof envelope, &r->from.device, r->now,
                                                  (const uint8_t(*)[STORE_MESSAGE_ID_LEN])ids, n);
        rc = len ? add_account(b, author, NULL, envelope, len, &r->receipts) : STORE_INVALID;
        if (rc == STORE_UNKNOWN_ACCOUNT) /* the author's devices are gone: no one to tell */
            rc = STORE_OK;
    }
    return rc == STORE_OK ? append_all(e->log, &r->receipts, NULL, 0, r->now, 0) : rc;
}

static int take_apply(ldb_batch *b, store_take *r, embedded *e)
{
    authored_list l = {.env = e->base.envelopes, .acker = r->from.device.account};
    store_entries_clear(&r->receipts);
    int rc = origin_current(b, &r->from);
    if (rc == STORE_OK)
        rc = inbox_log_take(e->log, &r->from.device, r->up_to, collect_authored, &l, NULL);
    if (rc == STORE_OK && l.failed)
        rc = STORE_NOMEM;
    if (rc == STORE_OK && l.n) {
        qsort(l.items, l.n, sizeof *l.items, by_account);
        int rrc = append_receipts(b, e, r, &l); /* a full disk loses the receipts, not the take */
        if (rrc != STORE_OK) {
            fprintf(stderr, "parleyd: delivered receipts could not be stored: %s\n", store_strerror(rrc));
            store_entries_clear(&r->receipts); /* nothing to wake */
        }
    }
    free(l.items);
    return rc;
}

/* ---- the writer's table ------------------------------------------------------------------ */

static unsigned parts(const store_req *r)
{
    switch (r->kind) {
    case STORE_KIND_UPLOAD: return WRITER_DB;
    case STORE_KIND_REGISTER: /* the replaced devices' inboxes go in the log */
    case STORE_KIND_FETCH:    /* the low-stock notices go in the log */
    case STORE_KIND_GROUP_CHANGE: /* the record, then its event */
    case STORE_KIND_SWEEP: return WRITER_DB | WRITER_LOG;
    default: return WRITER_LOG;
    }
}

static int apply_db(ldb_batch *b, store_req *r)
{
    embedded *e = owner_of(r);
    switch (r->kind) {
    case STORE_KIND_REGISTER: return register_apply(b, (store_registration *)r);
    case STORE_KIND_UPLOAD: return upload_apply(b, (store_upload *)r);
    case STORE_KIND_FETCH: return fetch_apply(b, (store_fetch *)r, e->base.envelopes);
    case STORE_KIND_GROUP_CHANGE: return group_change_db(b, (store_group_change *)r, e);
    case STORE_KIND_SWEEP: { /* de-duplication records; the inboxes are the log's */
        store_sweep *s = (store_sweep *)r;
        size_t none;
        return ldb_sweep(b, s->inbox_cutoff, s->dedup_cutoff, s->max, &none, &s->dedup_removed);
    }
    default: return STORE_INVALID;
    }
}

static int apply_log(ldb_batch *rb, store_req *r)
{
    embedded *e = owner_of(r);
    switch (r->kind) {
    case STORE_KIND_REGISTER: {
        store_registration *g = (store_registration *)r;
        int rc = STORE_OK;
        for (size_t i = 0; rc == STORE_OK && i < g->n_replaced; i++) {
            store_device d = {.device = g->replaced[i]};
            memcpy(d.account, g->account, STORE_ACCOUNT_ID_LEN);
            rc = inbox_log_take(e->log, &d, UINT64_MAX, NULL, NULL, NULL);
        }
        return rc;
    }
    case STORE_KIND_FETCH: return fetch_log((store_fetch *)r, e);
    case STORE_KIND_SEND: return send_apply(rb, (store_send *)r, e);
    case STORE_KIND_POST: return post_apply(rb, (store_post *)r, e);
    case STORE_KIND_TAKE: return take_apply(rb, (store_take *)r, e);
    case STORE_KIND_GROUP_CHANGE: {
        group_change_log(rb, (store_group_change *)r, e);
        return STORE_OK; /* the change is committed: its event's failure is reported above */
    }
    case STORE_KIND_SWEEP: {
        store_sweep *s = (store_sweep *)r;
        return inbox_log_expire(e->log, s->inbox_cutoff, s->max, &s->inbox_removed);
    }
    case STORE_KIND_SYNC: /* the writer runs requests in order: a barrier, then the key */
        return origin_current(rb, &((store_sync_req *)r)->from);
    default: return STORE_INVALID;
    }
}

/* These may refuse after writing, so each runs in a nested batch of its own. */
static bool isolated(const store_req *r)
{
    return r->kind == STORE_KIND_REGISTER || r->kind == STORE_KIND_UPLOAD;
}

/* A DeliverAck's take: nobody waits for it, and lost in a crash it only means those
 * envelopes are delivered again (clients drop what they already have), so it rides on
 * the next send's fdatasync. Its receipts are seen only after that commit. */
static bool lazy(const store_req *r)
{
    return r->kind == STORE_KIND_TAKE;
}

/* The group commit; only then do the batch's sends count as accepted for a resend (a
 * failed commit's never checkpointed). */
static int commit_log(void *ctx)
{
    embedded *e = ctx;
    int rc = inbox_log_commit(e->log);
    if (rc == STORE_OK)
        rc = dedup_recent_merge(&e->recent, &e->pending);
    else
        dedup_recent_clear(&e->pending);
    return rc;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The sends accepted since the last checkpoint go to the data file's dedup table in one
 * transaction, on the checkpoint thread (dedup_checkpoint.h); once it is committed,
 * the log's segments before the one being written when it began need not keep their
 * NOTEs. A failed one is kept and tried again. */
static void begin_checkpoint(embedded *e)
{
    if (!e->saving.used) { /* recent's entries, and recent starts again empty */
        dedup_recent t = e->saving;
        e->saving = e->recent;
        e->recent = t;
        e->saving_segment = inbox_log_segment(e->log); /* NOTEs from now on lie here or later */
    }
    e->checkpoint_ms = mono_ms();
    e->saving_now = dedup_checkpoint_begin(e->ckpt, &e->saving);
}

static void checkpointed(embedded *e, int rc)
{
    e->saving_now = false;
    e->checkpoint_failed = rc != STORE_OK;
    if (rc != STORE_OK) { /* kept in memory and in the log: tried again a while later */
        fprintf(stderr, "parleyd: checkpoint of %zu sends failed: %s\n", e->saving.used, store_strerror(rc));
        return;
    }
    dedup_recent_clear(&e->saving);
    if (e->saving_segment > 1)
        inbox_log_release_before(e->log, e->saving_segment);
}

static void after_batch(void *ctx)
{
    embedded *e = ctx;
    int rc;
    /* the sends accepted meanwhile wait in memory; so many that the checkpoint thread
       fell far behind hold the writer until it is done */
    if (e->saving_now && dedup_checkpoint_done(e->ckpt, e->recent.used >= 2 * CHECKPOINT_MAX, &rc))
        checkpointed(e, rc);
    bool waiting = e->recent.used || e->saving.used;
    bool pause = e->checkpoint_failed && mono_ms() - e->checkpoint_ms < CHECKPOINT_MS; /* not at every batch */
    if (!e->saving_now && waiting && !pause &&
        (e->recent.used >= CHECKPOINT_MAX || mono_ms() - e->checkpoint_ms >= CHECKPOINT_MS ||
         inbox_log_starved(e->log)))
        begin_checkpoint(e);
    else if (!waiting) /* nothing waits for a checkpoint */
        inbox_log_release_before(e->log, inbox_log_segment(e->log));
    else
        inbox_log_release_before(e->log, 0); /* segments whose removal was under way */
}

/* On the checkpoint thread: the writer lets the segments go (after_batch) even if no
 * request comes. */
static void checkpoint_finished(void *ctx)
{
    embedded *e = ctx;
    writer_poke(e->wr);
}

static const writer_ops table = {parts, apply_db, isolated, apply_log, lazy, commit_log, after_batch};

/* ---- reads, inline ---------------------------------------------------------------------- */

/* not inlined: GCC 12, inlining it into submit's switch, took r->phone for another
 * kind's 16-byte field (a false -Wstringop-overflow) */
__attribute__((noinline)) static int lookup(ldb *db, store_lookup *r)
{
    int rc = r->by_account ? ldb_phone_by_account(db, r->account, r->phone)
                           : ldb_account_by_phone(db, r->phone, r->account);
    if (rc == STORE_OK)
        rc = ldb_account_devices(db, r->account, r->ids, sizeof r->ids / sizeof *r->ids, &r->n);
    return rc == STORE_OK && r->n == 0 ? STORE_NOT_FOUND : rc;
}

static void submit(store *s, store_home *h, store_req *r)
{
    embedded *e = (embedded *)s;
    int rc;
    switch (r->kind) {
    case STORE_KIND_DEVICE: {
        store_device_query *q = (store_device_query *)r;
        rc = ldb_device_get(e->db, &q->device, &q->record);
        break;
    }
    case STORE_KIND_LOOKUP:
        rc = lookup(e->db, (store_lookup *)r);
        break;
    case STORE_KIND_GROUP_GET:
        rc = group_query(e->db, (store_group_query *)r);
        break;
    case STORE_KIND_READ: {
        store_read *q = (store_read *)r;
        rc = inbox_log_read(e->log, &q->device, q->after, q->max, q->fn, q->ctx);
        break;
    }
    default:
        writer_submit(e->wr, (writer_home *)h, r);
        return;
    }
    r->done(r, rc);
}

static int home_open(store *s, uv_loop_t *loop, store_home **out)
{
    writer_home *h = calloc(1, sizeof *h);
    if (!h)
        return STORE_NOMEM;
    h->base.owner = s;
    if (writer_home_init(h, loop) != 0) {
        free(h);
        return STORE_IO;
    }
    *out = &h->base;
    return STORE_OK;
}

static void free_home(uv_handle_t *async)
{
    free(async->data);
}

static void home_close(store_home *h)
{
    writer_home_close((writer_home *)h, free_home);
}

static store_run_stats stop(store *s)
{
    embedded *e = (embedded *)s;
    store_run_stats st = {0};
    if (e->wr) {
        dedup_checkpoint_mute(e->ckpt); /* it pokes the writer, which goes now */
        st = writer_stop(e->wr);
        int rc;
        dedup_checkpoint_stop(e->ckpt, &rc);
        e->ckpt = NULL;
        if (e->saving_now && rc == STORE_OK)
            dedup_recent_clear(&e->saving);
        /* the writer is gone: this thread may write the rest, and let the segments that
           only kept their NOTEs go (a quicker start next time) */
        if ((e->saving.used && dedup_checkpoint_write(e->db, &e->saving) != STORE_OK) ||
            (e->recent.used && dedup_checkpoint_write(e->db, &e->recent) != STORE_OK))
            fprintf(stderr, "parleyd: the last checkpoint failed (the log keeps those sends)\n");
        else
            inbox_log_release_before(e->log, inbox_log_segment(e->log));
    }
    e->wr = NULL;
    return st;
}

static void close_store(store *s)
{
    embedded *e = (embedded *)s;
    stop(s);
    inbox_log_close(e->log);
    ldb_close(e->db);
    day_quota_free(&e->days);
    day_quota_free(&e->group_days);
    dedup_recent_free(&e->recent);
    dedup_recent_free(&e->pending);
    dedup_recent_free(&e->saving);
    free(e);
}

static int stats(store *s, store_stats *out)
{
    embedded *e = (embedded *)s;
    int rc = ldb_get_stats(e->db, out);
    inbox_log_stats ls;
    inbox_log_get_stats(e->log, &ls);
    out->inbox_envelopes = ls.envelopes;
    return rc;
}

/* ---- opening ------------------------------------------------------------------------------ */

/* Log segments of a 64th of the data directory's filesystem, from 1 to 64 MiB: a small
 * disk still holds many, so removing whole ones gives room back. */
static size_t segment_size_for(const char *dir)
{
    struct statvfs st;
    uint64_t total = statvfs(dir, &st) == 0 ? (uint64_t)st.f_blocks * st.f_frsize : 0;
    uint64_t size = total / 64 & ~(uint64_t)((1u << 20) - 1);
    return size < (1u << 20) ? 1u << 20 : size > (64u << 20) ? 64u << 20 : (size_t)size;
}

/* A de-duplication record replayed from the log: waits in memory for a checkpoint. */
static void replay_note(void *ctx, uint64_t segment, const uint8_t *data, size_t len)
{
    embedded *e = ctx;
    (void)segment;
    uint64_t ms = 0;
    for (int i = 0; i < 8 && len == NOTE_LEN; i++)
        ms = ms << 8 | data[DEDUP_KEY_LEN + i];
    if (ms)
        dedup_recent_put(&e->recent, data, ms);
}

typedef struct {
    inbox_log *log;
    uint64_t moved;
    int rc;
} migration;

static bool move_envelope(void *ctx, const store_device *d, uint64_t seq, uint64_t stored_ms, const uint8_t *data,
                          size_t len)
{
    migration *m = ctx;
    if ((m->rc = inbox_log_append_at(m->log, d, seq, stored_ms, data, len)) == STORE_OK && ++m->moved % 8192 == 0)
        m->rc = inbox_log_commit(m->log); /* in groups of a bounded size */
    return m->rc == STORE_OK;
}

static bool move_next_seq(void *ctx, const store_device *d, uint64_t next)
{
    migration *m = ctx;
    m->rc = inbox_log_floor(m->log, d, next);
    return m->rc == STORE_OK;
}

/* A data directory from before the inbox log keeps its inboxes in LMDB: they move to the
 * log (with their seqs, so a second run after a crash copies nothing twice), are made
 * durable there, and only then leave the data file. */
static int migrate(embedded *e)
{
    migration m = {e->log, 0, STORE_OK};
    bool any = false;
    inbox_log_stats before, after;
    inbox_log_get_stats(e->log, &before);
    int rc = ldb_legacy_inbox_each(e->db, move_envelope, move_next_seq, &m, &any);
    if (rc == STORE_OK)
        rc = m.rc;
    if (rc == STORE_OK && any && (rc = inbox_log_commit(e->log)) == STORE_OK && (rc = ldb_legacy_inbox_clear(e->db)) == STORE_OK) {
        inbox_log_get_stats(e->log, &after); /* a run cut short before copied some already */
        fprintf(stderr, "parleyd: moved %llu undelivered envelopes from the data file to the inbox log\n",
                (unsigned long long)(after.envelopes - before.envelopes));
    }
    return rc;
}

static const store_ops ops = {submit, home_open, home_close, stop, close_store, stats};

int store_open_embedded(store **out, const char *dir, uint64_t map_size, const store_quota *quota,
                        const store_envelopes *envelopes)
{
    *out = NULL;
    embedded *e = calloc(1, sizeof *e);
    if (!e)
        return STORE_NOMEM;
    e->base.ops = &ops;
    e->base.envelopes = envelopes;
    if (quota)
        e->quota = *quota;
    char log_dir[4096];
    snprintf(log_dir, sizeof log_dir, "%s/inbox", dir);
    inbox_log_config cfg = {.note = replay_note, .ctx = e};
    inbox_log_report rep;
    int rc = ldb_open(&e->db, dir, map_size);
    cfg.segment_bytes = segment_size_for(dir);
    if (rc == STORE_OK && (rc = inbox_log_open(&e->log, log_dir, &cfg, &rep)) == STORE_OK) {
        if (rep.damaged)
            fprintf(stderr, "parleyd: the inbox log has %llu damaged stretches (%llu bytes) that were skipped\n",
                    (unsigned long long)rep.damaged, (unsigned long long)rep.damaged_bytes);
        if (rep.envelopes || rep.torn_bytes)
            fprintf(stderr, "parleyd: inbox log: %llu undelivered envelopes in %llu segments, read in %.2f s%s\n",
                    (unsigned long long)rep.envelopes, (unsigned long long)rep.segments, rep.seconds,
                    rep.torn_bytes ? " (a torn last record dropped)" : "");
        e->checkpoint_ms = mono_ms();
        rc = migrate(e);
    }
    if (rc == STORE_OK && (rc = dedup_checkpoint_start(&e->ckpt, e->db, checkpoint_finished, e)) == STORE_OK &&
        (rc = writer_start(&e->wr, e->db, MAX_BATCH, &table, e)) != STORE_OK) {
        int ignored;
        dedup_checkpoint_stop(e->ckpt, &ignored);
    }
    if (rc != STORE_OK) {
        inbox_log_close(e->log);
        ldb_close(e->db);
        dedup_recent_free(&e->recent);
        free(e);
        return rc;
    }
    *out = &e->base;
    return STORE_OK;
}
