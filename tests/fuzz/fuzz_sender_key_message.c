/* Fuzzes SenderKeyMessage decryption and SenderKeyDistributionMessage processing. */
#include "fixture.h"

static fixture fx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fixture_init(&fx);
    return 0;
}

static void copy_record(ps_sender_key_record *dst, const ps_sender_key_record *src)
{
    ps_bytes b;
    if (ps_sender_key_record_serialize(src, &b) != PS_OK ||
        ps_sender_key_record_deserialize(dst, b.data, b.len) != PS_OK)
        abort();
    ps_bytes_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ps_sender_key_record rec;
    ps_bytes pt;
    uint8_t dist[16];
    copy_record(&rec, &fx.sk_receiver);
    if (ps_sender_key_message_distribution(data, size, dist) == PS_OK &&
        ps_sender_key_decrypt(&rec, data, size, &pt) == PS_OK)
        ps_bytes_free(&pt);
    ps_skdm m;
    if (ps_skdm_parse(&m, data, size) == PS_OK && ps_sender_key_process(&rec, &m) != PS_OK)
        (void)0; /* a distribution id mismatch is an ordinary refusal */
    ps_sender_key_record_clear(&rec);
    return 0;
}
