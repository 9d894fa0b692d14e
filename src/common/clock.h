/* clock.h - the one clock everything reads: wall time for what is stored or sent (server
 * timestamps, message ids, last seen), monotonic time for deadlines and measurements. */
#ifndef PARLEY_COMMON_CLOCK_H
#define PARLEY_COMMON_CLOCK_H

#include <stdint.h>

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
uint64_t clock_wall_ms(void);

/* Nanoseconds on CLOCK_MONOTONIC: never goes back, meaningless across processes. */
uint64_t clock_mono_ns(void);

static inline uint64_t clock_mono_ms(void)
{
    return clock_mono_ns() / 1000000u;
}

static inline double clock_mono_us(void)
{
    return (double)clock_mono_ns() / 1e3;
}

#endif
