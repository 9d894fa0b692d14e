/* groups.c - GroupCreate, GroupChange, GroupGet, GroupList (docs/protocol.md, "Groups"):
 * checked here for form, then the store applies the group's rules (group.h) and commits
 * the change with its event, which goes to every member device; the answer is the group
 * as the change left it, sent only after that commit. Group messages are Sends
 * (send.c). */
#include <stdlib.h>

#include "envelope.h"
#include "group.h"
#include "services.h"
#include "utf8.h"

typedef struct {
    store_group_change r;
    session_ask ask;
    uint8_t accounts[][STORE_ACCOUNT_ID_LEN];
} change_request;

/* Answers with g as a GroupInfo (or an Error carrying it, for GROUP_STALE). */
static void reply_group(session *s, uint64_t rid, const store_group *g, uint32_t error)
{
    Parley__GroupMember *members = calloc(g->n ? g->n : 1, sizeof *members);
    Parley__GroupMember **list = calloc(g->n ? g->n : 1, sizeof *list);
    if (!members || !list) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
    } else {
        Parley__GroupInfo info;
        Parley__GroupSettings settings;
        group_info_fill(&info, &settings, members, list, g, true);
        Parley__Frame f = PARLEY__FRAME__INIT;
        Parley__Error e = PARLEY__ERROR__INIT;
        if (error) {
            e.has_code = 1;
            e.code = error;
            e.reason = (char *)perr_text(error);
            e.group = &info;
            f.body_case = PARLEY__FRAME__BODY_ERROR;
            f.error = &e;
        } else {
            f.body_case = PARLEY__FRAME__BODY_GROUP_INFO;
            f.group_info = &info;
        }
        session_reply(s, rid, &f);
    }
    free(members);
    free(list);
}

void groups_reply_stale(session *s, uint64_t rid, const store_group *g)
{
    reply_group(s, rid, g, PERR_GROUP_STALE);
}

static void changed(store_req *req, int status)
{
    change_request *j = (change_request *)req;
    session *s = j->ask.s;
    if (status == STORE_OK)
        session_wake(j->ask.srv, &j->r.targets);
    if (session_returned(s)) {
        if (status == STORE_OK)
            reply_group(s, j->ask.request_id, j->r.group, 0);
        else
            session_store_error_retry(s, j->ask.request_id, status, j->r.retry_ms);
    }
    store_entries_free(&j->r.targets);
    free(j->r.group);
    free(j->r.removed);
    free(j);
}

static bool subject_ok(const char *subject)
{
    size_t n = subject ? strlen(subject) : 0;
    return n >= 1 && n <= STORE_SUBJECT_MAX && utf8_valid((const uint8_t *)subject, n);
}

/* Settings as the wire has them into r->settings (0: unchanged); false if one is not a
 * GroupWho. */
static bool settings_of(const Parley__GroupSettings *m, store_group_change *r)
{
    if (!m)
        return true;
    const struct { protobuf_c_boolean has; uint32_t v; } in[GROUP_SETTINGS] = {
        [GROUP_SET_ADD] = {m->has_add, m->add},
        [GROUP_SET_SEND] = {m->has_send, m->send},
        [GROUP_SET_SUBJECT] = {m->has_edit_subject, m->edit_subject}};
    for (int i = 0; i < GROUP_SETTINGS; i++) {
        if (in[i].has && in[i].v != GROUP_WHO_ADMINS && in[i].v != GROUP_WHO_ALL)
            return false;
        r->settings[i] = in[i].has ? (uint8_t)in[i].v : 0;
    }
    return true;
}

/* A request with room for n accounts, copied from the wire (each 16 bytes, else NULL). */
static change_request *new_change(session *s, uint64_t rid, const ProtobufCBinaryData *gid,
                                  const ProtobufCBinaryData *accounts, size_t n)
{
    if (gid->len != STORE_GROUP_ID_LEN) {
        session_error(s, rid, PERR_MALFORMED_FRAME, "group_id must be 16 bytes");
        return NULL;
    }
    if (n > STORE_GROUP_MAX) {
        session_error(s, rid, PERR_GROUP_FULL, NULL);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (accounts[i].len != STORE_ACCOUNT_ID_LEN) {
            session_error(s, rid, PERR_MALFORMED_FRAME, "each account id must be 16 bytes");
            return NULL;
        }
    change_request *j = calloc(1, sizeof *j + (n ? n : 1) * STORE_ACCOUNT_ID_LEN);
    if (!j) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return NULL;
    }
    memcpy(j->r.group_id, gid->data, STORE_GROUP_ID_LEN);
    for (size_t i = 0; i < n; i++)
        memcpy(j->accounts[i], accounts[i].data, STORE_ACCOUNT_ID_LEN);
    j->r.accounts = j->accounts;
    j->r.n_accounts = n;
    session_origin(s, &j->r.from);
    j->r.now = clock_wall_ms();
    j->r.creates_per_day = session_server(s)->cfg.group_creates;
    return j;
}

static void submit_change(session *s, uint64_t rid, change_request *j)
{
    j->r.req.done = changed;
    session_ask_begin(&j->ask, s, rid);
    store_change_group(session_server(s)->st, session_thread(s)->home, &j->r);
}

static void on_create(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__GroupCreate *m = f->group_create;
    if (!m->has_group_id || !subject_ok(m->subject)) {
        session_error(s, rid, PERR_MALFORMED_FRAME,
                      "GroupCreate needs group_id (16 bytes) and a subject of 1 to 100 bytes of UTF-8");
        return;
    }
    change_request *j = new_change(s, rid, &m->group_id, m->members, m->n_members);
    if (!j)
        return;
    j->r.op = GROUP_OP_CREATE;
    strcpy(j->r.subject, m->subject);
    if (!settings_of(m->settings, &j->r)) {
        session_error(s, rid, PERR_MALFORMED_FRAME, "each setting is GROUP_ADMINS (1) or GROUP_ALL (2)");
        free(j);
        return;
    }
    submit_change(s, rid, j);
}

static void on_change(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__GroupChange *m = f->group_change;
    uint32_t op = m->has_op ? m->op : 0;
    bool named = op == GROUP_OP_ADD || op == GROUP_OP_REMOVE || op == GROUP_OP_PROMOTE || op == GROUP_OP_DEMOTE;
    const char *bad = NULL;
    if (!m->has_group_id || op <= GROUP_OP_CREATE || op > GROUP_OP_SETTINGS)
        bad = "GroupChange needs group_id and an op from GROUP_ADD (2) to GROUP_SETTINGS (8)";
    else if (named && m->n_accounts == 0)
        bad = "this op names the accounts it changes";
    else if (op == GROUP_OP_LEAVE && m->n_accounts > 1)
        bad = "GROUP_LEAVE names at most the member who becomes admin";
    else if (op == GROUP_OP_SUBJECT && !subject_ok(m->subject))
        bad = "GROUP_SUBJECT needs a subject of 1 to 100 bytes of UTF-8";
    else if (op == GROUP_OP_SETTINGS && !m->settings)
        bad = "GROUP_SETTINGS needs settings";
    if (bad) {
        session_error(s, rid, PERR_MALFORMED_FRAME, bad);
        return;
    }
    change_request *j = new_change(s, rid, &m->group_id, m->accounts, m->n_accounts);
    if (!j)
        return;
    j->r.op = (uint8_t)op;
    if (op == GROUP_OP_SUBJECT)
        strcpy(j->r.subject, m->subject);
    if (!settings_of(op == GROUP_OP_SETTINGS ? m->settings : NULL, &j->r)) {
        session_error(s, rid, PERR_MALFORMED_FRAME, "each setting is GROUP_ADMINS (1) or GROUP_ALL (2)");
        free(j);
        return;
    }
    submit_change(s, rid, j);
}

/* Reads complete inline (store.h): the answer goes from done. */
typedef struct {
    store_group_query r;
    session_ask ask;
} query_request;

static void queried(store_req *req, int status)
{
    query_request *j = (query_request *)req;
    session *s = j->ask.s;
    if (session_returned(s)) {
        uint64_t rid = j->ask.request_id;
        if (status != STORE_OK) {
            session_store_error(s, rid, status);
        } else if (!j->r.list) { /* members only: who left or was removed sees no more */
            if (group_find(j->r.group, s->device.account) < 0)
                session_error(s, rid, PERR_NOT_GROUP_MEMBER, NULL);
            else
                reply_group(s, rid, j->r.group, 0);
        } else {
            Parley__GroupInfo *infos = calloc(j->r.n ? j->r.n : 1, sizeof *infos);
            Parley__GroupInfo **list = calloc(j->r.n ? j->r.n : 1, sizeof *list);
            if (!infos || !list) {
                session_error(s, rid, PERR_INTERNAL, "out of memory");
            } else {
                for (size_t i = 0; i < j->r.n; i++) {
                    const store_group_summary *g = &j->r.groups[i];
                    parley__group_info__init(&infos[i]);
                    infos[i].has_group_id = infos[i].has_version = infos[i].has_member_count = 1;
                    infos[i].group_id = (ProtobufCBinaryData){STORE_GROUP_ID_LEN, (uint8_t *)g->id};
                    infos[i].subject = (char *)g->subject;
                    infos[i].version = g->version;
                    infos[i].member_count = (uint32_t)g->members;
                    list[i] = &infos[i];
                }
                Parley__Groups out = PARLEY__GROUPS__INIT;
                out.n_groups = j->r.n;
                out.groups = list;
                Parley__Frame f = PARLEY__FRAME__INIT;
                f.body_case = PARLEY__FRAME__BODY_GROUPS;
                f.groups = &out;
                session_reply(s, rid, &f);
            }
            free(infos);
            free(list);
        }
    }
    free(j->r.group);
    free(j->r.groups);
    free(j);
}

static void query(session *s, uint64_t rid, bool list, const ProtobufCBinaryData *gid)
{
    query_request *j = calloc(1, sizeof *j);
    if (!j) {
        session_error(s, rid, PERR_INTERNAL, "out of memory");
        return;
    }
    j->r.list = list;
    if (gid)
        memcpy(j->r.group_id, gid->data, STORE_GROUP_ID_LEN);
    memcpy(j->r.account, s->device.account, STORE_ACCOUNT_ID_LEN);
    j->r.req.done = queried;
    session_ask_begin(&j->ask, s, rid);
    store_get_group(session_server(s)->st, session_thread(s)->home, &j->r);
}

static void on_get(session *s, uint64_t rid, const Parley__Frame *f)
{
    const Parley__GroupGet *m = f->group_get;
    if (!m->has_group_id || m->group_id.len != STORE_GROUP_ID_LEN) {
        session_error(s, rid, PERR_MALFORMED_FRAME, "GroupGet needs group_id (16 bytes)");
        return;
    }
    query(s, rid, false, &m->group_id);
}

static void on_list(session *s, uint64_t rid, const Parley__Frame *f)
{
    (void)f;
    query(s, rid, true, NULL);
}

static const frame_route routes[] = {
    {PARLEY__FRAME__BODY_GROUP_CREATE, true, RATE_SENDS, on_create},
    {PARLEY__FRAME__BODY_GROUP_CHANGE, true, RATE_SENDS, on_change},
    {PARLEY__FRAME__BODY_GROUP_GET, true, RATE_LOOKUPS, on_get},
    {PARLEY__FRAME__BODY_GROUP_LIST, true, RATE_LOOKUPS, on_list},
    {0},
};

const service groups_service = {.name = "groups", .routes = routes};
