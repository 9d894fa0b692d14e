/* dedup_checkpoint.h - writes the de-duplication records of recent sends (and the groups'
 * last seqs, dedup_recent.h) into the data file (LMDB's dedup and group_seqs tables), on
 * a thread of its own.
 *
 * The writer thread keeps the sends accepted since the last checkpoint in memory
 * (dedup_recent.h) and in the inbox log's NOTE records; a checkpoint puts them in the
 * data file so that the log's older segments need not keep their NOTEs. It takes one
 * LMDB write transaction and its two syncs: 5 to 8 ms for a second of a paced load,
 * long enough that sends queued behind it on the writer thread were the paced p99
 * (docs/storage.md). So it runs here, beside the writer: LMDB lets one write
 * transaction run at a time, and the writer's own (registrations, keys) are the rare
 * kind; sends and acks go to the log and do not wait.
 *
 * Contract: the table handed to dedup_checkpoint_begin stays unchanged and readable by
 * its owner (lookups) until dedup_checkpoint_done says it is finished. One at a time. */
#ifndef PARLEY_STORE_LMDB_DEDUP_CHECKPOINT_H
#define PARLEY_STORE_LMDB_DEDUP_CHECKPOINT_H

#include <stdbool.h>

#include "dedup_recent.h"
#include "ldb.h"

typedef struct dedup_checkpoint dedup_checkpoint;

/* Writes every entry of t into db in one transaction, on the calling thread. */
int dedup_checkpoint_write(ldb *db, const dedup_recent *t);

/* finished (if not NULL) runs on the checkpoint thread each time one is done, with the
 * thread's lock held: it must only wake its owner. */
int dedup_checkpoint_start(dedup_checkpoint **out, ldb *db, void (*finished)(void *ctx), void *ctx);

/* finished is not called any more once this returns (before its owner goes away). */
void dedup_checkpoint_mute(dedup_checkpoint *c);

/* Starts writing t on the thread; false if one is still under way. */
bool dedup_checkpoint_begin(dedup_checkpoint *c, const dedup_recent *t);

/* Whether the one begun has finished (then *rc is its result), waiting for it if wait;
 * true if none was begun. */
bool dedup_checkpoint_done(dedup_checkpoint *c, bool wait, int *rc);

/* Waits for the one under way, if any (its result in *rc, STORE_OK if none), then ends
 * the thread. */
void dedup_checkpoint_stop(dedup_checkpoint *c, int *rc);

#endif
