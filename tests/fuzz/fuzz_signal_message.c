/* Fuzzes SignalMessage decoding and decryption against both transcript parties. */
#include "fixture.h"

static fixture fx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fixture_init(&fx);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ps_session_record *recs[] = {&fx.alice_rec, &fx.bob_rec};
    for (int i = 0; i < 2; i++) {
        ps_session_record copy;
        ps_bytes pt;
        if (ps_session_record_copy(&copy, recs[i]) != PS_OK)
            abort();
        if (ps_session_decrypt(&copy, data, size, &pt, &fx.rng) == PS_OK)
            ps_bytes_free(&pt);
        ps_session_record_clear(&copy);
    }
    return 0;
}
