/* log_record.c - sealing and scanning the inbox log's records (log_record.h). */
#include "log_record.h"

#include <string.h>
#include <zlib.h>

static const uint8_t MAGIC[4] = {'P', 'L', 'G', '1'};

static uint32_t record_crc(uint64_t segno, const uint8_t *rec, size_t len)
{
    uint8_t seg[8];
    log_put64(seg, segno);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, seg, sizeof seg);
    crc = crc32(crc, rec + 8, 5);                     /* len, type */
    crc = crc32_z(crc, rec + LOG_HEADER, len);
    return (uint32_t)crc;
}

void log_record_seal(uint8_t *rec, uint64_t segno, uint8_t type, size_t len)
{
    memcpy(rec, MAGIC, 4);
    log_put32(rec + 8, (uint32_t)len);
    rec[12] = type;
    rec[13] = rec[14] = rec[15] = 0;
    log_put32(rec + 4, record_crc(segno, rec, len));
}

/* The length of the record at off if one verifies there, else 0. */
static size_t verified(const uint8_t *base, size_t size, uint64_t segno, size_t off)
{
    if (size - off < LOG_HEADER || memcmp(base + off, MAGIC, 4) != 0)
        return 0;
    const uint8_t *rec = base + off;
    size_t len = log_get32(rec + 8);
    if (len > LOG_MAX_PAYLOAD || len > size - off - LOG_HEADER || rec[13] | rec[14] | rec[15])
        return 0;
    return log_get32(rec + 4) == record_crc(segno, rec, len) ? LOG_HEADER + len : 0;
}

/* The next offset after off where a record verifies, or size. */
static size_t resync(const uint8_t *base, size_t size, uint64_t segno, size_t off)
{
    for (size_t at = off + 1; at + LOG_HEADER <= size; at++) {
        const uint8_t *m = memchr(base + at, MAGIC[0], size - at);
        if (!m)
            break;
        at = (size_t)(m - base);
        if (verified(base, size, segno, at))
            return at;
    }
    return size;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

void log_scan(const uint8_t *base, size_t size, uint64_t segno, bool resync_allowed, log_record_fn fn, void *ctx,
              log_scan_result *out)
{
    memset(out, 0, sizeof *out);
    size_t off = 0;
    while (off < size) {
        size_t n = verified(base, size, segno, off);
        if (n) {
            if (fn && !fn(ctx, off, base[off + 12], base + off + LOG_HEADER, n - LOG_HEADER))
                break;
            out->records++;
            off += n;
            out->end = off;
            continue;
        }
        bool zeros = size - off < LOG_HEADER ? all_zero(base + off, size - off) : all_zero(base + off, LOG_HEADER);
        if (zeros && resync_allowed)
            break; /* the end: what a preallocated segment holds past its last record */
        size_t next = resync_allowed ? resync(base, size, segno, off) : size;
        if (next == size) { /* nothing verifies after it: a torn tail, up to the zeros */
            size_t last = size;
            while (last > off && base[last - 1] == 0)
                last--;
            out->torn_bytes = last - off;
            break;
        }
        if (!out->damaged)
            out->first_damage = off;
        out->damaged++;
        out->damaged_bytes += next - off;
        off = next;
    }
}
