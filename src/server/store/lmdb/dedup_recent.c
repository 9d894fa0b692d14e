/* dedup_recent.c - recent sends in memory (dedup_recent.h): open addressing. */
#include "dedup_recent.h"

#include <stdlib.h>
#include <string.h>

#include "hash.h"

void dedup_recent_key(uint8_t out[DEDUP_KEY_LEN], const store_device *sender, const uint8_t id[STORE_MESSAGE_ID_LEN])
{
    memcpy(out, sender->account, STORE_ACCOUNT_ID_LEN);
    out[16] = (uint8_t)(sender->device >> 24);
    out[17] = (uint8_t)(sender->device >> 16);
    out[18] = (uint8_t)(sender->device >> 8);
    out[19] = (uint8_t)sender->device;
    memcpy(out + 20, id, STORE_MESSAGE_ID_LEN);
}

void dedup_recent_group_key(uint8_t out[DEDUP_KEY_LEN], const uint8_t group[STORE_GROUP_ID_LEN])
{
    memset(out, 0, DEDUP_KEY_LEN);
    memcpy(out, group, STORE_GROUP_ID_LEN);
}

bool dedup_recent_is_group(const uint8_t key[DEDUP_KEY_LEN])
{
    static const uint8_t zero[DEDUP_KEY_LEN - STORE_GROUP_ID_LEN];
    return memcmp(key + STORE_GROUP_ID_LEN, zero, sizeof zero) == 0;
}

static dedup_slot *slot_of(dedup_slot *slots, size_t cap, const uint8_t key[DEDUP_KEY_LEN])
{
    size_t i = (size_t)hash_bytes(key, DEDUP_KEY_LEN) & (cap - 1);
    while (slots[i].accepted_ms && memcmp(slots[i].key, key, DEDUP_KEY_LEN) != 0)
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

bool dedup_recent_get(const dedup_recent *t, const uint8_t key[DEDUP_KEY_LEN], uint64_t *accepted_ms)
{
    if (!t->used) /* an empty table keeps its room: no probe */
        return false;
    const dedup_slot *s = slot_of(t->slots, t->cap, key);
    if (!s->accepted_ms)
        return false;
    *accepted_ms = s->accepted_ms;
    return true;
}

int dedup_recent_reserve(dedup_recent *t, size_t n)
{
    if ((t->used + n) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while ((t->used + n) * 2 > cap)
            cap *= 2;
        dedup_slot *slots = calloc(cap, sizeof *slots);
        if (!slots)
            return STORE_NOMEM;
        for (size_t i = 0; i < t->cap; i++)
            if (t->slots[i].accepted_ms)
                *slot_of(slots, cap, t->slots[i].key) = t->slots[i];
        free(t->slots);
        t->slots = slots;
        t->cap = cap;
    }
    return STORE_OK;
}

int dedup_recent_put(dedup_recent *t, const uint8_t key[DEDUP_KEY_LEN], uint64_t accepted_ms)
{
    int rc = dedup_recent_reserve(t, 1);
    if (rc != STORE_OK)
        return rc;
    dedup_slot *s = slot_of(t->slots, t->cap, key);
    if (!s->accepted_ms)
        t->used++;
    memcpy(s->key, key, DEDUP_KEY_LEN);
    s->accepted_ms = accepted_ms;
    return STORE_OK;
}

int dedup_recent_merge(dedup_recent *t, dedup_recent *from)
{
    int rc = dedup_recent_reserve(t, from->used);
    for (size_t i = 0; rc == STORE_OK && i < from->cap; i++)
        if (from->slots[i].accepted_ms)
            rc = dedup_recent_put(t, from->slots[i].key, from->slots[i].accepted_ms);
    dedup_recent_clear(from);
    return rc;
}

void dedup_recent_clear(dedup_recent *t)
{
    if (t->cap)
        memset(t->slots, 0, t->cap * sizeof *t->slots);
    t->used = 0;
}

void dedup_recent_free(dedup_recent *t)
{
    free(t->slots);
    *t = (dedup_recent){0};
}
