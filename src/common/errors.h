/* errors.h - the one table of Parley's error codes: the numbers are the wire's
 * (proto/parley.proto, enum ErrorCode, in Error.code), the names are stable and used
 * as they are in logs, in the client's messages and in tests; the text is the default
 * sentence for a person when an answer has nothing more precise to say.
 *
 * Add a code here and in the proto together (tests/unit/test_errors.c checks that the
 * two lists agree, name for name and number for number). */
#ifndef PARLEY_COMMON_ERRORS_H
#define PARLEY_COMMON_ERRORS_H

#include <stdint.h>

#define PARLEY_ERRORS(X)                                                                            \
    X(MALFORMED_FRAME, 1, "not a Parley frame, or a required field is missing")                     \
    X(UNSUPPORTED_VERSION, 2, "this server speaks protocol version 1")                              \
    X(UNKNOWN_FRAME, 3, "a frame type this server does not know")                                   \
    X(TEXT_FRAME, 4, "send binary frames: text frames are not part of the protocol")                \
    X(FRAME_TOO_LARGE, 5, "the frame is too large")                                                 \
    X(NOT_AUTHENTICATED, 6, "authenticate first")                                                   \
    X(AUTH_FAILED, 7, "authentication failed")                                                      \
    X(INVALID_PHONE, 8, "not an E.164 phone number")                                                \
    X(CODE_RATE_LIMITED, 9, "too many codes for this number; try again within the hour")            \
    X(WRONG_CODE, 10, "wrong code")                                                                 \
    X(CODE_EXPIRED, 11, "the code expired; request a new one")                                      \
    X(TOO_MANY_ATTEMPTS, 12, "too many wrong codes; request a new one")                             \
    X(UNKNOWN_ACCOUNT, 13, "no such account")                                                       \
    X(DEVICE_MISMATCH, 14, "the device list changed; encrypt for these devices and send again")     \
    X(TOO_MANY_RECIPIENTS, 15, "too many device messages in one Send")                              \
    X(RATE_LIMITED, 16, "too many requests; slow down")                                             \
    X(CONNECTION_RATE_LIMITED, 17, "too many new connections from this address; try again later")   \
    X(INVALID_KEY, 18, "identity_key must be a 33-byte Curve25519 key (0x05 || u)")                 \
    X(STORAGE_FULL, 19, "the server cannot store this now; nothing was stored, try again later")    \
    X(INTERNAL, 20, "an internal error")                                                            \
    X(BAD_SIGNATURE, 21, "a signature does not verify")                                             \
    X(INVALID_PREKEY, 22, "a prekey with a bad length or id, or an id already in use")              \
    X(TOO_MANY_PREKEYS, 23, "too many one-time prekeys")                                            \
    X(PLAINTEXT_REFUSED, 24, "device messages must be end-to-end encrypted (type 2, 3 or 7)")        \
    X(INBOX_FULL, 25, "the recipient's inbox on the server is full; nothing was stored")              \
    X(DAILY_QUOTA, 26, "this account sent all it may today; nothing was stored, try again tomorrow") \
    X(GROUP_STALE, 27, "the group's members changed; encrypt for them and send again")              \
    X(NOT_GROUP_ADMIN, 28, "only the group's admins may do that")                                   \
    X(NOT_GROUP_MEMBER, 29, "not a member of this group")                                           \
    X(GROUP_FULL, 30, "a group has at most 1,024 members")                                          \
    X(UNKNOWN_GROUP, 31, "no such group")                                                           \
    X(LAST_ADMIN, 32, "the last admin must name another admin before leaving")                      \
    X(GROUP_QUOTA, 33, "this account created all the groups it may today; try again tomorrow")

typedef enum {
    PERR_OK = 0,
#define PERR_ENUM(name, code, text) PERR_##name = code,
    PARLEY_ERRORS(PERR_ENUM)
#undef PERR_ENUM
} perr_code;

/* The code's stable name ("WRONG_CODE"), or "UNKNOWN" for a code this build does not
 * know (a newer server's). */
const char *perr_name(uint32_t code);

/* The default sentence for the code; "an unknown error" for one this build does not know. */
const char *perr_text(uint32_t code);

#endif
