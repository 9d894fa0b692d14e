/* io.c - parleyd's life (server.h): the services started, then the I/O threads. Each
 * thread has its own libuv loop and its own listening socket on the same address
 * (SO_REUSEPORT: the kernel spreads new connections over the threads), and a
 * connection stays on its thread for life. */
#define _GNU_SOURCE /* SO_REUSEPORT */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "service.h"

static int open_listener(const server_config *cfg, uv_loop_t *loop, uv_tcp_t *tcp)
{
    struct sockaddr_in addr;
    int rc = uv_ip4_addr(cfg->listen.host, cfg->listen.port, &addr);
    if (rc != 0)
        return rc;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return uv_translate_sys_error(errno);
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        rc = uv_translate_sys_error(errno);
        close(fd);
        return rc;
    }
    uv_tcp_init(loop, tcp);
    if ((rc = uv_tcp_open(tcp, fd)) != 0) {
        close(fd);
        return rc;
    }
    return 0;
}

static void on_connection(uv_stream_t *listener, int status)
{
    io_thread *t = listener->data;
    if (status == 0)
        ws_thread_accept(&t->ws, listener);
}

#define EACH_SERVICE(srv, svc) \
    for (const service *const *svc_ = (srv)->services, *svc; (svc = *svc_) != NULL; svc_++)

uint8_t *io_scratch(io_thread *t, size_t need)
{
    return store_buf_grow(&t->scratch, &t->scratch_cap, need, 64 * 1024) ? t->scratch : NULL;
}

static void on_stop(uv_async_t *a)
{
    io_thread *t = a->data;
    uv_close((uv_handle_t *)&t->listener, NULL);
    uv_close((uv_handle_t *)&t->stop, NULL);
    EACH_SERVICE (t->srv, svc)
        if (svc->thread_stop)
            svc->thread_stop(t);
    ws_thread_stop(&t->ws); /* every connection is closing: its input is no longer read */
    uv_sem_post(&t->srv->stopped);
}

static void on_finish(uv_async_t *a)
{
    io_thread *t = a->data;
    uv_close((uv_handle_t *)&t->finish, NULL);
    store_home_close(t->home);
    t->home = NULL;
    bus_thread_close(t->srv->bus, t->index);
}

static void *io_main(void *arg)
{
    io_thread *t = arg;
    uv_run(&t->loop, UV_RUN_DEFAULT);
    uv_loop_close(&t->loop);
    free(t->scratch);
    return NULL;
}

static int threads_start(server *srv)
{
    uv_sem_init(&srv->stopped, 0);
    srv->io = calloc((size_t)srv->cfg.threads, sizeof *srv->io);
    if (!srv->io)
        return UV_ENOMEM;
    ws_limits limits = {srv->cfg.max_frame_bytes, srv->cfg.max_frame_bytes};
    for (int i = 0; i < (int)srv->cfg.threads; i++) {
        io_thread *t = &srv->io[i];
        t->srv = srv;
        t->index = i;
        uv_loop_init(&t->loop);
        t->loop.data = t; /* connections find their thread (and the server) through their loop */
        int rc = open_listener(&srv->cfg, &t->loop, &t->listener);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&t->listener, 1024, on_connection);
        if (rc != 0) {
            fprintf(stderr, "parleyd: cannot listen on %s:%d: %s\n", srv->cfg.listen.host, srv->cfg.listen.port,
                    uv_strerror(rc));
            srv->nio = i;
            return rc;
        }
        t->listener.data = t;
        uv_async_init(&t->loop, &t->stop, on_stop);
        t->stop.data = t;
        uv_async_init(&t->loop, &t->finish, on_finish);
        t->finish.data = t;
        if (store_home_open(srv->st, &t->loop, &t->home) != STORE_OK || bus_thread_open(srv->bus, i, &t->loop) != 0)
            return UV_ENOMEM;
        /* a connection silent for twice the heartbeat interval is closed, and one that has
         * not authenticated within the authentication timeout */
        ws_thread_init(&t->ws, &t->loop, &session_callbacks, limits, srv->cfg.heartbeat_seconds * 2000,
                       srv->cfg.auth_timeout_seconds * 1000);
        t->ws.output_budget = srv->cfg.output_budget;
        EACH_SERVICE (srv, svc)
            if (svc->thread_start && (rc = svc->thread_start(t)) != 0)
                return rc;
    }
    srv->nio = (int)srv->cfg.threads;
    for (int i = 0; i < srv->nio; i++)
        if (pthread_create(&srv->io[i].tid, NULL, io_main, &srv->io[i]) != 0)
            return UV_EAGAIN;
    return 0;
}

static dispatch_table table;

int server_start(server *srv, const service *const *services)
{
    srv->services = services;
    if (dispatch_build(&table, services) != 0)
        return -1;
    srv->dispatch = &table;
    if (bus_open_local(&srv->bus, &session_bus_owner, (int)srv->cfg.threads, 0) != 0)
        return -1;
    EACH_SERVICE (srv, svc)
        if (svc->start && svc->start(srv) != 0) {
            fprintf(stderr, "parleyd: the %s service cannot start\n", svc->name);
            return -1;
        }
    return threads_start(srv);
}

store_run_stats server_stop(server *srv)
{
    for (int i = 0; i < srv->nio; i++)
        uv_async_send(&srv->io[i].stop);
    for (int i = 0; i < srv->nio; i++)
        uv_sem_wait(&srv->stopped); /* no more input is read, so no more writes come */
    store_run_stats st = store_stop(srv->st); /* completes what is queued */
    for (int i = 0; i < srv->nio; i++)
        uv_async_send(&srv->io[i].finish); /* the threads send the last answers and end */
    for (int i = 0; i < srv->nio; i++)
        pthread_join(srv->io[i].tid, NULL);
    uv_sem_destroy(&srv->stopped);
    free(srv->io);
    srv->io = NULL;
    EACH_SERVICE (srv, svc)
        if (svc->stop)
            svc->stop(srv);
    bus_close(srv->bus);
    srv->bus = NULL;
    return st;
}
