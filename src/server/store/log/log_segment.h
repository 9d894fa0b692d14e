/* log_segment.h - the inbox log's files: segments of a fixed capacity, preallocated
 * when made (a full disk is then found when a segment is made, never in the middle of
 * a write), written at their tail with pwrite and made durable with fdatasync, and read
 * through a read-only shared mapping (the page cache: what was written is there at once).
 *
 * Files are DIR/NNNNNNNNNNNNNNNN.seg (the segment number in hex, 16 digits); numbers
 * only grow. A segment goes by being unlinked whole: its bytes leave the data directory
 * with it. Each function returns a STORE_* status. */
#ifndef PARLEY_STORE_LOG_SEGMENT_H
#define PARLEY_STORE_LOG_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t number;
    int fd;
    uint8_t *map;            /* capacity bytes, read-only */
    size_t capacity;
    size_t tail;             /* where the next write goes */
} log_segment;

/* Makes segment number in dir with capacity bytes allocated (STORE_FULL if the disk
 * has not the room), durable as a directory entry before it returns. */
int log_segment_create(log_segment *s, const char *dir, uint64_t number, size_t capacity);

/* Opens an existing segment for reading and writing (or only reading); tail is 0 until
 * the caller sets it (log_scan finds it). */
int log_segment_open(log_segment *s, const char *dir, uint64_t number, bool readonly);

/* Writes len bytes at the tail (all of them, or an error). Not durable before sync. */
int log_segment_write(log_segment *s, const void *buf, size_t len);
int log_segment_sync(log_segment *s);

/* Writes len zero bytes at offset (not past the tail's side of the capacity). */
int log_segment_zero(log_segment *s, size_t offset, size_t len);

void log_segment_close(log_segment *s);

/* Unlinks segment number of dir (and syncs the directory). */
int log_segment_remove(const char *dir, uint64_t number);

/* The numbers of dir's segments, ascending, in *out (malloc'd; free it). */
int log_segment_list(const char *dir, uint64_t **out, size_t *n);

#endif
