/* main.c - parleyd: options, the store, the I/O threads, graceful shutdown. */
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "services.h"

static bool sms_provider_valid(const char *v, const char **why)
{
    *why = "wants file:PATH or http:URL";
    return strncmp(v, "file:", 5) == 0 || strncmp(v, "http:", 5) == 0;
}

#define CFG(field) OPT_FIELD(server_config, field)

/* Every flag of parleyd; --help prints this table. */
static const opt_spec options[] = {
    {"--listen", "HOST:PORT", OPT_HOSTPORT, CFG(listen), 0, 0, "127.0.0.1:7443", "address to listen on", NULL},
    {"--data", "DIR", OPT_STRING, CFG(data_dir), 0, 0, "./var", "data directory", NULL},
    {"--threads", "N", OPT_U32, CFG(threads), 1, 256, NULL, "I/O threads (default: one per core)", NULL},
    {"--sms", "PROVIDER", OPT_STRING, CFG(sms), 0, 0, NULL,
     "where verification codes go: file:PATH appends them to PATH as JSON lines, http:URL POSTs "
     "them as JSON to URL "
     "(default file:DATA/sms.log)", sms_provider_valid},
    {"--sms-log-max", "BYTES", OPT_BYTES, CFG(sms_log_max), 4096, 4095u << 20, "1M",
     "with file:PATH, a PATH past this size becomes PATH.1 (replacing the last), so numbers and codes do not pile up",
     NULL},
    {"--retention", "DURATION", OPT_DURATION, CFG(retention_ms), 0, 0, "30d",
     "keep undelivered messages this long: 30d, 12h, 90m, 3600s", NULL},
    {"--heartbeat", "SECONDS", OPT_U32, CFG(heartbeat_seconds), 1, 3600, "30",
     "heartbeat interval announced to clients", NULL},
    {"--max-frame", "BYTES", OPT_BYTES, CFG(max_frame_bytes), 4096, 64u << 20, "256K",
     "largest WebSocket message accepted", NULL},
    {"--max-recipients", "N", OPT_U32, CFG(max_recipients), 1, 1000000, "16",
     "device messages in one send (a group send: one per member device)", NULL},
    {"--group-creates", "N", OPT_U32, CFG(group_creates), 0, 1000000, "50",
     "groups one account may create a UTC day, 0 for no limit", NULL},
    {"--send-rate", "N", OPT_U32, CFG(send_rate), 1, 1000000, "100",
     "sends and receipts per second per device, bursts of 2N", NULL},
    {"--conn-rate", "N", OPT_U32, CFG(conn_rate), 0, 1000000, "100",
     "new connections per second per client address, 0 for no limit", NULL},
    {"--window", "N", OPT_U32, CFG(deliver_window), 1, 1000000, "256", "unacknowledged deliveries per connection",
     NULL},
    {"--fetch-rate", "N", OPT_U32, CFG(fetch_rate), 1, 1000000, "10",
     "prekey bundle fetches per second per device, bursts of 2N", NULL},
    {"--max-conns-per-address", "N", OPT_U32, CFG(max_conns_per_address), 0, 10000000, "256",
     "connections one client address may hold at once, 0 for no limit", NULL},
    {"--max-connections", "N", OPT_U32, CFG(max_connections), 1, 100000000, NULL,
     "connections in all (default: the descriptor limit, raised to its maximum, less a reserve of 256)", NULL},
    {"--trusted-proxy", "ADDR[,ADDR...]", OPT_STRING, CFG(trusted_proxies), 0, 0, "",
     "addresses exempt from the per-address connection limits (a TLS proxy, a load balancer)", NULL},
    {"--auth-timeout", "SECONDS", OPT_U32, CFG(auth_timeout_seconds), 1, 3600, "10",
     "a connection must upgrade, and then authenticate, within this long", NULL},
    {"--code-rate", "N", OPT_U32, CFG(code_rate), 1, 100000000, "10",
     "verification codes one client address may ask for an hour", NULL},
    {"--code-global-rate", "N", OPT_U32, CFG(code_global_rate), 1, 100000000, "100",
     "verification codes the server sends a minute, all numbers together", NULL},
    {"--sms-queue", "N", OPT_U32, CFG(sms_queue), 1, 1000000, "16",
     "SMS sends waiting for the provider at once; more are refused (busy)", NULL},
    {"--lookup-rate", "N", OPT_U32, CFG(lookup_rate), 1, 1000000, "10",
     "number lookups per second per device (bursts of 2N), and 4N per client address", NULL},
    {"--lookup-daily", "N", OPT_U32, CFG(lookup_daily), 1, 100000000, "2000",
     "number lookups a device may make a day", NULL},
    {"--output-budget", "BYTES", OPT_BYTES, CFG(output_budget), 1u << 20, 4095u << 20, "256M",
     "answers queued for all connections together; past it connections with large queues are cut", NULL},
    {"--fetch-target-rate", "N", OPT_U32, CFG(fetch_target_rate), 1, 100000000, "20",
     "bundles with a one-time prekey handed out per account a minute (more come without one)", NULL},
    {"--inbox-max-messages", "N", OPT_U32, CFG(inbox_max_envelopes), 1, 1000000000, "100000",
     "messages and receipts one device's inbox holds; sends past it are refused (inbox full)", NULL},
    {"--inbox-max-bytes", "BYTES", OPT_BYTES, CFG(inbox_max_bytes), 64u << 10, 4095u << 20, "256M",
     "bytes one device's inbox holds", NULL},
    {"--daily-sends", "N", OPT_U32, CFG(daily_writes), 1, 1000000000, "100000",
     "sends and receipts one account may make a UTC day, all its devices together", NULL},
    {"--daily-bytes", "BYTES", OPT_BYTES, CFG(daily_bytes), 64u << 10, 4095u << 20, "1024M",
     "bytes of messages one account may have stored a UTC day (each device's copy counts)", NULL},
};

#define FD_RESERVE 256 /* descriptors kept for the store, the SMS provider, and accepting to refuse */

/* Raises the soft descriptor limit to the hard one; returns what it is now. */
static uint64_t raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur == RLIM_INFINITY ? UINT32_MAX : (uint64_t)rl.rlim_cur;
}

static int parse_args(server_config *cfg, int argc, char **argv)
{
    char err[256];
    bool help;
    if (opts_parse(options, sizeof options / sizeof *options, cfg, argc, argv, &help, err, sizeof err) != 0) {
        fprintf(stderr, "parleyd: %s\n", err);
        return -1;
    }
    if (help)
        exit(0);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (!cfg->threads)
        cfg->threads = cores > 0 ? (uint32_t)(cores < 256 ? cores : 256) : 1;
    if (!cfg->sms[0])
        snprintf(cfg->sms, sizeof cfg->sms, "file:%s/sms.log", cfg->data_dir);
    uint64_t nofile = raise_nofile();
    uint64_t room = nofile > 2 * FD_RESERVE ? nofile - FD_RESERVE : nofile / 2;
    if (!cfg->max_connections)
        cfg->max_connections = (uint32_t)(room < UINT32_MAX ? room : UINT32_MAX);
    else if (cfg->max_connections > room)
        fprintf(stderr, "parleyd: --max-connections %u is above what %llu descriptors allow; connections may fail\n",
                cfg->max_connections, (unsigned long long)nofile);
    return 0;
}

int main(int argc, char **argv)
{
    static server srv;
    if (parse_args(&srv.cfg, argc, argv) != 0)
        return 2;
    if (sodium_init() < 0) {
        fprintf(stderr, "parleyd: libsodium failed to initialise\n");
        return 1;
    }
    /* SIGTERM/SIGINT are taken by sigwait below; the I/O threads inherit the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    store_quota quota = {srv.cfg.inbox_max_envelopes, srv.cfg.inbox_max_bytes, srv.cfg.daily_writes,
                         srv.cfg.daily_bytes};
    int rc = store_open_embedded(&srv.st, srv.cfg.data_dir, 0, &quota, &parley_envelopes);
    if (rc != STORE_OK) {
        fprintf(stderr, "parleyd: cannot open the store in %s: %s\n", srv.cfg.data_dir, store_strerror(rc));
        return 1;
    }
    /* a million device buckets (16 MiB of address space, touched only where used);
     * 65,536 address buckets (a rate per period: rate_table_init_per) */
    char err[256];
    if (admission_init(&srv.admit, srv.cfg.max_conns_per_address, srv.cfg.max_connections, srv.cfg.trusted_proxies,
                       err, sizeof err) != 0) {
        fprintf(stderr, "parleyd: %s\n", err);
        store_close(srv.st);
        return 2;
    }
    if (rate_table_init(&srv.rates[RATE_SENDS], 1 << 20, srv.cfg.send_rate, srv.cfg.send_rate * 2) != 0 ||
        rate_table_init(&srv.rates[RATE_CONNECTIONS], 1 << 16, srv.cfg.conn_rate, srv.cfg.conn_rate) != 0 ||
        rate_table_init(&srv.rates[RATE_FETCHES], 1 << 20, srv.cfg.fetch_rate, srv.cfg.fetch_rate * 2) != 0 ||
        rate_table_init(&srv.rates[RATE_LOOKUPS], 1 << 20, srv.cfg.lookup_rate, srv.cfg.lookup_rate * 2) != 0 ||
        rate_table_init(&srv.rates[RATE_LOOKUPS_ADDRESS], 1 << 16, srv.cfg.lookup_rate * 4, srv.cfg.lookup_rate * 8) != 0 ||
        rate_table_init_per(&srv.rates[RATE_LOOKUPS_DAILY], 1 << 20, srv.cfg.lookup_daily, 86400000, srv.cfg.lookup_daily) != 0 ||
        rate_table_init_per(&srv.rates[RATE_CODES], 1 << 16, srv.cfg.code_rate, 3600000, srv.cfg.code_rate) != 0 ||
        rate_table_init_per(&srv.rates[RATE_CODES_GLOBAL], 1, srv.cfg.code_global_rate, 60000, srv.cfg.code_global_rate) != 0 ||
        rate_table_init_per(&srv.rates[RATE_FETCH_TARGET], 1 << 20, srv.cfg.fetch_target_rate, 60000, srv.cfg.fetch_target_rate) != 0 ||
        server_start(&srv, parley_services) != 0) {
        store_close(srv.st);
        return 1;
    }
    printf("parleyd listening on %s:%d (%u threads, data %s, sms %s)\n", srv.cfg.listen.host, srv.cfg.listen.port,
           srv.cfg.threads, srv.cfg.data_dir, srv.cfg.sms);
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "parleyd: signal %d: closing connections\n", sig);
    store_run_stats st = server_stop(&srv);
    store_close(srv.st);
    for (int i = RATE_NONE + 1; i < RATE_CLASSES; i++)
        rate_table_destroy(&srv.rates[i]);
    admission_free(&srv.admit);
    /* how well commits were grouped (what a benchmark run wants to know) */
    fprintf(stderr, "parleyd: stopped after %llu commits of %llu writes\n", (unsigned long long)st.commits,
            (unsigned long long)st.writes);
    return 0;
}
