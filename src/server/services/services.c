/* services.c - the list of parleyd's services (services.h), in the order their hooks
 * run: deliver's authenticated hook comes after auth has answered Authenticated. */
#include "services.h"

const service *const parley_services[] = {
    &ping_service,    &register_service, &auth_service, &lookup_service, &send_service,
    &deliver_service, &receipts_service, &keys_service, &groups_service, &retention_service, NULL,
};
