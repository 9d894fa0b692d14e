/* keys_rules.h - the keys directory's rules, shared by registration (register.c) and
 * the UploadKeys and FetchBundles requests (keys.c). */
#ifndef PARLEY_SERVICES_KEYS_RULES_H
#define PARLEY_SERVICES_KEYS_RULES_H

#include <stdint.h>

#include "parley.pb-c.h"
#include "store.h"

#define KEYS_MAX_HELD 1000      /* one-time prekeys held per device */
#define KEYS_LOW 20             /* below this many the device is told to upload more */
#define KEYS_MAX_ID 0xFFFFFFu   /* prekey ids are 24-bit, as in Signal */

/* Checks an upload for the device whose identity key is given: lengths, ids, keys,
 * the signed prekey's signature. Runs on an I/O thread (the signature check costs CPU,
 * not the writer's time). Returns 0, or an error code with *why for a person. */
uint32_t keys_parse(store_keys *out, const Parley__UploadKeys *m, const uint8_t identity[STORE_KEY_LEN],
                    const char **why);

#endif
