/* test_log.c - the inbox log's segments and records on a real filesystem: records
 * verify only in their own segment; a last record cut at every byte offset (the file
 * ending there, or the rest of a preallocated segment zeros) is dropped while every
 * complete one is kept; damage in the middle is reported and skipped, never read past;
 * segments are made, listed in order, and removed. */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "inbox_index.h"
#include "inbox_log.h"
#include "log_record.h"
#include "log_segment.h"
#include "store.h"

static char dir[256];

typedef struct {
    size_t n;
    uint64_t sum;            /* of the payloads' first bytes, to see they are the ones written */
    size_t lens[64];
} seen;

static bool count(void *ctx, uint64_t offset, uint8_t type, const uint8_t *payload, size_t len)
{
    seen *s = ctx;
    (void)offset;
    if (s->n < 64)
        s->lens[s->n] = len;
    s->n++;
    s->sum += type + (len ? payload[0] : 0);
    return true;
}

/* n records of lengths 0, 7, 14, ... with payload bytes i + 1, sealed for segment segno. */
static size_t build(uint8_t *buf, uint64_t segno, int n, size_t *starts)
{
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)i * 7;
        memset(buf + off + LOG_HEADER, i + 1, len);
        log_record_seal(buf + off, segno, (uint8_t)(i % 5 + 1), len);
        if (starts)
            starts[i] = off;
        off += LOG_HEADER + len;
    }
    return off;
}

static void test_records(void)
{
    static uint8_t buf[8192];
    size_t starts[20];
    size_t used = build(buf, 42, 20, starts);
    seen s = {0};
    log_scan_result r;
    log_scan(buf, sizeof buf, 42, true, count, &s, &r); /* the rest of buf is zeros */
    CHECK(s.n == 20 && r.records == 20 && r.end == used && r.torn_bytes == 0 && r.damaged == 0);
    CHECK(s.lens[19] == 19 * 7);
    memset(&s, 0, sizeof s);
    log_scan(buf, sizeof buf, 43, true, count, &s, &r); /* another segment's: nothing verifies */
    CHECK(s.n == 0 && r.end == 0 && r.torn_bytes == used);

    /* damage in the middle: one byte of record 7's payload; reported, then on at 8 */
    buf[starts[7] + LOG_HEADER + 3] ^= 0x40;
    memset(&s, 0, sizeof s);
    log_scan(buf, sizeof buf, 42, true, count, &s, &r);
    CHECK(s.n == 19 && r.damaged == 1 && r.first_damage == starts[7] && r.damaged_bytes == starts[8] - starts[7]);
    CHECK(r.end == used && r.torn_bytes == 0);
    /* where a crash may have kept a group's pages in any order, damage is the end */
    memset(&s, 0, sizeof s);
    log_scan(buf, sizeof buf, 42, false, count, &s, &r);
    CHECK(s.n == 7 && r.end == starts[7] && r.damaged == 0 && r.torn_bytes == used - starts[7]);
    buf[starts[7] + LOG_HEADER + 3] ^= 0x40;
    /* a length that points past the buffer is damage, not a read out of bounds */
    log_put32(buf + starts[3] + 8, 0x7fffffff);
    memset(&s, 0, sizeof s);
    log_scan(buf, used, 42, true, count, &s, &r);
    CHECK(s.n == 19 && r.damaged == 1 && r.end == used);
}

/* The last record cut at every byte offset: the file ends there, or zeros follow. */
static void test_torn_tail(void)
{
    static uint8_t good[4096], cut[4096];
    size_t starts[12];
    size_t used = build(good, 7, 12, starts);
    size_t last = starts[11];
    seen kept = {0}; /* what the 11 complete records show */
    log_scan_result r;
    log_scan(good, last, 7, true, count, &kept, &r);
    int ok_end = 0, ok_zeros = 0, ok_garbage = 0, cases = 0;
    for (size_t at = last; at < used; at++, cases++) {
        seen s = {0};
        log_scan(good, at, 7, true, count, &s, &r); /* the file ends at `at` */
        ok_end += s.n == 11 && s.sum == kept.sum && r.end == last && r.damaged == 0 &&
                  r.torn_bytes <= at - last; /* zeros at its very end look like the end already */
        memset(cut, 0, sizeof cut); /* a preallocated segment: zeros after the cut */
        memcpy(cut, good, at);
        memset(&s, 0, sizeof s);
        log_scan(cut, sizeof cut, 7, true, count, &s, &r);
        ok_zeros += s.n == 11 && s.sum == kept.sum && r.end == last && r.damaged == 0;
        memset(cut + at, 0xA5, used - at); /* or garbage where the record's rest was */
        memset(&s, 0, sizeof s);
        log_scan(cut, sizeof cut, 7, true, count, &s, &r);
        ok_garbage += s.n == 11 && s.sum == kept.sum && r.end == last && r.damaged == 0 && r.torn_bytes == used - last;
    }
    if (ok_end != cases || ok_zeros != cases || ok_garbage != cases)
        fprintf(stderr, "torn tail: %d, %d, %d of %d cuts right\n", ok_end, ok_zeros, ok_garbage, cases);
    CHECK(ok_end == cases && ok_zeros == cases && ok_garbage == cases);
    printf("torn tail: the last record cut at each of its %d byte offsets, 3 ways: 11 of 12 records kept each time\n",
           cases);
}

/* Segments on disk: made with their room, written, read back through the mapping after
 * a reopen, listed in order, removed. A segment too large for the disk is STORE_FULL. */
static void test_segments(void)
{
    snprintf(dir, sizeof dir, "/tmp/parley-test-log-%d", (int)getpid());
    remove_tree(dir);
    CHECK(mkdir(dir, 0700) == 0);
    log_segment s;
    static uint8_t buf[4096];
    size_t used = build(buf, 3, 10, NULL);
    CHECK_RC(log_segment_create(&s, dir, 3, 1 << 20), STORE_OK);
    CHECK_RC(log_segment_create(&(log_segment){0}, dir, 3, 1 << 20), STORE_IO); /* exists */
    CHECK_RC(log_segment_write(&s, buf, used), STORE_OK);
    CHECK_RC(log_segment_sync(&s), STORE_OK);
    seen n = {0};
    log_scan_result r;
    log_scan(s.map, s.capacity, 3, true, count, &n, &r); /* written, seen through the map at once */
    CHECK(n.n == 10 && r.end == used);
    CHECK_RC(log_segment_write(&s, buf, (1 << 20) - used + 1), STORE_FULL); /* past its room */
    log_segment_close(&s);
    log_segment t;
    CHECK_RC(log_segment_create(&t, dir, 0x1f, 4096), STORE_OK);
    log_segment_close(&t);
    CHECK_RC(log_segment_open(&s, dir, 3, false), STORE_OK);
    memset(&n, 0, sizeof n);
    log_scan(s.map, s.capacity, 3, true, count, &n, &r);
    CHECK(n.n == 10 && r.end == used && s.capacity == 1 << 20);
    log_segment_close(&s);
    uint64_t *list;
    size_t count_n;
    CHECK_RC(log_segment_list(dir, &list, &count_n), STORE_OK);
    CHECK(count_n == 2 && list[0] == 3 && list[1] == 0x1f);
    free(list);
    CHECK_RC(log_segment_remove(dir, 3), STORE_OK);
    CHECK_RC(log_segment_open(&s, dir, 3, false), STORE_NOT_FOUND);
    CHECK_RC(log_segment_list(dir, &list, &count_n), STORE_OK);
    CHECK(count_n == 1 && list[0] == 0x1f);
    free(list);
    CHECK_RC(log_segment_create(&s, dir, 4, (size_t)1 << 50), STORE_FULL); /* a petabyte */
    remove_tree(dir);
}

static void key_of(uint8_t key[INBOX_DEVICE_KEY], uint8_t account, uint32_t device)
{
    store_device d = {.device = device};
    memset(d.account, account, sizeof d.account);
    inbox_device_key(key, &d);
}

typedef struct {
    size_t n;
    uint64_t last_seq;
    uint64_t bytes;
} taken;

static void note_taken(void *ctx, const uint8_t key[INBOX_DEVICE_KEY], const inbox_entry *e)
{
    taken *t = ctx;
    (void)key;
    t->n++;
    t->last_seq = e->seq;
    t->bytes += e->len;
}

static void expire_one(void *ctx, const uint8_t key[INBOX_DEVICE_KEY], uint64_t up_to)
{
    inbox_index_take(ctx, key, up_to, NULL, NULL, NULL);
}

static void count_entries(void *ctx, const inbox_device *d, inbox_entry *e)
{
    (void)d, (void)e;
    (*(size_t *)ctx)++;
}

/* The index: seqs per device, rings that grow and wrap, takes up to a seq, reads that
 * stop at what is not durable yet, replay of seqs given, expiry in time order, and
 * 20,000 devices kept apart. */
static void test_index(void)
{
    inbox_index ix;
    CHECK_RC(inbox_index_init(&ix), STORE_OK);
    uint8_t a[INBOX_DEVICE_KEY], b[INBOX_DEVICE_KEY];
    key_of(a, 1, 1);
    key_of(b, 1, 2);
    bool seqs = true;
    for (uint32_t i = 0; i < 100; i++) {
        inbox_entry e = {.stored_ms = 1000 + i, .segment = 1, .offset = i * 100, .len = 10};
        seqs &= inbox_index_append(&ix, a, &e, 1) == STORE_OK && e.seq == i + 1;
    }
    inbox_entry one = {.stored_ms = 5000, .len = 3};
    CHECK_RC(inbox_index_append(&ix, b, &one, 1), STORE_OK);
    CHECK(seqs && one.seq == 1);
    uint64_t n, bytes, next;
    inbox_index_usage(&ix, a, &n, &bytes, &next);
    CHECK(n == 100 && bytes == 1000 && next == 101 && ix.envelopes == 101 && ix.bytes == 1003);

    static inbox_entry out[256];
    uint64_t all = (uint64_t)3 << 32;
    CHECK(inbox_index_read(&ix, a, 0, (uint64_t)1 << 32 | 9000, out, 256) == 90); /* durable up to there */
    CHECK(inbox_index_read(&ix, a, 0, all, out, 256) == 100);
    CHECK(inbox_index_read(&ix, a, 95, all, out, 256) == 5 && out[0].seq == 96 && out[0].offset == 9500);
    CHECK(inbox_index_read(&ix, a, 0, all, out, 7) == 7 && out[6].seq == 7);
    CHECK(inbox_index_read(&ix, a, 0, 0, out, 256) == 0); /* nothing durable */

    taken t = {0};
    inbox_index_take(&ix, a, 40, note_taken, &t, NULL);
    CHECK(t.n == 40 && t.last_seq == 40 && t.bytes == 400);
    for (uint32_t i = 0; i < 50; i++) { /* the ring wraps and grows with 60 held */
        inbox_entry e = {.stored_ms = 2000 + i, .segment = 2, .offset = i, .len = 1};
        inbox_index_append(&ix, a, &e, 1);
    }
    inbox_index_usage(&ix, a, &n, &bytes, &next);
    CHECK(n == 110 && bytes == 600 + 50 && next == 151);
    CHECK(inbox_index_read(&ix, a, 0, all, out, 256) == 110 && out[0].seq == 41 && out[109].seq == 150);

    /* expiry: a's entries stored before 2010 (seq 41..100 at 1040..1099, 101..110) */
    CHECK(inbox_index_expired(&ix, 2010, 100, expire_one, &ix) == 1); /* b's is at 5000 */
    inbox_index_usage(&ix, a, &n, &bytes, &next);
    CHECK(n == 40 && next == 151);
    CHECK(inbox_index_read(&ix, a, 0, all, out, 1) == 1 && out[0].seq == 111);

    /* replay: seqs as given; one at or below the last is a copy already seen */
    uint8_t c[INBOX_DEVICE_KEY];
    key_of(c, 2, 1);
    inbox_entry r = {.seq = 7, .len = 1};
    bool added = false;
    CHECK_RC(inbox_index_replay(&ix, c, &r, 1, &added), STORE_OK);
    CHECK(added);
    r.seq = 5;
    CHECK_RC(inbox_index_replay(&ix, c, &r, 1, &added), STORE_OK);
    CHECK(!added);
    r.seq = 9;
    CHECK_RC(inbox_index_replay(&ix, c, &r, 1, &added), STORE_OK);
    inbox_index_usage(&ix, c, &n, &bytes, &next);
    CHECK(n == 2 && next == 10);
    CHECK_RC(inbox_index_seq_floor(&ix, c, 50, 1), STORE_OK);
    inbox_index_take(&ix, c, UINT64_MAX, NULL, NULL, NULL);
    inbox_entry after = {.len = 1};
    CHECK_RC(inbox_index_append(&ix, c, &after, 1), STORE_OK);
    CHECK(after.seq == 50); /* the floor holds after a drop */

    bool apart = true;
    for (uint32_t i = 0; i < 20000; i++) {
        uint8_t k[INBOX_DEVICE_KEY];
        key_of(k, 9, i + 1);
        inbox_entry e = {.len = i};
        apart &= inbox_index_append(&ix, k, &e, 1) == STORE_OK && e.seq == 1;
    }
    for (uint32_t i = 0; i < 20000 && apart; i++) {
        uint8_t k[INBOX_DEVICE_KEY];
        key_of(k, 9, i + 1);
        apart &= inbox_index_read(&ix, k, 0, all, out, 4) == 1 && out[0].len == i;
    }
    CHECK(apart);
    size_t visited = 0;
    inbox_index_visit(&ix, count_entries, &visited);
    CHECK(visited == ix.envelopes && visited == 40 + 1 + 1 + 20000);
    inbox_index_free(&ix);
}

typedef struct {
    size_t n;
    uint64_t seqs[2048];
    char text[2048][16];
} got;

static bool collect(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data, size_t len)
{
    got *g = ctx;
    (void)stored_ms;
    if (g->n < 2048 && len < 16) {
        g->seqs[g->n] = seq;
        memcpy(g->text[g->n], data, len);
        g->text[g->n][len] = 0;
    }
    g->n++;
    return true;
}

static store_device device(uint8_t account, uint32_t id)
{
    store_device d = {.device = id};
    memset(d.account, account, sizeof d.account);
    return d;
}

static int append_text(inbox_log *l, store_device d, uint64_t now, const char *text, uint64_t *seq)
{
    return inbox_log_append(l, &d, now, (const uint8_t *)text, strlen(text), seq);
}

/* Under a steady load that expires what it stored a while ago, the log stops growing:
 * segments whose envelopes all went are removed. */
static void test_steady_reclaim(void)
{
    snprintf(dir, sizeof dir, "/tmp/parley-test-reclaim-%d", (int)getpid());
    remove_tree(dir);
    inbox_log_config cfg = {.segment_bytes = 128 << 10, .reserve_bytes = 4 << 10};
    inbox_log_report rep;
    inbox_log *l;
    CHECK_RC(inbox_log_open(&l, dir, &cfg, &rep), STORE_OK);
    static uint8_t envelope[200];
    uint64_t most = 0, at_end = 0;
    for (uint64_t t = 1; t <= 300; t++) { /* 300 "seconds", 50 envelopes each over 20 devices */
        for (int i = 0; i < 50; i++) {
            store_device d = device(3, (uint32_t)(i % 20) + 1);
            uint64_t seq;
            CHECK_RC(inbox_log_append(l, &d, t * 1000, envelope, sizeof envelope, &seq), STORE_OK);
        }
        size_t removed;
        CHECK_RC(inbox_log_expire(l, (t > 10 ? t - 10 : 0) * 1000, 1000, &removed), STORE_OK); /* 10 s retention */
        CHECK_RC(inbox_log_commit(l), STORE_OK);
        CHECK_RC(inbox_log_release_before(l, UINT64_MAX), STORE_OK);
        inbox_log_stats st;
        inbox_log_get_stats(l, &st);
        if (t > 100 && st.segments > most)
            most = st.segments;
        at_end = st.segments;
    }
    /* 10 s of 50 x 252 bytes is about 126 KiB: the live data fits in two segments */
    CHECK(most <= 4 && at_end <= 4);
    printf("reclaim: 15,000 envelopes of 200 bytes (3.7 MiB) with 10 s retention: at most %llu segments of 128 KiB\n",
           (unsigned long long)most);
    inbox_log_close(l);
    remove_tree(dir);
}

/* An envelope held for long (its device away) does not pin the log: once the log is
 * long, the head's last envelopes move forward and the head goes; a reopen puts the
 * moved one back in its seq order, before the device's newer ones. */
static void test_moved(void)
{
    snprintf(dir, sizeof dir, "/tmp/parley-test-moved-%d", (int)getpid());
    remove_tree(dir);
    inbox_log_config cfg = {.segment_bytes = 64 << 10, .reserve_bytes = 4 << 10};
    inbox_log_report rep;
    inbox_log *l;
    CHECK_RC(inbox_log_open(&l, dir, &cfg, &rep), STORE_OK);
    store_device away = device(4, 1), busy = device(4, 2);
    uint64_t seq;
    static uint8_t filler[500];
    CHECK_RC(append_text(l, away, 1000, "old-1", &seq), STORE_OK);
    CHECK_RC(append_text(l, away, 1000, "old-2", &seq), STORE_OK);
    for (int i = 0; i < 1000; i++) { /* 500 KiB for a device that takes everything */
        CHECK_RC(inbox_log_append(l, &busy, 2000, filler, sizeof filler, &seq), STORE_OK);
        if (i % 50 == 49) {
            CHECK_RC(inbox_log_commit(l), STORE_OK);
            CHECK_RC(inbox_log_take(l, &busy, UINT64_MAX, NULL, NULL, NULL), STORE_OK);
        }
    }
    CHECK_RC(append_text(l, away, 3000, "new-3", &seq), STORE_OK);
    CHECK_RC(inbox_log_commit(l), STORE_OK);
    inbox_log_stats before, after;
    inbox_log_get_stats(l, &before);
    for (int round = 0; round < 40; round++) {
        CHECK_RC(inbox_log_release_before(l, UINT64_MAX), STORE_OK);
        CHECK_RC(inbox_log_commit(l), STORE_OK);
    }
    inbox_log_get_stats(l, &after);
    CHECK(before.segments >= 8 && after.segments <= 4);
    printf("moved: 2 envelopes held in the first of %llu segments: %llu left once they moved forward\n",
           (unsigned long long)before.segments, (unsigned long long)after.segments);
    got *g = calloc(1, sizeof *g);
    CHECK_RC(inbox_log_read(l, &away, 0, 10, collect, g), STORE_OK);
    CHECK(g->n == 3 && g->seqs[0] == 1 && strcmp(g->text[0], "old-1") == 0 && strcmp(g->text[2], "new-3") == 0);
    inbox_log_close(l);
    CHECK_RC(inbox_log_open(&l, dir, &cfg, &rep), STORE_OK);
    CHECK(rep.damaged == 0 && rep.misplaced == 0);
    memset(g, 0, sizeof *g);
    CHECK_RC(inbox_log_read(l, &away, 0, 10, collect, g), STORE_OK);
    CHECK(g->n == 3 && g->seqs[0] == 1 && g->seqs[1] == 2 && g->seqs[2] == 3 && strcmp(g->text[1], "old-2") == 0);
    CHECK_RC(inbox_log_append(l, &away, 4000, (const uint8_t *)"x", 1, &seq), STORE_OK);
    CHECK(seq == 4);
    free(g);
    inbox_log_close(l);
    remove_tree(dir);
}

/* The log engine on real files: appends seen only once committed, takes, a reopen that
 * replays it all, one body for 1,000 devices stored once, segments going once nothing
 * in them is held (seqs going on after), and a torn group dropped at reopen. */
static void test_inbox_log(void)
{
    snprintf(dir, sizeof dir, "/tmp/parley-test-inbox-log-%d", (int)getpid());
    remove_tree(dir);
    inbox_log_config cfg = {.segment_bytes = 256 << 10, .reserve_bytes = 8 << 10};
    inbox_log_report rep;
    inbox_log *l;
    CHECK_RC(inbox_log_open(&l, dir, &cfg, &rep), STORE_OK);
    CHECK(rep.segments == 0 && rep.envelopes == 0);
    store_device a = device(1, 1), b = device(1, 2);
    uint64_t seq = 0;
    char text[16];
    static got g;
    for (int i = 0; i < 10; i++) {
        snprintf(text, sizeof text, "a-%d", i);
        CHECK_RC(append_text(l, a, 1000 + (uint64_t)i, text, &seq), STORE_OK);
    }
    CHECK(seq == 10);
    g.n = 0;
    CHECK_RC(inbox_log_read(l, &a, 0, 100, collect, &g), STORE_OK);
    CHECK(g.n == 0); /* not durable yet */
    CHECK_RC(inbox_log_commit(l), STORE_OK);
    CHECK_RC(inbox_log_read(l, &a, 0, 100, collect, &g), STORE_OK);
    CHECK(g.n == 10 && g.seqs[0] == 1 && strcmp(g.text[9], "a-9") == 0);
    size_t took = 0;
    g.n = 0;
    CHECK_RC(inbox_log_take(l, &a, 4, collect, &g, &took), STORE_OK); /* shows what it takes */
    CHECK(took == 4 && g.n == 4 && strcmp(g.text[3], "a-3") == 0);
    CHECK_RC(append_text(l, b, 2000, "b-0", &seq), STORE_OK);
    CHECK_RC(inbox_log_commit(l), STORE_OK);
    uint64_t held, bytes;
    inbox_log_usage(l, &a, &held, &bytes);
    CHECK(held == 6 && bytes == 18);

    /* one body for 1,000 devices: stored once */
    static store_device many[1000];
    static uint64_t seqs[1000];
    for (uint32_t i = 0; i < 1000; i++)
        many[i] = device(2, i + 1);
    static uint8_t body[4000];
    memset(body, 0x5a, sizeof body);
    inbox_log_stats st0, st1;
    inbox_log_get_stats(l, &st0);
    CHECK_RC(inbox_log_append_shared(l, many, 1000, 3000, body, sizeof body, seqs), STORE_OK);
    CHECK_RC(inbox_log_commit(l), STORE_OK);
    inbox_log_get_stats(l, &st1);
    CHECK(st1.envelopes == st0.envelopes + 1000 && st1.bytes == st0.bytes + 1000 * sizeof body);
    uint64_t written = st1.written - st0.written; /* the body once, then 64 bytes a device */
    CHECK(written == 16 + sizeof body + 1000 * 64);
    printf("fan-out: one 4,000-byte body for 1,000 devices wrote %llu bytes to the log (%llu as copies)\n",
           (unsigned long long)written, (unsigned long long)(1000 * (16 + 36 + sizeof body)));
    bool each = true;
    for (uint32_t i = 0; i < 1000; i++) {
        g.n = 0;
        each &= seqs[i] == 1 && inbox_log_read(l, &many[i], 0, 10, collect, &g) == STORE_OK && g.n == 1;
    }
    CHECK(each);
    inbox_log_close(l);

    /* reopen: everything replayed, the shared body still read by all */
    CHECK_RC(inbox_log_open(&l, dir, &cfg, &rep), STORE_OK);
    CHECK(rep.envelopes == 6 + 1 + 1000 && rep.torn_bytes == 0 && rep.damaged == 0);
    g.n = 0;
    CHECK_RC(inbox_log_read(l, &a, 0, 100, collect, &g), STORE_OK);
    CHECK(g.n == 6 && g.seqs[0] == 5 && strcmp(g.text[5], "a-9") == 0);
    g.n = 0;
    CHECK_RC(inbox_log_read(l, &many[999], 0, 10, collect, &g), STORE_OK);
    CHECK(g.n == 1);
    for (uint32_t i = 0; i < 1000; i++)
        inbox_log_take(l, &many[i], UINT64_MAX, NULL, NULL, NULL);
    CHECK_RC(append_text(l, a, 4000, "a-10", &seq), STORE_OK);
    CHECK(seq == 11);
    CHECK_RC(inbox_log_commit(l), STORE_OK);

    /* fill several segments, then take it all: the old segments go, seqs go on */
    for (int i = 0; i < 8000; i++) {
        CHECK_RC(append_text(l, b, 5000, "0123456789", &seq), STORE_OK);
        if (i % 100 == 99)
            CHECK_RC(inbox_log_commit(l), STORE_OK);
    }
    CHECK_RC(inbox_log_commit(l), STORE_OK);
    inbox_log_get_stats(l, &st0);
    CHECK(st0.segments >= 3);
    CHECK_RC(inbox_log_take(l, &a, UINT64_MAX, NULL, NULL, NULL), STORE_OK);
    CHECK_RC(inbox_log_take(l, &b, UINT64_MAX, NULL, NULL, NULL), STORE_OK);
    CHECK_RC(inbox_log_commit(l), STORE_OK);
    for (int round = 0; round < 4; round++) { /* floors, then removal once they are durable */
        CHECK_RC(inbox_log_release_before(l, UINT64_MAX), STORE_OK);
        CHECK_RC(inbox_log_commit(l), STORE_OK);
    }
    inbox_log_get_stats(l, &st1);
    CHECK(st1.segments == 1 && st1.envelopes == 0);
    printf("inbox log: %llu segments of 256 KiB with 8,000 envelopes, %llu once all were taken\n",
           (unsigned long long)st0.segments, (unsigned long long)st1.segments);
    inbox_log_close(l);
    CHECK_RC(inbox_log_open(&l, dir, &cfg, &rep), STORE_OK);
    CHECK_RC(append_text(l, a, 6000, "a-11", &seq), STORE_OK);
    CHECK(seq == 12); /* the floor kept a's next seq */
    CHECK_RC(append_text(l, b, 6000, "b-next", &seq), STORE_OK);
    CHECK(seq == 8002);
    CHECK_RC(inbox_log_commit(l), STORE_OK);
    /* a group cut short: a record half written after the last commit */
    CHECK_RC(append_text(l, a, 7000, "torn", &seq), STORE_OK);
    inbox_log_stats at;
    inbox_log_get_stats(l, &at);
    uint64_t seed = inbox_log_seed(l, at.last_segment);
    inbox_log_close(l); /* not committed: nothing of it was written */
    log_segment s;
    CHECK_RC(log_segment_open(&s, dir, at.last_segment, false), STORE_OK);
    static uint8_t half[256];
    build(half, seed, 3, NULL); /* records of the test pattern, sealed for that segment */
    s.tail = at.last_tail;
    CHECK_RC(log_segment_write(&s, half, 30), STORE_OK); /* the first whole, the second cut */
    memset(half, 0, 40);
    s.tail = at.last_tail + 4096; /* and a stray record further on, past a hole: never kept */
    build(half, seed, 2, NULL);
    CHECK_RC(log_segment_write(&s, half, 16 + 16 + 7), STORE_OK);
    log_segment_close(&s);
    CHECK_RC(inbox_log_open(&l, dir, &cfg, &rep), STORE_OK);
    CHECK(rep.torn_bytes > 0 && rep.damaged == 0 && rep.records > 0);
    g.n = 0;
    CHECK_RC(inbox_log_read(l, &a, 0, 100, collect, &g), STORE_OK);
    CHECK(g.n == 1 && g.seqs[0] == 12 && strcmp(g.text[0], "a-11") == 0);
    CHECK_RC(append_text(l, a, 8000, "after", &seq), STORE_OK);
    CHECK(seq == 13);
    CHECK_RC(inbox_log_commit(l), STORE_OK);
    inbox_log_close(l);
    CHECK_RC(inbox_log_open(&l, dir, &cfg, &rep), STORE_OK);
    CHECK(rep.torn_bytes == 0 && rep.damaged == 0); /* the torn bytes were zeroed */
    g.n = 0;
    CHECK_RC(inbox_log_read(l, &a, 0, 100, collect, &g), STORE_OK);
    CHECK(g.n == 2 && g.seqs[1] == 13);
    inbox_log_close(l);
    remove_tree(dir);
}

int main(void)
{
    RUN(test_records());
    RUN(test_torn_tail());
    RUN(test_segments());
    RUN(test_index());
    RUN(test_inbox_log());
    RUN(test_steady_reclaim());
    RUN(test_moved());
    return check_summary("log");
}
