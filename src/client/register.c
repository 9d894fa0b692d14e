/* register.c - registration (include/parley.h): a code by SMS for a number, then the
 * code with the device's identity and first keys. Each step is one short connection
 * of its own (client_oneshot), before the profile has an account to authenticate. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "primitives.h"

int parley_request_code(parley *p, const char *server_url, const char *phone, int timeout_ms)
{
    char host[WSC_HOST_MAX + 1], port[8], path[WSC_PATH_MAX + 1], err[300];
    if (!server_url || wsc_parse_url(server_url, host, port, path, err, sizeof err) != 0)
        return set_err(p, PARLEY_ERR_INVALID, "%s", server_url ? err : "no server address given");
    if (strlen(server_url) > PARLEY_URL_MAX)
        return set_err(p, PARLEY_ERR_INVALID, "the server address is too long");
    if (!parley_phone_valid(phone))
        return invalid_phone(p, phone);
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    if (p->ident.registered)
        return set_err(p, PARLEY_ERR_ALREADY_REGISTERED,
                       "this profile is already registered as %s; use another profile directory for another number",
                       p->ident.phone);
    if (!p->ident.exists) { /* the device's identity key: made once, kept for good */
        ps_keypair kp;
        ps_keypair_generate(NULL, &kp);
        uint32_t regid = 1 + randombytes_uniform(16380);
        int rc = db_identity_create(p->db, kp.priv, regid);
        ps_keypair_clear(&kp);
        if (rc != DB_OK || db_identity_get(p->db, &p->ident) != DB_OK)
            return db_err(p);
    }
    Parley__RequestCode rq = PARLEY__REQUEST_CODE__INIT;
    rq.phone = (char *)phone;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_REQUEST_CODE;
    f.request_code = &rq;
    Parley__Frame *reply;
    int rc = client_oneshot(p, server_url, &f, &reply, timeout_ms);
    if (rc != PARLEY_OK)
        return rc;
    if (reply->body_case == PARLEY__FRAME__BODY_CODE_REQUESTED) {
        rc = db_identity_set_pending(p->db, server_url, phone) == DB_OK ? PARLEY_OK : db_err(p);
    } else if (reply->body_case == PARLEY__FRAME__BODY_ERROR) {
        rc = set_err(p, PARLEY_ERR_REFUSED, "the server refused to send a code: %s", server_reason(reply->error));
    } else {
        rc = set_err(p, PARLEY_ERR_REFUSED, "unexpected answer from the server");
    }
    parley__frame__free_unpacked(reply, NULL);
    db_identity_get(p->db, &p->ident);
    return rc;
}

int parley_verify(parley *p, const char *code, int timeout_ms)
{
    if (db_identity_get(p->db, &p->ident) != DB_OK)
        return db_err(p);
    if (p->ident.registered)
        return set_err(p, PARLEY_ERR_ALREADY_REGISTERED, "this profile is already registered as %s", p->ident.phone);
    if (!p->ident.exists || !p->ident.pending_phone[0])
        return set_err(p, PARLEY_ERR_NOT_REGISTERED, "no code was requested for this profile: register first");
    size_t n = code ? strlen(code) : 0;
    bool digits = n == 6;
    for (size_t i = 0; digits && i < n; i++)
        digits = code[i] >= '0' && code[i] <= '9';
    if (!digits)
        return set_err(p, PARLEY_ERR_INVALID, "the code is the 6 digits from the SMS");
    uint8_t pub[PS_PUBKEY_LEN];
    if (e2e_identity_public(p->db, pub) != E2E_OK)
        return db_err(p);
    /* the first keys, stored before they go out (a second try sends the same ones) */
    Parley__UploadKeys keys = PARLEY__UPLOAD_KEYS__INIT;
    uint32_t *key_ids = NULL;
    size_t n_key_ids = 0;
    int krc = keys_for_registration(p, &keys, &key_ids, &n_key_ids);
    if (krc != PARLEY_OK)
        return krc;
    char phone[PARLEY_PHONE_MAX + 1];
    snprintf(phone, sizeof phone, "%s", p->ident.pending_phone);
    Parley__Register rg = PARLEY__REGISTER__INIT;
    rg.phone = phone;
    rg.code = (char *)code;
    rg.has_identity_key = 1;
    rg.identity_key = (ProtobufCBinaryData){sizeof pub, pub};
    rg.has_registration_id = 1;
    rg.registration_id = p->ident.registration_id;
    rg.keys = &keys;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_REGISTER;
    f.register_ = &rg;
    Parley__Frame *reply;
    int rc = client_oneshot(p, p->ident.server_url, &f, &reply, timeout_ms);
    keys_upload_free(&keys);
    if (rc != PARLEY_OK) {
        free(key_ids);
        return rc;
    }
    if (reply->body_case == PARLEY__FRAME__BODY_REGISTERED && reply->registered->has_account_id &&
        reply->registered->account_id.len == PARLEY_ID_LEN) {
        uint32_t device = reply->registered->has_device_id ? reply->registered->device_id : 1;
        rc = db_begin(p->db) == DB_OK &&
                     db_identity_set_registered(p->db, phone, reply->registered->account_id.data, device) == DB_OK &&
                     db_prekeys_uploaded(p->db, key_ids, n_key_ids) == DB_OK && db_commit(p->db) == DB_OK
                 ? PARLEY_OK
                 : (db_rollback(p->db), db_err(p));
    } else if (reply->body_case == PARLEY__FRAME__BODY_ERROR) {
        const Parley__Error *e = reply->error;
        const char *what = e->code == PERR_WRONG_CODE          ? "wrong code"
                           : e->code == PERR_CODE_EXPIRED      ? "the code expired; run register again for a new one"
                           : e->code == PERR_TOO_MANY_ATTEMPTS ? "too many wrong codes; run register again for a new one"
                                                                              : server_reason(e);
        rc = set_err(p, PARLEY_ERR_REFUSED, "the server did not accept the code: %s", what);
    } else {
        rc = set_err(p, PARLEY_ERR_REFUSED, "unexpected answer from the server");
    }
    free(key_ids);
    parley__frame__free_unpacked(reply, NULL);
    db_identity_get(p->db, &p->ident);
    return rc;
}
