/* db_signal.c - the profile database's Signal state (db.h): our signed and one-time
 * prekeys (private parts, serialized ps_key_records), a session record per peer device,
 * and the identity key seen per peer device and per phone number and device. */
#include "db_internal.h"

#include <sodium.h>

#include "clock.h"

/* ---- our prekeys ---------------------------------------------------------------------- */

int db_signed_prekey_add(db *d, uint32_t id, const uint8_t *record, size_t len, uint64_t now_ms)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    static db_query replace = {"UPDATE signed_prekeys SET replaced_ms = ? WHERE replaced_ms IS NULL"};
    sqlite3_stmt *st = db_q(d, &replace);
    if (!st)
        goto fail;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)now_ms);
    if (run(d, st, "replacing the signed prekey") != DB_OK)
        goto fail;
    static db_query add = {
        "INSERT OR REPLACE INTO signed_prekeys (id, record, created_ms, replaced_ms) VALUES (?, ?, ?, NULL)"};
    if (!(st = db_q(d, &add)))
        goto fail;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_blob(st, 2, record, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)now_ms);
    if (run(d, st, "storing a signed prekey") != DB_OK)
        goto fail;
    return db_commit(d);
fail:
    db_rollback(d);
    return DB_ERROR;
}

int db_signed_prekey_current(db *d, uint32_t *id, db_blob *record, uint64_t *created_ms)
{
    record->data = NULL;
    record->len = 0;
    static db_query current = {"SELECT id, record, created_ms FROM signed_prekeys WHERE replaced_ms IS NULL"
                               " ORDER BY created_ms DESC LIMIT 1"};
    sqlite3_stmt *st = db_q(d, &current);
    if (!st)
        return DB_ERROR;
    int rc = sqlite3_step(st);
    int ret = rc == SQLITE_ROW ? DB_OK : rc == SQLITE_DONE ? DB_NOT_FOUND : fail(d, "reading the signed prekey");
    if (rc == SQLITE_ROW) {
        *id = (uint32_t)sqlite3_column_int64(st, 0);
        *created_ms = (uint64_t)sqlite3_column_int64(st, 2);
        if (dup_blob(record, st, 1) != DB_OK) {
            snprintf(d->err, sizeof d->err, "out of memory");
            ret = DB_ERROR;
        }
    }
    done(st);
    return ret;
}

int db_signed_prekey_get(db *d, uint32_t id, db_blob *record)
{
    static db_query get = {"SELECT record FROM signed_prekeys WHERE id = ?"};
    sqlite3_stmt *st = db_q(d, &get);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    return one_blob(d, st, 0, record, "reading a signed prekey");
}

int db_signed_prekey_prune(db *d, uint64_t before_ms, size_t *n)
{
    static db_query prune = {"DELETE FROM signed_prekeys WHERE replaced_ms IS NOT NULL AND replaced_ms < ?"};
    sqlite3_stmt *st = db_q(d, &prune);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)(before_ms > INT64_MAX ? INT64_MAX : before_ms));
    int rc = run(d, st, "deleting old signed prekeys");
    if (n)
        *n = rc == DB_OK ? (size_t)sqlite3_changes(d->sql) : 0;
    return rc;
}

#define PREKEY_ID_MAX 0xFFFFFFu

int db_prekey_next_id(db *d, uint32_t *id)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    static db_query get_next = {"SELECT next_prekey_id FROM identity WHERE id = 1"};
    sqlite3_stmt *st = db_q(d, &get_next);
    if (!st)
        goto fail;
    int rc = sqlite3_step(st);
    uint32_t next = rc == SQLITE_ROW ? (uint32_t)sqlite3_column_int64(st, 0) : 0;
    done(st);
    if (rc != SQLITE_ROW) {
        if (rc == SQLITE_DONE)
            snprintf(d->err, sizeof d->err, "the profile has no identity");
        else
            fail(d, "reading the prekey counter");
        goto fail;
    }
    /* skip ids still held (after going round); a full table of 2^24 keys is not possible here */
    for (uint32_t tries = 0;; tries++) {
        if (next < 1 || next > PREKEY_ID_MAX)
            next = 1;
        static db_query held = {"SELECT 1 FROM prekeys WHERE id = ?"};
        if (!(st = db_q(d, &held)))
            goto fail;
        sqlite3_bind_int64(st, 1, next);
        rc = exists_row(d, st, "reading prekeys");
        if (rc == DB_ERROR)
            goto fail;
        if (rc == DB_NOT_FOUND)
            break;
        if (tries > 100000) {
            snprintf(d->err, sizeof d->err, "no free one-time prekey id");
            goto fail;
        }
        next++;
    }
    *id = next;
    static db_query set_next = {"UPDATE identity SET next_prekey_id = ? WHERE id = 1"};
    if (!(st = db_q(d, &set_next)))
        goto fail;
    sqlite3_bind_int64(st, 1, next >= PREKEY_ID_MAX ? 1 : next + 1);
    if (run(d, st, "updating the prekey counter") != DB_OK)
        goto fail;
    return db_commit(d);
fail:
    db_rollback(d);
    return DB_ERROR;
}

int db_prekey_add(db *d, uint32_t id, const uint8_t *record, size_t len)
{
    static db_query add = {"INSERT INTO prekeys (id, record, created_ms) VALUES (?, ?, ?)"};
    sqlite3_stmt *st = db_q(d, &add);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_blob(st, 2, record, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)clock_wall_ms());
    return run(d, st, "storing a prekey");
}

int db_prekey_get(db *d, uint32_t id, db_blob *record)
{
    static db_query get = {"SELECT record FROM prekeys WHERE id = ?"};
    sqlite3_stmt *st = db_q(d, &get);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    return one_blob(d, st, 0, record, "reading a prekey");
}

int db_prekey_delete(db *d, uint32_t id)
{
    static db_query drop = {"DELETE FROM prekeys WHERE id = ?"};
    sqlite3_stmt *st = db_q(d, &drop);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    return run(d, st, "deleting a prekey");
}

int db_prekey_count(db *d, size_t *n)
{
    static db_query count = {"SELECT count(*) FROM prekeys"};
    return count_query(d, db_q(d, &count), n);
}

int db_prekeys_not_uploaded(db *d, db_key_row *out, size_t max, size_t *n)
{
    *n = 0;
    static db_query not_uploaded = {
        "SELECT id, record FROM prekeys WHERE uploaded = 0 ORDER BY created_ms, id LIMIT ?"};
    sqlite3_stmt *st = db_q(d, &not_uploaded);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)max);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < max) {
        out[*n].id = (uint32_t)sqlite3_column_int64(st, 0);
        if (dup_blob(&out[*n].record, st, 1) != DB_OK) {
            rc = SQLITE_NOMEM;
            break;
        }
        (*n)++;
    }
    done(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        for (size_t i = 0; i < *n; i++)
            db_blob_free(&out[i].record);
        *n = 0;
        return fail(d, "reading prekeys");
    }
    return DB_OK;
}

int db_prekeys_uploaded(db *d, const uint32_t *ids, size_t n)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    for (size_t i = 0; i < n; i++) {
        static db_query uploaded = {"UPDATE prekeys SET uploaded = 1 WHERE id = ?"};
        sqlite3_stmt *st = db_q(d, &uploaded);
        if (!st)
            goto fail;
        sqlite3_bind_int64(st, 1, ids[i]);
        if (run(d, st, "recording uploaded prekeys") != DB_OK)
            goto fail;
    }
    return db_commit(d);
fail:
    db_rollback(d);
    return DB_ERROR;
}

/* ---- sessions and peer identities ---------------------------------------------------- */

static void bind_device(sqlite3_stmt *st, const uint8_t account[DB_ID_LEN], uint32_t device)
{
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, device);
}

/* db_session_get and db_session_exists */
static db_query session_get = {"SELECT record FROM sessions WHERE account_id = ? AND device_id = ?"};

int db_session_get(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, db_blob *record)
{
    sqlite3_stmt *st = db_q(d, &session_get);
    if (!st)
        return DB_ERROR;
    bind_device(st, account, device);
    return one_blob(d, st, 0, record, "reading a session");
}

int db_session_put(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t *record, size_t len)
{
    static db_query put = {"INSERT INTO sessions (account_id, device_id, record, updated_ms) VALUES (?, ?, ?, ?)"
                           " ON CONFLICT (account_id, device_id) DO UPDATE SET record = excluded.record,"
                           " updated_ms = excluded.updated_ms"};
    sqlite3_stmt *st = db_q(d, &put);
    if (!st)
        return DB_ERROR;
    bind_device(st, account, device);
    sqlite3_bind_blob(st, 3, record, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
    return run(d, st, "storing a session");
}

int db_session_delete(db *d, const uint8_t account[DB_ID_LEN], uint32_t device)
{
    static db_query drop = {"DELETE FROM sessions WHERE account_id = ? AND device_id = ?"};
    sqlite3_stmt *st = db_q(d, &drop);
    if (!st)
        return DB_ERROR;
    bind_device(st, account, device);
    return run(d, st, "deleting a session");
}

int db_session_exists(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, bool *exists)
{
    *exists = false;
    sqlite3_stmt *st = db_q(d, &session_get);
    if (!st)
        return DB_ERROR;
    bind_device(st, account, device);
    int rc = exists_row(d, st, "reading a session");
    *exists = rc == DB_OK;
    return rc == DB_ERROR ? DB_ERROR : DB_OK;
}

int db_peer_identity_get(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, uint8_t key[DB_KEY_LEN])
{
    static db_query get = {"SELECT identity_key FROM peer_identities WHERE account_id = ? AND device_id = ?"};
    sqlite3_stmt *st = db_q(d, &get);
    if (!st)
        return DB_ERROR;
    bind_device(st, account, device);
    int rc = sqlite3_step(st);
    bool ok = rc == SQLITE_ROW && copy_blob(key, DB_KEY_LEN, st, 0);
    done(st);
    if (rc == SQLITE_ROW)
        return ok ? DB_OK : DB_NOT_FOUND;
    return rc == SQLITE_DONE ? DB_NOT_FOUND : fail(d, "reading an identity key");
}

/* The key last seen for (phone, device), and under which account. */
static int phone_identity_get(db *d, const char *phone, uint32_t device, uint8_t account[DB_ID_LEN],
                              uint8_t key[DB_KEY_LEN])
{
    static db_query get = {"SELECT account_id, identity_key FROM phone_identities WHERE phone = ? AND device_id = ?"};
    sqlite3_stmt *st = db_q(d, &get);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, device);
    int rc = sqlite3_step(st);
    bool ok = rc == SQLITE_ROW && copy_blob(account, DB_ID_LEN, st, 0) && copy_blob(key, DB_KEY_LEN, st, 1);
    done(st);
    if (rc == SQLITE_ROW)
        return ok ? DB_OK : DB_NOT_FOUND;
    return rc == SQLITE_DONE ? DB_NOT_FOUND : fail(d, "reading an identity key");
}

int db_peer_identity_put(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const char *phone,
                         const uint8_t key[DB_KEY_LEN], db_identity_seen *out)
{
    memset(out, 0, sizeof *out);
    uint8_t old[DB_KEY_LEN], old_account[DB_ID_LEN];
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    int rc = db_peer_identity_get(d, account, device, old);
    if (rc == DB_ERROR)
        goto fail;
    out->known = rc == DB_OK;
    bool account_changed = out->known && sodium_memcmp(old, key, DB_KEY_LEN) != 0;
    out->changed = account_changed;
    /* the number's own history: a number that moved to this account (or whose key is
     * first seen under it) is compared with the key the number had before */
    bool by_phone = phone && *phone, phone_moved = false, account_known = out->known;
    if (by_phone) {
        rc = phone_identity_get(d, phone, device, old_account, old);
        if (rc == DB_ERROR)
            goto fail;
        if (rc == DB_OK) {
            out->known = true;
            if (sodium_memcmp(old, key, DB_KEY_LEN) != 0) {
                out->changed = true;
                phone_moved = memcmp(old_account, account, DB_ID_LEN) != 0;
            }
        }
    }
    sqlite3_stmt *st;
    if (!account_known || account_changed) {
        static db_query peer_put = {
            "INSERT INTO peer_identities (account_id, device_id, identity_key, first_seen_ms, updated_ms)"
            " VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (account_id, device_id) DO UPDATE SET"
            " identity_key = excluded.identity_key, updated_ms = excluded.updated_ms"};
        if (!(st = db_q(d, &peer_put)))
            goto fail;
        bind_device(st, account, device);
        sqlite3_bind_blob(st, 3, key, DB_KEY_LEN, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
        if (run(d, st, "storing an identity key") != DB_OK)
            goto fail;
    }
    if (by_phone) {
        static db_query phone_put = {
            "INSERT INTO phone_identities (phone, device_id, account_id, identity_key, updated_ms)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (phone, device_id) DO UPDATE SET"
            " account_id = excluded.account_id, identity_key = excluded.identity_key,"
            " updated_ms = excluded.updated_ms"};
        if (!(st = db_q(d, &phone_put)))
            goto fail;
        sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, device);
        sqlite3_bind_blob(st, 3, account, DB_ID_LEN, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 4, key, DB_KEY_LEN, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)clock_wall_ms());
        if (run(d, st, "storing an identity key") != DB_OK)
            goto fail;
    }
    if (out->changed) {
        if (contact_clear_verified(d, account, &out->was_verified) != DB_OK ||
            (phone_moved && contact_clear_verified(d, old_account, &out->was_verified) != DB_OK))
            goto fail;
    }
    return db_commit(d);
fail:
    memset(out, 0, sizeof *out);
    db_rollback(d);
    return DB_ERROR;
}
