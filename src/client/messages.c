/* messages.c - the messages API (include/parley.h): a text into the outbox (durable
 * before the call returns; the outbox feature sends it), states, the outbox and receipt
 * counts, marking read (the receipts go out through the inbox feature), history and
 * the messages not shown yet. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "clock.h"
#include "content.pb-c.h"
#include "utf8.h"

int parley_send_text(parley *p, const char *conversation, const char *text, uint8_t id_out[PARLEY_ID_LEN])
{
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    if (!p->ident.registered)
        return set_err(p, PARLEY_ERR_NOT_REGISTERED, "this profile is not registered yet");
    int rc = check_conversation(p, conversation);
    if (rc != PARLEY_OK)
        return rc;
    size_t len = text ? strlen(text) : 0;
    if (len == 0)
        return set_err(p, PARLEY_ERR_INVALID, "the message is empty");
    if (len > PARLEY_MAX_TEXT)
        return set_err(p, PARLEY_ERR_INVALID, "the message is longer than %d bytes", PARLEY_MAX_TEXT);
    if (!utf8_valid((const uint8_t *)text, len))
        return set_err(p, PARLEY_ERR_INVALID, "the message is not valid UTF-8");
    db_message m;
    memset(&m, 0, sizeof m);
    new_message_id(m.id);
    m.outgoing = true;
    snprintf(m.conversation, sizeof m.conversation, "%s", conversation);
    snprintf(m.peer_phone, sizeof m.peer_phone, "%s", conversation); /* one-to-one: the recipient */
    m.text = text;
    m.text_len = len;
    m.sent_ms = clock_wall_ms();
    Parley__Content c = PARLEY__CONTENT__INIT;
    c.text = (char *)text;
    c.has_sent_ms = 1;
    c.sent_ms = m.sent_ms;
    size_t body_len = parley__content__get_packed_size(&c);
    uint8_t *body = malloc(body_len);
    if (!body)
        return set_err(p, PARLEY_ERR_NOMEM, "out of memory");
    parley__content__pack(&c, body);
    rc = db_outgoing_add(p->db, &m, body, body_len);
    sodium_memzero(body, body_len);
    free(body);
    if (rc != DB_OK)
        return db_err(p);
    if (id_out)
        memcpy(id_out, m.id, PARLEY_ID_LEN);
    features_pump(p);
    return PARLEY_OK;
}

int parley_message_state(parley *p, const uint8_t id[PARLEY_ID_LEN], parley_state *out)
{
    int st;
    int rc = db_message_state(p->db, id, &st);
    if (rc == DB_NOT_FOUND)
        return set_err(p, PARLEY_ERR_INVALID, "no message has this id");
    if (rc != DB_OK)
        return db_err(p);
    *out = (parley_state)st;
    return PARLEY_OK;
}

int parley_outbox_count(parley *p, size_t *n)
{
    return db_outbox_count(p->db, n) == DB_OK ? PARLEY_OK : db_err(p);
}

int parley_pending_receipts(parley *p, size_t *n)
{
    return db_receipts_pending_count(p->db, n) == DB_OK ? PARLEY_OK : db_err(p);
}

int parley_mark_read(parley *p, const char *conversation, size_t *count)
{
    size_t n = 0;
    int rc = check_conversation(p, conversation);
    if (rc != PARLEY_OK)
        return rc;
    if (db_mark_read(p->db, conversation, &n) != DB_OK)
        return db_err(p);
    if (count)
        *count = n;
    features_pump(p);
    return PARLEY_OK;
}

typedef struct {
    parley_message_fn fn;
    void *ctx;
} history_ctx;

static bool history_row(void *ctx, const db_message *m)
{
    history_ctx *h = ctx;
    parley_message pm;
    memset(&pm, 0, sizeof pm);
    memcpy(pm.id, m->id, PARLEY_ID_LEN);
    pm.outgoing = m->outgoing;
    pm.kind = m->kind == DB_KIND_MESSAGE ? PARLEY_MESSAGE_TEXT : PARLEY_MESSAGE_IDENTITY_CHANGED;
    pm.was_verified = m->kind == DB_KIND_IDENTITY_CHANGED_VERIFIED;
    pm.conversation = m->conversation[0] ? m->conversation : NULL;
    pm.peer = m->peer_phone[0] ? m->peer_phone : NULL;
    pm.from_device = m->from_device;
    pm.server_time_ms = m->server_time_ms;
    pm.sent_ms = m->sent_ms;
    pm.text = m->text;
    pm.text_len = m->text_len;
    pm.problem = m->problem;
    pm.state = (parley_state)m->state;
    return h->fn(h->ctx, &pm);
}

typedef struct {
    parley_message_fn fn;
    void *ctx;
    int64_t shown_up_to;
    bool stopped;
} unshown_ctx;

static bool unshown_row(void *ctx, const db_message *m)
{
    unshown_ctx *u = ctx;
    history_ctx h = {u->fn, u->ctx};
    if (!history_row(&h, m)) {
        u->stopped = true;
        return false;
    }
    u->shown_up_to = m->local_seq;
    return true;
}

int parley_take_unshown(parley *p, parley_message_fn fn, void *ctx)
{
    unshown_ctx u = {fn, ctx, 0, false};
    if (db_unshown(p->db, unshown_row, &u) != DB_OK)
        return db_err(p);
    if (u.shown_up_to && db_mark_shown(p->db, u.shown_up_to) != DB_OK)
        return db_err(p);
    return u.stopped ? set_err(p, PARLEY_ERR_STATE, "showing the messages stopped") : PARLEY_OK;
}

int parley_history(parley *p, const char *conversation, parley_message_fn fn, void *ctx)
{
    int rc = check_conversation(p, conversation);
    if (rc != PARLEY_OK)
        return rc;
    history_ctx h = {fn, ctx};
    return db_history(p->db, conversation, history_row, &h) == DB_OK ? PARLEY_OK : db_err(p);
}
