/* inbox.c - receiving. A Deliver frame is handled whole, in arrival order, once every
 * sender in it has a name: in one SQLite transaction each envelope is
 *
 *   - checked against what we stored before (sender account, device, message id): a
 *     redelivery whose ack was lost is acked again, never decrypted twice;
 *   - decrypted (e2e.c), and its session state, the one-time prekey it used (deleted)
 *     and the message stored together; a PreKey message naming a new identity key for
 *     a device we knew records the change first;
 *   - or, when it cannot be decrypted, stored as undecryptable (problem set) with a
 *     RETRY receipt queued for the sender's device, which answers with a resend under a
 *     new id naming the original (Content.retry_of): that fills the row in;
 *   - a receipt: delivered/read moves our messages on; RETRY queues a resend;
 *   - the server's low-stock notice: our prekeys are topped up (keys.c).
 *
 * Only after the commit is the DeliverAck sent and are the events reported: a
 * session's state is on disk before its message is acked, so a crash never leaves a
 * ratchet behind what the server thinks we have. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "clock.h"
#include "content.pb-c.h"
#include "primitives.h"
#include "utf8.h"

#define RECEIPT_BATCH 1000       /* message ids per Receipt frame */

/* The requests of receiving, each with its reply handler (below). */
static void on_lookup_account_reply(parley *p, request *r, const Parley__Frame *f);
static void on_receipt_reply(parley *p, request *r, const Parley__Frame *f);
static void receipt_free(request *r);
const request_type lookup_account_request = {"lookup by account", on_lookup_account_reply, NULL};
static const request_type receipt_request = {"receipt", on_receipt_reply, receipt_free};

typedef struct {
    request base;
    uint8_t account[PARLEY_ID_LEN];     /* the sender to name */
} lookup_account_req;

/* READ receipts (batched per author account) or RETRY receipts (per author device). */
typedef struct {
    request base;
    bool retry;
    uint8_t account[PARLEY_ID_LEN];     /* the author */
    uint32_t device;                    /* RETRY: the author's device */
    uint8_t (*ids)[PARLEY_ID_LEN];
    size_t n_ids;
} receipt_req;

static void receipt_free(request *r)
{
    free(((receipt_req *)r)->ids);
}
#define MAX_BODY (256 * 1024)    /* an incoming body larger than this is not read */
#define MAX_FAILURES 20          /* failed SignalMessages in a row from one device per connection:
                                    then its further SignalMessages are not tried (a forgery
                                    costs up to 41 sessions' work) until one of its PreKey
                                    messages (always tried) decrypts */

static void inbox_down(parley *p)
{
    while (p->in.dq_len) {
        parley__frame__free_unpacked(p->in.dq[p->in.dq_head], NULL);
        p->in.dq_head = (p->in.dq_head + 1) % MAX_DELIVER_QUEUE;
        p->in.dq_len--;
    }
    p->in.dq_head = 0;
    p->in.dq_bytes = 0;
    p->in.n_unnamed = 0;
    p->in.n_failing = 0;
    p->in.receipts_disabled = false;
}

void inbox_free(parley *p)
{
    inbox_down(p);
    free(p->in.unnamed);
    p->in.unnamed = NULL;
}

/* ---- senders' names ------------------------------------------------------------------ */

static bool is_unnamed(const parley *p, const uint8_t *account)
{
    for (size_t i = 0; i < p->in.n_unnamed; i++)
        if (same_id(p->in.unnamed[i], account))
            return true;
    return false;
}

static void add_unnamed(parley *p, const uint8_t *account)
{
    if (!p->in.unnamed && !(p->in.unnamed = malloc(MAX_UNNAMED * sizeof *p->in.unnamed))) {
        /* not recorded, it would be asked for again and again: start over later */
        conn_fail(&p->conn, PARLEY_ERR_NOMEM, false, "out of memory");
        return;
    }
    if (!is_unnamed(p, account)) {
        if (p->in.n_unnamed == MAX_UNNAMED) /* forget the oldest; worst case it is asked again */
            memmove(p->in.unnamed[0], p->in.unnamed[1], (MAX_UNNAMED - 1) * PARLEY_ID_LEN), p->in.n_unnamed--;
        memcpy(p->in.unnamed[p->in.n_unnamed++], account, PARLEY_ID_LEN);
    }
}

/* The phone of account into out (out[0] = 0 if the server could not name it).
 * Returns false while a name is still to come from the server. */
static bool name_of(parley *p, const uint8_t *account, char out[PARLEY_PHONE_MAX + 1], bool ask)
{
    out[0] = 0;
    if (same_id(account, p->ident.account)) {
        snprintf(out, PARLEY_PHONE_MAX + 1, "%s", p->ident.phone);
        return true;
    }
    db_contact c;
    if (db_contact_by_account(p->db, account, &c) == DB_OK && c.phone[0]) {
        snprintf(out, PARLEY_PHONE_MAX + 1, "%s", c.phone);
        return true;
    }
    if (is_unnamed(p, account))
        return true;
    if (!ask)
        return false;
    for (request *r = req_first(p, &lookup_account_request); r; r = req_next(r, &lookup_account_request))
        if (same_id(((lookup_account_req *)r)->account, account))
            return false;
    if (req_count(p, &lookup_phone_request) + req_count(p, &lookup_account_request) >= MAX_LOOKUPS)
        return false;
    lookup_account_req *r = req_new(p, &lookup_account_request, sizeof *r);
    if (!r)
        return false;
    memcpy(r->account, account, PARLEY_ID_LEN);
    Parley__Lookup l = PARLEY__LOOKUP__INIT;
    l.has_account_id = 1;
    l.account_id = (ProtobufCBinaryData){PARLEY_ID_LEN, r->account};
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_LOOKUP;
    f.lookup = &l;
    req_send(p, &r->base, &f);
    return false;
}

static void on_lookup_account_reply(parley *p, request *req, const Parley__Frame *f)
{
    const lookup_account_req *r = (const lookup_account_req *)req;
    const Parley__LookupResult *lr = f->body_case == PARLEY__FRAME__BODY_LOOKUP_RESULT ? f->lookup_result : NULL;
    if (lr && lr->phone && parley_phone_valid(lr->phone) && lr->devices && lr->devices->has_account_id &&
        lr->devices->account_id.len == PARLEY_ID_LEN && same_id(lr->devices->account_id.data, r->account)) {
        if (store_device_list(p, lr->devices, lr->phone))
            return;
    }
    if (f->body_case == PARLEY__FRAME__BODY_ERROR && f->error->code != PERR_UNKNOWN_ACCOUNT &&
        f->error->code != PERR_MALFORMED_FRAME) {
        /* a passing trouble: nothing of the frame is acked; it comes again on the next
         * connection, and the sender is asked for again */
        conn_fail(&p->conn, PARLEY_ERR_NETWORK, false, "the server could not name a sender now; trying again");
        return;
    }
    add_unnamed(p, r->account); /* the server does not know it: shown without a number */
}

static bool account_ok(const ProtobufCBinaryData *b, bool has)
{
    return has && b->len == PARLEY_ID_LEN;
}

/* ---- decryption failures per sender device ----------------------------------------- */

static unsigned *failures_of(parley *p, const uint8_t *account, uint32_t device, bool add)
{
    for (size_t i = 0; i < p->in.n_failing; i++)
        if (p->in.failing[i].device == device && same_id(p->in.failing[i].account, account))
            return &p->in.failing[i].failures;
    if (!add)
        return NULL;
    if (p->in.n_failing == MAX_FAILING) /* forget the oldest */
        memmove(&p->in.failing[0], &p->in.failing[1], (MAX_FAILING - 1) * sizeof p->in.failing[0]), p->in.n_failing--;
    memcpy(p->in.failing[p->in.n_failing].account, account, PARLEY_ID_LEN);
    p->in.failing[p->in.n_failing].device = device;
    p->in.failing[p->in.n_failing].failures = 0;
    return &p->in.failing[p->in.n_failing++].failures;
}

/* ---- envelopes ------------------------------------------------------------------------ */

/* What one envelope came to, kept until the transaction committed. */
typedef struct {
    int kind;                          /* 0 nothing to report, 1 message, 2 receipt */
    uint8_t id[PARLEY_ID_LEN];         /* message: its id (a resend's: the message it replaces) */
    char phone[PARLEY_PHONE_MAX + 1];
    Parley__Content *content;          /* message, NULL when unreadable */
    const char *problem;
    char problem_buf[200];
    bool identity_changed, was_verified;
    uint8_t (*ids)[PARLEY_ID_LEN];     /* receipt: the ids that moved */
    size_t n_ids;
} env_result;

/* A decrypted body as Content, or why it is not one. */
static const char *read_content(const uint8_t *data, size_t len, Parley__Content **content)
{
    *content = NULL;
    if (len == 0)
        return "an empty message";
    Parley__Content *c = parley__content__unpack(&ps_wiping_allocator, len, data); /* plaintext: wiped when freed */
    if (!c)
        return "a message that is not in the Parley format";
    const char *why = NULL;
    size_t tlen = c->text ? strlen(c->text) : 0;
    if (!c->text)
        why = "a message with no text";
    else if (tlen > PARLEY_MAX_TEXT)
        why = "a message with too long a text";
    else if (parley__content__get_packed_size(c) != len)
        why = "a message whose text holds a NUL byte"; /* strlen stopped early: re-packing is shorter */
    else if (!utf8_valid((const uint8_t *)c->text, tlen))
        why = "a message whose text is not UTF-8";
    if (why) {
        parley__content__free_unpacked(c, &ps_wiping_allocator);
        return why;
    }
    *content = c;
    return NULL;
}

static const char *decrypt_problem(int rc)
{
    switch (rc) {
    case PS_ERR_NO_SESSION: return "no session with the sender's device";
    case PS_ERR_NO_PREKEY: return "it names a prekey this device does not have";
    case PS_ERR_BAD_MAC: return "bad MAC: altered, or not for this session";
    case PS_ERR_DUPLICATE: return "its key was used already";
    case PS_ERR_TOO_FAR: return "too far ahead in its chain";
    case PS_ERR_VERSION: return "an unknown message version";
    default: return e2e_strerror(rc);
    }
}

/* The Signal layer of one message: the body decrypted (its session stored, the used
 * one-time prekey deleted, a new identity key recorded) and read as Content into res,
 * or the problem; *retry when the sender should be asked to send it again. Returns -1
 * on a storage error (then nothing of the frame is acked). */
static int open_body(parley *p, const Parley__Envelope *e, env_result *res, e2e_opened *o, bool *retry)
{
    const uint8_t *account = e->sender_account.data;
    uint32_t device = e->has_sender_device ? e->sender_device : 0;
    *retry = false;
    if (!e->has_body || e->body.len == 0) {
        res->problem = "an empty message";
    } else if (e->body.len > MAX_BODY) {
        res->problem = "a message larger than this client reads";
    } else if (!e->has_type || (e->type != PS_MSG_WHISPER && e->type != PS_MSG_PREKEY)) {
        res->problem = e->has_type && e->type == PS_MSG_SENDERKEY ? "a group message (not supported yet)"
                                                                  : "a message that was not end-to-end encrypted";
    } else if (device == 0) {
        res->problem = "a message without its sender's device";
    } else {
        unsigned *fails = failures_of(p, account, device, false);
        if (e->type == PS_MSG_WHISPER && fails && *fails >= MAX_FAILURES) {
            res->problem = "not decrypted: too many undecryptable messages from this device; the sender was "
                           "asked to send it again";
            *retry = true;
            return 0;
        }
        int rc = e2e_decrypt(p->db, account, device, e->type, e->body.data, e->body.len, o);
        if (rc == E2E_ERR_STORAGE || rc == PS_ERR_NOMEM)
            return -1; /* our trouble, not the message's: nothing is acked, it comes again */
        if (rc != E2E_OK) {
            snprintf(res->problem_buf, sizeof res->problem_buf,
                     "could not be decrypted (%s); the sender was asked to send it again", decrypt_problem(rc));
            res->problem = res->problem_buf;
            *retry = true;
            if ((fails = failures_of(p, account, device, true)))
                (*fails)++;
            return 0;
        }
        if ((fails = failures_of(p, account, device, false))) /* the device works: count anew */
            *fails = 0;
        res->problem = read_content(o->plaintext.data, o->plaintext.len, &res->content);
        if (o->prekey_message) { /* a new identity key is recorded before the message */
            db_identity_seen seen;
            if (e2e_identity_seen(p->db, account, device, res->phone, o->identity, &seen) != E2E_OK)
                return -1;
            res->identity_changed = seen.changed;
            res->was_verified = seen.was_verified;
        }
        if (e2e_opened_commit(p->db, account, device, o) != E2E_OK)
            return -1;
    }
    return 0;
}

/* A resend (Content.retry_of) fills in the row of the message it replaces, shown then
 * under that id; one we have already is ignored. The resend's own id is kept for
 * de-duplication. */
static int store_resend(parley *p, const Parley__Envelope *e, env_result *res, db_message *m)
{
    const Parley__Content *c = res->content;
    int fill;
    if (db_incoming_fill(p->db, m->peer_account, m->from_device, c->retry_of.data, m->text, m->text_len,
                         m->sent_ms, &fill) != DB_OK ||
        db_incoming_absorb(p->db, m->peer_account, m->from_device, e->message_id.data) != DB_OK)
        return -1;
    memcpy(res->id, c->retry_of.data, PARLEY_ID_LEN);
    res->kind = fill == DB_FILL_DONE ? 1 : 0;
    if (fill == DB_FILL_ABSENT) { /* the original never came: this is it */
        bool inserted;
        memcpy(m->id, c->retry_of.data, PARLEY_ID_LEN);
        if (db_incoming_add(p->db, m, &inserted) != DB_OK)
            return -1;
        res->kind = inserted ? 1 : 0;
    }
    return 0;
}

static int store_message(parley *p, const Parley__Envelope *e, env_result *res)
{
    bool seen, retry, inserted;
    e2e_opened o;
    memset(&o, 0, sizeof o);
    /* a redelivery (our ack was lost): acked again, never decrypted again */
    if (db_incoming_seen(p->db, e->sender_account.data, e->sender_device, e->message_id.data, &seen) != DB_OK)
        return -1;
    if (seen)
        return 0;
    int rc = open_body(p, e, res, &o, &retry);
    e2e_opened_clear(&o);
    if (rc != 0)
        return -1;
    db_message m;
    memset(&m, 0, sizeof m);
    memcpy(m.id, e->message_id.data, PARLEY_ID_LEN);
    memcpy(res->id, m.id, PARLEY_ID_LEN);
    snprintf(m.peer_phone, sizeof m.peer_phone, "%s", res->phone);
    snprintf(m.conversation, sizeof m.conversation, "%s", res->phone); /* one-to-one: the sender's chat */
    m.has_peer_account = true;
    memcpy(m.peer_account, e->sender_account.data, PARLEY_ID_LEN);
    m.from_device = e->sender_device;
    m.text = res->content ? res->content->text : NULL;
    m.text_len = m.text ? strlen(m.text) : 0;
    m.problem = res->problem;
    m.sent_ms = res->content && res->content->has_sent_ms ? res->content->sent_ms : 0;
    m.server_time_ms = e->server_time_ms;
    if (res->content && res->content->has_retry_of && res->content->retry_of.len == PARLEY_ID_LEN)
        return store_resend(p, e, res, &m);
    if (db_incoming_add(p->db, &m, &inserted) != DB_OK)
        return -1;
    if (inserted && retry && db_retry_add(p->db, m.peer_account, m.from_device, m.id) != DB_OK)
        return -1;
    res->kind = inserted ? 1 : 0; /* a duplicate is not shown again */
    return 0;
}

static int store_receipt(parley *p, const Parley__ReceiptBody *rb, env_result *res)
{
    if (!account_ok(&rb->from_account, rb->has_from_account))
        return 0; /* nothing we can apply */
    if (rb->status == PARLEY__RECEIPT_STATUS__RETRY) {
        /* "could not decrypt these": a new session and a resend, to that device only */
        if (!rb->has_from_device || rb->from_device == 0)
            return 0;
        for (size_t i = 0; i < rb->n_message_ids; i++)
            if (rb->message_ids[i].len == PARLEY_ID_LEN &&
                !queue_resend(p, rb->message_ids[i].data, rb->from_account.data, rb->from_device))
                return -1;
        return 0;
    }
    if (rb->status != PARLEY__RECEIPT_STATUS__DELIVERED && rb->status != PARLEY__RECEIPT_STATUS__READ)
        return 0;
    int state = rb->status == PARLEY__RECEIPT_STATUS__READ ? PARLEY_STATE_READ : PARLEY_STATE_DELIVERED;
    size_t cap = rb->n_message_ids;
    if (cap && !(res->ids = malloc(cap * PARLEY_ID_LEN)))
        return -1;
    for (size_t i = 0; i < rb->n_message_ids; i++) {
        bool changed;
        if (rb->message_ids[i].len != PARLEY_ID_LEN)
            continue;
        if (db_outgoing_advance(p->db, rb->message_ids[i].data, rb->from_account.data, state, &changed) != DB_OK)
            return -1;
        if (changed)
            memcpy(res->ids[res->n_ids++], rb->message_ids[i].data, PARLEY_ID_LEN);
    }
    if (state == PARLEY_STATE_READ && rb->has_up_to_server_ms) {
        uint8_t(*more)[PARLEY_ID_LEN];
        size_t n_more;
        if (db_outgoing_read_up_to(p->db, rb->from_account.data, rb->up_to_server_ms, &more, &n_more) != DB_OK)
            return -1;
        if (n_more) {
            uint8_t(*grown)[PARLEY_ID_LEN] = realloc(res->ids, (res->n_ids + n_more) * PARLEY_ID_LEN);
            if (!grown) {
                free(more);
                return -1;
            }
            res->ids = grown;
            memcpy(res->ids[res->n_ids], more, n_more * PARLEY_ID_LEN);
            res->n_ids += n_more;
        }
        free(more);
    }
    res->kind = res->n_ids ? 2 : 0;
    return 0;
}

static void free_results(env_result *res, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (res[i].content)
            parley__content__free_unpacked(res[i].content, &ps_wiping_allocator);
        free(res[i].ids);
    }
    free(res);
}

static bool is_message(const Parley__Envelope *e)
{
    return !e->receipt && account_ok(&e->sender_account, e->has_sender_account) &&
           account_ok(&e->message_id, e->has_message_id);
}

/* The server's notice that our one-time prekeys run low: no sender, no body. */
static bool is_keys_notice(const Parley__Envelope *e)
{
    return !e->receipt && !e->has_sender_account && !e->has_body && e->has_prekeys_left;
}

/* Stores every envelope of one Deliver (one transaction), acks, then reports.
 * Returns false when it could not be stored: nothing is acked, the server resends. */
static bool handle_deliver(parley *p, const Parley__Deliver *d)
{
    size_t n = d->n_envelopes;
    env_result *res = calloc(n ? n : 1, sizeof *res);
    uint64_t up_to = 0;
    char reason[400];
    if (!res || db_begin(p->db) != DB_OK) {
        free(res);
        snprintf(reason, sizeof reason, "cannot store incoming messages: %s", res ? db_errmsg(p->db) : "out of memory");
        emit_error(p, PARLEY_ERR_STORAGE, reason);
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        const Parley__Envelope *e = d->envelopes[i];
        if (e->seq > up_to)
            up_to = e->seq;
        if (e->receipt) {
            ok = store_receipt(p, e->receipt, &res[i]) == 0;
            if (ok && res[i].kind)
                name_of(p, e->receipt->from_account.data, res[i].phone, false);
        } else if (is_message(e)) {
            name_of(p, e->sender_account.data, res[i].phone, false);
            ok = store_message(p, e, &res[i]) == 0;
        } else if (is_keys_notice(e)) {
            keys_wanted(p); /* the keys feature asks after this frame */
        } /* else: no sender or id to store it under; acked with the rest, reported below */
    }
    if (!ok || db_commit(p->db) != DB_OK) {
        if (!ok)
            db_rollback(p->db);
        snprintf(reason, sizeof reason, "cannot store incoming messages: %s", db_errmsg(p->db));
        free_results(res, n);
        emit_error(p, PARLEY_ERR_STORAGE, reason);
        return false;
    }
    if (up_to) { /* only now, with everything on disk */
        Parley__DeliverAck ack = PARLEY__DELIVER_ACK__INIT;
        ack.has_up_to_seq = 1;
        ack.up_to_seq = up_to;
        Parley__Frame f = PARLEY__FRAME__INIT;
        f.body_case = PARLEY__FRAME__BODY_DELIVER_ACK;
        f.deliver_ack = &ack;
        conn_push(&p->conn, &f);
    }
    for (size_t i = 0; i < n; i++) {
        const Parley__Envelope *e = d->envelopes[i];
        parley_event ev;
        memset(&ev, 0, sizeof ev);
        if (res[i].identity_changed) /* before the message it came with */
            emit_identity_changed(p, res[i].phone, e->sender_device, res[i].was_verified);
        if (res[i].kind == 1) {
            ev.type = PARLEY_EVENT_MESSAGE;
            parley_message *m = &ev.message;
            memcpy(m->id, res[i].id, PARLEY_ID_LEN);
            m->peer = res[i].phone[0] ? res[i].phone : NULL;
            m->conversation = m->peer; /* one-to-one: the chat is the sender's */
            m->from_device = e->sender_device;
            m->server_time_ms = e->server_time_ms;
            m->sent_ms = res[i].content && res[i].content->has_sent_ms ? res[i].content->sent_ms : 0;
            m->text = res[i].content ? res[i].content->text : NULL;
            m->text_len = m->text ? strlen(m->text) : 0;
            m->problem = res[i].problem;
            m->state = PARLEY_STATE_RECEIVED;
            emit(p, &ev);
        } else if (res[i].kind == 2) {
            ev.type = PARLEY_EVENT_RECEIPT;
            ev.receipt.status = e->receipt->status == PARLEY__RECEIPT_STATUS__READ ? PARLEY_STATE_READ
                                                                                 : PARLEY_STATE_DELIVERED;
            ev.receipt.from = res[i].phone[0] ? res[i].phone : NULL;
            ev.receipt.from_device = e->receipt->from_device;
            ev.receipt.ids = (const uint8_t(*)[PARLEY_ID_LEN])res[i].ids;
            ev.receipt.n_ids = res[i].n_ids;
            emit(p, &ev);
        } else if (!e->receipt && !is_message(e) && !is_keys_notice(e)) {
            emit_error(p, PARLEY_ERR_REFUSED, "the server delivered an envelope without a sender or id; skipped");
        }
    }
    free_results(res, n);
    if (d->has_drained && d->drained) {
        parley_event ev = {.type = PARLEY_EVENT_DRAINED};
        emit(p, &ev);
    }
    return true;
}

/* Handles queued Deliver frames in order, each once the names of its senders are known.
 * Not re-entered: the event callback may call the API (an echo bot sends), whose pump
 * must not start on the frame whose events are being reported. */
static void process_deliveries(parley *p)
{
    if (p->in.delivering)
        return;
    p->in.delivering = true;
    /* only name_of asks for accounts, for the head frame: while one is out, it waits */
    while (p->in.dq_len && p->ready && !req_count(p, &lookup_account_request)) {
        Parley__Frame *f = p->in.dq[p->in.dq_head];
        const Parley__Deliver *d = f->deliver;
        bool named = true;
        char phone[PARLEY_PHONE_MAX + 1];
        for (size_t i = 0; i < d->n_envelopes; i++) {
            const Parley__Envelope *e = d->envelopes[i];
            if (e->receipt && account_ok(&e->receipt->from_account, e->receipt->has_from_account))
                named &= name_of(p, e->receipt->from_account.data, phone, true);
            else if (!e->receipt && account_ok(&e->sender_account, e->has_sender_account))
                named &= name_of(p, e->sender_account.data, phone, true);
        }
        if (!named)
            break; /* a lookup answer brings us back */
        if (!handle_deliver(p, d)) {
            conn_fail(&p->conn, PARLEY_ERR_STORAGE, false, "cannot store incoming messages; trying again later");
            break;
        }
        if (!p->in.dq_len) /* the connection went down while reporting (session_reset) */
            break;
        p->in.dq_bytes -= p->in.dq_sizes[p->in.dq_head];
        p->in.dq_head = (p->in.dq_head + 1) % MAX_DELIVER_QUEUE;
        p->in.dq_len--;
        parley__frame__free_unpacked(f, NULL);
    }
    p->in.delivering = false;
}


/* ---- receipts we send: READ (batched per author) and RETRY (per author device) ------- */

static void pump_receipts(parley *p)
{
    if (!p->ready || p->in.receipts_disabled || clock_mono_ms() < p->in.receipt_pause.until ||
        req_count(p, &receipt_request) > 0)
        return;
    receipt_req *r = req_new(p, &receipt_request, sizeof *r);
    if (!r)
        return;
    if (!(r->ids = malloc(RECEIPT_BATCH * sizeof *r->ids))) {
        req_free(&r->base);
        return;
    }
    int rc = db_receipts_pending(p->db, r->account, r->ids, RECEIPT_BATCH, &r->n_ids);
    if (rc == DB_OK && r->n_ids == 0) {
        r->retry = true;
        rc = db_retry_pending(p->db, r->account, &r->device, r->ids, RECEIPT_BATCH, &r->n_ids);
    }
    if (rc != DB_OK)
        emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
    ProtobufCBinaryData *ids = rc == DB_OK && r->n_ids ? malloc(r->n_ids * sizeof *ids) : NULL;
    if (!ids) {
        req_free(&r->base);
        return;
    }
    for (size_t i = 0; i < r->n_ids; i++)
        ids[i] = (ProtobufCBinaryData){PARLEY_ID_LEN, r->ids[i]};
    Parley__Receipt rcpt = PARLEY__RECEIPT__INIT;
    rcpt.has_status = 1;
    rcpt.has_to_account = 1;
    rcpt.to_account = (ProtobufCBinaryData){PARLEY_ID_LEN, r->account};
    rcpt.message_ids = ids;
    if (r->retry) {
        rcpt.status = PARLEY__RECEIPT_STATUS__RETRY;
        rcpt.has_to_device = 1;
        rcpt.to_device = r->device;
    } else {
        rcpt.status = PARLEY__RECEIPT_STATUS__READ;
    }
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_RECEIPT;
    f.receipt = &rcpt;
    /* the server takes as many ids as its receipt envelope fits in a frame (18 bytes each) */
    size_t max_ids = p->conn.max_frame > 512 + 18 ? (p->conn.max_frame - 512) / 18 : 1;
    rcpt.n_message_ids = r->n_ids < max_ids ? r->n_ids : max_ids;
    while (rcpt.n_message_ids > 1 && !conn_fits(&p->conn, &f)) /* a server with small frames */
        rcpt.n_message_ids /= 2;
    r->n_ids = rcpt.n_message_ids;
    req_send(p, &r->base, &f);
    free(ids);
}

static int receipts_done(parley *p, const receipt_req *r)
{
    const uint8_t(*ids)[PARLEY_ID_LEN] = (const uint8_t(*)[PARLEY_ID_LEN])r->ids;
    return r->retry ? db_retry_sent(p->db, r->account, r->device, ids, r->n_ids)
                                        : db_receipts_sent(p->db, r->account, ids, r->n_ids);
}

static void on_receipt_reply(parley *p, request *req, const Parley__Frame *f)
{
    const receipt_req *r = (const receipt_req *)req;
    char reason[300];
    if (f->body_case == PARLEY__FRAME__BODY_RECEIPT_ACK) {
        p->in.receipt_pause.errors = 0;
        if (receipts_done(p, r) != DB_OK)
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        return;
    }
    if (pause_after_passing_error(f, &p->in.receipt_pause))
        return;
    uint32_t code = f->body_case == PARLEY__FRAME__BODY_ERROR ? f->error->code : 0;
    if ((r->retry && (code == PERR_UNKNOWN_ACCOUNT || code == PERR_MALFORMED_FRAME)) || code == PERR_INBOX_FULL) {
        /* the sender's device is gone or away for long (or the server will never take
         * these): given up, so that they do not hold up the receipts behind them */
        if (receipts_done(p, r) != DB_OK)
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        return;
    }
    p->in.receipts_disabled = true;
    snprintf(reason, sizeof reason, "the server does not accept %s receipts: %s",
             r->retry ? "retry" : "read", server_reason(f->error));
    emit_error(p, code == PERR_UNKNOWN_FRAME ? PARLEY_ERR_UNSUPPORTED : PARLEY_ERR_REFUSED, reason);
}

/* ---- the feature ------------------------------------------------------------------------- */

/* A Deliver frame: queued, handled in order by the pump. */
static bool on_deliver(parley *p, Parley__Frame *f)
{
    size_t size = parley__frame__get_packed_size(f);
    if (p->in.dq_len == MAX_DELIVER_QUEUE || size > MAX_DELIVER_BYTES - p->in.dq_bytes) {
        /* a server past its own delivery window: start over later */
        conn_fail(&p->conn, PARLEY_ERR_NETWORK, false, "the server sent more deliveries than this client holds");
        return false;
    }
    size_t at = (p->in.dq_head + p->in.dq_len) % MAX_DELIVER_QUEUE;
    p->in.dq[at] = f;
    p->in.dq_sizes[at] = size;
    p->in.dq_bytes += size;
    p->in.dq_len++;
    return true;
}

static uint64_t receipts_deadline(const parley *p)
{
    return p->in.receipts_disabled ? UINT64_MAX : pause_deadline(&p->in.receipt_pause);
}

static void receipts_timers(parley *p, uint64_t now)
{
    if (pause_over(&p->in.receipt_pause, now))
        pump_receipts(p);
}

const client_feature inbox_feature = {
    .name = "inbox",
    .down = inbox_down,
    .pump = process_deliveries,
    .push_body = PARLEY__FRAME__BODY_DELIVER,
    .push = on_deliver,
};

/* The receipts we send: a feature of their own so that they go after the outbox. */
const client_feature receipts_feature = {
    .name = "receipts",
    .pump = pump_receipts,
    .deadline = receipts_deadline,
    .timers = receipts_timers,
};
