/* db_outbox.c - the profile database's outbox (db.h): the packed Content of each
 * message not yet acknowledged, in queue order, with its sealed Send once encrypted;
 * the RETRY receipts we send (for messages we could not decrypt); and the RETRY
 * receipts we answer: the devices each message of ours was sealed for, and the resends
 * we queue (outbox entries to one device). */
#include "db_internal.h"

#include "clock.h"

/* ---- the outbox ---------------------------------------------------------------- */

/* The entry of a new outgoing message (db_outgoing_add in db_messages.c). */
int outbox_add(db *d, const uint8_t id[DB_ID_LEN], const char *conversation, const uint8_t *body, size_t body_len)
{
    static db_query add = {"INSERT INTO outbox (message_id, conversation, body, created_ms) VALUES (?, ?, ?, ?)"};
    sqlite3_stmt *st = db_q(d, &add);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, conversation, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, body, (int)body_len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
    return run(d, st, "queueing a message");
}

int db_outbox_load(db *d, db_outbox_entry *out, size_t max, size_t *n)
{
    *n = 0;
    static db_query load = {"SELECT message_id, conversation, body, sealed, mismatches, resend_account, resend_device"
                            " FROM outbox ORDER BY seq LIMIT ?"};
    sqlite3_stmt *st = db_q(d, &load);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)max);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        db_outbox_entry *e = &out[*n];
        memset(e, 0, sizeof *e);
        if (!copy_blob(e->id, DB_ID_LEN, st, 0))
            continue; /* cannot happen: the schema checks the length */
        copy_text(e->conversation, sizeof e->conversation, st, 1);
        db_blob body = {0}, sealed = {0};
        if (dup_blob(&body, st, 2) != DB_OK ||
            (sqlite3_column_type(st, 3) == SQLITE_BLOB && dup_blob(&sealed, st, 3) != DB_OK)) {
            db_blob_free(&body);
            done(st);
            db_outbox_free(out, *n);
            *n = 0;
            snprintf(d->err, sizeof d->err, "out of memory");
            return DB_ERROR;
        }
        e->body = body.data;
        e->body_len = body.len;
        e->sealed = sealed.data;
        e->sealed_len = sealed.len;
        e->mismatches = (uint32_t)sqlite3_column_int64(st, 4);
        e->resend = copy_blob(e->resend_account, DB_ID_LEN, st, 5);
        e->resend_device = (uint32_t)sqlite3_column_int64(st, 6);
        (*n)++;
    }
    done(st);
    if (rc != SQLITE_DONE) {
        db_outbox_free(out, *n);
        *n = 0;
        return fail(d, "reading the outbox");
    }
    return DB_OK;
}

void db_outbox_free(db_outbox_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        db_blob body = {e[i].body, e[i].body_len}, sealed = {e[i].sealed, e[i].sealed_len};
        db_blob_free(&body);
        db_blob_free(&sealed);
        e[i].body = e[i].sealed = NULL;
    }
}

int db_outbox_count(db *d, size_t *n)
{
    static db_query count = {"SELECT count(*) FROM outbox"};
    return count_query(d, db_q(d, &count), n);
}

/* Drops the entry of id, whose message left PENDING (db_outgoing_sent, _failed, _advance). */
int outbox_delete(db *d, const uint8_t id[DB_ID_LEN])
{
    static db_query drop = {"DELETE FROM outbox WHERE message_id = ?"};
    sqlite3_stmt *st = db_q(d, &drop);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    return run(d, st, "updating the outbox");
}

/* ---- the outbox: sealed sends ---------------------------------------------------------- */

int db_outbox_sealed(db *d, const uint8_t id[DB_ID_LEN], db_blob *out)
{
    static db_query get = {"SELECT sealed FROM outbox WHERE message_id = ? AND sealed IS NOT NULL"};
    sqlite3_stmt *st = db_q(d, &get);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    return one_blob(d, st, 0, out, "reading the outbox");
}

int db_outbox_seal(db *d, const uint8_t id[DB_ID_LEN], const uint8_t *sealed, size_t len)
{
    static db_query seal = {"UPDATE outbox SET sealed = ? WHERE message_id = ?"};
    sqlite3_stmt *st = db_q(d, &seal);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, sealed, (int)len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, id, DB_ID_LEN, SQLITE_TRANSIENT);
    if (run(d, st, "storing a sealed message") != DB_OK)
        return DB_ERROR;
    return sqlite3_changes(d->sql) > 0 ? DB_OK : DB_NOT_FOUND;
}

int db_outbox_unseal(db *d, const uint8_t id[DB_ID_LEN], uint32_t *count)
{
    *count = 0;
    static db_query unseal = {"UPDATE outbox SET sealed = NULL, mismatches = mismatches + 1 WHERE message_id = ?"
                              " RETURNING mismatches"};
    sqlite3_stmt *st = db_q(d, &unseal);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *count = (uint32_t)sqlite3_column_int64(st, 0);
    while (rc == SQLITE_ROW)
        rc = sqlite3_step(st);
    done(st);
    return rc == SQLITE_DONE ? DB_OK : fail(d, "updating the outbox");
}

/* ---- RETRY receipts we send (messages we could not decrypt) ------------------------- */

int db_retry_add(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN])
{
    static db_query add = {"INSERT OR IGNORE INTO retry_receipts (account_id, device_id, message_id, created_ms)"
                           " VALUES (?, ?, ?, ?)"};
    sqlite3_stmt *st = db_q(d, &add);
    if (!st)
        return DB_ERROR;
    bind_key3(st, account, device, id);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
    return run(d, st, "queueing a retry receipt");
}

int db_retry_pending(db *d, uint8_t account[DB_ID_LEN], uint32_t *device, uint8_t (*ids)[DB_ID_LEN],
                     size_t max, size_t *n)
{
    *n = 0;
    static db_query target = {
        "SELECT account_id, device_id FROM retry_receipts WHERE sent = 0 ORDER BY created_ms LIMIT 1"};
    sqlite3_stmt *st = db_q(d, &target);
    if (!st)
        return DB_ERROR;
    int rc = sqlite3_step(st);
    bool found = rc == SQLITE_ROW && copy_blob(account, DB_ID_LEN, st, 0);
    if (found)
        *device = (uint32_t)sqlite3_column_int64(st, 1);
    done(st);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? DB_OK : fail(d, "reading retry receipts");
    if (!found)
        return DB_OK;
    static db_query pending_ids = {
        "SELECT message_id FROM retry_receipts WHERE sent = 0 AND account_id = ? AND device_id = ?"
        " ORDER BY created_ms LIMIT ?"};
    if (!(st = db_q(d, &pending_ids)))
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, *device);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)max);
    return id_rows(d, st, ids, max, n, "reading retry receipts");
}

int db_retry_sent(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t (*ids)[DB_ID_LEN],
                  size_t n)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    for (size_t i = 0; i < n; i++) {
        static db_query sent = {
            "UPDATE retry_receipts SET sent = 1 WHERE account_id = ? AND device_id = ? AND message_id = ?"};
        sqlite3_stmt *st = db_q(d, &sent);
        if (!st)
            goto fail;
        bind_key3(st, account, device, ids[i]);
        if (run(d, st, "recording sent retry receipts") != DB_OK)
            goto fail;
    }
    return db_commit(d);
fail:
    db_rollback(d);
    return DB_ERROR;
}

/* ---- resends (RETRY receipts we answer), the devices a message was sealed for --- */

int db_recipient_add(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN], uint32_t device,
                     const uint8_t identity_key[DB_KEY_LEN])
{
    static db_query add = {"INSERT OR REPLACE INTO recipients (account_id, device_id, message_id, identity_key)"
                           " VALUES (?, ?, ?, ?)"};
    sqlite3_stmt *st = db_q(d, &add);
    if (!st)
        return DB_ERROR;
    bind_key3(st, account, device, id);
    sqlite3_bind_blob(st, 4, identity_key, DB_KEY_LEN, SQLITE_TRANSIENT);
    return run(d, st, "recording a recipient");
}

int db_recipient_identity(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN], uint32_t device,
                          uint8_t identity_key[DB_KEY_LEN])
{
    static db_query get = {"SELECT identity_key FROM recipients WHERE account_id = ? AND device_id = ?"
                           " AND message_id = ?"};
    sqlite3_stmt *st = db_q(d, &get);
    if (!st)
        return DB_ERROR;
    bind_key3(st, account, device, id);
    int rc = sqlite3_step(st);
    bool ok = rc == SQLITE_ROW && copy_blob(identity_key, DB_KEY_LEN, st, 0);
    done(st);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE)
        return ok ? DB_OK : DB_NOT_FOUND;
    return fail(d, "reading a recipient");
}

int db_resend_identity(db *d, const uint8_t new_id[DB_ID_LEN], uint8_t identity_key[DB_KEY_LEN])
{
    static db_query get = {"SELECT r.identity_key FROM resends s JOIN recipients r ON r.message_id = s.original_id"
                           " AND r.account_id = s.account_id AND r.device_id = s.device_id WHERE s.new_id = ?"};
    sqlite3_stmt *st = db_q(d, &get);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, new_id, DB_ID_LEN, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    bool ok = rc == SQLITE_ROW && copy_blob(identity_key, DB_KEY_LEN, st, 0);
    done(st);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE)
        return ok ? DB_OK : DB_NOT_FOUND;
    return fail(d, "reading a recipient");
}

int db_resend_source_get(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN], uint32_t device,
                         db_resend_source *out)
{
    memset(out, 0, sizeof *out);
    uint8_t original[DB_ID_LEN];
    memcpy(original, id, DB_ID_LEN);
    /* one of our resends: the RETRY names its new id */
    static db_query mapping = {"SELECT original_id FROM resends WHERE new_id = ? AND account_id = ? AND device_id = ?"};
    sqlite3_stmt *st = db_q(d, &mapping);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, device);
    db_blob mapped;
    int rc = one_blob(d, st, 0, &mapped, "reading resends");
    if (rc == DB_ERROR)
        return DB_ERROR;
    if (rc == DB_OK) {
        if (mapped.len == DB_ID_LEN)
            memcpy(original, mapped.data, DB_ID_LEN);
        db_blob_free(&mapped);
    }
    /* a message of ours sealed for that very device (not merely for its account: a device
     * added since must not obtain older messages by asking) */
    static db_query direct = {"SELECT id, conversation, text, sent_ms FROM messages WHERE direction = 1 AND kind = 0"
                              " AND id = ?1 AND text IS NOT NULL AND EXISTS (SELECT 1 FROM recipients"
                              " WHERE message_id = ?1 AND account_id = ?2 AND device_id = ?3)"};
    if (!(st = db_q(d, &direct)))
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, original, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, device);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        memcpy(out->original, original, DB_ID_LEN);
        copy_text(out->conversation, sizeof out->conversation, st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 2);
        const unsigned char *text = sqlite3_column_text(st, 2);
        out->text = malloc(len + 1);
        if (out->text && text) {
            memcpy(out->text, text, len);
            out->text[len] = 0;
            out->text_len = len;
        }
        out->sent_ms = (uint64_t)sqlite3_column_int64(st, 3);
    }
    done(st);
    if (rc != SQLITE_ROW) {
        memset(out, 0, sizeof *out);
        return rc == SQLITE_DONE ? DB_NOT_FOUND : fail(d, "reading a message");
    }
    if (!out->text) {
        snprintf(d->err, sizeof d->err, "out of memory");
        return DB_ERROR;
    }
    static db_query count = {"SELECT count(*) FROM resends WHERE original_id = ? AND account_id = ? AND device_id = ?"};
    if (!(st = db_q(d, &count))) {
        free(out->text);
        out->text = NULL;
        return DB_ERROR;
    }
    sqlite3_bind_blob(st, 1, original, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, device);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        out->resends = (uint32_t)sqlite3_column_int64(st, 0);
    done(st);
    if (rc != SQLITE_ROW) {
        free(out->text);
        out->text = NULL;
        return fail(d, "counting resends");
    }
    return DB_OK;
}

int db_resend_add(db *d, const uint8_t new_id[DB_ID_LEN], const uint8_t original[DB_ID_LEN], const char *conversation,
                  const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t *body, size_t body_len)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    uint64_t now = clock_wall_ms();
    static db_query add = {
        "INSERT INTO resends (new_id, original_id, account_id, device_id, created_ms) VALUES (?, ?, ?, ?, ?)"};
    sqlite3_stmt *st = db_q(d, &add);
    if (!st)
        goto fail;
    sqlite3_bind_blob(st, 1, new_id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, original, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, device);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)now);
    if (run(d, st, "recording a resend") != DB_OK)
        goto fail;
    static db_query queue = {
        "INSERT INTO outbox (message_id, conversation, body, created_ms, resend_account, resend_device)"
        " VALUES (?, ?, ?, ?, ?, ?)"};
    if (!(st = db_q(d, &queue)))
        goto fail;
    sqlite3_bind_blob(st, 1, new_id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, conversation, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, body, (int)body_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)now);
    sqlite3_bind_blob(st, 5, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, device);
    if (run(d, st, "queueing a resend") != DB_OK)
        goto fail;
    return db_commit(d);
fail:
    db_rollback(d);
    return DB_ERROR;
}
