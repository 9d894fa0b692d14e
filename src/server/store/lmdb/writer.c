/* writer.c - group commit on one storage writer thread (writer.h). */
#include "writer.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

struct writer {
    ldb *st;
    const writer_ops *ops;
    void *ctx;
    size_t max_batch;
    pthread_t tid;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    store_req *head, *tail;
    bool stopping;
    bool poked;                /* writer_poke: run the upkeep once */
    store_run_stats stats;
    /* applied, not yet committed (writer thread only) */
    store_req *held, *held_tail; /* lazy requests waiting for a commit, in order */
    size_t n_held, applied;      /* those; log parts applied since the last commit */
    struct timespec held_until;  /* CLOCK_MONOTONIC: when the held ones commit anyway */
    unsigned long commit_delay_ms; /* PARLEYD_COMMIT_DELAY_MS, for crash tests (docs/storage.md) */
};

static void home_drain(uv_async_t *a)
{
    writer_home *h = a->data;
    pthread_mutex_lock(&h->lock);
    store_req *j = h->head;
    h->head = h->tail = NULL;
    pthread_mutex_unlock(&h->lock);
    while (j) {
        store_req *next = j->next; /* done may free the request */
        j->done(j, j->status);
        j = next;
    }
}

int writer_home_init(writer_home *home, uv_loop_t *loop)
{
    home->head = home->tail = NULL;
    pthread_mutex_init(&home->lock, NULL);
    home->async.data = home;
    return uv_async_init(loop, &home->async, home_drain);
}

void writer_home_close(writer_home *home, uv_close_cb close_cb)
{
    home_drain(&home->async);
    uv_close((uv_handle_t *)&home->async, close_cb);
}

static void send_home(store_req *j)
{
    writer_home *h = (writer_home *)j->home;
    j->next = NULL;
    pthread_mutex_lock(&h->lock);
    if (h->tail)
        h->tail->next = j;
    else
        h->head = j;
    h->tail = j;
    pthread_mutex_unlock(&h->lock);
    uv_async_send(&h->async); /* coalesces: one wake-up drains them all */
}

/* Applies j in a nested batch of its own: if it fails, it alone is rolled back. */
static int apply_isolated(const writer_ops *ops, ldb_batch *b, store_req *j)
{
    ldb_batch *child = NULL;
    int rc = ldb_batch_nest(b, &child);
    if (rc == STORE_OK)
        rc = ops->apply_db(child, j);
    if (rc == STORE_OK)
        rc = ldb_batch_commit(child);
    else if (child)
        ldb_batch_abort(child);
    return rc;
}

static void commit_delay(writer *w)
{
    if (w->commit_delay_ms) { /* tests: widen the window before durability */
        struct timespec ts = {w->commit_delay_ms / 1000, (long)(w->commit_delay_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
}

static void count(writer *w, bool committed, size_t jobs, bool retried)
{
    pthread_mutex_lock(&w->lock);
    w->stats.commits += committed;
    w->stats.writes += jobs;
    w->stats.retries += retried;
    pthread_mutex_unlock(&w->lock);
}

/* Phase 1: the jobs' data file parts, one commit for all of them. Jobs run straight in
 * the batch's transaction: a nested transaction per job made LMDB copy every page the
 * job touched and merge its page lists, about a third of the writer's time
 * (docs/storage.md). Isolated jobs, and every job once a storage error spoiled the
 * transaction, run in a nested batch of their own; after such an error the whole phase
 * runs again that way, so the failing job alone is rolled back. */
static void run_db(writer *w, store_req *jobs)
{
    bool careful = false;
    ldb_batch *b;
    int rc;
    size_t n;
again:
    b = NULL;
    rc = ldb_batch_begin(w->st, &b);
    n = 0;
    for (store_req *j = jobs; j; j = j->next) {
        if (!(w->ops->parts(j) & WRITER_DB))
            continue;
        n++;
        if (rc != STORE_OK) {
            j->status = rc;
        } else if (careful || w->ops->isolated(j)) {
            j->status = apply_isolated(w->ops, b, j);
        } else if ((j->status = w->ops->apply_db(b, j)) < 0) { /* a storage error: the batch is spoilt */
            ldb_batch_abort(b);
            careful = true;
            count(w, false, 0, true);
            goto again;
        }
    }
    if (rc == STORE_OK) {
        commit_delay(w);
        rc = ldb_batch_commit(b);
    }
    count(w, rc == STORE_OK, n, false);
    if (rc != STORE_OK) /* nothing of this phase is on disk */
        for (store_req *j = jobs; j; j = j->next)
            if (w->ops->parts(j) & WRITER_DB)
                j->status = rc;
}

/* Phase 2: the jobs' inbox log parts (those whose data file part, if any, went
 * through), applied; the group commit comes after (commit_logs). */
static void apply_logs(writer *w, store_req *jobs)
{
    ldb_batch *rb = NULL;
    int rc = ldb_batch_begin_read(w->st, &rb);
    for (store_req *j = jobs; j; j = j->next) {
        if (!(w->ops->parts(j) & WRITER_LOG) || j->status != STORE_OK)
            continue;
        w->applied++;
        j->status = rc != STORE_OK ? rc : w->ops->apply_log(rb, j);
    }
    if (rb)
        ldb_batch_abort(rb);
}

static void fail_logs(writer *w, store_req *jobs, int rc)
{
    for (store_req *j = jobs; j; j = j->next)
        if ((w->ops->parts(j) & WRITER_LOG) && j->status == STORE_OK)
            j->status = rc;
}

/* One group commit (one fdatasync) for every log part applied since the last: the
 * batch's and those held. Then the upkeep, and every request goes home, the held ones
 * first (they came first). */
static void finish(writer *w, store_req *jobs, bool log)
{
    if (log || w->held) {
        commit_delay(w);
        int rc = w->ops->commit_log(w->ctx);
        count(w, rc == STORE_OK, w->applied, false);
        w->applied = 0;
        if (rc != STORE_OK) {
            fail_logs(w, w->held, rc);
            fail_logs(w, jobs, rc);
        }
    }
    w->ops->after_batch(w->ctx);
    store_req *lists[2] = {w->held, jobs};
    w->held = w->held_tail = NULL;
    w->n_held = 0;
    for (int i = 0; i < 2; i++)
        for (store_req *j = lists[i], *next; j; j = next) {
            next = j->next;
            send_home(j);
        }
}

static struct timespec mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts;
}

static bool passed(const struct timespec *t)
{
    struct timespec now = mono_now();
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

/* Keeps a batch of lazy requests, applied, for the next commit. */
static void hold(writer *w, store_req *jobs, size_t n)
{
    if (!w->held) {
        w->held = jobs;
        w->held_until = mono_now();
        w->held_until.tv_nsec += WRITER_LAZY_MS * 1000000L;
        if (w->held_until.tv_nsec >= 1000000000L) {
            w->held_until.tv_sec++;
            w->held_until.tv_nsec -= 1000000000L;
        }
    } else {
        w->held_tail->next = jobs;
    }
    for (store_req *j = jobs; j; j = j->next)
        w->held_tail = j;
    w->n_held += n;
}

/* Runs one batch (writer.h): the data file's phase if a job needs it, then the log's,
 * whose commit waits if every job is lazy (and the held ones are neither too many nor
 * too old). */
static void run_batch(writer *w, store_req *jobs)
{
    unsigned parts = 0;
    bool eager = false;
    size_t n = 0;
    for (store_req *j = jobs; j; j = j->next, n++) {
        j->status = STORE_OK;
        unsigned p = w->ops->parts(j);
        parts |= p;
        eager |= !(p & WRITER_LOG) || !w->ops->lazy(j);
    }
    if (parts & WRITER_DB)
        run_db(w, jobs);
    if (parts & WRITER_LOG)
        apply_logs(w, jobs);
    if (!eager && w->n_held + n < w->max_batch && !(w->held && passed(&w->held_until))) {
        hold(w, jobs, n);
        return;
    }
    finish(w, jobs, parts & WRITER_LOG);
}

static void *writer_main(void *arg)
{
    writer *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        while (!w->head && !w->stopping && !w->poked) {
            if (!w->held)
                pthread_cond_wait(&w->wake, &w->lock);
            else if (pthread_cond_timedwait(&w->wake, &w->lock, &w->held_until) == ETIMEDOUT)
                break;
        }
        if (!w->head) { /* lazy requests waited long enough, a poke, or the writer stops */
            bool poked = w->poked;
            w->poked = false;
            pthread_mutex_unlock(&w->lock);
            if (w->held)
                finish(w, NULL, false); /* the upkeep runs with nothing held */
            else if (poked)
                w->ops->after_batch(w->ctx);
            else
                return NULL;
            continue;
        }
        /* take up to max_batch jobs: everything that queued while the last fsync ran */
        store_req *first = w->head, *last = first;
        for (size_t n = 1; n < w->max_batch && last->next; n++)
            last = last->next;
        w->head = last->next;
        if (!w->head)
            w->tail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&w->lock);
        run_batch(w, first);
    }
}

int writer_start(writer **out, ldb *s, size_t max_batch, const writer_ops *ops, void *ctx)
{
    writer *w = calloc(1, sizeof *w);
    if (!w)
        return STORE_NOMEM;
    w->st = s;
    w->ops = ops;
    w->ctx = ctx;
    w->max_batch = max_batch ? max_batch : 1024;
    const char *delay = getenv("PARLEYD_COMMIT_DELAY_MS");
    w->commit_delay_ms = delay ? strtoul(delay, NULL, 10) % 10000 : 0;
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->tid, NULL, writer_main, w) != 0) {
        free(w);
        return STORE_IO;
    }
    *out = w;
    return STORE_OK;
}

void writer_submit(writer *w, writer_home *home, store_req *job)
{
    job->home = &home->base;
    job->next = NULL;
    job->status = STORE_OK;
    pthread_mutex_lock(&w->lock);
    if (w->tail)
        w->tail->next = job;
    else
        w->head = job;
    w->tail = job;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

void writer_poke(writer *w)
{
    pthread_mutex_lock(&w->lock);
    w->poked = true;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

store_run_stats writer_stop(writer *w)
{
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->tid, NULL);
    store_run_stats stats = w->stats;
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->wake);
    free(w);
    return stats;
}

store_run_stats writer_get_stats(writer *w)
{
    pthread_mutex_lock(&w->lock);
    store_run_stats s = w->stats;
    pthread_mutex_unlock(&w->lock);
    return s;
}
