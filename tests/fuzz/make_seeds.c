/* make_seeds.c - writes seed inputs for the fuzz targets that the transcript
 * does not provide: sender-key messages and SKDMs for the fixture's sender key,
 * and serialized states. Run once: make_seeds tests/fuzz/seeds */
#include <stdio.h>

#include "fixture.h"
#include "keys.h"

static void put(const char *dir, const char *sub, const char *name, const ps_bytes *b)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/%s", dir, sub, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b->data, 1, b->len, f) != b->len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    static fixture fx;
    const char *dir = argc > 1 ? argv[1] : "tests/fuzz/seeds";
    fixture_init(&fx);
    ps_bytes b;
    char name[64];
    for (int i = 0; i < 3; i++) {
        if (ps_sender_key_encrypt(&fx.sk_sender, (const uint8_t *)"group hello", 11, &fx.rng, &b))
            return 1;
        snprintf(name, sizeof name, "message-%d.bin", i);
        put(dir, "sender_key_message", name, &b);
        ps_bytes_free(&b);
    }
    if (ps_sender_key_create(&fx.sk_sender, fx.sk_sender.distribution_id, &fx.rng, &b))
        return 1;
    put(dir, "sender_key_message", "skdm.bin", &b);
    ps_bytes_free(&b);
    if (ps_session_record_serialize(&fx.alice_rec, &b))
        return 1;
    put(dir, "state", "alice-session.bin", &b);
    ps_bytes_free(&b);
    if (ps_session_record_serialize(&fx.bob_rec, &b))
        return 1;
    put(dir, "state", "bob-session.bin", &b);
    ps_bytes_free(&b);
    if (ps_sender_key_record_serialize(&fx.sk_sender, &b))
        return 1;
    put(dir, "state", "sender-key.bin", &b);
    ps_bytes_free(&b);
    ps_key_record k = {.kind = PS_KEY_SIGNED_PREKEY, .id = 7, .pair = fx.bob_spk,
                       .has_signature = true, .created_at = 1700000000};
    if (ps_key_record_serialize(&k, &b))
        return 1;
    put(dir, "state", "signed-prekey.bin", &b);
    ps_bytes_free(&b);
    return 0;
}
