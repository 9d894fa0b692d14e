/* sender_key.c - group messages with Sender Keys (SIGNAL-NOTES 2.8). */
#include "sender_key.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "primitives.h"
#include "session.h"
#include "signal.pb-c.h"

static void state_clear(ps_sk_state *st)
{
    if (st->skipped) {
        sodium_memzero(st->skipped, st->nskipped * sizeof(ps_skipped_key));
        free(st->skipped);
    }
    sodium_memzero(st, sizeof *st);
}

void ps_sender_key_record_clear(ps_sender_key_record *rec)
{
    for (uint32_t i = 0; i < rec->nstates; i++)
        state_clear(&rec->states[i]);
    sodium_memzero(rec, sizeof *rec);
}

static int state_copy(ps_sk_state *dst, const ps_sk_state *src)
{
    *dst = *src;
    dst->skipped = NULL;
    if (src->nskipped) {
        dst->skipped = malloc(src->nskipped * sizeof(ps_skipped_key));
        if (!dst->skipped) {
            dst->nskipped = 0;
            return PS_ERR_NOMEM;
        }
        memcpy(dst->skipped, src->skipped, src->nskipped * sizeof(ps_skipped_key));
    }
    return PS_OK;
}

/* Puts st first; the oldest state falls off past PS_SK_MAX_STATES. Takes ownership. */
static void record_push_front(ps_sender_key_record *rec, const ps_sk_state *st)
{
    if (rec->nstates == PS_SK_MAX_STATES)
        state_clear(&rec->states[--rec->nstates]);
    memmove(&rec->states[1], &rec->states[0], rec->nstates * sizeof(ps_sk_state));
    rec->states[0] = *st;
    rec->nstates++;
}

/* Sender-key message keys: HKDF(seed, "WhisperGroup", 48) = IV[16] || key[32]. */
static int derive_keys(uint8_t iv[16], uint8_t key[32], const uint8_t seed[PS_KEY_LEN])
{
    uint8_t okm[48];
    int rc = ps_hkdf(okm, sizeof okm, NULL, 0, seed, PS_KEY_LEN, "WhisperGroup");
    if (rc == PS_OK) {
        memcpy(iv, okm, 16);
        memcpy(key, okm + 16, 32);
    }
    sodium_memzero(okm, sizeof okm);
    return rc;
}

int ps_sender_key_create(ps_sender_key_record *rec, const uint8_t dist[PS_UUID_LEN],
                         const ps_rng *rng, ps_bytes *skdm)
{
    skdm->data = NULL;
    skdm->len = 0;
    if (rec->nstates == 0) {
        ps_sk_state st;
        ps_keypair signing;
        memset(&st, 0, sizeof st);
        memcpy(rec->distribution_id, dist, PS_UUID_LEN);
        ps_random(rng, (uint8_t *)&st.chain_id, sizeof st.chain_id);
        st.chain_id >>= 1; /* 31 bits, as libsignal */
        ps_random(rng, st.chain_key, PS_KEY_LEN);
        ps_keypair_generate(rng, &signing);
        memcpy(st.signing_public, signing.pub, PS_KEY_LEN);
        memcpy(st.signing_private, signing.priv, PS_KEY_LEN);
        st.has_signing_private = true;
        ps_keypair_clear(&signing);
        record_push_front(rec, &st);
        sodium_memzero(&st, sizeof st);
    }
    const ps_sk_state *st = &rec->states[0];
    uint8_t signing33[PS_PUBKEY_LEN];
    ps_pubkey_serialize(signing33, st->signing_public);
    Signalwire__SenderKeyDistributionMessage m = SIGNALWIRE__SENDER_KEY_DISTRIBUTION_MESSAGE__INIT;
    m.has_distribution_uuid = 1;
    m.distribution_uuid = (ProtobufCBinaryData){PS_UUID_LEN, rec->distribution_id};
    m.has_chain_id = 1;
    m.chain_id = st->chain_id;
    m.has_iteration = 1;
    m.iteration = st->iteration;
    m.has_chain_key = 1;
    m.chain_key = (ProtobufCBinaryData){PS_KEY_LEN, (uint8_t *)st->chain_key};
    m.has_signing_key = 1;
    m.signing_key = (ProtobufCBinaryData){sizeof signing33, signing33};
    return ps_pack_versioned(skdm, &m.base, 0);
}

int ps_skdm_parse(ps_skdm *out, const uint8_t *body, size_t len)
{
    memset(out, 0, sizeof *out);
    if (len < 1)
        return PS_ERR_INVALID_MESSAGE;
    if ((body[0] >> 4) != 3)
        return PS_ERR_VERSION;
    Signalwire__SenderKeyDistributionMessage *m =
        signalwire__sender_key_distribution_message__unpack(&ps_wiping_allocator, len - 1, body + 1);
    if (!m)
        return PS_ERR_INVALID_MESSAGE;
    int rc = PS_ERR_INVALID_MESSAGE;
    if (!m->has_distribution_uuid || m->distribution_uuid.len != PS_UUID_LEN ||
        !m->has_chain_id || !m->has_iteration || !m->has_chain_key ||
        m->chain_key.len != PS_KEY_LEN || !m->has_signing_key)
        goto out;
    if ((rc = ps_pubkey_parse(out->signing_key, m->signing_key.data, m->signing_key.len)))
        goto out;
    memcpy(out->distribution_id, m->distribution_uuid.data, PS_UUID_LEN);
    out->chain_id = m->chain_id;
    out->iteration = m->iteration;
    memcpy(out->chain_key, m->chain_key.data, PS_KEY_LEN);
    rc = PS_OK;
out:
    signalwire__sender_key_distribution_message__free_unpacked(m, &ps_wiping_allocator);
    return rc;
}

int ps_sender_key_process(ps_sender_key_record *rec, const ps_skdm *m)
{
    if (rec->nstates == 0)
        memcpy(rec->distribution_id, m->distribution_id, PS_UUID_LEN);
    else if (sodium_memcmp(rec->distribution_id, m->distribution_id, PS_UUID_LEN) != 0)
        return PS_ERR_INVALID_MESSAGE;

    ps_sk_state st, kept;
    bool have_kept = false;
    /* A state with this chain id and signing key is kept as it is (it may be further
     * along than the SKDM); others with the same chain id are replaced. */
    for (uint32_t i = 0; i < rec->nstates;) {
        ps_sk_state *s = &rec->states[i];
        if (s->chain_id != m->chain_id) {
            i++;
            continue;
        }
        if (!have_kept && sodium_memcmp(s->signing_public, m->signing_key, PS_KEY_LEN) == 0) {
            kept = *s;
            have_kept = true;
        } else {
            state_clear(s);
        }
        memmove(&rec->states[i], &rec->states[i + 1], (rec->nstates - i - 1) * sizeof *s);
        rec->nstates--;
    }
    if (have_kept) {
        record_push_front(rec, &kept);
        sodium_memzero(&kept, sizeof kept);
        return PS_OK;
    }
    memset(&st, 0, sizeof st);
    st.chain_id = m->chain_id;
    st.iteration = m->iteration;
    memcpy(st.chain_key, m->chain_key, PS_KEY_LEN);
    memcpy(st.signing_public, m->signing_key, PS_KEY_LEN);
    record_push_front(rec, &st);
    sodium_memzero(&st, sizeof st);
    return PS_OK;
}

int ps_sender_key_encrypt(ps_sender_key_record *rec, const uint8_t *plaintext, size_t len,
                          const ps_rng *rng, ps_bytes *out)
{
    out->data = NULL;
    out->len = 0;
    if (rec->nstates == 0 || !rec->states[0].has_signing_private)
        return PS_ERR_NO_SENDER_KEY;
    ps_sk_state *st = &rec->states[0];
    if (st->iteration == UINT32_MAX) /* the chain is used up: a new sender key is needed */
        return PS_ERR_TOO_FAR;
    uint8_t seed[32], next[32], iv[16], key[32];
    ps_bytes ct = {0};
    int rc;
    ps_chain_step(st->chain_key, seed, next);
    if ((rc = derive_keys(iv, key, seed)) ||
        (rc = ps_aes_cbc_encrypt(&ct, key, iv, plaintext, len)))
        goto out;
    Signalwire__SenderKeyMessage m = SIGNALWIRE__SENDER_KEY_MESSAGE__INIT;
    m.has_distribution_uuid = 1;
    m.distribution_uuid = (ProtobufCBinaryData){PS_UUID_LEN, rec->distribution_id};
    m.has_chain_id = 1;
    m.chain_id = st->chain_id;
    m.has_iteration = 1;
    m.iteration = st->iteration;
    m.has_ciphertext = 1;
    m.ciphertext = (ProtobufCBinaryData){ct.len, ct.data};
    if ((rc = ps_pack_versioned(out, &m.base, PS_SIG_LEN)))
        goto out;
    if ((rc = ps_xeddsa_sign(out->data + out->len, st->signing_private, out->data, out->len, rng))) {
        ps_bytes_free(out);
        goto out;
    }
    out->len += PS_SIG_LEN;
    memcpy(st->chain_key, next, PS_KEY_LEN);
    st->iteration++;
out:
    ps_bytes_free(&ct);
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(next, sizeof next);
    sodium_memzero(key, sizeof key);
    sodium_memzero(iv, sizeof iv);
    return rc;
}

static Signalwire__SenderKeyMessage *unpack_message(const uint8_t *body, size_t len, int *rc)
{
    *rc = PS_ERR_INVALID_MESSAGE;
    if (len < 1 + PS_SIG_LEN)
        return NULL;
    if ((body[0] >> 4) != 3) {
        *rc = PS_ERR_VERSION;
        return NULL;
    }
    Signalwire__SenderKeyMessage *m =
        signalwire__sender_key_message__unpack(NULL, len - 1 - PS_SIG_LEN, body + 1);
    if (!m)
        return NULL;
    if (!m->has_distribution_uuid || m->distribution_uuid.len != PS_UUID_LEN ||
        !m->has_chain_id || !m->has_iteration || !m->has_ciphertext) {
        signalwire__sender_key_message__free_unpacked(m, NULL);
        return NULL;
    }
    *rc = PS_OK;
    return m;
}

int ps_sender_key_message_distribution(const uint8_t *body, size_t len, uint8_t dist[PS_UUID_LEN])
{
    int rc;
    Signalwire__SenderKeyMessage *m = unpack_message(body, len, &rc);
    if (!m)
        return rc;
    memcpy(dist, m->distribution_uuid.data, PS_UUID_LEN);
    signalwire__sender_key_message__free_unpacked(m, NULL);
    return PS_OK;
}

int ps_sender_key_decrypt(ps_sender_key_record *rec, const uint8_t *body, size_t len,
                          ps_bytes *plaintext)
{
    plaintext->data = NULL;
    plaintext->len = 0;
    int rc;
    Signalwire__SenderKeyMessage *m = unpack_message(body, len, &rc);
    if (!m)
        return rc;
    ps_sk_state *st = NULL, work;
    uint8_t seed[32], iv[16], key[32];
    memset(&work, 0, sizeof work);
    rc = PS_ERR_NO_SENDER_KEY;
    if (rec->nstates == 0 ||
        sodium_memcmp(rec->distribution_id, m->distribution_uuid.data, PS_UUID_LEN) != 0)
        goto out;
    for (uint32_t i = 0; i < rec->nstates; i++)
        if (rec->states[i].chain_id == m->chain_id)
            st = &rec->states[i];
    if (!st)
        goto out;
    /* Signature first, as the reference does: a forgery costs no chain work. */
    rc = PS_ERR_BAD_SIGNATURE;
    if (!ps_xeddsa_verify(st->signing_public, body, len - PS_SIG_LEN, body + len - PS_SIG_LEN))
        goto out;
    if ((rc = state_copy(&work, st)) ||
        (rc = ps_chain_seed_for(work.chain_key, &work.iteration, &work.skipped, &work.nskipped,
                                m->iteration, PS_SK_MAX_FORWARD_JUMP, PS_SK_MAX_SKIPPED_KEYS,
                                seed)) ||
        (rc = derive_keys(iv, key, seed)))
        goto out;
    rc = ps_aes_cbc_decrypt(plaintext, key, iv, m->ciphertext.data, m->ciphertext.len);
    if (rc)
        goto out;
    state_clear(st);
    *st = work;
    memset(&work, 0, sizeof work);
out:
    state_clear(&work);
    signalwire__sender_key_message__free_unpacked(m, NULL);
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(key, sizeof key);
    return rc;
}
