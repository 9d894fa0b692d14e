/* db.c - the profile database on SQLite: WAL, synchronous=FULL (a commit is on disk
 * when it returns, so whatever we ack to the server survives a crash), prepared
 * statements cached for the handle's life, a schema version table for migrations. */
#include "db.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "clock.h"

enum { DIR_IN = 0, DIR_OUT = 1 };

static const char schema_v1[] =
    "CREATE TABLE identity ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  private_key BLOB NOT NULL CHECK (length(private_key) = 32),"
    "  registration_id INTEGER NOT NULL,"
    "  server_url TEXT,"
    "  pending_phone TEXT,"
    "  phone TEXT,"
    "  account_id BLOB CHECK (account_id IS NULL OR length(account_id) = 16),"
    "  device_id INTEGER);"
    "CREATE TABLE contacts ("
    "  account_id BLOB PRIMARY KEY CHECK (length(account_id) = 16),"
    "  phone TEXT UNIQUE,"
    "  device_ids BLOB NOT NULL,"            /* u32 big-endian each */
    "  updated_ms INTEGER NOT NULL);"
    "CREATE TABLE messages ("
    "  seq INTEGER PRIMARY KEY,"               /* local order: when this device learned of it */
    "  id BLOB NOT NULL CHECK (length(id) = 16),"
    "  direction INTEGER NOT NULL CHECK (direction IN (0, 1)),"  /* 0 in, 1 out */
    "  peer_phone TEXT,"
    "  peer_account BLOB,"
    "  from_device INTEGER NOT NULL DEFAULT 0,"
    "  text TEXT,"
    "  problem TEXT,"                          /* incoming: why the body is unreadable; outgoing: why it failed */
    "  sent_ms INTEGER NOT NULL DEFAULT 0,"
    "  server_time_ms INTEGER NOT NULL DEFAULT 0,"
    "  state INTEGER NOT NULL,"                /* a parley_state */
    "  read_receipt_sent INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL);"
    /* outgoing ids are ours and unique; incoming ones are unique per sender device:
     * this index is the incoming de-duplication key */
    "CREATE UNIQUE INDEX messages_out_id ON messages (id) WHERE direction = 1;"
    "CREATE UNIQUE INDEX messages_in_key ON messages (peer_account, from_device, id) WHERE direction = 0;"
    "CREATE INDEX messages_conversation ON messages (peer_phone, seq);"
    "CREATE INDEX messages_out_account ON messages (peer_account, server_time_ms) WHERE direction = 1;"
    "CREATE INDEX messages_receipts ON messages (peer_account, seq)"
    "  WHERE direction = 0 AND state = 4 AND read_receipt_sent = 0;"
    "CREATE TABLE outbox ("
    "  seq INTEGER PRIMARY KEY,"               /* queue order */
    "  message_id BLOB NOT NULL UNIQUE,"
    "  phone TEXT NOT NULL,"
    "  body BLOB NOT NULL,"                   /* the packed Content, resent byte for byte */
    "  created_ms INTEGER NOT NULL);";

/* v3: end-to-end encryption. Our prekeys (private parts, serialized ps_key_records),
 * a session record per peer device, the identity key seen per peer device, RETRY
 * receipts to send, the resends we made, ids of resends merged into earlier rows; the
 * outbox keeps the sealed Send (so a resend reuses the same ciphertexts) and its
 * DEVICE_MISMATCH count; a messages row may be a notice (kind). */
/* v4: the identity key last seen per phone number and device: a number that moves to
 * another account (a reverse lookup, a device list) is compared with the key the number
 * had, not only with the keys of the new account */
static const char schema_v4[] =
    "CREATE TABLE phone_identities ("
    "  phone TEXT NOT NULL,"
    "  device_id INTEGER NOT NULL,"
    "  account_id BLOB NOT NULL CHECK (length(account_id) = 16),"
    "  identity_key BLOB NOT NULL CHECK (length(identity_key) = 32),"
    "  updated_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (phone, device_id)) WITHOUT ROWID;"
    "INSERT OR IGNORE INTO phone_identities (phone, device_id, account_id, identity_key, updated_ms)"
    "  SELECT c.phone, p.device_id, p.account_id, p.identity_key, p.updated_ms"
    "  FROM peer_identities p JOIN contacts c ON c.account_id = p.account_id WHERE c.phone IS NOT NULL;";

static const char schema_v3[] =
    "ALTER TABLE identity ADD COLUMN next_prekey_id INTEGER NOT NULL DEFAULT 1;"
    "ALTER TABLE contacts ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;" /* 0 message, 1-2 identity changed */
    "ALTER TABLE outbox ADD COLUMN sealed BLOB;"                       /* the packed Send, once encrypted */
    "ALTER TABLE outbox ADD COLUMN mismatches INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE outbox ADD COLUMN resend_account BLOB;"               /* a resend: to this device only */
    "ALTER TABLE outbox ADD COLUMN resend_device INTEGER;"
    "CREATE TABLE signed_prekeys ("
    "  id INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 16777215),"
    "  record BLOB NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  replaced_ms INTEGER);"                  /* NULL: the current one */
    "CREATE TABLE prekeys ("
    "  id INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 16777215),"
    "  record BLOB NOT NULL,"
    "  uploaded INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL);"
    "CREATE TABLE sessions ("
    "  account_id BLOB NOT NULL CHECK (length(account_id) = 16),"
    "  device_id INTEGER NOT NULL,"
    "  record BLOB NOT NULL,"
    "  updated_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (account_id, device_id)) WITHOUT ROWID;"
    "CREATE TABLE peer_identities ("
    "  account_id BLOB NOT NULL CHECK (length(account_id) = 16),"
    "  device_id INTEGER NOT NULL,"
    "  identity_key BLOB NOT NULL CHECK (length(identity_key) = 32),"
    "  first_seen_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (account_id, device_id)) WITHOUT ROWID;"
    "CREATE TABLE retry_receipts ("
    "  account_id BLOB NOT NULL CHECK (length(account_id) = 16),"
    "  device_id INTEGER NOT NULL,"
    "  message_id BLOB NOT NULL CHECK (length(message_id) = 16),"
    "  sent INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (account_id, device_id, message_id)) WITHOUT ROWID;"
    "CREATE INDEX retry_receipts_unsent ON retry_receipts (created_ms) WHERE sent = 0;"
    "CREATE TABLE resends ("
    "  new_id BLOB PRIMARY KEY CHECK (length(new_id) = 16),"
    "  original_id BLOB NOT NULL,"
    "  account_id BLOB NOT NULL,"
    "  device_id INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX resends_original ON resends (original_id, account_id, device_id);"
    "CREATE TABLE recipients ("                /* the devices a message of ours was sealed for */
    "  message_id BLOB NOT NULL,"
    "  account_id BLOB NOT NULL,"
    "  device_id INTEGER NOT NULL,"
    "  identity_key BLOB NOT NULL CHECK (length(identity_key) = 32)," /* as its session knew it */
    "  PRIMARY KEY (message_id, account_id, device_id)) WITHOUT ROWID;"
    "CREATE TABLE absorbed ("
    "  account_id BLOB NOT NULL,"
    "  device_id INTEGER NOT NULL,"
    "  message_id BLOB NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (account_id, device_id, message_id)) WITHOUT ROWID;";

/* Cached statements, one per query. */
enum {
    Q_IDENTITY_GET,
    Q_IDENTITY_CREATE,
    Q_IDENTITY_KEY,
    Q_IDENTITY_PENDING,
    Q_IDENTITY_REGISTERED,
    Q_CONTACT_CLEAR_PHONE,
    Q_CONTACT_PUT,
    Q_CONTACT_BY_PHONE,
    Q_CONTACT_BY_ACCOUNT,
    Q_MESSAGE_ADD,
    Q_OUTBOX_ADD,
    Q_OUTBOX_LOAD,
    Q_OUTBOX_COUNT,
    Q_OUTBOX_DELETE,
    Q_OUT_SENT,
    Q_OUT_SENT_LATE,
    Q_OUT_FAILED,
    Q_OUT_ADVANCE,
    Q_OUT_READ_UP_TO_IDS,
    Q_OUT_READ_UP_TO,
    Q_MARK_READ,
    Q_RECEIPTS_ACCOUNT,
    Q_RECEIPTS_IDS,
    Q_RECEIPTS_COUNT,
    Q_RECEIPT_SENT,
    Q_MESSAGE_STATE,
    Q_HISTORY,
    Q_UNSHOWN,
    Q_MARK_SHOWN,
    Q_CONTACT_VERIFIED,
    Q_CONTACT_SET_VERIFIED,
    Q_OUTBOX_SEALED,
    Q_OUTBOX_SEAL,
    Q_OUTBOX_UNSEAL,
    Q_INCOMING_SEEN,
    Q_INCOMING_EXISTS,
    Q_ABSORB,
    Q_FILL,
    Q_NOTICE_ADD,
    Q_RETRY_ADD,
    Q_RETRY_TARGET,
    Q_RETRY_IDS,
    Q_RETRY_SENT,
    Q_RESEND_DIRECT,
    Q_RESEND_MAPPED,
    Q_RESEND_COUNT,
    Q_RESEND_ADD,
    Q_OUTBOX_ADD_RESEND,
    Q_SPK_REPLACE,
    Q_SPK_ADD,
    Q_SPK_CURRENT,
    Q_SPK_GET,
    Q_SPK_PRUNE,
    Q_PK_NEXT,
    Q_PK_SET_NEXT,
    Q_PK_EXISTS,
    Q_PK_ADD,
    Q_PK_GET,
    Q_PK_DELETE,
    Q_PK_COUNT,
    Q_PK_NOT_UPLOADED,
    Q_PK_UPLOADED,
    Q_SESSION_GET,
    Q_SESSION_PUT,
    Q_SESSION_DELETE,
    Q_PEER_ID_GET,
    Q_PEER_ID_PUT,
    Q_CONTACT_CLEAR_VERIFIED,
    Q_RECIPIENT_ADD,
    Q_RESEND_IDENTITY,
    Q_PHONE_ID_GET,
    Q_PHONE_ID_PUT,
    Q_RECIPIENT_IDENTITY,
    Q_COUNT
};

static const char *const query_sql[Q_COUNT] = {
    [Q_IDENTITY_GET] = "SELECT registration_id, server_url, pending_phone, phone, account_id, device_id"
                       " FROM identity WHERE id = 1",
    [Q_IDENTITY_CREATE] = "INSERT INTO identity (id, private_key, registration_id) VALUES (1, ?, ?)",
    [Q_IDENTITY_KEY] = "SELECT private_key FROM identity WHERE id = 1",
    [Q_IDENTITY_PENDING] = "UPDATE identity SET server_url = ?, pending_phone = ? WHERE id = 1",
    [Q_IDENTITY_REGISTERED] = "UPDATE identity SET phone = ?, account_id = ?, device_id = ?,"
                              " pending_phone = NULL WHERE id = 1",
    [Q_CONTACT_CLEAR_PHONE] = "UPDATE contacts SET phone = NULL WHERE phone = ? AND account_id IS NOT ?",
    [Q_CONTACT_PUT] = "INSERT INTO contacts (account_id, phone, device_ids, updated_ms) VALUES (?, ?, ?, ?)"
                      " ON CONFLICT (account_id) DO UPDATE SET phone = coalesce(excluded.phone, phone),"
                      " device_ids = excluded.device_ids, updated_ms = excluded.updated_ms",
    [Q_CONTACT_BY_PHONE] = "SELECT account_id, phone, device_ids FROM contacts WHERE phone = ?",
    [Q_CONTACT_BY_ACCOUNT] = "SELECT account_id, phone, device_ids FROM contacts WHERE account_id = ?",
    [Q_MESSAGE_ADD] = "INSERT OR IGNORE INTO messages (id, direction, peer_phone, peer_account, from_device,"
                      " text, problem, sent_ms, server_time_ms, state, created_ms, shown)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?2)", /* incoming: not shown yet */
    [Q_OUTBOX_ADD] = "INSERT INTO outbox (message_id, phone, body, created_ms) VALUES (?, ?, ?, ?)",
    [Q_OUTBOX_LOAD] = "SELECT message_id, phone, body, sealed, mismatches, resend_account, resend_device"
                      " FROM outbox ORDER BY seq LIMIT ?",
    [Q_OUTBOX_COUNT] = "SELECT count(*) FROM outbox",
    [Q_OUTBOX_DELETE] = "DELETE FROM outbox WHERE message_id = ?",
    [Q_OUT_SENT] = "UPDATE messages SET state = 2, server_time_ms = ?, peer_account = ?"
                   " WHERE direction = 1 AND id = ? AND state = 1",
    /* the ack of a message a receipt already moved on: record the time all the same */
    [Q_OUT_SENT_LATE] = "UPDATE messages SET server_time_ms = ?, peer_account = ?"
                        " WHERE direction = 1 AND id = ? AND state > 2 AND server_time_ms = 0",
    [Q_OUT_FAILED] = "UPDATE messages SET state = 0, problem = ? WHERE direction = 1 AND id = ? AND state = 1",
    /* forward only, never from failed (0). A pending message (1) may move too: the
     * server had it (we lost its ack), and it has no account yet, so the receipt's
     * sender must be the contact its number belongs to */
    [Q_OUT_ADVANCE] = "UPDATE messages SET state = ?1 WHERE direction = 1 AND id = ?2"
                      " AND state >= 1 AND state < ?1 AND (peer_account = ?3 OR (peer_account IS NULL"
                      " AND peer_phone = (SELECT phone FROM contacts WHERE account_id = ?3)))",
    [Q_OUT_READ_UP_TO_IDS] = "SELECT id FROM messages WHERE direction = 1 AND peer_account = ?"
                             " AND server_time_ms <= ? AND state IN (2, 3) ORDER BY seq",
    [Q_OUT_READ_UP_TO] = "UPDATE messages SET state = 4 WHERE direction = 1 AND peer_account = ?"
                         " AND server_time_ms <= ? AND state IN (2, 3)",
    [Q_MARK_READ] = "UPDATE messages SET state = 4, read_receipt_sent = 0"
                    " WHERE direction = 0 AND peer_phone = ? AND state = 5",
    [Q_RECEIPTS_ACCOUNT] = "SELECT peer_account FROM messages WHERE direction = 0 AND state = 4"
                           " AND read_receipt_sent = 0 AND peer_account IS NOT NULL ORDER BY seq LIMIT 1",
    [Q_RECEIPTS_IDS] = "SELECT id FROM messages WHERE direction = 0 AND state = 4 AND read_receipt_sent = 0"
                       " AND peer_account = ? ORDER BY seq LIMIT ?",
    [Q_RECEIPTS_COUNT] = "SELECT (SELECT count(*) FROM messages WHERE direction = 0 AND state = 4"
                         " AND read_receipt_sent = 0 AND peer_account IS NOT NULL)"
                         " + (SELECT count(*) FROM retry_receipts WHERE sent = 0)",
    [Q_RECEIPT_SENT] = "UPDATE messages SET read_receipt_sent = 1"
                       " WHERE direction = 0 AND peer_account = ? AND id = ? AND state = 4",
    [Q_MESSAGE_STATE] = "SELECT state FROM messages WHERE direction = 1 AND id = ?",
    [Q_HISTORY] = "SELECT id, direction, peer_phone, peer_account, from_device, text, problem, sent_ms,"
                  " server_time_ms, state, seq, kind FROM messages WHERE peer_phone = ? ORDER BY seq",
    [Q_UNSHOWN] = "SELECT id, direction, peer_phone, peer_account, from_device, text, problem, sent_ms,"
                  " server_time_ms, state, seq, kind FROM messages WHERE direction = 0 AND shown = 0 ORDER BY seq",
    [Q_MARK_SHOWN] = "UPDATE messages SET shown = 1 WHERE direction = 0 AND shown = 0 AND seq <= ?",
    [Q_CONTACT_VERIFIED] = "SELECT verified FROM contacts WHERE account_id = ?",
    [Q_CONTACT_SET_VERIFIED] = "UPDATE contacts SET verified = ? WHERE account_id = ?",
    [Q_CONTACT_CLEAR_VERIFIED] = "UPDATE contacts SET verified = 0 WHERE account_id = ? AND verified != 0",
    [Q_OUTBOX_SEALED] = "SELECT sealed FROM outbox WHERE message_id = ? AND sealed IS NOT NULL",
    [Q_OUTBOX_SEAL] = "UPDATE outbox SET sealed = ? WHERE message_id = ?",
    [Q_OUTBOX_UNSEAL] = "UPDATE outbox SET sealed = NULL, mismatches = mismatches + 1 WHERE message_id = ?"
                        " RETURNING mismatches",
    [Q_INCOMING_SEEN] = "SELECT 1 FROM messages WHERE direction = 0 AND peer_account = ?1 AND from_device = ?2"
                        " AND id = ?3 UNION ALL SELECT 1 FROM absorbed WHERE account_id = ?1 AND device_id = ?2"
                        " AND message_id = ?3 LIMIT 1",
    [Q_INCOMING_EXISTS] = "SELECT 1 FROM messages WHERE direction = 0 AND peer_account = ? AND from_device = ?"
                          " AND id = ?",
    [Q_ABSORB] = "INSERT OR IGNORE INTO absorbed (account_id, device_id, message_id, created_ms) VALUES (?, ?, ?, ?)",
    [Q_FILL] = "UPDATE messages SET text = ?4, problem = NULL, sent_ms = ?5, shown = 0 WHERE direction = 0"
               " AND kind = 0 AND peer_account = ?1 AND from_device = ?2 AND id = ?3 AND text IS NULL",
    /* a notice: state read with its receipt "sent", so no receipt ever names it */
    [Q_NOTICE_ADD] = "INSERT INTO messages (id, direction, kind, peer_phone, peer_account, from_device, text,"
                     " state, read_receipt_sent, server_time_ms, created_ms, shown)"
                     " VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, 4, 1, ?7, ?7, 0)",
    [Q_RETRY_ADD] = "INSERT OR IGNORE INTO retry_receipts (account_id, device_id, message_id, created_ms)"
                    " VALUES (?, ?, ?, ?)",
    [Q_RETRY_TARGET] = "SELECT account_id, device_id FROM retry_receipts WHERE sent = 0 ORDER BY created_ms LIMIT 1",
    [Q_RETRY_IDS] = "SELECT message_id FROM retry_receipts WHERE sent = 0 AND account_id = ? AND device_id = ?"
                    " ORDER BY created_ms LIMIT ?",
    [Q_RETRY_SENT] = "UPDATE retry_receipts SET sent = 1 WHERE account_id = ? AND device_id = ? AND message_id = ?",
    /* a message of ours sealed for that very device (not merely for its account: a device
     * added since must not obtain older messages by asking) */
    [Q_RESEND_DIRECT] = "SELECT id, peer_phone, text, sent_ms FROM messages WHERE direction = 1 AND kind = 0"
                        " AND id = ?1 AND text IS NOT NULL AND EXISTS (SELECT 1 FROM recipients"
                        " WHERE message_id = ?1 AND account_id = ?2 AND device_id = ?3)",
    [Q_RECIPIENT_ADD] = "INSERT OR REPLACE INTO recipients (message_id, account_id, device_id, identity_key)"
                        " VALUES (?, ?, ?, ?)",
    [Q_RESEND_IDENTITY] = "SELECT r.identity_key FROM resends s JOIN recipients r ON r.message_id = s.original_id"
                          " AND r.account_id = s.account_id AND r.device_id = s.device_id WHERE s.new_id = ?",
    [Q_RESEND_MAPPED] = "SELECT original_id FROM resends WHERE new_id = ? AND account_id = ? AND device_id = ?",
    [Q_RESEND_COUNT] = "SELECT count(*) FROM resends WHERE original_id = ? AND account_id = ? AND device_id = ?",
    [Q_RESEND_ADD] = "INSERT INTO resends (new_id, original_id, account_id, device_id, created_ms) VALUES (?, ?, ?, ?, ?)",
    [Q_OUTBOX_ADD_RESEND] = "INSERT INTO outbox (message_id, phone, body, created_ms, resend_account, resend_device)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
    [Q_SPK_REPLACE] = "UPDATE signed_prekeys SET replaced_ms = ? WHERE replaced_ms IS NULL",
    [Q_SPK_ADD] = "INSERT OR REPLACE INTO signed_prekeys (id, record, created_ms, replaced_ms) VALUES (?, ?, ?, NULL)",
    [Q_SPK_CURRENT] = "SELECT id, record, created_ms FROM signed_prekeys WHERE replaced_ms IS NULL"
                      " ORDER BY created_ms DESC LIMIT 1",
    [Q_SPK_GET] = "SELECT record FROM signed_prekeys WHERE id = ?",
    [Q_SPK_PRUNE] = "DELETE FROM signed_prekeys WHERE replaced_ms IS NOT NULL AND replaced_ms < ?",
    [Q_PK_NEXT] = "SELECT next_prekey_id FROM identity WHERE id = 1",
    [Q_PK_SET_NEXT] = "UPDATE identity SET next_prekey_id = ? WHERE id = 1",
    [Q_PK_EXISTS] = "SELECT 1 FROM prekeys WHERE id = ?",
    [Q_PK_ADD] = "INSERT INTO prekeys (id, record, created_ms) VALUES (?, ?, ?)",
    [Q_PK_GET] = "SELECT record FROM prekeys WHERE id = ?",
    [Q_PK_DELETE] = "DELETE FROM prekeys WHERE id = ?",
    [Q_PK_COUNT] = "SELECT count(*) FROM prekeys",
    [Q_PK_NOT_UPLOADED] = "SELECT id, record FROM prekeys WHERE uploaded = 0 ORDER BY created_ms, id LIMIT ?",
    [Q_PK_UPLOADED] = "UPDATE prekeys SET uploaded = 1 WHERE id = ?",
    [Q_SESSION_GET] = "SELECT record FROM sessions WHERE account_id = ? AND device_id = ?",
    [Q_SESSION_PUT] = "INSERT INTO sessions (account_id, device_id, record, updated_ms) VALUES (?, ?, ?, ?)"
                      " ON CONFLICT (account_id, device_id) DO UPDATE SET record = excluded.record,"
                      " updated_ms = excluded.updated_ms",
    [Q_SESSION_DELETE] = "DELETE FROM sessions WHERE account_id = ? AND device_id = ?",
    [Q_PEER_ID_GET] = "SELECT identity_key FROM peer_identities WHERE account_id = ? AND device_id = ?",
    [Q_PEER_ID_PUT] = "INSERT INTO peer_identities (account_id, device_id, identity_key, first_seen_ms, updated_ms)"
                      " VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (account_id, device_id) DO UPDATE SET"
                      " identity_key = excluded.identity_key, updated_ms = excluded.updated_ms",
    [Q_PHONE_ID_GET] = "SELECT account_id, identity_key FROM phone_identities WHERE phone = ? AND device_id = ?",
    [Q_PHONE_ID_PUT] = "INSERT INTO phone_identities (phone, device_id, account_id, identity_key, updated_ms)"
                       " VALUES (?, ?, ?, ?, ?) ON CONFLICT (phone, device_id) DO UPDATE SET"
                       " account_id = excluded.account_id, identity_key = excluded.identity_key,"
                       " updated_ms = excluded.updated_ms",
    [Q_RECIPIENT_IDENTITY] = "SELECT identity_key FROM recipients WHERE message_id = ? AND account_id = ?"
                             " AND device_id = ?",
};

struct db {
    sqlite3 *sql;
    sqlite3_stmt *stmts[Q_COUNT];
    int depth;          /* db_begin nesting */
    bool doomed;        /* an inner part failed: the outermost commit rolls back */
    char err[256];
};

const char *db_errmsg(const db *d)
{
    return d->err;
}

static int fail(db *d, const char *what)
{
    snprintf(d->err, sizeof d->err, "%s: %s", what, sqlite3_errmsg(d->sql));
    return DB_ERROR;
}

/* The cached statement for q, reset and ready for binding; NULL on error. */
static sqlite3_stmt *q(db *d, int which)
{
    sqlite3_stmt **st = &d->stmts[which];
    if (!*st) {
        if (sqlite3_prepare_v3(d->sql, query_sql[which], -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK) {
            fail(d, "preparing a query");
            *st = NULL;
            return NULL;
        }
    }
    return *st;
}

/* Resets a statement after use so it holds no locks or row data. */
static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Runs a statement that returns no rows. */
static int run(db *d, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    done(st);
    return rc == SQLITE_DONE ? DB_OK : fail(d, what);
}

static int exec(db *d, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(d->sql, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(d->err, sizeof d->err, "%s", msg ? msg : sqlite3_errmsg(d->sql));
        sqlite3_free(msg);
        return DB_ERROR;
    }
    return DB_OK;
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s && *s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static void copy_text(char *out, size_t cap, sqlite3_stmt *st, int col)
{
    const unsigned char *s = sqlite3_column_text(st, col);
    snprintf(out, cap, "%s", s ? (const char *)s : "");
}

static bool copy_blob(uint8_t *out, size_t len, sqlite3_stmt *st, int col)
{
    if (sqlite3_column_type(st, col) != SQLITE_BLOB || (size_t)sqlite3_column_bytes(st, col) != len)
        return false;
    memcpy(out, sqlite3_column_blob(st, col), len);
    return true;
}

void db_blob_free(db_blob *b)
{
    if (b->data) {
        sodium_memzero(b->data, b->len);
        free(b->data);
    }
    b->data = NULL;
    b->len = 0;
}

/* A malloc'd copy of a blob column (NULL column: an empty blob). DB_ERROR: out of memory. */
static int dup_blob(db_blob *out, sqlite3_stmt *st, int col)
{
    size_t len = (size_t)sqlite3_column_bytes(st, col);
    out->data = malloc(len ? len : 1);
    out->len = 0;
    if (!out->data)
        return DB_ERROR;
    if (len)
        memcpy(out->data, sqlite3_column_blob(st, col), len);
    out->len = len;
    return DB_OK;
}

/* Steps a statement expected to give at most one row and copies blob column col of it:
 * DB_OK, DB_NOT_FOUND when there is no row, DB_ERROR. */
static int one_blob(db *d, sqlite3_stmt *st, int col, db_blob *out, const char *what)
{
    out->data = NULL;
    out->len = 0;
    int rc = sqlite3_step(st);
    int ret = rc == SQLITE_ROW ? DB_OK : rc == SQLITE_DONE ? DB_NOT_FOUND : fail(d, what);
    if (rc == SQLITE_ROW && dup_blob(out, st, col) != DB_OK) {
        snprintf(d->err, sizeof d->err, "out of memory");
        ret = DB_ERROR;
    }
    done(st);
    return ret;
}

/* Steps a statement that gives at most one row: DB_OK with a row, DB_NOT_FOUND without. */
static int exists_row(db *d, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    done(st);
    return rc == SQLITE_ROW ? DB_OK : rc == SQLITE_DONE ? DB_NOT_FOUND : fail(d, what);
}

/* ---- opening --------------------------------------------------------------------- */

/* mkdir -p, new components 0700. */
static int make_dirs(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        snprintf(err, errlen, "the profile path is too long");
        return -1;
    }
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(path, 0700) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
                return -1;
            }
            *p = c;
            if (!c)
                break;
        }
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "%s is not a directory", path);
        return -1;
    }
    return 0;
}

static int schema_version(db *d, int *version)
{
    sqlite3_stmt *st;
    *version = 0;
    if (sqlite3_prepare_v2(d->sql, "SELECT version FROM schema_version", -1, &st, NULL) != SQLITE_OK)
        return DB_NOT_FOUND; /* no table yet: a new database */
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? DB_OK : fail(d, "reading the schema version");
}

static int migrate(db *d)
{
    if (exec(d, "BEGIN IMMEDIATE") != DB_OK)
        return DB_ERROR;
    int version;
    int rc = schema_version(d, &version);
    if (rc == DB_ERROR)
        goto out;
    if (rc == DB_NOT_FOUND) {
        if ((rc = exec(d, "CREATE TABLE schema_version (version INTEGER NOT NULL);"
                          "INSERT INTO schema_version VALUES (0)")) != DB_OK)
            goto out;
        version = 0;
    }
    if (version > DB_SCHEMA_VERSION) {
        snprintf(d->err, sizeof d->err,
                 "the profile database is from a newer parley (schema %d, this one knows %d)", version,
                 DB_SCHEMA_VERSION);
        rc = DB_ERROR;
        goto out;
    }
    if (version < 1 && ((rc = exec(d, schema_v1)) != DB_OK ||
                        (rc = exec(d, "UPDATE schema_version SET version = 1")) != DB_OK))
        goto out;
    /* v2: incoming messages remember whether they were shown (display survives a crash
     * between the commit and the print); earlier rows count as shown */
    if (version < 2 && ((rc = exec(d, "ALTER TABLE messages ADD COLUMN shown INTEGER NOT NULL DEFAULT 1")) != DB_OK ||
                        (rc = exec(d, "UPDATE schema_version SET version = 2")) != DB_OK))
        goto out;
    if (version < 3 && ((rc = exec(d, schema_v3)) != DB_OK ||
                        (rc = exec(d, "UPDATE schema_version SET version = 3")) != DB_OK))
        goto out;
    if (version < 4 && ((rc = exec(d, schema_v4)) != DB_OK ||
                        (rc = exec(d, "UPDATE schema_version SET version = 4")) != DB_OK))
        goto out;
    /* later versions: if (version < 5) ... */
    return exec(d, "COMMIT");
out:
    exec(d, "ROLLBACK");
    return DB_ERROR;
}

int db_open(db **out, const char *dir, char *err, size_t errlen)
{
    *out = NULL;
    if (make_dirs(dir, err, errlen) != 0)
        return DB_ERROR;
    char path[4200];
    snprintf(path, sizeof path, "%s/parley.db", dir);
    /* create the file ourselves so it is 0600 from the start; SQLite gives the -wal and
     * -shm files the same mode */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return DB_ERROR;
    }
    close(fd);
    db *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return DB_ERROR;
    }
    if (sqlite3_open_v2(path, &d->sql, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", path, d->sql ? sqlite3_errmsg(d->sql) : "out of memory");
        db_close(d);
        return DB_ERROR;
    }
    sqlite3_extended_result_codes(d->sql, 1);
    sqlite3_busy_timeout(d->sql, 10000); /* another parley process on the same profile */
    char *mode = NULL;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(d->sql, "PRAGMA journal_mode = WAL", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            mode = sqlite3_mprintf("%s", sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    bool wal = mode && strcmp(mode, "wal") == 0;
    sqlite3_free(mode);
    if (!wal || exec(d, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
                        "PRAGMA secure_delete = ON;") != DB_OK || migrate(d) != DB_OK) {
        snprintf(err, errlen, "cannot use %s: %s", path, wal ? d->err : "WAL mode is not available");
        db_close(d);
        return DB_ERROR;
    }
    *out = d;
    return DB_OK;
}

void db_close(db *d)
{
    if (!d)
        return;
    for (int i = 0; i < Q_COUNT; i++)
        sqlite3_finalize(d->stmts[i]);
    sqlite3_close(d->sql);
    free(d);
}

int db_begin(db *d)
{
    if (d->depth == 0) {
        if (exec(d, "BEGIN IMMEDIATE") != DB_OK)
            return DB_ERROR;
        d->doomed = false;
    }
    d->depth++;
    return DB_OK;
}

int db_commit(db *d)
{
    if (d->depth == 0)
        return DB_ERROR;
    if (--d->depth > 0)
        return d->doomed ? DB_ERROR : DB_OK;
    if (d->doomed) {
        exec(d, "ROLLBACK");
        return DB_ERROR;
    }
    if (exec(d, "COMMIT") != DB_OK) {
        char why[sizeof d->err];
        memcpy(why, d->err, sizeof why);
        exec(d, "ROLLBACK");
        snprintf(d->err, sizeof d->err, "commit failed: %.200s", why);
        return DB_ERROR;
    }
    return DB_OK;
}

void db_rollback(db *d)
{
    if (d->depth == 0)
        return;
    d->doomed = true;
    if (--d->depth == 0) {
        char why[sizeof d->err];
        memcpy(why, d->err, sizeof why); /* keep the error that caused the rollback */
        exec(d, "ROLLBACK");
        memcpy(d->err, why, sizeof why);
        d->doomed = false;
    }
}

/* ---- identity -------------------------------------------------------------------- */

int db_identity_get(db *d, db_identity *out)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = q(d, Q_IDENTITY_GET);
    if (!st)
        return DB_ERROR;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->exists = true;
        out->registration_id = (uint32_t)sqlite3_column_int64(st, 0);
        copy_text(out->server_url, sizeof out->server_url, st, 1);
        copy_text(out->pending_phone, sizeof out->pending_phone, st, 2);
        copy_text(out->phone, sizeof out->phone, st, 3);
        out->registered = out->phone[0] && copy_blob(out->account, DB_ID_LEN, st, 4);
        out->device = (uint32_t)sqlite3_column_int64(st, 5);
    }
    done(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? DB_OK : fail(d, "reading the identity");
}

int db_identity_create(db *d, const uint8_t priv[DB_KEY_LEN], uint32_t registration_id)
{
    sqlite3_stmt *st = q(d, Q_IDENTITY_CREATE);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, priv, DB_KEY_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, registration_id);
    return run(d, st, "storing the identity key");
}

int db_identity_key(db *d, uint8_t priv[DB_KEY_LEN])
{
    sqlite3_stmt *st = q(d, Q_IDENTITY_KEY);
    if (!st)
        return DB_ERROR;
    int rc = sqlite3_step(st);
    bool ok = rc == SQLITE_ROW && copy_blob(priv, DB_KEY_LEN, st, 0);
    done(st);
    if (!ok) {
        snprintf(d->err, sizeof d->err, "the profile has no usable identity key");
        return DB_ERROR;
    }
    return DB_OK;
}

int db_identity_set_pending(db *d, const char *server_url, const char *phone)
{
    sqlite3_stmt *st = q(d, Q_IDENTITY_PENDING);
    if (!st)
        return DB_ERROR;
    bind_text_or_null(st, 1, server_url);
    bind_text_or_null(st, 2, phone);
    return run(d, st, "storing the pending registration");
}

int db_identity_set_registered(db *d, const char *phone, const uint8_t account[DB_ID_LEN], uint32_t device)
{
    sqlite3_stmt *st = q(d, Q_IDENTITY_REGISTERED);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, device);
    return run(d, st, "storing the registration");
}

/* ---- contacts -------------------------------------------------------------------- */

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
        if (!(st = q(d, Q_CONTACT_CLEAR_PHONE)))
            goto fail;
        sqlite3_bind_text(st, 1, c->phone, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 2, c->account, DB_ID_LEN, SQLITE_TRANSIENT);
        if (run(d, st, "updating a contact") != DB_OK)
            goto fail;
    }
    if (!(st = q(d, Q_CONTACT_PUT)))
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
    sqlite3_stmt *st = q(d, Q_CONTACT_BY_PHONE);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
    return contact_row(d, st, out);
}

int db_contact_by_account(db *d, const uint8_t account[DB_ID_LEN], db_contact *out)
{
    sqlite3_stmt *st = q(d, Q_CONTACT_BY_ACCOUNT);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    return contact_row(d, st, out);
}

int db_contact_forget_phone(db *d, const char *phone)
{
    sqlite3_stmt *st = q(d, Q_CONTACT_CLEAR_PHONE);
    if (!st)
        return DB_ERROR;
    static const uint8_t none[DB_ID_LEN]; /* no account is all zero: clears every holder */
    sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, none, DB_ID_LEN, SQLITE_STATIC);
    return run(d, st, "forgetting a contact");
}

/* ---- messages -------------------------------------------------------------------- */

static int message_insert(db *d, const db_message *m, int state, bool *inserted)
{
    sqlite3_stmt *st = q(d, Q_MESSAGE_ADD);
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
    sqlite3_stmt *st = q(d, Q_OUTBOX_ADD);
    if (!st)
        goto fail;
    sqlite3_bind_blob(st, 1, m->id, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, m->peer_phone, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, body, (int)body_len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
    if (run(d, st, "queueing a message") != DB_OK)
        goto fail;
    return db_commit(d);
fail:
    db_rollback(d);
    return DB_ERROR;
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

static int count_query(db *d, int which, size_t *n)
{
    *n = 0;
    sqlite3_stmt *st = q(d, which);
    if (!st)
        return DB_ERROR;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *n = (size_t)sqlite3_column_int64(st, 0);
    done(st);
    return rc == SQLITE_ROW ? DB_OK : fail(d, "counting");
}

int db_outbox_count(db *d, size_t *n)
{
    return count_query(d, Q_OUTBOX_COUNT, n);
}

static int outbox_delete(db *d, const uint8_t id[DB_ID_LEN])
{
    sqlite3_stmt *st = q(d, Q_OUTBOX_DELETE);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, id, DB_ID_LEN, SQLITE_TRANSIENT);
    return run(d, st, "updating the outbox");
}

int db_outgoing_sent(db *d, const uint8_t id[DB_ID_LEN], const uint8_t account[DB_ID_LEN],
                     uint64_t server_time_ms, bool *changed)
{
    *changed = false;
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    /* pending -> sent; or, if a receipt moved it on already, only the time */
    const int queries[] = {Q_OUT_SENT, Q_OUT_SENT_LATE};
    for (size_t i = 0; i < 2 && !*changed; i++) {
        sqlite3_stmt *st = q(d, queries[i]);
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
    sqlite3_stmt *st = q(d, Q_OUT_FAILED);
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
    sqlite3_stmt *st = q(d, Q_OUT_ADVANCE);
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
    sqlite3_stmt *st = q(d, Q_OUT_READ_UP_TO_IDS);
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
    if (!(st = q(d, Q_OUT_READ_UP_TO)))
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

int db_mark_read(db *d, const char *phone, size_t *count)
{
    *count = 0;
    sqlite3_stmt *st = q(d, Q_MARK_READ);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
    int rc = run(d, st, "marking messages read");
    if (rc == DB_OK)
        *count = (size_t)sqlite3_changes(d->sql);
    return rc;
}

int db_receipts_pending(db *d, uint8_t account[DB_ID_LEN], uint8_t (*ids)[DB_ID_LEN], size_t max, size_t *n)
{
    *n = 0;
    sqlite3_stmt *st = q(d, Q_RECEIPTS_ACCOUNT);
    if (!st)
        return DB_ERROR;
    int rc = sqlite3_step(st);
    bool found = rc == SQLITE_ROW && copy_blob(account, DB_ID_LEN, st, 0);
    done(st);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? DB_OK : fail(d, "reading receipts");
    if (!found)
        return DB_OK;
    if (!(st = q(d, Q_RECEIPTS_IDS)))
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < max)
        if (copy_blob(ids[*n], DB_ID_LEN, st, 0))
            (*n)++;
    done(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        *n = 0;
        return fail(d, "reading receipts");
    }
    return DB_OK;
}

int db_receipts_pending_count(db *d, size_t *n)
{
    return count_query(d, Q_RECEIPTS_COUNT, n);
}

int db_receipts_sent(db *d, const uint8_t account[DB_ID_LEN], const uint8_t (*ids)[DB_ID_LEN], size_t n)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *st = q(d, Q_RECEIPT_SENT);
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
    sqlite3_stmt *st = q(d, Q_MESSAGE_STATE);
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

/* Walks the rows of a message query (the columns of Q_HISTORY). */
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
        if (!fn(ctx, &m)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    done(st);
    return rc == SQLITE_DONE ? DB_OK : fail(d, what);
}

int db_history(db *d, const char *phone, db_message_fn fn, void *ctx)
{
    sqlite3_stmt *st = q(d, Q_HISTORY);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
    return each_message(d, st, fn, ctx, "reading the conversation");
}

int db_unshown(db *d, db_message_fn fn, void *ctx)
{
    sqlite3_stmt *st = q(d, Q_UNSHOWN);
    return st ? each_message(d, st, fn, ctx, "reading the messages not shown yet") : DB_ERROR;
}

int db_mark_shown(db *d, int64_t up_to_seq)
{
    sqlite3_stmt *st = q(d, Q_MARK_SHOWN);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, up_to_seq);
    return run(d, st, "marking messages shown");
}

/* ---- contacts: the verified mark ------------------------------------------------------ */

int db_contact_verified(db *d, const uint8_t account[DB_ID_LEN], bool *verified)
{
    *verified = false;
    sqlite3_stmt *st = q(d, Q_CONTACT_VERIFIED);
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
    sqlite3_stmt *st = q(d, Q_CONTACT_SET_VERIFIED);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int(st, 1, verified);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    if (run(d, st, "marking a contact verified") != DB_OK)
        return DB_ERROR;
    return sqlite3_changes(d->sql) > 0 ? DB_OK : DB_NOT_FOUND;
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

/* ---- incoming: de-duplication before decrypting, resends, notices --------------------- */

static void bind_key3(sqlite3_stmt *st, const uint8_t account[DB_ID_LEN], uint32_t device,
                      const uint8_t id[DB_ID_LEN])
{
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, device);
    sqlite3_bind_blob(st, 3, id, DB_ID_LEN, SQLITE_TRANSIENT);
}

int db_incoming_seen(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN],
                     bool *seen)
{
    *seen = false;
    sqlite3_stmt *st = q(d, Q_INCOMING_SEEN);
    if (!st)
        return DB_ERROR;
    bind_key3(st, account, device, id);
    int rc = exists_row(d, st, "checking for a duplicate");
    *seen = rc == DB_OK;
    return rc == DB_ERROR ? DB_ERROR : DB_OK;
}

int db_incoming_absorb(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t id[DB_ID_LEN])
{
    sqlite3_stmt *st = q(d, Q_ABSORB);
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
    sqlite3_stmt *st = q(d, Q_FILL);
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
    if (!(st = q(d, Q_INCOMING_EXISTS)))
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
    sqlite3_stmt *st = q(d, Q_NOTICE_ADD);
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

/* ---- RETRY receipts ---------------------------------------------------------------------- */

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

/* ---- resends ------------------------------------------------------------------------------ */

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

/* ---- our prekeys ---------------------------------------------------------------------- */

int db_signed_prekey_add(db *d, uint32_t id, const uint8_t *record, size_t len, uint64_t now_ms)
{
    if (db_begin(d) != DB_OK)
        return DB_ERROR;
    sqlite3_stmt *st = q(d, Q_SPK_REPLACE);
    if (!st)
        goto fail;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)now_ms);
    if (run(d, st, "replacing the signed prekey") != DB_OK || !(st = q(d, Q_SPK_ADD)))
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
    sqlite3_stmt *st = q(d, Q_SPK_CURRENT);
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
    sqlite3_stmt *st = q(d, Q_SPK_GET);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    return one_blob(d, st, 0, record, "reading a signed prekey");
}

int db_signed_prekey_prune(db *d, uint64_t before_ms, size_t *n)
{
    sqlite3_stmt *st = q(d, Q_SPK_PRUNE);
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
    sqlite3_stmt *st = q(d, Q_PK_NEXT);
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
        if (!(st = q(d, Q_PK_EXISTS)))
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
    if (!(st = q(d, Q_PK_SET_NEXT)))
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
    sqlite3_stmt *st = q(d, Q_PK_ADD);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_blob(st, 2, record, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)clock_wall_ms());
    return run(d, st, "storing a prekey");
}

int db_prekey_get(db *d, uint32_t id, db_blob *record)
{
    sqlite3_stmt *st = q(d, Q_PK_GET);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    return one_blob(d, st, 0, record, "reading a prekey");
}

int db_prekey_delete(db *d, uint32_t id)
{
    sqlite3_stmt *st = q(d, Q_PK_DELETE);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_int64(st, 1, id);
    return run(d, st, "deleting a prekey");
}

int db_prekey_count(db *d, size_t *n)
{
    return count_query(d, Q_PK_COUNT, n);
}

int db_prekeys_not_uploaded(db *d, db_key_row *out, size_t max, size_t *n)
{
    *n = 0;
    sqlite3_stmt *st = q(d, Q_PK_NOT_UPLOADED);
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
        sqlite3_stmt *st = q(d, Q_PK_UPLOADED);
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

int db_session_get(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, db_blob *record)
{
    sqlite3_stmt *st = q(d, Q_SESSION_GET);
    if (!st)
        return DB_ERROR;
    bind_device(st, account, device);
    return one_blob(d, st, 0, record, "reading a session");
}

int db_session_put(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t *record, size_t len)
{
    sqlite3_stmt *st = q(d, Q_SESSION_PUT);
    if (!st)
        return DB_ERROR;
    bind_device(st, account, device);
    sqlite3_bind_blob(st, 3, record, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
    return run(d, st, "storing a session");
}

int db_session_delete(db *d, const uint8_t account[DB_ID_LEN], uint32_t device)
{
    sqlite3_stmt *st = q(d, Q_SESSION_DELETE);
    if (!st)
        return DB_ERROR;
    bind_device(st, account, device);
    return run(d, st, "deleting a session");
}

int db_session_exists(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, bool *exists)
{
    *exists = false;
    sqlite3_stmt *st = q(d, Q_SESSION_GET);
    if (!st)
        return DB_ERROR;
    bind_device(st, account, device);
    int rc = exists_row(d, st, "reading a session");
    *exists = rc == DB_OK;
    return rc == DB_ERROR ? DB_ERROR : DB_OK;
}

int db_peer_identity_get(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, uint8_t key[DB_KEY_LEN])
{
    sqlite3_stmt *st = q(d, Q_PEER_ID_GET);
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
    sqlite3_stmt *st = q(d, Q_PHONE_ID_GET);
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

static int clear_verified(db *d, const uint8_t account[DB_ID_LEN], bool *was)
{
    sqlite3_stmt *st = q(d, Q_CONTACT_CLEAR_VERIFIED);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    if (run(d, st, "clearing the verified mark") != DB_OK)
        return DB_ERROR;
    if (sqlite3_changes(d->sql) > 0)
        *was = true;
    return DB_OK;
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
        if (!(st = q(d, Q_PEER_ID_PUT)))
            goto fail;
        bind_device(st, account, device);
        sqlite3_bind_blob(st, 3, key, DB_KEY_LEN, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)clock_wall_ms());
        if (run(d, st, "storing an identity key") != DB_OK)
            goto fail;
    }
    if (by_phone) {
        if (!(st = q(d, Q_PHONE_ID_PUT)))
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
        if (clear_verified(d, account, &out->was_verified) != DB_OK ||
            (phone_moved && clear_verified(d, old_account, &out->was_verified) != DB_OK))
            goto fail;
    }
    return db_commit(d);
fail:
    memset(out, 0, sizeof *out);
    db_rollback(d);
    return DB_ERROR;
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
