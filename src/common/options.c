/* options.c - parsing and --help from one option table (options.h). */
#include "options.h"

#include <stdlib.h>
#include <string.h>

uint64_t opts_duration_ms(const char *s)
{
    char *end;
    if (*s < '0' || *s > '9')
        return 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || v == 0 || v > 100000000ULL)
        return 0;
    uint64_t unit = *end == 'd' ? 86400000ULL : *end == 'h' ? 3600000ULL : *end == 'm' ? 60000ULL : 1000;
    if (*end && (strchr("dhms", *end) == NULL || end[1]))
        return 0;
    return (uint64_t)v * unit;
}

static bool parse_u64(const char *s, uint64_t *out, uint64_t unit_ok)
{
    char *end;
    if (*s < '0' || *s > '9')
        return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || v > UINT32_MAX)
        return false;
    if (unit_ok && (*end == 'K' || *end == 'k') && !end[1])
        v *= 1024, end++;
    else if (unit_ok && *end == 'M' && !end[1])
        v *= 1024 * 1024, end++;
    *out = v;
    return *end == 0;
}

static const opt_spec *find(const opt_spec *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0)
            return &t[i];
    return NULL;
}

static int set(const opt_spec *o, void *cfg, const char *v, char *err, size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    uint64_t n;
    const char *why = NULL;
    switch (o->kind) {
    case OPT_STRING:
        if (strlen(v) >= o->size) {
            snprintf(err, errlen, "%s: the value is too long (at most %zu bytes)", o->name, o->size - 1);
            return -1;
        }
        if (o->check && !o->check(v, &why)) {
            snprintf(err, errlen, "%s %s", o->name, why);
            return -1;
        }
        memcpy(field, v, strlen(v) + 1);
        return 0;
    case OPT_U32:
    case OPT_BYTES:
        if (!parse_u64(v, &n, o->kind == OPT_BYTES) || n < o->min || n > o->max) {
            if (o->kind == OPT_BYTES)
                snprintf(err, errlen, "%s wants a size from %llu to %llu bytes (K and M allowed), got '%s'",
                         o->name, (unsigned long long)o->min, (unsigned long long)o->max, v);
            else
                snprintf(err, errlen, "%s wants a number from %llu to %llu, got '%s'", o->name,
                         (unsigned long long)o->min, (unsigned long long)o->max, v);
            return -1;
        }
        *(uint32_t *)field = (uint32_t)n;
        return 0;
    case OPT_DURATION:
        if (!(n = opts_duration_ms(v))) {
            snprintf(err, errlen, "%s wants e.g. 30d, 12h, 90m or 3600s, got '%s'", o->name, v);
            return -1;
        }
        *(uint64_t *)field = n;
        return 0;
    case OPT_HOSTPORT: {
        opt_hostport *hp = (opt_hostport *)field;
        const char *colon = strrchr(v, ':');
        uint64_t port = 0;
        if (!colon || colon == v || (size_t)(colon - v) >= sizeof hp->host || !parse_u64(colon + 1, &port, 0) ||
            port > 65535) {
            snprintf(err, errlen, "%s wants HOST:PORT, got '%s'", o->name, v);
            return -1;
        }
        memcpy(hp->host, v, (size_t)(colon - v));
        hp->host[colon - v] = 0;
        hp->port = (int)port;
        return 0;
    }
    }
    return -1;
}

int opts_set(const opt_spec *t, size_t n, void *cfg, const char *name, const char *value, char *err,
             size_t errlen)
{
    const opt_spec *o = find(t, n, name);
    if (!o) {
        snprintf(err, errlen, "unknown option %s", name);
        return -1;
    }
    return set(o, cfg, value, err, errlen);
}

int opts_parse(const opt_spec *t, size_t n, void *cfg, int argc, char **argv, bool *help, char *err,
               size_t errlen)
{
    *help = false;
    for (size_t i = 0; i < n; i++)
        if (t[i].deflt && set(&t[i], cfg, t[i].deflt, err, errlen) != 0)
            return -1; /* a wrong default in the table: a bug, shown as it is */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            opts_usage(stdout, argv[0], t, n);
            *help = true;
            return 0;
        }
        const opt_spec *o = find(t, n, a);
        if (!o) {
            snprintf(err, errlen, "unknown option %s (--help lists them)", a);
            return -1;
        }
        if (i + 1 >= argc) {
            snprintf(err, errlen, "%s needs a value", a);
            return -1;
        }
        if (set(o, cfg, argv[++i], err, errlen) != 0)
            return -1;
    }
    return 0;
}

void opts_usage(FILE *out, const char *prog, const opt_spec *t, size_t n)
{
    const char *base = strrchr(prog, '/');
    fprintf(out, "usage: %s [options]\n", base ? base + 1 : prog);
    for (size_t i = 0; i < n; i++) {
        char left[64];
        snprintf(left, sizeof left, "%s %s", t[i].name, t[i].metavar);
        fprintf(out, "  %-22s %s", left, t[i].help);
        if (t[i].deflt)
            fprintf(out, " (default %s)", t[i].deflt);
        fputc('\n', out);
    }
}
