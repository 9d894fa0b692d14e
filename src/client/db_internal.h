/* db_internal.h - what the files of the profile database share, and nobody else: the
 * handle (struct db), its statement cache, the small helpers every query uses, and the
 * few functions one domain offers another. Only db*.c include this; the rest of
 * libparley sees db.h.
 *
 *   db.c           opening and closing, the schema and its migrations, transactions,
 *                  the statement cache, the identity
 *   db_contacts.c  contacts: phone numbers, device lists, the verified mark
 *   db_messages.c  messages: outgoing states, incoming rows, notices, read receipts,
 *                  the conversation, what is not shown yet
 *   db_outbox.c    the outbox, RETRY receipts we send, resends and their recipients
 *   db_signal.c    the Signal state: our prekeys, sessions, the identity keys seen
 *
 * Statements: each query is written in the function that runs it (or, shared by two,
 * right above the first of them), as a static db_query, and reached through db_q():
 *
 *     static db_query get = {"SELECT verified FROM contacts WHERE account_id = ?"};
 *     sqlite3_stmt *st = db_q(d, &get);
 *
 * A query takes a slot on first use, process-wide (the same slot in every handle); a
 * handle keeps a growable array of statements by slot. A statement is prepared on first
 * use on that handle (SQLITE_PREPARE_PERSISTENT), kept for the handle's life and
 * finalized by db_close. */
#ifndef PARLEY_CLIENT_DB_INTERNAL_H
#define PARLEY_CLIENT_DB_INTERNAL_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"

/* A query: its SQL, and its slot in every handle's statement cache (0 until its first
 * use, then the slot + 1; assigned once, process-wide, by db_q). Declare it static with
 * the SQL only, as above. */
typedef struct {
    const char *sql;
    _Atomic int slot;
} db_query;

struct db {
    sqlite3 *sql;
    sqlite3_stmt **stmts; /* by slot; NULL: not prepared on this handle yet */
    size_t n_stmts;
    int depth;            /* db_begin nesting */
    bool doomed;          /* an inner part failed: the outermost commit rolls back */
    char err[256];
};

/* The cached statement for qy on d, reset and ready for binding; NULL on error (db_errmsg
 * says why). In db.c. */
sqlite3_stmt *db_q(db *d, db_query *qy);

static inline int fail(db *d, const char *what)
{
    snprintf(d->err, sizeof d->err, "%s: %s", what, sqlite3_errmsg(d->sql));
    return DB_ERROR;
}

/* Resets a statement after use so it holds no locks or row data. */
static inline void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Runs a statement that returns no rows. */
static inline int run(db *d, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    done(st);
    return rc == SQLITE_DONE ? DB_OK : fail(d, what);
}

static inline void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s && *s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

/* Binds (account, device, message id) as parameters 1 to 3. */
static inline void bind_key3(sqlite3_stmt *st, const uint8_t account[DB_ID_LEN], uint32_t device,
                             const uint8_t id[DB_ID_LEN])
{
    sqlite3_bind_blob(st, 1, account, DB_ID_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, device);
    sqlite3_bind_blob(st, 3, id, DB_ID_LEN, SQLITE_TRANSIENT);
}

static inline void copy_text(char *out, size_t cap, sqlite3_stmt *st, int col)
{
    const unsigned char *s = sqlite3_column_text(st, col);
    snprintf(out, cap, "%s", s ? (const char *)s : "");
}

static inline bool copy_blob(uint8_t *out, size_t len, sqlite3_stmt *st, int col)
{
    if (sqlite3_column_type(st, col) != SQLITE_BLOB || (size_t)sqlite3_column_bytes(st, col) != len)
        return false;
    memcpy(out, sqlite3_column_blob(st, col), len);
    return true;
}

/* A malloc'd copy of a blob column (NULL column: an empty blob). DB_ERROR: out of memory. */
static inline int dup_blob(db_blob *out, sqlite3_stmt *st, int col)
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
static inline int one_blob(db *d, sqlite3_stmt *st, int col, db_blob *out, const char *what)
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
static inline int exists_row(db *d, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    done(st);
    return rc == SQLITE_ROW ? DB_OK : rc == SQLITE_DONE ? DB_NOT_FOUND : fail(d, what);
}

/* Steps a statement whose rows give an id in column 0 into ids (at most max; a row
 * without a valid id is skipped), counting them in *n: DB_OK, or DB_ERROR with *n = 0. */
static inline int id_rows(db *d, sqlite3_stmt *st, uint8_t (*ids)[DB_ID_LEN], size_t max, size_t *n,
                          const char *what)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < max)
        if (copy_blob(ids[*n], DB_ID_LEN, st, 0))
            (*n)++;
    done(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        *n = 0;
        return fail(d, what);
    }
    return DB_OK;
}

/* Steps a "SELECT count(*)" statement (st as db_q() gave it: NULL is an error already
 * reported) into *n. */
static inline int count_query(db *d, sqlite3_stmt *st, size_t *n)
{
    *n = 0;
    if (!st)
        return DB_ERROR;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *n = (size_t)sqlite3_column_int64(st, 0);
    done(st);
    return rc == SQLITE_ROW ? DB_OK : fail(d, "counting");
}

/* ---- what one domain offers another ----------------------------------------------------- */

/* db_outbox.c: queues the outbox entry of a new outgoing message (db_outgoing_add), and
 * drops the entry of id once its message has left PENDING. */
int outbox_add(db *d, const uint8_t id[DB_ID_LEN], const char *conversation, const uint8_t *body, size_t body_len);
int outbox_delete(db *d, const uint8_t id[DB_ID_LEN]);

/* db_contacts.c: clears account's verified mark (a changed identity key); *was becomes
 * true if it was set, and is left alone otherwise. */
int contact_clear_verified(db *d, const uint8_t account[DB_ID_LEN], bool *was);

#endif
