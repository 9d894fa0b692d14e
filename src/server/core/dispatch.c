/* dispatch.c - the dispatch table (service.h): one row per frame type, with what the
 * core checks before the row's handler runs. */
#include <stdio.h>

#include "service.h"

#define MAX_WAITING 64 /* requests of one connection waiting for the store */

/* What each table limits, whom it is keyed by, and the words of its refusal. */
enum { KEY_DEVICE, KEY_ADDRESS, KEY_SERVER };
static const struct {
    uint8_t key;
    const char *what;
} tables[RATE_CLASSES] = {
    [RATE_SENDS] = {KEY_DEVICE, "too many sends and receipts from this device; slow down"},
    [RATE_FETCHES] = {KEY_DEVICE, "too many prekey fetches from this device; slow down"},
    [RATE_CONNECTIONS] = {KEY_ADDRESS, "too many new connections from this address"},
    [RATE_LOOKUPS] = {KEY_DEVICE, "too many lookups from this device; slow down"},
    [RATE_LOOKUPS_ADDRESS] = {KEY_ADDRESS, "too many lookups from this address; slow down"},
    [RATE_LOOKUPS_DAILY] = {KEY_DEVICE, "this device looked up too many numbers today"},
    [RATE_CODES] = {KEY_ADDRESS, "too many verification codes asked for from this address; try later"},
    [RATE_CODES_GLOBAL] = {KEY_SERVER, "the server is sending too many verification codes; try later"},
    [RATE_FETCH_TARGET] = {KEY_DEVICE, "the account's one-time prekeys are being fetched too fast"},
};

/* The tables a class takes a token from, in order (the class's own first). */
static const uint8_t class_tables[RATE_CLASSES][3] = {
    [RATE_SENDS] = {RATE_SENDS},
    [RATE_FETCHES] = {RATE_FETCHES},
    [RATE_LOOKUPS] = {RATE_LOOKUPS, RATE_LOOKUPS_ADDRESS, RATE_LOOKUPS_DAILY},
    [RATE_CODES] = {RATE_CODES, RATE_CODES_GLOBAL},
};

const char *rate_class_what(int rate)
{
    return rate > RATE_NONE && rate < RATE_CLASSES && tables[rate].what ? tables[rate].what : "too many requests";
}

int dispatch_build(dispatch_table *t, const service *const *services)
{
    memset(t, 0, sizeof *t);
    for (const service *const *svc = services; *svc; svc++)
        for (const frame_route *r = (*svc)->routes; r && r->handler; r++) {
            if ((unsigned)r->body >= DISPATCH_SLOTS || r->body == PARLEY__FRAME__BODY__NOT_SET) {
                fprintf(stderr, "parleyd: service %s serves frame body %d, out of range\n", (*svc)->name, r->body);
                return -1;
            }
            if (t->rows[r->body]) {
                fprintf(stderr, "parleyd: frame body %d is served twice (service %s)\n", r->body, (*svc)->name);
                return -1;
            }
            t->rows[r->body] = r;
        }
    return 0;
}

const frame_route *dispatch_find(const dispatch_table *t, Parley__Frame__BodyCase body)
{
    return (unsigned)body < DISPATCH_SLOTS ? t->rows[body] : NULL;
}

/* One token from each table of the row's class (a device's buckets are shared by all
 * its connections), else a RATE_LIMITED answer saying which limit; also refuses while
 * the connection has too many requests waiting (memory stays bounded). */
static bool take_token(session *s, uint64_t rid, int rate)
{
    if (s->pending >= MAX_WAITING) {
        session_error_full(s, rid, PERR_RATE_LIMITED, "too many requests waiting for storage", 50, NULL);
        return false;
    }
    server *srv = session_server(s);
    uint64_t now = clock_wall_ms();
    uint8_t address[16];
    bool have_address = false, client_address = true;
    for (int i = 0; i < 3 && class_tables[rate][i]; i++) {
        int k = class_tables[rate][i];
        const void *key = &s->device;
        size_t len = sizeof s->device;
        if (tables[k].key == KEY_ADDRESS) {
            if (!have_address)
                client_address = session_address(s, address);
            have_address = true;
            if (!client_address)
                continue; /* a trusted proxy's: every client behind it shares it */
            key = address;
            len = sizeof address;
        } else if (tables[k].key == KEY_SERVER) {
            key = "";
            len = 0;
        }
        uint32_t retry = 0;
        if (!rate_table_take(&srv->rates[k], key, len, now, &retry)) {
            session_error_full(s, rid, PERR_RATE_LIMITED, rate_class_what(k), retry ? retry : 1, NULL);
            return false;
        }
    }
    return true;
}

void dispatch_frame(const dispatch_table *t, session *s, const Parley__Frame *f)
{
    uint64_t rid = f->has_request_id ? f->request_id : 0;
    const frame_route *r = dispatch_find(t, f->body_case);
    if (!r) {
        if (f->body_case != PARLEY__FRAME__BODY__NOT_SET)
            session_error(s, rid, PERR_UNKNOWN_FRAME, "clients do not send this frame");
        else if (f->base.n_unknown_fields) /* a body from a newer protocol arrives as an unknown field */
            session_error(s, rid, PERR_UNKNOWN_FRAME, NULL);
        else
            session_error(s, rid, PERR_MALFORMED_FRAME, "the frame has no body");
        return;
    }
    if (r->needs_auth && s->state != SESSION_AUTHENTICATED) {
        session_error(s, rid, PERR_NOT_AUTHENTICATED, NULL);
        return;
    }
    if (r->rate != RATE_NONE && !take_token(s, rid, r->rate))
        return;
    r->handler(s, rid, f);
}
