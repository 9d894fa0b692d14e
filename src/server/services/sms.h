/* sms.h - sending one verification code by the configured provider: "file:PATH" appends
 * a JSON line, "http://HOST[:PORT]/PATH" POSTs one JSON object (docs/protocol.md). */
#ifndef PARLEY_SERVICES_SMS_H
#define PARLEY_SERVICES_SMS_H

#include <stddef.h>

/* Blocking: run off the loop. Returns 0, or -1 with err for the log. */
int sms_send(const char *provider, const char *phone, const char *code, char *err, size_t errlen);

#endif
