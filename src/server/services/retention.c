/* retention.c - the retention sweep: on I/O thread 0's timer, the store deletes what is
 * older than --retention (and de-duplication records older than that, or 7 days at
 * least), a bounded number per request, again at once while there is more. */
#include <stdio.h>
#include <stdlib.h>

#include "services.h"

#define DEDUP_MIN_MS (7ULL * 86400000) /* duplicates are recognised for at least 7 days */
#define SWEEP_MAX 10000                /* records removed per sweep request */

/* The service's state: thread 0's timer and whether a sweep is out. */
static struct {
    uv_timer_t timer;
    io_thread *t;
    bool sweeping;
    bool stopped;
} sweeper;

typedef struct {
    store_sweep r;
} sweep_request;

static void sweep_submit(void);

static void swept(store_req *req, int status)
{
    sweep_request *j = (sweep_request *)req;
    sweeper.sweeping = false;
    if (status != STORE_OK)
        fprintf(stderr, "parleyd: retention sweep failed: %s\n", store_strerror(status));
    else if (j->r.inbox_removed)
        fprintf(stderr, "parleyd: retention sweep removed %zu undelivered envelopes\n", j->r.inbox_removed);
    bool more = status == STORE_OK && (j->r.inbox_removed == SWEEP_MAX || j->r.dedup_removed == SWEEP_MAX);
    free(j);
    if (more && !sweeper.stopped) /* not while shutting down */
        sweep_submit();
}

static void sweep_submit(void)
{
    if (sweeper.sweeping)
        return;
    sweep_request *j = calloc(1, sizeof *j);
    if (!j)
        return;
    const server_config *cfg = &sweeper.t->srv->cfg;
    uint64_t now = clock_wall_ms();
    uint64_t dedup_keep = cfg->retention_ms > DEDUP_MIN_MS ? cfg->retention_ms : DEDUP_MIN_MS;
    j->r.req.done = swept;
    j->r.inbox_cutoff = now > cfg->retention_ms ? now - cfg->retention_ms : 0;
    j->r.dedup_cutoff = now > dedup_keep ? now - dedup_keep : 0;
    j->r.max = SWEEP_MAX;
    sweeper.sweeping = true;
    store_sweep_expired(sweeper.t->srv->st, sweeper.t->home, &j->r);
}

static void on_timer(uv_timer_t *timer)
{
    (void)timer;
    sweep_submit();
}

static int thread_start(io_thread *t)
{
    if (t->index != 0)
        return 0;
    /* often enough that nothing outlives the retention by much more than a quarter of it */
    uint64_t every = t->srv->cfg.retention_ms / 4;
    every = every < 250 ? 250 : every > 60000 ? 60000 : every;
    sweeper.t = t;
    sweeper.sweeping = sweeper.stopped = false;
    uv_timer_init(&t->loop, &sweeper.timer);
    return uv_timer_start(&sweeper.timer, on_timer, every, every);
}

static void thread_stop(io_thread *t)
{
    if (t->index != 0)
        return;
    sweeper.stopped = true;
    uv_close((uv_handle_t *)&sweeper.timer, NULL);
}

const service retention_service = {.name = "retention", .thread_start = thread_start, .thread_stop = thread_stop};
