/* targets.c - envelopes bound for device inboxes (targets.h). */
#include "targets.h"

#include <stdlib.h>
#include <string.h>

#include "peer.h"

#define MAX_DEVICES 64 /* devices listed per account (store bound) */

bool buf_grow(void *buf, size_t *cap, size_t need, size_t first)
{
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : first;
    while (n < need)
        n *= 2;
    void *p = realloc(*(void **)buf, n);
    if (!p)
        return false;
    *(void **)buf = p;
    *cap = n;
    return true;
}

void targets_free(target_list *l)
{
    free(l->items);
    free(l->buf);
    memset(l, 0, sizeof *l);
}

int targets_add(target_list *l, const store_device *d, const Parley__Envelope *e)
{
    size_t len = parley__envelope__get_packed_size(e);
    size_t items_bytes = l->cap * sizeof *l->items;
    if (!buf_grow(&l->items, &items_bytes, (l->n + 1) * sizeof *l->items, 4 * sizeof *l->items) ||
        !buf_grow(&l->buf, &l->buf_cap, l->used + len, 256))
        return STORE_NOMEM;
    l->cap = items_bytes / sizeof *l->items;
    parley__envelope__pack(e, l->buf + l->used);
    l->items[l->n++] = (target){.device = *d, .offset = l->used, .len = len};
    l->used += len;
    return STORE_OK;
}

int targets_append(store_batch *b, const target_list *l, uint64_t now)
{
    for (size_t i = 0; i < l->n; i++) {
        uint64_t seq;
        int rc = store_inbox_append(b, &l->items[i].device, now, l->buf + l->items[i].offset,
                                    l->items[i].len, &seq);
        if (rc != STORE_OK)
            return rc;
    }
    return STORE_OK;
}

void targets_wake(server *srv, const target_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        if (i == 0 || memcmp(&l->items[i].device, &l->items[i - 1].device, sizeof(store_device)) != 0)
            routes_wake(srv, &l->items[i].device);
}

int targets_add_account(store_batch *b, const uint8_t account[STORE_ACCOUNT_ID_LEN],
                        const store_device *skip, const Parley__Envelope *e, target_list *l)
{
    uint32_t ids[MAX_DEVICES];
    size_t n;
    int rc = store_batch_account_devices(b, account, ids, MAX_DEVICES, &n);
    if (rc != STORE_OK)
        return rc;
    if (n == 0)
        return JOB_UNKNOWN_ACCOUNT;
    for (size_t i = 0; i < n; i++) {
        store_device d = {.device = ids[i]};
        memcpy(d.account, account, STORE_ACCOUNT_ID_LEN);
        if (skip && skip->device == d.device && same_account(skip->account, account))
            continue;
        if ((rc = targets_add(l, &d, e)) != STORE_OK)
            return rc;
    }
    return STORE_OK;
}
