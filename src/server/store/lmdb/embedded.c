/* embedded.c - the embedded backend (store.h on one machine): each request is applied
 * to the LMDB tables (ldb.h), writes inside the group-commit writer's batch (writer.h),
 * reads inline on the calling loop (LMDB readers never wait for the writer). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "day_quota.h"
#include "ldb.h"
#include "store_kinds.h"
#include "writer.h"

#define MAX_BATCH 4096      /* requests in one commit */
#define NOTICE_CAP 64       /* a low-stock notice envelope */
#define DAY_MS 86400000u

typedef struct {
    store base;
    ldb *db;
    writer *wr;
    store_quota quota;
    day_quota days;          /* the writer thread's */
} embedded;

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

static int append_all(ldb_batch *b, const store_entries *l, uint64_t now)
{
    for (size_t i = 0; i < l->n; i++) {
        uint64_t seq;
        int rc = ldb_inbox_append(b, &l->items[i].device, now, l->buf + l->items[i].offset, l->items[i].len, &seq);
        if (rc != STORE_OK)
            return rc;
    }
    return STORE_OK;
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

/* Runs fn in a nested batch: if it fails, what it wrote goes and b stands. */
static int nested(ldb_batch *b, int (*fn)(ldb_batch *nb, void *ctx), void *ctx)
{
    ldb_batch *nb = NULL;
    int rc = ldb_batch_nest(b, &nb);
    if (rc == STORE_OK && (rc = fn(nb, ctx)) == STORE_OK)
        return ldb_batch_commit(nb);
    if (nb)
        ldb_batch_abort(nb);
    return rc;
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
    int rc = ldb_register(b, r->phone, r->new_id, &r->primary, r->account);
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

static int append_notices(ldb_batch *nb, void *ctx)
{
    store_fetch *r = ctx;
    return append_all(nb, &r->notices, r->now);
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
    if (rc == STORE_OK && r->notices.n && nested(b, append_notices, r) != STORE_OK)
        store_entries_clear(&r->notices); /* a full disk loses the notices, not the fetch */
    return rc;
}

/* ---- sends and receipts ------------------------------------------------------------- */

/* Refuses an envelope of len bytes that would take d's inbox past its quota (an empty
 * inbox takes one of any size: a write larger than the quota must not wait forever). */
static int check_inbox(ldb_batch *b, const store_quota *q, const store_device *d, size_t len)
{
    uint64_t held, bytes;
    if (!q->inbox_envelopes && !q->inbox_bytes)
        return STORE_OK;
    int rc = ldb_inbox_usage(b, d, &held, &bytes);
    if (rc == STORE_OK && held &&
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

static int send_apply(ldb_batch *b, store_send *r, embedded *e)
{
    uint64_t first;
    r->duplicate = false; /* a batch may run twice (writer.h): nothing kept from a first run */
    r->server_ms = r->accepted_ms;
    int rc = origin_current(b, &r->from);
    if (rc != STORE_OK)
        return rc;
    rc = ldb_dedup_get(b, &r->from.device, r->message_id, &first);
    if (rc == STORE_OK) { /* a resend: the same ack, nothing new */
        r->server_ms = first;
        r->duplicate = true;
        return STORE_OK;
    }
    if (rc != STORE_NOT_FOUND)
        return rc;
    if ((rc = check_devices(b, r, r->recipient)) != STORE_OK)
        return rc;
    if (!same_account(r->recipient, r->from.device.account) &&
        (rc = check_devices(b, r, r->from.device.account)) != STORE_OK)
        return rc;
    /* every refusal before the first write: this request shares its batch. The sender's
     * own devices take their copies whatever they hold (its day's quota bounds them). */
    r->n_full = 0;
    for (size_t i = 0; i < r->targets.n; i++) {
        const store_device *d = &r->targets.items[i].device;
        if (same_account(d->account, r->from.device.account))
            continue;
        if ((rc = check_inbox(b, &e->quota, d, r->targets.items[i].len)) == STORE_INBOX_FULL)
            r->full_ids[r->n_full++] = d->device;
        else if (rc != STORE_OK)
            return rc;
    }
    if (r->n_full)
        return STORE_INBOX_FULL;
    if ((rc = charge_day(e, r->from.device.account, r->server_ms, r->targets.used, &r->retry_ms)) != STORE_OK)
        return rc;
    if ((rc = append_all(b, &r->targets, r->server_ms)) != STORE_OK)
        return rc;
    return ldb_dedup_put(b, &r->from.device, r->message_id, r->server_ms);
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
            rc = check_inbox(b, &e->quota, &l->items[i].device, r->len);
    if (rc == STORE_OK)
        rc = charge_day(e, r->from.device.account, r->now, (uint64_t)r->len * l->n, &r->retry_ms);
    for (size_t i = 0; rc == STORE_OK && i < l->n; i++) {
        uint64_t seq;
        rc = ldb_inbox_append(b, &l->items[i].device, r->now, r->envelope, r->len, &seq);
    }
    return rc;
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

typedef struct {
    store_take *r;
    const store_envelopes *env;
    authored_list *l;
} receipts_ctx;

#define RECEIPT_IDS 64
#define RECEIPT_CAP (256 + RECEIPT_IDS * (STORE_MESSAGE_ID_LEN + 2))

/* One delivered receipt per author and run of at most 64 ids (a window's worth,
 * usually one), to every device of the author's account. */
static int append_receipts(ldb_batch *nb, void *ctx)
{
    receipts_ctx *c = ctx;
    store_take *r = c->r;
    authored_list *l = c->l;
    uint8_t ids[RECEIPT_IDS][STORE_MESSAGE_ID_LEN], envelope[RECEIPT_CAP];
    int rc = STORE_OK;
    for (size_t i = 0; rc == STORE_OK && i < l->n;) {
        size_t n = 0;
        const uint8_t *author = l->items[i].account;
        while (i < l->n && n < RECEIPT_IDS && same_account(l->items[i].account, author))
            memcpy(ids[n++], l->items[i++].id, STORE_MESSAGE_ID_LEN);
        size_t len = c->env->delivered(envelope, sizeof envelope, &r->from.device, r->now,
                                       (const uint8_t(*)[STORE_MESSAGE_ID_LEN])ids, n);
        size_t before = r->receipts.n;
        rc = len ? add_account(nb, author, NULL, envelope, 0, &r->receipts) : STORE_INVALID;
        if (rc == STORE_UNKNOWN_ACCOUNT) /* the author's devices are gone: no one to tell */
            rc = STORE_OK;
        for (size_t k = before; rc == STORE_OK && k < r->receipts.n; k++) {
            uint64_t seq;
            rc = ldb_inbox_append(nb, &r->receipts.items[k].device, r->now, envelope, len, &seq);
        }
    }
    return rc;
}

static int take_apply(ldb_batch *b, store_take *r, const store_envelopes *env)
{
    authored_list l = {.env = env, .acker = r->from.device.account};
    store_entries_clear(&r->receipts);
    int rc = origin_current(b, &r->from);
    if (rc == STORE_OK)
        rc = ldb_inbox_take(b, &r->from.device, r->up_to, collect_authored, &l, NULL);
    if (rc == STORE_OK && l.failed)
        rc = STORE_NOMEM;
    if (rc == STORE_OK && l.n) {
        qsort(l.items, l.n, sizeof *l.items, by_account);
        receipts_ctx c = {r, env, &l};
        int rrc = nested(b, append_receipts, &c); /* a full disk loses the receipts, not the take */
        if (rrc != STORE_OK) {
            fprintf(stderr, "parleyd: delivered receipts could not be stored: %s\n", store_strerror(rrc));
            store_entries_clear(&r->receipts); /* nothing to wake */
        }
    }
    free(l.items);
    return rc;
}

/* ---- the writer's table ------------------------------------------------------------------ */

static int apply(ldb_batch *b, store_req *r)
{
    embedded *e = (embedded *)r->home->owner;
    const store_envelopes *env = e->base.envelopes;
    switch (r->kind) {
    case STORE_KIND_REGISTER: return register_apply(b, (store_registration *)r);
    case STORE_KIND_SEND: return send_apply(b, (store_send *)r, e);
    case STORE_KIND_POST: return post_apply(b, (store_post *)r, e);
    case STORE_KIND_TAKE: return take_apply(b, (store_take *)r, env);
    case STORE_KIND_UPLOAD: return upload_apply(b, (store_upload *)r);
    case STORE_KIND_FETCH: return fetch_apply(b, (store_fetch *)r, env);
    case STORE_KIND_SWEEP: {
        store_sweep *s = (store_sweep *)r;
        return ldb_sweep(b, s->inbox_cutoff, s->dedup_cutoff, s->max, &s->inbox_removed, &s->dedup_removed);
    }
    case STORE_KIND_SYNC: /* the writer runs requests in order: a barrier, then the key */
        return origin_current(b, &((store_sync_req *)r)->from);
    default: return STORE_INVALID;
    }
}

/* These may refuse after writing, so each runs in a nested batch of its own. */
static bool isolated(const store_req *r)
{
    return r->kind == STORE_KIND_REGISTER || r->kind == STORE_KIND_UPLOAD;
}

static const writer_ops table = {apply, isolated};

/* ---- reads, inline ---------------------------------------------------------------------- */

static int lookup(ldb *db, store_lookup *r)
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
    case STORE_KIND_READ: {
        store_read *q = (store_read *)r;
        rc = ldb_inbox_read(e->db, &q->device, q->after, q->max, q->fn, q->ctx);
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
    if (e->wr)
        st = writer_stop(e->wr);
    e->wr = NULL;
    return st;
}

static void close_store(store *s)
{
    embedded *e = (embedded *)s;
    stop(s);
    ldb_close(e->db);
    day_quota_free(&e->days);
    free(e);
}

static int stats(store *s, store_stats *out)
{
    return ldb_get_stats(((embedded *)s)->db, out);
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
    int rc = ldb_open(&e->db, dir, map_size);
    if (rc == STORE_OK && (rc = writer_start(&e->wr, e->db, MAX_BATCH, &table)) != STORE_OK)
        ldb_close(e->db);
    if (rc != STORE_OK) {
        free(e);
        return rc;
    }
    *out = &e->base;
    return STORE_OK;
}
