/* log_record.h - the inbox log's records as they lie in a segment file (log_segment.h):
 *
 *   magic "PLG1"(4) | crc(4) | len(4) | type(1) | zero(3) | payload(len)
 *
 * crc is CRC-32 (zlib's) over a seed (8: the segment's number mixed with the log's
 * secret salt), len, type and the payload, so a record only verifies in the segment it
 * was written to, and bytes a client chose cannot pass for one. Numbers are big-endian.
 * A preallocated segment reads as zeros past its last record.
 *
 * Reading a segment back (log_scan) tells a torn tail (a record cut short by a crash
 * in its write: never acknowledged, dropped) from damage in the middle (reported, and
 * skipped to the next record that verifies), and never reads past the buffer. In the
 * segments still being written at a crash, the disk may have kept a group's pages in
 * any order: there the first record that does not verify is the end (no resync). */
#ifndef PARLEY_STORE_LOG_RECORD_H
#define PARLEY_STORE_LOG_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOG_HEADER 16
#define LOG_MAX_PAYLOAD (64u << 20)

/* Seals a record whose payload (len bytes) already sits at rec + LOG_HEADER: writes its
 * header. The record then takes LOG_HEADER + len bytes. */
void log_record_seal(uint8_t *rec, uint64_t seed, uint8_t type, size_t len);

/* Shows each record that verifies, in order; fn returns false to stop the scan there
 * (then end is that record's offset). */
typedef bool (*log_record_fn)(void *ctx, uint64_t offset, uint8_t type, const uint8_t *payload, size_t len);

typedef struct {
    uint64_t end;            /* where the next record goes: after the last one that verified */
    uint64_t records;        /* records shown */
    uint64_t torn_bytes;     /* a record cut short at the end (or other bytes there that never verified) */
    uint64_t damaged;        /* stretches in the middle that did not verify, skipped */
    uint64_t damaged_bytes;
    uint64_t first_damage;   /* offset of the first, if any */
} log_scan_result;

/* Scans size bytes of a segment sealed with seed from the start; resync: skip damage to
 * the next record that verifies (else damage ends the scan, as a torn tail). */
void log_scan(const uint8_t *base, size_t size, uint64_t seed, bool resync, log_record_fn fn, void *ctx,
              log_scan_result *out);

/* Big-endian helpers for the payloads. */
static inline void log_put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}
static inline uint64_t log_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}
static inline void log_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}
static inline uint32_t log_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

#endif
