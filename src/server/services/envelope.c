/* envelope.c - packing envelopes for inboxes, and the envelopes the store writes on the
 * server's behalf (store_envelopes, store.h). */
#include "envelope.h"

#include <string.h>

#include "pbwire.h"
#include "services.h"

int envelope_add(store_entries *l, const store_device *d, const Parley__Envelope *e)
{
    size_t len = parley__envelope__get_packed_size(e);
    if (store_entries_reserve(l, len) != STORE_OK)
        return STORE_NOMEM;
    parley__envelope__pack(e, l->buf + l->used);
    return store_entries_add(l, d, NULL, len);
}

/* The author and message id of a stored envelope, read straight from its bytes: an ack
 * deletes a window of envelopes in the writer thread, where unpacking each one (with its
 * allocations and body copy) was a visible cost. False for receipts and notices. */
static bool author_of(const uint8_t *p, size_t len, const uint8_t **account, const uint8_t **id)
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

static size_t pack(const Parley__Envelope *e, uint8_t *out, size_t cap)
{
    size_t len = parley__envelope__get_packed_size(e);
    return len <= cap ? parley__envelope__pack(e, out) : 0;
}

static size_t delivered(uint8_t *out, size_t cap, const store_device *acker, uint64_t now,
                        const uint8_t (*ids)[STORE_MESSAGE_ID_LEN], size_t n)
{
    ProtobufCBinaryData list[64];
    if (n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        list[i] = (ProtobufCBinaryData){STORE_MESSAGE_ID_LEN, (uint8_t *)ids[i]};
    Parley__ReceiptBody body = PARLEY__RECEIPT_BODY__INIT;
    body.has_status = 1;
    body.status = PARLEY__RECEIPT_STATUS__DELIVERED;
    body.has_from_account = 1;
    body.from_account = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, (uint8_t *)acker->account};
    body.has_from_device = 1;
    body.from_device = acker->device;
    body.n_message_ids = n;
    body.message_ids = list;
    Parley__Envelope e = PARLEY__ENVELOPE__INIT;
    e.has_sender_account = e.has_sender_device = e.has_server_time_ms = 1;
    e.sender_account = body.from_account;
    e.sender_device = acker->device;
    e.server_time_ms = now;
    e.receipt = &body;
    return pack(&e, out, cap);
}

static size_t prekeys_low(uint8_t *out, size_t cap, uint64_t now, uint32_t left)
{
    Parley__Envelope e = PARLEY__ENVELOPE__INIT;
    e.has_server_time_ms = 1;
    e.server_time_ms = now;
    e.has_prekeys_left = 1;
    e.prekeys_left = left;
    return pack(&e, out, cap);
}

const store_envelopes parley_envelopes = {author_of, delivered, prekeys_low};
