/* sms.h - sending one verification code by the configured provider: "file:PATH" appends
 * a JSON line, "http://HOST[:PORT]/PATH" POSTs one JSON object (docs/protocol.md). */
#ifndef PARLEY_SERVICES_SMS_H
#define PARLEY_SERVICES_SMS_H

#include <stddef.h>

/* Blocking: run off the loop. Returns 0, or -1 with err for the log. A file past
 * file_max bytes is renamed PATH.1 (replacing the last) before the line goes in
 * (0: never). */
int sms_send(const char *provider, size_t file_max, const char *phone, const char *code, char *err, size_t errlen);

#endif
