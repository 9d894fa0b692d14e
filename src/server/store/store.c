/* store.c - what every backend shares (store.h): status texts, envelope lists, and the
 * request functions, each of which tags its request and hands it to the backend. */
#include "store.h"

#include <stdlib.h>
#include <string.h>

#include "store_kinds.h"

const char *store_strerror(int rc)
{
    switch (rc) {
    case STORE_OK: return "ok";
    case STORE_NOT_FOUND: return "not found";
    case STORE_EXISTS: return "the id is in use with other content";
    case STORE_UNKNOWN_ACCOUNT: return "no such account";
    case STORE_DEVICE_MISMATCH: return "the device list changed";
    case STORE_REPLACED: return "the device was replaced by a new registration";
    case STORE_TOO_MANY_PREKEYS: return "too many one-time prekeys";
    case STORE_PREKEY_CONFLICT: return "a one-time prekey id is in use with another key";
    case STORE_INBOX_FULL: return "a recipient's inbox is full";
    case STORE_DAILY_QUOTA: return "the account's daily quota is used up";
    case STORE_UNKNOWN_GROUP: return "no such group";
    case STORE_NOT_MEMBER: return "not a member of the group";
    case STORE_NOT_ADMIN: return "only the group's admins may do that";
    case STORE_GROUP_FULL: return "the group is full";
    case STORE_LAST_ADMIN: return "the last admin must name another";
    case STORE_GROUP_STALE: return "the group's membership changed";
    case STORE_GROUP_QUOTA: return "the account's groups for the day are used up";
    case STORE_FULL: return "storage full";
    case STORE_NOMEM: return "out of memory";
    case STORE_INVALID: return "invalid record";
    default: return "storage I/O error";
    }
}

bool store_buf_grow(void *buf, size_t *cap, size_t need, size_t first)
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

int store_entries_reserve(store_entries *l, size_t len)
{
    return store_buf_grow(&l->buf, &l->buf_cap, l->used + len, 256) ? STORE_OK : STORE_NOMEM;
}

int store_entries_add(store_entries *l, const store_device *d, const uint8_t *envelope, size_t len)
{
    size_t items_bytes = l->cap * sizeof *l->items;
    if (!store_buf_grow(&l->items, &items_bytes, (l->n + 1) * sizeof *l->items, 4 * sizeof *l->items) ||
        store_entries_reserve(l, len) != STORE_OK)
        return STORE_NOMEM;
    l->cap = items_bytes / sizeof *l->items;
    if (envelope && len)
        memcpy(l->buf + l->used, envelope, len);
    l->items[l->n++] = (store_entry){.device = *d, .offset = l->used, .len = len};
    l->used += len;
    return STORE_OK;
}

void store_entries_clear(store_entries *l)
{
    l->n = l->used = 0;
}

void store_entries_free(store_entries *l)
{
    free(l->items);
    free(l->buf);
    memset(l, 0, sizeof *l);
}

static void submit(store *s, store_home *h, store_req *r, uint8_t kind)
{
    r->kind = kind;
    r->status = STORE_OK;
    r->home = h;
    r->next = NULL;
    s->ops->submit(s, h, r);
}

void store_register(store *s, store_home *h, store_registration *r) { submit(s, h, &r->req, STORE_KIND_REGISTER); }
void store_get_device(store *s, store_home *h, store_device_query *r) { submit(s, h, &r->req, STORE_KIND_DEVICE); }
void store_lookup_account(store *s, store_home *h, store_lookup *r) { submit(s, h, &r->req, STORE_KIND_LOOKUP); }
void store_accept_send(store *s, store_home *h, store_send *r) { submit(s, h, &r->req, STORE_KIND_SEND); }
void store_post_receipt(store *s, store_home *h, store_post *r) { submit(s, h, &r->req, STORE_KIND_POST); }
void store_read_inbox(store *s, store_home *h, store_read *r) { submit(s, h, &r->req, STORE_KIND_READ); }
void store_take_inbox(store *s, store_home *h, store_take *r) { submit(s, h, &r->req, STORE_KIND_TAKE); }
void store_upload_keys(store *s, store_home *h, store_upload *r) { submit(s, h, &r->req, STORE_KIND_UPLOAD); }
void store_fetch_bundles(store *s, store_home *h, store_fetch *r) { submit(s, h, &r->req, STORE_KIND_FETCH); }
void store_sweep_expired(store *s, store_home *h, store_sweep *r) { submit(s, h, &r->req, STORE_KIND_SWEEP); }
void store_sync(store *s, store_home *h, store_sync_req *r) { submit(s, h, &r->req, STORE_KIND_SYNC); }
void store_change_group(store *s, store_home *h, store_group_change *r) { submit(s, h, &r->req, STORE_KIND_GROUP_CHANGE); }
void store_get_group(store *s, store_home *h, store_group_query *r) { submit(s, h, &r->req, STORE_KIND_GROUP_GET); }

int store_home_open(store *s, uv_loop_t *loop, store_home **out)
{
    return s->ops->home_open(s, loop, out);
}

void store_home_close(store_home *h)
{
    if (h)
        h->owner->ops->home_close(h);
}

store_run_stats store_stop(store *s)
{
    return s->ops->stop(s);
}

void store_close(store *s)
{
    if (s)
        s->ops->close(s);
}

int store_get_stats(store *s, store_stats *out)
{
    return s->ops->stats(s, out);
}
