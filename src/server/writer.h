/* writer.h - the storage writer thread: group commit.
 *
 * I/O threads submit jobs; the writer takes every job waiting (up to max_batch),
 * applies them in one store batch, commits once (one fsync for all of them), and
 * only then hands each job back to the loop it came from, where its done callback
 * runs (and may answer the client). A job whose apply fails leaves nothing behind;
 * a failed commit fails every job of the batch. */
#ifndef PARLEY_SERVER_WRITER_H
#define PARLEY_SERVER_WRITER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "store.h"

typedef struct writer_job writer_job;
typedef struct writer_home writer_home;

struct writer_job {
    /* On the writer thread, inside the batch: returns STORE_OK, a refusal (a positive
     * code: STORE_NOT_FOUND, STORE_EXISTS, a JOB_* code) or a storage error (negative).
     * Unless the job is isolated, it runs straight in the batch's transaction, so:
     *  - a refusal must come before its first write (it leaves what it wrote);
     *  - it must be safe to run again from the start: after a storage error in any
     *    job, the writer runs the whole batch again with every job isolated. */
    int (*apply)(store_batch *b, writer_job *job);
    /* Run in a nested batch of its own, for jobs that may refuse after writing (the
     * nested batch costs a copy of every page the job touches). */
    bool isolated;
    /* On the submitting loop, after the commit: status is the job's final result. */
    void (*done)(writer_job *job, int status);
    int status;
    writer_home *home;
    writer_job *next;
};

/* Where finished jobs go back to: one per I/O thread (per loop). */
struct writer_home {
    uv_async_t async;
    pthread_mutex_t lock;
    writer_job *head, *tail;
};

typedef struct {
    uint64_t batches;   /* commits done */
    uint64_t jobs;      /* jobs applied */
    uint64_t retries;   /* batches run again, every job isolated, after a storage error */
} writer_stats;

typedef struct writer writer;

/* Starts the writer thread on s; max_batch bounds the jobs in one commit. The
 * environment variable PARLEYD_COMMIT_DELAY_MS (tests only; under 10 s) makes it wait
 * that long before each commit, so a crash test can hit the window between a batch's
 * work and its durability every time. */
int writer_start(writer **out, store *s, size_t max_batch);

/* Queues job from the loop that owns home. Thread-safe. */
void writer_submit(writer *w, writer_home *home, writer_job *job);

/* Commits what is queued, then stops and joins the thread; returns its final stats. */
writer_stats writer_stop(writer *w);

writer_stats writer_get_stats(writer *w);

/* A loop's return path, set up on that loop. */
int writer_home_init(writer_home *home, uv_loop_t *loop);

/* On home's loop, once the writer is stopped: runs the done callbacks still waiting,
 * then closes the return path. */
void writer_home_close(writer_home *home);

#endif
