/* test_crypto_kat.c - known-answer tests from SIGNAL-NOTES.md section 3, and the
 * seeded libsignal@6.0.0 transcript replayed byte for byte. */
#include <cjson/cJSON.h>

#include "check.h"
#include "fingerprint.h"
#include "primitives.h"
#include "session.h"

static void test_x25519(void)
{
    uint8_t priv[32], pub[32], want[32], got[32];
    hex_to_bin(priv, 32, "c806439dc9d2c476ffed8f2580c0888d58ab406bf7ae3698879021b96bb4bf59");
    hex_to_bin(pub, 32, "653614993d2b15ee9e5fd3d86ce719ef4ec1daae1886a87b3f5fa9565a27a22f");
    hex_to_bin(want, 32, "325f239328941ced6e673b86ba41017448e99b649a9c3806c1dd7ca4c477e629");
    CHECK_RC(ps_dh(got, priv, pub), PS_OK);
    CHECK_MEM(got, want, 32);
}

static void test_xeddsa(void)
{
    uint8_t priv[32], u[32], msg[33], sig[64];
    ps_keypair kp;
    hex_to_bin(priv, 32, "c097248412e58bf05df487968205132794178e367637f5818f81e0e6ce73e865");
    hex_to_bin(u, 32, "ab7e717d4a163b7d9a1d8071dfe9dcf8cdcd1cea3339b6356be84d887e322c64");
    hex_to_bin(msg, 33, "05edce9d9c415ca78cb7252e72c2c4a554d3eb29485a0e1d503118d1a82d99fb4a");
    hex_to_bin(sig, 64, "5de88ca9a89b4a115da79109c67c9c7464a3e4180274f1cb8c63c2984e286dfb"
                        "ede82deb9dcd9fae0bfbb821569b3d9001bd8130cd11d486cef047bd60b86e88");
    ps_keypair_from_private(&kp, priv);
    CHECK_MEM(kp.pub, u, 32);
    CHECK(sig[63] & 0x80); /* this vector has the sign bit set */
    CHECK(ps_xeddsa_verify(u, msg, sizeof msg, sig));

    int flips_rejected = 0;
    for (int bit = 0; bit < 512; bit++) {
        sig[bit / 8] ^= (uint8_t)(1 << (bit % 8));
        flips_rejected += !ps_xeddsa_verify(u, msg, sizeof msg, sig);
        sig[bit / 8] ^= (uint8_t)(1 << (bit % 8));
    }
    CHECK(flips_rejected == 512);
    for (int bit = 0; bit < 33 * 8; bit++) {
        msg[bit / 8] ^= (uint8_t)(1 << (bit % 8));
        flips_rejected += !ps_xeddsa_verify(u, msg, sizeof msg, sig);
        msg[bit / 8] ^= (uint8_t)(1 << (bit % 8));
    }
    CHECK(flips_rejected == 512 + 33 * 8);

    /* Our own signatures verify, for both signs of the Edwards key. */
    int sign_set = 0, ok = 0;
    for (int i = 0; i < 64; i++) {
        ps_keypair k;
        uint8_t s[64], m[40];
        ps_keypair_generate(NULL, &k);
        randombytes_buf(m, sizeof m);
        if (ps_xeddsa_sign(s, k.priv, m, sizeof m, NULL) != PS_OK)
            continue;
        sign_set += (s[63] & 0x80) != 0;
        ok += ps_xeddsa_verify(k.pub, m, sizeof m, s);
        m[0] ^= 1;
        ok -= ps_xeddsa_verify(k.pub, m, sizeof m, s);
    }
    CHECK(ok == 64);
    CHECK(sign_set > 0 && sign_set < 64);
}

static void test_hkdf(void)
{
    /* RFC 5869 A.1 and A.2 */
    uint8_t ikm[80], salt[80], info[80], okm[82], want[82];
    char info_str[81];
    size_t ikm_len = hex_to_bin(ikm, sizeof ikm, "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
    size_t salt_len = hex_to_bin(salt, sizeof salt, "000102030405060708090a0b0c");
    size_t info_len = hex_to_bin(info, sizeof info, "f0f1f2f3f4f5f6f7f8f9");
    memcpy(info_str, info, info_len);
    info_str[info_len] = 0;
    hex_to_bin(want, 42, "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865");
    CHECK_RC(ps_hkdf(okm, 42, salt, salt_len, ikm, ikm_len, info_str), PS_OK);
    CHECK_MEM(okm, want, 42);

    for (int i = 0; i < 80; i++) {
        ikm[i] = (uint8_t)i;
        salt[i] = (uint8_t)(0x60 + i);
        info_str[i] = (char)(0xb0 + i);
    }
    info_str[80] = 0;
    hex_to_bin(want, 82, "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
                         "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
                         "cc30c58179ec3e87c14c01d5c1f3434f1d87");
    CHECK_RC(ps_hkdf(okm, 82, salt, 80, ikm, 80, info_str), PS_OK);
    CHECK_MEM(okm, want, 82);
}

/* RFC 4231 case 2, and the long-input path (OpenSSL) agreeing with libsodium's. */
static void test_hmac(void)
{
    uint8_t out[32], want[32];
    const uint8_t *parts[] = {(const uint8_t *)"what do ya want ", (const uint8_t *)"for nothing?"};
    const size_t lens[] = {16, 12};
    ps_hmac_sha256(out, (const uint8_t *)"Jefe", 4, parts, lens, 2);
    hex_to_bin(want, 32, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    CHECK_MEM(out, want, 32);

    static uint8_t big[10000];
    uint8_t key[32];
    randombytes_buf(big, sizeof big);
    randombytes_buf(key, sizeof key);
    const uint8_t *bparts[] = {big, big + 33, big + 66};
    const size_t blens[] = {33, 33, sizeof big - 66};
    ps_hmac_sha256(out, key, sizeof key, bparts, blens, 3);
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, sizeof key);
    crypto_auth_hmacsha256_update(&st, big, sizeof big);
    crypto_auth_hmacsha256_final(&st, want);
    CHECK_MEM(out, want, 32);
}

static void test_aes_cbc(void)
{
    uint8_t key[32], iv[16], pt[10], want[16];
    ps_bytes ct, back;
    hex_to_bin(key, 32, "4e22eb16d964779994222e82192ce9f747da72dc4abe49dfdeeb71d0ffe3796e");
    hex_to_bin(iv, 16, "6f8a557ddc0a140c878063a6d5f31d3d");
    hex_to_bin(pt, 10, "30736294a124482a4159");
    hex_to_bin(want, 16, "dd3f573ab4508b9ed0e45e0baf5608f3");
    CHECK_RC(ps_aes_cbc_encrypt(&ct, key, iv, pt, sizeof pt), PS_OK);
    CHECK(ct.len == 16);
    CHECK_MEM(ct.data, want, 16);
    CHECK_RC(ps_aes_cbc_decrypt(&back, key, iv, ct.data, ct.len), PS_OK);
    CHECK(back.len == 10 && memcmp(back.data, pt, 10) == 0);
    ps_bytes_free(&back);
    ct.data[15] ^= 1; /* breaks the padding */
    CHECK(ps_aes_cbc_decrypt(&back, key, iv, ct.data, ct.len) != PS_OK || back.len != 10 ||
          memcmp(back.data, pt, 10) != 0);
    ps_bytes_free(&back);
    ps_bytes_free(&ct);
}

static void test_x3dh_chain_key(void)
{
    uint8_t ikb[32], spkb[32], eka[32], ika[32], root[32], chain[32], want[32], want_root[32];
    ps_keypair ikb_kp, spkb_kp, eka_kp, ika_kp;
    hex_to_bin(ikb, 32, "4875cc69ddf8ea0719ec947d61081135868d5fd801f02c0225e516df2156605e");
    hex_to_bin(spkb, 32, "583900131fb727998b7803fe6ac22cc591f342e4e42a8c8d5d78194209b8d253");
    hex_to_bin(eka, 32, "10ae7c64d1e61cd596b76a0db5012673391cae66edbfcf073b4da80516a47449");
    hex_to_bin(ika, 32, "9040f0d4e09cf38f6dc7c13779c908c015a1da4fa78737a080eb0a6f4f5f8f58");
    ps_keypair_from_private(&ikb_kp, ikb);
    ps_keypair_from_private(&spkb_kp, spkb);
    ps_keypair_from_private(&eka_kp, eka);
    ps_keypair_from_private(&ika_kp, ika);
    uint8_t want_pub[32];
    hex_to_bin(want_pub, 32, "f1f43874f6966956c2dd473f8fa15adeb71d1cb991b2341692324cefb1c5e626");
    CHECK_MEM(ikb_kp.pub, want_pub, 32);
    hex_to_bin(want_pub, 32, "b4a8455660ada65b401007f615e654041746432e3339c6875149bceefcb42b4a");
    CHECK_MEM(ika_kp.pub, want_pub, 32);
    hex_to_bin(want, 32, "ab9be50e5cb22a925446ab90ee5670545f4fd32902459ec274b6ad0ae5d6031a");
    hex_to_bin(want_root, 32, "cdbd35392e300db7b28f9e8501eb21b224cd8ca0a009c8339fbe89614035bcb2");
    CHECK_RC(ps_x3dh_initiator(root, chain, ika_kp.priv, eka_kp.priv, ikb_kp.pub, spkb_kp.pub, NULL),
             PS_OK);
    CHECK_MEM(chain, want, 32);
    CHECK_MEM(root, want_root, 32);
    CHECK_RC(ps_x3dh_responder(root, chain, ikb_kp.priv, spkb_kp.priv, NULL, ika_kp.pub, eka_kp.pub),
             PS_OK);
    CHECK_MEM(chain, want, 32);

    /* The older Java/C vector: Bob's side with Alice's old base public key. */
    uint8_t old_base[33];
    hex_to_bin(old_base, 33, "05472d1fb1a9862c3af6beaca8920277e2b26f4a79213ec7c906aeb35e03cf8950");
    hex_to_bin(want, 32, "9797caca53c989bbe229a40ca7727010eb2604fc14945d77958a0aeda088b44d");
    CHECK_RC(ps_x3dh_responder(root, chain, ikb_kp.priv, spkb_kp.priv, NULL, ika_kp.pub, old_base + 1),
             PS_OK);
    CHECK_MEM(chain, want, 32);
}

static void test_chain_keys(void)
{
    uint8_t ck[32], seed[32], next[32], want[32], iv[16];
    ps_message_keys k;
    hex_to_bin(ck, 32, "8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f");
    ps_chain_step(ck, seed, next);
    CHECK_RC(ps_message_keys_derive(&k, seed), PS_OK);
    hex_to_bin(want, 32, "bf51e9d75e0e31031051f82a2491ffc084fa298b7793bd9db620056febf45217");
    CHECK_MEM(k.cipher_key, want, 32);
    hex_to_bin(want, 32, "c6c77d6a73a354337a56435e34607dfe48e3ace14e77314dc6abc172e7a7030b");
    CHECK_MEM(k.mac_key, want, 32);
    hex_to_bin(iv, 16, "afa8207986b692a116d4b40bbff72d6c");
    CHECK_MEM(k.iv, iv, 16);
    hex_to_bin(want, 32, "28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d");
    CHECK_MEM(next, want, 32);
}

/* ---- the seeded transcript ---------------------------------------------------- */

/* Hands out the reference's key pairs (private keys) in generation order. */
typedef struct {
    uint8_t keys[16][32];
    int n, next;
} key_queue;

static void queue_fill(void *ctx, uint8_t *buf, size_t len)
{
    key_queue *q = ctx;
    if (len != 32 || q->next >= q->n) {
        fprintf(stderr, "transcript: unexpected randomness request (%zu bytes)\n", len);
        exit(2);
    }
    memcpy(buf, q->keys[q->next++], 32);
}

typedef struct {
    ps_local_identity me;
    ps_keypair spk, opk;
    uint32_t spk_id, opk_id;
    bool has_opk;
    ps_session_record rec;
    key_queue q;
    ps_rng rng;
} party;

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void load_party(party *p, const cJSON *j)
{
    memset(p, 0, sizeof *p);
    const cJSON *log = cJSON_GetObjectItemCaseSensitive(j, "keygen_log");
    const cJSON *e;
    cJSON_ArrayForEach(e, log) b64_to_bin(p->q.keys[p->q.n++], 32, jstr(e, "priv"));
    ps_keypair_from_private(&p->me.identity, p->q.keys[0]);
    p->me.registration_id =
        (uint32_t)cJSON_GetObjectItemCaseSensitive(j, "registration_id")->valuedouble;
    ps_keypair_from_private(&p->spk, p->q.keys[1]);
    p->q.next = 2;
    const cJSON *bundle = cJSON_GetObjectItemCaseSensitive(j, "bundle");
    p->spk_id = (uint32_t)cJSON_GetObjectItemCaseSensitive(bundle, "signed_prekey_id")->valuedouble;
    const cJSON *pk = cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "secrets"), "prekeys"), 0);
    if (pk) {
        uint8_t priv[32];
        b64_to_bin(priv, 32, jstr(pk, "private"));
        ps_keypair_from_private(&p->opk, priv);
        p->opk_id = (uint32_t)cJSON_GetObjectItemCaseSensitive(pk, "id")->valuedouble;
        p->has_opk = true;
        p->q.next = 3;
    }
    p->rng.fill = queue_fill;
    p->rng.ctx = &p->q;

    /* every public key in the log matches its private key once clamped */
    int i = 0;
    cJSON_ArrayForEach(e, log) {
        uint8_t pub[33];
        ps_keypair kp;
        b64_to_bin(pub, 33, jstr(e, "pub"));
        ps_keypair_from_private(&kp, p->q.keys[i++]);
        CHECK(pub[0] == 5 && memcmp(pub + 1, kp.pub, 32) == 0);
    }
}

static void bundle_from_json(ps_bundle *b, const cJSON *j)
{
    uint8_t k33[33];
    memset(b, 0, sizeof *b);
    b->registration_id = (uint32_t)cJSON_GetObjectItemCaseSensitive(j, "registration_id")->valuedouble;
    b->device_id = (uint32_t)cJSON_GetObjectItemCaseSensitive(j, "device_id")->valuedouble;
    b64_to_bin(k33, 33, jstr(j, "identity_key"));
    memcpy(b->identity_key, k33 + 1, 32);
    b->signed_prekey_id = (uint32_t)cJSON_GetObjectItemCaseSensitive(j, "signed_prekey_id")->valuedouble;
    b64_to_bin(k33, 33, jstr(j, "signed_prekey"));
    memcpy(b->signed_prekey, k33 + 1, 32);
    b64_to_bin(b->signed_prekey_signature, 64, jstr(j, "signed_prekey_signature"));
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(j, "prekey_id");
    if (cJSON_IsNumber(pid)) {
        b->has_prekey = true;
        b->prekey_id = (uint32_t)pid->valuedouble;
        b64_to_bin(k33, 33, jstr(j, "prekey"));
        memcpy(b->prekey, k33 + 1, 32);
    }
}

static void test_transcript(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        CHECK(f != NULL);
        return;
    }
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *root = cJSON_Parse(buf);
    CHECK(root != NULL);
    if (!root)
        return;

    static party alice, bob;
    load_party(&alice, cJSON_GetObjectItemCaseSensitive(root, "alice"));
    load_party(&bob, cJSON_GetObjectItemCaseSensitive(root, "bob"));
    ps_bundle bob_bundle, alice_bundle;
    bundle_from_json(&bob_bundle, cJSON_GetObjectItemCaseSensitive(
                                      cJSON_GetObjectItemCaseSensitive(root, "bob"), "bundle"));
    bundle_from_json(&alice_bundle, cJSON_GetObjectItemCaseSensitive(
                                        cJSON_GetObjectItemCaseSensitive(root, "alice"), "bundle"));

    /* The reference's (deterministic curve25519-js) bundle signatures verify. */
    uint8_t spk33[33];
    ps_pubkey_serialize(spk33, bob_bundle.signed_prekey);
    CHECK(ps_xeddsa_verify(bob_bundle.identity_key, spk33, 33, bob_bundle.signed_prekey_signature));
    ps_pubkey_serialize(spk33, alice_bundle.signed_prekey);
    CHECK(ps_xeddsa_verify(alice_bundle.identity_key, spk33, 33,
                           alice_bundle.signed_prekey_signature));

    CHECK_RC(ps_session_initiate(&alice.rec, &alice.me, &bob_bundle, &alice.rng), PS_OK);

    int i = 0, bodies_equal = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(root, "messages")) {
        bool from_alice = strcmp(jstr(m, "from"), "alice") == 0;
        party *src = from_alice ? &alice : &bob, *dst = from_alice ? &bob : &alice;
        const char *text = jstr(m, "plaintext");
        static uint8_t want[4096];
        size_t want_len = b64_to_bin(want, sizeof want, jstr(m, "body"));
        int want_type = (int)cJSON_GetObjectItemCaseSensitive(m, "type_code")->valuedouble;

        ps_bytes body, pt;
        int type = 0;
        CHECK_RC(ps_session_encrypt(&src->rec, (const uint8_t *)text, strlen(text), &body, &type),
                 PS_OK);
        CHECK(type == want_type);
        if (body.len == want_len && memcmp(body.data, want, want_len) == 0)
            bodies_equal++;
        else
            fprintf(stderr, "transcript message %d differs from the reference\n", i);

        if (type == PS_MSG_PREKEY) {
            ps_prekey_message pm;
            bool used = false;
            CHECK_RC(ps_prekey_message_parse(&pm, body.data, body.len), PS_OK);
            CHECK(pm.signed_prekey_id == dst->spk_id);
            CHECK_RC(ps_session_decrypt_prekey(&dst->rec, &dst->me, &pm, &dst->spk,
                                               pm.has_prekey_id ? &dst->opk : NULL, &pt, &dst->rng,
                                               &used),
                     PS_OK);
            ps_prekey_message_clear(&pm);
        } else {
            CHECK_RC(ps_session_decrypt(&dst->rec, body.data, body.len, &pt, &dst->rng), PS_OK);
        }
        CHECK(pt.len == strlen(text) && memcmp(pt.data, text, pt.len) == 0);
        ps_bytes_free(&pt);
        ps_bytes_free(&body);
        i++;
    }
    CHECK(i == 7);
    CHECK(bodies_equal == 7);

    /* Final root keys as the reference dumped them. */
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(root, "final_state");
    uint8_t want_root[32];
    b64_to_bin(want_root, 32, jstr(cJSON_GetObjectItemCaseSensitive(fs, "alice"), "root_key"));
    CHECK(alice.rec.current && memcmp(alice.rec.current->root_key, want_root, 32) == 0);
    b64_to_bin(want_root, 32, jstr(cJSON_GetObjectItemCaseSensitive(fs, "bob"), "root_key"));
    CHECK(bob.rec.current && memcmp(bob.rec.current->root_key, want_root, 32) == 0);
    CHECK(bob.q.next == bob.q.n && alice.q.next == alice.q.n); /* every key used, in order */

    ps_session_record_clear(&alice.rec);
    ps_session_record_clear(&bob.rec);
    cJSON_Delete(root);
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0)
        return 2;
    RUN(test_x25519());
    RUN(test_xeddsa());
    RUN(test_hkdf());
    RUN(test_hmac());
    RUN(test_aes_cbc());
    RUN(test_x3dh_chain_key());
    RUN(test_chain_keys());
    if (argc > 1)
        RUN(test_transcript(argv[1]));
    else
        CHECK(!"transcript path not given");
    return check_summary("crypto_kat");
}
