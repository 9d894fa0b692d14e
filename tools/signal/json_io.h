/* json_io.h - small JSON helpers for parley-signal: typed field access with
 * error messages, base64 fields, UTF-8 checks. */
#ifndef PARLEY_TOOLS_JSON_IO_H
#define PARLEY_TOOLS_JSON_IO_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ps.h"

/* Errors are reported through a fixed buffer the caller owns. */
typedef struct {
    char msg[256];
} json_err;

bool json_fail(json_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* An unsigned integer field; absent -> def (when has_def), else an error. */
bool json_u32(const cJSON *o, const char *key, bool has_def, uint32_t def, uint32_t *out, json_err *e);

/* A string field (required). */
bool json_str(const cJSON *o, const char *key, const char **out, json_err *e);

/* A base64 field decoded into a new ps_bytes (required). */
bool json_b64(const cJSON *o, const char *key, ps_bytes *out, json_err *e);

/* A base64 field that must decode to exactly n bytes. */
bool json_b64_fixed(const cJSON *o, const char *key, uint8_t *out, size_t n, json_err *e);

/* A 33-byte 0x05-prefixed public key field, returned as its 32-byte u-coordinate. */
bool json_pubkey(const cJSON *o, const char *key, uint8_t out[PS_KEY_LEN], json_err *e);

/* `text` (UTF-8) or `b64key` (base64): the payload of a request, copied. */
bool json_payload(const cJSON *o, const char *text, const char *b64key, ps_bytes *out, json_err *e);

/* Adds base64(data) under key. */
void json_add_b64(cJSON *o, const char *key, const uint8_t *data, size_t len);

/* Adds a 33-byte 0x05 || pub key under key. */
void json_add_pubkey(cJSON *o, const char *key, const uint8_t pub[PS_KEY_LEN]);

/* Adds text (null when the bytes are not valid UTF-8) and text_b64. */
void json_add_payload(cJSON *o, const char *text, const char *b64key, const uint8_t *data, size_t len);

/* True when the JSON text holds a \u0000 escape: cJSON's C strings would cut the
 * value there without a word, so such requests are refused instead. */
bool json_has_nul_escape(const char *line);

#endif
