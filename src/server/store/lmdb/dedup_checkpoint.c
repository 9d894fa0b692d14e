/* dedup_checkpoint.c - the checkpoint thread (dedup_checkpoint.h). */
#include "dedup_checkpoint.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct dedup_checkpoint {
    ldb *db;
    pthread_t tid;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    const dedup_recent *table; /* the one to write, until finished */
    bool running, stopping;
    int rc;
    void (*finished)(void *ctx);  /* told under lock, until muted */
    void *ctx;
};

/* In the data file's key order: the message id, then the sender device. */
static int by_key(const void *a, const void *b)
{
    const dedup_slot *x = *(const dedup_slot *const *)a, *y = *(const dedup_slot *const *)b;
    int c = memcmp(x->key + 20, y->key + 20, DEDUP_KEY_LEN - 20);
    return c ? c : memcmp(x->key, y->key, 20);
}

int dedup_checkpoint_write(ldb *db, const dedup_recent *t)
{
    /* in key order: the B-tree's pages are then filled one after another (the ids
       start with the time, so mostly at its end) instead of at random */
    const dedup_slot **order = malloc((t->used ? t->used : 1) * sizeof *order);
    if (!order)
        return STORE_NOMEM;
    size_t n = 0;
    for (size_t i = 0; i < t->cap && n < t->used; i++)
        if (t->slots[i].accepted_ms)
            order[n++] = &t->slots[i];
    qsort(order, n, sizeof *order, by_key);
    ldb_batch *b = NULL;
    int rc = ldb_batch_begin(db, &b);
    for (size_t i = 0; rc == STORE_OK && i < n; i++) {
        const dedup_slot *s = order[i];
        if (dedup_recent_is_group(s->key)) {
            rc = ldb_group_seq_put(b, s->key, s->accepted_ms);
            continue;
        }
        store_device sender = {.device = (uint32_t)s->key[16] << 24 | (uint32_t)s->key[17] << 16 |
                                         (uint32_t)s->key[18] << 8 | s->key[19]};
        memcpy(sender.account, s->key, STORE_ACCOUNT_ID_LEN);
        rc = ldb_dedup_put(b, &sender, s->key + 20, s->accepted_ms);
    }
    free(order);
    if (rc == STORE_OK)
        return ldb_batch_commit(b);
    if (b)
        ldb_batch_abort(b);
    return rc;
}

static void *checkpoint_main(void *arg)
{
    dedup_checkpoint *c = arg;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (!c->table && !c->stopping)
            pthread_cond_wait(&c->wake, &c->lock);
        if (!c->table)
            break;
        const dedup_recent *t = c->table;
        pthread_mutex_unlock(&c->lock);
        int rc = dedup_checkpoint_write(c->db, t);
        pthread_mutex_lock(&c->lock);
        c->rc = rc;
        c->table = NULL;
        pthread_cond_broadcast(&c->wake);
        if (c->finished)
            c->finished(c->ctx);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

int dedup_checkpoint_start(dedup_checkpoint **out, ldb *db, void (*finished)(void *ctx), void *ctx)
{
    dedup_checkpoint *c = calloc(1, sizeof *c);
    if (!c)
        return STORE_NOMEM;
    c->db = db;
    c->finished = finished;
    c->ctx = ctx;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->wake, NULL);
    if (pthread_create(&c->tid, NULL, checkpoint_main, c) != 0) {
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->wake);
        free(c);
        return STORE_IO;
    }
    *out = c;
    return STORE_OK;
}

bool dedup_checkpoint_begin(dedup_checkpoint *c, const dedup_recent *t)
{
    pthread_mutex_lock(&c->lock);
    bool free_now = !c->running;
    if (free_now) {
        c->table = t;
        c->running = true;
        pthread_cond_broadcast(&c->wake);
    }
    pthread_mutex_unlock(&c->lock);
    return free_now;
}

bool dedup_checkpoint_done(dedup_checkpoint *c, bool wait, int *rc)
{
    pthread_mutex_lock(&c->lock);
    while (wait && c->table)
        pthread_cond_wait(&c->wake, &c->lock);
    bool done = !c->table;
    if (done) {
        *rc = c->running ? c->rc : STORE_OK;
        c->running = false;
    }
    pthread_mutex_unlock(&c->lock);
    return done;
}

void dedup_checkpoint_mute(dedup_checkpoint *c)
{
    pthread_mutex_lock(&c->lock);
    c->finished = NULL;
    pthread_mutex_unlock(&c->lock);
}

void dedup_checkpoint_stop(dedup_checkpoint *c, int *rc)
{
    pthread_mutex_lock(&c->lock);
    while (c->table)
        pthread_cond_wait(&c->wake, &c->lock);
    *rc = c->running ? c->rc : STORE_OK;
    c->stopping = true;
    pthread_cond_broadcast(&c->wake);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->tid, NULL);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->wake);
    free(c);
}
