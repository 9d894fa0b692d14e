/* envelope.h - envelopes as services build them for inboxes (proto/parley.proto,
 * Envelope without its seq, which the deliverer adds). */
#ifndef PARLEY_SERVICES_ENVELOPE_H
#define PARLEY_SERVICES_ENVELOPE_H

#include "parley.pb-c.h"
#include "store.h"

/* Packs e for device d at the end of l; the new item is l->items[l->n - 1]. */
int envelope_add(store_entries *l, const store_device *d, const Parley__Envelope *e);

/* info describes g (its members too if with_members), in the caller's settings, members
 * (g->n of them) and list: valid while those and g are. */
void group_info_fill(Parley__GroupInfo *info, Parley__GroupSettings *settings, Parley__GroupMember *members,
                     Parley__GroupMember **list, const store_group *g, bool with_members);

#endif
