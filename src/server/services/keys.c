/* keys.c - the keys directory (docs/protocol.md, "Keys"):
 *   UploadKeys: a device's signed prekey (XEdDSA-signed by its identity key, checked
 *         here) and one-time prekeys; an empty upload is the status query.
 *   FetchBundles: one bundle per device of an account. Each one-time prekey is handed
 *         out once: the store takes it in the fetch's commit, and the bundle leaves only
 *         after that commit, so neither a concurrent fetch nor a crash can hand it out
 *         again. A device whose stock is below KEYS_LOW finds a notice in its inbox
 *         (Envelope.prekeys_left), delivered like any message, once until it uploads. */
#include <stdlib.h>

#include "keys_rules.h"
#include "primitives.h"
#include "services.h"

/* ---- uploads ---------------------------------------------------------------------- */

static bool key_parse(uint8_t out[STORE_KEY_LEN], bool has, const ProtobufCBinaryData *in)
{
    return has && ps_pubkey_parse(out, in->data, in->len) == PS_OK;
}

uint32_t keys_parse(store_keys *out, const Parley__UploadKeys *m, const uint8_t identity[STORE_KEY_LEN],
                    const char **why)
{
    memset(out, 0, sizeof *out);
    const Parley__SignedPreKey *sp = m->signed_prekey;
    if (sp) {
        if (!sp->has_id || sp->id == 0 || sp->id > KEYS_MAX_ID ||
            !key_parse(out->signed_prekey.key, sp->has_public_key, &sp->public_key) ||
            !sp->has_signature || sp->signature.len != STORE_SIG_LEN) {
            *why = "a signed prekey needs an id (1 to 2^24-1), a 33-byte key (0x05 || u) and a 64-byte signature";
            return PERR_INVALID_PREKEY;
        }
        /* the signature covers the key as it travels: 0x05 || u */
        if (!ps_xeddsa_verify(identity, sp->public_key.data, sp->public_key.len, sp->signature.data)) {
            *why = "the signed prekey's signature does not verify with the device's identity key";
            return PERR_BAD_SIGNATURE;
        }
        out->has_signed = true;
        out->signed_prekey.id = sp->id;
        memcpy(out->signed_prekey.signature, sp->signature.data, STORE_SIG_LEN);
    }
    if (m->n_prekeys > STORE_MAX_UPLOAD) {
        *why = "at most 100 one-time prekeys per upload";
        return PERR_TOO_MANY_PREKEYS;
    }
    for (size_t i = 0; i < m->n_prekeys; i++) {
        const Parley__PreKey *k = m->prekeys[i];
        store_prekey *o = &out->prekeys[i];
        if (!k->has_id || k->id == 0 || k->id > KEYS_MAX_ID || !key_parse(o->key, k->has_public_key, &k->public_key)) {
            *why = "a one-time prekey needs an id (1 to 2^24-1) and a 33-byte key (0x05 || u)";
            return PERR_INVALID_PREKEY;
        }
        o->id = k->id;
        for (size_t e = 0; e < i; e++)
            if (out->prekeys[e].id == o->id) {
                *why = "two one-time prekeys with the same id";
                return PERR_INVALID_PREKEY;
            }
    }
    out->n = m->n_prekeys;
    return 0;
}

typedef struct {
    store_device_query q;         /* first: the identity key the signature is checked with */
    store_upload r;               /* then: the upload */
    session_ask ask;
    Parley__UploadKeys *m;        /* until the device's record is in */
} upload_request;

static void uploaded(store_req *req, int status)
{
    upload_request *j = (upload_request *)((char *)req - offsetof(upload_request, r));
    session *s = j->ask.s;
    if (session_returned(s)) {
        if (status == STORE_OK) {
            Parley__KeysUploaded r = PARLEY__KEYS_UPLOADED__INIT;
            r.has_prekeys_left = 1;
            r.prekeys_left = (uint32_t)j->r.left;
            r.has_signed_prekey_id = j->r.has_signed;
            r.signed_prekey_id = j->r.signed_id;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_KEYS_UPLOADED;
            f.keys_uploaded = &r;
            session_reply(s, j->ask.request_id, &f);
        } else {
            session_store_error(s, j->ask.request_id, status);
        }
    }
    free(j);
}

static void device_read(store_req *req, int status)
{
    upload_request *j = (upload_request *)req;
    session *s = j->ask.s;
    bool alive = session_returned(s);
    if (status == STORE_OK && memcmp(j->q.record.identity_key, j->r.from.key_prefix, sizeof j->r.from.key_prefix) != 0)
        status = STORE_REPLACED; /* registered again since this connection proved its key */
    else if (status == STORE_NOT_FOUND)
        status = STORE_REPLACED;
    const char *why = NULL;
    uint32_t code = 0;
    if (alive && status == STORE_OK && (code = keys_parse(&j->r.keys, j->m, j->q.record.identity_key, &why)) != 0)
        session_error(s, j->ask.request_id, code, why);
    else if (alive && status != STORE_OK)
        session_store_error(s, j->ask.request_id, status);
    parley__upload_keys__free_unpacked(j->m, NULL);
    j->m = NULL;
    if (!alive || status != STORE_OK || code) {
        free(j);
        return;
    }
    j->r.req.done = uploaded;
    j->r.max_held = KEYS_MAX_HELD;
    j->r.now = clock_wall_ms();
    session_hold(s);
    store_upload_keys(session_server(s)->st, session_thread(s)->home, &j->r);
}

static void on_upload_keys(session *s, uint64_t rid, const Parley__Frame *f)
{
    upload_request *j = calloc(1, sizeof *j);
    /* the frame is freed after this call, and the store may answer later: a copy */
    uint8_t buf[8192], *packed = NULL;
    size_t len = parley__upload_keys__get_packed_size(f->upload_keys);
    uint8_t *p = len <= sizeof buf ? buf : (packed = malloc(len));
    Parley__UploadKeys *m = NULL;
    if (j && p) {
        parley__upload_keys__pack(f->upload_keys, p);
        m = parley__upload_keys__unpack(NULL, len, p);
    }
    free(packed);
    if (!m) {
        free(j);
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    j->m = m;
    session_origin(s, &j->r.from);
    j->q.req.done = device_read;
    j->q.device = s->device;
    session_ask_begin(&j->ask, s, rid);
    store_get_device(session_server(s)->st, session_thread(s)->home, &j->q);
}

/* ---- fetches ---------------------------------------------------------------------- */

typedef struct {
    store_fetch r;
    session_ask ask;
} fetch_request;

static void send_bundles(session *s, uint64_t rid, const store_fetch *r)
{
    /* every key as it travels: 0x05 || u */
    uint8_t keys[STORE_MAX_DEVICES][3][PS_PUBKEY_LEN];
    Parley__Bundle bundles[STORE_MAX_DEVICES], *list[STORE_MAX_DEVICES];
    Parley__SignedPreKey signed_prekeys[STORE_MAX_DEVICES];
    Parley__PreKey prekeys[STORE_MAX_DEVICES];
    for (size_t i = 0; i < r->n; i++) {
        const store_bundle *in = &r->bundles[i];
        Parley__Bundle *o = list[i] = &bundles[i];
        parley__bundle__init(o);
        o->has_device_id = o->has_registration_id = o->has_identity_key = 1;
        o->device_id = in->device.device;
        o->registration_id = in->device.registration_id;
        ps_pubkey_serialize(keys[i][0], in->device.identity_key);
        o->identity_key = (ProtobufCBinaryData){PS_PUBKEY_LEN, keys[i][0]};
        Parley__SignedPreKey *sp = o->signed_prekey = &signed_prekeys[i];
        parley__signed_pre_key__init(sp);
        sp->has_id = sp->has_public_key = sp->has_signature = 1;
        sp->id = in->signed_prekey.id;
        ps_pubkey_serialize(keys[i][1], in->signed_prekey.key);
        sp->public_key = (ProtobufCBinaryData){PS_PUBKEY_LEN, keys[i][1]};
        sp->signature = (ProtobufCBinaryData){STORE_SIG_LEN, (uint8_t *)in->signed_prekey.signature};
        if (in->has_prekey) {
            Parley__PreKey *pk = o->prekey = &prekeys[i];
            parley__pre_key__init(pk);
            pk->has_id = pk->has_public_key = 1;
            pk->id = in->prekey.id;
            ps_pubkey_serialize(keys[i][2], in->prekey.key);
            pk->public_key = (ProtobufCBinaryData){PS_PUBKEY_LEN, keys[i][2]};
        }
    }
    Parley__Bundles b = PARLEY__BUNDLES__INIT;
    b.has_account_id = 1;
    b.account_id = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, (uint8_t *)r->account};
    b.n_bundles = r->n;
    b.bundles = list;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_BUNDLES;
    f.bundles = &b;
    session_reply(s, rid, &f);
}

static void fetched(store_req *req, int status)
{
    fetch_request *j = (fetch_request *)req;
    session *s = j->ask.s;
    if (status == STORE_OK)
        session_wake(j->ask.srv, &j->r.notices);
    if (session_returned(s)) {
        if (status == STORE_OK)
            send_bundles(s, j->ask.request_id, &j->r);
        else
            session_store_error(s, j->ask.request_id, status);
    }
    store_entries_free(&j->r.notices);
    free(j);
}

static void on_fetch_bundles(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__FetchBundles *m = f->fetch_bundles;
    bool ok = m->has_account_id && m->account_id.len == STORE_ACCOUNT_ID_LEN && m->n_device_ids <= STORE_MAX_DEVICES;
    for (size_t i = 0; ok && i < m->n_device_ids; i++)
        ok = m->device_ids[i] != 0;
    if (!ok) {
        session_error(s, rid, PERR_MALFORMED_FRAME,
                      "FetchBundles needs account_id (16 bytes) and at most 64 device ids (not 0)");
        return;
    }
    fetch_request *j = calloc(1, sizeof *j);
    if (!j) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    j->r.req.done = fetched;
    session_origin(s, &j->r.from);
    memcpy(j->r.account, m->account_id.data, STORE_ACCOUNT_ID_LEN);
    for (size_t i = 0; i < m->n_device_ids; i++)
        j->r.wanted[i] = m->device_ids[i];
    j->r.n_wanted = m->n_device_ids;
    j->r.low = KEYS_LOW;
    j->r.now = clock_wall_ms();
    /* past the target's rate the bundles come without a one-time prekey: the sender can
     * still start a session (X3DH without one), and nobody can drain the target's */
    for (size_t i = 0; i < (m->n_device_ids ? m->n_device_ids : 1) && !j->r.no_prekey; i++) /* a token a device */
        j->r.no_prekey = !rate_table_take(&session_server(s)->rates[RATE_FETCH_TARGET], j->r.account,
                                          sizeof j->r.account, j->r.now, NULL);
    session_ask_begin(&j->ask, s, rid);
    store_fetch_bundles(session_server(s)->st, session_thread(s)->home, &j->r);
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_UPLOAD_KEYS, true, RATE_SENDS, on_upload_keys},
    {PARLEY__FRAME__BODY_FETCH_BUNDLES, true, RATE_FETCHES, on_fetch_bundles},
    {0},
};

const service keys_service = {.name = "keys", .routes = routes};
