/* register.c - registration by one-time code (docs/protocol.md, "Registration"):
 * RequestCode sends a code by the configured SMS provider (sms.c, off the loop);
 * Register checks it and registers the number's primary device with its first keys.
 * Codes are kept in memory (a restart voids them; the user asks again), at most 5 per
 * number per hour, 5 attempts each, 10 minutes long. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

#include "keys_rules.h"
#include "primitives.h"
#include "phone.h"
#include "services.h"
#include "sms.h"

#define CODE_TTL_MS (10 * 60 * 1000)
#define CODE_ATTEMPTS 5
#define CODES_PER_HOUR 5

typedef struct code_entry {
    char phone[STORE_PHONE_MAX + 1];
    char code[7];
    uint64_t expires_ms;
    uint32_t attempts_left;
    uint64_t sent_ms[CODES_PER_HOUR]; /* when the last codes were sent, for the hourly limit */
    struct code_entry *next;
} code_entry;

/* The service's state: the codes waiting, shared by every I/O thread. */
static struct {
    pthread_mutex_t lock;
    code_entry *codes;
} codes = {PTHREAD_MUTEX_INITIALIZER, NULL};

/* Finds (or adds) phone's entry. Entries whose code expired and whose last send is
 * over an hour old are dropped on the way, so the table holds only numbers active in
 * the last hour and cannot grow without bound. Called with the lock held. */
static code_entry *find_code(const char *phone, bool create)
{
    uint64_t now = clock_wall_ms();
    code_entry *found = NULL;
    for (code_entry **link = &codes.codes; *link;) {
        code_entry *e = *link;
        if (!found && strcmp(e->phone, phone) == 0) {
            found = e;
        } else if (now > e->expires_ms && now - e->sent_ms[0] >= 3600 * 1000) {
            *link = e->next;
            sodium_memzero(e, sizeof *e);
            free(e);
            continue;
        }
        link = &e->next;
    }
    if (found || !create)
        return found;
    code_entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    snprintf(e->phone, sizeof e->phone, "%s", phone);
    e->next = codes.codes;
    codes.codes = e;
    return e;
}

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
    j->rc = sms_send(j->ask.srv->cfg.sms, j->phone, j->code, j->err, sizeof j->err);
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
    free(j);
}

static void on_request_code(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__RequestCode *m = f->request_code;
    if (!phone_is_e164(m->phone)) {
        session_error(s, rid, PERR_INVALID_PHONE, NULL);
        return;
    }
    uint64_t now = clock_wall_ms();
    sms_job *j = calloc(1, sizeof *j);
    if (!j) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    pthread_mutex_lock(&codes.lock);
    code_entry *e = find_code(m->phone, true);
    int recent = 0;
    for (int i = 0; e && i < CODES_PER_HOUR; i++)
        recent += e->sent_ms[i] && now - e->sent_ms[i] < 3600 * 1000;
    bool limited = e && recent >= CODES_PER_HOUR;
    if (e && !limited) {
        snprintf(e->code, sizeof e->code, "%06u", (unsigned)randombytes_uniform(1000000));
        e->expires_ms = now + CODE_TTL_MS;
        e->attempts_left = CODE_ATTEMPTS;
        memmove(e->sent_ms + 1, e->sent_ms, (CODES_PER_HOUR - 1) * sizeof e->sent_ms[0]);
        e->sent_ms[0] = now;
        memcpy(j->code, e->code, sizeof j->code);
    }
    pthread_mutex_unlock(&codes.lock);
    if (!e || limited) {
        free(j);
        session_error(s, rid, e ? PERR_CODE_RATE_LIMITED : PERR_INTERNAL, e ? NULL : "out of memory");
        return;
    }
    j->work.data = j;
    snprintf(j->phone, sizeof j->phone, "%s", m->phone);
    session_ask_begin(&j->ask, s, rid);
    if (uv_queue_work(s->conn->tcp.loop, &j->work, sms_job_run, sms_job_done) != 0) {
        s->pending--;
        free(j);
        session_error(s, rid, PERR_INTERNAL, "the code could not be sent");
    }
}

/* ---- Register ----------------------------------------------------------------------- */

/* Is a code waiting for phone (without using an attempt)? Keeps Register frames for
 * numbers nobody asked a code for from costing a signature check. */
static bool code_waiting(const char *phone)
{
    pthread_mutex_lock(&codes.lock);
    code_entry *e = find_code(phone, false);
    bool waiting = e && e->code[0];
    pthread_mutex_unlock(&codes.lock);
    return waiting;
}

/* Checks a code; burns it after too many wrong tries or once used. */
static uint32_t check_code(const char *phone, const char *code)
{
    uint32_t result;
    pthread_mutex_lock(&codes.lock);
    code_entry *e = find_code(phone, false);
    if (!e || !e->code[0]) {
        result = PERR_WRONG_CODE;
    } else if (clock_wall_ms() > e->expires_ms) {
        result = PERR_CODE_EXPIRED;
    } else if (e->attempts_left == 0) {
        result = PERR_TOO_MANY_ATTEMPTS;
    } else if (!code || strlen(code) != 6 || sodium_memcmp(code, e->code, 6) != 0) {
        e->attempts_left--;
        result = e->attempts_left ? PERR_WRONG_CODE : PERR_TOO_MANY_ATTEMPTS;
    } else {
        sodium_memzero(e->code, sizeof e->code); /* one use */
        result = 0;
    }
    pthread_mutex_unlock(&codes.lock);
    return result;
}

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
    if (!code_waiting(m->phone)) {
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
    uint32_t code_error = check_code(m->phone, m->code);
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

static void stop(server *srv)
{
    (void)srv;
    pthread_mutex_lock(&codes.lock);
    for (code_entry *e = codes.codes, *next; e; e = next) {
        next = e->next;
        sodium_memzero(e, sizeof *e);
        free(e);
    }
    codes.codes = NULL;
    pthread_mutex_unlock(&codes.lock);
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_REQUEST_CODE, false, RATE_NONE, on_request_code},
    {PARLEY__FRAME__BODY_REGISTER, false, RATE_NONE, on_register},
    {0},
};

const service register_service = {.name = "register", .routes = routes, .stop = stop};
