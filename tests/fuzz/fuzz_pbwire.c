/* Fuzzes the hand-written protobuf reader (src/common/pbwire.c) that parleyd uses on
 * stored envelopes and parley-bench on everything it receives: every field it returns
 * lies inside the input, the walk only moves forward, and each varint it reads encodes
 * back to the same value. */
#include <stdint.h>
#include <string.h>

#include "pbwire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size, *before = p;
    pbw_field f;
    bool bad = false;
    while (pbw_next_field(&p, end, &f, &bad)) {
        if (p <= before || p > end || f.wire > 5 || (f.wire == 2 && (f.data < data || f.data + f.len > p)))
            __builtin_trap();
        if (f.wire == 0) {
            uint8_t buf[10];
            const uint8_t *q = buf;
            uint64_t back = 0;
            size_t n = (size_t)(pbw_put_varint(buf, f.v) - buf);
            if (n != pbw_varint_len(f.v) || !pbw_get_varint(&q, buf + n, &back) || back != f.v || q != buf + n)
                __builtin_trap();
        }
        before = p;
    }
    if (!bad && p != end)
        __builtin_trap(); /* stopped early without saying the input was malformed */
    return 0;
}
