/* peer.c - the Parley protocol on one connection (docs/protocol.md): Hello, ping,
 * registration by one-time code, challenge-response authentication, lookup, the
 * connection rate limit, and a clear Error for every frame that cannot be served;
 * messaging.c does the rest. A connection costs a small struct; the nonce exists
 * only between Connect and Authenticate. */
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keys.h"
#include "peer.h"
#include "primitives.h"

#define CODE_TTL_MS (10 * 60 * 1000)
#define CODE_ATTEMPTS 5
#define CODES_PER_HOUR 5
#define AUTH_CONTEXT "parley-auth-v1"

void peer_send_frame(ws_conn *c, Parley__Frame *f)
{
    f->has_version = 1;
    f->version = PARLEY_PROTOCOL_VERSION;
    size_t n = parley__frame__get_packed_size(f);
    uint8_t stack[512], *buf = n <= sizeof stack ? stack : malloc(n);
    if (!buf) {
        ws_conn_abort(c);
        return;
    }
    parley__frame__pack(f, buf);
    ws_conn_send(c, WS_OP_BINARY, buf, n);
    if (buf != stack)
        free(buf);
}

void peer_reply(ws_conn *c, uint64_t request_id, Parley__Frame *f)
{
    f->has_request_id = request_id != 0;
    f->request_id = request_id;
    peer_send_frame(c, f);
}

void peer_error_full(ws_conn *c, uint64_t request_id, uint32_t code, const char *reason,
                     uint32_t retry_after_ms, Parley__DeviceList *devices)
{
    Parley__Error e = PARLEY__ERROR__INIT;
    e.has_code = 1;
    e.code = code;
    e.reason = (char *)reason;
    e.has_retry_after_ms = retry_after_ms != 0;
    e.retry_after_ms = retry_after_ms;
    e.devices = devices;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_ERROR;
    f.error = &e;
    peer_reply(c, request_id, &f);
}

void peer_error(ws_conn *c, uint64_t request_id, uint32_t code, const char *reason)
{
    peer_error_full(c, request_id, code, reason, 0, NULL);
}

void peer_store_error(ws_conn *c, uint64_t request_id, int status)
{
    if (status == STORE_FULL)
        peer_error(c, request_id, PERR_STORAGE_FULL,
                   "the server cannot store this now; nothing was stored, try again later");
    else
        peer_error(c, request_id, PERR_INTERNAL, store_strerror(status));
}

void peer_submit(peer *p, writer_job *job)
{
    p->pending_work++;
    writer_submit(server_of(p->conn)->wr, &thread_of(p->conn)->home, job);
}

void job_origin_init(job_origin *o, ws_conn *c, peer *p, uint64_t request_id)
{
    o->srv = server_of(c);
    o->p = p;
    o->request_id = request_id;
    o->device = p->device;
    memcpy(o->key_prefix, p->key_prefix, sizeof o->key_prefix);
}

int job_origin_current(store_batch *b, const job_origin *o)
{
    store_device_record rec;
    int rc = store_batch_device_get(b, &o->device, &rec);
    if (rc == STORE_OK && memcmp(rec.identity_key, o->key_prefix, sizeof o->key_prefix) != 0)
        rc = STORE_NOT_FOUND;
    return rc == STORE_NOT_FOUND ? JOB_REPLACED : rc;
}

void peer_job_error(ws_conn *c, uint64_t request_id, int status)
{
    if (status == JOB_UNKNOWN_ACCOUNT) {
        peer_error(c, request_id, PERR_UNKNOWN_ACCOUNT, "no such account");
    } else if (status == JOB_REPLACED) {
        const char *why = "this device was replaced by a new registration";
        peer_error(c, request_id, PERR_AUTH_FAILED, why);
        ws_conn_close(c, PARLEY_CLOSE_REPLACED, why);
    } else {
        peer_store_error(c, request_id, status);
    }
}

#define MAX_IN_FLIGHT 64 /* requests of one connection awaiting the writer */

bool peer_take_token(ws_conn *c, peer *p, uint64_t request_id, rate_table *limit, const char *what)
{
    uint32_t retry = 0;
    if (p->pending_work >= MAX_IN_FLIGHT) {
        peer_error_full(c, request_id, PERR_RATE_LIMITED, "too many requests waiting for storage",
                        50, NULL);
        return false;
    }
    if (rate_table_take(limit, &p->device, sizeof p->device, clock_wall_ms(), &retry))
        return true;
    char reason[128];
    snprintf(reason, sizeof reason, "too many %s from this device; slow down", what);
    peer_error_full(c, request_id, PERR_RATE_LIMITED, reason, retry ? retry : 1, NULL);
    return false;
}

bool peer_job_returned(peer *p)
{
    p->pending_work--;
    if (p->conn)
        return true;
    if (p->pending_work == 0)
        free(p); /* the connection went away while the work was out */
    return false;
}

/* ---- registration ------------------------------------------------------------ */

static bool phone_valid(const char *p)
{
    size_t n = p ? strlen(p) : 0;
    if (n < 8 || n > STORE_PHONE_MAX || p[0] != '+' || p[1] == '0')
        return false;
    for (size_t i = 1; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return false;
    return true;
}

/* Finds (or adds) phone's entry. Entries whose code expired and whose last send is
 * over an hour old are dropped on the way, so the table holds only numbers active in
 * the last hour and cannot grow without bound. Called with codes_lock held. */
static code_entry *find_code(server *srv, const char *phone, bool create)
{
    uint64_t now = clock_wall_ms();
    code_entry *found = NULL;
    for (code_entry **link = &srv->codes; *link;) {
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
    e->next = srv->codes;
    srv->codes = e;
    return e;
}

typedef struct {
    uv_work_t work;
    peer *p;
    server *srv;
    uint64_t request_id;
    char phone[STORE_PHONE_MAX + 1];
    char code[7];
    int rc;
    char err[200];
} sms_job;

static void sms_job_run(uv_work_t *w)
{
    sms_job *j = w->data;
    j->rc = sms_send(j->srv->cfg.sms, j->phone, j->code, j->err, sizeof j->err);
}

static void sms_job_done(uv_work_t *w, int status)
{
    sms_job *j = w->data;
    peer *p = j->p;
    if (peer_job_returned(p)) {
        if (status != 0 || j->rc != 0) {
            fprintf(stderr, "parleyd: SMS for %s failed: %s\n", j->phone, j->err);
            peer_error(p->conn, j->request_id, PERR_INTERNAL,
                       "the code could not be sent; try again later");
        } else {
            Parley__CodeRequested cr = PARLEY__CODE_REQUESTED__INIT;
            cr.has_expires_in_seconds = 1;
            cr.expires_in_seconds = CODE_TTL_MS / 1000;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_CODE_REQUESTED;
            f.code_requested = &cr;
            peer_reply(p->conn, j->request_id, &f);
        }
    }
    sodium_memzero(j->code, sizeof j->code);
    free(j);
}

static void on_request_code(ws_conn *c, peer *p, uint64_t rid, const Parley__RequestCode *m)
{
    server *srv = server_of(c);
    if (!phone_valid(m->phone)) {
        peer_error(c, rid, PERR_INVALID_PHONE, "not an E.164 phone number");
        return;
    }
    uint64_t now = clock_wall_ms();
    sms_job *j = calloc(1, sizeof *j);
    if (!j) {
        peer_error(c, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    pthread_mutex_lock(&srv->codes_lock);
    code_entry *e = find_code(srv, m->phone, true);
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
    pthread_mutex_unlock(&srv->codes_lock);
    if (!e || limited) {
        free(j);
        peer_error(c, rid, e ? PERR_CODE_RATE_LIMITED : PERR_INTERNAL,
                   e ? "too many codes for this number; try again within the hour" : "out of memory");
        return;
    }
    j->work.data = j;
    j->p = p;
    j->srv = srv;
    j->request_id = rid;
    snprintf(j->phone, sizeof j->phone, "%s", m->phone);
    p->pending_work++;
    if (uv_queue_work(c->tcp.loop, &j->work, sms_job_run, sms_job_done) != 0) {
        p->pending_work--;
        free(j);
        peer_error(c, rid, PERR_INTERNAL, "the code could not be sent");
    }
}

/* Is a code waiting for phone (without using an attempt)? Keeps Register frames for
 * numbers nobody asked a code for from costing a signature check. */
static bool code_waiting(server *srv, const char *phone)
{
    pthread_mutex_lock(&srv->codes_lock);
    code_entry *e = find_code(srv, phone, false);
    bool waiting = e && e->code[0];
    pthread_mutex_unlock(&srv->codes_lock);
    return waiting;
}

/* Checks a code; burns it after too many wrong tries or once used. */
static uint32_t check_code(server *srv, const char *phone, const char *code)
{
    uint32_t result;
    pthread_mutex_lock(&srv->codes_lock);
    code_entry *e = find_code(srv, phone, false);
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
    pthread_mutex_unlock(&srv->codes_lock);
    return result;
}

typedef struct {
    writer_job job;
    server *srv;
    peer *p;
    uint64_t request_id;
    char phone[STORE_PHONE_MAX + 1];
    store_device_record primary;
    uint8_t new_id[STORE_ACCOUNT_ID_LEN];
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    struct keys_upload keys;
} register_job;

/* The device and its first keys, in one batch: it is never in the directory without them. */
static int register_apply(store_batch *b, writer_job *job)
{
    register_job *j = (register_job *)job;
    int rc = store_register(b, j->phone, j->new_id, &j->primary, j->account);
    store_device d = {.device = j->primary.device};
    memcpy(d.account, j->account, STORE_ACCOUNT_ID_LEN);
    size_t left;
    return rc == STORE_OK ? keys_upload_apply(b, &d, &j->keys, clock_wall_ms(), &left) : rc;
}

/* Back on the connection's thread, after the commit: only now is the device durable. */
static void register_done(writer_job *job, int status)
{
    register_job *j = (register_job *)job;
    peer *p = j->p;
    if (status == STORE_OK) { /* connections of the replaced device end */
        store_device d = {.device = j->primary.device};
        memcpy(d.account, j->account, STORE_ACCOUNT_ID_LEN);
        routes_kick(j->srv, &d);
    }
    if (!peer_job_returned(p)) {
        /* the connection is gone; the registration stands */
    } else if (status != STORE_OK) {
        keys_job_error(p->conn, j->request_id, status);
    } else {
        Parley__Registered r = PARLEY__REGISTERED__INIT;
        r.has_account_id = 1;
        r.account_id = (ProtobufCBinaryData){sizeof j->account, j->account};
        r.has_device_id = 1;
        r.device_id = j->primary.device;
        Parley__Frame f = PARLEY__FRAME__INIT;
        f.body_case = PARLEY__FRAME__BODY_REGISTERED;
        f.registered = &r;
        peer_reply(p->conn, j->request_id, &f);
    }
    free(j);
}

static void on_register(ws_conn *c, peer *p, uint64_t rid, const Parley__Register *m)
{
    server *srv = server_of(c);
    if (!phone_valid(m->phone)) {
        peer_error(c, rid, PERR_INVALID_PHONE, "not an E.164 phone number");
        return;
    }
    store_device_record primary = {.device = 1, .registration_id = m->registration_id};
    if (!m->has_identity_key ||
        ps_pubkey_parse(primary.identity_key, m->identity_key.data, m->identity_key.len) != PS_OK) {
        peer_error(c, rid, PERR_INVALID_KEY,
                   "identity_key must be a 33-byte Curve25519 key (0x05 || u)");
        return;
    }
    if (!code_waiting(srv, m->phone)) {
        peer_error(c, rid, PERR_WRONG_CODE, "no code was requested for this number");
        return;
    }
    register_job *j = malloc(sizeof *j);
    if (!j) {
        peer_error(c, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    memset(j, 0, sizeof *j);
    const char *why = "Register needs keys with a signed prekey";
    uint32_t key_error = m->keys ? keys_upload_parse(&j->keys, m->keys, primary.identity_key, &why)
                                 : PERR_INVALID_PREKEY;
    if (!key_error && !j->keys.has_signed)
        key_error = PERR_INVALID_PREKEY;
    if (key_error) { /* before the code is checked: a bad upload costs no attempt */
        free(j);
        peer_error(c, rid, key_error, why);
        return;
    }
    uint32_t code_error = check_code(srv, m->phone, m->code);
    if (code_error) {
        peer_error(c, rid, code_error, code_error == PERR_WRONG_CODE ? "wrong code"
                                       : code_error == PERR_CODE_EXPIRED
                                           ? "the code expired; request a new one"
                                           : "too many wrong codes; request a new one");
        free(j);
        return;
    }
    j->job.apply = register_apply;
    j->job.isolated = true; /* its keys may be refused after the account is written */
    j->job.done = register_done;
    j->srv = srv;
    j->p = p;
    j->request_id = rid;
    snprintf(j->phone, sizeof j->phone, "%s", m->phone);
    j->primary = primary;
    randombytes_buf(j->new_id, sizeof j->new_id);
    peer_submit(p, &j->job);
}

/* ---- authentication ------------------------------------------------------------ */

static void on_connect(ws_conn *c, peer *p, uint64_t rid, const Parley__Connect *m)
{
    if (p->state == PEER_AUTHENTICATED) {
        peer_error(c, rid, PERR_AUTH_FAILED, "already authenticated");
        return;
    }
    if (!m->has_account_id || m->account_id.len != STORE_ACCOUNT_ID_LEN || !m->has_device_id) {
        peer_error(c, rid, PERR_MALFORMED_FRAME, "Connect needs account_id (16 bytes) and device_id");
        return;
    }
    if (!p->nonce && !(p->nonce = malloc(32))) {
        peer_error(c, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    randombytes_buf(p->nonce, 32);
    memcpy(p->device.account, m->account_id.data, STORE_ACCOUNT_ID_LEN);
    p->device.device = m->device_id;
    p->receive = !m->has_receive || m->receive;
    p->state = PEER_CHALLENGED;
    Parley__Challenge ch = PARLEY__CHALLENGE__INIT;
    ch.has_nonce = 1;
    ch.nonce = (ProtobufCBinaryData){32, p->nonce};
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_CHALLENGE;
    f.challenge = &ch;
    peer_reply(c, rid, &f);
}

static void on_authenticate(ws_conn *c, peer *p, uint64_t rid, const Parley__Authenticate *m)
{
    server *srv = server_of(c);
    if (p->state != PEER_CHALLENGED) {
        peer_error(c, rid, PERR_AUTH_FAILED, "send Connect first");
        return;
    }
    uint8_t msg[sizeof AUTH_CONTEXT - 1 + 32 + 16 + 4];
    memcpy(msg, AUTH_CONTEXT, sizeof AUTH_CONTEXT - 1);
    memcpy(msg + sizeof AUTH_CONTEXT - 1, p->nonce, 32);
    memcpy(msg + sizeof AUTH_CONTEXT - 1 + 32, p->device.account, 16);
    uint8_t *d = msg + sizeof AUTH_CONTEXT - 1 + 48;
    d[0] = (uint8_t)(p->device.device >> 24), d[1] = (uint8_t)(p->device.device >> 16);
    d[2] = (uint8_t)(p->device.device >> 8), d[3] = (uint8_t)p->device.device;
    /* the nonce is good for one try: a new Connect is needed after a failure */
    free(p->nonce);
    p->nonce = NULL;
    p->state = PEER_NEW;
    store_device_record rec;
    int rc = store_device_get(srv->st, &p->device, &rec);
    if (rc != STORE_OK || !m->has_signature || m->signature.len != PS_SIG_LEN ||
        !ps_xeddsa_verify(rec.identity_key, msg, sizeof msg, m->signature.data)) {
        peer_error(c, rid, PERR_AUTH_FAILED,
                   rc == STORE_NOT_FOUND ? "unknown device" : "the signature does not verify");
        return;
    }
    p->state = PEER_AUTHENTICATED;
    p->route_id = routes_next_id(srv);
    memcpy(p->key_prefix, rec.identity_key, sizeof p->key_prefix);
    Parley__Authenticated a = PARLEY__AUTHENTICATED__INIT;
    a.has_server_time_ms = 1;
    a.server_time_ms = clock_wall_ms();
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_AUTHENTICATED;
    f.authenticated = &a;
    peer_reply(c, rid, &f);
    messaging_authenticated(p); /* a receiving connection: routed, and its inbox drained */
}

static void on_lookup(ws_conn *c, uint64_t rid, const Parley__Lookup *m)
{
    server *srv = server_of(c);
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    char phone[STORE_PHONE_MAX + 1] = "";
    uint32_t ids[8];
    size_t n = 0;
    int rc = STORE_NOT_FOUND;
    if (m->has_account_id && m->account_id.len == STORE_ACCOUNT_ID_LEN) {
        memcpy(account, m->account_id.data, STORE_ACCOUNT_ID_LEN);
        rc = store_phone_by_account(srv->st, account, phone);
    } else if (m->has_account_id) {
        peer_error(c, rid, PERR_MALFORMED_FRAME, "account_id must be 16 bytes");
        return;
    } else if (phone_valid(m->phone)) {
        rc = store_account_by_phone(srv->st, m->phone, account);
        snprintf(phone, sizeof phone, "%s", m->phone);
    }
    if (rc == STORE_OK)
        rc = store_account_devices(srv->st, account, ids, 8, &n);
    if (rc == STORE_OK && n == 0)
        rc = STORE_NOT_FOUND;
    if (rc != STORE_OK) {
        if (rc == STORE_NOT_FOUND)
            peer_error(c, rid, PERR_UNKNOWN_ACCOUNT,
                       m->has_account_id ? "no such account" : "no account has this number");
        else
            peer_store_error(c, rid, rc);
        return;
    }
    Parley__DeviceList dl = PARLEY__DEVICE_LIST__INIT;
    dl.has_account_id = 1;
    dl.account_id = (ProtobufCBinaryData){sizeof account, account};
    dl.n_device_ids = n;
    dl.device_ids = ids;
    Parley__LookupResult lr = PARLEY__LOOKUP_RESULT__INIT;
    lr.devices = &dl;
    lr.phone = phone;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_LOOKUP_RESULT;
    f.lookup_result = &lr;
    peer_reply(c, rid, &f);
}

/* ---- dispatch ------------------------------------------------------------------ */

static void on_open(ws_conn *c)
{
    server *srv = server_of(c);
    peer *p = calloc(1, sizeof *p);
    if (!p) {
        ws_conn_close(c, WS_CLOSE_INTERNAL_ERROR, "out of memory");
        return;
    }
    p->conn = c;
    c->user = p;
    struct sockaddr_storage addr;
    int alen = sizeof addr;
    uint32_t retry = 0;
    uint8_t key[16] = {0}; /* the address alone: every port of a client counts */
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&addr, &alen) == 0) {
        if (addr.ss_family == AF_INET)
            memcpy(key, &((const struct sockaddr_in *)&addr)->sin_addr, 4);
        else if (addr.ss_family == AF_INET6)
            memcpy(key, &((const struct sockaddr_in6 *)&addr)->sin6_addr, 16);
    }
    if (!rate_table_take(&srv->conn_limit, key, sizeof key, clock_wall_ms(), &retry)) {
        peer_error_full(c, 0, PERR_CONNECTION_RATE_LIMITED,
                        "too many new connections from this address; try again later", retry ? retry : 1, NULL);
        ws_conn_close(c, WS_CLOSE_POLICY, "connection rate limited");
        return;
    }
    Parley__Hello h = PARLEY__HELLO__INIT;
    h.has_protocol_version = 1;
    h.protocol_version = PARLEY_PROTOCOL_VERSION;
    h.has_heartbeat_seconds = 1;
    h.heartbeat_seconds = srv->cfg.heartbeat_seconds;
    h.has_server_time_ms = 1;
    h.server_time_ms = clock_wall_ms();
    h.has_max_frame_bytes = 1;
    h.max_frame_bytes = srv->cfg.max_frame_bytes;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_HELLO;
    f.hello = &h;
    peer_send_frame(c, &f);
}

static bool on_message(ws_conn *c, int opcode, uint8_t *data, size_t len)
{
    peer *p = c->user;
    if (!p)
        return false;
    if (opcode == WS_OP_TEXT) {
        peer_error(c, 0, PERR_TEXT_FRAME, "send binary frames: text frames are not part of the protocol");
        return true;
    }
    Parley__Frame *f = parley__frame__unpack(NULL, len, data);
    if (!f) {
        peer_error(c, 0, PERR_MALFORMED_FRAME, "not a Parley frame");
        return true;
    }
    uint64_t rid = f->has_request_id ? f->request_id : 0;
    if (f->has_version && f->version != PARLEY_PROTOCOL_VERSION) {
        peer_error(c, rid, PERR_UNSUPPORTED_VERSION, "this server speaks protocol version 1");
        parley__frame__free_unpacked(f, NULL);
        return true;
    }
    bool authed = p->state == PEER_AUTHENTICATED;
    switch (f->body_case) {
    case PARLEY__FRAME__BODY_PING: {
        Parley__Pong pong = PARLEY__PONG__INIT;
        pong.has_nonce = f->ping->has_nonce;
        pong.nonce = f->ping->nonce;
        Parley__Frame r = PARLEY__FRAME__INIT;
        r.body_case = PARLEY__FRAME__BODY_PONG;
        r.pong = &pong;
        peer_reply(c, rid, &r);
        break;
    }
    case PARLEY__FRAME__BODY_REQUEST_CODE:
        on_request_code(c, p, rid, f->request_code);
        break;
    case PARLEY__FRAME__BODY_REGISTER:
        on_register(c, p, rid, f->register_);
        break;
    case PARLEY__FRAME__BODY_CONNECT:
        on_connect(c, p, rid, f->connect);
        break;
    case PARLEY__FRAME__BODY_AUTHENTICATE:
        on_authenticate(c, p, rid, f->authenticate);
        break;
    case PARLEY__FRAME__BODY_LOOKUP:
    case PARLEY__FRAME__BODY_SEND:
    case PARLEY__FRAME__BODY_DELIVER_ACK:
    case PARLEY__FRAME__BODY_RECEIPT:
    case PARLEY__FRAME__BODY_UPLOAD_KEYS:
    case PARLEY__FRAME__BODY_FETCH_BUNDLES:
        if (!authed)
            peer_error(c, rid, PERR_NOT_AUTHENTICATED, "authenticate first");
        else if (f->body_case == PARLEY__FRAME__BODY_LOOKUP)
            on_lookup(c, rid, f->lookup);
        else if (f->body_case == PARLEY__FRAME__BODY_SEND)
            on_send(c, p, rid, f->send);
        else if (f->body_case == PARLEY__FRAME__BODY_DELIVER_ACK)
            on_deliver_ack(c, p, f->deliver_ack);
        else if (f->body_case == PARLEY__FRAME__BODY_UPLOAD_KEYS)
            on_upload_keys(c, p, rid, f->upload_keys);
        else if (f->body_case == PARLEY__FRAME__BODY_FETCH_BUNDLES)
            on_fetch_bundles(c, p, rid, f->fetch_bundles);
        else
            on_receipt(c, p, rid, f->receipt);
        break;
    case PARLEY__FRAME__BODY__NOT_SET: /* a body from a newer protocol arrives as an unknown field */
        if (f->base.n_unknown_fields)
            peer_error(c, rid, PERR_UNKNOWN_FRAME, "a frame type this server does not know");
        else
            peer_error(c, rid, PERR_MALFORMED_FRAME, "the frame has no body");
        break;
    default:
        peer_error(c, rid, PERR_UNKNOWN_FRAME, "clients do not send this frame");
        break;
    }
    parley__frame__free_unpacked(f, NULL);
    return true;
}

static void on_closed(ws_conn *c)
{
    peer *p = c->user;
    if (!p)
        return;
    messaging_closed(p);
    free(p->nonce);
    p->nonce = NULL;
    p->conn = NULL;
    if (p->pending_work == 0)
        free(p);
}

static void on_writable(ws_conn *c)
{
    peer *p = c->user;
    if (p && p->pump_blocked) { /* deliveries paused for a slow reader go on */
        p->pump_blocked = false;
        messaging_pump(p);
    }
}

const ws_conn_callbacks peer_callbacks = {on_open, on_message, on_closed, on_writable};
