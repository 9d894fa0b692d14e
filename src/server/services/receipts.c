/* receipts.c - Receipt from a client (docs/protocol.md, "Receipts"): read receipts go
 * durably to every device of the author's account and the reader's other devices;
 * retry receipts ("could not decrypt") to the one device that sent the messages.
 * Delivered receipts are not sent by clients: the store writes them when a DeliverAck
 * takes messages (deliver.c). */
#include <stdlib.h>

#include "services.h"

#define MAX_RECEIPT_IDS 1000 /* message ids in one receipt */

typedef struct {
    store_post r;
    session_ask ask;
    uint8_t envelope[];      /* packed here, once, on the I/O thread */
} receipt_request;

static void posted(store_req *req, int status)
{
    receipt_request *j = (receipt_request *)req;
    session *s = j->ask.s;
    if (status == STORE_OK)
        session_wake(j->ask.srv, &j->r.appended);
    if (session_returned(s)) {
        if (status == STORE_OK) {
            Parley__ReceiptAck ack = PARLEY__RECEIPT_ACK__INIT;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_RECEIPT_ACK;
            f.receipt_ack = &ack;
            session_reply(s, j->ask.request_id, &f);
        } else {
            session_store_error_retry(s, j->ask.request_id, status, j->r.retry_ms);
        }
    }
    store_entries_free(&j->r.appended);
    free(j);
}

static void on_receipt(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__Receipt *m = f->receipt;
    /* each id costs 18 bytes in the envelope: the receipt must fit a Deliver frame */
    size_t max_ids = (session_server(s)->cfg.max_frame_bytes - 512) / 18;
    bool ids_ok = m->n_message_ids <= MAX_RECEIPT_IDS && m->n_message_ids <= max_ids;
    for (size_t i = 0; i < m->n_message_ids && ids_ok; i++)
        ids_ok = m->message_ids[i].len == STORE_MESSAGE_ID_LEN;
    bool retry = m->has_status && m->status == PARLEY__RECEIPT_STATUS__RETRY;
    bool read = m->has_status && m->status == PARLEY__RECEIPT_STATUS__READ;
    if (!(read || retry) || !m->has_to_account || m->to_account.len != STORE_ACCOUNT_ID_LEN || !ids_ok ||
        (m->n_message_ids == 0 && !m->has_up_to_server_ms)) {
        session_error(s, rid, PERR_MALFORMED_FRAME,
                      "Receipt needs status READ or RETRY, to_account (16 bytes) and up to 1000 message ids "
                      "(16 bytes each) or up_to_server_ms; delivered receipts come from the server");
        return;
    }
    if (retry != (m->has_to_device && m->to_device != 0) || (retry && (m->n_message_ids == 0 || m->has_up_to_server_ms))) {
        session_error(s, rid, PERR_MALFORMED_FRAME,
                      "a RETRY receipt names to_device and message ids; a READ receipt names no device");
        return;
    }
    uint64_t now = clock_wall_ms();
    Parley__ReceiptBody body = PARLEY__RECEIPT_BODY__INIT;
    body.has_status = 1;
    body.status = m->status;
    body.has_from_account = 1;
    body.from_account = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, s->device.account};
    body.has_from_device = 1;
    body.from_device = s->device.device;
    body.n_message_ids = m->n_message_ids;
    body.message_ids = m->message_ids;
    body.has_up_to_server_ms = m->has_up_to_server_ms;
    body.up_to_server_ms = m->up_to_server_ms;
    Parley__Envelope e = PARLEY__ENVELOPE__INIT;
    e.has_sender_account = e.has_sender_device = e.has_server_time_ms = 1;
    e.sender_account = body.from_account;
    e.sender_device = s->device.device;
    e.server_time_ms = now;
    e.receipt = &body;
    size_t len = parley__envelope__get_packed_size(&e);
    receipt_request *j = calloc(1, sizeof *j + len);
    if (!j) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    parley__envelope__pack(&e, j->envelope);
    j->r.req.done = posted;
    session_origin(s, &j->r.from);
    memcpy(j->r.to_account, m->to_account.data, STORE_ACCOUNT_ID_LEN);
    j->r.to_device = retry ? m->to_device : 0;
    j->r.envelope = j->envelope;
    j->r.len = len;
    j->r.now = now;
    session_ask_begin(&j->ask, s, rid);
    store_post_receipt(session_server(s)->st, session_thread(s)->home, &j->r);
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_RECEIPT, true, RATE_SENDS, on_receipt},
    {0},
};

const service receipts_service = {.name = "receipts", .routes = routes};
