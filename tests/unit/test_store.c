/* test_store.c - the LMDB store on a real data file: inbox order and cumulative
 * acks, sequence numbers that survive restarts, de-duplication, retention sweeps,
 * batches that abort whole, a full map refused without damage, and kill -9 in the
 * middle of writing: every batch whose commit returned is there afterwards. */
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lmdb.h>

#include "check.h"
#include "day_quota.h"
#include "inbox_log.h"
#include "ldb.h"

static char dir[256];

static void fresh_dir(const char *name)
{
    snprintf(dir, sizeof dir, "/tmp/parley-test-store-%d-%s", (int)getpid(), name);
    remove_tree(dir);
}

static store_device dev(uint8_t account_byte, uint32_t device)
{
    store_device d;
    memset(d.account, account_byte, sizeof d.account);
    d.device = device;
    return d;
}

typedef struct {
    uint64_t seqs[4096];
    char texts[4096][24];
    size_t n;
} collected;

static bool collect(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data, size_t len)
{
    collected *c = ctx;
    (void)stored_ms;
    if (c->n < 4096 && len < 24) {
        c->seqs[c->n] = seq;
        memcpy(c->texts[c->n], data, len);
        c->texts[c->n][len] = 0;
        c->n++;
    }
    return true;
}

static int append_text(ldb_batch *b, store_device d, uint64_t now, const char *text, uint64_t *seq)
{
    return ldb_inbox_append(b, &d, now, (const uint8_t *)text, strlen(text), seq);
}

static void test_inbox(void)
{
    fresh_dir("inbox");
    ldb *s;
    ldb_batch *b;
    uint64_t seq = 0, count;
    char text[24];
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    bool in_order = true;
    for (int i = 0; i < 100; i++) {
        snprintf(text, sizeof text, "a1-%d", i);
        in_order &= append_text(b, dev(1, 1), 1000, text, &seq) == STORE_OK && seq == (uint64_t)i + 1;
        snprintf(text, sizeof text, "a2-%d", i);
        in_order &= append_text(b, dev(1, 2), 1000, text, &seq) == STORE_OK && seq == (uint64_t)i + 1;
    }
    CHECK(in_order);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);

    static collected c;
    c.n = 0;
    CHECK_RC(ldb_inbox_read(s, &(store_device){0}, 0, 10, collect, &c), STORE_OK);
    CHECK(c.n == 0); /* another device's inbox is empty */
    store_device d1 = dev(1, 1);
    CHECK_RC(ldb_inbox_read(s, &d1, 0, 10, collect, &c), STORE_OK);
    CHECK(c.n == 10 && c.seqs[0] == 1 && strcmp(c.texts[9], "a1-9") == 0);
    c.n = 0;
    CHECK_RC(ldb_inbox_read(s, &d1, 95, 100, collect, &c), STORE_OK);
    CHECK(c.n == 5 && c.seqs[0] == 96 && strcmp(c.texts[4], "a1-99") == 0);

    /* cumulative ack, then the rest is still in order; the other device untouched */
    size_t deleted = 0;
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_inbox_ack(b, &d1, 60, &deleted), STORE_OK);
    CHECK(deleted == 60);
    CHECK_RC(ldb_inbox_ack(b, &d1, 60, &deleted), STORE_OK);
    CHECK(deleted == 0); /* a repeated ack is harmless */
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    CHECK_RC(ldb_inbox_count(s, &d1, &count), STORE_OK);
    CHECK(count == 40);
    store_device d2 = dev(1, 2);
    CHECK_RC(ldb_inbox_count(s, &d2, &count), STORE_OK);
    CHECK(count == 100);
    c.n = 0;
    CHECK_RC(ldb_inbox_read(s, &d1, 0, 1, collect, &c), STORE_OK);
    CHECK(c.n == 1 && c.seqs[0] == 61);

    /* an aborted batch leaves nothing */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(append_text(b, d1, 1000, "ghost", &seq), STORE_OK);
    CHECK_RC(ldb_inbox_drop(b, &d2, &deleted), STORE_OK);
    ldb_batch_abort(b);
    CHECK_RC(ldb_inbox_count(s, &d1, &count), STORE_OK);
    CHECK(count == 40);
    CHECK_RC(ldb_inbox_count(s, &d2, &count), STORE_OK);
    CHECK(count == 100);
    ldb_close(s);

    /* reopen: data kept, and sequence numbers continue (never reused); a take shows
     * each envelope it deletes, in order */
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    c.n = 0;
    CHECK_RC(ldb_inbox_take(b, &d1, 70, collect, &c, &deleted), STORE_OK);
    CHECK(deleted == 10 && c.n == 10 && c.seqs[0] == 61 && strcmp(c.texts[9], "a1-69") == 0);
    CHECK_RC(ldb_inbox_ack(b, &d1, UINT64_MAX, &deleted), STORE_OK);
    CHECK(deleted == 30);
    CHECK_RC(append_text(b, d1, 1000, "after", &seq), STORE_OK);
    CHECK(seq == 101);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    CHECK_RC(ldb_inbox_count(s, &d1, &count), STORE_OK);
    CHECK(count == 1);
    ldb_close(s);
    remove_tree(dir);
}

static void test_dedup_and_sweep(void)
{
    fresh_dir("sweep");
    ldb *s;
    ldb_batch *b;
    uint64_t seq, ts = 0, count;
    size_t inbox_removed, dedup_removed;
    uint8_t id1[16], id2[16];
    memset(id1, 0xaa, 16);
    memset(id2, 0xbb, 16);
    store_device sender = dev(9, 1), d = dev(2, 1);
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_dedup_get(b, &sender, id1, &ts), STORE_NOT_FOUND);
    CHECK_RC(ldb_dedup_put(b, &sender, id1, 5000), STORE_OK);
    CHECK_RC(ldb_dedup_put(b, &sender, id2, 9000), STORE_OK);
    CHECK_RC(ldb_dedup_get(b, &sender, id1, &ts), STORE_OK);
    CHECK(ts == 5000);
    for (int i = 0; i < 50; i++) /* old envelopes at t=1000.., new ones at t=100000.. */
        CHECK_RC(append_text(b, d, (uint64_t)(i < 30 ? 1000 + i : 100000 + i), "x", &seq), STORE_OK);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);

    /* bounded work per call: 10 at a time */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_sweep(b, 50000, 6000, 10, &inbox_removed, &dedup_removed), STORE_OK);
    CHECK(inbox_removed == 10 && dedup_removed == 1);
    CHECK_RC(ldb_sweep(b, 50000, 6000, 1000, &inbox_removed, &dedup_removed), STORE_OK);
    CHECK(inbox_removed == 20 && dedup_removed == 0);
    CHECK_RC(ldb_dedup_get(b, &sender, id1, &ts), STORE_NOT_FOUND);
    CHECK_RC(ldb_dedup_get(b, &sender, id2, &ts), STORE_OK);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    CHECK_RC(ldb_inbox_count(s, &d, &count), STORE_OK);
    CHECK(count == 20);

    /* acked envelopes leave the time index too: a later sweep finds nothing stale */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_inbox_ack(b, &d, UINT64_MAX, &inbox_removed), STORE_OK);
    CHECK(inbox_removed == 20);
    CHECK_RC(ldb_sweep(b, UINT64_MAX, 0, 1000, &inbox_removed, &dedup_removed), STORE_OK);
    CHECK(inbox_removed == 0);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    ldb_close(s);
    remove_tree(dir);
}

/* One record put in table of the data directory dir as an earlier parleyd wrote it,
 * with LMDB alone; an LMDB error code. */
static int put_raw(const char *table, const void *k, size_t klen, const void *v, size_t vlen)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi = 0;
    MDB_val key = {klen, (void *)k}, val = {vlen, (void *)v};
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(env, 16);
    if (rc == 0)
        rc = mdb_env_open(env, dir, 0, 0600);
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, table, 0, &dbi);
    if (rc == 0)
        rc = mdb_put(txn, dbi, &key, &val, 0);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else if (txn)
        mdb_txn_abort(txn);
    if (env)
        mdb_env_close(env);
    return rc;
}

static void usage_is(ldb *s, store_device d, uint64_t envelopes, uint64_t bytes, int line)
{
    ldb_batch *b;
    uint64_t n = 0, used = 0;
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_inbox_usage(b, &d, &n, &used), STORE_OK);
    ldb_batch_abort(b);
    if (n != envelopes || used != bytes)
        fprintf(stderr, "line %d: inbox holds %llu envelopes, %llu bytes; expected %llu, %llu\n", line,
                (unsigned long long)n, (unsigned long long)used, (unsigned long long)envelopes,
                (unsigned long long)bytes);
    CHECK(n == envelopes && used == bytes);
}
#define USAGE_IS(s, d, n, bytes) usage_is(s, d, n, bytes, __LINE__)

/* What an inbox holds (the quota's counts) follows appends, acks, drops and sweeps,
 * rolls back with an aborted batch, survives a reopen, and an inbox written before the
 * counts were kept is counted when the store opens, then acked from exactly. */
static void test_inbox_usage(void)
{
    fresh_dir("usage");
    ldb *s;
    ldb_batch *b;
    uint64_t seq;
    size_t n;
    store_device d = dev(5, 1), other = dev(5, 2);
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    USAGE_IS(s, d, 0, 0);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    for (int i = 0; i < 10; i++) /* 10 of 5 bytes at t=1000.., 1 of 3 bytes for the other */
        CHECK_RC(append_text(b, d, 1000 + (uint64_t)i, "hello", &seq), STORE_OK);
    CHECK_RC(append_text(b, other, 1000, "abc", &seq), STORE_OK);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    USAGE_IS(s, d, 10, 50);
    USAGE_IS(s, other, 1, 3);

    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_inbox_ack(b, &d, 4, &n), STORE_OK);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    USAGE_IS(s, d, 6, 30);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK); /* undone with its batch */
    CHECK_RC(append_text(b, d, 2000, "ghost", &seq), STORE_OK);
    CHECK_RC(ldb_inbox_drop(b, &other, &n), STORE_OK);
    ldb_batch_abort(b);
    USAGE_IS(s, d, 6, 30);
    USAGE_IS(s, other, 1, 3);
    size_t inbox_removed, dedup_removed;
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK); /* the sweep takes seqs 5..7 (t < 1007) */
    CHECK_RC(ldb_sweep(b, 1007, 0, 100, &inbox_removed, &dedup_removed), STORE_OK);
    CHECK(inbox_removed == 4); /* and the other device's one */
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    USAGE_IS(s, d, 3, 15);
    USAGE_IS(s, other, 0, 0);
    ldb_close(s);

    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    USAGE_IS(s, d, 3, 15);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_inbox_drop(b, &d, &n), STORE_OK);
    CHECK(n == 3);
    CHECK_RC(append_text(b, d, 3000, "xy", &seq), STORE_OK);
    CHECK(seq == 11); /* seqs go on after a drop */
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    USAGE_IS(s, d, 1, 2);
    ldb_close(s);

    /* inbox_next as it was written before the counts (8 bytes: the next seq alone) */
    uint8_t k[20], v[8] = {0, 0, 0, 0, 0, 0, 0, 12};
    memcpy(k, d.account, 16);
    k[16] = k[17] = k[18] = 0, k[19] = 1;
    CHECK_RC(put_raw("inbox_next", k, sizeof k, v, sizeof v), 0);
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    USAGE_IS(s, d, 1, 2); /* counted from the inbox itself */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    for (int i = 0; i < 4; i++)
        CHECK_RC(append_text(b, d, 3000, "abcd", &seq), STORE_OK);
    CHECK(seq == 15); /* the next seq kept */
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    USAGE_IS(s, d, 5, 18);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK); /* a partial ack after the conversion */
    CHECK_RC(ldb_inbox_ack(b, &d, 12, &n), STORE_OK);
    CHECK(n == 2);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    USAGE_IS(s, d, 3, 12);
    ldb_close(s);
    remove_tree(dir);
}

/* The day's write counts: refused past either limit, nothing counted then; a first
 * write of a day larger than the quota goes; a new day starts from nothing; 100,000
 * accounts stay apart; the table keeps only today's accounts when it grows. */
static void test_day_quota(void)
{
    day_quota q = {0};
    uint8_t a[16], b[16];
    memset(a, 1, 16);
    memset(b, 2, 16);
    int taken = 0;
    while (taken < 100 && day_quota_charge(&q, a, 20000, 10, 1000, 50))
        taken++;
    CHECK(taken == 10); /* the count */
    CHECK(day_quota_charge(&q, b, 20000, 10, 1000, 5000)); /* first of b's day, above the bytes */
    CHECK(!day_quota_charge(&q, b, 20000, 10, 1000, 1));   /* and then nothing more */
    CHECK(day_quota_charge(&q, a, 20001, 10, 1000, 600));  /* the next day */
    CHECK(!day_quota_charge(&q, a, 20001, 10, 1000, 401)); /* 1001 bytes */
    CHECK(day_quota_charge(&q, a, 20001, 10, 1000, 400));
    CHECK(day_quota_charge(&q, a, 20001, 0, 0, 1 << 30));  /* no limits */
    bool apart = true;
    uint8_t k[16] = {0};
    for (uint32_t i = 0; i < 100000; i++) { /* each one's first, then its second is refused */
        memcpy(k, &i, sizeof i);
        apart &= day_quota_charge(&q, k, 20002, 1, 0, 10) && !day_quota_charge(&q, k, 20002, 1, 0, 10);
    }
    CHECK(apart);
    size_t cap = q.cap;
    CHECK(q.used >= 100000 && cap >= 2 * q.used);
    for (uint32_t i = 0; i < 100000; i++) { /* a new day: yesterday's go as the table grows */
        memcpy(k, &i, sizeof i);
        k[4] = 1;
        day_quota_charge(&q, k, 20003, 1, 0, 10);
    }
    CHECK(q.cap == cap && q.used <= 100000 + 1); /* rebuilt at the same size, today's only */
    day_quota_free(&q);
    CHECK(q.cap == 0 && q.slots == NULL);
}

static void test_full(void)
{
    fresh_dir("full");
    ldb *s;
    ldb_batch *b;
    uint64_t seq, count;
    static uint8_t blob[8192];
    store_device d = dev(3, 1);
    CHECK_RC(ldb_open(&s, dir, 1 << 20), STORE_OK); /* a 1 MiB map */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_inbox_append(b, &d, 1, blob, 100, &seq), STORE_OK);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    int rc = STORE_OK;
    for (int i = 0; i < 1000 && rc == STORE_OK; i++)
        rc = ldb_inbox_append(b, &d, 1, blob, sizeof blob, &seq);
    CHECK_RC(rc, STORE_FULL);
    ldb_batch_abort(b);
    CHECK_RC(ldb_inbox_count(s, &d, &count), STORE_OK);
    CHECK(count == 1); /* the refused batch left nothing, the earlier one is intact */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_inbox_append(b, &d, 1, blob, 100, &seq), STORE_OK); /* still usable */
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    CHECK(seq == 2);
    ldb_close(s);
    remove_tree(dir);
}

/* A child writes batches and reports each committed one on a pipe; we kill -9 it
 * mid-stream and check that every reported envelope is on disk, intact. */
static void test_kill9(void)
{
    fresh_dir("kill9");
    int rounds_ok = 0, rounds = 3;
    uint64_t total_reported = 0;
    for (int round = 0; round < rounds; round++) {
        int fds[2];
        if (pipe(fds) != 0)
            exit(2);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            ldb *s;
            if (ldb_open(&s, dir, 64 << 20) != STORE_OK)
                _exit(3);
            store_device d = dev(4, (uint32_t)round + 1); /* a fresh inbox each round */
            for (int batch = 0; batch < 100000; batch++) {
                ldb_batch *b;
                uint64_t seq = 0;
                char text[24];
                if (ldb_batch_begin(s, &b) != STORE_OK)
                    _exit(4);
                for (int i = 0; i < 8; i++) {
                    snprintf(text, sizeof text, "r%d-b%d-%d", round, batch, i);
                    if (append_text(b, d, 1, text, &seq) != STORE_OK)
                        _exit(5);
                }
                if (ldb_batch_commit(b) != STORE_OK)
                    _exit(6);
                if (write(fds[1], &seq, sizeof seq) != sizeof seq) /* "acked" up to seq */
                    _exit(7);
            }
            _exit(0);
        }
        close(fds[1]);
        uint64_t acked = 0, seq;
        for (int i = 0; i < 40 + 20 * round; i++)
            if (read(fds[0], &seq, sizeof seq) == sizeof seq)
                acked = seq;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        while (read(fds[0], &seq, sizeof seq) == sizeof seq) /* acks already in the pipe */
            acked = seq;
        close(fds[0]);
        total_reported += acked;

        ldb *s;
        static collected c;
        c.n = 0;
        store_device d = dev(4, (uint32_t)round + 1);
        CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
        uint64_t from = 0;
        bool all_there = true;
        while (from < acked) { /* every acked seq, none missing, in order */
            c.n = 0;
            if (ldb_inbox_read(s, &d, from, 4096, collect, &c) != STORE_OK || c.n == 0) {
                all_there = false;
                break;
            }
            for (size_t i = 0; i < c.n && from < acked; i++, from++)
                all_there &= c.seqs[i] == from + 1;
        }
        if (all_there && acked > 0)
            rounds_ok++;
        /* acknowledging everything empties the inbox */
        ldb_batch *b;
        size_t deleted;
        CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
        CHECK_RC(ldb_inbox_ack(b, &d, UINT64_MAX, &deleted), STORE_OK);
        CHECK_RC(ldb_batch_commit(b), STORE_OK);
        uint64_t left = 1;
        CHECK_RC(ldb_inbox_count(s, &d, &left), STORE_OK);
        CHECK(left == 0);
        ldb_close(s);
    }
    CHECK(rounds_ok == rounds);
    printf("kill -9: %d rounds, %llu acked envelopes checked\n", rounds,
           (unsigned long long)total_reported);
    remove_tree(dir);
}

static void test_accounts(void)
{
    fresh_dir("accounts");
    ldb *s;
    ldb_batch *b;
    uint8_t id1[16], id2[16], acc[16], acc2[16];
    uint64_t seq, count;
    uint32_t replaced[STORE_MAX_DEVICES];
    size_t n_replaced;
    memset(id1, 0x11, 16);
    memset(id2, 0x22, 16);
    store_device_record primary = {.device = 1, .registration_id = 4242};
    memset(primary.identity_key, 0x33, 32);
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    CHECK_RC(ldb_account_by_phone(s, "+15550000001", acc), STORE_NOT_FOUND);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_register(b, "+15550000001", id1, &primary, acc, replaced, &n_replaced), STORE_OK);
    CHECK(memcmp(acc, id1, 16) == 0);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    CHECK_RC(ldb_account_by_phone(s, "+15550000001", acc2), STORE_OK);
    CHECK(memcmp(acc2, id1, 16) == 0);
    store_device d1 = {.device = 1};
    memcpy(d1.account, id1, 16);
    store_device_record got;
    CHECK_RC(ldb_device_get(s, &d1, &got), STORE_OK);
    CHECK(got.registration_id == 4242 && got.identity_key[5] == 0x33);
    uint32_t ids[8];
    size_t n = 0;
    CHECK_RC(ldb_account_devices(s, id1, ids, 8, &n), STORE_OK);
    CHECK(n == 1 && ids[0] == 1);
    char phone[STORE_PHONE_MAX + 1];
    CHECK_RC(ldb_phone_by_account(s, id1, phone), STORE_OK);
    CHECK(strcmp(phone, "+15550000001") == 0);
    CHECK_RC(ldb_phone_by_account(s, id2, phone), STORE_NOT_FOUND);
    /* inside a batch, the batch's own registration is visible */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_register(b, "+15550000002", id2, &primary, acc, replaced, &n_replaced), STORE_OK);
    CHECK_RC(ldb_batch_account_devices(b, id2, ids, 8, &n), STORE_OK);
    CHECK(n == 1 && ids[0] == 1);
    ldb_batch_abort(b);
    CHECK_RC(ldb_account_devices(s, id2, ids, 8, &n), STORE_OK);
    CHECK(n == 0);

    /* the number registers again: same account, new device key, old inbox dropped */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(append_text(b, d1, 1, "for the old install", &seq), STORE_OK);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    memset(primary.identity_key, 0x44, 32);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_register(b, "+15550000001", id2, &primary, acc, replaced, &n_replaced), STORE_OK);
    CHECK(memcmp(acc, id1, 16) == 0);
    CHECK(n_replaced == 1 && replaced[0] == 1); /* the old install's device, for the log to drop */
    CHECK_RC(ldb_register(b, "+1555000000123456789", id2, &primary, acc, replaced, &n_replaced), STORE_INVALID);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    CHECK_RC(ldb_device_get(s, &d1, &got), STORE_OK);
    CHECK(got.identity_key[5] == 0x44);
    CHECK_RC(ldb_inbox_count(s, &d1, &count), STORE_OK);
    CHECK(count == 0);
    d1.device = 2;
    CHECK_RC(ldb_device_get(s, &d1, &got), STORE_NOT_FOUND);
    ldb_close(s);
    remove_tree(dir);
}

/* One-time prekeys: the lowest id goes first, each once; re-uploads are harmless, a
 * reused id with another key is refused; a new registration drops the old keys. */
static void test_prekeys(void)
{
    fresh_dir("prekeys");
    ldb *s;
    ldb_batch *b;
    uint8_t id1[16], acc[16];
    uint32_t replaced[STORE_MAX_DEVICES];
    size_t n_replaced;
    memset(id1, 0x55, 16);
    store_device_record primary = {.device = 1, .registration_id = 7};
    store_device d1 = {.device = 1}, d2 = {.device = 2};
    memcpy(d1.account, id1, 16);
    memcpy(d2.account, id1, 16);
    store_prekey keys[5], got;
    for (int i = 0; i < 5; i++) {
        keys[i].id = (uint32_t)(300 - i * 70); /* 300, 230, 160, 90, 20: out of order */
        memset(keys[i].key, 0x60 + i, 32);
    }
    store_signed_prekey sp = {.id = 9, .uploaded_ms = 1234}, sp_got;
    memset(sp.key, 0x70, 32);
    memset(sp.signature, 0x71, 64);
    size_t n, left;

    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_register(b, "+15550000009", id1, &primary, acc, replaced, &n_replaced), STORE_OK);
    CHECK_RC(ldb_signed_prekey_get(b, &d1, &sp_got), STORE_NOT_FOUND);
    CHECK_RC(ldb_prekey_take(b, &d1, &got, &left), STORE_NOT_FOUND);
    CHECK_RC(ldb_signed_prekey_put(b, &d1, &sp), STORE_OK);
    CHECK_RC(ldb_prekeys_add(b, &d1, keys, 5), STORE_OK);
    CHECK_RC(ldb_prekeys_add(b, &d1, keys + 1, 2), STORE_OK); /* a resent upload */
    CHECK_RC(ldb_prekeys_count(b, &d1, &n), STORE_OK);
    CHECK(n == 5);
    CHECK_RC(ldb_prekeys_count(b, &d2, &n), STORE_OK);
    CHECK(n == 0);
    store_prekey clash = keys[2];
    clash.key[0] ^= 1;
    CHECK_RC(ldb_prekeys_add(b, &d1, &clash, 1), STORE_EXISTS);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);

    /* after a restart: ids in ascending order, each once, keys intact */
    ldb_close(s);
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    uint32_t want[] = {20, 90, 160, 230};
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_signed_prekey_get(b, &d1, &sp_got), STORE_OK);
    CHECK(sp_got.id == 9 && sp_got.uploaded_ms == 1234 && sp_got.key[31] == 0x70 && sp_got.signature[63] == 0x71);
    for (int i = 0; i < 4; i++) {
        CHECK_RC(ldb_prekey_take(b, &d1, &got, &left), STORE_OK);
        CHECK(got.id == want[i] && left == (size_t)(4 - i));
        CHECK(got.key[0] == 0x60 + (300 - want[i]) / 70);
    }
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    /* an aborted take hands nothing out */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_prekey_take(b, &d1, &got, &left), STORE_OK);
    CHECK(got.id == 300 && left == 0);
    ldb_batch_abort(b);
    store_stats st;
    CHECK_RC(ldb_get_stats(s, &st), STORE_OK);
    CHECK(st.prekeys == 1);

    /* the number registers again: the old device's keys go with it */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_register(b, "+15550000009", id1, &primary, acc, replaced, &n_replaced), STORE_OK);
    CHECK_RC(ldb_signed_prekey_get(b, &d1, &sp_got), STORE_NOT_FOUND);
    CHECK_RC(ldb_prekeys_count(b, &d1, &n), STORE_OK);
    CHECK(n == 0);
    store_device_record recs[4];
    CHECK_RC(ldb_batch_account_device_records(b, id1, recs, 4, &n), STORE_OK);
    CHECK(n == 1 && recs[0].device == 1 && recs[0].registration_id == 7);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    ldb_close(s);
    remove_tree(dir);
}

static bool no_author(const uint8_t *envelope, size_t len, const uint8_t **account, const uint8_t **id)
{
    (void)envelope, (void)len, (void)account, (void)id;
    return false;
}

typedef struct {
    size_t n;
    uint64_t first_seq, last_seq;
    char last[24];
} read_back;

static bool read_one(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data, size_t len)
{
    read_back *r = ctx;
    (void)stored_ms;
    if (!r->n++)
        r->first_seq = seq;
    r->last_seq = seq;
    if (len < sizeof r->last) {
        memcpy(r->last, data, len);
        r->last[len] = 0;
    }
    return true;
}

/* A data directory whose inboxes are in LMDB, as every parleyd before the inbox log
 * wrote them (ldb_inbox_append is that code): the embedded store moves them to the log
 * when it opens, with their seqs; the data file keeps none; a second open finds them in
 * the log, nothing twice; a device's next seq goes on from where it was. */
static void write_legacy_inboxes(store_device d1, store_device d2, store_device d3)
{
    ldb *s;
    ldb_batch *b;
    uint64_t seq;
    size_t n;
    char text[24];
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    for (int i = 0; i < 500; i++) {
        snprintf(text, sizeof text, "one-%d", i);
        CHECK_RC(append_text(b, d1, 1000 + (uint64_t)i, text, &seq), STORE_OK);
        snprintf(text, sizeof text, "two-%d", i);
        CHECK_RC(append_text(b, d2, 1000, text, &seq), STORE_OK);
    }
    CHECK_RC(append_text(b, d3, 1000, "three", &seq), STORE_OK);
    CHECK_RC(ldb_inbox_ack(b, &d1, 100, &n), STORE_OK);    /* one's 101..500 left */
    CHECK_RC(ldb_inbox_ack(b, &d3, UINT64_MAX, &n), STORE_OK); /* three's none, next seq 2 */
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    ldb_close(s);
}

static void test_migration(void)
{
    fresh_dir("migration");
    ldb *s;
    uint64_t seq;
    store_device d1 = dev(8, 1), d2 = dev(8, 2), d3 = dev(8, 3);
    write_legacy_inboxes(d1, d2, d3);

    static const store_envelopes hooks = {.author_of = no_author};
    store *st;
    store_stats stats;
    CHECK_RC(store_open_embedded(&st, dir, 64 << 20, NULL, &hooks), STORE_OK);
    CHECK_RC(store_get_stats(st, &stats), STORE_OK);
    CHECK(stats.inbox_envelopes == 400 + 500);
    store_close(st);
    CHECK_RC(ldb_open_readonly(&s, dir), STORE_OK);
    CHECK_RC(ldb_get_stats(s, &stats), STORE_OK);
    CHECK(stats.inbox_envelopes == 0); /* moved, not copied */
    ldb_close(s);
    CHECK_RC(store_open_embedded(&st, dir, 64 << 20, NULL, &hooks), STORE_OK); /* again: nothing twice */
    CHECK_RC(store_get_stats(st, &stats), STORE_OK);
    CHECK(stats.inbox_envelopes == 900);
    store_close(st);
    /* a crash after the log's commit and before the data file let its inboxes go: the
       same records are in both when it opens again; the seqs say they are there */
    write_legacy_inboxes(d1, d2, d3);
    CHECK_RC(store_open_embedded(&st, dir, 64 << 20, NULL, &hooks), STORE_OK);
    CHECK_RC(store_get_stats(st, &stats), STORE_OK);
    CHECK(stats.inbox_envelopes == 900);
    store_close(st);

    char log_dir[300];
    snprintf(log_dir, sizeof log_dir, "%s/inbox", dir);
    inbox_log_config cfg = {0};
    inbox_log_report rep;
    inbox_log *l;
    CHECK_RC(inbox_log_open(&l, log_dir, &cfg, &rep), STORE_OK);
    read_back r = {0};
    CHECK_RC(inbox_log_read(l, &d1, 0, 1000, read_one, &r), STORE_OK);
    CHECK(r.n == 400 && r.first_seq == 101 && r.last_seq == 500 && strcmp(r.last, "one-499") == 0);
    memset(&r, 0, sizeof r);
    CHECK_RC(inbox_log_read(l, &d2, 0, 1000, read_one, &r), STORE_OK);
    CHECK(r.n == 500 && r.first_seq == 1 && strcmp(r.last, "two-499") == 0);
    CHECK_RC(inbox_log_append(l, &d1, 5000, (const uint8_t *)"x", 1, &seq), STORE_OK);
    CHECK(seq == 501);
    CHECK_RC(inbox_log_append(l, &d3, 5000, (const uint8_t *)"x", 1, &seq), STORE_OK);
    CHECK(seq == 2); /* an empty inbox keeps its next seq */
    inbox_log_close(l);
    remove_tree(dir);
}

/* A data directory from before the keys directory (8 tables): parleyctl reads it
 * read-only with no prekeys; parleyd opening it read-write adds the new tables. */
static void test_older_directory(void)
{
    fresh_dir("older");
    const char *old_tables[] = {"inbox", "inbox_next", "inbox_time", "dedup", "dedup_time",
                                "phones", "accounts", "devices"};
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    CHECK(mkdir(dir, 0700) == 0);
    CHECK_RC(mdb_env_create(&env), 0);
    CHECK_RC(mdb_env_set_maxdbs(env, 16), 0);
    CHECK_RC(mdb_env_open(env, dir, 0, 0600), 0);
    CHECK_RC(mdb_txn_begin(env, NULL, 0, &txn), 0);
    for (size_t i = 0; i < 8; i++)
        CHECK_RC(mdb_dbi_open(txn, old_tables[i], MDB_CREATE, &dbi), 0);
    CHECK_RC(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    ldb *s;
    store_stats st;
    CHECK_RC(ldb_open_readonly(&s, dir), STORE_OK);
    CHECK_RC(ldb_get_stats(s, &st), STORE_OK);
    CHECK(st.prekeys == 0 && st.devices == 0);
    ldb_close(s);
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    ldb_close(s);
    remove_tree(dir);
}

/* A data directory from before the id-first de-duplication tables: its records (sender
 * before id, in "dedup" and "dedup_time") still catch a resend until swept. */
static void test_legacy_dedup(void)
{
    fresh_dir("legacy-dedup");
    ldb *s;
    ldb_batch *b;
    uint64_t ts = 0;
    size_t inbox_removed, dedup_removed;
    uint8_t id[16], other[16];
    memset(id, 0x5a, 16);
    memset(other, 0x5b, 16);
    store_device sender = dev(4, 2);
    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    ldb_close(s);
    /* one record as the previous version wrote it */
    uint8_t k[36], tk[44], v[8] = {0, 0, 0, 0, 0, 0, 0x13, 0x88}; /* accepted at 5000 ms */
    memcpy(k, sender.account, 16);
    k[16] = k[17] = k[18] = 0, k[19] = 2;
    memcpy(k + 20, id, 16);
    memcpy(tk, v, 8);
    memcpy(tk + 8, k, 36);
    CHECK_RC(put_raw("dedup", k, sizeof k, v, sizeof v), 0);
    CHECK_RC(put_raw("dedup_time", tk, sizeof tk, "", 0), 0);

    CHECK_RC(ldb_open(&s, dir, 64 << 20), STORE_OK);
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_dedup_get(b, &sender, id, &ts), STORE_OK); /* the resend is recognised */
    CHECK(ts == 5000);
    CHECK_RC(ldb_dedup_get(b, &sender, other, &ts), STORE_NOT_FOUND);
    CHECK_RC(ldb_dedup_put(b, &sender, other, 7000), STORE_OK);
    CHECK_RC(ldb_dedup_get(b, &sender, other, &ts), STORE_OK);
    CHECK(ts == 7000);
    store_stats st;
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    CHECK_RC(ldb_get_stats(s, &st), STORE_OK);
    CHECK(st.dedup_records == 2); /* both tables counted */
    CHECK_RC(ldb_batch_begin(s, &b), STORE_OK);
    CHECK_RC(ldb_sweep(b, 0, 6000, 100, &inbox_removed, &dedup_removed), STORE_OK);
    CHECK(dedup_removed == 1);
    CHECK_RC(ldb_dedup_get(b, &sender, id, &ts), STORE_NOT_FOUND); /* swept from the old table */
    CHECK_RC(ldb_dedup_get(b, &sender, other, &ts), STORE_OK);
    CHECK_RC(ldb_batch_commit(b), STORE_OK);
    CHECK_RC(ldb_get_stats(s, &st), STORE_OK);
    CHECK(st.dedup_records == 1);
    ldb_close(s);
    remove_tree(dir);
}

int main(void)
{
    RUN(test_inbox());
    RUN(test_dedup_and_sweep());
    RUN(test_inbox_usage());
    RUN(test_day_quota());
    RUN(test_legacy_dedup());
    RUN(test_full());
    RUN(test_accounts());
    RUN(test_prekeys());
    RUN(test_older_directory());
    RUN(test_migration());
    RUN(test_kill9());
    return check_summary("store");
}
