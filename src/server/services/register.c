/* register.c - registration by one-time code (docs/protocol.md, "Registration"):
 * RequestCode sends a code by the configured SMS provider (sms.c, off the loop);
 * Register checks it and registers the number's primary device with its first keys.
 * Codes are kept in memory (codes.c: a restart voids them; the user asks again). What
 * one address may ask for is limited by the dispatch table's codes class (per address
 * and for the whole server) and by codes.c (its share of each number's hour); the SMS
 * sends in flight are bounded (--sms-queue), and refused past that. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

#include "keys_rules.h"
#include "primitives.h"
#include "phone.h"
#include "services.h"
#include "codes.h"
#include "sms.h"

#define SWEEP_EVERY_MS 1000
#define SMS_WAIT_MS 60000 /* the authentication deadline moves this far for a code being sent */
#define SWEEP_BUCKETS 4096 /* chains looked at per tick: the whole table in about a minute */

/* The service's state: SMS sends in flight (all threads), thread 0's sweep timer. */
static struct {
    uint32_t sms_in_flight;  /* atomic */
    uv_timer_t sweep;
} reg;

/* ---- RequestCode ------------------------------------------------------------------ */

typedef struct {
    uv_work_t work;
    session_ask ask;
    char phone[STORE_PHONE_MAX + 1];
    char code[7];
    int rc;
    char err[200];
} sms_job;

static void sms_job_run(uv_work_t *w)
{
    sms_job *j = w->data;
    j->rc = sms_send(j->ask.srv->cfg.sms, j->ask.srv->cfg.sms_log_max, j->phone, j->code, j->err, sizeof j->err);
}

static void sms_job_done(uv_work_t *w, int status)
{
    sms_job *j = w->data;
    session *s = j->ask.s;
    if (session_returned(s)) {
        if (status != 0 || j->rc != 0) {
            fprintf(stderr, "parleyd: SMS for %s failed: %s\n", j->phone, j->err);
            session_error(s, j->ask.request_id, PERR_INTERNAL, "the code could not be sent; try again later");
        } else {
            Parley__CodeRequested cr = PARLEY__CODE_REQUESTED__INIT;
            cr.has_expires_in_seconds = 1;
            cr.expires_in_seconds = CODE_TTL_MS / 1000;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_CODE_REQUESTED;
            f.code_requested = &cr;
            session_reply(s, j->ask.request_id, &f);
        }
    }
    sodium_memzero(j->code, sizeof j->code);
    __atomic_sub_fetch(&reg.sms_in_flight, 1, __ATOMIC_RELAXED);
    free(j);
}

static void on_request_code(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__RequestCode *m = f->request_code;
    if (!phone_is_e164(m->phone)) {
        session_error(s, rid, PERR_INVALID_PHONE, NULL);
        return;
    }
    server *srv = session_server(s);
    if (__atomic_add_fetch(&reg.sms_in_flight, 1, __ATOMIC_RELAXED) > srv->cfg.sms_queue) {
        __atomic_sub_fetch(&reg.sms_in_flight, 1, __ATOMIC_RELAXED);
        session_error_full(s, rid, PERR_RATE_LIMITED, "the SMS provider is busy; ask again shortly", 1000, NULL);
        return;
    }
    sms_job *j = calloc(1, sizeof *j);
    uint8_t address[16];
    bool client_address = session_address(s, address);
    int rc = j ? codes_request(m->phone, client_address ? address : NULL, clock_wall_ms(), j->code) : CODES_NO_MEMORY;
    if (rc != CODES_SEND) {
        free(j);
        __atomic_sub_fetch(&reg.sms_in_flight, 1, __ATOMIC_RELAXED);
        if (rc == CODES_NO_MEMORY)
            session_error(s, rid, PERR_INTERNAL, "out of memory");
        else
            session_error(s, rid, PERR_CODE_RATE_LIMITED,
                          rc == CODES_ADDRESS_LIMITED ? "too many codes for this number from this address; try later"
                                                      : NULL);
        return;
    }
    j->work.data = j;
    snprintf(j->phone, sizeof j->phone, "%s", m->phone);
    session_ask_begin(&j->ask, s, rid);
    ws_conn_postpone(s->conn, SMS_WAIT_MS); /* a slow gateway is not the client's lateness */
    if (uv_queue_work(s->conn->tcp.loop, &j->work, sms_job_run, sms_job_done) != 0) {
        s->pending--;
        __atomic_sub_fetch(&reg.sms_in_flight, 1, __ATOMIC_RELAXED);
        free(j);
        session_error(s, rid, PERR_INTERNAL, "the code could not be sent");
    }
}

/* ---- Register ----------------------------------------------------------------------- */

typedef struct {
    store_registration r;
    session_ask ask;
} register_request;

/* Back on the connection's thread, after the commit: only now is the device durable. */
static void register_done(store_req *req, int status)
{
    register_request *j = (register_request *)req;
    session *s = j->ask.s;
    if (status == STORE_OK) { /* connections of the replaced device end */
        store_device d = {.device = j->r.primary.device};
        memcpy(d.account, j->r.account, STORE_ACCOUNT_ID_LEN);
        bus_kick(j->ask.srv->bus, &d, BUS_KICK_ALL);
    }
    if (!session_returned(s)) {
        /* the connection is gone; the registration stands */
    } else if (status != STORE_OK) {
        session_store_error(s, j->ask.request_id, status);
    } else {
        Parley__Registered r = PARLEY__REGISTERED__INIT;
        r.has_account_id = 1;
        r.account_id = (ProtobufCBinaryData){sizeof j->r.account, j->r.account};
        r.has_device_id = 1;
        r.device_id = j->r.primary.device;
        Parley__Frame f = PARLEY__FRAME__INIT;
        f.body_case = PARLEY__FRAME__BODY_REGISTERED;
        f.registered = &r;
        session_reply(s, j->ask.request_id, &f);
    }
    free(j);
}

static void on_register(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__Register *m = f->register_;
    if (!phone_is_e164(m->phone)) {
        session_error(s, rid, PERR_INVALID_PHONE, NULL);
        return;
    }
    store_device_record primary = {.device = 1, .registration_id = m->registration_id};
    if (!m->has_identity_key ||
        ps_pubkey_parse(primary.identity_key, m->identity_key.data, m->identity_key.len) != PS_OK) {
        session_error(s, rid, PERR_INVALID_KEY, NULL);
        return;
    }
    if (!codes_waiting(m->phone, clock_wall_ms())) {
        session_error(s, rid, PERR_WRONG_CODE, "no code was requested for this number");
        return;
    }
    register_request *j = calloc(1, sizeof *j);
    if (!j) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    const char *why = "Register needs keys with a signed prekey";
    uint32_t key_error = m->keys ? keys_parse(&j->r.keys, m->keys, primary.identity_key, &why) : PERR_INVALID_PREKEY;
    if (!key_error && !j->r.keys.has_signed)
        key_error = PERR_INVALID_PREKEY;
    if (key_error) { /* before the code is checked: a bad upload costs no attempt */
        free(j);
        session_error(s, rid, key_error, why);
        return;
    }
    uint8_t address[16];
    bool client_address = session_address(s, address);
    uint32_t code_error = codes_check(m->phone, m->code, client_address ? address : NULL, clock_wall_ms());
    if (code_error) {
        free(j);
        session_error(s, rid, code_error, NULL);
        return;
    }
    j->r.req.done = register_done;
    snprintf(j->r.phone, sizeof j->r.phone, "%s", m->phone);
    j->r.primary = primary;
    j->r.max_held = KEYS_MAX_HELD;
    j->r.now = clock_wall_ms();
    randombytes_buf(j->r.new_id, sizeof j->r.new_id);
    session_ask_begin(&j->ask, s, rid);
    store_register(session_server(s)->st, session_thread(s)->home, &j->r);
}

static void on_sweep(uv_timer_t *timer)
{
    (void)timer;
    codes_sweep(clock_wall_ms(), SWEEP_BUCKETS);
}

static int thread_start(io_thread *t)
{
    if (t->index != 0)
        return 0;
    uv_timer_init(&t->loop, &reg.sweep);
    return uv_timer_start(&reg.sweep, on_sweep, SWEEP_EVERY_MS, SWEEP_EVERY_MS);
}

static void thread_stop(io_thread *t)
{
    if (t->index == 0)
        uv_close((uv_handle_t *)&reg.sweep, NULL);
}

static void stop(server *srv)
{
    (void)srv;
    codes_clear();
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_REQUEST_CODE, false, RATE_CODES, on_request_code},
    {PARLEY__FRAME__BODY_REGISTER, false, RATE_NONE, on_register},
    {0},
};

const service register_service = {
    .name = "register", .routes = routes, .stop = stop, .thread_start = thread_start, .thread_stop = thread_stop};
