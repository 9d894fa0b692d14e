/* json_io.c - JSON field helpers for parley-signal. */
#include "json_io.h"

#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "primitives.h"
#include "utf8.h"

bool json_fail(json_err *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return false;
}

bool json_u32(const cJSON *o, const char *key, bool has_def, uint32_t def, uint32_t *out, json_err *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (!has_def)
            return json_fail(e, "missing field '%s'", key);
        *out = def;
        return true;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 4294967295.0 ||
        floor(v->valuedouble) != v->valuedouble)
        return json_fail(e, "field '%s' must be an unsigned 32-bit integer", key);
    *out = (uint32_t)v->valuedouble;
    return true;
}

bool json_str(const cJSON *o, const char *key, const char **out, json_err *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v))
        return json_fail(e, "missing string field '%s'", key);
    *out = v->valuestring;
    return true;
}

static bool b64_decode(const char *s, ps_bytes *out)
{
    size_t slen = strlen(s), cap = slen / 4 * 3 + 3;
    out->data = malloc(cap ? cap : 1);
    out->len = 0;
    if (!out->data)
        return false;
    const char *end = NULL;
    if (sodium_base642bin(out->data, cap, s, slen, NULL, &out->len, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || end != s + slen) {
        ps_bytes_free(out);
        return false;
    }
    return true;
}

bool json_b64(const cJSON *o, const char *key, ps_bytes *out, json_err *e)
{
    const char *s = NULL;
    if (!json_str(o, key, &s, e))
        return false;
    if (!b64_decode(s, out))
        return json_fail(e, "field '%s' is not valid padded base64", key);
    return true;
}

bool json_b64_fixed(const cJSON *o, const char *key, uint8_t *out, size_t n, json_err *e)
{
    ps_bytes b;
    if (!json_b64(o, key, &b, e))
        return false;
    bool ok = b.len == n;
    if (ok)
        memcpy(out, b.data, n);
    size_t got = b.len;
    ps_bytes_free(&b);
    return ok || json_fail(e, "field '%s' must be %zu bytes, got %zu", key, n, got);
}

bool json_pubkey(const cJSON *o, const char *key, uint8_t out[PS_KEY_LEN], json_err *e)
{
    uint8_t k33[PS_PUBKEY_LEN];
    if (!json_b64_fixed(o, key, k33, sizeof k33, e))
        return false;
    if (ps_pubkey_parse(out, k33, sizeof k33) != PS_OK)
        return json_fail(e, "field '%s' is not a 0x05-prefixed Curve25519 key", key);
    return true;
}

bool json_payload(const cJSON *o, const char *text, const char *b64key, ps_bytes *out, json_err *e)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, text);
    if (cJSON_IsString(t)) {
        size_t n = strlen(t->valuestring);
        out->data = malloc(n ? n : 1);
        if (!out->data)
            return json_fail(e, "out of memory");
        memcpy(out->data, t->valuestring, n);
        out->len = n;
        return true;
    }
    if (cJSON_GetObjectItemCaseSensitive(o, b64key))
        return json_b64(o, b64key, out, e);
    return json_fail(e, "missing '%s' or '%s'", text, b64key);
}

void json_add_b64(cJSON *o, const char *key, const uint8_t *data, size_t len)
{
    size_t n = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
    char *s = malloc(n);
    if (!s)
        abort();
    sodium_bin2base64(s, n, data, len, sodium_base64_VARIANT_ORIGINAL);
    cJSON_AddStringToObject(o, key, s);
    free(s);
}

void json_add_pubkey(cJSON *o, const char *key, const uint8_t pub[PS_KEY_LEN])
{
    uint8_t k33[PS_PUBKEY_LEN];
    ps_pubkey_serialize(k33, pub);
    json_add_b64(o, key, k33, sizeof k33);
}

bool json_has_nul_escape(const char *line)
{
    for (const char *p = strstr(line, "u0000"); p; p = strstr(p + 1, "u0000")) {
        size_t slashes = 0;
        while (p - (ptrdiff_t)slashes > line && p[-(ptrdiff_t)slashes - 1] == '\\')
            slashes++;
        if (slashes % 2 == 1)
            return true;
    }
    return false;
}

/* A JSON string literal for valid UTF-8 bytes, NULs included (cJSON's strings stop at
 * a NUL, so the text is escaped here and added as raw JSON). */
static char *json_string_literal(const uint8_t *data, size_t len)
{
    char *out = malloc(len * 6 + 3), *o = out;
    if (!out)
        abort();
    *o++ = '"';
    for (size_t i = 0; i < len; i++) {
        uint8_t c = data[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            o += sprintf(o, "\\u%04x", c);
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    *o = 0;
    return out;
}

void json_add_payload(cJSON *o, const char *text, const char *b64key, const uint8_t *data, size_t len)
{
    if (utf8_valid(data, len)) {
        char *lit = json_string_literal(data, len);
        cJSON_AddItemToObject(o, text, cJSON_CreateRaw(lit));
        sodium_memzero(lit, strlen(lit));
        free(lit);
    } else {
        cJSON_AddNullToObject(o, text);
    }
    json_add_b64(o, b64key, data, len);
}
