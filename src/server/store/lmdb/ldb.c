/* ldb.c - the embedded backend's tables on LMDB (ldb.h).
 *
 * Tables (keys big-endian, so LMDB's byte order is numeric order):
 *   inbox       device(20) seq(8)            -> stored_ms(8) envelope
 *   inbox_next  device(20)                   -> next seq(8) envelopes(8) bytes(8): what the
 *               inbox holds, kept with every change (8-byte values, the next seq alone,
 *               from before are counted and rewritten when the store is opened)
 *   inbox_time  stored_ms(8) device(20) seq(8) -> ""    (retention sweeps in time order)
 *   dedup_by_id id(16) sender(20)            -> accepted_ms(8)
 *   dedup_by_id_time accepted_ms(8) id(16) sender(20) -> ""
 *   dedup, dedup_time: the same with sender(20) before id(16), written before the id
 *               came first; only read and swept now, until they are empty
 *   phones      phone (E.164 text)           -> account(16)
 *   accounts    account(16)                  -> phone (E.164 text)
 *   devices     device(20)                   -> identity key(32) registration id(4)
 *   signed_prekeys device(20)                -> id(4) key(32) signature(64) uploaded_ms(8)
 *   prekeys     device(20)                   -> id(4) key(32), sorted duplicates (DUPFIXED):
 *               the lowest id is handed out first, and a count costs no scan
 *   prekey_meta device(20)                   -> highest id ever uploaded(4) notified(1)
 * A device is account(16) device number(4). Every change to inbox or dedup changes
 * its time index in the same transaction, so a sweep costs what it removes. */
#include "ldb.h"

#include "group.h"

#include <errno.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define DEVICE_KEY_LEN 20
#define NEARLY_FULL (16u << 20) /* bytes left on the data file's filesystem */

struct ldb {
    MDB_env *env;
    MDB_dbi inbox, inbox_next, inbox_time, dedup, dedup_time, phones, accounts, devices;
    MDB_dbi signed_prekeys, prekeys, prekey_meta, dedup_by_id, dedup_by_id_time;
    MDB_dbi groups, member_groups, group_seqs;
    unsigned missing;   /* read-only on an older data directory: tables it lacks (bits) */
};

struct ldb_batch {
    ldb *s;
    MDB_txn *txn;
};

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void device_key(uint8_t out[DEVICE_KEY_LEN], const store_device *d)
{
    memcpy(out, d->account, STORE_ACCOUNT_ID_LEN);
    out[16] = (uint8_t)(d->device >> 24);
    out[17] = (uint8_t)(d->device >> 16);
    out[18] = (uint8_t)(d->device >> 8);
    out[19] = (uint8_t)d->device;
}

static void device_from_key(store_device *d, const uint8_t k[DEVICE_KEY_LEN])
{
    memcpy(d->account, k, STORE_ACCOUNT_ID_LEN);
    d->device = (uint32_t)k[16] << 24 | (uint32_t)k[17] << 16 | (uint32_t)k[18] << 8 | k[19];
}

static int map_error(int rc)
{
    switch (rc) {
    case 0: return STORE_OK;
    case MDB_NOTFOUND: return STORE_NOT_FOUND;
    case MDB_MAP_FULL:
    case ENOSPC:
    case EDQUOT: return STORE_FULL;
    case ENOMEM: return STORE_NOMEM;
    default: return STORE_IO;
    }
}

static const char *const table_names[] = {"inbox",   "inbox_next", "inbox_time",
                                          "dedup",   "dedup_time", "phones",
                                          "accounts", "devices",   "signed_prekeys",
                                          "prekeys",  "prekey_meta", "dedup_by_id",
                                          "dedup_by_id_time", "groups", "member_groups",
                                          "group_seqs"};
#define NTABLES (sizeof table_names / sizeof *table_names)
#define FIRST_OPTIONAL 8 /* tables from here on came later: an older directory may lack them */
#define TABLE_PREKEYS 9
#define TABLE_DEDUP_BY_ID 11
#define TABLE_GROUPS 13 /* and the two after it */

static MDB_dbi *table_dbi(ldb *s, size_t i)
{
    MDB_dbi *dbis[] = {&s->inbox,    &s->inbox_next, &s->inbox_time,     &s->dedup,
                       &s->dedup_time, &s->phones,   &s->accounts,       &s->devices,
                       &s->signed_prekeys, &s->prekeys, &s->prekey_meta, &s->dedup_by_id,
                       &s->dedup_by_id_time, &s->groups, &s->member_groups, &s->group_seqs};
    return dbis[i];
}

static unsigned table_flags(size_t i)
{
    return i == TABLE_PREKEYS ? MDB_DUPSORT | MDB_DUPFIXED : 0;
}

/* inbox_next values written before the inbox counts were kept hold the next seq alone
 * (8 bytes): each such inbox is counted once, here, and its value rewritten whole. */
static int count_legacy_inboxes(MDB_txn *txn, MDB_dbi inbox_next, MDB_dbi inbox)
{
    MDB_cursor *c, *ic;
    int rc = mdb_cursor_open(txn, inbox_next, &c);
    if (rc != 0)
        return rc;
    if ((rc = mdb_cursor_open(txn, inbox, &ic)) != 0) {
        mdb_cursor_close(c);
        return rc;
    }
    MDB_val k, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (v.mv_size != 8 || k.mv_size != DEVICE_KEY_LEN)
            continue;
        uint8_t start[DEVICE_KEY_LEN + 8] = {0}, meta[24];
        memcpy(start, k.mv_data, DEVICE_KEY_LEN);
        memcpy(meta, v.mv_data, 8);
        uint64_t envelopes = 0, bytes = 0;
        MDB_val ik = {sizeof start, start}, iv;
        int irc;
        for (irc = mdb_cursor_get(ic, &ik, &iv, MDB_SET_RANGE);
             irc == 0 && ik.mv_size == sizeof start && memcmp(ik.mv_data, start, DEVICE_KEY_LEN) == 0;
             irc = mdb_cursor_get(ic, &ik, &iv, MDB_NEXT)) {
            envelopes++;
            bytes += iv.mv_size >= 8 ? iv.mv_size - 8 : 0;
        }
        if (irc != 0 && irc != MDB_NOTFOUND) {
            rc = irc;
            break;
        }
        put_be64(meta + 8, envelopes);
        put_be64(meta + 16, bytes);
        MDB_val nv = {sizeof meta, meta};
        if ((rc = mdb_cursor_put(c, &k, &nv, MDB_CURRENT)) != 0)
            break;
    }
    mdb_cursor_close(ic);
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int open_env(ldb **out, const char *dir, uint64_t map_size, bool readonly)
{
    *out = NULL;
    if (!readonly && mkdir(dir, 0700) != 0 && errno != EEXIST)
        return STORE_IO;
    ldb *s = calloc(1, sizeof *s);
    if (!s)
        return STORE_NOMEM;
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&s->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, 24);
    if (rc == 0 && !readonly)
        rc = mdb_env_set_mapsize(s->env, map_size ? map_size : (uint64_t)4 << 30);
    /* NOTLS: read transactions are not tied to threads (libuv threads share them). */
    if (rc == 0)
        rc = mdb_env_open(s->env, dir, MDB_NOTLS | (readonly ? MDB_RDONLY : 0), 0600);
    if (rc == 0)
        rc = mdb_txn_begin(s->env, NULL, readonly ? MDB_RDONLY : 0, &txn);
    for (size_t i = 0; rc == 0 && i < NTABLES; i++) {
        rc = mdb_dbi_open(txn, table_names[i], table_flags(i) | (readonly ? 0 : MDB_CREATE),
                          table_dbi(s, i));
        unsigned flags = 0;
        if (rc == MDB_NOTFOUND && readonly && i >= FIRST_OPTIONAL) {
            s->missing |= 1u << i; /* reads of it find nothing */
            rc = 0;
        } else if (rc == 0 && (rc = mdb_dbi_flags(txn, *table_dbi(s, i), &flags)) == 0 &&
                   (flags & table_flags(i)) != table_flags(i)) {
            rc = MDB_INCOMPATIBLE; /* a table made with other flags: not ours */
        }
    }
    if (rc == 0 && !readonly)
        rc = count_legacy_inboxes(txn, s->inbox_next, s->inbox);
    if (rc == 0) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (rc != 0) {
        if (txn)
            mdb_txn_abort(txn);
        if (s->env)
            mdb_env_close(s->env);
        free(s);
        return map_error(rc);
    }
    *out = s;
    return STORE_OK;
}

int ldb_open(ldb **out, const char *dir, uint64_t map_size)
{
    return open_env(out, dir, map_size, false);
}

int ldb_open_readonly(ldb **out, const char *dir)
{
    return open_env(out, dir, 0, true);
}

int ldb_get_stats(ldb *s, store_stats *out)
{
    memset(out, 0, sizeof *out);
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_error(rc);
    MDB_stat st;
    uint64_t by_id_records = 0; /* dedup_records counts both de-duplication tables */
    struct { MDB_dbi dbi; uint64_t *count; bool missing; } counts[] = {
        {s->inbox, &out->inbox_envelopes, false}, {s->dedup, &out->dedup_records, false},
        {s->dedup_by_id, &by_id_records, (s->missing & 1u << TABLE_DEDUP_BY_ID) != 0},
        {s->accounts, &out->accounts, false}, {s->devices, &out->devices, false},
        {s->prekeys, &out->prekeys, (s->missing & 1u << TABLE_PREKEYS) != 0}};
    for (size_t i = 0; rc == 0 && i < sizeof counts / sizeof *counts; i++)
        if (!counts[i].missing && (rc = mdb_stat(txn, counts[i].dbi, &st)) == 0)
            *counts[i].count = st.ms_entries;
    out->dedup_records += by_id_records;
    /* the free list (dbi 0 of LMDB's own) holds page-number lists of freed pages */
    MDB_cursor *c;
    if (rc == 0 && (rc = mdb_cursor_open(txn, 0, &c)) == 0) {
        MDB_val k, v;
        int grc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
        while (grc == 0) {
            if (v.mv_size >= sizeof(size_t))
                out->pages_free += *(const size_t *)v.mv_data; /* each list starts with its length */
            grc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(c);
    }
    MDB_envinfo info;
    if (rc == 0 && (rc = mdb_env_info(s->env, &info)) == 0 && (rc = mdb_env_stat(s->env, &st)) == 0) {
        out->pages_used = (uint64_t)info.me_last_pgno + 1;
        out->page_size = st.ms_psize;
    }
    mdb_txn_abort(txn);
    return map_error(rc);
}

void ldb_close(ldb *s)
{
    if (!s)
        return;
    mdb_env_close(s->env);
    free(s);
}

int ldb_batch_begin(ldb *s, ldb_batch **out)
{
    *out = NULL;
    ldb_batch *b = malloc(sizeof *b);
    if (!b)
        return STORE_NOMEM;
    b->s = s;
    int rc = mdb_txn_begin(s->env, NULL, 0, &b->txn);
    if (rc != 0) {
        free(b);
        return map_error(rc);
    }
    *out = b;
    return STORE_OK;
}

int ldb_batch_begin_read(ldb *s, ldb_batch **out)
{
    *out = NULL;
    ldb_batch *b = malloc(sizeof *b);
    if (!b)
        return STORE_NOMEM;
    b->s = s;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &b->txn);
    if (rc != 0) {
        free(b);
        return map_error(rc);
    }
    *out = b;
    return STORE_OK;
}

int ldb_batch_nest(ldb_batch *b, ldb_batch **child)
{
    *child = NULL;
    ldb_batch *c = malloc(sizeof *c);
    if (!c)
        return STORE_NOMEM;
    c->s = b->s;
    int rc = mdb_txn_begin(b->s->env, b->txn, 0, &c->txn);
    if (rc != 0) {
        free(c);
        return map_error(rc);
    }
    *child = c;
    return STORE_OK;
}

/* LMDB reports a write that the disk cut short as EIO, not ENOSPC: with next to no
 * room left on the data file's filesystem, that is what the EIO was. */
static bool disk_nearly_full(MDB_env *env)
{
    mdb_filehandle_t fd;
    struct statvfs st;
    if (mdb_env_get_fd(env, &fd) != 0 || fstatvfs(fd, &st) != 0)
        return false;
    uint64_t left = (uint64_t)(geteuid() == 0 ? st.f_bfree : st.f_bavail) * st.f_frsize; /* root may use the reserve */
    return left < NEARLY_FULL;
}

int ldb_batch_commit(ldb_batch *b)
{
    int rc = mdb_txn_commit(b->txn); /* frees the transaction whatever happens */
    if (rc == EIO && disk_nearly_full(b->s->env))
        rc = ENOSPC;
    free(b);
    return map_error(rc);
}

void ldb_batch_abort(ldb_batch *b)
{
    if (!b)
        return;
    mdb_txn_abort(b->txn);
    free(b);
}

static int put(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen, const void *v, size_t vlen)
{
    MDB_val key = {klen, (void *)k}, val = {vlen, (void *)v};
    return map_error(mdb_put(txn, dbi, &key, &val, 0));
}

typedef struct {
    uint64_t next, envelopes, bytes;
} inbox_meta;

/* A device's inbox_next record (*found: it has one). */
static int meta_read(ldb_batch *b, const uint8_t dk[DEVICE_KEY_LEN], inbox_meta *m, bool *found)
{
    MDB_val key = {DEVICE_KEY_LEN, (void *)dk}, val;
    *m = (inbox_meta){.next = 1};
    *found = false;
    int rc = mdb_get(b->txn, b->s->inbox_next, &key, &val);
    if (rc == MDB_NOTFOUND)
        return STORE_OK;
    if (rc != 0)
        return map_error(rc);
    if (val.mv_size != 24)
        return STORE_INVALID; /* 8 bytes: converted at open (count_legacy_inboxes) */
    *found = true;
    m->next = get_be64(val.mv_data);
    m->envelopes = get_be64((const uint8_t *)val.mv_data + 8);
    m->bytes = get_be64((const uint8_t *)val.mv_data + 16);
    return STORE_OK;
}

static int meta_write(ldb_batch *b, const uint8_t dk[DEVICE_KEY_LEN], const inbox_meta *m)
{
    uint8_t v[24];
    put_be64(v, m->next);
    put_be64(v + 8, m->envelopes);
    put_be64(v + 16, m->bytes);
    return put(b->txn, b->s->inbox_next, dk, DEVICE_KEY_LEN, v, sizeof v);
}

int ldb_inbox_usage(ldb_batch *b, const store_device *d, uint64_t *envelopes, uint64_t *bytes)
{
    uint8_t dk[DEVICE_KEY_LEN];
    device_key(dk, d);
    inbox_meta m;
    bool found;
    int rc = meta_read(b, dk, &m, &found);
    *envelopes = m.envelopes;
    *bytes = m.bytes;
    return rc;
}

int ldb_inbox_append(ldb_batch *b, const store_device *d, uint64_t now_ms,
                     const uint8_t *envelope, size_t len, uint64_t *seq)
{
    ldb *s = b->s;
    uint8_t dk[DEVICE_KEY_LEN], ikey[DEVICE_KEY_LEN + 8], tkey[8 + DEVICE_KEY_LEN + 8];
    device_key(dk, d);
    inbox_meta m;
    bool found;
    int rc = meta_read(b, dk, &m, &found);
    if (rc != STORE_OK)
        return rc;

    memcpy(ikey, dk, DEVICE_KEY_LEN);
    put_be64(ikey + DEVICE_KEY_LEN, m.next);
    MDB_val ik = {sizeof ikey, ikey}, iv = {8 + len, NULL};
    /* MDB_RESERVE: LMDB hands us the value's room; we write it in place, no copy. */
    if ((rc = mdb_put(b->txn, s->inbox, &ik, &iv, MDB_RESERVE)) != 0)
        return map_error(rc);
    put_be64(iv.mv_data, now_ms);
    memcpy((uint8_t *)iv.mv_data + 8, envelope, len);

    put_be64(tkey, now_ms);
    memcpy(tkey + 8, ikey, sizeof ikey);
    if ((rc = put(b->txn, s->inbox_time, tkey, sizeof tkey, "", 0)) != STORE_OK)
        return rc;
    *seq = m.next++;
    m.envelopes++;
    m.bytes += len;
    return meta_write(b, dk, &m);
}

/* The device's counts less what a delete removed. */
static int meta_remove(ldb_batch *b, const uint8_t dk[DEVICE_KEY_LEN], uint64_t envelopes, uint64_t bytes)
{
    inbox_meta m;
    bool found;
    int rc = meta_read(b, dk, &m, &found);
    if (rc != STORE_OK || !found) /* none: nothing was ever appended (a corrupt store) */
        return rc;
    m.envelopes = m.envelopes > envelopes ? m.envelopes - envelopes : 0;
    m.bytes = m.bytes > bytes ? m.bytes - bytes : 0;
    return meta_write(b, dk, &m);
}

/* Deletes the inbox entry under the cursor and its time-index entry. */
static int delete_envelope(ldb_batch *b, MDB_cursor *c, const MDB_val *key, const MDB_val *val)
{
    if (val->mv_size < 8 || key->mv_size != DEVICE_KEY_LEN + 8)
        return STORE_INVALID;
    uint8_t tkey[8 + DEVICE_KEY_LEN + 8];
    memcpy(tkey, val->mv_data, 8);
    memcpy(tkey + 8, key->mv_data, DEVICE_KEY_LEN + 8);
    MDB_val tk = {sizeof tkey, tkey};
    int rc = mdb_del(b->txn, b->s->inbox_time, &tk, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return map_error(rc);
    return map_error(mdb_cursor_del(c, 0));
}

int ldb_inbox_ack(ldb_batch *b, const store_device *d, uint64_t up_to, size_t *deleted)
{
    return ldb_inbox_take(b, d, up_to, NULL, NULL, deleted);
}

int ldb_inbox_take(ldb_batch *b, const store_device *d, uint64_t up_to,
                   store_envelope_fn fn, void *ctx, size_t *deleted)
{
    uint8_t start[DEVICE_KEY_LEN + 8];
    device_key(start, d);
    put_be64(start + DEVICE_KEY_LEN, 0);
    MDB_cursor *c;
    int rc = mdb_cursor_open(b->txn, b->s->inbox, &c);
    if (rc != 0)
        return map_error(rc);
    size_t n = 0;
    uint64_t bytes = 0;
    MDB_val key = {sizeof start, start}, val;
    rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
    while (rc == 0) {
        if (key.mv_size != sizeof start || memcmp(key.mv_data, start, DEVICE_KEY_LEN) != 0 ||
            get_be64((const uint8_t *)key.mv_data + DEVICE_KEY_LEN) > up_to)
            break;
        bytes += val.mv_size >= 8 ? val.mv_size - 8 : 0;
        if (fn && val.mv_size >= 8)
            fn(ctx, get_be64((const uint8_t *)key.mv_data + DEVICE_KEY_LEN), get_be64(val.mv_data),
               (const uint8_t *)val.mv_data + 8, val.mv_size - 8);
        if ((rc = delete_envelope(b, c, &key, &val)) != STORE_OK) {
            mdb_cursor_close(c);
            return rc;
        }
        n++;
        /* after a delete, NEXT yields the entry that followed the deleted one */
        rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (deleted)
        *deleted = n;
    if (rc != 0 && rc != MDB_NOTFOUND)
        return map_error(rc);
    return n ? meta_remove(b, start, n, bytes) : STORE_OK;
}

int ldb_inbox_drop(ldb_batch *b, const store_device *d, size_t *deleted)
{
    return ldb_inbox_ack(b, d, UINT64_MAX, deleted);
}

/* The message id first: clients make ids that grow with time (48-bit ms, then random),
 * so the inserts of all senders meet at the end of the table and share its last pages.
 * Keyed by sender first (the legacy tables), every send dirtied a random leaf of a table
 * holding 30 days of ids: 23 of the 30 KB a durable send wrote (docs/storage.md). */
static void dedup_key(uint8_t out[STORE_MESSAGE_ID_LEN + DEVICE_KEY_LEN], const store_device *sender,
                      const uint8_t id[STORE_MESSAGE_ID_LEN])
{
    memcpy(out, id, STORE_MESSAGE_ID_LEN);
    device_key(out + STORE_MESSAGE_ID_LEN, sender);
}

static int dedup_lookup(MDB_txn *txn, MDB_dbi dbi, const uint8_t *k, uint64_t *accepted_ms)
{
    MDB_val key = {STORE_MESSAGE_ID_LEN + DEVICE_KEY_LEN, (void *)k}, val;
    int rc = mdb_get(txn, dbi, &key, &val);
    if (rc != 0)
        return map_error(rc);
    if (val.mv_size != 8)
        return STORE_INVALID;
    *accepted_ms = get_be64(val.mv_data);
    return STORE_OK;
}

int ldb_dedup_get(ldb_batch *b, const store_device *sender,
                  const uint8_t id[STORE_MESSAGE_ID_LEN], uint64_t *accepted_ms)
{
    uint8_t k[STORE_MESSAGE_ID_LEN + DEVICE_KEY_LEN];
    dedup_key(k, sender, id);
    int rc = dedup_lookup(b->txn, b->s->dedup_by_id, k, accepted_ms);
    MDB_stat legacy;
    if (rc == STORE_NOT_FOUND && mdb_stat(b->txn, b->s->dedup, &legacy) == 0 && legacy.ms_entries) {
        /* ids accepted before the upgrade, within their 30 days */
        device_key(k, sender);
        memcpy(k + DEVICE_KEY_LEN, id, STORE_MESSAGE_ID_LEN);
        rc = dedup_lookup(b->txn, b->s->dedup, k, accepted_ms);
    }
    return rc;
}

int ldb_dedup_put(ldb_batch *b, const store_device *sender,
                  const uint8_t id[STORE_MESSAGE_ID_LEN], uint64_t accepted_ms)
{
    uint8_t k[STORE_MESSAGE_ID_LEN + DEVICE_KEY_LEN], v[8], tk[8 + sizeof k];
    dedup_key(k, sender, id);
    put_be64(v, accepted_ms);
    put_be64(tk, accepted_ms);
    memcpy(tk + 8, k, sizeof k);
    int rc = put(b->txn, b->s->dedup_by_id, k, sizeof k, v, sizeof v);
    return rc != STORE_OK ? rc : put(b->txn, b->s->dedup_by_id_time, tk, sizeof tk, "", 0);
}

/* Walks a time index from its start, deleting entries older than cutoff and the
 * records they point to (in target, keyed by the index key minus its timestamp); an
 * inbox's counts (inbox_next) follow what leaves it. */
static int sweep_index(ldb_batch *b, MDB_dbi index, MDB_dbi target, uint64_t cutoff, size_t max,
                       size_t *removed)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(b->txn, index, &c);
    if (rc != 0)
        return map_error(rc);
    bool inbox = target == b->s->inbox;
    size_t n = 0;
    MDB_val key, val;
    int mrc = mdb_cursor_get(c, &key, &val, MDB_FIRST);
    rc = STORE_OK;
    while (mrc == 0 && rc == STORE_OK && n < max && key.mv_size > 8 && get_be64(key.mv_data) < cutoff) {
        uint8_t target_key[64]; /* the cursor's page may move with the writes below */
        if (key.mv_size - 8 > sizeof target_key) {
            rc = STORE_INVALID;
            break;
        }
        memcpy(target_key, (uint8_t *)key.mv_data + 8, key.mv_size - 8);
        MDB_val tk = {key.mv_size - 8, target_key}, tv;
        int grc = inbox ? mdb_get(b->txn, target, &tk, &tv) : MDB_NOTFOUND;
        if (grc == 0 && tk.mv_size == DEVICE_KEY_LEN + 8) /* the inbox's counts follow */
            rc = meta_remove(b, tk.mv_data, 1, tv.mv_size >= 8 ? tv.mv_size - 8 : 0);
        else if (grc != 0 && grc != MDB_NOTFOUND)
            rc = map_error(grc);
        int drc = rc == STORE_OK ? mdb_del(b->txn, target, &tk, NULL) : 0;
        if (drc != 0 && drc != MDB_NOTFOUND)
            rc = map_error(drc);
        if (rc == STORE_OK && (rc = map_error(mdb_cursor_del(c, 0))) == STORE_OK) {
            n++;
            mrc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
        }
    }
    mdb_cursor_close(c);
    *removed = n;
    if (rc == STORE_OK && mrc != 0 && mrc != MDB_NOTFOUND)
        rc = map_error(mrc);
    return rc;
}

int ldb_sweep(ldb_batch *b, uint64_t inbox_cutoff_ms, uint64_t dedup_cutoff_ms, size_t max,
              size_t *inbox_removed, size_t *dedup_removed)
{
    size_t legacy = 0;
    int rc = sweep_index(b, b->s->inbox_time, b->s->inbox, inbox_cutoff_ms, max, inbox_removed);
    if (rc == STORE_OK)
        rc = sweep_index(b, b->s->dedup_by_id_time, b->s->dedup_by_id, dedup_cutoff_ms, max, dedup_removed);
    if (rc == STORE_OK)
        rc = sweep_index(b, b->s->dedup_time, b->s->dedup, dedup_cutoff_ms, max, &legacy);
    *dedup_removed += legacy;
    return rc;
}

int ldb_inbox_read(ldb *s, const store_device *d, uint64_t after, size_t max,
                   store_envelope_fn fn, void *ctx)
{
    uint8_t start[DEVICE_KEY_LEN + 8];
    device_key(start, d);
    put_be64(start + DEVICE_KEY_LEN, after == UINT64_MAX ? after : after + 1);
    MDB_txn *txn;
    MDB_cursor *c;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_error(rc);
    if ((rc = mdb_cursor_open(txn, s->inbox, &c)) != 0) {
        mdb_txn_abort(txn);
        return map_error(rc);
    }
    MDB_val key = {sizeof start, start}, val;
    size_t n = 0;
    rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
    while (rc == 0 && n < max) {
        if (key.mv_size != sizeof start || memcmp(key.mv_data, start, DEVICE_KEY_LEN) != 0)
            break;
        if (val.mv_size < 8) {
            rc = EINVAL;
            break;
        }
        n++;
        if (!fn(ctx, get_be64((const uint8_t *)key.mv_data + DEVICE_KEY_LEN), get_be64(val.mv_data),
                (const uint8_t *)val.mv_data + 8, val.mv_size - 8))
            break;
        rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    if (rc == EINVAL)
        return STORE_INVALID;
    return rc == 0 || rc == MDB_NOTFOUND ? STORE_OK : map_error(rc);
}

static bool count_one(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data, size_t len)
{
    (void)seq, (void)stored_ms, (void)data, (void)len;
    (*(uint64_t *)ctx)++;
    return true;
}

int ldb_legacy_inbox_each(ldb *s,
                          bool (*envelope)(void *ctx, const store_device *d, uint64_t seq, uint64_t stored_ms,
                                           const uint8_t *data, size_t len),
                          bool (*next_seq)(void *ctx, const store_device *d, uint64_t next), void *ctx, bool *any)
{
    MDB_txn *txn;
    MDB_cursor *c;
    *any = false;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_error(rc);
    MDB_dbi tables[2] = {s->inbox, s->inbox_next};
    bool go_on = true;
    for (int t = 0; t < 2 && rc == 0 && go_on; t++) {
        if ((rc = mdb_cursor_open(txn, tables[t], &c)) != 0)
            break;
        MDB_val k, v;
        for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && go_on; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            store_device d;
            if (k.mv_size < DEVICE_KEY_LEN || v.mv_size < 8)
                continue;
            device_from_key(&d, k.mv_data);
            *any = true;
            if (t == 0 && k.mv_size == DEVICE_KEY_LEN + 8)
                go_on = envelope(ctx, &d, get_be64((const uint8_t *)k.mv_data + DEVICE_KEY_LEN), get_be64(v.mv_data),
                                 (const uint8_t *)v.mv_data + 8, v.mv_size - 8);
            else if (t == 1)
                go_on = next_seq(ctx, &d, get_be64(v.mv_data));
        }
        mdb_cursor_close(c);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    mdb_txn_abort(txn);
    return map_error(rc);
}

int ldb_legacy_inbox_clear(ldb *s)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc != 0)
        return map_error(rc);
    MDB_dbi tables[3] = {s->inbox, s->inbox_time, s->inbox_next};
    for (int t = 0; t < 3 && rc == 0; t++)
        rc = mdb_drop(txn, tables[t], 0); /* empties it */
    if (rc == 0)
        return map_error(mdb_txn_commit(txn));
    mdb_txn_abort(txn);
    return map_error(rc);
}

int ldb_inbox_count(ldb *s, const store_device *d, uint64_t *count)
{
    *count = 0;
    return ldb_inbox_read(s, d, 0, SIZE_MAX, count_one, count);
}

/* ---- accounts and devices ------------------------------------------------------ */

/* Calls fn for each device key of an account, in a transaction. */
static int each_device(MDB_txn *txn, MDB_dbi dbi, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                       bool (*fn)(void *ctx, const uint8_t key[DEVICE_KEY_LEN], const MDB_val *val),
                       void *ctx)
{
    uint8_t start[DEVICE_KEY_LEN] = {0};
    memcpy(start, account, STORE_ACCOUNT_ID_LEN);
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc != 0)
        return map_error(rc);
    MDB_val key = {sizeof start, start}, val;
    rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
    while (rc == 0 && key.mv_size == DEVICE_KEY_LEN &&
           memcmp(key.mv_data, account, STORE_ACCOUNT_ID_LEN) == 0) {
        if (!fn(ctx, key.mv_data, &val))
            break;
        rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == 0 || rc == MDB_NOTFOUND ? STORE_OK : map_error(rc);
}

typedef struct {
    uint8_t keys[64][DEVICE_KEY_LEN];
    size_t n;
} key_list;

static bool collect_key(void *ctx, const uint8_t key[DEVICE_KEY_LEN], const MDB_val *val)
{
    key_list *l = ctx;
    (void)val;
    if (l->n < 64)
        memcpy(l->keys[l->n++], key, DEVICE_KEY_LEN);
    return l->n < 64;
}

/* A device's prekeys go with it. */
static int drop_keys(ldb_batch *b, const store_device *d)
{
    uint8_t dk[DEVICE_KEY_LEN];
    device_key(dk, d);
    MDB_val key = {sizeof dk, dk};
    MDB_dbi tables[] = {b->s->signed_prekeys, b->s->prekeys, b->s->prekey_meta};
    for (size_t i = 0; i < sizeof tables / sizeof *tables; i++) {
        int rc = mdb_del(b->txn, tables[i], &key, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return map_error(rc);
    }
    return STORE_OK;
}

int ldb_register(ldb_batch *b, const char *phone, const uint8_t new_id[STORE_ACCOUNT_ID_LEN],
                 const store_device_record *primary, uint8_t account[STORE_ACCOUNT_ID_LEN], uint32_t *replaced,
                 size_t *n_replaced)
{
    *n_replaced = 0;
    size_t plen = strlen(phone);
    if (plen == 0 || plen > STORE_PHONE_MAX)
        return STORE_INVALID;
    MDB_val pk = {plen, (void *)phone}, pv;
    int rc = mdb_get(b->txn, b->s->phones, &pk, &pv);
    if (rc == 0 && pv.mv_size == STORE_ACCOUNT_ID_LEN) {
        memcpy(account, pv.mv_data, STORE_ACCOUNT_ID_LEN);
        key_list old = {.n = 0};
        if ((rc = each_device(b->txn, b->s->devices, account, collect_key, &old)) != STORE_OK)
            return rc;
        for (size_t i = 0; i < old.n; i++) { /* the old devices go, and their inboxes */
            store_device d;
            size_t dropped;
            MDB_val dk = {DEVICE_KEY_LEN, old.keys[i]};
            device_from_key(&d, old.keys[i]);
            if (*n_replaced < STORE_MAX_DEVICES)
                replaced[(*n_replaced)++] = d.device;
            if ((rc = ldb_inbox_drop(b, &d, &dropped)) != STORE_OK ||
                (rc = drop_keys(b, &d)) != STORE_OK)
                return rc;
            if ((rc = mdb_del(b->txn, b->s->devices, &dk, NULL)) != 0)
                return map_error(rc);
        }
    } else if (rc == MDB_NOTFOUND) {
        memcpy(account, new_id, STORE_ACCOUNT_ID_LEN);
        if ((rc = put(b->txn, b->s->phones, phone, plen, account, STORE_ACCOUNT_ID_LEN)) != STORE_OK ||
            (rc = put(b->txn, b->s->accounts, account, STORE_ACCOUNT_ID_LEN, phone, plen)) != STORE_OK)
            return rc;
    } else {
        return rc == 0 ? STORE_INVALID : map_error(rc);
    }
    uint8_t dk[DEVICE_KEY_LEN], dv[STORE_KEY_LEN + 4];
    store_device d;
    memcpy(d.account, account, STORE_ACCOUNT_ID_LEN);
    d.device = primary->device;
    device_key(dk, &d);
    memcpy(dv, primary->identity_key, STORE_KEY_LEN);
    dv[32] = (uint8_t)(primary->registration_id >> 24);
    dv[33] = (uint8_t)(primary->registration_id >> 16);
    dv[34] = (uint8_t)(primary->registration_id >> 8);
    dv[35] = (uint8_t)primary->registration_id;
    return put(b->txn, b->s->devices, dk, sizeof dk, dv, sizeof dv);
}

int ldb_account_by_phone(ldb *s, const char *phone, uint8_t account[STORE_ACCOUNT_ID_LEN])
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_error(rc);
    MDB_val pk = {strlen(phone), (void *)phone}, pv;
    rc = mdb_get(txn, s->phones, &pk, &pv);
    if (rc == 0 && pv.mv_size == STORE_ACCOUNT_ID_LEN)
        memcpy(account, pv.mv_data, STORE_ACCOUNT_ID_LEN);
    else if (rc == 0)
        rc = EINVAL;
    mdb_txn_abort(txn);
    return rc == EINVAL ? STORE_INVALID : map_error(rc);
}

int ldb_phone_by_account(ldb *s, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                         char phone[STORE_PHONE_MAX + 1])
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_error(rc);
    MDB_val key = {STORE_ACCOUNT_ID_LEN, (void *)account}, val;
    rc = mdb_get(txn, s->accounts, &key, &val);
    if (rc == 0 && val.mv_size > 0 && val.mv_size <= STORE_PHONE_MAX) {
        memcpy(phone, val.mv_data, val.mv_size);
        phone[val.mv_size] = 0;
    } else if (rc == 0) {
        rc = EINVAL;
    }
    mdb_txn_abort(txn);
    return rc == EINVAL ? STORE_INVALID : map_error(rc);
}

static int device_get(MDB_txn *txn, MDB_dbi devices, const store_device *d, store_device_record *out)
{
    uint8_t dk[DEVICE_KEY_LEN];
    device_key(dk, d);
    MDB_val key = {sizeof dk, dk}, val;
    int rc = mdb_get(txn, devices, &key, &val);
    if (rc != 0)
        return map_error(rc);
    if (val.mv_size != STORE_KEY_LEN + 4)
        return STORE_INVALID;
    const uint8_t *v = val.mv_data;
    out->device = d->device;
    memcpy(out->identity_key, v, STORE_KEY_LEN);
    out->registration_id = (uint32_t)v[32] << 24 | (uint32_t)v[33] << 16 | (uint32_t)v[34] << 8 | v[35];
    return STORE_OK;
}

int ldb_device_get(ldb *s, const store_device *d, store_device_record *out)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_error(rc);
    rc = device_get(txn, s->devices, d, out);
    mdb_txn_abort(txn);
    return rc;
}

int ldb_batch_device_get(ldb_batch *b, const store_device *d, store_device_record *out)
{
    return device_get(b->txn, b->s->devices, d, out);
}

typedef struct {
    store_device_record *out;
    size_t max, n;
    bool corrupt;
} record_list;

static bool collect_record(void *ctx, const uint8_t key[DEVICE_KEY_LEN], const MDB_val *val)
{
    record_list *l = ctx;
    store_device d;
    device_from_key(&d, key);
    if (val->mv_size != STORE_KEY_LEN + 4) {
        l->corrupt = true;
        return false;
    }
    const uint8_t *v = val->mv_data;
    store_device_record *r = &l->out[l->n++];
    r->device = d.device;
    memcpy(r->identity_key, v, STORE_KEY_LEN);
    r->registration_id = (uint32_t)v[32] << 24 | (uint32_t)v[33] << 16 | (uint32_t)v[34] << 8 | v[35];
    return l->n < l->max;
}

int ldb_batch_account_device_records(ldb_batch *b, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                                     store_device_record *out, size_t max, size_t *n)
{
    record_list l = {.out = out, .max = max};
    int rc = max ? each_device(b->txn, b->s->devices, account, collect_record, &l) : STORE_OK;
    *n = l.n;
    return rc == STORE_OK && l.corrupt ? STORE_INVALID : rc;
}

static int account_devices(MDB_txn *txn, MDB_dbi devices, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                           uint32_t *ids, size_t max, size_t *n)
{
    key_list l = {.n = 0};
    int rc = each_device(txn, devices, account, collect_key, &l);
    *n = 0;
    for (size_t i = 0; i < l.n && i < max; i++) {
        store_device d;
        device_from_key(&d, l.keys[i]);
        ids[(*n)++] = d.device;
    }
    return rc;
}

int ldb_account_devices(ldb *s, const uint8_t account[STORE_ACCOUNT_ID_LEN], uint32_t *ids,
                        size_t max, size_t *n)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_error(rc);
    rc = account_devices(txn, s->devices, account, ids, max, n);
    mdb_txn_abort(txn);
    return rc;
}

int ldb_batch_account_devices(ldb_batch *b, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                              uint32_t *ids, size_t max, size_t *n)
{
    return account_devices(b->txn, b->s->devices, account, ids, max, n);
}

/* ---- prekeys ------------------------------------------------------------------ */

#define PREKEY_LEN (4 + STORE_KEY_LEN)
#define SIGNED_PREKEY_LEN (4 + STORE_KEY_LEN + STORE_SIG_LEN + 8)

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int ldb_signed_prekey_put(ldb_batch *b, const store_device *d, const store_signed_prekey *k)
{
    uint8_t dk[DEVICE_KEY_LEN], v[SIGNED_PREKEY_LEN];
    device_key(dk, d);
    put_be32(v, k->id);
    memcpy(v + 4, k->key, STORE_KEY_LEN);
    memcpy(v + 4 + STORE_KEY_LEN, k->signature, STORE_SIG_LEN);
    put_be64(v + 4 + STORE_KEY_LEN + STORE_SIG_LEN, k->uploaded_ms);
    return put(b->txn, b->s->signed_prekeys, dk, sizeof dk, v, sizeof v);
}

int ldb_signed_prekey_get(ldb_batch *b, const store_device *d, store_signed_prekey *out)
{
    uint8_t dk[DEVICE_KEY_LEN];
    device_key(dk, d);
    MDB_val key = {sizeof dk, dk}, val;
    int rc = mdb_get(b->txn, b->s->signed_prekeys, &key, &val);
    if (rc != 0)
        return map_error(rc);
    if (val.mv_size != SIGNED_PREKEY_LEN)
        return STORE_INVALID;
    const uint8_t *v = val.mv_data;
    out->id = get_be32(v);
    memcpy(out->key, v + 4, STORE_KEY_LEN);
    memcpy(out->signature, v + 4 + STORE_KEY_LEN, STORE_SIG_LEN);
    out->uploaded_ms = get_be64(v + 4 + STORE_KEY_LEN + STORE_SIG_LEN);
    return STORE_OK;
}

/* A cursor on the device's stock, at its lowest id: 0, MDB_NOTFOUND (an empty stock,
 * the cursor still open) or an error (no cursor). */
static int stock_cursor(ldb_batch *b, uint8_t dk[DEVICE_KEY_LEN], MDB_cursor **c, MDB_val *val)
{
    int rc = mdb_cursor_open(b->txn, b->s->prekeys, c);
    if (rc != 0)
        return rc;
    MDB_val key = {DEVICE_KEY_LEN, dk};
    return mdb_cursor_get(*c, &key, val, MDB_SET_KEY);
}

int ldb_prekeys_count(ldb_batch *b, const store_device *d, size_t *n)
{
    uint8_t dk[DEVICE_KEY_LEN];
    device_key(dk, d);
    MDB_cursor *c = NULL;
    MDB_val val;
    size_t count = 0;
    int rc = stock_cursor(b, dk, &c, &val);
    if (rc == 0)
        rc = mdb_cursor_count(c, &count);
    if (c)
        mdb_cursor_close(c);
    *n = count;
    return rc == MDB_NOTFOUND ? STORE_OK : map_error(rc);
}

/* A device's prekey bookkeeping: the highest id it ever uploaded, and whether it was
 * told that its stock is low since its last upload. */
typedef struct {
    uint32_t high;
    bool notified;
} prekey_meta;

static int meta_get(ldb_batch *b, const uint8_t dk[DEVICE_KEY_LEN], prekey_meta *m)
{
    MDB_val key = {DEVICE_KEY_LEN, (void *)dk}, val;
    int rc = mdb_get(b->txn, b->s->prekey_meta, &key, &val);
    *m = (prekey_meta){0, false};
    if (rc == MDB_NOTFOUND)
        return STORE_OK;
    if (rc != 0)
        return map_error(rc);
    if (val.mv_size != 5)
        return STORE_INVALID;
    m->high = get_be32(val.mv_data);
    m->notified = ((uint8_t *)val.mv_data)[4] != 0;
    return STORE_OK;
}

static int meta_put(ldb_batch *b, const uint8_t dk[DEVICE_KEY_LEN], const prekey_meta *m)
{
    uint8_t v[5];
    put_be32(v, m->high);
    v[4] = m->notified;
    return put(b->txn, b->s->prekey_meta, dk, DEVICE_KEY_LEN, v, sizeof v);
}

int ldb_prekeys_add(ldb_batch *b, const store_device *d, const store_prekey *keys, size_t n)
{
    uint8_t dk[DEVICE_KEY_LEN];
    device_key(dk, d);
    prekey_meta meta;
    int rc = meta_get(b, dk, &meta);
    if (rc != STORE_OK)
        return rc;
    uint32_t high = meta.high;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(b->txn, b->s->prekeys, &c)) != 0)
        return map_error(rc);
    bool added = false;
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint8_t v[PREKEY_LEN] = {0};
        put_be32(v, keys[i].id);
        MDB_val key = {sizeof dk, dk}, val = {sizeof v, v};
        /* the first record with this id, if any: ids sort first in the data */
        rc = mdb_cursor_get(c, &key, &val, MDB_GET_BOTH_RANGE);
        if (rc == 0 && get_be32(val.mv_data) == keys[i].id) {
            if (memcmp((uint8_t *)val.mv_data + 4, keys[i].key, STORE_KEY_LEN) != 0)
                rc = EEXIST; /* the same id with another key */
            continue;        /* the same key again: a resent upload */
        }
        if (rc != 0 && rc != MDB_NOTFOUND)
            break;
        rc = 0;
        if (keys[i].id <= meta.high)
            continue; /* handed out already (ids only grow): a resent upload must not revive it */
        memcpy(v + 4, keys[i].key, STORE_KEY_LEN);
        key = (MDB_val){sizeof dk, dk};
        val = (MDB_val){sizeof v, v};
        rc = mdb_cursor_put(c, &key, &val, MDB_NODUPDATA);
        added = true;
        if (keys[i].id > high)
            high = keys[i].id;
    }
    mdb_cursor_close(c);
    if (rc == 0 && added) { /* a fresh stock: the next shortage is told again */
        meta = (prekey_meta){high, false};
        return meta_put(b, dk, &meta);
    }
    return rc == EEXIST ? STORE_EXISTS : map_error(rc);
}

int ldb_prekeys_notice(ldb_batch *b, const store_device *d, bool *first)
{
    uint8_t dk[DEVICE_KEY_LEN];
    device_key(dk, d);
    prekey_meta meta;
    int rc = meta_get(b, dk, &meta);
    *first = rc == STORE_OK && !meta.notified;
    if (!*first)
        return rc;
    meta.notified = true;
    return meta_put(b, dk, &meta);
}

int ldb_prekey_take(ldb_batch *b, const store_device *d, store_prekey *out, size_t *left)
{
    uint8_t dk[DEVICE_KEY_LEN];
    device_key(dk, d);
    *left = 0;
    MDB_cursor *c = NULL;
    MDB_val val;
    size_t count = 0;
    int rc = stock_cursor(b, dk, &c, &val);
    if (rc == 0 && val.mv_size != PREKEY_LEN)
        rc = EINVAL;
    if (rc == 0) {
        out->id = get_be32(val.mv_data);
        memcpy(out->key, (uint8_t *)val.mv_data + 4, STORE_KEY_LEN);
        rc = mdb_cursor_count(c, &count);
    }
    if (rc == 0)
        rc = mdb_cursor_del(c, 0);
    if (c)
        mdb_cursor_close(c);
    if (rc == 0)
        *left = count - 1;
    return rc == EINVAL ? STORE_INVALID : map_error(rc);
}

/* ---- groups: groups (id -> record, group.h), member_groups (account id -> empty, a
 * member's list), group_seqs (id -> the last seq given, checkpointed) ----------------- */

static bool groups_missing(const ldb *s)
{
    return (s->missing & 1u << TABLE_GROUPS) != 0; /* a read-only look at an older directory */
}

static int group_get(MDB_txn *txn, ldb *s, const uint8_t id[STORE_GROUP_ID_LEN], store_group *out)
{
    if (groups_missing(s))
        return STORE_NOT_FOUND;
    MDB_val k = {STORE_GROUP_ID_LEN, (void *)id}, v;
    int rc = mdb_get(txn, s->groups, &k, &v);
    return rc != 0 ? map_error(rc) : group_decode(out, id, v.mv_data, v.mv_size);
}

int ldb_group_get(ldb_batch *b, const uint8_t id[STORE_GROUP_ID_LEN], store_group *out)
{
    return group_get(b->txn, b->s, id, out);
}

int ldb_group_read(ldb *s, const uint8_t id[STORE_GROUP_ID_LEN], store_group *out)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_error(rc);
    rc = group_get(txn, s, id, out);
    mdb_txn_abort(txn);
    return rc;
}

static int member_link(ldb_batch *b, const uint8_t *account, const uint8_t *id, bool on)
{
    uint8_t k[STORE_ACCOUNT_ID_LEN + STORE_GROUP_ID_LEN];
    memcpy(k, account, STORE_ACCOUNT_ID_LEN);
    memcpy(k + STORE_ACCOUNT_ID_LEN, id, STORE_GROUP_ID_LEN);
    if (on)
        return put(b->txn, b->s->member_groups, k, sizeof k, "", 0);
    MDB_val key = {sizeof k, k};
    int rc = mdb_del(b->txn, b->s->member_groups, &key, NULL);
    return rc == MDB_NOTFOUND ? STORE_OK : map_error(rc);
}

int ldb_group_put(ldb_batch *b, const store_group *g, const store_group *before)
{
    static __thread uint8_t record[GROUP_RECORD_MAX]; /* the writer's: too large for its stack twice */
    size_t len = group_encode(g, record);
    int rc = put(b->txn, b->s->groups, g->id, STORE_GROUP_ID_LEN, record, len);
    for (size_t i = 0; rc == STORE_OK && i < g->n; i++)
        if (!before || group_find(before, g->members[i].account) < 0)
            rc = member_link(b, g->members[i].account, g->id, true);
    for (size_t i = 0; rc == STORE_OK && before && i < before->n; i++)
        if (group_find(g, before->members[i].account) < 0)
            rc = member_link(b, before->members[i].account, g->id, false);
    return rc;
}

int ldb_member_groups(ldb *s, const uint8_t account[STORE_ACCOUNT_ID_LEN], store_group_summary **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (groups_missing(s))
        return STORE_OK;
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_error(rc);
    if ((rc = mdb_cursor_open(txn, s->member_groups, &c)) != 0) {
        mdb_txn_abort(txn);
        return map_error(rc);
    }
    size_t cap = 0;
    MDB_val k = {STORE_ACCOUNT_ID_LEN, (void *)account}, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != STORE_ACCOUNT_ID_LEN + STORE_GROUP_ID_LEN || memcmp(k.mv_data, account, STORE_ACCOUNT_ID_LEN))
            break;
        const uint8_t *id = (const uint8_t *)k.mv_data + STORE_ACCOUNT_ID_LEN;
        MDB_val gk = {STORE_GROUP_ID_LEN, (void *)id}, gv;
        if ((rc = mdb_get(txn, s->groups, &gk, &gv)) != 0)
            break;
        size_t bytes = cap * sizeof **out;
        if (!store_buf_grow(out, &bytes, (*n + 1) * sizeof **out, 8 * sizeof **out)) {
            rc = ENOMEM;
            break;
        }
        cap = bytes / sizeof **out;
        if (group_decode_summary(&(*out)[*n], id, gv.mv_data, gv.mv_size) != STORE_OK) {
            rc = EINVAL;
            break;
        }
        (*n)++;
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND || rc == 0)
        return STORE_OK;
    free(*out);
    *out = NULL;
    *n = 0;
    return rc == EINVAL ? STORE_INVALID : map_error(rc);
}

int ldb_group_seq_get(ldb_batch *b, const uint8_t id[STORE_GROUP_ID_LEN], uint64_t *seq)
{
    *seq = 0;
    if (groups_missing(b->s))
        return STORE_OK;
    MDB_val k = {STORE_GROUP_ID_LEN, (void *)id}, v;
    int rc = mdb_get(b->txn, b->s->group_seqs, &k, &v);
    if (rc == MDB_NOTFOUND)
        return STORE_OK;
    if (rc == 0 && v.mv_size != 8)
        return STORE_INVALID;
    if (rc == 0)
        *seq = get_be64(v.mv_data);
    return map_error(rc);
}

int ldb_group_seq_put(ldb_batch *b, const uint8_t id[STORE_GROUP_ID_LEN], uint64_t seq)
{
    uint8_t v[8];
    put_be64(v, seq);
    return put(b->txn, b->s->group_seqs, id, STORE_GROUP_ID_LEN, v, sizeof v);
}
