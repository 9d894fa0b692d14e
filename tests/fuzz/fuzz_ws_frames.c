/* Fuzzes the WebSocket reader, server and client side, with the input split into
 * pieces whose size the first byte chooses. Small limits reach the limit paths. */
#include <stdlib.h>
#include <string.h>

#include "ws.h"

static uint8_t checksum;

static bool on_message(void *ctx, int opcode, uint8_t *data, size_t len)
{
    (void)ctx, (void)opcode;
    for (size_t i = 0; i < len; i++) /* touch every byte: ASan checks the bounds */
        checksum ^= data[i];
    return true;
}

static bool on_control(void *ctx, int opcode, const uint8_t *data, size_t len)
{
    (void)ctx, (void)data, (void)len;
    return opcode != WS_OP_CLOSE;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const ws_handlers h = {on_message, on_control};
    static const ws_limits lim = {300, 1000};
    if (size < 1)
        return 0;
    size_t piece = (size_t)data[0] % 17 + 1;
    uint8_t *copy = malloc(size);
    for (int side = 0; side < 2; side++) {
        memcpy(copy, data + 1, size - 1);
        ws_reader r;
        ws_reader_init(&r, side == 0);
        for (size_t at = 0; at < size - 1; at += piece) {
            size_t n = size - 1 - at < piece ? size - 1 - at : piece;
            if (ws_reader_feed(&r, copy + at, n, &lim, &h, NULL) != 0)
                break;
        }
        ws_reader_free(&r);
    }
    free(copy);
    return 0;
}
