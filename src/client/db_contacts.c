/* db_contacts.c - the profile database's contacts (db.h): the phone number and device
 * list of each account we know, a number belonging to one account at a time, and the
 * verified mark (the account's safety number was compared). */
#include "db_internal.h"

#include "clock.h"

/* ---- contacts -------------------------------------------------------------------- */

/* db_contact_put and db_contact_forget_phone */
static db_query clear_phone = {"UPDATE contacts SET phone = NULL WHERE phone = ? AND account_id IS NOT ?"};

int db_contact_put(db *d, const db_contact *c)
{
    uint8_t devs[DB_MAX_DEVICES * 4];
    size_t n = c->n_devices < DB_MAX_DEVICES ? c->n_devices : DB_MAX_DEVICES;
    for (size_t i = 0; i < n; i++) {
        devs[4 * i] = (uint8_t)(c->devices[i] >> 24);
        devs[4 * i + 1] = (uint8_t)(c->devices[i] >> 16);
        devs[4 * i + 2] = (uint8_t)(c->devices[i] >> 8);
        devs[4 * i + 3] = (uint8_t)c->devices[i];
    }
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    sqlite3_stmt *st;
    if (c->phone[0]) { /* the number now belongs to this account only */
        if (!(st = db_q(d, &clear_phone)))
            goto fail;
        sqlite3_bind_text(st, 1, c->phone, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 2, c->account, DB_ID_LEN, SQLITE_TRANSIENT);
        if (run(d, st, "updating a contact") != DB_OK)
            goto fail;
    }
    static db_query put = {"INSERT INTO contacts (account_id, phone, device_ids, updated_ms) VALUES (?, ?, ?, ?)"
                           " ON CONFLICT (account_id) DO UPDATE SET phone = coalesce(excluded.phone, phone),"
                           " device_ids = excluded.device_ids, updated_ms = excluded.updated_ms"};
    if (!(st = db_q(d, &put)))
        goto fail;
    sqlite3_bind_blob(st, 1, c->account, DB_ID_LEN, SQLITE_TRANSIENT);
    bind_text_or_null(st, 2, c->phone);
    sqlite3_bind_blob(st, 3, devs, (int)(4 * n), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
    if (run(d, st, "storing a contact") != DB_OK)
        goto fail;
    return db_commit(d);
fail:
    db_rollback(d);
    return DB_ERROR;
}

static int contact_row(db *d, sqlite3_stmt *st, db_contact *out)
{
    memset(out, 0, sizeof *out);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        copy_blob(out->account, DB_ID_LEN, st, 0);
        copy_text(out->phone, sizeof out->phone, st, 1);
        const uint8_t *b = sqlite3_column_blob(st, 2);
        size_t len = (size_t)sqlite3_column_bytes(st, 2) / 4;
        for (size_t i = 0; b && i < len && i < DB_MAX_DEVICES; i++)
            out->devices[out->n_devices++] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 |
                                             (uint32_t)b[4 * i + 2] << 8 | b[4 * i + 3];
    }
    done(st);
    if (rc == SQLITE_ROW)
        return DB_OK;
    return rc == SQLITE_DONE ? DB_NOT_FOUND : fail(d, "reading a contact");
}

int db_contact_by_phone(db *d, const char *phone, db_contact *out)
{
    static db_query by_phone = {"SELECT account_id, phone, device_ids FROM contacts WHERE phone = ?"};
    sqlite3_stmt *st = db_q(d, &by_phone);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
    return contact_row(d, st, out);
}

int db_contact_by_account(db *d, const uint8_t account[DB_ID_LEN], db_contact *out)
{
    static db_query by_account = {"SELECT account_id, phone, device_ids FROM contacts WHERE account_id = ?"};
    sqlite3_stmt *st = db_q(d, &by_account);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    return contact_row(d, st, out);
}

int db_contact_forget_phone(db *d, const char *phone)
{
    sqlite3_stmt *st = db_q(d, &clear_phone);
    if (!st)
        return DB_ERROR;
    static const uint8_t none[DB_ID_LEN]; /* no account is all zero: clears every holder */
    sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, none, DB_ID_LEN, SQLITE_STATIC);
    return run(d, st, "forgetting a contact");
}

/* ---- contacts: the verified mark ------------------------------------------------------ */

int db_contact_verified(db *d, const uint8_t account[DB_ID_LEN], bool *verified)
{
    *verified = false;
    static db_query get = {"SELECT verified FROM contacts WHERE account_id = ?"};
    sqlite3_stmt *st = db_q(d, &get);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *verified = sqlite3_column_int(st, 0) != 0;
    done(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? DB_OK : fail(d, "reading a contact");
}

int db_contact_set_verified(db *d, const uint8_t account[DB_ID_LEN], bool verified)
{
    static db_query set = {"UPDATE contacts SET verified = ? WHERE account_id = ?"};
    sqlite3_stmt *st = db_q(d, &set);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int(st, 1, verified);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    if (run(d, st, "marking a contact verified") != DB_OK)
        return DB_ERROR;
    return sqlite3_changes(d->sql) > 0 ? DB_OK : DB_NOT_FOUND;
}

/* A changed identity key clears the mark (db_peer_identity_put in db_signal.c). */
int contact_clear_verified(db *d, const uint8_t account[DB_ID_LEN], bool *was)
{
    static db_query clear = {"UPDATE contacts SET verified = 0 WHERE account_id = ? AND verified != 0"};
    sqlite3_stmt *st = db_q(d, &clear);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    if (run(d, st, "clearing the verified mark") != DB_OK)
        return DB_ERROR;
    if (sqlite3_changes(d->sql) > 0)
        *was = true;
    return DB_OK;
}
