/* ws_echo_server.c - a WebSocket echo server on Parley's connection layer
 * (src/server/net/ws_conn.c, upgrade.c, src/ws/), so that real clients (npm ws,
 * raw sockets) can test it over real TCP: tests/ws/.
 *   ws-echo-server --listen HOST:PORT [--max-message BYTES] [--max-frame BYTES]
 * Prints "listening PORT" when ready; SIGTERM closes every connection with 1001
 * and exits 0. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "ws_conn.h"

static uv_tcp_t server;
static uv_signal_t sigterm, sigint;
static ws_thread thread;

static bool on_message(ws_conn *c, int opcode, uint8_t *data, size_t len)
{
    ws_conn_send(c, opcode, data, len);
    return true;
}

static const ws_conn_callbacks callbacks = {.on_message = on_message};

static void on_connection(uv_stream_t *srv, int status)
{
    if (status == 0)
        ws_thread_accept(&thread, srv);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    (void)sig;
    fprintf(stderr, "ws-echo-server: signal %d, closing\n", signum);
    uv_close((uv_handle_t *)&server, NULL);
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
    ws_thread_stop(&thread);
}

static int usage(void)
{
    fprintf(stderr, "usage: ws-echo-server --listen HOST:PORT [--max-message BYTES] [--max-frame BYTES]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *listen_at = NULL;
    ws_limits limits = {1 << 20, 1 << 20};
    bool frame_set = false;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            return usage();
        if (strcmp(argv[i], "--listen") == 0) {
            listen_at = argv[++i];
        } else if (strcmp(argv[i], "--max-message") == 0) {
            limits.max_message = strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--max-frame") == 0) {
            limits.max_frame = strtoul(argv[++i], NULL, 10);
            frame_set = true;
        } else {
            return usage();
        }
    }
    if (!listen_at || limits.max_message == 0 || limits.max_message > UINT32_MAX)
        return usage();
    if (!frame_set)
        limits.max_frame = limits.max_message;
    char host[256];
    const char *colon = strrchr(listen_at, ':');
    if (!colon || (size_t)(colon - listen_at) >= sizeof host)
        return usage();
    memcpy(host, listen_at, (size_t)(colon - listen_at));
    host[colon - listen_at] = 0;
    struct sockaddr_in addr;
    if (uv_ip4_addr(host, atoi(colon + 1), &addr) != 0)
        return usage();

    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    ws_thread_init(&thread, loop, &callbacks, limits, 0, 0);
    uv_tcp_init(loop, &server);
    int rc;
    if ((rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&server, 511, on_connection)) != 0) {
        fprintf(stderr, "ws-echo-server: cannot listen on %s: %s\n", listen_at, uv_strerror(rc));
        return 1;
    }
    struct sockaddr_in bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &blen);
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_init(loop, &sigint);
    uv_signal_start(&sigint, on_signal, SIGINT);
    printf("listening %d\n", ntohs(bound.sin_port));
    fflush(stdout);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
