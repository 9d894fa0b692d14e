/* phone.h - the one rule for a phone number, as both ends check it: E.164, "+" then 7 to
 * 15 digits, the first not 0. */
#ifndef PARLEY_COMMON_PHONE_H
#define PARLEY_COMMON_PHONE_H

#include <stdbool.h>

#define PHONE_MAX 16 /* "+" and at most 15 digits */

bool phone_is_e164(const char *phone);

#endif
