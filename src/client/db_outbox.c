/* db_outbox.c - the profile database's outbox (db.h): the packed Content of each
 * message not yet acknowledged, in queue order, with its sealed Send once encrypted;
 * the RETRY receipts we send (for messages we could not decrypt); and the RETRY
 * receipts we answer: the devices each message of ours was sealed for, and the resends
 * we queue (outbox entries to one device). */
#include "db_internal.h"

#include "clock.h"

/* Cached statements, one per query (the statement cache: db_internal.h). */
enum {
    Q_OUTBOX_ADD,
    Q_OUTBOX_LOAD,
    Q_OUTBOX_COUNT,
    Q_OUTBOX_DELETE,
    Q_OUTBOX_SEALED,
    Q_OUTBOX_SEAL,
    Q_OUTBOX_UNSEAL,
    Q_RETRY_ADD,
    Q_RETRY_TARGET,
    Q_RETRY_IDS,
    Q_RETRY_SENT,
    Q_RECIPIENT_ADD,
    Q_RECIPIENT_IDENTITY,
    Q_RESEND_IDENTITY,
    Q_RESEND_MAPPED,
    Q_RESEND_DIRECT,
    Q_RESEND_COUNT,
    Q_RESEND_ADD,
    Q_OUTBOX_ADD_RESEND,
    Q_COUNT
};
_Static_assert(Q_COUNT <= DB_DOMAIN_QUERIES, "too many queries for one domain: raise DB_DOMAIN_QUERIES");

static const char *const query_sql[Q_COUNT] = {
    [Q_OUTBOX_ADD] = "INSERT INTO outbox (message_id, phone, body, created_ms) VALUES (?, ?, ?, ?)",
    [Q_OUTBOX_LOAD] = "SELECT message_id, phone, body, sealed, mismatches, resend_account, resend_device"
                      " FROM outbox ORDER BY seq LIMIT ?",
    [Q_OUTBOX_COUNT] = "SELECT count(*) FROM outbox",
    [Q_OUTBOX_DELETE] = "DELETE FROM outbox WHERE message_id = ?",
    [Q_OUTBOX_SEALED] = "SELECT sealed FROM outbox WHERE message_id = ? AND sealed IS NOT NULL",
    [Q_OUTBOX_SEAL] = "UPDATE outbox SET sealed = ? WHERE message_id = ?",
    [Q_OUTBOX_UNSEAL] = "UPDATE outbox SET sealed = NULL, mismatches = mismatches + 1 WHERE message_id = ?"
                        " RETURNING mismatches",
    [Q_RETRY_ADD] = "INSERT OR IGNORE INTO retry_receipts (account_id, device_id, message_id, created_ms)"
                    " VALUES (?, ?, ?, ?)",
    [Q_RETRY_TARGET] = "SELECT account_id, device_id FROM retry_receipts WHERE sent = 0 ORDER BY created_ms LIMIT 1",
    [Q_RETRY_IDS] = "SELECT message_id FROM retry_receipts WHERE sent = 0 AND account_id = ? AND device_id = ?"
                    " ORDER BY created_ms LIMIT ?",
    [Q_RETRY_SENT] = "UPDATE retry_receipts SET sent = 1 WHERE account_id = ? AND device_id = ? AND message_id = ?",
    [Q_RECIPIENT_ADD] = "INSERT OR REPLACE INTO recipients (message_id, account_id, device_id, identity_key)"
                        " VALUES (?, ?, ?, ?)",
    [Q_RECIPIENT_IDENTITY] = "SELECT identity_key FROM recipients WHERE message_id = ? AND account_id = ?"
                             " AND device_id = ?",
    [Q_RESEND_IDENTITY] = "SELECT r.identity_key FROM resends s JOIN recipients r ON r.message_id = s.original_id"
                          " AND r.account_id = s.account_id AND r.device_id = s.device_id WHERE s.new_id = ?",
    [Q_RESEND_MAPPED] = "SELECT original_id FROM resends WHERE new_id = ? AND account_id = ? AND device_id = ?",
    /* a message of ours sealed for that very device (not merely for its account: a device
     * added since must not obtain older messages by asking) */
    [Q_RESEND_DIRECT] = "SELECT id, peer_phone, text, sent_ms FROM messages WHERE direction = 1 AND kind = 0"
                        " AND id = ?1 AND text IS NOT NULL AND EXISTS (SELECT 1 FROM recipients"
                        " WHERE message_id = ?1 AND account_id = ?2 AND device_id = ?3)",
    [Q_RESEND_COUNT] = "SELECT count(*) FROM resends WHERE original_id = ? AND account_id = ? AND device_id = ?",
    [Q_RESEND_ADD] = "INSERT INTO resends (new_id, original_id, account_id, device_id, created_ms) VALUES (?, ?, ?, ?, ?)",
    [Q_OUTBOX_ADD_RESEND] = "INSERT INTO outbox (message_id, phone, body, created_ms, resend_account, resend_device)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
};

/* The cached statement for which, reset and ready for binding; NULL on error. */
static sqlite3_stmt *q(db *d, int which)
{
    return db_statement(d, DB_Q_OUTBOX, which, query_sql[which]);
}

/* ---- the outbox ---------------------------------------------------------------- */

/* The entry of a new outgoing message (db_outgoing_add in db_messages.c). */
int outbox_add(db *d, const uint8_t id[DB_ID_LEN], const char *phone, const uint8_t *body, size_t body_len)
{
    sqlite3_stmt *st = q(d, Q_OUTBOX_ADD);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, phone, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, body, (int)body_len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
    return run(d, st, "queueing a message");
}

int db_outbox_load(db *d, db_outbox_entry *out, size_t max, size_t *n)
{
    *n = 0;
    sqlite3_stmt *st = q(d, Q_OUTBOX_LOAD);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)max);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        db_outbox_entry *e = &out[*n];
        memset(e, 0, sizeof *e);
        if (!copy_blob(e->id, DB_ID_LEN, st, 0))
            continue; /* cannot happen: the schema checks the length */
        copy_text(e->phone, sizeof e->phone, st, 1);
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
    return count_query(d, q(d, Q_OUTBOX_COUNT), n);
}

/* Drops the entry of id, whose message left PENDING (db_outgoing_sent, _failed, _advance). */
int outbox_delete(db *d, const uint8_t id[DB_ID_LEN])
{
    sqlite3_stmt *st = q(d, Q_OUTBOX_DELETE);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    return run(d, st, "updating the outbox");
}

/* ---- the outbox: sealed sends ---------------------------------------------------------- */

int db_outbox_sealed(db *d, const uint8_t id[DB_ID_LEN], db_blob *out)
{
    sqlite3_stmt *st = q(d, Q_OUTBOX_SEALED);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    return one_blob(d, st, 0, out, "reading the outbox");
}

int db_outbox_seal(db *d, const uint8_t id[DB_ID_LEN], const uint8_t *sealed, size_t len)
{
    sqlite3_stmt *st = q(d, Q_OUTBOX_SEAL);
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
    sqlite3_stmt *st = q(d, Q_OUTBOX_UNSEAL);
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
    sqlite3_stmt *st = q(d, Q_RETRY_ADD);
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
    sqlite3_stmt *st = q(d, Q_RETRY_TARGET);
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
    if (!(st = q(d, Q_RETRY_IDS)))
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, *device);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)max);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < max)
        if (copy_blob(ids[*n], DB_ID_LEN, st, 0))
            (*n)++;
    done(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        *n = 0;
        return fail(d, "reading retry receipts");
    }
    return DB_OK;
}

int db_retry_sent(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t (*ids)[DB_ID_LEN],
                  size_t n)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *st = q(d, Q_RETRY_SENT);
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
    sqlite3_stmt *st = q(d, Q_RECIPIENT_ADD);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, device);
    sqlite3_bind_blob(st, 4, identity_key, DB_KEY_LEN, SQLITE_TRANSIENT);
    return run(d, st, "recording a recipient");
}

int db_recipient_identity(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN], uint32_t device,
                          uint8_t identity_key[DB_KEY_LEN])
{
    sqlite3_stmt *st = q(d, Q_RECIPIENT_IDENTITY);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, device);
    int rc = sqlite3_step(st);
    bool ok = rc == SQLITE_ROW && copy_blob(identity_key, DB_KEY_LEN, st, 0);
    done(st);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE)
        return ok ? DB_OK : DB_NOT_FOUND;
    return fail(d, "reading a recipient");
}

int db_resend_identity(db *d, const uint8_t new_id[DB_ID_LEN], uint8_t identity_key[DB_KEY_LEN])
{
    sqlite3_stmt *st = q(d, Q_RESEND_IDENTITY);
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
    sqlite3_stmt *st = q(d, Q_RESEND_MAPPED);
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
    if (!(st = q(d, Q_RESEND_DIRECT)))
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, original, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, device);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        memcpy(out->original, original, DB_ID_LEN);
        copy_text(out->phone, sizeof out->phone, st, 1);
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
    if (!(st = q(d, Q_RESEND_COUNT))) {
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

int db_resend_add(db *d, const uint8_t new_id[DB_ID_LEN], const uint8_t original[DB_ID_LEN], const char *phone,
                  const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t *body, size_t body_len)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    uint64_t now = clock_wall_ms();
    sqlite3_stmt *st = q(d, Q_RESEND_ADD);
    if (!st)
        goto fail;
    sqlite3_bind_blob(st, 1, new_id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, original, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, device);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)now);
    if (run(d, st, "recording a resend") != DB_OK)
        goto fail;
    if (!(st = q(d, Q_OUTBOX_ADD_RESEND)))
        goto fail;
    sqlite3_bind_blob(st, 1, new_id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, phone, -1, SQLITE_TRANSIENT);
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
