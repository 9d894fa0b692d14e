/* messaging.c - store-and-forward (docs/protocol.md, "Messages"):
 *   Send: validated on the I/O thread, envelopes packed there; on the writer thread
 *         de-duplicated, checked against the device lists and appended, one envelope
 *         per device inbox; SendAck only after the commit.
 *   Deliver: straight from the inbox, in seq order, never more than a window of
 *         unacknowledged envelopes; online and offline devices take the same path
 *         (a commit wakes the device's receiving connection, which reads its inbox).
 *   DeliverAck: deletes, and puts delivered receipts in the senders' inboxes.
 *   Receipt: read receipts, routed durably to the author's devices; retry receipts
 *         ("could not decrypt") to the one device that sent the messages.
 *   Retention: a sweep on thread 0's timer deletes what is older than --retention. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbwire.h"
#include "peer.h"
#include "targets.h"

#define MAX_DEVICES 64                 /* devices listed per account (store bound) */
#define MAX_RECEIPT_IDS 1000           /* message ids in one receipt */
#define BODY_OVERHEAD 1024             /* room for the envelope around a body in a Deliver */
#define DELIVER_FRAME_TARGET (64 * 1024) /* or max_frame_bytes if smaller */
#define WRITE_QUEUE_HIGH (1 << 20)     /* bytes queued for a connection before deliveries pause */
#define DEDUP_MIN_MS (7ULL * 86400000) /* duplicates are recognised for at least 7 days */
#define SWEEP_MAX 10000                /* records removed per sweep job */

/* ---- Send ---------------------------------------------------------------------- */

typedef struct {
    writer_job job;
    job_origin from;                      /* the sending device */
    uint8_t message_id[STORE_MESSAGE_ID_LEN];
    uint8_t recipient[STORE_ACCOUNT_ID_LEN];
    uint64_t accepted_ms;                 /* when the I/O thread took it (in its envelopes) */
    uint64_t server_ms;                   /* for the ack: accepted_ms, or a duplicate's first */
    bool duplicate;
    bool resend;                          /* to the listed devices only */
    target_list targets;
    /* DEVICE_MISMATCH: the account's current devices, and those re-registered since */
    uint8_t mismatch_account[STORE_ACCOUNT_ID_LEN];
    uint32_t mismatch_ids[MAX_DEVICES];
    size_t mismatch_n;
    uint32_t stale_ids[MAX_DEVICES];
    size_t stale_n;
} send_job;

/* Does the send address exactly the devices of account (less the sender itself), each
 * with the registration id it has now? A resend may address some of them only. */
static int check_devices(store_batch *b, send_job *j, const uint8_t account[STORE_ACCOUNT_ID_LEN])
{
    store_device_record recs[MAX_DEVICES];
    size_t n, given = 0, expected = 0, stale = 0;
    int rc = store_batch_account_device_records(b, account, recs, MAX_DEVICES, &n);
    if (rc != STORE_OK)
        return rc;
    if (n == 0)
        return JOB_UNKNOWN_ACCOUNT;
    bool match = true;
    for (size_t i = 0; i < n; i++) {
        if (same_account(account, j->from.device.account) && recs[i].device == j->from.device.device)
            continue;
        expected++;
        const target *t = NULL;
        for (size_t k = 0; k < j->targets.n && !t; k++)
            if (j->targets.items[k].device.device == recs[i].device &&
                same_account(j->targets.items[k].device.account, account))
                t = &j->targets.items[k];
        if (t && t->check_registration && t->registration_id != recs[i].registration_id)
            j->stale_ids[stale++] = recs[i].device;
        match &= t != NULL || j->resend;
        given += t != NULL;
    }
    size_t addressed = 0; /* device messages for this account, existing devices or not */
    for (size_t k = 0; k < j->targets.n; k++)
        addressed += same_account(j->targets.items[k].device.account, account);
    if (match && stale == 0 && addressed == given && (j->resend || given == expected))
        return STORE_OK;
    memcpy(j->mismatch_account, account, STORE_ACCOUNT_ID_LEN);
    for (size_t i = 0; i < n; i++)
        j->mismatch_ids[i] = recs[i].device;
    j->mismatch_n = n;
    j->stale_n = stale;
    return JOB_DEVICE_MISMATCH;
}

static int send_apply(store_batch *b, writer_job *job)
{
    send_job *j = (send_job *)job;
    uint64_t first;
    j->duplicate = false; /* a batch may run twice (writer.h): nothing kept from a first run */
    j->server_ms = j->accepted_ms;
    int rc = job_origin_current(b, &j->from);
    if (rc != STORE_OK)
        return rc;
    rc = store_dedup_get(b, &j->from.device, j->message_id, &first);
    if (rc == STORE_OK) { /* a resend: the same ack, nothing new */
        j->server_ms = first;
        j->duplicate = true;
        return STORE_OK;
    }
    if (rc != STORE_NOT_FOUND)
        return rc;
    if ((rc = check_devices(b, j, j->recipient)) != STORE_OK)
        return rc;
    if (!same_account(j->recipient, j->from.device.account) &&
        (rc = check_devices(b, j, j->from.device.account)) != STORE_OK)
        return rc;
    if ((rc = targets_append(b, &j->targets, j->server_ms)) != STORE_OK)
        return rc;
    return store_dedup_put(b, &j->from.device, j->message_id, j->server_ms);
}

static void send_done(writer_job *job, int status)
{
    send_job *j = (send_job *)job;
    if (status == STORE_OK && !j->duplicate)
        targets_wake(j->from.srv, &j->targets);
    if (peer_job_returned(j->from.p)) {
        ws_conn *c = j->from.p->conn;
        if (status == STORE_OK) {
            Parley__SendAck ack = PARLEY__SEND_ACK__INIT;
            ack.has_message_id = 1;
            ack.message_id = (ProtobufCBinaryData){STORE_MESSAGE_ID_LEN, j->message_id};
            ack.has_server_time_ms = 1;
            ack.server_time_ms = j->server_ms;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_SEND_ACK;
            f.send_ack = &ack;
            peer_reply(c, j->from.request_id, &f);
        } else if (status == JOB_DEVICE_MISMATCH) {
            ProtobufCBinaryData account = {STORE_ACCOUNT_ID_LEN, j->mismatch_account};
            Parley__DeviceList devices = PARLEY__DEVICE_LIST__INIT, stale = PARLEY__DEVICE_LIST__INIT;
            devices.has_account_id = stale.has_account_id = 1;
            devices.account_id = stale.account_id = account;
            devices.n_device_ids = j->mismatch_n;
            devices.device_ids = j->mismatch_ids;
            stale.n_device_ids = j->stale_n;
            stale.device_ids = j->stale_ids;
            Parley__Error e = PARLEY__ERROR__INIT;
            e.has_code = 1;
            e.code = PERR_DEVICE_MISMATCH;
            e.reason = j->stale_n ? "devices were registered again (new keys); encrypt for them anew and send again"
                                  : "the device list changed; encrypt for these devices and send again";
            e.devices = &devices;
            e.stale = j->stale_n ? &stale : NULL;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_ERROR;
            f.error = &e;
            peer_reply(c, j->from.request_id, &f);
        } else {
            peer_job_error(c, j->from.request_id, status);
        }
    }
    targets_free(&j->targets);
    free(j);
}

/* Only end-to-end encrypted bodies are stored (Signal message types). */
static bool encrypted_type(uint32_t type)
{
    return type == 2 || type == 3 || type == 7;
}

void on_send(ws_conn *c, peer *p, uint64_t rid, const Parley__Send *m)
{
    server *srv = server_of(c);
    if (!m->has_message_id || m->message_id.len != STORE_MESSAGE_ID_LEN || !m->has_recipient_account ||
        m->recipient_account.len != STORE_ACCOUNT_ID_LEN || m->n_messages == 0) {
        peer_error(c, rid, PERR_MALFORMED_FRAME,
                   "Send needs message_id (16 bytes), recipient_account (16 bytes) and messages");
        return;
    }
    if (m->n_messages > srv->cfg.max_recipients) {
        peer_error(c, rid, PERR_TOO_MANY_RECIPIENTS, "too many device messages in one Send");
        return;
    }
    if (!peer_take_token(c, p, rid, &srv->send_limit, "sends"))
        return;
    send_job *j = calloc(1, sizeof *j);
    if (!j) {
        peer_error(c, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    job_origin_init(&j->from, c, p, rid);
    memcpy(j->message_id, m->message_id.data, STORE_MESSAGE_ID_LEN);
    memcpy(j->recipient, m->recipient_account.data, STORE_ACCOUNT_ID_LEN);
    j->resend = m->has_resend && m->resend;
    j->accepted_ms = j->server_ms = clock_wall_ms();
    Parley__Envelope e = PARLEY__ENVELOPE__INIT;
    e.has_sender_account = e.has_sender_device = e.has_message_id = e.has_server_time_ms = 1;
    e.sender_account = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, p->device.account};
    e.sender_device = p->device.device;
    e.message_id = m->message_id;
    e.server_time_ms = j->server_ms;
    const char *bad = NULL;
    bool plaintext = false;
    for (size_t i = 0; i < m->n_messages && !bad && !plaintext; i++) {
        const Parley__DeviceMessage *dm = m->messages[i];
        store_device d = {.device = dm->device_id};
        if ((dm->has_account_id && dm->account_id.len != STORE_ACCOUNT_ID_LEN) || !dm->has_device_id ||
            dm->device_id == 0 || !dm->has_body) { /* checked before anything is read from it */
            bad = "each device message needs device_id, body and at most a 16-byte account_id";
            break;
        }
        memcpy(d.account, dm->has_account_id ? dm->account_id.data : m->recipient_account.data,
               STORE_ACCOUNT_ID_LEN);
        if (!same_account(d.account, m->recipient_account.data) && !same_account(d.account, p->device.account))
            bad = "a device message may go to the recipient or to the sender's own devices only";
        else if (d.device == p->device.device && same_account(d.account, p->device.account))
            bad = "a device does not send to itself";
        else if (dm->body.len > srv->cfg.max_frame_bytes - BODY_OVERHEAD)
            bad = "a message body is too large";
        else if (!dm->has_type || !encrypted_type(dm->type))
            plaintext = true;
        for (size_t t = 0; t < j->targets.n && !bad; t++)
            if (memcmp(&j->targets.items[t].device, &d, sizeof d) == 0)
                bad = "two device messages for the same device";
        if (bad || plaintext)
            break;
        e.has_type = 1;
        e.type = dm->type;
        e.has_body = 1;
        e.body = dm->body;
        if (targets_add(&j->targets, &d, &e) != STORE_OK) {
            bad = "out of memory";
            break;
        }
        target *t = &j->targets.items[j->targets.n - 1];
        t->check_registration = dm->has_registration_id;
        t->registration_id = dm->registration_id;
    }
    bool to_recipient = false; /* a resend still goes to the recipient: not only to our own devices */
    for (size_t t = 0; t < j->targets.n; t++)
        to_recipient |= same_account(j->targets.items[t].device.account, m->recipient_account.data);
    if (!bad && !plaintext && j->resend && !to_recipient)
        bad = "a resend names at least one device of the recipient";
    if (bad || plaintext) {
        if (plaintext)
            peer_error(c, rid, PERR_PLAINTEXT_REFUSED,
                       "device messages must be end-to-end encrypted (type 2, 3 or 7)");
        else
            peer_error(c, rid, PERR_MALFORMED_FRAME, bad);
        targets_free(&j->targets);
        free(j);
        return;
    }
    j->job.apply = send_apply;
    j->job.done = send_done;
    peer_submit(p, &j->job);
}

/* ---- Receipts ------------------------------------------------------------------ */

typedef struct {
    writer_job job;
    job_origin from;         /* the reader (or the acking device: p NULL, no one to answer) */
    uint8_t to_account[STORE_ACCOUNT_ID_LEN];
    uint32_t to_device;      /* RETRY receipts: the one device that sent the messages */
    uint64_t up_to_seq;      /* delivered receipts: the DeliverAck */
    Parley__Envelope envelope;
    Parley__ReceiptBody body;
    ProtobufCBinaryData *ids;
    target_list targets;
} receipt_job;

static void receipt_job_free(receipt_job *j)
{
    targets_free(&j->targets);
    free(j->ids);
    free(j);
}

static void receipt_envelope_init(receipt_job *j, uint32_t status, uint64_t now)
{
    parley__envelope__init(&j->envelope);
    parley__receipt_body__init(&j->body);
    j->body.has_status = 1;
    j->body.status = status;
    j->body.has_from_account = 1;
    j->body.from_account = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, j->from.device.account};
    j->body.has_from_device = 1;
    j->body.from_device = j->from.device.device;
    j->envelope.has_sender_account = j->envelope.has_sender_device = 1;
    j->envelope.sender_account = j->body.from_account;
    j->envelope.sender_device = j->from.device.device;
    j->envelope.has_server_time_ms = 1;
    j->envelope.server_time_ms = now;
    j->envelope.receipt = &j->body;
}

static int read_receipt_apply(store_batch *b, writer_job *job)
{
    receipt_job *j = (receipt_job *)job;
    j->targets.n = j->targets.used = 0;
    int rc = job_origin_current(b, &j->from);
    if (rc == STORE_OK && j->to_device) { /* RETRY: to the sending device alone */
        store_device_record rec;
        store_device d = {.device = j->to_device};
        memcpy(d.account, j->to_account, STORE_ACCOUNT_ID_LEN);
        rc = store_batch_device_get(b, &d, &rec);
        if (rc == STORE_NOT_FOUND)
            rc = JOB_UNKNOWN_ACCOUNT;
        if (rc == STORE_OK)
            rc = targets_add(&j->targets, &d, &j->envelope);
    } else if (rc == STORE_OK) {
        rc = targets_add_account(b, j->to_account, &j->from.device, &j->envelope, &j->targets);
        if (rc == STORE_OK && !same_account(j->to_account, j->from.device.account)) /* the reader's other devices */
            rc = targets_add_account(b, j->from.device.account, &j->from.device, &j->envelope, &j->targets);
    }
    if (rc == STORE_OK)
        rc = targets_append(b, &j->targets, j->envelope.server_time_ms);
    return rc;
}

static void read_receipt_done(writer_job *job, int status)
{
    receipt_job *j = (receipt_job *)job;
    if (status == STORE_OK)
        targets_wake(j->from.srv, &j->targets);
    if (peer_job_returned(j->from.p)) {
        if (status == STORE_OK) {
            Parley__ReceiptAck ack = PARLEY__RECEIPT_ACK__INIT;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_RECEIPT_ACK;
            f.receipt_ack = &ack;
            peer_reply(j->from.p->conn, j->from.request_id, &f);
        } else {
            peer_job_error(j->from.p->conn, j->from.request_id, status);
        }
    }
    receipt_job_free(j);
}

void on_receipt(ws_conn *c, peer *p, uint64_t rid, const Parley__Receipt *m)
{
    server *srv = server_of(c);
    /* each id costs 18 bytes in the envelope: the receipt must fit a Deliver frame */
    size_t max_ids = (srv->cfg.max_frame_bytes - 512) / 18;
    bool ids_ok = m->n_message_ids <= MAX_RECEIPT_IDS && m->n_message_ids <= max_ids;
    for (size_t i = 0; i < m->n_message_ids && ids_ok; i++)
        ids_ok = m->message_ids[i].len == STORE_MESSAGE_ID_LEN;
    bool retry = m->has_status && m->status == PARLEY__RECEIPT_STATUS__RETRY;
    bool read = m->has_status && m->status == PARLEY__RECEIPT_STATUS__READ;
    if (!(read || retry) || !m->has_to_account || m->to_account.len != STORE_ACCOUNT_ID_LEN || !ids_ok ||
        (m->n_message_ids == 0 && !m->has_up_to_server_ms)) {
        peer_error(c, rid, PERR_MALFORMED_FRAME,
                   "Receipt needs status READ or RETRY, to_account (16 bytes) and up to 1000 message ids "
                   "(16 bytes each) or up_to_server_ms; delivered receipts come from the server");
        return;
    }
    if (retry != (m->has_to_device && m->to_device != 0) || (retry && (m->n_message_ids == 0 || m->has_up_to_server_ms))) {
        peer_error(c, rid, PERR_MALFORMED_FRAME,
                   "a RETRY receipt names to_device and message ids; a READ receipt names no device");
        return;
    }
    if (!peer_take_token(c, p, rid, &srv->send_limit, "sends and receipts"))
        return;
    receipt_job *j = calloc(1, sizeof *j);
    /* the request is freed after this call: the ids are copied into one block */
    size_t n = m->n_message_ids;
    ProtobufCBinaryData *ids = n ? malloc(n * (sizeof *ids + STORE_MESSAGE_ID_LEN)) : NULL;
    if (!j || (n && !ids)) {
        free(j);
        free(ids);
        peer_error(c, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    uint8_t *id_bytes = (uint8_t *)(ids + n);
    for (size_t i = 0; i < n; i++) {
        memcpy(id_bytes + i * STORE_MESSAGE_ID_LEN, m->message_ids[i].data, STORE_MESSAGE_ID_LEN);
        ids[i] = (ProtobufCBinaryData){STORE_MESSAGE_ID_LEN, id_bytes + i * STORE_MESSAGE_ID_LEN};
    }
    job_origin_init(&j->from, c, p, rid);
    memcpy(j->to_account, m->to_account.data, STORE_ACCOUNT_ID_LEN);
    j->to_device = retry ? m->to_device : 0;
    receipt_envelope_init(j, m->status, clock_wall_ms());
    j->ids = ids;
    j->body.n_message_ids = n;
    j->body.message_ids = ids;
    j->body.has_up_to_server_ms = m->has_up_to_server_ms;
    j->body.up_to_server_ms = m->up_to_server_ms;
    j->job.apply = read_receipt_apply;
    j->job.done = read_receipt_done;
    peer_submit(p, &j->job);
}

/* ---- DeliverAck and delivered receipts -------------------------------------------- */

typedef struct {
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    uint8_t id[STORE_MESSAGE_ID_LEN];
} delivered_id;

typedef struct {
    delivered_id *items;
    size_t n, cap;
    const uint8_t *acker;
    bool failed;
} delivered_list;

/* The author and message id of a stored envelope, read straight from its bytes: an ack
 * deletes a window of envelopes in the writer thread, where unpacking each one (with its
 * allocations and body copy) was a visible cost. False for receipts and notices. */
static bool envelope_author(const uint8_t *p, size_t len, const uint8_t **account, const uint8_t **id)
{
    const uint8_t *end = p + len;
    pbw_field f;
    bool bad = false;
    *account = *id = NULL;
    while (pbw_next_field(&p, end, &f, &bad)) {
        if (f.field == 2 && f.wire == 2 && f.len == STORE_ACCOUNT_ID_LEN)
            *account = f.data;
        else if (f.field == 4 && f.wire == 2 && f.len == STORE_MESSAGE_ID_LEN)
            *id = f.data;
        else if (f.field == 8) /* a receipt: no one to tell */
            return false;
    }
    return !bad && *account && *id;
}

/* Notes the author and id of each message envelope an ack deletes (not receipts, and
 * not the copies a device's own account sent it). */
static bool collect_delivered(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data, size_t len)
{
    delivered_list *l = ctx;
    const uint8_t *account, *id;
    (void)seq, (void)stored_ms;
    if (!envelope_author(data, len, &account, &id) || same_account(account, l->acker))
        return true;
    size_t bytes = l->cap * sizeof *l->items;
    if (!buf_grow(&l->items, &bytes, (l->n + 1) * sizeof *l->items, 64 * sizeof *l->items)) {
        l->failed = true;
        return true;
    }
    l->cap = bytes / sizeof *l->items;
    memcpy(l->items[l->n].account, account, STORE_ACCOUNT_ID_LEN);
    memcpy(l->items[l->n].id, id, STORE_MESSAGE_ID_LEN);
    l->n++;
    return true;
}

static int by_account(const void *a, const void *b)
{
    return memcmp(((const delivered_id *)a)->account, ((const delivered_id *)b)->account, STORE_ACCOUNT_ID_LEN);
}

/* Deletes what the device acked, then tells the authors. The receipts go in a nested
 * batch of their own: if they cannot be stored (a full disk), the deletions still
 * stand, so acks keep freeing space when nothing else can be written. */
static int ack_apply(store_batch *b, writer_job *job)
{
    receipt_job *j = (receipt_job *)job;
    delivered_list l = {.acker = j->from.device.account};
    j->targets.n = j->targets.used = 0;
    int rc = job_origin_current(b, &j->from);
    if (rc == STORE_OK)
        rc = store_inbox_take(b, &j->from.device, j->up_to_seq, collect_delivered, &l, NULL);
    if (rc == STORE_OK && l.failed)
        rc = STORE_NOMEM;
    if (rc != STORE_OK || l.n == 0) {
        free(l.items);
        return rc;
    }
    qsort(l.items, l.n, sizeof *l.items, by_account);
    store_batch *receipts = NULL;
    int rrc = store_batch_nest(b, &receipts);
    ProtobufCBinaryData ids[64];
    /* one receipt per author and run of at most 64 ids (a window's worth, usually one) */
    for (size_t i = 0; rrc == STORE_OK && i < l.n;) {
        size_t n = 0;
        const uint8_t *author = l.items[i].account;
        while (i < l.n && n < 64 && same_account(l.items[i].account, author))
            ids[n++] = (ProtobufCBinaryData){STORE_MESSAGE_ID_LEN, l.items[i++].id};
        j->body.n_message_ids = n;
        j->body.message_ids = ids;
        rrc = targets_add_account(receipts, author, NULL, &j->envelope, &j->targets);
        if (rrc == JOB_UNKNOWN_ACCOUNT) /* the author's devices are gone: no one to tell */
            rrc = STORE_OK;
    }
    j->body.n_message_ids = 0;
    j->body.message_ids = NULL;
    free(l.items);
    if (rrc == STORE_OK)
        rrc = targets_append(receipts, &j->targets, j->envelope.server_time_ms);
    if (rrc == STORE_OK)
        rrc = store_batch_commit(receipts);
    else if (receipts)
        store_batch_abort(receipts);
    if (rrc != STORE_OK) {
        fprintf(stderr, "parleyd: delivered receipts could not be stored: %s\n", store_strerror(rrc));
        j->targets.n = j->targets.used = 0; /* nothing to wake */
    }
    return STORE_OK;
}

static void ack_done(writer_job *job, int status)
{
    receipt_job *j = (receipt_job *)job;
    if (status == STORE_OK)
        targets_wake(j->from.srv, &j->targets);
    else if (status != JOB_REPLACED) /* the envelopes stay and come again on the next connection */
        fprintf(stderr, "parleyd: an ack could not be stored: %s\n", store_strerror(status));
    receipt_job_free(j);
}

void on_deliver_ack(ws_conn *c, peer *p, const Parley__DeliverAck *m)
{
    /* only what this connection delivered can be acknowledged on it */
    uint64_t up_to = m->up_to_seq < p->delivered_seq ? m->up_to_seq : p->delivered_seq;
    if (!m->has_up_to_seq || up_to <= p->acked_seq)
        return;
    receipt_job *j = calloc(1, sizeof *j);
    if (!j)
        return; /* as if the ack was lost: the envelopes come again on the next connection */
    p->acked_seq = up_to;
    job_origin_init(&j->from, c, p, 0);
    j->from.p = NULL; /* nothing to answer, and p may go before the job returns */
    j->up_to_seq = up_to;
    receipt_envelope_init(j, PARLEY__RECEIPT_STATUS__DELIVERED, clock_wall_ms());
    j->job.apply = ack_apply;
    j->job.done = ack_done;
    writer_submit(j->from.srv->wr, &thread_of(c)->home, &j->job);
    messaging_pump(p);
}

/* ---- Deliver ------------------------------------------------------------------- */

/* Deliver frames are written by hand from the stored envelopes: each stored envelope
 * is a packed Envelope without its seq, and protobuf lets the seq field come first,
 * so an envelope goes out as tag, length, seq field, stored bytes, with no unpacking.
 *   Frame   { 1: version = 1, 30: Deliver }
 *   Deliver { 1: Envelope (repeated), 2: drained } */
#define FRAME_HEAD_ROOM 16

typedef struct {
    peer *p;
    io_thread *t;
    size_t frame_target; /* flush a Deliver frame before it grows past this */
    size_t budget;       /* bytes this pump may queue for the connection */
    size_t produced;
    size_t len;          /* Deliver content bytes after FRAME_HEAD_ROOM */
    size_t count;
    uint64_t first_seq, last_seq;
    bool failed;
    bool full;           /* stopped at the byte budget, not at the end of the inbox */
} deliver_batch;

static bool reserve(io_thread *t, size_t need)
{
    return buf_grow(&t->deliver_buf, &t->deliver_cap, need, DELIVER_FRAME_TARGET + FRAME_HEAD_ROOM + 16);
}

static void flush_deliver(deliver_batch *d, bool drained)
{
    uint8_t *content = d->t->deliver_buf + FRAME_HEAD_ROOM;
    size_t len = d->len;
    if (drained) {
        content[len++] = 0x10; /* field 2, varint */
        content[len++] = 1;
    }
    uint8_t head[FRAME_HEAD_ROOM], *h = head;
    *h++ = 0x08; /* Frame.version */
    *h++ = PARLEY_PROTOCOL_VERSION;
    *h++ = 0xF2; /* Frame.deliver: field 30, length-delimited, as a two-byte varint tag */
    *h++ = 0x01;
    h = pbw_put_varint(h, len);
    size_t hlen = (size_t)(h - head);
    memcpy(content - hlen, head, hlen);
    ws_conn_send(d->p->conn, WS_OP_BINARY, content - hlen, hlen + len);
    d->len = 0;
}

static bool add_envelope(void *ctx, uint64_t seq, uint64_t stored_ms, const uint8_t *data, size_t len)
{
    deliver_batch *d = ctx;
    (void)stored_ms;
    size_t item = 1 + pbw_varint_len(seq) + len;
    size_t need = 1 + pbw_varint_len(item) + item;
    if (d->count && d->produced + need > d->budget) { /* the first always goes: progress */
        d->full = true;
        return false;
    }
    d->produced += need;
    if (d->len && d->len + need > d->frame_target)
        flush_deliver(d, false);
    if (!reserve(d->t, FRAME_HEAD_ROOM + d->len + need + 2)) { /* +2: the drained field */
        d->failed = true;
        return false;
    }
    uint8_t *w = d->t->deliver_buf + FRAME_HEAD_ROOM + d->len;
    *w++ = 0x0A; /* Deliver.envelopes */
    w = pbw_put_varint(w, item);
    *w++ = 0x08; /* Envelope.seq */
    w = pbw_put_varint(w, seq);
    memcpy(w, data, len);
    d->len += need;
    if (!d->count++)
        d->first_seq = seq;
    d->last_seq = seq;
    return true;
}

void messaging_pump(peer *p)
{
    ws_conn *c = p->conn;
    if (!c || c->closing || !p->receive || p->state != PEER_AUTHENTICATED)
        return;
    io_thread *t = thread_of(c);
    const server_config *cfg = &t->srv->cfg;
    uint64_t in_flight = p->delivered_seq - p->acked_seq; /* seq distance: never less than the count */
    if (in_flight >= cfg->deliver_window)
        return; /* the next ack resumes */
    if (ws_conn_queued(c) >= WRITE_QUEUE_HIGH) {
        p->pump_blocked = true; /* the write queue emptying resumes */
        return;
    }
    size_t want = cfg->deliver_window - in_flight;
    deliver_batch d = {.p = p, .t = t, .budget = WRITE_QUEUE_HIGH - ws_conn_queued(c),
                       .frame_target = cfg->max_frame_bytes < DELIVER_FRAME_TARGET ? cfg->max_frame_bytes
                                                                                 : DELIVER_FRAME_TARGET};
    if (!reserve(t, FRAME_HEAD_ROOM + 2))
        return;
    int rc = store_inbox_read(t->srv->st, &p->device, p->delivered_seq, want, add_envelope, &d);
    if (rc != STORE_OK || d.failed) /* what was read still goes; the next ack or wake retries */
        fprintf(stderr, "parleyd: reading an inbox failed: %s\n",
                d.failed ? "out of memory" : store_strerror(rc));
    if (d.count) {
        if (p->delivered_seq == 0) /* the window counts from the first envelope handed out */
            p->acked_seq = d.first_seq - 1;
        p->delivered_seq = d.last_seq;
    }
    bool drained = rc == STORE_OK && !d.failed && !d.full && d.count < want && !p->drained_sent;
    if (d.len || drained)
        flush_deliver(&d, drained);
    p->drained_sent |= drained;
    if (d.full) /* more is waiting: go on once the kernel took what is queued */
        p->pump_blocked = true;
}

/* A receiving connection starts delivering only once every write submitted before its
 * authentication is committed: the writer runs jobs in order, so an empty job is a
 * barrier. Acks sent on the device's previous connection are then applied, and what
 * they acknowledged is not delivered again. */
typedef struct {
    writer_job job;
    peer *p;
} barrier_job;

static int barrier_apply(store_batch *b, writer_job *job)
{
    (void)b, (void)job;
    return STORE_OK;
}

static void barrier_done(writer_job *job, int status)
{
    barrier_job *j = (barrier_job *)job;
    peer *p = j->p;
    free(j);
    (void)status; /* a failed batch changes nothing for a read-only barrier */
    if (!peer_job_returned(p) || p->conn->closing)
        return;
    /* from now on every commit for the device wakes p, unless a newer connection won */
    if (!routes_add(server_of(p->conn), p)) {
        ws_conn_close(p->conn, PARLEY_CLOSE_REPLACED, "replaced by a newer connection");
        return;
    }
    messaging_pump(p);
}

void messaging_authenticated(peer *p)
{
    if (!p->receive)
        return;
    barrier_job *j = calloc(1, sizeof *j);
    if (!j) {
        ws_conn_close(p->conn, WS_CLOSE_INTERNAL_ERROR, "out of memory");
        return;
    }
    j->p = p;
    j->job.apply = barrier_apply;
    j->job.done = barrier_done;
    peer_submit(p, &j->job);
}

void messaging_closed(peer *p)
{
    routes_remove(server_of(p->conn), p);
}

/* ---- retention ------------------------------------------------------------------- */

typedef struct {
    writer_job job;
    io_thread *t;
    uint64_t inbox_cutoff, dedup_cutoff;
    size_t inbox_removed, dedup_removed;
} sweep_job;

static void sweep_submit(io_thread *t);

static int sweep_apply(store_batch *b, writer_job *job)
{
    sweep_job *j = (sweep_job *)job;
    return store_sweep(b, j->inbox_cutoff, j->dedup_cutoff, SWEEP_MAX, &j->inbox_removed, &j->dedup_removed);
}

static void sweep_done(writer_job *job, int status)
{
    sweep_job *j = (sweep_job *)job;
    io_thread *t = j->t;
    t->sweeping = false;
    if (status != STORE_OK)
        fprintf(stderr, "parleyd: retention sweep failed: %s\n", store_strerror(status));
    else if (j->inbox_removed)
        fprintf(stderr, "parleyd: retention sweep removed %zu undelivered envelopes\n", j->inbox_removed);
    bool more = status == STORE_OK && (j->inbox_removed == SWEEP_MAX || j->dedup_removed == SWEEP_MAX);
    free(j);
    if (more && !uv_is_closing((uv_handle_t *)&t->sweep)) /* not while shutting down */
        sweep_submit(t);
}

static void sweep_submit(io_thread *t)
{
    if (t->sweeping)
        return;
    sweep_job *j = calloc(1, sizeof *j);
    if (!j)
        return;
    const server_config *cfg = &t->srv->cfg;
    uint64_t now = clock_wall_ms();
    uint64_t dedup_keep = cfg->retention_ms > DEDUP_MIN_MS ? cfg->retention_ms : DEDUP_MIN_MS;
    j->t = t;
    j->inbox_cutoff = now > cfg->retention_ms ? now - cfg->retention_ms : 0;
    j->dedup_cutoff = now > dedup_keep ? now - dedup_keep : 0;
    j->job.apply = sweep_apply;
    j->job.done = sweep_done;
    t->sweeping = true;
    writer_submit(t->srv->wr, &t->home, &j->job);
}

static void on_sweep_timer(uv_timer_t *timer)
{
    sweep_submit(timer->data);
}

void messaging_sweep_start(io_thread *t)
{
    /* often enough that nothing outlives the retention by much more than a quarter of it */
    uint64_t every = t->srv->cfg.retention_ms / 4;
    every = every < 250 ? 250 : every > 60000 ? 60000 : every;
    uv_timer_init(&t->loop, &t->sweep);
    t->sweep.data = t;
    uv_timer_start(&t->sweep, on_sweep_timer, every, every);
}

void messaging_sweep_stop(io_thread *t)
{
    uv_close((uv_handle_t *)&t->sweep, NULL);
}
