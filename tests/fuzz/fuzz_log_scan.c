/* Fuzzes the inbox log's reader (src/server/store/log/log_record.c), which parleyd runs
 * on every segment at start and parleyctl check on what may be a damaged disk: every
 * record it shows lies inside the input, after the one before it; the end, the torn
 * tail and the damaged stretches stay inside the input; both modes (resync in old
 * segments, none in the last ones) are run. The first byte picks the mode. */
#include <stdint.h>
#include <string.h>

#include "log_record.h"

typedef struct {
    const uint8_t *base;
    size_t size;
    uint64_t last_end;
} bounds;

static bool check(void *ctx, uint64_t offset, uint8_t type, const uint8_t *payload, size_t len)
{
    bounds *b = ctx;
    (void)type;
    if (offset < b->last_end || payload != b->base + offset + LOG_HEADER || offset + LOG_HEADER + len > b->size)
        __builtin_trap();
    b->last_end = offset + LOG_HEADER + len;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool resync = data[0] & 1;
    bounds b = {data + 1, size - 1, 0};
    log_scan_result r;
    log_scan(b.base, b.size, 7, resync, check, &b, &r);
    if (r.end > b.size || r.end != b.last_end || r.torn_bytes > b.size - r.end ||
        r.damaged_bytes > b.size || (!resync && r.damaged))
        __builtin_trap();
    return 0;
}
