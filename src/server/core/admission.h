/* admission.h - who may open a connection, decided at accept (before a byte is read,
 * so half-open handshakes count too):
 *   - a rate of new connections per client address (a token bucket table);
 *   - a cap on the connections one address holds at once; addresses on an allow-list
 *     (TLS-terminating proxies, load balancers) are exempt from both;
 *   - a cap on all connections, set below the descriptor limit so that the server keeps a
 *     reserve and can always accept, answer and close instead of failing accept(2).
 * A refused connection is answered "503 Service Unavailable" with Retry-After.
 *
 * The per-address counts live in a fixed table indexed by a hash of the address: two
 * addresses that share a slot share its cap (stricter, never looser). Counts are atomic;
 * any thread may admit and release. */
#ifndef PARLEY_ADMISSION_H
#define PARLEY_ADMISSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "rate_limit.h"

#define ADMISSION_SLOTS 65536
#define ADMISSION_MAX_TRUSTED 32
#define ADMISSION_DROP_AFTER 128 /* refusals past max_total + this are closed unanswered */

typedef struct {
    uint32_t per_address;           /* connections one address may hold at once; 0: no cap */
    uint32_t max_total;             /* all connections; 0: no cap */
    uint32_t total;                 /* held now (atomic) */
    uint32_t *counts;               /* ADMISSION_SLOTS, per address slot (atomic) */
    uint8_t trusted[ADMISSION_MAX_TRUSTED][16];
    size_t ntrusted;
} admission;

/* trusted: a comma-separated list of IP addresses ("" for none). -1 with err set on a
 * bad address or too many. */
int admission_init(admission *a, uint32_t per_address, uint32_t max_total, const char *trusted, char *err,
                   size_t errlen);
void admission_free(admission *a);

/* 0 (taken), or 503 (answer that, with how long to wait): either way release *slot when
 * the connection goes. -1: close it at once, unanswered (the descriptors are nearly
 * gone), and release nothing. rate (per address, may be a table without a limit) is
 * taken from unless the address is trusted. */
int admission_admit(admission *a, rate_table *rate, const struct sockaddr *peer, uint64_t now_ms, uint32_t *slot,
                    uint32_t *retry_after_s);
void admission_release(admission *a, uint32_t slot);

/* Is the address (address_key) on the allow-list? Behind such a proxy every client has
 * its address, so no per-address limit applies to them (the proxy should limit). */
bool admission_trusted(const admission *a, const uint8_t key[16]);

/* The address of peer as 16 bytes (IPv4 as v4-mapped IPv6; IPv6 by its /64, which one
 * host commonly has whole), ports left out: every port of a client is the same client.
 * Zeros for an unknown family. */
void address_key(const struct sockaddr *peer, uint8_t key[16]);

#endif
