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
    [Q_OUTBOX_LOAD] = "SELECT message_id, phone, body FROM outbox ORDER BY seq LIMIT ?",
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
    [Q_RECEIPTS_COUNT] = "SELECT count(*) FROM messages WHERE direction = 0 AND state = 4"
                         " AND read_receipt_sent = 0 AND peer_account IS NOT NULL",
    [Q_RECEIPT_SENT] = "UPDATE messages SET read_receipt_sent = 1"
                       " WHERE direction = 0 AND peer_account = ? AND id = ? AND state = 4",
    [Q_MESSAGE_STATE] = "SELECT state FROM messages WHERE direction = 1 AND id = ?",
    [Q_HISTORY] = "SELECT id, direction, peer_phone, peer_account, from_device, text, problem, sent_ms,"
                  " server_time_ms, state, seq FROM messages WHERE peer_phone = ? ORDER BY seq",
    [Q_UNSHOWN] = "SELECT id, direction, peer_phone, peer_account, from_device, text, problem, sent_ms,"
                  " server_time_ms, state, seq FROM messages WHERE direction = 0 AND shown = 0 ORDER BY seq",
    [Q_MARK_SHOWN] = "UPDATE messages SET shown = 1 WHERE direction = 0 AND shown = 0 AND seq <= ?",
};

struct db {
    sqlite3 *sql;
    sqlite3_stmt *stmts[Q_COUNT];
    int depth;          /* db_begin nesting */
    bool doomed;        /* an inner part failed: the outermost commit rolls back */
    char err[256];
};

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

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
    /* later versions: if (version < 3) ... */
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
    sqlite3_bind_int64(st, 4, (sqlite3_int64)wall_ms());
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
    sqlite3_bind_int64(st, 11, (sqlite3_int64)wall_ms());
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
    sqlite3_bind_int64(st, 4, (sqlite3_int64)wall_ms());
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
        size_t len = (size_t)sqlite3_column_bytes(st, 2);
        if (!copy_blob(e->id, DB_ID_LEN, st, 0))
            continue; /* cannot happen: the schema checks the length */
        copy_text(e->phone, sizeof e->phone, st, 1);
        e->body = malloc(len ? len : 1);
        if (!e->body) {
            done(st);
            db_outbox_free(out, *n);
            *n = 0;
            snprintf(d->err, sizeof d->err, "out of memory");
            return DB_ERROR;
        }
        if (len)
            memcpy(e->body, sqlite3_column_blob(st, 2), len);
        e->body_len = len;
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
        if (e[i].body)
            sodium_memzero(e[i].body, e[i].body_len);
        free(e[i].body);
        e[i].body = NULL;
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
