/* envelope.c - packing envelopes for inboxes, and the envelopes the store writes on the
 * server's behalf (store_envelopes, store.h). */
#include "envelope.h"

#include <stdlib.h>
#include <string.h>

#include "group.h"
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

/* The seq is a field like any other: appended to the packed envelope (protobuf takes
 * fields in any order), so the body is not packed again. */
static size_t with_group_seq(uint8_t *out, size_t cap, const uint8_t *envelope, size_t len, uint64_t seq)
{
    if (len + 11 > cap)
        return 0;
    memcpy(out, envelope, len);
    uint8_t *p = out + len;
    *p++ = 11 << 3; /* Envelope.group_seq, a varint */
    do {
        *p++ = (uint8_t)(seq & 0x7f) | (seq >= 0x80 ? 0x80 : 0);
        seq >>= 7;
    } while (seq);
    return (size_t)(p - out);
}

static size_t group_event(uint8_t *out, size_t cap, const store_group_change *c, const store_group *g, uint64_t seq)
{
    Parley__GroupMember *members = calloc(g->n ? g->n : 1, sizeof *members);
    Parley__GroupMember **list = calloc(g->n ? g->n : 1, sizeof *list);
    ProtobufCBinaryData *accounts = calloc(c->n_accounts + c->n_removed + 1, sizeof *accounts);
    size_t len = 0;
    if (members && list && accounts) {
        Parley__GroupInfo info;
        Parley__GroupSettings settings;
        group_info_fill(&info, &settings, members, list, g, true);
        Parley__GroupEvent ev = PARLEY__GROUP_EVENT__INIT;
        ev.has_op = ev.has_actor = 1;
        ev.op = c->op;
        ev.actor = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, (uint8_t *)c->from.device.account};
        /* the removed (or the one who left) as the change did it, else the accounts named */
        size_t n = 0;
        if (c->op == GROUP_OP_REMOVE || c->op == GROUP_OP_LEAVE)
            for (size_t i = 0; i < c->n_removed; i++)
                accounts[n++] = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, c->removed[i]};
        else if (c->op != GROUP_OP_CREATE)
            for (size_t i = 0; i < c->n_accounts; i++)
                accounts[n++] = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, c->accounts[i]};
        ev.n_accounts = n;
        ev.accounts = accounts;
        ev.group = &info;
        Parley__Envelope e = PARLEY__ENVELOPE__INIT;
        e.has_sender_account = e.has_sender_device = e.has_server_time_ms = 1;
        e.sender_account = ev.actor;
        e.sender_device = c->from.device.device;
        e.server_time_ms = c->now;
        e.has_group_id = e.has_group_seq = 1;
        e.group_id = (ProtobufCBinaryData){STORE_GROUP_ID_LEN, (uint8_t *)g->id};
        e.group_seq = seq;
        e.group_event = &ev;
        len = pack(&e, out, cap);
    }
    free(members);
    free(list);
    free(accounts);
    return len;
}

void group_info_fill(Parley__GroupInfo *info, Parley__GroupSettings *settings, Parley__GroupMember *members,
                     Parley__GroupMember **list, const store_group *g, bool with_members)
{
    parley__group_info__init(info);
    parley__group_settings__init(settings);
    settings->has_add = settings->has_send = settings->has_edit_subject = 1;
    settings->add = g->settings[GROUP_SET_ADD];
    settings->send = g->settings[GROUP_SET_SEND];
    settings->edit_subject = g->settings[GROUP_SET_SUBJECT];
    info->has_group_id = info->has_creator = info->has_created_ms = info->has_version = 1;
    info->group_id = (ProtobufCBinaryData){STORE_GROUP_ID_LEN, (uint8_t *)g->id};
    info->subject = (char *)g->subject;
    info->creator = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, (uint8_t *)g->creator};
    info->created_ms = g->created_ms;
    info->version = g->version;
    info->settings = settings;
    for (size_t i = 0; with_members && i < g->n; i++) {
        parley__group_member__init(&members[i]);
        members[i].has_account_id = 1;
        members[i].account_id = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, (uint8_t *)g->members[i].account};
        members[i].has_admin = g->members[i].admin;
        members[i].admin = g->members[i].admin;
        list[i] = &members[i];
    }
    info->n_members = with_members ? g->n : 0;
    info->members = list;
}

const store_envelopes parley_envelopes = {author_of, delivered, prekeys_low, with_group_seq, group_event};
