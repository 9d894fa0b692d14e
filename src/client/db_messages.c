/* db_messages.c - the profile database's messages (db.h): outgoing messages and the
 * states they move through (pending, sent, delivered, read; or failed), incoming ones
 * with their de-duplication before decrypting, resends merged into earlier rows,
 * notices in a conversation, read receipts to send, the conversation in local order
 * and what is not shown yet. An outgoing message's outbox entry is db_outbox.c's. */
#include "db_internal.h"

#include <sodium.h>

#include "clock.h"

enum { DIR_IN = 0, DIR_OUT = 1 };

/* ---- messages -------------------------------------------------------------------- */

static int message_insert(db *d, const db_message *m, int state, bool *inserted)
{
    static db_query add = {
        "INSERT OR IGNORE INTO messages (id, direction, peer_phone, peer_account, from_device,"
        " text, problem, sent_ms, server_time_ms, state, created_ms, shown, conversation)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?2, ?12)"}; /* incoming: not shown yet */
    sqlite3_stmt *st = db_q(d, &add);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, m->id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, m->outgoing ? DIR_OUT : DIR_IN);
    bind_text_or_null(st, 3, m->peer_phone);
    if (m->has_peer_account)
        sqlite3_bind_blob(st, 4, m->peer_account, DB_ID_LEN, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 4);
    sqlite3_bind_int64(st, 5, m->from_device);
    if (m->text)
        sqlite3_bind_text(st, 6, m->text, (int)m->text_len, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 6);
    bind_text_or_null(st, 7, m->problem);
    sqlite3_bind_int64(st, 8, (sqlite3_int64)m->sent_ms);
    sqlite3_bind_int64(st, 9, (sqlite3_int64)m->server_time_ms);
    sqlite3_bind_int(st, 10, state);
    sqlite3_bind_int64(st, 11, (sqlite3_int64)clock_wall_ms());
    bind_text_or_null(st, 12, m->conversation);
    int rc = run(d, st, "storing a message");
    if (rc == DB_OK)
        *inserted = sqlite3_changes(d->sql) > 0;
    return rc;
}

int db_outgoing_add(db *d, const db_message *m, const uint8_t *body, size_t body_len)
{
    bool inserted = false;
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    if (message_insert(d, m, PARLEY_STATE_PENDING, &inserted) != DB_OK)
        goto fail;
    if (!inserted) {
        snprintf(d->err, sizeof d->err, "a message with this id exists");
        goto fail;
    }
    if (outbox_add(d, m->id, m->conversation, body, body_len) != DB_OK)
        goto fail;
    return db_commit(d);
fail:
    db_rollback(d);
    return DB_ERROR;
}

int db_outgoing_sent(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN],
                     uint64_t server_time_ms, bool *changed)
{
    *changed = false;
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    /* pending -> sent; or, if a receipt moved it on already, only the time */
    static db_query sent = {"UPDATE messages SET state = 2, server_time_ms = ?, peer_account = ?"
                            " WHERE direction = 1 AND id = ? AND state = 1"};
    /* the ack of a message a receipt already moved on: record the time all the same */
    static db_query sent_late = {"UPDATE messages SET server_time_ms = ?, peer_account = ?"
                                 " WHERE direction = 1 AND id = ? AND state > 2 AND server_time_ms = 0"};
    db_query *const queries[] = {&sent, &sent_late};
    for (size_t i = 0; i < 2 && !*changed; i++) {
        sqlite3_stmt *st = db_q(d, queries[i]);
        if (!st)
            goto fail;
        sqlite3_bind_int64(st, 1, (sqlite3_int64)server_time_ms);
        sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 3, id, DB_ID_LEN, SQLITE_TRANSIENT);
        if (run(d, st, "recording an acknowledgement") != DB_OK)
            goto fail;
        *changed = i == 0 && sqlite3_changes(d->sql) > 0;
    }
    if (outbox_delete(d, id) != DB_OK)
        goto fail;
    return db_commit(d);
fail:
    *changed = false;
    db_rollback(d);
    return DB_ERROR;
}

int db_outgoing_failed(db *d, const uint8_t id[DB_ID_LEN], const char *reason, bool *changed)
{
    *changed = false;
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    static db_query failed = {
        "UPDATE messages SET state = 0, problem = ? WHERE direction = 1 AND id = ? AND state = 1"};
    sqlite3_stmt *st = db_q(d, &failed);
    if (!st)
        goto fail;
    bind_text_or_null(st, 1, reason);
    sqlite3_bind_blob(st, 2, id, DB_ID_LEN, SQLITE_TRANSIENT);
    if (run(d, st, "recording a failed message") != DB_OK)
        goto fail;
    *changed = sqlite3_changes(d->sql) > 0;
    if (outbox_delete(d, id) != DB_OK)
        goto fail;
    return db_commit(d);
fail:
    *changed = false;
    db_rollback(d);
    return DB_ERROR;
}

int db_outgoing_advance(db *d, const uint8_t id[DB_ID_LEN], const uint8_t peer_account[DB_ID_LEN],
                        int state, bool *changed)
{
    *changed = false;
    if (state != PARLEY_STATE_DELIVERED && state != PARLEY_STATE_READ) {
        snprintf(d->err, sizeof d->err, "a receipt can only deliver or read");
        return DB_ERROR;
    }
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    /* forward only, never from failed (0). A pending message (1) may move too: the
     * server had it (we lost its ack), and it has no account yet, so the receipt's
     * sender must be the contact its number belongs to */
    static db_query advance = {"UPDATE messages SET state = ?1 WHERE direction = 1 AND id = ?2"
                               " AND state >= 1 AND state < ?1 AND (peer_account = ?3 OR (peer_account IS NULL"
                               " AND peer_phone = (SELECT phone FROM contacts WHERE account_id = ?3)))"};
    sqlite3_stmt *st = db_q(d, &advance);
    if (!st)
        goto fail;
    sqlite3_bind_int(st, 1, state);
    sqlite3_bind_blob(st, 2, id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, peer_account, DB_ID_LEN, SQLITE_TRANSIENT);
    if (run(d, st, "recording a receipt") != DB_OK)
        goto fail;
    *changed = sqlite3_changes(d->sql) > 0;
    if (*changed && outbox_delete(d, id) != DB_OK) /* a receipt is proof the server has it */
        goto fail;
    return db_commit(d);
fail:
    *changed = false;
    db_rollback(d);
    return DB_ERROR;
}

int db_outgoing_read_up_to(db *d, const uint8_t peer_account[DB_ID_LEN], uint64_t up_to_ms,
                           uint8_t (**ids)[DB_ID_LEN], size_t *n)
{
    *ids = NULL;
    *n = 0;
    size_t cap = 0;
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    static db_query unread_ids = {"SELECT id FROM messages WHERE direction = 1 AND peer_account = ?"
                                  " AND server_time_ms <= ? AND state IN (2, 3) ORDER BY seq"};
    sqlite3_stmt *st = db_q(d, &unread_ids);
    if (!st)
        goto fail;
    sqlite3_bind_blob(st, 1, peer_account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)(up_to_ms > INT64_MAX ? INT64_MAX : up_to_ms));
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t ncap = cap ? 2 * cap : 64;
            uint8_t(*grown)[DB_ID_LEN] = realloc(*ids, ncap * DB_ID_LEN);
            if (!grown) {
                done(st);
                snprintf(d->err, sizeof d->err, "out of memory");
                goto fail;
            }
            *ids = grown;
            cap = ncap;
        }
        if (copy_blob((*ids)[*n], DB_ID_LEN, st, 0))
            (*n)++;
    }
    done(st);
    if (rc != SQLITE_DONE) {
        fail(d, "reading messages");
        goto fail;
    }
    static db_query mark_read = {"UPDATE messages SET state = 4 WHERE direction = 1 AND peer_account = ?"
                                 " AND server_time_ms <= ? AND state IN (2, 3)"};
    if (!(st = db_q(d, &mark_read)))
        goto fail;
    sqlite3_bind_blob(st, 1, peer_account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)(up_to_ms > INT64_MAX ? INT64_MAX : up_to_ms));
    if (run(d, st, "recording a receipt") != DB_OK)
        goto fail;
    if (db_commit(d) == DB_OK)
        return DB_OK;
fail:
    db_rollback(d);
    free(*ids);
    *ids = NULL;
    *n = 0;
    return DB_ERROR;
}

int db_incoming_add(db *d, const db_message *m, bool *inserted)
{
    *inserted = false;
    if (m->outgoing || !m->has_peer_account) {
        snprintf(d->err, sizeof d->err, "an incoming message needs its sender's account");
        return DB_ERROR;
    }
    return message_insert(d, m, PARLEY_STATE_RECEIVED, inserted);
}

int db_mark_read(db *d, const char *conversation, size_t *count)
{
    *count = 0;
    static db_query mark = {"UPDATE messages SET state = 4, read_receipt_sent = 0"
                            " WHERE direction = 0 AND conversation = ? AND state = 5"};
    sqlite3_stmt *st = db_q(d, &mark);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_text(st, 1, conversation, -1, SQLITE_TRANSIENT);
    int rc = run(d, st, "marking messages read");
    if (rc == DB_OK)
        *count = (size_t)sqlite3_changes(d->sql);
    return rc;
}

int db_receipts_pending(db *d, uint8_t account[DB_ID_LEN], uint8_t (*ids)[DB_ID_LEN], size_t max, size_t *n)
{
    *n = 0;
    static db_query next_account = {"SELECT peer_account FROM messages WHERE direction = 0 AND state = 4"
                                    " AND read_receipt_sent = 0 AND peer_account IS NOT NULL ORDER BY seq LIMIT 1"};
    sqlite3_stmt *st = db_q(d, &next_account);
    if (!st)
        return DB_ERROR;
    int rc = sqlite3_step(st);
    bool found = rc == SQLITE_ROW && copy_blob(account, DB_ID_LEN, st, 0);
    done(st);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? DB_OK : fail(d, "reading receipts");
    if (!found)
        return DB_OK;
    static db_query pending_ids = {"SELECT id FROM messages WHERE direction = 0 AND state = 4 AND read_receipt_sent = 0"
                                   " AND peer_account = ? ORDER BY seq LIMIT ?"};
    if (!(st = db_q(d, &pending_ids)))
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
    return id_rows(d, st, ids, max, n, "reading receipts");
}

int db_receipts_pending_count(db *d, size_t *n)
{
    static db_query count = {"SELECT (SELECT count(*) FROM messages WHERE direction = 0 AND state = 4"
                             " AND read_receipt_sent = 0 AND peer_account IS NOT NULL)"
                             " + (SELECT count(*) FROM retry_receipts WHERE sent = 0)"};
    return count_query(d, db_q(d, &count), n);
}

int db_receipts_sent(db *d, const uint8_t account[DB_ID_LEN], const uint8_t (*ids)[DB_ID_LEN], size_t n)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    for (size_t i = 0; i < n; i++) {
        static db_query sent = {"UPDATE messages SET read_receipt_sent = 1"
                                " WHERE direction = 0 AND peer_account = ? AND id = ? AND state = 4"};
        sqlite3_stmt *st = db_q(d, &sent);
        if (!st)
            goto fail;
        sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 2, ids[i], DB_ID_LEN, SQLITE_TRANSIENT);
        if (run(d, st, "recording sent receipts") != DB_OK)
            goto fail;
    }
    return db_commit(d);
fail:
    db_rollback(d);
    return DB_ERROR;
}

int db_message_state(db *d, const uint8_t id[DB_ID_LEN], int *state)
{
    static db_query get = {"SELECT state FROM messages WHERE direction = 1 AND id = ?"};
    sqlite3_stmt *st = db_q(d, &get);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *state = sqlite3_column_int(st, 0);
    done(st);
    if (rc == SQLITE_ROW)
        return DB_OK;
    return rc == SQLITE_DONE ? DB_NOT_FOUND : fail(d, "reading a message");
}

/* Walks the rows of a message query (the columns of db_history's query). */
static int each_message(db *d, sqlite3_stmt *st, db_message_fn fn, void *ctx, const char *what)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        db_message m;
        memset(&m, 0, sizeof m);
        copy_blob(m.id, DB_ID_LEN, st, 0);
        m.outgoing = sqlite3_column_int(st, 1) == DIR_OUT;
        copy_text(m.peer_phone, sizeof m.peer_phone, st, 2);
        m.has_peer_account = copy_blob(m.peer_account, DB_ID_LEN, st, 3);
        m.from_device = (uint32_t)sqlite3_column_int64(st, 4);
        m.text = (const char *)sqlite3_column_text(st, 5);
        m.text_len = m.text ? (size_t)sqlite3_column_bytes(st, 5) : 0;
        m.problem = (const char *)sqlite3_column_text(st, 6);
        m.sent_ms = (uint64_t)sqlite3_column_int64(st, 7);
        m.server_time_ms = (uint64_t)sqlite3_column_int64(st, 8);
        m.state = sqlite3_column_int(st, 9);
        m.local_seq = sqlite3_column_int64(st, 10);
        m.kind = sqlite3_column_int(st, 11);
        copy_text(m.conversation, sizeof m.conversation, st, 12);
        if (!fn(ctx, &m)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    done(st);
    return rc == SQLITE_DONE ? DB_OK : fail(d, what);
}

int db_history(db *d, const char *conversation, db_message_fn fn, void *ctx)
{
    static db_query history = {
        "SELECT id, direction, peer_phone, peer_account, from_device, text, problem, sent_ms,"
        " server_time_ms, state, seq, kind, conversation FROM messages WHERE conversation = ? ORDER BY seq"};
    sqlite3_stmt *st = db_q(d, &history);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_text(st, 1, conversation, -1, SQLITE_TRANSIENT);
    return each_message(d, st, fn, ctx, "reading the conversation");
}

int db_unshown(db *d, db_message_fn fn, void *ctx)
{
    static db_query unshown = {
        "SELECT id, direction, peer_phone, peer_account, from_device, text, problem, sent_ms,"
        " server_time_ms, state, seq, kind, conversation FROM messages WHERE direction = 0 AND shown = 0 ORDER BY seq"};
    sqlite3_stmt *st = db_q(d, &unshown);
    return st ? each_message(d, st, fn, ctx, "reading the messages not shown yet") : DB_ERROR;
}

int db_mark_shown(db *d, int64_t up_to_seq)
{
    static db_query mark = {"UPDATE messages SET shown = 1 WHERE direction = 0 AND shown = 0 AND seq <= ?"};
    sqlite3_stmt *st = db_q(d, &mark);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, up_to_seq);
    return run(d, st, "marking messages shown");
}

/* ---- incoming: de-duplication before decrypting, resends, notices --------------------- */

int db_incoming_seen(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN],
                     bool *seen)
{
    *seen = false;
    static db_query lookup = {"SELECT 1 FROM messages WHERE direction = 0 AND peer_account = ?1 AND from_device = ?2"
                              " AND id = ?3 UNION ALL SELECT 1 FROM absorbed WHERE account_id = ?1 AND device_id = ?2"
                              " AND message_id = ?3 LIMIT 1"};
    sqlite3_stmt *st = db_q(d, &lookup);
    if (!st)
        return DB_ERROR;
    bind_key3(st, account, device, id);
    int rc = exists_row(d, st, "checking for a duplicate");
    *seen = rc == DB_OK;
    return rc == DB_ERROR ? DB_ERROR : DB_OK;
}

int db_incoming_absorb(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN])
{
    static db_query absorb = {
        "INSERT OR IGNORE INTO absorbed (account_id, device_id, message_id, created_ms) VALUES (?, ?, ?, ?)"};
    sqlite3_stmt *st = db_q(d, &absorb);
    if (!st)
        return DB_ERROR;
    bind_key3(st, account, device, id);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
    return run(d, st, "recording a resend");
}

int db_incoming_fill(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN],
                     const char *text, size_t text_len, uint64_t sent_ms, int *result)
{
    *result = DB_FILL_ABSENT;
    static db_query fill = {"UPDATE messages SET text = ?4, problem = NULL, sent_ms = ?5, shown = 0 WHERE direction = 0"
                            " AND kind = 0 AND peer_account = ?1 AND from_device = ?2 AND id = ?3 AND text IS NULL"};
    sqlite3_stmt *st = db_q(d, &fill);
    if (!st)
        return DB_ERROR;
    bind_key3(st, account, device, id);
    sqlite3_bind_text(st, 4, text, (int)text_len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)sent_ms);
    if (run(d, st, "filling in a message") != DB_OK)
        return DB_ERROR;
    if (sqlite3_changes(d->sql) > 0) {
        *result = DB_FILL_DONE;
        return DB_OK;
    }
    static db_query exists = {"SELECT 1 FROM messages WHERE direction = 0 AND peer_account = ? AND from_device = ?"
                              " AND id = ?"};
    if (!(st = db_q(d, &exists)))
        return DB_ERROR;
    bind_key3(st, account, device, id);
    int rc = exists_row(d, st, "reading a message");
    if (rc == DB_OK)
        *result = DB_FILL_HAD_TEXT;
    return rc == DB_ERROR ? DB_ERROR : DB_OK;
}

int db_notice_add(db *d, int kind, const char *phone, const uint8_t account[DB_ID_LEN], uint32_t device,
                  const char *text)
{
    /* a notice: state read with its receipt "sent", so no receipt ever names it */
    static db_query add = {"INSERT INTO messages (id, direction, kind, peer_phone, conversation, peer_account,"
                           " from_device, text, state, read_receipt_sent, server_time_ms, created_ms, shown)"
                           " VALUES (?1, 0, ?2, ?3, ?3, ?4, ?5, ?6, 4, 1, ?7, ?7, 0)"};
    sqlite3_stmt *st = db_q(d, &add);
    if (!st)
        return DB_ERROR;
    uint8_t id[DB_ID_LEN];
    randombytes_buf(id, sizeof id);
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, kind);
    bind_text_or_null(st, 3, phone);
    sqlite3_bind_blob(st, 4, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, device);
    sqlite3_bind_text(st, 6, text, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)clock_wall_ms());
    return run(d, st, "recording a notice");
}
