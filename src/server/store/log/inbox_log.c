/* inbox_log.c - the device inboxes as a log (inbox_log.h). */
#include "inbox_log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log_record.h"
#include "log_segment.h"

enum { REC_ENVELOPE = 1, REC_BODY, REC_SHARED, REC_TAKE, REC_FLOOR, REC_NOTE, REC_MOVED };

#define DEV INBOX_DEVICE_KEY
#define ENVELOPE_HEAD (DEV + 16)          /* device seq stored_ms, then the envelope */
#define SHARED_LEN (DEV + 16 + 12)
_Static_assert(INBOX_LOG_SHARED_COST(1, 0) == 2 * LOG_HEADER + SHARED_LEN, "the header's cost of a SHARED");
#define TAKE_LEN (DEV + 8)
#define FLOOR_LEN (DEV + 8)
#define NOTE_MAX 4096

typedef struct {
    log_segment seg;
    uint64_t live;               /* index entries whose bytes lie here */
    uint64_t live_bytes;         /* and their bytes */
    uint64_t ready_at;           /* what it held went forward (floors, moved envelopes) up to
                                    this place: it goes once that is durable (0: not yet) */
} slot;

struct inbox_log {
    char dir[4096];
    inbox_log_config cfg;
    inbox_index ix;
    pthread_rwlock_t lock;       /* the segment table: the writer adds and removes, readers read */
    slot *segs;                  /* ascending by number; the last one is written to */
    size_t nsegs, segs_cap;
    uint8_t *buf;                /* the group being filled, for the last segment's tail */
    size_t used, cap;
    bool sync_older;             /* the group also wrote to the segment before the last */
    _Atomic uint64_t durable;    /* the end of what is durable: readers see what lies before */
    bool broken;                 /* an I/O error: no more writes */
    bool starved;                /* a new segment could not be made since the last removal */
    log_segment spare;           /* the next segment, made ahead (fd < 0: none): rotating never
                                    needs room, so a full disk can still move and let go */
    uint64_t salt;               /* mixed into every record's checksum (DIR/salt) */
    uint64_t release_before;     /* the caller needs no NOTE before this segment */
};

static slot *last(inbox_log *l)
{
    return &l->segs[l->nsegs - 1];
}

/* The slot of segment number (under the lock, or on the writer thread), or NULL. */
static slot *find_segment(inbox_log *l, uint64_t number)
{
    size_t lo = 0, hi = l->nsegs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->segs[mid].seg.number < number)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < l->nsegs && l->segs[lo].seg.number == number ? &l->segs[lo] : NULL;
}

static int add_slot(inbox_log *l, const log_segment *s)
{
    pthread_rwlock_wrlock(&l->lock);
    if (l->nsegs == l->segs_cap) {
        size_t cap = l->segs_cap ? l->segs_cap * 2 : 16;
        slot *grown = realloc(l->segs, cap * sizeof *grown);
        if (!grown) {
            pthread_rwlock_unlock(&l->lock);
            return STORE_NOMEM;
        }
        l->segs = grown;
        l->segs_cap = cap;
    }
    l->segs[l->nsegs++] = (slot){.seg = *s};
    pthread_rwlock_unlock(&l->lock);
    return STORE_OK;
}

static void hold(slot *s, uint32_t len)
{
    s->live++;
    s->live_bytes += len;
}

static void release(slot *s, uint32_t len)
{
    if (s && s->live) {
        s->live--;
        s->live_bytes -= s->live_bytes > len ? len : s->live_bytes;
    }
}

/* ---- writing ------------------------------------------------------------------------ */

/* Writes the group so far at the last segment's tail (not durable yet). */
static int flush(inbox_log *l)
{
    if (!l->used)
        return STORE_OK;
    int rc = log_segment_write(&last(l)->seg, l->buf, l->used);
    if (rc != STORE_OK) {
        l->broken = true;
        return rc;
    }
    l->used = 0;
    return STORE_OK;
}

/* Makes the next segment ahead of need; on a full disk there is none (starved). */
static void make_spare(inbox_log *l)
{
    uint64_t number = last(l)->seg.number + 1;
    int rc = number > UINT32_MAX ? STORE_FULL /* places hold 32-bit numbers */
                                 : log_segment_create(&l->spare, l->dir, number, l->cfg.segment_bytes);
    if (rc != STORE_OK)
        l->spare.fd = -1;
    l->starved = rc != STORE_OK;
}

/* What a record may draw on when the disk is full: a send nothing (it is refused); a
 * moved envelope the spare segment (so the oldest segment can still be emptied and go);
 * a take or a floor the spare and the reserve at the end of the current segment. */
enum { ROOM_SEND, ROOM_MOVE, ROOM_TAKE };

/* Room for a record of len payload bytes in the group, in the last segment (the next one
 * if it is full). Returns its start in l->buf. */
static uint8_t *room(inbox_log *l, size_t len, int kind, int *rc)
{
    size_t need = LOG_HEADER + len;
    slot *s = last(l);
    size_t left = s->seg.capacity - s->seg.tail - l->used;
    size_t keep = kind == ROOM_TAKE ? 0 : l->cfg.reserve_bytes;
    if (need + keep > left) {
        if (need > l->cfg.segment_bytes - l->cfg.reserve_bytes) {
            *rc = STORE_INVALID;
            return NULL;
        }
        if (l->sync_older) { /* at most two segments per group: write and sync the older */
            if ((*rc = flush(l)) != STORE_OK || (*rc = log_segment_sync(&l->segs[l->nsegs - 2].seg)) != STORE_OK)
                return NULL;
        }
        if (l->spare.fd < 0)
            make_spare(l);
        log_segment behind = {.fd = -1};
        if (l->spare.fd >= 0 && kind == ROOM_SEND) {
            /* a send takes the spare only if another can be made behind it: the last
             * spare is kept for emptying old segments */
            uint64_t number = l->spare.number + 1;
            if (number > UINT32_MAX || log_segment_create(&behind, l->dir, number, l->cfg.segment_bytes) != STORE_OK) {
                behind.fd = -1;
                l->starved = true;
                *rc = STORE_FULL;
                return NULL;
            }
        }
        if (l->spare.fd < 0) {
            if (need > left || kind != ROOM_TAKE) { /* no new segment: the reserve is for takes */
                *rc = STORE_FULL;
                return NULL;
            }
        } else {
            if ((*rc = flush(l)) != STORE_OK || (*rc = add_slot(l, &l->spare)) != STORE_OK) {
                if (behind.fd >= 0)
                    log_segment_close(&behind);
                return NULL;
            }
            l->spare = behind;
            l->sync_older = true;
            if (l->spare.fd < 0)
                make_spare(l); /* the next one, for the next rotation */
        }
    }
    if (l->used + need > l->cap) {
        size_t cap = l->cap ? l->cap : 1 << 16;
        while (cap < l->used + need)
            cap *= 2;
        uint8_t *grown = realloc(l->buf, cap);
        if (!grown) {
            *rc = STORE_NOMEM;
            return NULL;
        }
        l->buf = grown;
        l->cap = cap;
    }
    *rc = STORE_OK;
    return l->buf + l->used;
}

/* The place in the log where the group being filled ends now. */
static uint64_t place_now(inbox_log *l)
{
    return last(l)->seg.number << 32 | (last(l)->seg.tail + l->used);
}

/* What a segment's records are checksummed with: its number and the log's salt, so that
 * bytes a client chose cannot pass for a record. */
static uint64_t seed_of(const inbox_log *l, uint64_t number)
{
    return number ^ l->salt;
}

/* Seals the record room() gave and counts it in the group; returns where its payload
 * will lie in the last segment. */
static uint32_t seal(inbox_log *l, uint8_t *rec, uint8_t type, size_t len)
{
    log_record_seal(rec, seed_of(l, last(l)->seg.number), type, len);
    uint32_t at = (uint32_t)(last(l)->seg.tail + l->used + LOG_HEADER);
    l->used += LOG_HEADER + len;
    return at;
}

static int writable(inbox_log *l)
{
    return l->broken ? STORE_IO : STORE_OK;
}

/* An ENVELOPE or MOVED record's payload before the envelope: device, seq, stored time. */
static void envelope_head(uint8_t *p, const uint8_t key[DEV], uint64_t seq, uint64_t stored_ms)
{
    memcpy(p, key, DEV);
    log_put64(p + DEV, seq);
    log_put64(p + DEV + 8, stored_ms);
}

/* Where the payload of the next record sealed will lie in the last segment. */
static uint32_t next_payload(inbox_log *l)
{
    return (uint32_t)(last(l)->seg.tail + l->used + LOG_HEADER);
}

int inbox_log_append(inbox_log *l, const store_device *d, uint64_t stored_ms, const uint8_t *envelope, size_t len,
                     uint64_t *seq)
{
    int rc = writable(l);
    uint8_t key[DEV];
    inbox_device_key(key, d);
    uint8_t *rec = rc == STORE_OK ? room(l, ENVELOPE_HEAD + len, ROOM_SEND, &rc) : NULL;
    if (!rec)
        return rc;
    /* the index gives the seq; the record is sealed only once it did */
    inbox_entry e = {.stored_ms = stored_ms, .segment = (uint32_t)last(l)->seg.number,
                     .offset = next_payload(l) + ENVELOPE_HEAD, .len = (uint32_t)len};
    if ((rc = inbox_index_append(&l->ix, key, &e, e.segment)) != STORE_OK)
        return rc;
    envelope_head(rec + LOG_HEADER, key, e.seq, stored_ms);
    memcpy(rec + LOG_HEADER + ENVELOPE_HEAD, envelope, len);
    seal(l, rec, REC_ENVELOPE, ENVELOPE_HEAD + len);
    hold(last(l), e.len);
    *seq = e.seq;
    return STORE_OK;
}

int inbox_log_reserve(inbox_log *l, size_t bytes)
{
    int rc = writable(l);
    if (rc == STORE_OK && bytes > LOG_HEADER)
        room(l, bytes - LOG_HEADER, ROOM_SEND, &rc);
    return rc;
}

int inbox_log_append_at(inbox_log *l, const store_device *d, uint64_t seq, uint64_t stored_ms,
                        const uint8_t *envelope, size_t len)
{
    int rc = writable(l);
    uint8_t key[DEV];
    inbox_device_key(key, d);
    uint64_t next, held, bytes;
    inbox_index_usage(&l->ix, key, &held, &bytes, &next);
    if (rc != STORE_OK || seq < next)
        return rc;
    uint8_t *rec = room(l, ENVELOPE_HEAD + len, ROOM_SEND, &rc);
    if (!rec)
        return rc;
    envelope_head(rec + LOG_HEADER, key, seq, stored_ms);
    memcpy(rec + LOG_HEADER + ENVELOPE_HEAD, envelope, len);
    uint32_t at = seal(l, rec, REC_ENVELOPE, ENVELOPE_HEAD + len);
    inbox_entry e = {.seq = seq, .stored_ms = stored_ms, .segment = (uint32_t)last(l)->seg.number,
                     .offset = at + ENVELOPE_HEAD, .len = (uint32_t)len};
    bool added;
    if ((rc = inbox_index_replay(&l->ix, key, &e, e.segment, &added)) == STORE_OK && added)
        hold(last(l), e.len);
    return rc;
}

int inbox_log_floor(inbox_log *l, const store_device *d, uint64_t next)
{
    int rc = writable(l);
    uint8_t *rec = rc == STORE_OK ? room(l, FLOOR_LEN, ROOM_TAKE, &rc) : NULL;
    if (!rec)
        return rc;
    inbox_device_key(rec + LOG_HEADER, d);
    log_put64(rec + LOG_HEADER + DEV, next);
    uint8_t key[DEV];
    memcpy(key, rec + LOG_HEADER, DEV);
    seal(l, rec, REC_FLOOR, FLOOR_LEN);
    return inbox_index_seq_floor(&l->ix, key, next, (uint32_t)last(l)->seg.number);
}

int inbox_log_append_shared(inbox_log *l, const store_device *devices, size_t n, uint64_t stored_ms,
                            const uint8_t *envelope, size_t len, uint64_t *seqs)
{
    int rc = writable(l);
    /* the body and its copies in one segment: room for all of them first */
    size_t total = LOG_HEADER + len + n * (LOG_HEADER + SHARED_LEN);
    uint8_t *rec = rc == STORE_OK ? room(l, total - LOG_HEADER, ROOM_SEND, &rc) : NULL;
    if (!rec)
        return rc;
    memcpy(rec + LOG_HEADER, envelope, len);
    uint32_t body = seal(l, rec, REC_BODY, len);
    slot *s = last(l);
    for (size_t i = 0; i < n; i++) {
        uint8_t key[DEV];
        inbox_device_key(key, &devices[i]);
        inbox_entry e = {.stored_ms = stored_ms, .segment = (uint32_t)s->seg.number, .offset = body,
                         .len = (uint32_t)len};
        if ((rc = inbox_index_append(&l->ix, key, &e, e.segment)) != STORE_OK) {
            l->broken = true; /* half a message in the group: it must not be committed */
            return rc;
        }
        uint8_t *r = l->buf + l->used, *p = r + LOG_HEADER;
        envelope_head(p, key, e.seq, stored_ms);
        log_put32(p + DEV + 16, (uint32_t)s->seg.number);
        log_put32(p + DEV + 20, body);
        log_put32(p + DEV + 24, (uint32_t)len);
        seal(l, r, REC_SHARED, SHARED_LEN);
        hold(s, e.len);
        seqs[i] = e.seq;
    }
    return STORE_OK;
}

/* The bytes of an entry: in a segment, or still in the group being filled. */
static const uint8_t *bytes_of(inbox_log *l, const inbox_entry *e)
{
    slot *s = find_segment(l, e->segment);
    if (!s)
        return NULL;
    if (s == last(l) && e->offset >= s->seg.tail)
        return l->buf + (e->offset - s->seg.tail);
    return s->seg.map + e->offset;
}

typedef struct {
    inbox_log *l;
    store_envelope_fn fn;
    void *ctx;
} take_ctx;

static void taken_entry(void *ctx, const uint8_t key[DEV], const inbox_entry *e)
{
    take_ctx *t = ctx;
    (void)key;
    slot *s = find_segment(t->l, e->segment);
    if (t->fn) {
        const uint8_t *data = bytes_of(t->l, e);
        if (data)
            t->fn(t->ctx, e->seq, e->stored_ms, data, e->len);
    }
    release(s, e->len);
}

static int take_key(inbox_log *l, const uint8_t key[DEV], uint64_t up_to, store_envelope_fn fn, void *ctx,
                    size_t *taken)
{
    int rc = writable(l);
    uint8_t *rec = rc == STORE_OK ? room(l, TAKE_LEN, ROOM_TAKE, &rc) : NULL;
    if (!rec)
        return rc;
    memcpy(rec + LOG_HEADER, key, DEV);
    log_put64(rec + LOG_HEADER + DEV, up_to);
    size_t n = 0;
    take_ctx t = {l, fn, ctx};
    inbox_index_take(&l->ix, key, up_to, taken_entry, &t, &n);
    if (n)
        seal(l, rec, REC_TAKE, TAKE_LEN); /* nothing taken: no record */
    if (taken)
        *taken = n;
    return STORE_OK;
}

int inbox_log_take(inbox_log *l, const store_device *d, uint64_t up_to, store_envelope_fn fn, void *ctx,
                   size_t *taken)
{
    uint8_t key[DEV];
    inbox_device_key(key, d);
    return take_key(l, key, up_to, fn, ctx, taken);
}

typedef struct {
    inbox_log *l;
    size_t removed;
    int rc;
} expire_ctx;

static void expire_device(void *ctx, const uint8_t key[DEV], uint64_t up_to)
{
    expire_ctx *x = ctx;
    size_t n = 0;
    if (x->rc == STORE_OK)
        x->rc = take_key(x->l, key, up_to, NULL, NULL, &n);
    x->removed += n;
}

int inbox_log_expire(inbox_log *l, uint64_t cutoff_ms, size_t max, size_t *removed)
{
    expire_ctx x = {l, 0, writable(l)};
    if (x.rc == STORE_OK)
        inbox_index_expired(&l->ix, cutoff_ms, max, expire_device, &x);
    *removed = x.removed;
    return x.rc;
}

int inbox_log_note(inbox_log *l, const uint8_t *data, size_t len)
{
    int rc = writable(l);
    if (rc == STORE_OK && len > NOTE_MAX)
        rc = STORE_INVALID;
    uint8_t *rec = rc == STORE_OK ? room(l, len, ROOM_SEND, &rc) : NULL;
    if (!rec)
        return rc;
    memcpy(rec + LOG_HEADER, data, len);
    seal(l, rec, REC_NOTE, len);
    return STORE_OK;
}

void inbox_log_usage(inbox_log *l, const store_device *d, uint64_t *envelopes, uint64_t *bytes)
{
    uint8_t key[DEV];
    inbox_device_key(key, d);
    inbox_index_usage(&l->ix, key, envelopes, bytes, NULL);
}

uint64_t inbox_log_segment(const inbox_log *l)
{
    return l->nsegs ? l->segs[l->nsegs - 1].seg.number : 0;
}

int inbox_log_commit(inbox_log *l)
{
    int rc = writable(l);
    if (rc == STORE_OK && l->sync_older && (rc = log_segment_sync(&l->segs[l->nsegs - 2].seg)) != STORE_OK)
        l->broken = true;
    if (rc == STORE_OK && (rc = flush(l)) == STORE_OK && (rc = log_segment_sync(&last(l)->seg)) != STORE_OK)
        l->broken = true;
    if (rc != STORE_OK)
        return rc;
    l->sync_older = false;
    atomic_store_explicit(&l->durable, place_now(l), memory_order_release);
    return STORE_OK;
}

/* ---- removing segments ---------------------------------------------------------------- */

typedef struct {
    inbox_log *l;
    int rc;
    size_t written;
} floor_ctx;

static void write_floor(void *ctx, const uint8_t key[DEV], uint64_t next_seq)
{
    floor_ctx *f = ctx;
    if (f->rc != STORE_OK)
        return;
    f->written++;
    uint8_t *rec = room(f->l, FLOOR_LEN, ROOM_TAKE, &f->rc);
    if (!rec)
        return;
    memcpy(rec + LOG_HEADER, key, DEV);
    log_put64(rec + LOG_HEADER + DEV, next_seq);
    seal(f->l, rec, REC_FLOOR, FLOOR_LEN);
}

typedef struct {
    inbox_log *l;
    uint32_t head;               /* its number: a new segment may move the table */
    int rc;
} move_ctx;

/* An envelope still held in the head segment is written again at the tail (a MOVED
 * record: a restart puts it back in seq order) and its entry points there. */
static void move_entry(void *ctx, const inbox_device *d, inbox_entry *e)
{
    move_ctx *m = ctx;
    inbox_log *l = m->l;
    if (m->rc != STORE_OK || e->segment != m->head)
        return;
    uint8_t *rec = room(l, ENVELOPE_HEAD + e->len, ROOM_MOVE, &m->rc); /* the spare, not the reserve */
    if (!rec)
        return;
    slot *head = &l->segs[0];
    envelope_head(rec + LOG_HEADER, d->key, e->seq, e->stored_ms);
    memcpy(rec + LOG_HEADER + ENVELOPE_HEAD, head->seg.map + e->offset, e->len);
    uint32_t at = seal(l, rec, REC_MOVED, ENVELOPE_HEAD + e->len);
    release(head, e->len);
    e->segment = (uint32_t)last(l)->seg.number;
    e->offset = at + ENVELOPE_HEAD;
    hold(last(l), e->len);
}

/* Is the head worth emptying by moving what it still holds? When the disk is short of
 * room, or the log is long and the head mostly taken. */
static bool worth_moving(const inbox_log *l, const slot *head)
{
    return l->starved || (l->nsegs > 4 && head->live_bytes < head->seg.capacity / 4);
}

int inbox_log_release_before(inbox_log *l, uint64_t segment)
{
    if (segment > l->release_before)
        l->release_before = segment;
    int rc = writable(l);
    uint64_t durable = atomic_load_explicit(&l->durable, memory_order_acquire);
    while (rc == STORE_OK && l->nsegs > 1 && l->segs[0].seg.number < l->release_before) {
        slot *head = &l->segs[0];
        if (!head->ready_at) {
            bool wrote = false;
            if (head->live) { /* envelopes held for long pin it: move them forward */
                if (!worth_moving(l, head))
                    break;
                move_ctx m = {l, (uint32_t)head->seg.number, STORE_OK};
                inbox_index_visit(&l->ix, move_entry, &m);
                head = &l->segs[0];
                wrote = true;
                if (head->live) { /* no room for all of them yet: some went, the rest wait */
                    rc = inbox_log_commit(l);
                    break;
                }
            }
            /* then the next seqs it holds go forward */
            floor_ctx f = {l, STORE_OK, 0};
            uint32_t now = (uint32_t)last(l)->seg.number;
            inbox_index_floors(&l->ix, (uint32_t)head->seg.number, now, write_floor, &f);
            if ((rc = f.rc) != STORE_OK)
                break;
            wrote |= f.written > 0;
            head = &l->segs[0]; /* a new segment may have moved the table */
            head->ready_at = wrote ? place_now(l) : 1; /* nothing carried: it may go now */
            if (wrote) { /* what was carried is made durable now: moved envelopes would
                            otherwise hide their inboxes until the next commit */
                if ((rc = inbox_log_commit(l)) != STORE_OK)
                    break;
                durable = atomic_load_explicit(&l->durable, memory_order_acquire);
                head = &l->segs[0];
            }
        }
        if (head->ready_at > durable)
            break;
        uint64_t number = head->seg.number;
        pthread_rwlock_wrlock(&l->lock);
        log_segment_close(&head->seg);
        memmove(&l->segs[0], &l->segs[1], (l->nsegs - 1) * sizeof *l->segs);
        l->nsegs--;
        pthread_rwlock_unlock(&l->lock);
        rc = log_segment_remove(l->dir, number);
        l->starved = false;
        if (rc == STORE_OK && l->spare.fd < 0)
            make_spare(l); /* the room it gave back */
    }
    return rc;
}

bool inbox_log_starved(const inbox_log *l)
{
    return l->starved;
}

/* ---- reading -------------------------------------------------------------------------- */

int inbox_log_read(inbox_log *l, const store_device *d, uint64_t after, size_t max, store_envelope_fn fn, void *ctx)
{
    uint8_t key[DEV];
    inbox_device_key(key, d);
    inbox_entry batch[64];
    uint64_t durable = atomic_load_explicit(&l->durable, memory_order_acquire);
    size_t done = 0;
    while (done < max) {
        size_t want = max - done < 64 ? max - done : 64;
        size_t n = inbox_index_read(&l->ix, key, after, durable, batch, want);
        if (!n)
            break;
        bool go_on = true;
        pthread_rwlock_rdlock(&l->lock);
        for (size_t i = 0; i < n && go_on; i++) {
            slot *s = find_segment(l, batch[i].segment);
            if (!s || batch[i].offset + (uint64_t)batch[i].len > s->seg.capacity)
                continue; /* taken (and its segment gone) since it was copied out */
            go_on = fn(ctx, batch[i].seq, batch[i].stored_ms, s->seg.map + batch[i].offset, batch[i].len);
            done++;
        }
        pthread_rwlock_unlock(&l->lock);
        after = batch[n - 1].seq;
        if (!go_on || n < want)
            break;
    }
    return STORE_OK;
}

void inbox_log_get_stats(inbox_log *l, inbox_log_stats *out)
{
    pthread_rwlock_rdlock(&l->lock);
    out->segments = l->nsegs;
    out->disk_bytes = 0;
    for (size_t i = 0; i < l->nsegs; i++)
        out->disk_bytes += l->segs[i].seg.capacity;
    pthread_rwlock_unlock(&l->lock);
    out->envelopes = l->ix.envelopes;
    out->bytes = l->ix.bytes;
    out->written = 0;
    for (size_t i = 0; i < l->nsegs; i++)
        out->written += l->segs[i].seg.tail;
    out->last_segment = l->nsegs ? last(l)->seg.number : 0;
    out->last_tail = l->nsegs ? last(l)->seg.tail : 0;
}

/* ---- opening: replay ------------------------------------------------------------------ */

typedef struct {
    inbox_log *l;
    slot *s;
    inbox_log_report *rep;
    int rc;
} replay_ctx;

static void replay_taken(void *ctx, const uint8_t key[DEV], const inbox_entry *e)
{
    inbox_log *l = ctx;
    (void)key;
    release(find_segment(l, e->segment), e->len);
}

/* An entry read back from an ENVELOPE or SHARED record. */
static bool replay_entry(replay_ctx *r, const uint8_t key[DEV], inbox_entry *e, bool moved)
{
    inbox_log *l = r->l;
    slot *at = find_segment(l, e->segment);
    bool added;
    if (!at || e->offset + (uint64_t)e->len > at->seg.capacity) {
        r->rep->misplaced++; /* its bytes are not there: damage, and nothing to deliver */
        return true;
    }
    r->rc = moved ? inbox_index_replay_moved(&l->ix, key, e, &added)
                  : inbox_index_replay(&l->ix, key, e, (uint32_t)r->s->seg.number, &added);
    if (r->rc != STORE_OK)
        return false;
    if (added) /* not a copy of one seen before */
        hold(at, e->len);
    return true;
}

static bool replay_record(void *ctx, uint64_t offset, uint8_t type, const uint8_t *p, size_t len)
{
    replay_ctx *r = ctx;
    inbox_log *l = r->l;
    uint32_t segno = (uint32_t)r->s->seg.number;
    inbox_entry e = {0};
    r->rep->records++;
    switch (type) {
    case REC_ENVELOPE:
    case REC_MOVED: /* an envelope moved forward out of an old segment: it goes back in seq order */
        if (len < ENVELOPE_HEAD)
            return true;
        e.seq = log_get64(p + DEV);
        e.stored_ms = log_get64(p + DEV + 8);
        e.segment = segno;
        e.offset = (uint32_t)(offset + LOG_HEADER + ENVELOPE_HEAD);
        e.len = (uint32_t)(len - ENVELOPE_HEAD);
        return replay_entry(r, p, &e, type == REC_MOVED);
    case REC_SHARED:
        if (len != SHARED_LEN)
            return true;
        e.seq = log_get64(p + DEV);
        e.stored_ms = log_get64(p + DEV + 8);
        e.segment = log_get32(p + DEV + 16);
        e.offset = log_get32(p + DEV + 20);
        e.len = log_get32(p + DEV + 24);
        return replay_entry(r, p, &e, false);
    case REC_TAKE:
        if (len == TAKE_LEN)
            inbox_index_take(&l->ix, p, log_get64(p + DEV), replay_taken, l, NULL);
        return true;
    case REC_FLOOR:
        if (len == FLOOR_LEN && (r->rc = inbox_index_seq_floor(&l->ix, p, log_get64(p + DEV), segno)) != STORE_OK)
            return false;
        return true;
    case REC_NOTE:
        if (l->cfg.note)
            l->cfg.note(l->cfg.ctx, segno, p, len);
        return true;
    default: /* BODY: bytes only; a type from a newer version: skipped */
        return true;
    }
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}


#define WRITTEN_LAST 3 /* the segments a crash may have caught mid-group: the spare, the
                          one being written, and the one before it in a group that rotated */

/* The log's salt: DIR/salt, 8 random bytes made with the log (none: a log without
 * segments yet; a read-only look at a missing one reads as 0). */
static int load_salt(inbox_log *l, bool have_segments, bool readonly)
{
    char path[4200];
    uint8_t b[8];
    snprintf(path, sizeof path, "%s/salt", l->dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, b, sizeof b);
        close(fd);
        if (n != (ssize_t)sizeof b)
            return STORE_INVALID;
        l->salt = log_get64(b);
        return STORE_OK;
    }
    if (have_segments)
        return STORE_INVALID; /* segments whose records cannot be checked */
    if (readonly)
        return STORE_OK;
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
        return STORE_IO;
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && write(fd, b, sizeof b) == (ssize_t)sizeof b && fsync(fd) == 0;
    if (fd >= 0)
        close(fd);
    if (!ok)
        return errno == ENOSPC ? STORE_FULL : STORE_IO;
    l->salt = log_get64(b);
    return STORE_OK;
}

int inbox_log_open(inbox_log **out, const char *dir, const inbox_log_config *cfg, inbox_log_report *report)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    memset(report, 0, sizeof *report);
    *out = NULL;
    if (!cfg->readonly && mkdir(dir, 0700) != 0 && errno != EEXIST)
        return STORE_IO;
    inbox_log *l = calloc(1, sizeof *l);
    if (!l)
        return STORE_NOMEM;
    snprintf(l->dir, sizeof l->dir, "%s", dir);
    l->cfg = *cfg;
    l->spare.fd = -1;
    if (!l->cfg.segment_bytes)
        l->cfg.segment_bytes = 64u << 20;
    if (!l->cfg.reserve_bytes)
        l->cfg.reserve_bytes = l->cfg.segment_bytes / 64 < (1u << 20) ? l->cfg.segment_bytes / 64 : 1u << 20;
    inbox_index_init(&l->ix);
    pthread_rwlock_init(&l->lock, NULL);
    uint64_t *numbers = NULL;
    size_t n = 0;
    int rc = log_segment_list(dir, &numbers, &n);
    if (rc == STORE_OK)
        rc = load_salt(l, n > 0, cfg->readonly);
    for (size_t i = 0; rc == STORE_OK && i < n; i++) {
        log_segment s;
        if ((rc = log_segment_open(&s, dir, numbers[i], cfg->readonly)) == STORE_NOT_FOUND && cfg->readonly) {
            rc = STORE_OK; /* removed by parleyd since the listing */
            continue;
        }
        if (rc != STORE_OK || (rc = add_slot(l, &s)) != STORE_OK)
            break;
        slot *sl = last(l);
        bool written_last = i + WRITTEN_LAST >= n;
        replay_ctx r = {l, sl, report, STORE_OK};
        log_scan_result res;
        log_scan(sl->seg.map, sl->seg.capacity, seed_of(l, sl->seg.number), !written_last, replay_record, &r, &res);
        if ((rc = r.rc) != STORE_OK)
            break;
        sl->seg.tail = res.end;
        report->segments++;
        report->damaged += res.damaged;
        report->damaged_bytes += res.damaged_bytes;
        if (written_last) {
            /* zeros over what a torn group left, so that none of it can ever verify
             * after the records written from now on */
            report->torn_bytes += res.torn_bytes;
            if (res.torn_bytes && !cfg->readonly && (rc = log_segment_zero(&sl->seg, res.end, res.torn_bytes)) == STORE_OK)
                rc = log_segment_sync(&sl->seg);
        } else if (res.torn_bytes) { /* only the last ones were being written */
            report->damaged++;
            report->damaged_bytes += res.torn_bytes;
        }
    }
    free(numbers);
    l->broken = cfg->readonly; /* no writes */
    if (rc == STORE_OK && l->nsegs == 0 && !cfg->readonly) {
        log_segment s;
        if ((rc = log_segment_create(&s, dir, 1, l->cfg.segment_bytes)) == STORE_OK && (rc = add_slot(l, &s)) != STORE_OK)
            log_segment_close(&s);
    }
    if (rc == STORE_OK && !cfg->readonly)
        make_spare(l);
    if (rc == STORE_OK && l->nsegs) /* everything replayed is durable */
        atomic_store_explicit(&l->durable, place_now(l), memory_order_release);
    report->envelopes = l->ix.envelopes;
    report->seconds = seconds_since(&t0);
    if (rc != STORE_OK) {
        inbox_log_close(l);
        return rc;
    }
    *out = l;
    return STORE_OK;
}

uint64_t inbox_log_seed(const inbox_log *l, uint64_t segment)
{
    return seed_of(l, segment);
}

void inbox_log_close(inbox_log *l)
{
    if (!l)
        return;
    if (l->spare.fd >= 0)
        log_segment_close(&l->spare);
    for (size_t i = 0; i < l->nsegs; i++)
        log_segment_close(&l->segs[i].seg);
    free(l->segs);
    free(l->buf);
    inbox_index_free(&l->ix);
    pthread_rwlock_destroy(&l->lock);
    free(l);
}
