/* parleyctl - operator commands on a parleyd data directory.
 *   parleyctl stats --data DIR    one JSON object: undelivered envelopes, de-duplication
 *                                 records, accounts, devices, one-time prekeys, and the
 *                                 data file's pages
 * Reads only; safe while parleyd runs (LMDB readers never block its writer). */
#include <stdio.h>
#include <string.h>

#include "store.h"

static int usage(void)
{
    fprintf(stderr, "usage: parleyctl stats --data DIR\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc != 4 || strcmp(argv[1], "stats") != 0 || strcmp(argv[2], "--data") != 0)
        return usage();
    store *s;
    store_stats st;
    int rc = store_open_readonly(&s, argv[3]);
    if (rc != STORE_OK) {
        fprintf(stderr, "parleyctl: cannot open the store in %s: %s\n", argv[3], store_strerror(rc));
        return 1;
    }
    rc = store_get_stats(s, &st);
    store_close(s);
    if (rc != STORE_OK) {
        fprintf(stderr, "parleyctl: cannot read the store: %s\n", store_strerror(rc));
        return 1;
    }
    printf("{\"inbox_envelopes\":%llu,\"dedup_records\":%llu,\"accounts\":%llu,\"devices\":%llu,"
           "\"prekeys\":%llu,\"pages_used\":%llu,\"pages_free\":%llu,\"page_size\":%u}\n",
           (unsigned long long)st.inbox_envelopes, (unsigned long long)st.dedup_records,
           (unsigned long long)st.accounts, (unsigned long long)st.devices,
           (unsigned long long)st.prekeys, (unsigned long long)st.pages_used, (unsigned long long)st.pages_free, st.page_size);
    return 0;
}
