/* test_core.c - the server core's pieces on their own: the token buckets and rate
 * tables, the dispatch table, and the local bus (claims, kicks, wake-ups, ephemeral
 * frames across two I/O loops). The paths that answer a client (NOT_AUTHENTICATED,
 * RATE_LIMITED on a real connection) are in the e2e tests. */
#include <uv.h>

#include "bus.h"
#include "check.h"
#include "rate_limit.h"
#include "service.h"

/* ---- rate limits ---- */

static void test_token_bucket(void)
{
    rate_bucket b = {0};
    uint32_t retry = 0;
    /* a fresh bucket is full: burst tokens at once, then a refusal with the wait */
    for (int i = 0; i < 4; i++)
        CHECK(token_take(&b, 2, 4, 1000, &retry));
    CHECK(!token_take(&b, 2, 4, 1000, &retry));
    CHECK(retry == 500); /* 2 per second: the next token in 500 ms */
    CHECK(!token_take(&b, 2, 4, 1499, &retry));
    CHECK(retry == 1);
    CHECK(token_take(&b, 2, 4, 1500, &retry));
    /* refilling stops at burst */
    for (int i = 0; i < 4; i++)
        CHECK(token_take(&b, 2, 4, 100000, &retry));
    CHECK(!token_take(&b, 2, 4, 100000, &retry));
    /* a clock that steps back refills nothing and breaks nothing */
    CHECK(!token_take(&b, 2, 4, 50000, &retry));
    CHECK(token_take(&b, 2, 4, 100500, &retry));
    /* rate 0 with a burst: the burst, then never again */
    rate_bucket z = {0};
    CHECK(token_take(&z, 0, 1, 5, &retry));
    CHECK(!token_take(&z, 0, 1, 999999, &retry));
    CHECK(retry == UINT32_MAX);
}

/* A slow rate (1,000 a day) asked every 100 ms still refills: the time not yet worth a
 * thousandth of a token is kept, not dropped at each call (a thousandth is rounded to
 * whole milliseconds, so within a percent). */
static void test_slow_rate(void)
{
    rate_bucket b = {0};
    uint32_t retry = 0;
    uint64_t now = 1000;
    CHECK(token_take_per(&b, 1000, 86400000, 1, now, &retry));
    CHECK(!token_take_per(&b, 1000, 86400000, 1, now, &retry));
    CHECK(retry == 86400); /* one token in 86.4 s */
    int got = 0;
    uint64_t when = 0;
    for (int i = 1; i <= 1000 && !got; i++) {
        now += 100;
        if (token_take_per(&b, 1000, 86400000, 1, now, &retry)) {
            got = i;
            when = now - 1000;
        }
    }
    CHECK(got && when >= 85500 && when <= 87300); /* 86.4 s, within a percent */
    /* 5 an hour: the sixth within the hour waits for 12 minutes */
    rate_bucket h = {0};
    for (int i = 0; i < 5; i++)
        CHECK(token_take_per(&h, 5, 3600000, 5, 5000, &retry));
    CHECK(!token_take_per(&h, 5, 3600000, 5, 5000, &retry));
    CHECK(retry == 720000);
}

static void test_rate_table(void)
{
    rate_table t;
    CHECK_RC(rate_table_init(&t, 1024, 1, 3), 0);
    uint32_t retry = 0;
    const char a[] = "device-a", b[] = "device-b";
    int a_ok = 0, b_ok = 0;
    for (int i = 0; i < 10; i++) {
        a_ok += rate_table_take(&t, a, sizeof a, 10000, &retry);
        b_ok += rate_table_take(&t, b, sizeof b, 10000, &retry);
    }
    /* each key its own burst (or, if they share a bucket, less: never more) */
    CHECK(a_ok == 3);
    CHECK(b_ok == 3 || b_ok == 0);
    CHECK(!rate_table_take(&t, a, sizeof a, 10999, &retry));
    CHECK(retry == 1);
    CHECK(rate_table_take(&t, a, sizeof a, 11000, &retry));
    rate_table_destroy(&t);

    /* rate 0 is no limit and allocates nothing */
    CHECK_RC(rate_table_init(&t, 1024, 0, 0), 0);
    CHECK(t.buckets == NULL);
    for (int i = 0; i < 1000; i++)
        CHECK(rate_table_take(&t, a, sizeof a, 1, &retry));
    rate_table_destroy(&t);
}

/* ---- dispatch ---- */

static int handled_ping, handled_send;
static uint64_t handled_rid;

static void on_ping(session *s, uint64_t rid, const Parley__Frame *f)
{
    (void)s, (void)f;
    handled_ping++;
    handled_rid = rid;
}

static void on_send(session *s, uint64_t rid, const Parley__Frame *f)
{
    (void)s, (void)rid, (void)f;
    handled_send++;
}

static const frame_route ping_routes[] = {
    {PARLEY__FRAME__BODY_PING, false, RATE_NONE, on_ping},
    {0},
};
static const frame_route send_routes[] = {
    {PARLEY__FRAME__BODY_SEND, true, RATE_NONE, on_send},
    {0},
};
static const frame_route twice_routes[] = {
    {PARLEY__FRAME__BODY_PING, false, RATE_NONE, on_send},
    {0},
};
static const frame_route out_of_range_routes[] = {
    {(Parley__Frame__BodyCase)DISPATCH_SLOTS, false, RATE_NONE, on_send},
    {0},
};
static const frame_route no_body_routes[] = {
    {PARLEY__FRAME__BODY__NOT_SET, false, RATE_NONE, on_send},
    {0},
};

static void test_dispatch_table(void)
{
    static const service ping = {.name = "ping", .routes = ping_routes};
    static const service send = {.name = "send", .routes = send_routes};
    static const service quiet = {.name = "quiet"}; /* hooks only, no rows */
    static const service twice = {.name = "twice", .routes = twice_routes};
    static const service far = {.name = "far", .routes = out_of_range_routes};
    static const service none = {.name = "none", .routes = no_body_routes};
    dispatch_table t;

    const service *const ok[] = {&ping, &quiet, &send, NULL};
    CHECK_RC(dispatch_build(&t, ok), 0);
    CHECK(dispatch_find(&t, PARLEY__FRAME__BODY_PING) == &ping_routes[0]);
    CHECK(dispatch_find(&t, PARLEY__FRAME__BODY_SEND) == &send_routes[0]);
    CHECK(dispatch_find(&t, PARLEY__FRAME__BODY_RECEIPT) == NULL);
    CHECK(dispatch_find(&t, (Parley__Frame__BodyCase)1000) == NULL);
    CHECK(dispatch_find(&t, (Parley__Frame__BodyCase)-1) == NULL);

    /* a row that needs no auth and takes no token goes straight to its handler */
    session s;
    memset(&s, 0, sizeof s);
    s.state = SESSION_NEW;
    Parley__Frame f = PARLEY__FRAME__INIT;
    Parley__Ping p = PARLEY__PING__INIT;
    f.body_case = PARLEY__FRAME__BODY_PING;
    f.ping = &p;
    f.has_request_id = 1;
    f.request_id = 77;
    dispatch_frame(&t, &s, &f);
    CHECK(handled_ping == 1 && handled_rid == 77);
    /* an authenticated session reaches a row that needs auth */
    Parley__Send snd = PARLEY__SEND__INIT;
    f.body_case = PARLEY__FRAME__BODY_SEND;
    f.send = &snd;
    s.state = SESSION_AUTHENTICATED;
    dispatch_frame(&t, &s, &f);
    CHECK(handled_send == 1 && handled_ping == 1);

    /* refused at start: a body served twice, out of range, or no body at all */
    const service *const dup[] = {&ping, &twice, NULL};
    CHECK_RC(dispatch_build(&t, dup), -1);
    const service *const oor[] = {&far, NULL};
    CHECK_RC(dispatch_build(&t, oor), -1);
    const service *const unset[] = {&none, NULL};
    CHECK_RC(dispatch_build(&t, unset), -1);
}

/* ---- the local bus ---- */

typedef struct {
    bus_claim claim;
    store_device device;
    int thread;
    int woken, kicked, replaced, ephemeral;
    char last_frame[16];
} owner;

static const store_device *owner_device(const bus_claim *c)
{
    return &((const owner *)c)->device;
}

static int owner_thread(const bus_claim *c)
{
    return ((const owner *)c)->thread;
}

static void owner_wake(bus_claim *c)
{
    ((owner *)c)->woken++;
}

static void owner_kicked(bus_claim *c, bool replaced)
{
    owner *o = (owner *)c;
    o->kicked++;
    o->replaced += replaced;
}

static void owner_ephemeral(bus_claim *c, const uint8_t *frame, size_t len)
{
    owner *o = (owner *)c;
    o->ephemeral++;
    snprintf(o->last_frame, sizeof o->last_frame, "%.*s", (int)len, (const char *)frame);
}

static const bus_owner test_owner = {owner_device, owner_thread, owner_wake, owner_kicked, owner_ephemeral};

static uv_loop_t loops[2];

/* Runs both loops until their mailboxes are empty (bounded). */
static void settle(void)
{
    for (int i = 0; i < 20; i++) {
        uv_run(&loops[0], UV_RUN_NOWAIT);
        uv_run(&loops[1], UV_RUN_NOWAIT);
    }
}

static void make_owner(owner *o, bus *b, uint8_t account, uint32_t device, int thread)
{
    memset(o, 0, sizeof *o);
    memset(o->device.account, account, sizeof o->device.account);
    o->device.device = device;
    o->thread = thread;
    o->claim.order = bus_order_next(b);
}

static void test_claim_orders(void)
{
    bus *b;
    CHECK_RC(bus_open_local(&b, &test_owner, 1, 7), 0);
    uint64_t last = bus_order_next(b);
    CHECK((last & 0xFF) == 7); /* the node id is the low byte */
    bool increasing = true;
    for (int i = 0; i < 100000; i++) {
        uint64_t next = bus_order_next(b);
        increasing &= next > last && (next & 0xFF) == 7;
        last = next;
    }
    CHECK(increasing);
    /* the time is in the high bits: an order is near now, in ms */
    CHECK((last >> 20) >= clock_wall_ms() - 10000 && (last >> 20) <= clock_wall_ms() + 10000);
    bus_close(b);
    CHECK_RC(bus_open_local(&b, &test_owner, 0, 0), -1);
}

static void test_bus(void)
{
    bus *b;
    CHECK_RC(bus_open_local(&b, &test_owner, 2, 1), 0);
    for (int i = 0; i < 2; i++) {
        CHECK_RC(uv_loop_init(&loops[i]), 0);
        CHECK_RC(bus_thread_open(b, i, &loops[i]), 0);
    }

    /* one claim, woken after its inbox grew; another device's wake reaches nobody */
    owner first, second, other, stale;
    make_owner(&first, b, 0xA1, 1, 0);
    CHECK(bus_claim_device(b, &first.claim));
    CHECK(first.claim.held);
    make_owner(&other, b, 0xB2, 1, 1);
    CHECK(bus_claim_device(b, &other.claim));
    bus_wake(b, &first.device);
    settle();
    CHECK(first.woken == 1 && other.woken == 0);

    /* a newer claim on the other thread kicks the older (not "replaced") and is the one
     * woken from then on */
    make_owner(&second, b, 0xA1, 1, 1);
    CHECK(bus_claim_device(b, &second.claim));
    settle();
    CHECK(first.kicked == 1 && first.replaced == 0 && !first.claim.held);
    CHECK(second.kicked == 0 && second.claim.held);
    bus_wake(b, &first.device);
    settle();
    CHECK(second.woken == 1 && first.woken == 1);

    /* a claim older than the one held is refused and kicks nobody */
    make_owner(&stale, b, 0xA1, 1, 0);
    stale.claim.order = first.claim.order;
    CHECK(!bus_claim_device(b, &stale.claim));
    CHECK(!stale.claim.held);
    settle();
    CHECK(second.kicked == 0);

    /* ephemeral frames go to the newest claim only, and nowhere without one */
    const uint8_t typing[] = "typing";
    bus_publish(b, &second.device, typing, 6);
    store_device nobody = {.device = 9};
    bus_publish(b, &nobody, typing, 6);
    settle();
    CHECK(second.ephemeral == 1 && strcmp(second.last_frame, "typing") == 0);
    CHECK(first.ephemeral == 0 && other.ephemeral == 0);

    /* kick everything of a device (a new registration replaced it) */
    bus_kick(b, &second.device, BUS_KICK_ALL);
    settle();
    CHECK(second.kicked == 1 && second.replaced == 1 && !second.claim.held);
    CHECK(other.kicked == 0 && other.claim.held);

    /* a connection that authenticated (took its order) before the device was registered
     * again, and claims only after the kick, is refused; one authenticated after is not */
    owner early, late_ok;
    make_owner(&early, b, 0xD4, 1, 0);
    bus_kick(b, &early.device, BUS_KICK_ALL);
    CHECK(!bus_claim_device(b, &early.claim));
    make_owner(&late_ok, b, 0xD4, 1, 1);
    CHECK(bus_claim_device(b, &late_ok.claim));
    bus_release(b, &late_ok.claim);

    /* a released claim gets no more mail, even mail already posted */
    bus_wake(b, &other.device);
    bus_release(b, &other.claim);
    settle();
    CHECK(other.woken == 0 && !other.claim.held);

    /* many claims: the table grows and every one is still found */
    enum { MANY = 3000 };
    owner *many = calloc(MANY, sizeof *many);
    CHECK(many != NULL);
    for (int i = 0; many && i < MANY; i++) {
        make_owner(&many[i], b, (uint8_t)(i & 0xFF), (uint32_t)(i >> 8) + 1, i & 1);
        CHECK(bus_claim_device(b, &many[i].claim));
    }
    for (int i = 0; many && i < MANY; i++)
        bus_wake(b, &many[i].device);
    settle();
    int all_woken = 0;
    for (int i = 0; many && i < MANY; i++) {
        all_woken += many[i].woken == 1;
        bus_release(b, &many[i].claim);
    }
    CHECK(all_woken == MANY);
    free(many);

    /* after a thread's mailbox closed, mail for it is dropped */
    owner late;
    make_owner(&late, b, 0xC3, 1, 1);
    CHECK(bus_claim_device(b, &late.claim));
    bus_thread_close(b, 1);
    bus_wake(b, &late.device);
    settle();
    CHECK(late.woken == 0);
    bus_release(b, &late.claim);

    bus_thread_close(b, 0);
    for (int i = 0; i < 2; i++) {
        uv_run(&loops[i], UV_RUN_DEFAULT); /* the mailboxes' handles close */
        CHECK_RC(uv_loop_close(&loops[i]), 0);
    }
    bus_close(b);
}

int main(void)
{
    RUN(test_token_bucket());
    RUN(test_slow_rate());
    RUN(test_rate_table());
    RUN(test_dispatch_table());
    RUN(test_claim_orders());
    RUN(test_bus());
    return check_summary("core");
}
