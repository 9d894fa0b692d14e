/* keys.c - this device's prekeys on the server, and safety numbers.
 *
 * After every authentication (and on the server's low-stock notice) the client sends
 * an empty UploadKeys, the status query. With fewer than E2E_PREKEY_LOW one-time
 * prekeys left it uploads a batch (those stored but never uploaded first: a crash
 * between storing and uploading loses nothing); a signed prekey older than 7 days, or
 * one the server does not have as current, is replaced (the old private key is kept
 * for the server's retention, so that late PreKey messages still open). Every private
 * key is stored before its public half is sent. The server's refusals are reported as
 * PARLEY_EVENT_ERROR with PARLEY_ERR_KEYS and never end anything. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "clock.h"
#include "primitives.h"

/* The protobuf messages of an upload with room for their key bytes. */
typedef struct {
    Parley__SignedPreKey m; /* first: a pointer to it is a pointer to the whole */
    uint8_t pub[PS_PUBKEY_LEN];
    uint8_t signature[PS_SIG_LEN];
} spk_msg;

typedef struct {
    Parley__PreKey m;
    uint8_t pub[PS_PUBKEY_LEN];
} pk_msg;

/* The requests: the status query (an empty UploadKeys) and an upload. */
static void on_keys_reply(parley *p, request *r, const Parley__Frame *f);
static void keys_upload_req_free(request *r);
static const request_type keys_status_request = {"key status", on_keys_reply, NULL};
static const request_type keys_upload_request = {"key upload", on_keys_reply, keys_upload_req_free};

typedef struct {
    request base;
    uint32_t *key_ids;                  /* upload: the one-time prekeys sent */
    size_t n_key_ids;
} keys_req;

static void keys_upload_req_free(request *r)
{
    free(((keys_req *)r)->key_ids);
}

void keys_upload_free(Parley__UploadKeys *u)
{
    free(u->signed_prekey);
    if (u->n_prekeys)
        free(u->prekeys[0]);
    free(u->prekeys);
    parley__upload_keys__init(u);
}

/* Builds an UploadKeys from public parts; *ids (malloc'd) gets the one-time prekey ids. */
static int build_upload(Parley__UploadKeys *u, const e2e_signed_prekey *spk, const e2e_prekey *pks, size_t n,
                        uint32_t **ids)
{
    parley__upload_keys__init(u);
    *ids = NULL;
    if (spk) {
        spk_msg *s = calloc(1, sizeof *s);
        if (!s)
            return PARLEY_ERR_NOMEM;
        parley__signed_pre_key__init(&s->m);
        ps_pubkey_serialize(s->pub, spk->pub);
        memcpy(s->signature, spk->signature, PS_SIG_LEN);
        s->m.has_id = 1;
        s->m.id = spk->id;
        s->m.has_public_key = 1;
        s->m.public_key = (ProtobufCBinaryData){PS_PUBKEY_LEN, s->pub};
        s->m.has_signature = 1;
        s->m.signature = (ProtobufCBinaryData){PS_SIG_LEN, s->signature};
        u->signed_prekey = &s->m;
    }
    if (n) {
        pk_msg *k = calloc(n, sizeof *k);
        u->prekeys = calloc(n, sizeof *u->prekeys);
        *ids = calloc(n, sizeof **ids);
        if (!k || !u->prekeys || !*ids) {
            free(k);
            free(*ids);
            *ids = NULL;
            keys_upload_free(u);
            return PARLEY_ERR_NOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            parley__pre_key__init(&k[i].m);
            ps_pubkey_serialize(k[i].pub, pks[i].pub);
            k[i].m.has_id = 1;
            k[i].m.id = pks[i].id;
            k[i].m.has_public_key = 1;
            k[i].m.public_key = (ProtobufCBinaryData){PS_PUBKEY_LEN, k[i].pub};
            u->prekeys[i] = &k[i].m;
            (*ids)[i] = pks[i].id;
        }
        u->n_prekeys = n;
    }
    return PARLEY_OK;
}

int keys_for_registration(parley *p, Parley__UploadKeys *out, uint32_t **ids, size_t *n_ids)
{
    e2e_signed_prekey spk;
    e2e_prekey pks[E2E_PREKEY_BATCH];
    size_t n = 0;
    parley__upload_keys__init(out);
    *ids = NULL;
    *n_ids = 0;
    int rc = e2e_signed_prekey_current(p->db, &spk);
    if (rc == PS_ERR_NO_PREKEY)
        rc = e2e_signed_prekey_new(p->db, clock_wall_ms(), &spk);
    if (rc == E2E_OK)
        rc = e2e_prekeys_to_upload(p->db, E2E_PREKEY_BATCH, pks, &n);
    if (rc == E2E_ERR_STORAGE)
        return db_err(p);
    if (rc != E2E_OK)
        return set_err(p, PARLEY_ERR_STORAGE, "cannot make this device's keys: %s", e2e_strerror(rc));
    if ((rc = build_upload(out, &spk, pks, n, ids)) != PARLEY_OK)
        return set_err(p, rc, "out of memory");
    *n_ids = n;
    return PARLEY_OK;
}

void keys_wanted(parley *p)
{
    p->keys.wanted = true;
}

/* When a status query is due: asks for our key status; the answer says what to upload. */
static void keys_check(parley *p)
{
    if (!p->ready || p->keys.disabled || !p->keys.wanted || clock_mono_ms() < p->keys.pause.until ||
        req_count(p, &keys_status_request) || req_count(p, &keys_upload_request))
        return;
    keys_req *r = req_new(p, &keys_status_request, sizeof *r);
    if (!r)
        return;
    p->keys.wanted = false;
    Parley__UploadKeys u = PARLEY__UPLOAD_KEYS__INIT; /* empty: the status query */
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_UPLOAD_KEYS;
    f.upload_keys = &u;
    req_send(p, &r->base, &f);
}

/* The status says what to upload: a batch of one-time prekeys below the low mark, a
 * signed prekey when ours is old or not the server's current one. */
static void upload_what_is_missing(parley *p, const Parley__KeysUploaded *k)
{
    uint64_t now = clock_wall_ms();
    uint32_t left = k->has_prekeys_left ? k->prekeys_left : 0;
    uint32_t server_spk = k->has_signed_prekey_id ? k->signed_prekey_id : 0;
    e2e_signed_prekey spk;
    e2e_prekey pks[E2E_PREKEY_BATCH];
    size_t n = 0;
    char reason[200];
    if (e2e_signed_prekey_prune(p->db, now) != E2E_OK)
        goto storage;
    int rc = e2e_signed_prekey_current(p->db, &spk);
    if (rc == E2E_ERR_STORAGE)
        goto storage;
    bool new_spk = rc != E2E_OK || now > spk.created_ms + E2E_SIGNED_PREKEY_MAX_AGE_MS;
    bool send_spk = new_spk || server_spk != spk.id;
    if (new_spk && (rc = e2e_signed_prekey_new(p->db, now, &spk)) != E2E_OK)
        goto failed;
    if (left < E2E_PREKEY_LOW && (rc = e2e_prekeys_to_upload(p->db, E2E_PREKEY_BATCH, pks, &n)) != E2E_OK)
        goto failed;
    if (!send_spk && n == 0)
        return;
    keys_req *r = req_new(p, &keys_upload_request, sizeof *r);
    if (!r)
        return;
    Parley__UploadKeys u;
    if (build_upload(&u, send_spk ? &spk : NULL, pks, n, &r->key_ids) != PARLEY_OK) {
        req_free(&r->base);
        return;
    }
    r->n_key_ids = n;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_UPLOAD_KEYS;
    f.upload_keys = &u;
    req_send(p, &r->base, &f);
    keys_upload_free(&u);
    return;
failed:
    if (rc != E2E_ERR_STORAGE) {
        snprintf(reason, sizeof reason, "cannot make this device's keys: %s", e2e_strerror(rc));
        emit_error(p, PARLEY_ERR_KEYS, reason);
        return;
    }
storage:
    emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
}

static void on_keys_reply(parley *p, request *req, const Parley__Frame *f)
{
    const keys_req *r = (const keys_req *)req;
    char reason[400];
    if (f->body_case == PARLEY__FRAME__BODY_KEYS_UPLOADED) {
        p->keys.pause.errors = 0;
        if (req->type == &keys_status_request)
            upload_what_is_missing(p, f->keys_uploaded);
        else if (db_prekeys_uploaded(p->db, r->key_ids, r->n_key_ids) != DB_OK)
            emit_error(p, PARLEY_ERR_STORAGE, db_errmsg(p->db));
        return;
    }
    /* passing (key uploads count against the send rate): ask again after a pause */
    if (pause_after_passing_error(f, &p->keys.pause)) {
        p->keys.wanted = true;
        return;
    }
    uint32_t code = f->error->code; /* not passing: an Error */
    p->keys.disabled = true; /* the same upload would be refused again on this connection */
    snprintf(reason, sizeof reason, "the server refused this device's keys (%s): %s",
             code == PERR_BAD_SIGNATURE      ? "bad signature"
             : code == PERR_INVALID_PREKEY   ? "invalid prekey"
             : code == PERR_TOO_MANY_PREKEYS ? "too many prekeys"
             : code == PERR_UNKNOWN_FRAME    ? "no keys directory"
                                                            : "error",
             f->body_case == PARLEY__FRAME__BODY_ERROR ? server_reason(f->error) : "unexpected answer");
    emit_error(p, PARLEY_ERR_KEYS, reason);
}

/* ---- the feature ------------------------------------------------------------------------- */

static void keys_ready(parley *p)
{
    p->keys.wanted = true; /* our key status, and a top-up if needed */
    p->keys.next_check = clock_mono_ms() + KEYS_CHECK_MS;
}

static void keys_down(parley *p)
{
    p->keys.disabled = false;
    p->keys.wanted = false;
}

static uint64_t keys_deadline(const parley *p)
{
    if (p->keys.disabled)
        return UINT64_MAX;
    uint64_t t = p->keys.next_check ? p->keys.next_check : UINT64_MAX;
    uint64_t pause = pause_deadline(&p->keys.pause);
    return pause < t ? pause : t;
}

static void keys_timers(parley *p, uint64_t now)
{
    if (p->ready && p->keys.next_check && now >= p->keys.next_check) {
        /* a connection that stays up for days still rotates its signed prekey */
        p->keys.next_check = now + KEYS_CHECK_MS;
        p->keys.wanted = true;
        keys_check(p);
    }
    if (pause_over(&p->keys.pause, now))
        keys_check(p);
}

const client_feature keys_feature = {
    .name = "keys",
    .ready = keys_ready,
    .down = keys_down,
    .pump = keys_check,
    .deadline = keys_deadline,
    .timers = keys_timers,
};

/* ---- identity keys and safety numbers ------------------------------------------------- */

int parley_identity_key(parley *p, uint8_t out[PARLEY_KEY_LEN])
{
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    if (!p->ident.exists)
        return set_err(p, PARLEY_ERR_NOT_REGISTERED, "this profile has no identity key yet: register first");
    return e2e_identity_public(p->db, out) == E2E_OK ? PARLEY_OK : db_err(p);
}

/* Checks phone and finds its account; PARLEY_ERR_UNKNOWN_KEY when it is not known. */
static int contact_for_safety(parley *p, const char *phone, db_contact *c)
{
    if (!parley_phone_valid(phone))
        return invalid_phone(p, phone);
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    if (!p->ident.registered)
        return set_err(p, PARLEY_ERR_NOT_REGISTERED, "this profile is not registered yet");
    if (strcmp(phone, p->ident.phone) == 0)
        return set_err(p, PARLEY_ERR_INVALID, "%s is this profile's own number", phone);
    int rc = db_contact_by_phone(p->db, phone, c);
    if (rc == DB_NOT_FOUND)
        return set_err(p, PARLEY_ERR_UNKNOWN_KEY, "the keys of %s are not known yet", phone);
    return rc == DB_OK ? PARLEY_OK : db_err(p);
}

int parley_safety_number(parley *p, const char *phone, parley_safety *out)
{
    memset(out, 0, sizeof *out);
    db_contact c;
    int rc = contact_for_safety(p, phone, &c);
    if (rc != PARLEY_OK)
        return rc;
    ps_bytes scannable;
    rc = e2e_safety_number(p->db, p->ident.phone, phone, c.account, out->digits, &scannable);
    if (rc == PS_ERR_NO_SESSION)
        return set_err(p, PARLEY_ERR_UNKNOWN_KEY, "the keys of %s are not known yet", phone);
    if (rc == E2E_ERR_STORAGE)
        return db_err(p);
    if (rc != PS_OK || scannable.len > sizeof out->scannable) {
        ps_bytes_free(&scannable);
        return set_err(p, PARLEY_ERR_NOMEM, "cannot compute the safety number: %s", e2e_strerror(rc));
    }
    memcpy(out->scannable, scannable.data, scannable.len);
    out->scannable_len = scannable.len;
    ps_bytes_free(&scannable);
    for (size_t g = 0, o = 0; g < PARLEY_SAFETY_DIGITS / 5; g++) {
        memcpy(out->grouped + o, out->digits + 5 * g, 5);
        o += 5;
        out->grouped[o++] = g + 1 < PARLEY_SAFETY_DIGITS / 5 ? ' ' : 0;
    }
    if (db_contact_verified(p->db, c.account, &out->verified) != DB_OK)
        return db_err(p);
    return PARLEY_OK;
}

int parley_fetch_identity(parley *p, const char *phone)
{
    db_contact c;
    int rc = contact_for_safety(p, phone, &c);
    if (rc != PARLEY_OK && rc != PARLEY_ERR_UNKNOWN_KEY)
        return rc;
    snprintf(p->out.want_identity, sizeof p->out.want_identity, "%s", phone);
    features_pump(p);
    return PARLEY_OK;
}

int parley_verify_safety(parley *p, const char *phone, const char *number, bool *match)
{
    *match = false;
    parley_safety s;
    int rc = parley_safety_number(p, phone, &s);
    if (rc != PARLEY_OK)
        return rc;
    /* the digits typed or read, spaces ignored; anything else makes it a mismatch */
    char given[PARLEY_SAFETY_DIGITS];
    size_t n = 0;
    bool well_formed = number != NULL;
    memset(given, 0, sizeof given);
    for (const char *c = number; c && *c; c++) {
        if (*c == ' ')
            continue;
        if (*c < '0' || *c > '9' || n == sizeof given)
            well_formed = false;
        else
            given[n++] = *c;
    }
    bool same = sodium_memcmp(given, s.digits, PARLEY_SAFETY_DIGITS) == 0;
    *match = same && well_formed && n == PARLEY_SAFETY_DIGITS;
    if (!*match)
        return PARLEY_OK;
    db_contact c;
    if (db_contact_by_phone(p->db, phone, &c) != DB_OK || db_contact_set_verified(p->db, c.account, true) != DB_OK)
        return db_err(p);
    return PARLEY_OK;
}
