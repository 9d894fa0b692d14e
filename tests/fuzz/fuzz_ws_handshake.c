/* Fuzzes the opening-handshake parser with arbitrary request heads. */
#include <stdint.h>
#include <string.h>

#include "upgrade.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char out[WS_HANDSHAKE_MAX_RESPONSE];
    size_t n = 0;
    if (size > WS_HANDSHAKE_MAX_HEAD)
        return 0;
    size_t head = ws_handshake_head_len((const char *)data, size);
    int status = upgrade_answer((const char *)data, head ? head : size, out, &n);
    if (n >= WS_HANDSHAKE_MAX_RESPONSE || strlen(out) != n ||
        (status != 101 && status != 400 && status != 405 && status != 426))
        __builtin_trap();
    return 0;
}
