/* lookup.c - Lookup: an account and its device ids by phone number, or a phone number
 * and device ids by account. */
#include <stdio.h>
#include <stdlib.h>

#include "phone.h"
#include "services.h"

typedef struct {
    store_lookup q;
    session_ask ask;
    bool asked_by_account;
} lookup_request;

static void looked_up(store_req *req, int status)
{
    lookup_request *l = (lookup_request *)req;
    session *s = l->ask.s;
    if (!session_returned(s)) {
        free(l);
        return;
    }
    if (status == STORE_NOT_FOUND) {
        session_error(s, l->ask.request_id, PERR_UNKNOWN_ACCOUNT,
                      l->asked_by_account ? "no such account" : "no account has this number");
    } else if (status != STORE_OK) {
        session_store_error(s, l->ask.request_id, status);
    } else {
        Parley__DeviceList dl = PARLEY__DEVICE_LIST__INIT;
        dl.has_account_id = 1;
        dl.account_id = (ProtobufCBinaryData){sizeof l->q.account, l->q.account};
        dl.n_device_ids = l->q.n;
        dl.device_ids = l->q.ids;
        Parley__LookupResult lr = PARLEY__LOOKUP_RESULT__INIT;
        lr.devices = &dl;
        lr.phone = l->q.phone;
        Parley__Frame f = PARLEY__FRAME__INIT;
        f.body_case = PARLEY__FRAME__BODY_LOOKUP_RESULT;
        f.lookup_result = &lr;
        session_reply(s, l->ask.request_id, &f);
    }
    free(l);
}

static void on_lookup(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__Lookup *m = f->lookup;
    if (m->has_account_id && m->account_id.len != STORE_ACCOUNT_ID_LEN) {
        session_error(s, rid, PERR_MALFORMED_FRAME, "account_id must be 16 bytes");
        return;
    }
    if (!m->has_account_id && !phone_is_e164(m->phone)) {
        session_error(s, rid, PERR_UNKNOWN_ACCOUNT, "no account has this number");
        return;
    }
    lookup_request *l = calloc(1, sizeof *l);
    if (!l) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    l->q.req.done = looked_up;
    l->asked_by_account = l->q.by_account = m->has_account_id;
    if (m->has_account_id)
        memcpy(l->q.account, m->account_id.data, STORE_ACCOUNT_ID_LEN);
    else
        snprintf(l->q.phone, sizeof l->q.phone, "%s", m->phone);
    session_ask_begin(&l->ask, s, rid);
    store_lookup_account(session_server(s)->st, session_thread(s)->home, &l->q);
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_LOOKUP, true, RATE_LOOKUPS, on_lookup},
    {0},
};

const service lookup_service = {.name = "lookup", .routes = routes};
