/* log_segment.c - segment files (log_segment.h). */
#define _GNU_SOURCE
#include "log_segment.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

static int errno_status(int e)
{
    return e == ENOSPC || e == EDQUOT || e == EFBIG ? STORE_FULL : e == ENOMEM ? STORE_NOMEM : STORE_IO;
}

static void segment_path(char *out, size_t cap, const char *dir, uint64_t number)
{
    snprintf(out, cap, "%s/%016" PRIx64 ".seg", dir, number);
}

static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno_status(errno);
    int rc = fsync(fd) == 0 ? STORE_OK : errno_status(errno);
    close(fd);
    return rc;
}

static int map_segment(log_segment *s)
{
    s->map = mmap(NULL, s->capacity, PROT_READ, MAP_SHARED, s->fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        return errno_status(errno);
    }
    return STORE_OK;
}

int log_segment_create(log_segment *s, const char *dir, uint64_t number, size_t capacity)
{
    char path[4096];
    memset(s, 0, sizeof *s);
    s->fd = -1;
    segment_path(path, sizeof path, dir, number);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno_status(errno);
    int rc = posix_fallocate(fd, 0, (off_t)capacity); /* returns the error, not errno */
    if (rc != 0) {
        close(fd);
        unlink(path);
        return errno_status(rc);
    }
    s->fd = fd;
    s->number = number;
    s->capacity = capacity;
    if ((rc = fsync(fd) == 0 ? STORE_OK : errno_status(errno)) == STORE_OK && (rc = sync_dir(dir)) == STORE_OK &&
        (rc = map_segment(s)) == STORE_OK)
        return STORE_OK;
    log_segment_close(s);
    unlink(path);
    return rc;
}

int log_segment_open(log_segment *s, const char *dir, uint64_t number, bool readonly)
{
    char path[4096];
    struct stat st;
    memset(s, 0, sizeof *s);
    segment_path(path, sizeof path, dir, number);
    s->fd = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (s->fd < 0)
        return errno == ENOENT ? STORE_NOT_FOUND : errno_status(errno);
    if (fstat(s->fd, &st) != 0) {
        int rc = errno_status(errno);
        log_segment_close(s);
        return rc;
    }
    s->number = number;
    s->capacity = (size_t)st.st_size;
    int rc = s->capacity ? map_segment(s) : STORE_OK;
    if (rc != STORE_OK)
        log_segment_close(s);
    return rc;
}

int log_segment_write(log_segment *s, const void *buf, size_t len)
{
    if (len > s->capacity - s->tail)
        return STORE_FULL;
    const uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(s->fd, p + done, len - done, (off_t)(s->tail + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? errno_status(errno) : STORE_IO;
        done += (size_t)n;
    }
    s->tail += len;
    return STORE_OK;
}

int log_segment_zero(log_segment *s, size_t offset, size_t len)
{
    static const uint8_t zeros[65536];
    if (offset > s->capacity || len > s->capacity - offset)
        return STORE_INVALID;
    while (len) {
        size_t n = len < sizeof zeros ? len : sizeof zeros;
        ssize_t w = pwrite(s->fd, zeros, n, (off_t)offset);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno_status(errno) : STORE_IO;
        offset += (size_t)w;
        len -= (size_t)w;
    }
    return STORE_OK;
}

int log_segment_sync(log_segment *s)
{
    return fdatasync(s->fd) == 0 ? STORE_OK : errno_status(errno);
}

void log_segment_close(log_segment *s)
{
    if (s->map)
        munmap(s->map, s->capacity);
    if (s->fd >= 0)
        close(s->fd);
    s->map = NULL;
    s->fd = -1;
}

int log_segment_remove(const char *dir, uint64_t number)
{
    char path[4096];
    segment_path(path, sizeof path, dir, number);
    if (unlink(path) != 0 && errno != ENOENT)
        return errno_status(errno);
    return sync_dir(dir);
}

static int by_number(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int log_segment_list(const char *dir, uint64_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? STORE_OK : errno_status(errno);
    size_t cap = 0;
    struct dirent *e;
    int rc = STORE_OK;
    while ((e = readdir(d))) {
        char *end;
        size_t len = strlen(e->d_name);
        if (len != 20 || strcmp(e->d_name + 16, ".seg") != 0)
            continue;
        errno = 0;
        uint64_t number = strtoull(e->d_name, &end, 16);
        if (end != e->d_name + 16 || errno)
            continue;
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            uint64_t *grown = realloc(*out, ncap * sizeof **out);
            if (!grown) {
                rc = STORE_NOMEM;
                break;
            }
            *out = grown;
            cap = ncap;
        }
        (*out)[(*n)++] = number;
    }
    closedir(d);
    if (rc != STORE_OK) {
        free(*out);
        *out = NULL;
        *n = 0;
        return rc;
    }
    if (*n)
        qsort(*out, *n, sizeof **out, by_number);
    return STORE_OK;
}
