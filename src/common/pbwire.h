/* pbwire.h - protobuf's wire format by hand, for the paths that must not unpack whole
 * messages: parleyd writes Deliver frames straight from stored envelopes and reads the
 * author of each envelope an ack deletes; parley-bench encodes its Sends and reads what
 * it receives. Everything else uses protobuf-c. */
#ifndef PARLEY_COMMON_PBWIRE_H
#define PARLEY_COMMON_PBWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes a varint of v takes (1 to 10). */
size_t pbw_varint_len(uint64_t v);

/* Writes v as a varint at p; returns the byte after it. */
uint8_t *pbw_put_varint(uint8_t *p, uint64_t v);

/* Reads a varint at *p (before end) and moves *p past it; false if it is cut off or
 * longer than 10 bytes. */
bool pbw_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v);

typedef struct {
    uint32_t field;
    uint32_t wire;        /* 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 */
    uint64_t v;           /* wire 0: the value; wire 2: the length */
    const uint8_t *data;  /* wire 2: the bytes (inside the input) */
    size_t len;
} pbw_field;

/* The next field of a message at *p, moving *p past it. False at the end (*p == end),
 * or for malformed input (a cut-off field, an unknown wire type), which sets *bad. */
bool pbw_next_field(const uint8_t **p, const uint8_t *end, pbw_field *f, bool *bad);

#endif
