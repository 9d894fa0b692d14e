/* pbwire.c - protobuf's wire format by hand (see pbwire.h). */
#include "pbwire.h"

size_t pbw_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80)
        v >>= 7, n++;
    return n;
}

uint8_t *pbw_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

bool pbw_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t r = 0;
    for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return true;
        }
    }
    return false;
}

bool pbw_next_field(const uint8_t **p, const uint8_t *end, pbw_field *f, bool *bad)
{
    uint64_t key;
    if (*p >= end)
        return false;
    if (!pbw_get_varint(p, end, &key))
        goto malformed;
    f->field = (uint32_t)(key >> 3);
    f->wire = (uint32_t)(key & 7);
    f->data = NULL;
    f->len = 0;
    switch (f->wire) {
    case 0:
        if (!pbw_get_varint(p, end, &f->v))
            goto malformed;
        return true;
    case 1:
    case 5: {
        size_t n = f->wire == 1 ? 8 : 4;
        if ((size_t)(end - *p) < n)
            goto malformed;
        *p += n;
        return true;
    }
    case 2:
        if (!pbw_get_varint(p, end, &f->v) || f->v > (uint64_t)(end - *p))
            goto malformed;
        f->data = *p;
        f->len = (size_t)f->v;
        *p += f->len;
        return true;
    default:
        goto malformed;
    }
malformed:
    *bad = true;
    return false;
}
