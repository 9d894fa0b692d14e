/* keys.h - the keys directory's rules, shared by registration (peer.c) and the
 * UploadKeys and FetchBundles requests (keys.c). */
#ifndef PARLEY_SERVER_KEYS_H
#define PARLEY_SERVER_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "parley.pb-c.h"
#include "store.h"

#define KEYS_MAX_UPLOAD 100     /* one-time prekeys in one upload */
#define KEYS_MAX_HELD 1000      /* one-time prekeys held per device */
#define KEYS_LOW 20             /* below this many the device is told to upload more */
#define KEYS_MAX_ID 0xFFFFFFu   /* prekey ids are 24-bit, as in Signal */

/* Job results beyond JOB_* (peer.h). */
enum { JOB_TOO_MANY_PREKEYS = 110, JOB_PREKEY_CONFLICT = 111 };

struct keys_upload {
    bool has_signed;
    store_signed_prekey signed_prekey;
    size_t n;
    store_prekey prekeys[KEYS_MAX_UPLOAD];
};

/* Checks an upload for the device whose identity key is given: lengths, ids, keys,
 * the signed prekey's signature. Runs on an I/O thread (the signature check costs CPU,
 * not the writer's time). Returns 0, or an ErrorCode with *why for a person. */
uint32_t keys_upload_parse(struct keys_upload *out, const Parley__UploadKeys *m,
                           const uint8_t identity[STORE_KEY_LEN], const char **why);

/* On the writer thread: stores the upload for d; *left gets the one-time prekeys held
 * after it. JOB_TOO_MANY_PREKEYS or JOB_PREKEY_CONFLICT refuse it. */
int keys_upload_apply(store_batch *b, const store_device *d, const struct keys_upload *u,
                      uint64_t now, size_t *left);

/* The answer to a job that ended with status (a keys error, or peer_job_error's). */
struct ws_conn;
void keys_job_error(struct ws_conn *c, uint64_t request_id, int status);

#endif
