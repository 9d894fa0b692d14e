/* Fuzzes the readers of serialized state: session records, sender-key records and
 * key records. Whatever a reader accepts must serialize again, and a session
 * record it accepts must be usable (encrypt, decrypt) without crashing. */
#include "fixture.h"
#include "keys.h"

static fixture fx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fixture_init(&fx);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ps_bytes out, pt;
    ps_session_record rec;
    if (ps_session_record_deserialize(&rec, data, size) == PS_OK) {
        int type;
        if (ps_session_record_serialize(&rec, &out) != PS_OK)
            abort();
        ps_bytes_free(&out);
        if (ps_session_encrypt(&rec, (const uint8_t *)"fuzz", 4, &out, &type) == PS_OK) {
            if (type == PS_MSG_WHISPER &&
                ps_session_decrypt(&rec, out.data, out.len, &pt, &fx.rng) == PS_OK)
                ps_bytes_free(&pt);
            ps_bytes_free(&out);
        }
        ps_session_record_clear(&rec);
    }
    ps_sender_key_record sk;
    if (ps_sender_key_record_deserialize(&sk, data, size) == PS_OK) {
        if (ps_sender_key_record_serialize(&sk, &out) != PS_OK)
            abort();
        ps_bytes_free(&out);
        if (ps_sender_key_encrypt(&sk, (const uint8_t *)"fuzz", 4, &fx.rng, &out) == PS_OK)
            ps_bytes_free(&out);
        ps_sender_key_record_clear(&sk);
    }
    ps_key_record k;
    if (ps_key_record_deserialize(&k, data, size) == PS_OK) {
        if (ps_key_record_serialize(&k, &out) != PS_OK)
            abort();
        ps_bytes_free(&out);
    }
    return 0;
}
