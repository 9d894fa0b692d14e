/* send.c - Send (docs/protocol.md, "Messages"): validated here on the I/O thread, one
 * envelope packed per device message; the store de-duplicates it, checks it against the
 * device lists and appends each envelope to its device's inbox in one commit; SendAck
 * only after that commit, and the devices' receiving connections are woken. */
#include <stdlib.h>

#include "envelope.h"
#include "services.h"

#define BODY_OVERHEAD 1024 /* room for the envelope around a body in a Deliver */
/* key distributions in one group Send: one per device of a full group at most (the
 * frame's size bounds them first) */
#define GROUP_SEND_MAX_MESSAGES (STORE_GROUP_MAX * 5)

typedef struct {
    store_send r;
    session_ask ask;
    uint8_t *group_envelope; /* a group message's, packed once for every member device */
} send_request;

static void mismatch_error(session *s, uint64_t rid, store_send *r)
{
    ProtobufCBinaryData account = {STORE_ACCOUNT_ID_LEN, r->mismatch_account};
    Parley__DeviceList devices = PARLEY__DEVICE_LIST__INIT, stale = PARLEY__DEVICE_LIST__INIT;
    devices.has_account_id = stale.has_account_id = 1;
    devices.account_id = stale.account_id = account;
    devices.n_device_ids = r->mismatch_n;
    devices.device_ids = r->mismatch_ids;
    stale.n_device_ids = r->stale_n;
    stale.device_ids = r->stale_ids;
    Parley__Error e = PARLEY__ERROR__INIT;
    e.has_code = 1;
    e.code = PERR_DEVICE_MISMATCH;
    e.reason = r->stale_n ? "devices were registered again (new keys); encrypt for them anew and send again"
                          : (char *)perr_text(PERR_DEVICE_MISMATCH);
    e.devices = &devices;
    e.stale = r->stale_n ? &stale : NULL;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_ERROR;
    f.error = &e;
    session_reply(s, rid, &f);
}

static void send_done(store_req *req, int status)
{
    send_request *j = (send_request *)req;
    session *s = j->ask.s;
    if (status == STORE_OK && !j->r.duplicate) {
        session_wake(j->ask.srv, &j->r.targets);
        session_wake(j->ask.srv, &j->r.fanout);
    }
    if (session_returned(s)) {
        if (status == STORE_OK) {
            Parley__SendAck ack = PARLEY__SEND_ACK__INIT;
            ack.has_message_id = 1;
            ack.message_id = (ProtobufCBinaryData){STORE_MESSAGE_ID_LEN, j->r.message_id};
            ack.has_server_time_ms = 1;
            ack.server_time_ms = j->r.server_ms;
            ack.has_group_seq = j->r.group_seq != 0;
            ack.group_seq = j->r.group_seq;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_SEND_ACK;
            f.send_ack = &ack;
            session_reply(s, j->ask.request_id, &f);
        } else if (status == STORE_GROUP_STALE && j->r.group) {
            groups_reply_stale(s, j->ask.request_id, j->r.group);
        } else if (status == STORE_DEVICE_MISMATCH) {
            mismatch_error(s, j->ask.request_id, &j->r);
        } else if (status == STORE_INBOX_FULL) { /* which of the recipient's devices */
            Parley__DeviceList full = PARLEY__DEVICE_LIST__INIT;
            full.has_account_id = 1;
            full.account_id = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, j->r.recipient};
            full.n_device_ids = j->r.n_full;
            full.device_ids = j->r.full_ids;
            session_error_full(s, j->ask.request_id, PERR_INBOX_FULL, NULL, 0, &full);
        } else {
            session_store_error_retry(s, j->ask.request_id, status, j->r.retry_ms);
        }
    }
    store_entries_free(&j->r.targets);
    store_entries_free(&j->r.fanout);
    free(j->r.group);
    free(j->group_envelope);
    free(j);
}

/* Only end-to-end encrypted bodies are stored (Signal message types). */
static bool encrypted_type(uint32_t type)
{
    return type == 2 || type == 3 || type == 7;
}

/* Packs one envelope per device message into r->targets; NULL, or why the Send is
 * malformed (*plaintext: a body that is not end-to-end encrypted). */
static const char *pack_targets(session *s, const Parley__Send *m, store_send *r, bool *plaintext)
{
    const server_config *cfg = &session_server(s)->cfg;
    Parley__Envelope e = PARLEY__ENVELOPE__INIT;
    e.has_sender_account = e.has_sender_device = e.has_message_id = e.has_server_time_ms = 1;
    e.sender_account = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, s->device.account};
    e.sender_device = s->device.device;
    e.message_id = m->message_id;
    e.server_time_ms = r->accepted_ms;
    *plaintext = false;
    for (size_t i = 0; i < m->n_messages; i++) {
        const Parley__DeviceMessage *dm = m->messages[i];
        store_device d = {.device = dm->device_id};
        if ((dm->has_account_id && dm->account_id.len != STORE_ACCOUNT_ID_LEN) || !dm->has_device_id ||
            dm->device_id == 0 || !dm->has_body) /* checked before anything is read from it */
            return "each device message needs device_id, body and at most a 16-byte account_id";
        if (r->to_group && !dm->has_account_id)
            return "each device message of a group send names its account_id";
        memcpy(d.account, dm->has_account_id ? dm->account_id.data : m->recipient_account.data, STORE_ACCOUNT_ID_LEN);
        if (!r->to_group && !same_account(d.account, m->recipient_account.data) &&
            !same_account(d.account, s->device.account))
            return "a device message may go to the recipient or to the sender's own devices only";
        if (d.device == s->device.device && same_account(d.account, s->device.account))
            return "a device does not send to itself";
        if (dm->body.len > cfg->max_frame_bytes - BODY_OVERHEAD)
            return "a message body is too large";
        if (!dm->has_type || !encrypted_type(dm->type)) {
            *plaintext = true;
            return NULL;
        }
        for (size_t t = 0; t < r->targets.n; t++)
            if (memcmp(&r->targets.items[t].device, &d, sizeof d) == 0)
                return "two device messages for the same device";
        e.has_type = 1;
        e.type = dm->type;
        e.has_body = 1;
        e.body = dm->body;
        e.has_group_id = r->to_group; /* a key distribution: the group it is for */
        e.group_id = (ProtobufCBinaryData){STORE_GROUP_ID_LEN, r->group_id};
        if (envelope_add(&r->targets, &d, &e) != STORE_OK)
            return "out of memory";
        store_entry *t = &r->targets.items[r->targets.n - 1];
        t->check_registration = dm->has_registration_id;
        t->registration_id = dm->registration_id;
    }
    bool to_recipient = false; /* a resend still goes to the recipient: not only to our own devices */
    for (size_t t = 0; r->resend && t < r->targets.n; t++)
        to_recipient |= same_account(r->targets.items[t].device.account, m->recipient_account.data);
    if (r->resend && !to_recipient)
        return "a resend names at least one device of the recipient";
    return NULL;
}

/* The group's envelope, once: the server adds its group_seq (store_envelopes). */
static const char *pack_group(session *s, const Parley__Send *m, send_request *j)
{
    if (m->group_message.len > session_server(s)->cfg.max_frame_bytes - BODY_OVERHEAD)
        return "a message body is too large";
    Parley__Envelope e = PARLEY__ENVELOPE__INIT;
    e.has_sender_account = e.has_sender_device = e.has_message_id = e.has_server_time_ms = 1;
    e.sender_account = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, s->device.account};
    e.sender_device = s->device.device;
    e.message_id = m->message_id;
    e.server_time_ms = j->r.accepted_ms;
    e.has_type = e.has_body = e.has_group_id = 1;
    e.type = 7; /* a SenderKeyMessage */
    e.body = m->group_message;
    e.group_id = m->group_id;
    size_t len = parley__envelope__get_packed_size(&e);
    if (!(j->group_envelope = malloc(len)))
        return "out of memory";
    j->r.group_len = parley__envelope__pack(&e, j->group_envelope);
    j->r.group_envelope = j->group_envelope;
    return NULL;
}

/* Whether the Send's form is wrong (then it was answered here). A group Send carries the
 * group's message once and key distributions to member devices. */
static bool refused(session *s, uint64_t rid, const Parley__Send *m)
{
    bool group = m->has_group_id;
    if (!m->has_message_id || m->message_id.len != STORE_MESSAGE_ID_LEN ||
        (group ? m->group_id.len != STORE_GROUP_ID_LEN || !m->has_group_version || !m->has_group_message ||
                     m->has_recipient_account || (m->has_resend && m->resend)
               : !m->has_recipient_account || m->recipient_account.len != STORE_ACCOUNT_ID_LEN ||
                     m->n_messages == 0)) {
        session_error(s, rid, PERR_MALFORMED_FRAME,
                      group ? "a group Send needs message_id (16 bytes), group_id (16 bytes), group_version and "
                              "group_message, and no recipient_account"
                            : "Send needs message_id (16 bytes), recipient_account (16 bytes) and messages");
        return true;
    }
    if (m->n_messages > (group ? GROUP_SEND_MAX_MESSAGES : session_server(s)->cfg.max_recipients)) {
        session_error(s, rid, PERR_TOO_MANY_RECIPIENTS,
                      group ? "more key distributions than a group has devices" : NULL);
        return true;
    }
    return false;
}

static void on_send(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__Send *m = f->send;
    if (refused(s, rid, m))
        return;
    send_request *j = calloc(1, sizeof *j);
    if (!j) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    session_origin(s, &j->r.from);
    memcpy(j->r.message_id, m->message_id.data, STORE_MESSAGE_ID_LEN);
    j->r.accepted_ms = j->r.server_ms = clock_wall_ms();
    if (m->has_group_id) {
        j->r.to_group = true;
        memcpy(j->r.group_id, m->group_id.data, STORE_GROUP_ID_LEN);
        j->r.group_version = m->group_version;
    } else {
        memcpy(j->r.recipient, m->recipient_account.data, STORE_ACCOUNT_ID_LEN);
        j->r.resend = m->has_resend && m->resend;
    }
    bool plaintext;
    const char *bad = pack_targets(s, m, &j->r, &plaintext);
    if (!bad && !plaintext && j->r.to_group)
        bad = pack_group(s, m, j);
    if (bad || plaintext) {
        session_error(s, rid, plaintext ? PERR_PLAINTEXT_REFUSED : PERR_MALFORMED_FRAME, bad);
        store_entries_free(&j->r.targets);
        free(j->group_envelope);
        free(j);
        return;
    }
    j->r.req.done = send_done;
    session_ask_begin(&j->ask, s, rid);
    store_accept_send(session_server(s)->st, session_thread(s)->home, &j->r);
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_SEND, true, RATE_SENDS, on_send},
    {0},
};

const service send_service = {.name = "send", .routes = routes};
