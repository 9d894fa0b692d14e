/* options.h - command-line options from one table: the same rows parse the flags,
 * print --help (with each default) and, later, read a configuration file.
 *
 * A row names a field of the caller's config struct by offset and says how its text
 * becomes a value. Defaults are text too, applied through the same parser before the
 * flags, so what --help shows is what runs. */
#ifndef PARLEY_COMMON_OPTIONS_H
#define PARLEY_COMMON_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    OPT_STRING,     /* char[size]; check (if set) may refuse a value */
    OPT_U32,        /* uint32_t, a decimal from min to max */
    OPT_DURATION,   /* uint64_t milliseconds: 30d, 12h, 90m, 3600s or plain seconds, at least 1 s */
    OPT_HOSTPORT,   /* opt_hostport: HOST:PORT */
    OPT_BYTES,      /* uint32_t, a byte count from min to max (plain, or with K or M) */
} opt_kind;

typedef struct {
    char host[64];
    int port;
} opt_hostport;

typedef struct {
    const char *name;      /* "--listen" */
    const char *metavar;   /* "HOST:PORT", shown in --help */
    opt_kind kind;
    size_t offset;         /* of the field in the config struct */
    size_t size;           /* OPT_STRING: the char array's size */
    uint64_t min, max;     /* OPT_U32, OPT_BYTES */
    const char *deflt;     /* text, parsed like a flag's value; NULL: the field stays as it is */
    const char *help;      /* one line; " (default X)" is added when deflt is set */
    /* OPT_STRING: returns false with why set to refuse a value */
    bool (*check)(const char *value, const char **why);
} opt_spec;

#define OPT_FIELD(type, field) offsetof(type, field), sizeof(((type *)0)->field)

/* Applies every default, then argv's --name VALUE pairs. --help or -h prints the usage
 * to stdout and sets *help. Returns 0, or -1 with a message in err ("--threads wants a
 * number from 1 to 256"). */
int opts_parse(const opt_spec *table, size_t n, void *cfg, int argc, char **argv, bool *help, char *err,
               size_t errlen);

/* Sets one option by name from its text (a flag's value, a config file's line). */
int opts_set(const opt_spec *table, size_t n, void *cfg, const char *name, const char *value, char *err,
             size_t errlen);

/* "usage: PROG [options]" and one line per row. */
void opts_usage(FILE *out, const char *prog, const opt_spec *table, size_t n);

/* "30d", "12h", "90m", "3600s" or plain seconds -> milliseconds; 0 if it is none of them. */
uint64_t opts_duration_ms(const char *s);

#endif
