/* writer.h - the embedded backend's storage writer thread: group commit.
 *
 * Loops submit write requests; the writer takes every request waiting (up to
 * max_batch) and runs them as one batch in two phases: first the parts that write the
 * data file (LMDB: accounts, devices, keys), in one transaction and one commit, when
 * any request of the batch has such a part; then the parts that go to the inbox log,
 * in one group commit (one fdatasync). Only then does each request go back to the loop
 * it came from, in the order it came, where its done callback runs (and may answer the
 * client). Lazy requests (writer_ops.lazy: acks) are the exception: their log parts
 * ride on a later batch's fdatasync instead of forcing one of their own, which halves
 * the syncs of a paced load, and they go home with it. A request whose part fails leaves nothing of that part behind; a failed
 * commit fails every request with a part in it. */
#ifndef PARLEY_STORE_LMDB_WRITER_H
#define PARLEY_STORE_LMDB_WRITER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "ldb.h"
#include "store_kinds.h"

typedef struct writer_home writer_home;

enum { WRITER_DB = 1, WRITER_LOG = 2 };

/* How long lazy requests wait for another batch's commit before one of their own. */
#define WRITER_LAZY_MS 5

/* How the writer applies a request (the backend's table of intents). Each returns
 * STORE_OK, a refusal (a positive STORE_* code) or a storage error (negative). */
typedef struct {
    /* Which parts the request has (WRITER_DB, WRITER_LOG or both). */
    unsigned (*parts)(const store_req *r);
    /* Its data file part, inside the batch's transaction. Unless the request is isolated,
     * it runs straight in that transaction, so:
     *  - a refusal must come before its first write (it leaves what it wrote);
     *  - it must be safe to run again from the start: after a storage error in any
     *    request, the writer runs the phase again with every request isolated. */
    int (*apply_db)(ldb_batch *b, store_req *r);
    /* Run in a nested batch of its own, for requests that may refuse after writing (the
     * nested batch costs a copy of every page the request touches). */
    bool (*isolated)(const store_req *r);
    /* Its inbox log part, after the data file's commit (skipped if that part failed);
     * rb is a read-only transaction that sees the commit. Refusals before the first
     * write, as above; it runs once. */
    int (*apply_log)(ldb_batch *rb, store_req *r);
    /* Whether its log part may wait for a later group's commit (nobody is answered on
     * it, and a crash before that commit only means it is applied again: an ack's
     * envelopes delivered once more). A batch of such requests alone is applied but not
     * committed; it goes with the next batch that has another kind of request, once
     * max_batch of them are held, after WRITER_LAZY_MS, or at writer_stop. */
    bool (*lazy)(const store_req *r);
    /* The log's group commit, once a batch's log parts are applied. */
    int (*commit_log)(void *ctx);
    /* The backend's upkeep, on the writer thread, with nothing held: after every batch
     * that went home (committed or failed), and after a writer_poke. */
    void (*after_batch)(void *ctx);
} writer_ops;

/* Where finished requests go back to: one per loop (it is that loop's store_home). */
struct writer_home {
    struct store_home base;
    uv_async_t async;
    pthread_mutex_t lock;
    store_req *head, *tail;
};

typedef struct writer writer;

/* Starts the writer thread on db; max_batch bounds the requests in one batch; ctx goes
 * to commit_log and after_batch. The environment variable PARLEYD_COMMIT_DELAY_MS
 * (tests only; under 10 s) makes it wait that long before each commit, so a crash test
 * can hit the window between a batch's work and its durability every time. */
int writer_start(writer **out, ldb *db, size_t max_batch, const writer_ops *ops, void *ctx);

/* Queues r from the loop that owns home. Thread-safe. */
void writer_submit(writer *w, writer_home *home, store_req *r);

/* Has the writer run after_batch soon even with no request to do (another thread
 * finished something the upkeep waits for). Thread-safe. */
void writer_poke(writer *w);

/* Commits what is queued, then stops and joins the thread; returns its final stats. */
store_run_stats writer_stop(writer *w);

store_run_stats writer_get_stats(writer *w);

/* A loop's return path, set up on that loop. */
int writer_home_init(writer_home *home, uv_loop_t *loop);

/* On home's loop, once the writer is stopped: runs the done callbacks still waiting,
 * then closes the return path (free home from close_cb, or after the loop ran). */
void writer_home_close(writer_home *home, uv_close_cb close_cb);

#endif
