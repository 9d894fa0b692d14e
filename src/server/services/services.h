/* services.h - every service of parleyd, one per file, and the list main starts them
 * in. Each serves its own frame types and keeps its own state (service.h). */
#ifndef PARLEY_SERVICES_H
#define PARLEY_SERVICES_H

#include "service.h"

extern const service ping_service;       /* Ping -> Pong */
extern const service register_service;   /* RequestCode, Register (sms.c sends the codes) */
extern const service auth_service;       /* Connect, Authenticate */
extern const service lookup_service;     /* Lookup */
extern const service send_service;       /* Send */
extern const service deliver_service;    /* Deliver from the inbox, DeliverAck */
extern const service receipts_service;   /* Receipt: read and retry receipts */
extern const service keys_service;       /* UploadKeys, FetchBundles */
extern const service groups_service;     /* GroupCreate, GroupChange, GroupGet, GroupList */
extern const service retention_service;  /* the retention sweep */

/* All of them, NULL-terminated, in the order their hooks run. */
extern const service *const parley_services[];

/* GROUP_STALE with the group as it is now (groups.c; a group Send's refusal too). */
void groups_reply_stale(session *s, uint64_t rid, const store_group *g);

/* The envelopes the store packs itself (envelope.c). */
extern const store_envelopes parley_envelopes;

#endif
