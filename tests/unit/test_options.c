/* test_options.c - the option table (src/common/options.h): defaults go through the
 * same parser as flags, bad values are refused with a message naming the flag, --help
 * prints every row. */
#include <string.h>

#include "check.h"
#include "options.h"

typedef struct {
    opt_hostport listen;
    char name[8];
    uint32_t count;
    uint32_t bytes;
    uint64_t keep_ms;
} config;

static bool no_x(const char *v, const char **why)
{
    *why = "may not hold an x";
    return strchr(v, 'x') == NULL;
}

#define F(field) OPT_FIELD(config, field)
static const opt_spec table[] = {
    {"--listen", "HOST:PORT", OPT_HOSTPORT, F(listen), 0, 0, "127.0.0.1:7443", "where", NULL},
    {"--name", "NAME", OPT_STRING, F(name), 0, 0, "abc", "a name", no_x},
    {"--count", "N", OPT_U32, F(count), 1, 10, "3", "how many", NULL},
    {"--bytes", "BYTES", OPT_BYTES, F(bytes), 4096, 1u << 20, "256K", "how big", NULL},
    {"--keep", "DURATION", OPT_DURATION, F(keep_ms), 0, 0, "30d", "how long", NULL},
};
#define N (sizeof table / sizeof *table)

static int parse(config *c, int argc, char **argv, char *err)
{
    bool help;
    memset(c, 0, sizeof *c);
    return opts_parse(table, N, c, argc, argv, &help, err, 200);
}

static void test_defaults_and_flags(void)
{
    config c;
    char err[200];
    char *none[] = {"prog"};
    CHECK_RC(parse(&c, 1, none, err), 0);
    CHECK(strcmp(c.listen.host, "127.0.0.1") == 0 && c.listen.port == 7443);
    CHECK(strcmp(c.name, "abc") == 0 && c.count == 3 && c.bytes == 256 * 1024);
    CHECK(c.keep_ms == 30ULL * 86400000);
    char *some[] = {"prog", "--listen", "[::1]:80", "--count", "10", "--bytes", "1M", "--keep", "90m", "--name", "q"};
    CHECK_RC(parse(&c, 11, some, err), 0);
    CHECK(strcmp(c.listen.host, "[::1]") == 0 && c.listen.port == 80);
    CHECK(c.count == 10 && c.bytes == 1u << 20 && c.keep_ms == 90 * 60000 && strcmp(c.name, "q") == 0);
    CHECK_RC(opts_set(table, N, &c, "--count", "7", err, sizeof err), 0);
    CHECK(c.count == 7);
}

static void test_refusals(void)
{
    config c;
    char err[200];
    struct { char *flag, *value, *says; } bad[] = {
        {"--count", "0", "--count wants a number from 1 to 10"},
        {"--count", "11", "--count wants a number from 1 to 10"},
        {"--count", "3x", "--count wants a number"},
        {"--count", "-1", "--count wants a number"},
        {"--bytes", "1K", "--bytes wants a size from 4096"},
        {"--keep", "3x", "--keep wants e.g. 30d"},
        {"--keep", "0", "--keep wants e.g. 30d"},
        {"--listen", "nohost", "--listen wants HOST:PORT"},
        {"--listen", "h:70000", "--listen wants HOST:PORT"},
        {"--name", "toolongname", "--name: the value is too long"},
        {"--name", "x", "--name may not hold an x"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *argv[] = {"prog", bad[i].flag, bad[i].value};
        err[0] = 0;
        CHECK_RC(parse(&c, 3, argv, err), -1);
        bool says = strncmp(err, bad[i].says, strlen(bad[i].says)) == 0;
        if (!says)
            fprintf(stderr, "for %s %s: %s\n", bad[i].flag, bad[i].value, err);
        CHECK(says);
    }
    char *unknown[] = {"prog", "--nope", "1"}, *missing[] = {"prog", "--count"};
    CHECK_RC(parse(&c, 3, unknown, err), -1);
    CHECK(strstr(err, "unknown option --nope") != NULL);
    CHECK_RC(parse(&c, 2, missing, err), -1);
    CHECK(strstr(err, "--count needs a value") != NULL);
}

static void test_usage(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    opts_usage(f, "/usr/bin/prog", table, N);
    fclose(f);
    CHECK(strncmp(buf, "usage: prog [options]\n", 22) == 0);
    for (size_t i = 0; i < N; i++)
        CHECK(strstr(buf, table[i].name) && strstr(buf, table[i].help));
    CHECK(strstr(buf, "(default 256K)") != NULL);
    free(buf);
}

int main(void)
{
    RUN(test_defaults_and_flags());
    RUN(test_refusals());
    RUN(test_usage());
    return check_summary("options");
}
