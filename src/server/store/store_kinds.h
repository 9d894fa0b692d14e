/* store_kinds.h - for backends only: which request a store_req is (store_req.kind), and
 * what every store_home begins with. */
#ifndef PARLEY_STORE_KINDS_H
#define PARLEY_STORE_KINDS_H

#include "store.h"

enum {
    STORE_KIND_REGISTER = 1,
    STORE_KIND_DEVICE,
    STORE_KIND_LOOKUP,
    STORE_KIND_SEND,
    STORE_KIND_POST,
    STORE_KIND_READ,
    STORE_KIND_TAKE,
    STORE_KIND_UPLOAD,
    STORE_KIND_FETCH,
    STORE_KIND_SWEEP,
    STORE_KIND_SYNC,
    STORE_KIND_GROUP_CHANGE,
    STORE_KIND_GROUP_GET,
};

struct store_home {
    store *owner;
};

#endif
