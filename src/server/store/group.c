/* group.c - a group's rules and record (group.h). */
#include "group.h"

#include <string.h>

static bool same(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, STORE_ACCOUNT_ID_LEN) == 0;
}

int group_find(const store_group *g, const uint8_t account[STORE_ACCOUNT_ID_LEN])
{
    for (size_t i = 0; i < g->n; i++)
        if (same(g->members[i].account, account))
            return (int)i;
    return -1;
}

static size_t admins(const store_group *g)
{
    size_t n = 0;
    for (size_t i = 0; i < g->n; i++)
        n += g->members[i].admin;
    return n;
}

static bool add_member(store_group *g, const uint8_t account[STORE_ACCOUNT_ID_LEN], bool admin)
{
    if (group_find(g, account) >= 0)
        return false;
    memcpy(g->members[g->n].account, account, STORE_ACCOUNT_ID_LEN);
    g->members[g->n++].admin = admin;
    return true;
}

static void drop_member(store_group *g, size_t i)
{
    memmove(&g->members[i], &g->members[i + 1], (g->n - i - 1) * sizeof *g->members);
    g->n--;
}

/* Members the change would add that are not members yet: over the limit is refused. */
static size_t newcomers(const store_group *g, const store_group_change *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n_accounts; i++) {
        bool repeated = false;
        for (size_t k = 0; k < i && !repeated; k++)
            repeated = same(c->accounts[k], c->accounts[i]);
        n += !repeated && group_find(g, c->accounts[i]) < 0;
    }
    return n;
}

int group_create(store_group *g, const store_group_change *c)
{
    memset(g, 0, offsetof(store_group, members));
    memcpy(g->id, c->group_id, STORE_GROUP_ID_LEN);
    memcpy(g->subject, c->subject, sizeof g->subject);
    g->subject[STORE_SUBJECT_MAX] = '\0';
    memcpy(g->creator, c->from.device.account, STORE_ACCOUNT_ID_LEN);
    g->created_ms = c->now;
    g->version = 1;
    static const uint8_t defaults[GROUP_SETTINGS] = {GROUP_WHO_ADMINS, GROUP_WHO_ALL, GROUP_WHO_ALL};
    for (int i = 0; i < GROUP_SETTINGS; i++)
        g->settings[i] = c->settings[i] ? c->settings[i] : defaults[i];
    add_member(g, g->creator, true);
    if (1 + newcomers(g, c) > STORE_GROUP_MAX)
        return STORE_GROUP_FULL;
    for (size_t i = 0; i < c->n_accounts; i++)
        add_member(g, c->accounts[i], false);
    return STORE_OK;
}

/* The change on a copy of g's members (g itself is left alone until it went through). */
static int apply(store_group *g, const store_group_change *c, int actor, bool *changed,
                 uint8_t (*removed)[STORE_ACCOUNT_ID_LEN], size_t *n_removed)
{
    bool admin = g->members[actor].admin;
    switch (c->op) {
    case GROUP_OP_ADD:
        if (g->settings[GROUP_SET_ADD] == GROUP_WHO_ADMINS && !admin)
            return STORE_NOT_ADMIN;
        if (g->n + newcomers(g, c) > STORE_GROUP_MAX)
            return STORE_GROUP_FULL;
        for (size_t i = 0; i < c->n_accounts; i++)
            *changed |= add_member(g, c->accounts[i], false);
        return STORE_OK;
    case GROUP_OP_REMOVE:
        if (!admin)
            return STORE_NOT_ADMIN;
        for (size_t i = 0; i < c->n_accounts; i++) {
            int k = group_find(g, c->accounts[i]);
            if (k < 0 || k == actor) /* one leaves by GROUP_OP_LEAVE */
                continue;
            memcpy(removed[(*n_removed)++], g->members[k].account, STORE_ACCOUNT_ID_LEN);
            if (k < actor)
                actor--;
            drop_member(g, (size_t)k);
            *changed = true;
        }
        return STORE_OK;
    case GROUP_OP_LEAVE: {
        if (admin && admins(g) == 1 && g->n > 1) { /* names the next admin */
            int next = c->n_accounts == 1 ? group_find(g, c->accounts[0]) : -1;
            if (next < 0 || next == actor)
                return STORE_LAST_ADMIN;
            g->members[next].admin = true;
        }
        memcpy(removed[(*n_removed)++], g->members[actor].account, STORE_ACCOUNT_ID_LEN);
        drop_member(g, (size_t)actor);
        *changed = true;
        return STORE_OK;
    }
    case GROUP_OP_PROMOTE:
    case GROUP_OP_DEMOTE: {
        if (!admin)
            return STORE_NOT_ADMIN;
        bool to = c->op == GROUP_OP_PROMOTE;
        for (size_t i = 0; i < c->n_accounts; i++) {
            int k = group_find(g, c->accounts[i]);
            if (k < 0 || g->members[k].admin == to)
                continue;
            if (!to && admins(g) == 1)
                return STORE_LAST_ADMIN;
            g->members[k].admin = to;
            *changed = true;
        }
        return STORE_OK;
    }
    case GROUP_OP_SUBJECT:
        if (g->settings[GROUP_SET_SUBJECT] == GROUP_WHO_ADMINS && !admin)
            return STORE_NOT_ADMIN;
        *changed = strcmp(g->subject, c->subject) != 0;
        memcpy(g->subject, c->subject, sizeof g->subject);
        g->subject[STORE_SUBJECT_MAX] = '\0';
        return STORE_OK;
    case GROUP_OP_SETTINGS:
        if (!admin)
            return STORE_NOT_ADMIN;
        for (int i = 0; i < GROUP_SETTINGS; i++)
            if (c->settings[i] && c->settings[i] != g->settings[i]) {
                g->settings[i] = c->settings[i];
                *changed = true;
            }
        return STORE_OK;
    default:
        return STORE_INVALID;
    }
}

int group_apply(store_group *g, const store_group_change *c, bool *changed,
                uint8_t (*removed)[STORE_ACCOUNT_ID_LEN], size_t *n_removed)
{
    *changed = false;
    *n_removed = 0;
    int actor = group_find(g, c->from.device.account);
    if (actor < 0)
        return STORE_NOT_MEMBER;
    /* the rules run on a copy of the members, so that a refusal half way changes nothing */
    store_group_member saved[STORE_GROUP_MAX];
    size_t n = g->n;
    char subject[sizeof g->subject];
    uint8_t settings[GROUP_SETTINGS];
    memcpy(saved, g->members, n * sizeof *saved);
    memcpy(subject, g->subject, sizeof subject);
    memcpy(settings, g->settings, sizeof settings);
    int rc = apply(g, c, actor, changed, removed, n_removed);
    if (rc != STORE_OK || !*changed) {
        memcpy(g->members, saved, n * sizeof *saved);
        g->n = n;
        memcpy(g->subject, subject, sizeof subject);
        memcpy(g->settings, settings, sizeof settings);
        *changed = false;
        *n_removed = 0;
        return rc;
    }
    g->version++;
    return STORE_OK;
}

int group_may_send(const store_group *g, const uint8_t account[STORE_ACCOUNT_ID_LEN])
{
    int i = group_find(g, account);
    if (i < 0)
        return STORE_NOT_MEMBER;
    return g->settings[GROUP_SET_SEND] == GROUP_WHO_ADMINS && !g->members[i].admin ? STORE_NOT_ADMIN : STORE_OK;
}

/* ---- the record: version(8) created_ms(8) creator(16) settings(3) subject_len(1)
 * subject members(2) then account(16) admin(1) for each, numbers big-endian ---------- */

static uint8_t *put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        *p++ = (uint8_t)(v >> (56 - 8 * i));
    return p;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

size_t group_encode(const store_group *g, uint8_t *out)
{
    uint8_t *p = put64(put64(out, g->version), g->created_ms);
    memcpy(p, g->creator, STORE_ACCOUNT_ID_LEN);
    p += STORE_ACCOUNT_ID_LEN;
    memcpy(p, g->settings, GROUP_SETTINGS);
    p += GROUP_SETTINGS;
    size_t sl = strlen(g->subject);
    *p++ = (uint8_t)sl;
    memcpy(p, g->subject, sl);
    p += sl;
    *p++ = (uint8_t)(g->n >> 8);
    *p++ = (uint8_t)g->n;
    for (size_t i = 0; i < g->n; i++) {
        memcpy(p, g->members[i].account, STORE_ACCOUNT_ID_LEN);
        p += STORE_ACCOUNT_ID_LEN;
        *p++ = g->members[i].admin;
    }
    return (size_t)(p - out);
}

#define HEAD (8 + 8 + STORE_ACCOUNT_ID_LEN + GROUP_SETTINGS + 1)

/* The fixed part and the subject; *members points at the member count. */
static int decode_head(store_group *g, const uint8_t *p, size_t len, const uint8_t **members, size_t *n)
{
    if (len < HEAD)
        return STORE_INVALID;
    size_t sl = p[HEAD - 1];
    if (sl > STORE_SUBJECT_MAX || len < HEAD + sl + 2)
        return STORE_INVALID;
    g->version = get64(p);
    g->created_ms = get64(p + 8);
    memcpy(g->creator, p + 16, STORE_ACCOUNT_ID_LEN);
    memcpy(g->settings, p + 16 + STORE_ACCOUNT_ID_LEN, GROUP_SETTINGS);
    memcpy(g->subject, p + HEAD, sl);
    g->subject[sl] = '\0';
    *members = p + HEAD + sl;
    *n = (size_t)(*members)[0] << 8 | (*members)[1];
    if (*n > STORE_GROUP_MAX || len != HEAD + sl + 2 + *n * (STORE_ACCOUNT_ID_LEN + 1))
        return STORE_INVALID;
    *members += 2;
    return STORE_OK;
}

int group_decode(store_group *g, const uint8_t id[STORE_GROUP_ID_LEN], const uint8_t *p, size_t len)
{
    const uint8_t *m;
    size_t n;
    int rc = decode_head(g, p, len, &m, &n);
    if (rc != STORE_OK)
        return rc;
    memcpy(g->id, id, STORE_GROUP_ID_LEN);
    g->n = n;
    for (size_t i = 0; i < n; i++, m += STORE_ACCOUNT_ID_LEN + 1) {
        memcpy(g->members[i].account, m, STORE_ACCOUNT_ID_LEN);
        g->members[i].admin = m[STORE_ACCOUNT_ID_LEN] != 0;
    }
    return STORE_OK;
}

int group_decode_summary(store_group_summary *s, const uint8_t id[STORE_GROUP_ID_LEN], const uint8_t *p,
                         size_t len)
{
    store_group head; /* its members are not touched */
    const uint8_t *m;
    size_t n;
    int rc = decode_head(&head, p, len, &m, &n);
    if (rc != STORE_OK)
        return rc;
    memcpy(s->id, id, STORE_GROUP_ID_LEN);
    memcpy(s->subject, head.subject, sizeof s->subject);
    s->version = head.version;
    s->members = n;
    return STORE_OK;
}
