/* dispatch.c - the dispatch table (service.h): one row per frame type, with what the
 * core checks before the row's handler runs. */
#include <stdio.h>

#include "service.h"

#define MAX_WAITING 64 /* requests of one connection waiting for the store */

const char *rate_class_what(int rate)
{
    switch (rate) {
    case RATE_SENDS: return "sends and receipts";
    case RATE_FETCHES: return "prekey fetches";
    case RATE_CONNECTIONS: return "new connections";
    default: return "requests";
    }
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

/* One token of the device's bucket in the row's rate class (shared by all its
 * connections), else a RATE_LIMITED answer saying what; also refuses while the
 * connection has too many requests waiting (memory stays bounded). */
static bool take_token(session *s, uint64_t rid, int rate)
{
    uint32_t retry = 0;
    if (s->pending >= MAX_WAITING) {
        session_error_full(s, rid, PERR_RATE_LIMITED, "too many requests waiting for storage", 50, NULL);
        return false;
    }
    if (rate_table_take(&session_server(s)->rates[rate], &s->device, sizeof s->device, clock_wall_ms(), &retry))
        return true;
    char reason[128];
    snprintf(reason, sizeof reason, "too many %s from this device; slow down", rate_class_what(rate));
    session_error_full(s, rid, PERR_RATE_LIMITED, reason, retry ? retry : 1, NULL);
    return false;
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
