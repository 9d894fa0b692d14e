/* session.c - X3DH session setup and the Double Ratchet, byte-compatible with
 * libsignal's v3 SignalMessage / PreKeySignalMessage (SIGNAL-NOTES 2.3-2.7). */
#include "session.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "primitives.h"
#include "signal.pb-c.h"

static const uint8_t discontinuity[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
};


/* ---- small pieces ---------------------------------------------------------- */

void ps_chain_step(const uint8_t chain_key[PS_KEY_LEN], uint8_t seed[PS_KEY_LEN],
                   uint8_t next[PS_KEY_LEN])
{
    static const uint8_t message_key_seed = 0x01, chain_key_seed = 0x02;
    const uint8_t *p1[] = {&message_key_seed}, *p2[] = {&chain_key_seed};
    const size_t l[] = {1};
    ps_hmac_sha256(seed, chain_key, PS_KEY_LEN, p1, l, 1);
    ps_hmac_sha256(next, chain_key, PS_KEY_LEN, p2, l, 1);
}

int ps_message_keys_derive(ps_message_keys *k, const uint8_t seed[PS_KEY_LEN])
{
    uint8_t okm[80];
    int rc = ps_hkdf(okm, sizeof okm, NULL, 0, seed, PS_KEY_LEN, "WhisperMessageKeys");
    if (rc == PS_OK) {
        memcpy(k->cipher_key, okm, 32);
        memcpy(k->mac_key, okm + 32, 32);
        memcpy(k->iv, okm + 64, 16);
    }
    sodium_memzero(okm, sizeof okm);
    return rc;
}

/* KDF_RK: (root, chain) = HKDF(salt = root, DH(ours, theirs), "WhisperRatchet"). */
static int kdf_rk(uint8_t root_out[PS_KEY_LEN], uint8_t chain_out[PS_KEY_LEN],
                  const uint8_t root[PS_KEY_LEN], const uint8_t our_priv[PS_KEY_LEN],
                  const uint8_t their_pub[PS_KEY_LEN])
{
    uint8_t shared[32], okm[64];
    int rc = ps_dh(shared, our_priv, their_pub);
    if (rc == PS_OK)
        rc = ps_hkdf(okm, sizeof okm, root, PS_KEY_LEN, shared, sizeof shared, "WhisperRatchet");
    if (rc == PS_OK) {
        memcpy(root_out, okm, 32);
        memcpy(chain_out, okm + 32, 32);
    }
    sodium_memzero(shared, sizeof shared);
    sodium_memzero(okm, sizeof okm);
    return rc;
}

/* X3DH master secret -> (RootKey0, ChainKey0). dh[] holds 3 or 4 agreements in order. */
static int derive_x3dh(uint8_t root[PS_KEY_LEN], uint8_t chain[PS_KEY_LEN],
                       uint8_t dh[4][PS_KEY_LEN], size_t ndh)
{
    uint8_t ikm[32 * 5], okm[64];
    memcpy(ikm, discontinuity, 32);
    for (size_t i = 0; i < ndh; i++)
        memcpy(ikm + 32 * (i + 1), dh[i], 32);
    int rc = ps_hkdf(okm, sizeof okm, NULL, 0, ikm, 32 * (ndh + 1), "WhisperText");
    if (rc == PS_OK) {
        memcpy(root, okm, 32);
        memcpy(chain, okm + 32, 32);
    }
    sodium_memzero(ikm, sizeof ikm);
    sodium_memzero(okm, sizeof okm);
    return rc;
}

int ps_x3dh_initiator(uint8_t root[PS_KEY_LEN], uint8_t chain[PS_KEY_LEN],
                      const uint8_t our_identity_priv[PS_KEY_LEN],
                      const uint8_t our_base_priv[PS_KEY_LEN],
                      const uint8_t their_identity[PS_KEY_LEN],
                      const uint8_t their_signed_prekey[PS_KEY_LEN],
                      const uint8_t *their_one_time_prekey)
{
    uint8_t dh[4][PS_KEY_LEN];
    int rc;
    if ((rc = ps_dh(dh[0], our_identity_priv, their_signed_prekey)) == PS_OK &&
        (rc = ps_dh(dh[1], our_base_priv, their_identity)) == PS_OK &&
        (rc = ps_dh(dh[2], our_base_priv, their_signed_prekey)) == PS_OK &&
        (!their_one_time_prekey ||
         (rc = ps_dh(dh[3], our_base_priv, their_one_time_prekey)) == PS_OK))
        rc = derive_x3dh(root, chain, dh, their_one_time_prekey ? 4 : 3);
    sodium_memzero(dh, sizeof dh);
    return rc;
}

int ps_x3dh_responder(uint8_t root[PS_KEY_LEN], uint8_t chain[PS_KEY_LEN],
                      const uint8_t our_identity_priv[PS_KEY_LEN],
                      const uint8_t our_signed_prekey_priv[PS_KEY_LEN],
                      const uint8_t *our_one_time_prekey_priv,
                      const uint8_t their_identity[PS_KEY_LEN],
                      const uint8_t their_base[PS_KEY_LEN])
{
    uint8_t dh[4][PS_KEY_LEN];
    int rc;
    if ((rc = ps_dh(dh[0], our_signed_prekey_priv, their_identity)) == PS_OK &&
        (rc = ps_dh(dh[1], our_identity_priv, their_base)) == PS_OK &&
        (rc = ps_dh(dh[2], our_signed_prekey_priv, their_base)) == PS_OK &&
        (!our_one_time_prekey_priv ||
         (rc = ps_dh(dh[3], our_one_time_prekey_priv, their_base)) == PS_OK))
        rc = derive_x3dh(root, chain, dh, our_one_time_prekey_priv ? 4 : 3);
    sodium_memzero(dh, sizeof dh);
    return rc;
}

/* ---- session and record memory ---------------------------------------------- */

static void session_free(ps_session *s)
{
    if (!s)
        return;
    for (uint32_t i = 0; i < s->nrecv; i++) {
        if (s->recv[i].skipped) {
            sodium_memzero(s->recv[i].skipped, s->recv[i].nskipped * sizeof(ps_skipped_key));
            free(s->recv[i].skipped);
        }
    }
    sodium_memzero(s, sizeof *s);
    free(s);
}

static ps_session *session_dup(const ps_session *s)
{
    ps_session *d = malloc(sizeof *d);
    if (!d)
        return NULL;
    memcpy(d, s, sizeof *d);
    for (uint32_t i = 0; i < d->nrecv; i++) {
        d->recv[i].skipped = NULL;
        if (s->recv[i].nskipped == 0)
            continue;
        size_t bytes = s->recv[i].nskipped * sizeof(ps_skipped_key);
        d->recv[i].skipped = malloc(bytes);
        if (!d->recv[i].skipped) {
            d->recv[i].nskipped = 0;
            for (uint32_t j = i + 1; j < d->nrecv; j++)
                d->recv[j].skipped = NULL, d->recv[j].nskipped = 0;
            session_free(d);
            return NULL;
        }
        memcpy(d->recv[i].skipped, s->recv[i].skipped, bytes);
    }
    return d;
}

void ps_session_record_clear(ps_session_record *rec)
{
    session_free(rec->current);
    for (uint32_t i = 0; i < rec->nprevious; i++)
        session_free(rec->previous[i]);
    memset(rec, 0, sizeof *rec);
}

int ps_session_record_copy(ps_session_record *dst, const ps_session_record *src)
{
    memset(dst, 0, sizeof *dst);
    if (src->current && !(dst->current = session_dup(src->current)))
        goto nomem;
    for (uint32_t i = 0; i < src->nprevious; i++) {
        if (!(dst->previous[i] = session_dup(src->previous[i])))
            goto nomem;
        dst->nprevious = i + 1;
    }
    return PS_OK;
nomem:
    ps_session_record_clear(dst);
    return PS_ERR_NOMEM;
}

/* Makes s current; the old current session becomes the newest previous one. */
static void record_promote(ps_session_record *rec, ps_session *s)
{
    if (rec->current) {
        if (rec->nprevious == PS_MAX_ARCHIVED_SESSIONS)
            session_free(rec->previous[--rec->nprevious]);
        memmove(rec->previous + 1, rec->previous, rec->nprevious * sizeof(ps_session *));
        rec->previous[0] = rec->current;
        rec->nprevious++;
    }
    rec->current = s;
}

/* The slot of the session named by base_key, or NULL; *previous_index tells which
 * previous session it is (UINT32_MAX for the current one). */
static ps_session **find_base_key(ps_session_record *rec, const uint8_t base_key[PS_KEY_LEN],
                                  uint32_t *previous_index)
{
    *previous_index = UINT32_MAX;
    if (rec->current && sodium_memcmp(rec->current->base_key, base_key, PS_KEY_LEN) == 0)
        return &rec->current;
    for (uint32_t i = 0; i < rec->nprevious; i++) {
        if (sodium_memcmp(rec->previous[i]->base_key, base_key, PS_KEY_LEN) == 0) {
            *previous_index = i;
            return &rec->previous[i];
        }
    }
    return NULL;
}

bool ps_session_record_has_base_key(const ps_session_record *rec, const uint8_t base_key[PS_KEY_LEN])
{
    uint32_t index;
    return find_base_key((ps_session_record *)rec, base_key, &index) != NULL;
}

/* ---- X3DH ------------------------------------------------------------------- */

int ps_session_initiate(ps_session_record *rec, const ps_local_identity *me,
                        const ps_bundle *b, const ps_rng *rng)
{
    /* Readers take one-time prekey id 0 for "none" and would leave out DH4. */
    if (b->has_prekey && b->prekey_id == 0)
        return PS_ERR_INVALID_MESSAGE;
    uint8_t spk_serialized[PS_PUBKEY_LEN];
    ps_pubkey_serialize(spk_serialized, b->signed_prekey);
    if (!ps_xeddsa_verify(b->identity_key, spk_serialized, sizeof spk_serialized,
                          b->signed_prekey_signature))
        return PS_ERR_BAD_SIGNATURE;

    ps_session *s = calloc(1, sizeof *s);
    if (!s)
        return PS_ERR_NOMEM;
    ps_keypair base;
    uint8_t root0[32], chain0[32];
    int rc;
    ps_keypair_generate(rng, &base);
    if ((rc = ps_x3dh_initiator(root0, chain0, me->identity.priv, base.priv, b->identity_key,
                                b->signed_prekey, b->has_prekey ? b->prekey : NULL)))
        goto out;

    s->version = 3;
    memcpy(s->local_identity, me->identity.pub, PS_KEY_LEN);
    memcpy(s->remote_identity, b->identity_key, PS_KEY_LEN);
    s->local_registration_id = me->registration_id;
    s->remote_registration_id = b->registration_id;
    memcpy(s->base_key, base.pub, PS_KEY_LEN);

    /* Alice's first sending ratchet key is fresh; Bob's first ratchet key is his signed prekey. */
    ps_keypair_generate(rng, &s->send_ratchet);
    if ((rc = kdf_rk(s->root_key, s->send_chain_key, root0, s->send_ratchet.priv, b->signed_prekey)))
        goto out;
    s->has_pending_prekey = true;
    s->pending_has_one_time = b->has_prekey;
    s->pending_prekey_id = b->has_prekey ? b->prekey_id : 0;
    s->pending_signed_prekey_id = b->signed_prekey_id;
    record_promote(rec, s);
    s = NULL;
out:
    session_free(s);
    ps_keypair_clear(&base);
    sodium_memzero(root0, sizeof root0);
    sodium_memzero(chain0, sizeof chain0);
    return rc;
}

/* Bob's side of X3DH: a fresh session from a PreKey message. */
static int session_from_prekey(ps_session **out, const ps_local_identity *me,
                               const ps_prekey_message *m, const ps_keypair *spk,
                               const ps_keypair *opk)
{
    uint8_t chain0[32];
    int rc;
    ps_session *s = calloc(1, sizeof *s);
    if (!s)
        return PS_ERR_NOMEM;
    if ((rc = ps_x3dh_responder(s->root_key, chain0, me->identity.priv, spk->priv,
                                opk ? opk->priv : NULL, m->identity_key, m->base_key))) {
        session_free(s);
        goto out;
    }
    s->version = 3;
    memcpy(s->local_identity, me->identity.pub, PS_KEY_LEN);
    memcpy(s->remote_identity, m->identity_key, PS_KEY_LEN);
    s->local_registration_id = me->registration_id;
    s->remote_registration_id = m->registration_id;
    memcpy(s->base_key, m->base_key, PS_KEY_LEN);
    s->send_ratchet = *spk;
    memcpy(s->send_chain_key, chain0, PS_KEY_LEN);
    *out = s;
out:
    sodium_memzero(chain0, sizeof chain0);
    return rc;
}

/* ---- encrypt ---------------------------------------------------------------- */

static void compute_mac(uint8_t mac[PS_MAC_LEN], const uint8_t mac_key[32],
                        const uint8_t sender[PS_KEY_LEN], const uint8_t receiver[PS_KEY_LEN],
                        const uint8_t *msg, size_t len)
{
    uint8_t s33[PS_PUBKEY_LEN], r33[PS_PUBKEY_LEN], full[32];
    ps_pubkey_serialize(s33, sender);
    ps_pubkey_serialize(r33, receiver);
    const uint8_t *parts[] = {s33, r33, msg};
    const size_t lens[] = {sizeof s33, sizeof r33, len};
    ps_hmac_sha256(full, mac_key, 32, parts, lens, 3);
    memcpy(mac, full, PS_MAC_LEN);
    sodium_memzero(full, sizeof full);
}

int ps_pack_versioned(ps_bytes *out, const ProtobufCMessage *msg, size_t extra)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    out->data = malloc(1 + n + extra);
    if (!out->data)
        return PS_ERR_NOMEM;
    out->data[0] = PS_VERSION_BYTE;
    protobuf_c_message_pack(msg, out->data + 1);
    out->len = 1 + n;
    return PS_OK;
}

int ps_session_encrypt(ps_session_record *rec, const uint8_t *plaintext, size_t len,
                       ps_bytes *out, int *type)
{
    ps_session *s = rec->current;
    out->data = NULL;
    out->len = 0;
    if (!s)
        return PS_ERR_NO_SESSION;
    if (s->send_index == UINT32_MAX) /* counters never wrap */
        return PS_ERR_TOO_FAR;

    uint8_t seed[32], next[32], ratchet33[PS_PUBKEY_LEN];
    ps_message_keys k;
    ps_bytes ct = {0}, whisper = {0};
    int rc;
    ps_chain_step(s->send_chain_key, seed, next);
    if ((rc = ps_message_keys_derive(&k, seed)) ||
        (rc = ps_aes_cbc_encrypt(&ct, k.cipher_key, k.iv, plaintext, len)))
        goto out;

    ps_pubkey_serialize(ratchet33, s->send_ratchet.pub);
    Signalwire__SignalMessage sm = SIGNALWIRE__SIGNAL_MESSAGE__INIT;
    sm.has_ratchet_key = 1;
    sm.ratchet_key = (ProtobufCBinaryData){sizeof ratchet33, ratchet33};
    sm.has_counter = 1;
    sm.counter = s->send_index;
    sm.has_previous_counter = 1;
    sm.previous_counter = s->previous_counter;
    sm.has_ciphertext = 1;
    sm.ciphertext = (ProtobufCBinaryData){ct.len, ct.data};
    if ((rc = ps_pack_versioned(&whisper, &sm.base, PS_MAC_LEN)))
        goto out;
    compute_mac(whisper.data + whisper.len, k.mac_key, s->local_identity, s->remote_identity,
                whisper.data, whisper.len);
    whisper.len += PS_MAC_LEN;

    if (s->has_pending_prekey) {
        uint8_t base33[PS_PUBKEY_LEN], id33[PS_PUBKEY_LEN];
        ps_pubkey_serialize(base33, s->base_key);
        ps_pubkey_serialize(id33, s->local_identity);
        Signalwire__PreKeySignalMessage pm = SIGNALWIRE__PRE_KEY_SIGNAL_MESSAGE__INIT;
        pm.has_registration_id = 1;
        pm.registration_id = s->local_registration_id;
        pm.has_pre_key_id = s->pending_has_one_time;
        pm.pre_key_id = s->pending_prekey_id;
        pm.has_signed_pre_key_id = 1;
        pm.signed_pre_key_id = s->pending_signed_prekey_id;
        pm.has_base_key = 1;
        pm.base_key = (ProtobufCBinaryData){sizeof base33, base33};
        pm.has_identity_key = 1;
        pm.identity_key = (ProtobufCBinaryData){sizeof id33, id33};
        pm.has_message = 1;
        pm.message = (ProtobufCBinaryData){whisper.len, whisper.data};
        if ((rc = ps_pack_versioned(out, &pm.base, 0)))
            goto out;
        *type = PS_MSG_PREKEY;
    } else {
        *out = whisper;
        whisper.data = NULL;
        *type = PS_MSG_WHISPER;
    }
    memcpy(s->send_chain_key, next, 32);
    s->send_index++;
out:
    ps_bytes_free(&ct);
    ps_bytes_free(&whisper);
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(next, sizeof next);
    sodium_memzero(&k, sizeof k);
    return rc;
}

/* ---- decrypt ---------------------------------------------------------------- */

static bool version_supported(uint8_t v)
{
    return v == 0x33 || v == 0x34;
}

/* The receiver chain for their ratchet key, created by a DH ratchet step if new. */
static int get_or_create_chain(ps_session *s, const uint8_t their[PS_KEY_LEN],
                               const ps_rng *rng, ps_recv_chain **out)
{
    for (uint32_t i = 0; i < s->nrecv; i++) {
        if (sodium_memcmp(s->recv[i].their_ratchet, their, PS_KEY_LEN) == 0) {
            *out = &s->recv[i];
            return PS_OK;
        }
    }
    uint8_t root1[32], recv_ck[32];
    ps_keypair fresh;
    int rc;
    if ((rc = kdf_rk(root1, recv_ck, s->root_key, s->send_ratchet.priv, their)))
        goto out;
    ps_keypair_generate(rng, &fresh);
    if ((rc = kdf_rk(s->root_key, s->send_chain_key, root1, fresh.priv, their)))
        goto out;
    s->previous_counter = s->send_index > 0 ? s->send_index - 1 : 0;
    s->send_ratchet = fresh;
    s->send_index = 0;

    if (s->nrecv == PS_MAX_RECEIVER_CHAINS) {
        ps_recv_chain *old = &s->recv[0];
        if (old->skipped) {
            sodium_memzero(old->skipped, old->nskipped * sizeof(ps_skipped_key));
            free(old->skipped);
        }
        memmove(&s->recv[0], &s->recv[1], (PS_MAX_RECEIVER_CHAINS - 1) * sizeof(ps_recv_chain));
        s->nrecv--;
    }
    ps_recv_chain *c = &s->recv[s->nrecv++];
    memset(c, 0, sizeof *c);
    memcpy(c->their_ratchet, their, PS_KEY_LEN);
    memcpy(c->chain_key, recv_ck, PS_KEY_LEN);
    *out = c;
out:
    sodium_memzero(root1, sizeof root1);
    sodium_memzero(recv_ck, sizeof recv_ck);
    ps_keypair_clear(&fresh);
    return rc;
}

int ps_chain_seed_for(uint8_t chain_key[PS_KEY_LEN], uint32_t *index, ps_skipped_key **skipped,
                      uint32_t *nskipped, uint32_t counter, uint32_t max_jump,
                      uint32_t max_skipped, uint8_t seed[PS_KEY_LEN])
{
    ps_skipped_key *keys = *skipped;
    if (counter < *index) {
        for (uint32_t i = 0; i < *nskipped; i++) {
            if (keys[i].counter == counter) {
                memcpy(seed, keys[i].seed, PS_KEY_LEN);
                memmove(&keys[i], &keys[i + 1], (*nskipped - i - 1) * sizeof *keys);
                (*nskipped)--;
                sodium_memzero(&keys[*nskipped], sizeof *keys);
                return PS_OK;
            }
        }
        return PS_ERR_DUPLICATE;
    }
    uint32_t skip = counter - *index;
    if (skip > max_jump || counter == UINT32_MAX) /* a counter never wraps */
        return PS_ERR_TOO_FAR;
    uint32_t keep = skip > max_skipped ? max_skipped : skip; /* only the newest are kept */
    if (keep) {
        uint32_t total = *nskipped + keep;
        uint32_t drop = total > max_skipped ? total - max_skipped : 0;
        /* a new array, the old one wiped: realloc could leave seeds in freed memory */
        ps_skipped_key *grown = malloc((*nskipped - drop + keep) * sizeof *keys);
        if (!grown)
            return PS_ERR_NOMEM;
        if (*nskipped - drop)
            memcpy(grown, keys + drop, (*nskipped - drop) * sizeof *keys);
        if (keys) {
            sodium_memzero(keys, *nskipped * sizeof *keys);
            free(keys);
        }
        *nskipped -= drop;
        *skipped = keys = grown;
    }
    uint8_t next[32];
    for (; *index < counter; (*index)++) {
        ps_chain_step(chain_key, seed, next);
        if (counter - *index <= keep) {
            keys[*nskipped].counter = *index;
            memcpy(keys[*nskipped].seed, seed, PS_KEY_LEN);
            (*nskipped)++;
        }
        memcpy(chain_key, next, PS_KEY_LEN);
    }
    ps_chain_step(chain_key, seed, next);
    memcpy(chain_key, next, PS_KEY_LEN);
    (*index)++;
    sodium_memzero(next, sizeof next);
    return PS_OK;
}

/* Decrypts body with one session, mutating it (callers pass a copy). */
static int session_decrypt(ps_session *s, const uint8_t *body, size_t len,
                           ps_bytes *plaintext, const ps_rng *rng)
{
    if (len < 1 + PS_MAC_LEN)
        return PS_ERR_INVALID_MESSAGE;
    if (!version_supported(body[0]))
        return PS_ERR_VERSION;
    if ((body[0] >> 4) != s->version)
        return PS_ERR_VERSION;

    Signalwire__SignalMessage *sm =
        signalwire__signal_message__unpack(NULL, len - 1 - PS_MAC_LEN, body + 1);
    if (!sm)
        return PS_ERR_INVALID_MESSAGE;
    int rc = PS_ERR_INVALID_MESSAGE;
    uint8_t their[32], seed[32], mac[PS_MAC_LEN];
    ps_message_keys k;
    ps_recv_chain *chain = NULL;
    if (!sm->has_ratchet_key || !sm->has_counter || !sm->has_ciphertext)
        goto out;
    if ((rc = ps_pubkey_parse(their, sm->ratchet_key.data, sm->ratchet_key.len)))
        goto out;
    if ((rc = get_or_create_chain(s, their, rng, &chain)) ||
        (rc = ps_chain_seed_for(chain->chain_key, &chain->index, &chain->skipped,
                                &chain->nskipped, sm->counter, PS_MAX_FORWARD_JUMP,
                                PS_MAX_SKIPPED_KEYS, seed)) ||
        (rc = ps_message_keys_derive(&k, seed)))
        goto out;
    compute_mac(mac, k.mac_key, s->remote_identity, s->local_identity, body, len - PS_MAC_LEN);
    if (sodium_memcmp(mac, body + len - PS_MAC_LEN, PS_MAC_LEN) != 0) {
        rc = PS_ERR_BAD_MAC;
        goto out;
    }
    if ((rc = ps_aes_cbc_decrypt(plaintext, k.cipher_key, k.iv, sm->ciphertext.data,
                                 sm->ciphertext.len)))
        goto out;
    s->has_pending_prekey = false; /* they answered: they hold the session */
out:
    signalwire__signal_message__free_unpacked(sm, NULL);
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(&k, sizeof k);
    return rc;
}

/* Tries one session on a copy; on success the copy replaces *slot. */
static int try_session(ps_session **slot, const uint8_t *body, size_t len,
                       ps_bytes *plaintext, const ps_rng *rng)
{
    ps_session *copy = session_dup(*slot);
    if (!copy)
        return PS_ERR_NOMEM;
    int rc = session_decrypt(copy, body, len, plaintext, rng);
    if (rc != PS_OK) {
        session_free(copy);
        return rc;
    }
    session_free(*slot);
    *slot = copy;
    return PS_OK;
}

/* Makes previous session i current. */
static void promote_previous(ps_session_record *rec, uint32_t i)
{
    ps_session *s = rec->previous[i];
    memmove(&rec->previous[i], &rec->previous[i + 1], (rec->nprevious - i - 1) * sizeof(ps_session *));
    rec->nprevious--;
    record_promote(rec, s);
}

int ps_session_decrypt(ps_session_record *rec, const uint8_t *body, size_t len,
                       ps_bytes *plaintext, const ps_rng *rng)
{
    plaintext->data = NULL;
    plaintext->len = 0;
    if (!rec->current && rec->nprevious == 0)
        return PS_ERR_NO_SESSION;
    int first_rc = PS_ERR_NO_SESSION;
    if (rec->current) {
        first_rc = try_session(&rec->current, body, len, plaintext, rng);
        if (first_rc == PS_OK || first_rc == PS_ERR_NOMEM)
            return first_rc;
    }
    for (uint32_t i = 0; i < rec->nprevious; i++) {
        int rc = try_session(&rec->previous[i], body, len, plaintext, rng);
        if (rc == PS_OK) { /* the session that opened it becomes current */
            promote_previous(rec, i);
            return PS_OK;
        }
        if (rc == PS_ERR_NOMEM)
            return rc;
        if (first_rc == PS_ERR_NO_SESSION)
            first_rc = rc;
    }
    return first_rc;
}

/* ---- PreKey messages ---------------------------------------------------------- */

void ps_prekey_message_clear(ps_prekey_message *m)
{
    ps_bytes_free(&m->message);
    sodium_memzero(m, sizeof *m);
}

int ps_prekey_message_parse(ps_prekey_message *m, const uint8_t *body, size_t len)
{
    memset(m, 0, sizeof *m);
    if (len < 1)
        return PS_ERR_INVALID_MESSAGE;
    if (!version_supported(body[0]))
        return PS_ERR_VERSION;
    Signalwire__PreKeySignalMessage *pm =
        signalwire__pre_key_signal_message__unpack(NULL, len - 1, body + 1);
    if (!pm)
        return PS_ERR_INVALID_MESSAGE;
    int rc = PS_ERR_INVALID_MESSAGE;
    if (!pm->has_base_key || !pm->has_identity_key || !pm->has_message ||
        !pm->has_signed_pre_key_id)
        goto out;
    if ((rc = ps_pubkey_parse(m->base_key, pm->base_key.data, pm->base_key.len)) ||
        (rc = ps_pubkey_parse(m->identity_key, pm->identity_key.data, pm->identity_key.len)))
        goto out;
    m->version = body[0];
    m->registration_id = pm->has_registration_id ? pm->registration_id : 0;
    /* libsignal-node treats prekey id 0 as "none"; so do we. */
    m->has_prekey_id = pm->has_pre_key_id && pm->pre_key_id != 0;
    m->prekey_id = m->has_prekey_id ? pm->pre_key_id : 0;
    m->signed_prekey_id = pm->signed_pre_key_id;
    m->message.data = malloc(pm->message.len ? pm->message.len : 1);
    if (!m->message.data) {
        rc = PS_ERR_NOMEM;
        goto out;
    }
    memcpy(m->message.data, pm->message.data, pm->message.len);
    m->message.len = pm->message.len;
    rc = PS_OK;
out:
    signalwire__pre_key_signal_message__free_unpacked(pm, NULL);
    if (rc != PS_OK)
        ps_prekey_message_clear(m);
    return rc;
}

int ps_session_decrypt_prekey(ps_session_record *rec, const ps_local_identity *me,
                              const ps_prekey_message *m, const ps_keypair *signed_prekey,
                              const ps_keypair *one_time_prekey, ps_bytes *plaintext,
                              const ps_rng *rng, bool *used_one_time_prekey)
{
    *used_one_time_prekey = false;
    plaintext->data = NULL;
    plaintext->len = 0;
    /* A repeat PreKey message of a session we already have: only that session may
     * open it, and the identity it names must be that session's. The MAC covers the
     * stored identities, not this field, so without the check a relay could swap in
     * another identity key unnoticed. */
    uint32_t match_index;
    ps_session **match = find_base_key(rec, m->base_key, &match_index);
    if (match) {
        if (sodium_memcmp((*match)->remote_identity, m->identity_key, PS_KEY_LEN) != 0)
            return PS_ERR_INVALID_MESSAGE;
        int rc = try_session(match, m->message.data, m->message.len, plaintext, rng);
        if (rc == PS_OK && match_index != UINT32_MAX)
            promote_previous(rec, match_index);
        return rc;
    }

    if (!signed_prekey || (m->has_prekey_id && !one_time_prekey))
        return PS_ERR_NO_PREKEY;
    if ((m->version >> 4) != 3)
        return PS_ERR_VERSION;
    ps_session *s = NULL;
    int rc = session_from_prekey(&s, me, m, signed_prekey,
                                 m->has_prekey_id ? one_time_prekey : NULL);
    if (rc)
        return rc;
    rc = session_decrypt(s, m->message.data, m->message.len, plaintext, rng);
    if (rc) {
        session_free(s);
        return rc;
    }
    record_promote(rec, s);
    *used_one_time_prekey = m->has_prekey_id;
    return PS_OK;
}
