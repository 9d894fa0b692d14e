/* fingerprint.h - safety numbers: Signal's numeric fingerprint and its scannable form. */
#ifndef PARLEY_CRYPTO_FINGERPRINT_H
#define PARLEY_CRYPTO_FINGERPRINT_H

#include "ps.h"

#define PS_SAFETY_DIGITS 60

/* digits: 60 decimal digits + NUL, the same for both parties (the two halves are
 * ordered). scannable: the CombinedFingerprints protobuf with the given version
 * (Signal uses 1 with phone-number identifiers, 2 with service ids), local first.
 * Identifiers are the stable ids (e.g. E.164 phone numbers) of the two accounts. */
PS_MUST_CHECK int ps_safety_number(char digits[PS_SAFETY_DIGITS + 1], ps_bytes *scannable,
                                   uint32_t version, uint32_t iterations,
                                   const uint8_t *local_id, size_t local_id_len,
                                   const uint8_t local_key[PS_KEY_LEN],
                                   const uint8_t *remote_id, size_t remote_id_len,
                                   const uint8_t remote_key[PS_KEY_LEN]);

#endif
