/* keys.c - the keys directory (docs/protocol.md, "Keys"):
 *   UploadKeys: a device's signed prekey (XEdDSA-signed by its identity key, checked
 *         here) and one-time prekeys; an empty upload is the status query.
 *   FetchBundles: one bundle per device of an account. Each one-time prekey is handed
 *         out once: it is taken inside the writer's batch, and the bundle leaves only
 *         after that batch's commit, so neither a concurrent fetch nor a crash can hand
 *         it out again. A device whose stock is below KEYS_LOW finds a notice in its
 *         inbox (Envelope.prekeys_left), delivered like any message, once until it
 *         uploads again. */
#include "keys.h"

#include <stdlib.h>
#include <string.h>

#include "peer.h"
#include "primitives.h"
#include "targets.h"

#define MAX_DEVICES 64

/* ---- uploads ---------------------------------------------------------------------- */

static bool key_parse(uint8_t out[STORE_KEY_LEN], bool has, const ProtobufCBinaryData *in)
{
    return has && ps_pubkey_parse(out, in->data, in->len) == PS_OK;
}

uint32_t keys_upload_parse(struct keys_upload *out, const Parley__UploadKeys *m,
                           const uint8_t identity[STORE_KEY_LEN], const char **why)
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
    if (m->n_prekeys > KEYS_MAX_UPLOAD) {
        *why = "at most 100 one-time prekeys per upload";
        return PERR_TOO_MANY_PREKEYS;
    }
    for (size_t i = 0; i < m->n_prekeys; i++) {
        const Parley__PreKey *k = m->prekeys[i];
        store_prekey *o = &out->prekeys[i];
        if (!k->has_id || k->id == 0 || k->id > KEYS_MAX_ID ||
            !key_parse(o->key, k->has_public_key, &k->public_key)) {
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

int keys_upload_apply(store_batch *b, const store_device *d, const struct keys_upload *u,
                      uint64_t now, size_t *left)
{
    int rc = STORE_OK;
    if (u->has_signed) {
        store_signed_prekey sp = u->signed_prekey;
        sp.uploaded_ms = now;
        rc = store_signed_prekey_put(b, d, &sp);
    }
    if (rc == STORE_OK && u->n)
        rc = store_prekeys_add(b, d, u->prekeys, u->n);
    if (rc == STORE_OK)
        rc = store_prekeys_count(b, d, left);
    if (rc == STORE_OK && *left > KEYS_MAX_HELD)
        rc = JOB_TOO_MANY_PREKEYS; /* the batch is rolled back: nothing was added */
    return rc == STORE_EXISTS ? JOB_PREKEY_CONFLICT : rc;
}

void keys_job_error(ws_conn *c, uint64_t request_id, int status)
{
    if (status == JOB_TOO_MANY_PREKEYS)
        peer_error(c, request_id, PERR_TOO_MANY_PREKEYS,
                   "the device would hold more than 1000 one-time prekeys; nothing was stored");
    else if (status == JOB_PREKEY_CONFLICT)
        peer_error(c, request_id, PERR_INVALID_PREKEY,
                   "a one-time prekey id is already in use with another key; nothing was stored");
    else
        peer_job_error(c, request_id, status);
}

typedef struct {
    writer_job job;
    job_origin from;
    struct keys_upload upload;
    size_t left;
    bool has_signed;
    uint32_t signed_id;
} upload_job;

static int upload_apply(store_batch *b, writer_job *job)
{
    upload_job *j = (upload_job *)job;
    int rc = job_origin_current(b, &j->from);
    if (rc == STORE_OK)
        rc = keys_upload_apply(b, &j->from.device, &j->upload, clock_wall_ms(), &j->left);
    store_signed_prekey sp;
    int src = rc == STORE_OK ? store_signed_prekey_get(b, &j->from.device, &sp) : rc;
    if (src == STORE_OK) {
        j->has_signed = true;
        j->signed_id = sp.id;
    }
    return rc != STORE_OK ? rc : src == STORE_NOT_FOUND ? STORE_OK : src;
}

static void upload_done(writer_job *job, int status)
{
    upload_job *j = (upload_job *)job;
    if (peer_job_returned(j->from.p)) {
        if (status == STORE_OK) {
            Parley__KeysUploaded r = PARLEY__KEYS_UPLOADED__INIT;
            r.has_prekeys_left = 1;
            r.prekeys_left = (uint32_t)j->left;
            r.has_signed_prekey_id = j->has_signed;
            r.signed_prekey_id = j->signed_id;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_KEYS_UPLOADED;
            f.keys_uploaded = &r;
            peer_reply(j->from.p->conn, j->from.request_id, &f);
        } else {
            keys_job_error(j->from.p->conn, j->from.request_id, status);
        }
    }
    free(j);
}

void on_upload_keys(ws_conn *c, peer *p, uint64_t rid, const Parley__UploadKeys *m)
{
    server *srv = server_of(c);
    if (!peer_take_token(c, p, rid, &srv->send_limit, "requests")) /* before any work */
        return;
    store_device_record rec;
    int rc = store_device_get(srv->st, &p->device, &rec);
    if (rc == STORE_OK && memcmp(rec.identity_key, p->key_prefix, sizeof p->key_prefix) != 0)
        rc = STORE_NOT_FOUND; /* registered again since this connection proved its key */
    if (rc != STORE_OK) {
        peer_job_error(c, rid, rc == STORE_NOT_FOUND ? JOB_REPLACED : rc);
        return;
    }
    upload_job *j = malloc(sizeof *j);
    if (!j) {
        peer_error(c, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    memset(j, 0, sizeof *j);
    const char *why = NULL;
    uint32_t code = keys_upload_parse(&j->upload, m, rec.identity_key, &why);
    if (code) {
        free(j);
        peer_error(c, rid, code, why);
        return;
    }
    job_origin_init(&j->from, c, p, rid);
    j->job.apply = upload_apply;
    j->job.isolated = true; /* refuses after writing (too many prekeys, an id in use) */
    j->job.done = upload_done;
    peer_submit(p, &j->job);
}

/* ---- fetches ---------------------------------------------------------------------- */

typedef struct {
    store_device_record device;
    store_signed_prekey signed_prekey;
    bool has_prekey;
    store_prekey prekey;
} bundle;

typedef struct {
    writer_job job;
    job_origin from;
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    uint32_t wanted[MAX_DEVICES];          /* none: every device */
    size_t n_wanted;
    bundle bundles[MAX_DEVICES];
    size_t n;
    target_list notices;                    /* devices whose stock fell below KEYS_LOW */
} fetch_job;

static bool wanted(const fetch_job *j, uint32_t device)
{
    if (same_account(j->account, j->from.device.account) && device == j->from.device.device)
        return false; /* a device never needs its own bundle */
    for (size_t i = 0; i < j->n_wanted; i++)
        if (j->wanted[i] == device)
            return true;
    return j->n_wanted == 0;
}

static int fetch_apply(store_batch *b, writer_job *job)
{
    fetch_job *j = (fetch_job *)job;
    j->n = 0;
    j->notices.n = j->notices.used = 0;
    store_device_record recs[MAX_DEVICES];
    size_t n;
    int rc = job_origin_current(b, &j->from);
    if (rc == STORE_OK)
        rc = store_batch_account_device_records(b, j->account, recs, MAX_DEVICES, &n);
    if (rc != STORE_OK)
        return rc;
    if (n == 0)
        return JOB_UNKNOWN_ACCOUNT;
    uint64_t now = clock_wall_ms();
    for (size_t i = 0; i < n && rc == STORE_OK; i++) {
        if (!wanted(j, recs[i].device))
            continue;
        bundle *out = &j->bundles[j->n];
        store_device d = {.device = recs[i].device};
        memcpy(d.account, j->account, STORE_ACCOUNT_ID_LEN);
        rc = store_signed_prekey_get(b, &d, &out->signed_prekey);
        if (rc == STORE_NOT_FOUND) { /* registered without keys: nothing to offer */
            rc = STORE_OK;
            continue;
        }
        size_t left = 0;
        if (rc == STORE_OK)
            rc = store_prekey_take(b, &d, &out->prekey, &left);
        out->has_prekey = rc == STORE_OK;
        if (rc == STORE_NOT_FOUND)
            rc = STORE_OK;
        if (rc != STORE_OK)
            break;
        out->device = recs[i];
        j->n++;
        bool first = false;
        if (left < KEYS_LOW && (rc = store_prekeys_notice(b, &d, &first)) == STORE_OK && first) {
            Parley__Envelope e = PARLEY__ENVELOPE__INIT; /* once until the device uploads */
            e.has_server_time_ms = 1;
            e.server_time_ms = now;
            e.has_prekeys_left = 1;
            e.prekeys_left = (uint32_t)left;
            rc = targets_add(&j->notices, &d, &e);
        }
    }
    if (rc == STORE_OK && j->notices.n) { /* a full disk loses the notices, not the fetch */
        store_batch *nb;
        int nrc = store_batch_nest(b, &nb);
        if (nrc == STORE_OK && (nrc = targets_append(nb, &j->notices, now)) == STORE_OK)
            nrc = store_batch_commit(nb);
        else if (nrc != STORE_OK && nb)
            store_batch_abort(nb);
        if (nrc != STORE_OK)
            j->notices.n = j->notices.used = 0;
    }
    return rc;
}

static void fetch_done(writer_job *job, int status)
{
    fetch_job *j = (fetch_job *)job;
    if (status == STORE_OK)
        targets_wake(j->from.srv, &j->notices);
    if (peer_job_returned(j->from.p)) {
        ws_conn *c = j->from.p->conn;
        if (status == STORE_OK) {
            /* every key as it travels: 0x05 || u */
            uint8_t keys[MAX_DEVICES][3][PS_PUBKEY_LEN];
            Parley__Bundle bundles[MAX_DEVICES], *list[MAX_DEVICES];
            Parley__SignedPreKey signed_prekeys[MAX_DEVICES];
            Parley__PreKey prekeys[MAX_DEVICES];
            for (size_t i = 0; i < j->n; i++) {
                const bundle *in = &j->bundles[i];
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
            Parley__Bundles r = PARLEY__BUNDLES__INIT;
            r.has_account_id = 1;
            r.account_id = (ProtobufCBinaryData){STORE_ACCOUNT_ID_LEN, j->account};
            r.n_bundles = j->n;
            r.bundles = list;
            Parley__Frame f = PARLEY__FRAME__INIT;
            f.body_case = PARLEY__FRAME__BODY_BUNDLES;
            f.bundles = &r;
            peer_reply(c, j->from.request_id, &f);
        } else {
            peer_job_error(c, j->from.request_id, status);
        }
    }
    targets_free(&j->notices);
    free(j);
}

void on_fetch_bundles(ws_conn *c, peer *p, uint64_t rid, const Parley__FetchBundles *m)
{
    server *srv = server_of(c);
    bool ok = m->has_account_id && m->account_id.len == STORE_ACCOUNT_ID_LEN && m->n_device_ids <= MAX_DEVICES;
    for (size_t i = 0; ok && i < m->n_device_ids; i++)
        ok = m->device_ids[i] != 0;
    if (!ok) {
        peer_error(c, rid, PERR_MALFORMED_FRAME,
                   "FetchBundles needs account_id (16 bytes) and at most 64 device ids (not 0)");
        return;
    }
    if (!peer_take_token(c, p, rid, &srv->fetch_limit, "prekey fetches"))
        return;
    fetch_job *j = calloc(1, sizeof *j);
    if (!j) {
        peer_error(c, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    job_origin_init(&j->from, c, p, rid);
    memcpy(j->account, m->account_id.data, STORE_ACCOUNT_ID_LEN);
    for (size_t i = 0; i < m->n_device_ids; i++)
        j->wanted[i] = m->device_ids[i];
    j->n_wanted = m->n_device_ids;
    j->job.apply = fetch_apply;
    j->job.done = fetch_done;
    peer_submit(p, &j->job);
}
