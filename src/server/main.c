/* main.c - parleyd: flags, the store, the I/O threads, graceful shutdown.
 *   parleyd [--listen HOST:PORT] [--data DIR] [--threads N] [--sms file:PATH|http:URL]
 *           [--retention DURATION] [--heartbeat SECONDS] [--max-frame BYTES]
 *           [--max-recipients N] [--send-rate N] [--conn-rate N] [--window N]
 *           [--fetch-rate N] */
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: parleyd [options]\n"
            "  --listen HOST:PORT     address to listen on (default 127.0.0.1:7443)\n"
            "  --data DIR             data directory (default ./var)\n"
            "  --threads N            I/O threads (default: one per core)\n"
            "  --sms file:PATH        append verification codes to PATH as JSON lines (default file:./var/sms.log)\n"
            "  --sms http:URL         POST verification codes as JSON to URL\n"
            "  --retention DURATION   keep undelivered messages this long: 30d, 12h, 90m, 3600s (default 30d)\n"
            "  --heartbeat SECONDS    heartbeat interval announced to clients (default 30)\n"
            "  --max-frame BYTES      largest WebSocket message accepted (default 262144)\n"
            "  --max-recipients N     device messages in one send (default 16)\n"
            "  --send-rate N          sends and receipts per second per device, bursts of 2N (default 100)\n"
            "  --conn-rate N          new connections per second per client address, 0 for no limit (default 100)\n"
            "  --window N             unacknowledged deliveries per connection (default 256)\n"
            "  --fetch-rate N         prekey bundle fetches per second per device, bursts of 2N (default 10)\n");
}

/* "30d", "12h", "90m", "3600s" or plain seconds -> milliseconds; 0 on error. */
static uint64_t parse_duration(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || v == 0)
        return 0;
    uint64_t unit = 1000;
    if (*end == 'd')
        unit = 86400000ULL;
    else if (*end == 'h')
        unit = 3600000ULL;
    else if (*end == 'm')
        unit = 60000ULL;
    else if (*end == 's' || *end == 0)
        unit = 1000;
    else
        return 0;
    if (*end && end[1])
        return 0;
    return (uint64_t)v * unit;
}

/* The field a flag taking a plain count sets, or NULL; *zero_ok if 0 is allowed. */
static uint32_t *count_flag(server_config *cfg, const char *name, bool *zero_ok)
{
    struct { const char *name; uint32_t *field; bool zero_ok; } flags[] = {
        {"--max-recipients", &cfg->max_recipients, false},
        {"--send-rate", &cfg->send_rate, false},
        {"--conn-rate", &cfg->conn_rate, true}, /* 0: no limit */
        {"--window", &cfg->deliver_window, false},
        {"--fetch-rate", &cfg->fetch_rate, false},
    };
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        if (strcmp(name, flags[i].name) == 0) {
            *zero_ok = flags[i].zero_ok;
            return flags[i].field;
        }
    return NULL;
}

static int parse_args(server_config *cfg, int argc, char **argv)
{
    uint32_t *count;
    bool zero_ok;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(cfg->host, sizeof cfg->host, "127.0.0.1");
    cfg->port = 7443;
    snprintf(cfg->data_dir, sizeof cfg->data_dir, "./var");
    cfg->threads = cores > 0 ? (int)cores : 1;
    cfg->sms[0] = 0;
    cfg->retention_ms = 30ULL * 86400000ULL;
    cfg->heartbeat_seconds = 30;
    cfg->max_frame_bytes = 256 * 1024;
    cfg->max_recipients = 16;
    cfg->send_rate = 100;
    cfg->conn_rate = 100;
    cfg->deliver_window = 256;
    cfg->fetch_rate = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (!v) {
            fprintf(stderr, "parleyd: %s needs a value\n", a);
            return -1;
        }
        i++;
        if (strcmp(a, "--listen") == 0) {
            const char *colon = strrchr(v, ':');
            int port = colon ? atoi(colon + 1) : -1;
            if (!colon || (size_t)(colon - v) >= sizeof cfg->host || port < 0 || port > 65535) {
                fprintf(stderr, "parleyd: --listen wants HOST:PORT, got '%s'\n", v);
                return -1;
            }
            memcpy(cfg->host, v, (size_t)(colon - v));
            cfg->host[colon - v] = 0;
            cfg->port = port;
        } else if (strcmp(a, "--data") == 0) {
            snprintf(cfg->data_dir, sizeof cfg->data_dir, "%s", v);
        } else if (strcmp(a, "--threads") == 0) {
            cfg->threads = atoi(v);
            if (cfg->threads < 1 || cfg->threads > 256) {
                fprintf(stderr, "parleyd: --threads must be 1..256\n");
                return -1;
            }
        } else if (strcmp(a, "--sms") == 0) {
            if (strncmp(v, "file:", 5) != 0 && strncmp(v, "http:", 5) != 0) {
                fprintf(stderr, "parleyd: --sms wants file:PATH or http:URL\n");
                return -1;
            }
            snprintf(cfg->sms, sizeof cfg->sms, "%s", v);
        } else if (strcmp(a, "--retention") == 0) {
            if (!(cfg->retention_ms = parse_duration(v))) {
                fprintf(stderr, "parleyd: --retention wants e.g. 30d, 12h, 90m or 3600s\n");
                return -1;
            }
        } else if (strcmp(a, "--heartbeat") == 0) {
            cfg->heartbeat_seconds = (uint32_t)atoi(v);
            if (cfg->heartbeat_seconds < 1 || cfg->heartbeat_seconds > 3600) {
                fprintf(stderr, "parleyd: --heartbeat must be 1..3600 seconds\n");
                return -1;
            }
        } else if (strcmp(a, "--max-frame") == 0) {
            long n = atol(v);
            if (n < 4096 || n > 64L * 1024 * 1024) {
                fprintf(stderr, "parleyd: --max-frame must be 4 KiB..64 MiB\n");
                return -1;
            }
            cfg->max_frame_bytes = (uint32_t)n;
        } else if ((count = count_flag(cfg, a, &zero_ok))) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            if (*end || end == v || n > 1000000 || (n == 0 && !zero_ok)) {
                fprintf(stderr, "parleyd: %s wants a number from %d to 1000000\n", a, zero_ok ? 0 : 1);
                return -1;
            }
            *count = (uint32_t)n;
        } else {
            fprintf(stderr, "parleyd: unknown option %s\n", a);
            usage(stderr);
            return -1;
        }
    }
    if (!cfg->sms[0])
        snprintf(cfg->sms, sizeof cfg->sms, "file:%s/sms.log", cfg->data_dir);
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

    int rc = store_open(&srv.st, srv.cfg.data_dir, 0);
    if (rc != STORE_OK) {
        fprintf(stderr, "parleyd: cannot open the store in %s: %s\n", srv.cfg.data_dir, store_strerror(rc));
        return 1;
    }
    pthread_mutex_init(&srv.codes_lock, NULL);
    /* a million device buckets (16 MiB of address space, touched only where used);
     * 4096 address buckets */
    if (rate_table_init(&srv.send_limit, 1 << 20, srv.cfg.send_rate, srv.cfg.send_rate * 2) != 0 ||
        rate_table_init(&srv.conn_limit, 4096, srv.cfg.conn_rate, srv.cfg.conn_rate) != 0 ||
        rate_table_init(&srv.fetch_limit, 1 << 20, srv.cfg.fetch_rate, srv.cfg.fetch_rate * 2) != 0 ||
        routes_init(&srv.routes) != 0) {
        store_close(srv.st);
        return 1;
    }
    if ((rc = writer_start(&srv.wr, srv.st, 4096)) != STORE_OK || io_start(&srv) != 0) {
        if (rc == STORE_OK)
            writer_stop(srv.wr);
        store_close(srv.st);
        return 1;
    }
    printf("parleyd listening on %s:%d (%d threads, data %s, sms %s)\n", srv.cfg.host, srv.cfg.port,
           srv.cfg.threads, srv.cfg.data_dir, srv.cfg.sms);
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "parleyd: signal %d: closing connections\n", sig);
    io_stop(&srv);       /* no more input is read, so no more writes come */
    writer_stats ws = writer_stop(srv.wr); /* commits what is queued */
    io_finish(&srv);     /* the threads send the last answers and end */
    io_join(&srv);
    store_close(srv.st);
    routes_destroy(&srv.routes);
    rate_table_destroy(&srv.send_limit);
    rate_table_destroy(&srv.conn_limit);
    rate_table_destroy(&srv.fetch_limit);
    for (code_entry *e = srv.codes, *next; e; e = next) {
        next = e->next;
        sodium_memzero(e, sizeof *e);
        free(e);
    }
    /* how well commits were grouped (what a benchmark run wants to know) */
    fprintf(stderr, "parleyd: stopped after %llu commits of %llu writes\n", (unsigned long long)ws.batches,
            (unsigned long long)ws.jobs);
    return 0;
}
