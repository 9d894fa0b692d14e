/* sms.c - delivering one-time codes: the `file` provider appends one JSON line per
 * code (development and tests) and keeps the file bounded, the `http` provider POSTs
 * the same JSON to a gateway and counts any 2xx answer as accepted. Both block;
 * callers run them off the loop. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "sms.h"

/* One writer at a time: a rotation must not move a file another thread just wrote to. */
static pthread_mutex_t file_lock = PTHREAD_MUTEX_INITIALIZER;

/* Appends json to path; a file past max first becomes path.1 (replacing the one before),
 * so the log never holds more than about 2 * max of numbers and codes. */
static int sms_file(const char *path, size_t max, const char *json, char *err, size_t errlen)
{
    char old[1100];
    struct stat st;
    pthread_mutex_lock(&file_lock);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    /* only a regular file is rotated: not /dev/stderr, a FIFO or a link to one */
    if (fd >= 0 && max && lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size >= max &&
        snprintf(old, sizeof old, "%s.1", path) < (int)sizeof old && rename(path, old) == 0) {
        close(fd);
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    }
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        pthread_mutex_unlock(&file_lock);
        return -1;
    }
    size_t len = strlen(json);
    bool ok = write(fd, json, len) == (ssize_t)len && fsync(fd) == 0;
    if (!ok)
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
    close(fd);
    pthread_mutex_unlock(&file_lock);
    return ok ? 0 : -1;
}

static int sms_http(const char *url, const char *json, char *err, size_t errlen)
{
    char host[256], port[8] = "80", path[512] = "/";
    const char *p = url + strlen("http://");
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof host) {
        snprintf(err, errlen, "bad SMS gateway URL");
        return -1;
    }
    memcpy(host, p, hl);
    host[hl] = 0;
    p += hl;
    if (*p == ':') {
        size_t pl = strcspn(++p, "/");
        if (pl == 0 || pl >= sizeof port) {
            snprintf(err, errlen, "bad port in SMS gateway URL");
            return -1;
        }
        memcpy(port, p, pl);
        port[pl] = 0;
        p += pl;
    }
    if (*p)
        snprintf(path, sizeof path, "%s", p);

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "SMS gateway %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 10};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        snprintf(err, errlen, "cannot reach SMS gateway %s:%s: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     path, host, strlen(json), json);
    char resp[64] = {0};
    ssize_t got = -1;
    if (n > 0 && n < (int)sizeof req && write(fd, req, (size_t)n) == n)
        got = read(fd, resp, sizeof resp - 1);
    close(fd);
    int status = 0;
    if (got < 12 || sscanf(resp, "HTTP/1.%*d %d", &status) != 1 || status < 200 || status > 299) {
        snprintf(err, errlen, "SMS gateway refused the code (HTTP status %d)", status);
        return -1;
    }
    return 0;
}

int sms_send(const char *provider, size_t file_max, const char *phone, const char *code, char *err, size_t errlen)
{
    char json[128];
    snprintf(json, sizeof json, "{\"phone\":\"%s\",\"code\":\"%s\"}\n", phone, code);
    if (strncmp(provider, "file:", 5) == 0)
        return sms_file(provider + 5, file_max, json, err, errlen);
    if (strncmp(provider, "http://", 7) == 0)
        return sms_http(provider, json, err, errlen);
    if (strncmp(provider, "http:", 5) == 0) /* "--sms http:URL" */
        return sms_http(provider + 5, json, err, errlen);
    snprintf(err, errlen, "unknown SMS provider '%s'", provider);
    return -1;
}
