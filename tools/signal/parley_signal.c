/* parley-signal - one Signal identity driven by JSON lines (the interop contract,
 * docs/crypto.md). One request per stdin line, exactly one answer line per
 * request on stdout, in order; logs on stderr; errors never end the process.
 *
 * State is in memory for the life of the process; `reload` pushes all of it
 * through the versioned serialization and back, as a client restart would. */
#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fingerprint.h"
#include "json_io.h"
#include "keys.h"
#include "primitives.h"
#include "sender_key.h"
#include "session.h"

#define TOOL_VERSION "0.1.0"

typedef struct {
    uint32_t id;
    ps_keypair pair;
} prekey;

typedef struct {
    char *name;
    uint32_t device_id;
    uint8_t identity[PS_KEY_LEN];   /* trusted identity key (first seen, then latest) */
    bool has_identity;
    ps_session_record rec;
} peer;

typedef struct {
    char *sender;
    uint32_t device_id;
    ps_sender_key_record rec;
} group_key;

typedef struct {
    bool generated;
    char *name;
    uint32_t device_id;
    ps_local_identity me;
    uint32_t spk_id;
    ps_keypair spk;
    uint8_t spk_sig[PS_SIG_LEN];
    prekey *prekeys;           /* unconsumed one-time prekeys, ascending id */
    size_t nprekeys;
    size_t prekeys_cap;
    peer *peers;
    size_t npeers;
    group_key *groups;         /* ours (sender == NULL) and other senders' */
    size_t ngroups;
} identity;

static identity self;

/* ---- lookups -------------------------------------------------------------------- */

/* Grows an array of records that hold keys: a new block, the old one wiped. */
static void *grow_wiped(void *old, size_t old_bytes, size_t new_bytes)
{
    uint8_t *grown = malloc(new_bytes);
    if (!grown)
        abort();
    if (old_bytes)
        memcpy(grown, old, old_bytes);
    if (old) {
        sodium_memzero(old, old_bytes);
        free(old);
    }
    return grown;
}

static peer *find_peer(const char *name, uint32_t device_id, bool create)
{
    for (size_t i = 0; i < self.npeers; i++)
        if (self.peers[i].device_id == device_id && strcmp(self.peers[i].name, name) == 0)
            return &self.peers[i];
    if (!create)
        return NULL;
    self.peers = grow_wiped(self.peers, self.npeers * sizeof(peer), (self.npeers + 1) * sizeof(peer));
    peer *p = &self.peers[self.npeers++];
    memset(p, 0, sizeof *p);
    p->name = strdup(name);
    p->device_id = device_id;
    return p;
}

/* sender NULL = our own sending key for that distribution. */
static group_key *find_group(const char *sender, uint32_t device_id, const uint8_t dist[16], bool create)
{
    for (size_t i = 0; i < self.ngroups; i++) {
        group_key *g = &self.groups[i];
        bool same_sender = (!sender && !g->sender) ||
                           (sender && g->sender && strcmp(sender, g->sender) == 0 && g->device_id == device_id);
        if (same_sender && g->rec.nstates && memcmp(g->rec.distribution_id, dist, 16) == 0)
            return g;
    }
    if (!create)
        return NULL;
    self.groups = grow_wiped(self.groups, self.ngroups * sizeof(group_key),
                             (self.ngroups + 1) * sizeof(group_key));
    group_key *g = &self.groups[self.ngroups++];
    memset(g, 0, sizeof *g);
    g->sender = sender ? strdup(sender) : NULL;
    g->device_id = device_id;
    memcpy(g->rec.distribution_id, dist, 16);
    return g;
}

static void identity_clear(void)
{
    for (size_t i = 0; i < self.npeers; i++) {
        free(self.peers[i].name);
        ps_session_record_clear(&self.peers[i].rec);
    }
    for (size_t i = 0; i < self.ngroups; i++) {
        free(self.groups[i].sender);
        ps_sender_key_record_clear(&self.groups[i].rec);
    }
    if (self.prekeys)
        sodium_memzero(self.prekeys, self.prekeys_cap * sizeof(prekey));
    if (self.groups)
        sodium_memzero(self.groups, self.ngroups * sizeof(group_key));
    free(self.prekeys);
    free(self.peers);
    free(self.groups);
    free(self.name);
    sodium_memzero(&self, sizeof self);
}

/* Trust on first use; a changed key is accepted (the peer re-installed) and logged.
 * The messaging client, not this tool, is where the user is told (issue: identity change). */
static void note_identity(peer *p, const uint8_t key[PS_KEY_LEN])
{
    if (p->has_identity && sodium_memcmp(p->identity, key, PS_KEY_LEN) != 0)
        fprintf(stderr, "parley-signal: identity key of %s.%u changed\n", p->name, p->device_id);
    memcpy(p->identity, key, PS_KEY_LEN);
    p->has_identity = true;
}

/* ---- UUID strings --------------------------------------------------------------- */

static bool uuid_parse(const char *s, uint8_t out[16])
{
    size_t n = 0;
    for (const char *c = s; *c; c++) {
        if (*c == '-')
            continue;
        if (n >= 32)
            return false;
        char hex[3] = {c[0], c[1] ? c[1] : 0, 0};
        if (!c[1])
            return false;
        char *end;
        unsigned long v = strtoul(hex, &end, 16);
        if (*end)
            return false;
        out[n / 2] = (uint8_t)v;
        n += 2;
        c++;
    }
    return n == 32 && strlen(s) == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-';
}

static void uuid_format(char out[37], const uint8_t u[16])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
             u[14], u[15]);
}

/* ---- commands ------------------------------------------------------------------- */

static void add_bundle(cJSON *ans, bool with_prekey)
{
    cJSON *b = cJSON_AddObjectToObject(ans, "bundle");
    cJSON_AddNumberToObject(b, "registration_id", self.me.registration_id);
    cJSON_AddNumberToObject(b, "device_id", self.device_id);
    json_add_pubkey(b, "identity_key", self.me.identity.pub);
    cJSON_AddNumberToObject(b, "signed_prekey_id", self.spk_id);
    json_add_pubkey(b, "signed_prekey", self.spk.pub);
    json_add_b64(b, "signed_prekey_signature", self.spk_sig, PS_SIG_LEN);
    if (with_prekey && self.nprekeys) {
        cJSON_AddNumberToObject(b, "prekey_id", self.prekeys[0].id);
        json_add_pubkey(b, "prekey", self.prekeys[0].pair.pub);
    } else {
        cJSON_AddNullToObject(b, "prekey_id");
        cJSON_AddNullToObject(b, "prekey");
    }
}

static bool need_identity(json_err *e)
{
    return self.generated || json_fail(e, "no identity: send 'generate' first");
}

static bool cmd_generate(const cJSON *req, cJSON *ans, json_err *e)
{
    const char *name = "parley";
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(req, "name");
    if (cJSON_IsString(n))
        name = n->valuestring;
    uint32_t device_id, reg_id, spk_id, pk_id, pk_count;
    if (!json_u32(req, "device_id", true, 1, &device_id, e) ||
        !json_u32(req, "registration_id", true, 1 + randombytes_uniform(0x3fff), &reg_id, e) ||
        !json_u32(req, "signed_prekey_id", true, 1, &spk_id, e) ||
        !json_u32(req, "prekey_id", true, 1, &pk_id, e) ||
        !json_u32(req, "prekey_count", true, 1, &pk_count, e))
        return false;
    if (pk_count > 10000)
        return json_fail(e, "prekey_count is at most 10000");
    if (pk_count && pk_id == 0)
        return json_fail(e, "one-time prekey ids start at 1 (0 means none to the references)");
    if ((uint64_t)pk_id + pk_count > 0xffffffffULL)
        return json_fail(e, "prekey ids overflow 32 bits");

    identity_clear();
    self.name = strdup(name);
    self.device_id = device_id;
    self.me.registration_id = reg_id;
    ps_keypair_generate(NULL, &self.me.identity);
    self.spk_id = spk_id;
    ps_keypair_generate(NULL, &self.spk);
    uint8_t spk33[PS_PUBKEY_LEN];
    ps_pubkey_serialize(spk33, self.spk.pub);
    if (ps_xeddsa_sign(self.spk_sig, self.me.identity.priv, spk33, sizeof spk33, NULL) != PS_OK)
        return json_fail(e, "signing the signed prekey failed");
    self.prekeys = calloc(pk_count ? pk_count : 1, sizeof(prekey));
    if (!self.prekeys)
        return json_fail(e, "out of memory");
    for (uint32_t i = 0; i < pk_count; i++) {
        self.prekeys[i].id = pk_id + i;
        ps_keypair_generate(NULL, &self.prekeys[i].pair);
    }
    self.nprekeys = pk_count;
    self.prekeys_cap = pk_count ? pk_count : 1;
    self.generated = true;
    cJSON_AddNumberToObject(ans, "registration_id", reg_id);
    add_bundle(ans, true);
    return true;
}

static bool cmd_bundle(const cJSON *req, cJSON *ans, json_err *e)
{
    if (!need_identity(e))
        return false;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(req, "prekey");
    add_bundle(ans, !cJSON_IsFalse(p));
    return true;
}

static bool parse_bundle(const cJSON *b, ps_bundle *out, json_err *e)
{
    memset(out, 0, sizeof *out);
    if (!cJSON_IsObject(b))
        return json_fail(e, "missing object field 'bundle'");
    if (!json_u32(b, "registration_id", false, 0, &out->registration_id, e) ||
        !json_u32(b, "device_id", true, 1, &out->device_id, e) ||
        !json_pubkey(b, "identity_key", out->identity_key, e) ||
        !json_u32(b, "signed_prekey_id", false, 0, &out->signed_prekey_id, e) ||
        !json_pubkey(b, "signed_prekey", out->signed_prekey, e) ||
        !json_b64_fixed(b, "signed_prekey_signature", out->signed_prekey_signature, PS_SIG_LEN, e))
        return false;
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(b, "prekey_id");
    if (pid && !cJSON_IsNull(pid)) {
        if (!json_u32(b, "prekey_id", false, 0, &out->prekey_id, e) ||
            !json_pubkey(b, "prekey", out->prekey, e))
            return false;
        if (out->prekey_id == 0)
            return json_fail(e, "prekey_id must be at least 1 (0 means none to the references)");
        out->has_prekey = true;
    }
    return true;
}

static bool peer_from_request(const cJSON *req, const char *field, peer **out, bool create, json_err *e)
{
    const char *name;
    uint32_t device_id;
    if (!json_str(req, field, &name, e) || !json_u32(req, "device_id", true, 1, &device_id, e))
        return false;
    *out = find_peer(name, device_id, create);
    return *out || json_fail(e, "no session with %s.%u", name, device_id);
}

static bool do_encrypt(peer *p, const cJSON *req, cJSON *ans, json_err *e)
{
    ps_bytes pt, body;
    int type = 0;
    if (!json_payload(req, "plaintext", "plaintext_b64", &pt, e))
        return false;
    int rc = ps_session_encrypt(&p->rec, pt.data, pt.len, &body, &type);
    ps_bytes_free(&pt);
    if (rc != PS_OK)
        return json_fail(e, "encrypt: %s", ps_strerror(rc));
    cJSON_AddStringToObject(ans, "type", type == PS_MSG_PREKEY ? "prekey" : "whisper");
    cJSON_AddNumberToObject(ans, "type_code", type);
    json_add_b64(ans, "body", body.data, body.len);
    ps_bytes_free(&body);
    return true;
}

static bool cmd_process_bundle(const cJSON *req, cJSON *ans, json_err *e)
{
    ps_bundle b;
    peer *p;
    if (!need_identity(e) || !parse_bundle(cJSON_GetObjectItemCaseSensitive(req, "bundle"), &b, e))
        return false;
    if (!peer_from_request(req, "peer", &p, true, e))
        return false;
    int rc = ps_session_initiate(&p->rec, &self.me, &b, NULL);
    if (rc == PS_ERR_BAD_SIGNATURE)
        return json_fail(e, "bad signature: the signed prekey's signature does not verify");
    if (rc != PS_OK)
        return json_fail(e, "process_bundle: %s", ps_strerror(rc));
    note_identity(p, b.identity_key);
    cJSON_AddBoolToObject(ans, "one_time_prekey_used", b.has_prekey);
    if (cJSON_GetObjectItemCaseSensitive(req, "plaintext") ||
        cJSON_GetObjectItemCaseSensitive(req, "plaintext_b64"))
        return do_encrypt(p, req, ans, e);
    return true;
}

static bool cmd_encrypt(const cJSON *req, cJSON *ans, json_err *e)
{
    peer *p;
    return need_identity(e) && peer_from_request(req, "peer", &p, false, e) && do_encrypt(p, req, ans, e);
}

/* "prekey"/3 or "whisper"/2/1 (1 is libsignal-node's old code for a SignalMessage). */
static bool message_type(const cJSON *req, int *type, json_err *e)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(req, "type");
    if (cJSON_IsString(t) && strcmp(t->valuestring, "prekey") == 0)
        *type = PS_MSG_PREKEY;
    else if (cJSON_IsString(t) && strcmp(t->valuestring, "whisper") == 0)
        *type = PS_MSG_WHISPER;
    else if (cJSON_IsNumber(t) && t->valuedouble == 3)
        *type = PS_MSG_PREKEY;
    else if (cJSON_IsNumber(t) && (t->valuedouble == 2 || t->valuedouble == 1))
        *type = PS_MSG_WHISPER;
    else
        return json_fail(e, "field 'type' must be prekey/3 or whisper/2/1");
    return true;
}

static int decrypt_prekey(peer *p, const ps_bytes *body, ps_bytes *pt, json_err *e)
{
    ps_prekey_message m;
    int rc = ps_prekey_message_parse(&m, body->data, body->len);
    if (rc != PS_OK)
        return rc;
    const ps_keypair *spk = m.signed_prekey_id == self.spk_id ? &self.spk : NULL;
    const ps_keypair *opk = NULL;
    size_t opk_index = 0;
    for (size_t i = 0; m.has_prekey_id && i < self.nprekeys; i++)
        if (self.prekeys[i].id == m.prekey_id)
            opk = &self.prekeys[i].pair, opk_index = i;
    bool used = false;
    rc = ps_session_decrypt_prekey(&p->rec, &self.me, &m, spk, opk, pt, NULL, &used);
    if (rc == PS_OK) {
        note_identity(p, p->rec.current->remote_identity); /* the session's, authenticated */
        if (used) { /* a one-time prekey opens exactly one session */
            sodium_memzero(&self.prekeys[opk_index], sizeof(prekey));
            memmove(&self.prekeys[opk_index], &self.prekeys[opk_index + 1],
                    (self.nprekeys - opk_index - 1) * sizeof(prekey));
            self.nprekeys--;
            sodium_memzero(&self.prekeys[self.nprekeys], sizeof(prekey)); /* the old last slot */
        }
    } else if (rc == PS_ERR_NO_PREKEY) {
        json_fail(e, "decrypt: unknown prekey (signed %u, one-time %u)", m.signed_prekey_id,
                  m.prekey_id);
    }
    ps_prekey_message_clear(&m);
    return rc;
}

static bool cmd_decrypt(const cJSON *req, cJSON *ans, json_err *e)
{
    peer *p;
    int type = 0;
    ps_bytes body, pt = {0};
    if (!need_identity(e) || !message_type(req, &type, e) || !json_b64(req, "body", &body, e))
        return false;
    if (!peer_from_request(req, "peer", &p, type == PS_MSG_PREKEY, e)) {
        ps_bytes_free(&body);
        return false;
    }
    e->msg[0] = 0;
    int rc = type == PS_MSG_PREKEY ? decrypt_prekey(p, &body, &pt, e)
                                   : ps_session_decrypt(&p->rec, body.data, body.len, &pt, NULL);
    ps_bytes_free(&body);
    if (rc != PS_OK)
        return e->msg[0] ? false : json_fail(e, "decrypt: %s", ps_strerror(rc));
    json_add_payload(ans, "plaintext", "plaintext_b64", pt.data, pt.len);
    ps_bytes_free(&pt);
    return true;
}

static bool cmd_xeddsa_sign(const cJSON *req, cJSON *ans, json_err *e)
{
    ps_bytes msg;
    uint8_t sig[PS_SIG_LEN];
    if (!need_identity(e) || !json_payload(req, "message", "message_b64", &msg, e))
        return false;
    int rc = ps_xeddsa_sign(sig, self.me.identity.priv, msg.data, msg.len, NULL);
    ps_bytes_free(&msg);
    if (rc != PS_OK)
        return json_fail(e, "sign: %s", ps_strerror(rc));
    json_add_pubkey(ans, "public_key", self.me.identity.pub);
    json_add_b64(ans, "signature", sig, sizeof sig);
    return true;
}

static bool cmd_xeddsa_verify(const cJSON *req, cJSON *ans, json_err *e)
{
    uint8_t pub[PS_KEY_LEN], sig[PS_SIG_LEN];
    ps_bytes msg;
    if (!json_pubkey(req, "public_key", pub, e) ||
        !json_b64_fixed(req, "signature", sig, sizeof sig, e) ||
        !json_payload(req, "message", "message_b64", &msg, e))
        return false;
    bool valid = ps_xeddsa_verify(pub, msg.data, msg.len, sig);
    ps_bytes_free(&msg);
    cJSON_AddBoolToObject(ans, "valid", valid);
    return true;
}

static void add_group_state(cJSON *ans, const ps_sender_key_record *rec, uint32_t chain_id,
                            uint32_t iteration)
{
    char uuid[37];
    uuid_format(uuid, rec->distribution_id);
    cJSON_AddStringToObject(ans, "distribution_id", uuid);
    cJSON_AddNumberToObject(ans, "chain_id", chain_id);
    cJSON_AddNumberToObject(ans, "iteration", iteration);
}

static bool cmd_group_create(const cJSON *req, cJSON *ans, json_err *e)
{
    uint8_t dist[16];
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(req, "distribution_id");
    if (!need_identity(e))
        return false;
    if (d && !cJSON_IsNull(d)) {
        if (!cJSON_IsString(d) || !uuid_parse(d->valuestring, dist))
            return json_fail(e, "field 'distribution_id' must be a UUID string");
    } else {
        randombytes_buf(dist, sizeof dist);
        dist[6] = (uint8_t)((dist[6] & 0x0f) | 0x40); /* version 4 */
        dist[8] = (uint8_t)((dist[8] & 0x3f) | 0x80);
    }
    group_key *g = find_group(NULL, 0, dist, false);
    if (!g)
        g = find_group(NULL, 0, dist, true);
    ps_bytes skdm;
    int rc = ps_sender_key_create(&g->rec, dist, NULL, &skdm);
    if (rc != PS_OK)
        return json_fail(e, "group_create: %s", ps_strerror(rc));
    add_group_state(ans, &g->rec, g->rec.states[0].chain_id, g->rec.states[0].iteration);
    json_add_b64(ans, "skdm", skdm.data, skdm.len);
    ps_bytes_free(&skdm);
    return true;
}

static bool cmd_group_process(const cJSON *req, cJSON *ans, json_err *e)
{
    const char *sender;
    uint32_t device_id;
    ps_bytes raw;
    ps_skdm m;
    if (!need_identity(e) || !json_str(req, "sender", &sender, e) ||
        !json_u32(req, "device_id", true, 1, &device_id, e) || !json_b64(req, "skdm", &raw, e))
        return false;
    int rc = ps_skdm_parse(&m, raw.data, raw.len);
    ps_bytes_free(&raw);
    if (rc != PS_OK)
        return json_fail(e, "group_process: %s", ps_strerror(rc));
    group_key *g = find_group(sender, device_id, m.distribution_id, false);
    if (!g)
        g = find_group(sender, device_id, m.distribution_id, true);
    rc = ps_sender_key_process(&g->rec, &m);
    sodium_memzero(&m, sizeof m);
    if (rc != PS_OK)
        return json_fail(e, "group_process: %s", ps_strerror(rc));
    add_group_state(ans, &g->rec, g->rec.states[0].chain_id, g->rec.states[0].iteration);
    return true;
}

static bool cmd_group_encrypt(const cJSON *req, cJSON *ans, json_err *e)
{
    const char *d;
    uint8_t dist[16];
    ps_bytes pt, body;
    if (!need_identity(e) || !json_str(req, "distribution_id", &d, e))
        return false;
    if (!uuid_parse(d, dist))
        return json_fail(e, "field 'distribution_id' must be a UUID string");
    group_key *g = find_group(NULL, 0, dist, false);
    if (!g)
        return json_fail(e, "no sender key for distribution %s: send 'group_create' first", d);
    if (!json_payload(req, "plaintext", "plaintext_b64", &pt, e))
        return false;
    int rc = ps_sender_key_encrypt(&g->rec, pt.data, pt.len, NULL, &body);
    ps_bytes_free(&pt);
    if (rc != PS_OK)
        return json_fail(e, "group_encrypt: %s", ps_strerror(rc));
    cJSON_AddStringToObject(ans, "type", "senderkey");
    cJSON_AddNumberToObject(ans, "type_code", PS_MSG_SENDERKEY);
    json_add_b64(ans, "body", body.data, body.len);
    ps_bytes_free(&body);
    return true;
}

static bool cmd_group_decrypt(const cJSON *req, cJSON *ans, json_err *e)
{
    const char *sender;
    uint32_t device_id;
    uint8_t dist[16];
    ps_bytes body, pt;
    if (!need_identity(e) || !json_str(req, "sender", &sender, e) ||
        !json_u32(req, "device_id", true, 1, &device_id, e) || !json_b64(req, "body", &body, e))
        return false;
    int rc = ps_sender_key_message_distribution(body.data, body.len, dist);
    group_key *g = rc == PS_OK ? find_group(sender, device_id, dist, false) : NULL;
    if (rc == PS_OK && !g)
        rc = PS_ERR_NO_SENDER_KEY;
    if (rc == PS_OK)
        rc = ps_sender_key_decrypt(&g->rec, body.data, body.len, &pt);
    ps_bytes_free(&body);
    if (rc != PS_OK)
        return json_fail(e, "group_decrypt: %s", ps_strerror(rc));
    json_add_payload(ans, "plaintext", "plaintext_b64", pt.data, pt.len);
    ps_bytes_free(&pt);
    return true;
}

/* Identifiers are `local_id`/`remote_id` (UTF-8, e.g. E.164 numbers, as Signal's version 1)
 * or `local_id_b64`/`remote_id_b64` (raw bytes, e.g. a 16-byte service id for version 2). */
static bool cmd_safety_number(const cJSON *req, cJSON *ans, json_err *e)
{
    ps_bytes local_id = {0}, remote_id = {0}, scannable;
    uint8_t remote_key[PS_KEY_LEN];
    uint32_t version, iterations;
    char digits[PS_SAFETY_DIGITS + 1];
    bool ok = false;
    if (!need_identity(e) || !json_pubkey(req, "remote_identity_key", remote_key, e) ||
        !json_u32(req, "version", true, 2, &version, e) ||
        !json_u32(req, "iterations", true, PS_FINGERPRINT_ITERATIONS, &iterations, e) ||
        !json_payload(req, "local_id", "local_id_b64", &local_id, e) ||
        !json_payload(req, "remote_id", "remote_id_b64", &remote_id, e))
        goto out;
    if (iterations == 0 || iterations > 1000000) {
        json_fail(e, "iterations must be in 1..1000000");
        goto out;
    }
    int rc = ps_safety_number(digits, &scannable, version, iterations, local_id.data, local_id.len,
                              self.me.identity.pub, remote_id.data, remote_id.len, remote_key);
    if (rc != PS_OK) {
        json_fail(e, "safety_number: %s", ps_strerror(rc));
        goto out;
    }
    cJSON_AddStringToObject(ans, "digits", digits);
    json_add_b64(ans, "scannable", scannable.data, scannable.len);
    ps_bytes_free(&scannable);
    ok = true;
out:
    ps_bytes_free(&local_id);
    ps_bytes_free(&remote_id);
    return ok;
}

/* Serializes every session and sender-key record and reads it back, replacing the
 * in-memory state: what a client restart does to its store. */
static bool cmd_reload(const cJSON *req, cJSON *ans, json_err *e)
{
    (void)req;
    size_t total = 0;
    for (size_t i = 0; i < self.npeers; i++) {
        ps_bytes b;
        ps_session_record back;
        if (ps_session_record_serialize(&self.peers[i].rec, &b) != PS_OK)
            return json_fail(e, "reload: serialize failed");
        int rc = ps_session_record_deserialize(&back, b.data, b.len);
        total += b.len;
        ps_bytes_free(&b);
        if (rc != PS_OK)
            return json_fail(e, "reload: %s", ps_strerror(rc));
        ps_session_record_clear(&self.peers[i].rec);
        self.peers[i].rec = back;
    }
    for (size_t i = 0; i < self.ngroups; i++) {
        ps_bytes b;
        ps_sender_key_record back;
        if (ps_sender_key_record_serialize(&self.groups[i].rec, &b) != PS_OK)
            return json_fail(e, "reload: serialize failed");
        int rc = ps_sender_key_record_deserialize(&back, b.data, b.len);
        total += b.len;
        ps_bytes_free(&b);
        if (rc != PS_OK)
            return json_fail(e, "reload: %s", ps_strerror(rc));
        ps_sender_key_record_clear(&self.groups[i].rec);
        self.groups[i].rec = back;
    }
    cJSON_AddNumberToObject(ans, "bytes", (double)total);
    return true;
}

static bool cmd_info(const cJSON *req, cJSON *ans, json_err *e)
{
    (void)req, (void)e;
    cJSON *v = cJSON_AddObjectToObject(ans, "versions");
    cJSON_AddStringToObject(v, "parley-signal", TOOL_VERSION);
    cJSON_AddNumberToObject(v, "protocol", 3);
    cJSON_AddStringToObject(v, "libsodium", sodium_version_string());
    cJSON_AddStringToObject(v, "openssl", OpenSSL_version(OPENSSL_VERSION));
    return true;
}

typedef bool (*handler)(const cJSON *req, cJSON *ans, json_err *e);

static const struct {
    const char *name;
    handler fn;
} commands[] = {
    {"info", cmd_info},
    {"generate", cmd_generate},
    {"bundle", cmd_bundle},
    {"process_bundle", cmd_process_bundle},
    {"encrypt", cmd_encrypt},
    {"decrypt", cmd_decrypt},
    {"xeddsa_sign", cmd_xeddsa_sign},
    {"xeddsa_verify", cmd_xeddsa_verify},
    {"group_create", cmd_group_create},
    {"group_process", cmd_group_process},
    {"group_encrypt", cmd_group_encrypt},
    {"group_decrypt", cmd_group_decrypt},
    {"safety_number", cmd_safety_number},
    {"reload", cmd_reload},
};

/* Handles one request line; returns false after `quit`. */
static bool handle_line(const char *line)
{
    cJSON *req = cJSON_Parse(line);
    cJSON *ans = cJSON_CreateObject();
    bool keep_going = true;
    json_err e = {{0}};
    bool ok = false;
    const cJSON *id = req ? cJSON_GetObjectItemCaseSensitive(req, "id") : NULL;
    const cJSON *cmd = req ? cJSON_GetObjectItemCaseSensitive(req, "cmd") : NULL;
    cJSON_AddItemToObject(ans, "id", id ? cJSON_Duplicate(id, true) : cJSON_CreateNull());
    cJSON_AddItemToObject(ans, "cmd", cJSON_IsString(cmd) ? cJSON_CreateString(cmd->valuestring)
                                                          : cJSON_CreateNull());
    cJSON *result = cJSON_CreateObject();
    if (!req || !cJSON_IsObject(req)) {
        json_fail(&e, "request is not a JSON object");
    } else if (json_has_nul_escape(line)) {
        json_fail(&e, "strings cannot carry NUL (\\u0000) here: send such bytes in a *_b64 field");
    } else if (!cJSON_IsString(cmd)) {
        json_fail(&e, "missing string field 'cmd'");
    } else if (strcmp(cmd->valuestring, "quit") == 0) {
        ok = true;
        keep_going = false;
    } else {
        size_t i;
        for (i = 0; i < sizeof commands / sizeof commands[0]; i++)
            if (strcmp(commands[i].name, cmd->valuestring) == 0)
                break;
        if (i == sizeof commands / sizeof commands[0])
            json_fail(&e, "unknown command '%s'", cmd->valuestring);
        else
            ok = commands[i].fn(req, result, &e);
    }
    cJSON_AddBoolToObject(ans, "ok", ok);
    if (ok) {
        cJSON *item = result->child;
        while (item) { /* move the result fields after id/cmd/ok */
            cJSON *next = item->next;
            cJSON_AddItemToObject(ans, item->string, cJSON_DetachItemViaPointer(result, item));
            item = next;
        }
    } else {
        cJSON_AddStringToObject(ans, "error", e.msg[0] ? e.msg : "failed");
        fprintf(stderr, "parley-signal: %s\n", e.msg);
    }
    char *out = cJSON_PrintUnformatted(ans);
    fputs(out, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    free(out);
    cJSON_Delete(result);
    cJSON_Delete(ans);
    cJSON_Delete(req);
    return keep_going;
}

int main(void)
{
    if (sodium_init() < 0) {
        fprintf(stderr, "parley-signal: libsodium failed to initialise\n");
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n == 0)
            continue;
        if (!handle_line(line))
            break;
    }
    free(line);
    identity_clear();
    return 0;
}
