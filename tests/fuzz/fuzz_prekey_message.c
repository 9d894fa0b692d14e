/* Fuzzes PreKeySignalMessage parsing and the responder's session setup. */
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
    ps_prekey_message m;
    if (ps_prekey_message_parse(&m, data, size) != PS_OK)
        return 0;
    ps_session_record fresh = {0}, existing;
    if (ps_session_record_copy(&existing, &fx.bob_rec) != PS_OK)
        abort();
    ps_session_record *recs[] = {&fresh, &existing};
    for (int i = 0; i < 2; i++) {
        ps_bytes pt;
        bool used;
        if (ps_session_decrypt_prekey(recs[i], &fx.bob, &m, &fx.bob_spk,
                                      m.has_prekey_id ? &fx.bob_opk : NULL, &pt, &fx.rng,
                                      &used) == PS_OK)
            ps_bytes_free(&pt);
        ps_session_record_clear(recs[i]);
    }
    ps_prekey_message_clear(&m);
    return 0;
}
