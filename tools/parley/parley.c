/* parley - the command-line client (docs/client.md):
 *
 *   parley --home DIR register --server ws://HOST:PORT --phone +E164
 *   parley --home DIR verify CODE
 *   parley --home DIR send [--timeout S] +E164 TEXT|-      (-: one message per line of stdin)
 *   parley --home DIR recv [--wait S] [--timeout S]
 *   parley --home DIR listen
 *   parley --home DIR read [--timeout S] +E164
 *   parley --home DIR history [--json] +E164
 *   parley --home DIR whoami [--json]
 *   parley --home DIR safety [--json] [--timeout S] +E164
 *   parley --home DIR verify-safety [--timeout S] +E164 NUMBER
 *
 * Output for programs is one JSON object per line on stdout, flushed per line; errors
 * go to stderr with a non-zero exit status (1: it did not work, 2: wrong usage). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "parley.h"

#define DEFAULT_TIMEOUT_S 30
static volatile sig_atomic_t got_signal;
static int signal_pipe[2] = {-1, -1}; /* the handler writes a byte: poll wakes, no race */

static void on_signal(int sig)
{
    int saved = errno;
    got_signal = sig;
    if (signal_pipe[1] >= 0 && write(signal_pipe[1], "", 1) < 0) {
        /* full pipe: a wake-up is already pending */
    }
    errno = saved;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: parley --home DIR COMMAND [ARGS]\n"
            "  register --server ws://HOST:PORT --phone +E164   ask the server for a verification code\n"
            "  verify CODE                                      register this device with the code\n"
            "  send [--timeout S] +E164 TEXT                    send; prints the message id once the server has it\n"
            "  send [--timeout S] +E164 -                       send each line of stdin; prints the ids as they are acked\n"
            "  recv [--wait S] [--timeout S]                    print new messages (JSON lines) until none are left\n"
            "  listen                                           print messages and receipts as they come\n"
            "  read [--timeout S] +E164                         send read receipts for that conversation\n"
            "  history [--json] +E164                           the conversation with each message's state\n"
            "  whoami [--json]                                  this device: number, account, identity key\n"
            "  safety [--json] +E164                            the safety number with a contact, and its QR payload\n"
            "  verify-safety +E164 NUMBER                       compare a safety number; marks the contact verified\n"
            "Messages are end-to-end encrypted for every device of the recipient (Signal protocol).\n"
            "--home defaults to $PARLEY_HOME, else ~/.parley; --timeout defaults to %d s.\n",
            DEFAULT_TIMEOUT_S);
}

/* Text from other people (and from the server: error and close reasons) goes to a
 * terminal: control characters (escape sequences, carriage returns that would fake
 * lines) are shown as \xNN, the rest as it is. */
static void put_printable(FILE *out, const char *t)
{
    for (const unsigned char *c = (const unsigned char *)t; *c; c++) {
        if (*c < 0x20 || *c == 0x7f)
            fprintf(out, "\\x%02x", *c);
        else if (*c == 0xc2 && c[1] >= 0x80 && c[1] <= 0x9f) /* C1 controls, e.g. U+009B (CSI) */
            fprintf(out, "\\u%04x", *++c);
        else
            fputc(*c, out);
    }
}

/* Every message on stderr may carry words from the server: printed through put_printable. */
static void fail_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail_msg(const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fputs("parley: ", stderr);
    put_printable(stderr, buf);
    fputc('\n', stderr);
}

static void hex_id(char out[2 * PARLEY_ID_LEN + 1], const uint8_t id[PARLEY_ID_LEN])
{
    sodium_bin2hex(out, 2 * PARLEY_ID_LEN + 1, id, PARLEY_ID_LEN);
}

/* Prints one JSON object as a line and frees it. */
static void print_json(cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    } else {
        fail_msg("out of memory");
    }
    cJSON_free(s);
    cJSON_Delete(o);
}

static void add_str_or_null(cJSON *o, const char *key, const char *v)
{
    if (v)
        cJSON_AddStringToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

/* ---- options ---------------------------------------------------------------------- */

typedef struct {
    const char *home;
    const char *server;
    const char *phone;
    int timeout_s;
    int wait_s;
    bool json;
    const char *cmd;
    const char *args[4];
    int n_args;
} options;

static bool parse_seconds(const char *flag, const char *v, int *out)
{
    char *end;
    long n = v ? strtol(v, &end, 10) : -1;
    if (!v || end == v || *end || n < 0 || n > 86400 * 7) {
        fail_msg("%s wants a number of seconds", flag);
        return false;
    }
    *out = (int)n;
    return true;
}

static int parse_options(options *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->timeout_s = DEFAULT_TIMEOUT_S;
    bool only_args = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!only_args && strcmp(a, "--") == 0) {
            only_args = true;
        } else if (!only_args && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
            usage(stdout);
            exit(0);
        } else if (!only_args && strcmp(a, "--json") == 0) {
            o->json = true;
        } else if (!only_args && (strcmp(a, "--home") == 0 || strcmp(a, "--server") == 0 ||
                                  strcmp(a, "--phone") == 0)) {
            if (!v) {
                fail_msg("%s needs a value", a);
                return -1;
            }
            *(strcmp(a, "--home") == 0 ? &o->home : strcmp(a, "--server") == 0 ? &o->server : &o->phone) = v;
            i++;
        } else if (!only_args && (strcmp(a, "--timeout") == 0 || strcmp(a, "--wait") == 0)) {
            if (!parse_seconds(a, v, strcmp(a, "--timeout") == 0 ? &o->timeout_s : &o->wait_s))
                return -1;
            i++;
        } else if (!only_args && a[0] == '-' && a[1] == '-') {
            fail_msg("unknown option %s (parley --help lists them)", a);
            return -1;
        } else if (!o->cmd) {
            o->cmd = a;
        } else if (o->n_args < 4) {
            o->args[o->n_args++] = a;
        } else {
            fail_msg("too many arguments");
            return -1;
        }
    }
    return 0;
}

/* ---- opening the profile ------------------------------------------------------------ */

static parley *open_profile(const options *o)
{
    parley *p;
    char err[512];
    if (parley_open(&p, o->home, err, sizeof err) != PARLEY_OK) {
        fail_msg("cannot open the profile %s: %s", o->home, err);
        return NULL;
    }
    return p;
}

/* Fails with instructions unless the profile is registered. */
static bool require_registered(parley *p, const options *o)
{
    parley_profile pr;
    if (parley_profile_get(p, &pr) != PARLEY_OK) {
        fail_msg("%s", parley_errmsg(p));
        return false;
    }
    if (pr.registered)
        return true;
    if (pr.pending_phone[0])
        fail_msg("not registered yet: a code was sent to %s; run parley --home %s verify CODE", pr.pending_phone,
                 o->home);
    else
        fail_msg("not registered yet: run parley --home %s register --server ws://HOST:PORT --phone +E164", o->home);
    return false;
}

/* ---- register / verify ---------------------------------------------------------------- */

static int cmd_register(const options *o)
{
    if (!o->server || !o->phone || o->n_args) {
        fail_msg("usage: parley --home DIR register --server ws://HOST:PORT --phone +E164");
        return 2;
    }
    parley *p = open_profile(o);
    if (!p)
        return 1;
    int rc = parley_request_code(p, o->server, o->phone, o->timeout_s * 1000);
    if (rc == PARLEY_OK)
        printf("a verification code is on its way to %s; then run: parley --home %s verify CODE\n", o->phone,
               o->home);
    else
        fail_msg("%s", parley_errmsg(p));
    parley_close(p);
    return rc == PARLEY_OK ? 0 : 1;
}

/* A command's argument count: at least min, at most max (-1: any); else its usage
 * (exit status 2). */
static bool arg_count_ok(const options *o, int min, int max, const char *usage)
{
    if (o->n_args >= min && (max < 0 || o->n_args <= max))
        return true;
    fail_msg("usage: parley --home DIR %s", usage);
    return false;
}

/* The same for a command that names a contact first: an E.164 number. */
static bool contact_args(const options *o, int min, int max, const char *usage)
{
    if (!arg_count_ok(o, min, max, usage))
        return false;
    if (!parley_phone_valid(o->args[0])) {
        fail_msg("%s is not a phone number in E.164 form (like +15550000001)", o->args[0]);
        return false;
    }
    return true;
}

static int cmd_verify(const options *o)
{
    if (!arg_count_ok(o, 1, 1, "verify CODE"))
        return 2;
    parley *p = open_profile(o);
    if (!p)
        return 1;
    int rc = parley_verify(p, o->args[0], o->timeout_s * 1000);
    if (rc == PARLEY_OK) {
        parley_profile pr;
        parley_profile_get(p, &pr);
        printf("registered %s (device %u)\n", pr.phone, pr.device_id);
    } else if (rc == PARLEY_ERR_NOT_REGISTERED) {
        fail_msg("no code was requested for this profile: run parley --home %s register --server ws://HOST:PORT "
                 "--phone +E164 first",
                 o->home);
    } else {
        fail_msg("%s", parley_errmsg(p));
    }
    parley_close(p);
    return rc == PARLEY_OK ? 0 : 1;
}

/* ---- the connected commands ------------------------------------------------------------ */

typedef struct {
    parley *p;
    const options *o;
    int mode;                      /* which command */
    bool have_id;
    uint8_t id[PARLEY_ID_LEN];     /* send: our message */
    uint8_t (*batch)[PARLEY_ID_LEN]; /* send -: the messages read from stdin, in order */
    bool *batch_acked;
    size_t n_batch, next_print;    /* ids are printed in input order as they are acked */
    size_t progress_mark;          /* next_print when the current wait began */
    bool acked, failed;
    char fail_reason[400];
    bool drained;
    bool unshown;                  /* new messages are in the database, not printed yet */
    uint64_t last_activity;
    int fatal;                     /* a parley_status that ends the command */
    char problem[512];             /* the latest connection trouble, for a timeout message */
    const char *peer;              /* safety: the contact */
    parley_safety safety;          /* safety: once known */
} session;

enum { MODE_SEND, MODE_RECV, MODE_LISTEN, MODE_READ, MODE_SAFETY };

static void print_message(const parley_message *m)
{
    char id[2 * PARLEY_ID_LEN + 1];
    hex_id(id, m->id);
    if (m->kind == PARLEY_MESSAGE_IDENTITY_CHANGED) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "identity_changed");
        add_str_or_null(o, "peer", m->peer);
        cJSON_AddNumberToObject(o, "device", m->from_device);
        cJSON_AddBoolToObject(o, "verified", m->was_verified);
        cJSON_AddNumberToObject(o, "ts", (double)m->server_time_ms);
        print_json(o);
        return;
    }
    if (!m->text) {
        fail_msg("message %s from %s (device %u) could not be read: %s", id, m->peer ? m->peer : "an unknown sender",
                 m->from_device, m->problem ? m->problem : "unknown problem");
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "message");
    cJSON_AddStringToObject(o, "id", id);
    add_str_or_null(o, "from", m->peer);
    add_str_or_null(o, "conversation", m->conversation);
    cJSON_AddNumberToObject(o, "from_device", m->from_device);
    cJSON_AddNumberToObject(o, "ts", (double)m->server_time_ms);
    cJSON_AddStringToObject(o, "text", m->text);
    print_json(o);
}

static bool show_row(void *ctx, const parley_message *m)
{
    (void)ctx;
    print_message(m);
    return !ferror(stdout);
}

/* Prints the messages stored but not printed yet (also those a crashed run left),
 * then marks them shown: each is printed at least once, and once unless we crash
 * between the two. Output that fails (a closed pipe, a full disk) ends the command and
 * leaves the messages for the next run. */
static void show_unshown(session *s)
{
    s->unshown = false;
    if (parley_take_unshown(s->p, show_row, NULL) != PARLEY_OK && !s->fatal) {
        s->fatal = PARLEY_ERR_STATE;
        snprintf(s->problem, sizeof s->problem, "%s",
                 ferror(stdout) ? "cannot write the messages out; they are shown on the next run"
                                : parley_errmsg(s->p));
    }
}

static void print_receipt(const parley_receipt *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "receipt");
    cJSON_AddStringToObject(o, "status", r->status == PARLEY_STATE_READ ? "read" : "delivered");
    cJSON *ids = cJSON_AddArrayToObject(o, "ids");
    for (size_t i = 0; ids && i < r->n_ids; i++) {
        char id[2 * PARLEY_ID_LEN + 1];
        hex_id(id, r->ids[i]);
        cJSON_AddItemToArray(ids, cJSON_CreateString(id));
    }
    add_str_or_null(o, "from", r->from);
    print_json(o);
}

/* send -: prints the ids acked so far, in input order. */
static void batch_print(session *s)
{
    size_t from = s->next_print;
    for (; s->next_print < s->n_batch && s->batch_acked[s->next_print]; s->next_print++) {
        char id[2 * PARLEY_ID_LEN + 1];
        hex_id(id, s->batch[s->next_print]);
        printf("%s\n", id);
    }
    if (s->next_print != from)
        fflush(stdout);
    if (s->next_print == s->n_batch)
        s->acked = true;
}

/* send -: notes the ack (or failure) of one of the batch's messages and prints the
 * ids acked so far in input order. False if the event is not about the batch. */
static bool batch_event(session *s, const parley_event *ev)
{
    for (size_t i = s->next_print; i < s->n_batch; i++) {
        if (memcmp(ev->state.id, s->batch[i], PARLEY_ID_LEN) != 0)
            continue;
        if (ev->state.state == PARLEY_STATE_FAILED) {
            s->failed = true;
            snprintf(s->fail_reason, sizeof s->fail_reason, "%s", ev->state.reason ? ev->state.reason : "refused");
            parley_stop(s->p);
            return true;
        }
        s->batch_acked[i] = true;
        batch_print(s);
        return true;
    }
    return false;
}

/* The database is the truth: another process on this profile (a listen) may have sent
 * some of ours and had the acks. Sending goes in queue order, so the first message
 * still pending ends the look. */
static void batch_sync(session *s)
{
    for (size_t i = s->next_print; i < s->n_batch && !s->failed; i++) {
        parley_state st = PARLEY_STATE_PENDING;
        if (s->batch_acked[i])
            continue;
        if (parley_message_state(s->p, s->batch[i], &st) != PARLEY_OK || st == PARLEY_STATE_PENDING)
            break;
        if (st == PARLEY_STATE_FAILED) {
            s->failed = true;
            snprintf(s->fail_reason, sizeof s->fail_reason, "message %zu failed (parley history says why)", i + 1);
            break;
        }
        s->batch_acked[i] = true;
    }
    batch_print(s);
}

static void on_event(void *ctx, const parley_event *ev)
{
    session *s = ctx;
    char id[2 * PARLEY_ID_LEN + 1];
    switch (ev->type) {
    case PARLEY_EVENT_MESSAGE:
        s->last_activity = clock_mono_ms();
        s->unshown = s->mode == MODE_RECV || s->mode == MODE_LISTEN; /* printed from the database */
        break;
    case PARLEY_EVENT_RECEIPT:
        if (s->mode == MODE_LISTEN)
            print_receipt(&ev->receipt);
        break;
    case PARLEY_EVENT_STATE:
        if (s->n_batch && batch_event(s, ev))
            break;
        if (s->have_id && memcmp(ev->state.id, s->id, PARLEY_ID_LEN) == 0) {
            if (ev->state.state == PARLEY_STATE_FAILED) {
                s->failed = true;
                snprintf(s->fail_reason, sizeof s->fail_reason, "%s", ev->state.reason ? ev->state.reason : "refused");
            } else {
                s->acked = true;
            }
            parley_stop(s->p);
        } else if (ev->state.state == PARLEY_STATE_FAILED) {
            hex_id(id, ev->state.id);
            fail_msg("an earlier message (%s) to %s cannot be sent: %s", id, ev->state.peer ? ev->state.peer : "?",
                     ev->state.reason ? ev->state.reason : "refused");
        }
        break;
    case PARLEY_EVENT_IDENTITY_CHANGED:
        /* recv and listen print it from the database with the messages; the others say it here */
        if (s->mode == MODE_RECV || s->mode == MODE_LISTEN)
            s->unshown = true;
        else
            fail_msg("note: the security code with %s changed (device %u)%s", ev->identity.peer ? ev->identity.peer : "?",
                     ev->identity.device, ev->identity.was_verified ? "; it was verified: compare it again" : "");
        break;
    case PARLEY_EVENT_DRAINED:
        s->drained = true;
        s->last_activity = clock_mono_ms();
        parley_stop(s->p);
        break;
    case PARLEY_EVENT_CONNECTION:
        if (ev->connection.state == PARLEY_CONN_WAITING && ev->connection.reason) {
            snprintf(s->problem, sizeof s->problem, "%s", ev->connection.reason);
            if (s->mode == MODE_LISTEN)
                fail_msg("%s; trying again in %.1f s", ev->connection.reason, ev->connection.retry_in_ms / 1000.0);
        } else if (ev->connection.state == PARLEY_CONN_OFFLINE && ev->connection.status != PARLEY_OK) {
            s->fatal = ev->connection.status;
            snprintf(s->problem, sizeof s->problem, "%s",
                     ev->connection.reason ? ev->connection.reason : parley_strerror(ev->connection.status));
            parley_stop(s->p);
        } else if (ev->connection.state == PARLEY_CONN_READY && s->mode == MODE_LISTEN && s->problem[0]) {
            fail_msg("connected again");
            s->problem[0] = 0;
        }
        break;
    case PARLEY_EVENT_ERROR:
        if (ev->error.status == PARLEY_ERR_KEYS) { /* our prekeys: worth saying, never fatal */
            fail_msg("%s", ev->error.reason ? ev->error.reason : "the server refused this device's keys");
            break;
        }
        /* a server that cannot take messages, or storage trouble: the command cannot finish */
        snprintf(s->problem, sizeof s->problem, "%s", ev->error.reason ? ev->error.reason : "error");
        if (s->mode == MODE_LISTEN) {
            fail_msg("%s", s->problem);
        } else if (ev->error.status == PARLEY_ERR_UNSUPPORTED || ev->error.status == PARLEY_ERR_STORAGE ||
                   (ev->error.status == PARLEY_ERR_REFUSED && s->mode != MODE_RECV) ||
                   (ev->error.status == PARLEY_ERR_UNKNOWN_NUMBER && s->mode == MODE_SAFETY)) {
            s->fatal = ev->error.status;
            parley_stop(s->p);
        }
        break;
    }
}

/* Opens the profile of a connected command: registered, with its events going to s. */
static bool session_open(session *s, const options *o, int mode)
{
    memset(s, 0, sizeof *s);
    s->o = o;
    s->mode = mode;
    if (!(s->p = open_profile(o)))
        return false;
    if (!require_registered(s->p, o)) {
        parley_close(s->p);
        return false;
    }
    parley_set_handler(s->p, on_event, s);
    return true;
}

static void install_signals(void)
{
    if (pipe(signal_pipe) == 0)
        for (int i = 0; i < 2; i++) {
            fcntl(signal_pipe[i], F_SETFL, fcntl(signal_pipe[i], F_GETFL) | O_NONBLOCK);
            fcntl(signal_pipe[i], F_SETFD, FD_CLOEXEC);
        }
    signal(SIGPIPE, SIG_IGN); /* a closed stdout is an error we report, not a silent death */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll returns EINTR and we look at the flag */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Drives the library from our own poll loop (the signal pipe beside parley's socket)
 * until done(s), the deadline (0: none), a signal or a fatal error. done(s) is looked
 * at after every dispatch: the things it checks only change there. */
static bool loop_until(session *s, bool (*done)(session *), uint64_t deadline)
{
    while (!got_signal && !s->fatal && !done(s)) {
        uint64_t now = clock_mono_ms();
        if (deadline && now >= deadline)
            return false;
        struct pollfd fds[1 + PARLEY_MAX_POLLFDS];
        fds[0].fd = signal_pipe[0];
        fds[0].events = POLLIN;
        nfds_t n = 1 + (nfds_t)parley_pollfds(s->p, &fds[1], PARLEY_MAX_POLLFDS);
        int t = parley_timeout_ms(s->p);
        if (deadline && (t < 0 || (uint64_t)t > deadline - now))
            t = (int)(deadline - now);
        int rc = poll(fds, n, t);
        if (rc < 0 && errno != EINTR) {
            snprintf(s->problem, sizeof s->problem, "poll: %s", strerror(errno));
            s->fatal = PARLEY_ERR_STATE;
            return false;
        }
        rc = parley_dispatch(s->p, &fds[1], rc > 0 ? (int)n - 1 : 0);
        if (rc != PARLEY_OK && !s->fatal) {
            s->fatal = rc;
            snprintf(s->problem, sizeof s->problem, "%s", parley_errmsg(s->p));
        }
        if (s->unshown)
            show_unshown(s);
    }
    return done(s);
}

/* Connects (mode), then loop_until. */
static bool run_until(session *s, int mode, bool (*done)(session *), uint64_t deadline)
{
    if (parley_connect(s->p, mode) != PARLEY_OK) {
        snprintf(s->problem, sizeof s->problem, "%s", parley_errmsg(s->p));
        s->fatal = PARLEY_ERR_STATE;
        return false;
    }
    return loop_until(s, done, deadline);
}

static void timeout_problem(session *s, char *out, size_t len)
{
    if (s->problem[0])
        snprintf(out, len, "%s", s->problem);
    else
        snprintf(out, len, "no answer from the server");
}

static bool send_done(session *s)
{
    parley_state st = PARLEY_STATE_PENDING;
    if (!s->acked && !s->failed && parley_message_state(s->p, s->id, &st) == PARLEY_OK) {
        s->acked = st >= PARLEY_STATE_SENT && st <= PARLEY_STATE_READ; /* perhaps by another process */
        s->failed = st == PARLEY_STATE_FAILED;
    }
    if (s->failed)
        return true;
    if (!s->acked)
        return false;
    size_t n = 1;
    return parley_outbox_count(s->p, &n) == PARLEY_OK && n == 0; /* older ones flushed too */
}

static bool batch_moved(session *s)
{
    batch_sync(s);
    return s->acked || s->failed || s->next_print != s->progress_mark;
}

/* send +E164 -: every line of stdin is one message, all queued in the outbox first
 * (durable), then sent; ids are printed in input order as they are acked. Exits 0 when
 * all are acked; the timeout runs from the last progress, not from the start. */
static int send_lines(session *s, const char *to)
{
    char *line = NULL;
    size_t cap = 0, n_cap = 0;
    ssize_t len;
    int status = 0;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (len == 0)
            continue; /* blank lines are not messages */
        if (s->n_batch == n_cap) {
            n_cap = n_cap ? n_cap * 2 : 64;
            void *ids = realloc(s->batch, n_cap * sizeof *s->batch);
            if (ids)
                s->batch = ids;
            void *flags = ids ? realloc(s->batch_acked, n_cap * sizeof *s->batch_acked) : NULL;
            if (flags)
                s->batch_acked = flags;
            if (!ids || !flags) {
                fail_msg("out of memory after %zu messages", s->n_batch);
                status = 1;
                break;
            }
        }
        if (parley_send_text(s->p, to, line, s->batch[s->n_batch]) != PARLEY_OK) {
            fail_msg("message %zu: %s", s->n_batch + 1, parley_errmsg(s->p));
            status = 1;
            break;
        }
        s->batch_acked[s->n_batch++] = false;
    }
    free(line);
    install_signals();
    if (status == 0 && s->n_batch && parley_connect(s->p, PARLEY_SEND_ONLY) != PARLEY_OK) {
        snprintf(s->problem, sizeof s->problem, "%s", parley_errmsg(s->p));
        s->fatal = PARLEY_ERR_STATE;
    }
    uint64_t deadline = clock_mono_ms() + (uint64_t)s->o->timeout_s * 1000;
    while (status == 0 && s->n_batch && !s->acked && !s->failed && !got_signal && !s->fatal) {
        s->progress_mark = s->next_print;
        loop_until(s, batch_moved, deadline);
        if (s->next_print != s->progress_mark)
            deadline = clock_mono_ms() + (uint64_t)s->o->timeout_s * 1000;
        else if (clock_mono_ms() >= deadline)
            break;
    }
    if (status == 0 && s->next_print < s->n_batch) {
        char why[600];
        timeout_problem(s, why, sizeof why);
        fail_msg("%zu of %zu messages acknowledged (%s); the rest stay in the outbox and go out with the next "
                 "command that connects",
                 s->next_print, s->n_batch, s->failed ? s->fail_reason : got_signal ? "interrupted" : why);
        status = 1;
    }
    free(s->batch);
    free(s->batch_acked);
    parley_close(s->p);
    return status;
}

static int cmd_send(const options *o)
{
    if (!contact_args(o, 2, 2, "send [--timeout SECONDS] +E164 TEXT"))
        return 2;
    const char *to = o->args[0], *text = o->args[1];
    session s;
    if (!session_open(&s, o, MODE_SEND))
        return 1;
    parley *p = s.p;
    if (strcmp(text, "-") == 0)
        return send_lines(&s, to);
    if (parley_send_text(p, to, text, s.id) != PARLEY_OK) {
        fail_msg("%s", parley_errmsg(p));
        parley_close(p);
        return 1;
    }
    s.have_id = true;
    install_signals();
    run_until(&s, PARLEY_SEND_ONLY, send_done, clock_mono_ms() + (uint64_t)o->timeout_s * 1000);
    parley_state st = PARLEY_STATE_PENDING;
    parley_message_state(p, s.id, &st); /* the database is the truth (another process may have sent it) */
    char id[2 * PARLEY_ID_LEN + 1], why[600];
    hex_id(id, s.id);
    int status = 0;
    if (st >= PARLEY_STATE_SENT && st <= PARLEY_STATE_READ) {
        printf("%s\n", id);
        fflush(stdout);
        size_t left = 0;
        if (parley_outbox_count(p, &left) == PARLEY_OK && left)
            fail_msg("%zu older message(s) are still in the outbox; they go out with the next command that connects",
                     left);
    } else if (st == PARLEY_STATE_FAILED) {
        fail_msg("%s", s.fail_reason[0] ? s.fail_reason : "the message cannot be sent");
        status = 1;
    } else {
        timeout_problem(&s, why, sizeof why);
        if (got_signal)
            fail_msg("interrupted; message %s stays in the outbox and goes out with the next command that connects",
                     id);
        else if (s.fatal)
            fail_msg("%s; message %s stays in the outbox", why, id);
        else
            fail_msg("no acknowledgement within %d s (%s); message %s stays in the outbox and goes out with the "
                     "next command that connects",
                     o->timeout_s, why, id);
        status = 1;
    }
    parley_close(p);
    return status;
}

static bool drained_done(session *s)
{
    return s->drained;
}

#define RECEIPTS_GRACE_MS 3000 /* recv: time for the receipts the inbox asked for to go out */

static bool receipts_done(session *s)
{
    size_t n = 1;
    return parley_pending_receipts(s->p, &n) == PARLEY_OK && n == 0;
}

static bool never_done(session *s)
{
    (void)s;
    return false;
}

/* recv --wait: stop the inner loop on a new message, so that the deadline moves. */
static uint64_t activity_seen;
static bool activity_after(session *s)
{
    if (s->last_activity != activity_seen) {
        activity_seen = s->last_activity;
        return true;
    }
    return false;
}

static int cmd_recv(const options *o)
{
    if (!arg_count_ok(o, 0, 0, "recv [--wait SECONDS] [--timeout SECONDS]"))
        return 2;
    session s;
    if (!session_open(&s, o, MODE_RECV))
        return 1;
    parley *p = s.p;
    install_signals();
    show_unshown(&s); /* what an earlier run stored but could not print */
    int status = 0;
    char why[600];
    bool drained = run_until(&s, PARLEY_RECEIVE, drained_done, clock_mono_ms() + (uint64_t)o->timeout_s * 1000);
    if (drained && !s.fatal && !receipts_done(&s)) /* RETRY receipts for what did not decrypt: best effort */
        loop_until(&s, receipts_done, clock_mono_ms() + RECEIPTS_GRACE_MS);
    if (!drained || s.fatal) {
        timeout_problem(&s, why, sizeof why);
        if (!got_signal) {
            if (s.fatal)
                fail_msg("%s", why);
            else
                fail_msg("the inbox was not drained within %d s: %s", o->timeout_s, why);
            status = 1;
        }
    } else if (o->wait_s > 0) {
        /* keep listening until wait_s pass with nothing new (each message restarts it) */
        while (!got_signal && !s.fatal) {
            uint64_t until = s.last_activity + (uint64_t)o->wait_s * 1000;
            if (clock_mono_ms() >= until)
                break;
            loop_until(&s, activity_after, until);
        }
        if (s.fatal) {
            fail_msg("%s", s.problem);
            status = 1;
        }
    }
    parley_close(p);
    return status;
}

static int cmd_listen(const options *o)
{
    if (!arg_count_ok(o, 0, 0, "listen"))
        return 2;
    session s;
    if (!session_open(&s, o, MODE_LISTEN))
        return 1;
    parley *p = s.p;
    install_signals();
    show_unshown(&s);
    run_until(&s, PARLEY_RECEIVE, never_done, 0);
    int status = 0;
    if (s.fatal && !got_signal) {
        fail_msg("%s", s.problem);
        status = 1;
    }
    parley_close(p);
    return status;
}

static int cmd_read(const options *o)
{
    if (!contact_args(o, 1, 1, "read [--timeout SECONDS] +E164"))
        return 2;
    session s;
    if (!session_open(&s, o, MODE_READ))
        return 1;
    parley *p = s.p;
    size_t count = 0;
    if (parley_mark_read(p, o->args[0], &count) != PARLEY_OK) {
        fail_msg("%s", parley_errmsg(p));
        parley_close(p);
        return 1;
    }
    int status = 0;
    char why[600];
    install_signals();
    if (!receipts_done(&s) && !run_until(&s, PARLEY_SEND_ONLY, receipts_done,
                                         clock_mono_ms() + (uint64_t)o->timeout_s * 1000)) {
        timeout_problem(&s, why, sizeof why);
        fail_msg("%zu message(s) marked read, but the read receipts did not reach the server%s (%s); they go out "
                 "with the next command that connects",
                 count, got_signal ? "" : " in time", why);
        status = 1;
    } else {
        printf("%zu\n", count);
        fflush(stdout);
    }
    parley_close(p);
    return status;
}

/* ---- history ------------------------------------------------------------------------ */

typedef struct {
    bool json;
    const char *me;
} history_out;

static bool print_history_row(void *ctx, const parley_message *m)
{
    history_out *h = ctx;
    char id[2 * PARLEY_ID_LEN + 1];
    hex_id(id, m->id);
    uint64_t ts = m->server_time_ms ? m->server_time_ms : m->sent_ms;
    const char *from = m->outgoing ? h->me : m->peer;
    bool notice = m->kind == PARLEY_MESSAGE_IDENTITY_CHANGED;
    if (h->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", notice ? "identity_changed" : "message");
        if (notice) {
            cJSON_AddNumberToObject(o, "device", m->from_device);
            cJSON_AddBoolToObject(o, "verified", m->was_verified);
        }
        cJSON_AddStringToObject(o, "id", id);
        cJSON_AddStringToObject(o, "direction", m->outgoing ? "out" : "in");
        add_str_or_null(o, "from", from);
        add_str_or_null(o, "conversation", m->conversation);
        cJSON_AddNumberToObject(o, "ts", (double)ts);
        add_str_or_null(o, "text", m->text);
        cJSON_AddStringToObject(o, "state", parley_state_name(m->state));
        if (m->problem)
            cJSON_AddStringToObject(o, "problem", m->problem);
        print_json(o);
        return true;
    }
    time_t secs = (time_t)(ts / 1000);
    struct tm tm;
    char when[32] = "?";
    if (localtime_r(&secs, &tm))
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    if (notice)
        printf("%s  ---  %-9s  ", when, "notice");
    else
        printf("%s  %-3s  %-9s  ", when, m->outgoing ? "out" : "in", parley_state_name(m->state));
    if (m->text) {
        put_printable(stdout, m->text);
    } else {
        fputs("(unreadable: ", stdout);
        put_printable(stdout, m->problem ? m->problem : "?");
        putchar(')');
    }
    putchar('\n');
    fflush(stdout);
    return true;
}

static int cmd_history(const options *o)
{
    if (!contact_args(o, 1, 1, "history [--json] +E164"))
        return 2;
    parley *p = open_profile(o);
    if (!p)
        return 1;
    if (!require_registered(p, o)) {
        parley_close(p);
        return 1;
    }
    parley_profile pr;
    parley_profile_get(p, &pr);
    history_out h = {o->json, pr.phone};
    if (!o->json)
        printf("conversation with %s\n", o->args[0]);
    int rc = parley_history(p, o->args[0], print_history_row, &h);
    if (rc != PARLEY_OK)
        fail_msg("%s", parley_errmsg(p));
    parley_close(p);
    return rc == PARLEY_OK ? 0 : 1;
}

/* ---- whoami, safety numbers ----------------------------------------------------------- */

static int cmd_whoami(const options *o)
{
    if (!arg_count_ok(o, 0, 0, "whoami [--json]"))
        return 2;
    parley *p = open_profile(o);
    if (!p)
        return 1;
    parley_profile pr;
    uint8_t key[PARLEY_KEY_LEN];
    if (!require_registered(p, o)) {
        parley_close(p);
        return 1;
    }
    if (parley_profile_get(p, &pr) != PARLEY_OK || parley_identity_key(p, key) != PARLEY_OK) {
        fail_msg("%s", parley_errmsg(p));
        parley_close(p);
        return 1;
    }
    char account[2 * PARLEY_ID_LEN + 1], hex[2 * PARLEY_KEY_LEN + 1];
    hex_id(account, pr.account_id);
    sodium_bin2hex(hex, sizeof hex, key, sizeof key);
    if (o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "phone", pr.phone);
        cJSON_AddStringToObject(j, "account", account);
        cJSON_AddNumberToObject(j, "device", pr.device_id);
        cJSON_AddStringToObject(j, "identity_key", hex);
        print_json(j);
    } else {
        printf("phone         %s\naccount       %s\ndevice        %u\nidentity key  %s\n", pr.phone, account,
               pr.device_id, hex);
    }
    parley_close(p);
    return 0;
}

static bool safety_known(session *s)
{
    return parley_safety_number(s->p, s->peer, &s->safety) == PARLEY_OK;
}

/* The safety number with phone into s->safety: from what the profile knows, else the
 * contact's keys are fetched first (send-only connection). False with a message said. */
static bool get_safety(session *s, const char *phone)
{
    s->peer = phone;
    int rc = parley_safety_number(s->p, phone, &s->safety);
    if (rc == PARLEY_OK)
        return true;
    if (rc != PARLEY_ERR_UNKNOWN_KEY || parley_fetch_identity(s->p, phone) != PARLEY_OK) {
        fail_msg("%s", parley_errmsg(s->p));
        return false;
    }
    install_signals();
    if (run_until(s, PARLEY_SEND_ONLY, safety_known, clock_mono_ms() + (uint64_t)s->o->timeout_s * 1000))
        return true;
    char why[600];
    timeout_problem(s, why, sizeof why);
    fail_msg("cannot get the keys of %s: %s", phone, got_signal ? "interrupted" : why);
    return false;
}

static int cmd_safety(const options *o)
{
    if (!contact_args(o, 1, 1, "safety [--json] [--timeout SECONDS] +E164"))
        return 2;
    session s;
    if (!session_open(&s, o, MODE_SAFETY))
        return 1;
    if (!get_safety(&s, o->args[0])) {
        parley_close(s.p);
        return 1;
    }
    char qr[2 * PARLEY_SCANNABLE_MAX + 1];
    sodium_bin2hex(qr, sizeof qr, s.safety.scannable, s.safety.scannable_len);
    if (o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "peer", o->args[0]);
        cJSON_AddStringToObject(j, "safety_number", s.safety.digits);
        cJSON_AddStringToObject(j, "grouped", s.safety.grouped);
        cJSON_AddStringToObject(j, "qr", qr);
        cJSON_AddBoolToObject(j, "verified", s.safety.verified);
        print_json(j);
    } else {
        printf("safety number with %s%s:\n%s\nqr %s\n", o->args[0], s.safety.verified ? " (verified)" : "",
               s.safety.grouped, qr);
    }
    parley_close(s.p);
    return 0;
}

static int cmd_verify_safety(const options *o)
{
    if (!contact_args(o, 2, -1, "verify-safety [--timeout SECONDS] +E164 NUMBER"))
        return 2;
    /* the number may come as one argument or as its groups */
    char number[256] = "";
    for (int i = 1; i < o->n_args; i++)
        if (strlen(number) + strlen(o->args[i]) + 2 < sizeof number)
            strcat(strcat(number, i > 1 ? " " : ""), o->args[i]);
    session s;
    if (!session_open(&s, o, MODE_SAFETY))
        return 1;
    if (!get_safety(&s, o->args[0])) {
        parley_close(s.p);
        return 1;
    }
    bool match = false;
    int status = 1;
    if (parley_verify_safety(s.p, o->args[0], number, &match) != PARLEY_OK) {
        fail_msg("%s", parley_errmsg(s.p));
    } else if (!match) {
        fail_msg("the safety number does not match the one with %s: nothing was marked; compare it again in person",
                 o->args[0]);
    } else {
        printf("%s is verified\n", o->args[0]);
        status = 0;
    }
    parley_close(s.p);
    return status;
}

int main(int argc, char **argv)
{
    /* a closed stdin/stdout/stderr would be taken by the first file we open (the
     * database), and our output would land in it */
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
            return 1;
    options o;
    if (parse_options(&o, argc, argv) != 0)
        return 2;
    if (!o.cmd) {
        usage(stderr);
        return 2;
    }
    char home[4096];
    if (!o.home) {
        const char *env = getenv("PARLEY_HOME"), *user = getenv("HOME");
        if (env && *env)
            o.home = env;
        else if (user && *user && snprintf(home, sizeof home, "%s/.parley", user) < (int)sizeof home)
            o.home = home;
        else {
            fail_msg("no profile directory: give --home DIR");
            return 2;
        }
    }
    if (strcmp(o.cmd, "register") == 0)
        return cmd_register(&o);
    if (strcmp(o.cmd, "verify") == 0)
        return cmd_verify(&o);
    if (strcmp(o.cmd, "send") == 0)
        return cmd_send(&o);
    if (strcmp(o.cmd, "recv") == 0)
        return cmd_recv(&o);
    if (strcmp(o.cmd, "listen") == 0)
        return cmd_listen(&o);
    if (strcmp(o.cmd, "read") == 0)
        return cmd_read(&o);
    if (strcmp(o.cmd, "history") == 0)
        return cmd_history(&o);
    if (strcmp(o.cmd, "whoami") == 0)
        return cmd_whoami(&o);
    if (strcmp(o.cmd, "safety") == 0)
        return cmd_safety(&o);
    if (strcmp(o.cmd, "verify-safety") == 0)
        return cmd_verify_safety(&o);
    fail_msg("unknown command '%s' (parley --help lists them)", o.cmd);
    return 2;
}
