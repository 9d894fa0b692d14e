/* group.h - a group's record and the rules of its changes, for every backend: who may
 * do what (the group's settings, its admins), what each change does to the members, and
 * the record's bytes in a store. No I/O: a backend reads the record, applies a change
 * here, and writes it back in one commit with the change's event.
 *
 * A group has at most STORE_GROUP_MAX members (accounts); the creator is its first
 * admin; its version starts at 1 and grows by one with every change. Refusals are
 * STORE_* codes (store.h): STORE_NOT_MEMBER, STORE_NOT_ADMIN, STORE_GROUP_FULL,
 * STORE_LAST_ADMIN. A change that would change nothing (adding a member twice, a retry)
 * is not refused: it is a no-op, reported so that no event is written for it. */
#ifndef PARLEY_STORE_GROUP_H
#define PARLEY_STORE_GROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

enum { /* the wire's GroupOp */
    GROUP_OP_CREATE = 1,
    GROUP_OP_ADD,
    GROUP_OP_REMOVE,
    GROUP_OP_LEAVE,   /* accounts: none, or the member the last admin names as admin */
    GROUP_OP_PROMOTE,
    GROUP_OP_DEMOTE,
    GROUP_OP_SUBJECT,
    GROUP_OP_SETTINGS,
};

enum { GROUP_WHO_ADMINS = 1, GROUP_WHO_ALL = 2 }; /* the wire's GroupWho */
enum { GROUP_SET_ADD, GROUP_SET_SEND, GROUP_SET_SUBJECT, GROUP_SETTINGS };

typedef struct {
    uint8_t account[STORE_ACCOUNT_ID_LEN];
    bool admin;
} store_group_member;

struct store_group {
    uint8_t id[STORE_GROUP_ID_LEN];
    char subject[STORE_SUBJECT_MAX + 1];
    uint8_t creator[STORE_ACCOUNT_ID_LEN];
    uint64_t created_ms, version;
    uint8_t settings[GROUP_SETTINGS];    /* GROUP_WHO_* by GROUP_SET_* */
    size_t n;
    store_group_member members[STORE_GROUP_MAX];
};

/* What a list of an account's groups shows of each. */
struct store_group_summary {
    uint8_t id[STORE_GROUP_ID_LEN];
    char subject[STORE_SUBJECT_MAX + 1];
    uint64_t version;
    size_t members;
};

/* The index of account among g's members, or -1. */
int group_find(const store_group *g, const uint8_t account[STORE_ACCOUNT_ID_LEN]);

/* A new group as c (a create) asks: the origin's account its first admin, the given
 * members (repeats dropped), the default settings (admins add, all send and set the
 * subject) where c leaves them 0. STORE_GROUP_FULL. */
int group_create(store_group *g, const store_group_change *c);

/* Applies c (not a create) to g, by c's origin's account. On a refusal g is unchanged.
 * *changed: false for a no-op. removed gets the accounts that are no longer members
 * (STORE_GROUP_MAX room; *n_removed of them), who still get the change's event. */
int group_apply(store_group *g, const store_group_change *c, bool *changed,
                uint8_t (*removed)[STORE_ACCOUNT_ID_LEN], size_t *n_removed);

/* May account send to g? STORE_OK, STORE_NOT_MEMBER or STORE_NOT_ADMIN. */
int group_may_send(const store_group *g, const uint8_t account[STORE_ACCOUNT_ID_LEN]);

/* The record's bytes: at most GROUP_RECORD_MAX; decode checks every length
 * (STORE_INVALID). A summary decodes without the members. */
#define GROUP_RECORD_MAX (8 + 8 + STORE_ACCOUNT_ID_LEN + GROUP_SETTINGS + 1 + STORE_SUBJECT_MAX + 2 + \
                          STORE_GROUP_MAX * (STORE_ACCOUNT_ID_LEN + 1))
size_t group_encode(const store_group *g, uint8_t *out);
int group_decode(store_group *g, const uint8_t id[STORE_GROUP_ID_LEN], const uint8_t *p, size_t len);
int group_decode_summary(store_group_summary *s, const uint8_t id[STORE_GROUP_ID_LEN], const uint8_t *p,
                         size_t len);

#endif
