/* reply.c - frames out of a session, and the one place a failure becomes the client's
 * Error (session.h). */
#include <stdlib.h>

#include "session.h"

void session_send_frame(session *s, Parley__Frame *f)
{
    f->has_version = 1;
    f->version = PARLEY_PROTOCOL_VERSION;
    size_t n = parley__frame__get_packed_size(f);
    uint8_t stack[512], *buf = n <= sizeof stack ? stack : malloc(n);
    if (!buf) {
        ws_conn_abort(s->conn);
        return;
    }
    parley__frame__pack(f, buf);
    ws_conn_send(s->conn, WS_OP_BINARY, buf, n);
    if (buf != stack)
        free(buf);
}

void session_reply(session *s, uint64_t request_id, Parley__Frame *f)
{
    f->has_request_id = request_id != 0;
    f->request_id = request_id;
    session_send_frame(s, f);
}

void session_error_full(session *s, uint64_t request_id, uint32_t code, const char *reason,
                        uint32_t retry_after_ms, Parley__DeviceList *devices)
{
    Parley__Error e = PARLEY__ERROR__INIT;
    e.has_code = 1;
    e.code = code;
    e.reason = (char *)(reason ? reason : perr_text(code));
    e.has_retry_after_ms = retry_after_ms != 0;
    e.retry_after_ms = retry_after_ms;
    e.devices = devices;
    Parley__Frame f = PARLEY__FRAME__INIT;
    f.body_case = PARLEY__FRAME__BODY_ERROR;
    f.error = &e;
    session_reply(s, request_id, &f);
    /* a peer that keeps sending what it may not is closed, not answered without end: any
     * error before authentication counts, after it only frames that make no sense */
    bool counts = s->state != SESSION_AUTHENTICATED || code == PERR_MALFORMED_FRAME || code == PERR_UNKNOWN_FRAME ||
                  code == PERR_NOT_AUTHENTICATED;
    if (counts && ++s->errors >= SESSION_MAX_ERRORS && session_open(s))
        ws_conn_close(s->conn, WS_CLOSE_POLICY, "too many errors");
}

void session_error(session *s, uint64_t request_id, uint32_t code, const char *reason)
{
    session_error_full(s, request_id, code, reason, 0, NULL);
}

void session_close_replaced(session *s, bool replaced)
{
    ws_conn_close(s->conn, PARLEY_CLOSE_REPLACED,
                  replaced ? "this device was replaced by a new registration" : "replaced by a newer connection");
}

void session_store_error(session *s, uint64_t request_id, int status)
{
    session_store_error_retry(s, request_id, status, 0);
}

void session_store_error_retry(session *s, uint64_t request_id, int status, uint64_t retry_ms)
{
    switch (status) {
    case STORE_DAILY_QUOTA:
        session_error_full(s, request_id, PERR_DAILY_QUOTA, NULL, retry_ms < UINT32_MAX ? (uint32_t)retry_ms : UINT32_MAX,
                           NULL);
        break;
    case STORE_GROUP_QUOTA:
        session_error_full(s, request_id, PERR_GROUP_QUOTA, NULL, retry_ms < UINT32_MAX ? (uint32_t)retry_ms : UINT32_MAX,
                           NULL);
        break;
    case STORE_UNKNOWN_ACCOUNT:
        session_error(s, request_id, PERR_UNKNOWN_ACCOUNT, "no such account");
        break;
    case STORE_UNKNOWN_GROUP: session_error(s, request_id, PERR_UNKNOWN_GROUP, NULL); break;
    case STORE_NOT_MEMBER: session_error(s, request_id, PERR_NOT_GROUP_MEMBER, NULL); break;
    case STORE_NOT_ADMIN: session_error(s, request_id, PERR_NOT_GROUP_ADMIN, NULL); break;
    case STORE_GROUP_FULL: session_error(s, request_id, PERR_GROUP_FULL, NULL); break;
    case STORE_LAST_ADMIN: session_error(s, request_id, PERR_LAST_ADMIN, NULL); break;
    case STORE_EXISTS:
        session_error(s, request_id, PERR_MALFORMED_FRAME, "that group id is taken: choose another (128 random bits)");
        break;
    case STORE_REPLACED:
        session_error(s, request_id, PERR_AUTH_FAILED, "this device was replaced by a new registration");
        session_close_replaced(s, true);
        break;
    case STORE_TOO_MANY_PREKEYS:
        session_error(s, request_id, PERR_TOO_MANY_PREKEYS,
                      "the device would hold more than 1000 one-time prekeys; nothing was stored");
        break;
    case STORE_PREKEY_CONFLICT:
        session_error(s, request_id, PERR_INVALID_PREKEY,
                      "a one-time prekey id is already in use with another key; nothing was stored");
        break;
    case STORE_INBOX_FULL:
        session_error(s, request_id, PERR_INBOX_FULL, NULL);
        break;
    case STORE_FULL:
        session_error(s, request_id, PERR_STORAGE_FULL, NULL);
        break;
    default:
        session_error(s, request_id, PERR_INTERNAL, store_strerror(status));
    }
}
