/* inbox_log.h - the device inboxes as a log: records appended to segment files
 * (log_segment.h, log_record.h) in group commits, an index in memory (inbox_index.h),
 * and segments removed whole once nothing in them is held any more.
 *
 * Threads. One writer (the storage writer thread) appends, takes and commits; readers
 * on any thread read inboxes (inbox_log_read). A group is what the writer appended
 * between two commits: inbox_log_commit writes it and makes it durable (fdatasync)
 * before it returns, and only then can readers see it.
 *
 * Records (payloads, numbers big-endian; device = account(16) device(4)):
 *   ENVELOPE  device seq(8) stored_ms(8) envelope         one device's copy, inline
 *   BODY      envelope                                    bytes shared by the SHARED after it
 *   SHARED    device seq(8) stored_ms(8) segment(4) offset(4) len(4)  a copy of a BODY's bytes:
 *             a message for many devices (a group's) is stored once
 *   TAKE      device up_to(8)                             acked, expired or dropped up to up_to
 *   FLOOR     device next_seq(8)                          a device's next seq, carried forward
 *   NOTE      opaque                                      the caller's (de-duplication records),
 *                                                         shown to it when the log is replayed
 * Replaying the segments in order rebuilds the index; a torn last record is dropped,
 * damage elsewhere is counted in the open report.
 *
 * Removal: a segment goes when no entry of the index points into it, it is not the one
 * being written, every older segment is gone, and the caller has taken what it needs
 * from its NOTEs (inbox_log_release_before). Before a segment goes, a FLOOR record
 * keeps the next seq of every device whose seqs were last seen in it, so seqs are never
 * reused. Each function returns a STORE_* status. */
#ifndef PARLEY_STORE_INBOX_LOG_H
#define PARLEY_STORE_INBOX_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "inbox_index.h"
#include "store.h"

typedef struct inbox_log inbox_log;

typedef struct {
    size_t segment_bytes;        /* capacity of each segment (0: 64 MiB) */
    size_t reserve_bytes;        /* kept at the end of the active segment for TAKEs (0: 1 MiB) */
    bool readonly;               /* a tool's look while parleyd may be writing: no writes at all */
    /* NOTE records as the log is replayed, in order, with where they lie */
    void (*note)(void *ctx, uint64_t segment, const uint8_t *data, size_t len);
    void *ctx;
} inbox_log_config;

typedef struct {
    uint64_t segments, records, envelopes;
    uint64_t torn_bytes;         /* dropped from the end of the last segment */
    uint64_t damaged, damaged_bytes;  /* skipped elsewhere (reported) */
    uint64_t misplaced;          /* envelopes whose bytes are not where their record says */
    double seconds;
} inbox_log_report;

/* Opens (creating) the log in dir and replays it. Read-only, a missing dir is an empty
 * log, and every write is STORE_IO. */
int inbox_log_open(inbox_log **out, const char *dir, const inbox_log_config *cfg, inbox_log_report *report);
void inbox_log_close(inbox_log *l);

/* ---- the writer's: each appends to the group being filled ------------------------ */

/* One envelope for d; *seq gets its place. STORE_FULL when the disk has no room for a
 * new segment and this one is down to its reserve (takes still go). */
int inbox_log_append(inbox_log *l, const store_device *d, uint64_t stored_ms, const uint8_t *envelope, size_t len,
                     uint64_t *seq);

/* Makes sure the group can take records of bytes in all (LOG_HEADER each included)
 * without a STORE_FULL half way: a request that writes several records reserves them
 * first, so that it is refused whole or not at all. */
int inbox_log_reserve(inbox_log *l, size_t bytes);
#define INBOX_LOG_ENVELOPE_COST(len) (16 + 36 + (size_t)(len))   /* what one append writes */
#define INBOX_LOG_NOTE_COST(len) (16 + (size_t)(len))
#define INBOX_LOG_SHARED_COST(n, len) (16 + (size_t)(len) + (size_t)(n) * (16 + 48)) /* append_shared */

/* An envelope with its seq given (a migration from another store): ignored if d has
 * had that seq already. */
int inbox_log_append_at(inbox_log *l, const store_device *d, uint64_t seq, uint64_t stored_ms,
                        const uint8_t *envelope, size_t len);

/* Raises d's next seq to at least next. */
int inbox_log_floor(inbox_log *l, const store_device *d, uint64_t next);

/* The same envelope for n devices, its bytes stored once; seqs[i] for devices[i]. */
int inbox_log_append_shared(inbox_log *l, const store_device *devices, size_t n, uint64_t stored_ms,
                            const uint8_t *envelope, size_t len, uint64_t *seqs);

/* Takes d's envelopes with seq <= up_to, showing each to fn first (if not NULL; data is
 * valid during fn only). Goes through even on a full disk (the reserve). */
int inbox_log_take(inbox_log *l, const store_device *d, uint64_t up_to, store_envelope_fn fn, void *ctx,
                   size_t *taken);

/* Takes every envelope stored before cutoff, at most max devices' worth per call. */
int inbox_log_expire(inbox_log *l, uint64_t cutoff_ms, size_t max, size_t *removed);

/* A NOTE record of the caller's (at most 4 KiB). */
int inbox_log_note(inbox_log *l, const uint8_t *data, size_t len);

/* What d's inbox holds. */
void inbox_log_usage(inbox_log *l, const store_device *d, uint64_t *envelopes, uint64_t *bytes);

/* Writes the group and makes it durable; then readers see it. On an I/O error the log
 * refuses every later write (STORE_IO) until it is opened again: what the failed write
 * left is not known. */
int inbox_log_commit(inbox_log *l);

/* The segment the group being filled goes to: NOTEs appended from now on lie in it or
 * after it. */
uint64_t inbox_log_segment(const inbox_log *l);

/* The caller needs no NOTE in segments before segment any more: those may go once
 * nothing else holds them. Removes what can go (call after a commit). */
int inbox_log_release_before(inbox_log *l, uint64_t segment);

/* What segment's records are checksummed with (log_record.h): for tools and tests that
 * read segments themselves. */
uint64_t inbox_log_seed(const inbox_log *l, uint64_t segment);

/* The disk had no room for a new segment since a segment was last removed: the caller
 * should let segments go as soon as it can (a checkpoint now rather than later). */
bool inbox_log_starved(const inbox_log *l);

/* ---- readers ---------------------------------------------------------------------- */

/* Up to max of d's durable envelopes with seq > after, in order (store_envelope_fn). */
int inbox_log_read(inbox_log *l, const store_device *d, uint64_t after, size_t max, store_envelope_fn fn, void *ctx);

typedef struct {
    uint64_t envelopes, bytes;   /* held, all devices */
    uint64_t segments, disk_bytes;
    uint64_t written;            /* bytes of records in the segments there are */
    uint64_t last_segment, last_tail;  /* where the next group goes */
} inbox_log_stats;
void inbox_log_get_stats(inbox_log *l, inbox_log_stats *out);

#endif
