/* codes.h - the verification codes waiting, one entry per number, shared by every I/O
 * thread. A hash table with striped locks: a request or a check touches one chain under
 * one lock and never walks the table; sweep removes spent entries a slice at a time.
 *
 * Rules (docs/protocol.md, "Registration"): a code lives 10 minutes and allows 5 tries.
 * While it lives, asking again sends the same code again (a stranger asking cannot void
 * the owner's code). A number gets at most CODES_PER_HOUR sends an hour, and at most
 * CODES_PER_ADDRESS of them may be asked for from one address, so one address alone
 * cannot use up a number's hour. An entry goes once its code is spent or expired and its
 * last send is an hour old. */
#ifndef PARLEY_CODES_H
#define PARLEY_CODES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CODE_TTL_MS (10 * 60 * 1000)
#define CODE_ATTEMPTS 5
#define CODES_PER_HOUR 5
#define CODES_PER_ADDRESS 3
#define CODE_TRIES_PER_ADDRESS 2

enum {
    CODES_SEND = 0,        /* send *code (a new one, or the one still valid) */
    CODES_NUMBER_LIMITED,  /* the number had its sends this hour */
    CODES_ADDRESS_LIMITED, /* this address had its share of them */
    CODES_NO_MEMORY,
};

/* A send of phone's code, asked for from address (16 bytes, admission.h's key; NULL
 * behind a trusted proxy: no per-address share). */
int codes_request(const char *phone, const uint8_t address[16], uint64_t now_ms, char code[7]);

/* Is a code waiting for phone (costs no try)? */
bool codes_waiting(const char *phone, uint64_t now_ms);

/* 0 for the right code (then spent), else PERR_WRONG_CODE, PERR_CODE_EXPIRED or
 * PERR_TOO_MANY_ATTEMPTS (a wrong try costs one of the 5). One address (NULL: not
 * counted) may make at most CODE_TRIES_PER_ADDRESS wrong tries of a code: after that
 * its tries are refused without costing the code, so a stranger cannot burn it. */
uint32_t codes_check(const char *phone, const char *code, const uint8_t address[16], uint64_t now_ms);

/* Looks at the next nbuckets chains and removes spent entries; returns how many. */
size_t codes_sweep(uint64_t now_ms, size_t nbuckets);

/* Entries held, and the longest chain a request walked since the last call (for tests). */
size_t codes_count(void);
size_t codes_longest_walk(void);

/* Frees every entry (the service's stop, and tests). */
void codes_clear(void);

#endif
