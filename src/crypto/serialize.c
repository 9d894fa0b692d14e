/* serialize.c - versioned, validated serialization of Signal state for the client
 * store (proto/signal_state.proto). A reader trusts nothing: every length, count
 * and limit is checked, so a corrupt row is PS_ERR_BAD_STATE, never a crash. */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "primitives.h"
#include "sender_key.h"
#include "session.h"
#include "signal_state.pb-c.h"

#define STATE_FORMAT 1

#define BIN(ptr, n) ((ProtobufCBinaryData){(n), (uint8_t *)(ptr)})

static bool copy_key(uint8_t out[PS_KEY_LEN], protobuf_c_boolean has, ProtobufCBinaryData b)
{
    if (!has || b.len != PS_KEY_LEN)
        return false;
    memcpy(out, b.data, PS_KEY_LEN);
    return true;
}

static int pack(const ProtobufCMessage *m, ps_bytes *out)
{
    out->len = protobuf_c_message_get_packed_size(m);
    out->data = malloc(out->len ? out->len : 1);
    if (!out->data) {
        out->len = 0;
        return PS_ERR_NOMEM;
    }
    protobuf_c_message_pack(m, out->data);
    return PS_OK;
}

/* ---- skipped keys (shared by sessions and sender keys) ------------------------ */

/* Pointer array over store[0..n), each entry initialised; the caller fills them in. */
static Signalstate__SkippedKey **skipped_out(Signalstate__SkippedKey *store, uint32_t n)
{
    Signalstate__SkippedKey **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    if (!ptrs)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        signalstate__skipped_key__init(&store[i]);
        store[i].has_counter = 1;
        store[i].has_seed = 1;
        ptrs[i] = &store[i];
    }
    return ptrs;
}

/* ---- sessions ----------------------------------------------------------------- */

typedef struct {
    Signalstate__Session s;
    Signalstate__ReceiverChain chains[PS_MAX_RECEIVER_CHAINS];
    Signalstate__ReceiverChain *chain_ptrs[PS_MAX_RECEIVER_CHAINS];
    Signalstate__SkippedKey *skipped[PS_MAX_RECEIVER_CHAINS];
    Signalstate__PendingPreKey pending;
} session_out;

static void session_out_free(session_out *o)
{
    for (int i = 0; i < PS_MAX_RECEIVER_CHAINS; i++) {
        free(o->skipped[i]);
        if (i < (int)o->s.n_receiver_chains)
            free(o->chains[i].skipped);
    }
}

static int session_to_proto(session_out *o, const ps_session *in)
{
    memset(o, 0, sizeof *o);
    Signalstate__Session *s = &o->s;
    signalstate__session__init(s);
    s->has_version = 1, s->version = in->version;
    s->has_local_identity = 1, s->local_identity = BIN(in->local_identity, PS_KEY_LEN);
    s->has_remote_identity = 1, s->remote_identity = BIN(in->remote_identity, PS_KEY_LEN);
    s->has_local_registration_id = 1, s->local_registration_id = in->local_registration_id;
    s->has_remote_registration_id = 1, s->remote_registration_id = in->remote_registration_id;
    s->has_base_key = 1, s->base_key = BIN(in->base_key, PS_KEY_LEN);
    s->has_root_key = 1, s->root_key = BIN(in->root_key, PS_KEY_LEN);
    s->has_send_ratchet_public = 1, s->send_ratchet_public = BIN(in->send_ratchet.pub, PS_KEY_LEN);
    s->has_send_ratchet_private = 1, s->send_ratchet_private = BIN(in->send_ratchet.priv, PS_KEY_LEN);
    s->has_send_chain_key = 1, s->send_chain_key = BIN(in->send_chain_key, PS_KEY_LEN);
    s->has_send_index = 1, s->send_index = in->send_index;
    s->has_previous_counter = 1, s->previous_counter = in->previous_counter;
    for (uint32_t i = 0; i < in->nrecv; i++) {
        const ps_recv_chain *c = &in->recv[i];
        Signalstate__ReceiverChain *rc = &o->chains[i];
        signalstate__receiver_chain__init(rc);
        rc->has_their_ratchet = 1, rc->their_ratchet = BIN(c->their_ratchet, PS_KEY_LEN);
        rc->has_chain_key = 1, rc->chain_key = BIN(c->chain_key, PS_KEY_LEN);
        rc->has_index = 1, rc->index = c->index;
        o->skipped[i] = calloc(c->nskipped ? c->nskipped : 1, sizeof(Signalstate__SkippedKey));
        if (!o->skipped[i])
            return PS_ERR_NOMEM;
        s->n_receiver_chains = i + 1;
        rc->skipped = skipped_out(o->skipped[i], c->nskipped);
        if (!rc->skipped)
            return PS_ERR_NOMEM;
        for (uint32_t j = 0; j < c->nskipped; j++) {
            rc->skipped[j]->counter = c->skipped[j].counter;
            rc->skipped[j]->seed = BIN(c->skipped[j].seed, PS_KEY_LEN);
        }
        rc->n_skipped = c->nskipped;
        o->chain_ptrs[i] = rc;
    }
    s->receiver_chains = o->chain_ptrs;
    if (in->has_pending_prekey) {
        signalstate__pending_pre_key__init(&o->pending);
        o->pending.has_has_one_time = 1, o->pending.has_one_time = in->pending_has_one_time;
        o->pending.has_pre_key_id = 1, o->pending.pre_key_id = in->pending_prekey_id;
        o->pending.has_signed_pre_key_id = 1;
        o->pending.signed_pre_key_id = in->pending_signed_prekey_id;
        s->pending = &o->pending;
    }
    return PS_OK;
}

static int session_from_proto(ps_session **out, const Signalstate__Session *s)
{
    ps_session *d = calloc(1, sizeof *d);
    if (!d)
        return PS_ERR_NOMEM;
    *out = d;
    if (!s->has_version || s->version != 3 ||
        !copy_key(d->local_identity, s->has_local_identity, s->local_identity) ||
        !copy_key(d->remote_identity, s->has_remote_identity, s->remote_identity) ||
        !copy_key(d->base_key, s->has_base_key, s->base_key) ||
        !copy_key(d->root_key, s->has_root_key, s->root_key) ||
        !copy_key(d->send_ratchet.pub, s->has_send_ratchet_public, s->send_ratchet_public) ||
        !copy_key(d->send_ratchet.priv, s->has_send_ratchet_private, s->send_ratchet_private) ||
        !copy_key(d->send_chain_key, s->has_send_chain_key, s->send_chain_key) ||
        s->n_receiver_chains > PS_MAX_RECEIVER_CHAINS)
        return PS_ERR_BAD_STATE;
    d->version = s->version;
    d->local_registration_id = s->local_registration_id;
    d->remote_registration_id = s->remote_registration_id;
    d->send_index = s->send_index;
    d->previous_counter = s->previous_counter;
    for (size_t i = 0; i < s->n_receiver_chains; i++) {
        const Signalstate__ReceiverChain *rc = s->receiver_chains[i];
        ps_recv_chain *c = &d->recv[i];
        d->nrecv = (uint32_t)i + 1;
        if (!copy_key(c->their_ratchet, rc->has_their_ratchet, rc->their_ratchet) ||
            !copy_key(c->chain_key, rc->has_chain_key, rc->chain_key) ||
            rc->n_skipped > PS_MAX_SKIPPED_KEYS)
            return PS_ERR_BAD_STATE;
        c->index = rc->index;
        if (rc->n_skipped == 0)
            continue;
        c->skipped = calloc(rc->n_skipped, sizeof(ps_skipped_key));
        if (!c->skipped)
            return PS_ERR_NOMEM;
        for (size_t j = 0; j < rc->n_skipped; j++) {
            c->nskipped = (uint32_t)j + 1;
            if (!copy_key(c->skipped[j].seed, rc->skipped[j]->has_seed, rc->skipped[j]->seed) ||
                !rc->skipped[j]->has_counter)
                return PS_ERR_BAD_STATE;
            c->skipped[j].counter = rc->skipped[j]->counter;
        }
    }
    if (s->pending) {
        d->has_pending_prekey = true;
        d->pending_has_one_time = s->pending->has_one_time;
        d->pending_prekey_id = s->pending->pre_key_id;
        d->pending_signed_prekey_id = s->pending->signed_pre_key_id;
    }
    return PS_OK;
}

int ps_session_record_serialize(const ps_session_record *rec, ps_bytes *out)
{
    session_out cur, prev[PS_MAX_ARCHIVED_SESSIONS];
    Signalstate__Session *prev_ptrs[PS_MAX_ARCHIVED_SESSIONS];
    uint32_t nprev = 0;
    int rc = PS_OK;
    bool have_cur = false;
    Signalstate__SessionRecord r = SIGNALSTATE__SESSION_RECORD__INIT;
    out->data = NULL;
    out->len = 0;
    r.has_format = 1;
    r.format = STATE_FORMAT;
    if (rec->current) {
        have_cur = true;
        if ((rc = session_to_proto(&cur, rec->current)))
            goto out;
        r.current = &cur.s;
    }
    for (; nprev < rec->nprevious; nprev++) {
        rc = session_to_proto(&prev[nprev], rec->previous[nprev]);
        prev_ptrs[nprev] = &prev[nprev].s;
        if (rc) {
            nprev++;
            goto out;
        }
    }
    r.n_previous = nprev;
    r.previous = prev_ptrs;
    rc = pack(&r.base, out);
out:
    if (have_cur)
        session_out_free(&cur);
    for (uint32_t i = 0; i < nprev; i++)
        session_out_free(&prev[i]);
    return rc;
}

int ps_session_record_deserialize(ps_session_record *rec, const uint8_t *in, size_t len)
{
    memset(rec, 0, sizeof *rec);
    Signalstate__SessionRecord *r = signalstate__session_record__unpack(&ps_wiping_allocator, len, in);
    if (!r)
        return PS_ERR_BAD_STATE;
    int rc = PS_ERR_BAD_STATE;
    if (!r->has_format || r->format != STATE_FORMAT || r->n_previous > PS_MAX_ARCHIVED_SESSIONS)
        goto out;
    if (r->current && (rc = session_from_proto(&rec->current, r->current)))
        goto out;
    for (size_t i = 0; i < r->n_previous; i++) {
        rec->nprevious = (uint32_t)i + 1;
        if ((rc = session_from_proto(&rec->previous[i], r->previous[i])))
            goto out;
    }
    rc = PS_OK;
out:
    signalstate__session_record__free_unpacked(r, &ps_wiping_allocator);
    if (rc)
        ps_session_record_clear(rec);
    return rc;
}

/* ---- sender keys -------------------------------------------------------------- */

int ps_sender_key_record_serialize(const ps_sender_key_record *rec, ps_bytes *out)
{
    Signalstate__SenderKeyState states[PS_SK_MAX_STATES], *state_ptrs[PS_SK_MAX_STATES];
    Signalstate__SkippedKey *stores[PS_SK_MAX_STATES] = {0};
    Signalstate__SenderKeyRecord r = SIGNALSTATE__SENDER_KEY_RECORD__INIT;
    int rc = PS_ERR_NOMEM;
    uint32_t n = 0;
    out->data = NULL;
    out->len = 0;
    r.has_format = 1, r.format = STATE_FORMAT;
    r.has_distribution_id = 1, r.distribution_id = BIN(rec->distribution_id, PS_UUID_LEN);
    for (; n < rec->nstates; n++) {
        const ps_sk_state *st = &rec->states[n];
        Signalstate__SenderKeyState *o = &states[n];
        signalstate__sender_key_state__init(o);
        state_ptrs[n] = o;
        o->has_chain_id = 1, o->chain_id = st->chain_id;
        o->has_iteration = 1, o->iteration = st->iteration;
        o->has_chain_key = 1, o->chain_key = BIN(st->chain_key, PS_KEY_LEN);
        o->has_signing_public = 1, o->signing_public = BIN(st->signing_public, PS_KEY_LEN);
        if (st->has_signing_private)
            o->has_signing_private = 1, o->signing_private = BIN(st->signing_private, PS_KEY_LEN);
        stores[n] = calloc(st->nskipped ? st->nskipped : 1, sizeof(Signalstate__SkippedKey));
        if (!stores[n])
            goto out;
        o->skipped = skipped_out(stores[n], st->nskipped);
        if (!o->skipped) {
            n++;
            goto out;
        }
        for (uint32_t j = 0; j < st->nskipped; j++) {
            o->skipped[j]->counter = st->skipped[j].counter;
            o->skipped[j]->seed = BIN(st->skipped[j].seed, PS_KEY_LEN);
        }
        o->n_skipped = st->nskipped;
    }
    r.n_states = n;
    r.states = state_ptrs;
    rc = pack(&r.base, out);
out:
    for (uint32_t i = 0; i < n; i++) {
        free(stores[i]);
        free(states[i].skipped);
    }
    return rc;
}

int ps_sender_key_record_deserialize(ps_sender_key_record *rec, const uint8_t *in, size_t len)
{
    memset(rec, 0, sizeof *rec);
    Signalstate__SenderKeyRecord *r = signalstate__sender_key_record__unpack(&ps_wiping_allocator, len, in);
    if (!r)
        return PS_ERR_BAD_STATE;
    int rc = PS_ERR_BAD_STATE;
    if (!r->has_format || r->format != STATE_FORMAT || !r->has_distribution_id ||
        r->distribution_id.len != PS_UUID_LEN || r->n_states > PS_SK_MAX_STATES)
        goto out;
    memcpy(rec->distribution_id, r->distribution_id.data, PS_UUID_LEN);
    for (size_t i = 0; i < r->n_states; i++) {
        const Signalstate__SenderKeyState *o = r->states[i];
        ps_sk_state *st = &rec->states[i];
        rec->nstates = (uint32_t)i + 1;
        if (!o->has_chain_id || !o->has_iteration ||
            !copy_key(st->chain_key, o->has_chain_key, o->chain_key) ||
            !copy_key(st->signing_public, o->has_signing_public, o->signing_public) ||
            o->n_skipped > PS_SK_MAX_SKIPPED_KEYS)
            goto out;
        st->chain_id = o->chain_id;
        st->iteration = o->iteration;
        if (o->has_signing_private) {
            if (!copy_key(st->signing_private, 1, o->signing_private))
                goto out;
            st->has_signing_private = true;
        }
        if (o->n_skipped == 0)
            continue;
        st->skipped = calloc(o->n_skipped, sizeof(ps_skipped_key));
        if (!st->skipped) {
            rc = PS_ERR_NOMEM;
            goto out;
        }
        for (size_t j = 0; j < o->n_skipped; j++) {
            st->nskipped = (uint32_t)j + 1;
            if (!o->skipped[j]->has_counter ||
                !copy_key(st->skipped[j].seed, o->skipped[j]->has_seed, o->skipped[j]->seed))
                goto out;
            st->skipped[j].counter = o->skipped[j]->counter;
        }
    }
    rc = PS_OK;
out:
    signalstate__sender_key_record__free_unpacked(r, &ps_wiping_allocator);
    if (rc)
        ps_sender_key_record_clear(rec);
    return rc;
}

/* ---- key records -------------------------------------------------------------- */

int ps_key_record_serialize(const ps_key_record *k, ps_bytes *out)
{
    Signalstate__KeyRecord r = SIGNALSTATE__KEY_RECORD__INIT;
    r.has_format = 1, r.format = STATE_FORMAT;
    r.has_kind = 1, r.kind = k->kind;
    r.has_id = 1, r.id = k->id;
    r.has_public_key = 1, r.public_key = BIN(k->pair.pub, PS_KEY_LEN);
    r.has_private_key = 1, r.private_key = BIN(k->pair.priv, PS_KEY_LEN);
    if (k->has_signature)
        r.has_signature = 1, r.signature = BIN(k->signature, PS_SIG_LEN);
    if (k->created_at)
        r.has_created_at = 1, r.created_at = k->created_at;
    return pack(&r.base, out);
}

int ps_key_record_deserialize(ps_key_record *k, const uint8_t *in, size_t len)
{
    memset(k, 0, sizeof *k);
    Signalstate__KeyRecord *r = signalstate__key_record__unpack(&ps_wiping_allocator, len, in);
    if (!r)
        return PS_ERR_BAD_STATE;
    int rc = PS_ERR_BAD_STATE;
    uint8_t priv[PS_KEY_LEN], pub[PS_KEY_LEN];
    if (!r->has_format || r->format != STATE_FORMAT || !r->has_kind || r->kind < 1 ||
        r->kind > 3 || !r->has_id || !copy_key(pub, r->has_public_key, r->public_key) ||
        !copy_key(priv, r->has_private_key, r->private_key))
        goto out;
    if (r->has_signature && r->signature.len != PS_SIG_LEN)
        goto out;
    ps_keypair_from_private(&k->pair, priv);
    if (sodium_memcmp(k->pair.pub, pub, PS_KEY_LEN) != 0)
        goto out;
    k->kind = (ps_key_kind)r->kind;
    k->id = r->id;
    if (r->has_signature) {
        k->has_signature = true;
        memcpy(k->signature, r->signature.data, PS_SIG_LEN);
    }
    k->created_at = r->has_created_at ? r->created_at : 0;
    rc = PS_OK;
out:
    sodium_memzero(priv, sizeof priv);
    signalstate__key_record__free_unpacked(r, &ps_wiping_allocator);
    if (rc)
        sodium_memzero(k, sizeof *k);
    return rc;
}
