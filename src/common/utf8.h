/* utf8.h - UTF-8 validation (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
#ifndef PARLEY_COMMON_UTF8_H
#define PARLEY_COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True when s[0..len) is well-formed UTF-8 (NUL bytes included). */
bool utf8_valid(const uint8_t *s, size_t len);

#endif
