/* e2e.c - the Signal session layer over the profile database (see e2e.h). */
#include "e2e.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fingerprint.h"
#include "keys.h"
#include "primitives.h"

const char *e2e_strerror(int rc)
{
    return rc == E2E_ERR_STORAGE ? "the profile database failed" : ps_strerror(rc);
}

static int storage(int db_rc)
{
    return db_rc == DB_OK ? E2E_OK : E2E_ERR_STORAGE;
}

/* ---- our keys -------------------------------------------------------------------------- */

int e2e_identity_load(db *d, ps_local_identity *me)
{
    memset(me, 0, sizeof *me);
    db_identity id;
    uint8_t priv[DB_KEY_LEN];
    if (db_identity_get(d, &id) != DB_OK || db_identity_key(d, priv) != DB_OK)
        return E2E_ERR_STORAGE;
    ps_keypair_from_private(&me->identity, priv);
    sodium_memzero(priv, sizeof priv);
    me->registration_id = id.registration_id;
    return E2E_OK;
}

void e2e_identity_clear(ps_local_identity *me)
{
    sodium_memzero(me, sizeof *me);
}

int e2e_identity_public(db *d, uint8_t out[PS_PUBKEY_LEN])
{
    ps_local_identity me;
    int rc = e2e_identity_load(d, &me);
    if (rc == E2E_OK)
        ps_pubkey_serialize(out, me.identity.pub);
    e2e_identity_clear(&me);
    return rc;
}

/* A stored key record (with its private key) into *k; the caller wipes k. */
static int load_key(db_blob *blob, ps_key_record *k, ps_key_kind kind)
{
    int rc = ps_key_record_deserialize(k, blob->data, blob->len);
    db_blob_free(blob);
    if (rc == PS_OK && k->kind != kind) {
        sodium_memzero(k, sizeof *k);
        rc = PS_ERR_BAD_STATE;
    }
    return rc;
}

static void public_spk(const ps_key_record *k, uint64_t created_ms, e2e_signed_prekey *out)
{
    out->id = k->id;
    memcpy(out->pub, k->pair.pub, PS_KEY_LEN);
    memcpy(out->signature, k->signature, PS_SIG_LEN);
    out->created_ms = created_ms;
}

int e2e_signed_prekey_current(db *d, e2e_signed_prekey *out)
{
    memset(out, 0, sizeof *out);
    uint32_t id;
    uint64_t created;
    db_blob blob;
    int rc = db_signed_prekey_current(d, &id, &blob, &created);
    if (rc == DB_NOT_FOUND)
        return PS_ERR_NO_PREKEY;
    if (rc != DB_OK)
        return E2E_ERR_STORAGE;
    ps_key_record k;
    if ((rc = load_key(&blob, &k, PS_KEY_SIGNED_PREKEY)) == PS_OK)
        public_spk(&k, created, out);
    sodium_memzero(&k, sizeof k);
    return rc;
}

int e2e_signed_prekey_new(db *d, uint64_t now_ms, e2e_signed_prekey *out)
{
    memset(out, 0, sizeof *out);
    e2e_signed_prekey cur;
    int rc = e2e_signed_prekey_current(d, &cur);
    if (rc != PS_OK && rc != PS_ERR_NO_PREKEY)
        return rc;
    uint32_t id = rc == PS_OK && cur.id < E2E_MAX_KEY_ID ? cur.id + 1 : 1;
    ps_local_identity me;
    if ((rc = e2e_identity_load(d, &me)) != E2E_OK)
        return rc;
    ps_key_record k;
    memset(&k, 0, sizeof k);
    k.kind = PS_KEY_SIGNED_PREKEY;
    k.id = id;
    ps_keypair_generate(NULL, &k.pair);
    uint8_t pub33[PS_PUBKEY_LEN];
    ps_pubkey_serialize(pub33, k.pair.pub);
    rc = ps_xeddsa_sign(k.signature, me.identity.priv, pub33, sizeof pub33, NULL);
    e2e_identity_clear(&me);
    k.has_signature = true;
    k.created_at = now_ms / 1000;
    ps_bytes rec = {0};
    if (rc == PS_OK && (rc = ps_key_record_serialize(&k, &rec)) == PS_OK)
        rc = storage(db_signed_prekey_add(d, id, rec.data, rec.len, now_ms));
    if (rc == E2E_OK)
        public_spk(&k, now_ms, out);
    ps_bytes_free(&rec);
    sodium_memzero(&k, sizeof k);
    return rc;
}

int e2e_signed_prekey_prune(db *d, uint64_t now_ms)
{
    uint64_t before = now_ms > E2E_SIGNED_PREKEY_KEEP_MS ? now_ms - E2E_SIGNED_PREKEY_KEEP_MS : 0;
    return storage(db_signed_prekey_prune(d, before, NULL));
}

int e2e_prekeys_to_upload(db *d, size_t want, e2e_prekey *out, size_t *n)
{
    *n = 0;
    db_key_row *rows = calloc(want ? want : 1, sizeof *rows);
    if (!rows)
        return PS_ERR_NOMEM;
    size_t have = 0;
    int rc = E2E_ERR_STORAGE;
    if (db_begin(d) != DB_OK)
        goto out;
    if (db_prekeys_not_uploaded(d, rows, want, &have) != DB_OK)
        goto rollback;
    for (size_t i = 0; i < have; i++) {
        ps_key_record k;
        rc = load_key(&rows[i].record, &k, PS_KEY_ONE_TIME_PREKEY);
        if (rc == PS_OK) {
            out[*n].id = rows[i].id;
            memcpy(out[*n].pub, k.pair.pub, PS_KEY_LEN);
            (*n)++;
        }
        sodium_memzero(&k, sizeof k);
        if (rc != PS_OK)
            goto rollback;
    }
    rc = E2E_ERR_STORAGE;
    while (*n < want) {
        ps_key_record k;
        memset(&k, 0, sizeof k);
        k.kind = PS_KEY_ONE_TIME_PREKEY;
        if (db_prekey_next_id(d, &k.id) != DB_OK)
            goto rollback;
        ps_keypair_generate(NULL, &k.pair);
        ps_bytes rec = {0};
        int prc = ps_key_record_serialize(&k, &rec);
        int drc = prc == PS_OK ? db_prekey_add(d, k.id, rec.data, rec.len) : DB_ERROR;
        ps_bytes_free(&rec);
        if (drc == DB_OK) {
            out[*n].id = k.id;
            memcpy(out[*n].pub, k.pair.pub, PS_KEY_LEN);
            (*n)++;
        }
        sodium_memzero(&k, sizeof k);
        if (prc != PS_OK) {
            rc = prc;
            goto rollback;
        }
        if (drc != DB_OK)
            goto rollback;
    }
    rc = db_commit(d) == DB_OK ? E2E_OK : E2E_ERR_STORAGE;
    goto out;
rollback:
    db_rollback(d);
out:
    for (size_t i = 0; i < have; i++)
        db_blob_free(&rows[i].record);
    free(rows);
    if (rc != E2E_OK)
        *n = 0;
    return rc;
}

/* ---- sessions --------------------------------------------------------------------------- */

int e2e_bundle_parse(ps_bundle *b, uint32_t device, uint32_t registration_id, const uint8_t *identity_key,
                     size_t identity_len, uint32_t signed_id, const uint8_t *signed_key, size_t signed_len,
                     const uint8_t *signature, size_t signature_len, bool has_prekey, uint32_t prekey_id,
                     const uint8_t *prekey, size_t prekey_len)
{
    memset(b, 0, sizeof *b);
    int rc;
    if (!identity_key || !signed_key || !signature || signature_len != PS_SIG_LEN || signed_id == 0 ||
        signed_id > E2E_MAX_KEY_ID || device == 0)
        return PS_ERR_INVALID_MESSAGE;
    if ((rc = ps_pubkey_parse(b->identity_key, identity_key, identity_len)) != PS_OK ||
        (rc = ps_pubkey_parse(b->signed_prekey, signed_key, signed_len)) != PS_OK)
        return rc;
    if (has_prekey) {
        if (!prekey || prekey_id == 0 || prekey_id > E2E_MAX_KEY_ID)
            return PS_ERR_INVALID_MESSAGE;
        if ((rc = ps_pubkey_parse(b->prekey, prekey, prekey_len)) != PS_OK)
            return rc;
        b->has_prekey = true;
        b->prekey_id = prekey_id;
    }
    b->device_id = device;
    b->registration_id = registration_id;
    b->signed_prekey_id = signed_id;
    memcpy(b->signed_prekey_signature, signature, PS_SIG_LEN);
    return PS_OK;
}

/* The stored record of (account, device) into *rec; an empty record when there is none,
 * or when the stored one cannot be read (then the next session made replaces it: a
 * corrupt record must not block the peer's new PreKey messages for good). */
static int load_record(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, ps_session_record *rec)
{
    memset(rec, 0, sizeof *rec);
    db_blob blob;
    int rc = db_session_get(d, account, device, &blob);
    if (rc == DB_NOT_FOUND)
        return E2E_OK;
    if (rc != DB_OK)
        return E2E_ERR_STORAGE;
    rc = ps_session_record_deserialize(rec, blob.data, blob.len);
    db_blob_free(&blob);
    if (rc == PS_ERR_BAD_STATE) {
        ps_session_record_clear(rec);
        rc = E2E_OK;
    }
    return rc;
}

int e2e_session_from_bundle(db *d, const uint8_t account[DB_ID_LEN], const ps_bundle *b, ps_bytes *record)
{
    record->data = NULL;
    record->len = 0;
    ps_session_record rec;
    ps_local_identity me;
    int rc = load_record(d, account, b->device_id, &rec);
    if (rc != E2E_OK)
        return rc;
    if ((rc = e2e_identity_load(d, &me)) == E2E_OK && (rc = ps_session_initiate(&rec, &me, b, NULL)) == PS_OK)
        rc = ps_session_record_serialize(&rec, record);
    e2e_identity_clear(&me);
    ps_session_record_clear(&rec);
    return rc;
}

int e2e_session_usable(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, bool *usable)
{
    *usable = false;
    ps_session_record rec;
    int rc = load_record(d, account, device, &rec); /* unreadable: as none */
    if (rc == E2E_OK)
        *usable = rec.current != NULL;
    ps_session_record_clear(&rec);
    return rc;
}

int e2e_session_archive(db *d, const uint8_t account[DB_ID_LEN], uint32_t device)
{
    ps_session_record rec;
    int rc = load_record(d, account, device, &rec);
    if (rc != E2E_OK || !rec.current) {
        ps_session_record_clear(&rec);
        return rc;
    }
    if (rec.nprevious == PS_MAX_ARCHIVED_SESSIONS) { /* the oldest goes */
        ps_session_record oldest;
        memset(&oldest, 0, sizeof oldest);
        oldest.current = rec.previous[--rec.nprevious];
        rec.previous[rec.nprevious] = NULL;
        ps_session_record_clear(&oldest);
    }
    memmove(rec.previous + 1, rec.previous, rec.nprevious * sizeof rec.previous[0]);
    rec.previous[0] = rec.current;
    rec.nprevious++;
    rec.current = NULL;
    ps_bytes out = {0};
    if ((rc = ps_session_record_serialize(&rec, &out)) == PS_OK)
        rc = storage(db_session_put(d, account, device, out.data, out.len));
    ps_bytes_free(&out);
    ps_session_record_clear(&rec);
    return rc;
}

int e2e_encrypt(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const uint8_t *plaintext, size_t len,
                e2e_sealed *out)
{
    memset(out, 0, sizeof *out);
    ps_session_record rec;
    int rc = load_record(d, account, device, &rec);
    if (rc == E2E_OK && !rec.current)
        rc = PS_ERR_NO_SESSION;
    if (rc == E2E_OK && (rc = ps_session_encrypt(&rec, plaintext, len, &out->body, &out->type)) == PS_OK) {
        out->registration_id = rec.current->remote_registration_id;
        memcpy(out->remote_identity, rec.current->remote_identity, PS_KEY_LEN);
        rc = ps_session_record_serialize(&rec, &out->record);
    }
    ps_session_record_clear(&rec);
    if (rc != E2E_OK)
        e2e_sealed_clear(out);
    return rc;
}

int e2e_sealed_commit(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const e2e_sealed *s)
{
    return storage(db_session_put(d, account, device, s->record.data, s->record.len));
}

void e2e_sealed_clear(e2e_sealed *s)
{
    ps_bytes_free(&s->body);
    ps_bytes_free(&s->record);
    memset(s, 0, sizeof *s);
}

/* The signed prekey and one-time prekey a PreKey message names, into *spk / *opk
 * (*has_opk says whether one is named). */
static int prekeys_for(db *d, const ps_prekey_message *m, ps_key_record *spk, ps_key_record *opk)
{
    db_blob blob;
    int rc = db_signed_prekey_get(d, m->signed_prekey_id, &blob);
    if (rc == DB_NOT_FOUND)
        return PS_ERR_NO_PREKEY;
    if (rc != DB_OK)
        return E2E_ERR_STORAGE;
    if ((rc = load_key(&blob, spk, PS_KEY_SIGNED_PREKEY)) != PS_OK || !m->has_prekey_id)
        return rc;
    rc = db_prekey_get(d, m->prekey_id, &blob);
    if (rc == DB_NOT_FOUND)
        return PS_ERR_NO_PREKEY;
    if (rc != DB_OK)
        return E2E_ERR_STORAGE;
    return load_key(&blob, opk, PS_KEY_ONE_TIME_PREKEY);
}

static int decrypt_prekey(db *d, ps_session_record *rec, const uint8_t *body, size_t len, e2e_opened *out)
{
    ps_prekey_message m;
    int rc = ps_prekey_message_parse(&m, body, len);
    if (rc != PS_OK)
        return rc;
    out->prekey_message = true;
    memcpy(out->identity, m.identity_key, PS_KEY_LEN);
    ps_key_record spk, opk;
    ps_local_identity me;
    memset(&spk, 0, sizeof spk);
    memset(&opk, 0, sizeof opk);
    memset(&me, 0, sizeof me);
    bool repeat = ps_session_record_has_base_key(rec, m.base_key); /* no prekeys needed */
    if (!repeat)
        rc = prekeys_for(d, &m, &spk, &opk);
    if (rc == PS_OK && (rc = e2e_identity_load(d, &me)) == E2E_OK) {
        bool used = false;
        rc = ps_session_decrypt_prekey(rec, &me, &m, repeat ? NULL : &spk.pair,
                                       repeat || !m.has_prekey_id ? NULL : &opk.pair, &out->plaintext, NULL,
                                       &used);
        if (rc == PS_OK && used) {
            out->used_prekey = true;
            out->prekey_id = m.prekey_id;
        }
    }
    e2e_identity_clear(&me);
    sodium_memzero(&spk, sizeof spk);
    sodium_memzero(&opk, sizeof opk);
    ps_prekey_message_clear(&m);
    return rc;
}

int e2e_decrypt(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, uint32_t type, const uint8_t *body,
                size_t len, e2e_opened *out)
{
    memset(out, 0, sizeof *out);
    if (type != PS_MSG_WHISPER && type != PS_MSG_PREKEY)
        return PS_ERR_INVALID_MESSAGE;
    ps_session_record rec;
    int rc = load_record(d, account, device, &rec);
    if (rc == E2E_OK) {
        if (type == PS_MSG_WHISPER)
            rc = ps_session_decrypt(&rec, body, len, &out->plaintext, NULL);
        else
            rc = decrypt_prekey(d, &rec, body, len, out);
    }
    if (rc == PS_OK)
        rc = ps_session_record_serialize(&rec, &out->record);
    ps_session_record_clear(&rec);
    if (rc != PS_OK) {
        bool was_prekey = out->prekey_message;
        e2e_opened_clear(out);
        out->prekey_message = was_prekey;
    }
    return rc;
}

int e2e_opened_commit(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const e2e_opened *o)
{
    if (db_session_put(d, account, device, o->record.data, o->record.len) != DB_OK)
        return E2E_ERR_STORAGE;
    return o->used_prekey ? storage(db_prekey_delete(d, o->prekey_id)) : E2E_OK;
}

void e2e_opened_clear(e2e_opened *o)
{
    ps_bytes_free(&o->plaintext);
    ps_bytes_free(&o->record);
    sodium_memzero(o, sizeof *o);
}

/* ---- identities ------------------------------------------------------------------------- */

void e2e_identity_notice(char *out, size_t len, const char *phone, bool was_verified)
{
    const char *who = phone && *phone ? phone : "an unknown number";
    if (was_verified)
        snprintf(out, len, "security code with %s changed; it was verified, compare it again", who);
    else
        snprintf(out, len, "security code with %s changed", who);
}

int e2e_identity_seen(db *d, const uint8_t account[DB_ID_LEN], uint32_t device, const char *phone,
                      const uint8_t key[PS_KEY_LEN], db_identity_seen *seen)
{
    if (db_begin(d) != DB_OK)
        return E2E_ERR_STORAGE;
    if (db_peer_identity_put(d, account, device, phone, key, seen) != DB_OK)
        goto fail;
    if (seen->changed) {
        char text[128];
        e2e_identity_notice(text, sizeof text, phone, seen->was_verified);
        if (db_notice_add(d, seen->was_verified ? DB_KIND_IDENTITY_CHANGED_VERIFIED : DB_KIND_IDENTITY_CHANGED,
                          phone, account, device, text) != DB_OK)
            goto fail;
    }
    if (db_commit(d) == DB_OK)
        return E2E_OK;
    memset(seen, 0, sizeof *seen);
    return E2E_ERR_STORAGE;
fail:
    memset(seen, 0, sizeof *seen);
    db_rollback(d);
    return E2E_ERR_STORAGE;
}

int e2e_safety_number(db *d, const char *my_phone, const char *peer_phone, const uint8_t peer_account[DB_ID_LEN],
                      char digits[61], ps_bytes *scannable)
{
    scannable->data = NULL;
    scannable->len = 0;
    uint8_t theirs[PS_KEY_LEN], mine33[PS_PUBKEY_LEN], mine[PS_KEY_LEN];
    int rc = db_peer_identity_get(d, peer_account, 1, theirs);
    if (rc == DB_NOT_FOUND)
        return PS_ERR_NO_SESSION;
    if (rc != DB_OK || e2e_identity_public(d, mine33) != E2E_OK)
        return E2E_ERR_STORAGE;
    memcpy(mine, mine33 + 1, PS_KEY_LEN);
    return ps_safety_number(digits, scannable, E2E_SAFETY_VERSION, PS_FINGERPRINT_ITERATIONS,
                            (const uint8_t *)my_phone, strlen(my_phone), mine, (const uint8_t *)peer_phone,
                            strlen(peer_phone), theirs);
}
