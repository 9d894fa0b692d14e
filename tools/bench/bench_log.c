/* parley-bench-log - the inbox log's restart, measured: fills a fresh log (DIR/inbox, as
 * parleyd has it) with N envelopes of B bytes spread over D devices, in groups of G with
 * one commit each, then opens it again as parleyd does at start and reports how long
 * the replay took and what the index costs in memory. With --cold the page cache is
 * dropped before the reopen (root: /proc/sys/vm/drop_caches), as after a reboot, so the
 * replay reads the segments from the disk. The log is removed at the end unless --keep.
 *   parley-bench-log --dir DIR [--envelopes N=10000000] [--bytes B=200] [--devices D=100000]
 *                    [--group G=4096] [--cold] [--keep] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "inbox_log.h"
#include "log_segment.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "RssAnon: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

/* Drops the clean pages (every segment is fdatasync'd by its commits): the next read
 * goes to the disk. */
static int drop_caches(void)
{
    FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
    if (!f)
        return 0;
    int ok = fputs("3\n", f) >= 0;
    return fclose(f) == 0 && ok;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    unsigned long long n = 10000000, bytes = 200, devices = 100000, group = 4096;
    int keep = 0, cold = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--keep") == 0)
            keep = 1;
        else if (strcmp(argv[i], "--cold") == 0)
            cold = 1;
        else if (i + 1 < argc && strcmp(argv[i], "--dir") == 0)
            dir = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--envelopes") == 0)
            n = strtoull(argv[++i], NULL, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--bytes") == 0)
            bytes = strtoull(argv[++i], NULL, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--devices") == 0)
            devices = strtoull(argv[++i], NULL, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--group") == 0)
            group = strtoull(argv[++i], NULL, 10);
        else
            dir = NULL, i = argc;
    }
    if (!dir || !n || !devices || !group || bytes == 0 || bytes > 65536) {
        fprintf(stderr, "usage: parley-bench-log --dir DIR [--envelopes N] [--bytes B] [--devices D] [--group G] [--cold] [--keep]\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/inbox", dir);
    mkdir(dir, 0700); /* or it is there already */
    inbox_log_config cfg = {0};
    inbox_log_report rep;
    inbox_log *l;
    int rc = inbox_log_open(&l, path, &cfg, &rep);
    if (rc == STORE_OK && rep.envelopes) {
        fprintf(stderr, "parley-bench-log: %s already holds envelopes; give a fresh directory\n", path);
        inbox_log_close(l);
        return 1;
    }
    uint8_t *envelope = calloc(1, bytes);
    double t0 = now_s();
    for (unsigned long long i = 0; rc == STORE_OK && i < n; i++) {
        store_device d = {.device = 1 + (uint32_t)(i % devices / 65536)};
        uint64_t k = i % devices, seq;
        memcpy(d.account, &k, sizeof k);
        memcpy(envelope, &i, sizeof i);
        rc = inbox_log_append(l, &d, 1000 + i / 1000, envelope, bytes, &seq);
        if (rc == STORE_OK && (i + 1) % group == 0)
            rc = inbox_log_commit(l);
    }
    if (rc == STORE_OK)
        rc = inbox_log_commit(l);
    double filled = now_s() - t0;
    inbox_log_stats st;
    if (l)
        inbox_log_get_stats(l, &st);
    inbox_log_close(l);
    free(envelope);
    if (rc != STORE_OK) {
        fprintf(stderr, "parley-bench-log: filling the log failed: %s\n", store_strerror(rc));
        return 1;
    }
    if (cold && !drop_caches()) {
        fprintf(stderr, "parley-bench-log: --cold: cannot drop the page cache (root only)\n");
        return 1;
    }
    long rss_before = rss_kb();
    double t1 = now_s();
    rc = inbox_log_open(&l, path, &cfg, &rep);
    double replay = now_s() - t1;
    long rss_after = rss_kb();
    if (rc != STORE_OK || rep.envelopes != n) {
        fprintf(stderr, "parley-bench-log: the reopened log holds %llu of %llu envelopes: %s\n",
                (unsigned long long)rep.envelopes, n, store_strerror(rc));
        return 1;
    }
    printf("{\"envelopes\":%llu,\"bytes\":%llu,\"devices\":%llu,\"segments\":%llu,\"log_bytes\":%llu,"
           "\"fill_seconds\":%.2f,\"replay_seconds\":%.2f,\"cold\":%s,\"index_rss_anon_kb\":%ld}\n",
           n, bytes, devices, (unsigned long long)rep.segments, (unsigned long long)st.written, filled, replay,
           cold ? "true" : "false", rss_after - rss_before);
    inbox_log_close(l);
    if (!keep) {
        uint64_t *numbers;
        size_t count;
        if (log_segment_list(path, &numbers, &count) == STORE_OK) {
            for (size_t i = 0; i < count; i++)
                log_segment_remove(path, numbers[i]);
            free(numbers);
        }
    }
    return 0;
}
