/* db.c - the profile database on SQLite: WAL, synchronous=FULL (a commit is on disk
 * when it returns, so whatever we ack to the server survives a crash), prepared
 * statements cached for the handle's life, a schema version table for migrations.
 * This file: opening and closing, the schema and its migrations, transactions, the
 * statement cache, and the identity. The tables of the other domains are read and
 * written in db_contacts.c, db_messages.c, db_outbox.c and db_signal.c; db_internal.h
 * is what they share. */
#include "db.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db_internal.h"

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

/* v5: conversations. A message belongs to a conversation named as the API names it:
 * "+E164" for a one-to-one chat (the other party's number, as before: a number that
 * moves to a new account keeps its chat, as in WhatsApp), "group:" and 32 hex digits
 * for a group. Messages and the outbox are keyed by it; peer_phone stays the other
 * party (in a group: the author). Rows from before were all one-to-one. */
static const char schema_v5[] =
    "ALTER TABLE messages ADD COLUMN conversation TEXT;"  /* NULL: a sender the server could not name */
    "UPDATE messages SET conversation = peer_phone WHERE peer_phone IS NOT NULL AND peer_phone <> '';"
    "DROP INDEX IF EXISTS messages_conversation;"
    "CREATE INDEX messages_conversation ON messages (conversation, seq);"
    "ALTER TABLE outbox RENAME COLUMN phone TO conversation;";

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

const char *db_errmsg(const db *d)
{
    return d->err;
}

/* ---- the statement cache ------------------------------------------------------- */

/* The slots taken so far, in every handle: a query takes the next on its first use. */
static atomic_int slots_taken;

sqlite3_stmt *db_q(db *d, db_query *qy)
{
    int slot = atomic_load_explicit(&qy->slot, memory_order_relaxed);
    if (slot == 0) {
        /* first use in this process; a handle on another thread may be at it too: the
         * first to store its number wins, and the other's number stays unused */
        int mine = atomic_fetch_add_explicit(&slots_taken, 1, memory_order_relaxed) + 1;
        if (atomic_compare_exchange_strong_explicit(&qy->slot, &slot, mine, memory_order_relaxed,
                                                    memory_order_relaxed))
            slot = mine;
    }
    size_t i = (size_t)slot - 1;
    if (i >= d->n_stmts) {
        size_t n = d->n_stmts ? d->n_stmts : 32;
        while (n <= i)
            n *= 2;
        sqlite3_stmt **grown = realloc(d->stmts, n * sizeof *grown);
        if (!grown) {
            snprintf(d->err, sizeof d->err, "out of memory");
            return NULL;
        }
        memset(grown + d->n_stmts, 0, (n - d->n_stmts) * sizeof *grown);
        d->stmts = grown;
        d->n_stmts = n;
    }
    sqlite3_stmt **st = &d->stmts[i];
    if (!*st) {
        if (sqlite3_prepare_v3(d->sql, qy->sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK) {
            fail(d, "preparing a query");
            *st = NULL;
            return NULL;
        }
    }
    return *st;
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

void db_blob_free(db_blob *b)
{
    if (b->data) {
        sodium_memzero(b->data, b->len);
        free(b->data);
    }
    b->data = NULL;
    b->len = 0;
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
    if (version < 5 && ((rc = exec(d, schema_v5)) != DB_OK ||
                        (rc = exec(d, "UPDATE schema_version SET version = 5")) != DB_OK))
        goto out;
    /* later versions: if (version < 6) ... */
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
    for (size_t i = 0; i < d->n_stmts; i++)
        sqlite3_finalize(d->stmts[i]);
    free(d->stmts);
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
    static db_query get = {"SELECT registration_id, server_url, pending_phone, phone, account_id, device_id"
                           " FROM identity WHERE id = 1"};
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = db_q(d, &get);
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
    static db_query create = {"INSERT INTO identity (id, private_key, registration_id) VALUES (1, ?, ?)"};
    sqlite3_stmt *st = db_q(d, &create);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_blob(st, 1, priv, DB_KEY_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, registration_id);
    return run(d, st, "storing the identity key");
}

int db_identity_key(db *d, uint8_t priv[DB_KEY_LEN])
{
    static db_query key = {"SELECT private_key FROM identity WHERE id = 1"};
    sqlite3_stmt *st = db_q(d, &key);
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
    static db_query pending = {"UPDATE identity SET server_url = ?, pending_phone = ? WHERE id = 1"};
    sqlite3_stmt *st = db_q(d, &pending);
    if (!st)
        return DB_ERROR;
    bind_text_or_null(st, 1, server_url);
    bind_text_or_null(st, 2, phone);
    return run(d, st, "storing the pending registration");
}

int db_identity_set_registered(db *d, const char *phone, const uint8_t account[DB_ID_LEN], uint32_t device)
{
    static db_query registered = {"UPDATE identity SET phone = ?, account_id = ?, device_id = ?,"
                                  " pending_phone = NULL WHERE id = 1"};
    sqlite3_stmt *st = db_q(d, &registered);
    if (!st)
        return DB_ERROR;
    sqlite3_bind_text(st, 1, phone, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, device);
    return run(d, st, "storing the registration");
}
