/* test_groups.c - groups: the rules of each change (group.c) and the embedded backend's
 * group requests on a real data directory: creates and changes answered after their
 * commit with their events in every member device's inbox, a group message stored for
 * every member device in group order, stale versions and non-members refused with
 * nothing stored, a 1,024-member group, and group seqs that are never given twice,
 * also after a kill -9 before any checkpoint. */
#include <signal.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "check.h"
#include "group.h"
#include "store.h"

static char dir[256];
static store *st;
static store_home *home;
static uv_loop_t loop;

/* ---- the rules, without a store ------------------------------------------------------ */

static void account(uint8_t out[STORE_ACCOUNT_ID_LEN], int n)
{
    memset(out, 0, STORE_ACCOUNT_ID_LEN);
    out[0] = 0xa0;
    out[14] = (uint8_t)(n >> 8);
    out[15] = (uint8_t)n;
}

static store_group_change change(int actor, uint8_t op, uint8_t (*accounts)[STORE_ACCOUNT_ID_LEN], size_t n)
{
    store_group_change c = {.op = op, .accounts = accounts, .n_accounts = n, .now = 1000};
    account(c.from.device.account, actor);
    c.from.device.device = 1;
    memset(c.group_id, 0x61, sizeof c.group_id);
    strcpy(c.subject, "climbing");
    return c;
}

static void test_rules(void)
{
    static store_group g, copy;
    static uint8_t many[STORE_GROUP_MAX + 1][STORE_ACCOUNT_ID_LEN], removed[STORE_GROUP_MAX][STORE_ACCOUNT_ID_LEN];
    for (int i = 0; i <= STORE_GROUP_MAX; i++)
        account(many[i], i);
    bool changed;
    size_t n_removed;
    /* many[0] creates with 1, 2 (and itself again, dropped) */
    store_group_change c = change(0, GROUP_OP_CREATE, many, 3);
    CHECK_RC(group_create(&g, &c), STORE_OK);
    CHECK(g.n == 3 && g.version == 1 && g.members[0].admin && !g.members[1].admin);
    CHECK(g.settings[GROUP_SET_ADD] == GROUP_WHO_ADMINS && g.settings[GROUP_SET_SEND] == GROUP_WHO_ALL);
    /* at most 1,024 with the creator */
    c = change(0, GROUP_OP_CREATE, many + 1, STORE_GROUP_MAX);
    CHECK_RC(group_create(&copy, &c), STORE_GROUP_FULL);
    c = change(0, GROUP_OP_CREATE, many + 1, STORE_GROUP_MAX - 1);
    CHECK_RC(group_create(&copy, &c), STORE_OK);
    CHECK(copy.n == STORE_GROUP_MAX);
    c = change(0, GROUP_OP_ADD, many + STORE_GROUP_MAX, 1);
    CHECK_RC(group_apply(&copy, &c, &changed, removed, &n_removed), STORE_GROUP_FULL);
    CHECK(copy.n == STORE_GROUP_MAX && copy.version == 1);

    /* a member who is not an admin may not add (the default), remove or promote */
    c = change(1, GROUP_OP_ADD, many + 3, 1);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_NOT_ADMIN);
    c = change(1, GROUP_OP_REMOVE, many + 2, 1);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_NOT_ADMIN);
    c = change(9, GROUP_OP_SUBJECT, NULL, 0);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_NOT_MEMBER);
    CHECK(g.version == 1 && g.n == 3);
    /* the admin adds 3 (and 1 again: no change for it) */
    uint8_t two[2][STORE_ACCOUNT_ID_LEN];
    memcpy(two[0], many[3], sizeof two[0]);
    memcpy(two[1], many[1], sizeof two[1]);
    c = change(0, GROUP_OP_ADD, two, 2);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_OK);
    CHECK(changed && g.n == 4 && g.version == 2);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_OK); /* again: a no-op */
    CHECK(!changed && g.version == 2);
    /* settings: everyone may add; then a member adds */
    c = change(0, GROUP_OP_SETTINGS, NULL, 0);
    c.settings[GROUP_SET_ADD] = GROUP_WHO_ALL;
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_OK);
    c = change(1, GROUP_OP_ADD, many + 4, 1);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_OK);
    CHECK(g.n == 5 && g.version == 4);
    /* removal: the removed are reported, the actor cannot remove itself that way */
    c = change(0, GROUP_OP_REMOVE, many + 2, 1);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_OK);
    CHECK(n_removed == 1 && memcmp(removed[0], many[2], STORE_ACCOUNT_ID_LEN) == 0 && group_find(&g, many[2]) < 0);
    c = change(0, GROUP_OP_REMOVE, many, 1);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_OK);
    CHECK(!changed && group_find(&g, many[0]) == 0);
    /* the last admin leaves only naming another; demoting the last admin is refused */
    c = change(0, GROUP_OP_LEAVE, NULL, 0);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_LAST_ADMIN);
    c = change(0, GROUP_OP_DEMOTE, many, 1);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_LAST_ADMIN);
    CHECK(g.members[0].admin);
    c = change(0, GROUP_OP_LEAVE, many + 3, 1);
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_OK);
    int three = group_find(&g, many[3]);
    CHECK(group_find(&g, many[0]) < 0 && three >= 0 && g.members[three].admin && n_removed == 1);
    /* announcements: only admins send */
    c = change(3, GROUP_OP_SETTINGS, NULL, 0);
    c.settings[GROUP_SET_SEND] = GROUP_WHO_ADMINS;
    CHECK_RC(group_apply(&g, &c, &changed, removed, &n_removed), STORE_OK);
    CHECK_RC(group_may_send(&g, many[3]), STORE_OK);
    CHECK_RC(group_may_send(&g, many[1]), STORE_NOT_ADMIN);
    CHECK_RC(group_may_send(&g, many[0]), STORE_NOT_MEMBER);

    /* the record's bytes: back as they were; any cut or extra byte refused */
    static uint8_t rec[GROUP_RECORD_MAX];
    size_t len = group_encode(&g, rec);
    CHECK_RC(group_decode(&copy, g.id, rec, len), STORE_OK);
    CHECK(copy.n == g.n && copy.version == g.version && strcmp(copy.subject, g.subject) == 0);
    CHECK(memcmp(copy.members, g.members, g.n * sizeof *g.members) == 0 && memcmp(copy.settings, g.settings, 3) == 0);
    int refused = 0;
    for (size_t cut = 0; cut < len; cut++)
        refused += group_decode(&copy, g.id, rec, cut) == STORE_INVALID;
    CHECK(refused == (int)len);
    CHECK_RC(group_decode(&copy, g.id, rec, len + 1), STORE_INVALID);
    store_group_summary sum;
    CHECK_RC(group_decode_summary(&sum, g.id, rec, len), STORE_OK);
    CHECK(sum.members == g.n && sum.version == g.version);
}

/* ---- the embedded backend ------------------------------------------------------------- */

/* The envelope hooks: a group's message gets its seq as 8 more bytes; an event is
 * "E", its op, its version and its seq. */
static size_t put_seq(uint8_t *out, uint64_t seq)
{
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(seq >> (56 - 8 * i));
    return 8;
}

static uint64_t get_seq(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static bool no_author(const uint8_t *e, size_t len, const uint8_t **account, const uint8_t **id)
{
    (void)e, (void)len, (void)account, (void)id;
    return false;
}

static size_t with_seq(uint8_t *out, size_t cap, const uint8_t *envelope, size_t len, uint64_t seq)
{
    if (len + 8 > cap)
        return 0;
    memcpy(out, envelope, len);
    return len + put_seq(out + len, seq);
}

static size_t event(uint8_t *out, size_t cap, const store_group_change *c, const store_group *g, uint64_t seq)
{
    if (cap < 18)
        return 0;
    out[0] = 'E';
    out[1] = c->op;
    put_seq(out + 2, g->version);
    return 10 + put_seq(out + 10, seq);
}

static const store_envelopes hooks = {.author_of = no_author, .with_group_seq = with_seq, .group_event = event};

static int status;
static bool finished;

static void nap(void)
{
    struct timespec ts = {0, 500000};
    nanosleep(&ts, NULL);
}

static void on_done(store_req *r, int rc)
{
    (void)r;
    status = rc;
    finished = true;
}

static int wait_done(void)
{
    for (int i = 0; i < 10000 && !finished; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (!finished)
            nap();
    }
    return finished ? status : -100;
}

#define DO(fn, r) (finished = false, (r)->req.done = on_done, fn(st, home, (r)), wait_done())

static void open_store(void)
{
    CHECK_RC(store_open_embedded(&st, dir, 256 << 20, NULL, &hooks), STORE_OK);
    CHECK_RC(store_home_open(st, &loop, &home), STORE_OK);
}

static void close_store(void)
{
    store_stop(st);
    store_home_close(home);
    uv_run(&loop, UV_RUN_DEFAULT);
    store_close(st);
}

#define PEOPLE 1024
static uint8_t ids[PEOPLE + 1][STORE_ACCOUNT_ID_LEN];

/* PEOPLE + 1 accounts of one device each, registered in a few group commits. */
static int registered;

static void on_registered(store_req *r, int rc)
{
    (void)r;
    registered += rc == STORE_OK;
}

static void register_people(void)
{
    static store_registration regs[PEOPLE + 1];
    for (int i = 0; i <= PEOPLE; i++) {
        store_registration *r = &regs[i];
        snprintf(r->phone, sizeof r->phone, "+1555%07d", i);
        account(r->new_id, i);
        r->primary.device = 1;
        memset(r->primary.identity_key, i & 0xff, STORE_KEY_LEN);
        r->primary.registration_id = 100 + (uint32_t)i;
        r->keys.has_signed = true;
        r->keys.signed_prekey.id = 1;
        r->max_held = 100;
        r->now = 1000;
        r->req.done = on_registered;
    }
    for (int i = 0; i <= PEOPLE; i++) /* in a few group commits */
        store_register(st, home, &regs[i]);
    for (int k = 0; k < 20000 && registered <= PEOPLE; k++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (registered <= PEOPLE)
            nap();
    }
    CHECK(registered == PEOPLE + 1);
    for (int i = 0; i <= PEOPLE; i++)
        memcpy(ids[i], regs[i].account, STORE_ACCOUNT_ID_LEN);
}

static store_origin origin(int who)
{
    store_origin o = {0};
    memcpy(o.device.account, ids[who], STORE_ACCOUNT_ID_LEN);
    o.device.device = 1;
    memset(o.key_prefix, who & 0xff, sizeof o.key_prefix);
    return o;
}

static const uint8_t gid[STORE_GROUP_ID_LEN] = {0x67, 1, 2, 3};

static int group_change(int who, uint8_t op, uint8_t (*accounts)[STORE_ACCOUNT_ID_LEN], size_t n, store_group_change *r)
{
    memset(r, 0, sizeof *r);
    r->from = origin(who);
    r->op = op;
    memcpy(r->group_id, gid, sizeof gid);
    r->accounts = accounts;
    r->n_accounts = n;
    strcpy(r->subject, "rope team");
    r->now = 2000;
    return DO(store_change_group, r);
}

static void change_free(store_group_change *r)
{
    free(r->group);
    free(r->removed);
    store_entries_free(&r->targets);
}

/* A group message from who for the version given; *seq gets its group seq. */
static int group_send(int who, uint8_t id_byte, uint64_t version, uint64_t *seq, size_t *fanout, uint64_t *stale)
{
    store_send r = {0};
    r.from = origin(who);
    memset(r.message_id, id_byte, sizeof r.message_id);
    r.to_group = true;
    memcpy(r.group_id, gid, sizeof gid);
    r.group_version = version;
    r.accepted_ms = 3000;
    char body[16];
    snprintf(body, sizeof body, "msg-%02x", id_byte);
    r.group_envelope = (const uint8_t *)body;
    r.group_len = strlen(body);
    int rc = DO(store_accept_send, &r);
    *seq = r.group_seq;
    if (fanout)
        *fanout = r.fanout.n;
    if (stale)
        *stale = r.group ? r.group->version : 0;
    free(r.group);
    store_entries_free(&r.targets);
    store_entries_free(&r.fanout);
    return rc;
}

typedef struct {
    char what[16][24];
    uint64_t group_seq[16];
    size_t n;
} inbox_view;

static bool view_one(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data, size_t len)
{
    inbox_view *v = ctx;
    (void)seq, (void)stored_ms;
    if (v->n < 16 && len >= 8 && len < 24 + 8) {
        if (data[0] == 'E') {
            snprintf(v->what[v->n], sizeof v->what[0], "event-%d-v%llu", data[1], (unsigned long long)get_seq(data + 2));
            v->group_seq[v->n] = get_seq(data + 10);
        } else {
            memcpy(v->what[v->n], data, len - 8);
            v->what[v->n][len - 8] = '\0';
            v->group_seq[v->n] = get_seq(data + len - 8);
        }
        v->n++;
    }
    return true;
}

static inbox_view inbox_of(int who)
{
    inbox_view v = {0};
    store_read r = {.max = 100, .fn = view_one, .ctx = &v};
    r.device.device = 1;
    memcpy(r.device.account, ids[who], STORE_ACCOUNT_ID_LEN);
    CHECK_RC(DO(store_read_inbox, &r), STORE_OK);
    return v;
}

static void test_backend(void)
{
    store_group_change c;
    uint64_t seq, stale;
    size_t fanout;
    /* 0 creates with 1 and 2: the event goes to all three, seq 1 */
    CHECK_RC(group_change(0, GROUP_OP_CREATE, ids + 1, 2, &c), STORE_OK);
    CHECK(c.group->n == 3 && c.group->version == 1 && c.targets.n == 3 && c.seq == 1 && !c.duplicate);
    change_free(&c);
    CHECK_RC(group_change(0, GROUP_OP_CREATE, ids + 1, 2, &c), STORE_OK); /* sent again */
    CHECK(c.duplicate && c.targets.n == 0);
    change_free(&c);
    CHECK_RC(group_change(1, GROUP_OP_CREATE, ids + 2, 1, &c), STORE_EXISTS);
    change_free(&c);
    /* 1 may not add; 0 adds 3 (event seq 2, to four); an unknown account is refused */
    CHECK_RC(group_change(1, GROUP_OP_ADD, ids + 3, 1, &c), STORE_NOT_ADMIN);
    change_free(&c);
    uint8_t nobody[1][STORE_ACCOUNT_ID_LEN] = {{0x55}};
    CHECK_RC(group_change(0, GROUP_OP_ADD, nobody, 1, &c), STORE_UNKNOWN_ACCOUNT);
    change_free(&c);
    CHECK_RC(group_change(0, GROUP_OP_ADD, ids + 3, 1, &c), STORE_OK);
    CHECK(c.targets.n == 4 && c.seq == 2 && c.group->version == 2);
    change_free(&c);

    /* 1 sends for version 2: every member device, 1's own too, seq 3 */
    CHECK_RC(group_send(1, 0x11, 2, &seq, &fanout, NULL), STORE_OK);
    CHECK(seq == 3 && fanout == 4);
    CHECK_RC(group_send(1, 0x11, 2, &seq, &fanout, NULL), STORE_OK); /* a resend: nothing new */
    CHECK(seq == 0 && fanout == 0);
    CHECK_RC(group_send(2, 0x12, 1, &seq, NULL, &stale), STORE_GROUP_STALE); /* encrypted for version 1 */
    CHECK(stale == 2);
    CHECK_RC(group_send(4, 0x13, 2, &seq, NULL, NULL), STORE_NOT_MEMBER);
    inbox_view v = inbox_of(3); /* 3 joined at seq 2: its event, then the message */
    CHECK(v.n == 2 && strcmp(v.what[0], "event-2-v2") == 0 && v.group_seq[0] == 2);
    CHECK(strcmp(v.what[1], "msg-11") == 0 && v.group_seq[1] == 3);
    v = inbox_of(0);
    CHECK(v.n == 3 && v.group_seq[0] == 1 && v.group_seq[1] == 2 && v.group_seq[2] == 3);

    /* 0 removes 2: 2 gets the event, then nothing more */
    CHECK_RC(group_change(0, GROUP_OP_REMOVE, ids + 2, 1, &c), STORE_OK);
    CHECK(c.targets.n == 4 && c.n_removed == 1 && c.group->n == 3 && c.seq == 4);
    change_free(&c);
    CHECK_RC(group_send(3, 0x14, 3, &seq, &fanout, NULL), STORE_OK);
    CHECK(seq == 5 && fanout == 3);
    v = inbox_of(2);
    CHECK(v.n == 4 && strcmp(v.what[3], "event-3-v3") == 0 && v.group_seq[3] == 4);
    CHECK_RC(group_send(2, 0x15, 3, &seq, NULL, NULL), STORE_NOT_MEMBER);

    /* lists: 1 is in one group, 2 in none; a group read */
    store_group_query q = {.list = true};
    memcpy(q.account, ids[1], STORE_ACCOUNT_ID_LEN);
    CHECK_RC(DO(store_get_group, &q), STORE_OK);
    CHECK(q.n == 1 && q.groups[0].members == 3 && q.groups[0].version == 3 && memcmp(q.groups[0].id, gid, 16) == 0);
    free(q.groups);
    memcpy(q.account, ids[2], STORE_ACCOUNT_ID_LEN);
    CHECK_RC(DO(store_get_group, &q), STORE_OK);
    CHECK(q.n == 0);
    free(q.groups);
    store_group_query one = {.list = false};
    memcpy(one.group_id, gid, sizeof gid);
    CHECK_RC(DO(store_get_group, &one), STORE_OK);
    CHECK(one.group->n == 3 && strcmp(one.group->subject, "rope team") == 0);
    free(one.group);
    one.group = NULL;
    one.group_id[0] ^= 1;
    CHECK_RC(DO(store_get_group, &one), STORE_UNKNOWN_GROUP);
    free(one.group);

    /* a clean restart: the seqs go on */
    close_store();
    open_store();
    CHECK_RC(group_send(1, 0x16, 3, &seq, NULL, NULL), STORE_OK);
    CHECK(seq == 6);

    /* a process killed right after acked sends (before any checkpoint): the log's
       NOTEs give the seqs back */
    close_store();
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        uint64_t s1 = 0, s2 = 0;
        open_store();
        int rc = group_send(1, 0x17, 3, &s1, NULL, NULL);
        rc |= group_send(1, 0x18, 3, &s2, NULL, NULL);
        kill(getpid(), SIGKILL); /* no stop, no checkpoint */
        _exit(rc == STORE_OK && s1 == 7 && s2 == 8 ? 0 : 1);
    }
    int wstatus;
    CHECK(waitpid(child, &wstatus, 0) == child && WIFSIGNALED(wstatus));
    open_store();
    CHECK_RC(group_send(1, 0x19, 3, &seq, NULL, NULL), STORE_OK);
    CHECK(seq == 9);
    CHECK_RC(group_send(1, 0x18, 3, &seq, NULL, NULL), STORE_OK); /* the child's, de-duplicated */
    CHECK(seq == 0);

    /* 1,024 members: 0 adds everyone else */
    static uint8_t rest[PEOPLE][STORE_ACCOUNT_ID_LEN];
    size_t n = 0;
    for (int i = 4; i < PEOPLE; i++)
        memcpy(rest[n++], ids[i], STORE_ACCOUNT_ID_LEN);
    memcpy(rest[n++], ids[2], STORE_ACCOUNT_ID_LEN);
    CHECK_RC(group_change(0, GROUP_OP_ADD, rest, n, &c), STORE_OK);
    CHECK(c.group->n == PEOPLE && c.targets.n == PEOPLE);
    change_free(&c);
    CHECK_RC(group_change(0, GROUP_OP_ADD, ids + PEOPLE, 1, &c), STORE_GROUP_FULL);
    change_free(&c);
    CHECK_RC(group_send(PEOPLE - 1, 0x20, 4, &seq, &fanout, NULL), STORE_OK);
    CHECK(fanout == PEOPLE && seq == 11);
    v = inbox_of(PEOPLE - 1);
    CHECK(v.n == 2 && v.group_seq[0] == 10 && v.group_seq[1] == 11 && strcmp(v.what[1], "msg-20") == 0);
    /* the last admin leaves naming another */
    CHECK_RC(group_change(0, GROUP_OP_LEAVE, NULL, 0, &c), STORE_LAST_ADMIN);
    change_free(&c);
    CHECK_RC(group_change(0, GROUP_OP_LEAVE, ids + 3, 1, &c), STORE_OK);
    CHECK(c.group->n == PEOPLE - 1 && c.group->members[group_find(c.group, ids[3])].admin);
    change_free(&c);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    RUN(test_rules());
    snprintf(dir, sizeof dir, "/tmp/parley-test-groups-%d", (int)getpid());
    remove_tree(dir);
    uv_loop_init(&loop);
    open_store();
    register_people();
    RUN(test_backend());
    close_store();
    uv_loop_close(&loop);
    remove_tree(dir);
    return check_summary("groups");
}
