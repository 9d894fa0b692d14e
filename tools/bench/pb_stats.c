/* pb_stats.c - parley-bench's latency histogram and counter merging. */
#include <stddef.h>
#include <string.h>
#include <time.h>

#include "pb.h"

void pb_hist_init(pb_hist *h)
{
    memset(h, 0, sizeof *h);
}

/* Values below 128 ns have a bucket each; above, bucket (e+1)*128 + m holds the values
 * whose top 8 bits are 128+m at shift e. */
static uint32_t bucket_of(uint64_t v)
{
    if (v < PB_HIST_SUB)
        return (uint32_t)v;
    uint32_t e = (uint32_t)(63 - __builtin_clzll(v)) - PB_HIST_SUB_BITS;
    uint32_t b = (e + 1) * PB_HIST_SUB + (uint32_t)((v >> e) - PB_HIST_SUB);
    return b < PB_HIST_BUCKETS ? b : PB_HIST_BUCKETS - 1;
}

static uint64_t bucket_low(uint32_t b)
{
    if (b < PB_HIST_SUB)
        return b;
    uint32_t e = b / PB_HIST_SUB - 1;
    return (uint64_t)(PB_HIST_SUB + b % PB_HIST_SUB) << e;
}

static uint64_t bucket_high(uint32_t b)
{
    if (b < PB_HIST_SUB)
        return b;
    uint32_t e = b / PB_HIST_SUB - 1;
    return ((uint64_t)(PB_HIST_SUB + b % PB_HIST_SUB + 1) << e) - 1;
}

void pb_hist_add(pb_hist *h, uint64_t ns)
{
    h->n[bucket_of(ns)]++;
    if (!h->count || ns < h->min_ns)
        h->min_ns = ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
    h->count++;
    h->sum_ns += ns;
}

void pb_hist_merge(pb_hist *into, const pb_hist *from)
{
    if (!from->count)
        return;
    for (uint32_t i = 0; i < PB_HIST_BUCKETS; i++)
        into->n[i] += from->n[i];
    if (!into->count || from->min_ns < into->min_ns)
        into->min_ns = from->min_ns;
    if (from->max_ns > into->max_ns)
        into->max_ns = from->max_ns;
    into->count += from->count;
    into->sum_ns += from->sum_ns;
}

uint64_t pb_hist_quantile(const pb_hist *h, double q)
{
    if (!h->count)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < PB_HIST_BUCKETS; i++) {
        seen += h->n[i];
        if (seen >= rank) {
            uint64_t v = bucket_low(i) + (bucket_high(i) - bucket_low(i)) / 2;
            if (v > h->max_ns)
                v = h->max_ns;
            if (v < h->min_ns)
                v = h->min_ns;
            return v;
        }
    }
    return h->max_ns;
}

static void first_of(uint64_t *into, uint64_t v)
{
    if (v && (!*into || v < *into))
        *into = v;
}

static void last_of(uint64_t *into, uint64_t v)
{
    if (v > *into)
        *into = v;
}

void pb_stats_merge(pb_stats *a, const pb_stats *b)
{
    /* every field from conn_started up to first_connect is a uint64_t counter: a sum */
    for (size_t off = offsetof(pb_stats, conn_started); off < offsetof(pb_stats, first_connect);
         off += sizeof(uint64_t)) {
        uint64_t x, y;
        memcpy(&x, (char *)a + off, sizeof x);
        memcpy(&y, (const char *)b + off, sizeof y);
        x += y;
        memcpy((char *)a + off, &x, sizeof x);
    }
    first_of(&a->first_connect, b->first_connect);
    last_of(&a->last_auth, b->last_auth);
    last_of(&a->last_drained, b->last_drained);
    first_of(&a->first_send, b->first_send);
    last_of(&a->last_ack, b->last_ack);
    first_of(&a->first_deliver, b->first_deliver);
    last_of(&a->last_deliver, b->last_deliver);
    last_of(&a->last_receipt, b->last_receipt);
    if (!a->first_error[0] && b->first_error[0])
        memcpy(a->first_error, b->first_error, sizeof a->first_error);
}
