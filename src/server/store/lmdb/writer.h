/* writer.h - the embedded backend's storage writer thread: group commit.
 *
 * Loops submit write requests; the writer takes every request waiting (up to
 * max_batch), applies them in one batch, commits once (one fsync for all of them), and
 * only then hands each back to the loop it came from, where its done callback runs
 * (and may answer the client). A request whose apply fails leaves nothing behind; a
 * failed commit fails every request of the batch. */
#ifndef PARLEY_STORE_LMDB_WRITER_H
#define PARLEY_STORE_LMDB_WRITER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "ldb.h"
#include "store_kinds.h"

typedef struct writer_home writer_home;

/* How the writer applies a request (the backend's table of intents). */
typedef struct {
    /* On the writer thread, inside the batch: returns STORE_OK, a refusal (a positive
     * STORE_* code) or a storage error (negative). Unless the request is isolated, it runs
     * straight in the batch's transaction, so:
     *  - a refusal must come before its first write (it leaves what it wrote);
     *  - it must be safe to run again from the start: after a storage error in any
     *    request, the writer runs the whole batch again with every request isolated. */
    int (*apply)(ldb_batch *b, store_req *r);
    /* Run in a nested batch of its own, for requests that may refuse after writing (the
     * nested batch costs a copy of every page the request touches). */
    bool (*isolated)(const store_req *r);
} writer_ops;

/* Where finished requests go back to: one per loop (it is that loop's store_home). */
struct writer_home {
    struct store_home base;
    uv_async_t async;
    pthread_mutex_t lock;
    store_req *head, *tail;
};

typedef struct writer writer;

/* Starts the writer thread on db; max_batch bounds the requests in one commit. The
 * environment variable PARLEYD_COMMIT_DELAY_MS (tests only; under 10 s) makes it wait
 * that long before each commit, so a crash test can hit the window between a batch's
 * work and its durability every time. */
int writer_start(writer **out, ldb *db, size_t max_batch, const writer_ops *ops);

/* Queues r from the loop that owns home. Thread-safe. */
void writer_submit(writer *w, writer_home *home, store_req *r);

/* Commits what is queued, then stops and joins the thread; returns its final stats. */
store_run_stats writer_stop(writer *w);

store_run_stats writer_get_stats(writer *w);

/* A loop's return path, set up on that loop. */
int writer_home_init(writer_home *home, uv_loop_t *loop);

/* On home's loop, once the writer is stopped: runs the done callbacks still waiting,
 * then closes the return path (free home from close_cb, or after the loop ran). */
void writer_home_close(writer_home *home, uv_close_cb close_cb);

#endif
