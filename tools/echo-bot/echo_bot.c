/* echo_bot.c - parley-echo-bot: the smallest program on libparley (docs/client.md, "The
 * API in one page"). It holds the device's receiving connection and answers every text
 * message with the same text, in the same conversation, from inside the event
 * callback, then marks the conversation read (blue ticks for the sender).
 *
 *   parley-echo-bot --home DIR [--count N]
 *
 * The profile in DIR is registered with `parley register/verify` first. With --count it
 * exits 0 once N echoes and the read receipts have been acknowledged by the server;
 * otherwise it runs until
 * SIGINT or SIGTERM, or a fatal error (exit 1). Each echo is printed as a JSON line:
 * {"echoed":"<id of the message>","to":"<conversation>","id":"<id of the echo>"}. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parley.h"

typedef struct {
    parley *p;
    long want;           /* echoes to see acknowledged; 0: no end */
    long acked;
    uint8_t ids[64][PARLEY_ID_LEN];  /* our echoes waiting for their ack (a ring) */
    size_t n_ids;
} bot;

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void hex(char out[2 * PARLEY_ID_LEN + 1], const uint8_t id[PARLEY_ID_LEN])
{
    for (int i = 0; i < PARLEY_ID_LEN; i++)
        snprintf(out + 2 * i, 3, "%02x", id[i]);
}

static void on_event(void *ctx, const parley_event *ev)
{
    bot *b = ctx;
    if (ev->type == PARLEY_EVENT_MESSAGE && ev->message.text && ev->message.conversation &&
        ev->message.kind == PARLEY_MESSAGE_TEXT) {
        uint8_t id[PARLEY_ID_LEN];
        if (parley_send_text(b->p, ev->message.conversation, ev->message.text, id) != PARLEY_OK) {
            fprintf(stderr, "parley-echo-bot: cannot answer: %s\n", parley_errmsg(b->p));
            return;
        }
        parley_mark_read(b->p, ev->message.conversation, NULL);
        memcpy(b->ids[b->n_ids++ % 64], id, PARLEY_ID_LEN);
        char echoed[2 * PARLEY_ID_LEN + 1], mine[2 * PARLEY_ID_LEN + 1];
        hex(echoed, ev->message.id);
        hex(mine, id);
        printf("{\"echoed\":\"%s\",\"to\":\"%s\",\"id\":\"%s\"}\n", echoed, ev->message.conversation, mine);
        fflush(stdout);
    } else if (ev->type == PARLEY_EVENT_STATE && ev->state.state == PARLEY_STATE_SENT) {
        for (size_t i = 0; i < (b->n_ids < 64 ? b->n_ids : 64); i++)
            if (memcmp(b->ids[i], ev->state.id, PARLEY_ID_LEN) == 0) {
                memset(b->ids[i], 0, PARLEY_ID_LEN);
                if (b->want && ++b->acked >= b->want)
                    parley_stop(b->p);
            }
    } else if (ev->type == PARLEY_EVENT_ERROR) {
        fprintf(stderr, "parley-echo-bot: %s\n", ev->error.reason ? ev->error.reason : parley_strerror(ev->error.status));
    }
}

int main(int argc, char **argv)
{
    const char *home = NULL;
    bot b = {0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--home") == 0 && i + 1 < argc)
            home = argv[++i];
        else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
            b.want = strtol(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: parley-echo-bot --home DIR [--count N]\n");
            return 2;
        }
    }
    if (!home || b.want < 0) {
        fprintf(stderr, "usage: parley-echo-bot --home DIR [--count N]\n");
        return 2;
    }
    char err[256];
    if (parley_open(&b.p, home, err, sizeof err) != PARLEY_OK) {
        fprintf(stderr, "parley-echo-bot: %s\n", err);
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    parley_set_handler(b.p, on_event, &b);
    int rc = parley_connect(b.p, PARLEY_RECEIVE);
    while (rc == PARLEY_OK && !stopping) {
        size_t receipts = 1;
        if (b.want && b.acked >= b.want && parley_pending_receipts(b.p, &receipts) == PARLEY_OK && receipts == 0)
            break; /* every echo and every read receipt is on the server */
        rc = parley_run(b.p, 200); /* returns early on a signal, so stopping is seen */
    }
    if (rc != PARLEY_OK)
        fprintf(stderr, "parley-echo-bot: %s\n", parley_errmsg(b.p));
    parley_close(b.p);
    return rc == PARLEY_OK ? 0 : 1;
}
