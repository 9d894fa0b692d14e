/* parley-bench - load generator for parleyd (docs/bench.md).
 *   parley-bench [options] WORKLOAD [workload options]
 * One process orchestrates a run: a work directory, `parleyctl provision` for the
 * devices the workload needs, parleyd on a free loopback port, and worker processes
 * (pb_worker.c) that each own a slice of the devices and talk to the server. The parent
 * sends them phase commands over socketpairs, merges their counters and latency
 * histograms, reads the server's CPU and memory from /proc, and prints a table and,
 * as the last line of stdout, one JSON object. The exit status is 0 only for a run
 * whose every check passed. */
#define _GNU_SOURCE /* prctl, pipe2, nftw, sched_setaffinity */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pb.h"

#ifndef PARLEY_SOURCE_DIR
#define PARLEY_SOURCE_DIR "."
#endif
#define MAX_WORKERS 64
#define MAX_SERVER_ARGS 16
#define QUERY_TIMEOUT_MS 10000
#define POLL_MS 20

static const char *const workload_names[] = {"idle", "pairs", "offline", "storm"};

/* ---- options ----------------------------------------------------------------------- */

enum { O_U32, O_U64, O_DBL, O_STR, O_FLAG, O_LIST };
#define ALL 0xF
#define W_IDLE (1u << PB_IDLE)
#define W_PAIRS (1u << PB_PAIRS)
#define W_OFFLINE (1u << PB_OFFLINE)
#define W_STORM (1u << PB_STORM)

static struct {
    /* global */
    const char *build, *dir, *json, *commit;
    const char *server_cpus, *cpus;  /* CPU lists to pin parleyd and this generator to */
    cpu_set_t server_set, own_set;
    bool keep;
    uint32_t workers, sources, concurrency, server_threads;
    double timeout;
    const char *server_args[MAX_SERVER_ARGS];
    uint32_t n_server_args;
    /* workloads */
    int workload;
    uint32_t connections, pairs, window, payload, recipients, senders, devices, pending;
    double hold, seconds, warmup, rate;
    uint64_t messages;
} O = {.sources = 4, .concurrency = 1000, .window = 32, .payload = 100, .hold = 10, .seconds = 10,
       .warmup = 2, .recipients = 1000, .senders = 100, .pending = 10, .workload = -1};

typedef struct {
    const char *name;
    int kind;
    void *ptr;
    double min, max;
    unsigned workloads;
    bool given;
} option;

static option options[] = {
    {"--build", O_STR, &O.build, 0, 0, ALL, false},
    {"--dir", O_STR, &O.dir, 0, 0, ALL, false},
    {"--keep", O_FLAG, &O.keep, 0, 0, ALL, false},
    {"--json", O_STR, &O.json, 0, 0, ALL, false},
    {"--commit", O_STR, &O.commit, 0, 0, ALL, false},
    {"--workers", O_U32, &O.workers, 1, MAX_WORKERS, ALL, false},
    {"--sources", O_U32, &O.sources, 1, 250, ALL, false},
    {"--concurrency", O_U32, &O.concurrency, 1, 1000000, ALL, false},
    {"--server-threads", O_U32, &O.server_threads, 1, 256, ALL, false},
    {"--server-arg", O_LIST, NULL, 0, 0, ALL, false},
    {"--server-cpus", O_STR, &O.server_cpus, 0, 0, ALL, false},
    {"--cpus", O_STR, &O.cpus, 0, 0, ALL, false},
    {"--timeout", O_DBL, &O.timeout, 1, 86400, ALL, false},
    {"--connections", O_U32, &O.connections, 1, 10000000, W_IDLE, false},
    {"--hold", O_DBL, &O.hold, 0, 86400, W_IDLE, false},
    {"--pairs", O_U32, &O.pairs, 1, 5000000, W_PAIRS, false},
    {"--window", O_U32, &O.window, 1, 64, W_PAIRS | W_OFFLINE | W_STORM, false},
    {"--seconds", O_DBL, &O.seconds, 0.1, 86400, W_PAIRS, false},
    {"--warmup", O_DBL, &O.warmup, 0, 3600, W_PAIRS, false},
    {"--rate", O_DBL, &O.rate, 1, 1e9, W_PAIRS, false},
    {"--payload", O_U32, &O.payload, PB_PAYLOAD_MIN, 256 * 1024 - 1024, W_PAIRS, false},
    {"--messages", O_U64, &O.messages, 1, 1e12, W_OFFLINE, false},
    {"--recipients", O_U32, &O.recipients, 1, 10000000, W_OFFLINE, false},
    {"--senders", O_U32, &O.senders, 1, 10000000, W_OFFLINE | W_STORM, false},
    {"--devices", O_U32, &O.devices, 1, 10000000, W_STORM, false},
    {"--pending", O_U32, &O.pending, 1, 1000000, W_STORM, false},
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: parley-bench [options] WORKLOAD [workload options]\n"
            "       parley-bench info        (this machine and commit as JSON)\n"
            "\n"
            "Starts parleyd with provisioned devices, drives it from worker processes over\n"
            "loopback, checks every message, prints a table and then one JSON line (docs/bench.md).\n"
            "Exit status: 0 correct, 1 FAILED, 2 bad usage or fanout.\n"
            "\n"
            "workloads:\n"
            "  idle    --connections N [--hold S=10]\n"
            "          N devices connect and authenticate, then idle; connect rate, server memory\n"
            "  pairs   --pairs P [--window W=32] [--seconds D=10] [--warmup S=2] [--rate R] [--payload B=100]\n"
            "          P senders each send to their own receiver; msgs/s, latency, server CPU per message\n"
            "  offline --messages M [--recipients R=1000] [--senders S=100] [--window W=32]\n"
            "          M messages stored for offline recipients, then drained; both rates\n"
            "  storm   --devices N [--pending K=10] [--senders S=100] [--window W=32]\n"
            "          K messages stored for each of N devices, then all N connect at once\n"
            "  fanout  groups are not implemented in the server yet (exits 2)\n"
            "\n"
            "options:\n"
            "  --build DIR           where parleyd and parleyctl are (default: this program's directory)\n"
            "  --dir DIR             work directory (created; must be empty) instead of a fresh one in $TMPDIR\n"
            "  --keep                keep the work directory (data, keys, parleyd.log)\n"
            "  --json FILE           also write the JSON result to FILE\n"
            "  --commit ID           commit to report (default: git rev-parse --short HEAD of the source)\n"
            "  --workers N           worker processes (default max(2, ceil(devices/15000)))\n"
            "  --sources N           loopback source addresses 127.0.0.2.. (default 4)\n"
            "  --concurrency N       connection attempts in progress at once, all workers (default 1000)\n"
            "  --server-threads N    parleyd --threads (default: parleyd's own, one per core)\n"
            "  --server-arg ARG      pass ARG to parleyd (repeat for each word, e.g. --server-arg --window\n"
            "                        --server-arg 512)\n"
            "  --server-cpus LIST    pin parleyd to these CPUs (e.g. 0, or 0-1, or 0,2)\n"
            "  --cpus LIST           pin the load generator (this process and its workers) to these CPUs\n"
            "                        (one core each: --server-threads 1 --server-cpus 0 --cpus 1)\n"
            "  --timeout S           limit for each phase (default: scaled to its size)\n"
            "  --help                this text\n");
}

static int bad_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "parley-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(parley-bench --help lists the options)\n");
    va_end(ap);
    return 2;
}

static int parse_value(option *o, const char *v)
{
    char *end;
    errno = 0;
    if (o->kind == O_STR) {
        if (!*v)
            return bad_usage("%s wants a non-empty value", o->name);
        *(const char **)o->ptr = v;
        return 0;
    }
    if (o->kind == O_LIST) {
        if (O.n_server_args == MAX_SERVER_ARGS)
            return bad_usage("at most %d --server-arg", MAX_SERVER_ARGS);
        O.server_args[O.n_server_args++] = v;
        return 0;
    }
    double d = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(d))
        return bad_usage("%s wants a number, not '%s'", o->name, v);
    if (o->kind != O_DBL && d != floor(d))
        return bad_usage("%s wants a whole number, not '%s'", o->name, v);
    if (d < o->min || d > o->max)
        return bad_usage("%s must be from %.15g to %.15g, not %s", o->name, o->min, o->max, v);
    if (o->kind == O_U32)
        *(uint32_t *)o->ptr = (uint32_t)d;
    else if (o->kind == O_U64)
        *(uint64_t *)o->ptr = (uint64_t)d;
    else
        *(double *)o->ptr = d;
    return 0;
}

/* "0", "0-3", "0,2-3" into set; false if it is not such a list or names no CPU. */
static bool parse_cpus(const char *s, cpu_set_t *set)
{
    CPU_ZERO(set);
    const char *p = s;
    while (*p) {
        char *end;
        unsigned long lo = strtoul(p, &end, 10), hi = lo;
        if (end == p)
            return false;
        if (*end == '-') {
            p = end + 1;
            hi = strtoul(p, &end, 10);
            if (end == p || hi < lo)
                return false;
        }
        if (hi >= CPU_SETSIZE)
            return false;
        for (unsigned long c = lo; c <= hi; c++)
            CPU_SET(c, set);
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            return false;
    }
    return CPU_COUNT(set) > 0;
}

static int parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (a[0] != '-') {
            if (O.workload >= 0)
                return bad_usage("one workload at a time ('%s' after '%s')", a, workload_names[O.workload]);
            for (int w = 0; w < 4; w++)
                if (!strcmp(a, workload_names[w]))
                    O.workload = w;
            if (!strcmp(a, "fanout")) {
                printf("parley-bench: fanout needs groups, which parleyd does not implement yet\n");
                exit(2);
            }
            if (O.workload < 0)
                return bad_usage("unknown workload '%s' (idle, pairs, offline, storm, fanout)", a);
            continue;
        }
        option *o = NULL;
        for (size_t k = 0; k < sizeof options / sizeof *options; k++)
            if (!strcmp(a, options[k].name))
                o = &options[k];
        if (!o)
            return bad_usage("unknown option %s", a);
        if (o->given && o->kind != O_LIST)
            return bad_usage("%s given twice", a);
        o->given = true;
        if (o->kind == O_FLAG) {
            *(bool *)o->ptr = true;
            continue;
        }
        if (i + 1 >= argc)
            return bad_usage("%s needs a value", a);
        int rc = parse_value(o, argv[++i]);
        if (rc)
            return rc;
    }
    if (O.workload < 0)
        return bad_usage("name a workload: idle, pairs, offline, storm or fanout");
    for (size_t k = 0; k < sizeof options / sizeof *options; k++)
        if (options[k].given && !(options[k].workloads & (1u << O.workload)))
            return bad_usage("%s is not an option of %s", options[k].name, workload_names[O.workload]);
    if (O.workload == PB_IDLE && !O.connections)
        return bad_usage("idle needs --connections N");
    if (O.workload == PB_PAIRS && !O.pairs)
        return bad_usage("pairs needs --pairs P");
    if (O.workload == PB_OFFLINE && !O.messages)
        return bad_usage("offline needs --messages M");
    if (O.workload == PB_STORM && !O.devices)
        return bad_usage("storm needs --devices N");
    return 0;
}

/* ---- small helpers ------------------------------------------------------------------ */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static double secs(uint64_t ns)
{
    return (double)ns / 1e9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Sleeps until the CLOCK_MONOTONIC time t, waking for a signal. */
static void sleep_until(uint64_t t)
{
    while (!interrupted) {
        uint64_t now = clock_mono_ns();
        if (now >= t)
            return;
        uint64_t ms = (t - now) / 1000000u;
        sleep_ms(ms > 50 ? 50 : ms ? (unsigned)ms : 1);
    }
}

/* 1234567 -> "1,234,567" (one of 16 rotating buffers: enough for one printf). */
static const char *grp(double v)
{
    static char bufs[16][32];
    static int k;
    char *out = bufs[k++ % 16], tmp[32];
    if (!isfinite(v))
        return "n/a";
    long long n = llround(v);
    snprintf(tmp, sizeof tmp, "%lld", n < 0 ? -n : n);
    size_t len = strlen(tmp), o = 0;
    if (n < 0)
        out[o++] = '-';
    for (size_t i = 0; i < len; i++) {
        out[o++] = tmp[i];
        if ((len - i - 1) % 3 == 0 && i + 1 < len)
            out[o++] = ',';
    }
    out[o] = 0;
    return out;
}

/* A growing string: the JSON result. */
typedef struct {
    char *s;
    size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap <= b->len + (size_t)n)
            cap *= 2;
        char *grown = realloc(b->s, cap);
        if (!grown) {
            fprintf(stderr, "parley-bench: out of memory\n");
            exit(1);
        }
        b->s = grown;
        b->cap = cap;
    }
}

static void sb_str(sbuf *b, const char *s)
{
    sb_add(b, "\"");
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            sb_add(b, "\\%c", ch);
        else if (ch < 0x20)
            sb_add(b, "\\u%04x", ch);
        else
            sb_add(b, "%c", ch);
    }
    sb_add(b, "\"");
}

/* A number, or null when it is not one (a rate over no time). */
static void sb_num(sbuf *b, double v, int decimals)
{
    if (!isfinite(v))
        sb_add(b, "null");
    else
        sb_add(b, "%.*f", decimals, v);
}

static double ratio(double a, double b)
{
    return b > 0 ? a / b : NAN;
}

/* ---- the machine, the commit ----------------------------------------------------------- */

static char machine_json[512], commit_id[64], date_utc[32];

static void read_machine(void)
{
    char cpu[128] = "unknown", line[512];
    long mem_kb = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            const char *v = strchr(line, ':') + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            snprintf(cpu, sizeof cpu, "%.*s", (int)strcspn(v, "\n"), v);
            break;
        }
    if (f)
        fclose(f);
    f = fopen("/proc/meminfo", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemTotal: %ld kB", &mem_kb) == 1)
            break;
    if (f)
        fclose(f);
    struct utsname u;
    if (uname(&u) != 0)
        snprintf(u.release, sizeof u.release, "unknown");
    sbuf b = {0};
    sb_add(&b, "{\"cpu\":");
    sb_str(&b, cpu);
    sb_add(&b, ",\"cores\":%ld,\"kernel\":", sysconf(_SC_NPROCESSORS_ONLN));
    sb_str(&b, u.release);
    sb_add(&b, ",\"mem_total_kb\":%ld}", mem_kb);
    snprintf(machine_json, sizeof machine_json, "%s", b.s);
    free(b.s);

    if (O.commit) {
        snprintf(commit_id, sizeof commit_id, "%s", O.commit);
    } else {
        snprintf(commit_id, sizeof commit_id, "unknown");
        FILE *g = popen("git -C '" PARLEY_SOURCE_DIR "' rev-parse --short HEAD 2>/dev/null", "r");
        char id[64];
        if (g && fgets(id, sizeof id, g) && id[0] && id[0] != '\n')
            snprintf(commit_id, sizeof commit_id, "%.*s", (int)strcspn(id, "\n"), id);
        if (g)
            pclose(g);
    }
    for (char *c = commit_id; *c; c++) /* it names a file: keep it tame */
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '-' ||
              *c == '.' || *c == '_'))
            *c = '_';
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date_utc, sizeof date_utc, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- the server: /proc ------------------------------------------------------------------ */

typedef struct {
    long vmrss_kb, anon_kb, file_kb;
} proc_mem;

static bool read_proc_mem(pid_t pid, proc_mem *m)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    memset(m, 0, sizeof *m);
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "VmRSS: %ld", &m->vmrss_kb);
        sscanf(line, "RssAnon: %ld", &m->anon_kb);
        sscanf(line, "RssFile: %ld", &m->file_kb);
    }
    fclose(f);
    return true;
}

/* utime + stime from a stat file (a process's: all its threads), in seconds. */
static double read_stat_cpu(const char *path)
{
    char buf[1024];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NAN;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return NAN;
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return NAN;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double read_proc_cpu(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    return read_stat_cpu(path);
}

/* Bytes the process caused to be written to storage (/proc/PID/io write_bytes): for
 * parleyd, the pages its commits wrote. */
static double read_proc_written(pid_t pid)
{
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/%d/io", (int)pid);
    FILE *f = fopen(path, "r");
    unsigned long long v = 0;
    bool ok = false;
    while (f && !ok && fgets(line, sizeof line, f))
        ok = sscanf(line, "write_bytes: %llu", &v) == 1;
    if (f)
        fclose(f);
    return ok ? (double)v : NAN;
}

/* /proc/net/sockstat: "TCP: inuse N orphan N tw N alloc N mem PAGES". */
static bool read_sockstat(long *inuse, long *mem_pages)
{
    char line[256];
    FILE *f = fopen("/proc/net/sockstat", "r");
    bool ok = false;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "TCP: inuse %ld orphan %*d tw %*d alloc %*d mem %ld", inuse, mem_pages) == 2)
            ok = true;
    if (f)
        fclose(f);
    return ok;
}

/* Open sockets of a process (its fds that are sockets). */
static long count_sockets(pid_t pid)
{
    char path[64], link[128], target[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    long n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(link, sizeof link, "%s/%.20s", path, e->d_name);
        ssize_t len = readlink(link, target, sizeof target - 1);
        n += len > 7 && !strncmp(target, "socket:", 7);
    }
    if (d)
        closedir(d);
    return n;
}

/* Busy time of every CPU (all but idle and iowait), in seconds: /proc/stat's first line. */
static double read_busy_cpu(void)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    int n = f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                       &v[6], &v[7])
              : 0;
    if (f)
        fclose(f);
    if (n < 8)
        return NAN;
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

/* Each thread's utime + stime (seconds), in thread-id order (that is, creation order). */
static int read_thread_cpu(pid_t pid, int *tids, double *cpu, int max)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    while (d && n < max && (e = readdir(d))) {
        int tid = atoi(e->d_name);
        if (tid <= 0)
            continue;
        int at = n++;
        while (at > 0 && tids[at - 1] > tid) { /* insertion: keep them sorted */
            tids[at] = tids[at - 1];
            cpu[at] = cpu[at - 1];
            at--;
        }
        char stat[96];
        snprintf(stat, sizeof stat, "%s/%d/stat", path, tid);
        tids[at] = tid;
        cpu[at] = read_stat_cpu(stat);
    }
    if (d)
        closedir(d);
    return n;
}

/* ---- the run's state ------------------------------------------------------------------ */

static pb_config cfg;
static char workdir[PATH_MAX], build_dir[PATH_MAX];
static bool workdir_made;
static pid_t server_pid = -1;
static int server_out = -1, server_status = -1;
static bool server_gone;
static uint32_t nworkers, nstarted; /* workers wanted, and forked so far */
static pid_t worker_pid[MAX_WORKERS];
static int worker_ctl[MAX_WORKERS];
static char failure[600]; /* why the run FAILED, or empty */

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    if (failure[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(failure, sizeof failure, fmt, ap);
    va_end(ap);
}

static bool server_alive(void)
{
    if (server_pid <= 0 || server_gone)
        return false;
    int st;
    if (waitpid(server_pid, &st, WNOHANG) == server_pid) {
        server_gone = true;
        server_status = st;
        fail("parleyd exited during the run (%s %d)", WIFSIGNALED(st) ? "signal" : "status",
             WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        return false;
    }
    return true;
}

static double server_cpu(void)
{
    return server_alive() ? read_proc_cpu(server_pid) : NAN;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static long nofile_hard(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_max == RLIM_INFINITY)
        return 1L << 20;
    return (long)rl.rlim_max;
}

/* Runs argv with stdout to out_path; waits at most timeout_s. Returns its exit status
 * (or -1). */
static int run_tool(char *const argv[], const char *out_path, double timeout_s)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0)
            dup2(fd, 1);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execv(argv[0], argv);
        fprintf(stderr, "parley-bench: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    uint64_t deadline = clock_mono_ns() + (uint64_t)(timeout_s * 1e9);
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (clock_mono_ns() > deadline || interrupted) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        sleep_ms(10);
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* ---- provisioning and keys ------------------------------------------------------------ */

static bool provision(uint32_t n, double *took)
{
    char exe[PATH_MAX + 16], data[PATH_MAX + 16], keys[PATH_MAX + 16], out[PATH_MAX + 32], count[16];
    snprintf(exe, sizeof exe, "%s/parleyctl", build_dir);
    snprintf(data, sizeof data, "%s/data", workdir);
    snprintf(keys, sizeof keys, "%s/keys", workdir);
    snprintf(out, sizeof out, "%s/provision.log", workdir);
    snprintf(count, sizeof count, "%u", n);
    if (mkdir(data, 0700) != 0) {
        fail("cannot make %s: %s", data, strerror(errno));
        return false;
    }
    char *argv[] = {exe, "provision", "--data", data, "--count", count, "--keys", keys, NULL};
    uint64_t t = clock_mono_ns();
    int rc = run_tool(argv, out, 60 + n / 1000.0);
    *took = secs(clock_mono_ns() - t);
    if (rc != 0) {
        fail("parleyctl provision of %u devices failed (status %d)", n, rc);
        return false;
    }
    FILE *f = fopen(keys, "r");
    if (!f) {
        fail("cannot read %s: %s", keys, strerror(errno));
        return false;
    }
    pb_keys = calloc(n, sizeof *pb_keys);
    char line[512], acct[64], priv[96];
    uint32_t i = 0;
    while (pb_keys && i < n && fgets(line, sizeof line, f)) {
        if (sscanf(line, "%*s %63s %*u %95s", acct, priv) != 2 ||
            sodium_hex2bin(pb_keys[i].account, 16, acct, strlen(acct), NULL, NULL, NULL) != 0 ||
            sodium_hex2bin(pb_keys[i].priv, 32, priv, strlen(priv), NULL, NULL, NULL) != 0)
            break;
        i++;
    }
    fclose(f);
    if (i != n) {
        fail("%s holds %u usable lines, not %u", keys, i, n);
        return false;
    }
    return true;
}

/* ---- parleyd ------------------------------------------------------------------------ */

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    a.sin_addr.s_addr = htonl(0x7f000001u);
    uint16_t port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static bool start_server(void)
{
    char exe[PATH_MAX + 16], data[PATH_MAX + 16], sms[PATH_MAX + 32], log[PATH_MAX + 32], listen_at[32];
    char threads[16];
    snprintf(exe, sizeof exe, "%s/parleyd", build_dir);
    snprintf(data, sizeof data, "%s/data", workdir);
    snprintf(sms, sizeof sms, "file:%s/sms.log", workdir);
    snprintf(log, sizeof log, "%s/parleyd.log", workdir);
    snprintf(threads, sizeof threads, "%u", O.server_threads);
    for (int attempt = 0; attempt < 3; attempt++) {
        cfg.port = free_port();
        snprintf(listen_at, sizeof listen_at, "127.0.0.1:%u", cfg.port);
        /* thousands of devices from a few loopback addresses: no per-address limits */
        char *argv[18 + MAX_SERVER_ARGS] = {exe, "--listen", listen_at, "--data", data, "--sms", sms, "--conn-rate",
                                           "0", "--send-rate", "1000000", "--max-conns-per-address", "0"};
        int argc = 13;
        if (O.server_threads) {
            argv[argc++] = "--threads";
            argv[argc++] = threads;
        }
        for (uint32_t i = 0; i < O.n_server_args; i++)
            argv[argc++] = (char *)O.server_args[i];
        argv[argc] = NULL;
        int pfd[2];
        if (pipe2(pfd, O_CLOEXEC) != 0) {
            fail("pipe: %s", strerror(errno));
            return false;
        }
        pid_t pid = fork();
        if (pid == 0) {
            int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
            dup2(pfd[1], 1);
            if (logfd >= 0)
                dup2(logfd, 2);
            raise_nofile();
            if (O.server_cpus && sched_setaffinity(0, sizeof O.server_set, &O.server_set) != 0) {
                fprintf(stderr, "parley-bench: cannot pin parleyd to CPUs %s: %s\n", O.server_cpus, strerror(errno));
                _exit(126);
            }
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            execv(exe, argv);
            fprintf(stderr, "parley-bench: cannot run %s: %s\n", exe, strerror(errno));
            _exit(127);
        }
        close(pfd[1]);
        if (pid < 0) {
            close(pfd[0]);
            fail("fork: %s", strerror(errno));
            return false;
        }
        server_pid = pid;
        server_gone = false;
        /* its first line says it listens */
        char line[512];
        size_t len = 0;
        bool ready = false;
        uint64_t deadline = clock_mono_ns() + 15000000000ull;
        while (!ready && !interrupted && clock_mono_ns() < deadline) {
            struct pollfd p = {pfd[0], POLLIN, 0};
            if (poll(&p, 1, 100) <= 0)
                continue;
            ssize_t n = read(pfd[0], line + len, sizeof line - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            line[len] = 0;
            ready = strstr(line, "parleyd listening") != NULL;
            if (len == sizeof line - 1)
                break;
        }
        if (ready) {
            server_out = pfd[0];
            return true;
        }
        close(pfd[0]);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        server_pid = -1;
        /* another process may have taken the port between our probe and its bind */
        char text[4096] = "";
        FILE *f = fopen(log, "r");
        size_t got = f ? fread(text, 1, sizeof text - 1, f) : 0;
        text[got] = 0;
        if (f)
            fclose(f);
        if (!strstr(text, "cannot listen") || interrupted) {
            fail("parleyd did not start (see below)");
            fprintf(stderr, "parley-bench: parleyd did not say it listens; its log:\n%s", text);
            return false;
        }
    }
    fail("parleyd could not listen on a free port, three times");
    return false;
}

/* Stops parleyd with SIGTERM and waits (bounded); false if it did not end well. */
static bool stop_server(double *took)
{
    if (server_pid <= 0)
        return true;
    uint64_t t = clock_mono_ns();
    bool ok = true;
    if (!server_gone) {
        kill(server_pid, SIGTERM);
        uint64_t deadline = t + 30000000000ull;
        int st = 0;
        pid_t r = 0;
        while ((r = waitpid(server_pid, &st, WNOHANG)) == 0 && clock_mono_ns() < deadline)
            sleep_ms(10);
        if (r != server_pid) {
            kill(server_pid, SIGKILL);
            waitpid(server_pid, &st, 0);
            fail("parleyd did not stop within 30 s of SIGTERM (killed)");
            ok = false;
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fail("parleyd ended with %s %d after SIGTERM", WIFSIGNALED(st) ? "signal" : "status",
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
            ok = false;
        }
        server_status = st;
        server_gone = true;
    }
    *took = secs(clock_mono_ns() - t);
    if (server_out >= 0)
        close(server_out);
    server_out = -1;
    return ok;
}

/* Lines parleyd wrote to stderr, less its start and stop lines: counted and shown. */
static int server_log_lines(char *first, size_t cap)
{
    char path[PATH_MAX + 32], line[512];
    snprintf(path, sizeof path, "%s/parleyd.log", workdir);
    FILE *f = fopen(path, "r");
    int n = 0;
    size_t used = 0;
    first[0] = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (strstr(line, "closing connections") || strstr(line, "parleyd: stopped"))
            continue;
        if (n++ < 8 && used + strlen(line) + 1 < cap) {
            memcpy(first + used, line, strlen(line) + 1);
            used += strlen(line);
        }
    }
    if (f)
        fclose(f);
    return n;
}

/* ---- workers --------------------------------------------------------------------------- */

static bool start_workers(void)
{
    for (uint32_t i = 0; i < nworkers; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
            fail("socketpair: %s", strerror(errno));
            return false;
        }
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) {
            fail("fork: %s", strerror(errno));
            close(sv[0]);
            close(sv[1]);
            return false;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            signal(SIGINT, SIG_IGN); /* the parent decides; a Ctrl-C reaches it too */
            signal(SIGTERM, SIG_DFL);
            close(sv[0]);
            for (uint32_t k = 0; k < i; k++)
                close(worker_ctl[k]);
            if (server_out >= 0)
                close(server_out);
            pb_worker_main(&cfg, i, sv[1]);
        }
        close(sv[1]);
        worker_pid[i] = pid;
        worker_ctl[i] = sv[0];
        nstarted = i + 1;
    }
    return true;
}

static bool command_all(uint32_t cmd, uint32_t roles, uint64_t t_start, uint64_t t0, uint64_t t1)
{
    pb_cmd c = {cmd, roles, t_start, t0, t1};
    for (uint32_t i = 0; i < nworkers; i++)
        if (send(worker_ctl[i], &c, sizeof c, MSG_NOSIGNAL) != (ssize_t)sizeof c) {
            fail("worker %u is gone (%s)", i, strerror(errno));
            return false;
        }
    return true;
}

static bool recv_reply(uint32_t i, void *buf, size_t len)
{
    struct pollfd p = {worker_ctl[i], POLLIN, 0};
    int rc;
    while ((rc = poll(&p, 1, QUERY_TIMEOUT_MS)) < 0 && errno == EINTR)
        ;
    if (rc <= 0) {
        fail("worker %u did not answer within %d s", i, QUERY_TIMEOUT_MS / 1000);
        return false;
    }
    ssize_t n = recv(worker_ctl[i], buf, len, 0);
    if (n != (ssize_t)len) {
        fail("worker %u died", i);
        return false;
    }
    return true;
}

/* Every worker's counters (and histograms when final), merged. */
static bool query_all(pb_stats *sum, bool final, pb_hist *hist)
{
    memset(sum, 0, sizeof *sum);
    if (hist)
        pb_hist_init(hist);
    if (!command_all(final ? PB_CMD_FINAL : PB_CMD_QUERY, 0, 0, 0, 0))
        return false;
    static pb_hist h;
    for (uint32_t i = 0; i < nworkers; i++) {
        pb_stats s;
        if (!recv_reply(i, &s, sizeof s))
            return false;
        pb_stats_merge(sum, &s);
        if (final) {
            if (!recv_reply(i, &h, sizeof h))
                return false;
            if (hist)
                pb_hist_merge(hist, &h);
        }
    }
    return true;
}

static void stop_workers(void)
{
    pb_cmd c = {PB_CMD_QUIT, 0, 0, 0, 0};
    for (uint32_t i = 0; i < nstarted; i++)
        send(worker_ctl[i], &c, sizeof c, MSG_NOSIGNAL);
    uint64_t deadline = clock_mono_ns() + 10000000000ull;
    for (uint32_t i = 0; i < nstarted; i++) {
        int st;
        while (waitpid(worker_pid[i], &st, WNOHANG) == 0) {
            if (clock_mono_ns() > deadline) {
                kill(worker_pid[i], SIGKILL);
                waitpid(worker_pid[i], &st, 0);
                break;
            }
            sleep_ms(5);
        }
        close(worker_ctl[i]);
    }
    nstarted = 0;
}

/* ---- phases ---------------------------------------------------------------------------- */

/* What a phase waits for; UINT64_MAX: not a condition. */
typedef struct {
    uint64_t authed, drained, acked, delivered, receipts;
    bool settle; /* pairs: nothing in flight, every acked message delivered, every receipt in */
} goal;

static const goal no_goal = {UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, false};

static uint64_t fatal_count(const pb_stats *s)
{
    return s->conn_failed + s->unexpected_closes + s->error_frames + s->protocol_errors + s->duplicates +
           s->out_of_order + s->bad_payload + s->receipt_duplicates + s->receipt_unknown + s->unexpected_envelopes;
}

static bool goal_met(const goal *g, const pb_stats *s)
{
    if (s->authed < g->authed && g->authed != UINT64_MAX)
        return false;
    if (g->drained != UINT64_MAX && s->drained < g->drained)
        return false;
    if (g->acked != UINT64_MAX && s->acked + s->send_errors < g->acked)
        return false;
    if (g->delivered != UINT64_MAX && s->delivered < g->delivered)
        return false;
    if (g->receipts != UINT64_MAX && s->receipts < g->receipts)
        return false;
    if (g->settle && (s->in_flight || s->delivered < s->acked || s->receipts < s->delivered))
        return false;
    return true;
}

static void describe(const goal *g, const pb_stats *s, char *out, size_t cap)
{
    sbuf b = {0};
    if (g->authed != UINT64_MAX)
        sb_add(&b, "%s of %s devices authenticated (%s failed); ", grp((double)s->authed), grp((double)g->authed),
               grp((double)s->conn_failed));
    if (g->drained != UINT64_MAX)
        sb_add(&b, "%s of %s drained; ", grp((double)s->drained), grp((double)g->drained));
    if (g->acked != UINT64_MAX)
        sb_add(&b, "%s of %s messages acked; ", grp((double)(s->acked + s->send_errors)), grp((double)g->acked));
    if (g->delivered != UINT64_MAX)
        sb_add(&b, "%s of %s delivered (%s missing); ", grp((double)s->delivered), grp((double)g->delivered),
               grp((double)(g->delivered - s->delivered)));
    if (g->receipts != UINT64_MAX)
        sb_add(&b, "%s of %s receipts; ", grp((double)s->receipts), grp((double)g->receipts));
    if (g->settle)
        sb_add(&b, "%s sends in flight, %s of %s acked messages delivered, %s of %s receipts; ",
               grp((double)s->in_flight), grp((double)s->delivered), grp((double)s->acked), grp((double)s->receipts),
               grp((double)s->delivered));
    if (b.len >= 2)
        b.s[b.len - 2] = 0; /* the last "; " */
    snprintf(out, cap, "%s", b.s ? b.s : "");
    free(b.s);
}

/* Polls the workers until the goal is met. Fails at the first error, when parleyd dies,
 * after timeout_s, or after stall_s without progress. */
static bool wait_phase(const char *phase, const goal *g, double timeout_s, double stall_s, pb_stats *s)
{
    if (O.timeout > 0)
        timeout_s = stall_s = O.timeout;
    uint64_t start = clock_mono_ns(), moved = start, last_sig = UINT64_MAX;
    for (;;) {
        if (!query_all(s, false, NULL))
            return false;
        if (fatal_count(s)) {
            fail("%s: %s", phase, s->first_error[0] ? s->first_error : "an error");
            return false;
        }
        if (goal_met(g, s))
            return true;
        if (!server_alive())
            return false;
        uint64_t now = clock_mono_ns(), sig = s->authed + s->drained + s->acked + s->delivered + s->receipts + s->sent;
        if (sig != last_sig)
            moved = now, last_sig = sig;
        bool timed_out = secs(now - start) > timeout_s, stalled = secs(now - moved) > stall_s;
        if (timed_out || stalled || interrupted) {
            char what[400];
            describe(g, s, what, sizeof what);
            if (interrupted)
                fail("%s: interrupted after %.1f s: %s", phase, secs(now - start), what);
            else
                fail("%s: %s after %.1f s: %s", phase, timed_out ? "timed out" : "no progress for", 
                     timed_out ? secs(now - start) : stall_s, what);
            return false;
        }
        sleep_ms(POLL_MS);
    }
}

/* ---- the report ------------------------------------------------------------------------- */

static sbuf J; /* the JSON result */

static void failures_json(const pb_stats *s, uint64_t missing, uint64_t receipts_missing)
{
    sb_add(&J,
           ",\"failures\":{\"connections_failed\":%llu,\"unexpected_closes\":%llu,\"error_frames\":%llu,"
           "\"protocol_errors\":%llu,\"send_errors\":%llu,\"duplicates\":%llu,\"out_of_order\":%llu,"
           "\"missing\":%llu,\"bad_payload\":%llu,\"receipt_duplicates\":%llu,\"receipt_unknown\":%llu,"
           "\"receipts_missing\":%llu,\"unexpected_envelopes\":%llu}",
           (unsigned long long)s->conn_failed, (unsigned long long)s->unexpected_closes,
           (unsigned long long)s->error_frames, (unsigned long long)s->protocol_errors,
           (unsigned long long)s->send_errors, (unsigned long long)s->duplicates, (unsigned long long)s->out_of_order,
           (unsigned long long)missing, (unsigned long long)s->bad_payload,
           (unsigned long long)s->receipt_duplicates, (unsigned long long)s->receipt_unknown,
           (unsigned long long)receipts_missing, (unsigned long long)s->unexpected_envelopes);
}

static void latency_json(const pb_hist *h)
{
    sb_add(&J, "\"latency_us\":{\"count\":%llu,\"p50\":", (unsigned long long)h->count);
    sb_num(&J, h->count ? pb_hist_quantile(h, 0.50) / 1e3 : NAN, 1);
    sb_add(&J, ",\"p90\":");
    sb_num(&J, h->count ? pb_hist_quantile(h, 0.90) / 1e3 : NAN, 1);
    sb_add(&J, ",\"p99\":");
    sb_num(&J, h->count ? pb_hist_quantile(h, 0.99) / 1e3 : NAN, 1);
    sb_add(&J, ",\"p999\":");
    sb_num(&J, h->count ? pb_hist_quantile(h, 0.999) / 1e3 : NAN, 1);
    sb_add(&J, ",\"max\":");
    sb_num(&J, h->count ? h->max_ns / 1e3 : NAN, 1);
    sb_add(&J, ",\"mean\":");
    sb_num(&J, h->count ? (double)h->sum_ns / (double)h->count / 1e3 : NAN, 1);
    sb_add(&J, "}");
}

static const char *us(uint64_t ns)
{
    static char bufs[16][24];
    static int k;
    char *b = bufs[k++ % 16];
    double u = ns / 1e3;
    if (u < 1000)
        snprintf(b, 24, "%.0f µs", u);
    else if (u < 1e6)
        snprintf(b, 24, "%.2f ms", u / 1e3);
    else
        snprintf(b, 24, "%.2f s", u / 1e6);
    return b;
}

/* CPU at one moment: parleyd (and each of its threads), the workers, the whole machine. */
#define MAX_THREADS 64
typedef struct {
    uint64_t t;
    double server, loadgen, busy;
    double written; /* parleyd's bytes written to storage */
    int nth;
    int tid[MAX_THREADS];
    double th[MAX_THREADS];
} snap;

static void take_snap(snap *s, const pb_stats *q)
{
    memset(s, 0, sizeof *s);
    s->t = clock_mono_ns();
    s->loadgen = secs(q->cpu_ns);
    s->server = server_cpu();
    s->written = server_alive() ? read_proc_written(server_pid) : NAN;
    s->busy = read_busy_cpu();
    if (server_alive())
        s->nth = read_thread_cpu(server_pid, s->tid, s->th, MAX_THREADS);
}

/* Prints (and adds to cj as "key":{...}) the CPU spent between a and b; amount of unit
 * (messages, connections) for the cost per unit. Returns parleyd's CPU seconds. */
static double cpu_report(sbuf *cj, const char *label, const char *key, const snap *a, const snap *b, double amount,
                         const char *unit)
{
    double wall = secs(b->t - a->t), server = b->server - a->server, lg = b->loadgen - a->loadgen;
    double other = b->busy - a->busy - server - lg;
    if (other < 0) /* clock-tick granularity */
        other = 0;
    printf("  %-22s server %.2f s = %.2f cores", label, server, ratio(server, wall));
    if (amount > 0)
        printf(", %.1f µs/%s", ratio(server * 1e6, amount), unit);
    printf("; loadgen %.2f s = %.2f cores (%.0f%% of the two); other processes %.2f s\n", lg, ratio(lg, wall),
           100 * ratio(lg, lg + server), other);
    double written = b->written - a->written;
    if (amount > 0 && written >= 0)
        printf("  %-22s %.1f MB, %.0f bytes/%s (%.0f MB/s)\n", "  parleyd disk writes", written / 1e6,
               ratio(written, amount), unit, ratio(written / 1e6, wall));
    printf("  %-22s", "  parleyd threads");
    sb_add(cj, "%s\"%s\":{\"seconds\":", cj->len ? "," : "", key);
    sb_num(cj, wall, 3);
    sb_add(cj, ",\"server_cpu_seconds\":");
    sb_num(cj, server, 2);
    sb_add(cj, ",\"server_cpu_us_per_%s\":", unit);
    sb_num(cj, amount > 0 ? ratio(server * 1e6, amount) : NAN, 2);
    sb_add(cj, ",\"server_disk_bytes_per_%s\":", unit);
    sb_num(cj, amount > 0 && written >= 0 ? ratio(written, amount) : NAN, 0);
    sb_add(cj, ",\"server_threads_cpu_seconds\":[");
    for (int i = 0; i < b->nth; i++) {
        double before = 0;
        for (int k = 0; k < a->nth; k++)
            if (a->tid[k] == b->tid[i])
                before = a->th[k];
        printf(" %s%.2f", b->tid[i] == server_pid ? "main " : i == 1 ? "| " : "", b->th[i] - before);
        sb_add(cj, "%s", i ? "," : "");
        sb_num(cj, b->th[i] - before, 2);
    }
    printf("  (s, in creation order)\n");
    sb_add(cj, "],\"loadgen_cpu_seconds\":");
    sb_num(cj, lg, 2);
    sb_add(cj, ",\"loadgen_cpu_share\":");
    sb_num(cj, ratio(lg, lg + server), 3);
    sb_add(cj, ",\"other_cpu_seconds\":");
    sb_num(cj, other, 2);
    sb_add(cj, "}");
    return server;
}

/* ---- workloads ----------------------------------------------------------------------- */

static double scaled(double base, double amount, double per_second)
{
    return base + amount / per_second;
}

static goal connect_goal(uint64_t devices, bool drained)
{
    goal g = no_goal;
    g.authed = devices;
    if (drained)
        g.drained = devices;
    return g;
}

static void run_idle(pb_stats *fin, char *summary, size_t cap)
{
    uint32_t n = O.connections;
    proc_mem m0 = {0}, m1 = {0};
    long tcp_inuse0 = 0, tcp_pages0 = 0, tcp_inuse1 = 0, tcp_pages1 = 0, socks0 = 0, socks1 = 0;
    pb_stats s = {0}, q0 = {0};
    snap a, b;
    sbuf cj = {0};
    sleep_ms(1000); /* settle */
    read_proc_mem(server_pid, &m0);
    read_sockstat(&tcp_inuse0, &tcp_pages0);
    socks0 = count_sockets(server_pid);
    goal g = connect_goal(n, false);
    bool ok = query_all(&q0, false, NULL);
    take_snap(&a, &q0);
    ok = ok && command_all(PB_CMD_CONNECT, PB_ROLE_IDLE, 0, 0, 0) &&
         wait_phase("connect", &g, scaled(60, n, 250), 30, &s);
    take_snap(&b, &s);
    double conn_s = s.last_auth > s.first_connect ? secs(s.last_auth - s.first_connect) : NAN;
    if (ok) { /* hold, watching for connections that end */
        uint64_t end = clock_mono_ns() + (uint64_t)(O.hold * 1e9);
        while (ok && clock_mono_ns() < end && !interrupted) {
            sleep_until(clock_mono_ns() + 250000000u < end ? clock_mono_ns() + 250000000u : end);
            ok = query_all(&s, false, NULL) && server_alive();
            if (ok && fatal_count(&s)) {
                fail("hold: %s", s.first_error);
                ok = false;
            }
        }
        if (interrupted)
            fail("interrupted during the hold");
        read_proc_mem(server_pid, &m1);
        read_sockstat(&tcp_inuse1, &tcp_pages1);
        socks1 = count_sockets(server_pid);
    }
    query_all(fin, true, NULL);
    double d_rss = (m1.vmrss_kb - m0.vmrss_kb) * 1024.0, d_anon = (m1.anon_kb - m0.anon_kb) * 1024.0,
           d_file = (m1.file_kb - m0.file_kb) * 1024.0, d_tcp = (tcp_pages1 - tcp_pages0) * 4096.0;
    double rate = ratio(n, conn_s);

    printf("parley-bench idle: %s connections, hold %.0f s\n\n", grp(n), O.hold);
    printf("  %-22s %s of %s in %.2f s: %s conns/s (connect, upgrade, authenticate; %u at a time)\n",
           "connect", grp((double)fin->authed), grp(n), conn_s, grp(rate), O.concurrency);
    double cpu = cpu_report(&cj, "CPU while connecting", "connect", &a, &b, n, "connection");
    if (m1.vmrss_kb) {
        printf("  %-22s %12s %12s %12s %14s\n", "server memory (KiB)", "baseline", "connected", "delta",
               "per conn (B)");
        printf("  %-22s %12s %12s %12s %14.0f\n", "  VmRSS", grp(m0.vmrss_kb), grp(m1.vmrss_kb),
               grp(m1.vmrss_kb - m0.vmrss_kb), d_rss / n);
        printf("  %-22s %12s %12s %12s %14.0f\n", "  RssAnon", grp(m0.anon_kb), grp(m1.anon_kb),
               grp(m1.anon_kb - m0.anon_kb), d_anon / n);
        printf("  %-22s %12s %12s %12s %14.0f\n", "  RssFile", grp(m0.file_kb), grp(m1.file_kb),
               grp(m1.file_kb - m0.file_kb), d_file / n);
        printf("  %-22s %12s %12s %12s %14.0f   (sockstat \"mem\": both ends of each loopback connection)\n",
               "kernel TCP mem", grp(tcp_pages0 * 4), grp(tcp_pages1 * 4), grp(d_tcp / 1024), d_tcp / n);
        printf("  %-22s TCP sockets in use %s -> %s (both ends); parleyd's sockets %s -> %s\n", "sockets",
               grp(tcp_inuse0), grp(tcp_inuse1), grp(socks0), grp(socks1));
        printf("  %-22s %.0f B of RssAnon per idle authenticated connection after %.0f s (issue target: <= 512 B "
               "at 15,000)\n",
               "per connection", d_anon / n, O.hold);
    }
    printf("  %-22s %.2f s over the run (pings %s, pongs %s)\n", "loadgen CPU", secs(fin->cpu_ns - q0.cpu_ns),
           grp((double)fin->pings), grp((double)fin->pongs));
    snprintf(summary, cap, "idle     %s conns: %s conns/s (%.0f µs server CPU each); server RssAnon %.0f B/conn, "
                           "VmRSS %.0f B/conn; kernel TCP %.0f B/conn (both ends)",
             grp(n), grp(rate), ratio(cpu * 1e6, n), d_anon / n, d_rss / n, d_tcp / n);

    sb_add(&J, ",\"parameters\":{\"connections\":%u,\"hold_seconds\":%g}", n, O.hold);
    sb_add(&J, ",\"results\":{\"authenticated\":%llu,\"connect_seconds\":", (unsigned long long)fin->authed);
    sb_num(&J, conn_s, 3);
    sb_add(&J, ",\"connections_per_second\":");
    sb_num(&J, rate, 0);
    sb_add(&J, ",\"server_cpu_seconds\":");
    sb_num(&J, cpu, 2);
    sb_add(&J, ",\"server_cpu_us_per_connection\":");
    sb_num(&J, ratio(cpu * 1e6, n), 1);
    sb_add(&J, ",\"loadgen_cpu_seconds\":");
    sb_num(&J, b.loadgen - a.loadgen, 2);
    sb_add(&J,
           ",\"server_memory_kb\":{\"baseline\":{\"vmrss\":%ld,\"rss_anon\":%ld,\"rss_file\":%ld},"
           "\"connected\":{\"vmrss\":%ld,\"rss_anon\":%ld,\"rss_file\":%ld}}",
           m0.vmrss_kb, m0.anon_kb, m0.file_kb, m1.vmrss_kb, m1.anon_kb, m1.file_kb);
    sb_add(&J, ",\"per_connection_bytes\":{\"vmrss\":");
    sb_num(&J, d_rss / n, 0);
    sb_add(&J, ",\"rss_anon\":");
    sb_num(&J, d_anon / n, 0);
    sb_add(&J, ",\"rss_file\":");
    sb_num(&J, d_file / n, 0);
    sb_add(&J, ",\"kernel_tcp_both_ends\":");
    sb_num(&J, d_tcp / n, 0);
    sb_add(&J,
           "},\"kernel_tcp_mem_kb\":{\"baseline\":%ld,\"connected\":%ld},\"tcp_sockets_in_use\":{\"baseline\":%ld,"
           "\"connected\":%ld},\"server_sockets\":{\"baseline\":%ld,\"connected\":%ld},\"pings\":%llu,\"pongs\":%llu",
           tcp_pages0 * 4, tcp_pages1 * 4, tcp_inuse0, tcp_inuse1, socks0, socks1, (unsigned long long)fin->pings,
           (unsigned long long)fin->pongs);
    sb_add(&J, ",\"cpu\":{%s}}", cj.s ? cj.s : "");
    free(cj.s);
    failures_json(fin, n > fin->authed ? n - fin->authed : 0, 0);
}

static void run_pairs(pb_stats *fin, char *summary, size_t cap)
{
    uint32_t p = O.pairs;
    pb_stats s = {0}, q0 = {0}, q1 = {0};
    snap a = {0}, b = {0};
    sbuf cj = {0};
    static pb_hist h;
    pb_hist_init(&h);
    goal g = connect_goal(2ull * p, true);
    double settle_s = NAN;
    uint64_t t_start = 0, t0 = 0, t1 = 0;
    bool ok = command_all(PB_CMD_CONNECT, PB_ROLE_SENDER | PB_ROLE_RECEIVER, 0, 0, 0) &&
              wait_phase("connect", &g, scaled(60, 2.0 * p, 250), 30, &s);
    double conn_s = s.last_auth > s.first_connect ? secs(s.last_auth - s.first_connect) : NAN;
    if (ok) {
        t_start = clock_mono_ns() + 100000000u;
        t0 = t_start + (uint64_t)(O.warmup * 1e9);
        t1 = t0 + (uint64_t)(O.seconds * 1e9);
        ok = command_all(PB_CMD_SEND, 0, t_start, t0, t1);
        sleep_until(t0);
        ok = ok && query_all(&q0, false, NULL);
        take_snap(&a, &q0);
        sleep_until(t1);
        ok = ok && query_all(&q1, false, NULL) && !interrupted;
        take_snap(&b, &q1);
        if (ok && fatal_count(&q1)) {
            fail("sending: %s", q1.first_error);
            ok = false;
        }
        if (interrupted)
            fail("interrupted while sending");
        uint64_t ts = clock_mono_ns();
        goal settle = no_goal;
        settle.settle = true;
        ok = ok && wait_phase("settle (after the stop: every acked message delivered, every receipt in)", &settle,
                              15, 15, &s);
        settle_s = secs(clock_mono_ns() - ts);
    }
    query_all(fin, true, &h);
    uint64_t measured = fin->delivered_measured;
    double wall = secs(t1 - t0), rate = ratio((double)measured, wall);
    char mode[64];
    if (O.rate > 0)
        snprintf(mode, sizeof mode, "paced at %s msgs/s", grp(O.rate));
    else
        snprintf(mode, sizeof mode, "full speed");

    printf("parley-bench pairs: %s pairs, window %u, payload %u B, %s, %.1f s measured after %.1f s warmup\n\n",
           grp(p), O.window, O.payload, mode, O.seconds, O.warmup);
    printf("  %-22s %s devices in %.2f s\n", "connect", grp((double)s.authed), conn_s);
    printf("  %-22s %s msgs/s (%s delivered in %.2f s)\n", "delivered", grp(rate), grp((double)measured), wall);
    printf("  %-22s p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (send -> deliver)\n", "latency",
           us(pb_hist_quantile(&h, 0.5)), us(pb_hist_quantile(&h, 0.9)), us(pb_hist_quantile(&h, 0.99)),
           us(pb_hist_quantile(&h, 0.999)), us(h.max_ns));
    bool sampled = a.t && b.t; /* the measured interval began and ended */
    double cpu = sampled ? cpu_report(&cj, "CPU in the interval", "measured", &a, &b, (double)measured, "message")
                         : NAN;
    double lg = sampled ? b.loadgen - a.loadgen : NAN, per = ratio(cpu * 1e6, (double)measured);
    printf("  %-22s sent %s, acked %s, delivered %s, receipts %s; settled in %.2f s\n", "counts",
           grp((double)fin->sent), grp((double)fin->acked), grp((double)fin->delivered), grp((double)fin->receipts),
           settle_s);
    printf("  %-22s duplicates %s, out of order %s, missing %s, receipts missing %s\n", "checks",
           grp((double)fin->duplicates), grp((double)fin->out_of_order), grp((double)fin->missing),
           grp((double)fin->receipts_missing));
    snprintf(summary, cap, "pairs    P=%s W=%u %s: %s msgs/s, p50 %s, p99 %s, p99.9 %s, server %.1f µs/msg, "
                           "loadgen %.0f%% of CPU",
             grp(p), O.window, O.rate > 0 ? mode : "full speed", grp(rate), us(pb_hist_quantile(&h, 0.5)),
             us(pb_hist_quantile(&h, 0.99)), us(pb_hist_quantile(&h, 0.999)), per, 100 * ratio(lg, lg + cpu));

    sb_add(&J, ",\"parameters\":{\"pairs\":%u,\"window\":%u,\"seconds\":%g,\"warmup\":%g,\"rate\":", p, O.window,
           O.seconds, O.warmup);
    if (O.rate > 0)
        sb_num(&J, O.rate, 0);
    else
        sb_add(&J, "null");
    sb_add(&J, ",\"payload\":%u}", O.payload);
    sb_add(&J, ",\"results\":{\"delivered_per_second\":");
    sb_num(&J, rate, 0);
    sb_add(&J, ",\"measured_seconds\":");
    sb_num(&J, wall, 3);
    sb_add(&J, ",\"delivered_in_interval\":%llu,", (unsigned long long)measured);
    latency_json(&h);
    sb_add(&J, ",\"server_cpu_seconds\":");
    sb_num(&J, cpu, 2);
    sb_add(&J, ",\"server_cpu_us_per_message\":");
    sb_num(&J, per, 2);
    sb_add(&J, ",\"loadgen_cpu_seconds\":");
    sb_num(&J, lg, 2);
    sb_add(&J, ",\"loadgen_cpu_share\":");
    sb_num(&J, ratio(lg, lg + cpu), 3);
    sb_add(&J, ",\"sent\":%llu,\"acked\":%llu,\"delivered\":%llu,\"receipts\":%llu,\"settle_seconds\":",
           (unsigned long long)fin->sent, (unsigned long long)fin->acked, (unsigned long long)fin->delivered,
           (unsigned long long)fin->receipts);
    sb_num(&J, settle_s, 3);
    sb_add(&J, ",\"connect_seconds\":");
    sb_num(&J, conn_s, 3);
    sb_add(&J, ",\"cpu\":{%s}}", cj.s ? cj.s : "");
    free(cj.s);
    failures_json(fin, fin->missing, fin->receipts_missing);
}

/* offline and storm: store for recipients that are not connected, then let them come. */
static void run_stored(bool storm, pb_stats *fin, char *summary, size_t cap)
{
    uint32_t S = cfg.senders, R = cfg.recipients;
    uint64_t M = cfg.messages;
    pb_stats s = {0}, qa = {0}, qb = {0}, qc = {0};
    snap a = {0}, b = {0}, c = {0};
    sbuf cj = {0};
    uint64_t tc = 0;
    goal g = connect_goal(S, true);
    bool ok = command_all(PB_CMD_CONNECT, PB_ROLE_SENDER, 0, 0, 0) &&
              wait_phase("connect senders", &g, scaled(60, S, 250), 30, &s);
    if (ok) {
        goal store = no_goal;
        store.acked = M;
        ok = query_all(&qa, false, NULL);
        take_snap(&a, &qa);
        ok = ok && command_all(PB_CMD_SEND, 0, a.t, a.t, UINT64_MAX) &&
             wait_phase("store (senders sending)", &store, scaled(60, (double)M, 2000), 30, &s);
        ok = query_all(&qb, false, NULL) && ok;
        take_snap(&b, &qb);
    }
    if (ok) {
        goal drain = connect_goal((uint64_t)S + R, true);
        drain.delivered = M;
        drain.receipts = M;
        tc = clock_mono_ns();
        ok = command_all(PB_CMD_CONNECT, PB_ROLE_RECEIVER, 0, 0, 0) &&
             wait_phase("drain (recipients connecting and receiving)", &drain,
                        scaled(60, (double)M / 2000 + R / 250.0, 1), 30, &s);
        query_all(&qc, false, NULL);
        take_snap(&c, &qc);
    }
    query_all(fin, true, NULL);
    double store_s = qb.last_ack > qb.first_send ? secs(qb.last_ack - qb.first_send) : NAN;
    double drain_s = tc && fin->last_deliver > tc ? secs(fin->last_deliver - tc) : NAN;
    double auth_s = tc && fin->last_auth > tc ? secs(fin->last_auth - tc) : NAN;
    uint64_t all_end = fin->last_deliver > fin->last_drained ? fin->last_deliver : fin->last_drained;
    double all_s = tc && all_end > tc ? secs(all_end - tc) : NAN;
    double store_rate = ratio((double)M, store_s), drain_rate = ratio((double)M, storm ? all_s : drain_s);
    uint64_t missing = fin->acked > fin->delivered ? fin->acked - fin->delivered : 0;
    uint64_t receipts_missing = fin->delivered > fin->receipts ? fin->delivered - fin->receipts : 0;

    if (storm)
        printf("parley-bench storm: %s devices with %u messages each waiting (from %u senders, window %u)\n\n",
               grp(R), O.pending, S, O.window);
    else
        printf("parley-bench offline: %s messages from %u senders to %s offline recipients, window %u\n\n",
               grp((double)M), S, grp(R), O.window);
    printf("  %-22s %s msgs/s (%s acked in %.2f s, first Send to last SendAck)\n", "store", grp(store_rate),
           grp((double)qb.acked), store_s);
    double cpu_store = b.t ? cpu_report(&cj, "CPU storing", "store", &a, &b, (double)M, "message") : NAN;
    if (storm) {
        printf("  %-22s %s devices in %.2f s: %s conns/s\n", "all authenticated", grp(R), auth_s,
               grp(ratio(R, auth_s)));
        printf("  %-22s %.2f s after connecting began, every device drained and all %s messages in: %s msgs/s\n",
               "all delivered", all_s, grp((double)M), grp(drain_rate));
    } else {
        printf("  %-22s %s msgs/s (%s delivered in %.2f s, connecting to last message)\n", "drain",
               grp(drain_rate), grp((double)fin->delivered), drain_s);
    }
    double cpu_drain = c.t ? cpu_report(&cj, "CPU draining", "drain", &b, &c, (double)M, "message") : NAN;
    printf("  %-22s sent %s, acked %s, delivered %s, receipts %s, prekey notices %s\n", "counts",
           grp((double)fin->sent), grp((double)fin->acked), grp((double)fin->delivered), grp((double)fin->receipts),
           grp((double)fin->notices));
    printf("  %-22s duplicates %s, out of order %s, missing %s, receipts missing %s\n", "checks",
           grp((double)fin->duplicates), grp((double)fin->out_of_order), grp((double)missing),
           grp((double)receipts_missing));
    if (storm)
        snprintf(summary, cap, "storm    N=%s K=%u: auth %s conns/s, all in %.2f s = %s msgs/s, server %.1f µs/msg "
                               "draining (store %s msgs/s)",
                 grp(R), O.pending, grp(ratio(R, auth_s)), all_s, grp(drain_rate), ratio(cpu_drain * 1e6, (double)M),
                 grp(store_rate));
    else
        snprintf(summary, cap, "offline  M=%s R=%s: store %s msgs/s (%.1f µs/msg), drain %s msgs/s (%.1f µs/msg)",
                 grp((double)M), grp(R), grp(store_rate), ratio(cpu_store * 1e6, (double)M), grp(drain_rate),
                 ratio(cpu_drain * 1e6, (double)M));

    if (storm)
        sb_add(&J, ",\"parameters\":{\"devices\":%u,\"pending\":%u,\"senders\":%u,\"window\":%u,\"payload\":%u}", R,
               O.pending, S, O.window, cfg.payload);
    else
        sb_add(&J,
               ",\"parameters\":{\"messages\":%llu,\"recipients\":%u,\"senders\":%u,\"window\":%u,\"payload\":%u}",
               (unsigned long long)M, R, S, O.window, cfg.payload);
    sb_add(&J, ",\"results\":{\"store_per_second\":");
    sb_num(&J, store_rate, 0);
    sb_add(&J, ",\"store_seconds\":");
    sb_num(&J, store_s, 3);
    if (storm) {
        sb_add(&J, ",\"auth_seconds\":");
        sb_num(&J, auth_s, 3);
        sb_add(&J, ",\"connections_per_second\":");
        sb_num(&J, ratio(R, auth_s), 0);
        sb_add(&J, ",\"all_delivered_seconds\":");
        sb_num(&J, all_s, 3);
        sb_add(&J, ",\"delivered_per_second\":");
        sb_num(&J, drain_rate, 0);
    } else {
        sb_add(&J, ",\"drain_per_second\":");
        sb_num(&J, drain_rate, 0);
        sb_add(&J, ",\"drain_seconds\":");
        sb_num(&J, drain_s, 3);
    }
    sb_add(&J, ",\"server_cpu_seconds\":");
    sb_num(&J, cpu_store + cpu_drain, 2);
    sb_add(&J, ",\"server_cpu_us_per_message\":");
    sb_num(&J, ratio((cpu_store + cpu_drain) * 1e6, (double)M), 2);
    sb_add(&J, ",\"loadgen_cpu_seconds\":");
    sb_num(&J, (b.loadgen - a.loadgen) + (c.loadgen - b.loadgen), 2);
    sb_add(&J, ",\"messages\":%llu,\"sent\":%llu,\"acked\":%llu,\"delivered\":%llu,\"receipts\":%llu,\"notices\":%llu",
           (unsigned long long)M, (unsigned long long)fin->sent, (unsigned long long)fin->acked,
           (unsigned long long)fin->delivered, (unsigned long long)fin->receipts, (unsigned long long)fin->notices);
    sb_add(&J, ",\"cpu\":{%s}}", cj.s ? cj.s : "");
    free(cj.s);
    failures_json(fin, missing, receipts_missing);
    if (!failure[0] && (missing || receipts_missing || fin->acked != M || fin->delivered != M))
        fail("%llu of %llu messages acked and %llu delivered: %llu acked but not delivered, %llu receipts missing",
             (unsigned long long)fin->acked, (unsigned long long)M, (unsigned long long)fin->delivered,
             (unsigned long long)missing, (unsigned long long)receipts_missing);
}

/* ---- main ----------------------------------------------------------------------------- */

static bool make_workdir(void)
{
    if (O.dir) {
        snprintf(workdir, sizeof workdir, "%s", O.dir);
        if (mkdir(workdir, 0700) != 0 && errno != EEXIST) {
            fail("cannot make %s: %s", workdir, strerror(errno));
            return false;
        }
        DIR *d = opendir(workdir);
        struct dirent *e;
        int entries = 0;
        while (d && (e = readdir(d)))
            entries += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
        if (d)
            closedir(d);
        if (!d || entries) {
            fail("--dir %s must be an empty directory", workdir);
            return false;
        }
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(workdir, sizeof workdir, "%s/parley-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(workdir)) {
            fail("cannot make a directory in %s: %s", tmp && *tmp ? tmp : "/tmp", strerror(errno));
            return false;
        }
    }
    workdir_made = true;
    return true;
}

static bool find_build(const char *argv0)
{
    if (O.build) {
        snprintf(build_dir, sizeof build_dir, "%s", O.build);
    } else {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) {
            snprintf(self, sizeof self, "%s", argv0);
            n = (ssize_t)strlen(self);
        }
        self[n] = 0;
        char *slash = strrchr(self, '/');
        snprintf(build_dir, sizeof build_dir, "%.*s", slash ? (int)(slash - self) : 1, slash ? self : ".");
    }
    const char *tools[] = {"parleyd", "parleyctl"};
    for (int i = 0; i < 2; i++) {
        char p[PATH_MAX + 16];
        snprintf(p, sizeof p, "%s/%s", build_dir, tools[i]);
        if (access(p, X_OK) != 0) {
            fprintf(stderr, "parley-bench: no executable %s (build it, or point --build at the build directory)\n", p);
            return false;
        }
    }
    return true;
}

/* The configuration the workers get; false (and a message) if it cannot run here. */
static int configure(void)
{
    cfg.workload = O.workload;
    cfg.window = O.window;
    cfg.payload = O.payload;
    cfg.sources = O.sources;
    switch (O.workload) {
    case PB_IDLE:
        cfg.devices = O.connections;
        break;
    case PB_PAIRS:
        cfg.pairs = O.pairs;
        cfg.rate = O.rate;
        cfg.devices = 2 * O.pairs;
        break;
    case PB_OFFLINE:
        cfg.senders = O.senders;
        cfg.recipients = O.recipients;
        cfg.messages = O.messages;
        break;
    case PB_STORM:
        cfg.senders = O.senders;
        cfg.recipients = O.devices;
        cfg.messages = (uint64_t)O.devices * O.pending;
        break;
    }
    if (O.workload == PB_OFFLINE || O.workload == PB_STORM) {
        uint64_t devices = (uint64_t)cfg.senders + cfg.recipients;
        if (devices > 10000000)
            return bad_usage("too many devices (%llu)", (unsigned long long)devices);
        cfg.devices = (uint32_t)devices;
        if (cfg.messages > (uint64_t)cfg.senders * UINT32_MAX)
            return bad_usage("too many messages per sender");
    }
    long hard = nofile_hard();
    if ((long)cfg.devices + 200 > hard)
        return bad_usage("%u connections: parleyd may hold at most %ld open files here (RLIMIT_NOFILE hard "
                         "limit), so at most %ld connections",
                         cfg.devices, hard, hard - 200);
    nworkers = O.workers ? O.workers : (cfg.devices + 14999) / 15000;
    if (nworkers < 2)
        nworkers = 2;
    if (nworkers > MAX_WORKERS)
        nworkers = MAX_WORKERS;
    cfg.workers = nworkers;
    uint32_t per_worker = (cfg.devices + nworkers - 1) / nworkers + 1;
    if ((long)per_worker + 64 > hard)
        return bad_usage("%u connections per worker exceed the open-file limit (%ld): use more --workers",
                         per_worker, hard);
    cfg.concurrency = (O.concurrency + nworkers - 1) / nworkers;
    randombytes_buf(&cfg.run_id, sizeof cfg.run_id);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && !strcmp(argv[1], "info")) {
        read_machine();
        printf("{\"commit\":\"%s\",\"date\":\"%s\",\"machine\":%s}\n", commit_id, date_utc, machine_json);
        return 0;
    }
    int rc = parse_args(argc, argv);
    if (rc)
        return rc;
    if (O.server_cpus && !parse_cpus(O.server_cpus, &O.server_set))
        return bad_usage("--server-cpus wants a CPU list such as 0 or 0-1, not '%s'", O.server_cpus);
    if (O.cpus && !parse_cpus(O.cpus, &O.own_set))
        return bad_usage("--cpus wants a CPU list such as 1 or 2-3, not '%s'", O.cpus);
    if (O.cpus && sched_setaffinity(0, sizeof O.own_set, &O.own_set) != 0) { /* workers inherit it */
        fprintf(stderr, "parley-bench: cannot pin to CPUs %s: %s\n", O.cpus, strerror(errno));
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "parley-bench: libsodium failed to initialise\n");
        return 1;
    }
    if ((rc = configure()) != 0)
        return rc;
    if (!find_build(argv[0]))
        return 2;
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    read_machine();

    pb_stats fin = {0};
    char summary[512] = "";
    double provision_s = NAN, stop_s = NAN;
    sb_add(&J, "{\"workload\":\"%s\"", workload_names[O.workload]);
    bool ready = make_workdir() && provision(cfg.devices, &provision_s) && start_server() && start_workers();
    if (ready) {
        if (O.workload == PB_IDLE)
            run_idle(&fin, summary, sizeof summary);
        else if (O.workload == PB_PAIRS)
            run_pairs(&fin, summary, sizeof summary);
        else
            run_stored(O.workload == PB_STORM, &fin, summary, sizeof summary);
    } else {
        sb_add(&J, ",\"parameters\":{},\"results\":{}");
        failures_json(&fin, 0, 0);
    }
    stop_workers();
    stop_server(&stop_s);
    char log_lines[1200];
    int nlog = workdir_made ? server_log_lines(log_lines, sizeof log_lines) : 0;
    if (!failure[0] && fatal_count(&fin))
        fail("%s", fin.first_error[0] ? fin.first_error : "an error");
    bool correct = !failure[0];

    printf("  %-22s %u workers, %u sources, %u connects at a time; provisioning %.2f s; parleyd stopped in %.2f s\n",
           "setup", nworkers, cfg.sources, O.concurrency, provision_s, stop_s);
    if (nlog)
        printf("  %-22s %d lines in its log, the first:\n%s", "parleyd said", nlog, log_lines);
    if (correct)
        printf("  %-22s OK: every check passed\n", "result");
    else
        printf("  %-22s FAILED: %s\n", "result", failure);
    if (fin.first_error[0] && correct)
        printf("  %-22s %s\n", "first error", fin.first_error);
    if (summary[0])
        printf("summary: %s  %s\n", summary, correct ? "OK" : "FAILED");

    sb_add(&J, ",\"correct\":%s,\"error\":", correct ? "true" : "false");
    if (correct)
        sb_add(&J, "null");
    else
        sb_str(&J, failure);
    sb_add(&J, ",\"setup\":{\"workers\":%u,\"sources\":%u,\"concurrency\":%u,\"server_threads\":", nworkers,
           cfg.sources, O.concurrency);
    if (O.server_threads)
        sb_add(&J, "%u", O.server_threads);
    else
        sb_add(&J, "null");
    sb_add(&J, ",\"server_cpus\":");
    if (O.server_cpus)
        sb_str(&J, O.server_cpus);
    else
        sb_add(&J, "null");
    sb_add(&J, ",\"cpus\":");
    if (O.cpus)
        sb_str(&J, O.cpus);
    else
        sb_add(&J, "null");
    sb_add(&J, ",\"server_args\":[");
    for (uint32_t i = 0; i < O.n_server_args; i++) {
        sb_add(&J, i ? "," : "");
        sb_str(&J, O.server_args[i]);
    }
    sb_add(&J, "],\"provision_seconds\":");
    sb_num(&J, provision_s, 2);
    sb_add(&J, ",\"server_stop_seconds\":");
    sb_num(&J, stop_s, 2);
    sb_add(&J, ",\"server_log_lines\":%d}", nlog);
    sb_add(&J, ",\"machine\":%s,\"commit\":", machine_json);
    sb_str(&J, commit_id);
    sb_add(&J, ",\"date\":\"%s\"}", date_utc);
    printf("%s\n", J.s);
    if (O.json) {
        FILE *f = fopen(O.json, "w");
        if (!f || fprintf(f, "%s\n", J.s) < 0 || fclose(f) != 0) {
            fprintf(stderr, "parley-bench: cannot write %s: %s\n", O.json, strerror(errno));
            correct = false;
        }
    }
    if (workdir_made && !O.keep)
        nftw(workdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else if (workdir_made)
        fprintf(stderr, "parley-bench: kept %s\n", workdir);
    return correct ? 0 : 1;
}
