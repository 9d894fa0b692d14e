/* errors.c - names and texts from the error table (errors.h). */
#include "errors.h"

#include <stddef.h>

static const struct {
    uint32_t code;
    const char *name, *text;
} table[] = {
#define PERR_ROW(name, code, text) {code, #name, text},
    PARLEY_ERRORS(PERR_ROW)
#undef PERR_ROW
};

static int find(uint32_t code)
{
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        if (table[i].code == code)
            return (int)i;
    return -1;
}

const char *perr_name(uint32_t code)
{
    int i = find(code);
    return i < 0 ? "UNKNOWN" : table[i].name;
}

const char *perr_text(uint32_t code)
{
    int i = find(code);
    return i < 0 ? "an unknown error" : table[i].text;
}
